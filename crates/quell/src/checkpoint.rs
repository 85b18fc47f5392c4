//! Checkpoints: what [`Ring::quiesce`](crate::Ring::quiesce) returns, and what
//! [`Ring::resubmit`](crate::Ring::resubmit) re-issues, possibly in another process.
//!
//! A [`Checkpoint`] is plain data (serde): one [`OpDescriptor`] per op the quiesce
//! canceled before it finished, with everything needed to re-issue it so that it
//! continues where it stopped (offset and bytes already moved, remaining deadline,
//! group path, and — unless the policy says otherwise — the bytes themselves: the
//! prefix a read already received, the tail a write still has to write), plus the
//! ops that could not be stopped within the bound ([`Unfinished`]), which stay owned by
//! the old ring.
//!
//! Two encodings: JSON for people and tools, and a compact binary form, postcard
//! (a stable, documented wire format; serde-native; maintained; no unsafe code).

use crate::op::OpKind;
use crate::outcome::{CancelClass, OpState};
use crate::Error;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Version of the checkpoint format written by this build (2: a [`FileRef`] records
/// the file's type and birth time). Other versions are refused when read.
///
/// ```
/// let ckpt = quell::Ring::new().unwrap().quiesce(quell::QuiescePolicy::default()).unwrap();
/// assert_eq!(ckpt.version, quell::CHECKPOINT_VERSION);
/// ```
pub const CHECKPOINT_VERSION: u32 = 2;

/// The op table of a quiesced ring, as data.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 16]).user_data(5))?;
/// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
/// assert_eq!(ckpt.ops.len(), 1);
/// assert_eq!(ckpt.ops[0].user_data, 5);
/// let again = quell::Checkpoint::from_bytes(&ckpt.to_bytes()?)?;
/// assert_eq!(again, ckpt);
/// assert_eq!(quell::Checkpoint::from_json(&ckpt.to_json()?)?, ckpt);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Format version ([`CHECKPOINT_VERSION`]).
    pub version: u32,
    /// The process that took it (descriptor numbers are meaningful there).
    pub pid: u32,
    /// The ops canceled before they finished, to re-issue.
    pub ops: Vec<OpDescriptor>,
    /// Ops still running when the quiesce returned (Bounded ops past the bound, cancels
    /// not yet confirmed, detached ops): the old ring still owns them and their memory.
    pub unfinished: Vec<Unfinished>,
}

/// An op's id in the ring that checkpointed it.
///
/// ```
/// let id = quell::CheckpointId { slot: 3, generation: 1 };
/// assert_eq!(id.to_string(), "3.1");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CheckpointId {
    /// Slot index.
    pub slot: u32,
    /// Slot generation.
    pub generation: u32,
}

impl From<crate::OpId> for CheckpointId {
    fn from(id: crate::OpId) -> Self {
        CheckpointId {
            slot: id.slot,
            generation: id.gen,
        }
    }
}

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// Which file a descriptor referred to at checkpoint time: identity to check before
/// re-issuing, and what is needed to open it again.
///
/// A file is told apart by device, inode number, file type and birth time: an inode
/// number alone is reused as soon as its file is deleted (a FIFO made where a file was
/// gets the same number on ext4 and tmpfs). `kind` and `born` are 0 in a reference
/// made by hand, and then not compared.
///
/// ```
/// let f = quell::FileRef {
///     dev: 1,
///     ino: 2,
///     kind: libc::S_IFREG,
///     born: 0,
///     path: Some("/tmp/x".into()),
///     status_flags: libc::O_RDWR,
/// };
/// assert!(f.reopenable());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRef {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// File type: the `S_IFMT` bits of `st_mode` (`S_IFREG`, `S_IFIFO`, `S_IFSOCK`, ...);
    /// 0 if unknown.
    #[serde(default)]
    pub kind: u32,
    /// Birth time (statx `stx_btime`) in nanoseconds since the epoch; 0 where the
    /// filesystem keeps none (pipes, sockets, some filesystems).
    #[serde(default)]
    pub born: u64,
    /// The `/proc/self/fd` link: a path for files, `pipe:[..]`/`socket:[..]` otherwise.
    pub path: Option<String>,
    /// File status flags (`fcntl(F_GETFL)`): access mode, `O_APPEND`, `O_DIRECT`, ...
    pub status_flags: i32,
}

impl FileRef {
    /// Describes the open descriptor `fd`; `None` if it is not open.
    pub(crate) fn of(fd: RawFd) -> Option<FileRef> {
        let id = identity(fd)?;
        // SAFETY: F_GETFL takes no pointer.
        let status_flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        Some(FileRef {
            dev: id.dev,
            ino: id.ino,
            kind: id.kind,
            born: id.born,
            path: crate::info::fd_path(fd).map(|p| p.to_string_lossy().into_owned()),
            status_flags,
        })
    }

    /// Whether `id` is this file (what is unknown on either side is not compared).
    pub(crate) fn is(&self, id: Identity) -> bool {
        self.dev == id.dev
            && self.ino == id.ino
            && (self.kind == 0 || self.kind == id.kind)
            && (self.born == 0 || id.born == 0 || self.born == id.born)
    }

    /// Whether the descriptor can be opened again by path (a file in a filesystem,
    /// not a pipe or socket).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// // A socket has no path to open again: it must be passed over SCM_RIGHTS instead.
    /// for (fd, file) in ckpt.fds() {
    ///     assert_eq!(fd, r.as_raw_fd());
    ///     assert_eq!(file.kind, libc::S_IFSOCK);
    ///     assert!(!file.reopenable());
    ///     assert!(file.path.unwrap().starts_with("socket:"));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn reopenable(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|p| p.starts_with('/') && !p.ends_with(" (deleted)"))
    }
}

/// What tells a file from another (see [`FileRef`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) kind: u32,
    pub(crate) born: u64,
}

impl Identity {
    fn of(st: &rustix::fs::Statx) -> Identity {
        let born = if st.stx_mask & libc::STATX_BTIME != 0 {
            (st.stx_btime.tv_sec as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(st.stx_btime.tv_nsec as u64)
        } else {
            0
        };
        Identity {
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            kind: st.stx_mode as u32 & libc::S_IFMT,
            born,
        }
    }
}

const IDENTITY_MASK: rustix::fs::StatxFlags = rustix::fs::StatxFlags::TYPE
    .union(rustix::fs::StatxFlags::INO)
    .union(rustix::fs::StatxFlags::BTIME);

/// The identity of an open descriptor; `None` if it is not open.
pub(crate) fn identity(fd: RawFd) -> Option<Identity> {
    if fd < 0 {
        return None;
    }
    // SAFETY: borrowed for this one call; statx on a closed number fails with EBADF.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let st = rustix::fs::statx(fd, c"", rustix::fs::AtFlags::EMPTY_PATH, IDENTITY_MASK).ok()?;
    Some(Identity::of(&st))
}

/// The identity of the file `path` names now (following symbolic links, as `open` does).
fn identity_at(path: &std::ffi::CStr) -> std::io::Result<Identity> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        IDENTITY_MASK,
    )?;
    Ok(Identity::of(&st))
}

/// Everything needed to re-issue one op that was canceled before it finished.
///
/// Transfers continue where they stopped: the re-issued op works on the same whole
/// buffer (`len` bytes), skipping the `transferred` bytes already moved, so its
/// completion reports the total, as if it had never been interrupted.
///
/// # Fields by kind
/// Every kind uses `id`, `user_data`, `kind`, `group_path`, `deadline_left` and `class`;
/// the others only as below (`transferred` with `len` for the transfers: read, write,
/// readv, writev, send, recv, splice). A field a kind does not use must be empty (`-1`
/// and no `file` for a descriptor, `None`, `0`, `false`, no `iov_lens`):
/// [`check`](OpDescriptor::check) refuses it. A descriptor is an open file with its
/// identity recorded; a directory may also be `AT_FDCWD` without one.
///
/// | kind | fields |
/// |---|---|
/// | nop | — |
/// | timeout | `sleep` |
/// | read, write | `fd`, `offset`?, `len`, `exact`, `data`? |
/// | readv, writev | `fd`, `offset`?, `len`, `iov_lens`, `data`? |
/// | send, recv | `fd`, `len`, `flags`, `data`? |
/// | openat, statx | `fd` (directory), `flags`, `mode`, `path` |
/// | unlinkat | `fd` (directory), `flags`, `path` |
/// | renameat | `fd`, `fd2` (directories), `flags`, `path`, `path2` |
/// | close | `fd` |
/// | fsync, poll, accept | `fd`, `flags` |
/// | fallocate | `fd`, `offset`, `len`, `flags` |
/// | connect | `fd`, `addr` |
/// | splice | `fd`, `fd2`, `offset`?, `offset2`?, `len` |
///
/// (`?`: may be `None`. A blocking closure is never checkpointed.)
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 6]).exact())?;
/// std::io::Write::write_all(&mut &w, b"abc")?;
/// ring.poll()?; // the read takes "abc" and waits for the rest
/// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
/// let d = &ckpt.ops[0];
/// assert_eq!((d.len, d.transferred), (6, 3));
/// assert_eq!(d.data.as_deref(), Some(&b"abc"[..])); // no byte lost
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpDescriptor {
    /// The op's id in the checkpointed ring (matches its `Canceled` completion there).
    pub id: CheckpointId,
    /// User data.
    pub user_data: u64,
    /// What it does.
    pub kind: OpKind,
    /// Descriptor number (the directory for path ops; `-1` for none).
    pub fd: RawFd,
    /// The file behind `fd` at checkpoint time.
    pub file: Option<FileRef>,
    /// Second descriptor (splice output, rename target directory; `-1` for none).
    pub fd2: RawFd,
    /// The file behind `fd2`.
    pub file2: Option<FileRef>,
    /// Starting offset of the original op (positioned transfers, fallocate, splice input).
    pub offset: Option<u64>,
    /// Second offset (splice output).
    pub offset2: Option<u64>,
    /// Bytes the whole op asked for (transfers; fallocate length).
    pub len: u64,
    /// Bytes already moved before it was canceled.
    pub transferred: u64,
    /// Buffer lengths of a vectored op.
    pub iov_lens: Vec<u64>,
    /// Op flags (poll events, send/recv `MSG_*`, open flags, fallocate mode, ...).
    pub flags: u32,
    /// Open mode, statx mask.
    pub mode: u64,
    /// Whether short transfers are retried until the whole buffer moved.
    pub exact: bool,
    /// Path (path ops).
    #[serde(with = "bytes_serde::opt")]
    pub path: Option<Vec<u8>>,
    /// Second path (rename).
    #[serde(with = "bytes_serde::opt")]
    pub path2: Option<Vec<u8>>,
    /// Address (connect).
    pub addr: Option<SocketAddr>,
    /// Remaining sleep (timeout ops).
    pub sleep: Option<Duration>,
    /// Group path in the old ring (`"root/requests/g3"`); re-created by name.
    pub group_path: String,
    /// Time left before its deadline (its own or its group's) when it was checkpointed.
    pub deadline_left: Option<Duration>,
    /// How it could be canceled once dispatched.
    pub class: CancelClass,
    /// The bytes that make the re-issue self-contained: for a read, the `transferred`
    /// bytes it already received; for a write, the bytes it still has to write
    /// (`len - transferred`). `None` when the policy did not carry data.
    #[serde(with = "bytes_serde::opt")]
    pub data: Option<Vec<u8>>,
}

/// Deepest group path [`Ring::resubmit`](crate::Ring::resubmit) re-creates (names below
/// the root). Each level is a group in the new ring: a hostile path must not make
/// thousands of them.
const MAX_GROUP_DEPTH: usize = 64;

/// Longest wait a checkpoint may carry (a deadline's time left, a timeout's sleep): a
/// little over 292 years, so that every clock and timespec the ring converts it into
/// holds it.
const MAX_WAIT: Duration = Duration::from_nanos(i64::MAX as u64);

/// Longest path a path op may carry (`PATH_MAX` counts the terminating NUL).
const MAX_PATH: usize = libc::PATH_MAX as usize - 1;

/// Most buffers one vectored op may have (`IOV_MAX`).
const MAX_IOVS: usize = 1024;

impl OpDescriptor {
    /// Checks that the descriptor describes an op the ring could have accepted, before
    /// anything is allocated or changed for it: every length within the ring's limits
    /// (at most `i32::MAX` bytes per transfer, as [`Ring::submit`](crate::Ring::submit)
    /// requires; at most 1024 buffers), offsets within `i64::MAX`, carried bytes exactly
    /// the ones the op moved (or still has to move), paths without NUL bytes and
    /// shorter than `PATH_MAX`, waits a clock can hold, a group path under `root` at
    /// most 64 groups deep, and only the fields its kind uses (the table in
    /// [`OpDescriptor`]'s docs: a timeout with a descriptor number or `exact` is refused).
    /// A checkpoint is input from disk: this is what stands between a corrupt one and an
    /// allocation of `len` bytes.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 16]))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// assert!(ckpt.ops[0].check().is_ok());
    /// let mut bad = ckpt.ops[0].clone();
    /// bad.len = u64::MAX; // as a corrupt file could say
    /// assert!(matches!(bad.check(), Err(quell::Error::TooLong { .. })));
    /// let mut stray = ckpt.ops[0].clone();
    /// stray.fd2 = 0; // a read takes one descriptor
    /// assert!(matches!(stray.check(), Err(quell::Error::InvalidArgument(_))));
    /// # Ok(()) }
    /// ```
    pub fn check(&self) -> Result<(), Error> {
        use OpKind::*;
        let bad = |why: &'static str| Err(Error::InvalidArgument(why));
        let k = self.kind;
        if k == Blocking {
            return Err(Error::Unsupported {
                op: "blocking",
                backend: "checkpoint",
                why: "a closure cannot be checkpointed",
            });
        }
        check_group_path(&self.group_path)?;
        if self.deadline_left.is_some_and(|d| d > MAX_WAIT) {
            return bad("deadline further away than any clock holds");
        }
        // Fields the kind does not use would be dropped silently (or, worse, used by a
        // later version): refuse them. Empty means `-1` and no identity for a
        // descriptor, `None`, `0`, `false`, no buffer lengths.
        let u = Uses::of(k);
        check_fd(u.fd, self.fd, &self.file)?;
        check_fd(u.fd2, self.fd2, &self.file2)?;
        let stray = [
            (
                !u.offset && self.offset.is_some(),
                "an offset on an op that takes none",
            ),
            (
                !u.offset2 && self.offset2.is_some(),
                "a second offset on an op that takes at most one",
            ),
            (!u.len && self.len != 0, "a length on an op that takes none"),
            (
                !u.flags && self.flags != 0,
                "flags on an op that takes none",
            ),
            (!u.mode && self.mode != 0, "a mode on an op that takes none"),
            (
                !u.exact && self.exact,
                "`exact` on an op other than a read or write",
            ),
            (
                !u.iov && !self.iov_lens.is_empty(),
                "buffer lengths on an op that is not vectored",
            ),
            (
                !u.path && self.path.is_some(),
                "a path on an op that takes none",
            ),
            (
                !u.path2 && self.path2.is_some(),
                "a second path on an op that takes one",
            ),
            (
                !u.addr && self.addr.is_some(),
                "an address on an op that takes none",
            ),
            (
                !u.sleep && self.sleep.is_some(),
                "a sleep on an op that is not a timeout",
            ),
            (
                !u.data && self.data.is_some(),
                "carried bytes on an op that has no buffer",
            ),
        ];
        if let Some((_, why)) = stray.into_iter().find(|(bad, _)| *bad) {
            return Err(Error::InvalidArgument(why));
        }
        if self.transferred > self.len {
            return bad("more bytes moved than the op's length");
        }
        if !k.is_transfer() && self.transferred != 0 {
            return bad("bytes moved by an op that moves none");
        }
        // Lengths: the ring's own limits, checked before any buffer is made for them.
        match k {
            Read | Write | Send | Recv if self.len > i32::MAX as u64 => {
                return Err(Error::TooLong { len: self.len })
            }
            Readv | Writev => {
                if self.iov_lens.is_empty() {
                    return bad("vectored op with no buffers");
                }
                if self.iov_lens.len() > MAX_IOVS {
                    return bad("more than 1024 (IOV_MAX) buffers");
                }
                let mut total = 0u64;
                for &l in &self.iov_lens {
                    total = total.saturating_add(l);
                }
                if total > i32::MAX as u64 {
                    return Err(Error::TooLong { len: total });
                }
                if total != self.len {
                    return bad("buffer lengths do not add up to the op's length");
                }
            }
            Splice if self.len > u32::MAX as u64 => {
                return bad("splice length does not fit 32 bits")
            }
            Fallocate if self.len > i64::MAX as u64 => {
                return Err(Error::TooLong { len: self.len })
            }
            _ => {}
        }
        // Offsets: a file position is an `i64`, and so is the end of the range.
        let span = |o: Option<u64>| match o {
            Some(o) if o > i64::MAX as u64 - self.len.min(i64::MAX as u64) => {
                Err(Error::InvalidArgument("offset beyond i64::MAX"))
            }
            _ => Ok(()),
        };
        span(self.offset)?;
        span(self.offset2)?;
        if k == Fallocate && self.offset.is_none() {
            return bad("fallocate without an offset");
        }
        // Carried bytes: exactly the ones moved (a read's) or still to move (a write's).
        if let Some(data) = &self.data {
            let want = if k.is_read() {
                self.transferred
            } else {
                self.len - self.transferred
            };
            if data.len() as u64 != want {
                return bad("carried bytes do not match the bytes moved");
            }
        }
        match k {
            Connect if self.addr.is_none() => return bad("connect without an address"),
            Timeout => match self.sleep {
                None => return bad("timeout without a sleep"),
                Some(d) if d > MAX_WAIT => return bad("sleep longer than any clock holds"),
                _ => {}
            },
            OpenAt | Statx if self.mode > u32::MAX as u64 => {
                return bad("mode does not fit 32 bits")
            }
            _ => {}
        }
        if u.path {
            check_path(&self.path)?;
        }
        if u.path2 {
            check_path(&self.path2)?;
        }
        Ok(())
    }

    /// Bytes still to move.
    ///
    /// ```
    /// # let ckpt = {
    /// #   let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
    /// #   let mut ring = quell::Ring::new().unwrap();
    /// #   ring.submit(quell::Op::read(std::os::fd::AsRawFd::as_raw_fd(&r), vec![0u8; 16])).unwrap();
    /// #   ring.quiesce(quell::QuiescePolicy::default()).unwrap()
    /// # };
    /// assert_eq!(ckpt.ops[0].remaining(), 16);
    /// ```
    pub fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.transferred)
    }
}

/// How an op kind uses a descriptor field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FdUse {
    /// Not at all: `-1`, no identity.
    No,
    /// An open file, whose identity the checkpoint recorded.
    File,
    /// A directory for a path: an open one with its identity, or `AT_FDCWD` without.
    Dir,
}

/// The fields of an [`OpDescriptor`] a kind uses, as its `Op` constructor takes them (the
/// table in [`OpDescriptor`]'s docs). `transferred` goes with the transfers
/// ([`OpKind::is_transfer`]); `id`, `user_data`, `group_path`, `deadline_left` and `class`
/// with every kind.
#[derive(Clone, Copy)]
struct Uses {
    fd: FdUse,
    fd2: FdUse,
    offset: bool,
    offset2: bool,
    len: bool,
    flags: bool,
    mode: bool,
    exact: bool,
    iov: bool,
    path: bool,
    path2: bool,
    addr: bool,
    sleep: bool,
    data: bool,
}

impl Uses {
    const NOTHING: Uses = Uses {
        fd: FdUse::No,
        fd2: FdUse::No,
        offset: false,
        offset2: false,
        len: false,
        flags: false,
        mode: false,
        exact: false,
        iov: false,
        path: false,
        path2: false,
        addr: false,
        sleep: false,
        data: false,
    };

    fn of(k: OpKind) -> Uses {
        use OpKind::*;
        let n = Uses::NOTHING;
        let file = Uses {
            fd: FdUse::File,
            ..n
        };
        let dir = Uses {
            fd: FdUse::Dir,
            flags: true,
            path: true,
            ..n
        };
        match k {
            Nop | Blocking => n,
            Timeout => Uses { sleep: true, ..n },
            Read | Write => Uses {
                offset: true,
                len: true,
                exact: true,
                data: true,
                ..file
            },
            Readv | Writev => Uses {
                offset: true,
                len: true,
                iov: true,
                data: true,
                ..file
            },
            Send | Recv => Uses {
                len: true,
                flags: true,
                data: true,
                ..file
            },
            OpenAt | Statx => Uses { mode: true, ..dir },
            UnlinkAt => dir,
            RenameAt => Uses {
                fd2: FdUse::Dir,
                path2: true,
                ..dir
            },
            Close => file,
            Fsync | Poll | Accept => Uses {
                flags: true,
                ..file
            },
            Fallocate => Uses {
                offset: true,
                len: true,
                flags: true,
                ..file
            },
            Connect => Uses { addr: true, ..file },
            Splice => Uses {
                fd2: FdUse::File,
                offset: true,
                offset2: true,
                len: true,
                ..file
            },
        }
    }
}

/// A descriptor field as its kind uses it. An op acts only on a file whose identity the
/// checkpoint recorded (DESIGN I12), so a number is never taken on trust.
fn check_fd(usage: FdUse, fd: RawFd, file: &Option<FileRef>) -> Result<(), Error> {
    let no_identity = || {
        Err(Error::InvalidArgument(
            "no file identity recorded for the descriptor",
        ))
    };
    match (usage, fd, file) {
        (FdUse::No, -1, None) => Ok(()),
        (FdUse::No, ..) => Err(Error::InvalidArgument(
            "a descriptor on an op that takes none",
        )),
        (FdUse::Dir, libc::AT_FDCWD, None) => Ok(()),
        (_, fd, _) if fd < 0 => Err(Error::InvalidFd { fd }),
        (_, _, None) => no_identity(),
        _ => Ok(()),
    }
}

fn check_version(version: u32) -> Result<(), Error> {
    if version != CHECKPOINT_VERSION {
        return Err(Error::Encoding(format!(
            "checkpoint format {version} (this build reads {CHECKPOINT_VERSION})"
        )));
    }
    Ok(())
}

/// A group path as [`Ring::quiesce`](crate::Ring::quiesce) writes them: `root`, then
/// non-empty names, at most `MAX_GROUP_DEPTH` (64) of them.
fn check_group_path(p: &str) -> Result<(), Error> {
    let mut parts = p.split('/');
    if parts.next() != Some("root") {
        return Err(Error::InvalidArgument("group path does not start at root"));
    }
    for (depth, name) in parts.enumerate() {
        if name.is_empty() {
            return Err(Error::InvalidArgument("empty group name in group path"));
        }
        if depth >= MAX_GROUP_DEPTH {
            return Err(Error::InvalidArgument("group path too deep"));
        }
    }
    Ok(())
}

/// A path a path op can pass to the kernel.
fn check_path(p: &Option<Vec<u8>>) -> Result<(), Error> {
    match p.as_deref() {
        None => Err(Error::InvalidArgument("path op without a path")),
        Some([]) => Err(Error::InvalidArgument("empty path")),
        Some(b) if b.contains(&0) => Err(Error::InvalidArgument("path contains a NUL byte")),
        Some(b) if b.len() > MAX_PATH => Err(Error::InvalidArgument("path longer than PATH_MAX")),
        Some(_) => Ok(()),
    }
}

/// An op the quiesce could not stop or wait out within its bound. The old ring still
/// owns it and its memory; its completion arrives there when the kernel is done.
///
/// ```
/// let u = quell::Unfinished {
///     id: quell::CheckpointId { slot: 0, generation: 0 },
///     user_data: 1,
///     kind: quell::OpKind::Read,
///     fd: 3,
///     offset: Some(0),
///     len: 4096,
///     class: quell::CancelClass::Bounded,
///     state: quell::OpState::InFlight,
///     age: std::time::Duration::from_secs(1),
///     group_path: "root".into(),
/// };
/// assert_eq!(u.state, quell::OpState::InFlight);
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Unfinished {
    /// Its id in the old ring.
    pub id: CheckpointId,
    /// User data.
    pub user_data: u64,
    /// What it does.
    pub kind: OpKind,
    /// Descriptor.
    pub fd: RawFd,
    /// Offset.
    pub offset: Option<u64>,
    /// Bytes asked for.
    pub len: u64,
    /// How it can be canceled.
    pub class: CancelClass,
    /// In flight, cancel requested, or detached.
    pub state: OpState,
    /// Time since it was submitted.
    pub age: Duration,
    /// Group path.
    pub group_path: String,
}

/// Files reopened by [`Checkpoint::reopen_files`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let path = std::env::temp_dir().join(format!("quell-reopen-doc-{}", std::process::id()));
/// let file = std::fs::File::create(&path)?;
/// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
/// ring.submit(quell::Op::timeout(std::time::Duration::from_secs(60)))?; // fills the window
/// ring.submit(quell::Op::write_at(file.as_raw_fd(), 0, b"hi".to_vec()))?; // stays queued
/// let mut ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
/// drop(ring);
/// drop(file); // as if in another process: the descriptor is gone
/// let reopened = ckpt.reopen_files();
/// assert_eq!((reopened.fds.len(), reopened.failed.len()), (1, 0));
/// let mut fresh = quell::Ring::new()?;
/// let ids = fresh.resubmit(&ckpt, quell::Buffers::new());
/// for (d, id) in ckpt.ops.iter().zip(ids) {
///     if d.kind == quell::OpKind::Write {
///         assert!(fresh.wait_for(id?)?.outcome.is_done());
///     }
/// }
/// assert_eq!(std::fs::read(&path)?, b"hi");
/// # std::fs::remove_file(&path)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Reopened {
    /// The new descriptors (keep them open while the re-issued ops run).
    pub fds: Vec<OwnedFd>,
    /// Descriptor numbers that could not be reopened, and why; the ops on them will be
    /// refused by [`Ring::resubmit`](crate::Ring::resubmit) with a per-op error.
    pub failed: Vec<(RawFd, std::io::Error)>,
}

impl Checkpoint {
    /// JSON text.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]).user_data(77))?;
    /// let json = ring.quiesce(quell::QuiescePolicy::default())?.to_json()?;
    /// // Readable by people and by other tools.
    /// let v: serde_json::Value = serde_json::from_str(&json)?;
    /// assert_eq!(v["ops"][0]["user_data"], 77);
    /// assert_eq!(v["ops"][0]["kind"], "Read");
    /// # Ok(()) }
    /// ```
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// Parses JSON text.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ckpt = quell::Checkpoint::from_json(r#"{"version":2,"pid":1,"ops":[],"unfinished":[]}"#)?;
    /// assert!(ckpt.ops.is_empty());
    /// // A checkpoint from another format version is refused, not misread.
    /// let newer = r#"{"version":99,"pid":1,"ops":[],"unfinished":[]}"#;
    /// assert!(matches!(quell::Checkpoint::from_json(newer), Err(quell::Error::Encoding(_))));
    /// # Ok(()) }
    /// ```
    pub fn from_json(s: &str) -> Result<Checkpoint, Error> {
        // The version first: another format is refused as such, not misread as this one.
        #[derive(serde::Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_str(s).map_err(|e| Error::Encoding(e.to_string()))?;
        check_version(v.version)?;
        serde_json::from_str(s).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// The compact binary form (postcard).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// for i in 0..10 {
    ///     ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]).user_data(i))?;
    /// }
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// let bytes = ckpt.to_bytes()?;
    /// assert!(bytes.len() < ckpt.to_json()?.len()); // much smaller than the JSON
    /// assert_eq!(quell::Checkpoint::from_bytes(&bytes)?.ops.len(), 10);
    /// # Ok(()) }
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        postcard::to_stdvec(self).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// Parses the compact binary form.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let bytes = ring.quiesce(quell::QuiescePolicy::default())?.to_bytes()?;
    /// let ckpt = quell::Checkpoint::from_bytes(&bytes)?;
    /// assert_eq!(ckpt.pid, std::process::id());
    /// // Truncated input is an error, not a panic.
    /// assert!(matches!(quell::Checkpoint::from_bytes(&bytes[..1]), Err(quell::Error::Encoding(_))));
    /// # Ok(()) }
    /// ```
    pub fn from_bytes(b: &[u8]) -> Result<Checkpoint, Error> {
        // The version is the first field: read it alone first (postcard's fields are
        // positional, so another version's bytes would be misread, not refused).
        let (version, _) =
            postcard::take_from_bytes::<u32>(b).map_err(|e| Error::Encoding(e.to_string()))?;
        check_version(version)?;
        postcard::from_bytes(b).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// Replaces descriptor number `old` by `new` in every op (after receiving the
    /// descriptor over `SCM_RIGHTS`, or `dup`ing it). Returns how many ops changed.
    /// To move several descriptors whose old and new numbers overlap, use
    /// [`remap_fds`](Checkpoint::remap_fds).
    ///
    /// ```
    /// # let mut ckpt = {
    /// #   let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
    /// #   let mut ring = quell::Ring::new().unwrap();
    /// #   ring.submit(quell::Op::read(std::os::fd::AsRawFd::as_raw_fd(&r), vec![0u8; 16])).unwrap();
    /// #   let c = ring.quiesce(quell::QuiescePolicy::default()).unwrap();
    /// #   std::mem::forget(r); c
    /// # };
    /// let old = ckpt.ops[0].fd;
    /// assert_eq!(ckpt.remap_fd(old, 1000), 1);
    /// assert_eq!(ckpt.ops[0].fd, 1000);
    /// ```
    pub fn remap_fd(&mut self, old: RawFd, new: RawFd) -> usize {
        self.remap_fds(&[(old, new)])
    }

    /// Replaces descriptor numbers all at once, each `(old, new)` pair looked up in the
    /// numbers as the checkpoint recorded them (so `[(3, 4), (4, 3)]` swaps). Returns how
    /// many ops changed.
    ///
    /// ```
    /// # let mut ckpt = quell::Checkpoint::from_json(r#"{"version":2,"pid":1,"ops":[],"unfinished":[]}"#).unwrap();
    /// assert_eq!(ckpt.remap_fds(&[(3, 4), (4, 3)]), 0);
    /// ```
    pub fn remap_fds(&mut self, pairs: &[(RawFd, RawFd)]) -> usize {
        let map: HashMap<RawFd, RawFd> = pairs.iter().copied().collect();
        self.remap_where(|fd, _| map.get(&fd).copied())
    }

    /// Points every op whose descriptor (and file) `f` picks at the number it returns.
    fn remap_where(&mut self, f: impl Fn(RawFd, &FileRef) -> Option<RawFd>) -> usize {
        let mut n = 0;
        for d in &mut self.ops {
            let mut hit = false;
            if let Some(new) = d.file.as_ref().and_then(|file| f(d.fd, file)) {
                d.fd = new;
                hit = true;
            }
            if let Some(new) = d.file2.as_ref().and_then(|file| f(d.fd2, file)) {
                d.fd2 = new;
                hit = true;
            }
            n += hit as usize;
        }
        n
    }

    /// Distinct (descriptor number, file) pairs the ops use. After remapping, one number
    /// may appear with two files (a received pipe now has the number a file had).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// // Two ops on one descriptor: it is listed once.
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.submit(quell::Op::recv(r.as_raw_fd(), vec![0u8; 8], 0))?;
    /// let ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// let fds = ckpt.fds();
    /// assert_eq!(fds.len(), 1);
    /// assert_eq!(fds[0].0, r.as_raw_fd());
    /// # Ok(()) }
    /// ```
    pub fn fds(&self) -> Vec<(RawFd, FileRef)> {
        let mut seen: HashMap<(RawFd, u64, u64), FileRef> = HashMap::new();
        for d in &self.ops {
            for (fd, f) in [(d.fd, &d.file), (d.fd2, &d.file2)] {
                if let Some(f) = f {
                    seen.entry((fd, f.dev, f.ino)).or_insert_with(|| f.clone());
                }
            }
        }
        let mut v: Vec<_> = seen.into_iter().map(|((fd, ..), f)| (fd, f)).collect();
        v.sort_by_key(|(fd, f)| (*fd, f.dev, f.ino));
        v
    }

    /// Opens again, by path and with their recorded flags, the files whose descriptors
    /// are not valid here (another process, or closed since), and points the ops at the
    /// new descriptors. Pipes and sockets cannot be reopened by path: pass them with
    /// `SCM_RIGHTS` and [`remap_fd`](Checkpoint::remap_fd). A descriptor that is open
    /// here on the very same file is kept.
    ///
    /// A path that now names another file (replaced, or a FIFO or device put in its
    /// place) is not opened: it is reported in [`Reopened::failed`], and the ops on it
    /// are then refused by [`Ring::resubmit`](crate::Ring::resubmit), as every op keeps
    /// acting on the file it was submitted on (DESIGN I12). The paths come from the
    /// checkpoint: reopen files only from checkpoints you trust (or look at
    /// [`fds`](Checkpoint::fds) first), as opening some devices has effects of its own.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?; // takes the one dispatch slot
    /// ring.submit(quell::Op::read_at(file.as_raw_fd(), 0, vec![0u8; 4]))?; // stays queued
    /// let mut ckpt = ring.quiesce(quell::QuiescePolicy::default())?;
    /// drop(ring);
    /// let old_fd = file.as_raw_fd();
    /// drop(file); // as after a restart: the file's descriptor is gone, the socket's is not
    /// let reopened = ckpt.reopen_files();
    /// assert_eq!(reopened.fds.len(), 1); // the socket was still open here: kept as is
    /// let f = ckpt.ops.iter().position(|d| d.offset == Some(0)).unwrap();
    /// assert_eq!(ckpt.ops[f].fd, reopened.fds[0].as_raw_fd());
    /// let mut fresh = quell::Ring::new()?;
    /// let id = fresh.resubmit(&ckpt, quell::Buffers::new()).remove(f)?;
    /// assert_eq!(fresh.wait_for(id)?.data(), b"\x7fELF");
    /// # let _ = old_fd;
    /// # Ok(()) }
    /// ```
    pub fn reopen_files(&mut self) -> Reopened {
        let mut out = Reopened::default();
        for (fd, f) in self.fds() {
            if identity(fd).is_some_and(|id| f.is(id)) {
                continue;
            }
            if !f.reopenable() {
                out.failed.push((
                    fd,
                    std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        format!(
                            "{} cannot be reopened by path",
                            f.path.as_deref().unwrap_or("?")
                        ),
                    ),
                ));
                continue;
            }
            match reopen(&f) {
                Ok(owned) => {
                    let new = owned.as_raw_fd();
                    let (dev, ino) = (f.dev, f.ino);
                    self.remap_where(|n, file| {
                        (n == fd && file.dev == dev && file.ino == ino).then_some(new)
                    });
                    out.fds.push(owned);
                }
                Err(e) => out.failed.push((fd, e)),
            }
        }
        out
    }
}

/// Status flags a descriptor can be opened again with; the rest of what `F_GETFL`
/// reports (or a corrupt checkpoint says) is not asked for.
const REOPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_DIRECT
    | libc::O_DSYNC
    | libc::O_NOATIME
    | libc::O_NONBLOCK
    | libc::O_PATH
    | libc::O_SYNC;

/// Opens `f` again by its path, only if the path still names the very same file (DESIGN
/// I12): the path is looked at before it is opened (a FIFO or device now at the path
/// is not opened at all), opened without blocking and without taking a controlling
/// terminal, and the opened file checked again (the path may change in between).
fn reopen(f: &FileRef) -> std::io::Result<OwnedFd> {
    use std::io::{Error as IoError, ErrorKind};
    let changed = || IoError::other("the path names another file than at checkpoint time");
    let path = f.path.as_deref().unwrap_or_default();
    let c = std::ffi::CString::new(path).map_err(|_| IoError::from(ErrorKind::InvalidInput))?;
    if !f.is(identity_at(&c)?) {
        return Err(changed());
    }
    let flags = f.status_flags & REOPEN_FLAGS;
    // SAFETY: valid C string; open returns a new descriptor or -1.
    let new = unsafe {
        libc::open(
            c.as_ptr(),
            flags | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if new < 0 {
        return Err(IoError::last_os_error());
    }
    // SAFETY: `new` was just opened and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(new) };
    if !identity(new).is_some_and(|id| f.is(id)) {
        return Err(changed());
    }
    if flags & libc::O_NONBLOCK == 0 && flags & libc::O_PATH == 0 {
        // SAFETY: F_GETFL/F_SETFL take no pointer; `new` is open.
        let now = unsafe { libc::fcntl(new, libc::F_GETFL) };
        // SAFETY: as above.
        if now < 0 || unsafe { libc::fcntl(new, libc::F_SETFL, now & !libc::O_NONBLOCK) } != 0 {
            return Err(IoError::last_os_error());
        }
    }
    Ok(owned)
}

/// Byte strings that read well in JSON (text when UTF-8, `hex:..` otherwise) and stay
/// compact in postcard.
mod bytes_serde {
    pub(super) mod opt {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            if !s.is_human_readable() {
                return v.as_deref().map(serde_bytes_like).serialize(s);
            }
            match v {
                None => s.serialize_none(),
                Some(b) => match std::str::from_utf8(b) {
                    Ok(t) if !t.starts_with("hex:") => s.serialize_some(t),
                    _ => {
                        let mut h = String::with_capacity(4 + b.len() * 2);
                        h.push_str("hex:");
                        for x in b {
                            h.push_str(&format!("{x:02x}"));
                        }
                        s.serialize_some(&h)
                    }
                },
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            if !d.is_human_readable() {
                return Option::<Bytes>::deserialize(d).map(|o| o.map(|b| b.0));
            }
            let Some(t) = Option::<String>::deserialize(d)? else {
                return Ok(None);
            };
            let Some(hex) = t.strip_prefix("hex:") else {
                return Ok(Some(t.into_bytes()));
            };
            if hex.len() % 2 != 0 {
                return Err(serde::de::Error::custom("odd-length hex string"));
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map(Some)
                .map_err(serde::de::Error::custom)
        }

        fn serde_bytes_like(b: &[u8]) -> BytesRef<'_> {
            BytesRef(b)
        }

        struct BytesRef<'a>(&'a [u8]);

        impl Serialize for BytesRef<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }

        struct Bytes(Vec<u8>);

        impl<'de> Deserialize<'de> for Bytes {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                        Ok(Bytes(v))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut a: A,
                    ) -> Result<Bytes, A::Error> {
                        let mut v = Vec::new();
                        while let Some(x) = a.next_element()? {
                            v.push(x);
                        }
                        Ok(Bytes(v))
                    }
                }
                d.deserialize_byte_buf(V)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(data: Option<Vec<u8>>) -> OpDescriptor {
        OpDescriptor {
            id: CheckpointId {
                slot: 1,
                generation: 2,
            },
            user_data: 9,
            kind: OpKind::Read,
            fd: 3,
            file: None,
            fd2: -1,
            file2: None,
            offset: Some(4096),
            offset2: None,
            len: 10,
            transferred: 4,
            iov_lens: Vec::new(),
            flags: 0,
            mode: 0,
            exact: true,
            path: Some(b"/a/b".to_vec()),
            path2: None,
            addr: None,
            sleep: None,
            group_path: "root/x".into(),
            deadline_left: Some(Duration::from_millis(1500)),
            class: CancelClass::Bounded,
            data,
        }
    }

    #[test]
    fn bytes_round_trip_in_both_encodings() {
        for data in [
            None,
            Some(Vec::new()),
            Some(b"text".to_vec()),
            Some(vec![0, 255, 10, 128]),
            Some(b"hex:looks like hex".to_vec()),
        ] {
            let c = Checkpoint {
                version: CHECKPOINT_VERSION,
                pid: 1,
                ops: vec![desc(data)],
                unfinished: Vec::new(),
            };
            assert_eq!(Checkpoint::from_json(&c.to_json().unwrap()).unwrap(), c);
            assert_eq!(Checkpoint::from_bytes(&c.to_bytes().unwrap()).unwrap(), c);
        }
    }

    #[test]
    fn binary_is_compact_and_versions_are_checked() {
        let c = Checkpoint {
            version: CHECKPOINT_VERSION,
            pid: 1,
            ops: vec![desc(Some(vec![7; 100]))],
            unfinished: Vec::new(),
        };
        let b = c.to_bytes().unwrap();
        assert!(
            b.len() < c.to_json().unwrap().len() / 2,
            "{} bytes",
            b.len()
        );
        let mut old = c.clone();
        old.version = 99;
        assert!(matches!(
            Checkpoint::from_bytes(&old.to_bytes().unwrap()),
            Err(Error::Encoding(_))
        ));
        assert!(Checkpoint::from_bytes(&b[..b.len() / 2]).is_err());
        assert!(Checkpoint::from_json("{").is_err());
    }
}
