//! Cancels a read that hangs forever, against quell-faultfs (a FUSE filesystem whose
//! file never answers reads). Needs root (or `/dev/fuse` and fusermount).
//!
//! Three ways, on the default backend:
//! 1. `OpFuture::cancel` from a timer: the honest outcome (`Canceled`) and the buffer
//!    come back;
//! 2. `tokio::time::timeout` around the read: the future is dropped, the op canceled,
//!    the buffer kept by the ring until the kernel lets go of it;
//! 3. nothing is left running afterwards (`driver.outstanding() == 0`).
//!
//! ```text
//! cargo run -p quell --features tokio --example cancel_hung_read
//! ```

use quell::Op;
use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fs = FaultFs::mount_temp(Spec::new().file(
        FileSpec::pattern("hung.bin", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang)),
    ))?;
    let file = std::fs::File::open(fs.path("hung.bin"))?;
    let fd = file.as_raw_fd();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let driver = quell::tokio::driver()?;
        println!("backend: {}", driver.with_ring(|r| r.backend()));

        // 1. An explicit cancel, racing the read.
        let read = driver.submit(Op::read_at(fd, 0, vec![0u8; 4096]))?;
        let canceller = read.canceller().expect("the read is running");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            canceller.cancel();
        });
        let t = Instant::now();
        let c = read.await;
        println!(
            "explicit cancel: outcome {} after {:?}, buffer of {} bytes back",
            c.outcome,
            t.elapsed(),
            c.buf().map_or(0, |b| b.len())
        );
        if !c.outcome.is_canceled() {
            return Err(format!("expected a canceled read, got {}", c.outcome).into());
        }

        // 2. A timeout drops the read's future: cancel requested, buffer kept safe.
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            driver.read_at(fd, 0, vec![0u8; 4096]),
        )
        .await;
        println!(
            "timeout: {} after {:?}",
            if r.is_err() {
                "timed out, read canceled"
            } else {
                "finished?"
            },
            t.elapsed()
        );
        if r.is_ok() {
            return Err("the hung read finished".into());
        }

        // 3. The dropped read's cancel lands: nothing is left running.
        let t = Instant::now();
        while driver.outstanding() > 0 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("{} ops still running", driver.outstanding()).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "no op left running after {:?}; the daemon saw {} interrupts",
            t.elapsed(),
            fs.stats().interrupts
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    fs.release_all();
    result
}
