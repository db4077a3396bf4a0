//! Label selectors (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
//! `a`, `!a`) and field selectors (`f=v`, `f==v`, `f!=v` over the fields
//! each resource supports), parsed as k8s.io/apimachinery/pkg/labels and
//! pkg/fields do, with the same errors for what they refuse.

use serde_json::Value;

use crate::meta::Resource;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas outside parentheses.
fn split_top(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in text.chars() {
        match ch {
            '(' => {
                depth += 1;
                cur.push(ch)
            }
            ')' => {
                depth -= 1;
                cur.push(ch)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out
}

fn valid_key(key: &str) -> bool {
    crate::validation::label_key_errors(key).is_empty()
}

fn valid_value(value: &str) -> bool {
    crate::validation::label_value_errors(value).is_empty()
}

impl LabelSelector {
    /// Parses `labelSelector`; the error is the message the API server
    /// puts in its 400 answer.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let mut reqs = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(text) {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError::EmptyRequirement(text.to_owned()));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = split_word(part, "notin") {
                Requirement::NotIn(k, set(rest, text)?)
            } else if let Some((k, rest)) = split_word(part, "in") {
                Requirement::In(k, set(rest, text)?)
            } else {
                Requirement::Exists(part.to_string())
            };
            let (key, values): (&str, Vec<&str>) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v.as_str()]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                    (k, vs.iter().map(String::as_str).collect())
                }
                Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(SelectorError::InvalidKey(key.to_owned()));
            }
            for v in values {
                if !valid_value(v) {
                    return Err(SelectorError::InvalidValue {
                        value: v.to_owned(),
                        key: key.to_owned(),
                    });
                }
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v),
            Requirement::NotEquals(k, v) => get(k) != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// `key in (…)` → (key, "(…)") when `word` stands alone between them.
fn split_word(part: &str, word: &str) -> Option<(String, String)> {
    let idx = part
        .find(&format!(" {word} "))
        .or_else(|| part.find(&format!(" {word}(")))?;
    let key = part[..idx].trim().to_string();
    let rest = part[idx + word.len() + 1..].trim().to_string();
    Some((key, rest))
}

fn set(rest: String, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError::NoSet {
            found: rest.clone(),
            whole: whole.to_owned(),
        })?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().all(String::is_empty) {
        return Err(SelectorError::EmptySet(whole.to_owned()));
    }
    Ok(values)
}

/// A refused label or field selector, worded as the real API server's
/// answer (a 400 `BadRequest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement: found '', expected: identifier in {0:?}")]
    EmptyRequirement(String),
    #[error("unable to parse requirement: invalid label key {0:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")]
    InvalidKey(String),
    #[error("unable to parse requirement: invalid label value: {value:?}: at key: {key:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")]
    InvalidValue { value: String, key: String },
    #[error("unable to parse requirement: found {found:?}, expected: '(' in {whole:?}")]
    NoSet { found: String, whole: String },
    #[error("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty in {0:?}")]
    EmptySet(String),
    #[error("invalid selector: '{0}'; can't understand '{0}'")]
    Unparsable(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// A parsed field selector over the fields the resource supports.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The field selectors each resource accepts (pkg/registry/*/strategy.go).
fn supported(resource: Resource, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || match resource {
            Resource::Jobs => field == "status.successful",
            Resource::Pods => matches!(
                field,
                "spec.nodeName"
                    | "spec.restartPolicy"
                    | "spec.schedulerName"
                    | "spec.serviceAccountName"
                    | "status.phase"
                    | "status.podIP"
                    | "status.nominatedNodeName"
            ),
            Resource::Events => matches!(
                field,
                "involvedObject.kind"
                    | "involvedObject.namespace"
                    | "involvedObject.name"
                    | "involvedObject.uid"
                    | "involvedObject.apiVersion"
                    | "involvedObject.resourceVersion"
                    | "involvedObject.fieldPath"
                    | "reason"
                    | "reportingComponent"
                    | "source"
                    | "type"
            ),
        }
}

impl FieldSelector {
    pub fn parse(resource: Resource, text: &str) -> Result<FieldSelector, SelectorError> {
        let mut out = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector(out));
        }
        for part in text.split(',') {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError::Unparsable(part.to_owned()));
            };
            let field = field.trim();
            if !supported(resource, field) {
                return Err(SelectorError::UnsupportedField(field.to_owned()));
            }
            out.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = if field == "source" {
                object["source"]["component"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            } else {
                let mut v = object;
                for seg in field.split('.') {
                    v = &v[seg];
                }
                match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                }
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n", "labels": labels}})
    }

    #[test]
    fn label_operators_match_as_kubernetes() {
        let o = obj(json!({"app": "oz", "tier": "task"}));
        for (sel, want) in [
            ("app=oz", true),
            ("app==oz", true),
            ("app!=oz", false),
            ("app in (oz,x)", true),
            ("app notin (oz)", false),
            ("app,tier", true),
            ("!missing", true),
            ("!app", false),
            ("missing!=x", true),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app=oz,tier in (task, other)", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for sel in ["app in ()", "app=a b", "-bad=x", "app in x"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn field_selectors_know_their_fields() {
        let e = json!({"metadata": {"name": "x"}, "involvedObject": {"name": "p", "kind": "Pod"}, "reason": "Failed"});
        assert!(
            FieldSelector::parse(Resource::Events, "involvedObject.name=p,reason!=Pulled")
                .unwrap()
                .matches(&e)
        );
        assert!(
            !FieldSelector::parse(Resource::Events, "involvedObject.kind=Job")
                .unwrap()
                .matches(&e)
        );
        let err = FieldSelector::parse(Resource::Jobs, "spec.foo=1").unwrap_err();
        assert_eq!(err.to_string(), "field label not supported: spec.foo");
    }
}
