//! Start-up checks of the Docker settings that only the daemon can answer:
//! the user-defined network of `backend.docker.network_mode` exists, and
//! `backend.docker.cpus` is within the daemon host's CPUs (dockerd refuses
//! a larger `NanoCpus` at create time). A failed check stops the worker
//! before it takes any task, instead of failing every task.

use super::network::NetworkMode;
use super::resources::format_cpus;
use super::DockerRuntime;

/// Why a start-up check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupError {
    /// A setting the daemon shows to be wrong: the message starts with its
    /// key path (exit status 2, as any bad setting).
    Setting(String),
    /// The daemon could not answer (exit status 1, as an unreachable daemon).
    Daemon(String),
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupError::Setting(m) | StartupError::Daemon(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StartupError {}

/// Runs the checks once, before the worker connects, and logs the policy
/// in force.
pub async fn verify(rt: &DockerRuntime) -> Result<(), StartupError> {
    let d = &rt.docker;
    let host = &d.endpoint().host;
    if let NetworkMode::Named(name) = &rt.settings.network.mode {
        match d.network_inspect(name, &Default::default()).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                return Err(StartupError::Setting(format!(
                    "backend.docker.network_mode: network {name:?} does not exist on the Docker daemon at {host}; \
                     create it (docker network create {name}) or use bridge, none, host or container:NAME"
                )))
            }
            Err(e) => {
                return Err(StartupError::Daemon(format!(
                    "cannot check backend.docker.network_mode {name:?} on the Docker daemon at {host}: {e}"
                )))
            }
        }
    }
    if let Some(nano) = rt.settings.limits.nano_cpus {
        let info = d.system_info().await.map_err(|e| {
            StartupError::Daemon(format!(
                "cannot check backend.docker.cpus against the Docker daemon at {host}: {e}"
            ))
        })?;
        if let Some(ncpu) = info.ncpu.filter(|n| *n > 0) {
            if nano > ncpu.saturating_mul(1_000_000_000) {
                return Err(StartupError::Setting(format!(
                    "backend.docker.cpus: {} is more than the {ncpu} CPUs of the Docker daemon's host ({host}), \
                     which the daemon refuses; use at most {ncpu}",
                    format_cpus(nano)
                )));
            }
        }
    }
    tracing::info!("task containers: {}", describe(&rt.settings));
    Ok(())
}

/// One line of the policy in force, for the start-up log.
fn describe(s: &super::Settings) -> String {
    use super::resources::format_bytes;
    let unset = || "unlimited".to_string();
    let bytes = |v: Option<i64>| match v {
        Some(-1) => "unlimited".to_string(),
        Some(b) => format_bytes(b),
        None => "unset".to_string(),
    };
    let policies: Vec<&str> = s
        .allowed_pull_policies
        .iter()
        .map(|p| super::image_policy::policy_name(*p))
        .collect();
    format!(
        "network_mode {}, cpus {}, memory {}, memory_swap {}, pids_limit {}, oom_score_adj {}, allowed_images {}, allowed_pull_policies [{}]",
        s.network.mode.host_config_value(),
        s.limits.nano_cpus.map(format_cpus).unwrap_or_else(unset),
        s.limits.memory.map(format_bytes).unwrap_or_else(unset),
        bytes(s.limits.memory_swap),
        s.limits.pids_limit.map(|n| n.to_string()).unwrap_or_else(unset),
        s.oom_score_adj,
        if s.allowed_images.is_restricted() {
            s.allowed_images.describe()
        } else {
            "any".to_string()
        },
        policies.join(", ")
    )
}
