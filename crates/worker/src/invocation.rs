//! Turns an assignment plus the core's configuration into the
//! [`Invocation`] a runtime executes: the agent's base arguments and the
//! task environment, in the order the Go worker builds them
//! (`internal/common/task_utils.go`), and the assignment's image, sidecars
//! and shape as requested. Pure: no I/O, so every rule is unit-tested here.

use crate::config::WorkerConfig;
use oz_foundation::secret::Secret;
use oz_protocol::{FailureReason, OwnerType, TaskAssignment};
use oz_runtime::{
    Failure, Invocation, ResourceLimits, SidecarRequest, TaskRef, AGENT_SIDECAR_MOUNT,
};

fn set(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Whether `name` is a portable environment variable name (POSIX.1-2017
/// §8.1: letters, digits and `_`, not starting with a digit). Anything else
/// (`OP_SECRET=shadow`, a blank, a NUL) could shadow or forge another
/// entry of the `NAME=value` strings a program receives.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The invocation for one assignment. Fails when the assignment has no
/// task id at all, or names an environment variable that is not a POSIX
/// name ([`valid_env_name`]): reason `unknown`, the reason this worker (and
/// the Go worker) gives a malformed assignment; the reference list has no
/// `invalid_environment`, and a reason the hosted service does not know
/// would be worse than a known, general one. The message names the
/// variable, never its value. What a runtime cannot run is the runtime's
/// to refuse.
pub fn build(a: &TaskAssignment, config: &WorkerConfig) -> Result<Invocation, Failure> {
    let task_id = if a.task.id.trim().is_empty() {
        a.task_id.as_str()
    } else {
        a.task.id.as_str()
    };
    if task_id.trim().is_empty() {
        return Err(Failure::new(
            FailureReason::Unknown,
            "the assignment has no task id",
        ));
    }

    if let Some((bad, _)) = a.env_vars.iter().find(|(k, _)| !valid_env_name(k)) {
        return Err(Failure::new(
            FailureReason::Unknown,
            format!(
                "the task's environment names a variable {:?}, which is not a valid name (letters, digits and '_', not starting with a digit); nothing was run",
                oz_foundation::escape::escape_control(bad)
            ),
        ));
    }

    let mut sidecars = Vec::with_capacity(1 + a.additional_sidecars.len());
    if let Some(agent) = set(&a.sidecar_image) {
        sidecars.push(SidecarRequest {
            image: agent.to_string(),
            mount_path: AGENT_SIDECAR_MOUNT.into(),
            read_write: false,
        });
    }
    sidecars.extend(a.additional_sidecars.iter().map(|s| SidecarRequest {
        image: s.image.trim().to_string(),
        mount_path: s.mount_path.trim().to_string(),
        read_write: s.read_write,
    }));

    let mut env = EnvList::default();
    env.set("TASK_ID", task_id);
    env.set("GIT_TERMINAL_PROMPT", "0");
    env.set("GH_PROMPT_DISABLED", "1");
    env.set("WARP_SERVER_ROOT_URL", &config.server_root_url);
    for (k, v) in &a.env_vars {
        env.set(k, v.expose_str());
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

    Ok(Invocation {
        task: TaskRef {
            task_id: a.task_id.clone(),
            execution_id: a.execution_id.clone(),
        },
        spec: a.task.clone(),
        base_args: base_args(a, task_id, config),
        env: env.0,
        image: set(&a.docker_image).map(str::to_string),
        sidecars,
        limits,
        server_root_url: config.server_root_url.clone(),
        worker_id: config.worker_id.clone(),
    })
}

/// Ordered environment where a later entry replaces an earlier one with the
/// same name (moving it to the end), so the task never sees a name twice.
#[derive(Default)]
struct EnvList(Vec<(String, Secret)>);

impl EnvList {
    fn set(&mut self, k: &str, v: &str) {
        self.0.retain(|(name, _)| name != k);
        self.0.push((k.to_string(), Secret::new(v)));
    }
}

/// `agent run …`, without a program: the Go worker's `BaseArgs`.
fn base_args(a: &TaskAssignment, task_id: &str, config: &WorkerConfig) -> Vec<String> {
    let mut argv: Vec<String> = vec!["agent".into(), "run".into()];
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
    if let Some(url) = &config.session_sharing_server_url {
        argv.push("--session-sharing-server-url".into());
        argv.push(url.clone());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CoreInputs, WorkerConfig};
    use oz_protocol::*;
    use std::collections::HashMap;

    fn config(extra: impl FnOnce(&mut CoreInputs)) -> WorkerConfig {
        let mut i = CoreInputs {
            flag_worker_id: Some("w1".into()),
            flag_api_key: Some(Secret::new("k")),
            flag_server_root_url: Some("https://oz.example".into()),
            ..Default::default()
        };
        extra(&mut i);
        WorkerConfig::resolve(&i, &HashMap::new()).unwrap()
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
        assert_eq!(s.image, None, "the runtime picks its default");
        assert_eq!(
            s.sidecars,
            vec![SidecarRequest {
                image: "oz/agent:1".into(),
                mount_path: "/agent".into(),
                read_write: false
            }]
        );
        assert_eq!(
            s.base_args,
            [
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
        let s = build(
            &a,
            &config(|c| {
                c.flag_idle_on_complete = Some("5m".into());
                c.flag_session_sharing_server_url = Some("https://share.example".into());
            }),
        )
        .unwrap();
        let expected = [
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
            "--session-sharing-server-url",
            "https://share.example",
        ];
        assert_eq!(s.base_args, expected);
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
        let s = build(&a, &config(|c| c.flag_idle_on_complete = Some("5m".into()))).unwrap();
        let tail: Vec<&str> = s.base_args[7..].iter().map(String::as_str).collect();
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
    fn assignment_env_follows_the_fixed_entries_and_replaces_them_by_name() {
        let mut a = assignment();
        a.env_vars.insert("ONLY_TASK".into(), "t".into());
        a.env_vars.insert("GIT_TERMINAL_PROMPT".into(), "1".into());
        let s = build(&a, &config(|_| {})).unwrap();
        let got: Vec<(&str, &str)> = s.env_exposed().collect();
        assert_eq!(
            got,
            [
                ("TASK_ID", "run-1"),
                ("GH_PROMPT_DISABLED", "1"),
                ("WARP_SERVER_ROOT_URL", "https://oz.example"),
                ("GIT_TERMINAL_PROMPT", "1"),
                ("ONLY_TASK", "t"),
            ]
        );
        assert!(!format!("{s:?}").contains("\"t\""), "values never in Debug");
    }

    #[test]
    fn environment_names_must_be_posix_names() {
        for (name, ok) in [
            ("A", true),
            ("_x9", true),
            ("OP_SECRET", true),
            ("OP_SECRET=shadow", false),
            ("9LIVES", false),
            ("", false),
            ("A B", false),
            ("A\0B", false),
            ("A-B", false),
            ("É", false),
        ] {
            assert_eq!(valid_env_name(name), ok, "{name:?}");
        }
        let mut a = assignment();
        a.env_vars.insert("FINE".into(), "1".into());
        a.env_vars
            .insert("OP_SECRET=shadow".into(), "from-task-value".into());
        let f = build(&a, &config(|_| {})).unwrap_err();
        assert_eq!(f.reason, FailureReason::Unknown);
        assert!(f.message.contains("OP_SECRET=shadow"), "{}", f.message);
        assert!(!f.message.contains("from-task-value"), "{}", f.message);
    }

    #[test]
    fn sidecars_are_passed_on_as_requested_with_the_agent_first() {
        let mut a = assignment();
        a.sidecar_image = Some(" ".into());
        a.additional_sidecars = vec![SidecarSpec {
            image: " tools:1 ".into(),
            mount_path: "/tools/".into(),
            read_write: true,
        }];
        let s = build(&a, &config(|_| {})).unwrap();
        assert_eq!(
            s.sidecars,
            vec![SidecarRequest {
                image: "tools:1".into(),
                mount_path: "/tools/".into(),
                read_write: true
            }],
            "a blank agent image is left out; validation is the runtime's"
        );
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
