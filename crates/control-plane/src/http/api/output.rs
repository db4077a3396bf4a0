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
//!   - `dropped`: `OutputDropped`: the reader took nothing for
//!     `--follower-send-timeout` and was dropped (its events are not
//!     buffered without bound); the event id and `resume_from` say where
//!     to resume. The stream then closes.
//!
//!   A team may follow at most `--max-followers-per-team` outputs at once
//!   (429 past it).
//!
//!   A comment line every 15 s keeps idle connections open through proxies.

#![allow(clippy::result_large_err)]

use crate::http::api::runs::{not_found, view};
use crate::http::endpoint_support::{
    bad_request, error_response, internal, json_response, method_not_allowed, query_pairs, Answer,
    Shared,
};
use crate::http::followers::Place;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use oz_runs_api::model::{OutputDropped, OutputTruncated, RunOutput};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events queued for a reader before the stream waits for it (each at most
/// about [`PAGE`] bytes of output).
const EVENT_BUFFER: usize = 4;
/// Output read from the store at a time per follower, in bytes.
const PAGE: usize = 16 * 1024;

pub(crate) async fn handle(
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
    let store = shared.run_scheduler.store();
    if !follow {
        // A whole read holds the run's output (up to --output-limit) and
        // its JSON at once: a few at a time, however many are asked for.
        let _permit = shared.followers.whole_read().await;
        let (rec, chunks) = store
            .read_output(id, Some(team_id), after)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found(id))?;
        let limit = shared.run_scheduler.output().limit();
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
    store
        .get_run(id, Some(team_id))
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(id))?;
    let Some(place) = shared.followers.join(team_id) else {
        return Err(error_response(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "this team already follows {} live outputs (--max-followers-per-team); close one, or read without follow=true",
                shared.followers.max_per_team()
            ),
        ));
    };
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let (last_tx, last_rx) = oneshot::channel();
    tokio::spawn(stream_events(
        shared.clone(),
        team_id,
        id.to_string(),
        after,
        Sink {
            tx,
            last: Some(last_tx),
            timeout: shared.followers.send_timeout(),
        },
        place,
    ));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        // Proxies (nginx) must not hold events back.
        .header("x-accel-buffering", "no")
        .body(
            FollowBody {
                rx,
                last: Some(last_rx),
            }
            .boxed_unsync(),
        )
        .expect("static response parts are valid"))
}

/// A follower's stream: the events queued (at most [`EVENT_BUFFER`]), then,
/// if the follower was dropped, the `dropped` event.
struct FollowBody {
    rx: mpsc::Receiver<Bytes>,
    last: Option<oneshot::Receiver<Bytes>>,
}

impl hyper::body::Body for FollowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {}
        }
        let Some(last) = self.last.as_mut() else {
            return Poll::Ready(None);
        };
        let got = std::task::ready!(Pin::new(last).poll(cx));
        self.last = None;
        Poll::Ready(got.ok().map(|b| Ok(Frame::data(b))))
    }
}

/// Where `stream_events` writes: each event must be taken within `timeout`
/// (the queue is short), or the follower is dropped.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    last: Option<oneshot::Sender<Bytes>>,
    timeout: Duration,
}

/// Why a follower's stream stopped early.
enum Stop {
    /// The reader went away.
    Gone,
    /// The reader took nothing for the send timeout.
    Slow,
}

impl Sink {
    async fn send(&mut self, event: Bytes) -> Result<(), Stop> {
        match tokio::time::timeout(self.timeout, self.tx.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => Err(Stop::Slow),
        }
    }

    /// Ends the stream with `event` after what is queued.
    fn finish(mut self, event: Bytes) {
        if let Some(last) = self.last.take() {
            let _ = last.send(event);
        }
    }
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

/// Feeds `sink` until the run's output is final, the reader leaves, is
/// too slow, or the control plane shuts down; `_place` holds the team's
/// follower place until then. Output is read a page ([`PAGE`]) at a time
/// from the store: a follower costs a page and [`EVENT_BUFFER`] events of
/// memory, however much output the run keeps and however many follow it.
async fn stream_events(
    shared: Arc<Shared>,
    team_id: i64,
    id: String,
    mut after: u64,
    mut sink: Sink,
    _place: Place,
) {
    let output = shared.run_scheduler.output().clone();
    let limit = output.limit();
    let mut progress = output.subscribe(&id);
    let mut shutdown = shared.shutdown.clone();
    loop {
        // Read before looking at the page: a settled output seen now is
        // all in the pages read next.
        let settled = progress.borrow_and_update().settled;
        let mut rec;
        loop {
            let (r, chunks, more) = match shared
                .run_scheduler
                .store()
                .read_output_page(&id, Some(team_id), after, PAGE)
                .await
            {
                Ok(Some(page)) => page,
                Ok(None) => return,
                Err(e) => {
                    drop(internal(e));
                    return;
                }
            };
            rec = r;
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
            for e in events {
                if let Err(stop) = sink.send(e).await {
                    return stopped(sink, stop, &id, after);
                }
            }
            if !more {
                break;
            }
        }
        let done = rec.state.is_terminal() && settled;
        if done {
            let end = event("end", None, &view(&shared, &rec, Vec::new()));
            if let Err(stop) = sink.send(end).await {
                stopped(sink, stop, &id, after);
            }
            return;
        } else if rec.state.is_terminal() {
            // Ended before this reader came (or while it read): make sure
            // the output settles.
            output.ended(&id);
        }
        tokio::select! {
            r = progress.changed() => if r.is_err() { return },
            _ = sink.tx.closed() => return,
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(KEEPALIVE) => {
                if let Err(stop) = sink.send(Bytes::from_static(b": keep-alive\n\n")).await {
                    return stopped(sink, stop, &id, after);
                }
            }
        }
    }
}

/// A follower's stream stopped early: a slow one is told why and where to
/// resume, after what is already queued for it.
fn stopped(sink: Sink, stop: Stop, id: &str, resume_from: u64) {
    if let Stop::Slow = stop {
        tracing::info!(
            run = %id,
            resume_from,
            "dropped a live-output follower that read nothing for {:?}",
            sink.timeout
        );
        let why = OutputDropped {
            reason: format!(
                "this reader took no event for {}s (--follower-send-timeout); reconnect to resume",
                sink.timeout.as_secs_f64()
            ),
            resume_from,
        };
        sink.finish(event("dropped", Some(resume_from), &why));
    }
}
