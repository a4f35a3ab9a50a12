//! pgward: an identity-aware PostgreSQL gateway.
//!
//! # Layout
//! - [`config`]: the TOML configuration, parsed strictly, with errors naming file and key.
//! - [`server`]: the listener, connection limit and worker threads; binds a gateway from its
//!   config.
//! - [`shared`]: what every session shares (config, identities, plugin host, catalog,
//!   approvals, audit trail), built once by the server.
//! - [`shutdown`]: graceful shutdown as sessions see it: begun (end once idle), then expired.
//! - [`session`]: one client: TLS, startup, SCRAM authentication, upstream login.
//! - [`relay`]: the message pump of an established session (bytes in, bytes out): the pumps
//!   own the sockets, and `client_side` and `server_side` are each direction's protocol logic
//!   as processors that do no I/O (bytes in, what to forward, hold, inject or answer out).
//!   Its `replies` is the queue of answers the server owes, in order, with one operation per
//!   protocol event; `stand_in` sends refused statements upstream as stand-ins whose errors
//!   become the refusals; `commit_guard` keeps what the server commits in line with what a
//!   refused result told the client; `scripted` tests the whole relay byte by byte.
//! - [`upstream`]: connecting and logging in to PostgreSQL with the gateway's credentials.
//! - [`protocol`]: wire-protocol framing and the few messages the gateway builds or reads.
//! - [`auth`]: identities and SCRAM-SHA-256 (server and client side).
//! - [`cancel`]: the gateway's cancel keys, mapped to upstream backends.
//! - [`sql`]: statement analysis with sqlparser, cached by normalized text (the `pgward-sql`
//!   crate, shared with the plugin SDK's test harness).
//! - [`plugins`]: WebAssembly policy plugins: loading, chain, hot reload, sandboxed calls, and
//!   the cache of verdicts plugins marked cacheable.
//! - [`results`]: result rows through plugins as Arrow batches, with lineage from the catalog;
//!   its `codec` converts PostgreSQL values to Arrow and back.
//! - [`approvals`]: statements held for approval: requests, their store, notifications.
//! - [`audit`]: the hash-chained audit trail, its writer thread and verifier, and the statement
//!   records that wait for the server's answer.
//! - [`admin`]: the admin HTTP server: approvals API, `/healthz`, `/readyz`.
//! - [`cli`]: the command line's admin API client (`pgward approvals ...`).
//! - [`metrics`]: the Prometheus metrics the admin server exports.
//! - [`tls`]: rustls configurations for both sides.
//! - [`error`]: what a client is told when the gateway refuses something.
//! - [`sqlstate`]: the SQLSTATE codes the gateway and the plugin SDK answer with (the
//!   `pgward-sqlstate` crate).
//! - [`stream`]: plain or TLS connections and their halves.
#![deny(unsafe_code)]

pub(crate) mod admin;
pub mod approvals;
pub mod audit;
pub mod auth;
pub(crate) mod cancel;
pub mod cli;
pub mod config;
pub(crate) mod error;
pub(crate) mod metrics;
pub mod plugins;
pub(crate) mod protocol;
pub(crate) mod relay;
pub(crate) mod results;
pub mod server;
pub(crate) mod session;
pub(crate) mod shared;
pub(crate) mod shutdown;
pub use pgward_sql as sql;
pub use pgward_sqlstate as sqlstate;
pub(crate) mod stream;
pub mod tls;
pub(crate) mod upstream;
