//! The values hooks receive and return; one Rust type per type of `wit/plugin.wit`.

use std::fmt;

/// What proved an identity (several when a client certificate was required as well as a
/// password or token; none only when the gateway runs with `auth.method = "trust"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Proofs {
    /// A SCRAM-SHA-256 password of a user in the gateway's `auth.users`.
    pub password: bool,
    /// A client certificate from a configured CA, mapped by an `auth.certificates` rule.
    pub certificate: bool,
    /// A signed JWT of an `auth.tokens` issuer, presented as the password.
    pub token: bool,
}

/// Who a session is, as the gateway verified it (never a claim the client made).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The authenticated user name.
    pub user: String,
    /// Groups from the gateway configuration (the user's entry, the certificate rule or the
    /// token issuer) and, for tokens, the token's groups claim.
    pub groups: Vec<String>,
    /// How the identity was proven.
    pub proven_by: Proofs,
    /// The `iss` claim of the token that proved it.
    pub token_issuer: Option<String>,
    /// The certificate field the identity was mapped from: a URI SAN such as a SPIFFE ID, a DNS
    /// SAN, or the subject CN.
    pub certificate_subject: Option<String>,
    /// The upstream role the gateway set for the session, if one is mapped to the identity.
    pub upstream_role: Option<String>,
}

/// The client session a hook is called for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    /// Unique per gateway process; stable for the whole session.
    pub id: u64,
    /// The verified identity of the client.
    pub identity: Identity,
    /// Database the client asked for.
    pub database: String,
    /// Client address as `ip:port`.
    pub client_addr: String,
    /// The client's `application_name` startup parameter (may be empty).
    pub application_name: String,
}

impl Session {
    /// The authenticated user name.
    pub fn user(&self) -> &str {
        &self.identity.user
    }

    /// Whether the gateway configuration puts this user in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.identity.groups.iter().any(|g| g == group)
    }

    /// Whether the user is in at least one of `groups`.
    pub fn in_any_group<S: AsRef<str>>(&self, groups: &[S]) -> bool {
        groups.iter().any(|g| self.in_group(g.as_ref()))
    }
}

/// What kind of statement this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// `SELECT`, `VALUES`, `TABLE`.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// `COPY`; see [`Statement::copy`] for direction and endpoint.
    Copy,
    /// CREATE, ALTER, DROP, TRUNCATE and COMMENT.
    Ddl,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT and friends.
    Transaction,
    /// SET and RESET.
    Set,
    /// SHOW.
    Show,
    /// EXPLAIN (with ANALYZE the inner statement runs; see [`Statement::explain_analyze`]).
    Explain,
    /// PREPARE.
    Prepare,
    /// EXECUTE of a prepared statement.
    Execute,
    /// DEALLOCATE.
    Deallocate,
    /// CALL of a procedure.
    Call,
    /// GRANT.
    Grant,
    /// REVOKE.
    Revoke,
    /// Cursors, LISTEN/NOTIFY, DISCARD, LOCK, VACUUM, ANALYZE, REFRESH MATERIALIZED VIEW.
    Utility,
    /// The gateway could not parse the text; nothing about it is known. Deny when in doubt.
    Unknown,
}

impl StatementKind {
    /// True for statements that change rows: INSERT, UPDATE, DELETE, MERGE.
    pub fn is_dml(self) -> bool {
        matches!(
            self,
            Self::Insert | Self::Update | Self::Delete | Self::Merge
        )
    }
}

/// A relation name as written in the statement: unquoted parts lower-cased (PostgreSQL folding),
/// quoted parts kept exactly, schema absent when the statement did not name one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Relation {
    /// The schema, when the statement named one.
    pub schema: Option<String>,
    /// The unqualified name.
    pub name: String,
}

impl Relation {
    /// A relation from already-folded parts.
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        Relation {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// Whether this relation may be the one `pattern` names.
    ///
    /// `pattern` is `name`, `schema.name`, `schema.*` or `*`, written as in SQL: unquoted parts
    /// are lower-cased, `"Quoted"` parts kept. A bare `name` matches that name in any schema. A
    /// relation written without a schema may resolve to any schema on the search path, so it
    /// matches any schema in the pattern: `accounts` matches `public.accounts` (fail closed).
    pub fn matches(&self, pattern: &str) -> bool {
        QualifiedPattern::parse(pattern).matches(self.schema.as_deref(), &self.name)
    }

    /// Whether this relation matches at least one of `patterns` (see [`Relation::matches`]).
    pub fn matches_any<S: AsRef<str>>(&self, patterns: &[S]) -> bool {
        patterns.iter().any(|p| self.matches(p.as_ref()))
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How a statement changes a relation or object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteAction {
    /// INSERT (also `INSERT` arms of MERGE).
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// MERGE into the relation.
    Merge,
    /// `COPY ... FROM`: loads rows into the relation.
    CopyFrom,
    /// `SELECT ... INTO` or `CREATE TABLE ... AS`.
    SelectInto,
    /// CREATE of the object.
    Create,
    /// CREATE INDEX on the table in [`Write::relation`].
    CreateIndex,
    /// ALTER, and triggers, policies and rules created or dropped on the table.
    Alter,
    /// DROP of the object.
    Drop,
    /// TRUNCATE.
    Truncate,
    /// COMMENT ON.
    Comment,
    /// GRANT on the object.
    Grant,
    /// REVOKE on the object.
    Revoke,
    /// REFRESH MATERIALIZED VIEW.
    Refresh,
    /// LOCK TABLE.
    Lock,
    /// VACUUM and ANALYZE.
    Maintain,
}

impl WriteAction {
    /// True for actions that change rows (INSERT, UPDATE, DELETE, MERGE, COPY FROM, SELECT INTO,
    /// TRUNCATE), as opposed to schema or permission changes.
    pub fn changes_rows(self) -> bool {
        matches!(
            self,
            Self::Insert
                | Self::Update
                | Self::Delete
                | Self::Merge
                | Self::CopyFrom
                | Self::SelectInto
                | Self::Truncate
        )
    }
}

/// What kind of object a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A table (all DML targets are tables).
    Table,
    /// A view.
    View,
    /// A materialized view.
    MaterializedView,
    /// A foreign table.
    ForeignTable,
    /// An index.
    Index,
    /// A sequence.
    Sequence,
    /// A schema.
    Schema,
    /// A database.
    Database,
    /// A function.
    Function,
    /// A procedure.
    Procedure,
    /// A type.
    Type,
    /// A domain.
    Domain,
    /// An extension.
    Extension,
    /// A role.
    Role,
    /// A trigger.
    Trigger,
    /// A foreign server.
    Server,
    /// Anything else (policies, rules, operators...).
    Other,
}

/// One object a statement modifies. DML hidden in CTEs, MERGE, `COPY (...) TO`, `SELECT INTO`,
/// `CREATE TABLE AS` and `EXPLAIN ANALYZE` is reported too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The modified object.
    pub relation: Relation,
    /// How it is modified.
    pub action: WriteAction,
    /// What [`Write::relation`] names.
    pub object: ObjectKind,
    /// For UPDATE and DELETE: whether a WHERE clause exists.
    pub has_where: Option<bool>,
}

impl Write {
    /// Whether this is `action` on an object of kind `object`, e.g. `(Drop, Table)`.
    pub fn is(&self, action: WriteAction, object: ObjectKind) -> bool {
        self.action == action && self.object == object
    }

    /// An UPDATE or DELETE without a WHERE clause: it changes every row.
    pub fn is_unbounded(&self) -> bool {
        matches!(self.action, WriteAction::Update | WriteAction::Delete)
            && self.has_where == Some(false)
    }
}

/// `COPY ... FROM` (load) or `COPY ... TO` (export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyDirection {
    /// `COPY ... FROM`: data flows into the database.
    From,
    /// `COPY ... TO`: data flows out of the database.
    To,
}

/// Details of a COPY statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyInfo {
    /// Which way data flows.
    pub direction: CopyDirection,
    /// `COPY (query) TO` rather than `COPY table`.
    pub query: bool,
    /// `TO/FROM PROGRAM`: runs a command on the database server.
    pub program: bool,
    /// A server-side file.
    pub file: bool,
    /// STDIN/STDOUT: data flows through the client connection.
    pub stdio: bool,
}

/// The gateway's analysis of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// What kind of statement this is.
    pub kind: StatementKind,
    /// PostgreSQL's name for the command, e.g. "SELECT", "DROP TABLE", "SET ROLE"; for unknown
    /// statements the leading keywords (e.g. "DO", "VACUUM").
    pub command: String,
    /// Relations read (CTE names excluded).
    pub reads: Vec<Relation>,
    /// Everything modified.
    pub writes: Vec<Write>,
    /// Functions called anywhere, lower-cased unless quoted, schema-qualified as written.
    pub functions: Vec<String>,
    /// For a top-level UPDATE/DELETE: whether it has a WHERE clause.
    pub has_where: Option<bool>,
    /// The WHERE clause is a constant tautology such as `1=1` or `true`.
    pub where_always_true: bool,
    /// `EXPLAIN ANALYZE`: the inner statement really runs.
    pub explain_analyze: bool,
    /// Present for COPY.
    pub copy: Option<CopyInfo>,
    /// Why the statement could not be analysed; present exactly when kind is unknown.
    pub unknown: Option<String>,
}

impl Statement {
    /// Whether the gateway could not analyse this statement (nothing about it is known).
    pub fn is_unknown(&self) -> bool {
        self.kind == StatementKind::Unknown
    }

    /// Whether the command is `command`, compared ignoring ASCII case ("drop table").
    pub fn is_command(&self, command: &str) -> bool {
        self.command.eq_ignore_ascii_case(command)
    }

    /// Whether the statement modifies anything.
    pub fn is_write(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Whether the statement reads a relation matching `pattern` (see [`Relation::matches`]).
    pub fn reads_from(&self, pattern: &str) -> bool {
        self.reads.iter().any(|r| r.matches(pattern))
    }

    /// Whether the statement modifies a relation matching `pattern` (see [`Relation::matches`]).
    pub fn writes_to(&self, pattern: &str) -> bool {
        self.writes.iter().any(|w| w.relation.matches(pattern))
    }

    /// Whether the statement calls a function matching `pattern` (`pg_sleep`,
    /// `pg_catalog.pg_sleep`; same rules as [`Relation::matches`]).
    pub fn calls(&self, pattern: &str) -> bool {
        let pattern = QualifiedPattern::parse(pattern);
        self.functions.iter().any(|f| {
            let (schema, name) = split_qualified(f);
            pattern.matches(schema, name)
        })
    }
}

/// Which sub-protocol carried the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// A Query message; may hold several statements, all run as one unit.
    #[default]
    Simple,
    /// A Parse message; exactly one statement, parameters as `$1`, `$2`...
    Extended,
}

/// A statement text as the client sent it, with the gateway's analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The raw SQL text.
    pub sql: String,
    /// Normalized text: literals replaced by `?`, comments removed, whitespace collapsed.
    pub fingerprint: String,
    /// A stable 64-bit hash of the fingerprint, 16 hex digits; use it to pin exact queries.
    pub fingerprint_id: String,
    /// One entry per statement, in order.
    pub statements: Vec<Statement>,
    /// Which sub-protocol carried the text.
    pub protocol: Protocol,
}

impl Query {
    /// Whether some statement could not be analysed: treat the whole text as unknown.
    pub fn has_unknown(&self) -> bool {
        self.statements.iter().any(Statement::is_unknown)
    }

    /// Every write of every statement, in order.
    pub fn writes(&self) -> impl Iterator<Item = &Write> + '_ {
        self.statements.iter().flat_map(|s| s.writes.iter())
    }

    /// Every relation read by any statement, in order (may repeat across statements).
    pub fn reads(&self) -> impl Iterator<Item = &Relation> + '_ {
        self.statements.iter().flat_map(|s| s.reads.iter())
    }

    /// Every function called by any statement, in order (may repeat across statements).
    pub fn functions(&self) -> impl Iterator<Item = &str> + '_ {
        self.statements
            .iter()
            .flat_map(|s| s.functions.iter().map(String::as_str))
    }

    /// The first statement matching `predicate`.
    pub fn find(&self, predicate: impl FnMut(&&Statement) -> bool) -> Option<&Statement> {
        self.statements.iter().find(predicate)
    }

    /// Whether any statement modifies a relation matching `pattern` (see [`Relation::matches`]).
    pub fn writes_to(&self, pattern: &str) -> bool {
        self.statements.iter().any(|s| s.writes_to(pattern))
    }

    /// Whether any statement reads a relation matching `pattern` (see [`Relation::matches`]).
    pub fn reads_from(&self, pattern: &str) -> bool {
        self.statements.iter().any(|s| s.reads_from(pattern))
    }

    /// Whether any statement calls a function matching `pattern` (see [`Statement::calls`]).
    pub fn calls(&self, pattern: &str) -> bool {
        self.statements.iter().any(|s| s.calls(pattern))
    }
}

/// A refusal, sent to the client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// Five-character SQLSTATE of an error class, e.g. "42501" (see [`crate::sqlstate`]).
    pub sqlstate: String,
    /// What the client is told.
    pub message: String,
    /// An optional HINT line for the client.
    pub hint: Option<String>,
}

impl Deny {
    /// The longest message or hint, in bytes, that the gateway accepts (it may be configured
    /// lower).
    pub const MAX_TEXT: usize = 8192;

    /// A refusal with SQLSTATE `sqlstate` and `message`, without a hint.
    pub fn new(sqlstate: impl Into<String>, message: impl Into<String>) -> Self {
        Deny {
            sqlstate: sqlstate.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a HINT line for the client.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Checks what the gateway checks: the SQLSTATE is five digits or upper-case letters and not
    /// of a success, warning or no-data class (`00`, `01`, `02`), the message is not empty, and
    /// neither message nor hint is longer than [`Deny::MAX_TEXT`].
    /// The gateway treats an invalid refusal as a plugin fault (the statement is still denied).
    pub fn validate(&self) -> Result<(), String> {
        let s = self.sqlstate.as_bytes();
        if s.len() != 5
            || !s
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        {
            return Err(format!(
                "SQLSTATE {:?} is not five digits or upper-case letters",
                self.sqlstate
            ));
        }
        if matches!(&s[..2], b"00" | b"01" | b"02") {
            return Err(format!(
                "SQLSTATE {} is a success, warning or no-data code, not an error",
                self.sqlstate
            ));
        }
        if self.message.trim().is_empty() {
            return Err("the message is empty".to_owned());
        }
        if self.message.len() > Deny::MAX_TEXT
            || self.hint.as_ref().is_some_and(|h| h.len() > Deny::MAX_TEXT)
        {
            return Err(format!(
                "the message or hint is longer than {} bytes",
                Deny::MAX_TEXT
            ));
        }
        Ok(())
    }
}

/// How a statement that needs approval waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalMode {
    /// The client's statement waits until it is approved (or denied, or the gateway's hold
    /// timeout passes), then runs; the client sees its normal result.
    #[default]
    Hold,
    /// The client gets an error at once (SQLSTATE `PWA01`) naming the request; once approved,
    /// the same identity re-running the same statement with the same parameters runs it once.
    Defer,
}

/// A request that a person or controller approve the statement first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Why approval is needed; shown to the approvers and the client.
    pub reason: String,
    /// Group whose members may approve (never the requester).
    pub approver_group: String,
    /// Name of the rule that asked, recorded with the request (may be empty).
    pub rule: String,
    /// Whether the client waits for the decision or is told to come back.
    pub mode: ApprovalMode,
    /// Distinct approvers needed (0 and 1 both mean one).
    pub quorum: u32,
}

impl Approval {
    /// A hold-mode request for one approver of `approver_group`.
    pub fn new(reason: impl Into<String>, approver_group: impl Into<String>) -> Self {
        Approval {
            reason: reason.into(),
            approver_group: approver_group.into(),
            rule: String::new(),
            mode: ApprovalMode::Hold,
            quorum: 1,
        }
    }

    /// Names the rule that asked.
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = rule.into();
        self
    }

    /// Sets how the client waits.
    pub fn mode(mut self, mode: ApprovalMode) -> Self {
        self.mode = mode;
        self
    }

    /// Requires `quorum` distinct approvers.
    pub fn quorum(mut self, quorum: u32) -> Self {
        self.quorum = quorum;
        self
    }
}

impl From<Approval> for Verdict {
    fn from(a: Approval) -> Self {
        Verdict::RequireApproval(a)
    }
}

/// A plugin's decision about a statement. Plugins run in order; the first deny or
/// require-approval wins, a rewrite is handed to the next plugin as its input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Let the statement run (as far as this plugin is concerned).
    #[default]
    Allow,
    /// Refuse the statement with an ErrorResponse.
    Deny(Deny),
    /// Replace the SQL text (it is analysed again for the next plugin).
    Rewrite(String),
    /// Hold the statement until someone in a group approves it.
    RequireApproval(Approval),
}

impl Verdict {
    /// Refuses with SQLSTATE `sqlstate` (e.g. [`crate::sqlstate::INSUFFICIENT_PRIVILEGE`]).
    pub fn deny(sqlstate: impl Into<String>, message: impl Into<String>) -> Self {
        Verdict::Deny(Deny::new(sqlstate, message))
    }

    /// Replaces the SQL text with `sql`.
    pub fn rewrite(sql: impl Into<String>) -> Self {
        Verdict::Rewrite(sql.into())
    }

    /// Holds the statement until a member of `approver_group` approves it.
    /// (Hold mode, one approver; build an [`Approval`] for the rule name, defer mode or a
    /// quorum.)
    pub fn require_approval(reason: impl Into<String>, approver_group: impl Into<String>) -> Self {
        Verdict::RequireApproval(Approval::new(reason, approver_group))
    }

    /// Adds a HINT line to a deny; other verdicts are returned unchanged.
    pub fn with_hint(self, hint: impl Into<String>) -> Self {
        match self {
            Verdict::Deny(deny) => Verdict::Deny(deny.with_hint(hint)),
            other => other,
        }
    }

    /// Whether this is [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }

    /// Whether this is a [`Verdict::Deny`].
    pub fn is_deny(&self) -> bool {
        matches!(self, Verdict::Deny(_))
    }

    /// Whether this is a [`Verdict::Rewrite`].
    pub fn is_rewrite(&self) -> bool {
        matches!(self, Verdict::Rewrite(_))
    }

    /// Whether this is a [`Verdict::RequireApproval`].
    pub fn is_require_approval(&self) -> bool {
        matches!(self, Verdict::RequireApproval(_))
    }

    /// The refusal, when this is a deny.
    pub fn as_deny(&self) -> Option<&Deny> {
        match self {
            Verdict::Deny(deny) => Some(deny),
            _ => None,
        }
    }

    /// The SQLSTATE, when this is a deny.
    pub fn sqlstate(&self) -> Option<&str> {
        self.as_deny().map(|d| d.sqlstate.as_str())
    }

    /// The replacement SQL, when this is a rewrite.
    pub fn rewritten_sql(&self) -> Option<&str> {
        match self {
            Verdict::Rewrite(sql) => Some(sql),
            _ => None,
        }
    }

    /// Checks what the gateway checks (see [`Deny::validate`]; a rewrite must not be empty, an
    /// approval needs a reason and a group).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Verdict::Allow => Ok(()),
            Verdict::Deny(deny) => deny.validate(),
            Verdict::Rewrite(sql) if sql.trim().is_empty() => {
                Err("the rewritten SQL is empty".to_owned())
            }
            Verdict::Rewrite(_) => Ok(()),
            Verdict::RequireApproval(a) if a.reason.trim().is_empty() => {
                Err("the approval reason is empty".to_owned())
            }
            Verdict::RequireApproval(a) if a.approver_group.trim().is_empty() => {
                Err("the approver group is empty".to_owned())
            }
            Verdict::RequireApproval(_) => Ok(()),
        }
    }
}

impl From<Deny> for Verdict {
    fn from(deny: Deny) -> Self {
        Verdict::Deny(deny)
    }
}

/// A plugin's decision about a new session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConnectVerdict {
    /// Let the session start.
    #[default]
    Allow,
    /// Refuse the session with an ErrorResponse.
    Deny(Deny),
}

impl ConnectVerdict {
    /// Refuses the session with SQLSTATE `sqlstate` (e.g. "28000", invalid authorization).
    pub fn deny(sqlstate: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectVerdict::Deny(Deny::new(sqlstate, message))
    }

    /// Adds a HINT line to a deny; `Allow` is returned unchanged.
    pub fn with_hint(self, hint: impl Into<String>) -> Self {
        match self {
            ConnectVerdict::Deny(deny) => ConnectVerdict::Deny(deny.with_hint(hint)),
            other => other,
        }
    }

    /// Whether this is [`ConnectVerdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, ConnectVerdict::Allow)
    }

    /// Whether this is a [`ConnectVerdict::Deny`].
    pub fn is_deny(&self) -> bool {
        matches!(self, ConnectVerdict::Deny(_))
    }

    /// The SQLSTATE, when this is a deny.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ConnectVerdict::Deny(d) => Some(&d.sqlstate),
            ConnectVerdict::Allow => None,
        }
    }

    /// Checks what the gateway checks (see [`Deny::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ConnectVerdict::Allow => Ok(()),
            ConnectVerdict::Deny(deny) => deny.validate(),
        }
    }
}

impl From<Deny> for ConnectVerdict {
    fn from(deny: Deny) -> Self {
        ConnectVerdict::Deny(deny)
    }
}

/// Which hooks a plugin implements; the gateway calls nothing else.
///
/// Combine in a `const` with [`Hooks::union`] (`Hooks::ON_QUERY.union(Hooks::ON_CONNECT)`), or
/// at run time with `|`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hooks(u8);

impl Hooks {
    /// No hooks: the plugin is loaded but never called.
    pub const NONE: Hooks = Hooks(0);
    /// `on_connect`: decide about new sessions.
    pub const ON_CONNECT: Hooks = Hooks(1 << 0);
    /// `on_query`: decide about statements.
    pub const ON_QUERY: Hooks = Hooks(1 << 1);
    /// `on_result_schema`: choose the result columns to see or replace.
    pub const ON_RESULT_SCHEMA: Hooks = Hooks(1 << 2);
    /// `on_batch`: inspect or replace result rows (needs `ON_RESULT_SCHEMA` to ask for columns).
    pub const ON_BATCH: Hooks = Hooks(1 << 3);
    /// Every hook.
    pub const ALL: Hooks = Hooks(0b1111);

    const NAMES: [(Hooks, &'static str); 4] = [
        (Hooks::ON_CONNECT, "ON_CONNECT"),
        (Hooks::ON_QUERY, "ON_QUERY"),
        (Hooks::ON_RESULT_SCHEMA, "ON_RESULT_SCHEMA"),
        (Hooks::ON_BATCH, "ON_BATCH"),
    ];

    /// The hooks in `self` or in `other`; usable in a `const`.
    pub const fn union(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// Whether every hook in `other` is in `self`.
    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no hook is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bits in WIT order (bit 0 = on-connect ... bit 3 = on-batch).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Hooks from WIT-ordered bits; unknown bits are dropped.
    pub const fn from_bits_truncate(bits: u8) -> Hooks {
        Hooks(bits & Hooks::ALL.0)
    }
}

impl std::ops::BitOr for Hooks {
    type Output = Hooks;
    fn bitor(self, rhs: Hooks) -> Hooks {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for Hooks {
    fn bitor_assign(&mut self, rhs: Hooks) {
        *self = self.union(rhs);
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("Hooks(NONE)");
        }
        f.write_str("Hooks(")?;
        let mut first = true;
        for (hook, name) in Hooks::NAMES {
            if self.contains(hook) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// Describes the plugin; the gateway asks once per load, before `init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The plugin's name, used in logs, audit events and errors.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The hooks the gateway will call.
    pub hooks: Hooks,
}

/// Where a result column comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnLineage {
    /// Schema of the source table.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// Source column.
    pub column: String,
    /// Derived from the statement analysis (e.g. `lower(email)`), not reported by PostgreSQL.
    pub inferred: bool,
}

impl ColumnLineage {
    /// Whether this source matches `pattern`: `column`, `table.column` or `schema.table.column`,
    /// each part `*` or a name written as in SQL (unquoted parts lower-cased).
    pub fn matches(&self, pattern: &str) -> bool {
        let parts = split_pattern(pattern);
        let actual = [
            self.schema.as_str(),
            self.table.as_str(),
            self.column.as_str(),
        ];
        if parts.is_empty() || parts.len() > 3 {
            return false;
        }
        parts
            .iter()
            .rev()
            .zip(actual.iter().rev())
            .all(|(p, a)| p.matches(a))
    }
}

/// One column of a result (RowDescription), with its lineage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Column {
    /// Position in the row, from 0; use it in [`SchemaInterest`].
    pub index: u32,
    /// The column name the client sees (an alias if the query gave one).
    pub name: String,
    /// PostgreSQL type oid (25 = text, 23 = int4, ...).
    pub type_oid: u32,
    /// The table columns this value comes from; empty for computed values without a source.
    pub lineage: Vec<ColumnLineage>,
}

impl Column {
    /// Whether any source of this column matches `pattern` (see [`ColumnLineage::matches`]); an
    /// alias cannot hide a source, since lineage does not depend on the name.
    pub fn derives_from(&self, pattern: &str) -> bool {
        self.lineage.iter().any(|l| l.matches(pattern))
    }
}

/// What a plugin wants from a result: columns to see and columns it may replace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaInterest {
    /// Indexes of columns `on_batch` reads.
    pub read: Vec<u32>,
    /// Indexes of columns `on_batch` may replace.
    pub modify: Vec<u32>,
}

impl SchemaInterest {
    /// No interest: the result is relayed without calling `on_batch` (the fast path).
    pub fn none() -> Self {
        SchemaInterest::default()
    }

    /// Whether the plugin asked for nothing.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.modify.is_empty()
    }
}

/// A plugin's answer to one Arrow batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BatchResult {
    /// Send the rows as they are.
    #[default]
    Unchanged,
    /// Replacement columns as an Arrow IPC stream.
    Replace(Vec<u8>),
    /// Stop the result with this error.
    Abort(Deny),
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// One part of a dotted name pattern, folded like a SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatternPart {
    Any,
    Exact(String),
}

impl PatternPart {
    pub(crate) fn matches(&self, actual: &str) -> bool {
        match self {
            PatternPart::Any => true,
            PatternPart::Exact(name) => name == actual,
        }
    }
}

/// `name`, `schema.name`, `schema.*` or `*`.
struct QualifiedPattern {
    schema: Option<PatternPart>,
    name: PatternPart,
    valid: bool,
}

impl QualifiedPattern {
    fn parse(pattern: &str) -> Self {
        let mut parts = split_pattern(pattern);
        match parts.len() {
            1 => QualifiedPattern {
                schema: None,
                name: parts.remove(0),
                valid: true,
            },
            2 => {
                let name = parts.remove(1);
                QualifiedPattern {
                    schema: Some(parts.remove(0)),
                    name,
                    valid: true,
                }
            }
            _ => QualifiedPattern {
                schema: None,
                name: PatternPart::Any,
                valid: false,
            },
        }
    }

    fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        if !self.valid || !self.name.matches(name) {
            return false;
        }
        match (&self.schema, schema) {
            (None, _) | (Some(_), None) => true,
            (Some(pattern), Some(actual)) => pattern.matches(actual),
        }
    }
}

/// Splits a dotted pattern, folding unquoted parts to lower case and keeping `"Quoted"` ones
/// (with `""` as an escaped quote). Returns no parts for an empty or malformed pattern.
pub(crate) fn split_pattern(pattern: &str) -> Vec<PatternPart> {
    let mut parts = Vec::new();
    let mut chars = pattern.trim().chars().peekable();
    loop {
        let mut part = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Vec::new(),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() && !quoted {
            return Vec::new();
        }
        parts.push(if !quoted && part == "*" {
            PatternPart::Any
        } else {
            PatternPart::Exact(part)
        });
        match chars.next() {
            None => return parts,
            Some('.') => continue,
            Some(_) => return Vec::new(),
        }
    }
}

/// Splits a function name as the gateway reports it (`schema.name`, parts already folded).
fn split_qualified(name: &str) -> (Option<&str>, &str) {
    match name.rsplit_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_patterns_fold_like_sql_and_fail_closed_on_missing_schema() {
        let qualified = Relation::new(Some("public"), "accounts");
        let bare = Relation::new(None, "accounts");
        let quoted = Relation::new(Some("public"), "Accounts");
        assert!(qualified.matches("public.accounts"));
        assert!(qualified.matches("PUBLIC.Accounts"));
        assert!(qualified.matches("accounts"));
        assert!(qualified.matches("public.*"));
        assert!(qualified.matches("*"));
        assert!(!qualified.matches("other.accounts"));
        assert!(bare.matches("public.accounts"));
        assert!(bare.matches("other.accounts"));
        assert!(!quoted.matches("public.accounts"));
        assert!(quoted.matches("public.\"Accounts\""));
        assert!(!qualified.matches(""));
        assert!(!qualified.matches("a.b.c"));
        assert!(!qualified.matches("public.\"accounts"));
    }

    #[test]
    fn lineage_patterns_match_from_the_column_up() {
        let l = ColumnLineage {
            schema: "public".into(),
            table: "users".into(),
            column: "email".into(),
            inferred: false,
        };
        assert!(l.matches("email"));
        assert!(l.matches("users.email"));
        assert!(l.matches("public.users.email"));
        assert!(l.matches("public.*.email"));
        assert!(!l.matches("admins.email"));
        assert!(!l.matches("x.public.users.email"));
    }

    #[test]
    fn deny_validation_rejects_what_the_gateway_rejects() {
        assert!(Deny::new("42501", "no").validate().is_ok());
        assert!(Deny::new("P0001", "no").validate().is_ok());
        assert!(Deny::new("XX", "").validate().is_err());
        assert!(Deny::new("4250a", "no").validate().is_err());
        assert!(Deny::new("00000", "ok").validate().is_err());
        assert!(Deny::new("42501", " ").validate().is_err());
        assert!(Deny::new("42501", "x".repeat(Deny::MAX_TEXT + 1))
            .validate()
            .is_err());
        assert!(Verdict::rewrite("").validate().is_err());
        assert!(Verdict::require_approval("why", "").validate().is_err());
    }

    #[test]
    fn hooks_combine_in_const_and_print_their_names() {
        const H: Hooks = Hooks::ON_QUERY.union(Hooks::ON_CONNECT);
        assert!(H.contains(Hooks::ON_QUERY) && !H.contains(Hooks::ON_BATCH));
        assert_eq!(H.bits(), 0b11);
        assert_eq!(format!("{H:?}"), "Hooks(ON_CONNECT | ON_QUERY)");
        assert_eq!(Hooks::from_bits_truncate(0xff), Hooks::ALL);
    }

    #[test]
    fn with_hint_only_changes_denies() {
        let v = Verdict::deny("42501", "no").with_hint("ask");
        assert_eq!(v.as_deny().unwrap().hint.as_deref(), Some("ask"));
        assert_eq!(Verdict::Allow.with_hint("x"), Verdict::Allow);
    }
}
