//! Linked chains: on io_uring a chain whose steps the kernel can sequence goes to it
//! as one batch of linked SQEs (I6), instead of one step per `io_uring_enter`.
//!
//! **Which chains.** Up to [`MAX_LINKED`] steps of the kinds `nop`, `read`, `write`,
//! `readv`, `writev`, `fsync`, `fallocate`, `openat` and `close`, none of them
//! `exact` or long enough to be split into parts, with at most one open. An `fsync`
//! or `fallocate` is last or just before the chain's close: the kernel does not fail
//! the rest of a link after every error of theirs (a `fallocate`'s `EBADF` lets the
//! next step run), where sequencing would stop. A chain
//! that opens a file must end with its own `close(Chain::OPENED)`: the file is opened
//! into an io_uring *direct descriptor* (chosen by the backend before the open runs,
//! so the later steps can name it) that never enters the process's descriptor table,
//! and the chain's close is what releases it. A chain that opens a file and hands the
//! descriptor to its user (no close) is sequenced in user space: turning a direct
//! descriptor into a normal one (`IORING_OP_FIXED_FD_INSTALL`) needs Linux 6.8 and
//! would add a step. Steps on descriptors quell classes Interruptible (FUSE, NFS),
//! and opens of a path on such a file system (one `statfs` of the path at submission),
//! are sequenced in user space too: their reads run on quell's pool (see
//! `backend/uring.rs`). The file system is told by the path's mount (one `statx` per
//! chain, see [`FsClasses`], measured at ~1.4 µs on ext4), unless every step on the
//! opened file declares its class with `Op::class`, which costs nothing. The portable
//! backend always sequences in user space.
//!
//! **Opens that wait.** io_uring first tries an open inline and non-blocking: a FIFO
//! reader would open at once (and read end of file), a writer fail with `ENXIO`, a
//! terminal skip waiting for carrier. A standalone path op is Interruptible and goes to
//! an io_uring worker at once (`IOSQE_ASYNC`), where it waits as open(2) does; a linked
//! open of a path that names a FIFO or a device (the same `statx` tells the file type;
//! a declared chain: a step on the file declared `Prompt`) is issued the same way, so
//! it waits too, and a cancel or deadline interrupts it.
//!
//! **Descriptors (I12).** The kernel resolves a linked step's descriptor when it issues
//! the step, not when the batch is submitted (measured on 6.18: a number closed and
//! reused while an earlier step waits redirects the later step). So steps on numbers
//! name the duplicates the chain took at submission (see `chain.rs`), which it closes
//! once every step has reported; the file a chain opens lives in a direct descriptor
//! that no number reaches.
//!
//! **Links.** Steps are tied with `IOSQE_IO_LINK`, so a step that fails, is canceled
//! or moves fewer bytes than asked makes the kernel fail the rest with `ECANCELED`;
//! the step before the chain's close carries `IOSQE_IO_HARDLINK`, so the close runs
//! whatever that step did. (A hard link only protects the next SQE: when an earlier
//! step fails the kernel cancels the close too, and quell then issues the close of the
//! direct descriptor on its own, before the chain completes.) A short transfer that
//! severed the link is no failure in user-space sequencing, so quell re-issues the
//! steps the kernel skipped as a new linked batch: outcomes are those of sequencing.
//!
//! **Cancel.** The chain keeps one cancel flag. A cancel aims an `ASYNC_CANCEL` at the
//! step running now (its user data carries the step number); the kernel then fails
//! the later soft-linked steps. If that step ends anyway and the next one starts, the
//! cancel is aimed again at each step that reports while the chain is canceled, and
//! again whenever the kernel answers that the step was not found (not started yet),
//! until no step but the close is left. The close is never canceled. Unlike
//! sequencing, a step can start in the kernel while the cancel of the step before it
//! is under way (its outcome then says what it did); sequencing never starts it.
//!
//! **Outcomes.** As with sequencing, except that the open step of a linked chain
//! reports `Done(0)`: the file has no number in the process's table.

use super::{Anchor, Chain, ChainState};
use crate::backend::direct::{split_step, step_key, Link, LinkStep, CANCEL_RESULT, MAX_LINKED};
use crate::id::split_key;
use crate::op::{OpDesc, OpKind, Payload, NO_OFFSET};
use crate::outcome::{CancelClass, Outcome};
use crate::ring::{outcome_of, Ring};
use crate::table::{SlotState, F_CANCEL, F_CANCEL_SENT, F_CHAIN, F_TIMEOUT};
use std::ffi::CStr;
use std::os::fd::AsRawFd;

const ECANCELED: i64 = -(libc::ECANCELED as i64);
/// Most cancels re-sent to one step the kernel did not find.
const MAX_RESENDS: u8 = 16;

/// A chain that goes to the kernel linked.
pub(crate) struct Linked {
    /// Step numbers of the open and of the chain's own close (the last step).
    open: Option<usize>,
    close: Option<usize>,
    /// The direct descriptor the open opens into, while the chain holds it.
    direct: Option<u32>,
    /// Every step, by number (moved here when the chain goes out).
    descs: Vec<OpDesc>,
    /// The kernel's result of each step's latest issue.
    res: Vec<Option<i64>>,
    /// The slot's cancel flags when each step reported.
    flags_at: Vec<u8>,
    /// First step of the batch in the kernel.
    from: usize,
    /// Results still to come from it.
    waiting: u32,
    /// The step the latest cancel request aims at.
    target: Option<usize>,
    /// Cancels re-sent to `target` because the kernel did not find it.
    resent: u8,
    /// The close was issued again, on its own.
    reclosed: bool,
    started: bool,
    /// The open goes to an io_uring worker at once (`IOSQE_ASYNC`): the path names a
    /// FIFO or a device, whose open(2) may wait (see [`Ring::link_plan`]).
    async_open: bool,
}

/// What a batch that has fully reported leaves to do.
enum Settle {
    /// Issue the steps from `from` on again (a short transfer severed the link).
    Reissue,
    /// Close the direct descriptor on its own (the kernel canceled the linked close).
    Reclose,
    /// The chain is over.
    Done,
}

impl Linked {
    /// The step running in the kernel now: the first of the batch not reported yet,
    /// the close excepted (it is never canceled).
    fn running(&self) -> Option<usize> {
        (self.from..self.descs.len()).find(|&i| self.res[i].is_none() && Some(i) != self.close)
    }

    /// The batch from `self.from` on, for the chain whose slot key is `key`. Steps on
    /// a number the chain anchored name its duplicate: the kernel resolves a linked
    /// step's descriptor only when it issues the step (I12).
    fn batch(&mut self, key: u64, anchors: &[Anchor]) -> Vec<LinkStep> {
        let n = self.descs.len();
        let mut steps = Vec::with_capacity(n - self.from);
        for i in self.from..n {
            let d = &mut self.descs[i];
            let mut raw = d.raw();
            if let Some(dup) = anchors
                .iter()
                .find(|a| a.fd == d.fd)
                .and_then(|a| a.dup.as_ref())
            {
                raw.fd = dup.as_raw_fd();
            }
            let link = if i + 1 == n {
                Link::End
            } else if Some(i + 1) == self.close {
                Link::Hard
            } else {
                Link::Soft
            };
            steps.push(LinkStep {
                user_data: step_key(key, i),
                raw,
                fixed: (d.kind != OpKind::OpenAt && d.fd == Chain::OPENED)
                    .then_some(self.direct)
                    .flatten(),
                open_into: (d.kind == OpKind::OpenAt).then_some(self.direct).flatten(),
                force_async: d.kind == OpKind::OpenAt && self.async_open,
                link,
            });
        }
        self.waiting = steps.len() as u32;
        self.target = None;
        steps
    }
}

impl ChainState {
    /// Whether the chain is in the kernel as a linked batch.
    pub(crate) fn is_linked(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.started)
    }

    /// Moves every step into the linked state: the first from the slot, the rest
    /// from the pending queue.
    fn begin_link(&mut self, first: OpDesc) {
        let l = self.link.as_deref_mut().expect("a linked plan");
        let n = self.results.len();
        l.descs.reserve_exact(n);
        l.descs.push(first);
        l.descs.extend(self.pending.drain(..).map(|p| p.op.desc));
        l.res = vec![None; n];
        l.flags_at = vec![0; n];
        l.started = true;
    }

    /// Turns the reported batch into step outcomes; says what is left to do.
    fn settle(&mut self) -> Settle {
        let l = self.link.as_deref_mut().expect("a linked chain");
        let n = l.descs.len();
        let mut broken = false;
        let mut close_canceled = false;
        for i in l.from..n {
            let r = l.res[i].expect("every step of the batch reported");
            let kind = l.descs[i].kind;
            if Some(i) == l.close {
                let opened = l
                    .open
                    .is_some_and(|o| matches!(self.results[o].outcome, Some(Outcome::Done(_))));
                if !opened {
                    // Nothing was opened: the kernel's EBADF is no step's.
                    self.results[i].outcome = None;
                } else if r == ECANCELED && !l.reclosed {
                    close_canceled = true;
                } else {
                    let o = outcome_of(kind, 0, 0, 0, r);
                    self.results[i].outcome = Some(o);
                    if let Outcome::Failed(e) = o {
                        if self.stop.is_none() && self.failed.is_none() {
                            self.failed = Some(e);
                        }
                    }
                }
                continue;
            }
            if broken && r == ECANCELED {
                self.results[i].outcome = None; // the kernel skipped it
                continue;
            }
            let asked = l.descs[i].request_len();
            let o = outcome_of(kind, u16::from(l.flags_at[i]), 0, asked, r);
            self.results[i].outcome = Some(o);
            match o {
                Outcome::Failed(e) => {
                    self.failed.get_or_insert(e);
                    broken = true;
                }
                Outcome::Canceled { .. } | Outcome::TimedOut { .. } => {
                    if self.stop.is_none() {
                        self.stop = Some(matches!(o, Outcome::TimedOut { .. }));
                    }
                    broken = true;
                }
                Outcome::Done(moved) => broken |= kind.is_transfer() && (moved as u64) < asked,
                Outcome::Detached => broken = true,
            }
        }
        if self.stop.is_none() && self.failed.is_none() {
            let skipped =
                (l.from..n).find(|&i| Some(i) != l.close && self.results[i].outcome.is_none());
            if let Some(first) = skipped {
                l.from = first;
                l.res[first..].iter_mut().for_each(|r| *r = None);
                return Settle::Reissue;
            }
        }
        if close_canceled {
            let close = l.close.expect("a close step");
            l.reclosed = true;
            l.from = close;
            l.res[close] = None;
            l.waiting = 1;
            return Settle::Reclose;
        }
        Settle::Done
    }
}

/// What quell knows about the file systems of the paths linked chains opened: their
/// class by mount id. A `statx` of the path (no file-system-wide counters, unlike an
/// ext4 `statfs`) names the mount and the file's type; a mount seen for the first time
/// costs one `statfs`. Unique mount ids (Linux 6.8+) are never reused, so a later mount
/// (a FUSE file system mounted over a directory) is a new entry; older kernels' ids can
/// be reused after an unmount, so there the cache is only trusted while the kernel says
/// the id is unique.
#[derive(Default)]
pub(crate) struct FsClasses {
    by_mount: std::collections::HashMap<u64, CancelClass>,
}

/// What one `statx` of a path says.
struct PathInfo {
    /// The unique mount id, when the kernel has them.
    mount: Option<u64>,
    /// The path names a FIFO or a device: its open(2) may wait (a FIFO for its other
    /// end, a terminal for carrier, a drive for its medium).
    special: bool,
}

impl FsClasses {
    /// The class of the file system holding `path` (relative to the working
    /// directory; a missing file: its directory's), or `None` when it cannot be told;
    /// and whether `path` names a FIFO or a device.
    fn of(&mut self, path: &CStr) -> (Option<CancelClass>, bool) {
        let info = Self::stat(path);
        let class = match info.mount {
            Some(m) => match self.by_mount.get(&m) {
                Some(&class) => Some(class),
                None => Self::statfs(path).inspect(|&class| {
                    self.by_mount.insert(m, class);
                }),
            },
            None => Self::statfs(path),
        };
        (class, info.special)
    }

    /// The mount and type of `path` (of its directory if it does not exist: a file
    /// it creates is a regular file).
    fn stat(path: &CStr) -> PathInfo {
        let stx = |p: &CStr| {
            // SAFETY: zeroed statx is valid; statx writes into it.
            let mut st: libc::statx = unsafe { std::mem::zeroed() };
            // SAFETY: `p` is NUL-terminated; `st` is a valid out-pointer.
            let rc = unsafe {
                libc::statx(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    libc::AT_STATX_DONT_SYNC,
                    libc::STATX_TYPE | libc::STATX_MNT_ID_UNIQUE,
                    &mut st,
                )
            };
            (rc == 0).then_some(st)
        };
        let mount = |st: &libc::statx| {
            (st.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0).then_some(st.stx_mnt_id)
        };
        if let Some(st) = stx(path) {
            let kind = u32::from(st.stx_mode) & libc::S_IFMT;
            let special = st.stx_mask & libc::STATX_TYPE == 0
                || matches!(kind, libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK);
            return PathInfo {
                mount: mount(&st),
                special,
            };
        }
        let dir = parent(path).and_then(|p| stx(&p));
        PathInfo {
            mount: dir.as_ref().and_then(mount),
            special: false,
        }
    }

    fn statfs(path: &CStr) -> Option<CancelClass> {
        let statfs = |p: &CStr| {
            // SAFETY: zeroed statfs is valid; statfs writes into it.
            let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: `p` is NUL-terminated; `sf` is a valid out-pointer.
            (unsafe { libc::statfs(p.as_ptr(), &mut sf) } == 0).then_some(sf.f_type as i64)
        };
        let magic = statfs(path).or_else(|| statfs(&parent(path)?))?;
        Some(crate::classify::class_of_fs(magic))
    }
}

/// The directory part of `path` (a file to be created lives on its directory's mount).
fn parent(path: &CStr) -> Option<std::ffi::CString> {
    let bytes = path.to_bytes();
    let dir = match bytes.iter().rposition(|&b| b == b'/') {
        Some(0) => &b"/"[..],
        Some(p) => &bytes[..p],
        None => &b"."[..],
    };
    std::ffi::CString::new(dir).ok()
}

impl Ring {
    /// Whether `chain` can go to the kernel linked, and its plan if so (see the module
    /// docs for the rules). Steps on real descriptors are classified now.
    pub(in crate::ring) fn link_plan(&mut self, chain: &Chain) -> Option<Box<Linked>> {
        let n = chain.steps.len();
        if !self.link_chains || !self.backend.links() || !(2..=MAX_LINKED).contains(&n) {
            return None;
        }
        let (mut open, mut close) = (None, None);
        for (i, op) in chain.steps.iter().enumerate() {
            let d = &op.desc;
            if op.exact || op.sink || d.fd2 == Chain::OPENED {
                return None;
            }
            match d.kind {
                OpKind::Nop => {}
                // The kernel fails the rest of a link after a failed fsync or fallocate
                // only for some errors (measured on 6.18: a fallocate's EBADF lets the
                // next step run), so nothing but the chain's close may follow one.
                OpKind::Fsync | OpKind::Fallocate => {
                    let last = i + 1 == n;
                    let before_close = i + 2 == n && chain.steps[n - 1].desc.kind == OpKind::Close;
                    if !(last || before_close) {
                        return None;
                    }
                }
                OpKind::Read | OpKind::Write | OpKind::Readv | OpKind::Writev => {
                    if d.offset != NO_OFFSET && d.request_len() > self.part_size as u64 {
                        return None; // split into parts in user space
                    }
                }
                OpKind::OpenAt if open.is_none() && d.fd != Chain::OPENED => open = Some(i),
                OpKind::Close if d.fd == Chain::OPENED && i + 1 == n => close = Some(i),
                _ => return None,
            }
            if d.fd != Chain::OPENED && d.kind != OpKind::OpenAt && d.kind.uses_fd() {
                // The same checks a step gets when its turn comes in user space.
                match self.admit(op) {
                    Ok(CancelClass::Interruptible) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }
        if open.is_some() != close.is_some() {
            return None;
        }
        let mut async_open = false;
        if let Some(o) = open {
            let d = &chain.steps[o].desc;
            let Payload::Path(path) = &d.payload else {
                return None;
            };
            let relative = path.as_bytes().first() != Some(&b'/');
            if relative && d.fd != libc::AT_FDCWD {
                return None;
            }
            // The opened file's class: declared on the steps that use it (`Op::class`,
            // which costs nothing), else told by its file system.
            let users = || {
                chain
                    .steps
                    .iter()
                    .filter(|op| op.desc.fd == Chain::OPENED && op.desc.kind != OpKind::Close)
            };
            if users().any(|op| op.class == Some(CancelClass::Interruptible)) {
                return None;
            }
            // A FIFO's or a device's open(2) may wait (for the other end, for carrier,
            // for a medium); io_uring's first, non-blocking attempt would not (a FIFO
            // reader opens at once and reads end of file, a writer fails with ENXIO).
            // Such an open goes to a worker at once, as a standalone (Interruptible)
            // path op does, so it waits like open(2) and a cancel interrupts it.
            let declared = users().next().is_some() && users().all(|op| op.class.is_some());
            async_open = if declared {
                // Declared pollable: a FIFO or a character device.
                users().any(|op| op.class == Some(CancelClass::Prompt))
            } else {
                let (class, special) = self.chains.fs.of(path);
                if class != Some(CancelClass::Bounded) {
                    return None;
                }
                special
            };
        }
        Some(Box::new(Linked {
            open,
            close,
            direct: None,
            descs: Vec::new(),
            res: Vec::new(),
            flags_at: Vec::new(),
            from: 0,
            waiting: 0,
            target: None,
            resent: 0,
            reclosed: false,
            started: false,
            async_open,
        }))
    }

    /// Dispatch hook: gives a linked chain's steps to the kernel as one batch.
    /// `None`: the chain is sequenced in user space (no plan, or no direct descriptor
    /// free); the slot's first step then starts as a plain op.
    pub(in crate::ring) fn linked_start(&mut self, idx: u32, key: u64) -> Option<bool> {
        let st = self.chains.get(idx);
        let l = st.link.as_deref_mut()?;
        debug_assert!(!l.started, "a linked chain is dispatched once");
        if l.open.is_some() {
            match self.backend.uring().alloc_direct() {
                Some(slot) => l.direct = Some(slot),
                None => {
                    st.link = None;
                    return None;
                }
            }
            self.stats.direct_descriptors += 1;
        }
        let s = self.table.slot_mut(idx);
        // The steps' memory moves to the chain; the slot keeps a description of the
        // running step (`show_running`).
        let shown = OpDesc {
            payload: Payload::None,
            ..s.desc
        };
        let first = std::mem::replace(&mut s.desc, shown);
        st.begin_link(first);
        let steps = st
            .link
            .as_deref_mut()
            .expect("just planned")
            .batch(key, &st.anchors);
        self.backend.uring().start_linked(&steps);
        let n = steps.len();
        s.state = SlotState::InFlight;
        let g = self.groups.at(s.group);
        g.stats.queued -= 1;
        g.stats.in_flight += 1;
        self.in_flight += 1;
        self.stats.linked_chains += 1;
        self.show_running(idx);
        if self.trace_ops {
            self.trace_dispatched(idx);
            self.trace_linked_batch(idx, 0, n);
        }
        Some(true)
    }

    /// Reap hook: a result for step `user_data` of a linked chain (or of a cancel
    /// aimed at one).
    pub(in crate::ring) fn linked_result(&mut self, user_data: u64, res: i64) {
        let (key, step) = split_step(user_data);
        let (idx, gen) = split_key(key);
        let flags = match self.table.get(idx, gen) {
            Some(s) if s.state == SlotState::InFlight && s.flags & F_CHAIN != 0 => s.flags,
            _ => {
                tracing::error!(
                    user_data,
                    "result for a linked step of no live chain; ignored"
                );
                return;
            }
        };
        let Some(l) = self
            .chains
            .get(idx)
            .link
            .as_deref_mut()
            .filter(|l| l.started)
        else {
            tracing::error!(
                user_data,
                "result for a linked step of an unlinked chain; ignored"
            );
            return;
        };
        if step >= l.descs.len() {
            tracing::error!(
                user_data,
                "result for a step the chain does not have; ignored"
            );
            return;
        }
        if user_data & CANCEL_RESULT != 0 {
            // Not found: the step had not started yet (the kernel starts a linked step
            // only after the one before it ended). Aim again, a few times: a buffered
            // read waiting for a page is on no cancel list either, and ends by itself
            // (its result then aims the cancel at the next step).
            if res == -(libc::ENOENT as i64)
                && l.target == Some(step)
                && l.res[step].is_none()
                && l.resent < MAX_RESENDS
            {
                l.resent += 1;
                l.target = None;
                let resent = l.resent;
                self.aim_cancel(idx, key);
                if let Some(l) = self.chains.get(idx).link.as_deref_mut() {
                    l.resent = resent; // aim_cancel resets it for a new target
                }
            }
            return;
        }
        if l.res[step].is_some() {
            tracing::error!(user_data, "second result for a linked step; ignored");
            return;
        }
        l.res[step] = Some(res);
        l.flags_at[step] = flags as u8; // chains use only the low eight flags
        l.waiting -= 1;
        if self.trace_ops {
            self.trace_linked_step(idx, step, res);
        }
        if flags & F_CANCEL != 0 {
            // The step the cancel aimed at ended; the next may be starting.
            self.aim_cancel(idx, key);
        }
        self.show_running(idx);
        let st = self.chains.get(idx);
        if st.link.as_ref().is_some_and(|l| l.waiting > 0) {
            return;
        }
        match st.settle() {
            Settle::Reissue => {
                let l = st.link.as_deref_mut().expect("linked");
                let steps = l.batch(key, &st.anchors);
                let from = l.from;
                self.backend.uring().start_linked(&steps);
                if self.trace_ops {
                    self.trace_linked_batch(idx, from, steps.len());
                }
                if flags & F_CANCEL != 0 {
                    self.aim_cancel(idx, key);
                }
            }
            Settle::Reclose => {
                let l = st.link.as_deref().expect("linked");
                let (close, slot) = (l.close.expect("a close"), l.direct.expect("opened"));
                self.backend
                    .uring()
                    .close_direct(step_key(key, close), slot);
                if self.trace_ops {
                    self.trace_linked_batch(idx, close, 1);
                }
            }
            Settle::Done => {
                if let Some(slot) = st.link.as_deref_mut().and_then(|l| l.direct.take()) {
                    self.backend.uring().free_direct(slot);
                    self.stats.direct_descriptors -= 1;
                }
                // The ring's own completion path (`chain_step_ended` → `linked_outcome`).
                self.finish(key, -1);
            }
        }
    }

    /// Aims the chain's cancel at the step running now, unless it already aims there.
    fn aim_cancel(&mut self, idx: u32, key: u64) {
        let l = self.chains.get(idx).link.as_deref_mut().expect("linked");
        let Some(t) = l.running() else { return };
        if l.target == Some(t) {
            return;
        }
        l.target = Some(t);
        l.resent = 0;
        self.backend.uring().cancel_step(step_key(key, t));
    }

    /// Cancel hook for a linked chain in flight: sets the chain's one flag and aims a
    /// cancel at the running step.
    pub(in crate::ring) fn linked_cancel(&mut self, idx: u32, timed_out: bool) {
        let s = self.table.slot_mut(idx);
        if s.flags & F_CANCEL_SENT != 0 {
            return;
        }
        s.flags |= F_CANCEL | F_CANCEL_SENT;
        if timed_out {
            s.flags |= F_TIMEOUT;
        }
        let (key, gidx) = (crate::id::key_of(idx, s.gen), s.group);
        self.groups.at(gidx).stats.cancel_requested += 1;
        self.stats.cancel_requests += 1;
        self.chains.get(idx).stop(timed_out);
        self.aim_cancel(idx, key);
    }

    /// Completion hook: the outcome of a linked chain that is over, its steps (every
    /// buffer) moved into the slot's payload. `None` for a chain not linked.
    pub(in crate::ring) fn linked_outcome(&mut self, idx: u32) -> Option<Outcome> {
        if !self.chains.peek(idx)?.is_linked() {
            return None;
        }
        let mut st = self.chains.take(idx);
        // Every step reported: the kernel is done with the duplicates.
        self.release_dups(&mut st, true);
        let l = st.link.take().expect("linked");
        for (r, d) in st.results.iter_mut().zip(l.descs) {
            r.payload = d.payload;
        }
        let (outcome, payload) = (*st).finish();
        self.table.slot_mut(idx).desc.payload = payload;
        Some(outcome)
    }

    /// Makes the slot describe the step the chain runs now (without its memory), for
    /// listings (`ops`) and for cancels by descriptor. A direct descriptor shows as -1.
    fn show_running(&mut self, idx: u32) {
        let Some(l) = self.chains.peek(idx).and_then(|st| st.link.as_deref()) else {
            return;
        };
        let i = l.running().or(l.close).unwrap_or(l.descs.len() - 1);
        let d = &l.descs[i];
        let s = &mut self.table.slot_mut(idx).desc;
        s.kind = d.kind;
        s.fd = if d.fd == Chain::OPENED { -1 } else { d.fd };
        s.fd2 = d.fd2;
        s.len = d.len;
        s.flags = d.flags;
        s.offset = d.offset;
        s.aux = d.aux;
    }
}
