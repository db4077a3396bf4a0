//! `oz-agent-worker check`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(_args: CheckArgs) -> ExitCode {
    eprintln!("check: not implemented yet");
    ExitCode::from(2)
}
