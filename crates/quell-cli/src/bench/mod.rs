//! `quell bench`: the runner, statistics and output shared by every workload.
//!
//! A workload builds its *contenders* (quell and the in-process peers such as a raw
//! `io-uring` loop), each implementing [`Contender`]. The runner warms every contender
//! up, then runs them in interleaved rounds (the order alternates from round to round,
//! so slow drift on a busy machine hits each the same), each round lasting
//! `seconds / rounds`. Throughput is the **median** round (the best round is reported
//! too); latency percentiles come from every measured op of every round. Out-of-process
//! peers (fio) run after the rounds for the full `seconds`.
//!
//! Adding a workload: write a module with a `run(&BenchArgs, &Settings) -> Report`,
//! add a [`Workload`] variant and its one line in [`Workload::spec`]. `quell bench`
//! without a workload runs every variant ([`suite`]).

pub mod affinity;
pub mod cancel;
pub mod cancel_latency;
pub mod capture;
pub mod chain;
pub mod copy;
pub mod drain;
pub mod lanes;
pub mod lazy;
pub mod nop;
pub mod pingpong;
pub mod plot;
pub mod raw;
pub mod read;
pub mod scope;
pub mod suite;
pub mod tokio_peers;
pub mod tokio_quell;
pub mod uring_peers;

use crate::units::{parse_seconds, parse_size};
use crate::CliError;
use hdrhistogram::Histogram;
use quell::{BackendChoice, Ring};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workloads `quell bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Batches of NOPs: submit a batch, wait for all of it, take it (the ring's own cost).
    Nop,
    /// 4 KiB random reads from a page-cached file at a fixed queue depth.
    Read,
    /// 64-byte round trips to an echo thread over a Unix socket pair (both backends
    /// unless --backend is given).
    Pingpong,
    /// A cancel storm: 10,000 reads pending on a pipe in one group, `cancel_group`,
    /// time until all 10,000 completions are taken (peers: raw io_uring, one
    /// ASYNC_CANCEL per op and one CANCEL_ALL|FD).
    Cancel,
    /// 1,000 ops in flight + 10,000 queued: time from `drain` to drained, and from
    /// `cancel` to every completion.
    Drain,
    /// Copy a page-cached file: `quell cp`'s engine vs GNU cp and tokio::fs::copy.
    Cp,
    /// LazyRead of a whole page-cached file (256 MiB unless --size is given): time until
    /// every chunk is published (lazy-total) and until the first one is (lazy-first),
    /// against a plain read into a fresh Vec and into a prefaulted buffer. --depth is the
    /// LazyRead window (chunk reads in flight).
    Lazy,
    /// open → read 4 KiB → close chains on a page-cached file, --depth chains in flight
    /// [default 1]: linked SQEs (io_uring) against user-space sequencing and plain syscalls.
    Chain,
}

/// How a workload picks its queue depth and batch size.
#[derive(Clone, Copy, Debug)]
pub enum Dims {
    /// `--depth` (default `depth`) and `--batch` (default `batch`), batch ≤ depth.
    Depth {
        /// Default depth.
        depth: u32,
        /// Default batch.
        batch: u32,
    },
    /// `--batch` (default `batch`), depth defaults to the batch.
    Batch {
        /// Default batch.
        batch: u32,
    },
    /// Always these.
    Fixed {
        /// The depth.
        depth: u32,
        /// The batch.
        batch: u32,
    },
}

/// A workload's registration: its name, how it sizes itself, and how it runs.
#[derive(Clone, Copy)]
pub struct Spec {
    /// The name in the output.
    pub name: &'static str,
    /// Depth and batch.
    pub dims: Dims,
    /// Runs it once with resolved settings; one report per backend measured.
    pub run: fn(&BenchArgs, &Settings) -> Result<Vec<Report>, CliError>,
    /// Whether it measures both backends itself when `--backend` is `auto` (the suite
    /// then runs it once instead of once per backend).
    pub both_backends: bool,
}

impl Workload {
    /// The registry: one line per workload.
    pub fn spec(self) -> Spec {
        use Dims::*;
        let (name, dims, run, both_backends): (_, _, fn(&_, &_) -> _, _) = match self {
            Workload::Nop => (
                "nop",
                Batch { batch: 32 },
                |a, s| Ok(vec![nop::run(a, s)?]),
                false,
            ),
            Workload::Read => (
                "read",
                Depth {
                    depth: 32,
                    batch: 1,
                },
                |a, s| Ok(vec![read::run(a, s)?]),
                false,
            ),
            // A round trip is two ops (the write and the read), in flight together as in
            // every peer: a window of one would hold the read in quell's queue until the
            // write completes (a second io_uring_enter per round trip, and the descriptor
            // anchoring an op that waits there pays).
            Workload::Pingpong => (
                "pingpong",
                Fixed { depth: 2, batch: 1 },
                pingpong::run,
                true,
            ),
            Workload::Drain => (
                "drain",
                Fixed {
                    depth: drain::IN_FLIGHT,
                    batch: 1,
                },
                drain::run,
                false,
            ),
            Workload::Cancel => (
                "cancel",
                Depth {
                    depth: 4096,
                    batch: 1,
                },
                |a, s| Ok(vec![cancel::run(a, s)?]),
                false,
            ),
            Workload::Cp => (
                "cp",
                Depth {
                    depth: 16,
                    batch: 1,
                },
                copy::run,
                false,
            ),
            Workload::Lazy => (
                "lazy",
                Depth {
                    depth: quell::lazy::DEFAULT_WINDOW as u32,
                    batch: 1,
                },
                lazy::run,
                false,
            ),
            Workload::Chain => (
                "chain",
                Depth { depth: 1, batch: 1 },
                |a, s| Ok(vec![chain::run(a, s)?]),
                false,
            ),
        };
        Spec {
            name,
            dims,
            run,
            both_backends,
        }
    }

    /// The workload's name in the output.
    pub fn name(&self) -> &'static str {
        self.spec().name
    }

    /// Every registered workload, in order.
    pub fn all() -> &'static [Workload] {
        <Workload as clap::ValueEnum>::value_variants()
    }
}

/// Which quell backend a benchmark uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// quell's own choice (io_uring where it works; `QUELL_BACKEND` overrides).
    Auto,
    /// io_uring.
    Uring,
    /// The portable backend (epoll + thread pool).
    Portable,
}

impl BackendArg {
    /// The library's backend choice.
    pub fn choice(&self) -> BackendChoice {
        match self {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Uring => BackendChoice::Uring,
            BackendArg::Portable => BackendChoice::Portable,
        }
    }

    /// The name used in messages.
    pub fn name(&self) -> &'static str {
        match self {
            BackendArg::Auto => "default",
            BackendArg::Uring => "uring",
            BackendArg::Portable => "portable",
        }
    }
}

/// Arguments of `quell bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// The workload to run; without one, the whole suite on every available backend.
    #[arg(value_enum)]
    pub workload: Option<Workload>,
    /// Print JSON (DESIGN.md §7) instead of Markdown: one object per line for a workload,
    /// one document (`{"suite": ..., "workloads": [...]}`) for the suite.
    #[arg(long)]
    pub json: bool,
    /// A short run (under a minute for the suite): at most 0.25 s and one round per
    /// contender, files of at most 64 MiB.
    #[arg(long)]
    pub quick: bool,
    /// Draw latency CDFs per workload and the cancel-latency distribution per op class
    /// into this SVG file (suite only).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Measured seconds per contender, split over the rounds.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    pub seconds: f64,
    /// Interleaved rounds per contender; the median round is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Warm-up seconds per contender before the rounds [default: seconds/10, within 0.05..0.5].
    #[arg(long, value_parser = parse_seconds)]
    pub warmup: Option<f64>,
    /// The quell backend to measure.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Queue depth: ops in flight (read), submission queue size (nop) [default: 32; nop: the batch; pingpong: always 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub depth: Option<u32>,
    /// Batch size: ops submitted and awaited together (nop) [default: 32]; completions
    /// awaited before refilling (read) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: Option<u32>,
    /// File to read (read); created with non-zero data if missing
    /// [default: quell-bench-SIZE.dat in $QUELL_BENCH_DIR or the temp directory].
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Size of the file to create (read), e.g. 64MiB, 1GiB; suffixes are powers of 1024.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub size: u64,
    /// Do not run the fio peer even when fio is in PATH.
    #[arg(long)]
    pub no_fio: bool,
    /// Where pingpong's client and echo threads run: `split` (two CPUs, the usual
    /// client/server case: each round trip pays two cross-CPU wake-ups), `same` (one
    /// CPU: two context switches, the software path shows), `free` (the scheduler's
    /// choice; contenders then differ by where their echo thread happened to land).
    #[arg(long, value_enum, default_value = "split")]
    pub placement: affinity::Placement,
}

/// Settings resolved from the arguments, common to every workload.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Measured seconds per contender (all rounds together).
    pub seconds: f64,
    /// Rounds per contender.
    pub rounds: u32,
    /// Warm-up per contender.
    pub warmup: Duration,
    /// Queue depth.
    pub depth: u32,
    /// Batch size.
    pub batch: u32,
    /// The quell backend.
    pub backend: BackendArg,
}

impl Settings {
    /// The length of one round of one contender.
    pub fn per_round(&self) -> Duration {
        Duration::from_secs_f64(self.seconds / self.rounds as f64)
    }

    /// Builds a quell ring for `depth` ops in flight, or says clearly why it cannot.
    pub fn quell_ring(&self) -> Result<Ring, CliError> {
        let depth = self.depth.max(self.batch);
        Ring::builder()
            .backend(self.backend.choice())
            .capacity((depth as usize * 2).max(64))
            .max_in_flight(depth)
            .sq_entries(depth)
            .build()
            .map_err(|e| {
                format!(
                    "cannot build a quell ring on the {} backend: {e}",
                    self.backend.name()
                )
                .into()
            })
    }
}

/// What one contender did in one round.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Ops completed.
    pub ops: u64,
    /// Wall time from the first submission to the last completion.
    pub elapsed: Duration,
}

impl Sample {
    /// Throughput of the round.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Something the runner can measure: quell or an in-process peer.
pub trait Contender {
    /// Its name in the output (`quell`, `raw-io-uring`, ...).
    fn name(&self) -> &'static str;
    /// Runs the workload for about `dur`, recording one latency per op (nanoseconds)
    /// into `hist`. Must not allocate in its loop.
    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError>;
}

/// A histogram of nanoseconds from 1 ns to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `ns` into `hist`, clamping out-of-range values.
#[inline]
pub fn record(hist: &mut Histogram<u64>, ns: u64) {
    hist.saturating_record(ns.max(1));
}

/// The measured result of one contender over every round.
#[derive(Debug)]
pub struct Summary {
    /// Its name.
    pub name: &'static str,
    /// Throughput of each round, in run order.
    pub rounds: Vec<f64>,
    /// Latencies of every measured op.
    pub hist: Histogram<u64>,
    /// Ops measured in all rounds.
    pub ops: u64,
}

impl Summary {
    /// Median round throughput.
    pub fn median(&self) -> f64 {
        median(&self.rounds)
    }

    /// Best round throughput.
    pub fn best(&self) -> f64 {
        self.rounds.iter().copied().fold(0.0, f64::max)
    }

    /// This contender as a reported result.
    pub fn result(&self) -> PeerResult {
        capture::note(self.name, &self.hist);
        let mut extra = Map::new();
        extra.insert("best_ops_per_sec".into(), json!(round1(self.best())));
        extra.insert(
            "rounds_ops_per_sec".into(),
            json!(self.rounds.iter().map(|&r| round1(r)).collect::<Vec<_>>()),
        );
        extra.insert("ops".into(), json!(self.ops));
        PeerResult {
            name: self.name.to_string(),
            ops_per_sec: self.median(),
            p50_us: quantile_us(&self.hist, 0.50),
            p99_us: quantile_us(&self.hist, 0.99),
            extra,
        }
    }
}

/// The median of `v` (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The `q` quantile of a nanosecond histogram, in microseconds.
pub fn quantile_us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    round3(h.value_at_quantile(q) as f64 / 1000.0)
}

/// Warms every contender up, then runs them in interleaved rounds.
/// `before_each` runs before every measurement (warm-ups included), outside the timing:
/// a workload uses it to check that its file is still cached.
pub fn run_rounds(
    contenders: &mut [&mut dyn Contender],
    s: &Settings,
    before_each: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<Vec<Summary>, CliError> {
    let mut scratch = new_histogram();
    for c in contenders.iter_mut() {
        before_each()?;
        c.run(s.warmup, &mut scratch)?;
        scratch.reset();
    }
    let mut out: Vec<Summary> = contenders
        .iter()
        .map(|c| Summary {
            name: c.name(),
            rounds: Vec::with_capacity(s.rounds as usize),
            hist: new_histogram(),
            ops: 0,
        })
        .collect();
    let n = contenders.len();
    for round in 0..s.rounds {
        for k in 0..n {
            // Alternate the order so drift on a busy machine hits everyone alike.
            let i = if round % 2 == 0 { k } else { n - 1 - k };
            before_each()?;
            scratch.reset();
            let sample = contenders[i].run(s.per_round(), &mut scratch)?;
            let sum = &mut out[i];
            sum.rounds.push(sample.ops_per_sec());
            sum.ops += sample.ops;
            sum.hist
                .add(&scratch)
                .map_err(|e| format!("histogram: {e}"))?;
        }
    }
    Ok(out)
}

/// One contender's reported result.
#[derive(Clone, Debug)]
pub struct PeerResult {
    /// Its name (`quell`, `raw-io-uring`, `fio-io_uring`).
    pub name: String,
    /// Throughput (median round for in-process contenders).
    pub ops_per_sec: f64,
    /// Median latency per op, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency per op, microseconds.
    pub p99_us: f64,
    /// Extra fields for the JSON output.
    pub extra: Map<String, Value>,
}

impl PeerResult {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("ops_per_sec".into(), json!(round1(self.ops_per_sec)));
        m.insert("p50_us".into(), json!(self.p50_us));
        m.insert("p99_us".into(), json!(self.p99_us));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// The result of one workload: quell, its peers, and how the run was made.
#[derive(Clone, Debug)]
pub struct Report {
    /// The workload's name.
    pub workload: &'static str,
    /// The quell backend measured (`uring` or `portable`).
    pub backend: String,
    /// quell's result.
    pub quell: PeerResult,
    /// The peers' results.
    pub peers: Vec<PeerResult>,
    /// Peers that did not run, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Extra top-level fields (settings, cache mode, notes).
    pub extra: Map<String, Value>,
}

impl Report {
    /// quell's throughput over each peer's.
    pub fn ratios(&self) -> Vec<(String, f64)> {
        self.peers
            .iter()
            .filter(|p| p.ops_per_sec > 0.0)
            .map(|p| {
                (
                    p.name.clone(),
                    round3(self.quell.ops_per_sec / p.ops_per_sec),
                )
            })
            .collect()
    }

    /// The JSON object of DESIGN.md §7 (required fields first, then extras).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("workload".into(), json!(self.workload));
        m.insert("backend".into(), json!(self.backend));
        m.insert("ops_per_sec".into(), json!(round1(self.quell.ops_per_sec)));
        m.insert("p50_us".into(), json!(self.quell.p50_us));
        m.insert("p99_us".into(), json!(self.quell.p99_us));
        let peers: Map<String, Value> = self
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.to_json()))
            .collect();
        m.insert("peers".into(), Value::Object(peers));
        let ratio: Map<String, Value> = self
            .ratios()
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        m.insert("ratio".into(), Value::Object(ratio));
        // Best round over best round: noise on a shared machine only slows a round down,
        // so this is the steadier comparison when other work runs (in-process peers only).
        let best = |p: &PeerResult| p.extra.get("best_ops_per_sec").and_then(Value::as_f64);
        if let Some(qb) = best(&self.quell) {
            let rb: Map<String, Value> = self
                .peers
                .iter()
                .filter_map(|p| {
                    best(p)
                        .filter(|&b| b > 0.0)
                        .map(|b| (p.name.clone(), json!(round3(qb / b))))
                })
                .collect();
            m.insert("ratio_best".into(), Value::Object(rb));
        }
        for (k, v) in &self.quell.extra {
            m.insert(format!("quell_{k}"), v.clone());
        }
        if !self.skipped.is_empty() {
            let sk: Map<String, Value> = self
                .skipped
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            m.insert("skipped".into(), Value::Object(sk));
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// A Markdown table (one row per contender) followed by the run's settings.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "| workload | backend | contender | ops/s (median) | p50 µs | p99 µs | quell / contender | best rounds |"
        );
        let _ = writeln!(o, "|---|---|---|---:|---:|---:|---:|---:|");
        let json = self.to_json();
        let ratios = self.ratios();
        for p in std::iter::once(&self.quell).chain(self.peers.iter()) {
            let ratio = if p.name == self.quell.name {
                "1.000".to_string()
            } else {
                ratios
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map(|(_, r)| format!("{r:.3}"))
                    .unwrap_or_else(|| "-".into())
            };
            let best = if p.name == self.quell.name {
                "1.000".to_string()
            } else {
                json["ratio_best"][&p.name]
                    .as_f64()
                    .map(|r| format!("{r:.3}"))
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
                self.workload,
                self.backend,
                p.name,
                group_digits(p.ops_per_sec),
                p.p50_us,
                p.p99_us,
                ratio,
                best
            );
        }
        for (name, why) in &self.skipped {
            let _ = writeln!(o, "\n{name}: skipped ({why})");
        }
        let settings: Vec<String> = self
            .extra
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = writeln!(o, "\n{}", settings.join(" "));
        o
    }
}

pub(crate) fn group_digits(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Settings recorded in every report.
pub fn common_extra(s: &Settings) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("seconds".into(), json!(s.seconds));
    m.insert("rounds".into(), json!(s.rounds));
    m.insert("stat".into(), json!("median round"));
    m.insert("warmup_s".into(), json!(s.warmup.as_secs_f64()));
    m.insert("depth".into(), json!(s.depth));
    m.insert("batch".into(), json!(s.batch));
    m
}

/// Applies `--quick`: shorter runs, one round, smaller files.
pub fn quickened(args: &BenchArgs) -> BenchArgs {
    let mut a = args.clone();
    if a.quick {
        a.seconds = a.seconds.min(0.25);
        a.rounds = 1;
        a.size = a.size.min(64 << 20);
        a.warmup = Some(a.warmup.unwrap_or(0.05).min(a.seconds / 4.0));
    }
    a
}

/// Resolves the settings of one workload from the arguments (a usage error if they
/// contradict each other).
pub fn settings_for(args: &BenchArgs, w: Workload) -> Result<Settings, CliError> {
    let warmup = args
        .warmup
        .unwrap_or_else(|| (args.seconds / 10.0).clamp(0.05, 0.5));
    let spec = w.spec();
    let (depth, batch) = match spec.dims {
        Dims::Batch { batch } => {
            let batch = args.batch.unwrap_or(batch);
            (args.depth.unwrap_or(batch), batch)
        }
        Dims::Depth { depth, batch } => (
            args.depth.unwrap_or(depth),
            args.batch
                .unwrap_or(batch)
                .min(args.depth.unwrap_or(depth).max(1)),
        ),
        Dims::Fixed { depth, batch } => (depth, batch),
    };
    if let (Dims::Batch { .. } | Dims::Depth { .. }, Some(b)) = (spec.dims, args.batch) {
        if b > depth {
            return Err(usage(&format!(
                "--batch ({b}) cannot exceed --depth ({depth}) for {}",
                spec.name
            )));
        }
    }
    Ok(Settings {
        seconds: args.seconds,
        rounds: args.rounds,
        warmup: Duration::from_secs_f64(warmup),
        depth,
        batch,
        backend: args.backend,
    })
}

/// Runs `quell bench`.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let args = &quickened(args);
    let Some(workload) = args.workload else {
        return suite::run(args);
    };
    if args.plot.is_some() {
        return Err(usage("--plot draws the whole suite: give no workload"));
    }
    let settings = settings_for(args, workload)?;
    let started = Instant::now();
    let mut reports = (workload.spec().run)(args, &settings)?;
    let wall = round3(started.elapsed().as_secs_f64());
    for (i, report) in reports.iter_mut().enumerate() {
        report.extra.insert("wall_s".into(), json!(wall));
        if args.json {
            println!("{}", serde_json::to_string(&report.to_json())?);
        } else {
            if i > 0 {
                println!();
            }
            print!("{}", report.markdown());
        }
    }
    Ok(())
}

/// A usage error found after parsing: printed by clap, exit code 2.
fn usage(msg: &str) -> CliError {
    use clap::CommandFactory;
    crate::Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}
