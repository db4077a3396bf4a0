//! The worker ids of a team, `GET /api/v1/workers` → `WorkerList`: every
//! id its workers ever connected with (kept in the database), each with its
//! live connections (one per worker process), since when, and the runs it
//! holds or has queued. The UI's host dropdown lists these ids.

#![allow(clippy::result_large_err)]

use crate::http::endpoint_support::{internal, json_response, method_not_allowed, Answer, Shared};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use oz_runs_api::model::{Worker, WorkerList};

pub async fn handle(req: Request<Incoming>, shared: &Shared, team_id: i64) -> Answer {
    if req.method() != Method::GET {
        return Err(method_not_allowed(req.method(), req.uri().path()));
    }
    let seen = shared
        .dispatcher
        .store()
        .list_workers(team_id)
        .await
        .map_err(internal)?;
    let mut live = shared.dispatcher.workers(team_id);
    let mut workers: Vec<Worker> = seen
        .into_iter()
        .map(|w| {
            let activity = live.remove(&w.worker_id).unwrap_or_default();
            Worker {
                worker_id: w.worker_id,
                connections: activity.connections,
                active_runs: activity.active_runs,
                queued_runs: activity.queued_runs,
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
    Ok(json_response(StatusCode::OK, &WorkerList { workers }))
}
