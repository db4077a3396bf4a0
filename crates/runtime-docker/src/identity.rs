//! Who owns a container. Every container and volume the worker creates is
//! labelled with the worker id, this process's instance id, the task and
//! execution ids, and the owning process's host, boot and pid identity.
//!
//! Several live workers may share one worker id and one daemon, so "same
//! worker id, different instance" does not make a container an orphan. A
//! container is an orphan only when its owner ran on this host (same machine
//! id and hostname) and provably no longer runs: the host rebooted since
//! (boot id differs), or its liveness socket is gone (`runtime::liveness`:
//! this holds across PID namespaces, so a worker in a container or under
//! `unshare --pid` is not judged by a pid that means nothing here), or,
//! within its own PID namespace, its pid is gone or now belongs to a process
//! that started at a different time. Containers of workers on other hosts,
//! and of workers whose liveness cannot be checked from here, are never
//! touched.

use std::collections::HashMap;

pub const MANAGED_BY: &str = "dev.oz.managed-by";
pub const MANAGED_BY_VALUE: &str = "oz-agent-worker";
pub const WORKER_ID: &str = "dev.oz.worker-id";
pub const INSTANCE: &str = "dev.oz.instance";
pub const TASK_ID: &str = "dev.oz.task-id";
pub const EXECUTION_ID: &str = "dev.oz.execution-id";
pub const ROLE: &str = "dev.oz.role";
pub const HOST: &str = "dev.oz.host";
pub const BOOT: &str = "dev.oz.boot-id";
pub const PID: &str = "dev.oz.pid";
pub const PID_START: &str = "dev.oz.pid-start";
/// The owner's liveness socket (`runtime::liveness`).
pub const BEACON: &str = "dev.oz.liveness-socket";
pub const NET_NAMESPACE: &str = "dev.oz.net-namespace";
pub const PID_NAMESPACE: &str = "dev.oz.pid-namespace";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub worker_id: String,
    pub instance: String,
    pub host: String,
    pub boot: String,
    pub pid: u32,
    pub pid_start: String,
    pub beacon: String,
    pub net_namespace: String,
    pub pid_namespace: String,
}

impl ProcessIdentity {
    pub fn current(worker_id: &str) -> Self {
        let pid = std::process::id();
        ProcessIdentity {
            worker_id: worker_id.to_string(),
            instance: random_id(),
            host: host_identity(),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            pid,
            pid_start: process_start_time(pid).unwrap_or_default(),
            beacon: liveness::beacon().to_string(),
            net_namespace: liveness::net_namespace(),
            pid_namespace: liveness::pid_namespace(),
        }
    }

    /// Labels for something this process creates; `role` says what it is
    /// (task, sidecar-fill, sidecar-volume).
    pub fn labels(
        &self,
        role: &str,
        task: Option<(&str, Option<&str>)>,
    ) -> HashMap<String, String> {
        let mut l = HashMap::from([
            (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
            (WORKER_ID.to_string(), self.worker_id.clone()),
            (INSTANCE.to_string(), self.instance.clone()),
            (ROLE.to_string(), role.to_string()),
            (HOST.to_string(), self.host.clone()),
            (BOOT.to_string(), self.boot.clone()),
            (PID.to_string(), self.pid.to_string()),
            (PID_START.to_string(), self.pid_start.clone()),
            (BEACON.to_string(), self.beacon.clone()),
            (NET_NAMESPACE.to_string(), self.net_namespace.clone()),
            (PID_NAMESPACE.to_string(), self.pid_namespace.clone()),
        ]);
        if let Some((task_id, execution_id)) = task {
            l.insert(TASK_ID.to_string(), task_id.to_string());
            if let Some(e) = execution_id {
                l.insert(EXECUTION_ID.to_string(), e.to_string());
            }
        }
        l
    }

    /// Whether a container with these labels was left by a dead process that
    /// was this same worker on this same host. See the module comment.
    pub fn is_orphan(
        &self,
        labels: &HashMap<String, String>,
        alive: &dyn Fn(u32, &str) -> bool,
    ) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
        if get(MANAGED_BY) != MANAGED_BY_VALUE || get(WORKER_ID) != self.worker_id {
            return false;
        }
        if get(INSTANCE) == self.instance {
            return false;
        }
        matches!(owner(labels, &self.host, &self.boot, alive), Owner::Dead(_))
    }
}

/// Whether the process that made a container still runs, as far as this
/// host (`host`, `boot`: its identity and boot id) can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// On this host, and its liveness socket is held (or, in its own PID
    /// namespace, its pid runs with the same start time).
    Alive { pid: u32 },
    /// On this host, and provably gone: why.
    Dead(&'static str),
    /// On another host (its `dev.oz.host` label): not knowable from here.
    OtherHost(String),
    /// The labels do not say (no host or pid).
    Unknown,
    /// On this host, but in namespaces whose liveness cannot be checked
    /// from here (why).
    Unknowable(&'static str),
}

pub fn owner(
    labels: &HashMap<String, String>,
    host: &str,
    boot: &str,
    alive: &dyn Fn(u32, &str) -> bool,
) -> Owner {
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
    match get(HOST) {
        "" => return Owner::Unknown,
        h if h != host => return Owner::OtherHost(h.to_string()),
        _ => {}
    }
    if get(BOOT) != boot {
        return Owner::Dead("the host has rebooted since it started");
    }
    let Ok(pid) = get(PID).parse::<u32>() else {
        return Owner::Unknown;
    };
    let marks = liveness::OwnerMarks {
        pid: Some(pid),
        pid_start: get(PID_START),
        beacon: get(BEACON),
        net_namespace: get(NET_NAMESPACE),
        pid_namespace: get(PID_NAMESPACE),
    };
    let (net, pidns) = (liveness::net_namespace(), liveness::pid_namespace());
    let here = liveness::Here {
        net_namespace: &net,
        pid_namespace: &pidns,
        beacon_held: &liveness::beacon_held,
        pid_alive: alive,
    };
    match liveness::judge(&marks, &here) {
        liveness::Verdict::Alive => Owner::Alive { pid },
        liveness::Verdict::Dead(why) => Owner::Dead(why),
        liveness::Verdict::Unknowable(why) => Owner::Unknowable(why),
    }
}

/// This host's identity and boot id, as [`owner`] compares them.
pub fn this_host() -> (String, String) {
    (
        host_identity(),
        read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
    )
}

use oz_runtime::host::{host_identity, process_start_time, read_trimmed};
pub use oz_runtime::host::{process_alive, random_id};
use oz_runtime::liveness;

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessIdentity {
        ProcessIdentity {
            worker_id: "w".into(),
            instance: "i-me".into(),
            host: "m/h".into(),
            boot: "b1".into(),
            pid: 10,
            pid_start: "100".into(),
            beacon: String::new(),
            net_namespace: String::new(),
            pid_namespace: String::new(),
        }
    }

    fn labels_of(p: &ProcessIdentity) -> HashMap<String, String> {
        p.labels("task", Some(("t1", Some("e1"))))
    }

    #[test]
    fn orphan_rules() {
        let me = me();
        let alive_pid_20 = |pid: u32, start: &str| pid == 20 && start == "200";
        let other = |f: &dyn Fn(&mut ProcessIdentity)| {
            let mut p = ProcessIdentity {
                instance: "i-old".into(),
                pid: 20,
                pid_start: "200".into(),
                ..me.clone()
            };
            f(&mut p);
            labels_of(&p)
        };
        assert!(
            !me.is_orphan(&labels_of(&me), &alive_pid_20),
            "our own containers are never orphans"
        );
        assert!(
            !me.is_orphan(&other(&|_| {}), &alive_pid_20),
            "a live sibling on this host keeps its containers"
        );
        assert!(
            me.is_orphan(&other(&|p| p.pid = 21), &alive_pid_20),
            "dead pid"
        );
        assert!(
            me.is_orphan(&other(&|p| p.pid_start = "199".into()), &alive_pid_20),
            "recycled pid"
        );
        assert!(
            me.is_orphan(&other(&|p| p.boot = "b0".into()), &alive_pid_20),
            "rebooted host"
        );
        assert!(
            !me.is_orphan(
                &other(&|p| {
                    p.host = "m2/h2".into();
                    p.pid = 21
                }),
                &alive_pid_20
            ),
            "other hosts untouched"
        );
        assert!(
            !me.is_orphan(
                &other(&|p| {
                    p.worker_id = "w2".into();
                    p.pid = 21
                }),
                &alive_pid_20
            ),
            "other worker ids untouched"
        );
        assert!(
            !me.is_orphan(&HashMap::new(), &alive_pid_20),
            "unlabelled containers untouched"
        );
    }

    #[test]
    fn this_process_is_alive_and_identity_is_filled() {
        let p = ProcessIdentity::current("w");
        assert!(!p.pid_start.is_empty() && !p.boot.is_empty());
        assert!(process_alive(p.pid, &p.pid_start));
        assert!(!process_alive(p.pid, "1"));
        assert_eq!(random_id().len(), 32);
        assert_ne!(random_id(), random_id());
    }
}
