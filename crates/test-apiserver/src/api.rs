//! The REST surface: discovery, namespaced Jobs, Pods and Events (create,
//! get, list, watch, update, patch, delete), `pods/{name}/log`, and the
//! admin hooks tests use (`/admin/compact`, `/admin/close-watches`,
//! `/admin/evict`, `/admin/fail-next`, `/admin/hold`). Every answer is JSON as kube-apiserver writes it;
//! errors are `Status` objects.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::controller;
use crate::docker::Docker;
use crate::meta::{self, ApiError, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Change, Entry, Shared};
use crate::validation;

pub type Body = BoxBody<Bytes, Infallible>;

/// A body fed line by line from a channel (watches, followed logs).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .header("cache-control", "no-cache, private")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        "application/json",
        serde_json::to_vec(value).unwrap(),
    )
}

fn error(e: ApiError) -> Response<Body> {
    json_response(e.code, &e.body)
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "1" || v == "true")
}

/// Failures to inject (`POST /admin/fail-next?count=N&code=C[&verb=V]
/// [&resource=R][&applied=true]`): the next N requests (only those with the
/// Kubernetes verb V, e.g. `create`, `get`, `list`, `watch`, and on
/// resource R, e.g. `jobs`, when given) are answered with C; with
/// `applied` (V or R given) each is carried out first and only its answer
/// replaced, as when kube-apiserver stored an object and then failed, or
/// the answer was lost on the way. `GET /admin/fail-next` says how many are
/// left and how many were served.
#[derive(Debug, Default)]
pub struct FailNext {
    pub count: u32,
    pub code: u16,
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub applied: bool,
    pub served: u32,
}

/// A meeting point (`POST /admin/hold?verb=V&resource=R&count=N
/// [&timeout_ms=T]`): the next N requests with verb V on resource R each
/// wait until all N have arrived (or T ms, 30,000 by default, have
/// passed since the first), then go on together. It makes two clients'
/// requests race for real (both read the same resourceVersion, then both
/// write) where their timing alone would let one finish first.
#[derive(Debug)]
pub struct Hold {
    verb: String,
    resource: String,
    count: u32,
    timeout: Duration,
    /// How many have arrived so far.
    arrived: tokio::sync::watch::Sender<u32>,
}

/// What a handler needs besides the request.
#[derive(Clone)]
pub struct Ctx {
    /// The failures `/admin/fail-next` asked for.
    pub fail_next: Arc<std::sync::Mutex<FailNext>>,
    /// The meeting point `/admin/hold` set up, until it is complete.
    pub hold: Arc<std::sync::Mutex<Option<Hold>>>,
    pub policy: Option<Arc<crate::rbac::Policy>>,
    /// The requests the Role refused (`GET /admin/forbidden`), each as
    /// `VERB GROUP/RESOURCE NAME`, so a test can prove a client never
    /// needed more than the Role grants (a client may retry or hide a 403).
    pub forbidden: Arc<std::sync::Mutex<Vec<String>>>,
    pub shared: Arc<Shared>,
    pub docker: Docker,
    pub token: String,
    pub address: String,
}

/// Serves one request.
pub async fn handle(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if matches!(path.as_str(), "/livez" | "/readyz" | "/healthz") {
        return Ok(full(StatusCode::OK, "text/plain; charset=utf-8", "ok"));
    }
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == ctx.token);
    if !authorized {
        return Ok(error(ApiError::unauthorized()));
    }
    if !path.starts_with("/admin/") {
        if let Some((code, _)) = take_injected_failure(&ctx, None) {
            return Ok(injected(code));
        }
    }
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = query(&req);
    let resp = match segs.as_slice() {
        ["version"] => json_response(200, &version()),
        ["api"] => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ctx.address}]}),
        ),
        ["apis"] => json_response(
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [batch_group()]}),
        ),
        ["apis", "batch"] => json_response(200, &{
            let mut g = batch_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        }),
        ["api", "v1"] => json_response(200, &core_resources()),
        ["apis", "batch", "v1"] => json_response(200, &batch_resources()),
        ["openapi", "v3"] => json_response(
            200,
            &json!({"paths": {
                "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=0001"},
                "apis/batch/v1": {"serverRelativeURL": "/openapi/v3/apis/batch/v1?hash=0001"},
            }}),
        ),
        ["openapi", "v3", "api", "v1"] => json_response(
            200,
            &openapi_v3(&[
                ("", "Pod", "/api/v1/namespaces/{namespace}/pods/{name}"),
                ("", "Event", "/api/v1/namespaces/{namespace}/events/{name}"),
            ]),
        ),
        ["openapi", "v3", "apis", "batch", "v1"] => json_response(
            200,
            &openapi_v3(&[(
                "batch",
                "Job",
                "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
            )]),
        ),
        ["admin", rest @ ..] => admin(&ctx, req.method(), rest, &q),
        ["api", "v1", rest @ ..] => resource_route(&ctx, req, "", rest, q).await,
        ["apis", "batch", "v1", rest @ ..] => resource_route(&ctx, req, "batch", rest, q).await,
        _ => error(ApiError::path_not_found()),
    };
    Ok(resp)
}

/// The injected failure for this request, if one is due: any request when
/// the failure names no verb or resource (`request` None), else only a
/// resource request (`request` = (verb, resource)) that matches.
fn take_injected_failure(ctx: &Ctx, request: Option<(&str, &str)>) -> Option<(u16, bool)> {
    let mut f = ctx.fail_next.lock().unwrap();
    if f.count == 0 {
        return None;
    }
    let filtered = f.verb.is_some() || f.resource.is_some();
    let due = match request {
        None => !filtered,
        Some((verb, resource)) => {
            filtered
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == resource)
        }
    };
    if !due {
        return None;
    }
    f.count -= 1;
    f.served += 1;
    Some((f.code, f.applied && filtered))
}

/// Waits at the meeting point when this request is one of those it holds.
async fn meet(ctx: &Ctx, verb: &str, resource: &str) {
    let (mut arrived, count, timeout) = {
        let mut hold = ctx.hold.lock().unwrap();
        let Some(h) = hold.as_mut() else {
            return;
        };
        if h.verb != verb || h.resource != resource {
            return;
        }
        let n = *h.arrived.borrow() + 1;
        h.arrived.send_replace(n);
        let waiting = (h.arrived.subscribe(), h.count, h.timeout);
        if n >= h.count {
            *hold = None;
        }
        waiting
    };
    let all_here = arrived.wait_for(|n| *n >= count);
    let _ = tokio::time::timeout(timeout, all_here).await;
}

/// The answers an overloaded or failing API server gives: 429 from API
/// priority and fairness (with Retry-After), 500, 503.
fn injected(code: u16) -> Response<Body> {
    let (reason, message) = match code {
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.",
        ),
        500 => (
            "InternalError",
            "Internal error occurred: injected by the test",
        ),
        _ => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
    };
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    if code == 429 {
        body["details"] = json!({"retryAfterSeconds": 1});
    }
    let mut r = json_response(code, &body);
    if code == 429 {
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
    }
    r
}

fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-oz-test", "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64"})
}

/// Just enough OpenAPI v3 for kubectl to learn that the server does
/// field validation itself (the `fieldValidation` query parameter on each
/// kind's PATCH), so `kubectl create`/`apply` send bodies unvalidated with
/// `fieldValidation=Strict` instead of needing the whole schema. The
/// schemas themselves are the vendored ones this server validates with.
fn openapi_v3(kinds: &[(&str, &str, &str)]) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, kind, path) in kinds {
        let op = json!({
            "x-kubernetes-group-version-kind": {"group": group, "kind": kind, "version": "v1"},
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path.to_string(), json!({"patch": op}));
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": {}}})
}

fn batch_group() -> Value {
    json!({"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}], "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}})
}

fn core_resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [
        {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event", "verbs": ["create", "delete", "get", "list", "watch"], "shortNames": ["ev"]},
        {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["po"], "categories": ["all"]},
        {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
        {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "patch", "update"]},
    ]})
}

fn batch_resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "batch/v1", "resources": [
        {"name": "jobs", "singularName": "job", "namespaced": true, "kind": "Job", "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "categories": ["all"]},
        {"name": "jobs/status", "singularName": "", "namespaced": true, "kind": "Job", "verbs": ["get", "patch", "update"]},
    ]})
}

fn admin(ctx: &Ctx, method: &Method, rest: &[&str], q: &HashMap<String, String>) -> Response<Body> {
    if method == Method::GET && rest == ["fail-next"] {
        let f = ctx.fail_next.lock().unwrap();
        return json_response(
            200,
            &json!({"failing": f.count, "code": f.code, "served": f.served}),
        );
    }
    if method == Method::GET && rest == ["forbidden"] {
        let v = ctx.forbidden.lock().unwrap().clone();
        return json_response(200, &json!({"forbidden": v}));
    }
    if method == Method::GET && rest == ["self-check"] {
        let v = ctx.shared.read(|s| s.self_check().to_vec());
        return json_response(200, &json!({"violations": v}));
    }
    if method != Method::POST {
        return error(ApiError::method_not_allowed(method.as_str()));
    }
    match rest {
        ["compact"] => {
            let rv = ctx.shared.compact();
            json_response(200, &json!({"compactedTo": rv.to_string()}))
        }
        ["fail-next"] => {
            let count: u32 = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
            let code: u16 = q.get("code").and_then(|c| c.parse().ok()).unwrap_or(503);
            if !matches!(code, 429 | 500 | 503) {
                return error(ApiError::bad_request("code must be 429, 500 or 503"));
            }
            let (verb, resource) = (q.get("verb").cloned(), q.get("resource").cloned());
            let applied = truthy(q, "applied");
            if applied && verb.is_none() && resource.is_none() {
                return error(ApiError::bad_request(
                    "applied needs verb or resource: only resource requests are carried out",
                ));
            }
            *ctx.fail_next.lock().unwrap() = FailNext {
                count,
                code,
                verb,
                resource,
                applied,
                served: 0,
            };
            json_response(
                200,
                &json!({"failing": count, "code": code, "applied": applied}),
            )
        }
        ["hold"] => {
            let (Some(verb), Some(resource)) = (q.get("verb"), q.get("resource")) else {
                return error(ApiError::bad_request("verb and resource are required"));
            };
            let count: u32 = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(2);
            let timeout_ms: u64 = q
                .get("timeout_ms")
                .and_then(|t| t.parse().ok())
                .unwrap_or(30_000);
            *ctx.hold.lock().unwrap() = Some(Hold {
                verb: verb.clone(),
                resource: resource.clone(),
                count,
                timeout: Duration::from_millis(timeout_ms),
                arrived: tokio::sync::watch::Sender::new(0),
            });
            json_response(
                200,
                &json!({"holding": count, "verb": verb, "resource": resource}),
            )
        }
        ["close-watches"] => {
            ctx.shared.close_watches.send_modify(|g| *g += 1);
            json_response(200, &json!({"closed": true}))
        }
        ["evict"] => {
            let ns = q.get("namespace").map(String::as_str).unwrap_or("default");
            let Some(name) = q.get("name") else {
                return error(ApiError::bad_request("name is required"));
            };
            if crate::kubelet::evict(&ctx.shared, ns, name) {
                json_response(200, &json!({"evicted": name}))
            } else {
                error(ApiError::not_found(Resource::Pods, name))
            }
        }
        _ => error(ApiError::path_not_found()),
    }
}

async fn resource_route(
    ctx: &Ctx,
    req: Request<Incoming>,
    group: &str,
    rest: &[&str],
    q: HashMap<String, String>,
) -> Response<Body> {
    let (ns, plural, name, sub): (Option<&str>, &str, Option<&str>, Option<&str>) = match rest {
        [plural] => (None, plural, None, None),
        ["namespaces", ns, plural] => (Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => (Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => (Some(ns), plural, Some(name), Some(sub)),
        _ => return error(ApiError::path_not_found()),
    };
    let Some(resource) = Resource::from_plural(group, plural) else {
        return error(ApiError::path_not_found());
    };
    let method = req.method().clone();
    let verb = match (&method, name) {
        (&Method::GET, None) if truthy(&q, "watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, None) => "create",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::GET, Some(_)) => "get",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        _ => "unknown",
    };
    let full = match sub {
        Some(s) => format!("{plural}/{s}"),
        None => plural.to_string(),
    };
    if let Some(policy) = &ctx.policy {
        if let Err(e) = policy.authorize(verb, group, &full, ns, name.unwrap_or("")) {
            ctx.forbidden
                .lock()
                .unwrap()
                .push(format!("{verb} {group}/{full} {}", name.unwrap_or("")));
            return error(e);
        }
    }
    meet(ctx, verb, &full).await;
    let fault = take_injected_failure(ctx, Some((verb, &full)));
    if let Some((code, false)) = fault {
        return injected(code);
    }
    let response = match (name, sub, ns) {
        (None, None, _) => match method {
            Method::GET if truthy(&q, "watch") => watch(ctx, resource, ns, &q),
            Method::GET => list(ctx, resource, ns, &q),
            Method::POST if ns.is_some() => match body(req).await {
                Ok(b) => create(ctx, resource, ns.unwrap(), b, &q),
                Err(e) => error(e),
            },
            m => error(ApiError::method_not_allowed(m.as_str())),
        },
        (Some(name), None, Some(ns)) => match method {
            Method::GET => get(ctx, resource, ns, name),
            Method::PUT => match body(req).await {
                Ok(b) => replace(ctx, resource, ns, name, b, false),
                Err(e) => error(e),
            },
            Method::PATCH => {
                let ct = content_type(&req);
                match body(req).await {
                    Ok(b) => patch(ctx, resource, ns, name, &ct, b, false),
                    Err(e) => error(e),
                }
            }
            Method::DELETE => {
                let b = body(req).await.unwrap_or_default();
                delete(ctx, resource, ns, name, b, &q)
            }
            m => error(ApiError::method_not_allowed(m.as_str())),
        },
        (Some(name), Some("status"), Some(ns)) if resource != Resource::Events => match method {
            Method::GET => get(ctx, resource, ns, name),
            Method::PUT => match body(req).await {
                Ok(b) => replace(ctx, resource, ns, name, b, true),
                Err(e) => error(e),
            },
            Method::PATCH => {
                let ct = content_type(&req);
                match body(req).await {
                    Ok(b) => patch(ctx, resource, ns, name, &ct, b, true),
                    Err(e) => error(e),
                }
            }
            m => error(ApiError::method_not_allowed(m.as_str())),
        },
        (Some(name), Some("log"), Some(ns))
            if resource == Resource::Pods && method == Method::GET =>
        {
            crate::logs::serve(ctx, ns, name, &q).await
        }
        _ => error(ApiError::path_not_found()),
    };
    match fault {
        // Carried out; the client never learns it.
        Some((code, true)) => injected(code),
        _ => response,
    }
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

async fn body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let ct = content_type(&req);
    if !ct.is_empty()
        && !matches!(
            ct.as_str(),
            "application/json"
                | "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "*/*"
        )
    {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    Limited::new(req.into_body(), 3 * 1024 * 1024)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: the body is not an object",
        ));
    }
    Ok(v)
}

fn create(
    ctx: &Ctx,
    resource: Resource,
    ns: &str,
    bytes: Bytes,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let mut object = match parse_json(&bytes) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    if let Some(obj_ns) = object["metadata"]["namespace"].as_str() {
        if obj_ns != ns {
            return error(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
    }
    if object["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return error(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if let Err(e) = validation::check(resource, &object) {
        return error(e);
    }
    // Fields the server owns are reset on create.
    if let Some(m) = object["metadata"].as_object_mut() {
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            m.remove(k);
        }
    }
    if resource != Resource::Events {
        object.as_object_mut().unwrap().remove("status");
    }
    let uid = meta::uid();
    object["metadata"]["uid"] = json!(uid);
    match resource {
        Resource::Jobs => controller::default_job(&mut object, &uid),
        Resource::Pods => controller::default_pod_spec(&mut object["spec"]),
        Resource::Events => {}
    }
    if q.get("dryRun").is_some_and(|d| d == "All") {
        return json_response(201, &object);
    }
    match ctx.shared.with(|s| s.create(resource, ns, object)) {
        Ok(o) => json_response(201, &o),
        Err(e) => error(e),
    }
}

fn get(ctx: &Ctx, resource: Resource, ns: &str, name: &str) -> Response<Body> {
    match ctx.shared.read(|s| s.get(resource, ns, name).cloned()) {
        Some(o) => json_response(200, &o),
        None => error(ApiError::not_found(resource, name)),
    }
}

fn selectors(
    resource: Resource,
    q: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let f = FieldSelector::parse(
        resource,
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((l, f))
}

fn list(
    ctx: &Ctx,
    resource: Resource,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let (labels, fields) = match selectors(resource, q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let after: Option<(String, String)> = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            match decoded.as_deref().and_then(|d| d.split_once('/')) {
                Some((n, m)) => Some((n.to_string(), m.to_string())),
                None => return error(ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")),
            }
        }
        None => None,
    };
    let (rv, objects) = ctx.shared.read(|s| (s.rv(), s.list(resource, ns)));
    let mut items: Vec<Value> = objects
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .filter(|o| {
            after.as_ref().is_none_or(|(n, m)| {
                let key = (
                    o["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                );
                key > (n.clone(), m.clone())
            })
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if items.len() > limit {
        items.truncate(limit);
        let last = items.last().unwrap();
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}/{}",
            last["metadata"]["namespace"].as_str().unwrap_or(""),
            last["metadata"]["name"].as_str().unwrap_or("")
        ));
        meta["continue"] = json!(token);
    }
    // List items carry no TypeMeta, as kube-apiserver writes them.
    for i in &mut items {
        if let Some(o) = i.as_object_mut() {
            o.remove("kind");
            o.remove("apiVersion");
        }
    }
    json_response(
        200,
        &json!({"kind": format!("{}List", resource.kind()), "apiVersion": resource.api_version(), "metadata": meta, "items": items}),
    )
}

/// Carries the server-owned fields of `old` into a replacement.
fn carry_server_fields(
    resource: Resource,
    old: &Value,
    new: &mut Value,
    status_only: bool,
) -> Result<(), ApiError> {
    let name = old["metadata"]["name"].as_str().unwrap_or("");
    if status_only {
        let mut merged = old.clone();
        merged["status"] = new["status"].clone();
        merged["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
        *new = merged;
        return Ok(());
    }
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        match old["metadata"].get(k) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                new["metadata"].as_object_mut().unwrap().remove(k);
            }
        }
    }
    new["status"] = old["status"].clone();
    if new["status"].is_null() {
        new.as_object_mut().unwrap().remove("status");
    }
    // Immutable spec fields (pkg/apis/batch/validation ValidateJobSpecUpdate,
    // core ValidatePodUpdate), for what a client could change.
    let mutable: &[&str] = match resource {
        Resource::Jobs => &[
            "suspend",
            "parallelism",
            "activeDeadlineSeconds",
            "completions",
            "backoffLimit",
            "ttlSecondsAfterFinished",
        ],
        Resource::Pods => &["activeDeadlineSeconds"],
        Resource::Events => return Ok(()),
    };
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        if let Some(o) = s.as_object_mut() {
            for k in mutable {
                o.remove(*k);
            }
        }
        s
    };
    if strip(&old["spec"]) != strip(&new["spec"]) {
        let field = match resource {
            Resource::Jobs => "spec.template",
            _ => "spec",
        };
        return Err(ApiError::invalid(
            resource,
            name,
            vec![meta::Cause::invalid(
                field,
                &Value::String(String::new()),
                "field is immutable",
            )],
        ));
    }
    if resource == Resource::Jobs && old["spec"] != new["spec"] {
        new["metadata"]["generation"] =
            json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    }
    Ok(())
}

fn replace(
    ctx: &Ctx,
    resource: Resource,
    ns: &str,
    name: &str,
    bytes: Bytes,
    status_only: bool,
) -> Response<Body> {
    let mut object = match parse_json(&bytes) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    if object["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return error(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            object["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    if let Err(e) = validation::check(resource, &object) {
        return error(e);
    }
    let expected = object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let result = ctx.shared.with(|s| {
        let Some(old) = s.get(resource, ns, name).cloned() else {
            return Err(ApiError::not_found(resource, name));
        };
        carry_server_fields(resource, &old, &mut object, status_only)?;
        s.replace(resource, ns, name, object, expected.as_deref())
    });
    match result {
        Ok(o) => json_response(200, &o),
        Err(e) => error(e),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn patch(
    ctx: &Ctx,
    resource: Resource,
    ns: &str,
    name: &str,
    content_type: &str,
    bytes: Bytes,
    status_only: bool,
) -> Response<Body> {
    if !matches!(
        content_type,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return error(ApiError::unsupported_media_type(content_type));
    }
    let p = match parse_json(&bytes) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let Some(old) = ctx.shared.read(|s| s.get(resource, ns, name).cloned()) else {
        return error(ApiError::not_found(resource, name));
    };
    let mut new = old.clone();
    merge_patch(&mut new, &p);
    if p["metadata"]["resourceVersion"].is_null() {
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    }
    replace(
        ctx,
        resource,
        ns,
        name,
        Bytes::from(serde_json::to_vec(&new).unwrap()),
        status_only,
    )
}

fn delete(
    ctx: &Ctx,
    resource: Resource,
    ns: &str,
    name: &str,
    bytes: Bytes,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let mut options = if bytes.is_empty() {
        json!({})
    } else {
        match parse_json(&bytes) {
            Ok(v) => v,
            Err(e) => return error(e),
        }
    };
    for k in [
        "propagationPolicy",
        "gracePeriodSeconds",
        "orphanDependents",
    ] {
        if let Some(v) = q.get(k) {
            options[k] = match k {
                "gracePeriodSeconds" => json!(v.parse::<i64>().unwrap_or(0)),
                "orphanDependents" => json!(v == "true"),
                _ => json!(v),
            };
        }
    }
    if let Err(e) = validation::check_delete_options(&options) {
        return error(e);
    }
    let Some(current) = ctx.shared.read(|s| s.get(resource, ns, name).cloned()) else {
        return error(ApiError::not_found(resource, name));
    };
    let pre = &options["preconditions"];
    if pre["uid"]
        .as_str()
        .is_some_and(|u| current["metadata"]["uid"] != u)
        || pre["resourceVersion"]
            .as_str()
            .is_some_and(|r| current["metadata"]["resourceVersion"] != r)
    {
        return error(ApiError::conflict(resource, name));
    }
    let policy = options["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            match options["orphanDependents"].as_bool() {
                Some(true) => "Orphan".into(),
                Some(false) => "Background".into(),
                // batch/v1 Jobs orphan their Pods by default (the REST
                // strategy's DefaultGarbageCollectionPolicy).
                None if resource == Resource::Jobs => "Orphan".into(),
                None => "Background".into(),
            }
        });
    match resource {
        Resource::Pods => {
            let grace = options["gracePeriodSeconds"].as_i64();
            controller::delete_pod(&ctx.shared, ns, name, grace);
            match ctx.shared.read(|s| s.get(resource, ns, name).cloned()) {
                Some(o) => json_response(200, &o),
                None => json_response(
                    200,
                    &meta::success_status(
                        resource,
                        name,
                        current["metadata"]["uid"].as_str().unwrap_or(""),
                    ),
                ),
            }
        }
        Resource::Events => {
            let o = ctx.shared.with(|s| s.remove(resource, ns, name));
            json_response(200, &o.unwrap_or(current))
        }
        Resource::Jobs => {
            if current["metadata"]["deletionTimestamp"].is_string() {
                return json_response(200, &current);
            }
            let finalizer = match policy.as_str() {
                "Foreground" => Some(controller::FOREGROUND),
                "Orphan" => Some(controller::ORPHAN),
                _ => None,
            };
            let out = ctx.shared.with(|s| match finalizer {
                Some(f) => s.update(resource, ns, name, |j| {
                    j["metadata"]["deletionTimestamp"] = json!(meta::now());
                    j["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    let mut list = j["metadata"]["finalizers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !list.iter().any(|x| x == f) {
                        list.push(json!(f));
                    }
                    j["metadata"]["finalizers"] = json!(list);
                }),
                None => s.remove(resource, ns, name),
            });
            // 202 only when the deletion is pending and the client asked
            // with orphanDependents=false (handlers/delete.go).
            let code = if finalizer.is_some() && options["orphanDependents"] == false {
                202
            } else {
                200
            };
            json_response(code, &out.unwrap_or(current))
        }
    }
}

/// Whether a log entry is for this watch, and as which event type.
fn watch_event(
    entry: &Entry,
    resource: Resource,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    if entry.resource != resource || ns.is_some_and(|n| entry.object["metadata"]["namespace"] != n)
    {
        return None;
    }
    let matches = |o: &Value| labels.matches(o) && fields.matches(o);
    let now = matches(&entry.object);
    let before = entry.old.as_ref().is_some_and(matches);
    let kind = match entry.change {
        Change::Added if now => "ADDED",
        Change::Modified if now && before => "MODIFIED",
        Change::Modified if now => "ADDED",
        Change::Modified if before => "DELETED",
        Change::Deleted if now || before => "DELETED",
        _ => return None,
    };
    Some((kind, entry.object.clone()))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    b.push(b'\n');
    Bytes::from(b)
}

fn watch(
    ctx: &Ctx,
    resource: Resource,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let (labels, fields) = match selectors(resource, q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let bookmarks = truthy(q, "allowWatchBookmarks");
    let send_initial = truthy(q, "sendInitialEvents");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let requested: Option<u64> = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                return error(ApiError::bad_request(format!(
                    "invalid resource version: {rv:?}"
                )))
            }
        },
    };
    let ns = ns.map(str::to_string);
    // Subscribe before reading so nothing falls between backlog and live.
    let mut rx = ctx.shared.events.subscribe();
    let mut closed = ctx.shared.close_watches.subscribe();
    let (tx, out) = mpsc::channel::<Bytes>(256);
    let (start, backlog): (u64, Result<Vec<Bytes>, ApiError>) = ctx.shared.read(|s| {
        let rv = s.rv();
        match requested {
            Some(n) if !send_initial => match s.since(n) {
                // Everything up to the store's current version is in the
                // backlog; live events start after it.
                Some(entries) => (
                    rv,
                    Ok(entries
                        .iter()
                        .filter_map(|e| watch_event(e, resource, ns.as_deref(), &labels, &fields))
                        .map(|(k, o)| line(k, &o))
                        .collect()),
                ),
                None => (n, Err(ApiError::gone(n, s.compacted() + 1))),
            },
            _ => {
                let items: Vec<Bytes> = s
                    .list(resource, ns.as_deref())
                    .iter()
                    .filter(|o| labels.matches(o) && fields.matches(o))
                    .map(|o| line("ADDED", o))
                    .collect();
                (rv, Ok(items))
            }
        }
    });
    let bookmark = move |rv: u64, initial_end: bool| {
        let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": resource.kind(), "apiVersion": resource.api_version(), "metadata": metadata}),
        )
    };
    let interval = ctx.shared.config.bookmark_interval;
    tokio::spawn(async move {
        let backlog = match backlog {
            Ok(b) => b,
            Err(e) => {
                // A too-old resourceVersion: one ERROR event, then the end.
                let _ = tx.send(line("ERROR", &e.body)).await;
                return;
            }
        };
        for b in backlog {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let mut last = start;
        if send_initial && bookmarks && tx.send(bookmark(last, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Ok(entry) => {
                        if entry.rv <= last {
                            continue;
                        }
                        last = entry.rv;
                        if let Some((k, o)) = watch_event(&entry, resource, ns.as_deref(), &labels, &fields) {
                            if tx.send(line(k, &o)).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Fell behind: end the watch; the client resumes from
                    // the last resourceVersion it saw.
                    Err(_) => return,
                },
                _ = tick.tick() => {
                    if bookmarks && tx.send(bookmark(last, false)).await.is_err() {
                        return;
                    }
                }
                _ = closed.changed() => return,
                _ = &mut deadline => return,
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(ChannelBody(out).boxed())
        .unwrap()
}

/// The streaming body type for logs.
pub fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    ChannelBody(rx).boxed()
}

pub fn api_error(e: ApiError) -> Response<Body> {
    error(e)
}

pub fn text(code: u16, body: Bytes) -> Response<Body> {
    full(StatusCode::from_u16(code).unwrap(), "text/plain", body)
}

pub fn text_stream(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(channel_body(rx))
        .unwrap()
}
