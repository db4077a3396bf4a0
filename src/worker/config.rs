//! The worker's configuration: flags over the YAML file over defaults, all
//! validated once at start-up so a bad value stops the worker with a sentence
//! that names it, before any connection is made.

use crate::cli::worker::WorkerArgs;
use crate::duration::parse_duration;
use schemars::JsonSchema;
use serde::Deserialize;
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_WEB_SOCKET_URL: &str = "wss://oz.warp.dev/api/v1/selfhosted/worker/ws";
pub const DEFAULT_SERVER_ROOT_URL: &str = "https://app.warp.dev";
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where environment variables come from; tests pass a map instead of
/// mutating the process environment.
pub trait EnvLookup {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvLookup for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A value that must never be printed: Debug and Display show a placeholder.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The YAML configuration file, parsed strictly: unknown keys and wrong
/// types are errors naming the key and line.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "oz-agent-worker configuration file")]
pub struct FileConfig {
    /// Worker id that tasks are routed to.
    pub worker_id: Option<String>,
    /// Remove task containers after they exit (default true).
    pub cleanup: Option<bool>,
    /// Most tasks at once; 0 = unlimited.
    pub max_concurrent_tasks: Option<u32>,
    /// Keep the agent idle after completion for this long (e.g. "10m"); empty = the bare flag.
    pub idle_on_complete: Option<String>,
    pub backend: Option<BackendConfig>,
    /// Serve Prometheus metrics on this address (e.g. "127.0.0.1:9090").
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub docker: Option<DockerBackendConfig>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerBackendConfig {
    /// Bind mounts for every task: HOST:CONTAINER[:ro|rw].
    pub volumes: Option<Vec<String>>,
    /// Environment for every task; an entry without `value` inherits the worker's own.
    pub environment: Option<Vec<EnvEntry>>,
    /// always (default), if-not-present or never.
    pub pull_policy: Option<String>,
    /// Time between SIGTERM and SIGKILL when a task is cancelled (e.g. "10s").
    pub stop_grace_period: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvEntry {
    pub name: String,
    pub value: Option<String>,
}

pub use crate::runtime::PullPolicy;

fn parse_pull_policy(s: &str, source: &str) -> Result<PullPolicy, ConfigError> {
    match s {
        "always" => Ok(PullPolicy::Always),
        "if-not-present" | "missing" => Ok(PullPolicy::IfNotPresent),
        "never" => Ok(PullPolicy::Never),
        other => Err(ConfigError(format!(
            "{source}: unknown pull policy {other:?}; use always, if-not-present or never"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub host: String,
    pub container: String,
    pub read_only: bool,
}

impl VolumeSpec {
    /// `HOST:CONTAINER[:ro|rw]`; HOST is an absolute path or a volume name.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError(format!(
                "invalid volume {spec:?}: {why}; expected HOST:CONTAINER[:ro|rw], e.g. /srv/cache:/cache:ro"
            ))
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, container, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => return Err(bad("it needs two or three ':'-separated parts")),
        };
        if host.is_empty() {
            return Err(bad("the host path is empty"));
        }
        let is_name = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && host
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !host.starts_with('/') && !is_name {
            return Err(bad(
                "the host side must be an absolute path or a volume name",
            ));
        }
        if !container.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        if container == "/" {
            return Err(bad("the container path cannot be /"));
        }
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(bad(&format!("unknown mode {m:?} (use ro or rw)"))),
        };
        Ok(VolumeSpec {
            host: host.into(),
            container: container.into(),
            read_only,
        })
    }

    pub fn bind(&self) -> String {
        format!(
            "{}:{}:{}",
            self.host,
            self.container,
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Everything the worker needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub api_key: Secret,
    pub web_socket_url: String,
    pub server_root_url: String,
    pub cleanup: bool,
    /// `None` = unlimited.
    pub max_concurrent_tasks: Option<u32>,
    /// `None` = not configured; `Some("")` = the bare flag.
    pub idle_on_complete: Option<String>,
    pub volumes: Vec<VolumeSpec>,
    /// Operator environment, pass-through entries already resolved. Values
    /// may be secret.
    pub env: Vec<(String, Secret)>,
    pub pull_policy: PullPolicy,
    pub stop_grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub state_dir: std::path::PathBuf,
    /// The protocol's liveness timing; only tests change it.
    pub timing: crate::worker::connection::Timing,
}

impl WorkerConfig {
    pub fn resolve(args: &WorkerArgs, env: &dyn EnvLookup) -> Result<Self, ConfigError> {
        let file = match &args.config_file {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let docker = file.backend.unwrap_or_default().docker.unwrap_or_default();

        let worker_id = args
            .worker_id
            .clone()
            .or(file.worker_id)
            .unwrap_or_default();
        validate_worker_id(&worker_id)?;

        let api_key = args
            .api_key
            .clone()
            .or_else(|| env.var("WARP_API_KEY"))
            .unwrap_or_default();
        if api_key.trim().is_empty() {
            return Err(ConfigError(
                "no API key: pass --api-key or set WARP_API_KEY (create one in the orchestrator, or with `oz-agent-worker api-keys create` for a local control plane)".into(),
            ));
        }

        let cleanup = if args.no_cleanup {
            false
        } else {
            file.cleanup.unwrap_or(true)
        };
        let max = args
            .max_concurrent_tasks
            .or(file.max_concurrent_tasks)
            .unwrap_or(0);

        let volume_specs = if args.volumes.is_empty() {
            docker.volumes.unwrap_or_default()
        } else {
            args.volumes.clone()
        };
        let volumes = volume_specs
            .iter()
            .map(|s| VolumeSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()?;

        let mut operator_env: Vec<(String, Option<String>)> = Vec::new();
        if args.env.is_empty() {
            for e in docker.environment.unwrap_or_default() {
                operator_env.push((e.name, e.value));
            }
        } else {
            for e in &args.env {
                match e.split_once('=') {
                    Some((k, v)) => operator_env.push((k.to_string(), Some(v.to_string()))),
                    None => operator_env.push((e.clone(), None)),
                }
            }
        }
        let mut resolved_env = Vec::new();
        for (name, value) in operator_env {
            if name.is_empty() || name.contains('=') || name.chars().any(char::is_whitespace) {
                return Err(ConfigError(format!(
                    "invalid environment entry name {name:?}: expected KEY=VALUE or KEY"
                )));
            }
            let value = match value {
                Some(v) => v,
                None => env.var(&name).ok_or_else(|| {
                    ConfigError(format!(
                        "environment entry {name} has no value and {name} is not set in the worker's environment; set it, or give {name}=VALUE"
                    ))
                })?,
            };
            resolved_env.push((name, Secret::new(value)));
        }

        let pull_policy = match (&args.pull_policy, &docker.pull_policy) {
            (Some(p), _) => parse_pull_policy(p, "--pull-policy")?,
            (None, Some(p)) => parse_pull_policy(p, "backend.docker.pull_policy")?,
            (None, None) => PullPolicy::Always,
        };
        let stop_grace_period = match (&args.stop_grace_period, &docker.stop_grace_period) {
            (Some(d), _) => {
                parse_duration(d).map_err(|e| ConfigError(format!("--stop-grace-period: {e}")))?
            }
            (None, Some(d)) => parse_duration(d)
                .map_err(|e| ConfigError(format!("backend.docker.stop_grace_period: {e}")))?,
            (None, None) => DEFAULT_STOP_GRACE,
        };
        let shutdown_timeout = match &args.shutdown_timeout {
            Some(d) => {
                parse_duration(d).map_err(|e| ConfigError(format!("--shutdown-timeout: {e}")))?
            }
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        };

        let idle_on_complete = args.idle_on_complete.clone().or(file.idle_on_complete);
        if let Some(v) = idle_on_complete.as_deref().filter(|v| !v.trim().is_empty()) {
            parse_duration(v).map_err(|e| ConfigError(format!("idle_on_complete: {e}")))?;
        }

        let metrics_listen = match args.metrics_listen.clone().or(file.metrics_listen) {
            Some(a) if !a.trim().is_empty() => Some(a.parse().map_err(|_| {
                ConfigError(format!(
                    "metrics address {a:?} is not HOST:PORT with a numeric IP, e.g. 127.0.0.1:9090"
                ))
            })?),
            _ => None,
        };

        let mut timing = crate::worker::connection::Timing::default();
        if let Some(d) = &args.ping_interval {
            timing.ping_interval =
                parse_duration(d).map_err(|e| ConfigError(format!("--ping-interval: {e}")))?;
        }
        if let Some(d) = &args.read_timeout {
            timing.read_timeout =
                parse_duration(d).map_err(|e| ConfigError(format!("--read-timeout: {e}")))?;
        }

        let web_socket_url = args
            .web_socket_url
            .clone()
            .unwrap_or_else(|| DEFAULT_WEB_SOCKET_URL.into());
        if !(web_socket_url.starts_with("ws://") || web_socket_url.starts_with("wss://")) {
            return Err(ConfigError(format!(
                "--web-socket-url {web_socket_url:?} must start with ws:// or wss://"
            )));
        }

        Ok(WorkerConfig {
            worker_id,
            api_key: Secret::new(api_key),
            web_socket_url,
            server_root_url: args
                .server_root_url
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVER_ROOT_URL.into()),
            cleanup,
            max_concurrent_tasks: (max > 0).then_some(max),
            idle_on_complete,
            volumes,
            env: resolved_env,
            pull_policy,
            stop_grace_period,
            shutdown_timeout,
            metrics_listen,
            state_dir: args
                .state_dir
                .clone()
                .unwrap_or_else(crate::worker::pending::default_state_dir),
            timing,
        })
    }
}

pub fn validate_worker_id(id: &str) -> Result<(), ConfigError> {
    if id.trim().is_empty() {
        return Err(ConfigError(
            "no worker id: pass --worker-id or set worker_id in the config file".into(),
        ));
    }
    if id.to_ascii_lowercase().starts_with("warp") {
        return Err(ConfigError(format!(
            "worker id {id:?} is reserved (ids starting with \"warp\" belong to Warp-hosted workers); choose another, e.g. \"prod-runner-1\""
        )));
    }
    Ok(())
}

pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    parse_file(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}

pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn args() -> WorkerArgs {
        WorkerArgs {
            api_key: Some("k".into()),
            log_level: "info".into(),
            ..Default::default()
        }
    }

    fn with_file(yaml: &str) -> (tempfile::NamedTempFile, WorkerArgs) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        let a = WorkerArgs {
            config_file: Some(f.path().to_path_buf()),
            ..args()
        };
        (f, a)
    }

    #[test]
    fn flags_beat_file_even_when_zero_or_empty() {
        let (_f, mut a) =
            with_file("worker_id: from-file\nmax_concurrent_tasks: 4\nidle_on_complete: 10m\n");
        a.max_concurrent_tasks = Some(0);
        a.idle_on_complete = Some(String::new());
        let c = WorkerConfig::resolve(&a, &env(&[])).unwrap();
        assert_eq!(c.worker_id, "from-file");
        assert_eq!(
            c.max_concurrent_tasks, None,
            "explicit 0 means unlimited, not the file's 4"
        );
        assert_eq!(c.idle_on_complete.as_deref(), Some(""));
        let (_f, a) = with_file("worker_id: from-file\nmax_concurrent_tasks: 4\n");
        let c = WorkerConfig::resolve(&a, &env(&[])).unwrap();
        assert_eq!(c.max_concurrent_tasks, Some(4));
    }

    #[test]
    fn unknown_key_and_wrong_type_name_key_and_line() {
        let (_f, a) = with_file("worker_id: w\nbackend:\n  docker:\n    volumez: []\n");
        let e = WorkerConfig::resolve(&a, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("volumez") && e.contains("line 4"), "{e}");
        let (_f, a) = with_file("worker_id: w\nmax_concurrent_tasks: lots\n");
        let e = WorkerConfig::resolve(&a, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_concurrent_tasks") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn reserved_and_missing_worker_ids_are_refused() {
        let a = WorkerArgs {
            worker_id: Some("warp-runner".into()),
            ..args()
        };
        let e = WorkerConfig::resolve(&a, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
        let e = WorkerConfig::resolve(&args(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--worker-id"), "{e}");
    }

    #[test]
    fn env_pass_through_and_file_environment() {
        let (_f, a) = with_file(
            "worker_id: w\nbackend:\n  docker:\n    environment:\n      - name: A\n        value: one\n      - name: HOSTVAR\n",
        );
        let c = WorkerConfig::resolve(&a, &env(&[("HOSTVAR", "h")])).unwrap();
        let got: Vec<(&str, &str)> = c
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(got, vec![("A", "one"), ("HOSTVAR", "h")]);
        let a = WorkerArgs {
            worker_id: Some("w".into()),
            env: vec!["MISSING".into()],
            ..args()
        };
        let e = WorkerConfig::resolve(&a, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MISSING is not set"), "{e}");
    }

    #[test]
    fn volume_specs_are_validated() {
        assert_eq!(
            VolumeSpec::parse("/srv:/data:ro").unwrap(),
            VolumeSpec {
                host: "/srv".into(),
                container: "/data".into(),
                read_only: true
            }
        );
        assert!(!VolumeSpec::parse("cache:/cache").unwrap().read_only);
        for bad in [
            "/srv",
            "relative/path:/x",
            "/a:b",
            "/a:/b:rx",
            "/a:/b:ro:x",
            ":/b",
        ] {
            let e = VolumeSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("HOST:CONTAINER"), "{e}");
        }
    }

    #[test]
    fn api_key_never_shows_in_debug() {
        let a = WorkerArgs {
            worker_id: Some("w".into()),
            api_key: Some("sekrit-123".into()),
            ..args()
        };
        let c = WorkerConfig::resolve(&a, &env(&[])).unwrap();
        assert!(!format!("{c:?}").contains("sekrit-123"));
    }
}
