//! The futures layer on tokio (feature `tokio`), on both backends: the reactor wakes
//! on completions, `tokio::time::timeout` around pending reads cancels them with the
//! buffers safe, a multi-thread runtime with random drops loses nothing and completes
//! every op exactly once, and `tokio::io::copy` runs over quell streams.
#![cfg(feature = "tokio")]

mod common;

use common::*;
use quell::future::{Driver, Stream};
use quell::BackendChoice;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn driver(b: BackendChoice, cap: usize) -> Driver {
    let d = Driver::new(ring(b, cap));
    quell::tokio::attach(&d).expect("attach");
    d
}

/// Waits (yielding to the runtime) until every op the driver started has completed.
async fn settled(d: &Driver, secs: u64) {
    let start = Instant::now();
    while d.outstanding() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} ops still running after {secs}s",
            d.outstanding()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn link_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn fds_linking_to(target: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.display().to_string() == target)
        .count()
}

/// `n` loopback TCP connections: (client, server side wrapped in a quell stream).
fn loopback_pairs(d: &Driver, n: usize) -> Vec<(std::net::TcpStream, Stream)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let (s, _) = l.accept().unwrap();
            (c, Stream::new(d, s))
        })
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

both_backends! {
    fn a_lone_ops_first_poll_hands_it_to_the_kernel(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            // Room in the socket: the write completes as soon as the kernel has it, so
            // its first poll (no other completion waiting to be taken) resolves it,
            // with no reactor turn in between.
            let mut w = std::pin::pin!(d.write(ours.as_raw_fd(), b"first".to_vec()));
            let first = std::future::poll_fn(|cx| Poll::Ready(w.as_mut().poll(cx))).await;
            let Poll::Ready((n, buf)) = first else {
                panic!("the write was not handed over by its first poll");
            };
            assert_eq!(n.unwrap(), 5);
            assert_eq!(buf, b"first");
            let mut got = [0u8; 5];
            std::io::Read::read_exact(&mut &peer, &mut got).unwrap();
            assert_eq!(&got, b"first");
            // Nothing to read yet: the read waits, and the reactor completes it later.
            let mut r = std::pin::pin!(d.read(ours.as_raw_fd(), vec![0u8; 8]));
            let first = std::future::poll_fn(|cx| Poll::Ready(r.as_mut().poll(cx))).await;
            assert!(first.is_pending());
            std::io::Write::write_all(&mut &peer, b"back").unwrap();
            let (n, buf) = tokio::time::timeout(Duration::from_secs(10), r).await.expect("read hung");
            assert_eq!(&buf[..n.unwrap()], b"back");
            settled(&d, 5).await;
        });
    }

    /// Several ops polled in one task poll each reach the kernel from that poll when
    /// they can: a read that waits (nothing to read yet) does not keep the write polled
    /// after it waiting for a reactor turn (hyper polls its read first, then writes).
    fn a_waiting_read_does_not_hold_back_the_write_polled_after_it(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let (mut r, mut w) = (Stream::new(&d, ours.try_clone().unwrap()), Stream::new(&d, ours));
            for round in 0..20 {
                let line = format!("reply {round}\n");
                let mut buf = [0u8; 16];
                let done = std::future::poll_fn(|cx| {
                    assert!(r.poll_read(cx, &mut buf).is_pending(), "nothing was sent yet");
                    let n = match w.poll_write(cx, line.as_bytes()) {
                        Poll::Ready(n) => n.unwrap(),
                        Poll::Pending => return Poll::Ready(false),
                    };
                    assert_eq!(n, line.len());
                    // Flushed in the same poll: the write went to the kernel and is done.
                    Poll::Ready(w.poll_flush(cx).is_ready())
                })
                .await;
                assert!(done, "round {round}: the write waited for a reactor turn");
                let mut got = vec![0u8; line.len()];
                std::io::Read::read_exact(&mut &peer, &mut got).unwrap();
                assert_eq!(got, line.as_bytes());
                // The read gets an answer; the next round starts with a fresh read.
                std::io::Write::write_all(&mut &peer, b"x").unwrap();
                let n = tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await.expect("read hung").unwrap();
                assert_eq!(n, 1);
                tokio::task::yield_now().await;
            }
        });
    }

    fn an_untaken_completion_does_not_hold_later_ops_back(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            // Two nops; awaiting the second completes both, and the first's completion
            // then waits, untaken, while this task goes on. A poll that finds an
            // untaken completion leaves the handing over to the reactor: the later
            // read must still reach the kernel and complete.
            let held = d.submit(quell::Op::nop()).unwrap();
            let c = d.submit(quell::Op::nop()).unwrap().await;
            assert!(c.outcome.is_done());
            std::io::Write::write_all(&mut &peer, b"later").unwrap();
            for round in 0..100 {
                let (n, buf) = tokio::time::timeout(
                    Duration::from_secs(10),
                    d.read(ours.as_raw_fd(), vec![0u8; 8]),
                )
                .await
                .unwrap_or_else(|_| panic!("read {round} hung behind an untaken completion"));
                assert_eq!(&buf[..n.unwrap()], b"later");
                std::io::Write::write_all(&mut &peer, b"later").unwrap();
            }
            assert!(tokio::time::timeout(Duration::from_secs(10), held)
                .await
                .expect("held nop")
                .outcome
                .is_done());
            let (n, _) = d.read(ours.as_raw_fd(), vec![0u8; 8]).await;
            assert_eq!(n.unwrap(), 5);
            settled(&d, 5).await;
        });
    }

    fn deadlines_timeouts_and_cancels_reach_the_reactor(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (ours, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let fd = ours.as_raw_fd();
            let within = Duration::from_secs(10);
            // The read's first poll hands it over itself; its deadline is the ring's
            // timer, which only the reactor's turn can put on tokio's clock.
            let op = quell::Op::read(fd, vec![0u8; 8]).deadline(Instant::now() + Duration::from_millis(30));
            let c = tokio::time::timeout(within, d.submit(op).unwrap()).await.expect("op deadline never fired");
            assert_eq!(c.outcome, quell::Outcome::TimedOut { transferred: 0 });
            assert_eq!(c.into_buf().unwrap().len(), 8);
            // The same through a group made with `with_ring`.
            let g = d.with_ring(|r| {
                r.group(
                    quell::GroupId::ROOT,
                    quell::GroupOptions::default().deadline(Instant::now() + Duration::from_millis(30)),
                )
            })
            .unwrap();
            let op = quell::Op::read(fd, vec![0u8; 8]).group(g);
            let c = tokio::time::timeout(within, d.submit(op).unwrap()).await.expect("group deadline never fired");
            assert_eq!(c.outcome, quell::Outcome::TimedOut { transferred: 0 });
            // A timeout op (the portable backend's own timer heap).
            let c = tokio::time::timeout(within, d.sleep(Duration::from_millis(20)).unwrap()).await.expect("sleep never ended");
            assert!(c.outcome.is_done());
            // A cancel of a read waiting in the kernel (or the portable backend's FIFO).
            let mut read = d.submit(quell::Op::read(fd, vec![0u8; 8])).unwrap();
            let first = std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut read).poll(cx))).await;
            assert!(first.is_pending());
            read.cancel();
            let c = tokio::time::timeout(within, read).await.expect("cancel never landed");
            assert_eq!(c.outcome, quell::Outcome::Canceled { transferred: 0 });
            settled(&d, 5).await;
        });
    }

    fn socket_read_wakes_the_reactor(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let f = d.read(r.as_raw_fd(), vec![0u8; 16]);
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                std::io::Write::write_all(&mut &w, b"wake").unwrap();
                w
            });
            let (n, buf) = tokio::time::timeout(Duration::from_secs(10), f).await.expect("read hung");
            assert_eq!(&buf[..n.unwrap()], b"wake");
            writer.join().unwrap();
        });
    }

    /// Submitting hands the op to the ring: it runs even while its task awaits
    /// something else that depends on it, before the op's own future is polled.
    fn a_submitted_op_runs_before_its_future_is_polled(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            // Let the reactor start, run an op and go idle first.
            assert!(d.submit(quell::Op::nop()).unwrap().await.outcome.is_done());
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let write = d.submit(quell::Op::write(w.as_raw_fd(), b"ahead".to_vec())).unwrap();
            // A plain thread reads what the quell write sends; the task awaits that
            // thread first, and only then the write's own future.
            let reader = tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 5];
                std::io::Read::read_exact(&mut &r, &mut buf).map(|_| buf)
            });
            let got = tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .expect("the write never reached the kernel while its future was unpolled")
                .unwrap()
                .unwrap();
            assert_eq!(&got, b"ahead");
            assert_eq!(write.await.outcome, quell::Outcome::Done(5));
        });
    }

    fn timeout_around_a_thousand_pending_socket_reads(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 4096);
            let pairs = loopback_pairs(&d, 1000);
            let links: Vec<String> = pairs.iter().map(|(_, s)| link_of(s.fd())).collect();
            let reads = pairs.iter().map(|(_, s)| {
                tokio::time::timeout(Duration::from_millis(100), s.read_owned(vec![0u8; 256]))
            });
            let results = join_all(reads).await;
            assert!(results.iter().all(|r| r.is_err()), "a read on a silent socket finished");
            // Every dropped read is canceled; the kernel gives every buffer back.
            settled(&d, 10).await;
            assert!(d.with_ring(|r| r.is_empty() && r.ops().is_empty()));
            // The sockets still work, and the canceled reads took no byte.
            for (i, (c, _)) in pairs.iter().enumerate() {
                std::io::Write::write_all(&mut &*c, format!("{i:04}").as_bytes()).unwrap();
            }
            for (i, (_, s)) in pairs.iter().enumerate() {
                let (n, buf) = tokio::time::timeout(Duration::from_secs(10), s.read_owned(vec![0u8; 16]))
                    .await
                    .expect("socket dead after the timeouts");
                assert_eq!(&buf[..n.unwrap()], format!("{i:04}").as_bytes());
            }
            drop(pairs);
            settled(&d, 10).await;
            for l in &links {
                assert_eq!(fds_linking_to(l), 0, "{l} leaked");
            }
        });
    }

    fn timeout_around_async_read_keeps_the_op_for_the_next_call(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut s = Stream::new(&d, y);
            let mut buf = [0u8; 8];
            for _ in 0..20 {
                let r = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await;
                assert!(r.is_err());
            }
            std::io::Write::write_all(&mut &x, b"still here").unwrap();
            let mut got = vec![0u8; 10];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
                .await
                .expect("read hung")
                .unwrap();
            assert_eq!(&got, b"still here");
        });
    }

    fn multi_thread_tasks_with_random_drops_lose_nothing(b: BackendChoice) {
        const TASKS: u64 = 8;
        const MSGS: u32 = 3000;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let d = rt.block_on(async { driver(b, 1024) });
        let mut writers = Vec::new();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
            writers.push(std::thread::spawn(move || {
                let mut rng = Rng(t + 1);
                for i in 0..MSGS {
                    std::io::Write::write_all(&mut &x, &i.to_le_bytes()).unwrap();
                    if rng.next() % 8 == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                x
            }));
            let d = d.clone();
            tasks.push(rt.spawn(async move {
                let s = Stream::new(&d, y);
                let mut rng = Rng(0xdead_beef ^ (t << 8));
                let (mut got, mut resolved, mut dropped) = (Vec::new(), 0u64, 0u64);
                while got.len() < (MSGS * 4) as usize {
                    let len = 1 + (rng.next() % 32) as usize;
                    let wait = Duration::from_micros(rng.next() % 300);
                    match tokio::time::timeout(wait, s.read_owned(vec![0u8; len])).await {
                        Ok((n, buf)) => {
                            got.extend_from_slice(&buf[..n.unwrap()]);
                            resolved += 1;
                        }
                        Err(_) => dropped += 1,
                    }
                    if rng.next() % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                for (i, c) in got.chunks(4).enumerate() {
                    assert_eq!(u32::from_le_bytes(c.try_into().unwrap()), i as u32, "task {t} message {i}");
                }
                assert_eq!(got.len(), (MSGS * 4) as usize);
                (resolved, dropped)
            }));
        }
        let counts = rt.block_on(async {
            let mut v = Vec::new();
            for t in tasks {
                v.push(tokio::time::timeout(Duration::from_secs(120), t).await.expect("tasks hung").unwrap());
            }
            settled(&d, 10).await;
            v
        });
        for w in writers {
            w.join().unwrap();
        }
        let dropped: u64 = counts.iter().map(|c| c.1).sum();
        assert!(dropped > 0, "no drop happened: the test tested nothing");
        let stats = d.with_ring(|r| r.stats());
        assert_eq!(stats.submitted, stats.completed, "every op completes exactly once");
        assert!(d.with_ring(|r| r.is_empty()));
    }

    fn tokio_io_copy_runs_over_quell_streams(b: BackendChoice) {
        current_thread().block_on(async {
            let d = driver(b, 64);
            let (src_w, src_r) = std::os::unix::net::UnixStream::pair().unwrap();
            let (dst_w, dst_r) = std::os::unix::net::UnixStream::pair().unwrap();
            let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            let expect = data.clone();
            let feeder = std::thread::spawn(move || {
                std::io::Write::write_all(&mut &src_w, &data).unwrap();
            });
            let sink = std::thread::spawn(move || {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut &dst_r, &mut out).unwrap();
                out
            });
            let mut from = Stream::new(&d, src_r);
            let mut to = Stream::new(&d, dst_w);
            let n = tokio::io::copy(&mut from, &mut to).await.unwrap();
            to.shutdown().await.unwrap();
            assert_eq!(n, 1_000_000);
            feeder.join().unwrap();
            assert!(sink.join().unwrap() == expect);
        });
    }
}

/// Awaits every future concurrently on the current task (no extra dependency).
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *o = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

/// Round trips to an echo thread, in several `block_on` sessions of one runtime (the
/// reactor task sleeps between them), as the pingpong benchmark runs them.
fn pingpong_sessions(b: BackendChoice) {
    use quell::Op;
    let rt = current_thread();
    let d = rt.block_on(async { driver(b, 64) });
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while std::io::Read::read_exact(&mut &theirs, &mut buf).is_ok() {
            if std::io::Write::write_all(&mut &theirs, &buf).is_err() {
                break;
            }
        }
    });
    let fd = ours.as_raw_fd();
    let (mut w, mut r) = (vec![1u8; 64], vec![0u8; 64]);
    for session in 0..6 {
        // The runtime sits idle between sessions (the benchmark runs other contenders).
        std::thread::sleep(Duration::from_millis(300));
        let out = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                for _ in 0..3000 {
                    let wf = d.submit(Op::write(fd, w).exact()).unwrap();
                    let rf = d.submit(Op::read(fd, r).exact()).unwrap();
                    let cw = wf.await;
                    assert_eq!(cw.outcome, quell::Outcome::Done(64), "write");
                    let cr = rf.await;
                    assert_eq!(cr.outcome, quell::Outcome::Done(64), "read");
                    w = cw.into_buf().unwrap();
                    r = cr.into_buf().unwrap();
                }
                (w, r)
            })
            .await
        });
        (w, r) = out.unwrap_or_else(|_| {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 0) };
            panic!(
                "session {session} hung: ops {:?}, socket revents {:#x}",
                d.with_ring(|r| r.ops()),
                p.revents
            )
        });
    }
    drop(ours);
    echo.join().unwrap();
}

#[test]
fn pingpong_sessions_uring() {
    pingpong_sessions(BackendChoice::Uring)
}

#[test]
fn pingpong_sessions_portable() {
    pingpong_sessions(BackendChoice::Portable)
}
