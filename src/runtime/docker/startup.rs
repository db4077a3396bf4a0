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
    Ok(())
}
