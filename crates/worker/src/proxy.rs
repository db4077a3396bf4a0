//! Which outbound proxy, if any, the worker's connection to the orchestrator
//! goes through, chosen from the environment by the rules of Go's
//! `http.ProxyFromEnvironment` (`golang.org/x/net/http/httpproxy`), which the
//! Go worker's WebSocket dialer follows, so an environment written for it
//! routes this worker the same way:
//!
//! - `wss://` uses `HTTPS_PROXY`, `ws://` uses `HTTP_PROXY`; the upper-case
//!   name wins over the lower-case one when both are non-empty.
//!   `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set (Go's CGI rule).
//! - A value without a scheme (`proxy:3128`) means `http://`. Schemes:
//!   `http` (CONNECT), `https` (TLS to the proxy, then CONNECT), `socks5`
//!   and `socks5h` (both hand the host name to the proxy, as Go does).
//!   `user:password@` in the value is sent as the proxy's credentials.
//! - `localhost` and loopback addresses never go through a proxy.
//! - `NO_PROXY` (or `no_proxy`): comma-separated exceptions. `*` matches
//!   everything; an IP address or CIDR block matches addresses; a name
//!   matches itself and its subdomains, `.name` and `*.name` only its
//!   subdomains; any entry may end in `:port` to match only that port.
//!
//! Pure: the dialing is `worker::dial`.

use oz_foundation::operator_env::EnvLookup;
use oz_foundation::secret::Secret;
use std::fmt;
use std::net::IpAddr;

/// How the worker talks to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScheme {
    /// Plain TCP to the proxy, then `CONNECT host:port` (RFC 9110 §9.3.6).
    Http,
    /// TLS to the proxy, then `CONNECT`.
    Https,
    /// SOCKS5 (RFC 1928), the host name resolved by the proxy.
    Socks5,
}

/// One proxy from the environment. `Display` and `Debug` never show the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub scheme: ProxyScheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Percent-decoded.
    pub user: Option<String>,
    /// Percent-decoded.
    pub password: Option<Secret>,
    /// The variable it came from, for messages (`HTTPS_PROXY`).
    pub source: &'static str,
}

impl ProxyUrl {
    /// `scheme://host:port` (no credentials): where a dialer connects.
    pub fn address(&self) -> String {
        let scheme = match self.scheme {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
            ProxyScheme::Socks5 => "socks5",
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the proxy {}", self.address())?;
        // A user without a password may itself be a token: not shown.
        match (&self.user, &self.password) {
            (Some(user), Some(_)) => write!(f, " (user {user})")?,
            (Some(_), None) => write!(f, " (with credentials)")?,
            _ => {}
        }
        write!(f, " from {}", self.source)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The proxy settings of the worker's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundProxy {
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    no_proxy: Vec<Exception>,
    warnings: Vec<String>,
}

impl OutboundProxy {
    /// Reads `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (and their lower-case
    /// forms) for a worker whose orchestrator URL is `wss://` (`secure`) or
    /// `ws://`. An unusable value of the variable that URL uses is an error
    /// naming the variable and the fix; one of the other variable (hosts
    /// often set both for other programs) is only a warning, as Go never
    /// reads it for such a URL.
    pub fn from_env(env: &dyn EnvLookup, secure: bool) -> Result<OutboundProxy, ProxyError> {
        let get = |upper: &'static str, lower: &'static str| {
            [upper, lower].into_iter().find_map(|name| {
                env.var(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            })
        };
        let mut warnings = Vec::new();
        let mut http_var = get("HTTP_PROXY", "http_proxy");
        // Under CGI, HTTP_PROXY may come from a request's `Proxy:` header.
        if env.var("REQUEST_METHOD").is_some_and(|v| !v.is_empty()) {
            if let Some((name, _)) = http_var.take() {
                if !secure {
                    warnings.push(format!(
                        "{name} is ignored because REQUEST_METHOD is set (a CGI environment, where it may come from a request header; Go refuses it there too)"
                    ));
                }
            }
        }
        let mut read = |var: Option<(&'static str, String)>, used: bool| match var {
            None => Ok(None),
            Some((name, value)) => match parse_proxy(name, &value) {
                Ok(p) => Ok(Some(p)),
                Err(e) if used => Err(e),
                Err(e) => {
                    let (scheme, reads) = if secure {
                        ("wss://", "HTTPS_PROXY")
                    } else {
                        ("ws://", "HTTP_PROXY")
                    };
                    warnings.push(format!(
                        "{e} (ignored: the orchestrator URL is {scheme}, which reads {reads})"
                    ));
                    Ok(None)
                }
            },
        };
        let http = read(http_var, !secure)?;
        let https = read(get("HTTPS_PROXY", "https_proxy"), secure)?;
        let no_proxy = get("NO_PROXY", "no_proxy")
            .map(|(_, v)| parse_no_proxy(&v))
            .unwrap_or_default();
        Ok(OutboundProxy {
            http,
            https,
            no_proxy,
            warnings,
        })
    }

    /// What the environment had that is ignored, for the start-up log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The proxy for a connection to `host:port` of a `ws`/`wss` URL, or
    /// `None` to connect directly. `host` is as in the URL (IPv6 in
    /// brackets or not).
    pub fn for_target(&self, secure: bool, host: &str, port: u16) -> Option<&ProxyUrl> {
        let proxy = if secure { &self.https } else { &self.http }.as_ref()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host == "localhost" {
            return None;
        }
        // `::ffff:10.1.2.3` is 10.1.2.3, as Go's net.IP compares them.
        let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        if ip.is_some_and(|ip| ip.is_loopback()) {
            return None;
        }
        if self.no_proxy.iter().any(|e| e.matches(&host, ip, port)) {
            return None;
        }
        Some(proxy)
    }

    /// Whether any proxy is set (for the start-up log line).
    pub fn describe(&self) -> Option<String> {
        let parts: Vec<String> = [&self.https, &self.http]
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A proxy variable whose value cannot be used. Its `Display` names the
/// variable, the problem and the fix, never the value (it may hold a
/// password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// `HTTP_PROXY`, `https_proxy`, … as the environment spelled it.
    pub variable: &'static str,
    /// What is wrong with the value.
    pub problem: String,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}. Set it to the proxy's URL, e.g. http://proxy.example:3128 or \
             http://user:password@proxy.example:3128 (socks5:// and https:// proxies work too; \
             percent-encode @ : / # ? % in a user or password, e.g. %40 for @), or unset it",
            self.variable, self.problem
        )
    }
}

impl std::error::Error for ProxyError {}

/// A proxy URL as Go's `httpproxy` parses it.
fn parse_proxy(name: &'static str, value: &str) -> Result<ProxyUrl, ProxyError> {
    let value = value.trim();
    // `proxy:3128` has no scheme (a URL parser reads "proxy" as one): Go
    // retries such a value with http:// in front.
    let parsed = match url::Url::parse(value) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(u),
        Err(e) if value.contains("://") => Err(e),
        _ => url::Url::parse(&format!("http://{value}")),
    };
    let bad = |problem: String| ProxyError {
        variable: name,
        problem,
    };
    let url = parsed.map_err(|e| bad(format!("not a URL ({e})")))?;
    // `http://alice:pa/ss@proxy` parses as host "alice", port "pa" and a
    // path holding the rest of the password: refuse rather than connect
    // (and log) there.
    let rest = [
        url.path(),
        url.query().unwrap_or(""),
        url.fragment().unwrap_or(""),
    ];
    if rest.iter().any(|r| r.contains('@')) {
        return Err(bad(
            "its user or password holds a character that must be percent-encoded".into(),
        ));
    }
    let (scheme, default_port) = match url.scheme() {
        "http" => (ProxyScheme::Http, 80),
        "https" => (ProxyScheme::Https, 443),
        "socks5" | "socks5h" => (ProxyScheme::Socks5, 1080),
        other => {
            return Err(bad(format!(
                "the scheme {other}:// is not a proxy scheme the worker speaks"
            )))
        }
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => return Err(bad("it names no host".into())),
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| bad("its user or password is not UTF-8 once percent-decoded".into()))
    };
    let user = match url.username() {
        "" => None,
        u => Some(decode(u)?),
    };
    let password = match url.password() {
        Some(p) => Some(Secret::new(decode(p)?)),
        None => None,
    };
    Ok(ProxyUrl {
        scheme,
        host,
        port: url.port().unwrap_or(default_port),
        user,
        password,
        source: name,
    })
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Exception {
    All,
    Ip(IpAddr, Option<u16>),
    Cidr(ipnet::IpNet),
    /// `suffix` starts with a dot; `exact` also matches the name itself.
    Domain {
        suffix: String,
        exact: bool,
        port: Option<u16>,
    },
}

impl Exception {
    fn matches(&self, host: &str, ip: Option<IpAddr>, port: u16) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match self {
            Exception::All => true,
            Exception::Ip(addr, p) => ip == Some(*addr) && port_ok(p),
            Exception::Cidr(net) => ip.is_some_and(|ip| net.contains(&ip)),
            // A name never matches an address (Go, since CVE-2025-22870).
            Exception::Domain {
                suffix,
                exact,
                port: p,
            } => {
                ip.is_none()
                    && (host.ends_with(suffix.as_str()) || (*exact && host == &suffix[1..]))
                    && port_ok(p)
            }
        }
    }
}

/// Go's `httpproxy.Config.init`: entries are trimmed and lower-cased;
/// malformed ones are skipped, as Go skips them.
fn parse_no_proxy(value: &str) -> Vec<Exception> {
    let mut out = Vec::new();
    for entry in value.split(',') {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return vec![Exception::All];
        }
        if let Ok(net) = entry.parse::<ipnet::IpNet>() {
            out.push(Exception::Cidr(net));
            continue;
        }
        let (host, port) = split_host_port(&entry);
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(p) => Some(p),
                Err(_) => continue,
            },
            None => None,
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(Exception::Ip(ip.to_canonical(), port));
            continue;
        }
        if host.is_empty() {
            continue;
        }
        // `*.foo.com` is `.foo.com`.
        let host = if host.starts_with("*.") {
            &host[1..]
        } else {
            host
        };
        let (suffix, exact) = match host.strip_prefix('.') {
            Some(_) => (host.to_string(), false),
            None => (format!(".{host}"), true),
        };
        out.push(Exception::Domain {
            suffix,
            exact,
            port,
        });
    }
    out
}

/// `host:port`, `[v6]:port` or a bare host (a bare IPv6 address has no port).
fn split_host_port(entry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (entry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Env(HashMap<&'static str, &'static str>);
    impl EnvLookup for Env {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }
    fn env(pairs: &[(&'static str, &'static str)]) -> Env {
        Env(pairs.iter().copied().collect())
    }

    /// Go's `httpproxy` table (proxy_test.go), for the rules the worker
    /// uses: (HTTPS_PROXY, NO_PROXY, target host, port, proxied?).
    #[test]
    fn targets_are_routed_as_go_routes_them() {
        let cases: &[(&str, &str, u16, bool)] = &[
            // loopback and localhost are never proxied
            ("", "localhost", 443, false),
            ("", "127.0.0.1", 443, false),
            ("", "127.1.2.3", 443, false),
            ("", "[::1]", 443, false),
            ("", "example.com", 443, true),
            // names: itself and subdomains, dot form only subdomains
            ("foo.com", "foo.com", 443, false),
            ("foo.com", "www.foo.com", 443, false),
            ("foo.com", "barfoo.com", 443, true),
            (".foo.com", "foo.com", 443, true),
            (".foo.com", "www.foo.com", 443, false),
            ("*.foo.com", "foo.com", 443, true),
            ("*.foo.com", "a.b.foo.com", 443, false),
            ("FOO.com", "foo.COM", 443, false),
            // ports
            ("foo.com:8443", "foo.com", 8443, false),
            ("foo.com:8443", "foo.com", 443, true),
            ("10.0.0.1:8443", "10.0.0.1", 8443, false),
            ("10.0.0.1:8443", "10.0.0.1", 443, true),
            ("[2001:db8::1]:443", "[2001:db8::1]", 443, false),
            // addresses and blocks
            ("10.0.0.1", "10.0.0.1", 443, false),
            ("10.0.0.0/8", "10.20.30.40", 443, false),
            ("10.0.0.0/8", "11.0.0.1", 443, true),
            ("2001:db8::/32", "[2001:db8::5]", 443, false),
            // several, spaces, empty entries, *
            (" bar.com , , foo.com ", "foo.com", 443, false),
            ("bar.com", "foo.com", 443, true),
            ("*", "anything.example", 443, false),
            // a malformed entry is skipped, the rest still count
            (":80,foo.com", "foo.com", 443, false),
            // IPv4-mapped IPv6 is the IPv4 address
            ("10.0.0.0/8", "[::ffff:10.1.2.3]", 443, false),
            ("", "[::ffff:127.0.0.1]", 443, false),
            // a name never matches an address; a trailing dot is kept
            ("2.3.4", "1.2.3.4", 443, true),
            ("oz.example.com", "oz.example.com.", 443, true),
        ];
        for (no_proxy, host, port, proxied) in cases {
            let p = OutboundProxy::from_env(
                &env(&[
                    ("HTTPS_PROXY", "http://proxy.corp:3128"),
                    ("NO_PROXY", no_proxy),
                ]),
                true,
            )
            .unwrap();
            assert_eq!(
                p.for_target(true, host, *port).is_some(),
                *proxied,
                "NO_PROXY={no_proxy:?} target {host}:{port}"
            );
        }
    }

    #[test]
    fn the_scheme_picks_the_variable() {
        let p = OutboundProxy::from_env(
            &env(&[
                ("HTTPS_PROXY", "http://secure-proxy:1"),
                ("http_proxy", "plain-proxy:2"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(
            p.for_target(true, "oz.example", 443).unwrap().host,
            "secure-proxy"
        );
        let plain = p.for_target(false, "oz.example", 80).unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.source),
            ("plain-proxy", 2, "http_proxy")
        );
        // Only HTTP_PROXY set: wss:// goes direct, as in Go.
        let p = OutboundProxy::from_env(&env(&[("HTTP_PROXY", "http://p:1")]), true).unwrap();
        assert!(p.for_target(true, "oz.example", 443).is_none());
        // Upper case wins; an empty upper-case value falls back to lower case.
        let p = OutboundProxy::from_env(
            &env(&[
                ("HTTPS_PROXY", "http://upper:1"),
                ("https_proxy", "http://lower:1"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(p.for_target(true, "oz.example", 443).unwrap().host, "upper");
        let p = OutboundProxy::from_env(
            &env(&[("HTTPS_PROXY", ""), ("https_proxy", "http://lower:1")]),
            true,
        )
        .unwrap();
        assert_eq!(p.for_target(true, "oz.example", 443).unwrap().host, "lower");
        // CGI: HTTP_PROXY may come from a request header; Go ignores it.
        let p = OutboundProxy::from_env(
            &env(&[("HTTP_PROXY", "http://p:1"), ("REQUEST_METHOD", "GET")]),
            false,
        )
        .unwrap();
        assert!(p.for_target(false, "oz.example", 80).is_none());
        assert!(
            p.warnings()[0].contains("REQUEST_METHOD"),
            "{:?}",
            p.warnings()
        );
    }

    #[test]
    fn proxy_values_parse_as_go_parses_them() {
        let one = |v: &'static str| {
            OutboundProxy::from_env(&env(&[("HTTPS_PROXY", v)]), true)
                .map(|p| p.for_target(true, "oz.example", 443).cloned().unwrap())
        };
        let p = one("proxy.corp:3128").unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (ProxyScheme::Http, "proxy.corp", 3128)
        );
        let p = one("10.1.2.3:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.1.2.3", 3128));
        let p = one("https://proxy.corp").unwrap();
        assert_eq!((p.scheme, p.port), (ProxyScheme::Https, 443));
        let p = one("http://proxy.corp").unwrap();
        assert_eq!(p.port, 80);
        let p = one("socks5h://[2001:db8::1]").unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (ProxyScheme::Socks5, "2001:db8::1", 1080)
        );
        assert_eq!(p.address(), "socks5://[2001:db8::1]:1080");
        let p = one("http://us%40er:p%3Ass@proxy.corp:3128").unwrap();
        assert_eq!(p.user.as_deref(), Some("us@er"));
        assert_eq!(p.password.as_ref().unwrap().expose_str(), "p:ss");

        let err = one("ftp://proxy.corp:21").unwrap_err().to_string();
        assert!(err.starts_with("HTTPS_PROXY: the scheme ftp://"), "{err}");
        assert!(err.contains("http://proxy.example:3128"), "{err}");
        let err = one("http://proxy corp:3128").unwrap_err().to_string();
        assert!(err.contains("HTTPS_PROXY: not a URL"), "{err}");
    }

    #[test]
    fn only_the_variable_the_url_uses_must_be_usable() {
        let vars = [
            ("HTTP_PROXY", "socks4://127.0.0.1:9"),
            ("HTTPS_PROXY", "http://proxy.corp:3128"),
        ];
        // wss:// uses HTTPS_PROXY: the bad HTTP_PROXY is a warning.
        let p = OutboundProxy::from_env(&env(&vars), true).unwrap();
        assert!(p.for_target(true, "oz.example", 443).is_some());
        assert_eq!(p.warnings().len(), 1);
        assert!(
            p.warnings()[0].starts_with("HTTP_PROXY: the scheme socks4://"),
            "{:?}",
            p.warnings()
        );
        assert!(
            p.warnings()[0]
                .contains("ignored: the orchestrator URL is wss://, which reads HTTPS_PROXY"),
            "{:?}",
            p.warnings()
        );
        // ws:// uses HTTP_PROXY: the same value is an error.
        let err = OutboundProxy::from_env(&env(&vars), false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("HTTP_PROXY: the scheme socks4://"), "{err}");
    }

    #[test]
    fn an_unencoded_password_is_refused_not_misread() {
        for v in [
            "http://alice:1234/SECRETPW@127.0.0.1:9",
            "http://alice:a?b@proxy.corp:3128",
            "http://alice:a#b@proxy.corp:3128",
        ] {
            let err = OutboundProxy::from_env(&env(&[("HTTPS_PROXY", v)]), true)
                .unwrap_err()
                .to_string();
            assert!(err.contains("percent-encode"), "{v}: {err}");
            assert!(!err.contains("SECRETPW") && !err.contains("a?b"), "{err}");
        }
        let err = OutboundProxy::from_env(&env(&[("HTTPS_PROXY", "http://u:%ff%fe@p:1")]), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn the_password_is_never_shown() {
        let p = OutboundProxy::from_env(
            &env(&[("HTTPS_PROXY", "http://alice:hunter2-secret@proxy.corp:3128")]),
            true,
        )
        .unwrap();
        let shown = format!(
            "{p:?} {} {:?}",
            p.describe().unwrap(),
            p.for_target(true, "x.example", 443)
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("http://proxy.corp:3128 (user alice) from HTTPS_PROXY"),
            "{shown}"
        );
        // A user without a password may be a token: not shown either.
        let p = OutboundProxy::from_env(
            &env(&[("HTTPS_PROXY", "http://tok-123456@proxy.corp:3128")]),
            true,
        )
        .unwrap();
        let shown = p.describe().unwrap();
        assert!(!shown.contains("tok-123456"), "{shown}");
        assert!(shown.contains("(with credentials)"), "{shown}");
        // A bad value's error does not repeat it (it may hold the password).
        let err = OutboundProxy::from_env(&env(&[("HTTPS_PROXY", "gopher://a:hunter2@p:1")]), true)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
