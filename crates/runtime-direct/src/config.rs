//! The direct runtime's configuration: its section of the config file
//! (`backend.direct`, the Go worker's keys plus ours) and its flags.

use oz_foundation::operator_env::EnvEntry;
use oz_foundation::secret::Secret;
use oz_runtime::DEFAULT_STOP_GRACE;
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
    ) -> Result<Settings, String> {
        let duration =
            |flag: &Option<String>, key: &Option<String>, name: &str, default| match (flag, key) {
                (Some(d), _) => oz_foundation::duration::parse_duration(d)
                    .map_err(|e| format!("--{}: {e}", name.replace('_', "-"))),
                (None, Some(d)) => oz_foundation::duration::parse_duration(d)
                    .map_err(|e| format!("backend.direct.{name}: {e}")),
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
                return Err(format!(
                    "target directory {} does not exist or is not a folder; create it or fix --target-dir / backend.direct.target_dir",
                    dir.display()
                ));
            }
        }
        let oz = section
            .oz_path
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_OZ_PATH.to_string());
        let oz_path = find_program(&oz, path_var).ok_or_else(|| {
            format!(
                "the agent program {oz:?} was not found{}; install the oz CLI or set backend.direct.oz_path to its full path",
                if oz.contains('/') { "" } else { " on PATH" }
            )
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
        })
    }
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
        .unwrap_err();
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
        assert!(e.contains("--target-dir"), "{e}");
    }
}
