//! The tokio peers of the `read` workload (DESIGN.md §7 names):
//!
//! * `tokio-spawn-blocking`: a multi-thread runtime (default workers) where `depth`
//!   tasks each loop `spawn_blocking(pread of one block at a random offset)`;
//! * `tokio-fs`: the same tasks, each with its own `tokio::fs::File`, doing
//!   `seek` + `read_exact` of one block.
//!
//! Both read the same file with the same block size, depth and duration as quell.
//! Offsets come from the same generator ([`Rng`](super::read::Rng)): task `i` draws from a stream
//! seeded with `seed + i` (a shared stream would need a lock between the tasks).
//! Latency is per op, from the task issuing it to the task seeing its result. The
//! loops allocate (tokio boxes every blocking job); that is part of what is measured.

use super::lanes::{lanes, run_lanes, Lane};
use super::{Contender, Sample};
use crate::CliError;
use hdrhistogram::Histogram;
use std::os::fd::RawFd;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}").into())
}

/// `tokio-spawn-blocking`: `depth` tasks, each looping `spawn_blocking(pread)`.
pub struct TokioSpawnBlocking {
    rt: tokio::runtime::Runtime,
    lanes: Vec<Lane>,
    fd: RawFd,
    nblocks: u64,
    block: u32,
}

impl TokioSpawnBlocking {
    /// `depth` tasks reading `block`-byte blocks at random from the first `nblocks` of `fd`.
    pub fn new(
        fd: RawFd,
        nblocks: u64,
        block: u32,
        depth: u32,
        seed: u64,
    ) -> Result<TokioSpawnBlocking, CliError> {
        Ok(TokioSpawnBlocking {
            rt: multi_thread_runtime()?,
            lanes: lanes(depth, block, seed),
            fd,
            nblocks,
            block,
        })
    }
}

impl Contender for TokioSpawnBlocking {
    fn name(&self) -> &'static str {
        "tokio-spawn-blocking"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (fd, nblocks, block) = (self.fd, self.nblocks, self.block);
        run_lanes(
            &self.rt,
            &mut self.lanes,
            dur,
            hist,
            move |mut lane, deadline| async move {
                let mut ops = 0u64;
                while let Some((t0, off)) = lane.next_op(deadline, nblocks, block) {
                    let mut buf = std::mem::take(&mut lane.buf);
                    let joined = tokio::task::spawn_blocking(move || {
                        // SAFETY: buf is a live, writable allocation of buf.len() bytes;
                        // fd stays open for the whole benchmark run.
                        let n = unsafe {
                            libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t)
                        };
                        (buf, n)
                    })
                    .await;
                    let (buf, n) = match joined {
                        Ok(r) => r,
                        Err(e) => return (lane, ops, Some(format!("spawn_blocking: {e}"))),
                    };
                    lane.buf = buf;
                    lane.took(t0);
                    ops += 1;
                    if n != block as isize {
                        let why = if n < 0 {
                            format!("pread failed: {}", std::io::Error::last_os_error())
                        } else {
                            format!("pread was short: {n} of {block} bytes")
                        };
                        return (lane, ops, Some(why));
                    }
                }
                (lane, ops, None)
            },
        )
    }
}

/// `tokio-fs`: `depth` tasks, each with its own `tokio::fs::File`, looping
/// `seek` + `read_exact` of one block.
pub struct TokioFs {
    rt: tokio::runtime::Runtime,
    lanes: Vec<Lane<tokio::fs::File>>,
    nblocks: u64,
    block: u32,
}

impl TokioFs {
    /// `depth` tasks, each opening `path` once, reading `block`-byte blocks at random.
    pub fn new(
        path: &std::path::Path,
        nblocks: u64,
        block: u32,
        depth: u32,
        seed: u64,
    ) -> Result<TokioFs, CliError> {
        let mut lanes = Vec::with_capacity(depth as usize);
        for i in 0..depth as u64 {
            let f = std::fs::File::open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            lanes.push(Lane::new(seed, i, block, tokio::fs::File::from_std(f)));
        }
        Ok(TokioFs {
            rt: multi_thread_runtime()?,
            lanes,
            nblocks,
            block,
        })
    }
}

impl Contender for TokioFs {
    fn name(&self) -> &'static str {
        "tokio-fs"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (nblocks, block) = (self.nblocks, self.block);
        run_lanes(
            &self.rt,
            &mut self.lanes,
            dur,
            hist,
            move |mut lane, deadline| async move {
                let mut ops = 0u64;
                let mut err = None;
                while let Some((t0, off)) = lane.next_op(deadline, nblocks, block) {
                    let r = async {
                        lane.extra.seek(std::io::SeekFrom::Start(off)).await?;
                        lane.extra.read_exact(&mut lane.buf).await
                    }
                    .await;
                    lane.took(t0);
                    ops += 1;
                    if let Err(e) = r {
                        err = Some(format!("tokio-fs read: {e}"));
                        break;
                    }
                }
                (lane, ops, err)
            },
        )
    }
}
