//! The control plane's HTTP side: what every endpoint shares
//! (`endpoint_support`: bodies, JSON and error responses, authentication,
//! shared state), the runs API's resources (`api`), the worker endpoint
//! (`ws`), the management UI (`ui`, with its sign-ins in `sessions`), the
//! OpenAPI description (`openapi`), TLS files (`tls`) and `server`, which
//! only accepts connections and routes requests. Above `dispatch` and
//! `store`; nothing below names it.

pub mod api;
pub mod endpoint_support;
pub mod openapi;
pub mod paging;
pub mod server;
pub mod sessions;
pub mod tls;
pub mod ui;
pub mod ws;
