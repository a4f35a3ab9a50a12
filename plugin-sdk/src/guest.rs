//! The WebAssembly side of the contract: wit-bindgen glue that [`export_plugin!`] instantiates.
//!
//! Not part of the public API; plugin authors never name anything in here.
//!
//! [`export_plugin!`]: crate::export_plugin

use crate::plugin::Plugin;
use crate::sqlstate;
use crate::types::{
    Approval, ApprovalMode, BatchResult, Column, ColumnLineage, ConnectVerdict, CopyDirection,
    CopyInfo, Deny, Hooks, Identity, Level, ObjectKind, PluginInfo, Proofs, Protocol, Query,
    Relation, SchemaInterest, Session, Statement, StatementKind, Verdict, Write, WriteAction,
};
use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;

pub use wit_bindgen;

/// Bindings for `wit/plugin.wit`, generated here once so plugin crates need no wit-bindgen.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::pgward_plugin_sdk::__private::bindings",
        runtime_path: "::pgward_plugin_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::pgward::plugin::types as wit;

thread_local! {
    /// The plugin instance `init` created; a component instance is single-threaded.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    /// Sessions the gateway introduced (`open-session`) and has not closed, by id.
    static SESSIONS: RefCell<BTreeMap<u64, Session>> = const { RefCell::new(BTreeMap::new()) };
}

/// Why a hook could not reach the plugin; the hooks answer it by failing closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// `init` has not created the plugin.
    Plugin,
    /// The gateway never introduced the session (`open-session`): a contract breach.
    Session,
}

impl Missing {
    fn deny(self) -> wit::Deny {
        wit::Deny {
            sqlstate: sqlstate::SYSTEM_ERROR.to_owned(),
            message: match self {
                Missing::Plugin => "plugin not initialised",
                Missing::Session => "the gateway did not introduce this session to the plugin",
            }
            .to_owned(),
            hint: None,
        }
    }
}

/// Runs `f` on the plugin with the introduced session `id`.
fn with_session<P: Plugin, R>(
    id: u64,
    f: impl FnOnce(&mut P, &Session) -> R,
) -> Result<R, Missing> {
    SESSIONS.with(|cell| {
        let sessions = cell.borrow();
        let session = sessions.get(&id).ok_or(Missing::Session)?;
        with_plugin(|p: &mut P| f(p, session)).ok_or(Missing::Plugin)
    })
}

/// Implements the generated `Guest` trait for any [`Plugin`]; `export_plugin!` exports it.
pub struct Exports<P>(PhantomData<P>);

fn with_plugin<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> Option<R> {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        slot.as_mut()?.downcast_mut::<P>().map(f)
    })
}

impl<P: Plugin> bindings::Guest for Exports<P> {
    fn info() -> wit::PluginInfo {
        P::info().into()
    }

    fn init(config: String) -> Result<(), String> {
        INSTANCE.with(|cell| cell.borrow_mut().take());
        let plugin = P::init(&config)?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    fn open_session(session: wit::Session) {
        let session = Session::from(session);
        SESSIONS.with(|cell| cell.borrow_mut().insert(session.id, session));
    }

    fn close_session(id: u64) {
        let ended = SESSIONS.with(|cell| cell.borrow_mut().remove(&id));
        if let Some(session) = ended {
            with_plugin(|p: &mut P| p.on_session_end(&session));
        }
    }

    fn on_connect(session: u64) -> wit::ConnectVerdict {
        match with_session(session, |p: &mut P, s| p.on_connect(s)) {
            Ok(verdict) => verdict.into(),
            Err(missing) => wit::ConnectVerdict::Deny(missing.deny()),
        }
    }

    fn on_query(session: u64, query: wit::Query) -> wit::Verdict {
        let query = Query::from(query);
        match with_session(session, |p: &mut P, s| p.on_query(s, &query)) {
            Ok(verdict) => verdict.into(),
            Err(missing) => wit::Verdict::Deny(missing.deny()),
        }
    }

    fn on_result_schema(session: u64, columns: Vec<wit::Column>) -> wit::SchemaInterest {
        let columns: Vec<Column> = columns.into_iter().map(Column::from).collect();
        match with_session(session, |p: &mut P, s| p.on_result_schema(s, &columns)) {
            Ok(interest) => interest.into(),
            // Not initialised: an empty interest cannot expose or change a row.
            Err(Missing::Plugin) => SchemaInterest::default().into(),
            // The plugin cannot tell what this session may see; an empty interest would let
            // the rows through unread. Trapping makes the gateway withhold the result.
            Err(Missing::Session) => {
                panic!("the gateway did not introduce session {session} to the plugin")
            }
        }
    }

    fn on_batch(session: u64, batch: Vec<u8>) -> wit::BatchResult {
        #[cfg(feature = "arrow")]
        let result = crate::arrow::from_gateway(batch, |batch| {
            with_session(session, |p: &mut P, s| p.on_batch(s, batch))
        });
        #[cfg(not(feature = "arrow"))]
        let result = with_session(session, |p: &mut P, s| p.on_batch(s, &batch));
        match result {
            Ok(result) => result.into(),
            Err(missing) => wit::BatchResult::Abort(missing.deny()),
        }
    }
}

/// Sends a log line to the gateway through the `host.log` import.
pub(crate) fn log(level: Level, message: &str) {
    bindings::pgward::plugin::host::log(level.into(), message);
}

/// Marks the running on-query's verdict cacheable through the `host.cache-verdict` import.
pub(crate) fn cache_verdict() {
    bindings::pgward::plugin::host::cache_verdict();
}

impl From<wit::Session> for Session {
    fn from(s: wit::Session) -> Self {
        Session {
            id: s.id,
            identity: Identity {
                user: s.identity.user,
                groups: s.identity.groups,
                proven_by: Proofs {
                    password: s.identity.proven_by.contains(wit::Proofs::PASSWORD),
                    certificate: s.identity.proven_by.contains(wit::Proofs::CERTIFICATE),
                    token: s.identity.proven_by.contains(wit::Proofs::TOKEN),
                },
                token_issuer: s.identity.token_issuer,
                certificate_subject: s.identity.certificate_subject,
                upstream_role: s.identity.upstream_role,
            },
            database: s.database,
            client_addr: s.client_addr,
            application_name: s.application_name,
        }
    }
}

impl From<wit::Relation> for Relation {
    fn from(r: wit::Relation) -> Self {
        Relation {
            schema: r.schema,
            name: r.name,
        }
    }
}

impl From<wit::StatementKind> for StatementKind {
    fn from(k: wit::StatementKind) -> Self {
        use wit::StatementKind as W;
        match k {
            W::Select => Self::Select,
            W::Insert => Self::Insert,
            W::Update => Self::Update,
            W::Delete => Self::Delete,
            W::Merge => Self::Merge,
            W::Copy => Self::Copy,
            W::Ddl => Self::Ddl,
            W::Transaction => Self::Transaction,
            W::Set => Self::Set,
            W::Show => Self::Show,
            W::Explain => Self::Explain,
            W::Prepare => Self::Prepare,
            W::Execute => Self::Execute,
            W::Deallocate => Self::Deallocate,
            W::Call => Self::Call,
            W::Grant => Self::Grant,
            W::Revoke => Self::Revoke,
            W::Utility => Self::Utility,
            W::Unknown => Self::Unknown,
        }
    }
}

impl From<wit::WriteAction> for WriteAction {
    fn from(a: wit::WriteAction) -> Self {
        use wit::WriteAction as W;
        match a {
            W::Insert => Self::Insert,
            W::Update => Self::Update,
            W::Delete => Self::Delete,
            W::Merge => Self::Merge,
            W::CopyFrom => Self::CopyFrom,
            W::SelectInto => Self::SelectInto,
            W::Create => Self::Create,
            W::CreateIndex => Self::CreateIndex,
            W::Alter => Self::Alter,
            W::Drop => Self::Drop,
            W::Truncate => Self::Truncate,
            W::Comment => Self::Comment,
            W::Grant => Self::Grant,
            W::Revoke => Self::Revoke,
            W::Refresh => Self::Refresh,
            W::Lock => Self::Lock,
            W::Maintain => Self::Maintain,
        }
    }
}

impl From<wit::ObjectKind> for ObjectKind {
    fn from(o: wit::ObjectKind) -> Self {
        use wit::ObjectKind as W;
        match o {
            W::Table => Self::Table,
            W::View => Self::View,
            W::MaterializedView => Self::MaterializedView,
            W::ForeignTable => Self::ForeignTable,
            W::Index => Self::Index,
            W::Sequence => Self::Sequence,
            W::Schema => Self::Schema,
            W::Database => Self::Database,
            W::Function => Self::Function,
            W::Procedure => Self::Procedure,
            W::Type => Self::Type,
            W::Domain => Self::Domain,
            W::Extension => Self::Extension,
            W::Role => Self::Role,
            W::Trigger => Self::Trigger,
            W::Server => Self::Server,
            W::Other => Self::Other,
        }
    }
}

impl From<wit::Write> for Write {
    fn from(w: wit::Write) -> Self {
        Write {
            relation: w.relation.into(),
            action: w.action.into(),
            object: w.object.into(),
            has_where: w.has_where,
        }
    }
}

impl From<wit::CopyInfo> for CopyInfo {
    fn from(c: wit::CopyInfo) -> Self {
        CopyInfo {
            direction: match c.direction {
                wit::CopyDirection::From => CopyDirection::From,
                wit::CopyDirection::To => CopyDirection::To,
            },
            query: c.query,
            program: c.program,
            file: c.file,
            stdio: c.stdio,
        }
    }
}

impl From<wit::Statement> for Statement {
    fn from(s: wit::Statement) -> Self {
        Statement {
            kind: s.kind.into(),
            command: s.command,
            reads: s.reads.into_iter().map(Relation::from).collect(),
            writes: s.writes.into_iter().map(Write::from).collect(),
            functions: s.functions,
            has_where: s.has_where,
            where_always_true: s.where_always_true,
            explain_analyze: s.explain_analyze,
            copy: s.copy.map(CopyInfo::from),
            unknown: s.unknown,
        }
    }
}

impl From<wit::Query> for Query {
    fn from(q: wit::Query) -> Self {
        Query {
            sql: q.sql,
            fingerprint: q.fingerprint,
            fingerprint_id: q.fingerprint_id,
            statements: q.statements.into_iter().map(Statement::from).collect(),
            protocol: match q.protocol {
                wit::Protocol::Simple => Protocol::Simple,
                wit::Protocol::Extended => Protocol::Extended,
            },
        }
    }
}

impl From<wit::ColumnLineage> for ColumnLineage {
    fn from(l: wit::ColumnLineage) -> Self {
        ColumnLineage {
            schema: l.schema,
            table: l.table,
            column: l.column,
            inferred: l.inferred,
        }
    }
}

impl From<wit::Column> for Column {
    fn from(c: wit::Column) -> Self {
        Column {
            index: c.index,
            name: c.name,
            type_oid: c.type_oid,
            lineage: c.lineage.into_iter().map(ColumnLineage::from).collect(),
        }
    }
}

impl From<Deny> for wit::Deny {
    fn from(d: Deny) -> Self {
        wit::Deny {
            sqlstate: d.sqlstate,
            message: d.message,
            hint: d.hint,
        }
    }
}

impl From<Approval> for wit::Approval {
    fn from(a: Approval) -> Self {
        wit::Approval {
            reason: a.reason,
            approver_group: a.approver_group,
            rule: a.rule,
            mode: match a.mode {
                ApprovalMode::Hold => wit::ApprovalMode::Hold,
                ApprovalMode::Defer => wit::ApprovalMode::Defer,
            },
            quorum: a.quorum,
        }
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => wit::Verdict::Allow,
            Verdict::Deny(d) => wit::Verdict::Deny(d.into()),
            Verdict::Rewrite(sql) => wit::Verdict::Rewrite(sql),
            Verdict::RequireApproval(a) => wit::Verdict::RequireApproval(a.into()),
        }
    }
}

impl From<ConnectVerdict> for wit::ConnectVerdict {
    fn from(v: ConnectVerdict) -> Self {
        match v {
            ConnectVerdict::Allow => wit::ConnectVerdict::Allow,
            ConnectVerdict::Deny(d) => wit::ConnectVerdict::Deny(d.into()),
        }
    }
}

impl From<Hooks> for wit::Hooks {
    fn from(h: Hooks) -> Self {
        let mut out = wit::Hooks::empty();
        for (ours, theirs) in [
            (Hooks::ON_CONNECT, wit::Hooks::ON_CONNECT),
            (Hooks::ON_QUERY, wit::Hooks::ON_QUERY),
            (Hooks::ON_RESULT_SCHEMA, wit::Hooks::ON_RESULT_SCHEMA),
            (Hooks::ON_BATCH, wit::Hooks::ON_BATCH),
        ] {
            if h.contains(ours) {
                out |= theirs;
            }
        }
        out
    }
}

impl From<PluginInfo> for wit::PluginInfo {
    fn from(i: PluginInfo) -> Self {
        wit::PluginInfo {
            name: i.name,
            version: i.version,
            hooks: i.hooks.into(),
        }
    }
}

impl From<SchemaInterest> for wit::SchemaInterest {
    fn from(s: SchemaInterest) -> Self {
        wit::SchemaInterest {
            read: s.read,
            modify: s.modify,
        }
    }
}

impl From<BatchResult> for wit::BatchResult {
    fn from(b: BatchResult) -> Self {
        match b {
            BatchResult::Unchanged => wit::BatchResult::Unchanged,
            BatchResult::Replace(bytes) => wit::BatchResult::Replace(bytes),
            BatchResult::Abort(d) => wit::BatchResult::Abort(d.into()),
        }
    }
}

impl From<Level> for wit::Level {
    fn from(l: Level) -> Self {
        match l {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
}
