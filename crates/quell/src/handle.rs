//! Cross-thread control of a ring.

use crate::error::Error;
use crate::group::GroupId;
use crate::id::OpId;
use crate::info::OpInfo;
use crate::mailbox::Mailbox;
use crate::sync::{AtomicBool, Ordering};
use crate::wake::Doorbell;
use std::os::fd::RawFd;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A request another thread leaves for the ring's thread.
#[derive(Debug)]
pub(crate) enum Request {
    Cancel(OpId),
    CancelFd(RawFd),
    CancelAll,
    CancelGroup(GroupId),
    Drain(GroupId),
    Wake,
    /// A snapshot of `ops()`, sent back on the channel.
    Ops(mpsc::Sender<Vec<OpInfo>>),
}

/// State shared between a ring and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ring_id: u32,
    /// Requests for the ring's thread; it checks them with one atomic load per loop.
    pub(crate) requests: Mailbox<Request>,
    pub(crate) doorbell: Arc<Doorbell>,
    pub(crate) closed: AtomicBool,
}

/// A `Send + Sync`, clonable handle that lets other threads cancel a ring's operations
/// and wake it while it waits. Its calls never block on I/O: they leave a request for
/// the ring's thread and ring its doorbell; the outcome arrives in the completions.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
/// let handle = ring.handle();
/// std::thread::spawn(move || handle.cancel(id).unwrap());
/// let c = ring.wait_for(id)?;
/// assert_eq!(c.outcome, quell::Outcome::Canceled { transferred: 0 });
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    fn push(&self, r: Request) -> Result<(), Error> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // The ring may close between the check above and the post: the mailbox then
        // refuses the request (closing it and posting are ordered by its lock), so a
        // request is taken by the ring, dropped as it closes, or refused here; an
        // `OpsRequest` is answered or disconnected, never left waiting.
        if self.shared.requests.post(r).is_err() {
            return Err(Error::Closed);
        }
        self.shared.doorbell.ring();
        Ok(())
    }

    /// Requests cancellation of `id`. `Err(ForeignId)` if it belongs to another ring,
    /// `Err(Closed)` if the ring is gone.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// // A watchdog thread gives up on the read after a while.
    /// let handle = ring.handle();
    /// let watchdog = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     handle.cancel(id)
    /// });
    /// assert!(ring.wait_for(id)?.outcome.is_canceled());
    /// watchdog.join().unwrap()?;
    /// // An id from another ring is refused.
    /// let other = quell::Ring::new()?;
    /// assert!(matches!(other.handle().cancel(id), Err(quell::Error::ForeignId)));
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self, id: OpId) -> Result<(), Error> {
        if id.ring != self.shared.ring_id {
            return Err(Error::ForeignId);
        }
        self.push(Request::Cancel(id))
    }

    /// Requests cancellation of every outstanding op on `fd`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let (other, other_w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let a = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let b = ring.submit(Op::recv(r.as_raw_fd(), vec![0u8; 8], 0))?;
    /// let keep = ring.submit(Op::read(other.as_raw_fd(), vec![0u8; 8]))?;
    /// // Another thread closes down one connection: both ops on it stop, the other stays.
    /// let handle = ring.handle();
    /// let fd = r.as_raw_fd();
    /// std::thread::spawn(move || handle.cancel_fd(fd)).join().unwrap()?;
    /// assert!(ring.wait_for(a)?.outcome.is_canceled());
    /// assert!(ring.wait_for(b)?.outcome.is_canceled());
    /// std::io::Write::write_all(&mut &other_w, b"ok")?;
    /// assert_eq!(ring.wait_for(keep)?.outcome, Outcome::Done(2));
    /// # Ok(()) }
    /// ```
    pub fn cancel_fd(&self, fd: RawFd) -> Result<(), Error> {
        self.push(Request::CancelFd(fd))
    }

    /// Requests cancellation of every outstanding op.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.submit(quell::Op::timeout(Duration::from_secs(60)))?;
    /// // E.g. from a signal-handling thread: stop everything.
    /// let handle = ring.handle();
    /// std::thread::spawn(move || handle.cancel_all()).join().unwrap()?;
    /// ring.wait(2, None)?;
    /// assert!(ring.completions().all(|c| c.outcome.is_canceled()));
    /// assert!(ring.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn cancel_all(&self) -> Result<(), Error> {
        self.push(Request::CancelAll)
    }

    /// Requests cancellation of group `g` and its descendants, as
    /// [`Ring::cancel_group`](crate::Ring::cancel_group) does on the ring's thread: every
    /// op in it is canceled and the group stays canceled (ops submitted to it later
    /// complete `Canceled` at once). A group that no longer exists when the ring takes
    /// the request is ignored.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{GroupId, GroupOptions, Op};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let request = ring.group(GroupId::ROOT, GroupOptions::default().name("request"))?;
    /// let a = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(request))?;
    /// // A supervisor thread gives up on the request.
    /// let handle = ring.handle();
    /// std::thread::spawn(move || handle.cancel_group(request)).join().unwrap()?;
    /// assert!(ring.wait_for(a)?.outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn cancel_group(&self, g: GroupId) -> Result<(), Error> {
        self.push(Request::CancelGroup(g))
    }

    /// Starts draining group `g` from another thread, as [`Ring::drain`](crate::Ring::drain)
    /// does: new submissions to it are refused (`Draining`), its ops still queued in
    /// user space are canceled, ops in flight run to their end. Wait for the end on the
    /// ring's thread with [`Ring::wait_drained`](crate::Ring::wait_drained).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use quell::{GroupId, GroupOptions, Op};
    /// let mut ring = quell::Ring::new()?;
    /// let jobs = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// let t = ring.submit(Op::timeout(Duration::from_millis(5)).group(jobs))?;
    /// let handle = ring.handle();
    /// std::thread::spawn(move || handle.drain(jobs)).join().unwrap()?;
    /// assert!(ring.wait_drained(jobs, Some(Duration::from_secs(10)))?);
    /// assert!(ring.wait_for(t)?.outcome.is_done()); // in flight: it ran to its end
    /// assert!(matches!(ring.submit(Op::nop().group(jobs)).unwrap_err().error(), quell::Error::Draining));
    /// # Ok(()) }
    /// ```
    pub fn drain(&self, g: GroupId) -> Result<(), Error> {
        self.push(Request::Drain(g))
    }

    /// Wakes the ring if it is waiting (its `wait` returns early with what it has).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let handle = ring.handle();
    /// let waker = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     handle.wake()
    /// });
    /// // Would sleep until the read completes; the wake-up ends the wait with nothing ready.
    /// assert_eq!(ring.wait(1, None)?, 0);
    /// waker.join().unwrap()?;
    /// # ring.cancel(id)?;
    /// # ring.wait_for(id)?;
    /// # Ok(()) }
    /// ```
    pub fn wake(&self) -> Result<(), Error> {
        self.push(Request::Wake)
    }

    /// Asks the ring for a snapshot of its op table ([`Ring::ops`](crate::Ring::ops)).
    /// The ring's thread takes it the next time it runs (a wait, poll or flush; the
    /// request wakes a waiting ring); [`OpsRequest::wait`] waits for it.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let handle = ring.handle();
    /// let watcher = std::thread::spawn(move || {
    ///     let ops = handle.request_ops().unwrap().wait(Duration::from_secs(10)).unwrap();
    ///     handle.cancel(ops[0].id).unwrap();
    ///     ops.len()
    /// });
    /// ring.wait_for(id)?; // drives the ring: serves the snapshot, then the cancel
    /// assert_eq!(watcher.join().unwrap(), 1);
    /// # Ok(()) }
    /// ```
    pub fn request_ops(&self) -> Result<OpsRequest, Error> {
        let (tx, rx) = mpsc::channel();
        self.push(Request::Ops(tx))?;
        Ok(OpsRequest { rx })
    }

    /// Asks for a snapshot, waits up to `timeout` for the ring to serve it, and writes
    /// it to `w` in `format`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::timeout(Duration::from_secs(60)).user_data(31))?;
    /// let handle = ring.handle();
    /// let watcher = std::thread::spawn(move || {
    ///     let mut out = Vec::new();
    ///     handle.dump_ops(quell::DumpFormat::Table, &mut out, Duration::from_secs(10)).unwrap();
    ///     String::from_utf8(out).unwrap()
    /// });
    /// while !watcher.is_finished() {
    ///     ring.wait(1, Some(Duration::from_millis(10)))?; // serves the request
    /// }
    /// assert!(watcher.join().unwrap().contains("timeout"));
    /// # Ok(()) }
    /// ```
    pub fn dump_ops(
        &self,
        format: crate::dump::DumpFormat,
        w: &mut dyn std::io::Write,
        timeout: Duration,
    ) -> Result<(), Error> {
        let ops = self.request_ops()?.wait(timeout)?;
        crate::dump::write(&ops, format, w).map_err(|e| Error::io("writing an op-table dump", e))
    }

    /// Whether the ring has been shut down or dropped.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ring = quell::Ring::new()?;
    /// let handle = ring.handle();
    /// assert!(!handle.is_closed());
    /// drop(ring);
    /// assert!(handle.is_closed());
    /// // Requests to a ring that is gone are refused, not lost silently.
    /// assert!(matches!(handle.cancel_all(), Err(quell::Error::Closed)));
    /// # Ok(()) }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// A pending snapshot asked for with [`Handle::request_ops`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// let req = ring.handle().request_ops()?;
/// assert!(req.try_take().is_none()); // the ring has not run yet
/// ring.poll()?;
/// assert_eq!(req.try_take().unwrap().len(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct OpsRequest {
    rx: mpsc::Receiver<Vec<OpInfo>>,
}

impl OpsRequest {
    /// Waits up to `timeout` for the snapshot. `Err(Closed)` if the ring went away
    /// first, `Err(Io(TimedOut))` if it did not run in time.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::timeout(Duration::from_secs(60)).user_data(5))?;
    /// let req = ring.handle().request_ops()?;
    /// // Nobody drives the ring: the snapshot cannot come.
    /// assert!(matches!(req.wait(Duration::from_millis(10)), Err(quell::Error::Io { .. })));
    /// ring.poll()?; // the ring's thread serves the request
    /// let ops = req.wait(Duration::from_secs(10))?;
    /// assert_eq!(ops.len(), 1);
    /// assert_eq!(ops[0].user_data, 5);
    /// // A request the ring never served before it went away ends at once.
    /// let late = ring.handle().request_ops()?;
    /// drop(ring);
    /// assert!(matches!(late.wait(Duration::from_secs(10)), Err(quell::Error::Closed)));
    /// # Ok(()) }
    /// ```
    pub fn wait(&self, timeout: Duration) -> Result<Vec<OpInfo>, Error> {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Closed),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::io(
                "waiting for an op-table snapshot",
                std::io::ErrorKind::TimedOut.into(),
            )),
        }
    }

    /// The snapshot if the ring has served it already.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::timeout(Duration::from_millis(20)))?;
    /// let req = ring.handle().request_ops()?;
    /// // An event loop that checks for the snapshot between its own waits.
    /// let mut snapshot = None;
    /// while snapshot.is_none() {
    ///     ring.wait(1, Some(Duration::from_millis(5)))?;
    ///     snapshot = req.try_take();
    /// }
    /// assert_eq!(snapshot.unwrap()[0].id, id);
    /// # ring.wait_for(id)?;
    /// # Ok(()) }
    /// ```
    pub fn try_take(&self) -> Option<Vec<OpInfo>> {
        self.rx.try_recv().ok()
    }
}
