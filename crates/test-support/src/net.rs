//! Loopback ports and plain HTTP/1.0 requests, for probing what the worker
//! and `serve` expose (health probes, metrics pages) without a client stack.

use std::time::Duration;

/// A port free on 127.0.0.1 now (bound, then released), for a listener the
/// test starts next. Another process could take it in between; on a test
/// machine nothing does.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port over HTTP/1.0: (status, body), or
/// `(0, "not listening")` when the connection is refused.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, "not listening".into());
    };
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// Polls `GET path` until it answers `status` (30 s at most, else panics
/// naming the last answer); returns that answer's body.
pub async fn probe_until(port: u16, path: &str, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = http_get(port, path).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} stayed {got}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Prometheus page at `GET /metrics` on 127.0.0.1:port; panics unless
/// it answers 200.
pub async fn metrics_page(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}
