//! The Docker runtime's configuration: its section of the config file
//! (`backend.docker`) and its flags, resolved into [`Settings`].

use super::image_policy::AllowedImages;
use super::network::Network;
use super::resources::{LimitInputs, Limits};
use super::volume_spec::VolumeSpec;
use oz_foundation::operator_env::EnvEntry;
use oz_foundation::secret::Secret;
use oz_runtime::{InvalidSetting, PullPolicy, DEFAULT_STOP_GRACE};
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
    /// The task container's network, as `docker run --network`: bridge (default), none, host, container:NAME or an existing network's name.
    pub network_mode: Option<String>,
    /// Name servers for task containers, as IP addresses (`docker run --dns`).
    pub dns: Option<Vec<String>>,
    /// DNS search domains for task containers (`docker run --dns-search`).
    pub dns_search: Option<Vec<String>>,
    /// CPUs per task, a decimal as `docker run --cpus` (e.g. 1.5); the most an instance shape may ask for.
    pub cpus: Option<ScalarText>,
    /// Memory per task with the Docker CLI's units b, k, m, g (e.g. 512m); the most an instance shape may ask for.
    pub memory: Option<ScalarText>,
    /// Memory plus swap per task (`docker run --memory-swap`), same units, -1 = unlimited swap; needs memory.
    pub memory_swap: Option<ScalarText>,
    /// Most processes per task (`docker run --pids-limit`), -1 = unlimited.
    pub pids_limit: Option<i64>,
    /// The task container's OOM score adjustment, 1 to 1000 (default 500), so the kernel kills the task before the worker.
    pub oom_score_adj: Option<i64>,
    /// Image patterns tasks may use (task and sidecar images), matched against the normalised reference, as GitLab Runner's allowed_images (e.g. docker.io/library/*, registry.example:5000/team/**). Unset = any image.
    pub allowed_images: Option<Vec<String>>,
    /// Pull policies allowed (always, if-not-present, never); the one in use must be listed. Unset = only the configured one.
    pub allowed_pull_policies: Option<Vec<String>>,
}

/// A scalar key that YAML may give as a number (`cpus: 1.5`,
/// `memory_swap: -1`) or as text (`memory: 512m`), kept as its text for the
/// key's own parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string such as 512m")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for ScalarText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ScalarText".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number"] })
    }
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
    /// `network_mode`, `dns`, `dns_search`.
    pub network: Network,
    /// `cpus`, `memory`, `memory_swap`, `pids_limit`.
    pub limits: Limits,
    /// `HostConfig.OomScoreAdj` of task containers.
    pub oom_score_adj: i64,
    pub allowed_images: AllowedImages,
    /// The configured policy first when `allowed_pull_policies` is unset.
    pub allowed_pull_policies: Vec<PullPolicy>,
}

/// Task containers' `OomScoreAdj` unless configured: well above the
/// worker's own (0, or lower where it may lower it), so under memory
/// pressure the kernel picks a task before the worker.
pub const DEFAULT_OOM_SCORE_ADJ: i64 = 500;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cleanup: true,
            pull_policy: PullPolicy::Always,
            stop_grace_period: DEFAULT_STOP_GRACE,
            volumes: Vec::new(),
            env: Vec::new(),
            network: Network::default(),
            limits: Limits::default(),
            oom_score_adj: DEFAULT_OOM_SCORE_ADJ,
            allowed_images: AllowedImages::default(),
            allowed_pull_policies: vec![PullPolicy::Always],
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
    ) -> Result<Settings, InvalidSetting> {
        let (pull_policy, policy_source) = match (&flags.pull_policy, &section.pull_policy) {
            (Some(p), _) => (PullPolicy::parse(p, "--pull-policy")?, "--pull-policy"),
            (None, Some(p)) => (
                PullPolicy::parse(p, "backend.docker.pull_policy")?,
                "backend.docker.pull_policy",
            ),
            (None, None) => (PullPolicy::Always, "the default"),
        };
        let allowed_pull_policies = super::image_policy::check_pull_policy(
            section.allowed_pull_policies.as_deref(),
            pull_policy,
            policy_source,
        )?;
        let allowed_images =
            AllowedImages::resolve(section.allowed_images.as_deref().unwrap_or_default())?;
        let network = Network::resolve(
            section.network_mode.as_deref(),
            section.dns.as_deref().unwrap_or_default(),
            section.dns_search.as_deref().unwrap_or_default(),
        )?;
        let text = |v: &Option<ScalarText>| v.as_ref().map(|t| t.0.clone());
        let (cpus, memory, memory_swap) = (
            text(&section.cpus),
            text(&section.memory),
            text(&section.memory_swap),
        );
        let limits = LimitInputs {
            cpus: cpus.as_deref(),
            memory: memory.as_deref(),
            memory_swap: memory_swap.as_deref(),
            pids_limit: section.pids_limit,
        }
        .resolve()?;
        let oom_score_adj = match section.oom_score_adj {
            None => DEFAULT_OOM_SCORE_ADJ,
            Some(n) if (1..=1000).contains(&n) => n,
            Some(n) => {
                return Err(InvalidSetting::new(
                    "backend.docker.oom_score_adj",
                    format!(
                        "{n} is out of range; use 1 to 1000 (default {DEFAULT_OOM_SCORE_ADJ}): \
                         a positive value makes the kernel's OOM killer pick a task before the worker"
                    ),
                ))
            }
        };
        let stop_grace_period = match (&flags.stop_grace_period, &section.stop_grace_period) {
            (Some(d), _) => oz_foundation::duration::parse_duration(d)
                .map_err(|e| InvalidSetting::new("--stop-grace-period", e.to_string()))?,
            (None, Some(d)) => oz_foundation::duration::parse_duration(d).map_err(|e| {
                InvalidSetting::new("backend.docker.stop_grace_period", e.to_string())
            })?,
            (None, None) => DEFAULT_STOP_GRACE,
        };
        let file_volumes = section.volumes.iter().flatten().enumerate().map(|(i, v)| {
            VolumeSpec::parse(v).map_err(|e| {
                InvalidSetting::new(format!("backend.docker.volumes[{i}]"), e.to_string())
            })
        });
        let flag_volumes = flags.volumes.iter().map(|v| {
            VolumeSpec::parse(v).map_err(|e| InvalidSetting::new("-v/--volumes", e.to_string()))
        });
        let volumes = file_volumes
            .chain(flag_volumes)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            cleanup,
            pull_policy,
            stop_grace_period,
            volumes,
            env,
            network,
            limits,
            oom_score_adj,
            allowed_images,
            allowed_pull_policies,
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
        assert_eq!(e.key, "backend.docker.pull_policy", "{e}");
    }
}
