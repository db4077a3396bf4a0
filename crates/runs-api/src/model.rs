//! The HTTP API's request and response bodies (runs, their output,
//! schedules, workers; serde + schemars, and the OpenAPI description in
//! `api-specs/` is generated from these), and the run state machine. The
//! state machine's legal moves are defined here and nowhere else.

use oz_protocol::{AgentConfigSnapshot, InstanceShape, OutputStream, SidecarSpec};
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

/// A run state name that is not one of [`RunState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state {0:?}; expected one of: {expected}", expected = RunState::ALL.map(|s| s.as_str()).join(", "))]
pub struct UnknownRunState(pub String);

impl std::str::FromStr for RunState {
    type Err = UnknownRunState;
    fn from_str(s: &str) -> Result<Self, UnknownRunState> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownRunState(s.to_string()))
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
    pub env_vars: BTreeMap<String, oz_foundation::secret::Secret>,
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
    /// The schedule that created it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// The schedule's slot it was created for (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    /// Bytes of live output the control plane received for it, in all
    /// (`GET /api/v1/runs/{id}/output` serves them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_bytes: u64,
    /// The first bytes of that output the control plane no longer keeps: it
    /// keeps the last `--output-limit` bytes per run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_truncated_bytes: u64,
    /// Output the worker dropped before sending (its link was slower than
    /// the task), as its `task_output` frames said.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_dropped_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /api/v1/runs`: one page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    /// At most `limit` runs (without history), newest first.
    pub runs: Vec<Run>,
    /// Pass as `cursor` to get the page after this one (older runs);
    /// `null` on the last page. Opaque: send it back unchanged.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Runs per page of `GET /api/v1/runs` when `limit` is not given.
pub const RUNS_PAGE_DEFAULT_LIMIT: usize = 100;
/// The most runs one page of `GET /api/v1/runs` may ask for.
pub const RUNS_PAGE_MAX_LIMIT: usize = 1000;

/// How a run ended, as an outside system reports it
/// (`POST /api/v1/runs/{id}/result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl ResultOutcome {
    pub fn state(self) -> RunState {
        match self {
            ResultOutcome::Succeeded => RunState::Succeeded,
            ResultOutcome::Failed => RunState::Failed,
            ResultOutcome::Cancelled => RunState::Cancelled,
        }
    }
}

/// `POST /api/v1/runs/{id}/result`: the end of a run that its worker handed
/// to an outside system (the command runtime's dispatched tasks), reported
/// by that system. Accepted only while the run is claimed; the same report
/// again is answered with the run and changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunResultRequest {
    pub outcome: ResultOutcome,
    /// When given, must be the run's execution id (a report about another
    /// execution is refused with 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// For `failed`: a failure reason such as `container_exit` or
    /// `dispatch_command` (default `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The process status, signals as 128+N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// A sentence for the run's page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One piece of a run's live output, as its worker sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputChunk {
    /// Where `data` starts in the run's whole output, in bytes (UTF-8, as
    /// received). The next chunk starts at `offset` + the byte length of
    /// `data`, unless the control plane dropped what lay between (then the
    /// reader is told with `truncated_bytes`).
    pub offset: u64,
    pub stream: OutputStream,
    /// UTF-8; the worker replaced invalid bytes.
    pub data: String,
    /// Bytes the worker dropped just before this chunk because its link
    /// was slower than the task (docs/PROTOCOL.md, `task-output`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_bytes: u64,
}

/// `GET /api/v1/runs/{id}/output[?after=OFFSET]`: the output the control
/// plane keeps for a run, from `after` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunOutput {
    pub run_id: String,
    /// The run's state when this was read.
    pub state: RunState,
    /// In order, stdout and stderr interleaved as received.
    pub chunks: Vec<OutputChunk>,
    /// The end of the output so far: pass it as `after` to read on.
    pub next_offset: u64,
    /// Bytes after the requested offset that the control plane no longer
    /// keeps (it keeps the last `limit_bytes` per run): the reader missed
    /// them, and should say so.
    pub truncated_bytes: u64,
    /// All the bytes the worker dropped, for the whole run.
    pub dropped_bytes: u64,
    /// How much output the control plane keeps per run, in bytes.
    pub limit_bytes: u64,
}

/// Follow mode's `dropped` event: the reader was too slow and the stream
/// closes; reconnect with `after` (or `Last-Event-ID`) = `resume_from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputDropped {
    /// Why, in one sentence.
    pub reason: String,
    /// The offset after the last event sent.
    pub resume_from: u64,
}

/// Follow mode's `truncated` event: output after the reader's offset that
/// the control plane no longer keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputTruncated {
    /// Bytes the reader missed.
    pub bytes: u64,
    pub limit_bytes: u64,
}

/// A run as a schedule creates it: its fields without secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunTemplate {
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
    /// Names only; values are secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_var_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_oz_args: Vec<String>,
}

impl RunTemplate {
    /// `spec` without its secrets.
    pub fn of(spec: &CreateRunRequest) -> RunTemplate {
        RunTemplate {
            worker_host: spec.worker_host.clone(),
            title: spec.title.clone(),
            prompt: spec.prompt.clone(),
            docker_image: spec.docker_image.clone(),
            sidecar_image: spec.sidecar_image.clone(),
            additional_sidecars: spec.additional_sidecars.clone(),
            env_var_names: spec.env_vars.keys().cloned().collect(),
            instance_shape: spec.instance_shape.clone(),
            additional_oz_args: spec.additional_oz_args.clone(),
        }
    }
}

/// What a schedule does with slots that came due while the control plane
/// was not running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedSlots {
    /// None of them runs (as cron does).
    #[default]
    Skip,
    /// One run, for the latest of them, however many there were (as
    /// anacron does).
    RunOnce,
}

impl MissedSlots {
    pub fn as_str(self) -> &'static str {
        match self {
            MissedSlots::Skip => "skip",
            MissedSlots::RunOnce => "run_once",
        }
    }
}

/// A missed-slot policy name that is neither `skip` nor `run_once`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown missed-slot policy {0:?}; expected skip or run_once")]
pub struct UnknownMissedSlots(pub String);

impl std::str::FromStr for MissedSlots {
    type Err = UnknownMissedSlots;
    fn from_str(s: &str) -> Result<Self, UnknownMissedSlots> {
        match s.replace('-', "_").as_str() {
            "skip" => Ok(MissedSlots::Skip),
            "run_once" => Ok(MissedSlots::RunOnce),
            _ => Err(UnknownMissedSlots(s.to_string())),
        }
    }
}

/// `POST /api/v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateScheduleRequest {
    /// A name to tell schedules apart (default: the run's title, else the
    /// cron expression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Five fields (minute hour day-of-month month day-of-week), or six with
    /// seconds first; `@hourly`-style aliases, `L`, `#` and `W` as croner
    /// (POSIX/Vixie cron, extended) reads them.
    pub cron: String,
    /// The IANA time zone the expression is read in, e.g. `Europe/Berlin`
    /// (default `UTC`). Daylight-saving changes are handled as cron does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Slots that came due while the control plane was down: `skip`
    /// (default) or `run_once`.
    #[serde(default)]
    pub missed: MissedSlots,
    /// The run each slot creates (as `POST /api/v1/runs`).
    pub run: CreateRunRequest,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Schedule {
    pub id: String,
    pub team_id: i64,
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    pub missed: MissedSlots,
    pub paused: bool,
    pub run: RunTemplate,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
    /// The next slot (RFC 3339, UTC), unless paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_slot_at: Option<String>,
    /// Slots up to this one have been handled (a run created, or skipped).
    pub handled_until: String,
    /// The last run it created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<String>,
}

/// `GET /api/v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// One live connection of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerConnection {
    /// RFC 3339, UTC.
    pub connected_at: String,
    /// Runs this connection holds (claimed, or offered and not yet claimed).
    pub active_runs: usize,
    /// Set while it is offered nothing because it rejected a run: the
    /// worker's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_capacity: Option<String>,
    /// The worker said it is draining (SIGQUIT, or `--disconnect-after-task`
    /// after its task): it finishes what it runs, takes nothing new and
    /// exits. Only workers that speak the `worker-state` extension say so;
    /// any other draining worker shows as at capacity.
    #[serde(default)]
    pub draining: bool,
    /// The `X-Warp-Worker-Version` the worker connected with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A worker id this team's workers have connected with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Worker {
    pub worker_id: String,
    /// Live connections: one per worker process using this id.
    pub connections: Vec<WorkerConnection>,
    /// Runs for this id that are claimed or offered, whichever connection
    /// holds them (a claimed run's worker may be reconnecting).
    pub active_runs: usize,
    /// Runs for this id waiting in the queue.
    pub queued_runs: usize,
    /// Paused by an operator: offered no run until resumed (what it holds
    /// runs on).
    #[serde(default)]
    pub paused: bool,
    /// RFC 3339, UTC: since when it is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
    /// RFC 3339, UTC: the first connection ever with this id.
    pub first_seen_at: String,
    /// The last time a connection with this id was made or closed.
    pub last_seen_at: String,
}

/// `GET /api/v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerList {
    /// Connected ids first, then the others, each group by id.
    pub workers: Vec<Worker>,
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
