//! Driver shared across threads: cancels never wait behind a sleeping owner; stale cancellers.
use crate::common::*;
use quell::Op;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A canceller kept after its op finished must not cancel a later op that reuses the slot.
#[test]
fn stale_canceller_does_not_hit_new_op() {
    for b in BACKENDS {
        guard("stale_canceller", 30, move || {
            let d = driver_on(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let f1 = d.submit(Op::nop()).unwrap();
            let c1 = f1.canceller().unwrap();
            let id1 = c1.id();
            assert!(d.block_on(f1).outcome.is_done());
            let mut reused = false;
            for _ in 0..50 {
                let f2 = d.submit(Op::read(r.as_raw_fd(), vec![0u8; 4])).unwrap();
                let id2 = f2.id().unwrap();
                if id2 != id1 {
                    // compare slot: Debug contains slot/generation
                }
                c1.cancel();
                d.turn().unwrap();
                std::io::Write::write_all(&mut &w, b"k").unwrap();
                let c = d.block_on(f2);
                assert_eq!(
                    c.outcome,
                    quell::Outcome::Done(1),
                    "{b:?}: stale canceller canceled a newer op ({id1:?} vs {id2:?})"
                );
                reused |=
                    format!("{id1:?}").split('.').next() == format!("{id2:?}").split('.').next();
            }
            eprintln!("{b:?}: slot reuse seen: {reused}");
        });
    }
}

/// While one thread sleeps in block_on, others' with_ring, submit, cancel and drop return quickly.
#[test]
fn nothing_waits_behind_block_on_sleep() {
    for b in BACKENDS {
        guard("block_on_sleep", 60, move || {
            let d = driver_on(b);
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let d1 = d.clone();
            let sleeper = std::thread::spawn(move || {
                let f = d1.sleep(Duration::from_secs(3)).unwrap();
                d1.block_on(f).outcome
            });
            std::thread::sleep(Duration::from_millis(200));
            let mut worst = Duration::ZERO;
            for _ in 0..50 {
                let t0 = Instant::now();
                let _ = d.with_ring(|ring| ring.len());
                let f = d.submit(Op::read(r.as_raw_fd(), vec![0u8; 8])).unwrap();
                let c = f.canceller().unwrap();
                c.cancel();
                drop(f);
                let _ = d.kept_bytes(r.as_raw_fd());
                worst = worst.max(t0.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                worst < Duration::from_millis(500),
                "{b:?}: a call waited {worst:?} behind block_on's sleep"
            );
            let o = sleeper.join().unwrap();
            assert!(o.is_done(), "{b:?}");
            let t0 = Instant::now();
            while d.outstanding() > 0 && t0.elapsed() < Duration::from_secs(5) {
                d.turn().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(d.outstanding(), 0);
        });
    }
}

/// block_on from a spawn_blocking thread while the same driver is attached to tokio and used by tasks.
#[test]
fn block_on_inside_tokio_attached_driver() {
    for b in BACKENDS {
        guard("block_on_tokio", 60, move || {
            let rt = rt_multi();
            rt.block_on(async move {
                let d = quell::future::Driver::new(ring(b));
                quell::tokio::attach(&d).unwrap();
                let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
                let fd = r.as_raw_fd();
                let d2 = d.clone();
                let blocking = tokio::task::spawn_blocking(move || {
                    let mut n = 0;
                    for i in 0..200 {
                        let f = if i % 2 == 0 {
                            d2.submit(Op::nop()).unwrap()
                        } else {
                            d2.sleep(Duration::from_micros(100)).unwrap()
                        };
                        let c = d2.block_on(f);
                        assert!(c.outcome.is_done());
                        n += 1;
                    }
                    n
                });
                let mut tasks = Vec::new();
                for _ in 0..4 {
                    let d3 = d.clone();
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..200 {
                            d3.sleep(Duration::from_micros(100)).unwrap().await;
                        }
                    }));
                }
                let reader = {
                    let d4 = d.clone();
                    tokio::spawn(async move { d4.read(fd, vec![0u8; 4]).await.0.unwrap() })
                };
                std::io::Write::write_all(&mut &w, b"abcd").unwrap();
                assert_eq!(
                    tokio::time::timeout(Duration::from_secs(20), blocking)
                        .await
                        .expect("block_on hang")
                        .unwrap(),
                    200
                );
                for t in tasks {
                    tokio::time::timeout(Duration::from_secs(20), t)
                        .await
                        .expect("task hang")
                        .unwrap();
                }
                assert_eq!(
                    tokio::time::timeout(Duration::from_secs(5), reader)
                        .await
                        .expect("read hang")
                        .unwrap(),
                    4
                );
            });
        });
    }
}

/// Driver::turn "from an executor of your own" on one thread while another thread awaits with
/// block_on: "a wake of the future from elsewhere ring[s] the ring's doorbell and end[s] the sleep".
/// With timeouts/sleeps the block_on thread gets stuck for good (the op never completes).
#[test]
fn block_on_with_concurrent_turn_never_sticks() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut report = Vec::new();
    for b in BACKENDS {
        let mut stuck = 0;
        let mut detail = String::new();
        for _round in 0..3 {
            let d = driver_on(b);
            let stop = Arc::new(AtomicBool::new(false));
            let turner = {
                let (d, stop) = (d.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        d.turn().unwrap();
                    }
                })
            };
            let done = Arc::new(AtomicUsize::new(0));
            let waiter = {
                let (d, done) = (d.clone(), done.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let f = if i % 2 == 0 {
                            d.submit(Op::timeout(Duration::from_micros(50))).unwrap()
                        } else {
                            d.sleep(Duration::from_micros(200)).unwrap()
                        };
                        d.block_on(f);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let t0 = Instant::now();
            while !waiter.is_finished() && t0.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Relaxed);
            turner.join().unwrap();
            if !waiter.is_finished() {
                // give it every chance: the turner is gone, the waiter drives alone
                std::thread::sleep(Duration::from_secs(1));
            }
            if !waiter.is_finished() {
                stuck += 1;
                let ops = d.with_ring(|r| {
                    r.ops()
                        .into_iter()
                        .map(|o| (o.kind, o.state, o.age))
                        .collect::<Vec<_>>()
                });
                detail = format!(
                    "stuck after {} ops; ring ops {:?}; outstanding {}",
                    done.load(Ordering::Relaxed),
                    ops,
                    d.outstanding()
                );
                std::mem::forget(waiter);
            } else {
                waiter.join().unwrap();
            }
        }
        eprintln!("{b:?}: stuck {stuck}/3 {detail}");
        if stuck > 0 {
            report.push(format!(
                "{b:?}: block_on stuck in {stuck}/3 rounds; {detail}"
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
