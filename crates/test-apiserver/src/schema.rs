//! Validates Kubernetes objects against the strict JSON schemas of Kubernetes
//! 1.33 vendored under `api-specs/kubernetes/v1.33.0-strict/` (from PyPI's
//! `kubernetes-validate`, derived from Kubernetes' OpenAPI; see PROVENANCE.md
//! there). "Strict" means an unknown field anywhere is an error, as
//! `kubectl apply --validate=strict` and the API server's strict field
//! validation report it.
//!
//! The schemas are compiled into the binary, and their one external
//! reference (`https://kubernetes.io/api/_definitions.json`) resolves to the
//! vendored `_definitions.json`: nothing is fetched. A PodMonitor (a
//! prometheus-operator custom resource, whose schema no package registry
//! ships) is checked against `api-specs/kubernetes/podmonitor-structural.schema.json`,
//! our own structural schema of the fields we use.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

/// The Kubernetes version of the vendored schemas.
pub const KUBERNETES_VERSION: &str = "1.33.0";

/// The `$id` every per-kind schema's `$ref`s point into.
const DEFINITIONS_ID: &str = "https://kubernetes.io/api/_definitions.json";

const DEFINITIONS: &str =
    include_str!("../../../api-specs/kubernetes/v1.33.0-strict/_definitions.json");

macro_rules! vendored {
    ($api_version:literal, $kind:literal, $file:literal) => {
        (
            $api_version,
            $kind,
            include_str!(concat!(
                "../../../api-specs/kubernetes/v1.33.0-strict/",
                $file
            )),
        )
    };
}

/// (apiVersion, kind, schema text) of every kind we validate.
const KINDS: &[(&str, &str, &str)] = &[
    vendored!("v1", "ConfigMap", "configmap-v1.json"),
    vendored!("v1", "DeleteOptions", "deleteoptions-meta-v1.json"),
    vendored!(
        "meta.k8s.io/v1",
        "DeleteOptions",
        "deleteoptions-meta-v1.json"
    ),
    vendored!("batch/v1", "DeleteOptions", "deleteoptions-meta-v1.json"),
    vendored!("apps/v1", "Deployment", "deployment-apps-v1.json"),
    vendored!("v1", "Event", "event-v1.json"),
    vendored!("v1", "EventList", "eventlist-v1.json"),
    vendored!("batch/v1", "Job", "job-batch-v1.json"),
    vendored!("batch/v1", "JobList", "joblist-batch-v1.json"),
    vendored!("v1", "Namespace", "namespace-v1.json"),
    vendored!("v1", "Pod", "pod-v1.json"),
    vendored!("v1", "PodList", "podlist-v1.json"),
    vendored!("rbac.authorization.k8s.io/v1", "Role", "role-rbac-v1.json"),
    vendored!(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebinding-rbac-v1.json"
    ),
    vendored!("v1", "Secret", "secret-v1.json"),
    vendored!("v1", "Service", "service-v1.json"),
    vendored!("v1", "ServiceAccount", "serviceaccount-v1.json"),
    vendored!("v1", "Status", "status-meta-v1.json"),
    vendored!("v1", "WatchEvent", "watchevent-meta-v1.json"),
    vendored!("v1", "APIGroupList", "apigrouplist-meta-v1.json"),
    vendored!("v1", "APIResourceList", "apiresourcelist-meta-v1.json"),
    vendored!("v1", "APIVersions", "apiversions-meta-v1.json"),
    (
        "monitoring.coreos.com/v1",
        "PodMonitor",
        include_str!("../../../api-specs/kubernetes/podmonitor-structural.schema.json"),
    ),
];

/// Why an object did not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    /// The object is not a JSON object, or lacks a string `apiVersion` or
    /// `kind` (which Kubernetes needs to decode it).
    MissingTypeMeta {
        /// `apiVersion` or `kind`.
        field: &'static str,
    },
    /// No vendored schema for this apiVersion/kind: add it to
    /// scripts/vendor-kubernetes-schemas.py and to this module's table.
    UnknownKind {
        /// As in the object.
        api_version: String,
        /// As in the object.
        kind: String,
    },
    /// The object breaks its schema; one entry per violation, in the order
    /// the validator found them.
    Invalid {
        /// The schema's apiVersion.
        api_version: String,
        /// The schema's kind.
        kind: String,
        /// What is wrong, where.
        violations: Vec<Violation>,
    },
}

/// One schema violation: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the object (`/spec/template/spec/containers/0/name`).
    pub pointer: String,
    /// The same place as Kubernetes names fields in a `Status`'s causes
    /// (`spec.template.spec.containers[0].name`).
    pub field: String,
    /// What is wrong. Values are not quoted (they may be secrets): the
    /// message names the rule (type, enum, unknown field, …).
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() {
            "<object>"
        } else {
            &self.field
        };
        write!(f, "{field}: {}", self.message)
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::MissingTypeMeta { field } => write!(
                f,
                "the object has no string `{field}`: every Kubernetes object names its apiVersion and kind"
            ),
            SchemaError::UnknownKind { api_version, kind } => write!(
                f,
                "no vendored Kubernetes {KUBERNETES_VERSION} schema for apiVersion {api_version:?} kind {kind:?} (api-specs/kubernetes/; add it with scripts/vendor-kubernetes-schemas.py)"
            ),
            SchemaError::Invalid {
                api_version,
                kind,
                violations,
            } => {
                write!(
                    f,
                    "{kind} ({api_version}) does not match the Kubernetes {KUBERNETES_VERSION} strict schema: "
                )?;
                for (i, v) in violations.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{v}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SchemaError {}

/// The vendored schemas, each compiled on first use.
pub struct Schemas {
    definitions: Arc<Value>,
    compiled: Mutex<HashMap<(&'static str, &'static str), Arc<Validator>>>,
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schemas")
            .field("kubernetes_version", &KUBERNETES_VERSION)
            .finish_non_exhaustive()
    }
}

/// Serves the vendored `_definitions.json` and refuses every other URI, so
/// a reference outside the vendored set fails at compile time instead of
/// reaching for the network.
struct LocalDefinitions(Arc<Value>);

#[derive(Debug)]
struct NotVendored(String);

impl fmt::Display for NotVendored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not vendored (only {DEFINITIONS_ID} is)", self.0)
    }
}

impl std::error::Error for NotVendored {}

impl Retrieve for LocalDefinitions {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.as_str() == DEFINITIONS_ID {
            Ok((*self.0).clone())
        } else {
            Err(Box::new(NotVendored(uri.as_str().to_string())))
        }
    }
}

impl Schemas {
    /// The process-wide set (schemas compile once per kind).
    pub fn global() -> &'static Schemas {
        static GLOBAL: OnceLock<Schemas> = OnceLock::new();
        GLOBAL.get_or_init(Schemas::new)
    }

    fn new() -> Schemas {
        let definitions: Value =
            serde_json::from_str(DEFINITIONS).expect("the vendored _definitions.json is JSON");
        Schemas {
            definitions: Arc::new(definitions),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a schema for this apiVersion/kind is vendored.
    pub fn supports(api_version: &str, kind: &str) -> bool {
        KINDS
            .iter()
            .any(|(v, k, _)| *v == api_version && *k == kind)
    }

    /// Validates an object against the schema its own `apiVersion` and
    /// `kind` name.
    pub fn validate(&self, object: &Value) -> Result<(), SchemaError> {
        let api_version = object.get("apiVersion").and_then(Value::as_str).ok_or(
            SchemaError::MissingTypeMeta {
                field: "apiVersion",
            },
        )?;
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(SchemaError::MissingTypeMeta { field: "kind" })?;
        self.validate_as(api_version, kind, object)
    }

    /// Validates an object against the schema of the given apiVersion/kind
    /// (for bodies that may omit their type, such as DeleteOptions).
    pub fn validate_as(
        &self,
        api_version: &str,
        kind: &str,
        object: &Value,
    ) -> Result<(), SchemaError> {
        let validator = self.validator(api_version, kind)?;
        let violations: Vec<Violation> = validator
            .iter_errors(object)
            .map(|error| {
                let pointer = error.instance_path().as_str().to_string();
                Violation {
                    field: field_path(&pointer),
                    pointer,
                    message: error.masked().to_string(),
                }
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Invalid {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                violations,
            })
        }
    }

    fn validator(&self, api_version: &str, kind: &str) -> Result<Arc<Validator>, SchemaError> {
        let Some((v, k, text)) = KINDS
            .iter()
            .find(|(v, k, _)| *v == api_version && *k == kind)
        else {
            return Err(SchemaError::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            });
        };
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(validator) = compiled.get(&(*v, *k)) {
            return Ok(validator.clone());
        }
        let schema: Value = serde_json::from_str(text).expect("a vendored schema is JSON");
        let validator = jsonschema::options()
            .with_retriever(LocalDefinitions(self.definitions.clone()))
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("the vendored schema of {k} ({v}) compiles: {e}"));
        let validator = Arc::new(validator);
        compiled.insert((*v, *k), validator.clone());
        Ok(validator)
    }
}

/// `/spec/containers/0/name` → `spec.containers[0].name`, as Kubernetes
/// writes field paths; a key with `.` or `/` (a label) is bracketed.
pub fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        let index = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
        if index || segment.contains(['.', '/']) {
            out.push('[');
            out.push_str(&segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Value {
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "oz-task-1", "labels": {"app.kubernetes.io/name": "x"}},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "task", "image": "busybox", "command": ["true"]}]
                }}
            }
        })
    }

    #[test]
    fn a_valid_job_passes() {
        Schemas::global().validate(&job()).unwrap();
    }

    #[test]
    fn an_unknown_field_is_named_by_its_path() {
        let mut job = job();
        job["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = json!("Always");
        let err = Schemas::global().validate(&job).unwrap_err();
        let SchemaError::Invalid { violations, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(violations.len(), 1, "{err}");
        assert_eq!(violations[0].pointer, "/spec/template/spec/containers/0");
        assert_eq!(violations[0].field, "spec.template.spec.containers[0]");
        assert!(violations[0].message.contains("imagePulPolicy"), "{err}");
    }

    #[test]
    fn a_wrong_type_is_named_and_its_value_not_shown() {
        let mut job = job();
        job["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "TOKEN", "value": 12345678}]);
        let err = Schemas::global().validate(&job).unwrap_err().to_string();
        assert!(
            err.contains("spec.template.spec.containers[0].env[0].value"),
            "{err}"
        );
        assert!(!err.contains("12345678"), "the value leaked: {err}");
    }

    #[test]
    fn a_missing_required_field_fails() {
        // Kubernetes' OpenAPI carries required fields and types, not enums
        // (imagePullPolicy, restartPolicy): those are the API server's
        // validation rules, checked separately.
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"image": "i"}]}
        });
        let err = Schemas::global().validate(&pod).unwrap_err().to_string();
        assert!(err.contains("spec.containers[0]"), "{err}");
        assert!(err.contains("name"), "{err}");
    }

    #[test]
    fn a_kind_without_a_schema_and_a_missing_kind_are_refused() {
        let err = Schemas::global()
            .validate(&json!({"apiVersion": "v1", "kind": "Widget"}))
            .unwrap_err();
        assert!(matches!(err, SchemaError::UnknownKind { .. }), "{err}");
        let err = Schemas::global()
            .validate(&json!({"apiVersion": "v1"}))
            .unwrap_err();
        assert_eq!(err, SchemaError::MissingTypeMeta { field: "kind" });
    }

    #[test]
    fn a_bad_date_time_fails_format_validation() {
        let mut job = job();
        job["status"] = json!({"startTime": "yesterday"});
        let err = Schemas::global().validate(&job).unwrap_err().to_string();
        assert!(err.contains("status.startTime"), "{err}");
    }

    #[test]
    fn field_paths_read_as_kubernetes_writes_them() {
        assert_eq!(field_path(""), "");
        assert_eq!(field_path("/metadata/name"), "metadata.name");
        assert_eq!(
            field_path("/metadata/labels/app.kubernetes.io~1name"),
            "metadata.labels[app.kubernetes.io/name]"
        );
        assert_eq!(
            field_path("/spec/containers/10/ports/0"),
            "spec.containers[10].ports[0]"
        );
    }

    #[test]
    fn a_podmonitor_is_checked_structurally() {
        let good = json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": "m"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics"}]}
        });
        Schemas::global().validate(&good).unwrap();
        let mut bad = good.clone();
        bad["spec"]["podMetricsEndpoints"][0]["prot"] = json!("metrics");
        let err = Schemas::global().validate(&bad).unwrap_err().to_string();
        assert!(err.contains("spec.podMetricsEndpoints[0]"), "{err}");
        let mut no_selector = good;
        no_selector["spec"]
            .as_object_mut()
            .unwrap()
            .remove("selector");
        assert!(Schemas::global().validate(&no_selector).is_err());
    }
}
