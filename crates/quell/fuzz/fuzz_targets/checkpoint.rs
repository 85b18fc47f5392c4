//! Fuzzes checkpoints as untrusted input (issue 15, DESIGN I1, I9, I10): decoding JSON and
//! postcard, and `Ring::resubmit` of whatever decodes, on a real ring (io_uring or the
//! portable backend, chosen by the input).
//!
//! Input: one mode byte, then the encoded checkpoint. Mode bits: 1 = JSON (else
//! postcard), 2 = portable backend (else io_uring), 4 = resubmit into a quiesced ring,
//! 8 = hand `resubmit` buffers for the first ops (sized from the descriptors, so some fit
//! and some do not).
//!
//! Checked after each input: what decodes encodes and decodes to itself in both forms;
//! `resubmit` answers once per descriptor, leaves the ring as paused as it was, holds
//! exactly the ops it accepted, hands back a buffer the caller gave for a refused
//! transfer; every accepted op yields exactly one completion (all are canceled, then
//! collected under a hang guard) and the ring ends empty. Panics, aborts, leaks and
//! sanitizer reports are crashes.
//!
//! Confinement: the ops run for real, so the harness decides what they may touch. A
//! fuzzer steers values through comparisons, so it could learn the identity of any open
//! file and name any path; hence:
//! - every descriptor number (and every `AT_FDCWD`) is mapped onto objects the harness
//!   made for this input: a pipe, a socket pair, an eventfd, a memfd, a private temporary
//!   directory. Negative numbers other than `AT_FDCWD` stay, to be refused. No network
//!   socket exists, so `connect` and `accept` cannot reach anything.
//! - a `close` gets a duplicate of its object made for it alone, so it can close nothing
//!   else (the harness closes the duplicate itself if the op did not).
//! - path ops resolve in the private directory only: paths lose leading `/` and `..`
//!   components (NUL bytes and lengths stay, for the checks to see). No op can create
//!   a symbolic link or FIFO there (a rename's whiteout is a 0:0 device that cannot be
//!   opened), so nothing resolves outside it.
//! - `fallocate` beyond 1 MiB is pointed at the pipe (`ESPIPE`): on the memfd it would
//!   take that much memory. Writes are bounded by the input's carried bytes.
//! - `reopen_files` is not fuzzed: it opens the paths a checkpoint names (devices
//!   included), which is why it is documented as for trusted checkpoints only.
//!
//! Running under the fake backend instead would miss what matters here: the real
//! backends receiving what `resubmit` lets through.
#![no_main]

use quell::{
    BackendChoice, Buffers, Checkpoint, FileRef, OpId, OpKind, Outcome, QuiescePolicy, Ring,
};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let decoded = if mode & 1 != 0 {
        match std::str::from_utf8(body) {
            Ok(text) => Checkpoint::from_json(text),
            Err(_) => return,
        }
    } else {
        Checkpoint::from_bytes(body)
    };
    let Ok(ckpt) = decoded else { return };
    let json = ckpt
        .to_json()
        .expect("a decoded checkpoint encodes as JSON");
    assert_eq!(
        Checkpoint::from_json(&json).expect("own JSON decodes"),
        ckpt
    );
    let bytes = ckpt
        .to_bytes()
        .expect("a decoded checkpoint encodes as postcard");
    assert_eq!(
        Checkpoint::from_bytes(&bytes).expect("own postcard decodes"),
        ckpt
    );
    let _ = ckpt.fds();

    let threads_before = threads();
    let sandbox = Sandbox::new();
    let ckpt = sandbox.confine(ckpt);
    let backend = if mode & 2 != 0 {
        BackendChoice::Portable
    } else {
        BackendChoice::Uring
    };
    let mut ring = Ring::builder()
        .backend(backend)
        .capacity(64)
        .max_in_flight(64)
        .pool_threads(2)
        .teardown_timeout(Duration::from_secs(5))
        .build()
        .expect("ring");
    if mode & 4 != 0 {
        ring.quiesce(QuiescePolicy::default())
            .expect("quiesce of an empty ring");
    }
    let paused = ring.is_quiesced();
    let mut bufs = Buffers::new();
    let mut given = HashSet::new();
    if mode & 8 != 0 {
        for d in ckpt.ops.iter().take(8) {
            if d.iov_lens.is_empty() {
                bufs.insert(d.id, vec![0u8; d.len.min(1 << 16) as usize]);
            } else {
                let v = d
                    .iov_lens
                    .iter()
                    .take(8)
                    .map(|&l| vec![0u8; l.min(4096) as usize])
                    .collect();
                bufs.insert_vectored(d.id, v);
            }
            given.insert(d.id);
        }
    }
    let mut seen = HashSet::new();
    let twice: HashSet<_> = ckpt
        .ops
        .iter()
        .filter(|d| !seen.insert(d.id))
        .map(|d| d.id)
        .collect();

    let res = ring.resubmit(&ckpt, bufs);
    assert_eq!(res.len(), ckpt.ops.len(), "one answer per descriptor");
    assert_eq!(
        ring.is_quiesced(),
        paused,
        "resubmit changed the pause state"
    );
    let mut ids = HashSet::new();
    let mut accepted = HashMap::new();
    let mut back_for = HashSet::new();
    for (i, r) in res.into_iter().enumerate() {
        let d = &ckpt.ops[i];
        match r {
            Ok(id) => {
                assert!(ids.insert(id), "one id for two ops");
                accepted.insert(i, id);
            }
            Err(e) => {
                assert_eq!((e.index, e.user_data), (i, d.user_data));
                let buffered = matches!(
                    d.kind,
                    OpKind::Read
                        | OpKind::Write
                        | OpKind::Send
                        | OpKind::Recv
                        | OpKind::Readv
                        | OpKind::Writev
                );
                let had = given.contains(&d.id) && buffered && !twice.contains(&d.id);
                let back = e.into_buffer().is_some();
                assert!(
                    !back || given.contains(&d.id),
                    "a buffer handed back that nobody gave"
                );
                if had {
                    assert!(back, "the caller's buffer for refused op #{i} was dropped");
                }
                if back {
                    assert!(back_for.insert(d.id), "one buffer handed back twice");
                }
            }
        }
    }
    assert_eq!(
        ring.len(),
        ids.len(),
        "the ring holds exactly the accepted ops"
    );
    ring.resume();
    ring.cancel_all();
    let start = Instant::now();
    let mut done = HashMap::new();
    while done.len() < ids.len() {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{} of {} completions; outstanding: {:?}",
            done.len(),
            ids.len(),
            ring.ops()
        );
        ring.wait(1, Some(Duration::from_millis(50))).expect("wait");
        for c in ring.completions() {
            assert!(ids.contains(&c.id), "a completion for an op never accepted");
            sandbox.adopt(&c);
            assert!(
                done.insert(c.id, c.outcome).is_none(),
                "two completions for one op"
            );
        }
    }
    assert!(ring.is_empty());
    sandbox.finish(&accepted, &done);
    drop(ring);
    // The pool's workers (both backends have one) are detached and exit on their own
    // once the ring is gone; a worker still exiting holds thread-exit bookkeeping that
    // the leak checker would report as lost. Wait for them (they are idle: every op has
    // ended), and for io_uring's own workers.
    let start = Instant::now();
    while threads() > threads_before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "workers outlived their ring"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// What the ops of one input may touch.
struct Sandbox {
    dir: std::path::PathBuf,
    dirfd: OwnedFd,
    objs: Vec<OwnedFd>,
    /// Duplicates made for `close` ops, by op index (closed here unless the op did).
    doomed: std::cell::RefCell<HashMap<usize, RawFd>>,
    /// Descriptors the ops opened (openat, accept), closed at the end.
    opened: std::cell::RefCell<Vec<RawFd>>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn owned(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = std::env::temp_dir().join(format!(
            "quell-fuzz-ckpt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).expect("private directory");
        let dirfd: OwnedFd = std::fs::File::open(&dir).expect("open directory").into();
        let mut p = [0; 2];
        // SAFETY: `p` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let mut s = [0; 2];
        // SAFETY: `s` has room for two descriptors.
        assert_eq!(
            unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    s.as_mut_ptr(),
                )
            },
            0
        );
        // SAFETY: plain syscalls returning new descriptors.
        let ev = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        // SAFETY: a valid C string.
        let mem = unsafe { libc::memfd_create(c"quell-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
        let objs = vec![
            owned(p[0]),
            owned(p[1]),
            owned(s[0]),
            owned(s[1]),
            owned(ev),
            owned(mem),
        ];
        // Some bytes to read everywhere a read can find them.
        for (fd, msg) in [
            (p[1], &b"pipe data"[..]),
            (s[1], b"socket data"),
            (mem, b"file data"),
        ] {
            // SAFETY: valid buffer.
            unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: valid 8-byte buffer.
        unsafe { libc::write(ev, one.as_ptr().cast(), 8) };
        Sandbox {
            dir,
            dirfd,
            objs,
            doomed: Default::default(),
            opened: Default::default(),
        }
    }

    fn obj(&self, fd: RawFd) -> RawFd {
        self.objs[fd as usize % self.objs.len()].as_raw_fd()
    }

    /// The checkpoint with every descriptor, path and range confined (module docs).
    fn confine(&self, mut ckpt: Checkpoint) -> Checkpoint {
        let dirfd = self.dirfd.as_raw_fd();
        let pipe = self.objs[0].as_raw_fd();
        for (i, d) in ckpt.ops.iter_mut().enumerate() {
            let path_op = matches!(
                d.kind,
                OpKind::OpenAt | OpKind::Statx | OpKind::UnlinkAt | OpKind::RenameAt
            );
            let map = |fd: RawFd| {
                if path_op && (fd >= 0 || fd == libc::AT_FDCWD) {
                    dirfd
                } else if fd >= 0 {
                    self.obj(fd)
                } else {
                    fd
                }
            };
            d.fd = map(d.fd);
            d.fd2 = map(d.fd2);
            if d.kind == OpKind::Close && d.fd >= 0 {
                // SAFETY: `d.fd` is one of the sandbox's open descriptors.
                let dup = unsafe { libc::fcntl(d.fd, libc::F_DUPFD_CLOEXEC, 0) };
                assert!(dup >= 0);
                self.doomed.borrow_mut().insert(i, dup);
                d.fd = dup;
            }
            if d.kind == OpKind::Fallocate && d.offset.unwrap_or(0).saturating_add(d.len) > 1 << 20
            {
                d.fd = pipe;
            }
            for (fd, file) in [(d.fd, &mut d.file), (d.fd2, &mut d.file2)] {
                // Mostly the true identity (so ops run); sometimes the fuzzer's (refused).
                if let Some(f) = file {
                    if f.ino % 8 != 0 {
                        if let Some(real) = identity(fd) {
                            *f = FileRef {
                                path: f.path.take(),
                                status_flags: f.status_flags,
                                ..real
                            };
                        }
                    }
                }
            }
            for p in [&mut d.path, &mut d.path2].into_iter().flatten() {
                *p = confine_path(p);
            }
        }
        ckpt
    }

    /// Keeps what a completion opened, to close it.
    fn adopt(&self, c: &quell::Completion) {
        if matches!(c.kind(), OpKind::OpenAt | OpKind::Accept) {
            if let Outcome::Done(fd) = c.outcome {
                self.opened.borrow_mut().push(fd as RawFd);
            }
        }
    }

    /// Closes what the ops opened and the duplicates no `close` op closed. `accepted`
    /// maps op indexes to ids, `done` ids to outcomes.
    fn finish(self, accepted: &HashMap<usize, OpId>, done: &HashMap<OpId, Outcome>) {
        for fd in self.opened.borrow().iter() {
            // SAFETY: a descriptor an op opened for this input and nothing else owns.
            unsafe { libc::close(*fd) };
        }
        for (i, fd) in self.doomed.borrow().iter() {
            // A close reported done closed it (honest outcomes, I4); closing the number
            // again could close whatever took it since, the ring's own descriptors included.
            let closed = accepted.get(i).and_then(|id| done.get(id)) == Some(&Outcome::Done(0));
            if !closed {
                // SAFETY: the duplicate made for this op, which did not close it.
                unsafe { libc::close(*fd) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `(dev, ino, type)` of an open descriptor as a `FileRef` (birth time 0: not compared).
fn identity(fd: RawFd) -> Option<FileRef> {
    // SAFETY: zeroed stat is valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some(FileRef {
        dev: st.st_dev,
        ino: st.st_ino,
        kind: st.st_mode & libc::S_IFMT,
        born: 0,
        path: None,
        status_flags: 0,
    })
}

/// A path that resolves inside the private directory: relative, no `..`.
fn confine_path(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    for (i, part) in p.split(|&b| b == b'/').enumerate() {
        if i > 0 && !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(if part == b".." { b"__" } else { part });
    }
    out
}
