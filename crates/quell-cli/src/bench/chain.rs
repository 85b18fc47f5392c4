//! The `chain` workload: open → read 4 KiB → close chains on a page-cached file,
//! `--depth` chains in flight (default 1: a lone chain, where linking saves the most).
//!
//! Contenders: `quell` (io_uring links the chain's SQEs, the open into a direct
//! descriptor, after a `statx` of the path tells its file system), `quell-declared`
//! (the same with the open and the read declared `CancelClass::Bounded`, so no `statx`),
//! `quell-sequenced` (a ring with `link_chains(false)`: one step per trip through the
//! kernel, the opened descriptor classified with `fstat`/`fstatfs`/`fcntl`),
//! `quell-sequenced-declared` (the same with the open's and the read's class declared) and `sync-syscalls` (`open`, `pread`, `close` on the calling thread, one
//! chain at a time). A chain owns its steps, so each one allocates
//! (its step list and path); the read buffers are reused.

use super::{common_extra, record, run_rounds, BenchArgs, Contender, Report, Sample, Settings};
use crate::CliError;
use hdrhistogram::Histogram;
use quell::{CancelClass, Chain, Op, Outcome, Ring};
use serde_json::json;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Blocks of 4 KiB in the bench file (read in turn).
const BLOCKS: u64 = 64;
const BLOCK: usize = 4096;

/// quell keeping `depth` chains in flight.
pub struct QuellChains {
    ring: Ring,
    path: PathBuf,
    depth: usize,
    name: &'static str,
    /// The read step declares its class (no file-system check before linking).
    declared: bool,
    bufs: Vec<Vec<u8>>,
    started: Vec<Instant>,
    next_block: u64,
}

impl QuellChains {
    /// Chains on `ring` reading `path`.
    pub fn new(ring: Ring, path: &Path, depth: u32, name: &'static str) -> QuellChains {
        let depth = depth as usize;
        QuellChains {
            ring,
            path: path.to_path_buf(),
            depth,
            name,
            declared: false,
            bufs: (0..depth).map(|_| vec![0u8; BLOCK]).collect(),
            started: vec![Instant::now(); depth],
            next_block: 0,
        }
    }

    fn submit(&mut self, lane: usize) -> Result<(), CliError> {
        let buf = std::mem::take(&mut self.bufs[lane]);
        let off = (self.next_block % BLOCKS) * BLOCK as u64;
        self.next_block += 1;
        let mut read = Op::read_at(Chain::OPENED, off, buf);
        let mut open = Op::openat(libc::AT_FDCWD, &self.path, libc::O_RDONLY, 0);
        if self.declared {
            // The caller knows the path is a regular file on a local file system: the
            // open may take io_uring's inline attempt instead of a worker (an undeclared
            // open is Interruptible, since a FIFO or a network lookup can block).
            read = read.class(CancelClass::Bounded);
            open = open.class(CancelClass::Bounded);
        }
        let chain = Chain::new()
            .then(open)
            .then(read)
            .then(Op::close(Chain::OPENED))
            .user_data(lane as u64);
        self.started[lane] = Instant::now();
        self.ring
            .submit_chain(chain)
            .map_err(|e| format!("quell submit_chain: {e}"))?;
        Ok(())
    }

    /// Chains the ring gave to the kernel linked so far.
    pub fn linked(&self) -> u64 {
        self.ring.stats().linked_chains
    }
}

impl Contender for QuellChains {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let start = Instant::now();
        let deadline = start + dur;
        for lane in 0..self.depth {
            self.submit(lane)?;
        }
        let (mut ops, mut live) = (0u64, self.depth);
        let mut draining = false;
        while live > 0 {
            self.ring
                .wait(1, None)
                .map_err(|e| format!("quell wait: {e}"))?;
            while let Some(c) = self.ring.next_completion() {
                if c.outcome != Outcome::Done(BLOCK) {
                    return Err(format!("chain ended {}: {:?}", c.outcome, c.steps()).into());
                }
                let lane = c.user_data as usize;
                record(hist, self.started[lane].elapsed().as_nanos() as u64);
                ops += 1;
                let steps = c.into_steps().ok_or("a chain completion without steps")?;
                self.bufs[lane] = steps
                    .into_iter()
                    .nth(1)
                    .and_then(|s| s.into_buf())
                    .ok_or("the read step's buffer did not come back")?;
                draining |= Instant::now() >= deadline;
                if draining {
                    live -= 1;
                } else {
                    self.submit(lane)?;
                }
            }
        }
        Ok(Sample {
            ops,
            elapsed: start.elapsed(),
        })
    }
}

/// The same chain as three blocking syscalls on the calling thread.
pub struct SyncChains {
    path: CString,
    buf: Vec<u8>,
    next_block: u64,
}

impl Contender for SyncChains {
    fn name(&self) -> &'static str {
        "sync-syscalls"
    }

    fn run(&mut self, dur: Duration, hist: &mut Histogram<u64>) -> Result<Sample, CliError> {
        let start = Instant::now();
        let deadline = start + dur;
        let mut ops = 0u64;
        loop {
            let t0 = Instant::now();
            // SAFETY: a valid NUL-terminated path.
            let fd = unsafe { libc::open(self.path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(format!("open: {}", std::io::Error::last_os_error()).into());
            }
            let off = (self.next_block % BLOCKS) * BLOCK as u64;
            self.next_block += 1;
            // SAFETY: buf holds BLOCK writable bytes; fd is open.
            let n = unsafe { libc::pread(fd, self.buf.as_mut_ptr().cast(), BLOCK, off as i64) };
            // SAFETY: fd is ours, closed once.
            unsafe { libc::close(fd) };
            if n != BLOCK as isize {
                return Err(format!("pread returned {n}").into());
            }
            let t1 = Instant::now();
            record(hist, (t1 - t0).as_nanos() as u64);
            ops += 1;
            if t1 >= deadline {
                return Ok(Sample {
                    ops,
                    elapsed: t1 - start,
                });
            }
        }
    }
}

/// Runs the chain workload: linked vs sequenced quell chains, and plain syscalls.
pub fn run(args: &BenchArgs, s: &Settings) -> Result<Report, CliError> {
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| super::read::bench_dir().join("quell-bench-chain.dat"));
    let len = BLOCKS * BLOCK as u64;
    if std::fs::metadata(&path)
        .map(|m| m.len() < len)
        .unwrap_or(true)
    {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        std::fs::write(&path, data).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    // Page-cached: read it once.
    std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let ring = s.quell_ring()?;
    let backend = ring.backend().name().to_string();
    let mut linked = QuellChains::new(ring, &path, s.depth, "quell");
    let mut declared = QuellChains::new(s.quell_ring()?, &path, s.depth, "quell-declared");
    declared.declared = true;
    let seq_ring = || {
        Ring::builder()
            .backend(s.backend.choice())
            .max_in_flight(s.depth.max(1))
            .sq_entries(s.depth.max(8))
            .link_chains(false)
            .build()
            .map_err(|e| format!("cannot build a quell ring: {e}"))
    };
    let mut sequenced = QuellChains::new(seq_ring()?, &path, s.depth, "quell-sequenced");
    let mut seq_declared =
        QuellChains::new(seq_ring()?, &path, s.depth, "quell-sequenced-declared");
    seq_declared.declared = true;
    let mut sync = SyncChains {
        path: CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| "the bench file's path has a NUL byte")?,
        buf: vec![0; BLOCK],
        next_block: 0,
    };
    let sums = run_rounds(
        &mut [
            &mut linked,
            &mut declared,
            &mut sequenced,
            &mut seq_declared,
            &mut sync,
        ],
        s,
        &mut || Ok(()),
    )?;
    let mut peers: Vec<_> = sums.iter().skip(1).map(|p| p.result()).collect();
    peers.truncate(4);
    let mut extra = common_extra(s);
    extra.insert("chain".into(), json!("openat → read 4 KiB → close"));
    extra.insert("file".into(), json!(path.display().to_string()));
    extra.insert("linked_chains".into(), json!(linked.linked()));
    extra.insert("declared_linked_chains".into(), json!(declared.linked()));
    extra.insert("sequenced_linked_chains".into(), json!(sequenced.linked()));
    Ok(Report {
        workload: "chain",
        backend,
        quell: sums[0].result(),
        peers,
        skipped: Vec::new(),
        extra,
    })
}
