//! The completion-based runtime peers of the `read` workload:
//!
//! * `tokio-uring`: tokio-uring's current-thread runtime, `depth` tasks each looping
//!   `File::read_at` of one block at a random offset;
//! * `monoio`: monoio's io_uring runtime, the same tasks.
//!
//! Both share one open file among the tasks (both runtimes' `read_at` takes `&self`),
//! read the same block size at the same depth for the same time as quell, and draw
//! offsets as the tokio peers do (task `i` from a generator seeded with `seed + i`).
//! Latency is per op, from the task issuing the read to the task seeing its result.
//! Each round opens the file afresh inside the runtime (opening costs one op per round).

use super::read::Rng;
use super::{new_histogram, record, Contender, Sample};
use crate::CliError;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What one task hands back: its generator, buffer, latencies, ops and any failure.
type Lane = (Rng, Vec<u8>, Histogram<u64>, u64, Option<String>);

/// Settings shared by both runtimes' loops.
struct Shape {
    path: PathBuf,
    nblocks: u64,
    block: u32,
    lanes: Vec<(Rng, Vec<u8>, Histogram<u64>)>,
}

impl Shape {
    fn new(path: &std::path::Path, nblocks: u64, block: u32, depth: u32, seed: u64) -> Shape {
        Shape {
            path: path.to_path_buf(),
            nblocks,
            block,
            lanes: (0..depth as u64)
                .map(|i| {
                    (
                        Rng::new(seed.wrapping_add(i)),
                        vec![0u8; block as usize],
                        new_histogram(),
                    )
                })
                .collect(),
        }
    }

    /// Merges the lanes' results back, returning the round's sample.
    fn collect(
        &mut self,
        results: Vec<Lane>,
        start: Instant,
        hist: &mut Histogram<u64>,
    ) -> Result<Sample, CliError> {
        let elapsed = start.elapsed();
        let mut ops = 0;
        let mut failure = None;
        for (rng, buf, mut h, n, err) in results {
            ops += n;
            hist.add(&h).map_err(|e| format!("histogram: {e}"))?;
            h.reset();
            self.lanes.push((rng, buf, h));
            failure = failure.or(err);
        }
        match failure {
            Some(f) => Err(f.into()),
            None => Ok(Sample { ops, elapsed }),
        }
    }
}

fn check(r: std::io::Result<usize>, block: u32) -> Option<String> {
    match r {
        Ok(n) if n == block as usize => None,
        Ok(n) => Some(format!("read was short: {n} of {block} bytes")),
        Err(e) => Some(format!("read failed: {e}")),
    }
}

/// One task's loop, the same on both runtimes: random block reads through `read`
/// (the runtime's `File::read_at`) until `deadline`, each timed from issue to result.
async fn lane<F, Fut>(
    (mut rng, mut buf, mut h): (Rng, Vec<u8>, Histogram<u64>),
    nblocks: u64,
    block: u32,
    deadline: Instant,
    read: F,
) -> Lane
where
    F: Fn(Vec<u8>, u64) -> Fut,
    Fut: std::future::Future<Output = (std::io::Result<usize>, Vec<u8>)>,
{
    let mut ops = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= deadline {
            return (rng, buf, h, ops, None);
        }
        let off = rng.below(nblocks) * block as u64;
        let (r, b) = read(buf, off).await;
        buf = b;
        record(&mut h, t0.elapsed().as_nanos() as u64);
        ops += 1;
        if let Some(e) = check(r, block) {
            return (rng, buf, h, ops, Some(e));
        }
    }
}

/// `tokio-uring`: `depth` tasks on tokio-uring's runtime.
pub struct TokioUring {
    rt: tokio_uring::Runtime,
    shape: Shape,
}

impl TokioUring {
    /// Builds the runtime (it needs io_uring).
    pub fn new(
        path: &std::path::Path,
        nblocks: u64,
        block: u32,
        depth: u32,
        seed: u64,
    ) -> Result<TokioUring, CliError> {
        let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(depth.max(32)))
            .map_err(|e| format!("tokio-uring runtime: {e}"))?;
        Ok(TokioUring {
            rt,
            shape: Shape::new(path, nblocks, block, depth, seed),
        })
    }
}

impl Contender for TokioUring {
    fn name(&self) -> &'static str {
        "tokio-uring"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (nblocks, block) = (self.shape.nblocks, self.shape.block);
        let path = self.shape.path.clone();
        let lanes = std::mem::take(&mut self.shape.lanes);
        let start = Instant::now();
        let deadline = start + dur;
        let results = self.rt.block_on(async move {
            let file = match tokio_uring::fs::File::open(&path).await {
                Ok(f) => Rc::new(f),
                Err(e) => {
                    return lanes
                        .into_iter()
                        .map(|(r, b, h)| (r, b, h, 0, Some(format!("open: {e}"))))
                        .collect::<Vec<Lane>>()
                }
            };
            let tasks: Vec<_> = lanes
                .into_iter()
                .map(|l| {
                    let file = file.clone();
                    tokio_uring::spawn(async move {
                        lane(l, nblocks, block, deadline, |buf, off| {
                            file.read_at(buf, off)
                        })
                        .await
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                match t.await {
                    Ok(l) => out.push(l),
                    Err(e) => out.push((
                        Rng::new(0),
                        vec![0u8; block as usize],
                        new_histogram(),
                        0,
                        Some(format!("tokio-uring task: {e}")),
                    )),
                }
            }
            if let Ok(f) = Rc::try_unwrap(file) {
                let _ = f.close().await;
            }
            out
        });
        self.shape.collect(results, start, hist)
    }
}

/// `monoio`: `depth` tasks on monoio's io_uring runtime.
pub struct Monoio {
    rt: monoio::Runtime<monoio::IoUringDriver>,
    shape: Shape,
}

impl Monoio {
    /// Builds the runtime (it needs io_uring).
    pub fn new(
        path: &std::path::Path,
        nblocks: u64,
        block: u32,
        depth: u32,
        seed: u64,
    ) -> Result<Monoio, CliError> {
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(depth.max(32))
            .build()
            .map_err(|e| format!("monoio runtime: {e}"))?;
        Ok(Monoio {
            rt,
            shape: Shape::new(path, nblocks, block, depth, seed),
        })
    }
}

impl Contender for Monoio {
    fn name(&self) -> &'static str {
        "monoio"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (nblocks, block) = (self.shape.nblocks, self.shape.block);
        let path = self.shape.path.clone();
        let lanes = std::mem::take(&mut self.shape.lanes);
        let start = Instant::now();
        let deadline = start + dur;
        let results = self.rt.block_on(async move {
            let file = match monoio::fs::File::open(&path).await {
                Ok(f) => Rc::new(f),
                Err(e) => {
                    return lanes
                        .into_iter()
                        .map(|(r, b, h)| (r, b, h, 0, Some(format!("open: {e}"))))
                        .collect::<Vec<Lane>>()
                }
            };
            let tasks: Vec<_> = lanes
                .into_iter()
                .map(|l| {
                    let file = file.clone();
                    monoio::spawn(async move {
                        lane(l, nblocks, block, deadline, |buf, off| {
                            file.read_at(buf, off)
                        })
                        .await
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await);
            }
            if let Ok(f) = Rc::try_unwrap(file) {
                let _ = f.close().await;
            }
            out
        });
        self.shape.collect(results, start, hist)
    }
}

/// `tokio-uring` in the `pingpong` workload: the same round trips with tokio-uring's
/// `UnixStream` (`write_all`, then `read` until 64 bytes are back), in a spawned task
/// on tokio-uring's runtime.
///
/// tokio-uring parks the way quell's tokio integration does: its ring descriptor is
/// registered with tokio's reactor, so the thread sleeps in tokio's `epoll_wait`. It
/// keeps no op table beyond a slab and sends no cancel on drop: the nearest library
/// peer for that way of parking (`raw-uring-tokio` is the floor with no library).
pub struct TokioUringPingPong {
    rt: tokio_uring::Runtime,
    echo: super::pingpong::Echo,
}

impl TokioUringPingPong {
    /// Builds the runtime (it needs io_uring) and an echo thread of its own.
    pub fn new() -> Result<TokioUringPingPong, CliError> {
        let rt = tokio_uring::Runtime::new(&tokio_uring::builder())
            .map_err(|e| format!("tokio-uring runtime: {e}"))?;
        Ok(TokioUringPingPong {
            rt,
            echo: super::pingpong::Echo::new()?,
        })
    }
}

impl Contender for TokioUringPingPong {
    fn name(&self) -> &'static str {
        "tokio-uring"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        use super::pingpong::MSG;
        // tokio-uring's stream owns (and closes) its descriptor: each round gets a dup.
        let dup = self
            .echo
            .stream()
            .try_clone()
            .map_err(|e| format!("tokio-uring pingpong dup: {e}"))?;
        let mut h = std::mem::replace(hist, new_histogram());
        let (h, sample, failure) = self
            .rt
            .block_on(async move {
                // A spawned task, as for the other tokio contenders.
                let task = tokio_uring::spawn(async move {
                    let stream = tokio_uring::net::UnixStream::from_std(dup);
                    let mut wbuf = vec![0x5au8; MSG];
                    let mut rbuf = vec![0u8; MSG];
                    let start = Instant::now();
                    let deadline = start + dur;
                    let mut ops = 0u64;
                    let mut failure = None;
                    'rounds: loop {
                        let t0 = Instant::now();
                        if t0 >= deadline {
                            break;
                        }
                        let (r, b) = stream.write_all(wbuf).await;
                        wbuf = b;
                        if let Err(e) = r {
                            failure = Some(format!("tokio-uring write: {e}"));
                            break;
                        }
                        let mut got = 0;
                        while got < MSG {
                            let (r, b) = stream.read(rbuf).await;
                            rbuf = b;
                            match r {
                                Ok(0) => {
                                    failure = Some("tokio-uring read: EOF".to_string());
                                    break 'rounds;
                                }
                                Ok(n) => got += n,
                                Err(e) => {
                                    failure = Some(format!("tokio-uring read: {e}"));
                                    break 'rounds;
                                }
                            }
                        }
                        record(&mut h, t0.elapsed().as_nanos() as u64);
                        ops += 1;
                    }
                    let sample = Sample {
                        ops,
                        elapsed: start.elapsed(),
                    };
                    (h, sample, failure)
                });
                task.await
            })
            .map_err(|e| format!("tokio-uring task: {e}"))?;
        *hist = h;
        match failure {
            Some(f) => Err(f.into()),
            None => Ok(sample),
        }
    }
}
