//! Which daemon to talk to, decided exactly as the Docker CLI decides it:
//! a non-empty `DOCKER_HOST`, else `DOCKER_CONTEXT`, else `currentContext` in
//! `config.json` under `DOCKER_CONFIG` (default `~/.docker`), else the default
//! socket.
//!
//! Resolution reads an [`EnvSnapshot`], never the live process environment,
//! so tests can resolve many configurations in parallel.

use crate::transport::context_store::ContextStore;
use crate::transport::error::{DockerError, ErrorEndpoint, ErrorKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The variables resolution depends on.
const RELEVANT_VARS: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS_VERIFY",
    "DOCKER_TLS",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "XDG_RUNTIME_DIR",
];

/// The daemon's socket when nothing else is configured.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// A snapshot of the environment that endpoint resolution reads: the relevant
/// variables, the home directory and the system socket path.
#[derive(Clone)]
pub struct EnvSnapshot {
    vars: BTreeMap<String, String>,
    home: Option<PathBuf>,
    system_socket: PathBuf,
}

impl std::fmt::Debug for EnvSnapshot {
    /// `DOCKER_HOST` may carry a password (`tcp://user:pw@host`): redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vars: BTreeMap<&str, String> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), redact_userinfo(v)))
            .collect();
        f.debug_struct("EnvSnapshot")
            .field("vars", &vars)
            .field("home", &self.home)
            .field("system_socket", &self.system_socket)
            .finish()
    }
}

impl EnvSnapshot {
    /// Nothing set: no variables, no home directory, `/var/run/docker.sock`.
    pub fn empty() -> Self {
        EnvSnapshot {
            vars: BTreeMap::new(),
            home: None,
            system_socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }

    /// The current process's environment (only the variables that matter).
    pub fn from_process() -> Self {
        let mut snap = EnvSnapshot::empty();
        for name in RELEVANT_VARS {
            if let Some(v) = std::env::var_os(name) {
                snap.vars
                    .insert((*name).to_string(), v.to_string_lossy().into_owned());
            }
        }
        snap.home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        snap
    }

    /// Sets one variable.
    pub fn with_var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.insert(name.to_string(), value.into());
        self
    }

    /// Removes one variable.
    pub fn without_var(mut self, name: &str) -> Self {
        self.vars.remove(name);
        self
    }

    /// Sets the home directory (`~`).
    pub fn with_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// Replaces `/var/run/docker.sock` (for tests of the default fallback).
    pub fn with_system_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.system_socket = path.into();
        self
    }

    /// A variable's value, even when empty.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// A variable's value when set and non-empty (the CLI treats empty as unset).
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.var(name).filter(|v| !v.is_empty())
    }

    /// The Docker config directory: `DOCKER_CONFIG`, else `~/.docker`.
    pub fn config_dir(&self) -> PathBuf {
        match self.non_empty("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir),
            None => self
                .home
                .clone()
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".docker"),
        }
    }
}

/// The address of a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address; TLS is decided by [`Endpoint::tls`].
    Tcp { host: String, port: u16 },
    /// `ssh://[user@]host[:port]`: `ssh` to the host runs `docker system
    /// dial-stdio` there (see [`oz_foundation::net::ssh`]).
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

impl std::fmt::Display for Host {
    /// The URL form, never with a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Unix(p) => write!(f, "unix://{}", p.display()),
            Host::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Host::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Host::Ssh { user, host, port } => {
                f.write_str("ssh://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                f.write_str(host)?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// TLS settings for a TCP endpoint: which files to load and whether to
/// verify the daemon's certificate. Holds paths only, never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trust anchors; `None` means the built-in web roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (sent when the daemon asks, with `key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// False only when `DOCKER_TLS` (without `DOCKER_TLS_VERIFY`) or the
    /// context's `SkipTLSVerify` says so.
    pub verify: bool,
    /// Where the files were looked for (`DOCKER_CERT_PATH` or the context's
    /// TLS directory); named in errors about missing files.
    pub dir: PathBuf,
    /// Which setting chose `dir`, so errors tell the operator what to change.
    pub origin: TlsOrigin,
}

/// Which setting the TLS files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsOrigin {
    /// `DOCKER_CERT_PATH`; when unset, the Docker config directory is used.
    CertPath { set: bool },
    /// The named context's TLS material in the context store (written by
    /// `docker context create NAME --docker "host=…,ca=…,cert=…,key=…"`).
    Context { name: String },
}

impl TlsSettings {
    /// Where the TLS files are, as an operator would fix them:
    /// `DOCKER_CERT_PATH (now /etc/docker-certs)`, `DOCKER_CERT_PATH (unset,
    /// so /root/.docker)`, or `the TLS files of context "remote"
    /// (/root/.docker/contexts/tls/<id>/docker)`.
    pub fn location(&self) -> String {
        let dir = self.dir.display();
        match &self.origin {
            TlsOrigin::CertPath { set: true } => format!("DOCKER_CERT_PATH (now {dir})"),
            TlsOrigin::CertPath { set: false } => format!("DOCKER_CERT_PATH (unset, so {dir})"),
            TlsOrigin::Context { name } => format!("the TLS files of context {name:?} ({dir})"),
        }
    }

    /// How to replace the files: set `DOCKER_CERT_PATH`, or recreate the
    /// context with the right ones (the CLI copies them into its store).
    pub fn fix_files(&self, what: &str) -> String {
        match &self.origin {
            TlsOrigin::CertPath { .. } => format!(
                "Put {what} in the directory DOCKER_CERT_PATH names (now {}), or point DOCKER_CERT_PATH at one that has them.",
                self.dir.display()
            ),
            TlsOrigin::Context { name } => format!(
                "Recreate context {name:?} with {what}: `docker context rm {name}`, then \
                 `docker context create {name} --docker \"host=tcp://HOST:2376,ca=ca.pem,cert=cert.pem,key=key.pem\"` \
                 (the CLI copies them to the context's TLS files, {}).",
                self.dir.display()
            ),
        }
    }
}

impl Endpoint {
    /// The setting that names the daemon's host: `DOCKER_HOST`, or the
    /// context's host (for messages about a wrong host name).
    pub fn host_setting(&self) -> String {
        match &self.source {
            EndpointSource::Context { name, .. } if name != "default" => format!(
                "the host of context {name:?} (`docker context update {name} --docker host=...`)"
            ),
            _ => "DOCKER_HOST".to_string(),
        }
    }

    /// How to turn TLS on for this endpoint when the daemon wants it.
    pub fn enable_tls_hint(&self) -> String {
        match &self.source {
            EndpointSource::Context { name, .. } if name != "default" => format!(
                "Context {name:?} has no TLS files: recreate it with them, e.g. `docker context create \
                 {name} --docker \"host=tcp://HOST:2376,ca=ca.pem,cert=cert.pem,key=key.pem\"`"
            ),
            _ => "Set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to the directory with ca.pem, \
                  cert.pem and key.pem (or use a context with TLS)"
                .to_string(),
        }
    }
}

/// How a context was selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSelector {
    /// `DOCKER_CONTEXT`.
    EnvVar,
    /// `currentContext` in this `config.json`.
    ConfigFile(PathBuf),
}

/// How the endpoint was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSource {
    /// `DOCKER_HOST`.
    Env,
    /// A context from the store.
    Context {
        name: String,
        selected_by: ContextSelector,
    },
    /// Nothing configured: the default socket.
    Default,
}

impl EndpointSource {
    /// `env`, `context`, or `default`.
    pub fn kind(&self) -> &'static str {
        match self {
            EndpointSource::Env => "env",
            EndpointSource::Context { .. } => "context",
            EndpointSource::Default => "default",
        }
    }
}

impl std::fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointSource::Env => f.write_str("env DOCKER_HOST"),
            EndpointSource::Context {
                name,
                selected_by: ContextSelector::EnvVar,
            } => write!(f, "context {name}, selected by DOCKER_CONTEXT"),
            EndpointSource::Context {
                name,
                selected_by: ContextSelector::ConfigFile(path),
            } => write!(
                f,
                "context {name}, selected by currentContext in {}",
                path.display()
            ),
            EndpointSource::Default => f.write_str("default socket"),
        }
    }
}

/// A resolved daemon endpoint: where, with which TLS, and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    /// `Some` for TLS over TCP.
    pub tls: Option<TlsSettings>,
    pub source: EndpointSource,
}

impl Endpoint {
    /// An endpoint given directly (not resolved from the environment).
    pub fn new(host: Host, tls: Option<TlsSettings>) -> Self {
        Endpoint {
            host,
            tls,
            source: EndpointSource::Env,
        }
    }

    /// The endpoint as errors name it.
    pub fn error_label(&self) -> ErrorEndpoint {
        ErrorEndpoint {
            url: self.host.to_string(),
            source: self.source.to_string(),
        }
    }
}

/// Resolves the endpoint the Docker CLI would use in this environment.
pub fn resolve_endpoint(env: &EnvSnapshot) -> Result<Endpoint, DockerError> {
    if let Some(raw) = env.non_empty("DOCKER_HOST") {
        let mut host = parse_host(raw)?;
        let tls = env_tls(env, &host);
        // As the CLI: without a port, TLS means the daemon's TLS port 2376.
        if let (Host::Tcp { port, .. }, Some(_)) = (&mut host, &tls) {
            if !has_explicit_port(raw) {
                *port = 2376;
            }
        }
        return Ok(Endpoint {
            host,
            tls,
            source: EndpointSource::Env,
        });
    }
    let config_dir = env.config_dir();
    let selected = match env.non_empty("DOCKER_CONTEXT") {
        Some(name) => Some((name.to_string(), ContextSelector::EnvVar)),
        None => current_context(&config_dir)?,
    };
    let Some((name, selected_by)) = selected else {
        return Ok(default_endpoint(env, EndpointSource::Default));
    };
    let source = EndpointSource::Context {
        name: name.clone(),
        selected_by,
    };
    if name == "default" {
        // The CLI's built-in context: the environment's own settings.
        return Ok(default_endpoint(env, source));
    }
    let store = ContextStore::new(config_dir.join("contexts"));
    let context = store.load(&name).map_err(|e| {
        let how = match &source {
            EndpointSource::Context {
                selected_by: ContextSelector::ConfigFile(p),
                ..
            } => format!("currentContext in {}", p.display()),
            _ => "DOCKER_CONTEXT".to_string(),
        };
        e.with_hint(format!(
            "List the contexts with `docker context ls`; fix or unset {how}"
        ))
    })?;
    let host = match context.host.as_deref() {
        Some(h) if !h.is_empty() => parse_host(h)?,
        _ => default_host(env),
    };
    let tls = match &host {
        Host::Tcp { .. } if context.tls_files_present() || context.skip_tls_verify => {
            Some(TlsSettings {
                ca: context.ca,
                cert: context.cert,
                key: context.key,
                verify: !context.skip_tls_verify,
                dir: context.tls_dir,
                origin: TlsOrigin::Context { name: name.clone() },
            })
        }
        _ => None,
    };
    Ok(Endpoint { host, tls, source })
}

fn current_context(config_dir: &Path) -> Result<Option<(String, ContextSelector)>, DockerError> {
    let path = config_dir.join("config.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DockerError::new(
                ErrorKind::Config,
                "resolve endpoint",
                format!("cannot read {}: {e}", path.display()),
            ))
        }
    };
    #[derive(serde::Deserialize)]
    struct ConfigFile {
        #[serde(rename = "currentContext", default)]
        current_context: Option<String>,
    }
    // Only `currentContext` is read here; `auths` (credentials) are left alone
    // and never appear in an error.
    let config: ConfigFile = serde_json::from_slice(&text).map_err(|e| {
        DockerError::new(
            ErrorKind::Config,
            "resolve endpoint",
            format!("{} is not valid JSON (line {})", path.display(), e.line()),
        )
    })?;
    Ok(config
        .current_context
        .filter(|c| !c.is_empty())
        .map(|c| (c, ContextSelector::ConfigFile(path))))
}

fn default_host(env: &EnvSnapshot) -> Host {
    let mut candidates = vec![env.system_socket.clone()];
    if let Some(xdg) = env.non_empty("XDG_RUNTIME_DIR") {
        candidates.push(Path::new(xdg).join("docker.sock"));
    }
    if let Some(home) = &env.home {
        candidates.push(home.join(".docker/run/docker.sock"));
    }
    let found = candidates.iter().find(|p| p.exists()).cloned();
    // When none exists, name the system socket: that is what users expect.
    Host::Unix(found.unwrap_or_else(|| env.system_socket.clone()))
}

fn default_endpoint(env: &EnvSnapshot, source: EndpointSource) -> Endpoint {
    let host = default_host(env);
    let tls = env_tls(env, &host);
    Endpoint { host, tls, source }
}

/// TLS from `DOCKER_TLS_VERIFY` / `DOCKER_TLS` / `DOCKER_CERT_PATH`, as the
/// CLI's flag defaults: files in the cert directory are used when present.
fn env_tls(env: &EnvSnapshot, host: &Host) -> Option<TlsSettings> {
    if !matches!(host, Host::Tcp { .. }) {
        return None;
    }
    let verify = env.non_empty("DOCKER_TLS_VERIFY").is_some();
    if !verify && env.non_empty("DOCKER_TLS").is_none() {
        return None;
    }
    let cert_path = env.non_empty("DOCKER_CERT_PATH");
    let origin = TlsOrigin::CertPath {
        set: cert_path.is_some(),
    };
    let dir = cert_path
        .map(PathBuf::from)
        .unwrap_or_else(|| env.config_dir());
    let existing = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
    Some(TlsSettings {
        ca: existing("ca.pem"),
        cert: existing("cert.pem"),
        key: existing("key.pem"),
        verify,
        dir,
        origin,
    })
}

/// Parses a `DOCKER_HOST`-style address: `unix://PATH`, `tcp://HOST[:PORT]`
/// (also `http://`, `https://`), `ssh://[USER@]HOST[:PORT]`.
pub fn parse_host(raw: &str) -> Result<Host, DockerError> {
    let bad = |why: &str| {
        DockerError::new(
            ErrorKind::Config,
            "resolve endpoint",
            // The raw value may hold a password (`tcp://user:pw@host`): show
            // only its scheme.
            format!("invalid Docker host {:?}: {why}", redact_userinfo(raw)),
        )
        .with_hint("Expected unix:///path/to/docker.sock, tcp://HOST:PORT or ssh://USER@HOST")
    };
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| bad("no scheme"))?;
    match scheme {
        "unix" => {
            if rest.is_empty() {
                return Err(bad("empty socket path"));
            }
            Ok(Host::Unix(PathBuf::from(rest)))
        }
        "tcp" | "http" | "https" => {
            let authority = rest.trim_end_matches('/');
            if authority.contains('/') {
                return Err(bad("a path after the address is not supported"));
            }
            if authority.contains('@') {
                return Err(bad("credentials in a tcp address are not supported"));
            }
            let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad address"))?;
            // The daemon's conventional plain-TCP port when none is given.
            let port = port.unwrap_or(2375);
            if host.is_empty() {
                return Err(bad("empty host name"));
            }
            Ok(Host::Tcp { host, port })
        }
        "ssh" => {
            let authority = rest.trim_end_matches('/');
            let (user, hostport) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(u.split(':').next().unwrap_or("").to_string()), h),
                None => (None, authority),
            };
            let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad address"))?;
            Ok(Host::Ssh { user, host, port })
        }
        other => Err(bad(&format!("unsupported scheme {other:?}"))),
    }
}

fn has_explicit_port(raw: &str) -> bool {
    let authority = raw
        .split_once("://")
        .map_or(raw, |(_, rest)| rest)
        .trim_end_matches('/');
    match authority.rsplit_once(']') {
        Some((_, tail)) => tail.starts_with(':'),
        None => authority.contains(':'),
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if tail.is_empty() => None,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

/// `scheme://user:pw@host` → `scheme://***@host`.
pub(crate) fn redact_userinfo(raw: &str) -> String {
    match raw.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => raw.to_string(),
            }
        }
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts() {
        assert_eq!(
            parse_host("unix:///var/run/docker.sock").unwrap(),
            Host::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            parse_host("tcp://127.0.0.1:2376").unwrap(),
            Host::Tcp {
                host: "127.0.0.1".into(),
                port: 2376
            }
        );
        assert_eq!(
            parse_host("tcp://[::1]:2376").unwrap().to_string(),
            "tcp://[::1]:2376"
        );
        assert_eq!(
            parse_host("ssh://me@box:22").unwrap().to_string(),
            "ssh://me@box:22"
        );
        assert_eq!(
            parse_host("tcp://localhost").unwrap().to_string(),
            "tcp://localhost:2375"
        );
        assert!(parse_host("/var/run/docker.sock").is_err());
        assert!(parse_host("ftp://x").is_err());
    }

    #[test]
    fn never_shows_a_password() {
        let err = parse_host("tcp://user:s3cret@host:1/x").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let host = parse_host("ssh://user:s3cret@host").unwrap();
        assert!(!host.to_string().contains("s3cret"));
        let env = EnvSnapshot::empty().with_var("DOCKER_HOST", "ssh://user:s3cret@host");
        assert!(!format!("{env:?}").contains("s3cret"));
        assert!(!format!("{:?}", resolve_endpoint(&env).unwrap()).contains("s3cret"));
    }

    #[test]
    fn empty_docker_host_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        std::fs::write(&sock, "").unwrap();
        let env = EnvSnapshot::empty()
            .with_var("DOCKER_HOST", "")
            .with_var("DOCKER_CONFIG", dir.path().to_str().unwrap())
            .with_system_socket(&sock);
        let ep = resolve_endpoint(&env).unwrap();
        assert_eq!(ep.host, Host::Unix(sock));
        assert_eq!(ep.source, EndpointSource::Default);
    }

    #[test]
    fn default_falls_back_to_rootless_socket() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().join("xdg");
        std::fs::create_dir(&xdg).unwrap();
        std::fs::write(xdg.join("docker.sock"), "").unwrap();
        let env = EnvSnapshot::empty()
            .with_home(dir.path())
            .with_var("XDG_RUNTIME_DIR", xdg.to_str().unwrap())
            .with_system_socket(dir.path().join("absent.sock"));
        let ep = resolve_endpoint(&env).unwrap();
        assert_eq!(ep.host, Host::Unix(xdg.join("docker.sock")));
    }

    #[test]
    fn tls_from_env_uses_cert_path_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let env = EnvSnapshot::empty()
            .with_var("DOCKER_HOST", "tcp://127.0.0.1:2376")
            .with_var("DOCKER_TLS_VERIFY", "1")
            .with_var("DOCKER_CERT_PATH", dir.path().to_str().unwrap());
        let tls = resolve_endpoint(&env).unwrap().tls.unwrap();
        assert!(tls.verify);
        assert_eq!(tls.ca, Some(dir.path().join("ca.pem")));
        assert_eq!(tls.key, Some(dir.path().join("key.pem")));

        // DOCKER_TLS alone: TLS without verification; cert path defaults to
        // the config dir.
        let env = EnvSnapshot::empty()
            .with_var("DOCKER_HOST", "tcp://127.0.0.1:2376")
            .with_var("DOCKER_TLS", "1")
            .with_var("DOCKER_CONFIG", dir.path().to_str().unwrap());
        let tls = resolve_endpoint(&env).unwrap().tls.unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.dir, dir.path());

        // No port: 2376 with TLS, 2375 without.
        let env = env.with_var("DOCKER_HOST", "tcp://localhost");
        let ep = resolve_endpoint(&env).unwrap();
        assert_eq!(ep.host.to_string(), "tcp://localhost:2376");

        // Neither: plain TCP.
        let env = EnvSnapshot::empty().with_var("DOCKER_HOST", "tcp://127.0.0.1:2375");
        assert!(resolve_endpoint(&env).unwrap().tls.is_none());
    }

    #[test]
    fn unknown_context_names_it_and_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let env = EnvSnapshot::empty()
            .with_var("DOCKER_CONFIG", dir.path().to_str().unwrap())
            .with_var("DOCKER_CONTEXT", "nosuch");
        let err = resolve_endpoint(&env).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), &ErrorKind::Config);
        assert!(msg.contains("\"nosuch\""), "{msg}");
        assert!(
            msg.contains(&dir.path().join("contexts").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("DOCKER_CONTEXT"), "{msg}");
    }

    #[test]
    fn docker_host_wins_over_context() {
        let env = EnvSnapshot::empty()
            .with_var("DOCKER_HOST", "unix:///tmp/x.sock")
            .with_var("DOCKER_CONTEXT", "nosuch");
        let ep = resolve_endpoint(&env).unwrap();
        assert_eq!(ep.source, EndpointSource::Env);
    }

    #[test]
    fn current_context_from_config_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"r":{"auth":"c2VjcmV0"}},"currentContext":"ghost"}"#,
        )
        .unwrap();
        let env = EnvSnapshot::empty().with_var("DOCKER_CONFIG", dir.path().to_str().unwrap());
        let err = resolve_endpoint(&env).unwrap_err().to_string();
        assert!(
            err.contains("\"ghost\"") && err.contains("currentContext"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn host_strings_never_panic(raw in ".{0,60}") {
                let _ = parse_host(&raw);
                let _ = split_host_port(&raw);
                let _ = redact_userinfo(&raw);
                let _ = has_explicit_port(&raw);
            }

            /// A parsed host, written back as a URL, parses to the same host.
            #[test]
            fn hosts_round_trip_through_their_url(
                raw in prop_oneof![
                    "unix:///[a-z0-9/._-]{1,30}",
                    "tcp://[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
                    "tcp://\\[[0-9a-f:]{2,20}\\](:[0-9]{1,5})?",
                    "ssh://([a-z]{1,8}@)?[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
                ],
            ) {
                if let Ok(host) = parse_host(&raw) {
                    prop_assert_eq!(parse_host(&host.to_string()).unwrap(), host);
                }
            }

            /// A password in DOCKER_HOST never survives redaction.
            #[test]
            fn redaction_removes_the_password(
                scheme in "(tcp|ssh|https)",
                user in "[a-z]{1,8}",
                password in "PW[A-Z]{6}",
                host in "[a-z0-9.]{1,15}",
                tail in "(:[0-9]{1,5})?(/[a-z]{0,5})?",
            ) {
                let raw = format!("{scheme}://{user}:{password}@{host}{tail}");
                let redacted = redact_userinfo(&raw);
                prop_assert!(!redacted.contains(&password), "{}", redacted);
                if let Err(e) = parse_host(&raw) {
                    prop_assert!(!e.to_string().contains(&password), "{}", e);
                }
            }
        }
    }
}
