//! Descriptor identity (contract item I12): what the ring does so that an op keeps
//! acting on the file it was submitted on, and so that nothing the ring remembers about
//! a descriptor number is applied to a different file that reused the number.
//!
//! Two mechanisms, both off the hot path (I8):
//!
//! - **Anchors.** An op that has to wait in quell's own queue (the dispatch window is
//!   full, the ring is quiesced, the backend has no room, or a transfer continues in a
//!   later part) takes a duplicate of the descriptors it names. When it finally goes to
//!   the backend it uses the duplicate, so closing the number and reusing it meanwhile
//!   (even outside quell, with an ordinary `drop(File)`) cannot redirect it: the op acts
//!   on its own file, as an op the kernel already holds does. The duplicate is closed
//!   when the op's last result is in. Ops handed to the backend at once never pay.
//! - **Re-validated classes.** The class cache (see `classify`) is keyed by number and
//!   cannot see a number closed and reused behind quell's back. The class decides one
//!   irreversible thing: whether a deadline *detaches* an op (device I/O that cannot be
//!   stopped) instead of canceling it. So before detaching, the ring asks the kernel
//!   again what the descriptor is (unless the submitter declared the class with
//!   `Op::class`, which is used as given); a stale entry is corrected and the op is canceled
//!   for real. If the number no longer names any file, the op is canceled and waited
//!   for rather than detached: nothing is released that cannot be accounted for.

use super::Ring;
use crate::classify::probe_fd;
use crate::op::{OpKind, RawOp};
use crate::outcome::CancelClass;
use crate::table::{F_ANCHORED, F_CHAIN, F_DECLARED};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The duplicates an anchored op uses instead of the numbers it was given.
struct Anchor {
    fd: Option<OwnedFd>,
    fd2: Option<OwnedFd>,
}

/// Anchors of the ops that hold them, by slot index.
#[derive(Default)]
pub(super) struct Anchors {
    by_slot: HashMap<u32, Anchor>,
}

impl Anchors {
    /// Points `raw` at the duplicates held for slot `idx`.
    pub(super) fn apply(&self, idx: u32, raw: &mut RawOp) {
        if let Some(a) = self.by_slot.get(&idx) {
            if let Some(fd) = &a.fd {
                raw.fd = fd.as_raw_fd();
            }
            if let Some(fd2) = &a.fd2 {
                raw.fd2 = fd2.as_raw_fd();
            }
        }
    }

    /// The descriptor slot `idx` acts on through its anchor, if it holds one.
    fn fd_of(&self, idx: u32) -> Option<(RawFd, Option<RawFd>)> {
        self.by_slot.get(&idx).map(|a| {
            (
                a.fd.as_ref().map_or(-1, |f| f.as_raw_fd()),
                a.fd2.as_ref().map(|f| f.as_raw_fd()),
            )
        })
    }

    /// Closes every duplicate (the ring is going away; the kernel holds its own
    /// references to the files of ops it still runs).
    pub(super) fn clear(&mut self) {
        self.by_slot.clear();
    }
}

/// Duplicates `fd` (close-on-exec). `Err(errno)`: `EBADF` if the number is not open,
/// `EMFILE`/`ENFILE` if no descriptor is left.
fn dup(fd: RawFd) -> Result<OwnedFd, i32> {
    // SAFETY: fcntl accepts any integer; a number that is not open only yields EBADF.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        return Err(crate::classify::errno());
    }
    // SAFETY: `d` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// The descriptors of an op of `kind` that name files it acts on: not the number a
/// close closes (that is the op's whole point), not `AT_FDCWD`, not unused slots.
fn targets(kind: OpKind, fd: RawFd, fd2: RawFd) -> (Option<RawFd>, Option<RawFd>) {
    match kind {
        OpKind::Nop | OpKind::Timeout | OpKind::Blocking | OpKind::Close => (None, None),
        OpKind::Splice | OpKind::RenameAt => ((fd >= 0).then_some(fd), (fd2 >= 0).then_some(fd2)),
        _ => ((fd >= 0).then_some(fd), None),
    }
}

impl Ring {
    /// Puts slot `idx` (queued, counted as queued) at the back of quell's queue,
    /// anchored to its files first. If they cannot be anchored (the number is no longer
    /// open, or the process is out of descriptors) the op ends now, `Failed` with that
    /// error: it could not act on the file it was submitted on.
    pub(super) fn enqueue(&mut self, idx: u32, key: u64) {
        match self.anchor(idx) {
            Ok(()) => self.queue.push_back(key),
            Err(errno) => self.complete_queued(
                idx,
                crate::outcome::Outcome::Failed(crate::outcome::Errno::from_raw_os_error(errno)),
            ),
        }
    }

    /// Takes duplicates of the files slot `idx` acts on, unless it holds them already or
    /// names none. Chains anchor nothing here: they anchor every step themselves, at
    /// submission (`chain.rs`).
    pub(super) fn anchor(&mut self, idx: u32) -> Result<(), i32> {
        let s = self.table.slot(idx);
        if s.flags & (F_ANCHORED | F_CHAIN) != 0 {
            return Ok(());
        }
        let (a, b) = targets(s.desc.kind, s.desc.fd, s.desc.fd2);
        if a.is_none() && b.is_none() {
            return Ok(());
        }
        let anchor = Anchor {
            fd: a.map(dup).transpose()?,
            fd2: b.map(dup).transpose()?,
        };
        self.anchors.by_slot.insert(idx, anchor);
        self.table.slot_mut(idx).flags |= F_ANCHORED;
        Ok(())
    }

    /// Closes slot `idx`'s duplicates: its last result is in.
    #[inline]
    pub(super) fn release_anchor(&mut self, idx: u32) {
        let s = self.table.slot_mut(idx);
        if s.flags & F_ANCHORED != 0 {
            s.flags &= !F_ANCHORED;
            self.anchors.by_slot.remove(&idx);
        }
    }

    /// Whether slot `idx`, classed `Bounded`, really is device I/O now that its
    /// deadline is about to detach it. Asks the kernel again (the rare path, so the
    /// cached class costs nothing per op); a stale cache entry is corrected and the
    /// slot takes the class its file really has. `false` also when the descriptor is
    /// gone: an op whose file cannot be identified is canceled and waited for, never
    /// detached.
    pub(super) fn still_bounded(&mut self, idx: u32) -> bool {
        let s = self.table.slot(idx);
        let kind = s.desc.kind;
        if s.flags & F_DECLARED != 0 {
            // The submitter said so (`Op::class`): used as given.
            return true;
        }
        let (fd, fd2) = (s.desc.fd, s.desc.fd2);
        let anchored = self.anchors.fd_of(idx);
        let (pfd, pfd2) = match anchored {
            Some((a, b)) => (a, b),
            None => (fd, (kind == OpKind::Splice).then_some(fd2)),
        };
        let Ok(info) = probe_fd(pfd) else {
            return false;
        };
        let mut class = info.class;
        if let Some(f2) = pfd2 {
            match probe_fd(f2) {
                Ok(i2) => class = CancelClass::weakest(class, i2.class),
                Err(_) => return false,
            }
        }
        if anchored.is_none() {
            // The number still names this file: remember what it is.
            self.fds.store(fd, info);
        }
        self.table.slot_mut(idx).class = class;
        class == CancelClass::Bounded
    }
}
