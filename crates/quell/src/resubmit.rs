//! Re-issuing a checkpoint's ops on a ring (DESIGN I9), possibly in another process.
//!
//! A child module of `ring`: it sets the bytes-already-moved of the new slots before
//! they are dispatched, so each transfer continues where it stopped.

use super::*;
use crate::buf::AlignedBuf;
use crate::checkpoint::{identity, Checkpoint, CheckpointId, OpDescriptor};
use crate::completion::Completion;
use std::collections::{HashMap, HashSet};
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
    by_id: HashMap<CheckpointId, ResubmitBuffer>,
}

/// Memory given to [`Ring::resubmit`] for one op (through [`Buffers`]), and handed back
/// in its [`ResubmitError`] when the op could not be re-issued: for a read stopped
/// part-way without carried data, it holds the only copy of the bytes received (I11).
///
/// ```
/// let b = quell::ResubmitBuffer::Plain(b"abc".to_vec());
/// assert_eq!(b.into_plain().unwrap(), b"abc");
/// ```
#[derive(Debug)]
pub enum ResubmitBuffer {
    /// One buffer (read, write, send, recv).
    Plain(Vec<u8>),
    /// One aligned buffer (`O_DIRECT` read or write).
    Aligned(AlignedBuf),
    /// The buffers of a vectored op.
    Vectored(Vec<Vec<u8>>),
}

impl ResubmitBuffer {
    /// The plain buffer, if it is one.
    ///
    /// ```
    /// let b = quell::ResubmitBuffer::Vectored(vec![vec![1], vec![2]]);
    /// assert!(b.into_plain().is_none());
    /// ```
    pub fn into_plain(self) -> Option<Vec<u8>> {
        match self {
            ResubmitBuffer::Plain(v) => Some(v),
            _ => None,
        }
    }

    /// The aligned buffer, if it is one.
    ///
    /// ```
    /// let a = quell::AlignedBuf::new(4096, 4096).unwrap();
    /// let b = quell::ResubmitBuffer::Aligned(a);
    /// assert_eq!(b.into_aligned().unwrap().len(), 4096);
    /// ```
    pub fn into_aligned(self) -> Option<AlignedBuf> {
        match self {
            ResubmitBuffer::Aligned(a) => Some(a),
            _ => None,
        }
    }

    /// The buffers of a vectored op, if they are.
    ///
    /// ```
    /// let b = quell::ResubmitBuffer::Vectored(vec![vec![1], vec![2]]);
    /// assert_eq!(b.into_vectored().unwrap(), [vec![1], vec![2]]);
    /// ```
    pub fn into_vectored(self) -> Option<Vec<Vec<u8>>> {
        match self {
            ResubmitBuffer::Vectored(v) => Some(v),
            _ => None,
        }
    }

    /// The memory inside an op as built, if it holds a buffer.
    fn of_op(op: Op) -> Option<ResubmitBuffer> {
        match op.desc.payload {
            Payload::Buf(v) => Some(ResubmitBuffer::Plain(v)),
            Payload::Aligned(a) => Some(ResubmitBuffer::Aligned(a)),
            Payload::Bufs(v) => Some(ResubmitBuffer::Vectored(v.bufs)),
            _ => None,
        }
    }
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
            Payload::Buf(v) => ResubmitBuffer::Plain(v),
            Payload::Aligned(a) => ResubmitBuffer::Aligned(a),
            Payload::Bufs(v) => ResubmitBuffer::Vectored(v.bufs),
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
        self.by_id.insert(id, ResubmitBuffer::Plain(buf));
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
        self.by_id.insert(id, ResubmitBuffer::Vectored(bufs));
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
/// descriptor yields either a new [`OpId`] or one of these, and memory the caller gave
/// for the op comes back in it.
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
    /// The op as built, when the ring refused it at submission. Memory `resubmit`
    /// allocated for it is not kept (the checkpoint still has its bytes); memory the
    /// caller gave is, inside the op.
    pub op: Option<Box<Op>>,
    /// The memory the caller gave for the op, when it was refused before it was built
    /// (a descriptor that fails its checks, a descriptor number now on another file,
    /// a buffer of the wrong size, ...).
    pub buffer: Option<ResubmitBuffer>,
}

impl ResubmitError {
    /// The memory the caller gave for this op, wherever it is (the op as built, or
    /// [`buffer`](ResubmitError::buffer)); `None` if the caller gave none.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let old = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4]))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default().carry_data(false))?;
    /// let mut bufs = quell::Buffers::new();
    /// bufs.insert(old.into(), vec![0u8; 3]); // not the op's size
    /// let err = ring.resubmit(&ckpt, bufs).remove(0).unwrap_err();
    /// assert_eq!(err.into_buffer().unwrap().into_plain().unwrap().len(), 3);
    /// # ring.resume();
    /// # Ok(()) }
    /// ```
    pub fn into_buffer(self) -> Option<ResubmitBuffer> {
        match self.buffer {
            Some(b) => Some(b),
            None => ResubmitBuffer::of_op(*self.op?),
        }
    }
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

/// A refusal inside `resubmit`, before it is numbered.
struct Refused {
    error: Error,
    op: Option<Box<Op>>,
    buffer: Option<ResubmitBuffer>,
}

impl Refused {
    fn new(error: Error, buffer: Option<ResubmitBuffer>) -> Refused {
        Refused {
            error,
            op: None,
            buffer,
        }
    }
}

/// An op rebuilt from its descriptor, not yet submitted.
struct Rebuilt {
    op: Op,
    /// Bytes it had moved before (recorded in its slot).
    prior: u64,
    /// Whether its memory was allocated here (rather than given by the caller).
    fresh: bool,
}

impl Ring {
    /// Re-issues every op of `ckpt` on this ring (DESIGN I9): the result has one entry
    /// per [`Checkpoint::ops`] descriptor, in order — the new op's id, or why it could
    /// not be re-issued (its descriptor closed or now on another file, missing data, a
    /// closure op, a refusal by the ring). Transfers continue where they stopped: same
    /// buffer size, the bytes already moved skipped, and the completion reports the
    /// whole op's total (a splice, which has no buffer, continues for the bytes it had
    /// left and its completion counts those). Groups are found (or created) by path;
    /// deadlines restart with the time that was left.
    ///
    /// A checkpoint is input (from disk, from another program): every descriptor is
    /// checked ([`OpDescriptor::check`]) before anything is allocated or changed for it,
    /// so a corrupt one gets a per-op error, never a panic or an allocation of whatever
    /// length it claims. Two descriptors with one id are both refused. An op refused
    /// leaves nothing behind (no group created for it, the ring as paused as it was),
    /// and the memory the caller gave for it comes back in its error. Buffers given for
    /// ids the checkpoint does not describe, or for ops that take no buffer, are dropped.
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
        // No ring writes one id twice; which of two such descriptors the caller's
        // buffer for that id belongs to cannot be told, so neither is re-issued.
        let mut seen = HashSet::with_capacity(ckpt.ops.len());
        let twice: HashSet<CheckpointId> = ckpt
            .ops
            .iter()
            .filter(|d| !seen.insert(d.id))
            .map(|d| d.id)
            .collect();
        let was_paused = self.paused;
        // Nothing may be dispatched before its bytes-already-moved is set.
        self.paused = true;
        let mut out = Vec::with_capacity(ckpt.ops.len());
        for (index, d) in ckpt.ops.iter().enumerate() {
            let mem = buffers.by_id.remove(&d.id);
            let r = if twice.contains(&d.id) {
                Err(Refused::new(
                    Error::InvalidArgument("two descriptors with one checkpoint id"),
                    mem,
                ))
            } else {
                self.reissue(d, mem)
            };
            let r = r.map_err(|f| ResubmitError {
                index,
                user_data: d.user_data,
                error: f.error,
                op: f.op,
                buffer: f.buffer,
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

    /// Re-issues one descriptor. Everything that can refuse it without allocating or
    /// changing anything runs first.
    fn reissue(&mut self, d: &OpDescriptor, mem: Option<ResubmitBuffer>) -> Result<OpId, Refused> {
        if let Err(e) = d.check() {
            return Err(Refused::new(e, mem));
        }
        let deadline = match d.deadline_left {
            None => None,
            Some(left) => match Instant::now().checked_add(left) {
                Some(t) => Some(t),
                None => {
                    return Err(Refused::new(
                        Error::InvalidArgument("deadline further away than the clock holds"),
                        mem,
                    ))
                }
            },
        };
        let mut checked = [None, None];
        for (i, (fd, file)) in [(d.fd, &d.file), (d.fd2, &d.file2)].into_iter().enumerate() {
            let Some(f) = file else { continue };
            match identity(fd) {
                None => return Err(Refused::new(Error::InvalidFd { fd }, mem)),
                Some(id) if !f.is(id) => return Err(Refused::new(Error::FdChanged { fd }, mem)),
                Some(_) => checked[i] = Some(fd),
            }
        }
        // What `submit` would refuse anyway, found before memory is made for the op.
        if self.closed {
            return Err(Refused::new(Error::Closed, mem));
        }
        if self.table.len() >= self.table.capacity() {
            let capacity = self.table.capacity();
            return Err(Refused::new(Error::TableFull { capacity }, mem));
        }
        if let Some(idx) = self.existing_group(&d.group_path) {
            let g = &self.groups.v[idx as usize];
            if g.draining && !g.canceled {
                return Err(Refused::new(Error::Draining, mem));
            }
        }
        let Rebuilt {
            mut op,
            prior,
            fresh,
        } = rebuild(d, mem)?;
        op.deadline = deadline;
        let mut created = Vec::new();
        let group = match self.group_at_path(&d.group_path, &mut created) {
            Ok(g) => g,
            Err(e) => {
                self.remove_groups(&created);
                let buffer = if fresh {
                    None
                } else {
                    ResubmitBuffer::of_op(op)
                };
                return Err(Refused::new(e, buffer));
            }
        };
        op.group = Some(group);
        // The number may have named another kind of file in this ring before (I12).
        for fd in checked.into_iter().flatten() {
            self.fds.forget(fd);
        }
        match self.submit(op) {
            Ok(id) => {
                self.carry_prior(id, prior);
                Ok(id)
            }
            Err(e) => {
                self.remove_groups(&created);
                let (error, op) = e.into_parts();
                Err(Refused {
                    error,
                    op: (!fresh).then(|| Box::new(op)),
                    buffer: None,
                })
            }
        }
    }

    /// Records the bytes a re-issued op had moved before, in its slot, before it is
    /// dispatched. An op completed at once (its group already canceled, no time left
    /// before its deadline) has its completion queued already, counting nothing: it
    /// gets the bytes it carries counted too (I4: `Canceled { transferred }` says what
    /// the buffer holds).
    fn carry_prior(&mut self, id: OpId, prior: u64) {
        if prior == 0 {
            return;
        }
        let s = self.table.slot_mut(id.slot);
        s.transferred = prior;
        if s.state != SlotState::Completed {
            return;
        }
        // The ring is paused and nothing is reaped meanwhile: the completion just
        // queued is the last one.
        let Some(pos) = self.completions.iter().rposition(|&(i, _)| i == id.slot) else {
            return;
        };
        let Some((idx, outcome)) = self.completions.remove(pos) else {
            return;
        };
        let n = prior as usize;
        let outcome = match outcome {
            Outcome::Canceled { transferred } => Outcome::Canceled {
                transferred: transferred + n,
            },
            Outcome::TimedOut { transferred } => Outcome::TimedOut {
                transferred: transferred + n,
            },
            o => o,
        };
        self.completions.push_back((idx, outcome));
    }

    /// The group at `path` ("root/a/b") if every group on it exists.
    fn existing_group(&self, path: &str) -> Option<u32> {
        let mut cur = 0u32;
        for name in path.split('/').skip(1) {
            cur = self.child_named(cur, name)?;
        }
        Some(cur)
    }

    fn child_named(&self, parent: u32, name: &str) -> Option<u32> {
        self.groups.v[parent as usize]
            .children
            .iter()
            .copied()
            .find(|&c| self.groups.v[c as usize].name.as_deref() == Some(name))
    }

    /// Finds or creates the group at `path` ("root/a/b"), by names; the groups it
    /// creates are added to `created` (parents first).
    fn group_at_path(&mut self, path: &str, created: &mut Vec<GroupId>) -> Result<GroupId, Error> {
        let mut cur = 0u32;
        for name in path.split('/').skip(1) {
            cur = match self.child_named(cur, name) {
                Some(c) => c,
                None => {
                    let parent = self.groups.id_of(cur);
                    let g = self.group(parent, GroupOptions::default().name(name))?;
                    created.push(g);
                    g.idx
                }
            };
        }
        Ok(self.groups.id_of(cur))
    }

    /// Removes groups made for an op that was then refused (children first). They hold
    /// nothing: the refused op never entered them.
    fn remove_groups(&mut self, created: &[GroupId]) {
        for &g in created.iter().rev() {
            let removed = self.remove_group(g);
            debug_assert!(
                removed.is_ok(),
                "a group made for a refused op: {removed:?}"
            );
        }
    }
}

/// The op a checked descriptor describes. Memory is allocated here, and only here:
/// after every check that could refuse the op without it.
fn rebuild(d: &OpDescriptor, mem: Option<ResubmitBuffer>) -> Result<Rebuilt, Refused> {
    let t = d.transferred;
    let offset = d.offset.unwrap_or(NO_OFFSET);
    let given = mem.is_some();
    // Memory the caller gave goes back with a refusal; memory made here is dropped.
    let back = |m: ResubmitBuffer| given.then_some(m);
    let path = |p: &Option<Vec<u8>>| OsStr::from_bytes(p.as_deref().unwrap_or_default()).to_owned();
    let writes = matches!(d.kind, OpKind::Write | OpKind::Writev | OpKind::Send);
    if writes && !given && d.data.is_none() && d.remaining() > 0 {
        return Err(Refused::new(
            Error::MissingData {
                user_data: d.user_data,
            },
            None,
        ));
    }
    let mut prior = 0;
    let mut op = match d.kind {
        OpKind::Read | OpKind::Write | OpKind::Send | OpKind::Recv => {
            let mem = match mem {
                Some(m) => m,
                None => fresh_memory(d),
            };
            let kind = d.kind;
            let fd = d.fd;
            let wrong = |why: &'static str, m: ResubmitBuffer| {
                Err(Refused::new(Error::InvalidArgument(why), back(m)))
            };
            let op = match mem {
                ResubmitBuffer::Plain(mut v) => {
                    if v.len() as u64 != d.len {
                        return wrong(
                            "buffer length differs from the checkpointed op's",
                            ResubmitBuffer::Plain(v),
                        );
                    }
                    fill(d, &mut [&mut v[..]]);
                    if matches!(kind, OpKind::Read | OpKind::Write) {
                        Op::buf_op(kind, fd, offset, v)
                    } else {
                        let mut op = Op::buf_op(kind, fd, NO_OFFSET, v);
                        op.desc.flags = d.flags;
                        op
                    }
                }
                ResubmitBuffer::Aligned(mut a) if matches!(kind, OpKind::Read | OpKind::Write) => {
                    if a.len() as u64 != d.len {
                        return wrong(
                            "buffer length differs from the checkpointed op's",
                            ResubmitBuffer::Aligned(a),
                        );
                    }
                    fill(d, &mut [&mut a[..]]);
                    if kind == OpKind::Read {
                        Op::read_aligned(fd, offset, a)
                    } else {
                        Op::write_aligned(fd, offset, a)
                    }
                }
                m @ ResubmitBuffer::Aligned(_) => {
                    return wrong("an aligned buffer for a socket op", m)
                }
                m @ ResubmitBuffer::Vectored(_) => return wrong("a single buffer is needed", m),
            };
            prior = t;
            op
        }
        OpKind::Readv | OpKind::Writev => {
            let mut bufs = match mem {
                Some(ResubmitBuffer::Vectored(b)) => b,
                Some(m) => {
                    return Err(Refused::new(
                        Error::InvalidArgument("vectored buffers are needed"),
                        Some(m),
                    ))
                }
                None => d.iov_lens.iter().map(|&l| vec![0u8; l as usize]).collect(),
            };
            if !bufs
                .iter()
                .map(|b| b.len() as u64)
                .eq(d.iov_lens.iter().copied())
            {
                return Err(Refused::new(
                    Error::InvalidArgument("buffer lengths differ from the checkpointed op's"),
                    back(ResubmitBuffer::Vectored(bufs)),
                ));
            }
            let mut parts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
            fill(d, &mut parts);
            drop(parts);
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
                return Err(Refused::new(
                    Error::InvalidArgument("connect without an address"),
                    mem,
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
        // Checked: offsets plus the length stay within i64::MAX, the length within u32.
        OpKind::Splice => Op::splice(
            d.fd,
            d.offset.map(|o| o + t),
            d.fd2,
            d.offset2.map(|o| o + t),
            d.remaining() as u32,
        ),
        OpKind::OpenAt => {
            let mut op = Op::openat(d.fd, path(&d.path), 0, d.mode as u32);
            op.desc.flags = d.flags | libc::O_CLOEXEC as u32;
            op
        }
        OpKind::Statx => Op::statx(d.fd, path(&d.path), d.flags as i32, d.mode as u32),
        OpKind::UnlinkAt => Op::unlinkat(d.fd, path(&d.path), d.flags as i32),
        OpKind::RenameAt => Op::renameat(d.fd, path(&d.path), d.fd2, path(&d.path2), d.flags),
        OpKind::Blocking => {
            return Err(Refused::new(
                Error::Unsupported {
                    op: "blocking",
                    backend: "checkpoint",
                    why: "a closure cannot be checkpointed",
                },
                mem,
            ))
        }
    };
    op.user_data = d.user_data;
    if d.exact {
        op = op.exact();
    }
    let buffered = matches!(
        d.kind,
        OpKind::Read | OpKind::Write | OpKind::Send | OpKind::Recv | OpKind::Readv | OpKind::Writev
    );
    Ok(Rebuilt {
        op,
        prior,
        fresh: buffered && !given,
    })
}

/// A new buffer for a single-buffer op (its length checked to be at most `i32::MAX`):
/// aligned when its descriptor is open `O_DIRECT` now, whatever the checkpoint says.
fn fresh_memory(d: &OpDescriptor) -> ResubmitBuffer {
    if matches!(d.kind, OpKind::Read | OpKind::Write) {
        // SAFETY: F_GETFL takes no pointer; an invalid fd answers -1.
        let fl = unsafe { libc::fcntl(d.fd, libc::F_GETFL) };
        if fl >= 0 && fl & libc::O_DIRECT != 0 {
            if let Some(a) = AlignedBuf::new(d.len as usize, 4096) {
                return ResubmitBuffer::Aligned(a);
            }
        }
    }
    ResubmitBuffer::Plain(vec![0u8; d.len as usize])
}

/// Puts the carried bytes where they belong in the whole buffer (`parts` in order): a
/// read's received prefix, a write's unwritten tail. Their lengths were checked
/// against the op's, and the buffer's length against the op's.
fn fill(d: &OpDescriptor, parts: &mut [&mut [u8]]) {
    let Some(data) = &d.data else { return };
    let at = if d.kind.is_read() {
        0
    } else {
        d.transferred as usize
    };
    let mut skip = at;
    let mut src = &data[..];
    for p in parts.iter_mut() {
        if src.is_empty() {
            break;
        }
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        let n = (p.len() - skip).min(src.len());
        p[skip..skip + n].copy_from_slice(&src[..n]);
        src = &src[n..];
        skip = 0;
    }
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
