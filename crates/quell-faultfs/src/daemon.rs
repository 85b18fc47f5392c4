//! The FUSE request loop: decoding, fault rules, parking, interrupts, the delay timer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use polyfuse::op::Operation;
use polyfuse::reply::{AttrOut, EntryOut, FileAttr, OpenOut, ReaddirOut, StatfsOut, WriteOut};
use polyfuse::{Request, Session};

use crate::spec::{Behavior, FileSpec, Rule};
use crate::stats::{FileStats, Stats};
use crate::store::FileData;

/// Inode number of the root directory.
const ROOT_INO: u64 = 1;
/// How long the kernel may cache attributes and entries.
const TTL: Duration = Duration::from_secs(1);
/// How many interrupts for not-yet-parked requests we remember.
const EARLY_INTERRUPTS_MAX: usize = 4096;
/// The largest errno the kernel accepts in a reply (it rejects `<= -ERESTARTSYS`, 512).
const MAX_ERRNO: i32 = 511;

/// Lock a mutex, ignoring poisoning: a panicking test must never make teardown panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An errno the kernel will accept in a reply; anything else becomes `EIO` (an out-of-range
/// error is rejected by the kernel and would leave the request hung forever).
pub(crate) fn sane_errno(errno: i32) -> i32 {
    if (1..=MAX_ERRNO).contains(&errno) {
        errno
    } else {
        libc::EIO
    }
}

/// A request that has not been answered yet. Dropping it answers `EIO`: an unanswered FUSE
/// request blocks its caller forever.
pub(crate) struct Pending(Option<Request>);

/// What to answer.
pub(crate) enum Answer {
    Data(Vec<u8>),
    Written(u32),
    Err(i32),
}

impl Pending {
    fn new(req: Request) -> Pending {
        Pending(Some(req))
    }

    pub(crate) fn unique(&self) -> u64 {
        self.0.as_ref().map_or(0, Request::unique)
    }

    pub(crate) fn answer(mut self, answer: Answer) {
        if let Some(req) = self.0.take() {
            // A failed reply means the kernel no longer waits for it (interrupted and
            // finished, or the connection was aborted): nothing to do.
            let res = match answer {
                Answer::Data(d) => req.reply(d),
                Answer::Written(n) => {
                    let mut out = WriteOut::default();
                    out.size(n);
                    req.reply(out)
                }
                Answer::Err(e) => req.reply_error(sane_errno(e)),
            };
            if let Err(e) = res {
                tracing::debug!(unique = req.unique(), "reply failed: {e}");
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(req) = self.0.take() {
            let _ = req.reply_error(libc::EIO);
        }
    }
}

/// The operation a parked request will perform when it is released.
#[derive(Debug)]
pub(crate) enum ParkedOp {
    Read { offset: u64, size: u32 },
    Write { offset: u64, data: Vec<u8> },
}

pub(crate) struct Parked {
    pending: Pending,
    file: usize,
    op: ParkedOp,
    /// `Some`: a delayed request answered by the timer; `None`: hung until released.
    deadline: Option<Instant>,
}

pub(crate) struct FileState {
    pub(crate) spec_name: String,
    pub(crate) data: FileData,
    pub(crate) rules: Vec<Rule>,
    pub(crate) cached: bool,
    pub(crate) stats: FileStats,
}

#[derive(Default)]
pub(crate) struct Counters {
    requests: u64,
    reads: u64,
    writes: u64,
    opens: u64,
    interrupts: u64,
    interrupted: u64,
    bytes_read: u64,
    bytes_written: u64,
    released: u64,
    injected_errors: u64,
}

pub(crate) struct State {
    pub(crate) files: Vec<FileState>,
    parked: HashMap<u64, Parked>,
    early: HashSet<u64>,
    early_order: VecDeque<u64>,
    counters: Counters,
    /// Daemon threads (loop + timer) still running.
    pub(crate) threads_alive: usize,
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Notified whenever stats, parked requests or thread liveness change.
    pub(crate) changed: Condvar,
    /// Wakes the delay timer.
    timer: Condvar,
    pub(crate) shutdown: AtomicBool,
    uid: u32,
    gid: u32,
    mtime: Duration,
}

impl Shared {
    pub(crate) fn new(files: &[FileSpec]) -> Shared {
        let files = files
            .iter()
            .map(|f| FileState {
                spec_name: f.name.clone(),
                data: FileData::new(f.content.clone(), f.size),
                rules: f.rules.clone(),
                cached: f.cached,
                stats: FileStats::default(),
            })
            .collect();
        Shared {
            state: Mutex::new(State {
                files,
                parked: HashMap::new(),
                early: HashSet::new(),
                early_order: VecDeque::new(),
                counters: Counters::default(),
                threads_alive: 0,
            }),
            changed: Condvar::new(),
            timer: Condvar::new(),
            shutdown: AtomicBool::new(false),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            mtime: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn file_index(&self, ino: u64) -> Option<usize> {
        ino.checked_sub(2).and_then(|i| usize::try_from(i).ok())
    }

    /// Take parked requests: hung ones (`delayed == false`) or all of them.
    pub(crate) fn take_parked(&self, include_delayed: bool) -> Vec<Parked> {
        let mut st = self.lock();
        let keys: Vec<u64> = st
            .parked
            .iter()
            .filter(|(_, p)| include_delayed || p.deadline.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(p) = st.parked.remove(&k) {
                if p.deadline.is_none() {
                    let f = &mut st.files[p.file].stats;
                    f.parked = f.parked.saturating_sub(1);
                }
                out.push(p);
            }
        }
        drop(st);
        self.changed.notify_all();
        out
    }

    /// Answer every hung request with its real result.
    pub(crate) fn release_all(&self) -> usize {
        let parked = self.take_parked(false);
        let n = parked.len();
        let answers: Vec<(Pending, Answer)> = {
            let mut st = self.lock();
            st.counters.released += n as u64;
            parked
                .into_iter()
                .map(|p| {
                    let a = complete(&mut st, p.file, p.op);
                    (p.pending, a)
                })
                .collect()
        };
        for (p, a) in answers {
            p.answer(a);
        }
        self.changed.notify_all();
        n
    }

    /// Answer every parked request (hung, and delayed if asked) with an error.
    pub(crate) fn fail_parked(&self, errno: i32, include_delayed: bool) -> usize {
        let parked = self.take_parked(include_delayed);
        let n = parked.len();
        {
            let mut st = self.lock();
            st.counters.injected_errors += n as u64;
        }
        for p in parked {
            p.pending.answer(Answer::Err(errno));
        }
        self.changed.notify_all();
        n
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.lock();
        let c = &st.counters;
        let parked = st.parked.values().filter(|p| p.deadline.is_none()).count();
        let delayed = st.parked.len() - parked;
        let mut files = BTreeMap::new();
        for f in &st.files {
            let mut fs = f.stats.clone();
            fs.size = f.data.size();
            files.insert(f.spec_name.clone(), fs);
        }
        Stats {
            requests: c.requests,
            reads: c.reads,
            writes: c.writes,
            opens: c.opens,
            interrupts: c.interrupts,
            interrupted: c.interrupted,
            bytes_read: c.bytes_read,
            bytes_written: c.bytes_written,
            released: c.released,
            injected_errors: c.injected_errors,
            parked,
            delayed,
            files,
        }
    }

    /// Wait until `pred(state)` holds or `timeout` passes.
    pub(crate) fn wait_until(&self, timeout: Duration, pred: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if pred(&st) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn hung_count(st: &State) -> usize {
        st.parked.values().filter(|p| p.deadline.is_none()).count()
    }

    pub(crate) fn interrupt_count(st: &State) -> u64 {
        st.counters.interrupts
    }

    /// Enter shutdown: no request is parked from now on. The flag is set under the lock, so
    /// the timer either sees it or is already waiting when woken (no lost wake-up).
    pub(crate) fn begin_shutdown(&self) {
        {
            let _st = self.lock();
            self.shutdown.store(true, Ordering::SeqCst);
        }
        self.wake_all();
    }

    /// Wake the timer and every waiter.
    pub(crate) fn wake_all(&self) {
        self.timer.notify_all();
        self.changed.notify_all();
    }

    fn attr(&self, st: &State, ino: u64, attr: &mut FileAttr) -> bool {
        attr.ino(ino);
        attr.uid(self.uid);
        attr.gid(self.gid);
        attr.mtime(self.mtime);
        attr.ctime(self.mtime);
        attr.atime(self.mtime);
        attr.blksize(4096);
        if ino == ROOT_INO {
            attr.mode(libc::S_IFDIR | 0o755);
            attr.nlink(2);
            return true;
        }
        match self.file_index(ino).and_then(|i| st.files.get(i)) {
            Some(f) => {
                attr.mode(libc::S_IFREG | 0o644);
                attr.nlink(1);
                attr.size(f.data.size());
                attr.blocks(f.data.blocks());
                true
            }
            None => false,
        }
    }
}

/// Perform a released / expired parked operation; called with the lock held.
fn complete(st: &mut State, file: usize, op: ParkedOp) -> Answer {
    match op {
        ParkedOp::Read { offset, size } => {
            let data = st.files[file].data.read(offset, u64::from(size));
            st.counters.bytes_read += data.len() as u64;
            st.files[file].stats.bytes_read += data.len() as u64;
            Answer::Data(data)
        }
        ParkedOp::Write { offset, data } => {
            let n = st.files[file].data.write(offset, &data);
            st.counters.bytes_written += n as u64;
            st.files[file].stats.bytes_written += n as u64;
            Answer::Written(n as u32)
        }
    }
}

/// Counts a daemon thread as alive until dropped (also on panic).
struct AliveGuard(Arc<Shared>);

impl AliveGuard {
    fn new(shared: Arc<Shared>) -> AliveGuard {
        AliveGuard(shared)
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.threads_alive = st.threads_alive.saturating_sub(1);
        drop(st);
        self.0.changed.notify_all();
    }
}

/// Block every asynchronous signal in the calling (daemon) thread, so that process-directed
/// signals (SIGINT, a test's SIGUSR2, ...) never interrupt the FUSE loop.
fn block_async_signals() {
    // SAFETY: `set` is a properly sized sigset_t initialised by sigfillset before use;
    // pthread_sigmask only reads it and only affects the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGABRT,
            libc::SIGTRAP,
        ] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// The body of one FUSE loop thread. The caller has already counted it in `threads_alive`.
pub(crate) fn serve(shared: Arc<Shared>, session: Arc<Session>) {
    let _alive = AliveGuard::new(shared.clone());
    block_async_signals();
    loop {
        match session.next_request() {
            Ok(Some(req)) => handle(&shared, req),
            // ENODEV: the connection was unmounted; ECONNABORTED: aborted through fusectl.
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                tracing::warn!("faultfs: reading /dev/fuse failed: {e}");
                break;
            }
        }
    }
}

/// The body of the delay timer thread. The caller has already counted it in `threads_alive`.
pub(crate) fn timer(shared: Arc<Shared>) {
    let _alive = AliveGuard::new(shared.clone());
    block_async_signals();
    let mut st = shared.lock();
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = st
            .parked
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        if expired.is_empty() {
            let next = st.parked.values().filter_map(|p| p.deadline).min();
            st = match next {
                Some(d) => {
                    shared
                        .timer
                        .wait_timeout(st, d.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => shared.timer.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
            continue;
        }
        let mut answers = Vec::with_capacity(expired.len());
        for k in expired {
            if let Some(p) = st.parked.remove(&k) {
                let a = complete(&mut st, p.file, p.op);
                answers.push((p.pending, a));
            }
        }
        drop(st);
        for (p, a) in answers {
            p.answer(a);
        }
        shared.changed.notify_all();
        st = shared.lock();
    }
}

/// A decoded request with everything owned, so the `Request` itself can be moved (parked).
enum Cmd {
    Lookup {
        parent: u64,
        name: OsString,
    },
    Getattr {
        ino: u64,
    },
    Setattr {
        ino: u64,
        size: Option<u64>,
    },
    Open {
        ino: u64,
        flags: u32,
    },
    Read {
        ino: u64,
        offset: u64,
        size: u32,
    },
    Write {
        ino: u64,
        offset: u64,
        data: Vec<u8>,
    },
    Opendir {
        ino: u64,
    },
    Readdir {
        ino: u64,
        offset: u64,
        size: u32,
    },
    Statfs,
    Ok,
    Interrupt {
        unique: u64,
    },
    NoReply,
    Fail(i32),
}

fn decode(req: &Request) -> Cmd {
    let op = match req.operation() {
        Ok(op) => op,
        Err(e) => {
            tracing::warn!("faultfs: undecodable request: {e}");
            return Cmd::Fail(libc::EIO);
        }
    };
    match op {
        Operation::Lookup(op) => Cmd::Lookup {
            parent: op.parent(),
            name: op.name().to_owned(),
        },
        Operation::Getattr(op) => Cmd::Getattr { ino: op.ino() },
        Operation::Setattr(op) => Cmd::Setattr {
            ino: op.ino(),
            size: op.size(),
        },
        Operation::Open(op) => Cmd::Open {
            ino: op.ino(),
            flags: op.flags(),
        },
        Operation::Read(op) => Cmd::Read {
            ino: op.ino(),
            offset: op.offset(),
            size: op.size(),
        },
        Operation::Write(op, mut data) => {
            let size = op.size() as usize;
            let mut buf = Vec::with_capacity(size);
            if data.read_to_end(&mut buf).is_err() {
                return Cmd::Fail(libc::EIO);
            }
            buf.truncate(size);
            Cmd::Write {
                ino: op.ino(),
                offset: op.offset(),
                data: buf,
            }
        }
        Operation::Opendir(op) => Cmd::Opendir { ino: op.ino() },
        Operation::Readdir(op) => Cmd::Readdir {
            ino: op.ino(),
            offset: op.offset(),
            size: op.size(),
        },
        Operation::Statfs(_) => Cmd::Statfs,
        Operation::Release(_)
        | Operation::Releasedir(_)
        | Operation::Flush(_)
        | Operation::Fsync(_)
        | Operation::Fsyncdir(_)
        | Operation::Access(_) => Cmd::Ok,
        // The set of files is fixed.
        Operation::Create(_)
        | Operation::Mknod(_)
        | Operation::Mkdir(_)
        | Operation::Unlink(_)
        | Operation::Rmdir(_)
        | Operation::Rename(_)
        | Operation::Link(_)
        | Operation::Symlink(_) => Cmd::Fail(libc::EPERM),
        // Must be handled explicitly: an ENOSYS reply to INTERRUPT switches interrupts off
        // for the whole connection; FORGET and NOTIFY_REPLY take no reply at all.
        Operation::Interrupt(op) => Cmd::Interrupt {
            unique: op.unique(),
        },
        Operation::Forget(_) | Operation::NotifyReply(..) => Cmd::NoReply,
        _ => Cmd::Fail(libc::ENOSYS),
    }
}

fn reply_err(req: &Request, errno: i32) {
    let _ = req.reply_error(errno);
}

fn handle(shared: &Shared, req: Request) {
    let cmd = decode(&req);
    if !matches!(cmd, Cmd::Interrupt { .. } | Cmd::NoReply) {
        shared.lock().counters.requests += 1;
    }
    match cmd {
        Cmd::Lookup { parent, name } => {
            if parent != ROOT_INO {
                return reply_err(&req, libc::ENOENT);
            }
            let st = shared.lock();
            let Some(i) = st.files.iter().position(|f| *f.spec_name == *name) else {
                drop(st);
                return reply_err(&req, libc::ENOENT);
            };
            let ino = i as u64 + 2;
            let mut out = EntryOut::default();
            shared.attr(&st, ino, out.attr());
            drop(st);
            out.ino(ino);
            out.ttl_attr(TTL);
            out.ttl_entry(TTL);
            let _ = req.reply(out);
        }
        Cmd::Getattr { ino } => {
            let mut out = AttrOut::default();
            let ok = shared.attr(&shared.lock(), ino, out.attr());
            if !ok {
                return reply_err(&req, libc::ENOENT);
            }
            out.ttl(TTL);
            let _ = req.reply(out);
        }
        Cmd::Setattr { ino, size } => {
            let mut st = shared.lock();
            if let (Some(size), Some(i)) = (size, shared.file_index(ino)) {
                if let Some(f) = st.files.get_mut(i) {
                    f.data.set_size(size);
                }
            }
            let mut out = AttrOut::default();
            let ok = shared.attr(&st, ino, out.attr());
            drop(st);
            if !ok {
                return reply_err(&req, libc::ENOENT);
            }
            out.ttl(TTL);
            let _ = req.reply(out);
        }
        Cmd::Open { ino, flags } => {
            if ino == ROOT_INO {
                return reply_err(&req, libc::EISDIR);
            }
            let mut st = shared.lock();
            let Some(f) = shared.file_index(ino).and_then(|i| st.files.get_mut(i)) else {
                drop(st);
                return reply_err(&req, libc::ENOENT);
            };
            if flags & libc::O_TRUNC as u32 != 0 {
                f.data.set_size(0);
            }
            f.stats.opens += 1;
            let cached = f.cached;
            st.counters.opens += 1;
            drop(st);
            let mut out = OpenOut::default();
            out.direct_io(!cached);
            let _ = req.reply(out);
        }
        Cmd::Read { ino, offset, size } => handle_read(shared, req, ino, offset, size),
        Cmd::Write { ino, offset, data } => handle_write(shared, req, ino, offset, data),
        Cmd::Opendir { ino } => {
            if ino != ROOT_INO {
                return reply_err(&req, libc::ENOTDIR);
            }
            let _ = req.reply(OpenOut::default());
        }
        Cmd::Readdir { ino, offset, size } => {
            if ino != ROOT_INO {
                return reply_err(&req, libc::ENOTDIR);
            }
            let st = shared.lock();
            let mut entries: Vec<(OsString, u64, u32)> = vec![
                (".".into(), ROOT_INO, u32::from(libc::DT_DIR)),
                ("..".into(), ROOT_INO, u32::from(libc::DT_DIR)),
            ];
            for (i, f) in st.files.iter().enumerate() {
                entries.push((
                    f.spec_name.clone().into(),
                    i as u64 + 2,
                    u32::from(libc::DT_REG),
                ));
            }
            drop(st);
            let mut out = ReaddirOut::new(size as usize);
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, (name, ino, typ)) in entries.iter().enumerate().skip(skip) {
                if out.entry(name, *ino, *typ, i as u64 + 1) {
                    break;
                }
            }
            let _ = req.reply(out);
        }
        Cmd::Statfs => {
            let nfiles = shared.lock().files.len() as u64;
            let mut out = StatfsOut::default();
            let s = out.statfs();
            s.bsize(4096);
            s.frsize(4096);
            s.blocks(1 << 30);
            s.bfree(1 << 30);
            s.bavail(1 << 30);
            s.files(nfiles + 1);
            s.ffree(0);
            s.namelen(255);
            let _ = req.reply(out);
        }
        Cmd::Ok => {
            let _ = req.reply(());
        }
        Cmd::Interrupt { unique } => handle_interrupt(shared, unique),
        Cmd::NoReply => {}
        Cmd::Fail(errno) => reply_err(&req, errno),
    }
}

/// The behaviour of the first rule matching a request (or `Normal`).
fn behavior_for(rules: &[Rule], write: bool, offset: u64, len: u64) -> Behavior {
    rules
        .iter()
        .find(|r| {
            (if write {
                r.on.matches_write()
            } else {
                r.on.matches_read()
            }) && r.overlaps(offset, len)
        })
        .map_or(Behavior::Normal, |r| r.behavior)
}

/// Park a request (hung: `deadline == None`; delayed: `Some`). If an interrupt for it already
/// arrived (several loop threads: the INTERRUPT can be handled before its request is parked),
/// or the filesystem is shutting down, it is answered at once instead.
fn park(shared: &Shared, mut st: MutexGuard<'_, State>, parked: Parked) {
    let unique = parked.pending.unique();
    if st.early.remove(&unique) {
        st.counters.interrupted += 1;
        st.files[parked.file].stats.interrupted += 1;
        drop(st);
        parked.pending.answer(Answer::Err(libc::EINTR));
        shared.changed.notify_all();
        return;
    }
    if shared.shutdown.load(Ordering::SeqCst) {
        drop(st);
        parked.pending.answer(Answer::Err(libc::EIO));
        return;
    }
    let delayed = parked.deadline.is_some();
    if !delayed {
        st.files[parked.file].stats.parked += 1;
    }
    st.parked.insert(unique, parked);
    drop(st);
    if delayed {
        shared.timer.notify_all();
    }
    shared.changed.notify_all();
}

fn handle_read(shared: &Shared, req: Request, ino: u64, offset: u64, size: u32) {
    let mut st = shared.lock();
    let Some(idx) = shared.file_index(ino).filter(|i| *i < st.files.len()) else {
        drop(st);
        return reply_err(
            &req,
            if ino == ROOT_INO {
                libc::EISDIR
            } else {
                libc::ENOENT
            },
        );
    };
    st.counters.reads += 1;
    let f = &mut st.files[idx];
    f.stats.reads += 1;
    let fsize = f.data.size();
    // Rules match the part of the request inside the file: a read at or past EOF is a
    // plain EOF.
    let len = if offset >= fsize {
        0
    } else {
        u64::from(size).min(fsize - offset)
    };
    let behavior = behavior_for(&f.rules, false, offset, len);
    let answer = match behavior {
        Behavior::Normal => complete(&mut st, idx, ParkedOp::Read { offset, size }),
        Behavior::Short { n } => complete(
            &mut st,
            idx,
            ParkedOp::Read {
                offset,
                size: size.min(n),
            },
        ),
        Behavior::Eio => Answer::Err(libc::EIO),
        Behavior::Enospc => Answer::Err(libc::ENOSPC),
        Behavior::Errno { errno } => Answer::Err(errno),
        Behavior::Hang | Behavior::Delay { .. } => {
            let deadline = match behavior {
                Behavior::Delay { ms } => Some(Instant::now() + Duration::from_millis(ms)),
                _ => None,
            };
            let parked = Parked {
                pending: Pending::new(req),
                file: idx,
                op: ParkedOp::Read { offset, size },
                deadline,
            };
            return park(shared, st, parked);
        }
    };
    if matches!(answer, Answer::Err(_)) {
        st.counters.injected_errors += 1;
    }
    drop(st);
    Pending::new(req).answer(answer);
    shared.changed.notify_all();
}

fn handle_write(shared: &Shared, req: Request, ino: u64, offset: u64, data: Vec<u8>) {
    let mut st = shared.lock();
    let Some(idx) = shared.file_index(ino).filter(|i| *i < st.files.len()) else {
        drop(st);
        return reply_err(
            &req,
            if ino == ROOT_INO {
                libc::EISDIR
            } else {
                libc::ENOENT
            },
        );
    };
    st.counters.writes += 1;
    let f = &mut st.files[idx];
    f.stats.writes += 1;
    let behavior = behavior_for(&f.rules, true, offset, data.len() as u64);
    let answer = match behavior {
        Behavior::Normal => complete(&mut st, idx, ParkedOp::Write { offset, data }),
        Behavior::Short { n } => {
            let mut data = data;
            data.truncate(n as usize);
            complete(&mut st, idx, ParkedOp::Write { offset, data })
        }
        Behavior::Eio => Answer::Err(libc::EIO),
        Behavior::Enospc => Answer::Err(libc::ENOSPC),
        Behavior::Errno { errno } => Answer::Err(errno),
        Behavior::Hang | Behavior::Delay { .. } => {
            let deadline = match behavior {
                Behavior::Delay { ms } => Some(Instant::now() + Duration::from_millis(ms)),
                _ => None,
            };
            let parked = Parked {
                pending: Pending::new(req),
                file: idx,
                op: ParkedOp::Write { offset, data },
                deadline,
            };
            return park(shared, st, parked);
        }
    };
    if matches!(answer, Answer::Err(_)) {
        st.counters.injected_errors += 1;
    }
    drop(st);
    Pending::new(req).answer(answer);
    shared.changed.notify_all();
}

fn handle_interrupt(shared: &Shared, unique: u64) {
    let mut st = shared.lock();
    st.counters.interrupts += 1;
    let found = st.parked.remove(&unique);
    match found {
        Some(p) => {
            st.counters.interrupted += 1;
            let f = &mut st.files[p.file].stats;
            f.interrupted += 1;
            if p.deadline.is_none() {
                f.parked = f.parked.saturating_sub(1);
            }
            drop(st);
            p.pending.answer(Answer::Err(libc::EINTR));
        }
        None => {
            // Either the request already got its real result (nothing to do), or another
            // loop thread has read it but not parked it yet: remember the interrupt.
            if st.early.insert(unique) {
                st.early_order.push_back(unique);
                while st.early_order.len() > EARLY_INTERRUPTS_MAX {
                    if let Some(old) = st.early_order.pop_front() {
                        st.early.remove(&old);
                    }
                }
            }
            drop(st);
        }
    }
    shared.changed.notify_all();
}
