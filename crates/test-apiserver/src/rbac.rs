//! Authorization of the token against one RBAC Role (`--rbac-role FILE`,
//! e.g. deploy/kubernetes/base/role.yaml), as kube-apiserver's RBAC
//! authorizer decides for a service account bound to it: a request whose
//! verb, API group and resource (with subresource) no rule grants is a 403
//! Forbidden Status naming them. Without a Role every request is allowed.
//! Discovery (`/version`, `/api`, `/apis`, `/openapi`) is always allowed, as
//! `system:discovery` grants it to every authenticated user.

use serde_json::{json, Value};

use crate::meta::ApiError;

/// One PolicyRule.
#[derive(Debug, Clone)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

/// The rules of the bound Role and the user it is bound to.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub user: String,
    /// The Role's namespace: requests elsewhere are forbidden.
    pub namespace: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Why the `--rbac` Role file was refused: `PATH: PROBLEM`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct LoadError {
    pub path: std::path::PathBuf,
    #[source]
    pub problem: RoleProblem,
}

/// What is wrong with a Role file.
#[derive(Debug, thiserror::Error)]
pub enum RoleProblem {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Parse(#[source] serde_norway::Error),
    /// Its `kind` (as JSON) is not `Role`.
    #[error("not a Role (kind {0})")]
    NotARole(String),
    #[error("{0}")]
    Invalid(#[source] crate::schema::SchemaError),
}

impl Policy {
    /// Reads a Role (YAML or JSON); `namespace` is where it is bound.
    pub fn load(path: &std::path::Path, namespace: &str) -> Result<Policy, LoadError> {
        let at = |problem| LoadError {
            path: path.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| at(RoleProblem::Read(e)))?;
        let role: Value = serde_norway::from_str(&text).map_err(|e| at(RoleProblem::Parse(e)))?;
        if role["kind"] != "Role" {
            return Err(at(RoleProblem::NotARole(role["kind"].to_string())));
        }
        crate::schema::Schemas::global()
            .validate(&role)
            .map_err(|e| at(RoleProblem::Invalid(e)))?;
        let rules = role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Rule {
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                verbs: strings(&r["verbs"]),
                names: strings(&r["resourceNames"]),
            })
            .collect();
        let account = role["metadata"]["name"]
            .as_str()
            .unwrap_or("oz-agent-worker");
        Ok(Policy {
            rules,
            user: format!("system:serviceaccount:{namespace}:{account}"),
            namespace: namespace.to_string(),
        })
    }

    /// Allows or refuses one request. `resource` includes the subresource
    /// (`pods/log`); `name` is empty for collections.
    pub fn authorize(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let in_namespace = namespace == Some(self.namespace.as_str());
        let allowed = in_namespace
            && self.rules.iter().any(|r| {
                let any = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
                any(&r.groups, group)
                    && any(&r.resources, resource)
                    && any(&r.verbs, verb)
                    && (r.names.is_empty() || r.names.iter().any(|n| n == name))
            });
        if allowed {
            return Ok(());
        }
        let (plural, sub) = resource
            .split_once('/')
            .map_or((resource, ""), |(p, s)| (p, s));
        let qualified = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let subject = if name.is_empty() {
            qualified.clone()
        } else {
            format!("{qualified} {name:?}")
        };
        let what = if sub.is_empty() {
            format!("resource {plural:?}")
        } else {
            format!("resource \"{plural}/{sub}\"")
        };
        let place = match namespace {
            Some(ns) => format!(" in the namespace {ns:?}"),
            None => " at the cluster scope".to_string(),
        };
        let message = format!(
            "{subject} is forbidden: User {:?} cannot {verb} {what} in API group {group:?}{place}",
            self.user
        );
        Err(ApiError {
            code: 403,
            body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "Forbidden",
                "details": {"group": group, "kind": plural}, "code": 403}),
        })
        .map_err(|mut e: ApiError| {
            if !name.is_empty() {
                e.body["details"]["name"] = json!(name);
            }
            e
        })
    }
}
