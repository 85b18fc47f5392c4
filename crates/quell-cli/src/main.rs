//! The `quell` command: what this machine offers for asynchronous I/O (`quell info`),
//! and benchmarks of quell against its anchors (`quell bench`): a raw `io-uring` crate
//! loop written in the same program, and `fio` with its io_uring engine; and the
//! fault-injection filesystem (`quell faultfs mount DIR --spec FILE`).
//!
//! `quell cp SRC DST` copies a file through one ring, and shows cancellation: the first
//! Ctrl-C drains, a second cancels, `--deadline` bounds it, `--resume` continues.
//!
//! Exit codes: 0 success, 2 bad usage (clap's convention), 1 a runtime error, whose
//! message goes to standard error. `quell cp` adds 3 (its `--deadline` passed),
//! 4 (interrupted by Ctrl-C, drained) and 5 (a second Ctrl-C canceled the writes in
//! flight); after 1 (once copying began), 3, 4 and 5 the destination holds exactly the
//! first N bytes of the source, N is printed, and `--resume` continues from there.
#![warn(missing_docs)]

mod bench;
mod cp;
mod faultfs;
mod info;
mod ops;
mod units;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Command-line interface of `quell`.
#[derive(Debug, Parser)]
#[command(
    name = "quell",
    version,
    about = "Async I/O on Linux with first-class cancellation: machine info and benchmarks",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the backend quell would use and why, and what the kernel supports
    /// (io_uring opcodes, userfaultfd, FUSE).
    Info(info::InfoArgs),
    /// Benchmark quell against a raw io_uring loop (and fio) in the same run.
    Bench(bench::BenchArgs),
    /// The fault-injection filesystem: files that hang, are slow, or fail at offsets.
    Faultfs(faultfs::FaultfsArgs),
    /// Copy a file through quell: parallel, Ctrl-C drains then cancels, resumable.
    Cp(cp::CpArgs),
    /// Show a ring's operations in flight: a live demo table, or the listing's cost.
    Ops(ops::OpsArgs),
}

/// The error type of the command: a message for standard error.
pub type CliError = Box<dyn std::error::Error + Send + Sync + 'static>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Faultfs(args) => faultfs::run(&args),
        Command::Cp(args) => match cp::run(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Ops(args) => ops::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quell: error: {e}");
            ExitCode::from(1)
        }
    }
}
