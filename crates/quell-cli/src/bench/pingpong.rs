//! The `pingpong` workload: round trips of 64 bytes over a Unix socket pair to an echo
//! thread doing blocking `read`/`write` on the other end. quell submits a write then a
//! read and waits for the read; one round trip is one op, its latency is from the
//! submission of the write to the read's completion being seen.
//!
//! Peer `tokio-uds`: the same round trips with `tokio::net::UnixStream` on a
//! current-thread runtime, against the same kind of echo thread. Where io_uring works,
//! two peers park a ring in tokio's reactor as quell's tokio integration does:
//! `tokio-uring` (that library's `UnixStream`) and `raw-uring-tokio` (a raw ring
//! registered with tokio, no library: the floor for that way of parking). Both are
//! listed on the io_uring line.
//!
//! Without `--backend`, quell runs on both backends in the same interleaved rounds and
//! prints one line per backend; the portable line carries `vs_uring_latency`
//! (portable p50 / io_uring p50) and `vs_uring_p99`.

use super::raw::RawUringTokioPingPong;
use super::tokio_quell::QuellTokioPingPong;
use super::uring_peers::TokioUringPingPong;
use super::{
    common_extra, record, run_rounds, BackendArg, BenchArgs, Contender, Report, Sample, Settings,
};
use crate::CliError;
use hdrhistogram::Histogram;
use quell::{Op, Outcome, Ring};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes per message.
pub const MSG: usize = 64;

/// An echo thread on one end of a socket pair; the other end is ours.
pub(super) struct Echo {
    ours: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub(super) fn new() -> Result<Echo, CliError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("quell-echo".into())
            .spawn(move || {
                super::affinity::pin_echo();
                let mut s = theirs;
                let mut buf = [0u8; MSG];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("echo thread: {e}"))?;
        Ok(Echo {
            ours: Some(ours),
            thread: Some(thread),
        })
    }

    pub(super) fn stream(&self) -> &UnixStream {
        self.ours.as_ref().expect("stream present until drop")
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        drop(self.ours.take()); // EOF ends the echo loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// quell doing round trips on one backend.
pub struct QuellPingPong {
    // The ring goes first so it is closed before the socket.
    ring: Ring,
    echo: Echo,
    wbuf: Option<Vec<u8>>,
    rbuf: Option<Vec<u8>>,
    name: &'static str,
}

impl QuellPingPong {
    fn new(ring: Ring, name: &'static str) -> Result<QuellPingPong, CliError> {
        Ok(QuellPingPong {
            ring,
            echo: Echo::new()?,
            wbuf: Some(vec![0x5a; MSG]),
            rbuf: Some(vec![0; MSG]),
            name,
        })
    }
}

impl Contender for QuellPingPong {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let fd = self.echo.stream().as_raw_fd();
        let start = Instant::now();
        let deadline = start + dur;
        let mut ops = 0u64;
        loop {
            let t0 = Instant::now();
            if t0 >= deadline {
                break;
            }
            let w = self
                .wbuf
                .take()
                .ok_or("quell pingpong: write buffer lost")?;
            let r = self.rbuf.take().ok_or("quell pingpong: read buffer lost")?;
            self.ring
                .submit(Op::write(fd, w).exact().user_data(0))
                .map_err(|e| format!("quell submit write: {e}"))?;
            self.ring
                .submit(Op::read(fd, r).exact().user_data(1))
                .map_err(|e| format!("quell submit read: {e}"))?;
            let mut pending = 2;
            while pending > 0 {
                self.ring
                    .wait(1, None)
                    .map_err(|e| format!("quell wait: {e}"))?;
                while let Some(c) = self.ring.next_completion() {
                    pending -= 1;
                    if c.outcome != Outcome::Done(MSG) {
                        return Err(format!(
                            "quell pingpong {} ended {}",
                            if c.user_data == 0 { "write" } else { "read" },
                            c.outcome
                        )
                        .into());
                    }
                    let ud = c.user_data;
                    let buf = c.into_buf().ok_or("quell pingpong: no buffer back")?;
                    if ud == 0 {
                        self.wbuf = Some(buf);
                    } else {
                        self.rbuf = Some(buf);
                    }
                }
            }
            record(hist, t0.elapsed().as_nanos() as u64);
            ops += 1;
        }
        Ok(Sample {
            ops,
            elapsed: start.elapsed(),
        })
    }
}

/// `tokio-uds`: round trips with `tokio::net::UnixStream` on a current-thread runtime.
pub struct TokioUds {
    rt: tokio::runtime::Runtime,
    stream: Option<tokio::net::UnixStream>,
    _echo: Echo,
}

impl TokioUds {
    fn new() -> Result<TokioUds, CliError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let echo = Echo::new()?;
        let std_stream = echo.stream().try_clone().map_err(|e| format!("dup: {e}"))?;
        std_stream
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
        let stream = {
            let _g = rt.enter();
            tokio::net::UnixStream::from_std(std_stream)
                .map_err(|e| format!("tokio UnixStream: {e}"))?
        };
        Ok(TokioUds {
            rt,
            stream: Some(stream),
            _echo: echo,
        })
    }
}

impl Drop for TokioUds {
    fn drop(&mut self) {
        // Deregister (and close our dup) inside the runtime, before the echo's EOF.
        let _g = self.rt.enter();
        drop(self.stream.take());
    }
}

impl Contender for TokioUds {
    fn name(&self) -> &'static str {
        "tokio-uds"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = self.stream.take().ok_or("tokio-uds: no stream")?;
        let mut h = std::mem::replace(hist, super::new_histogram());
        // A spawned task, as for quell's tokio contender.
        let task = self.rt.spawn(async move {
            let wbuf = [0x5au8; MSG];
            let mut rbuf = [0u8; MSG];
            let start = Instant::now();
            let deadline = start + dur;
            let mut ops = 0u64;
            let mut failure = None;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                if let Err(e) = stream.write_all(&wbuf).await {
                    failure = Some(format!("tokio-uds write: {e}"));
                    break;
                }
                if let Err(e) = stream.read_exact(&mut rbuf).await {
                    failure = Some(format!("tokio-uds read: {e}"));
                    break;
                }
                record(&mut h, t0.elapsed().as_nanos() as u64);
                ops += 1;
            }
            let sample = Sample {
                ops,
                elapsed: start.elapsed(),
            };
            (stream, h, sample, failure)
        });
        let (stream, h, sample, failure) = self
            .rt
            .block_on(task)
            .map_err(|e| format!("tokio-uds task: {e}"))?;
        self.stream = Some(stream);
        *hist = h;
        match failure {
            Some(f) => Err(f.into()),
            None => Ok(sample),
        }
    }
}

/// Runs the pingpong workload. One report per quell backend measured.
pub fn run(args: &BenchArgs, s: &Settings) -> Result<Vec<Report>, CliError> {
    // Pinned before the contenders exist: their echo threads pin themselves at start.
    let pinned = args.placement.apply();
    run_placed(args, s, &pinned)
}

fn run_placed(
    _args: &BenchArgs,
    s: &Settings,
    pinned: &super::affinity::Pinned,
) -> Result<Vec<Report>, CliError> {
    let backends: Vec<BackendArg> = match s.backend {
        BackendArg::Auto => vec![BackendArg::Uring, BackendArg::Portable],
        b => vec![b],
    };
    let mut quells: Vec<QuellPingPong> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for b in &backends {
        let bs = Settings {
            backend: *b,
            ..s.clone()
        };
        let name = match b {
            BackendArg::Portable => "quell-portable",
            _ => "quell-uring",
        };
        match bs.quell_ring() {
            Ok(ring) => quells.push(QuellPingPong::new(ring, name)?),
            // Without --backend, a machine lacking io_uring still measures the portable one.
            Err(e) if s.backend == BackendArg::Auto => {
                skipped.push((name.to_string(), e.to_string()))
            }
            Err(e) => return Err(e),
        }
    }
    if quells.is_empty() {
        return Err("no quell backend could be built".into());
    }
    // quell through its tokio integration, one per quell backend (peer
    // `quell-tokio-<backend>`; goal: within 1.2x of the ring loop, faster than tokio-uds).
    let mut via_tokio: Vec<QuellTokioPingPong> = Vec::new();
    for q in &quells {
        let b = match q.ring.backend() {
            quell::BackendKind::Portable => BackendArg::Portable,
            _ => BackendArg::Uring,
        };
        let ring = Settings {
            backend: b,
            ..s.clone()
        }
        .quell_ring()?;
        let name = if b == BackendArg::Portable {
            "quell-tokio-portable"
        } else {
            "quell-tokio-uring"
        };
        via_tokio.push(QuellTokioPingPong::new(ring, name)?);
    }
    let mut tokio_uds = TokioUds::new()?;
    // Where io_uring works, two peers that park a ring in tokio's reactor as
    // quell-tokio-uring does: tokio-uring, and a raw ring with no library (the floor).
    let uring = kinds_have_uring(&quells);
    let mut tokio_uring =
        optional_peer(uring, "tokio-uring", &mut skipped, TokioUringPingPong::new);
    let mut raw_tokio = optional_peer(
        uring,
        "raw-uring-tokio",
        &mut skipped,
        RawUringTokioPingPong::new,
    );
    let kinds: Vec<String> = quells
        .iter()
        .map(|q| q.ring.backend().name().to_string())
        .collect();
    let mut contenders: Vec<&mut dyn Contender> = Vec::new();
    for q in quells.iter_mut() {
        contenders.push(q);
    }
    for q in via_tokio.iter_mut() {
        contenders.push(q);
    }
    if let Some(t) = raw_tokio.as_mut() {
        contenders.push(t);
    }
    if let Some(t) = tokio_uring.as_mut() {
        contenders.push(t);
    }
    contenders.push(&mut tokio_uds);
    let mut sums = run_rounds(&mut contenders, s, &mut || Ok(()))?;
    let tokio_sum = sums.pop().expect("tokio-uds ran");
    let tokio_uring_sum = tokio_uring.as_ref().and_then(|_| sums.pop());
    let raw_tokio_sum = raw_tokio.as_ref().and_then(|_| sums.pop());
    let via_tokio_sums = sums.split_off(kinds.len());
    let mut extra = common_extra(s);
    extra.insert("message_bytes".into(), json!(MSG));
    extra.insert(
        "transport".into(),
        json!("unix socketpair, blocking echo thread"),
    );
    extra.insert(
        "latency".into(),
        json!("per round trip: write submitted to read completion seen"),
    );
    extra.insert("op".into(), json!("one round trip"));
    extra.insert("tokio_runtime".into(), json!("current_thread"));
    extra.insert("placement".into(), json!(pinned.describe()));
    let results: Vec<_> = sums.iter().map(|q| q.result()).collect();
    let uring_p50 = kinds
        .iter()
        .zip(&results)
        .find(|(k, _)| k.as_str() == "uring")
        .map(|(_, r)| (r.p50_us, r.p99_us, r.ops_per_sec));
    let mut reports = Vec::new();
    for ((kind, mut q), qt) in kinds.into_iter().zip(results).zip(&via_tokio_sums) {
        q.name = "quell".into();
        let mut ex: Map<String, Value> = extra.clone();
        let qt = qt.result();
        let tokio_ops = tokio_sum.result().ops_per_sec;
        ex.insert(
            "tokio_integration".into(),
            json!({
                "contender": qt.name,
                "ops_per_sec": qt.ops_per_sec.round(),
                "ring_loop_over_tokio": round3(q.ops_per_sec / qt.ops_per_sec.max(1e-9)),
                "over_tokio_uds": round3(qt.ops_per_sec / tokio_ops.max(1e-9)),
            }),
        );
        let mut peers = vec![tokio_sum.result(), qt];
        // The io_uring peers ride on the uring line only.
        let uring_peers = [
            (&tokio_uring_sum, "tokio_uring_over_tokio_uds"),
            (&raw_tokio_sum, "raw_uring_tokio_over_tokio_uds"),
        ];
        for (sum, key) in uring_peers {
            if let (Some(sum), "uring") = (sum, kind.as_str()) {
                let r = sum.result();
                ex.insert(
                    key.into(),
                    json!(round3(r.ops_per_sec / tokio_ops.max(1e-9))),
                );
                peers.push(r);
            }
        }
        if kind == "portable" {
            if let Some((p50, p99, ops)) = uring_p50.filter(|u| u.0 > 0.0) {
                ex.insert("vs_uring_latency".into(), json!(round3(q.p50_us / p50)));
                ex.insert(
                    "vs_uring_p99".into(),
                    json!(round3(q.p99_us / p99.max(1e-9))),
                );
                ex.insert("uring_ops_per_sec".into(), json!(ops.round()));
            }
        }
        reports.push(Report {
            workload: "pingpong",
            backend: kind,
            quell: q,
            peers,
            skipped: skipped.clone(),
            extra: ex,
        });
    }
    Ok(reports)
}

fn kinds_have_uring(quells: &[QuellPingPong]) -> bool {
    quells
        .iter()
        .any(|q| q.ring.backend() != quell::BackendKind::Portable)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Builds a peer that only some machines can run: `None` when it is not `wanted`, or,
/// with the reason recorded in `skipped`, when it cannot be built.
fn optional_peer<T>(
    wanted: bool,
    name: &str,
    skipped: &mut Vec<(String, String)>,
    build: impl FnOnce() -> Result<T, CliError>,
) -> Option<T> {
    if !wanted {
        return None;
    }
    match build() {
        Ok(t) => Some(t),
        Err(e) => {
            skipped.push((name.to_string(), e.to_string()));
            None
        }
    }
}
