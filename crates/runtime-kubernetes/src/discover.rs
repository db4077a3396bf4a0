//! Finding the Jobs a dead instance of this worker id left behind, when the
//! journal that listed them is gone (the worker Pod was replaced and its
//! state dir, an emptyDir, went with it: the Go worker's #74/#84).
//!
//! Every Job of this worker id (by the Go worker's `oz-worker-hash` label)
//! is considered, running or ended: an ended one's report may have been
//! lost with its worker. One is taken over when it carries the exact ids,
//! its holder is dead ([`crate::holder`]) and this process claims it
//! ([`crate::claim`]): of workers starting at once, one wins, the others
//! leave it. Taking over an ended Job
//! whose report did go out sends that report again, the same outcome from
//! the same Job; PROTOCOL.md's rules make that harmless (the server ignores
//! a terminal report for a run that has already ended).

use crate::claim::{self, Claim};
use crate::holder::{self, Holder, Liveness, PodState};
use crate::names;
use crate::settings::Settings;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use oz_runtime::liveness;
use oz_runtime::{Adoptable, Known, TaskRef};
use std::collections::BTreeMap;

/// The execution a Job's annotations name, when it names this worker id.
pub fn execution_of(annotations: &BTreeMap<String, String>, worker_id: &str) -> Option<TaskRef> {
    if annotations.get(holder::WORKER_ID_ANNOTATION)? != worker_id {
        return None;
    }
    Some(TaskRef {
        task_id: annotations.get(holder::TASK_ID_ANNOTATION)?.clone(),
        execution_id: annotations.get(holder::EXECUTION_ID_ANNOTATION).cloned(),
    })
}

/// `running`, `succeeded` or `failed`, from the Job's conditions.
fn job_state(job: &Job) -> &'static str {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    for c in conditions.into_iter().flatten() {
        if c.status == "True" {
            match c.type_.as_str() {
                "Complete" => return "succeeded",
                "Failed" => return "failed",
                _ => {}
            }
        }
    }
    "running"
}

/// What the API server says of the Pod `<namespace>/<name>`.
async fn pod_state(client: &Client, pod: &str) -> PodState {
    let Some((namespace, name)) = pod.split_once('/') else {
        return PodState::Unreadable(format!("{pod:?} is not <namespace>/<name>"));
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods.get_opt(name).await {
        Ok(None) => PodState::Missing,
        Ok(Some(p)) => PodState::Found {
            uid: p.metadata.uid,
            phase: p
                .status
                .and_then(|s| s.phase)
                .unwrap_or_else(|| "Pending".into()),
        },
        Err(e) => PodState::Unreadable(e.to_string()),
    }
}

/// The Jobs of `worker_id` in the runtime's namespace whose holder is
/// dead. Errors are logged; nothing is found then (the next start tries
/// again).
pub async fn orphans(
    client: &Client,
    settings: &Settings,
    worker_id: &str,
    me: &Holder,
    known: Known<'_>,
) -> Vec<Adoptable> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &settings.namespace);
    let list = match jobs
        .list(&ListParams::default().labels(&names::worker_selector(worker_id)))
        .await
    {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(
                namespace = settings.namespace,
                "cannot list this worker id's Jobs to find those a dead instance left: {e}"
            );
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for job in list.items {
        let Some(name) = job.metadata.name.clone() else {
            tracing::warn!("not taking over a Job the API server listed without metadata.name");
            continue;
        };
        let annotations = job.metadata.annotations.clone().unwrap_or_default();
        let Some(task) = execution_of(&annotations, worker_id) else {
            tracing::debug!(
                job = name,
                "not taking over: the Job names no exact task id of this worker id (made by the Go worker or an older version)"
            );
            continue;
        };
        // Before judging or claiming: the periodic look meets the Jobs the
        // worker follows or has reported every time.
        if known(&task) {
            tracing::debug!(
                job = name,
                "not taking over: the journal knows the execution"
            );
            continue;
        }
        let Some(holder) = Holder::of(&annotations) else {
            tracing::debug!(job = name, "not taking over: the Job names no holder");
            continue;
        };
        // Read before judging (the judgement is synchronous); only a
        // holder that ran in a Pod has one to read.
        let pod = match &holder.pod {
            Some(p) if holder.process.instance != me.process.instance => {
                Some(pod_state(client, p).await)
            }
            _ => None,
        };
        let liveness = holder::liveness(&holder, me, liveness::judge_here, |_| {
            pod.unwrap_or_else(|| PodState::Unreadable("not read".into()))
        });
        match liveness {
            Liveness::Us => {}
            Liveness::Alive => tracing::debug!(
                job = name,
                holder = holder.process.host,
                "not taking over: its worker instance still runs"
            ),
            Liveness::Unknown(why) => tracing::warn!(
                job = name,
                task_id = task.task_id,
                "not taking over this worker id's Job: {why}"
            ),
            Liveness::Dead(why) => {
                let found_as = |claimed: &str| Adoptable {
                    found: format!(
                        "Job {name} ({}; its holder is gone: {why}; {claimed})",
                        job_state(&job)
                    ),
                    task: task.clone(),
                };
                match claim::claim(&jobs, &job, &holder, me).await {
                    Claim::Ours => found.push(found_as("claimed for this instance")),
                    Claim::Lost(who) => tracing::info!(
                        job = name,
                        task_id = task.task_id,
                        "not taking over this worker id's Job: another instance claimed it first ({who}); \
                         that one follows and reports it"
                    ),
                    Claim::Gone => {
                        tracing::debug!(job = name, "not taking over: the Job is gone")
                    }
                    Claim::Forbidden(message) => {
                        tracing::warn!(
                            job = name,
                            "taking over this worker id's Job without claiming it: {message}; a second worker of \
                             this id starting now could take it over too and report it twice; grant `patch` on \
                             `jobs` to the worker's Role (as deploy/kubernetes/base/role.yaml does)"
                        );
                        found.push(found_as("not claimed: no `patch` on jobs"));
                    }
                    Claim::Failed(e) => tracing::warn!(
                        job = name,
                        task_id = task.task_id,
                        "not taking over this worker id's Job now: it cannot be claimed: {e}; the next look \
                         (--takeover-interval) or start tries again"
                    ),
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_ids_of_this_worker_id_are_taken() {
        let a = BTreeMap::from([
            (holder::WORKER_ID_ANNOTATION.to_string(), "w1".to_string()),
            (holder::TASK_ID_ANNOTATION.to_string(), "Run/1".to_string()),
            (
                holder::EXECUTION_ID_ANNOTATION.to_string(),
                "E:1".to_string(),
            ),
        ]);
        assert_eq!(
            execution_of(&a, "w1"),
            Some(TaskRef {
                task_id: "Run/1".into(),
                execution_id: Some("E:1".into())
            })
        );
        // A hash collision or a hand-made label does not make it ours.
        assert_eq!(execution_of(&a, "w2"), None);
        let mut no_task = a.clone();
        no_task.remove(holder::TASK_ID_ANNOTATION);
        assert_eq!(execution_of(&no_task, "w1"), None);
        let mut no_exec = a;
        no_exec.remove(holder::EXECUTION_ID_ANNOTATION);
        assert_eq!(execution_of(&no_exec, "w1").unwrap().execution_id, None);
    }
}
