//! Chains: ops run one after another as one op (open → read → close), sharing one
//! cancel flag, deadline and group (contract item I6).
//!
//! A chain occupies one slot of the op table. The slot holds the step now queued or
//! running; the steps still to come and the results of finished ones live in a
//! [`ChainState`] beside the table. When a step finishes, the ring asks this module
//! what comes next: the following step (loaded into the same slot and queued at the
//! front, so it rides in the same `io_uring_enter` as the ring's wait), or the chain's
//! one completion.
//!
//! **Two ways to run the steps.** On io_uring, a chain the kernel can sequence (plain
//! transfers, fsync, fallocate, at most one open that the chain closes itself, nothing
//! on FUSE/NFS files) goes to the kernel as one batch of linked SQEs, the open into a
//! direct descriptor: see `chain_link.rs` for the rules, the hard-linked close and the
//! cancel that follows the running step. Every other chain, and every chain on the
//! portable backend (or with [`Builder::link_chains(false)`](crate::Builder::link_chains)),
//! is sequenced in user space as described above: a step's result decides the next
//! step, which rides in the same `io_uring_enter` as the ring's wait (one enter per
//! step for a lone chain). Sequencing is what a chain needs when quell must look at
//! the opened file (to classify it, I5) or when the step on a FUSE file must run on
//! quell's pool (io_uring mis-reports short FUSE reads, see `backend/uring.rs`), and
//! it is the stricter about cancel: a step not started is certainly never started,
//! where a linked step may start in the kernel while the cancel of the step before
//! it is under way (its outcome then says what it did).
//!
//! **Cancel and failure.** Canceling the chain (by id, group, fd, deadline, shutdown)
//! cancels the running step and every later one. A step that fails does the same. In
//! both cases every descriptor the chain opened and has not closed yet is still
//! closed: by the chain's own close step for it when it has one, or by a close the
//! chain adds. Each descriptor gets one such close, never retried: a close refused or
//! failed (`EBADF`: the number was closed behind the ring's back) is reported in its
//! step, and the chain then completes. Close steps are shielded from the chain's
//! cancel flag (canceling a close could only leak the descriptor); a cancel that finds
//! one running stops the steps after it.
//! A chain step past its deadline is never detached: the step is asked to stop and the
//! chain waits for it (a Bounded step ends in finite time), so the cleanup can run.
//!
//! **Descriptor identity (I12).** A chain is accepted at once, but its later steps reach
//! the backend only after the earlier ones end, and a linked step's descriptor is
//! resolved by the kernel when it issues that step, not when the batch is submitted
//! (measured on 6.18). So at submission the chain takes a duplicate ([`Anchor`]) of
//! every descriptor number its steps name, and every step acts on the duplicate: on the
//! file the number named when the chain was accepted, even if the number is closed
//! (through quell or with an ordinary `drop(File)`) and reused meanwhile. A step whose
//! number named no file at acceptance fails with `EBADF` when its turn comes. A
//! sequenced chain also duplicates each descriptor it opens, and the steps on
//! [`Chain::OPENED`] use that duplicate. Before a close of a number (the chain's own
//! close of what it opened, the close it adds when it stops, or a close step on a
//! number it was given), the chain checks that the number still names the file the
//! chain holds (`kcmp`): if it does, the number is closed; if it names another file, or
//! none, it is left alone and the step reports `EBADF`, and the chain still closes its
//! own file (its duplicate). The check and the close are two system calls apart: a
//! number another thread closes and reuses exactly between them is not caught (only a
//! descriptor no number reaches, as a linked chain's direct descriptor, closes that
//! window). A chain that keeps its descriptor for the caller hands the number over
//! only if it still names what the chain opened; otherwise it fails with `EBADF` and
//! closes what it opened. The duplicates are closed when the chain ends (those of
//! FUSE/NFS files on a closer thread: a close there flushes to the server). Chains are
//! not the hot path: this costs one `fcntl` per descriptor at submission and per open,
//! and a `kcmp` and one more `close` per close of an opened file (about 2 µs per
//! sequenced open → close chain here; linked chains on `Chain::OPENED` pay nothing).

#[path = "chain_link.rs"]
mod link;

use crate::error::Error;
use crate::group::GroupId;
use crate::op::{Op, OpKind, Payload};
use crate::outcome::{Errno, Outcome};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// A sequence of ops run one after another as one op: one id, one completion, one
/// cancel flag, one deadline, one group.
///
/// A step may use [`Chain::OPENED`] as its descriptor: the one returned by the
/// latest open step before it. The steps' own user data, group and deadline are
/// ignored; the chain's apply.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use quell::{Chain, Op, Outcome};
/// let mut ring = quell::Ring::new()?;
/// let chain = Chain::new()
///     .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
///     .then(Op::read_at(Chain::OPENED, 0, vec![0u8; 4]))
///     .then(Op::close(Chain::OPENED))
///     .user_data(7);
/// let id = ring.submit_chain(chain)?;
/// let c = ring.wait_for(id)?;
/// assert_eq!(c.user_data, 7);
/// assert_eq!(c.outcome, Outcome::Done(4)); // bytes moved by the chain's transfers
/// let steps = c.into_steps().unwrap();
/// assert_eq!(steps[1].data(), b"\x7fELF");
/// assert_eq!(steps[2].outcome(), Some(Outcome::Done(0)));
/// # Ok(()) }
/// ```
pub struct Chain {
    pub(crate) steps: Vec<Op>,
    pub(crate) user_data: u64,
    pub(crate) group: Option<GroupId>,
    pub(crate) deadline: Option<Instant>,
}

impl Chain {
    /// The descriptor placeholder for "the descriptor the latest open step returned".
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op, Outcome};
    /// let path = std::env::temp_dir().join(format!("quell-doc-opened-{}", std::process::id()));
    /// let mut ring = quell::Ring::new()?;
    /// // Create, write, sync and close a file without ever seeing its descriptor.
    /// let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    /// let chain = Chain::new()
    ///     .then(Op::openat(libc::AT_FDCWD, &path, flags, 0o600))
    ///     .then(Op::write_at(Chain::OPENED, 0, b"quell".to_vec()))
    ///     .then(Op::fsync(Chain::OPENED))
    ///     .then(Op::close(Chain::OPENED));
    /// let id = ring.submit_chain(chain)?;
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::Done(5));
    /// assert_eq!(std::fs::read(&path)?, b"quell");
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub const OPENED: RawFd = -0x0c4a_1000;

    /// An empty chain.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let chain = quell::Chain::new();
    /// assert!(chain.is_empty());
    /// // A chain needs at least one step.
    /// let err = ring.submit_chain(chain).unwrap_err();
    /// assert!(matches!(err.error(), quell::Error::InvalidArgument(_)));
    /// # Ok(()) }
    /// ```
    pub fn new() -> Chain {
        Chain {
            steps: Vec::new(),
            user_data: 0,
            group: None,
            deadline: None,
        }
    }

    /// Appends a step.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op};
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit_chain(
    ///     Chain::new()
    ///         .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
    ///         .then(Op::read_at(Chain::OPENED, 1, vec![0u8; 3]))
    ///         .then(Op::close(Chain::OPENED)),
    /// )?;
    /// let c = ring.wait_for(id)?;
    /// // Steps ran in the order they were appended.
    /// let kinds: Vec<_> = c.steps().unwrap().iter().map(|s| s.kind().name()).collect();
    /// assert_eq!(kinds, ["openat", "read", "close"]);
    /// assert_eq!(c.steps().unwrap()[1].data(), b"ELF");
    /// # Ok(()) }
    /// ```
    pub fn then(mut self, op: Op) -> Chain {
        self.steps.push(op);
        self
    }

    /// Sets the user data carried back in the chain's completion.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op};
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit_chain(Chain::new().then(Op::nop()).user_data(1))?;
    /// ring.submit_chain(Chain::new().then(Op::nop()).then(Op::nop()).user_data(2))?;
    /// ring.wait(2, None)?;
    /// // One completion per chain, told apart by the chain's user data.
    /// let mut tags: Vec<u64> = ring.completions().map(|c| c.user_data).collect();
    /// tags.sort();
    /// assert_eq!(tags, [1, 2]);
    /// # Ok(()) }
    /// ```
    pub fn user_data(mut self, user_data: u64) -> Chain {
        self.user_data = user_data;
        self
    }

    /// Submits the chain into `group` instead of the ring's root group.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{Chain, GroupId, GroupOptions, Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default().name("session"))?;
    /// let id = ring.submit_chain(
    ///     Chain::new().then(Op::read(r.as_raw_fd(), vec![0; 8])).then(Op::nop()).group(g),
    /// )?;
    /// // Canceling the group reaches the chain's running step and stops the rest.
    /// assert_eq!(ring.cancel_group(g)?, 1);
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
    /// assert_eq!(c.steps().unwrap()[1].outcome(), None);
    /// # Ok(()) }
    /// ```
    pub fn group(mut self, group: GroupId) -> Chain {
        self.group = Some(group);
        self
    }

    /// Gives the whole chain one absolute deadline.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::{Duration, Instant};
    /// use quell::{Chain, Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let chain = Chain::new()
    ///     .then(Op::read(r.as_raw_fd(), vec![0; 8])) // never gets data
    ///     .then(Op::nop())
    ///     .deadline(Instant::now() + Duration::from_millis(20));
    /// let id = ring.submit_chain(chain)?;
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::TimedOut { transferred: 0 });
    /// # Ok(()) }
    /// ```
    pub fn deadline(mut self, deadline: Instant) -> Chain {
        self.deadline = Some(deadline);
        self
    }

    /// Number of steps.
    ///
    /// ```
    /// use quell::{Chain, Op};
    /// let chain = Chain::new().then(Op::nop()).then(Op::nop());
    /// assert_eq!(chain.len(), 2);
    /// assert_eq!(chain.then(Op::nop()).len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the chain has no step.
    ///
    /// ```
    /// use quell::{Chain, Op};
    /// assert!(Chain::new().is_empty());
    /// assert!(!Chain::new().then(Op::nop()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Takes the steps back (their buffers with them).
    ///
    /// ```
    /// use quell::{Chain, Op};
    /// let chain = Chain::new()
    ///     .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
    ///     .then(Op::read_at(Chain::OPENED, 0, vec![0u8; 512]));
    /// // Changed our mind before submitting: the buffers come back with the ops.
    /// let mut ops = chain.into_ops();
    /// let buf = ops.pop().unwrap().into_buf().unwrap();
    /// assert_eq!(buf.len(), 512);
    /// assert_eq!(ops[0].kind(), quell::OpKind::OpenAt);
    /// ```
    pub fn into_ops(self) -> Vec<Op> {
        self.steps
    }

    /// Checks the placeholders: every use of [`Chain::OPENED`] follows an open step.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.steps.is_empty() {
            return Err(Error::InvalidArgument("a chain needs at least one step"));
        }
        let mut opened = false;
        for op in &self.steps {
            let d = &op.desc;
            if (d.fd == Chain::OPENED || d.fd2 == Chain::OPENED) && !opened {
                return Err(Error::InvalidArgument(
                    "a chain step uses Chain::OPENED before any open step",
                ));
            }
            opened |= d.kind == OpKind::OpenAt;
        }
        Ok(())
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("steps", &self.steps)
            .field("user_data", &self.user_data)
            .finish_non_exhaustive()
    }
}

/// A refused chain: the reason, and the whole chain handed back (every buffer with it).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use quell::{Chain, Op};
/// let mut ring = quell::Ring::new()?;
/// let err = ring
///     .submit_chain(Chain::new().then(Op::read(Chain::OPENED, vec![0; 8])))
///     .unwrap_err();
/// assert!(matches!(err.error(), quell::Error::InvalidArgument(_)));
/// let ops = err.into_chain().into_ops();
/// assert_eq!(ops.len(), 1);
/// # Ok(()) }
/// ```
pub struct ChainError {
    inner: Box<(Error, Chain)>,
}

impl ChainError {
    pub(crate) fn new(error: Error, chain: Chain) -> ChainError {
        ChainError {
            inner: Box::new((error, chain)),
        }
    }

    /// Why the chain was refused.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op};
    /// let mut ring = quell::Ring::new()?;
    /// ring.shutdown();
    /// let err = ring.submit_chain(Chain::new().then(Op::nop())).unwrap_err();
    /// assert!(matches!(err.error(), quell::Error::Closed));
    /// # Ok(()) }
    /// ```
    pub fn error(&self) -> &Error {
        &self.inner.0
    }

    /// The chain, untouched.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op};
    /// let mut ring = quell::Ring::new()?;
    /// // The close comes before any open: refused, and nothing ran.
    /// let bad = Chain::new().then(Op::close(Chain::OPENED)).then(Op::nop());
    /// let refused = ring.submit_chain(bad).unwrap_err().into_chain();
    /// assert_eq!(refused.len(), 2);
    /// // Repair it from the steps handed back and submit again.
    /// let mut ops = refused.into_ops();
    /// let fixed = Chain::new()
    ///     .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
    ///     .then(ops.remove(0));
    /// let id = ring.submit_chain(fixed)?;
    /// assert!(ring.wait_for(id)?.outcome.is_done());
    /// # Ok(()) }
    /// ```
    pub fn into_chain(self) -> Chain {
        self.inner.1
    }

    /// Both.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op};
    /// let mut ring = quell::Ring::new()?;
    /// let chain = Chain::new().then(Op::write(Chain::OPENED, b"data".to_vec()));
    /// let (why, chain) = ring.submit_chain(chain).unwrap_err().into_parts();
    /// assert!(why.to_string().contains("Chain::OPENED"));
    /// assert_eq!(chain.into_ops().remove(0).into_buf().unwrap(), b"data");
    /// # Ok(()) }
    /// ```
    pub fn into_parts(self) -> (Error, Chain) {
        let (e, c) = *self.inner;
        (e, c)
    }
}

impl fmt::Debug for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainError")
            .field("error", &self.inner.0)
            .field("steps", &self.inner.1.len())
            .finish()
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain refused: {}", self.inner.0)
    }
}

impl std::error::Error for ChainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner.0)
    }
}

/// What one step of a finished chain did, with the memory it owned.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use quell::{Chain, Op, OpKind, Outcome};
/// let mut ring = quell::Ring::new()?;
/// let chain = Chain::new()
///     .then(Op::openat(libc::AT_FDCWD, "/nonexistent/quell", libc::O_RDONLY, 0))
///     .then(Op::read(Chain::OPENED, vec![0; 8]));
/// let id = ring.submit_chain(chain)?;
/// let c = ring.wait_for(id)?;
/// assert_eq!(c.outcome, Outcome::Failed(quell::Errno::NOENT));
/// let steps = c.into_steps().unwrap();
/// assert_eq!(steps[0].kind(), OpKind::OpenAt);
/// assert_eq!(steps[1].outcome(), None); // never ran
/// assert_eq!(steps[1].buf().map(|b| b.len()), Some(8)); // its buffer came back
/// # Ok(()) }
/// ```
pub struct StepResult {
    kind: OpKind,
    outcome: Option<Outcome>,
    /// Whether the chain added this step to close a descriptor it opened.
    added: bool,
    payload: Payload,
}

impl StepResult {
    /// The step's kind.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op, OpKind};
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit_chain(Chain::new().then(Op::nop()).then(Op::fsync(-1)))?;
    /// let c = ring.wait_for(id)?;
    /// // Find which step failed the chain.
    /// let failed = c.steps().unwrap().iter().find(|s| !s.outcome().is_some_and(|o| o.is_done()));
    /// assert_eq!(failed.unwrap().kind(), OpKind::Fsync);
    /// # Ok(()) }
    /// ```
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// What the step did; `None` if it never ran (an earlier step failed or the chain
    /// was canceled before it).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Errno, Op, Outcome};
    /// let mut ring = quell::Ring::new()?;
    /// // The first step is checked at submission; a later bad one fails when it runs.
    /// let chain = Chain::new().then(Op::nop()).then(Op::fsync(-1)).then(Op::nop());
    /// let id = ring.submit_chain(chain)?;
    /// let c = ring.wait_for(id)?;
    /// let steps = c.steps().unwrap();
    /// assert_eq!(steps[0].outcome(), Some(Outcome::Done(0)));
    /// assert_eq!(steps[1].outcome(), Some(Outcome::Failed(Errno::BADF)));
    /// assert_eq!(steps[2].outcome(), None); // the failure stopped the chain before it
    /// # Ok(()) }
    /// ```
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Whether the chain added this step itself: a close of a descriptor it opened,
    /// run because the chain was canceled or failed before its own close.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op, Outcome};
    /// let mut ring = quell::Ring::new()?;
    /// // A write on a read-only descriptor fails, and the chain has no close of its own.
    /// let chain = Chain::new()
    ///     .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
    ///     .then(Op::write_at(Chain::OPENED, 0, b"x".to_vec()));
    /// let id = ring.submit_chain(chain)?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF));
    /// // The chain still closed what it opened, in a step of its own.
    /// let last = c.steps().unwrap().last().unwrap();
    /// assert!(last.is_cleanup());
    /// assert_eq!(last.kind(), quell::OpKind::Close);
    /// assert_eq!(last.outcome(), Some(Outcome::Done(0)));
    /// # Ok(()) }
    /// ```
    pub fn is_cleanup(&self) -> bool {
        self.added
    }

    /// The step's single buffer, if it had one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{Chain, Op};
    /// let mut ring = quell::Ring::new()?;
    /// let chain = Chain::new()
    ///     .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
    ///     .then(Op::read_at(Chain::OPENED, 0, vec![0u8; 8]))
    ///     .then(Op::close(Chain::OPENED));
    /// let id = ring.submit_chain(chain)?;
    /// let c = ring.wait_for(id)?;
    /// let steps = c.steps().unwrap();
    /// assert_eq!(steps[1].buf().map(|b| b.len()), Some(8));
    /// assert!(steps[2].buf().is_none()); // a close owns no buffer
    /// # Ok(()) }
    /// ```
    pub fn buf(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Buf(v) => Some(v),
            Payload::Aligned(a) => Some(a),
            _ => None,
        }
    }

    /// The bytes the step transferred.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{Chain, Op};
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// // Write a request, then read the reply, as one op.
    /// let chain = Chain::new()
    ///     .then(Op::write(a.as_raw_fd(), b"ping".to_vec()))
    ///     .then(Op::read(a.as_raw_fd(), vec![0u8; 16]));
    /// let id = ring.submit_chain(chain)?;
    /// let peer = std::thread::spawn(move || -> std::io::Result<()> {
    ///     let mut req = [0u8; 4];
    ///     std::io::Read::read_exact(&mut &b, &mut req)?;
    ///     std::io::Write::write_all(&mut &b, b"pong")
    /// });
    /// let c = ring.wait_for(id)?;
    /// peer.join().unwrap()?;
    /// assert_eq!(c.steps().unwrap()[1].data(), b"pong");
    /// # Ok(()) }
    /// ```
    pub fn data(&self) -> &[u8] {
        let n = self.outcome.map_or(0, |o| o.transferred());
        match self.buf() {
            Some(b) => &b[..n.min(b.len())],
            None => &[],
        }
    }

    /// Takes the step's single buffer back.
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
    /// let steps = ring.wait_for(id)?.into_steps().unwrap();
    /// let bufs: Vec<Vec<u8>> = steps.into_iter().filter_map(|s| s.into_buf()).collect();
    /// assert_eq!(bufs, [b"\x7fELF".to_vec()]);
    /// # Ok(()) }
    /// ```
    pub fn into_buf(self) -> Option<Vec<u8>> {
        match self.payload {
            Payload::Buf(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Debug for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepResult")
            .field("kind", &self.kind)
            .field("outcome", &self.outcome)
            .field("cleanup", &self.added)
            .finish()
    }
}

/// The steps of a finished chain, carried in its completion.
pub(crate) type ChainSteps = Vec<StepResult>;

/// A step waiting to run.
pub(crate) struct Pending {
    index: usize,
    op: Op,
}

/// The next step the ring should load into the chain's slot.
pub(crate) struct Next {
    pub(crate) op: Op,
    /// A close run because the chain stopped: not reached by the chain's cancel flag.
    pub(crate) cleanup: bool,
    /// The duplicates the step acts on instead of its `fd` and `fd2` (-1: the number).
    pub(crate) map: [RawFd; 2],
    /// A close of a number, to be checked against the file the chain holds first.
    pub(crate) close: Option<CloseCheck>,
    /// The step names a number whose file is gone: it fails with this at once.
    pub(crate) refuse: Option<Errno>,
}

impl Next {
    fn step(op: Op, cleanup: bool) -> Next {
        Next {
            op,
            cleanup,
            map: [-1, -1],
            close: None,
            refuse: None,
        }
    }
}

/// A descriptor number a chain's steps name, and the duplicate taken when the chain
/// was accepted: the steps act on the duplicate, so on the file the number named then.
pub(crate) struct Anchor {
    fd: RawFd,
    /// `None`: the number named no file at acceptance, or the chain closed it.
    dup: Option<OwnedFd>,
}

/// A descriptor the chain opened (sequenced in user space).
struct Opened {
    /// The number the open returned (the caller's, if the chain hands it over).
    fd: RawFd,
    /// The chain's own duplicate: what its steps act on, and what tells whether the
    /// number still names this file. `None` only if it could not be taken.
    dup: Option<OwnedFd>,
}

/// A close of `number` that the chain checks first (see the module docs).
pub(crate) struct CloseCheck {
    pub(crate) number: RawFd,
    /// The file the chain holds for that number; `None`: close the number unchecked
    /// (a descriptor the chain just opened and could not duplicate).
    pub(crate) dup: Option<OwnedFd>,
}

/// One live chain.
pub(crate) struct ChainState {
    pending: VecDeque<Pending>,
    results: Vec<StepResult>,
    /// Index (in `results`) of the step in the slot now.
    current: usize,
    /// Descriptors opened by earlier steps and not closed yet, latest last.
    opened: Vec<Opened>,
    /// Set once the chain was canceled (`Some(timed_out)`).
    stop: Option<bool>,
    failed: Option<Errno>,
    /// The step in the slot is a cleanup close.
    cleanup: bool,
    /// The plan to give the steps to the kernel linked (io_uring; see `chain_link.rs`).
    link: Option<Box<link::Linked>>,
    /// The numbers the steps name, anchored at submission.
    anchors: Vec<Anchor>,
    /// The duplicates the step in the slot acts on instead of its numbers (-1: none).
    mapped: [RawFd; 2],
    /// The step in the slot (a checked close) reports this error whatever it does.
    verdict: Option<Errno>,
    /// The duplicate the close in the slot closes (the kernel owns it once it ran).
    closing: Option<OwnedFd>,
}

impl ChainState {
    /// Splits a checked chain into its first op (to submit) and the state of the rest.
    pub(crate) fn start(
        chain: Chain,
        link: Option<Box<link::Linked>>,
        anchors: Vec<Anchor>,
    ) -> (Op, Box<ChainState>) {
        let Chain {
            steps,
            user_data,
            group,
            deadline,
        } = chain;
        let mut results = Vec::with_capacity(steps.len());
        let mut pending = VecDeque::with_capacity(steps.len());
        for (index, op) in steps.into_iter().enumerate() {
            results.push(StepResult {
                kind: op.desc.kind,
                outcome: None,
                added: false,
                payload: Payload::None,
            });
            pending.push_back(Pending { index, op });
        }
        let mut first = pending.pop_front().expect("checked: not empty").op;
        first.user_data = user_data;
        first.group = group;
        first.deadline = deadline;
        let mut st = ChainState {
            pending,
            results,
            current: 0,
            opened: Vec::new(),
            stop: None,
            failed: None,
            cleanup: false,
            link,
            anchors,
            mapped: [-1, -1],
            verdict: None,
            closing: None,
        };
        // The first step is admitted by its numbers (which name its files now) and
        // refused whole if they name none; it acts on the anchors like every step (a
        // first close closes the number itself, see `anchors_of`).
        if first.desc.kind != OpKind::Close {
            st.mapped = st.map_fds(&first).0;
        }
        (first, Box::new(st))
    }

    /// Puts the first op back (the submission was refused) and rebuilds the chain.
    pub(crate) fn refused(self, first: Op) -> Chain {
        let mut steps = vec![first];
        steps.extend(self.pending.into_iter().map(|p| p.op));
        let (user_data, group, deadline) = (
            steps[0].user_data,
            steps[0].group.take(),
            steps[0].deadline.take(),
        );
        steps[0].user_data = 0;
        Chain {
            steps,
            user_data,
            group,
            deadline,
        }
    }

    /// Whether the step in the slot is the chain's first and it has not run yet.
    pub(crate) fn at_first_step(&self) -> bool {
        self.current == 0 && self.results[0].outcome.is_none()
    }

    /// The index (in the chain as built) of the step in the slot.
    pub(crate) fn step(&self) -> usize {
        self.current
    }

    /// Whether the step in the slot is out of the cancel flag's reach: a close (of
    /// the chain's own or added for cleanup). Canceling a close could only leak the
    /// descriptor, and a close ends in finite time.
    pub(crate) fn shielded(&self) -> bool {
        self.cleanup || self.results[self.current].kind == OpKind::Close
    }

    /// Records the end of the step in the slot. A close's descriptor left the opened
    /// set when the close was handed out: it is never retried, whatever it reports.
    pub(crate) fn record(&mut self, kind: OpKind, outcome: Outcome, payload: Payload) {
        let outcome = match self.verdict.take() {
            Some(e) => Outcome::Failed(e),
            None => outcome,
        };
        if let Some(d) = self.closing.take() {
            // The close ran: the kernel released the number (Linux frees it even when
            // the close reports an error).
            let _ = d.into_raw_fd();
        }
        let r = &mut self.results[self.current];
        r.outcome = Some(outcome);
        r.payload = payload;
        if let (OpKind::OpenAt, Outcome::Done(newfd)) = (kind, outcome) {
            self.opened.push(Opened {
                fd: newfd as RawFd,
                dup: None,
            });
        }
        match outcome {
            Outcome::Failed(e) if self.failed.is_none() && !self.cleanup => self.failed = Some(e),
            Outcome::Canceled { .. } if self.stop.is_none() => self.stop = Some(false),
            Outcome::TimedOut { .. } if self.stop.is_none() => self.stop = Some(true),
            _ => {}
        }
    }

    /// Records that the step in the slot could not even start (bad input found when
    /// its turn came, such as a descriptor that no longer exists).
    /// A close handed out is not retried: its descriptor already left the opened set.
    pub(crate) fn refuse_current(&mut self, errno: Errno, op: Op) {
        self.verdict = None;
        self.closing = None;
        let r = &mut self.results[self.current];
        r.outcome = Some(Outcome::Failed(errno));
        r.payload = op.desc.payload;
        if self.failed.is_none() && !self.cleanup {
            self.failed = Some(errno);
        }
    }

    /// Marks the chain canceled (the flag every later step shares).
    pub(crate) fn stop(&mut self, timed_out: bool) {
        if self.stop.is_none() {
            self.stop = Some(timed_out);
        }
    }

    /// Whether the chain was canceled or a step failed.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_some() || self.failed.is_some()
    }

    /// The next step to run: the next pending one while the chain goes on; once it
    /// stops, only closes of descriptors it opened (its own close steps for them
    /// first, else added ones), one per descriptor: a descriptor leaves the opened set
    /// when its close is handed out, whatever that close then reports (`EBADF`
    /// included), so cleanup always ends. `None`: the chain is over (what it opened and
    /// did not close is the caller's; a number that no longer names it is not handed
    /// over: the chain fails with `EBADF` and closes it instead).
    pub(crate) fn next(&mut self) -> Option<Next> {
        self.mapped = [-1, -1];
        if !self.stopping() {
            let Some(p) = self.pending.pop_front() else {
                if self.opened.iter().any(|o| !o.intact()) {
                    self.failed = Some(Errno::BADF);
                    return self.next();
                }
                return None;
            };
            self.current = p.index;
            let mut op = p.op;
            if op.desc.kind == OpKind::Close {
                let check = if op.desc.fd == Chain::OPENED {
                    match self.opened.pop() {
                        Some(o) => CloseCheck {
                            number: o.fd,
                            dup: o.dup,
                        },
                        // Everything opened was closed already.
                        None => return Some(self.refusing(op, Errno::BADF)),
                    }
                } else {
                    match self.anchors.iter_mut().find(|a| a.fd == op.desc.fd) {
                        Some(a) => match a.dup.take() {
                            Some(d) => CloseCheck {
                                number: a.fd,
                                dup: Some(d),
                            },
                            None => return Some(self.refusing(op, Errno::BADF)),
                        },
                        // Not a descriptor (admission refuses it).
                        None => {
                            return Some(Next::step(op, false));
                        }
                    }
                };
                op.desc.fd = check.number;
                return Some(Next {
                    close: Some(check),
                    ..Next::step(op, false)
                });
            }
            let (map, refuse) = self.map_fds(&op);
            let latest = self.opened.last().map_or(-1, |o| o.fd);
            if op.desc.fd == Chain::OPENED {
                op.desc.fd = latest;
            }
            if op.desc.fd2 == Chain::OPENED {
                op.desc.fd2 = latest;
            }
            if let Some(e) = refuse {
                return Some(self.refusing(op, e));
            }
            return Some(Next {
                map,
                ..Next::step(op, false)
            });
        }
        let o = self.opened.pop()?;
        // The chain's own close of this descriptor (the latest opened one), if it has
        // one still to run.
        let own = self
            .pending
            .iter()
            .position(|p| p.op.desc.kind == OpKind::Close && p.op.desc.fd == Chain::OPENED);
        self.cleanup = true;
        let check = CloseCheck {
            number: o.fd,
            dup: o.dup,
        };
        let mut op = if let Some(pos) = own {
            let p = self.pending.remove(pos).expect("position is valid");
            self.current = p.index;
            p.op
        } else {
            self.results.push(StepResult {
                kind: OpKind::Close,
                outcome: None,
                added: true,
                payload: Payload::None,
            });
            self.current = self.results.len() - 1;
            Op::close(check.number)
        };
        op.desc.fd = check.number;
        Some(Next {
            close: Some(check),
            ..Next::step(op, true)
        })
    }

    fn refusing(&self, op: Op, errno: Errno) -> Next {
        Next {
            refuse: Some(errno),
            ..Next::step(op, false)
        }
    }

    /// The duplicates `op` acts on instead of its numbers (-1: the number itself), and
    /// the error it fails with if a number it names named no file at acceptance.
    fn map_fds(&self, op: &Op) -> ([RawFd; 2], Option<Errno>) {
        let d = &op.desc;
        let mut map = [-1, -1];
        let mut refuse = None;
        let [a, b] = named(d.kind, d.fd, d.fd2);
        for (i, fd) in [(0, a), (1, b)] {
            let Some(fd) = fd else { continue };
            match self.anchors.iter().find(|x| x.fd == fd) {
                Some(Anchor { dup: Some(dup), .. }) => map[i] = dup.as_raw_fd(),
                Some(Anchor { dup: None, .. }) => refuse = Some(Errno::BADF),
                None => {}
            }
        }
        let opened = self.opened.last().and_then(|o| o.dup.as_ref());
        if let Some(dup) = opened {
            if d.fd == Chain::OPENED {
                map[0] = dup.as_raw_fd();
            }
            if d.fd2 == Chain::OPENED {
                map[1] = dup.as_raw_fd();
            }
        }
        (map, refuse)
    }

    /// Loads what `next` found into the chain for the step now in the slot.
    pub(crate) fn set_mapped(&mut self, map: [RawFd; 2]) {
        self.mapped = map;
    }

    /// Points `raw` (the step in the slot) at the duplicates it acts on.
    #[inline]
    pub(crate) fn apply(&self, raw: &mut crate::op::RawOp) {
        if self.mapped[0] >= 0 {
            raw.fd = self.mapped[0];
            // The chain's own duplicate: nobody else can close or reuse it while the
            // step lives, so the backend need not check or pin its identity again.
            raw.owned = raw.kind != OpKind::Close;
        }
        if self.mapped[1] >= 0 {
            raw.fd2 = self.mapped[1];
        }
    }

    /// Duplicates the descriptor the open step just returned, so the later steps act on
    /// it and the chain can tell whether its number still names it. `Err(errno)`: no
    /// duplicate could be taken (the chain fails with it and closes the number).
    pub(crate) fn hold_opened(&mut self) -> Result<(), Errno> {
        let Some(o) = self.opened.last_mut() else {
            return Ok(());
        };
        // Above the number where there is room: "the lowest descriptor on the file"
        // stays the one the open returned, the one the caller sees.
        let dup = crate::descriptor::dup_fd(o.fd, o.fd.saturating_add(1))
            .or_else(|_| crate::descriptor::dup_fd(o.fd, 0));
        match dup {
            Ok(d) => {
                o.dup = Some(d);
                Ok(())
            }
            Err(e) => {
                let e = Errno::from_raw_os_error(e);
                if self.failed.is_none() {
                    self.failed = Some(e);
                }
                Err(e)
            }
        }
    }

    /// The step in the slot is a checked close that reports `errno` whatever its
    /// close of the chain's duplicate `closing` does.
    pub(crate) fn set_close(&mut self, verdict: Option<Errno>, closing: Option<OwnedFd>) {
        self.verdict = verdict;
        self.closing = closing;
    }

    /// Every duplicate the chain still holds (its end), for the ring to close.
    pub(crate) fn take_dups(&mut self) -> Vec<OwnedFd> {
        let mut v: Vec<OwnedFd> = self.anchors.drain(..).filter_map(|a| a.dup).collect();
        v.extend(self.opened.drain(..).filter_map(|o| o.dup));
        v.extend(self.closing.take());
        v
    }

    /// Leaks every duplicate: the ring gave up on the chain while a step may still
    /// use one (a number closed under it could be reused and redirect the step).
    pub(crate) fn forget_dups(&mut self) {
        for d in self.take_dups() {
            let _ = d.into_raw_fd();
        }
    }

    /// Ends the chain: the outcome and the steps (every buffer) for its completion.
    /// Steps that never ran keep their buffers.
    pub(crate) fn finish(mut self) -> (Outcome, Payload) {
        for p in self.pending.drain(..) {
            self.results[p.index].payload = p.op.desc.payload;
        }
        let total: usize = self
            .results
            .iter()
            .filter(|r| r.kind.is_transfer())
            .filter_map(|r| r.outcome)
            .map(|o| o.transferred())
            .sum();
        let all_ran = self
            .results
            .iter()
            .all(|r| r.outcome.is_some_and(|o| o.is_done()));
        let outcome = if let Some(e) = self.failed {
            Outcome::Failed(e)
        } else if all_ran && !self.results.iter().any(|r| r.added) {
            // A cancel that came after every step had finished changed nothing.
            Outcome::Done(total)
        } else if self.stop == Some(true) {
            Outcome::TimedOut { transferred: total }
        } else {
            Outcome::Canceled { transferred: total }
        };
        (outcome, Payload::Chain(Box::new(self.results)))
    }
}

impl Opened {
    /// Whether the number still names the file the chain opened.
    fn intact(&self) -> bool {
        self.dup.as_ref().map_or(true, |d| {
            crate::descriptor::same_file(self.fd, d.as_raw_fd())
        })
    }
}

/// The descriptor numbers of a step that name files it acts on (a close's too: the
/// chain checks it still names the file before closing it). Not `AT_FDCWD`, not
/// [`Chain::OPENED`], not unused slots.
fn named(kind: OpKind, fd: RawFd, fd2: RawFd) -> [Option<RawFd>; 2] {
    match kind {
        OpKind::Nop | OpKind::Timeout | OpKind::Blocking => [None, None],
        OpKind::Splice | OpKind::RenameAt => [(fd >= 0).then_some(fd), (fd2 >= 0).then_some(fd2)],
        _ => [(fd >= 0).then_some(fd), None],
    }
}

/// Anchors every number `chain`'s steps name (see the module docs). A number that
/// names no file gets an empty anchor (its steps fail with `EBADF`); any other error
/// (`EMFILE`) refuses the chain.
pub(crate) fn anchors_of(chain: &Chain) -> Result<Vec<Anchor>, Error> {
    let mut v: Vec<Anchor> = Vec::new();
    if let Some(first) = chain
        .steps
        .first()
        .filter(|op| op.desc.kind == OpKind::Close)
    {
        // A first step that closes a number goes out now, as a plain close does; the
        // steps after it that name the number find it closed.
        if first.desc.fd >= 0 {
            v.push(Anchor {
                fd: first.desc.fd,
                dup: None,
            });
        }
    }
    for (i, op) in chain.steps.iter().enumerate() {
        let d = &op.desc;
        if i == 0 && d.kind == OpKind::Close {
            continue;
        }
        for fd in named(d.kind, d.fd, d.fd2).into_iter().flatten() {
            if v.iter().any(|a| a.fd == fd) {
                continue;
            }
            let dup = match crate::descriptor::dup_fd(fd, 0) {
                Ok(dup) => Some(dup),
                Err(libc::EBADF) => None,
                Err(e) => {
                    return Err(Error::io(
                        "duplicating a chain's descriptor",
                        std::io::Error::from_raw_os_error(e),
                    ))
                }
            };
            v.push(Anchor { fd, dup });
        }
    }
    Ok(v)
}

/// The live chains of a ring, by slot.
#[derive(Default)]
pub(crate) struct Chains {
    live: HashMap<u32, Box<ChainState>>,
    /// File systems of the paths linked chains opened.
    fs: link::FsClasses,
}

impl Chains {
    pub(crate) fn insert(&mut self, slot: u32, st: Box<ChainState>) {
        self.live.insert(slot, st);
    }

    pub(crate) fn get(&mut self, slot: u32) -> &mut ChainState {
        self.live
            .get_mut(&slot)
            .expect("a slot flagged F_CHAIN has chain state")
    }

    pub(crate) fn peek(&self, slot: u32) -> Option<&ChainState> {
        self.live.get(&slot).map(|b| &**b)
    }

    /// Teardown gave up on ops still in flight: a linked chain's steps are the
    /// kernel's, so their memory is leaked rather than freed under it; and no chain's
    /// duplicates are closed (a step still running could find its number reused).
    pub(crate) fn leak_linked(&mut self) {
        for (_, mut st) in self.live.drain() {
            st.forget_dups();
            if st.is_linked() {
                std::mem::forget(st);
            }
        }
    }

    /// Points `raw`, the step now in chain slot `slot`, at the duplicates it acts on.
    #[inline]
    pub(crate) fn apply(&self, slot: u32, raw: &mut crate::op::RawOp) {
        if let Some(st) = self.live.get(&slot) {
            st.apply(raw);
        }
    }

    pub(crate) fn take(&mut self, slot: u32) -> Box<ChainState> {
        self.live
            .remove(&slot)
            .expect("a slot flagged F_CHAIN has chain state")
    }

    /// Chains not yet completed.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}

/// The errno a step that cannot start reports (its chain fails with it).
pub(crate) fn errno_of(e: &Error) -> Errno {
    Errno::from_raw_os_error(match e {
        Error::InvalidFd { .. } => libc::EBADF,
        Error::TooLong { .. } => libc::EFBIG,
        Error::Unsupported { .. } => libc::EOPNOTSUPP,
        Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EINVAL,
    })
}

use super::{outcome_of, Ring};
use crate::error::SubmitError;
use crate::id::{key_of, OpId};
use crate::outcome::CancelClass;
use crate::table::{SlotState, F_CANCEL, F_CANCEL_SENT, F_EXACT, F_TIMEOUT};

impl Ring {
    /// Submits a [`Chain`]: its steps run one after another as one op, with one id,
    /// one completion (outcome of the whole chain, every step's outcome and buffer in
    /// [`Completion::steps`](crate::Completion::steps)), one cancel flag, one deadline
    /// and one group (I6). Canceling it stops the running step and every later one; a
    /// failing step does the same; either way the descriptors it opened are closed,
    /// each by one close whose outcome is in the steps (a descriptor closed behind the
    /// ring's back shows `Failed(EBADF)` there; the close is not retried).
    /// On io_uring a chain the kernel can sequence goes to it as linked SQEs (counted
    /// in [`Stats::linked_chains`](crate::Stats::linked_chains)); its open step then
    /// reports `Done(0)`, the file living in a direct descriptor the chain closes.
    /// The first step is checked now (a refused chain comes back whole); a later step
    /// that turns out invalid when its turn comes fails the chain with its errno.
    ///
    /// Every step acts on the file its descriptor number named when the chain was
    /// accepted, or on the file the chain opened for [`Chain::OPENED`], even if the
    /// number is closed (through the ring or outside it) and reused by another file
    /// before the step's turn (I12): the chain holds duplicates of those files until it
    /// ends. A close step, or a close the chain adds, closes a number only if it still
    /// names the chain's file; a number reused by another file is left alone and the
    /// close reports `EBADF`. A chain that keeps its opened descriptor for the caller
    /// fails with `EBADF` (and closes what it opened) rather than hand over a number
    /// that names another file by then.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{Chain, Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit_chain(
    ///     Chain::new()
    ///         .then(Op::read(r.as_raw_fd(), vec![0; 8])) // never gets data
    ///         .then(Op::nop()),
    /// )?;
    /// ring.poll()?;
    /// ring.cancel(id)?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
    /// let steps = c.steps().unwrap();
    /// assert_eq!(steps[0].outcome(), Some(Outcome::Canceled { transferred: 0 }));
    /// assert_eq!(steps[1].outcome(), None); // never ran
    /// # Ok(()) }
    /// ```
    pub fn submit_chain(&mut self, chain: Chain) -> Result<OpId, ChainError> {
        if let Err(e) = chain.check() {
            return Err(ChainError::new(e, chain));
        }
        let anchors = match anchors_of(&chain) {
            Ok(a) => a,
            Err(e) => return Err(ChainError::new(e, chain)),
        };
        let plan = self.link_plan(&chain);
        let (first, st) = ChainState::start(chain, plan, anchors);
        let mut st = Some(st);
        self.submit_inner(first, &mut st).map_err(|e: SubmitError| {
            let (error, first) = e.into_parts();
            let st = st.expect("a refused submission keeps the chain state");
            ChainError::new(error, st.refused(first))
        })
    }

    /// The step in chain slot `idx` ended with `res`: record it and load the next
    /// step. Returns the chain's outcome when it is over (the slot then holds the
    /// steps as its payload and completes like any op).
    pub(super) fn chain_step_ended(&mut self, idx: u32, res: i64) -> Option<Outcome> {
        if let Some(outcome) = self.linked_outcome(idx) {
            return Some(outcome);
        }
        let s = self.table.slot_mut(idx);
        let asked = s.desc.request_len();
        let split = s.desc.offset != crate::op::NO_OFFSET
            && asked > self.part_size as u64
            && matches!(s.desc.kind, OpKind::Read | OpKind::Write);
        let oflags = if split {
            s.flags | crate::table::F_SPLIT
        } else {
            s.flags
        };
        let outcome = outcome_of(s.desc.kind, oflags, s.transferred, asked, res);
        let (kind, flags) = (s.desc.kind, s.flags);
        let payload = std::mem::take(&mut s.desc.payload);
        let st = self.chains.get(idx);
        st.record(kind, outcome, payload);
        if flags & F_CANCEL != 0 {
            st.stop(flags & F_TIMEOUT != 0);
        }
        if kind == OpKind::OpenAt && res >= 0 {
            // The number may have named another kind of file before.
            self.fds.forget(res as RawFd);
            if let Err(e) = self.chains.get(idx).hold_opened() {
                tracing::debug!(
                    errno = e.raw_os_error(),
                    "could not duplicate a chain's opened descriptor"
                );
            }
        }
        self.chain_advance(idx, true)
    }

    /// Cancel of a chain whose current step waits in quell's queue. `None`: a cleanup
    /// close was queued instead of completing now (or the step is a close, which runs).
    pub(super) fn chain_cancel_queued(&mut self, idx: u32, timed_out: bool) -> Option<Outcome> {
        let st = self.chains.get(idx);
        if st.shielded() {
            st.stop(timed_out); // the close runs; no later step does
            return None;
        }
        let s = self.table.slot_mut(idx);
        let transferred = s.transferred as usize;
        let kind = s.desc.kind;
        let payload = std::mem::take(&mut s.desc.payload);
        let outcome = if timed_out {
            Outcome::TimedOut { transferred }
        } else {
            Outcome::Canceled { transferred }
        };
        let st = self.chains.get(idx);
        st.record(kind, outcome, payload);
        st.stop(timed_out);
        self.chain_advance(idx, false)
    }

    /// Loads the chain's next step into its slot and queues it; or ends the chain.
    /// `from_flight`: the step that just ended was in flight (else it was queued, and
    /// the slot's key is still in the queue).
    fn chain_advance(&mut self, idx: u32, from_flight: bool) -> Option<Outcome> {
        loop {
            let Some(mut next) = self.chains.get(idx).next() else {
                let mut st = self.chains.take(idx);
                self.release_dups(&mut st, false);
                let (outcome, payload) = (*st).finish();
                self.table.slot_mut(idx).desc.payload = payload;
                return Some(outcome);
            };
            if let Some(errno) = next.refuse {
                self.chains.get(idx).refuse_current(errno, next.op);
                continue;
            }
            let class = match self.admit_mapped(&mut next.op, next.map) {
                Ok(c) => c,
                Err(e) => {
                    if let Some(dup) = next.close.take().and_then(|c| c.dup) {
                        self.release_dup(dup);
                    }
                    self.chains.get(idx).refuse_current(errno_of(&e), next.op);
                    continue;
                }
            };
            let mut class = class;
            if let Some(check) = next.close.take() {
                class = self.check_close(idx, check, class, &mut next);
            }
            self.chains.get(idx).set_mapped(next.map);
            let s = self.table.slot_mut(idx);
            let had_cancel = s.flags & F_CANCEL != 0;
            s.flags &= !(F_CANCEL | F_CANCEL_SENT | F_TIMEOUT | F_EXACT);
            if next.op.exact {
                s.flags |= F_EXACT;
            }
            debug_assert!(
                next.cleanup || !had_cancel,
                "a canceled chain only cleans up"
            );
            s.desc = next.op.desc;
            s.class = class;
            s.transferred = 0;
            if self.trace_ops {
                let step = self.chains.get(idx).step();
                self.trace_chain_step(idx, step, next.cleanup);
            }
            let s = self.table.slot_mut(idx);
            let (gidx, key) = (s.group, key_of(idx, s.gen));
            let g = self.groups.at(gidx);
            if had_cancel {
                g.stats.cancel_requested -= 1;
            }
            if from_flight {
                s.state = SlotState::Queued;
                g.stats.in_flight -= 1;
                g.stats.queued += 1;
                self.in_flight -= 1;
            }
            // A cleanup close goes out at once, even on a quiesced ring: the descriptor
            // must not outlive the chain. (From the queued path the key stays in the
            // queue, where dispatch skips it once the slot is in flight.)
            if next.cleanup && self.in_flight < self.max_in_flight && self.start_slot(idx, key) {
                return None;
            }
            if from_flight {
                // At the front: the chain was already running, it does not queue again.
                self.queue.push_front(key);
            }
            return None;
        }
    }

    /// Admits `op` as it will run: on the duplicates `map` names instead of its
    /// numbers (which may name other files by now, or none).
    fn admit_mapped(&mut self, op: &mut Op, map: [RawFd; 2]) -> Result<CancelClass, Error> {
        if map == [-1, -1] {
            return self.admit(op);
        }
        let shown = (op.desc.fd, op.desc.fd2);
        if map[0] >= 0 {
            op.desc.fd = map[0];
        }
        if map[1] >= 0 {
            op.desc.fd2 = map[1];
        }
        let class = self.admit(op);
        (op.desc.fd, op.desc.fd2) = shown;
        class
    }

    /// Prepares the checked close `check` of the step in chain slot `idx` (see the
    /// module docs); returns the class it runs with. A FUSE/NFS file's close runs whole
    /// on quell's pool; any other is checked and its number closed here (the chain's
    /// duplicate keeps the file open, so this close is never the last one and does not
    /// block), and the step closes the duplicate, reporting `EBADF` if the number no
    /// longer named the chain's file.
    fn check_close(
        &mut self,
        idx: u32,
        check: CloseCheck,
        class: CancelClass,
        next: &mut Next,
    ) -> CancelClass {
        let number = check.number;
        let Some(dup) = check.dup else {
            return class; // an unchecked close of the number itself
        };
        self.fds.forget(number);
        self.fds.forget(dup.as_raw_fd());
        if class == CancelClass::Interruptible {
            let op = Op::blocking(move || crate::descriptor::checked_close(number, dup));
            let mut desc = op.desc;
            desc.fd = number; // listed (and reached by cancel_fd) as a close of the number
            next.op.desc = desc;
            next.map = [-1, -1];
            return CancelClass::Interruptible;
        }
        let verdict = if crate::descriptor::same_file(number, dup.as_raw_fd()) {
            crate::descriptor::close(number)
                .err()
                .map(Errno::from_raw_os_error)
        } else {
            Some(Errno::BADF)
        };
        next.map = [dup.as_raw_fd(), -1];
        self.chains.get(idx).set_close(verdict, Some(dup));
        class
    }

    /// Closes every duplicate chain `st` still holds (it is over). `linked`: its
    /// descriptors are none of FUSE/NFS (such chains are sequenced).
    pub(super) fn release_dups(&mut self, st: &mut ChainState, linked: bool) {
        for d in st.take_dups() {
            if linked {
                drop(d);
            } else {
                self.release_dup(d);
            }
        }
    }

    /// Closes duplicate `d`, on the closer thread if its file is FUSE/NFS (closing it
    /// flushes to the server), and forgets its class (the number will be reused).
    fn release_dup(&mut self, d: OwnedFd) {
        let fd = d.as_raw_fd();
        let class = self.fds.info(fd).map(|i| i.class);
        self.fds.forget(fd);
        if class == Ok(CancelClass::Interruptible) {
            self.closer.close(d);
        } else {
            drop(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every close handed out while a canceled chain cleans up is refused (the
    /// numbers were closed behind the ring's back): one close per opened descriptor,
    /// then the chain is over.
    #[test]
    fn cleanup_hands_out_one_close_per_descriptor_even_when_each_is_refused() {
        let chain = Chain::new()
            .then(Op::openat(libc::AT_FDCWD, "/a", libc::O_RDONLY, 0))
            .then(Op::openat(libc::AT_FDCWD, "/b", libc::O_RDONLY, 0))
            .then(Op::timeout(std::time::Duration::from_secs(60)))
            .then(Op::close(Chain::OPENED));
        let (_first, mut st) = ChainState::start(chain, None, Vec::new());
        st.record(OpKind::OpenAt, Outcome::Done(10), Payload::None);
        st.next().expect("second open");
        st.record(OpKind::OpenAt, Outcome::Done(11), Payload::None);
        let timeout = st.next().expect("timeout");
        assert_eq!(timeout.op.desc.kind, OpKind::Timeout);
        let canceled = Outcome::Canceled { transferred: 0 };
        st.record(OpKind::Timeout, canceled, Payload::None);
        let mut closed = Vec::new();
        while let Some(next) = st.next() {
            assert!(next.cleanup);
            assert_eq!(next.op.desc.kind, OpKind::Close);
            assert!(
                closed.len() < 2,
                "a third close for two descriptors: {closed:?}"
            );
            closed.push(next.op.desc.fd);
            st.refuse_current(Errno::BADF, next.op);
        }
        assert_eq!(closed, [11, 10]);
        let (outcome, payload) = st.finish();
        assert_eq!(
            outcome, canceled,
            "a refused cleanup close does not fail the chain"
        );
        let Payload::Chain(steps) = payload else {
            panic!("a chain's payload")
        };
        let closes: Vec<_> = steps.iter().map(|s| (s.outcome, s.added)).skip(3).collect();
        assert_eq!(
            closes,
            [
                (Some(Outcome::Failed(Errno::BADF)), false),
                (Some(Outcome::Failed(Errno::BADF)), true)
            ]
        );
    }

    /// The chain's own close, refused while the chain goes on, fails the chain and
    /// leaves nothing to clean up.
    #[test]
    fn a_refused_own_close_is_not_followed_by_an_added_one() {
        let chain = Chain::new()
            .then(Op::openat(libc::AT_FDCWD, "/a", libc::O_RDONLY, 0))
            .then(Op::close(Chain::OPENED));
        let (_first, mut st) = ChainState::start(chain, None, Vec::new());
        st.record(OpKind::OpenAt, Outcome::Done(10), Payload::None);
        let close = st.next().expect("own close");
        assert_eq!(close.op.desc.fd, 10);
        st.refuse_current(Errno::BADF, close.op);
        assert!(st.next().is_none(), "no close added for a refused one");
        assert_eq!(st.finish().0, Outcome::Failed(Errno::BADF));
    }
}
