//! Frame decoding that tells "a type we don't know" (log and ignore) apart from
//! "not a frame at all" (log and ignore, differently) and "a known type with a
//! bad body" (the caller may be able to answer it, e.g. fail the task).

use crate::{ServerMessage, WorkerMessage};
use serde::de::DeserializeOwned;
use serde::Deserialize;

#[derive(Debug)]
pub enum DecodeError {
    /// Not JSON, or not an object with a string `type`.
    Malformed(String),
    /// A well-formed frame of a type this build does not handle.
    UnknownType(String),
    /// A known type whose `data` does not match; `task_id` is recovered when
    /// present so the caller can still report on that task.
    BadBody {
        kind: String,
        task_id: Option<String>,
        error: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(e) => write!(
                f,
                "malformed frame (expected JSON {{\"type\", \"data\"}}): {e}"
            ),
            DecodeError::UnknownType(t) => write!(f, "unknown message type {t:?}"),
            DecodeError::BadBody { kind, error, .. } => {
                write!(f, "invalid {kind} message: {error}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: serde_json::Value,
}

fn decode<T: DeserializeOwned>(text: &str, known: &[&str]) -> Result<T, DecodeError> {
    let env: Envelope =
        serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !known.contains(&env.kind.as_str()) {
        return Err(DecodeError::UnknownType(env.kind));
    }
    let task_id = env
        .data
        .get("task_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let kind = env.kind.clone();
    let framed = serde_json::json!({ "type": env.kind, "data": env.data });
    serde_json::from_value(framed).map_err(|e| DecodeError::BadBody {
        kind,
        task_id,
        error: e.to_string(),
    })
}

pub fn decode_server_frame(text: &str) -> Result<ServerMessage, DecodeError> {
    decode(
        text,
        &["task_assignment", "task_cancellation", "report_ack"],
    )
}

pub fn decode_worker_frame(text: &str) -> Result<WorkerMessage, DecodeError> {
    decode(
        text,
        &[
            "task_claimed",
            "task_rejected",
            "task_completed",
            "task_failed",
            "task_output",
            "worker_state",
        ],
    )
}

pub fn encode<T: serde::Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).expect("protocol messages always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn assignment_decodes_with_capitalised_owner_and_ignores_unknown_fields() {
        let text = r#"{"type":"task_assignment","data":{"task_id":"t1","future_field":1,
            "task":{"id":"t1","title":"x","task_definition":{"prompt":"p"},
            "owner":{"Type":"TEAM","Id":7}},"env_vars":{"A":"1"}}}"#;
        let ServerMessage::TaskAssignment(a) = decode_server_frame(text).unwrap() else {
            panic!()
        };
        assert_eq!(a.task.owner.as_ref().unwrap().kind, OwnerType::Team);
        assert_eq!(a.task.owner.as_ref().unwrap().id, 7);
        assert_eq!(a.env_vars["A"].expose_str(), "1");
        assert_eq!(a.execution_id, None);
    }

    #[test]
    fn unset_optionals_are_omitted() {
        let m = WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: "t".into(),
            message: "ok".into(),
            task_state: None,
            execution_id: None,
        });
        assert_eq!(
            encode(&m),
            r#"{"type":"task_completed","data":{"task_id":"t","message":"ok"}}"#
        );
        let f = WorkerMessage::TaskFailed(TaskFailed {
            task_id: "t".into(),
            message: "m".into(),
            failure_reason: FailureReason::ContainerExit,
            exit_code: Some(3),
            execution_id: None,
            failure_details: None,
        });
        assert_eq!(
            encode(&f),
            r#"{"type":"task_failed","data":{"task_id":"t","message":"m","failure_reason":"container_exit","exit_code":3}}"#
        );
    }

    #[test]
    fn errors_distinguish_malformed_unknown_and_bad_body() {
        assert!(matches!(
            decode_server_frame("{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(
            matches!(decode_server_frame(r#"{"type":"hello","data":{}}"#), Err(DecodeError::UnknownType(t)) if t == "hello")
        );
        match decode_server_frame(r#"{"type":"task_assignment","data":{"task_id":"t9","task":5}}"#)
        {
            Err(DecodeError::BadBody { task_id, .. }) => assert_eq!(task_id.as_deref(), Some("t9")),
            other => panic!("{other:?}"),
        }
    }
}
