//! Everything that knows about sockets, TLS and daemon discovery: endpoint
//! resolution (as the Docker CLI does it), the context store, the one
//! connector for every scheme, TLS configuration and API version negotiation.
//! The Docker layer above sees only HTTP.

pub mod connector;
pub mod context_store;
pub mod endpoint;
pub mod negotiate;
pub mod tls;

pub use connector::{Connector, Timeouts};
pub use endpoint::{
    resolve_endpoint, ContextSelector, Endpoint, EndpointSource, EnvSnapshot, Host, TlsSettings,
};
pub use negotiate::{ApiVersion, Engine, EngineKind, Platform};
