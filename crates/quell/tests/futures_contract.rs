//! The futures layer's contract at its edges (DESIGN §2: I11, I12, I13), on both
//! backends: what a later call sees after a write or read was given up on, that an
//! exact read is short only at end of file, that a partial cancel's count survives the
//! conversion to `io::Result`, and that kept bytes and connections never reach a file
//! that reused the descriptor's number.

mod common;

use common::*;
use quell::future::{Driver, Stream};
use quell::{BackendChoice, Op, Outcome};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn driver(b: BackendChoice) -> Driver {
    Driver::new(ring(b, 256))
}

struct Noop;
impl Wake for Noop {
    fn wake(self: std::sync::Arc<Self>) {}
}

fn noop_waker() -> Waker {
    Waker::from(std::sync::Arc::new(Noop))
}

/// Polls `f` once with a waker that does nothing (the test turns the ring itself).
fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    f(&mut cx)
}

/// Turns the ring until what it has is routed (ops ready in the kernel complete).
fn settle_routed(d: &Driver) {
    for _ in 0..20 {
        d.turn().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs the ring until every op the driver started has completed.
fn settle(d: &Driver, secs: u64) {
    let start = Instant::now();
    while d.outstanding() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} ops still running after {secs}s: {:?}",
            d.outstanding(),
            d.with_ring(|r| r.ops().into_iter().take(5).collect::<Vec<_>>())
        );
        d.turn().expect("turn");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A read with a deadline, so a lost byte fails the test instead of hanging it.
fn read_within(d: &Driver, fd: RawFd, len: usize) -> Vec<u8> {
    let op = Op::read(fd, vec![0u8; len]).deadline(Instant::now() + Duration::from_secs(10));
    let c = d.block_on(d.submit(op).expect("submit"));
    assert!(c.outcome.is_done(), "read ended {:?}", c.outcome);
    c.data().to_vec()
}

/// A Unix socket pair with small buffers, so a few writes fill it.
fn small_pair() -> (
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    for s in [&a, &b] {
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt on our own socket with a valid int.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }
    (a, b)
}

/// Reads everything until end of stream on a thread of its own.
fn drain_thread(peer: std::os::unix::net::UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut &peer, &mut all).unwrap();
        all
    })
}

/// Puts `fd` under the number `num` (closing what had that number), so a test can
/// make "the number was reused by another file" happen for certain.
fn reuse_number(fd: OwnedFd, num: RawFd) -> OwnedFd {
    if fd.as_raw_fd() == num {
        return fd; // the system reused the number by itself
    }
    // SAFETY: dup2 onto a number this test owns (it just closed or still holds it).
    let rc = unsafe { libc::dup2(fd.as_raw_fd(), num) };
    assert_eq!(rc, num, "dup2: {}", std::io::Error::last_os_error());
    // SAFETY: dup2 made `num` a fresh descriptor that nobody else owns.
    unsafe { OwnedFd::from_raw_fd(num) }
}

both_backends! {
    /// I13 for `Stream::poll_write`: a write given up on after `Pending` (a timeout, a
    /// `select!`) never lets a later write be answered with its result; the peer gets
    /// exactly the acknowledged bytes, in order.
    fn poll_write_given_up_never_answers_a_later_write(b: BackendChoice) {
        let d = driver(b);
        let (ours, peer) = small_pair();
        let mut s = Stream::new(&d, ours);
        // Fill the stream until a write is refused (Pending), counting what it accepted.
        let mut acked = 0usize;
        let chunk = vec![b'f'; 1024];
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(10), "the socket never filled");
            match poll_once(|cx| s.poll_write(cx, &chunk)) {
                Poll::Ready(Ok(n)) => acked += n,
                Poll::Ready(Err(e)) => panic!("write failed: {e}"),
                Poll::Pending => {
                    // Let the ring run: still Pending after that means full.
                    settle_routed(&d);
                    match poll_once(|cx| s.poll_write(cx, &chunk)) {
                        Poll::Ready(Ok(n)) => acked += n,
                        Poll::Ready(Err(e)) => panic!("write failed: {e}"),
                        Poll::Pending => break,
                    }
                }
            }
        }
        // A write of other bytes, given up on after Pending.
        assert!(poll_once(|cx| s.poll_write(cx, b"OLD!")).is_pending(), "a full stream took more");
        // The reader empties the socket; the next write must carry its own bytes.
        let reader = drain_thread(peer);
        let mut rest: &[u8] = b"NEW!";
        while !rest.is_empty() {
            let n = d
                .block_on(std::future::poll_fn(|cx| s.poll_write(cx, rest)))
                .expect("write");
            assert!(n > 0 && n <= rest.len());
            rest = &rest[n..];
        }
        d.block_on(std::future::poll_fn(|cx| s.poll_shutdown(cx))).expect("shutdown");
        let got = reader.join().unwrap();
        let mut want = vec![b'f'; acked];
        want.extend_from_slice(b"NEW!");
        assert_eq!(got.len(), want.len(), "the peer got {} bytes, {} were acknowledged", got.len(), want.len());
        assert!(got == want, "the peer got other bytes than the acknowledged ones (tail {:?})",
            String::from_utf8_lossy(&got[got.len().saturating_sub(8)..]));
        drop(s);
        settle(&d, 10);
    }

    /// A write acknowledged by `poll_write` reaches the peer even if the stream is
    /// dropped right after (no byte acknowledged as written is missing).
    fn acknowledged_writes_reach_the_peer_after_the_stream_is_dropped(b: BackendChoice) {
        let d = driver(b);
        let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut s = Stream::new(&d, ours);
        let reader = drain_thread(peer);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut off = 0;
        while off < data.len() {
            off += d
                .block_on(std::future::poll_fn(|cx| s.poll_write(cx, &data[off..])))
                .expect("write");
        }
        drop(s);
        // The driver finishes the acknowledged writes, then closes the descriptor.
        let start = Instant::now();
        while !reader.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(10), "the peer never saw end of stream");
            d.turn().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(reader.join().unwrap() == data, "acknowledged bytes went missing");
        settle(&d, 10);
    }

    /// I13 for `Stream::poll_read`: `Pending` leaves the read running for the next
    /// call, whatever buffer that call brings; nothing is lost or reordered.
    fn poll_read_given_up_serves_its_bytes_to_the_next_call(b: BackendChoice) {
        let d = driver(b);
        let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut s = Stream::new(&d, ours);
        let mut small = [0u8; 3];
        for _ in 0..5 {
            assert!(poll_once(|cx| s.poll_read(cx, &mut small)).is_pending());
            d.turn().unwrap();
        }
        std::io::Write::write_all(&mut &peer, b"abcdefgh").unwrap();
        settle_routed(&d);
        let mut got = Vec::new();
        while got.len() < 8 {
            let mut big = [0u8; 5];
            let n = d.block_on(std::future::poll_fn(|cx| s.poll_read(cx, &mut big))).unwrap();
            got.extend_from_slice(&big[..n]);
        }
        assert_eq!(got, b"abcdefgh");
    }

    /// Break 7: an exact read served from kept bytes is short only at end of file.
    fn exact_read_served_from_kept_bytes_waits_for_the_rest(b: BackendChoice) {
        let d = driver(b);
        let (r, w) = pipe();
        write_all(w.as_raw_fd(), b"abc");
        let f = d.read(r.as_raw_fd(), vec![0u8; 64]);
        settle_routed(&d);
        drop(f);
        assert_eq!(d.kept_bytes(r.as_raw_fd()), 3);
        let op = Op::read(r.as_raw_fd(), vec![0u8; 6])
            .exact()
            .deadline(Instant::now() + Duration::from_secs(10));
        let exact = d.submit(op).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            write_all(w.as_raw_fd(), b"def");
            w
        });
        let c = d.block_on(exact);
        assert_eq!(c.outcome, Outcome::Done(6), "an exact read came back short without end of file");
        assert_eq!(c.data(), b"abcdef");
        // At end of file it is short, with what there was.
        let w = writer.join().unwrap();
        write_all(w.as_raw_fd(), b"gh");
        let f = d.read(r.as_raw_fd(), vec![0u8; 64]);
        settle_routed(&d);
        drop(f);
        drop(w);
        let c = d.block_on(d.submit(Op::read(r.as_raw_fd(), vec![0u8; 6]).exact()).unwrap());
        assert_eq!(c.outcome, Outcome::Done(2));
        assert_eq!(c.data(), b"gh");
        settle(&d, 10);
    }

    /// Break 8: a partial cancel's count survives `BufFuture`'s `io::Result`: the
    /// usual `let n = res?` caller gets the bytes the buffer holds.
    fn buf_future_keeps_the_count_of_a_partial_cancel(b: BackendChoice) {
        let d = driver(b);
        let (r, w) = pipe();
        let mut f = d.submit(Op::read(r.as_raw_fd(), vec![0u8; 6]).exact()).unwrap().buf();
        d.turn().unwrap();
        write_all(w.as_raw_fd(), b"xyz");
        settle_routed(&d);
        f.op_mut().unwrap().cancel();
        let (res, buf) = d.block_on(f);
        let n = res.expect("3 bytes were read before the cancel: the count must survive");
        assert_eq!(n, 3);
        assert_eq!(&buf[..n], b"xyz");
        // A cancel that moved nothing is still an error.
        let mut f = d.read(r.as_raw_fd(), vec![0u8; 6]);
        d.turn().unwrap();
        f.op_mut().unwrap().cancel();
        let (res, _) = d.block_on(f);
        assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        // The same through a deadline: a timed-out partial read keeps its count too.
        let op = Op::read(r.as_raw_fd(), vec![0u8; 6]).exact().deadline(Instant::now() + Duration::from_millis(200));
        let f = d.submit(op).unwrap().buf();
        write_all(w.as_raw_fd(), b"12");
        let (res, buf) = d.block_on(f);
        let n = res.expect("a timed-out partial read keeps its count");
        assert_eq!(&buf[..n], b"12");
        settle(&d, 10);
    }

    /// A stream read the driver canceled to serve kept bytes first (a rescue), whose
    /// kept bytes went to another read meanwhile, is not reported canceled: the user
    /// never canceled it. It goes on, and no byte is lost.
    fn rescued_read_whose_kept_bytes_went_elsewhere_is_not_canceled(b: BackendChoice) {
        // Which of two reads waiting on a pipe gets the next bytes is the kernel's
        // choice (and the backends differ): try both orders of arming, and require the
        // scenario (the exact read holds part of its bytes, the other read got the
        // next write and was dropped) to come up in at least one.
        let mut hit = false;
        for variant in 0..2 {
            let d = driver(b);
            let (r, w) = pipe();
            let fd = r.as_raw_fd();
            let exact = d.submit(Op::read(fd, vec![0u8; 6]).exact()).unwrap().buf();
            d.turn().unwrap();
            let mut other = None;
            if variant == 0 {
                other = Some(d.read(fd, vec![0u8; 4]));
                d.turn().unwrap();
            }
            write_all(w.as_raw_fd(), b"xy");
            settle_routed(&d);
            if variant == 1 {
                other = Some(d.read(fd, vec![0u8; 4]));
                d.turn().unwrap();
            }
            write_all(w.as_raw_fd(), b"abcd");
            settle_routed(&d);
            assert_eq!(d.kept_bytes(fd), 0);
            // If the other read got "abcd", its bytes are kept and the exact read (which
            // holds "xy") is canceled by the driver to be served them first.
            drop(other);
            if d.kept_bytes(fd) != 4 {
                drop(exact);
                continue;
            }
            hit = true;
            // A new read takes the kept bytes before the rescued read comes back.
            let (n, buf) = d.block_on(d.read(fd, vec![0u8; 8]));
            assert_eq!(&buf[..n.unwrap()], b"abcd");
            write_all(w.as_raw_fd(), b"efgh");
            let (n, buf) = d.block_on(exact);
            let n = n.expect("the rescued read was reported canceled though nobody canceled it");
            assert_eq!(&buf[..n], b"xyefgh");
            drop(w);
            assert!(read_within(&d, fd, 8).is_empty());
            settle(&d, 10);
        }
        assert!(hit, "the scenario never came up: the test tested nothing");
    }

    /// A read routed to its future before a dropped read's bytes arrive is not served
    /// those (later) bytes ahead of its own.
    fn kept_bytes_that_arrive_later_never_go_ahead_of_a_routed_read(b: BackendChoice) {
        let d = driver(b);
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        let dropped = d.submit(Op::read(fd, vec![0u8; 2]).exact()).unwrap();
        d.turn().unwrap();
        let waiting = d.read(fd, vec![0u8; 8]);
        d.turn().unwrap();
        write_all(w.as_raw_fd(), b"p"); // the exact read's first part; its retry queues behind
        settle_routed(&d);
        write_all(w.as_raw_fd(), b"y"); // the waiting read
        settle_routed(&d);
        write_all(w.as_raw_fd(), b"x"); // the exact read's second part
        settle_routed(&d);
        drop(dropped);
        let (n, buf) = d.block_on(waiting);
        let first = buf[..n.unwrap()].to_vec();
        let mut all = first.clone();
        while all.len() < 3 {
            all.extend(read_within(&d, fd, 8));
        }
        let pos = |c: u8| all.iter().position(|&b| b == c).unwrap();
        assert!(pos(b'y') < pos(b'x'), "bytes reordered: {:?} (first read {:?})",
            String::from_utf8_lossy(&all), String::from_utf8_lossy(&first));
        settle(&d, 10);
    }

    /// I12: bytes kept for a raw descriptor never reach another file that reused its
    /// number after an ordinary close outside quell.
    fn kept_bytes_never_reach_a_file_that_reused_the_number(b: BackendChoice) {
        let d = driver(b);
        let (r, w) = pipe();
        let num = r.as_raw_fd();
        write_all(w.as_raw_fd(), b"stale");
        let f = d.read(num, vec![0u8; 64]);
        settle_routed(&d);
        drop(f);
        assert_eq!(d.kept_bytes(num), 5);
        // An ordinary close, then another pipe under the same number.
        drop(r);
        drop(w);
        let (r2, w2) = pipe();
        let r2 = reuse_number(r2, num);
        write_all(w2.as_raw_fd(), b"fresh");
        assert_eq!(read_within(&d, r2.as_raw_fd(), 64), b"fresh", "another file's kept bytes were served");
        // An exact read too.
        write_all(w2.as_raw_fd(), b"123456");
        let c = d.block_on(d.submit(Op::read(num, vec![0u8; 6]).exact()).unwrap());
        assert_eq!(c.data(), b"123456");
        settle(&d, 10);
    }

    /// I12 for accepts: a connection kept for a raw listening descriptor never comes
    /// out of another listener that reused the number.
    fn kept_connections_never_reach_a_listener_that_reused_the_number(b: BackendChoice) {
        let d = driver(b);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let num = l.as_raw_fd();
        let mut accept = d.submit(Op::accept(num)).unwrap();
        assert!(poll_once(|cx| Pin::new(&mut accept).poll(cx)).is_pending());
        let _old_client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        settle_routed(&d);
        drop(accept);
        assert_eq!(d.kept_connections(num), 1);
        drop(l);
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2: OwnedFd = reuse_number(l2.into(), num);
        // SAFETY: l2 is a listening TCP socket we own.
        let l2 = unsafe { std::net::TcpListener::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(l2)) };
        let new_client = std::net::TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let op = Op::accept(num).deadline(Instant::now() + Duration::from_secs(10));
        let c = d.block_on(d.submit(op).unwrap());
        let Outcome::Done(conn) = c.outcome else { panic!("accept ended {:?}", c.outcome) };
        // SAFETY: the accept handed us this descriptor.
        let conn = unsafe { std::net::TcpStream::from_raw_fd(conn as RawFd) };
        assert_eq!(conn.peer_addr().unwrap(), new_client.local_addr().unwrap(),
            "the accept returned a connection of the listener that had the number before");
        settle(&d, 10);
    }

    /// I12 for quell-owned streams: closing a `Stream` retires its kept bytes, so a
    /// `Stream` over a file that reuses the number starts clean.
    fn a_dropped_stream_retires_its_kept_bytes(b: BackendChoice) {
        let d = driver(b);
        let (x, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let num = x.as_raw_fd();
        let s = Stream::new(&d, x);
        std::io::Write::write_all(&mut &peer, b"old").unwrap();
        let f = s.read_owned(vec![0u8; 8]);
        settle_routed(&d);
        drop(f);
        assert_eq!(d.kept_bytes(num), 3);
        drop(s);
        settle(&d, 10);
        assert_eq!(d.kept_bytes(num), 0);
        let (y, peer2) = std::os::unix::net::UnixStream::pair().unwrap();
        let y = reuse_number(y.into(), num);
        let s2 = Stream::new(&d, y);
        std::io::Write::write_all(&mut &peer2, b"new").unwrap();
        let (n, buf) = d.block_on(s2.read_owned(vec![0u8; 8]));
        assert_eq!(&buf[..n.unwrap()], b"new");
        drop(peer);
    }

    /// `poll_shutdown` after the peer reset the connection: the write side is as shut
    /// as it can be, which is success (as tokio's `TcpStream` answers).
    fn shutdown_after_the_peer_reset_is_not_an_error(b: BackendChoice) {
        let d = driver(b);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let mut s = Stream::new(&d, server);
        // SO_LINGER 0: the close sends a reset.
        let lg = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on our own socket with a valid linger.
        unsafe {
            libc::setsockopt(client.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER,
                (&lg as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t);
        }
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        let r = d.block_on(std::future::poll_fn(|cx| s.poll_shutdown(cx)));
        assert!(r.is_ok(), "shutdown after a reset failed: {r:?}");
    }
}

/// The same rules through tokio's `AsyncRead`/`AsyncWrite` (feature `tokio`).
#[cfg(feature = "tokio")]
mod on_tokio {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    both_backends! {
        /// Break 2: `timeout(d, write_all(OLD))` expires on a full socket; the next
        /// `write_all(NEW)` must put NEW on the wire, never OLD.
        fn timed_out_write_all_never_answers_the_next_one(b: BackendChoice) {
            rt().block_on(async {
                let d = Driver::new(ring(b, 256));
                quell::tokio::attach(&d).unwrap();
                let (ours, peer) = small_pair();
                let mut s = Stream::new(&d, ours);
                let chunk = vec![b'f'; 1024];
                let mut acked = 0usize;
                loop {
                    match tokio::time::timeout(Duration::from_millis(50), s.write(&chunk)).await {
                        Ok(r) => acked += r.unwrap(),
                        Err(_) => break,
                    }
                    assert!(acked < 64 << 20, "the socket never filled");
                }
                let r = tokio::time::timeout(Duration::from_millis(50), s.write_all(b"OLD!")).await;
                assert!(r.is_err(), "a full socket took more bytes");
                let reader = drain_thread(peer);
                tokio::time::timeout(Duration::from_secs(10), s.write_all(b"NEW!"))
                    .await
                    .expect("write hung")
                    .unwrap();
                tokio::time::timeout(Duration::from_secs(10), s.shutdown()).await.expect("shutdown hung").unwrap();
                let got = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
                let mut want = vec![b'f'; acked];
                want.extend_from_slice(b"NEW!");
                assert_eq!(got.len(), want.len(), "the peer got {} bytes, {} were acknowledged", got.len(), want.len());
                assert!(got == want, "the peer got other bytes than the acknowledged ones (tail {:?})",
                    String::from_utf8_lossy(&got[got.len().saturating_sub(8)..]));
            });
        }

        /// `select!` between a read and a timer, many times over: each read given up
        /// on leaves its bytes to the next, in order.
        fn select_around_reads_loses_and_reorders_nothing(b: BackendChoice) {
            rt().block_on(async {
                let d = Driver::new(ring(b, 256));
                quell::tokio::attach(&d).unwrap();
                let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let mut s = Stream::new(&d, ours);
                let writer = std::thread::spawn(move || {
                    for i in 0..2000u32 {
                        std::io::Write::write_all(&mut &peer, &i.to_le_bytes()).unwrap();
                        if i % 64 == 0 {
                            std::thread::sleep(Duration::from_micros(300));
                        }
                    }
                    peer
                });
                let mut got = Vec::new();
                let mut gave_up = 0;
                let start = Instant::now();
                while got.len() < 8000 {
                    assert!(start.elapsed() < Duration::from_secs(30), "reads hung");
                    let mut buf = [0u8; 7];
                    tokio::select! {
                        r = s.read(&mut buf) => got.extend_from_slice(&buf[..r.unwrap()]),
                        _ = tokio::time::sleep(Duration::from_micros(100)) => gave_up += 1,
                    }
                }
                for (i, c) in got.chunks(4).enumerate() {
                    assert_eq!(u32::from_le_bytes(c.try_into().unwrap()), i as u32);
                }
                assert!(gave_up > 0, "no read was given up on: the test tested nothing");
                drop(writer.join().unwrap());
            });
        }
    }
}
