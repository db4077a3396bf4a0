//! TLS for the control plane's listener (`serve --tls-cert --tls-key`), so
//! workers connect with `wss://` and the CLI with `https://`: the server
//! configuration from PEM files, each failure naming the file and the fix.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificate chain (leaf first) and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the TLS files cannot serve: each message names the file, its flag
/// and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read --tls-cert {}: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-cert {} holds no PEM certificate: it must contain the server's `-----BEGIN CERTIFICATE-----` block (then any intermediates)", path.display())]
    NoCert { path: PathBuf },
    #[error("cannot read a private key from --tls-key {}: {source}; it must be the PEM private key (`-----BEGIN PRIVATE KEY-----`, RSA or EC) of --tls-cert", path.display())]
    ReadKey {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS set-up failed: {0}")]
    Setup(#[source] rustls::Error),
    #[error("--tls-key {} does not fit --tls-cert {}: {source}; pass the key the certificate was issued for", key.display(), cert.display())]
    Mismatch {
        key: PathBuf,
        cert: PathBuf,
        source: rustls::Error,
    },
}

/// Reads both files and builds the server configuration (ring provider,
/// rustls's safe protocol versions, ALPN `http/1.1`, no client
/// certificates: workers authenticate with their bearer key).
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::ReadKey {
        path: files.key.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Mismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCert {
            path: path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(e.contains("--tls-cert") && e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = server_config(&TlsFiles {
            cert: empty.clone(),
            key: empty,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }
}
