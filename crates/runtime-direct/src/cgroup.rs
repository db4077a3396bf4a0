//! One cgroup v2 per task for the direct runtime: every process a task
//! starts (a `sleep &` in the setup command, an agent's `setsid … &`) is
//! in it whatever it does with sessions and process groups, so a stop
//! reaches all of them (SIGTERM to each, then `cgroup.kill` after the
//! grace), and the task's resource limits apply to the whole tree
//! (`cpu.max`, `memory.max`, `memory.swap.max`, `pids.max`; the kernel's
//! cgroup v2 interface, Documentation/admin-guide/cgroup-v2.rst).
//!
//! Task cgroups are made under the worker's own cgroup, found from
//! `/proc/self/mountinfo` (the `cgroup2` mount, which a hybrid host has at
//! `/sys/fs/cgroup/unified`) and `/proc/self/cgroup` (`0::PATH`).

use super::config::Limits;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// cgroup v2's default CPU period (`cpu.max`'s second field), microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The leaf the worker moves itself into when it must enable controllers
/// for its children in a cgroup that holds it (the "no internal processes"
/// rule); systemd's `Delegate=yes` allows exactly this.
const WORKER_LEAF: &str = "oz-agent-worker";
/// Prefix of task cgroups' names.
pub const TASK_PREFIX: &str = "oz-task-";

/// Why task cgroups cannot be used on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where this worker makes task cgroups, and the limits each gets.
#[derive(Debug, Clone)]
pub struct Cgroups {
    parent: PathBuf,
    limits: Limits,
}

/// The cgroup2 mount point, from mountinfo text (field 5 of the first line
/// whose file system type, after " - ", is `cgroup2`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The process's cgroup v2 path from `/proc/self/cgroup` text (`0::PATH`).
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

fn controllers_needed(limits: &Limits) -> Vec<(&'static str, &'static str)> {
    let mut c = Vec::new();
    if limits.cpu_micros.is_some() {
        c.push(("cpu", "backend.direct.cpus"));
    }
    if limits.memory_bytes.is_some() {
        c.push(("memory", "backend.direct.memory"));
    }
    if limits.pids.is_some() {
        c.push(("pids", "backend.direct.pids_limit"));
    }
    c
}

impl Cgroups {
    /// Finds the worker's cgroup and checks that it may make task cgroups
    /// there (a probe cgroup is made and removed) with `limits` in them.
    /// Errors say what is missing and, when limits are set, which key needs
    /// it.
    pub fn detect(limits: &Limits) -> Result<Cgroups, Unavailable> {
        let why = |s: String| Unavailable(s);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| why(format!("cannot read /proc/self/mountinfo: {e}")))?;
        let mount = cgroup2_mount(&mountinfo)
            .ok_or_else(|| why("the host has no cgroup v2 (cgroup2) file system mounted".into()))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| own_cgroup(&s))
            .ok_or_else(|| why("/proc/self/cgroup names no cgroup v2 path".into()))?;
        let mut dir = mount.join(own.trim_start_matches('/'));
        let needed = controllers_needed(limits);
        if !needed.is_empty() {
            let available =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            let available: Vec<&str> = available.split_whitespace().collect();
            for (controller, key) in &needed {
                if !available.contains(controller) {
                    return Err(why(format!(
                        "{key} needs the cgroup v2 {controller} controller, and the worker's cgroup {} offers only [{}] (on a hybrid cgroup v1/v2 host the controllers belong to v1; boot with systemd.unified_cgroup_hierarchy=1, or run the worker under systemd with Delegate=yes)",
                        dir.display(),
                        available.join(" ")
                    )));
                }
            }
            dir = enable_controllers(&dir, &needed)?;
        }
        let cgroups = Cgroups {
            parent: dir,
            limits: limits.clone(),
        };
        // A probe proves the worker may make (and fill in) task cgroups.
        let probe = cgroups.create("probe").map_err(|e| {
            why(format!(
                "cannot make a task cgroup under {}: {e}",
                cgroups.parent.display()
            ))
        })?;
        probe.remove();
        Ok(cgroups)
    }

    /// Where task cgroups go.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Makes a new, empty cgroup for `task_id` with the limits set.
    pub fn create(&self, task_id: &str) -> std::io::Result<TaskCgroup> {
        let safe: String = task_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(48)
            .collect();
        let name = format!(
            "{TASK_PREFIX}{safe}-{}",
            &oz_runtime::host::random_id()[..8]
        );
        let path = self.parent.join(name);
        std::fs::create_dir(&path)?;
        let cg = TaskCgroup { path };
        if let Err(e) = cg.set_limits(&self.limits) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// Enables `needed` controllers for `dir`'s children; when `dir` holds
/// processes (the worker) and is not the root, the worker first moves into
/// a leaf of its own. Returns the folder task cgroups go in.
fn enable_controllers(
    dir: &Path,
    needed: &[(&'static str, &'static str)],
) -> Result<PathBuf, Unavailable> {
    let line = needed
        .iter()
        .map(|(c, _)| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let control = dir.join("cgroup.subtree_control");
    let first = std::fs::write(&control, &line);
    let Err(e) = first else {
        return Ok(dir.to_path_buf());
    };
    if e.raw_os_error() != Some(nix::libc::EBUSY) {
        return Err(Unavailable(format!(
            "cannot enable the {line} controllers in {}: {e}",
            control.display()
        )));
    }
    let leaf = dir.join(WORKER_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Unavailable(format!(
                "cannot make {} to move the worker into: {e}",
                leaf.display()
            )))
        }
    }
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).map_err(|e| {
        Unavailable(format!(
            "cannot move the worker into {}: {e}",
            leaf.display()
        ))
    })?;
    std::fs::write(&control, &line).map_err(|e| {
        Unavailable(format!(
            "cannot enable the {line} controllers in {} (other processes share the worker's cgroup; give the worker a cgroup of its own, e.g. systemd's Delegate=yes): {e}",
            control.display()
        ))
    })?;
    Ok(dir.to_path_buf())
}

/// The cgroup v2 interface files and values for `l`: `cpu.max` as
/// "QUOTA PERIOD" (µs of CPU per 100 ms period), `memory.max` in bytes,
/// `memory.swap.max` (swap alone: Docker's `--memory-swap` minus
/// `--memory`, `max` for `-1`, and as much as the memory limit when unset,
/// Docker's default), `pids.max`.
pub fn limit_files(l: &Limits) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    if let Some(m) = l.cpu_micros {
        files.push((
            "cpu.max",
            format!("{} {CPU_PERIOD_US}", m * CPU_PERIOD_US / 1_000_000),
        ));
    }
    if let Some(m) = l.memory_bytes {
        files.push(("memory.max", m.to_string()));
        files.push((
            "memory.swap.max",
            match l.swap_bytes {
                None => m.to_string(),
                Some(Some(s)) => s.to_string(),
                Some(None) => "max".into(),
            },
        ));
    }
    if let Some(p) = l.pids {
        files.push(("pids.max", p.to_string()));
    }
    files
}

/// One task's cgroup.
#[derive(Debug)]
pub struct TaskCgroup {
    path: PathBuf,
}

impl TaskCgroup {
    /// A recorded cgroup (for the restart-recovery path).
    pub fn at(path: PathBuf) -> TaskCgroup {
        TaskCgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a process writes `0` to to join (the launcher does).
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    fn set_limits(&self, l: &Limits) -> std::io::Result<()> {
        let has_swap_file = self.path.join("memory.swap.max").exists();
        if l.swap_bytes.is_some() && l.memory_bytes.is_some() && !has_swap_file {
            return Err(std::io::Error::other(
                "backend.direct.memory_swap needs swap accounting, and this cgroup has no memory.swap.max (boot with swapaccount=1)",
            ));
        }
        for (file, value) in limit_files(l) {
            // Without swap accounting the file is absent: only an explicit
            // memory_swap needs it (checked above).
            if file == "memory.swap.max" && !has_swap_file {
                continue;
            }
            std::fs::write(self.path.join(file), &value).map_err(|e| {
                std::io::Error::new(e.kind(), format!("writing {value:?} to {file}: {e}"))
            })?;
        }
        Ok(())
    }

    /// Pids of the processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether any process is in the cgroup (`cgroup.events`'s `populated`).
    pub fn populated(&self) -> bool {
        match std::fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(s) => s.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => !self.pids().is_empty(),
        }
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal_all(&self, signal: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILLs every process in the cgroup, including ones forking at
    /// that moment (`cgroup.kill`, Linux 5.14); on older kernels, each
    /// listed process until none is left.
    pub fn kill_all(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for _ in 0..100 {
                let pids = self.pids();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// Waits until the cgroup is empty, up to `limit`; whether it is.
    pub async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.populated() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // cgroup.events can be watched with inotify; a short poll keeps
            // this dependency-free and the grace is seconds long.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM to every process, SIGKILL to all after `grace` (or at once
    /// when `force` fires); returns once the cgroup is empty (bounded).
    pub async fn stop_all(&self, grace: Duration, force: &tokio_util::sync::CancellationToken) {
        if !self.populated() {
            return;
        }
        self.signal_all(Signal::SIGTERM);
        let emptied = tokio::select! {
            e = self.wait_empty(grace) => e,
            _ = force.cancelled() => false,
        };
        if !emptied {
            self.kill_all();
            self.wait_empty(Duration::from_secs(5)).await;
        }
    }

    /// How many processes the kernel's OOM killer killed in the cgroup
    /// (`memory.events`'s `oom_kill`; 0 without the memory controller).
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.events"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills what is left and removes the cgroup (retrying briefly while
    /// the last processes are reaped); a failure is logged.
    pub fn remove(&self) {
        for attempt in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => {
                    if attempt == 0 {
                        self.kill_all();
                    }
                    if attempt == 49 {
                        tracing::warn!(
                            "cannot remove the task cgroup {}: {e}",
                            self.path.display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_cgroup_v2_files_in_dockers_meaning() {
        let l = Limits {
            cpu_micros: Some(1_500_000),
            memory_bytes: Some(64 << 20),
            swap_bytes: Some(Some(32 << 20)),
            pids: Some(100),
        };
        assert_eq!(
            limit_files(&l),
            [
                ("cpu.max", "150000 100000".to_string()),
                ("memory.max", (64u64 << 20).to_string()),
                ("memory.swap.max", (32u64 << 20).to_string()),
                ("pids.max", "100".to_string()),
            ]
        );
        let default_swap = Limits {
            memory_bytes: Some(1 << 30),
            ..Default::default()
        };
        assert_eq!(
            limit_files(&default_swap)[1],
            ("memory.swap.max", (1u64 << 30).to_string())
        );
        let unlimited = Limits {
            memory_bytes: Some(1 << 30),
            swap_bytes: Some(None),
            ..Default::default()
        };
        assert_eq!(limit_files(&unlimited)[1].1, "max");
        assert!(limit_files(&Limits::default()).is_empty());
    }

    #[test]
    fn finds_the_cgroup2_mount_and_own_path() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/oz.service\n").as_deref(),
            Some("/system.slice/oz.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }
}
