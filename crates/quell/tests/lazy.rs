//! LazyRead: page-level blocking reads, on both backends.
//!
//! Hung, failing and canceled chunks come from quell-faultfs files read with direct I/O.
//! SIGBUS on a poisoned page is observed in a child process (this test binary re-executed
//! with `QUELL_LAZY_CHILD` set).

mod common;

use common::fault::{mount, Watchdog};
use common::ring;
use quell::lazy::{LazyError, LazyMode, LazyOptions};
use quell::{BackendChoice, Errno, GroupId, GroupOptions, Ring};
use quell_faultfs::{fill_pattern, Behavior, FileSpec, Rule, Spec};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- bytes allocated by one thread (LazyRead's bookkeeping must stay small) ----

struct Tally;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn tally(size: usize) {
    // `try_with`: the allocator may run while this thread's locals are torn down.
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(size)));
}

// SAFETY: forwards to the system allocator; only adds sizes to a const-initialized
// thread-local that never allocates.
unsafe impl GlobalAlloc for Tally {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        tally(l.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        tally(l.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        tally(new);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static TALLY: Tally = Tally;

/// Runs `f` and returns its result and the bytes it allocated on this thread.
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATED.with(|a| a.set(0));
    let r = f();
    (r, ALLOCATED.with(|a| a.get()))
}

/// Runs `f` on a thread of its own; panics if it has not finished after `secs` seconds
/// (a hang guard, not a timing assertion).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
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

const MB2: usize = 2 << 20;
const CHILD_ENV: &str = "QUELL_LAZY_CHILD";

fn uffd() -> bool {
    let a = quell::lazy::availability();
    if a.mode != LazyMode::Uffd {
        eprintln!(
            "SKIP raw-view checks: userfaultfd unavailable ({:?})",
            a.reason
        );
    }
    a.mode == LazyMode::Uffd
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(offset, &mut v);
    v
}

fn thread_state(tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

fn touch(s: &[u8], at: usize) -> u8 {
    assert!(at < s.len());
    // SAFETY: in bounds of a live slice; volatile so the load really happens.
    unsafe { std::ptr::read_volatile(s.as_ptr().add(at)) }
}

fn map_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// A regular file filled with the faultfs pattern (so expectations use `pattern`).
fn temp_file(name: &str, len: usize) -> (std::fs::File, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("quell-lazy-{}-{name}", std::process::id()));
    std::fs::write(&path, pattern(0, len)).unwrap();
    (std::fs::File::open(&path).unwrap(), path)
}

/// Runs the child half of a test in a subprocess; returns its exit status and output.
fn run_child(
    which: &str,
    backend: BackendChoice,
    path: &std::path::Path,
) -> (std::process::ExitStatus, String) {
    let b = match backend {
        BackendChoice::Portable => "portable",
        _ => "uring",
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lazy_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{which}:{b}:{}", path.display()))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "child {which} ({b}): {:?} (signal {:?})\n{text}",
        out.status,
        out.status.signal()
    );
    (out.status, text)
}

/// The child half: only does something when re-executed by a test.
#[test]
fn lazy_child() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = arg.splitn(3, ':');
    let (which, b, path) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let backend = if b == "portable" {
        BackendChoice::Portable
    } else {
        BackendChoice::Uring
    };
    let file = std::fs::File::open(path).unwrap();
    let mut ring = ring(backend, 64);
    match which {
        "eio" => {
            // 3 chunks, the middle one fails with EIO.
            let lazy = ring
                .read_lazy(file.as_raw_fd(), 0, 3 * MB2, LazyOptions::default())
                .unwrap();
            let e = lazy.finish(&mut ring).unwrap_err();
            assert_eq!(e.errno(), Some(Errno::IO), "{e}");
            assert_eq!(
                lazy.wait_range(&mut ring, 0..MB2).unwrap(),
                &pattern(0, MB2)[..]
            );
            let raw = lazy.raw().unwrap();
            assert_eq!(touch(raw, 2 * MB2 + 5), pattern(2 * MB2 as u64 + 5, 1)[0]);
            println!("child: checked API ok, touching the poisoned page");
            touch(raw, MB2 + 4096);
            println!("child: survived the touch");
            std::process::exit(3);
        }
        "env-checked" => {
            // QUELL_LAZY=checked forces the fallback.
            assert_eq!(quell::lazy::availability().mode, LazyMode::Checked);
            let lazy = ring
                .read_lazy(file.as_raw_fd(), 0, 4096, LazyOptions::default())
                .unwrap();
            assert_eq!(lazy.mode(), LazyMode::Checked);
            assert!(matches!(lazy.raw(), Err(LazyError::RawViewUnavailable)));
            assert_eq!(lazy.finish(&mut ring).unwrap(), &pattern(0, 4096)[..]);
            println!("child: checked mode ok");
            std::process::exit(0);
        }
        other => panic!("unknown child {other}"),
    }
}

both_backends! {
    fn reader_blocks_on_a_delayed_chunk_then_sees_its_bytes(b: BackendChoice) {
        if !uffd() {
            return;
        }
        let len = 3 * MB2 + 5000;
        let last = 3 * MB2;
        let Some(fs) = mount(Spec::new().file(
            FileSpec::pattern("f", len as u64).rule(Rule::read(last as u64..len as u64, Behavior::Hang)),
        )) else {
            return;
        };
        let _dog = Watchdog::new(&fs, 60);
        let file = std::fs::File::open(fs.path("f")).unwrap();
        let mut ring = ring(b, 64);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, LazyOptions::default()).unwrap();
        let view = lazy.view();
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let d2 = done.clone();
        let reader = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let v = touch(view.raw().unwrap(), len - 1);
            d2.store(true, Ordering::SeqCst);
            v
        });
        let tid = rx.recv().unwrap();
        // The chunks before the hung one land and are readable while the reader sleeps.
        let head = lazy.wait_range(&mut ring, 0..last).unwrap();
        assert!(head == &pattern(0, last)[..]);
        assert!(fs.wait_parked(1, Duration::from_secs(10)), "the last chunk's read never hung");
        std::thread::sleep(Duration::from_millis(150));
        assert!(!done.load(Ordering::SeqCst), "reader got past an unpublished page");
        assert_eq!(thread_state(tid), 'S', "reader should sleep in the page fault");
        assert_eq!(touch(lazy.raw().unwrap(), last - 1), pattern(last as u64 - 1, 1)[0]);
        assert!(lazy.try_range(len - 1..len).is_none());
        assert_eq!(lazy.progress().published, 3);
        fs.set_rules("f", vec![]).unwrap();
        fs.release_all();
        let all = lazy.finish(&mut ring).unwrap();
        assert!(all == &pattern(0, len)[..]);
        assert_eq!(reader.join().unwrap(), pattern(len as u64 - 1, 1)[0]);
        assert!(lazy.progress().is_complete());
        assert!(ring.ops().is_empty(), "chunk reads left behind: {:?}", ring.ops());
        assert_eq!(ring.completions().count(), 0, "chunk reads must not surface as user completions");
    }

    fn eio_chunk_poisons_its_pages_and_spares_the_others(b: BackendChoice) {
        let Some(fs) = mount(Spec::new().file(
            FileSpec::pattern("f", 3 * MB2 as u64)
                .rule(Rule::read(MB2 as u64 + 8192..MB2 as u64 + 8193, Behavior::Eio)),
        )) else {
            return;
        };
        let _dog = Watchdog::new(&fs, 60);
        let path = fs.path("f");
        let file = std::fs::File::open(&path).unwrap();
        let mut ring = ring(b, 64);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, 3 * MB2, LazyOptions::default()).unwrap();
        let e = lazy.wait_range(&mut ring, 0..3 * MB2).unwrap_err();
        match e {
            LazyError::Chunk { chunk, offset, errno } => {
                assert_eq!((chunk, offset, errno), (1, MB2 as u64, Errno::IO));
            }
            other => panic!("expected a chunk error, got {other}"),
        }
        assert_eq!(lazy.finish(&mut ring).unwrap_err().errno(), Some(Errno::IO));
        assert!(lazy.wait_range(&mut ring, 0..MB2).unwrap() == &pattern(0, MB2)[..]);
        assert!(lazy.wait_range(&mut ring, 2 * MB2..3 * MB2).unwrap() == &pattern(2 * MB2 as u64, MB2)[..]);
        assert_eq!(lazy.progress().failed, 1);
        if uffd() {
            let (status, out) = run_child("eio", b, &path);
            assert!(out.contains("child: checked API ok"), "child did not reach the touch");
            assert_eq!(status.signal(), Some(libc::SIGBUS), "touching a failed chunk must raise SIGBUS");
        }
    }

    fn cancel_midway_poisons_the_rest_and_keeps_published_pages(b: BackendChoice) {
        let chunk = 256 << 10;
        let len = 8 * chunk;
        let hung = 3 * chunk;
        let Some(fs) = mount(Spec::new().file(
            FileSpec::pattern("f", len as u64)
                .rule(Rule::read(hung as u64..hung as u64 + 1, Behavior::Hang)),
        )) else {
            return;
        };
        let _dog = Watchdog::new(&fs, 60);
        let file = std::fs::File::open(fs.path("f")).unwrap();
        let mut ring = ring(b, 64);
        let opts = LazyOptions::default().chunk_size(chunk).window(4);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, opts).unwrap();
        assert!(lazy.wait_range(&mut ring, 0..hung).unwrap() == &pattern(0, hung)[..]);
        assert!(fs.wait_parked(1, Duration::from_secs(10)));
        assert!(!ring.ops().is_empty(), "the hung chunk read is an op of the ring");
        assert!(lazy.cancel() >= 1);
        let start = Instant::now();
        let e = lazy.finish(&mut ring).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(20), "cancel did not stop the hung read");
        assert_eq!(e.errno(), Some(Errno::CANCELED), "{e}");
        let p = lazy.progress();
        assert!(p.is_complete());
        assert!(p.published >= 3 && p.failed >= 1, "{p:?}");
        assert!(lazy.try_range(0..hung).unwrap().unwrap() == &pattern(0, hung)[..]);
        for c in 3..8 {
            let r = lazy.try_range(c * chunk..c * chunk + 1).unwrap();
            if let Err(e) = r {
                assert_eq!(e.errno(), Some(Errno::CANCELED));
            }
        }
        assert!(lazy.try_range(hung..hung + 1).unwrap().is_err());
        assert!(ring.ops().is_empty(), "ops left: {:?}", ring.ops());
        assert_eq!(ring.completions().count(), 0);
        drop(lazy);
        fs.release_all();
    }

    fn group_cancel_reaches_the_chunk_reads(b: BackendChoice) {
        let chunk = 128 << 10;
        let len = 6 * chunk;
        let Some(fs) = mount(Spec::new().file(
            FileSpec::pattern("f", len as u64).rule(Rule::read(chunk as u64..chunk as u64 + 1, Behavior::Hang)),
        )) else {
            return;
        };
        let _dog = Watchdog::new(&fs, 60);
        let file = std::fs::File::open(fs.path("f")).unwrap();
        let mut ring = ring(b, 64);
        let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
        let opts = LazyOptions::default().chunk_size(chunk).group(g);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, opts).unwrap();
        assert!(lazy.wait_range(&mut ring, 0..chunk).unwrap() == &pattern(0, chunk)[..]);
        assert!(fs.wait_parked(1, Duration::from_secs(10)));
        assert!(ring.cancel_group(g).unwrap() >= 1);
        assert_eq!(lazy.finish(&mut ring).unwrap_err().errno(), Some(Errno::CANCELED));
        assert!(lazy.progress().published >= 1);
        let e = lazy.try_range(chunk..chunk + 1).unwrap().unwrap_err();
        assert_eq!(e.errno(), Some(Errno::CANCELED));
        assert!(ring.is_drained(g).unwrap());
    }

    fn content_matches_a_plain_read_for_odd_sizes(b: BackendChoice) {
        let file_len = 5 * MB2 + 123;
        let (file, path) = temp_file(&format!("odd-{b:?}"), file_len);
        let mut ring = ring(b, 64);
        // (offset, len, chunk size): unaligned offsets and lengths, small chunks, a request
        // past end of file, one starting beyond it.
        let cases = [
            (0u64, file_len, MB2),
            (4097, 2 * MB2 + 5, 64 << 10),
            (100, 3 * MB2 + 1, MB2),
            (3 * MB2 as u64 + 1, 4 * MB2, MB2),
            (file_len as u64 + 4096, 10_000, 4096),
            (12_345, 3 * 4096 + 1, 4096),
        ];
        let modes: &[LazyMode] = if uffd() { &[LazyMode::Uffd, LazyMode::Checked] } else { &[LazyMode::Checked] };
        for &mode in modes {
            for &(off, len, chunk) in &cases {
                let opts = LazyOptions::default().chunk_size(chunk).mode(mode).window(3);
                let lazy = ring.read_lazy(file.as_raw_fd(), off, len, opts).unwrap();
                let avail = file_len.saturating_sub(off as usize).min(len);
                let mut want = vec![0u8; len];
                if avail > 0 {
                    want[..avail].copy_from_slice(&pattern(off, avail));
                }
                let mid = len / 2;
                let got = lazy.wait_range(&mut ring, mid..len).unwrap();
                assert!(got == &want[mid..], "tail mismatch {mode:?} off={off} len={len} chunk={chunk}");
                let got = lazy.finish(&mut ring).unwrap();
                assert_eq!(lazy.data_len(), avail, "{mode:?} off={off} len={len}");
                assert!(got == &want[..avail], "mismatch {mode:?} off={off} len={len} chunk={chunk}");
                assert!(lazy.wait_range(&mut ring, 0..len).unwrap() == &want[..]);
                assert!(lazy.raw().unwrap() == &want[..], "raw view {mode:?} off={off} len={len}");
                assert_eq!(lazy.mode(), mode);
            }
        }
        std::fs::remove_file(path).unwrap();
    }

    fn forced_fallback_serves_the_checked_api_and_refuses_raw(b: BackendChoice) {
        let len = 3 * MB2 + 17;
        let (file, path) = temp_file(&format!("checked-{b:?}"), len);
        let mut ring = ring(b, 64);
        let opts = LazyOptions::default().mode(LazyMode::Checked);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, opts).unwrap();
        assert_eq!(lazy.mode(), LazyMode::Checked);
        assert!(matches!(lazy.raw(), Err(LazyError::RawViewUnavailable)));
        assert!(lazy.wait_range(&mut ring, 0..10).unwrap() == &pattern(0, 10)[..]);
        assert!(
            matches!(lazy.raw(), Err(LazyError::RawViewUnavailable)),
            "a partly published checked region must not be served raw"
        );
        let view = lazy.view();
        let waiter = std::thread::spawn(move || view.wait_range(len - 7..len).map(|s| s.to_vec()));
        assert!(lazy.finish(&mut ring).unwrap() == &pattern(0, len)[..]);
        assert_eq!(waiter.join().unwrap().unwrap(), pattern(len as u64 - 7, 7));
        assert!(lazy.raw().unwrap() == &pattern(0, len)[..]);
        assert_eq!(lazy.stats().moved, 0);
        // The environment switch, in a child (the variable is process-wide).
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "lazy_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("env-checked:uring:{}", path.display()))
            .env("QUELL_LAZY", "checked")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("child: checked mode ok"), "{out:?}");
        std::fs::remove_file(path).unwrap();
    }

    fn drop_mid_flight_and_dropping_the_ring_are_safe(b: BackendChoice) {
        let chunk = 64 << 10;
        let len = 16 * chunk;
        let Some(fs) = mount(Spec::new().file(
            FileSpec::pattern("f", len as u64).rule(Rule::read(2 * chunk as u64..2 * chunk as u64 + 1, Behavior::Hang)),
        )) else {
            return;
        };
        let _dog = Watchdog::new(&fs, 60);
        let file = std::fs::File::open(fs.path("f")).unwrap();
        // Dropped LazyRead: its reads are canceled, its staging buffers stay with the ring
        // until their completions, the ring ends up empty.
        let mut ring = ring(b, 64);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, LazyOptions::default().chunk_size(chunk)).unwrap();
        assert!(lazy.wait_range(&mut ring, 0..chunk).is_ok());
        assert!(fs.wait_parked(1, Duration::from_secs(10)));
        drop(lazy);
        let start = Instant::now();
        while !ring.ops().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(20), "ops left: {:?}", ring.ops());
            ring.wait(1, Some(Duration::from_millis(50))).unwrap();
        }
        assert_eq!(ring.completions().count(), 0);
        // Dropped ring with a LazyRead alive and a read hung: the ring cancels it, the
        // LazyRead sees the chunk poisoned, nothing waits forever.
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, LazyOptions::default().chunk_size(chunk)).unwrap();
        assert!(lazy.wait_range(&mut ring, 0..chunk).is_ok());
        assert!(fs.wait_parked(1, Duration::from_secs(10)));
        drop(ring);
        assert!(lazy.progress().is_complete(), "{:?}", lazy.progress());
        let e = lazy.view().wait_range(0..len).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::CANCELED));
        assert!(lazy.try_range(0..chunk).unwrap().is_ok());
    }

    fn many_lazy_reads_leak_no_mapping_or_descriptor(b: BackendChoice) {
        let chunk = 64 << 10;
        let len = 8 * chunk + 3;
        let (file, path) = temp_file(&format!("leak-{b:?}"), len);
        let mut ring = ring(b, 64);
        let round = |i: usize, ring: &mut Ring| {
            let lazy = ring
                .read_lazy(file.as_raw_fd(), 0, len, LazyOptions::default().chunk_size(chunk))
                .unwrap();
            match i % 3 {
                0 => assert!(lazy.finish(ring).unwrap() == &pattern(0, len)[..]),
                1 => {
                    lazy.wait_range(ring, 0..1).unwrap();
                    lazy.cancel();
                    let _ = lazy.finish(ring);
                }
                _ => drop(lazy), // mid-flight
            }
            while !ring.ops().is_empty() {
                ring.wait(1, Some(Duration::from_millis(50))).unwrap();
            }
        };
        for i in 0..6 {
            round(i, &mut ring); // warm up pool threads and allocator arenas
        }
        let (maps, fds) = (map_lines(), common::open_fds());
        for i in 0..60 {
            round(i, &mut ring);
        }
        let (dm, df) = (map_lines() as isize - maps as isize, common::open_fds() as isize - fds as isize);
        eprintln!("maps delta {dm}, fds delta {df}");
        // Other tests run in this process meanwhile: allow noise far below one per round.
        assert!(dm < 30, "mappings leaked: {dm} over 60 LazyReads");
        assert!(df < 30, "descriptors leaked: {df} over 60 LazyReads");
        assert_eq!(ring.completions().count(), 0);
        std::fs::remove_file(path).unwrap();
    }

    fn async_wait_range_is_woken_by_the_owner_loop(b: BackendChoice) {
        let len = 4 * MB2;
        let (file, path) = temp_file(&format!("async-{b:?}"), len);
        let mut ring = ring(b, 64);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, LazyOptions::default()).unwrap();
        let view = lazy.view();
        let t = std::thread::spawn(move || block_on(view.wait_range_async(len - 10..len)).map(|s| s.to_vec()));
        lazy.finish(&mut ring).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), pattern(len as u64 - 10, 10));
        std::fs::remove_file(path).unwrap();
    }

    fn bad_input_is_refused_with_typed_errors(b: BackendChoice) {
        let mut ring = ring(b, 64);
        let maps = map_lines();
        assert!(matches!(
            ring.read_lazy(-1, 0, 10, LazyOptions::default()),
            Err(LazyError::Ring(quell::Error::InvalidFd { fd: -1 }))
        ));
        // A descriptor number that is not open: refused by the first submission.
        assert!(matches!(
            ring.read_lazy(9999, 0, 10, LazyOptions::default()),
            Err(LazyError::Ring(quell::Error::InvalidFd { .. }))
        ));
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(matches!(ring.read_lazy(f.as_raw_fd(), 0, 0, LazyOptions::default()), Err(LazyError::InvalidArgument(_))));
        assert!(matches!(
            ring.read_lazy(f.as_raw_fd(), 0, 10, LazyOptions::default().chunk_size(1000)),
            Err(LazyError::InvalidArgument(_))
        ));
        assert!(matches!(ring.read_lazy(f.as_raw_fd(), u64::MAX - 5, 10, LazyOptions::default()), Err(LazyError::InvalidArgument(_))));
        // No offsets on a pipe or a socket: refused alike on both backends (io_uring used
        // to ignore the offset and read the pipe, the portable backend to fail ESPIPE).
        let (rx, tx) = common::pipe();
        common::write_all(tx.as_raw_fd(), b"pipe data");
        let (sa, _sb) = std::os::unix::net::UnixStream::pair().unwrap();
        for fd in [rx.as_raw_fd(), sa.as_raw_fd()] {
            let r = ring.read_lazy(fd, 0, 4096, LazyOptions::default());
            assert!(matches!(r, Err(LazyError::InvalidArgument(_))), "{b:?}: {r:?}");
        }
        assert_eq!(common::drain_nonblocking(rx.as_raw_fd()), b"pipe data", "nothing was read");
        assert!(matches!(
            ring.read_lazy(f.as_raw_fd(), 0, 10, LazyOptions::default().chunk_size(usize::MAX)),
            Err(LazyError::InvalidArgument(_))
        ));
        assert!(map_lines() <= maps + 2, "refused LazyReads leaked mappings");
        // A window of 0 means 1.
        let lazy = ring.read_lazy(f.as_raw_fd(), 0, 10000, LazyOptions::default().window(0)).unwrap();
        assert_eq!(lazy.finish(&mut ring).unwrap(), &std::fs::read("/proc/self/exe").unwrap()[..10000]);
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = lazy.wait_range(&mut ring, 500..100);
        assert!(matches!(reversed, Err(LazyError::OutOfBounds { .. })), "{reversed:?}");
        assert!(matches!(lazy.try_range(usize::MAX - 1..usize::MAX), Some(Err(LazyError::OutOfBounds { .. }))));
        assert!(matches!(lazy.wait_range(&mut ring, 0..20000), Err(LazyError::OutOfBounds { .. })));
        drop(lazy);
        let lazy = ring.read_lazy(f.as_raw_fd(), 0, 10, LazyOptions::default()).unwrap();
        let mut other = Ring::builder().backend(b).build().unwrap();
        assert!(matches!(lazy.wait_range(&mut other, 0..1), Err(LazyError::ForeignRing)));
        assert!(matches!(lazy.finish(&mut ring).map(|s| s.len()), Ok(10)));
        assert!(matches!(lazy.try_range(5..11), Some(Err(LazyError::OutOfBounds { .. }))));
        assert!(ring.is_empty());
    }

    /// A read from an offset that meets end of file part-way (red team): the file's bytes,
    /// `data_len` counted from the offset, zeros after, in both modes.
    fn a_read_from_an_offset_meets_end_of_file_with_zeros(b: BackendChoice) {
        let (file, path) = temp_file(&format!("eof-{b:?}"), 5000);
        let mut ring = ring(b, 64);
        for mode in [LazyMode::Auto, LazyMode::Checked] {
            let opts = LazyOptions::default().chunk_size(1 << 20).mode(mode);
            let lazy = ring.read_lazy(file.as_raw_fd(), 100, 3 << 20, opts).unwrap();
            assert!(lazy.finish(&mut ring).unwrap() == &pattern(100, 4900)[..], "{b:?} {mode:?}");
            assert_eq!(lazy.data_len(), 4900);
            assert!(lazy.try_range(4900..3 << 20).unwrap().unwrap().iter().all(|&x| x == 0));
            assert!(lazy.progress().is_complete());
        }
        std::fs::remove_file(path).unwrap();
    }

    /// The ring is dropped while a LazyRead is being filled (red team): every chunk is
    /// resolved (published or canceled), the checked API answers, and another ring is
    /// refused as foreign.
    fn a_lazy_read_outlives_its_ring(b: BackendChoice) {
        let len = 8 * MB2;
        let (file, path) = temp_file(&format!("outlive-{b:?}"), len);
        let mut ring = ring(b, 64);
        let opts = LazyOptions::default().mode(LazyMode::Checked);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, opts).unwrap();
        assert_eq!(lazy.wait_range(&mut ring, 0..10).unwrap(), &pattern(0, 10)[..]);
        drop(ring);
        assert!(lazy.progress().is_complete(), "{:?}", lazy.progress());
        match lazy.try_range(len - 10..len).unwrap() {
            Ok(bytes) => assert_eq!(bytes, &pattern(len as u64 - 10, 10)[..]),
            Err(e) => assert_eq!(e.errno(), Some(Errno::CANCELED), "{e}"),
        }
        let mut other = Ring::builder().backend(b).build().unwrap();
        assert!(matches!(lazy.finish(&mut other), Err(LazyError::ForeignRing)));
        std::fs::remove_file(path).unwrap();
    }

    fn a_full_op_table_delays_chunk_reads_without_failing_them(b: BackendChoice) {
        let chunk = 4096;
        let len = 16 * chunk + 100;
        let (file, path) = temp_file(&format!("full-{b:?}"), len);
        let mut ring = ring(b, 4);
        let opts = LazyOptions::default().chunk_size(chunk).window(8);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, len, opts).unwrap();
        // Three user ops whose completions are not taken hold three of the four slots.
        let ids: Vec<_> = (0..3)
            .map(|i| ring.submit(quell::Op::nop().user_data(i)).unwrap())
            .collect();
        assert!(lazy.finish(&mut ring).unwrap() == &pattern(0, len)[..]);
        assert!(ring.submit(quell::Op::nop()).is_ok(), "a slot is free again");
        let mut got: Vec<_> = ring.completions().map(|c| c.id).collect();
        got.truncate(3);
        assert_eq!(got, ids, "user completions are kept, in order");
        std::fs::remove_file(path).unwrap();
    }

    fn user_ops_and_lazy_reads_share_the_ring(b: BackendChoice) {
        let (file, path) = temp_file(&format!("mixed-{b:?}"), 3 * MB2);
        let mut ring = ring(b, 64);
        let lazy = ring.read_lazy(file.as_raw_fd(), 0, 3 * MB2, LazyOptions::default()).unwrap();
        let id = ring.submit(quell::Op::read_at(file.as_raw_fd(), 10, vec![0u8; 5]).user_data(7)).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!((c.user_data, c.data()), (7, &pattern(10, 5)[..]));
        // The owner's ordinary loop publishes too.
        while !lazy.progress().is_complete() {
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            assert_eq!(ring.completions().count(), 0);
        }
        assert!(lazy.try_range(0..3 * MB2).unwrap().unwrap() == &pattern(0, 3 * MB2)[..]);
        std::fs::remove_file(path).unwrap();
    }

    /// `read_lazy` "returns at once" and an oversized length is a typed error (I10). A
    /// length no memory of this system could ever hold (64 TiB: the red team saw it
    /// accepted after 2 s with 690 MB of bookkeeping) is refused before anything is
    /// allocated or mapped.
    fn a_length_beyond_memory_is_refused_before_anything_is_allocated(b: BackendChoice) {
        let report = within(60, "read_lazy of 64 TiB", move || {
            let mut ring = ring(b, 64);
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let maps = map_lines();
            let max = quell::lazy::max_len();
            let mut out = Vec::new();
            for len in [1usize << 46, max.saturating_add(1), usize::MAX].into_iter().filter(|&l| l > max) {
                let t = Instant::now();
                let (r, bytes) = allocated(|| ring.read_lazy(f.as_raw_fd(), 0, len, LazyOptions::default()));
                out.push(format!("len {len}: {:?} after {:?}, {bytes} bytes allocated", r.as_ref().map(|_| ()), t.elapsed()));
                assert!(
                    matches!(r, Err(LazyError::TooLong { len: l, max: m }) if l == len && m == max),
                    "{b:?}: {}",
                    out.join("; ")
                );
                assert!(bytes < 1 << 20, "{b:?}: {}", out.join("; "));
            }
            assert_eq!(map_lines(), maps, "a refused LazyRead mapped memory");
            assert!(ring.is_empty());
            out
        });
        eprintln!("{b:?}: {report:?}");
    }

    /// A length far beyond a short file (16 GiB in 4 KiB chunks over 2 MiB and a bit):
    /// `read_lazy` returns at once with bookkeeping a small fraction of the length,
    /// `finish` stops at end of file and returns the file's bytes (the rest of the region
    /// reads as zeros), and dropping it is quick. Before: 21 bytes of records per chunk
    /// allocated up front, and one read plus one zero-fill for every chunk past the end.
    fn a_long_read_of_a_short_file_costs_what_the_file_holds(b: BackendChoice) {
        let flen = MB2 + 12345;
        let (file, path) = temp_file(&format!("long-{b:?}"), flen);
        within(120, "a long LazyRead of a short file", move || {
            let mut ring = ring(b, 64);
            let len = long_len();
            let chunk = 4096;
            let rss = resident();
            let t = Instant::now();
            let (lazy, bytes) = allocated(|| {
                ring.read_lazy(file.as_raw_fd(), 0, len, LazyOptions::default().chunk_size(chunk))
            });
            let lazy = lazy.unwrap();
            let took = t.elapsed();
            eprintln!("{b:?}: read_lazy({len}) in {took:?}, {bytes} bytes allocated");
            // Three bytes per chunk at most (state and errno), and the region is not touched.
            assert!(bytes <= 4 * (len / chunk) + (1 << 20), "{b:?}: {bytes} bytes of bookkeeping for {} chunks", len / chunk);
            // A reader blocked past the end of the file is woken when the end is found,
            // and reads zeros.
            let toucher = (lazy.mode() == LazyMode::Uffd).then(|| {
                let view = lazy.view();
                std::thread::spawn(move || touch(view.raw().unwrap(), len - 1))
            });
            let t = Instant::now();
            let all = lazy.finish(&mut ring).unwrap();
            eprintln!("{b:?}: finish in {:?}, {:?}", t.elapsed(), lazy.progress());
            if let Some(t) = toucher {
                assert_eq!(t.join().unwrap(), 0);
            }
            assert!(all == &pattern(0, flen)[..], "{b:?}: the file's bytes");
            assert_eq!(lazy.data_len(), flen);
            assert!(lazy.try_range(len - 4096..len).unwrap().unwrap().iter().all(|&x| x == 0));
            assert!(lazy.try_range(flen..flen + 8192).unwrap().unwrap().iter().all(|&x| x == 0));
            if lazy.mode() == LazyMode::Uffd {
                let raw = lazy.raw().unwrap();
                assert_eq!((touch(raw, len - 1), touch(raw, len / 2), touch(raw, flen)), (0, 0, 0));
            }
            let grew = resident().saturating_sub(rss);
            eprintln!("{b:?}: resident grew by {} MiB", grew >> 20);
            let t = Instant::now();
            drop(lazy);
            eprintln!("{b:?}: drop in {:?}", t.elapsed());
            assert!(ring.is_empty());
        });
        std::fs::remove_file(path).unwrap();
    }

    /// Canceling or dropping a long LazyRead that has barely started (of /dev/zero, which
    /// never ends) resolves every chunk at once: nothing waits, nothing is read.
    fn canceling_a_long_lazy_read_is_quick(b: BackendChoice) {
        within(120, "canceling a long LazyRead", move || {
            let zero = std::fs::File::open("/dev/zero").unwrap();
            let mut ring = ring(b, 64);
            let len = long_len();
            let opts = LazyOptions::default().chunk_size(4096);
            let lazy = ring.read_lazy(zero.as_raw_fd(), 0, len, opts).unwrap();
            assert_eq!(lazy.wait_range(&mut ring, 0..4096).unwrap(), &[0u8; 4096][..]);
            let t = Instant::now();
            let reached = lazy.cancel();
            let e = lazy.finish(&mut ring).unwrap_err();
            eprintln!("{b:?}: cancel reached {reached} chunks, finish after {:?}", t.elapsed());
            assert_eq!(e.errno(), Some(Errno::CANCELED));
            assert_eq!(lazy.try_range(0..4096).unwrap().unwrap(), &[0u8; 4096][..]);
            assert!(lazy.progress().is_complete());
            drop(lazy);
            let lazy = ring.read_lazy(zero.as_raw_fd(), 0, len, opts).unwrap();
            lazy.wait_range(&mut ring, 0..1).unwrap();
            let t = Instant::now();
            drop(lazy);
            eprintln!("{b:?}: drop after {:?}", t.elapsed());
            while !ring.is_empty() {
                ring.wait(1, Some(Duration::from_millis(50))).unwrap();
            }
        });
    }
}

/// Resident memory of this process, in bytes (`/proc/self/statm`).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * rustix::param::page_size()
}

/// 16 GiB, or what this system's memory allows.
fn long_len() -> usize {
    (16usize << 30).min(quell::lazy::max_len())
}

#[test]
fn lazy_reads_and_views_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<quell::lazy::LazyRead>();
    send_sync::<quell::lazy::LazyView>();
    send_sync::<quell::lazy::WaitRange<'static>>();
    fn send<T: Send>() {}
    send::<Ring>();
}

/// A minimal executor: parks the thread until woken.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
