//! The start-up preflight (the Go worker's): one Job from the operator's
//! template proves the worker may create task Jobs with what they need — a
//! root init container (sidecar copies) or an image volume — before any
//! task is claimed. In copy mode it passes once the Job has a Pod; in
//! image-volume mode once the Job completes. A `FailedCreate` event (an
//! admission policy, a quota, RBAC) fails it, as does the timeout. The Job
//! is deleted either way.

use crate::diagnosis::{self, JobState};
use crate::job_spec;
use crate::settings::Settings;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use std::time::Duration;

/// How long the preflight may take (the Go worker's).
pub const TIMEOUT: Duration = Duration::from_secs(15);
// The preflight Job's own deadline must not cut the wait short.
const _: () = assert!(crate::job_spec::PREFLIGHT_DEADLINE_SECONDS as u64 > TIMEOUT.as_secs());
const POLL: Duration = Duration::from_millis(500);

/// Why the preflight failed; says what to check.
#[derive(Debug, thiserror::Error)]
#[error(
    "kubernetes start-up preflight failed in namespace {namespace}: {problem}. The worker creates task Jobs {needs}; \
     check the service account's RBAC (jobs create/get/list/watch/delete, pods get/list/watch, pods/log get, events list), \
     Pod Security admission and other admission policies for that namespace"
)]
pub struct PreflightError {
    pub namespace: String,
    pub problem: String,
    needs: &'static str,
}

/// Runs the preflight Job and removes it.
pub async fn run(
    client: &Client,
    settings: &Settings,
    worker_id: &str,
) -> Result<(), PreflightError> {
    let fail = |problem: String| PreflightError {
        namespace: settings.namespace.clone(),
        problem,
        needs: if settings.use_image_volumes {
            "that mount sidecars as image volumes (use_image_volumes: true), which also needs a cluster with the ImageVolume feature"
        } else {
            "with a root init container that copies each sidecar"
        },
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &settings.namespace);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let job = job_spec::preflight_job(settings, worker_id, nanos);
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .map_err(|e| fail(format!("cannot create the preflight Job: {e}")))?;
    let Some(name) = created.metadata.name.clone() else {
        // The Job was sent with a name: delete it by that one so that
        // nothing is left behind.
        if let Some(sent) = &job.metadata.name {
            if let Err(e) = jobs.delete(sent, &DeleteParams::background()).await {
                tracing::warn!(job = sent, "could not delete the preflight Job: {e}");
            }
        }
        return Err(fail(
            "the API server's answer to creating the preflight Job has no metadata.name".into(),
        ));
    };
    let outcome = tokio::time::timeout(
        TIMEOUT,
        wait(client, settings, &name, created.metadata.uid.as_deref()),
    )
    .await;
    if let Err(e) = jobs.delete(&name, &DeleteParams::background()).await {
        tracing::warn!(job = name, "could not delete the preflight Job: {e}");
    }
    match outcome {
        Ok(result) => result.map_err(|e| fail(e.to_string())),
        Err(_) => Err(fail(format!(
            "the preflight Job {name} {} within {}s",
            if settings.use_image_volumes {
                "did not complete"
            } else {
                "got no Pod"
            },
            TIMEOUT.as_secs()
        ))),
    }
}

/// Why the preflight Job did not show that tasks can run; the text becomes
/// the `problem` of the [`PreflightError`].
#[derive(Debug, thiserror::Error)]
enum WaitError {
    /// An API call failed (`step`: "cannot list the preflight Job's Pods").
    #[error("{step}: {source}")]
    Api {
        step: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The Job or its Pod failed; the diagnosis says why and what to check.
    #[error("{0}")]
    Failed(String),
    #[error("the preflight Job {job} could not create a Pod: {message}")]
    FailedCreate { job: String, message: String },
    /// The API server's answer for the Job lacks a field the wait needs
    /// (`field`: "metadata.uid").
    #[error("the API server's answer for the preflight Job {job} has no {field}")]
    Missing { job: String, field: &'static str },
}

impl WaitError {
    fn at(step: &'static str) -> impl FnOnce(kube::Error) -> WaitError {
        move |source| WaitError::Api { step, source }
    }
}

/// Waits for the Job `name` (whose `uid`, from the API server's answer,
/// selects its events) to show that tasks can run.
async fn wait(
    client: &Client,
    settings: &Settings,
    name: &str,
    uid: Option<&str>,
) -> Result<(), WaitError> {
    let ns = &settings.namespace;
    let Some(uid) = uid else {
        return Err(WaitError::Missing {
            job: name.to_string(),
            field: "metadata.uid",
        });
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let pod_selector = ListParams::default().labels(&format!("job-name={name}"));
    let event_selector = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    loop {
        let found = pods
            .list(&pod_selector)
            .await
            .map_err(WaitError::at("cannot list the preflight Job's Pods"))?;
        if settings.use_image_volumes {
            let current = jobs
                .get(name)
                .await
                .map_err(WaitError::at("cannot read the preflight Job"))?;
            match diagnosis::job_state(&current, ns) {
                JobState::Complete => return Ok(()),
                JobState::Failed { message, .. } => return Err(WaitError::Failed(message)),
                JobState::Running => {}
            }
            for pod in &found.items {
                if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
                    return Ok(());
                }
                let now = k8s_openapi::jiff::Timestamp::now();
                if let Some(d) =
                    diagnosis::diagnose_pod(pod, &[], ns, now, settings.unschedulable_timeout)
                {
                    return Err(WaitError::Failed(d.message));
                }
            }
        } else if !found.items.is_empty() {
            return Ok(());
        }
        let listed = events
            .list(&event_selector)
            .await
            .map_err(WaitError::at("cannot list the preflight Job's events"))?;
        if let Some(e) = listed.items.iter().find(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("FailedCreate")
        }) {
            return Err(WaitError::FailedCreate {
                job: name.to_string(),
                message: e.message.as_deref().unwrap_or("FailedCreate").to_owned(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
