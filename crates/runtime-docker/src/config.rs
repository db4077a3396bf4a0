//! The Docker runtime's configuration: its section of the config file
//! (`backend.docker`) and its flags, resolved into [`Settings`].

use super::volume_spec::VolumeSpec;
use oz_foundation::operator_env::EnvEntry;
use oz_foundation::secret::Secret;
use oz_runtime::{PullPolicy, DEFAULT_STOP_GRACE};
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// `backend.docker` in the config file. Unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerSection {
    /// Bind mounts for every task: HOST:CONTAINER[:OPTIONS]. `-v` flags are appended.
    pub volumes: Option<Vec<String>>,
    /// Environment for every task; an entry without `value` inherits the worker's own. `-e` flags overlay it.
    pub environment: Option<Vec<EnvEntry>>,
    /// always (default), if-not-present or never.
    pub pull_policy: Option<String>,
    /// Time between SIGTERM and SIGKILL when a task is stopped (e.g. "10s").
    pub stop_grace_period: Option<String>,
}

/// The Docker runtime's flags, as given (`None`/empty = not given).
#[derive(Debug, Clone, Default)]
pub struct DockerFlags {
    pub volumes: Vec<String>,
    pub pull_policy: Option<String>,
    pub stop_grace_period: Option<String>,
}

/// Everything the Docker runtime needs from the operator, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Remove task containers after they end (`cleanup`, `--no-cleanup`).
    pub cleanup: bool,
    pub pull_policy: PullPolicy,
    pub stop_grace_period: Duration,
    /// The file's volumes, then the flags'.
    pub volumes: Vec<VolumeSpec>,
    /// The operator's environment, appended to the task's (same name: the
    /// operator's value wins).
    pub env: Vec<(String, Secret)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cleanup: true,
            pull_policy: PullPolicy::Always,
            stop_grace_period: DEFAULT_STOP_GRACE,
            volumes: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Settings {
    /// Flag > file > default; volumes are the file's then the flags'
    /// (as the Go worker appends them). Errors name the flag or key.
    pub fn resolve(
        section: &DockerSection,
        flags: &DockerFlags,
        cleanup: bool,
        env: Vec<(String, Secret)>,
    ) -> Result<Settings, String> {
        let pull_policy = match (&flags.pull_policy, &section.pull_policy) {
            (Some(p), _) => PullPolicy::parse(p, "--pull-policy")?,
            (None, Some(p)) => PullPolicy::parse(p, "backend.docker.pull_policy")?,
            (None, None) => PullPolicy::Always,
        };
        let stop_grace_period = match (&flags.stop_grace_period, &section.stop_grace_period) {
            (Some(d), _) => oz_foundation::duration::parse_duration(d)
                .map_err(|e| format!("--stop-grace-period: {e}"))?,
            (None, Some(d)) => oz_foundation::duration::parse_duration(d)
                .map_err(|e| format!("backend.docker.stop_grace_period: {e}"))?,
            (None, None) => DEFAULT_STOP_GRACE,
        };
        let file_volumes = section.volumes.iter().flatten().enumerate().map(|(i, v)| {
            VolumeSpec::parse(v).map_err(|e| format!("backend.docker.volumes[{i}]: {e}"))
        });
        let flag_volumes = flags
            .volumes
            .iter()
            .map(|v| VolumeSpec::parse(v).map_err(|e| format!("-v/--volumes: {e}")));
        let volumes = file_volumes
            .chain(flag_volumes)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            cleanup,
            pull_policy,
            stop_grace_period,
            volumes,
            env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_volumes_append() {
        let section = DockerSection {
            volumes: Some(vec!["/a:/a".into()]),
            pull_policy: Some("never".into()),
            stop_grace_period: Some("3s".into()),
            ..Default::default()
        };
        let flags = DockerFlags {
            volumes: vec!["/b:/b:ro".into()],
            pull_policy: Some("if-not-present".into()),
            stop_grace_period: None,
        };
        let s = Settings::resolve(&section, &flags, true, vec![]).unwrap();
        assert_eq!(s.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(s.stop_grace_period, Duration::from_secs(3));
        let targets: Vec<&str> = s.volumes.iter().map(|v| v.target.as_str()).collect();
        assert_eq!(targets, ["/a", "/b"]);
        let e = Settings::resolve(
            &DockerSection {
                pull_policy: Some("sometimes".into()),
                ..Default::default()
            },
            &DockerFlags::default(),
            true,
            vec![],
        )
        .unwrap_err();
        assert!(e.contains("backend.docker.pull_policy"), "{e}");
    }
}
