//! The TLS client configuration of the worker's WebSocket (`wss://`): the
//! CAs of [`oz_foundation::tls_roots`] (the bundled web roots plus the system's,
//! with `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured as the Go worker honours
//! them). Built once per process: reconnects reuse it.

use rustls::ClientConfig;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::error::TlsError;
use tokio_tungstenite::tungstenite::Error as WsError;

pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(oz_foundation::tls_roots::client_config)
        .clone()
}

/// A failed connect, said for the log; a refused server certificate also
/// says how to trust its CA.
pub fn describe_connect_error(e: &WsError) -> String {
    let hint = match e {
        WsError::Tls(TlsError::Rustls(r)) => match r.as_ref() {
            rustls::Error::InvalidCertificate(why) => Some(oz_foundation::tls_roots::describe(why)),
            _ => None,
        },
        _ => oz_foundation::tls_roots::certificate_hint(e),
    };
    match hint {
        Some(hint) => format!("{e}: {hint}"),
        None => e.to_string(),
    }
}
