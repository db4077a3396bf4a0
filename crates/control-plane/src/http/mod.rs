//! The control plane's HTTP side: what every endpoint shares
//! (`endpoint_support`: bodies, JSON and error responses, authentication,
//! shared state), the runs API's resources (`api`), the worker endpoint
//! (`ws`), the management UI (`ui`, with its sign-ins in `sessions` and
//! their per-address failure limit in `login_limit`), the connection budget
//! (`connections`), live-output followers per team (`followers`), the
//! OpenAPI description (`openapi`), TLS files (`tls`) and `server`, which
//! only accepts connections and routes requests. Above `dispatch` and
//! `store`; nothing below names it.

pub(crate) mod api;
pub mod connections;
pub(crate) mod endpoint_support;
pub mod followers;
pub mod login_limit;
pub mod openapi;
pub(crate) mod paging;
pub(crate) mod server;
pub mod sessions;
pub mod tls;
pub(crate) mod ui;
pub(crate) mod ws;
