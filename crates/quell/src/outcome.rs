//! What an operation ended with, and how it can be stopped.

use std::fmt;

pub use rustix::io::Errno;

/// How an operation ended. Exactly one outcome is delivered per accepted operation.
///
/// The outcome is the truth as the kernel (or worker thread) reported it: a cancel that
/// arrived too late leaves the outcome `Done`, and a transfer that stopped part-way
/// says how many bytes moved.
///
/// ```
/// use quell::Outcome;
/// let o = Outcome::Canceled { transferred: 10 };
/// assert_eq!(o.transferred(), 10);
/// assert!(!o.is_done());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Finished; the value is the syscall result (bytes transferred, a new fd, poll events, ...).
    Done(usize),
    /// Failed with this error number.
    #[serde(with = "errno_serde")]
    Failed(Errno),
    /// Stopped by a cancel request after moving `transferred` bytes.
    Canceled {
        /// Bytes read or written before the operation stopped.
        transferred: usize,
    },
    /// Its deadline fired and it was canceled after moving `transferred` bytes.
    TimedOut {
        /// Bytes read or written before the operation stopped.
        transferred: usize,
    },
    /// Its deadline passed while it could not be canceled: device I/O already queued, or
    /// an interruptible call (FUSE, NFS, a pool job) that the interrupt did not stop
    /// within the ring's [`interrupt_grace`](crate::Builder::interrupt_grace) — or the
    /// ring gave up on it at teardown. The caller is released now; the ring keeps the
    /// buffer until the kernel finishes, and for a write the effect may still happen.
    Detached,
}

impl Outcome {
    /// `true` for [`Outcome::Done`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::nop())?;
    /// assert!(ring.wait_for(id)?.outcome.is_done());
    /// assert!(!quell::Outcome::Canceled { transferred: 0 }.is_done());
    /// # Ok(()) }
    /// ```
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }

    /// `true` for [`Outcome::Canceled`] and [`Outcome::TimedOut`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 16]))?;
    /// ring.cancel(id)?;
    /// assert!(ring.wait_for(id)?.outcome.is_canceled());
    /// // A deadline that fired counts as canceled too.
    /// assert!(quell::Outcome::TimedOut { transferred: 3 }.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn is_canceled(&self) -> bool {
        matches!(self, Outcome::Canceled { .. } | Outcome::TimedOut { .. })
    }

    /// Bytes known to have been transferred (the result of `Done`, 0 for failures).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 64]))?;
    /// std::io::Write::write_all(&mut &w, b"four")?;
    /// assert_eq!(ring.wait_for(id)?.outcome.transferred(), 4);
    /// assert_eq!(quell::Outcome::Failed(quell::Errno::IO).transferred(), 0);
    /// # Ok(()) }
    /// ```
    pub fn transferred(&self) -> usize {
        match *self {
            Outcome::Done(n) => n,
            Outcome::Canceled { transferred } | Outcome::TimedOut { transferred } => transferred,
            Outcome::Failed(_) | Outcome::Detached => 0,
        }
    }

    /// Converts to a `Result`: `Done(n)` is `Ok(n)`, and so is a transfer that was
    /// canceled or timed out after moving `n > 0` bytes — as `read(2)` interrupted by a
    /// signal after some data returns the count, so a `let n = res?` caller keeps the
    /// bytes (match on the outcome itself to tell the two apart). Everything else is an
    /// `io::Error`: `ECANCELED` for canceled, `ETIMEDOUT` for timed out or detached, the
    /// errno for a failure.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 16]))?;
    /// ring.cancel(id)?;
    /// let err = ring.wait_for(id)?.outcome.into_result().unwrap_err();
    /// assert_eq!(err.raw_os_error(), Some(libc::ECANCELED));
    /// assert_eq!(quell::Outcome::Done(7).into_result()?, 7);
    /// // Stopped part-way: the count survives the conversion.
    /// assert_eq!(quell::Outcome::Canceled { transferred: 3 }.into_result()?, 3);
    /// # Ok(()) }
    /// ```
    pub fn into_result(self) -> std::io::Result<usize> {
        match self {
            Outcome::Done(n) => Ok(n),
            Outcome::Failed(e) => Err(std::io::Error::from_raw_os_error(e.raw_os_error())),
            Outcome::Canceled { transferred } | Outcome::TimedOut { transferred }
                if transferred > 0 =>
            {
                Ok(transferred)
            }
            Outcome::Canceled { .. } => Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
            Outcome::TimedOut { .. } | Outcome::Detached => {
                Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT))
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done(n) => write!(f, "done({n})"),
            Outcome::Failed(e) => write!(f, "failed({e})"),
            Outcome::Canceled { transferred } => write!(f, "canceled(transferred={transferred})"),
            Outcome::TimedOut { transferred } => write!(f, "timed-out(transferred={transferred})"),
            Outcome::Detached => write!(f, "detached"),
        }
    }
}

mod errno_serde {
    use super::Errno;
    pub fn serialize<S: serde::Serializer>(e: &Errno, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(e.raw_os_error())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Errno, D::Error> {
        let v = <i32 as serde::Deserialize>::deserialize(d)?;
        Ok(Errno::from_raw_os_error(v))
    }
}

/// How an operation can be stopped (contract item I5).
///
/// ```
/// use quell::CancelClass;
/// assert!(CancelClass::Prompt.is_cancelable());
/// assert!(!CancelClass::Bounded.is_cancelable());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum CancelClass {
    /// Still in quell's own queue, not given to the kernel: cancel is certain and immediate.
    Queued = 0,
    /// Waiting on a pollable object (pipe, socket, eventfd, timer): canceled within microseconds.
    Prompt = 1,
    /// A blocking call in a worker thread (FUSE, NFS, blocking syscalls): stopped by interrupting it.
    Interruptible = 2,
    /// Regular file or block device I/O already with the device: cannot be canceled, finishes in bounded time.
    Bounded = 3,
}

impl CancelClass {
    /// Whether a cancel request can stop an operation of this class before it finishes.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 16]))?;
    /// // A socket read waits on a pollable object: a cancel can stop it.
    /// let info = ring.ops().into_iter().find(|o| o.id == id).unwrap();
    /// assert!(info.class.is_cancelable());
    /// ring.cancel(id)?;
    /// ring.wait_for(id)?;
    /// # Ok(()) }
    /// ```
    pub fn is_cancelable(&self) -> bool {
        !matches!(self, CancelClass::Bounded)
    }

    /// The class that wins when an operation touches two descriptors (splice): the harder to stop.
    pub(crate) fn weakest(a: CancelClass, b: CancelClass) -> CancelClass {
        if (a as u8) >= (b as u8) {
            a
        } else {
            b
        }
    }
}

impl fmt::Display for CancelClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelClass::Queued => "queued",
            CancelClass::Prompt => "prompt",
            CancelClass::Interruptible => "interruptible",
            CancelClass::Bounded => "bounded",
        })
    }
}

/// Where an outstanding operation is in its life.
///
/// ```
/// assert_eq!(quell::OpState::Queued.to_string(), "queued");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum OpState {
    /// In quell's user-space queue, not yet given to the backend.
    Queued,
    /// Given to the kernel or a worker thread.
    InFlight,
    /// In flight, and a cancel has been requested; the completion will tell what happened.
    CancelRequested,
    /// Its completion was delivered as `Detached`; the ring still waits for the kernel.
    Detached,
    /// Finished; the completion waits to be taken from the ring.
    Completed,
}

impl fmt::Display for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpState::Queued => "queued",
            OpState::InFlight => "in-flight",
            OpState::CancelRequested => "cancel-requested",
            OpState::Detached => "detached",
            OpState::Completed => "completed",
        })
    }
}

/// What a cancel request could tell at once (contract item I3). The truth arrives in
/// the completion.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::nop())?;
/// let _ = ring.wait_for(id)?;
/// assert_eq!(ring.cancel(id)?, quell::CancelStatus::NotFound);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelStatus {
    /// The request was made (or, for a queued op, the op is already canceled); the
    /// completion will say what happened.
    Requested,
    /// The op had already finished; its completion is waiting with its original outcome.
    AlreadyDone,
    /// No such op: the id is stale (its completion was already taken) or was never issued.
    NotFound,
}
