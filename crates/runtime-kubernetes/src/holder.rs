//! Which worker process holds a task's Job, written on the Job as
//! annotations, so that a worker whose journal was lost (its state dir an
//! emptyDir, its Pod replaced) can tell the Jobs of a dead instance of its
//! worker id, which it takes over, from those of a live one (several
//! workers may share an id, PROTOCOL.md), which it leaves alone.
//!
//! Annotations on every task Job, with the Docker runtime's `dev.oz.*`
//! names (the Go worker's six labels are kept as they are; these are
//! additions it does not write):
//! - `dev.oz.worker-id`, `dev.oz.task-id`, `dev.oz.execution-id`: the exact
//!   ids (labels hold sanitised values and hashes, which cannot be turned
//!   back into ids);
//! - the holder process: `dev.oz.instance` (random per process),
//!   `dev.oz.host` (machine id / host name), `dev.oz.boot-id`, `dev.oz.pid`,
//!   `dev.oz.pid-start`, `dev.oz.liveness-socket`, `dev.oz.net-namespace`,
//!   `dev.oz.pid-namespace` (see `oz_runtime::liveness`);
//! - `dev.oz.pod`: `<namespace>/<name>` of the worker's Pod, when it runs in
//!   one.
//!
//! A holder is dead when it ran on this host and provably no longer runs
//! (the host rebooted, its liveness socket is gone, or in its own PID
//! namespace its pid is gone or reused: `oz_runtime::liveness::judge`), or
//! when its Pod no longer exists or has ended. A holder on another host
//! outside a cluster, or one whose liveness cannot be checked from here,
//! keeps its Jobs.

use oz_runtime::host::{host_identity, process_start_time, random_id, read_trimmed};
use oz_runtime::liveness::{self, OwnerMarks, Verdict};
use std::collections::BTreeMap;

pub const WORKER_ID_ANNOTATION: &str = "dev.oz.worker-id";
pub const TASK_ID_ANNOTATION: &str = "dev.oz.task-id";
pub const EXECUTION_ID_ANNOTATION: &str = "dev.oz.execution-id";
pub const INSTANCE_ANNOTATION: &str = "dev.oz.instance";
pub const HOST_ANNOTATION: &str = "dev.oz.host";
pub const BOOT_ANNOTATION: &str = "dev.oz.boot-id";
pub const PID_ANNOTATION: &str = "dev.oz.pid";
pub const PID_START_ANNOTATION: &str = "dev.oz.pid-start";
pub const BEACON_ANNOTATION: &str = "dev.oz.liveness-socket";
pub const NET_NAMESPACE_ANNOTATION: &str = "dev.oz.net-namespace";
pub const PID_NAMESPACE_ANNOTATION: &str = "dev.oz.pid-namespace";
pub const POD_ANNOTATION: &str = "dev.oz.pod";

/// Every holder annotation: a Job's values for these are the worker's own,
/// never the operator's `extra_annotations`.
pub const HOLDER_ANNOTATIONS: [&str; 9] = [
    INSTANCE_ANNOTATION,
    HOST_ANNOTATION,
    BOOT_ANNOTATION,
    PID_ANNOTATION,
    PID_START_ANNOTATION,
    BEACON_ANNOTATION,
    NET_NAMESPACE_ANNOTATION,
    PID_NAMESPACE_ANNOTATION,
    POD_ANNOTATION,
];

/// Where the service account's namespace is mounted in every Pod.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// One worker process, as written on the Jobs it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Random per process.
    pub instance: String,
    /// `<machine id>/<host name>`.
    pub host: String,
    pub boot: String,
    pub pid: u32,
    /// Clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub pid_start: String,
    pub beacon: String,
    pub net_namespace: String,
    pub pid_namespace: String,
    /// `<namespace>/<name>` of the worker's Pod.
    pub pod: Option<String>,
}

impl Holder {
    /// This process. In a Pod (the service account's namespace file is
    /// mounted) the Pod's name is `OZ_POD_NAME` (the downward API, as
    /// deploy/kubernetes sets it), else the host name, which Kubernetes
    /// sets to the Pod's name.
    pub fn current() -> Holder {
        let pid = std::process::id();
        let pod = read_trimmed(POD_NAMESPACE_FILE)
            .filter(|ns| !ns.is_empty())
            .map(|ns| {
                let name = std::env::var("OZ_POD_NAME")
                    .ok()
                    .filter(|n| !n.is_empty())
                    .or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
                    .unwrap_or_default();
                format!("{ns}/{name}")
            });
        Holder {
            instance: random_id(),
            host: host_identity(),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            pid,
            pid_start: process_start_time(pid).unwrap_or_default(),
            beacon: liveness::beacon().to_string(),
            net_namespace: liveness::net_namespace(),
            pid_namespace: liveness::pid_namespace(),
            pod,
        }
    }

    /// The holder annotations of a Job this process creates.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([
            (INSTANCE_ANNOTATION.to_string(), self.instance.clone()),
            (HOST_ANNOTATION.to_string(), self.host.clone()),
            (BOOT_ANNOTATION.to_string(), self.boot.clone()),
            (PID_ANNOTATION.to_string(), self.pid.to_string()),
            (PID_START_ANNOTATION.to_string(), self.pid_start.clone()),
            (BEACON_ANNOTATION.to_string(), self.beacon.clone()),
            (
                NET_NAMESPACE_ANNOTATION.to_string(),
                self.net_namespace.clone(),
            ),
            (
                PID_NAMESPACE_ANNOTATION.to_string(),
                self.pid_namespace.clone(),
            ),
        ]);
        if let Some(pod) = &self.pod {
            a.insert(POD_ANNOTATION.to_string(), pod.clone());
        }
        a
    }

    /// The holder a Job names; `None` when it names none (made by the Go
    /// worker, or by a version before these annotations).
    pub fn of(annotations: &BTreeMap<String, String>) -> Option<Holder> {
        let get = |k: &str| annotations.get(k).cloned().unwrap_or_default();
        Some(Holder {
            instance: annotations.get(INSTANCE_ANNOTATION)?.clone(),
            host: annotations.get(HOST_ANNOTATION)?.clone(),
            boot: get(BOOT_ANNOTATION),
            pid: annotations.get(PID_ANNOTATION)?.parse().ok()?,
            pid_start: get(PID_START_ANNOTATION),
            beacon: get(BEACON_ANNOTATION),
            net_namespace: get(NET_NAMESPACE_ANNOTATION),
            pid_namespace: get(PID_NAMESPACE_ANNOTATION),
            pod: annotations.get(POD_ANNOTATION).cloned(),
        })
    }
}

/// What became of a Job's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// This very process: the core knows the execution.
    Us,
    /// Alive: its Jobs are its own.
    Alive,
    /// Provably gone (why): its Jobs are orphans to take over.
    Dead(String),
    /// Cannot be told from here (why): its Jobs are left alone.
    Unknown(String),
}

/// What the API server says of a holder's Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    Missing,
    /// Its `status.phase`.
    Phase(String),
    Unreadable(String),
}

/// Decides a holder's fate as seen from `me`. `judge` decides for a
/// process on this host (`oz_runtime::liveness::judge_here`); `pod`
/// answers for a Pod `<namespace>/<name>`, asked only for a holder on
/// another host that ran in a Pod.
pub fn liveness(
    holder: &Holder,
    me: &Holder,
    judge: impl Fn(&OwnerMarks<'_>) -> Verdict,
    pod: impl FnOnce(&str) -> PodState,
) -> Liveness {
    if holder.instance == me.instance {
        return Liveness::Us;
    }
    if holder.host == me.host {
        // The same host name after a reboot is a dead process; so is a
        // StatefulSet Pod recreated under its name on another node.
        if holder.boot != me.boot {
            return Liveness::Dead("the host has rebooted since it started".into());
        }
        let marks = OwnerMarks {
            pid: Some(holder.pid),
            pid_start: &holder.pid_start,
            beacon: &holder.beacon,
            net_namespace: &holder.net_namespace,
            pid_namespace: &holder.pid_namespace,
        };
        return match judge(&marks) {
            Verdict::Alive => Liveness::Alive,
            Verdict::Dead(why) => Liveness::Dead(why.into()),
            // Another container of this host name: its Pod may say more.
            Verdict::Unknowable(why) => match &holder.pod {
                Some(name) => from_pod(name, pod),
                None => Liveness::Unknown(why.into()),
            },
        };
    }
    match &holder.pod {
        Some(name) => from_pod(name, pod),
        None => Liveness::Unknown(format!(
            "its worker ran on another host ({}) outside the cluster, whose liveness cannot be \
             checked from here; start the worker there again, or delete the Job",
            holder.host
        )),
    }
}

fn from_pod(name: &str, pod: impl FnOnce(&str) -> PodState) -> Liveness {
    match pod(name) {
        PodState::Missing => Liveness::Dead(format!("its Pod {name} no longer exists")),
        PodState::Phase(p) if p == "Succeeded" || p == "Failed" => {
            Liveness::Dead(format!("its Pod {name} has ended ({p})"))
        }
        // A terminating Pod leaves its Jobs in place as it stops; the next
        // start of a worker of this id takes them over.
        PodState::Phase(_) => Liveness::Alive,
        PodState::Unreadable(e) => Liveness::Unknown(format!("its Pod {name} cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Holder {
        Holder {
            instance: "i-me".into(),
            host: "m/node-a".into(),
            boot: "boot-1".into(),
            pid: 100,
            pid_start: "5000".into(),
            beacon: "oz-agent-worker/me".into(),
            net_namespace: "net:[1]".into(),
            pid_namespace: "pid:[1]".into(),
            pod: None,
        }
    }

    fn other(host: &str, pod: Option<&str>) -> Holder {
        Holder {
            instance: "i-other".into(),
            host: host.into(),
            pid: 200,
            pid_start: "7000".into(),
            beacon: "oz-agent-worker/other".into(),
            pod: pod.map(Into::into),
            ..me()
        }
    }

    fn no_pod(_: &str) -> PodState {
        panic!("the Pod was asked for")
    }

    fn never(_: &OwnerMarks<'_>) -> Verdict {
        panic!("the process was judged")
    }

    #[test]
    fn a_holder_on_this_host_is_judged_by_its_process() {
        assert_eq!(liveness(&me(), &me(), never, no_pod), Liveness::Us);
        let h = other("m/node-a", None);
        let judged = |m: &OwnerMarks<'_>| {
            assert_eq!(
                (m.pid, m.pid_start, m.beacon),
                (Some(200), "7000", "oz-agent-worker/other")
            );
            Verdict::Alive
        };
        assert_eq!(liveness(&h, &me(), judged, no_pod), Liveness::Alive);
        assert!(matches!(
            liveness(&h, &me(), |_| Verdict::Dead("gone"), no_pod),
            Liveness::Dead(_)
        ));
        assert!(matches!(
            liveness(&h, &me(), |_| Verdict::Unknowable("elsewhere"), no_pod),
            Liveness::Unknown(_)
        ));
        // The same host name after a reboot.
        let before_reboot = Holder {
            boot: "boot-0".into(),
            ..h
        };
        assert!(matches!(
            liveness(&before_reboot, &me(), never, no_pod),
            Liveness::Dead(m) if m.contains("rebooted")
        ));
    }

    #[test]
    fn a_holder_in_another_pod_is_judged_by_that_pod() {
        let h = other("/worker-old", Some("oz/worker-old"));
        let ask = |state: PodState| {
            move |name: &str| {
                assert_eq!(name, "oz/worker-old");
                state
            }
        };
        assert!(matches!(
            liveness(&h, &me(), never, ask(PodState::Missing)),
            Liveness::Dead(_)
        ));
        assert!(matches!(
            liveness(&h, &me(), never, ask(PodState::Phase("Failed".into()))),
            Liveness::Dead(_)
        ));
        assert_eq!(
            liveness(&h, &me(), never, ask(PodState::Phase("Running".into()))),
            Liveness::Alive
        );
        assert!(matches!(
            liveness(&h, &me(), never, ask(PodState::Unreadable("403".into()))),
            Liveness::Unknown(_)
        ));
        // Another host outside a cluster: cannot be told, left alone.
        assert!(matches!(
            liveness(&other("m2/other-host", None), &me(), never, no_pod),
            Liveness::Unknown(m) if m.contains("other-host")
        ));
    }

    #[test]
    fn annotations_round_trip() {
        let h = other("m/worker-a", Some("oz/worker-a"));
        assert_eq!(Holder::of(&h.annotations()), Some(h));
        assert_eq!(Holder::of(&BTreeMap::new()), None);
        let current = Holder::current();
        assert_eq!(current.pid, std::process::id());
        assert!(!current.pid_start.is_empty(), "{current:?}");
        assert_eq!(liveness(&current, &current, never, no_pod), Liveness::Us);
    }
}
