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

use oz_runtime::liveness::{self, ProcessIdentity, Standing, Verdict};
use std::collections::HashMap;

pub use oz_runtime::host::{process_alive, random_id};

pub const MANAGED_BY: &str = "dev.oz.managed-by";
pub const MANAGED_BY_VALUE: &str = "oz-agent-worker";
pub const WORKER_ID: &str = "dev.oz.worker-id";
pub const TASK_ID: &str = "dev.oz.task-id";
pub const EXECUTION_ID: &str = "dev.oz.execution-id";
pub const ROLE: &str = "dev.oz.role";
// The owner process's labels are `oz_runtime::liveness`'s keys
// (`dev.oz.instance`, `dev.oz.host`, `dev.oz.boot-id`, `dev.oz.pid`,
// `dev.oz.pid-start`, `dev.oz.liveness-socket`, `dev.oz.net-namespace`,
// `dev.oz.pid-namespace`), the same as on Kubernetes Jobs.

/// This worker process as the containers and volumes it creates name it:
/// its worker id and its [`ProcessIdentity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity {
    pub worker_id: String,
    pub process: ProcessIdentity,
}

impl WorkerIdentity {
    /// This process, working as `worker_id`.
    pub fn current(worker_id: &str) -> Self {
        WorkerIdentity {
            worker_id: worker_id.to_string(),
            process: ProcessIdentity::current(),
        }
    }

    /// Labels for something this process creates; `role` says what it is
    /// (task, sidecar-fill, sidecar-volume).
    pub fn labels(
        &self,
        role: &str,
        task: Option<(&str, Option<&str>)>,
    ) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = self.process.marks().collect();
        l.extend([
            (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
            (WORKER_ID.to_string(), self.worker_id.clone()),
            (ROLE.to_string(), role.to_string()),
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
        let Some(owner) = owner_of(labels) else {
            return false;
        };
        matches!(
            owner.seen_from(&self.process, |m| judge(m, alive)),
            Standing::ThisHost(Verdict::Dead(_))
        )
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

/// The owner of a container with these labels, judged from the host
/// `host` booted as `boot` (`oz_runtime::liveness::this_host`), its pid
/// checked with `alive` (`process_alive`, or a stand-in in tests).
pub fn owner(
    labels: &HashMap<String, String>,
    host: &str,
    boot: &str,
    alive: &dyn Fn(u32, &str) -> bool,
) -> Owner {
    let Some(owner) = owner_of(labels) else {
        return Owner::Unknown;
    };
    match owner.seen_from_host(host, boot, |m| judge(m, alive)) {
        Standing::Us | Standing::ThisHost(Verdict::Alive) => Owner::Alive { pid: owner.pid },
        Standing::ThisHost(Verdict::Dead(why)) => Owner::Dead(why),
        Standing::ThisHost(Verdict::Unknowable(why)) => Owner::Unknowable(why),
        Standing::OtherHost => Owner::OtherHost(owner.host),
    }
}

/// The process the labels name; `None` without a (non-empty) host label or
/// a pid label that parses.
fn owner_of(labels: &HashMap<String, String>) -> Option<ProcessIdentity> {
    ProcessIdentity::from_marks(|k| labels.get(k).map(String::as_str))
        .filter(|p| !p.host.is_empty())
}

/// `liveness::judge` as this process sees the host, the pid asked through
/// `alive`.
fn judge(marks: &liveness::OwnerMarks<'_>, alive: &dyn Fn(u32, &str) -> bool) -> Verdict {
    let (net, pidns) = (liveness::net_namespace(), liveness::pid_namespace());
    let here = liveness::Here {
        net_namespace: &net,
        pid_namespace: &pidns,
        beacon_held: &liveness::beacon_held,
        pid_alive: alive,
    };
    liveness::judge(marks, &here)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> WorkerIdentity {
        WorkerIdentity {
            worker_id: "w".into(),
            process: ProcessIdentity {
                instance: "i-me".into(),
                host: "m/h".into(),
                boot: "b1".into(),
                pid: 10,
                pid_start: "100".into(),
                beacon: String::new(),
                net_namespace: String::new(),
                pid_namespace: String::new(),
            },
        }
    }

    fn labels_of(p: &WorkerIdentity) -> HashMap<String, String> {
        p.labels("task", Some(("t1", Some("e1"))))
    }

    #[test]
    fn orphan_rules() {
        let me = me();
        let alive_pid_20 = |pid: u32, start: &str| pid == 20 && start == "200";
        let other = |f: &dyn Fn(&mut WorkerIdentity)| {
            let mut p = me.clone();
            p.process = ProcessIdentity {
                instance: "i-old".into(),
                pid: 20,
                pid_start: "200".into(),
                ..me.process.clone()
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
            me.is_orphan(&other(&|p| p.process.pid = 21), &alive_pid_20),
            "dead pid"
        );
        assert!(
            me.is_orphan(
                &other(&|p| p.process.pid_start = "199".into()),
                &alive_pid_20
            ),
            "recycled pid"
        );
        assert!(
            me.is_orphan(&other(&|p| p.process.boot = "b0".into()), &alive_pid_20),
            "rebooted host"
        );
        assert!(
            !me.is_orphan(
                &other(&|p| {
                    p.process.host = "m2/h2".into();
                    p.process.pid = 21
                }),
                &alive_pid_20
            ),
            "other hosts untouched"
        );
        assert!(
            !me.is_orphan(
                &other(&|p| {
                    p.worker_id = "w2".into();
                    p.process.pid = 21
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
    fn owner_says_why_from_the_labels_alone() {
        let me = me();
        let labels = labels_of(&me);
        let alive_pid_10 = |pid: u32, _: &str| pid == 10;
        let dead = |_: u32, _: &str| false;
        assert_eq!(
            owner(&labels, "m/h", "b1", &alive_pid_10),
            Owner::Alive { pid: 10 }
        );
        assert!(matches!(
            owner(&labels, "m/h", "b1", &dead),
            Owner::Dead(why) if why.contains("exited")
        ));
        assert!(matches!(
            owner(&labels, "m/h", "b2", &alive_pid_10),
            Owner::Dead(why) if why.contains("rebooted")
        ));
        assert_eq!(
            owner(&labels, "m2/h2", "b1", &alive_pid_10),
            Owner::OtherHost("m/h".into())
        );
        for gone in [liveness::HOST_KEY, liveness::PID_KEY] {
            let mut l = labels.clone();
            l.remove(gone);
            assert_eq!(
                owner(&l, "m/h", "b1", &alive_pid_10),
                Owner::Unknown,
                "{gone}"
            );
        }
        let mut empty_host = labels;
        empty_host.insert(liveness::HOST_KEY.into(), String::new());
        assert_eq!(owner(&empty_host, "", "b1", &alive_pid_10), Owner::Unknown);
    }

    #[test]
    fn this_process_is_alive_and_identity_is_filled() {
        let w = WorkerIdentity::current("w");
        assert_eq!(w.worker_id, "w");
        let p = w.process;
        assert!(!p.pid_start.is_empty() && !p.boot.is_empty());
        assert!(process_alive(p.pid, &p.pid_start));
        assert!(!process_alive(p.pid, "1"));
        assert_eq!(random_id().len(), 32);
        assert_ne!(random_id(), random_id());
    }
}
