//! What the Docker runtime makes of an [`Invocation`]: the task container's
//! image, sidecar mounts, environment, argv, working directory and binds, as
//! the container contract fixes them (docs/PROTOCOL.md, "The task
//! container"). Pure: every rule is unit-tested here.

use super::config::Settings;
use crate::resources::TaskResources;
use oz_foundation::secret::Secret;
use oz_protocol::FailureReason;
use oz_runtime::{Failure, Invocation, TaskRef, AGENT_SIDECAR_MOUNT, DEFAULT_TASK_IMAGE};

/// The agent's program inside the agent sidecar.
pub const AGENT_ENTRYPOINT: &str = "/agent/entrypoint.sh";
pub const WORKING_DIR: &str = "/workspace";

/// A sidecar image whose filesystem is mounted into the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarMount {
    pub image: String,
    /// Absolute and clean (no trailing `/`, no `.` or `..`).
    pub mount_path: String,
    pub read_only: bool,
}

/// The task container, fully resolved.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub task: TaskRef,
    pub image: String,
    /// The agent first.
    pub sidecars: Vec<SidecarMount>,
    /// In order, names unique. Values are secret.
    pub env: Vec<(String, Secret)>,
    /// argv of the agent process, `argv[0]` included.
    pub command: Vec<String>,
    pub working_dir: String,
    /// The operator's `-v` binds as `HostConfig.Binds` entries, options kept.
    pub binds: Vec<String>,
    /// The operator's limits with the assignment's `instance_shape` applied
    /// (see `resources`).
    pub resources: TaskResources,
}

/// Cleans an absolute container path as Go's `filepath.Clean` (which the
/// daemon applies to mount targets): `/tools/` and `/tools/./` are `/tools`.
/// `None` when the path is not absolute or is `/` itself.
pub fn clean_mount_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

pub fn build(inv: &Invocation, settings: &Settings) -> Result<ContainerSpec, Failure> {
    let prep = |m: String| Failure::new(FailureReason::SidecarPrep, m);
    if inv
        .sidecars
        .first()
        .is_none_or(|s| s.mount_path != AGENT_SIDECAR_MOUNT)
    {
        return Err(prep(
            "the assignment names no agent sidecar image (sidecar_image is empty), so there is no agent to run".into(),
        ));
    }
    let mut sidecars: Vec<SidecarMount> = Vec::with_capacity(inv.sidecars.len());
    for (i, s) in inv.sidecars.iter().enumerate() {
        let what = if i == 0 {
            "the agent sidecar".to_string()
        } else {
            format!("additional sidecar #{i}")
        };
        if s.image.trim().is_empty() {
            return Err(prep(format!("{what} has an empty image")));
        }
        let raw = s.mount_path.trim();
        if raw.is_empty() {
            return Err(prep(format!(
                "{what} ({}) has an empty mount path",
                s.image
            )));
        }
        let Some(path) = clean_mount_path(raw) else {
            return Err(prep(format!(
                "{what} ({}) mount path {raw:?} is not an absolute path below /",
                s.image
            )));
        };
        if let Some(taken) = sidecars.iter().find(|m| m.mount_path == path) {
            return Err(prep(format!(
                "{what} ({}) mount path {raw:?} is the same as {}'s ({}); each sidecar needs its own path",
                s.image, taken.image, taken.mount_path
            )));
        }
        sidecars.push(SidecarMount {
            image: s.image.trim().to_string(),
            mount_path: path,
            read_only: !s.read_write,
        });
    }

    // The task's entries, then the operator's; a later entry replaces an
    // earlier one of the same name (moving it to the end), so an operator
    // entry overrides the run's value and the container never sees a name
    // twice.
    let mut env: Vec<(String, Secret)> = inv.env.clone();
    for (k, v) in &settings.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }

    let image = inv
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_TASK_IMAGE.to_string());
    // Before anything is pulled or created (GitLab's allowed_images).
    let invalid = |m: String| Failure::new(FailureReason::InvalidImage, m);
    settings
        .allowed_images
        .check(&image, "the task image")
        .map_err(|e| invalid(e.to_string()))?;
    for s in &sidecars {
        settings
            .allowed_images
            .check(&s.image, "sidecar image")
            .map_err(|e| invalid(e.to_string()))?;
    }
    // Refused before anything is created; `container_create` is the phase
    // whose settings (the container's limits) the request is about.
    let resources = settings
        .limits
        .for_task(inv.limits)
        .map_err(|e| Failure::new(FailureReason::ContainerCreate, e.to_string()))?;

    let mut command = Vec::with_capacity(1 + inv.base_args.len());
    command.push(AGENT_ENTRYPOINT.to_string());
    command.extend(inv.base_args.iter().cloned());

    Ok(ContainerSpec {
        task: inv.task.clone(),
        image,
        sidecars,
        env,
        command,
        working_dir: WORKING_DIR.into(),
        binds: settings.volumes.iter().map(|v| v.bind()).collect(),
        resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_runtime::{ResourceLimits, SidecarRequest};

    fn invocation(sidecars: &[(&str, &str, bool)]) -> Invocation {
        Invocation {
            task: TaskRef {
                task_id: "t".into(),
                execution_id: None,
            },
            spec: Default::default(),
            base_args: vec!["agent".into(), "run".into()],
            env: vec![
                ("TASK_ID".into(), Secret::new("t")),
                ("SHARED".into(), Secret::new("from-task")),
                ("ONLY_TASK".into(), Secret::new("x")),
            ],
            image: None,
            sidecars: sidecars
                .iter()
                .map(|(i, p, rw)| SidecarRequest {
                    image: i.to_string(),
                    mount_path: p.to_string(),
                    read_write: *rw,
                })
                .collect(),
            limits: ResourceLimits::default(),
            server_root_url: "https://oz.example".into(),
            worker_id: "w".into(),
        }
    }

    #[test]
    fn the_contract() {
        let settings = Settings {
            env: vec![("SHARED".into(), Secret::new("from-operator"))],
            ..Default::default()
        };
        let s = build(&invocation(&[("agent:1", "/agent", false)]), &settings).unwrap();
        assert_eq!(s.image, "ubuntu:22.04");
        assert_eq!(s.command, ["/agent/entrypoint.sh", "agent", "run"]);
        assert_eq!(s.working_dir, "/workspace");
        assert_eq!(
            s.sidecars,
            [SidecarMount {
                image: "agent:1".into(),
                mount_path: "/agent".into(),
                read_only: true
            }]
        );
        let env: Vec<(&str, &str)> = s
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("TASK_ID", "t"),
                ("ONLY_TASK", "x"),
                ("SHARED", "from-operator")
            ]
        );
    }

    /// Mount targets compare as the daemon compares them (cleaned paths).
    #[test]
    fn bad_sidecars_fail_with_sidecar_prep() {
        type Sidecars<'a> = &'a [(&'a str, &'a str, bool)];
        let cases: &[(Sidecars, &str)] = &[
            (&[], "no agent sidecar"),
            (&[("tools:1", "/tools", false)], "no agent sidecar"),
            (
                &[("agent", "/agent", false), ("", "/x", false)],
                "empty image",
            ),
            (
                &[("agent", "/agent", false), ("i", " ", false)],
                "empty mount path",
            ),
            (
                &[("agent", "/agent", false), ("i", "tools", false)],
                "not an absolute path",
            ),
            (
                &[("agent", "/agent", false), ("i", "/", false)],
                "not an absolute path",
            ),
            (
                &[("agent", "/agent", false), ("i", "/agent/", false)],
                "same as",
            ),
            (
                &[
                    ("agent", "/agent", false),
                    ("a", "/tools", false),
                    ("b", "/tools/", true),
                ],
                "same as",
            ),
            (
                &[
                    ("agent", "/agent", false),
                    ("a", "/tools", false),
                    ("b", "/x/../tools/.", true),
                ],
                "same as",
            ),
        ];
        for (sidecars, why) in cases {
            let e = build(&invocation(sidecars), &Settings::default()).unwrap_err();
            assert_eq!(e.reason, FailureReason::SidecarPrep, "{sidecars:?}");
            assert!(e.message.contains(why), "{sidecars:?}: {}", e.message);
        }
        let ok = build(
            &invocation(&[("agent", "/agent", false), ("t", "/opt//tools/", true)]),
            &Settings::default(),
        )
        .unwrap();
        assert_eq!(ok.sidecars[1].mount_path, "/opt/tools");
        assert!(!ok.sidecars[1].read_only);
    }

    /// allowed_images covers the default task image and every sidecar;
    /// a shape above the maxima is refused; both before anything exists.
    #[test]
    fn image_policy_and_shape_are_judged_before_anything_is_made() {
        let settings = Settings {
            allowed_images: crate::image_policy::AllowedImages::resolve(&[
                "docker.io/library/ubuntu:*".into(),
                "docker.io/oz/agent:*".into(),
            ])
            .unwrap(),
            limits: crate::resources::Limits {
                memory: Some(1 << 30),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(build(&invocation(&[("oz/agent:1", "/agent", false)]), &settings).is_ok());
        let e = build(&invocation(&[("agent:1", "/agent", false)]), &settings).unwrap_err();
        assert_eq!(e.reason, FailureReason::InvalidImage);
        assert!(
            e.message.starts_with("sidecar image agent:1"),
            "{}",
            e.message
        );
        let mut inv = invocation(&[("oz/agent:1", "/agent", false)]);
        inv.image = Some("debian:12".into());
        let e = build(&inv, &settings).unwrap_err();
        assert_eq!(e.reason, FailureReason::InvalidImage);
        assert!(
            e.message.starts_with("the task image debian:12"),
            "{}",
            e.message
        );
        let mut inv = invocation(&[("oz/agent:1", "/agent", false)]);
        inv.limits.memory_bytes = Some(2 << 30);
        let e = build(&inv, &settings).unwrap_err();
        assert_eq!(e.reason, FailureReason::ContainerCreate);
        assert!(e.message.contains("at most 1 GiB"), "{}", e.message);
    }
}
