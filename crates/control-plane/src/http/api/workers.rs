//! The worker ids of a team:
//!
//! - `GET /api/v1/workers` → `WorkerList`: every id its workers ever
//!   connected with (kept in the database), each with its live connections
//!   (one per worker process: since when, its version, whether it is at
//!   capacity or draining), whether it is paused, and the runs it holds or
//!   has queued. The UI's host dropdown lists these ids.
//! - `POST /api/v1/workers/{id}/pause` and `/resume` → 200 `Worker`: no run
//!   is offered to a paused id (what it runs goes on); a resume offers its
//!   queued runs at once. 404 for an id no worker of the team connected with.

#![allow(clippy::result_large_err)]

use crate::http::endpoint_support::{
    error_response, internal, json_response, method_not_allowed, no_such_endpoint, Answer, Shared,
};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use oz_runs_api::model::{Worker, WorkerList};

/// `rest`: the path segments after `workers`.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    team_id: i64,
    rest: &[&str],
) -> Answer {
    match (req.method().clone(), rest) {
        (Method::GET, []) => Ok(json_response(
            StatusCode::OK,
            &WorkerList {
                workers: list(shared, team_id).await?,
            },
        )),
        (Method::POST, [id, action @ ("pause" | "resume")]) => {
            let found = shared
                .run_scheduler
                .set_paused(team_id, id, *action == "pause")
                .await
                .map_err(internal)?;
            let worker = list(shared, team_id)
                .await?
                .into_iter()
                .find(|w| w.worker_id == *id)
                .filter(|_| found);
            match worker {
                Some(w) => Ok(json_response(StatusCode::OK, &w)),
                None => Err(error_response(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no worker with id {id:?} has connected to this control plane for this team (ids are case-sensitive); `oz-agent-worker workers list` shows them"
                    ),
                )),
            }
        }
        (m, [] | [_, "pause" | "resume"]) => Err(method_not_allowed(&m, req.uri().path())),
        _ => Err(no_such_endpoint(req.uri().path())),
    }
}

/// The team's worker ids: connected ones first, then the others, each
/// group by id.
async fn list(
    shared: &Shared,
    team_id: i64,
) -> Result<Vec<Worker>, http::Response<crate::http::endpoint_support::Body>> {
    let seen = shared
        .run_scheduler
        .store()
        .list_workers(team_id)
        .await
        .map_err(internal)?;
    let mut live = shared.run_scheduler.workers(team_id);
    let mut workers: Vec<Worker> = seen
        .into_iter()
        .map(|w| {
            let activity = live.remove(&w.worker_id).unwrap_or_default();
            Worker {
                worker_id: w.worker_id,
                connections: activity.connections,
                active_runs: activity.active_runs,
                queued_runs: activity.queued_runs,
                paused: w.paused_at.is_some(),
                paused_at: w.paused_at,
                first_seen_at: w.first_seen_at,
                last_seen_at: w.last_seen_at,
            }
        })
        .collect();
    // A connection whose record is still being written.
    workers.extend(
        live.into_iter()
            .filter(|(_, a)| !a.connections.is_empty())
            .map(|(worker_id, a)| {
                let since = a
                    .connections
                    .first()
                    .map(|c| c.connected_at.clone())
                    .unwrap_or_default();
                Worker {
                    paused: shared.run_scheduler.is_paused(team_id, &worker_id),
                    paused_at: None,
                    worker_id,
                    connections: a.connections,
                    active_runs: a.active_runs,
                    queued_runs: a.queued_runs,
                    first_seen_at: since.clone(),
                    last_seen_at: since,
                }
            }),
    );
    workers.sort_by(|a, b| {
        (a.connections.is_empty(), &a.worker_id).cmp(&(b.connections.is_empty(), &b.worker_id))
    });
    Ok(workers)
}
