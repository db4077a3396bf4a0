#![warn(missing_docs)]
//! A test Kubernetes API server for the kubernetes runtime's tests, and the
//! validator of Kubernetes objects against the schemas vendored under
//! `api-specs/kubernetes/` (see the crate's README for what it proves and
//! what needs a real cluster).
//!
//! [`serve`] runs the server: HTTPS with a CA generated into the state dir,
//! bearer-token auth, the REST subset in [`api`], the Job controller and a
//! kubelet that runs Pods as real containers on a Docker daemon. The binary
//! `oz-test-apiserver` wraps it so tests can kill and restart it as a
//! process ([`process::ApiServerProcess`]).

mod api;
mod controller;
mod docker;
mod kubelet;
mod logs;
mod meta;
pub mod process;
mod rbac;
mod recorder;
pub mod schema;
mod selectors;
mod store;
mod tls;
mod validation;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds state.json, the CA, the serving certificate, the token, the
    /// kubeconfig, the port and the instance id; reused by a restart.
    pub state_dir: PathBuf,
    /// 0: the port of the previous run in this state dir, else any free one.
    pub port: u16,
    /// The dockerd the kubelet runs containers on (`unix://…`).
    pub docker_host: String,
    /// `spec.nodeName` of every Pod.
    pub node_name: String,
    /// Change-log entries kept for watches; older resourceVersions get 410.
    pub watch_window: usize,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// The first image-pull back-off (doubling, at most 300 s).
    pub pull_backoff: Duration,
    /// A Role to enforce on the token (as bound to a service account in
    /// `rbac_namespace`); None allows everything.
    pub rbac_role: Option<PathBuf>,
    /// The namespace the Role is bound in (requests elsewhere are refused).
    pub rbac_namespace: String,
}

impl Config {
    /// Defaults: any free port (or the state dir's last), `DOCKER_HOST` or
    /// the default socket, 1,000 log entries, bookmarks every second,
    /// image-pull back-off from 2 s, no RBAC.
    pub fn new(state_dir: PathBuf) -> Config {
        Config {
            state_dir,
            port: 0,
            docker_host: std::env::var("DOCKER_HOST")
                .unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
            node_name: "oz-test-node".into(),
            watch_window: 1000,
            bookmark_interval: Duration::from_secs(1),
            pull_backoff: Duration::from_secs(2),
            rbac_role: None,
            rbac_namespace: "default".into(),
        }
    }
}

fn instance_id(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("instance");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    let id: String = (0..12).map(|_| fastrand::lowercase()).collect();
    std::fs::write(&path, &id)?;
    Ok(id)
}

/// Turns the ImageVolume feature gate on (`--feature-gates
/// ImageVolume=true`): Pods may then carry image volumes, which the kubelet
/// mounts with Docker's `type=image` mounts when its dockerd has them
/// (Docker 28 or later) and reports as unsupported otherwise.
pub fn enable_image_volumes() {
    validation::IMAGE_VOLUME_GATE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A bound server: its address and files, ready to [`Server::run`].
pub struct Server {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The kubeconfig clients use (CA embedded, bearer token).
    pub kubeconfig: PathBuf,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: api::Ctx,
}

/// Binds the port (the state dir's previous one when `config.port` is 0),
/// loads or creates the identity and the state, writes the kubeconfig and
/// starts the controllers and the kubelet. For a server inside a test
/// process: `let s = bind(c).await?; tokio::spawn(s.run());` (a test that
/// kills and restarts the server uses [`process::ApiServerProcess`]).
pub async fn bind(mut config: Config) -> std::io::Result<Server> {
    std::fs::create_dir_all(&config.state_dir)?;
    let identity = tls::identity(&config.state_dir)?;
    let instance = instance_id(&config.state_dir)?;
    if config.port == 0 {
        config.port = std::fs::read_to_string(config.state_dir.join("port"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
    let address = listener.local_addr()?;
    std::fs::write(config.state_dir.join("port"), address.port().to_string())?;
    let url = format!("https://{address}");
    let kubeconfig = tls::write_kubeconfig(&config.state_dir, &identity, &url)?;
    let policy = match &config.rbac_role {
        Some(path) => Some(Arc::new(
            rbac::Policy::load(path, &config.rbac_namespace).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let docker = docker::Docker {
        host: config.docker_host.clone(),
        instance,
    };
    let shared = store::Shared::open(config)?;
    tokio::spawn(controller::run(shared.clone()));
    tokio::spawn(kubelet::run(shared.clone(), docker.clone()));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&identity)?);
    let ctx = api::Ctx {
        fail_next: Arc::default(),
        hold: Arc::default(),
        policy,
        forbidden: Arc::default(),
        shared,
        docker,
        token: identity.token.clone(),
        address: address.to_string(),
    };
    Ok(Server {
        url,
        kubeconfig,
        listener,
        acceptor,
        ctx,
    })
}

impl Server {
    /// Serves connections until the runtime ends.
    pub async fn run(self) -> std::io::Result<()> {
        loop {
            let (tcp, _) = self.listener.accept().await?;
            let (acceptor, ctx) = (self.acceptor.clone(), self.ctx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| api::handle(ctx.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

/// Runs the server until the process ends. Prints `listening URL` on
/// stdout once it accepts connections.
pub async fn serve(config: Config) -> std::io::Result<()> {
    let server = bind(config).await?;
    println!("listening {}", server.url);
    use std::io::Write;
    std::io::stdout().flush()?;
    server.run().await
}
