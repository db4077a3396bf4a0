//! The Docker CLI's context store, read the way the CLI writes it:
//! `contexts/meta/<hex sha256 of the name>/meta.json` holds the endpoint
//! (`Endpoints.docker.Host`, `SkipTLSVerify`), and
//! `contexts/tls/<same>/docker/{ca,cert,key}.pem` its TLS files.

use crate::transport::error::{DockerError, ErrorKind};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A context store rooted at `<config dir>/contexts`.
#[derive(Debug, Clone)]
pub struct ContextStore {
    root: PathBuf,
}

/// The Docker endpoint of one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerContext {
    pub name: String,
    pub host: Option<String>,
    pub skip_tls_verify: bool,
    pub tls_dir: PathBuf,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl DockerContext {
    pub fn tls_files_present(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

#[derive(serde::Deserialize)]
struct Meta {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Endpoints", default)]
    endpoints: Endpoints,
}

#[derive(serde::Deserialize, Default)]
struct Endpoints {
    docker: Option<DockerEndpointMeta>,
}

#[derive(serde::Deserialize)]
struct DockerEndpointMeta {
    #[serde(rename = "Host", default)]
    host: Option<String>,
    #[serde(rename = "SkipTLSVerify", default)]
    skip_tls_verify: bool,
}

impl ContextStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ContextStore { root: root.into() }
    }

    /// The store directory a context's files live under (named in errors).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory name the CLI derives from a context name.
    pub fn dir_name(name: &str) -> String {
        hex::encode(Sha256::digest(name.as_bytes()))
    }

    /// Loads a context; one that does not exist is an error naming it and
    /// the store path.
    pub fn load(&self, name: &str) -> Result<DockerContext, DockerError> {
        let id = Self::dir_name(name);
        let meta_path = self.root.join("meta").join(&id).join("meta.json");
        let text = std::fs::read(&meta_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DockerError::new(
                    ErrorKind::Config,
                    "resolve endpoint",
                    format!(
                        "Docker context \"{name}\" does not exist in the context store at {}",
                        self.root.display()
                    ),
                )
            } else {
                DockerError::new(
                    ErrorKind::Config,
                    "resolve endpoint",
                    format!(
                        "cannot read Docker context \"{name}\" at {}: {e}",
                        meta_path.display()
                    ),
                )
            }
        })?;
        let meta: Meta = serde_json::from_slice(&text).map_err(|e| {
            DockerError::new(
                ErrorKind::Config,
                "resolve endpoint",
                format!(
                    "Docker context \"{name}\": {} is not valid: {e}",
                    meta_path.display()
                ),
            )
        })?;
        if !meta.name.is_empty() && meta.name != name {
            return Err(DockerError::new(
                ErrorKind::Config,
                "resolve endpoint",
                format!(
                    "Docker context \"{name}\": {} names context \"{}\"",
                    meta_path.display(),
                    meta.name
                ),
            ));
        }
        let docker = meta.endpoints.docker.ok_or_else(|| {
            DockerError::new(
                ErrorKind::Config,
                "resolve endpoint",
                format!(
                    "Docker context \"{name}\" has no docker endpoint ({})",
                    meta_path.display()
                ),
            )
        })?;
        let tls_dir = self.root.join("tls").join(&id).join("docker");
        let existing = |f: &str| Some(tls_dir.join(f)).filter(|p| p.is_file());
        Ok(DockerContext {
            name: name.to_string(),
            host: docker.host,
            skip_tls_verify: docker.skip_tls_verify,
            ca: existing("ca.pem"),
            cert: existing("cert.pem"),
            key: existing("key.pem"),
            tls_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_name_is_sha256_hex() {
        // sha256("default")
        assert_eq!(
            ContextStore::dir_name("default"),
            "37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f"
        );
    }

    #[test]
    fn reads_meta_and_tls_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = ContextStore::dir_name("remote");
        let meta = dir.path().join("meta").join(&id);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"remote","Metadata":{},"Endpoints":{"docker":{"Host":"tcp://127.0.0.1:2376","SkipTLSVerify":true}}}"#,
        )
        .unwrap();
        let tls = dir.path().join("tls").join(&id).join("docker");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("ca.pem"), "x").unwrap();
        let ctx = ContextStore::new(dir.path()).load("remote").unwrap();
        assert_eq!(ctx.host.as_deref(), Some("tcp://127.0.0.1:2376"));
        assert!(ctx.skip_tls_verify);
        assert_eq!(ctx.ca, Some(tls.join("ca.pem")));
        assert_eq!(ctx.cert, None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Whatever a context's meta.json holds, loading it answers
            /// (a context or an error) without panicking.
            #[test]
            fn any_meta_json_loads_or_errors(
                meta in prop_oneof![
                    ".{0,80}",
                    "\\{\"Name\":\"[a-z]{0,5}\",\"Endpoints\":\\{\"docker\":\\{\"Host\":(\"[ -~]{0,20}\"|[0-9]{1,3}|null),\"SkipTLSVerify\":(true|false|1|\"x\")\\}\\}\\}",
                ],
                name in "[a-z-]{1,12}",
            ) {
                let dir = tempfile::tempdir().unwrap();
                let meta_dir = dir.path().join("meta").join(ContextStore::dir_name(&name));
                std::fs::create_dir_all(&meta_dir).unwrap();
                std::fs::write(meta_dir.join("meta.json"), meta).unwrap();
                let _ = ContextStore::new(dir.path()).load(&name);
            }
        }
    }
}
