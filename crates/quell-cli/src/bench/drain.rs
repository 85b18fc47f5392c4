//! The `drain` workload: 1,000 reads in flight on a socket and 10,000 more queued in
//! quell behind them (`max_in_flight` = 1,000), all in one group. Two measurements,
//! each repeated for the run's duration, a fresh group each time:
//!
//! * `drain`: `Ring::drain(group)` (the 10,000 queued are canceled on the spot), then
//!   the in-flight reads are fed one byte each by a single `write` of 1,000 bytes;
//!   timed until the group is drained and every completion is taken;
//! * `drain-cancel`: `Ring::cancel_group(group)`; timed until all 11,000 completions
//!   are taken.
//!
//! An op's latency is from the `drain`/`cancel` call to its completion being taken; the
//! throughput is ops resolved per second. Every outcome is checked (10,000 `Canceled` +
//! 1,000 `Done(1)` for drain, 11,000 `Canceled` for cancel).
//!
//! Peer `tokio-tasks`: the same shape in tokio (current-thread runtime): 11,000 tasks,
//! each taking one of 1,000 semaphore permits and then reading one byte from a shared
//! `UnixStream`. Drain = close the semaphore (waiting tasks give up) and write 1,000
//! bytes; cancel = abort every task. Timed until every task has ended.

use super::{common_extra, new_histogram, record, BenchArgs, PeerResult, Report, Settings};
use crate::CliError;
use hdrhistogram::Histogram;
use quell::{GroupId, GroupOptions, Op, Outcome, Ring};
use serde_json::{json, Map};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Reads in flight.
pub const IN_FLIGHT: u32 = 1_000;
/// Reads queued behind them.
pub const QUEUED: u32 = 10_000;
const TOTAL: usize = (IN_FLIGHT + QUEUED) as usize;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Drain,
    Cancel,
}

/// Times of every cycle and the latencies of every op.
struct Series {
    cycles: Vec<Duration>,
    hist: Histogram<u64>,
}

impl Series {
    fn new() -> Series {
        Series {
            cycles: Vec::new(),
            hist: new_histogram(),
        }
    }

    fn result(&self, name: &str) -> PeerResult {
        let rates: Vec<f64> = self
            .cycles
            .iter()
            .map(|d| TOTAL as f64 / d.as_secs_f64().max(1e-9))
            .collect();
        let times: Vec<f64> = self.cycles.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        super::capture::note(name, &self.hist);
        let mut extra = Map::new();
        extra.insert("cycles".into(), json!(self.cycles.len()));
        extra.insert(
            "median_cycle_us".into(),
            json!((super::median(&times) * 10.0).round() / 10.0),
        );
        PeerResult {
            name: name.to_string(),
            ops_per_sec: super::median(&rates),
            p50_us: super::quantile_us(&self.hist, 0.5),
            p99_us: super::quantile_us(&self.hist, 0.99),
            extra,
        }
    }
}

/// One quell cycle: fill, then drain or cancel, timed.
fn quell_cycle(ring: &mut Ring, phase: Phase, series: &mut Series) -> Result<(), CliError> {
    let (r, mut w) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    for i in 0..TOTAL {
        ring.submit(
            Op::read(r.as_raw_fd(), vec![0u8; 1])
                .group(g)
                .user_data(i as u64),
        )
        .map_err(|e| format!("quell submit: {e}"))?;
    }
    // Let the first 1,000 reach the kernel (or the poller) before the clock starts.
    ring.poll()?;
    let in_flight = ring.group_stats(g)?.in_flight;
    if in_flight != IN_FLIGHT {
        return Err(format!("expected {IN_FLIGHT} reads in flight, found {in_flight}").into());
    }
    let t0 = Instant::now();
    match phase {
        Phase::Drain => {
            ring.drain(g)?;
            w.write_all(&[7u8; IN_FLIGHT as usize])
                .map_err(|e| format!("feeding the reads: {e}"))?;
        }
        Phase::Cancel => {
            ring.cancel_group(g)?;
        }
    }
    let (mut done, mut canceled, mut seen) = (0usize, 0usize, 0usize);
    while seen < TOTAL {
        ring.wait(1, Some(Duration::from_secs(10)))?;
        let now = Instant::now();
        let mut got = 0;
        while let Some(c) = ring.next_completion() {
            record(&mut series.hist, (now - t0).as_nanos() as u64);
            match c.outcome {
                Outcome::Done(1) => done += 1,
                Outcome::Canceled { transferred: 0 } => canceled += 1,
                other => return Err(format!("drain: unexpected outcome {other}").into()),
            }
            got += 1;
        }
        if got == 0 && t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("drain: only {seen} of {TOTAL} ops resolved after 10 s").into());
        }
        seen += got;
    }
    series.cycles.push(t0.elapsed());
    let want = match phase {
        Phase::Drain => (IN_FLIGHT as usize, QUEUED as usize),
        Phase::Cancel => (0, TOTAL),
    };
    if (done, canceled) != want {
        return Err(format!(
            "drain: {done} done + {canceled} canceled, expected {} + {}",
            want.0, want.1
        )
        .into());
    }
    ring.remove_group(g)?;
    Ok(())
}

/// One tokio cycle of the same shape.
fn tokio_cycle(
    rt: &tokio::runtime::Runtime,
    phase: Phase,
    series: &mut Series,
) -> Result<(), CliError> {
    use std::sync::Arc;
    let (r, mut w) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    r.set_nonblocking(true)?;
    let elapsed = rt.block_on(async {
        let r = Arc::new(tokio::net::UnixStream::from_std(r)?);
        let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT as usize));
        let tasks: Vec<_> = (0..TOTAL)
            .map(|_| {
                let (r, sem) = (r.clone(), sem.clone());
                tokio::spawn(async move {
                    let Ok(_permit) = sem.acquire().await else {
                        return Ok(false);
                    };
                    let mut b = [0u8; 1];
                    loop {
                        r.readable().await?;
                        match r.try_read(&mut b) {
                            Ok(_) => return Ok::<bool, std::io::Error>(true),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(e) => return Err(e),
                        }
                    }
                })
            })
            .collect();
        // Let every task start: 1,000 reading, 10,000 waiting for a permit.
        while sem.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        match phase {
            Phase::Drain => {
                sem.close();
                w.write_all(&[7u8; IN_FLIGHT as usize])?;
            }
            Phase::Cancel => tasks.iter().for_each(|t| t.abort()),
        }
        let mut read = 0;
        for t in tasks {
            let r = t.await;
            record(&mut series.hist, t0.elapsed().as_nanos() as u64);
            if let Ok(Ok(true)) = r {
                read += 1;
            }
        }
        let el = t0.elapsed();
        let want = if phase == Phase::Drain { IN_FLIGHT } else { 0 };
        if read != want {
            return Err(std::io::Error::other(format!(
                "tokio: {read} tasks read a byte, expected {want}"
            )));
        }
        Ok::<Duration, std::io::Error>(el)
    })?;
    series.cycles.push(elapsed);
    Ok(())
}

fn report(
    workload: &'static str,
    backend: &str,
    quell: &Series,
    tokio: &Series,
    s: &Settings,
    what: &str,
) -> Report {
    let mut extra = common_extra(s);
    extra.insert("in_flight".into(), json!(IN_FLIGHT));
    extra.insert("queued".into(), json!(QUEUED));
    extra.insert("measures".into(), json!(what));
    extra.insert(
        "latency".into(),
        json!("per op, from the drain/cancel call to its completion taken"),
    );
    Report {
        workload,
        backend: backend.to_string(),
        quell: quell.result("quell"),
        peers: vec![tokio.result("tokio-tasks")],
        skipped: Vec::new(),
        extra,
    }
}

/// Runs the drain workload: cycles of drain and of cancel, quell and tokio alternating,
/// for the run's duration (at least `rounds` cycles each).
pub fn run(_args: &BenchArgs, s: &Settings) -> Result<Vec<Report>, CliError> {
    let mut ring = Ring::builder()
        .backend(s.backend.choice())
        .capacity(TOTAL + 64)
        .max_in_flight(IN_FLIGHT)
        .sq_entries(1024)
        .build()
        .map_err(|e| {
            format!(
                "cannot build a quell ring on the {} backend: {e}",
                s.backend.name()
            )
        })?;
    let backend = ring.backend().name().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let (mut qd, mut qc, mut td, mut tc) =
        (Series::new(), Series::new(), Series::new(), Series::new());
    // One untimed warm-up cycle of each.
    quell_cycle(&mut ring, Phase::Drain, &mut Series::new())?;
    tokio_cycle(&rt, Phase::Drain, &mut Series::new())?;
    let start = Instant::now();
    let budget = Duration::from_secs_f64(s.seconds);
    let mut n = 0;
    while n < s.rounds || start.elapsed() < budget {
        quell_cycle(&mut ring, Phase::Drain, &mut qd)?;
        tokio_cycle(&rt, Phase::Drain, &mut td)?;
        quell_cycle(&mut ring, Phase::Cancel, &mut qc)?;
        tokio_cycle(&rt, Phase::Cancel, &mut tc)?;
        n += 1;
        if n >= 1000 {
            break;
        }
    }
    Ok(vec![
        report(
            "drain",
            &backend,
            &qd,
            &td,
            s,
            "drain call to drained (queued canceled, in-flight fed and finished)",
        ),
        report(
            "drain-cancel",
            &backend,
            &qc,
            &tc,
            s,
            "cancel call to all 11,000 completions",
        ),
    ])
}
