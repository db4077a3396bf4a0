//! The one error type of every Engine API call (the transport raises it for
//! resolution, connection, TLS and status failures; the bindings for the
//! rest), named for the API it belongs to.
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
    /// The daemon could not be reached (socket missing, refused, permission;
    /// for `ssh://`, ssh failed).
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
    /// Something this client or engine does not support (e.g. WebSocket
    /// attach on Podman 4).
    Unsupported,
}

/// Where the failed call went: the endpoint (no credentials) and how it was
/// chosen, e.g. `unix:///var/run/docker.sock` from `DOCKER_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEndpoint {
    pub url: String,
    pub source: String,
}

/// Why a daemon's answer did not decode as the type the API promises: a
/// required field missing (named), a value of the wrong JSON type, or text
/// that is not JSON. Kept as the [`source`](std::error::Error::source) of
/// the [`DockerError`] (kind [`ErrorKind::Protocol`]) the call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    type_name: String,
    missing_field: Option<String>,
    detail: String,
}

impl DecodeError {
    /// From serde's error while reading the answer as `T`.
    pub fn new<T: ?Sized>(err: &serde_json::Error) -> Self {
        let detail = err.to_string();
        // serde words every missing field as "missing field `Name`"
        // (`serde::de::Error::missing_field`); it offers no structured form.
        let missing_field = detail
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field.to_owned());
        DecodeError {
            type_name: short_type_name(std::any::type_name::<T>()),
            missing_field,
            detail,
        }
    }

    /// The type the answer was read as, without module paths, e.g.
    /// `Vec<ContainerSummary>`.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The JSON name of the required field the answer lacked (e.g. `Id`),
    /// when that is why it did not decode.
    pub fn missing_field(&self) -> Option<&str> {
        self.missing_field.as_deref()
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "as {}: {}", self.type_name, self.detail)
    }
}

impl std::error::Error for DecodeError {}

/// `alloc::vec::Vec<oz_docker_engine::generated::models::ContainerSummary>`
/// becomes `Vec<ContainerSummary>`.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(""));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(""));
    out
}

/// Carries the operation, the endpoint, the HTTP status and the daemon's
/// message. Never holds a credential. One pointer wide, so `Result`s stay small.
#[derive(Debug, Clone)]
pub struct DockerError(Box<Inner>);

#[derive(Debug, Clone)]
struct Inner {
    operation: Cow<'static, str>,
    endpoint: Option<ErrorEndpoint>,
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    decode: Option<DecodeError>,
}

impl DockerError {
    /// A new error; `message` is the daemon's message for [`ErrorKind::Status`].
    pub fn new(
        kind: ErrorKind,
        operation: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        DockerError(Box::new(Inner {
            operation: operation.into(),
            endpoint: None,
            kind,
            message: message.into(),
            hint: None,
            decode: None,
        }))
    }

    /// A [`ErrorKind::Protocol`] error for an answer that did not decode;
    /// the message says what was being read (`what`), as which type, and
    /// serde's reason, which names a missing required field.
    pub fn decode(operation: impl Into<Cow<'static, str>>, what: &str, cause: DecodeError) -> Self {
        let mut err = DockerError::new(ErrorKind::Protocol, operation, format!("{what} {cause}"));
        err.0.decode = Some(cause);
        err
    }

    /// Why the answer did not decode, when that is the error.
    pub fn decode_error(&self) -> Option<&DecodeError> {
        self.0.decode.as_ref()
    }

    /// Attaches the endpoint the call went to.
    pub fn with_endpoint(mut self, endpoint: ErrorEndpoint) -> Self {
        self.0.endpoint = Some(endpoint);
        self
    }

    /// Attaches advice: what the user should check or change.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.0.hint = Some(hint.into());
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
        &self.0.kind
    }

    /// The operation, e.g. `ContainerCreate`.
    pub fn operation(&self) -> &str {
        &self.0.operation
    }

    pub fn endpoint(&self) -> Option<&ErrorEndpoint> {
        self.0.endpoint.as_ref()
    }

    /// The HTTP status when the daemon answered with an error status.
    pub fn status(&self) -> Option<http::StatusCode> {
        match self.0.kind {
            ErrorKind::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The daemon's message (for status and in-band errors) or our description.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }

    /// True for a 404 (no such container, image, volume).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(http::StatusCode::NOT_FOUND)
    }
}

impl std::fmt::Display for DockerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |f: &mut std::fmt::Formatter<'_>| match &self.0.endpoint {
            Some(e) => write!(f, "{} (from {})", e.url, e.source),
            None => f.write_str("the Docker daemon"),
        };
        match &self.0.kind {
            ErrorKind::Connect | ErrorKind::Tls => {
                f.write_str("cannot connect to the Docker daemon at ")?;
                match &self.0.endpoint {
                    Some(e) => write!(f, "{} (from {})", e.url, e.source)?,
                    None => f.write_str("its endpoint")?,
                }
                write!(f, " [{}]: {}", self.0.operation, self.0.message)?;
            }
            ErrorKind::Status(status) => {
                write!(f, "{} failed: ", self.0.operation)?;
                at(f)?;
                write!(f, " answered {status}: {}", self.0.message)?;
            }
            ErrorKind::Timeout => {
                write!(f, "{} timed out: ", self.0.operation)?;
                at(f)?;
                write!(f, " gave {}", self.0.message)?;
            }
            _ => {
                write!(f, "{}: {}", self.0.operation, self.0.message)?;
                if let Some(e) = &self.0.endpoint {
                    write!(f, " ({} from {})", e.url, e.source)?;
                }
            }
        }
        if let Some(hint) = &self.0.hint {
            let sep = if self.0.message.ends_with('.') {
                " "
            } else {
                ". "
            };
            write!(f, "{sep}{hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DockerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .decode
            .as_ref()
            .map(|d| d as &(dyn std::error::Error + 'static))
    }
}
