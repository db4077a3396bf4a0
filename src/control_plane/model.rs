//! The runs API's request and response bodies (serde + schemars; the OpenAPI
//! description in `api-specs/` is generated from these), and the run state
//! machine. The state machine's legal moves are defined here and nowhere else.

use crate::protocol::{AgentConfigSnapshot, InstanceShape, SidecarSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// queued → assigned → claimed → succeeded | failed | cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a connected worker with the run's `worker_host` id.
    Queued,
    /// Sent to one worker connection, not yet claimed by it.
    Assigned,
    /// The worker claimed it and is running it.
    Claimed,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 6] = [
        RunState::Queued,
        RunState::Assigned,
        RunState::Claimed,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Assigned => "assigned",
            RunState::Claimed => "claimed",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }

    /// The only legal moves. A requeue (assigned → queued) happens when the
    /// worker rejects the run or its connection closes before the claim.
    /// Queued → claimed happens when a worker re-announces (or reports on)
    /// the run's execution after its connection closed before the claim was
    /// read and the run went back to the queue (docs/PROTOCOL.md,
    /// `task-reannounce`).
    pub fn can_become(self, next: RunState) -> bool {
        use RunState::*;
        matches!(
            (self, next),
            (Queued, Assigned)
                | (Queued, Claimed)
                | (Queued, Cancelled)
                | (Assigned, Claimed)
                | (Assigned, Queued)
                | (Assigned, Cancelled)
                | (Claimed, Succeeded)
                | (Claimed, Failed)
                | (Claimed, Cancelled)
        )
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown run state {s:?}; expected one of: {}",
                    RunState::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

/// `POST /api/v1/runs`. Mirrors the fields of a protocol `task_assignment`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    /// The id of the worker that must run it; matched exactly (case-sensitive)
    /// against the `worker_id` of connected workers of the caller's team.
    pub worker_host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_sidecars: Vec<SidecarSpec>,
    /// Passed to the task's container. Values are secrets: stored, sent to the
    /// worker, never returned by the API (only their names are).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, crate::secret::Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
    /// The protocol's `agent_config_snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfigSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_oz_args: Vec<String>,
}

/// Env values are secrets: Debug shows names only.
impl std::fmt::Debug for CreateRunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateRunRequest")
            .field("worker_host", &self.worker_host)
            .field("title", &self.title)
            .field("docker_image", &self.docker_image)
            .field("sidecar_image", &self.sidecar_image)
            .field("env_var_names", &self.env_vars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One entry of a run's history: a state change, or a note in the same state
/// (e.g. "cancel requested").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    /// RFC 3339, UTC.
    pub at: String,
    /// The state after this entry.
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A run as the API shows it (`GET /api/v1/runs/{id}`; lists omit `history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    pub id: String,
    pub team_id: i64,
    pub worker_host: String,
    pub state: RunState,
    pub title: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_sidecars: Vec<SidecarSpec>,
    /// Names only; values are secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_var_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
    /// Without `harness_auth_secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfigSnapshot>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
    /// The id of the run's one execution, minted when it is first offered to
    /// a worker and kept for every later offer (after a rejection, a
    /// disconnect or a control plane restart), so a worker recognises a
    /// re-offer of what it already runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The worker's final message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// Why the run is not progressing, when the control plane knows (e.g. no
    /// worker with that id is connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// `GET /api/v1/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
}

/// Every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    /// A sentence saying what went wrong and what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::RunState::{self, *};

    #[test]
    fn terminal_states_are_final_and_requeue_only_before_claim() {
        for s in RunState::ALL {
            for t in RunState::ALL {
                if s.is_terminal() {
                    assert!(!s.can_become(t), "{s} -> {t}");
                }
            }
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
        }
        assert!(Assigned.can_become(Queued));
        assert!(!Claimed.can_become(Queued));
        assert!(!Claimed.can_become(Assigned));
        assert!(!Queued.can_become(Succeeded));
    }

    #[test]
    fn create_request_rejects_unknown_fields_and_hides_env_values_in_debug() {
        let e =
            serde_json::from_str::<super::CreateRunRequest>(r#"{"worker_host":"a","imagee":"x"}"#);
        assert!(e.is_err());
        let r: super::CreateRunRequest =
            serde_json::from_str(r#"{"worker_host":"a","env_vars":{"TOKEN":"s3cret"}}"#).unwrap();
        assert!(!format!("{r:?}").contains("s3cret"));
    }
}
