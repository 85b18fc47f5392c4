//! I3 for every entry point: while the ring's owner sleeps (in `Ring::wait`, in
//! `Driver::block_on`, in a tokio reactor turn, or waiting on a pool job that blocks),
//! another thread's cancels (by id, descriptor, group, all), drops, submissions and
//! `Handle` calls return at once, and work it submits runs without waiting for some
//! unrelated I/O to wake the owner. Each call runs under a hang guard of seconds (not a
//! timed assertion: a loaded machine only makes it slower, never failing).

mod common;

use common::*;
use quell::future::Driver;
use quell::{BackendChoice, GroupId, GroupOptions, Op};
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// Generous: only a call that waits behind the owner's sleep takes this long.
const GUARD: Duration = Duration::from_secs(5);

/// Runs `f` on a thread of its own and fails the test if it does not return within
/// [`GUARD`] (the thread is left behind: the owner it waits for never wakes).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(GUARD)
        .unwrap_or_else(|_| panic!("{what} did not return while the ring's owner slept (I3)"))
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);
impl Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits for `fut` on this thread *without driving the ring*: the sleeping owner must
/// do it, woken by the submission itself.
fn wait_driven_elsewhere<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// Every futures-layer entry point, each from another thread under the hang guard,
/// while `d`'s owner sleeps. `quiet` is a descriptor nothing is ever written to.
fn poke_driver(d: &Driver, quiet: RawFd) {
    let d1 = d.clone();
    within("submitting and dropping a read", move || {
        drop(d1.read(quiet, vec![0u8; 8]));
    });
    let d1 = d.clone();
    within("OpFuture::cancel", move || {
        let mut f = d1.submit(Op::read(quiet, vec![0u8; 8])).unwrap();
        f.cancel();
        drop(f);
    });
    let d1 = d.clone();
    let c = within("submitting a nop and awaiting it", move || {
        wait_driven_elsewhere(d1.submit(Op::nop()).unwrap())
    });
    assert!(c.outcome.is_done());
    let d1 = d.clone();
    let c = within(
        "a Canceller, and the canceled read's completion",
        move || {
            let f = d1.submit(Op::read(quiet, vec![0u8; 8])).unwrap();
            f.canceller().unwrap().cancel();
            wait_driven_elsewhere(f)
        },
    );
    assert!(c.outcome.is_canceled(), "{:?}", c.outcome);
    let d1 = d.clone();
    let c = within("canceling a group through with_ring", move || {
        let g = d1
            .with_ring(|r| r.group(GroupId::ROOT, GroupOptions::default()))
            .unwrap();
        let f = d1.submit(Op::read(quiet, vec![0u8; 8]).group(g)).unwrap();
        d1.with_ring(|r| r.cancel_group(g)).unwrap();
        wait_driven_elsewhere(f)
    });
    assert!(c.outcome.is_canceled(), "{:?}", c.outcome);
    let d1 = d.clone();
    let c = within("canceling by descriptor through with_ring", move || {
        let f = d1.submit(Op::read(quiet, vec![0u8; 8])).unwrap();
        d1.with_ring(|r| r.cancel_fd(quiet));
        wait_driven_elsewhere(f)
    });
    assert!(c.outcome.is_canceled(), "{:?}", c.outcome);
    let d1 = d.clone();
    within("Handle calls", move || {
        let h = d1.with_ring(|r| r.handle());
        h.cancel_fd(quiet).unwrap();
        h.wake().unwrap();
        let f = d1.submit(Op::read(quiet, vec![0u8; 8])).unwrap();
        h.cancel(f.id().unwrap()).unwrap();
        assert!(wait_driven_elsewhere(f).outcome.is_canceled());
        let ops = h.request_ops().unwrap().wait(GUARD).unwrap();
        assert!(!ops.is_empty(), "the owner's own op is listed");
    });
    let d1 = d.clone();
    within("outstanding and kept_bytes", move || {
        let _ = d1.outstanding();
        let _ = d1.kept_bytes(quiet);
    });
}

/// What the owner sleeps on.
#[derive(Clone, Copy)]
enum Blocker {
    /// A socket read nothing is written to (until the end).
    Read,
    /// A pool job blocked in a read of a pipe nothing is written to.
    PoolJob,
}

/// The op the owner waits for, and what ends it.
fn blocker(kind: Blocker) -> (Op, impl FnOnce()) {
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = r.as_raw_fd();
    let op = match kind {
        Blocker::Read => Op::read(fd, vec![0u8; 8]),
        Blocker::PoolJob => Op::blocking(move || {
            let mut buf = [0u8; 8];
            // SAFETY: valid buffer; `r` is kept open by the closure below until the
            // job has ended (the write ends the read).
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }),
    };
    let end = move || {
        std::io::Write::write_all(&mut &w, b"end").unwrap();
        // The pool job reads from `r` until it has the bytes; keep it open till then.
        std::thread::sleep(Duration::from_millis(50));
        drop(r);
    };
    (op, end)
}

fn under_block_on(b: BackendChoice, kind: Blocker) {
    let d = Driver::new(ring(b, 256));
    let (quiet, _quiet_w) = std::os::unix::net::UnixStream::pair().unwrap();
    let (op, end) = blocker(kind);
    let f = d.submit(op).unwrap();
    let d1 = d.clone();
    let owner = std::thread::spawn(move || d1.block_on(f));
    // Give the owner time to fall asleep (if it has not, the test only gets easier).
    std::thread::sleep(Duration::from_millis(100));
    poke_driver(&d, quiet.as_raw_fd());
    end();
    let c = within("the owner's own op", move || owner.join().unwrap());
    assert!(c.outcome.is_done(), "{:?}", c.outcome);
}

fn under_ring_wait(b: BackendChoice, kind: Blocker) {
    let mut ring = ring(b, 64);
    let (quiet, _quiet_w) = std::os::unix::net::UnixStream::pair().unwrap();
    let quiet = quiet.as_raw_fd();
    let (op, end) = blocker(kind);
    let id = ring.submit(op).unwrap();
    let other = ring.submit(Op::read(quiet, vec![0u8; 8])).unwrap();
    let (grouped_r, _grouped_w) = std::os::unix::net::UnixStream::pair().unwrap();
    let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
    let grouped = ring
        .submit(Op::read(grouped_r.as_raw_fd(), vec![0u8; 8]).group(g))
        .unwrap();
    let drained = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
    let h = ring.handle();
    let owner = std::thread::spawn(move || {
        // Sleeps until something completes; loops until the owner's op and the
        // canceled group's op are in.
        let mut got = Vec::new();
        while !(got.iter().any(|c: &quell::Completion| c.id == id)
            && got.iter().any(|c: &quell::Completion| c.id == grouped))
        {
            ring.wait(1, None).unwrap();
            got.extend(ring.completions());
        }
        got
    });
    std::thread::sleep(Duration::from_millis(100));
    let h1 = h.clone();
    within("Handle::cancel", move || h1.cancel(other).unwrap());
    let h1 = h.clone();
    within("Handle::cancel_fd", move || h1.cancel_fd(quiet).unwrap());
    let h1 = h.clone();
    within("Handle::wake", move || h1.wake().unwrap());
    let h1 = h.clone();
    within(
        "Handle::request_ops, served by the waking owner",
        move || h1.request_ops().unwrap().wait(GUARD).unwrap(),
    );
    let h1 = h.clone();
    within("Handle::cancel_group", move || h1.cancel_group(g).unwrap());
    let h1 = h.clone();
    within("Handle::drain", move || h1.drain(drained).unwrap());
    end();
    let got = within("the owner's own op", move || owner.join().unwrap());
    assert!(got.iter().any(|c| c.id == other && c.outcome.is_canceled()));
    assert!(got
        .iter()
        .any(|c| c.id == grouped && c.outcome.is_canceled()));
    let h1 = h.clone();
    within("Handle::cancel_all", move || {
        h1.cancel_all().map_err(|e| e.to_string())
    })
    .unwrap_or_default();
}

#[cfg(feature = "tokio")]
fn under_tokio(b: BackendChoice, kind: Blocker) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = rt.block_on(async {
        let d = Driver::new(ring(b, 256));
        quell::tokio::attach(&d).unwrap();
        d
    });
    let (quiet, _quiet_w) = std::os::unix::net::UnixStream::pair().unwrap();
    let (op, end) = blocker(kind);
    let f = d.submit(op).unwrap();
    // The runtime's one thread sleeps in its reactor (epoll on the ring's descriptor).
    let owner = std::thread::spawn(move || rt.block_on(f));
    std::thread::sleep(Duration::from_millis(100));
    poke_driver(&d, quiet.as_raw_fd());
    end();
    let c = within("the owner's own op", move || owner.join().unwrap());
    assert!(c.outcome.is_done(), "{:?}", c.outcome);
}

both_backends! {
    fn block_on_sleeping_on_a_read_blocks_no_entry_point(b: BackendChoice) {
        under_block_on(b, Blocker::Read);
    }

    fn block_on_waiting_for_a_blocked_pool_job_blocks_no_entry_point(b: BackendChoice) {
        under_block_on(b, Blocker::PoolJob);
    }

    fn ring_wait_blocks_no_handle_call(b: BackendChoice) {
        under_ring_wait(b, Blocker::Read);
    }

    fn ring_wait_on_a_blocked_pool_job_blocks_no_handle_call(b: BackendChoice) {
        under_ring_wait(b, Blocker::PoolJob);
    }
}

#[cfg(feature = "tokio")]
mod on_tokio {
    use super::*;

    both_backends! {
        fn a_sleeping_reactor_blocks_no_entry_point(b: BackendChoice) {
            under_tokio(b, Blocker::Read);
        }

        fn a_reactor_waiting_for_a_blocked_pool_job_blocks_no_entry_point(b: BackendChoice) {
            under_tokio(b, Blocker::PoolJob);
        }
    }
}
