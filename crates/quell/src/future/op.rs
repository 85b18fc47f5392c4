//! The future of one op: owned memory in, [`Completion`] (with the memory) out;
//! dropping it is a cancel request that leaves the memory with the ring (I2).

use super::driver::{Driver, Settle, Submitted, Take, Ticket};
use super::kept::StreamKey;
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
        let buf = match std::mem::take(&mut *c.payload) {
            Payload::Buf(b) => b,
            _ => Vec::new(),
        };
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
    Served(Completion, StreamKey),
    Taken,
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
        let state = match self.lock().submit_keyed(op, stream)? {
            Submitted::Op(t) => State::Live { t, redo },
            Submitted::Served(c, key) => State::Served(c, key),
        };
        Ok(OpFuture {
            driver: self.clone(),
            state,
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
                    let State::Served(c, _) = std::mem::replace(&mut self.state, State::Taken)
                    else {
                        unreachable!()
                    };
                    return Poll::Ready(c);
                }
                State::Taken => panic!("OpFuture polled after it resolved"),
            };
            let mut st = self.driver.lock();
            if st.unflushed {
                st.hand_over(woken);
            }
            let (c, stream, rescued, canceled) = match st.take(t, cx.waker()) {
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
                State::Live { redo, .. } => redo,
                _ => None,
            };
            match st.settle(c, key, rescued, canceled) {
                Settle::Done(c) => return Poll::Ready(c),
                Settle::Again(mut c) => {
                    let redo = redo.expect("stream ops carry a redo");
                    let op = redo.op(&mut c);
                    match st.submit(op) {
                        Ok(Submitted::Op(t)) => {
                            self.state = State::Live {
                                t,
                                redo: Some(redo),
                            }
                        }
                        Ok(Submitted::Served(c, _)) => return Poll::Ready(c),
                        Err(e) => {
                            // Cannot run it again (ring closing, table full): report
                            // the cancel the driver made, buffer returned.
                            c.payload = e.into_op().desc.payload.into();
                            return Poll::Ready(c);
                        }
                    }
                }
            }
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
            State::Live { t, .. } => self.driver.lock().abandon(t),
            State::Served(c, key) => self.driver.lock().unserve(c, key),
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
    fn refused(e: SubmitError) -> BufFuture {
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
