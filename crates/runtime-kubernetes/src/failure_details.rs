//! `failure_details.kubernetes` on `task_failed`: bounded, structured
//! Kubernetes facts about a failed task (the Go worker's PR #139 schema,
//! `schema_version` 1). Only what Kubernetes represents structurally is
//! kept — names, uids, phases, reasons, exit codes, times, Warning and
//! `Killing` events — never a namespace, a node or a free-form message,
//! and every list and string is capped so the whole stays far below the
//! 32 KiB the server keeps.

use crate::diagnosis::{normalized_exit_code, ContainerFailure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use oz_protocol::{
    FailureDetails, KubernetesCondition as Condition,
    KubernetesContainerDetails as ContainerDetails, KubernetesEventDetails as EventDetails,
    KubernetesFailureDetails, KubernetesJobDetails as JobDetails,
    KubernetesPodDetails as PodDetails,
};

/// The schema version of [`KubernetesFailureDetails`].
pub const SCHEMA_VERSION: u32 = 1;
/// Most conditions kept per object.
pub const MAX_CONDITIONS: usize = 8;
/// Most events kept, newest first.
pub const MAX_EVENTS: usize = 10;
/// Longest reason or type kept, in bytes (cut on a character boundary).
pub const MAX_STRING: usize = 256;

/// Which observation found the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservationSource {
    PodWatch,
    JobWatch,
    SafetyPoll,
}

impl ObservationSource {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ObservationSource::PodWatch => "pod_watch",
            ObservationSource::JobWatch => "job_watch",
            ObservationSource::SafetyPoll => "safety_poll",
        }
    }
}

/// `value` cut to [`MAX_STRING`] bytes on a character boundary, and
/// whether it was cut.
fn bounded(value: &str) -> (String, bool) {
    if value.len() <= MAX_STRING {
        return (value.to_string(), false);
    }
    let mut end = MAX_STRING;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    (value[..end].to_string(), true)
}

fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.to_string()
}

/// Builds the details from what was observed; any part may be missing.
pub fn build(
    source: ObservationSource,
    observed_at: Timestamp,
    job: Option<&Job>,
    pod: Option<&Pod>,
    container: Option<&ContainerFailure>,
    events: &[Event],
) -> FailureDetails {
    let mut truncated = false;
    let mut cut = |value: &str| {
        let (v, t) = bounded(value);
        truncated |= t;
        v
    };
    let mut conditions_cut = false;
    let mut conditions = |list: Vec<(String, String, String, Option<String>)>| {
        if list.len() > MAX_CONDITIONS {
            conditions_cut = true;
        }
        list.into_iter()
            .take(MAX_CONDITIONS)
            .collect::<Vec<_>>()
    };
    let job_details = job.map(|j| {
        let list = j
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| matches!(c.type_.as_str(), "Complete" | "Failed" | "FailureTarget"))
            .map(|c| {
                (
                    c.type_,
                    c.status,
                    c.reason.unwrap_or_default(),
                    c.last_transition_time.as_ref().map(time),
                )
            })
            .collect();
        (
            j.metadata.name.clone().unwrap_or_default(),
            j.metadata.uid.clone().unwrap_or_default(),
            conditions(list),
        )
    });
    let pod_details = pod.map(|p| {
        let status = p.status.clone().unwrap_or_default();
        let list = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                (
                    c.type_,
                    c.status,
                    c.reason.unwrap_or_default(),
                    c.last_transition_time.as_ref().map(time),
                )
            })
            .collect();
        (
            p.metadata.name.clone().unwrap_or_default(),
            p.metadata.uid.clone().unwrap_or_default(),
            status.phase.unwrap_or_default(),
            status.reason.unwrap_or_default(),
            p.metadata.deletion_timestamp.as_ref().map(time),
            conditions(list),
        )
    });
    let to_conditions = |list: Vec<(String, String, String, Option<String>)>,
                         cut: &mut dyn FnMut(&str) -> String| {
        list.into_iter()
            .map(|(kind, status, reason, last)| Condition {
                kind: cut(&kind),
                status,
                reason: cut(&reason),
                last_transition_time: last,
            })
            .collect::<Vec<_>>()
    };
    let job = job_details.map(|(name, uid, list)| JobDetails {
        name,
        uid,
        conditions: to_conditions(list, &mut cut),
    });
    let pod = pod_details.map(|(name, uid, phase, reason, deletion, list)| PodDetails {
        name,
        uid,
        phase,
        reason: cut(&reason),
        deletion_timestamp: deletion,
        conditions: to_conditions(list, &mut cut),
    });
    let container = container.map(|c| {
        let (state, waiting_reason, termination_reason) = match (&c.waiting, &c.terminated) {
            (_, Some(t)) => (
                "terminated",
                String::new(),
                cut(t.reason.as_deref().unwrap_or_default()),
            ),
            (Some(w), None) => (
                "waiting",
                cut(w.reason.as_deref().unwrap_or_default()),
                String::new(),
            ),
            (None, None) => ("unknown", String::new(), String::new()),
        };
        let t = c.terminated.as_ref();
        ContainerDetails {
            kind: c.kind.to_string(),
            name: c.name.clone(),
            state: state.to_string(),
            waiting_reason,
            termination_reason,
            raw_exit_code: t.map(|t| t.exit_code),
            normalized_exit_code: t.map(normalized_exit_code),
            signal: t.and_then(|t| t.signal).filter(|&s| s > 0),
            started_at: t.and_then(|t| t.started_at.as_ref()).map(time),
            finished_at: t.and_then(|t| t.finished_at.as_ref()).map(time),
        }
    });
    let mut kept: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") || e.reason.as_deref() == Some("Killing"))
        .collect();
    kept.sort_by_key(|e| std::cmp::Reverse(last_observed(e)));
    let events_cut = kept.len() > MAX_EVENTS;
    let events = kept
        .into_iter()
        .take(MAX_EVENTS)
        .map(|e| EventDetails {
            kind: cut(e.type_.as_deref().unwrap_or_default()),
            reason: cut(e.reason.as_deref().unwrap_or_default()),
            count: e.series.as_ref().and_then(|s| s.count).or(e.count),
            first_observed_at: first_observed(e).map(|t| t.to_string()),
            last_observed_at: last_observed(e).map(|t| t.to_string()),
        })
        .collect();
    FailureDetails {
        kubernetes: Some(KubernetesFailureDetails {
            schema_version: SCHEMA_VERSION,
            observation_source: source.as_str().to_string(),
            observed_at: observed_at.to_string(),
            job,
            pod,
            container,
            events,
            truncated: truncated || conditions_cut || events_cut,
        }),
    }
}

fn first_observed(e: &Event) -> Option<Timestamp> {
    e.first_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn last_observed(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerStateTerminated;

    fn now() -> Timestamp {
        "2026-12-05T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_schema_matches_pr_139() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1", "namespace": "secret-ns"},
            "spec": {"nodeName": "node-7", "containers": []},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "free-form text",
                       "conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed",
                                       "lastTransitionTime": "2026-12-05T09:59:00Z"}]}
        }))
        .unwrap();
        let container = ContainerFailure {
            kind: "container",
            name: "task".into(),
            waiting: None,
            terminated: Some(ContainerStateTerminated {
                exit_code: 0,
                signal: Some(9),
                reason: Some("OOMKilled".into()),
                ..Default::default()
            }),
        };
        let events: Vec<Event> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "a"}, "involvedObject": {}, "type": "Normal", "reason": "Pulled",
             "lastTimestamp": "2026-12-05T09:58:00Z"},
            {"metadata": {"name": "b"}, "involvedObject": {}, "type": "Normal", "reason": "Killing", "count": 1,
             "lastTimestamp": "2026-12-05T09:59:30Z"},
            {"metadata": {"name": "c"}, "involvedObject": {}, "type": "Warning", "reason": "Evicted", "count": 2,
             "firstTimestamp": "2026-12-05T09:59:00Z", "lastTimestamp": "2026-12-05T09:59:50Z",
             "message": "The node was low on memory"}
        ]))
        .unwrap();
        let d = build(
            ObservationSource::PodWatch,
            now(),
            None,
            Some(&pod),
            Some(&container),
            &events,
        );
        let json = serde_json::to_value(&d).unwrap();
        let k = &json["kubernetes"];
        assert_eq!(k["schema_version"], 1);
        assert_eq!(k["observation_source"], "pod_watch");
        assert_eq!(k["observed_at"], "2026-12-05T10:00:00Z");
        assert_eq!(k["pod"]["reason"], "Evicted");
        assert_eq!(k["pod"]["conditions"][0]["type"], "Ready");
        assert_eq!(k["container"]["normalized_exit_code"], 137);
        assert_eq!(k["container"]["signal"], 9);
        assert_eq!(k["container"]["state"], "terminated");
        let reasons: Vec<&str> = k["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap())
            .collect();
        assert_eq!(
            reasons,
            ["Evicted", "Killing"],
            "Warning and Killing only, newest first"
        );
        let text = json.to_string();
        for leaked in ["secret-ns", "node-7", "free-form", "low on memory"] {
            assert!(!text.contains(leaked), "{leaked} must not be sent: {text}");
        }
        assert!(k.get("truncated").is_none());
    }

    #[test]
    fn everything_is_capped_and_marked_truncated() {
        let long = "R".repeat(5000);
        let conditions: Vec<serde_json::Value> = (0..50)
            .map(|i| serde_json::json!({"type": format!("T{i}{long}"), "status": "True", "reason": long}))
            .collect();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "status": {"phase": "Failed", "reason": long, "conditions": conditions}
        }))
        .unwrap();
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j", "uid": "uj"},
            "status": {"conditions": (0..50).map(|_| serde_json::json!({"type": "Failed", "status": "True", "reason": long})).collect::<Vec<_>>()}
        }))
        .unwrap();
        let events: Vec<Event> = (0..200)
            .map(|i| {
                serde_json::from_value(
                    serde_json::json!({"metadata": {"name": format!("e{i}")}, "involvedObject": {},
                    "type": "Warning", "reason": long}),
                )
                .unwrap()
            })
            .collect();
        let d = build(
            ObservationSource::SafetyPoll,
            now(),
            Some(&job),
            Some(&pod),
            None,
            &events,
        );
        let k = d.kubernetes.as_ref().unwrap();
        assert!(k.truncated);
        assert_eq!(k.events.len(), MAX_EVENTS);
        assert_eq!(k.pod.as_ref().unwrap().conditions.len(), MAX_CONDITIONS);
        assert_eq!(k.job.as_ref().unwrap().conditions.len(), MAX_CONDITIONS);
        assert_eq!(k.pod.as_ref().unwrap().reason.len(), MAX_STRING);
        let size = serde_json::to_vec(&d).unwrap().len();
        assert!(size < 32 * 1024, "{size} bytes");
    }
}
