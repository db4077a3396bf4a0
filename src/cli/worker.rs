//! The worker's own flags (no subcommand), as the reference worker has them.

use std::process::ExitCode;

#[derive(Debug, Default, clap::Args)]
pub struct WorkerArgs {
    /// Worker id that tasks are routed to (ids starting with `warp` are reserved).
    #[arg(long)]
    pub worker_id: Option<String>,
}

pub async fn run(_args: WorkerArgs) -> ExitCode {
    eprintln!("worker: not implemented yet");
    ExitCode::from(2)
}
