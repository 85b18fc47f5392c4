//! A chain's cleanup runs at most once per descriptor it opened (I1, I6): when that
//! descriptor became invalid behind the ring's back (closed with `libc::close` on the
//! number the chain opened), the close is refused with `EBADF`, the descriptor still
//! leaves the chain's opened set, and the chain yields its one completion, whose steps
//! say what happened. It used to produce a new cleanup close forever (`wait_for` never
//! returned, memory grew by tens of MB a second).
//!
//! Each test runs its ring on a thread of its own behind a hang guard that aborts the
//! binary (a chain stuck in that loop never gives its thread back). The tests take one
//! lock: they close descriptor numbers behind the ring's back, and no other test of this
//! binary may open a file that reuses such a number before the chain's close looks.

mod common;

use common::*;
use quell::{BackendChoice, Chain, Errno, Interest, Op, OpKind, OpState, Outcome, Ring};
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` on a thread of its own; aborts the whole binary if it has not returned
/// after `secs` seconds.
fn guarded<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            t.join().unwrap();
            v
        }
        Err(RecvTimeoutError::Disconnected) => std::panic::resume_unwind(t.join().unwrap_err()),
        Err(RecvTimeoutError::Timeout) => {
            // Straight to stderr: the harness's capture dies with the process.
            let _ = writeln!(
                std::io::stderr(),
                "{what}: no completion after {secs}s (the chain's cleanup loops); aborting"
            );
            std::process::abort();
        }
    }
}

fn ring_for(b: BackendChoice, linked: bool) -> Ring {
    Ring::builder()
        .backend(b)
        .link_chains(linked)
        .build()
        .expect("ring")
}

/// A file of its own for one test.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let p =
            std::env::temp_dir().join(format!("quell-chain-cleanup-{}-{name}", std::process::id()));
        std::fs::write(&p, b"cleanup").unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// This process's descriptors open on `path`.
fn fds_on(path: &Path) -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == path))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Drives `ring` until the chain has opened `path` and its step `waiting` (which
/// waits for the test) is in flight; returns the number the open got: the lowest
/// descriptor on `path` (the chain's own duplicate of it, I12, is above it).
fn until_opened(ring: &mut Ring, path: &Path, waiting: OpKind) -> RawFd {
    let start = Instant::now();
    loop {
        ring.wait(0, Some(Duration::from_millis(5))).unwrap();
        let running = ring
            .ops()
            .iter()
            .any(|o| o.kind == waiting && o.state == OpState::InFlight);
        if let (true, Some(fd)) = (running, fds_on(path).into_iter().min()) {
            return fd;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the chain never opened {path:?}"
        );
    }
}

/// Closes `fd` behind the ring's back.
fn close_outside(fd: RawFd) {
    // SAFETY: `fd` is the chain's descriptor; closing it outside the ring is the fault
    // these tests inject (the ring only ever asks the kernel about it again).
    assert_eq!(unsafe { libc::close(fd) }, 0);
}

fn kinds_and_outcomes(c: &quell::Completion) -> Vec<(OpKind, Option<Outcome>, bool)> {
    c.steps()
        .unwrap()
        .iter()
        .map(|s| (s.kind(), s.outcome(), s.is_cleanup()))
        .collect()
}

fn each_mode(b: BackendChoice, name: &str, test: fn(BackendChoice, bool, &str)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for linked in [true, false] {
        let what = format!("{name} ({b:?}, link_chains({linked}))");
        guarded(&what.clone(), 10, move || test(b, linked, &what));
    }
}

both_backends! {
    /// `[openat, poll, close(OPENED)]`: the descriptor is closed outside while the
    /// poll waits; the chain's own close is refused once and the chain fails with it.
    fn own_close_of_a_descriptor_closed_outside_runs_once(b: BackendChoice) {
        each_mode(b, "own close", |b, linked, what| {
            let file = TempFile::new(&format!("own-{linked}-{b:?}"));
            let (r, w) = pipe();
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &file.0, libc::O_RDONLY, 0))
                        .then(Op::poll(raw(&r), Interest::READABLE))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            let fd = until_opened(&mut ring, &file.0, OpKind::Poll);
            close_outside(fd);
            write_all(raw(&w), b"go");
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Failed(Errno::BADF), "{what}");
            let steps = kinds_and_outcomes(&c);
            assert_eq!(steps.len(), 3, "{what}: no close added: {steps:?}");
            assert_eq!(steps[0].1, Some(Outcome::Done(fd as usize)), "{what}");
            assert_eq!(steps[2], (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), false), "{what}");
            assert!(ring.is_empty(), "{what}");
            assert!(ring.next_completion().is_none(), "{what}: exactly one completion");
        });
    }

    /// `[openat, timeout, close(OPENED)]` canceled after the descriptor was closed
    /// outside: the close (now cleanup) is refused once; the chain reports its cancel.
    fn canceled_chain_closes_a_descriptor_closed_outside_once(b: BackendChoice) {
        each_mode(b, "canceled", |b, linked, what| {
            let file = TempFile::new(&format!("cancel-{linked}-{b:?}"));
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &file.0, libc::O_RDONLY, 0))
                        .then(Op::timeout(Duration::from_secs(60)))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            let fd = until_opened(&mut ring, &file.0, OpKind::Timeout);
            close_outside(fd);
            ring.cancel(id).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 }, "{what}");
            let steps = kinds_and_outcomes(&c);
            assert_eq!(steps.len(), 3, "{what}: {steps:?}");
            assert_eq!(steps[1].1, Some(Outcome::Canceled { transferred: 0 }), "{what}");
            assert_eq!(steps[2].1, Some(Outcome::Failed(Errno::BADF)), "{what}");
            assert!(ring.is_empty(), "{what}");
        });
    }

    /// `[openat, timeout]` (no close of its own) canceled after the descriptor was
    /// closed outside: the chain adds one cleanup close, refused, and completes.
    fn added_cleanup_close_runs_once(b: BackendChoice) {
        each_mode(b, "added cleanup", |b, linked, what| {
            let file = TempFile::new(&format!("added-{linked}-{b:?}"));
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &file.0, libc::O_RDONLY, 0))
                        .then(Op::timeout(Duration::from_secs(60))),
                )
                .unwrap();
            let fd = until_opened(&mut ring, &file.0, OpKind::Timeout);
            close_outside(fd);
            ring.cancel(id).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 }, "{what}");
            let steps = kinds_and_outcomes(&c);
            assert_eq!(steps.len(), 3, "{what}: one close added: {steps:?}");
            assert_eq!(steps[2], (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), true), "{what}");
            assert!(ring.is_empty(), "{what}");
        });
    }

    /// Two opens, the later one's descriptor closed outside: each gets exactly one
    /// cleanup close, and the earlier one really is closed.
    fn each_opened_descriptor_gets_one_cleanup_close(b: BackendChoice) {
        each_mode(b, "two opens", |b, linked, what| {
            let first = TempFile::new(&format!("first-{linked}-{b:?}"));
            let second = TempFile::new(&format!("second-{linked}-{b:?}"));
            let mut ring = ring_for(b, linked);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &first.0, libc::O_RDONLY, 0))
                        .then(Op::openat(libc::AT_FDCWD, &second.0, libc::O_RDONLY, 0))
                        .then(Op::timeout(Duration::from_secs(60))),
                )
                .unwrap();
            let fd = until_opened(&mut ring, &second.0, OpKind::Timeout);
            assert!(!fds_on(&first.0).is_empty(), "{what}");
            close_outside(fd);
            ring.cancel(id).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 }, "{what}");
            let steps = kinds_and_outcomes(&c);
            assert_eq!(
                steps[3..],
                [
                    (OpKind::Close, Some(Outcome::Failed(Errno::BADF)), true),
                    (OpKind::Close, Some(Outcome::Done(0)), true),
                ],
                "{what}: {steps:?}"
            );
            assert!(fds_on(&first.0).is_empty(), "{what}: the first descriptor was closed");
            assert!(ring.is_empty(), "{what}");
        });
    }
}
