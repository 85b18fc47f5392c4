//! The per-task scaffold of the tokio `read` contenders (the tokio peers and quell
//! through tokio): each of `depth` tasks carries a [`Lane`] through a round, and
//! [`run_lanes`] spawns them, waits for them and merges what they hand back.
//!
//! Lanes outlive rounds so that buffers, offset streams and (for `tokio-fs`) open files
//! are made once, outside the measured time.

use super::read::Rng;
use super::{new_histogram, record, Sample};
use crate::CliError;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// What one task carries between rounds.
pub struct Lane<X = ()> {
    /// Task `i`'s offsets: a stream seeded with `seed + i`, as for every contender
    /// (a shared stream would need a lock between the tasks).
    pub rng: Rng,
    /// One block.
    pub buf: Vec<u8>,
    /// Per-op latencies of this round, merged by [`run_lanes`].
    pub hist: Histogram<u64>,
    /// Whatever else the contender's task keeps (`tokio-fs`: its file).
    pub extra: X,
}

/// What a task hands back at the end of a round: its lane, the ops it finished and
/// the failure that stopped it, if any.
pub type LaneResult<X = ()> = (Lane<X>, u64, Option<String>);

impl<X> Lane<X> {
    /// Lane `i` of a run seeded with `seed`, with a `block`-byte buffer.
    pub fn new(seed: u64, i: u64, block: u32, extra: X) -> Lane<X> {
        Lane {
            rng: Rng::new(seed.wrapping_add(i)),
            buf: vec![0u8; block as usize],
            hist: new_histogram(),
            extra,
        }
    }
}

impl<X> Lane<X> {
    /// The next op of a task's loop: when it starts and the offset of the block to
    /// read (one of the first `nblocks` blocks of `block` bytes), or `None` once the
    /// round's `deadline` has passed.
    pub fn next_op(
        &mut self,
        deadline: Instant,
        nblocks: u64,
        block: u32,
    ) -> Option<(Instant, u64)> {
        let t0 = Instant::now();
        (t0 < deadline).then(|| (t0, self.rng.below(nblocks) * block as u64))
    }

    /// Records the latency of the op that started at `t0` (the task has its result).
    pub fn took(&mut self, t0: Instant) {
        record(&mut self.hist, t0.elapsed().as_nanos() as u64);
    }
}

/// `depth` lanes with nothing extra.
pub fn lanes(depth: u32, block: u32, seed: u64) -> Vec<Lane> {
    (0..depth as u64)
        .map(|i| Lane::new(seed, i, block, ()))
        .collect()
}

/// Runs one round of a [`Contender`](super::Contender): every lane in its own task on `rt`, each given the
/// round's deadline, until `dur` has passed. The lanes come back into `lanes` and their
/// latencies into `hist`; the first failure a task reports (or a task that panicked)
/// fails the round.
pub fn run_lanes<X, F, Fut>(
    rt: &tokio::runtime::Runtime,
    lanes: &mut Vec<Lane<X>>,
    dur: Duration,
    hist: &mut Histogram<u64>,
    body: F,
) -> Result<Sample, CliError>
where
    X: Send + 'static,
    F: Fn(Lane<X>, Instant) -> Fut,
    Fut: std::future::Future<Output = LaneResult<X>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + dur;
    let taken: Vec<Lane<X>> = std::mem::take(lanes);
    let results = rt.block_on(async {
        let handles: Vec<_> = taken
            .into_iter()
            .map(|l| tokio::spawn(body(l, deadline)))
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await);
        }
        out
    });
    let elapsed = start.elapsed();
    let mut ops = 0u64;
    let mut failure = None;
    for r in results {
        match r {
            Ok((mut lane, n, err)) => {
                ops += n;
                hist.add(&lane.hist)
                    .map_err(|e| format!("histogram: {e}"))?;
                lane.hist.reset();
                lanes.push(lane);
                failure = failure.or(err);
            }
            Err(e) => failure = failure.or(Some(format!("tokio task: {e}"))),
        }
    }
    match failure {
        Some(f) => Err(f.into()),
        None => Ok(Sample { ops, elapsed }),
    }
}
