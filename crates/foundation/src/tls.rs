//! The generic pieces of every outbound rustls client configuration, so
//! each client (the Docker daemon's TLS port, the OTLP push, the worker's
//! `wss://` dial, the CLI's `https://` calls) builds its configuration the
//! same way: the ring provider built explicitly (no process-wide default),
//! rustls's safe protocol versions, PEM files read with their path in the
//! error. What differs per client — which CAs, whether a client certificate
//! is sent, what a failure tells the operator to fix — stays with it.

use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ring provider, built explicitly rather than installed process-wide.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration builder over `provider` with rustls's safe
/// default protocol versions (TLS 1.2 and 1.3).
pub fn builder_with(
    provider: Arc<CryptoProvider>,
) -> ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
}

/// [`builder_with`] over [`provider`], trusting `roots`.
pub fn builder(roots: RootCertStore) -> ConfigBuilder<ClientConfig, WantsClientCert> {
    builder_with(provider()).with_root_certificates(roots)
}

/// The bundled Mozilla roots (webpki-roots) alone.
pub fn web_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// A PEM file that could not be read or held nothing usable. Its `Display`
/// names the file and what is wrong, never the file's contents.
#[derive(Debug)]
pub enum PemFileError {
    /// The file cannot be read, or a block in it is not valid PEM.
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// The file reads, but holds no `-----BEGIN CERTIFICATE-----` block.
    NoCertificate { path: PathBuf },
}

impl std::fmt::Display for PemFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemFileError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            PemFileError::NoCertificate { path } => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
        }
    }
}

impl std::error::Error for PemFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PemFileError::Read { source, .. } => Some(source),
            PemFileError::NoCertificate { .. } => None,
        }
    }
}

/// Every certificate of the PEM file at `path`; none is an error.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| PemFileError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemFileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#1, PKCS#8 or SEC1) of the PEM file at `path`.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PemFileError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = read_certificates(&path).unwrap_err();
        assert!(matches!(e, PemFileError::NoCertificate { .. }), "{e:?}");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = read_certificates(&missing).unwrap_err();
        assert!(matches!(e, PemFileError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }

    #[test]
    fn the_web_roots_are_all_there() {
        assert_eq!(web_roots().len(), webpki_roots::TLS_SERVER_ROOTS.len());
    }
}
