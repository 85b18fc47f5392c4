//! Fault injection against a real FUSE daemon (quell-faultfs), on every backend:
//! hung reads canceled one by one, by fd and all at once; EIO and short transfers
//! reported honestly; a ring dropped with hung reads; a write canceled part-way.
//!
//! Needs root (or /dev/fuse + fusermount). `QUELL_SKIP_FUSE_TESTS=1` skips them.

mod common;

use common::counting::{self, Counting};
use common::fault::{mount, wait_id, Watchdog};
use common::*;
use quell::{BackendChoice, CancelClass, CancelStatus, Errno, Op, OpState, Outcome, Ring};
use quell_faultfs::{fill_pattern, Behavior, FileSpec, Rule, Spec};
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Serializes the tests that count tagged buffers (the counters are process-wide).
static SERIAL: Mutex<()> = Mutex::new(());

/// Buffer tag of the drop-ring test (see common::counting).
const DROP_TAG: usize = 5;

const MIB: u64 = 1 << 20;

fn hang_spec() -> Spec {
    Spec::new()
        .file(FileSpec::pattern("hang.bin", 4 * MIB).rule(Rule::read(0..u64::MAX, Behavior::Hang)))
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(offset, &mut v);
    v
}

both_backends! {
    /// A read that hangs in the daemon is canceled within a second, as an Interruptible
    /// op, and the daemon sees exactly one FUSE_INTERRUPT.
    fn fuse_hung_read_cancels_within_a_second(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let Some(fs) = mount(hang_spec()) else { return };
        let wd = Watchdog::new(&fs, 20);
        let file = std::fs::File::open(fs.path("hang.bin")).unwrap();
        let id = ring.submit(Op::read_at(file.as_raw_fd(), 0, vec![0; 4096]).user_data(7)).unwrap();
        let t = Instant::now();
        ring.poll().unwrap();
        let submit_time = t.elapsed();
        assert!(
            submit_time < Duration::from_secs(1),
            "submitting a hung FUSE read blocked the ring for {submit_time:?} (must go to a worker: IOSQE_ASYNC)"
        );
        assert!(fs.wait_parked(1, Duration::from_secs(5)), "the read never reached the daemon");
        let ops = ring.ops();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].state, OpState::InFlight);
        assert_eq!(ops[0].class, CancelClass::Interruptible, "FUSE files are Interruptible");

        let t = Instant::now();
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::Requested);
        let cancel_call = t.elapsed();
        assert!(cancel_call < Duration::from_millis(200), "cancel() must not block: {cancel_call:?}");
        assert_eq!(ring.ops()[0].state, OpState::CancelRequested);
        let (c, others) = wait_id(&mut ring, id, 10);
        let latency = t.elapsed();
        assert!(others.is_empty());
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(c.user_data, 7);
        assert_eq!(c.into_buf().unwrap().len(), 4096);
        eprintln!("[{b:?}] cancel latency of a hung FUSE read: {latency:?} (cancel() call {cancel_call:?})");
        assert!(latency < Duration::from_secs(1), "cancel took {latency:?}");
        assert!(!wd.fired());

        // Exactly one INTERRUPT: give a late duplicate time to show up.
        std::thread::sleep(Duration::from_millis(200));
        let s = fs.stats();
        assert_eq!(s.interrupts, 1, "daemon stats: {s:?}");
        assert_eq!(s.interrupted, 1);
        assert_eq!(s.parked, 0);
        assert!(ring.is_empty());
        assert!(ring.next_completion().is_none());
    }

    /// 100 hung reads canceled by fd: each completes exactly once, as Canceled.
    fn fuse_hundred_hung_reads_cancel_fd(b: BackendChoice) {
        hundred_hung_reads(b, true);
    }

    /// 100 hung reads canceled with cancel_all: each completes exactly once.
    fn fuse_hundred_hung_reads_cancel_all(b: BackendChoice) {
        hundred_hung_reads(b, false);
    }

    /// A read over a range that fails with EIO is Failed(EIO); one whose first FUSE
    /// request succeeds and second fails reports the bytes of the first honestly.
    fn fuse_eio_read_fails_honestly(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let Some(fs) = mount(
            Spec::new()
                .file(FileSpec::pattern("bad.bin", MIB).rule(Rule::read(0..4096, Behavior::Eio)))
                .file(FileSpec::pattern("late.bin", MIB).rule(Rule::read(128 * 1024..MIB, Behavior::Eio))),
        ) else {
            return;
        };
        let _wd = Watchdog::new(&fs, 30);
        let bad = std::fs::File::open(fs.path("bad.bin")).unwrap();
        let late = std::fs::File::open(fs.path("late.bin")).unwrap();
        let id = ring.submit(Op::read_at(bad.as_raw_fd(), 0, vec![0; 4096])).unwrap();
        let (c, _) = wait_id(&mut ring, id, 10);
        assert_eq!(c.outcome, Outcome::Failed(Errno::IO));
        assert!(c.data().is_empty());

        // 256 KiB: the kernel splits it into FUSE requests of at most 128 KiB; the
        // first (0..128K) succeeds, the next fails. The kernel reports the bytes it got.
        let len = 256 * 1024;
        let id = ring.submit(Op::read_at(late.as_raw_fd(), 0, vec![0; len])).unwrap();
        let (c, _) = wait_id(&mut ring, id, 10);
        let s = fs.stats();
        let got = s.files["late.bin"].bytes_read;
        eprintln!("[{b:?}] read over a late EIO: {} (daemon served {got} bytes)", c.outcome);
        match c.outcome {
            Outcome::Done(n) => {
                assert!(n > 0 && n < len, "partial read expected, got {n}");
                assert_eq!(n as u64, got, "transferred = bytes the daemon served");
                check_data(b, c.data(), 0, 4096);
            }
            Outcome::Failed(e) => {
                assert_eq!(e, Errno::IO);
                assert_eq!(got, 0, "the daemon served {got} bytes but the read reports none");
            }
            o => panic!("unexpected outcome {o}"),
        }
        // Offset inside the bad range only: a clean EIO.
        let id = ring.submit(Op::read_at(late.as_raw_fd(), 512 * 1024, vec![0; 4096])).unwrap();
        assert_eq!(wait_id(&mut ring, id, 10).0.outcome, Outcome::Failed(Errno::IO));
        assert!(ring.is_empty());
    }

    /// A range answered short yields Done(n) with the short count and the right bytes.
    fn fuse_short_read_reports_short_count(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let Some(fs) = mount(
            Spec::new().file(FileSpec::pattern("short.bin", MIB).rule(Rule::read(8192..16384, Behavior::Short { n: 1000 }))),
        ) else {
            return;
        };
        let _wd = Watchdog::new(&fs, 30);
        let f = std::fs::File::open(fs.path("short.bin")).unwrap();
        let id = ring.submit(Op::read_at(f.as_raw_fd(), 8192, vec![0; 4096])).unwrap();
        let (c, _) = wait_id(&mut ring, id, 10);
        // io_uring retries a short read on a regular file once more from where it
        // stopped (the daemon answers short again); a plain pread returns the first
        // short count. Either way the count is the bytes the daemon really served.
        let served = fs.stats().files["short.bin"].bytes_read;
        eprintln!("[{b:?}] short read: {} (daemon served {served} bytes)", c.outcome);
        let Outcome::Done(n) = c.outcome else { panic!("short read: {}", c.outcome) };
        assert_eq!(n as u64, served);
        assert_eq!(n, 1000, "the short count the daemon gave");
        check_data(b, c.data(), 8192, 1000);
        // Outside the rule: the whole buffer.
        let id = ring.submit(Op::read_at(f.as_raw_fd(), 0, vec![0; 4096])).unwrap();
        let (c, _) = wait_id(&mut ring, id, 10);
        assert_eq!(c.outcome, Outcome::Done(4096));
        assert!(c.data() == &pattern(0, 4096)[..]);
    }

    /// I2 at teardown: dropping a ring with 50 hung FUSE reads and 50 pending pipe reads
    /// returns in bounded time; every buffer is freed (none leaked), and only after its
    /// kernel completion: once the ring is gone no request is left in the daemon.
    fn drop_ring_with_hung_fuse_and_pipe_reads(b: BackendChoice) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fs) = mount(hang_spec()) else { return };
        let wd = Watchdog::new(&fs, 60);
        let file = std::fs::File::open(fs.path("hang.bin")).unwrap();
        let (r, w) = pipe();
        let live0 = counting::live(DROP_TAG);
        let took;
        let parked;
        {
            let mut ring = Ring::builder()
                .backend(b)
                .capacity(256)
                .max_in_flight(256)
                .teardown_timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            for i in 0..50u64 {
                ring.submit(Op::read_at(file.as_raw_fd(), i * 8192, counting::tagged_buf(DROP_TAG, 1))).unwrap();
                ring.submit(Op::read(r.as_raw_fd(), counting::tagged_buf(DROP_TAG, 1))).unwrap();
            }
            ring.poll().unwrap();
            assert_eq!(counting::live(DROP_TAG) - live0, 100);
            assert!(fs.wait_parked(1, Duration::from_secs(5)), "no read reached the daemon");
            std::thread::sleep(Duration::from_millis(100));
            parked = fs.stats().parked;
            assert_eq!(ring.ops().len(), 100);
            let t = Instant::now();
            drop(ring);
            took = t.elapsed();
        }
        eprintln!("[{b:?}] dropping a ring with 50 hung FUSE reads ({parked} in the daemon) and 50 pipe reads took {took:?}");
        assert!(!wd.fired(), "the watchdog had to abort the connection");
        assert!(took < Duration::from_secs(10), "teardown took {took:?}");
        assert_eq!(counting::live(DROP_TAG), live0, "every buffer was freed (none leaked at teardown)");
        let s = fs.stats();
        assert_eq!(s.parked, 0, "a FUSE request outlived the ring: {s:?}");
        assert_eq!(fs.release_all(), 0, "a FUSE request outlived the ring");
        assert!(s.interrupts >= parked as u64, "every parked read was interrupted: {s:?}");
        // No pipe read survived the ring: the next bytes stay in the pipe.
        write_all(w.as_raw_fd(), b"after");
        assert_eq!(drain_nonblocking(r.as_raw_fd()), b"after");
    }

    /// I4/I11: a write canceled part-way reports exactly what the daemon received.
    fn fuse_write_canceled_midway_reports_bytes_received(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let Some(fs) = mount(
            Spec::new()
                .file(FileSpec::new("out.bin", 0).rule(Rule::write(256 * 1024..u64::MAX, Behavior::Hang)))
                .file(FileSpec::new("stuck.bin", 0).rule(Rule::write(0..u64::MAX, Behavior::Hang))),
        ) else {
            return;
        };
        let wd = Watchdog::new(&fs, 30);
        let out = std::fs::OpenOptions::new().write(true).open(fs.path("out.bin")).unwrap();
        let data = pattern(0, 512 * 1024);
        let id = ring.submit(Op::write_at(out.as_raw_fd(), 0, data.clone())).unwrap();
        ring.poll().unwrap();
        assert!(fs.wait_parked(1, Duration::from_secs(5)), "the write never hung");
        assert_eq!(ring.ops()[0].class, CancelClass::Interruptible);
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::Requested);
        let (c, _) = wait_id(&mut ring, id, 10);
        let s = fs.stats();
        let received = s.files["out.bin"].bytes_written;
        eprintln!("[{b:?}] write canceled mid-way: {} (daemon received {received} bytes)", c.outcome);
        assert!(!wd.fired());
        match c.outcome {
            Outcome::Canceled { transferred } => {
                assert_eq!(transferred as u64, received, "transferred must equal what the daemon received");
            }
            o => panic!("a write stopped part-way must be Canceled {{ transferred }}, got {o} (daemon received {received})"),
        }
        assert!(received > 0 && received < data.len() as u64, "received {received}");
        let contents = fs.file_contents("out.bin").unwrap();
        assert_eq!(contents.len() as u64, received);
        assert_eq!(contents, &data[..received as usize]);

        // A write whose first request hangs: canceled with nothing written.
        let stuck = std::fs::OpenOptions::new().write(true).open(fs.path("stuck.bin")).unwrap();
        let id = ring.submit(Op::write_at(stuck.as_raw_fd(), 0, vec![1; 8192])).unwrap();
        ring.poll().unwrap();
        assert!(fs.wait_parked(1, Duration::from_secs(5)));
        ring.cancel(id).unwrap();
        let (c, _) = wait_id(&mut ring, id, 10);
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert_eq!(fs.stats().files["stuck.bin"].bytes_written, 0);
        assert!(fs.file_contents("stuck.bin").unwrap().is_empty());
    }
}

fn hundred_hung_reads(b: BackendChoice, by_fd: bool) {
    let n = 100u64;
    let mut ring = ring(b, 256);
    let Some(fs) = mount(hang_spec()) else { return };
    let wd = Watchdog::new(&fs, 60);
    let file = std::fs::File::open(fs.path("hang.bin")).unwrap();
    let (other, _ow) = pipe();
    let keep = ring
        .submit(Op::read(other.as_raw_fd(), vec![0; 1]).user_data(u64::MAX))
        .unwrap();
    for i in 0..n {
        ring.submit(Op::read_at(file.as_raw_fd(), i * 4096, vec![0; 4096]).user_data(i))
            .unwrap();
    }
    ring.poll().unwrap();
    assert!(fs.wait_parked(1, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    let parked = fs.stats().parked;
    let ops = ring.ops();
    assert_eq!(ops.len(), n as usize + 1);
    assert!(ops
        .iter()
        .filter(|o| o.user_data != u64::MAX)
        .all(|o| o.dispatch_class == CancelClass::Interruptible));
    let t = Instant::now();
    let reached = if by_fd {
        ring.cancel_fd(file.as_raw_fd())
    } else {
        ring.cancel_all()
    };
    let expect = if by_fd { n } else { n + 1 } as usize;
    assert_eq!(reached, expect);
    let c = collect(&mut ring, expect, 20);
    let took = t.elapsed();
    eprintln!(
        "[{b:?}] canceling {n} hung FUSE reads ({parked} in the daemon) by {}: {took:?}",
        if by_fd { "fd" } else { "cancel_all" }
    );
    let mut seen = HashSet::new();
    for c in &c {
        assert!(
            seen.insert(c.user_data),
            "two completions for {}",
            c.user_data
        );
        assert_eq!(
            c.outcome,
            Outcome::Canceled { transferred: 0 },
            "op {}",
            c.user_data
        );
    }
    assert_eq!(seen.len(), expect);
    if by_fd {
        assert_eq!(ring.ops().len(), 1, "the pipe read is untouched");
        assert_eq!(ring.ops()[0].id, keep);
        ring.cancel(keep).unwrap();
        assert_eq!(
            wait_id(&mut ring, keep, 10).0.outcome,
            Outcome::Canceled { transferred: 0 }
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    ring.poll().unwrap();
    assert!(ring.next_completion().is_none(), "no extra completions");
    assert!(ring.is_empty());
    assert!(!wd.fired());
    let s = fs.stats();
    assert_eq!(s.parked, 0, "{s:?}");
    assert!(s.interrupts >= parked as u64, "{s:?}");
}

/// Checks that `data` is the file's pattern from `offset`, on every backend.
fn check_data(_b: BackendChoice, data: &[u8], offset: u64, _prefix: usize) {
    let want = pattern(offset, data.len());
    let bad = data.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        bad.is_none(),
        "the data is not the file's from byte {bad:?}"
    );
}

/// Kernel bug demonstration (io_uring + FUSE direct I/O, kernel 6.18): a read answered
/// short by the daemon is retried by io_uring, but from the original file offset, and
/// the completion reports the sum: `Done(2000)` whose bytes 1000..2000 are a second copy
/// of bytes 0..1000. A plain `pread` (the portable backend) returns `1000` and the right
/// bytes. quell's uring backend therefore runs Interruptible reads on its pool; this test
/// guards that route.
#[test]
fn uring_short_fuse_read_returns_the_files_bytes() {
    let mut ring = ring(BackendChoice::Uring, 4);
    let Some(fs) = mount(
        Spec::new().file(
            FileSpec::pattern("short.bin", MIB)
                .rule(Rule::read(8192..16384, Behavior::Short { n: 1000 })),
        ),
    ) else {
        return;
    };
    let _wd = Watchdog::new(&fs, 30);
    let f = std::fs::File::open(fs.path("short.bin")).unwrap();
    let id = ring
        .submit(Op::read_at(f.as_raw_fd(), 8192, vec![0; 4096]))
        .unwrap();
    let (c, _) = wait_id(&mut ring, id, 10);
    let n = c.outcome.transferred();
    let want = pattern(8192, n);
    let bad = c.data().iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        bad.is_none(),
        "{}: bytes from {bad:?} are not the file's",
        c.outcome
    );
}
