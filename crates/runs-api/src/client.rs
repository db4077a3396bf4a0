//! The CLI's side of the HTTP API: hyper-util's client over TCP, with TLS
//! (hyper-rustls) for `https://` control planes. The server's certificate
//! is checked against the CAs of `oz_foundation::tls_roots` (the bundled web roots
//! plus the system's, `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), the same
//! ones the worker trusts. A run's live output is followed through the
//! API's server-sent events (read with `eventsource-stream`).

use crate::model::{
    ApiError, CreateRunRequest, CreateScheduleRequest, OutputChunk, OutputTruncated, Run, RunList,
    RunOutput, RunResultRequest, RunState, Schedule, ScheduleList, Worker, WorkerList,
    RUNS_PAGE_MAX_LIMIT,
};
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient};
use hyper_util::rt::TokioExecutor;
use oz_foundation::percent::encode;
use oz_foundation::secret::Secret;
use serde::de::DeserializeOwned;

/// Why a call to the runs API failed. Each message is one sentence for
/// the CLI's user; [`ClientError::status`] is the HTTP status when the
/// control plane answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control plane URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("invalid control plane URL {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    UnsupportedScheme(String),
    #[error("no API key: pass --api-key or set WARP_API_KEY (create one with `oz-agent-worker api-keys create --team NAME`)")]
    NoApiKey,
    #[error("cannot build the request: {0}")]
    BuildRequest(#[source] http::Error),
    /// The server's certificate was refused; `hint` says what to do.
    #[error("cannot reach the control plane at {base}: {hint}")]
    Certificate {
        base: String,
        hint: String,
        source: hyper_util::client::legacy::Error,
    },
    /// No connection (`cause` is the innermost error, for the message).
    #[error("cannot reach the control plane at {base}: {cause}; is `oz-agent-worker serve` running there? (set --server or OZ_SERVER_URL)")]
    Unreachable {
        base: String,
        cause: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("the control plane's answer was cut off: {0}")]
    CutOff(#[source] hyper::Error),
    #[error("unexpected answer from the control plane at {base} (is it an oz-agent-worker control plane of the same version?): {source}")]
    UnexpectedAnswer {
        base: String,
        source: serde_json::Error,
    },
    /// The control plane answered with an error status; `message` is what
    /// it said (prefixed for a refused key).
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the control plane at {base} stopped sending the run's output: {source}")]
    OutputStopped {
        base: String,
        source: eventsource_stream::EventStreamError<hyper::Error>,
    },
    #[error("unexpected output event from the control plane: {0}")]
    UnexpectedEvent(#[source] serde_json::Error),
}

impl ClientError {
    /// The HTTP status when the control plane answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One event of a followed run's output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    Output(OutputChunk),
    /// Output the control plane no longer keeps was skipped.
    Truncated(OutputTruncated),
    /// The run ended and its output is final; nothing follows.
    End(Box<Run>),
}

/// Which page of runs [`Client::list_runs_page`] asks for; `None` leaves
/// a parameter out (the API's default: every state and host, 100 runs,
/// from the newest).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunQuery<'a> {
    pub state: Option<RunState>,
    pub worker_host: Option<&'a str>,
    /// 1 to `RUNS_PAGE_MAX_LIMIT`.
    pub limit: Option<usize>,
    /// A `next_cursor` from an earlier page.
    pub cursor: Option<&'a str>,
}

pub struct Client {
    base: String,
    /// Never formatted: `Debug` of the client shows `[redacted]`.
    api_key: Secret,
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `server` is `http://host:port` or `https://host:port` (a trailing
    /// slash is fine).
    pub fn new(server: &str, api_key: &str) -> Result<Client, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|source| ClientError::InvalidUrl {
            url: server.to_string(),
            source,
        })?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(ClientError::UnsupportedScheme(server.to_string())),
        }
        if api_key.trim().is_empty() {
            return Err(ClientError::NoApiKey);
        }
        Ok(Client {
            base,
            api_key: Secret::new(api_key.trim()),
            http: HttpClient::builder(TokioExecutor::new()).build(
                HttpsConnectorBuilder::new()
                    .with_tls_config((*oz_foundation::tls_roots::client_config()).clone())
                    .https_or_http()
                    .enable_http1()
                    .build(),
            ),
        })
    }

    pub async fn create_run(&self, req: &CreateRunRequest) -> Result<Run, ClientError> {
        let body = serde_json::to_vec(req).expect("requests serialize");
        self.call(Method::POST, "/api/v1/runs".into(), Some(body))
            .await
    }

    /// One page of runs, newest first (`GET /api/v1/runs`).
    pub async fn list_runs_page(&self, query: &RunQuery<'_>) -> Result<RunList, ClientError> {
        let mut params = Vec::new();
        if let Some(s) = query.state {
            params.push(format!("state={s}"));
        }
        if let Some(h) = query.worker_host {
            params.push(format!("worker_host={}", encode(h)));
        }
        if let Some(n) = query.limit {
            params.push(format!("limit={n}"));
        }
        if let Some(c) = query.cursor {
            params.push(format!("cursor={}", encode(c)));
        }
        let mut path = "/api/v1/runs".to_string();
        if !params.is_empty() {
            path = format!("{path}?{}", params.join("&"));
        }
        self.call(Method::GET, path, None).await
    }

    /// Every run (optionally only in `state` or for `worker_host`), newest
    /// first, page after page.
    pub async fn list_runs(
        &self,
        state: Option<RunState>,
        worker_host: Option<&str>,
    ) -> Result<Vec<Run>, ClientError> {
        self.all_runs(RunQuery {
            state,
            worker_host,
            ..Default::default()
        })
        .await
    }

    /// Every run `query` selects from its cursor on: follows `next_cursor`
    /// from page to page, `query.limit` runs a page (default the most the
    /// API gives, `RUNS_PAGE_MAX_LIMIT`).
    pub async fn all_runs(&self, query: RunQuery<'_>) -> Result<Vec<Run>, ClientError> {
        let limit = Some(query.limit.unwrap_or(RUNS_PAGE_MAX_LIMIT));
        let mut runs = Vec::new();
        let mut cursor = query.cursor.map(str::to_string);
        loop {
            let page = self
                .list_runs_page(&RunQuery {
                    limit,
                    cursor: cursor.as_deref(),
                    ..query
                })
                .await?;
            runs.extend(page.runs);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(runs),
            }
        }
    }

    pub async fn get_run(&self, id: &str) -> Result<Run, ClientError> {
        self.call(Method::GET, run_path(id, ""), None).await
    }

    pub async fn cancel_run(&self, id: &str) -> Result<Run, ClientError> {
        self.call(Method::POST, run_path(id, "/cancel"), Some(Vec::new()))
            .await
    }

    /// Reports how a claimed run ended (`POST /api/v1/runs/{id}/result`).
    pub async fn report_result(
        &self,
        id: &str,
        result: &RunResultRequest,
    ) -> Result<Run, ClientError> {
        let body = serde_json::to_vec(result).expect("requests serialize");
        self.call(Method::POST, run_path(id, "/result"), Some(body))
            .await
    }

    /// The output the control plane keeps for run `id`, from byte `after` on.
    pub async fn get_output(&self, id: &str, after: u64) -> Result<RunOutput, ClientError> {
        self.call(
            Method::GET,
            run_path(id, &format!("/output?after={after}")),
            None,
        )
        .await
    }

    /// Follows run `id`'s output from byte `after` on: events as they come,
    /// ending with [`OutputEvent::End`] (or an error when the connection is
    /// lost: follow again from the last offset seen).
    pub async fn follow_output(
        &self,
        id: &str,
        after: u64,
    ) -> Result<impl Stream<Item = Result<OutputEvent, ClientError>> + use<>, ClientError> {
        let resp = self
            .send(
                Method::GET,
                run_path(id, &format!("/output?after={after}&follow=true")),
                None,
                "text/event-stream",
            )
            .await?;
        let resp = self.check(resp).await?;
        let base = self.base.clone();
        Ok(resp
            .into_body()
            .into_data_stream()
            .eventsource()
            .filter_map(move |e| {
                let out = match e {
                    Err(source) => Some(Err(ClientError::OutputStopped {
                        base: base.clone(),
                        source,
                    })),
                    Ok(e) => {
                        let parsed = match e.event.as_str() {
                            "output" => {
                                Some(serde_json::from_str(&e.data).map(OutputEvent::Output))
                            }
                            "truncated" => {
                                Some(serde_json::from_str(&e.data).map(OutputEvent::Truncated))
                            }
                            "end" => Some(
                                serde_json::from_str(&e.data)
                                    .map(|r| OutputEvent::End(Box::new(r))),
                            ),
                            // Events of later versions.
                            _ => None,
                        };
                        parsed.map(|p| p.map_err(ClientError::UnexpectedEvent))
                    }
                };
                std::future::ready(out)
            }))
    }

    // ---- schedules and workers ----

    pub async fn create_schedule(
        &self,
        req: &CreateScheduleRequest,
    ) -> Result<Schedule, ClientError> {
        let body = serde_json::to_vec(req).expect("requests serialize");
        self.call(Method::POST, "/api/v1/schedules".into(), Some(body))
            .await
    }

    pub async fn list_schedules(&self) -> Result<Vec<Schedule>, ClientError> {
        let list: ScheduleList = self
            .call(Method::GET, "/api/v1/schedules".into(), None)
            .await?;
        Ok(list.schedules)
    }

    pub async fn get_schedule(&self, id: &str) -> Result<Schedule, ClientError> {
        self.call(Method::GET, schedule_path(id, ""), None).await
    }

    pub async fn pause_schedule(&self, id: &str) -> Result<Schedule, ClientError> {
        self.call(Method::POST, schedule_path(id, "/pause"), Some(Vec::new()))
            .await
    }

    pub async fn resume_schedule(&self, id: &str) -> Result<Schedule, ClientError> {
        self.call(Method::POST, schedule_path(id, "/resume"), Some(Vec::new()))
            .await
    }

    /// Deletes a schedule; returns it as it was.
    pub async fn delete_schedule(&self, id: &str) -> Result<Schedule, ClientError> {
        self.call(Method::DELETE, schedule_path(id, ""), None).await
    }

    pub async fn list_workers(&self) -> Result<WorkerList, ClientError> {
        self.call(Method::GET, "/api/v1/workers".into(), None).await
    }

    /// Offers nothing more to worker id `id` until resumed.
    pub async fn pause_worker(&self, id: &str) -> Result<Worker, ClientError> {
        let path = format!("/api/v1/workers/{}/pause", encode(id));
        self.call(Method::POST, path, Some(Vec::new())).await
    }

    /// Offers worker id `id` runs again (its queued ones at once).
    pub async fn resume_worker(&self, id: &str) -> Result<Worker, ClientError> {
        let path = format!("/api/v1/workers/{}/resume", encode(id));
        self.call(Method::POST, path, Some(Vec::new())).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body, "application/json").await?;
        let resp = self.check(resp).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::CutOff)?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|source| ClientError::UnexpectedAnswer {
            base: self.base.clone(),
            source,
        })
    }

    /// A successful response as is; any other becomes the server's error.
    async fn check(
        &self,
        resp: http::Response<Incoming>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::CutOff)?
            .to_bytes();
        let server_says = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        let message = match status {
            StatusCode::UNAUTHORIZED => {
                format!("the control plane refused the API key: {server_says}")
            }
            _ => server_says,
        };
        Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        })
    }

    /// `Authorization: Bearer KEY`, marked sensitive so that HTTP
    /// libraries leave it out of their `Debug` output.
    fn authorization(&self) -> Result<header::HeaderValue, ClientError> {
        let mut value =
            header::HeaderValue::from_str(&format!("Bearer {}", self.api_key.expose_str()))
                .map_err(|e| ClientError::BuildRequest(e.into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, self.authorization()?)
            .header(header::ACCEPT, accept);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(ClientError::BuildRequest)?;
        self.http.request(req).await.map_err(|source| {
            let base = self.base.clone();
            match oz_foundation::tls_roots::certificate_hint(&source) {
                Some(hint) => ClientError::Certificate { base, hint, source },
                None => ClientError::Unreachable {
                    base,
                    cause: root_cause(&source),
                    source,
                },
            }
        })
    }
}

fn run_path(id: &str, suffix: &str) -> String {
    format!("/api/v1/runs/{}{suffix}", encode(id))
}

fn schedule_path(id: &str, suffix: &str) -> String {
    format!("/api/v1/schedules/{}{suffix}", encode(id))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_the_client_does_not_show_the_api_key() {
        let client = Client::new("http://127.0.0.1:1/", "  ozk_client-debug-key-4711 ").unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("ozk_client-debug-key-4711"), "{shown}");
        assert!(
            shown.contains("http://127.0.0.1:1") && shown.contains("[redacted]"),
            "{shown}"
        );
        let header = client.authorization().unwrap();
        assert!(header.is_sensitive());
        assert_eq!(
            header, "Bearer ozk_client-debug-key-4711",
            "the key, trimmed, is sent"
        );
        assert!(!format!("{header:?}").contains("ozk_"), "{header:?}");
    }
}
