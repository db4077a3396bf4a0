//! `failure_details` on `task_failed`: structured, bounded facts about a
//! failure, one member per backend. Only `kubernetes` exists (the Go
//! worker's PR #139, `schema_version` 1); the server keeps at most 32 KiB.
//! A peer that does not know a member ignores it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `failure_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FailureDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesFailureDetails>,
}

/// What the kubernetes runtime saw of a failed task: names, uids, phases,
/// reasons, exit codes and times; never a namespace, a node or a free-form
/// message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesFailureDetails {
    pub schema_version: u32,
    /// `pod_watch`, `job_watch` or `safety_poll`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub observation_source: String,
    /// RFC 3339, UTC.
    pub observed_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<KubernetesJobDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<KubernetesPodDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KubernetesContainerDetails>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<KubernetesEventDetails>,
    /// Something was cut to fit the caps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A Kubernetes condition, without its free-form message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesCondition {
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The task's Job and its terminal conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesJobDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<KubernetesCondition>,
}

/// The task's Pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesPodDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<KubernetesCondition>,
}

/// The container a failure is blamed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesContainerDetails {
    /// "init container" or "container".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// "waiting" or "terminated".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub termination_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_exit_code: Option<i32>,
    /// The exit status with signals as 128+N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalized_exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// A Warning or `Killing` event, without its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesEventDetails {
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_observed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observed_at: Option<String>,
}
