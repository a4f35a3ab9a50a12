//! The trait a plugin implements.

use crate::types::{
    BatchResult, Column, ConnectVerdict, Hooks, PluginInfo, Query, SchemaInterest, Session, Verdict,
};

/// A policy plugin: implement this, then call [`export_plugin!`](crate::export_plugin).
///
/// The gateway creates the plugin with [`Plugin::init`] and then calls only the hooks named in
/// [`Plugin::HOOKS`]. Every hook has a default that lets everything through, so a plugin
/// implements just the ones it needs. Hooks get no clock, files or network: a decision depends
/// only on its arguments, the config and what the plugin remembers in `self`.
///
/// The gateway may run several instances of a plugin (one per concurrent call) and may discard
/// an instance at any time, so `self` is a cache, not shared state across sessions.
///
/// Every hook gets the [`Session`] it runs for. On the wire the gateway sends a session once
/// per instance (the contract's `open-session`) and then only its id; the SDK keeps the
/// session until the gateway says it ended (`close-session`), so this costs a plugin nothing.
pub trait Plugin: Sized + 'static {
    /// The plugin's name, shown in gateway logs, audit events and errors.
    const NAME: &'static str;
    /// The plugin's version; `env!("CARGO_PKG_VERSION")` is the usual choice.
    const VERSION: &'static str;
    /// The hooks the gateway calls; a hook not listed here is never called.
    const HOOKS: Hooks;

    /// Creates the plugin from its configuration: the text of `NAME.toml` next to `NAME.wasm`,
    /// `""` when there is none. An error refuses the load and is shown to the operator; parse
    /// with [`config`](crate::config()).
    fn init(config: &str) -> Result<Self, String>;

    /// The session ended: forget what `self` keeps about it. Called once for every session
    /// this instance was given a hook call for; not a hook in [`Plugin::HOOKS`]. The default
    /// does nothing.
    fn on_session_end(&mut self, session: &Session) {
        let _ = session;
    }

    /// A client authenticated; return a deny to refuse the session.
    fn on_connect(&mut self, session: &Session) -> ConnectVerdict {
        let _ = session;
        ConnectVerdict::Allow
    }

    /// A statement text is about to run: allow, deny, rewrite it or require approval.
    fn on_query(&mut self, session: &Session, query: &Query) -> Verdict {
        let _ = (session, query);
        Verdict::Allow
    }

    /// A result is about to stream: name the columns `on_batch` should see or may replace.
    /// The default asks for nothing, so the rows are relayed untouched.
    fn on_result_schema(&mut self, session: &Session, columns: &[Column]) -> SchemaInterest {
        let _ = (session, columns);
        SchemaInterest::none()
    }

    /// A batch of rows: `batch` is an Arrow IPC stream holding the columns asked for in
    /// `on_result_schema`. Return replacement columns as an Arrow IPC stream, or abort.
    fn on_batch(&mut self, session: &Session, batch: &[u8]) -> BatchResult {
        let _ = (session, batch);
        BatchResult::Unchanged
    }

    /// What the gateway is told at load; derived from the constants above.
    fn info() -> PluginInfo {
        PluginInfo {
            name: Self::NAME.to_owned(),
            version: Self::VERSION.to_owned(),
            hooks: Self::HOOKS,
        }
    }
}
