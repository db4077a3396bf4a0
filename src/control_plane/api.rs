//! The runs API (JSON over HTTP, every call authenticated by a team key):
//!
//! - `POST /api/v1/runs` (`CreateRunRequest`) → 201 `Run`
//! - `GET /api/v1/runs[?state=S][&worker_host=H]` → 200 `RunList` (no history)
//! - `GET /api/v1/runs/{id}` → 200 `Run` with its history
//! - `POST /api/v1/runs/{id}/cancel` → 200 `Run`; 409 when already finished
//!
//! Errors are `ApiError` bodies. A team only ever sees its own runs: another
//! team's run id answers 404, like an unknown one.

// Handlers return the error response itself; it is built once per request.
#![allow(clippy::result_large_err)]

use crate::control_plane::dispatcher::CancelError;
use crate::control_plane::edge::{authenticate, error_response, json_response, Body, Shared};
use crate::control_plane::model::{CreateRunRequest, HistoryEntry, Run, RunList, RunState};
use crate::control_plane::store::{RunRecord, StoreError};
use crate::protocol::{is_reserved_worker_id, RESERVED_WORKER_ID_PREFIX};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::collections::HashSet;

pub const RUNS_PATH: &str = "/api/v1/runs";
const MAX_BODY: usize = 1 << 20;

pub async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let team = match authenticate(req.headers(), shared).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path[RUNS_PATH.len()..]
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let rest: Vec<&str> = segments.iter().map(String::as_str).collect();
    let result = match (req.method().clone(), rest.as_slice()) {
        (Method::POST, []) => create(req, shared, team.id).await,
        (Method::GET, []) => list(&req, shared, team.id).await,
        (Method::GET, [id]) => get(shared, team.id, id).await,
        (Method::POST, [id, "cancel"]) => cancel(shared, team.id, id).await,
        (_, [] | [_] | [_, "cancel"]) => Err(error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {path}", req.method()),
        )),
        _ => Err(error_response(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {path}"),
        )),
    };
    result.unwrap_or_else(|r| r)
}

type Answer = Result<Response<Body>, Response<Body>>;

fn internal(e: StoreError) -> Response<Body> {
    tracing::error!("{e}");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the control plane could not use its database; see its log",
    )
}

fn bad_request(msg: &str) -> Response<Body> {
    error_response(StatusCode::BAD_REQUEST, msg)
}

async fn create(req: Request<Incoming>, shared: &Shared, team_id: i64) -> Answer {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            bad_request(&format!(
                "cannot read the request body (at most 1 MiB): {e}"
            ))
        })?
        .to_bytes();
    let spec: CreateRunRequest = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(&format!("invalid run request: {e}")))?;
    validate(&spec).map_err(|m| bad_request(&m))?;
    let rec = shared
        .dispatcher
        .create_run(team_id, &spec)
        .await
        .map_err(internal)?;
    let history = shared
        .dispatcher
        .store()
        .history(&rec.id)
        .await
        .map_err(internal)?;
    Ok(json_response(
        StatusCode::CREATED,
        &view(shared, &rec, history),
    ))
}

fn validate(spec: &CreateRunRequest) -> Result<(), String> {
    if spec.worker_host.trim().is_empty() {
        return Err("worker_host is required: the id of the worker that should run it".into());
    }
    if is_reserved_worker_id(&spec.worker_host) {
        return Err(format!(
            "worker_host {:?} can never match a worker: ids starting with {RESERVED_WORKER_ID_PREFIX:?} are reserved",
            spec.worker_host
        ));
    }
    let mut mounts = HashSet::new();
    for s in &spec.additional_sidecars {
        if s.image.trim().is_empty() {
            return Err("every additional sidecar needs an image".into());
        }
        if s.mount_path.trim().is_empty() {
            return Err(format!("sidecar {} needs a mount_path", s.image));
        }
        if !mounts.insert(s.mount_path.as_str()) {
            return Err(format!(
                "two sidecars share the mount_path {}",
                s.mount_path
            ));
        }
    }
    if let Some(k) = spec
        .env_vars
        .keys()
        .find(|k| k.is_empty() || k.contains('='))
    {
        return Err(format!("invalid environment variable name {k:?}"));
    }
    Ok(())
}

async fn list(req: &Request<Incoming>, shared: &Shared, team_id: i64) -> Answer {
    let mut state = None;
    let mut host = None;
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        match k {
            "state" => state = Some(v.parse::<RunState>().map_err(|e| bad_request(&e))?),
            "worker_host" | "host" => host = Some(v),
            _ => {
                return Err(bad_request(&format!(
                    "unknown query parameter {k:?}; use state and worker_host"
                )))
            }
        }
    }
    let runs = shared
        .dispatcher
        .store()
        .list_runs(team_id, state, host.as_deref())
        .await
        .map_err(internal)?
        .iter()
        .map(|r| view(shared, r, Vec::new()))
        .collect();
    Ok(json_response(StatusCode::OK, &RunList { runs }))
}

fn not_found(id: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no run {id:?} for this team; `oz-agent-worker runs list` shows yours"),
    )
}

async fn get(shared: &Shared, team_id: i64, id: &str) -> Answer {
    let (rec, history) = shared
        .dispatcher
        .store()
        .get_run_with_history(id, team_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(id))?;
    Ok(json_response(StatusCode::OK, &view(shared, &rec, history)))
}

async fn cancel(shared: &Shared, team_id: i64, id: &str) -> Answer {
    match shared.dispatcher.cancel(team_id, id).await {
        Ok(rec) => {
            let history = shared
                .dispatcher
                .store()
                .history(id)
                .await
                .map_err(internal)?;
            Ok(json_response(StatusCode::OK, &view(shared, &rec, history)))
        }
        Err(CancelError::NotFound) => Err(not_found(id)),
        Err(CancelError::AlreadyFinished(state)) => Err(error_response(
            StatusCode::CONFLICT,
            &format!("run {id} already finished ({state}); there is nothing to cancel"),
        )),
        Err(CancelError::Store(e)) => Err(internal(e)),
    }
}

/// The API's view of a stored run: secrets removed, waiting reason added.
fn view(shared: &Shared, rec: &RunRecord, history: Vec<HistoryEntry>) -> Run {
    let spec = &rec.spec;
    let mut agent_config = spec.agent_config.clone();
    if let Some(c) = agent_config.as_mut() {
        c.harness_auth_secrets = None;
    }
    Run {
        id: rec.id.clone(),
        team_id: rec.team_id,
        worker_host: spec.worker_host.clone(),
        state: rec.state,
        title: spec.title.clone().unwrap_or_default(),
        prompt: spec.prompt.clone().unwrap_or_default(),
        docker_image: spec.docker_image.clone(),
        sidecar_image: spec.sidecar_image.clone(),
        additional_sidecars: spec.additional_sidecars.clone(),
        env_var_names: spec.env_vars.keys().cloned().collect(),
        instance_shape: spec.instance_shape.clone(),
        agent_config,
        created_at: rec.created_at.clone(),
        updated_at: rec.updated_at.clone(),
        execution_id: rec.execution_id.clone(),
        failure_reason: rec.failure_reason.clone(),
        exit_code: rec.exit_code,
        message: rec.message.clone(),
        cancel_requested: rec.cancel_requested,
        waiting_reason: shared.dispatcher.waiting_reason(rec),
        history,
    }
}
