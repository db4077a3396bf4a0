//! The launcher: the worker's own binary, re-run as
//! `oz-agent-worker __oz-task-launch [OPTIONS] -- PROGRAM ARGS…`, puts a
//! task's program where it belongs before the program runs, so nothing is
//! left to a race after it started and no `unsafe` pre-exec hook is needed:
//!
//! 1. joins the task's cgroup (`--cgroup-procs FILE`: writes `0`),
//! 2. sets its OOM score adjustment (`--oom-score-adj N`), so the kernel's
//!    OOM killer picks the agent before the worker,
//! 3. drops to the task's user (`--uid`, `--gid`, `--groups`),
//! 4. then either replaces itself with the program (`exec`), or, where the
//!    host gives no cgroup (`--reap GRACE_MS`), stays as the tree's
//!    *subreaper* (prctl `PR_SET_CHILD_SUBREAPER`): every process the
//!    program starts, even one that escapes with `setsid` and double forks,
//!    is re-parented to the launcher when its parent dies, so the launcher
//!    always knows the whole tree. It ends the tree with the program:
//!    SIGTERM to every descendant when the program exits or the worker
//!    sends SIGTERM, SIGKILL after the grace; SIGUSR1 (sent by the worker
//!    when it must stop now, and by the kernel when the worker dies:
//!    `PR_SET_PDEATHSIG`) kills the tree at once. It exits with the
//!    program's status (a signal death as 128+N, as a shell reports it).
//!
//! Launcher failures exit 125 (bad use), 126 (cannot drop privileges or
//! join the cgroup) or 127 (cannot run the program), with a line on stderr.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The first argument that selects the launcher instead of the CLI.
pub const ARG: &str = "__oz-task-launch";

/// The OOM score adjustment the agent (and everything a task runs) gets:
/// positive, so under memory pressure the kernel kills task processes
/// before the worker (Kubernetes gives best-effort pods 1000; 500 still
/// leaves the ordering among a task's own processes to their size).
pub const TASK_OOM_SCORE_ADJ: i32 = 500;

/// A user to run as: ids resolved at the worker's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// How to launch one program.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub cgroup_procs: Option<PathBuf>,
    pub oom_score_adj: Option<i32>,
    pub user: Option<RunAs>,
    /// Stay as the tree's subreaper, with this grace between SIGTERM and
    /// SIGKILL.
    pub reap: Option<Duration>,
}

impl Launch {
    /// The launcher's arguments (after [`ARG`]) for `program args…`.
    pub fn args(&self, program: &std::path::Path, args: &[String]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![ARG.into()];
        if let Some(p) = &self.cgroup_procs {
            v.push("--cgroup-procs".into());
            v.push(p.into());
        }
        if let Some(n) = self.oom_score_adj {
            v.push("--oom-score-adj".into());
            v.push(n.to_string().into());
        }
        if let Some(u) = &self.user {
            v.extend([
                "--uid".into(),
                u.uid.to_string().into(),
                "--gid".into(),
                u.gid.to_string().into(),
                "--groups".into(),
                u.groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
            ]);
        }
        if let Some(g) = self.reap {
            v.push("--reap".into());
            v.push(g.as_millis().to_string().into());
        }
        v.push("--".into());
        v.push(program.into());
        v.extend(args.iter().map(OsString::from));
        v
    }
}

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("oz-agent-worker launcher: {msg}");
    std::process::exit(code)
}

/// Runs the launcher when `args` (the process's, without argv\[0\]) start
/// with [`ARG`]; otherwise returns. Never returns when it ran.
pub fn main_if_launcher(args: &[OsString]) {
    if args.first().map(|a| a.as_os_str()) != Some(ARG.as_ref()) {
        return;
    }
    let mut launch = Launch::default();
    let mut uid = None;
    let mut gid = None;
    let mut groups = Vec::new();
    let mut it = args[1..].iter();
    let mut program = None;
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.to_str())
                .map(str::to_string)
                .unwrap_or_else(|| fail(125, format!("{a:?} needs a value")))
        };
        match a.to_str() {
            Some("--cgroup-procs") => launch.cgroup_procs = Some(value().into()),
            Some("--oom-score-adj") => launch.oom_score_adj = value().parse().ok(),
            Some("--uid") => uid = value().parse::<u32>().ok(),
            Some("--gid") => gid = value().parse::<u32>().ok(),
            Some("--groups") => {
                groups = value()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse::<u32>().ok())
                    .collect()
            }
            Some("--reap") => {
                launch.reap = Some(Duration::from_millis(value().parse().unwrap_or(10_000)))
            }
            Some("--") => {
                program = it.next().cloned();
                break;
            }
            _ => fail(125, format!("unknown argument {a:?}")),
        }
    }
    let rest: Vec<OsString> = it.cloned().collect();
    let Some(program) = program else {
        fail(125, "no program given after --")
    };
    let parent = nix::unistd::getppid();

    if let Some(procs) = &launch.cgroup_procs {
        if let Err(e) = std::fs::write(procs, "0") {
            fail(
                126,
                format!("cannot join the task's cgroup ({}): {e}", procs.display()),
            );
        }
    }
    if let Some(n) = launch.oom_score_adj {
        // Raising one's own score needs no privilege; a failure (a kernel
        // without it) leaves the default, which is no reason to fail.
        let _ = std::fs::write("/proc/self/oom_score_adj", n.to_string());
    }
    if let (Some(uid), Some(gid)) = (uid, gid) {
        let groups: Vec<Gid> = groups.into_iter().map(Gid::from_raw).collect();
        if let Err(e) = nix::unistd::setgroups(&groups) {
            fail(126, format!("cannot set the supplementary groups: {e}"));
        }
        if let Err(e) = nix::unistd::setgid(Gid::from_raw(gid)) {
            fail(126, format!("cannot switch to group {gid}: {e}"));
        }
        if let Err(e) = nix::unistd::setuid(Uid::from_raw(uid)) {
            fail(126, format!("cannot switch to user {uid}: {e}"));
        }
    }

    let mut cmd = std::process::Command::new(&program);
    cmd.args(&rest);
    match launch.reap {
        None => {
            use std::os::unix::process::CommandExt;
            let e = cmd.exec();
            fail(
                127,
                format!("cannot run {}: {e}", program.to_string_lossy()),
            )
        }
        Some(grace) => {
            let code = reap(cmd, grace, parent);
            std::process::exit(code)
        }
    }
}

/// The subreaper loop; returns the exit code to leave with.
fn reap(mut cmd: std::process::Command, grace: Duration, parent: Pid) -> i32 {
    use nix::sys::prctl;
    if let Err(e) = prctl::set_child_subreaper(true) {
        fail(126, format!("cannot become a subreaper: {e}"));
    }
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGALRM,
    ] {
        mask.add(s);
    }
    // Blocked here, waited for below; the child gets them unblocked (std
    // resets the signal mask of what it spawns).
    if let Err(e) = mask.thread_block() {
        fail(126, format!("cannot block signals: {e}"));
    }
    let _ = prctl::set_pdeathsig(Signal::SIGUSR1);
    if nix::unistd::getppid() != parent {
        // The worker died before the death signal was armed.
        std::process::exit(128 + Signal::SIGKILL as i32);
    }
    let child = match cmd.spawn() {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => fail(127, format!("cannot run {:?}: {e}", cmd.get_program())),
    };
    let mut status: Option<i32> = None;
    let mut terminating = false;
    loop {
        // Reap everything that ended: the program and adopted orphans.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    if pid == child {
                        status = Some(code);
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    if pid == child {
                        status = Some(128 + sig as i32);
                    }
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => {
                    // The tree is empty.
                    return status.unwrap_or(128 + Signal::SIGKILL as i32);
                }
                Err(_) => break,
            }
        }
        if status.is_some() && !terminating {
            // The program ended: what it left behind ends with it.
            terminating = true;
            signal_tree(Signal::SIGTERM);
            nix::unistd::alarm::set(alarm_secs(grace));
        }
        match mask.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) | Ok(Signal::SIGHUP) if !terminating => {
                terminating = true;
                signal_tree(Signal::SIGTERM);
                nix::unistd::alarm::set(alarm_secs(grace));
            }
            Ok(Signal::SIGALRM) | Ok(Signal::SIGUSR1) => {
                terminating = true;
                kill_tree_until_empty();
            }
            _ => {}
        }
    }
}

/// The grace in whole seconds for alarm(2), rounded up (at least 1).
fn alarm_secs(grace: Duration) -> u32 {
    grace.as_millis().div_ceil(1000).clamp(1, u32::MAX as u128) as u32
}

/// Every live descendant of this process: the children, theirs, and so on
/// (orphans are children here, as this process is a subreaper).
fn descendants() -> Vec<Pid> {
    let me = std::process::id() as i32;
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("");
            let ppid: i32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if state != "Z" {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![me];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

fn signal_tree(signal: Signal) {
    for pid in descendants() {
        let _ = kill(pid, signal);
    }
}

/// SIGKILL to the tree, again while a process forked meanwhile is left.
fn kill_tree_until_empty() {
    for _ in 0..100 {
        let left = descendants();
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip_through_the_command_line() {
        let l = Launch {
            cgroup_procs: Some("/sys/fs/cgroup/x/cgroup.procs".into()),
            oom_score_adj: Some(500),
            user: Some(RunAs {
                name: "u".into(),
                uid: 1001,
                gid: 1002,
                groups: vec![1002, 27],
                home: "/home/u".into(),
            }),
            reap: Some(Duration::from_secs(3)),
        };
        let a = l.args(
            std::path::Path::new("/bin/oz"),
            &["agent".into(), "--".into()],
        );
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            a,
            [
                ARG,
                "--cgroup-procs",
                "/sys/fs/cgroup/x/cgroup.procs",
                "--oom-score-adj",
                "500",
                "--uid",
                "1001",
                "--gid",
                "1002",
                "--groups",
                "1002,27",
                "--reap",
                "3000",
                "--",
                "/bin/oz",
                "agent",
                "--"
            ]
        );
    }
}
