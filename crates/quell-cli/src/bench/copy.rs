//! The `cp` workload: copying one page-cached file (`--size`, non-zero data, mapped and
//! locked in the page cache for the run) with `quell cp` (this binary, spawned, with its
//! own choice of engine, depth and chunk size unless `--depth` is given; the JSON
//! records what it used), GNU `cp` (spawned; coreutils uses `copy_file_range`)
//! and `tokio::fs::copy` (in process, multi-thread runtime), in interleaved rounds. The
//! destination is removed before every copy, so each starts from the same state.
//!
//! The op is one MiB copied: `ops_per_sec` is MiB/s (median round); the latencies are
//! of whole copies. A copy's result is checked by length and by a sample of its bytes.

use super::read::{bench_dir, CachedFile};
use super::{common_extra, new_histogram, record, BenchArgs, PeerResult, Report, Settings};
use crate::info::find_in_path;
use crate::units::format_size;
use crate::CliError;
use hdrhistogram::Histogram;
use serde_json::{json, Map};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Series {
    name: &'static str,
    rates: Vec<f64>,
    hist: Histogram<u64>,
}

fn make_source(path: &Path, size: u64) -> Result<(), CliError> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = ((n as usize * 31 + j * 13) % 251 + 1) as u8;
        }
        let len = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..len])?;
        left -= len as u64;
        n += 1;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Checks the copy's length and a sample of bytes against the source.
fn verify(src: &Path, dst: &Path, size: u64) -> Result<(), CliError> {
    let (a, b) = (File::open(src)?, File::open(dst)?);
    if b.metadata()?.len() != size {
        return Err(format!("{} has the wrong length after the copy", dst.display()).into());
    }
    let mut x = vec![0u8; 4096];
    let mut y = vec![0u8; 4096];
    for k in 0..16u64 {
        let off = (size.saturating_sub(4096)) / 15 * k;
        let n = a.read_at(&mut x, off)?;
        b.read_at(&mut y[..n], off)?;
        if x[..n] != y[..n] {
            return Err(format!("{} differs from the source at {off}", dst.display()).into());
        }
    }
    Ok(())
}

/// Runs a command to success; returns its stderr.
fn spawn(cmd: &mut Command, what: &str) -> Result<String, CliError> {
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&o.stderr).into_owned())
}

/// What `quell cp` reported using: "ENGINE engine, depth N, SIZE chunks".
fn quell_setup(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains(" engine, depth "))?;
    let at = line.rfind(", ")?;
    let head = &line[..at];
    let engine_at = head[..head.rfind(" engine, depth ")?].rfind(", ")? + 2;
    Some(line[engine_at..].trim().to_string())
}

/// Runs the cp workload.
pub fn run(args: &BenchArgs, s: &Settings) -> Result<Vec<Report>, CliError> {
    let size = args.size.max(1 << 20);
    let dir = bench_dir();
    let src: PathBuf = dir.join(format!("quell-bench-cp-{}.dat", format_size(size)));
    make_source(&src, size)?;
    let dst = dir.join(format!("quell-bench-cp-{}.out", std::process::id()));
    let file = File::open(&src)?;
    let mut cache = CachedFile::new(&file, size)?;
    let exe = std::env::current_exe()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let gnu = find_in_path("cp");
    let mut series: Vec<Series> = ["quell", "gnu-cp", "tokio-fs-copy"]
        .into_iter()
        .map(|name| Series {
            name,
            rates: Vec::new(),
            hist: new_histogram(),
        })
        .collect();
    let mut skipped = Vec::new();
    if gnu.is_none() {
        skipped.push(("gnu-cp".to_string(), "cp not in PATH".to_string()));
    }
    let backend = match s.backend {
        super::BackendArg::Auto => "auto",
        super::BackendArg::Uring => "uring",
        super::BackendArg::Portable => "portable",
    };
    let measured = s.quell_ring()?.backend().name().to_string();
    // quell cp picks its engine's best depth and chunk unless told otherwise.
    let depth = args.depth.map(|d| d.to_string());
    let mut setup = None;
    let mut one = |i: usize| -> Result<Option<Duration>, CliError> {
        let _ = std::fs::remove_file(&dst);
        cache.check()?;
        let t0 = Instant::now();
        match i {
            0 => {
                let mut cmd = Command::new(&exe);
                cmd.args(["cp", "--no-progress", "--backend", backend]);
                if let Some(d) = &depth {
                    cmd.args(["--depth", d]);
                }
                let err = spawn(cmd.arg(&src).arg(&dst), "quell cp")?;
                setup = quell_setup(&err);
            }
            1 => match &gnu {
                Some(cp) => {
                    spawn(Command::new(cp).arg(&src).arg(&dst), "cp")?;
                }
                None => return Ok(None),
            },
            _ => {
                rt.block_on(tokio::fs::copy(&src, &dst))
                    .map_err(|e| format!("tokio::fs::copy: {e}"))?;
            }
        }
        let el = t0.elapsed();
        verify(&src, &dst, size)?;
        Ok(Some(el))
    };
    // One untimed warm-up each, then interleaved rounds (order alternating).
    for i in 0..3 {
        one(i)?;
    }
    for round in 0..s.rounds.max(1) {
        for k in 0..3 {
            let i = if round % 2 == 0 { k } else { 2 - k };
            if let Some(el) = one(i)? {
                series[i]
                    .rates
                    .push(size as f64 / (1 << 20) as f64 / el.as_secs_f64().max(1e-9));
                record(&mut series[i].hist, el.as_nanos() as u64);
            }
        }
    }
    let _ = std::fs::remove_file(&dst);
    let mut results = series.iter().filter(|x| !x.rates.is_empty()).map(|x| {
        super::capture::note(x.name, &x.hist);
        let mut extra = Map::new();
        extra.insert(
            "rounds_mib_per_sec".into(),
            json!(x
                .rates
                .iter()
                .map(|r| (r * 10.0).round() / 10.0)
                .collect::<Vec<_>>()),
        );
        PeerResult {
            name: x.name.to_string(),
            ops_per_sec: super::median(&x.rates),
            p50_us: super::quantile_us(&x.hist, 0.5),
            p99_us: super::quantile_us(&x.hist, 0.99),
            extra,
        }
    });
    let quell = results.next().ok_or("quell cp did not run")?;
    let peers: Vec<PeerResult> = results.collect();
    let mut extra = common_extra(s);
    extra.insert(
        "op".into(),
        json!("1 MiB copied (ops_per_sec is MiB/s); latency is per whole copy"),
    );
    extra.insert("file_size".into(), json!(size));
    // Without --depth, quell cp chose its own (recorded here with engine and chunk).
    extra.insert("depth".into(), json!(args.depth));
    extra.insert("quell_cp".into(), json!(setup));
    extra.insert("cache".into(), json!(cache.mode.name()));
    extra.insert("resident_min".into(), json!(cache.resident_min));
    extra.insert("file".into(), json!(src.display().to_string()));
    Ok(vec![Report {
        workload: "cp",
        backend: measured,
        quell,
        peers,
        skipped,
        extra,
    }])
}
