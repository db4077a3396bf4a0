//! Message bodies, field names exactly as on the wire. Optional fields are
//! omitted when unset; unknown fields are ignored (serde's default), so a newer
//! server can add fields without breaking us.

use crate::FailureReason;
use oz_foundation::secret::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Server → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ServerMessage {
    TaskAssignment(Box<TaskAssignment>),
    TaskCancellation(TaskCancellation),
    /// Extension `report-ack` (docs/PROTOCOL.md): the server has durably
    /// recorded a terminal report. Only sent when offered at the handshake.
    ReportAck(ReportAck),
}

/// Worker → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum WorkerMessage {
    TaskClaimed(TaskClaimed),
    TaskRejected(TaskRejected),
    TaskCompleted(TaskCompleted),
    TaskFailed(TaskFailed),
    /// Extension `task-output` (docs/PROTOCOL.md): a chunk of a running
    /// task's output. Only sent when the server offered it at the handshake.
    TaskOutput(TaskOutput),
    /// Extension `worker-state` (docs/PROTOCOL.md): the worker's own state
    /// (draining). Only sent when the server offered it at the handshake.
    WorkerState(WorkerState),
}

impl WorkerMessage {
    pub fn task_id(&self) -> &str {
        match self {
            WorkerMessage::TaskClaimed(m) => &m.task_id,
            WorkerMessage::TaskRejected(m) => &m.task_id,
            WorkerMessage::TaskCompleted(m) => &m.task_id,
            WorkerMessage::TaskFailed(m) => &m.task_id,
            WorkerMessage::TaskOutput(m) => &m.task_id,
            // About the worker, not a task.
            WorkerMessage::WorkerState(_) => "",
        }
    }

    /// The execution this message is about, when it names one.
    pub fn execution_id(&self) -> Option<&str> {
        match self {
            WorkerMessage::TaskClaimed(m) => m.execution_id.as_deref(),
            WorkerMessage::TaskRejected(m) => m.execution_id.as_deref(),
            WorkerMessage::TaskCompleted(m) => m.execution_id.as_deref(),
            WorkerMessage::TaskFailed(m) => m.execution_id.as_deref(),
            WorkerMessage::TaskOutput(m) => m.execution_id.as_deref(),
            WorkerMessage::WorkerState(_) => None,
        }
    }

    /// The wire name of the message type (`task_claimed`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerMessage::TaskClaimed(_) => "task_claimed",
            WorkerMessage::TaskRejected(_) => "task_rejected",
            WorkerMessage::TaskCompleted(_) => "task_completed",
            WorkerMessage::TaskFailed(_) => "task_failed",
            WorkerMessage::TaskOutput(_) => "task_output",
            WorkerMessage::WorkerState(_) => "worker_state",
        }
    }

    /// Completed and failed end a task; exactly one of them is sent per claim.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_)
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskAssignment {
    pub task_id: String,
    /// Identifies this execution, distinct from the logical run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_image: Option<String>,
    /// Values are secrets: they never reach `Debug`, logs or errors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, Secret>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_sidecars: Vec<SidecarSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_oz_args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub task_definition: TaskDefinition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config_snapshot: Option<AgentConfigSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_conversation_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskDefinition {
    #[serde(default)]
    pub prompt: String,
}

/// The reference server capitalises these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Owner {
    #[serde(rename = "Type")]
    pub kind: OwnerType,
    #[serde(rename = "Id")]
    pub id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OwnerType {
    User,
    Team,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentConfigSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_spec: Option<String>,
    /// Server name → raw JSON configuration, passed to the agent verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_use_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_minutes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<Harness>,
    /// Opaque to the worker; contains secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_auth_secrets: Option<Secret<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_providers: Option<InferenceProviders>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sharing: Option<SessionSharing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_upload_timeout_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_script_timeout_secs: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Harness {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InferenceProviders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsInference>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AwsInference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionSharing {
    /// "VIEWER" or "EDITOR".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_access: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SidecarSpec {
    pub image: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_write: bool,
}

/// Absent or non-positive values mean unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceShape {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCancellation {
    pub task_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskClaimed {
    pub task_id: String,
    pub worker_id: String,
    /// Extension `task-reannounce` only: which execution is claimed. Never
    /// sent to a server that did not offer the extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRejected {
    pub task_id: String,
    pub reason: String,
    /// Extension `task-reannounce` only: set when the worker releases an
    /// assignment it received on an earlier connection and could not claim
    /// (that connection closed first), so a restarted server offers the run
    /// again at once instead of waiting for a re-announce. Plain rejections
    /// (at capacity) never name an execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCompleted {
    pub task_id: String,
    pub message: String,
    /// `CANCELLED` when the task was cancelled on the server's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_state: Option<String>,
    /// The assignment's execution id, when it had one (the Go worker's PR #139).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskFailed {
    pub task_id: String,
    pub message: String,
    pub failure_reason: FailureReason,
    /// Process exit status, signals as 128+N; omitted when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The assignment's execution id, when it had one (the Go worker's PR #139).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Structured facts about the failure (the Go worker's PR #139; only
    /// the kubernetes runtime sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<Box<crate::FailureDetails>>,
}

/// Extension `report-ack`: the terminal report for this task (and execution,
/// when the report named one) is durably recorded; the worker may forget it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportAck {
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

/// Which output stream a [`TaskOutput`] chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Extension `task-output`: a chunk of a running task's output, in order.
/// `data` is UTF-8 (invalid bytes replaced). `dropped_bytes` counts output
/// the worker dropped before this chunk because the link was slower than
/// the task (bounded buffer); it is omitted when zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOutput {
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    pub stream: OutputStream,
    pub data: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_bytes: u64,
}

/// Extension `worker-state`: what the worker says about itself. `draining`:
/// it finishes the tasks it runs, rejects every new one (as at capacity)
/// and exits when they have ended (SIGQUIT, or `--disconnect-after-task`
/// after its one task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerState {
    pub draining: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub const TASK_STATE_CANCELLED: &str = "CANCELLED";

/// Both directions, for the published schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ProtocolMessages {
    Server(ServerMessage),
    Worker(WorkerMessage),
}
