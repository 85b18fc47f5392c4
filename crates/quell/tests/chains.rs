//! Chains (DESIGN I6): steps share one cancel flag; canceled or failed chains still
//! close what they opened. Leaks are counted in /proc/self/fd by target, so tests
//! running in parallel do not disturb the count.

mod common;

use common::fault::{mount, Watchdog};
use common::*;
use quell::{Chain, Error, GroupId, GroupOptions, Op, OpKind, OpState, Outcome};
use quell_faultfs::{Behavior, FileSpec, Rule, Spec};
use std::path::Path;
use std::time::{Duration, Instant};

const SIZE: u64 = 64 << 10;

/// Descriptors of this process that refer to something under `prefix`.
fn fds_into(prefix: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.starts_with(prefix))
        .count()
}

/// open → read 4 KiB at 0 → read 4 KiB at 8 KiB → close.
fn four_steps(path: &Path) -> Chain {
    Chain::new()
        .then(Op::openat(libc::AT_FDCWD, path, libc::O_RDONLY, 0))
        .then(Op::read_at(Chain::OPENED, 0, vec![0; 4096]))
        .then(Op::read_at(Chain::OPENED, 8192, vec![0; 4096]))
        .then(Op::close(Chain::OPENED))
        .user_data(99)
}

fn outcomes(c: &quell::Completion) -> Vec<Option<Outcome>> {
    c.steps().unwrap().iter().map(|s| s.outcome()).collect()
}

fn opened_fd(c: &quell::Completion) -> usize {
    match c.steps().unwrap()[0].outcome() {
        Some(Outcome::Done(fd)) => fd,
        o => panic!("open did not finish: {o:?}"),
    }
}

/// Drives the ring until the chain's step `kind` is in flight.
fn until_in_flight(ring: &mut quell::Ring, kind: OpKind) {
    let start = Instant::now();
    loop {
        ring.wait(1, Some(Duration::from_millis(10))).unwrap();
        let ops = ring.ops();
        if ops
            .iter()
            .any(|o| o.kind == kind && o.state == OpState::InFlight)
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{kind} never in flight: {ops:?}"
        );
    }
}

/// Drives the ring (the hop from one step to the next happens on its thread) until
/// `n` requests are parked in the daemon.
fn until_parked(ring: &mut quell::Ring, fs: &quell_faultfs::FaultFs, n: usize) {
    let start = Instant::now();
    while !fs.wait_parked(n, Duration::from_millis(10)) {
        ring.poll().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{n} reads never reached the daemon: {:?}",
            ring.ops()
        );
    }
}

fn hang_at(range: std::ops::Range<u64>) -> Spec {
    Spec::new().file(FileSpec::pattern("f", SIZE).rule(Rule::read(range, Behavior::Hang)))
}

both_backends! {
    fn chain_runs_every_step_and_hands_buffers_back(b: BackendChoice) {
        let Some(fs) = mount(Spec::new().file(FileSpec::pattern("f", SIZE))) else { return };
        let mut ring = ring(b, 16);
        let id = ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.user_data, 99);
        assert_eq!(c.outcome, Outcome::Done(8192));
        let o = outcomes(&c);
        assert_eq!(o[1..], [Some(Outcome::Done(4096)), Some(Outcome::Done(4096)), Some(Outcome::Done(0))]);
        let steps = c.into_steps().unwrap();
        assert_eq!(steps.len(), 4, "no cleanup step added to a chain that closed itself");
        for (i, byte) in steps[2].data().iter().enumerate() {
            assert_eq!(*byte, quell_faultfs::pattern_byte(8192 + i as u64));
        }
        assert_eq!(fds_into(fs.mountpoint()), 0);
        assert_eq!(ring.len(), 0);
    }

    fn chain_canceled_while_queued_runs_nothing(b: BackendChoice) {
        let Some(fs) = mount(Spec::new().file(FileSpec::pattern("f", SIZE))) else { return };
        // A dispatch window of one, taken by a read that never ends: the chain waits
        // in quell's own queue.
        let mut ring = quell::Ring::builder().backend(b).max_in_flight(1).build().unwrap();
        let (r, _w) = pipe();
        let blocker = ring.submit(Op::read(raw(&r), vec![0; 8])).unwrap();
        let id = ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        ring.poll().unwrap();
        assert_eq!(ring.ops().iter().find(|o| o.id == id).unwrap().state, OpState::Queued);
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        ring.cancel(blocker).unwrap();
        ring.wait_for(blocker).unwrap();
        let steps = c.into_steps().unwrap();
        assert_eq!(steps[0].outcome().map(|o| o.is_canceled()), Some(true));
        assert!(steps[1..].iter().all(|s| s.outcome().is_none()));
        assert_eq!(steps[2].buf().map(|b| b.len()), Some(4096), "buffers of steps never run come back");
        assert_eq!(fs.stats().opens, 0);
        assert_eq!(fds_into(fs.mountpoint()), 0);
    }

    fn chain_canceled_during_its_open_leaks_nothing(b: BackendChoice) {
        // Opening a FIFO for reading blocks until a writer comes: an open held in flight.
        let dir = std::env::temp_dir().join(format!("quell-chain-fifo-{}-{b:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fifo = dir.join("fifo");
        let cpath = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
        // Safety net: if the cancel is lost, a writer unblocks the open after 20 s.
        let (f2, stop) = (fifo.clone(), std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let s2 = stop.clone();
        let net = std::thread::spawn(move || {
            let start = Instant::now();
            while !s2.load(std::sync::atomic::Ordering::Acquire) {
                if start.elapsed() > Duration::from_secs(20) {
                    let _w = std::fs::OpenOptions::new().write(true).open(&f2);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut ring = ring(b, 16);
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDONLY, 0))
                    .then(Op::read(Chain::OPENED, vec![0; 64]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        // The open blocks as open(2) does, on both backends (a pool worker, an io_uring
        // worker): the chain is held in its open.
        until_in_flight(&mut ring, OpKind::OpenAt);
        std::thread::sleep(Duration::from_millis(50)); // let it block in the kernel
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Release);
        net.join().unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        let stopped = Some(Outcome::Canceled { transferred: 0 });
        assert_eq!(outcomes(&c), [stopped, None, None], "nothing was opened, nothing to close");
        assert_eq!(fds_into(&dir), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn chain_canceled_at_its_first_read_still_closes(b: BackendChoice) {
        let Some(fs) = mount(hang_at(0..4096)) else { return };
        let _dog = Watchdog::new(&fs, 30);
        let mut ring = ring(b, 16);
        let id = ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        until_parked(&mut ring, &fs, 1);
        // The number the open returned, and the chain's own duplicate of it (I12).
        assert_eq!(fds_into(fs.mountpoint()), 2, "the chain holds the file open");
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        opened_fd(&c);
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Canceled { transferred: 0 }), None, Some(Outcome::Done(0))]);
        assert!(!c.steps().unwrap()[3].is_cleanup(), "the chain's own close ran");
        assert_eq!(fds_into(fs.mountpoint()), 0, "descriptor leaked");
    }

    fn chain_canceled_at_its_second_read_still_closes(b: BackendChoice) {
        let Some(fs) = mount(hang_at(8192..12288)) else { return };
        let _dog = Watchdog::new(&fs, 30);
        let mut ring = ring(b, 16);
        let id = ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        until_parked(&mut ring, &fs, 1);
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 4096 }, "the first read's bytes count");
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Done(4096)), Some(Outcome::Canceled { transferred: 0 }), Some(Outcome::Done(0))]);
        assert_eq!(c.steps().unwrap()[1].data()[..4], [0, 1, 2, 3].map(quell_faultfs::pattern_byte));
        assert_eq!(fds_into(fs.mountpoint()), 0, "descriptor leaked");
    }

    fn cancel_during_the_close_lets_it_finish(b: BackendChoice) {
        let spec = Spec::new().file(
            FileSpec::pattern("f", SIZE).rule(Rule::read(8192..12288, Behavior::Delay { ms: 30 })),
        );
        let Some(fs) = mount(spec) else { return };
        let mut ring = ring(b, 16);
        let id = ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        // Wait until the close is the step in the slot, then cancel: it is shielded.
        let start = Instant::now();
        while !ring.ops().iter().all(|o| o.kind == OpKind::Close) {
            assert!(start.elapsed() < Duration::from_secs(10));
            ring.wait(1, Some(Duration::from_millis(1))).unwrap();
        }
        let _ = ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(8192), "every step had run: the cancel came too late");
        assert_eq!(outcomes(&c)[3], Some(Outcome::Done(0)));
        assert_eq!(fds_into(fs.mountpoint()), 0);
    }

    fn chain_without_close_gets_one_when_canceled(b: BackendChoice) {
        let Some(fs) = mount(hang_at(0..4096)) else { return };
        let _dog = Watchdog::new(&fs, 30);
        let mut ring = ring(b, 16);
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, fs.path("f"), libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 4096])),
            )
            .unwrap();
        until_parked(&mut ring, &fs, 1);
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        let steps = c.steps().unwrap();
        assert_eq!(steps.len(), 3);
        assert!(steps[2].is_cleanup());
        assert_eq!(steps[2].kind(), OpKind::Close);
        assert_eq!(steps[2].outcome(), Some(Outcome::Done(0)));
        assert_eq!(fds_into(fs.mountpoint()), 0);
    }

    fn failing_step_cancels_the_rest_and_closes(b: BackendChoice) {
        let spec = Spec::new().file(
            FileSpec::pattern("f", SIZE).rule(Rule::read(8192..12288, Behavior::Eio)),
        );
        let Some(fs) = mount(spec) else { return };
        let mut ring = ring(b, 16);
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, fs.path("f"), libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 8192, vec![0; 4096]))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 4096]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Failed(quell::Errno::IO));
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Failed(quell::Errno::IO)), None, Some(Outcome::Done(0))]);
        assert_eq!(fs.stats().bytes_read, 0, "the step after the failure never ran");
        assert_eq!(fds_into(fs.mountpoint()), 0);
    }

    fn chain_deadline_and_group_cancel_reach_the_running_step(b: BackendChoice) {
        let Some(fs) = mount(hang_at(0..4096)) else { return };
        let _dog = Watchdog::new(&fs, 30);
        let mut ring = ring(b, 16);
        let timed = ring
            .submit_chain(four_steps(&fs.path("f")).deadline(Instant::now() + Duration::from_millis(150)))
            .unwrap();
        let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
        let grouped = ring.submit_chain(four_steps(&fs.path("f")).group(g)).unwrap();
        until_parked(&mut ring, &fs, 2);
        // A started chain is in flight as a whole: drain lets it run.
        assert_eq!(ring.drain(g).unwrap(), 0);
        let c = ring.wait_for(timed).unwrap();
        assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 });
        assert_eq!(outcomes(&c)[3], Some(Outcome::Done(0)));
        assert!(ring.ops().iter().any(|o| o.id == grouped), "drain did not cancel the started chain");
        ring.cancel_group(g).unwrap();
        let c = ring.wait_for(grouped).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(outcomes(&c)[3], Some(Outcome::Done(0)));
        assert!(ring.wait_drained(g, Some(Duration::from_secs(5))).unwrap());
        assert_eq!(fds_into(fs.mountpoint()), 0);
    }

    fn dropping_the_ring_mid_chain_closes_what_it_opened(b: BackendChoice) {
        let Some(fs) = mount(hang_at(0..4096)) else { return };
        let _dog = Watchdog::new(&fs, 30);
        let mut ring = ring(b, 16);
        for _ in 0..3 {
            ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        }
        until_parked(&mut ring, &fs, 3);
        assert_eq!(fds_into(fs.mountpoint()), 6, "each chain's number and its duplicate");
        let left = ring.shutdown();
        assert_eq!(left.len(), 3);
        for c in &left {
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
            assert_eq!(outcomes(c)[3], Some(Outcome::Done(0)));
        }
        assert_eq!(fds_into(fs.mountpoint()), 0);
    }

    fn bad_chains_are_refused_whole_and_bad_later_steps_fail_it(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let e = ring.submit_chain(Chain::new()).unwrap_err();
        assert!(matches!(e.error(), Error::InvalidArgument(_)));
        let e = ring
            .submit_chain(Chain::new().then(Op::read(Chain::OPENED, vec![0; 32])).then(Op::nop()))
            .unwrap_err();
        assert!(matches!(e.error(), Error::InvalidArgument(_)));
        let ops = e.into_chain().into_ops();
        assert_eq!(ops.len(), 2);
        let e = ring
            .submit_chain(Chain::new().then(Op::read(-5, vec![0; 32])).user_data(3))
            .unwrap_err();
        assert!(matches!(e.error(), Error::InvalidFd { fd: -5 }));
        let mut back = e.into_chain().into_ops();
        assert_eq!(back.pop().unwrap().into_buf().unwrap().len(), 32);
        // A step whose descriptor is gone when its turn comes fails the chain (EBADF).
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))
                    .then(Op::close(Chain::OPENED))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 16])),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF));
        let steps = c.into_steps().unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[2].outcome(), Some(Outcome::Failed(quell::Errno::BADF)));
        assert_eq!(steps.into_iter().nth(2).unwrap().into_buf().unwrap().len(), 16);
    }

    fn quiesce_cancels_a_chain_closes_its_fd_and_does_not_describe_it(b: BackendChoice) {
        let Some(fs) = mount(hang_at(0..4096)) else { return };
        let _dog = Watchdog::new(&fs, 30);
        let mut ring = ring(b, 16);
        let (r, _w) = pipe();
        let plain = ring.submit(Op::read(raw(&r), vec![0; 8]).user_data(5)).unwrap();
        let id = ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        until_parked(&mut ring, &fs, 1);
        let ckpt = ring.quiesce(quell::QuiescePolicy::default()).unwrap();
        assert_eq!(ckpt.ops.len(), 1, "only the plain read is described: {:?}", ckpt.ops);
        assert_eq!(ckpt.ops[0].user_data, 5);
        assert!(ckpt.unfinished.is_empty(), "{:?}", ckpt.unfinished);
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(outcomes(&c)[3], Some(Outcome::Done(0)), "closed while quiesced");
        assert_eq!(fds_into(fs.mountpoint()), 0);
        assert!(ring.wait_for(plain).unwrap().outcome.is_canceled());
    }

    fn exact_step_retries_inside_a_chain_and_draining_refuses_it_whole(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        let (r2, w2) = pipe();
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::read(raw(&r), vec![0; 6]).exact())
                    .then(Op::write(raw(&w2), b"done".to_vec())),
            )
            .unwrap();
        write_all(raw(&w), b"abc");
        ring.poll().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        ring.poll().unwrap();
        assert!(drain_nonblocking(raw(&r2)).is_empty(), "the write ran before the read was whole");
        write_all(raw(&w), b"def");
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(10));
        assert_eq!(c.steps().unwrap()[0].data(), b"abcdef");
        assert_eq!(drain_nonblocking(raw(&r2)), b"done");
        // A draining group refuses a new chain and hands every step back.
        let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
        ring.drain(g).unwrap();
        let e = ring
            .submit_chain(Chain::new().then(Op::nop()).then(Op::read(raw(&r), vec![0; 9])).group(g))
            .unwrap_err();
        assert!(matches!(e.error(), Error::Draining));
        let ops = e.into_chain().into_ops();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops.into_iter().nth(1).unwrap().into_buf().unwrap().len(), 9);
    }

    fn chain_on_a_fuse_file_is_sequenced(b: BackendChoice) {
        // Its reads must run on quell's pool (I5): told by the path's file system, the
        // chain is not given to the kernel linked, on io_uring either.
        let Some(fs) = mount(Spec::new().file(FileSpec::pattern("f", SIZE))) else { return };
        let mut ring = ring(b, 16);
        let id = ring.submit_chain(four_steps(&fs.path("f"))).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(8192));
        assert!(opened_fd(&c) > 0, "a real descriptor, not a direct one");
        assert_eq!(ring.stats().linked_chains, 0);
        assert_eq!(fds_into(fs.mountpoint()), 0);
    }
}
