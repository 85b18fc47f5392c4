//! Odds and ends a real user hits: rings moved across threads, pipes as streams, tokio misuse.
use crate::common::*;
use quell::future::Stream;
use quell::Op;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ring is Send: created and submitted on one thread, waited on another.
#[test]
fn ring_moved_between_threads() {
    for b in BACKENDS {
        guard("ring_send", 30, move || {
            let mut ring = ring(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 4])).unwrap();
            ring.poll().unwrap();
            let t = std::thread::spawn(move || {
                std::io::Write::write_all(&mut &w, b"moved").unwrap();
                let c = ring.wait_for(id).unwrap();
                let id2 = ring.submit(Op::timeout(Duration::from_millis(5))).unwrap();
                let c2 = ring.wait_for(id2).unwrap();
                (c.outcome, c2.outcome, ring)
            });
            let (o1, o2, mut ring) = t.join().unwrap();
            assert_eq!(o1, quell::Outcome::Done(4), "{b:?}");
            assert!(o2.is_done());
            // and back again
            let id3 = ring.submit(Op::nop()).unwrap();
            assert!(ring.wait_for(id3).unwrap().outcome.is_done());
            drop(r);
        });
    }
}

/// quell::tokio::driver()/attach outside a runtime: an error, not a panic.
#[test]
fn tokio_driver_outside_runtime() {
    let r = std::panic::catch_unwind(|| quell::tokio::driver().map(|_| ()));
    assert!(
        matches!(r, Ok(Err(_))),
        "driver() outside a runtime: {:?}",
        r.map(|x| x.map_err(|e| e.to_string()))
            .map_err(|_| "panicked")
    );
    let d = quell::future::Driver::new(quell::Ring::new().unwrap());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| quell::tokio::attach(&d)));
    assert!(
        matches!(r, Ok(Err(_))),
        "attach outside a runtime panicked or succeeded"
    );
}

/// A pipe's two ends as Streams: AsyncWrite + shutdown on the write end, AsyncRead to EOF on the
/// read end. ("A connected stream (TCP or Unix socket, pipe end)")
#[test]
fn pipe_ends_as_streams() {
    for b in BACKENDS {
        guard("pipe_stream", 30, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = quell::future::Driver::new(ring(b));
                quell::tokio::attach(&d).unwrap();
                let (rx, tx) = pipe();
                let mut w = Stream::new(&d, tx);
                let mut r = Stream::new(&d, rx);
                let writer = tokio::spawn(async move {
                    w.write_all(&vec![9u8; 300_000]).await.unwrap();
                    let s = w.shutdown().await;
                    drop(w); // a pipe has no half-close: EOF comes with the close (lingers until sent)
                    (s.map_err(|e| e.to_string()), ())
                });
                let mut got = Vec::new();
                let mut buf = vec![0u8; 10000];
                let mut reader_result = Ok(());
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                        Ok(Err(e)) => {
                            reader_result = Err(e.to_string());
                            break;
                        }
                        Err(_) => {
                            reader_result = Err(format!(
                                "no EOF after {} bytes (writer still open)",
                                got.len()
                            ));
                            break;
                        }
                    }
                    if got.len() == 300_000 {
                        // the writer's shutdown should produce EOF; if the writer stream is still alive
                        // and shutdown did nothing on a pipe, EOF only comes on drop
                    }
                }
                let (shut, ()) = writer.await.unwrap();
                eprintln!(
                    "{b:?}: pipe shutdown -> {shut:?}; reader -> {reader_result:?} with {} bytes",
                    got.len()
                );
                assert_eq!(got.len(), 300_000, "{b:?}");
                assert!(
                    shut.is_ok(),
                    "{b:?}: shutdown of a pipe write end failed: {shut:?}"
                );
                assert!(reader_result.is_ok(), "{b:?}: {reader_result:?}");
            });
        });
    }
}

/// Half-close over TCP: the peer sends and shuts down its write side; the server reads to EOF and
/// then replies; the peer gets the whole reply.
#[test]
fn tcp_half_close_reply_after_eof() {
    for b in BACKENDS {
        guard("half_close", 30, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = quell::future::Driver::new(ring(b));
                quell::tokio::attach(&d).unwrap();
                let l = quell::future::Listener::bind(&d, "127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = l.local_addr().unwrap();
                let client = std::thread::spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    std::io::Write::write_all(&mut c, b"request").unwrap();
                    c.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut all = Vec::new();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    std::io::Read::read_to_end(&mut c, &mut all).unwrap();
                    all
                });
                let mut s = l.accept().await.unwrap();
                let mut req = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut req))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(req, b"request");
                let reply = vec![b'r'; 1 << 20];
                s.write_all(&reply).await.unwrap();
                s.shutdown().await.unwrap();
                drop(s);
                let got = tokio::task::spawn_blocking(move || client.join().unwrap())
                    .await
                    .unwrap();
                assert_eq!(got.len(), reply.len(), "{b:?}");
            });
        });
    }
}

/// A peer that resets mid-stream: write errors surface (not a hang), and the error says how many
/// acknowledged bytes were lost.
#[test]
fn peer_reset_write_error_surfaces() {
    for b in BACKENDS {
        guard("reset", 30, move || {
            let rt = rt_current();
            rt.block_on(async move {
                let d = quell::future::Driver::new(ring(b));
                quell::tokio::attach(&d).unwrap();
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (srv, _) = l.accept().unwrap();
                let mut s = Stream::new(&d, srv);
                // reset: SO_LINGER 0 then close
                let lg = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                unsafe {
                    libc::setsockopt(
                        c.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&lg as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as u32,
                    )
                };
                drop(c);
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut err = None;
                for _ in 0..100 {
                    match tokio::time::timeout(Duration::from_secs(5), s.write(&[1u8; 65536]))
                        .await
                        .expect("write hang")
                    {
                        Ok(_) => {}
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                let err = match err {
                    Some(e) => e,
                    None => tokio::time::timeout(Duration::from_secs(5), s.flush())
                        .await
                        .expect("flush hang")
                        .unwrap_err(),
                };
                eprintln!("{b:?}: write to a reset peer -> {err}");
                let mut buf = [0u8; 4];
                let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .expect("read after reset hang");
                eprintln!("{b:?}: read after reset -> {r:?}");
            });
        });
    }
}
