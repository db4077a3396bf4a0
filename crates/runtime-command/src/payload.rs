//! What `dispatch_command` reads on stdin: one JSON object, version 1, with
//! every key always present (the Go worker's `dispatch_payload.go`). Its
//! JSON schema is `api-specs/command-dispatch-payload.schema.json`.

use oz_foundation::secret::Secret;
use oz_protocol::Task;
use oz_runtime::Invocation;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;

/// The payload format's version; a dispatcher should refuse others.
pub const PAYLOAD_VERSION: u32 = 1;

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "oz-agent-worker command backend dispatch payload")]
pub struct DispatchPayload {
    /// Always 1 for this format.
    pub version: u32,
    /// The run (task) id; also in `OZ_RUN_ID`.
    pub run_id: String,
    /// The execution id ("" when the orchestrator sent none); also in `OZ_EXECUTION_ID`.
    pub execution_id: String,
    /// Where the agent reports (`--server-root-url`).
    pub server_root_url: String,
    pub worker_id: String,
    /// The task image: the assignment's, else ubuntu:22.04.
    pub docker_image: String,
    /// `agent run …` without a program: prepend the agent's (e.g. `oz` or `/agent/entrypoint.sh`).
    pub base_args: Vec<String>,
    /// The task environment (TASK_ID, GIT_TERMINAL_PROMPT, GH_PROMPT_DISABLED,
    /// WARP_SERVER_ROOT_URL and the run's env_vars). Values are secrets.
    pub env: BTreeMap<String, Secret>,
    /// The agent sidecar (at /agent) and the additional ones; null when none.
    /// Always present, like every other key.
    #[schemars(required, extend("type" = ["array", "null"]))]
    pub sidecars: Option<Vec<PayloadSidecar>>,
    /// The task as the orchestrator sent it.
    pub task: Task,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PayloadSidecar {
    pub image: String,
    pub mount_path: String,
    pub read_write: bool,
}

impl DispatchPayload {
    pub fn new(inv: &Invocation, docker_image: &str) -> DispatchPayload {
        DispatchPayload {
            version: PAYLOAD_VERSION,
            run_id: inv.task.task_id.clone(),
            execution_id: inv.task.execution_id.clone().unwrap_or_default(),
            server_root_url: inv.server_root_url.clone(),
            worker_id: inv.worker_id.clone(),
            docker_image: docker_image.to_string(),
            base_args: inv.base_args.clone(),
            env: inv.env.iter().cloned().collect(),
            sidecars: (!inv.sidecars.is_empty()).then(|| {
                inv.sidecars
                    .iter()
                    .map(|s| PayloadSidecar {
                        image: s.image.clone(),
                        mount_path: s.mount_path.clone(),
                        read_write: s.read_write,
                    })
                    .collect()
            }),
            task: inv.spec.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_runtime::{ResourceLimits, SidecarRequest, TaskRef};

    #[test]
    fn every_key_is_present_and_env_values_are_real() {
        let inv = Invocation {
            task: TaskRef {
                task_id: "run-1".into(),
                execution_id: None,
            },
            spec: Task {
                id: "run-1".into(),
                ..Default::default()
            },
            base_args: vec!["agent".into(), "run".into()],
            env: vec![("TOKEN".into(), Secret::new("s3cret"))],
            image: None,
            sidecars: vec![],
            limits: ResourceLimits::default(),
            server_root_url: "https://oz.example".into(),
            worker_id: "w".into(),
        };
        let v = serde_json::to_value(DispatchPayload::new(&inv, "ubuntu:22.04")).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "version",
            "run_id",
            "execution_id",
            "server_root_url",
            "worker_id",
            "docker_image",
            "base_args",
            "env",
            "sidecars",
            "task",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert_eq!(v["version"], 1);
        assert_eq!(v["execution_id"], "");
        assert!(v["sidecars"].is_null());
        assert_eq!(
            v["env"]["TOKEN"], "s3cret",
            "the dispatcher needs the values"
        );
        let mut inv = inv;
        inv.sidecars.push(SidecarRequest {
            image: "agent:1".into(),
            mount_path: "/agent".into(),
            read_write: false,
        });
        let v = serde_json::to_value(DispatchPayload::new(&inv, "x")).unwrap();
        assert_eq!(v["sidecars"][0]["mount_path"], "/agent");
    }
}
