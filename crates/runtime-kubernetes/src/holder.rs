//! Which worker process holds a task's Job, written on the Job as
//! annotations, so that a worker whose journal was lost (its state dir an
//! emptyDir, its Pod replaced) can tell the Jobs of a dead instance of its
//! worker id, which it takes over, from those of a live one (several
//! workers may share an id, PROTOCOL.md), which it leaves alone.
//!
//! Annotations on every task Job (the Go worker's six labels are kept as
//! they are; these are additions it does not write):
//! - `oz-agent-worker/worker-id`, `oz-agent-worker/task-id`,
//!   `oz-agent-worker/execution-id`: the exact ids (labels hold sanitised
//!   values and hashes, which cannot be turned back into ids);
//! - `oz-agent-worker/holder-host`: the host name (in a Pod, the Pod's name);
//! - `oz-agent-worker/holder-process`: `<boot id>/<pid>/<start time>`, the
//!   start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so
//!   a reused pid is not mistaken for the holder;
//! - `oz-agent-worker/holder-pod`: `<namespace>/<name>` of the worker's Pod,
//!   when it runs in one.
//!
//! A holder is dead when it is on this host and its process is gone (or a
//! zombie, or another process took its pid), or on the same host name after
//! a reboot (a StatefulSet's Pod recreated), or when its Pod no longer
//! exists or has ended. A holder on another host outside a cluster cannot
//! be checked, so its Jobs are left alone.

use std::collections::BTreeMap;

pub const WORKER_ID_ANNOTATION: &str = "oz-agent-worker/worker-id";
pub const TASK_ID_ANNOTATION: &str = "oz-agent-worker/task-id";
pub const EXECUTION_ID_ANNOTATION: &str = "oz-agent-worker/execution-id";
pub const HOLDER_HOST_ANNOTATION: &str = "oz-agent-worker/holder-host";
pub const HOLDER_PROCESS_ANNOTATION: &str = "oz-agent-worker/holder-process";
pub const HOLDER_POD_ANNOTATION: &str = "oz-agent-worker/holder-pod";

/// Where the service account's namespace is mounted in every Pod.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// One worker process, as written on the Jobs it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    /// `<boot id>/<pid>/<start time in ticks>`.
    pub process: String,
    /// `<namespace>/<name>` of the worker's Pod.
    pub pod: Option<String>,
}

/// A process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStat {
    /// The state letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`; the command name (field 2, in parentheses)
/// may itself hold spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<ProcessStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcessStat {
        state: fields.first()?.chars().next()?,
        // Fields 3.. start at index 0, so field 22 is index 19.
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_else(|| "unknown-boot".into())
}

fn stat_of(pid: &str) -> Option<ProcessStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl Holder {
    /// This process. In a Pod (the service account's namespace file is
    /// mounted) the Pod's name is `OZ_POD_NAME` (the downward API, as the
    /// manifests under deploy/kubernetes set it), else the host name, which
    /// Kubernetes sets to the Pod's name.
    pub fn current() -> Holder {
        let host = read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into());
        let pid = std::process::id().to_string();
        let start = stat_of(&pid).map(|s| s.start_ticks).unwrap_or(0);
        let pod = read_trimmed(POD_NAMESPACE_FILE).map(|ns| {
            let name = std::env::var("OZ_POD_NAME")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| host.clone());
            format!("{ns}/{name}")
        });
        Holder {
            host,
            process: format!("{}/{pid}/{start}", boot_id()),
            pod,
        }
    }

    /// The holder annotations of a Job this process creates.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([
            (HOLDER_HOST_ANNOTATION.to_string(), self.host.clone()),
            (HOLDER_PROCESS_ANNOTATION.to_string(), self.process.clone()),
        ]);
        if let Some(pod) = &self.pod {
            a.insert(HOLDER_POD_ANNOTATION.to_string(), pod.clone());
        }
        a
    }

    /// The holder a Job names; `None` when it names none (made by the Go
    /// worker, or by a version before these annotations).
    pub fn of(annotations: &BTreeMap<String, String>) -> Option<Holder> {
        Some(Holder {
            host: annotations.get(HOLDER_HOST_ANNOTATION)?.clone(),
            process: annotations.get(HOLDER_PROCESS_ANNOTATION)?.clone(),
            pod: annotations.get(HOLDER_POD_ANNOTATION).cloned(),
        })
    }
}

/// What became of a Job's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// This very process: the core knows the execution.
    Us,
    /// Alive elsewhere: its Jobs are its own.
    Alive,
    /// Gone: its Jobs are orphans to take over.
    Dead,
    /// Cannot be told (another host outside a cluster, or its Pod could
    /// not be read): left alone, with the reason.
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

/// Decides a holder's fate as seen from `me`. `process` answers for a pid
/// on this host; `pod` for a Pod `<namespace>/<name>` (asked only when
/// needed).
pub fn liveness(
    holder: &Holder,
    me: &Holder,
    process: impl Fn(&str) -> Option<ProcessStat>,
    pod: impl FnOnce(&str) -> PodState,
) -> Liveness {
    if holder.process == me.process && holder.host == me.host {
        return Liveness::Us;
    }
    let mut parts = holder.process.splitn(3, '/');
    let (boot, pid, start) = (parts.next(), parts.next(), parts.next());
    let my_boot = me.process.split('/').next();
    if holder.host == me.host {
        // The same host name after a reboot is a dead process; so is a
        // StatefulSet Pod recreated under its name on another node.
        if boot != my_boot {
            return Liveness::Dead;
        }
        let (Some(pid), Some(start)) = (pid, start) else {
            return Liveness::Unknown(format!(
                "its holder-process annotation {:?} is not <boot id>/<pid>/<start time>",
                holder.process
            ));
        };
        return match process(pid) {
            Some(s) if !matches!(s.state, 'Z' | 'X' | 'x') && s.start_ticks.to_string() == start => {
                Liveness::Alive
            }
            _ => Liveness::Dead,
        };
    }
    match &holder.pod {
        Some(name) => match pod(name) {
            PodState::Missing => Liveness::Dead,
            PodState::Phase(p) if p == "Succeeded" || p == "Failed" => Liveness::Dead,
            // A terminating Pod leaves its Jobs in place as it stops; the
            // next start of a worker of this id takes them over.
            PodState::Phase(_) => Liveness::Alive,
            PodState::Unreadable(e) => {
                Liveness::Unknown(format!("its holder's Pod {name} cannot be read: {e}"))
            }
        },
        None => Liveness::Unknown(format!(
            "its holder runs on another host ({}) outside the cluster, where this worker cannot tell \
             whether it still runs; start the worker there again, or delete the Job",
            holder.host
        )),
    }
}

/// A pid's `/proc` entry on this host.
pub fn local_process(pid: &str) -> Option<ProcessStat> {
    stat_of(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Holder {
        Holder {
            host: "node-a".into(),
            process: "boot-1/100/5000".into(),
            pod: None,
        }
    }

    fn at(host: &str, process: &str, pod: Option<&str>) -> Holder {
        Holder {
            host: host.into(),
            process: process.into(),
            pod: pod.map(Into::into),
        }
    }

    fn running(start: u64) -> Option<ProcessStat> {
        Some(ProcessStat {
            state: 'S',
            start_ticks: start,
        })
    }

    fn no_pod(_: &str) -> PodState {
        panic!("the Pod was asked for")
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (oz (worker) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 4 0 987654 1000 10";
        assert_eq!(
            parse_stat(text),
            Some(ProcessStat {
                state: 'S',
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        // This process's own entry parses.
        assert!(local_process(&std::process::id().to_string()).is_some());
    }

    #[test]
    fn a_holder_on_this_host_is_alive_only_while_its_process_is() {
        let h = at("node-a", "boot-1/200/7000", None);
        assert_eq!(liveness(&me(), &me(), |_| None, no_pod), Liveness::Us);
        assert_eq!(
            liveness(&h, &me(), |p| (p == "200").then(|| running(7000)).flatten(), no_pod),
            Liveness::Alive
        );
        // Gone, a zombie, or its pid reused by a later process.
        assert_eq!(liveness(&h, &me(), |_| None, no_pod), Liveness::Dead);
        let zombie = |_: &str| {
            Some(ProcessStat {
                state: 'Z',
                start_ticks: 7000,
            })
        };
        assert_eq!(liveness(&h, &me(), zombie, no_pod), Liveness::Dead);
        assert_eq!(liveness(&h, &me(), |_| running(7001), no_pod), Liveness::Dead);
        // The same host name after a reboot.
        let before_reboot = at("node-a", "boot-0/200/7000", None);
        assert_eq!(
            liveness(&before_reboot, &me(), |_| running(7000), no_pod),
            Liveness::Dead
        );
    }

    #[test]
    fn a_holder_in_another_pod_is_judged_by_that_pod() {
        let h = at("worker-old", "boot-9/1/300", Some("oz/worker-old"));
        let ask = |state: PodState| {
            move |name: &str| {
                assert_eq!(name, "oz/worker-old");
                state
            }
        };
        assert_eq!(
            liveness(&h, &me(), |_| None, ask(PodState::Missing)),
            Liveness::Dead
        );
        assert_eq!(
            liveness(&h, &me(), |_| None, ask(PodState::Phase("Failed".into()))),
            Liveness::Dead
        );
        assert_eq!(
            liveness(&h, &me(), |_| None, ask(PodState::Phase("Running".into()))),
            Liveness::Alive
        );
        assert!(matches!(
            liveness(&h, &me(), |_| None, ask(PodState::Unreadable("403".into()))),
            Liveness::Unknown(_)
        ));
        // Another host outside a cluster: cannot be told, left alone.
        let elsewhere = at("other-host", "boot-9/1/300", None);
        assert!(matches!(
            liveness(&elsewhere, &me(), |_| None, no_pod),
            Liveness::Unknown(m) if m.contains("other-host")
        ));
    }

    #[test]
    fn annotations_round_trip() {
        let h = at("worker-a", "b/1/2", Some("oz/worker-a"));
        assert_eq!(Holder::of(&h.annotations()), Some(h));
        assert_eq!(Holder::of(&BTreeMap::new()), None);
        let current = Holder::current();
        assert!(current.process.split('/').count() == 3, "{current:?}");
    }
}
