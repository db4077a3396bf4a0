//! `GET pods/{name}/log` (`container`, `follow`, `timestamps`, `tailLines`,
//! `sinceSeconds`, `previous`) from the container's Docker logs, with the
//! kubelet's refusals: a container name required when the Pod has several,
//! a waiting container is a 400, `previous` has no earlier container (no
//! restarts here).

use std::collections::HashMap;

use bytes::Bytes;
use http::Response;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::api::{api_error, text, text_stream, Body, Ctx};
use crate::meta::{ApiError, Resource};

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

pub async fn serve(ctx: &Ctx, ns: &str, name: &str, q: &HashMap<String, String>) -> Response<Body> {
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
    let tail = q.get("tailLines").and_then(|t| t.parse().ok());
    let since = q.get("sinceSeconds").map(|s| format!("{s}s"));
    let mut child = match ctx
        .docker
        .logs(&id, follow, timestamps, tail, since.as_deref())
    {
        Ok(c) => c,
        Err(e) => return api_error(ApiError::internal(format!("docker logs: {e}"))),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    if !follow {
        // Whole output at once: the container's two streams as Docker
        // stored them, stdout first (no interleaving without timestamps).
        let mut out = Vec::new();
        let mut err = Vec::new();
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let _ = child.wait().await;
        if !err.is_empty() && out.is_empty() && err.starts_with(b"Error") {
            return api_error(ApiError::bad_request(
                String::from_utf8_lossy(&err).trim().to_string(),
            ));
        }
        out.extend_from_slice(&err);
        return text(200, Bytes::from(out));
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
