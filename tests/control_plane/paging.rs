//! `GET /api/v1/runs` a page at a time, with 5,000 runs created through the
//! API: pages of at most `limit` runs, newest first, that together hold
//! every run exactly once (also while new runs are created mid-way), with
//! the filters applied to every page; each answer bounded by its limit; a
//! bad `limit` or `cursor` refused with 400 naming it; and the CLI's
//! `runs list` showing one page, the next with `--cursor`, or every run
//! with `--all`.

use oz_test_support as support;

use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use oz_control_plane::{Config, Storage};
use oz_runs_api::client::RunQuery;
use oz_runs_api::model::{CreateRunRequest, Run, RunList, RunState};
use std::collections::{BTreeSet, HashSet};
use support::control_plane::TestPlane;

const RUNS: usize = 5_000;

/// A file store (the real set-up) with the default timers.
async fn plane(dir: &tempfile::TempDir) -> TestPlane {
    let mut config = Config::ephemeral();
    config.storage = Storage::File(dir.path().join("cp.sqlite3"));
    TestPlane::start(config).await
}

/// `GET path` with the team key: (status, body bytes).
async fn get(t: &TestPlane, path: &str) -> (u16, Vec<u8>) {
    let req = http::Request::get(format!("{}{path}", t.plane.url()))
        .header("Authorization", format!("Bearer {}", t.key))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = HttpClient::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

/// Every page of `query` (a query string without `cursor`), in order: the
/// pages and the largest answer in bytes.
async fn pages(t: &TestPlane, query: &str) -> (Vec<RunList>, usize) {
    let mut out = Vec::new();
    let mut largest = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/runs?{query}&cursor={c}"),
            None => format!("/api/v1/runs?{query}"),
        };
        let (status, body) = get(t, &path).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        largest = largest.max(body.len());
        let page: RunList = serde_json::from_slice(&body).unwrap();
        cursor = page.next_cursor.clone();
        out.push(page);
        if cursor.is_none() {
            return (out, largest);
        }
        assert!(out.len() <= RUNS, "paging does not end");
    }
}

fn run_for(host: &str, i: usize) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        title: Some(format!("paging {i}")),
        prompt: Some("list me".into()),
        ..Default::default()
    }
}

/// Creates `n` runs through the API, 16 at a time, alternating hosts
/// `page-a` and `page-b`; their ids.
async fn create(t: &TestPlane, n: usize) -> Vec<Run> {
    let client = t.client();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let client = &client;
            async move {
                let host = if i % 2 == 0 { "page-a" } else { "page-b" };
                client.create_run(&run_for(host, i)).await.unwrap()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Newest first: creation times never increase down the list.
fn assert_newest_first(runs: &[Run]) {
    for w in runs.windows(2) {
        assert!(
            w[0].created_at >= w[1].created_at,
            "{} ({}) before {} ({})",
            w[0].id,
            w[0].created_at,
            w[1].id,
            w[1].created_at
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_runs_page_exactly_once_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let t = plane(&dir).await;
    let created = create(&t, RUNS).await;
    let all_ids: HashSet<String> = created.iter().map(|r| r.id.clone()).collect();
    assert_eq!(all_ids.len(), RUNS);
    // The newest run is on top of the first page.
    let newest = t
        .client()
        .create_run(&run_for("page-a", RUNS))
        .await
        .unwrap();

    // Default pages: 100 runs each; together every run once, newest first.
    let (default_pages, default_largest) = pages(&t, "").await;
    assert_eq!(default_pages.len(), (RUNS + 1).div_ceil(100));
    assert!(default_pages.iter().all(|p| p.runs.len() <= 100));
    assert!(default_pages[..default_pages.len() - 1]
        .iter()
        .all(|p| p.runs.len() == 100));
    let listed: Vec<Run> = default_pages.into_iter().flat_map(|p| p.runs).collect();
    assert_eq!(listed[0].id, newest.id);
    let listed_ids: Vec<&String> = listed.iter().map(|r| &r.id).collect();
    let unique: HashSet<&String> = listed_ids.iter().copied().collect();
    assert_eq!(unique.len(), listed_ids.len(), "a run is on two pages");
    assert_eq!(unique.len(), RUNS + 1);
    assert!(all_ids.iter().all(|id| unique.contains(id)));
    assert_newest_first(&listed);
    assert!(
        listed.iter().all(|r| r.history.is_empty()),
        "lists carry no history"
    );

    // Each answer is bounded by its limit: a page of 100 is at most 100
    // times a page of the newest run alone (whose title is as long as any),
    // and a small part of the whole list.
    let (_, one) = get(&t, "/api/v1/runs?limit=1").await;
    let (whole_pages, _) = pages(&t, "limit=1000").await;
    let whole: usize = whole_pages
        .iter()
        .map(|p| serde_json::to_vec_pretty(p).unwrap().len())
        .sum();
    assert!(
        default_largest <= 100 * one.len(),
        "a page of 100 took {default_largest} bytes; one run {}",
        one.len()
    );
    assert!(default_largest * 40 < whole, "{default_largest} of {whole}");
    eprintln!(
        "figures: {} runs; whole list {whole} bytes; largest page of 100 {default_largest} bytes; a page of 1 {} bytes",
        RUNS + 1,
        one.len()
    );

    // The largest pages: 1000 each, the same runs in the same order.
    let (big_pages, big_largest) = pages(&t, "limit=1000").await;
    assert_eq!(big_pages.len(), (RUNS + 1).div_ceil(1000));
    let big: Vec<String> = big_pages
        .into_iter()
        .flat_map(|p| p.runs)
        .map(|r| r.id)
        .collect();
    assert_eq!(big, listed.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    assert!(big_largest <= 1000 * one.len());

    // Filters apply to every page: page-b's runs, 333 a page.
    let (b_pages, _) = pages(&t, "worker_host=page-b&limit=333").await;
    let b: Vec<Run> = b_pages.into_iter().flat_map(|p| p.runs).collect();
    let expected_b: BTreeSet<&String> = created
        .iter()
        .filter(|r| r.worker_host == "page-b")
        .map(|r| &r.id)
        .collect();
    assert_eq!(b.len(), RUNS / 2);
    assert_eq!(b.iter().map(|r| &r.id).collect::<BTreeSet<_>>(), expected_b);
    assert_newest_first(&b);
    // And the state filter: the cancelled ones, 3 a page.
    let client = t.client();
    let cancelled: BTreeSet<String> = created[..10].iter().map(|r| r.id.clone()).collect();
    for id in &cancelled {
        client.cancel_run(id).await.unwrap();
    }
    let (c_pages, _) = pages(&t, "state=cancelled&limit=3").await;
    assert_eq!(c_pages.len(), 4);
    let c: BTreeSet<String> = c_pages
        .into_iter()
        .flat_map(|p| p.runs)
        .inspect(|r| assert_eq!(r.state, RunState::Cancelled))
        .map(|r| r.id)
        .collect();
    assert_eq!(c, cancelled);

    // Runs created while a client pages come before its first page: the
    // rest of its pages hold the runs that were there, each once.
    let first = client
        .list_runs_page(&RunQuery {
            limit: Some(500),
            ..Default::default()
        })
        .await
        .unwrap();
    let during = create(&t, 20).await;
    let mut seen: Vec<String> = first.runs.iter().map(|r| r.id.clone()).collect();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = client
            .list_runs_page(&RunQuery {
                limit: Some(500),
                cursor: Some(&c),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.runs.into_iter().map(|r| r.id));
        cursor = page.next_cursor;
    }
    assert_eq!(
        seen,
        listed.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert!(during.iter().all(|r| !seen.contains(&r.id)));

    // The CLI: one page, the next from its cursor, or every run.
    let (page, hint) = cli(&t, &["--limit", "7"]).await;
    assert_eq!(page.len(), 7);
    assert_eq!(page[0].id, during_newest(&client).await);
    let next = hint
        .split_whitespace()
        .skip_while(|w| *w != "--cursor")
        .nth(1)
        .unwrap_or_else(|| panic!("no next cursor in {hint:?}"))
        .to_string();
    let (second, _) = cli(&t, &["--limit", "7", "--cursor", &next]).await;
    assert_eq!(second.len(), 7);
    assert!(second.iter().all(|r| page.iter().all(|p| p.id != r.id)));
    let (every, hint) = cli(&t, &["--all"]).await;
    assert!(hint.is_empty(), "{hint}");
    assert_eq!(every.len(), RUNS + 1 + 20);
    assert_eq!(
        every.iter().map(|r| &r.id).collect::<HashSet<_>>().len(),
        every.len()
    );
    assert_newest_first(&every);
    let (filtered, _) = cli(&t, &["--all", "--host", "page-b", "--limit", "250"]).await;
    assert_eq!(filtered.len(), RUNS / 2 + 10);
    assert!(filtered.iter().all(|r| r.worker_host == "page-b"));
}

/// `runs list --json ARGS` of the real binary: the runs and its stderr.
async fn cli(t: &TestPlane, args: &[&str]) -> (Vec<Run>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["runs", "list", "--json", "--server", &t.plane.url()])
        .args(args)
        .env("WARP_API_KEY", &t.key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<Run> = serde_json::from_slice(&out.stdout).unwrap();
    (runs, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The newest run's id, from the API's first page of one.
async fn during_newest(client: &oz_runs_api::client::Client) -> String {
    client
        .list_runs_page(&RunQuery {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .runs[0]
        .id
        .clone()
}

#[tokio::test]
async fn a_bad_limit_or_cursor_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = plane(&dir).await;
    create(&t, 3).await;
    for (query, names) in [
        ("limit=0", ["limit", "1 to 1000"]),
        ("limit=1001", ["limit", "1 to 1000"]),
        ("limit=ten", ["limit", "1 to 1000"]),
        ("limit=-1", ["limit", "1 to 1000"]),
        ("cursor=bm90LWEtY3Vyc29y", ["cursor", "next_cursor"]),
        ("cursor=%%%", ["cursor", "next_cursor"]),
        ("page=2", ["page", "limit and cursor"]),
    ] {
        let (status, body) = get(&t, &format!("/api/v1/runs?{query}")).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{query}: {body}");
        for n in names {
            assert!(body.contains(n), "{query}: {body}");
        }
    }
    // The edges of the range are fine; the last page has no cursor.
    let (status, body) = get(&t, "/api/v1/runs?limit=1000").await;
    assert_eq!(status, 200);
    let page: RunList = serde_json::from_slice(&body).unwrap();
    assert_eq!((page.runs.len(), page.next_cursor), (3, None));
    let (status, body) = get(&t, "/api/v1/runs?limit=1").await;
    assert_eq!(status, 200);
    let page: RunList = serde_json::from_slice(&body).unwrap();
    assert_eq!(page.runs.len(), 1);
    assert!(page.next_cursor.is_some());
    // The CLI refuses a limit outside the range before asking.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args([
            "runs",
            "list",
            "--limit",
            "1001",
            "--server",
            &t.plane.url(),
        ])
        .env("WARP_API_KEY", &t.key)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit"));
}
