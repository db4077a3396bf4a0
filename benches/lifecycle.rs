//! Overhead of our client over the bare Engine API: N create → start → wait
//! → remove cycles of a `true` container through `Docker` and through
//! hand-written HTTP/1.1 on the same socket, interleaved so drift affects
//! both equally. Prints both medians and their ratio (goal: ≤ 1.02).
//!
//! `cargo bench --bench lifecycle`; `OZ_BENCH_N` (default 30, quick 5), the socket
//! from `OZ_TEST_DOCKER_HOST` (default unix:///var/run/docker.sock), the
//! image from `OZ_TEST_IMAGE_BUSYBOX` (default oz-test/busybox:latest).

use oz_test_support::bench as support;

use bytes::Bytes;
use oz_docker_engine::request::{ApiRequest, CallKind, RequestBody};
use oz_docker_engine::transport::EnvSnapshot;
use oz_docker_engine::Docker;
use std::time::{Duration, Instant};
use support::report::{verdict, Report};
use support::stats;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn create_body(image: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "Image": image, "Cmd": ["true"] })).unwrap()
}

async fn ours(docker: &Docker, image: &str) -> Duration {
    let t0 = Instant::now();
    let mut create = ApiRequest::new(
        "ContainerCreate",
        http::Method::POST,
        "/containers/create".into(),
        CallKind::Ordinary,
    );
    create.body = RequestBody::Json(Bytes::from(create_body(image)));
    let created: serde_json::Value = docker.send_json(create).await.expect("create");
    let id = created["Id"].as_str().expect("Id").to_string();
    docker
        .send_unit(ApiRequest::new(
            "ContainerStart",
            http::Method::POST,
            format!("/containers/{id}/start"),
            CallKind::Ordinary,
        ))
        .await
        .expect("start");
    let waited: serde_json::Value = docker
        .send_json(ApiRequest::new(
            "ContainerWait",
            http::Method::POST,
            format!("/containers/{id}/wait"),
            CallKind::Streaming,
        ))
        .await
        .expect("wait");
    assert_eq!(waited["StatusCode"], 0);
    docker
        .send_unit(ApiRequest::new(
            "ContainerDelete",
            http::Method::DELETE,
            format!("/containers/{id}"),
            CallKind::Ordinary,
        ))
        .await
        .expect("remove");
    t0.elapsed()
}

/// A bare HTTP/1.1 client on one kept-alive unix connection.
struct Raw {
    conn: BufReader<UnixStream>,
}

impl Raw {
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\n");
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.conn.get_mut().write_all(&bytes).await.unwrap();

        let mut line = String::new();
        self.conn.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.conn.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<usize>().unwrap());
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.conn.read_line(&mut line).await.unwrap();
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.conn.read_exact(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            out.resize(n, 0);
            self.conn.read_exact(&mut out).await.unwrap();
        }
        (status, out)
    }

    async fn cycle(&mut self, prefix: &str, image: &str) -> Duration {
        let t0 = Instant::now();
        let (s, body) = self
            .call(
                "POST",
                &format!("{prefix}/containers/create"),
                &create_body(image),
            )
            .await;
        assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let id = v["Id"].as_str().unwrap().to_string();
        let (s, _) = self
            .call("POST", &format!("{prefix}/containers/{id}/start"), b"")
            .await;
        assert_eq!(s, 204);
        let (s, body) = self
            .call("POST", &format!("{prefix}/containers/{id}/wait"), b"")
            .await;
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["StatusCode"], 0);
        let (s, _) = self
            .call("DELETE", &format!("{prefix}/containers/{id}"), b"")
            .await;
        assert_eq!(s, 204);
        t0.elapsed()
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let n = support::setup::count("OZ_BENCH_N", 30, 5);
    let host = var("OZ_TEST_DOCKER_HOST", "unix:///var/run/docker.sock");
    let image = var("OZ_TEST_IMAGE_BUSYBOX", "oz-test/busybox:latest");
    let Some(socket) = host.strip_prefix("unix://") else {
        support::setup::missing(
            "lifecycle",
            &format!("OZ_TEST_DOCKER_HOST is {host}; this bench needs a unix:// socket"),
        );
    };
    if std::os::unix::net::UnixStream::connect(socket).is_err() {
        support::setup::missing("lifecycle", &format!("no daemon answers at {socket}"));
    }
    let env = EnvSnapshot::empty().with_var("DOCKER_HOST", host.as_str());
    let docker = Docker::connect(&env)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("/v{}", docker.api_version());
    let mut raw = Raw {
        conn: BufReader::new(UnixStream::connect(socket).await.unwrap()),
    };

    // Warm-up: pools, page cache, the daemon's image lookup.
    for _ in 0..2 {
        ours(&docker, &image).await;
        raw.cycle(&prefix, &image).await;
    }
    let mut ours_t = Vec::with_capacity(n);
    let mut raw_t = Vec::with_capacity(n);
    for i in 0..n {
        if i % 2 == 0 {
            ours_t.push(ours(&docker, &image).await);
            raw_t.push(raw.cycle(&prefix, &image).await);
        } else {
            raw_t.push(raw.cycle(&prefix, &image).await);
            ours_t.push(ours(&docker, &image).await);
        }
    }
    // Each pair ran back to back: their ratio cancels slow drift in the
    // machine's load better than the ratio of medians.
    let mut paired: Vec<f64> = ours_t
        .iter()
        .zip(&raw_t)
        .map(|(o, r)| o.as_secs_f64() / r.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    let paired = paired[paired.len() / 2];
    let (mo, mr) = (stats::median(&ours_t), stats::median(&raw_t));
    let ratio = mo.as_secs_f64() / mr.as_secs_f64();
    println!(
        "lifecycle x{n} on {host} ({} {}, API {}):",
        docker.engine().kind,
        docker.engine().version,
        docker.api_version()
    );
    println!("  client median:   {:8.1} ms", mo.as_secs_f64() * 1e3);
    println!("  raw HTTP median: {:8.1} ms", mr.as_secs_f64() * 1e3);
    println!("  ratio:           {ratio:8.3} (goal <= 1.02)");
    println!("  paired ratio:    {paired:8.3} (median of per-cycle ratios)");

    // The client's own cost per request, where the daemon does almost
    // nothing: `GET /_ping`, interleaved.
    let pings = 20 * n.max(10);
    let (mut po, mut pr) = (Vec::with_capacity(pings), Vec::with_capacity(pings));
    for _ in 0..pings {
        let t0 = Instant::now();
        docker.ping().await.expect("ping");
        po.push(t0.elapsed());
        let t0 = Instant::now();
        let (s, _) = raw.call("GET", &format!("{prefix}/_ping"), b"").await;
        assert_eq!(s, 200);
        pr.push(t0.elapsed());
    }
    let (po, pr) = (stats::median(&po), stats::median(&pr));
    println!(
        "  per-request cost (GET /_ping x{pings}): client {:.0} µs, raw {:.0} µs, overhead {:.0} µs",
        po.as_secs_f64() * 1e6,
        pr.as_secs_f64() * 1e6,
        (po.as_secs_f64() - pr.as_secs_f64()) * 1e6
    );

    let mut r = Report::new("lifecycle", "Docker client vs. raw HTTP");
    r.text(&format!(
        "{n} create → start → wait → remove cycles of a `true` container through the worker's \
         Docker client and through hand-written HTTP/1.1 on one kept-alive connection to the \
         same socket ({host}, {} {}, API {}), interleaved; then {pings} `GET /_ping` each way.",
        docker.engine().kind,
        docker.engine().version,
        docker.api_version()
    ));
    r.table(
        &["figure", "value"],
        &[
            vec!["raw HTTP cycle, median".into(), stats::ms(mr)],
            vec!["client cycle, median".into(), stats::ms(mo)],
            vec![
                "ratio of medians (goal ≤ 1.02)".into(),
                format!("{ratio:.3} ({})", verdict(ratio <= 1.02)),
            ],
            vec!["median of paired ratios".into(), format!("{paired:.3}")],
            vec![
                "per request, `GET /_ping`: client / raw".into(),
                format!("{} / {}", stats::us(po), stats::us(pr)),
            ],
        ],
    );
    r.goal(
        "Docker client / raw HTTP, container lifecycle",
        &format!("{ratio:.3}"),
        "≤ 1.02",
        Some(ratio <= 1.02),
    );
    r.finish();
}
