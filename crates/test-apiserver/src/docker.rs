//! The kubelet's container runtime: the `docker` CLI against the test
//! dockerd (`DOCKER_HOST` from the server's config). Every container and
//! volume carries this server instance's label, so a restarted server finds
//! its own and a test can remove them all.

use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

/// Labels on what the kubelet creates.
pub const LABEL_INSTANCE: &str = "io.oz-test-apiserver.instance";
pub const LABEL_POD_UID: &str = "io.oz-test-apiserver.pod-uid";
pub const LABEL_CONTAINER: &str = "io.oz-test-apiserver.container";

/// The docker CLI bound to one daemon.
#[derive(Debug, Clone)]
pub struct Docker {
    pub host: String,
    pub instance: String,
}

/// A container to create, in Kubernetes' terms already mapped to Docker's.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub pod_uid: String,
    pub container: String,
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub mounts: Vec<Mount>,
    pub memory_bytes: Option<u64>,
    pub nano_cpus: Option<u64>,
    pub user: Option<String>,
}

/// Where a mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A Docker volume (an emptyDir).
    Volume(String),
    /// An image's file system (an image volume), read-only: Docker's
    /// `type=image` mount (Docker Engine 28.0, API 1.48).
    Image(String),
    /// A directory of the host (a hostPath volume).
    Bind(String),
}

/// One mount of a container.
#[derive(Debug, Clone)]
pub struct Mount {
    pub source: MountSource,
    pub target: String,
    pub read_only: bool,
}

/// The first Engine API version with `type=image` mounts (Docker 28.0's
/// release notes: "Add support for mounting an image inside a container").
pub const IMAGE_MOUNT_API: (u32, u32) = (1, 48);

/// What `docker inspect` says of a container's state.
#[derive(Debug, Clone)]
pub struct InspectedContainer {
    pub id: String,
    pub running: bool,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// `HostConfig.Memory`: the memory limit in bytes, 0 for none.
    pub memory_limit: i64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub image_id: String,
}

impl Docker {
    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.host)
            .kill_on_drop(true)
            .stdin(Stdio::null());
        c
    }

    async fn run(&self, args: &[&str]) -> Result<String, CliError> {
        let out = self
            .cmd()
            .args(args)
            .output()
            .await
            .map_err(|source| CliError::Spawn {
                command: args[0].to_owned(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(CliError::Failed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    /// Whether the daemon mounts images (`type=image`): its API version is
    /// at least [`IMAGE_MOUNT_API`].
    pub async fn mounts_images(&self) -> bool {
        let Ok(v) = self
            .run(&["version", "--format", "{{.Server.APIVersion}}"])
            .await
        else {
            return false;
        };
        let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        version >= IMAGE_MOUNT_API
    }

    /// The image's ID when the daemon has it.
    pub async fn image_id(&self, image: &str) -> Option<String> {
        self.run(&["image", "inspect", "--format", "{{.Id}}", image])
            .await
            .ok()
    }

    /// Pulls an image, only from a registry on this machine's loopback: a
    /// name without such a registry host fails as an unreachable registry
    /// would (tests never reach beyond loopback).
    pub async fn pull(&self, image: &str) -> Result<(), CliError> {
        let first = image.split('/').next().unwrap_or("");
        let has_registry = image.contains('/')
            && (first.contains(':') || first.contains('.') || first == "localhost");
        let loopback = has_registry
            && (first.starts_with("127.")
                || first.starts_with("localhost")
                || first.starts_with("[::1]"));
        if !loopback {
            return Err(CliError::PullRefused(image.to_owned()));
        }
        self.run(&["pull", "--quiet", image]).await.map(|_| ())
    }

    /// Creates the container; returns its ID.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, CliError> {
        let mut args: Vec<String> = vec!["create".into(), "--name".into(), spec.name.clone()];
        for (k, v) in [
            (LABEL_INSTANCE, &self.instance),
            (LABEL_POD_UID, &spec.pod_uid),
            (LABEL_CONTAINER, &spec.container),
        ] {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        if let Some(e) = &spec.entrypoint {
            args.push("--entrypoint".into());
            args.push(e.clone());
        }
        for (k, v) in &spec.env {
            args.push("--env".into());
            args.push(format!("{k}={v}"));
        }
        if let Some(w) = &spec.workdir {
            args.push("--workdir".into());
            args.push(w.clone());
        }
        if let Some(u) = &spec.user {
            args.push("--user".into());
            args.push(u.clone());
        }
        for m in &spec.mounts {
            let (kind, source) = match &m.source {
                MountSource::Volume(v) => ("volume", v),
                MountSource::Image(i) => ("image", i),
                MountSource::Bind(b) => ("bind", b),
            };
            args.push("--mount".into());
            args.push(format!(
                "type={kind},source={source},target={}{}",
                m.target,
                if m.read_only { ",readonly" } else { "" }
            ));
        }
        if let Some(m) = spec.memory_bytes {
            // Swap equal to memory: the limit is a real one, so an
            // allocation past it is an OOM kill, as under the kubelet.
            args.push("--memory".into());
            args.push(m.to_string());
            args.push("--memory-swap".into());
            args.push(m.to_string());
        }
        if let Some(n) = spec.nano_cpus {
            args.push("--cpus".into());
            args.push(format!("{:.3}", n as f64 / 1e9));
        }
        args.push(spec.image.clone());
        args.extend(spec.args.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&refs).await
    }

    pub async fn start(&self, id: &str) -> Result<(), CliError> {
        self.run(&["start", id]).await.map(|_| ())
    }

    /// Waits for the container to exit.
    pub async fn wait(&self, id: &str) -> Result<(), CliError> {
        self.run(&["wait", id]).await.map(|_| ())
    }

    pub async fn inspect(&self, id: &str) -> Result<InspectedContainer, CliError> {
        let text = self.run(&["inspect", "--type", "container", id]).await?;
        let v: Value = serde_json::from_str(&text).map_err(CliError::Inspect)?;
        let c = &v[0];
        let time = |f: &str| {
            c["State"][f]
                .as_str()
                .filter(|t| !t.starts_with("0001"))
                .and_then(crate::meta::parse_time)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        };
        Ok(InspectedContainer {
            id: c["Id"].as_str().unwrap_or("").to_string(),
            running: c["State"]["Running"].as_bool().unwrap_or(false),
            exit_code: c["State"]["ExitCode"].as_i64().unwrap_or(0),
            oom_killed: c["State"]["OOMKilled"].as_bool().unwrap_or(false),
            memory_limit: c["HostConfig"]["Memory"].as_i64().unwrap_or(0),
            started_at: time("StartedAt"),
            finished_at: time("FinishedAt"),
            image_id: c["Image"].as_str().unwrap_or("").to_string(),
        })
    }

    /// This instance's container for (pod uid, container name), if any.
    /// Whether the daemon has logged an `oom` event for the container up
    /// to now. dockerd 20.10 sets `State.OOMKilled` only when containerd's
    /// OOM event reaches it before the exit event; when the two cross (a
    /// loaded machine), the flag stays false for good but the `oom` event
    /// is still logged.
    pub async fn oom_event_logged(&self, id: &str) -> bool {
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .unwrap_or_default();
        let container = format!("container={id}");
        self.run(&[
            "events",
            "--since",
            "0",
            "--until",
            &until,
            "--filter",
            &container,
            "--filter",
            "event=oom",
            "--format",
            "{{.Status}}",
        ])
        .await
        .is_ok_and(|out| out.lines().any(|l| l.trim() == "oom"))
    }

    pub async fn find(&self, pod_uid: &str, container: &str) -> Option<String> {
        let out = self
            .run(&[
                "ps",
                "-a",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label={LABEL_INSTANCE}={}", self.instance),
                "--filter",
                &format!("label={LABEL_POD_UID}={pod_uid}"),
                "--filter",
                &format!("label={LABEL_CONTAINER}={container}"),
            ])
            .await
            .ok()?;
        out.lines().next().map(str::to_string)
    }

    /// `docker stop -t GRACE`: SIGTERM, then SIGKILL after the grace period.
    pub async fn stop(&self, id: &str, grace_seconds: i64) -> Result<(), CliError> {
        self.run(&["stop", "-t", &grace_seconds.max(0).to_string(), id])
            .await
            .map(|_| ())
    }

    /// Runs a command in the container (exec hooks); its exit status.
    pub async fn exec(&self, id: &str, command: &[String]) -> Result<i32, CliError> {
        let mut c = self.cmd();
        c.arg("exec")
            .arg(id)
            .args(command)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = c.status().await.map_err(CliError::Exec)?;
        Ok(status.code().unwrap_or(-1))
    }

    pub async fn remove(&self, id: &str) {
        let _ = self.run(&["rm", "-f", "-v", id]).await;
    }

    pub async fn volume_create(&self, name: &str, pod_uid: &str) -> Result<(), CliError> {
        self.run(&[
            "volume",
            "create",
            "--label",
            &format!("{LABEL_INSTANCE}={}", self.instance),
            "--label",
            &format!("{LABEL_POD_UID}={pod_uid}"),
            name,
        ])
        .await
        .map(|_| ())
    }

    pub async fn volume_remove(&self, name: &str) {
        let _ = self.run(&["volume", "rm", "-f", name]).await;
    }

    /// `docker logs` as a child process with stdout and stderr piped.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        timestamps: bool,
        tail: Option<i64>,
        since: Option<&str>,
    ) -> std::io::Result<tokio::process::Child> {
        let mut c = self.cmd();
        c.arg("logs");
        if follow {
            c.arg("--follow");
        }
        if timestamps {
            c.arg("--timestamps");
        }
        if let Some(n) = tail {
            c.arg("--tail").arg(n.to_string());
        }
        if let Some(s) = since {
            c.arg("--since").arg(s);
        }
        c.arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }
}

/// Why a `docker` CLI call of the fake kubelet failed; the text becomes the
/// container's waiting or terminated message, as a kubelet's would.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The CLI could not be run at all.
    #[error("docker {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The CLI exited non-zero: its stderr, trimmed.
    #[error("{0}")]
    Failed(String),
    /// An image from a non-loopback registry that the test dockerd lacks
    /// (worded as containerd's pull failure).
    #[error("rpc error: code = Unknown desc = failed to pull and unpack image {0:?}: the test API server pulls only from registries on loopback, and the image is not on the test dockerd")]
    PullRefused(String),
    /// `docker inspect` printed something that is not JSON.
    #[error("{0}")]
    Inspect(#[source] serde_json::Error),
    /// `docker exec` could not be run.
    #[error("{0}")]
    Exec(#[source] std::io::Error),
}
