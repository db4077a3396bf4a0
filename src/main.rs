use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // As PID 1 (a container without --init), become an init that reaps
    // orphans and run the worker as its child.
    oz_agent_worker::cli::init::reap_orphans_if_pid1();
    let cli = oz_agent_worker::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the tokio runtime");
    runtime.block_on(oz_agent_worker::cli::dispatch(cli))
}
