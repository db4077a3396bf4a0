//! A run's live output, `GET /api/v1/runs/{id}/output[?after=OFFSET]`:
//!
//! - plainly, what the control plane keeps of it from byte `after` on, as
//!   JSON (`RunOutput`);
//! - with `follow=true` (or `Accept: text/event-stream`), server-sent
//!   events (the WHATWG EventSource format) as the output arrives, ending
//!   once the run has ended and its output is final:
//!   - `output`: `OutputChunk`; the event id is the offset after it, so a
//!     reconnecting EventSource resumes there (`Last-Event-ID` takes the
//!     place of `after`);
//!   - `truncated`: `OutputTruncated`, output after the reader's offset
//!     that the control plane no longer keeps (it keeps the last
//!     `--output-limit` bytes per run);
//!   - `end`: the `Run` (without history); the stream then closes.
//!
//!   A comment line every 15 s keeps idle connections open through proxies.

#![allow(clippy::result_large_err)]

use crate::http::api::runs::{not_found, view};
use crate::http::endpoint_support::{
    bad_request, channel_body, internal, json_response, method_not_allowed, query_pairs, Answer,
    Shared,
};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use oz_runs_api::model::{OutputTruncated, RunOutput};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events buffered for a slow reader before the stream waits for it.
const EVENT_BUFFER: usize = 32;

pub async fn handle(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    team_id: i64,
    id: &str,
) -> Answer {
    if req.method() != Method::GET {
        return Err(method_not_allowed(req.method(), req.uri().path()));
    }
    let mut after = 0u64;
    let mut follow = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    for (k, v) in query_pairs(&req) {
        match k.as_str() {
            "after" => {
                after = v.parse().map_err(|_| {
                    bad_request(&format!(
                        "after={v:?} is not a byte offset; pass the next_offset of an earlier read, or 0"
                    ))
                })?
            }
            "follow" => follow = matches!(v.as_str(), "" | "true" | "1" | "yes"),
            _ => {
                return Err(bad_request(&format!(
                    "unknown query parameter {k:?}; use after and follow"
                )))
            }
        }
    }
    if let Some(last) = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        after = last;
    }
    let store = shared.dispatcher.store();
    let (rec, chunks) = store
        .read_output(id, Some(team_id), after)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(id))?;
    if !follow {
        let limit = shared.dispatcher.output().limit();
        return Ok(json_response(
            StatusCode::OK,
            &RunOutput {
                run_id: rec.id.clone(),
                state: rec.state,
                truncated_bytes: rec.output.start.saturating_sub(after),
                next_offset: rec.output.end.max(after),
                dropped_bytes: rec.output.dropped,
                limit_bytes: limit,
                chunks,
            },
        ));
    }
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    tokio::spawn(stream_events(
        shared.clone(),
        team_id,
        id.to_string(),
        after,
        tx,
    ));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        // Proxies (nginx) must not hold events back.
        .header("x-accel-buffering", "no")
        .body(channel_body(rx))
        .expect("static response parts are valid"))
}

/// One server-sent event.
fn event(name: &str, id: Option<u64>, data: &impl serde::Serialize) -> Bytes {
    let mut s = format!("event: {name}\n");
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    // Compact JSON has no line breaks: one data line.
    s.push_str("data: ");
    s.push_str(&serde_json::to_string(data).expect("events serialize"));
    s.push_str("\n\n");
    Bytes::from(s)
}

/// Feeds `tx` until the run's output is final, the reader leaves or the
/// control plane shuts down.
async fn stream_events(
    shared: Arc<Shared>,
    team_id: i64,
    id: String,
    mut after: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let output = shared.dispatcher.output().clone();
    let limit = output.limit();
    let mut progress = output.subscribe(&id);
    let mut shutdown = shared.shutdown.clone();
    loop {
        // Read before looking at the page: a settled output seen now is
        // all in the page read next.
        let settled = progress.borrow_and_update().settled;
        let (rec, chunks) = match shared
            .dispatcher
            .store()
            .read_output(&id, Some(team_id), after)
            .await
        {
            Ok(Some(page)) => page,
            Ok(None) => return,
            Err(e) => {
                drop(internal(e));
                return;
            }
        };
        let mut events = Vec::new();
        if after < rec.output.start {
            events.push(event(
                "truncated",
                None,
                &OutputTruncated {
                    bytes: rec.output.start - after,
                    limit_bytes: limit,
                },
            ));
            after = rec.output.start;
        }
        for c in chunks {
            if c.offset > after {
                events.push(event(
                    "truncated",
                    None,
                    &OutputTruncated {
                        bytes: c.offset - after,
                        limit_bytes: limit,
                    },
                ));
            }
            after = c.offset + c.data.len() as u64;
            events.push(event("output", Some(after), &c));
        }
        let done = rec.state.is_terminal() && settled;
        if done {
            events.push(event("end", None, &view(&shared, &rec, Vec::new())));
        } else if rec.state.is_terminal() {
            // Ended before this reader came (or while it read): make sure
            // the output settles.
            output.ended(&id);
        }
        for e in events {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
        tokio::select! {
            r = progress.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(KEEPALIVE) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
            }
        }
    }
}
