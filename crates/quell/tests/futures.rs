//! The runtime-agnostic futures layer, on both backends: drop = cancel with the buffer
//! kept safe (I2), explicit cancel with the honest outcome, no byte or connection lost
//! (I11), cancels that land even when the submission queue is full.

mod common;

use common::*;
use quell::future::{Driver, Listener, OpFuture, Stream};
use quell::{BackendChoice, Op, Outcome, Ring};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn driver(b: BackendChoice, cap: usize) -> Driver {
    Driver::new(ring(b, cap))
}

/// Runs the ring until every op the driver started has completed.
fn settle(d: &Driver, secs: u64) {
    let start = Instant::now();
    while d.outstanding() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} ops still running after {secs}s: {:?}",
            d.outstanding(),
            d.with_ring(|r| r.ops().into_iter().take(5).collect::<Vec<_>>())
        );
        d.turn().expect("turn");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A read with a deadline, so a lost byte fails the test instead of hanging it.
fn read_within(d: &Driver, fd: i32, len: usize) -> Vec<u8> {
    let op = Op::read(fd, vec![0u8; len]).deadline(Instant::now() + Duration::from_secs(10));
    let c = d.block_on(d.submit(op).expect("submit"));
    assert!(
        c.outcome.is_done(),
        "read ended {:?}: bytes were lost (kept {}, ops {:?})",
        c.outcome,
        d.kept_bytes(fd),
        d.with_ring(|r| r.ops())
    );
    c.data().to_vec()
}

/// A tiny deterministic generator (xorshift), so runs are repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

both_backends! {
    fn dropped_read_that_completed_keeps_its_bytes(b: BackendChoice) {
        let d = driver(b, 64);
        let (r, w) = pipe();
        write_all(w.as_raw_fd(), b"kept bytes");
        let f = d.read(r.as_raw_fd(), vec![0u8; 64]);
        // The read completes and is routed to its future, which is then dropped.
        d.turn().unwrap();
        settle_routed(&d);
        drop(f);
        assert_eq!(d.kept_bytes(r.as_raw_fd()), 10);
        assert_eq!(d.outstanding(), 0);
        // Served in pieces, in order, without a kernel op.
        assert_eq!(read_within(&d, r.as_raw_fd(), 4), b"kept");
        assert_eq!(read_within(&d, r.as_raw_fd(), 64), b" bytes");
        assert_eq!(d.kept_bytes(r.as_raw_fd()), 0);
        // Then the descriptor's own bytes again.
        write_all(w.as_raw_fd(), b"fresh");
        assert_eq!(read_within(&d, r.as_raw_fd(), 64), b"fresh");
    }

    fn ten_thousand_dropped_reads_with_a_racing_writer_lose_nothing(b: BackendChoice) {
        const MSGS: u64 = 10_000;
        let d = driver(b, 256);
        let (r, w) = pipe();
        let writer = std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            for i in 0..MSGS {
                write_all(w.as_raw_fd(), &i.to_le_bytes());
                if rng.next() % 4 == 0 {
                    std::thread::yield_now();
                }
            }
            w
        });
        let total = (MSGS * 8) as usize;
        let mut got = Vec::with_capacity(total);
        let mut rng = Rng(12345);
        let mut dropped = 0;
        for _ in 0..MSGS {
            let len = 1 + (rng.next() % 16) as usize;
            let op = Op::read(r.as_raw_fd(), vec![0u8; len])
                .deadline(Instant::now() + Duration::from_secs(10));
            let f = d.submit(op).unwrap().buf();
            // Hand it to the kernel; sometimes let it complete before the drop.
            for _ in 0..(rng.next() % 3) {
                d.turn().unwrap();
            }
            if rng.next() % 2 == 0 {
                drop(f);
                dropped += 1;
            } else if got.len() < total {
                let (n, buf) = d.block_on(f);
                got.extend_from_slice(&buf[..n.expect("bytes were lost: the read timed out")]);
            }
        }
        let w = writer.join().unwrap();
        while got.len() < total {
            got.extend(read_within(&d, r.as_raw_fd(), 4096));
        }
        settle(&d, 10);
        // Nothing lost, nothing duplicated, nothing reordered.
        assert_eq!(got.len(), total, "extra bytes appeared");
        for (i, chunk) in got.chunks(8).enumerate() {
            assert_eq!(u64::from_le_bytes(chunk.try_into().unwrap()), i as u64, "at message {i}");
        }
        assert!(dropped > 1000);
        assert_eq!(d.kept_bytes(r.as_raw_fd()), 0);
        assert!(drain_nonblocking(r.as_raw_fd()).is_empty());
        drop(w);
    }

    fn explicit_cancel_returns_the_honest_outcome_and_the_buffer(b: BackendChoice) {
        let d = driver(b, 64);
        let (r, w) = pipe();
        // Pending: canceled, nothing moved, buffer back.
        let mut f = d.submit(Op::read(r.as_raw_fd(), vec![7u8; 32])).unwrap();
        d.turn().unwrap();
        assert_eq!(f.cancel(), quell::CancelStatus::Requested);
        let c = d.block_on(f);
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(c.into_buf().unwrap(), vec![7u8; 32]);
        // Too late: the data was already read; the cancel cannot undo it.
        write_all(w.as_raw_fd(), b"late");
        let mut f = d.submit(Op::read(r.as_raw_fd(), vec![0u8; 32])).unwrap();
        d.turn().unwrap();
        settle_routed(&d);
        f.cancel();
        let c = d.block_on(f);
        assert_eq!(c.outcome, Outcome::Done(4));
        assert_eq!(c.data(), b"late");
        // From another thread, through a Canceller.
        let f = d.submit(Op::read(r.as_raw_fd(), vec![0u8; 8])).unwrap();
        let canceller = f.canceller().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            canceller.cancel();
        });
        let c = d.block_on(f);
        t.join().unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(d.outstanding(), 0);
    }

    fn drops_while_the_submission_queue_is_full_all_land(b: BackendChoice) {
        // 8 SQ entries, 1,000 pending reads, then 1,000 drops at once.
        let ring = Ring::builder()
            .backend(b)
            .capacity(2048)
            .max_in_flight(2048)
            .sq_entries(8)
            .build()
            .unwrap();
        let d = Driver::new(ring);
        let pipes: Vec<_> = (0..100).map(|_| pipe()).collect();
        let futs: Vec<OpFuture> = (0..1000)
            .map(|i| d.submit(Op::read(pipes[i % 100].0.as_raw_fd(), vec![0u8; 16])).unwrap())
            .collect();
        d.turn().unwrap();
        d.turn().unwrap();
        assert_eq!(d.outstanding(), 1000);
        drop(futs);
        settle(&d, 10);
        assert!(d.with_ring(|r| r.ops().is_empty()));
        // The pipes still work, and no byte went to a canceled read.
        for (i, (r, w)) in pipes.iter().enumerate() {
            write_all(w.as_raw_fd(), &[i as u8]);
            assert_eq!(read_within(&d, r.as_raw_fd(), 16), vec![i as u8]);
        }
    }

    fn a_read_waiting_behind_kept_bytes_is_served_them(b: BackendChoice) {
        let d = driver(b, 64);
        let (r, w) = pipe();
        let first = d.read(r.as_raw_fd(), vec![0u8; 64]);
        let second = d.read(r.as_raw_fd(), vec![0u8; 64]);
        d.turn().unwrap();
        write_all(w.as_raw_fd(), b"one");
        settle_routed(&d);
        // Whichever read got the bytes, dropping the first must not strand them: the
        // second is served them, promptly, though no more data ever comes.
        drop(first);
        let (n, buf) = d.block_on(second);
        assert_eq!(&buf[..n.unwrap()], b"one");
        settle(&d, 5);
    }

    fn dropped_accept_keeps_its_connection(b: BackendChoice) {
        let d = driver(b, 64);
        let l = Listener::bind(&d, "127.0.0.1:0".parse().unwrap()).unwrap();
        let accept = Box::pin(l.accept());
        let mut accept = accept;
        // Poll it once (submits; nobody is connecting yet, so it waits), let it
        // complete, then drop it unresolved. (A connection already queued would be
        // accepted inline by that first poll, which would resolve it.)
        let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(accept.as_mut().poll(&mut cx).is_pending());
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        settle_routed(&d);
        drop(accept);
        assert_eq!(d.kept_connections(l.fd()), 1);
        let s = d.block_on(l.accept()).expect("the kept connection");
        std::io::Write::write_all(&mut &client, b"same").unwrap();
        let (n, buf) = d.block_on(s.read_owned(vec![0u8; 8]));
        assert_eq!(&buf[..n.unwrap()], b"same");
        assert_eq!(d.kept_connections(l.fd()), 0);
    }

    fn dropped_open_closes_its_descriptor(b: BackendChoice) {
        let d = driver(b, 64);
        let path = std::env::temp_dir().join(format!("quell-open-{}-{b:?}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        for i in 0..50 {
            let f = d.submit(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0)).unwrap();
            d.turn().unwrap();
            if i % 2 == 0 {
                settle_routed(&d); // completed before the drop, or dropped in flight
            }
            drop(f);
        }
        settle(&d, 5);
        assert_eq!(fds_linking_to(&path.display().to_string()), 0);
        std::fs::remove_file(&path).unwrap();
    }

    fn dropping_a_stream_with_a_read_in_flight_closes_it_once_done(b: BackendChoice) {
        let d = driver(b, 64);
        let mut links = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..50 {
            let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
            links.push(link_of(x.as_raw_fd()));
            let s = Stream::new(&d, x);
            let f = s.read_owned(vec![0u8; 8]);
            d.turn().unwrap();
            drop(f);
            drop(s);
            peers.push(y);
        }
        settle(&d, 5);
        for l in &links {
            assert_eq!(fds_linking_to(l), 0, "{l} is still open");
        }
        assert_eq!(d.outstanding(), 0);
    }

    fn a_completion_survives_its_slot_being_reused_before_it_is_taken(b: BackendChoice) {
        let d = driver(b, 64);
        let a = d.submit(Op::nop().user_data(1)).unwrap();
        settle_routed(&d); // a's completion waits in the driver; the ring reuses its slot
        let b2 = d.submit(Op::nop().user_data(2)).unwrap();
        let c = d.submit(Op::nop().user_data(3)).unwrap();
        assert_eq!(d.block_on(c).user_data, 3);
        assert_eq!(d.block_on(a).user_data, 1);
        drop(b2);
        settle(&d, 5);
    }

    fn refused_submissions_hand_the_buffer_back(b: BackendChoice) {
        let d = driver(b, 64);
        let (res, buf) = d.block_on(d.read(-1, vec![3u8; 10]));
        assert!(res.is_err());
        assert_eq!(buf, vec![3u8; 10]);
        let err = d.submit(Op::write(-5, vec![1u8; 4])).unwrap_err();
        assert_eq!(err.into_op().into_buf().unwrap(), vec![1u8; 4]);
        assert_eq!(d.outstanding(), 0);
    }

    fn every_op_kind_runs_as_a_future(b: BackendChoice) {
        let d = driver(b, 64);
        let dir = std::env::temp_dir().join(format!("quell-fut-{}-{:?}", std::process::id(), b));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let run = |op: Op| d.block_on(d.submit(op).unwrap());
        let c = run(Op::openat(libc::AT_FDCWD, &path, libc::O_RDWR | libc::O_CREAT, 0o600));
        let fd = c.outcome.into_result().unwrap() as i32;
        assert_eq!(run(Op::write_at(fd, 0, b"hello".to_vec())).outcome, Outcome::Done(5));
        assert_eq!(run(Op::fsync(fd)).outcome, Outcome::Done(0));
        assert_eq!(run(Op::read_at(fd, 1, vec![0; 4])).data(), b"ello");
        let c = run(Op::readv_at(fd, 0, vec![vec![0; 2], vec![0; 3]]));
        assert_eq!(c.outcome, Outcome::Done(5));
        let c = run(Op::statx(fd, "", libc::AT_EMPTY_PATH, libc::STATX_SIZE));
        assert_eq!(c.statx().unwrap().stx_size, 5);
        assert!(run(Op::timeout(Duration::from_millis(1))).outcome.is_done());
        let c = run(Op::blocking(|| Ok(42)));
        assert_eq!(c.outcome, Outcome::Done(42));
        assert_eq!(run(Op::close(fd)).outcome, Outcome::Done(0));
        d.forget_fd(fd);
        assert_eq!(run(Op::unlinkat(libc::AT_FDCWD, &path, 0)).outcome, Outcome::Done(0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

struct Noop;
impl std::task::Wake for Noop {
    fn wake(self: std::sync::Arc<Self>) {}
}

/// What `/proc/self/fd/N` links to (`socket:[inode]`, a path).
fn link_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// How many of this process's descriptors link to `target` (other tests of this
/// binary open descriptors concurrently, so a plain count would be unreliable).
fn fds_linking_to(target: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.display().to_string() == target)
        .count()
}

/// Turns the ring until what it has is routed (ops ready in the kernel complete).
fn settle_routed(d: &Driver) {
    for _ in 0..20 {
        d.turn().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

use std::future::Future;

/// Round trips to an echo thread through `block_on` (no runtime), as a reference for
/// the tokio reactor's version of the same test.
fn pingpong_block_on(b: BackendChoice) {
    let d = driver(b, 64);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while std::io::Read::read_exact(&mut &theirs, &mut buf).is_ok() {
            if std::io::Write::write_all(&mut &theirs, &buf).is_err() {
                break;
            }
        }
    });
    let fd = ours.as_raw_fd();
    let (mut w, mut r) = (vec![1u8; 64], vec![0u8; 64]);
    for _ in 0..3000 {
        let wf = d.submit(Op::write(fd, w).exact()).unwrap();
        let rf = d
            .submit(
                Op::read(fd, r)
                    .exact()
                    .deadline(Instant::now() + Duration::from_secs(10)),
            )
            .unwrap();
        let (cw, cr) = d.block_on(async { (wf.await, rf.await) });
        assert_eq!(cw.outcome, Outcome::Done(64));
        assert_eq!(cr.outcome, Outcome::Done(64), "round trip lost");
        w = cw.into_buf().unwrap();
        r = cr.into_buf().unwrap();
    }
    drop(ours);
    echo.join().unwrap();
}

#[test]
fn pingpong_block_on_uring() {
    pingpong_block_on(BackendChoice::Uring)
}

#[test]
fn pingpong_block_on_portable() {
    pingpong_block_on(BackendChoice::Portable)
}
