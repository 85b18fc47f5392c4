//! The `cancel` workload: a cancel storm. 10,000 reads wait on an empty pipe; then
//! quell cancels their group with one `cancel_group`, and the clock runs until all
//! 10,000 completions are taken. Setting the storm up (submitting the reads and
//! letting the kernel arm them) is not timed.
//!
//! The unit of work is one cancellation reaped (DESIGN §7): `ops_per_sec` is
//! 10,000 / storm time, and the latencies are storm time / 10,000. `storm_ms_*`
//! gives the storm itself.
//!
//! Peers, on the raw `io-uring` crate in the same run: `raw-io-uring` sends one
//! `ASYNC_CANCEL` per user_data (what quell's io_uring backend does, driven from its
//! own op table); `raw-io-uring-cancel-all` sends one `ASYNC_CANCEL` with
//! `IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL`, whose match-all path in the
//! kernel is quadratic-ish. Goals (issue #5): quell / raw-io-uring ≥ 0.83, quell /
//! raw-io-uring-cancel-all ≥ 40.

use super::{common_extra, quantile_us, run_rounds, BenchArgs, Contender, Report};
use super::{Sample, Settings};
use crate::CliError;
use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};
use quell::{GroupId, GroupOptions, Op, Ring};
use serde_json::json;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Reads pending in one storm.
pub const STORM: usize = 10_000;
/// Bytes each pending read asks for.
const READ_LEN: usize = 64;

/// A pipe nobody writes to: reads on it wait until canceled.
fn empty_pipe() -> Result<(OwnedFd, OwnedFd), CliError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: pipe2 just returned these descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The storm time of each storm (nanoseconds), kept beside the per-op histogram.
fn storm_hist() -> Histogram<u64> {
    super::new_histogram()
}

/// Records one storm: `n` cancellations reaped in `ns`.
fn record_storm(hist: &mut Histogram<u64>, storms: &mut Histogram<u64>, ns: u64, n: usize) {
    // One sample per cancellation would cost 10,000 records per storm for the same
    // distribution: record the storm's mean once, with its weight.
    hist.saturating_record_n((ns / n as u64).max(1), n as u64);
    storms.saturating_record(ns.max(1));
}

/// `io_uring_enter` submitting and waiting for `want` completions, retrying on EINTR.
fn enter_n(sub: &io_uring::Submitter<'_>, want: usize) -> Result<(), CliError> {
    loop {
        match sub.submit_and_wait(want) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(format!("raw io_uring_enter: {e}").into()),
        }
    }
}

/// quell: submit 10,000 reads into a fresh group, flush, `cancel_group`, take all.
pub struct QuellCancel {
    ring: Ring,
    pipe: (OwnedFd, OwnedFd),
    bufs: Vec<Vec<u8>>,
    storms: Histogram<u64>,
}

impl QuellCancel {
    /// A ring sized for one storm on the chosen backend.
    pub fn new(s: &Settings) -> Result<QuellCancel, CliError> {
        let ring = Ring::builder()
            .backend(s.backend.choice())
            .capacity(STORM + 64)
            .max_in_flight(STORM as u32)
            .sq_entries(s.depth)
            .build()
            .map_err(|e| format!("cannot build a quell ring: {e}"))?;
        Ok(QuellCancel {
            ring,
            pipe: empty_pipe()?,
            bufs: (0..STORM).map(|_| vec![0u8; READ_LEN]).collect(),
            storms: storm_hist(),
        })
    }

    /// The ring's backend.
    pub fn backend(&self) -> &'static str {
        self.ring.backend().name()
    }

    fn storm(&mut self) -> Result<u64, CliError> {
        let g = self
            .ring
            .group(GroupId::ROOT, GroupOptions::default())
            .map_err(|e| format!("quell group: {e}"))?;
        let fd = self.pipe.0.as_raw_fd();
        for buf in self.bufs.drain(..) {
            self.ring
                .submit(Op::read(fd, buf).group(g))
                .map_err(|e| format!("quell submit: {e}"))?;
        }
        self.ring.flush().map_err(|e| format!("quell flush: {e}"))?;
        let t0 = Instant::now();
        let reached = self
            .ring
            .cancel_group(g)
            .map_err(|e| format!("quell cancel_group: {e}"))?;
        if reached != STORM {
            return Err(format!("cancel_group reached {reached} of {STORM} ops").into());
        }
        while self.bufs.len() < STORM {
            self.ring
                .wait(STORM - self.bufs.len(), None)
                .map_err(|e| format!("quell wait: {e}"))?;
            while let Some(c) = self.ring.next_completion() {
                if !c.outcome.is_canceled() {
                    return Err(format!("a pending read ended {}", c.outcome).into());
                }
                self.bufs
                    .push(c.into_buf().expect("reads hand their buffer back"));
            }
        }
        let ns = t0.elapsed().as_nanos() as u64;
        self.ring
            .remove_group(g)
            .map_err(|e| format!("quell remove_group: {e}"))?;
        Ok(ns)
    }
}

impl Contender for QuellCancel {
    fn name(&self) -> &'static str {
        "quell"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let mut storms = std::mem::replace(&mut self.storms, storm_hist());
        let r = run_storms(dur, hist, &mut storms, || self.storm());
        self.storms = storms;
        r
    }
}

/// Storms until `dur` of storm time has passed (at least one).
fn run_storms(
    dur: Duration,
    hist: &mut Histogram<u64>,
    storms: &mut Histogram<u64>,
    mut storm: impl FnMut() -> Result<u64, CliError>,
) -> Result<Sample, CliError> {
    let mut timed = 0u64;
    let mut ops = 0u64;
    loop {
        let ns = storm()?;
        record_storm(hist, storms, ns, STORM);
        timed += ns;
        ops += STORM as u64;
        if timed >= dur.as_nanos() as u64 {
            return Ok(Sample {
                ops,
                elapsed: Duration::from_nanos(timed),
            });
        }
    }
}

/// How a raw peer cancels its storm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawWay {
    /// One `ASYNC_CANCEL` per user_data.
    PerOp,
    /// One `ASYNC_CANCEL` with `CANCEL_FD | CANCEL_ALL`.
    All,
}

/// Bit that marks a cancel request's own CQE.
const CANCEL_TAG: u64 = 1 << 63;

/// A raw io-uring storm.
pub struct RawCancel {
    ring: IoUring,
    way: RawWay,
    pipe: (OwnedFd, OwnedFd),
    bufs: Vec<Vec<u8>>,
    storms: Histogram<u64>,
}

impl RawCancel {
    fn new(way: RawWay, sq: u32) -> Result<RawCancel, CliError> {
        // Room for every read's CQE and every cancel's CQE of a storm.
        let cq = (2 * STORM as u32 + 64).next_power_of_two();
        let sq = sq.clamp(8, 32768).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(sq)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(sq))
            .map_err(|e| format!("raw io_uring setup failed: {e}"))?;
        Ok(RawCancel {
            ring,
            way,
            pipe: empty_pipe()?,
            bufs: (0..STORM).map(|_| vec![0u8; READ_LEN]).collect(),
            storms: storm_hist(),
        })
    }

    /// Pushes one SQE, submitting to make room when the SQ is full.
    fn push(&mut self, sqe: &io_uring::squeue::Entry) -> Result<(), CliError> {
        loop {
            // SAFETY: reads point into `self.bufs`, which stay put until their CQE is
            // reaped within this storm; cancels point to no memory.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            enter_n(&self.ring.submitter(), 0)?;
        }
    }

    fn storm(&mut self) -> Result<u64, CliError> {
        let fd = types::Fd(self.pipe.0.as_raw_fd());
        for i in 0..STORM {
            let ptr = self.bufs[i].as_mut_ptr();
            let sqe = opcode::Read::new(fd, ptr, READ_LEN as u32)
                .offset(u64::MAX)
                .build()
                .user_data(i as u64);
            self.push(&sqe)?;
        }
        enter_n(&self.ring.submitter(), 0)?;
        if !self.ring.completion().is_empty() {
            return Err("raw: a pending read completed before the cancel".into());
        }
        let t0 = Instant::now();
        let mut cancels = 0usize;
        match self.way {
            RawWay::PerOp => {
                for i in 0..STORM as u64 {
                    let sqe = opcode::AsyncCancel::new(i)
                        .build()
                        .user_data(CANCEL_TAG | i);
                    self.push(&sqe)?;
                }
                cancels = STORM;
            }
            RawWay::All => {
                let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd).all())
                    .build()
                    .user_data(CANCEL_TAG);
                self.push(&sqe)?;
                cancels += 1;
            }
        }
        let (mut reads, mut cancel_cqes) = (0usize, 0usize);
        let mut ns = 0;
        while reads < STORM || cancel_cqes < cancels {
            enter_n(&self.ring.submitter(), 1)?;
            for cqe in self.ring.completion() {
                if cqe.user_data() & CANCEL_TAG != 0 {
                    cancel_cqes += 1;
                    continue;
                }
                if cqe.result() != -libc::ECANCELED {
                    return Err(format!("raw: a pending read ended {}", cqe.result()).into());
                }
                reads += 1;
            }
            if reads == STORM && ns == 0 {
                ns = t0.elapsed().as_nanos() as u64;
            }
        }
        Ok(ns)
    }
}

impl Contender for RawCancel {
    fn name(&self) -> &'static str {
        match self.way {
            RawWay::PerOp => "raw-io-uring",
            RawWay::All => "raw-io-uring-cancel-all",
        }
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let mut storms = std::mem::replace(&mut self.storms, storm_hist());
        let r = run_storms(dur, hist, &mut storms, || self.storm());
        self.storms = storms;
        r
    }
}

fn storm_extra(storms: &Histogram<u64>, p: &mut super::PeerResult) {
    p.extra.insert(
        "storm_ms_p50".into(),
        json!(quantile_us(storms, 0.5) / 1000.0),
    );
    p.extra
        .insert("storm_ms_min".into(), json!(storms.min() as f64 / 1e6));
    p.extra.insert("storms".into(), json!(storms.len()));
}

/// Runs the cancel workload: quell against both raw io-uring cancel strategies.
pub fn run(_args: &BenchArgs, s: &Settings) -> Result<Report, CliError> {
    let mut quell = QuellCancel::new(s)?;
    let backend = quell.backend().to_string();
    let mut per_op = RawCancel::new(RawWay::PerOp, s.depth)?;
    let mut all = RawCancel::new(RawWay::All, s.depth)?;
    let mut sums = run_rounds(&mut [&mut quell, &mut per_op, &mut all], s, &mut || Ok(()))?;
    let mut all_r = sums.pop().expect("three contenders").result();
    let mut per_op_r = sums.pop().expect("three contenders").result();
    let mut quell_r = sums.pop().expect("three contenders").result();
    // The warm-up storms are in these histograms too: they are storms like the others.
    storm_extra(&quell.storms, &mut quell_r);
    storm_extra(&per_op.storms, &mut per_op_r);
    storm_extra(&all.storms, &mut all_r);
    let mut extra = common_extra(s);
    // The fastest storm of each: what a quiet machine gives (others' load only ever
    // slows a storm down), as a throughput ratio like `ratio`.
    let qmin = quell.storms.min().max(1) as f64;
    extra.insert(
        "ratio_min_storm".into(),
        json!({
            "raw-io-uring": (per_op.storms.min() as f64 / qmin * 1000.0).round() / 1000.0,
            "raw-io-uring-cancel-all": (all.storms.min() as f64 / qmin * 10.0).round() / 10.0,
        }),
    );
    extra.insert("pending_reads".into(), json!(STORM));
    extra.insert("unit".into(), json!("one cancellation reaped"));
    extra.insert(
        "latency".into(),
        json!("storm time / pending reads (storm_ms_* per contender)"),
    );
    extra.insert(
        "goal".into(),
        json!({"raw-io-uring": ">= 0.83", "raw-io-uring-cancel-all": ">= 40"}),
    );
    Ok(Report {
        workload: "cancel",
        backend,
        quell: quell_r,
        peers: vec![per_op_r, all_r],
        skipped: Vec::new(),
        extra,
    })
}
