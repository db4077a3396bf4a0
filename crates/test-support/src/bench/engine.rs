//! The Docker Engine API spoken raw, for the baselines: plain HTTP/1.1
//! requests on the daemon's unix socket through hyper (pooled keep-alive
//! connections), with no part of the worker's own Docker client, so a
//! baseline is the daemon's cost and nothing of ours.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oz_foundation::percent::encode;
use serde_json::{json, Value};
use std::path::PathBuf;

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Why a raw Engine API call failed; each message names the call (method
/// and path) or the object, and quotes the daemon where it answered.
#[derive(Debug, thiserror::Error)]
pub enum RawEngineError {
    #[error("{host} is not a unix:// socket (the baselines use the daemon's socket)")]
    NotUnix { host: String },
    /// The request could not be built (a path that is not a URI).
    #[error(transparent)]
    Build(#[from] http::Error),
    #[error("{method} {path}: {source}")]
    Send {
        method: Method,
        path: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{method} {path}: reading the answer: {source}")]
    Read {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    /// A non-2xx answer; `body` is the daemon's, trimmed.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        method: Method,
        path: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("{path}: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// An answer without the field the call returns (`call`: "create",
    /// `field`: "an Id").
    #[error("{call} answered without {field}: {answer}")]
    Missing {
        call: &'static str,
        field: &'static str,
        answer: Value,
    },
    #[error("inspecting volume {name}: HTTP {status}")]
    VolumeStatus { name: String, status: u16 },
    /// The import's progress stream carried an error line.
    #[error("importing {reference}: {error}")]
    Import { reference: String, error: Value },
    #[error("{reference} was imported but cannot be found")]
    NotImported { reference: String },
}

/// Label every baseline container carries, so a bench can find (and
/// remove) what an interrupted run left.
pub const BENCH_LABEL: &str = "dev.oz.bench";

#[derive(Clone)]
pub struct RawEngine {
    /// `unix:///…`, as given.
    pub host: String,
    socket: PathBuf,
    /// `/v1.41`: the daemon's own API version, so every feature it has
    /// (image mounts on Docker 28) is available.
    prefix: String,
    /// The engine's version, e.g. `20.10.24`.
    pub version: String,
    /// The daemon's API version, e.g. `1.41`.
    pub api: String,
    http: Client<hyperlocal::UnixConnector, Body>,
}

impl RawEngine {
    /// Connects to `unix://PATH` and reads the daemon's version.
    pub async fn connect(host: &str) -> Result<RawEngine, RawEngineError> {
        let socket = host
            .strip_prefix("unix://")
            .ok_or_else(|| RawEngineError::NotUnix {
                host: host.to_string(),
            })?;
        let mut engine = RawEngine {
            host: host.to_string(),
            socket: PathBuf::from(socket),
            prefix: String::new(),
            version: String::new(),
            api: String::new(),
            http: Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector),
        };
        let v = engine.json(Method::GET, "/version", None).await?;
        engine.version = v["Version"].as_str().unwrap_or("?").to_string();
        engine.api = v["ApiVersion"].as_str().unwrap_or("?").to_string();
        engine.prefix = format!("/v{}", engine.api);
        Ok(engine)
    }

    /// One request; the answer's body is left to the caller.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<hyper::Response<Incoming>, RawEngineError> {
        let uri: hyper::Uri =
            hyperlocal::Uri::new(&self.socket, &format!("{}{path}", self.prefix)).into();
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let req = req.body(body)?;
        self.http
            .request(req)
            .await
            .map_err(|source| RawEngineError::Send {
                method,
                path: path.to_string(),
                source,
            })
    }

    /// A request with an optional JSON body; a non-2xx answer is an error
    /// quoting the daemon.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, RawEngineError> {
        let (ct, b) = match body {
            Some(v) => (
                Some("application/json"),
                full(serde_json::to_vec(v).expect("JSON serializes")),
            ),
            None => (None, empty()),
        };
        let resp = self.request(method.clone(), path, ct, b).await?;
        read_ok(&method, path, resp).await
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RawEngineError> {
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| RawEngineError::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// `POST /containers/create`; returns the id.
    pub async fn create(&self, name: Option<&str>, body: &Value) -> Result<String, RawEngineError> {
        let path = match name {
            Some(n) => format!("/containers/create?name={}", encode(n)),
            None => "/containers/create".to_string(),
        };
        let v = self.json(Method::POST, &path, Some(body)).await?;
        v["Id"]
            .as_str()
            .map(str::to_string)
            .ok_or(RawEngineError::Missing {
                call: "create",
                field: "an Id",
                answer: v,
            })
    }

    pub async fn start(&self, id: &str) -> Result<(), RawEngineError> {
        self.call(Method::POST, &format!("/containers/{id}/start"), None)
            .await
            .map(drop)
    }

    /// Waits until the container is not running (as the worker waits);
    /// returns its exit status.
    pub async fn wait(&self, id: &str) -> Result<i64, RawEngineError> {
        let v = self
            .json(
                Method::POST,
                &format!("/containers/{id}/wait?condition=not-running"),
                None,
            )
            .await?;
        v["StatusCode"].as_i64().ok_or(RawEngineError::Missing {
            call: "wait",
            field: "a StatusCode",
            answer: v,
        })
    }

    /// Force-removes a container (its anonymous volumes stay, as the
    /// worker's removal leaves them).
    pub async fn remove(&self, id: &str) -> Result<(), RawEngineError> {
        self.call(
            Method::DELETE,
            &format!("/containers/{id}?force=true"),
            None,
        )
        .await
        .map(drop)
    }

    /// Create, start, wait, remove; returns the exit status.
    pub async fn run(&self, name: Option<&str>, body: &Value) -> Result<i64, RawEngineError> {
        let id = self.create(name, body).await?;
        let code = async {
            self.start(&id).await?;
            self.wait(&id).await
        }
        .await;
        let removed = self.remove(&id).await;
        let code = code?;
        removed?;
        Ok(code)
    }

    pub async fn volume_create(&self, name: &str) -> Result<(), RawEngineError> {
        self.call(
            Method::POST,
            "/volumes/create",
            Some(&json!({ "Name": name, "Labels": { BENCH_LABEL: "volume" } })),
        )
        .await
        .map(drop)
    }

    pub async fn volume_remove(&self, name: &str) -> Result<(), RawEngineError> {
        self.call(
            Method::DELETE,
            &format!("/volumes/{}?force=true", encode(name)),
            None,
        )
        .await
        .map(drop)
    }

    pub async fn volume_exists(&self, name: &str) -> Result<bool, RawEngineError> {
        let resp = self
            .request(
                Method::GET,
                &format!("/volumes/{}", encode(name)),
                None,
                empty(),
            )
            .await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(RawEngineError::VolumeStatus {
                name: name.to_string(),
                status,
            }),
        }
    }

    /// The container's filesystem as a tar stream.
    pub async fn export(&self, id: &str) -> Result<Incoming, RawEngineError> {
        let path = format!("/containers/{id}/export");
        let resp = self.request(Method::GET, &path, None, empty()).await?;
        if !resp.status().is_success() {
            return Err(read_ok(&Method::GET, &path, resp).await.unwrap_err());
        }
        Ok(resp.into_body())
    }

    /// Extracts a tar stream at `dir` in the container's filesystem (its
    /// mounts included).
    pub async fn put_archive(&self, id: &str, dir: &str, tar: Body) -> Result<(), RawEngineError> {
        let path = format!("/containers/{id}/archive?path={}", encode(dir));
        let resp = self
            .request(Method::PUT, &path, Some("application/x-tar"), tar)
            .await?;
        read_ok(&Method::PUT, &path, resp).await.map(drop)
    }

    /// Imports a root filesystem tar as `repo:tag` (with PATH set, as a
    /// busybox image needs); returns the image id.
    pub async fn import_image(
        &self,
        repo: &str,
        tag: &str,
        tar: Bytes,
    ) -> Result<String, RawEngineError> {
        let path = format!(
            "/images/create?fromSrc=-&repo={}&tag={}&changes={}",
            encode(repo),
            encode(tag),
            encode("ENV PATH=/bin")
        );
        let resp = self
            .request(Method::POST, &path, Some("application/x-tar"), full(tar))
            .await?;
        let progress = read_ok(&Method::POST, &path, resp).await?;
        // Errors come in-band, as a JSON line with "error".
        for line in progress.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if let Some(e) = v.get("error") {
                    return Err(RawEngineError::Import {
                        reference: format!("{repo}:{tag}"),
                        error: e.clone(),
                    });
                }
            }
        }
        self.image_id(&format!("{repo}:{tag}"))
            .await?
            .ok_or_else(|| RawEngineError::NotImported {
                reference: format!("{repo}:{tag}"),
            })
    }

    /// The image id (`sha256:…`), or None when absent.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, RawEngineError> {
        let path = format!("/images/{reference}/json");
        let resp = self.request(Method::GET, &path, None, empty()).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let bytes = read_ok(&Method::GET, &path, resp).await?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|source| RawEngineError::Decode { path, source })?;
        Ok(v["Id"].as_str().map(str::to_string))
    }

    pub async fn remove_image(&self, reference: &str) -> Result<(), RawEngineError> {
        self.call(
            Method::DELETE,
            &format!("/images/{reference}?force=true"),
            None,
        )
        .await
        .map(drop)
    }

    /// Ids of all containers (running or not) with the label `key=value`.
    pub async fn containers_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>, RawEngineError> {
        let filters = json!({ "label": [format!("{key}={value}")] }).to_string();
        let v = self
            .json(
                Method::GET,
                &format!("/containers/json?all=true&filters={}", encode(&filters)),
                None,
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["Id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Running containers with the label `key=value`.
    pub async fn running_labelled(&self, key: &str, value: &str) -> Result<usize, RawEngineError> {
        let filters =
            json!({ "label": [format!("{key}={value}")], "status": ["running"] }).to_string();
        let v = self
            .json(
                Method::GET,
                &format!("/containers/json?filters={}", encode(&filters)),
                None,
            )
            .await?;
        Ok(v.as_array().map(Vec::len).unwrap_or(0))
    }
}

async fn read_ok(
    method: &Method,
    path: &str,
    resp: hyper::Response<Incoming>,
) -> Result<Bytes, RawEngineError> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| RawEngineError::Read {
            method: method.clone(),
            path: path.to_string(),
            source,
        })?
        .to_bytes();
    if !status.is_success() {
        return Err(RawEngineError::Status {
            method: method.clone(),
            path: path.to_string(),
            status,
            body: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
    }
    Ok(bytes)
}

/// Where the agent sidecar's filesystem comes from in a baseline container.
#[derive(Debug, Clone, Copy)]
pub enum Agent<'a> {
    /// A filled named volume, bound read-only at `/agent`.
    Volume(&'a str),
    /// An image (id) mounted read-only at `/agent` (API ≥ 1.48).
    Image(&'a str),
    /// No sidecar: the command runs from the task image itself.
    None,
}

/// The task container as the worker creates it (docs/PROTOCOL.md, "The
/// task container"): `/agent/entrypoint.sh agent run …` in `/workspace`,
/// the contract's environment, the agent mounted read-only at `/agent`,
/// as many labels as the worker sets. `env` and `binds` come on top.
pub fn task_container(
    image: &str,
    agent: Agent<'_>,
    task_id: &str,
    env: &[(&str, &str)],
    binds: &[String],
) -> Value {
    let root = "http://127.0.0.1:1";
    let mut all_env = vec![
        format!("TASK_ID={task_id}"),
        "GIT_TERMINAL_PROMPT=0".to_string(),
        "GH_PROMPT_DISABLED=1".to_string(),
        format!("WARP_SERVER_ROOT_URL={root}"),
    ];
    all_env.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut all_binds: Vec<String> = Vec::new();
    let mut mounts: Vec<Value> = Vec::new();
    let (entrypoint, cmd) = match agent {
        Agent::Volume(v) => {
            all_binds.push(format!("{v}:/agent:ro"));
            (json!(["/agent/entrypoint.sh"]), agent_args(task_id, root))
        }
        Agent::Image(id) => {
            mounts.push(
                json!({ "Type": "image", "Source": id, "Target": "/agent", "ReadOnly": true }),
            );
            (json!(["/agent/entrypoint.sh"]), agent_args(task_id, root))
        }
        Agent::None => (
            json!(["/bin/sh"]),
            json!(["-c", "echo plain container; exit 0"]),
        ),
    };
    all_binds.extend(binds.iter().cloned());
    let mut host_config = json!({ "Binds": all_binds });
    if !mounts.is_empty() {
        host_config["Mounts"] = json!(mounts);
    }
    json!({
        "Image": image,
        "Entrypoint": entrypoint,
        "Cmd": cmd,
        "Env": all_env,
        "WorkingDir": "/workspace",
        "Tty": false,
        "Labels": {
            BENCH_LABEL: "baseline",
            "dev.oz.managed-by": "oz-agent-worker-bench",
            "dev.oz.role": "task",
            "dev.oz.task-id": task_id,
            "dev.oz.execution-id": format!("exec_{task_id}"),
            "dev.oz.instance": "0123456789abcdef0123456789abcdef",
            "dev.oz.host": "bench",
            "dev.oz.boot-id": "00000000-0000-0000-0000-000000000000",
            "dev.oz.pid": "1",
            "dev.oz.pid-start": "1",
        },
        "HostConfig": host_config,
    })
}

/// The base arguments the worker builds for a control-plane run (a team's
/// run, idle-on-complete unset by the run and set bare).
fn agent_args(task_id: &str, root: &str) -> Value {
    json!([
        "agent",
        "run",
        "--share",
        "team:edit",
        "--task-id",
        task_id,
        "--sandboxed",
        "--server-root-url",
        root,
        "--idle-on-complete"
    ])
}

/// A short unique name part.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..) >> 16)
}
