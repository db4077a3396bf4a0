//! What the API server checks in a body beyond decoding: first the vendored
//! strict schema (an unknown field is a 400 `strict decoding error`, as
//! with `fieldValidation=Strict`, which this server always applies; a wrong
//! type is a 400 decode error; a missing required field is a 422), then the
//! rules of pkg/apis/{core,batch}/validation that the runtime's objects can
//! break: names, labels, enumerations, container and volume references.

use serde_json::Value;

use crate::meta::{ApiError, Cause, Resource};
use crate::schema::{SchemaError, Schemas};

/// The ImageVolume feature gate (`--feature-gates ImageVolume=true`):
/// off, as in Kubernetes 1.33 by default (beta, off by default; KEP-4639).
pub static IMAGE_VOLUME_GATE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_LABEL_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// IsDNS1123Subdomain: the regex per dot-separated part, 253 in all (no
/// per-part limit, unlike DNS).
fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_SUBDOMAIN_MAX
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Errors for a label key (`prefix/name`), empty when valid.
pub fn label_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            errs.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".to_string());
        }
    }
    if !is_qualified_name_part(name) {
        errs.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
    }
    errs
}

/// Errors for a label value, empty when valid.
pub fn label_value_errors(value: &str) -> Vec<String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Vec::new()
    } else if value.len() > 63 {
        vec!["must be no more than 63 characters".into()]
    } else {
        vec!["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into()]
    }
}

/// Decodes and validates a body for `resource`: the schema first, then the
/// semantic rules. `name` is the object's name for error details.
pub fn check(resource: Resource, object: &Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"]
        .as_str()
        .or_else(|| object["metadata"]["generateName"].as_str())
        .unwrap_or("")
        .to_string();
    let kind = object["kind"].as_str();
    let api_version = object["apiVersion"].as_str();
    if kind.is_some_and(|k| k != resource.kind())
        || api_version.is_some_and(|v| v != resource.api_version())
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            api_version.unwrap_or(""),
            resource.api_version()
        )));
    }
    match Schemas::global().validate_as(resource.api_version(), resource.kind(), object) {
        Ok(()) => {}
        Err(SchemaError::Invalid { violations, .. }) => {
            let mut unknown = Vec::new();
            let mut decode = Vec::new();
            let mut causes = Vec::new();
            for v in violations {
                if let Some(field) = unknown_field(&v.message) {
                    let path = if v.field.is_empty() {
                        field
                    } else {
                        format!("{}.{field}", v.field)
                    };
                    unknown.push(format!("unknown field {path:?}"));
                } else if v.message.contains("is a required property") {
                    let missing = v.message.split('"').nth(1).unwrap_or("").to_string();
                    let path = if v.field.is_empty() {
                        missing
                    } else {
                        format!("{}.{missing}", v.field)
                    };
                    causes.push(Cause::required(path));
                } else {
                    decode.push(format!("{}: {}", v.field, v.message));
                }
            }
            if !decode.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{} in version {:?} cannot be handled as a {}: {}",
                    resource.kind(),
                    resource.api_version().rsplit('/').next().unwrap_or("v1"),
                    resource.kind(),
                    decode.join("; ")
                )));
            }
            if !unknown.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    unknown.join(", ")
                )));
            }
            if !causes.is_empty() {
                return Err(ApiError::invalid(resource, &name, causes));
            }
        }
        Err(other) => return Err(ApiError::bad_request(other.to_string())),
    }
    let mut causes = Vec::new();
    check_metadata(resource, object, &mut causes);
    match resource {
        Resource::Jobs => check_job(object, &mut causes),
        Resource::Pods => check_pod_spec(&object["spec"], "spec", &mut causes),
        Resource::Events => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(resource, &name, causes))
    }
}

/// `Additional properties are not allowed ('x' was unexpected)` → `x`.
fn unknown_field(message: &str) -> Option<String> {
    if !message.contains("Additional properties are not allowed") {
        return None;
    }
    message.split('\'').nth(1).map(str::to_string)
}

fn check_metadata(resource: Resource, object: &Value, causes: &mut Vec<Cause>) {
    let meta = &object["metadata"];
    match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(name), _) => {
            if !is_dns1123_subdomain(name) {
                causes.push(Cause::invalid("metadata.name", &meta["name"], "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
            } else if resource == Resource::Jobs && name.len() > DNS1123_LABEL_MAX {
                // The Job's name becomes the job-name label of its Pods.
                causes.push(Cause::invalid(
                    "metadata.name",
                    &meta["name"],
                    "must be no more than 63 characters",
                ));
            }
        }
        (None, Some(_)) => {}
        (None, None) => causes.push(Cause::required("metadata.name")),
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for e in label_key_errors(k) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    &Value::String(k.clone()),
                    &e,
                ));
            }
            for e in label_value_errors(v.as_str().unwrap_or("")) {
                causes.push(Cause::invalid("metadata.labels", v, &e));
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let total: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: may not be more than 262144 bytes (got {total})"),
            });
        }
        for k in annotations.keys() {
            for e in label_key_errors(k) {
                causes.push(Cause::invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    &e,
                ));
            }
        }
    }
}

fn check_job(job: &Value, causes: &mut Vec<Cause>) {
    let spec = &job["spec"];
    for (field, min) in [
        ("backoffLimit", 0),
        ("activeDeadlineSeconds", 1),
        ("ttlSecondsAfterFinished", 0),
        ("parallelism", 0),
        ("completions", 0),
    ] {
        if let Some(n) = spec[field].as_i64() {
            if n < min {
                let detail = if min == 0 {
                    "must be greater than or equal to 0"
                } else {
                    "must be greater than 0"
                };
                causes.push(Cause::invalid(
                    format!("spec.{field}"),
                    &spec[field],
                    detail,
                ));
            }
        }
    }
    let template = &spec["template"];
    if template.is_null() {
        causes.push(Cause::required("spec.template"));
        return;
    }
    let restart = &template["spec"]["restartPolicy"];
    match restart.as_str() {
        Some("Never") | Some("OnFailure") => {}
        None => causes.push(Cause::required("spec.template.spec.restartPolicy")),
        Some(_) => causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            restart,
            &["OnFailure", "Never"],
        )),
    }
    check_pod_spec(&template["spec"], "spec.template.spec", causes);
}

/// pkg/apis/core/validation's ValidatePodSpec, for the fields tasks use.
pub fn check_pod_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    if let Some(r) = spec["restartPolicy"].as_str() {
        if !matches!(r, "Always" | "OnFailure" | "Never") {
            causes.push(Cause::not_supported(
                format!("{at}.restartPolicy"),
                &spec["restartPolicy"],
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    let mut volumes = Vec::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = v["name"].as_str().unwrap_or("");
        let field = format!("{at}.volumes[{i}].name");
        if !is_dns1123_label(name) {
            causes.push(Cause::invalid(field.clone(), &v["name"], "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
        }
        if volumes.contains(&name) {
            causes.push(Cause::duplicate(field, &v["name"]));
        }
        volumes.push(name);
        // With the ImageVolume feature gate off (beta in 1.33, still off by
        // default) the API server drops `image` before validating
        // (pkg/api/pod/util.go dropDisabledFields), so the volume has no
        // type left.
        let gate_off = !IMAGE_VOLUME_GATE.load(std::sync::atomic::Ordering::Relaxed);
        let sources = v.as_object().map_or(0, |o| {
            o.keys()
                .filter(|k| *k != "name" && !(gate_off && *k == "image"))
                .count()
        });
        if sources == 0 {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{at}.volumes[{i}]"),
                message: "Required value: must specify a volume type".into(),
            });
        } else if sources > 1 {
            causes.push(Cause::forbidden(
                format!("{at}.volumes[{i}]"),
                "may not specify more than 1 volume type",
            ));
        }
    }
    let mut names: Vec<String> = Vec::new();
    let init = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let main = spec["containers"].as_array().cloned().unwrap_or_default();
    if main.is_empty() {
        causes.push(Cause::required(format!("{at}.containers")));
    }
    for (list, items) in [("initContainers", &init), ("containers", &main)] {
        for (i, c) in items.iter().enumerate() {
            let p = format!("{at}.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or("");
            if !is_dns1123_label(name) {
                causes.push(Cause::invalid(format!("{p}.name"), &c["name"], "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
            }
            if names.iter().any(|n| n == name) {
                causes.push(Cause::duplicate(format!("{p}.name"), &c["name"]));
            }
            names.push(name.to_string());
            if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                causes.push(Cause::required(format!("{p}.image")));
            }
            if let Some(policy) = c["imagePullPolicy"].as_str() {
                if !matches!(policy, "Always" | "IfNotPresent" | "Never") {
                    causes.push(Cause::not_supported(
                        format!("{p}.imagePullPolicy"),
                        &c["imagePullPolicy"],
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
            for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                let n = e["name"].as_str().unwrap_or("");
                if n.is_empty() {
                    causes.push(Cause::required(format!("{p}.env[{j}].name")));
                } else if n.bytes().next().is_some_and(|b| b.is_ascii_digit())
                    || !n
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
                {
                    causes.push(Cause::invalid(format!("{p}.env[{j}].name"), &e["name"], "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"));
                }
                if e.get("value").is_some_and(|v| !v.is_null())
                    && e.get("valueFrom").is_some_and(|v| !v.is_null())
                {
                    causes.push(Cause::invalid(
                        format!("{p}.env[{j}].valueFrom"),
                        &Value::String(String::new()),
                        "may not be specified when `value` is not empty",
                    ));
                }
            }
            let mut paths = Vec::new();
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let vn = m["name"].as_str().unwrap_or("");
                if !volumes.contains(&vn) {
                    causes.push(Cause::not_found(
                        format!("{p}.volumeMounts[{j}].name"),
                        &m["name"],
                    ));
                }
                let path = m["mountPath"].as_str().unwrap_or("");
                if path.is_empty() {
                    causes.push(Cause::required(format!("{p}.volumeMounts[{j}].mountPath")));
                } else if paths.contains(&path) {
                    causes.push(Cause::invalid(
                        format!("{p}.volumeMounts[{j}].mountPath"),
                        &m["mountPath"],
                        "must be unique",
                    ));
                }
                paths.push(path);
            }
            check_resources(&c["resources"], &format!("{p}.resources"), causes);
            if list == "initContainers"
                && c["lifecycle"].is_object()
                && c["restartPolicy"].as_str() != Some("Always")
            {
                causes.push(Cause::forbidden(
                    format!("{p}.lifecycle"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
}

fn check_resources(resources: &Value, at: &str, causes: &mut Vec<Cause>) {
    for kind in ["requests", "limits"] {
        for (name, q) in resources[kind].as_object().into_iter().flatten() {
            if parse_quantity(q).is_none() {
                causes.push(Cause::invalid(
                    format!("{at}.{kind}[{name}]"),
                    q,
                    "must be a valid quantity",
                ));
            }
        }
    }
    for (name, req) in resources["requests"].as_object().into_iter().flatten() {
        if let (Some(r), Some(l)) = (
            parse_quantity(req),
            resources["limits"].get(name).and_then(parse_quantity),
        ) {
            if r > l {
                causes.push(Cause::invalid(
                    format!("{at}.requests[{name}]"),
                    req,
                    &format!(
                        "must be less than or equal to {name} limit of {}",
                        resources["limits"][name].as_str().unwrap_or("")
                    ),
                ));
            }
        }
    }
}

/// A resource.Quantity's value (bytes for memory, cores for CPU), or None.
pub fn parse_quantity(q: &Value) -> Option<f64> {
    if let Some(n) = q.as_f64() {
        return Some(n);
    }
    let s = q.as_str()?.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

/// DeleteOptions bodies: schema-checked as meta/v1 DeleteOptions.
pub fn check_delete_options(body: &Value) -> Result<(), ApiError> {
    Schemas::global()
        .validate_as("v1", "DeleteOptions", body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(p) = body["propagationPolicy"].as_str() {
        if !matches!(p, "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!("propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\"")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(name: &str) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "task", "image": "busybox"}]}}}})
    }

    #[test]
    fn a_valid_job_passes_and_names_are_checked() {
        check(Resource::Jobs, &job("oz-task-1")).unwrap();
        let e = check(Resource::Jobs, &job("Bad_Name")).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.body["details"]["causes"][0]["field"], "metadata.name");
        let e = check(Resource::Jobs, &job(&"a".repeat(64))).unwrap_err();
        assert!(
            e.body["message"]
                .as_str()
                .unwrap()
                .contains("must be no more than 63 characters"),
            "{}",
            e.body
        );
    }

    #[test]
    fn restart_policy_always_is_unsupported_for_a_job() {
        let mut j = job("j");
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        let e = check(Resource::Jobs, &j).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.body["reason"], "Invalid");
        assert_eq!(
            e.body["message"],
            "Job.batch \"j\" is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
    }

    #[test]
    fn unknown_fields_are_a_strict_decoding_error() {
        let mut j = job("j");
        j["spec"]["bakoffLimit"] = json!(0);
        let e = check(Resource::Jobs, &j).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.body["message"],
            "strict decoding error: unknown field \"spec.bakoffLimit\""
        );
    }

    #[test]
    fn mounts_must_name_a_volume_and_requests_fit_limits() {
        let mut j = job("j");
        j["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "workspace", "mountPath": "/workspace"}]);
        j["spec"]["template"]["spec"]["containers"][0]["resources"] =
            json!({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}});
        let e = check(Resource::Jobs, &j).unwrap_err();
        let fields: Vec<&str> = e.body["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&"spec.template.spec.containers[0].volumeMounts[0].name"),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.template.spec.containers[0].resources.requests[memory]"),
            "{fields:?}"
        );
    }

    #[test]
    fn an_image_volume_has_no_type_while_its_gate_is_off() {
        let mut j = job("j");
        j["spec"]["template"]["spec"]["volumes"] = json!([{"name": "sidecar-0-image", "image": {"reference": "busybox", "pullPolicy": "IfNotPresent"}}]);
        let e = check(Resource::Jobs, &j).unwrap_err();
        assert_eq!(e.code, 422, "{}", e.body);
        assert_eq!(
            e.body["details"]["causes"][0]["field"],
            "spec.template.spec.volumes[0]"
        );
        assert_eq!(
            e.body["details"]["causes"][0]["message"],
            "Required value: must specify a volume type"
        );
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity(&json!("128Mi")), Some(134217728.0));
        assert_eq!(parse_quantity(&json!("100m")), Some(0.1));
        assert_eq!(parse_quantity(&json!("1")), Some(1.0));
        assert_eq!(parse_quantity(&json!("1x")), None);
    }
}
