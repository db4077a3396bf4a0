//! `oz-agent-worker probe [URL]` (hidden): a health check for images that
//! carry no curl or wget, used by the Dockerfile's `HEALTHCHECK` against
//! the worker's `/healthz`. Without a URL it probes the address the worker
//! itself listens on, from the same `OZ_HEALTH_LISTEN` the worker reads (the
//! health check runs with the container's environment), so a worker moved
//! to another port (two workers sharing the host network) is probed there.
//! One plain HTTP/1.1 GET; exit 0 on a 2xx answer, otherwise exit 1 with a
//! one-line reason on stderr (Docker keeps it in `docker inspect`'s health
//! log).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::process::ExitCode;
use std::time::Duration;

/// The most of a failing answer's body quoted in the reason.
const BODY_QUOTE_LIMIT: usize = 200;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The URL to GET, plain HTTP only, e.g. `http://127.0.0.1:8081/healthz`.
    /// Default: /healthz on OZ_HEALTH_LISTEN's address (an unspecified
    /// address such as 0.0.0.0 is probed on loopback).
    pub url: Option<String>,
    /// Give up after this long (connect, answer and body), e.g. `3s`.
    #[arg(long, default_value = "5s", value_parser = oz_foundation::duration::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(args: ProbeArgs) -> ExitCode {
    let url = match args.url {
        Some(u) => u,
        None => match health_url(std::env::var("OZ_HEALTH_LISTEN").ok().as_deref()) {
            Ok(u) => u,
            Err(e) => {
                // 1, not 2: Docker reserves a health check's exit status 2.
                eprintln!("probe: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match probe(&url, args.timeout).await {
        Ok(status) => {
            println!("{url} {status}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("{url}: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `/healthz` on the address in `listen` (OZ_HEALTH_LISTEN's value, as
/// `--health-listen` takes it), reached over loopback when the worker
/// listens on every address.
pub fn health_url(listen: Option<&str>) -> Result<String, HealthUrlError> {
    let listen = listen
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or(HealthUrlError::Unset)?;
    let mut addr: std::net::SocketAddr =
        listen
            .parse()
            .map_err(|source| HealthUrlError::NotAnAddress {
                listen: listen.to_string(),
                source,
            })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}/healthz"))
}

/// Why [`health_url`] has no URL to probe.
#[derive(Debug, thiserror::Error)]
pub enum HealthUrlError {
    #[error(
        "no URL given and OZ_HEALTH_LISTEN is not set: pass the URL of the worker's /healthz, \
         or set OZ_HEALTH_LISTEN to the address the worker serves it on"
    )]
    Unset,
    #[error("OZ_HEALTH_LISTEN={listen:?} is not an address ({source}); expected HOST:PORT, e.g. 0.0.0.0:8081")]
    NotAnAddress {
        listen: String,
        #[source]
        source: std::net::AddrParseError,
    },
}

/// Why [`probe`] found the endpoint unhealthy or unreachable; each message
/// is one line.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not a URL ({0}); expected http://HOST:PORT/PATH")]
    NotAUrl(#[source] http::uri::InvalidUri),
    /// The scheme it has instead of `http`.
    #[error("only http:// is supported, not {0}:// (the health endpoint is plain HTTP)")]
    NotHttp(String),
    #[error("no scheme; expected http://HOST:PORT/PATH")]
    NoScheme,
    #[error("cannot build the request: {0}")]
    Request(#[source] http::Error),
    /// The connection failed; the message is the error with its causes.
    #[error("{}", oz_foundation::error_chain::error_chain(.0))]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A status other than 2xx, with the start of the body (at most
    /// [`BODY_QUOTE_LIMIT`] bytes, white space folded; may be empty).
    #[error("{}", describe_failure(*.status, .body_start))]
    Unhealthy {
        status: http::StatusCode,
        body_start: String,
    },
}

/// GETs `url` and returns the status when it is 2xx.
///
/// Errors are one line: a URL that is not `http://`, the connection error
/// (with its causes), no answer within `timeout`, or the status with the
/// start of the body (newlines folded).
pub async fn probe(url: &str, timeout: Duration) -> Result<http::StatusCode, ProbeError> {
    let uri: http::Uri = url.parse().map_err(ProbeError::NotAUrl)?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(ProbeError::NotHttp(other.to_string())),
        None => return Err(ProbeError::NoScheme),
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(uri)
        .header(http::header::USER_AGENT, "oz-agent-worker-probe")
        .body(Empty::new())
        .map_err(ProbeError::Request)?;
    let exchange = async {
        let response = client.request(request).await.map_err(ProbeError::Connect)?;
        let status = response.status();
        if status.is_success() {
            return Ok(status);
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(ProbeError::Unhealthy {
            status,
            body_start: body_start(&body),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

/// The first [`BODY_QUOTE_LIMIT`] bytes of `body` on one line.
fn body_start(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_QUOTE_LIMIT)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `503 Service Unavailable: not connected to the orchestrator`.
fn describe_failure(status: http::StatusCode, text: &str) -> String {
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_quotes_the_start_of_the_body_on_one_line() {
        let long = "x".repeat(500);
        let unhealthy = |status, body: &[u8]| {
            ProbeError::Unhealthy {
                status,
                body_start: body_start(body),
            }
            .to_string()
        };
        assert_eq!(
            unhealthy(
                http::StatusCode::SERVICE_UNAVAILABLE,
                b"not connected\nto the orchestrator\n"
            ),
            "503 Service Unavailable: not connected to the orchestrator"
        );
        assert_eq!(unhealthy(http::StatusCode::NOT_FOUND, b""), "404 Not Found");
        let r = unhealthy(http::StatusCode::INTERNAL_SERVER_ERROR, long.as_bytes());
        assert_eq!(
            r.len(),
            "500 Internal Server Error: ".len() + BODY_QUOTE_LIMIT
        );
    }

    #[test]
    fn the_default_url_follows_oz_health_listen() {
        assert_eq!(
            health_url(Some("0.0.0.0:8082")).unwrap(),
            "http://127.0.0.1:8082/healthz"
        );
        assert_eq!(
            health_url(Some("[::]:9000")).unwrap(),
            "http://[::1]:9000/healthz"
        );
        assert_eq!(
            health_url(Some("127.0.0.2:81")).unwrap(),
            "http://127.0.0.2:81/healthz"
        );
        assert!(health_url(None)
            .unwrap_err()
            .to_string()
            .contains("OZ_HEALTH_LISTEN"));
        assert!(health_url(Some("nope"))
            .unwrap_err()
            .to_string()
            .contains("HOST:PORT"));
    }

    #[tokio::test]
    async fn only_plain_http_urls() {
        let e = probe("https://127.0.0.1:1/healthz", Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("only http:// is supported, not https://"), "{e}");
        let e = probe("127.0.0.1:8081/healthz", Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected http://HOST:PORT/PATH"), "{e}");
    }
}
