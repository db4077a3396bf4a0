//! OTLP/HTTP push: a snapshot as an `ExportMetricsServiceRequest`
//! (protobuf, message types from the `opentelemetry-proto` crate) POSTed to
//! the collector every interval, and once more at shutdown. Cumulative
//! temporality, as the Go worker's SDK default.

use super::exporter::OtlpSettings;
use super::model::{Kind, Point, Snapshot};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The request for one snapshot: one resource, one scope, one metric per
/// family (names, descriptions and units as registered).
pub fn request(snapshot: &Snapshot) -> ExportMetricsServiceRequest {
    let start = unix_nanos(snapshot.start);
    let time = unix_nanos(snapshot.time);
    let metrics = snapshot
        .families
        .iter()
        .map(|(descriptor, series)| {
            let attributes = |values: &[String]| -> Vec<KeyValue> {
                descriptor
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(k, v)| kv(k, v))
                    .collect()
            };
            let numbers = || -> Vec<NumberDataPoint> {
                series
                    .iter()
                    .filter_map(|(values, point)| match point {
                        Point::Int(v) => Some(NumberDataPoint {
                            attributes: attributes(values),
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            value: Some(number_data_point::Value::AsInt(*v)),
                            ..Default::default()
                        }),
                        Point::Histogram(_) => None,
                    })
                    .collect()
            };
            let cumulative = AggregationTemporality::Cumulative as i32;
            let data = match descriptor.kind {
                Kind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: numbers(),
                }),
                Kind::UpDownCounter | Kind::Counter => metric::Data::Sum(Sum {
                    data_points: numbers(),
                    aggregation_temporality: cumulative,
                    is_monotonic: descriptor.kind == Kind::Counter,
                }),
                Kind::Histogram => metric::Data::Histogram(Histogram {
                    data_points: series
                        .iter()
                        .filter_map(|(values, point)| match point {
                            Point::Histogram(h) => Some(HistogramDataPoint {
                                attributes: attributes(values),
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                count: h.count,
                                sum: Some(h.sum),
                                bucket_counts: h.bucket_counts.clone(),
                                explicit_bounds: h.boundaries.to_vec(),
                                min: (h.count > 0).then_some(h.min),
                                max: (h.count > 0).then_some(h.max),
                                ..Default::default()
                            }),
                            Point::Int(_) => None,
                        })
                        .collect(),
                    aggregation_temporality: cumulative,
                }),
            };
            Metric {
                name: descriptor.name.to_owned(),
                description: descriptor.description.to_owned(),
                unit: descriptor.unit.to_owned(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: snapshot
                    .identity
                    .resource
                    .iter()
                    .map(|(k, v)| kv(k, v))
                    .collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: snapshot.identity.scope_name.to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Pushes snapshots to one collector.
pub struct Pusher {
    settings: OtlpSettings,
    uri: http::Uri,
    client: hyper_util::client::legacy::Client<oz_foundation::net::Connector, Full<Bytes>>,
}

impl Pusher {
    /// Builds the HTTP client (TLS for `https`, from the configured CA and
    /// client certificate or the built-in web roots). Fails on unreadable
    /// certificate files, naming them.
    pub fn new(settings: OtlpSettings) -> Result<Pusher, OtlpError> {
        let bad_endpoint = |source| OtlpError::Endpoint {
            endpoint: settings.endpoint.clone(),
            source,
        };
        let uri: http::Uri = settings.endpoint.parse().map_err(bad_endpoint)?;
        let https = uri.scheme_str() == Some("https");
        // The connector needs the port spelled out (its default is Docker's).
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = uri.host().unwrap_or_default();
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: http::Uri = format!(
            "{}://{host}:{port}{path}",
            uri.scheme_str().unwrap_or("http")
        )
        .parse()
        .map_err(bad_endpoint)?;
        let tls = if https {
            Some(tls_config(&settings)?)
        } else {
            None
        };
        let connector = oz_foundation::net::Connector::new(tls, settings.timeout);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Pusher {
            settings,
            uri,
            client,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.settings.endpoint
    }

    /// One POST of `snapshot`; `Err` says why (status and the collector's
    /// words, or the connection error), never a header value.
    pub async fn push(&self, snapshot: &Snapshot) -> Result<(), OtlpError> {
        let body = request(snapshot).encode_to_vec();
        let mut builder = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                http::header::USER_AGENT,
                concat!("oz-agent-worker/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.settings.headers {
            builder = builder.header(name.as_str(), value.expose_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(OtlpError::Request)?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(OtlpError::Connect)?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = oz_foundation::escape::escape_control_bytes(&body[..body.len().min(300)]);
            Err(OtlpError::Refused { status, text })
        };
        match tokio::time::timeout(self.settings.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(OtlpError::Timeout(self.settings.timeout)),
        }
    }
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Why OTLP export cannot start ([`Pusher::new`]) or one push failed
/// ([`Pusher::push`]). Messages name the setting or file and never hold a
/// header value.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` is not a URI.
    #[error("OTLP endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A certificate or key file (`what`: "CA certificate", "client
    /// certificate", "client key") cannot be read or parsed.
    #[error("cannot read the OTLP {what} {}: {}", path.display(), pem_reason(source))]
    ReadFile {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: oz_foundation::tls::PemFileError,
    },
    /// The CA file holds a certificate rustls refuses as a root.
    #[error("the OTLP CA certificate {} is not usable: {source}", path.display())]
    UnusableCa {
        path: std::path::PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The client certificate and key are not a pair.
    #[error("the OTLP client certificate and key do not fit: {0}")]
    ClientAuth(#[source] rustls::Error),
    /// Only one of the client certificate and key is set.
    #[error("OTLP client TLS needs both _CLIENT_CERTIFICATE and _CLIENT_KEY")]
    HalfClientAuth,
    #[error("cannot build the request: {0}")]
    Request(#[source] http::Error),
    /// The connection failed; the message has the whole chain of causes.
    #[error("{}", describe(.0))]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// The collector answered a non-success status (`text`: the start of
    /// its body, control characters escaped).
    #[error("the collector answered {status}: {text}")]
    Refused {
        status: http::StatusCode,
        text: String,
    },
    #[error("no answer within {}s", .0.as_secs_f32())]
    Timeout(std::time::Duration),
}

/// The file's own error, without its path (the message names the file).
fn pem_reason(e: &oz_foundation::tls::PemFileError) -> String {
    match e {
        oz_foundation::tls::PemFileError::Read { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

fn tls_config(settings: &OtlpSettings) -> Result<Arc<rustls::ClientConfig>, OtlpError> {
    let read = |what: &'static str, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| OtlpError::ReadFile { what, path, source }
    };
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_certificate {
        Some(ca) => {
            let certs =
                oz_foundation::tls::read_certificates(ca).map_err(read("CA certificate", ca))?;
            for cert in certs {
                roots.add(cert).map_err(|source| OtlpError::UnusableCa {
                    path: ca.clone(),
                    source,
                })?;
            }
        }
        None => roots = oz_foundation::tls::web_roots(),
    }
    let builder = oz_foundation::tls::builder(roots);
    let mut config = match (&settings.client_certificate, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = oz_foundation::tls::read_certificates(cert)
                .map_err(read("client certificate", cert))?;
            let key = oz_foundation::tls::read_private_key(key).map_err(read("client key", key))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(OtlpError::ClientAuth)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(OtlpError::HalfClientAuth),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Descriptor, Identity, Registry};

    #[test]
    fn snapshots_become_cumulative_otlp_metrics() {
        let mut r = Registry::new(Identity {
            resource: vec![("service.name".into(), "oz-agent-worker".into())],
            scope_name: "scope",
        });
        let c = r.register(Descriptor {
            name: "c_total",
            description: "d",
            unit: "",
            kind: Kind::Counter,
            labels: &["reason"],
        });
        let h = r.register(Descriptor {
            name: "h_seconds",
            description: "d",
            unit: "s",
            kind: Kind::Histogram,
            labels: &[],
        });
        c.add(&["x"], 2);
        h.record(&[], 3.0);
        let req = request(&r.snapshot());
        let rm = &req.resource_metrics[0];
        assert_eq!(
            rm.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let sm = &rm.scope_metrics[0];
        assert_eq!(sm.scope.as_ref().unwrap().name, "scope");
        let Some(metric::Data::Sum(sum)) = &sm.metrics[0].data else {
            panic!("{:?}", sm.metrics[0])
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(2))
        );
        let Some(metric::Data::Histogram(hist)) = &sm.metrics[1].data else {
            panic!()
        };
        assert_eq!(sm.metrics[1].unit, "s");
        assert_eq!(hist.data_points[0].count, 1);
        assert_eq!(
            hist.data_points[0].bucket_counts.len(),
            hist.data_points[0].explicit_bounds.len() + 1
        );
        // The encoding decodes back to the same message.
        let bytes = req.encode_to_vec();
        assert_eq!(
            ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap(),
            req
        );
    }
}
