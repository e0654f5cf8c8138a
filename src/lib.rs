//! Tollgate: a credit-metered API gateway on Pingora.
//!
//! Each module is one stage of the request path of docs/DESIGN.md §Request path (`routing`, `auth`, `ledger`,
//! `usage`), tied together by the one `ProxyHttp` implementation in [`proxy`] and wired into
//! a server by [`server`]; [`app`] is the composition root every subcommand starts from. The
//! `tollgate` binary is the `cli/` crate; the control plane is `admin-api/`.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod deferred;
pub mod demo_upstream;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod hydration;
pub mod idempotency;
pub mod ledger;
pub mod listen;
pub mod metrics;
pub mod ops;
pub mod pricing;
pub mod problem;
pub mod proxy;
pub mod reconcile;
pub mod routing;
pub mod server;
pub mod store;
pub mod tenants;
pub mod usage;
pub mod vocab;
