use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The direct runtime re-runs this binary to launch a task's programs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    oz_agent_worker::runtime::direct::launcher::main_if_launcher(&args);
    let cli = oz_agent_worker::cli::Cli::parse();
    // Before any thread: the key leaves the environment and the process
    // becomes unreadable to its tasks.
    oz_agent_worker::hardening::harden();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the tokio runtime");
    runtime.block_on(oz_agent_worker::cli::dispatch(cli))
}
