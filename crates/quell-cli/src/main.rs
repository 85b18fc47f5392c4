//! The `quell` command: what this machine offers for asynchronous I/O (`quell info`),
//! and benchmarks of quell against its anchors (`quell bench`): a raw `io-uring` crate
//! loop written in the same program, and `fio` with its io_uring engine; and the
//! fault-injection filesystem (`quell faultfs mount DIR --spec FILE`).
//!
//! Exit codes: 0 success, 2 bad usage (clap's convention), 1 a runtime error, whose
//! message goes to standard error.
#![warn(missing_docs)]

mod bench;
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
