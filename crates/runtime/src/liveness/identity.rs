//! The marks a worker process writes on what it creates (Docker labels,
//! Kubernetes Job annotations), so that a later process can tell whether
//! the creator still runs: one struct, the names its marks go under, and
//! the judgement of a creator as seen from this host. Each runtime keeps
//! its own encoding (which map, which marks of its own go beside these,
//! which are required); the names and what they mean are the same for all.

use super::{beacon, net_namespace, pid_namespace, OwnerMarks, Verdict};
use crate::host::{host_identity, process_start_time, random_id, read_trimmed};

/// `dev.oz.instance`: random per process (128 bits as hex).
pub const INSTANCE_KEY: &str = "dev.oz.instance";
/// `dev.oz.host`: `<machine id>/<host name>`.
pub const HOST_KEY: &str = "dev.oz.host";
/// `dev.oz.boot-id`: the kernel's boot id.
pub const BOOT_KEY: &str = "dev.oz.boot-id";
/// `dev.oz.pid`: the pid, decimal, in the process's own PID namespace.
pub const PID_KEY: &str = "dev.oz.pid";
/// `dev.oz.pid-start`: the start time in clock ticks after boot.
pub const PID_START_KEY: &str = "dev.oz.pid-start";
/// `dev.oz.liveness-socket`: the process's beacon ([`super::beacon`]).
pub const BEACON_KEY: &str = "dev.oz.liveness-socket";
/// `dev.oz.net-namespace`: `net:[inode]`.
pub const NET_NAMESPACE_KEY: &str = "dev.oz.net-namespace";
/// `dev.oz.pid-namespace`: `pid:[inode]`.
pub const PID_NAMESPACE_KEY: &str = "dev.oz.pid-namespace";

/// Every key [`ProcessIdentity::marks`] writes, in its order.
pub const KEYS: [&str; 8] = [
    INSTANCE_KEY,
    HOST_KEY,
    BOOT_KEY,
    PID_KEY,
    PID_START_KEY,
    BEACON_KEY,
    NET_NAMESPACE_KEY,
    PID_NAMESPACE_KEY,
];

/// One worker process, as it marks what it creates. Empty strings stand
/// for marks that could not be read (or that records written before they
/// existed lack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Random per process: tells this process from an earlier one that
    /// had its pid.
    pub instance: String,
    /// `<machine id>/<host name>` ([`crate::host::host_identity`]).
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot: String,
    pub pid: u32,
    /// Clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub pid_start: String,
    /// The abstract socket name it holds ([`super::beacon`]).
    pub beacon: String,
    /// `net:[inode]`.
    pub net_namespace: String,
    /// `pid:[inode]`.
    pub pid_namespace: String,
}

/// Where a process stands as seen from this host ([`ProcessIdentity::seen_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The very process that looks (same instance).
    Us,
    /// It ran on another host (its identity is [`ProcessIdentity::host`]):
    /// nothing here says whether it still runs.
    OtherHost,
    /// It ran on this host: the verdict ([`Verdict::Dead`] also when the
    /// host has rebooted since).
    ThisHost(Verdict),
}

impl ProcessIdentity {
    /// This process. Binds its beacon if that is not done yet.
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        ProcessIdentity {
            instance: random_id(),
            host: host_identity(),
            boot: boot_id(),
            pid,
            pid_start: process_start_time(pid).unwrap_or_default(),
            beacon: beacon().to_string(),
            net_namespace: net_namespace(),
            pid_namespace: pid_namespace(),
        }
    }

    /// The marks as `(key, value)` pairs, keys as in [`KEYS`], to collect
    /// into labels or annotations.
    pub fn marks(&self) -> impl Iterator<Item = (String, String)> {
        let values = [
            self.instance.clone(),
            self.host.clone(),
            self.boot.clone(),
            self.pid.to_string(),
            self.pid_start.clone(),
            self.beacon.clone(),
            self.net_namespace.clone(),
            self.pid_namespace.clone(),
        ];
        KEYS.into_iter().map(str::to_string).zip(values)
    }

    /// The process that marks read through `get` (by key) name; `None`
    /// without a host, or without a pid that parses: then they name none.
    /// Other absent marks read as empty.
    pub fn from_marks<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<ProcessIdentity> {
        let or_empty = |k: &str| get(k).unwrap_or_default().to_string();
        Some(ProcessIdentity {
            host: get(HOST_KEY)?.to_string(),
            pid: get(PID_KEY)?.parse().ok()?,
            instance: or_empty(INSTANCE_KEY),
            boot: or_empty(BOOT_KEY),
            pid_start: or_empty(PID_START_KEY),
            beacon: or_empty(BEACON_KEY),
            net_namespace: or_empty(NET_NAMESPACE_KEY),
            pid_namespace: or_empty(PID_NAMESPACE_KEY),
        })
    }

    /// What [`super::judge`] reads of it.
    pub fn owner_marks(&self) -> OwnerMarks<'_> {
        OwnerMarks {
            pid: Some(self.pid),
            pid_start: &self.pid_start,
            beacon: &self.beacon,
            net_namespace: &self.net_namespace,
            pid_namespace: &self.pid_namespace,
        }
    }

    /// Where it stands as seen by the process `me`: [`Standing::Us`] when
    /// it is `me`, else as [`ProcessIdentity::seen_from_host`] from `me`'s
    /// host.
    pub fn seen_from(
        &self,
        me: &ProcessIdentity,
        judge: impl FnOnce(&OwnerMarks<'_>) -> Verdict,
    ) -> Standing {
        if self.instance == me.instance {
            return Standing::Us;
        }
        self.seen_from_host(&me.host, &me.boot, judge)
    }

    /// Where it stands as seen from the host `host` (`<machine id>/<host
    /// name>`) booted as `boot`: on another host, dead if the host has
    /// rebooted since (a process does not outlive its boot; the same host
    /// name after a reboot, or a StatefulSet Pod recreated under its name),
    /// else what `judge` (usually [`super::judge_here`]) says of its marks.
    pub fn seen_from_host(
        &self,
        host: &str,
        boot: &str,
        judge: impl FnOnce(&OwnerMarks<'_>) -> Verdict,
    ) -> Standing {
        if self.host != host {
            return Standing::OtherHost;
        }
        if self.boot != boot {
            return Standing::ThisHost(Verdict::Dead("the host has rebooted since it started"));
        }
        Standing::ThisHost(judge(&self.owner_marks()))
    }
}

/// This host's identity (`<machine id>/<host name>`) and boot id, as
/// [`ProcessIdentity::seen_from_host`] compares them, for a process that
/// judges others without marking anything itself (the cleanup command).
pub fn this_host() -> (String, String) {
    (host_identity(), boot_id())
}

fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn me() -> ProcessIdentity {
        ProcessIdentity {
            instance: "i-me".into(),
            host: "m/node-a".into(),
            boot: "boot-1".into(),
            pid: 100,
            pid_start: "5000".into(),
            beacon: "oz-agent-worker/me".into(),
            net_namespace: "net:[1]".into(),
            pid_namespace: "pid:[1]".into(),
        }
    }

    fn never(_: &OwnerMarks<'_>) -> Verdict {
        panic!("the process was judged")
    }

    #[test]
    fn marks_round_trip_and_need_a_host_and_a_pid() {
        let p = me();
        let marks: HashMap<String, String> = p.marks().collect();
        assert_eq!(marks.len(), KEYS.len());
        assert!(KEYS.iter().all(|k| marks.contains_key(*k)));
        assert_eq!(marks[PID_KEY], "100");
        assert_eq!(marks[NET_NAMESPACE_KEY], "net:[1]");
        let read = |m: &HashMap<String, String>| {
            ProcessIdentity::from_marks(|k| m.get(k).map(String::as_str))
        };
        assert_eq!(read(&marks), Some(p));
        for (key, value) in [(HOST_KEY, None), (PID_KEY, None), (PID_KEY, Some("x"))] {
            let mut m = marks.clone();
            match value {
                Some(v) => m.insert(key.to_string(), v.to_string()),
                None => m.remove(key),
            };
            assert_eq!(read(&m), None, "{key} = {value:?}");
        }
        // Marks written before beacons and namespaces: read as empty.
        let old: HashMap<String, String> = marks
            .into_iter()
            .filter(|(k, _)| {
                ![BEACON_KEY, NET_NAMESPACE_KEY, PID_NAMESPACE_KEY].contains(&k.as_str())
            })
            .collect();
        let p = read(&old).unwrap();
        assert!(p.beacon.is_empty() && p.net_namespace.is_empty() && p.pid_namespace.is_empty());
    }

    #[test]
    fn a_process_is_judged_only_on_its_own_host_and_boot() {
        let other = ProcessIdentity {
            instance: "i-other".into(),
            pid: 200,
            pid_start: "7000".into(),
            ..me()
        };
        assert_eq!(me().seen_from(&me(), never), Standing::Us);
        let judged = |m: &OwnerMarks<'_>| {
            assert_eq!((m.pid, m.pid_start), (Some(200), "7000"));
            Verdict::Alive
        };
        assert_eq!(
            other.seen_from(&me(), judged),
            Standing::ThisHost(Verdict::Alive)
        );
        let before_reboot = ProcessIdentity {
            boot: "boot-0".into(),
            ..other.clone()
        };
        assert!(matches!(
            before_reboot.seen_from(&me(), never),
            Standing::ThisHost(Verdict::Dead(why)) if why.contains("rebooted")
        ));
        let elsewhere = ProcessIdentity {
            host: "m2/node-b".into(),
            ..other
        };
        assert_eq!(elsewhere.seen_from(&me(), never), Standing::OtherHost);
        // Seen by a process that marks nothing (same instance is no reason).
        assert_eq!(
            me().seen_from_host("m/node-a", "boot-1", |_| Verdict::Dead("gone")),
            Standing::ThisHost(Verdict::Dead("gone"))
        );
    }

    #[test]
    fn this_process_is_filled_in_and_alive() {
        let p = ProcessIdentity::current();
        assert_eq!(p.pid, std::process::id());
        assert!(!p.pid_start.is_empty() && !p.boot.is_empty(), "{p:?}");
        assert_eq!((p.host.clone(), p.boot.clone()), this_host());
        assert_eq!(
            p.seen_from_host(&p.host, &p.boot, super::super::judge_here),
            Standing::ThisHost(Verdict::Alive)
        );
        assert_ne!(ProcessIdentity::current().instance, p.instance);
    }
}
