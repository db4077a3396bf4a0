//! Waits for one execution's Job to end, from two watches — the Job by
//! name and its Pods by the execution's label — plus a safety poll every
//! 30 s (the Go worker's), and says how it ended.
//!
//! The watches are kube-runtime's watchers: they ask for bookmarks, resume
//! from the last resourceVersion they saw after a dropped connection, and
//! list again when the server answers 410 Gone (the history was
//! compacted), so neither an API server restart nor a compaction loses the
//! end of a task. A watch or poll error is retried with backoff, never
//! taken for the task's end: the Job keeps running in the cluster whatever
//! happens to the worker's connection.

use crate::diagnosis::{self, Diagnosis, JobState, Reason};
use crate::failure_details::{self, ObservationSource};
use crate::settings::Settings;
use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use oz_protocol::FailureDetails;
use std::collections::BTreeMap;
use std::time::Duration;

/// The Go worker's safety poll.
pub const SAFETY_POLL: Duration = Duration::from_secs(30);

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The Job completed: the agent exited 0.
    Completed,
    Failed {
        reason: Reason,
        message: String,
        exit_code: Option<i64>,
        details: Box<FailureDetails>,
        /// The Job ends without the worker (the Job controller's verdict
        /// is written, or the Pod ended or will):
        /// [`diagnosis::ends_by_itself`]. False when the failure was read
        /// from a Pod that waits, which Kubernetes retries forever.
        ends_by_itself: bool,
    },
    /// The Job is gone and the worker did not delete it (kubectl, the TTL
    /// controller, a namespace deletion): how the task ended is unknown.
    JobGone { message: String },
}

/// What the loop knows of one execution.
pub struct Execution<'a> {
    pub client: &'a Client,
    pub settings: &'a Settings,
    pub job_name: &'a str,
    /// The execution's Pod selector (`oz-execution-hash=…`).
    pub pod_selector: &'a str,
}

/// Called with every Pod version seen (to start streaming its logs).
pub trait PodObserver: Send {
    fn observe(&mut self, pod: &Pod);
}

impl<F: FnMut(&Pod) + Send> PodObserver for F {
    fn observe(&mut self, pod: &Pod) {
        self(pod)
    }
}

// One value at a time passes through the select loop; boxing the Job
// would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Seen {
    Job(Option<Box<Job>>),
    Pod(Box<Pod>),
    PodGone(String),
    Poll,
    Recheck,
}

/// Watches until the Job ends. Cancel-safe: dropping the future stops the
/// watches and nothing else.
pub async fn until_ended(exec: Execution<'_>, observer: &mut dyn PodObserver) -> Ended {
    let ns = exec.settings.namespace.as_str();
    let jobs: Api<Job> = Api::namespaced(exec.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(exec.client.clone(), ns);
    let job_watch = watcher(
        jobs.clone(),
        watcher::Config::default().fields(&format!("metadata.name={}", exec.job_name)),
    )
    .default_backoff()
    .filter_map(|e| async move {
        match e {
            Ok(watcher::Event::Apply(j)) | Ok(watcher::Event::InitApply(j)) => {
                Some(Seen::Job(Some(Box::new(j))))
            }
            Ok(watcher::Event::Delete(_)) => Some(Seen::Job(None)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("the Job watch failed (retrying): {e}");
                None
            }
        }
    });
    let pod_watch = watcher(
        pods.clone(),
        watcher::Config::default().labels(exec.pod_selector),
    )
    .default_backoff()
    .filter_map(|e| async move {
        match e {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                if p.metadata.name.is_none() {
                    tracing::warn!("ignoring a Pod without metadata.name");
                    return None;
                }
                Some(Seen::Pod(Box::new(p)))
            }
            Ok(watcher::Event::Delete(p)) => match p.metadata.name {
                Some(name) => Some(Seen::PodGone(name)),
                None => {
                    tracing::warn!("ignoring a Pod deletion without metadata.name");
                    None
                }
            },
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("the Pod watch failed (retrying): {e}");
                None
            }
        }
    });
    let job_watch = job_watch.map(|s| (s, ObservationSource::JobWatch));
    let pod_watch = pod_watch.map(|s| (s, ObservationSource::PodWatch));
    let mut watches = futures_util::stream::select(job_watch, pod_watch).boxed();
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + SAFETY_POLL, SAFETY_POLL);
    let mut last_job: Option<Job> = None;
    let mut live_pods: BTreeMap<String, Pod> = BTreeMap::new();
    // When an unschedulable Pod's wait runs out, look again then rather
    // than at the next poll.
    let mut recheck_at: Option<tokio::time::Instant> = None;
    loop {
        let (seen, source) = tokio::select! {
            next = watches.next() => match next {
                Some(x) => x,
                None => (Seen::Poll, ObservationSource::SafetyPoll),
            },
            _ = poll.tick() => (Seen::Poll, ObservationSource::SafetyPoll),
            _ = async { tokio::time::sleep_until(recheck_at.unwrap()).await }, if recheck_at.is_some() => {
                recheck_at = None;
                (Seen::Recheck, ObservationSource::PodWatch)
            }
        };
        let mut check_pods: Vec<Pod> = Vec::new();
        match seen {
            Seen::Job(Some(job)) => {
                let state = diagnosis::job_state(&job, ns);
                last_job = Some(*job);
                if let Some(ended) =
                    on_job_state(&exec, state, source, last_job.as_ref(), &live_pods).await
                {
                    return ended;
                }
            }
            Seen::Job(None) => {
                return Ended::JobGone {
                    message: gone_message(exec.job_name, ns),
                }
            }
            Seen::Pod(pod) => {
                observer.observe(&pod);
                // Named: the watch passes on only Pods with a name.
                if let Some(name) = pod.metadata.name.clone() {
                    live_pods.insert(name, (*pod).clone());
                }
                check_pods.push(*pod);
            }
            Seen::PodGone(name) => {
                live_pods.remove(&name);
            }
            Seen::Recheck => check_pods.extend(live_pods.values().cloned()),
            Seen::Poll => match jobs.get_opt(exec.job_name).await {
                Ok(Some(job)) => {
                    let state = diagnosis::job_state(&job, ns);
                    last_job = Some(job);
                    match pods
                        .list(&ListParams::default().labels(exec.pod_selector))
                        .await
                    {
                        Ok(list) => {
                            live_pods = named_pods(list.items);
                        }
                        Err(e) => {
                            tracing::warn!("the safety poll could not list the task's Pods: {e}")
                        }
                    }
                    if let Some(ended) =
                        on_job_state(&exec, state, source, last_job.as_ref(), &live_pods).await
                    {
                        return ended;
                    }
                    for pod in live_pods.values() {
                        observer.observe(pod);
                    }
                    check_pods.extend(live_pods.values().cloned());
                }
                Ok(None) => {
                    return Ended::JobGone {
                        message: gone_message(exec.job_name, ns),
                    }
                }
                Err(e) => tracing::warn!(
                    job = exec.job_name,
                    "the safety poll could not read the Job: {e}"
                ),
            },
        }
        for pod in check_pods {
            if let Some(ended) = diagnose(&exec, &pod, source, last_job.as_ref()).await {
                return ended;
            }
            if let Some(at) = unschedulable_deadline(&pod, exec.settings) {
                recheck_at = Some(recheck_at.map_or(at, |r| r.min(at)));
            }
        }
    }
}

fn gone_message(job: &str, ns: &str) -> String {
    format!(
        "the Job {job} in namespace {ns} was deleted by something other than this worker (kubectl delete, the TTL controller, \
         a namespace deletion) before the task ended; how the task ended is unknown"
    )
}

/// When an unschedulable Pod's `unschedulable_timeout` runs out.
fn unschedulable_deadline(pod: &Pod, settings: &Settings) -> Option<tokio::time::Instant> {
    let timeout = settings.unschedulable_timeout?;
    let status = pod.status.as_ref()?;
    status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    let created = pod.metadata.creation_timestamp.as_ref()?.0;
    let waited = Timestamp::now().duration_since(created);
    let waited = Duration::try_from(waited).unwrap_or_default();
    Some(tokio::time::Instant::now() + timeout.saturating_sub(waited) + Duration::from_millis(10))
}

async fn on_job_state(
    exec: &Execution<'_>,
    state: JobState,
    source: ObservationSource,
    job: Option<&Job>,
    pods: &BTreeMap<String, Pod>,
) -> Option<Ended> {
    match state {
        JobState::Running => None,
        JobState::Complete => Some(Ended::Completed),
        JobState::Failed { reason, message } => {
            // A Pod usually says more than the Job's condition.
            let listed = Api::<Pod>::namespaced(exec.client.clone(), &exec.settings.namespace)
                .list(&ListParams::default().labels(exec.pod_selector))
                .await
                .map(|l| l.items)
                .unwrap_or_else(|_| pods.values().cloned().collect());
            for pod in &listed {
                if let Some(ended) = diagnose(exec, pod, source, job).await {
                    return Some(ended);
                }
            }
            let events = events_of(exec, job.and_then(|j| j.metadata.uid.as_deref())).await;
            let details = failure_details::build(
                source,
                Timestamp::now(),
                job,
                listed.first(),
                None,
                &events,
            );
            Some(Ended::Failed {
                reason,
                message,
                exit_code: None,
                details: Box::new(details),
                ends_by_itself: true,
            })
        }
    }
}

async fn events_of(exec: &Execution<'_>, uid: Option<&str>) -> Vec<Event> {
    let Some(uid) = uid.filter(|u| !u.is_empty()) else {
        return Vec::new();
    };
    Api::<Event>::namespaced(exec.client.clone(), &exec.settings.namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .map(|l| l.items)
        .unwrap_or_else(|e| {
            tracing::warn!("could not list the events of {uid}: {e}");
            Vec::new()
        })
}

async fn diagnose(
    exec: &Execution<'_>,
    pod: &Pod,
    source: ObservationSource,
    job: Option<&Job>,
) -> Option<Ended> {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    // Events cost a request: only a Pod in trouble is worth it.
    let events = if phase == "Pending" || phase == "Failed" {
        events_of(exec, pod.metadata.uid.as_deref()).await
    } else {
        Vec::new()
    };
    let found = diagnosis::diagnose_pod(
        pod,
        &events,
        &exec.settings.namespace,
        Timestamp::now(),
        exec.settings.unschedulable_timeout,
    )?;
    // A Pod the Job controller is deleting because the Job ran past
    // activeDeadlineSeconds has its containers killed (137 after the grace
    // period): the cause is the deadline, which the Job's FailureTarget
    // (then Failed) condition states with reason DeadlineExceeded
    // (pkg/controller/job/job_controller.go; the condition is written in
    // the same sync that deletes the Pods). The Pod's update can arrive
    // before the Job's, so a Pod being deleted makes the Job be read again.
    let fresh;
    let job = if pod.metadata.deletion_timestamp.is_some()
        && job.is_none_or(|j| diagnosis::deadline_exceeded(j).is_none())
    {
        fresh = Api::<Job>::namespaced(exec.client.clone(), &exec.settings.namespace)
            .get_opt(exec.job_name)
            .await
            .ok()
            .flatten();
        fresh.as_ref().or(job)
    } else {
        job
    };
    let ends_by_itself = diagnosis::ends_by_itself(job, pod, &found);
    let Diagnosis {
        mut reason,
        mut message,
        exit_code,
        container,
    } = found;
    if let Some(verdict) = job.and_then(diagnosis::deadline_exceeded) {
        reason = Reason::ActiveDeadline;
        message = format!(
            "{verdict}; its Pod was stopped: {message} (active_deadline_seconds is {})",
            exec.settings
                .active_deadline_seconds
                .map_or_else(|| "not set here".to_string(), |s| format!("{s}s"))
        );
    }
    let mut all_events = events;
    all_events.extend(events_of(exec, job.and_then(|j| j.metadata.uid.as_deref())).await);
    let details = failure_details::build(
        source,
        Timestamp::now(),
        job,
        Some(pod),
        container.as_ref(),
        &all_events,
    );
    Some(Ended::Failed {
        reason,
        message,
        exit_code,
        details: Box::new(details),
        ends_by_itself,
    })
}

/// Pods by name; a Pod without `metadata.name` (which no API server
/// sends) is left out with a warning rather than filed under "".
fn named_pods(pods: Vec<Pod>) -> BTreeMap<String, Pod> {
    pods.into_iter()
        .filter_map(|p| match p.metadata.name.clone() {
            Some(name) => Some((name, p)),
            None => {
                tracing::warn!("ignoring a listed Pod without metadata.name");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: name.map(str::to_string),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_without_a_name_is_not_filed_under_an_empty_name() {
        let pods = named_pods(vec![pod(Some("p-1")), pod(None), pod(Some("p-2"))]);
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["p-1", "p-2"]);
    }
}
