//! The pgward plugin SDK: write a gateway policy in Rust, compile it to a WebAssembly component,
//! drop it into the gateway's plugins directory.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export_plugin!`]. The gateway hands
//! it the verified [`Session`] and every statement already analysed ([`Query`]: statement kinds,
//! relations read and written, functions called, a literal-free fingerprint), and the plugin
//! answers with a [`Verdict`]. Plugins never parse SQL and never see a claim the client made up.
//!
//! # Layout
//! - [`types`]: the values hooks receive and return, one per type of the WIT contract
//!   (`wit/plugin.wit`), with helpers that keep policies short.
//! - [`Plugin`]: the trait; hooks `on_connect`, `on_query`, `on_result_schema`, `on_batch`, each
//!   with an allow-everything default.
//! - [`export_plugin!`]: turns a `Plugin` into the component's exports (only on `wasm32`).
//! - [`config()`]: typed configuration from the plugin's TOML file; [`log()`]: the gateway log.
//! - [`NamePattern`], [`SearchPath`]: relation and function names in a config, and where an
//!   unqualified name in a statement points.
//! - [`testing`] (native only): run a plugin in `cargo test` with the gateway's own SQL analysis.
//! - [`sqlstate`]: SQLSTATE codes to deny with.
//! - `arrow` (cargo feature `arrow`): decode, transform and encode the Arrow batches of
//!   `on_batch`; see [Result batches](#result-batches).
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "deny-drop"
//! version = "0.1.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # cdylib: the .wasm; rlib: native `cargo test`
//!
//! [dependencies]
//! pgward-plugin-sdk = "0.1"
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use pgward_plugin_sdk::prelude::*;
//!
//! /// Refuses DROP TABLE on protected tables, except for the `dba` group.
//! struct DenyDrop {
//!     config: Config,
//! }
//!
//! #[derive(Deserialize, Default)]
//! #[serde(crate = "pgward_plugin_sdk::serde", default, deny_unknown_fields)]
//! struct Config {
//!     /// Tables as `schema.name` or `name`; `*` for all.
//!     protected: Vec<String>,
//! }
//!
//! impl Plugin for DenyDrop {
//!     const NAME: &'static str = "deny-drop";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const HOOKS: Hooks = Hooks::ON_QUERY;
//!
//!     fn init(text: &str) -> Result<Self, String> {
//!         let config: Config = config(text)?;
//!         log(Level::Info, format!("protecting {} tables", config.protected.len()));
//!         Ok(DenyDrop { config })
//!     }
//!
//!     fn on_query(&mut self, session: &Session, query: &Query) -> Verdict {
//!         if session.in_group("dba") {
//!             return Verdict::Allow;
//!         }
//!         let dropped = query.writes().find(|w| {
//!             w.is(WriteAction::Drop, ObjectKind::Table) && w.relation.matches_any(&self.config.protected)
//!         });
//!         match dropped {
//!             Some(w) => Verdict::deny(
//!                 sqlstate::INSUFFICIENT_PRIVILEGE,
//!                 format!("dropping {} is not allowed", w.relation),
//!             )
//!             .with_hint("ask a member of the dba group"),
//!             None => Verdict::Allow,
//!         }
//!     }
//! }
//!
//! export_plugin!(DenyDrop);
//!
//! // Tests run natively, with the same SQL analysis the gateway uses:
//! # fn main() {
//! use pgward_plugin_sdk::testing::TestHarness;
//!
//! let mut h = TestHarness::<DenyDrop>::new(r#"protected = ["public.accounts"]"#).unwrap();
//! let alice = h.session("alice", &["dev"]);
//! let dba = h.session("dana", &["dba"]);
//! let v = h.query(&alice, "DROP TABLE accounts");
//! assert_eq!(v.sqlstate(), Some("42501"));
//! assert!(h.query(&alice, "DROP TABLE scratch").is_allow());
//! assert!(h.query(&dba, "DROP TABLE public.accounts").is_allow());
//! assert!(h.logged("protecting 1 tables"));
//! # }
//! ```
//!
//! # Build and deploy
//!
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2
//! cp target/wasm32-wasip2/release/deny_drop.wasm /etc/pgward/plugins/
//! cp deny-drop.toml /etc/pgward/plugins/deny_drop.toml   # optional: NAME.toml next to NAME.wasm
//! ```
//!
//! For a small component (≈ 290 KB instead of several MB, and faster for the gateway to compile),
//! build with this profile in your workspace's `Cargo.toml` (in the pgward repository it is
//! `--profile plugin`, and `scripts/build-plugins.sh` builds every plugin). `opt-level = "s"`
//! saves only 2–8 % of the size and makes every call slower (on-query ≈ 20 %, on-batch ≈ 28 %):
//!
//! ```toml
//! [profile.release]
//! opt-level = 3
//! lto = true
//! codegen-units = 1
//! strip = true
//! ```
//!
//! The gateway loads the component, calls `info` then `init` with the TOML text (an empty string
//! when there is no `.toml`), and picks up a changed `.wasm` without a restart. A plugin runs
//! sandboxed: no files, network, clock or environment, a memory cap and a deadline per call. A
//! plugin that panics, loops or runs out of memory fails closed: the statement is denied.
//!
//! # Result batches
//!
//! A plugin that masks or checks result values implements two hooks,
//! `Hooks::ON_RESULT_SCHEMA.union(Hooks::ON_BATCH)`:
//!
//! 1. `on_result_schema` sees each result's columns ([`Column`]: name, PostgreSQL type oid and
//!    [`ColumnLineage`], so an alias cannot hide `users.email`) and returns a
//!    [`SchemaInterest`]: `read` lists the indexes ([`Column::index`]) of the columns `on_batch`
//!    should receive, `modify` those it may replace (list a column to replace in both). An empty
//!    interest, the default, keeps the result on the gateway's fast path: rows are relayed as
//!    bytes and `on_batch` is never called for it.
//! 2. `on_batch` receives those columns, for a bounded number of rows at a time, as an Arrow IPC
//!    stream holding one record batch (fields in result order, named as the client sees them),
//!    and answers [`BatchResult::Unchanged`], [`BatchResult::Replace`] with the same batch,
//!    some columns replaced, as an IPC stream, or [`BatchResult::Abort`] to stop the result with
//!    an error.
//!
//! The two calls of one result may reach different plugin instances, so `on_batch` should find
//! its columns in the batch itself (by field name, or by type), not in state `on_result_schema`
//! left in `self`.
//!
//! With the cargo feature `arrow` (`pgward-plugin-sdk = { version = "0.1", features = ["arrow"] }`)
//! the module `pgward_plugin_sdk::arrow` decodes and encodes batches (`read_batch`,
//! `write_batch`), rewrites string values (`map_strings`, `map_strings_into` without an
//! allocation per value; `map_strings_fixed_ascii` and `map_strings_shrinking` write
//! fixed-width ASCII values such as hashes, or values never longer than the old ones such as
//! masks, in place), swaps a column (`replace_column`), and wraps it all so that any error
//! aborts the result instead of leaking rows (`transform_batch`). It re-exports the Arrow crates
//! it uses (`arrow_array`, `arrow_schema`, `arrow_buffer`), so a plugin needs no Arrow
//! dependency of its own. Arrow makes a component of ≈ 0.95 MB instead of ≈ 280 KB, which is
//! why the feature is off by default. Such a plugin runs on every batch of the results it
//! subscribes to: build it with `opt-level = 3` (above), not a size profile.
//!
//! A plugin that shortens API tokens to their first four characters, and its test:
//!
#![cfg_attr(feature = "arrow", doc = "```")]
#![cfg_attr(not(feature = "arrow"), doc = "```ignore")]
//! use pgward_plugin_sdk::arrow;
//! use pgward_plugin_sdk::prelude::*;
//!
//! struct ShortenTokens;
//!
//! impl Plugin for ShortenTokens {
//!     const NAME: &'static str = "shorten-tokens";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const HOOKS: Hooks = Hooks::ON_RESULT_SCHEMA.union(Hooks::ON_BATCH);
//!
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(ShortenTokens)
//!     }
//!
//!     fn on_result_schema(&mut self, _session: &Session, columns: &[Column]) -> SchemaInterest {
//!         let tokens: Vec<u32> = columns
//!             .iter()
//!             .filter(|c| c.name == "token" || c.derives_from("api_keys.token"))
//!             .map(|c| c.index)
//!             .collect();
//!         SchemaInterest { read: tokens.clone(), modify: tokens }
//!     }
//!
//!     fn on_batch(&mut self, _session: &Session, batch: &[u8]) -> BatchResult {
//!         // Any error (an unexpected column type, say) aborts the result: fail closed.
//!         arrow::transform_batch(batch, |mut batch| {
//!             // The batch holds only the columns asked for: all of them are tokens.
//!             for i in 0..batch.num_columns() {
//!                 // Each new value goes into one reused buffer: no allocation per row.
//!                 let short = arrow::map_strings_into(batch.column(i), |token, out| {
//!                     out.extend(token.chars().take(4));
//!                     out.push('…');
//!                 })?;
//!                 batch = arrow::replace_column(&batch, i, short)?;
//!             }
//!             Ok(Some(batch))
//!         })
//!     }
//! }
//!
//! export_plugin!(ShortenTokens);
//!
//! # fn main() {
//! use pgward_plugin_sdk::arrow::arrow_array::cast::AsArray;
//! use pgward_plugin_sdk::arrow::{Array, DataType, Field, RecordBatch, Schema, StringArray};
//! use pgward_plugin_sdk::testing::TestHarness;
//! use std::sync::Arc;
//!
//! let mut h = TestHarness::<ShortenTokens>::new("").unwrap();
//! let s = h.session("alice", &["dev"]);
//! let columns = [
//!     Column { index: 0, name: "id".into(), type_oid: 23, ..Default::default() },
//!     Column { index: 1, name: "token".into(), type_oid: 25, ..Default::default() },
//! ];
//! let interest = h.result_schema(&s, &columns);
//! assert_eq!((interest.read.as_slice(), interest.modify.as_slice()), (&[1][..], &[1][..]));
//!
//! // What the gateway would send: the `token` column of two rows.
//! let schema = Schema::new(vec![Field::new("token", DataType::Utf8, true)]);
//! let tokens = StringArray::from(vec![Some("sk_live_4f9a1c"), None]);
//! let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(tokens)]).unwrap();
//!
//! let BatchResult::Replace(ipc) = h.batch(&s, &arrow::write_batch(&batch).unwrap()) else {
//!     panic!("expected replaced tokens");
//! };
//! let out = arrow::read_batch(&ipc).unwrap();
//! let out = out.column(0).as_string::<i32>();
//! assert_eq!(out.value(0), "sk_l…");
//! assert!(out.is_null(1));
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

// Lets the generated bindings name this crate by the same path from here and from plugin crates.
extern crate self as pgward_plugin_sdk;

mod config;
mod names;
mod plugin;
pub mod sqlstate;
pub mod types;

#[cfg(feature = "arrow")]
pub mod arrow;

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // wit-bindgen's generated ABI glue.
#[doc(hidden)]
#[path = "guest.rs"]
pub mod __private;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use config::config;
pub use names::{NamePattern, SearchPath};
pub use plugin::Plugin;
pub use serde;
pub use types::*;

/// Everything a plugin usually needs: `use pgward_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::types::*;
    pub use crate::{
        cache_verdict, config, export_plugin, log, sqlstate, NamePattern, Plugin, SearchPath,
    };
    pub use serde::Deserialize;
}

/// Writes a line to the gateway log, tagged with the plugin's name.
///
/// Never log SQL text or values at `Info` and above: the gateway log is not access-controlled
/// like the database. Natively (in tests) the line goes to stderr and to
/// [`testing::TestHarness::logs`].
pub fn log(level: Level, message: impl AsRef<str>) {
    #[cfg(target_arch = "wasm32")]
    __private::log(level, message.as_ref());
    #[cfg(not(target_arch = "wasm32"))]
    testing::capture(level, message.as_ref());
}

/// Tells the gateway that the verdict the running [`Plugin::on_query`] returns may answer
/// later statements without calling the plugin: every statement with the same normalized text
/// ([`Query::fingerprint`]) and protocol, from any session with the same user, groups and
/// database, until the plugin or its config is reloaded (contract 0.5, `cache-verdict` in
/// `wit/plugin.wit`). The gateway caches allow, deny and require-approval verdicts — never a
/// rewrite — and only for statements whose analysis depends on their shape alone.
///
/// Call it only when the verdict depends on nothing else: not on state the plugin keeps per
/// session (prepared statements it tracks, a search_path it follows), not on the raw SQL
/// beyond its shape, and not when this call must run every time because it records
/// something. Calling it elsewhere than in `on_query` does nothing. In
/// [`testing::TestHarness`], [`TestHarness::cacheable`](testing::TestHarness::cacheable)
/// says whether the last `on_query` called it.
pub fn cache_verdict() {
    #[cfg(target_arch = "wasm32")]
    __private::cache_verdict();
    #[cfg(not(target_arch = "wasm32"))]
    testing::mark_cacheable();
}

/// Exports a [`Plugin`] as the component's implementation of the `pgward:plugin` world.
///
/// Call it once, at the root of the plugin crate: `export_plugin!(MyPlugin);`. On `wasm32` it
/// expands to the component exports (`info`, `init` and the hooks), which keep the instance that
/// `init` created and convert between the WIT types and this crate's types. A hook called before
/// a successful `init` answers with a SQLSTATE 58000 "plugin not initialised" deny (an empty
/// interest for `on_result_schema`). On other targets it only checks that the type is a
/// `Plugin`, so the same crate builds natively for `cargo test`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __PgwardExports = $crate::__private::Exports<$plugin>;
            $crate::__private::bindings::__export_plugin_world!(
                __PgwardExports with_types_in $crate::__private::bindings
            );
        };
        const _: fn() = || {
            fn assert_plugin<P: $crate::Plugin>() {}
            assert_plugin::<$plugin>();
        };
    };
}
