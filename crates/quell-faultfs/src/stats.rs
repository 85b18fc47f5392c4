//! What the daemon saw.

use std::collections::BTreeMap;

/// A snapshot of what the daemon has seen since it was mounted.
///
/// ```no_run
/// use quell_faultfs::{FaultFs, FileSpec, Spec};
///
/// let fs = FaultFs::mount_temp(Spec::new().file(FileSpec::pattern("a", 4096)))?;
/// std::fs::read(fs.path("a"))?;
/// let s = fs.stats();
/// assert!(s.reads >= 1);
/// assert_eq!(s.files["a"].bytes_read, 4096);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests received, of any kind except `FUSE_INTERRUPT`, `FUSE_FORGET` and
    /// `FUSE_BATCH_FORGET`.
    pub requests: u64,
    /// `FUSE_READ` requests on files.
    pub reads: u64,
    /// `FUSE_WRITE` requests on files.
    pub writes: u64,
    /// `FUSE_OPEN` requests on files.
    pub opens: u64,
    /// `FUSE_INTERRUPT` requests received (whether or not they matched a waiting request).
    pub interrupts: u64,
    /// Requests answered `EINTR` because of an interrupt.
    pub interrupted: u64,
    /// Bytes returned by successful read replies.
    pub bytes_read: u64,
    /// Bytes accepted (stored and acknowledged) by write replies.
    pub bytes_written: u64,
    /// Hung requests answered by `release_all`.
    pub released: u64,
    /// Requests answered with an injected error (rules, `fail_parked`).
    pub injected_errors: u64,
    /// Requests hung (`Behavior::Hang`) right now.
    pub parked: usize,
    /// Requests sleeping in a `Behavior::Delay` right now.
    pub delayed: usize,
    /// Per-file counters, by file name.
    pub files: BTreeMap<String, FileStats>,
}

/// Per-file counters (see [`Stats`]).
///
/// ```no_run
/// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new()
/// #     .file(quell_faultfs::FileSpec::new("a", 1)))?;
/// let a = &fs.stats().files["a"];
/// println!("{} reads, {} bytes written, {} parked", a.reads, a.bytes_written, a.parked);
/// # Ok::<(), quell_faultfs::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStats {
    /// `FUSE_OPEN` requests.
    pub opens: u64,
    /// `FUSE_READ` requests.
    pub reads: u64,
    /// `FUSE_WRITE` requests.
    pub writes: u64,
    /// Requests answered `EINTR` because of an interrupt.
    pub interrupted: u64,
    /// Bytes returned by read replies.
    pub bytes_read: u64,
    /// Bytes accepted by write replies.
    pub bytes_written: u64,
    /// Requests hung right now.
    pub parked: usize,
    /// Current size in bytes.
    pub size: u64,
}
