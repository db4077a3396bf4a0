//! `oz-agent-worker workers list|pause|resume`: a control plane's worker
//! ids, and pausing one (no run is offered to it; what it runs goes on) or
//! resuming it (its queued runs are offered at once), through the runs API.

use crate::cli::control_plane::ServerArgs;
use oz_runs_api::client::ClientError;
use oz_runs_api::model::Worker;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    #[command(subcommand)]
    pub command: WorkersCommand,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkersCommand {
    /// List this team's worker ids: connections, paused, draining, runs.
    List,
    /// Offer no run to this worker id until resumed (what it runs goes on).
    Pause { id: String },
    /// Offer runs to this worker id again (its queued runs at once).
    Resume { id: String },
}

pub async fn run(a: WorkersArgs) -> ExitCode {
    let client = match a.server.client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let one = |r: Result<Worker, ClientError>, verb: &str| match r {
        Ok(w) if a.json => {
            print_json(&w);
            ExitCode::SUCCESS
        }
        Ok(w) => {
            println!("worker {} {verb}", w.worker_id);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    match a.command {
        WorkersCommand::Pause { id } => one(client.pause_worker(&id).await, "paused"),
        WorkersCommand::Resume { id } => one(client.resume_worker(&id).await, "resumed"),
        WorkersCommand::List => match client.list_workers().await {
            Ok(list) if a.json => {
                print_json(&list);
                ExitCode::SUCCESS
            }
            Ok(list) => {
                println!(
                    "{:<28} {:<10} {:>11} {:>6} {:>6}  LAST SEEN",
                    "WORKER ID", "STATE", "CONNECTIONS", "ACTIVE", "QUEUED"
                );
                for w in list.workers {
                    println!(
                        "{:<28} {:<10} {:>11} {:>6} {:>6}  {}",
                        w.worker_id,
                        state(&w),
                        w.connections.len(),
                        w.active_runs,
                        w.queued_runs,
                        w.last_seen_at
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

/// One word: paused (an operator's choice) before draining (the workers'),
/// then whether any connection is up.
fn state(w: &Worker) -> &'static str {
    if w.paused {
        "paused"
    } else if !w.connections.is_empty() && w.connections.iter().all(|c| c.draining) {
        "draining"
    } else if w.connections.is_empty() {
        "offline"
    } else {
        "online"
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialize")
    );
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}
