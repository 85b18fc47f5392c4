//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in `quell-faultfs`.
///
/// Bad input (an invalid spec, an unknown file name) is reported with a typed error, never a panic.
///
/// ```
/// use quell_faultfs::{Error, Spec};
///
/// let err = Spec::from_toml_str("[[file]]\nname = \"\"\nsize = 1\n").unwrap_err();
/// assert!(matches!(err, Error::InvalidSpec(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec is syntactically valid TOML but describes something impossible.
    #[error("invalid faultfs spec: {0}")]
    InvalidSpec(String),

    /// The spec is not valid TOML or does not have the expected shape.
    #[error("cannot parse faultfs spec: {0}")]
    Toml(#[from] toml::de::Error),

    /// The spec file could not be read.
    #[error("cannot read spec file {path}: {source}")]
    ReadSpec {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// A file name that is not part of this filesystem.
    #[error("no file named {0:?} in this faultfs")]
    NoSuchFile(String),

    /// No `fusermount` helper was found (install the `fuse3` package).
    #[error(
        "no fusermount helper found (looked for {looked:?}); install the fuse3 package \
         (Debian/Ubuntu: apt-get install fuse3)"
    )]
    FusermountMissing {
        /// The paths that were tried.
        looked: Vec<PathBuf>,
    },

    /// `/dev/fuse` cannot be opened.
    #[error("/dev/fuse is not usable ({0}); load the fuse module or run the container with --device /dev/fuse")]
    DevFuse(io::Error),

    /// The mount point is missing or is not a directory.
    #[error("mount point {path} is not a usable directory: {reason}")]
    BadMountpoint {
        /// The mount point.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// Mounting failed.
    #[error("mounting faultfs at {path} failed: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What polyfuse / fusermount reported.
        source: io::Error,
    },

    /// The fusectl control filesystem is not available, so the connection cannot be aborted.
    #[error("fusectl is not available: {0}")]
    Fusectl(String),

    /// Setting up signal handling (for [`run_foreground`](crate::run_foreground)) failed.
    #[error("signal setup failed: {0}")]
    Signal(io::Error),

    /// The daemon stopped on its own (for example the mount was removed from outside).
    #[error("the faultfs daemon at {0} stopped unexpectedly (unmounted from outside?)")]
    DaemonDied(PathBuf),

    /// Any other I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}
