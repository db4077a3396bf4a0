//! The scheduler and the kubelet of one node: each Pod is bound to the node
//! (`Scheduled`), its emptyDir volumes become Docker volumes shared by its
//! containers, its init containers run one after another and then its
//! containers, as real containers on the test dockerd; the Pod's status
//! (phase, conditions, init/containerStatuses with waiting/running/terminated
//! states) and Events follow what the kubelet reports. Deletion runs preStop
//! exec hooks and stops containers with the grace period (SIGTERM, then
//! SIGKILL); eviction (admin hook) fails the Pod with reason Evicted.
//!
//! Volumes: emptyDir (a Docker volume), hostPath (a bind mount, with the
//! type checks) and, with the ImageVolume gate on, image volumes as
//! Docker's read-only `type=image` mounts when the dockerd has them
//! (Docker 28 or later; an older one gives the Pod's containers
//! CreateContainerConfigError and a Failed event).
//!
//! Not done here (see the README): probes, restarts (restartPolicy Always/
//! OnFailure restart nothing), Secrets/ConfigMaps (there are none to read,
//! so a reference is the kubelet's CreateContainerConfigError or
//! FailedMount).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::docker::{ContainerSpec, Docker, Mount, MountSource};
use crate::meta::{self, Resource};
use crate::recorder::{self, Source};
use crate::store::Shared;

/// Runs the kubelet until the process ends: one worker per Pod.
pub async fn run(shared: Arc<Shared>, docker: Docker) {
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let notified = shared.changed.notified();
        let pods = shared.read(|s| s.list(Resource::Pods, None));
        for pod in pods {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if !running.lock().unwrap().insert(uid.clone()) {
                continue;
            }
            let (shared, docker, running) = (shared.clone(), docker.clone(), running.clone());
            tokio::spawn(async move {
                let ns = pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
                let worker = PodWorker {
                    shared,
                    docker,
                    ns,
                    name,
                    uid: uid.clone(),
                };
                worker.run().await;
                running.lock().unwrap().remove(&uid);
            });
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

struct PodWorker {
    shared: Arc<Shared>,
    docker: Docker,
    ns: String,
    name: String,
    uid: String,
}

/// How a Pod's life ends for the kubelet.
enum Stop {
    Deleted,
    Evicted,
    Gone,
}

fn field_path(init: bool, name: &str) -> String {
    format!(
        "spec.{}{{{name}}}",
        if init { "initContainers" } else { "containers" }
    )
}

fn terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

impl PodWorker {
    fn pod(&self) -> Option<Value> {
        self.shared
            .read(|s| s.get(Resource::Pods, &self.ns, &self.name).cloned())
            .filter(|p| p["metadata"]["uid"] == self.uid.as_str())
    }

    fn update(&self, f: impl FnOnce(&mut Value)) {
        let uid = self.uid.clone();
        self.shared.with(|s| {
            if s.get(Resource::Pods, &self.ns, &self.name)
                .is_some_and(|p| p["metadata"]["uid"] == uid.as_str())
            {
                s.update(Resource::Pods, &self.ns, &self.name, f);
            }
        });
    }

    fn event(&self, container: Option<(bool, &str)>, warning: bool, reason: &str, message: &str) {
        if let Some(pod) = self.pod() {
            let fp = container.map(|(init, n)| field_path(init, n));
            recorder::record(
                &self.shared,
                &pod,
                fp.as_deref(),
                warning,
                reason,
                message,
                Source::Kubelet,
            );
        }
    }

    /// Sets one container's status entry (by name) under
    /// `initContainerStatuses` or `containerStatuses`.
    fn set_status(&self, init: bool, name: &str, f: impl FnOnce(&mut Value)) {
        let list = if init {
            "initContainerStatuses"
        } else {
            "containerStatuses"
        };
        self.update(|p| {
            if let Some(entry) = p
                .pointer_mut(&format!("/status/{list}"))
                .and_then(Value::as_array_mut)
                .and_then(|l| l.iter_mut().find(|c| c["name"] == name))
            {
                f(entry);
            }
        });
    }

    async fn run(self) {
        let Some(pod) = self.pod() else { return };
        if pod["spec"]["nodeName"].is_null() {
            if let Some(message) = unschedulable(&pod, &self.shared.config.node_name) {
                self.unschedulable(&pod, &message);
                let stop = self.stop_requested().await;
                self.terminate(stop).await;
                return;
            }
            self.schedule(&pod);
        }
        let stop = {
            let life = self.lifecycle();
            let stop = self.stop_requested();
            tokio::pin!(life);
            tokio::select! {
                s = stop => Some(s),
                () = &mut life => None,
            }
        };
        let stop = match stop {
            Some(s) => s,
            None => self.stop_requested().await,
        };
        self.terminate(stop).await;
    }

    /// The scheduler's answer for a Pod no node fits: PodScheduled False
    /// (Unschedulable) and a FailedScheduling event; it stays Pending.
    fn unschedulable(&self, pod: &Value, message: &str) {
        let now = meta::now();
        self.update(|p| {
            p["status"] = json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": now, "reason": "Unschedulable", "message": message}],
                "qosClass": qos_class(&p["spec"]),
            });
        });
        recorder::record(
            &self.shared,
            pod,
            None,
            true,
            "FailedScheduling",
            message,
            Source::Scheduler,
        );
    }

    /// A hostPath volume's directory or file, checked or made per its
    /// `type` as the kubelet's hostPath plugin does
    /// (https://kubernetes.io/docs/concepts/storage/volumes/#hostpath-volume-types;
    /// pkg/volume/hostpath). The path is the dockerd's host's: for a
    /// daemon in a container only what it shares with this machine (the
    /// test daemons share /tmp) is the same file here.
    fn host_path(
        &self,
        volume: &str,
        host: &k8s_openapi::api::core::v1::HostPathVolumeSource,
    ) -> Result<String, HostPathError> {
        let path = std::path::Path::new(&host.path);
        let volume = volume.to_string();
        let made = |source| HostPathError::Make {
            volume: volume.clone(),
            path: host.path.clone(),
            source,
        };
        let not_a = |kind| HostPathError::NotA {
            volume: volume.clone(),
            path: host.path.clone(),
            kind,
        };
        match host.type_.as_deref().unwrap_or("") {
            "" => {}
            "DirectoryOrCreate" => {
                if !path.is_dir() {
                    std::fs::create_dir_all(path).map_err(made)?;
                }
            }
            "Directory" if !path.is_dir() => return Err(not_a("directory")),
            "FileOrCreate" => {
                if !path.is_file() {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(made)?;
                }
            }
            "File" if !path.is_file() => return Err(not_a("file")),
            "Directory" | "File" => {}
            other => {
                return Err(HostPathError::Unsupported {
                    volume,
                    kind: other.to_string(),
                })
            }
        }
        Ok(host.path.clone())
    }

    fn schedule(&self, pod: &Value) {
        let node = self.shared.config.node_name.clone();
        let qos = qos_class(&pod["spec"]);
        let now = meta::now();
        let init: Vec<Value> = names(&pod["spec"]["initContainers"])
            .iter()
            .map(|n| waiting_status(pod, true, n, "PodInitializing"))
            .collect();
        let has_init = !init.is_empty();
        let main: Vec<Value> = names(&pod["spec"]["containers"])
            .iter()
            .map(|n| {
                waiting_status(
                    pod,
                    false,
                    n,
                    if has_init {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    },
                )
            })
            .collect();
        let pod_ip = format!("10.244.0.{}", 2 + fastrand::u8(..250));
        let init_names = names(&pod["spec"]["initContainers"]);
        let main_names = names(&pod["spec"]["containers"]);
        self.update(|p| {
            p["spec"]["nodeName"] = json!(node);
            let mut status = json!({
                "phase": "Pending",
                "conditions": [
                    {"type": "PodReadyToStartContainers", "status": "False", "lastProbeTime": null, "lastTransitionTime": now},
                    if has_init {
                        json!({"type": "Initialized", "status": "False", "lastProbeTime": null, "lastTransitionTime": now, "reason": "ContainersNotInitialized", "message": format!("containers with incomplete status: [{}]", init_names.join(" "))})
                    } else {
                        json!({"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
                    },
                    {"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": now, "reason": "ContainersNotReady", "message": format!("containers with unready status: [{}]", main_names.join(" "))},
                    {"type": "ContainersReady", "status": "False", "lastProbeTime": null, "lastTransitionTime": now, "reason": "ContainersNotReady", "message": format!("containers with unready status: [{}]", main_names.join(" "))},
                    {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                ],
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": now,
                "containerStatuses": main,
                "qosClass": qos,
            });
            if has_init {
                status["initContainerStatuses"] = json!(init);
            }
            p["status"] = status;
        });
        recorder::record(
            &self.shared,
            pod,
            None,
            false,
            "Scheduled",
            &format!("Successfully assigned {}/{} to {node}", self.ns, self.name),
            Source::Scheduler,
        );
    }

    /// Resolves when the Pod is marked for deletion, evicted, or gone.
    async fn stop_requested(&self) -> Stop {
        loop {
            let notified = self.shared.changed.notified();
            match self.pod() {
                None => return Stop::Gone,
                Some(p) if p["status"]["reason"] == "Evicted" => return Stop::Evicted,
                Some(p) if p["metadata"]["deletionTimestamp"].is_string() => return Stop::Deleted,
                _ => {}
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn set_condition(&self, kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) {
        let now = meta::now();
        self.update(|p| {
            if let Some(c) = p
                .pointer_mut("/status/conditions")
                .and_then(Value::as_array_mut)
                .and_then(|l| l.iter_mut().find(|c| c["type"] == kind))
            {
                let status = if ok { "True" } else { "False" };
                if c["status"] != status {
                    c["lastTransitionTime"] = json!(now);
                }
                c["status"] = json!(status);
                let obj = c.as_object_mut().unwrap();
                match reason {
                    Some(r) => obj.insert("reason".into(), json!(r)),
                    None => obj.remove("reason"),
                };
                match message {
                    Some(m) => obj.insert("message".into(), json!(m)),
                    None => obj.remove("message"),
                };
            }
        });
    }

    async fn lifecycle(&self) {
        let Some(pod_value) = self.pod() else { return };
        if terminal(&pod_value) {
            return;
        }
        let pod: Pod = match serde_json::from_value(pod_value.clone()) {
            Ok(p) => p,
            Err(e) => {
                self.event(
                    None,
                    true,
                    "FailedCreatePodSandBox",
                    &format!("the Pod does not decode: {e}"),
                );
                return std::future::pending().await;
            }
        };
        let spec = pod.spec.clone().unwrap_or_default();
        // Volumes: the pod's "sandbox".
        let mut volumes: HashMap<String, MountSource> = HashMap::new();
        for v in spec.volumes.iter().flatten() {
            if v.empty_dir.is_some() {
                let name = format!("oz-k8s-{}-{}", self.uid, v.name);
                if let Err(e) = self.docker.volume_create(&name, &self.uid).await {
                    self.event(
                        None,
                        true,
                        "FailedMount",
                        &format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name),
                    );
                    return std::future::pending().await;
                }
                volumes.insert(v.name.clone(), MountSource::Volume(name));
            } else if let Some(host) = &v.host_path {
                match self.host_path(&v.name, host) {
                    Ok(path) => volumes.insert(v.name.clone(), MountSource::Bind(path)),
                    Err(e) => {
                        self.event(None, true, "FailedMount", &e.to_string());
                        return std::future::pending().await;
                    }
                };
            } else if let Some(image) = &v.image {
                if !self.docker.mounts_images().await {
                    self.event(None, true, "Failed", &format!("Error: image volume {:?} is not supported by the test API server's kubelet (its dockerd is older than Engine API 1.48 and has no image mounts); run it with --docker-host on Docker 28 or later", v.name));
                    let reason = "CreateContainerConfigError";
                    for c in spec
                        .init_containers
                        .iter()
                        .flatten()
                        .chain(spec.containers.iter())
                    {
                        let init = spec
                            .init_containers
                            .iter()
                            .flatten()
                            .any(|i| i.name == c.name);
                        self.set_status(init, &c.name, |s| s["state"] = json!({"waiting": {"reason": reason, "message": "image volumes are not supported by this dockerd"}}));
                    }
                    return std::future::pending().await;
                }
                // The image is resolved as a container's image is, with
                // the volume's pullPolicy (ImageVolumeSource: "Behaves in
                // the same way as pod.spec.containers[*].image"); the pull
                // is reported against the first container, which cannot
                // start without it.
                let reference = image.reference.clone().unwrap_or_default();
                let first = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .map(|c| (true, c))
                    .chain(spec.containers.iter().map(|c| (false, c)))
                    .next();
                if let Some((init, c)) = first {
                    let puller = Container {
                        name: c.name.clone(),
                        image: Some(reference.clone()),
                        image_pull_policy: image.pull_policy.clone(),
                        ..Default::default()
                    };
                    self.ensure_image(&puller, init).await;
                }
                volumes.insert(v.name.clone(), MountSource::Image(reference));
            } else {
                // This server holds no ConfigMaps or Secrets, so a volume
                // of one fails as the kubelet's does for a missing object.
                if let Some(c) = &v.config_map {
                    self.event(
                        None,
                        true,
                        "FailedMount",
                        &format!(
                            "MountVolume.SetUp failed for volume {:?} : configmap {:?} not found",
                            v.name, c.name
                        ),
                    );
                    return std::future::pending().await;
                }
                if let Some(sec) = &v.secret {
                    self.event(
                        None,
                        true,
                        "FailedMount",
                        &format!(
                            "MountVolume.SetUp failed for volume {:?} : secret {:?} not found",
                            v.name,
                            sec.secret_name.clone().unwrap_or_default()
                        ),
                    );
                    return std::future::pending().await;
                }
                let kind = serde_json::to_value(v)
                    .ok()
                    .and_then(|o| {
                        o.as_object()
                            .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                    })
                    .unwrap_or_default();
                self.event(None, true, "FailedMount", &format!("MountVolume.SetUp failed for volume {:?} : {kind} volumes are not supported by the test API server", v.name));
                return std::future::pending().await;
            }
        }
        self.set_condition("PodReadyToStartContainers", true, None, None);

        let init_containers = spec.init_containers.clone().unwrap_or_default();
        let mut remaining: Vec<String> = init_containers.iter().map(|c| c.name.clone()).collect();
        // Native sidecars (init containers with restartPolicy Always, on by
        // default since 1.29): started in their turn, not waited for to
        // exit, and stopped once the regular containers have exited. As in
        // the kubelet, the next container starts only once the sidecar has
        // started (without a startupProbe: once it runs).
        let mut sidecars = Vec::new();
        for c in &init_containers {
            if c.restart_policy.as_deref() == Some("Always") {
                let me = self.clone_worker();
                remaining.retain(|n| *n != c.name);
                let name = c.name.clone();
                let (pod_value, volumes, c) = (pod_value.clone(), volumes.clone(), c.clone());
                let handle =
                    tokio::spawn(
                        async move { me.run_container(&pod_value, &c, true, &volumes).await },
                    );
                loop {
                    let notified = self.shared.changed.notified();
                    let started = self
                        .pod()
                        .and_then(|p| status_of(&p, true, &name))
                        .is_some_and(|s| {
                            s["state"]["running"].is_object()
                                || s["state"]["terminated"].is_object()
                        });
                    if started || handle.is_finished() {
                        break;
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                sidecars.push((name, handle));
                continue;
            }
            let Some(code) = self.run_container(&pod_value, c, true, &volumes).await else {
                return;
            };
            remaining.retain(|n| *n != c.name);
            if code != 0 {
                self.finish_phase("Failed");
                return;
            }
            if !remaining.is_empty() {
                self.set_condition(
                    "Initialized",
                    false,
                    Some("ContainersNotInitialized"),
                    Some(format!(
                        "containers with incomplete status: [{}]",
                        remaining.join(" ")
                    )),
                );
            }
        }
        if !init_containers.is_empty() {
            self.set_condition("Initialized", true, None, None);
            for c in &spec.containers {
                self.set_status(false, &c.name, |s| {
                    s["state"] = json!({"waiting": {"reason": "ContainerCreating"}})
                });
            }
        }
        let mut handles = Vec::new();
        for c in spec.containers.clone() {
            let me = PodWorker {
                shared: self.shared.clone(),
                docker: self.docker.clone(),
                ns: self.ns.clone(),
                name: self.name.clone(),
                uid: self.uid.clone(),
            };
            let (pod_value, volumes) = (pod_value.clone(), volumes.clone());
            handles.push(tokio::spawn(async move {
                me.run_container(&pod_value, &c, false, &volumes).await
            }));
        }
        let mut codes = Vec::new();
        let _guard = AbortOnDrop(
            handles
                .iter()
                .chain(sidecars.iter().map(|(_, h)| h))
                .map(|h| h.abort_handle())
                .collect(),
        );
        for h in handles {
            match h.await {
                Ok(Some(code)) => codes.push(code),
                _ => return,
            }
        }
        let grace = pod_value["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        for (name, handle) in sidecars {
            if let Some(id) = self.docker.find(&self.uid, &name).await {
                self.event(
                    Some((true, &name)),
                    false,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
                let _ = self.docker.stop(&id, grace).await;
            }
            let _ = handle.await;
        }
        self.finish_phase(if codes.iter().all(|c| *c == 0) {
            "Succeeded"
        } else {
            "Failed"
        });
    }

    fn clone_worker(&self) -> PodWorker {
        PodWorker {
            shared: self.shared.clone(),
            docker: self.docker.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }

    fn finish_phase(&self, phase: &str) {
        let reason = if phase == "Succeeded" {
            "PodCompleted"
        } else {
            "PodFailed"
        };
        self.update(|p| {
            p["status"]["phase"] = json!(phase);
        });
        self.set_condition("Ready", false, Some(reason), None);
        self.set_condition("ContainersReady", false, Some(reason), None);
        self.set_condition("PodReadyToStartContainers", false, None, None);
    }

    fn running_phase(&self) {
        let all_running = self.pod().is_some_and(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|c| c["state"]["running"].is_object())
        });
        self.update(|p| {
            if p["status"]["phase"] == "Pending" {
                p["status"]["phase"] = json!("Running");
            }
        });
        if all_running {
            self.set_condition("ContainersReady", true, None, None);
            self.set_condition("Ready", true, None, None);
        }
    }

    /// Pulls (per policy) until it works; false when the policy forbids.
    async fn ensure_image(&self, c: &Container, init: bool) -> Option<String> {
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let at = Some((init, c.name.as_str()));
        let mut backoff = self.shared.config.pull_backoff;
        loop {
            if policy != "Always" {
                if let Some(id) = self.docker.image_id(&image).await {
                    self.event(
                        at,
                        false,
                        "Pulled",
                        &format!("Container image {image:?} already present on machine"),
                    );
                    return Some(id);
                }
                if policy == "Never" {
                    let msg = format!(
                        "Container image {image:?} is not present with pull policy of Never"
                    );
                    self.set_status(init, &c.name, |s| {
                        s["state"] =
                            json!({"waiting": {"reason": "ErrImageNeverPull", "message": msg}})
                    });
                    self.event(at, true, "ErrImageNeverPull", &msg);
                    return std::future::pending().await;
                }
            }
            self.event(at, false, "Pulling", &format!("Pulling image {image:?}"));
            let started = std::time::Instant::now();
            match self.docker.pull(&image).await {
                Ok(()) => {
                    let secs = started.elapsed().as_secs_f64();
                    self.event(at, false, "Pulled", &format!("Successfully pulled image {image:?} in {secs:.3}s ({secs:.3}s including waiting)"));
                    return self.docker.image_id(&image).await;
                }
                Err(e) => {
                    let msg = format!("Failed to pull image {image:?}: {e}");
                    self.set_status(init, &c.name, |s| {
                        s["state"] = json!({"waiting": {"reason": "ErrImagePull", "message": msg}})
                    });
                    self.event(at, true, "Failed", &msg);
                    self.event(at, true, "Failed", "Error: ErrImagePull");
                    tokio::time::sleep(backoff.min(Duration::from_secs(1))).await;
                    let msg = format!("Back-off pulling image {image:?}");
                    self.set_status(init, &c.name, |s| {
                        s["state"] =
                            json!({"waiting": {"reason": "ImagePullBackOff", "message": msg}})
                    });
                    self.event(at, false, "BackOff", &msg);
                    self.event(at, true, "Failed", "Error: ImagePullBackOff");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
            }
        }
    }

    /// Creates (or adopts), starts and waits for one container; its exit
    /// code, or None when the Pod went away.
    async fn run_container(
        &self,
        pod: &Value,
        c: &Container,
        init: bool,
        volumes: &HashMap<String, MountSource>,
    ) -> Option<i64> {
        let at = Some((init, c.name.as_str()));
        let existing = self.docker.find(&self.uid, &c.name).await;
        let id = match existing {
            Some(id) => id,
            None => {
                // A status the old process recorded as started but whose
                // container is gone: the kubelet's ContainerStatusUnknown.
                let recorded = self.pod().and_then(|p| status_of(&p, init, &c.name));
                if recorded.as_ref().is_some_and(|s| {
                    s["state"]["running"].is_object() || s["state"]["terminated"].is_object()
                }) {
                    let prev = recorded.unwrap();
                    if let Some(code) = prev["state"]["terminated"]["exitCode"].as_i64() {
                        return Some(code);
                    }
                    self.set_status(init, &c.name, |s| {
                        s["state"] = json!({"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "message": "The container could not be located when the pod was terminated", "startedAt": null, "finishedAt": null}});
                        s["ready"] = json!(false);
                        s["started"] = json!(false);
                    });
                    return Some(137);
                }
                let image_id = self.ensure_image(c, init).await?;
                let spec = match self.container_spec(pod, c, volumes) {
                    Ok(s) => s,
                    Err(e) => {
                        let msg = e.to_string();
                        self.set_status(init, &c.name, |s| s["state"] = json!({"waiting": {"reason": "CreateContainerConfigError", "message": msg}}));
                        self.event(at, true, "Failed", &format!("Error: {msg}"));
                        return std::future::pending().await;
                    }
                };
                let id = match self.docker.create(&spec).await {
                    Ok(id) => id,
                    Err(e) => {
                        let msg = e.to_string();
                        self.set_status(init, &c.name, |s| s["state"] = json!({"waiting": {"reason": "CreateContainerError", "message": msg}}));
                        self.event(at, true, "Failed", &format!("Error: {msg}"));
                        return std::future::pending().await;
                    }
                };
                let _ = image_id;
                self.event(
                    at,
                    false,
                    "Created",
                    &format!("Created container {}", c.name),
                );
                if let Err(e) = self.docker.start(&id).await {
                    let msg = e.to_string();
                    self.event(
                        at,
                        true,
                        "Failed",
                        &format!("Error: failed to start container {:?}: {msg}", c.name),
                    );
                    // Like runc's failures: the container exits 128.
                    self.set_status(init, &c.name, |s| s["state"] = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": msg, "startedAt": null, "finishedAt": meta::now(), "containerID": format!("docker://{id}")}}));
                    return Some(128);
                }
                self.event(
                    at,
                    false,
                    "Started",
                    &format!("Started container {}", c.name),
                );
                id
            }
        };
        let state = self.docker.inspect(&id).await.ok()?;
        let image = c.image.clone().unwrap_or_default();
        if state.running {
            let started = state.started_at.clone();
            self.set_status(init, &c.name, |s| {
                s["state"] = json!({"running": {"startedAt": started}});
                s["containerID"] = json!(format!("docker://{}", state.id));
                s["imageID"] = json!(format!("docker-pullable://{image}@{}", state.image_id));
                s["started"] = json!(true);
                s["ready"] = json!(!init);
            });
            if !init {
                self.running_phase();
            }
            self.docker.wait(&id).await.ok()?;
        }
        let mut state = self.docker.inspect(&id).await.ok()?;
        // dockerd records an OOM kill from the cgroup's OOM event, which can
        // land after the exit it caused (seen on a loaded machine), and then
        // only as an `oom` event, not in `State.OOMKilled`: a container
        // under a memory limit that was SIGKILLed is looked at again, both
        // ways, for up to five seconds before it is reported as a plain
        // Error.
        if !state.oom_killed && state.exit_code == 137 && state.memory_limit > 0 {
            for _ in 0..50 {
                if self.docker.oom_event_logged(&id).await {
                    state.oom_killed = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                state = self.docker.inspect(&id).await.ok()?;
                if state.oom_killed {
                    break;
                }
            }
        }
        let reason = if state.oom_killed {
            "OOMKilled"
        } else if state.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        self.set_status(init, &c.name, |s| {
            s["state"] = json!({"terminated": {"exitCode": state.exit_code, "reason": reason, "startedAt": state.started_at, "finishedAt": state.finished_at, "containerID": format!("docker://{}", state.id)}});
            s["containerID"] = json!(format!("docker://{}", state.id));
            s["imageID"] = json!(format!("docker-pullable://{image}@{}", state.image_id));
            s["ready"] = json!(false);
            s["started"] = json!(false);
        });
        if !init {
            self.set_condition(
                "ContainersReady",
                false,
                Some("ContainersNotReady"),
                Some(format!("containers with unready status: [{}]", c.name)),
            );
            self.set_condition(
                "Ready",
                false,
                Some("ContainersNotReady"),
                Some(format!("containers with unready status: [{}]", c.name)),
            );
        }
        Some(state.exit_code)
    }

    /// Kubernetes' container → Docker's: command → entrypoint (+ args),
    /// args alone → the image's entrypoint with these arguments, env with
    /// `$(VAR)` expansion, mounts, the memory limit as a hard limit.
    fn container_spec(
        &self,
        pod: &Value,
        c: &Container,
        volumes: &HashMap<String, MountSource>,
    ) -> Result<ContainerSpec, ConfigError> {
        let mut env: Vec<(String, String)> = Vec::new();
        if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            let e = &c.env_from.as_ref().unwrap()[0];
            return Err(if let Some(s) = &e.secret_ref {
                ConfigError::NoSecret(s.name.clone())
            } else if let Some(m) = &e.config_map_ref {
                ConfigError::NoConfigMap(m.name.clone())
            } else {
                ConfigError::NoEnvFromSource
            });
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, &f.field_path)
                        .ok_or_else(|| ConfigError::FieldRef(f.field_path.clone()))?
                } else if let Some(s) = &from.secret_key_ref {
                    if s.optional == Some(true) {
                        continue;
                    }
                    return Err(ConfigError::NoSecret(s.name.clone()));
                } else if let Some(m) = &from.config_map_key_ref {
                    if m.optional == Some(true) {
                        continue;
                    }
                    return Err(ConfigError::NoConfigMap(m.name.clone()));
                } else {
                    return Err(ConfigError::ResourceFieldRef(e.name.clone()));
                }
            } else {
                expand(e.value.as_deref().unwrap_or(""), &env)
            };
            env.retain(|(k, _)| *k != e.name);
            env.push((e.name.clone(), value));
        }
        let command: Vec<String> = c
            .command
            .iter()
            .flatten()
            .map(|s| expand(s, &env))
            .collect();
        let args: Vec<String> = c.args.iter().flatten().map(|s| expand(s, &env)).collect();
        let (entrypoint, args) = match command.split_first() {
            Some((first, rest)) => (
                Some(first.clone()),
                rest.iter().cloned().chain(args).collect(),
            ),
            None => (None, args),
        };
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let vol = volumes
                .get(&m.name)
                .ok_or_else(|| ConfigError::NoVolume(m.name.clone()))?;
            // Image volumes are always read-only (ImageVolumeSource: "The
            // volume will be mounted read-only (ro)").
            let read_only = m.read_only == Some(true) || matches!(vol, MountSource::Image(_));
            mounts.push(Mount {
                source: vol.clone(),
                target: m.mount_path.clone(),
                read_only,
            });
        }
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let memory_bytes = limits
            .get("memory")
            .and_then(|q| crate::validation::parse_quantity(&json!(q.0)))
            .map(|b| b as u64);
        let nano_cpus = limits
            .get("cpu")
            .and_then(|q| crate::validation::parse_quantity(&json!(q.0)))
            .map(|c| (c * 1e9) as u64);
        let user = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or_else(|| {
                serde_json::from_value::<i64>(pod["spec"]["securityContext"]["runAsUser"].clone())
                    .ok()
            });
        let group = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_group)
            .or_else(|| pod["spec"]["securityContext"]["runAsGroup"].as_i64());
        Ok(ContainerSpec {
            name: format!("k8s_{}_{}_{}_{}_0", c.name, self.name, self.ns, self.uid),
            image: c.image.clone().unwrap_or_default(),
            pod_uid: self.uid.clone(),
            container: c.name.clone(),
            entrypoint,
            args,
            env,
            workdir: c.working_dir.clone(),
            mounts,
            memory_bytes,
            nano_cpus,
            user: user.map(|u| match group {
                Some(g) => format!("{u}:{g}"),
                None => u.to_string(),
            }),
        })
    }

    /// Stops what runs (preStop hooks, then SIGTERM and SIGKILL after the
    /// grace period), records the final states, removes the containers and
    /// volumes, and lets a deleted Pod go.
    async fn terminate(&self, stop: Stop) {
        let pod = self.pod();
        let grace = match (&stop, &pod) {
            (Stop::Evicted, _) => 0,
            (_, Some(p)) => p["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .or_else(|| p["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30),
            _ => 0,
        };
        if let Some(p) = &pod {
            let typed: Option<Pod> = serde_json::from_value(p.clone()).ok();
            let spec = typed.and_then(|t| t.spec).unwrap_or_default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(grace as u64);
            let mut stops = Vec::new();
            for (init, c) in spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| (true, c))
                .chain(spec.containers.iter().map(|c| (false, c)))
            {
                let Some(id) = self.docker.find(&self.uid, &c.name).await else {
                    continue;
                };
                let running = self.docker.inspect(&id).await.is_ok_and(|s| s.running);
                if !running {
                    continue;
                }
                let me = PodWorker {
                    shared: self.shared.clone(),
                    docker: self.docker.clone(),
                    ns: self.ns.clone(),
                    name: self.name.clone(),
                    uid: self.uid.clone(),
                };
                let c = c.clone();
                stops.push(tokio::spawn(async move {
                    let at = Some((init, c.name.as_str()));
                    if let Some(cmd) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.exec.as_ref()).and_then(|e| e.command.clone()) {
                        match tokio::time::timeout_at(deadline, me.docker.exec(&id, &cmd)).await {
                            Ok(Ok(0)) => {}
                            Ok(Ok(code)) => me.event(at, true, "FailedPreStopHook", &format!("PreStopHook failed: command {cmd:?} exited with {code}")),
                            Ok(Err(e)) => me.event(at, true, "FailedPreStopHook", &format!("PreStopHook failed: {e}")),
                            Err(_) => me.event(at, true, "FailedPreStopHook", "PreStopHook failed: the grace period ran out"),
                        }
                    }
                    me.event(at, false, "Killing", &format!("Stopping container {}", c.name));
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs() as i64;
                    let _ = me.docker.stop(&id, left).await;
                    if let Ok(state) = me.docker.inspect(&id).await {
                        let reason = if state.oom_killed { "OOMKilled" } else if state.exit_code == 0 { "Completed" } else { "Error" };
                        me.set_status(init, &c.name, |s| {
                            s["state"] = json!({"terminated": {"exitCode": state.exit_code, "reason": reason, "startedAt": state.started_at, "finishedAt": state.finished_at, "containerID": format!("docker://{}", state.id)}});
                            s["ready"] = json!(false);
                            s["started"] = json!(false);
                        });
                    }
                }));
            }
            for s in stops {
                let _ = s.await;
            }
            if !terminal(&self.pod().unwrap_or_default()) {
                let ok = self.pod().is_some_and(|p| {
                    p["status"]["containerStatuses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|c| c["state"]["terminated"]["exitCode"] == 0)
                });
                self.finish_phase(if ok { "Succeeded" } else { "Failed" });
                // Containers never started stay waiting; the kubelet reports them
                // terminated with ContainerStatusUnknown only when they had run.
            }
        }
        if matches!(stop, Stop::Evicted) {
            // An evicted Pod stays (as on a cluster) until it is deleted.
            let deleted = self.stop_requested_deleted().await;
            if !deleted {
                self.cleanup(&pod).await;
                return;
            }
        }
        self.cleanup(&pod).await;
        let uid = self.uid.clone();
        self.shared.with(|s| {
            if let Some(p) = s.get(Resource::Pods, &self.ns, &self.name) {
                if p["metadata"]["uid"] == uid.as_str()
                    && p["metadata"]["deletionTimestamp"].is_string()
                    && p["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty)
                {
                    s.remove(Resource::Pods, &self.ns, &self.name);
                }
            }
        });
    }

    /// After an eviction: waits until the Pod is deleted (true) or gone.
    async fn stop_requested_deleted(&self) -> bool {
        loop {
            let notified = self.shared.changed.notified();
            match self.pod() {
                None => return false,
                Some(p) if p["metadata"]["deletionTimestamp"].is_string() => return true,
                _ => {}
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn cleanup(&self, pod: &Option<Value>) {
        let Some(p) = pod else {
            return;
        };
        for n in names(&p["spec"]["initContainers"])
            .into_iter()
            .chain(names(&p["spec"]["containers"]))
        {
            if let Some(id) = self.docker.find(&self.uid, &n).await {
                // Keep logs readable while the Pod object exists: remove
                // containers only once it is being deleted.
                if p["metadata"]["deletionTimestamp"].is_string()
                    || self
                        .pod()
                        .is_none_or(|q| q["metadata"]["deletionTimestamp"].is_string())
                {
                    self.docker.remove(&id).await;
                }
            }
        }
        for v in p["spec"]["volumes"].as_array().into_iter().flatten() {
            if v["emptyDir"].is_object() {
                self.docker
                    .volume_remove(&format!(
                        "oz-k8s-{}-{}",
                        self.uid,
                        v["name"].as_str().unwrap_or("")
                    ))
                    .await;
            }
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Why the one node cannot take the Pod (its nodeSelector against the
/// node's labels, its requests against the machine's CPUs and memory), in
/// the scheduler's words; None when it fits.
fn unschedulable(pod: &Value, node: &str) -> Option<String> {
    let spec = &pod["spec"];
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let labels = [
        ("kubernetes.io/hostname", node),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
    ];
    if let Some(selector) = spec["nodeSelector"].as_object() {
        let fits = selector
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && v == lv));
        if !fits {
            return Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.".into());
        }
    }
    let request = |res: &str| -> f64 {
        let sum: f64 = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                crate::validation::parse_quantity(&c["resources"]["requests"][res])
                    .or_else(|| crate::validation::parse_quantity(&c["resources"]["limits"][res]))
            })
            .sum();
        let init: f64 = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                crate::validation::parse_quantity(&c["resources"]["requests"][res])
                    .or_else(|| crate::validation::parse_quantity(&c["resources"]["limits"][res]))
            })
            .fold(0.0, f64::max);
        sum.max(init)
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(f64::MAX);
    let mut short = Vec::new();
    if request("cpu") > cpus {
        short.push("1 Insufficient cpu");
    }
    if request("memory") > memory {
        short.push("1 Insufficient memory");
    }
    if short.is_empty() {
        return None;
    }
    Some(format!("0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.", short.join(", ")))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

fn status_of(pod: &Value, init: bool, name: &str) -> Option<Value> {
    let list = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    pod["status"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

fn waiting_status(pod: &Value, init: bool, name: &str, reason: &str) -> Value {
    let list = if init { "initContainers" } else { "containers" };
    let image = pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .map(|c| c["image"].clone())
        .unwrap_or(Value::Null);
    json!({"name": name, "state": {"waiting": {"reason": reason}}, "lastState": {}, "ready": false, "restartCount": 0, "image": image, "imageID": "", "started": false})
}

/// Guaranteed when every container's requests equal its limits for CPU and
/// memory, BestEffort with none, else Burstable.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
        .collect();
    let none = containers.iter().all(|c| {
        c["resources"]["requests"]
            .as_object()
            .is_none_or(|m| m.is_empty())
            && c["resources"]["limits"]
                .as_object()
                .is_none_or(|m| m.is_empty())
    });
    if none {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let l = &c["resources"]["limits"][r];
            let q = &c["resources"]["requests"][r];
            !l.is_null()
                && (q.is_null()
                    || crate::validation::parse_quantity(q) == crate::validation::parse_quantity(l))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let m = &pod["metadata"];
    Some(match path {
        "metadata.name" => m["name"].as_str()?.to_string(),
        "metadata.namespace" => m["namespace"].as_str()?.to_string(),
        "metadata.uid" => m["uid"].as_str()?.to_string(),
        "spec.nodeName" => pod["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string(),
        "status.podIP" => pod["status"]["podIP"].as_str().unwrap_or("").to_string(),
        "status.hostIP" => "127.0.0.1".to_string(),
        p => {
            let key = p
                .strip_prefix("metadata.labels['")
                .or_else(|| p.strip_prefix("metadata.annotations['"))?
                .strip_suffix("']")?;
            let map = if p.starts_with("metadata.labels") {
                "labels"
            } else {
                "annotations"
            };
            m[map][key].as_str().unwrap_or("").to_string()
        }
    })
}

/// `$(VAR)` → VAR's value when defined earlier, `$$` → `$`, else kept.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(j) => {
                    let name = &body[..j];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[j + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Evicts a Pod as the kubelet does under node pressure (admin hook).
pub fn evict(shared: &Shared, ns: &str, name: &str) -> bool {
    let Some(pod) = shared.read(|s| s.get(Resource::Pods, ns, name).cloned()) else {
        return false;
    };
    let message =
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ";
    let now = meta::now();
    shared.with(|s| {
        s.update(Resource::Pods, ns, name, |p| {
            p["status"]["phase"] = json!("Failed");
            p["status"]["reason"] = json!("Evicted");
            p["status"]["message"] = json!(message);
            if let Some(list) = p["status"]["conditions"].as_array_mut() {
                list.push(json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null, "lastTransitionTime": now, "reason": "TerminationByKubelet", "message": message}));
            }
        })
    });
    recorder::record(
        shared,
        &pod,
        None,
        true,
        "Evicted",
        message,
        Source::Kubelet,
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_as_the_kubelet_does() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)/$(B)/$$(A)/$", &env), "x/$(B)/$(A)/$");
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }
}

/// Why a container's configuration cannot be built (the kubelet's
/// `CreateContainerConfigError`): the test API server stores no Secrets or
/// ConfigMaps, so every reference to one is "not found", as a kubelet says.
/// Why a hostPath volume cannot be mounted: the kubelet's `FailedMount`
/// event messages (pkg/volume/hostpath).
#[derive(Debug, thiserror::Error)]
enum HostPathError {
    #[error("MountVolume.SetUp failed for volume {volume:?} : hostPath type check failed: {path} cannot be made: {source}")]
    Make {
        volume: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `kind`: "directory" or "file", what the volume's `type` asks for.
    #[error("MountVolume.SetUp failed for volume {volume:?} : hostPath type check failed: {path} is not a {kind}")]
    NotA {
        volume: String,
        path: String,
        kind: &'static str,
    },
    #[error("MountVolume.SetUp failed for volume {volume:?} : hostPath type {kind} is not supported by the test API server")]
    Unsupported { volume: String, kind: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("secret {0:?} not found")]
    NoSecret(String),
    #[error("configmap {0:?} not found")]
    NoConfigMap(String),
    #[error("envFrom source not found")]
    NoEnvFromSource,
    #[error("unsupported fieldRef {0:?}")]
    FieldRef(String),
    #[error("env {0:?}: resourceFieldRef is not supported by the test API server")]
    ResourceFieldRef(String),
    #[error("volume {0:?} not found")]
    NoVolume(String),
}
