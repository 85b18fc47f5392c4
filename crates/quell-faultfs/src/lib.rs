//! `quell-faultfs`: a FUSE filesystem for fault injection.
//!
//! Files that hang, are slow, fail, or transfer short counts at chosen byte ranges, for testing
//! cancellation and error paths against real kernel behaviour. Built on `polyfuse`, which hands
//! `FUSE_INTERRUPT` to the filesystem, so a hung request can be interrupted honestly: a read or
//! write that receives `FUSE_INTERRUPT` is answered `EINTR` (or with its real result if it
//! finished first).
//!
//! - Files are served with direct I/O (`FOPEN_DIRECT_IO`) so the page cache cannot hide a
//!   fault; a file can opt into the page cache with `cached = true`.
//! - Per byte range, reads and/or writes can `hang` (until released, interrupted, failed or
//!   torn down), be delayed, fail with `EIO`/`ENOSPC`/any errno, or transfer at most `n` bytes.
//!   For each request the first rule whose range overlaps the request applies, to the whole
//!   request (a read spanning a good prefix and an `eio` range gets `EIO` for all of it).
//! - Files are writable and kept in memory; the test can read back what writes produced.
//! - The test controls the daemon at run time ([`FaultFs::release_all`],
//!   [`FaultFs::fail_parked`], [`FaultFs::set_rules`], [`FaultFs::abort`]) and observes it
//!   ([`FaultFs::stats`], [`FaultFs::wait_parked`], [`FaultFs::wait_interrupts`]).
//!
//! System needs: `/dev/fuse`, a `fusermount` helper (Debian/Ubuntu package `fuse3`), and for
//! [`FaultFs::abort`] the fusectl filesystem at `/sys/fs/fuse/connections` (mounted
//! automatically when running as root).
//!
//! ```no_run
//! use std::time::Duration;
//! use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
//!
//! let spec = Spec::new()
//!     .file(FileSpec::pattern("ok.bin", 1 << 20))
//!     .file(FileSpec::pattern("slow.bin", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Delay { ms: 100 })))
//!     .file(FileSpec::pattern("bad.bin", 1 << 20).rule(Rule::read(65536..131072, Behavior::Eio)));
//! let fs = FaultFs::mount_temp(spec)?;
//! let err = std::fs::read(fs.path("bad.bin")).unwrap_err();
//! assert_eq!(err.raw_os_error(), Some(libc::EIO));
//! drop(fs); // unmounts, never hangs
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod daemon;
mod error;
mod fs;
mod mount;
mod signals;
mod spec;
mod stats;
mod store;

use std::path::Path;
use std::time::Duration;

pub use crate::error::Error;
pub use crate::fs::FaultFs;
pub use crate::spec::{
    fill_pattern, pattern_byte, Access, Behavior, Content, FileSpec, Rule, Spec,
};
pub use crate::stats::{FileStats, Stats};

/// Mount `spec` at `dir` and serve until SIGINT or SIGTERM, then unmount cleanly.
///
/// This is what `quell faultfs mount DIR --spec FILE` runs. While it runs, SIGINT and SIGTERM
/// handlers are installed process-wide (they only write to a self-pipe, so any thread may
/// receive the signal); the previous dispositions are restored before it returns. Only one
/// `run_foreground` may run at a time in a process. Returns [`Error::DaemonDied`] if the mount
/// disappears from outside (e.g. `umount -l DIR`).
///
/// ```no_run
/// use quell_faultfs::{run_foreground, Spec};
///
/// let spec = Spec::from_toml_file("crates/quell-faultfs/examples/spec.toml")?;
/// run_foreground("/mnt/faults".as_ref(), spec)?; // until Ctrl-C
/// # Ok::<(), quell_faultfs::Error>(())
/// ```
pub fn run_foreground(dir: &Path, spec: Spec) -> Result<(), Error> {
    let stop = signals::StopSignals::install()?;
    let fs = FaultFs::mount(dir, spec)?;
    tracing::info!("faultfs mounted at {}", fs.mountpoint().display());
    loop {
        match stop.wait(Duration::from_millis(200)) {
            Some(sig) => {
                tracing::info!("faultfs: got signal {sig}, unmounting");
                break;
            }
            None if !fs.is_alive() => {
                let mp = fs.mountpoint().to_owned();
                drop(fs);
                return Err(Error::DaemonDied(mp));
            }
            None => {}
        }
    }
    fs.unmount()
}
