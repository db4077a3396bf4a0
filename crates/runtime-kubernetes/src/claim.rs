//! Claiming a dead holder's Job before taking it over, so that of two
//! workers starting at once (two replicas of one worker id replacing a
//! dead one) exactly one follows and reports it.
//!
//! The claim is Kubernetes' optimistic concurrency: a JSON merge patch that
//! writes this process's holder annotations carrying the `resourceVersion`
//! read when the Job was found, which the API server applies only if the
//! Job is unchanged since (else 409 Conflict). A conflict is read again:
//! another holder on the Job now means another worker won; the dead holder
//! still there means something else changed the Job (the Job controller
//! updates its status), and the claim is tried again on the new version.
//! Needs `patch` on `jobs` (deploy/kubernetes/base/role.yaml grants it;
//! the Go chart's Role does not: [`Claim::Forbidden`]).

use crate::holder::{holder_annotations, Holder};
use crate::retry::{self, Backoff};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Patch, PatchParams};
use kube::Api;
use oz_runtime::liveness::INSTANCE_KEY;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a claim answered 5xx or not at all is tried again.
const CLAIM_RETRY_FOR: Duration = Duration::from_secs(30);
/// How many times a Job that keeps changing under the claim is read again.
const MAX_CONFLICTS: u32 = 8;

/// What came of claiming a Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process is its holder now.
    Ours,
    /// Another process claimed it first (which one).
    Lost(String),
    /// The Job no longer exists.
    Gone,
    /// The Role does not grant `patch` on `jobs` (the API server's
    /// message): the Job can only be taken over unclaimed.
    Forbidden(String),
    /// It cannot be claimed now (why); a later look or start tries again.
    Failed(String),
}

/// The merge patch making `me` the holder, applied only to the Job at
/// `resource_version`. A holder annotation `me` has no value for (no Pod)
/// is removed, so none of the dead holder's marks is left behind.
pub fn patch_body(me: &Holder, resource_version: &str) -> Value {
    let mine = me.annotations();
    let annotations: Map<String, Value> = holder_annotations()
        .map(|k| {
            let v = mine.get(k).map_or(Value::Null, |v| json!(v));
            (k.to_string(), v)
        })
        .collect();
    json!({"metadata": {"resourceVersion": resource_version, "annotations": annotations}})
}

/// Who holds a Job, by its annotations, against the `dead` holder it was
/// found with.
#[derive(Debug, PartialEq, Eq)]
enum Holds {
    Me,
    StillDead,
    /// Another holder (described), or none any more.
    Other(String),
}

fn holds(annotations: &BTreeMap<String, String>, dead: &Holder, me: &Holder) -> Holds {
    match annotations.get(INSTANCE_KEY) {
        Some(i) if *i == me.process.instance => Holds::Me,
        Some(i) if *i == dead.process.instance => Holds::StillDead,
        _ => Holds::Other(match Holder::of(annotations) {
            Some(h) => describe(&h),
            None => "its holder annotations were removed".into(),
        }),
    }
}

/// A holder in words, for logs: its Pod, else its host and pid.
pub fn describe(h: &Holder) -> String {
    match &h.pod {
        Some(pod) => format!("worker instance {} in Pod {pod}", h.process.instance),
        None => format!(
            "worker instance {} on {} (pid {})",
            h.process.instance, h.process.host, h.process.pid
        ),
    }
}

/// Claims `job`, found held by `dead`, for `me`.
pub async fn claim(jobs: &Api<Job>, job: &Job, dead: &Holder, me: &Holder) -> Claim {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut version = job.metadata.resource_version.clone().unwrap_or_default();
    let mut backoff = Backoff::new(CLAIM_RETRY_FOR);
    let mut conflicts = 0;
    loop {
        let patch = Patch::Merge(patch_body(me, &version));
        match jobs.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => return Claim::Ours,
            Err(kube::Error::Api(s)) if s.is_not_found() => return Claim::Gone,
            Err(kube::Error::Api(s)) if s.is_forbidden() => return Claim::Forbidden(s.message),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                conflicts += 1;
                if conflicts > MAX_CONFLICTS {
                    return Claim::Failed(format!(
                        "the Job changed under each of {MAX_CONFLICTS} claims"
                    ));
                }
            }
            // The patch may have been applied: the read below tells.
            Err(e) if retry::is_transient(&e) => {
                if !backoff.wait().await {
                    return Claim::Failed(e.to_string());
                }
            }
            Err(e) => return Claim::Failed(e.to_string()),
        }
        match jobs.get_opt(&name).await {
            Ok(None) => return Claim::Gone,
            Ok(Some(now)) => {
                let annotations = now.metadata.annotations.clone().unwrap_or_default();
                match holds(&annotations, dead, me) {
                    Holds::Me => return Claim::Ours,
                    Holds::Other(who) => return Claim::Lost(who),
                    Holds::StillDead => {
                        version = now.metadata.resource_version.unwrap_or_default();
                    }
                }
            }
            // Patched again on the old version: a conflict, then read.
            Err(e) if retry::is_transient(&e) => {
                if !backoff.wait().await {
                    return Claim::Failed(e.to_string());
                }
            }
            Err(e) => return Claim::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holder::POD_ANNOTATION;

    fn holder(instance: &str, pod: Option<&str>) -> Holder {
        Holder {
            process: oz_runtime::liveness::ProcessIdentity {
                instance: instance.into(),
                host: "m/node-a".into(),
                boot: "b".into(),
                pid: 7,
                pid_start: "9".into(),
                beacon: "oz-agent-worker/x".into(),
                net_namespace: "net:[1]".into(),
                pid_namespace: "pid:[1]".into(),
            },
            pod: pod.map(Into::into),
            pod_uid: None,
        }
    }

    #[test]
    fn the_patch_names_the_read_version_and_replaces_every_holder_mark() {
        let me = holder("i-me", None);
        let p = patch_body(&me, "42");
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        let a = p["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(a.len(), holder_annotations().count());
        assert_eq!(a[INSTANCE_KEY], "i-me");
        // No Pod here: the dead holder's Pod annotation is removed.
        assert_eq!(a[POD_ANNOTATION], Value::Null);
        let in_pod = patch_body(&holder("i-me", Some("oz/w-1")), "42");
        assert_eq!(in_pod["metadata"]["annotations"][POD_ANNOTATION], "oz/w-1");
    }

    #[test]
    fn a_reread_tells_won_lost_and_unchanged() {
        let (dead, me) = (holder("i-dead", None), holder("i-me", None));
        let other = holder("i-other", Some("oz/w-2"));
        assert_eq!(holds(&me.annotations(), &dead, &me), Holds::Me);
        assert_eq!(holds(&dead.annotations(), &dead, &me), Holds::StillDead);
        assert_eq!(
            holds(&other.annotations(), &dead, &me),
            Holds::Other("worker instance i-other in Pod oz/w-2".into())
        );
        assert!(matches!(
            holds(&BTreeMap::new(), &dead, &me),
            Holds::Other(w) if w.contains("removed")
        ));
    }
}
