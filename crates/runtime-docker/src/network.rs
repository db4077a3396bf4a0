//! The task container's network: `backend.docker.network_mode` (the values
//! of the Docker CLI's `--network`), `dns` and `dns_search`. Parsing is pure;
//! whether a user-defined network exists is asked of the daemon once at
//! start-up ([`super::startup::verify`]).
//!
//! Only the task container follows these settings: the sidecar fill
//! containers are created with networking disabled and never started.

use super::InvalidSetting;
use std::net::IpAddr;

const MODE_KEY: &str = "backend.docker.network_mode";

/// `HostConfig.NetworkMode` of every task container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// The daemon's default bridge (`bridge`, also the default when unset).
    Bridge,
    /// No network but loopback.
    None,
    /// The host's network namespace.
    Host,
    /// Another container's network namespace (`container:NAME`); not
    /// checked at start-up, since that container may come and go.
    Container(String),
    /// A user-defined network, which must exist on the daemon.
    Named(String),
}

impl NetworkMode {
    /// `bridge`, `none`, `host`, `container:NAME` or a network's name, as
    /// `docker run --network` takes them (`default` is the daemon's default,
    /// the bridge).
    pub fn parse(text: &str) -> Result<NetworkMode, InvalidSetting> {
        let t = text.trim();
        let bad = |problem: String| Err(InvalidSetting::new(MODE_KEY, problem));
        match t {
            "" => bad(
                "empty; use bridge, none, host, container:NAME or the name of a network (docker network ls)".into(),
            ),
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            _ => match t.strip_prefix("container:") {
                Some("") => bad(format!(
                    "{text:?} names no container; write container:NAME (or container:ID)"
                )),
                Some(name) => Ok(NetworkMode::Container(name.to_string())),
                None if t.contains(char::is_whitespace) => bad(format!(
                    "{text:?} is not a network name (no spaces); use bridge, none, host, container:NAME or a network's name"
                )),
                None => Ok(NetworkMode::Named(t.to_string())),
            },
        }
    }

    /// The `HostConfig.NetworkMode` value.
    pub fn host_config_value(&self) -> String {
        match self {
            NetworkMode::Bridge => "bridge".into(),
            NetworkMode::None => "none".into(),
            NetworkMode::Host => "host".into(),
            NetworkMode::Container(name) => format!("container:{name}"),
            NetworkMode::Named(name) => name.clone(),
        }
    }
}

/// The network settings of every task container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub mode: NetworkMode,
    /// `HostConfig.Dns`: name servers, as IP addresses.
    pub dns: Vec<IpAddr>,
    /// `HostConfig.DnsSearch`: search domains.
    pub dns_search: Vec<String>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            mode: NetworkMode::Bridge,
            dns: Vec::new(),
            dns_search: Vec::new(),
        }
    }
}

impl Network {
    /// Parses the three keys; errors start with the key path (and the list
    /// index), as the config file's error locator expects.
    pub fn resolve(
        network_mode: Option<&str>,
        dns: &[String],
        dns_search: &[String],
    ) -> Result<Network, InvalidSetting> {
        let mode = match network_mode {
            Some(m) => NetworkMode::parse(m)?,
            None => NetworkMode::Bridge,
        };
        let dns = dns
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.trim().parse::<IpAddr>().map_err(|_| {
                    InvalidSetting::new(
                        format!("backend.docker.dns[{i}]"),
                        format!("{s:?} is not an IP address; name servers are given by address (e.g. 10.0.0.2)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dns_search = dns_search
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let d = s.trim();
                if d.is_empty() || d.len() > 253 || d.contains(char::is_whitespace) {
                    Err(InvalidSetting::new(
                        format!("backend.docker.dns_search[{i}]"),
                        format!(
                            "{s:?} is not a search domain; write a domain such as corp.example"
                        ),
                    ))
                } else {
                    Ok(d.to_string())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        // dockerd refuses these together (runconfig: conflicting options).
        if matches!(mode, NetworkMode::Container(_)) && !(dns.is_empty() && dns_search.is_empty()) {
            return Err(InvalidSetting::new(
                "backend.docker.dns",
                "a container:NAME network mode uses that container's DNS; \
                 remove dns and dns_search, or use another network_mode",
            ));
        }
        Ok(Network {
            mode,
            dns,
            dns_search,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_docker_run_network() {
        for (text, mode) in [
            ("bridge", NetworkMode::Bridge),
            ("default", NetworkMode::Bridge),
            ("none", NetworkMode::None),
            ("host", NetworkMode::Host),
            ("container:db", NetworkMode::Container("db".into())),
            ("ci-net", NetworkMode::Named("ci-net".into())),
        ] {
            assert_eq!(NetworkMode::parse(text), Ok(mode.clone()), "{text}");
            if text != "default" {
                assert_eq!(mode.host_config_value(), text);
            }
        }
        for text in ["", "container:", "my net"] {
            assert!(NetworkMode::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn dns_settings_are_checked_and_name_the_key() {
        let ok = Network::resolve(
            Some("none"),
            &["10.0.0.2".into(), "::1".into()],
            &["corp.example".into()],
        )
        .unwrap();
        assert_eq!(ok.mode, NetworkMode::None);
        assert_eq!(ok.dns.len(), 2);
        let e = Network::resolve(None, &["10.0.0.2".into(), "dns.corp".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backend.docker.dns[1]: \"dns.corp\""), "{e}");
        let e = Network::resolve(None, &[], &["a b".into()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backend.docker.dns_search[0]"), "{e}");
        let e = Network::resolve(Some("container:db"), &["10.0.0.2".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("container:NAME network mode"), "{e}");
        let e = Network::resolve(Some(" "), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backend.docker.network_mode: empty"), "{e}");
    }
}
