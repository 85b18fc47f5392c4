//! A fake backend for fuzzing the op table and the cancel state machine (feature
//! `fuzzing`, hidden). Nothing runs: ops stay "in the kernel" until the driver says how
//! they end, and cancel requests are answered the way io_uring answers them
//! (`ECANCELED` for pollable waits, `EALREADY` then `EINTR` for a running worker op,
//! `ENOENT` for device I/O or an op that already finished).
//!
//! When an op ends with `n > 0` bytes, the fake touches its memory (writes a read's
//! bytes, reads a write's): under AddressSanitizer a buffer freed too early is caught.

use crate::op::{BlockingFn, OpKind, RawOp};
use crate::outcome::CancelClass;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// One op the fake "kernel" holds.
#[derive(Clone, Debug)]
pub struct FakeOp {
    /// The ring's key.
    pub key: u64,
    /// What it is.
    pub kind: OpKind,
    /// How the ring classified it.
    pub class: CancelClass,
    /// Its descriptor.
    pub fd: i32,
    /// Its offset (`u64::MAX`: none).
    pub offset: u64,
    /// Bytes asked for.
    pub len: u32,
    /// Buffer address.
    pub ptr: usize,
    /// A cancel for it arrived and was answered `EALREADY`: it ends soon (EINTR or partial).
    pub interrupted: bool,
}

/// What the fake "kernel" knows.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Started, not finished.
    pub in_flight: Vec<FakeOp>,
    /// Finished, not reaped by the ring yet.
    pub done: Vec<(u64, i64)>,
    /// Cancel requests not answered yet.
    pub cancels: Vec<u64>,
    /// Every key the ring asked to cancel.
    pub cancel_calls: HashSet<u64>,
    /// Every key ever started, with the result it ended with (when it did).
    pub results: std::collections::HashMap<u64, i64>,
    /// Keys ever started.
    pub started: HashSet<u64>,
    /// Most ops the fake kernel accepts at once (0: no limit); `start` refuses beyond.
    pub room: usize,
    /// Blocking closures started (they are run at once, on the ring's thread).
    pub blocking: usize,
}

/// The driver's handle on a fake backend.
#[derive(Clone, Debug, Default)]
pub struct FakeControl(pub(crate) Arc<Mutex<FakeState>>);

impl FakeControl {
    /// Locks the state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends in-flight op number `i` (index into `in_flight`) with `res` (a syscall result
    /// or `-errno`). Positive results are clamped to the op's length.
    pub fn complete(&self, i: usize, res: i64) -> Option<(u64, i64)> {
        let mut st = self.state();
        if st.in_flight.is_empty() {
            return None;
        }
        let i = i % st.in_flight.len();
        let op = st.in_flight.swap_remove(i);
        let res = if res > 0 { res.min(op.len as i64) } else { res };
        touch(&op, res);
        st.results.insert(op.key, res);
        st.done.push((op.key, res));
        Some((op.key, res))
    }

    /// Answers pending cancel request number `j`, choosing among the races io_uring
    /// allows with `choice`. Returns whether the target ended now.
    pub fn answer_cancel(&self, j: usize, choice: u8) -> bool {
        let mut st = self.state();
        if st.cancels.is_empty() {
            return false;
        }
        let j = j % st.cancels.len();
        let key = st.cancels.swap_remove(j);
        answer(&mut st, key, choice)
    }

    /// Time passes: every cancel is answered, every op asked to stop ends, and device
    /// I/O (Bounded) finishes. Pollable waits nobody canceled keep waiting.
    pub fn settle(&self) {
        let mut st = self.state();
        settle(&mut st);
    }
}

fn touch(op: &FakeOp, res: i64) {
    if res <= 0 || op.ptr == 0 || !matches!(op.kind, OpKind::Read | OpKind::Write) {
        return;
    }
    let n = res as usize;
    // SAFETY: the ring promises the buffer lives until this op's result is reaped; this
    // is exactly what a kernel would do with it (AddressSanitizer checks the promise).
    unsafe {
        let p = op.ptr as *mut u8;
        if op.kind == OpKind::Read {
            std::ptr::write_bytes(p, 0xab, n);
        } else {
            let mut sum = 0u8;
            for k in 0..n {
                sum = sum.wrapping_add(std::ptr::read_volatile(p.add(k)));
            }
            std::hint::black_box(sum);
        }
    }
}

fn end(st: &mut FakeState, key: u64, res: i64) -> bool {
    let Some(i) = st.in_flight.iter().position(|o| o.key == key) else {
        return false;
    };
    let op = st.in_flight.swap_remove(i);
    let res = if res > 0 { res.min(op.len as i64) } else { res };
    touch(&op, res);
    st.results.insert(key, res);
    st.done.push((key, res));
    true
}

/// io_uring's answers to ASYNC_CANCEL, by class, with `choice` picking the race.
fn answer(st: &mut FakeState, key: u64, choice: u8) -> bool {
    let Some(op) = st.in_flight.iter_mut().find(|o| o.key == key) else {
        return false; // ENOENT: it already finished; its own result is on its way
    };
    let len = op.len as i64;
    match (op.class, choice % 4) {
        // Device I/O is on no cancel list: ENOENT, it completes normally later.
        (CancelClass::Bounded, _) => false,
        // A pollable wait: removed from the wait queue, -ECANCELED ...
        (CancelClass::Prompt | CancelClass::Queued, 0 | 1) => {
            end(st, key, -(libc::ECANCELED as i64))
        }
        // ... or the data arrived first (the cancel finds nothing: ENOENT).
        (CancelClass::Prompt | CancelClass::Queued, 2) => end(st, key, len),
        (CancelClass::Prompt | CancelClass::Queued, _) => end(st, key, (len / 2).max(1)),
        // A worker op: -EALREADY, the worker is signaled and ends with -EINTR later ...
        (CancelClass::Interruptible, 0) => {
            op.interrupted = true;
            false
        }
        // ... or ends at once with EINTR, or with the bytes it moved, or finished anyway.
        (CancelClass::Interruptible, 1) => end(st, key, -(libc::EINTR as i64)),
        (CancelClass::Interruptible, 2) => end(st, key, len / 3),
        (CancelClass::Interruptible, _) => end(st, key, len),
    }
}

fn settle(st: &mut FakeState) {
    let cancels = std::mem::take(&mut st.cancels);
    for key in cancels {
        answer(st, key, 0);
    }
    let ops: Vec<FakeOp> = st.in_flight.clone();
    for op in ops {
        let asked = st.cancel_calls.contains(&op.key);
        if op.class == CancelClass::Bounded {
            end(st, op.key, op.len as i64);
        } else if op.interrupted {
            end(st, op.key, -(libc::EINTR as i64));
        } else if asked {
            end(st, op.key, -(libc::ECANCELED as i64));
        }
    }
}

thread_local! {
    static PENDING: RefCell<Option<FakeControl>> = const { RefCell::new(None) };
}

/// Makes the next ring built on this thread use a fake backend driven by `ctl`.
pub(crate) fn arm(ctl: FakeControl) {
    PENDING.with(|p| *p.borrow_mut() = Some(ctl));
}

/// The fake armed for the ring being built, if any.
pub(crate) fn take_armed() -> Option<Fake> {
    PENDING
        .with(|p| p.borrow_mut().take())
        .map(|ctl| Fake { ctl })
}

pub(crate) struct Fake {
    ctl: FakeControl,
}

impl Fake {
    pub(crate) fn start(&mut self, key: u64, raw: RawOp, class: CancelClass) -> bool {
        let mut st = self.ctl.state();
        if st.room != 0 && st.in_flight.len() >= st.room {
            return false;
        }
        st.started.insert(key);
        st.in_flight.push(FakeOp {
            key,
            kind: raw.kind,
            class,
            fd: raw.fd,
            offset: raw.offset,
            len: if matches!(raw.kind, OpKind::Read | OpKind::Write) {
                raw.len
            } else {
                0
            },
            ptr: raw.ptr as usize,
            interrupted: false,
        });
        true
    }

    pub(crate) fn start_blocking(&mut self, key: u64, f: BlockingFn) {
        let res = match f() {
            Ok(n) => n as i64,
            Err(e) => -(e.raw_os_error().unwrap_or(libc::EIO) as i64),
        };
        let mut st = self.ctl.state();
        st.blocking += 1;
        st.started.insert(key);
        st.results.insert(key, res);
        st.done.push((key, res));
    }

    pub(crate) fn cancel(&mut self, key: u64, _kind: OpKind, _class: CancelClass) {
        let mut st = self.ctl.state();
        st.cancel_calls.insert(key);
        st.cancels.push(key);
    }

    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    pub(crate) fn wait(&mut self, _timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        self.ctl.settle();
        Ok(())
    }

    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i64)>) {
        out.append(&mut self.ctl.state().done);
    }
}
