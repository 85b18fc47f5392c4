//! `LazyRegion`: page-level blocking reads over a userfaultfd-registered anonymous region.
//!
//! The region is an anonymous private mapping of `len` bytes rounded up to 2 MiB, 2 MiB
//! aligned (over-mapped and trimmed), `MADV_HUGEPAGE`, registered with userfaultfd in MISSING
//! mode and cut into chunks of `chunk_size` bytes. Nothing ever writes into the registered
//! region from user space: reads land in [`StagingBuf`]s (a kernel writer touching the
//! registered region would block forever), and as each read completes its chunk is
//! *published* with `UFFDIO_MOVE` (zero copy) or `UFFDIO_COPY` (edges, small chunks, `EBUSY`,
//! kernels without MOVE). Publishing wakes every thread sleeping on those pages, so no
//! fault-handling thread is needed. A chunk whose read failed is *poisoned*
//! (`UFFDIO_POISON`: a touch gets `SIGBUS`, as with mmap I/O errors) and its errno is kept for
//! the checked API ([`LazyRegion::wait_range`], [`LazyRegion::try_range`],
//! [`LazyRegion::finish`]).
//!
//! Without userfaultfd ([`LazyMode::Checked`]) the region is plain anonymous memory filled by a
//! `memcpy` when a chunk is published; only the checked API works and the raw view is refused
//! (until every chunk is published).
//!
//! # Huge pages
//! The region and the staging buffers ask for transparent huge pages (`MADV_HUGEPAGE`). When
//! THP is available, a full 2 MiB chunk staged in a huge page is published by moving one PMD
//! (no copy, no per-page work). When THP is off (`enabled = never`, `CONFIG_TRANSPARENT_HUGEPAGE`
//! unset: `madvise` fails with `EINVAL`, which is ignored) or [`Options::huge_pages`] is false
//! (`MADV_NOHUGEPAGE`), everything still works on 4 KiB pages: MOVE moves page table entries
//! one by one (still no copy), COPY allocates and copies 4 KiB pages. COPY and ZEROPAGE always
//! install 4 KiB pages; the edges of a chunk (a short last page, an EOF tail) therefore never
//! stay huge. Staging memory is faulted in by the reader (the kernel's `copy_to_user` for a
//! `read`); with THP `defrag = madvise` that fault may compact memory.
//!
//! # Fork
//! Both the region and the staging buffers are `MADV_DONTFORK` by default
//! ([`Options::dont_fork`]): a child would otherwise inherit the region *without* its
//! userfaultfd registration (unpublished pages would read as zeros there), and fork makes the
//! parent's staging pages shared, which turns `UFFDIO_MOVE` into `EBUSY` (COPY fallback).

use std::fmt;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{
    fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use rustix::io::Errno;
use rustix::mm::{Advice, MapFlags, MprotectFlags, ProtFlags};

use super::uffd::{self, Features, Uffd, UffdError};

/// Size of a PMD-mapped transparent huge page on x86-64 and arm64 with 4 KiB pages; the
/// alignment of regions and staging buffers.
pub const HUGE_PAGE: usize = 2 << 20;

/// Default chunk size: one huge page.
pub const DEFAULT_CHUNK_SIZE: usize = HUGE_PAGE;

/// Default minimum page-aligned length for which `UFFDIO_MOVE` is tried; shorter pieces are
/// copied (a MOVE of a few 4 KiB pages costs about what copying them does).
pub const DEFAULT_MOVE_THRESHOLD: usize = 64 << 10;

/// The system page size.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

// ---------------------------------------------------------------------------------------------
// Anonymous mappings.

/// An owned anonymous private read/write mapping, `align`-aligned (over-mapped and trimmed).
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, align: usize, huge: bool, dont_fork: bool) -> std::io::Result<Mapping> {
        debug_assert!(len > 0 && len % page_size() == 0 && align.is_power_of_two());
        let total = len
            .checked_add(align)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice; it aliases
        // nothing.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }?;
        let raw = raw as usize;
        let start = round_up(raw, align);
        let head = start - raw;
        let tail = total - head - len;
        // SAFETY: [raw, raw+head) and [start+len, raw+total) are parts of the mapping we just
        // created that we do not keep; nothing references them.
        unsafe {
            if head > 0 {
                rustix::mm::munmap(raw as *mut _, head)?;
            }
            if tail > 0 {
                rustix::mm::munmap((start + len) as *mut _, tail)?;
            }
        }
        let map = Mapping {
            // SAFETY: mmap never returns a null mapping here (we passed no hint and no
            // MAP_FIXED), and start >= raw > 0.
            ptr: unsafe { NonNull::new_unchecked(start as *mut u8) },
            len,
        };
        let advice = if huge {
            Advice::LinuxHugepage
        } else {
            Advice::LinuxNoHugepage
        };
        // SAFETY: madvise on our own mapping; these advices do not change its contents.
        // Failure (EINVAL without THP support) only means no huge pages: ignored.
        let _ = unsafe { rustix::mm::madvise(map.ptr.as_ptr().cast(), len, advice) };
        if dont_fork {
            // SAFETY: as above; MADV_DONTFORK only affects future forks.
            unsafe { rustix::mm::madvise(map.ptr.as_ptr().cast(), len, Advice::LinuxDontFork) }?;
        }
        Ok(map)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; its users (StagingBuf, LazyRegion) hand out references
        // only with lifetimes bound to themselves, so none is alive now.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// ---------------------------------------------------------------------------------------------
// Staging buffers.

/// A 2 MiB-aligned anonymous buffer (`MADV_HUGEPAGE`) that a read is done *into*, then handed
/// to [`LazyRegion::publish`]. Its length is rounded up to the page size.
///
/// After a publish by `UFFDIO_MOVE` its pages have moved into the region: the buffer is still
/// mapped and reads as zeros; the next read into it faults fresh pages in. Do not register a
/// staging buffer with io_uring (`IORING_REGISTER_BUFFERS`): pinned pages cannot be moved
/// (`EBUSY`, COPY fallback every time) and a registration would keep pointing at the old
/// pages after a move.
pub struct StagingBuf {
    map: Mapping,
}

// SAFETY: StagingBuf owns its mapping exclusively; the raw pointer is only dereferenced through
// `&self`/`&mut self` borrows, so moving it to another thread is like moving a Box<[u8]>.
unsafe impl Send for StagingBuf {}
// SAFETY: shared access only reads (`as_slice`); mutation needs `&mut self`.
unsafe impl Sync for StagingBuf {}

impl StagingBuf {
    /// A staging buffer of `len` bytes (rounded up to the page size), huge pages requested,
    /// `MADV_DONTFORK`.
    pub fn new(len: usize) -> std::io::Result<StagingBuf> {
        StagingBuf::with_options(len, true, true)
    }

    /// A staging buffer with explicit huge-page and don't-fork choices.
    pub fn with_options(
        len: usize,
        huge_pages: bool,
        dont_fork: bool,
    ) -> std::io::Result<StagingBuf> {
        if len == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let len = round_up(len, page_size());
        Ok(StagingBuf {
            map: Mapping::new(len, HUGE_PAGE, huge_pages, dont_fork)?,
        })
    }

    /// Length in bytes (a page multiple).
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Start of the buffer.
    #[cfg(test)]
    pub fn as_ptr(&self) -> *const u8 {
        self.map.ptr.as_ptr()
    }

    /// Start of the buffer, for a read to land in.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.ptr.as_ptr()
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is readable, `len` bytes long, owned by self, and only mutated
        // through `&mut self`.
        unsafe { std::slice::from_raw_parts(self.map.ptr.as_ptr(), self.map.len) }
    }

    /// The buffer's bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.map.ptr.as_ptr(), self.map.len) }
    }
}

impl std::ops::Deref for StagingBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for StagingBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for StagingBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagingBuf")
            .field("ptr", &self.map.ptr)
            .field("len", &self.map.len)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and probing.

/// How a LazyRead's region is backed.
///
/// ```
/// use quell::lazy::{LazyMode, LazyOptions};
/// let opts = LazyOptions::default().mode(LazyMode::Checked);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LazyMode {
    /// userfaultfd: touching an unpublished page blocks; the raw view works. Fails to create
    /// when userfaultfd is unavailable.
    Uffd,
    /// No userfaultfd: chunks are filled by `memcpy`; only the checked API works; the raw
    /// view is refused until every chunk is published.
    Checked,
    /// [`LazyMode::Uffd`] where available, else [`LazyMode::Checked`].
    Auto,
}

/// Options of [`LazyRegion::with_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Chunk size in bytes: a non-zero multiple of the page size.
    pub chunk_size: usize,
    /// Backing mode.
    pub mode: LazyMode,
    /// Use `UFFDIO_COPY` only, never `UFFDIO_MOVE` (for measurements and tests).
    pub force_copy: bool,
    /// Use `UFFDIO_MOVE` whenever the kernel has it, even without transparent huge pages.
    /// By default MOVE is used only when THP is on for the region ([`Options::huge_pages`]
    /// and `/sys/kernel/mm/transparent_hugepage/enabled` not `[never]`): with 4 KiB pages a
    /// moved-out staging buffer must be faulted back in page by page by the next read, which
    /// measured slower end to end than COPY into a warm staging buffer.
    pub force_move: bool,
    /// Pretend `UFFDIO_POISON` is missing (tests the fallback: `PROT_NONE`, a touch gets
    /// `SIGSEGV`).
    pub force_no_poison: bool,
    /// Page-aligned pieces shorter than this are copied rather than moved.
    pub move_threshold: usize,
    /// `MADV_HUGEPAGE` (true) or `MADV_NOHUGEPAGE` (false) on the region.
    pub huge_pages: bool,
    /// `MADV_DONTFORK` on the region (see the module docs).
    pub dont_fork: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            chunk_size: DEFAULT_CHUNK_SIZE,
            mode: LazyMode::Auto,
            force_copy: false,
            force_move: false,
            force_no_poison: false,
            move_threshold: DEFAULT_MOVE_THRESHOLD,
            huge_pages: true,
            dont_fork: true,
        }
    }
}

/// What this system offers LazyRead, from [`availability`](crate::lazy::availability).
///
/// ```
/// let a = quell::lazy::availability();
/// if a.usable {
///     assert!(a.source.is_some());
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyAvailability {
    /// The mode [`LazyMode::Auto`] resolves to here.
    pub mode: LazyMode,
    /// Whether [`LazyMode::Uffd`] regions can be created.
    pub usable: bool,
    /// How the userfaultfd descriptor is obtained, when usable.
    pub source: Option<uffd::UffdSource>,
    /// Whether publishing can use `UFFDIO_MOVE` (Linux 6.8+).
    pub can_move: bool,
    /// Whether failed chunks can be poisoned with `UFFDIO_POISON` (Linux 6.6+).
    pub can_poison: bool,
    /// Why not, when not usable.
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// The state of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Not yet published nor failed.
    Pending,
    /// A publish or poison is in progress.
    Busy,
    /// Readable.
    Published,
    /// Its read failed; touching it raises `SIGBUS` (or `SIGSEGV` without POISON).
    Failed,
}

impl fmt::Display for ChunkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkState::Pending => "pending",
            ChunkState::Busy => "busy",
            ChunkState::Published => "published",
            ChunkState::Failed => "failed",
        })
    }
}

/// Errors of region creation, publishing, poisoning and the raw view.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The region length is zero.
    #[error("invalid region length {0}")]
    InvalidLength(usize),
    /// The chunk size is not a non-zero multiple of the page size.
    #[error("chunk size {chunk_size} is not a non-zero multiple of the page size {page_size}")]
    InvalidChunkSize {
        /// The chunk size asked for.
        chunk_size: usize,
        /// The page size.
        page_size: usize,
    },
    /// Mapping or advising memory failed.
    #[error("mapping the region failed: {0}")]
    Map(#[source] std::io::Error),
    /// [`LazyMode::Uffd`] was asked for but userfaultfd cannot be used.
    #[error("userfaultfd unavailable: {0}")]
    Unavailable(#[source] UffdError),
    /// A userfaultfd ioctl failed.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// The raw view is refused in [`LazyMode::Checked`] until every chunk is published.
    #[error("raw view refused: region is in Checked mode (no userfaultfd) and not fully published; use wait_range/try_range")]
    RawViewUnavailable,
    /// No such chunk.
    #[error("chunk {chunk} out of range ({chunks} chunks)")]
    ChunkOutOfRange {
        /// The chunk asked for.
        chunk: usize,
        /// Number of chunks.
        chunks: usize,
    },
    /// The chunk was already published, failed, or is being published.
    #[error("chunk {chunk} is already {state}")]
    AlreadyResolved {
        /// The chunk.
        chunk: usize,
        /// Its state.
        state: ChunkState,
    },
    /// `valid` exceeds the chunk or the staging buffer.
    #[error(
        "valid length {valid} exceeds chunk length {chunk_len} or staging length {staging_len}"
    )]
    BadValid {
        /// Valid bytes claimed.
        valid: usize,
        /// Length of the chunk.
        chunk_len: usize,
        /// Length of the staging buffer.
        staging_len: usize,
    },
    /// Poisoning failed and so did the fallback; the chunk is marked failed for the checked API
    /// but a raw touch of it may block until the region is dropped.
    #[error("poisoning chunk {chunk} failed ({error}); raw touches of it may block")]
    PoisonFailed {
        /// The chunk.
        chunk: usize,
        /// The last error.
        error: UffdError,
    },
}

/// A failed publish: the error and the staging buffer, handed back.
#[derive(Debug, thiserror::Error)]
#[error("publish failed: {error}")]
pub struct PublishError {
    /// What went wrong. The chunk is left `Pending` (publish or poison may be retried; pages
    /// already populated are skipped on retry).
    #[source]
    pub error: RegionError,
    /// The staging buffer, back to the caller.
    pub staging: StagingBuf,
}

/// Why a range cannot be read through the checked API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The read of `chunk` failed with `errno`.
    #[error("chunk {chunk} failed: {errno}")]
    Failed {
        /// The first failed chunk of the range.
        chunk: usize,
        /// Its errno.
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
}

/// Bytes published by each path, for tests and measurements.
///
/// ```
/// let s = quell::lazy::PublishStats::default();
/// assert_eq!(s.moved + s.copied + s.zeroed, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Bytes moved with `UFFDIO_MOVE`.
    pub moved: u64,
    /// Bytes copied with `UFFDIO_COPY` (or `memcpy` in Checked mode).
    pub copied: u64,
    /// Bytes mapped with `UFFDIO_ZEROPAGE`.
    pub zeroed: u64,
    /// Times a MOVE failed (`EBUSY`, `ENOENT`, `EINVAL`) and the rest was copied.
    pub move_fallbacks: u64,
    /// Pages skipped because they were already populated (`EEXIST`, a retried publish).
    pub existing_pages: u64,
}

// ---------------------------------------------------------------------------------------------
// The region.

const PENDING: u8 = 0;
const BUSY: u8 = 1;
const PUBLISHED: u8 = 2;
const FAILED: u8 = 3;

fn state_of(v: u8) -> ChunkState {
    match v {
        PENDING => ChunkState::Pending,
        BUSY => ChunkState::Busy,
        PUBLISHED => ChunkState::Published,
        _ => ChunkState::Failed,
    }
}

struct UffdState {
    uffd: Uffd,
    can_move: bool,
    can_poison: bool,
    /// Whether the region is still registered (cleared by the unregister at completion).
    registered: Mutex<bool>,
}

/// An anonymous region whose chunks become readable as they are published; see the module
/// docs.
///
/// `Send + Sync`: many threads read (the checked API or the raw view), one or more publish.
pub struct LazyRegion {
    // Field order matters for Drop: `uffd` (closing the descriptor) before `map` (munmap).
    uffd: Option<UffdState>,
    map: Mapping,
    len: usize,
    page: usize,
    chunk_size: usize,
    /// Use MOVE (kernel support permitting): !force_copy && (force_move || THP on).
    prefer_move: bool,
    move_threshold: usize,
    /// Three bytes per chunk (state and errno) are all a region keeps per chunk: what is
    /// in flight is the engine's business.
    states: Box<[AtomicU8]>,
    /// The errno of each failed chunk (Linux errnos are below 4096).
    errnos: Box<[AtomicU16]>,
    published: AtomicUsize,
    failed: AtomicUsize,
    /// Futex word: bumped (only when someone waits) after a chunk is resolved.
    epoch: AtomicU32,
    waiters: AtomicU32,
    complete_unregistered: AtomicBool,
    /// Nothing will read the region again: resolve chunks without populating them.
    abandoned: AtomicBool,
    moved: AtomicU64,
    copied: AtomicU64,
    zeroed: AtomicU64,
    move_fallbacks: AtomicU64,
    existing_pages: AtomicU64,
}

// SAFETY: the mapping is owned by the region; its bytes are mutated only (a) by the kernel
// through userfaultfd ioctls, which populate pages that are not yet populated, or (b) in Checked
// mode by `publish` on a chunk it claimed exclusively (PENDING -> BUSY by compare-exchange);
// readers get references only to PUBLISHED chunks (Acquire loads pairing with the Release store
// after the write), or to the whole region in Uffd mode, where an unpopulated page cannot be
// read (the reader blocks until it is populated, after which it never changes). All other
// state is atomics, a Mutex and the Uffd descriptor (ioctls are thread safe).
unsafe impl Send for LazyRegion {}
// SAFETY: see `Send`.
unsafe impl Sync for LazyRegion {}

impl LazyRegion {
    /// What this system offers (cached after the first call).
    pub fn probe() -> LazyAvailability {
        static AVAIL: OnceLock<LazyAvailability> = OnceLock::new();
        AVAIL.get_or_init(probe_uncached).clone()
    }

    /// A region of `len` bytes in chunks of `chunk_size` bytes (see [`Options`] for the rest).
    #[cfg(test)]
    pub fn new(len: usize, chunk_size: usize, mode: LazyMode) -> Result<LazyRegion, RegionError> {
        LazyRegion::with_options(
            len,
            Options {
                chunk_size,
                mode,
                ..Options::default()
            },
        )
    }

    /// A region of `len` bytes with explicit options.
    pub fn with_options(len: usize, opts: Options) -> Result<LazyRegion, RegionError> {
        let page = page_size();
        if len == 0 {
            return Err(RegionError::InvalidLength(len));
        }
        if opts.chunk_size == 0 || opts.chunk_size % page != 0 {
            return Err(RegionError::InvalidChunkSize {
                chunk_size: opts.chunk_size,
                page_size: page,
            });
        }
        let map_len = len
            .checked_next_multiple_of(HUGE_PAGE)
            .ok_or(RegionError::InvalidLength(len))?;
        let map = Mapping::new(map_len, HUGE_PAGE, opts.huge_pages, opts.dont_fork)
            .map_err(RegionError::Map)?;

        let uffd = match opts.mode {
            LazyMode::Checked => None,
            LazyMode::Uffd | LazyMode::Auto => match open_registered(&map) {
                Ok((u, ioctls)) => Some(UffdState {
                    can_move: ioctls & uffd::RANGE_IOCTL_MOVE != 0
                        && u.enabled().contains(Features::MOVE),
                    can_poison: !opts.force_no_poison
                        && ioctls & uffd::RANGE_IOCTL_POISON != 0
                        && u.enabled().contains(Features::POISON),
                    uffd: u,
                    registered: Mutex::new(true),
                }),
                Err(e) if opts.mode == LazyMode::Uffd => return Err(RegionError::Unavailable(e)),
                Err(_) => None,
            },
        };

        let chunks = len.div_ceil(opts.chunk_size);
        Ok(LazyRegion {
            uffd,
            map,
            len,
            page,
            chunk_size: opts.chunk_size,
            prefer_move: !opts.force_copy
                && (opts.force_move || (opts.huge_pages && thp_enabled())),
            move_threshold: opts.move_threshold,
            states: (0..chunks).map(|_| AtomicU8::new(PENDING)).collect(),
            errnos: (0..chunks).map(|_| AtomicU16::new(0)).collect(),
            published: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            epoch: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            complete_unregistered: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            moved: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            zeroed: AtomicU64::new(0),
            move_fallbacks: AtomicU64::new(0),
            existing_pages: AtomicU64::new(0),
        })
    }

    /// A staging buffer sized for this region's chunks.
    #[cfg(test)]
    pub fn new_staging(&self) -> std::io::Result<StagingBuf> {
        StagingBuf::new(self.chunk_size)
    }

    /// The effective mode: [`LazyMode::Uffd`] or [`LazyMode::Checked`].
    pub fn mode(&self) -> LazyMode {
        if self.uffd.is_some() {
            LazyMode::Uffd
        } else {
            LazyMode::Checked
        }
    }

    /// Whether publishing may use `UFFDIO_MOVE`.
    #[cfg(test)]
    pub fn uses_move(&self) -> bool {
        self.prefer_move && self.uffd.as_ref().is_some_and(|u| u.can_move)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Number of chunks (the last one may be short).
    pub fn chunk_count(&self) -> usize {
        self.states.len()
    }

    /// Byte range of `chunk` within the region.
    pub fn chunk_range(&self, chunk: usize) -> Range<usize> {
        let start = chunk * self.chunk_size;
        start.min(self.len)..(start + self.chunk_size).min(self.len)
    }

    /// The chunks covering the byte range `range` (empty for an empty range).
    pub fn chunks_of(&self, range: Range<usize>) -> Range<usize> {
        if range.start >= range.end {
            return 0..0;
        }
        range.start / self.chunk_size..range.end.div_ceil(self.chunk_size)
    }

    /// The state of `chunk`.
    pub fn chunk_state(&self, chunk: usize) -> Option<ChunkState> {
        self.states
            .get(chunk)
            .map(|s| state_of(s.load(Ordering::Acquire)))
    }

    /// Start of the region.
    #[cfg(test)]
    pub fn as_ptr(&self) -> *const u8 {
        self.map.ptr.as_ptr()
    }

    /// (published, failed, total) chunk counts.
    pub fn progress(&self) -> (usize, usize, usize) {
        (
            self.published.load(Ordering::Acquire),
            self.failed.load(Ordering::Acquire),
            self.chunk_count(),
        )
    }

    /// Whether every chunk is published or failed.
    pub fn is_complete(&self) -> bool {
        let (p, f, t) = self.progress();
        p + f == t
    }

    /// Bytes published by each path so far.
    pub fn stats(&self) -> PublishStats {
        PublishStats {
            moved: self.moved.load(Ordering::Relaxed),
            copied: self.copied.load(Ordering::Relaxed),
            zeroed: self.zeroed.load(Ordering::Relaxed),
            move_fallbacks: self.move_fallbacks.load(Ordering::Relaxed),
            existing_pages: self.existing_pages.load(Ordering::Relaxed),
        }
    }

    /// The raw view of the whole region.
    ///
    /// In Uffd mode, reading a byte of an unpublished chunk blocks the reading thread in the
    /// kernel until the chunk is published (and a failed chunk raises `SIGBUS`). Never read
    /// it from the thread that publishes. In Checked mode this is refused until every chunk is
    /// published ([`RegionError::RawViewUnavailable`]), or if any chunk failed.
    pub fn as_slice(&self) -> Result<&[u8], RegionError> {
        if self.uffd.is_none() && self.published.load(Ordering::Acquire) != self.chunk_count() {
            return Err(RegionError::RawViewUnavailable);
        }
        // SAFETY: the mapping is `len` (<= map.len) readable bytes owned by self. Uffd mode:
        // unpopulated pages cannot be observed (a read blocks until the kernel populates the page
        // from a publish, and a populated page is never written again), so the bytes behind the
        // reference never change while it is observable. Checked mode: every chunk is published
        // (Acquire above pairs with the Release after each chunk's memcpy) and never written
        // again.
        Ok(unsafe { std::slice::from_raw_parts(self.map.ptr.as_ptr(), self.len) })
    }

    /// Make `chunk` readable from `staging`, whose first `valid` bytes are the chunk's data;
    /// the rest of the chunk reads as zeros (EOF short read). Wakes every thread blocked on the
    /// chunk's pages (raw view) and in [`LazyRegion::wait_range`].
    ///
    /// Uses `UFFDIO_MOVE` for the page-aligned data when available and at least
    /// [`Options::move_threshold`] long, else `UFFDIO_COPY`; a MOVE failing with `EBUSY`,
    /// `ENOENT` or `EINVAL` falls back to COPY from where it stopped. Pages past the data are
    /// mapped with `UFFDIO_ZEROPAGE`. Bytes `valid..` of the last data page of `staging` are
    /// zeroed first.
    ///
    /// Returns the staging buffer for reuse (after a MOVE its pages are gone: it reads as zeros
    /// and the next read into it faults fresh pages in). On error the buffer comes back in the
    /// [`PublishError`] and the chunk stays `Pending`.
    pub fn publish(
        &self,
        chunk: usize,
        mut staging: StagingBuf,
        valid: usize,
    ) -> Result<StagingBuf, PublishError> {
        let fail = |error, staging| Err(PublishError { error, staging });
        let Some(state) = self.states.get(chunk) else {
            return fail(
                RegionError::ChunkOutOfRange {
                    chunk,
                    chunks: self.chunk_count(),
                },
                staging,
            );
        };
        let range = self.chunk_range(chunk);
        let chunk_len = range.len();
        if valid > chunk_len || valid > staging.len() {
            return fail(
                RegionError::BadValid {
                    valid,
                    chunk_len,
                    staging_len: staging.len(),
                },
                staging,
            );
        }
        if let Err(s) = state.compare_exchange(PENDING, BUSY, Ordering::Acquire, Ordering::Acquire)
        {
            return fail(
                RegionError::AlreadyResolved {
                    chunk,
                    state: state_of(s),
                },
                staging,
            );
        }
        // SAFETY: range.start < len <= map.len, so the pointer stays inside the mapping.
        let dst = unsafe { self.map.ptr.as_ptr().add(range.start) };
        let result = match &self.uffd {
            _ if self.abandoned.load(Ordering::Acquire) => Ok(()),
            None => {
                // SAFETY: the chunk is ours (BUSY); no reference to it exists (readers only get
                // PUBLISHED chunks); staging holds `valid` readable bytes and does not overlap
                // the region. Bytes past `valid` are still the mapping's initial zeros: a
                // Checked publish cannot fail half way, so the chunk was never written.
                unsafe { std::ptr::copy_nonoverlapping(staging.as_ptr(), dst, valid) };
                self.copied.fetch_add(valid as u64, Ordering::Relaxed);
                Ok(())
            }
            Some(u) => self.publish_uffd(u, dst, &mut staging, valid, chunk_len),
        };
        match result {
            Ok(()) => {
                state.store(PUBLISHED, Ordering::Release);
                self.published.fetch_add(1, Ordering::AcqRel);
                self.resolved();
                Ok(staging)
            }
            Err(e) => {
                state.store(PENDING, Ordering::Release);
                fail(e, staging)
            }
        }
    }

    fn publish_uffd(
        &self,
        u: &UffdState,
        dst: *mut u8,
        staging: &mut StagingBuf,
        valid: usize,
        chunk_len: usize,
    ) -> Result<(), RegionError> {
        let data_end = round_up(valid, self.page);
        let zero_end = round_up(chunk_len, self.page);
        // Zero the tail of the last data page (a short read leaves stale bytes there).
        staging.as_mut_slice()[valid..data_end].fill(0);
        if data_end > 0 {
            let try_move = u.can_move && self.prefer_move && data_end >= self.move_threshold;
            self.fill(u, dst, staging.as_mut_ptr(), data_end, try_move)?;
        }
        if zero_end > data_end {
            self.fill_zero(u, dst.wrapping_add(data_end), zero_end - data_end)?;
        }
        Ok(())
    }

    /// Populate `[dst, dst+len)` from `[src, src+len)` by MOVE (if `try_move`) or COPY, skipping
    /// already-populated pages and falling back from MOVE to COPY.
    fn fill(
        &self,
        u: &UffdState,
        dst: *mut u8,
        src: *mut u8,
        len: usize,
        mut try_move: bool,
    ) -> Result<(), RegionError> {
        let mut off = 0;
        while off < len {
            let (d, s, n) = (dst.wrapping_add(off), src.wrapping_add(off), len - off);
            let r = if try_move {
                // SAFETY: d..d+n is inside the registered region, in a chunk we hold BUSY, so
                // nobody else populates it; s..s+n is inside the staging buffer, which we own
                // exclusively (`&mut`), private anonymous, and no reference into it is alive
                // across this call.
                unsafe { u.uffd.move_pages(d, s, n) }
            } else {
                // SAFETY: as above for d; s..s+n is readable staging memory.
                unsafe { u.uffd.copy(d, s, n) }
            };
            let counter = if try_move { &self.moved } else { &self.copied };
            match r {
                Ok(()) => {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    off = len;
                }
                Err(UffdError::Op { done, errno, .. }) => {
                    counter.fetch_add(done as u64, Ordering::Relaxed);
                    off += done;
                    if errno == Errno::EXIST {
                        // Already populated (a retried publish): keep what is there.
                        self.existing_pages.fetch_add(1, Ordering::Relaxed);
                        off += self.page;
                    } else if try_move
                        && (errno == Errno::BUSY || errno == Errno::NOENT || errno == Errno::INVAL)
                    {
                        self.move_fallbacks.fetch_add(1, Ordering::Relaxed);
                        try_move = false;
                    } else {
                        return Err(RegionError::Uffd(UffdError::Op {
                            op: if try_move {
                                uffd::Op::Move
                            } else {
                                uffd::Op::Copy
                            },
                            done: off,
                            len,
                            errno,
                        }));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn fill_zero(&self, u: &UffdState, dst: *mut u8, len: usize) -> Result<(), RegionError> {
        let mut off = 0;
        while off < len {
            // SAFETY: inside the registered region, in a chunk we hold BUSY.
            match unsafe { u.uffd.zeropage(dst.wrapping_add(off), len - off) } {
                Ok(()) => {
                    self.zeroed.fetch_add((len - off) as u64, Ordering::Relaxed);
                    off = len;
                }
                Err(UffdError::Op {
                    done,
                    errno: Errno::EXIST,
                    ..
                }) => {
                    self.zeroed.fetch_add(done as u64, Ordering::Relaxed);
                    self.existing_pages.fetch_add(1, Ordering::Relaxed);
                    off += done + self.page;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Mark `chunk` failed with `errno` (e.g. `EIO`, `ECANCELED`): [`LazyRegion::wait_range`]
    /// reports it, and its pages are poisoned with `UFFDIO_POISON` so that a raw touch raises
    /// `SIGBUS` (threads already blocked on them are woken and get it).
    ///
    /// Fallbacks: without POISON (Linux < 6.6) the chunk's pages are made `PROT_NONE` and the
    /// blocked threads woken, so a raw touch raises `SIGSEGV`. Pages already populated by a
    /// half-failed publish stay readable. In Checked mode only the errno is recorded (the raw
    /// view is refused anyway). Never are the pages silently zero-filled.
    ///
    /// The chunk is marked failed even when this returns an error
    /// ([`RegionError::PoisonFailed`]: raw touches may then block until the region is dropped).
    #[cfg(test)]
    pub fn poison(&self, chunk: usize, errno: Errno) -> Result<(), RegionError> {
        let Some(state) = self.states.get(chunk) else {
            return Err(RegionError::ChunkOutOfRange {
                chunk,
                chunks: self.chunk_count(),
            });
        };
        if let Err(s) = state.compare_exchange(PENDING, BUSY, Ordering::Acquire, Ordering::Acquire)
        {
            return Err(RegionError::AlreadyResolved {
                chunk,
                state: state_of(s),
            });
        }
        let result = self.poison_claimed(chunk..chunk + 1, errno);
        self.resolved();
        result
    }

    /// Fails every chunk of `chunks` that is still pending, with `errno` (see `poison` for
    /// what a failed chunk is and the fallbacks), poisoning each run of them with one
    /// ioctl and waking the waiters once: canceling a long region costs a pass over its
    /// chunk states, not an ioctl per chunk. Chunks already resolved (or being published)
    /// are left alone. Returns how many chunks it failed, or the first poisoning error
    /// (the chunks are marked failed all the same, see [`RegionError::PoisonFailed`]).
    pub fn poison_range(&self, chunks: Range<usize>, errno: Errno) -> Result<usize, RegionError> {
        let mut failed = 0;
        let mut first_err = Ok(());
        self.claim_runs(chunks, |run| {
            failed += run.len();
            let r = self.poison_claimed(run, errno);
            if first_err.is_ok() {
                first_err = r;
            }
        });
        if failed > 0 {
            self.resolved();
        }
        first_err.map(|()| failed)
    }

    /// Calls `f` with each maximal run of consecutive chunks of `chunks` that this call
    /// claimed (PENDING -> BUSY). `f` must resolve every chunk of the run.
    fn claim_runs(&self, chunks: Range<usize>, mut f: impl FnMut(Range<usize>)) {
        let end = chunks.end.min(self.chunk_count());
        let mut run: Option<usize> = None;
        for c in chunks.start..end {
            let claimed = self.states[c]
                .compare_exchange(PENDING, BUSY, Ordering::Acquire, Ordering::Acquire)
                .is_ok();
            match (claimed, run) {
                (true, None) => run = Some(c),
                (false, Some(s)) => {
                    f(s..c);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            f(s..end);
        }
    }

    /// The bytes of the mapping behind the chunks `run`, in whole pages (the short tail of
    /// the region's last chunk rounded up).
    fn span_of(&self, run: &Range<usize>) -> Range<usize> {
        let start = self.chunk_range(run.start).start;
        let end = round_up(self.chunk_range(run.end - 1).end, self.page);
        start..end
    }

    /// Poisons the chunks of `run`, all claimed BUSY by the caller, and marks them failed
    /// with `errno`. The caller calls `resolved` afterwards.
    fn poison_claimed(&self, run: Range<usize>, errno: Errno) -> Result<(), RegionError> {
        let span = self.span_of(&run);
        // SAFETY: inside the mapping (a span ends at most at the region's length rounded up
        // to a page, which the mapping covers).
        let dst = unsafe { self.map.ptr.as_ptr().add(span.start) };
        let len = span.len();
        let result = match &self.uffd {
            _ if self.abandoned.load(Ordering::Acquire) => Ok(()),
            None => Ok(()),
            Some(u) => {
                let mut r = Err(UffdError::MissingFeatures {
                    missing: Features::POISON,
                });
                if u.can_poison {
                    r = self.poison_pages(u, dst, len);
                }
                if r.is_err() {
                    r = self.protect_none(u, dst, len);
                }
                r.map_err(|error| RegionError::PoisonFailed {
                    chunk: run.start,
                    error,
                })
            }
        };
        // Linux errnos are below 4096 (MAX_ERRNO); anything else is not one.
        let raw = u16::try_from(errno.raw_os_error()).unwrap_or(libc::EIO as u16);
        for c in run.clone() {
            self.errnos[c].store(raw, Ordering::Relaxed);
            self.states[c].store(FAILED, Ordering::Release);
        }
        self.failed.fetch_add(run.len(), Ordering::AcqRel);
        result
    }

    /// Resolves every still-pending chunk from `first` to the end of the region as zeros,
    /// without reading or populating them: the file ended before them. In Uffd mode their
    /// pages are unregistered (threads blocked on them are woken) and then read as the
    /// kernel's zero page, so no page table is filled for them; in Checked mode they are
    /// still the mapping's initial zeros. Returns how many chunks it resolved. Chunks
    /// already resolved or being published are left alone.
    pub fn publish_zeros_to_end(&self, first: usize) -> usize {
        let mut n = 0;
        self.claim_runs(first..self.chunk_count(), |run| {
            n += run.len();
            self.zero_claimed(run);
        });
        if n > 0 {
            self.resolved();
        }
        n
    }

    fn zero_claimed(&self, run: Range<usize>) {
        let span = self.span_of(&run);
        // SAFETY: inside the mapping (see `poison_claimed`).
        let dst = unsafe { self.map.ptr.as_ptr().add(span.start) };
        let len = span.len();
        let result = match &self.uffd {
            _ if self.abandoned.load(Ordering::Acquire) => Ok(()),
            None => Ok(()),
            Some(u) => {
                let reg = u.registered.lock().unwrap_or_else(|e| e.into_inner());
                if *reg {
                    // SAFETY: the range is inside our mapping and belongs to chunks we hold
                    // BUSY, never populated: once unregistered they read as zeros, which
                    // is what they hold (the file ended before them).
                    unsafe { u.uffd.unregister(dst, len) }
                        .map_err(RegionError::from)
                        .or_else(|_| self.fill_zero(u, dst, len))
                } else {
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => {
                for c in run.clone() {
                    self.states[c].store(PUBLISHED, Ordering::Release);
                }
                self.published.fetch_add(run.len(), Ordering::AcqRel);
            }
            Err(e) => {
                // Neither unregistering nor zero-filling worked: fail the chunks rather
                // than leave a toucher blocked on them.
                tracing::warn!(error = %e, "LazyRead: resolving chunks past end of file failed");
                let errno = match &e {
                    RegionError::Uffd(u) => u.errno(),
                    _ => None,
                };
                let _ = self.poison_claimed(run, errno.unwrap_or(Errno::IO));
            }
        }
    }

    fn poison_pages(&self, u: &UffdState, dst: *mut u8, len: usize) -> Result<(), UffdError> {
        let mut off = 0;
        while off < len {
            // SAFETY: inside the registered region, in a chunk we hold BUSY.
            match unsafe { u.uffd.poison(dst.wrapping_add(off), len - off) } {
                Ok(()) => off = len,
                Err(UffdError::Op {
                    done,
                    errno: Errno::EXIST,
                    ..
                }) => off += done + self.page,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn protect_none(&self, u: &UffdState, dst: *mut u8, len: usize) -> Result<(), UffdError> {
        // SAFETY: the pages belong to a chunk we hold BUSY inside our mapping; nobody holds a
        // checked reference to them (not published), raw-view readers will fault (SIGSEGV),
        // which is the documented behaviour of a failed chunk without POISON.
        unsafe { rustix::mm::mprotect(dst.cast(), len, MprotectFlags::empty()) }.map_err(
            |errno| UffdError::Op {
                op: uffd::Op::Poison,
                done: 0,
                len,
                errno,
            },
        )?;
        u.uffd.wake(dst, len)
    }

    /// Declares that nothing will read the region again (its last reader is gone): chunks
    /// resolved from now on are only marked, not populated or poisoned, which spares the
    /// page-table work of poisoning a large canceled region. Touching an unresolved page
    /// afterwards would read zeros once the region is unregistered, so call this only when
    /// no reference into the region can exist.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// A chunk reached PUBLISHED or FAILED: wake waiters, unregister when everything is
    /// resolved.
    fn resolved(&self) {
        // Pairs with the fence in `wait_until` (Dekker): either the waiter sees the new state,
        // or we see its registration in `waiters` and wake it.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            let _ = rustix::thread::futex::wake(
                &self.epoch,
                rustix::thread::futex::Flags::PRIVATE,
                u32::MAX,
            );
        }
        if self.is_complete() {
            self.unregister_once();
        }
    }

    fn unregister_once(&self) {
        if self.complete_unregistered.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(u) = &self.uffd {
            let mut reg = u.registered.lock().unwrap_or_else(|e| e.into_inner());
            if *reg {
                // SAFETY: every chunk is resolved (populated or poisoned/PROT_NONE), so no page
                // of the data changes meaning; only the unreachable tail past `len` would now
                // fault in zeros.
                let _ = unsafe { u.uffd.unregister(self.map.ptr.as_ptr(), self.map.len) };
                *reg = false;
            }
        }
    }

    /// Scan the chunks of `range`: Some(Ok) if all published, Some(Err) on the first failure or
    /// a bad range, None if some are still pending.
    fn scan(&self, range: &Range<usize>) -> Option<Result<&[u8], ChunkError>> {
        if range.start > range.end || range.end > self.len {
            return Some(Err(ChunkError::OutOfBounds {
                start: range.start,
                end: range.end,
                len: self.len,
            }));
        }
        let mut pending = false;
        for c in self.chunks_of(range.clone()) {
            match self.states[c].load(Ordering::Acquire) {
                PUBLISHED => {}
                FAILED => {
                    let raw = self.errnos[c].load(Ordering::Relaxed);
                    let errno = Errno::from_raw_os_error(raw.into());
                    return Some(Err(ChunkError::Failed { chunk: c, errno }));
                }
                _ => pending = true,
            }
        }
        if pending {
            return None;
        }
        // SAFETY: in bounds; every chunk covering the range is PUBLISHED (Acquire above pairs
        // with the Release in publish), so its bytes are final and never written again.
        Some(Ok(unsafe {
            std::slice::from_raw_parts(self.map.ptr.as_ptr().add(range.start), range.len())
        }))
    }

    /// The bytes of `range` if every chunk covering it is published; `Some(Err)` if one of them
    /// failed (the lowest) or the range is out of bounds; `None` if some are still pending.
    /// Never blocks.
    pub fn try_range(&self, range: Range<usize>) -> Option<Result<&[u8], ChunkError>> {
        self.scan(&range)
    }

    /// Block until every chunk covering `range` is published (then its bytes), or until one of
    /// them fails (then the lowest failed chunk's errno, without waiting for the others).
    /// Works in both modes.
    pub fn wait_range(&self, range: Range<usize>) -> Result<&[u8], ChunkError> {
        match self.wait_until(&range, None) {
            Some(r) => r,
            None => unreachable!("no deadline"),
        }
    }

    /// [`LazyRegion::wait_range`] with a timeout: `Ok(None)` if still pending after `timeout`.
    #[cfg(test)]
    pub fn wait_range_timeout(
        &self,
        range: Range<usize>,
        timeout: std::time::Duration,
    ) -> Result<Option<&[u8]>, ChunkError> {
        match self.wait_until(&range, Some(Instant::now() + timeout)) {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }

    /// Block until every chunk is resolved, unregister the region, and return the whole region
    /// or the first failure.
    #[cfg(test)]
    pub fn finish(&self) -> Result<&[u8], ChunkError> {
        let all = 0..self.len;
        loop {
            if self.is_complete() {
                self.unregister_once();
                return self.scan(&all).unwrap_or_else(|| unreachable!("complete"));
            }
            // Wait for any change, then re-check completeness.
            let seen = self.epoch.load(Ordering::SeqCst);
            self.waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.is_complete() {
                let _ = rustix::thread::futex::wait(
                    &self.epoch,
                    rustix::thread::futex::Flags::PRIVATE,
                    seen,
                    None,
                );
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn wait_until(
        &self,
        range: &Range<usize>,
        deadline: Option<Instant>,
    ) -> Option<Result<&[u8], ChunkError>> {
        loop {
            if let Some(r) = self.scan(range) {
                return Some(r);
            }
            let seen = self.epoch.load(Ordering::SeqCst);
            self.waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if let Some(r) = self.scan(range) {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return Some(r);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.waiters.fetch_sub(1, Ordering::SeqCst);
                        return None;
                    }
                    Some(rustix::thread::futex::Timespec {
                        tv_sec: left.as_secs() as _,
                        tv_nsec: left.subsec_nanos() as _,
                    })
                }
            };
            // EAGAIN (epoch moved), EINTR and ETIMEDOUT all mean: re-scan.
            let _ = rustix::thread::futex::wait(
                &self.epoch,
                rustix::thread::futex::Flags::PRIVATE,
                seen,
                timeout.as_ref(),
            );
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for LazyRegion {
    fn drop(&mut self) {
        // `&mut self`: no reference into the region is alive, so no thread can be reading it
        // (through the safe API). Unregister explicitly, then the fields drop in order: the
        // userfaultfd is closed (waking any fault still queued), then the mapping is unmapped.
        if let Some(u) = &mut self.uffd {
            let reg = u.registered.get_mut().unwrap_or_else(|e| e.into_inner());
            if *reg {
                // SAFETY: we own the range and nobody references it.
                let _ = unsafe { u.uffd.unregister(self.map.ptr.as_ptr(), self.map.len) };
                *reg = false;
            }
        }
    }
}

impl fmt::Debug for LazyRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, fl, t) = self.progress();
        f.debug_struct("LazyRegion")
            .field("ptr", &self.map.ptr)
            .field("len", &self.len)
            .field("chunk_size", &self.chunk_size)
            .field("mode", &self.mode())
            .field("published", &p)
            .field("failed", &fl)
            .field("chunks", &t)
            .finish()
    }
}

/// Whether transparent huge pages can back a `MADV_HUGEPAGE` mapping (sysfs `enabled` is
/// `[always]` or `[madvise]`).
pub fn thp_enabled() -> bool {
    static THP: OnceLock<bool> = OnceLock::new();
    *THP.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|s| s.contains("[always]") || s.contains("[madvise]"))
            .unwrap_or(false)
    })
}

fn open_registered(map: &Mapping) -> Result<(Uffd, u64), UffdError> {
    let u = Uffd::open(Features::MOVE.union(Features::POISON), Features::empty())?;
    // SAFETY: the mapping is ours, anonymous, page aligned, and nothing has touched it yet.
    let ioctls = unsafe { u.register_missing(map.ptr.as_ptr(), map.len) }?;
    Ok((u, ioctls))
}

fn probe_uncached() -> LazyAvailability {
    let unusable = |reason: String| LazyAvailability {
        mode: LazyMode::Checked,
        usable: false,
        source: None,
        can_move: false,
        can_poison: false,
        reason: Some(reason),
    };
    let map = match Mapping::new(HUGE_PAGE, HUGE_PAGE, true, true) {
        Ok(m) => m,
        Err(e) => return unusable(format!("mmap: {e}")),
    };
    match open_registered(&map) {
        Ok((u, ioctls)) => LazyAvailability {
            mode: LazyMode::Uffd,
            usable: true,
            source: Some(u.source()),
            can_move: ioctls & uffd::RANGE_IOCTL_MOVE != 0 && u.enabled().contains(Features::MOVE),
            can_poison: ioctls & uffd::RANGE_IOCTL_POISON != 0
                && u.enabled().contains(Features::POISON),
            reason: None,
        },
        Err(e) => unusable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Duration;

    const CHILD_ENV: &str = "QUELL_LAZY_REGION_CHILD";

    fn uffd_ok() -> bool {
        let a = LazyRegion::probe();
        if !a.usable {
            eprintln!("SKIP: userfaultfd unavailable: {:?}", a.reason);
        }
        a.usable
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Stage `data[chunk][..valid]`, dirty the rest of the staging buffer, publish.
    fn publish_from(region: &LazyRegion, chunk: usize, data: &[u8], valid: usize) -> StagingBuf {
        let r = region.chunk_range(chunk);
        let mut st = region.new_staging().unwrap();
        st[..valid].copy_from_slice(&data[r.start..r.start + valid]);
        st[valid..].fill(0xEE);
        region.publish(chunk, st, valid).unwrap()
    }

    /// The expected content when chunk `c` was published with `valid[c]` bytes.
    fn expected(region: &LazyRegion, data: &[u8], valid: &[usize]) -> Vec<u8> {
        let mut e = data.to_vec();
        for (c, &v) in valid.iter().enumerate() {
            let r = region.chunk_range(c);
            e[r.start + v..r.end].fill(0);
        }
        e
    }

    fn thread_state(tid: i32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.chars().next().unwrap()
    }

    /// Touch one byte through a raw pointer so the compiler cannot elide or reorder it.
    fn touch(s: &[u8], at: usize) -> u8 {
        assert!(at < s.len());
        // SAFETY: in bounds of a live slice.
        unsafe { std::ptr::read_volatile(s.as_ptr().add(at)) }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    fn map_lines() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn probe_reports() {
        let a = LazyRegion::probe();
        eprintln!("availability: {a:?}");
        if a.usable {
            assert!(a.source.is_some() && a.reason.is_none());
        } else {
            assert!(a.reason.is_some());
        }
    }

    #[test]
    fn raw_reader_blocks_until_its_chunk_is_published() {
        if !uffd_ok() {
            return;
        }
        let chunk = HUGE_PAGE;
        let len = 3 * chunk + 5000;
        let region = Arc::new(LazyRegion::new(len, chunk, LazyMode::Uffd).unwrap());
        assert_eq!(region.chunk_count(), 4);
        let data = pattern(len, 1);
        for c in [2, 0, 1] {
            publish_from(&region, c, &data, region.chunk_range(c).len());
        }
        let (tx, rx) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let (r2, d2) = (region.clone(), done.clone());
        let reader = thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let s = r2.as_slice().unwrap();
            let v = touch(s, s.len() - 1);
            d2.store(true, Ordering::SeqCst);
            v
        });
        let tid = rx.recv().unwrap();
        thread::sleep(Duration::from_millis(150));
        assert!(
            !done.load(Ordering::SeqCst),
            "reader got past an unpublished page"
        );
        assert_eq!(thread_state(tid), 'S', "reader should sleep in the fault");
        // The published chunks are readable meanwhile, from this thread.
        assert_eq!(touch(region.as_slice().unwrap(), 0), data[0]);
        assert_eq!(region.try_range(len - 1..len), None);
        publish_from(&region, 3, &data, region.chunk_range(3).len());
        assert_eq!(reader.join().unwrap(), data[len - 1]);
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(region.as_slice().unwrap(), &data[..]);
        assert!(region.is_complete());
        assert_eq!(region.progress(), (4, 0, 4));
    }

    #[test]
    fn wait_range_blocks_then_returns_bytes() {
        let len = 2 * HUGE_PAGE + 77;
        let region = Arc::new(LazyRegion::new(len, HUGE_PAGE, LazyMode::Auto).unwrap());
        let data = pattern(len, 2);
        let r2 = region.clone();
        let waiter = thread::spawn(move || {
            r2.wait_range(HUGE_PAGE - 10..HUGE_PAGE + 10)
                .map(|s| s.to_vec())
        });
        assert_eq!(
            region.wait_range_timeout(0..1, Duration::from_millis(100)),
            Ok(None)
        );
        publish_from(&region, 1, &data, HUGE_PAGE);
        thread::sleep(Duration::from_millis(100));
        assert!(
            !waiter.is_finished(),
            "waiter returned with chunk 0 pending"
        );
        publish_from(&region, 0, &data, HUGE_PAGE);
        assert_eq!(
            waiter.join().unwrap().unwrap(),
            &data[HUGE_PAGE - 10..HUGE_PAGE + 10]
        );
        assert_eq!(region.try_range(len - 1..len), None);
        assert_eq!(
            region.try_range(0..len + 1),
            Some(Err(ChunkError::OutOfBounds {
                start: 0,
                end: len + 1,
                len
            }))
        );
    }

    fn odd_sizes_case(mode: LazyMode, force_copy: bool, chunk_size: usize, len: usize) {
        let region = LazyRegion::with_options(
            len,
            Options {
                chunk_size,
                mode,
                force_copy,
                ..Options::default()
            },
        )
        .unwrap();
        let n = region.chunk_count();
        let data = pattern(len, len as u64 ^ chunk_size as u64);
        let mut valid: Vec<usize> = (0..n).map(|c| region.chunk_range(c).len()).collect();
        // Short reads: one mid-page, one page aligned, one empty, and a short last chunk.
        valid[1] = 10_001.min(valid[1]);
        valid[2] = 2 * page_size();
        valid[3] = 0;
        valid[n - 1] = valid[n - 1] / 2 + 1;
        for c in (0..n).rev() {
            let st = publish_from(&region, c, &data, valid[c]);
            assert!(st.len() >= chunk_size);
        }
        let want = expected(&region, &data, &valid);
        let got = region.wait_range(0..len).unwrap();
        assert!(
            got == &want[..],
            "content mismatch ({mode:?}, copy={force_copy}, chunk={chunk_size}, len={len})"
        );
        if region.mode() == LazyMode::Uffd {
            assert!(region.as_slice().unwrap() == &want[..]);
        }
        let st = region.stats();
        eprintln!("{mode:?} copy={force_copy} chunk={chunk_size} len={len}: {st:?}");
        if region.mode() == LazyMode::Uffd {
            assert!(st.zeroed > 0, "EOF tails should be mapped with ZEROPAGE");
            if force_copy || !region.uses_move() || chunk_size < DEFAULT_MOVE_THRESHOLD {
                assert_eq!(st.moved, 0);
            } else {
                assert!(st.moved > 0, "MOVE path not taken");
                assert!(st.copied > 0, "COPY path for small pieces not taken");
            }
        }
        assert_eq!(region.finish().unwrap().len(), len);
    }

    #[test]
    fn odd_sizes_move_copy_checked() {
        let uffd = uffd_ok();
        for &(chunk, len) in &[
            (64 << 10, 1_000_003),
            (HUGE_PAGE, 5 * HUGE_PAGE + 123),
            (3 * page_size(), 20 * page_size() + 1),
        ] {
            odd_sizes_case(LazyMode::Checked, false, chunk, len);
            if uffd {
                odd_sizes_case(LazyMode::Uffd, false, chunk, len);
                odd_sizes_case(LazyMode::Uffd, true, chunk, len);
            }
        }
    }

    #[test]
    fn move_path_is_used_for_full_huge_chunks() {
        if !uffd_ok() || !LazyRegion::probe().can_move {
            eprintln!("SKIP: no UFFDIO_MOVE");
            return;
        }
        let len = 4 * HUGE_PAGE;
        let region = LazyRegion::new(len, HUGE_PAGE, LazyMode::Uffd).unwrap();
        let data = pattern(len, 3);
        for c in 0..4 {
            publish_from(&region, c, &data, HUGE_PAGE);
        }
        let st = region.stats();
        assert_eq!(st.moved, len as u64);
        assert_eq!((st.copied, st.move_fallbacks), (0, 0));
        assert!(region.as_slice().unwrap() == &data[..]);
    }

    #[test]
    fn move_falls_back_to_copy_on_ebusy() {
        if !uffd_ok() || !LazyRegion::probe().can_move {
            eprintln!("SKIP: no UFFDIO_MOVE");
            return;
        }
        let region = LazyRegion::new(HUGE_PAGE, HUGE_PAGE, LazyMode::Uffd).unwrap();
        let data = pattern(HUGE_PAGE, 4);
        // A staging buffer that fork shares: its pages lose PageAnonExclusive, so MOVE says EBUSY.
        let mut st = StagingBuf::with_options(HUGE_PAGE, true, false).unwrap();
        st.copy_from_slice(&data);
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: async-signal-safe exit of the child.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        region.publish(0, st, HUGE_PAGE).unwrap();
        let s = region.stats();
        eprintln!("after fork: {s:?}");
        assert!(s.move_fallbacks >= 1, "expected an EBUSY fallback: {s:?}");
        assert!(s.copied > 0);
        assert!(region.as_slice().unwrap() == &data[..]);
    }

    #[test]
    fn checked_mode_waits_and_refuses_raw_view() {
        let len = 3 * HUGE_PAGE - 1;
        let region = Arc::new(LazyRegion::new(len, HUGE_PAGE, LazyMode::Checked).unwrap());
        assert_eq!(region.mode(), LazyMode::Checked);
        assert!(matches!(
            region.as_slice(),
            Err(RegionError::RawViewUnavailable)
        ));
        let data = pattern(len, 5);
        let r2 = region.clone();
        let waiter = thread::spawn(move || r2.wait_range(len - 100..len).map(|s| s.to_vec()));
        thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished());
        publish_from(&region, 2, &data, HUGE_PAGE - 1);
        assert_eq!(waiter.join().unwrap().unwrap(), &data[len - 100..]);
        assert!(matches!(
            region.as_slice(),
            Err(RegionError::RawViewUnavailable)
        ));
        publish_from(&region, 0, &data, HUGE_PAGE);
        region.poison(1, Errno::IO).unwrap();
        assert_eq!(
            region.wait_range(0..len),
            Err(ChunkError::Failed {
                chunk: 1,
                errno: Errno::IO
            })
        );
        assert!(matches!(
            region.as_slice(),
            Err(RegionError::RawViewUnavailable)
        ));
        assert_eq!(region.wait_range(0..HUGE_PAGE).unwrap(), &data[..HUGE_PAGE]);
    }

    #[test]
    fn checked_mode_full_raw_view_after_completion() {
        let len = HUGE_PAGE + 3;
        let region = LazyRegion::new(len, HUGE_PAGE, LazyMode::Checked).unwrap();
        let data = pattern(len, 6);
        publish_from(&region, 1, &data, 3);
        publish_from(&region, 0, &data, HUGE_PAGE);
        assert!(region.as_slice().unwrap() == &data[..]);
    }

    #[test]
    fn bad_publish_returns_the_staging_buffer() {
        let region = LazyRegion::new(HUGE_PAGE + 1, HUGE_PAGE, LazyMode::Auto).unwrap();
        let st = region.new_staging().unwrap();
        let ptr = st.as_ptr();
        let e = region.publish(5, st, 0).unwrap_err();
        assert!(matches!(
            e.error,
            RegionError::ChunkOutOfRange {
                chunk: 5,
                chunks: 2
            }
        ));
        let e = region.publish(1, e.staging, 2).unwrap_err();
        assert!(matches!(e.error, RegionError::BadValid { .. }));
        let st = region.publish(1, e.staging, 1).unwrap();
        assert_eq!(st.as_ptr(), ptr);
        let e = region.publish(1, st, 1).unwrap_err();
        assert!(matches!(
            e.error,
            RegionError::AlreadyResolved {
                chunk: 1,
                state: ChunkState::Published
            }
        ));
        assert!(matches!(
            region.poison(1, Errno::IO),
            Err(RegionError::AlreadyResolved { .. })
        ));
        assert!(matches!(
            LazyRegion::new(10, 1000, LazyMode::Checked),
            Err(RegionError::InvalidChunkSize { .. })
        ));
        assert!(matches!(
            LazyRegion::new(0, HUGE_PAGE, LazyMode::Checked),
            Err(RegionError::InvalidLength(0))
        ));
    }

    #[test]
    fn zeros_to_the_end_wake_blocked_readers_without_populating() {
        for mode in [LazyMode::Uffd, LazyMode::Checked] {
            if mode == LazyMode::Uffd && !uffd_ok() {
                continue;
            }
            let len = 4 * HUGE_PAGE - 100;
            let region = Arc::new(LazyRegion::new(len, HUGE_PAGE, mode).unwrap());
            let data = pattern(len, 11);
            publish_from(&region, 0, &data, HUGE_PAGE);
            let r2 = region.clone();
            let waiter = thread::spawn(move || r2.wait_range(len - 10..len).map(|s| s.to_vec()));
            let toucher = (mode == LazyMode::Uffd).then(|| {
                let r3 = region.clone();
                thread::spawn(move || touch(r3.as_slice().unwrap(), 3 * HUGE_PAGE + 5))
            });
            thread::sleep(Duration::from_millis(100));
            assert!(!waiter.is_finished());
            // Chunk 1 is being read elsewhere: left alone.
            let st = region.new_staging().unwrap();
            assert_eq!(region.publish_zeros_to_end(2), 2);
            assert_eq!(waiter.join().unwrap().unwrap(), vec![0u8; 10]);
            if let Some(t) = toucher {
                assert_eq!(t.join().unwrap(), 0);
            }
            assert_eq!(region.progress(), (3, 0, 4));
            assert_eq!(region.publish_zeros_to_end(2), 0, "nothing left to resolve");
            publish_from(&region, 1, &data, HUGE_PAGE);
            drop(st);
            let mut want = data[..2 * HUGE_PAGE].to_vec();
            want.resize(len, 0);
            assert!(region.finish().unwrap() == &want[..]);
            assert_eq!(
                region.stats().zeroed,
                0,
                "nothing past the end was populated"
            );
        }
    }

    #[test]
    fn poison_range_fails_pending_chunks_in_one_pass() {
        for mode in [LazyMode::Uffd, LazyMode::Checked] {
            if mode == LazyMode::Uffd && !uffd_ok() {
                continue;
            }
            let chunk = 4 * page_size();
            let len = 64 * chunk + 1;
            let region = LazyRegion::new(len, chunk, mode).unwrap();
            let data = pattern(len, 12);
            publish_from(&region, 3, &data, chunk);
            region.poison(5, Errno::IO).unwrap();
            assert_eq!(
                region.poison_range(2..usize::MAX, Errno::CANCELED).unwrap(),
                63 - 2
            );
            assert_eq!(region.poison_range(0..70, Errno::CANCELED).unwrap(), 2);
            assert_eq!(region.progress(), (1, 64, 65));
            assert!(region.is_complete());
            let failed = |c: usize| region.try_range(c * chunk..c * chunk + 1);
            assert_eq!(
                failed(5),
                Some(Err(ChunkError::Failed {
                    chunk: 5,
                    errno: Errno::IO
                }))
            );
            assert_eq!(
                failed(64),
                Some(Err(ChunkError::Failed {
                    chunk: 64,
                    errno: Errno::CANCELED
                }))
            );
            assert_eq!(
                failed(0),
                Some(Err(ChunkError::Failed {
                    chunk: 0,
                    errno: Errno::CANCELED
                }))
            );
            assert!(
                region.try_range(3 * chunk..4 * chunk).unwrap().unwrap()
                    == &data[3 * chunk..4 * chunk]
            );
        }
    }

    #[test]
    fn poison_reports_errno_and_keeps_other_chunks() {
        for mode in [LazyMode::Uffd, LazyMode::Checked] {
            if mode == LazyMode::Uffd && !uffd_ok() {
                continue;
            }
            let len = 3 * HUGE_PAGE;
            let region = LazyRegion::new(len, HUGE_PAGE, mode).unwrap();
            let data = pattern(len, 7);
            publish_from(&region, 0, &data, HUGE_PAGE);
            region.poison(1, Errno::IO).unwrap();
            assert_eq!(
                region.try_range(HUGE_PAGE..HUGE_PAGE + 1),
                Some(Err(ChunkError::Failed {
                    chunk: 1,
                    errno: Errno::IO
                }))
            );
            // A failure is reported without waiting for chunk 2, still pending.
            assert_eq!(
                region.wait_range(0..len),
                Err(ChunkError::Failed {
                    chunk: 1,
                    errno: Errno::IO
                })
            );
            publish_from(&region, 2, &data, HUGE_PAGE);
            assert_eq!(region.progress(), (2, 1, 3));
            assert!(region.is_complete());
            assert!(region.wait_range(0..HUGE_PAGE).unwrap() == &data[..HUGE_PAGE]);
            assert!(region.wait_range(2 * HUGE_PAGE..len).unwrap() == &data[2 * HUGE_PAGE..]);
            assert_eq!(
                region.finish(),
                Err(ChunkError::Failed {
                    chunk: 1,
                    errno: Errno::IO
                })
            );
        }
    }

    fn run_child(which: &str) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        let path = module_path!();
        let path = &path[path.find("::").unwrap() + 2..];
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("{path}::poison_child"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, which)
            .output()
            .unwrap();
        eprintln!(
            "child {which}: {:?} (signal {:?})\n{}{}",
            out.status,
            out.status.signal(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status
    }

    #[test]
    fn poisoned_page_touch_dies_with_sigbus() {
        use std::os::unix::process::ExitStatusExt;
        if !uffd_ok() {
            return;
        }
        if !LazyRegion::probe().can_poison {
            eprintln!("SKIP: no UFFDIO_POISON");
        } else {
            // A thread already blocked on the page is woken by the poison and gets SIGBUS.
            assert_eq!(run_child("blocked").signal(), Some(libc::SIGBUS));
            // A touch after the poison (and after the region was unregistered) gets SIGBUS.
            assert_eq!(run_child("after").signal(), Some(libc::SIGBUS));
            // A run of chunks poisoned at once (a cancel): a thread blocked in its last
            // chunk is woken and gets SIGBUS.
            assert_eq!(run_child("range").signal(), Some(libc::SIGBUS));
        }
        // Fallback without POISON: PROT_NONE, the blocked toucher gets SIGSEGV.
        assert_eq!(run_child("noposion").signal(), Some(libc::SIGSEGV));
    }

    /// Only does something when re-executed by `poisoned_page_touch_dies_with_sigbus`.
    #[test]
    fn poison_child() {
        let Ok(which) = std::env::var(CHILD_ENV) else {
            return;
        };
        let len = 3 * HUGE_PAGE;
        let region = Arc::new(
            LazyRegion::with_options(
                len,
                Options {
                    mode: LazyMode::Uffd,
                    force_no_poison: which == "noposion",
                    ..Options::default()
                },
            )
            .unwrap(),
        );
        let data = pattern(len, 8);
        publish_from(&region, 0, &data, HUGE_PAGE);
        if which == "range" {
            let r2 = region.clone();
            thread::spawn(move || touch(r2.as_slice().unwrap(), 2 * HUGE_PAGE + 4096));
            thread::sleep(Duration::from_millis(100));
            eprintln!("child: poisoning two chunks under a blocked toucher");
            assert_eq!(region.poison_range(1..3, Errno::CANCELED).unwrap(), 2);
            thread::sleep(Duration::from_secs(3));
            eprintln!("child: survived");
            std::process::exit(3);
        }
        publish_from(&region, 2, &data, HUGE_PAGE);
        if which == "after" {
            region.poison(1, Errno::IO).unwrap();
            assert!(region.is_complete());
            eprintln!("child: touching poisoned page");
            touch(region.as_slice().unwrap(), HUGE_PAGE + 4096);
        } else {
            let r2 = region.clone();
            thread::spawn(move || touch(r2.as_slice().unwrap(), HUGE_PAGE + 4096));
            thread::sleep(Duration::from_millis(100));
            eprintln!("child: poisoning under a blocked toucher");
            region.poison(1, Errno::IO).unwrap();
            thread::sleep(Duration::from_secs(3));
        }
        eprintln!("child: survived");
        std::process::exit(3);
    }

    #[test]
    fn drop_with_unpublished_chunks_does_not_leak_or_hang() {
        let uffd = uffd_ok();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let fds = open_fds();
            let maps = map_lines();
            let data = pattern(8 * HUGE_PAGE + 1, 9);
            for i in 0..64 {
                let mode = if uffd && i % 2 == 0 {
                    LazyMode::Uffd
                } else {
                    LazyMode::Checked
                };
                let region = LazyRegion::new(8 * HUGE_PAGE + 1, HUGE_PAGE, mode).unwrap();
                publish_from(&region, 1, &data, HUGE_PAGE);
                if i % 3 == 0 {
                    region.poison(3, Errno::CANCELED).unwrap();
                }
                drop(region);
            }
            tx.send((
                open_fds() as isize - fds as isize,
                map_lines() as isize - maps as isize,
            ))
            .unwrap();
        });
        let (dfd, dmaps) = rx.recv_timeout(Duration::from_secs(30)).expect("drop hung");
        eprintln!("fd delta {dfd}, maps delta {dmaps}");
        // Other tests run concurrently: allow some noise, far below one leak per iteration.
        assert!(dfd < 24, "fd leak: {dfd}");
        assert!(dmaps < 24, "mapping leak: {dmaps}");
    }

    /// `cargo test --release -- --ignored --nocapture publish_throughput`
    #[test]
    #[ignore]
    fn publish_throughput() {
        const TOTAL: usize = 256 << 20;
        let rounds = 3;
        let chunk = HUGE_PAGE;
        let mut staging = StagingBuf::new(chunk).unwrap();
        let gbs = |d: Duration| TOTAL as f64 / d.as_secs_f64() / 1e9;
        for round in 0..rounds {
            for (name, force_copy, huge) in [
                ("move", false, true),
                ("copy", true, true),
                ("move-4k", false, false),
                ("copy-4k", true, false),
            ] {
                if !uffd_ok() {
                    break;
                }
                let region = LazyRegion::with_options(
                    TOTAL,
                    Options {
                        mode: LazyMode::Uffd,
                        force_copy,
                        force_move: true,
                        huge_pages: huge,
                        ..Options::default()
                    },
                )
                .unwrap();
                let mut staging = StagingBuf::with_options(chunk, huge, true).unwrap();
                let (mut publish, mut fill) = (Duration::ZERO, Duration::ZERO);
                for c in 0..region.chunk_count() {
                    let t = Instant::now();
                    staging.fill(c as u8 | 1);
                    fill += t.elapsed();
                    let t = Instant::now();
                    staging = region.publish(c, staging, chunk).unwrap();
                    publish += t.elapsed();
                }
                let huge = anon_huge_kb(region.as_ptr());
                println!(
                    "round {round} {name}: publish {:.2} GB/s, fill(staging)+publish {:.2} GB/s, region AnonHugePages {huge} kB, {:?}",
                    gbs(publish),
                    gbs(publish + fill),
                    region.stats()
                );
            }
            // memcpy into fresh (never touched) anonymous memory, THP advised.
            let dst = StagingBuf::new(TOTAL).unwrap();
            let (mut copy, mut fill) = (Duration::ZERO, Duration::ZERO);
            let base = dst.as_ptr() as *mut u8;
            for c in 0..TOTAL / chunk {
                let t = Instant::now();
                staging.fill(c as u8 | 1);
                fill += t.elapsed();
                let t = Instant::now();
                // SAFETY: c*chunk + chunk <= TOTAL; staging and dst do not overlap; dst is not
                // referenced elsewhere while we write (no slice of it is alive).
                unsafe {
                    std::ptr::copy_nonoverlapping(staging.as_ptr(), base.add(c * chunk), chunk)
                };
                copy += t.elapsed();
            }
            println!(
                "round {round} memcpy-fresh: {:.2} GB/s, fill+memcpy {:.2} GB/s, AnonHugePages {} kB",
                gbs(copy),
                gbs(copy + fill),
                anon_huge_kb(dst.as_ptr())
            );
        }
    }

    /// AnonHugePages (kB) of the mapping starting at `p`, from /proc/self/smaps.
    fn anon_huge_kb(p: *const u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let key = format!("{:x}-", p as usize);
        let mut found = false;
        for line in smaps.lines() {
            if line.starts_with(&key) {
                found = true;
            } else if found && line.starts_with("AnonHugePages:") {
                return line.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        0
    }
}
