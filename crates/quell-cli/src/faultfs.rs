//! `quell faultfs`: mount the fault-injection filesystem in the foreground, so programs
//! can be tested against reads that hang, are slow, or fail at chosen offsets.

use crate::CliError;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Arguments of `quell faultfs`.
#[derive(Debug, Args)]
pub struct FaultfsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FaultfsCommand,
}

/// The `faultfs` subcommands.
#[derive(Debug, Subcommand)]
pub enum FaultfsCommand {
    /// Mount at DIR and serve until Ctrl-C (or SIGTERM), then unmount cleanly.
    Mount {
        /// An existing, empty directory.
        dir: PathBuf,
        /// The TOML spec of the files and their faults (see `quell faultfs example-spec`).
        #[arg(long)]
        spec: PathBuf,
    },
    /// Print an example spec with every behaviour documented.
    ExampleSpec,
}

const EXAMPLE: &str = include_str!("../../quell-faultfs/examples/spec.toml");

/// Runs `quell faultfs`.
pub fn run(args: &FaultfsArgs) -> Result<(), CliError> {
    match &args.command {
        FaultfsCommand::ExampleSpec => {
            print!("{EXAMPLE}");
            Ok(())
        }
        FaultfsCommand::Mount { dir, spec } => {
            let spec = quell_faultfs::Spec::from_toml_file(spec)
                .map_err(|e| format!("spec {}: {e}", spec.display()))?;
            let names: Vec<String> = spec.files.iter().map(|f| f.name.clone()).collect();
            eprintln!(
                "quell faultfs: serving {} file(s) at {} ({}); Ctrl-C unmounts",
                names.len(),
                dir.display(),
                names.join(", ")
            );
            quell_faultfs::run_foreground(dir, spec)
                .map_err(|e| format!("faultfs at {}: {e}", dir.display()))?;
            eprintln!("quell faultfs: unmounted {}", dir.display());
            Ok(())
        }
    }
}
