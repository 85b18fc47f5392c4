//! The portable backend: epoll for pollable descriptors, quell's interruptible thread
//! pool for everything else. Used where io_uring is missing or forbidden (seccomp in
//! containers, `kernel.io_uring_disabled`), or when asked for.
//!
//! # How each op runs
//! - **Pollable descriptors** (class `Prompt`: pipes, sockets, eventfd, character
//!   devices): the call is tried at once on the ring's thread without blocking
//!   (`preadv2`/`pwritev2` with `RWF_NOWAIT`, `MSG_DONTWAIT` for sockets, a plain call if
//!   the descriptor is already `O_NONBLOCK`; the descriptor's flags are never changed).
//!   If it would block, the op waits in a FIFO per descriptor and direction; the
//!   descriptor has one epoll registration (`EPOLLONESHOT`, re-armed with the union of
//!   what its waiters need), and when it is ready the waiters are served in order, inline,
//!   until one would block again. No thread, no context switch per op. A descriptor
//!   that supports none of these (a blocking timerfd, a blocking listening socket) goes
//!   to the pool.
//! - **Regular files** (class `Bounded`): a positioned read or write is tried inline with
//!   `RWF_NOWAIT` (a page-cache hit costs one system call); only a miss (`EAGAIN`, or
//!   `EOPNOTSUPP` where the file system cannot) goes to the pool. A short inline read that
//!   is not at end of file continues on the pool from where it stopped. Nothing is
//!   remembered per descriptor number (a file system without `RWF_NOWAIT` answers
//!   `EOPNOTSUPP` again each time, one cheap failed call before the pool).
//! - **Timeouts**: a binary heap serviced through `epoll_wait`'s timeout.
//! - **Everything else** (class `Interruptible`, i.e. FUSE/NFS; open, statx, fsync,
//!   fallocate, rename, unlink, splice, close of a non-pollable descriptor;
//!   `Op::blocking` closures): the pool, with plain blocking calls.
//!
//! # Cancel
//! A waiting op (FIFO or timer) is canceled on the spot, with certainty and without a
//! system call: it is dropped from its index (the FIFO entry is skipped lazily) and
//! completes `-ECANCELED` at the next reap, in O(1). A pool op is canceled as the pool
//! says (certain while queued, interrupted by a signal while running).
//!
//! # Descriptor identity (contract item I12)
//! The waiters of a descriptor are kept under its number, and a number can be closed and
//! reused by another file while ops wait on it. On io_uring an op holds a reference to its
//! file, so it keeps acting on that file whatever becomes of the number. Here:
//! - **Closed through the ring** (`Op::close`): the waiters are moved onto a private
//!   duplicate of the descriptor (registered in epoll in its place), which is closed when
//!   the last of them leaves; pool jobs not yet started on the number are moved onto a
//!   duplicate too. The ops keep acting on their own file, exactly as on io_uring. This
//!   costs a `dup` on the close path only.
//! - **Descriptors quell owns** (`RawOp::owned`: a [`Stream`](crate::future::Stream)'s
//!   or a [`Listener`](crate::future::Listener)'s, closed by their owner only once their
//!   ops are done) cannot change under their waiters: their ops pay no check at all, not
//!   at park, not when served (measured: submitting and parking each of 10,000 stream
//!   reads on one socket takes ~280 ns, one `epoll_ctl` less than before, ~590 ns; a
//!   stream ping-pong round makes the same system calls as before). Closing such a number
//!   outside its owner breaks Rust's I/O safety and is not defended against.
//! - **Raw descriptors closed outside quell** (an ordinary `drop(File)`) and reused:
//!   epoll keys an item by file (the open file description) *and* number. An
//!   `EPOLL_CTL_ADD` of the number is refused with `EEXIST` exactly when the number's
//!   current file has an item under it, so it tells, without changing anything, whether
//!   the number still names the file of its registration (`names_its_file`: ~0.2 µs
//!   here, about any system call's floor; a `MOD` with the same events costs ~0.3 µs, a
//!   `statx` ~0.35 µs, `kcmp` ~1.1 µs and needs a second descriptor; if the number names
//!   another file the probe is added, and taken back). It is asked at the two points
//!   where the waiters of a number could meet a file they were not submitted on:
//!   - **before raw waiters are served** after an event: the event is the registration's
//!     file's (its epoll data carries the registration's generation), but the waiters act
//!     through the number, which may have been closed and reused while that file stayed
//!     open elsewhere (a `dup`, a child process). One probe per wake that serves raw
//!     waiters (none while an owned waiter is there: its owner keeps the number on the
//!     registration's file). Measured: +1 system call per wake of the ring-loop
//!     ping-pong (2 instead of 1 `epoll_ctl` per park, `strace -c`), +~0.3 µs of CPU per
//!     ~6 µs round on one CPU, within the noise of the throughput runs;
//!   - **when a raw op parks** without re-arming the registration (it is armed for what
//!     it needs already, e.g. an op queued behind others on the same descriptor and
//!     direction, which skipped its attempt): otherwise an op on a new file could queue
//!     behind the old file's waiters with nothing watching the new file. A park that
//!     re-arms needs no probe: a `MOD` of a number reused by another file fails `ENOENT`
//!     (`EBADF` if just closed). Measured: submitting and parking each of 10,000 raw reads
//!     on one socket ~440 ns (was ~530 ns with a `MOD` per park; ~113 ns with no check).
//!
//!   When the number no longer names the file, the waiters complete `Failed(EBADF)`
//!   without acting (they moved no byte: each attempt either completes an op or moves
//!   nothing), and the new file starts a fresh state. This differs from io_uring, where
//!   the old op would keep acting on its old file; it never acts on the new one. An
//!   anchor (a `dup` of the descriptor while ops wait on it) would remove the difference,
//!   but it costs a `dup` and a `close` per park (measured +0.2–0.4 µs, 2–3.5 % of a
//!   ~12 µs same-CPU ping-pong round) and doubles the descriptors of every connection
//!   with a parked read (idle keep-alive connections would hit `RLIMIT_NOFILE` at half
//!   the count).
//!
//!   **Ghosts.** A state forgotten without removing its item (the number had already left
//!   its file) leaves that item in the set while the file is open elsewhere. If that file
//!   comes back to the number (`dup2`) while another file's raw waiters wait there, the
//!   probe would find the old item and say yes. So such numbers are remembered
//!   (`Portable::ghosts`), and on them the probe also compares the file's identity
//!   (`statx` with `AT_STATX_DONT_SYNC`: device and inode, read when the state's first
//!   raw waiter parked): one `statx` more per check, on those numbers only. **Residual:**
//!   files on one shared anonymous inode (eventfd, timerfd, signalfd, epoll) have the
//!   same identity, so this one case stays open: such a file `A` waited on under a
//!   number, left it outside quell while open elsewhere, another such file `B` now has
//!   raw waiters under the number, and `A` is put back on it; `B`'s waiters are then
//!   served from `A`. In the same come-back case a waiter that re-arms the registration
//!   (an idle one, or one adding a direction) takes over the come-back file's old item,
//!   and the next check fails it `EBADF` although it was submitted on that file: a
//!   spurious failure, never an act on another file.
//!   Another thread closing and reusing a raw number while an op on it is being
//!   submitted or served races as it would with any system call on a raw number.
//! - **Pool jobs** keep their file as the pool describes (a duplicate for pollable
//!   objects, an identity check for files).

use super::pool::Pool;
use super::{sys, BackendParts};
use crate::op::{BlockingFn, OpKind, RawOp, NO_OFFSET};
use crate::outcome::CancelClass;
use crate::wake::Doorbell;
use std::cmp::Reverse;
// Keys are descriptor numbers and the ring's op keys, never attacker-chosen: a fast
// non-cryptographic hash (FxHash) instead of SipHash, on every op's path.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// epoll data of the doorbell (descriptors use [`tag`]: generations never reach `u32::MAX`).
const DOORBELL: u64 = u64::MAX;
/// The generation in the epoll data of an identity probe (see [`names_its_file`]): no
/// registration has it, so an event of a probe is never served.
const PROBE_GEN: u32 = u32::MAX;
const EAGAIN: i64 = -(libc::EAGAIN as i64);
const EBADF: i64 = -(libc::EBADF as i64);
const ECANCELED: i64 = -(libc::ECANCELED as i64);
const EV_IN: u32 = libc::EPOLLIN as u32;
const EV_OUT: u32 = libc::EPOLLOUT as u32;
const EV_READ_READY: u32 =
    (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32;
const EV_WRITE_READY: u32 = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// Which queue of its descriptor a waiting op is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
    Poll,
}

/// How a waiting op is retried when its descriptor is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// `preadv2`/`pwritev2` with `RWF_NOWAIT`.
    NoWait,
    /// A plain `preadv2`/`pwritev2` on an `O_NONBLOCK` descriptor.
    Plain,
    /// `recvmsg`/`sendmsg` with `MSG_DONTWAIT` (read/write on a socket).
    SockMsg,
    /// `recv`/`send` with `MSG_DONTWAIT`.
    DontWait,
    /// `accept4` on an `O_NONBLOCK` listener.
    Accept,
    /// `connect` on an `O_NONBLOCK` socket (retried after `EAGAIN`).
    Connect,
    /// A `connect` in progress: its result is `SO_ERROR` once writable.
    ConnectWait,
    /// A poll: completes with the events seen.
    Poll,
}

struct Waiter {
    raw: RawOp,
    via: Via,
    dir: Dir,
}

/// The waiters of one descriptor and its epoll registration.
struct FdState {
    reads: VecDeque<u64>,
    writes: VecDeque<u64>,
    polls: Vec<u64>,
    live_reads: u32,
    live_writes: u32,
    live_polls: u32,
    poll_in: u32,
    poll_out: u32,
    /// How read/write ops on this descriptor are retried (set by the first waiter).
    rw_via: Via,
    /// Whether the descriptor is (believed to be) in the epoll set.
    registered: bool,
    /// The events the one-shot registration is armed for (0: disarmed).
    armed: u32,
    /// The generation in the registration's epoll data (new for every `EPOLL_CTL_ADD`):
    /// events from an item an earlier file left under this number carry another one.
    gen: u32,
    /// Set when this state lives under a private duplicate (its waiters' number was
    /// closed through the ring): closing it when the state retires lets the file go.
    anchor: Option<OwnedFd>,
    /// Waiters whose descriptor quell does not own (`RawOp::owned` unset): only while
    /// some are here, and none that quell owns, can the number have been closed and
    /// reused under the waiters, so only then is it checked.
    raw: u32,
    /// The number may have a registration of another file left in the epoll set (see
    /// `Portable::ghosts`): a check must then also compare the file's identity.
    ghosted: bool,
    /// The identity of the registration's file, read when its first raw waiter parked
    /// (on a `ghosted` number only).
    ident: Option<sys::Identity>,
}

impl FdState {
    fn new(ghosted: bool) -> Self {
        FdState {
            reads: VecDeque::new(),
            writes: VecDeque::new(),
            polls: Vec::new(),
            live_reads: 0,
            live_writes: 0,
            live_polls: 0,
            poll_in: 0,
            poll_out: 0,
            rw_via: Via::NoWait,
            registered: false,
            armed: 0,
            gen: 0,
            anchor: None,
            raw: 0,
            ghosted,
            ident: None,
        }
    }

    /// Whether a waiter on a descriptor quell owns is here: the number then names the
    /// registration's file (its owner has not closed it).
    fn has_owned(&self) -> bool {
        self.live_reads + self.live_writes + self.live_polls > self.raw
    }
    fn live(&self, dir: Dir) -> u32 {
        match dir {
            Dir::Read => self.live_reads,
            Dir::Write => self.live_writes,
            Dir::Poll => self.live_polls,
        }
    }

    fn want(&self) -> u32 {
        let mut m = 0;
        if self.live_reads > 0 || self.poll_in > 0 {
            m |= EV_IN;
        }
        if self.live_writes > 0 || self.poll_out > 0 {
            m |= EV_OUT;
        }
        m
    }

    fn is_idle(&self) -> bool {
        self.live_reads == 0 && self.live_writes == 0 && self.live_polls == 0
    }

    /// Adds a waiter to its queue.
    fn link(&mut self, key: u64, w: &Waiter) {
        if !w.raw.owned {
            self.raw += 1;
        }
        match w.dir {
            Dir::Read => {
                self.reads.push_back(key);
                self.live_reads += 1;
            }
            Dir::Write => {
                self.writes.push_back(key);
                self.live_writes += 1;
            }
            Dir::Poll => {
                self.polls.push(key);
                self.live_polls += 1;
                self.poll_counts(w.raw.flags, true);
            }
        }
    }

    /// The keys queued here (some may have left already: check `waiting`).
    fn keys(&self) -> impl Iterator<Item = &u64> {
        self.reads.iter().chain(&self.writes).chain(&self.polls)
    }

    /// Forgets one waiter that left other than by being served.
    fn unlink(&mut self, w: &Waiter) {
        if !w.raw.owned {
            self.raw -= 1;
        }
        match w.dir {
            Dir::Read => {
                self.live_reads -= 1;
                if self.live_reads == 0 {
                    self.reads.clear();
                }
            }
            Dir::Write => {
                self.live_writes -= 1;
                if self.live_writes == 0 {
                    self.writes.clear();
                }
            }
            Dir::Poll => {
                self.live_polls -= 1;
                self.poll_counts(w.raw.flags, false);
                if self.live_polls == 0 {
                    self.polls.clear();
                }
            }
        }
    }

    fn poll_counts(&mut self, interest: u32, add: bool) {
        let d = |c: &mut u32| {
            if add {
                *c += 1
            } else {
                *c -= 1
            }
        };
        if interest & libc::POLLIN as u32 != 0 {
            d(&mut self.poll_in);
        }
        if interest & libc::POLLOUT as u32 != 0 {
            d(&mut self.poll_out);
        }
    }
}

pub(crate) struct Portable {
    epoll: OwnedFd,
    doorbell: Arc<Doorbell>,
    pool: Pool,
    waiting: HashMap<u64, Waiter>,
    fds: HashMap<RawFd, FdState>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_keys: HashMap<u64, Instant>,
    ready: Vec<(u64, i64)>,
    events: Vec<libc::epoll_event>,
    /// Set by `wait` after an epoll pass; `flush` then needs none.
    polled: bool,
    /// The last epoll pass filled `events`: more may be ready, with no new edge on the
    /// epoll descriptor to announce them.
    events_full: bool,
    /// The generation of the next epoll registration.
    next_gen: u32,
    /// Numbers under which a registration of a file that may have left the number can
    /// remain in the epoll set (a state was forgotten without removing its item, which
    /// stays while that file is open elsewhere). epoll tells whether the number's
    /// current file has an item under it, not whose: on these numbers a check also
    /// compares the file's identity. Never cleared (one entry per number at most).
    ghosts: HashSet<RawFd>,
}

fn is_write(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Write | OpKind::Writev | OpKind::Send | OpKind::Connect
    )
}

/// Retries a waiting op without blocking. `EAGAIN`: still not ready.
fn attempt(raw: &RawOp, via: Via) -> i64 {
    // SAFETY: the op is live: the ring keeps its memory until its result is reaped, and
    // only this backend touches it meanwhile.
    unsafe {
        match via {
            Via::NoWait => sys::rw(raw, None, libc::RWF_NOWAIT),
            Via::Plain => sys::rw(raw, None, 0),
            Via::SockMsg => sys::sockmsg(raw, libc::MSG_DONTWAIT),
            Via::DontWait => sys::sendrecv(raw, libc::MSG_DONTWAIT),
            Via::Accept | Via::Connect => sys::blocking(raw, None),
            Via::ConnectWait => sys::connect_result(raw.fd),
            Via::Poll => match sys::poll_once(raw.fd, raw.flags, 0) {
                0 => EAGAIN,
                r => r,
            },
        }
    }
}

/// Total bytes a transfer asks for.
fn asked(raw: &RawOp) -> u64 {
    match raw.kind {
        OpKind::Readv | OpKind::Writev => {
            // SAFETY: ptr/len describe the op's live iovec array.
            let iov = unsafe {
                std::slice::from_raw_parts(raw.ptr as *const libc::iovec, raw.len as usize)
            };
            iov.iter().map(|v| v.iov_len as u64).sum()
        }
        _ => raw.len as u64,
    }
}

/// The part of a transfer still to do after `done` bytes moved.
fn rest(raw: &RawOp, done: u64) -> (RawOp, Option<Vec<libc::iovec>>) {
    let mut r = *raw;
    if r.offset != NO_OFFSET {
        r.offset = r.offset.saturating_add(done);
    }
    match raw.kind {
        OpKind::Readv | OpKind::Writev => {
            // SAFETY: ptr/len describe the op's live iovec array.
            let iov = unsafe {
                std::slice::from_raw_parts(raw.ptr as *const libc::iovec, raw.len as usize)
            };
            let mut skip = done as usize;
            let mut v = Vec::with_capacity(iov.len());
            for e in iov {
                if skip >= e.iov_len {
                    skip -= e.iov_len;
                    continue;
                }
                v.push(libc::iovec {
                    iov_base: (e.iov_base as *mut u8).wrapping_add(skip).cast(),
                    iov_len: e.iov_len - skip,
                });
                skip = 0;
            }
            (r, Some(v))
        }
        _ => {
            r.ptr = r.ptr.wrapping_add(done as usize);
            r.len = r.len.saturating_sub(done as u32);
            (r, None)
        }
    }
}

impl Portable {
    pub(crate) fn new(parts: &BackendParts) -> io::Result<Portable> {
        let epoll = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)?;
        let mut ev = libc::epoll_event {
            events: EV_IN,
            u64: DOORBELL,
        };
        // SAFETY: both descriptors are open (owned by us); ev is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                parts.doorbell.raw(),
                &mut ev,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Portable {
            epoll,
            doorbell: parts.doorbell.clone(),
            pool: Pool::new(parts.config.pool_threads, parts.doorbell.clone()),
            waiting: HashMap::default(),
            fds: HashMap::default(),
            timers: BinaryHeap::new(),
            timer_keys: HashMap::default(),
            ready: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            polled: false,
            events_full: false,
            next_gen: 1,
            ghosts: HashSet::default(),
        })
    }

    #[inline]
    pub(crate) fn start(&mut self, key: u64, raw: RawOp, class: CancelClass) -> bool {
        match raw.kind {
            OpKind::Nop => self.ready.push((key, 0)),
            OpKind::Timeout => self.start_timer(key, raw.aux),
            OpKind::Poll => self.start_poll(key, raw),
            OpKind::Blocking => self.ready.push((key, -(libc::EOPNOTSUPP as i64))),
            OpKind::Close => {
                self.closing(raw.fd);
                if class == CancelClass::Prompt {
                    // SAFETY: closing a descriptor number the caller handed to us to close.
                    let r = unsafe { libc::close(raw.fd) };
                    self.ready
                        .push((key, if r < 0 { sys::neg_errno() } else { 0 }));
                } else {
                    self.on_pool(key, raw, 0, None, class);
                }
            }
            _ if class == CancelClass::Interruptible => self.on_pool(key, raw, 0, None, class),
            OpKind::Read
            | OpKind::Write
            | OpKind::Readv
            | OpKind::Writev
            | OpKind::Recv
            | OpKind::Send
            | OpKind::Accept
            | OpKind::Connect
                if class == CancelClass::Prompt =>
            {
                self.start_prompt(key, raw)
            }
            OpKind::Read | OpKind::Write | OpKind::Readv | OpKind::Writev => {
                self.start_file(key, raw, class)
            }
            _ => self.on_pool(key, raw, 0, None, class),
        }
        true
    }

    pub(crate) fn start_blocking(&mut self, key: u64, f: BlockingFn) {
        self.pool.submit_fn(key, f);
    }

    fn on_pool(
        &mut self,
        key: u64,
        raw: RawOp,
        prefix: u64,
        iov: Option<Vec<libc::iovec>>,
        class: CancelClass,
    ) {
        self.pool.submit_raw(key, raw, prefix, iov, class);
    }

    fn start_timer(&mut self, key: u64, nanos: u64) {
        let now = Instant::now();
        let at = now
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or_else(|| now + Duration::from_secs(u32::MAX as u64));
        self.timers.push(Reverse((at, key)));
        self.timer_keys.insert(key, at);
    }

    fn expire_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.timer_keys.get(&key) == Some(&at) {
                self.timer_keys.remove(&key);
                self.ready.push((key, -(libc::ETIME as i64)));
            }
        }
        // Canceled timers leave stale heap entries; rebuild when they dominate.
        if self.timers.len() > 64 && self.timers.len() > 2 * self.timer_keys.len() {
            self.timers = self
                .timer_keys
                .iter()
                .map(|(&k, &at)| Reverse((at, k)))
                .collect();
        }
    }

    fn start_poll(&mut self, key: u64, raw: RawOp) {
        let r = sys::poll_once(raw.fd, raw.flags, 0);
        if r != 0 {
            self.ready.push((key, r));
        } else {
            self.enqueue(key, raw, Via::Poll, Dir::Poll, true);
        }
    }

    fn start_prompt(&mut self, key: u64, raw: RawOp) {
        let fd = raw.fd;
        let dir = if is_write(raw.kind) {
            Dir::Write
        } else {
            Dir::Read
        };
        // Ops queued on the same descriptor and direction go first (FIFO).
        let ahead = self
            .fds
            .get(&fd)
            .filter(|st| st.live(dir) > 0)
            .map(|st| st.rw_via);
        let (via, res) = match raw.kind {
            OpKind::Recv | OpKind::Send => {
                let res = if ahead.is_some() {
                    EAGAIN
                } else {
                    attempt(&raw, Via::DontWait)
                };
                (Via::DontWait, res)
            }
            OpKind::Accept | OpKind::Connect => {
                if !sys::is_nonblocking(fd) {
                    // accept/connect on a blocking socket cannot be tried without blocking.
                    return self.on_pool(key, raw, 0, None, CancelClass::Prompt);
                }
                if raw.kind == OpKind::Accept {
                    let res = if ahead.is_some() {
                        EAGAIN
                    } else {
                        attempt(&raw, Via::Accept)
                    };
                    (Via::Accept, res)
                } else {
                    match attempt(&raw, Via::Connect) {
                        r if r == -(libc::EINPROGRESS as i64) => (Via::ConnectWait, EAGAIN),
                        r => (Via::Connect, r),
                    }
                }
            }
            _ => match ahead {
                Some(via) => (via, EAGAIN),
                None => {
                    let r = attempt(&raw, Via::NoWait);
                    if r != -(libc::EOPNOTSUPP as i64) {
                        (Via::NoWait, r)
                    } else if sys::is_nonblocking(fd) {
                        (Via::Plain, attempt(&raw, Via::Plain))
                    } else {
                        let r = attempt(&raw, Via::SockMsg);
                        if r == -(libc::ENOTSOCK as i64) {
                            // No way to try it without blocking (a blocking timerfd, tty...).
                            return self.on_pool(key, raw, 0, None, CancelClass::Prompt);
                        }
                        (Via::SockMsg, r)
                    }
                }
            },
        };
        if res != EAGAIN {
            self.ready.push((key, res));
            return;
        }
        // An op that queued behind earlier waiters was not tried: its park checks that
        // the number still names their file before it joins them.
        self.enqueue(
            key,
            raw,
            via,
            dir,
            ahead.is_none() || raw.kind == OpKind::Connect,
        );
    }

    /// Regular files and block devices: a page-cache hit inline, the rest on the pool.
    fn start_file(&mut self, key: u64, raw: RawOp, class: CancelClass) {
        if raw.flags & crate::op::RW_DIRECT != 0 {
            // Direct I/O waits for the device even with RWF_NOWAIT: never on the ring's
            // thread (it would block every other op, and a deadline could not detach it).
            return self.on_pool(key, raw, 0, None, class);
        }
        let write = is_write(raw.kind);
        let res = attempt(&raw, Via::NoWait);
        if res == EAGAIN || res == -(libc::EOPNOTSUPP as i64) {
            return self.on_pool(key, raw, 0, None, class);
        }
        if res <= 0 {
            self.ready.push((key, res));
            return;
        }
        let done = res as u64;
        if done >= asked(&raw)
            || (!write && raw.offset != NO_OFFSET && sys::at_eof(raw.fd, raw.offset + done))
        {
            self.ready.push((key, res));
            return;
        }
        // Part of it was cached: the rest is read (or written) on the pool.
        let (r, iov) = rest(&raw, done);
        self.on_pool(key, r, done, iov, class);
    }

    /// Parks an op on its descriptor. The number must still name the file of the
    /// waiters already there (see the module docs, "Descriptor identity"): arming the
    /// registration tells, when it needs an `epoll_ctl`; otherwise a raw op (or an owned
    /// one joining raw waiters only) pays one identity probe. `tried`: the op was just
    /// attempted on the number (`false`: it skipped its attempt to queue behind earlier
    /// waiters).
    fn enqueue(&mut self, key: u64, raw: RawOp, via: Via, dir: Dir, tried: bool) {
        let fd = raw.fd;
        let w = Waiter { raw, via, dir };
        let Portable {
            fds,
            ghosts,
            epoll,
            next_gen,
            ..
        } = self;
        let st = fds
            .entry(fd)
            .or_insert_with(|| FdState::new(!ghosts.is_empty() && ghosts.contains(&fd)));
        // An owned waiter here means the number names the registration's file; an owned
        // op names its file, which is the registration's unless raw waiters parked on
        // an earlier one.
        let verify = if raw.owned {
            st.raw > 0 && !st.has_owned()
        } else {
            !st.has_owned()
        };
        let first_raw = !raw.owned && st.raw == 0;
        st.link(key, &w);
        let res = match arm(epoll, fd, st, next_gen) {
            Ok(true) => Ok(()),
            // Unregistered: no file to compare with (the op is the first to watch it).
            Ok(false) if !verify || !st.registered || names_its_file(epoll, fd, st) => Ok(()),
            Ok(false) => Err(Armed::Stale),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {
                if first_raw && st.ghosted && st.ident.is_none() {
                    // The number names the registration's file now (just checked, or
                    // held by an owned waiter): later checks compare against it.
                    st.ident = sys::identity(fd);
                }
                if matches!(via, Via::NoWait | Via::Plain | Via::SockMsg) {
                    st.rw_via = via;
                }
                self.waiting.insert(key, w);
            }
            Err(Armed::Stale) => {
                st.unlink(&w);
                // The number was closed or reused outside quell since the waiters here
                // parked: they end without touching whatever it names now.
                self.abandon(fd);
                if tried {
                    self.enqueue(key, raw, via, dir, true);
                } else {
                    // The first op on the number's new file: try it now.
                    self.start_prompt(key, raw);
                }
            }
            Err(Armed::Errno(errno)) => {
                st.unlink(&w);
                if st.is_idle() && !st.registered {
                    self.fds.remove(&fd);
                }
                if errno == libc::EPERM {
                    // Not pollable after all (a regular file declared Prompt): block on the pool.
                    self.on_pool(key, raw, 0, None, CancelClass::Bounded);
                } else {
                    self.ready.push((key, -(errno as i64)));
                }
            }
        }
    }

    /// Ends every op waiting under `fd`, whose file no longer has that number (closed or
    /// reused outside quell): `EBADF`, having moved no byte (an attempt that moves bytes
    /// completes its op). Forgets the state and its registration.
    fn abandon(&mut self, fd: RawFd) {
        let Some(st) = self.fds.remove(&fd) else {
            return;
        };
        for key in st.keys() {
            if self.waiting.remove(key).is_some() {
                self.ready.push((*key, EBADF));
            }
        }
        if st.anchor.is_some() {
            // `fd` is our duplicate: it still names the registration's file.
            del(&self.epoll, fd);
        } else if st.registered {
            // The item stays in the set while its file is open elsewhere.
            self.ghosts.insert(fd);
        }
    }

    /// The ring is closing `fd`. Ops waiting on it keep their file, as io_uring's do (the
    /// kernel holds a file reference): they move onto a private duplicate, registered in
    /// epoll in the number's place and closed when the last of them leaves. Pool jobs not
    /// yet started on the number move onto a duplicate too.
    fn closing(&mut self, fd: RawFd) {
        self.pool.retarget(fd);
        let Some(st) = self.fds.get(&fd) else {
            return;
        };
        if st.is_idle() {
            // Nothing waits: the registration goes before the file does (left in the
            // set, it would stay while the file is open elsewhere).
            let st = self.fds.remove(&fd).expect("present");
            if st.registered && !del(&self.epoll, fd) && st.anchor.is_none() {
                self.ghosts.insert(fd);
            }
            return;
        }
        // Raw waiters may have lost the number outside quell (an owned waiter's owner
        // has not closed it); on a ghosted number the removal alone would not tell.
        if st.raw > 0 && !st.has_owned() && !names_its_file(&self.epoll, fd, st) {
            return self.abandon(fd);
        }
        if !del(&self.epoll, fd) {
            // The item is not this number's file: the waiters' file already lost the
            // number outside quell.
            return self.abandon(fd);
        }
        // SAFETY: `fd` is open (its registration was just found); the duplicate is ours.
        let dup =
            rustix::io::fcntl_dupfd_cloexec(unsafe { BorrowedFd::borrow_raw(fd) }, sys::DUP_MIN);
        let Ok(dup) = dup else {
            // No descriptor left to hold the file (EMFILE): end them.
            let st = self.fds.get_mut(&fd).expect("present");
            st.registered = false;
            st.armed = 0;
            return self.abandon(fd);
        };
        let mut st = self.fds.remove(&fd).expect("present");
        let to = dup.as_raw_fd();
        // The duplicate's number was free, so ops still listed under it lost their file
        // outside quell: end them before the number's new state takes its place.
        self.abandon(to);
        for key in st.keys() {
            if let Some(w) = self.waiting.get_mut(key) {
                w.raw.fd = to;
                // The duplicate is quell's: nothing closes it under them.
                w.raw.owned = true;
            }
        }
        st.raw = 0;
        st.ghosted = self.ghosts.contains(&to);
        st.ident = None;
        st.registered = false;
        st.armed = 0;
        st.anchor = Some(dup);
        let res = arm(&self.epoll, to, &mut st, &mut self.next_gen);
        self.fds.insert(to, st);
        match res {
            Ok(_) => {}
            Err(Armed::Stale) => self.abandon(to),
            Err(Armed::Errno(errno)) => {
                let st = self.fds.remove(&to).expect("present");
                for key in st.keys() {
                    if self.waiting.remove(key).is_some() {
                        self.ready.push((*key, -(errno as i64)));
                    }
                }
            }
        }
    }

    /// A waiter left `fd`'s state other than by being served: drop a registration
    /// nobody needs, and let an anchored file go.
    fn settle(&mut self, fd: RawFd) {
        let Some(st) = self.fds.get_mut(&fd) else {
            return;
        };
        if !st.is_idle() || (st.armed == 0 && st.anchor.is_none()) {
            return;
        }
        // Nobody waits: drop the registration rather than leave it armed.
        let anchored = st.anchor.is_some();
        if !del(&self.epoll, fd) && !anchored {
            // The number no longer names the registration's file, whose item stays
            // while that file is open elsewhere.
            self.ghosts.insert(fd);
        }
        self.fds.remove(&fd);
    }

    #[inline]
    pub(crate) fn cancel(&mut self, key: u64, kind: OpKind, _class: CancelClass) {
        match kind {
            OpKind::Timeout => {
                if self.timer_keys.remove(&key).is_some() {
                    self.ready.push((key, ECANCELED));
                }
            }
            OpKind::Blocking => {
                self.pool.cancel(key);
            }
            _ => {
                if let Some(w) = self.waiting.remove(&key) {
                    self.ready.push((key, ECANCELED));
                    let fd = w.raw.fd;
                    if let Some(st) = self.fds.get_mut(&fd) {
                        st.unlink(&w);
                        self.settle(fd);
                    }
                } else {
                    self.pool.cancel(key);
                }
            }
        }
    }

    /// Makes progress without blocking (one epoll pass if anything waits on a descriptor).
    #[inline]
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.pool.tick();
        if !std::mem::take(&mut self.polled) && !self.waiting.is_empty() {
            self.epoll_pass(Some(Duration::ZERO))?;
            self.polled = false;
        }
        self.expire_timers();
        Ok(())
    }

    /// Futures hook: ops were tried inline when started, so only the pool's due
    /// interrupt re-sends are left to hand over; descriptors are not polled (the
    /// reactor does that when the epoll descriptor is readable).
    #[inline]
    pub(crate) fn submit_staged(&mut self) -> io::Result<()> {
        self.pool.tick();
        Ok(())
    }

    /// Futures hook: results produced inline and not reaped yet, or ready descriptors
    /// the last epoll pass had no room for.
    #[inline]
    pub(crate) fn has_local_work(&self) -> bool {
        !self.ready.is_empty() || self.events_full
    }

    /// Readable when a watched descriptor or the doorbell is ready.
    pub(crate) fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub(crate) fn next_wake(&mut self) -> Option<Duration> {
        let pool = self.pool.cap(None);
        let timer = self
            .timers
            .peek()
            .map(|&Reverse((at, _))| at.saturating_duration_since(Instant::now()));
        match (pool, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let mut timeout = self.pool.cap(timeout);
        self.expire_timers();
        if !self.ready.is_empty() || self.pool.has_results() {
            return Ok(());
        }
        if let Some(&Reverse((at, _))) = self.timers.peek() {
            let d = at.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        self.epoll_pass(timeout)?;
        self.expire_timers();
        Ok(())
    }

    fn epoll_pass(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => {
                // Round up: a timer due in 0.3 ms must not turn into a busy loop.
                let ms = d.as_nanos().div_ceil(1_000_000);
                ms.min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `events` is a valid buffer of `len` epoll_events.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(e)
            };
        }
        for i in 0..n as usize {
            let ev = self.events[i];
            let (data, flags) = (ev.u64, ev.events);
            if data == DOORBELL {
                self.doorbell.clear();
            } else {
                self.serve(data, flags);
            }
        }
        self.polled = true;
        self.events_full = n as usize == self.events.len();
        Ok(())
    }

    /// A descriptor is ready: serve its waiters in order, then re-arm for what is left.
    fn serve(&mut self, data: u64, flags: u32) {
        let (fd, gen) = untag(data);
        let Portable {
            fds,
            waiting,
            ready,
            epoll,
            next_gen,
            ..
        } = self;
        let Some(st) = fds.get_mut(&fd) else {
            return;
        };
        if st.gen != gen {
            // An item a file that had this number before left behind: not ours to serve.
            return;
        }
        st.armed = 0; // one-shot
        let reads = flags & EV_READ_READY != 0 && st.live_reads > 0;
        let writes = flags & EV_WRITE_READY != 0 && st.live_writes > 0;
        // The event is the registration's file's, but the waiters act through the
        // number: raw ones only once it is shown to still name that file (it may have
        // been closed and reused outside quell since they parked, the file staying open
        // elsewhere). Not needed while an owned waiter is here.
        if (reads || writes) && st.raw > 0 && !st.has_owned() && !names_its_file(epoll, fd, st) {
            return self.abandon(fd);
        }
        if reads {
            serve_fifo(
                &mut st.reads,
                &mut st.live_reads,
                &mut st.raw,
                waiting,
                ready,
            );
        }
        if writes {
            serve_fifo(
                &mut st.writes,
                &mut st.live_writes,
                &mut st.raw,
                waiting,
                ready,
            );
        }
        if st.live_polls > 0 {
            let seen = flags & 0xffff;
            let mut served = Vec::new();
            st.polls.retain(|&key| {
                let Some(w) = waiting.get(&key) else {
                    return false;
                };
                let ev = seen & (w.raw.flags | (libc::POLLERR | libc::POLLHUP) as u32);
                if ev == 0 {
                    return true;
                }
                served.push((key, w.raw.flags, w.raw.owned));
                ready.push((key, ev as i64));
                false
            });
            for (key, interest, owned) in served {
                waiting.remove(&key);
                st.live_polls -= 1;
                if !owned {
                    st.raw -= 1;
                }
                st.poll_counts(interest, false);
            }
        }
        match arm(epoll, fd, st, next_gen) {
            Ok(_) => {
                if st.is_idle() && st.anchor.is_some() {
                    // The last op on a number the ring closed left: let the file go.
                    self.settle(fd);
                }
            }
            // The number was closed or reused outside quell under its waiters.
            Err(Armed::Stale) => self.abandon(fd),
            Err(Armed::Errno(errno)) => {
                // The descriptor cannot be watched any more: fail its waiters rather
                // than leave them hanging.
                let st = self.fds.remove(&fd).expect("present");
                if st.registered && st.anchor.is_none() {
                    self.ghosts.insert(fd);
                }
                for key in st.keys() {
                    if self.waiting.remove(key).is_some() {
                        self.ready.push((*key, -(errno as i64)));
                    }
                }
            }
        }
    }

    #[inline]
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i64)>) {
        self.expire_timers();
        out.append(&mut self.ready);
        self.pool.reap(out);
    }
}

/// Serves a FIFO of waiting transfers until one would block.
fn serve_fifo(
    q: &mut VecDeque<u64>,
    live: &mut u32,
    raw: &mut u32,
    waiting: &mut HashMap<u64, Waiter>,
    ready: &mut Vec<(u64, i64)>,
) {
    while let Some(&key) = q.front() {
        let Some(w) = waiting.get_mut(&key) else {
            q.pop_front(); // canceled
            continue;
        };
        let res = attempt(&w.raw, w.via);
        if res == EAGAIN {
            break;
        }
        if w.via == Via::Connect && res == -(libc::EINPROGRESS as i64) {
            w.via = Via::ConnectWait;
            break;
        }
        q.pop_front();
        if !w.raw.owned {
            *raw -= 1;
        }
        waiting.remove(&key);
        *live -= 1;
        ready.push((key, res));
    }
}

/// Why a registration could not be armed.
enum Armed {
    /// The number no longer names the file registered under it: closed (`EBADF`), or
    /// reused by another file (`ENOENT`: epoll keys an item by file and number; `EPERM`:
    /// the new file cannot be polled).
    Stale,
    /// Another error (`EPERM`: not pollable).
    Errno(i32),
}

/// epoll data of a descriptor's registration: its number and the registration's generation.
fn tag(fd: RawFd, gen: u32) -> u64 {
    (gen as u64) << 32 | fd as u32 as u64
}

fn untag(data: u64) -> (RawFd, u32) {
    (data as u32 as RawFd, (data >> 32) as u32)
}

/// Arms `fd`'s one-shot registration for what its waiters need. `Ok(true)`: it took an
/// `epoll_ctl` on the number, which succeeded, so the number names the registration's
/// file (on a ghosted number: a file with an item under it, see `Portable::ghosts`);
/// `Ok(false)`: it was armed for that already (or nothing is needed), nothing was asked.
fn arm(epoll: &OwnedFd, fd: RawFd, st: &mut FdState, next_gen: &mut u32) -> Result<bool, Armed> {
    let want = st.want();
    if want == 0 || (st.armed != 0 && want & !st.armed == 0) {
        return Ok(false);
    }
    let ctl = |op: libc::c_int, gen: u32| {
        let mut ev = libc::epoll_event {
            events: want | libc::EPOLLONESHOT as u32,
            u64: tag(fd, gen),
        };
        // SAFETY: ev is a valid epoll_event; a closed or foreign fd only yields an error.
        let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        }
    };
    let res = if st.registered {
        match ctl(libc::EPOLL_CTL_MOD, st.gen) {
            // EPERM: the number now names a file that cannot be polled at all. The state
            // stays `registered`: its item may remain (forgetting it marks the number).
            Err(libc::ENOENT | libc::EBADF | libc::EPERM) => {
                st.armed = 0;
                return Err(Armed::Stale);
            }
            r => r,
        }
    } else {
        // A new item: a new generation, so events of any item an earlier file left
        // under this number are told apart.
        st.gen = *next_gen;
        *next_gen = if *next_gen >= u32::MAX - 1 {
            1
        } else {
            *next_gen + 1
        };
        match ctl(libc::EPOLL_CTL_ADD, st.gen) {
            // An item of this very file and number is still in the set (left by a
            // state that retired): take it over.
            Err(libc::EEXIST) => ctl(libc::EPOLL_CTL_MOD, st.gen),
            r => r,
        }
    };
    match res {
        Ok(()) => {
            st.registered = true;
            st.armed = want;
            Ok(true)
        }
        Err(e) => {
            st.armed = 0;
            Err(Armed::Errno(e))
        }
    }
}

/// Whether `fd` still names the file of `st`'s registration. Probed with an
/// `EPOLL_CTL_ADD` of the number, which the kernel refuses with `EEXIST` exactly when the
/// number's current file (the open file description, not just the inode) has an item
/// under that number in the set: the registration's own, unless the number is ghosted
/// (then the file's identity is compared too). If the probe was added, the number names
/// another file: it is taken back. One `epoll_ctl` (measured ~0.2 µs here, about the
/// cost of any system call, against ~0.3 µs for a MOD and ~0.35 µs for a `statx`), plus
/// a `statx` on a ghosted number.
fn names_its_file(epoll: &OwnedFd, fd: RawFd, st: &FdState) -> bool {
    if !st.registered {
        return false;
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLONESHOT as u32,
        u64: tag(fd, PROBE_GEN),
    };
    // SAFETY: ev is a valid epoll_event; a closed or foreign fd only yields an error.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if rc == 0 {
        del(epoll, fd);
        return false;
    }
    if io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return false;
    }
    !st.ghosted || (st.ident.is_some() && sys::identity(fd) == st.ident)
}

/// Removes the item of the file `fd` names now from the set; `false` if it has none
/// (or `fd` names nothing).
fn del(epoll: &OwnedFd, fd: RawFd) -> bool {
    // SAFETY: a null event is allowed for EPOLL_CTL_DEL; a closed or foreign fd only
    // yields an error.
    unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut(),
        ) == 0
    }
}
