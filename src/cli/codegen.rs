//! The hidden `internal` subcommand that `cargo xtask codegen` runs: the
//! JSON schemas are derived from this crate's own types, so only this
//! binary can write them.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CodegenArgs {
    #[command(subcommand)]
    pub command: CodegenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CodegenCommand {
    /// Write (or with --check, verify) every generated schema under DIR.
    WriteSchemas {
        dir: PathBuf,
        #[arg(long)]
        check: bool,
    },
}

pub fn run(args: CodegenArgs) -> ExitCode {
    match args.command {
        CodegenCommand::WriteSchemas { dir, check } => {
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
