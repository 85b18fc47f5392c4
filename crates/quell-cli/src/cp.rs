//! `quell cp SRC DST`: a parallel copy through one quell ring that shows what
//! first-class cancellation buys a command-line tool.
//!
//! The source is cut into chunks of `--block-size`; up to `--depth` chunks are in
//! flight, each a read then a write at the same offset. Chunks finish out of order, so
//! the copy tracks the *frontier*: the prefix of the destination known to be written.
//!
//! Stopping early is always honest: the first Ctrl-C drains (reads stop, writes in
//! flight finish), a second Ctrl-C cancels the writes too, `--deadline` cancels
//! everything when it passes, and a read or write error stops the copy. In every case
//! the destination is synced and truncated to the frontier, a checkpoint recording it
//! is written, and the command says which offset it reached; `--resume` continues from
//! there. Nothing ever claims bytes that were not written.
//!
//! Chunks in a hole of the source (`SEEK_DATA`) are not read, and all-zero chunks are
//! not written: the destination gets a hole there, so sparse sources stay sparse; the
//! final length is set with `ftruncate`.
//!
//! Three engines move the bytes (see [`Engine`]): `copy-range` (`copy_file_range` on
//! quell's pool, or `pread`/`pwrite` there across filesystems; the default between local
//! filesystems), `splice` (the default from a local file to FUSE or network
//! filesystems) and `rw` (the default from FUSE and network filesystems and with
//! `--direct`).

pub mod checkpoint;
mod frontier;
mod holes;
mod range;

use crate::bench::BackendArg;
use crate::units::{format_size, parse_duration, parse_size};
use crate::CliError;
use checkpoint::Checkpoint;
use frontier::Frontier;
use holes::Holes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quell::{AlignedBuf, GroupId, GroupOptions, Op, Outcome, Ring, SignalAction};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Exit code: the copy finished.
pub const EXIT_OK: u8 = 0;
/// Exit code: an I/O error (its offset is in the message) or another runtime error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: `--deadline` passed before the copy finished.
pub const EXIT_DEADLINE: u8 = 3;
/// Exit code: Ctrl-C; in-flight writes finished (drained).
pub const EXIT_INTERRUPTED: u8 = 4;
/// Exit code: a second Ctrl-C canceled the writes in flight.
pub const EXIT_CANCELED: u8 = 5;

const EXIT_CODES: &str = "\
Exit codes:
  0  copied completely
  1  error (an I/O error names its offset), or the copy could not start
  2  bad usage
  3  --deadline passed
  4  interrupted by Ctrl-C; writes in flight finished (drained)
  5  interrupted by a second Ctrl-C; writes in flight canceled
For 1 (once copying began), 3, 4 and 5 the destination holds exactly the first N bytes
of the source, N is printed, and a checkpoint is written: --resume continues from N.";

/// Arguments of `quell cp`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct CpArgs {
    /// The file to copy.
    pub src: PathBuf,
    /// The destination file (created or truncated; with --resume, continued).
    pub dst: PathBuf,
    /// Chunks in flight at once [default: 2 with the copy-range engine, 16 otherwise].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub depth: Option<u32>,
    /// Bytes per chunk (K, KiB, M, MiB suffixes); a multiple of 4096 with --direct
    /// [default: 32MiB with the copy-range engine, 1MiB otherwise].
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// Open both files with O_DIRECT (page-cache bypass) and use aligned buffers
    /// (implies --engine rw).
    #[arg(long)]
    pub direct: bool,
    /// How bytes move: `copy-range` (copy_file_range(2) on quell's thread pool, or
    /// pread/pwrite there where the kernel refuses it; holes found with SEEK_DATA stay
    /// holes), `splice` (source → pipe →
    /// destination in the kernel, one copy) or `rw` (read into a buffer, then write it;
    /// all-zero chunks become holes) [default: copy-range when source and destination
    /// are on local filesystems; splice from a local source to a FUSE or network
    /// destination; rw with --direct, and from FUSE or network filesystems, where a
    /// kernel copy out of a hung server cannot be interrupted].
    /// Where the kernel refuses copy_file_range for the pair (across filesystems since
    /// Linux 5.19), copy-range chunks use pread/pwrite on the pool instead.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// Stop the copy when this much time has passed (e.g. 1s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Continue from the checkpoint an earlier interrupted copy wrote.
    #[arg(long)]
    pub resume: bool,
    /// Where the checkpoint is written and read [default: DST.quell-cp.json].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// The quell backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// How `quell cp` moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// copy_file_range(2), one op per chunk on quell's pool: the kernel copies page
    /// cache to page cache (or shares extents where the filesystem can); pread/pwrite
    /// on the pool where the kernel refuses it (across filesystems).
    CopyRange,
    /// splice(2) through a pipe per lane: no copy through user memory.
    Splice,
    /// read(2) into a buffer, then write(2).
    Rw,
}

/// Why a copy stopped before the end.
#[derive(Debug)]
enum Stop {
    Interrupted,
    Canceled,
    Deadline,
    Error(String),
}

impl Stop {
    fn reason(&self) -> &'static str {
        match self {
            Stop::Interrupted => "interrupted",
            Stop::Canceled => "canceled",
            Stop::Deadline => "deadline",
            Stop::Error(_) => "error",
        }
    }

    fn code(&self) -> u8 {
        match self {
            Stop::Interrupted => EXIT_INTERRUPTED,
            Stop::Canceled => EXIT_CANCELED,
            Stop::Deadline => EXIT_DEADLINE,
            Stop::Error(_) => EXIT_ERROR,
        }
    }
}

/// A lane's buffer: plain, aligned for O_DIRECT, a pipe for splice, or none at all for
/// copy_file_range (the kernel holds the bytes).
enum Buf {
    Plain(Vec<u8>),
    Aligned(AlignedBuf),
    Pipe { r: File, w: File },
    Kernel,
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Plain(v) => v,
            Buf::Aligned(a) => a,
            Buf::Pipe { .. } | Buf::Kernel => &[],
        }
    }

    fn pipe(size: u64) -> Result<Buf, CliError> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe2: {}", std::io::Error::last_os_error()).into());
        }
        // SAFETY: fresh descriptors, owned by nobody else.
        let (r, w) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        // A pipe as large as a chunk lets one splice move it; where the limit is lower
        // the lane just loops (best effort, so the result is not checked).
        // SAFETY: fcntl on our own pipe.
        unsafe {
            libc::fcntl(
                w.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                size.min(1 << 30) as libc::c_int,
            )
        };
        Ok(Buf::Pipe { r, w })
    }
}

/// One lane of the copy: a chunk's buffer between its read and its write.
struct Slot {
    chunk: u64,
    offset: u64,
    /// Bytes of the source in this chunk.
    len: usize,
    /// Splice: bytes of the chunk already written, and bytes waiting in the pipe.
    pos: usize,
    in_pipe: usize,
    buf: Option<Buf>,
}

const WRITE: u64 = 1;

/// The open files and what the copy will do.
struct Plan {
    src: File,
    dst: File,
    size: u64,
    mtime_ns: i128,
    start: u64,
    checkpoint: PathBuf,
    /// The destination is a regular file (not a device such as /dev/null): only then
    /// is its length set and a checkpoint meaningful.
    dst_is_file: bool,
}

/// Runs `quell cp`; returns the exit code (a startup failure is an `Err`, exit 1).
pub fn run(args: &CpArgs) -> Result<u8, CliError> {
    if let Some(msg) = check_args(args) {
        use clap::CommandFactory;
        crate::Cli::command()
            .error(clap::error::ErrorKind::InvalidValue, msg)
            .exit();
    }
    let plan = open(args)?;
    copy(args, plan)
}

fn check_args(args: &CpArgs) -> Option<String> {
    let b = args.block_size.unwrap_or(4096);
    if b == 0 || b > 64 << 20 {
        return Some(format!(
            "--block-size must be between 1 byte and 64MiB, got {b}"
        ));
    }
    if args.direct && args.engine.is_some_and(|e| e != Engine::Rw) {
        return Some("--direct needs --engine rw".into());
    }
    if args.direct && b % 4096 != 0 {
        return Some(format!(
            "--block-size must be a multiple of 4096 with --direct, got {b}"
        ));
    }
    None
}

fn open(args: &CpArgs) -> Result<Plan, CliError> {
    let direct = if args.direct { libc::O_DIRECT } else { 0 };
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(direct)
        .open(&args.src)
        .map_err(|e| format!("cannot open {}: {e}", args.src.display()))?;
    let meta = src
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", args.src.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", args.src.display()).into());
    }
    if let Ok(d) = std::fs::metadata(&args.dst) {
        if d.dev() == meta.dev() && d.ino() == meta.ino() {
            return Err(format!(
                "{} and {} are the same file",
                args.src.display(),
                args.dst.display()
            )
            .into());
        }
    }
    let size = meta.len();
    let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    let checkpoint = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| Checkpoint::default_path(&args.dst));
    let start = if args.resume {
        let ck = Checkpoint::load(&checkpoint)?;
        if ck.src_size != size || ck.src_mtime_ns != mtime_ns {
            return Err(format!(
                "{} changed since the checkpoint {} was written (size or modification time); copy it again without --resume",
                args.src.display(),
                checkpoint.display()
            )
            .into());
        }
        let have = std::fs::metadata(&args.dst)
            .map_err(|e| format!("cannot resume into {}: {e}", args.dst.display()))?
            .len();
        if have < ck.done {
            return Err(format!(
                "{} holds {have} bytes but the checkpoint says {} were copied; copy it again without --resume",
                args.dst.display(),
                ck.done
            )
            .into());
        }
        if args.direct && ck.done % 4096 != 0 && ck.done != size {
            return Err(format!(
                "the checkpoint offset {} is not 4096-aligned, which --direct needs; resume without --direct",
                ck.done
            )
            .into());
        }
        ck.done
    } else {
        0
    };
    // A device destination (/dev/null, a tape, a disk) is written in place: no
    // truncation, which a character device refuses with EINVAL.
    let existing = std::fs::metadata(&args.dst).ok().map(|m| m.file_type());
    let dst_is_file = existing.map_or(true, |t| t.is_file());
    if let Some(t) = existing.filter(|_| !dst_is_file) {
        use std::os::unix::fs::FileTypeExt;
        if !(t.is_char_device() || t.is_block_device()) {
            return Err(format!(
                "{}: the destination must be a regular file or a device (positioned writes)",
                args.dst.display()
            )
            .into());
        }
        if args.resume {
            return Err(format!(
                "{}: --resume needs a regular destination file",
                args.dst.display()
            )
            .into());
        }
    }
    let dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!args.resume && dst_is_file)
        .mode(0o644)
        .custom_flags(direct)
        .open(&args.dst)
        .map_err(|e| format!("cannot open {}: {e}", args.dst.display()))?;
    // Whatever lies past the resume point is unverified: cut it so skipped zero chunks
    // read back as zeros.
    if dst_is_file {
        dst.set_len(start)
            .map_err(|e| format!("cannot truncate {}: {e}", args.dst.display()))?;
    }
    Ok(Plan {
        dst_is_file,
        src,
        dst,
        size,
        mtime_ns,
        start,
        checkpoint,
    })
}

fn progress_bar(args: &CpArgs, size: u64, start: u64) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_position(start);
    pb.reset_eta();
    pb
}

fn is_zero(b: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the middle.
    let (head, mid, tail) = unsafe { b.align_to::<u128>() };
    head.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

fn io_error(e: quell::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

/// The copy loop and its honest ending.
fn copy(args: &CpArgs, plan: Plan) -> Result<u8, CliError> {
    let engine = engine_of(args, &plan);
    let (depth, block) = match engine {
        Engine::CopyRange => (2, 32 << 20),
        _ => (16, 1 << 20),
    };
    let (depth, block) = (
        args.depth.unwrap_or(depth),
        args.block_size.unwrap_or(block),
    );
    let size = plan.size;
    let (sfd, dfd) = (plan.src.as_raw_fd(), plan.dst.as_raw_fd());
    let mut ring = Ring::builder()
        .backend(args.backend.choice())
        .capacity(depth as usize * 2 + 8)
        .max_in_flight(depth)
        .pool_threads(depth as usize)
        .sq_entries(depth.next_power_of_two())
        .build()
        .map_err(|e| format!("cannot build a quell ring: {e}"))?;
    let top = ring.group(GroupId::ROOT, GroupOptions::default().name("cp"))?;
    let reads = ring.group(top, GroupOptions::default().name("reads"))?;
    let writes = ring.group(top, GroupOptions::default().name("writes"))?;
    ring.bind_signal(libc::SIGINT, top, SignalAction::DrainThenCancel)?;
    let deadline = args.deadline.map(|d| Instant::now() + d);
    if let Some(at) = deadline {
        ring.set_group_deadline(top, at)?;
    }

    let depth = depth as usize;
    let mut slots: Vec<Slot> = Vec::with_capacity(depth);
    for _ in 0..depth {
        let buf = match engine {
            Engine::CopyRange => Buf::Kernel,
            Engine::Splice => Buf::pipe(block)?,
            Engine::Rw if args.direct => {
                Buf::Aligned(AlignedBuf::new(block as usize, 4096).ok_or_else(|| {
                    format!("cannot allocate {depth} aligned buffers of --block-size {block}")
                })?)
            }
            Engine::Rw => Buf::Plain(Vec::with_capacity(block as usize)),
        };
        slots.push(Slot {
            chunk: 0,
            offset: 0,
            len: 0,
            pos: 0,
            in_pipe: 0,
            buf: Some(buf),
        });
    }
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let nchunks = (size - plan.start).div_ceil(block);
    let mut next_chunk = 0u64;
    let mut frontier = Frontier::new(plan.start, block, size);
    let mut in_flight = 0usize;
    let mut stop: Option<Stop> = None;
    let mut written = plan.start;
    let mut holes = Holes::new(sfd, size);
    let files = range::Pair::new(sfd, dfd);
    let mut sparse = 0u64;
    let pb = progress_bar(args, size, plan.start);
    let started = Instant::now();

    loop {
        if stop.is_none() {
            while next_chunk < nchunks {
                let off = frontier.offset(next_chunk);
                let len = (size - off).min(block);
                if holes.is_hole(off, off + len) {
                    frontier.finish(next_chunk);
                    written += len;
                    sparse += len;
                    next_chunk += 1;
                    continue;
                }
                let Some(si) = free.pop() else { break };
                let s = &mut slots[si];
                s.chunk = next_chunk;
                s.offset = frontier.offset(next_chunk);
                s.len = (size - s.offset).min(block) as usize;
                s.pos = 0;
                s.in_pipe = 0;
                let op = match engine {
                    // The chunk is its own write: a drain lets it finish.
                    Engine::CopyRange => range_op(s, si, files, &mut holes).group(writes),
                    _ => read_op(s, sfd).group(reads).user_data((si as u64) << 1),
                };
                match ring.submit(op) {
                    Ok(_) => {
                        in_flight += 1;
                        next_chunk += 1;
                    }
                    Err(e) => {
                        let (_, op) = e.into_parts();
                        if let Some(b) = take_buf(op, args.direct) {
                            s.buf = Some(b);
                        }
                        free.push(si);
                        // Refused because a signal or the deadline got there first:
                        // the state check below says which.
                        break;
                    }
                }
            }
        }
        if in_flight == 0 {
            // Unsubmitted chunks, or a chunk whose rest the ring refused to take.
            if stop.is_none() && (next_chunk < nchunks || frontier.done() < size) {
                // Every submission was refused: learn why from the group state.
                note_group_state(&mut ring, top, reads, deadline, &mut stop, &pb)?;
                if stop.is_none() {
                    stop = Some(Stop::Error("the ring refused every read".into()));
                }
            }
            break;
        }
        ring.wait(1, Some(Duration::from_millis(100)))
            .map_err(|e| format!("quell wait: {e}"))?;
        note_group_state(&mut ring, top, reads, deadline, &mut stop, &pb)?;
        while let Some(c) = ring.next_completion() {
            in_flight -= 1;
            let si = (c.user_data >> 1) as usize;
            let is_write = c.user_data & WRITE != 0;
            let outcome = c.outcome;
            match engine {
                Engine::Rw if args.direct => slots[si].buf = c.into_aligned().map(Buf::Aligned),
                Engine::Rw => slots[si].buf = c.into_buf().map(Buf::Plain),
                // The pipe never left the slot; copy-range lanes have no buffer.
                Engine::Splice | Engine::CopyRange => {}
            }
            let (chunk, offset, len) = (slots[si].chunk, slots[si].offset, slots[si].len);
            let offset_now = offset + slots[si].pos as u64;
            let mut release = true;
            if engine == Engine::CopyRange {
                let s = &mut slots[si];
                let again = match outcome {
                    Outcome::Done(n) => {
                        s.pos += n;
                        written += n as u64;
                        if s.pos >= s.len {
                            frontier.finish(chunk);
                            false
                        } else if n == 0 && stop.is_none() {
                            stop = Some(Stop::Error(format!(
                                "{} ended at offset {offset_now} while {size} bytes were expected (it shrank during the copy)",
                                args.src.display()
                            )));
                            false
                        } else {
                            // Short (an error or the end met after progress): the rest
                            // of the chunk again, which reports the error at its offset.
                            stop.is_none()
                        }
                    }
                    Outcome::Failed(e) => {
                        if !matches!(stop, Some(Stop::Error(_))) {
                            stop = Some(Stop::Error(format!(
                                "copying {} to {}: {} in the {} bytes at offset {offset_now}",
                                args.src.display(),
                                args.dst.display(),
                                io_error(e),
                                len - s.pos
                            )));
                        }
                        false
                    }
                    // Canceled or timed out: the chunk is not done.
                    _ => false,
                };
                // Refused: a stop got there first; the lane is not reused.
                if again
                    && ring
                        .submit(range_op(s, si, files, &mut holes).group(writes))
                        .is_ok()
                {
                    in_flight += 1;
                    release = false;
                }
                if release {
                    free.push(si);
                }
                continue;
            }
            if engine == Engine::Splice {
                let s = &mut slots[si];
                let next = match (is_write, outcome) {
                    (false, Outcome::Done(0)) if stop.is_none() => {
                        stop = Some(Stop::Error(format!(
                            "{} ended at offset {offset_now} while {size} bytes were expected (it shrank during the copy)",
                            args.src.display()
                        )));
                        ring.cancel_group(reads)?;
                        None
                    }
                    (false, Outcome::Done(n)) if stop.is_none() => {
                        s.in_pipe = n;
                        Some(
                            write_op(s, dfd)
                                .group(writes)
                                .user_data(((si as u64) << 1) | WRITE),
                        )
                    }
                    (true, Outcome::Done(0)) if s.in_pipe > 0 => {
                        if !matches!(stop, Some(Stop::Error(_))) {
                            stop = Some(Stop::Error(format!(
                                "writing {}: no progress at offset {offset_now}",
                                args.dst.display()
                            )));
                        }
                        ring.cancel_group(reads)?;
                        None
                    }
                    (true, Outcome::Done(m)) => {
                        s.pos += m;
                        s.in_pipe -= m.min(s.in_pipe);
                        written += m as u64;
                        if s.in_pipe > 0 {
                            Some(
                                write_op(s, dfd)
                                    .group(writes)
                                    .user_data(((si as u64) << 1) | WRITE),
                            )
                        } else if s.pos < s.len && stop.is_none() {
                            Some(read_op(s, sfd).group(reads).user_data((si as u64) << 1))
                        } else {
                            if s.pos >= s.len {
                                frontier.finish(chunk);
                            }
                            None
                        }
                    }
                    (false, Outcome::Failed(e)) if stop.is_none() => {
                        stop = Some(Stop::Error(format!(
                            "reading {}: {} in the {} bytes at offset {offset_now}",
                            args.src.display(),
                            io_error(e),
                            len - s.pos
                        )));
                        ring.cancel_group(reads)?;
                        None
                    }
                    (true, Outcome::Failed(e)) => {
                        if !matches!(stop, Some(Stop::Error(_))) {
                            stop = Some(Stop::Error(format!(
                                "writing {}: {} in the {} bytes at offset {offset_now}",
                                args.dst.display(),
                                io_error(e),
                                s.in_pipe
                            )));
                        }
                        ring.cancel_group(reads)?;
                        None
                    }
                    _ => None,
                };
                if let Some(op) = next {
                    // Refused: a stop got there first; the lane is not reused.
                    if ring.submit(op).is_ok() {
                        in_flight += 1;
                        release = false;
                    }
                }
                if release {
                    free.push(si);
                }
                continue;
            }
            match (is_write, outcome) {
                (false, Outcome::Done(n)) if stop.is_none() => {
                    if n < len {
                        stop = Some(Stop::Error(format!(
                            "{} ended at offset {} while {size} bytes were expected (it shrank during the copy)",
                            args.src.display(),
                            offset + n as u64
                        )));
                        ring.cancel_group(reads)?;
                    } else if is_zero(&slots[si].buf.as_ref().expect("buffer back").bytes()[..len])
                    {
                        frontier.finish(chunk);
                        written += len as u64;
                        sparse += len as u64;
                    } else {
                        let op = match slots[si].buf.take().expect("buffer back") {
                            Buf::Plain(v) => Op::write_at(dfd, offset, v),
                            Buf::Aligned(a) => Op::write_aligned(dfd, offset, a),
                            Buf::Pipe { .. } | Buf::Kernel => {
                                unreachable!("splice and copy-range lanes are handled above")
                            }
                        };
                        match ring.submit(
                            op.exact()
                                .group(writes)
                                .user_data(((si as u64) << 1) | WRITE),
                        ) {
                            Ok(_) => {
                                in_flight += 1;
                                release = false;
                            }
                            Err(e) => {
                                let (_, op) = e.into_parts();
                                slots[si].buf = take_buf(op, args.direct);
                            }
                        }
                    }
                }
                (false, Outcome::Failed(e)) if stop.is_none() => {
                    stop = Some(Stop::Error(format!(
                        "reading {}: {} in the {len} bytes at offset {offset}",
                        args.src.display(),
                        io_error(e)
                    )));
                    ring.cancel_group(reads)?;
                }
                (true, Outcome::Done(_)) => {
                    frontier.finish(chunk);
                    written += len as u64;
                }
                (true, Outcome::Failed(e)) => {
                    if !matches!(stop, Some(Stop::Error(_))) {
                        stop = Some(Stop::Error(format!(
                            "writing {}: {} in the {len} bytes at offset {offset}",
                            args.dst.display(),
                            io_error(e)
                        )));
                    }
                    ring.cancel_group(reads)?;
                }
                // Canceled, timed out, detached, or a read finishing after the stop:
                // the chunk is simply not done.
                _ => {}
            }
            if release {
                if slots[si].buf.is_none() {
                    return Err("quell returned a completion without its buffer".into());
                }
                free.push(si);
            }
        }
        pb.set_position(written);
    }

    // Wait for anything detached (device writes past the deadline) before truncating,
    // so no write can land after the truncation.
    let leftovers = ring.shutdown();
    let leaked = ring.stats().leaked_at_teardown;
    drop(leftovers);
    drop(ring);
    let elapsed = started.elapsed();
    pb.finish_and_clear();

    let Some(stop) = stop else {
        if plan.dst_is_file {
            plan.dst
                .set_len(size)
                .map_err(|e| format!("cannot set the length of {}: {e}", args.dst.display()))?;
        }
        if plan.checkpoint.exists() {
            let _ = std::fs::remove_file(&plan.checkpoint);
        }
        let copied = size - plan.start;
        eprintln!(
            "quell cp: copied {} ({copied} bytes, {sparse} of them holes or zeros not written) in {:.3} s, {:.1} MiB/s, {} engine{}, depth {depth}, {} chunks",
            format_size(copied),
            elapsed.as_secs_f64(),
            copied as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-9),
            clap::ValueEnum::to_possible_value(&engine)
                .expect("no skipped variants")
                .get_name(),
            match engine {
                Engine::CopyRange => format!(" ({})", files.method()),
                _ => String::new(),
            },
            format_size(block)
        );
        return Ok(EXIT_OK);
    };
    let done = frontier.done();
    if let Stop::Error(msg) = &stop {
        eprintln!("quell cp: error: {msg}");
    }
    let keep = || -> std::io::Result<()> {
        if !plan.dst_is_file {
            return Ok(());
        }
        plan.dst.set_len(done)?;
        plan.dst.sync_data()
    };
    if let Err(e) = keep() {
        eprintln!(
            "quell cp: error: cannot truncate {} to {done} bytes: {e}; its content past offset {} is not to be trusted",
            args.dst.display(),
            plan.start
        );
        return Ok(EXIT_ERROR);
    }
    if leaked > 0 {
        eprintln!(
            "quell cp: warning: {leaked} write(s) were still with the kernel at exit and may land past offset {done}"
        );
    }
    let ck = Checkpoint {
        version: 1,
        src: args.src.clone(),
        dst: args.dst.clone(),
        src_size: size,
        src_mtime_ns: plan.mtime_ns,
        done,
        reason: stop.reason().into(),
    };
    let what = match &stop {
        Stop::Interrupted => "interrupted (Ctrl-C): drained, writes in flight finished",
        Stop::Canceled => "interrupted twice (Ctrl-C): writes in flight canceled",
        Stop::Deadline => "deadline passed: the copy was canceled",
        Stop::Error(_) => "stopped by the error",
    };
    eprintln!(
        "quell cp: {what}; {} holds the first {done} bytes of {} (of {size}), consistent up to offset {done}",
        args.dst.display(),
        args.src.display()
    );
    if !plan.dst_is_file {
        // No checkpoint beside a device node: --resume needs a regular file anyway.
        return Ok(stop.code());
    }
    match ck.store(&plan.checkpoint) {
        Ok(()) => eprintln!(
            "quell cp: checkpoint {}; run the same command with --resume to finish",
            plan.checkpoint.display()
        ),
        Err(e) => eprintln!("quell cp: error: {e}"),
    }
    Ok(stop.code())
}

fn engine_of(args: &CpArgs, plan: &Plan) -> Engine {
    match args.engine {
        Some(e) => e,
        None if args.direct => Engine::Rw,
        // Both sides local: no kernel copy can hang on a server.
        None if splice_is_safe(&plan.src) && splice_is_safe(&plan.dst) => Engine::CopyRange,
        None if splice_is_safe(&plan.src) => Engine::Splice,
        None => Engine::Rw,
    }
}

/// Whether the source lives on a local filesystem, where a splice from it ends in
/// bounded time. From FUSE or network filesystems a splice waits uninterruptibly for
/// the server (a hung server would make the copy unkillable), while a read(2) there can
/// be interrupted, so those sources use the rw engine.
fn splice_is_safe(src: &File) -> bool {
    const LOCAL: [i64; 8] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x794C_7630, // overlayfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0x8584_58F6, // ramfs
    ];
    // SAFETY: statfs fills the zeroed struct for our open descriptor.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; st is a valid out-pointer.
    if unsafe { libc::fstatfs(src.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    LOCAL.contains(&(st.f_type as i64))
}

/// The op that copies (the rest of) a lane's chunk with copy_file_range.
fn range_op(s: &Slot, si: usize, files: range::Pair, holes: &mut Holes) -> Op {
    let (at, end) = (s.offset + s.pos as u64, s.offset + s.len as u64);
    range::chunk_op(files, at, end - at, holes.extents(at, end))
        .user_data(((si as u64) << 1) | WRITE)
}

/// The op that reads (the rest of) a lane's chunk.
fn read_op(s: &mut Slot, sfd: std::os::fd::RawFd) -> Op {
    let at = s.offset + s.pos as u64;
    match s.buf.as_mut().expect("a free slot has its buffer") {
        Buf::Pipe { w, .. } => {
            Op::splice(sfd, Some(at), w.as_raw_fd(), None, (s.len - s.pos) as u32)
        }
        _ => match s.buf.take().expect("checked above") {
            Buf::Plain(mut v) => {
                v.resize(s.len, 0);
                Op::read_at(sfd, at, v).exact()
            }
            Buf::Aligned(a) => Op::read_aligned(sfd, at, a).exact(),
            Buf::Pipe { .. } => unreachable!("matched above"),
            Buf::Kernel => unreachable!("copy-range lanes use range_op"),
        },
    }
}

/// The op that moves a lane's pipe contents to the destination (splice only).
fn write_op(s: &Slot, dfd: std::os::fd::RawFd) -> Op {
    let Some(Buf::Pipe { r, .. }) = &s.buf else {
        unreachable!("write_op is for splice lanes")
    };
    Op::splice(
        r.as_raw_fd(),
        None,
        dfd,
        Some(s.offset + s.pos as u64),
        s.in_pipe as u32,
    )
}

/// The buffer of an op the ring refused.
fn take_buf(op: Op, direct: bool) -> Option<Buf> {
    if op.kind() == quell::OpKind::Splice {
        return None;
    }
    if direct {
        op.into_aligned().map(Buf::Aligned)
    } else {
        op.into_buf().map(Buf::Plain)
    }
}

/// Turns a Ctrl-C or a passed deadline (seen as the group's state) into a stop.
fn note_group_state(
    ring: &mut Ring,
    top: GroupId,
    reads: GroupId,
    deadline: Option<Instant>,
    stop: &mut Option<Stop>,
    pb: &ProgressBar,
) -> Result<(), CliError> {
    let st = ring.group_stats(top)?;
    if st.canceled {
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        match stop {
            Some(Stop::Canceled | Stop::Deadline | Stop::Error(_)) => {}
            _ if timed_out => *stop = Some(Stop::Deadline),
            _ => {
                pb.suspend(|| eprintln!("quell cp: Ctrl-C again: canceling the writes in flight"));
                *stop = Some(Stop::Canceled);
            }
        }
    } else if st.draining && stop.is_none() {
        pb.suspend(|| {
            eprintln!(
                "quell cp: Ctrl-C: draining (writes in flight finish); Ctrl-C again cancels them"
            )
        });
        *stop = Some(Stop::Interrupted);
        // Reads in flight would only be thrown away now: stop them.
        ring.cancel_group(reads)?;
    }
    Ok(())
}
