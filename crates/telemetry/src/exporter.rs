//! Which exporter, chosen the OpenTelemetry way as the Go worker chooses it
//! (go.opentelemetry.io/contrib/exporters/autoexport): `OTEL_METRICS_EXPORTER`
//! is `otlp` (also when unset or empty), `prometheus`, or `none`; its
//! settings come from the standard variables. Pure: everything is read
//! through a lookup function, so every case is a table test.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OTEL_METRICS_EXPORTER` | `otlp`, `prometheus`, `none` (exact, as autoexport) | `otlp` |
//! | `OTEL_EXPORTER_PROMETHEUS_HOST` / `_PORT` | where `/metrics` is served | `localhost` / `9464` |
//! | `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` | full URL, used as is | |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; `/v1/metrics` is appended | `http://localhost:4318` |
//! | `OTEL_EXPORTER_OTLP[_METRICS]_PROTOCOL` | `http/protobuf` only | `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP[_METRICS]_HEADERS` | `k=v,k2=v2` (values percent-decoded, secret) | |
//! | `OTEL_EXPORTER_OTLP[_METRICS]_TIMEOUT` | one push, milliseconds | 10000 |
//! | `OTEL_EXPORTER_OTLP[_METRICS]_CERTIFICATE` | CA file for https | system web roots |
//! | `OTEL_EXPORTER_OTLP[_METRICS]_CLIENT_CERTIFICATE` / `_CLIENT_KEY` | client TLS | |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | between pushes, milliseconds | 60000 |
//! | `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME` | extra resource attributes | |
//!
//! The metrics-specific variable wins over the general one. `--metrics-listen
//! ADDR` is a shorthand for `prometheus` on ADDR and wins over the variables.
//!
//! Deliberate differences: `grpc` and `console` are not built in (they are
//! refused with an error naming the alternative, and metrics stay off, as the
//! Go worker does when its exporter cannot start); `gzip` compression and a
//! `delta` temporality preference are warned about and not applied.

use oz_foundation::secret::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// The exporter to run.
#[derive(Debug, Clone, PartialEq)]
pub enum ExporterChoice {
    /// `OTEL_METRICS_EXPORTER=none`.
    None,
    /// Serve `/metrics` on `address` (`host:port`, resolved when bound).
    Prometheus {
        address: String,
        from_flag: bool,
    },
    Otlp(OtlpSettings),
    /// The settings cannot work; metrics stay off and `reason` is logged as
    /// an error (the Go worker logs and continues without metrics).
    Refused {
        reason: String,
    },
}

/// OTLP over HTTP with protobuf bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// `http(s)://host[:port]/path`.
    pub endpoint: String,
    /// Extra request headers; values may be tokens.
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub interval: Duration,
    pub ca_certificate: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The choice, warnings to log, and resource attributes from the
/// environment (added to the worker's own, which win on a conflict).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub exporter: ExporterChoice,
    pub warnings: Vec<String>,
    pub resource: Vec<(String, String)>,
}

const DEFAULT_OTLP_BASE: &str = "http://localhost:4318";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Chooses from `metrics_listen` (the flag, if given) and the variables
/// seen through `env` (see the module documentation).
pub fn choose(metrics_listen: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Choice {
    let mut warnings = Vec::new();
    let resource = resource_from_env(env, &mut warnings);
    let selected = env("OTEL_METRICS_EXPORTER").unwrap_or_default();
    let exporter = match metrics_listen.filter(|a| !a.trim().is_empty()) {
        Some(address) => {
            if !selected.is_empty() && selected != "prometheus" {
                warnings.push(format!(
                    "--metrics-listen {address} serves Prometheus metrics; \
                     OTEL_METRICS_EXPORTER={selected} is ignored"
                ));
            }
            ExporterChoice::Prometheus {
                address: address.to_owned(),
                from_flag: true,
            }
        }
        None => match selected.as_str() {
            "none" => ExporterChoice::None,
            "" | "otlp" => otlp(env, &mut warnings),
            "prometheus" => {
                // As autoexport: a variable that is set but empty is used
                // as is (an empty host listens on every interface).
                let host = env("OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_or_else(|| "localhost".into());
                let port = env("OTEL_EXPORTER_PROMETHEUS_PORT").unwrap_or_else(|| "9464".into());
                ExporterChoice::Prometheus {
                    address: format!("{host}:{port}"),
                    from_flag: false,
                }
            }
            "console" => ExporterChoice::Refused {
                reason: "OTEL_METRICS_EXPORTER=console is not built into this worker; use \
                         prometheus, otlp or none"
                    .into(),
            },
            other => ExporterChoice::Refused {
                reason: format!(
                    "OTEL_METRICS_EXPORTER={other:?} is not an exporter; use prometheus, otlp or none"
                ),
            },
        },
    };
    Choice {
        exporter,
        warnings,
        resource,
    }
}

/// The metrics-specific variable if set, else the general one.
fn otlp_var(env: &dyn Fn(&str) -> Option<String>, suffix: &str) -> Option<(String, String)> {
    let specific = format!("OTEL_EXPORTER_OTLP_METRICS_{suffix}");
    let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
    env(&specific)
        .filter(|v| !v.is_empty())
        .map(|v| (specific, v))
        .or_else(|| {
            env(&general)
                .filter(|v| !v.is_empty())
                .map(|v| (general, v))
        })
}

fn otlp(env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> ExporterChoice {
    if let Some((name, protocol)) = otlp_var(env, "PROTOCOL") {
        match protocol.as_str() {
            "http/protobuf" => {}
            "grpc" => {
                return ExporterChoice::Refused {
                    reason: format!(
                        "{name}=grpc is not built into this worker; set {name}=http/protobuf and \
                         point the endpoint at the collector's OTLP/HTTP port (4318)"
                    ),
                }
            }
            other => {
                return ExporterChoice::Refused {
                    reason: format!("{name}={other:?} is not an OTLP protocol; use http/protobuf"),
                }
            }
        }
    }
    let endpoint = match env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").filter(|v| !v.is_empty()) {
        Some(url) => match check_url(&url) {
            Ok(()) => url,
            Err(why) => {
                return ExporterChoice::Refused {
                    reason: format!("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT {url:?} {why}"),
                }
            }
        },
        None => {
            let base = env("OTEL_EXPORTER_OTLP_ENDPOINT")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_OTLP_BASE.into());
            if let Err(why) = check_url(&base) {
                return ExporterChoice::Refused {
                    reason: format!("OTEL_EXPORTER_OTLP_ENDPOINT {base:?} {why}"),
                };
            }
            format!("{}/v1/metrics", base.trim_end_matches('/'))
        }
    };
    let headers = match otlp_var(env, "HEADERS") {
        Some((name, raw)) => parse_headers(&name, &raw, warnings),
        None => Vec::new(),
    };
    let timeout = otlp_var(env, "TIMEOUT")
        .map(|(name, v)| millis(&name, &v, DEFAULT_TIMEOUT, warnings))
        .unwrap_or(DEFAULT_TIMEOUT);
    let interval = env("OTEL_METRIC_EXPORT_INTERVAL")
        .filter(|v| !v.is_empty())
        .map(|v| {
            millis(
                "OTEL_METRIC_EXPORT_INTERVAL",
                &v,
                DEFAULT_INTERVAL,
                warnings,
            )
        })
        .unwrap_or(DEFAULT_INTERVAL);
    if let Some((name, compression)) = otlp_var(env, "COMPRESSION") {
        if compression != "none" {
            warnings.push(format!(
                "{name}={compression} is not applied: metrics are sent uncompressed"
            ));
        }
    }
    if let Some(pref) = env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
        .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("cumulative"))
    {
        warnings.push(format!(
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE={pref} is not applied: sums are cumulative"
        ));
    }
    let path = |suffix: &str| otlp_var(env, suffix).map(|(_, v)| PathBuf::from(v));
    ExporterChoice::Otlp(OtlpSettings {
        endpoint,
        headers,
        timeout,
        interval,
        ca_certificate: path("CERTIFICATE"),
        client_certificate: path("CLIENT_CERTIFICATE"),
        client_key: path("CLIENT_KEY"),
    })
}

fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "is not a URL; use e.g. http://collector:4318")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(())
}

/// A positive number of milliseconds, else the default with a warning.
fn millis(name: &str, value: &str, default: Duration, warnings: &mut Vec<String>) -> Duration {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => {
            warnings.push(format!(
                "{name}={value:?} is not a positive number of milliseconds; using {}",
                default.as_millis()
            ));
            default
        }
    }
}

/// `k=v,k2=v2` (W3C baggage form), values percent-decoded. Bad entries
/// are skipped with a warning that names the key, never the value.
fn parse_headers(name: &str, raw: &str, warnings: &mut Vec<String>) -> Vec<(String, Secret)> {
    let mut out = Vec::new();
    for (i, item) in raw.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            warnings.push(format!(
                "{name}: entry #{} has no '=' and is skipped",
                i + 1
            ));
            continue;
        };
        let key = key.trim();
        let valid_key = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let decoded = percent_encoding::percent_decode_str(value.trim()).decode_utf8();
        match (valid_key, decoded) {
            (true, Ok(v)) if http::HeaderValue::from_str(&v).is_ok() => {
                out.push((key.to_owned(), Secret::new(v.into_owned())))
            }
            (false, _) => warnings.push(format!(
                "{name}: entry #{} has an invalid header name and is skipped",
                i + 1
            )),
            _ => warnings.push(format!(
                "{name}: the value of header {key:?} is not a valid header value and is skipped"
            )),
        }
    }
    out
}

/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,…`, percent-decoded) then
/// `OTEL_SERVICE_NAME` as `service.name`, as the OpenTelemetry SDKs read them.
pub fn resource_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| match attrs.iter_mut().find(|(key, _)| *key == k) {
        Some(existing) => existing.1 = v,
        None => attrs.push((k, v)),
    };
    if let Some(raw) = env("OTEL_RESOURCE_ATTRIBUTES").filter(|v| !v.is_empty()) {
        for (i, item) in raw.split(',').enumerate() {
            let decoded = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(k, _)| !k.is_empty())
                .and_then(|(k, v)| {
                    let k = percent_encoding::percent_decode_str(k).decode_utf8().ok()?;
                    let v = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
                    Some((k.into_owned(), v.into_owned()))
                });
            match decoded {
                Some((k, v)) => set(k, v),
                None if item.trim().is_empty() => {}
                None => warnings.push(format!(
                    "OTEL_RESOURCE_ATTRIBUTES: entry #{} is not key=value and is skipped",
                    i + 1
                )),
            }
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|v| !v.is_empty()) {
        set("service.name".into(), name);
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn choose_with(flag: Option<&str>, vars: &[(&str, &str)]) -> Choice {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        choose(flag, &|k| env.get(k).cloned())
    }

    fn otlp_of(choice: &Choice) -> &OtlpSettings {
        match &choice.exporter {
            ExporterChoice::Otlp(s) => s,
            other => panic!("expected otlp, got {other:?}"),
        }
    }

    /// Source: autoexport's `NewMetricReader` (metrics.go, signal.go): the
    /// exact value selects, unset or empty is `otlp`, an unknown value is an
    /// error the Go worker logs before going on without metrics.
    #[test]
    fn the_exporter_is_chosen_like_autoexport() {
        let prom = |address: &str, from_flag| ExporterChoice::Prometheus {
            address: address.into(),
            from_flag,
        };
        type Case<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>, ExporterChoice);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (None, vec![("OTEL_METRICS_EXPORTER", "none")], ExporterChoice::None),
            (None, vec![("OTEL_METRICS_EXPORTER", "prometheus")], prom("localhost:9464", false)),
            (None, vec![("OTEL_METRICS_EXPORTER", "prometheus"), ("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0"),
                        ("OTEL_EXPORTER_PROMETHEUS_PORT", "9100")], prom("0.0.0.0:9100", false)),
            // Set but empty is used as is, as Go's os.LookupEnv.
            (None, vec![("OTEL_METRICS_EXPORTER", "prometheus"), ("OTEL_EXPORTER_PROMETHEUS_HOST", "")], prom(":9464", false)),
            (Some("127.0.0.1:9090"), vec![], prom("127.0.0.1:9090", true)),
            (Some("127.0.0.1:9090"), vec![("OTEL_METRICS_EXPORTER", "none")], prom("127.0.0.1:9090", true)),
        ];
        for (flag, vars, want) in cases {
            assert_eq!(choose_with(flag, &vars).exporter, want, "{flag:?} {vars:?}");
        }
        for value in ["", "otlp"] {
            let c = choose_with(None, &[("OTEL_METRICS_EXPORTER", value)]);
            assert_eq!(
                otlp_of(&c).endpoint,
                "http://localhost:4318/v1/metrics",
                "{value:?}"
            );
        }
        assert_eq!(
            otlp_of(&choose_with(None, &[])).interval,
            Duration::from_secs(60)
        );
        for (value, needle) in [
            ("console", "console is not built"),
            ("Prometheus", "\"Prometheus\" is not an exporter"),
            ("otlp,prometheus", "is not an exporter"),
        ] {
            match choose_with(None, &[("OTEL_METRICS_EXPORTER", value)]).exporter {
                ExporterChoice::Refused { reason } => assert!(reason.contains(needle), "{reason}"),
                other => panic!("{value}: {other:?}"),
            }
        }
        let c = choose_with(Some("127.0.0.1:1"), &[("OTEL_METRICS_EXPORTER", "otlp")]);
        assert!(
            c.warnings[0].contains("OTEL_METRICS_EXPORTER=otlp is ignored"),
            "{:?}",
            c.warnings
        );
    }

    /// Source: the OpenTelemetry specification's OTLP exporter variables
    /// (signal-specific endpoint used as is; the base gets `/v1/metrics`)
    /// and Go's otlpmetrichttp, which reads them.
    #[test]
    fn otlp_settings_from_the_standard_variables() {
        #[rustfmt::skip]
        let endpoints: &[(&[(&str, &str)], &str)] = &[
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")], "http://collector:4318/v1/metrics"),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example/otlp/")], "https://c.example/otlp/v1/metrics"),
            (&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:9000/custom"),
               ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318")], "http://c:9000/custom"),
            (&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "")], "http://localhost:4318/v1/metrics"),
        ];
        for (vars, want) in endpoints {
            assert_eq!(
                otlp_of(&choose_with(None, vars)).endpoint,
                *want,
                "{vars:?}"
            );
        }
        let c = choose_with(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=general"),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                    "Authorization=Bearer%20t0ken, x-team = a%2Cb ,bad, =x",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
                ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/etc/ca.pem"),
            ],
        );
        let s = otlp_of(&c);
        let headers: Vec<(&str, &str)> = s
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_str()))
            .collect();
        assert_eq!(
            headers,
            vec![("Authorization", "Bearer t0ken"), ("x-team", "a,b")]
        );
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.ca_certificate, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            !format!("{c:?}").contains("t0ken"),
            "header values are secret"
        );
        assert!(c.warnings.iter().all(|w| !w.contains("t0ken")));
    }

    #[test]
    fn otlp_settings_that_cannot_work_are_refused_naming_the_variable() {
        #[rustfmt::skip]
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not built"),
            (&[("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")], "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=\"http/json\""),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")], "must start with http:// or https://"),
            (&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "not a url")], "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT \"not a url\" is not a URL"),
        ];
        for (vars, needle) in cases {
            match choose_with(None, vars).exporter {
                ExporterChoice::Refused { reason } => assert!(reason.contains(needle), "{reason}"),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
        let c = choose_with(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
            ],
        );
        otlp_of(&c);
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    }

    /// Source: the OpenTelemetry specification (resource SDK variables) and
    /// Go's `resource.WithFromEnv`.
    #[test]
    fn resource_attributes_from_the_environment() {
        let c = choose_with(
            None,
            &[
                ("OTEL_METRICS_EXPORTER", "none"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,team=a%20b,broken,region=eu",
                ),
                ("OTEL_SERVICE_NAME", "custom"),
            ],
        );
        assert_eq!(
            c.resource,
            vec![
                ("deployment.environment".to_string(), "prod".to_string()),
                ("team".into(), "a b".into()),
                ("region".into(), "eu".into()),
                ("service.name".into(), "custom".into()),
            ]
        );
        assert_eq!(c.warnings.len(), 1);
    }

    proptest! {
        #[test]
        fn any_environment_yields_a_choice(values in proptest::collection::vec(".{0,30}", 6)) {
            let names = [
                "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_PROMETHEUS_PORT",
            ];
            let env: HashMap<&str, String> = names.iter().copied().zip(values).collect();
            let _ = choose(None, &|k| env.get(k).cloned());
        }
    }
}
