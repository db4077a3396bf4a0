//! The runs API as its callers see it: the request and response bodies and
//! the run state machine ([`model`]; the control plane serves them, and the
//! OpenAPI description in `api-specs/` is generated from them), and the
//! HTTP client the CLI, the tests and the benches call it with ([`client`]).

pub mod client;
pub mod model;
