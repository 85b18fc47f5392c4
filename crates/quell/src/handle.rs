//! Cross-thread control of a ring.

use crate::error::Error;
use crate::id::OpId;
use crate::mailbox::Mailbox;
use crate::sync::{AtomicBool, Ordering};
use crate::wake::Doorbell;
use std::os::fd::RawFd;
use std::sync::Arc;

/// A request another thread leaves for the ring's thread.
#[derive(Debug)]
pub(crate) enum Request {
    Cancel(OpId),
    CancelFd(RawFd),
    CancelAll,
    Wake,
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

    /// Whether the ring has been shut down or dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}
