//! Whether another worker process on this host still runs, in a way that
//! holds across PID namespaces (a worker in a container, or under
//! `unshare --pid`): a pid means nothing outside its own PID namespace, so
//! a worker in another one would be judged dead by its pid and have its
//! running task containers removed.
//!
//! Each worker process holds a *beacon*: an abstract Unix socket
//! (`@oz-agent-worker/<128 random bits>`, a datagram socket bound for the
//! process's lifetime and closed on exec, so no child keeps it). Abstract
//! names live in the network namespace, not the file system or the PID
//! namespace, so any process in the same network namespace can ask "is this
//! name still bound?" by trying to bind it: `EADDRINUSE` means its owner
//! runs; success means it is gone (the kernel releases the name when the
//! owner's last descriptor closes, however it died). Workers on the host
//! network, in `unshare --pid`, or in containers run with `--network host`
//! share the host's network namespace.
//!
//! What is recorded next to a beacon: the network and PID namespace
//! identities (`net:[inode]`, `pid:[inode]` from `/proc/self/ns`). A reader
//! in the beacon's network namespace asks the beacon; otherwise a reader in
//! the owner's PID namespace may still trust pid + start time; otherwise it
//! cannot tell and must leave the owner's things alone.
//!
//! [`ProcessIdentity`] is what a worker process writes on what it creates
//! (the Docker runtime's labels, the Kubernetes runtime's Job annotations):
//! its host, boot, pid and start time, beacon and namespaces, under the
//! same `dev.oz.*` names everywhere, and how another process judges it.

mod identity;

pub use identity::{
    this_host, ProcessIdentity, Standing, BEACON_KEY, BOOT_KEY, HOST_KEY, INSTANCE_KEY, KEYS,
    NET_NAMESPACE_KEY, PID_KEY, PID_NAMESPACE_KEY, PID_START_KEY,
};

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

/// This process's beacon name, and the socket that holds it (kept open for
/// the life of the process).
static BEACON: OnceLock<(String, Option<UnixDatagram>)> = OnceLock::new();

/// The beacon name this process holds, binding it on first use. Empty when
/// the socket cannot be bound (then only the pid rule applies to us).
pub fn beacon() -> &'static str {
    &BEACON
        .get_or_init(|| {
            let name = format!("oz-agent-worker/{}", crate::host::random_id());
            match bind(&name) {
                Ok(sock) => (name, Some(sock)),
                Err(e) => {
                    tracing::warn!(
                        "cannot bind the liveness socket @{name}: {e}; other workers judge this one by its pid only"
                    );
                    (String::new(), None)
                }
            }
        })
        .0
}

fn bind(name: &str) -> std::io::Result<UnixDatagram> {
    UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
}

/// Whether the beacon `name` is held by a live process of this network
/// namespace; `None` when that cannot be found out (an unexpected error).
pub fn beacon_held(name: &str) -> Option<bool> {
    if name.is_empty() {
        return None;
    }
    match bind(name) {
        // Ours for an instant; dropping it releases the name again.
        Ok(_) => Some(false),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some(true),
        Err(_) => None,
    }
}

/// This process's network namespace (`net:[inode]`), or empty.
pub fn net_namespace() -> String {
    namespace("net")
}

/// This process's PID namespace (`pid:[inode]`), or empty.
pub fn pid_namespace() -> String {
    namespace("pid")
}

fn namespace(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a record says about its owner process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerMarks<'a> {
    pub pid: Option<u32>,
    pub pid_start: &'a str,
    pub beacon: &'a str,
    pub net_namespace: &'a str,
    pub pid_namespace: &'a str,
}

/// The verdict on an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    Dead(&'static str),
    /// Neither its beacon nor its pid can be checked from here.
    Unknowable(&'static str),
}

/// How this process sees the host, and how it asks; injectable for tests.
pub struct Here<'a> {
    pub net_namespace: &'a str,
    pub pid_namespace: &'a str,
    pub beacon_held: &'a dyn Fn(&str) -> Option<bool>,
    pub pid_alive: &'a dyn Fn(u32, &str) -> bool,
}

/// Decides whether the owner described by `m` runs (see the module comment).
/// Records without namespace marks (written before they existed) are judged
/// by pid alone, as they always were.
pub fn judge(m: &OwnerMarks<'_>, here: &Here<'_>) -> Verdict {
    if !m.beacon.is_empty() && m.net_namespace == here.net_namespace {
        match (here.beacon_held)(m.beacon) {
            Some(true) => return Verdict::Alive,
            Some(false) => {
                return Verdict::Dead("its process has exited (its liveness socket is gone)")
            }
            None => {}
        }
    }
    if !m.pid_namespace.is_empty() && m.pid_namespace != here.pid_namespace {
        return Verdict::Unknowable(
            "it was made by a worker in another PID and network namespace of this host (a container \
             without --network host?), whose liveness cannot be checked from here",
        );
    }
    match m.pid {
        Some(pid) if (here.pid_alive)(pid, m.pid_start) => Verdict::Alive,
        Some(_) => Verdict::Dead("its process has exited"),
        None => Verdict::Unknowable("the record names no owner process"),
    }
}

/// [`judge`] as this process sees the host.
pub fn judge_here(m: &OwnerMarks<'_>) -> Verdict {
    let net = net_namespace();
    let pid = pid_namespace();
    judge(
        m,
        &Here {
            net_namespace: &net,
            pid_namespace: &pid,
            beacon_held: &beacon_held,
            pid_alive: &crate::host::process_alive,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_beacon_is_alive_and_a_released_one_is_not() {
        let mine = beacon();
        assert!(mine.starts_with("oz-agent-worker/"));
        assert_eq!(beacon_held(mine), Some(true));
        let gone = format!("oz-agent-worker/{}", crate::host::random_id());
        {
            let _held = bind(&gone).unwrap();
            assert_eq!(beacon_held(&gone), Some(true));
        }
        assert_eq!(beacon_held(&gone), Some(false), "released when closed");
        assert!(net_namespace().starts_with("net:[") && pid_namespace().starts_with("pid:["));
    }

    #[test]
    fn the_beacon_decides_in_its_network_namespace_then_the_pid_in_its_pid_namespace() {
        let held = |n: &str| Some(n == "b-live");
        let pid_alive = |pid: u32, _: &str| pid == 7;
        let here = Here {
            net_namespace: "net:[1]",
            pid_namespace: "pid:[1]",
            beacon_held: &held,
            pid_alive: &pid_alive,
        };
        let marks = |beacon, net, pidns, pid| OwnerMarks {
            pid: Some(pid),
            pid_start: "1",
            beacon,
            net_namespace: net,
            pid_namespace: pidns,
        };
        // Another PID namespace, same network: the beacon, not the pid (8 is
        // "dead" here but means another process there).
        assert_eq!(
            judge(&marks("b-live", "net:[1]", "pid:[2]", 8), &here),
            Verdict::Alive
        );
        assert!(matches!(
            judge(&marks("b-gone", "net:[1]", "pid:[2]", 7), &here),
            Verdict::Dead(_)
        ));
        // Another network namespace: the pid only within its own PID namespace.
        assert_eq!(
            judge(&marks("b-live", "net:[2]", "pid:[1]", 7), &here),
            Verdict::Alive
        );
        assert!(matches!(
            judge(&marks("b-live", "net:[2]", "pid:[1]", 8), &here),
            Verdict::Dead(_)
        ));
        assert!(matches!(
            judge(&marks("b-live", "net:[2]", "pid:[2]", 8), &here),
            Verdict::Unknowable(_)
        ));
        // Old records: pid only.
        assert_eq!(judge(&marks("", "", "", 7), &here), Verdict::Alive);
        assert!(matches!(
            judge(&marks("", "", "", 8), &here),
            Verdict::Dead(_)
        ));
    }
}
