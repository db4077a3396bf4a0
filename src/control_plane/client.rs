//! The CLI's side of the runs API: hyper-util's client over TCP, with TLS
//! (hyper-rustls) for `https://` control planes. The server's certificate
//! is checked against the CAs of `crate::tls_roots` (the bundled web roots
//! plus the system's, `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), the same
//! ones the worker trusts.

use crate::control_plane::model::{ApiError, CreateRunRequest, Run, RunList, RunState};
use crate::percent::encode;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The HTTP status when the server answered.
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

fn err(message: impl Into<String>) -> ClientError {
    ClientError {
        status: None,
        message: message.into(),
    }
}

pub struct Client {
    base: String,
    api_key: String,
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    /// `server` is `http://host:port` or `https://host:port` (a trailing
    /// slash is fine).
    pub fn new(server: &str, api_key: &str) -> Result<Client, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .map_err(|e| err(format!("invalid control plane URL {server:?}: {e}")))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(err(format!(
                    "invalid control plane URL {server:?}: expected http://HOST:PORT or https://HOST:PORT"
                )))
            }
        }
        if api_key.trim().is_empty() {
            return Err(err(
                "no API key: pass --api-key or set WARP_API_KEY (create one with `oz-agent-worker api-keys create --team NAME`)",
            ));
        }
        Ok(Client {
            base,
            api_key: api_key.trim().to_string(),
            http: HttpClient::builder(TokioExecutor::new()).build(
                HttpsConnectorBuilder::new()
                    .with_tls_config((*crate::tls_roots::client_config()).clone())
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

    pub async fn list_runs(
        &self,
        state: Option<RunState>,
        worker_host: Option<&str>,
    ) -> Result<Vec<Run>, ClientError> {
        let mut query = Vec::new();
        if let Some(s) = state {
            query.push(format!("state={s}"));
        }
        if let Some(h) = worker_host {
            query.push(format!("worker_host={}", encode(h)));
        }
        let mut path = "/api/v1/runs".to_string();
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let list: RunList = self.call(Method::GET, path, None).await?;
        Ok(list.runs)
    }

    pub async fn get_run(&self, id: &str) -> Result<Run, ClientError> {
        self.call(Method::GET, run_path(id, ""), None).await
    }

    pub async fn cancel_run(&self, id: &str) -> Result<Run, ClientError> {
        self.call(Method::POST, run_path(id, "/cancel"), Some(Vec::new()))
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.api_key))
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| err(format!("cannot build the request: {e}")))?;
        let resp = self.http.request(req).await.map_err(|e| match crate::tls_roots::certificate_hint(&e) {
            Some(hint) => err(format!("cannot reach the control plane at {}: {hint}", self.base)),
            None => err(format!(
                "cannot reach the control plane at {}: {}; is `oz-agent-worker serve` running there? (set --server or OZ_SERVER_URL)",
                self.base,
                root_cause(&e)
            )),
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| err(format!("the control plane's answer was cut off: {e}")))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                err(format!(
                    "unexpected answer from the control plane at {} (is it an oz-agent-worker control plane of the same version?): {e}",
                    self.base
                ))
            });
        }
        let server_says = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        let message = match status {
            StatusCode::UNAUTHORIZED => {
                format!("the control plane refused the API key: {server_says}")
            }
            _ => server_says,
        };
        Err(ClientError {
            status: Some(status.as_u16()),
            message,
        })
    }
}

fn run_path(id: &str, suffix: &str) -> String {
    format!("/api/v1/runs/{}{suffix}", encode(id))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
