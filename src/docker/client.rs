//! The Docker client: owns a transport, the negotiated API version and the
//! resolved endpoint; executes [`ApiRequest`]s built by the generated bindings.
//!
//! CONTRACT (relied on by `generated/`): the `send_*` methods below, with
//! exactly these signatures. Everything else here is free to change.

use crate::docker::error::DockerError;
use crate::docker::request::ApiRequest;
use crate::docker::stream::{ByteStream, JsonStream};
use serde::de::DeserializeOwned;

/// Cheap to clone; shares one connection pool.
#[derive(Clone)]
pub struct Docker {
    // Filled in by the transport work.
}

impl Docker {
    /// Sends the request; a non-2xx status becomes a `DockerError` carrying the
    /// daemon's message. The body is returned unread.
    pub async fn send_raw(
        &self,
        req: ApiRequest,
    ) -> Result<http::Response<hyper::body::Incoming>, DockerError> {
        let _ = req;
        todo!("transport")
    }

    /// Decodes a JSON response body.
    pub async fn send_json<T: DeserializeOwned>(&self, req: ApiRequest) -> Result<T, DockerError> {
        let _ = req;
        todo!("transport")
    }

    /// For operations whose success response has no (useful) body.
    pub async fn send_unit(&self, req: ApiRequest) -> Result<(), DockerError> {
        let _ = req;
        todo!("transport")
    }

    /// A plain-text response body (e.g. `/_ping`'s `OK`).
    pub async fn send_text(&self, req: ApiRequest) -> Result<String, DockerError> {
        let _ = req;
        todo!("transport")
    }

    /// Response headers only (HEAD operations such as `ContainerArchiveInfo`).
    pub async fn send_headers(&self, req: ApiRequest) -> Result<http::HeaderMap, DockerError> {
        let _ = req;
        todo!("transport")
    }

    /// The raw response body as a stream of chunks (export, archive get,
    /// image save, logs before demultiplexing).
    pub async fn send_byte_stream(&self, req: ApiRequest) -> Result<ByteStream, DockerError> {
        let _ = req;
        todo!("transport")
    }

    /// A JSON-lines response (pull/push/import/build progress, events, stats).
    /// An in-band `error`/`errorDetail` object becomes an `Err` item.
    pub async fn send_json_stream<T: DeserializeOwned + Send + 'static>(
        &self,
        req: ApiRequest,
    ) -> Result<JsonStream<T>, DockerError> {
        let _ = req;
        todo!("transport")
    }

    /// A hijacked connection (`Upgrade: tcp`, answered 101) for attach/exec.
    pub async fn send_upgrade(
        &self,
        req: ApiRequest,
    ) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, DockerError> {
        let _ = req;
        todo!("transport")
    }
}
