//! Descriptor identity for chains (contract item I12, issue 15): a chain is accepted at
//! once, but its later steps reach the backend only after the earlier ones end. Every
//! step must act on the file its descriptor number named when the chain was accepted
//! (or, for `Chain::OPENED`, on the file the chain opened), even if the number was
//! closed outside quell and reused by another file meanwhile; and a chain closes only
//! what it opened or was told to close, never a file that merely reused the number.
//!
//! Numbers are reused with `dup2`, which closes the old file's descriptor and puts the
//! new file on the same number in one step: no other test thread can take the number
//! in between. Every test runs on both backends and, on each, with chains linked
//! (`link_chains(true)`: linked SQEs on io_uring) and sequenced in user space.

mod common;

use common::*;
use quell::{BackendChoice, Chain, Errno, Op, OpKind, OpState, Outcome, Ring};
use quell_faultfs::{FileSpec, Spec};
use std::ffi::CString;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn ring_for(b: BackendChoice, linked: bool) -> Ring {
    Ring::builder()
        .backend(b)
        .link_chains(linked)
        .teardown_timeout(Duration::from_secs(20))
        .build()
        .expect("ring")
}

/// One test at a time: some reuse a number that was closed a moment before, and no
/// other test of this binary may open anything (a FUSE mount's `/dev/fuse`
/// descriptor included) that could take the number in between.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `test` with chains linked and sequenced, alone in this binary.
fn each_mode(b: BackendChoice, test: impl Fn(BackendChoice, bool, &str)) {
    let _serial = serial();
    each_mode_locked(b, test);
}

/// [`each_mode`] for a caller that holds [`serial`] already.
fn each_mode_locked(b: BackendChoice, test: impl Fn(BackendChoice, bool, &str)) {
    for linked in [true, false] {
        test(b, linked, &format!("{b:?}, link_chains({linked})"));
    }
}

/// Whether chains on this ring go to the kernel linked.
fn links(b: BackendChoice, linked: bool) -> bool {
    b == BackendChoice::Uring && linked
}

/// Waits for `id` (and nothing else) with a hang guard.
fn wait_chain(ring: &mut Ring, id: quell::OpId, what: &str) -> quell::Completion {
    let start = Instant::now();
    loop {
        ring.wait(1, Some(Duration::from_millis(50))).unwrap();
        let mut got = None;
        for c in ring.completions() {
            assert_eq!(c.id, id, "{what}: unexpected completion {c:?}");
            assert!(got.is_none(), "{what}: two completions");
            got = Some(c);
        }
        if let Some(c) = got {
            assert!(
                ring.next_completion().is_none(),
                "{what}: a second completion"
            );
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: no completion after 15s; ops: {:?}",
            ring.ops()
        );
    }
}

/// Drives the ring until an op of `kind` is in flight.
fn until_running(ring: &mut Ring, kind: OpKind, what: &str) {
    let start = Instant::now();
    loop {
        ring.wait(1, Some(Duration::from_millis(5))).unwrap();
        if ring
            .ops()
            .iter()
            .any(|o| o.kind == kind && o.state == OpState::InFlight)
        {
            // On io_uring the step must be in the kernel, not just staged.
            ring.flush().unwrap();
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {kind} never ran: {:?}",
            ring.ops()
        );
    }
}

/// Makes `number` name `file`'s open file, closing what it named before: the number is
/// closed outside quell and reused by another file in one step.
fn reuse(number: RawFd, file: RawFd) {
    // SAFETY: both are open descriptors; dup2 atomically replaces `number`.
    assert_eq!(
        unsafe { libc::dup2(file, number) },
        number,
        "dup2: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether `fd` is open.
fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn close(fd: RawFd) {
    // SAFETY: a descriptor this test owns.
    assert_eq!(unsafe { libc::close(fd) }, 0);
}

/// Reads `fd` at offset 0 (a regular file).
fn pread_all(fd: RawFd) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    // SAFETY: valid buffer.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n >= 0, "pread: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

/// This process's descriptors open on `path`, lowest first.
fn fds_on(path: &Path) -> Vec<RawFd> {
    let mut v: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == path))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// A fresh directory for one test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, b: BackendChoice, linked: bool) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "quell-chain-id-{}-{name}-{b:?}-{linked}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let c = CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn steps(c: &quell::Completion) -> Vec<(OpKind, Option<Outcome>, bool)> {
    c.steps()
        .unwrap()
        .iter()
        .map(|s| (s.kind(), s.outcome(), s.is_cleanup()))
        .collect()
}

/// Whether `fifo` has a reader now (a non-blocking write-only open succeeds only then).
fn fifo_has_reader(fifo: &Path) -> bool {
    let c = CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid path; the descriptor is closed right away.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        close(fd);
        return true;
    }
    false
}

both_backends! {
    /// `[read(gate), write(B)]`: while the read waits, B's number is closed outside
    /// quell and reused by another pipe. The write must still reach the pipe B named
    /// when the chain was accepted. (On io_uring the kernel resolves a linked step's
    /// descriptor only when it issues the step, so linking alone does not help.)
    fn a_later_step_acts_on_the_file_its_number_named_at_acceptance(b: BackendChoice) {
        each_mode(b, |b, linked, what| {
            let (gate_r, gate_w) = pipe();
            let (old_r, old_w) = pipe();
            let (new_r, new_w) = pipe();
            let n = old_w.into_raw_fd();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::read(raw(&gate_r), vec![0; 8]))
                        .then(Op::write(n, b"chain".to_vec())),
                )
                .unwrap();
            until_running(&mut ring, OpKind::Read, what);
            reuse(n, raw(&new_w));
            drop(new_w);
            write_all(raw(&gate_w), b"go");
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(c.outcome, Outcome::Done(7), "{what}: {:?}", steps(&c));
            assert_eq!(drain_nonblocking(raw(&new_r)), b"", "{what}: the write went to the pipe that reused the number");
            assert_eq!(drain_nonblocking(raw(&old_r)), b"chain", "{what}");
            let want = if links(b, linked) { 1 } else { 0 };
            assert_eq!(ring.stats().linked_chains, want, "{what}");
            close(n);
        });
    }

    /// `[openat(F), read(gate), read(OPENED), close(OPENED)]`: while the gate read
    /// waits, the number the chain's open returned is closed outside quell and reused by
    /// another file G. The read must still read F, and the chain's close must leave G
    /// alone (it reports `EBADF`: the number no longer names what the chain opened),
    /// while F is still closed. Linked on io_uring, the file lives in a direct
    /// descriptor that no number reaches.
    fn the_opened_file_keeps_its_identity_and_a_reused_number_is_never_closed(b: BackendChoice) {
        each_mode(b, |b, linked, what| {
            let dir = Scratch::new("opened", b, linked);
            let f = dir.file("f", b"FFFFFFFF");
            let g = dir.file("g", b"GGGGGGGG");
            let (gate_r, gate_w) = pipe();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &f, libc::O_RDONLY | libc::O_CLOEXEC, 0))
                        .then(Op::read(raw(&gate_r), vec![0; 8]))
                        .then(Op::read_at(Chain::OPENED, 0, vec![0; 8]))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            until_running(&mut ring, OpKind::Read, what);
            let opened = fds_on(&f);
            let stolen = if links(b, linked) {
                assert!(opened.is_empty(), "{what}: a linked chain's file has no number: {opened:?}");
                None
            } else {
                // The number the open returned is the lowest descriptor on F.
                let n = *opened.first().unwrap_or_else(|| panic!("{what}: nothing open on F"));
                let gf = std::fs::File::open(&g).unwrap();
                reuse(n, gf.as_raw_fd());
                Some(n)
            };
            write_all(raw(&gate_w), b"go");
            let c = wait_chain(&mut ring, id, what);
            let st = steps(&c);
            assert_eq!(c.steps().unwrap()[2].data(), b"FFFFFFFF", "{what}: read another file: {st:?}");
            if let Some(n) = stolen {
                assert_eq!(st[3], (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), false), "{what}");
                assert_eq!(c.outcome, Outcome::Failed(Errno::BADF), "{what}");
                assert!(is_open(n), "{what}: the chain closed the file that reused its number");
                assert_eq!(pread_all(n), b"GGGGGGGG", "{what}");
                close(n);
            } else {
                assert_eq!(c.outcome, Outcome::Done(10), "{what}: {st:?}");
                assert_eq!(st[3], (OpKind::Close, Some(Outcome::Done(0)), false), "{what}");
            }
            assert!(fds_on(&f).is_empty(), "{what}: the chain's file was not closed");
            assert!(ring.is_empty(), "{what}");
        });
    }

    /// The same, canceled: the close the chain adds for what it opened must not close
    /// the file that reused the number either.
    fn a_cleanup_close_never_closes_a_reused_number(b: BackendChoice) {
        each_mode(b, |b, linked, what| {
            let dir = Scratch::new("cleanup", b, linked);
            let f = dir.file("f", b"FFFFFFFF");
            let g = dir.file("g", b"GGGGGGGG");
            let (gate_r, _gate_w) = pipe();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &f, libc::O_RDONLY | libc::O_CLOEXEC, 0))
                        .then(Op::read(raw(&gate_r), vec![0; 8])),
                )
                .unwrap();
            until_running(&mut ring, OpKind::Read, what);
            let n = fds_on(&f)[0];
            let gf = std::fs::File::open(&g).unwrap();
            reuse(n, gf.as_raw_fd());
            ring.cancel(id).unwrap();
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 }, "{what}");
            assert_eq!(
                steps(&c)[2],
                (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), true),
                "{what}"
            );
            assert!(is_open(n), "{what}: the cleanup closed the file that reused the number");
            assert_eq!(pread_all(n), b"GGGGGGGG", "{what}");
            close(n);
            assert!(fds_on(&f).is_empty(), "{what}: the chain's file was not closed");
        });
    }

    /// `[openat(F), read(gate)]` keeps its descriptor for the caller. If the number was
    /// closed and reused meanwhile, handing it over would give the caller another file:
    /// the chain fails with `EBADF` instead and closes what it opened.
    fn a_chain_never_hands_over_a_number_that_names_another_file(b: BackendChoice) {
        each_mode(b, |b, linked, what| {
            let dir = Scratch::new("handover", b, linked);
            let f = dir.file("f", b"FFFFFFFF");
            let g = dir.file("g", b"GGGGGGGG");
            let (gate_r, gate_w) = pipe();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &f, libc::O_RDONLY | libc::O_CLOEXEC, 0))
                        .then(Op::read(raw(&gate_r), vec![0; 8])),
                )
                .unwrap();
            until_running(&mut ring, OpKind::Read, what);
            let n = fds_on(&f)[0];
            let gf = std::fs::File::open(&g).unwrap();
            reuse(n, gf.as_raw_fd());
            write_all(raw(&gate_w), b"go");
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(c.outcome, Outcome::Failed(Errno::BADF), "{what}: {:?}", steps(&c));
            assert_eq!(steps(&c)[2], (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), true), "{what}");
            assert_eq!(pread_all(n), b"GGGGGGGG", "{what}");
            close(n);
            assert!(fds_on(&f).is_empty(), "{what}: the chain's file leaked");
            // Undisturbed, the same chain hands its descriptor over.
            write_all(raw(&gate_w), b"go");
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &f, libc::O_RDONLY | libc::O_CLOEXEC, 0))
                        .then(Op::read(raw(&gate_r), vec![0; 8])),
                )
                .unwrap();
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(c.outcome, Outcome::Done(2), "{what}");
            let Some(Outcome::Done(fd)) = c.steps().unwrap()[0].outcome() else { panic!("{what}") };
            assert_eq!(fds_on(&f), [fd as RawFd], "{what}: exactly the handed-over descriptor");
            close(fd as RawFd);
        });
    }

    /// `[read(gate), close(B)]`: B's number is reused while the read waits. The chain's
    /// close acts on the file B named at acceptance (closed, as asked), and leaves the
    /// new file alone; the step reports `EBADF` (the number no longer names it).
    fn a_close_step_never_closes_the_file_that_reused_its_number(b: BackendChoice) {
        each_mode(b, |b, linked, what| {
            let (gate_r, gate_w) = pipe();
            let (old_r, old_w) = pipe();
            let (new_r, new_w) = pipe();
            let n = old_w.into_raw_fd();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::read(raw(&gate_r), vec![0; 8]))
                        .then(Op::close(n)),
                )
                .unwrap();
            until_running(&mut ring, OpKind::Read, what);
            reuse(n, raw(&new_w));
            drop(new_w);
            write_all(raw(&gate_w), b"go");
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(steps(&c)[1], (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), false), "{what}");
            assert!(is_open(n), "{what}: the chain closed the pipe that reused the number");
            write_all(n, b"new");
            assert_eq!(drain_nonblocking(raw(&new_r)), b"new", "{what}");
            close(n);
            // The old pipe's write end is closed: its reader sees end of file.
            let mut buf = [0u8; 1];
            // SAFETY: valid buffer.
            assert_eq!(unsafe { libc::read(raw(&old_r), buf.as_mut_ptr().cast(), 1) }, 0, "{what}");
        });
    }

    /// `[openat(FIFO, O_RDONLY), read(OPENED), close(OPENED)]` opens like open(2): it
    /// waits for a writer and reads its bytes (io_uring's inline non-blocking attempt
    /// would open at once and read end of file); with a deadline it times out and
    /// leaves nothing open. The same for a writer (no `ENXIO`).
    fn a_chain_opening_a_fifo_waits_like_open(b: BackendChoice) {
        each_mode(b, |b, linked, what| {
            let dir = Scratch::new("fifo", b, linked);
            let fifo = dir.fifo("p");
            let mut ring = ring_for(b, linked);
            let chain = || {
                Chain::new()
                    .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_RDONLY | libc::O_CLOEXEC, 0))
                    .then(Op::read(Chain::OPENED, vec![0; 64]))
                    .then(Op::close(Chain::OPENED))
            };
            // With a deadline: nobody writes, the chain times out in its open.
            let id = ring
                .submit_chain(chain().deadline(Instant::now() + Duration::from_millis(100)))
                .unwrap();
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 }, "{what}: {:?}", steps(&c));
            assert_eq!(c.steps().unwrap()[0].outcome(), Some(Outcome::TimedOut { transferred: 0 }), "{what}");
            assert!(!fifo_has_reader(&fifo), "{what}: the FIFO is still open for reading");
            assert!(fds_on(&fifo).is_empty(), "{what}");
            // Without one: it waits for the writer and reads its bytes.
            let id = ring.submit_chain(chain()).unwrap();
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            assert!(ring.next_completion().is_none(), "{what}: open(2) would still wait for a writer");
            let writer = {
                let fifo = fifo.clone();
                std::thread::spawn(move || {
                    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                    std::io::Write::write_all(&mut w, b"fifo bytes").unwrap();
                })
            };
            let c = wait_chain(&mut ring, id, what);
            writer.join().unwrap();
            assert_eq!(c.outcome, Outcome::Done(10), "{what}: {:?}", steps(&c));
            assert_eq!(c.steps().unwrap()[1].data(), b"fifo bytes", "{what}");
            assert_eq!(c.steps().unwrap()[2].outcome(), Some(Outcome::Done(0)), "{what}");
            assert!(!fifo_has_reader(&fifo), "{what}");
            // A writer waits for a reader too, instead of failing with ENXIO.
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &fifo, libc::O_WRONLY | libc::O_CLOEXEC, 0))
                        .then(Op::write(Chain::OPENED, b"to reader".to_vec()))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            assert!(ring.next_completion().is_none(), "{what}: open(2) would still wait for a reader");
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::read(&fifo).unwrap())
            };
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(c.outcome, Outcome::Done(9), "{what}: {:?}", steps(&c));
            assert_eq!(reader.join().unwrap(), b"to reader", "{what}");
            assert!(fds_on(&fifo).is_empty(), "{what}");
            // Dropping the ring while a chain waits in its open ends it (canceled, in
            // bounded time) and leaves nothing open.
            let id = ring.submit_chain(chain()).unwrap();
            until_running(&mut ring, OpKind::OpenAt, what);
            let start = Instant::now();
            let left = ring.shutdown();
            assert!(start.elapsed() < Duration::from_secs(10), "{what}: teardown stalled");
            assert_eq!(left.len(), 1, "{what}");
            assert_eq!(left[0].id, id, "{what}");
            assert_eq!(left[0].outcome, Outcome::Canceled { transferred: 0 }, "{what}");
            assert!(!fifo_has_reader(&fifo), "{what}");
            assert!(fds_on(&fifo).is_empty(), "{what}");
            // On io_uring these chains are still linked (their open goes to a worker).
            let want = if links(b, linked) { 4 } else { 0 };
            assert_eq!(ring.stats().linked_chains, want, "{what}");
        });
    }

    /// A first step that closes a number closes it (it goes out at once, as a plain
    /// close does); a later step naming the number finds it closed (`EBADF`), even
    /// though the number names another file by then.
    fn a_first_close_closes_the_number_and_later_steps_find_it_closed(b: BackendChoice) {
        each_mode(b, |b, linked, what| {
            let (r, w) = pipe();
            let (gate_r, gate_w) = pipe();
            let (new_r, new_w) = pipe();
            let n = w.into_raw_fd();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::close(n))
                        .then(Op::read(raw(&gate_r), vec![0; 8]))
                        .then(Op::write(n, b"late".to_vec())),
                )
                .unwrap();
            until_running(&mut ring, OpKind::Read, what);
            // The pipe's only write end was closed: its reader sees end of file.
            let mut buf = [0u8; 1];
            // SAFETY: valid buffer.
            assert_eq!(unsafe { libc::read(raw(&r), buf.as_mut_ptr().cast(), 1) }, 0, "{what}");
            reuse(n, raw(&new_w));
            drop(new_w);
            write_all(raw(&gate_w), b"go");
            let c = wait_chain(&mut ring, id, what);
            assert_eq!(c.outcome, Outcome::Failed(Errno::BADF), "{what}: {:?}", steps(&c));
            assert_eq!(c.steps().unwrap()[0].outcome(), Some(Outcome::Done(0)), "{what}");
            assert_eq!(drain_nonblocking(raw(&new_r)), b"", "{what}: the write reached the new pipe");
            close(n);
        });
    }

    /// Audit of the direct descriptors linked chains open into (`backend/direct.rs`):
    /// with two slots, chains that open different files are canceled at every step
    /// while others reuse the slots. Every read of an opened file reads that chain's
    /// own file, every chain completes once, nothing stays open, and every slot is
    /// given back. (Sequenced chains run alongside, beyond the two slots.)
    fn recycled_direct_descriptors_never_mix_files(b: BackendChoice) {
        let _serial = serial();
        for linked in [true, false] {
            let what = format!("{b:?}, link_chains({linked})");
            let dir = Scratch::new("recycle", b, linked);
            let files: Vec<(PathBuf, Vec<u8>)> = (0..4u8)
                .map(|i| {
                    let data = vec![b'a' + i; 16];
                    (dir.file(&format!("f{i}"), &data), data)
                })
                .collect();
            let (gate_r, gate_w) = pipe();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let feeder = {
                let stop = stop.clone();
                let w = gate_w.try_clone().unwrap();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        // SAFETY: valid one-byte buffer; the pipe may be full (ignored).
                        unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            };
            let mut ring = Ring::builder()
                .backend(b)
                .link_chains(linked)
                .direct_descriptors(2)
                .max_in_flight(8)
                .build()
                .unwrap();
            let mut live = std::collections::HashMap::new();
            let mut done = 0;
            for round in 0..400usize {
                let (path, data) = &files[round % files.len()];
                let id = ring
                    .submit_chain(
                        Chain::new()
                            .then(Op::openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC, 0))
                            .then(Op::read(raw(&gate_r), vec![0; 1]))
                            .then(Op::read_at(Chain::OPENED, 0, vec![0; 16]))
                            .then(Op::close(Chain::OPENED))
                            .user_data(round as u64),
                    )
                    .unwrap();
                live.insert(round as u64, (id, data.clone()));
                if round % 3 == 0 {
                    ring.poll().unwrap();
                }
                if round % 2 == 0 {
                    // Cancel an earlier chain, wherever it is.
                    if let Some((&k, _)) = live.iter().find(|(&k, _)| k % 5 == round as u64 % 5) {
                        let (id, _) = live[&k];
                        ring.cancel(id).unwrap();
                    }
                }
                ring.poll().unwrap();
                for c in ring.completions() {
                    let (_, data) = live.remove(&c.user_data).expect("one completion per chain");
                    let st = c.steps().unwrap();
                    if st[2].outcome().is_some_and(|o| o.is_done()) {
                        assert_eq!(st[2].data(), &data[..], "{what}: chain {} read another file", c.user_data);
                    }
                    if matches!(st[0].outcome(), Some(Outcome::Done(_))) {
                        assert_eq!(st[3].outcome(), Some(Outcome::Done(0)), "{what}: {st:?}");
                    }
                    done += 1;
                }
            }
            let rest = collect(&mut ring, live.len(), 30);
            for c in rest {
                let (_, data) = live.remove(&c.user_data).expect("one completion per chain");
                let st = c.steps().unwrap();
                if st[2].outcome().is_some_and(|o| o.is_done()) {
                    assert_eq!(st[2].data(), &data[..], "{what}: chain {} read another file", c.user_data);
                }
                done += 1;
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
            feeder.join().unwrap();
            assert_eq!(done, 400, "{what}");
            assert!(live.is_empty(), "{what}");
            assert_eq!(ring.stats().direct_descriptors, 0, "{what}: a slot was not given back");
            if links(b, linked) {
                assert!(ring.stats().linked_chains > 0, "{what}: nothing was linked");
            }
            for (path, _) in &files {
                assert!(fds_on(path).is_empty(), "{what}: {path:?} left open");
            }
        }
    }

    /// A chain on a FUSE file (sequenced on both backends; its close runs on quell's
    /// pool, since closing a FUSE file waits for the daemon's FLUSH): the number its
    /// open returned is reused by another file while a step waits. The read still reads
    /// the FUSE file, the close leaves the other file alone, and the FUSE file is
    /// closed by the time the chain completes.
    fn a_fuse_chain_keeps_its_file_and_never_closes_a_reused_number(b: BackendChoice) {
        let _serial = serial();
        let Some(fs) = common::fault::mount(Spec::new().file(FileSpec::pattern("f", 4096))) else {
            return;
        };
        let _dog = common::fault::Watchdog::new(&fs, 60);
        each_mode_locked(b, |b, linked, what| {
            let dir = Scratch::new("fuse", b, linked);
            let g = dir.file("g", b"GGGGGGGG");
            let f = fs.path("f");
            let (gate_r, gate_w) = pipe();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &f, libc::O_RDONLY | libc::O_CLOEXEC, 0))
                        .then(Op::read(raw(&gate_r), vec![0; 8]))
                        .then(Op::read_at(Chain::OPENED, 0, vec![0; 16]))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            until_running(&mut ring, OpKind::Read, what);
            let n = *fds_on(&f).first().unwrap_or_else(|| panic!("{what}: nothing open on the FUSE file"));
            let gf = std::fs::File::open(&g).unwrap();
            reuse(n, gf.as_raw_fd());
            write_all(raw(&gate_w), b"go");
            let c = wait_chain(&mut ring, id, what);
            let st = steps(&c);
            let want: Vec<u8> = (0..16).map(quell_faultfs::pattern_byte).collect();
            assert_eq!(c.steps().unwrap()[2].data(), &want[..], "{what}: read another file: {st:?}");
            assert_eq!(st[3], (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), false), "{what}");
            assert_eq!(pread_all(n), b"GGGGGGGG", "{what}: the chain closed the file that reused its number");
            close(n);
            assert!(fds_on(&f).is_empty(), "{what}: the FUSE file was left open");
            assert_eq!(ring.stats().linked_chains, 0, "{what}: FUSE chains are sequenced");
        });
    }
}
