//! Cross-thread control of a ring.

use crate::error::Error;
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
        self.shared.requests.post(r);
        self.shared.doorbell.ring();
        Ok(())
    }

    /// Requests cancellation of `id`. `Err(ForeignId)` if it belongs to another ring,
    /// `Err(Closed)` if the ring is gone.
    pub fn cancel(&self, id: OpId) -> Result<(), Error> {
        if id.ring != self.shared.ring_id {
            return Err(Error::ForeignId);
        }
        self.push(Request::Cancel(id))
    }

    /// Requests cancellation of every outstanding op on `fd`.
    pub fn cancel_fd(&self, fd: RawFd) -> Result<(), Error> {
        self.push(Request::CancelFd(fd))
    }

    /// Requests cancellation of every outstanding op.
    pub fn cancel_all(&self) -> Result<(), Error> {
        self.push(Request::CancelAll)
    }

    /// Wakes the ring if it is waiting (its `wait` returns early with what it has).
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
    pub fn try_take(&self) -> Option<Vec<OpInfo>> {
        self.rx.try_recv().ok()
    }
}
