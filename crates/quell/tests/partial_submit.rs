//! An op the kernel refuses while preparing it (a path longer than `PATH_MAX`, flags
//! an opcode does not take) must not strand the ops, cancels and internal requests
//! queued behind it in the same batch (I1: every accepted op yields its completion).
//! io_uring stops taking entries at the first one that fails its preparation unless
//! the ring was set up with `IORING_SETUP_SUBMIT_ALL`; quell must hand the rest over
//! before it calls anything "submitted". Every test here drives the ring with
//! `poll` only (no blocking wait, which would re-enter the kernel and hide the loss),
//! behind a generous hang guard.
//!
//! The same file covers the other half of "`poll` hands everything over": a
//! completion the kernel has queued as task work (`IORING_SETUP_COOP_TASKRUN`: a
//! socket read finished from another CPU) must be seen by the next `poll` even when
//! there is nothing to submit; it used to wait for the next timer tick.

mod common;

use common::*;
use quell::{BackendChoice, CancelClass, Chain, Errno, Op, OpId, Outcome};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A path the kernel refuses before running anything: longer than `PATH_MAX` (4096).
fn long_path() -> String {
    "q".repeat(5000)
}

/// Ops the kernel refuses while preparing them, with the errno each must end with.
fn refused_in_prep() -> Vec<(&'static str, Op, Errno)> {
    vec![
        (
            "openat long path",
            Op::openat(libc::AT_FDCWD, long_path(), libc::O_RDONLY, 0),
            Errno::NAMETOOLONG,
        ),
        (
            "openat O_TMPFILE read-only",
            Op::openat(
                libc::AT_FDCWD,
                "/tmp",
                libc::O_TMPFILE | libc::O_RDONLY,
                0o600,
            ),
            Errno::INVAL,
        ),
        (
            "statx long path",
            Op::statx(libc::AT_FDCWD, long_path(), 0, libc::STATX_BASIC_STATS),
            Errno::NAMETOOLONG,
        ),
        (
            "unlinkat bad flags",
            Op::unlinkat(libc::AT_FDCWD, "quell-no-such-file", 0x4000_0000),
            Errno::INVAL,
        ),
        (
            "renameat long path",
            Op::renameat(libc::AT_FDCWD, long_path(), libc::AT_FDCWD, "quell-x", 0),
            Errno::NAMETOOLONG,
        ),
    ]
}

/// A waker for futures polled in a loop anyway (`Waker::noop` needs Rust 1.85).
struct NoWake;

impl std::task::Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// Calls `poll` (never `wait`) until every id in `want` has completed; panics after
/// `secs` seconds with what is still missing.
fn poll_until_all(
    ring: &mut quell::Ring,
    want: &[OpId],
    secs: u64,
) -> HashMap<OpId, quell::Completion> {
    let start = Instant::now();
    let mut got = HashMap::new();
    while got.len() < want.len() {
        ring.poll().expect("poll");
        for c in ring.completions() {
            assert!(want.contains(&c.id), "completion of an op never submitted");
            assert!(got.insert(c.id, c).is_none(), "two completions for one op");
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} of {} ops completed after {secs}s of poll(); outstanding: {:?}",
            got.len(),
            want.len(),
            ring.ops()
        );
        std::thread::yield_now();
    }
    got
}

both_backends! {
    /// A refused op followed, in the same batch, by nops, a read with data waiting,
    /// a file read and a cancel of an op already in the kernel: everything completes
    /// under `poll` alone, the refused op with its honest errno.
    fn ops_behind_a_refused_op_complete_under_poll(b: BackendChoice) {
        for (what, bad, errno) in refused_in_prep() {
            let mut ring = ring(b, 64);
            let (idle_r, _idle_w) = pipe();
            let pending = ring.submit(Op::read(raw(&idle_r), vec![0; 8])).unwrap();
            ring.poll().unwrap(); // the read is in the kernel before the batch below
            let (data_r, data_w) = pipe();
            write_all(raw(&data_w), b"ready");

            let bad = ring.submit(bad).unwrap();
            ring.cancel(pending).unwrap();
            let mut behind = Vec::new();
            for _ in 0..3 {
                behind.push(ring.submit(Op::nop()).unwrap());
            }
            let read = ring.submit(Op::read(raw(&data_r), vec![0; 8])).unwrap();
            let exe = std::fs::File::open("/proc/self/exe").unwrap();
            let file = ring.submit(Op::read_at(raw(&exe), 0, vec![0; 4])).unwrap();
            let mut all = vec![pending, bad, read, file];
            all.extend(&behind);

            let got = poll_until_all(&mut ring, &all, 10);
            assert_eq!(got[&bad].outcome, Outcome::Failed(errno), "{what}");
            assert!(
                got[&pending].outcome.is_canceled(),
                "{what}: the cancel behind the refused op reached the read: {:?}",
                got[&pending].outcome
            );
            for id in &behind {
                assert_eq!(got[id].outcome, Outcome::Done(0), "{what}");
            }
            assert_eq!(got[&read].outcome, Outcome::Done(5), "{what}");
            assert_eq!(got[&read].data(), b"ready", "{what}");
            assert_eq!(got[&file].data(), b"\x7fELF", "{what}");
            assert!(ring.is_empty(), "{what}");
        }
    }

    /// Several refused ops in one batch, each with ops behind it: each refusal would
    /// stop the kernel once more.
    fn many_refused_ops_in_one_batch(b: BackendChoice) {
        let mut ring = ring(b, 256);
        let mut bad = Vec::new();
        let mut nops = Vec::new();
        for _ in 0..4 {
            for (_, op, errno) in refused_in_prep() {
                bad.push((ring.submit(op).unwrap(), errno));
                nops.push(ring.submit(Op::nop()).unwrap());
            }
        }
        let mut all: Vec<OpId> = bad.iter().map(|(id, _)| *id).collect();
        all.extend(&nops);
        let got = poll_until_all(&mut ring, &all, 10);
        for (id, errno) in bad {
            assert_eq!(got[&id].outcome, Outcome::Failed(errno));
        }
        for id in nops {
            assert_eq!(got[&id].outcome, Outcome::Done(0));
        }
    }

    /// A chain whose open is refused in preparation (linked on io_uring: the head of
    /// the link fails) and ops behind it, a linked chain among them: the chain fails
    /// with the open's errno, the rest completes under `poll`.
    fn chain_with_a_refused_open_strands_nothing(b: BackendChoice) {
        let mut ring = ring(b, 64);
        let chain = Chain::new()
            .then(Op::openat(libc::AT_FDCWD, long_path(), libc::O_RDONLY, 0))
            .then(Op::read_at(Chain::OPENED, 0, vec![0; 8]).class(CancelClass::Bounded))
            .then(Op::close(Chain::OPENED));
        let chain = ring.submit_chain(chain).unwrap();
        let bad = ring
            .submit(Op::unlinkat(libc::AT_FDCWD, "quell-no-such-file", 0x4000_0000))
            .unwrap();
        let nop = ring.submit(Op::nop()).unwrap();
        // A linked batch behind the refused op.
        let good = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 4]).class(CancelClass::Bounded))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        let got = poll_until_all(&mut ring, &[chain, bad, nop, good], 10);
        assert_eq!(got[&good].outcome, Outcome::Done(4));
        assert_eq!(got[&good].steps().unwrap()[1].data(), b"\x7fELF");
        assert_eq!(got[&chain].outcome, Outcome::Failed(Errno::NAMETOOLONG));
        let steps = got[&chain].steps().unwrap();
        assert_eq!(steps[0].outcome(), Some(Outcome::Failed(Errno::NAMETOOLONG)));
        assert_eq!(steps[1].outcome(), None, "never ran");
        assert_eq!(got[&bad].outcome, Outcome::Failed(Errno::INVAL));
        assert_eq!(got[&nop].outcome, Outcome::Done(0));
        assert_eq!(ring.stats().direct_descriptors, 0, "the direct slot came back");
        if b == BackendChoice::Uring {
            assert_eq!(ring.stats().linked_chains, 2, "went to the kernel linked");
        }
    }

    /// Through the futures `Driver`, driven by `turn` (the non-blocking step an
    /// executor of one's own calls): the refused op's future and the nop's behind it
    /// both resolve.
    fn driver_futures_behind_a_refused_op_resolve(b: BackendChoice) {
        let driver = quell::future::Driver::new(ring(b, 64));
        let bad = driver
            .submit(Op::openat(libc::AT_FDCWD, long_path(), libc::O_RDONLY, 0))
            .unwrap();
        let nop = driver.submit(Op::nop()).unwrap();
        let waker = std::task::Waker::from(Arc::new(NoWake));
        let mut cx = Context::from_waker(&waker);
        let (mut bad, mut nop) = (pin!(bad), pin!(nop));
        let (mut bad_out, mut nop_out) = (None, None);
        let start = Instant::now();
        while bad_out.is_none() || nop_out.is_none() {
            if bad_out.is_none() {
                if let Poll::Ready(c) = bad.as_mut().poll(&mut cx) {
                    bad_out = Some(c);
                }
            }
            if nop_out.is_none() {
                if let Poll::Ready(c) = nop.as_mut().poll(&mut cx) {
                    nop_out = Some(c);
                }
            }
            driver.turn().unwrap();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "futures unresolved after 10s: refused op {}, nop {}",
                bad_out.is_some(),
                nop_out.is_some()
            );
            std::thread::yield_now();
        }
        assert_eq!(bad_out.unwrap().outcome, Outcome::Failed(Errno::NAMETOOLONG));
        assert_eq!(nop_out.unwrap().outcome, Outcome::Done(0));
    }
}

/// Completions the kernel queued as task work.
mod task_work {
    use super::*;

    /// Two CPUs this thread may run on, if it has two.
    fn two_cpus() -> Option<(usize, usize)> {
        let set = rustix::thread::sched_getaffinity(None).ok()?;
        let mut cpus = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c));
        Some((cpus.next()?, cpus.next()?))
    }

    fn pin_to(cpu: usize) {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
    }

    both_backends! {
        /// A read whose data a thread on another CPU writes: once the write has returned,
        /// one `poll` (with nothing to submit) returns the read's completion. The ring's
        /// thread spins without a system call between the write and the `poll`, so only
        /// the `poll` itself can run the kernel's queued task work.
        fn one_poll_sees_a_completion_queued_from_another_cpu(b: BackendChoice) {
            let Some((here, there)) = two_cpus() else {
                eprintln!("skipped: needs two CPUs");
                return;
            };
            let old = rustix::thread::sched_getaffinity(None).unwrap();
            pin_to(here);
            let mut ring = ring(b, 8);
            for round in 0..20 {
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let id = ring.submit(Op::read(raw(&a), vec![0; 8])).unwrap();
                // Drive until the read waits in the kernel (or on epoll), with nothing
                // left to submit.
                for _ in 0..10 {
                    ring.poll().unwrap();
                }
                assert!(ring.next_completion().is_none(), "no data yet");
                let (go, wrote) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
                let (go2, wrote2) = (go.clone(), wrote.clone());
                let writer = std::thread::spawn(move || {
                    pin_to(there);
                    while !go2.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    write_all(raw(&peer), b"late");
                    wrote2.store(true, Ordering::Release);
                    peer
                });
                go.store(true, Ordering::Release);
                let start = Instant::now();
                while !wrote.load(Ordering::Acquire) {
                    assert!(start.elapsed() < Duration::from_secs(10), "writer never wrote");
                    std::hint::spin_loop();
                }
                ring.poll().unwrap();
                let c = ring.next_completion();
                let _peer = writer.join().unwrap();
                let c = c.unwrap_or_else(|| panic!("round {round}: one poll after the write saw nothing"));
                assert_eq!(c.id, id);
                assert_eq!(c.data(), b"late");
            }
            rustix::thread::sched_setaffinity(None, &old).unwrap();
        }

        /// A timeout op, and a read whose data arrives later, complete in a loop that only
        /// calls `poll`.
        fn poll_only_loop_sees_every_completion(b: BackendChoice) {
            let mut ring = ring(b, 8);
            let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let read = ring.submit(Op::read(raw(&a), vec![0; 8])).unwrap();
            let timer = ring.submit(Op::timeout(Duration::from_millis(30))).unwrap();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(60));
                write_all(raw(&peer), b"later");
                peer
            });
            let start = Instant::now();
            let mut got = HashMap::new();
            while got.len() < 2 {
                ring.poll().unwrap();
                for c in ring.completions() {
                    got.insert(c.id, c);
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "poll-only loop saw {} of 2 completions after 10s",
                    got.len()
                );
                std::hint::spin_loop();
            }
            let _peer = writer.join().unwrap();
            assert_eq!(got[&timer].outcome, Outcome::Done(0));
            assert_eq!(got[&read].data(), b"later");
        }
    }
}

#[cfg(feature = "tokio")]
mod on_tokio {
    use super::*;

    both_backends! {
        /// Under `quell::tokio`, a nop behind a refused op completes (it hung for good).
        fn tokio_futures_behind_a_refused_op_resolve(b: BackendChoice) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let d = quell::future::Driver::new(ring(b, 64));
                quell::tokio::attach(&d).unwrap();
                let work = async {
                    let bad = d
                        .submit(Op::openat(libc::AT_FDCWD, long_path(), libc::O_RDONLY, 0))
                        .unwrap();
                    let nop = d.submit(Op::nop()).unwrap();
                    let (bad, nop) = tokio::join!(bad, nop);
                    (bad.outcome, nop.outcome)
                };
                let (bad, nop) = tokio::time::timeout(Duration::from_secs(10), work)
                    .await
                    .expect("futures behind a refused op resolve");
                assert_eq!(bad, Outcome::Failed(Errno::NAMETOOLONG));
                assert_eq!(nop, Outcome::Done(0));
            });
        }
    }

    /// `quell::tokio::driver()` (the default ring, io_uring here) as the issue saw it.
    #[test]
    fn default_tokio_driver_completes_a_nop_behind_a_refused_open() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = quell::tokio::driver().unwrap();
            let bad = d
                .submit(Op::openat(libc::AT_FDCWD, long_path(), libc::O_RDONLY, 0))
                .unwrap();
            let nop = d.submit(Op::nop()).unwrap();
            let nop = tokio::time::timeout(Duration::from_secs(10), nop)
                .await
                .expect("the nop behind the refused open completes");
            assert_eq!(nop.outcome, Outcome::Done(0));
            let bad = tokio::time::timeout(Duration::from_secs(10), bad)
                .await
                .unwrap();
            assert_eq!(bad.outcome, Outcome::Failed(Errno::NAMETOOLONG));
        });
    }
}
