//! Descriptor identity at the ring level (contract item I12) and the ring's edges that
//! the contract review found (issue 15): a class cached for a number that now names a
//! different kind of file, an op that waited in quell's own queue while its number was
//! reused, `cancel_fd` with numbers no op uses, ops `shutdown` gives up on, a deadline
//! on a path op that blocks (an `openat` of a FIFO), offsets the kernel refuses.
//!
//! Each test asks what a user observes: the bytes each op got, the outcome, the number
//! of completions, whether the ring lets go in bounded time.

#[macro_use]
mod common;

use common::{pipe, write_all};
use quell::{BackendChoice, CancelClass, Op, Outcome, Ring};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Moves `fd` onto number `want` (closing whatever `want` named), so a test reuses a
/// number deterministically instead of hoping the kernel hands out the lowest one.
fn onto(fd: OwnedFd, want: RawFd) -> OwnedFd {
    let have = fd.as_raw_fd();
    if have == want {
        return fd;
    }
    // SAFETY: `have` is open (owned by `fd`); dup2 atomically replaces `want`.
    let r = unsafe { libc::dup2(have, want) };
    assert_eq!(r, want, "dup2: {}", std::io::Error::last_os_error());
    drop(fd);
    // SAFETY: dup2 made `want` a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(want) }
}

/// A Unix socket pair, both ends owned.
fn socketpair() -> (OwnedFd, OwnedFd) {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    (a.into(), b.into())
}

fn ring_with(b: BackendChoice, max_in_flight: u32) -> Ring {
    Ring::builder()
        .backend(b)
        .capacity(256)
        .max_in_flight(max_in_flight)
        .teardown_timeout(Duration::from_secs(20))
        .build()
        .expect("ring")
}

/// Waits for `id` with a hang guard (a lost completion fails instead of hanging).
fn wait_within(ring: &mut Ring, id: quell::OpId, secs: u64) -> quell::Completion {
    let start = Instant::now();
    loop {
        ring.wait(1, Some(Duration::from_millis(50))).expect("wait");
        let mut found = None;
        let mut others = Vec::new();
        for c in ring.completions() {
            if c.id == id {
                found = Some(c);
            } else {
                others.push(c);
            }
        }
        assert!(others.is_empty(), "unexpected completions: {others:?}");
        if let Some(c) = found {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no completion for {id:?} after {secs}s; ops: {:?}",
            ring.ops()
        );
    }
}

both_backends! {
    /// Break 5: a regular file's number is reused by a socket after an ordinary
    /// `drop(File)`. The socket read's deadline must time it out (it can be canceled),
    /// not detach it as device I/O, and bytes that arrive afterwards must reach the next
    /// read rather than a detached one. Dropping the ring must not sit out the teardown
    /// timeout.
    fn socket_reusing_a_file_number_times_out_instead_of_detaching(b: BackendChoice) {
        let mut ring = ring_with(b, 64);
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let n = file.as_raw_fd();
        let id = ring.submit(Op::read_at(n, 0, vec![0u8; 4])).unwrap();
        assert_eq!(wait_within(&mut ring, id, 10).data(), b"\x7fELF");
        drop(file); // the normal Rust idiom: no forget_fd
        let (mine, peer) = socketpair();
        let mine = onto(mine, n);
        let id = ring
            .submit(Op::read(n, vec![0u8; 8]).deadline(Instant::now() + Duration::from_millis(50)))
            .unwrap();
        let c = wait_within(&mut ring, id, 10);
        assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 });
        // The bytes written now belong to the next read, not to a detached one.
        write_all(peer.as_raw_fd(), b"late");
        let id = ring
            .submit(Op::read(n, vec![0u8; 8]).deadline(Instant::now() + Duration::from_secs(10)))
            .unwrap();
        assert_eq!(wait_within(&mut ring, id, 15).data(), b"late");
        let start = Instant::now();
        drop(ring);
        assert!(start.elapsed() < Duration::from_secs(10), "teardown stalled");
        drop(mine);
    }

    /// The same with a pipe reusing the number of a file, canceled explicitly: the op's
    /// class is what the kernel says now, so it stops at once.
    fn pipe_reusing_a_file_number_is_classified_afresh(b: BackendChoice) {
        let mut ring = ring_with(b, 64);
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let n = file.as_raw_fd();
        let id = ring.submit(Op::read_at(n, 0, vec![0u8; 4])).unwrap();
        wait_within(&mut ring, id, 10);
        drop(file);
        let (r, w) = pipe();
        let r = onto(r, n);
        let id = ring
            .submit(Op::read(n, vec![0u8; 8]).deadline(Instant::now() + Duration::from_millis(30)))
            .unwrap();
        assert_eq!(
            wait_within(&mut ring, id, 10).outcome,
            Outcome::TimedOut { transferred: 0 }
        );
        write_all(w.as_raw_fd(), b"x");
        let id = ring.submit(Op::read(n, vec![0u8; 8])).unwrap();
        assert_eq!(wait_within(&mut ring, id, 10).data(), b"x");
        // The class reported by ops() is the pipe's.
        let id = ring.submit(Op::read(n, vec![0u8; 8])).unwrap();
        ring.flush().unwrap();
        let info = ring.ops().into_iter().find(|o| o.id == id).unwrap();
        assert_eq!(info.dispatch_class, CancelClass::Prompt);
        ring.cancel(id).unwrap();
        assert!(wait_within(&mut ring, id, 10).outcome.is_canceled());
        drop(r);
    }

    /// I12: an op accepted while the dispatch window was full waits in quell's queue;
    /// meanwhile its number is closed outside quell and reused by another pipe. When the
    /// op is finally handed to the kernel it must act on the file it was submitted on.
    fn queued_op_keeps_its_file_when_the_number_is_reused(b: BackendChoice) {
        let mut ring = ring_with(b, 1);
        let (blocker_r, blocker_w) = pipe();
        let first = ring.submit(Op::read(blocker_r.as_raw_fd(), vec![0u8; 8])).unwrap();
        let (old_r, old_w) = pipe();
        let n = old_r.as_raw_fd();
        let queued = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        ring.flush().unwrap();
        let states: Vec<_> = ring.ops().into_iter().map(|o| (o.id, o.state)).collect();
        assert!(
            states.contains(&(queued, quell::OpState::Queued)),
            "the second read should wait in quell's queue: {states:?}"
        );
        // Outside quell: close the number and reuse it for a different pipe.
        drop(old_r);
        let (new_r, new_w) = pipe();
        let new_r = onto(new_r, n);
        write_all(new_w.as_raw_fd(), b"NEW-PIPE");
        write_all(old_w.as_raw_fd(), b"old-pipe");
        // Let the queued op go to the kernel.
        write_all(blocker_w.as_raw_fd(), b"go");
        assert_eq!(wait_within(&mut ring, first, 10).data(), b"go");
        let c = wait_within(&mut ring, queued, 10);
        assert_eq!(c.data(), b"old-pipe", "the queued read acted on the wrong file");
        // The new pipe's bytes are still there for whoever reads the new file.
        let id = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        assert_eq!(wait_within(&mut ring, id, 10).data(), b"NEW-PIPE");
        drop((new_r, old_w, blocker_r));
    }

    /// An op that waited in quell's queue, its number unchanged, joins the other ops on
    /// that descriptor: the stream's bytes come out in completion order, each once. On
    /// the portable backend, which keeps one FIFO per descriptor, the read submitted
    /// first gets the first bytes; io_uring wakes every read waiting on a pipe and may
    /// complete the later one first (measured: it does, with or without quell's queue),
    /// so which of two concurrent reads gets which bytes is not part of the contract.
    fn queued_op_joins_the_reads_of_the_same_file_in_stream_order(b: BackendChoice) {
        for round in 0..20 {
            let mut ring = ring_with(b, 2);
            let (blocker_r, blocker_w) = pipe();
            let blocker = ring.submit(Op::read(blocker_r.as_raw_fd(), vec![0u8; 8])).unwrap();
            let (r, w) = pipe();
            let first = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 2])).unwrap();
            let second = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 2])).unwrap();
            ring.flush().unwrap();
            write_all(blocker_w.as_raw_fd(), b"go");
            assert_eq!(wait_within(&mut ring, blocker, 10).data(), b"go");
            ring.flush().unwrap(); // the second read is with the backend now
            let mut got = Vec::new();
            for chunk in [&b"12"[..], b"34"] {
                write_all(w.as_raw_fd(), chunk);
                let c = common::collect(&mut ring, 1, 10).pop().unwrap();
                got.push((c.id, c.data().to_vec()));
            }
            assert_eq!(got[0].1, b"12", "round {round}: {got:?}");
            assert_eq!(got[1].1, b"34", "round {round}: {got:?}");
            let mut ids = [got[0].0, got[1].0];
            ids.sort();
            let mut want = [first, second];
            want.sort();
            assert_eq!(ids, want, "each read completes once");
            if b == BackendChoice::Portable {
                assert_eq!(got[0].0, first, "round {round}: FIFO per descriptor");
            }
        }
    }

    /// A close that waited in quell's queue while its number was closed outside quell
    /// and reused never closes the new file: it ends `Failed(EBADF)`.
    fn queued_close_never_closes_a_file_that_reused_its_number(b: BackendChoice) {
        let mut ring = ring_with(b, 1);
        let (blocker_r, blocker_w) = pipe();
        let blocker = ring.submit(Op::read(blocker_r.as_raw_fd(), vec![0u8; 8])).unwrap();
        let (old_r, old_w) = pipe();
        let n = old_r.as_raw_fd();
        let close = ring.submit(Op::close(n)).unwrap();
        drop(old_r); // closed outside quell...
        let (new_r, new_w) = pipe();
        let new_r = onto(new_r, n); // ...and reused
        write_all(blocker_w.as_raw_fd(), b"go");
        let got = common::collect(&mut ring, 2, 10);
        let of = |id| got.iter().find(|c| c.id == id).unwrap();
        assert_eq!(of(blocker).data(), b"go");
        assert_eq!(of(close).outcome, Outcome::Failed(quell::Errno::BADF));
        // The new pipe is still open under its number.
        write_all(new_w.as_raw_fd(), b"alive");
        let id = ring.submit(Op::read(n, vec![0u8; 8])).unwrap();
        assert_eq!(wait_within(&mut ring, id, 10).data(), b"alive");
        drop((new_r, old_w));
    }

    /// The same close, its number untouched, closes it when its turn comes.
    fn queued_close_closes_its_own_file(b: BackendChoice) {
        let mut ring = ring_with(b, 1);
        let (blocker_r, blocker_w) = pipe();
        let blocker = ring.submit(Op::read(blocker_r.as_raw_fd(), vec![0u8; 8])).unwrap();
        let (r, w) = pipe();
        let n = std::os::fd::IntoRawFd::into_raw_fd(r);
        let close = ring.submit(Op::close(n)).unwrap();
        write_all(blocker_w.as_raw_fd(), b"go");
        let got = common::collect(&mut ring, 2, 10);
        let c = got.iter().find(|c| c.id == close).unwrap();
        assert!(got.iter().any(|c| c.id == blocker));
        assert_eq!(c.outcome, Outcome::Done(0));
        // Closed: the writer sees no reader any more.
        // SAFETY: valid buffer; the write end is open.
        let r = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(r, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EPIPE));
    }

    /// `cancel_fd` reaches exactly the ops on that descriptor: not ops whose unused
    /// second descriptor slot holds -1, not path ops relative to the working directory,
    /// and nothing at all for a number no op uses.
    fn cancel_fd_reaches_only_ops_on_that_number(b: BackendChoice) {
        let mut ring = ring_with(b, 64);
        let (r, _w) = pipe();
        let (r2, _w2) = pipe();
        let a = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8])).unwrap();
        let c = ring.submit(Op::read(r2.as_raw_fd(), vec![0u8; 8])).unwrap();
        ring.flush().unwrap();
        assert_eq!(ring.cancel_fd(-1), 0);
        assert_eq!(ring.cancel_fd(libc::AT_FDCWD), 0);
        assert_eq!(ring.cancel_fd(1_000_000), 0);
        let unused = {
            let (x, _y) = pipe();
            x.as_raw_fd()
        };
        assert_eq!(ring.cancel_fd(unused), 0);
        assert_eq!(ring.len(), 2, "no op may have been reached");
        assert_eq!(ring.cancel_fd(r.as_raw_fd()), 1);
        assert!(wait_within(&mut ring, a, 10).outcome.is_canceled());
        assert_eq!(ring.cancel_fd(r2.as_raw_fd()), 1);
        assert!(wait_within(&mut ring, c, 10).outcome.is_canceled());
    }

    /// I1 at teardown: an op `shutdown` gives up on (it ignores interrupts and outlives
    /// the teardown timeout) still yields exactly one completion, and the ring's
    /// counters add up.
    fn shutdown_gives_every_op_one_completion_even_when_it_gives_up(b: BackendChoice) {
        let mut ring = Ring::builder()
            .backend(b)
            .teardown_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let (r, _w) = pipe();
        let (started_tx, started) = std::sync::mpsc::channel();
        let stubborn = ring
            .submit(
                Op::blocking(move || {
                    started_tx.send(()).unwrap();
                    // std's sleep resumes after EINTR: the interrupt cannot stop it.
                    std::thread::sleep(Duration::from_secs(2));
                    Ok(7)
                })
                .user_data(1),
            )
            .unwrap();
        let read = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).user_data(2)).unwrap();
        ring.flush().unwrap();
        started.recv_timeout(Duration::from_secs(10)).expect("the worker started");
        let left = ring.shutdown();
        let ids: Vec<_> = left.iter().map(|c| c.id).collect();
        assert_eq!(left.len(), 2, "one completion per op: {left:?}");
        assert!(ids.contains(&stubborn) && ids.contains(&read));
        let s = left.iter().find(|c| c.id == stubborn).unwrap();
        assert_eq!(s.outcome, Outcome::Detached, "released, memory kept by the ring");
        assert!(left.iter().find(|c| c.id == read).unwrap().outcome.is_canceled());
        let st = ring.stats();
        assert_eq!(st.submitted, st.completed, "{st:?}");
        assert_eq!(st.leaked_at_teardown, 1);
        assert_eq!(ring.len(), 0);
        assert!(ring.is_empty());
        // Let the abandoned worker finish before the process's other tests run on.
        std::thread::sleep(Duration::from_millis(2000));
    }

    /// A deadline on an `openat` of a FIFO (it blocks until a writer appears): the op
    /// is interruptible, so the deadline stops it (`TimedOut`), and the descriptor it
    /// might still open is never leaked.
    fn fifo_openat_with_a_deadline_times_out_and_leaks_no_descriptor(b: BackendChoice) {
        let dir = tempdir();
        let path = dir.join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut ring = ring_with(b, 64);
        let id = ring
            .submit(
                Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
                    .deadline(Instant::now() + Duration::from_millis(100)),
            )
            .unwrap();
        ring.flush().unwrap();
        let class = ring.ops().into_iter().find(|o| o.id == id).unwrap().dispatch_class;
        assert_eq!(class, CancelClass::Interruptible, "a path op may block");
        let got = wait_within(&mut ring, id, 10);
        assert!(
            matches!(got.outcome, Outcome::TimedOut { transferred: 0 }),
            "{:?}",
            got.outcome
        );
        // A writer now appears; no open may complete behind the user's back.
        let w = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        assert!(w.is_err(), "a reader is still open on the FIFO: {w:?}");
        drop(ring);
        assert_eq!(descriptors_on(&path), 0, "a descriptor on the FIFO leaked");
        std::fs::remove_dir_all(dir).ok();
    }

    /// Without a deadline, an `openat` of a FIFO blocks until the other end appears, as
    /// `open(2)` does, on both backends (io_uring's own inline attempt would answer at
    /// once: a reader with a descriptor that reads end-of-file, a writer with ENXIO).
    fn fifo_openat_waits_for_its_partner_like_open(b: BackendChoice) {
        let dir = tempdir();
        for (flags, other) in [(libc::O_RDONLY, libc::O_WRONLY), (libc::O_WRONLY, libc::O_RDONLY)] {
            let path = dir.join(format!("fifo{flags}"));
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let mut ring = ring_with(b, 64);
            let id = ring
                .submit(Op::openat(libc::AT_FDCWD, &path, flags | libc::O_CLOEXEC, 0))
                .unwrap();
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            assert_eq!(ring.completions().count(), 0, "open(2) would still wait (flags {flags})");
            // SAFETY: valid NUL-terminated path; the partner end, closed below.
            let partner = unsafe { libc::open(c.as_ptr(), other | libc::O_CLOEXEC) };
            assert!(partner >= 0);
            let got = wait_within(&mut ring, id, 10);
            let Outcome::Done(fd) = got.outcome else {
                panic!("flags {flags}: {:?}", got.outcome)
            };
            // SAFETY: both are descriptors this test owns.
            unsafe {
                libc::close(fd as RawFd);
                libc::close(partner);
            }
        }
        std::fs::remove_dir_all(dir).ok();
    }

    /// A deadline further away than 2^64 ns (584 years) never wraps round to a near
    /// one, and a timeout that long waits on both backends (io_uring would refuse a
    /// timespec past i64::MAX seconds outright).
    fn far_future_deadlines_and_timeouts_wait(b: BackendChoice) {
        let mut ring = ring_with(b, 64);
        let (r, _w) = pipe();
        let far = Instant::now() + Duration::from_nanos(u64::MAX) + Duration::from_millis(20);
        let read = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).deadline(far)).unwrap();
        let sleep = ring
            .submit(Op::timeout(Duration::from_secs(i64::MAX as u64 + 5)))
            .unwrap();
        ring.wait(1, Some(Duration::from_millis(300))).unwrap();
        let early: Vec<_> = ring.completions().collect();
        assert!(early.is_empty(), "{early:?}");
        assert_eq!(ring.cancel_all(), 2);
        let got = common::collect(&mut ring, 2, 10);
        assert!(got.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 }), "{got:?}");
        assert!(got.iter().any(|c| c.id == read) && got.iter().any(|c| c.id == sleep));
    }

    /// Offsets above `i64::MAX` (other than "current position") are refused with a
    /// typed error on both backends, the buffer handed back.
    fn offsets_beyond_i64_max_are_refused(b: BackendChoice) {
        let mut ring = ring_with(b, 64);
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        for op in [
            Op::read_at(f.as_raw_fd(), i64::MAX as u64 + 1, vec![0u8; 4]),
            Op::write_at(f.as_raw_fd(), u64::MAX - 1, vec![0u8; 4]),
        ] {
            let err = ring.submit(op).unwrap_err();
            assert!(
                matches!(err.error(), quell::Error::InvalidArgument(_)),
                "{err:?}"
            );
            assert_eq!(err.into_op().into_buf().unwrap().len(), 4);
        }
        // The largest legal offset is accepted and answered by the kernel.
        let id = ring.submit(Op::read_at(f.as_raw_fd(), i64::MAX as u64, vec![0u8; 4])).unwrap();
        let c = wait_within(&mut ring, id, 10);
        assert!(
            matches!(c.outcome, Outcome::Done(0) | Outcome::Failed(_)),
            "{:?}",
            c.outcome
        );
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// How many of this process's descriptors name `path` (other tests' descriptors come
/// and go meanwhile, so counting all of them would race).
fn descriptors_on(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t == path)
        .count()
}

fn tempdir() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "quell-fdid-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}
