//! The `nop` workload: submit a batch of NOPs, wait for the whole batch, take it.
//! It measures the ring's own cost per op (no I/O). Latency is per batch divided by
//! the batch size (a clock read per op would cost as much as the op).

use super::raw::RawNop;
use super::scope::{self, Scope};
use super::{common_extra, record, run_rounds, BenchArgs, Contender, Report, Sample, Settings};
use crate::CliError;
use hdrhistogram::Histogram;
use quell::{Op, Ring};
use serde_json::json;
use std::time::{Duration, Instant};

/// quell running the NOP batch loop.
pub struct QuellNop {
    ring: Ring,
    batch: u32,
    scope: Option<Scope>,
}

impl QuellNop {
    /// A contender on `ring`, `batch` NOPs at a time.
    pub fn new(ring: Ring, batch: u32) -> QuellNop {
        QuellNop {
            ring,
            batch,
            scope: None,
        }
    }

    /// The same loop with every NOP in a nested group and carrying a far deadline.
    pub fn nested_deadline(mut ring: Ring, batch: u32) -> Result<QuellNop, CliError> {
        let scope = Some(Scope::nested(&mut ring)?);
        Ok(QuellNop { ring, batch, scope })
    }
}

impl Contender for QuellNop {
    fn name(&self) -> &'static str {
        if self.scope.is_some() {
            scope::NAME
        } else {
            "quell"
        }
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let batch = self.batch as usize;
        let start = Instant::now();
        let deadline = start + dur;
        let mut ops = 0u64;
        let mut t0 = start;
        loop {
            for _ in 0..batch {
                self.ring
                    .submit(Scope::apply(self.scope, Op::nop()))
                    .map_err(|e| format!("quell submit: {e}"))?;
            }
            let mut got = 0;
            while got < batch {
                self.ring
                    .wait(batch - got, None)
                    .map_err(|e| format!("quell wait: {e}"))?;
                while let Some(c) = self.ring.next_completion() {
                    if !c.outcome.is_done() {
                        return Err(format!("quell nop ended {}", c.outcome).into());
                    }
                    got += 1;
                }
            }
            let t1 = Instant::now();
            record(hist, (t1 - t0).as_nanos() as u64 / batch as u64);
            ops += batch as u64;
            t0 = t1;
            if t1 >= deadline {
                return Ok(Sample {
                    ops,
                    elapsed: t1 - start,
                });
            }
        }
    }
}

/// Runs the nop workload: quell against the raw io-uring loop.
pub fn run(_args: &BenchArgs, s: &Settings) -> Result<Report, CliError> {
    let ring = s.quell_ring()?;
    let backend = ring.backend().name().to_string();
    let mut quell = QuellNop::new(ring, s.batch);
    let mut raw = RawNop::new(s.depth, s.batch)?;
    let mut scoped = QuellNop::nested_deadline(s.quell_ring()?, s.batch)?;
    let mut sums = run_rounds(&mut [&mut quell, &mut raw, &mut scoped], s, &mut || Ok(()))?;
    let scoped_sum = sums.pop().expect("three contenders");
    let raw_sum = sums.pop().expect("three contenders");
    let quell_sum = sums.pop().expect("three contenders");
    let mut extra = common_extra(s);
    extra.insert("latency".into(), json!("per batch / batch size"));
    extra.insert("raw_setup".into(), json!(raw.setup()));
    Ok(Report {
        workload: "nop",
        backend,
        quell: quell_sum.result(),
        peers: vec![raw_sum.result(), scoped_sum.result()],
        skipped: Vec::new(),
        extra,
    })
}
