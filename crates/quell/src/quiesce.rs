//! Quiescing a ring for a checkpoint (DESIGN I9): stop dispatching, let Bounded ops
//! finish within a bound, cancel everything else, and describe what was canceled.
//!
//! A child module of `ring`: it reads the op table directly.

use super::*;
use crate::checkpoint::{Checkpoint, CheckpointId, FileRef, OpDescriptor, Unfinished};
use crate::op::SockAddr;
use std::collections::HashMap;

/// How [`Ring::quiesce`] treats the outstanding ops.
///
/// ```
/// use std::time::Duration;
/// let p = quell::QuiescePolicy::default()
///     .bound(Duration::from_millis(500))
///     .cancel_wait(Duration::from_secs(2))
///     .carry_data(false);
/// # let _ = p;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct QuiescePolicy {
    pub(crate) bound: Duration,
    pub(crate) cancel_wait: Duration,
    pub(crate) carry_data: bool,
}

impl Default for QuiescePolicy {
    fn default() -> Self {
        QuiescePolicy {
            bound: Duration::from_secs(1),
            cancel_wait: Duration::from_secs(5),
            carry_data: true,
        }
    }
}

impl QuiescePolicy {
    /// How long to wait for Bounded ops (device I/O, which cannot be canceled) to
    /// finish (default 1 s). Those still running then are reported as
    /// [`Unfinished`](crate::Unfinished) and stay owned by the ring.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// use quell::{Op, QuiescePolicy};
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(Op::read_at(file.as_raw_fd(), 0, vec![0u8; 4096]))?;
    /// ring.flush()?; // with the kernel now
    /// // A file read cannot be canceled: the quiesce lets it finish within the bound.
    /// let ckpt = ring.quiesce(QuiescePolicy::default().bound(Duration::from_secs(5)))?;
    /// assert!(ckpt.ops.is_empty() && ckpt.unfinished.is_empty());
    /// assert!(ring.wait_for(id)?.outcome.is_done());
    /// # Ok(()) }
    /// ```
    pub fn bound(mut self, d: Duration) -> Self {
        self.bound = d;
        self
    }

    /// How long to wait for the kernel to confirm the cancels (default 5 s). Cancels of
    /// Prompt and Interruptible ops normally land within milliseconds.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// use quell::{Op, Outcome, QuiescePolicy};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.flush()?;
    /// let ckpt = ring.quiesce(QuiescePolicy::default().cancel_wait(Duration::from_secs(1)))?;
    /// // The socket read's cancel was confirmed in time: it is described, not unfinished.
    /// assert_eq!(ckpt.ops.len(), 1);
    /// assert!(ckpt.unfinished.is_empty());
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::Canceled { transferred: 0 });
    /// # Ok(()) }
    /// ```
    pub fn cancel_wait(mut self, d: Duration) -> Self {
        self.cancel_wait = d;
        self
    }

    /// Whether descriptors carry the bytes needed to re-issue their op anywhere
    /// (default `true`): the prefix a read already received, the tail a write still has
    /// to write. Without them, [`Ring::resubmit`] needs the old buffers
    /// ([`Buffers::from_completions`](crate::Buffers::from_completions)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{Buffers, Op, QuiescePolicy};
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
    /// ring.submit(Op::read(a.as_raw_fd(), vec![0u8; 8]))?; // takes the one dispatch slot
    /// ring.submit(Op::write(a.as_raw_fd(), b"reply".to_vec()))?; // stays queued
    /// let ckpt = ring.quiesce(QuiescePolicy::default().carry_data(false))?;
    /// let w = ckpt.ops.iter().position(|d| d.kind == quell::OpKind::Write).unwrap();
    /// assert_eq!(ckpt.ops[w].data, None); // smaller checkpoint, but not self-contained
    /// let mut fresh = quell::Ring::new()?;
    /// // Without the old buffers the write cannot be re-issued...
    /// let refused = fresh.resubmit(&ckpt, Buffers::new()).remove(w).unwrap_err();
    /// assert!(matches!(refused.error, quell::Error::MissingData { .. }));
    /// // ...with them it can.
    /// let ids = fresh.resubmit(&ckpt, Buffers::from_completions(ring.completions()));
    /// assert!(fresh.wait_for(*ids[w].as_ref().unwrap())?.outcome.is_done());
    /// let mut got = [0u8; 5];
    /// std::io::Read::read_exact(&mut &b, &mut got)?;
    /// assert_eq!(&got, b"reply");
    /// # Ok(()) }
    /// ```
    pub fn carry_data(mut self, yes: bool) -> Self {
        self.carry_data = yes;
        self
    }
}

impl Ring {
    /// Quiesces the ring for a checkpoint and returns it (DESIGN I9).
    ///
    /// Dispatching stops (and stays stopped until [`resume`](Ring::resume)); ops in
    /// quell's queue and Prompt/Interruptible ops in flight are canceled; Bounded ops in
    /// flight are waited for up to the policy's bound. Every op the quiesce canceled
    /// before it finished becomes an [`OpDescriptor`] that
    /// [`resubmit`](Ring::resubmit) can re-issue so it continues where it stopped.
    ///
    /// Every op still yields its one completion in this ring: the ones described in the
    /// checkpoint complete `Canceled { transferred }` (their buffers can be handed to
    /// `resubmit`); the Bounded ones that finished complete as usual; those past the
    /// bound are listed in [`Checkpoint::unfinished`] and keep their memory until the
    /// kernel is done with it, like every op.
    ///
    /// An op whose cancel the kernel had not confirmed when the quiesce returned
    /// (listed unfinished, `CancelRequested`) is described by the next `quiesce` once
    /// its `Canceled` completion has arrived (and until the caller takes that
    /// completion, or [`resume`](Ring::resume)s the ring): each canceled op is
    /// described by exactly one checkpoint. Chains and a [`LazyRead`](crate::lazy)'s
    /// internal reads are canceled but never described: a chain's slot holds only its
    /// current step, which must not be re-issued alone.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 5]).user_data(1))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// assert_eq!(ckpt.ops.len(), 1);
    /// assert!(ckpt.unfinished.is_empty());
    ///
    /// // Later (here: another ring), the read continues.
    /// let mut fresh = quell::Ring::new()?;
    /// let ids = fresh.resubmit(&ckpt, quell::Buffers::new());
    /// std::io::Write::write_all(&mut &w, b"hello")?;
    /// let c = fresh.wait_for(*ids[0].as_ref().unwrap())?;
    /// assert_eq!((c.user_data, c.data()), (1, &b"hello"[..]));
    /// # Ok(()) }
    /// ```
    pub fn quiesce(&mut self, policy: QuiescePolicy) -> Result<Checkpoint, Error> {
        // Ops canceled by an earlier quiesce whose cancel was not yet confirmed when it
        // returned are described by this one, once their completion is in.
        let mut marked = std::mem::take(&mut self.quiesce_marked);
        let r = self.quiesce_with(policy, &mut marked);
        self.quiesce_marked = marked;
        r
    }

    fn quiesce_with(
        &mut self,
        policy: QuiescePolicy,
        marked: &mut Vec<u64>,
    ) -> Result<Checkpoint, Error> {
        let start = Instant::now();
        self.paused = true;
        self.take_requests();
        self.fire_timers();
        loop {
            self.reap();
            self.cancel_for_quiesce(marked);
            self.backend
                .flush()
                .map_err(|e| Error::io("submitting to the backend", e))?;
            let (bounded, canceling) = self.quiesce_pending();
            let t = start.elapsed();
            let mut left = Duration::ZERO;
            if bounded > 0 {
                left = left.max(policy.bound.saturating_sub(t));
            }
            if canceling > 0 {
                left = left.max(policy.cancel_wait.saturating_sub(t));
            }
            if left.is_zero() {
                break;
            }
            self.backend
                .wait(Some(left.min(Duration::from_millis(50))))
                .map_err(|e| Error::io("waiting for completions", e))?;
            self.take_requests();
            self.fire_timers();
        }
        Ok(self.checkpoint_of(marked, policy.carry_data))
    }

    /// Lets a quiesced ring dispatch again (ops submitted meanwhile waited in its queue).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// ring.quiesce(quell::QuiescePolicy::default())?;
    /// assert!(ring.is_quiesced());
    /// let id = ring.submit(quell::Op::nop())?;
    /// ring.resume();
    /// assert!(ring.wait_for(id)?.outcome.is_done());
    /// # Ok(()) }
    /// ```
    pub fn resume(&mut self) {
        self.paused = false;
        // Running again: ops an earlier quiesce canceled are the caller's to re-issue
        // from the checkpoints it has; no later checkpoint describes them.
        self.quiesce_marked.clear();
        self.dispatch();
    }

    /// Whether the ring is quiesced (dispatching stopped by [`quiesce`](Ring::quiesce)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// assert!(!ring.is_quiesced());
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// assert!(ring.is_quiesced());
    /// // E.g. the checkpoint could not be saved: carry on where we were.
    /// ring.resubmit(&ckpt, quell::Buffers::new());
    /// ring.resume();
    /// assert!(!ring.is_quiesced());
    /// # Ok(()) }
    /// ```
    pub fn is_quiesced(&self) -> bool {
        self.paused
    }

    /// Cancels what a quiesce cancels: everything queued, and in-flight ops that can be
    /// canceled and were not already. Remembers them in `marked`.
    fn cancel_for_quiesce(&mut self, marked: &mut Vec<u64>) {
        let table = &self.table;
        let hits: Vec<u32> = table
            .live()
            .filter(|&i| {
                let s = table.slot(i);
                match s.state {
                    SlotState::Queued => true,
                    SlotState::InFlight => {
                        s.class != CancelClass::Bounded && s.flags & F_CANCEL == 0
                    }
                    _ => false,
                }
            })
            .collect();
        for idx in hits {
            let s = self.table.slot(idx);
            // A chain is canceled (and closes what it opened) but not described: its
            // slot holds only the current step, which must not be re-issued alone. An
            // internal op (a LazyRead's chunk) belongs to its owner, which sees the cancel.
            if s.flags & (F_CHAIN | F_SINK) == 0 {
                marked.push(key_of(idx, s.gen));
            }
            self.cancel_slot(idx, false);
        }
    }

    /// In-flight ops still running: (not canceled — Bounded, cancel requested).
    fn quiesce_pending(&self) -> (usize, usize) {
        let (mut bounded, mut canceling) = (0, 0);
        for i in self.table.live() {
            let s = self.table.slot(i);
            if s.state == SlotState::InFlight {
                if s.flags & F_CANCEL != 0 {
                    canceling += 1;
                } else {
                    bounded += 1;
                }
            }
        }
        (bounded, canceling)
    }

    /// The checkpoint of the ring as it is now. `marked` keeps only the ops still
    /// running (listed as unfinished): each other one is described now or never.
    fn checkpoint_of(&self, marked: &mut Vec<u64>, carry: bool) -> Checkpoint {
        let outcomes: HashMap<u32, Outcome> = self.completions.iter().copied().collect();
        let now = self.now_ns();
        let mut ops = Vec::new();
        marked.retain(|&key| {
            let (idx, gen) = split_key(key);
            let s = self.table.slot(idx);
            if s.gen != gen {
                return false; // its completion was taken: the caller has it
            }
            if s.state != SlotState::Completed {
                return s.state == SlotState::InFlight; // still running: unfinished
            }
            // Done (the cancel came too late) or Failed: the op finished; not re-issued.
            if let Some(Outcome::Canceled { transferred }) = outcomes.get(&idx) {
                ops.push(self.describe(idx, *transferred as u64, carry, now));
            }
            false
        });
        let mut unfinished = Vec::new();
        for idx in self.table.live() {
            let s = self.table.slot(idx);
            let state = match s.state {
                SlotState::InFlight if s.flags & F_CANCEL != 0 => OpState::CancelRequested,
                SlotState::InFlight => OpState::InFlight,
                SlotState::Detached => OpState::Detached,
                _ => continue,
            };
            unfinished.push(Unfinished {
                id: CheckpointId {
                    slot: idx,
                    generation: s.gen,
                },
                user_data: s.user_data,
                kind: s.desc.kind,
                fd: s.desc.fd,
                offset: (s.desc.offset != NO_OFFSET && s.desc.kind.uses_fd())
                    .then_some(s.desc.offset),
                len: s.desc.request_len(),
                class: s.class,
                state,
                age: Duration::from_nanos(now.saturating_sub(s.submitted)),
                group_path: self.groups.path(s.group),
            });
        }
        Checkpoint {
            version: crate::checkpoint::CHECKPOINT_VERSION,
            pid: std::process::id(),
            ops,
            unfinished,
        }
    }

    /// The descriptor of the completed (canceled) slot `idx`.
    fn describe(&self, idx: u32, transferred: u64, carry: bool, now: u64) -> OpDescriptor {
        let s = self.table.slot(idx);
        let d = &s.desc;
        let kind = d.kind;
        let len = d.request_len();
        let offset = match kind {
            OpKind::Read
            | OpKind::Write
            | OpKind::Readv
            | OpKind::Writev
            | OpKind::Fallocate
            | OpKind::Splice => (d.offset != NO_OFFSET).then_some(d.offset),
            _ => None,
        };
        let offset2 = (kind == OpKind::Splice && d.aux != NO_OFFSET).then_some(d.aux);
        let file_of = |fd: RawFd| if fd >= 0 { FileRef::of(fd) } else { None };
        let uses_fd = kind.uses_fd();
        let (mut path, mut path2, mut addr, mut iov_lens) = (None, None, None, Vec::new());
        let mut flat: Option<&[u8]> = None;
        let joined: Vec<u8>;
        match &d.payload {
            Payload::Buf(v) => flat = Some(v),
            Payload::Aligned(a) => flat = Some(a),
            Payload::Bufs(v) => {
                iov_lens = v.bufs.iter().map(|b| b.len() as u64).collect();
                if carry {
                    joined = v.bufs.concat();
                    flat = Some(&joined);
                }
            }
            Payload::Path(p) => path = Some(p.as_bytes().to_vec()),
            Payload::Paths(p) => {
                path = Some(p.0.as_bytes().to_vec());
                path2 = Some(p.1.as_bytes().to_vec());
            }
            Payload::Statx(x) => path = Some(x.path.as_bytes().to_vec()),
            Payload::Addr(a) => addr = socket_addr(a),
            _ => {}
        }
        let t = (transferred as usize).min(flat.map_or(0, |f| f.len()));
        let data = match flat {
            Some(f) if carry && kind.is_read() => Some(f[..t].to_vec()),
            Some(f) if carry && kind.is_transfer() => {
                Some(f[t..(len as usize).min(f.len())].to_vec())
            }
            _ => None,
        };
        let deadline = s.deadline.min(self.groups.v[s.group as usize].deadline);
        OpDescriptor {
            id: CheckpointId {
                slot: idx,
                generation: s.gen,
            },
            user_data: s.user_data,
            kind,
            fd: d.fd,
            file: if uses_fd { file_of(d.fd) } else { None },
            fd2: d.fd2,
            file2: if uses_fd { file_of(d.fd2) } else { None },
            offset,
            offset2,
            len,
            transferred,
            iov_lens,
            // RW_DIRECT is the ring's own hint for reads and writes, not the op's.
            flags: if matches!(
                kind,
                OpKind::Read | OpKind::Write | OpKind::Readv | OpKind::Writev
            ) {
                d.flags & !crate::op::RW_DIRECT
            } else {
                d.flags
            },
            mode: if matches!(kind, OpKind::OpenAt | OpKind::Statx) {
                d.aux
            } else {
                0
            },
            exact: s.flags & F_EXACT != 0,
            path,
            path2,
            addr,
            sleep: (kind == OpKind::Timeout).then(|| {
                Duration::from_nanos(d.aux.saturating_sub(now.saturating_sub(s.submitted)))
            }),
            group_path: self.groups.path(s.group),
            deadline_left: (deadline != u64::MAX)
                .then(|| Duration::from_nanos(deadline.saturating_sub(now))),
            class: s.class,
            data,
        }
    }
}

/// The standard-library form of a socket address kept for `connect`.
fn socket_addr(a: &SockAddr) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let family = a.storage.ss_family as i32;
    let p = (&a.storage as *const libc::sockaddr_storage).cast::<u8>();
    if family == libc::AF_INET {
        // SAFETY: the storage holds a sockaddr_in (family says so); read_unaligned copies it.
        let sin: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(p.cast()) };
        Some(
            SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )
            .into(),
        )
    } else if family == libc::AF_INET6 {
        // SAFETY: the storage holds a sockaddr_in6 (family says so).
        let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(p.cast()) };
        Some(
            SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )
            .into(),
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for a in ["127.0.0.1:8080", "[::1]:443", "[fe80::1%2]:9"] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            let k = crate::op::sockaddr(addr);
            assert_eq!(socket_addr(&k), Some(addr), "{a}");
        }
    }
}
