//! I11 / I13 with futures as users drop them, over tokio.
use crate::common::*;
use quell::future::{Driver, Stream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tdriver(b: BackendChoice) -> Driver {
    let d = Driver::new(ring(b));
    quell::tokio::attach(&d).unwrap();
    d
}

fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A writer thread trickles bytes; the reader wraps every AsyncRead::read in a tiny timeout.
/// Every byte must arrive exactly once, in order (I11 / I13).
#[test]
fn tcp_read_under_timeouts_no_loss_no_dup() {
    for b in BACKENDS {
        guard("read_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let total = 400_000;
                let data = pattern(total, 1);
                let data2 = data.clone();
                let w = std::thread::spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    c.set_nodelay(true).unwrap();
                    let mut rng = Lcg(7);
                    let mut off = 0;
                    while off < data2.len() {
                        let n = (1 + rng.next() % 3000) as usize;
                        let end = (off + n).min(data2.len());
                        std::io::Write::write_all(&mut c, &data2[off..end]).unwrap();
                        off = end;
                        if rng.next() % 4 == 0 {
                            std::thread::sleep(Duration::from_micros(rng.next() % 400));
                        }
                    }
                });
                let (sock, _) = l.accept().unwrap();
                let mut s = Stream::new(&d, sock);
                let mut got = Vec::with_capacity(total);
                let mut rng = Lcg(3);
                let mut buf = vec![0u8; 4096];
                let mut timeouts = 0;
                while got.len() < total {
                    let len = 1 + (rng.next() % 4096) as usize;
                    let t = Duration::from_micros(rng.next() % 1500);
                    match tokio::time::timeout(t, s.read(&mut buf[..len])).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                        Ok(Err(e)) => panic!("{b:?} read error {e}"),
                        Err(_) => timeouts += 1,
                    }
                }
                w.join().unwrap();
                assert_eq!(got.len(), total, "{b:?} length (timeouts {timeouts})");
                assert!(got == data, "{b:?} bytes differ (timeouts {timeouts})");
            });
        });
    }
}

/// Same with owned-buffer futures (read_owned) dropped by timeouts.
#[test]
fn unix_read_owned_under_timeouts_no_loss_no_dup() {
    for b in BACKENDS {
        guard("read_owned_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let total = 300_000;
                let data = pattern(total, 2);
                let data2 = data.clone();
                let w = std::thread::spawn(move || {
                    let mut rng = Lcg(11);
                    let mut off = 0;
                    while off < data2.len() {
                        let n = (1 + rng.next() % 2000) as usize;
                        let end = (off + n).min(data2.len());
                        std::io::Write::write_all(&mut &peer, &data2[off..end]).unwrap();
                        off = end;
                        if rng.next() % 3 == 0 {
                            std::thread::sleep(Duration::from_micros(rng.next() % 300));
                        }
                    }
                });
                let s = Stream::new(&d, a);
                let mut got = Vec::with_capacity(total);
                let mut rng = Lcg(5);
                while got.len() < total {
                    let len = 1 + (rng.next() % 3000) as usize;
                    let t = Duration::from_micros(rng.next() % 1000);
                    match tokio::time::timeout(t, s.read_owned(vec![0u8; len])).await {
                        Ok((Ok(0), _)) => break,
                        Ok((Ok(n), buf)) => got.extend_from_slice(&buf[..n]),
                        Ok((Err(e), _)) => panic!("{b:?} read error {e}"),
                        Err(_) => {}
                    }
                }
                w.join().unwrap();
                assert_eq!(got.len(), total, "{b:?}");
                assert!(got == data, "{b:?} bytes differ");
            });
        });
    }
}

/// Raw-fd driver reads dropped by timeouts (driver.read keeps bytes per fd).
#[test]
fn pipe_driver_read_under_timeouts_no_loss_no_dup() {
    for b in BACKENDS {
        guard("driver_read_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let (rx, tx) = pipe();
                let total = 200_000;
                let data = pattern(total, 3);
                let data2 = data.clone();
                let w = std::thread::spawn(move || {
                    let mut rng = Lcg(13);
                    let mut off = 0;
                    let f = std::fs::File::from(tx);
                    while off < data2.len() {
                        let n = (1 + rng.next() % 5000) as usize;
                        let end = (off + n).min(data2.len());
                        std::io::Write::write_all(&mut &f, &data2[off..end]).unwrap();
                        off = end;
                        if rng.next() % 3 == 0 {
                            std::thread::sleep(Duration::from_micros(rng.next() % 300));
                        }
                    }
                });
                let fd = rx.as_raw_fd();
                let mut got = Vec::with_capacity(total);
                let mut rng = Lcg(17);
                while got.len() < total {
                    let len = 1 + (rng.next() % 8000) as usize;
                    let t = Duration::from_micros(rng.next() % 800);
                    match tokio::time::timeout(t, d.read(fd, vec![0u8; len])).await {
                        Ok((Ok(0), _)) => break,
                        Ok((Ok(n), buf)) => got.extend_from_slice(&buf[..n]),
                        Ok((Err(e), _)) => panic!("{b:?} read error {e}"),
                        Err(_) => {}
                    }
                }
                w.join().unwrap();
                assert_eq!(got.len(), total, "{b:?}");
                assert!(got == data, "{b:?} bytes differ");
                drop(rx);
            });
        });
    }
}

/// select! between reads of two streams; the loser is dropped each round.
#[test]
fn select_two_streams_no_loss() {
    for b in BACKENDS {
        guard("select", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let (a, pa) = std::os::unix::net::UnixStream::pair().unwrap();
                let (c, pc) = std::os::unix::net::UnixStream::pair().unwrap();
                let total = 100_000;
                let da = pattern(total, 4);
                let dc = pattern(total, 5);
                let (da2, dc2) = (da.clone(), dc.clone());
                let w1 = std::thread::spawn(move || {
                    for ch in da2.chunks(777) {
                        std::io::Write::write_all(&mut &pa, ch).unwrap();
                        std::thread::sleep(Duration::from_micros(50));
                    }
                });
                let w2 = std::thread::spawn(move || {
                    for ch in dc2.chunks(1234) {
                        std::io::Write::write_all(&mut &pc, ch).unwrap();
                        std::thread::sleep(Duration::from_micros(70));
                    }
                });
                let (mut sa, mut sc) = (Stream::new(&d, a), Stream::new(&d, c));
                let (mut ga, mut gc) = (Vec::new(), Vec::new());
                let mut ba = vec![0u8; 3000];
                let mut bc = vec![0u8; 3000];
                while ga.len() < total || gc.len() < total {
                    tokio::select! {
                        r = sa.read(&mut ba), if ga.len() < total => { let n = r.unwrap(); assert!(n > 0); ga.extend_from_slice(&ba[..n]); }
                        r = sc.read(&mut bc), if gc.len() < total => { let n = r.unwrap(); assert!(n > 0); gc.extend_from_slice(&bc[..n]); }
                    }
                }
                w1.join().unwrap();
                w2.join().unwrap();
                assert!(ga == da, "{b:?} stream a differs");
                assert!(gc == dc, "{b:?} stream c differs");
            });
        });
    }
}

/// I13 for AsyncWrite: `write` under timeouts against a slow reader. Exactly the acknowledged
/// bytes reach the peer, in order.
#[test]
fn write_under_timeouts_wire_equals_acknowledged() {
    for b in BACKENDS {
        guard("write_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let mut buf = [0u8; 1000];
                    loop {
                        let n = std::io::Read::read(&mut &peer, &mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        all.extend_from_slice(&buf[..n]);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    all
                });
                let mut s = Stream::new(&d, a);
                let mut acked = Vec::new();
                let mut rng = Lcg(19);
                let mut i = 0u64;
                while acked.len() < 600_000 {
                    let msg = pattern(1 + (rng.next() % 20000) as usize, i);
                    i += 1;
                    let t = Duration::from_micros(rng.next() % 2000);
                    match tokio::time::timeout(t, s.write(&msg)).await {
                        Ok(Ok(n)) => acked.extend_from_slice(&msg[..n]),
                        Ok(Err(e)) => panic!("{b:?} write error {e}"),
                        Err(_) => {}
                    }
                }
                tokio::time::timeout(Duration::from_secs(60), s.shutdown())
                    .await
                    .expect("shutdown hang")
                    .unwrap();
                let wire = tokio::task::spawn_blocking(move || reader.join().unwrap())
                    .await
                    .unwrap();
                assert_eq!(wire.len(), acked.len(), "{b:?} wire length vs acknowledged");
                assert!(wire == acked, "{b:?} wire differs from acknowledged bytes");
            });
        });
    }
}

/// write_all under timeouts: every write_all that completes is whole on the wire; one that timed
/// out put a prefix of ITS bytes. Messages are runs of one distinct byte value.
#[test]
fn write_all_under_timeouts_prefixes_in_order() {
    for b in BACKENDS {
        guard("write_all_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = std::io::Read::read(&mut &peer, &mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        all.extend_from_slice(&buf[..n]);
                        std::thread::sleep(Duration::from_micros(300));
                    }
                    all
                });
                let mut s = Stream::new(&d, a);
                let mut rng = Lcg(23);
                let mut plan = Vec::new(); // (value, len, completed)
                for i in 0..300u32 {
                    let v = (i % 250) as u8 + 1;
                    let len = 1 + (rng.next() % 60000) as usize;
                    let msg = vec![v; len];
                    let t = Duration::from_micros(rng.next() % 3000);
                    let ok = match tokio::time::timeout(t, s.write_all(&msg)).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => panic!("{b:?} write_all error {e}"),
                        Err(_) => false,
                    };
                    plan.push((v, len, ok));
                }
                tokio::time::timeout(Duration::from_secs(60), s.shutdown())
                    .await
                    .expect("shutdown hang")
                    .unwrap();
                let wire = tokio::task::spawn_blocking(move || reader.join().unwrap())
                    .await
                    .unwrap();
                // decompose the wire
                let mut pos = 0;
                for (k, (v, len, ok)) in plan.iter().enumerate() {
                    let mut run = 0;
                    while pos + run < wire.len() && wire[pos + run] == *v && run < *len {
                        run += 1;
                    }
                    if *ok {
                        assert_eq!(
                            run, *len,
                            "{b:?} message {k} completed but {run}/{len} bytes on the wire"
                        );
                    }
                    pos += run;
                }
                assert_eq!(
                    pos,
                    wire.len(),
                    "{b:?}: {} bytes on the wire that belong to no message in order",
                    wire.len() - pos
                );
            });
        });
    }
}

/// Owned-buffer writes dropped by timeouts: each dropped write may have put a prefix of ITS bytes;
/// completed ones exactly n; nothing else, in order.
#[test]
fn write_owned_under_timeouts_prefixes_in_order() {
    for b in BACKENDS {
        guard("write_owned_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = std::io::Read::read(&mut &peer, &mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        all.extend_from_slice(&buf[..n]);
                        std::thread::sleep(Duration::from_micros(300));
                    }
                    all
                });
                let s = Stream::new(&d, a);
                let mut rng = Lcg(29);
                let mut plan = Vec::new();
                for i in 0..300u32 {
                    let v = (i % 250) as u8 + 1;
                    let len = 1 + (rng.next() % 60000) as usize;
                    let t = Duration::from_micros(rng.next() % 3000);
                    let res = match tokio::time::timeout(t, s.write_owned(vec![v; len])).await {
                        Ok((Ok(n), _)) => Some(n),
                        Ok((Err(e), _)) => panic!("{b:?} write error {e}"),
                        Err(_) => None,
                    };
                    plan.push((v, len, res));
                }
                drop(s); // lingers to send what it acknowledged, then closes
                let wire = tokio::task::spawn_blocking(move || reader.join().unwrap())
                    .await
                    .unwrap();
                let mut pos = 0;
                for (k, (v, len, res)) in plan.iter().enumerate() {
                    let mut run = 0;
                    while pos + run < wire.len() && wire[pos + run] == *v && run < *len {
                        run += 1;
                    }
                    if let Some(n) = res {
                        assert_eq!(
                            run, *n,
                            "{b:?} message {k}: Ok({n}) but {run} bytes on the wire"
                        );
                    }
                    pos += run;
                }
                assert_eq!(pos, wire.len(), "{b:?}: stray bytes on the wire");
            });
        });
    }
}

/// I13: "A Canceled { transferred: n } keeps n wherever it is converted (no Err that loses the
/// count)". An exact read canceled after 3 of 10 bytes, awaited as a BufFuture.
#[test]
fn buffuture_canceled_partial_keeps_count() {
    for b in BACKENDS {
        guard("buf_partial", 30, move || {
            let d = driver_on(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut f = d
                .submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 10]).exact())
                .unwrap()
                .buf();
            std::io::Write::write_all(&mut &w, b"abc").unwrap();
            for _ in 0..20 {
                d.turn().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            f.op_mut().unwrap().cancel();
            let (res, buf) = d.block_on(f);
            assert_eq!(
                res.as_ref().ok().copied(),
                Some(3),
                "{b:?}: canceled exact read after 3 bytes -> {res:?} (buf {:?})",
                &buf[..3]
            );
            assert_eq!(&buf[..3], b"abc");
        });
    }
}

/// Same for write_all_owned canceled part-way against a full socket buffer.
#[test]
fn write_all_owned_canceled_partial_keeps_count() {
    for b in BACKENDS {
        guard("write_partial", 30, move || {
            let d = driver_on(b);
            let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let s = Stream::new(&d, a);
            let big = vec![5u8; 4 << 20];
            let mut fut = Box::pin(s.write_all_owned(big));
            // poll a while: partially written, then stuck (peer does not read)
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            for _ in 0..50 {
                let _ = fut.as_mut().poll(&mut cx);
                d.turn().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            let queued = d.with_ring(|r| {
                r.ops()
                    .iter()
                    .map(|o| (o.id, o.transferred))
                    .collect::<Vec<_>>()
            });
            let id = queued[0].0;
            d.with_ring(|r| r.cancel(id)).unwrap();
            let (res, buf) = d.block_on(fut);
            let onwire = drain_now(peer.as_raw_fd()).len();
            eprintln!("{b:?}: write_all_owned canceled -> {res:?}, on wire {onwire}");
            assert_eq!(buf.len(), 4 << 20);
            match res {
                Ok(()) => assert_eq!(onwire, 4 << 20, "{b:?} Ok(()) but not all written"),
                Err(e) => assert!(
                    e.to_string().contains(&onwire.to_string()),
                    "{b:?}: canceled write_all lost its count ({onwire} bytes were written): {e:?}"
                ),
            }
        });
    }
}

use std::future::Future;

/// Dropped accepts keep their connection for the next accept (I11); none leaked or lost.
#[test]
fn listener_accept_under_timeouts_no_lost_connection() {
    for b in BACKENDS {
        guard("accept_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let l = quell::future::Listener::bind(&d, "127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = l.local_addr().unwrap();
                let n = 60;
                let clients = std::thread::spawn(move || {
                    let mut v = Vec::new();
                    for i in 0..n {
                        let mut c = std::net::TcpStream::connect(addr).unwrap();
                        std::io::Write::write_all(&mut c, &[i as u8]).unwrap();
                        v.push(c);
                        std::thread::sleep(Duration::from_micros(300 + (i as u64 * 37) % 700));
                    }
                    v
                });
                let mut seen = vec![false; n];
                let mut got = 0;
                let mut rng = Lcg(31);
                let start = std::time::Instant::now();
                while got < n && start.elapsed() < Duration::from_secs(60) {
                    let t = Duration::from_micros(rng.next() % 600);
                    if let Ok(r) = tokio::time::timeout(t, l.accept()).await {
                        let s = r.unwrap();
                        let (res, buf) = tokio::time::timeout(
                            Duration::from_secs(10),
                            s.read_owned(vec![0u8; 1]),
                        )
                        .await
                        .unwrap();
                        assert_eq!(res.unwrap(), 1);
                        assert!(
                            !seen[buf[0] as usize],
                            "{b:?} connection {} accepted twice",
                            buf[0]
                        );
                        seen[buf[0] as usize] = true;
                        got += 1;
                    }
                }
                let _c = clients.join().unwrap();
                assert_eq!(
                    got,
                    n,
                    "{b:?}: lost connections: {:?}",
                    seen.iter()
                        .enumerate()
                        .filter(|x| !x.1)
                        .map(|x| x.0)
                        .collect::<Vec<_>>()
                );
            });
        });
    }
}

/// Tasks reading a shared stream are aborted at random; a final reader gets every byte once.
#[test]
fn aborted_reader_tasks_no_loss() {
    for b in BACKENDS {
        guard("abort_tasks", 120, move || {
            let rt = rt_current();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let d = tdriver(b);
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let total = 200_000;
                let data = pattern(total, 9);
                let data2 = data.clone();
                let w = std::thread::spawn(move || {
                    for ch in data2.chunks(999) {
                        std::io::Write::write_all(&mut &peer, ch).unwrap();
                        std::thread::sleep(Duration::from_micros(40));
                    }
                    peer
                });
                let s = std::rc::Rc::new(Stream::new(&d, a));
                let got = Arc::new(std::sync::Mutex::new(Vec::new()));
                let mut rng = Lcg(37);
                loop {
                    let (s2, g2) = (s.clone(), got.clone());
                    let t = tokio::task::spawn_local(async move {
                        loop {
                            let (r, buf) = s2.read_owned(vec![0u8; 2048]).await;
                            let n = r.unwrap();
                            if n == 0 {
                                return;
                            }
                            g2.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    });
                    tokio::time::sleep(Duration::from_micros(rng.next() % 2000)).await;
                    t.abort();
                    let _ = t.await;
                    if got.lock().unwrap().len() >= total {
                        break;
                    }
                    if w.is_finished() && got.lock().unwrap().len() < total {
                        // writer done: read the rest with a plain reader
                        let rest = total - got.lock().unwrap().len();
                        let mut tail = Vec::new();
                        while tail.len() < rest {
                            match tokio::time::timeout(
                                Duration::from_secs(2),
                                s.read_owned(vec![0u8; 4096]),
                            )
                            .await
                            {
                                Ok((Ok(n), buf)) if n > 0 => tail.extend_from_slice(&buf[..n]),
                                other => {
                                    let g = got.lock().unwrap().len();
                                    panic!(
                                        "{b:?}: stream ran dry with {} of {total} bytes ({:?})",
                                        g + tail.len(),
                                        other.map(|x| x.0.map_err(|e| e.to_string()))
                                    )
                                }
                            }
                        }
                        got.lock().unwrap().extend_from_slice(&tail);
                        break;
                    }
                }
                let _peer = w.join().unwrap();
                let g = got.lock().unwrap().clone();
                assert_eq!(g.len(), total, "{b:?}");
                assert!(g == data, "{b:?} bytes differ");
            });
        });
    }
}

/// Multi-thread runtime, one shared driver, 8 echo connections whose server tasks wrap every read
/// and write in random timeouts (retrying the write of the unacknowledged rest). Clients verify the
/// echo byte for byte.
#[test]
fn mt_echo_with_timeouts_integrity() {
    for b in BACKENDS {
        guard("mt_echo", 180, move || {
            let rt = rt_multi();
            rt.block_on(async move {
                let d = tdriver(b);
                let l = quell::future::Listener::bind(&d, "127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = l.local_addr().unwrap();
                let conns = 8;
                let mut clients = Vec::new();
                for c in 0..conns {
                    clients.push(std::thread::spawn(move || {
                        let mut s = std::net::TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let data = pattern(150_000, 100 + c);
                        let s2 = s.try_clone().unwrap();
                        let d2 = data.clone();
                        let w = std::thread::spawn(move || {
                            let mut rng = Lcg(c + 1);
                            for ch in d2.chunks(1 + (rng.next() % 5000) as usize) {
                                std::io::Write::write_all(&mut &s2, ch).unwrap();
                                if rng.next() % 3 == 0 {
                                    std::thread::sleep(Duration::from_micros(rng.next() % 500));
                                }
                            }
                            s2.shutdown(std::net::Shutdown::Write).unwrap();
                        });
                        let mut got = Vec::new();
                        std::io::Read::read_to_end(&mut s, &mut got).unwrap();
                        w.join().unwrap();
                        (got.len(), got == data)
                    }));
                }
                let mut servers = Vec::new();
                for i in 0..conns {
                    let s = l.accept().await.unwrap();
                    servers.push(tokio::spawn(async move {
                        let mut s = s;
                        let mut rng = Lcg(1000 + i);
                        let mut buf = vec![0u8; 8192];
                        loop {
                            let len = 1 + (rng.next() % 8192) as usize;
                            let n = match tokio::time::timeout(
                                Duration::from_micros(rng.next() % 700),
                                s.read(&mut buf[..len]),
                            )
                            .await
                            {
                                Ok(Ok(0)) => break,
                                Ok(Ok(n)) => n,
                                Ok(Err(e)) => panic!("read error {e}"),
                                Err(_) => continue,
                            };
                            let mut off = 0;
                            while off < n {
                                match tokio::time::timeout(
                                    Duration::from_micros(rng.next() % 700),
                                    s.write(&buf[off..n]),
                                )
                                .await
                                {
                                    Ok(Ok(k)) => off += k,
                                    Ok(Err(e)) => panic!("write error {e}"),
                                    Err(_) => {}
                                }
                            }
                        }
                        s.shutdown().await.unwrap();
                    }));
                }
                for t in servers {
                    tokio::time::timeout(Duration::from_secs(120), t)
                        .await
                        .expect("server task hang")
                        .unwrap();
                }
                for (i, c) in clients.into_iter().enumerate() {
                    let (n, ok) = tokio::task::spawn_blocking(move || c.join().unwrap())
                        .await
                        .unwrap();
                    assert!(ok, "{b:?} connection {i}: echo differs ({n} bytes)");
                }
            });
        });
    }
}

/// A dropped recv with MSG_PEEK that completes anyway must not have its bytes "kept" and served
/// again: the kernel still holds them (peek does not consume). Bytes must not be duplicated.
#[test]
fn dropped_peek_recv_no_duplicate() {
    for b in BACKENDS {
        guard("peek", 30, move || {
            let d = driver_on(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let f = d
                .submit(quell::Op::recv(
                    r.as_raw_fd(),
                    vec![0u8; 16],
                    libc::MSG_PEEK,
                ))
                .unwrap();
            d.turn().unwrap();
            drop(f);
            std::io::Write::write_all(&mut &w, b"once").unwrap();
            for _ in 0..20 {
                d.turn().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(w);
            let mut got = Vec::new();
            loop {
                let (n, buf) = d.block_on(d.read(r.as_raw_fd(), vec![0u8; 16]));
                let n = n.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(
                String::from_utf8_lossy(&got),
                "once",
                "{b:?}: kept {} bytes",
                d.kept_bytes(r.as_raw_fd())
            );
        });
    }
}

/// A dropped stream-position read on a regular file (Op::read, not read_at): the kernel moves the
/// file position; the next read must still see every byte once.
#[test]
fn dropped_file_position_read_no_loss() {
    for b in BACKENDS {
        guard("file_pos", 30, move || {
            let d = driver_on(b);
            let p = tmpfile("/tmp", "pos");
            std::fs::write(&p, b"0123456789").unwrap();
            let f = std::fs::File::open(&p).unwrap();
            let fut = d.read(f.as_raw_fd(), vec![0u8; 4]);
            drop(fut);
            for _ in 0..20 {
                d.turn().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            let mut got = Vec::new();
            loop {
                let (n, buf) = d.block_on(d.read(f.as_raw_fd(), vec![0u8; 3]));
                let n = n.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            std::fs::remove_file(&p).unwrap();
            assert_eq!(String::from_utf8_lossy(&got), "0123456789", "{b:?}");
        });
    }
}

/// Explicit API: an exact read that times out part-way hands back the bytes it got.
#[test]
fn exact_read_deadline_keeps_partial() {
    for b in BACKENDS {
        guard("exact_deadline", 30, move || {
            let mut ring = ring(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let id = ring
                .submit(
                    quell::Op::read(r.as_raw_fd(), vec![0u8; 10])
                        .exact()
                        .deadline(std::time::Instant::now() + Duration::from_millis(200)),
                )
                .unwrap();
            std::io::Write::write_all(&mut &w, b"abc").unwrap();
            ring.wait(1, Some(Duration::from_millis(20))).unwrap();
            std::io::Write::write_all(&mut &w, b"de").unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(
                c.outcome,
                quell::Outcome::TimedOut { transferred: 5 },
                "{b:?}"
            );
            assert_eq!(c.data(), b"abcde");
            assert!(drain_now(r.as_raw_fd()).is_empty());
        });
    }
}

/// driver.recv dropped under timeouts: no byte lost or duplicated.
#[test]
fn recv_under_timeouts_no_loss() {
    for b in BACKENDS {
        guard("recv_timeouts", 120, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = tdriver(b);
                let (r, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let total = 100_000;
                let data = pattern(total, 77);
                let data2 = data.clone();
                let w = std::thread::spawn(move || {
                    for ch in data2.chunks(1111) {
                        std::io::Write::write_all(&mut &peer, ch).unwrap();
                        std::thread::sleep(Duration::from_micros(60));
                    }
                });
                let mut got = Vec::new();
                let mut rng = Lcg(71);
                while got.len() < total {
                    match tokio::time::timeout(
                        Duration::from_micros(rng.next() % 400),
                        d.recv(r.as_raw_fd(), vec![0u8; 1 + (rng.next() % 3000) as usize]),
                    )
                    .await
                    {
                        Ok((Ok(n), buf)) => got.extend_from_slice(&buf[..n]),
                        Ok((Err(e), _)) => panic!("{e}"),
                        Err(_) => {}
                    }
                }
                w.join().unwrap();
                assert!(got == data, "{b:?}");
            });
        });
    }
}
