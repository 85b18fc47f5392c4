//! LazyRead: reads that block at the page level, not at the call level.
//!
//! [`Ring::read_lazy`](crate::Ring::read_lazy) maps a region for `len` bytes of a file,
//! submits the reads of its first chunk and returns at once. The chunks are read, in offset
//! order, by ordinary quell ops into 2 MiB staging buffers (a window of them in flight; it
//! opens as chunks land: 1, then 2 more per completion, up to [`LazyOptions::window`]); as
//! each read completes its pages are *published* into the region.
//!
//! # Two ways to read
//! - **Raw** ([`LazyRead::raw`]): the region is registered with userfaultfd (MISSING mode).
//!   Touching a page not yet published blocks the touching thread *in the kernel* until the
//!   page is published; published pages read at memory speed. A chunk whose read failed or
//!   was canceled is poisoned (`UFFDIO_POISON`): touching it raises `SIGBUS`, as with an I/O
//!   error on an `mmap`ed file.
//! - **Checked** ([`LazyRead::wait_range`], [`LazyRead::try_range`], [`LazyRead::finish`],
//!   [`LazyRead::wait_range_async`], and the same on a [`LazyView`]): returns the bytes, or
//!   the [`LazyError::Chunk`] of the chunk that failed (its errno: `EIO`, `ECANCELED`, ...).
//!
//! # Who publishes
//! There is no fault-handling thread. Chunks are published by the ring's thread whenever the
//! ring is driven: [`Ring::wait`](crate::Ring::wait), [`Ring::poll`](crate::Ring::poll),
//! [`Ring::wait_for`](crate::Ring::wait_for), and the checked calls that take the ring
//! ([`LazyRead::wait_range`], [`LazyRead::finish`]), which drive it themselves. A thread that
//! touches the raw region (or waits on a [`LazyView`], or awaits
//! [`LazyRead::wait_range_async`]) only sleeps until the owner's loop publishes the chunk;
//! if the owner never drives the ring, it sleeps forever. Never touch an unpublished page
//! of the raw region from the ring's own thread: it would wait for itself.
//!
//! # Errors and lengths
//! A read that fails poisons its chunk and the others go on. A read that meets end of file
//! is not an error: the rest of the region reads as zeros and [`LazyRead::data_len`] says
//! how many bytes the file gave; the chunks after it are not read at all (they are
//! resolved at once, however long the region). A length beyond this system's memory
//! ([`max_len`]) is refused with [`LazyError::TooLong`]; a pipe or socket (no offsets) with
//! [`LazyError::InvalidArgument`]. Canceling ([`LazyRead::cancel`], the op group given in
//! [`LazyOptions::group`], or a group deadline) stops the chunks not yet done and poisons
//! them (`ECANCELED`, or `ETIMEDOUT` for a deadline); published pages keep their data.
//! Dropping a [`LazyRead`] (and its views) cancels what is left; the staging buffers stay
//! with the ring until their reads complete (contract I2), so dropping is safe at any time.
//! Dropping the ring cancels the chunk reads like any op; chunks whose reads never end
//! (leaked at teardown) are failed with `ECANCELED`, so no waiter or toucher sleeps forever.
//! The descriptor must stay open until the LazyRead is finished (a closed one fails the
//! remaining chunks with `EBADF`). The chunk reads count in [`Ring::len`](crate::Ring::len)
//! and are listed by [`Ring::ops`](crate::Ring::ops) but never yield user completions.
//!
//! # Costs
//! `read_lazy` maps the region without reserving memory (`MAP_NORESERVE`) and returns at
//! once: the region costs memory only as chunks are published. Besides the published data,
//! a LazyRead keeps three bytes per chunk (its state and errno; the default 2 MiB chunks
//! make that 1.5 KiB per GiB), a staging buffer and a few words per chunk read in flight
//! (at most [`LazyOptions::window`]). Chunks past the end of the file are neither read nor
//! populated: in userfaultfd mode their pages are unregistered and read as the kernel's
//! zero page. Canceling a region poisons what is left with one `UFFDIO_POISON` per run of
//! chunks, which fills page tables for those pages (about 0.2% of their length with 4 KiB
//! pages); dropping the last [`LazyRead`] or view skips the poisoning (nobody can touch the
//! region any more).
//!
//! # Without userfaultfd
//! Where userfaultfd cannot be used (not permitted, old kernel, seccomp) or when
//! [`LazyMode::Checked`] is asked for (or `QUELL_LAZY=checked` is set), chunks are copied into
//! plain memory and only the checked API works: [`LazyRead::raw`] is refused with
//! [`LazyError::RawViewUnavailable`] until every chunk is published, never served as
//! silent zero pages. [`availability`] says which mode this system gets.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::fd::AsRawFd;
//! let path = std::env::temp_dir().join(format!("quell-lazy-doc-{}", std::process::id()));
//! std::fs::write(&path, vec![7u8; 5 << 20])?;
//! let file = std::fs::File::open(&path)?;
//!
//! let mut ring = quell::Ring::new()?;
//! let lazy = ring.read_lazy(file.as_raw_fd(), 0, 5 << 20, quell::lazy::LazyOptions::default())?;
//! // Returns as soon as the first 4 KiB are in; the rest keeps arriving.
//! assert_eq!(lazy.wait_range(&mut ring, 0..4096)?, &[7u8; 4096][..]);
//! let all = lazy.finish(&mut ring)?;
//! assert_eq!(all.len(), 5 << 20);
//! # std::fs::remove_file(&path)?;
//! # Ok(()) }
//! ```

mod engine;
mod region;
mod uffd;
mod wait;

pub(crate) use region::StagingBuf;

pub use engine::{LazyProgress, LazyRead, LazyView};
pub use region::{LazyAvailability, LazyMode, PublishStats};
pub use uffd::UffdSource;
pub use wait::WaitRange;

use crate::outcome::Errno;
use crate::GroupId;

/// Default chunk size: one 2 MiB huge page.
///
/// ```
/// assert_eq!(quell::lazy::DEFAULT_CHUNK_SIZE, 2 << 20);
/// ```
pub const DEFAULT_CHUNK_SIZE: usize = region::DEFAULT_CHUNK_SIZE;

/// Default number of chunk reads in flight at once for one LazyRead.
///
/// ```
/// assert!(quell::lazy::DEFAULT_WINDOW >= 1);
/// ```
pub const DEFAULT_WINDOW: usize = 8;

/// What this system offers LazyRead: the mode [`LazyMode::Auto`] resolves to (taking
/// `QUELL_LAZY=checked|uffd` into account), and whether publishing can move pages and
/// poison failed ones. Probed once per process.
///
/// ```
/// let a = quell::lazy::availability();
/// println!("LazyRead mode: {:?} (move: {}, poison: {})", a.mode, a.can_move, a.can_poison);
/// assert!(a.usable || a.reason.is_some());
/// ```
pub fn availability() -> LazyAvailability {
    let mut a = region::LazyRegion::probe();
    a.mode = match env_mode() {
        Some(LazyMode::Checked) => LazyMode::Checked,
        _ if a.usable => LazyMode::Uffd,
        _ => LazyMode::Checked,
    };
    a
}

/// The longest [`Ring::read_lazy`](crate::Ring::read_lazy) accepts: this system's memory,
/// RAM plus swap (as `sysinfo(2)` reports them). A LazyRead keeps every byte it reads in
/// anonymous memory until it is dropped, so a longer one could never be filled; it is
/// refused with [`LazyError::TooLong`] before anything is allocated or mapped. The limits of
/// a cgroup are not consulted: within this bound, the memory a LazyRead uses is what the
/// file gives (see [the module docs](crate::lazy#costs)).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let max = quell::lazy::max_len();
/// assert!(max > 0);
/// let file = std::fs::File::open("/proc/self/exe")?;
/// let mut ring = quell::Ring::new()?;
/// let e = ring.read_lazy(file.as_raw_fd(), 0, max + 1, Default::default()).unwrap_err();
/// assert!(matches!(e, quell::lazy::LazyError::TooLong { .. }));
/// # Ok(()) }
/// ```
pub fn max_len() -> usize {
    let s = rustix::system::sysinfo();
    let unit = u64::from(s.mem_unit.max(1));
    let bytes = (s.totalram as u64)
        .saturating_add(s.totalswap as u64)
        .saturating_mul(unit);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// `QUELL_LAZY=checked|uffd` (read each time: tests set it per process).
fn env_mode() -> Option<LazyMode> {
    match std::env::var("QUELL_LAZY").as_deref() {
        Ok("checked") => Some(LazyMode::Checked),
        Ok("uffd") => Some(LazyMode::Uffd),
        _ => None,
    }
}

/// Options of [`Ring::read_lazy`](crate::Ring::read_lazy).
///
/// ```
/// let o = quell::lazy::LazyOptions::default()
///     .chunk_size(1 << 20)
///     .window(4)
///     .mode(quell::lazy::LazyMode::Checked);
/// assert_eq!(o.get_chunk_size(), 1 << 20);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct LazyOptions {
    pub(crate) chunk_size: usize,
    pub(crate) window: usize,
    pub(crate) mode: LazyMode,
    pub(crate) group: Option<GroupId>,
    pub(crate) force_copy: bool,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: DEFAULT_WINDOW,
            mode: LazyMode::Auto,
            group: None,
            force_copy: false,
        }
    }
}

impl LazyOptions {
    /// Bytes per chunk read: a non-zero multiple of the page size (default 2 MiB). Chunks
    /// are the unit of publishing, of failure and of cancellation.
    ///
    /// ```
    /// let o = quell::lazy::LazyOptions::default().chunk_size(64 << 10);
    /// assert_eq!(o.get_chunk_size(), 64 << 10);
    /// ```
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// The chunk size set.
    ///
    /// ```
    /// assert_eq!(quell::lazy::LazyOptions::default().get_chunk_size(), 2 << 20);
    /// ```
    pub fn get_chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Most chunk reads in flight at once (default [`DEFAULT_WINDOW`]; at least 1). Each
    /// holds one staging buffer of the chunk size.
    ///
    /// ```
    /// let o = quell::lazy::LazyOptions::default().window(2);
    /// # let _ = o;
    /// ```
    pub fn window(mut self, chunks: usize) -> Self {
        self.window = chunks.max(1);
        self
    }

    /// The backing mode: [`LazyMode::Auto`] (default: userfaultfd where available,
    /// overridable with `QUELL_LAZY=checked|uffd`), [`LazyMode::Uffd`] (an error without
    /// it) or [`LazyMode::Checked`] (checked API only).
    ///
    /// ```
    /// let o = quell::lazy::LazyOptions::default().mode(quell::lazy::LazyMode::Checked);
    /// # let _ = o;
    /// ```
    pub fn mode(mut self, mode: LazyMode) -> Self {
        self.mode = mode;
        self
    }

    /// Submits the chunk reads into `group`: canceling the group (or its deadline) cancels
    /// the LazyRead.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let g = ring.group(quell::GroupId::ROOT, quell::GroupOptions::default())?;
    /// let o = quell::lazy::LazyOptions::default().group(g);
    /// # let _ = o;
    /// # Ok(()) }
    /// ```
    pub fn group(mut self, group: GroupId) -> Self {
        self.group = Some(group);
        self
    }

    /// Publishes with `UFFDIO_COPY` only, never `UFFDIO_MOVE` (for measurements).
    ///
    /// ```
    /// let o = quell::lazy::LazyOptions::default().force_copy(true);
    /// # let _ = o;
    /// ```
    pub fn force_copy(mut self, yes: bool) -> Self {
        self.force_copy = yes;
        self
    }
}

/// Why a LazyRead could not be created or a range not read.
///
/// ```
/// let e = quell::lazy::LazyError::RawViewUnavailable;
/// assert!(e.to_string().contains("checked"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LazyError {
    /// The read of a chunk covering the range failed, or was canceled (`ECANCELED`) or timed
    /// out (`ETIMEDOUT`). Touching its pages in the raw region raises `SIGBUS`.
    #[error("chunk {chunk} (file offset {offset}) failed: {errno}")]
    Chunk {
        /// The chunk's index (the lowest failed one of the range).
        chunk: usize,
        /// The file offset the chunk starts at.
        offset: u64,
        /// Why.
        errno: Errno,
    },
    /// The range is not inside the region.
    #[error("range {start}..{end} out of bounds (length {len})")]
    OutOfBounds {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Region length.
        len: usize,
    },
    /// The raw region is refused: this LazyRead runs without userfaultfd (checked mode) and
    /// is not fully published. Use the checked API.
    #[error("raw view refused: LazyRead is in checked mode (no userfaultfd) and not fully published; use wait_range/try_range")]
    RawViewUnavailable,
    /// [`LazyMode::Uffd`] was asked for and userfaultfd cannot be used here.
    #[error("userfaultfd unavailable: {0}")]
    Unavailable(String),
    /// The length is more than this system's memory could ever hold ([`max_len`]): a
    /// LazyRead keeps every byte it reads in anonymous memory. Refused before anything is
    /// allocated or mapped.
    #[error("length {len} is more than this system's memory could hold (at most {max} bytes)")]
    TooLong {
        /// The length asked for.
        len: usize,
        /// [`max_len`] when it was refused.
        max: usize,
    },
    /// A length, offset or chunk size is invalid, or the descriptor is not a seekable
    /// file (a pipe or a socket).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Mapping the region or a staging buffer failed.
    #[error("mapping memory for LazyRead failed: {0}")]
    Map(#[source] std::io::Error),
    /// The ring refused the chunk reads, or driving it failed.
    #[error(transparent)]
    Ring(#[from] crate::Error),
    /// The ring passed in is not the one the LazyRead was created on.
    #[error("this LazyRead belongs to another ring")]
    ForeignRing,
}

impl LazyError {
    /// The errno of a failed chunk.
    ///
    /// ```
    /// let e = quell::lazy::LazyError::Chunk { chunk: 0, offset: 0, errno: quell::Errno::IO };
    /// assert_eq!(e.errno(), Some(quell::Errno::IO));
    /// ```
    pub fn errno(&self) -> Option<Errno> {
        match self {
            LazyError::Chunk { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl From<region::RegionError> for LazyError {
    fn from(e: region::RegionError) -> Self {
        use region::RegionError as R;
        match e {
            R::InvalidLength(_) => LazyError::InvalidArgument("length is zero or too large"),
            R::InvalidChunkSize { .. } => {
                LazyError::InvalidArgument("chunk size is not a non-zero multiple of the page size")
            }
            R::Map(io) => LazyError::Map(io),
            R::Unavailable(u) => LazyError::Unavailable(u.to_string()),
            R::RawViewUnavailable => LazyError::RawViewUnavailable,
            other => LazyError::Unavailable(other.to_string()),
        }
    }
}
