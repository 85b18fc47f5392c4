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
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// The whole single buffer (read, write, send, recv), if the op had one.
    pub fn buf(&self) -> Option<&[u8]> {
        match &*self.payload {
            Payload::Buf(v) => Some(v),
            Payload::Aligned(a) => Some(a),
            _ => None,
        }
    }

    /// The bytes actually transferred: the first `outcome.transferred()` bytes of the
    /// buffer (empty when the op had no single buffer).
    pub fn data(&self) -> &[u8] {
        let n = self.outcome.transferred();
        match self.buf() {
            Some(b) => &b[..n.min(b.len())],
            None => &[],
        }
    }

    /// Takes the single buffer back.
    pub fn into_buf(self) -> Option<Vec<u8>> {
        match self.payload.into_inner() {
            Payload::Buf(v) => Some(v),
            _ => None,
        }
    }

    /// Takes the aligned buffer back (ops built with `read_aligned`/`write_aligned`).
    pub fn into_aligned(self) -> Option<AlignedBuf> {
        match self.payload.into_inner() {
            Payload::Aligned(v) => Some(v),
            _ => None,
        }
    }

    /// Takes the buffers of a vectored op back.
    pub fn into_bufs(self) -> Option<Vec<Vec<u8>>> {
        match self.payload.into_inner() {
            Payload::Bufs(v) => Some(v.bufs),
            _ => None,
        }
    }

    /// The buffers of a vectored op.
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
    pub fn into_steps(self) -> Option<Vec<crate::StepResult>> {
        match self.payload.into_inner() {
            Payload::Chain(s) => Some(*s),
            _ => None,
        }
    }

    /// The result of a `statx` op that finished.
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
