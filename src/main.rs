use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = oz_agent_worker::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the tokio runtime");
    runtime.block_on(oz_agent_worker::cli::dispatch(cli))
}
