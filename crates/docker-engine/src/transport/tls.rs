//! rustls client configuration from [`TlsSettings`]: the CA file (or the
//! built-in web roots), the client certificate chain and key, verification on
//! or off. The generic pieces (provider, protocol versions, PEM files) are
//! [`oz_foundation::tls`]'s; what is Docker's here is where the files come
//! from (`DOCKER_CERT_PATH`, a context's TLS folder) and what an error says.

use crate::transport::endpoint::TlsSettings;
use crate::transport::error::{DockerError, ErrorKind};
use oz_foundation::tls::PemFileError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

fn tls_error(message: String, hint: &str) -> DockerError {
    DockerError::new(ErrorKind::Tls, "load TLS files", message).with_hint(hint.to_string())
}

fn read_certs(
    settings: &TlsSettings,
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, DockerError> {
    oz_foundation::tls::read_certificates(path).map_err(|e| match e {
        PemFileError::Read { source, .. } => tls_error(
            format!("cannot read the {what} {}: {source}", path.display()),
            &format!("Check {} and the file's permissions", settings.location()),
        ),
        PemFileError::NoCertificate { .. } => tls_error(
            format!("the {what} {} holds no PEM certificate", path.display()),
            "It must contain a `-----BEGIN CERTIFICATE-----` block",
        ),
    })
}

/// Builds the rustls configuration; every failure names the file and what
/// is wrong with it (never its contents).
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, DockerError> {
    let provider = oz_foundation::tls::provider();
    let builder = oz_foundation::tls::builder_with(provider.clone());
    let builder = if settings.verify {
        let mut roots = RootCertStore::empty();
        match &settings.ca {
            Some(ca) => {
                for cert in read_certs(settings, ca, "CA certificate")? {
                    roots.add(cert).map_err(|e| {
                        tls_error(
                            format!("the CA certificate {} is not usable: {e}", ca.display()),
                            "ca.pem must be the CA that signed the daemon's certificate",
                        )
                    })?;
                }
            }
            None => roots = oz_foundation::tls::web_roots(),
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
    };
    let mut config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(settings, cert, "client certificate")?;
            let key_der = oz_foundation::tls::read_private_key(key).map_err(|e| {
                let why = match e {
                    PemFileError::Read { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                tls_error(
                    format!("cannot read the client key {}: {why}", key.display()),
                    "key.pem must hold the PEM private key of cert.pem",
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                tls_error(
                    format!(
                        "the client certificate {} and key {} do not fit together: {e}",
                        cert.display(),
                        key.display()
                    ),
                    "key.pem must be the private key of cert.pem",
                )
            })?
        }
        (Some(cert), None) => {
            return Err(tls_error(
                format!(
                    "client certificate {} has no key.pem next to it in {}",
                    cert.display(),
                    settings.dir.display()
                ),
                "Put the certificate's private key in key.pem",
            ))
        }
        (None, Some(key)) => {
            return Err(tls_error(
                format!(
                    "client key {} has no cert.pem next to it in {}",
                    key.display(),
                    settings.dir.display()
                ),
                "Put the client certificate in cert.pem",
            ))
        }
        (None, None) => builder.with_no_client_auth(),
    };
    // The Engine API is HTTP/1.1; no ALPN.
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}

/// Verification off (`DOCKER_TLS` without `DOCKER_TLS_VERIFY`, or a context
/// with `SkipTLSVerify`): any certificate is accepted, signatures still checked.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_named() {
        let settings = TlsSettings {
            ca: Some("/nonexistent/ca.pem".into()),
            cert: None,
            key: None,
            verify: true,
            dir: "/nonexistent".into(),
            origin: crate::transport::endpoint::TlsOrigin::CertPath { set: true },
        };
        let err = client_config(&settings).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn unverified_needs_no_files() {
        let settings = TlsSettings {
            ca: None,
            cert: None,
            key: None,
            verify: false,
            dir: "/nonexistent".into(),
            origin: crate::transport::endpoint::TlsOrigin::Context {
                name: "remote".into(),
            },
        };
        assert!(client_config(&settings).is_ok());
    }
}
