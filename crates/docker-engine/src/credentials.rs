//! Registry credentials, found the way the Docker CLI finds them, for the
//! `X-Registry-Auth` header of a pull.
//!
//! Order, for one registry key (see [`normalise_registry_key`]):
//! 1. `DOCKER_AUTH_CONFIG`, when set and non-empty: `{"auths": {"<registry>":
//!    {"auth": "<base64 user:password>"}}}` and nothing else, as the CLI (28.3
//!    and later) reads it. A registry it does not mention falls through to
//!    the config file.
//! 2. `config.json` in `DOCKER_CONFIG` (default `$HOME/.docker`):
//!    `credHelpers[registry]`, else `credsStore`, else `auths`. An empty
//!    `credHelpers` entry means `auths` (the CLI skips `credsStore` then). A
//!    helper that answers "credentials not found" means anonymous; it does
//!    not fall back to `auths` (the CLI does not either).
//! 3. Nothing configured: anonymous.
//!
//! Resolution never fails a pull. Where configured credentials cannot be
//! used, the pull goes on without credentials, as `docker pull` does and as
//! the Go worker does (it logs a warning): the problem is returned in
//! [`Resolved::problem`] for the caller to log, naming the helper or file
//! and never a secret. Case by case, each matched with `docker pull` (CLI
//! 28.2; its `pull` ignores credential-store errors) and the Go worker's
//! `getRegistryAuth` (warns, pulls without auth):
//!
//! | what goes wrong                                   | the pull        | warning |
//! |---------------------------------------------------|-----------------|---------|
//! | helper says "credentials not found"               | anonymous       | no      |
//! | helper answers with an empty username and secret  | anonymous       | no      |
//! | helper binary missing, or cannot start            | anonymous       | yes     |
//! | helper exits non-zero (other message)             | anonymous       | yes     |
//! | helper answers with output that is not JSON       | anonymous       | yes     |
//! | helper does not answer within 30 s (CLI: waits)   | anonymous       | yes     |
//! | helper name with a path separator                 | anonymous       | yes     |
//! | `config.json` unreadable or not JSON              | anonymous       | yes     |
//! | an `auths` entry whose `auth` does not decode     | anonymous       | yes     |
//! | `DOCKER_AUTH_CONFIG` malformed                    | config file used| yes     |
//!
//! `auths` (and `credHelpers`) keys match like the CLI: the exact key first,
//! then any key whose host name (scheme and path stripped, so
//! `https://127.0.0.1:5000/v2/` matches `127.0.0.1:5000`) is the registry's;
//! Docker Hub also answers to `index.docker.io`, `docker.io` and
//! `https://index.docker.io/v1/`.
//!
//! Deliberate differences from the CLI: `DOCKER_AUTH_CONFIG` and
//! `credHelpers` keys get the same forgiving key matching as `auths` (the
//! CLI matches them exactly); a helper gets 30 s to answer (the CLI waits
//! forever); an identity token alone is sent (the Go worker drops
//! credentials without a username); the legacy `~/.dockercfg` file and
//! `registrytoken` entries are not read; a bad `auths` entry spoils only its
//! own registry (the CLI and the Go worker then ignore the whole file).
//!
//! Secrets never reach Debug, Display or an error: JSON errors are reported
//! by position only, helper output that looks like credentials is withheld.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use oz_foundation::image_reference::DOCKER_HUB_AUTH_KEY;
use oz_foundation::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long a credential helper may take to answer.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
const HELPER_PREFIX: &str = "docker-credential-";
/// What a helper's `Username` is when `Secret` is an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// Host names that all mean Docker Hub.
const DOCKER_HUB_HOSTS: [&str; 3] = ["index.docker.io", "docker.io", "registry-1.docker.io"];
/// Keys under which Docker Hub credentials are stored, most canonical first.
const DOCKER_HUB_KEYS: [&str; 3] = [DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io"];
/// Longest piece of helper output quoted in an error.
const MAX_QUOTED_OUTPUT: usize = 400;

/// Credentials for one registry: a username and password, an identity
/// (OAuth refresh) token, or both.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    username: Option<String>,
    password: Option<Secret>,
    identity_token: Option<Secret>,
    server_address: String,
}

impl RegistryAuth {
    pub fn with_password(
        server_address: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        RegistryAuth {
            username: Some(username.into()),
            password: Some(Secret::new(password)),
            identity_token: None,
            server_address: server_address.into(),
        }
    }

    pub fn with_identity_token(
        server_address: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        RegistryAuth {
            username: None,
            password: None,
            identity_token: Some(Secret::new(token)),
            server_address: server_address.into(),
        }
    }

    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }
    pub fn identity_token(&self) -> Option<&Secret> {
        self.identity_token.as_ref()
    }
    /// The registry key the credentials were resolved for.
    pub fn server_address(&self) -> &str {
        &self.server_address
    }

    /// The `X-Registry-Auth` header: URL-safe base64, with padding, of the
    /// JSON auth config (`username`, `password`, `identitytoken`,
    /// `serveraddress`; absent fields omitted), as the Docker CLI encodes it.
    pub fn header_value(&self) -> String {
        #[derive(Serialize)]
        struct Header<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            username: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            password: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            identitytoken: Option<&'a str>,
            serveraddress: &'a str,
        }
        let json = serde_json::to_vec(&Header {
            username: self.username.as_deref(),
            password: self.password.as_ref().map(Secret::expose_str),
            identitytoken: self.identity_token.as_ref().map(Secret::expose_str),
            serveraddress: &self.server_address,
        })
        .expect("serialising strings cannot fail");
        URL_SAFE.encode(json)
    }

    fn is_empty(&self) -> bool {
        self.username.is_none() && self.password.is_none() && self.identity_token.is_none()
    }
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server_address", &self.server_address)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("identity_token", &self.identity_token)
            .finish()
    }
}

/// Where credentials came from (or that none were configured); shown in
/// logs and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    DockerAuthConfig,
    /// `credHelpers` named this helper for the registry.
    Helper(String),
    /// The default helper, `credsStore`.
    CredsStore(String),
    /// `auths` in this config file.
    Auths(PathBuf),
    /// Nothing configured for the registry: pull anonymously.
    None,
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::DockerAuthConfig => f.write_str("DOCKER_AUTH_CONFIG"),
            CredentialSource::Helper(name) => write!(f, "credential helper {name:?}"),
            CredentialSource::CredsStore(name) => write!(f, "credsStore {name:?}"),
            CredentialSource::Auths(path) => write!(f, "auths in {}", path.display()),
            CredentialSource::None => f.write_str("no credentials (anonymous)"),
        }
    }
}

/// Where a config document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    DockerAuthConfig,
    File(PathBuf),
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::DockerAuthConfig => f.write_str("DOCKER_AUTH_CONFIG"),
            ConfigOrigin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Where in a JSON document parsing failed, and how; never the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonProblem {
    pub kind: &'static str,
    pub line: usize,
    pub column: usize,
}

impl JsonProblem {
    fn from_serde(error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match error.classify() {
            Category::Syntax => "syntax error",
            Category::Eof => "unexpected end of input",
            Category::Data => "a key or value is not what is expected",
            Category::Io => "read error",
        };
        JsonProblem {
            kind,
            line: error.line(),
            column: error.column(),
        }
    }
}

impl fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {}, column {}",
            self.kind, self.line, self.column
        )
    }
}

/// Why credentials could not be resolved. Holds no secret.
#[derive(Debug)]
pub enum CredentialError {
    /// `DOCKER_AUTH_CONFIG` is not JSON, or holds more than `auths`.
    InvalidDockerAuthConfig(JsonProblem),
    ConfigUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    InvalidConfig {
        path: PathBuf,
        problem: JsonProblem,
    },
    /// An `auths` entry whose `auth` value cannot be decoded.
    InvalidAuthEntry {
        origin: ConfigOrigin,
        key: String,
        problem: &'static str,
    },
    /// `source` is the helper's [`CredentialSource`] (helper or credsStore).
    InvalidHelperName {
        source: CredentialSource,
        config: PathBuf,
    },
    HelperNotFound {
        source: CredentialSource,
        program: String,
        config: PathBuf,
    },
    HelperSpawn {
        source: CredentialSource,
        program: String,
        error: std::io::Error,
    },
    HelperTimeout {
        source: CredentialSource,
        program: String,
        timeout: Duration,
    },
    HelperFailed {
        source: CredentialSource,
        program: String,
        status: ExitStatus,
        /// The helper's error output, trimmed, shortened, or withheld when it
        /// looked like credentials.
        message: String,
    },
    HelperBadOutput {
        source: CredentialSource,
        program: String,
        problem: JsonProblem,
    },
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::InvalidDockerAuthConfig(problem) => write!(
                f,
                "DOCKER_AUTH_CONFIG is not what the Docker CLI accepts ({problem}), so it is \
                 ignored; it must hold only {{\"auths\": {{\"<registry>\": {{\"auth\": \"<base64 user:password>\"}}}}}}, \
                 or unset it"
            ),
            CredentialError::ConfigUnreadable { path, error } => write!(
                f,
                "cannot read the Docker config {}: {error}; fix its permissions or \
                 point DOCKER_CONFIG at another directory",
                path.display()
            ),
            CredentialError::InvalidConfig { path, problem } => write!(
                f,
                "the Docker config {} cannot be read as a Docker config ({problem}); fix the \
                 file, or point DOCKER_CONFIG at another directory",
                path.display()
            ),
            CredentialError::InvalidAuthEntry {
                origin,
                key,
                problem,
            } => write!(
                f,
                "the auths entry {key:?} in {origin} is invalid: {problem}; \
                 log in again (docker login {key}) or fix the entry"
            ),
            CredentialError::InvalidHelperName { source, config } => write!(
                f,
                "{source} in {} is not a valid helper name (it must be non-empty \
                 and contain no \"/\" or whitespace); fix the Docker config",
                config.display()
            ),
            CredentialError::HelperNotFound {
                source,
                program,
                config,
            } => write!(
                f,
                "{source} is configured in {} but {program} was not found on PATH; \
                 install it or remove it from the config",
                config.display()
            ),
            CredentialError::HelperSpawn {
                source,
                program,
                error,
            } => write!(f, "{source}: cannot run {program}: {error}"),
            CredentialError::HelperTimeout {
                source,
                program,
                timeout,
            } => write!(
                f,
                "{source}: `{program} get` did not answer within {}s (is it waiting \
                 for an unlocked keychain or user input?)",
                timeout.as_secs_f32()
            ),
            CredentialError::HelperFailed {
                source,
                program,
                status,
                message,
            } => {
                write!(f, "{source}: `{program} get` failed ({status})")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            CredentialError::HelperBadOutput {
                source,
                program,
                problem,
            } => write!(
                f,
                "{source}: `{program} get` answered with invalid JSON ({problem}); \
                 expected {{\"ServerURL\", \"Username\", \"Secret\"}}"
            ),
        }
    }
}

impl std::error::Error for CredentialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CredentialError::ConfigUnreadable { error, .. }
            | CredentialError::HelperSpawn { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The credential-related environment, read once so that resolving (which
/// runs helpers) is a `Send` future owning its inputs.
#[derive(Debug, Clone)]
pub struct CredentialResolver {
    docker_auth_config: Option<Secret>,
    config_dir: Option<PathBuf>,
    path: Option<String>,
    helper_timeout: Duration,
}

impl CredentialResolver {
    /// Reads `DOCKER_AUTH_CONFIG`, `DOCKER_CONFIG`, `HOME` and `PATH` (used
    /// to find helpers, and given to them) through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
        let config_dir = non_empty("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".docker")));
        CredentialResolver {
            docker_auth_config: non_empty("DOCKER_AUTH_CONFIG").map(Secret::new),
            config_dir,
            path: env("PATH"),
            helper_timeout: HELPER_TIMEOUT,
        }
    }

    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The config file consulted after `DOCKER_AUTH_CONFIG`, if any.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config_dir.as_ref().map(|dir| dir.join("config.json"))
    }

    /// Credentials for `registry_key` (e.g. from
    /// [`ImageRef::registry_auth_key`](oz_foundation::image_reference::ImageRef::registry_auth_key)):
    /// `auth` is `None` for an anonymous pull. Never fails: see the module
    /// documentation for what happens when credentials cannot be used.
    pub async fn resolve(&self, registry_key: &str) -> Resolved {
        let key = normalise_registry_key(registry_key);
        let mut env_problem = None;
        if let Some(raw) = &self.docker_auth_config {
            match parse_docker_auth_config(raw.expose_str()) {
                Ok(auths) => {
                    if let Some((_, auth)) = find_entry(&auths, &key) {
                        let mut auth = auth.clone();
                        auth.server_address = key.clone();
                        return Resolved::found(auth, CredentialSource::DockerAuthConfig);
                    }
                }
                // The CLI prints a warning and uses the config file.
                Err(problem) => env_problem = Some(problem),
            }
        }
        let mut resolved = self.resolve_from_file(&key).await;
        if resolved.problem.is_none() {
            resolved.problem = env_problem;
        }
        resolved
    }

    async fn resolve_from_file(&self, key: &str) -> Resolved {
        let Some(path) = self.config_file() else {
            return Resolved::anonymous(CredentialSource::None);
        };
        let config = match tokio::fs::read(&path).await {
            Ok(bytes) => match serde_json::from_slice::<ConfigFile>(&bytes) {
                Ok(config) => config,
                Err(e) => {
                    return Resolved::failed(
                        CredentialSource::None,
                        CredentialError::InvalidConfig {
                            path,
                            problem: JsonProblem::from_serde(&e),
                        },
                    )
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Resolved::anonymous(CredentialSource::None);
            }
            Err(error) => {
                return Resolved::failed(
                    CredentialSource::None,
                    CredentialError::ConfigUnreadable { path, error },
                )
            }
        };

        let cred_helpers = config.cred_helpers.clone().unwrap_or_default();
        let helper = match find_entry(&cred_helpers, key) {
            // An empty entry means the file's own `auths`, as in the CLI.
            Some((_, name)) if name.is_empty() => None,
            Some((_, name)) => Some(CredentialSource::Helper(name.clone())),
            None => config
                .creds_store
                .clone()
                .filter(|s| !s.is_empty())
                .map(CredentialSource::CredsStore),
        };
        if let Some(source) = helper {
            return match self.run_helper(&source, key, &path).await {
                Ok(Some(auth)) => Resolved::found(auth, source),
                Ok(None) => Resolved::anonymous(source),
                Err(problem) => Resolved::failed(source, problem),
            };
        }

        let source = CredentialSource::Auths(path.clone());
        match find_entry(&config.auths(), key) {
            Some((entry_key, entry)) => {
                let origin = ConfigOrigin::File(path);
                match entry.to_auth(key, &origin, entry_key) {
                    Ok(Some(auth)) => Resolved::found(auth, source),
                    Ok(None) => Resolved::anonymous(source),
                    Err(problem) => Resolved::failed(source, problem),
                }
            }
            None => Resolved::anonymous(CredentialSource::None),
        }
    }

    /// Runs `docker-credential-<name> get` with the server address on stdin.
    /// `Ok(None)`: the helper has no credentials for it.
    async fn run_helper(
        &self,
        source: &CredentialSource,
        server_address: &str,
        config: &Path,
    ) -> Result<Option<RegistryAuth>, CredentialError> {
        let (CredentialSource::Helper(name) | CredentialSource::CredsStore(name)) = source else {
            unreachable!("only helper sources are run");
        };
        if name.is_empty() || name.contains(['/', '\\', '\0']) || name.contains(char::is_whitespace)
        {
            return Err(CredentialError::InvalidHelperName {
                source: source.clone(),
                config: config.to_owned(),
            });
        }
        let program = format!("{HELPER_PREFIX}{name}");
        let Some(executable) = find_on_path(&program, self.path.as_deref()) else {
            return Err(CredentialError::HelperNotFound {
                source: source.clone(),
                program,
                config: config.to_owned(),
            });
        };

        let mut command = tokio::process::Command::new(&executable);
        command
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        let mut child = spawn_retrying_busy(&mut command).await.map_err(|error| {
            CredentialError::HelperSpawn {
                source: source.clone(),
                program: program.clone(),
                error,
            }
        })?;

        let server = server_address.to_owned();
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let exchange = async move {
            // A helper may exit without reading its input; its answer counts.
            let _ = stdin.write_all(server.as_bytes()).await;
            drop(stdin);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.helper_timeout, exchange).await {
            Err(_elapsed) => {
                return Err(CredentialError::HelperTimeout {
                    source: source.clone(),
                    program,
                    timeout: self.helper_timeout,
                })
            }
            Ok(Err(error)) => {
                return Err(CredentialError::HelperSpawn {
                    source: source.clone(),
                    program,
                    error,
                })
            }
            Ok(Ok(output)) => output,
        };

        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            if says_not_found(&stdout) || says_not_found(&stderr) {
                return Ok(None);
            }
            // Helpers print their error on stdout (the helper protocol);
            // stderr is where anything else goes.
            let message = if stdout.trim().is_empty() {
                &stderr
            } else {
                &stdout
            };
            return Err(CredentialError::HelperFailed {
                source: source.clone(),
                program,
                status: output.status,
                message: quote_helper_output(message),
            });
        }

        let answer: HelperAnswer = match serde_json::from_slice(&output.stdout) {
            Ok(answer) => answer,
            // Some helpers say "not found" but exit 0.
            Err(_) if says_not_found(&stdout) => return Ok(None),
            Err(e) => {
                return Err(CredentialError::HelperBadOutput {
                    source: source.clone(),
                    program,
                    problem: JsonProblem::from_serde(&e),
                })
            }
        };
        let username = answer.username.filter(|u| !u.is_empty());
        let secret = answer.secret.filter(|s| !s.is_empty()).map(Secret::new);
        let auth = if username.as_deref() == Some(TOKEN_USERNAME) {
            RegistryAuth {
                username: None,
                password: None,
                identity_token: secret,
                server_address: server_address.to_owned(),
            }
        } else {
            RegistryAuth {
                username,
                password: secret,
                identity_token: None,
                server_address: server_address.to_owned(),
            }
        };
        Ok((!auth.is_empty()).then_some(auth))
    }
}

/// What [`CredentialResolver::resolve`] found.
#[derive(Debug)]
pub struct Resolved {
    /// `None`: pull anonymously.
    pub auth: Option<RegistryAuth>,
    /// Where the answer came from (the helper or file consulted).
    pub source: CredentialSource,
    /// Why configured credentials could not be used; the pull goes on
    /// without them, as `docker pull` does. Log it as a warning.
    pub problem: Option<CredentialError>,
}

impl Resolved {
    fn found(auth: RegistryAuth, source: CredentialSource) -> Self {
        Resolved {
            auth: Some(auth),
            source,
            problem: None,
        }
    }

    fn anonymous(source: CredentialSource) -> Self {
        Resolved {
            auth: None,
            source,
            problem: None,
        }
    }

    fn failed(source: CredentialSource, problem: CredentialError) -> Self {
        Resolved {
            auth: None,
            source,
            problem: Some(problem),
        }
    }

    /// For logs and pull errors: `auths in /root/.docker/config.json`, or
    /// `no credentials (credsStore "desktop": …)` when they could not be used.
    pub fn describe(&self) -> String {
        match (&self.auth, &self.problem) {
            (None, Some(problem)) => format!("no credentials ({problem})"),
            (None, None) if self.source != CredentialSource::None => {
                format!(
                    "no credentials ({} has none for this registry)",
                    self.source
                )
            }
            _ => self.source.to_string(),
        }
    }
}

/// `DOCKER_AUTH_CONFIG` as the CLI reads it: one JSON object with only
/// `auths`, each entry only a non-empty, decodable `auth`; anything else
/// makes the CLI ignore the whole variable.
fn parse_docker_auth_config(raw: &str) -> Result<BTreeMap<String, RegistryAuth>, CredentialError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EnvConfig {
        #[serde(default)]
        auths: BTreeMap<String, EnvEntry>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EnvEntry {
        #[serde(default)]
        auth: String,
    }
    let config: EnvConfig = serde_json::from_str(raw)
        .map_err(|e| CredentialError::InvalidDockerAuthConfig(JsonProblem::from_serde(&e)))?;
    let mut auths = BTreeMap::new();
    for (key, entry) in config.auths {
        let invalid = |problem| CredentialError::InvalidAuthEntry {
            origin: ConfigOrigin::DockerAuthConfig,
            key: key.clone(),
            problem,
        };
        if entry.auth.is_empty() {
            return Err(invalid("it has no \"auth\" value"));
        }
        let (user, password) = decode_auth(&entry.auth).map_err(invalid)?;
        let auth = RegistryAuth::with_password(&key, user, password);
        auths.insert(key, auth);
    }
    Ok(auths)
}

/// Resolves credentials for `registry_key` from the environment seen through
/// `env` (see the module documentation for the order). The environment is
/// read before this returns; the future owns everything it uses.
pub fn resolve(
    registry_key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> impl Future<Output = Resolved> + Send + 'static {
    let resolver = CredentialResolver::from_env(env);
    let key = registry_key.to_owned();
    async move { resolver.resolve(&key).await }
}

/// The key credentials are stored under: Docker Hub's
/// `https://index.docker.io/v1/` for any of its names, else the key as given.
pub fn normalise_registry_key(registry_key: &str) -> String {
    if is_docker_hub(registry_key) {
        DOCKER_HUB_AUTH_KEY.to_owned()
    } else {
        registry_key.to_owned()
    }
}

fn is_docker_hub(key: &str) -> bool {
    let host = convert_to_hostname(key);
    DOCKER_HUB_HOSTS
        .iter()
        .any(|h| host.eq_ignore_ascii_case(h))
}

/// `https://host:port/v2/` → `host:port`; `host/path` → `host`.
fn convert_to_hostname(key: &str) -> &str {
    let without_scheme = match key.split_once("://") {
        Some((_, rest)) => rest,
        None => key,
    };
    let authority = without_scheme.split('/').next().unwrap_or_default();
    let host_port = match authority.rsplit_once('@') {
        Some((_userinfo, host)) => host,
        None => authority,
    };
    host_port.strip_suffix(':').unwrap_or(host_port)
}

/// The entry for `key` (already normalised): exact key, Docker Hub aliases,
/// then any key with the same host name.
fn find_entry<'a, V>(map: &'a BTreeMap<String, V>, key: &str) -> Option<(&'a str, &'a V)> {
    if let Some((k, v)) = map.get_key_value(key) {
        return Some((k, v));
    }
    let hub = key == DOCKER_HUB_AUTH_KEY;
    if hub {
        for alias in DOCKER_HUB_KEYS {
            if let Some((k, v)) = map.get_key_value(alias) {
                return Some((k, v));
            }
        }
    }
    let wanted = convert_to_hostname(key);
    map.iter()
        .find(|(k, _)| {
            if hub {
                is_docker_hub(k)
            } else {
                convert_to_hostname(k).eq_ignore_ascii_case(wanted)
            }
        })
        .map(|(k, v)| (k.as_str(), v))
}

fn find_on_path(program: &str, path: Option<&str>) -> Option<PathBuf> {
    // Empty and relative entries are skipped: a helper is never taken from
    // the working directory.
    path?
        .split(':')
        .filter(|dir| Path::new(dir).is_absolute())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Spawns, retrying briefly on ETXTBSY: a helper that was just written (an
/// upgrade in progress, a test fixture) can be busy for a moment while
/// another thread's fork still holds it open for writing.
async fn spawn_retrying_busy(
    command: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut attempt = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            result => return result,
        }
    }
}

/// The helper protocol's "no credentials" answer ("credentials not found in
/// native keychain"), matched loosely.
fn says_not_found(output: &str) -> bool {
    output
        .to_ascii_lowercase()
        .contains("credentials not found")
}

fn quote_helper_output(output: &str) -> String {
    if output.contains("\"Secret\"") || output.to_ascii_lowercase().contains("\"secret\"") {
        return "(output withheld: it looked like credentials)".to_owned();
    }
    let one_line = output.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX_QUOTED_OUTPUT) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// The parts of a Docker config document that hold credentials; other keys
/// are ignored. No Debug: it holds secrets.
#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, String>>,
}

impl ConfigFile {
    fn auths(&self) -> BTreeMap<String, &AuthEntry> {
        self.auths
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v))
            .collect()
    }
}

/// One `auths` entry. `auth` (base64 `user:password`) wins over `username`
/// and `password`, as in the CLI.
#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    /// `Ok(None)` for an entry without credentials (e.g. `{}`, which
    /// `docker login` leaves next to a credsStore).
    fn to_auth(
        &self,
        server_address: &str,
        origin: &ConfigOrigin,
        entry_key: &str,
    ) -> Result<Option<RegistryAuth>, CredentialError> {
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let (mut username, mut password) = (non_empty(&self.username), non_empty(&self.password));
        if let Some(encoded) = non_empty(&self.auth) {
            let invalid = |problem| CredentialError::InvalidAuthEntry {
                origin: origin.clone(),
                key: entry_key.to_owned(),
                problem,
            };
            let (user, pass) = decode_auth(&encoded).map_err(invalid)?;
            username = Some(user);
            password = Some(pass).filter(|p| !p.is_empty());
        }
        let auth = RegistryAuth {
            username,
            password: password.map(Secret::new),
            identity_token: non_empty(&self.identitytoken).map(Secret::new),
            server_address: server_address.to_owned(),
        };
        Ok((!auth.is_empty()).then_some(auth))
    }
}

/// Standard base64 of `user:password`; padding optional, line breaks
/// ignored; NULs around the password trimmed (as the CLI does).
fn decode_auth(encoded: &str) -> Result<(String, String), &'static str> {
    const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = encoded
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect();
    let bytes = STANDARD_LENIENT
        .decode(compact.trim())
        .map_err(|_| "its \"auth\" value is not valid base64")?;
    let text =
        String::from_utf8(bytes).map_err(|_| "its \"auth\" value does not decode to text")?;
    match text.split_once(':') {
        Some((user, pass)) if !user.is_empty() => {
            Ok((user.to_owned(), pass.trim_matches('\0').to_owned()))
        }
        _ => Err("its \"auth\" value does not decode to \"username:password\""),
    }
}

/// A helper's answer to `get`. No Debug: it holds a secret.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(default, rename = "Username", alias = "username")]
    username: Option<String>,
    #[serde(default, rename = "Secret", alias = "secret")]
    secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use std::collections::HashMap;

    const LOCAL: &str = "127.0.0.1:5000";
    const PASSWORD: &str = "hunter2-Pa55word";

    /// One test's world: a Docker config dir, a PATH dir for helpers, and the
    /// environment the resolver sees.
    struct Fixture {
        dir: tempfile::TempDir,
        env: HashMap<String, String>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("docker")).unwrap();
            std::fs::create_dir(dir.path().join("bin")).unwrap();
            let mut env = HashMap::new();
            env.insert(
                "DOCKER_CONFIG".into(),
                dir.path().join("docker").display().to_string(),
            );
            env.insert(
                "PATH".into(),
                format!("{}:/usr/bin:/bin", dir.path().join("bin").display()),
            );
            Fixture { dir, env }
        }

        fn config_path(&self) -> PathBuf {
            self.dir.path().join("docker").join("config.json")
        }

        fn config(self, json: &str) -> Self {
            std::fs::write(self.config_path(), json).unwrap();
            self
        }

        fn env(mut self, name: &str, value: &str) -> Self {
            self.env.insert(name.into(), value.into());
            self
        }

        /// Installs `docker-credential-<name>` running `body` as a shell script.
        fn helper(self, name: &str, body: &str) -> Self {
            use std::os::unix::fs::PermissionsExt;
            let path = self
                .dir
                .path()
                .join("bin")
                .join(format!("{HELPER_PREFIX}{name}"));
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            self
        }

        /// A helper that answers `user-<server>` / `secret-of-<name>`.
        fn answering_helper(self, name: &str) -> Self {
            self.helper(
                name,
                &format!(
                    r#"[ "$1" = get ] || exit 9
read -r server
printf '{{"ServerURL":"%s","Username":"user-%s","Secret":"secret-of-{name}"}}' "$server" "$server""#
                ),
            )
        }

        fn resolver(&self) -> CredentialResolver {
            let env = &self.env;
            CredentialResolver::from_env(&|name| env.get(name).cloned())
        }

        async fn resolve(&self, key: &str) -> Resolved {
            self.resolver().resolve(key).await
        }

        /// The answer, asserting nothing went wrong on the way.
        async fn clean(&self, key: &str) -> (Option<RegistryAuth>, CredentialSource) {
            let r = self.resolve(key).await;
            assert!(
                r.problem.is_none(),
                "{key}: unexpected problem {:?}",
                r.problem
            );
            (r.auth, r.source)
        }

        /// The problem, asserting the pull goes on anonymously.
        async fn problem(&self, key: &str) -> CredentialError {
            let r = self.resolve(key).await;
            assert!(r.auth.is_none(), "{key}: credentials despite a problem");
            r.problem
                .unwrap_or_else(|| panic!("{key}: expected a problem, got {:?}", r.source))
        }

        async fn auth(&self, key: &str) -> (RegistryAuth, CredentialSource) {
            match self.clean(key).await {
                (Some(auth), source) => (auth, source),
                other => panic!("expected credentials for {key}, got {other:?}"),
            }
        }
    }

    fn basic(user: &str, pass: &str) -> String {
        STANDARD.encode(format!("{user}:{pass}"))
    }

    fn decode_header(header: &str) -> serde_json::Value {
        let json = URL_SAFE
            .decode(header)
            .expect("URL-safe base64 with padding");
        serde_json::from_slice(&json).unwrap()
    }

    #[tokio::test]
    async fn auths_entries_in_all_three_forms() {
        let f = Fixture::new().config(&format!(
            r#"{{"auths": {{
                "a.example": {{"auth": "{}"}},
                "b.example": {{"username": "bob", "password": "{PASSWORD}"}},
                "c.example": {{"identitytoken": "refresh-token"}},
                "d.example": {{"auth": "{}", "username": "ignored", "password": "ignored"}}
            }}}}"#,
            basic("alice", PASSWORD),
            basic("dora", "from-auth"),
        ));
        let (a, source) = f.auth("a.example").await;
        assert_eq!(source, CredentialSource::Auths(f.config_path()));
        assert_eq!(a.username(), Some("alice"));
        assert_eq!(a.password().unwrap().expose(), PASSWORD);
        assert_eq!(a.server_address(), "a.example");

        let (b, _) = f.auth("b.example").await;
        assert_eq!(
            (b.username(), b.password().map(Secret::expose_str)),
            (Some("bob"), Some(PASSWORD))
        );

        let (c, _) = f.auth("c.example").await;
        assert_eq!(c.identity_token().unwrap().expose(), "refresh-token");
        assert_eq!(c.username(), None);

        // "auth" wins over explicit username/password, as in the CLI.
        let (d, _) = f.auth("d.example").await;
        assert_eq!(d.username(), Some("dora"));
        assert_eq!(d.password().unwrap().expose(), "from-auth");
    }

    #[tokio::test]
    async fn auth_values_decode_leniently_like_the_cli() {
        let unpadded = basic("u", "p").trim_end_matches('=').to_owned();
        let with_nul = STANDARD.encode("u:p\0\0");
        let colon_in_password = basic("u", "a:b");
        let f = Fixture::new().config(&format!(
            r#"{{"auths": {{"x.example": {{"auth": "{unpadded}"}}, "y.example": {{"auth": "{with_nul}"}},
                "z.example": {{"auth": "{colon_in_password}"}}}}}}"#
        ));
        assert_eq!(
            f.auth("x.example").await.0.password().unwrap().expose(),
            "p"
        );
        assert_eq!(
            f.auth("y.example").await.0.password().unwrap().expose(),
            "p"
        );
        assert_eq!(
            f.auth("z.example").await.0.password().unwrap().expose(),
            "a:b"
        );
    }

    #[tokio::test]
    async fn empty_or_missing_entries_are_anonymous() {
        let f =
            Fixture::new().config(r#"{"auths": {"e.example": {}, "f.example": {"email": "x@y"}}}"#);
        for key in ["e.example", "f.example", "other.example"] {
            let (auth, _) = f.clean(key).await;
            assert_eq!(auth, None, "{key}");
        }
        let (auth, source) = f.clean("other.example").await;
        assert_eq!((auth, source), (None, CredentialSource::None));
    }

    #[tokio::test]
    async fn no_config_file_or_no_config_dir_is_anonymous() {
        let f = Fixture::new();
        assert_eq!(f.clean(LOCAL).await, (None, CredentialSource::None));
        let resolver = CredentialResolver::from_env(&|_| None);
        assert_eq!(resolver.config_file(), None);
        let r = resolver.resolve(LOCAL).await;
        assert!(r.auth.is_none() && r.problem.is_none());
        assert_eq!(r.source, CredentialSource::None);
    }

    #[test]
    fn config_dir_defaults_to_home_dot_docker() {
        let env: HashMap<&str, &str> = [("HOME", "/home/u")].into();
        let r = CredentialResolver::from_env(&|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(
            r.config_file(),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        let env: HashMap<&str, &str> = [("HOME", "/home/u"), ("DOCKER_CONFIG", "/etc/dc")].into();
        let r = CredentialResolver::from_env(&|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(r.config_file(), Some(PathBuf::from("/etc/dc/config.json")));
    }

    #[tokio::test]
    async fn auths_keys_match_by_host_name() {
        let f = Fixture::new().config(&format!(
            r#"{{"auths": {{
                "https://127.0.0.1:5000/v2/": {{"auth": "{}"}},
                "http://registry.example:8443": {{"auth": "{}"}},
                "plain.example/some/path": {{"auth": "{}"}},
                "exact.example": {{"auth": "{}"}},
                "https://exact.example/v1/": {{"auth": "{}"}}
            }}}}"#,
            basic("local", "p"),
            basic("scheme", "p"),
            basic("path", "p"),
            basic("exact", "p"),
            basic("url", "p"),
        ));
        let cases = [
            (LOCAL, "local"),
            ("registry.example:8443", "scheme"),
            ("plain.example", "path"),
            // The exact key wins over a normalised one.
            ("exact.example", "exact"),
        ];
        for (key, user) in cases {
            assert_eq!(f.auth(key).await.0.username(), Some(user), "{key}");
        }
        // A different port is a different registry.
        assert_eq!(f.clean("127.0.0.1:5001").await.0, None);
    }

    #[tokio::test]
    async fn docker_hub_answers_to_all_its_names() {
        for stored in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "https://index.docker.io/v2/",
            "registry-1.docker.io",
        ] {
            let f = Fixture::new().config(&format!(
                r#"{{"auths": {{"{stored}": {{"auth": "{}"}}}}}}"#,
                basic("hubuser", "p")
            ));
            for asked in [
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
            ] {
                let (auth, _) = f.auth(asked).await;
                assert_eq!(
                    auth.username(),
                    Some("hubuser"),
                    "stored {stored}, asked {asked}"
                );
                assert_eq!(auth.server_address(), DOCKER_HUB_AUTH_KEY);
            }
        }
    }

    #[tokio::test]
    async fn docker_hub_prefers_the_canonical_key() {
        let f = Fixture::new().config(&format!(
            r#"{{"auths": {{"docker.io": {{"auth": "{}"}}, "https://index.docker.io/v1/": {{"auth": "{}"}}}}}}"#,
            basic("alias", "p"),
            basic("canonical", "p"),
        ));
        assert_eq!(f.auth("docker.io").await.0.username(), Some("canonical"));
    }

    #[tokio::test]
    async fn cred_helpers_win_over_creds_store_which_wins_over_auths() {
        let config = |helpers: &str, store: &str| {
            format!(
                r#"{{"credHelpers": {{{helpers}}}, {store} "auths": {{"{LOCAL}": {{"auth": "{}"}}}}}}"#,
                basic("from-auths", "p")
            )
        };
        let base = || {
            Fixture::new()
                .answering_helper("special")
                .answering_helper("store")
        };

        let f = base().config(&config(
            &format!(r#""{LOCAL}": "special""#),
            r#""credsStore": "store","#,
        ));
        let (auth, source) = f.auth(LOCAL).await;
        assert_eq!(source, CredentialSource::Helper("special".into()));
        assert_eq!(auth.username(), Some("user-127.0.0.1:5000"));
        assert_eq!(auth.password().unwrap().expose(), "secret-of-special");
        assert_eq!(auth.server_address(), LOCAL);

        let f = base().config(&config(
            r#""other.example": "special""#,
            r#""credsStore": "store","#,
        ));
        let (auth, source) = f.auth(LOCAL).await;
        assert_eq!(source, CredentialSource::CredsStore("store".into()));
        assert_eq!(auth.password().unwrap().expose(), "secret-of-store");

        let f = base().config(&config("", ""));
        let (auth, source) = f.auth(LOCAL).await;
        assert_eq!(source, CredentialSource::Auths(f.config_path()));
        assert_eq!(auth.username(), Some("from-auths"));

        // An empty credsStore is no store.
        let f = base().config(&config("", r#""credsStore": "","#));
        assert_eq!(
            f.auth(LOCAL).await.1,
            CredentialSource::Auths(f.config_path())
        );
    }

    #[tokio::test]
    async fn helpers_get_the_docker_hub_key_on_stdin() {
        let f = Fixture::new()
            .answering_helper("hub")
            .config(r#"{"credHelpers": {"docker.io": "hub"}}"#);
        let (auth, source) = f.auth("docker.io").await;
        assert_eq!(source, CredentialSource::Helper("hub".into()));
        assert_eq!(auth.username(), Some("user-https://index.docker.io/v1/"));
    }

    #[tokio::test]
    async fn a_token_username_means_an_identity_token() {
        let f = Fixture::new()
            .helper(
                "tok",
                r#"printf '{"ServerURL":"x","Username":"<token>","Secret":"refresh"}'"#,
            )
            .config(r#"{"credsStore": "tok"}"#);
        let (auth, _) = f.auth(LOCAL).await;
        assert_eq!(auth.identity_token().unwrap().expose(), "refresh");
        assert_eq!((auth.username(), auth.password()), (None, None));
        let header = decode_header(&auth.header_value());
        assert_eq!(
            header,
            serde_json::json!({"identitytoken": "refresh", "serveraddress": LOCAL})
        );
    }

    #[tokio::test]
    async fn credentials_not_found_is_anonymous_without_falling_back_to_auths() {
        let f = Fixture::new()
            .helper(
                "empty",
                "echo 'credentials not found in native keychain'; exit 1",
            )
            .config(&format!(
                r#"{{"credsStore": "empty", "auths": {{"{LOCAL}": {{"auth": "{}"}}}}}}"#,
                basic("u", "p")
            ));
        assert_eq!(
            f.clean(LOCAL).await,
            (None, CredentialSource::CredsStore("empty".into()))
        );
        // So is the same message with a successful exit.
        let f = Fixture::new()
            .helper("lax", "echo 'credentials not found in native keychain'")
            .config(r#"{"credsStore": "lax"}"#);
        assert_eq!(f.clean(LOCAL).await.0, None);
        // An answer with no username and no secret is anonymous too.
        let f = Fixture::new()
            .helper(
                "blank",
                r#"printf '{"ServerURL":"x","Username":"","Secret":""}'"#,
            )
            .config(r#"{"credsStore": "blank"}"#);
        assert_eq!(f.clean(LOCAL).await.0, None);
    }

    #[tokio::test]
    async fn a_failing_helper_is_an_error_naming_it_and_its_message() {
        let f = Fixture::new()
            .helper("broken", "echo 'keychain is locked' >&2; exit 3")
            .config(r#"{"credHelpers": {"127.0.0.1:5000": "broken"}}"#);
        let err = f.problem(LOCAL).await;
        let text = err.to_string();
        assert!(
            matches!(err, CredentialError::HelperFailed { .. }),
            "{err:?}"
        );
        assert!(
            text.starts_with("credential helper \"broken\": `docker-credential-broken get` failed"),
            "{text}"
        );
        assert!(text.contains("keychain is locked"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_helper_is_an_error_naming_it_and_the_config() {
        let f = Fixture::new().config(r#"{"credsStore": "desktop"}"#);
        let err = f.problem(LOCAL).await;
        assert!(
            matches!(err, CredentialError::HelperNotFound { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("credsStore \"desktop\""), "{text}");
        assert!(
            text.contains("docker-credential-desktop was not found on PATH"),
            "{text}"
        );
        assert!(
            text.contains(&f.config_path().display().to_string()),
            "{text}"
        );

        // Helpers are looked up on the lookup's PATH only, never relative dirs.
        let f = Fixture::new()
            .answering_helper("here")
            .config(r#"{"credsStore": "here"}"#)
            .env("PATH", "bin:.");
        assert!(matches!(
            f.problem(LOCAL).await,
            CredentialError::HelperNotFound { .. }
        ));
    }

    #[tokio::test]
    async fn helper_names_with_path_separators_are_refused() {
        let f = Fixture::new().config(r#"{"credsStore": "../../bin/sh"}"#);
        let err = f.problem(LOCAL).await;
        assert!(
            matches!(err, CredentialError::InvalidHelperName { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_slow_helper_times_out() {
        let f = Fixture::new()
            .helper("slow", "exec sleep 10")
            .config(r#"{"credsStore": "slow"}"#);
        let started = std::time::Instant::now();
        let err = f
            .resolver()
            .with_helper_timeout(Duration::from_millis(300))
            .resolve(LOCAL)
            .await
            .problem
            .expect("a timeout is a problem");
        assert!(
            matches!(err, CredentialError::HelperTimeout { .. }),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            err.to_string().contains("did not answer within 0.3s"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn helper_output_that_is_not_json_is_an_error() {
        let f = Fixture::new()
            .helper("chatty", "echo hello")
            .config(r#"{"credsStore": "chatty"}"#);
        let err = f.problem(LOCAL).await;
        assert!(
            matches!(err, CredentialError::HelperBadOutput { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn docker_auth_config_wins_over_everything_and_falls_back_when_silent() {
        let f = Fixture::new()
            .answering_helper("special")
            .config(&format!(
                r#"{{"credHelpers": {{"{LOCAL}": "special"}}, "credsStore": "special"}}"#
            ))
            .env(
                "DOCKER_AUTH_CONFIG",
                &format!(
                    r#"{{"auths": {{"https://{LOCAL}/v2/": {{"auth": "{}"}}}}}}"#,
                    basic("env-user", PASSWORD)
                ),
            );
        let (auth, source) = f.auth(LOCAL).await;
        assert_eq!(source, CredentialSource::DockerAuthConfig);
        assert_eq!(auth.username(), Some("env-user"));
        assert_eq!(auth.server_address(), LOCAL);

        // A registry it does not mention falls through to the config file.
        let (auth, source) = f.auth("other.example").await;
        assert_eq!(source, CredentialSource::CredsStore("special".into()));
        assert_eq!(auth.password().unwrap().expose(), "secret-of-special");

        // Empty means unset.
        let f = Fixture::new().env("DOCKER_AUTH_CONFIG", "");
        assert_eq!(f.clean(LOCAL).await, (None, CredentialSource::None));
    }

    /// What the CLI (28.3+, `parseEnvConfig`) refuses in DOCKER_AUTH_CONFIG:
    /// then the whole variable is ignored (with a warning) and the config
    /// file answers.
    #[tokio::test]
    async fn a_docker_auth_config_the_cli_refuses_is_ignored_for_the_file() {
        let good = basic("env-user", PASSWORD);
        #[rustfmt::skip]
        let cases = [
            (format!(r#"{{"auths": {{"{LOCAL}": {{"auth": "{good}"}}}}, "credsStore": "x"}}"#), "not what is expected"),
            (format!(r#"{{"auths": {{"{LOCAL}": {{"auth": "{good}", "username": "u"}}}}}}"#), "not what is expected"),
            (format!(r#"{{"auths": {{"{LOCAL}": {{"username": "u", "password": "p"}}}}}}"#), "not what is expected"),
            (format!(r#"{{"auths": {{"{LOCAL}": {{}}}}}}"#), "no \"auth\" value"),
            (format!(r#"{{"auths": {{"{LOCAL}": {{"auth": "%%%"}}}}}}"#), "not valid base64"),
            ("not json".to_string(), "syntax error"),
            (r#"{"auths": {}} {"auths": {}}"#.to_string(), "syntax error"),
        ];
        for (value, expected) in cases {
            let f = Fixture::new()
                .config(&format!(
                    r#"{{"auths": {{"{LOCAL}": {{"auth": "{}"}}}}}}"#,
                    basic("file-user", "p")
                ))
                .env("DOCKER_AUTH_CONFIG", &value);
            let r = f.resolve(LOCAL).await;
            assert_eq!(
                r.auth.as_ref().and_then(|a| a.username()),
                Some("file-user"),
                "{value}"
            );
            assert_eq!(
                r.source,
                CredentialSource::Auths(f.config_path()),
                "{value}"
            );
            let problem = r.problem.expect("a warning").to_string();
            assert!(problem.contains("DOCKER_AUTH_CONFIG"), "{problem}");
            assert!(problem.contains(expected), "{value}: {problem}");
            assert!(
                !problem.contains(PASSWORD) && !problem.contains(&good),
                "{problem}"
            );
        }
    }

    /// Every way a configured helper can fail, and what happens to the
    /// pull. Expected values: `docker pull` (CLI 28.2, observed on this
    /// machine against the test registry: each case pulls without
    /// credentials) and the Go worker's `getRegistryAuth` (logs a warning
    /// and pulls without auth). "credentials not found" and an empty answer
    /// are the helper's normal "nothing stored" answers: no warning.
    #[tokio::test]
    async fn helper_failures_pull_anonymously_with_a_warning_like_docker_pull() {
        struct Case {
            name: &'static str,
            /// Helper script body (`None`: no helper installed).
            script: Option<&'static str>,
            config: &'static str,
            warning: Option<&'static str>,
        }
        #[rustfmt::skip]
        let cases = [
            Case { name: "missing", script: None, config: r#"{"credsStore": "oz"}"#,
                   warning: Some("docker-credential-oz was not found on PATH") },
            Case { name: "exits non-zero", script: Some("echo 'keychain is locked'; exit 3"),
                   config: r#"{"credsStore": "oz"}"#, warning: Some("`docker-credential-oz get` failed") },
            Case { name: "says not found", script: Some("echo 'credentials not found in native keychain'; exit 1"),
                   config: r#"{"credsStore": "oz"}"#, warning: None },
            Case { name: "says not found on stderr", script: Some("echo 'credentials not found in native keychain' >&2; exit 1"),
                   config: r#"{"credHelpers": {"127.0.0.1:5000": "oz"}}"#, warning: None },
            Case { name: "empty answer", script: Some(r#"printf '{"ServerURL":"x","Username":"","Secret":""}'"#),
                   config: r#"{"credsStore": "oz"}"#, warning: None },
            Case { name: "not JSON", script: Some("echo hello"),
                   config: r#"{"credsStore": "oz"}"#, warning: Some("answered with invalid JSON") },
            Case { name: "nothing at all", script: Some("exit 0"),
                   config: r#"{"credsStore": "oz"}"#, warning: Some("answered with invalid JSON") },
            Case { name: "killed", script: Some("kill -9 $$"),
                   config: r#"{"credsStore": "oz"}"#, warning: Some("failed") },
            Case { name: "path in the name", script: None, config: r#"{"credsStore": "../oz"}"#,
                   warning: Some("not a valid helper name") },
            Case { name: "not executable", script: None, config: r#"{"credsStore": "plain"}"#,
                   warning: Some("docker-credential-plain was not found on PATH") },
        ];
        for case in cases {
            let mut f = Fixture::new().config(case.config);
            if let Some(body) = case.script {
                f = f.helper("oz", body);
            }
            // A helper file without the execute bit is not a helper.
            std::fs::write(
                f.dir.path().join("bin/docker-credential-plain"),
                "#!/bin/sh\n",
            )
            .unwrap();
            let r = f.resolve(LOCAL).await;
            assert!(r.auth.is_none(), "{}: pulls without credentials", case.name);
            match (case.warning, &r.problem) {
                (None, None) => {}
                (Some(expected), Some(problem)) => {
                    let text = problem.to_string();
                    assert!(text.contains(expected), "{}: {text}", case.name);
                    assert!(
                        text.contains("oz") || text.contains("plain"),
                        "{}: names the helper: {text}",
                        case.name
                    );
                }
                (expected, got) => {
                    panic!("{}: expected warning {expected:?}, got {got:?}", case.name)
                }
            }
        }
    }

    /// Config-file problems (CLI 28.2 `docker pull`: "WARNING: Error
    /// parsing config file", then an anonymous pull; the Go worker: warns,
    /// pulls without auth). An empty `credHelpers` entry is the CLI's "use
    /// the file's auths", skipping `credsStore`.
    #[tokio::test]
    async fn config_file_problems_pull_anonymously_with_a_warning() {
        let f = Fixture::new().config(r#"{"auths": {"#);
        let text = f.problem(LOCAL).await.to_string();
        assert!(
            text.contains(&f.config_path().display().to_string()),
            "{text}"
        );

        let f = Fixture::new().config(&format!(r#"{{"auths": {{"{LOCAL}": {{"auth": "%%%"}}}}}}"#));
        let text = f.problem(LOCAL).await.to_string();
        assert!(text.contains("not valid base64"), "{text}");
        // Other registries in the same file are unaffected.
        let f = f.config(&format!(
            r#"{{"auths": {{"{LOCAL}": {{"auth": "%%%"}}, "ok.example": {{"auth": "{}"}}}}}}"#,
            basic("u", "p")
        ));
        assert_eq!(f.auth("ok.example").await.0.username(), Some("u"));

        let f = Fixture::new().config(&format!(
            r#"{{"credHelpers": {{"{LOCAL}": ""}}, "credsStore": "missing-store", "auths": {{"{LOCAL}": {{"auth": "{}"}}}}}}"#,
            basic("from-auths", "p")
        ));
        let (auth, source) = f.auth(LOCAL).await;
        assert_eq!(auth.username(), Some("from-auths"));
        assert_eq!(source, CredentialSource::Auths(f.config_path()));
    }

    #[tokio::test]
    async fn docker_hub_header_is_url_safe_base64_of_the_auth_json() {
        // A password whose standard base64 has '+' and '/' somewhere.
        let password = "~~~~~~??????>>>>>>~~~";
        let f = Fixture::new().config(&format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}}}}}}"#,
            basic("hubuser", password)
        ));
        let (auth, source) = f.auth("docker.io").await;
        assert_eq!(source, CredentialSource::Auths(f.config_path()));
        let header = auth.header_value();
        assert_eq!(
            decode_header(&header),
            serde_json::json!({
                "username": "hubuser",
                "password": password,
                "serveraddress": "https://index.docker.io/v1/",
            })
        );
        let standard = STANDARD.encode(URL_SAFE.decode(&header).unwrap());
        assert!(
            standard.contains('+') && standard.contains('/'),
            "test password must exercise both"
        );
        assert!(!header.contains('+') && !header.contains('/'), "{header}");
        assert_eq!(header, standard.replace('+', "-").replace('/', "_"));
    }

    #[tokio::test]
    async fn malformed_config_is_an_error_naming_the_file_but_not_the_content() {
        let f = Fixture::new().config(r#"{"auths": "s3cr3t-value-in-wrong-place"}"#);
        let err = f.problem(LOCAL).await;
        assert!(
            matches!(err, CredentialError::InvalidConfig { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&f.config_path().display().to_string()),
            "{text}"
        );
        assert!(text.contains("not what is expected at line 1"), "{text}");
        assert!(
            !text.contains("s3cr3t") && !format!("{err:?}").contains("s3cr3t"),
            "{text}"
        );

        let f = Fixture::new().config(r#"{"auths": {"#);
        let text = f.problem(LOCAL).await.to_string();
        assert!(text.contains("unexpected end of input"), "{text}");

        let f = Fixture::new().env("DOCKER_AUTH_CONFIG", r#"{"auths": ["s3cr3t"]}"#);
        let err = f.problem(LOCAL).await;
        assert!(
            matches!(err, CredentialError::InvalidDockerAuthConfig(_)),
            "{err:?}"
        );
        assert!(!err.to_string().contains("s3cr3t") && !format!("{err:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn invalid_auth_values_are_errors_without_the_value() {
        let no_colon = STANDARD.encode("just-a-s3cr3t");
        let empty_user = basic("", "s3cr3t");
        let cases = [
            ("%%%not-base64-s3cr3t%%%".to_owned(), "not valid base64"),
            (no_colon.clone(), "does not decode to \"username:password\""),
            (
                empty_user.clone(),
                "does not decode to \"username:password\"",
            ),
        ];
        for (value, expected) in cases {
            let f = Fixture::new().config(&format!(
                r#"{{"auths": {{"{LOCAL}": {{"auth": "{value}"}}}}}}"#
            ));
            let err = f.problem(LOCAL).await;
            let (text, debug) = (err.to_string(), format!("{err:?}"));
            assert!(text.contains(expected), "{text}");
            assert!(
                text.contains(&format!(
                    "auths entry \"{LOCAL}\" in {}",
                    f.config_path().display()
                )),
                "{text}"
            );
            for shown in [&text, &debug] {
                assert!(
                    !shown.contains("s3cr3t") && !shown.contains(&value),
                    "{shown}"
                );
            }
        }
    }

    #[tokio::test]
    async fn secrets_never_appear_in_debug_output() {
        let encoded = basic("alice", PASSWORD);
        let f = Fixture::new().config(&format!(
            r#"{{"auths": {{"{LOCAL}": {{"auth": "{encoded}", "identitytoken": "tok-s3cr3t"}}}}}}"#
        ));
        let resolved = f.clean(LOCAL).await;
        let debug = format!("{resolved:?} {:?}", f.resolver());
        assert!(debug.contains("alice") && debug.contains(LOCAL), "{debug}");
        for secret in [PASSWORD, "tok-s3cr3t", encoded.as_str()] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        // The environment's copy of DOCKER_AUTH_CONFIG is hidden as well.
        let f = Fixture::new().env(
            "DOCKER_AUTH_CONFIG",
            &format!(r#"{{"auths": {{"x": {{"auth": "{encoded}"}}}}}}"#),
        );
        let debug = format!("{:?}", f.resolver());
        assert!(!debug.contains(&encoded), "{debug}");
    }

    #[tokio::test]
    async fn helper_failures_never_quote_credentials() {
        let f = Fixture::new()
            .helper(
                "leaky",
                r#"printf '{"ServerURL":"x","Username":"u","Secret":"helper-s3cr3t"}'; exit 1"#,
            )
            .config(r#"{"credsStore": "leaky"}"#);
        let err = f.problem(LOCAL).await;
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("helper-s3cr3t"), "{shown}");
        assert!(shown.contains("withheld"), "{shown}");
    }

    #[test]
    fn long_helper_messages_are_shortened_to_one_line() {
        let long = format!("line one\n{}", "x".repeat(1000));
        let quoted = quote_helper_output(&long);
        assert!(
            quoted.starts_with("line one xxx") && quoted.ends_with('…'),
            "{quoted}"
        );
        assert_eq!(quoted.chars().count(), MAX_QUOTED_OUTPUT + 1);
    }

    #[test]
    fn host_names_are_taken_from_keys_like_the_cli() {
        let cases = [
            ("https://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
            ("http://registry.example", "registry.example"),
            ("registry.example/v1/", "registry.example"),
            ("registry.example:443", "registry.example:443"),
            (
                "https://user@registry.example:8443/x",
                "registry.example:8443",
            ),
            ("https://[::1]:5000/v2/", "[::1]:5000"),
            ("https://host:/v2/", "host"),
        ];
        for (key, host) in cases {
            assert_eq!(convert_to_hostname(key), host, "{key}");
        }
    }

    #[test]
    fn registry_keys_normalise_docker_hub_only() {
        for hub in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
        ] {
            assert_eq!(normalise_registry_key(hub), DOCKER_HUB_AUTH_KEY, "{hub}");
        }
        assert_eq!(normalise_registry_key(LOCAL), LOCAL);
        assert_eq!(normalise_registry_key("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn source_display_is_for_messages() {
        let cases = [
            (
                CredentialSource::Helper("pass".into()),
                "credential helper \"pass\"",
            ),
            (
                CredentialSource::CredsStore("desktop".into()),
                "credsStore \"desktop\"",
            ),
            (
                CredentialSource::Auths("/root/.docker/config.json".into()),
                "auths in /root/.docker/config.json",
            ),
            (CredentialSource::DockerAuthConfig, "DOCKER_AUTH_CONFIG"),
            (CredentialSource::None, "no credentials (anonymous)"),
        ];
        for (source, text) in cases {
            assert_eq!(source.to_string(), text);
        }
    }

    #[test]
    fn the_free_resolve_future_is_send_and_static() {
        fn assert_send_static<T: Send + 'static>(_: &T) {}
        let env: HashMap<String, String> = HashMap::new();
        let future = resolve(LOCAL, &|k| env.get(k).cloned());
        assert_send_static(&future);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(text in ".{0,120}") {
                let _ = decode_auth(&text);
                let _ = convert_to_hostname(&text);
                let _ = normalise_registry_key(&text);
                let _ = parse_docker_auth_config(&text);
                let _ = quote_helper_output(&text);
                let _ = serde_json::from_str::<HelperAnswer>(&text);
            }

            /// `auth` values round-trip: base64 of `user:password` decodes
            /// to the same pair (padding or not).
            #[test]
            fn auth_values_round_trip(user in "[^:\0]{1,20}", password in "[^\0]{0,30}", pad in any::<bool>()) {
                let mut encoded = STANDARD.encode(format!("{user}:{password}"));
                if !pad {
                    encoded = encoded.trim_end_matches('=').to_owned();
                }
                prop_assert_eq!(decode_auth(&encoded), Ok((user, password)));
            }

            /// The header always decodes to the credentials it was made from.
            #[test]
            fn headers_round_trip(user in ".{1,20}", password in ".{0,30}", server in "[a-z0-9.:]{1,20}") {
                let auth = RegistryAuth::with_password(&server, &user, &password);
                let header = decode_header(&auth.header_value());
                prop_assert_eq!(&header["username"], &serde_json::json!(user));
                prop_assert_eq!(&header["password"], &serde_json::json!(password));
                prop_assert_eq!(&header["serveraddress"], &serde_json::json!(server));
            }
        }
    }
}
