//! `GET pods/{name}/log` (`container`, `follow`, `timestamps`, `tailLines`,
//! `sinceSeconds`, `sinceTime`, `previous`) from the container's Docker
//! logs, with the API server's and the kubelet's refusals: a parameter that
//! does not parse is a 400, `PodLogOptions` validation (negative
//! `tailLines`, `sinceSeconds` below 1, both `sinceSeconds` and
//! `sinceTime`) a 422, a container name required when the Pod has several,
//! a waiting container is a 400, `previous` has no earlier container (no
//! restarts here).
//!
//! `sinceTime` is RFC 3339; like the kubelet, lines logged at or after it
//! are returned (Docker's `--since` keeps the same rule), so a follower can
//! resume at the second of the last line it saw.

use std::collections::HashMap;

use bytes::Bytes;
use http::Response;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::api::{api_error, text, text_stream, Body, Ctx};
use crate::meta::{parse_time, ApiError, Cause, Resource};

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The parsed options a log request may carry.
struct LogOptions {
    tail: Option<i64>,
    /// `docker logs --since`: Unix seconds with nanoseconds.
    since: Option<String>,
}

/// Decodes and validates the options as the API server does before it
/// looks at the Pod (k8s.io/kubernetes pkg/apis/core/validation
/// `ValidatePodLogOptions`).
fn options(name: &str, q: &HashMap<String, String>) -> Result<LogOptions, ApiError> {
    let int = |key: &str| -> Result<Option<i64>, ApiError> {
        q.get(key)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "strconv.ParseInt: parsing {v:?}: invalid syntax"
                    ))
                })
            })
            .transpose()
    };
    let tail = int("tailLines")?;
    let since_seconds = int("sinceSeconds")?;
    let since_time = q
        .get("sinceTime")
        .map(|v| {
            parse_time(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parsing time {v:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse {v:?} as RFC 3339"
                ))
            })
        })
        .transpose()?;
    let mut causes = Vec::new();
    if let Some(t) = tail.filter(|t| *t < 0) {
        causes.push(Cause::invalid(
            "tailLines",
            &Value::from(t),
            "must be greater than or equal to 0",
        ));
    }
    match (since_seconds, since_time) {
        (Some(_), Some(_)) => causes.push(Cause::forbidden(
            "",
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        )),
        (Some(s), None) if s < 1 => causes.push(Cause::invalid(
            "sinceSeconds",
            &Value::from(s),
            "must be greater than 0",
        )),
        _ => {}
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid_options("PodLogOptions", name, causes));
    }
    let since = match (since_seconds, since_time) {
        (Some(s), _) => Some(format!("{s}s")),
        (None, Some(t)) => Some(format!(
            "{}.{:09}",
            t.timestamp(),
            t.timestamp_subsec_nanos()
        )),
        (None, None) => None,
    };
    Ok(LogOptions { tail, since })
}

pub async fn serve(ctx: &Ctx, ns: &str, name: &str, q: &HashMap<String, String>) -> Response<Body> {
    let opts = match options(name, q) {
        Ok(o) => o,
        Err(e) => return api_error(e),
    };
    let Some(pod) = ctx
        .shared
        .read(|s| s.get(Resource::Pods, ns, name).cloned())
    else {
        return api_error(ApiError::not_found(Resource::Pods, name));
    };
    let init = names(&pod, "initContainers");
    let main = names(&pod, "containers");
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.clone(),
        None if main.len() == 1 => main[0].clone(),
        None => {
            return api_error(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
                main.join(" "),
                init.join(" ")
            )))
        }
    };
    let is_init = init.contains(&container);
    if !is_init && !main.contains(&container) {
        return api_error(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    if q.get("previous").is_some_and(|v| v == "true") {
        return api_error(ApiError::bad_request(format!(
            "previous terminated container {container:?} in pod {name:?} not found"
        )));
    }
    let list = if is_init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    let status = pod["status"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == container.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    let id = status["containerID"]
        .as_str()
        .and_then(|c| c.strip_prefix("docker://"))
        .map(str::to_string);
    let Some(id) = id else {
        let reason = status["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or("ContainerCreating");
        return api_error(ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is waiting to start: {reason}"
        )));
    };
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    let timestamps = q.get("timestamps").is_some_and(|v| v == "true" || v == "1");
    let mut child = match ctx
        .docker
        // Whole logs are read with timestamps to put the two streams back
        // in log order, as the kubelet's one log file has them.
        .logs(
            &id,
            follow,
            timestamps || !follow,
            opts.tail,
            opts.since.as_deref(),
        ) {
        Ok(c) => c,
        Err(e) => return api_error(ApiError::internal(format!("docker logs: {e}"))),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    if !follow {
        // Whole output at once: the container's two streams merged by the
        // time each line was logged.
        let mut out = Vec::new();
        let mut err = Vec::new();
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let _ = child.wait().await;
        if !err.is_empty() && out.is_empty() && err.starts_with(b"Error") {
            return api_error(ApiError::bad_request(
                String::from_utf8_lossy(&err).trim().to_string(),
            ));
        }
        return text(200, Bytes::from(in_log_order(&out, &err, timestamps)));
    }
    tokio::spawn(async move {
        let mut a = [0u8; 8192];
        let mut b = [0u8; 8192];
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                n = stdout.read(&mut a), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => if tx.send(Bytes::copy_from_slice(&a[..n])).await.is_err() { break },
                },
                n = stderr.read(&mut b), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => if tx.send(Bytes::copy_from_slice(&b[..n])).await.is_err() { break },
                },
            }
        }
        let _ = child.kill().await;
    });
    text_stream(rx)
}

/// Two streams of `docker logs --timestamps` merged by their timestamps
/// (Docker's are RFC 3339 with a fixed nine-digit fraction in UTC, so they
/// sort as text); the timestamps kept only when asked for.
fn in_log_order(out: &[u8], err: &[u8], timestamps: bool) -> Vec<u8> {
    let stamp = |l: &[u8]| -> Vec<u8> { l.iter().take_while(|b| **b != b' ').copied().collect() };
    let mut a = out.split_inclusive(|b| *b == b'\n').peekable();
    let mut b = err.split_inclusive(|b| *b == b'\n').peekable();
    let mut merged = Vec::with_capacity(out.len() + err.len());
    loop {
        let line = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if stamp(y) < stamp(x) => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        };
        let Some(line) = line else { break };
        if timestamps {
            merged.extend_from_slice(line);
        } else {
            let cut = line.iter().position(|c| *c == b' ').map_or(0, |i| i + 1);
            merged.extend_from_slice(&line[cut..]);
        }
    }
    merged
}
