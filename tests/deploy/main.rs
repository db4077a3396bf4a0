//! What ships beside the binary, used as an operator would: the container
//! image, the systemd unit, the Kubernetes manifests, dashboards and
//! alerts, metrics export and the `probe` command. One test binary.

mod container_image;
mod dashboards;
mod kubernetes_manifests;
mod metrics_export;
mod probe_cli;
mod systemd_unit;
