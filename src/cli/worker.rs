//! The worker's own flags (no subcommand), as the Go worker has them, and
//! the composition root: it reads the config file, chooses the runtime
//! (`--backend`, or the one section the file has), resolves each layer's
//! settings and starts the core over the chosen runtime. Every flag is an
//! `Option` so "given on the command line" is visible even when the value is
//! 0 or empty: an explicit flag always beats the file.

use crate::cli::api_key;
use crate::cli::config_file::{self, BackendSections, ConfigFile};
use oz_foundation::operator_env::{self, EnvLookup, ProcessEnv};
use oz_foundation::secret::Secret;
use oz_runtime::{Runtime, RuntimeContext};
use oz_worker::config::{CoreInputs, WorkerConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Default, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Worker id that tasks are routed to (ids starting with `warp` are reserved).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// API key for the orchestrator. Visible to every local user in /proc/PID/cmdline: prefer --api-key-file or WARP_API_KEY_FILE (WARP_API_KEY also works).
    #[arg(long, value_parser = super::secret_arg)]
    pub api_key: Option<Secret>,
    /// File holding the API key (trailing newline ignored), e.g. a Kubernetes secret volume. Env: WARP_API_KEY_FILE; systemd: LoadCredential=warp-api-key.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// The runtime: docker (default), direct or command. Default: the config file's one backend section, else docker.
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    pub log_level: String,
    /// text (default) or json, one object per line, for log pipelines.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: super::logging::LogFormat,
    /// Keep what a task leaves (containers, workspaces) after it ends, for debugging.
    #[arg(long)]
    pub no_cleanup: bool,
    /// Extra bind mount for every task (docker): HOST:CONTAINER[:OPTIONS]. Repeatable; added to the file's.
    #[arg(short = 'v', long = "volumes", value_name = "HOST:CONTAINER[:OPTIONS]")]
    pub volumes: Vec<String>,
    /// Environment for every task: KEY=VALUE, or KEY to pass the worker's own value through. Repeatable; overlays the file's.
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
    /// Run every task in this existing folder (direct runtime) instead of a per-task workspace.
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// When to pull task and sidecar images (docker): always, if-not-present or never.
    #[arg(long, value_name = "POLICY")]
    pub pull_policy: Option<String>,
    /// How long a stopped task gets between SIGTERM and SIGKILL (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    pub stop_grace_period: Option<String>,
    /// On SIGINT/SIGTERM, how long running tasks get to stop and report before they are killed (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// The longest a task may run (e.g. 2h); past it the task is stopped and reported failed with reason task_timeout. Default: no limit.
    #[arg(long, value_name = "DURATION")]
    pub task_timeout: Option<String>,
    /// Exit 0 after one task has ended and its report is delivered, claiming no other (ephemeral workers; Buildkite's --disconnect-after-job).
    #[arg(long)]
    pub disconnect_after_task: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Serve /healthz (liveness) and /readyz (readiness) at http://ADDR (e.g. 0.0.0.0:8081).
    #[arg(long, env = "OZ_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<String>,
    /// Where the claim journal lives (default ~/.local/state/oz-agent-worker). Keep it across restarts.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often a worker whose tasks outlive it (the kubernetes backend)
    /// looks again for tasks that dead instances of its worker id left
    /// (default 60s; 0 looks only at start-up).
    #[arg(long, value_name = "DURATION")]
    pub takeover_interval: Option<String>,
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
    /// Session sharing server URL handed to the agent.
    #[arg(long, hide = true)]
    pub session_sharing_server_url: Option<String>,
}

/// The runtimes this build has, by `--backend` name.
#[cfg(feature = "kubernetes")]
pub const BACKENDS: &[&str] = &["docker", "direct", "command", "kubernetes"];
/// The runtimes this build has, by `--backend` name.
#[cfg(not(feature = "kubernetes"))]
pub const BACKENDS: &[&str] = &["docker", "direct", "command"];

/// Why no runtime could be chosen ([`select_backend`]).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The sections the file has.
    #[error(
        "the config file has backend sections for {}; keep exactly one (or none, for docker)",
        .0.join(" and ")
    )]
    SeveralSections(Vec<&'static str>),
    #[error(
        "this build of oz-agent-worker has no kubernetes runtime (it was built without the `kubernetes` \
         feature); use the release binary or the container image, or build with `--features kubernetes`"
    )]
    NoKubernetes,
    /// `--backend`'s value.
    #[error("--backend {0:?} is not a backend; use {backends}", backends = BACKENDS.join(", "))]
    Unknown(String),
}

/// Why the worker's settings could not be resolved ([`resolve`]): every
/// variant is a bad setting (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    ConfigFile(#[from] config_file::LoadError),
    #[error(transparent)]
    ApiKey(#[from] api_key::ApiKeyError),
    /// A value the core's settings or the operator's environment refused;
    /// `at` is `config file PATH line N` when it came from the file.
    #[error("{}{source}", at.as_ref().map(|a| format!("{a}: ")).unwrap_or_default())]
    Setting {
        at: Option<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend the worker runs.
    #[error(
        "-v/--volumes only applies to the docker backend, and this worker runs the {0} backend"
    )]
    VolumesNeedDocker(&'static str),
    /// The backend the worker runs.
    #[error(
        "--target-dir only applies to the direct backend, and this worker runs the {0} backend"
    )]
    TargetDirNeedsDirect(&'static str),
}

impl ResolveError {
    /// `error` about a setting, located in `file` when its message starts
    /// with a key path the file has.
    fn setting<E: std::error::Error + Send + Sync + 'static>(
        file: &config_file::Loaded,
        error: E,
    ) -> ResolveError {
        ResolveError::Setting {
            at: file.location_of(&error.to_string()),
            source: Box::new(error),
        }
    }
}

/// `--backend`, else the file's one section (the Go worker checks them as
/// direct, kubernetes, command, docker), else docker. Two sections are an
/// error naming both; in a build without the `kubernetes` feature,
/// `kubernetes` is recognised and refused.
pub fn select_backend(
    flag: Option<&str>,
    sections: &BackendSections,
) -> Result<(&'static str, Option<String>), BackendError> {
    let present = sections.present();
    if present.len() > 1 {
        return Err(BackendError::SeveralSections(present));
    }
    let chosen = match flag.map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => match BACKENDS.iter().find(|b| **b == f) {
            Some(b) => *b,
            None if f == "kubernetes" => return Err(BackendError::NoKubernetes),
            None => return Err(BackendError::Unknown(f.to_string())),
        },
        None => match present.first() {
            Some(s) if BACKENDS.contains(s) => s,
            Some(_) => return Err(BackendError::NoKubernetes),
            None => "docker",
        },
    };
    // The Go worker silently ignores a section for another backend; say so.
    let ignored = present.first().filter(|s| **s != chosen).map(|s| {
        format!("--backend {chosen} is given, so the config file's backend.{s} section is ignored")
    });
    Ok((chosen, ignored))
}

fn core_inputs(args: &WorkerArgs, file: &ConfigFile, api_key: Option<Secret>) -> CoreInputs {
    CoreInputs {
        flag_worker_id: args.worker_id.clone(),
        file_worker_id: file.worker_id.clone(),
        flag_api_key: api_key,
        flag_max_concurrent_tasks: args.max_concurrent_tasks,
        file_max_concurrent_tasks: file.max_concurrent_tasks,
        flag_idle_on_complete: args.idle_on_complete.clone(),
        file_idle_on_complete: file.idle_on_complete.clone(),
        flag_shutdown_timeout: args.shutdown_timeout.clone(),
        flag_task_timeout: args.task_timeout.clone(),
        file_task_timeout: file.task_timeout.clone(),
        flag_disconnect_after_task: args.disconnect_after_task,
        file_disconnect_after_task: file.disconnect_after_task,
        flag_metrics_listen: args.metrics_listen.clone(),
        file_metrics_listen: file.metrics_listen.clone(),
        flag_health_listen: args.health_listen.clone(),
        file_health_listen: file.health_listen.clone(),
        flag_state_dir: args.state_dir.clone(),
        flag_web_socket_url: args.web_socket_url.clone(),
        flag_server_root_url: args.server_root_url.clone(),
        flag_session_sharing_server_url: args.session_sharing_server_url.clone(),
        flag_ping_interval: args.ping_interval.clone(),
        flag_takeover_interval: args.takeover_interval.clone(),
        flag_read_timeout: args.read_timeout.clone(),
    }
}

/// Everything resolved from flags, file and environment, before any I/O
/// beyond reading the file.
#[derive(Debug)]
pub struct Resolved {
    pub core: WorkerConfig,
    pub backend: &'static str,
    pub sections: BackendSections,
    pub cleanup: bool,
    pub env: Vec<(String, Secret)>,
    /// To log once logging is up.
    pub warnings: Vec<String>,
    /// The config file as read, to say where a bad value is.
    pub file: config_file::Loaded,
}

pub fn resolve(args: &WorkerArgs, env: &dyn EnvLookup) -> Result<Resolved, ResolveError> {
    let loaded = match &args.config_file {
        Some(path) => config_file::load(path)?,
        None => config_file::Loaded::default(),
    };
    let file = &loaded.file;
    let (api_key, key_warnings) = api_key::resolve(
        &api_key::KeySources {
            flag: args.api_key.clone(),
            flag_file: args.api_key_file.clone(),
        },
        env,
    )?;
    let core = WorkerConfig::resolve(&core_inputs(args, file, api_key), env)
        .map_err(|e| ResolveError::setting(&loaded, e))?;
    let sections = file.backend.clone().unwrap_or_default();
    let (backend, ignored) = select_backend(args.backend.as_deref(), &sections)?;
    let mut warnings: Vec<String> = key_warnings;
    warnings.extend(ignored);
    let operator = operator_env::resolve(
        sections.environment(backend),
        &format!("backend.{backend}.environment"),
        &args.env,
        env,
    )
    .map_err(|e| ResolveError::setting(&loaded, e))?;
    warnings.extend(operator.warnings);
    if !args.volumes.is_empty() && backend != "docker" {
        return Err(ResolveError::VolumesNeedDocker(backend));
    }
    if args.target_dir.is_some() && backend != "direct" {
        return Err(ResolveError::TargetDirNeedsDirect(backend));
    }
    // `--no-cleanup` can only turn cleanup off (the Go worker's rule).
    let cleanup = !args.no_cleanup && file.cleanup.unwrap_or(true);
    Ok(Resolved {
        core,
        backend,
        sections,
        cleanup,
        env: operator.env,
        warnings,
        file: loaded,
    })
}

/// Why the runtime could not be built: its settings (exit status 2, like
/// any bad flag or configuration) or the runtime itself, e.g. an unreachable
/// daemon (exit status 1). README: "Exit status".
enum BuildError {
    Config(String),
    Start(String),
}

async fn build_runtime(
    args: &WorkerArgs,
    r: &Resolved,
    env: &dyn EnvLookup,
) -> Result<Arc<dyn Runtime>, BuildError> {
    use BuildError::Start;
    let config = |e: String| BuildError::Config(r.file.locate_error(e));
    let ctx = RuntimeContext {
        worker_id: r.core.worker_id.clone(),
        state_dir: oz_worker::journal::worker_dir(&r.core.state_dir, &r.core.worker_id)
            .join(r.backend),
    };
    match r.backend {
        "docker" => {
            use oz_runtime_docker::config::{DockerFlags, Settings};
            let settings = Settings::resolve(
                &r.sections.docker.clone().unwrap_or_default(),
                &DockerFlags {
                    volumes: args.volumes.clone(),
                    pull_policy: args.pull_policy.clone(),
                    stop_grace_period: args.stop_grace_period.clone(),
                },
                r.cleanup,
                r.env.clone(),
            )
            .map_err(|e| config(e.to_string()))?;
            let rt = oz_runtime_docker::DockerRuntime::from_environment(&ctx, settings)
                .await
                .map_err(|e| Start(e.to_string()))?;
            use oz_runtime_docker::startup::{self, StartupError};
            startup::verify(&rt).await.map_err(|e| match e {
                StartupError::Setting(m) => config(m),
                StartupError::Daemon(m) => Start(m),
            })?;
            Ok(Arc::new(rt))
        }
        "direct" => {
            use oz_runtime_direct::config::{DirectFlags, Settings};
            let settings = Settings::resolve(
                &r.sections.direct.clone().unwrap_or_default(),
                &DirectFlags {
                    target_dir: args.target_dir.clone(),
                    stop_grace_period: args.stop_grace_period.clone(),
                },
                r.cleanup,
                r.env.clone(),
                env.var("PATH").as_deref(),
            )
            .map_err(|e| config(e.to_string()))?;
            use oz_runtime_direct::{DirectRuntime, StartError};
            Ok(Arc::new(DirectRuntime::new(ctx, settings).map_err(
                |e| match e {
                    StartError::Config(e) => BuildError::Config(e),
                    StartError::Host(e) => Start(e),
                },
            )?))
        }
        "command" => {
            use oz_runtime_command::config::Settings;
            let settings = Settings::resolve(
                &r.sections.command.clone().unwrap_or_default(),
                r.env.clone(),
            )
            .map_err(|e| config(e.to_string()))?;
            Ok(Arc::new(
                oz_runtime_command::CommandRuntime::new(ctx, settings)
                    .map_err(|e| Start(e.to_string()))?,
            ))
        }
        #[cfg(feature = "kubernetes")]
        "kubernetes" => {
            use oz_runtime_kubernetes::{KubernetesRuntime, Settings};
            let settings = Settings::resolve(
                &r.sections.kubernetes.clone().unwrap_or_default(),
                r.cleanup,
                oz_foundation::duration::parse_duration,
            )
            .map_err(|e| config(e.to_string()))?;
            let rt = KubernetesRuntime::start(ctx, settings, r.env.clone())
                .await
                .map_err(|e| Start(e.to_string()))?;
            Ok(Arc::new(rt))
        }
        other => Err(BuildError::Config(format!("unknown backend {other}"))),
    }
}

pub async fn run(args: WorkerArgs) -> ExitCode {
    super::logging::init_with(&args.log_level, args.log_format);
    crate::hardening::log_outcome();
    // SIGQUIT drains from here on (instead of its default core dump).
    let drain = super::signals::drain_signal();
    let resolved = match resolve(&args, &crate::hardening::EnvBeforeHardening) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &resolved.warnings {
        tracing::warn!("{w}");
    }
    if args.pull_policy.is_some() && resolved.backend != "docker" {
        tracing::warn!("--pull-policy only applies to the docker backend; ignored");
    }
    let runtime = match build_runtime(&args, &resolved, &ProcessEnv).await {
        Ok(r) => r,
        Err(BuildError::Config(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Err(BuildError::Start(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    oz_worker::oom_score::lower_own();
    let shutdown = super::signals::shutdown_signal();
    match oz_worker::run_with_drain(resolved.core, runtime, shutdown, drain).await {
        Ok(oz_worker::Stopped::Complete) => ExitCode::SUCCESS,
        Ok(oz_worker::Stopped::Incomplete) => ExitCode::from(oz_worker::EXIT_DRAIN_INCOMPLETE),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn sections(yaml: &str) -> BackendSections {
        config_file::parse(yaml)
            .unwrap()
            .backend
            .unwrap_or_default()
    }

    /// The Go worker's selection rules (main.go, BACKENDS.md §1).
    #[test]
    fn backend_selection_table() {
        let none = BackendSections::default();
        let direct = sections("backend:\n  direct: {}\n");
        let k8s = sections("backend:\n  kubernetes: {}\n");
        let two = sections("backend:\n  direct: {}\n  docker: {}\n");
        let cases: &[(Option<&str>, &BackendSections, Result<&str, &str>)] = &[
            (None, &none, Ok("docker")),
            (None, &direct, Ok("direct")),
            (Some("command"), &none, Ok("command")),
            (Some("docker"), &direct, Ok("docker")),
            (Some(""), &direct, Ok("direct")),
            (None, &two, Err("direct and docker")),
            (Some("docker"), &two, Err("direct and docker")),
            #[cfg(feature = "kubernetes")]
            (None, &k8s, Ok("kubernetes")),
            #[cfg(feature = "kubernetes")]
            (Some("kubernetes"), &none, Ok("kubernetes")),
            #[cfg(not(feature = "kubernetes"))]
            (None, &k8s, Err("no kubernetes runtime")),
            #[cfg(not(feature = "kubernetes"))]
            (Some("kubernetes"), &none, Err("no kubernetes runtime")),
            (Some("podman"), &none, Err("\"podman\" is not a backend")),
            // Case-sensitive, like the Go worker's enum.
            (Some("Docker"), &none, Err("is not a backend")),
        ];
        for (flag, s, want) in cases {
            match (select_backend(*flag, s), want) {
                (Ok((got, _)), Ok(want)) => assert_eq!(got, *want, "{flag:?}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{flag:?}: {e}"),
                (got, want) => panic!("{flag:?}: got {got:?}, want {want:?}"),
            }
        }
        let (_, warning) = select_backend(Some("docker"), &direct).unwrap();
        assert!(warning
            .unwrap()
            .contains("backend.direct section is ignored"));
    }

    fn args_with_file(yaml: &str) -> (tempfile::NamedTempFile, WorkerArgs) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        let a = WorkerArgs {
            api_key: Some(Secret::new("k")),
            config_file: Some(f.path().to_path_buf()),
            ..Default::default()
        };
        (f, a)
    }

    #[test]
    fn the_chosen_sections_environment_is_overlaid_by_flags() {
        let (_f, mut a) = args_with_file(
            "worker_id: w\nbackend:\n  docker:\n    environment:\n      - name: A\n        value: file\n      - name: B\n        value: file\n",
        );
        a.env = vec!["B=flag".into(), "C".into()];
        let r = resolve(&a, &HashMap::new()).unwrap();
        let env: Vec<(&str, &str)> = r
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_str()))
            .collect();
        assert_eq!(env, [("A", "file"), ("B", "flag"), ("C", "")]);
        assert!(
            r.warnings.iter().any(|w| w.contains('C')),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn runtime_specific_flags_are_refused_for_other_runtimes() {
        let (_f, mut a) =
            args_with_file("worker_id: w\nbackend:\n  command:\n    dispatch_command: x\n");
        a.volumes = vec!["/a:/a".into()];
        assert!(resolve(&a, &HashMap::new())
            .unwrap_err()
            .to_string()
            .contains("docker backend"));
        a.volumes.clear();
        a.target_dir = Some("/tmp".into());
        assert!(resolve(&a, &HashMap::new())
            .unwrap_err()
            .to_string()
            .contains("direct backend"));
    }

    #[test]
    fn no_cleanup_can_only_turn_cleanup_off() {
        let (_f, mut a) = args_with_file("worker_id: w\ncleanup: false\n");
        assert!(!resolve(&a, &HashMap::new()).unwrap().cleanup);
        a.no_cleanup = true;
        assert!(!resolve(&a, &HashMap::new()).unwrap().cleanup);
        let (_f, a) = args_with_file("worker_id: w\n");
        assert!(resolve(&a, &HashMap::new()).unwrap().cleanup);
    }

    #[test]
    fn the_api_key_never_shows_in_debug() {
        let a = WorkerArgs {
            api_key: Some(Secret::new("sekrit-123")),
            ..Default::default()
        };
        assert!(!format!("{a:?}").contains("sekrit-123"));
    }
}
