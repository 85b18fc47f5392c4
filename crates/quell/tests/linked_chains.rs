//! Chains on files the kernel can sequence (DESIGN I6): on io_uring they go to the
//! kernel as one batch of linked SQEs, the open into a direct descriptor; on the
//! portable backend they are sequenced in user space. Outcomes are the same on both.
//!
//! A direct descriptor never shows in /proc/self/fd, so "nothing left open" is checked
//! through the file itself: a FIFO the chain opened read-write still has a reader
//! while any descriptor of it is open, and a non-blocking write-only open of a FIFO
//! succeeds only when it has a reader.

mod common;

use common::*;
use quell::{BackendChoice, Chain, Errno, Op, OpKind, OpState, Outcome, Ring};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fresh directory for one test on one backend.
fn scratch(name: &str, b: BackendChoice) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("quell-linked-{}-{name}-{b:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn fifo_in(dir: &Path) -> PathBuf {
    let p = dir.join("fifo");
    let c = CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    p
}

/// Whether any descriptor (direct or not) still holds `fifo` open for reading, once
/// descriptors a forked child may hold for a moment (between its fork and its exec,
/// as when another test mounts a FUSE file system) are gone: a leaked descriptor
/// stays, a child's copy goes within moments.
fn fifo_has_reader(fifo: &Path) -> bool {
    let start = Instant::now();
    while fifo_reader_now(fifo) {
        if start.elapsed() > Duration::from_secs(2) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Whether `fifo` has a reader right now.
fn fifo_reader_now(fifo: &Path) -> bool {
    let c = CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid path; the descriptor is closed right away.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
    if fd >= 0 {
        // SAFETY: fd was just opened.
        unsafe { libc::close(fd) };
        return true;
    }
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    false
}

/// Descriptors of this process that refer to something under `prefix`.
fn fds_into(prefix: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.starts_with(prefix))
        .count()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn outcomes(c: &quell::Completion) -> Vec<Option<Outcome>> {
    c.steps().unwrap().iter().map(|s| s.outcome()).collect()
}

/// The chain went to the kernel linked on io_uring, and was sequenced on portable.
fn assert_path(ring: &Ring, b: BackendChoice, linked: u64) {
    let want = if b == BackendChoice::Uring { linked } else { 0 };
    assert_eq!(ring.stats().linked_chains, want, "linked chains on {b:?}");
    assert_eq!(
        ring.stats().direct_descriptors,
        0,
        "a direct descriptor is still held"
    );
}

/// Drives the ring until the chain's running step is `kind`, in flight.
fn until_running(ring: &mut Ring, kind: OpKind) {
    let start = Instant::now();
    loop {
        ring.wait(1, Some(Duration::from_millis(5))).unwrap();
        if ring
            .ops()
            .iter()
            .any(|o| o.kind == kind && o.state == OpState::InFlight)
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{kind} never ran: {:?}",
            ring.ops()
        );
    }
}

both_backends! {
    fn open_read_close_of_a_cached_file(b: BackendChoice) {
        let dir = scratch("orc", b);
        let path = dir.join("f");
        std::fs::write(&path, pattern(16384)).unwrap();
        let mut ring = ring(b, 16);
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 4096, vec![0; 4096]))
                    .then(Op::close(Chain::OPENED))
                    .user_data(11),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.user_data, 11);
        assert_eq!(c.outcome, Outcome::Done(4096));
        let o = outcomes(&c);
        assert!(matches!(o[0], Some(Outcome::Done(_))));
        assert_eq!(o[1..], [Some(Outcome::Done(4096)), Some(Outcome::Done(0))]);
        assert_eq!(c.steps().unwrap()[1].data(), &pattern(16384)[4096..8192]);
        assert_path(&ring, b, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn canceled_at_its_open_opens_nothing(b: BackendChoice) {
        let dir = scratch("cancel-open", b);
        let fifo = fifo_in(&dir);
        let mut ring = ring(b, 16);
        // A FIFO's open for reading waits for a writer (O_CREAT keeps io_uring from
        // trying it non-blocking first): the open is held in the kernel.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDONLY | libc::O_CREAT, 0o600))
                    .then(Op::read(Chain::OPENED, vec![0; 64]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        until_running(&mut ring, OpKind::OpenAt);
        std::thread::sleep(Duration::from_millis(30)); // let it block
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(outcomes(&c), [Some(Outcome::Canceled { transferred: 0 }), None, None]);
        assert_eq!(c.steps().unwrap()[1].buf().map(|b| b.len()), Some(64));
        assert!(!fifo_has_reader(&fifo));
        assert_path(&ring, b, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn canceled_at_the_read_before_its_close_still_closes(b: BackendChoice) {
        let dir = scratch("cancel-read", b);
        let fifo = fifo_in(&dir);
        let mut ring = ring(b, 16);
        // Opened read-write, a FIFO never waits for a partner; the read waits for data.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDWR, 0))
                    .then(Op::read(Chain::OPENED, vec![0; 64]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        until_running(&mut ring, OpKind::Read);
        assert!(fifo_reader_now(&fifo), "the chain holds the FIFO open");
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Canceled { transferred: 0 }), Some(Outcome::Done(0))]);
        assert!(!c.steps().unwrap()[2].is_cleanup(), "the chain's own close ran");
        assert!(!fifo_has_reader(&fifo), "the FIFO was left open");
        assert_path(&ring, b, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn canceled_at_a_middle_step_skips_the_rest_and_closes(b: BackendChoice) {
        let dir = scratch("cancel-middle", b);
        let fifo = fifo_in(&dir);
        let mut ring = ring(b, 16);
        // The canceled read is not the step before the close: on io_uring the kernel
        // cancels the close with the rest of the link, and quell closes on its own.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDWR, 0))
                    .then(Op::read(Chain::OPENED, vec![0; 64]))
                    .then(Op::write(Chain::OPENED, b"never".to_vec()))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        until_running(&mut ring, OpKind::Read);
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(
            outcomes(&c)[1..],
            [Some(Outcome::Canceled { transferred: 0 }), None, Some(Outcome::Done(0))]
        );
        assert_eq!(c.steps().unwrap().len(), 4, "no cleanup step added: its own close ran");
        assert!(!fifo_has_reader(&fifo));
        assert_path(&ring, b, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn failing_middle_step_skips_the_rest_and_closes(b: BackendChoice) {
        let dir = scratch("fail-middle", b);
        let path = dir.join("f");
        std::fs::write(&path, pattern(8192)).unwrap();
        let mut ring = ring(b, 16);
        let open_dir = || Op::openat(libc::AT_FDCWD, &dir, libc::O_RDONLY | libc::O_DIRECTORY, 0);
        // A read of a directory fails in the kernel (EISDIR). It is not the step
        // before the close: on io_uring the kernel cancels the close with the rest of
        // the link, and quell closes the direct descriptor on its own.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(open_dir())
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 512]))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 256]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Failed(Errno::ISDIR));
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Failed(Errno::ISDIR)), None, Some(Outcome::Done(0))]);
        assert_eq!(c.steps().unwrap()[2].buf().map(|b| b.len()), Some(256), "its buffer came back");
        assert_path(&ring, b, 1);
        // The step before the close fails: on io_uring the hard link runs the close.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(open_dir())
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 512]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Failed(Errno::ISDIR));
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Failed(Errno::ISDIR)), Some(Outcome::Done(0))]);
        assert_path(&ring, b, 2);
        // An open that fails: nothing to close, nothing else runs.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, dir.join("missing"), libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 512]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Failed(Errno::NOENT));
        assert_eq!(outcomes(&c), [Some(Outcome::Failed(Errno::NOENT)), None, None]);
        assert_path(&ring, b, 3);
        // A fallocate with a step after it other than the close is sequenced (the
        // kernel would run the read after its EBADF); the outcome is the same.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0))
                    .then(Op::fallocate(Chain::OPENED, 0, 0, 4096))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 4096]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Failed(Errno::BADF));
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Failed(Errno::BADF)), None, Some(Outcome::Done(0))]);
        assert!(c.steps().unwrap()[2].buf().unwrap().iter().all(|&b| b == 0), "the read after the failure ran");
        assert_path(&ring, b, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn short_transfers_do_not_end_the_chain(b: BackendChoice) {
        // In the kernel a short read severs a link; sequenced, the chain goes on. quell
        // re-issues the skipped steps so both backends agree.
        let dir = scratch("short", b);
        let path = dir.join("f");
        std::fs::write(&path, pattern(100)).unwrap();
        let mut ring = ring(b, 16);
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 4096]))
                    .then(Op::read_at(Chain::OPENED, 50, vec![0; 4096]))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(150));
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::Done(100)), Some(Outcome::Done(50)), Some(Outcome::Done(0))]);
        assert_eq!(c.steps().unwrap()[2].data(), &pattern(100)[50..]);
        // On descriptors the caller owns: a short pipe read, then a write.
        let (r, w) = pipe();
        let (r2, w2) = pipe();
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::write(raw(&w), b"hello".to_vec()))
                    .then(Op::read(raw(&r), vec![0; 64]))
                    .then(Op::write(raw(&w2), b"after".to_vec())),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(15));
        assert_eq!(c.steps().unwrap()[1].data(), b"hello");
        assert_eq!(drain_nonblocking(raw(&r2)), b"after");
        assert_path(&ring, b, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn deadline_and_drop_reach_a_linked_chain(b: BackendChoice) {
        let dir = scratch("deadline", b);
        let fifo = fifo_in(&dir);
        let mut ring = ring(b, 16);
        let chain = || {
            Chain::new()
                .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDWR, 0))
                .then(Op::read(Chain::OPENED, vec![0; 64]))
                .then(Op::close(Chain::OPENED))
        };
        let id = ring
            .submit_chain(chain().deadline(Instant::now() + Duration::from_millis(100)))
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 });
        assert_eq!(outcomes(&c)[1..], [Some(Outcome::TimedOut { transferred: 0 }), Some(Outcome::Done(0))]);
        assert!(!fifo_has_reader(&fifo));
        for _ in 0..3 {
            ring.submit_chain(chain()).unwrap();
        }
        until_running(&mut ring, OpKind::Read);
        assert!(fifo_reader_now(&fifo));
        let left = ring.shutdown();
        assert_eq!(left.len(), 3);
        for c in &left {
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
            assert_eq!(outcomes(c)[2], Some(Outcome::Done(0)));
        }
        assert!(!fifo_has_reader(&fifo), "shutdown left the FIFO open");
        assert_path(&ring, b, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn cancels_racing_every_step_leave_nothing_open(b: BackendChoice) {
        // Cancels that land anywhere: before the batch reaches the kernel, while a read
        // waits, while one step ends and the next starts. A helper trickles bytes into
        // the FIFO, so each read waits a little and then ends short. Every chain
        // completes once, honestly, and closes whatever it opened.
        let dir = scratch("race", b);
        let fifo = fifo_in(&dir);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let helper = {
            let (fifo, stop) = (fifo.clone(), stop.clone());
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    std::io::Write::write_all(&mut &f, b"x").unwrap();
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        let (mut done, mut canceled) = (0, 0);
        let mut ring = ring(b, 64);
        for round in 0..300u64 {
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDWR, 0))
                        .then(Op::read(Chain::OPENED, vec![0; 64]))
                        .then(Op::read(Chain::OPENED, vec![0; 64]))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            match round % 3 {
                0 => {} // still staged: the cancel goes out right behind the batch
                1 => ring.flush().unwrap(),
                _ => {
                    ring.flush().unwrap();
                    std::thread::sleep(Duration::from_micros(round % 250));
                    ring.poll().unwrap();
                }
            }
            ring.cancel(id).unwrap();
            let c = ring.wait_for(id).unwrap();
            let o = outcomes(&c);
            let moved: usize = o[1..3].iter().flatten().map(|x| x.transferred()).sum();
            match c.outcome {
                Outcome::Done(n) => {
                    assert_eq!(n, moved);
                    assert!(o[1..].iter().all(|x| x.is_some_and(|x| x.is_done())), "{o:?}");
                    done += 1;
                }
                Outcome::Canceled { transferred } => {
                    assert_eq!(transferred, moved, "round {round}: {o:?}");
                    canceled += 1;
                }
                other => panic!("round {round}: {other:?} {o:?}"),
            }
            if matches!(o[0], Some(Outcome::Done(_))) {
                assert_eq!(o[3], Some(Outcome::Done(0)), "round {round}: opened, not closed: {o:?}");
            } else {
                assert_eq!(o[1..], [None, None, None], "round {round}: {o:?}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        helper.join().unwrap();
        assert_eq!(done + canceled, 300);
        assert!(canceled > 0, "no cancel landed in {done} chains");
        assert!(!fifo_has_reader(&fifo), "a chain left the FIFO open");
        assert_path(&ring, b, 300);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn chains_the_kernel_should_not_sequence_are_sequenced(b: BackendChoice) {
        let mut ring = ring(b, 16);
        // A chain that hands its descriptor to the caller (no close): a real descriptor.
        let dir = scratch("unlinked", b);
        let path = dir.join("f");
        std::fs::write(&path, pattern(4096)).unwrap();
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 16])),
            )
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        let Some(Outcome::Done(fd)) = c.steps().unwrap()[0].outcome() else { panic!("{c:?}") };
        assert_eq!(std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap(), path);
        // SAFETY: the chain handed this descriptor to us.
        unsafe { libc::close(fd as i32) };
        assert_eq!(c.steps().unwrap()[1].data(), &pattern(4096)[..16]);
        // An exact step (retried in user space), and a ring told not to link.
        let (r, w) = pipe();
        write_all(raw(&w), b"abcdef");
        let id = ring
            .submit_chain(Chain::new().then(Op::read(raw(&r), vec![0; 6]).exact()).then(Op::nop()))
            .unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(6));
        assert_path(&ring, b, 0);
        let mut off = Ring::builder().backend(b).link_chains(false).build().unwrap();
        let id = off
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 16]).class(quell::CancelClass::Bounded))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        assert_eq!(off.wait_for(id).unwrap().outcome, Outcome::Done(16));
        assert_path(&off, b, 0);
        // The same chain on a linking ring, its read's class declared: linked, no statx.
        let id = ring
            .submit_chain(
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0))
                    .then(Op::read_at(Chain::OPENED, 0, vec![0; 16]).class(quell::CancelClass::Bounded))
                    .then(Op::close(Chain::OPENED)),
            )
            .unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(16));
        assert_path(&ring, b, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn a_full_window_of_long_chains_overflowing_the_cq_all_complete(b: BackendChoice) {
        // 64 chains of 8 linked steps: 512 step completions against a completion queue
        // sized for 256. The kernel holds the overflow; every chain still completes once.
        let mut ring = Ring::builder().backend(b).max_in_flight(64).sq_entries(8).build().unwrap();
        let (r, w) = pipe();
        let mut ids = Vec::new();
        for i in 0..64u64 {
            let mut chain = Chain::new().user_data(i);
            for _ in 0..7 {
                chain = chain.then(Op::nop());
            }
            ids.push(ring.submit_chain(chain.then(Op::write(raw(&w), vec![b'x']))).unwrap());
        }
        let done = collect(&mut ring, 64, 30);
        assert_eq!(done.len(), 64);
        let mut seen: Vec<u64> = done
            .iter()
            .map(|c| {
                assert_eq!(c.outcome, Outcome::Done(1), "{:?}", c.steps());
                c.user_data
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
        assert_eq!(drain_nonblocking(raw(&r)).len(), 64);
        assert_path(&ring, b, 64);
        // A chain on descriptors the caller owns, canceled while its read waits.
        let (r2, w2) = pipe();
        let id = ring
            .submit_chain(Chain::new().then(Op::read(raw(&r), vec![0; 8])).then(Op::write(raw(&w2), b"no".to_vec())))
            .unwrap();
        until_running(&mut ring, OpKind::Read);
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(outcomes(&c), [Some(Outcome::Canceled { transferred: 0 }), None]);
        assert!(drain_nonblocking(raw(&r2)).is_empty(), "the write after the canceled read ran");
        assert_path(&ring, b, 65);
    }

    fn chains_beyond_the_direct_descriptors_are_sequenced(b: BackendChoice) {
        let dir = scratch("exhausted", b);
        let fifo = fifo_in(&dir);
        let mut ring = Ring::builder().backend(b).direct_descriptors(2).build().unwrap();
        let ids: Vec<_> = (0..4)
            .map(|_| {
                ring.submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDWR, 0))
                        .then(Op::read(Chain::OPENED, vec![0; 8]))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap()
            })
            .collect();
        let start = Instant::now();
        while ring.ops().iter().filter(|o| o.kind == OpKind::Read && o.state == OpState::InFlight).count() < 4 {
            assert!(start.elapsed() < Duration::from_secs(10), "{:?}", ring.ops());
            ring.wait(1, Some(Duration::from_millis(5))).unwrap();
        }
        // Two in direct descriptors (not in the process's table), two in real ones, each
        // of those with the chain's own duplicate (I12); the pool job of a blocking FIFO
        // read on portable acts on that duplicate and needs no other.
        let (linked, real) = if b == BackendChoice::Uring { (2, 4) } else { (0, 8) };
        assert_eq!(ring.stats().linked_chains, linked);
        assert_eq!(ring.stats().direct_descriptors, linked);
        assert_eq!(fds_into(&dir), real);
        ring.cancel_all();
        for id in ids {
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
            assert_eq!(outcomes(&c)[2], Some(Outcome::Done(0)));
        }
        assert_eq!(fds_into(&dir), 0);
        assert!(!fifo_has_reader(&fifo));
        assert_path(&ring, b, linked);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
