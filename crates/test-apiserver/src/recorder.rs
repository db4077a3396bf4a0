//! Writes core/v1 Events as the kubelet, the scheduler and the Job
//! controller do: one Event per (object, reason, message), its `count` and
//! `lastTimestamp` bumped when it repeats (client-go's event correlator).

use serde_json::{json, Value};

use crate::meta::{self, Resource};
use crate::store::Shared;

/// Who reports: (`source.component`, `reportingComponent`).
#[derive(Debug, Clone, Copy)]
pub enum Source {
    Kubelet,
    Scheduler,
    JobController,
    TtlController,
}

impl Source {
    fn component(self) -> (&'static str, &'static str) {
        match self {
            Source::Kubelet => ("kubelet", "kubelet"),
            Source::Scheduler => ("default-scheduler", "default-scheduler"),
            Source::JobController => ("job-controller", "job-controller"),
            Source::TtlController => (
                "ttl-after-finished-controller",
                "ttl-after-finished-controller",
            ),
        }
    }
}

/// Records an event about `object` (a Job or a Pod). `field_path` names a
/// container as the kubelet does (`spec.containers{task}`).
pub fn record(
    shared: &Shared,
    object: &Value,
    field_path: Option<&str>,
    warning: bool,
    reason: &str,
    message: &str,
    source: Source,
) {
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let uid = object["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (component, reporting) = source.component();
    let node = &shared.config.node_name;
    let now = meta::now();
    shared.with(|store| {
        let existing = store.list(Resource::Events, Some(&ns)).into_iter().find(|e| {
            e["involvedObject"]["uid"] == uid.as_str() && e["reason"] == reason && e["message"] == message && e["involvedObject"]["fieldPath"].as_str() == field_path
        });
        if let Some(e) = existing {
            let ename = e["metadata"]["name"].as_str().unwrap_or("").to_string();
            store.update(Resource::Events, &ns, &ename, |e| {
                e["count"] = json!(e["count"].as_i64().unwrap_or(1) + 1);
                e["lastTimestamp"] = json!(now);
            });
            return;
        }
        let mut involved = json!({
            "kind": object["kind"], "namespace": ns, "name": name, "uid": uid,
            "apiVersion": object["apiVersion"], "resourceVersion": object["metadata"]["resourceVersion"],
        });
        if let Some(f) = field_path {
            involved["fieldPath"] = json!(f);
        }
        let mut source_obj = json!({"component": component});
        if matches!(source, Source::Kubelet) {
            source_obj["host"] = json!(node);
        }
        let suffix: String = (0..16).map(|_| format!("{:x}", fastrand::u8(..16))).collect();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{suffix}"), "namespace": ns},
            "involvedObject": involved,
            "reason": reason, "message": message,
            "source": source_obj,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "type": if warning { "Warning" } else { "Normal" },
            "eventTime": null,
            "reportingComponent": reporting,
            "reportingInstance": if matches!(source, Source::Kubelet) { node.as_str() } else { "" },
        });
        let _ = store.create(Resource::Events, &ns, event);
    });
}
