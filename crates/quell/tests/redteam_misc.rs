//! Regression tests from an independent red team that saw only the docs (issue 15). Each
//! guards a promise a user relies on; most passed when ported and stay to keep it so.
//!
//! - I10 bad input: a clear typed error (the buffer handed back inside it) or an ordinary
//!   failed completion, never a panic, an abort, a hang or a lost buffer: descriptors,
//!   lengths, offsets, paths, vectors, builder settings, ids and groups, deadlines, chains,
//!   closures that panic, aligned buffers.
//! - I9 checkpoints: an exact transfer continues across a checkpoint onto either backend
//!   with every byte once; resubmitted ops in a quiesced ring end with the ring; corrupt
//!   encodings get errors.
//!
//! Outcomes that could kill the process (an allocation failure aborts it) run in a child:
//! this test binary re-executed with `QUELL_REDTEAM_CHILD` naming what to do. Tests that
//! count descriptors hold [`serial`] so that the others do not open any meanwhile.

mod common;

use common::*;
use quell::{
    AlignedBuf, BackendChoice, Buffers, Chain, Checkpoint, Errno, Error, GroupId, GroupOptions, Op,
    Outcome, QuiescePolicy, Ring,
};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "QUELL_REDTEAM_CHILD";

static SERIAL: Mutex<()> = Mutex::new(());

/// Every test of this binary holds it: some count descriptors.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on a thread of its own; panics if it has not finished after `secs` seconds
/// (a hang guard, not a timing assertion).
fn guard<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("HANG: {what} did not finish within {secs}s"),
    }
}

/// Submits `op`, which must be refused: the error and the op handed back.
fn refused(ring: &mut Ring, op: Op) -> (Error, Op) {
    match ring.submit(op) {
        Ok(id) => panic!(
            "accepted, completed {:?}",
            ring.wait_for(id).unwrap().outcome
        ),
        Err(e) => e.into_parts(),
    }
}

/// Submits `op`: the refusal, or the outcome of the op accepted.
fn answer(ring: &mut Ring, op: Op) -> Result<Outcome, Error> {
    match ring.submit(op) {
        Ok(id) => Ok(ring.wait_for(id).unwrap().outcome),
        Err(e) => Err(e.into_parts().0),
    }
}

fn failed_with(a: &Result<Outcome, Error>, errno: Errno) -> bool {
    matches!(a, Ok(Outcome::Failed(e)) if *e == errno)
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("quell-redteam-{tag}-{}-{n}", std::process::id()))
}

/// One builder setting under test.
type Setting = fn(quell::Builder) -> quell::Builder;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

/// Runs `which` in a child process (this binary, `child` test); returns its exit code and
/// output (a signal or abort shows as no code).
fn run_child(which: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, which)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The child half: only does something when re-executed by a test.
#[test]
fn child() {
    let Ok(which) = std::env::var(CHILD_ENV) else {
        return;
    };
    let _s = serial();
    match which.as_str() {
        "aligned" => {
            // Beyond any address space (47 or 56 bits): refused with None.
            for (len, align) in [
                (4096, 1usize << 62),
                (4096, 1 << 63),
                (1 << 60, 4096),
                (usize::MAX, 4096),
                (isize::MAX as usize - 4095, 4096),
            ] {
                let b = AlignedBuf::new(len, align);
                println!(
                    "RESULT new({len}, {align}) = {:?}",
                    b.as_ref().map(|b| b.len())
                );
                assert!(
                    b.is_none(),
                    "AlignedBuf::new({len}, {align}) returned a buffer"
                );
            }
            // What the red team tried (it aborted): None where the system will not reserve
            // a terabyte of address space, else a buffer as asked (vm.overcommit_memory=1).
            for (len, align) in [(4096, 1usize << 40), (1 << 46, 4096)] {
                let b = AlignedBuf::new(len, align);
                println!(
                    "RESULT new({len}, {align}) = {:?}",
                    b.as_ref().map(|b| b.len())
                );
                if let Some(b) = b {
                    assert_eq!((b.len(), b.as_ptr() as usize % align), (len, 0));
                }
            }
            println!("RESULT no abort");
            std::process::exit(0);
        }
        "fuzz:uring" => fuzz_checkpoints(BackendChoice::Uring),
        "fuzz:portable" => fuzz_checkpoints(BackendChoice::Portable),
        other => panic!("unknown child {other}"),
    }
}

/// `AlignedBuf::new` returns `None` when the buffer cannot be had: an alignment or a
/// length no allocator can serve (a 1 TiB alignment aborted the process with "memory
/// allocation of 4096 bytes failed"). A buffer that can be had still comes, aligned.
#[test]
fn aligned_buf_that_cannot_be_allocated_is_none_not_an_abort() {
    let _s = serial();
    let (code, out) = run_child("aligned");
    assert_eq!(
        code,
        Some(0),
        "the child died: {}",
        out.lines()
            .filter(|l| l.contains("RESULT") || l.contains("memory") || l.contains("panicked"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(out.contains("RESULT no abort"), "{out}");
    let b = AlignedBuf::new(1 << 20, 1 << 21).expect("2 MiB aligned to 2 MiB");
    assert_eq!((b.len(), b.as_ptr() as usize % (1 << 21)), (1 << 20, 0));
    assert!(b.iter().all(|&x| x == 0));
    assert!(AlignedBuf::new(0, 4096).is_some_and(|b| b.is_empty()));
    assert!(AlignedBuf::new(4096, 3).is_none());
    assert!(AlignedBuf::new(4096, 0).is_none());
}

/// A checkpoint of three ops, quiesced on backend `b`: a socket read, a timeout and a file
/// write (queued behind the other two). The descriptors it names are in the returned box.
fn base_checkpoint(b: BackendChoice) -> (Checkpoint, Box<dyn std::any::Any>) {
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let p = temp_path("ckbase");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let mut ring = Ring::builder().backend(b).max_in_flight(2).build().unwrap();
    ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 16]).user_data(1))
        .unwrap();
    ring.submit(Op::timeout(Duration::from_secs(60)).user_data(3))
        .unwrap();
    ring.submit(Op::write_at(f.as_raw_fd(), 0, b"payload".to_vec()).user_data(2))
        .unwrap();
    ring.flush().unwrap();
    let ck = ring.quiesce(QuiescePolicy::default()).unwrap();
    assert_eq!(ck.ops.len(), 3);
    drop(ring);
    let _ = std::fs::remove_file(&p);
    (ck, Box::new((r, w, f)))
}

/// Resubmits whatever `bytes` decodes to, cancels it all and collects every completion.
fn resubmit_all(ring: &mut Ring, decoded: Result<Checkpoint, Error>) {
    let Ok(c) = decoded else { return };
    let res = ring.resubmit(&c, Buffers::new());
    assert_eq!(res.len(), c.ops.len(), "one answer per descriptor");
    let accepted = res.iter().filter(|r| r.is_ok()).count();
    ring.resume();
    ring.cancel_all();
    let got = collect(ring, accepted, 30);
    assert_eq!(got.len(), accepted, "one completion per accepted op");
    assert!(ring.is_empty());
}

/// Bit-flipped and truncated postcard checkpoints, JSON ones with digits changed, and a
/// length prefix claiming a huge vector: decoding errors or per-op errors only, and every
/// op accepted completes once. Runs in a child: an abort or a hang is seen as such.
fn fuzz_checkpoints(b: BackendChoice) {
    let (ck, _keep) = base_checkpoint(b);
    let good = ck.to_bytes().unwrap();
    let good_json = ck.to_json().unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ring = common::ring(b, 64);
    for i in 0..5000 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 4 {
            let pos = next() as usize % bytes.len();
            bytes[pos] = next() as u8;
        }
        if i % 10 == 0 {
            bytes.truncate(next() as usize % bytes.len());
        }
        resubmit_all(&mut ring, Checkpoint::from_bytes(&bytes));
    }
    for _ in 0..2000 {
        let mut s = good_json.clone().into_bytes();
        let pos = next() as usize % s.len();
        s[pos] = b"0123456789-"[(next() % 11) as usize];
        if let Ok(t) = std::str::from_utf8(&s) {
            resubmit_all(&mut ring, Checkpoint::from_json(t));
        }
    }
    let mut evil = vec![2u8, 1];
    evil.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(Checkpoint::from_bytes(&evil).is_err());
    println!("RESULT fuzz ok");
    std::process::exit(0);
}

both_backends! {
    /// Numbers that are no open descriptor (and `AT_FDCWD`, `Chain::OPENED` outside a
    /// chain) are refused with `InvalidFd` by every op that takes a descriptor, the buffer
    /// handed back whole; nothing reaches the kernel.
    fn bad_descriptors_are_refused_with_the_buffer_back(b: BackendChoice) {
        let _s = serial();
        guard(30, "bad descriptors", move || {
            let mut ring = common::ring(b, 64);
            for fd in [-1, libc::AT_FDCWD, 1 << 30, i32::MAX, i32::MIN, Chain::OPENED] {
                let (e, op) = refused(&mut ring, Op::read(fd, vec![7u8; 33]));
                assert!(matches!(e, Error::InvalidFd { .. }), "{b:?} read fd {fd}: {e:?}");
                assert_eq!(op.into_buf().unwrap(), vec![7u8; 33]);
                let (e, op) = refused(&mut ring, Op::write_at(fd, 0, vec![1u8; 5]));
                assert!(matches!(e, Error::InvalidFd { .. }), "{b:?} write_at fd {fd}: {e:?}");
                assert_eq!(op.into_buf().unwrap(), vec![1u8; 5]);
                for op in [Op::fsync(fd), Op::poll(fd, quell::Interest::READABLE), Op::accept(fd)] {
                    let kind = op.kind();
                    let (e, _) = refused(&mut ring, op);
                    assert!(matches!(e, Error::InvalidFd { .. }), "{b:?} {kind:?} fd {fd}: {e:?}");
                }
                let (e, op) = refused(&mut ring, Op::readv_at(fd, 0, vec![vec![0; 3], vec![0; 4]]));
                assert!(matches!(e, Error::InvalidFd { .. }), "{b:?} readv fd {fd}: {e:?}");
                assert_eq!(op.into_bufs().unwrap(), vec![vec![0; 3], vec![0; 4]]);
                let (e, op) = refused(&mut ring, Op::read_aligned(fd, 0, AlignedBuf::new(4096, 4096).unwrap()));
                assert!(matches!(e, Error::InvalidFd { .. }), "{b:?} read_aligned fd {fd}: {e:?}");
                assert_eq!(op.into_aligned().unwrap().len(), 4096);
            }
            assert!(ring.is_empty());
            assert_eq!(ring.stats().submitted, 0);
        });
    }

    /// `close` of a number that is no open descriptor is refused or fails `EBADF`, and
    /// closes nothing else.
    fn closing_a_bad_descriptor_closes_nothing_else(b: BackendChoice) {
        let _s = serial();
        guard(30, "bad closes", move || {
            let mut ring = common::ring(b, 64);
            let before = open_fds();
            for fd in [-1, libc::AT_FDCWD, 1 << 30, Chain::OPENED] {
                let a = answer(&mut ring, Op::close(fd));
                assert!(matches!(a, Err(Error::InvalidFd { .. })) || failed_with(&a, Errno::BADF), "{b:?} close({fd}): {a:?}");
            }
            assert_eq!(open_fds(), before);
        });
    }

    /// A stream read longer than `i32::MAX` is refused with `TooLong` and its buffer comes
    /// back; a fallocate whose range leaves `i64` never succeeds.
    fn oversized_lengths_are_refused_with_the_buffer_back(b: BackendChoice) {
        let _s = serial();
        guard(60, "oversized lengths", move || {
            let mut ring = common::ring(b, 64);
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            // Zeroed by the allocator without being touched: 2 GiB of address space only.
            let big = vec![0u8; i32::MAX as usize + 1];
            let (e, op) = refused(&mut ring, Op::read(f.as_raw_fd(), big));
            assert!(matches!(e, Error::TooLong { .. }), "{b:?}: {e:?}");
            assert_eq!(op.into_buf().unwrap().len(), i32::MAX as usize + 1);
            let p = temp_path("falloc");
            let w = std::fs::File::create(&p).unwrap();
            for (off, len) in [(0, u64::MAX), (u64::MAX, 10), (i64::MAX as u64, 2)] {
                let a = answer(&mut ring, Op::fallocate(w.as_raw_fd(), 0, off, len));
                assert!(!matches!(a, Ok(Outcome::Done(_))), "{b:?} fallocate({off}, {len}): {a:?}");
            }
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
            std::fs::remove_file(&p).unwrap();
        });
    }

    /// Offsets at or beyond `i64::MAX` never move a byte (refused, failed, or a read of
    /// nothing), also when the ring splits transfers into parts near the end.
    fn offsets_beyond_i64_max_move_no_byte(b: BackendChoice) {
        let _s = serial();
        guard(30, "huge offsets", move || {
            let p = temp_path("off");
            let w = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
            for part in [None, Some(4096)] {
                let mut builder = Ring::builder().backend(b);
                if let Some(n) = part {
                    builder = builder.part_size(n);
                }
                let mut ring = builder.build().unwrap();
                for off in [i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX - 3, i64::MAX as u64 - 5000] {
                    let a = answer(&mut ring, Op::read_at(w.as_raw_fd(), off, vec![0u8; 20000]));
                    assert!(!matches!(a, Ok(Outcome::Done(n)) if n > 0), "{b:?} read_at {off}: {a:?}");
                    let a = answer(&mut ring, Op::write_at(w.as_raw_fd(), off, vec![1u8; 20000]));
                    assert!(!matches!(a, Ok(Outcome::Done(_))), "{b:?} write_at {off}: {a:?}");
                    let a = answer(&mut ring, Op::readv_at(w.as_raw_fd(), off, vec![vec![0; 4]]));
                    assert!(!matches!(a, Ok(Outcome::Done(n)) if n > 0), "{b:?} readv_at {off}: {a:?}");
                }
                assert!(ring.is_empty());
            }
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
            std::fs::remove_file(&p).unwrap();
        });
    }

    /// Paths with a NUL byte are refused with `InvalidArgument` by open, unlink and
    /// rename; a path too long, an empty one, a bad directory descriptor get their errno
    /// (or a typed refusal); `statx` of `AT_FDCWD` with `AT_EMPTY_PATH` works.
    fn bad_paths_get_typed_answers(b: BackendChoice) {
        let _s = serial();
        guard(30, "bad paths", move || {
            use std::os::unix::ffi::OsStrExt;
            let mut ring = common::ring(b, 64);
            let nul = std::ffi::OsStr::from_bytes(b"/tmp/a\0b");
            for op in [
                Op::openat(libc::AT_FDCWD, nul, libc::O_RDONLY, 0),
                Op::unlinkat(libc::AT_FDCWD, nul, 0),
                Op::renameat(libc::AT_FDCWD, "/tmp/x", libc::AT_FDCWD, nul, 0),
            ] {
                let kind = op.kind();
                let (e, _) = refused(&mut ring, op);
                assert!(matches!(e, Error::InvalidArgument(_)), "{b:?} {kind:?}: {e:?}");
            }
            let long = "/tmp/".to_string() + &"a".repeat(70_000);
            let a = answer(&mut ring, Op::openat(libc::AT_FDCWD, &long, libc::O_RDONLY, 0));
            assert!(failed_with(&a, Errno::NAMETOOLONG) || matches!(a, Err(Error::InvalidArgument(_))), "{b:?} long path: {a:?}");
            let a = answer(&mut ring, Op::openat(libc::AT_FDCWD, "", libc::O_RDONLY, 0));
            assert!(failed_with(&a, Errno::NOENT) || matches!(a, Err(Error::InvalidArgument(_))), "{b:?} empty path: {a:?}");
            for dfd in [-1, 1 << 30] {
                let a = answer(&mut ring, Op::openat(dfd, "relative", libc::O_RDONLY, 0));
                assert!(failed_with(&a, Errno::BADF) || matches!(a, Err(Error::InvalidFd { .. })), "{b:?} openat dirfd {dfd}: {a:?}");
                let a = answer(&mut ring, Op::statx(dfd, "", libc::AT_EMPTY_PATH, libc::STATX_SIZE));
                assert!(failed_with(&a, Errno::BADF) || matches!(a, Err(Error::InvalidFd { .. })), "{b:?} statx dirfd {dfd}: {a:?}");
            }
            let a = answer(&mut ring, Op::statx(libc::AT_FDCWD, "", libc::AT_EMPTY_PATH, libc::STATX_SIZE));
            assert!(matches!(a, Ok(Outcome::Done(_))), "{b:?} statx of the working directory: {a:?}");
            assert!(ring.is_empty());
        });
    }

    /// No buffers, more than IOV_MAX buffers: refused (the buffers back) or failed; empty
    /// buffers among others are fine.
    fn vectored_edge_cases(b: BackendChoice) {
        let _s = serial();
        guard(30, "vectored", move || {
            let mut ring = common::ring(b, 64);
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let (e, op) = refused(&mut ring, Op::readv_at(f.as_raw_fd(), 0, vec![]));
            assert!(matches!(e, Error::InvalidArgument(_)), "{b:?}: {e:?}");
            assert!(op.into_bufs().unwrap().is_empty());
            let many: Vec<Vec<u8>> = (0..2000).map(|_| vec![0u8; 1]).collect();
            let a = answer(&mut ring, Op::readv_at(f.as_raw_fd(), 0, many));
            assert!(!matches!(a, Ok(Outcome::Done(_))), "{b:?} 2000 buffers: {a:?}");
            let id = ring.submit(Op::readv_at(f.as_raw_fd(), 0, vec![vec![], vec![0u8; 4], vec![]])).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Done(4), "{b:?}");
            assert_eq!(c.bufs().unwrap()[1], b"\x7fELF");
        });
    }

    /// Zero-length transfers answer (done or refused), they never hang.
    fn zero_length_transfers_answer(b: BackendChoice) {
        let _s = serial();
        guard(30, "zero-length transfers", move || {
            let mut ring = common::ring(b, 64);
            let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
            let fd = x.as_raw_fd();
            for op in [Op::read(fd, vec![]), Op::read(fd, vec![]).exact(), Op::write(fd, vec![]).exact(), Op::splice(fd, None, fd, None, 0)] {
                let kind = op.kind();
                let a = answer(&mut ring, op);
                assert!(!matches!(a, Ok(Outcome::Done(n)) if n > 0), "{b:?} {kind:?}: {a:?}");
            }
            assert!(ring.is_empty());
        });
    }

    /// A builder setting out of range is refused with an error, or the ring built works
    /// (a nop completes; `max_in_flight(0)` and a tiny `part_size` do not hang).
    fn builder_settings_are_refused_or_work(b: BackendChoice) {
        let _s = serial();
        let settings: Vec<(&str, Setting)> = vec![
            ("capacity 0", |x| x.capacity(0)),
            ("capacity 65537", |x| x.capacity(65537)),
            ("capacity usize::MAX", |x| x.capacity(usize::MAX)),
            ("max_in_flight 0", |x| x.max_in_flight(0)),
            ("sq_entries 0", |x| x.sq_entries(0)),
            ("sq_entries u32::MAX", |x| x.sq_entries(u32::MAX)),
            ("pool_threads 0", |x| x.pool_threads(0)),
            ("part_size 0", |x| x.part_size(0)),
            ("part_size 100", |x| x.part_size(100)),
            ("direct_descriptors u32::MAX", |x| x.direct_descriptors(u32::MAX)),
            ("teardown 0", |x| x.teardown_timeout(Duration::ZERO)),
        ];
        for (name, set) in settings {
            let Ok(mut ring) = set(Ring::builder().backend(b)).build() else { continue };
            guard(30, name, move || {
                let id = ring.submit(Op::nop()).unwrap();
                assert!(ring.wait_for(id).unwrap().outcome.is_done(), "{b:?} {name}");
                let f = std::fs::File::open("/proc/self/exe").unwrap();
                let id = ring.submit(Op::read_at(f.as_raw_fd(), 0, vec![0u8; 10000])).unwrap();
                let c = ring.wait_for(id).unwrap();
                assert_eq!(c.outcome, Outcome::Done(10000), "{b:?} {name}");
                assert_eq!(&c.data()[..4], b"\x7fELF");
            });
        }
    }

    /// A full op table refuses with `TableFull` (the buffer back, a chain back whole); a
    /// shut-down ring refuses with `Closed` (the buffer back); shutting down twice is fine.
    fn a_full_table_and_a_closed_ring_hand_the_buffer_back(b: BackendChoice) {
        let _s = serial();
        guard(30, "full and closed", move || {
            let mut ring = Ring::builder().backend(b).capacity(3).build().unwrap();
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            for _ in 0..3 {
                ring.submit(Op::read(r.as_raw_fd(), vec![0; 4])).unwrap();
            }
            let (e, op) = refused(&mut ring, Op::read(r.as_raw_fd(), vec![9; 4]));
            assert!(matches!(e, Error::TableFull { capacity: 3 }), "{b:?}: {e:?}");
            assert_eq!(op.into_buf().unwrap(), vec![9; 4]);
            let err = ring.submit_chain(Chain::new().then(Op::read(r.as_raw_fd(), vec![1; 5])).then(Op::nop())).unwrap_err();
            assert_eq!(err.into_chain().into_ops().len(), 2, "{b:?}: the chain back whole");
            let left = ring.shutdown();
            assert_eq!(left.len(), 3);
            assert!(left.iter().all(|c| c.outcome.is_canceled()), "{b:?}");
            let (e, op) = refused(&mut ring, Op::read(r.as_raw_fd(), vec![9; 4]));
            assert!(matches!(e, Error::Closed), "{b:?}: {e:?}");
            assert_eq!(op.into_buf().unwrap(), vec![9; 4]);
            assert!(ring.shutdown().is_empty());
            assert!(ring.handle().is_closed());
        });
    }

    /// An id from another ring is `ForeignId` everywhere; a finished op's id, its slot
    /// reused, is unknown and touches the new op; a group of another ring is refused.
    fn ids_of_another_ring_or_a_finished_op_touch_nothing(b: BackendChoice) {
        let _s = serial();
        guard(30, "foreign and stale ids", move || {
            let mut r1 = common::ring(b, 64);
            let mut r2 = common::ring(b, 64);
            let id = r1.submit(Op::timeout(Duration::from_secs(60))).unwrap();
            assert!(matches!(r2.cancel(id), Err(Error::ForeignId)), "{b:?}");
            assert!(matches!(r2.wait_for(id), Err(Error::ForeignId)), "{b:?}");
            assert!(matches!(r2.handle().cancel(id), Err(Error::ForeignId)), "{b:?}");
            r1.cancel(id).unwrap();
            r1.wait_for(id).unwrap();
            let id2 = r1.submit(Op::timeout(Duration::from_secs(60))).unwrap();
            assert_eq!(r1.cancel(id).unwrap(), quell::CancelStatus::NotFound, "{b:?}");
            assert!(matches!(r1.wait_for(id), Err(Error::UnknownOp)), "{b:?}");
            assert_eq!(r1.ops().len(), 1);
            assert_eq!(r1.ops()[0].state, quell::OpState::InFlight, "{b:?}: the stale cancel reached the new op");
            r1.cancel(id2).unwrap();
            assert!(r1.wait_for(id2).unwrap().outcome.is_canceled());
            let g = r1.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let e = r2.submit(Op::nop().group(g)).map(|id| r2.wait_for(id).unwrap().outcome);
            assert!(matches!(&e, Err(s) if matches!(s.error(), Error::NoSuchGroup | Error::ForeignId)), "{b:?}: {e:?}");
            assert!(r2.cancel_group(g).is_err(), "{b:?}");
        });
    }

    /// A removed group stays dead for every call, its slot reused or not; the root cannot
    /// be removed; a shielded group needs a deadline; odd group names survive a checkpoint
    /// through JSON and resubmit.
    fn removed_groups_stay_dead_and_odd_names_survive_a_checkpoint(b: BackendChoice) {
        let _s = serial();
        guard(30, "groups", move || {
            let mut ring = common::ring(b, 64);
            assert!(ring.remove_group(GroupId::ROOT).is_err(), "{b:?}");
            assert!(ring.group(GroupId::ROOT, GroupOptions::default().shielded(true)).is_err(), "{b:?}");
            let p = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let c = ring.group(p, GroupOptions::default()).unwrap();
            assert!(ring.remove_group(p).is_err(), "{b:?}: a parent with a child removed");
            ring.remove_group(c).unwrap();
            ring.remove_group(p).unwrap();
            assert!(matches!(ring.remove_group(p), Err(Error::NoSuchGroup)), "{b:?}");
            for _ in 0..100 {
                let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
                assert_ne!(g, p);
                ring.remove_group(g).unwrap();
            }
            assert!(ring.cancel_group(p).is_err());
            assert!(ring.drain(p).is_err());
            assert!(ring.set_group_deadline(p, Instant::now()).is_err());
            assert!(ring.group_stats(p).is_err());
            assert!(ring.group(p, GroupOptions::default()).is_err());
            let _ = ring.handle().cancel_group(p);
            let _ = ring.handle().drain(p);
            ring.poll().unwrap();
            let odd = ring.group(GroupId::ROOT, GroupOptions::default().name("a/b\0c\n\"}")).unwrap();
            ring.submit(Op::timeout(Duration::from_secs(30)).group(odd).user_data(5)).unwrap();
            let ck = ring.quiesce(QuiescePolicy::default()).unwrap();
            let back = Checkpoint::from_json(&ck.to_json().unwrap()).unwrap();
            assert_eq!(back, ck);
            let r = ring.resubmit(&back, Buffers::new());
            assert_eq!(r.len(), 1);
            let id = *r[0].as_ref().expect("an odd group name resubmitted");
            ring.resume();
            ring.cancel_all();
            let c = ring.wait_for(id).unwrap();
            assert_eq!((c.user_data, c.outcome.is_canceled()), (5, true), "{b:?}");
        });
    }

    /// A deadline already past times the op out; a far one and a `Duration::MAX` timeout
    /// stay cancelable; a zero timeout is done; a wait of `Duration::MAX` returns when an
    /// op is done; a group whose deadline passed cancels what enters it.
    fn extreme_deadlines_and_timeouts(b: BackendChoice) {
        let _s = serial();
        guard(30, "deadlines", move || {
            let mut ring = common::ring(b, 64);
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let past = Instant::now() - Duration::from_secs(1);
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).deadline(past)).unwrap();
            assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::TimedOut { transferred: 0 }, "{b:?}");
            let far = Instant::now() + Duration::from_secs(100 * 365 * 86400);
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).deadline(far)).unwrap();
            ring.poll().unwrap();
            ring.cancel(id).unwrap();
            assert!(ring.wait_for(id).unwrap().outcome.is_canceled(), "{b:?}");
            if let Ok(id) = ring.submit(Op::timeout(Duration::MAX)) {
                ring.poll().unwrap();
                ring.cancel(id).unwrap();
                assert!(ring.wait_for(id).unwrap().outcome.is_canceled(), "{b:?}");
            }
            let id = ring.submit(Op::timeout(Duration::ZERO)).unwrap();
            assert!(ring.wait_for(id).unwrap().outcome.is_done(), "{b:?}");
            let id = ring.submit(Op::nop()).unwrap();
            ring.wait(1, Some(Duration::MAX)).unwrap();
            assert!(ring.wait_for(id).unwrap().outcome.is_done());
            let g = ring.group(GroupId::ROOT, GroupOptions::default().deadline(past)).unwrap();
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g)).unwrap();
            assert!(ring.wait_for(id).unwrap().outcome.is_canceled(), "{b:?}");
        });
    }

    /// A chain whose first step is refused comes back whole; a later step that fails ends
    /// the chain `Failed` and the descriptor it opened is closed; `OPENED` before any open
    /// is never `Done`; 5000 steps complete.
    fn bad_chain_steps_leak_nothing(b: BackendChoice) {
        let _s = serial();
        guard(60, "bad chains", move || {
            let mut ring = common::ring(b, 64);
            match ring.submit_chain(Chain::new().then(Op::read_at(Chain::OPENED, 0, vec![0; 4]))) {
                Ok(id) => assert!(!ring.wait_for(id).unwrap().outcome.is_done(), "{b:?}"),
                Err(e) => assert_eq!(e.into_chain().into_ops().len(), 1),
            }
            let err = ring.submit_chain(Chain::new().then(Op::read(-1, vec![0; 4])).then(Op::write(-1, vec![1; 3]))).unwrap_err();
            assert_eq!(err.into_chain().into_ops().len(), 2, "{b:?}");
            let p = temp_path("chainbad");
            std::fs::write(&p, b"hello").unwrap();
            let before = open_fds();
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &p, libc::O_RDONLY, 0))
                        .then(Op::read_at(Chain::OPENED, 0, vec![0u8; 5]))
                        .then(Op::write(1 << 30, vec![1; 3]))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert!(matches!(c.outcome, Outcome::Failed(_)), "{b:?} {:?}", c.outcome);
            assert!(open_fds() <= before, "{b:?}: the chain leaked the descriptor it opened");
            std::fs::remove_file(&p).unwrap();
            let mut ch = Chain::new();
            for _ in 0..5000 {
                ch = ch.then(Op::nop());
            }
            let id = ring.submit_chain(ch).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert!(c.outcome.is_done(), "{b:?}");
            assert_eq!(c.steps().unwrap().len(), 5000);
        });
    }

    /// A blocking closure that panics fails its op (not `Done`) and the pool keeps its
    /// workers.
    fn a_panicking_closure_fails_its_op_and_keeps_the_pool(b: BackendChoice) {
        let _s = serial();
        guard(30, "panicking closure", move || {
            let mut ring = Ring::builder().backend(b).pool_threads(2).build().unwrap();
            let id = ring.submit(Op::blocking(|| panic!("user closure panics"))).unwrap();
            assert!(!ring.wait_for(id).unwrap().outcome.is_done(), "{b:?}");
            for i in 0..4usize {
                ring.submit(Op::blocking(move || Ok(i)).user_data(i as u64)).unwrap();
            }
            let got = collect(&mut ring, 4, 20);
            assert!(got.iter().all(|c| c.outcome == Outcome::Done(c.user_data as usize)), "{b:?}: {got:?}");
        });
    }

    /// Syscalls the kernel refuses end `Failed` with its errno, never `Done` (a read on a
    /// write end, `recv` or `connect` on a pipe, a read of a directory, a splice between two
    /// non-pipes).
    fn refused_syscalls_fail_with_their_errno(b: BackendChoice) {
        let _s = serial();
        guard(30, "errno", move || {
            let mut ring = common::ring(b, 64);
            let (rx, tx) = pipe();
            let a = answer(&mut ring, Op::read(tx.as_raw_fd(), vec![0; 4]));
            assert!(failed_with(&a, Errno::BADF) || matches!(a, Err(Error::InvalidFd { .. })), "{b:?} read on a write end: {a:?}");
            let a = answer(&mut ring, Op::recv(rx.as_raw_fd(), vec![0; 4], 0));
            assert!(failed_with(&a, Errno::NOTSOCK) || a.is_err(), "{b:?} recv on a pipe: {a:?}");
            let a = answer(&mut ring, Op::connect(rx.as_raw_fd(), "127.0.0.1:1".parse().unwrap()));
            assert!(failed_with(&a, Errno::NOTSOCK) || a.is_err(), "{b:?} connect on a pipe: {a:?}");
            let d = std::fs::File::open(std::env::temp_dir()).unwrap();
            let a = answer(&mut ring, Op::read_at(d.as_raw_fd(), 0, vec![0; 4]));
            assert!(failed_with(&a, Errno::ISDIR) || a.is_err(), "{b:?} read of a directory: {a:?}");
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let a = answer(&mut ring, Op::splice(f.as_raw_fd(), Some(0), d.as_raw_fd(), None, 4));
            assert!(!matches!(a, Ok(Outcome::Done(_))), "{b:?} splice without a pipe: {a:?}");
            assert!(ring.is_empty());
        });
    }

    /// I9 across backends: an exact write of 4 MiB to a socket whose reader has not started,
    /// quiesced once the socket buffer is full, resumed on a fresh ring of either backend:
    /// the reader gets exactly the 4 MiB, each byte once, in order.
    fn an_exact_write_continues_across_a_checkpoint_onto_either_backend(b: BackendChoice) {
        let _s = serial();
        for to in [BackendChoice::Uring, BackendChoice::Portable] {
            guard(60, "exact write across a checkpoint", move || {
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let data = pattern(4 << 20);
                let (go, started) = std::sync::mpsc::channel::<()>();
                let probe = peer.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    started.recv().unwrap();
                    let mut all = Vec::new();
                    std::io::Read::read_to_end(&mut &peer, &mut all).unwrap();
                    all
                });
                let mut r1 = common::ring(b, 64);
                let id = r1.submit(Op::write(a.as_raw_fd(), data.clone()).exact().user_data(9)).unwrap();
                // Until the write has moved bytes into the socket (the reader waits).
                while rustix::io::ioctl_fionread(&probe).unwrap() == 0 {
                    r1.wait(1, Some(Duration::from_millis(10))).unwrap();
                }
                let ck = r1.quiesce(QuiescePolicy::default()).unwrap();
                assert_eq!(ck.ops.len(), 1, "{b:?}: {:?}", ck.unfinished);
                let moved = match r1.wait_for(id).unwrap().outcome {
                    Outcome::Canceled { transferred } => transferred,
                    o => panic!("{b:?}: {o:?}"),
                };
                assert_eq!(ck.ops[0].transferred as usize, moved);
                assert!(moved > 0 && moved < data.len(), "{b:?}: moved {moved}");
                let bytes = ck.to_bytes().unwrap();
                drop(r1);
                let ck = Checkpoint::from_bytes(&bytes).unwrap();
                let mut r2 = common::ring(to, 64);
                let nid = r2.resubmit(&ck, Buffers::new()).remove(0).unwrap();
                go.send(()).unwrap();
                let c = r2.wait_for(nid).unwrap();
                assert_eq!((c.user_data, c.outcome), (9, Outcome::Done(4 << 20)), "{b:?} -> {to:?}");
                drop(a);
                let wire = reader.join().unwrap();
                assert_eq!(wire.len(), data.len(), "{b:?} -> {to:?}: bytes on the wire");
                assert!(wire == data, "{b:?} -> {to:?}: the wire differs");
            });
        }
    }

    /// I9, I11 across backends: an exact read that received part of its bytes, checkpointed
    /// through JSON, resumed on either backend: the completion holds every byte once.
    fn an_exact_read_continues_across_a_checkpoint_onto_either_backend(b: BackendChoice) {
        let _s = serial();
        for to in [BackendChoice::Uring, BackendChoice::Portable] {
            guard(30, "exact read across a checkpoint", move || {
                let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
                let mut r1 = common::ring(b, 64);
                r1.submit(Op::read(r.as_raw_fd(), vec![0u8; 10]).exact()).unwrap();
                write_all(w.as_raw_fd(), b"0123");
                for _ in 0..5 {
                    r1.wait(1, Some(Duration::from_millis(10))).unwrap();
                }
                let json = r1.quiesce(QuiescePolicy::default()).unwrap().to_json().unwrap();
                drop(r1);
                let ck = Checkpoint::from_json(&json).unwrap();
                let mut r2 = common::ring(to, 64);
                let id = r2.resubmit(&ck, Buffers::new()).remove(0).unwrap();
                write_all(w.as_raw_fd(), b"456789extra");
                let c = r2.wait_for(id).unwrap();
                assert_eq!(c.data(), b"0123456789", "{b:?} -> {to:?}");
                assert_eq!(drain_nonblocking(r.as_raw_fd()), b"extra");
            });
        }
    }

    /// Ops resubmitted into a quiesced ring wait there; shutting the ring down without
    /// resuming cancels each of them, once.
    fn resubmitted_ops_in_a_quiesced_ring_end_with_it(b: BackendChoice) {
        let _s = serial();
        guard(30, "resubmit into a quiesced ring", move || {
            let (ck, keep) = base_checkpoint(b);
            let mut ring = common::ring(b, 64);
            ring.quiesce(QuiescePolicy::default()).unwrap();
            let res = ring.resubmit(&ck, Buffers::new());
            let accepted = res.iter().filter(|r| r.is_ok()).count();
            assert!(accepted >= 2, "{b:?}: {res:?}");
            let left = ring.shutdown();
            assert_eq!(left.len(), accepted, "{b:?}");
            assert!(left.iter().all(|c| c.outcome.is_canceled()), "{b:?}");
            drop(keep);
        });
    }

    /// Corrupt checkpoint encodings (postcard and JSON): errors, or per-op answers with
    /// one completion per op accepted; never an abort (a child process sees one).
    fn corrupt_checkpoint_encodings_get_errors_not_aborts(b: BackendChoice) {
        let _s = serial();
        let which = match b {
            BackendChoice::Portable => "fuzz:portable",
            _ => "fuzz:uring",
        };
        let (code, out) = run_child(which);
        assert_eq!(code, Some(0), "{b:?}: {}", out.lines().filter(|l| l.contains("panicked") || l.contains("memory") || l.contains("RESULT")).take(5).collect::<Vec<_>>().join(" | "));
        assert!(out.contains("RESULT fuzz ok"), "{out}");
    }
}
