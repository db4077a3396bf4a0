//! Property tests of the protocol codec (`crates/protocol/src/codec.rs`): no frame
//! a peer sends can make decoding panic, every error is one of the three
//! kinds, and every message we encode decodes back to itself.

use oz_protocol::*;
use proptest::prelude::*;

/// Text shaped like frames: an envelope with a known or unknown type and a
/// data object of plausible and implausible fields.
fn frame_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        proptest::sample::select(vec![
            "task_assignment",
            "task_cancellation",
            "report_ack",
            "task_claimed",
            "task_rejected",
            "task_completed",
            "task_failed",
            "task_output",
            "worker_state",
        ])
        .prop_map(String::from),
        "[a-z_]{0,12}",
    ];
    let value = prop_oneof![
        proptest::sample::select(vec![
            "null",
            "true",
            "{}",
            "[]",
            r#"{"prompt":"p"}"#,
            r#"{"Type":"TEAM","Id":1}"#,
        ])
        .prop_map(String::from),
        "-?[0-9]{1,20}",
        ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let field = prop_oneof![
        proptest::sample::select(vec![
            "task_id",
            "task",
            "env_vars",
            "worker_id",
            "message",
            "failure_reason",
            "exit_code",
            "execution_id",
            "stream",
            "data",
            "dropped_bytes",
            "draining",
        ])
        .prop_map(String::from),
        "[a-z_]{1,8}",
    ];
    (kind, proptest::collection::vec((field, value), 0..6)).prop_map(|(kind, fields)| {
        let data: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
            .collect();
        format!(
            r#"{{"type":{},"data":{{{}}}}}"#,
            serde_json::to_string(&kind).unwrap(),
            data.join(",")
        )
    })
}

fn reason() -> impl Strategy<Value = FailureReason> {
    prop_oneof![
        Just("image_pull".to_string()),
        Just("container_exit".to_string()),
        Just("worker_lost".to_string()),
        "[a-z_]{1,16}",
    ]
    .prop_map(FailureReason::from)
}

fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    let id = ".{0,16}";
    let opt = proptest::option::of(".{0,16}");
    prop_oneof![
        (id, id, opt.clone()).prop_map(|(task_id, worker_id, execution_id)| {
            WorkerMessage::TaskClaimed(TaskClaimed {
                task_id,
                worker_id,
                execution_id,
            })
        }),
        (id, ".{0,40}", opt.clone()).prop_map(|(task_id, reason, execution_id)| {
            WorkerMessage::TaskRejected(TaskRejected {
                task_id,
                reason,
                execution_id,
            })
        }),
        (id, ".{0,40}", opt.clone(), opt.clone()).prop_map(
            |(task_id, message, task_state, execution_id)| {
                WorkerMessage::TaskCompleted(TaskCompleted {
                    task_id,
                    message,
                    task_state,
                    execution_id,
                })
            }
        ),
        (
            id,
            ".{0,40}",
            reason(),
            proptest::option::of(any::<i64>()),
            opt.clone()
        )
            .prop_map(
                |(task_id, message, failure_reason, exit_code, execution_id)| {
                    WorkerMessage::TaskFailed(TaskFailed {
                        task_id,
                        message,
                        failure_reason,
                        exit_code,
                        execution_id,
                        failure_details: None,
                    })
                }
            ),
        (id, opt, any::<bool>(), ".{0,40}", any::<u64>()).prop_map(
            |(task_id, execution_id, stderr, data, dropped_bytes)| {
                WorkerMessage::TaskOutput(TaskOutput {
                    task_id,
                    execution_id,
                    stream: if stderr {
                        OutputStream::Stderr
                    } else {
                        OutputStream::Stdout
                    },
                    data,
                    dropped_bytes,
                })
            }
        ),
        any::<bool>().prop_map(|draining| WorkerMessage::WorkerState(WorkerState { draining })),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        ".{0,16}".prop_map(|task_id| ServerMessage::TaskCancellation(TaskCancellation { task_id })),
        (".{0,16}", proptest::option::of(".{0,16}")).prop_map(|(task_id, execution_id)| {
            ServerMessage::ReportAck(ReportAck {
                task_id,
                execution_id,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = decode_server_frame(&text);
        let _ = decode_worker_frame(&text);
    }

    /// Frame-shaped input: decoding answers, and a bad body of a known
    /// type keeps the task id when the frame had a string one.
    #[test]
    fn frame_like_input_decodes_or_says_why(text in frame_like()) {
        for result in [decode_server_frame(&text).map(|_| ()), decode_worker_frame(&text).map(|_| ())] {
            match result {
                Ok(()) | Err(DecodeError::UnknownType(_)) | Err(DecodeError::Malformed(_)) => {}
                Err(DecodeError::BadBody { task_id, .. }) => {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let sent = value["data"]["task_id"].as_str().map(str::to_owned);
                    prop_assert_eq!(task_id, sent);
                }
            }
        }
    }

    #[test]
    fn worker_messages_round_trip(message in worker_message()) {
        prop_assert_eq!(decode_worker_frame(&encode(&message)).unwrap(), message);
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        prop_assert_eq!(decode_server_frame(&encode(&message)).unwrap(), message);
    }
}
