//! What a ring can tell about itself: the outstanding ops and counters.

use crate::group::GroupId;
use crate::id::OpId;
use crate::op::OpKind;
use crate::outcome::{CancelClass, OpState};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One outstanding operation, as listed by [`Ring::ops`](crate::Ring::ops).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
/// let ops = ring.ops();
/// assert_eq!(ops.len(), 1);
/// assert_eq!(ops[0].id, id);
/// // With room in the dispatch window it went straight to the backend.
/// assert_eq!(ops[0].state, quell::OpState::InFlight);
/// assert_eq!(ops[0].class, quell::CancelClass::Prompt);
/// assert_eq!(&*ops[0].group_path, "root");
/// // The path behind the descriptor is looked up only when asked for.
/// assert!(ops[0].path().unwrap().to_string_lossy().starts_with("socket:"));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct OpInfo {
    /// The op's id.
    pub id: OpId,
    /// Its user data.
    pub user_data: u64,
    /// Its group.
    pub group: GroupId,
    /// Its group's path of names, such as `"root/requests/g3"` (shared between the
    /// ops of one group in a listing).
    pub group_path: Arc<str>,
    /// What it does.
    pub kind: OpKind,
    /// The descriptor it works on (`-1` for none; the directory for path ops).
    pub fd: RawFd,
    /// Offset for positioned transfers.
    pub offset: Option<u64>,
    /// Bytes asked for (transfers, fallocate).
    pub len: u64,
    /// How it can be canceled now: `Queued` while still in quell's queue.
    pub class: CancelClass,
    /// How it will be canceled once dispatched.
    pub dispatch_class: CancelClass,
    /// Where it is in its life.
    pub state: OpState,
    /// Time since submission.
    pub age: Duration,
    /// Its deadline, if any.
    pub deadline: Option<Instant>,
    /// Bytes already moved by earlier parts (derived ops).
    pub transferred: u64,
}

impl OpInfo {
    /// What the descriptor refers to, read from `/proc/self/fd` now (so a listing costs
    /// no system call per op unless asked): a path for files, `pipe:[inode]` or
    /// `socket:[inode]` for the others. `None` when the op has no descriptor, or it has
    /// been closed since.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read_at(file.as_raw_fd(), 0, vec![0u8; 4]))?;
    /// let path = ring.ops()[0].path().unwrap();
    /// assert_eq!(path, std::fs::canonicalize("/proc/self/exe")?);
    /// # Ok(()) }
    /// ```
    pub fn path(&self) -> Option<PathBuf> {
        fd_path(self.fd)
    }
}

/// The `/proc/self/fd` link of `fd` (`None` for a negative or closed descriptor).
pub(crate) fn fd_path(fd: RawFd) -> Option<PathBuf> {
    if fd < 0 {
        return None;
    }
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// Counters of a ring since it was created.
///
/// ```
/// let ring = quell::Ring::new().unwrap();
/// assert_eq!(ring.stats().submitted, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Ops accepted.
    pub submitted: u64,
    /// Completions delivered to the ring's completion queue.
    pub completed: u64,
    /// Cancel requests that reached an outstanding op.
    pub cancel_requests: u64,
    /// Ops canceled while still queued in user space (no kernel involved).
    pub canceled_queued: u64,
    /// Ops delivered as `Detached` whose kernel completion had not arrived yet.
    pub detached: u64,
    /// Detached ops whose kernel completion has since arrived (memory released).
    pub detached_finished: u64,
    /// Ops in flight whose memory was leaked at teardown because they never finished.
    pub leaked_at_teardown: u64,
    /// Chains given to the kernel as one batch of linked SQEs (io_uring).
    pub linked_chains: u64,
    /// io_uring direct descriptors held now by linked chains that opened a file.
    pub direct_descriptors: u64,
}
