//! oz-agent-worker: a self-hosted worker for Oz cloud coding agents.
//! See ARCHITECTURE.md for the map.

pub mod cli;
pub mod control_plane;
pub mod dirs;
pub mod docker;
pub mod duration;
pub mod hardening;
pub mod image_reference;
pub mod operator_env;
pub mod percent;
pub mod protocol;
pub mod resource_limits;
pub mod runtime;
pub mod schemas;
pub mod secret;
pub mod telemetry;
pub mod text;
pub mod tls_roots;
pub mod transport;
pub mod worker;
