//! One driver, several threads driving it: `Driver::block_on` on one thread while
//! another runs `Driver::turn`, a second `block_on`, or the tokio reactor. Whoever
//! reaps a completion wakes the future it belongs to, and the thread sleeping in
//! `block_on` for that future must wake up (I1: the op's one completion reaches its
//! waiter). And a `Handle` request left for a ring that goes away is refused
//! promptly, never stranded (I3, "requests to a ring that is gone are refused").
//!
//! Every waiting step here has a generous hang guard (seconds); nothing depends on
//! timing otherwise.

mod common;

use common::*;
use quell::future::Driver;
use quell::{Error, Op};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

/// Runs `f` on its own thread; panics with "HANG" if it does not finish in `secs`
/// (the stuck thread is left behind: nothing can unstick it).
fn guard<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .expect("spawn");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => {
            let _ = h.join();
            v
        }
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("HANG: {what} did not finish within {secs}s"),
    }
}

/// A thread that awaits `ops` ops one after the other with `block_on`, checking each
/// completion: short timers, and reads of one byte that a feeder thread writes a
/// moment after the read started (no timer of the ring's own then bounds the sleep).
/// Each op's completion is usually reaped by whichever thread runs the ring then.
/// With `exit_together`, the thread waits there before it ends (see
/// `block_on_on_two_threads_never_sticks`).
fn block_on_waiter(
    d: &Driver,
    ops: usize,
    done: &Arc<AtomicUsize>,
    exit_together: Option<Arc<Barrier>>,
) -> std::thread::JoinHandle<()> {
    let (d, done) = (d.clone(), done.clone());
    std::thread::spawn(move || {
        let (r, w) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (ask, asked) = mpsc::channel::<()>();
        let feeder = std::thread::spawn(move || {
            for () in asked {
                std::thread::sleep(Duration::from_micros(100));
                std::io::Write::write_all(&mut &w, b"x").expect("feed");
            }
        });
        for i in 0..ops {
            match i % 3 {
                0 => {
                    let f = d
                        .submit(Op::timeout(Duration::from_micros(50)))
                        .expect("submit");
                    let c = d.block_on(f);
                    assert!(c.outcome.is_done(), "{:?}", c.outcome);
                }
                1 => {
                    let c = d.block_on(d.sleep(Duration::from_micros(200)).expect("sleep"));
                    assert!(c.outcome.is_done(), "{:?}", c.outcome);
                }
                _ => {
                    let read = d.read(raw(&r), vec![0u8; 1]);
                    ask.send(()).expect("feeder");
                    let (n, buf) = d.block_on(read);
                    assert_eq!((n.expect("read"), buf[0]), (1, b'x'));
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
        drop(ask);
        feeder.join().expect("feeder");
        if let Some(b) = exit_together {
            b.wait();
        }
    })
}

/// Waits (up to `secs`) for `t` to finish; on a hang, says what the ring holds and
/// leaves the stuck thread behind.
fn join_or_report(
    t: std::thread::JoinHandle<()>,
    d: &Driver,
    done: &AtomicUsize,
    secs: u64,
    what: &str,
) {
    let start = Instant::now();
    while !t.is_finished() && start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(2));
    }
    if !t.is_finished() {
        let ops = d.with_ring(|r| r.ops().len());
        let out = d.outstanding();
        std::mem::forget(t);
        panic!(
            "HANG: {what}: block_on stuck after {} completions; ring ops {ops}, outstanding {out}",
            done.load(Ordering::Relaxed)
        );
    }
    t.join().expect("waiter panicked");
}

both_backends! {
    /// `block_on` on one thread, `Driver::turn` in a loop on another ("an executor of
    /// your own"): the turning thread often reaps the completion `block_on` waits
    /// for. The waiter must finish while the turner runs, and its last round after
    /// the turner stopped.
    fn block_on_with_concurrent_turn_never_sticks(b: BackendChoice) {
        let d = Driver::new(ring(b, 256));
        for round in 0..300 {
            let stop = Arc::new(AtomicBool::new(false));
            let turner = {
                let (d, stop) = (d.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        d.turn().expect("turn");
                    }
                })
            };
            let done = Arc::new(AtomicUsize::new(0));
            let waiter = block_on_waiter(&d, 10, &done, None);
            // A waiter stuck for good never finishes; one that is merely slow (a loaded
            // machine) does within the guard. Stop the turner first: the waiter must
            // then drive the ring alone.
            let start = Instant::now();
            while !waiter.is_finished() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Ordering::Relaxed);
            turner.join().expect("turner panicked");
            join_or_report(waiter, &d, &done, 10, &format!("{b:?} round {round}"));
        }
        assert_eq!(d.outstanding(), 0);
    }

    /// Two threads each awaiting their own ops with `block_on` on one driver: each
    /// one's turn reaps the other's completions. They end together: on io_uring a
    /// socket read one thread handed to the kernel completes `Canceled` once that
    /// thread has exited (the kernel cannot run its task work on a dead task; a
    /// separate, known problem), which is not what this test is about.
    fn block_on_on_two_threads_never_sticks(b: BackendChoice) {
        let d = Driver::new(ring(b, 256));
        for round in 0..100 {
            let (done1, done2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let together = Arc::new(Barrier::new(2));
            let w1 = block_on_waiter(&d, 20, &done1, Some(together.clone()));
            let w2 = block_on_waiter(&d, 20, &done2, Some(together));
            join_or_report(w1, &d, &done1, 20, &format!("{b:?} round {round}, first"));
            join_or_report(w2, &d, &done2, 20, &format!("{b:?} round {round}, second"));
        }
        assert_eq!(d.outstanding(), 0);
    }

    /// `block_on` on a plain thread while the same driver is attached to a tokio
    /// runtime: first with the reactor alone (it reaps the completion `block_on`
    /// waits for, and then the wake-up meant for the sleeper), then with tasks
    /// submitting beside it.
    #[cfg(feature = "tokio")]
    fn block_on_beside_tokio_reactor_never_sticks(b: BackendChoice) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let d = Driver::new(ring(b, 256));
        rt.block_on(async { quell::tokio::attach(&d) }).expect("attach");
        let rounds = |phase: &str| {
            for round in 0..60 {
                let done = Arc::new(AtomicUsize::new(0));
                let w = block_on_waiter(&d, 20, &done, None);
                join_or_report(w, &d, &done, 20, &format!("{b:?} {phase} round {round}"));
            }
        };
        rounds("reactor alone");
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (d, stop) = (d.clone(), stop.clone());
                rt.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        d.sleep(Duration::from_micros(100)).expect("sleep").await;
                    }
                })
            })
            .collect();
        rounds("with tasks");
        stop.store(true, Ordering::Relaxed);
        guard("tokio tasks", 20, move || {
            rt.block_on(async {
                for t in tasks {
                    t.await.expect("task");
                }
            })
        });
        assert_eq!(d.outstanding(), 0);
    }

    /// A snapshot asked for just before the ring is dropped: the wait ends at once
    /// with `Closed` (the ring is gone), not after its whole timeout.
    fn ops_request_when_ring_dies(b: BackendChoice) {
        guard("ops_request_when_ring_dies", 30, move || {
            let r = ring(b, 16);
            let h = r.handle();
            let req = h.request_ops().expect("request");
            drop(r);
            assert!(h.is_closed());
            let start = Instant::now();
            let res = req.wait(Duration::from_secs(10));
            assert!(matches!(res, Err(Error::Closed)), "{b:?}: {res:?} after {:?}", start.elapsed());
            // And a request after the ring is gone is refused outright.
            assert!(matches!(h.request_ops(), Err(Error::Closed)));
        });
    }

    /// The same through a driver, and with ops in flight when it goes.
    fn ops_request_when_driver_dies(b: BackendChoice) {
        guard("ops_request_when_driver_dies", 30, move || {
            let d = Driver::new(ring(b, 16));
            let (r, _w) = std::os::unix::net::UnixStream::pair().expect("pair");
            let read = d.read(raw(&r), vec![0u8; 8]);
            let h = d.with_ring(|r| r.handle());
            let req = h.request_ops().expect("request");
            drop(read);
            drop(d);
            let res = req.wait(Duration::from_secs(10));
            assert!(matches!(res, Err(Error::Closed)), "{b:?}: {res:?}");
        });
    }

    /// `Ring::shutdown` without dropping the ring: pending requests are refused as
    /// the ring closes, later ones at once.
    fn ops_request_when_ring_shuts_down(b: BackendChoice) {
        guard("ops_request_when_ring_shuts_down", 30, move || {
            let mut r = ring(b, 16);
            let h = r.handle();
            let req = h.request_ops().expect("request");
            h.cancel_all().expect("cancel_all");
            assert!(r.shutdown().is_empty());
            let res = req.wait(Duration::from_secs(10));
            assert!(matches!(res, Err(Error::Closed)), "{b:?}: {res:?}");
            assert!(matches!(h.request_ops(), Err(Error::Closed)));
            assert!(matches!(h.wake(), Err(Error::Closed)));
            drop(r);
        });
    }

    /// Threads keep asking for snapshots while the ring's owner serves some and then
    /// drops the ring: every request is answered (a snapshot) or refused (`Closed`),
    /// none is left to time out.
    fn request_ops_racing_ring_drop(b: BackendChoice) {
        guard("request_ops_racing_ring_drop", 120, move || {
            for round in 0..200 {
                let mut r = ring(b, 16);
                let h = r.handle();
                let askers: Vec<_> = (0..2)
                    .map(|_| {
                        let h = h.clone();
                        std::thread::spawn(move || {
                            let (mut served, mut refused) = (0, 0);
                            loop {
                                let req = match h.request_ops() {
                                    Ok(req) => req,
                                    Err(Error::Closed) => return (served, refused + 1),
                                    Err(e) => panic!("request_ops: {e:?}"),
                                };
                                match req.wait(Duration::from_secs(10)) {
                                    Ok(_) => served += 1,
                                    Err(Error::Closed) => refused += 1,
                                    Err(e) => panic!("a request was stranded: {e:?}"),
                                }
                            }
                        })
                    })
                    .collect();
                // Serve a varying number of turns, then drop the ring mid-stream.
                for _ in 0..round % 7 {
                    r.poll().expect("poll");
                    std::thread::yield_now();
                }
                drop(r);
                for a in askers {
                    let (_served, refused) = a.join().expect("asker panicked");
                    assert!(refused >= 1, "{b:?} round {round}: the asker ends on Closed");
                }
            }
        });
    }
}
