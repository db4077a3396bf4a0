//! The contract between the generated bindings and the transport.
//!
//! Generated operation methods (in `generated/operations.rs`) only ever build an
//! [`ApiRequest`] and hand it to one of the `send_*` methods of
//! [`crate::Docker`]. They never see sockets, TLS, versions or timeouts;
//! the transport never sees a Docker type. Paths are given without the `/vX.Y`
//! prefix: the client adds the negotiated version.

use bytes::Bytes;
use futures_util::stream::BoxStream;

/// A body streamed to the daemon without holding it in memory (a tar into
/// `PUT /containers/{id}/archive`, an image import).
pub type BodyStream = BoxStream<'static, std::io::Result<Bytes>>;

/// How long a call may take (the transport applies the deadline).
pub use crate::transport::http::CallKind;

pub enum RequestBody {
    Empty,
    /// Serialized JSON (`Content-Type: application/json`).
    Json(Bytes),
    /// Raw bytes with an explicit content type (e.g. a small tar).
    Bytes {
        content_type: &'static str,
        data: Bytes,
    },
    /// A streamed body with an explicit content type.
    Stream {
        content_type: &'static str,
        stream: BodyStream,
    },
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Empty => f.write_str("Empty"),
            RequestBody::Json(b) => write!(f, "Json({} bytes)", b.len()),
            RequestBody::Bytes { content_type, data } => {
                write!(f, "Bytes({content_type}, {} bytes)", data.len())
            }
            RequestBody::Stream { content_type, .. } => write!(f, "Stream({content_type})"),
        }
    }
}

/// One Docker Engine API call, as the generated bindings describe it.
#[derive(Debug)]
pub struct ApiRequest {
    /// The spec's `operationId`, e.g. `ContainerCreate`; used in errors and logs.
    pub operation: &'static str,
    pub method: http::Method,
    /// Path with parameters already substituted and percent-encoded, without
    /// the version prefix, e.g. `/containers/abc/start`.
    pub path: String,
    /// Query pairs, not yet encoded. Unset optional parameters are not present.
    pub query: Vec<(&'static str, String)>,
    /// Extra headers (e.g. `X-Registry-Auth`). Values may be secret: the
    /// transport never logs header values.
    pub headers: Vec<(&'static str, String)>,
    pub body: RequestBody,
    pub kind: CallKind,
}

impl ApiRequest {
    pub fn new(
        operation: &'static str,
        method: http::Method,
        path: String,
        kind: CallKind,
    ) -> Self {
        ApiRequest {
            operation,
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: RequestBody::Empty,
            kind,
        }
    }
}

/// Percent-encodes one path segment (container names, image references with
/// `/` and `:` all go through here).
pub fn encode_path_segment(s: &str) -> String {
    // The daemon routes on the decoded path, so `%2F` in an image reference
    // still matches `/images/{name}/json`.
    oz_foundation::percent::encode(s).into_owned()
}
