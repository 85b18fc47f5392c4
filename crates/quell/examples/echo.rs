//! A TCP echo server on quell's tokio integration: each connection has an idle
//! deadline (a `tokio::time::timeout` around its read: the read is canceled and its
//! buffer stays safe), and Ctrl-C (SIGINT) drains gracefully: no new connections, each
//! open one finishes the echo it is doing and closes; whatever is still open after the
//! grace period is dropped (its ops canceled).
//!
//! ```text
//! cargo run -p quell --features tokio --example echo -- 127.0.0.1:7000 --idle-ms 5000 --grace-ms 2000
//! ```
//!
//! It prints `listening on ADDR` once ready and `drained: ...` at the end (the CI test
//! `tests/examples.rs` drives it through both).

use quell::future::{Listener, Stream};
use std::io::Write;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

struct Args {
    addr: std::net::SocketAddr,
    idle: Duration,
    grace: Duration,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:7000".parse().unwrap(),
        idle: Duration::from_secs(10),
        grace: Duration::from_secs(2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut ms = |name: &str| -> Result<Duration, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .map(Duration::from_millis)
                .map_err(|e| format!("{name}: {e}"))
        };
        match x.as_str() {
            "--idle-ms" => a.idle = ms("--idle-ms")?,
            "--grace-ms" => a.grace = ms("--grace-ms")?,
            addr => a.addr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?,
        }
    }
    Ok(a)
}

/// Echoes until the peer closes, the connection idles past `idle`, or a drain begins.
async fn serve(mut s: Stream, idle: Duration, mut drain: watch::Receiver<bool>) -> &'static str {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout(idle, s.read(&mut buf)) => match r {
                Err(_) => return "idle",
                Ok(Ok(0)) => return "closed",
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return "error",
            },
            _ = drain.changed() => return "drained",
        };
        // A drain does not interrupt an echo in progress: it finishes first.
        if s.write_all(&buf[..n]).await.is_err() {
            return "error";
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let driver = quell::tokio::driver()?;
        let listener = Listener::bind(&driver, args.addr)?;
        println!(
            "listening on {} ({} backend)",
            listener.local_addr()?,
            driver.with_ring(|r| r.backend())
        );
        std::io::stdout().flush()?;
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut conns = tokio::task::JoinSet::new();
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(s) => {
                        let rx = drain_rx.clone();
                        conns.spawn(serve(s, args.idle, rx));
                    }
                    Err(e) => eprintln!("accept: {e}"),
                },
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Ok(why) = done {
                        println!("connection ended: {why}");
                    }
                }
                _ = &mut ctrl_c => break,
            }
        }
        // Drain: the accept above was dropped (canceled); stop every connection at its
        // next read, let echoes in progress finish, give them `grace`.
        println!("draining {} connection(s)", conns.len());
        let _ = drain_tx.send(true);
        let (mut finished, mut forced) = (0, 0);
        let deadline = tokio::time::Instant::now() + args.grace;
        while !conns.is_empty() {
            match tokio::time::timeout_at(deadline, conns.join_next()).await {
                Ok(Some(_)) => finished += 1,
                Ok(None) => break,
                Err(_) => {
                    forced = conns.len();
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                }
            }
        }
        drop(listener);
        println!(
            "drained: {finished} finished, {forced} forced, {} ops left",
            driver.outstanding()
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
