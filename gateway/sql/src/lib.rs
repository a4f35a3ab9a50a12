//! SQL analysis: what a query string reads, writes and calls, and its literal-free fingerprint.
//!
//! # Layout
//! - `lexer`: PostgreSQL-faithful lexing: statement boundaries, fingerprint, stable hash.
//! - `analyze`: one statement through sqlparser into a [`StatementAnalysis`].
//! - `cache`: [`SqlAnalyzer`], a sharded cache of analyses keyed by fingerprint.
//! - [`lineage`]: which source columns each output column of a statement may derive from.
//! - `names`: reading names out of sqlparser's tree as PostgreSQL folds them, and the bound on
//!   operator chains; shared by `analyze` and `lineage`.
//!
//! Statement boundaries and literals are decided by our lexer, which follows PostgreSQL's, not by
//! sqlparser. Each statement is parsed alone, and a statement whose identifiers sqlparser lexes
//! differently, or that it splits differently, comes out [`StatementKind::Unknown`]: the analysis
//! fails closed, it never guesses.
#![forbid(unsafe_code)]

mod analyze;
mod cache;
mod lexer;
pub mod lineage;
mod names;

use serde::Serialize;
use std::fmt;

pub use cache::SqlAnalyzer;
pub use lineage::{infer_output_lineage, OutputItem, OutputLineage, SourceColumn};

/// Lexing options that depend on session state reported by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LexOptions {
    /// The server's `standard_conforming_strings`; track it from ParameterStatus.
    pub standard_conforming_strings: bool,
}

impl Default for LexOptions {
    fn default() -> Self {
        LexOptions {
            standard_conforming_strings: true,
        }
    }
}

/// A query string with literals replaced by `?`, comments dropped and case folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The fingerprint text; statements are joined by `"; "`.
    pub text: String,
    /// False when an analysis of this text must not be reused for another text with the same
    /// fingerprint (unterminated quote or comment, a `?` operator, or the backslash ambiguity).
    pub cacheable: bool,
    /// A quote, dollar quote or comment runs to the end of the text.
    pub unterminated: bool,
    /// `standard_conforming_strings` is off and a plain `'...'` string holds a backslash, so
    /// parsers and the server may split the text differently.
    pub backslash_ambiguity: bool,
}

/// Normalizes `sql` for fingerprinting: literals become `?`, `$n` parameters stay.
pub fn normalize(sql: &str, opts: LexOptions) -> Normalized {
    let mut out = Vec::new();
    let flags = lexer::normalize_into(sql, opts, &mut out);
    Normalized {
        text: String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        cacheable: cache::cacheable(flags),
        unterminated: flags.unterminated,
        backslash_ambiguity: flags.backslash_in_plain_string,
    }
}

/// Analyses `sql` without a cache (for `pgward explain` and tests).
pub fn analyze(sql: &str, opts: LexOptions) -> Analysis {
    let mut key = Vec::new();
    let flags = lexer::normalize_into(sql, opts, &mut key);
    analyze::analyze_text(sql, opts, &key, flags).analysis
}

/// The analysis of one query string.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// The normalized text of the whole string (see [`normalize`]).
    pub fingerprint: String,
    /// 16 hex digits of a stable 64-bit hash of `fingerprint`, equal across processes and runs.
    pub fingerprint_id: String,
    /// One entry per non-empty statement, in order.
    pub statements: Vec<StatementAnalysis>,
    /// Every text with this `fingerprint` (under the same lexer options) has this analysis:
    /// nothing in it depends on a literal's value or on how the text lexes under
    /// `standard_conforming_strings`. What is decided from such an analysis holds for its
    /// shape.
    #[serde(skip)]
    pub shape_only: bool,
}

impl Analysis {
    /// True when some statement could not be analysed: treat the whole string as unknown.
    pub fn has_unknown(&self) -> bool {
        self.statements
            .iter()
            .any(|s| s.kind == StatementKind::Unknown)
    }
}

/// What one statement does.
#[derive(Debug, Clone, Serialize)]
pub struct StatementAnalysis {
    /// What class of statement this is; `Unknown` means it could not be analysed.
    pub kind: StatementKind,
    /// The command, as in PostgreSQL's command tags: `SELECT`, `CREATE TABLE`, `DROP SCHEMA`,
    /// `SET ROLE`; for an unknown statement its leading keywords (`VACUUM`, `ALTER SYSTEM`).
    pub command: String,
    /// Relations read, deduplicated in first-seen order. CTE names are not relations. Targets of
    /// UPDATE, DELETE, MERGE and INSERT ... ON CONFLICT are listed too, since those read the
    /// rows they change.
    pub reads: Vec<RelationName>,
    /// Everything the statement modifies, including DML nested in CTEs, `COPY (...) TO`,
    /// `EXPLAIN ANALYZE` and `PREPARE` (EXECUTE only names it), and DDL targets.
    pub writes: Vec<Write>,
    /// Functions called anywhere, table functions in FROM included; as written, unquoted parts
    /// lower-cased (`pg_catalog.pg_sleep`).
    pub functions: Vec<String>,
    /// For a top-level UPDATE or DELETE: whether it has a WHERE clause.
    pub has_where: Option<bool>,
    /// Some UPDATE or DELETE in the statement (nested ones included) has a WHERE that is a
    /// constant tautology such as `1=1`, `'a'='a'`, `NOT FALSE` or `x OR TRUE`.
    pub where_always_true: bool,
    /// `EXPLAIN ANALYZE`: the explained statement runs, and its writes are in `writes`.
    pub explain_analyze: bool,
    /// For COPY: direction and where the data goes (no file name or command is kept).
    pub copy: Option<CopyInfo>,
    /// For a statement that returns rows (SELECT, VALUES, set operations, RETURNING,
    /// `DECLARE ... CURSOR FOR`, `COPY ... TO`): the source columns behind each output column.
    /// `None` for statements that return no rows, and for EXPLAIN and `SELECT ... INTO`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputLineage>,
    /// Why the statement could not be analysed; then kind is `unknown` and nothing is guessed.
    pub unknown: Option<String>,
}

/// The broad class of a statement. `Ddl` covers CREATE, ALTER, DROP, TRUNCATE and COMMENT;
/// `Set` covers SET and RESET; `Utility` covers cursors, LISTEN/NOTIFY, DISCARD, LOCK, VACUUM,
/// ANALYZE and REFRESH MATERIALIZED VIEW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    Ddl,
    Transaction,
    Set,
    Show,
    Explain,
    Prepare,
    Execute,
    Deallocate,
    Call,
    Grant,
    Revoke,
    Utility,
    Unknown,
}

impl StatementKind {
    /// The name as serialized (`select`, `ddl`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::Copy => "copy",
            StatementKind::Ddl => "ddl",
            StatementKind::Transaction => "transaction",
            StatementKind::Set => "set",
            StatementKind::Show => "show",
            StatementKind::Explain => "explain",
            StatementKind::Prepare => "prepare",
            StatementKind::Execute => "execute",
            StatementKind::Deallocate => "deallocate",
            StatementKind::Call => "call",
            StatementKind::Grant => "grant",
            StatementKind::Revoke => "revoke",
            StatementKind::Utility => "utility",
            StatementKind::Unknown => "unknown",
        }
    }
}

/// A relation (or other object) name with PostgreSQL case folding applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RelationName {
    /// The schema when written; a database qualifier (`db.schema.name`) is dropped.
    pub schema: Option<String>,
    /// The unqualified name; quoted names keep their case, unquoted ones are lower-cased.
    pub name: String,
}

impl fmt::Display for RelationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One object a statement modifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Write {
    /// The modified object.
    pub relation: RelationName,
    /// How it is modified.
    pub action: WriteAction,
    /// What `relation` names: a table for DML, the dropped or created object for DDL.
    pub object: ObjectKind,
    /// For UPDATE and DELETE: whether that statement has a WHERE clause.
    pub has_where: Option<bool>,
}

/// How an object is modified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteAction {
    Insert,
    Update,
    Delete,
    Merge,
    CopyFrom,
    SelectInto,
    Create,
    /// CREATE INDEX on the table in `relation`.
    CreateIndex,
    /// ALTER, and triggers, policies and rules created or dropped on the table.
    Alter,
    Drop,
    Truncate,
    Comment,
    Grant,
    Revoke,
    /// REFRESH MATERIALIZED VIEW.
    Refresh,
    /// LOCK TABLE.
    Lock,
    /// VACUUM and ANALYZE.
    Maintain,
}

impl WriteAction {
    /// The name as serialized (`insert`, `copy_from`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            WriteAction::Insert => "insert",
            WriteAction::Update => "update",
            WriteAction::Delete => "delete",
            WriteAction::Merge => "merge",
            WriteAction::CopyFrom => "copy_from",
            WriteAction::SelectInto => "select_into",
            WriteAction::Create => "create",
            WriteAction::CreateIndex => "create_index",
            WriteAction::Alter => "alter",
            WriteAction::Drop => "drop",
            WriteAction::Truncate => "truncate",
            WriteAction::Comment => "comment",
            WriteAction::Grant => "grant",
            WriteAction::Revoke => "revoke",
            WriteAction::Refresh => "refresh",
            WriteAction::Lock => "lock",
            WriteAction::Maintain => "maintain",
        }
    }
}

/// The kind of object a [`Write`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Table,
    View,
    MaterializedView,
    ForeignTable,
    Index,
    Sequence,
    Schema,
    Database,
    Function,
    Procedure,
    Type,
    Domain,
    Extension,
    Role,
    Trigger,
    Server,
    Other,
}

/// Where COPY moves data and through what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopyInfo {
    /// FROM loads data into a table, TO exports it.
    pub direction: CopyDirection,
    /// A table, or a `(query)` (whose writes, if any, are in `writes`).
    pub target: CopyTargetKind,
    /// `PROGRAM '...'`: the server runs a shell command (the command itself is not kept).
    pub program: bool,
    /// A server-side file.
    pub file: bool,
    /// STDIN or STDOUT: the data flows through this connection.
    pub stdio: bool,
}

/// `COPY ... FROM` or `COPY ... TO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyDirection {
    From,
    To,
}

/// Whether COPY names a table or a `(query)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyTargetKind {
    Table,
    Query,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_reports_cacheability() {
        let n = normalize(
            "SELECT * FROM t WHERE a = $1 AND b = 'x'",
            LexOptions::default(),
        );
        assert_eq!(
            (n.text.as_str(), n.cacheable),
            ("select * from t where a = $1 and b = ?", true)
        );
        let n = normalize("SELECT 'open", LexOptions::default());
        assert!(n.unterminated && !n.cacheable);
        let n = normalize(
            r"SELECT 'a\'",
            LexOptions {
                standard_conforming_strings: false,
            },
        );
        assert!(n.backslash_ambiguity && !n.cacheable);
    }

    #[test]
    fn fingerprint_ignores_literals_case_and_layout() {
        let a = analyze(
            "SELECT a, b FROM t WHERE id = 42 -- first",
            LexOptions::default(),
        );
        let b = analyze(
            "select A,\n  B from T /* other */ where ID = 7",
            LexOptions::default(),
        );
        assert_eq!(a.fingerprint, "select a, b from t where id = ?");
        assert_eq!(
            (a.fingerprint, a.fingerprint_id),
            (b.fingerprint.clone(), b.fingerprint_id.clone())
        );
        assert!(
            b.fingerprint_id.len() == 16 && b.fingerprint_id.bytes().all(|c| c.is_ascii_hexdigit())
        );
    }

    #[test]
    fn explain_output_is_snake_case_json() {
        let a = analyze(
            "EXPLAIN ANALYZE DELETE FROM s.t WHERE TRUE",
            LexOptions::default(),
        );
        let json: serde_json::Value = serde_json::to_value(&a).unwrap();
        let s = &json["statements"][0];
        assert_eq!(s["kind"], "explain");
        assert_eq!(s["explain_analyze"], true);
        assert_eq!(s["where_always_true"], true);
        assert_eq!(s["writes"][0]["action"], "delete");
        assert_eq!(
            s["writes"][0]["relation"],
            serde_json::json!({"schema": "s", "name": "t"})
        );
        let copy = analyze("COPY t FROM STDIN", LexOptions::default());
        assert_eq!(
            serde_json::to_value(copy.statements[0].copy).unwrap(),
            serde_json::json!({"direction": "from", "target": "table", "program": false, "file": false, "stdio": true})
        );
        assert_eq!(
            RelationName {
                schema: Some("s".into()),
                name: "t".into()
            }
            .to_string(),
            "s.t"
        );
    }
}
