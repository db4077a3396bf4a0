//! The HTTP API under `/api/v1` (JSON; every call authenticated as a
//! team): routes each request to its resource — runs (`runs`), a run's
//! live output (`output`), schedules (`schedules`) and worker ids
//! (`workers`). A team only ever sees its own things: another team's
//! id answers 404, like an unknown one. Described in
//! `api-specs/control-plane-runs.openapi.json` (`openapi`).

pub(crate) mod output;
pub(crate) mod runs;
pub(crate) mod schedules;
pub(crate) mod workers;

use crate::http::api::{
    output as api_output, runs as api_runs, schedules as api_schedules, workers as api_workers,
};
use crate::http::endpoint_support::{authenticate, no_such_endpoint, Body, Shared};
use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

/// Every API path starts with this.
pub(crate) const API_PREFIX: &str = "/api/v1/";

pub(crate) async fn handle(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let caller = match authenticate(&req, shared).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .strip_prefix(API_PREFIX)
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let team = caller.team.id;
    let answer = match segments.as_slice() {
        ["runs", id, "output"] => api_output::handle(req, shared, team, id).await,
        ["runs", rest @ ..] => api_runs::handle(req, shared, team, rest).await,
        ["schedules", rest @ ..] => api_schedules::handle(req, shared, team, rest).await,
        ["workers", rest @ ..] => api_workers::handle(req, shared, team, rest).await,
        _ => Err(no_such_endpoint(&path)),
    };
    answer.unwrap_or_else(|r| r)
}
