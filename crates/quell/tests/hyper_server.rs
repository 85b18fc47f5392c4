//! A real server, real clients: an HTTP/1 server on hyper 1.x over quell streams
//! (`quell::future::Stream` through tokio's `AsyncRead`/`AsyncWrite`), hit by curl
//! (sequential requests on fresh connections, many on one kept-alive connection,
//! parallel requests, several curl processes at once) and by a client that half-closes
//! after its request (as `nc -N` does). The same server over tokio's `TcpStream` runs
//! the same clients in the same test; the quell server must answer every request
//! correctly and log no connection error the tokio one does not, on both backends.
#![cfg(feature = "tokio")]

mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use quell::BackendChoice;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which stream the server runs on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Quell(BackendChoice),
    Tokio,
}

/// What a server saw: hyper's connection errors, connections accepted, connections
/// still being served.
#[derive(Default)]
struct Seen {
    errors: Mutex<Vec<String>>,
    accepted: AtomicUsize,
    active: AtomicUsize,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // The body says which request it answers, so a reply to the wrong request (or a
    // stale one) shows.
    let body = format!("hello {}\n", req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Serves one connection, recording hyper's error if it ends with one.
async fn serve<S>(io: S, seen: Arc<Seen>, half_close: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let r = http1::Builder::new()
        .half_close(half_close)
        .serve_connection(TokioIo::new(io), service_fn(hello))
        .await;
    if let Err(e) = r {
        seen.errors.lock().unwrap().push(format!("{e}"));
    }
    seen.active.fetch_sub(1, Ordering::AcqRel);
}

impl Server {
    /// A server of `kind`; `half_close` is hyper's option of that name.
    fn start(kind: Kind, half_close: bool) -> Server {
        let seen = Arc::new(Seen::default());
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match kind {
                    Kind::Quell(b) => {
                        let ring = quell::Ring::builder()
                            .backend(b)
                            .capacity(4096)
                            .build()
                            .unwrap();
                        let d = quell::future::Driver::new(ring);
                        quell::tokio::attach(&d).unwrap();
                        let l = quell::future::Listener::bind(&d, "127.0.0.1:0".parse().unwrap())
                            .unwrap();
                        addr_tx.send(l.local_addr().unwrap()).unwrap();
                        loop {
                            tokio::select! {
                                s = l.accept() => {
                                    let s = s.expect("accept");
                                    seen2.accepted.fetch_add(1, Ordering::AcqRel);
                                    seen2.active.fetch_add(1, Ordering::AcqRel);
                                    tokio::spawn(serve(s, seen2.clone(), half_close));
                                }
                                _ = &mut stop_rx => break,
                            }
                        }
                    }
                    Kind::Tokio => {
                        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                        addr_tx.send(l.local_addr().unwrap()).unwrap();
                        loop {
                            tokio::select! {
                                s = l.accept() => {
                                    let (s, _) = s.expect("accept");
                                    seen2.accepted.fetch_add(1, Ordering::AcqRel);
                                    seen2.active.fetch_add(1, Ordering::AcqRel);
                                    tokio::spawn(serve(s, seen2.clone(), half_close));
                                }
                                _ = &mut stop_rx => break,
                            }
                        }
                    }
                }
                // Let the connections the clients left finish (hyper sees their ends).
                let start = Instant::now();
                while seen2.active.load(Ordering::Acquire) > 0
                    && start.elapsed() < Duration::from_secs(10)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server start");
        Server {
            addr,
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops accepting, waits for the connections to end; returns hyper's errors and
    /// the connections accepted.
    fn finish(mut self) -> (Vec<String>, usize) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
        assert_eq!(
            self.seen.active.load(Ordering::Acquire),
            0,
            "connections never ended"
        );
        let errors = self.seen.errors.lock().unwrap().clone();
        (errors, self.seen.accepted.load(Ordering::Acquire))
    }
}

fn curl(args: &[String]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is needed for this test (Debian package `curl`, installed by .ci/run)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn urls(addr: SocketAddr, tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("http://{addr}/{tag}/{i}")).collect()
}

fn expected(tag: &str, n: usize) -> String {
    (0..n).map(|i| format!("hello /{tag}/{i}\n")).collect()
}

/// Sends a request, half-closes (`shutdown(SHUT_WR)`, as `nc -N`), reads the reply.
fn half_closing_client(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Runs curl against a server of `kind` (hyper's default configuration); returns
/// hyper's errors.
fn curl_clients(kind: Kind) -> Vec<String> {
    let server = Server::start(kind, false);
    let addr = server.addr;
    // Sequential requests, each on a connection of its own: the client reads the
    // reply and closes at once (over quell's stream this once made hyper see the end
    // before its flush, "connection closed before message completed").
    for i in 0..40 {
        let u = format!("http://{addr}/seq/{i}");
        assert_eq!(curl(&[u]), format!("hello /seq/{i}\n"), "{kind:?}");
    }
    // Keep-alive: many requests on one connection.
    let before = server.seen.accepted.load(Ordering::Acquire);
    assert_eq!(
        curl(&urls(addr, "keep", 50)),
        expected("keep", 50),
        "{kind:?}"
    );
    let used = server.seen.accepted.load(Ordering::Acquire) - before;
    assert_eq!(
        used, 1,
        "{kind:?}: 50 requests kept alive on one connection took {used}"
    );
    // Parallel requests from one curl.
    let mut args = vec![
        "--parallel".to_string(),
        "--parallel-max".into(),
        "16".into(),
    ];
    args.extend(urls(addr, "par", 64));
    let got = curl(&args);
    let mut lines: Vec<&str> = got.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = (0..64).map(|i| format!("hello /par/{i}")).collect();
    want.sort_unstable();
    assert_eq!(lines, want, "{kind:?}");
    // Several curl processes at once.
    let procs: Vec<_> = (0..4)
        .map(|p| {
            let us = urls(addr, &format!("proc{p}"), 20);
            std::thread::spawn(move || curl(&us))
        })
        .collect();
    for (p, t) in procs.into_iter().enumerate() {
        assert_eq!(
            t.join().unwrap(),
            expected(&format!("proc{p}"), 20),
            "{kind:?}"
        );
    }
    // Clients that read their reply, then reset the connection (SO_LINGER 0, as wrk
    // does at the end of a run): hyper's shutdown must not fail where tokio's passes.
    for i in 0..20 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /reset/{i} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let want = format!("hello /reset/{i}\n");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(want.as_bytes()) {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "{kind:?}: the reply ended early: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        reset(&s);
    }
    server.finish().0
}

/// Closes `s` with a reset (SO_LINGER 0) when it is dropped.
fn reset(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid linger.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// Half-closing clients against a server of `kind` with hyper's `half_close(true)`:
/// every one is answered. (With hyper's default, a server drops such a connection
/// whenever it reads the end before it wrote the reply, over tokio's stream as over
/// quell's: a race either may lose, so the decision is the server's configuration,
/// not the stream's.) Returns hyper's errors.
fn half_closing_clients(kind: Kind) -> Vec<String> {
    let server = Server::start(kind, true);
    for i in 0..20 {
        let reply = half_closing_client(server.addr, &format!("/half/{i}"));
        assert!(
            reply.starts_with("HTTP/1.1 200 OK"),
            "{kind:?}: a half-closing client got {reply:?}"
        );
        assert!(
            reply.ends_with(&format!("hello /half/{i}\n")),
            "{kind:?}: {reply:?}"
        );
    }
    server.finish().0
}

/// Fails if the quell server logged an error the tokio one did not.
fn no_extra_errors(what: &str, quell: &[String], tokio: &[String]) {
    let extra: Vec<&String> = quell.iter().filter(|e| !tokio.contains(e)).collect();
    assert!(
        extra.is_empty(),
        "{what}: the quell server logged errors the tokio one did not: {extra:?} (tokio: {tokio:?})"
    );
}

fn compare_with_tokio(b: BackendChoice) {
    let tokio = curl_clients(Kind::Tokio);
    let quell = curl_clients(Kind::Quell(b));
    no_extra_errors("curl", &quell, &tokio);
    let tokio = half_closing_clients(Kind::Tokio);
    let quell = half_closing_clients(Kind::Quell(b));
    no_extra_errors("half-closing clients", &quell, &tokio);
}

both_backends! {
    fn hyper_over_quell_serves_curl_like_hyper_over_tokio(b: BackendChoice) {
        compare_with_tokio(b);
    }
}
