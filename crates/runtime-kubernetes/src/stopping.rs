//! How long the worker waits for a deleted Job's Pods to go before it
//! reports the run's end anyway.
//!
//! A cancellation (and a failure whose Job never finishes) deletes the Job
//! with foreground propagation and waits for its Pods, so `CANCELLED` means
//! the agent has stopped. A Pod can stay Terminating for good: its node is
//! lost (the kubelet never confirms the stop), or a finalizer is never
//! removed. The worker cannot end that (the Go chart's Role has no `pods
//! delete`, and a force deletion is the cluster operator's call), and a
//! wait without end would keep the task's slot busy and its report unsent.
//! So the wait lasts the Pod's grace period, which bounds what a healthy
//! kubelet takes (preStop hook, SIGTERM, then SIGKILL), plus [`MARGIN`] for
//! the garbage collector, the kubelet's sync and the API round trips.

use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;

/// Kubernetes' default `terminationGracePeriodSeconds`
/// (k8s.io/api/core/v1 `DefaultTerminationGracePeriodSeconds`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Added to the grace period: the time the Job's deletion takes to reach
/// the Pod and the kubelet to report it stopped.
pub const MARGIN: Duration = Duration::from_secs(30);

/// A Pod's grace period: `metadata.deletionGracePeriodSeconds` once it is
/// being deleted (what the deletion asked for), else
/// `spec.terminationGracePeriodSeconds`, else [`DEFAULT_GRACE`]; a
/// negative value counts as 0.
pub fn grace_period(pod: &Pod) -> Duration {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .map_or(DEFAULT_GRACE, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        })
}

/// How long after the Job's deletion was accepted the worker waits for
/// `pods` to go: the longest grace period among them plus [`MARGIN`];
/// [`DEFAULT_GRACE`] plus [`MARGIN`] when none is known.
pub fn bound(pods: &[Pod]) -> Duration {
    pods.iter().map(grace_period).max().unwrap_or(DEFAULT_GRACE) + MARGIN
}

/// The warning for Pods still there when the wait ran out: names each
/// with its namespace, says how long it was waited for and any finalizer
/// holding it, and what ends it.
pub fn stuck_message(pods: &[Pod], namespace: &str, waited: Duration) -> String {
    let names: Vec<String> = pods
        .iter()
        .map(|p| {
            let name = p.metadata.name.as_deref().unwrap_or("?");
            let finalizers = p.metadata.finalizers.as_deref().unwrap_or_default();
            if finalizers.is_empty() {
                name.to_string()
            } else {
                format!("{name} (finalizers: {})", finalizers.join(", "))
            }
        })
        .collect();
    format!(
        "the task's Pod {} in namespace {namespace} is still terminating {}s after its Job was deleted \
         (its grace period plus {}s); reporting the run's end anyway. Kubernetes finishes deleting it: \
         a Pod on a lost node goes when the node is removed or the Pod is force-deleted \
         (kubectl delete pod --force), one held by a finalizer when its controller removes it",
        names.join(", "),
        waited.as_secs(),
        MARGIN.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_grace_period_is_the_deletions_then_the_specs_then_thirty_seconds() {
        let deleting = pod(serde_json::json!({
            "metadata": {"name": "p", "deletionGracePeriodSeconds": 5},
            "spec": {"containers": [], "terminationGracePeriodSeconds": 60}
        }));
        assert_eq!(grace_period(&deleting), Duration::from_secs(5));
        let running = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "terminationGracePeriodSeconds": 60}
        }));
        assert_eq!(grace_period(&running), Duration::from_secs(60));
        let plain = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(grace_period(&plain), DEFAULT_GRACE);
        let negative = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "terminationGracePeriodSeconds": -1}
        }));
        assert_eq!(grace_period(&negative), Duration::ZERO);
    }

    #[test]
    fn the_bound_is_the_longest_grace_period_plus_the_margin() {
        let with_grace = |s: i64| {
            pod(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [], "terminationGracePeriodSeconds": s}
            }))
        };
        assert_eq!(
            bound(&[with_grace(1), with_grace(90), with_grace(3)]),
            Duration::from_secs(90) + MARGIN
        );
        assert_eq!(bound(&[with_grace(1)]), Duration::from_secs(31));
        assert_eq!(bound(&[]), DEFAULT_GRACE + MARGIN);
    }

    #[test]
    fn the_warning_names_the_pod_its_namespace_and_its_finalizers() {
        let stuck = pod(serde_json::json!({
            "metadata": {"name": "oz-task-r-exec-e-abcde", "finalizers": ["example.com/hold"]},
            "spec": {"containers": []}
        }));
        let m = stuck_message(&[stuck], "agents", Duration::from_secs(31));
        assert!(
            m.starts_with("the task's Pod oz-task-r-exec-e-abcde (finalizers: example.com/hold) in namespace agents is still terminating 31s after"),
            "{m}"
        );
        assert!(m.contains("kubectl delete pod --force"), "{m}");
    }
}
