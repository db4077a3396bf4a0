//! The worker's own flags (no subcommand), as the reference worker has them.
//! Every flag is an `Option` so "given on the command line" is visible even
//! when the value is 0 or empty: an explicit flag always beats the file.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Default, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Worker id that tasks are routed to (ids starting with `warp` are reserved).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// API key for the orchestrator.
    #[arg(long, env = "WARP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    pub log_level: String,
    /// text (default) or json, one object per line, for log pipelines.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: super::logging::LogFormat,
    /// Keep task containers after they exit (for debugging).
    #[arg(long)]
    pub no_cleanup: bool,
    /// Extra bind mount for every task: HOST:CONTAINER[:ro|rw]. Repeatable.
    #[arg(short = 'v', long = "volumes", value_name = "HOST:CONTAINER[:ro|rw]")]
    pub volumes: Vec<String>,
    /// Environment for every task: KEY=VALUE, or KEY to pass the worker's own value through. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Most tasks run at once; more are rejected (0 = unlimited).
    #[arg(long)]
    pub max_concurrent_tasks: Option<u32>,
    /// Keep the agent idle after it completes, for this long (e.g. 10m), unless the task sets its own.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub idle_on_complete: Option<String>,
    /// YAML configuration file (flags override it).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// When to pull task and sidecar images: always, if-not-present or never.
    #[arg(long, value_name = "POLICY")]
    pub pull_policy: Option<String>,
    /// How long a cancelled task's container gets between SIGTERM and SIGKILL (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    pub stop_grace_period: Option<String>,
    /// On SIGINT/SIGTERM, how long to wait for running tasks to clean up and report (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Where undelivered reports wait for the next start (default ~/.local/state/oz-agent-worker).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// WebSocket ping interval (protocol: 30s; for tests).
    #[arg(long, hide = true, value_name = "DURATION")]
    pub ping_interval: Option<String>,
    /// Drop the connection after this long without any frame (protocol: 60s; for tests).
    #[arg(long, hide = true, value_name = "DURATION")]
    pub read_timeout: Option<String>,
    /// Orchestrator WebSocket URL.
    #[arg(long, hide = true)]
    pub web_socket_url: Option<String>,
    /// Server root URL handed to the agent.
    #[arg(long, hide = true)]
    pub server_root_url: Option<String>,
}

pub async fn run(args: WorkerArgs) -> ExitCode {
    super::logging::init_with(&args.log_level, args.log_format);
    let config = match crate::worker::config::WorkerConfig::resolve(
        &args,
        &crate::worker::config::ProcessEnv,
    ) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The composition root: the Docker runtime is chosen here, so the worker
    // core never names it.
    let settings = crate::runtime::docker::Settings {
        cleanup: config.cleanup,
        pull_policy: config.pull_policy,
        stop_grace_period: config.stop_grace_period,
    };
    let runtime =
        match crate::runtime::docker::DockerRuntime::from_environment(&config.worker_id, settings)
            .await
        {
            Ok(r) => std::sync::Arc::new(r),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
    crate::worker::run_with(config, runtime, crate::worker::shutdown_signal()).await
}
