//! The runs resource:
//!
//! - `POST /api/v1/runs` (`CreateRunRequest`) → 201 `Run`
//! - `GET /api/v1/runs[?state=S][&worker_host=H][&limit=N][&cursor=C]` →
//!   200 `RunList`: one page, newest first, without history; its
//!   `next_cursor` asks for the next (`paging`); a bad limit or cursor → 400
//! - `GET /api/v1/runs/{id}` → 200 `Run` with its history
//! - `POST /api/v1/runs/{id}/cancel` → 200 `Run`; 409 when already finished
//! - `POST /api/v1/runs/{id}/result` (`RunResultRequest`) → 200 `Run`: the
//!   end of a claimed run, reported by the outside system its worker handed
//!   it to; 409 when the run is not claimed (or ended otherwise)
//!
//! Errors are `ApiError` bodies.

// Handlers return the error response itself; it is built once per request.
#![allow(clippy::result_large_err)]

use crate::dispatch::run_scheduler::{CancelError, ResultError};
use crate::http::endpoint_support::{
    bad_request, error_response, internal, json_response, method_not_allowed, query_pairs,
    read_json, Answer, Body, Shared,
};
use crate::http::paging::{cursor, parse_cursor, parse_limit, PageRequest};
use crate::store::RunRecord;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use oz_foundation::image_reference::{ImageRef, InvalidReference};
use oz_protocol::{is_reserved_worker_id, RESERVED_WORKER_ID_PREFIX};
use oz_runs_api::model::{
    CreateRunRequest, HistoryEntry, Run, RunList, RunResultRequest, RunState,
};
use std::collections::HashSet;

/// `rest`: the path segments after `runs`.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    team_id: i64,
    rest: &[&str],
) -> Answer {
    match (req.method().clone(), rest) {
        (Method::POST, []) => create(req, shared, team_id).await,
        (Method::GET, []) => list(&req, shared, team_id).await,
        (Method::GET, [id]) => get(shared, team_id, id).await,
        (Method::POST, [id, "cancel"]) => cancel(shared, team_id, id).await,
        (Method::POST, [id, "result"]) => result(req, shared, team_id, id).await,
        (m, [] | [_] | [_, "cancel" | "result"]) => Err(method_not_allowed(&m, req.uri().path())),
        _ => Err(crate::http::endpoint_support::no_such_endpoint(
            req.uri().path(),
        )),
    }
}

async fn create(req: Request<Incoming>, shared: &Shared, team_id: i64) -> Answer {
    let spec: CreateRunRequest = read_json(req, "run request").await?;
    validate(&spec).map_err(|m| bad_request(&m.to_string()))?;
    let rec = shared
        .run_scheduler
        .create_run(team_id, &spec)
        .await
        .map_err(internal)?;
    let history = shared
        .run_scheduler
        .store()
        .history(&rec.id)
        .await
        .map_err(internal)?;
    Ok(json_response(
        StatusCode::CREATED,
        &view(shared, &rec, history),
    ))
}

/// Why a run request was refused before it was stored: each message names
/// the field and what it must hold (answered as 400).
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvalidRun {
    #[error("worker_host is required: the id of the worker that should run it")]
    NoWorkerHost,
    #[error("worker_host {0:?} can never match a worker: ids starting with {RESERVED_WORKER_ID_PREFIX:?} are reserved")]
    ReservedWorkerId(String),
    #[error("every additional sidecar needs an image")]
    SidecarWithoutImage,
    #[error("sidecar {0} needs a mount_path")]
    SidecarWithoutMountPath(String),
    #[error("two sidecars share the mount_path {0}")]
    SharedMountPath(String),
    /// The worker's own parser's message.
    #[error(transparent)]
    Image(#[from] InvalidReference),
    #[error("invalid environment variable name {0:?}")]
    EnvName(String),
}

/// What a run request must satisfy before it is stored: a worker id that
/// can match a worker, image references the worker can pull (checked with
/// the worker's own parser, [`oz_foundation::image_reference`], so the message is
/// the one the worker would give), sidecars with distinct mount paths, env
/// names.
pub(crate) fn validate(spec: &CreateRunRequest) -> Result<(), InvalidRun> {
    if spec.worker_host.trim().is_empty() {
        return Err(InvalidRun::NoWorkerHost);
    }
    if is_reserved_worker_id(&spec.worker_host) {
        return Err(InvalidRun::ReservedWorkerId(spec.worker_host.clone()));
    }
    let mut mounts = HashSet::new();
    for s in &spec.additional_sidecars {
        if s.image.trim().is_empty() {
            return Err(InvalidRun::SidecarWithoutImage);
        }
        if s.mount_path.trim().is_empty() {
            return Err(InvalidRun::SidecarWithoutMountPath(s.image.clone()));
        }
        if !mounts.insert(s.mount_path.as_str()) {
            return Err(InvalidRun::SharedMountPath(s.mount_path.clone()));
        }
    }
    let images = [&spec.docker_image, &spec.sidecar_image]
        .into_iter()
        .flatten()
        .chain(spec.additional_sidecars.iter().map(|s| &s.image));
    for image in images {
        ImageRef::parse(image)?;
    }
    if let Some(k) = spec
        .env_vars
        .keys()
        .find(|k| k.is_empty() || k.contains('='))
    {
        return Err(InvalidRun::EnvName(k.clone()));
    }
    Ok(())
}

async fn list(req: &Request<Incoming>, shared: &Shared, team_id: i64) -> Answer {
    let mut state = None;
    let mut host = None;
    let mut page = PageRequest::default();
    for (k, v) in query_pairs(req) {
        match k.as_str() {
            "state" => {
                state = Some(
                    v.parse::<RunState>()
                        .map_err(|e| bad_request(&e.to_string()))?,
                )
            }
            "worker_host" | "host" => host = Some(v),
            "limit" => page.limit = parse_limit(&v).map_err(|e| bad_request(&e.to_string()))?,
            "cursor" => {
                page.before = Some(parse_cursor(&v).map_err(|e| bad_request(&e.to_string()))?)
            }
            _ => {
                return Err(bad_request(&format!(
                    "unknown query parameter {k:?}; use state, worker_host, limit and cursor"
                )))
            }
        }
    }
    let found = shared
        .run_scheduler
        .store()
        .list_runs(team_id, state, host.as_deref(), page.before, page.limit)
        .await
        .map_err(internal)?;
    let runs = found
        .runs
        .iter()
        .map(|r| view(shared, r, Vec::new()))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &RunList {
            runs,
            next_cursor: found.next_before.map(cursor),
        },
    ))
}

pub(crate) fn not_found(id: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no run {id:?} for this team; `oz-agent-worker runs list` shows yours"),
    )
}

async fn get(shared: &Shared, team_id: i64, id: &str) -> Answer {
    let (rec, history) = shared
        .run_scheduler
        .store()
        .get_run_with_history(id, team_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(id))?;
    Ok(json_response(StatusCode::OK, &view(shared, &rec, history)))
}

async fn with_history(shared: &Shared, rec: &RunRecord) -> Answer {
    let history = shared
        .run_scheduler
        .store()
        .history(&rec.id)
        .await
        .map_err(internal)?;
    Ok(json_response(StatusCode::OK, &view(shared, rec, history)))
}

async fn cancel(shared: &Shared, team_id: i64, id: &str) -> Answer {
    match shared.run_scheduler.cancel(team_id, id).await {
        Ok(rec) => with_history(shared, &rec).await,
        Err(CancelError::NotFound) => Err(not_found(id)),
        // Cancelling is idempotent: a run a cancel already ended is
        // answered as it stands, so concurrent or repeated cancels agree.
        Err(CancelError::AlreadyFinished(RunState::Cancelled)) => get(shared, team_id, id).await,
        Err(CancelError::AlreadyFinished(state)) => Err(error_response(
            StatusCode::CONFLICT,
            &format!("run {id} already finished ({state}); there is nothing to cancel"),
        )),
        Err(e @ (CancelError::NotStored | CancelError::Reloading(_) | CancelError::Store(_))) => {
            Err(internal(e))
        }
    }
}

async fn result(req: Request<Incoming>, shared: &Shared, team_id: i64, id: &str) -> Answer {
    let report: RunResultRequest = read_json(req, "result").await?;
    match shared
        .run_scheduler
        .report_result(team_id, id, &report)
        .await
    {
        Ok(rec) => with_history(shared, &rec).await,
        Err(ResultError::NotFound) => Err(not_found(id)),
        Err(ResultError::Conflict(why)) => Err(error_response(StatusCode::CONFLICT, &why)),
        Err(e @ (ResultError::NotStored | ResultError::Reloading(_) | ResultError::Store(_))) => {
            Err(internal(e))
        }
    }
}

/// The API's view of a stored run: secrets removed, waiting reason added.
pub(crate) fn view(shared: &Shared, rec: &RunRecord, history: Vec<HistoryEntry>) -> Run {
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
        waiting_reason: shared.run_scheduler.waiting_reason(rec),
        schedule_id: rec.schedule_id.clone(),
        scheduled_for: rec.scheduled_for.clone(),
        output_bytes: rec.output.end,
        output_truncated_bytes: rec.output.start,
        output_dropped_bytes: rec.output.dropped,
        history,
    }
}
