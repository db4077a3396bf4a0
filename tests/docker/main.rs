//! The Docker runtime through the worker binary: `check`, `cleanup`,
//! operator policy, private registries and sidecars. One test binary; the
//! Engine API client alone is tested in crates/docker-engine/tests/engine/.

mod check;
mod cleanup;
mod policy;
mod registry_credentials;
mod registry_e2e;
mod sidecar_image_mounts;
mod sidecar_volumes;
