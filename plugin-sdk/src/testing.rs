//! Run a plugin natively in plain `cargo test`, with the gateway's own SQL analysis.
//!
//! ```
//! use pgward_plugin_sdk::prelude::*;
//! use pgward_plugin_sdk::testing::TestHarness;
//!
//! #[derive(Default)]
//! struct NoTruncate;
//!
//! impl Plugin for NoTruncate {
//!     const NAME: &'static str = "no-truncate";
//!     const VERSION: &'static str = "1.0.0";
//!     const HOOKS: Hooks = Hooks::ON_QUERY;
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(NoTruncate)
//!     }
//!     fn on_query(&mut self, _session: &Session, query: &Query) -> Verdict {
//!         if query.writes().any(|w| w.action == WriteAction::Truncate) {
//!             log(Level::Warn, "truncate refused");
//!             return Verdict::deny(sqlstate::INSUFFICIENT_PRIVILEGE, "TRUNCATE is not allowed");
//!         }
//!         Verdict::Allow
//!     }
//! }
//!
//! let mut h = TestHarness::<NoTruncate>::new("").unwrap();
//! let alice = h.session("alice", &["dev"]);
//! assert!(h.query(&alice, "SELECT 1; TRUNCATE t").is_deny());
//! assert!(h.query(&alice, "SELECT * FROM t").is_allow());
//! assert!(h.logged("truncate refused"));
//! ```

use crate::plugin::Plugin;
use crate::types::{
    BatchResult, Column, ConnectVerdict, CopyDirection, CopyInfo, Hooks, Identity, Level,
    ObjectKind, Protocol, Query, Relation, SchemaInterest, Session, Statement, StatementKind,
    Verdict, Write, WriteAction,
};
use pgward_sql::{Analysis, LexOptions, StatementAnalysis};
use std::cell::RefCell;
use std::fmt;

/// One line a plugin logged with [`log`](crate::log()).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its severity.
    pub level: Level,
    /// Its text.
    pub message: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.level, self.message)
    }
}

thread_local! {
    /// Lines logged on this thread since the harness last collected them (each test has its
    /// own thread, so tests do not see each other's lines).
    static CAPTURED: RefCell<Vec<LogLine>> = const { RefCell::new(Vec::new()) };
}

/// The native body of [`log`](crate::log()): record for the harness and print to stderr (which
/// `cargo test` shows only for failing tests).
pub(crate) fn capture(level: Level, message: &str) {
    eprintln!("[plugin {level}] {message}");
    CAPTURED.with(|c| {
        c.borrow_mut().push(LogLine {
            level,
            message: message.to_owned(),
        })
    });
}

thread_local! {
    /// `cache_verdict` was called since the harness last looked.
    static CACHEABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The native body of [`cache_verdict`](crate::cache_verdict()).
pub(crate) fn mark_cacheable() {
    CACHEABLE.with(|c| c.set(true));
}

fn take_captured() -> Vec<LogLine> {
    CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Drives one plugin the way the gateway does, without a gateway: `init` with a config text,
/// then hooks with sessions and statements analysed by the gateway's own SQL analyser.
///
/// Each hook call checks what the gateway checks and panics with an explanation when the
/// plugin would misbehave there: a hook missing from [`Plugin::HOOKS`] (the gateway would never
/// call it) or a verdict the gateway rejects (see [`Verdict::validate`]).
pub struct TestHarness<P: Plugin> {
    plugin: P,
    next_session_id: u64,
    logs: Vec<LogLine>,
    cacheable: bool,
}

impl<P: Plugin> TestHarness<P> {
    /// Initialises the plugin with `config`, the text the gateway would read from `NAME.toml`
    /// (`""` for no file). Returns the plugin's error, as the gateway would show the operator.
    pub fn new(config: &str) -> Result<Self, String> {
        drop(take_captured());
        let plugin = P::init(config);
        let logs = take_captured();
        Ok(TestHarness {
            plugin: plugin?,
            next_session_id: 1,
            logs,
            cacheable: false,
        })
    }

    /// A session of `user` in `groups`, database `postgres`, from `127.0.0.1`; each call gets a
    /// new session id.
    pub fn session(&mut self, user: &str, groups: &[&str]) -> Session {
        let id = self.next_session_id;
        self.next_session_id += 1;
        Session {
            id,
            identity: Identity {
                user: user.to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                proven_by: crate::types::Proofs {
                    password: true,
                    ..Default::default()
                },
                ..Default::default()
            },
            database: "postgres".to_owned(),
            client_addr: format!("127.0.0.1:{}", 40000 + id % 20000),
            application_name: String::new(),
        }
    }

    /// Calls `on_connect` for `session`.
    #[track_caller]
    pub fn connect(&mut self, session: &Session) -> ConnectVerdict {
        self.expect_hook(Hooks::ON_CONNECT, "on_connect");
        let verdict = self.plugin.on_connect(session);
        self.collect_logs();
        if let Err(e) = verdict.validate() {
            panic!(
                "{}: on_connect returned a verdict the gateway rejects ({e}): {verdict:?}",
                P::NAME
            );
        }
        verdict
    }

    /// Calls `on_query` with `sql` sent as a simple-protocol Query message.
    #[track_caller]
    pub fn query(&mut self, session: &Session, sql: &str) -> Verdict {
        let query = analyze(sql, Protocol::Simple);
        self.query_analysed(session, &query)
    }

    /// Calls `on_query` with `sql` sent as an extended-protocol Parse message.
    #[track_caller]
    pub fn query_extended(&mut self, session: &Session, sql: &str) -> Verdict {
        let query = analyze(sql, Protocol::Extended);
        self.query_analysed(session, &query)
    }

    /// Calls `on_query` with a prepared [`Query`] (see [`analyze`]), e.g. one edited by hand.
    #[track_caller]
    pub fn query_analysed(&mut self, session: &Session, query: &Query) -> Verdict {
        self.expect_hook(Hooks::ON_QUERY, "on_query");
        CACHEABLE.with(|c| c.set(false));
        let verdict = self.plugin.on_query(session, query);
        // The gateway never caches a rewrite, marked or not.
        self.cacheable =
            CACHEABLE.with(|c| c.replace(false)) && !matches!(verdict, Verdict::Rewrite(_));
        self.collect_logs();
        if let Err(e) = verdict.validate() {
            panic!(
                "{}: on_query returned a verdict the gateway rejects ({e}): {verdict:?}",
                P::NAME
            );
        }
        verdict
    }

    /// Whether the last `on_query` marked its verdict cacheable
    /// ([`cache_verdict`](crate::cache_verdict())).
    pub fn cacheable(&self) -> bool {
        self.cacheable
    }

    /// Calls `on_result_schema` with `columns`.
    #[track_caller]
    pub fn result_schema(&mut self, session: &Session, columns: &[Column]) -> SchemaInterest {
        self.expect_hook(Hooks::ON_RESULT_SCHEMA, "on_result_schema");
        let interest = self.plugin.on_result_schema(session, columns);
        self.collect_logs();
        let known = |i: &u32| columns.iter().any(|c| c.index == *i);
        if let Some(bad) = interest
            .read
            .iter()
            .chain(&interest.modify)
            .find(|i| !known(i))
        {
            panic!(
                "{}: on_result_schema asked for column {bad}, which the result lacks",
                P::NAME
            );
        }
        interest
    }

    /// Calls `on_batch` with an Arrow IPC stream (build one with `arrow::write_batch`, feature
    /// `arrow`).
    ///
    /// With the feature `arrow`, a replacement is also checked the way the gateway reads it: one
    /// record batch with as many rows as the input.
    #[track_caller]
    pub fn batch(&mut self, session: &Session, batch: &[u8]) -> BatchResult {
        self.expect_hook(Hooks::ON_BATCH, "on_batch");
        let result = self.plugin.on_batch(session, batch);
        self.collect_logs();
        match &result {
            BatchResult::Abort(deny) => {
                if let Err(e) = deny.validate() {
                    panic!(
                        "{}: on_batch aborted with an error the gateway rejects ({e}): {deny:?}",
                        P::NAME
                    );
                }
            }
            #[cfg(feature = "arrow")]
            BatchResult::Replace(replacement) => check_replacement::<P>(batch, replacement),
            _ => {}
        }
        result
    }

    /// The plugin, to inspect its state.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// The plugin, to call hooks directly without the harness's checks.
    pub fn plugin_mut(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// Every line the plugin logged so far, `init` included.
    pub fn logs(&self) -> &[LogLine] {
        &self.logs
    }

    /// Takes the lines logged so far, leaving none.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }

    /// Whether some logged line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(needle))
    }

    fn collect_logs(&mut self) {
        self.logs.extend(take_captured());
    }

    #[track_caller]
    fn expect_hook(&self, hook: Hooks, name: &str) {
        assert!(
            P::HOOKS.contains(hook),
            "{}: {name} called, but HOOKS ({:?}) does not include it, so the gateway would never call it",
            P::NAME,
            P::HOOKS
        );
    }
}

#[cfg(feature = "arrow")]
#[track_caller]
fn check_replacement<P: Plugin>(input: &[u8], replacement: &[u8]) {
    let out = match crate::arrow::read_batch(replacement) {
        Ok(out) => out,
        Err(e) => panic!(
            "{}: on_batch returned a replacement the gateway cannot read: {e}",
            P::NAME
        ),
    };
    // An input the test made up need not be valid; then there is nothing to compare with.
    if let Ok(input) = crate::arrow::read_batch(input) {
        assert_eq!(
            out.num_rows(),
            input.num_rows(),
            "{}: on_batch returned a replacement with {} rows for a batch of {}",
            P::NAME,
            out.num_rows(),
            input.num_rows()
        );
    }
}

/// The [`Query`] the gateway hands `on_query` for `sql` (default session settings:
/// `standard_conforming_strings` on).
pub fn analyze(sql: &str, protocol: Protocol) -> Query {
    let analysis = pgward_sql::analyze(sql, LexOptions::default());
    query_from_analysis(sql, &analysis, protocol)
}

/// Maps the gateway's analysis of `sql` to the [`Query`] a plugin receives; the gateway's
/// host side performs the same mapping into the WIT `query` record.
pub fn query_from_analysis(sql: &str, analysis: &Analysis, protocol: Protocol) -> Query {
    Query {
        sql: sql.to_owned(),
        fingerprint: analysis.fingerprint.clone(),
        fingerprint_id: analysis.fingerprint_id.clone(),
        statements: analysis
            .statements
            .iter()
            .map(statement_from_analysis)
            .collect(),
        protocol,
    }
}

/// Maps one analysed statement to the [`Statement`] a plugin receives.
pub fn statement_from_analysis(s: &StatementAnalysis) -> Statement {
    Statement {
        kind: statement_kind(s.kind),
        command: s.command.clone(),
        reads: s.reads.iter().map(relation).collect(),
        writes: s
            .writes
            .iter()
            .map(|w| Write {
                relation: relation(&w.relation),
                action: write_action(w.action),
                object: object_kind(w.object),
                has_where: w.has_where,
            })
            .collect(),
        functions: s.functions.clone(),
        has_where: s.has_where,
        where_always_true: s.where_always_true,
        explain_analyze: s.explain_analyze,
        copy: s.copy.map(|c| CopyInfo {
            direction: match c.direction {
                pgward_sql::CopyDirection::From => CopyDirection::From,
                pgward_sql::CopyDirection::To => CopyDirection::To,
            },
            query: c.target == pgward_sql::CopyTargetKind::Query,
            program: c.program,
            file: c.file,
            stdio: c.stdio,
        }),
        unknown: s.unknown.clone(),
    }
}

fn relation(r: &pgward_sql::RelationName) -> Relation {
    Relation {
        schema: r.schema.clone(),
        name: r.name.clone(),
    }
}

fn statement_kind(k: pgward_sql::StatementKind) -> StatementKind {
    use pgward_sql::StatementKind as A;
    match k {
        A::Select => StatementKind::Select,
        A::Insert => StatementKind::Insert,
        A::Update => StatementKind::Update,
        A::Delete => StatementKind::Delete,
        A::Merge => StatementKind::Merge,
        A::Copy => StatementKind::Copy,
        A::Ddl => StatementKind::Ddl,
        A::Transaction => StatementKind::Transaction,
        A::Set => StatementKind::Set,
        A::Show => StatementKind::Show,
        A::Explain => StatementKind::Explain,
        A::Prepare => StatementKind::Prepare,
        A::Execute => StatementKind::Execute,
        A::Deallocate => StatementKind::Deallocate,
        A::Call => StatementKind::Call,
        A::Grant => StatementKind::Grant,
        A::Revoke => StatementKind::Revoke,
        A::Utility => StatementKind::Utility,
        A::Unknown => StatementKind::Unknown,
    }
}

fn write_action(a: pgward_sql::WriteAction) -> WriteAction {
    use pgward_sql::WriteAction as A;
    match a {
        A::Insert => WriteAction::Insert,
        A::Update => WriteAction::Update,
        A::Delete => WriteAction::Delete,
        A::Merge => WriteAction::Merge,
        A::CopyFrom => WriteAction::CopyFrom,
        A::SelectInto => WriteAction::SelectInto,
        A::Create => WriteAction::Create,
        A::CreateIndex => WriteAction::CreateIndex,
        A::Alter => WriteAction::Alter,
        A::Drop => WriteAction::Drop,
        A::Truncate => WriteAction::Truncate,
        A::Comment => WriteAction::Comment,
        A::Grant => WriteAction::Grant,
        A::Revoke => WriteAction::Revoke,
        A::Refresh => WriteAction::Refresh,
        A::Lock => WriteAction::Lock,
        A::Maintain => WriteAction::Maintain,
    }
}

fn object_kind(o: pgward_sql::ObjectKind) -> ObjectKind {
    use pgward_sql::ObjectKind as A;
    match o {
        A::Table => ObjectKind::Table,
        A::View => ObjectKind::View,
        A::MaterializedView => ObjectKind::MaterializedView,
        A::ForeignTable => ObjectKind::ForeignTable,
        A::Index => ObjectKind::Index,
        A::Sequence => ObjectKind::Sequence,
        A::Schema => ObjectKind::Schema,
        A::Database => ObjectKind::Database,
        A::Function => ObjectKind::Function,
        A::Procedure => ObjectKind::Procedure,
        A::Type => ObjectKind::Type,
        A::Domain => ObjectKind::Domain,
        A::Extension => ObjectKind::Extension,
        A::Role => ObjectKind::Role,
        A::Trigger => ObjectKind::Trigger,
        A::Server => ObjectKind::Server,
        A::Other => ObjectKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    struct Recorder {
        seen: Vec<Query>,
    }

    impl Plugin for Recorder {
        const NAME: &'static str = "recorder";
        const VERSION: &'static str = "0.0.0";
        const HOOKS: Hooks = Hooks::ON_QUERY;
        fn init(config: &str) -> Result<Self, String> {
            log(Level::Info, format!("init with {config:?}"));
            if config == "fail" {
                return Err("bad config".to_owned());
            }
            Ok(Recorder { seen: Vec::new() })
        }
        fn on_query(&mut self, _session: &Session, query: &Query) -> Verdict {
            self.seen.push(query.clone());
            if query.sql == "garbage" {
                return Verdict::deny("XX", "");
            }
            Verdict::Allow
        }
    }

    #[test]
    fn harness_hands_the_plugin_the_gateway_analysis() {
        let mut h = TestHarness::<Recorder>::new("").unwrap();
        let s = h.session("alice", &["dev"]);
        let sql = "WITH d AS (DELETE FROM public.accounts RETURNING id) SELECT * FROM d; \
                   COPY (SELECT 1) TO STDOUT";
        assert!(h.query(&s, sql).is_allow());
        let q = &h.plugin().seen[0];
        let expected = pgward_sql::analyze(sql, LexOptions::default());
        assert_eq!(q.fingerprint, expected.fingerprint);
        assert_eq!(q.fingerprint_id, expected.fingerprint_id);
        assert_eq!(q.statements.len(), 2);
        assert!(q.writes_to("public.accounts"));
        let delete = q.writes().next().unwrap();
        assert!(delete.is(WriteAction::Delete, ObjectKind::Table));
        assert!(delete.is_unbounded());
        let copy = q.statements[1].copy.unwrap();
        assert!(copy.query && copy.stdio && copy.direction == CopyDirection::To);
        assert_eq!(q.protocol, Protocol::Simple);
    }

    #[test]
    fn unparsable_text_reaches_the_plugin_as_unknown() {
        let q = analyze("DO $$ BEGIN END $$", Protocol::Extended);
        assert!(q.has_unknown());
        assert!(q.statements[0].unknown.is_some());
        assert_eq!(q.protocol, Protocol::Extended);
    }

    #[test]
    fn harness_captures_logs_and_init_errors() {
        let h = TestHarness::<Recorder>::new("x = 1").unwrap();
        assert_eq!(
            h.logs(),
            [LogLine {
                level: Level::Info,
                message: "init with \"x = 1\"".to_owned()
            }]
        );
        assert_eq!(
            TestHarness::<Recorder>::new("fail").err().as_deref(),
            Some("bad config")
        );
    }

    #[test]
    #[should_panic(expected = "verdict the gateway rejects")]
    fn harness_rejects_invalid_verdicts_like_the_gateway() {
        let mut h = TestHarness::<Recorder>::new("").unwrap();
        let s = h.session("bob", &[]);
        h.query(&s, "garbage");
    }

    #[test]
    #[should_panic(expected = "does not include it")]
    fn harness_refuses_hooks_missing_from_hooks() {
        let mut h = TestHarness::<Recorder>::new("").unwrap();
        let s = h.session("bob", &[]);
        h.connect(&s);
    }

    #[cfg(feature = "arrow")]
    struct BadBatches;

    #[cfg(feature = "arrow")]
    impl Plugin for BadBatches {
        const NAME: &'static str = "bad-batches";
        const VERSION: &'static str = "0.0.0";
        const HOOKS: Hooks = Hooks::ON_BATCH;
        fn init(_config: &str) -> Result<Self, String> {
            Ok(BadBatches)
        }
        fn on_batch(&mut self, _session: &Session, batch: &[u8]) -> BatchResult {
            use crate::arrow::{read_batch, write_batch};
            match read_batch(batch) {
                Ok(b) => BatchResult::Replace(write_batch(&b.slice(0, b.num_rows() - 1)).unwrap()),
                Err(_) => BatchResult::Replace(b"junk".to_vec()),
            }
        }
    }

    #[cfg(feature = "arrow")]
    #[test]
    #[should_panic(expected = "replacement the gateway cannot read")]
    fn harness_rejects_unreadable_replacements() {
        let mut h = TestHarness::<BadBatches>::new("").unwrap();
        let s = h.session("bob", &[]);
        h.batch(&s, b"not arrow");
    }

    #[cfg(feature = "arrow")]
    #[test]
    #[should_panic(expected = "replacement with 1 rows for a batch of 2")]
    fn harness_rejects_replacements_that_lose_rows() {
        use crate::arrow::{write_batch, RecordBatch, StringArray};
        let mut h = TestHarness::<BadBatches>::new("").unwrap();
        let s = h.session("bob", &[]);
        let batch = RecordBatch::try_from_iter([(
            "email",
            std::sync::Arc::new(StringArray::from(vec!["a", "b"])) as _,
        )])
        .unwrap();
        h.batch(&s, &write_batch(&batch).unwrap());
    }

    #[test]
    fn sessions_get_distinct_ids_and_groups() {
        let mut h = TestHarness::<Recorder>::new("").unwrap();
        let a = h.session("alice", &["dev", "ops"]);
        let b = h.session("bob", &[]);
        assert_ne!(a.id, b.id);
        assert!(a.in_group("ops") && !b.in_group("ops"));
        assert_eq!(a.user(), "alice");
    }
}
