//! Helpers for tests against the fault-injection filesystem (quell-faultfs).
#![allow(dead_code)]

use quell::{OpId, Ring};
use quell_faultfs::{FaultFs, Spec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Mounts `spec` on a fresh temp directory. FUSE tests need root (or `/dev/fuse` and
/// `fusermount`); without them they fail loudly, unless `QUELL_SKIP_FUSE_TESTS=1`, in which
/// case `None` is returned and the caller skips.
pub fn mount(spec: Spec) -> Option<Arc<FaultFs>> {
    if std::env::var_os("QUELL_SKIP_FUSE_TESTS").is_some_and(|v| v == "1") {
        eprintln!("QUELL_SKIP_FUSE_TESTS=1: skipping a FUSE test");
        return None;
    }
    match FaultFs::mount_temp(spec) {
        Ok(fs) => Some(Arc::new(fs)),
        Err(e) => panic!(
            "cannot mount quell-faultfs ({e}); FUSE tests need root, /dev/fuse and fuse3 \
             (set QUELL_SKIP_FUSE_TESTS=1 to skip them)"
        ),
    }
}

/// A watchdog: if the test is still running after `secs`, it aborts the FUSE connection,
/// which ends every hung request, so a broken cancel path makes the test fail instead of
/// hanging forever. Disarmed on drop.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(fs: &Arc<FaultFs>, secs: u64) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let (s, f, fs) = (stop.clone(), fired.clone(), fs.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(secs) {
                if s.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            f.store(true, Ordering::Release);
            eprintln!("watchdog: test still running after {secs}s, aborting the FUSE connection");
            fs.fail_parked(libc::EIO);
            let _ = fs.abort();
        });
        Watchdog {
            stop,
            fired,
            thread: Some(thread),
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `secs` for the completion of `id`; other completions are returned too.
pub fn wait_id(
    ring: &mut Ring,
    id: OpId,
    secs: u64,
) -> (quell::Completion, Vec<quell::Completion>) {
    let start = Instant::now();
    let mut others = Vec::new();
    loop {
        for c in ring.completions() {
            if c.id == id {
                return (c, others);
            }
            others.push(c);
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no completion for {id:?} after {secs}s; outstanding: {:?}",
            ring.ops()
        );
        ring.wait(1, Some(Duration::from_millis(50))).expect("wait");
    }
}
