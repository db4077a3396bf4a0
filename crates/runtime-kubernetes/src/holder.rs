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
//!   `dev.oz.pid-namespace` (`oz_runtime::liveness::ProcessIdentity`, the
//!   same marks as the Docker runtime's labels);
//! - `dev.oz.pod`: `<namespace>/<name>` of the worker's Pod, when it runs in
//!   one, and `dev.oz.pod-uid`: its UID, when `OZ_POD_UID` gives it (the
//!   downward API's `metadata.uid`, as deploy/kubernetes sets it), so that
//!   a Pod recreated under the same name (a StatefulSet's) is not taken
//!   for the holder's.
//!
//! A holder is dead when it ran on this host and provably no longer runs
//! (the host rebooted, its liveness socket is gone, or in its own PID
//! namespace its pid is gone or reused: `oz_runtime::liveness::judge`), or
//! when its Pod no longer exists or has ended. A holder on another host
//! outside a cluster, or one whose liveness cannot be checked from here,
//! keeps its Jobs.

use oz_runtime::host::read_trimmed;
use oz_runtime::liveness::{self, OwnerMarks, ProcessIdentity, Standing, Verdict};
use std::collections::BTreeMap;

pub const WORKER_ID_ANNOTATION: &str = "dev.oz.worker-id";
pub const TASK_ID_ANNOTATION: &str = "dev.oz.task-id";
pub const EXECUTION_ID_ANNOTATION: &str = "dev.oz.execution-id";
pub const POD_ANNOTATION: &str = "dev.oz.pod";
pub const POD_UID_ANNOTATION: &str = "dev.oz.pod-uid";

/// Every holder annotation (`oz_runtime::liveness::KEYS`, then
/// [`POD_ANNOTATION`], [`POD_UID_ANNOTATION`]): a Job's values for these
/// are the worker's own, never the operator's `extra_annotations`.
pub fn holder_annotations() -> impl Iterator<Item = &'static str> {
    liveness::KEYS
        .into_iter()
        .chain([POD_ANNOTATION, POD_UID_ANNOTATION])
}

/// Where the service account's namespace is mounted in every Pod.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// One worker process, as written on the Jobs it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub process: ProcessIdentity,
    /// `<namespace>/<name>` of the worker's Pod.
    pub pod: Option<String>,
    /// That Pod's `metadata.uid`, when known (`OZ_POD_UID`).
    pub pod_uid: Option<String>,
}

impl Holder {
    /// This process. In a Pod (the service account's namespace file is
    /// mounted) the Pod's name is `OZ_POD_NAME` (the downward API, as
    /// deploy/kubernetes sets it), else the host name, which Kubernetes
    /// sets to the Pod's name cut to 63 characters: a host name of 63
    /// characters may be a cut one, and a Pod looked up by it would be
    /// missing, its live worker judged dead, so then no Pod is recorded
    /// (its Jobs are judged by the process alone, and kept).
    pub fn current() -> Holder {
        let pod = read_trimmed(POD_NAMESPACE_FILE)
            .filter(|ns| !ns.is_empty())
            .and_then(|ns| {
                let name = std::env::var("OZ_POD_NAME")
                    .ok()
                    .filter(|n| !n.is_empty())
                    .or_else(|| {
                        read_trimmed("/proc/sys/kernel/hostname")
                            .filter(|h| pod_name_from_host_name(h))
                    })?;
                Some(format!("{ns}/{name}"))
            });
        let pod_uid = pod
            .as_ref()
            .and_then(|_| std::env::var("OZ_POD_UID").ok())
            .filter(|u| !u.is_empty());
        Holder {
            process: ProcessIdentity::current(),
            pod,
            pod_uid,
        }
    }

    /// The holder annotations of a Job this process creates.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a: BTreeMap<String, String> = self.process.marks().collect();
        if let Some(pod) = &self.pod {
            a.insert(POD_ANNOTATION.to_string(), pod.clone());
        }
        if let Some(uid) = &self.pod_uid {
            a.insert(POD_UID_ANNOTATION.to_string(), uid.clone());
        }
        a
    }

    /// The holder a Job names; `None` when it names none (made by the Go
    /// worker, or by a version before these annotations): no instance,
    /// host or pid.
    pub fn of(annotations: &BTreeMap<String, String>) -> Option<Holder> {
        annotations.get(liveness::INSTANCE_KEY)?;
        Some(Holder {
            process: ProcessIdentity::from_marks(|k| annotations.get(k).map(String::as_str))?,
            pod: annotations.get(POD_ANNOTATION).cloned(),
            pod_uid: annotations.get(POD_UID_ANNOTATION).cloned(),
        })
    }
}

/// Whether a Pod's host name is its whole name: Kubernetes cuts the host
/// name at 63 characters (a DNS label), and `spec.hostname` may replace
/// it, which only `OZ_POD_NAME` can tell; a cut name is not used.
fn pod_name_from_host_name(host: &str) -> bool {
    !host.is_empty() && host.len() < 63
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
    /// Its `status.phase` and `metadata.uid`.
    Found {
        phase: String,
        uid: Option<String>,
    },
    Unreadable(String),
}

/// Decides a holder's fate as seen from `me`. `judge` decides for a
/// process on this host (`oz_runtime::liveness::judge_here`); `pod`
/// answers for a Pod `<namespace>/<name>`, asked only for a holder that
/// ran in a Pod and that its process cannot judge (on another host, or in
/// namespaces this one cannot see into).
pub fn liveness(
    holder: &Holder,
    me: &Holder,
    judge: impl Fn(&OwnerMarks<'_>) -> Verdict,
    pod: impl FnOnce(&str) -> PodState,
) -> Liveness {
    match holder.process.seen_from(&me.process, judge) {
        Standing::Us => Liveness::Us,
        Standing::ThisHost(Verdict::Alive) => Liveness::Alive,
        Standing::ThisHost(Verdict::Dead(why)) => Liveness::Dead(why.into()),
        // Another container of this host name: its Pod may say more.
        Standing::ThisHost(Verdict::Unknowable(why)) => match &holder.pod {
            Some(name) => from_pod(name, holder.pod_uid.as_deref(), pod),
            None => Liveness::Unknown(why.into()),
        },
        Standing::OtherHost => match &holder.pod {
            Some(name) => from_pod(name, holder.pod_uid.as_deref(), pod),
            None => Liveness::Unknown(format!(
                "its worker ran on another host ({}) outside the cluster, whose liveness cannot \
                 be checked from here; start the worker there again, or delete the Job",
                holder.process.host
            )),
        },
    }
}

fn from_pod(name: &str, uid: Option<&str>, pod: impl FnOnce(&str) -> PodState) -> Liveness {
    match pod(name) {
        PodState::Missing => Liveness::Dead(format!("its Pod {name} no longer exists")),
        // The same name, another Pod (a StatefulSet's, recreated).
        PodState::Found {
            uid: Some(found), ..
        } if uid.is_some_and(|u| u != found) => Liveness::Dead(format!(
            "its Pod {name} was replaced by another of the same name (uid {found}, the worker's was {})",
            uid.unwrap_or_default()
        )),
        PodState::Found { phase, .. } if phase == "Succeeded" || phase == "Failed" => {
            Liveness::Dead(format!("its Pod {name} has ended ({phase})"))
        }
        // A terminating Pod leaves its Jobs in place as it stops; a later
        // look of a worker of this id takes them over.
        PodState::Found { .. } => Liveness::Alive,
        PodState::Unreadable(e) => Liveness::Unknown(format!("its Pod {name} cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Holder {
        Holder {
            process: ProcessIdentity {
                instance: "i-me".into(),
                host: "m/node-a".into(),
                boot: "boot-1".into(),
                pid: 100,
                pid_start: "5000".into(),
                beacon: "oz-agent-worker/me".into(),
                net_namespace: "net:[1]".into(),
                pid_namespace: "pid:[1]".into(),
            },
            pod: None,
            pod_uid: None,
        }
    }

    fn other(host: &str, pod: Option<&str>) -> Holder {
        Holder {
            process: ProcessIdentity {
                instance: "i-other".into(),
                host: host.into(),
                pid: 200,
                pid_start: "7000".into(),
                beacon: "oz-agent-worker/other".into(),
                ..me().process
            },
            pod: pod.map(Into::into),
            pod_uid: None,
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
        let mut before_reboot = h;
        before_reboot.process.boot = "boot-0".into();
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
            liveness(
                &h,
                &me(),
                never,
                ask(PodState::Found {
                    phase: "Failed".into(),
                    uid: Some("u-1".into())
                })
            ),
            Liveness::Dead(_)
        ));
        assert_eq!(
            liveness(
                &h,
                &me(),
                never,
                ask(PodState::Found {
                    phase: "Running".into(),
                    uid: Some("u-1".into())
                })
            ),
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
        let mut h = other("m/worker-a", Some("oz/worker-a"));
        h.pod_uid = Some("u-a".into());
        assert_eq!(Holder::of(&h.annotations()), Some(h.clone()));
        assert_eq!(Holder::of(&BTreeMap::new()), None);
        // Every holder annotation, and nothing else, is written.
        let mut written: Vec<String> = h.annotations().into_keys().collect();
        let mut all: Vec<&str> = holder_annotations().collect();
        written.sort();
        all.sort();
        assert_eq!(written, all);
        // No instance: names no holder, even with a host and a pid.
        let mut no_instance = h.annotations();
        no_instance.remove(liveness::INSTANCE_KEY);
        assert_eq!(Holder::of(&no_instance), None);
        let current = Holder::current();
        assert_eq!(current.process.pid, std::process::id());
        assert!(!current.process.pid_start.is_empty(), "{current:?}");
        assert_eq!(liveness(&current, &current, never, no_pod), Liveness::Us);
    }

    #[test]
    fn a_host_name_that_may_be_cut_is_not_taken_for_the_pods_name() {
        assert!(pod_name_from_host_name("oz-agent-worker-5d9f8c7b6-x2x9z"));
        assert!(!pod_name_from_host_name(&"w".repeat(63)));
        assert!(!pod_name_from_host_name(""));
    }

    #[test]
    fn a_holder_pod_recreated_under_its_name_is_told_by_its_uid() {
        let mut h = other("/worker-0", Some("oz/worker-0"));
        h.pod_uid = Some("u-old".into());
        let found = |uid: &str| {
            let uid = uid.to_string();
            move |_: &str| PodState::Found {
                phase: "Running".into(),
                uid: Some(uid),
            }
        };
        assert!(matches!(
            liveness(&h, &me(), never, found("u-new")),
            Liveness::Dead(m) if m.contains("replaced") && m.contains("u-old")
        ));
        assert_eq!(liveness(&h, &me(), never, found("u-old")), Liveness::Alive);
        // Without a recorded uid, the name decides (alive).
        h.pod_uid = None;
        assert_eq!(liveness(&h, &me(), never, found("u-new")), Liveness::Alive);
        // The annotations carry it, and read back.
        h.pod_uid = Some("u-old".into());
        assert_eq!(Holder::of(&h.annotations()), Some(h));
    }
}
