//! The `read` workload: 4 KiB reads at random block offsets of a page-cached file, a
//! fixed number in flight on one thread (each refilled as soon as its completion is
//! seen). Latency is per op, from submission to the completion being seen.
//!
//! The file is kept in the page cache for the whole run: it is mapped and `mlock`ed
//! (`"cache": "mlock"`); where `mlock` fails it is re-warmed before every measurement
//! (`"cache": "rewarm"`). Either way its residency is checked with `mincore` before
//! every measurement and the lowest value is reported (`resident_min`).

use super::raw::RawRead;
use super::scope::{self, Scope};
use super::tokio_peers::{TokioFs, TokioSpawnBlocking};
use super::tokio_quell::{QuellTokioRead, RingThreadRead};
use super::uring_peers::{Monoio, TokioUring};
use super::{
    common_extra, record, run_rounds, BenchArgs, Contender, PeerResult, Report, Sample, Settings,
};
use crate::info::find_in_path;
use crate::units::format_size;
use crate::CliError;
use hdrhistogram::Histogram;
use quell::{Op, Outcome, Ring};
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bytes per read.
pub const BLOCK: u32 = 4096;
const SEED: u64 = 0x5eed_f00d_9e11;

/// A small, fast pseudo-random generator (splitmix64), the same for every contender.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// quell running the random-read loop.
pub struct QuellRead {
    ring: Ring,
    spare: Vec<Vec<u8>>,
    submitted_at: Vec<Instant>,
    fd: RawFd,
    nblocks: u64,
    depth: u32,
    batch: u32,
    rng: Rng,
    scope: Option<Scope>,
}

impl QuellRead {
    /// Reads blocks at random from the first `nblocks` blocks of `fd`, `depth` in flight.
    pub fn new(ring: Ring, fd: RawFd, nblocks: u64, depth: u32, batch: u32) -> QuellRead {
        QuellRead {
            ring,
            spare: (0..depth).map(|_| vec![0u8; BLOCK as usize]).collect(),
            submitted_at: vec![Instant::now(); depth as usize],
            fd,
            nblocks,
            depth,
            batch,
            rng: Rng::new(SEED),
            scope: None,
        }
    }

    /// The same loop with every read in a nested group and carrying a far deadline.
    pub fn nested_deadline(
        mut ring: Ring,
        fd: RawFd,
        nblocks: u64,
        depth: u32,
        batch: u32,
    ) -> Result<QuellRead, CliError> {
        let scope = Some(Scope::nested(&mut ring)?);
        let mut q = QuellRead::new(ring, fd, nblocks, depth, batch);
        q.scope = scope;
        Ok(q)
    }
}

impl Contender for QuellRead {
    fn name(&self) -> &'static str {
        if self.scope.is_some() {
            scope::NAME
        } else {
            "quell"
        }
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let start = Instant::now();
        let deadline = start + dur;
        let mut in_flight = 0usize;
        let mut failure: Option<String> = None;
        for i in 0..self.depth as usize {
            let Some(buf) = self.spare.pop() else { break };
            let off = self.rng.below(self.nblocks) * BLOCK as u64;
            match self.ring.submit(Scope::apply(
                self.scope,
                Op::read_at(self.fd, off, buf).user_data(i as u64),
            )) {
                Ok(_) => {
                    self.submitted_at[i] = start;
                    in_flight += 1;
                }
                Err(e) => {
                    let (err, op) = e.into_parts();
                    self.spare.extend(op.into_buf());
                    failure = Some(format!("quell submit: {err}"));
                    break;
                }
            }
        }
        let mut ops = 0u64;
        let mut stop = failure.is_some();
        while in_flight > 0 {
            self.ring
                .wait((self.batch as usize).min(in_flight), None)
                .map_err(|e| format!("quell wait: {e}"))?;
            let now = Instant::now();
            stop |= now >= deadline;
            while let Some(c) = self.ring.next_completion() {
                let i = c.user_data as usize;
                if c.outcome != Outcome::Done(BLOCK as usize) && failure.is_none() {
                    failure = Some(format!("quell read ended {}", c.outcome));
                    stop = true;
                }
                record(hist, (now - self.submitted_at[i]).as_nanos() as u64);
                ops += 1;
                let Some(buf) = c.into_buf() else {
                    in_flight -= 1;
                    failure.get_or_insert_with(|| "quell read returned no buffer".into());
                    stop = true;
                    continue;
                };
                if stop {
                    self.spare.push(buf);
                    in_flight -= 1;
                    continue;
                }
                let off = self.rng.below(self.nblocks) * BLOCK as u64;
                match self.ring.submit(Scope::apply(
                    self.scope,
                    Op::read_at(self.fd, off, buf).user_data(i as u64),
                )) {
                    Ok(_) => self.submitted_at[i] = now,
                    Err(e) => {
                        let (err, op) = e.into_parts();
                        self.spare.extend(op.into_buf());
                        in_flight -= 1;
                        failure.get_or_insert_with(|| format!("quell submit: {err}"));
                        stop = true;
                    }
                }
            }
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

/// How the file is kept in the page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Mapped and locked for the whole run.
    Mlock,
    /// Re-read before every measurement.
    Rewarm,
}

impl CacheMode {
    /// `"mlock"` or `"rewarm"`.
    pub fn name(&self) -> &'static str {
        match self {
            CacheMode::Mlock => "mlock",
            CacheMode::Rewarm => "rewarm",
        }
    }
}

/// A file mapped (and locked where possible) so it stays in the page cache.
pub struct CachedFile {
    map: *mut libc::c_void,
    len: usize,
    /// How it is kept cached.
    pub mode: CacheMode,
    /// Why `mlock` was not used, if it was not.
    pub mlock_error: Option<String>,
    /// The lowest residency (0..1) seen before a measurement.
    pub resident_min: f64,
    vec: Vec<u8>,
}

impl CachedFile {
    /// Maps `len` bytes of `file` and locks them, or warms them if locking fails.
    pub fn new(file: &File, len: u64) -> Result<CachedFile, CliError> {
        let len = usize::try_from(len).map_err(|_| "file too large to map")?;
        // SAFETY: a fresh shared read-only mapping of an open file; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(format!(
                "mmap of the bench file: {}",
                std::io::Error::last_os_error()
            )
            .into());
        }
        let mut c = CachedFile {
            map,
            len,
            mode: CacheMode::Mlock,
            mlock_error: None,
            resident_min: 1.0,
            vec: vec![0u8; len.div_ceil(page_size())],
        };
        // SAFETY: map..map+len is our mapping.
        if unsafe { libc::mlock(map, len) } != 0 {
            c.mode = CacheMode::Rewarm;
            c.mlock_error = Some(std::io::Error::last_os_error().to_string());
            c.warm();
        }
        Ok(c)
    }

    /// Faults every page of the file into the page cache.
    fn warm(&mut self) {
        const MADV_POPULATE_READ: libc::c_int = 22;
        // SAFETY: advice on our own mapping.
        let rc = unsafe { libc::madvise(self.map, self.len, MADV_POPULATE_READ) };
        if rc != 0 {
            let ps = page_size();
            let base = self.map as *const u8;
            let mut sum = 0u8;
            for off in (0..self.len).step_by(ps) {
                // SAFETY: off < len, inside our readable mapping.
                sum ^= unsafe { std::ptr::read_volatile(base.add(off)) };
            }
            std::hint::black_box(sum);
        }
    }

    /// The fraction of the file's pages in the page cache.
    pub fn residency(&mut self) -> Result<f64, CliError> {
        // SAFETY: vec has one byte per page of the mapping.
        if unsafe { libc::mincore(self.map, self.len, self.vec.as_mut_ptr()) } != 0 {
            return Err(format!("mincore: {}", std::io::Error::last_os_error()).into());
        }
        let resident = self.vec.iter().filter(|&&b| b & 1 != 0).count();
        Ok(resident as f64 / self.vec.len().max(1) as f64)
    }

    /// Called before each measurement: re-warms (in rewarm mode) and checks residency.
    pub fn check(&mut self) -> Result<(), CliError> {
        if self.mode == CacheMode::Rewarm {
            self.warm();
        }
        let mut r = self.residency()?;
        if r < 1.0 {
            self.warm();
            r = self.residency()?;
        }
        self.resident_min = self.resident_min.min(r);
        Ok(())
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once (munmap also unlocks it).
        unsafe { libc::munmap(self.map, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The directory for the default bench file: `$QUELL_BENCH_DIR` or the temp directory.
pub fn bench_dir() -> PathBuf {
    std::env::var_os("QUELL_BENCH_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Finds or creates the file to read. Returns its path, length, and whether it was created.
fn prepare_file(args: &BenchArgs) -> Result<(PathBuf, u64, bool), CliError> {
    let explicit = args.file.is_some();
    let path = match &args.file {
        Some(p) => p.clone(),
        None => bench_dir().join(format!("quell-bench-{}.dat", format_size(args.size))),
    };
    match std::fs::metadata(&path) {
        Ok(m) if !m.is_file() => {
            return Err(format!("{} is not a regular file", path.display()).into())
        }
        Ok(m) if explicit || m.len() == args.size => {
            if m.len() < BLOCK as u64 {
                return Err(
                    format!("{} is smaller than one {BLOCK}-byte block", path.display()).into(),
                );
            }
            return Ok((path, m.len(), false));
        }
        Ok(_) | Err(_) => {}
    }
    if args.size < BLOCK as u64 {
        return Err(format!("--size must be at least {BLOCK} bytes").into());
    }
    create_file(&path, args.size)?;
    Ok((path, args.size, true))
}

/// Writes `size` bytes of non-zero data to `path` (through a temporary name, then a rename).
pub fn create_file(path: &Path, size: u64) -> Result<(), CliError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        let mut n = 0u64;
        while written < size {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = ((n as usize * 131 + j * 7) % 255 + 1) as u8;
            }
            let len = (size - written).min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..len])?;
            written += len as u64;
            n += 1;
        }
        // Write back now, so writeback does not disturb the measurements.
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot create the bench file {}: {e}", path.display()).into()
    })
}

/// Runs fio's io_uring engine on the same file, depth and duration; parses IOPS and
/// completion-latency percentiles from its JSON output.
fn run_fio(fio: &Path, file: &Path, s: &Settings) -> Result<PeerResult, String> {
    let ms = ((s.seconds * 1000.0).round() as u64).max(1);
    let out = Command::new(fio)
        .arg("--name=quell-bench")
        .arg("--ioengine=io_uring")
        .arg("--rw=randread")
        .arg(format!("--bs={BLOCK}"))
        .arg(format!("--iodepth={}", s.depth))
        .arg(format!("--iodepth_batch_complete_min={}", s.batch))
        .arg(format!("--filename={}", file.display()))
        .arg("--time_based")
        .arg(format!("--runtime={ms}ms"))
        .arg("--invalidate=0")
        .arg("--norandommap")
        .arg("--randrepeat=0")
        .arg("--output-format=json")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", fio.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "fio exited with {}: {}",
            out.status,
            err.trim().lines().last().unwrap_or("")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').ok_or("fio printed no JSON")?;
    let v: Value = serde_json::from_str(&text[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let read = &v["jobs"][0]["read"];
    let iops = read["iops"]
        .as_f64()
        .ok_or("fio JSON has no jobs[0].read.iops")?;
    let pct = |k: &str| {
        read["clat_ns"]["percentile"][k]
            .as_f64()
            .map(|ns| (ns / 1000.0 * 1000.0).round() / 1000.0)
            .unwrap_or(0.0)
    };
    let mut extra = Map::new();
    extra.insert(
        "latency".into(),
        json!("fio clat (submission to completion)"),
    );
    extra.insert(
        "runtime_ms".into(),
        json!(v["jobs"][0]["job_runtime"].as_u64().unwrap_or(ms)),
    );
    extra.insert(
        "version".into(),
        json!(v["fio version"].as_str().unwrap_or("")),
    );
    Ok(PeerResult {
        name: "fio-io_uring".into(),
        ops_per_sec: iops,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        extra,
    })
}

/// Runs the read workload: quell against the raw io-uring loop and the tokio peers
/// (interleaved rounds), then fio.
pub fn run(args: &BenchArgs, s: &Settings) -> Result<Report, CliError> {
    let ring = s.quell_ring()?;
    let backend = ring.backend().name().to_string();
    let (path, len, created) = prepare_file(args)?;
    let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let nblocks = len / BLOCK as u64;
    let mut cache = CachedFile::new(&file, nblocks * BLOCK as u64)?;
    let fd = file.as_raw_fd();
    let mut quell = QuellRead::new(ring, fd, nblocks, s.depth, s.batch);
    let mut skipped = Vec::new();
    // raw-io-uring needs io_uring; on a machine without it the portable run still
    // compares against the tokio peers.
    let mut raw = match RawRead::new(fd, nblocks, BLOCK, s.depth, s.batch, SEED) {
        Ok(r) => Some(r),
        Err(e) => {
            skipped.push(("raw-io-uring".to_string(), e.to_string()));
            None
        }
    };
    let mut spawn_blocking = TokioSpawnBlocking::new(fd, nblocks, BLOCK, s.depth, SEED)?;
    let mut tokio_fs = TokioFs::new(&path, nblocks, BLOCK, s.depth, SEED)?;
    let mut scoped = QuellRead::nested_deadline(s.quell_ring()?, fd, nblocks, s.depth, s.batch)?;
    // quell through its tokio integration.
    let mut via_tokio =
        QuellTokioRead::new(false, s.quell_ring()?, fd, nblocks, BLOCK, s.depth, SEED)?;
    let mut via_tokio_mt =
        QuellTokioRead::new(true, s.quell_ring()?, fd, nblocks, BLOCK, s.depth, SEED)?;
    // The design the tokio integration did not take, measured beside it.
    let mut ring_thread = RingThreadRead::new(s.quell_ring()?, fd, nblocks, BLOCK, s.depth, SEED)?;
    // The completion-based runtimes need io_uring too.
    let mut tokio_uring = TokioUring::new(&path, nblocks, BLOCK, s.depth, SEED)
        .map_err(|e| skipped.push(("tokio-uring".to_string(), e.to_string())))
        .ok();
    let mut monoio = Monoio::new(&path, nblocks, BLOCK, s.depth, SEED)
        .map_err(|e| skipped.push(("monoio".to_string(), e.to_string())))
        .ok();
    let mut contenders: Vec<&mut dyn Contender> = vec![&mut quell, &mut scoped];
    if let Some(r) = raw.as_mut() {
        contenders.push(r);
    }
    contenders.push(&mut spawn_blocking);
    contenders.push(&mut tokio_fs);
    contenders.push(&mut via_tokio);
    contenders.push(&mut via_tokio_mt);
    contenders.push(&mut ring_thread);
    if let Some(t) = tokio_uring.as_mut() {
        contenders.push(t);
    }
    if let Some(m) = monoio.as_mut() {
        contenders.push(m);
    }
    let mut sums = run_rounds(&mut contenders, s, &mut || cache.check())?.into_iter();
    let quell_sum = sums.next().expect("quell ran");
    let mut peers: Vec<PeerResult> = sums.map(|p| p.result()).collect();
    if args.no_fio {
        skipped.push(("fio-io_uring".to_string(), "--no-fio".to_string()));
    } else if let Some(fio) = find_in_path("fio") {
        cache.check()?;
        match run_fio(&fio, &path, s) {
            Ok(p) => peers.push(p),
            Err(e) => skipped.push(("fio-io_uring".to_string(), e)),
        }
    } else {
        skipped.push(("fio-io_uring".to_string(), "fio not in PATH".to_string()));
    }
    let mut extra = common_extra(s);
    // The tokio integration's goals: >= 6x tokio-fs, >= 3x spawn_blocking,
    // >= 0.95x tokio-uring (same run). Throughput of quell-tokio(-mt) over each peer.
    for (contender, key) in [
        ("quell-tokio", "quell_tokio_ratio"),
        ("quell-tokio-mt", "quell_tokio_mt_ratio"),
        ("quell-ring-thread-mt", "quell_ring_thread_mt_ratio"),
    ] {
        if let Some(qt) = peers.iter().find(|p| p.name == contender) {
            let ratios: Map<String, Value> = peers
                .iter()
                .filter(|p| !p.name.starts_with("quell-") && p.ops_per_sec > 0.0)
                .map(|p| {
                    let r = (qt.ops_per_sec / p.ops_per_sec * 1000.0).round() / 1000.0;
                    (p.name.clone(), json!(r))
                })
                .collect();
            extra.insert(key.into(), Value::Object(ratios));
        }
    }
    extra.insert("block".into(), json!(BLOCK));
    extra.insert("file".into(), json!(path.display().to_string()));
    extra.insert("file_size".into(), json!(nblocks * BLOCK as u64));
    extra.insert("file_created".into(), json!(created));
    extra.insert("cache".into(), json!(cache.mode.name()));
    if let Some(e) = &cache.mlock_error {
        extra.insert("mlock_error".into(), json!(e));
    }
    extra.insert(
        "resident_min".into(),
        json!((cache.resident_min * 10000.0).round() / 10000.0),
    );
    extra.insert(
        "latency".into(),
        json!("per op, submission to completion seen"),
    );
    if let Some(r) = &raw {
        extra.insert("raw_setup".into(), json!(r.setup()));
    }
    extra.insert(
        "tokio_runtime".into(),
        json!(format!(
            "multi_thread, default workers ({}), default blocking pool; {} tasks",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            s.depth
        )),
    );
    extra.insert(
        "tokio_offsets".into(),
        json!("tokio task i draws offsets from the same generator seeded with seed + i"),
    );
    extra.insert(
        "fio_order".into(),
        json!("after the interleaved rounds, for the full seconds"),
    );
    Ok(Report {
        workload: "read",
        backend,
        quell: quell_sum.result(),
        peers,
        skipped,
        extra,
    })
}
