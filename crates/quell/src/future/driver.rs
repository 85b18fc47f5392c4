//! The shared driver: owns a [`Ring`], routes each completion by its [`OpId`] to the
//! future waiting for it, and settles the completions of futures that were dropped
//! (I2: their memory stays in the ring until the kernel's own completion; I11: what a
//! dropped stream read or accept brought in is kept for the next one).

use super::kept::{Ident, Kept, StreamKey};
use crate::completion::Completion;
use crate::error::{Error, SubmitError};
use crate::handle::Handle;
use crate::id::OpId;
use crate::op::{Op, OpKind, Payload, NO_OFFSET};
use crate::outcome::Outcome;
use crate::ring::Ring;
use crate::sync::{AtomicU8, Ordering};
use crate::wake::Doorbell;
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A ring shared by futures. Cheap to clone, `Send + Sync`: every clone drives the same
/// ring, and futures created from any clone may be awaited on any thread.
///
/// Futures made by a driver need something to run the ring: [`Driver::block_on`] (no
/// runtime needed), [`Driver::turn`] from an executor of your own, or, with the
/// `tokio` feature, a reactor task on a tokio runtime (`quell::tokio`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let driver = quell::future::Driver::new(quell::Ring::new()?);
/// let (r, w) = std::os::unix::net::UnixStream::pair()?;
/// std::io::Write::write_all(&mut &w, b"hi")?;
/// let (n, buf) = driver.block_on(driver.read(r.as_raw_fd(), vec![0u8; 16]));
/// assert_eq!(&buf[..n?], b"hi");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Driver {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The ring's cross-thread handle, usable without the lock (cancel from a thread
    /// while another one waits in [`Driver::block_on`]).
    pub(crate) handle: Handle,
}

/// Where an op's future is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Vacant,
    /// A future waits for (or will take) the completion.
    Waiting,
    /// The future was dropped; the completion is settled by the driver.
    Abandoned,
}

/// Names a driver entry: its index in the driver's own table (carried to the kernel
/// and back as the op's user data) and the ring's id of the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) idx: u32,
    pub(crate) id: OpId,
}

/// What the driver knows of one op it started. Entries live in the driver's own table,
/// not by ring slot: the ring frees a slot when it hands the completion over, which
/// may be long before the op's future runs and takes it.
struct Entry {
    id: OpId,
    /// The user data the op was submitted with (the ring carries the entry index).
    user_data: u64,
    phase: Phase,
    /// The op's descriptor (-1 for none): a retired descriptor stays open until no
    /// op on it is left.
    fd: RawFd,
    waker: Option<Waker>,
    done: Option<Completion>,
    stream: Option<StreamKey>,
    /// The driver canceled it to serve kept bytes first (not the user's doing).
    rescued: bool,
    /// The user asked for a cancel (explicitly or through a deadline).
    canceled: bool,
    /// An exact read (`Op::exact`): its own bytes precede kept ones (see `merge_kept`).
    exact: bool,
}

impl Entry {
    const VACANT: Entry = Entry {
        id: OpId {
            ring: 0,
            gen: 0,
            slot: 0,
        },
        user_data: 0,
        phase: Phase::Vacant,
        fd: -1,
        waker: None,
        done: None,
        stream: None,
        rescued: false,
        canceled: false,
        exact: false,
    };
}

/// What a future finds when it looks for its completion.
pub(crate) enum Take {
    Pending,
    Ready {
        c: Completion,
        stream: Option<StreamKey>,
        rescued: bool,
        canceled: bool,
    },
    /// The op is unknown to the driver (cannot happen for ids it issued).
    Gone,
}

pub(crate) struct State {
    pub(crate) ring: Ring,
    ring_id: u32,
    entries: Vec<Entry>,
    free: Vec<u32>,
    pub(crate) kept: Kept,
    /// Descriptors closed by their quell owner while ops on them were still in flight:
    /// kept open (so the number is not reused) until the last op on them completes.
    retired: HashMap<RawFd, OwnedFd>,
    /// The file behind each abandoned stream op's descriptor, taken when its future
    /// was dropped (I12: what it brings in is kept for that file only).
    idents: HashMap<u32, Ident>,
    /// Writes of dropped streams: by entry, the acknowledged bytes to send after the
    /// op's own, and until when (see [`State::linger`]).
    lingering: HashMap<u32, (Vec<u8>, std::time::Instant)>,
    /// Threads of [`Driver::block_on`] sleeping without the lock, each on the ring's
    /// descriptor and a bell of its own: work another thread leaves for the ring, or
    /// a turn that leaves the ring due sooner than a sleeper planned, rings their bells.
    sleepers: Vec<Sleeper>,
    /// Bells of `block_on` calls that ended, for the next ones (an eventfd each,
    /// made once and reused, closed with the driver).
    spare_bells: Vec<Arc<Doorbell>>,
    live: usize,
    /// The reactor task (tokio), woken when there is work to hand to the kernel.
    pub(crate) reactor: Option<Waker>,
    notified: bool,
    /// Ops were submitted since the ring last ran: the next future polled hands them
    /// to the kernel itself ([`State::turn_inline`]).
    pub(crate) unflushed: bool,
    /// Something since the reactor's last turn needs a full one even if its
    /// descriptor stays quiet: a cancel (pool interrupts are re-sent on a timer), a
    /// timer armed, work an inline turn left behind.
    pub(crate) turn_wanted: bool,
    /// Completions routed to waiting futures and not taken yet: those futures' tasks
    /// are about to run (and likely submit more), so a poll that finds any leaves the
    /// handing over to the last of them or to the reactor, and the batch goes in one
    /// system call.
    pub(crate) untaken: usize,
    /// An inline turn since the reactor's last turn completed the op of the future
    /// that ran it. Then no more inline turns until the reactor's next: ops that keep
    /// completing inline (page-cache reads) would otherwise let a task loop without
    /// ever yielding, one system call per op, while other tasks wait to add theirs to
    /// a batch. An inline turn that leaves its op waiting (a socket read with nothing
    /// to read yet) spends nothing: its task cannot loop on it, and the next op the
    /// task polls (the response's write) goes to the kernel at once too.
    inline_spent: bool,
    /// Routing canceled ops (a rescue) since the ring last settled: their cancels must
    /// reach the kernel before the turn ends.
    pub(crate) recanceled: bool,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) reactor_attached: bool,
    wakers: Vec<Waker>,
}

/// A [`Driver::block_on`] asleep without the lock.
struct Sleeper {
    /// Its own bell: rung, it ends the sleep. Nobody else reads it, so unlike the ring's
    /// descriptor (whose readiness any thread that runs the ring consumes) a ring
    /// cannot be lost to another thread's turn.
    bell: Arc<Doorbell>,
    /// When it wakes by itself (from the ring's next timer as it saw it); `None`:
    /// only when rung or when the ring's descriptor becomes readable.
    until: Option<Instant>,
}

/// How much sooner than a sleeper planned the ring must be due for a turn to wake
/// it: its sleep is rounded up to the millisecond anyway, and two sleepers that see
/// the same timer must not keep waking each other.
const SLEEP_SLACK: Duration = Duration::from_millis(1);

/// The id a completion gets when it was served from kept bytes or connections, with no
/// kernel op behind it: its slot is beyond any table.
pub(crate) fn served_id(ring: u32) -> OpId {
    OpId {
        ring,
        gen: u32::MAX,
        slot: u32::MAX,
    }
}

/// The stream queue an op reads from, if it is a stream read or an accept.
pub(crate) fn stream_key(op: &Op) -> Option<StreamKey> {
    let d = &op.desc;
    match d.kind {
        OpKind::Read if d.offset == NO_OFFSET && matches!(d.payload, Payload::Buf(_)) => {
            Some(StreamKey {
                fd: d.fd,
                accept: false,
            })
        }
        OpKind::Recv if d.flags & libc::MSG_PEEK as u32 == 0 => Some(StreamKey {
            fd: d.fd,
            accept: false,
        }),
        OpKind::Accept => Some(StreamKey {
            fd: d.fd,
            accept: true,
        }),
        _ => None,
    }
}

impl State {
    fn entry(&mut self, t: Ticket) -> Option<&mut Entry> {
        self.entries
            .get_mut(t.idx as usize)
            .filter(|e| e.id == t.id && e.phase != Phase::Vacant)
    }

    /// Forgets an entry once its completion has been handed on.
    fn vacate(&mut self, idx: u32) {
        // Every path here took `done` first, and `submit` rewrites the whole entry:
        // only the phase and the waker need resetting (cheaper than a full rewrite).
        let e = &mut self.entries[idx as usize];
        debug_assert!(e.done.is_none());
        e.phase = Phase::Vacant;
        e.waker = None;
        self.free.push(idx);
        self.live -= 1;
    }

    /// Wakes the reactor for a full turn (a cancel, a timer to schedule, work an
    /// inline turn left behind).
    #[inline]
    pub(crate) fn notify(&mut self) {
        self.turn_wanted = true;
        self.wake_reactor();
    }

    /// Wakes the reactor (once per turn) so it hands new work to the kernel, and
    /// any [`Driver::block_on`] asleep on the ring's descriptor.
    #[inline]
    fn wake_reactor(&mut self) {
        if !self.notified {
            if let Some(w) = &self.reactor {
                self.notified = true;
                w.wake_by_ref();
            }
        }
        if !self.sleepers.is_empty() {
            self.wake_sleepers();
        }
    }

    /// Another thread left work while a `block_on` sleeps without the lock (I3: it
    /// never holds the lock while it sleeps); its sleep ends on its bell.
    #[cold]
    fn wake_sleepers(&mut self) {
        for s in &self.sleepers {
            s.bell.ring();
        }
    }

    /// A turn left the ring due again in `next`: wake the sleepers that planned to
    /// sleep longer. Whoever ran the turn may stop running the ring (an executor's
    /// thread going idle, a `block_on` whose future is done), and the turn may have
    /// consumed the descriptor's readiness a sleeper waits on, so the sleeper must
    /// learn the new time from the turn itself.
    #[cold]
    fn wake_early_sleepers(&self, next: Option<Duration>) {
        let Some(d) = next else {
            return;
        };
        let due = Instant::now() + d;
        for s in &self.sleepers {
            if s.until.map_or(true, |until| due + SLEEP_SLACK < until) {
                s.bell.ring();
            }
        }
    }

    /// A bell for a `block_on` about to sleep: a spare one, or a new one (`None` if
    /// the system refuses another eventfd).
    #[cold]
    fn take_bell(&mut self) -> Option<Arc<Doorbell>> {
        if let Some(b) = self.spare_bells.pop() {
            return Some(b);
        }
        match Doorbell::new() {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                tracing::debug!(error = %e, "no eventfd for block_on; it sleeps in short steps");
                None
            }
        }
    }

    /// Submits `op` for a future. A stream read or accept with something kept for its
    /// descriptor is served at once, without a kernel op.
    pub(crate) fn submit(&mut self, op: Op) -> Result<Submitted, SubmitError> {
        let stream = stream_key(&op);
        self.submit_keyed(op, stream)
    }

    /// [`submit`](State::submit) with the op's stream key already known.
    #[inline]
    pub(crate) fn submit_keyed(
        &mut self,
        op: Op,
        stream: Option<StreamKey>,
    ) -> Result<Submitted, SubmitError> {
        if let Some(key) = stream {
            if self.kept.has_checked(key) {
                return Ok(self.serve_new(op, key));
            }
        }
        let fd = if op.desc.kind.uses_fd() {
            op.desc.fd
        } else {
            -1
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry::VACANT);
                (self.entries.len() - 1) as u32
            }
        };
        let plain = op.deadline.is_none() && op.group.is_none() && op.desc.kind != OpKind::Timeout;
        let exact = op.exact;
        let mut op = op;
        let user_data = std::mem::replace(&mut op.user_data, idx as u64);
        let id = match self.ring.submit(op) {
            Ok(id) => id,
            Err(e) => {
                self.free.push(idx);
                let (err, mut op) = e.into_parts();
                op.user_data = user_data;
                return Err(SubmitError::new(err, op));
            }
        };
        // A vacant entry has no waker and no completion (see `vacate`): set the rest
        // field by field rather than rewriting the whole (large) entry.
        let e = &mut self.entries[idx as usize];
        debug_assert!(e.phase == Phase::Vacant && e.waker.is_none() && e.done.is_none());
        e.id = id;
        e.user_data = user_data;
        e.phase = Phase::Waiting;
        e.fd = fd;
        e.stream = stream;
        e.rescued = false;
        e.canceled = false;
        e.exact = exact;
        self.live += 1;
        // The kernel gets the op at the reactor's next turn, or sooner from its future's
        // first poll (normally right away: `submit(..).await`), which then leaves the
        // reactor a wake-up with nothing to do (see `Reactor::poll`).
        self.unflushed = true;
        if plain {
            self.wake_reactor();
        } else {
            // A deadline or group timer, or a backend timer (a timeout on the portable
            // backend), must reach the reactor's sleep: that takes a full turn.
            self.notify();
        }
        Ok(Submitted::Op(Ticket { idx, id }))
    }

    fn serve_new(&mut self, op: Op, key: StreamKey) -> Submitted {
        let kind = op.desc.kind;
        let user_data = op.user_data;
        let (outcome, payload, ident) = if key.accept {
            let (conn, ident) = self.kept.take_conn(key.fd).expect("checked by has()");
            (Outcome::Done(into_raw(conn) as usize), Payload::None, ident)
        } else {
            let ident = self.kept.bytes_ident(key.fd).expect("checked by has()");
            let mut buf = op.into_buf().unwrap_or_default();
            let n = self.kept.take_bytes(key.fd, &mut buf);
            (Outcome::Done(n), Payload::Buf(buf), ident)
        };
        let c = Completion {
            id: served_id(self.ring_id),
            user_data,
            outcome,
            kind,
            payload: payload.into(),
        };
        Submitted::Served(c, key, ident)
    }

    /// A future served from kept data was dropped before it was polled: put the data
    /// back in front, where it came from.
    pub(crate) fn unserve(&mut self, c: Completion, key: StreamKey, ident: Ident) {
        match c.outcome {
            Outcome::Done(fd) if key.accept => {
                // SAFETY: the descriptor was taken from the kept queue for this
                // completion and nobody else owns it.
                let conn = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
                self.kept.unshift_conn(key.fd, ident, conn);
            }
            _ if !key.accept => self.keep_front(key.fd, Some(ident), c.data()),
            _ => {}
        }
    }

    /// Puts bytes taken from `fd`'s stream back in front of what is kept (they are the
    /// earliest), and lets reads waiting on `fd` be served them. `ident` is the file
    /// they came from; `None` checks the number now (a closed number keeps nothing).
    pub(crate) fn keep_front(&mut self, fd: RawFd, ident: Option<Ident>, data: &[u8]) {
        if data.is_empty() || self.retired.contains_key(&fd) {
            return;
        }
        let Some(ident) = ident.or_else(|| Ident::of(fd)) else {
            return;
        };
        self.kept.unshift_bytes(fd, ident, data);
        self.rescue(StreamKey { fd, accept: false });
    }

    /// Looks for the completion of `id`, registering `waker` if it is not there yet.
    pub(crate) fn take(&mut self, t: Ticket, waker: &Waker) -> Take {
        let Some(e) = self.entry(t) else {
            return Take::Gone;
        };
        if e.phase != Phase::Waiting {
            return Take::Gone;
        }
        match e.done.take() {
            Some(c) => {
                let ready = Take::Ready {
                    c,
                    stream: e.stream,
                    rescued: e.rescued,
                    canceled: e.canceled,
                };
                let fd = e.fd;
                self.untaken -= 1;
                self.vacate(t.idx);
                if fd >= 0 && !self.retired.is_empty() {
                    self.close_if_retired(fd);
                }
                ready
            }
            None => {
                match &e.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => e.waker = Some(waker.clone()),
                }
                Take::Pending
            }
        }
    }

    /// Requests cancellation of a live op on behalf of its user.
    pub(crate) fn cancel(&mut self, t: Ticket) -> Result<crate::CancelStatus, Error> {
        if let Some(e) = self.entry(t) {
            e.canceled = true;
        }
        let r = self.ring.cancel(t.id);
        self.notify();
        r
    }

    /// The future of `id` was dropped: cancel the op; its completion is settled here.
    pub(crate) fn abandon(&mut self, t: Ticket) {
        let Some(e) = self.entry(t) else {
            return;
        };
        e.waker = None;
        // A stream op's later bytes or connection are kept for the file its descriptor
        // names now (I12). A cancel is the rare path: one fstat.
        let ident = e.stream.and_then(|k| Ident::of(k.fd));
        match e.done.take() {
            Some(c) => {
                let (stream, fd) = (e.stream, e.fd);
                self.untaken -= 1;
                self.vacate(t.idx);
                // Routed before anything kept now (see `merge_kept`): its bytes or
                // connection go back in front.
                self.settle_abandoned(c, stream, fd, ident, true);
            }
            None => {
                e.phase = Phase::Abandoned;
                if let Some(ident) = ident {
                    self.idents.insert(t.idx, ident);
                }
                let _ = self.ring.cancel(t.id);
                self.notify();
            }
        }
    }

    /// A dropped stream's write op in flight: its bytes were acknowledged, so they still
    /// go out, then `tail` (acknowledged bytes no op carried yet), all by `until`.
    /// The op gets the deadline by being canceled and sent again from where it
    /// stopped (a cancel is the rare path; on a socket with room the op has long
    /// finished and only the tail is sent).
    pub(crate) fn linger(&mut self, t: Ticket, tail: Vec<u8>, until: std::time::Instant) {
        let Some(e) = self.entry(t) else {
            return;
        };
        e.waker = None;
        let fd = e.fd;
        match e.done.take() {
            Some(c) => {
                self.untaken -= 1;
                self.vacate(t.idx);
                self.send_rest(&c, fd, tail, until);
            }
            None => {
                e.phase = Phase::Abandoned;
                self.lingering.insert(t.idx, (tail, until));
                let _ = self.ring.cancel(t.id);
                self.notify();
            }
        }
    }

    /// Sends what a lingering write `c` did not, then `tail`.
    fn send_rest(
        &mut self,
        c: &Completion,
        fd: RawFd,
        mut tail: Vec<u8>,
        until: std::time::Instant,
    ) {
        let mut rest = match (c.outcome, &*c.payload) {
            (Outcome::Done(n) | Outcome::Canceled { transferred: n }, Payload::Buf(b)) => {
                b[n.min(b.len())..].to_vec()
            }
            // Failed, or stopped by its own deadline: the stream is broken, nobody is
            // left to tell, and sending the tail would leave a hole before it.
            _ => return,
        };
        rest.append(&mut tail);
        self.write_detached(fd, rest, until);
    }

    /// Sends `buf` on `fd` with nobody waiting for the result (a dropped stream's
    /// acknowledged bytes), by `until` at the latest.
    pub(crate) fn write_detached(&mut self, fd: RawFd, buf: Vec<u8>, until: std::time::Instant) {
        if buf.is_empty() {
            return;
        }
        let op = Op::write(fd, buf).exact().deadline(until);
        match self.submit_keyed(op, None) {
            Ok(Submitted::Op(t)) => self.entries[t.idx as usize].phase = Phase::Abandoned,
            Ok(Submitted::Served(..)) => unreachable!("a write is served from nothing kept"),
            Err(e) => tracing::debug!(fd, error = %e, "a dropped stream's bytes could not be sent"),
        }
    }

    /// Settles a completion nobody waits for: keep stream bytes and connections (I11),
    /// close descriptors an open or accept produced, free the rest.
    /// `ident` is the file the op's descriptor named when its future was dropped; with
    /// none (the number was already closed), nothing is kept. `front`: the completion
    /// was routed earlier than what is kept now, so it goes in front.
    fn settle_abandoned(
        &mut self,
        c: Completion,
        stream: Option<StreamKey>,
        fd: RawFd,
        ident: Option<Ident>,
        front: bool,
    ) {
        let fd_result = matches!(c.kind, OpKind::Accept | OpKind::OpenAt);
        match (stream, c.outcome) {
            (Some(key), Outcome::Done(newfd)) if key.accept => {
                // SAFETY: the kernel just returned this descriptor to us and nothing
                // else knows it; we take ownership (and close it if it is not kept).
                let conn = unsafe { OwnedFd::from_raw_fd(newfd as RawFd) };
                if let (false, Some(ident)) = (self.retired.contains_key(&key.fd), ident) {
                    if front {
                        self.kept.unshift_conn(key.fd, ident, conn);
                    } else {
                        self.kept.push_conn(key.fd, ident, conn);
                    }
                    self.rescue(key);
                }
            }
            (Some(key), _)
                if !key.accept && !c.data().is_empty() && !self.retired.contains_key(&key.fd) =>
            {
                if let Some(ident) = ident {
                    if front {
                        self.kept.unshift_bytes(key.fd, ident, c.data());
                    } else {
                        self.kept.push_bytes(key.fd, ident, c.data());
                    }
                    self.rescue(key);
                }
            }
            (_, Outcome::Done(newfd)) if fd_result => {
                // SAFETY: as above: a fresh descriptor nobody else owns.
                drop(unsafe { OwnedFd::from_raw_fd(newfd as RawFd) });
            }
            _ => {}
        }
        if fd >= 0 {
            self.close_if_retired(fd);
        }
    }

    /// Kept data arrived for `key` while other ops wait on the same descriptor: cancel
    /// them so they come back and serve the kept data first (they are run again if
    /// the cancel finds nothing to serve).
    fn rescue(&mut self, key: StreamKey) {
        let mut ids = Vec::new();
        for e in self.entries.iter_mut() {
            if e.phase == Phase::Waiting && e.done.is_none() && e.stream == Some(key) && !e.rescued
            {
                e.rescued = true;
                ids.push(e.id);
            }
        }
        self.recanceled |= !ids.is_empty();
        for id in ids {
            let _ = self.ring.cancel(id);
        }
    }

    /// Serves what is kept for `key` to a completion as it is routed to its waiting
    /// future, so bytes and connections come out in the order they came in (I11, I13):
    /// everything kept was brought in by completions routed before this one.
    ///
    /// A plain read's own bytes came in after the kept ones, so they go behind them
    /// (what does not fit stays kept). An exact read's own bytes go first: its parts
    /// started before the kept bytes' completion was routed and canceled it (a rescue),
    /// so the bytes it holds are the earlier ones. A read stopped by its user or its
    /// deadline with nothing read, or one that failed, is served nothing: the kept
    /// bytes wait for the next read, and the error is not hidden.
    fn merge_kept(&mut self, c: &mut Completion, key: StreamKey, exact: bool, rescue_only: bool) {
        let driver_cancel = rescue_only && matches!(c.outcome, Outcome::Canceled { .. });
        if key.accept {
            if !(c.outcome.is_done() || driver_cancel) || !self.kept.has_checked(key) {
                return;
            }
            let (conn, ident) = self.kept.take_conn(key.fd).expect("checked above");
            if let Outcome::Done(newfd) = c.outcome {
                // SAFETY: a fresh descriptor from the kernel, owned by nobody yet.
                let own = unsafe { OwnedFd::from_raw_fd(newfd as RawFd) };
                self.kept.push_conn(key.fd, ident, own);
            }
            c.outcome = Outcome::Done(into_raw(conn) as usize);
            return;
        }
        let n = c.outcome.transferred();
        let merge = match c.outcome {
            Outcome::Done(_) => true,
            Outcome::Canceled { .. } | Outcome::TimedOut { .. } => {
                driver_cancel || (!exact && n > 0)
            }
            _ => false,
        };
        if !merge || !self.kept.has_checked(key) {
            return;
        }
        let ident = self.kept.bytes_ident(key.fd).expect("checked above");
        let Payload::Buf(buf) = &mut *c.payload else {
            return;
        };
        let len = buf.len();
        let n = n.min(len);
        let m = if exact {
            n + self.kept.take_bytes(key.fd, &mut buf[n..])
        } else {
            let own = buf[..n].to_vec();
            let k = self.kept.take_bytes(key.fd, buf);
            let fit = (len - k).min(n);
            buf[k..k + fit].copy_from_slice(&own[..fit]);
            self.kept.push_bytes(key.fd, ident, &own[fit..]);
            k + fit
        };
        c.outcome = match c.outcome {
            Outcome::Done(_) => Outcome::Done(m),
            // The driver's own cancel with something to show: the user never canceled.
            Outcome::Canceled { .. } if driver_cancel && (m == len || (!exact && m > 0)) => {
                Outcome::Done(m)
            }
            Outcome::Canceled { .. } => Outcome::Canceled { transferred: m },
            Outcome::TimedOut { .. } => Outcome::TimedOut { transferred: m },
            o => o,
        };
    }

    /// Routes one completion from the ring.
    fn route(&mut self, mut c: Completion) {
        let idx = c.user_data;
        let Some(e) = self
            .entries
            .get_mut(idx as usize)
            .filter(|e| e.id == c.id && e.phase != Phase::Vacant)
        else {
            // Not one of ours (cannot happen: the driver owns the ring). Dropping it
            // is safe: the kernel is done with its memory.
            tracing::debug!(id = ?c.id, "completion for an op the driver does not know");
            return;
        };
        c.user_data = e.user_data;
        match e.phase {
            Phase::Waiting => {
                if let Some(key) = e.stream {
                    if self.kept.has(key) {
                        let (exact, rescue_only) = (e.exact, e.rescued && !e.canceled);
                        self.merge_kept(&mut c, key, exact, rescue_only);
                    }
                }
                let e = &mut self.entries[idx as usize];
                e.done = Some(c);
                self.untaken += 1;
                if let Some(w) = e.waker.take() {
                    self.wakers.push(w);
                }
            }
            Phase::Abandoned => {
                let (stream, fd) = (e.stream, e.fd);
                self.vacate(idx as u32);
                let ident = match stream {
                    Some(_) => self.idents.remove(&(idx as u32)),
                    None => None,
                };
                if !self.lingering.is_empty() {
                    if let Some((tail, until)) = self.lingering.remove(&(idx as u32)) {
                        self.send_rest(&c, fd, tail, until);
                    }
                }
                self.settle_abandoned(c, stream, fd, ident, false);
            }
            Phase::Vacant => unreachable!("filtered above"),
        }
    }

    /// Runs the ring once without blocking and routes what completed. Returns the
    /// wakers to wake (after the lock is released) and how soon the ring must run again.
    /// `out` (empty) receives them; its allocation is kept for the next turn.
    pub(crate) fn turn(&mut self, out: &mut Vec<Waker>) -> Result<Option<Duration>, Error> {
        self.notified = false;
        self.unflushed = false;
        self.inline_spent = false;
        self.turn_wanted = false;
        // Settle the ring (nothing left dispatched but unsubmitted, no backend result
        // unseen), route what completed, and again if routing canceled something (a
        // rescue: its cancel must reach the kernel, a queued op's completes at once).
        let mut again = true;
        for _ in 0..8 {
            self.recanceled = false;
            let settled = self.ring.poll_settled(16)?;
            while let Some(c) = self.ring.next_completion() {
                self.route(c);
            }
            // Routing only touches the driver's table unless it rescued (canceled ops
            // on the ring): a settled ring then stays settled, with no second pass.
            if !self.recanceled {
                again = !settled;
                break;
            }
        }
        // Still busy: run again at once, after other tasks had their turn.
        let next = if again {
            Some(Duration::ZERO)
        } else {
            self.ring.next_wake()
        };
        if !self.sleepers.is_empty() {
            self.wake_early_sleepers(next);
        }
        std::mem::swap(&mut self.wakers, out);
        Ok(next)
    }

    /// Called by a future's poll while ops submitted since the ring last ran wait to
    /// be handed to the kernel. When no other future has a completion waiting to be
    /// taken (no other task is about to run and add to the batch), the poll does it
    /// itself ([`turn_inline`](State::turn_inline)); otherwise the reactor is woken
    /// and runs after those tasks, with their submissions too.
    ///
    /// `t` is the polling future's op: if the turn completes it, the turn spends the
    /// reactor turn's inline budget (see `inline_spent`).
    #[inline]
    pub(crate) fn hand_over(&mut self, woken: &mut Vec<Waker>, t: Ticket) {
        if self.untaken == 0 && !self.inline_spent {
            self.turn_inline();
            if self.entries[t.idx as usize].done.is_some() {
                self.inline_spent = true;
            }
            self.take_wakers(woken);
        } else {
            self.notify();
        }
    }

    /// The part of a turn a future runs from its poll: hand the staged ops to the
    /// kernel and route what finished (often the future's own op, done inline), so it
    /// need not wait for the reactor's turn. Timers, descriptor polling and whatever
    /// this leaves staged are the reactor's, which is woken for them. Wakers to wake
    /// are left in `self.wakers`.
    pub(crate) fn turn_inline(&mut self) {
        self.unflushed = false;
        self.recanceled = false;
        let more = match self.ring.submit_and_reap() {
            Ok(more) => more,
            Err(e) => {
                tracing::debug!(error = %e, "inline turn failed; left to the reactor");
                true
            }
        };
        while let Some(c) = self.ring.next_completion() {
            self.route(c);
        }
        if more || self.recanceled {
            self.notify();
        }
    }

    /// Moves the wakers an inline turn collected into `out` (keeping the allocation
    /// when `out` is empty).
    #[inline]
    fn take_wakers(&mut self, out: &mut Vec<Waker>) {
        if self.wakers.is_empty() {
            return;
        }
        if out.is_empty() {
            std::mem::swap(&mut self.wakers, out);
        } else {
            out.append(&mut self.wakers);
        }
    }

    /// The reactor ran and found nothing to do: the next submission wakes it again,
    /// and a future may run an inline turn again (its task has yielded since).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn reactor_idle(&mut self) {
        self.notified = false;
        self.inline_spent = false;
    }

    /// Returns the (emptied) vector [`take_wakers`](State::take_wakers) lent out.
    pub(crate) fn give_back_wakers(&mut self, v: Vec<Waker>) {
        if self.wakers.capacity() == 0 {
            self.wakers = v;
        }
    }

    /// Closes a retired descriptor once no op on it is left.
    fn close_if_retired(&mut self, fd: RawFd) {
        if !self.retired.contains_key(&fd) {
            return;
        }
        let busy = self
            .entries
            .iter()
            .any(|e| e.phase != Phase::Vacant && e.fd == fd);
        if !busy {
            self.retired.remove(&fd);
            self.ring.forget_fd(fd);
        }
    }
}

/// What a submission became.
pub(crate) enum Submitted {
    Op(Ticket),
    /// Served from kept data (of the file `Ident`); no op was started.
    Served(Completion, StreamKey, Ident),
}

fn into_raw(fd: OwnedFd) -> RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

impl Driver {
    /// A driver owning `ring`.
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// assert_eq!(driver.outstanding(), 0);
    /// ```
    pub fn new(ring: Ring) -> Driver {
        let handle = ring.handle();
        let ring_id = ring.id();
        Driver {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    ring,
                    ring_id,
                    entries: Vec::new(),
                    free: Vec::new(),
                    kept: Kept::default(),
                    retired: HashMap::new(),
                    idents: HashMap::new(),
                    lingering: HashMap::new(),
                    sleepers: Vec::new(),
                    spare_bells: Vec::new(),
                    live: 0,
                    reactor: None,
                    notified: false,
                    unflushed: false,
                    turn_wanted: false,
                    untaken: 0,
                    inline_spent: false,
                    recanceled: false,
                    reactor_attached: false,
                    wakers: Vec::new(),
                }),
                handle,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.shared.state.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Runs `f` with the ring (to make groups, read `ops()`, bind signals...). Ops
    /// submitted straight to the ring, not through the driver, are not supported.
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// let backend = driver.with_ring(|r| r.backend());
    /// println!("{backend}");
    /// ```
    pub fn with_ring<T>(&self, f: impl FnOnce(&mut Ring) -> T) -> T {
        let mut st = self.lock();
        let r = f(&mut st.ring);
        // Whatever `f` did (a group with a deadline, a cancel) is the ring's owner's to
        // follow up at once: the reactor takes a full turn, a sleeping `block_on` wakes.
        st.notify();
        r
    }

    /// Futures whose op is still running (dropped ones included, until the kernel is
    /// done with them).
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// assert_eq!(driver.outstanding(), 0);
    /// ```
    pub fn outstanding(&self) -> usize {
        self.lock().live
    }

    /// Bytes kept for descriptor `fd` from stream reads whose futures were dropped
    /// (contract item I11); the next read on `fd` gets them first.
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// assert_eq!(driver.kept_bytes(0), 0);
    /// ```
    pub fn kept_bytes(&self, fd: RawFd) -> usize {
        self.lock().kept.bytes_len(fd)
    }

    /// Connections kept for listening socket `fd` from accepts whose futures were
    /// dropped; the next accept on `fd` gets them first.
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// assert_eq!(driver.kept_connections(0), 0);
    /// ```
    pub fn kept_connections(&self, fd: RawFd) -> usize {
        self.lock().kept.conns_len(fd)
    }

    /// Forgets what the driver kept for `fd` (bytes, accepted connections, which are
    /// closed) and what the ring knows of it. Not needed for what the driver kept: a
    /// number closed outside quell and reused by another file finds its stale kept data
    /// dropped, never served (I12: the file's identity is checked before serving);
    /// calling it after closing a raw descriptor frees that data sooner.
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// driver.forget_fd(5);
    /// ```
    pub fn forget_fd(&self, fd: RawFd) {
        let mut st = self.lock();
        st.kept.forget(fd);
        st.ring.forget_fd(fd);
    }

    /// Closes `fd` for its quell owner: what was kept for it is dropped, and if ops on
    /// it are still running (futures dropped a moment ago), the descriptor stays open
    /// until the last of them completes, so its number is not reused under them.
    pub(crate) fn retire(&self, fd: OwnedFd) {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut st = self.lock();
        st.kept.forget(raw);
        st.retired.insert(raw, fd);
        st.close_if_retired(raw);
    }

    /// The descriptor an event loop of your own watches for readability to know when
    /// to call [`turn`](Driver::turn): the io_uring descriptor, or the portable
    /// backend's epoll descriptor (wake-ups from pool threads and handles make it
    /// readable too). Watch it edge-triggered and call `turn` after each edge.
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// assert!(driver.reactor_fd() >= 0);
    /// ```
    pub fn reactor_fd(&self) -> RawFd {
        self.lock().ring.reactor_fd()
    }

    /// Runs the ring once without blocking: hands queued ops to the kernel, routes
    /// what completed and wakes the futures waiting for it. Returns how soon the ring
    /// must run again even if nothing wakes it (its own timers), for executors that
    /// drive the ring themselves.
    ///
    /// ```
    /// let driver = quell::future::Driver::new(quell::Ring::new().unwrap());
    /// assert_eq!(driver.turn().unwrap(), None);
    /// ```
    pub fn turn(&self) -> Result<Option<Duration>, Error> {
        let mut wakers = Vec::new();
        let next = self.lock().turn(&mut wakers)?;
        for w in wakers {
            w.wake();
        }
        Ok(next)
    }

    /// Runs `fut` to completion on this thread, driving the ring while it waits. The
    /// thread sleeps on the ring's descriptor *without* the driver's lock, so other
    /// threads' cancels, drops, submissions and [`with_ring`](Driver::with_ring) calls
    /// never wait behind the sleep (I3); work they leave for the ring, and a wake of
    /// the future from elsewhere, end the sleep. Other threads may drive the same
    /// driver meanwhile ([`turn`](Driver::turn), another `block_on`, the tokio
    /// reactor): whichever reaps this future's completion wakes it, and the sleep
    /// ends on a bell of the call's own (an eventfd the driver keeps for such calls),
    /// which no other thread's turn can consume.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let c = driver.block_on(driver.submit(quell::Op::nop())?);
    /// assert_eq!(c.outcome, quell::Outcome::Done(0));
    /// // Another thread cancels while this one sleeps in `block_on`.
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let read = driver.submit(quell::Op::read(std::os::fd::AsRawFd::as_raw_fd(&r), vec![0u8; 8]))?;
    /// let d2 = driver.clone();
    /// let id = read.id().unwrap();
    /// let t = std::thread::spawn(move || {
    ///     std::thread::sleep(std::time::Duration::from_millis(20));
    ///     d2.with_ring(|ring| ring.cancel(id)).unwrap()
    /// });
    /// assert!(driver.block_on(read).outcome.is_canceled());
    /// t.join().unwrap();
    /// # Ok(()) }
    /// ```
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let signal = Arc::new(BlockOn {
            state: SleepState::new(),
            bell: OnceLock::new(),
        });
        // Gives the bell back to the driver however this ends (a panicking future too).
        let _spare = SpareBell {
            driver: self,
            signal: &signal,
        };
        let waker = Waker::from(signal.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        let mut wakers = Vec::new();
        loop {
            if signal.state.take_woken() {
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return v;
                }
            }
            // Run the ring without blocking, then sleep with the lock released on the
            // ring's descriptor and on this call's own bell. The descriptor alone is
            // not enough: another thread running the ring (`turn`, a second
            // `block_on`, the tokio reactor) may reap the completion this future waits
            // for, wake it, and reap the readiness that wake-up caused before this
            // thread sleeps. The bell is this thread's alone: a wake from elsewhere
            // rings it, and registering as a sleeper under the lock means anything
            // another thread leaves afterwards rings it too (see `wake_reactor`).
            let (sleep, fd, bell) = {
                let mut st = self.lock();
                let next = match st.turn(&mut wakers) {
                    Ok(next) => next,
                    Err(e) => {
                        // The ring itself failed (not an op): back off rather than spin.
                        tracing::warn!(error = %e, "driver turn failed");
                        Some(Duration::from_millis(1))
                    }
                };
                let busy = next.is_some_and(|d| d.is_zero()) || !wakers.is_empty();
                let bell = match (busy, signal.bell.get()) {
                    (true, _) => None,
                    (false, Some(b)) => Some(b.clone()),
                    (false, None) => st.take_bell().inspect(|b| {
                        let _ = signal.bell.set(b.clone());
                    }),
                };
                let sleep = match &bell {
                    _ if busy => None,
                    // Set before the state says "sleeping": a waker that sees that
                    // state finds the bell (see `SleepState`). Refused if woken since
                    // the top of the loop: then poll again instead.
                    Some(b) => signal.state.try_sleep().then(|| {
                        st.sleepers.push(Sleeper {
                            bell: b.clone(),
                            until: next.map(|d| Instant::now() + d),
                        });
                        next
                    }),
                    // No bell to be woken by: sleep in short steps, so a wake-up lost
                    // to another thread's turn costs at most one.
                    None => (!signal.state.is_woken())
                        .then(|| Some(next.map_or(NO_BELL_STEP, |d| d.min(NO_BELL_STEP)))),
                };
                (sleep, st.ring.reactor_fd(), bell)
            };
            for w in wakers.drain(..) {
                w.wake();
            }
            if let Some(timeout) = sleep {
                let rung = sleep_on(fd, bell.as_deref(), timeout);
                if let Some(b) = &bell {
                    let mut st = self.lock();
                    if let Some(i) = st.sleepers.iter().position(|s| Arc::ptr_eq(&s.bell, b)) {
                        st.sleepers.swap_remove(i);
                    }
                    drop(st);
                    if rung {
                        // Reset before the state is looked at again: a wake after this
                        // is seen at the top of the loop (and may ring it once more,
                        // which costs the next sleep one empty round).
                        b.clear();
                    }
                }
            }
        }
    }
}

/// How long a [`Driver::block_on`] without a bell of its own (no eventfd to be had)
/// sleeps at a time.
const NO_BELL_STEP: Duration = Duration::from_millis(1);

/// Sleeps until `fd` or `bell` is readable or `timeout` passes (an interrupted sleep
/// just ends: the caller runs the ring and looks again). Returns whether the bell rang.
fn sleep_on(fd: RawFd, bell: Option<&Doorbell>, timeout: Option<Duration>) -> bool {
    let ms = match timeout {
        // Round up, so a timer due in 0.4 ms is not polled for in a busy loop.
        Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        None => -1,
    };
    let mut p = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: bell.map_or(-1, Doorbell::raw),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds (a negative fd is ignored by poll); `fd` is the ring's
    // own descriptor, open while the driver (borrowed by the caller) lives, and the
    // bell is kept open by the caller's `Arc`. A raw call: rustix's takes a
    // `BorrowedFd` whose lifetime the ring's descriptor, held under a lock, cannot
    // lend out.
    unsafe { libc::poll(p.as_mut_ptr(), 2, ms) };
    p[1].revents & libc::POLLIN != 0
}

/// The waker of [`Driver::block_on`]: marks the future woken and, if the call sleeps,
/// rings its bell to end the sleep.
struct BlockOn {
    state: SleepState,
    /// Set (once) before the call first sleeps.
    bell: OnceLock<Arc<Doorbell>>,
}

impl Wake for BlockOn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.wake() {
            if let Some(b) = self.bell.get() {
                b.ring();
            }
        }
    }
}

const AWAKE: u8 = 0;
const WOKEN: u8 = 1;
const SLEEPING: u8 = 2;

/// Whether a [`Driver::block_on`]'s future was woken, and whether the call sleeps: one
/// atomic, so a wake and the decision to sleep are ordered without fences.
///
/// - The call takes the wake (`WOKEN` → `AWAKE`) at the top of its loop and polls;
/// - before sleeping it moves `AWAKE` → `SLEEPING`, which fails if a wake came since;
/// - a wake stores `WOKEN`, and rings the bell only if it replaced `SLEEPING`.
///
/// So a wake either lands before the call decides to sleep (the call polls again) or
/// finds it sleeping and rings the bell, which was set before `SLEEPING` was stored
/// (the swap reads that store, so it sees the bell). A wake on the call's own thread
/// never finds `SLEEPING`: it runs while the call is awake. Checked under every
/// interleaving by the `loom` test below.
struct SleepState(AtomicU8);

impl SleepState {
    fn new() -> SleepState {
        // The first poll needs no wake.
        SleepState(AtomicU8::new(WOKEN))
    }

    /// Takes a wake that came since the last call (the call is awake now).
    fn take_woken(&self) -> bool {
        self.0.swap(AWAKE, Ordering::AcqRel) == WOKEN
    }

    fn is_woken(&self) -> bool {
        self.0.load(Ordering::Acquire) == WOKEN
    }

    /// About to sleep: `false` if a wake came first (poll again instead).
    fn try_sleep(&self) -> bool {
        self.0
            .compare_exchange(AWAKE, SLEEPING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records a wake; `true` if the call sleeps and its bell must be rung.
    fn wake(&self) -> bool {
        self.0.swap(WOKEN, Ordering::AcqRel) == SLEEPING
    }
}

/// Gives a `block_on`'s bell back to its driver when the call ends.
struct SpareBell<'a> {
    driver: &'a Driver,
    signal: &'a Arc<BlockOn>,
}

impl Drop for SpareBell<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.signal.bell.get() {
            // A waker kept past the call may still ring it: the next call to use it
            // then wakes once for nothing, and looks again.
            self.driver.lock().spare_bells.push(b.clone());
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Wake the reactor task so it sees the driver is gone and ends.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = st.reactor.take() {
            w.wake();
        }
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `block_on`'s sleep (`SleepState`) under every interleaving
    //! (`RUSTFLAGS="--cfg loom" cargo test -p quell --release --lib loom`). The call is
    //! modelled as it runs: take a wake and poll (is the op done?), else decide to
    //! sleep and sleep on its bell until rung, then clear it. Wakers complete the op,
    //! then wake. The bell is modelled with the eventfd's semantics, and set (as the
    //! `OnceLock` is) before the first sleep; a waker rings it only if it finds it set.
    //! A lost wake leaves the call asleep with nobody left to ring: loom reports the
    //! deadlock.
    use super::SleepState;
    use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    struct Bell {
        count: Mutex<u64>,
        cv: Condvar,
    }

    impl Bell {
        fn ring(&self) {
            *self.count.lock().unwrap() += 1;
            self.cv.notify_one();
        }

        fn wait(&self) {
            let mut c = self.count.lock().unwrap();
            while *c == 0 {
                c = self.cv.wait(c).unwrap();
            }
        }

        fn clear(&self) {
            *self.count.lock().unwrap() = 0;
        }
    }

    fn the_call_always_wakes(wakers: usize) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            let state = Arc::new(SleepState::new());
            let bell = Arc::new(Bell {
                count: Mutex::new(0),
                cv: Condvar::new(),
            });
            let bell_set = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..wakers)
                .map(|_| {
                    let (state, bell, bell_set, done) =
                        (state.clone(), bell.clone(), bell_set.clone(), done.clone());
                    thread::spawn(move || {
                        done.fetch_add(1, Ordering::Relaxed);
                        // Relaxed: only the state's own ordering may make the bell
                        // visible, as only it orders the real `OnceLock`'s store.
                        if state.wake() && bell_set.load(Ordering::Relaxed) {
                            bell.ring();
                        }
                    })
                })
                .collect();
            loop {
                if state.take_woken() && done.load(Ordering::Relaxed) == wakers {
                    break;
                }
                bell_set.store(true, Ordering::Relaxed);
                if state.try_sleep() {
                    bell.wait();
                    bell.clear();
                }
            }
            for t in threads {
                t.join().unwrap();
            }
        });
    }

    #[test]
    fn loom_block_on_never_misses_a_wake() {
        the_call_always_wakes(1);
    }

    #[test]
    fn loom_block_on_never_misses_two_racing_wakes() {
        the_call_always_wakes(2);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Driver, Sleeper, SLEEP_SLACK};
    use crate::wake::Doorbell;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn rung(b: &Doorbell) -> bool {
        let mut p = libc::pollfd {
            fd: b.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on an open eventfd; a zero timeout never blocks.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    /// A turn that leaves the ring due sooner than a sleeper planned wakes it (whoever
    /// ran the turn may stop driving the ring); one due at about the same time, or later,
    /// leaves it asleep, so sleepers that see the same timer do not wake each other.
    #[test]
    fn a_turn_wakes_only_sleepers_that_planned_to_sleep_longer() {
        let d = Driver::new(crate::Ring::new().unwrap());
        let mut st = d.lock();
        let now = Instant::now();
        let plans = [
            None,
            Some(now + Duration::from_secs(600)),
            Some(now + Duration::from_secs(60)),
            Some(now + Duration::from_secs(10) + SLEEP_SLACK / 2),
            Some(now),
        ];
        for until in plans {
            let bell = st.take_bell().unwrap();
            st.sleepers.push(Sleeper { bell, until });
        }
        // Due in 10 s: wakes the one sleeping for ever and the ones planning 600 s
        // and 60 s; not the one due within the slack of it, nor the one due before.
        st.wake_early_sleepers(Some(Duration::from_secs(10)));
        let woken: Vec<bool> = st.sleepers.iter().map(|s| rung(&s.bell)).collect();
        assert_eq!(woken, [true, true, true, false, false]);
        for s in &st.sleepers {
            s.bell.clear();
        }
        // Nothing due (no timer): nobody is woken.
        st.wake_early_sleepers(None);
        assert!(st.sleepers.iter().all(|s| !rung(&s.bell)));
        // Work left right now: every sleeper planning to sleep at all is woken.
        st.wake_early_sleepers(Some(Duration::ZERO));
        let woken: Vec<bool> = st.sleepers.iter().map(|s| rung(&s.bell)).collect();
        assert_eq!(woken, [true, true, true, true, false]);
        let bells: Vec<Arc<Doorbell>> = st.sleepers.drain(..).map(|s| s.bell).collect();
        drop(bells);
    }
}
