//! oz-agent-worker: a self-hosted worker for Oz cloud coding agents. The
//! binary holds the command line (flags, the config file, subcommands),
//! signals and exit codes, and the JSON schemas; everything else lives in
//! the workspace's crates (see ARCHITECTURE.md for the map).

mod cli;
mod schemas;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the tokio runtime");
    runtime.block_on(cli::dispatch(cli))
}
