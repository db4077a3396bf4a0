//! How a task's Job and Pod ended, read from their status in the Go
//! worker's order (BACKENDS.md §5), so a failure gets the same
//! `failure_reason` from either worker:
//!
//! 1. the Pod was evicted (`job_failed`);
//! 2. an init container exited non-zero (`init_container`), or waits on
//!    something that will not resolve by itself (image pull, bad image,
//!    create error); the exit of a native sidecar (an init container with
//!    `restartPolicy: Always`) is no failure: the kubelet stops sidecars
//!    with SIGTERM once the task's containers have exited, and many exit
//!    non-zero then (143);
//! 3. a container waits the same way (`image_pull`, `invalid_image`,
//!    `container_create`, `container_wait`), or exited non-zero
//!    (`container_oom` when OOMKilled, else `container_exit`);
//! 4. the Pod has been unschedulable for longer than `unschedulable_timeout`;
//! 5. a FailedMount event (`volume_mount`);
//! 6. the Pod failed (`active_deadline` when its reason says deadline,
//!    else `job_failed`).
//!
//! A Job that failed with no Pod to blame is `active_deadline` when its
//! Failed condition says deadline, else `job_failed`.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Event, Pod,
};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// A failure reason of the Go worker's kubernetes backend, as sent in
/// `failure_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    JobFailed,
    ActiveDeadline,
    InitContainer,
    ImagePull,
    InvalidImage,
    ContainerCreate,
    ContainerWait,
    ContainerOom,
    ContainerExit,
    Unschedulable,
    VolumeMount,
}

impl Reason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::JobFailed => "job_failed",
            Reason::ActiveDeadline => "active_deadline",
            Reason::InitContainer => "init_container",
            Reason::ImagePull => "image_pull",
            Reason::InvalidImage => "invalid_image",
            Reason::ContainerCreate => "container_create",
            Reason::ContainerWait => "container_wait",
            Reason::ContainerOom => "container_oom",
            Reason::ContainerExit => "container_exit",
            Reason::Unschedulable => "unschedulable",
            Reason::VolumeMount => "volume_mount",
        }
    }
}

/// The container a failure is blamed on, for `failure_details`.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerFailure {
    /// "init container" or "container".
    pub kind: &'static str,
    pub name: String,
    pub waiting: Option<ContainerStateWaiting>,
    pub terminated: Option<ContainerStateTerminated>,
}

/// Why a task failed, from its Pod or Job.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub reason: Reason,
    /// Says what happened and where to look; names the Pod, its Job and the
    /// namespace.
    pub message: String,
    /// The container's exit status, signals as 128+N.
    pub exit_code: Option<i64>,
    pub container: Option<ContainerFailure>,
}

/// Waiting reasons that will not clear without a change (the Go worker's
/// "immediate" failures).
fn is_stuck(reason: &str) -> bool {
    matches!(
        reason,
        "CreateContainerConfigError"
            | "CreateContainerError"
            | "ErrImagePull"
            | "ImagePullBackOff"
            | "InvalidImageName"
    )
}

fn waiting_reason(reason: &str, init: bool) -> Reason {
    match reason {
        "ErrImagePull" | "ImagePullBackOff" => Reason::ImagePull,
        "InvalidImageName" => Reason::InvalidImage,
        _ if init => Reason::InitContainer,
        "CreateContainerConfigError" | "CreateContainerError" => Reason::ContainerCreate,
        _ => Reason::ContainerWait,
    }
}

/// The exit status as a shell reports it: the code, or 128+signal when the
/// runtime reported only a signal.
pub fn normalized_exit_code(t: &ContainerStateTerminated) -> i64 {
    match (t.exit_code, t.signal) {
        (0, Some(signal)) if signal > 0 => 128 + i64::from(signal),
        (code, _) => i64::from(code),
    }
}

fn signal_name(t: &ContainerStateTerminated) -> Option<String> {
    let signal = t
        .signal
        .filter(|&s| s > 0)
        .or_else(|| (t.exit_code > 128 && t.exit_code < 160).then_some(t.exit_code - 128))?;
    Some(match signal {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        3 => "SIGQUIT".into(),
        6 => "SIGABRT".into(),
        9 => "SIGKILL".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    })
}

fn pod_context(pod: &Pod, namespace: &str) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or(namespace);
    match pod.metadata.labels.as_ref().and_then(|l| l.get("job-name")) {
        Some(job) => format!("pod {name} (namespace {namespace}, job {job})"),
        None => format!("pod {name} (namespace {namespace})"),
    }
}

fn status_details(pod: &Pod, reason: Option<&str>, message: Option<&str>) -> String {
    let status = pod.status.as_ref();
    let mut parts = Vec::new();
    if let Some(phase) = status.and_then(|s| s.phase.as_deref()) {
        parts.push(format!("Pod phase: {phase}"));
    }
    let reason = reason
        .filter(|r| !r.is_empty())
        .or(status.and_then(|s| s.reason.as_deref()));
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        parts.push(format!("Pod reason: {r}"));
    }
    let message = message
        .filter(|m| !m.is_empty())
        .or(status.and_then(|s| s.message.as_deref()));
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        parts.push(format!("Pod message: {m}"));
    }
    parts.iter().map(|p| format!(". {p}")).collect()
}

fn terminated_failure(
    pod: &Pod,
    namespace: &str,
    kind: &'static str,
    status: &ContainerStatus,
    t: &ContainerStateTerminated,
    reason: Reason,
) -> Diagnosis {
    let mut message = format!(
        "{kind} {} in {} exited with code {}",
        status.name,
        pod_context(pod, namespace),
        t.exit_code
    );
    let signal = signal_name(t);
    if let Some(signal) = &signal {
        message.push_str(&format!(" ({signal})"));
    }
    message.push_str(&status_details(
        pod,
        t.reason.as_deref(),
        t.message.as_deref(),
    ));
    if t.reason.as_deref() == Some("OOMKilled") {
        message.push_str(". The container used more memory than its limit: raise the task container's memory limit (instance shape or pod_template resources)");
    } else if signal.as_deref() == Some("SIGTERM") {
        message.push_str(". SIGTERM usually means Kubernetes asked the process to stop: check the Pod's events and the node for eviction, preemption, a node drain, activeDeadlineSeconds or a manual deletion");
    }
    Diagnosis {
        reason,
        message,
        exit_code: Some(normalized_exit_code(t)),
        container: Some(ContainerFailure {
            kind,
            name: status.name.clone(),
            waiting: None,
            terminated: Some(t.clone()),
        }),
    }
}

fn waiting_failure(
    pod: &Pod,
    namespace: &str,
    kind: &'static str,
    status: &ContainerStatus,
    w: &ContainerStateWaiting,
    init: bool,
) -> Diagnosis {
    let reason = w.reason.as_deref().unwrap_or_default();
    let what = match w.message.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {m}"),
        None => reason.to_string(),
    };
    Diagnosis {
        reason: waiting_reason(reason, init),
        message: format!(
            "{kind} {} in {} is waiting: {what}{}",
            status.name,
            pod_context(pod, namespace),
            status_details(pod, Some(reason), w.message.as_deref())
        ),
        exit_code: None,
        container: Some(ContainerFailure {
            kind,
            name: status.name.clone(),
            waiting: Some(w.clone()),
            terminated: None,
        }),
    }
}

/// Why `pod` failed, or `None` while it has not. `events` are the Pod's
/// (read only when it is Pending or Failed: the caller lists them then);
/// `now` and `unschedulable_timeout` decide when an unschedulable Pod has
/// waited long enough (`None`: forever).
pub fn diagnose_pod(
    pod: &Pod,
    events: &[Event],
    namespace: &str,
    now: Timestamp,
    unschedulable_timeout: Option<Duration>,
) -> Option<Diagnosis> {
    let status = pod.status.as_ref()?;
    let pod_reason = status.reason.as_deref().unwrap_or_default();
    let pod_message = status.message.as_deref().unwrap_or_default();
    if pod_reason.eq_ignore_ascii_case("Evicted") || pod_message.to_lowercase().contains("evict") {
        return Some(Diagnosis {
            reason: Reason::JobFailed,
            message: format!(
                "{} was evicted{}. Kubernetes evicts Pods when their node runs short of memory or disk, or is drained",
                pod_context(pod, namespace),
                status_details(pod, None, None)
            ),
            exit_code: None,
            container: None,
        });
    }
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    for (kind, statuses, init) in [
        (
            "init container",
            status.init_container_statuses.as_deref(),
            true,
        ),
        ("container", status.container_statuses.as_deref(), false),
    ] {
        for s in statuses.unwrap_or_default() {
            let state = s.state.as_ref();
            let sidecar = init && sidecars.contains(&s.name.as_str());
            if let Some(t) = state
                .and_then(|st| st.terminated.as_ref())
                .filter(|t| t.exit_code != 0 && !sidecar)
            {
                let reason = if init {
                    Reason::InitContainer
                } else if t.reason.as_deref() == Some("OOMKilled") {
                    Reason::ContainerOom
                } else {
                    Reason::ContainerExit
                };
                return Some(terminated_failure(pod, namespace, kind, s, t, reason));
            }
            if let Some(w) = state
                .and_then(|st| st.waiting.as_ref())
                .filter(|w| is_stuck(w.reason.as_deref().unwrap_or_default()))
            {
                return Some(waiting_failure(pod, namespace, kind, s, w, init));
            }
        }
    }
    if let Some(timeout) = unschedulable_timeout {
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let (Some(c), Some(created)) = (unschedulable, created) {
            let waited = now.duration_since(created);
            if waited.as_secs_f64() >= timeout.as_secs_f64() {
                return Some(Diagnosis {
                    reason: Reason::Unschedulable,
                    message: format!(
                        "{} is unschedulable. Pod reason: Unschedulable{}. No node can take it (resources, node selector, taints); unschedulable_timeout is {}s",
                        pod_context(pod, namespace),
                        c.message.as_deref().map(|m| format!(". Pod message: {m}")).unwrap_or_default(),
                        timeout.as_secs()
                    ),
                    exit_code: None,
                    container: None,
                });
            }
        }
    }
    let phase = status.phase.as_deref().unwrap_or_default();
    if phase == "Pending" || phase == "Failed" {
        if let Some(e) = events.iter().find(|e| {
            e.reason.as_deref() == Some("FailedMount")
                || e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("MountVolume.SetUp failed"))
        }) {
            return Some(Diagnosis {
                reason: Reason::VolumeMount,
                message: format!(
                    "{} failed to mount a volume. Kubernetes event reason: {}{}",
                    pod_context(pod, namespace),
                    e.reason.as_deref().unwrap_or_default(),
                    e.message
                        .as_deref()
                        .map(|m| format!(". Kubernetes event message: {m}"))
                        .unwrap_or_default()
                ),
                exit_code: None,
                container: None,
            });
        }
    }
    if phase == "Failed" {
        let deadline = format!("{pod_reason} {pod_message}")
            .to_lowercase()
            .contains("deadline");
        return Some(Diagnosis {
            reason: if deadline {
                Reason::ActiveDeadline
            } else {
                Reason::JobFailed
            },
            message: format!(
                "{} failed{}",
                pod_context(pod, namespace),
                status_details(pod, None, None)
            ),
            exit_code: None,
            container: None,
        });
    }
    None
}

/// Where a Job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Complete,
    /// Failed, with the reason when no Pod explains it.
    Failed {
        reason: Reason,
        message: String,
    },
}

fn has_condition(job: &Job, kind: &str) -> Option<(Option<String>, Option<String>)> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind && c.status == "True")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// The Job controller's deadline verdict: a `FailureTarget` or `Failed`
/// condition with reason DeadlineExceeded (set when the Job ran past
/// `activeDeadlineSeconds`, pkg/controller/job), as a sentence naming the
/// Job; None otherwise.
pub fn deadline_exceeded(job: &Job) -> Option<String> {
    let (_, message) = has_condition(job, "FailureTarget")
        .filter(|(r, _)| r.as_deref() == Some("DeadlineExceeded"))
        .or_else(|| {
            has_condition(job, "Failed").filter(|(r, _)| r.as_deref() == Some("DeadlineExceeded"))
        })?;
    Some(format!(
        "kubernetes Job {} failed. Job reason: DeadlineExceeded{}",
        job.metadata.name.as_deref().unwrap_or("?"),
        message
            .filter(|m| !m.is_empty())
            .map(|m| format!(". Job message: {m}"))
            .unwrap_or_default()
    ))
}

/// The Job's state from its conditions.
pub fn job_state(job: &Job, namespace: &str) -> JobState {
    if has_condition(job, "Complete").is_some() {
        return JobState::Complete;
    }
    match has_condition(job, "Failed") {
        Some((reason, message)) => {
            let detail = format!(
                "{} {}",
                reason.as_deref().unwrap_or_default(),
                message.as_deref().unwrap_or_default()
            );
            let mut text = format!(
                "kubernetes Job {} in namespace {} failed",
                job.metadata.name.as_deref().unwrap_or("?"),
                job.metadata.namespace.as_deref().unwrap_or(namespace)
            );
            if let Some(r) = reason.as_deref().filter(|r| !r.is_empty()) {
                text.push_str(&format!(". Job reason: {r}"));
            }
            if let Some(m) = message.as_deref().filter(|m| !m.is_empty()) {
                text.push_str(&format!(". Job message: {m}"));
            }
            JobState::Failed {
                reason: if detail.to_lowercase().contains("deadline") {
                    Reason::ActiveDeadline
                } else {
                    Reason::JobFailed
                },
                message: text,
            }
        }
        None => JobState::Running,
    }
}

/// Whether the Job controller has given its verdict: a `Complete`,
/// `Failed` or `FailureTarget` condition (the last is written first, in the
/// sync that deletes the Pods of a Job past its deadline or backoff limit,
/// pkg/controller/job). A finished Job's TTL (`ttlSecondsAfterFinished`)
/// runs from that verdict; an unfinished one is kept forever.
pub fn job_finished(job: &Job) -> bool {
    ["Complete", "Failed", "FailureTarget"]
        .iter()
        .any(|kind| has_condition(job, kind).is_some())
}

/// Whether a failed task's Job ends without the worker: the Job controller
/// has given its verdict ([`job_finished`]), or the diagnosed Pod has ended
/// or will (its phase is terminal, or a container of it exited: with
/// `restartPolicy: Never` nothing restarts it, so the kubelet ends the Pod
/// and, with `backoffLimit: 0`, the Job controller fails the Job). False
/// when the failure was read from a Pod that waits (an image that cannot be
/// pulled, a container that cannot be created, no node that fits, a volume
/// that does not mount): Kubernetes retries those forever, so the Job never
/// finishes, its TTL never starts, and the Pod holds its quota and may
/// still start later.
pub fn ends_by_itself(job: Option<&Job>, pod: &Pod, diagnosis: &Diagnosis) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    job.is_some_and(job_finished)
        || matches!(phase, "Succeeded" | "Failed")
        || diagnosis
            .container
            .as_ref()
            .is_some_and(|c| c.terminated.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "oz-task-r-exec-e-abcde", "namespace": "ns",
                          "labels": {"job-name": "oz-task-r-exec-e"},
                          "creationTimestamp": "2026-12-05T10:00:00Z"},
            "status": status
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-05T10:01:00Z".parse().unwrap()
    }

    fn diagnose(status: serde_json::Value) -> Option<Diagnosis> {
        diagnose_pod(
            &pod(status),
            &[],
            "ns",
            now(),
            Some(Duration::from_secs(30)),
        )
    }

    #[test]
    fn a_running_or_pending_pod_has_no_diagnosis() {
        assert!(diagnose(serde_json::json!({"phase": "Running"})).is_none());
        assert!(diagnose(serde_json::json!({"phase": "Pending",
            "containerStatuses": [{"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                                   "state": {"waiting": {"reason": "ContainerCreating"}}}]})).is_none());
    }

    #[test]
    fn oom_and_exit_codes_are_told_apart_with_128_plus_signal() {
        let d = diagnose(serde_json::json!({"phase": "Failed", "containerStatuses": [
            {"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
             "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}))
        .unwrap();
        assert_eq!(d.reason, Reason::ContainerOom);
        assert_eq!(d.exit_code, Some(137));
        assert!(d.message.contains("container task in pod oz-task-r-exec-e-abcde (namespace ns, job oz-task-r-exec-e) exited with code 137 (SIGKILL)"), "{}", d.message);
        let d = diagnose(serde_json::json!({"phase": "Failed", "containerStatuses": [
            {"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
             "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}))
        .unwrap();
        assert_eq!((d.reason, d.exit_code), (Reason::ContainerExit, Some(3)));
    }

    #[test]
    fn the_reference_order_is_kept() {
        // Evicted beats a failed container; an init container beats the task.
        let d = diagnose(serde_json::json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
            "containerStatuses": [{"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                                   "state": {"terminated": {"exitCode": 137}}}]})).unwrap();
        assert_eq!(d.reason, Reason::JobFailed);
        assert!(d.message.contains("was evicted"));
        let d = diagnose(serde_json::json!({"phase": "Failed",
            "initContainerStatuses": [{"name": "setup", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                                       "state": {"terminated": {"exitCode": 1}}}],
            "containerStatuses": [{"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                                   "state": {"terminated": {"exitCode": 2}}}]})).unwrap();
        assert_eq!((d.reason, d.exit_code), (Reason::InitContainer, Some(1)));
    }

    #[test]
    fn waiting_reasons_map_to_the_go_workers() {
        for (reason, init, expected) in [
            ("ErrImagePull", false, Reason::ImagePull),
            ("ImagePullBackOff", true, Reason::ImagePull),
            ("InvalidImageName", false, Reason::InvalidImage),
            ("CreateContainerConfigError", false, Reason::ContainerCreate),
            ("CreateContainerConfigError", true, Reason::InitContainer),
        ] {
            let key = if init {
                "initContainerStatuses"
            } else {
                "containerStatuses"
            };
            let d = diagnose(serde_json::json!({"phase": "Pending", key: [
                {"name": "c", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"waiting": {"reason": reason, "message": "boom"}}}]}))
            .unwrap();
            assert_eq!(d.reason, expected, "{reason} init={init}");
            assert!(
                d.message.contains(&format!("is waiting: {reason}: boom")),
                "{}",
                d.message
            );
        }
    }

    #[test]
    fn unschedulable_waits_for_its_timeout() {
        let status = serde_json::json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]});
        let p = pod(status);
        let d = diagnose_pod(&p, &[], "ns", now(), Some(Duration::from_secs(30))).unwrap();
        assert_eq!(d.reason, Reason::Unschedulable);
        assert!(diagnose_pod(&p, &[], "ns", now(), Some(Duration::from_secs(120))).is_none());
        assert!(diagnose_pod(&p, &[], "ns", now(), None).is_none());
    }

    #[test]
    fn failed_mounts_and_deadlines() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e"}, "involvedObject": {}, "reason": "FailedMount", "message": "MountVolume.SetUp failed for volume \"x\""
        })).unwrap();
        let d = diagnose_pod(
            &pod(serde_json::json!({"phase": "Pending"})),
            &[event],
            "ns",
            now(),
            None,
        )
        .unwrap();
        assert_eq!(d.reason, Reason::VolumeMount);
        let d = diagnose(serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node longer than the specified deadline"})).unwrap();
        assert_eq!(d.reason, Reason::ActiveDeadline);
    }

    #[test]
    fn job_conditions() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}})).unwrap()
        };
        assert_eq!(
            job_state(&job(serde_json::json!([])), "ns"),
            JobState::Running
        );
        assert_eq!(
            job_state(
                &job(serde_json::json!([{"type": "Complete", "status": "True"}])),
                "ns"
            ),
            JobState::Complete
        );
        match job_state(
            &job(
                serde_json::json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]),
            ),
            "ns",
        ) {
            JobState::Failed { reason, message } => {
                assert_eq!(reason, Reason::ActiveDeadline);
                assert!(
                    message.starts_with(
                        "kubernetes Job j in namespace ns failed. Job reason: DeadlineExceeded"
                    ),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        match job_state(
            &job(
                serde_json::json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
            ),
            "ns",
        ) {
            JobState::Failed { reason, .. } => assert_eq!(reason, Reason::JobFailed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_deadline_verdict_is_read_from_failure_target_or_failed() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}})).unwrap()
        };
        let target = job(
            serde_json::json!([{"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]),
        );
        assert_eq!(
            deadline_exceeded(&target).as_deref(),
            Some("kubernetes Job j failed. Job reason: DeadlineExceeded. Job message: Job was active longer than specified deadline")
        );
        let failed = job(
            serde_json::json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]),
        );
        assert!(deadline_exceeded(&failed).is_some());
        let backoff = job(
            serde_json::json!([{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]),
        );
        assert_eq!(deadline_exceeded(&backoff), None);
    }

    #[test]
    fn a_failure_ends_the_job_by_itself_only_once_a_container_exited_or_the_job_finished() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}})).unwrap()
        };
        let running = job(serde_json::json!([]));
        let failed = job(
            serde_json::json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
        );
        let target = job(
            serde_json::json!([{"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}]),
        );
        let not_yet = job(serde_json::json!([{"type": "Failed", "status": "False"}]));
        assert!(!job_finished(&running));
        assert!(!job_finished(&not_yet));
        assert!(job_finished(&failed));
        assert!(job_finished(&target));
        assert!(job_finished(&job(
            serde_json::json!([{"type": "Complete", "status": "True"}])
        )));

        let cases = [
            // Waits Kubernetes retries forever: the Job never finishes.
            (
                serde_json::json!({"phase": "Pending", "containerStatuses": [
                    {"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                     "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
                false,
            ),
            (
                serde_json::json!({"phase": "Pending", "initContainerStatuses": [
                    {"name": "setup", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                     "state": {"waiting": {"reason": "CreateContainerConfigError"}}}]}),
                false,
            ),
            (
                serde_json::json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}),
                false,
            ),
            // A container exited: the Pod ends, even before its phase says so
            // (native sidecars still being stopped).
            (
                serde_json::json!({"phase": "Running", "containerStatuses": [
                    {"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                     "state": {"terminated": {"exitCode": 3}}}]}),
                true,
            ),
            (
                serde_json::json!({"phase": "Failed", "reason": "Evicted"}),
                true,
            ),
        ];
        for (status, expected) in cases {
            let p = pod(status.clone());
            let d = diagnose_pod(&p, &[], "ns", now(), Some(Duration::from_secs(30)))
                .unwrap_or_else(|| panic!("no diagnosis of {status}"));
            assert_eq!(ends_by_itself(None, &p, &d), expected, "{status}");
            assert_eq!(ends_by_itself(Some(&running), &p, &d), expected, "{status}");
            // Whatever the Pod, a Job with the controller's verdict ends.
            assert!(ends_by_itself(Some(&failed), &p, &d), "{status}");
            assert!(ends_by_itself(Some(&target), &p, &d), "{status}");
        }
    }

    #[test]
    fn a_native_sidecars_exit_is_no_failure_but_its_image_pull_is() {
        let with_sidecar = |init_status: serde_json::Value, phase: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "creationTimestamp": "2026-12-05T10:00:00Z"},
                "spec": {"containers": [{"name": "task"}], "initContainers": [
                    {"name": "setup"},
                    {"name": "proxy", "restartPolicy": "Always"}]},
                "status": {"phase": phase,
                    "initContainerStatuses": [
                        {"name": "setup", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                         "state": {"terminated": {"exitCode": 0}}},
                        {"name": "proxy", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                         "state": init_status}],
                    "containerStatuses": [{"name": "task", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
            }))
            .unwrap()
        };
        let diagnose = |p: &Pod| diagnose_pod(p, &[], "ns", now(), None);
        // Stopped with SIGTERM after the task: 143 (or 137 after the grace
        // period), the Pod still Running or already Succeeded.
        for (code, phase) in [(143, "Running"), (137, "Running"), (143, "Succeeded")] {
            let p = with_sidecar(
                serde_json::json!({"terminated": {"exitCode": code, "reason": "Error"}}),
                phase,
            );
            assert_eq!(diagnose(&p), None, "{code} {phase}");
        }
        // A sidecar that cannot be pulled keeps the Pod from starting.
        let p = with_sidecar(
            serde_json::json!({"waiting": {"reason": "ImagePullBackOff"}}),
            "Pending",
        );
        assert_eq!(diagnose(&p).map(|d| d.reason), Some(Reason::ImagePull));
        // The same exit of an ordinary init container is a failure.
        let mut p = with_sidecar(
            serde_json::json!({"terminated": {"exitCode": 143, "reason": "Error"}}),
            "Failed",
        );
        p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[1].restart_policy = None;
        let d = diagnose(&p).unwrap();
        assert_eq!((d.reason, d.exit_code), (Reason::InitContainer, Some(143)));
        // And the task's own exit still is, beside a stopped sidecar.
        let mut p = with_sidecar(
            serde_json::json!({"terminated": {"exitCode": 143, "reason": "Error"}}),
            "Failed",
        );
        p.status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap()
            .exit_code = 3;
        let d = diagnose(&p).unwrap();
        assert_eq!((d.reason, d.exit_code), (Reason::ContainerExit, Some(3)));
        assert!(d.message.contains("container task"), "{}", d.message);
    }
}
