//! The `raw-io-uring` peers: the same workloads written directly on the `io-uring`
//! crate, as a careful user would (one `split()` of the ring, SQ/CQ synced once per
//! batch, one `io_uring_enter` per batch, no allocation). They set the ring up with
//! the same flags as quell's backend (`COOP_TASKRUN | TASKRUN_FLAG`, falling back to
//! none), so the difference measured is quell's own bookkeeping.

use super::read::Rng;
use super::{record, Contender, Sample};
use crate::CliError;
use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Builds a raw ring with quell's flags where the kernel has them. Returns the ring
/// and a description of its setup.
pub fn raw_ring(entries: u32) -> Result<(IoUring, &'static str), CliError> {
    let entries = entries.clamp(8, 32768).next_power_of_two();
    match IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        Ok(r) => Ok((r, "coop_taskrun+taskrun_flag")),
        Err(_) => IoUring::new(entries)
            .map(|r| (r, "default"))
            .map_err(|e| format!("raw io_uring setup failed: {e}").into()),
    }
}

/// `io_uring_enter` waiting for `want` completions, retrying on EINTR.
#[inline]
fn enter(sub: &io_uring::Submitter<'_>, want: usize) -> Result<(), CliError> {
    loop {
        match sub.submit_and_wait(want) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(format!("raw io_uring_enter: {e}").into()),
        }
    }
}

/// The raw NOP batch loop.
pub struct RawNop {
    ring: IoUring,
    batch: u32,
    setup: &'static str,
}

impl RawNop {
    /// A raw ring with `depth` submission entries, running batches of `batch` NOPs.
    pub fn new(depth: u32, batch: u32) -> Result<RawNop, CliError> {
        let (ring, setup) = raw_ring(depth.max(batch))?;
        Ok(RawNop { ring, batch, setup })
    }

    /// How the ring was set up.
    pub fn setup(&self) -> &'static str {
        self.setup
    }
}

impl Contender for RawNop {
    fn name(&self) -> &'static str {
        "raw-io-uring"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let batch = self.batch as usize;
        let nop = opcode::Nop::new().build();
        let (sub, mut sq, mut cq) = self.ring.split();
        let start = Instant::now();
        let deadline = start + dur;
        let mut ops = 0u64;
        let mut t0 = start;
        loop {
            for i in 0..batch {
                // SAFETY: a NOP points to no memory.
                unsafe { sq.push(&nop.clone().user_data(i as u64)) }
                    .map_err(|_| "raw io_uring: submission queue full")?;
            }
            sq.sync();
            enter(&sub, batch)?;
            sq.sync(); // see the kernel's new head: the slots are free again
            let mut got = 0;
            loop {
                cq.sync();
                for cqe in &mut cq {
                    if cqe.result() < 0 {
                        return Err(format!("raw nop failed: {}", cqe.result()).into());
                    }
                    got += 1;
                }
                if got >= batch {
                    break;
                }
                enter(&sub, batch - got)?;
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

/// The raw random-read loop: `depth` reads of `block` bytes in flight, each refilled
/// as soon as its completion is seen.
pub struct RawRead {
    // Declared first so it is dropped (and the ring closed) before the buffers; every
    // run also drains its reads before returning.
    ring: IoUring,
    bufs: Vec<Vec<u8>>,
    submitted_at: Vec<Instant>,
    fd: RawFd,
    nblocks: u64,
    block: u32,
    batch: u32,
    rng: Rng,
    setup: &'static str,
}

impl RawRead {
    /// Reads `block`-byte blocks at random from the first `nblocks` blocks of `fd`.
    pub fn new(
        fd: RawFd,
        nblocks: u64,
        block: u32,
        depth: u32,
        batch: u32,
        seed: u64,
    ) -> Result<RawRead, CliError> {
        let (ring, setup) = raw_ring(depth)?;
        Ok(RawRead {
            ring,
            bufs: (0..depth).map(|_| vec![0u8; block as usize]).collect(),
            submitted_at: vec![Instant::now(); depth as usize],
            fd,
            nblocks,
            block,
            batch,
            rng: Rng::new(seed),
            setup,
        })
    }

    /// How the ring was set up.
    pub fn setup(&self) -> &'static str {
        self.setup
    }
}

impl Contender for RawRead {
    fn name(&self) -> &'static str {
        "raw-io-uring"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let depth = self.bufs.len();
        let block = self.block;
        let (sub, mut sq, mut cq) = self.ring.split();
        let fd = types::Fd(self.fd);
        let start = Instant::now();
        let deadline = start + dur;
        for (i, buf) in self.bufs.iter_mut().enumerate() {
            let off = self.rng.below(self.nblocks) * block as u64;
            let e = opcode::Read::new(fd, buf.as_mut_ptr(), block)
                .offset(off)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffer lives in self and is not touched until its CQE is reaped
            // (every run drains all its reads before returning).
            unsafe { sq.push(&e) }.map_err(|_| "raw io_uring: submission queue full")?;
            self.submitted_at[i] = start;
        }
        sq.sync();
        let mut in_flight = depth;
        let mut ops = 0u64;
        let mut failure: Option<String> = None;
        let mut stop = false;
        while in_flight > 0 {
            if let Err(e) = enter(&sub, (self.batch as usize).min(in_flight)) {
                // Cannot wait any more: the kernel may still write the buffers, so leak them.
                std::mem::forget(std::mem::take(&mut self.bufs));
                return Err(e);
            }
            sq.sync();
            cq.sync();
            let now = Instant::now();
            stop |= now >= deadline;
            for cqe in &mut cq {
                let i = cqe.user_data() as usize;
                let res = cqe.result();
                if res != block as i32 && failure.is_none() {
                    failure = Some(if res < 0 {
                        format!(
                            "raw read failed: {}",
                            std::io::Error::from_raw_os_error(-res)
                        )
                    } else {
                        format!("raw read was short: {res} of {block} bytes")
                    });
                    stop = true;
                }
                record(hist, (now - self.submitted_at[i]).as_nanos() as u64);
                ops += 1;
                if stop {
                    in_flight -= 1;
                    continue;
                }
                let off = self.rng.below(self.nblocks) * block as u64;
                let e = opcode::Read::new(fd, self.bufs[i].as_mut_ptr(), block)
                    .offset(off)
                    .build()
                    .user_data(i as u64);
                // SAFETY: as above; buffer i has just been handed back by its CQE.
                if unsafe { sq.push(&e) }.is_err() {
                    in_flight -= 1;
                    failure.get_or_insert_with(|| "raw io_uring: submission queue full".into());
                    stop = true;
                    continue;
                }
                self.submitted_at[i] = now;
            }
            sq.sync();
        }
        if let Some(f) = failure {
            return Err(f.into());
        }
        Ok(Sample {
            ops,
            elapsed: start.elapsed(),
        })
    }
}

/// `raw-uring-tokio` in the `pingpong` workload: a raw ring (quell's flags) driven from
/// a spawned task on a current-thread tokio runtime, its descriptor registered with
/// tokio's reactor through `AsyncFd`. Each round trip pushes the write and the read,
/// submits both with one `io_uring_enter` (no wait), and takes the CQEs when tokio
/// reports the ring readable.
///
/// This is the least any library can do to park an io_uring ring in a stock tokio
/// runtime: no op table, no cancellation, no buffer ownership. It measures what that
/// way of parking costs against tokio's own `UnixStream`.
pub struct RawUringTokioPingPong {
    rt: tokio::runtime::Runtime,
    ring: Option<IoUring>,
    echo: super::pingpong::Echo,
}

impl RawUringTokioPingPong {
    /// Builds the runtime, the ring (it needs io_uring) and an echo thread.
    pub fn new() -> Result<RawUringTokioPingPong, CliError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let (ring, _) = raw_ring(8)?;
        Ok(RawUringTokioPingPong {
            rt,
            ring: Some(ring),
            echo: super::pingpong::Echo::new()?,
        })
    }
}

impl Contender for RawUringTokioPingPong {
    fn name(&self) -> &'static str {
        "raw-uring-tokio"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        use std::os::fd::AsRawFd;
        let mut ring = self.ring.take().ok_or("raw-uring-tokio: no ring")?;
        let fd = self.echo.stream().as_raw_fd();
        let mut h = std::mem::replace(hist, super::new_histogram());
        let task = self.rt.spawn(async move {
            let out = ping_pong_on_tokio(&mut ring, fd, dur, &mut h).await;
            (ring, h, out)
        });
        let (ring, h, out) = self
            .rt
            .block_on(task)
            .map_err(|e| format!("raw-uring-tokio task: {e}"))?;
        self.ring = Some(ring);
        *hist = h;
        out
    }
}

/// The round trips of [`RawUringTokioPingPong`]. Every op it submits has completed when
/// it returns, even on error (it waits for the CQEs still owed before returning), so
/// the buffers outlive the kernel's use of them.
async fn ping_pong_on_tokio(
    ring: &mut IoUring,
    fd: RawFd,
    dur: Duration,
    hist: &mut Histogram<u64>,
) -> Result<Sample, CliError> {
    use super::pingpong::MSG;
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the ring's descriptor is open while `ring` lives, which outlasts this borrow.
    let ring_fd = unsafe { BorrowedFd::borrow_raw(ring.as_raw_fd()) };
    // tokio gets its own duplicate of the ring's descriptor, closed with the AsyncFd.
    let dup = ring_fd
        .try_clone_to_owned()
        .map_err(|e| format!("raw-uring-tokio dup: {e}"))?;
    // SAFETY: the AsyncFd owns `dup`, so the number stays open and names the ring for
    // the AsyncFd's whole life.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE)
    }
    .map_err(|e| format!("raw-uring-tokio AsyncFd: {}", std::io::Error::from(e)))?;
    let wbuf = [0x5au8; MSG];
    let mut rbuf = vec![0u8; MSG];
    let start = Instant::now();
    let deadline = start + dur;
    let mut ops = 0u64;
    let mut failure: Option<String> = None;
    while failure.is_none() {
        let t0 = Instant::now();
        if t0 >= deadline {
            break;
        }
        let w = opcode::Write::new(types::Fd(fd), wbuf.as_ptr(), MSG as u32)
            .build()
            .user_data(0);
        let r = opcode::Recv::new(types::Fd(fd), rbuf.as_mut_ptr(), MSG as u32)
            .flags(libc::MSG_WAITALL)
            .build()
            .user_data(1);
        // SAFETY: both buffers live until their CQEs are taken below (the loop does not
        // leave while `pending > 0`); the queue has room for two (it is empty here).
        unsafe {
            let mut sq = ring.submission();
            sq.push(&w).map_err(|_| "raw-uring-tokio: SQ full")?;
            sq.push(&r).map_err(|_| "raw-uring-tokio: SQ full")?;
        }
        let mut pending = 2;
        let mut submitted = false;
        while pending > 0 {
            if !submitted {
                match ring.submit() {
                    Ok(_) => submitted = true,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    // Nothing was handed over: nothing is owed.
                    Err(e) => return Err(format!("raw io_uring_enter: {e}").into()),
                }
            }
            let before = pending;
            for cqe in ring.completion() {
                pending -= 1;
                if cqe.result() != MSG as i32 && failure.is_none() {
                    failure = Some(format!(
                        "raw-uring-tokio {} ended {}",
                        if cqe.user_data() == 0 {
                            "write"
                        } else {
                            "read"
                        },
                        cqe.result()
                    ));
                }
            }
            if pending == 0 || pending < before {
                continue;
            }
            match afd.readable().await {
                Ok(mut g) => {
                    if ring.completion().is_empty() {
                        g.clear_ready();
                    }
                }
                Err(e) => {
                    failure.get_or_insert(format!("raw-uring-tokio readiness: {e}"));
                    // Still owed: wait for the kernel in the ring itself.
                    let _ = ring.submit_and_wait(pending);
                }
            }
        }
        record(hist, t0.elapsed().as_nanos() as u64);
        ops += 1;
    }
    match failure {
        Some(f) => Err(f.into()),
        None => Ok(Sample {
            ops,
            elapsed: start.elapsed(),
        }),
    }
}
