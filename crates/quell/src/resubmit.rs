//! Re-issuing a checkpoint's ops on a ring (DESIGN I9), possibly in another process.
//!
//! A child module of `ring`: it sets the bytes-already-moved of the new slots before
//! they are dispatched, so each transfer continues where it stopped.

use super::*;
use crate::buf::AlignedBuf;
use crate::checkpoint::{identity, Checkpoint, CheckpointId, OpDescriptor};
use crate::completion::Completion;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Buffers to re-issue checkpointed ops with, keyed by the op's id in the old ring.
/// Ops without one get a fresh buffer, filled from the data the checkpoint carries.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4]))?;
/// let policy = quell::QuiescePolicy::default().carry_data(false);
/// let ckpt = ring.quiesce(policy)?;
/// // The canceled op's completion hands its buffer over to the re-issue.
/// let bufs = quell::Buffers::from_completions(ring.completions());
/// let mut fresh = quell::Ring::new()?;
/// let id = fresh.resubmit(&ckpt, bufs).remove(0)?;
/// std::io::Write::write_all(&mut &w, b"data")?;
/// assert_eq!(fresh.wait_for(id)?.data(), b"data");
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Buffers {
    by_id: HashMap<CheckpointId, Memory>,
}

#[derive(Debug)]
enum Memory {
    Plain(Vec<u8>),
    Aligned(AlignedBuf),
    Vectored(Vec<Vec<u8>>),
}

impl Buffers {
    /// No buffers: every op gets a fresh one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4]))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?; // carries data
    /// // The checkpoint is self-contained: the new ring allocates the buffers itself.
    /// let bufs = quell::Buffers::new();
    /// assert!(bufs.is_empty());
    /// let mut fresh = quell::Ring::new()?;
    /// let id = fresh.resubmit(&ckpt, bufs).remove(0)?;
    /// std::io::Write::write_all(&mut &w, b"next")?;
    /// assert_eq!(fresh.wait_for(id)?.data(), b"next");
    /// # Ok(()) }
    /// ```
    pub fn new() -> Buffers {
        Buffers::default()
    }

    /// The buffers of the canceled ops among `completions` (taken from the quiesced
    /// ring: the ops a checkpoint describes complete `Canceled`). Other completions
    /// are dropped with their buffers; use [`keep`](Buffers::keep) to get them back.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 6]).exact())?;
    /// std::io::Write::write_all(&mut &w, b"abc")?;
    /// ring.poll()?; // "abc" is in the old buffer, the read waits for the rest
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default().carry_data(false))?;
    /// let bufs = quell::Buffers::from_completions(ring.completions());
    /// assert_eq!(bufs.len(), 1);
    /// let mut fresh = quell::Ring::new()?;
    /// let id = fresh.resubmit(&ckpt, bufs).remove(0)?;
    /// std::io::Write::write_all(&mut &w, b"def")?;
    /// // The re-issued read continues in the old buffer: the total, as if never stopped.
    /// assert_eq!(fresh.wait_for(id)?.data(), b"abcdef");
    /// # Ok(()) }
    /// ```
    pub fn from_completions(completions: impl IntoIterator<Item = Completion>) -> Buffers {
        let mut b = Buffers::new();
        for c in completions {
            drop(b.keep(c));
        }
        b
    }

    /// Keeps the buffer of `c` if it is a canceled op's (one a checkpoint may
    /// describe); any other completion is handed back untouched.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::nop())?;
    /// let done = ring.wait_for(id)?;
    /// let mut bufs = quell::Buffers::new();
    /// assert!(bufs.keep(done).is_some()); // finished: not a checkpointed op
    /// assert!(bufs.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn keep(&mut self, c: Completion) -> Option<Completion> {
        if !matches!(c.outcome, crate::outcome::Outcome::Canceled { .. }) {
            return Some(c);
        }
        let id = CheckpointId::from(c.id);
        let Completion {
            id: cid,
            user_data,
            outcome,
            kind,
            payload,
        } = c;
        let mem = match payload.into_inner() {
            Payload::Buf(v) => Memory::Plain(v),
            Payload::Aligned(a) => Memory::Aligned(a),
            Payload::Bufs(v) => Memory::Vectored(v.bufs),
            payload => {
                return Some(Completion {
                    id: cid,
                    user_data,
                    outcome,
                    kind,
                    payload: payload.into(),
                })
            }
        };
        self.by_id.insert(id, mem);
        None
    }

    /// Gives the buffer for the op that had `id` in the old ring.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let old = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4]))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default().carry_data(false))?;
    /// assert_eq!(ckpt.ops[0].id, quell::CheckpointId::from(old));
    /// // Hand the canceled op's buffer over by hand, keyed by its old id.
    /// let c = ring.wait_for(old)?;
    /// let mut bufs = quell::Buffers::new();
    /// bufs.insert(c.id.into(), c.into_buf().unwrap());
    /// let mut fresh = quell::Ring::new()?;
    /// let id = fresh.resubmit(&ckpt, bufs).remove(0)?;
    /// std::io::Write::write_all(&mut &w, b"more")?;
    /// assert_eq!(fresh.wait_for(id)?.data(), b"more");
    /// # Ok(()) }
    /// ```
    pub fn insert(&mut self, id: CheckpointId, buf: Vec<u8>) {
        self.by_id.insert(id, Memory::Plain(buf));
    }

    /// Gives the buffers of a vectored op.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?; // takes the one dispatch slot
    /// let old = ring.submit(quell::Op::readv_at(file.as_raw_fd(), 0, vec![vec![0; 1], vec![0; 3]]))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default().carry_data(false))?;
    /// let v = ckpt.ops.iter().position(|d| d.kind == quell::OpKind::Readv).unwrap();
    /// let mut bufs = quell::Buffers::new();
    /// bufs.insert_vectored(old.into(), ring.wait_for(old)?.into_bufs().unwrap());
    /// let mut fresh = quell::Ring::new()?;
    /// let id = fresh.resubmit(&ckpt, bufs).remove(v)?;
    /// assert_eq!(fresh.wait_for(id)?.into_bufs().unwrap(), [b"\x7f".to_vec(), b"ELF".to_vec()]);
    /// # Ok(()) }
    /// ```
    pub fn insert_vectored(&mut self, id: CheckpointId, bufs: Vec<Vec<u8>>) {
        self.by_id.insert(id, Memory::Vectored(bufs));
    }

    /// How many buffers are held.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4]))?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4]))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// let bufs = quell::Buffers::from_completions(ring.completions());
    /// assert_eq!(bufs.len(), ckpt.ops.len()); // one buffer per described op
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no buffer is held.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::nop())?;
    /// ring.wait(1, None)?;
    /// ring.quiesce(quell::QuiescePolicy::default())?;
    /// // The nop finished before the quiesce: it has nothing to hand over.
    /// let bufs = quell::Buffers::from_completions(ring.completions());
    /// assert!(bufs.is_empty());
    /// # let _ = id;
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Why one checkpointed op could not be re-issued. Nothing is dropped silently: each
/// descriptor yields either a new [`OpId`] or one of these.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4]).user_data(3))?;
/// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
/// drop(ring);
/// drop(r); // the descriptor is gone
/// let mut fresh = quell::Ring::new()?;
/// let err = fresh.resubmit(&ckpt, quell::Buffers::new()).remove(0).unwrap_err();
/// assert_eq!(err.user_data, 3);
/// assert!(matches!(err.error, quell::Error::InvalidFd { .. } | quell::Error::FdChanged { .. }));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ResubmitError {
    /// Index of the descriptor in [`Checkpoint::ops`].
    pub index: usize,
    /// Its user data.
    pub user_data: u64,
    /// Why.
    pub error: Error,
    /// The op as built, with its buffer, when it got as far as submission.
    pub op: Option<Box<Op>>,
}

impl std::fmt::Display for ResubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpointed op #{} (user data {}) not re-issued: {}",
            self.index, self.user_data, self.error
        )
    }
}

impl std::error::Error for ResubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Ring {
    /// Re-issues every op of `ckpt` on this ring (DESIGN I9): the result has one entry
    /// per [`Checkpoint::ops`] descriptor, in order — the new op's id, or why it could
    /// not be re-issued (its descriptor closed or now on another file, missing data, a
    /// closure op, a refusal by the ring). Transfers continue where they stopped: same
    /// buffer size, the bytes already moved skipped, and the completion reports the
    /// whole op's total. Groups are found (or created) by path; deadlines restart with
    /// the time that was left.
    ///
    /// If the ring is quiesced, the ops wait in its queue until [`resume`](Ring::resume).
    /// See [`quiesce`](Ring::quiesce) for an example.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{Buffers, Op, QuiescePolicy};
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 4]).user_data(1))?;
    /// ring.submit(Op::read(-1, vec![0u8; 4]).user_data(2)).unwrap_err(); // never accepted
    /// let ckpt = ring.quiesce(QuiescePolicy::default())?;
    /// let old = Buffers::from_completions(ring.completions());
    /// // Re-issue on the same ring: the ops wait in its queue until it resumes.
    /// let results = ring.resubmit(&ckpt, old);
    /// assert_eq!(results.len(), ckpt.ops.len());
    /// let id = results.into_iter().next().unwrap()?;
    /// ring.resume();
    /// std::io::Write::write_all(&mut &w, b"back")?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!((c.user_data, c.data()), (1, &b"back"[..]));
    /// # Ok(()) }
    /// ```
    pub fn resubmit(
        &mut self,
        ckpt: &Checkpoint,
        mut buffers: Buffers,
    ) -> Vec<Result<OpId, ResubmitError>> {
        let was_paused = self.paused;
        // Nothing may be dispatched before its bytes-already-moved is set.
        self.paused = true;
        let mut out = Vec::with_capacity(ckpt.ops.len());
        for (index, d) in ckpt.ops.iter().enumerate() {
            let fail = |error: Error, op: Option<Op>| ResubmitError {
                index,
                user_data: d.user_data,
                error,
                op: op.map(Box::new),
            };
            let r = self
                .rebuild(d, buffers.by_id.remove(&d.id))
                .map_err(|(e, op)| fail(e, op))
                .and_then(|(op, prior)| {
                    let id = self.submit(op).map_err(|e| {
                        let (e, op) = e.into_parts();
                        fail(e, Some(op))
                    })?;
                    self.table.slot_mut(id.slot).transferred = prior;
                    Ok(id)
                });
            if let Err(e) = &r {
                tracing::warn!(target: "quell::op", index, user_data = d.user_data, error = %e.error, "checkpointed op not re-issued");
            }
            out.push(r);
        }
        self.paused = was_paused;
        if !self.paused {
            self.dispatch();
        }
        out
    }

    /// Finds or creates the group at `path` ("root/a/b"), by names.
    fn group_at_path(&mut self, path: &str) -> Result<GroupId, Error> {
        let mut cur = 0u32;
        for name in path.split('/').skip(1) {
            let found = self.groups.v[cur as usize]
                .children
                .iter()
                .copied()
                .find(|&c| self.groups.v[c as usize].name.as_deref() == Some(name));
            cur = match found {
                Some(c) => c,
                None => {
                    let parent = self.groups.id_of(cur);
                    self.group(parent, GroupOptions::default().name(name))?.idx
                }
            };
        }
        Ok(self.groups.id_of(cur))
    }

    /// The op a descriptor describes, and the bytes already moved to record in its slot.
    #[allow(clippy::result_large_err)]
    fn rebuild(
        &mut self,
        d: &OpDescriptor,
        mem: Option<Memory>,
    ) -> Result<(Op, u64), (Error, Option<Op>)> {
        for (fd, file) in [(d.fd, &d.file), (d.fd2, &d.file2)] {
            let Some(f) = file else { continue };
            match identity(fd) {
                None => return Err((Error::InvalidFd { fd }, None)),
                Some(id) if id != (f.dev, f.ino) => return Err((Error::FdChanged { fd }, None)),
                // The number may have named another kind of file in this ring before.
                Some(_) => self.fds.forget(fd),
            }
        }
        let group = self.group_at_path(&d.group_path).map_err(|e| (e, None))?;
        let t = d.transferred.min(d.len);
        let offset = d.offset.unwrap_or(NO_OFFSET);
        let path = |p: &Option<Vec<u8>>| {
            p.as_deref()
                .map(|b| OsStr::from_bytes(b).to_owned())
                .ok_or((
                    Error::InvalidArgument("checkpointed path op has no path"),
                    None,
                ))
        };
        let mut prior = 0;
        let mut op = match d.kind {
            OpKind::Read | OpKind::Write | OpKind::Send | OpKind::Recv => {
                let given = mem.is_some();
                let mut mem = match mem {
                    Some(Memory::Vectored(_)) => {
                        return Err((Error::InvalidArgument("a single buffer is needed"), None))
                    }
                    Some(m) => m,
                    None => fresh_memory(d),
                };
                let buf: &mut [u8] = match &mut mem {
                    Memory::Plain(v) => v,
                    Memory::Aligned(a) => a,
                    Memory::Vectored(_) => unreachable!("refused above"),
                };
                if buf.len() as u64 != d.len {
                    return Err((
                        Error::InvalidArgument("buffer length differs from the checkpointed op's"),
                        None,
                    ));
                }
                fill(d, buf, t, given).map_err(|e| (e, None))?;
                prior = t;
                let fd = d.fd;
                match (mem, d.kind) {
                    (Memory::Aligned(a), OpKind::Read) => Op::read_aligned(fd, offset, a),
                    (Memory::Aligned(a), OpKind::Write) => Op::write_aligned(fd, offset, a),
                    (Memory::Aligned(a), _) => {
                        drop(a);
                        return Err((
                            Error::InvalidArgument("aligned buffer for a socket op"),
                            None,
                        ));
                    }
                    (Memory::Plain(v), OpKind::Read) => Op::buf_op(OpKind::Read, fd, offset, v),
                    (Memory::Plain(v), OpKind::Write) => Op::buf_op(OpKind::Write, fd, offset, v),
                    (Memory::Plain(v), kind) => {
                        let mut op = Op::buf_op(kind, fd, NO_OFFSET, v);
                        op.desc.flags = d.flags;
                        op
                    }
                    (Memory::Vectored(_), _) => unreachable!("refused above"),
                }
            }
            OpKind::Readv | OpKind::Writev => {
                let given = mem.is_some();
                let mut bufs = match mem {
                    Some(Memory::Vectored(b)) => b,
                    Some(_) => {
                        return Err((Error::InvalidArgument("vectored buffers are needed"), None))
                    }
                    None => d.iov_lens.iter().map(|&l| vec![0u8; l as usize]).collect(),
                };
                let lens: Vec<u64> = bufs.iter().map(|b| b.len() as u64).collect();
                if lens != d.iov_lens {
                    return Err((
                        Error::InvalidArgument("buffer lengths differ from the checkpointed op's"),
                        None,
                    ));
                }
                let mut flat: Vec<u8> = bufs.concat();
                fill(d, &mut flat, t, given).map_err(|e| (e, None))?;
                let mut at = 0;
                for b in &mut bufs {
                    let n = b.len();
                    b.copy_from_slice(&flat[at..at + n]);
                    at += n;
                }
                let mut op = Op::vectored(d.kind, d.fd, offset, bufs);
                skip_iov(&mut op, t);
                prior = t;
                op
            }
            OpKind::Poll => {
                let mut op = Op::poll(d.fd, crate::op::Interest(d.flags));
                op.desc.flags = d.flags;
                op
            }
            OpKind::Accept => {
                let mut op = Op::accept(d.fd);
                op.desc.flags = d.flags;
                op
            }
            OpKind::Connect => match d.addr {
                Some(a) => Op::connect(d.fd, a),
                None => {
                    return Err((
                        Error::InvalidArgument("checkpointed connect has no address"),
                        None,
                    ))
                }
            },
            OpKind::Fsync => {
                let mut op = Op::fsync(d.fd);
                op.desc.flags = d.flags;
                op
            }
            OpKind::Fallocate => Op::fallocate(d.fd, d.flags as i32, offset, d.len),
            OpKind::Timeout => Op::timeout(d.sleep.unwrap_or_default()),
            OpKind::Nop => Op::nop(),
            OpKind::Close => Op::close(d.fd),
            OpKind::Splice => Op::splice(
                d.fd,
                d.offset.map(|o| o + t),
                d.fd2,
                d.offset2.map(|o| o + t),
                d.remaining().min(u32::MAX as u64) as u32,
            ),
            OpKind::OpenAt => {
                let mut op = Op::openat(d.fd, path(&d.path)?, 0, d.mode as u32);
                op.desc.flags = d.flags;
                op
            }
            OpKind::Statx => Op::statx(d.fd, path(&d.path)?, d.flags as i32, d.mode as u32),
            OpKind::UnlinkAt => Op::unlinkat(d.fd, path(&d.path)?, d.flags as i32),
            OpKind::RenameAt => Op::renameat(d.fd, path(&d.path)?, d.fd2, path(&d.path2)?, d.flags),
            OpKind::Blocking => {
                return Err((
                    Error::Unsupported {
                        op: "blocking",
                        backend: "checkpoint",
                        why: "a closure cannot be checkpointed",
                    },
                    None,
                ))
            }
        };
        op.user_data = d.user_data;
        op.group = Some(group);
        if d.exact {
            op = op.exact();
        }
        if let Some(left) = d.deadline_left {
            op.deadline = Some(Instant::now() + left);
        }
        Ok((op, prior))
    }
}

/// A new buffer for a single-buffer op: aligned when the file was opened `O_DIRECT`.
fn fresh_memory(d: &OpDescriptor) -> Memory {
    let direct = d
        .file
        .as_ref()
        .is_some_and(|f| f.status_flags & libc::O_DIRECT != 0);
    if direct {
        if let Some(a) = AlignedBuf::new(d.len as usize, 4096) {
            return Memory::Aligned(a);
        }
    }
    Memory::Plain(vec![0u8; d.len as usize])
}

/// Puts the carried bytes where they belong in the whole buffer: a read's received
/// prefix, a write's unwritten tail. A write with neither carried bytes nor a buffer
/// from the caller has nothing to write.
fn fill(d: &OpDescriptor, buf: &mut [u8], t: u64, given: bool) -> Result<(), Error> {
    let t = (t as usize).min(buf.len());
    match &d.data {
        Some(data) if d.kind.is_read() => {
            let n = data.len().min(t);
            buf[..n].copy_from_slice(&data[..n]);
        }
        Some(data) => {
            let end = (t + data.len()).min(buf.len());
            buf[t..end].copy_from_slice(&data[..end - t]);
        }
        None if !given && !d.kind.is_read() && d.remaining() > 0 => {
            return Err(Error::MissingData {
                user_data: d.user_data,
            })
        }
        None => {}
    }
    Ok(())
}

/// Skips the first `t` bytes of a vectored op's iovecs (they were moved before).
fn skip_iov(op: &mut Op, t: u64) {
    let Payload::Bufs(v) = &mut op.desc.payload else {
        return;
    };
    let mut left = t as usize;
    let mut drop_n = 0;
    for iov in v.iov.iter_mut() {
        if left == 0 {
            break;
        }
        if left >= iov.iov_len {
            left -= iov.iov_len;
            drop_n += 1;
        } else {
            // SAFETY: `left` < the iovec's length, so the pointer stays in its buffer.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
            iov.iov_len -= left;
            left = 0;
        }
    }
    v.iov.drain(..drop_n);
    if op.desc.offset != NO_OFFSET {
        op.desc.offset += t;
    }
}
