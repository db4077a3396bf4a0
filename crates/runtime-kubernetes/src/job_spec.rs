//! The Job that runs one task, in the Go worker's shape (BACKENDS.md §5):
//! the operator's `pod_template` with the worker's parts laid over it,
//! restartPolicy Never, backoffLimit 0, an init container per copied
//! sidecar and one for `setup_command`, the `task` container running the
//! agent, the `workspace` emptyDir, the instance shape as requests =
//! limits, the deadline and TTL, and teardown as a preStop hook. Pure: the
//! same request always gives the same Job, which is what lets a Job that
//! already exists be compared and adopted.

use crate::holder::{self, Holder};
use crate::names;
use crate::settings::Settings;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, ExecAction, ImageVolumeSource, Lifecycle,
    LifecycleHandler, PodSpec, PodTemplateSpec, ResourceRequirements, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Where the task's workspace emptyDir is mounted, and the agent's working
/// directory.
pub const WORKSPACE_PATH: &str = "/workspace";
/// The dotenv file `setup_command` may write; the task sources it.
pub const ENVIRONMENT_FILE: &str = "/workspace/.oz-env";
/// The name of the container that runs the agent, in the template too.
pub const TASK_CONTAINER: &str = "task";
/// The init container that runs `setup_command`.
pub const SETUP_CONTAINER: &str = "setup";
/// Where a copy init container sees the emptyDir it fills.
const COPY_TARGET: &str = "/target";

/// Sources the setup command's dotenv file with `set -a`, then hands over
/// to the agent sidecar's entrypoint with the agent's arguments ("$@": the
/// container's args after `oz-task` as `$0`).
const TASK_WRAPPER: &str = r#"if [ -f "$OZ_ENVIRONMENT_FILE" ]; then
  set -a
  . "$OZ_ENVIRONMENT_FILE"
  set +a
fi
exec /agent/entrypoint.sh "$@""#;

/// Copies the sidecar image's file system into the emptyDir at /target,
/// leaving out the kernel's and the runtime's own mounts and the target.
const SIDECAR_COPY: &str = "cd / && tar -cf - --exclude=./target --exclude=./proc --exclude=./sys \
--exclude=./dev --exclude=./.dockerenv --exclude=./run/secrets --exclude=./var/run/secrets . \
| tar --no-same-owner --no-same-permissions -C /target -xf -";

/// One image mounted into the task, after the runtime's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub image: String,
    pub mount_path: String,
    pub read_write: bool,
}

/// What one task's Job is made from. Its `Debug` names the environment
/// variables but never shows their values (task env values and the
/// operator's `-e` entries are secrets).
#[derive(Clone)]
pub struct TaskJobRequest {
    pub worker_id: String,
    pub task_id: String,
    pub execution_id: Option<String>,
    /// The task image: the assignment's, else `default_image`, else the
    /// Go worker's default.
    pub image: String,
    /// `agent run …`: the agent's arguments.
    pub base_args: Vec<String>,
    /// The task environment (`TASK_ID`, …, the assignment's `env_vars`),
    /// then the operator's `-e` entries; later entries win.
    pub env: Vec<(String, String)>,
    pub sidecars: Vec<Sidecar>,
    /// vCPUs of the instance shape, if any.
    pub cpus: Option<u32>,
    /// Memory of the instance shape in bytes, if any.
    pub memory_bytes: Option<i64>,
    /// The worker process creating the Job (see [`crate::holder`]).
    pub holder: Option<Holder>,
}

impl std::fmt::Debug for TaskJobRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("TaskJobRequest")
            .field("worker_id", &self.worker_id)
            .field("task_id", &self.task_id)
            .field("execution_id", &self.execution_id)
            .field("image", &self.image)
            .field("base_args", &self.base_args)
            .field("env (names; values redacted)", &env_names)
            .field("sidecars", &self.sidecars)
            .field("cpus", &self.cpus)
            .field("memory_bytes", &self.memory_bytes)
            .field("holder", &self.holder)
            .finish()
    }
}

/// Why a task's sidecars cannot be mounted: the task fails `sidecar_prep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarError(pub String);

impl std::fmt::Display for SidecarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SidecarError {}

/// The sidecars a task mounts: the requested ones with the agent sidecar's
/// image replaced by `sidecar_image`, then the harness's CLI sidecar from
/// `coding_cli_sidecars` replacing or adding the one at
/// `/mnt/<harness>-cli-sidecar` (the Go worker's order and rules).
pub fn task_sidecars(
    settings: &Settings,
    requested: &[Sidecar],
    harness: Option<&str>,
) -> Vec<Sidecar> {
    let mut sidecars: Vec<Sidecar> = requested
        .iter()
        .map(|s| match &settings.sidecar_image {
            Some(image) if s.mount_path == "/agent" => Sidecar {
                image: image.clone(),
                ..s.clone()
            },
            _ => s.clone(),
        })
        .collect();
    if let Some(harness) = harness.map(str::trim).filter(|h| !h.is_empty()) {
        if let Some(image) = settings.coding_cli_sidecars.get(harness) {
            let mount_path = format!("/mnt/{harness}-cli-sidecar");
            match sidecars.iter_mut().find(|s| s.mount_path == mount_path) {
                Some(existing) => existing.image = image.clone(),
                None => sidecars.push(Sidecar {
                    image: image.clone(),
                    mount_path,
                    read_write: false,
                }),
            }
        }
    }
    sidecars
}

/// Refuses sidecars Kubernetes could not mount, before anything is made.
pub fn check_sidecars(sidecars: &[Sidecar], image_volumes: bool) -> Result<(), SidecarError> {
    let mut seen = std::collections::BTreeSet::new();
    for s in sidecars {
        if s.image.trim().is_empty() {
            return Err(SidecarError(format!(
                "the sidecar for {} has no image",
                if s.mount_path.is_empty() {
                    "(no mount path)"
                } else {
                    &s.mount_path
                }
            )));
        }
        if s.mount_path.is_empty() {
            return Err(SidecarError(format!(
                "sidecar {} has no mount path",
                s.image
            )));
        }
        if s.mount_path == WORKSPACE_PATH {
            return Err(SidecarError(format!(
                "sidecar {} cannot be mounted at {WORKSPACE_PATH}: the task's workspace is there",
                s.image
            )));
        }
        if !seen.insert(s.mount_path.as_str()) {
            return Err(SidecarError(format!(
                "two sidecars are mounted at {} (the second is {})",
                s.mount_path, s.image
            )));
        }
        if image_volumes && s.read_write {
            return Err(SidecarError(format!(
                "sidecar {} asks for a read-write mount, but Kubernetes image volumes are read-only (use_image_volumes: true); turn use_image_volumes off to copy it instead",
                s.image
            )));
        }
    }
    Ok(())
}

/// The environment of the `setup` and `task` containers: the request's,
/// then the worker's fixed variables (which win).
pub fn container_env(request: &TaskJobRequest) -> Vec<EnvVar> {
    let fixed = [
        ("OZ_ENVIRONMENT_FILE", ENVIRONMENT_FILE.to_string()),
        ("OZ_WORKSPACE_ROOT", WORKSPACE_PATH.to_string()),
        ("OZ_WORKER_BACKEND", "kubernetes".to_string()),
        ("OZ_RUN_ID", request.task_id.clone()),
    ];
    let pairs = request
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .chain(fixed.iter().map(|(k, v)| (*k, v.clone())));
    merge_env(
        Vec::new(),
        pairs
            .map(|(name, value)| EnvVar {
                name: name.to_string(),
                value: Some(value),
                value_from: None,
            })
            .collect(),
    )
}

/// `base` with `overrides` laid over it by name: an overridden entry keeps
/// its place, new ones are appended in order.
fn merge_env(base: Vec<EnvVar>, overrides: Vec<EnvVar>) -> Vec<EnvVar> {
    let mut merged = base;
    for e in overrides {
        match merged.iter_mut().find(|m| m.name == e.name) {
            Some(slot) => *slot = e,
            None => merged.push(e),
        }
    }
    merged
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn root() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        ..Default::default()
    }
}

/// A memory quantity as Kubernetes would print it: whole GiB as `NGi`,
/// otherwise bytes.
fn memory_quantity(bytes: i64) -> Quantity {
    const GIB: i64 = 1 << 30;
    if bytes % GIB == 0 {
        Quantity(format!("{}Gi", bytes / GIB))
    } else {
        Quantity(bytes.to_string())
    }
}

/// The task's Job.
pub fn task_job(settings: &Settings, request: &TaskJobRequest) -> Job {
    let pull = settings.image_pull_policy.as_str().to_string();
    let env = container_env(request);
    let mut volumes = vec![Volume {
        name: "workspace".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: settings.workspace_size_limit.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![mount("workspace", WORKSPACE_PATH, false)];
    let mut init_containers = Vec::new();
    for (i, sidecar) in request.sidecars.iter().enumerate() {
        if settings.use_image_volumes {
            let name = format!("sidecar-{i}-image");
            volumes.push(Volume {
                name: name.clone(),
                image: Some(ImageVolumeSource {
                    reference: Some(sidecar.image.clone()),
                    pull_policy: Some(pull.clone()),
                }),
                ..Default::default()
            });
            mounts.push(mount(&name, &sidecar.mount_path, true));
        } else {
            let name = format!("sidecar-{i}-data");
            volumes.push(Volume {
                name: name.clone(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            init_containers.push(Container {
                name: format!("copy-sidecar-{i}"),
                image: Some(sidecar.image.clone()),
                image_pull_policy: Some(pull.clone()),
                command: Some(vec!["/bin/sh".into(), "-c".into(), SIDECAR_COPY.into()]),
                security_context: Some(root()),
                volume_mounts: Some(vec![mount(&name, COPY_TARGET, false)]),
                ..Default::default()
            });
            mounts.push(mount(&name, &sidecar.mount_path, !sidecar.read_write));
        }
    }
    if let Some(setup) = &settings.setup_command {
        init_containers.push(Container {
            name: SETUP_CONTAINER.into(),
            image: Some(request.image.clone()),
            image_pull_policy: Some(pull.clone()),
            command: Some(vec!["/bin/sh".into(), "-c".into(), setup.clone()]),
            working_dir: Some(WORKSPACE_PATH.into()),
            env: Some(env.clone()),
            volume_mounts: Some(mounts.clone()),
            ..Default::default()
        });
    }
    let mut task = Container {
        name: TASK_CONTAINER.into(),
        image: Some(request.image.clone()),
        image_pull_policy: Some(pull),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            TASK_WRAPPER.into(),
            "oz-task".into(),
        ]),
        args: Some(request.base_args.clone()),
        env: Some(env),
        working_dir: Some(WORKSPACE_PATH.into()),
        volume_mounts: Some(mounts),
        lifecycle: settings
            .teardown_command
            .as_ref()
            .map(|teardown| Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec!["/bin/sh".into(), "-c".into(), teardown.clone()]),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ..Default::default()
    };
    let mut shape = BTreeMap::new();
    if let Some(cpus) = request.cpus.filter(|&c| c > 0) {
        shape.insert("cpu".to_string(), Quantity(cpus.to_string()));
    }
    if let Some(bytes) = request.memory_bytes.filter(|&b| b > 0) {
        shape.insert("memory".to_string(), memory_quantity(bytes));
    }
    if !shape.is_empty() {
        task.resources = Some(ResourceRequirements {
            requests: Some(shape.clone()),
            limits: Some(shape),
            ..Default::default()
        });
    }

    let labels = names::task_labels(
        &settings.extra_labels,
        &request.worker_id,
        &request.task_id,
        request.execution_id.as_deref(),
    );
    let annotations =
        (!settings.extra_annotations.is_empty()).then(|| settings.extra_annotations.clone());
    Job {
        metadata: ObjectMeta {
            name: Some(names::job_name(
                &request.task_id,
                request.execution_id.as_deref(),
            )),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(job_annotations(settings, request)),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: settings.active_deadline_seconds,
            ttl_seconds_after_finished: settings.ttl_seconds_after_finished,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations,
                    ..Default::default()
                }),
                spec: Some(overlay_template(
                    settings.pod_template.clone().unwrap_or_default(),
                    init_containers,
                    volumes,
                    task,
                )),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The operator's template with the worker's parts: restartPolicy Never,
/// the worker's init containers before the template's, the worker's
/// volumes after, and the `task` container either laid over the
/// template's (image, command, args and working directory replaced, pull
/// policy kept if set, mounts appended, environment merged with the
/// worker's winning, resources merged per resource) or appended.
fn overlay_template(
    mut spec: PodSpec,
    init_containers: Vec<Container>,
    volumes: Vec<Volume>,
    task: Container,
) -> PodSpec {
    spec.restart_policy = Some("Never".into());
    let template_inits = spec.init_containers.take().unwrap_or_default();
    let inits: Vec<Container> = init_containers.into_iter().chain(template_inits).collect();
    spec.init_containers = (!inits.is_empty()).then_some(inits);
    let mut all_volumes = spec.volumes.take().unwrap_or_default();
    all_volumes.extend(volumes);
    spec.volumes = Some(all_volumes);
    match spec
        .containers
        .iter_mut()
        .find(|c| c.name == TASK_CONTAINER)
    {
        Some(c) => {
            c.image = task.image;
            if c.image_pull_policy.as_deref().unwrap_or("").is_empty() {
                c.image_pull_policy = task.image_pull_policy;
            }
            c.command = task.command;
            c.args = task.args;
            c.working_dir = task.working_dir;
            let mut mounts = c.volume_mounts.take().unwrap_or_default();
            mounts.extend(task.volume_mounts.unwrap_or_default());
            c.volume_mounts = Some(mounts);
            c.env = Some(merge_env(
                c.env.take().unwrap_or_default(),
                task.env.unwrap_or_default(),
            ));
            if task.lifecycle.is_some() {
                c.lifecycle = task.lifecycle;
            }
            if let Some(shape) = task.resources {
                let r = c.resources.get_or_insert_with(Default::default);
                for (target, source) in [
                    (&mut r.requests, shape.requests),
                    (&mut r.limits, shape.limits),
                ] {
                    if let Some(source) = source {
                        target.get_or_insert_with(BTreeMap::new).extend(source);
                    }
                }
            }
        }
        None => spec.containers.push(task),
    }
    spec
}

/// The preflight Job's own deadline, seconds: longer than the worker waits
/// for it (the Go worker's 15 s), so it never cuts a preflight short, but
/// it ends a preflight Job whose worker died before deleting it.
pub const PREFLIGHT_DEADLINE_SECONDS: i64 = 120;
/// How long a finished preflight Job left by a dead worker is kept, seconds.
pub const PREFLIGHT_TTL_SECONDS: i32 = 300;

/// The start-up preflight Job: proves the service account may create task
/// Jobs with what they need (a root init container to copy sidecars, or an
/// image volume), from the same template, with `preflight_resources`.
/// `nanos` makes the name unique (the Go worker uses the clock).
pub fn preflight_job(settings: &Settings, worker_id: &str, nanos: u128) -> Job {
    let pull = settings.image_pull_policy.as_str().to_string();
    let resources = Some(settings.preflight_resources.clone());
    let image = Some(settings.preflight_image.clone());
    let mut spec = settings.pod_template.clone().unwrap_or_default();
    spec.restart_policy = Some("Never".into());
    let main = |command: String, volume_mounts: Option<Vec<VolumeMount>>| Container {
        name: "main".into(),
        image: image.clone(),
        image_pull_policy: Some(pull.clone()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), command]),
        resources: resources.clone(),
        volume_mounts,
        ..Default::default()
    };
    if settings.use_image_volumes {
        spec.init_containers = None;
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "preflight-image".into(),
            image: Some(ImageVolumeSource {
                reference: image.clone(),
                pull_policy: Some(pull.clone()),
            }),
            ..Default::default()
        });
        spec.containers = vec![main(
            "test -d /preflight-image".into(),
            Some(vec![mount("preflight-image", "/preflight-image", true)]),
        )];
    } else {
        spec.init_containers = Some(vec![Container {
            name: "root-init-preflight".into(),
            image: image.clone(),
            image_pull_policy: Some(pull.clone()),
            command: Some(vec!["/bin/sh".into(), "-c".into(), "true".into()]),
            security_context: Some(root()),
            resources: resources.clone(),
            ..Default::default()
        }]);
        spec.containers = vec![main("true".into(), None)];
    }
    Job {
        metadata: ObjectMeta {
            name: Some(format!(
                "oz-preflight-{}-{nanos}",
                names::label_hash(worker_id)
            )),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([(
                names::WORKER_HASH_LABEL.to_string(),
                names::label_hash(worker_id),
            )])),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            // The worker deletes its preflight Job; these clean up after a
            // worker that died first (the Go worker's would stay for good).
            active_deadline_seconds: Some(PREFLIGHT_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(PREFLIGHT_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(spec),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The Job's annotations: the operator's `extra_annotations`, then the
/// exact ids and the holder (see [`crate::holder`]), which win: what a
/// worker whose journal was lost needs to take the Job over. The Pod keeps
/// the operator's annotations only.
pub fn job_annotations(settings: &Settings, request: &TaskJobRequest) -> BTreeMap<String, String> {
    let mut a = settings.extra_annotations.clone();
    a.insert(
        holder::WORKER_ID_ANNOTATION.into(),
        request.worker_id.clone(),
    );
    a.insert(holder::TASK_ID_ANNOTATION.into(), request.task_id.clone());
    match &request.execution_id {
        Some(e) => a.insert(holder::EXECUTION_ID_ANNOTATION.into(), e.clone()),
        None => a.remove(holder::EXECUTION_ID_ANNOTATION),
    };
    for key in holder::holder_annotations() {
        a.remove(key);
    }
    if let Some(h) = &request.holder {
        a.extend(h.annotations());
    }
    a
}

/// Whether an existing Job is this execution's: the same execution hash
/// and worker hash labels. Such a Job is adopted instead of failing on
/// "already exists" (the Go worker's #86).
pub fn is_same_execution(existing: &Job, wanted: &Job) -> bool {
    let label = |job: &Job, key: &str| {
        job.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key).cloned())
    };
    [
        names::EXECUTION_HASH_LABEL,
        names::WORKER_HASH_LABEL,
        names::TASK_HASH_LABEL,
    ]
    .iter()
    .all(|key| label(existing, key).is_some() && label(existing, key) == label(wanted, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{KubernetesSection, Settings};
    use oz_runtime::liveness::ProcessIdentity;

    fn settings(section: serde_json::Value) -> Settings {
        let section: KubernetesSection = serde_json::from_value(section).unwrap();
        Settings::resolve(&section, true, |_| Ok(std::time::Duration::from_secs(30))).unwrap()
    }

    fn request() -> TaskJobRequest {
        TaskJobRequest {
            worker_id: "w1".into(),
            task_id: "run-1".into(),
            execution_id: Some("exec-0001".into()),
            image: "oz-test/busybox:latest".into(),
            base_args: vec![
                "agent".into(),
                "run".into(),
                "--task-id".into(),
                "run-1".into(),
            ],
            env: vec![
                ("TASK_ID".into(), "run-1".into()),
                ("OZ_RUN_ID".into(), "forged".into()),
                ("A".into(), "task".into()),
                ("A".into(), "operator".into()),
            ],
            sidecars: vec![Sidecar {
                image: "oz-test/agent-sidecar:latest".into(),
                mount_path: "/agent".into(),
                read_write: false,
            }],
            cpus: Some(2),
            memory_bytes: Some(4 << 30),
            holder: None,
        }
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_job_has_the_go_workers_shape() {
        let job = task_job(
            &settings(
                serde_json::json!({"setup_command": "echo hi > /workspace/x", "teardown_command": "echo bye", "active_deadline_seconds": 3600}),
            ),
            &request(),
        );
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("oz-task-run-1-exec-xec-0001")
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(86400));
        let pod = pod(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let inits: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(inits, ["copy-sidecar-0", "setup"]);
        let task = &pod.containers[0];
        assert_eq!(task.name, "task");
        assert_eq!(task.command.as_ref().unwrap()[3], "oz-task");
        assert_eq!(task.args.as_ref().unwrap()[0], "agent");
        let env = env_of(task);
        assert_eq!(env["OZ_RUN_ID"], "run-1", "the worker's variables win");
        assert_eq!(env["A"], "operator", "later entries win");
        assert_eq!(env["OZ_WORKER_BACKEND"], "kubernetes");
        assert_eq!(env["OZ_ENVIRONMENT_FILE"], "/workspace/.oz-env");
        let r = task.resources.as_ref().unwrap();
        assert_eq!(r.requests, r.limits);
        assert_eq!(r.limits.as_ref().unwrap()["memory"], Quantity("4Gi".into()));
        assert_eq!(r.limits.as_ref().unwrap()["cpu"], Quantity("2".into()));
        let agent = task
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == "/agent")
            .unwrap();
        assert_eq!(agent.read_only, Some(true));
        assert!(task.lifecycle.as_ref().unwrap().pre_stop.is_some());
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels[names::EXECUTION_HASH_LABEL],
            names::label_hash("exec-0001")
        );
        assert_eq!(
            job.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref(),
            Some(labels)
        );
    }

    #[test]
    fn the_template_task_container_is_overlaid_not_replaced() {
        let s = settings(serde_json::json!({
            "pod_template": {
                "serviceAccountName": "oz-tasks",
                "initContainers": [{"name": "mine", "image": "x"}],
                "volumes": [{"name": "cache", "emptyDir": {}}],
                "containers": [
                    {"name": "task", "image": "ignored", "imagePullPolicy": "Always",
                     "env": [{"name": "A", "value": "template"}, {"name": "B", "value": "template"}],
                     "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                     "resources": {"limits": {"memory": "8Gi", "ephemeral-storage": "1Gi"}}},
                    {"name": "logger", "image": "y"}
                ]
            }
        }));
        let job = task_job(&s, &request());
        let pod = pod(&job);
        assert_eq!(pod.service_account_name.as_deref(), Some("oz-tasks"));
        let inits: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            inits,
            ["copy-sidecar-0", "mine"],
            "the worker's init containers go first"
        );
        let volumes: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["cache", "workspace", "sidecar-0-data"]);
        assert_eq!(pod.containers.len(), 2);
        let task = &pod.containers[0];
        assert_eq!(task.image.as_deref(), Some("oz-test/busybox:latest"));
        assert_eq!(
            task.image_pull_policy.as_deref(),
            Some("Always"),
            "a template's pull policy is kept"
        );
        let env = env_of(task);
        assert_eq!(
            (env["A"].as_str(), env["B"].as_str()),
            ("operator", "template")
        );
        let mounts: Vec<&str> = task
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/cache", "/workspace", "/agent"]);
        let limits = task.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(
            limits["memory"],
            Quantity("4Gi".into()),
            "the shape wins per resource"
        );
        assert_eq!(limits["ephemeral-storage"], Quantity("1Gi".into()));
    }

    #[test]
    fn image_volumes_mount_sidecars_read_only_without_copying() {
        let job = task_job(
            &settings(serde_json::json!({"use_image_volumes": true})),
            &request(),
        );
        let pod = pod(&job);
        assert!(pod.init_containers.is_none());
        let v = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "sidecar-0-image")
            .unwrap();
        assert_eq!(
            v.image.as_ref().unwrap().reference.as_deref(),
            Some("oz-test/agent-sidecar:latest")
        );
    }

    #[test]
    fn sidecars_are_checked_and_overridden_as_the_go_worker_does() {
        let s = settings(serde_json::json!({
            "sidecar_image": "mine/agent:1",
            "coding_cli_sidecars": {"claude": "mine/claude:2"}
        }));
        let got = task_sidecars(&s, &request().sidecars, Some(" claude "));
        assert_eq!(got[0].image, "mine/agent:1");
        assert_eq!(got[1].mount_path, "/mnt/claude-cli-sidecar");
        let twice = vec![got[0].clone(), got[0].clone()];
        assert!(check_sidecars(&twice, false)
            .unwrap_err()
            .0
            .contains("two sidecars"));
        let rw = vec![Sidecar {
            read_write: true,
            ..got[0].clone()
        }];
        assert!(check_sidecars(&rw, false).is_ok());
        assert!(check_sidecars(&rw, true)
            .unwrap_err()
            .0
            .contains("read-only"));
        let ws = vec![Sidecar {
            mount_path: "/workspace".into(),
            ..got[0].clone()
        }];
        assert!(check_sidecars(&ws, false).is_err());
    }

    #[test]
    fn a_job_of_the_same_execution_is_recognised() {
        let s = settings(serde_json::json!({}));
        let a = task_job(&s, &request());
        let mut other = request();
        other.execution_id = Some("exec-0002".into());
        assert!(is_same_execution(&a, &task_job(&s, &request())));
        assert!(!is_same_execution(&a, &task_job(&s, &other)));
    }

    #[test]
    fn preflight_uses_the_template_and_its_resources() {
        let s = settings(
            serde_json::json!({"pod_template": {"serviceAccountName": "sa", "containers": []}}),
        );
        let job = preflight_job(&s, "w1", 42);
        assert_eq!(
            job.metadata.name.as_deref(),
            Some(format!("oz-preflight-{}-42", names::label_hash("w1")).as_str())
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(
            spec.active_deadline_seconds,
            Some(PREFLIGHT_DEADLINE_SECONDS)
        );
        assert_eq!(spec.ttl_seconds_after_finished, Some(PREFLIGHT_TTL_SECONDS));
        let pod = pod(&job);
        assert_eq!(pod.service_account_name.as_deref(), Some("sa"));
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.security_context.as_ref().unwrap().run_as_user, Some(0));
        assert_eq!(
            pod.containers[0].resources,
            Some(s.preflight_resources.clone())
        );
    }

    #[test]
    fn the_job_carries_the_exact_ids_and_its_holder_as_annotations() {
        let s = settings(serde_json::json!({"extra_annotations": {
            "team": "infra",
            "dev.oz.task-id": "forged",
            "dev.oz.pid": "forged"
        }}));
        let mut r = request();
        // Ids that labels can only hold sanitised.
        r.task_id = "Run/1 ÄB".into();
        r.execution_id = Some("Exec:0001/x".into());
        r.holder = Some(Holder {
            process: ProcessIdentity {
                instance: "i1".into(),
                host: "machine/worker-7f9c".into(),
                boot: "boot".into(),
                pid: 1,
                pid_start: "4242".into(),
                beacon: "oz-agent-worker/abc".into(),
                net_namespace: "net:[1]".into(),
                pid_namespace: "pid:[2]".into(),
            },
            pod: Some("oz/worker-7f9c".into()),
            pod_uid: None,
        });
        let job = task_job(&s, &r);
        let a = job.metadata.annotations.as_ref().unwrap();
        assert_eq!(a["team"], "infra", "the operator's annotations stay");
        assert_eq!(a[holder::TASK_ID_ANNOTATION], "Run/1 ÄB", "ours win");
        assert_eq!(a[holder::EXECUTION_ID_ANNOTATION], "Exec:0001/x");
        assert_eq!(a[holder::WORKER_ID_ANNOTATION], "w1");
        assert_eq!(Holder::of(a), r.holder);
        // The Go worker's labels are unchanged beside them.
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[names::TASK_ID_LABEL], "run-1--b");
        assert_eq!(
            labels[names::TASK_HASH_LABEL],
            names::label_hash("Run/1 ÄB")
        );
        // The Pod gets the operator's annotations only.
        let pod_annotations = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(pod_annotations, &s.extra_annotations);
        // No holder, no execution id: no forged values survive.
        r.holder = None;
        r.execution_id = None;
        let a = job_annotations(&s, &r);
        assert!(!a.contains_key(oz_runtime::liveness::PID_KEY), "{a:?}");
        assert!(!a.contains_key(holder::EXECUTION_ID_ANNOTATION), "{a:?}");
    }

    #[test]
    fn debug_of_a_request_names_the_env_but_never_shows_a_value() {
        let mut r = request();
        r.env
            .push(("OZ_TEST_SECRET".into(), "hunter2-k8s-value".into()));
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2-k8s-value"), "{shown}");
        for value in ["forged", "operator"] {
            assert!(!shown.contains(value), "{value} shown: {shown}");
        }
        assert!(
            shown.contains("OZ_TEST_SECRET") && shown.contains("TASK_ID"),
            "{shown}"
        );
        assert!(
            shown.contains("run-1") && shown.contains("exec-0001"),
            "{shown}"
        );
        let pretty = format!("{r:#?}");
        assert!(!pretty.contains("hunter2-k8s-value"), "{pretty}");
    }
}
