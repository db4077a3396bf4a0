//! The Job controller (pkg/controller/job), the garbage collector's
//! dependent deletion and the TTL-after-finished controller, level-triggered:
//! every change and every tick reconciles every Job from the store's state,
//! so a restarted server picks up where it stopped.
//!
//! Rules kept (Kubernetes 1.33, batch/v1): one Pod per Job (parallelism and
//! completions 1) from the template, with the labels and ownerReference the
//! controller sets and the `batch.kubernetes.io/job-tracking` finalizer;
//! failed Pods beyond `backoffLimit` → `FailureTarget` then `Failed`
//! (BackoffLimitExceeded); `activeDeadlineSeconds` past → the same with
//! DeadlineExceeded and the Pods deleted; success → `SuccessCriteriaMet`
//! then `Complete`; the terminal condition only once no Pod is left
//! running or terminating; `ttlSecondsAfterFinished` → the Job deleted
//! (foreground) that long after it finished.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::meta::{self, Resource};
use crate::recorder::{self, Source};
use crate::store::Shared;

const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const TRACKING: &str = "batch.kubernetes.io/job-tracking";
pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Runs the controllers until the process ends.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let notified = shared.changed.notified();
        reconcile_all(&shared);
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn condition_true(job: &Value, kind: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

fn owned_by(pod: &Value, uid: &str) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["uid"] == uid && o["controller"] == true)
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("Pending")
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    o["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| x == f)
}

fn remove_finalizer(o: &mut Value, f: &str) {
    // pointer_mut: indexing mutably would insert `finalizers: null`.
    if let Some(list) = o
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        list.retain(|x| x != f);
        if list.is_empty() {
            o["metadata"].as_object_mut().unwrap().remove("finalizers");
        }
    }
}

/// Marks a Pod for graceful deletion (as a DELETE would): deletionTimestamp
/// now + grace, deletionGracePeriodSeconds; an unscheduled or finished Pod
/// with no finalizers goes at once.
pub fn delete_pod(shared: &Shared, ns: &str, name: &str, grace: Option<i64>) {
    shared.with(|store| {
        let Some(pod) = store.get(Resource::Pods, ns, name).cloned() else {
            return;
        };
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return;
        }
        let grace = grace
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        let unscheduled = pod["spec"]["nodeName"].is_null();
        let finished = matches!(phase(&pod), "Succeeded" | "Failed");
        let no_finalizers = pod["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        if (unscheduled || (finished && grace == 0)) && no_finalizers {
            store.remove(Resource::Pods, ns, name);
            return;
        }
        let at = (chrono::Utc::now() + chrono::Duration::seconds(grace))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        store.update(Resource::Pods, ns, name, |p| {
            p["metadata"]["deletionTimestamp"] = json!(at);
            p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        });
    });
}

fn reconcile_all(shared: &Arc<Shared>) {
    let (jobs, pods) =
        shared.read(|s| (s.list(Resource::Jobs, None), s.list(Resource::Pods, None)));
    // Garbage collection: Pods whose controlling Job is gone.
    for pod in &pods {
        let Some(owner) = pod["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["controller"] == true))
        else {
            continue;
        };
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let alive = jobs
            .iter()
            .any(|j| j["metadata"]["uid"] == owner["uid"] && j["metadata"]["namespace"] == ns);
        if !alive && pod["metadata"]["deletionTimestamp"].is_null() {
            delete_pod(
                shared,
                ns,
                pod["metadata"]["name"].as_str().unwrap_or(""),
                None,
            );
        }
        // The job controller drops its tracking finalizer from finished Pods
        // and from Pods being deleted whose Job is gone.
        if has_finalizer(pod, TRACKING) && (matches!(phase(pod), "Succeeded" | "Failed") || !alive)
        {
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            shared.with(|s| s.update(Resource::Pods, ns, &name, |p| remove_finalizer(p, TRACKING)));
        }
    }
    for job in jobs {
        reconcile(shared, &job, &pods);
    }
}

fn set_condition(job: &mut Value, kind: &str, reason: &str, message: &str) {
    let now = meta::now();
    let conditions = job["status"]["conditions"].as_array_mut();
    let cond = json!({"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": reason, "message": message});
    match conditions {
        Some(list) => {
            if !list.iter().any(|c| c["type"] == kind) {
                list.push(cond)
            }
        }
        None => job["status"]["conditions"] = json!([cond]),
    }
}

fn condition(job: &Value, kind: &str) -> Option<Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

fn reconcile(shared: &Arc<Shared>, job: &Value, pods: &[Value]) {
    let ns = job["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let mine: Vec<&Value> = pods.iter().filter(|p| owned_by(p, &uid)).collect();

    if job["metadata"]["deletionTimestamp"].is_string() {
        if has_finalizer(job, FOREGROUND) {
            for p in &mine {
                delete_pod(
                    shared,
                    &ns,
                    p["metadata"]["name"].as_str().unwrap_or(""),
                    None,
                );
            }
            if mine.is_empty() {
                shared.with(|s| {
                    s.update(Resource::Jobs, &ns, &name, |j| {
                        remove_finalizer(j, FOREGROUND)
                    })
                });
            }
        }
        if has_finalizer(job, ORPHAN) {
            orphan(shared, &ns, &mine);
            shared.with(|s| s.update(Resource::Jobs, &ns, &name, |j| remove_finalizer(j, ORPHAN)));
        }
        return;
    }

    let finished = condition_true(job, "Complete") || condition_true(job, "Failed");
    if finished {
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() {
            let at = condition(job, "Complete")
                .or_else(|| condition(job, "Failed"))
                .and_then(|c| c["lastTransitionTime"].as_str().and_then(meta::parse_time));
            if at.is_some_and(|t| t + chrono::Duration::seconds(ttl) <= chrono::Utc::now()) {
                recorder::record(
                    shared,
                    job,
                    None,
                    false,
                    "Deleted",
                    "Job has been deleted",
                    Source::TtlController,
                );
                shared.with(|s| {
                    s.update(Resource::Jobs, &ns, &name, |j| {
                        j["metadata"]["deletionTimestamp"] = json!(meta::now());
                        j["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                        let f = j["metadata"]["finalizers"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        let mut f: Vec<Value> = f;
                        f.push(json!(FOREGROUND));
                        j["metadata"]["finalizers"] = json!(f);
                    })
                });
            }
        }
        return;
    }
    if job["spec"]["suspend"] == true {
        return;
    }

    let terminating = mine
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_string()
                && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .count();
    let active: Vec<&&Value> = mine
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .collect();
    let succeeded = mine.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    let failed = mine.iter().filter(|p| phase(p) == "Failed").count() as i64;
    let ready = active
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count();
    let backoff_limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
    let completions = job["spec"]["completions"].as_i64().unwrap_or(1);

    let start = job["status"]["startTime"]
        .as_str()
        .and_then(meta::parse_time);
    let deadline_passed = match (job["spec"]["activeDeadlineSeconds"].as_i64(), start) {
        (Some(ads), Some(t)) => t + chrono::Duration::seconds(ads) <= chrono::Utc::now(),
        _ => false,
    };
    let failure_target = condition(job, "FailureTarget");
    let success_target = condition(job, "SuccessCriteriaMet");

    let mut decided_failure: Option<(&str, &str)> = None;
    if failure_target.is_none() && success_target.is_none() {
        if failed > backoff_limit {
            decided_failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if deadline_passed {
            decided_failure = Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        }
    }
    if let Some((reason, message)) = decided_failure {
        for p in &active {
            delete_pod(
                shared,
                &ns,
                p["metadata"]["name"].as_str().unwrap_or(""),
                None,
            );
        }
        recorder::record(
            shared,
            job,
            None,
            true,
            reason,
            message,
            Source::JobController,
        );
    }
    let success_now = failure_target.is_none()
        && decided_failure.is_none()
        && success_target.is_none()
        && succeeded >= completions;
    if success_now {
        recorder::record(
            shared,
            job,
            None,
            false,
            "Completed",
            "Job completed",
            Source::JobController,
        );
    }

    // A Pod to create: none running, none terminating, more to go.
    let mut create_pod = false;
    if decided_failure.is_none()
        && failure_target.is_none()
        && !success_now
        && success_target.is_none()
        && active.is_empty()
        && terminating == 0
        && succeeded < completions
    {
        // Back off after failures: 10s doubling, from the last failure.
        let last_failure = mine
            .iter()
            .filter(|p| phase(p) == "Failed")
            .filter_map(|p| finished_at(p))
            .max();
        let delay = if failed == 0 {
            0
        } else {
            (10i64 << (failed - 1).min(5)).min(360)
        };
        create_pod =
            last_failure.is_none_or(|t| t + chrono::Duration::seconds(delay) <= chrono::Utc::now());
    }

    let still_running = active.len() + terminating;
    shared.with(|s| {
        s.update(Resource::Jobs, &ns, &name, |j| {
            if j["status"].is_null() {
                j["status"] = json!({});
            }
            if j["status"]["startTime"].is_null() {
                j["status"]["startTime"] = json!(meta::now());
            }
            let st = &mut j["status"];
            st["active"] = json!(active.len() + usize::from(create_pod));
            st["ready"] = json!(ready);
            st["terminating"] = json!(terminating);
            st["uncountedTerminatedPods"] = json!({});
            if succeeded > 0 {
                st["succeeded"] = json!(succeeded);
            }
            if failed > 0 {
                st["failed"] = json!(failed);
            }
            for key in ["active", "succeeded", "failed"] {
                if st[key] == 0 {
                    st.as_object_mut().unwrap().remove(key);
                }
            }
            if let Some((reason, message)) = decided_failure {
                set_condition(j, "FailureTarget", reason, message);
            }
            if success_now {
                set_condition(
                    j,
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
            }
            // Terminal conditions wait for the last Pod to stop.
            if still_running == 0 {
                if let Some(t) = condition(j, "FailureTarget") {
                    set_condition(
                        j,
                        "Failed",
                        t["reason"].as_str().unwrap_or(""),
                        t["message"].as_str().unwrap_or(""),
                    );
                }
                if condition(j, "SuccessCriteriaMet").is_some()
                    && condition(j, "Complete").is_none()
                {
                    set_condition(
                        j,
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    );
                    j["status"]["completionTime"] = json!(meta::now());
                }
            }
        })
    });
    if create_pod {
        let pod = pod_from_template(job);
        let created = shared.with(|s| s.create(Resource::Pods, &ns, pod));
        match created {
            Ok(p) => recorder::record(
                shared,
                job,
                None,
                false,
                "SuccessfulCreate",
                &format!(
                    "Created pod: {}",
                    p["metadata"]["name"].as_str().unwrap_or("")
                ),
                Source::JobController,
            ),
            Err(e) => recorder::record(
                shared,
                job,
                None,
                true,
                "FailedCreate",
                &format!(
                    "Error creating: {}",
                    e.body["message"].as_str().unwrap_or("")
                ),
                Source::JobController,
            ),
        }
    }
}

fn finished_at(pod: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["status"]["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| {
            c["state"]["terminated"]["finishedAt"]
                .as_str()
                .and_then(meta::parse_time)
        })
        .max()
}

/// The Pod the controller creates: the template, the Job's labels, the
/// ownerReference, the tracking finalizer.
pub fn pod_from_template(job: &Value) -> Value {
    let name = job["metadata"]["name"].as_str().unwrap_or("");
    let uid = job["metadata"]["uid"].as_str().unwrap_or("");
    let template = &job["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    for (k, v) in [
        (CONTROLLER_UID, uid),
        (JOB_NAME, name),
        ("controller-uid", uid),
        ("job-name", name),
    ] {
        labels[k] = json!(v);
    }
    let mut metadata = json!({
        "generateName": format!("{name}-"),
        "labels": labels,
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
        "finalizers": [TRACKING],
    });
    if let Some(a) = template["metadata"]["annotations"].as_object() {
        metadata["annotations"] = json!(a);
    }
    let mut spec = template["spec"].clone();
    default_pod_spec(&mut spec);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

/// The defaults the API server fills in a PodSpec (pkg/apis/core/v1/defaults.go).
pub fn default_pod_spec(spec: &mut Value) {
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
    ];
    for (k, v) in defaults {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if c["imagePullPolicy"].is_null() {
                let image = c["image"].as_str().unwrap_or("");
                let latest = image.ends_with(":latest")
                    || !image.rsplit('/').next().unwrap_or("").contains(':');
                c["imagePullPolicy"] = json!(if latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                });
            }
            if c["terminationMessagePath"].is_null() {
                c["terminationMessagePath"] = json!("/dev/termination-log");
            }
            if c["terminationMessagePolicy"].is_null() {
                c["terminationMessagePolicy"] = json!("File");
            }
            if c["resources"].is_null() {
                c["resources"] = json!({});
            }
        }
    }
}

/// Orphan propagation: the dependents lose their ownerReference.
pub fn orphan(shared: &Shared, ns: &str, pods: &[&Value]) {
    for p in pods {
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        shared.with(|s| {
            s.update(Resource::Pods, ns, &name, |p| {
                p["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ownerReferences");
                remove_finalizer(p, TRACKING);
            })
        });
    }
}

/// The defaults the API server fills in a Job (pkg/apis/batch/v1/defaults.go)
/// and the selector and template labels it generates.
pub fn default_job(job: &mut Value, uid: &str) {
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    let spec = &mut job["spec"];
    for (k, v) in [
        ("backoffLimit", json!(6)),
        ("completions", json!(1)),
        ("parallelism", json!(1)),
        ("completionMode", json!("NonIndexed")),
        ("suspend", json!(false)),
        ("podReplacementPolicy", json!("TerminatingOrFailed")),
        ("manualSelector", Value::Null),
    ] {
        if spec[k].is_null() && !v.is_null() {
            spec[k] = v;
        }
    }
    if spec["selector"].is_null() {
        spec["selector"] = json!({"matchLabels": {CONTROLLER_UID: uid}});
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        (CONTROLLER_UID, uid),
        (JOB_NAME, name.as_str()),
        ("controller-uid", uid),
        ("job-name", name.as_str()),
    ] {
        labels[k] = json!(v);
    }
    default_pod_spec(&mut spec["template"]["spec"]);
}
