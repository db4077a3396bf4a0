//! The one error type of the Docker layer.
//!
//! Every error names the operation (the spec's `operationId`, or a short verb
//! for resolution and negotiation), the endpoint and how it was chosen, the
//! HTTP status and the daemon's message when there was an answer, and what to
//! check next. Nothing here ever holds a credential: endpoints are rendered
//! without userinfo, header values never reach an error, TLS errors name the
//! files, never their contents.

use std::borrow::Cow;
use std::time::Duration;

/// What went wrong, coarsely; [`DockerError::kind`] lets callers branch on it
/// without parsing messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The endpoint configuration is unusable: an unparsable `DOCKER_HOST`, an
    /// unknown context, an unreadable certificate file.
    Config,
    /// The daemon could not be reached (socket missing, refused, permission).
    Connect,
    /// The TLS handshake or the certificates failed.
    Tls,
    /// An ordinary call did not finish within its timeout.
    Timeout,
    /// The daemon answered with a non-success HTTP status.
    Status(http::StatusCode),
    /// A JSON-lines stream carried an in-band `error`/`errorDetail`.
    InBand,
    /// The daemon's API version (or the pinned one) is below our minimum.
    Version,
    /// The answer was not what the API promises (bad JSON, body cut short).
    Protocol,
    /// Something this client does not support yet (e.g. `ssh://`).
    Unsupported,
}

/// Where the failed call went: the endpoint (no credentials) and how it was
/// chosen, e.g. `unix:///var/run/docker.sock` from `DOCKER_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEndpoint {
    pub url: String,
    pub source: String,
}

/// Carries the operation, the endpoint, the HTTP status and the daemon's
/// message. Never holds a credential.
#[derive(Debug, Clone)]
pub struct DockerError {
    operation: Cow<'static, str>,
    endpoint: Option<ErrorEndpoint>,
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

impl DockerError {
    /// A new error; `message` is the daemon's message for [`ErrorKind::Status`].
    pub fn new(
        kind: ErrorKind,
        operation: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        DockerError {
            operation: operation.into(),
            endpoint: None,
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Attaches the endpoint the call went to.
    pub fn with_endpoint(mut self, endpoint: ErrorEndpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Attaches advice: what the user should check or change.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn timeout(operation: &'static str, after: Duration) -> Self {
        DockerError::new(
            ErrorKind::Timeout,
            operation,
            format!("no answer within {:.0?}", after),
        )
        .with_hint("The daemon may be overloaded; raise the request timeout if this persists")
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The operation, e.g. `ContainerCreate`.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    pub fn endpoint(&self) -> Option<&ErrorEndpoint> {
        self.endpoint.as_ref()
    }

    /// The HTTP status when the daemon answered with an error status.
    pub fn status(&self) -> Option<http::StatusCode> {
        match self.kind {
            ErrorKind::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The daemon's message (for status and in-band errors) or our description.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// True for a 404 (no such container, image, volume).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(http::StatusCode::NOT_FOUND)
    }
}

impl std::fmt::Display for DockerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |f: &mut std::fmt::Formatter<'_>| match &self.endpoint {
            Some(e) => write!(f, "{} (from {})", e.url, e.source),
            None => f.write_str("the Docker daemon"),
        };
        match &self.kind {
            ErrorKind::Connect | ErrorKind::Tls => {
                f.write_str("cannot connect to the Docker daemon at ")?;
                match &self.endpoint {
                    Some(e) => write!(f, "{} (from {})", e.url, e.source)?,
                    None => f.write_str("its endpoint")?,
                }
                write!(f, " [{}]: {}", self.operation, self.message)?;
            }
            ErrorKind::Status(status) => {
                write!(f, "{} failed: ", self.operation)?;
                at(f)?;
                write!(f, " answered {status}: {}", self.message)?;
            }
            ErrorKind::Timeout => {
                write!(f, "{} timed out: ", self.operation)?;
                at(f)?;
                write!(f, " gave {}", self.message)?;
            }
            _ => {
                write!(f, "{}: {}", self.operation, self.message)?;
                if let Some(e) = &self.endpoint {
                    write!(f, " ({} from {})", e.url, e.source)?;
                }
            }
        }
        if let Some(hint) = &self.hint {
            let sep = if self.message.ends_with('.') {
                " "
            } else {
                ". "
            };
            write!(f, "{sep}{hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DockerError {}
