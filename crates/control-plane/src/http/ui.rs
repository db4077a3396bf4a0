//! The management UI, served by `serve` itself: hand-written HTML, CSS and
//! JavaScript under `ui/`, embedded in the binary (`include_str!`), no
//! build step. The pages are static and hold no data: the scripts read the
//! same `/api/v1` the CLI uses, signed in by a session cookie instead of a
//! bearer key, so a team sees exactly what its key shows.
//!
//! - `GET /` and `GET /ui` → redirect to `/ui/`
//! - `GET /ui/` → the app (workers, runs, a run with its live output, a new
//!   run, schedules); `GET /ui/login` → the sign-in form
//! - `POST /ui/login` (form `api_key`) → a session: cookie `oz_session`,
//!   HttpOnly, SameSite=Strict, Secure over TLS; then back to `/ui/`.
//!   Past `--max-failed-logins` failures from one address within a minute,
//!   `429` with `Retry-After`; the body must arrive within
//!   `--body-read-timeout`.
//! - `GET /ui/session` → the team and the session's CSRF token (JSON, for
//!   the scripts to send back in `X-CSRF-Token`)
//! - `POST /ui/logout` (with the token) → the session ends and its cookie
//!   is cleared
//! - `GET /ui/app.js`, `/ui/login.js`, `/ui/style.css`
//!
//! Every page is sent with a Content-Security-Policy that allows scripts
//! and styles from this origin only (no inline script, no `eval`), forbids
//! framing, and limits forms and connections to this origin.

#![allow(clippy::result_large_err)]

use crate::http::endpoint_support::{
    check_change, error_response, full, json_response, live_session, read_body, same_origin,
    session_id, Body, Peer, Shared,
};
use crate::http::sessions;
use crate::store::keys;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use oz_foundation::escape::Escaped;
use serde::Serialize;

pub(crate) const UI_PREFIX: &str = "/ui";

const INDEX_HTML: &str = include_str!("ui/index.html");
const LOGIN_HTML: &str = include_str!("ui/login.html");
const APP_JS: &str = include_str!("ui/app.js");
const LOGIN_JS: &str = include_str!("ui/login.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// No inline script or style, nothing from elsewhere, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// `GET /ui/session`.
#[derive(Serialize)]
struct SessionInfo<'a> {
    team: &'a str,
    team_id: i64,
    csrf_token: &'a str,
}

/// Whether `path` is the UI's (or the root, which leads to it).
pub(crate) fn serves(path: &str) -> bool {
    path == "/" || path == UI_PREFIX || path.starts_with("/ui/")
}

pub(crate) async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let path = req.uri().path().to_string();
    // HEAD is GET without the body (RFC 9110 §9.3.2): hyper leaves the
    // body out and keeps its length.
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let resp = match (method, path.as_str()) {
        (Method::GET, "/" | "/ui") => redirect("/ui/"),
        (Method::GET, "/ui/") => asset(INDEX_HTML, "text/html; charset=utf-8"),
        (Method::GET, "/ui/login") => asset(LOGIN_HTML, "text/html; charset=utf-8"),
        (Method::GET, "/ui/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        (Method::GET, "/ui/login.js") => asset(LOGIN_JS, "text/javascript; charset=utf-8"),
        (Method::GET, "/ui/style.css") => asset(STYLE_CSS, "text/css; charset=utf-8"),
        (Method::POST, "/ui/login") => login(req, shared).await,
        (Method::POST, "/ui/logout") => logout(&req, shared),
        (Method::GET, "/ui/session") => session(&req, shared).await,
        (_, p) if allowed(p).is_some() => {
            let allow = allowed(p).unwrap_or_default();
            let mut resp = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{} is not allowed on {path}; use {allow}", req.method()),
            );
            // RFC 9110 §15.5.6: a 405 lists the methods the resource has.
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
        _ => error_response(StatusCode::NOT_FOUND, &format!("no such page: {path}")),
    };
    secure(resp)
}

/// The methods a UI path answers (`Allow`), `None` for no such page.
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/login.js" | "/ui/style.css" | "/ui/session" => {
            Some("GET, HEAD")
        }
        "/ui/login" => Some("GET, HEAD, POST"),
        "/ui/logout" => Some("POST"),
        _ => None,
    }
}

/// The headers every UI response carries.
fn secure(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with the
    // UI's own form posts, which the origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // Assets change with the binary: revalidate rather than trust a
        // copy from another version.
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full(text))
        .expect("static response parts are valid")
}

fn redirect(to: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .body(full(""))
        .expect("static response parts are valid")
}

fn session_cookie(shared: &Shared, value: &str, max_age: u64) -> HeaderValue {
    let secure = if shared.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        sessions::COOKIE
    ))
    .expect("tokens are base64url")
}

/// The sign-in form's post: a team key in, a session cookie out.
async fn login(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    // No session exists yet for SameSite to protect: a form posted from
    // another site (signing the browser into someone else's team) is
    // refused by origin.
    if let Err(resp) = same_origin(&req, shared) {
        return resp;
    }
    let addr = req.extensions().get::<Peer>().map(|p| p.0.ip());
    if let Some(retry) = addr.and_then(|a| shared.login_limit.check(a).err()) {
        return too_many_failures(retry);
    }
    let body = match read_body(req, 8 * 1024).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let key = form_urlencoded(&body, "api_key").unwrap_or_default();
    let key = key.trim();
    if key.is_empty() {
        return redirect("/ui/login?error=missing");
    }
    let team = match shared.run_scheduler.store().team_for_key(key).await {
        Ok(Some(team)) => team,
        Ok(None) => {
            if let Some(a) = addr {
                shared.login_limit.failed(a);
            }
            return redirect("/ui/login?error=invalid");
        }
        Err(e) => {
            tracing::error!("{e}");
            return redirect("/ui/login?error=database");
        }
    };
    let (id, _) = match shared.sessions.start(team.clone(), &keys::hash(key)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start a UI session: {e}");
            return redirect("/ui/login?error=random");
        }
    };
    tracing::info!(team = %Escaped(&team.name), "UI sign-in");
    let mut resp = redirect("/ui/");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(shared, &id, shared.sessions.limits().lifetime.as_secs()),
    );
    resp
}

/// 429 for an address past `--max-failed-logins`.
fn too_many_failures(retry: std::time::Duration) -> Response<Body> {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "too many failed sign-ins from this address (--max-failed-logins per minute); try again in {} s",
            retry.as_secs()
        ),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&retry.as_secs().to_string()).expect("digits"),
    );
    resp
}

fn logout(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    let Some(id) = session_id(req.headers()) else {
        return error_response(StatusCode::UNAUTHORIZED, "not signed in");
    };
    let Some(session) = shared.sessions.get(id) else {
        return error_response(StatusCode::UNAUTHORIZED, "not signed in");
    };
    if let Err(resp) = check_change(req, shared, &session) {
        return resp;
    }
    shared.sessions.end(id);
    let mut resp = Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(full(""))
        .expect("static response parts are valid");
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(shared, "", 0));
    resp
}

async fn session(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    let found = match session_id(req.headers()) {
        Some(id) => match live_session(shared, id).await {
            Ok(s) => s,
            Err(resp) => return resp,
        },
        None => None,
    };
    match found {
        Some(s) => json_response(
            StatusCode::OK,
            &SessionInfo {
                team: &s.team.name,
                team_id: s.team.id,
                csrf_token: &s.csrf_token,
            },
        ),
        None => error_response(
            StatusCode::UNAUTHORIZED,
            "not signed in; sign in at /ui/login",
        ),
    }
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn form_urlencoded(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_no_inline_script_or_style() {
        for page in [INDEX_HTML, LOGIN_HTML] {
            // Every <script> has a src; no handler or style attributes,
            // which the policy would block anyway.
            for tag in page.split("<script").skip(1) {
                let open = &tag[..tag.find('>').unwrap()];
                assert!(open.contains("src=\"/ui/"), "{open}");
                assert!(tag[tag.find('>').unwrap() + 1..].starts_with("</script>"));
            }
            assert!(!page.contains(" style="), "inline style");
            assert!(!page.contains(" onclick="), "inline handler");
            assert!(!page.contains("<style"), "inline stylesheet");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_urlencoded(b"x=1&api_key=ozk_a%2Bb+c", "api_key").as_deref(),
            Some("ozk_a+b c")
        );
        assert_eq!(form_urlencoded(b"x=1", "api_key"), None);
    }
}
