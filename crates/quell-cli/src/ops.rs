//! `quell ops`: see what a ring has in flight.
//!
//! `--demo` runs a small live workload on one ring — pipe reads fed at random, a big
//! write into a pipe drained slowly (its bytes-so-far grow), slow and hung reads on the
//! fault-injection filesystem, a timer with a deadline — and redraws the ring's op
//! table (`Ring::ops`) every interval, as a terminal table or one JSON document per
//! refresh. `--bench` measures what listing costs as the number of outstanding ops
//! grows (it should be linear: constant nanoseconds per op).

use crate::bench::BackendArg;
use crate::CliError;
use clap::Args;
use quell::{DumpFormat, GroupId, GroupOptions, Op, Ring};
use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Arguments of `quell ops`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["demo", "bench"])))]
pub struct OpsArgs {
    /// Run a demo workload and show its op table, refreshed every --interval-ms.
    #[arg(long)]
    pub demo: bool,
    /// Measure the cost of listing the ops at several table sizes.
    #[arg(long)]
    pub bench: bool,
    /// Show one table and stop (same as --iterations 1).
    #[arg(long)]
    pub once: bool,
    /// Number of refreshes before stopping (default: until Ctrl-C).
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Time between refreshes.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Print JSON (one document per line) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Skip the FUSE part of the demo (it needs /dev/fuse and root).
    #[arg(long)]
    pub no_fuse: bool,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Table sizes for --bench (outstanding ops; at most 65,536).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000u32, 10_000, 50_000])]
    pub sizes: Vec<u32>,
}

/// Runs `quell ops`.
pub fn run(args: &OpsArgs) -> Result<(), CliError> {
    if args.bench {
        return bench(args);
    }
    let iterations = if args.once { Some(1) } else { args.iterations };
    Demo::start(args)?.run(args, iterations)
}

const PIPES: usize = 6;
const BIG_WRITE: usize = 1 << 20;

/// The demo's ring and the descriptors its ops use.
struct Demo {
    ring: Ring,
    pipes: Vec<(OwnedFd, OwnedFd)>,
    sink: (OwnedFd, OwnedFd),
    fuse: Option<(FaultFs, std::fs::File, std::fs::File)>,
    fuse_note: String,
    groups: [GroupId; 3],
    rng: u64,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), CliError> {
    Ok(rustix_pipe()?)
}

fn rustix_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Demo {
    fn start(args: &OpsArgs) -> Result<Demo, CliError> {
        let mut ring = Ring::builder()
            .backend(args.backend.choice())
            .capacity(1024)
            .part_size(64 * 1024)
            .build()?;
        let net = ring.group(GroupId::ROOT, GroupOptions::default().name("net"))?;
        let disk = ring.group(GroupId::ROOT, GroupOptions::default().name("disk"))?;
        let slow = ring.group(disk, GroupOptions::default().name("fuse"))?;
        let pipes = (0..PIPES).map(|_| pipe()).collect::<Result<Vec<_>, _>>()?;
        let sink = pipe()?;
        let (fuse, fuse_note) = if args.no_fuse {
            (None, "faultfs: skipped (--no-fuse)".to_string())
        } else {
            match mount_fuse() {
                Ok(f) => {
                    let note = format!("faultfs at {}", f.0.mountpoint().display());
                    (Some(f), note)
                }
                Err(e) => (None, format!("faultfs: unavailable ({e})")),
            }
        };
        let mut d = Demo {
            ring,
            pipes,
            sink,
            fuse,
            fuse_note,
            groups: [net, disk, slow],
            rng: 0x9e37_79b9_7f4a_7c15,
        };
        for i in 0..PIPES {
            d.read_pipe(i)?;
        }
        submit(
            &mut d.ring,
            Op::write(d.sink.1.as_raw_fd(), vec![b'w'; BIG_WRITE])
                .exact()
                .group(net)
                .user_data(100),
        )?;
        submit(
            &mut d.ring,
            Op::timeout(Duration::from_secs(3600))
                .deadline(Instant::now() + Duration::from_secs(3600))
                .user_data(200),
        )?;
        if let Some((_, hang, slowf)) = &d.fuse {
            for k in 0..2u64 {
                submit(
                    &mut d.ring,
                    Op::read_at(hang.as_raw_fd(), k * 4096, vec![0; 4096])
                        .group(slow)
                        .user_data(300 + k),
                )?;
            }
            submit(
                &mut d.ring,
                Op::read_at(slowf.as_raw_fd(), 0, vec![0; 4096])
                    .group(slow)
                    .user_data(400),
            )?;
        }
        Ok(d)
    }

    fn read_pipe(&mut self, i: usize) -> Result<(), CliError> {
        let fd = self.pipes[i].0.as_raw_fd();
        submit(
            &mut self.ring,
            Op::read(fd, vec![0; 64])
                .group(self.groups[0])
                .user_data(i as u64),
        )?;
        Ok(())
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// One interval of work: feed a pipe, drain some of the big write, take
    /// completions and re-issue what finished.
    fn step(&mut self, interval: Duration) -> Result<(), CliError> {
        let i = (self.next_rand() % PIPES as u64) as usize;
        write_fd(&self.pipes[i].1, b"hello")?;
        drain_some(&self.sink.0, 48 * 1024);
        let end = Instant::now() + interval;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.ring.wait(usize::MAX, Some(left))?;
            let done: Vec<_> = self.ring.completions().collect();
            for c in done {
                match c.user_data {
                    u if u < PIPES as u64 => self.read_pipe(u as usize)?,
                    100 => {
                        submit(
                            &mut self.ring,
                            Op::write(self.sink.1.as_raw_fd(), vec![b'w'; BIG_WRITE])
                                .exact()
                                .group(self.groups[0])
                                .user_data(100),
                        )?;
                    }
                    400 => {
                        if let Some((_, _, slowf)) = &self.fuse {
                            let fd = slowf.as_raw_fd();
                            submit(
                                &mut self.ring,
                                Op::read_at(fd, 0, vec![0; 4096])
                                    .group(self.groups[2])
                                    .user_data(400),
                            )?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn run(mut self, args: &OpsArgs, iterations: Option<u64>) -> Result<(), CliError> {
        let tty = std::io::stdout().is_terminal() && !args.json && iterations != Some(1);
        let interval = Duration::from_millis(args.interval_ms.max(1));
        let mut out = std::io::stdout().lock();
        let mut n = 0u64;
        loop {
            self.step(interval)?;
            n += 1;
            if args.json {
                self.ring.dump_ops(DumpFormat::Json, &mut out)?;
            } else {
                if tty {
                    write!(out, "\x1b[2J\x1b[H")?;
                }
                writeln!(
                    out,
                    "quell ops --demo · backend {} · refresh {n} · {}",
                    self.ring.backend().name(),
                    self.fuse_note
                )?;
                self.ring.dump_ops(DumpFormat::Table, &mut out)?;
            }
            out.flush()?;
            if iterations.is_some_and(|max| n >= max) {
                break;
            }
        }
        // Wind down: cancel everything, release the FUSE hangs, take every completion.
        self.ring.cancel_all();
        if let Some((fs, _, _)) = &self.fuse {
            fs.release_all();
        }
        let left = self.ring.shutdown();
        drop(left);
        if let Some((fs, hang, slowf)) = self.fuse.take() {
            drop((hang, slowf));
            fs.unmount()?;
        }
        Ok(())
    }
}

/// Submits, keeping only the reason of a refusal (the op itself is not `Sync`).
fn submit(ring: &mut Ring, op: Op) -> Result<quell::OpId, CliError> {
    ring.submit(op).map_err(|e| e.into_parts().0.into())
}

fn mount_fuse() -> Result<(FaultFs, std::fs::File, std::fs::File), CliError> {
    let fs = FaultFs::mount_temp(
        Spec::new()
            .file(
                FileSpec::pattern("hang.bin", 1 << 20)
                    .rule(Rule::read(0..u64::MAX, Behavior::Hang)),
            )
            .file(
                FileSpec::pattern("slow.bin", 1 << 20)
                    .rule(Rule::read(0..u64::MAX, Behavior::Delay { ms: 700 })),
            ),
    )?;
    let hang = std::fs::File::open(fs.path("hang.bin"))?;
    let slow = std::fs::File::open(fs.path("slow.bin"))?;
    Ok((fs, hang, slow))
}

fn write_fd(fd: &OwnedFd, data: &[u8]) -> Result<(), CliError> {
    // SAFETY: valid buffer; a pipe write of a few bytes does not block while the pipe
    // has room (the demo's readers keep them drained).
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Reads up to `max` bytes from a pipe without blocking.
fn drain_some(fd: &OwnedFd, max: usize) {
    let mut buf = vec![0u8; max];
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
        return;
    }
    // SAFETY: valid buffer of `max` bytes.
    let _ = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), max) };
}

/// `--bench`: time `Ring::ops()` with N ops outstanding (long timers: in flight on
/// every backend, no descriptors needed), for each N.
fn bench(args: &OpsArgs) -> Result<(), CliError> {
    if args.sizes.is_empty() {
        return Err("--sizes needs at least one size".into());
    }
    let mut points = Vec::new();
    let mut backend = "";
    for &n in &args.sizes {
        let n = n.clamp(1, 65_536) as usize;
        let mut ring = Ring::builder()
            .backend(args.backend.choice())
            .capacity(n)
            .max_in_flight(n as u32)
            .build()?;
        backend = ring.backend().name();
        for i in 0..n {
            submit(
                &mut ring,
                Op::timeout(Duration::from_secs(3600)).user_data(i as u64),
            )?;
        }
        ring.poll()?;
        // Enough calls for ~0.2 s of work at ~20 ns per op, at least 3.
        let reps = (4_000_000 / n).clamp(3, 1000);
        let mut best = Duration::MAX;
        let mut total = Duration::ZERO;
        for _ in 0..reps {
            let t = Instant::now();
            let ops = std::hint::black_box(ring.ops());
            let e = t.elapsed();
            if ops.len() != n {
                return Err(format!("ops() listed {} of {n} ops", ops.len()).into());
            }
            drop(ops);
            best = best.min(e);
            total += e;
        }
        let mean = total / reps as u32;
        points.push(json!({
            "ops": n,
            "calls": reps,
            "mean_us": mean.as_secs_f64() * 1e6,
            "best_us": best.as_secs_f64() * 1e6,
            "ns_per_op": mean.as_secs_f64() * 1e9 / n as f64,
            "best_ns_per_op": best.as_secs_f64() * 1e9 / n as f64,
        }));
        ring.cancel_all();
        drop(ring.shutdown());
    }
    // Best-of: the least disturbed by other load on the machine.
    let first = points[0]["best_ns_per_op"].as_f64().unwrap_or(0.0);
    let last = points[points.len() - 1]["best_ns_per_op"]
        .as_f64()
        .unwrap_or(0.0);
    let doc = json!({
        "workload": "ops-listing",
        "backend": backend,
        "points": points,
        // Linear cost keeps this near 1.0 (cache effects push it up somewhat).
        "best_ns_per_op_ratio_last_to_first": if first > 0.0 { last / first } else { 0.0 },
    });
    if args.json {
        println!("{doc}");
    } else {
        println!("ops() listing cost on {backend} (mean and best of the calls):");
        println!(
            "{:>8} {:>6} {:>12} {:>12} {:>9} {:>12}",
            "OPS", "CALLS", "MEAN", "BEST", "NS/OP", "BEST NS/OP"
        );
        for p in doc["points"].as_array().into_iter().flatten() {
            let f = |k: &str| p[k].as_f64().unwrap_or(0.0);
            println!(
                "{:>8} {:>6} {:>10.1}us {:>10.1}us {:>9.1} {:>12.1}",
                p["ops"].as_u64().unwrap_or(0),
                p["calls"].as_u64().unwrap_or(0),
                f("mean_us"),
                f("best_us"),
                f("ns_per_op"),
                f("best_ns_per_op")
            );
        }
    }
    Ok(())
}
