//! The record an operation yields when it ends.

use crate::buf::AlignedBuf;
use crate::id::OpId;
use crate::op::{OpKind, Payload};
use crate::outcome::Outcome;
use std::fmt;

/// The one record an accepted operation yields (contract item I1): its id, user data,
/// honest outcome, and the memory it owned, handed back.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 64]))?;
/// std::io::Write::write_all(&mut &w, b"hello")?;
/// let c = ring.wait_for(id)?;
/// assert_eq!(c.outcome, quell::Outcome::Done(5));
/// assert_eq!(c.data(), b"hello");
/// let buf: Vec<u8> = c.into_buf().unwrap();
/// assert_eq!(buf.len(), 64);
/// # Ok(()) }
/// ```
pub struct Completion {
    /// The operation's id.
    pub id: OpId,
    /// The user data given at submission.
    pub user_data: u64,
    /// What happened.
    pub outcome: Outcome,
    pub(crate) kind: OpKind,
    pub(crate) payload: Held,
}

/// A completion's payload. Most completions carry none (NOPs, polls, closes) or hand
/// theirs back to the caller, so dropping one is usually a no-op: this wrapper tests for
/// that inline and calls the payload's drop glue (a call into a large match) only when
/// something is left to free.
#[derive(Default)]
pub(crate) struct Held(std::mem::ManuallyDrop<Payload>);

impl Held {
    /// Takes the payload out, leaving nothing to drop.
    #[inline]
    pub(crate) fn into_inner(mut self) -> Payload {
        std::mem::take(&mut *self.0)
    }
}

impl From<Payload> for Held {
    #[inline]
    fn from(p: Payload) -> Held {
        Held(std::mem::ManuallyDrop::new(p))
    }
}

impl std::ops::Deref for Held {
    type Target = Payload;
    #[inline]
    fn deref(&self) -> &Payload {
        &self.0
    }
}

impl std::ops::DerefMut for Held {
    #[inline]
    fn deref_mut(&mut self) -> &mut Payload {
        &mut self.0
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        if !matches!(*self.0, Payload::None) {
            drop_payload(std::mem::take(&mut *self.0));
        }
    }
}

#[inline(never)]
fn drop_payload(p: Payload) {
    drop(p);
}

impl Completion {
    /// The operation's kind (for a chain: the kind of the step that ended it).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::timeout(Duration::from_millis(1)))?;
    /// ring.submit(quell::Op::nop())?;
    /// ring.wait(2, None)?;
    /// let mut kinds: Vec<_> = ring.completions().map(|c| c.kind()).collect();
    /// kinds.sort_by_key(|k| k.name());
    /// assert_eq!(kinds, [quell::OpKind::Nop, quell::OpKind::Timeout]);
    /// # Ok(()) }
    /// ```
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// The whole single buffer (read, write, send, recv), if the op had one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![b'.'; 6]))?;
    /// std::io::Write::write_all(&mut &w, b"hi")?;
    /// let c = ring.wait_for(id)?;
    /// // The whole buffer, beyond the bytes that were read.
    /// assert_eq!(c.buf(), Some(&b"hi...."[..]));
    /// # Ok(()) }
    /// ```
    pub fn buf(&self) -> Option<&[u8]> {
        match &*self.payload {
            Payload::Buf(v) => Some(v),
            Payload::Aligned(a) => Some(a),
            _ => None,
        }
    }

    /// The bytes actually transferred: the first `outcome.transferred()` bytes of the
    /// buffer (empty when the op had no single buffer).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read_at(file.as_raw_fd(), 1, vec![0u8; 3]))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.data(), b"ELF");
    /// # Ok(()) }
    /// ```
    pub fn data(&self) -> &[u8] {
        let n = self.outcome.transferred();
        match self.buf() {
            Some(b) => &b[..n.min(b.len())],
            None => &[],
        }
    }

    /// Takes the single buffer back.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::write(a.as_raw_fd(), b"abc".to_vec()))?;
    /// // A written buffer comes back for reuse.
    /// let mut buf = ring.wait_for(id)?.into_buf().unwrap();
    /// buf.clear();
    /// std::io::Read::read_to_end(&mut std::io::Read::take(&b, 3), &mut buf)?;
    /// assert_eq!(buf, b"abc");
    /// # Ok(()) }
    /// ```
    pub fn into_buf(self) -> Option<Vec<u8>> {
        match self.payload.into_inner() {
            Payload::Buf(v) => Some(v),
            _ => None,
        }
    }

    /// Takes the aligned buffer back (ops built with `read_aligned`/`write_aligned`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// let buf = quell::AlignedBuf::new(4096, 4096).unwrap();
    /// let id = ring.submit(quell::Op::read_aligned(file.as_raw_fd(), 0, buf))?;
    /// let c = ring.wait_for(id)?;
    /// let back = c.into_aligned().unwrap();
    /// assert_eq!(back.align(), 4096);
    /// assert_eq!(&back[..4], b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn into_aligned(self) -> Option<AlignedBuf> {
        match self.payload.into_inner() {
            Payload::Aligned(v) => Some(v),
            _ => None,
        }
    }

    /// Takes the buffers of a vectored op back.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::readv_at(file.as_raw_fd(), 0, vec![vec![0u8; 1], vec![0u8; 3]]))?;
    /// let bufs = ring.wait_for(id)?.into_bufs().unwrap();
    /// assert_eq!(bufs, [b"\x7f".to_vec(), b"ELF".to_vec()]);
    /// # Ok(()) }
    /// ```
    pub fn into_bufs(self) -> Option<Vec<Vec<u8>>> {
        match self.payload.into_inner() {
            Payload::Bufs(v) => Some(v.bufs),
            _ => None,
        }
    }

    /// The buffers of a vectored op.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::readv_at(file.as_raw_fd(), 1, vec![vec![0u8; 2], vec![0u8; 1]]))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, quell::Outcome::Done(3));
    /// assert_eq!(c.bufs().unwrap()[0], b"EL");
    /// assert_eq!(c.bufs().unwrap()[1], b"F");
    /// assert!(c.buf().is_none()); // a vectored op has no single buffer
    /// # Ok(()) }
    /// ```
    pub fn bufs(&self) -> Option<&[Vec<u8>]> {
        match &*self.payload {
            Payload::Bufs(v) => Some(&v.bufs),
            _ => None,
        }
    }

    /// The steps of a [`Chain`](crate::Chain), each with its outcome (`None`: it never
    /// ran) and buffer; `None` for an op that is not a chain.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op, Outcome};
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit_chain(Chain::new().then(Op::nop()).then(Op::nop()))?;
    /// let c = ring.wait_for(id)?;
    /// let outcomes: Vec<_> = c.steps().unwrap().iter().map(|s| s.outcome()).collect();
    /// assert_eq!(outcomes, [Some(Outcome::Done(0)), Some(Outcome::Done(0))]);
    /// # Ok(()) }
    /// ```
    pub fn steps(&self) -> Option<&[crate::StepResult]> {
        match &*self.payload {
            Payload::Chain(s) => Some(s),
            _ => None,
        }
    }

    /// Takes the steps of a [`Chain`](crate::Chain) back, buffers included.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op};
    /// let mut ring = quell::Ring::new()?;
    /// let chain = Chain::new()
    ///     .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
    ///     .then(Op::read_at(Chain::OPENED, 0, vec![0u8; 4]))
    ///     .then(Op::close(Chain::OPENED));
    /// let id = ring.submit_chain(chain)?;
    /// let mut steps = ring.wait_for(id)?.into_steps().unwrap();
    /// // The read's buffer is handed back with its step.
    /// assert_eq!(steps.remove(1).into_buf().unwrap(), b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn into_steps(self) -> Option<Vec<crate::StepResult>> {
        match self.payload.into_inner() {
            Payload::Chain(s) => Some(*s),
            _ => None,
        }
    }

    /// The result of a `statx` op that finished.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let len = std::fs::metadata("/proc/self/exe")?.len();
    /// let mut ring = quell::Ring::new()?;
    /// let op = quell::Op::statx(libc::AT_FDCWD, "/proc/self/exe", 0, libc::STATX_SIZE);
    /// let id = ring.submit(op)?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.statx().unwrap().stx_size, len);
    /// # Ok(()) }
    /// ```
    pub fn statx(&self) -> Option<&libc::statx> {
        match (&*self.payload, self.outcome) {
            (Payload::Statx(s), Outcome::Done(_)) => Some(&s.stx),
            _ => None,
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("id", &self.id)
            .field("user_data", &self.user_data)
            .field("kind", &self.kind)
            .field("outcome", &self.outcome)
            .finish()
    }
}
