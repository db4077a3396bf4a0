//! Everything that knows about sockets, TLS and daemon discovery: endpoint
//! resolution (as the Docker CLI does it), the context store, the one
//! connector for every scheme, TLS configuration, the HTTP client with its
//! deadlines and failure diagnosis, API version negotiation, and the error
//! type of every Engine API call.
//!
//! Invariants:
//! - Only this module opens sockets or touches certificates; `crate`
//!   speaks HTTP requests and Docker types through it, and nothing here
//!   names `crate`.
//! - Resolution reads an [`EnvSnapshot`], never the live environment, and
//!   nothing here writes the environment.
//! - Nothing here stores or prints key material or credentials: TLS settings
//!   are paths, endpoints are rendered without userinfo.
//! - One `hyper_util` client type serves every transport: `ssh://` is one
//!   more [`connector::Stream`] variant (an `ssh` child per connection), not
//!   a new client.

pub use oz_foundation::net::connector;
pub mod context_store;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod negotiate;
pub use oz_foundation::net::ssh;
pub mod tls;

pub use connector::{Connector, Timeouts};
pub use endpoint::{
    resolve_endpoint, ContextSelector, Endpoint, EndpointSource, EnvSnapshot, Host, TlsSettings,
};
pub use negotiate::{ApiVersion, Engine, EngineKind, Platform};
