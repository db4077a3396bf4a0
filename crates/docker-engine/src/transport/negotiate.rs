//! API version negotiation and engine recognition from `/_ping` and
//! `/version`.

use crate::transport::error::{DockerError, ErrorKind};

/// An Engine API version, `MAJOR.MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u16,
    pub minor: u16,
}

impl ApiVersion {
    /// The newest version this client speaks (its bindings' spec).
    pub const LATEST: ApiVersion = ApiVersion::new(1, 51);
    /// The oldest daemon accepted: Docker 20.10 and Podman 4 (both 1.41),
    /// the oldest engines our test matrix runs against.
    pub const MINIMUM: ApiVersion = ApiVersion::new(1, 41);

    pub const fn new(major: u16, minor: u16) -> Self {
        ApiVersion { major, minor }
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Text that is not an API version (`MAJOR.MINOR`, an optional `v` first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an API version like 1.41")]
pub struct NotAnApiVersion(pub String);

impl std::str::FromStr for ApiVersion {
    type Err = NotAnApiVersion;

    fn from_str(s: &str) -> Result<Self, NotAnApiVersion> {
        let t = s.trim().trim_start_matches('v');
        let (a, b) = t
            .split_once('.')
            .ok_or_else(|| NotAnApiVersion(s.to_owned()))?;
        match (a.parse(), b.parse()) {
            (Ok(major), Ok(minor)) => Ok(ApiVersion { major, minor }),
            _ => Err(NotAnApiVersion(s.to_owned())),
        }
    }
}

/// Docker Engine or Podman's Docker-compatible service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
        })
    }
}

/// What answers on the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    pub kind: EngineKind,
    /// The engine's own version (`/version`'s `Version`), e.g. `20.10.24`.
    pub version: String,
    /// The newest API version the daemon advertises.
    pub api_version: ApiVersion,
    /// Podman's libpod API version (`Libpod-Api-Version`), when Podman.
    pub libpod_api_version: Option<String>,
}

/// The daemon's platform, `os/arch` as Go names them (`linux/amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

/// The headers of a `/_ping` answer that matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingInfo {
    pub api_version: Option<ApiVersion>,
    pub os_type: Option<String>,
    pub libpod_api_version: Option<String>,
    pub server: Option<String>,
}

impl PingInfo {
    pub fn from_headers(h: &http::HeaderMap) -> Self {
        let get = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        PingInfo {
            api_version: get("api-version").and_then(|v| v.parse().ok()),
            os_type: get("ostype"),
            libpod_api_version: get("libpod-api-version"),
            server: get("server"),
        }
    }

    pub fn engine_kind(&self) -> EngineKind {
        let libpod_server = self
            .server
            .as_deref()
            .is_some_and(|s| s.to_ascii_lowercase().starts_with("libpod"));
        if self.libpod_api_version.is_some() || libpod_server {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        }
    }
}

/// The version to use: the pin when given, else the lower of ours and the
/// daemon's. Below [`ApiVersion::MINIMUM`] is refused, naming both versions.
pub fn negotiate(
    daemon: Option<ApiVersion>,
    pinned: Option<ApiVersion>,
) -> Result<ApiVersion, DockerError> {
    if let Some(pin) = pinned {
        if pin < ApiVersion::MINIMUM {
            return Err(DockerError::new(
                ErrorKind::Version,
                "negotiate API version",
                format!(
                    "DOCKER_API_VERSION={pin} is below the minimum API version {} this worker supports",
                    ApiVersion::MINIMUM
                ),
            )
            .with_hint(format!(
                "Unset DOCKER_API_VERSION or set it to {} or newer",
                ApiVersion::MINIMUM
            )));
        }
        return Ok(pin);
    }
    // A daemon that sends no API-Version predates 1.25 (the CLI assumes 1.24).
    let daemon = daemon.unwrap_or(ApiVersion::new(1, 24));
    if daemon < ApiVersion::MINIMUM {
        return Err(DockerError::new(
            ErrorKind::Version,
            "negotiate API version",
            format!(
                "the daemon speaks API version {daemon}, older than the minimum {} this worker supports",
                ApiVersion::MINIMUM
            ),
        )
        .with_hint("Upgrade the daemon (Docker 20.10 or newer, Podman 4 or newer)"));
    }
    Ok(daemon.min(ApiVersion::LATEST))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ApiVersion {
        s.parse().unwrap()
    }

    #[test]
    fn takes_the_lower_version() {
        assert_eq!(negotiate(Some(v("1.41")), None).unwrap(), v("1.41"));
        assert_eq!(negotiate(Some(v("1.52")), None).unwrap(), v("1.51"));
        assert_eq!(
            negotiate(Some(v("1.51")), Some(v("1.43"))).unwrap(),
            v("1.43")
        );
    }

    #[test]
    fn refuses_old_daemons_naming_both_versions() {
        let err = negotiate(Some(v("1.40")), None).unwrap_err().to_string();
        assert!(err.contains("1.40") && err.contains("1.41"), "{err}");
        let err = negotiate(Some(v("1.51")), Some(v("1.24")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1.24") && err.contains("1.41"), "{err}");
    }

    #[test]
    fn orders_numerically() {
        assert!(v("1.9") < v("1.41"));
        assert_eq!(v("v1.41").to_string(), "1.41");
        assert!("x".parse::<ApiVersion>().is_err());
    }

    #[test]
    fn recognises_podman() {
        let mut h = http::HeaderMap::new();
        h.insert("Api-Version", "1.41".parse().unwrap());
        h.insert("Libpod-Api-Version", "4.3.1".parse().unwrap());
        let p = PingInfo::from_headers(&h);
        assert_eq!(p.engine_kind(), EngineKind::Podman);
        assert_eq!(p.api_version, Some(v("1.41")));
        let mut h = http::HeaderMap::new();
        h.insert("Server", "Docker/20.10.24 (linux)".parse().unwrap());
        assert_eq!(PingInfo::from_headers(&h).engine_kind(), EngineKind::Docker);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn version_strings_never_panic(raw in ".{0,20}") {
                let _ = raw.parse::<ApiVersion>();
            }

            #[test]
            fn versions_round_trip(major in any::<u16>(), minor in any::<u16>()) {
                let v = ApiVersion::new(major, minor);
                prop_assert_eq!(v.to_string().parse::<ApiVersion>(), Ok(v));
            }
        }
    }
}
