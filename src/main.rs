//! oz-agent-worker: a self-hosted worker for Oz cloud coding agents. The
//! binary holds the command line (flags, the config file, subcommands),
//! signals and exit codes, and the JSON schemas; everything else lives in
//! the workspace's crates (see ARCHITECTURE.md for the map).

mod cli;
mod hardening;
mod schemas;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // As PID 1 (a container without --init), become an init that reaps
    // orphans and run the worker as its child.
    cli::init::reap_orphans_if_pid1();
    // The direct runtime re-runs this binary to launch a task's programs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    oz_runtime_direct::launcher::main_if_launcher(&args);
    let cli = cli::Cli::parse();
    // Before any thread: the key leaves the environment and the process
    // becomes unreadable to its tasks.
    hardening::harden();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the tokio runtime");
    runtime.block_on(cli::dispatch(cli))
}
