//! The management UI over plain HTTP(S), without a browser: the pages'
//! security headers, sign-in (cookie flags, refused keys, refused foreign
//! origins), CSRF protection of changes made with the session, team
//! isolation through the session, sign-out, `Secure` over TLS, and a
//! session cookie that opens nothing but the API (not the worker endpoint).
//! The browser itself is driven in `tests/control_plane/ui_browser.rs`.

use oz_test_support as support;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use oz_control_plane::Config;
use oz_runs_api::model::CreateRunRequest;
use std::path::Path;
use std::sync::Arc;
use support::control_plane::{test_config, TestCa, TestPlane};

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One request; `ca` makes it HTTPS trusting that CA only.
async fn http(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    ca: Option<&Path>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = match ca {
        None => HttpClient::builder(TokioExecutor::new())
            .build_http()
            .request(req)
            .await
            .unwrap(),
        Some(ca) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap())
                .unwrap();
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .build();
            HttpClient::builder(TokioExecutor::new())
                .build(https)
                .request(req)
                .await
                .unwrap()
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Answer {
        status,
        headers,
        body,
    }
}

/// What a browser on the UI's own page sends with a change.
fn origin_of(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// Signs in with `key`: the `oz_session=…` pair and the whole Set-Cookie.
async fn sign_in(base: &str, key: &str, ca: Option<&Path>) -> (String, String) {
    let origin = origin_of(base);
    let a = http(
        Method::POST,
        &format!("{base}/ui/login"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", &origin),
        ],
        &format!("api_key={key}"),
        ca,
    )
    .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), "/ui/");
    let set = a.header("set-cookie").to_string();
    let pair = set.split(';').next().unwrap().to_string();
    assert!(pair.starts_with("oz_session="), "{set}");
    (pair, set)
}

async fn csrf_token(base: &str, cookie: &str) -> String {
    let a = http(
        Method::GET,
        &format!("{base}/ui/session"),
        &[("cookie", cookie)],
        "",
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["team"], "alpha");
    v["csrf_token"].as_str().unwrap().to_string()
}

fn run_body(env_value: &str) -> String {
    serde_json::to_string(&CreateRunRequest {
        worker_host: "w1".into(),
        title: Some("from a session".into()),
        env_vars: [("TOKEN".to_string(), env_value.into())].into(),
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn pages_are_static_and_forbid_inline_scripts_and_framing() {
    let t = TestPlane::start(test_config()).await;
    let base = t.plane.url();
    let root = http(Method::GET, &format!("{base}/"), &[], "", None).await;
    assert_eq!((root.status, root.header("location")), (303, "/ui/"));
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/login", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/login.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let a = http(Method::GET, &format!("{base}{path}"), &[], "", None).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.header("content-type").starts_with(kind), "{path}");
        let csp = a.header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{path}: {csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(a.header("x-content-type-options"), "nosniff");
        assert_eq!(a.header("x-frame-options"), "DENY");
        // Pages carry no data and no secret: the same bytes for everyone.
        assert!(!a.body.contains(&t.key));
    }
    // Not signed in: the session endpoint and the API say so.
    let s = http(Method::GET, &format!("{base}/ui/session"), &[], "", None).await;
    assert_eq!(s.status, 401);
}

#[tokio::test]
async fn signing_in_sets_an_http_only_same_site_cookie_and_refuses_bad_keys_and_other_sites() {
    let t = TestPlane::start(test_config()).await;
    let base = t.plane.url();
    let origin = origin_of(&base);
    let bad = http(
        Method::POST,
        &format!("{base}/ui/login"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", &origin),
        ],
        "api_key=ozk_not_a_key",
        None,
    )
    .await;
    assert_eq!(bad.status, 303);
    assert_eq!(bad.header("location"), "/ui/login?error=invalid");
    assert!(bad.headers.get("set-cookie").is_none());

    // A form on another site signing this browser into some team.
    let foreign = http(
        Method::POST,
        &format!("{base}/ui/login"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "http://evil.example"),
        ],
        &format!("api_key={}", t.key),
        None,
    )
    .await;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert!(foreign.headers.get("set-cookie").is_none());

    let (pair, set) = sign_in(&base, &t.key, None).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!pair.contains(&t.key), "the cookie is not the key: {set}");
}

#[tokio::test]
async fn changes_made_with_the_session_need_its_csrf_token_from_the_same_origin() {
    let t = TestPlane::start(test_config()).await;
    let base = t.plane.url();
    let origin = origin_of(&base);
    let (cookie, _) = sign_in(&base, &t.key, None).await;
    let token = csrf_token(&base, &cookie).await;
    let runs = format!("{base}/api/v1/runs");
    // Reads need only the cookie.
    let list = http(Method::GET, &runs, &[("cookie", &cookie)], "", None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let json = ("content-type", "application/json");
    let body = run_body("s3cret-value");
    for (why, headers) in [
        (
            "no token",
            vec![("cookie", cookie.as_str()), json, ("origin", &origin)],
        ),
        (
            "a wrong token",
            vec![
                ("cookie", &cookie),
                json,
                ("origin", &origin),
                ("x-csrf-token", "x"),
            ],
        ),
        (
            "another origin",
            vec![
                ("cookie", &cookie),
                json,
                ("origin", "http://evil.example"),
                ("x-csrf-token", &token),
            ],
        ),
        (
            "a cross-site fetch",
            vec![
                ("cookie", &cookie),
                json,
                ("sec-fetch-site", "cross-site"),
                ("x-csrf-token", &token),
            ],
        ),
    ] {
        let a = http(Method::POST, &runs, &headers, &body, None).await;
        assert_eq!(a.status, 403, "{why}: {}", a.body);
    }
    assert!(t.client().list_runs(None, None).await.unwrap().is_empty());

    let ok = http(
        Method::POST,
        &runs,
        &[
            ("cookie", &cookie),
            json,
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
            ("x-csrf-token", &token),
        ],
        &body,
        None,
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    // Env values are never shown, through the session either.
    assert!(
        ok.body.contains("TOKEN") && !ok.body.contains("s3cret-value"),
        "{}",
        ok.body
    );
    let id = serde_json::from_str::<serde_json::Value>(&ok.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = http(
        Method::GET,
        &format!("{runs}/{id}"),
        &[("cookie", &cookie)],
        "",
        None,
    )
    .await;
    assert_eq!(shown.status, 200);
    assert!(!shown.body.contains("s3cret-value"), "{}", shown.body);
}

#[tokio::test]
async fn a_session_sees_only_its_own_team_and_ends_at_sign_out() {
    let t = TestPlane::start(test_config()).await;
    let base = t.plane.url();
    let beta = t.plane.create_api_key("beta").unwrap();
    let theirs = oz_runs_api::client::Client::new(&base, &beta.secret)
        .unwrap()
        .create_run(&CreateRunRequest {
            worker_host: "w1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (cookie, _) = sign_in(&base, &t.key, None).await;
    let get = |path: String| {
        let cookie = cookie.clone();
        async move { http(Method::GET, &path, &[("cookie", &cookie)], "", None).await }
    };
    assert_eq!(
        get(format!("{base}/api/v1/runs/{}", theirs.id))
            .await
            .status,
        404
    );
    assert!(!get(format!("{base}/api/v1/runs"))
        .await
        .body
        .contains(&theirs.id));
    assert_eq!(
        get(format!("{base}/api/v1/runs/{}/output", theirs.id))
            .await
            .status,
        404
    );

    let token = csrf_token(&base, &cookie).await;
    let origin = origin_of(&base);
    let refused = http(
        Method::POST,
        &format!("{base}/ui/logout"),
        &[("cookie", &cookie), ("origin", &origin)],
        "",
        None,
    )
    .await;
    assert_eq!(refused.status, 403, "sign-out needs the token too");
    let out = http(
        Method::POST,
        &format!("{base}/ui/logout"),
        &[
            ("cookie", &cookie),
            ("origin", &origin),
            ("x-csrf-token", &token),
        ],
        "",
        None,
    )
    .await;
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(get(format!("{base}/ui/session")).await.status, 401);
    let after = get(format!("{base}/api/v1/runs")).await;
    assert_eq!(after.status, 401);
    assert!(after.body.contains("sign in again"), "{}", after.body);
}

#[tokio::test]
async fn over_tls_the_session_cookie_is_secure() {
    let ca = TestCa::generate();
    let mut config: Config = test_config();
    config.tls = Some(oz_control_plane::TlsFiles {
        cert: ca.cert.clone(),
        key: ca.key.clone(),
    });
    let t = TestPlane::start(config).await;
    let base = t.plane.url();
    assert!(base.starts_with("https://"));
    let (_, set) = sign_in(&base, &t.key, Some(&ca.ca)).await;
    assert!(set.contains("; Secure"), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
}

#[tokio::test]
async fn a_session_cookie_does_not_open_the_worker_endpoint() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let t = TestPlane::start(test_config()).await;
    let (cookie, _) = sign_in(&t.plane.url(), &t.key, None).await;
    let mut req = format!("{}?worker_id=w1", t.plane.ws_url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("a cookie opened the worker endpoint: {other:?}"),
    }
    assert_eq!(t.plane.connection_count(), 0);
}

#[tokio::test]
async fn head_answers_like_get_without_a_body_and_405_says_what_is_allowed() {
    let plane = TestPlane::start(test_config()).await;
    let base = plane.plane.url();
    for page in ["/ui/", "/ui/login", "/ui/app.js", "/ui/style.css"] {
        let get = http(Method::GET, &format!("{base}{page}"), &[], "", None).await;
        let head = http(Method::HEAD, &format!("{base}{page}"), &[], "", None).await;
        assert_eq!(
            (get.status, head.status),
            (200, 200),
            "{page}: {}",
            head.body
        );
        assert_eq!(head.body, "", "{page}");
        assert!(!get.body.is_empty(), "{page}");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{page}"
        );
        assert_eq!(
            head.header("content-length"),
            get.body.len().to_string(),
            "{page}"
        );
        assert_eq!(
            head.header("content-security-policy"),
            get.header("content-security-policy")
        );
    }
    let head = http(Method::HEAD, &format!("{base}/"), &[], "", None).await;
    assert_eq!((head.status, head.header("location")), (303, "/ui/"));

    for (method, page, allow) in [
        (Method::DELETE, "/ui/", "GET, HEAD"),
        (Method::PUT, "/ui/login", "GET, HEAD, POST"),
        (Method::GET, "/ui/logout", "POST"),
        (Method::POST, "/ui/app.js", "GET, HEAD"),
    ] {
        let a = http(method.clone(), &format!("{base}{page}"), &[], "", None).await;
        assert_eq!(a.status, 405, "{method} {page}: {}", a.body);
        assert_eq!(a.header("allow"), allow, "{method} {page}");
        assert!(a.body.contains(allow), "{}", a.body);
    }
    let a = http(Method::HEAD, &format!("{base}/ui/nothing"), &[], "", None).await;
    assert_eq!(a.status, 404);
}
