//! The kubernetes runtime's configuration: its section of the config file
//! (`backend.kubernetes`, every key of the Go worker's `KubernetesConfig`
//! with the same defaults) resolved into [`Settings`].
//!
//! Scheduling (service account, image pull secrets, node selector,
//! tolerations, resources, the task's declarative environment) lives only in
//! `pod_template`, as in the Go worker since it dropped its legacy keys; a
//! file that still has one of those keys is refused with the way to move it.

use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The Go worker's default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The Go worker's default preflight image.
pub const DEFAULT_PREFLIGHT_IMAGE: &str = "busybox:1.36";
/// The Go worker's `ttl_seconds_after_finished` default: one day.
pub const DEFAULT_TTL_SECONDS_AFTER_FINISHED: i32 = 24 * 60 * 60;
/// The Go worker's `unschedulable_timeout` default.
pub const DEFAULT_UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `backend.kubernetes` in the config file. Unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    /// Namespace of the task Jobs (default "default").
    pub namespace: Option<String>,
    /// Path of a kubeconfig file; else the in-cluster service account, else KUBECONFIG, else ~/.kube/config.
    pub kubeconfig: Option<String>,
    /// Task image when the assignment names none (else ubuntu:22.04).
    pub default_image: Option<String>,
    /// Always, IfNotPresent (default) or Never: Kubernetes' imagePullPolicy for every container the worker adds.
    pub image_pull_policy: Option<String>,
    /// Mount sidecars as read-only image volumes instead of copying them in init containers (needs Kubernetes' ImageVolume support).
    pub use_image_volumes: Option<bool>,
    /// Image of the start-up preflight Job (default busybox:1.36).
    pub preflight_image: Option<String>,
    /// Replaces the orchestrator's agent sidecar image (mounted at /agent).
    pub sidecar_image: Option<String>,
    /// Harness name (e.g. "claude") to the image of its CLI sidecar, mounted at /mnt/<harness>-cli-sidecar.
    pub coding_cli_sidecars: Option<BTreeMap<String, String>>,
    /// Run with `sh -c` in an init container `setup` (task image, task environment) before the agent.
    pub setup_command: Option<String>,
    /// Run with `sh -c` as the task container's preStop hook.
    pub teardown_command: Option<String>,
    /// Labels added to every Job and Pod.
    pub extra_labels: Option<BTreeMap<String, String>>,
    /// Annotations added to every Job and Pod.
    pub extra_annotations: Option<BTreeMap<String, String>>,
    /// The Job's activeDeadlineSeconds (none by default).
    pub active_deadline_seconds: Option<i64>,
    /// The Job's ttlSecondsAfterFinished (default 86400; none when cleanup is off).
    pub ttl_seconds_after_finished: Option<i32>,
    /// sizeLimit of the workspace emptyDir (a Kubernetes quantity, e.g. "10Gi").
    pub workspace_size_limit: Option<String>,
    /// How long a Pod may stay unschedulable before the task fails (Go duration, default "30s"; "0s" = wait forever).
    pub unschedulable_timeout: Option<String>,
    /// A PodSpec the task Pods start from (service account, pull secrets, node selector, tolerations, resources, env).
    pub pod_template: Option<serde_json::Value>,
    /// Requests and limits of the preflight Job's containers (default requests 10m/16Mi, limits 100m/64Mi).
    pub preflight_resources: Option<serde_json::Value>,
    /// Refused: move into pod_template.serviceAccountName.
    #[schemars(skip)]
    pub service_account: Option<serde_json::Value>,
    /// Refused: move into pod_template.imagePullSecrets.
    #[schemars(skip)]
    pub image_pull_secret: Option<serde_json::Value>,
    /// Refused: move into pod_template.nodeSelector.
    #[schemars(skip)]
    pub node_selector: Option<serde_json::Value>,
    /// Refused: move into pod_template.tolerations.
    #[schemars(skip)]
    pub tolerations: Option<serde_json::Value>,
    /// Refused: move into the pod_template's `task` container resources.
    #[schemars(skip)]
    pub resources: Option<serde_json::Value>,
    /// Refused: move into pod_template.terminationGracePeriodSeconds.
    #[schemars(skip)]
    pub termination_grace_period_seconds: Option<serde_json::Value>,
    /// Refused: move into the pod_template's `task` container env.
    #[schemars(skip)]
    pub environment: Option<serde_json::Value>,
}

/// Kubernetes' `imagePullPolicy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    /// The value as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Everything the kubernetes runtime needs from the operator, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub kubeconfig: Option<String>,
    pub default_image: Option<String>,
    pub image_pull_policy: ImagePullPolicy,
    pub use_image_volumes: bool,
    pub preflight_image: String,
    pub sidecar_image: Option<String>,
    pub coding_cli_sidecars: BTreeMap<String, String>,
    pub setup_command: Option<String>,
    pub teardown_command: Option<String>,
    pub extra_labels: BTreeMap<String, String>,
    pub extra_annotations: BTreeMap<String, String>,
    pub active_deadline_seconds: Option<i64>,
    /// `None` keeps finished Jobs until someone deletes them (cleanup off).
    pub ttl_seconds_after_finished: Option<i32>,
    pub workspace_size_limit: Option<Quantity>,
    /// `None`: an unschedulable Pod waits forever.
    pub unschedulable_timeout: Option<Duration>,
    pub pod_template: Option<PodSpec>,
    pub preflight_resources: ResourceRequirements,
    /// Remove what a task leaves (`cleanup`, `--no-cleanup`): a succeeded
    /// task's Job at once, a failed one's after its TTL.
    pub cleanup: bool,
}

/// A value of `backend.kubernetes` that cannot be used. Displays as
/// `backend.kubernetes.<key>: <problem and fix>`, the shape the config
/// file's error locator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// The key path under `backend.kubernetes`, e.g. `pod_template`.
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend.kubernetes.{}: {}", self.key, self.problem)
    }
}

impl std::error::Error for SettingsError {}

fn error(key: &str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// Parses a Go duration (`30s`, `1m30s`); the caller's parser is passed in
/// so this crate shares the worker's one duration grammar.
pub type DurationParser = fn(&str) -> Result<Duration, oz_foundation::duration::DurationError>;

impl Settings {
    /// Resolves the section; `cleanup` is the worker's `cleanup` setting.
    /// Errors name the key and how to fix it.
    pub fn resolve(
        section: &KubernetesSection,
        cleanup: bool,
        parse_duration: DurationParser,
    ) -> Result<Settings, SettingsError> {
        refuse_legacy_keys(section)?;
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let image_pull_policy = match section.image_pull_policy.as_deref() {
            None | Some("") | Some("IfNotPresent") => ImagePullPolicy::IfNotPresent,
            Some("Always") => ImagePullPolicy::Always,
            Some("Never") => ImagePullPolicy::Never,
            Some(other) => {
                return Err(error(
                    "image_pull_policy",
                    format!("{other:?} is not a Kubernetes imagePullPolicy; use Always, IfNotPresent or Never"),
                ))
            }
        };
        for (key, value) in [
            ("preflight_image", &section.preflight_image),
            ("default_image", &section.default_image),
            ("sidecar_image", &section.sidecar_image),
        ] {
            if value
                .as_deref()
                .is_some_and(|v| v.contains(char::is_whitespace))
            {
                return Err(error(key, "an image reference has no whitespace"));
            }
        }
        if let Some(n) = section.active_deadline_seconds {
            if n <= 0 {
                return Err(error(
                    "active_deadline_seconds",
                    format!("{n} is not a positive number of seconds; leave the key out for no deadline"),
                ));
            }
        }
        if let Some(n) = section.ttl_seconds_after_finished {
            if n < 0 {
                return Err(error(
                    "ttl_seconds_after_finished",
                    format!("{n} is negative; use 0 to delete finished Jobs at once"),
                ));
            }
        }
        let workspace_size_limit = match nonempty(&section.workspace_size_limit) {
            Some(q) => {
                Some(parse_quantity(&q).map_err(|p| error("workspace_size_limit", p.to_string()))?)
            }
            None => None,
        };
        let unschedulable_timeout = match nonempty(&section.unschedulable_timeout) {
            Some(d) => {
                let d = parse_duration(&d)
                    .map_err(|e| error("unschedulable_timeout", e.to_string()))?;
                (!d.is_zero()).then_some(d)
            }
            None => Some(DEFAULT_UNSCHEDULABLE_TIMEOUT),
        };
        let pod_template = match &section.pod_template {
            Some(value) => Some(
                serde_json::from_value::<PodSpec>(value.clone())
                    .map_err(|e| error("pod_template", format!("not a Kubernetes PodSpec: {e}")))?,
            ),
            None => None,
        };
        let preflight_resources = match &section.preflight_resources {
            Some(value) => serde_json::from_value::<ResourceRequirements>(value.clone())
                .map_err(|e| {
                    error(
                        "preflight_resources",
                        format!("not Kubernetes ResourceRequirements ({{requests: {{cpu, memory}}, limits: {{…}}}}): {e}"),
                    )
                })?,
            None => default_preflight_resources(),
        };
        // The Go worker sets its own labels over `extra_labels`, silently; a
        // Go config that names one still starts, and is told.
        for name in section.extra_labels.iter().flat_map(|m| m.keys()) {
            if crate::names::WORKER_LABELS.contains(&name.as_str()) {
                tracing::warn!(
                    "backend.kubernetes.extra_labels.{name} is ignored: the worker sets the {name} label itself; remove it from extra_labels"
                );
            }
        }
        if let Some(map) = &section.coding_cli_sidecars {
            for (harness, image) in map {
                if harness.trim().is_empty() || image.trim().is_empty() {
                    return Err(error(
                        "coding_cli_sidecars",
                        "each entry maps a harness name (e.g. claude) to an image; neither may be empty",
                    ));
                }
            }
        }
        Ok(Settings {
            namespace: nonempty(&section.namespace).unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
            kubeconfig: nonempty(&section.kubeconfig),
            default_image: nonempty(&section.default_image),
            image_pull_policy,
            use_image_volumes: section.use_image_volumes.unwrap_or(false),
            preflight_image: nonempty(&section.preflight_image)
                .unwrap_or_else(|| DEFAULT_PREFLIGHT_IMAGE.into()),
            sidecar_image: nonempty(&section.sidecar_image),
            coding_cli_sidecars: section.coding_cli_sidecars.clone().unwrap_or_default(),
            setup_command: nonempty(&section.setup_command),
            teardown_command: nonempty(&section.teardown_command),
            extra_labels: section.extra_labels.clone().unwrap_or_default(),
            extra_annotations: section.extra_annotations.clone().unwrap_or_default(),
            active_deadline_seconds: section.active_deadline_seconds,
            ttl_seconds_after_finished: if cleanup {
                Some(
                    section
                        .ttl_seconds_after_finished
                        .unwrap_or(DEFAULT_TTL_SECONDS_AFTER_FINISHED),
                )
            } else {
                None
            },
            workspace_size_limit,
            unschedulable_timeout,
            pod_template,
            preflight_resources,
            cleanup,
        })
    }
}

/// The Go worker's preflight container resources.
pub fn default_preflight_resources() -> ResourceRequirements {
    let list = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])
    };
    ResourceRequirements {
        requests: Some(list("10m", "16Mi")),
        limits: Some(list("100m", "64Mi")),
        ..Default::default()
    }
}

fn refuse_legacy_keys(section: &KubernetesSection) -> Result<(), SettingsError> {
    let legacy = [
        (
            "service_account",
            section.service_account.is_some(),
            "pod_template.serviceAccountName",
        ),
        (
            "image_pull_secret",
            section.image_pull_secret.is_some(),
            "pod_template.imagePullSecrets: [{name: …}]",
        ),
        (
            "node_selector",
            section.node_selector.is_some(),
            "pod_template.nodeSelector",
        ),
        (
            "tolerations",
            section.tolerations.is_some(),
            "pod_template.tolerations",
        ),
        (
            "resources",
            section.resources.is_some(),
            "pod_template.containers: [{name: task, resources: …}]",
        ),
        (
            "termination_grace_period_seconds",
            section.termination_grace_period_seconds.is_some(),
            "pod_template.terminationGracePeriodSeconds",
        ),
        (
            "environment",
            section.environment.is_some(),
            "pod_template.containers: [{name: task, env: […]}] (or -e flags)",
        ),
    ];
    match legacy.iter().find(|(_, present, _)| *present) {
        Some((key, _, into)) => Err(error(
            key,
            format!("the Go worker moved this key into pod_template; write it as {into}"),
        )),
        None => Ok(()),
    }
}

/// Checks a Kubernetes quantity (`10Gi`, `500M`, `1.5`, `100m`): a decimal
/// number with an optional binary (Ki…Ei), decimal (n, u, m, k, M…E) or
/// exponent suffix, as `k8s.io/apimachinery/pkg/api/resource` accepts.
pub fn parse_quantity(text: &str) -> Result<Quantity, NotAQuantity> {
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let number_ok = {
        let n = number.strip_prefix(['+', '-']).unwrap_or(number);
        !n.is_empty()
            && n.chars().filter(|&c| c == '.').count() <= 1
            && n.chars().all(|c| c.is_ascii_digit() || c == '.')
            && n != "."
    };
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || (suffix.starts_with(['e', 'E'])
        && suffix.len() > 1
        && suffix[1..]
            .strip_prefix(['+', '-'])
            .unwrap_or(&suffix[1..])
            .chars()
            .all(|c| c.is_ascii_digit()));
    if number_ok && suffix_ok && !number.starts_with('-') {
        Ok(Quantity(t.to_string()))
    } else {
        Err(NotAQuantity(text.to_owned()))
    }
}

/// Text that is not a Kubernetes quantity ([`parse_quantity`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a Kubernetes quantity; write a number with an optional suffix, e.g. 10Gi or 500M"
)]
pub struct NotAQuantity(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker's own parser, as the binary passes it.
    fn dur(s: &str) -> Result<Duration, oz_foundation::duration::DurationError> {
        oz_foundation::duration::parse_duration(s)
    }

    fn section(yaml: serde_json::Value) -> KubernetesSection {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn defaults_are_the_go_workers() {
        let s = Settings::resolve(&KubernetesSection::default(), true, dur).unwrap();
        assert_eq!(s.namespace, "default");
        assert_eq!(s.image_pull_policy, ImagePullPolicy::IfNotPresent);
        assert!(!s.use_image_volumes);
        assert_eq!(s.preflight_image, "busybox:1.36");
        assert_eq!(s.ttl_seconds_after_finished, Some(86400));
        assert_eq!(s.unschedulable_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.active_deadline_seconds, None);
        let r = s.preflight_resources;
        assert_eq!(r.requests.unwrap()["memory"], Quantity("16Mi".into()));
        assert_eq!(r.limits.unwrap()["cpu"], Quantity("100m".into()));
    }

    #[test]
    fn no_ttl_without_cleanup_and_zero_unschedulable_timeout_waits_forever() {
        let s = Settings::resolve(
            &section(serde_json::json!({"ttl_seconds_after_finished": 60, "unschedulable_timeout": "0s"})),
            false,
            dur,
        )
        .unwrap();
        assert_eq!(s.ttl_seconds_after_finished, None);
        assert_eq!(s.unschedulable_timeout, None);
    }

    #[test]
    fn bad_values_name_their_key_and_the_fix() {
        let cases = [
            (serde_json::json!({"image_pull_policy": "always"}), "backend.kubernetes.image_pull_policy: \"always\" is not"),
            (serde_json::json!({"workspace_size_limit": "ten gigs"}), "backend.kubernetes.workspace_size_limit:"),
            (serde_json::json!({"unschedulable_timeout": "soon"}), "backend.kubernetes.unschedulable_timeout: invalid duration"),
            (serde_json::json!({"active_deadline_seconds": 0}), "backend.kubernetes.active_deadline_seconds: 0 is not a positive"),
            (serde_json::json!({"pod_template": {"containers": "task"}}), "backend.kubernetes.pod_template: not a Kubernetes PodSpec"),
            (serde_json::json!({"node_selector": {"a": "b"}}), "backend.kubernetes.node_selector: the Go worker moved this key into pod_template; write it as pod_template.nodeSelector"),
        ];
        for (yaml, expected) in cases {
            let e = Settings::resolve(&section(yaml.clone()), true, dur)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(expected), "{yaml}: {e}");
        }
    }

    #[test]
    fn pod_template_and_preflight_resources_are_kubernetes_types() {
        let s = Settings::resolve(
            &section(serde_json::json!({
                "pod_template": {
                    "serviceAccountName": "oz-tasks",
                    "nodeSelector": {"pool": "agents"},
                    "containers": [{"name": "task", "resources": {"limits": {"memory": "4Gi"}}}]
                },
                "preflight_resources": {"requests": {"cpu": "5m"}}
            })),
            true,
            dur,
        )
        .unwrap();
        let t = s.pod_template.unwrap();
        assert_eq!(t.service_account_name.as_deref(), Some("oz-tasks"));
        assert_eq!(t.containers[0].name, "task");
        assert_eq!(
            s.preflight_resources.requests.unwrap()["cpu"],
            Quantity("5m".into())
        );
    }

    #[test]
    fn quantities_follow_kubernetes_grammar() {
        for ok in ["10Gi", "500M", "1.5", "100m", "1e3", "0"] {
            assert!(parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Gi", "10 Gi", "10GB", "-1Gi", "1..5"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_go_config_naming_the_workers_own_labels_still_starts() {
        // The Go worker lets extra_labels name its labels and overrides
        // them; labels that merely start with oz- are the operator's.
        let yaml = serde_json::json!({"extra_labels": {"oz-task-id": "x", "oz-team": "infra"}});
        let s = Settings::resolve(&section(yaml), true, dur).expect("accepted");
        assert_eq!(s.extra_labels["oz-team"], "infra");
        let labels = crate::names::task_labels(&s.extra_labels, "w1", "t1", None);
        assert_eq!(labels["oz-task-id"], "t1");
        assert_eq!(labels["oz-team"], "infra");
    }
}
