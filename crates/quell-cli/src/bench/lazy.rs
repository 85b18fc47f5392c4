//! The `lazy` workload: LazyRead of a whole page-cached file against plain `read(2)`.
//!
//! One op is one whole file (256 MiB unless `--size` says otherwise) made readable:
//! - `lazy-total` (quell): `Ring::read_lazy` + `finish`: every chunk published.
//! - `lazy-first` (quell): from the `read_lazy` call until its first chunk is readable
//!   (`wait_range` over the first chunk); the rest is then canceled, outside the timing.
//! - `read-fresh-vec` (peer): one `pread` of the file into a fresh `Vec` (its pages fault
//!   in during the read).
//! - `read-prefaulted` (peer): one `pread` into a buffer touched beforehand (the copy
//!   alone: the physical limit).
//!
//! Both quell workloads are reported against both peers, measured to their full read (a
//! plain read gives nothing earlier). Cleanup (unmapping the region or the `Vec`, and
//! for lazy-first canceling the remaining chunks) is outside every timing; throughput is ops over the summed op times of each round. All
//! four run interleaved in the same process on the same file, which is kept in the page
//! cache (`mlock`ed mapping, residency checked with `mincore` before every measurement).
//! The first op of each contender is checked byte for byte against the file.

use super::read::{bench_dir, create_file, CachedFile};
use super::{common_extra, record, run_rounds, BenchArgs, Contender, Report, Sample, Settings};
use crate::units::format_size;
use crate::CliError;
use hdrhistogram::Histogram;
use quell::lazy::{LazyOptions, PublishStats};
use quell::Ring;
use serde_json::json;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// The file size when `--size` is left at its default.
pub const DEFAULT_SIZE: u64 = 256 << 20;

/// `pread` all of `buf` at offset 0 (loops on short reads).
fn pread_all(fd: RawFd, buf: *mut u8, len: usize) -> Result<(), CliError> {
    let mut done = 0usize;
    while done < len {
        // SAFETY: buf..buf+len is writable memory owned by the caller for the call.
        let n = unsafe { libc::pread(fd, buf.add(done).cast(), len - done, done as libc::off_t) };
        if n < 0 {
            return Err(format!("pread: {}", std::io::Error::last_os_error()).into());
        }
        if n == 0 {
            return Err("pread: unexpected end of file".into());
        }
        done += n as usize;
    }
    Ok(())
}

/// Runs `one` until `dur` of op time has passed; `one` runs an op and its cleanup and
/// returns how long the op alone took.
fn measure(
    dur: Duration,
    hist: &mut Histogram<u64>,
    mut one: impl FnMut() -> Result<Duration, CliError>,
) -> Result<Sample, CliError> {
    let mut busy = Duration::ZERO;
    let mut ops = 0u64;
    while busy < dur || ops == 0 {
        let d = one()?;
        record(hist, d.as_nanos() as u64);
        busy += d;
        ops += 1;
    }
    Ok(Sample { ops, elapsed: busy })
}

/// Whether the first op's bytes still have to be compared with the file.
struct Verify<'a> {
    want: &'a [u8],
    pending: bool,
}

impl Verify<'_> {
    fn check(&mut self, who: &str, got: &[u8]) -> Result<(), CliError> {
        if self.pending {
            if got != self.want {
                return Err(format!("{who}: bytes differ from the file").into());
            }
            self.pending = false;
        }
        Ok(())
    }
}

struct LazyTotal<'a> {
    ring: &'a mut Ring,
    fd: RawFd,
    len: usize,
    opts: LazyOptions,
    verify: Verify<'a>,
    stats: PublishStats,
}

impl Contender for LazyTotal<'_> {
    fn name(&self) -> &'static str {
        "quell"
    }
    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (ring, fd, len, opts) = (&mut *self.ring, self.fd, self.len, self.opts);
        let verify = &mut self.verify;
        let stats = &mut self.stats;
        measure(dur, hist, || {
            let t = Instant::now();
            let lazy = ring.read_lazy(fd, 0, len, opts)?;
            let n = lazy.finish(ring)?.len();
            let d = t.elapsed();
            if n != len {
                return Err(format!("lazy-total: {n} of {len} bytes").into());
            }
            verify.check("lazy-total", lazy.raw()?)?;
            *stats = lazy.stats();
            Ok(d)
        })
    }
}

struct LazyFirst<'a> {
    ring: &'a mut Ring,
    fd: RawFd,
    len: usize,
    opts: LazyOptions,
    verify: Verify<'a>,
}

impl Contender for LazyFirst<'_> {
    fn name(&self) -> &'static str {
        "quell"
    }
    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (ring, fd, len, opts) = (&mut *self.ring, self.fd, self.len, self.opts);
        let first = opts.get_chunk_size().min(len);
        let verify = &mut self.verify;
        measure(dur, hist, || {
            let t = Instant::now();
            let lazy = ring.read_lazy(fd, 0, len, opts)?;
            let head = lazy.wait_range(ring, 0..first)?;
            let d = t.elapsed();
            if verify.pending {
                verify.want = &verify.want[..first];
                verify.check("lazy-first", head)?;
            }
            drop(lazy); // cancels the chunks not read yet
            while !ring.is_empty() {
                ring.wait(1, Some(Duration::from_millis(100)))?;
                ring.completions().for_each(drop);
            }
            Ok(d)
        })
    }
}

struct ReadFreshVec<'a> {
    fd: RawFd,
    len: usize,
    verify: Verify<'a>,
}

impl Contender for ReadFreshVec<'_> {
    fn name(&self) -> &'static str {
        "read-fresh-vec"
    }
    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (fd, len) = (self.fd, self.len);
        let verify = &mut self.verify;
        measure(dur, hist, || {
            let t = Instant::now();
            let mut v: Vec<u8> = Vec::with_capacity(len);
            pread_all(fd, v.as_mut_ptr(), len)?;
            // SAFETY: pread_all initialised all `len` bytes.
            unsafe { v.set_len(len) };
            let d = t.elapsed();
            verify.check("read-fresh-vec", &v)?;
            Ok(d)
        })
    }
}

struct ReadPrefaulted {
    fd: RawFd,
    buf: Vec<u8>,
}

impl Contender for ReadPrefaulted {
    fn name(&self) -> &'static str {
        "read-prefaulted"
    }
    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let (fd, len, ptr) = (self.fd, self.buf.len(), self.buf.as_mut_ptr());
        measure(dur, hist, || {
            let t = Instant::now();
            pread_all(fd, ptr, len)?;
            Ok(t.elapsed())
        })
    }
}

/// Runs the lazy workload; returns the `lazy-total` and `lazy-first` reports.
pub fn run(args: &BenchArgs, s: &Settings) -> Result<Vec<Report>, CliError> {
    let size = if args.size == 1 << 30 && args.file.is_none() {
        DEFAULT_SIZE
    } else {
        args.size
    };
    let path = match &args.file {
        Some(p) => p.clone(),
        None => bench_dir().join(format!("quell-bench-{}.dat", format_size(size))),
    };
    let created = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && (args.file.is_some() || m.len() == size) => false,
        _ => {
            create_file(&path, size)?;
            true
        }
    };
    let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| "file too large")?;
    if len == 0 {
        return Err(format!("{} is empty", path.display()).into());
    }
    let mut cache = CachedFile::new(&file, len as u64)?;
    let fd = file.as_raw_fd();

    // The reference bytes, which are also the prefaulted peer's buffer.
    let mut want = vec![0u8; len];
    pread_all(fd, want.as_mut_ptr(), len)?;
    let mut pre = ReadPrefaulted {
        fd,
        buf: want.clone(),
    };
    let mut ring_total = Ring::builder().backend(s.backend.choice()).build()?;
    let mut ring_first = Ring::builder().backend(s.backend.choice()).build()?;
    let backend = ring_total.backend().name().to_string();
    let opts = LazyOptions::default().window(s.depth as usize);
    let mut total = LazyTotal {
        ring: &mut ring_total,
        fd,
        len,
        opts,
        verify: Verify {
            want: &want,
            pending: true,
        },
        stats: PublishStats::default(),
    };
    let mut first = LazyFirst {
        ring: &mut ring_first,
        fd,
        len,
        opts,
        verify: Verify {
            want: &want,
            pending: true,
        },
    };
    let mut fresh = ReadFreshVec {
        fd,
        len,
        verify: Verify {
            want: &want,
            pending: true,
        },
    };
    let mut contenders: Vec<&mut dyn Contender> =
        vec![&mut total, &mut first, &mut fresh, &mut pre];
    let sums = run_rounds(&mut contenders, s, &mut || cache.check())?;
    let stats = total.stats;
    let avail = quell::lazy::availability();
    let peers = vec![sums[2].result(), sums[3].result()];
    let mut extra = common_extra(s);
    extra.remove("batch");
    extra.insert("window".into(), json!(s.depth));
    extra.insert("chunk_size".into(), json!(opts.get_chunk_size()));
    extra.insert("file".into(), json!(path.display().to_string()));
    extra.insert("file_size".into(), json!(len));
    extra.insert("file_created".into(), json!(created));
    extra.insert("cache".into(), json!(cache.mode.name()));
    if let Some(e) = &cache.mlock_error {
        extra.insert("mlock_error".into(), json!(e));
    }
    extra.insert(
        "resident_min".into(),
        json!((cache.resident_min * 10000.0).round() / 10000.0),
    );
    extra.insert("lazy_mode".into(), json!(format!("{:?}", avail.mode)));
    extra.insert(
        "publish_last_op".into(),
        json!({"moved": stats.moved, "copied": stats.copied, "zeroed": stats.zeroed,
               "move_fallbacks": stats.move_fallbacks}),
    );
    extra.insert(
        "op".into(),
        json!("one whole file made readable; peers: one pread of the whole file; cleanup (munmap) not timed"),
    );
    let mut first_extra = extra.clone();
    extra.insert(
        "latency".into(),
        json!("read_lazy call to every chunk published"),
    );
    first_extra.insert(
        "latency".into(),
        json!("read_lazy call to the first chunk readable (wait_range); peers: their full read"),
    );
    let mk = |workload, quell: &super::Summary, extra| Report {
        workload,
        backend: backend.clone(),
        quell: quell.result(),
        peers: peers.clone(),
        skipped: Vec::new(),
        extra,
    };
    Ok(vec![
        mk("lazy-total", &sums[0], extra),
        mk("lazy-first", &sums[1], first_extra),
    ])
}
