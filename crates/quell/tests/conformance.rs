//! The contract (DESIGN.md I1–I5, I9 listing, I10, I11 explicit API), on every backend.

mod common;

use common::*;
use quell::{
    BackendChoice, CancelClass, CancelStatus, Error, Interest, Op, OpKind, OpState, Outcome,
};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

fn tmpdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "quell-conf-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

both_backends! {
    /// A handle request posted while the ring serves an earlier one (between taking the
    /// requests and clearing the doorbell) still wakes the ring: the cancel that follows
    /// a snapshot lands without any timeout to rescue it.
    fn a_request_posted_while_another_is_served_is_not_lost(b: BackendChoice) {
        for _ in 0..300 {
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut ring = ring(b, 16);
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8])).unwrap();
            let handle = ring.handle();
            let watcher = std::thread::spawn(move || {
                let ops = handle
                    .request_ops()
                    .unwrap()
                    .wait(std::time::Duration::from_secs(10))
                    .expect("snapshot served");
                handle.cancel(ops[0].id).unwrap();
            });
            let start = std::time::Instant::now();
            let c = loop {
                // Long enough that only a lost wake-up makes it expire.
                ring.wait(1, Some(std::time::Duration::from_secs(10))).unwrap();
                if let Some(c) = ring.next_completion() {
                    break c;
                }
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(5),
                    "the cancel posted after the snapshot never woke the ring"
                );
            };
            assert_eq!(c.id, id);
            assert!(c.outcome.is_canceled(), "{:?}", c.outcome);
            watcher.join().unwrap();
        }
    }

    /// Every op kind completes exactly once with its real result.
    fn every_op_kind_completes_once(b: BackendChoice) {
        let mut ring = ring(b, 256);
        let dir = tmpdir();
        let path = dir.join("f");
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let fd = file.as_raw_fd();
        let (pr, pw) = pipe();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = socket_tcp();
        let (sa, sb) = std::os::unix::net::UnixStream::pair().unwrap();
        write_all(pw.as_raw_fd(), b"pipe");

        let mut want: HashMap<u64, OpKind> = HashMap::new();
        let mut sub = |ring: &mut quell::Ring, ud: u64, op: Op| {
            let k = op.kind();
            ring.submit(op.user_data(ud)).unwrap();
            want.insert(ud, k);
        };
        sub(&mut ring, 1, Op::nop());
        sub(&mut ring, 2, Op::read_at(fd, 4, vec![0; 4]));
        sub(&mut ring, 3, Op::write_at(fd, 16, b"WXYZ".to_vec()));
        sub(&mut ring, 4, Op::readv_at(fd, 0, vec![vec![0; 2], vec![0; 3]]));
        sub(&mut ring, 5, Op::writev_at(fd, 20, vec![b"ab".to_vec(), b"cd".to_vec()]));
        sub(&mut ring, 6, Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0));
        sub(&mut ring, 7, Op::statx(libc::AT_FDCWD, &path, 0, libc::STATX_SIZE));
        sub(&mut ring, 8, Op::fsync(fd));
        sub(&mut ring, 9, Op::fdatasync(fd));
        sub(&mut ring, 10, Op::fallocate(fd, 0, 0, 4096));
        sub(&mut ring, 11, Op::poll(pr.as_raw_fd(), Interest::READABLE));
        sub(&mut ring, 12, Op::timeout(Duration::from_millis(5)));
        sub(&mut ring, 13, Op::accept(listener.as_raw_fd()));
        sub(&mut ring, 14, Op::connect(client.as_raw_fd(), addr));
        sub(&mut ring, 15, Op::send(sa.as_raw_fd(), b"sock".to_vec(), 0));
        sub(&mut ring, 16, Op::recv(sb.as_raw_fd(), vec![0; 16], 0));
        let (sp_r, sp_w) = pipe();
        sub(&mut ring, 17, Op::splice(fd, Some(0), sp_w.as_raw_fd(), None, 8));
        let c = collect(&mut ring, want.len(), 20);
        let mut seen = HashMap::new();
        let mut opened = Vec::new();
        for c in c {
            assert!(seen.insert(c.user_data, c.outcome).is_none(), "two completions for {}", c.user_data);
            assert_eq!(c.kind(), want[&c.user_data]);
            assert!(c.outcome.is_done(), "{:?} -> {}", c.kind(), c.outcome);
            match c.user_data {
                2 => assert_eq!(c.data(), b"4567"),
                3 | 5 => assert_eq!(c.outcome, Outcome::Done(4)),
                4 => assert_eq!(c.bufs().unwrap(), &[b"01".to_vec(), b"234".to_vec()]),
                6 | 13 => opened.push(c.outcome.transferred() as i32),
                7 => assert!(c.statx().unwrap().stx_size >= 16),
                11 => assert!(c.outcome.transferred() as i16 & libc::POLLIN != 0),
                16 => assert_eq!(c.data(), b"sock"),
                17 => assert_eq!(c.outcome, Outcome::Done(8)),
                _ => {}
            }
        }
        assert_eq!(seen.len(), want.len());
        assert_eq!(drain_nonblocking(sp_r.as_raw_fd()), b"01234567");
        // close and rename/unlink, then nothing is left.
        for (i, fd) in opened.iter().enumerate() {
            ring.submit(Op::close(*fd).user_data(100 + i as u64)).unwrap();
        }
        let newp = dir.join("g");
        ring.submit(Op::renameat(libc::AT_FDCWD, &path, libc::AT_FDCWD, &newp, 0).user_data(200)).unwrap();
        let c = collect(&mut ring, opened.len() + 1, 10);
        assert!(c.iter().all(|c| c.outcome.is_done()), "{c:?}");
        assert!(newp.exists() && !path.exists());
        ring.submit(Op::unlinkat(libc::AT_FDCWD, &newp, 0)).unwrap();
        let c = collect(&mut ring, 1, 10);
        assert!(c[0].outcome.is_done());
        assert!(!newp.exists());
        assert!(ring.is_empty());
        assert!(ring.next_completion().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn cancel_pending_pipe_read(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, _w) = pipe();
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 64])).unwrap();
        ring.poll().unwrap();
        let info = ring.ops();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].state, OpState::InFlight);
        assert_eq!(info[0].class, CancelClass::Prompt);
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::Requested);
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(c.into_buf().unwrap().len(), 64);
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::NotFound, "stale id");
    }

    fn cancel_after_completion_is_already_done(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        write_all(w.as_raw_fd(), b"xyz");
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 64])).unwrap();
        while ring.wait(1, Some(Duration::from_secs(5))).unwrap() == 0 {}
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::AlreadyDone);
        let c = ring.next_completion().unwrap();
        assert_eq!(c.id, id);
        assert_eq!(c.outcome, Outcome::Done(3), "the original outcome survives the late cancel");
        assert_eq!(c.data(), b"xyz");
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::NotFound);
    }

    fn stale_ids_never_reach_newer_ops(b: BackendChoice) {
        let mut ring = ring(b, 1);
        let (r, _w) = pipe();
        let mut old = Vec::new();
        for _ in 0..1000 {
            let id = ring.submit(Op::nop()).unwrap();
            ring.wait_for(id).unwrap();
            old.push(id);
        }
        let live = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8])).unwrap();
        for id in &old {
            assert_ne!(*id, live);
            assert_eq!(ring.cancel(*id).unwrap(), CancelStatus::NotFound);
        }
        assert!(matches!(ring.wait_for(old[0]), Err(Error::UnknownOp)));
        assert_eq!(ring.ops()[0].state, OpState::InFlight, "stale cancels did not touch the live op");
        assert_eq!(ring.cancel(live).unwrap(), CancelStatus::Requested);
        assert_eq!(ring.wait_for(live).unwrap().outcome, Outcome::Canceled { transferred: 0 });
    }

    fn ten_thousand_pending_reads_cancel_fd(b: BackendChoice) {
        many_pending_reads_canceled(b, true);
    }

    fn ten_thousand_pending_reads_cancel_all(b: BackendChoice) {
        many_pending_reads_canceled(b, false);
    }

    /// I11: cancel racing with data arriving; every byte is in a completion or in the pipe.
    fn cancel_races_with_writer_no_byte_lost(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        let iterations = 10_000u32;
        let wfd = w.as_raw_fd();
        let writer = std::thread::spawn(move || {
            let mut sent = Vec::new();
            for i in 0..iterations {
                let byte = (i % 251) as u8;
                write_all(wfd, &[byte]);
                sent.push(byte);
                if i % 7 == 0 {
                    std::thread::yield_now();
                }
            }
            sent
        });
        let mut got = Vec::new();
        let mut outcomes = [0usize; 3];
        while got.len() < iterations as usize {
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 16])).unwrap();
            ring.poll().unwrap();
            if got.len() % 3 != 2 {
                ring.cancel(id).unwrap();
            }
            let c = ring.wait_for(id).unwrap();
            match c.outcome {
                Outcome::Done(_) => outcomes[0] += 1,
                Outcome::Canceled { transferred } => {
                    outcomes[if transferred > 0 { 1 } else { 2 }] += 1;
                }
                o => panic!("unexpected outcome {o}"),
            }
            got.extend_from_slice(c.data());
            if writer.is_finished() {
                got.extend(drain_nonblocking(r.as_raw_fd()));
            }
        }
        let sent = writer.join().unwrap();
        got.extend(drain_nonblocking(r.as_raw_fd()));
        assert_eq!(got.len(), sent.len(), "outcomes (done, canceled-with-data, canceled-empty): {outcomes:?}");
        assert_eq!(got, sent, "every byte arrives once, in order");
    }

    fn full_table_refuses_with_buffer_back(b: BackendChoice) {
        let mut ring = ring(b, 8);
        let (r, _w) = pipe();
        let ids: Vec<_> = (0..8)
            .map(|_| ring.submit(Op::read(r.as_raw_fd(), vec![0; 8])).unwrap())
            .collect();
        let err = ring.submit(Op::read(r.as_raw_fd(), vec![7; 33])).unwrap_err();
        assert!(matches!(err.error(), Error::TableFull { capacity: 8 }));
        assert_eq!(err.into_op().into_buf().unwrap(), vec![7; 33]);
        assert_eq!(ring.cancel_all(), 8);
        let c = collect(&mut ring, 8, 10);
        assert!(c.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 }));
        assert!(ids.iter().all(|id| c.iter().any(|c| c.id == *id)));
        ring.submit(Op::nop()).expect("room again once completions are taken");
    }

    fn dispatch_window_keeps_ops_queued_and_cancel_is_instant(b: BackendChoice) {
        let mut ring = quell::Ring::builder().backend(b).capacity(64).max_in_flight(4).build().unwrap();
        let (r, w) = pipe();
        let ids: Vec<_> = (0..10)
            .map(|i| ring.submit(Op::read(r.as_raw_fd(), vec![0; 1]).user_data(i)).unwrap())
            .collect();
        ring.poll().unwrap();
        let ops = ring.ops();
        let queued: Vec<_> = ops.iter().filter(|o| o.state == OpState::Queued).collect();
        assert_eq!(queued.len(), 6);
        assert!(queued.iter().all(|o| o.class == CancelClass::Queued && o.dispatch_class == CancelClass::Prompt));
        // Canceling a queued op completes it on the spot, no kernel round trip.
        assert_eq!(ring.cancel(ids[9]).unwrap(), CancelStatus::Requested);
        let c = ring.next_completion().expect("ready at once");
        assert_eq!((c.id, c.outcome), (ids[9], Outcome::Canceled { transferred: 0 }));
        assert_eq!(ring.stats().canceled_queued, 1);
        // The rest are served in order as data arrives.
        write_all(w.as_raw_fd(), b"abcdefghi");
        let c = collect(&mut ring, 9, 10);
        let mut got: Vec<(u64, u8)> = c.iter().map(|c| (c.user_data, c.data()[0])).collect();
        got.sort();
        assert_eq!(got.len(), 9);
        assert!(c.iter().all(|c| c.outcome == Outcome::Done(1)));
    }

    fn cancel_survives_a_full_submission_queue(b: BackendChoice) {
        let mut ring = quell::Ring::builder()
            .backend(b)
            .capacity(2048)
            .max_in_flight(2048)
            .sq_entries(8)
            .build()
            .unwrap();
        let (r, _w) = pipe();
        for _ in 0..1000 {
            ring.submit(Op::read(r.as_raw_fd(), vec![0; 8])).unwrap();
        }
        ring.poll().unwrap();
        assert!(ring.ops().iter().all(|o| o.state == OpState::InFlight));
        assert_eq!(ring.cancel_all(), 1000);
        let c = collect(&mut ring, 1000, 30);
        assert!(c.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 }));
        assert!(ring.is_empty());
    }

    fn drop_ring_with_ops_in_flight(b: BackendChoice) {
        let (r, w) = pipe();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        {
            let mut ring = ring(b, 2048);
            for i in 0..1000u64 {
                let op = if i % 2 == 0 {
                    Op::read(r.as_raw_fd(), vec![0; 4096])
                } else {
                    Op::read_at(file.as_raw_fd(), i * 4096, vec![0; 4096])
                };
                ring.submit(op).unwrap();
            }
            ring.poll().unwrap();
            // dropped here with reads pending on the pipe
        }
        // The pipe is still usable: no read survived the ring.
        write_all(w.as_raw_fd(), b"after");
        assert_eq!(drain_nonblocking(r.as_raw_fd()), b"after");
    }

    fn bad_input_is_a_typed_error_with_the_buffer_back(b: BackendChoice) {
        let mut ring = ring(b, 16);
        // Invalid fd.
        let e = ring.submit(Op::read(-5, vec![1; 10])).unwrap_err();
        assert!(matches!(e.error(), Error::InvalidFd { fd: -5 }));
        assert_eq!(e.into_op().into_buf().unwrap(), vec![1; 10]);
        // Closed fd: moved high first, so a parallel test's new descriptor (the kernel
        // hands out the lowest free number) cannot reuse it before the submit.
        let (r, w) = pipe();
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one (or -1).
        let closed = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4000) };
        assert!(closed >= 4000);
        // SAFETY: `closed` is ours (just duplicated) and used by nothing else.
        assert_eq!(unsafe { libc::close(closed) }, 0);
        drop(r);
        drop(w);
        ring.forget_fd(closed);
        let e = ring.submit(Op::read(closed, vec![2; 10])).unwrap_err();
        assert!(matches!(e.error(), Error::InvalidFd { .. }), "{e}");
        assert_eq!(e.into_op().into_buf().unwrap(), vec![2; 10]);
        // Too long.
        let dir = tmpdir();
        let file = std::fs::File::create(dir.join("x")).unwrap();
        let huge = vec_of_len(i32::MAX as usize + 1);
        let e = ring.submit(Op::write_at(file.as_raw_fd(), 0, huge)).unwrap_err();
        assert!(matches!(e.error(), Error::TooLong { .. }));
        assert_eq!(e.into_op().into_buf().unwrap().len(), i32::MAX as usize + 1);
        // Misaligned O_DIRECT (where the filesystem supports O_DIRECT).
        if let Some(direct) = open_direct(&dir.join("d")) {
            let mut v = vec![0u8; 4096 + 1];
            let misaligned = if v.as_ptr() as usize % 512 == 0 { v.split_off(1) } else { v };
            let e = ring.submit(Op::read_at(direct.as_raw_fd(), 0, misaligned)).unwrap_err();
            assert!(matches!(e.error(), Error::Misaligned { .. }), "{e}");
            let aligned = quell::AlignedBuf::new(4096, 4096).unwrap();
            let e = ring.submit(Op::read_aligned(direct.as_raw_fd(), 100, aligned)).unwrap_err();
            assert!(matches!(e.error(), Error::Misaligned { what: "offset", .. }), "{e}");
            assert_eq!(e.into_op().into_aligned().unwrap().len(), 4096);
        }
        // A path with a NUL byte.
        let e = ring.submit(Op::openat(libc::AT_FDCWD, std::ffi::OsStr::new("a\0b"), 0, 0)).unwrap_err();
        assert!(matches!(e.error(), Error::InvalidArgument(_)));
        // An id from another ring.
        let mut other = common::ring(b, 4);
        let foreign = other.submit(Op::nop()).unwrap();
        assert!(matches!(ring.cancel(foreign), Err(Error::ForeignId)));
        assert!(matches!(ring.wait_for(foreign), Err(Error::ForeignId)));
        assert!(matches!(ring.handle().cancel(foreign), Err(Error::ForeignId)));
        other.wait_for(foreign).unwrap();
        // Submit after shutdown.
        let rest = ring.shutdown();
        assert!(rest.is_empty());
        let e = ring.submit(Op::read(0, vec![3; 3])).unwrap_err();
        assert!(matches!(e.error(), Error::Closed));
        assert_eq!(e.into_op().into_buf().unwrap(), vec![3; 3]);
        assert!(matches!(ring.handle().cancel_all(), Err(Error::Closed)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn handle_cancels_and_wakes_from_another_thread(b: BackendChoice) {
        let mut ring = ring(b, 64);
        let (r, _w) = pipe();
        let ids: Vec<_> = (0..20).map(|_| ring.submit(Op::read(r.as_raw_fd(), vec![0; 4])).unwrap()).collect();
        ring.poll().unwrap();
        let h = ring.handle();
        let t = std::thread::spawn({
            let ids = ids.clone();
            let h = h.clone();
            move || {
                std::thread::sleep(Duration::from_millis(20));
                h.cancel(ids[0]).unwrap();
                h.cancel_fd(r.as_raw_fd()).unwrap();
                r
            }
        });
        let c = collect(&mut ring, 20, 10);
        let _r = t.join().unwrap();
        assert!(c.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 }));
        // wake: a wait with nothing to complete returns early.
        let (r2, _w2) = pipe();
        ring.submit(Op::read(r2.as_raw_fd(), vec![0; 4])).unwrap();
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            h2.wake().unwrap();
        });
        let start = Instant::now();
        assert_eq!(ring.wait(1, Some(Duration::from_secs(30))).unwrap(), 0);
        assert!(start.elapsed() < Duration::from_secs(20), "wake did not wake the ring");
        t.join().unwrap();
        ring.cancel_all();
        collect(&mut ring, 1, 10);
    }

    fn ops_lists_every_outstanding_op(b: BackendChoice) {
        let mut ring = quell::Ring::builder().backend(b).capacity(64).max_in_flight(8).build().unwrap();
        let (r, _w) = pipe();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let mut ids = Vec::new();
        for i in 0..12u64 {
            ids.push(ring.submit(Op::read(r.as_raw_fd(), vec![0; 16]).user_data(i)).unwrap());
        }
        ring.poll().unwrap();
        let id_file = ring.submit(Op::read_at(file.as_raw_fd(), 4096, vec![0; 100])).unwrap();
        ring.cancel(ids[0]).unwrap();
        let ops = ring.ops();
        assert_eq!(ops.len(), 13);
        let by_id: HashMap<_, _> = ops.iter().map(|o| (o.id, o)).collect();
        assert_eq!(by_id.len(), 13, "each op listed exactly once");
        let f = by_id[&id_file];
        assert_eq!((f.kind, f.fd, f.offset, f.len), (OpKind::Read, file.as_raw_fd(), Some(4096), 100));
        assert_eq!(f.dispatch_class, CancelClass::Bounded);
        assert_eq!(f.state, OpState::Queued);
        let states: Vec<_> = ids.iter().map(|id| by_id[id].state).collect();
        assert_eq!(states[0], OpState::CancelRequested);
        assert_eq!(states.iter().filter(|s| **s == OpState::InFlight).count(), 7);
        assert_eq!(states.iter().filter(|s| **s == OpState::Queued).count(), 4);
        assert!(ops.iter().all(|o| o.age < Duration::from_secs(60)));
        ring.cancel_all();
        collect(&mut ring, 13, 10);
        assert!(ring.ops().is_empty());
    }

    fn timeout_op_sleeps_and_cancels(b: BackendChoice) {
        let mut ring = ring(b, 8);
        let start = Instant::now();
        let id = ring.submit(Op::timeout(Duration::from_millis(30))).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(0));
        assert!(start.elapsed() >= Duration::from_millis(25));
        let id = ring.submit(Op::timeout(Duration::from_secs(3600))).unwrap();
        ring.poll().unwrap();
        ring.cancel(id).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Canceled { transferred: 0 });
    }

    fn failed_ops_report_errno(b: BackendChoice) {
        let mut ring = ring(b, 8);
        let id = ring.submit(Op::openat(libc::AT_FDCWD, "/nonexistent/quell", libc::O_RDONLY, 0)).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Failed(quell::Errno::NOENT));
        let (r, _w) = pipe();
        let id = ring.submit(Op::write(r.as_raw_fd(), b"x".to_vec())).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Failed(quell::Errno::BADF));
    }

    fn canceled_socket_read_keeps_partial_data(b: BackendChoice) {
        // A stream read that got data before the cancel reports it (I11, explicit API).
        let mut ring = ring(b, 8);
        let (a, mut bsock) = std::os::unix::net::UnixStream::pair().unwrap();
        let id = ring.submit(Op::recv(a.as_raw_fd(), vec![0; 64], 0)).unwrap();
        ring.poll().unwrap();
        bsock.write_all(b"late").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        let mut rest = Vec::new();
        a.set_nonblocking(true).unwrap();
        let mut a2 = &a;
        let _ = a2.read_to_end(&mut rest);
        let mut got = c.data().to_vec();
        got.extend(rest);
        assert_eq!(got, b"late", "outcome {}", c.outcome);
    }
}

fn many_pending_reads_canceled(b: BackendChoice, by_fd: bool) {
    let n = 10_000;
    let mut ring = ring(b, 16_384);
    let (r, _w) = pipe();
    let (other, _ow) = pipe();
    let keep = ring
        .submit(Op::read(other.as_raw_fd(), vec![0; 1]).user_data(u64::MAX))
        .unwrap();
    for i in 0..n {
        ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).user_data(i))
            .unwrap();
    }
    ring.poll().unwrap();
    let reached = if by_fd {
        ring.cancel_fd(r.as_raw_fd())
    } else {
        ring.cancel_all()
    };
    assert_eq!(reached, if by_fd { n as usize } else { n as usize + 1 });
    let total = if by_fd { n as usize } else { n as usize + 1 };
    let c = collect(&mut ring, total, 60);
    let mut seen = vec![false; n as usize];
    for c in &c {
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        if c.user_data == u64::MAX {
            continue;
        }
        assert!(
            !seen[c.user_data as usize],
            "two completions for {}",
            c.user_data
        );
        seen[c.user_data as usize] = true;
    }
    assert!(seen.iter().all(|s| *s));
    if by_fd {
        assert_eq!(ring.ops().len(), 1, "the op on the other fd is untouched");
        assert_eq!(ring.ops()[0].id, keep);
        ring.cancel(keep).unwrap();
        ring.wait_for(keep).unwrap();
    }
    ring.poll().unwrap();
    assert!(ring.next_completion().is_none(), "no extra completions");
}

fn socket_tcp() -> OwnedFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: fd is a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_direct(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::write(path, vec![0u8; 8192]).ok()?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// A vector of `len` bytes without touching its pages (calloc maps zero pages lazily).
fn vec_of_len(len: usize) -> Vec<u8> {
    vec![0u8; len]
}

#[test]
fn slot_bookkeeping_is_at_most_128_bytes() {
    let bytes = std::hint::black_box(quell::SLOT_BYTES);
    assert!(bytes <= 128, "{bytes} bytes");
}
