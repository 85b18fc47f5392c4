//! Long randomized stress: submit / cancel / cancel_fd / cancel_all / release / drop-ring
//! over pipes, page-cache files and FUSE fault files (hung, slow, failing), checked at
//! the end for lost or doubled completions, leaked buffers and leaked descriptors.
//!
//! `QUELL_STRESS_ACTIONS` (default 300,000 per backend, ~10 s in a debug build) sets the length;
//! `QUELL_STRESS_SEED` replays a run (the seed is printed on failure).

mod common;

use common::counting::{self, Counting};
use common::fault::{mount, Watchdog};
use common::*;
use quell::{BackendChoice, CancelStatus, Completion, Op, OpId, Outcome, Ring};
use quell_faultfs::{Behavior, FileSpec, Rule, Spec};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counters (fds, tagged buffers) are process-wide: one stress run at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const TAG: usize = 3;
const MIB: u64 = 1 << 20;
const PIPES: usize = 4;

both_backends! {
    fn stress_random_actions(b: BackendChoice) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let actions: u64 = std::env::var("QUELL_STRESS_ACTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300_000);
        let seed: u64 = std::env::var("QUELL_STRESS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
        let _report = SeedReport(seed, b);
        eprintln!("[{b:?}] stress: {actions} actions, QUELL_STRESS_SEED={seed}");
        stress(b, actions, seed);
    }
}

/// Prints the seed if the test panics.
struct SeedReport(u64, BackendChoice);
impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "stress test failed on {:?}: replay with QUELL_STRESS_SEED={}",
                self.1, self.0
            );
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Pipe(usize),
    PageCache,
    Fuse(usize),
}

struct Pending {
    id: OpId,
    target: Target,
    fd: RawFd,
    len: usize,
    cancel_requested: bool,
    write: bool,
}

#[derive(Default)]
struct Tally {
    submitted: u64,
    completed: u64,
    dropped_with_ring: u64,
    by_outcome: HashMap<&'static str, u64>,
    rings: u64,
}

struct World {
    model: HashMap<u64, Pending>,
    pipe_written: [u64; PIPES],
    pipe_read: [u64; PIPES],
    /// Pipe bytes that may have been read by ops whose completion died with a dropped ring.
    pipe_unobserved: [bool; PIPES],
    tally: Tally,
}

impl World {
    fn take(&mut self, c: Completion) {
        if std::env::var_os("QUELL_STRESS_TRACE").is_some() {
            eprintln!("completion {} {}", c.user_data, c.outcome);
        }
        let p = self.model.remove(&c.user_data).unwrap_or_else(|| {
            panic!(
                "completion for unknown or already completed op {} ({})",
                c.user_data, c.outcome
            )
        });
        assert_eq!(p.id, c.id, "completion id mismatch");
        let o = c.outcome;
        if o.is_canceled() {
            assert!(
                p.cancel_requested,
                "op {} ({:?}) canceled without a cancel request: {o}",
                c.user_data, p.target
            );
        }
        assert!(
            o.transferred() <= p.len,
            "transferred {} > requested {}",
            o.transferred(),
            p.len
        );
        if let Target::Pipe(i) = p.target {
            if !p.write {
                self.pipe_read[i] += c.data().len() as u64;
            }
        }
        if let Outcome::Failed(e) = o {
            // Only injected failures are expected.
            let ok = matches!(p.target, Target::Fuse(_))
                && [libc::EIO, libc::EINTR].contains(&e.raw_os_error());
            assert!(ok, "unexpected failure {o} on {:?}", p.target);
            if e.raw_os_error() == libc::EINTR {
                assert!(p.cancel_requested, "EINTR without a cancel");
            }
        }
        let name = match o {
            Outcome::Done(_) => "done",
            Outcome::Failed(_) => "failed",
            Outcome::Canceled { transferred: 0 } => "canceled",
            Outcome::Canceled { .. } => "canceled-partial",
            Outcome::TimedOut { .. } => "timed-out",
            Outcome::Detached => "detached",
        };
        *self.tally.by_outcome.entry(name).or_default() += 1;
        self.tally.completed += 1;
        drop(c); // hands the buffer back (counted by the allocator)
    }
}

fn new_ring(b: BackendChoice, rng: &mut Rng) -> Ring {
    let cap = [8usize, 64, 256][rng.below(3) as usize];
    let window = [1u32, 4, 256][rng.below(3) as usize];
    Ring::builder()
        .backend(b)
        .capacity(cap)
        .max_in_flight(window)
        .sq_entries(8)
        .teardown_timeout(Duration::from_secs(30))
        .build()
        .expect("ring")
}

fn stress(b: BackendChoice, actions: u64, seed: u64) {
    let mut rng = Rng(seed | 1);
    let trace = std::env::var_os("QUELL_STRESS_TRACE").is_some();
    let Some(fs) = mount(
        Spec::new()
            .file(FileSpec::pattern("ok.bin", MIB))
            .file(FileSpec::pattern("hang.bin", MIB).rule(Rule::read(0..MIB / 2, Behavior::Hang)))
            .file(
                FileSpec::pattern("slow.bin", MIB)
                    .rule(Rule::read(0..MIB, Behavior::Delay { ms: 2 })),
            )
            .file(FileSpec::pattern("eio.bin", MIB).rule(Rule::read(MIB / 2..MIB, Behavior::Eio)))
            .file(FileSpec::new("w.bin", 0).rule(Rule::write(MIB..2 * MIB, Behavior::Hang))),
    ) else {
        return;
    };
    let wd = Watchdog::new(&fs, 600);
    let fds_before = open_fds();
    let live_before = counting::live(TAG);
    let start = Instant::now();
    let mut w = World {
        model: HashMap::new(),
        pipe_written: [0; PIPES],
        pipe_read: [0; PIPES],
        pipe_unobserved: [false; PIPES],
        tally: Tally::default(),
    };
    {
        let pipes: Vec<_> = (0..PIPES).map(|_| pipe()).collect();
        for (_, wr) in &pipes {
            // SAFETY: plain fcntl on an owned descriptor.
            unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        }
        let dir = std::env::temp_dir().join(format!("quell-stress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pc_path = dir.join(format!("pc-{b:?}"));
        std::fs::write(&pc_path, vec![7u8; MIB as usize]).unwrap();
        let pc = std::fs::File::open(&pc_path).unwrap();
        let fuse_names = ["ok.bin", "hang.bin", "slow.bin", "eio.bin", "w.bin"];
        let fuse: Vec<std::fs::File> = fuse_names
            .iter()
            .map(|n| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(fs.path(n))
                    .unwrap()
            })
            .collect();
        let mut ring = Some(new_ring(b, &mut rng));
        w.tally.rings = 1;
        let mut next_ud = 1u64;

        for _ in 0..actions {
            let r = ring.as_mut().unwrap();
            match rng.below(100) {
                0..=34 => {
                    let pages = 1 + rng.below(4) as usize;
                    let buf = counting::tagged_buf(TAG, pages);
                    let len = buf.len();
                    let (target, op, write) = match rng.below(10) {
                        0..=3 => {
                            let i = rng.below(PIPES as u64) as usize;
                            (
                                Target::Pipe(i),
                                Op::read(pipes[i].0.as_raw_fd(), buf),
                                false,
                            )
                        }
                        4..=5 => {
                            let off = rng.below(MIB);
                            (
                                Target::PageCache,
                                Op::read_at(pc.as_raw_fd(), off, buf),
                                false,
                            )
                        }
                        6..=8 => {
                            let f = rng.below(4) as usize;
                            let off = rng.below(MIB);
                            (
                                Target::Fuse(f),
                                Op::read_at(fuse[f].as_raw_fd(), off, buf),
                                false,
                            )
                        }
                        _ => {
                            let off = rng.below(2 * MIB);
                            (
                                Target::Fuse(4),
                                Op::write_at(fuse[4].as_raw_fd(), off, buf),
                                true,
                            )
                        }
                    };
                    let fd = match target {
                        Target::Pipe(i) => pipes[i].0.as_raw_fd(),
                        Target::PageCache => pc.as_raw_fd(),
                        Target::Fuse(f) => fuse[f].as_raw_fd(),
                    };
                    let ud = next_ud;
                    next_ud += 1;
                    match r.submit(op.user_data(ud)) {
                        Ok(id) => {
                            if trace {
                                eprintln!(
                                    "submit {ud} {target:?} len {len} write {write} -> {id:?}"
                                );
                            }
                            w.model.insert(
                                ud,
                                Pending {
                                    id,
                                    target,
                                    fd,
                                    len,
                                    cancel_requested: false,
                                    write,
                                },
                            );
                            w.tally.submitted += 1;
                        }
                        Err(e) => {
                            assert!(
                                matches!(e.error(), quell::Error::TableFull { .. }),
                                "{}",
                                e.error()
                            );
                            assert_eq!(
                                e.into_op().into_buf().map(|v| v.len()),
                                Some(len),
                                "buffer back"
                            );
                        }
                    }
                }
                35..=49 => {
                    let i = rng.below(PIPES as u64) as usize;
                    let n = 1 + rng.below(64) as usize;
                    let data = vec![0x5a; n];
                    // SAFETY: valid buffer; nonblocking write end.
                    let k = unsafe { libc::write(pipes[i].1.as_raw_fd(), data.as_ptr().cast(), n) };
                    if k > 0 {
                        w.pipe_written[i] += k as u64;
                    }
                }
                50..=61 => {
                    if w.model.is_empty() {
                        continue;
                    }
                    let pick = rng.below(w.model.len() as u64) as usize;
                    let ud = *w.model.keys().nth(pick).unwrap();
                    let p = w.model.get_mut(&ud).unwrap();
                    if trace {
                        eprintln!("cancel {ud}");
                    }
                    match r.cancel(p.id).unwrap() {
                        CancelStatus::Requested => p.cancel_requested = true,
                        CancelStatus::AlreadyDone => {}
                        CancelStatus::NotFound => panic!("cancel of outstanding op {ud}: NotFound"),
                    }
                }
                62..=64 => {
                    let fd = match rng.below(3) {
                        0 => pipes[rng.below(PIPES as u64) as usize].0.as_raw_fd(),
                        1 => pc.as_raw_fd(),
                        _ => fuse[rng.below(5) as usize].as_raw_fd(),
                    };
                    let mut expected = 0;
                    for p in w.model.values_mut() {
                        if p.fd == fd {
                            p.cancel_requested = true;
                            expected += 1;
                        }
                    }
                    let reached = r.cancel_fd(fd);
                    if trace {
                        eprintln!("cancel_fd {fd} reached {reached}");
                    }
                    assert!(
                        reached <= expected,
                        "cancel_fd reached {reached} > {expected} outstanding"
                    );
                }
                65 => {
                    for p in w.model.values_mut() {
                        p.cancel_requested = true;
                    }
                    let reached = r.cancel_all();
                    if trace {
                        eprintln!("cancel_all reached {reached}");
                    }
                    assert!(reached <= w.model.len());
                }
                66..=69 => {
                    fs.release_all();
                }
                70..=94 => {
                    if rng.below(4) == 0 {
                        r.wait(1, Some(Duration::from_millis(1))).unwrap();
                    } else {
                        r.poll().unwrap();
                    }
                    let cs: Vec<_> = r.completions().collect();
                    for c in cs {
                        w.take(c);
                    }
                    assert_eq!(r.len(), w.model.len(), "ring.len() vs model");
                    assert!(r.ops().len() <= w.model.len());
                    for o in r.ops() {
                        let p = w
                            .model
                            .get(&o.user_data)
                            .expect("ops() lists an op the model does not know");
                        assert_eq!(o.id, p.id);
                        assert_eq!(o.fd, p.fd);
                    }
                }
                _ => {
                    let old = ring.take().unwrap();
                    if trace {
                        eprintln!("drop ring");
                    }
                    if rng.below(2) == 0 {
                        let mut old = old;
                        for p in w.model.values_mut() {
                            p.cancel_requested = true; // shutdown cancels everything
                        }
                        let t = Instant::now();
                        let rest = old.shutdown();
                        assert!(
                            t.elapsed() < Duration::from_secs(10),
                            "shutdown took {:?}",
                            t.elapsed()
                        );
                        for c in rest {
                            w.take(c);
                        }
                        assert!(
                            w.model.is_empty(),
                            "shutdown lost {} completions",
                            w.model.len()
                        );
                        assert_eq!(old.stats().leaked_at_teardown, 0);
                        drop(old);
                    } else {
                        let t = Instant::now();
                        drop(old);
                        assert!(
                            t.elapsed() < Duration::from_secs(10),
                            "drop took {:?}",
                            t.elapsed()
                        );
                        for p in w.model.values() {
                            if let Target::Pipe(i) = p.target {
                                w.pipe_unobserved[i] = true;
                            }
                        }
                        w.tally.dropped_with_ring += w.model.len() as u64;
                        w.model.clear();
                    }
                    ring = Some(new_ring(b, &mut rng));
                    w.tally.rings += 1;
                }
            }
        }

        // Drain: cancel everything, release the daemon, collect every completion.
        let r = ring.as_mut().unwrap();
        for p in w.model.values_mut() {
            p.cancel_requested = true;
        }
        r.cancel_all();
        fs.release_all();
        let t = Instant::now();
        while !w.model.is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{} ops never completed: {:?}",
                w.model.len(),
                r.ops()
            );
            r.wait(1, Some(Duration::from_millis(50))).unwrap();
            let cs: Vec<_> = r.completions().collect();
            for c in cs {
                w.take(c);
            }
            fs.release_all();
        }
        r.poll().unwrap();
        assert!(
            r.next_completion().is_none(),
            "a completion after every op completed"
        );
        assert!(r.is_empty());
        drop(ring);
        for (i, (rd, _)) in pipes.iter().enumerate() {
            w.pipe_read[i] += drain_nonblocking(rd.as_raw_fd()).len() as u64;
            if w.pipe_unobserved[i] {
                assert!(
                    w.pipe_read[i] <= w.pipe_written[i],
                    "pipe {i}: read more than written"
                );
            } else {
                assert_eq!(
                    w.pipe_read[i], w.pipe_written[i],
                    "pipe {i}: bytes lost or doubled"
                );
            }
        }
        drop(pc);
        drop(fuse);
        drop(pipes);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(!wd.fired(), "the watchdog had to abort the FUSE connection");
    // Pool workers finishing their last job drop their share of a ring's doorbell shortly
    // after the ring is gone; a real leak stays.
    let settle = std::time::Instant::now();
    while open_fds() > fds_before && settle.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    assert_eq!(counting::live(TAG), live_before, "test buffers leaked");
    assert_eq!(
        w.tally.completed + w.tally.dropped_with_ring,
        w.tally.submitted
    );
    eprintln!(
        "[{b:?}] stress done in {:?}: {} submitted, {} completed, {} dropped with {} rings, outcomes {:?}, daemon {:?}",
        start.elapsed(),
        w.tally.submitted,
        w.tally.completed,
        w.tally.dropped_with_ring,
        w.tally.rings,
        w.tally.by_outcome,
        {
            let s = fs.stats();
            (s.reads, s.writes, s.interrupts, s.released, s.injected_errors)
        }
    );
}
