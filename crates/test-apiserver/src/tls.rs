//! The server's CA, serving certificate, bearer token and the kubeconfig
//! clients use, generated on first start into the state dir and reused by a
//! restarted process (so clients keep trusting it and keep their token).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files of one server identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

/// Loads the identity from `dir`, generating it the first time.
pub fn identity(dir: &Path) -> std::io::Result<Identity> {
    if let (Some(ca_pem), Some(cert_pem), Some(key_pem), Some(token)) = (
        read(dir, "ca.pem"),
        read(dir, "server-cert.pem"),
        read(dir, "server-key.pem"),
        read(dir, "token"),
    ) {
        return Ok(Identity {
            ca_pem,
            cert_pem,
            key_pem,
            token: token.trim().to_string(),
        });
    }
    let ca_key = KeyPair::generate().map_err(std::io::Error::other)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(std::io::Error::other)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("oz-test-apiserver CA {:08x}", fastrand::u32(..)),
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(std::io::Error::other)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(std::io::Error::other)?;
    let mut server = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes.default.svc".to_string(),
    ])
    .map_err(std::io::Error::other)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server
        .signed_by(&key, &issuer)
        .map_err(std::io::Error::other)?;
    let token: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
    let id = Identity {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        token,
    };
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), &id.ca_pem)?;
    std::fs::write(dir.join("server-cert.pem"), &id.cert_pem)?;
    write_private(&dir.join("server-key.pem"), &id.key_pem)?;
    write_private(&dir.join("token"), &id.token)?;
    Ok(id)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// A rustls server config for the identity.
pub fn server_config(id: &Identity) -> std::io::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(std::io::Error::other)?;
    let key =
        PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(std::io::Error::other)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Writes `kubeconfig` (context `oz-test`, namespace `default`, the CA
/// embedded, the token as a bearer token) and returns its path.
pub fn write_kubeconfig(dir: &Path, id: &Identity, url: &str) -> std::io::Result<PathBuf> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&id.ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: oz-test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: oz-test\n  user:\n    token: {}\ncontexts:\n- name: oz-test\n  context:\n    cluster: oz-test\n    user: oz-test\n    namespace: default\ncurrent-context: oz-test\n",
        id.token
    );
    let path = dir.join("kubeconfig");
    write_private(&path, &text)?;
    Ok(path)
}
