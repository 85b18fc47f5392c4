//! Descriptor identity (contract item I12): what the ring does so that an op keeps
//! acting on the file it was submitted on, and so that nothing the ring remembers about
//! a descriptor number is applied to a different file that reused the number.
//!
//! Two mechanisms, both off the hot path (I8):
//!
//! - **Anchors.** An op that has to wait in quell's own queue (the dispatch window is
//!   full, the ring is quiesced, the backend has no room, or a transfer continues in a
//!   later part) holds a duplicate of the files it names (one `fcntl(F_DUPFD_CLOEXEC)`,
//!   shared by every waiting op on the same file). When it finally goes to the backend
//!   it uses the duplicate on io_uring; on the portable backend (one FIFO per number) the
//!   number it was given if that still names its file (one `kcmp`), and the duplicate
//!   if the number was closed or reused meanwhile (even outside quell, with an
//!   ordinary `drop(File)`): the op acts on its own file, as an op the kernel already
//!   holds does. The duplicate is closed when the last op holding it has its last
//!   result. Ops handed to the backend at once never pay.
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
use crate::descriptor::{dup_fd, same_file};
use crate::op::{OpKind, RawOp};
use crate::outcome::CancelClass;
use crate::table::{F_ANCHORED, F_CHAIN, F_DECLARED};
use rustc_hash::FxHashMap as HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// One duplicate of a file some waiting ops were submitted on, shared by all of them.
struct Held {
    /// The number the ops were given (what `ops()` and `cancel_fd` see).
    number: RawFd,
    dup: OwnedFd,
    users: u32,
    /// A FUSE/NFS file: closing the duplicate flushes to the server, so it is closed
    /// off the ring's thread.
    slow_close: bool,
}

/// What one anchored op holds: indexes into `Anchors::held` for its descriptor(s).
struct Anchor {
    fd: Option<usize>,
    fd2: Option<usize>,
}

/// The duplicates held by waiting ops.
///
/// Ops on the same file share one duplicate, and an op that reaches the backend while
/// its number still names its file uses the number itself: the portable backend keeps
/// one FIFO per descriptor number, so a second number for the same file would let a
/// later read overtake an earlier one (io_uring serves each file's waiters in order
/// too, whatever number named it).
#[derive(Default)]
pub(super) struct Anchors {
    by_slot: HashMap<u32, Anchor>,
    held: Vec<Option<Held>>,
    free: Vec<usize>,
    /// `held` entries by the number they were taken for (usually one each).
    by_number: HashMap<RawFd, Vec<usize>>,
}

impl Anchors {
    /// Points `raw` at the files slot `idx` was submitted on: the number itself where it
    /// still names that file, the duplicate where the number was closed or reused.
    /// `false` for a close whose number no longer names its file: it must not run (the
    /// duplicate is the ring's, and the number is somebody else's now).
    ///
    /// `per_number`: the backend keeps per-number state (the portable backend's FIFOs),
    /// so an op must use the number while it still names the file, or it would not
    /// queue behind the number's other waiters. io_uring keeps nothing per number: the
    /// duplicate serves as well, without asking the kernel (`kcmp`) first.
    pub(super) fn apply(&self, idx: u32, raw: &mut RawOp, per_number: bool) -> bool {
        if let Some(a) = self.by_slot.get(&idx) {
            if let Some(h) = a.fd.and_then(|i| self.held[i].as_ref()) {
                raw.fd = if per_number || raw.kind == OpKind::Close {
                    h.current()
                } else {
                    h.dup.as_raw_fd()
                };
                if raw.fd != h.number {
                    if raw.kind == OpKind::Close {
                        return false;
                    }
                    // The ring's own duplicate: nobody else can close or reuse it.
                    raw.owned = true;
                }
            }
            if let Some(h) = a.fd2.and_then(|i| self.held[i].as_ref()) {
                raw.fd2 = if per_number {
                    h.current()
                } else {
                    h.dup.as_raw_fd()
                };
            }
        }
        true
    }

    /// The descriptors slot `idx` acts on through its anchor, if it holds one.
    fn fd_of(&self, idx: u32) -> Option<(RawFd, Option<RawFd>)> {
        self.by_slot.get(&idx).map(|a| {
            let get = |i: Option<usize>| i.and_then(|i| self.held[i].as_ref());
            (
                get(a.fd).map_or(-1, |h| h.dup.as_raw_fd()),
                get(a.fd2).map(|h| h.dup.as_raw_fd()),
            )
        })
    }

    /// A share of a duplicate of `number`'s file: an existing one if another waiting
    /// op holds that very file, a new one otherwise.
    fn take(&mut self, number: RawFd, slow_close: bool) -> Result<usize, i32> {
        if let Some(list) = self.by_number.get(&number) {
            for &i in list {
                if let Some(h) = &mut self.held[i] {
                    if same_file(number, h.dup.as_raw_fd()) {
                        h.users += 1;
                        return Ok(i);
                    }
                }
            }
        }
        let held = Held {
            number,
            dup: dup_fd(number, 0)?,
            users: 1,
            slow_close,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.held[i] = Some(held);
                i
            }
            None => {
                self.held.push(Some(held));
                self.held.len() - 1
            }
        };
        self.by_number.entry(number).or_default().push(i);
        Ok(i)
    }

    /// Gives a share back. With the last one the duplicate comes back to be closed,
    /// with whether its close may block (FUSE/NFS).
    fn put(&mut self, i: usize) -> Option<(OwnedFd, bool)> {
        let mut out = None;
        if let Some(h) = &mut self.held[i] {
            h.users -= 1;
            if h.users == 0 {
                let number = h.number;
                out = self.held[i].take().map(|h| (h.dup, h.slow_close));
                self.free.push(i);
                if let Some(list) = self.by_number.get_mut(&number) {
                    list.retain(|&j| j != i);
                    if list.is_empty() {
                        self.by_number.remove(&number);
                    }
                }
            }
        }
        out
    }

    /// Hands over every duplicate, with whether its close may block (the ring is going
    /// away; the kernel holds its own references to the files of ops it still runs).
    pub(super) fn clear(&mut self) -> Vec<(OwnedFd, bool)> {
        self.by_slot.clear();
        self.free.clear();
        self.by_number.clear();
        self.held
            .drain(..)
            .flatten()
            .map(|h| (h.dup, h.slow_close))
            .collect()
    }
}

impl Held {
    /// The descriptor to act through now.
    fn current(&self) -> RawFd {
        if same_file(self.number, self.dup.as_raw_fd()) {
            self.number
        } else {
            self.dup.as_raw_fd()
        }
    }
}

/// The descriptors of an op of `kind` that name files it acts on (for a close: the file
/// it may close), not `AT_FDCWD`, not unused slots.
fn targets(kind: OpKind, fd: RawFd, fd2: RawFd) -> (Option<RawFd>, Option<RawFd>) {
    match kind {
        OpKind::Nop | OpKind::Timeout | OpKind::Blocking => (None, None),
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
        #[cfg(feature = "fuzzing")]
        if matches!(self.backend, crate::backend::Backend::Fake(_)) {
            // The fuzzing fake runs nothing on the descriptors it is given.
            return Ok(());
        }
        let s = self.table.slot(idx);
        if s.flags & (F_ANCHORED | F_CHAIN) != 0 {
            return Ok(());
        }
        let (a, b) = targets(s.desc.kind, s.desc.fd, s.desc.fd2);
        if a.is_none() && b.is_none() {
            return Ok(());
        }
        let slow = s.class == CancelClass::Interruptible;
        let fd = a.map(|n| self.anchors.take(n, slow)).transpose()?;
        let fd2 = match b.map(|n| self.anchors.take(n, slow)).transpose() {
            Ok(i) => i,
            Err(e) => {
                if let Some(i) = fd {
                    self.drop_held(i);
                }
                return Err(e);
            }
        };
        self.anchors.by_slot.insert(idx, Anchor { fd, fd2 });
        self.table.slot_mut(idx).flags |= F_ANCHORED;
        Ok(())
    }

    /// Closes slot `idx`'s duplicates: its last result is in.
    #[inline]
    pub(super) fn release_anchor(&mut self, idx: u32) {
        let s = self.table.slot_mut(idx);
        if s.flags & F_ANCHORED != 0 {
            s.flags &= !F_ANCHORED;
            if let Some(a) = self.anchors.by_slot.remove(&idx) {
                for i in [a.fd, a.fd2].into_iter().flatten() {
                    self.drop_held(i);
                }
            }
        }
    }

    /// Closes every duplicate the ring's anchors hold, FUSE/NFS ones off its thread.
    pub(super) fn clear_anchors(&mut self) {
        for (fd, slow) in self.anchors.clear() {
            if slow {
                self.closer.close(fd);
            }
        }
    }

    /// Gives back a share of held duplicate `i`; the last one closes it, off the ring's
    /// thread for a FUSE/NFS file.
    fn drop_held(&mut self, i: usize) {
        if let Some((fd, slow)) = self.anchors.put(i) {
            if slow {
                self.closer.close(fd);
            }
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
