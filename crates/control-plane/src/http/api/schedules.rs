//! The schedules resource:
//!
//! - `POST /api/v1/schedules` (`CreateScheduleRequest`) → 201 `Schedule`
//! - `GET /api/v1/schedules` → 200 `ScheduleList`
//! - `GET /api/v1/schedules/{id}` → 200 `Schedule`
//! - `POST /api/v1/schedules/{id}/pause` and `/resume` → 200 `Schedule`
//! - `DELETE /api/v1/schedules/{id}` → 200 `Schedule` (as it was; its runs
//!   keep its id)
//!
//! A schedule's run is validated as `POST /api/v1/runs` validates one.
//! Errors are `ApiError` bodies; another team's schedule answers 404.

#![allow(clippy::result_large_err)]

use crate::dispatch::cron_scheduler::{CronScheduler, ScheduleError};
use crate::http::api::runs::validate;
use crate::http::endpoint_support::{
    bad_request, error_response, internal, json_response, method_not_allowed, no_such_endpoint,
    read_json, Answer, Body, Shared,
};
use crate::store::ScheduleRecord;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use oz_runs_api::model::{CreateScheduleRequest, RunTemplate, Schedule, ScheduleList};

/// `rest`: the path segments after `schedules`.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    team_id: i64,
    rest: &[&str],
) -> Answer {
    match (req.method().clone(), rest) {
        (Method::POST, []) => create(req, shared, team_id).await,
        (Method::GET, []) => list(shared, team_id).await,
        (Method::GET, [id]) => get(shared, team_id, id).await,
        (Method::DELETE, [id]) => answer(shared.cron_scheduler.delete(team_id, id).await, id),
        (Method::POST, [id, "pause"]) => answer(
            shared.cron_scheduler.set_paused(team_id, id, true).await,
            id,
        ),
        (Method::POST, [id, "resume"]) => answer(
            shared.cron_scheduler.set_paused(team_id, id, false).await,
            id,
        ),
        (m, [] | [_] | [_, "pause" | "resume"]) => Err(method_not_allowed(&m, req.uri().path())),
        _ => Err(no_such_endpoint(req.uri().path())),
    }
}

async fn create(req: Request<Incoming>, shared: &Shared, team_id: i64) -> Answer {
    let body: CreateScheduleRequest = read_json(req, "schedule request").await?;
    validate(&body.run).map_err(|m| bad_request(&format!("run: {m}")))?;
    match shared.cron_scheduler.create(team_id, body).await {
        Ok(rec) => Ok(json_response(StatusCode::CREATED, &view(&rec))),
        Err(e) => Err(error(e, "")),
    }
}

async fn list(shared: &Shared, team_id: i64) -> Answer {
    let schedules = shared
        .run_scheduler
        .store()
        .list_schedules(Some(team_id))
        .await
        .map_err(internal)?
        .iter()
        .map(view)
        .collect();
    Ok(json_response(StatusCode::OK, &ScheduleList { schedules }))
}

async fn get(shared: &Shared, team_id: i64, id: &str) -> Answer {
    let rec = shared
        .run_scheduler
        .store()
        .get_schedule(id, Some(team_id))
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(id))?;
    Ok(json_response(StatusCode::OK, &view(&rec)))
}

fn answer(r: Result<ScheduleRecord, ScheduleError>, id: &str) -> Answer {
    r.map(|rec| json_response(StatusCode::OK, &view(&rec)))
        .map_err(|e| error(e, id))
}

fn error(e: ScheduleError, id: &str) -> Response<Body> {
    match e {
        ScheduleError::Invalid(why) => bad_request(&why.to_string()),
        ScheduleError::NotFound => not_found(id),
        ScheduleError::Store(e) => internal(e),
    }
}

fn not_found(id: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no schedule {id:?} for this team; `oz-agent-worker schedules list` shows yours"),
    )
}

/// The API's view of a stored schedule: the run's secrets removed.
pub(crate) fn view(rec: &ScheduleRecord) -> Schedule {
    Schedule {
        id: rec.id.clone(),
        team_id: rec.team_id,
        name: rec.name.clone(),
        cron: rec.cron.clone(),
        time_zone: rec.time_zone.clone(),
        missed: rec.missed,
        paused: rec.paused,
        run: RunTemplate::of(&rec.spec),
        created_at: rec.created_at.clone(),
        updated_at: rec.updated_at.clone(),
        next_slot_at: CronScheduler::next_slot(rec),
        handled_until: rec.handled_until.clone(),
        last_run_id: rec.last_run_id.clone(),
    }
}
