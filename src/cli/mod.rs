//! Command-line surface. Each subcommand's arguments and entry point live in
//! the module of the layer it drives; this file only wires them together.

pub mod api_key;
pub mod check;
pub mod cleanup;
pub mod codegen;
pub mod config_file;
pub mod control_plane;
pub mod init;
pub mod logging;
pub mod probe;
pub mod signals;
pub mod worker;
pub mod workers;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "oz-agent-worker",
    // `--version` prints the bare version, the string every dial sends in
    // `X-Warp-Worker-Version` (as the Go worker's `--version` does).
    disable_version_flag = true,
    about = "Self-hosted worker for Oz cloud agents: runs tasks in containers on your machines",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Print the version (what the worker sends as X-Warp-Worker-Version) and exit.
    #[arg(short = 'V', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, the worker runs.
    #[command(flatten)]
    pub worker: worker::WorkerArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve, negotiate with and ping the Docker daemon the worker would use.
    Check(check::CheckArgs),
    /// Remove containers that workers which will not start again left on the daemon.
    Cleanup(cleanup::CleanupArgs),
    /// Run the local control plane (the orchestrator side of the protocol).
    Serve(control_plane::ServeArgs),
    /// Create a run on a control plane, optionally following it to its end.
    Run(control_plane::RunArgs),
    /// List, inspect and cancel runs on a control plane, and print their output.
    Runs(control_plane::RunsArgs),
    /// Create, list, pause, resume and delete schedules (runs from a cron expression).
    Schedules(control_plane::SchedulesArgs),
    /// List a control plane's worker ids; pause or resume one.
    Workers(workers::WorkersArgs),
    /// Manage a control plane's team API keys.
    ApiKeys(control_plane::ApiKeysArgs),
    /// Project-internal commands used by `cargo xtask`.
    #[command(hide = true)]
    Internal(codegen::CodegenArgs),
    /// GET a URL; exit 0 on 2xx (the container image's HEALTHCHECK).
    #[command(hide = true)]
    Probe(probe::ProbeArgs),
}

/// Parses a flag that holds a secret (an API key) straight into [`Secret`],
/// so no argument struct ever holds it in a printable type.
pub fn secret_arg(s: &str) -> Result<oz_foundation::secret::Secret, std::convert::Infallible> {
    Ok(oz_foundation::secret::Secret::new(s))
}

pub async fn dispatch(cli: Cli) -> ExitCode {
    if cli.version {
        println!("{}", oz_protocol::WORKER_VERSION);
        return ExitCode::SUCCESS;
    }
    match cli.command {
        None => worker::run(cli.worker).await,
        Some(Command::Check(args)) => check::run(args).await,
        Some(Command::Cleanup(args)) => cleanup::run(args).await,
        Some(Command::Serve(args)) => control_plane::serve(args).await,
        Some(Command::Run(args)) => control_plane::run(args).await,
        Some(Command::Runs(args)) => control_plane::runs(args).await,
        Some(Command::Schedules(args)) => control_plane::schedules(args).await,
        Some(Command::Workers(args)) => workers::run(args).await,
        Some(Command::ApiKeys(args)) => control_plane::api_keys(args).await,
        Some(Command::Internal(args)) => codegen::run(args),
        Some(Command::Probe(args)) => probe::run(args).await,
    }
}
