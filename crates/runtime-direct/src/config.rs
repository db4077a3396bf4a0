//! The direct runtime's configuration: its section of the config file
//! (`backend.direct`, the Go worker's keys plus ours) and its flags.

use oz_foundation::operator_env::EnvEntry;
use oz_foundation::secret::Secret;
use oz_runtime::{InvalidSetting, DEFAULT_STOP_GRACE};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The Go worker's default `workspace_root`.
pub const DEFAULT_WORKSPACE_ROOT: &str = "/var/lib/oz/workspaces";
/// The Go worker's default `oz_path`: `oz` found on PATH.
pub const DEFAULT_OZ_PATH: &str = "oz";
/// How long `teardown_command` may run (ours; the Go worker has no limit).
pub const DEFAULT_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// `backend.direct` in the config file. Unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectSection {
    /// Folder holding one workspace per task (created 0700). Default /var/lib/oz/workspaces.
    pub workspace_root: Option<PathBuf>,
    /// Run every task in this existing folder instead of a per-task workspace (`--target-dir` overrides).
    pub target_dir: Option<PathBuf>,
    /// The agent program: a path, or a name looked up on PATH. Default "oz".
    pub oz_path: Option<String>,
    /// Run with `sh -c` in the workspace before the agent; a failure fails the task (setup_command).
    pub setup_command: Option<String>,
    /// Run with `sh -c` in the workspace after the agent, even after a cancellation; failures are logged.
    pub teardown_command: Option<String>,
    /// Environment for the agent; an entry without `value` inherits the worker's own. `-e` flags overlay it.
    pub environment: Option<Vec<EnvEntry>>,
    /// Time between SIGTERM to the agent's process group and SIGKILL when a task is stopped (e.g. "10s").
    pub stop_grace_period: Option<String>,
    /// Most time teardown_command may take (e.g. "60s").
    pub teardown_timeout: Option<String>,
    /// Run the agent, setup_command and teardown_command as this unprivileged
    /// user (a name or a numeric uid), as GitLab's shell executor's `user`;
    /// the workspace is given to it. Needs a worker running as root.
    pub user: Option<String>,
    /// CPU limit per task, as Docker's `--cpus` ("1.5"); needs cgroup v2.
    pub cpus: Option<String>,
    /// Memory limit per task, as Docker's `--memory` ("512m"); needs cgroup v2.
    pub memory: Option<String>,
    /// Memory plus swap per task, as Docker's `--memory-swap` ("1g", "-1" unlimited); needs `memory`.
    pub memory_swap: Option<String>,
    /// Most processes per task, as Docker's `--pids-limit` (-1: unlimited); needs cgroup v2.
    pub pids_limit: Option<i64>,
}

/// A task's resource limits, resolved (Docker's units; see
/// [`oz_runtime::resource_limits`]). All `None`: no limit, and no cgroup controller
/// is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Millionths of a CPU (`cpus` × 1,000,000).
    pub cpu_micros: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Swap alone in bytes (`memory_swap` − `memory`); `Some(None)`:
    /// unlimited; `None`: as much as `memory` (Docker's default).
    pub swap_bytes: Option<Option<u64>>,
    pub pids: Option<u64>,
}

impl Limits {
    /// The config keys that are set, for messages ("backend.direct.memory").
    pub fn keys(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        if self.cpu_micros.is_some() {
            k.push("backend.direct.cpus");
        }
        if self.memory_bytes.is_some() {
            k.push("backend.direct.memory");
        }
        if self.swap_bytes.is_some() {
            k.push("backend.direct.memory_swap");
        }
        if self.pids.is_some() {
            k.push("backend.direct.pids_limit");
        }
        k
    }

    fn resolve(section: &DirectSection) -> Result<Limits, InvalidSetting> {
        use oz_runtime::resource_limits as rl;
        let key = |name: &'static str| {
            move |e: rl::LimitError| {
                InvalidSetting::new(format!("backend.direct.{name}"), e.to_string())
            }
        };
        let cpu_micros = section
            .cpus
            .as_deref()
            .map(rl::parse_cpus)
            .transpose()
            .map_err(key("cpus"))?;
        // cgroup v2's cpu.max takes at least 1 ms of CPU time per 100 ms period.
        if cpu_micros.is_some_and(|m| m < 10_000) {
            return Err(InvalidSetting::new(
                "backend.direct.cpus",
                "at least 0.01 CPUs (as Docker's --cpus)",
            ));
        }
        let memory_bytes = section
            .memory
            .as_deref()
            .map(rl::parse_memory_bytes)
            .transpose()
            .map_err(key("memory"))?;
        // Docker's minimum: smaller limits kill the agent before it starts.
        if memory_bytes.is_some_and(|m| m < 6 << 20) {
            return Err(InvalidSetting::new(
                "backend.direct.memory",
                "at least 6m (Docker's minimum)",
            ));
        }
        let swap_bytes = match section.memory_swap.as_deref() {
            None => None,
            Some(s) => {
                let total = rl::parse_memory_swap(s).map_err(key("memory_swap"))?;
                let Some(memory) = memory_bytes else {
                    return Err(InvalidSetting::new(
                        "backend.direct.memory_swap",
                        "set backend.direct.memory too (memory_swap is memory plus swap, as Docker's --memory-swap)",
                    ));
                };
                match total {
                    None => Some(None),
                    Some(t) if t < memory => {
                        return Err(InvalidSetting::new(
                            "backend.direct.memory_swap",
                            format!("{s:?} is less than backend.direct.memory; it is memory plus swap, so at least the memory limit"),
                        ))
                    }
                    Some(t) => Some(Some(t - memory)),
                }
            }
        };
        let pids = section
            .pids_limit
            .map(rl::parse_pids_limit)
            .transpose()
            .map_err(key("pids_limit"))?
            .flatten();
        Ok(Limits {
            cpu_micros,
            memory_bytes,
            swap_bytes,
            pids,
        })
    }
}

/// The direct runtime's flags, as given.
#[derive(Debug, Clone, Default)]
pub struct DirectFlags {
    pub target_dir: Option<PathBuf>,
    pub stop_grace_period: Option<String>,
}

/// Everything the direct runtime needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub workspace_root: PathBuf,
    pub target_dir: Option<PathBuf>,
    /// Resolved to an absolute path at start-up.
    pub oz_path: PathBuf,
    pub setup_command: Option<String>,
    pub teardown_command: Option<String>,
    /// Config and `-e` entries, applied after the task's environment.
    pub env: Vec<(String, Secret)>,
    pub cleanup: bool,
    pub stop_grace_period: Duration,
    pub teardown_timeout: Duration,
    /// `user` as given (resolved to ids at start-up by the runtime).
    pub user: Option<String>,
    pub limits: Limits,
}

impl Settings {
    /// Flag > file > default. `oz_path` must resolve to an executable and
    /// `target_dir` must exist (the Go worker fails at start-up too).
    pub fn resolve(
        section: &DirectSection,
        flags: &DirectFlags,
        cleanup: bool,
        env: Vec<(String, Secret)>,
        path_var: Option<&str>,
    ) -> Result<Settings, SettingsError> {
        let duration =
            |flag: &Option<String>, key: &Option<String>, name: &str, default| match (flag, key) {
                (Some(d), _) => oz_foundation::duration::parse_duration(d).map_err(|e| {
                    InvalidSetting::new(format!("--{}", name.replace('_', "-")), e.to_string())
                }),
                (None, Some(d)) => oz_foundation::duration::parse_duration(d).map_err(|e| {
                    InvalidSetting::new(format!("backend.direct.{name}"), e.to_string())
                }),
                (None, None) => Ok(default),
            };
        let stop_grace_period = duration(
            &flags.stop_grace_period,
            &section.stop_grace_period,
            "stop_grace_period",
            DEFAULT_STOP_GRACE,
        )?;
        let teardown_timeout = duration(
            &None,
            &section.teardown_timeout,
            "teardown_timeout",
            DEFAULT_TEARDOWN_TIMEOUT,
        )?;
        let target_dir = flags.target_dir.clone().or(section.target_dir.clone());
        if let Some(dir) = &target_dir {
            if !dir.is_dir() {
                return Err(SettingsError::NoTargetDir(dir.clone()));
            }
        }
        let oz = section
            .oz_path
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_OZ_PATH.to_string());
        let oz_path = find_program(&oz, path_var).ok_or_else(|| SettingsError::NoAgentProgram {
            on_path: !oz.contains('/'),
            program: oz.clone(),
        })?;
        let blank = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        Ok(Settings {
            workspace_root: section
                .workspace_root
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKSPACE_ROOT)),
            target_dir,
            oz_path,
            setup_command: blank(&section.setup_command),
            teardown_command: blank(&section.teardown_command),
            env,
            cleanup,
            stop_grace_period,
            teardown_timeout,
            user: blank(&section.user).map(|u| u.trim().to_string()),
            limits: Limits::resolve(section)?,
        })
    }
}

/// Why the direct runtime's settings were refused; each message names the
/// flag or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value that does not parse or is out of range.
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    /// `--target-dir` / `backend.direct.target_dir` is not a folder.
    #[error("target directory {} does not exist or is not a folder; create it or fix --target-dir / backend.direct.target_dir", .0.display())]
    NoTargetDir(PathBuf),
    /// `backend.direct.oz_path` (default `oz`) is not an executable file
    /// (`on_path`: it was looked up on PATH).
    #[error(
        "the agent program {program:?} was not found{}; install the oz CLI or set backend.direct.oz_path to its full path",
        if *on_path { " on PATH" } else { "" }
    )]
    NoAgentProgram { program: String, on_path: bool },
}

/// `program` as a path (when it has a `/`) or looked up on `path_var`, as
/// `exec` would: the first executable regular file.
pub fn find_program(program: &str, path_var: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir().ok()?.join(p)
        };
        return executable(&p).then_some(p);
    }
    path_var?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oz_path_and_target_dir_are_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let oz = dir.path().join("oz");
        std::fs::write(&oz, "#!/bin/sh\n").unwrap();
        let path = dir.path().to_str().unwrap().to_string();
        let e = Settings::resolve(
            &Default::default(),
            &Default::default(),
            true,
            vec![],
            Some("/nonexistent"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"oz\"") && e.contains("on PATH"), "{e}");
        // Not executable yet.
        assert!(Settings::resolve(
            &Default::default(),
            &Default::default(),
            true,
            vec![],
            Some(&path)
        )
        .is_err());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&oz, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Settings::resolve(
            &Default::default(),
            &Default::default(),
            true,
            vec![],
            Some(&path),
        )
        .unwrap();
        assert_eq!(s.oz_path, oz);
        assert_eq!(s.workspace_root, PathBuf::from(DEFAULT_WORKSPACE_ROOT));
        let flags = DirectFlags {
            target_dir: Some(dir.path().join("missing")),
            ..Default::default()
        };
        let e =
            Settings::resolve(&Default::default(), &flags, true, vec![], Some(&path)).unwrap_err();
        assert!(matches!(e, SettingsError::NoTargetDir(_)), "{e}");
        assert!(e.to_string().contains("--target-dir"), "{e}");
    }

    #[test]
    fn limits_follow_dockers_units_and_name_the_key() {
        let section = |yaml: &str| -> DirectSection { serde_norway::from_str(yaml).unwrap() };
        let l = Limits::resolve(&section(
            "cpus: '1.5'\nmemory: 64m\nmemory_swap: 96m\npids_limit: 100\n",
        ))
        .unwrap();
        assert_eq!(
            l,
            Limits {
                cpu_micros: Some(1_500_000),
                memory_bytes: Some(64 << 20),
                swap_bytes: Some(Some(32 << 20)),
                pids: Some(100),
            }
        );
        assert_eq!(l.keys().len(), 4);
        let unlimited = Limits::resolve(&section("memory: 64m\nmemory_swap: '-1'\n")).unwrap();
        assert_eq!(unlimited.swap_bytes, Some(None));
        assert!(Limits::resolve(&section("pids_limit: -1\n"))
            .unwrap()
            .keys()
            .is_empty());
        for (yaml, key) in [
            ("cpus: lots\n", "backend.direct.cpus"),
            ("cpus: '0.001'\n", "backend.direct.cpus"),
            ("memory: 1q\n", "backend.direct.memory"),
            ("memory: 1k\n", "backend.direct.memory"),
            ("memory_swap: 1g\n", "backend.direct.memory_swap"),
            (
                "memory: 1g\nmemory_swap: 512m\n",
                "backend.direct.memory_swap",
            ),
            ("pids_limit: -5\n", "backend.direct.pids_limit"),
        ] {
            let e = Limits::resolve(&section(yaml)).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
        }
    }
}
