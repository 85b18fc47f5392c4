//! Copies a file through quell futures on tokio, with a deadline on the whole copy.
//!
//! Every read and write carries the copy's absolute deadline (`Op::deadline`): when it
//! passes, a read waiting on a pipe or a hung FUSE file is canceled and reports
//! `TimedOut { transferred }`; device I/O that cannot be stopped reports `Detached`
//! (released now, the buffer kept by the ring until the kernel is done). The honest
//! outcome says how far the copy got.
//!
//! ```text
//! cargo run -p quell --features tokio --example copy_deadline -- SRC DST --deadline-ms 2000
//! ```
//!
//! Exit status: 0 copied, 2 deadline passed, 1 error.

use quell::{Op, Outcome};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const CHUNK: usize = 256 * 1024;

fn main() {
    std::process::exit(match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("copy_deadline: {e}");
            1
        }
    })
}

fn run() -> Result<i32, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (src, dst) = match (args.next(), args.next()) {
        (Some(s), Some(d)) => (s, d),
        _ => return Err("usage: copy_deadline SRC DST [--deadline-ms N]".into()),
    };
    let mut limit = Duration::from_secs(10);
    if let Some(flag) = args.next() {
        if flag != "--deadline-ms" {
            return Err(format!("unknown argument {flag}").into());
        }
        limit = Duration::from_millis(args.next().ok_or("--deadline-ms needs a value")?.parse()?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let driver = quell::tokio::driver()?;
        let input = std::fs::File::open(&src)?;
        let output = std::fs::File::create(&dst)?;
        let (ifd, ofd) = (input.as_raw_fd(), output.as_raw_fd());
        // A regular file reads at offsets; a pipe or socket at its position.
        let seekable = input.metadata()?.is_file();
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; CHUNK];
        let mut copied = 0u64;
        loop {
            let read = if seekable {
                Op::read_at(ifd, copied, buf)
            } else {
                Op::read(ifd, buf)
            };
            let c = driver.submit(read.deadline(deadline))?.await;
            let outcome = c.outcome;
            buf = c.into_buf().unwrap_or_default();
            let n = match outcome {
                Outcome::Done(0) => break,
                Outcome::Done(n) => n,
                Outcome::TimedOut { transferred } | Outcome::Canceled { transferred } => {
                    println!(
                        "deadline of {limit:?} passed: copied {copied} bytes; the pending read was stopped ({outcome}) with {transferred} more bytes in hand"
                    );
                    return Ok(2);
                }
                Outcome::Detached => {
                    println!("deadline of {limit:?} passed: copied {copied} bytes; a read the device could not stop was detached");
                    return Ok(2);
                }
                Outcome::Failed(e) => return Err(format!("read at {copied}: {e}").into()),
            };
            let mut w = std::mem::take(&mut buf);
            w.truncate(n);
            let c = driver.submit(Op::write_at(ofd, copied, w).exact().deadline(deadline))?.await;
            let outcome = c.outcome;
            buf = c.into_buf().unwrap_or_default();
            buf.resize(CHUNK, 0);
            match outcome {
                Outcome::Done(m) if m == n => copied += n as u64,
                Outcome::Failed(e) => return Err(format!("write at {copied}: {e}").into()),
                o => {
                    println!("deadline of {limit:?} passed while writing at {copied}: {o}");
                    return Ok(2);
                }
            }
        }
        println!("copied {copied} bytes in {:?}", limit.saturating_sub(deadline.saturating_duration_since(Instant::now())));
        Ok(0)
    })
}
