//! The worker core's configuration: who it is, where the orchestrator is,
//! how many tasks it takes, where it keeps its journal. Resolved once at
//! start-up (flag > file > default, as the Go worker does it) so a bad value
//! stops the worker with a sentence that names it, before any connection.
//!
//! Runtime settings are not here: each runtime owns its section of the file
//! (`backend.docker`, `backend.direct`, `backend.command`) and its flags; the
//! composition root (`cli::worker`) resolves them.

use oz_foundation::duration::parse_duration;
use oz_foundation::secret::Secret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_WEB_SOCKET_URL: &str = "wss://oz.warp.dev/api/v1/selfhosted/worker/ws";
pub const DEFAULT_SERVER_ROOT_URL: &str = "https://app.warp.dev";
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub use oz_foundation::operator_env::{EnvLookup, ProcessEnv};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The core's inputs, each as given: `None` = not given. Flags and file
/// values arrive separately so the precedence rule lives here.
#[derive(Debug, Clone, Default)]
pub struct CoreInputs {
    pub flag_worker_id: Option<String>,
    pub file_worker_id: Option<String>,
    pub flag_api_key: Option<Secret>,
    pub flag_max_concurrent_tasks: Option<u32>,
    pub file_max_concurrent_tasks: Option<u32>,
    /// `Some("")` is the bare flag.
    pub flag_idle_on_complete: Option<String>,
    pub file_idle_on_complete: Option<String>,
    pub flag_shutdown_timeout: Option<String>,
    pub flag_task_timeout: Option<String>,
    pub file_task_timeout: Option<String>,
    pub flag_disconnect_after_task: bool,
    pub file_disconnect_after_task: Option<bool>,
    pub flag_metrics_listen: Option<String>,
    pub file_metrics_listen: Option<String>,
    pub flag_health_listen: Option<String>,
    pub file_health_listen: Option<String>,
    pub flag_state_dir: Option<PathBuf>,
    pub flag_web_socket_url: Option<String>,
    pub flag_server_root_url: Option<String>,
    pub flag_session_sharing_server_url: Option<String>,
    pub flag_ping_interval: Option<String>,
    pub flag_takeover_interval: Option<String>,
    pub flag_read_timeout: Option<String>,
}

/// How often a worker looks again for tasks that dead instances of its
/// worker id left, where they outlive it (a Kubernetes Job whose worker Pod
/// was replaced while the new one judged it alive, or could not read it).
/// One Job list per interval.
pub const DEFAULT_TAKEOVER_INTERVAL: Duration = Duration::from_secs(60);

/// Everything the core needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub api_key: Secret,
    pub web_socket_url: String,
    pub server_root_url: String,
    /// The hidden `--session-sharing-server-url`, passed on to the agent.
    pub session_sharing_server_url: Option<String>,
    /// `None` = unlimited.
    pub max_concurrent_tasks: Option<u32>,
    /// `None` = not configured; `Some("")` = the bare flag.
    pub idle_on_complete: Option<String>,
    /// How long a shutdown waits for running tasks before force-stopping them.
    pub shutdown_timeout: Duration,
    /// The longest a task may run, counted from its claim (`task_timeout`,
    /// `--task-timeout`); past it the task is stopped as a cancellation
    /// stops it and reported `task_timeout`. `None` = no limit (the
    /// default; `0` means the same).
    pub task_timeout: Option<Duration>,
    /// Exit 0 once one task has ended and its report is confirmed, taking
    /// no other (`--disconnect-after-task`, Buildkite's
    /// `--disconnect-after-job`), for ephemeral workers.
    pub disconnect_after_task: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
    /// Where the claim journal lives (`<state_dir>/<worker id>/`).
    pub state_dir: PathBuf,
    /// The protocol's liveness timing; only tests change it.
    pub timing: crate::connection::Timing,
    /// How often, on a runtime whose tasks outlive the worker, the runtime
    /// is asked again for tasks of dead instances of this worker id
    /// (`--takeover-interval`, default [`DEFAULT_TAKEOVER_INTERVAL`]);
    /// `None` looks only at start-up.
    pub takeover_interval: Option<Duration>,
    /// The outbound proxy from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`.
    pub proxy: crate::proxy::OutboundProxy,
}

impl WorkerConfig {
    /// Flag > file > default. Errors name the flag or key and say what to do.
    pub fn resolve(i: &CoreInputs, env: &dyn EnvLookup) -> Result<Self, ConfigError> {
        let worker_id = i
            .flag_worker_id
            .clone()
            .or(i.file_worker_id.clone())
            .unwrap_or_default();
        validate_worker_id(&worker_id)?;

        let api_key = i
            .flag_api_key
            .clone()
            .or_else(|| env.var("WARP_API_KEY").map(Secret::new))
            .unwrap_or_default();
        if api_key.expose_str().trim().is_empty() {
            return Err(ConfigError(
                "no API key: pass --api-key-file or set WARP_API_KEY_FILE or WARP_API_KEY (create one in the orchestrator, or with `oz-agent-worker api-keys create` for a local control plane)".into(),
            ));
        }

        // The Go worker treats 0 and "" as unset for these two.
        let max = i
            .flag_max_concurrent_tasks
            .or(i.file_max_concurrent_tasks)
            .unwrap_or(0);
        let (idle_on_complete, idle_source) =
            match (&i.flag_idle_on_complete, &i.file_idle_on_complete) {
                (Some(v), _) => (Some(v.clone()), "--idle-on-complete"),
                (None, v) => (v.clone(), "idle_on_complete"),
            };
        if let Some(v) = idle_on_complete.as_deref().filter(|v| !v.trim().is_empty()) {
            parse_duration(v).map_err(|e| ConfigError(format!("{idle_source}: {e}")))?;
        }

        let shutdown_timeout = match &i.flag_shutdown_timeout {
            Some(d) => {
                parse_duration(d).map_err(|e| ConfigError(format!("--shutdown-timeout: {e}")))?
            }
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        };

        let (task_timeout, task_timeout_source) = match (&i.flag_task_timeout, &i.file_task_timeout)
        {
            (Some(v), _) => (Some(v), "--task-timeout"),
            (None, v) => (v.as_ref(), "task_timeout"),
        };
        let task_timeout = match task_timeout.map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(v) => Some(parse_duration(v).map_err(|e| {
                ConfigError(format!(
                    "{task_timeout_source}: {e}; it is the longest a task may run, e.g. 2h"
                ))
            })?)
            .filter(|d| !d.is_zero()),
            None => None,
        };

        let metrics_listen = listen_addr(
            &i.flag_metrics_listen,
            &i.file_metrics_listen,
            "metrics",
            ("--metrics-listen", "metrics_listen"),
        )?;
        let health_listen = listen_addr(
            &i.flag_health_listen,
            &i.file_health_listen,
            "health",
            ("--health-listen", "health_listen"),
        )?;

        let mut timing = crate::connection::Timing::default();
        if let Some(d) = &i.flag_ping_interval {
            timing.ping_interval =
                parse_duration(d).map_err(|e| ConfigError(format!("--ping-interval: {e}")))?;
        }
        if let Some(d) = &i.flag_read_timeout {
            timing.read_timeout =
                parse_duration(d).map_err(|e| ConfigError(format!("--read-timeout: {e}")))?;
        }

        let takeover_interval = match &i.flag_takeover_interval {
            Some(d) => {
                parse_duration(d).map_err(|e| ConfigError(format!("--takeover-interval: {e}")))?
            }
            None => DEFAULT_TAKEOVER_INTERVAL,
        };
        let takeover_interval = (!takeover_interval.is_zero()).then_some(takeover_interval);

        let web_socket_url = i
            .flag_web_socket_url
            .clone()
            .unwrap_or_else(|| DEFAULT_WEB_SOCKET_URL.into());
        if !(web_socket_url.starts_with("ws://") || web_socket_url.starts_with("wss://")) {
            return Err(ConfigError(format!(
                "--web-socket-url {web_socket_url:?} must start with ws:// or wss://"
            )));
        }

        let proxy =
            crate::proxy::OutboundProxy::from_env(env, web_socket_url.starts_with("wss://"))
                .map_err(|e| ConfigError(e.to_string()))?;

        Ok(WorkerConfig {
            worker_id,
            api_key,
            web_socket_url,
            server_root_url: i
                .flag_server_root_url
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVER_ROOT_URL.into()),
            session_sharing_server_url: i
                .flag_session_sharing_server_url
                .clone()
                .filter(|s| !s.trim().is_empty()),
            max_concurrent_tasks: (max > 0).then_some(max),
            idle_on_complete,
            shutdown_timeout,
            task_timeout,
            disconnect_after_task: i.flag_disconnect_after_task
                || i.file_disconnect_after_task.unwrap_or(false),
            metrics_listen,
            health_listen,
            state_dir: i.flag_state_dir.clone().unwrap_or_else(default_state_dir),
            timing,
            takeover_interval,
            proxy,
        })
    }
}

/// The flag's value, else the file's; errors start with the flag or the
/// file's key, whichever gave the value.
fn listen_addr(
    flag_value: &Option<String>,
    file_value: &Option<String>,
    what: &str,
    (flag, key): (&str, &str),
) -> Result<Option<SocketAddr>, ConfigError> {
    let (value, source) = match (flag_value, file_value) {
        (Some(v), _) => (Some(v), flag),
        (None, v) => (v.as_ref(), key),
    };
    match value {
        Some(a) if !a.trim().is_empty() => a.trim().parse().map(Some).map_err(|_| {
            ConfigError(format!(
                "{source}: {a:?} is not a listen address; the {what} address must be HOST:PORT with a numeric IP, e.g. 127.0.0.1:9090"
            ))
        }),
        _ => Ok(None),
    }
}

/// `$XDG_STATE_HOME/oz-agent-worker`, else `~/.local/state/oz-agent-worker`.
pub fn default_state_dir() -> PathBuf {
    oz_foundation::dirs::xdg_dir("XDG_STATE_HOME", ".local/state", "state")
}

/// A worker id must be given, and ids starting with `warp` are reserved for
/// Warp-hosted workers. The check is case-sensitive, as the Go worker's.
pub fn validate_worker_id(id: &str) -> Result<(), ConfigError> {
    if id.trim().is_empty() {
        return Err(ConfigError(
            "no worker id: pass --worker-id or set worker_id in the config file".into(),
        ));
    }
    if oz_protocol::is_reserved_worker_id(id) {
        return Err(ConfigError(format!(
            "worker id {id:?} is reserved (ids starting with \"warp\" belong to Warp-hosted workers); choose another, e.g. \"prod-runner-1\""
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn inputs() -> CoreInputs {
        CoreInputs {
            flag_worker_id: Some("w".into()),
            flag_api_key: Some(Secret::new("k")),
            ..Default::default()
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_beat_file_even_when_zero_or_empty() {
        let mut i = inputs();
        i.flag_worker_id = None;
        i.file_worker_id = Some("from-file".into());
        i.file_max_concurrent_tasks = Some(4);
        i.file_idle_on_complete = Some("10m".into());
        i.flag_max_concurrent_tasks = Some(0);
        i.flag_idle_on_complete = Some(String::new());
        let c = WorkerConfig::resolve(&i, &env(&[])).unwrap();
        assert_eq!(c.worker_id, "from-file");
        assert_eq!(
            c.max_concurrent_tasks, None,
            "explicit 0 means unlimited, not the file's 4"
        );
        assert_eq!(c.idle_on_complete.as_deref(), Some(""));
        i.flag_max_concurrent_tasks = None;
        assert_eq!(
            WorkerConfig::resolve(&i, &env(&[]))
                .unwrap()
                .max_concurrent_tasks,
            Some(4)
        );
    }

    #[test]
    fn task_timeout_flag_beats_file_and_zero_means_none() {
        let mut i = inputs();
        assert_eq!(
            WorkerConfig::resolve(&i, &env(&[])).unwrap().task_timeout,
            None
        );
        i.file_task_timeout = Some("1h".into());
        assert_eq!(
            WorkerConfig::resolve(&i, &env(&[])).unwrap().task_timeout,
            Some(Duration::from_secs(3600))
        );
        i.flag_task_timeout = Some("90s".into());
        assert_eq!(
            WorkerConfig::resolve(&i, &env(&[])).unwrap().task_timeout,
            Some(Duration::from_secs(90))
        );
        i.flag_task_timeout = Some("0".into());
        assert_eq!(
            WorkerConfig::resolve(&i, &env(&[])).unwrap().task_timeout,
            None
        );
    }

    #[test]
    fn disconnect_after_task_from_the_flag_or_the_file() {
        let mut i = inputs();
        assert!(
            !WorkerConfig::resolve(&i, &env(&[]))
                .unwrap()
                .disconnect_after_task
        );
        i.file_disconnect_after_task = Some(true);
        assert!(
            WorkerConfig::resolve(&i, &env(&[]))
                .unwrap()
                .disconnect_after_task
        );
        i.file_disconnect_after_task = Some(false);
        i.flag_disconnect_after_task = true;
        assert!(
            WorkerConfig::resolve(&i, &env(&[]))
                .unwrap()
                .disconnect_after_task
        );
    }

    #[test]
    fn reserved_and_missing_worker_ids_are_refused_case_sensitively() {
        // The Go worker: strings.HasPrefix(id, "warp").
        for (id, ok) in [
            ("warp-runner", false),
            ("warp", false),
            ("Warp-runner", true),
            ("WARP", true),
            ("prod-warp", true),
        ] {
            let mut i = inputs();
            i.flag_worker_id = Some(id.into());
            let r = WorkerConfig::resolve(&i, &env(&[]));
            assert_eq!(r.is_ok(), ok, "{id}: {r:?}");
            if !ok {
                assert!(r.unwrap_err().0.contains("reserved"));
            }
        }
        let mut i = inputs();
        i.flag_worker_id = None;
        let e = WorkerConfig::resolve(&i, &env(&[])).unwrap_err().0;
        assert!(e.contains("--worker-id"), "{e}");
    }

    #[test]
    fn api_key_from_env_and_never_in_debug() {
        let mut i = inputs();
        i.flag_api_key = None;
        let c = WorkerConfig::resolve(&i, &env(&[("WARP_API_KEY", "sekrit-123")])).unwrap();
        assert_eq!(c.api_key.expose_str(), "sekrit-123");
        assert!(!format!("{c:?}").contains("sekrit-123"));
        assert!(WorkerConfig::resolve(&i, &env(&[]))
            .unwrap_err()
            .0
            .contains("WARP_API_KEY"));
    }

    #[test]
    fn bad_addresses_and_durations_name_the_flag() {
        let mut i = inputs();
        i.flag_health_listen = Some("localhost".into());
        assert!(WorkerConfig::resolve(&i, &env(&[]))
            .unwrap_err()
            .0
            .contains("--health-listen"));
        let mut i = inputs();
        i.flag_shutdown_timeout = Some("soon".into());
        assert!(WorkerConfig::resolve(&i, &env(&[]))
            .unwrap_err()
            .0
            .contains("--shutdown-timeout"));
        let mut i = inputs();
        i.flag_task_timeout = Some("5x".into());
        let e = WorkerConfig::resolve(&i, &env(&[])).unwrap_err().0;
        assert!(e.starts_with("--task-timeout: "), "{e}");
        let mut i = inputs();
        i.file_task_timeout = Some("-1m".into());
        let e = WorkerConfig::resolve(&i, &env(&[])).unwrap_err().0;
        assert!(e.starts_with("task_timeout: "), "{e}");
        let mut i = inputs();
        i.flag_web_socket_url = Some("http://x".into());
        assert!(WorkerConfig::resolve(&i, &env(&[]))
            .unwrap_err()
            .0
            .contains("ws://"));
    }

    #[test]
    fn takeover_interval_defaults_to_a_minute_and_zero_turns_it_off() {
        let mut i = inputs();
        let resolve = |i: &CoreInputs| WorkerConfig::resolve(i, &env(&[]));
        assert_eq!(
            resolve(&i).unwrap().takeover_interval,
            Some(DEFAULT_TAKEOVER_INTERVAL)
        );
        i.flag_takeover_interval = Some("5s".into());
        assert_eq!(
            resolve(&i).unwrap().takeover_interval,
            Some(Duration::from_secs(5))
        );
        i.flag_takeover_interval = Some("0".into());
        assert_eq!(resolve(&i).unwrap().takeover_interval, None);
        i.flag_takeover_interval = Some("often".into());
        let e = resolve(&i).unwrap_err().to_string();
        assert!(e.starts_with("--takeover-interval: "), "{e}");
    }
}
