//! The io_uring backend.
//!
//! Every op becomes one SQE whose user data is the ring's key. Cancels are
//! `IORING_OP_ASYNC_CANCEL` by user data, one per op (the kernel's match-all flags are
//! quadratic, see DESIGN.md), tagged so their own CQEs stay inside the backend.
//! Interruptible ops (FUSE, NFS) carry `IOSQE_ASYNC`: a direct-I/O FUSE read would
//! otherwise block inside `io_uring_enter` and stall the whole ring.
//!
//! SQEs are staged in a plain vector and copied into the kernel's submission queue once
//! per flush or wait, so the shared head/tail are synchronised once per batch rather
//! than once per op. Staging never refuses an entry, so a cancel is never lost to a full
//! submission queue: it waits in order behind the ops staged before it.
//!
//! "Submitted" means the kernel took every SQE: an SQE that fails its preparation
//! (`ENAMETOOLONG` path, bad flags) stops the kernel from taking the ones behind it
//! unless the ring has `IORING_SETUP_SUBMIT_ALL` (5.18+, asked for at setup), so every
//! enter checks its count and enters again for the rest.

use super::direct::{self, DirectTable, LinkRanges, LinkStep, CANCEL_RESULT};
use super::pool::Pool;
use super::{BackendParts, INTERNAL};
use crate::op::{BlockingFn, OpKind, RawOp, NO_OFFSET};
use crate::outcome::CancelClass;
use crate::wake::Doorbell;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Internal key: a cancel request for the key in the low bits.
const CANCEL_TAG: u64 = INTERNAL | (1 << 62);
/// Internal key: a cancel request for a linked chain's step (its result goes to the
/// ring). Bit 25 lies in the slot half of a key, always clear in ring keys (16-bit slots).
const STEP_CANCEL_TAG: u64 = INTERNAL | (1 << 25);
/// Internal key: the doorbell's multishot poll.
const WAKE_KEY: u64 = INTERNAL | 1;

/// Opcodes quell needs from the kernel; a kernel missing one gets the portable backend.
pub(crate) const REQUIRED: &[(u8, &str)] = &[
    (opcode::Nop::CODE, "nop"),
    (opcode::Read::CODE, "read"),
    (opcode::Write::CODE, "write"),
    (opcode::Readv::CODE, "readv"),
    (opcode::Writev::CODE, "writev"),
    (opcode::OpenAt::CODE, "openat"),
    (opcode::Close::CODE, "close"),
    (opcode::Statx::CODE, "statx"),
    (opcode::Fsync::CODE, "fsync"),
    (opcode::Fallocate::CODE, "fallocate"),
    (opcode::PollAdd::CODE, "poll_add"),
    (opcode::Timeout::CODE, "timeout"),
    (opcode::Accept::CODE, "accept"),
    (opcode::Connect::CODE, "connect"),
    (opcode::Send::CODE, "send"),
    (opcode::Recv::CODE, "recv"),
    (opcode::Splice::CODE, "splice"),
    (opcode::RenameAt::CODE, "renameat"),
    (opcode::UnlinkAt::CODE, "unlinkat"),
    (opcode::AsyncCancel::CODE, "async_cancel"),
];

/// Why io_uring cannot be used here.
#[derive(Debug)]
pub(crate) struct Unavailable(pub(crate) String, pub(crate) Vec<&'static str>);

pub(crate) struct Uring {
    ring: IoUring,
    doorbell: Arc<Doorbell>,
    wake_armed: bool,
    /// SQEs not yet copied into the submission queue, in submission order.
    staged: Vec<squeue::Entry>,
    /// Results produced without the kernel (ops the kernel cannot run).
    ready: Vec<(u64, i64)>,
    /// SQEs pushed since the last submit.
    unsubmitted: u32,
    /// The thread pool for `Op::blocking` closures (threads start on first use).
    pool: Pool,
    /// Direct descriptors for linked chains that open a file (see `direct.rs`).
    direct: DirectTable,
    /// Linked batches among the staged SQEs.
    links: LinkRanges,
}

impl Uring {
    /// Sets up a ring and checks every opcode quell needs.
    pub(crate) fn new(parts: &BackendParts) -> Result<Uring, Unavailable> {
        Self::with_setup(parts, true)
    }

    /// [`new`](Uring::new); `submit_all: false` sets the ring up as a kernel without
    /// `IORING_SETUP_SUBMIT_ALL` would (tests of the re-entering path).
    fn with_setup(parts: &BackendParts, submit_all: bool) -> Result<Uring, Unavailable> {
        let sq = parts.config.sq_entries.clamp(8, 32768).next_power_of_two();
        // Room for a full window of 3-step linked chains (one CQE per step, see
        // `direct.rs`) plus their cancels: an overflowing CQ still loses nothing, but
        // every submit then takes the kernel's slow overflow path.
        let cq = (parts.config.max_in_flight.saturating_mul(4))
            .max(sq * 2)
            .clamp(16, 1 << 16)
            .next_power_of_two();
        // SUBMIT_ALL (5.18): an SQE that fails its preparation no longer stops the
        // kernel from taking the ones behind it. `submit` counts what the kernel took
        // anyway, so an older kernel without it strands nothing either.
        let builder = |all: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq);
            if all && submit_all {
                b.setup_submit_all();
            }
            b
        };
        let ring = builder(true)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(sq)
            .or_else(|_| builder(true).build(sq))
            .or_else(|_| builder(false).build(sq))
            .map_err(|e| Unavailable(describe_setup_error(&e), Vec::new()))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| Unavailable(format!("io_uring probe failed: {e}"), Vec::new()))?;
        let missing: Vec<&str> = REQUIRED
            .iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(Unavailable(
                format!("io_uring lacks opcodes: {}", missing.join(", ")),
                missing,
            ));
        }
        if !ring.params().is_feature_ext_arg() {
            return Err(Unavailable(
                "io_uring lacks IORING_FEAT_EXT_ARG (timeouts on wait), kernel < 5.11".into(),
                Vec::new(),
            ));
        }
        let direct = DirectTable::register(&ring, parts.config.direct_slots);
        let mut u = Uring {
            direct,
            links: LinkRanges::default(),
            ring,
            doorbell: parts.doorbell.clone(),
            wake_armed: false,
            staged: Vec::with_capacity(sq as usize),
            ready: Vec::new(),
            unsubmitted: 0,
            pool: Pool::new(parts.config.pool_threads, parts.doorbell.clone()),
        };
        u.arm_doorbell();
        Ok(u)
    }

    fn arm_doorbell(&mut self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.doorbell.raw()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE_KEY);
        self.push(sqe);
        self.wake_armed = true;
    }

    /// Stages one SQE; it reaches the submission queue at the next flush or wait.
    #[inline]
    fn push(&mut self, sqe: squeue::Entry) {
        self.staged.push(sqe);
    }

    /// Copies as many staged SQEs as fit into the submission queue, syncing its head and
    /// tail once. Returns how many were copied.
    fn publish(&mut self) -> usize {
        if self.staged.is_empty() {
            return 0;
        }
        let mut sq = self.ring.submission();
        let n = self
            .links
            .cut((sq.capacity() - sq.len()).min(self.staged.len()));
        // SAFETY: every SQE quell builds points into memory the ring's op table keeps
        // alive until the matching CQE is reaped (see RawOp); cancels and the doorbell
        // poll point to no memory (the eventfd outlives the ring).
        let pushed = unsafe { sq.push_multiple(&self.staged[..n]) };
        drop(sq);
        debug_assert!(pushed.is_ok(), "n entries fit by construction");
        if n == self.staged.len() {
            self.staged.clear();
        } else {
            self.staged.drain(..n);
        }
        self.links.published(n);
        self.unsubmitted += n as u32;
        n
    }

    /// Stages a linked chain's steps as one batch (see `direct.rs`).
    pub(crate) fn start_linked(&mut self, steps: &[LinkStep]) {
        let start = self.staged.len();
        for s in steps {
            let sqe = direct::build_step(s).expect("the chain module links only buildable kinds");
            self.push(sqe);
        }
        self.links.push(start, steps.len());
    }

    /// Asks the kernel to cancel one step of a linked chain; its result comes back to
    /// the ring tagged [`CANCEL_RESULT`] (a step not started yet is not found, and the
    /// ring asks again).
    pub(crate) fn cancel_step(&mut self, user_data: u64) {
        let sqe = opcode::AsyncCancel::new(user_data)
            .build()
            .user_data(STEP_CANCEL_TAG | user_data);
        self.push(sqe);
    }

    /// Closes direct descriptor `slot` outside any link, reporting as `user_data`.
    pub(crate) fn close_direct(&mut self, user_data: u64, slot: u32) {
        self.push(direct::close_direct(user_data, slot));
    }

    /// A free direct descriptor, if the table has one.
    pub(crate) fn alloc_direct(&mut self) -> Option<u32> {
        self.direct.alloc()
    }

    /// Gives a direct descriptor back (it was closed, or is empty; an open into it
    /// would replace whatever it still held).
    pub(crate) fn free_direct(&mut self, slot: u32) {
        self.direct.free(slot);
    }

    #[inline]
    pub(crate) fn start(&mut self, key: u64, raw: RawOp, class: CancelClass) -> bool {
        if on_pool(raw.kind, class) {
            self.pool.submit_raw(key, raw, 0, None, class);
            return true;
        }
        if raw.kind == OpKind::Close {
            // Reads queued in quell's pool keep the file being closed (I12).
            self.pool.retarget(raw.fd);
        }
        let mut sqe = match build(&raw) {
            Ok(sqe) => sqe.user_data(key),
            Err(errno) => {
                self.ready.push((key, -(errno as i64)));
                return true;
            }
        };
        if class == CancelClass::Interruptible {
            sqe = sqe.flags(squeue::Flags::ASYNC);
        }
        self.push(sqe);
        true
    }

    /// [`start`](Uring::start) for the ring's plain lane: a nop, a read that does not
    /// belong on the pool, or a write, into one heap buffer — built straight into the
    /// staging area from scalars, with no `RawOp` in between.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_plain(
        &mut self,
        key: u64,
        kind: OpKind,
        fd: std::os::fd::RawFd,
        ptr: *mut u8,
        len: u32,
        offset: u64,
        class: CancelClass,
    ) {
        debug_assert!(!on_pool(kind, class), "pool reads take the full path");
        let fd = types::Fd(fd);
        let sqe = match kind {
            OpKind::Read => opcode::Read::new(fd, ptr, len).offset(off(offset)).build(),
            OpKind::Write => opcode::Write::new(fd, ptr, len).offset(off(offset)).build(),
            _ => opcode::Nop::new().build(),
        };
        let sqe = if class == CancelClass::Interruptible {
            sqe.flags(squeue::Flags::ASYNC)
        } else {
            sqe
        };
        self.push(sqe.user_data(key));
    }

    pub(crate) fn start_blocking(&mut self, key: u64, f: BlockingFn) {
        self.pool.submit_fn(key, f);
    }

    #[inline]
    pub(crate) fn cancel(&mut self, key: u64, kind: OpKind, class: CancelClass) {
        if kind == OpKind::Blocking || on_pool(kind, class) {
            self.pool.cancel(key);
            return;
        }
        let sqe = opcode::AsyncCancel::new(key)
            .build()
            .user_data(CANCEL_TAG | key);
        self.push(sqe);
    }

    /// Hands every published SQE to the kernel. Without `IORING_SETUP_SUBMIT_ALL` the
    /// kernel stops at the first SQE that fails its preparation (a path longer than
    /// `PATH_MAX`, flags an opcode does not take) and leaves the ones behind it in the
    /// queue: they are entered again here, at once, not at some later wait.
    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(0) {
                Ok(n) => {
                    if !self.took(n) {
                        return Ok(());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The CQ is backed up: the ring reaps, then submits again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The kernel took `n` SQEs in one enter. Returns whether some are still in the
    /// submission queue and the kernel made progress (so entering again helps).
    #[inline]
    fn took(&mut self, n: usize) -> bool {
        if n == self.unsubmitted as usize {
            self.unsubmitted = 0;
            return false;
        }
        // Rare: a refused SQE stopped the kernel (or the count drifted). The queue's
        // head, which the kernel moves, says what is really left.
        self.unsubmitted = self.ring.submission().len() as u32;
        self.unsubmitted > 0 && n > 0
    }

    #[inline]
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.pool.tick(); // pool hook: due interrupt re-sends (a Vec length check when none)
        loop {
            self.publish();
            // With nothing to submit, enter anyway when the kernel flags queued task
            // work (COOP_TASKRUN: a completion from another CPU waits there, without an
            // interrupt, until this thread enters the kernel; else until the next tick).
            // `submit_and_wait` adds GETEVENTS for it. One load of the SQ flags.
            if self.unsubmitted > 0 || self.ring.submission().taskrun() {
                self.submit()?;
            }
            if self.staged.is_empty() {
                return Ok(());
            }
            // More was staged than the queue holds. Go again while the kernel takes
            // entries; when it takes none (CQ backed up: EBUSY) the ring reaps first and
            // the next flush or wait carries on.
            if self.publish() == 0 {
                return Ok(());
            }
        }
    }

    /// Futures hook: SQEs staged or published but not yet entered, or results kept
    /// back from an earlier reap.
    #[inline]
    pub(crate) fn has_local_work(&self) -> bool {
        !self.staged.is_empty() || self.unsubmitted > 0 || !self.ready.is_empty()
    }

    /// Readable when the completion queue holds entries (the doorbell's multishot
    /// poll turns pool and handle wake-ups into entries too).
    pub(crate) fn poll_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ring)
    }

    pub(crate) fn next_wake(&mut self) -> Option<Duration> {
        self.pool.cap(None)
    }

    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // Pool hook: re-send due interrupt signals, and wake in time for the next one.
        let timeout = self.pool.cap(timeout);
        if self.pool.has_results() {
            return self.flush();
        }
        if !self.wake_armed {
            self.arm_doorbell();
        }
        if !self.ready.is_empty() || !self.ring.completion().is_empty() {
            return self.flush();
        }
        self.publish();
        if !self.staged.is_empty() {
            // More staged than the queue holds: hand the kernel the rest before sleeping,
            // or an op (or a cancel) could wait behind the sleep.
            return self.flush();
        }
        let res = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            // A refused SQE stopped the kernel before its wait: hand it the rest now
            // (the refused SQE's own CQE is ready, so the ring has something to reap).
            Ok(n) if self.took(n) => self.submit(),
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY)
                ) =>
            {
                // ETIME with EXT_ARG still consumed the submission queue.
                self.unsubmitted = self.ring.submission().len() as u32;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    #[inline]
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i64)>) {
        out.append(&mut self.ready);
        let mut rearm = false;
        for cqe in self.ring.completion() {
            let key = cqe.user_data();
            if key & INTERNAL == 0 {
                out.push((key, cqe.result() as i64));
                continue;
            }
            if key & STEP_CANCEL_TAG == STEP_CANCEL_TAG {
                // The ring re-aims a cancel that found no running step.
                out.push((
                    (key & !STEP_CANCEL_TAG) | CANCEL_RESULT,
                    cqe.result() as i64,
                ));
                continue;
            }
            if key == WAKE_KEY {
                self.doorbell.clear();
                if !cqueue::more(cqe.flags()) {
                    rearm = true;
                }
            }
            // A cancel's own result (0, -ENOENT, -EALREADY) says nothing final: the
            // target's CQE is the truth, and it always comes.
        }
        if rearm {
            self.wake_armed = false;
            self.arm_doorbell();
        }
        // After the doorbell was cleared above, so no pool wake-up is lost.
        self.pool.reap(out);
    }
}

/// Reads from Interruptible files (FUSE, NFS, ...) run on quell's pool, not in io_uring.
///
/// Measured on 6.18: when a FUSE daemon answers a direct-I/O read short (or fails it
/// part-way), io_uring's short-read retry reissues the rest from the *original* offset
/// and reports the sum, so the buffer holds a second copy of the first bytes. A plain
/// `pread` on a pool worker reports the honest short count, and the worker is
/// interrupted (FUSE_INTERRUPT) just as promptly as an `ASYNC_CANCEL` would.
#[inline]
pub(crate) fn on_pool(kind: OpKind, class: CancelClass) -> bool {
    class == CancelClass::Interruptible && matches!(kind, OpKind::Read | OpKind::Readv)
}

fn describe_setup_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            "io_uring_setup: EPERM (blocked by seccomp or kernel.io_uring_disabled)".into()
        }
        Some(libc::ENOSYS) => "io_uring_setup: ENOSYS (kernel built without io_uring)".into(),
        Some(libc::EOPNOTSUPP) => "io_uring_setup: EOPNOTSUPP".into(),
        _ => format!("io_uring_setup failed: {e}"),
    }
}

#[inline]
fn off(o: u64) -> u64 {
    // io_uring takes -1 for "current position".
    if o == NO_OFFSET {
        u64::MAX
    } else {
        o
    }
}

/// Translates a RawOp into an SQE. `Err(errno)` for ops the kernel cannot take.
#[inline]
fn build(r: &RawOp) -> Result<squeue::Entry, i32> {
    let fd = types::Fd(r.fd);
    Ok(match r.kind {
        OpKind::Nop => opcode::Nop::new().build(),
        OpKind::Read => opcode::Read::new(fd, r.ptr, r.len)
            .offset(off(r.offset))
            .build(),
        OpKind::Write => opcode::Write::new(fd, r.ptr, r.len)
            .offset(off(r.offset))
            .build(),
        OpKind::Readv => opcode::Readv::new(fd, r.ptr.cast(), r.len)
            .offset(off(r.offset))
            .build(),
        OpKind::Writev => opcode::Writev::new(fd, r.ptr.cast(), r.len)
            .offset(off(r.offset))
            .build(),
        OpKind::OpenAt => opcode::OpenAt::new(fd, r.ptr.cast())
            .flags(r.flags as i32)
            .mode(r.aux as libc::mode_t)
            .build(),
        OpKind::Close => opcode::Close::new(fd).build(),
        OpKind::Statx => opcode::Statx::new(fd, r.ptr.cast(), r.ptr2.cast())
            .flags(r.flags as i32)
            .mask(r.aux as u32)
            .build(),
        OpKind::Fsync => {
            let flags = if r.flags & 1 != 0 {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            opcode::Fsync::new(fd).flags(flags).build()
        }
        OpKind::Fallocate => opcode::Fallocate::new(fd, r.aux)
            .offset(r.offset)
            .mode(r.flags as i32)
            .build(),
        OpKind::Poll => opcode::PollAdd::new(fd, r.flags).build(),
        OpKind::Timeout => opcode::Timeout::new(r.ptr.cast()).build(),
        OpKind::Accept => opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
            .flags(r.flags as i32)
            .build(),
        OpKind::Connect => opcode::Connect::new(fd, r.ptr.cast(), r.aux as libc::socklen_t).build(),
        OpKind::Send => opcode::Send::new(fd, r.ptr, r.len)
            .flags(r.flags as i32)
            .build(),
        OpKind::Recv => opcode::Recv::new(fd, r.ptr, r.len)
            .flags(r.flags as i32)
            .build(),
        OpKind::Splice => {
            let oi = if r.offset == NO_OFFSET {
                -1
            } else {
                r.offset as i64
            };
            let oo = if r.aux == NO_OFFSET { -1 } else { r.aux as i64 };
            opcode::Splice::new(fd, oi, types::Fd(r.fd2), oo, r.len)
                .flags(r.flags)
                .build()
        }
        OpKind::RenameAt => {
            opcode::RenameAt::new(fd, r.ptr.cast(), types::Fd(r.fd2), r.ptr2.cast())
                .flags(r.flags)
                .build()
        }
        OpKind::UnlinkAt => opcode::UnlinkAt::new(fd, r.ptr.cast())
            .flags(r.flags as i32)
            .build(),
        OpKind::Blocking => return Err(libc::EOPNOTSUPP),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendConfig;

    /// A ring set up as on a kernel without `IORING_SETUP_SUBMIT_ALL` (before 5.18).
    fn without_submit_all() -> Uring {
        let parts = BackendParts {
            config: BackendConfig {
                sq_entries: 64,
                max_in_flight: 64,
                pool_threads: 1,
                direct_slots: 0,
            },
            doorbell: Arc::new(Doorbell::new().unwrap()),
        };
        let mut u = Uring::with_setup(&parts, false).unwrap_or_else(|e| panic!("{}", e.0));
        // The doorbell poll first.
        u.flush().unwrap();
        // The kernel really stops at a refused SQE on this ring: one enter takes the
        // refused open and leaves the nops behind it.
        let path = std::ffi::CString::new("q".repeat(5000)).unwrap();
        stage(&mut u, &path, 1);
        u.publish();
        assert_eq!(
            u.ring.submit().unwrap(),
            1,
            "the kernel stopped at the refused SQE"
        );
        u.flush().unwrap();
        assert_eq!(reaped(&mut u).len(), 3);
        u
    }

    /// Stages `bad` refused SQEs, each followed by two nops, keyed 1, 2, 3, ...
    fn stage(u: &mut Uring, path: &std::ffi::CStr, bad: u64) -> Vec<u64> {
        let mut keys = Vec::new();
        for i in 0..bad {
            let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
                .build()
                .user_data(i * 3 + 1);
            u.push(open);
            u.push(opcode::Nop::new().build().user_data(i * 3 + 2));
            u.push(opcode::Nop::new().build().user_data(i * 3 + 3));
            keys.extend([i * 3 + 1, i * 3 + 2, i * 3 + 3]);
        }
        keys
    }

    fn reaped(u: &mut Uring) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        u.reap(&mut out);
        out.sort_unstable();
        out
    }

    fn expected(keys: &[u64]) -> Vec<(u64, i64)> {
        keys.iter()
            .map(|&k| {
                (
                    k,
                    if k % 3 == 1 {
                        -libc::ENAMETOOLONG as i64
                    } else {
                        0
                    },
                )
            })
            .collect()
    }

    #[test]
    fn one_flush_hands_over_everything_behind_refused_sqes() {
        let mut u = without_submit_all();
        let path = std::ffi::CString::new("q".repeat(5000)).unwrap();
        let keys = stage(&mut u, &path, 3);
        u.flush().unwrap();
        // Nops and prep failures complete during the enter: one flush, no second look.
        assert_eq!(reaped(&mut u), expected(&keys));
        assert!(!u.has_local_work(), "nothing left unsubmitted");
    }

    #[test]
    fn a_wait_hands_over_everything_behind_refused_sqes() {
        let mut u = without_submit_all();
        let path = std::ffi::CString::new("q".repeat(5000)).unwrap();
        u.flush().unwrap(); // the doorbell poll, so the batch below is only ours
        let keys = stage(&mut u, &path, 2);
        u.wait(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(reaped(&mut u), expected(&keys));
        assert!(!u.has_local_work(), "nothing left unsubmitted");
    }
}
