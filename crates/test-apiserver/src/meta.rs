//! Object metadata helpers and the `Status` bodies Kubernetes answers errors
//! with (k8s.io/apimachinery/pkg/api/errors), byte for byte where clients
//! read them: `reason`, `code`, `details.{name,group,kind,causes}`.

use serde_json::{json, Value};

/// metav1.Time: RFC 3339 with second precision, UTC.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses a metav1.Time (or any RFC 3339 time).
pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A random version-4 UUID, as the API server gives `metadata.uid`.
pub fn uid() -> String {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The 5-character suffix `generateName` gets (apiserver's
/// names.SimpleNameGenerator alphabet: no vowels, no look-alikes).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// One REST resource this server serves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Resource {
    Jobs,
    Pods,
    Events,
}

impl Resource {
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Jobs => "jobs",
            Resource::Pods => "pods",
            Resource::Events => "events",
        }
    }
    pub fn group(self) -> &'static str {
        match self {
            Resource::Jobs => "batch",
            _ => "",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Jobs => "batch/v1",
            _ => "v1",
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Jobs => "Job",
            Resource::Pods => "Pod",
            Resource::Events => "Event",
        }
    }
    /// `jobs.batch`, `pods`: how Status messages name the resource.
    pub fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
    /// `Job.batch`, `Pod`: how Invalid messages name the kind.
    pub fn qualified_kind(self) -> String {
        if self.group().is_empty() {
            self.kind().to_string()
        } else {
            format!("{}.{}", self.kind(), self.group())
        }
    }
    pub fn from_plural(group: &str, plural: &str) -> Option<Resource> {
        match (group, plural) {
            ("batch", "jobs") => Some(Resource::Jobs),
            ("", "pods") => Some(Resource::Pods),
            ("", "events") => Some(Resource::Events),
            _ => None,
        }
    }
}

/// One field-level cause of an Invalid answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`,
    /// `FieldValueDuplicate`, `FieldValueTooLong`, `FieldValueForbidden`.
    pub reason: &'static str,
    /// `spec.template.spec.restartPolicy`.
    pub field: String,
    /// `Unsupported value: "Always": supported values: "OnFailure", "Never"`.
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", go_value(value)),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Cause {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_value(value),
                list.join(", ")
            ),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", go_value(value)),
        }
    }
    pub fn not_found(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueNotFound",
            field: field.into(),
            message: format!("Not found: {}", go_value(value)),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// A value as field.Error prints it: strings quoted, numbers bare.
fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// An API error: the HTTP code and the `Status` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
}

impl ApiError {
    fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> ApiError {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if let Some(d) = details {
            body["details"] = d;
        }
        ApiError { code, body }
    }

    pub fn not_found(resource: Resource, name: &str) -> ApiError {
        Self::status(
            404,
            "NotFound",
            format!("{} {name:?} not found", resource.qualified()),
            Some(json!({"name": name, "group": resource.group(), "kind": resource.plural()})),
        )
    }

    pub fn already_exists(resource: Resource, name: &str) -> ApiError {
        Self::status(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", resource.qualified()),
            Some(json!({"name": name, "group": resource.group(), "kind": resource.plural()})),
        )
    }

    pub fn conflict(resource: Resource, name: &str) -> ApiError {
        Self::status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                resource.qualified()
            ),
            Some(json!({"name": name, "group": resource.group(), "kind": resource.plural()})),
        )
    }

    pub fn invalid(resource: Resource, name: &str, causes: Vec<Cause>) -> ApiError {
        Self::invalid_kind(
            &resource.qualified_kind(),
            resource.group(),
            resource.kind(),
            name,
            causes,
        )
    }

    /// 422 Invalid for the options of a request (a kind of the core group
    /// that is not stored, such as `PodLogOptions`).
    pub fn invalid_options(kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        Self::invalid_kind(kind, "", kind, name, causes)
    }

    fn invalid_kind(
        qualified_kind: &str,
        group: &str,
        kind: &str,
        name: &str,
        causes: Vec<Cause>,
    ) -> ApiError {
        let list: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let message = if list.len() == 1 {
            format!("{qualified_kind} {name:?} is invalid: {}", list[0])
        } else {
            format!(
                "{qualified_kind} {name:?} is invalid: [{}]",
                list.join(", ")
            )
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::status(
            422,
            "Invalid",
            message,
            Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::status(400, "BadRequest", message.into(), None)
    }

    pub fn unauthorized() -> ApiError {
        Self::status(401, "Unauthorized", "Unauthorized".into(), None)
    }

    pub fn path_not_found() -> ApiError {
        Self::status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    pub fn method_not_allowed(method: &str) -> ApiError {
        Self::status(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
            Some(json!({})),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        Self::status(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json (got {content_type:?})"),
            None,
        )
    }

    /// 410 Gone for a watch or list from a compacted resourceVersion.
    pub fn gone(requested: u64, oldest: u64) -> ApiError {
        Self::status(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
            None,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::status(500, "InternalError", message.into(), None)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.code,
            self.body["message"].as_str().unwrap_or("")
        )
    }
}

impl std::error::Error for ApiError {}

/// The `Status` a successful delete of an already-gone object answers.
pub fn success_status(resource: Resource, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": resource.group(), "kind": resource.plural(), "uid": uid}
    })
}
