//! The certificate authorities this program trusts as a TLS client of an
//! orchestrator (the worker's `wss://` connection, the CLI's `https://`
//! runs API calls): the bundled web PKI roots, plus the system's roots
//! found as Go's `crypto/x509` finds them, so a private CA works the same
//! way with this worker as with Warp's Go worker:
//!
//! - `SSL_CERT_FILE`: a PEM file of CA certificates;
//! - `SSL_CERT_DIR`: colon-separated directories of PEM certificates;
//! - neither set: the distribution's store (`/etc/ssl/certs` and its
//!   bundle on Debian).
//!
//! (With either variable set, `rustls-native-certs` reads only what they
//! name; Go would still read the default directories when only
//! `SSL_CERT_FILE` is set. The bundled roots cover the public CAs either
//! way.) Leaf module: depends on nothing of the crate.

use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

/// The bundled roots plus the system's. A certificate or file that cannot
/// be read is logged (its path and why) and skipped, never fatal: the
/// bundled roots remain.
pub fn root_store() -> RootCertStore {
    let mut roots = crate::tls::web_roots();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!("skipping system CA certificates: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!("{ignored} system CA certificates could not be parsed and are not trusted");
    }
    tracing::debug!(system = added, "trusted CA certificates loaded");
    roots
}

/// A rustls client configuration over [`root_store`] with the ring
/// provider and rustls's safe protocol versions; no client certificate.
pub fn client_config() -> Arc<ClientConfig> {
    Arc::new(crate::tls::builder(root_store()).with_no_client_auth())
}

/// When `error`'s chain holds a rustls certificate error, a sentence that
/// says the server certificate was refused and how to trust its CA.
pub fn certificate_hint(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    refused_certificate(error).map(describe)
}

fn refused_certificate<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::CertificateError> {
    if let Some(rustls::Error::InvalidCertificate(why)) = e.downcast_ref::<rustls::Error>() {
        return Some(why);
    }
    // io::Error hides the error it wraps from `source()` (and TLS layers
    // wrap one io::Error in another): look inside.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn std::error::Error + 'static) = inner;
        if let Some(why) = refused_certificate(inner) {
            return Some(why);
        }
    }
    e.source().and_then(refused_certificate)
}

/// The fix for a refused server certificate.
pub fn describe(why: &rustls::CertificateError) -> String {
    format!(
        "the server's TLS certificate was refused ({why:?}); if it is signed by a private CA, trust that CA: set SSL_CERT_FILE to its PEM file (or SSL_CERT_DIR to a directory of them), or install it in the system's CA store"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_roots_are_always_there() {
        assert!(super::root_store().len() >= webpki_roots::TLS_SERVER_ROOTS.len());
    }

    #[test]
    fn a_certificate_error_inside_an_io_error_gets_the_hint() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let io = std::io::Error::other(io);
        let hint = super::certificate_hint(&io).unwrap();
        assert!(
            hint.contains("UnknownIssuer") && hint.contains("SSL_CERT_FILE"),
            "{hint}"
        );
        let other = std::io::Error::other("connection refused");
        assert!(super::certificate_hint(&other).is_none());
    }
}
