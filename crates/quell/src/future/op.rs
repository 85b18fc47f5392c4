//! The future of one op: owned memory in, [`Completion`] (with the memory) out;
//! dropping it is a cancel request that leaves the memory with the ring (I2).

use super::driver::{Driver, State as DriverState, Submitted, Take, Ticket};
use super::kept::{Ident, StreamKey};
use crate::completion::Completion;
use crate::error::{Error, SubmitError};
use crate::group::GroupId;
use crate::id::OpId;
use crate::op::{Op, OpKind, Payload};
use crate::outcome::{CancelStatus, Outcome};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// How to start a stream read or accept again after the driver's own cancel (made to
/// serve kept bytes first) found nothing to serve.
#[derive(Clone, Copy, Debug)]
struct Redo {
    kind: OpKind,
    fd: RawFd,
    flags: u32,
    exact: bool,
    user_data: u64,
    group: Option<GroupId>,
    deadline: Option<Instant>,
}

impl Redo {
    fn of(op: &Op) -> Redo {
        Redo {
            kind: op.desc.kind,
            fd: op.desc.fd,
            flags: op.desc.flags,
            exact: op.exact,
            user_data: op.user_data,
            group: op.group,
            deadline: op.deadline,
        }
    }

    fn op(&self, c: &mut Completion) -> Op {
        self.op_with(take_buf(c))
    }

    fn op_with(&self, buf: Vec<u8>) -> Op {
        let mut op = match self.kind {
            OpKind::Accept => Op::accept(self.fd),
            OpKind::Recv => Op::recv(self.fd, buf, 0),
            _ => Op::read(self.fd, buf),
        };
        if self.kind != OpKind::Read || !self.exact {
            op.desc.flags = self.flags;
        } else {
            op = op.exact();
        }
        op.user_data = self.user_data;
        op.group = self.group;
        op.deadline = self.deadline;
        op
    }
}

enum State {
    Live {
        t: Ticket,
        redo: Option<Redo>,
    },
    /// Served at submission from what was kept for its descriptor (I11).
    Served(Completion, StreamKey, Ident),
    Taken,
}

/// An exact read that holds part of its bytes (served from kept bytes, or read before
/// the driver's own cancel) while an op reads the rest: `Op::exact` is short only at
/// end of file, whatever was kept.
#[derive(Debug)]
struct Prefix {
    /// The caller's buffer; its first `n` bytes are the earliest of the stream.
    buf: Vec<u8>,
    n: usize,
}

/// Takes the single buffer out of a completion (empty if it has none).
fn take_buf(c: &mut Completion) -> Vec<u8> {
    match std::mem::take(&mut *c.payload) {
        Payload::Buf(b) => b,
        _ => Vec::new(),
    }
}

/// What [`Prefix::read_rest`] came to.
enum Rest {
    /// An op reads the rest.
    Reading(Ticket, Box<Prefix>),
    /// Kept bytes filled the buffer: done without an op.
    Full(Vec<u8>),
    /// The op was refused: the buffer with the bytes held so far.
    Refused(crate::Error, Vec<u8>, usize),
}

impl Prefix {
    /// Starts (or goes on with) reading the rest of an exact read whose buffer `buf`
    /// holds its first `n` bytes (folded into `prefix`, the part held before, if any:
    /// there is only ever one).
    fn read_rest(
        st: &mut DriverState,
        redo: &Redo,
        prefix: Option<Box<Prefix>>,
        buf: Vec<u8>,
        n: usize,
    ) -> Rest {
        let (mut buf, mut n) = match prefix {
            Some(mut p) => {
                p.buf[p.n..p.n + n].copy_from_slice(&buf[..n]);
                p.n += n;
                (std::mem::take(&mut p.buf), p.n)
            }
            None => (buf, n),
        };
        loop {
            if n >= buf.len() {
                return Rest::Full(buf);
            }
            match st.submit(redo.op_with(vec![0u8; buf.len() - n])) {
                Ok(Submitted::Op(t)) => return Rest::Reading(t, Box::new(Prefix { buf, n })),
                // Bytes were kept since: take them and read what is still missing.
                Ok(Submitted::Served(c, ..)) => {
                    let k = c.outcome.transferred();
                    buf[n..n + k].copy_from_slice(&c.data()[..k]);
                    n += k;
                }
                Err(e) => return Rest::Refused(e.into_parts().0, buf, n),
            }
        }
    }

    /// The whole read's completion from the rest's: counts add up, the buffer is the
    /// caller's. A failure hands the prefix's bytes back to the stream (they are the
    /// next read's), so the error hides none.
    fn finish(self, st: &mut DriverState, mut c: Completion, fd: RawFd) -> Completion {
        let Prefix { mut buf, n } = self;
        let t = c.outcome.transferred().min(buf.len() - n);
        if let Payload::Buf(rest) = &*c.payload {
            buf[n..n + t].copy_from_slice(&rest[..t]);
        }
        c.outcome = match c.outcome {
            Outcome::Done(_) => Outcome::Done(n + t),
            Outcome::Canceled { .. } => Outcome::Canceled { transferred: n + t },
            Outcome::TimedOut { .. } => Outcome::TimedOut { transferred: n + t },
            o => {
                st.keep_front(fd, None, &buf[..n + t]);
                o
            }
        };
        c.payload = Payload::Buf(buf).into();
        c
    }
}

/// The future of one op submitted through a [`Driver`]. Resolves to the op's one
/// [`Completion`] (contract item I1), buffer included.
///
/// Dropping it before it resolves requests cancellation; the buffer stays with the
/// ring until the kernel's own completion, then is freed (I2). A stream read (a pipe
/// or socket read at the current position, a `recv`) whose future was dropped but
/// which brought data in anyway keeps that data for the next read on the descriptor,
/// and a dropped accept keeps its connection for the next accept (I11).
///
/// To stop an op *and* get its honest outcome and buffer back, call
/// [`cancel`](OpFuture::cancel) (or a [`Canceller`]) and keep awaiting.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let driver = quell::future::Driver::new(quell::Ring::new()?);
/// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
/// let mut read = driver.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 64]))?;
/// read.cancel();
/// let c = driver.block_on(read);
/// assert_eq!(c.outcome, quell::Outcome::Canceled { transferred: 0 });
/// assert_eq!(c.into_buf().unwrap().len(), 64);
/// # Ok(()) }
/// ```
#[must_use = "an op's future does nothing useful unless awaited; dropping it cancels the op"]
pub struct OpFuture {
    driver: Driver,
    state: State,
    /// An exact stream read's bytes so far, while the op of `state` reads the rest.
    prefix: Option<Box<Prefix>>,
}

impl Driver {
    /// Submits `op` and returns its future. A refused op comes back whole in the error
    /// (I1, I10). The ring owns the op (and its buffer) from here and hands it to the
    /// kernel the next time it runs, or from the future's first poll if that comes
    /// first; the op runs whether or not the future is ever polled.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let err = driver.submit(quell::Op::read(-1, vec![0u8; 8])).unwrap_err();
    /// assert_eq!(err.into_op().into_buf().unwrap().len(), 8);
    /// # Ok(()) }
    /// ```
    pub fn submit(&self, op: Op) -> Result<OpFuture, SubmitError> {
        let stream = super::driver::stream_key(&op);
        let redo = stream.map(|_| Redo::of(&op));
        let mut st = self.lock();
        let (state, prefix) = match st.submit_keyed(op, stream)? {
            Submitted::Op(t) => (State::Live { t, redo }, None),
            Submitted::Served(mut c, key, ident) => {
                let short = match (&*c.payload, c.outcome) {
                    (Payload::Buf(b), Outcome::Done(n)) => n < b.len(),
                    _ => false,
                };
                match redo {
                    // An exact read served fewer kept bytes than it asked for: it goes
                    // on reading the rest (short only at end of file).
                    Some(redo) if redo.exact && !key.accept && short => {
                        let n = c.outcome.transferred();
                        let buf = take_buf(&mut c);
                        match Prefix::read_rest(&mut st, &redo, None, buf, n) {
                            Rest::Reading(t, p) => (
                                State::Live {
                                    t,
                                    redo: Some(redo),
                                },
                                Some(p),
                            ),
                            Rest::Full(buf) => {
                                c.outcome = Outcome::Done(buf.len());
                                c.payload = Payload::Buf(buf).into();
                                (State::Served(c, key, ident), None)
                            }
                            Rest::Refused(err, buf, n) => {
                                st.keep_front(key.fd, Some(ident), &buf[..n]);
                                return Err(SubmitError::new(err, redo.op_with(buf)));
                            }
                        }
                    }
                    _ => (State::Served(c, key, ident), None),
                }
            }
        };
        drop(st);
        Ok(OpFuture {
            driver: self.clone(),
            state,
            prefix,
        })
    }
}

impl OpFuture {
    /// The op's id, while it runs (`None` once resolved or when it was served from
    /// kept bytes without a kernel op).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let f = driver.submit(quell::Op::nop())?;
    /// assert!(f.id().is_some());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> Option<OpId> {
        match self.state {
            State::Live { t, .. } => Some(t.id),
            _ => None,
        }
    }

    /// Requests cancellation and keeps the future: await it for the honest outcome
    /// (`Canceled { transferred }`, or `Done` if the cancel came too late) and the
    /// buffer. Returns what is known at once (I3).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let mut t = driver.submit(quell::Op::timeout(std::time::Duration::from_secs(60)))?;
    /// assert_eq!(t.cancel(), quell::CancelStatus::Requested);
    /// assert!(driver.block_on(t).outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn cancel(&mut self) -> CancelStatus {
        match self.state {
            State::Live { t, .. } => self
                .driver
                .lock()
                .cancel(t)
                .unwrap_or(CancelStatus::NotFound),
            State::Served(..) => CancelStatus::AlreadyDone,
            State::Taken => CancelStatus::NotFound,
        }
    }

    /// A `Send + Sync` handle that cancels this op from anywhere (another task, another
    /// thread) while this future keeps awaiting the outcome.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let read = driver.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let canceller = read.canceller().unwrap();
    /// std::thread::spawn(move || canceller.cancel());
    /// assert!(driver.block_on(read).outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn canceller(&self) -> Option<Canceller> {
        match self.state {
            State::Live { t, .. } => Some(Canceller {
                driver: self.driver.clone(),
                t,
            }),
            _ => None,
        }
    }

    /// Lets a write op finish with nobody waiting (a dropped stream's acknowledged
    /// bytes), then sends `tail`, all by `until` (see `State::linger`).
    pub(crate) fn linger(mut self, tail: Vec<u8>, until: std::time::Instant) {
        match std::mem::replace(&mut self.state, State::Taken) {
            State::Live { t, .. } => self.driver.lock().linger(t, tail, until),
            _ => unreachable!("a write is live until taken"),
        }
    }

    /// The op's outcome as an `io::Result` with its buffer (read, write, send, recv).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let f = std::fs::File::open("/proc/self/exe")?;
    /// let op = quell::Op::read_at(std::os::fd::AsRawFd::as_raw_fd(&f), 0, vec![0u8; 4]);
    /// let (n, buf) = driver.block_on(driver.submit(op)?.buf());
    /// assert_eq!(&buf[..n?], b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn buf(self) -> BufFuture {
        BufFuture {
            inner: BufInner::Op(self),
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Completion> {
        let mut woken = Vec::new();
        let r = self.poll_locked(cx, &mut woken);
        // Other futures' completions routed by an inline turn: woken without the lock,
        // then the vector's allocation goes back to the driver for the next batch.
        if woken.capacity() > 0 {
            for w in woken.drain(..) {
                w.wake();
            }
            self.driver.lock().give_back_wakers(woken);
        }
        r
    }

    fn poll_locked(
        &mut self,
        cx: &mut Context<'_>,
        woken: &mut Vec<std::task::Waker>,
    ) -> Poll<Completion> {
        loop {
            let t = match &self.state {
                State::Live { t, .. } => *t,
                State::Served(..) => {
                    let State::Served(c, ..) = std::mem::replace(&mut self.state, State::Taken)
                    else {
                        unreachable!()
                    };
                    return Poll::Ready(c);
                }
                State::Taken => panic!("OpFuture polled after it resolved"),
            };
            let mut st = self.driver.lock();
            if st.unflushed {
                st.hand_over(woken, t);
            }
            let (mut c, stream, rescued, canceled) = match st.take(t, cx.waker()) {
                Take::Pending => return Poll::Pending,
                Take::Gone => {
                    drop(st);
                    self.state = State::Taken;
                    panic!("quell driver lost op {:?} (a driver bug)", t.id);
                }
                Take::Ready {
                    c,
                    stream,
                    rescued,
                    canceled,
                } => (c, stream, rescued, canceled),
            };
            let Some(key) = stream else {
                self.state = State::Taken;
                return Poll::Ready(c);
            };
            let redo = match std::mem::replace(&mut self.state, State::Taken) {
                State::Live { redo, .. } => redo.expect("stream ops carry a redo"),
                _ => unreachable!("taken from a live op"),
            };
            // Kept bytes were served as the completion was routed (`merge_kept`). What
            // is left to decide: the driver's own cancel (a rescue, not the user's)
            // that found nothing to serve runs the read again, and an exact read
            // holding part of its bytes reads the rest.
            if rescued && !canceled && matches!(c.outcome, Outcome::Canceled { .. }) {
                let n = c.outcome.transferred();
                // An exact read's bytes so far, whose rest is still to read.
                let mut rest = None;
                if key.accept || n == 0 {
                    match st.submit(redo.op(&mut c)) {
                        Ok(Submitted::Op(t)) => {
                            self.state = State::Live {
                                t,
                                redo: Some(redo),
                            };
                            continue;
                        }
                        // Kept data came in since: served at once.
                        Ok(Submitted::Served(served, ..)) => {
                            let k = served.outcome.transferred();
                            let short = served.data().len() == k
                                && matches!(&*served.payload, Payload::Buf(b) if k < b.len());
                            if redo.exact && !key.accept && short {
                                rest = Some((served.into_buf().unwrap_or_default(), k));
                            } else {
                                c = served;
                            }
                        }
                        // Cannot run it again (ring closing, table full): report the
                        // cancel the driver made, buffer returned.
                        Err(e) => c.payload = e.into_op().desc.payload.into(),
                    }
                } else {
                    rest = Some((take_buf(&mut c), n));
                }
                if let Some((buf, n)) = rest {
                    match Prefix::read_rest(&mut st, &redo, self.prefix.take(), buf, n) {
                        Rest::Reading(t, p) => {
                            self.prefix = Some(p);
                            self.state = State::Live {
                                t,
                                redo: Some(redo),
                            };
                            continue;
                        }
                        Rest::Full(buf) => {
                            c.outcome = Outcome::Done(buf.len());
                            c.payload = Payload::Buf(buf).into();
                        }
                        // Cannot run it: report the driver's cancel, with what was read.
                        Rest::Refused(_, buf, n) => {
                            c.outcome = Outcome::Canceled { transferred: n };
                            c.payload = Payload::Buf(buf).into();
                        }
                    }
                }
            }
            if let Some(p) = self.prefix.take() {
                c = (*p).finish(&mut st, c, key.fd);
            }
            return Poll::Ready(c);
        }
    }
}

impl Future for OpFuture {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        self.poll_inner(cx)
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Taken) {
            State::Live { t, redo } => {
                let mut st = self.driver.lock();
                st.abandon(t);
                // The part of an exact read already held is the stream's earliest: back
                // in front for the next read (I11).
                if let (Some(p), Some(redo)) = (self.prefix.take(), redo) {
                    st.keep_front(redo.fd, None, &p.buf[..p.n]);
                }
            }
            State::Served(c, key, ident) => self.driver.lock().unserve(c, key, ident),
            State::Taken => {}
        }
    }
}

impl std::fmt::Debug for OpFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpFuture").field("id", &self.id()).finish()
    }
}

/// Cancels one op from anywhere; `Send + Sync + Clone`. The op's future receives the
/// honest outcome and the buffer.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let driver = quell::future::Driver::new(quell::Ring::new()?);
/// let t = driver.submit(quell::Op::timeout(std::time::Duration::from_secs(60)))?;
/// t.canceller().unwrap().cancel();
/// assert!(driver.block_on(t).outcome.is_canceled());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Canceller {
    driver: Driver,
    t: Ticket,
}

impl Canceller {
    /// Requests cancellation (I3: returns at once; the truth is in the completion).
    /// When the ring is busy on another thread (inside [`Driver::block_on`]'s wait),
    /// the request goes through the ring's cross-thread handle instead of waiting.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut read = driver.read(r.as_raw_fd(), vec![0u8; 8]);
    /// let canceller = read.op_mut().unwrap().canceller().unwrap();
    /// // A watchdog thread gives up on the read while this thread awaits it.
    /// std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     canceller.cancel();
    /// });
    /// let (res, buf) = driver.block_on(read);
    /// assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    /// assert_eq!(buf.len(), 8); // the buffer comes back all the same
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self) {
        match self.driver.try_lock() {
            Some(mut st) => {
                let _ = st.cancel(self.t);
            }
            None => {
                let _ = self.driver.shared.handle.cancel(self.t.id);
            }
        }
    }

    /// The op this cancels.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let sleep = driver.submit(quell::Op::timeout(Duration::from_secs(60)))?;
    /// let canceller = sleep.canceller().unwrap();
    /// assert_eq!(Some(canceller.id()), sleep.id());
    /// // The id finds the op in the ring's table, e.g. for logs.
    /// let listed = driver.with_ring(|ring| ring.ops().iter().any(|o| o.id == canceller.id()));
    /// assert!(listed);
    /// canceller.cancel();
    /// assert!(driver.block_on(sleep).outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> OpId {
        self.t.id
    }
}

/// An [`OpFuture`] whose output is `(io::Result<usize>, buffer)`, the owned-buffer
/// form: `Done(n)` is `Ok(n)`, a cancel `ECANCELED`, a timeout `ETIMEDOUT`, a refused
/// submission its error; the buffer always comes back.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let driver = quell::future::Driver::new(quell::Ring::new()?);
/// let (res, buf) = driver.block_on(driver.read(-1, vec![0u8; 8]));
/// assert!(res.is_err());
/// assert_eq!(buf.len(), 8);
/// # Ok(()) }
/// ```
#[must_use = "dropping it cancels the op"]
#[derive(Debug)]
pub struct BufFuture {
    inner: BufInner,
}

/// A refused submission is rare: boxing it keeps the common future small (it is
/// moved into every task that awaits it).
#[derive(Debug)]
enum BufInner {
    Op(OpFuture),
    Refused(Option<Box<(Error, Vec<u8>)>>),
}

impl BufFuture {
    pub(super) fn refused(e: SubmitError) -> BufFuture {
        let (err, op) = e.into_parts();
        BufFuture {
            inner: BufInner::Refused(Some(Box::new((err, op.into_buf().unwrap_or_default())))),
        }
    }

    /// The op's future, to cancel it or take a [`Canceller`] (`None` if the
    /// submission was refused).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut read = driver.read(r.as_raw_fd(), vec![0u8; 8]);
    /// assert_eq!(read.op_mut().unwrap().cancel(), quell::CancelStatus::Requested);
    /// let (res, _buf) = driver.block_on(read);
    /// assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    /// // A refused submission has no op to reach.
    /// assert!(driver.read(-1, vec![0u8; 8]).op_mut().is_none());
    /// # Ok(()) }
    /// ```
    pub fn op_mut(&mut self) -> Option<&mut OpFuture> {
        match &mut self.inner {
            BufInner::Op(f) => Some(f),
            BufInner::Refused(_) => None,
        }
    }
}

impl Future for BufFuture {
    type Output = (std::io::Result<usize>, Vec<u8>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            BufInner::Refused(r) => {
                let (e, buf) = *r.take().expect("BufFuture polled after it resolved");
                Poll::Ready((Err(e.into()), buf))
            }
            BufInner::Op(f) => f.poll_inner(cx).map(|c| {
                let res = match c.outcome {
                    Outcome::Done(n) => Ok(n),
                    // A transfer stopped part-way is the count it moved, as read(2) and
                    // write(2) answer when a signal interrupts them after some data: the
                    // `let n = res?` caller keeps the bytes (I11, I13).
                    Outcome::Canceled { transferred: n } | Outcome::TimedOut { transferred: n }
                        if n > 0 =>
                    {
                        Ok(n)
                    }
                    o => o.into_result(),
                };
                (res, c.into_buf().unwrap_or_default())
            }),
        }
    }
}

/// Owned-buffer shortcuts for the common ops. Each submits to the ring at once; a refused
/// submission resolves to its error with the buffer.
impl Driver {
    fn buf_op(&self, op: Op) -> BufFuture {
        match self.submit(op) {
            Ok(f) => f.buf(),
            Err(e) => BufFuture::refused(e),
        }
    }

    /// Reads into `buf` at `fd`'s position (pipes, sockets): served first from bytes
    /// kept from dropped reads on `fd` (I11).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// std::io::Write::write_all(&mut &w, b"x")?;
    /// let (n, _) = driver.block_on(driver.read(r.as_raw_fd(), vec![0u8; 4]));
    /// assert_eq!(n?, 1);
    /// # Ok(()) }
    /// ```
    pub fn read(&self, fd: RawFd, buf: Vec<u8>) -> BufFuture {
        self.buf_op(Op::read(fd, buf))
    }

    /// Reads into `buf` at `offset`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let f = std::fs::File::open("/proc/self/exe")?;
    /// let (n, buf) = driver.block_on(driver.read_at(f.as_raw_fd(), 1, vec![0u8; 3]));
    /// assert_eq!(&buf[..n?], b"ELF");
    /// # Ok(()) }
    /// ```
    pub fn read_at(&self, fd: RawFd, offset: u64, buf: Vec<u8>) -> BufFuture {
        self.buf_op(Op::read_at(fd, offset, buf))
    }

    /// Writes `buf` at `fd`'s position; `Ok(n)` is how much was written.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let (n, _) = driver.block_on(driver.write(w.as_raw_fd(), b"hey".to_vec()));
    /// assert_eq!(n?, 3);
    /// # Ok(()) }
    /// ```
    pub fn write(&self, fd: RawFd, buf: Vec<u8>) -> BufFuture {
        self.buf_op(Op::write(fd, buf))
    }

    /// Writes `buf` at `offset`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let f = tempfile_like()?;
    /// let (n, _) = driver.block_on(driver.write_at(f.as_raw_fd(), 0, b"abc".to_vec()));
    /// assert_eq!(n?, 3);
    /// # Ok(()) }
    /// # fn tempfile_like() -> std::io::Result<std::fs::File> {
    /// #     let p = std::env::temp_dir().join(format!("quell-doc-{}", std::process::id()));
    /// #     let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&p)?;
    /// #     std::fs::remove_file(&p)?;
    /// #     Ok(f)
    /// # }
    /// ```
    pub fn write_at(&self, fd: RawFd, offset: u64, buf: Vec<u8>) -> BufFuture {
        self.buf_op(Op::write_at(fd, offset, buf))
    }

    /// Receives into `buf` from socket `fd` (kept bytes first, as [`read`](Driver::read)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// std::io::Write::write_all(&mut &w, b"yo")?;
    /// let (n, _) = driver.block_on(driver.recv(r.as_raw_fd(), vec![0u8; 4]));
    /// assert_eq!(n?, 2);
    /// # Ok(()) }
    /// ```
    pub fn recv(&self, fd: RawFd, buf: Vec<u8>) -> BufFuture {
        self.buf_op(Op::recv(fd, buf, 0))
    }

    /// Sends `buf` on socket `fd`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (_r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let (n, _) = driver.block_on(driver.send(w.as_raw_fd(), b"yo".to_vec()));
    /// assert_eq!(n?, 2);
    /// # Ok(()) }
    /// ```
    pub fn send(&self, fd: RawFd, buf: Vec<u8>) -> BufFuture {
        self.buf_op(Op::send(fd, buf, 0))
    }

    /// Sleeps for `dur` on the ring's timer.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let c = driver.block_on(driver.sleep(std::time::Duration::from_millis(1))?);
    /// assert!(c.outcome.is_done());
    /// # Ok(()) }
    /// ```
    pub fn sleep(&self, dur: std::time::Duration) -> Result<OpFuture, SubmitError> {
        self.submit(Op::timeout(dur))
    }
}
