//! quell through its tokio integration (`quell::tokio`) as a benchmark contender.
//!
//! * `quell-tokio` (read): a current-thread runtime with a quell driver attached;
//!   `depth` tasks each loop `driver.read_at(fd, offset, buf).await` of one block.
//!   The reactor task hands each batch of submissions to the kernel in one call.
//! * `quell-tokio-mt` (read): the same on a multi-thread runtime (default workers),
//!   every task sharing one driver (the `Send` way: one ring behind a lock, run by
//!   whichever worker runs its reactor task; no ring thread).
//! * `quell-tokio-<backend>` (pingpong): the round trips of the ring loop (a write and
//!   an exact read submitted together), awaited as futures on a current-thread runtime.
//!
//! Offsets come from the same generator as the other contenders: task `i` draws from a
//! stream seeded with `seed + i`.

use super::lanes::{lanes, run_lanes, Lane};
use super::pingpong::{Echo, MSG};
use super::{new_histogram, record, Contender, Sample};
use crate::CliError;
use hdrhistogram::Histogram;
use quell::future::Driver;
use quell::{Op, Outcome, Ring};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

fn current_thread() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}").into())
}

/// `quell-tokio`: random block reads through a quell driver on a tokio runtime.
pub struct QuellTokioRead {
    name: &'static str,
    rt: tokio::runtime::Runtime,
    driver: Driver,
    lanes: Vec<Lane>,
    fd: RawFd,
    nblocks: u64,
    block: u32,
}

impl QuellTokioRead {
    /// `depth` tasks reading `block`-byte blocks at random from the first `nblocks`,
    /// on a current-thread runtime, or a multi-thread one if `multi`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        multi: bool,
        ring: Ring,
        fd: RawFd,
        nblocks: u64,
        block: u32,
        depth: u32,
        seed: u64,
    ) -> Result<QuellTokioRead, CliError> {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?
        } else {
            current_thread()?
        };
        let driver = Driver::new(ring);
        rt.block_on(async { quell::tokio::attach(&driver) })
            .map_err(|e| format!("quell tokio reactor: {e}"))?;
        Ok(QuellTokioRead {
            name: if multi {
                "quell-tokio-mt"
            } else {
                "quell-tokio"
            },
            rt,
            driver,
            lanes: lanes(depth, block, seed),
            fd,
            nblocks,
            block,
        })
    }
}

impl Contender for QuellTokioRead {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (fd, nblocks, block) = (self.fd, self.nblocks, self.block);
        let driver = &self.driver;
        run_lanes(
            &self.rt,
            &mut self.lanes,
            dur,
            hist,
            |mut lane, deadline| {
                let d = driver.clone();
                async move {
                    let mut ops = 0u64;
                    while let Some((t0, off)) = lane.next_op(deadline, nblocks, block) {
                        let buf = std::mem::take(&mut lane.buf);
                        let (res, buf) = d.read_at(fd, off, buf).await;
                        lane.buf = buf;
                        lane.took(t0);
                        ops += 1;
                        let why = match res {
                            Ok(n) if n == block as usize => continue,
                            Ok(n) => format!("short read: {n} of {block}"),
                            Err(e) => format!("quell-tokio read: {e}"),
                        };
                        return (lane, ops, Some(why));
                    }
                    (lane, ops, None)
                }
            },
        )
    }
}

/// `quell-tokio-<backend>`: ping-pong round trips awaited through a quell driver.
pub struct QuellTokioPingPong {
    rt: tokio::runtime::Runtime,
    driver: Driver,
    echo: Echo,
    bufs: Option<(Vec<u8>, Vec<u8>)>,
    name: &'static str,
}

impl QuellTokioPingPong {
    /// Round trips on `ring` (its backend names the contender).
    pub fn new(ring: Ring, name: &'static str) -> Result<QuellTokioPingPong, CliError> {
        let rt = current_thread()?;
        let driver = Driver::new(ring);
        rt.block_on(async { quell::tokio::attach(&driver) })
            .map_err(|e| format!("quell tokio reactor: {e}"))?;
        Ok(QuellTokioPingPong {
            rt,
            driver,
            echo: Echo::new()?,
            bufs: Some((vec![0x5a; MSG], vec![0; MSG])),
            name,
        })
    }
}

impl Contender for QuellTokioPingPong {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let fd = self.echo.stream().as_raw_fd();
        let d = self.driver.clone();
        let (mut w, mut r) = self
            .bufs
            .take()
            .ok_or("quell-tokio pingpong: buffers lost")?;
        let mut h = std::mem::replace(hist, new_histogram());
        // In a spawned task, as a server's connection would be: a wake from the reactor
        // task is then a plain run-queue push (waking `block_on`'s own future makes
        // tokio poll its I/O driver once more per wake-up).
        let task = self.rt.spawn(async move {
            let start = Instant::now();
            let deadline = start + dur;
            let mut ops = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let wf = d
                    .submit(Op::write(fd, w).exact())
                    .map_err(|e| format!("quell-tokio submit write: {e}"))?;
                let rf = d
                    .submit(Op::read(fd, r).exact())
                    .map_err(|e| format!("quell-tokio submit read: {e}"))?;
                let cw = wf.await;
                let cr = rf.await;
                for c in [&cw, &cr] {
                    if c.outcome != Outcome::Done(MSG) {
                        return Err(format!(
                            "quell-tokio pingpong {:?} ended {}",
                            c.kind(),
                            c.outcome
                        ));
                    }
                }
                w = cw
                    .into_buf()
                    .ok_or("quell-tokio pingpong: no write buffer")?;
                r = cr
                    .into_buf()
                    .ok_or("quell-tokio pingpong: no read buffer")?;
                record(&mut h, t0.elapsed().as_nanos() as u64);
                ops += 1;
            }
            Ok((
                Sample {
                    ops,
                    elapsed: start.elapsed(),
                },
                w,
                r,
                h,
            ))
        });
        let out = self
            .rt
            .block_on(task)
            .map_err(|e| format!("quell-tokio pingpong task: {e}"))?;
        let (sample, w, r, h) = out?;
        *hist = h;
        self.bufs = Some((w, r));
        Ok(sample)
    }
}

/// `quell-ring-thread-mt` (read): the other `Send` design the tokio integration could
/// have used, measured so the choice is not a guess. One thread owns the ring; tasks on
/// a multi-thread runtime send it `(op, reply)` over a channel and await a oneshot. The
/// ring thread sleeps in the ring's wait (woken by completions or the ring's handle)
/// or, with nothing in flight, parked (woken by `unpark`).
pub struct RingThreadRead {
    rt: tokio::runtime::Runtime,
    tx: Option<std::sync::mpsc::Sender<Request>>,
    door: std::sync::Arc<Doorbell>,
    thread: Option<std::thread::JoinHandle<()>>,
    lanes: Vec<Lane>,
    fd: RawFd,
    nblocks: u64,
    block: u32,
}

type Request = (Op, tokio::sync::oneshot::Sender<quell::Completion>);

/// How a client wakes the ring thread: only when it sleeps, and the right way.
struct Doorbell {
    /// 0 awake, 1 parked (empty ring), 2 in the ring's wait.
    state: std::sync::atomic::AtomicU8,
    thread: std::sync::OnceLock<std::thread::Thread>,
    handle: quell::Handle,
}

impl Doorbell {
    fn ring(&self) {
        match self.state.swap(0, std::sync::atomic::Ordering::AcqRel) {
            1 => {
                if let Some(t) = self.thread.get() {
                    t.unpark();
                }
            }
            2 => {
                let _ = self.handle.wake();
            }
            _ => {}
        }
    }
}

type Replies = Vec<Option<tokio::sync::oneshot::Sender<quell::Completion>>>;

/// Submits a request on the ring thread, its reply kept under the op's user data; a
/// refused op drops the reply, which tells the waiting task.
fn admit(ring: &mut Ring, replies: &mut Replies, free: &mut Vec<usize>, (op, reply): Request) {
    let slot = free.pop().unwrap_or_else(|| {
        replies.push(None);
        replies.len() - 1
    });
    match ring.submit(op.user_data(slot as u64)) {
        Ok(_) => replies[slot] = Some(reply),
        Err(_) => free.push(slot),
    }
}

impl RingThreadRead {
    /// `depth` tasks on a multi-thread runtime, reading through a ring thread.
    pub fn new(
        mut ring: Ring,
        fd: RawFd,
        nblocks: u64,
        block: u32,
        depth: u32,
        seed: u64,
    ) -> Result<RingThreadRead, CliError> {
        use std::sync::atomic::Ordering;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let door = std::sync::Arc::new(Doorbell {
            state: std::sync::atomic::AtomicU8::new(0),
            thread: std::sync::OnceLock::new(),
            handle: ring.handle(),
        });
        let d = door.clone();
        let thread = std::thread::Builder::new()
            .name("quell-ring".into())
            .spawn(move || {
                let mut replies: Replies = Vec::new();
                let mut free: Vec<usize> = Vec::new();
                let mut closed = false;
                loop {
                    let mut got = false;
                    loop {
                        match rx.try_recv() {
                            Ok(req) => {
                                got = true;
                                admit(&mut ring, &mut replies, &mut free, req);
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed && ring.is_empty() {
                        return;
                    }
                    let _ = ring.poll();
                    while let Some(c) = ring.next_completion() {
                        got = true;
                        let slot = c.user_data as usize;
                        if let Some(reply) = replies.get_mut(slot).and_then(Option::take) {
                            let _ = reply.send(c);
                        }
                        free.push(slot);
                    }
                    if got {
                        continue;
                    }
                    // Announce the sleep, then look once more: a request sent before
                    // the announcement is seen here, one sent after rings the bell.
                    let empty = ring.is_empty();
                    d.state.store(if empty { 1 } else { 2 }, Ordering::Release);
                    match rx.try_recv() {
                        Err(std::sync::mpsc::TryRecvError::Empty) => {
                            if empty {
                                std::thread::park_timeout(Duration::from_millis(50));
                            } else {
                                let _ = ring.wait(1, None);
                            }
                        }
                        Ok(req) => admit(&mut ring, &mut replies, &mut free, req),
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => closed = true,
                    }
                    d.state.store(0, Ordering::Release);
                }
            })
            .map_err(|e| format!("ring thread: {e}"))?;
        let _ = door.thread.set(thread.thread().clone());
        Ok(RingThreadRead {
            rt,
            tx: Some(tx),
            door,
            thread: Some(thread),
            lanes: lanes(depth, block, seed),
            fd,
            nblocks,
            block,
        })
    }
}

impl Drop for RingThreadRead {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.door.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Contender for RingThreadRead {
    fn name(&self) -> &'static str {
        "quell-ring-thread-mt"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (fd, nblocks, block) = (self.fd, self.nblocks, self.block);
        let tx = self.tx.clone().ok_or("ring thread gone")?;
        let door = self.door.clone();
        run_lanes(
            &self.rt,
            &mut self.lanes,
            dur,
            hist,
            |mut lane, deadline| {
                let (tx, door) = (tx.clone(), door.clone());
                async move {
                    let mut ops = 0u64;
                    while let Some((t0, off)) = lane.next_op(deadline, nblocks, block) {
                        let buf = std::mem::take(&mut lane.buf);
                        let (reply, done) = tokio::sync::oneshot::channel();
                        if tx.send((Op::read_at(fd, off, buf), reply)).is_err() {
                            return (lane, ops, Some("ring thread gone".into()));
                        }
                        door.ring();
                        let Ok(c) = done.await else {
                            return (lane, ops, Some("ring thread refused the op".into()));
                        };
                        let outcome = c.outcome;
                        lane.buf = c.into_buf().unwrap_or_default();
                        lane.took(t0);
                        ops += 1;
                        if outcome != Outcome::Done(block as usize) {
                            return (lane, ops, Some(format!("ring thread read: {outcome}")));
                        }
                    }
                    (lane, ops, None)
                }
            },
        )
    }
}
