//! Descriptor identity in the backends (contract item I12): no state the portable
//! backend or the pool keeps under a descriptor number (the per-descriptor FIFOs of
//! waiting ops, epoll registrations, pool jobs not yet started) is ever applied to a
//! different file that reused the number, whether the number was closed through the ring
//! (`Op::close`) or outside quell (an ordinary close), and reused by another kind of file.
//!
//! Each test asks what a user observes: the bytes each op got, exactly one completion per
//! op, nothing hanging. Closed through the ring, an op keeps acting on its own file on
//! both backends. Closed outside quell, io_uring's op keeps its file (the kernel holds a
//! reference) while the portable backend ends it `Failed(EBADF)` the first time it
//! touches the number again (see `backend/portable.rs`, "Descriptor identity"); on both,
//! the old op never sees the new file's bytes and the new op gets all of its own.

#[macro_use]
mod common;

use quell::{BackendChoice, CancelClass, Completion, Interest, Op, OpId, Outcome, Ring};
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The tests of this file move descriptors onto chosen numbers; run one at a time so a
/// number one test frees is never taken by another test's thread meanwhile.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn ring(b: BackendChoice) -> Ring {
    ring_with(b, 4)
}

fn ring_with(b: BackendChoice, pool_threads: usize) -> Ring {
    Ring::builder()
        .backend(b)
        .capacity(256)
        .max_in_flight(256)
        .pool_threads(pool_threads)
        .teardown_timeout(Duration::from_secs(20))
        .build()
        .expect("ring")
}

/// Puts `new` on number `n` as one step: whatever `n` named is closed (an ordinary
/// close outside quell) and `n` now names `new`'s file.
fn reuse(n: RawFd, new: OwnedFd) -> OwnedFd {
    if new.as_raw_fd() == n {
        return new; // the kernel handed out the freed number itself
    }
    // SAFETY: `new` is open; dup2 atomically closes `n` and makes it a copy of `new`.
    let r = unsafe { libc::dup2(new.as_raw_fd(), n) };
    assert_eq!(r, n, "dup2: {}", std::io::Error::last_os_error());
    drop(new);
    // SAFETY: dup2 made `n` a descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// A second descriptor of the same file (keeps it open elsewhere).
fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().expect("dup")
}

/// Collects completions with a hang guard, checking there is never a second one per op.
#[derive(Default)]
struct Seen {
    got: HashMap<OpId, Completion>,
    count: HashMap<OpId, u32>,
}

impl Seen {
    fn pump(&mut self, ring: &mut Ring, timeout: Duration) {
        ring.wait(1, Some(timeout)).expect("wait");
        for c in ring.completions() {
            let n = self.count.entry(c.id).or_default();
            *n += 1;
            assert_eq!(*n, 1, "two completions for {:?}", c.id);
            self.got.insert(c.id, c);
        }
    }

    /// Waits for `id` (hang guard: `secs`).
    fn wait(&mut self, ring: &mut Ring, id: OpId, secs: u64) -> Completion {
        let start = Instant::now();
        while !self.got.contains_key(&id) {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "no completion for {id:?} after {secs}s; ops: {:?}",
                ring.ops()
            );
            self.pump(ring, Duration::from_millis(50));
        }
        self.got.remove(&id).unwrap()
    }

    /// Lets the ring run for `d`; asserts `id` did not complete meanwhile (a negative
    /// check: a slow machine only makes it weaker, never flaky).
    fn still_pending(&mut self, ring: &mut Ring, id: OpId, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            self.pump(ring, Duration::from_millis(10));
        }
        assert!(
            !self.got.contains_key(&id),
            "{id:?} completed: {:?}",
            self.got.get(&id)
        );
    }

    /// Every op seen completed exactly once and nothing is left outstanding.
    fn finish(&mut self, ring: &mut Ring) {
        self.pump(ring, Duration::from_millis(10));
        assert!(
            self.got.is_empty(),
            "completions not checked: {:?}",
            self.got
        );
        assert!(ring.ops().is_empty(), "ops left: {:?}", ring.ops());
    }
}

/// Writes `data` to `fd` (never blocks); false if it could not all be written (e.g. a
/// pipe whose reader is gone: `EPIPE`, SIGPIPE being ignored in Rust programs).
fn try_write(fd: RawFd, data: &[u8]) -> bool {
    // SAFETY: valid buffer.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT) };
    if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSOCK) {
        // SAFETY: valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        return n == data.len() as isize;
    }
    n == data.len() as isize
}

/// The kinds of file a number is reused by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pipe,
    Socket,
    EventFd,
    File,
}

/// One file quell reads from: `fd` (moved onto the number under test), and a way to
/// make it readable from outside.
struct Obj {
    kind: Kind,
    fd: OwnedFd,
    /// The other end (pipe, socket), a second descriptor (eventfd), or the temp file.
    feeder: Option<OwnedFd>,
    _dir: Option<TempDir>,
}

/// The bytes an object yields once fed with `tag` (an eventfd yields its 8-byte counter).
fn yielded(kind: Kind, tag: &[u8]) -> Vec<u8> {
    match kind {
        Kind::EventFd => (tag.len() as u64).to_ne_bytes().to_vec(),
        _ => tag.to_vec(),
    }
}

impl Obj {
    fn new(kind: Kind, content: &[u8]) -> Obj {
        match kind {
            Kind::Pipe => {
                let (r, w) = common::pipe();
                Obj {
                    kind,
                    fd: r,
                    feeder: Some(w),
                    _dir: None,
                }
            }
            Kind::Socket => {
                let (a, b) = UnixStream::pair().expect("socketpair");
                Obj {
                    kind,
                    fd: a.into(),
                    feeder: Some(b.into()),
                    _dir: None,
                }
            }
            Kind::EventFd => {
                // SAFETY: plain syscall.
                let e = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                assert!(e >= 0, "eventfd: {}", std::io::Error::last_os_error());
                // SAFETY: a fresh descriptor nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(e) };
                Obj {
                    kind,
                    feeder: None, // an eventfd is fed through `fd` itself, or a dup
                    fd,
                    _dir: None,
                }
            }
            Kind::File => {
                let dir = TempDir::new();
                let path = dir.0.join("f");
                std::fs::write(&path, content).unwrap();
                let f = std::fs::File::open(&path).unwrap();
                Obj {
                    kind,
                    fd: f.into(),
                    feeder: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// Makes the object readable with `tag` (through the feeder, or `via` for an eventfd).
    fn feed(&self, via: RawFd, tag: &[u8]) -> bool {
        match self.kind {
            Kind::EventFd => try_write(via, &(tag.len() as u64).to_ne_bytes()),
            _ => try_write(self.feeder.as_ref().expect("feeder").as_raw_fd(), tag),
        }
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "quell-fdid-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an op waiting on a number closed outside quell and reused becomes, once its
/// old file is fed `tag`: on io_uring it kept its file and read `tag`; the portable
/// backend ended it `EBADF` when it saw the reuse. Never anything of the new file.
fn check_orphan(b: BackendChoice, c: &Completion, old: Kind, tag: &[u8]) {
    match b {
        BackendChoice::Portable => assert_eq!(
            c.outcome,
            Outcome::Failed(quell::Errno::BADF),
            "orphaned op on portable: {c:?}"
        ),
        _ => {
            assert_eq!(c.outcome, Outcome::Done(yielded(old, tag).len()), "{c:?}");
            assert_eq!(c.data(), yielded(old, tag));
        }
    }
}

/// A read waits on `old`; its number is closed outside quell and reused by `new`; a new
/// read on the number gets `new`'s bytes, the old one never does. `keep_old`: the old file
/// stays open elsewhere and becomes ready after the new read parked (its leftover epoll
/// item fires), which must not serve the new read.
fn read_after_outside_reuse(b: BackendChoice, old: Kind, new: Kind, keep_old: bool) {
    let _g = serial();
    let mut ring = ring(b);
    let mut seen = Seen::default();
    let old_obj = Obj::new(old, b"");
    // An eventfd is fed through a descriptor of its own, which keeps it open elsewhere.
    let elsewhere = (keep_old || old == Kind::EventFd).then(|| dup(&old_obj.fd));
    let old_feeder = old_obj.feeder;
    let feed_old = |tag: &[u8]| -> bool {
        match old {
            Kind::EventFd => try_write(
                elsewhere.as_ref().unwrap().as_raw_fd(),
                &(tag.len() as u64).to_ne_bytes(),
            ),
            _ => try_write(old_feeder.as_ref().unwrap().as_raw_fd(), tag),
        }
    };
    // The number is closed by the reuse below, not by an owner.
    let n = old_obj.fd.into_raw_fd();
    let r1 = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
    seen.still_pending(&mut ring, r1, Duration::from_millis(30));

    let new_obj = Obj::new(new, b"file-bytes");
    let new_fd = reuse(n, dup(&new_obj.fd));
    let r2 = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
    if new == Kind::File {
        assert_eq!(seen.wait(&mut ring, r2, 10).data(), b"file-bytes");
    } else {
        seen.still_pending(&mut ring, r2, Duration::from_millis(30));
        if keep_old {
            assert!(feed_old(b"old-1"), "the old file is open elsewhere");
            seen.still_pending(&mut ring, r2, Duration::from_millis(50));
        }
        assert!(new_obj.feed(new_fd.as_raw_fd(), b"new-bytes"));
        assert_eq!(
            seen.wait(&mut ring, r2, 10).data(),
            yielded(new, b"new-bytes")
        );
    }
    // The old read: on io_uring it still waits on its file; feed that file.
    let tag: &[u8] = if keep_old { b"old-1" } else { b"old-2" };
    if !keep_old {
        // Only io_uring's op (or a descriptor kept elsewhere) still holds the old file.
        let held = b == BackendChoice::Uring || elsewhere.is_some();
        assert_eq!(feed_old(tag), held);
    }
    let c = seen.wait(&mut ring, r1, 10);
    check_orphan(b, &c, old, tag);
    // The number's new file serves a further read, untouched by the old state.
    if new != Kind::File {
        let r3 = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        assert!(new_obj.feed(new_fd.as_raw_fd(), b"more"));
        assert_eq!(seen.wait(&mut ring, r3, 10).data(), yielded(new, b"more"));
    }
    seen.finish(&mut ring);
    drop(new_fd);
}

/// Runs `f` on a pool worker of `ring` until `release` is sent: the ring's only worker is
/// busy, so the jobs submitted next wait in the pool's queue.
fn occupy_pool(ring: &mut Ring, seen: &mut Seen) -> (OpId, mpsc::Sender<()>) {
    let (release, rx) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let id = ring
        .submit(Op::blocking(move || {
            let _ = started_tx.send(());
            let _ = rx.recv_timeout(Duration::from_secs(30));
            Ok(0)
        }))
        .unwrap();
    let t = Instant::now();
    while started.try_recv().is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the blocker never ran"
        );
        seen.pump(ring, Duration::from_millis(10));
    }
    (id, release)
}

/// The old file a read waits on in [`old_ready_after_outside_reuse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Old {
    /// A pipe's read end (the portable backend retries it with `RWF_NOWAIT`).
    Pipe,
    /// A non-blocking socket (retried with a plain `read`, which any new file answers).
    NonBlockingSocket,
}

/// The gap the first identity fix left: a read waits on `old`, which stays open
/// elsewhere; its number is closed outside quell and reused by `new`; both files become
/// readable before quell touches the number again. The event of the old file's
/// registration must not be served by reading the number (the new file): the old read
/// keeps its own file on io_uring and ends `EBADF` on portable, never with the new
/// file's bytes, and those bytes reach a read on the new file.
fn old_ready_after_outside_reuse(b: BackendChoice, old: Old, new: Kind) {
    let _g = serial();
    let mut ring = ring(b);
    let mut seen = Seen::default();
    let (old_fd, old_feeder): (OwnedFd, OwnedFd) = match old {
        Old::Pipe => common::pipe(),
        Old::NonBlockingSocket => {
            let (a, p) = UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            (a.into(), p.into())
        }
    };
    let keep = dup(&old_fd);
    let n = old_fd.into_raw_fd();
    let r1 = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
    seen.still_pending(&mut ring, r1, Duration::from_millis(30));
    let new_obj = Obj::new(new, b"");
    let new_fd = reuse(n, dup(&new_obj.fd));
    // Nothing of quell runs between the reuse and both files becoming readable.
    assert!(new_obj.feed(new_fd.as_raw_fd(), b"new-bytes"));
    assert!(try_write(old_feeder.as_raw_fd(), b"old-bytes"));
    let c = seen.wait(&mut ring, r1, 10);
    check_orphan(b, &c, Kind::Pipe, b"old-bytes");
    // The old file's bytes: read by io_uring's op on its own file, or still there.
    let left = common::drain_nonblocking(keep.as_raw_fd());
    match b {
        BackendChoice::Portable => assert_eq!(left, b"old-bytes"),
        _ => assert_eq!(left, b""),
    }
    let r2 = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
    assert_eq!(
        seen.wait(&mut ring, r2, 10).data(),
        yielded(new, b"new-bytes")
    );
    seen.finish(&mut ring);
    drop(new_fd);
}

/// Runs `fut` on `driver` with a hang guard of `secs` seconds.
fn block_on_guarded<F: Future>(driver: &quell::future::Driver, fut: F, secs: u64) -> F::Output {
    let mut guard = driver.sleep(Duration::from_secs(secs)).unwrap();
    let mut fut = std::pin::pin!(fut);
    driver.block_on(std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(v);
        }
        if std::pin::Pin::new(&mut guard).poll(cx).is_ready() {
            panic!("no result after {secs}s");
        }
        std::task::Poll::Pending
    }))
}

both_backends! {
    /// Break 3: a read waits on a pipe whose number is then closed through the ring and
    /// reused by another pipe. The old read keeps its own pipe (io_uring holds a file
    /// reference); the new read gets the new pipe's bytes; once the old read is done its
    /// pipe is released (its writer sees `EPIPE`).
    fn ring_close_keeps_a_waiting_read_on_its_file(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (old_r, old_w) = common::pipe();
        let n = old_r.into_raw_fd();
        let old = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        seen.still_pending(&mut ring, old, Duration::from_millis(30));
        let (new_r, new_w) = common::pipe();
        let close = ring.submit(Op::close(n)).unwrap();
        assert_eq!(seen.wait(&mut ring, close, 10).outcome, Outcome::Done(0));
        let new_r = reuse(n, new_r);
        let new = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        seen.still_pending(&mut ring, new, Duration::from_millis(30));
        common::write_all(new_w.as_raw_fd(), b"new-bytes");
        assert_eq!(seen.wait(&mut ring, new, 10).data(), b"new-bytes");
        seen.still_pending(&mut ring, old, Duration::from_millis(30));
        assert!(try_write(old_w.as_raw_fd(), b"old-bytes"), "the old pipe lost its reader");
        assert_eq!(seen.wait(&mut ring, old, 10).data(), b"old-bytes");
        // Nothing holds the old pipe's reading end any more.
        assert!(!try_write(old_w.as_raw_fd(), b"x"), "the old pipe is still held open");
        seen.finish(&mut ring);
        drop(new_r);
    }

    /// Closed through the ring under a write waiting on a full pipe, a poll and a read on
    /// a socket, the number reused by a socket: each old op keeps its file, the new ones
    /// get theirs, and a cancel of the last old op lets its file go.
    fn ring_close_keeps_writes_polls_and_socket_reads(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        // A write waiting for room in a full pipe.
        let (pr, pw) = common::pipe();
        // SAFETY: plain fcntl on our descriptor.
        let cap = unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_GETPIPE_SZ) } as usize;
        common::write_all(pw.as_raw_fd(), &vec![b'f'; cap]);
        let wn = pw.into_raw_fd();
        let w1 = ring.submit(Op::write(wn, b"old-write".to_vec())).unwrap();
        seen.still_pending(&mut ring, w1, Duration::from_millis(30));
        // A poll and a read waiting on a socket.
        let (s, peer) = UnixStream::pair().unwrap();
        let sn = OwnedFd::from(s).into_raw_fd();
        let p1 = ring.submit(Op::poll(sn, Interest::READABLE)).unwrap();
        let r1 = ring.submit(Op::read(sn, vec![0u8; 16])).unwrap();
        seen.still_pending(&mut ring, r1, Duration::from_millis(30));
        // Each number is reused as soon as it is closed (a number freed earlier may be
        // taken by quell itself, e.g. for the duplicate the next close needs). The new
        // sockets exist before the closes, so none of them takes a freed number.
        let (a, a_peer) = UnixStream::pair().unwrap();
        let (c, mut c_peer) = UnixStream::pair().unwrap();
        let mut reused = Vec::new();
        for (fd, new) in [(wn, OwnedFd::from(a)), (sn, OwnedFd::from(c))] {
            let id = ring.submit(Op::close(fd)).unwrap();
            assert_eq!(seen.wait(&mut ring, id, 10).outcome, Outcome::Done(0));
            reused.push(reuse(fd, new));
        }
        let w2 = ring.submit(Op::write(wn, b"new-write".to_vec())).unwrap();
        assert_eq!(seen.wait(&mut ring, w2, 10).outcome, Outcome::Done(9));
        let mut got = [0u8; 9];
        (&a_peer).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"new-write");
        let r2 = ring.submit(Op::read(sn, vec![0u8; 16])).unwrap();
        c_peer.write_all(b"new-read").unwrap();
        assert_eq!(seen.wait(&mut ring, r2, 10).data(), b"new-read");
        seen.still_pending(&mut ring, p1, Duration::from_millis(30));
        // The old files: room in the pipe, bytes on the old socket.
        let pipe_reader = std::fs::File::from(pr);
        let mut drained = vec![0u8; cap];
        (&pipe_reader).read_exact(&mut drained).unwrap();
        assert_eq!(seen.wait(&mut ring, w1, 10).outcome, Outcome::Done(9));
        assert_eq!(common::drain_nonblocking(pipe_reader.as_raw_fd()), b"old-write");
        assert_eq!(common::drain_nonblocking(a_peer.as_raw_fd()), b"");
        (&peer).write_all(b"old-read").unwrap();
        let pc = seen.wait(&mut ring, p1, 10);
        assert!(matches!(pc.outcome, Outcome::Done(ev) if ev & libc::POLLIN as usize != 0), "{pc:?}");
        assert_eq!(seen.wait(&mut ring, r1, 10).data(), b"old-read");
        seen.finish(&mut ring);
        // Nothing holds the old socket: its peer sees the end.
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        (&peer).read_to_end(&mut rest).expect("the old socket was let go");
        assert!(rest.is_empty());
        drop(reused);
    }

    /// Ops wait on a number closed outside quell (not reused yet); then the ring closes
    /// another number with a waiter, and the portable backend's private duplicate for it
    /// takes the freed number. The orphans still complete, each exactly once (EBADF on
    /// portable; on io_uring they keep their pipe), and the moved read keeps its file.
    fn ring_close_duplicate_taking_an_orphaned_number(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (xr, xw) = common::pipe();
        let m = xr.into_raw_fd();
        let orphan = ring.submit(Op::read(m, vec![0u8; 16])).unwrap();
        let (yr, yw) = common::pipe();
        let yn = yr.into_raw_fd();
        let moved = ring.submit(Op::read(yn, vec![0u8; 16])).unwrap();
        seen.still_pending(&mut ring, moved, Duration::from_millis(30));
        // Every free number below `m` gets a placeholder, so `m` is the lowest free
        // number once it is closed (the backend's duplicates start at 3).
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let holes: Vec<OwnedFd> = (3..m)
            // SAFETY: F_GETFD only reads the descriptor's flags.
            .filter(|&n| unsafe { libc::fcntl(n, libc::F_GETFD) } < 0)
            .map(|n| {
                // SAFETY: `n` is free: dup2 makes it a copy of /dev/null we own.
                assert_eq!(unsafe { libc::dup2(devnull.as_raw_fd(), n) }, n);
                // SAFETY: just created, owned by nothing else.
                unsafe { OwnedFd::from_raw_fd(n) }
            })
            .collect();
        // SAFETY: `m` is ours (taken out of its owner above); closed outside quell.
        assert_eq!(unsafe { libc::close(m) }, 0);
        let close = ring.submit(Op::close(yn)).unwrap();
        assert_eq!(seen.wait(&mut ring, close, 10).outcome, Outcome::Done(0));
        assert!(try_write(yw.as_raw_fd(), b"moved"));
        assert_eq!(seen.wait(&mut ring, moved, 10).data(), b"moved");
        let fed = try_write(xw.as_raw_fd(), b"orphan");
        assert_eq!(fed, b == BackendChoice::Uring);
        let c = seen.wait(&mut ring, orphan, 10);
        check_orphan(b, &c, Kind::Pipe, b"orphan");
        seen.finish(&mut ring);
        drop(holes);
    }

    /// A read waits on a socket closed through the ring; canceling it releases the file.
    fn ring_close_then_cancel_releases_the_file(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (s, peer) = UnixStream::pair().unwrap();
        let n = OwnedFd::from(s).into_raw_fd();
        let r = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        seen.still_pending(&mut ring, r, Duration::from_millis(30));
        let c = ring.submit(Op::close(n)).unwrap();
        assert_eq!(seen.wait(&mut ring, c, 10).outcome, Outcome::Done(0));
        ring.cancel(r).unwrap();
        assert!(seen.wait(&mut ring, r, 10).outcome.is_canceled());
        seen.finish(&mut ring);
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        (&peer).read_to_end(&mut rest).expect("the peer sees the end (the file was let go)");
    }

    /// The number closed outside quell under a waiting read and reused by another kind of
    /// file: pipe → socket.
    fn outside_reuse_pipe_by_socket(b: BackendChoice) {
        read_after_outside_reuse(b, Kind::Pipe, Kind::Socket, false);
    }

    /// socket → regular file (a read on the file completes at once).
    fn outside_reuse_socket_by_file(b: BackendChoice) {
        read_after_outside_reuse(b, Kind::Socket, Kind::File, false);
    }

    /// eventfd → pipe (the eventfd stays open elsewhere, as it must to be fed).
    fn outside_reuse_eventfd_by_pipe(b: BackendChoice) {
        read_after_outside_reuse(b, Kind::EventFd, Kind::Pipe, false);
    }

    /// socket → eventfd.
    fn outside_reuse_socket_by_eventfd(b: BackendChoice) {
        read_after_outside_reuse(b, Kind::Socket, Kind::EventFd, false);
    }

    /// pipe → pipe, the old pipe open elsewhere: it becomes ready after the new read
    /// parked, so its leftover epoll item fires; that must not serve the new read.
    fn outside_reuse_with_old_file_open_elsewhere(b: BackendChoice) {
        read_after_outside_reuse(b, Kind::Pipe, Kind::Pipe, true);
    }

    /// The number of a write waiting on a full pipe is closed outside quell and reused by
    /// a socket: a write on the socket puts exactly its own bytes there, never the old
    /// write's; the old write never lands in the socket.
    fn outside_reuse_under_a_waiting_write(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (pr, pw) = common::pipe();
        // SAFETY: plain fcntl on our descriptor.
        let cap = unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_GETPIPE_SZ) } as usize;
        common::write_all(pw.as_raw_fd(), &vec![b'f'; cap]);
        let n = pw.into_raw_fd();
        let w1 = ring.submit(Op::write(n, b"old-write".to_vec())).unwrap();
        seen.still_pending(&mut ring, w1, Duration::from_millis(30));
        let (s, peer) = UnixStream::pair().unwrap();
        let s = reuse(n, s.into());
        let w2 = ring.submit(Op::write(n, b"new-write".to_vec())).unwrap();
        assert_eq!(seen.wait(&mut ring, w2, 10).outcome, Outcome::Done(9));
        // Room in the old pipe: on io_uring the old write lands there.
        let mut drained = vec![0u8; cap];
        (&std::fs::File::from(dup(&pr))).read_exact(&mut drained).unwrap();
        let c = seen.wait(&mut ring, w1, 10);
        match b {
            BackendChoice::Portable => {
                assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF));
                assert_eq!(common::drain_nonblocking(pr.as_raw_fd()), b"");
            }
            _ => {
                assert_eq!(c.outcome, Outcome::Done(9));
                assert_eq!(common::drain_nonblocking(pr.as_raw_fd()), b"old-write");
            }
        }
        assert_eq!(common::drain_nonblocking(peer.as_raw_fd()), b"new-write");
        seen.finish(&mut ring);
        drop(s);
    }

    /// A poll waits on a pipe kept open elsewhere; the number is reused by an eventfd and
    /// polled again. The old pipe becoming readable must not complete the new poll (its
    /// leftover epoll item carries an older generation); the eventfd's readiness does.
    fn outside_reuse_under_a_waiting_poll(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (pr, pw) = common::pipe();
        let elsewhere = dup(&pr);
        let n = pr.into_raw_fd();
        let p1 = ring.submit(Op::poll(n, Interest::READABLE)).unwrap();
        seen.still_pending(&mut ring, p1, Duration::from_millis(30));
        let e = Obj::new(Kind::EventFd, b"");
        let e_fd = reuse(n, dup(&e.fd));
        let p2 = ring.submit(Op::poll(n, Interest::READABLE)).unwrap();
        seen.still_pending(&mut ring, p2, Duration::from_millis(30));
        common::write_all(pw.as_raw_fd(), b"x");
        seen.still_pending(&mut ring, p2, Duration::from_millis(50));
        let c = seen.wait(&mut ring, p1, 10);
        match b {
            BackendChoice::Portable => assert_eq!(
                c.outcome,
                Outcome::Failed(quell::Errno::BADF)
            ),
            _ => assert!(matches!(c.outcome, Outcome::Done(ev) if ev & libc::POLLIN as usize != 0)),
        }
        assert!(e.feed(e_fd.as_raw_fd(), b"go"));
        let c = seen.wait(&mut ring, p2, 10);
        assert!(matches!(c.outcome, Outcome::Done(ev) if ev & libc::POLLIN as usize != 0), "{c:?}");
        seen.finish(&mut ring);
        drop(elsewhere);
    }

    /// Several reads queue behind one another on a pipe; the number is reused outside
    /// quell by a socket; a read on the socket queues on the same number and direction.
    /// It gets all of the socket's bytes; the old reads never do.
    fn outside_reuse_behind_queued_reads(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (pr, pw) = common::pipe();
        let n = pr.into_raw_fd();
        let olds: Vec<OpId> = (0..3)
            .map(|_| ring.submit(Op::read(n, vec![0u8; 4])).unwrap())
            .collect();
        seen.still_pending(&mut ring, olds[0], Duration::from_millis(30));
        let (s, mut peer) = UnixStream::pair().unwrap();
        let s = reuse(n, s.into());
        let new = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        peer.write_all(b"socket-bytes").unwrap();
        assert_eq!(seen.wait(&mut ring, new, 10).data(), b"socket-bytes");
        let fed = try_write(pw.as_raw_fd(), b"aaaabbbbcccc");
        assert_eq!(fed, b == BackendChoice::Uring);
        let outs: Vec<Completion> = olds.iter().map(|&id| seen.wait(&mut ring, id, 10)).collect();
        match b {
            BackendChoice::Portable => {
                for c in &outs {
                    assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF));
                }
            }
            _ => {
                // io_uring wakes pending pipe reads in no particular order.
                let mut got: Vec<&[u8]> = outs.iter().map(|c| c.data()).collect();
                got.sort_unstable();
                assert_eq!(got, [&b"aaaa"[..], b"bbbb", b"cccc"]);
            }
        }
        seen.finish(&mut ring);
        drop(s);
    }

    /// A pool job on a pollable object (an accept on a blocking listener) waits for the
    /// busy pool; its number is reused outside quell by another listener. It accepts from
    /// its own listener, as on io_uring, and a new accept on the number from the new one.
    fn queued_pool_accept_keeps_its_listener(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring_with(b, 1);
        let mut seen = Seen::default();
        let dir = TempDir::new();
        let (p1, p2) = (dir.0.join("one"), dir.0.join("two"));
        let l1 = UnixListener::bind(&p1).unwrap();
        let n = OwnedFd::from(l1).into_raw_fd();
        let (blocker, release) = occupy_pool(&mut ring, &mut seen);
        let a1 = ring.submit(Op::accept(n)).unwrap();
        seen.still_pending(&mut ring, a1, Duration::from_millis(30));
        let l2 = reuse(n, UnixListener::bind(&p2).unwrap().into());
        let _c2 = UnixStream::connect(&p2).unwrap();
        let _c1 = UnixStream::connect(&p1).unwrap();
        release.send(()).unwrap();
        assert_eq!(seen.wait(&mut ring, blocker, 10).outcome, Outcome::Done(0));
        let c = seen.wait(&mut ring, a1, 10);
        let Outcome::Done(fd) = c.outcome else { panic!("{c:?}") };
        // SAFETY: accept handed us this descriptor.
        let conn = unsafe { UnixStream::from_raw_fd(fd as RawFd) };
        assert_eq!(conn.local_addr().unwrap().as_pathname(), Some(p1.as_path()));
        let a2 = ring.submit(Op::accept(n)).unwrap();
        let c = seen.wait(&mut ring, a2, 10);
        let Outcome::Done(fd) = c.outcome else { panic!("{c:?}") };
        // SAFETY: accept handed us this descriptor.
        let conn = unsafe { UnixStream::from_raw_fd(fd as RawFd) };
        assert_eq!(conn.local_addr().unwrap().as_pathname(), Some(p2.as_path()));
        seen.finish(&mut ring);
        drop(l2);
    }

    /// A pipe read forced onto the pool waits for a busy worker; its number is reused
    /// outside quell by another pipe. It reads its own pipe (the pool holds a duplicate).
    fn queued_pool_pipe_read_keeps_its_pipe(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring_with(b, 1);
        let mut seen = Seen::default();
        let (pr, pw) = common::pipe();
        let n = pr.into_raw_fd();
        let (blocker, release) = occupy_pool(&mut ring, &mut seen);
        let r1 = ring
            .submit(Op::read(n, vec![0u8; 16]).class(CancelClass::Interruptible))
            .unwrap();
        seen.still_pending(&mut ring, r1, Duration::from_millis(30));
        let (nr, nw) = common::pipe();
        let nr = reuse(n, nr);
        common::write_all(nw.as_raw_fd(), b"new-bytes");
        assert!(try_write(pw.as_raw_fd(), b"old-bytes"), "the pool job holds the old pipe");
        release.send(()).unwrap();
        assert_eq!(seen.wait(&mut ring, blocker, 10).outcome, Outcome::Done(0));
        assert_eq!(seen.wait(&mut ring, r1, 10).data(), b"old-bytes");
        let r2 = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        assert_eq!(seen.wait(&mut ring, r2, 10).data(), b"new-bytes");
        seen.finish(&mut ring);
        drop(nr);
    }

    /// A file read on the pool waits for a busy worker; its number is reused outside
    /// quell by another file. It must not read the other file: the pool checks the file's
    /// identity before the call and ends it `EBADF` (no duplicate of a file is taken: its
    /// close would drop the process's POSIX locks). Same on both backends (io_uring sends
    /// Interruptible reads to quell's pool too).
    fn queued_pool_file_read_never_reads_the_new_file(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring_with(b, 1);
        let mut seen = Seen::default();
        let old = Obj::new(Kind::File, b"old-file");
        let n = old.fd.try_clone().unwrap().into_raw_fd();
        let (blocker, release) = occupy_pool(&mut ring, &mut seen);
        let r1 = ring
            .submit(Op::read_at(n, 0, vec![0u8; 16]).class(CancelClass::Interruptible))
            .unwrap();
        seen.still_pending(&mut ring, r1, Duration::from_millis(30));
        let new = Obj::new(Kind::File, b"new-file");
        let nf = reuse(n, dup(&new.fd));
        release.send(()).unwrap();
        assert_eq!(seen.wait(&mut ring, blocker, 10).outcome, Outcome::Done(0));
        let c = seen.wait(&mut ring, r1, 10);
        assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF), "{c:?}");
        let r2 = ring.submit(Op::read_at(n, 0, vec![0u8; 16])).unwrap();
        assert_eq!(seen.wait(&mut ring, r2, 10).data(), b"new-file");
        seen.finish(&mut ring);
        drop(nf);
    }

    /// The same file read, but the number is closed through the ring (and reused): the
    /// queued job keeps its file, as io_uring's ops do, and reads the old file's bytes.
    fn queued_pool_file_read_keeps_its_file_across_a_ring_close(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring_with(b, 1);
        let mut seen = Seen::default();
        let old = Obj::new(Kind::File, b"old-file");
        let n = old.fd.try_clone().unwrap().into_raw_fd();
        let (blocker, release) = occupy_pool(&mut ring, &mut seen);
        let r1 = ring
            .submit(Op::read_at(n, 0, vec![0u8; 16]).class(CancelClass::Interruptible))
            .unwrap();
        seen.still_pending(&mut ring, r1, Duration::from_millis(30));
        // The close must not queue behind the busy worker itself (a file's close goes
        // to the pool on portable): declared Prompt, it runs at once on both backends.
        // Opened before the close, so it cannot take the freed number itself.
        let new = Obj::new(Kind::File, b"new-file");
        let close = ring.submit(Op::close(n).class(CancelClass::Prompt)).unwrap();
        assert_eq!(seen.wait(&mut ring, close, 10).outcome, Outcome::Done(0));
        let nf = reuse(n, dup(&new.fd));
        release.send(()).unwrap();
        assert_eq!(seen.wait(&mut ring, blocker, 10).outcome, Outcome::Done(0));
        assert_eq!(seen.wait(&mut ring, r1, 10).data(), b"old-file");
        let r2 = ring.submit(Op::read_at(n, 0, vec![0u8; 16])).unwrap();
        assert_eq!(seen.wait(&mut ring, r2, 10).data(), b"new-file");
        seen.finish(&mut ring);
        drop(nf);
    }

    /// A number that named a file without `RWF_NOWAIT` support (procfs) is reused by a
    /// regular file: reads of the new file get its bytes (nothing learned about the old
    /// file is applied to it).
    fn nowait_knowledge_is_not_applied_to_a_new_file(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let proc_file = std::fs::File::open("/proc/self/stat").unwrap();
        let n = OwnedFd::from(proc_file).into_raw_fd();
        let r = ring.submit(Op::read_at(n, 0, vec![0u8; 64])).unwrap();
        let c = seen.wait(&mut ring, r, 10);
        assert!(c.outcome.is_done(), "{c:?}");
        let new = Obj::new(Kind::File, b"regular-bytes");
        let nf = reuse(n, dup(&new.fd));
        let r = ring.submit(Op::read_at(n, 0, vec![0u8; 64])).unwrap();
        assert_eq!(seen.wait(&mut ring, r, 10).data(), b"regular-bytes");
        seen.finish(&mut ring);
        drop(nf);
    }

    /// Offsets above `i64::MAX` are never clamped onto another position: refused at
    /// submission, or answered `EINVAL` as the kernel answers io_uring.
    fn offsets_above_i64_max_are_refused_not_clamped(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let f = Obj::new(Kind::File, b"some bytes");
        // Writable, so a clamped fallocate would act (EFBIG or an allocation) rather than
        // fail for the descriptor's mode.
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f._dir.as_ref().unwrap().0.join("f"))
            .unwrap();
        let fd = rw.as_raw_fd();
        let huge = i64::MAX as u64 + 1;
        for op in [
            Op::read_at(fd, huge, vec![0u8; 8]),
            Op::read_at(fd, u64::MAX - 1, vec![0u8; 8]),
            Op::readv_at(fd, huge, vec![vec![0u8; 8]]),
            Op::read_at(fd, huge, vec![0u8; 8]).class(CancelClass::Interruptible),
            Op::fallocate(fd, 0, huge, 4096),
        ] {
            let kind = op.kind();
            match ring.submit(op) {
                Err(e) => {
                    // Refused with the caller's buffer handed back (I1, I10).
                    let op = e.into_op();
                    let back = match op.kind() {
                        quell::OpKind::Fallocate => true,
                        quell::OpKind::Readv => op.into_bufs().is_some(),
                        _ => op.into_buf().is_some(),
                    };
                    assert!(back, "{kind:?}: buffer lost");
                }
                Ok(id) => {
                    let c = seen.wait(&mut ring, id, 10);
                    assert_eq!(
                        c.outcome,
                        Outcome::Failed(quell::Errno::INVAL),
                        "{kind:?}: {c:?}"
                    );
                }
            }
        }
        seen.finish(&mut ring);
    }
    /// The gap: the old pipe (kept open elsewhere) and the new pipe on its number are
    /// both readable before quell touches the number again.
    fn old_ready_before_the_number_is_touched_new_pipe(b: BackendChoice) {
        old_ready_after_outside_reuse(b, Old::Pipe, Kind::Pipe);
    }

    /// The same, the number reused by a socket.
    fn old_ready_before_the_number_is_touched_new_socket(b: BackendChoice) {
        old_ready_after_outside_reuse(b, Old::Pipe, Kind::Socket);
    }

    /// The same, the number reused by an eventfd.
    fn old_ready_before_the_number_is_touched_new_eventfd(b: BackendChoice) {
        old_ready_after_outside_reuse(b, Old::Pipe, Kind::EventFd);
    }

    /// The same from a non-blocking socket (retried with a plain `read`, which an
    /// eventfd answers with its counter): the counter is never the old read's.
    fn old_socket_ready_before_the_number_is_touched_new_eventfd(b: BackendChoice) {
        old_ready_after_outside_reuse(b, Old::NonBlockingSocket, Kind::EventFd);
    }

    /// The gap for a write: it waits on a full pipe whose writing end stays open
    /// elsewhere; the number is closed outside quell and reused by another pipe; the old
    /// pipe gets room before quell touches the number again. The old write's bytes never
    /// land in the new pipe (on io_uring they land in the old one).
    fn old_writable_before_the_number_is_touched(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (pr, pw) = common::pipe();
        // SAFETY: plain fcntl on our descriptor.
        let cap = unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_GETPIPE_SZ) } as usize;
        common::write_all(pw.as_raw_fd(), &vec![b'f'; cap]);
        let keep = dup(&pw);
        let n = pw.into_raw_fd();
        let w1 = ring.submit(Op::write(n, b"old-write".to_vec())).unwrap();
        seen.still_pending(&mut ring, w1, Duration::from_millis(30));
        let (nr, nw) = common::pipe();
        let nw = reuse(n, nw);
        let mut drained = vec![0u8; cap];
        (&std::fs::File::from(dup(&pr))).read_exact(&mut drained).unwrap();
        let c = seen.wait(&mut ring, w1, 10);
        match b {
            BackendChoice::Portable => {
                assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF));
                assert_eq!(common::drain_nonblocking(pr.as_raw_fd()), b"");
            }
            _ => {
                assert_eq!(c.outcome, Outcome::Done(9));
                assert_eq!(common::drain_nonblocking(pr.as_raw_fd()), b"old-write");
            }
        }
        assert_eq!(common::drain_nonblocking(nr.as_raw_fd()), b"", "the old write reached the new pipe");
        let w2 = ring.submit(Op::write(n, b"new-write".to_vec())).unwrap();
        assert_eq!(seen.wait(&mut ring, w2, 10).outcome, Outcome::Done(9));
        assert_eq!(common::drain_nonblocking(nr.as_raw_fd()), b"new-write");
        seen.finish(&mut ring);
        drop((nw, keep));
    }

    /// A file comes back to its number: pipe A waits on N and stays open elsewhere; N is
    /// reused outside quell by pipe B and a read waits on B (the portable backend sees the
    /// reuse: A's read ends `EBADF`, A's registration stays in the epoll set while A is
    /// open); then A is put back on N. B's read must not be served from A, although
    /// A's leftover registration under N makes N look registered.
    fn file_back_on_its_number_is_not_served_to_another_files_read(b: BackendChoice) {
        let _g = serial();
        let mut ring = ring(b);
        let mut seen = Seen::default();
        let (ar, aw) = common::pipe();
        let keep_a = dup(&ar);
        let n = ar.into_raw_fd();
        let ra = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        seen.still_pending(&mut ring, ra, Duration::from_millis(30));
        let (br, bw) = common::pipe();
        let b_on_n = reuse(n, dup(&br));
        let rb = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        seen.still_pending(&mut ring, rb, Duration::from_millis(30));
        if b == BackendChoice::Portable {
            let c = seen.wait(&mut ring, ra, 10);
            assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF), "{c:?}");
        }
        // SAFETY: dup2 makes `n` (owned by `b_on_n`) a copy of A's reading end again.
        assert_eq!(unsafe { libc::dup2(keep_a.as_raw_fd(), n) }, n);
        common::write_all(aw.as_raw_fd(), b"aaaa");
        common::write_all(bw.as_raw_fd(), b"bbbb");
        let c = seen.wait(&mut ring, rb, 10);
        match b {
            BackendChoice::Portable => {
                assert_eq!(c.outcome, Outcome::Failed(quell::Errno::BADF), "{c:?}");
                assert_eq!(common::drain_nonblocking(br.as_raw_fd()), b"bbbb");
            }
            _ => {
                assert_eq!(c.data(), b"bbbb");
                assert_eq!(seen.wait(&mut ring, ra, 10).data(), b"aaaa");
            }
        }
        // N names A again: a new read gets what A holds.
        common::write_all(aw.as_raw_fd(), b"more");
        let r = ring.submit(Op::read(n, vec![0u8; 16])).unwrap();
        let want: &[u8] = if b == BackendChoice::Portable { b"aaaamore" } else { b"more" };
        assert_eq!(seen.wait(&mut ring, r, 10).data(), want);
        seen.finish(&mut ring);
        drop(b_on_n);
    }

    /// A stream (whose descriptor quell owns, so its ops skip identity checks) reads on
    /// a number that raw reads of an earlier file still wait on (the earlier file was
    /// closed outside quell, kept open elsewhere, and not touched since): the stream's
    /// read must watch its own file, get its bytes, and never be served to the old reads.
    fn stream_on_a_number_stale_raw_reads_wait_on(b: BackendChoice) {
        let _g = serial();
        let driver = quell::future::Driver::new(ring(b));
        let (pr, pw) = common::pipe();
        let keep = dup(&pr);
        let n = pr.into_raw_fd();
        let old = driver.read(n, vec![0u8; 16]);
        // Hand it to the kernel (io_uring) before the number changes.
        driver.turn().unwrap();
        let (s, mut peer) = UnixStream::pair().unwrap();
        let s = reuse(n, s.into());
        let stream = quell::future::Stream::new(&driver, s);
        peer.write_all(b"stream-bytes").unwrap();
        let (got, buf) = block_on_guarded(&driver, stream.read_owned(vec![0u8; 16]), 10);
        assert_eq!(&buf[..got.unwrap()], b"stream-bytes");
        common::write_all(pw.as_raw_fd(), b"old-bytes");
        let (got, buf) = block_on_guarded(&driver, old, 10);
        match b {
            BackendChoice::Portable => {
                assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::EBADF));
                assert_eq!(common::drain_nonblocking(keep.as_raw_fd()), b"old-bytes");
            }
            _ => assert_eq!(&buf[..got.unwrap()], b"old-bytes"),
        }
        drop(stream);
    }
}
