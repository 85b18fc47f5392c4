//! Typed errors. A refused submission hands the caller's operation (and so its buffer) back.

use crate::op::Op;
use std::fmt;

/// Why a ring refused a request.
///
/// ```
/// let e = quell::Error::TooLong { len: 1 << 40 };
/// assert!(e.to_string().contains("too long"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file descriptor is negative or not open.
    #[error("invalid file descriptor {fd}")]
    InvalidFd {
        /// The descriptor given.
        fd: i32,
    },
    /// The buffer, offset or length does not meet the O_DIRECT alignment of the file.
    #[error("misaligned O_DIRECT transfer on fd {fd}: {what} must be a multiple of {align}")]
    Misaligned {
        /// The descriptor.
        fd: i32,
        /// Which value is misaligned: "buffer address", "offset" or "length".
        what: &'static str,
        /// The required alignment in bytes.
        align: u32,
    },
    /// A single transfer may move at most `i32::MAX` bytes.
    #[error(
        "transfer of {len} bytes is too long (at most {} bytes per operation)",
        i32::MAX
    )]
    TooLong {
        /// The length asked for.
        len: u64,
    },
    /// An argument is malformed (a path with an interior NUL byte, an empty iovec list, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The op table is full: `capacity` operations are outstanding.
    #[error("op table full ({capacity} operations outstanding)")]
    TableFull {
        /// The ring's capacity.
        capacity: usize,
    },
    /// No such operation: the id is stale (its completion was already taken).
    #[error("no such operation (its completion was already taken)")]
    UnknownOp,
    /// The id belongs to another ring.
    #[error("operation id belongs to another ring")]
    ForeignId,
    /// The ring has been shut down (or dropped, for a [`Handle`](crate::Handle)).
    #[error("ring is shut down")]
    Closed,
    /// The group is draining: it accepts no new operations.
    #[error("group is draining and accepts no new operations")]
    Draining,
    /// The group does not exist (any more).
    #[error("no such group")]
    NoSuchGroup,
    /// The backend in use cannot run this operation.
    #[error("operation {op} is not supported by the {backend} backend: {why}")]
    Unsupported {
        /// The operation's name.
        op: &'static str,
        /// The backend's name.
        backend: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A checkpointed op's descriptor number is open again, but on a different file
    /// than when the checkpoint was taken (re-issuing it would touch the wrong file).
    #[error("fd {fd} refers to a different file than at checkpoint time")]
    FdChanged {
        /// The descriptor number.
        fd: i32,
    },
    /// A checkpointed write (or vectored write) cannot be re-issued: the checkpoint
    /// carries no data for it and no buffer was given.
    #[error("no data to re-issue checkpointed op with user data {user_data}")]
    MissingData {
        /// The op's user data.
        user_data: u64,
    },
    /// A checkpoint could not be encoded or decoded.
    #[error("checkpoint encoding: {0}")]
    Encoding(String),
    /// A system call made while setting up or driving the ring failed.
    #[error("{context}: {source}")]
    Io {
        /// What quell was doing.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        Error::Io { context, source }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::InvalidFd { .. } => return std::io::Error::from_raw_os_error(libc::EBADF),
            Error::Io { source, .. } => source.kind(),
            Error::TableFull { .. } => std::io::ErrorKind::WouldBlock,
            Error::Closed => std::io::ErrorKind::BrokenPipe,
            Error::Unsupported { .. } => std::io::ErrorKind::Unsupported,
            _ => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e)
    }
}

/// A refused submission: the reason, and the operation handed back untouched, so its
/// buffer is never lost (contract items I1 and I10).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// let err = ring.submit(quell::Op::read_at(-1, 0, vec![0u8; 16])).unwrap_err();
/// assert!(matches!(err.error(), quell::Error::InvalidFd { fd: -1 }));
/// let buf = err.into_op().into_buf().unwrap();
/// assert_eq!(buf.len(), 16);
/// # Ok(()) }
/// ```
pub struct SubmitError {
    // Boxed: the refusal path is cold, and a small `Result` keeps `submit` fast.
    inner: Box<(Error, Op)>,
}

impl SubmitError {
    pub(crate) fn new(error: Error, op: Op) -> Self {
        SubmitError {
            inner: Box::new((error, op)),
        }
    }

    /// Why the submission was refused.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().capacity(1).build()?;
    /// let pending = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// // The one slot is taken: the next op is refused, not queued.
    /// let err = ring.submit(quell::Op::nop()).unwrap_err();
    /// assert!(matches!(err.error(), quell::Error::TableFull { capacity: 1 }));
    /// ring.cancel(pending)?;
    /// ring.wait_for(pending)?;
    /// # Ok(()) }
    /// ```
    pub fn error(&self) -> &Error {
        &self.inner.0
    }

    /// The operation, with its buffer, as it was given.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// let err = ring.submit(quell::Op::read_at(-1, 0, vec![0u8; 4])).unwrap_err();
    /// // The refused op comes back whole: reuse its buffer for a read that works.
    /// let buf = err.into_op().into_buf().unwrap();
    /// let id = ring.submit(quell::Op::read_at(file.as_raw_fd(), 0, buf))?;
    /// assert_eq!(ring.wait_for(id)?.data(), b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn into_op(self) -> Op {
        self.inner.1
    }

    /// Splits into the reason and the operation.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let err = ring.submit(quell::Op::write(-1, b"lost?".to_vec()).user_data(9)).unwrap_err();
    /// let (why, op) = err.into_parts();
    /// assert!(matches!(why, quell::Error::InvalidFd { fd: -1 }));
    /// assert_eq!(op.kind(), quell::OpKind::Write);
    /// assert_eq!(op.into_buf().unwrap(), b"lost?");
    /// # Ok(()) }
    /// ```
    pub fn into_parts(self) -> (Error, Op) {
        let (e, op) = *self.inner;
        (e, op)
    }
}

impl fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("error", &self.inner.0)
            .field("op", &self.inner.1.name())
            .finish()
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused: {}", self.inner.1.name(), self.inner.0)
    }
}

impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner.0)
    }
}

impl From<SubmitError> for std::io::Error {
    fn from(e: SubmitError) -> Self {
        e.into_parts().0.into()
    }
}
