//! Hidden commands for `cargo xtask codegen`: the JSON schemas are derived
//! from this crate's own types, so only this binary can write them.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct InternalArgs {
    #[command(subcommand)]
    pub command: InternalCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum InternalCommand {
    /// Write (or with --check, verify) every generated schema under DIR.
    WriteSchemas {
        dir: PathBuf,
        #[arg(long)]
        check: bool,
    },
}

pub fn run(args: InternalArgs) -> ExitCode {
    match args.command {
        InternalCommand::WriteSchemas { dir, check } => {
            match crate::schemas::write_all(&dir, check) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
