//! Turns an assignment plus the worker's configuration into the fully
//! resolved [`TaskSpec`] a runtime executes: image choice, sidecar mounts,
//! environment order and the agent's command line, as PROTOCOL.md's container
//! contract fixes them. Pure: no I/O, so every rule is unit-tested here.

use crate::protocol::{FailureReason, OwnerType, TaskAssignment};
use crate::runtime::{BindMount, ResourceLimits, SidecarMount, TaskSpec};
use crate::worker::config::WorkerConfig;

pub const DEFAULT_TASK_IMAGE: &str = "ubuntu:22.04";
pub const AGENT_MOUNT: &str = "/agent";
pub const AGENT_ENTRYPOINT: &str = "/agent/entrypoint.sh";
pub const WORKING_DIR: &str = "/workspace";

/// Why an assignment cannot run at all; becomes `task_failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAssignment {
    pub reason: FailureReason,
    pub message: String,
}

fn set(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub fn build(a: &TaskAssignment, config: &WorkerConfig) -> Result<TaskSpec, InvalidAssignment> {
    let invalid = |reason: FailureReason, message: String| InvalidAssignment { reason, message };
    let task_id = if a.task.id.trim().is_empty() {
        a.task_id.as_str()
    } else {
        a.task.id.as_str()
    };
    if task_id.trim().is_empty() {
        return Err(invalid(
            FailureReason::Unknown,
            "the assignment has no task id".into(),
        ));
    }

    let image = set(&a.docker_image)
        .unwrap_or(DEFAULT_TASK_IMAGE)
        .to_string();

    let agent_image = set(&a.sidecar_image).ok_or_else(|| {
        invalid(
            FailureReason::SidecarPrep,
            "the assignment names no agent sidecar image (sidecar_image is empty), so there is no agent to run".into(),
        )
    })?;
    let mut sidecars = vec![SidecarMount {
        image: agent_image.to_string(),
        mount_path: AGENT_MOUNT.into(),
        read_only: true,
    }];
    for (i, s) in a.additional_sidecars.iter().enumerate() {
        let n = i + 1;
        if s.image.trim().is_empty() {
            return Err(invalid(
                FailureReason::SidecarPrep,
                format!("additional sidecar #{n} has an empty image"),
            ));
        }
        let path = s.mount_path.trim();
        if path.is_empty() {
            return Err(invalid(
                FailureReason::SidecarPrep,
                format!(
                    "additional sidecar #{n} ({}) has an empty mount path",
                    s.image
                ),
            ));
        }
        if !path.starts_with('/') {
            return Err(invalid(
                FailureReason::SidecarPrep,
                format!(
                    "additional sidecar #{n} ({}) mount path {path:?} is not absolute",
                    s.image
                ),
            ));
        }
        if sidecars.iter().any(|m| m.mount_path == path) {
            return Err(invalid(
                FailureReason::SidecarPrep,
                format!(
                    "additional sidecar #{n} ({}) reuses mount path {path}, which is already taken",
                    s.image
                ),
            ));
        }
        sidecars.push(SidecarMount {
            image: s.image.clone(),
            mount_path: path.into(),
            read_only: !s.read_write,
        });
    }

    let mut env = EnvList::default();
    env.set("TASK_ID", task_id);
    env.set("GIT_TERMINAL_PROMPT", "0");
    env.set("GH_PROMPT_DISABLED", "1");
    env.set("WARP_SERVER_ROOT_URL", &config.server_root_url);
    for (k, v) in &a.env_vars {
        env.set(k, v.expose_str());
    }
    for (k, v) in &config.env {
        env.set(k, v.expose());
    }

    let limits = match &a.instance_shape {
        Some(shape) => ResourceLimits {
            cpus: shape.vcpus.filter(|v| *v > 0).map(|v| v as u32),
            memory_bytes: shape
                .memory_gb
                .filter(|v| *v > 0)
                .map(|gb| gb.saturating_mul(1 << 30)),
        },
        None => ResourceLimits::default(),
    };

    Ok(TaskSpec {
        task_id: a.task_id.clone(),
        execution_id: a.execution_id.clone(),
        image,
        sidecars,
        env: env.0,
        command: agent_command(a, task_id, config),
        working_dir: WORKING_DIR.into(),
        binds: config
            .volumes
            .iter()
            .map(|v| BindMount {
                source: v.host.clone(),
                target: v.container.clone(),
                read_only: v.read_only,
            })
            .collect(),
        limits,
    })
}

/// Ordered environment where a later entry replaces an earlier one with the
/// same name (moving it to the end), so operator entries override the
/// assignment's and the container never sees a name twice.
#[derive(Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, k: &str, v: &str) {
        self.0.retain(|(name, _)| name != k);
        self.0.push((k.to_string(), v.to_string()));
    }
}

fn agent_command(a: &TaskAssignment, task_id: &str, config: &WorkerConfig) -> Vec<String> {
    let mut argv: Vec<String> = vec![AGENT_ENTRYPOINT.into(), "agent".into(), "run".into()];
    let mut push = |args: &[&str]| argv.extend(args.iter().map(|s| s.to_string()));

    if a.task
        .owner
        .as_ref()
        .is_some_and(|o| o.kind == OwnerType::Team)
    {
        push(&["--share", "team:edit"]);
    }
    push(&[
        "--task-id",
        task_id,
        "--sandboxed",
        "--server-root-url",
        &config.server_root_url,
    ]);

    if let Some(snap) = &a.task.agent_config_snapshot {
        let harness = snap.harness.as_ref().and_then(|h| set(&h.kind));
        let oz_harness = harness.is_none_or(|h| h == "oz");
        if oz_harness {
            if let Some(model) = set(&snap.model_id) {
                push(&["--model", model]);
            }
        }
        if let Some(profile) = set(&snap.profile_id) {
            push(&["--profile", profile]);
        }
        if let Some(skill) = set(&snap.skill_spec) {
            push(&["--skill", skill]);
        }
        if let Some(mcp) = snap.mcp_servers.as_ref().filter(|m| !m.is_empty()) {
            let json = serde_json::to_string(mcp).expect("JSON values serialize");
            push(&["--mcp", &json]);
        }
        if snap.computer_use_enabled.unwrap_or(oz_harness) {
            push(&["--computer-use"]);
        } else {
            push(&["--no-computer-use"]);
        }
        if let Some(aws) = snap
            .inference_providers
            .as_ref()
            .and_then(|p| p.aws.as_ref())
        {
            if aws.disabled != Some(true) {
                if let Some(arn) = set(&aws.role_arn) {
                    push(&["--bedrock-inference-role", arn]);
                    if let Some(region) = set(&aws.region) {
                        push(&["--bedrock-role-region", region]);
                    }
                }
            }
        }
        if let Some(h) = harness {
            push(&["--harness", h]);
        }
        match snap
            .session_sharing
            .as_ref()
            .and_then(|s| set(&s.public_access))
        {
            Some("VIEWER") => push(&["--share", "public:view"]),
            Some("EDITOR") => push(&["--share", "public:edit"]),
            _ => {}
        }
        if snap.snapshot_disabled == Some(true) {
            push(&["--no-snapshot"]);
        }
        if let Some(s) = snap.snapshot_upload_timeout_secs.filter(|s| *s > 0) {
            push(&["--snapshot-upload-timeout", &format!("{s}s")]);
        }
        if let Some(s) = snap.snapshot_script_timeout_secs.filter(|s| *s > 0) {
            push(&["--snapshot-script-timeout", &format!("{s}s")]);
        }
        if let Some(env_id) = set(&snap.environment_id) {
            push(&["--environment", env_id]);
        }
    }
    argv.extend(a.additional_oz_args.iter().cloned());

    let task_idle = a
        .task
        .agent_config_snapshot
        .as_ref()
        .and_then(|s| s.idle_timeout_minutes)
        .filter(|m| *m > 0)
        .map(|m| format!("{m}m"));
    let worker_idle = set(&config.idle_on_complete).map(str::to_string);
    argv.push("--idle-on-complete".into());
    if let Some(v) = task_idle.or(worker_idle) {
        argv.push(v);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::worker::WorkerArgs;
    use crate::protocol::*;
    use crate::worker::config::WorkerConfig;
    use std::collections::HashMap;

    fn config(extra: impl FnOnce(&mut WorkerArgs)) -> WorkerConfig {
        let mut a = WorkerArgs {
            worker_id: Some("w1".into()),
            api_key: Some("k".into()),
            server_root_url: Some("https://oz.example".into()),
            ..Default::default()
        };
        extra(&mut a);
        WorkerConfig::resolve(&a, &HashMap::new()).unwrap()
    }

    fn assignment() -> TaskAssignment {
        TaskAssignment {
            task_id: "run-1".into(),
            task: Task {
                id: "run-1".into(),
                ..Default::default()
            },
            sidecar_image: Some("oz/agent:1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn minimal_assignment_gets_defaults() {
        let s = build(&assignment(), &config(|_| {})).unwrap();
        assert_eq!(s.image, "ubuntu:22.04");
        assert_eq!(s.working_dir, "/workspace");
        assert_eq!(
            s.sidecars,
            vec![SidecarMount {
                image: "oz/agent:1".into(),
                mount_path: "/agent".into(),
                read_only: true
            }]
        );
        assert_eq!(
            s.command,
            [
                "/agent/entrypoint.sh",
                "agent",
                "run",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                "https://oz.example",
                "--idle-on-complete"
            ]
        );
        let names: Vec<&str> = s.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "TASK_ID",
                "GIT_TERMINAL_PROMPT",
                "GH_PROMPT_DISABLED",
                "WARP_SERVER_ROOT_URL"
            ]
        );
    }

    #[test]
    fn full_snapshot_produces_every_flag_in_order() {
        let mut a = assignment();
        a.task.owner = Some(Owner {
            kind: OwnerType::Team,
            id: 3,
        });
        let mut mcp = serde_json::Map::new();
        mcp.insert("gh".into(), serde_json::json!({"command": "gh-mcp"}));
        a.task.agent_config_snapshot = Some(AgentConfigSnapshot {
            environment_id: Some("env-9".into()),
            model_id: Some("claude".into()),
            profile_id: Some("prof".into()),
            skill_spec: Some("skill-a".into()),
            mcp_servers: Some(mcp),
            computer_use_enabled: None,
            idle_timeout_minutes: Some(15),
            harness: Some(Harness {
                kind: Some("oz".into()),
            }),
            inference_providers: Some(InferenceProviders {
                aws: Some(AwsInference {
                    disabled: Some(false),
                    role_arn: Some("arn:r".into()),
                    region: Some("eu-west-1".into()),
                }),
            }),
            session_sharing: Some(SessionSharing {
                public_access: Some("EDITOR".into()),
            }),
            snapshot_disabled: Some(true),
            snapshot_upload_timeout_secs: Some(30),
            snapshot_script_timeout_secs: Some(40),
            ..Default::default()
        });
        a.additional_oz_args = vec!["--verbose".into()];
        let s = build(&a, &config(|c| c.idle_on_complete = Some("5m".into()))).unwrap();
        let expected = [
            "/agent/entrypoint.sh",
            "agent",
            "run",
            "--share",
            "team:edit",
            "--task-id",
            "run-1",
            "--sandboxed",
            "--server-root-url",
            "https://oz.example",
            "--model",
            "claude",
            "--profile",
            "prof",
            "--skill",
            "skill-a",
            "--mcp",
            r#"{"gh":{"command":"gh-mcp"}}"#,
            "--computer-use",
            "--bedrock-inference-role",
            "arn:r",
            "--bedrock-role-region",
            "eu-west-1",
            "--harness",
            "oz",
            "--share",
            "public:edit",
            "--no-snapshot",
            "--snapshot-upload-timeout",
            "30s",
            "--snapshot-script-timeout",
            "40s",
            "--environment",
            "env-9",
            "--verbose",
            "--idle-on-complete",
            "15m",
        ];
        assert_eq!(s.command, expected);
    }

    #[test]
    fn other_harness_drops_model_and_defaults_computer_use_off() {
        let mut a = assignment();
        a.task.agent_config_snapshot = Some(AgentConfigSnapshot {
            model_id: Some("m".into()),
            harness: Some(Harness {
                kind: Some("claude-code".into()),
            }),
            inference_providers: Some(InferenceProviders {
                aws: Some(AwsInference {
                    disabled: Some(true),
                    role_arn: Some("arn".into()),
                    region: None,
                }),
            }),
            session_sharing: Some(SessionSharing {
                public_access: Some("VIEWER".into()),
            }),
            profile_id: Some("  ".into()),
            ..Default::default()
        });
        let s = build(&a, &config(|c| c.idle_on_complete = Some("5m".into()))).unwrap();
        let tail: Vec<&str> = s.command[8..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--no-computer-use",
                "--harness",
                "claude-code",
                "--share",
                "public:view",
                "--idle-on-complete",
                "5m"
            ]
        );
    }

    #[test]
    fn operator_env_replaces_assignment_value() {
        let mut a = assignment();
        a.env_vars.insert("SHARED".into(), "from-task".into());
        a.env_vars.insert("ONLY_TASK".into(), "t".into());
        let s = build(&a, &config(|c| c.env = vec!["SHARED=from-operator".into()])).unwrap();
        let tail: Vec<(&str, &str)> = s.env[4..]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(tail, [("ONLY_TASK", "t"), ("SHARED", "from-operator")]);
    }

    #[test]
    fn bad_sidecars_fail_with_sidecar_prep() {
        let mut a = assignment();
        a.sidecar_image = Some(" ".into());
        assert_eq!(
            build(&a, &config(|_| {})).unwrap_err().reason,
            FailureReason::SidecarPrep
        );
        for (image, path, why) in [
            ("", "/x", "empty image"),
            ("i", "", "empty mount path"),
            ("i", "/agent", "already taken"),
        ] {
            let mut a = assignment();
            a.additional_sidecars = vec![SidecarSpec {
                image: image.into(),
                mount_path: path.into(),
                read_write: false,
            }];
            let e = build(&a, &config(|_| {})).unwrap_err();
            assert_eq!(e.reason, FailureReason::SidecarPrep);
            assert!(e.message.contains(why), "{}", e.message);
        }
    }

    #[test]
    fn instance_shape_sets_limits_and_ignores_non_positive() {
        let mut a = assignment();
        a.instance_shape = Some(InstanceShape {
            vcpus: Some(2),
            memory_gb: Some(0),
        });
        let s = build(&a, &config(|_| {})).unwrap();
        assert_eq!(
            s.limits,
            ResourceLimits {
                cpus: Some(2),
                memory_bytes: None
            }
        );
        a.instance_shape = Some(InstanceShape {
            vcpus: Some(-1),
            memory_gb: Some(3),
        });
        let s = build(&a, &config(|_| {})).unwrap();
        assert_eq!(
            s.limits,
            ResourceLimits {
                cpus: None,
                memory_bytes: Some(3 << 30)
            }
        );
    }
}
