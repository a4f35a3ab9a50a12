//! Built-in policy: deny destructive, unknowable and out-of-scope statements, per identity and
//! group.
//!
//! Each session gets a *profile*: the first `[[profiles]]` entry whose `users` or `groups` name
//! it (an entry naming neither matches everyone), or the built-in default. A profile says what
//! its sessions may do; every statement of a query string is judged against it, and the first
//! rule that refuses a statement denies the whole string with SQLSTATE 42501, the rule's name
//! and a hint saying what is allowed:
//!
//! ```text
//! ERROR:  guardrails: rule "no-drop" denies DROP TABLE on public.accounts
//! HINT:  profile "default" may not drop anything through this gateway
//! ```
//!
//! The rules, in the order they are checked (each is on unless the profile allows more):
//!
//! | rule | denies | opened by |
//! | --- | --- | --- |
//! | `unknown-statement` | text the gateway could not analyse | `allow_unknown` |
//! | `do-block` | `DO` blocks | `allow_do` |
//! | `role-change` | `SET ROLE`, `SET SESSION AUTHORIZATION`, creating, altering, dropping or granting roles | `allow_role_changes` |
//! | `search-path` | `SET search_path` (it would move unqualified names) | `allow_search_path_changes` |
//! | `copy-program` | `COPY ... TO/FROM PROGRAM` | `allow_copy_program` |
//! | `server-file` | `COPY ... TO/FROM 'file'` on the server | `allow_server_files` |
//! | `call` | `CALL` of a procedure not listed | `allow_procedures` |
//! | `execute` | `EXECUTE` of a prepared statement whose `PREPARE` guardrails did not judge | `allow_unprepared_execute` |
//! | `dangerous-function` | calls of `dangerous_functions` | `allow_functions` |
//! | `no-drop`, `no-truncate` | `DROP` / `TRUNCATE` of `protected` objects (default: all) | `protected` |
//! | `read-only` | any write, and functions that write (`nextval`...) | `read_only = false` |
//! | `ddl` | CREATE, ALTER, DROP, COMMENT, GRANT, REVOKE, `SELECT INTO`, `CREATE TABLE AS` | `allow_ddl` |
//! | `write-scope` | writes outside `writable` (default: anywhere) | `writable` |
//! | `unbounded-write` | UPDATE/DELETE without WHERE, or with one that is always true | `allow_unbounded_writes` |
//!
//! Writes are what the gateway's analysis reports, so DML hidden in CTEs, MERGE, `COPY (...)
//! TO`, `EXPLAIN ANALYZE`, `SELECT INTO`, `CREATE TABLE AS`, `PREPARE` and `CREATE RULE`
//! counts, while `EXPLAIN` without ANALYZE and SQL inside string literals or comments does
//! not. Names in statements are resolved with `search_path` (the plugin has no catalog), so
//! `accounts`, `"accounts"`, `PUBLIC.Accounts` all are `public.accounts` by default.
//!
//! See `guardrails.toml` next to this crate for a complete configuration.
#![forbid(unsafe_code)]

mod prepared;
mod statement_text;

use pgward_plugin_sdk::prelude::*;
use prepared::PreparedStatements;
use statement_text::Deallocate;

/// The policy: the configuration, and the prepared statements each session made through this
/// instance.
pub struct Guardrails {
    config: Config,
    /// For sessions no configured profile names.
    builtin: Profile,
    prepared: PreparedStatements,
}

/// `guardrails.toml`. Every key is optional; an empty file gives every session the default
/// profile.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Schemas an unqualified name resolves in, in order; set it to the database's.
    pub search_path: SearchPath,
    /// Functions no profile may call unless its `allow_functions` names them.
    pub dangerous_functions: Vec<NamePattern>,
    /// Who may do what; the first entry naming a session's user or one of its groups applies.
    pub profiles: Vec<Profile>,
}

/// What the sessions of one profile may do. A key left out keeps the built-in default profile's
/// value: read, and change rows with a WHERE clause, anywhere; nothing else.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Profile {
    /// Shown in hints and logs.
    pub name: String,
    /// User names this profile is for.
    pub users: Vec<String>,
    /// Groups this profile is for; with `users` also empty, the profile is for everyone.
    pub groups: Vec<String>,
    /// No writes of any kind.
    pub read_only: bool,
    /// Where writes (DML and DDL) may go: `schema.table`, `schema.*`, `table`, `*`.
    pub writable: Vec<NamePattern>,
    /// Objects that may not be dropped or truncated, even with `allow_ddl`.
    pub protected: Vec<NamePattern>,
    /// CREATE, ALTER, DROP (of unprotected objects), COMMENT, GRANT, REVOKE, `SELECT INTO`.
    pub allow_ddl: bool,
    /// UPDATE and DELETE without a WHERE clause, or with one that is always true.
    pub allow_unbounded_writes: bool,
    /// Exceptions to `dangerous_functions`.
    pub allow_functions: Vec<NamePattern>,
    /// Procedures that may be CALLed.
    pub allow_procedures: Vec<NamePattern>,
    /// SET ROLE, SET SESSION AUTHORIZATION and role management.
    pub allow_role_changes: bool,
    /// `SET search_path`; unqualified names of this profile then count as in any schema.
    pub allow_search_path_changes: bool,
    /// `COPY ... PROGRAM`, which runs a shell command on the database server.
    pub allow_copy_program: bool,
    /// `COPY` to or from a file on the database server.
    pub allow_server_files: bool,
    /// Statements the gateway could not analyse (nothing about them is known).
    pub allow_unknown: bool,
    /// `DO` blocks (procedural code whose statements are not analysed).
    pub allow_do: bool,
    /// `EXECUTE` of prepared statements guardrails did not see prepared.
    pub allow_unprepared_execute: bool,
}

impl Default for Profile {
    fn default() -> Self {
        let everything = || vec![NamePattern::parse("*").expect("valid pattern")];
        Profile {
            name: String::new(),
            users: Vec::new(),
            groups: Vec::new(),
            read_only: false,
            writable: everything(),
            protected: everything(),
            allow_ddl: false,
            allow_unbounded_writes: false,
            allow_functions: Vec::new(),
            allow_procedures: Vec::new(),
            allow_role_changes: false,
            allow_search_path_changes: false,
            allow_copy_program: false,
            allow_server_files: false,
            allow_unknown: false,
            allow_do: false,
            allow_unprepared_execute: false,
        }
    }
}

impl Profile {
    /// The profile of sessions no `[[profiles]]` entry names.
    pub fn builtin() -> Self {
        Profile {
            name: "default".to_owned(),
            ..Profile::default()
        }
    }
}

/// Functions that act outside the statement's own data: other sessions, the server's files
/// and configuration, other databases, and `set_config`, which can change the role.
pub const DANGEROUS_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "lo_import",
    "lo_export",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "dblink_open",
    "set_config",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_logical_emit_message",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
];

/// Built-in functions that write, so `read_only` profiles may not call them.
const WRITING_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lowrite",
    "lo_truncate",
];

impl Default for Config {
    fn default() -> Self {
        Config {
            search_path: SearchPath::default(),
            dangerous_functions: DANGEROUS_FUNCTIONS
                .iter()
                .map(|f| NamePattern::parse(f).expect("valid pattern"))
                .collect(),
            profiles: Vec::new(),
        }
    }
}

/// The rules, named as in deny messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Text the gateway could not analyse.
    UnknownStatement,
    /// A `DO` block.
    DoBlock,
    /// A change of the session's role, or of roles.
    RoleChange,
    /// `SET search_path`.
    SearchPath,
    /// `COPY ... PROGRAM`.
    CopyProgram,
    /// `COPY` of a server-side file.
    ServerFile,
    /// `CALL` of a procedure not on the allow list.
    Call,
    /// `EXECUTE` of a prepared statement not judged at `PREPARE`.
    Execute,
    /// A call of a dangerous function.
    DangerousFunction,
    /// `DROP` of a protected object.
    NoDrop,
    /// `TRUNCATE` of a protected table.
    NoTruncate,
    /// A write by a read-only profile.
    ReadOnly,
    /// DDL without DDL rights.
    Ddl,
    /// A write outside the profile's `writable` objects.
    WriteScope,
    /// UPDATE or DELETE of every row.
    UnboundedWrite,
}

impl Rule {
    /// The name in deny messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            Rule::UnknownStatement => "unknown-statement",
            Rule::DoBlock => "do-block",
            Rule::RoleChange => "role-change",
            Rule::SearchPath => "search-path",
            Rule::CopyProgram => "copy-program",
            Rule::ServerFile => "server-file",
            Rule::Call => "call",
            Rule::Execute => "execute",
            Rule::DangerousFunction => "dangerous-function",
            Rule::NoDrop => "no-drop",
            Rule::NoTruncate => "no-truncate",
            Rule::ReadOnly => "read-only",
            Rule::Ddl => "ddl",
            Rule::WriteScope => "write-scope",
            Rule::UnboundedWrite => "unbounded-write",
        }
    }
}

/// Why one statement is refused.
struct Refusal {
    rule: Rule,
    /// What was refused: `DROP TABLE on public.accounts`.
    what: String,
    /// What is allowed instead.
    hint: String,
}

impl Refusal {
    fn new(rule: Rule, what: impl Into<String>, hint: impl Into<String>) -> Self {
        Refusal {
            rule,
            what: what.into(),
            hint: hint.into(),
        }
    }
}

impl Plugin for Guardrails {
    const NAME: &'static str = "guardrails";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_QUERY;

    fn init(text: &str) -> Result<Self, String> {
        let config: Config = config(text)?;
        for (i, p) in config.profiles.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(format!("profiles[{i}]: name is required"));
            }
            if config.profiles[..i].iter().any(|q| q.name == p.name) {
                return Err(format!("profiles[{i}]: name {:?} is used twice", p.name));
            }
            if p.read_only && p.allow_ddl {
                return Err(format!(
                    "profile {:?}: read_only and allow_ddl contradict each other",
                    p.name
                ));
            }
        }
        log(
            Level::Info,
            format!(
                "{} profiles, {} dangerous functions, search_path {}",
                config.profiles.len(),
                config.dangerous_functions.len(),
                config.search_path.schemas().join(", ")
            ),
        );
        Ok(Guardrails {
            config,
            builtin: Profile::builtin(),
            prepared: PreparedStatements::default(),
        })
    }

    fn on_query(&mut self, session: &Session, query: &Query) -> Verdict {
        // The verdict holds for the statement's shape and the identity (its profile) unless it
        // reads or changes the prepared statements this plugin tracks per session.
        if !query
            .statements
            .iter()
            .any(|s| tracks_session_state(s.kind))
        {
            cache_verdict();
        }
        let profile = self.profile(session);
        let texts = statement_text::split(&query.fingerprint, query.statements.len());
        // Names prepared earlier in this string, for an EXECUTE later in it.
        let mut preparing = Vec::new();
        for (i, statement) in query.statements.iter().enumerate() {
            let text = texts.as_ref().map(|t| t[i]);
            let verdict = self.judge(profile, session, statement, text, &preparing);
            if let (Ok(()), StatementKind::Prepare) = (&verdict, statement.kind) {
                preparing.extend(text.and_then(statement_text::prepared_name));
            }
            if let Err(r) = verdict {
                log(
                    Level::Info,
                    format!(
                        "rule {} denied a statement of {} (profile {})",
                        r.rule.name(),
                        session.user(),
                        profile.name
                    ),
                );
                return Verdict::deny(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("guardrails: rule \"{}\" denies {}", r.rule.name(), r.what),
                )
                .with_hint(r.hint);
            }
        }
        // Every statement passed, so the string runs: remember what it prepares, forget what it
        // frees, in order.
        for (i, statement) in query.statements.iter().enumerate() {
            let Some(text) = texts.as_ref().map(|t| t[i]) else {
                break;
            };
            match statement.kind {
                StatementKind::Prepare => {
                    if let Some(name) = statement_text::prepared_name(text) {
                        self.prepared.insert(session.id, name);
                    }
                }
                StatementKind::Deallocate | StatementKind::Utility => {
                    match statement_text::deallocated(text) {
                        Some(Deallocate::Name(name)) => self.prepared.remove(session.id, &name),
                        Some(Deallocate::All) => self.prepared.clear(session.id),
                        None => {}
                    }
                }
                _ => {}
            }
        }
        Verdict::Allow
    }
}

/// Statements whose verdict depends on, or changes, this session's prepared statements (an
/// EXPLAIN may run an EXECUTE; DISCARD ALL is a utility statement): judged every time.
fn tracks_session_state(kind: StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Prepare
            | StatementKind::Execute
            | StatementKind::Deallocate
            | StatementKind::Explain
            | StatementKind::Utility
            | StatementKind::Unknown
    )
}

impl Guardrails {
    /// The first profile naming the session's user or one of its groups, or naming no one;
    /// else the built-in one.
    fn profile(&self, session: &Session) -> &Profile {
        let configured = self.config.profiles.iter().find(|p| {
            (p.users.is_empty() && p.groups.is_empty())
                || p.users.iter().any(|u| u == session.user())
                || session.in_any_group(&p.groups)
        });
        configured.unwrap_or(&self.builtin)
    }

    /// Judges one statement: each rule in the documented order. `text` is the statement's
    /// fingerprint, when known, and `preparing` the names that statements before it in the same
    /// string prepare.
    fn judge(
        &self,
        p: &Profile,
        session: &Session,
        s: &Statement,
        text: Option<&str>,
        preparing: &[String],
    ) -> Result<(), Refusal> {
        if s.is_unknown() {
            // Nothing else about it is known, so there is nothing else to judge.
            return judge_unknown(p, s);
        }
        judge_session_changes(p, s, text, &self.config.search_path)?;
        judge_copy(p, s)?;
        self.judge_call(p, s)?;
        self.judge_execute(p, session, s, text, preparing)?;
        self.judge_functions(p, s)?;
        for w in &s.writes {
            self.judge_write(p, s, w)?;
        }
        if s.where_always_true && !p.allow_unbounded_writes {
            return Err(Refusal::new(
                Rule::UnboundedWrite,
                format!(
                    "{} with a WHERE clause that is always true",
                    s.command_or("a statement")
                ),
                "write a WHERE clause that selects the rows to change",
            ));
        }
        // DDL whose target the analysis does not name (ALTER DEFAULT PRIVILEGES, CREATE
        // OPERATOR...).
        let ddl = matches!(
            s.kind,
            StatementKind::Ddl | StatementKind::Grant | StatementKind::Revoke
        ) && !s.is_command("TRUNCATE TABLE");
        if ddl && !p.allow_ddl {
            return Err(Refusal::new(Rule::Ddl, s.command.clone(), self.ddl_hint(p)));
        }
        Ok(())
    }

    /// `CALL` runs a procedure whose statements nobody checks: only listed ones.
    fn judge_call(&self, p: &Profile, s: &Statement) -> Result<(), Refusal> {
        if s.kind != StatementKind::Call {
            return Ok(());
        }
        // The procedure is the first function the analysis lists; the rest are in arguments.
        let procedure = s.functions.first().map(|f| Relation::from_qualified(f));
        let allowed = procedure.as_ref().is_some_and(|r| {
            self.candidates(p, r, ObjectKind::Procedure)
                .iter()
                .all(|c| allowed_by(&p.allow_procedures, c))
        });
        if allowed {
            return Ok(());
        }
        let name = procedure.map_or("a procedure".to_owned(), |r| r.to_string());
        let hint = match p.allow_procedures.is_empty() {
            true => format!("profile \"{}\" may call no procedures", p.name),
            false => format!(
                "profile \"{}\" may call only {}",
                p.name,
                list(&p.allow_procedures)
            ),
        };
        Err(Refusal::new(Rule::Call, format!("CALL {name}"), hint))
    }

    /// `EXECUTE name` runs what `PREPARE name` held; it was checked only if guardrails saw it.
    fn judge_execute(
        &self,
        p: &Profile,
        session: &Session,
        s: &Statement,
        text: Option<&str>,
        preparing: &[String],
    ) -> Result<(), Refusal> {
        let executes = match s.kind {
            StatementKind::Execute => true,
            // EXPLAIN ANALYZE runs what it explains; the analysis does not look into EXECUTE.
            StatementKind::Explain if s.explain_analyze => {
                text.is_none_or(|t| statement_text::executed_name(t).is_some())
            }
            _ => false,
        };
        if !executes || p.allow_unprepared_execute {
            return Ok(());
        }
        let name = text.and_then(statement_text::executed_name);
        let checked = name.as_deref().is_some_and(|n| {
            self.prepared.contains(session.id, n) || preparing.iter().any(|p| p == n)
        });
        if checked {
            return Ok(());
        }
        Err(Refusal::new(
            Rule::Execute,
            format!(
                "EXECUTE {}, whose PREPARE was not checked",
                name.as_deref().unwrap_or("of a prepared statement")
            ),
            "PREPARE the statement in this session through the gateway, so it is checked, \
             then EXECUTE it",
        ))
    }

    /// Functions that reach outside the statement's data, and for read-only profiles those
    /// that write.
    fn judge_functions(&self, p: &Profile, s: &Statement) -> Result<(), Refusal> {
        for f in &s.functions {
            let dangerous = self
                .config
                .dangerous_functions
                .iter()
                .any(|d| d.matches_function(f))
                && !p.allow_functions.iter().any(|a| a.matches_function(f));
            if dangerous {
                return Err(Refusal::new(
                    Rule::DangerousFunction,
                    format!("calling {f}"),
                    format!(
                        "{f} reaches outside this statement's data (other sessions, server \
                         files, configuration); other functions may be called"
                    ),
                ));
            }
            if p.read_only && WRITING_FUNCTIONS.contains(&unqualified(f)) {
                return Err(Refusal::new(
                    Rule::ReadOnly,
                    format!("calling {f}, which writes"),
                    read_only_hint(p),
                ));
            }
        }
        Ok(())
    }

    fn judge_write(&self, p: &Profile, s: &Statement, w: &Write) -> Result<(), Refusal> {
        use WriteAction as A;
        let candidates = self.candidates(p, &w.relation, w.object);
        let what = |relation: Option<&Relation>| w.describe(s, relation.unwrap_or(&w.relation));

        if matches!(w.action, A::Drop | A::Truncate) && self.protects(p, w, &candidates) {
            let protected = candidates
                .iter()
                .find(|c| p.protected.iter().any(|x| x.matches(c)));
            let (rule, verb) = match w.action {
                A::Drop => (Rule::NoDrop, "drop"),
                _ => (Rule::NoTruncate, "truncate"),
            };
            let mut hint = match p.protected.iter().any(NamePattern::is_everything) {
                true => format!(
                    "profile \"{}\" may not {verb} anything through this gateway",
                    p.name
                ),
                false => format!(
                    "profile \"{}\" may {verb} anything except {}",
                    p.name,
                    list(&p.protected)
                ),
            };
            if w.action == A::Truncate {
                hint.push_str("; DELETE with a WHERE clause removes chosen rows");
            }
            return Err(Refusal::new(
                rule,
                what(protected.or(candidates.first())),
                hint,
            ));
        }
        if p.read_only {
            return Err(Refusal::new(
                Rule::ReadOnly,
                what(candidates.first()),
                read_only_hint(p),
            ));
        }
        let ddl = matches!(
            w.action,
            A::Create
                | A::CreateIndex
                | A::Alter
                | A::Drop
                | A::Comment
                | A::Grant
                | A::Revoke
                | A::SelectInto
        );
        if ddl && !p.allow_ddl {
            return Err(Refusal::new(
                Rule::Ddl,
                what(candidates.first()),
                self.ddl_hint(p),
            ));
        }
        if !self.in_scope(p, w, &candidates) {
            let outside = candidates.iter().find(|c| !allowed_by(&p.writable, c));
            return Err(Refusal::new(
                Rule::WriteScope,
                what(outside.or(candidates.first())),
                format!(
                    "profile \"{}\" may write only to {}",
                    p.name,
                    list(&p.writable)
                ),
            ));
        }
        if w.is_unbounded() && !p.allow_unbounded_writes {
            return Err(Refusal::new(
                Rule::UnboundedWrite,
                format!("{} without a WHERE clause", what(candidates.first())),
                "add a WHERE clause that selects the rows to change",
            ));
        }
        Ok(())
    }

    /// Where `relation`, an object of kind `object`, may point for this profile: itself when
    /// schema-qualified or not in a schema (a schema, role...), otherwise the name in each
    /// schema of the search path. A profile that may change the search path keeps the name
    /// unqualified: then it matches patterns in any schema.
    fn candidates(&self, p: &Profile, relation: &Relation, object: ObjectKind) -> Vec<Relation> {
        let in_schema = !matches!(
            object,
            ObjectKind::Schema
                | ObjectKind::Database
                | ObjectKind::Role
                | ObjectKind::Extension
                | ObjectKind::Server
        );
        match in_schema && !p.allow_search_path_changes {
            true => self.config.search_path.candidates(relation),
            false => vec![relation.clone()],
        }
    }

    /// Whether DROP or TRUNCATE of `w` reaches a protected object.
    fn protects(&self, p: &Profile, w: &Write, candidates: &[Relation]) -> bool {
        match w.object {
            // DROP SCHEMA ... CASCADE removes everything in it.
            ObjectKind::Schema => p
                .protected
                .iter()
                .any(|x| x.touches_schema(&w.relation.name)),
            // DROP DATABASE removes everything; roles, extensions and servers live outside
            // schemas, so only a protection of everything covers them.
            ObjectKind::Database => !p.protected.is_empty(),
            ObjectKind::Role | ObjectKind::Extension | ObjectKind::Server => {
                p.protected.iter().any(NamePattern::is_everything)
            }
            _ => candidates
                .iter()
                .any(|c| p.protected.iter().any(|x| x.matches(c))),
        }
    }

    /// Whether every object `w` may write is in the profile's `writable` list.
    fn in_scope(&self, p: &Profile, w: &Write, candidates: &[Relation]) -> bool {
        match w.object {
            ObjectKind::Schema => p.writable.iter().any(|x| x.covers_schema(&w.relation.name)),
            ObjectKind::Database
            | ObjectKind::Role
            | ObjectKind::Extension
            | ObjectKind::Server => p.writable.iter().any(NamePattern::is_everything),
            _ => candidates.iter().all(|c| allowed_by(&p.writable, c)),
        }
    }

    fn ddl_hint(&self, p: &Profile) -> String {
        let who: Vec<String> = self
            .config
            .profiles
            .iter()
            .filter(|q| q.allow_ddl)
            .map(|q| {
                let mut names: Vec<&str> = q.groups.iter().map(String::as_str).collect();
                names.extend(q.users.iter().map(String::as_str));
                match names.is_empty() {
                    true => format!("profile \"{}\"", q.name),
                    false => format!("{} (profile \"{}\")", names.join(", "), q.name),
                }
            })
            .collect();
        match who.is_empty() {
            true => format!(
                "profile \"{}\" has no DDL rights, and no profile has them through this gateway",
                p.name
            ),
            false => format!(
                "profile \"{}\" has no DDL rights; DDL is allowed for {}",
                p.name,
                who.join("; ")
            ),
        }
    }
}

/// Text the gateway could not analyse, and `DO` blocks, whose statements it never sees.
fn judge_unknown(p: &Profile, s: &Statement) -> Result<(), Refusal> {
    if s.is_command("DO") {
        if p.allow_do {
            return Ok(());
        }
        let mut hint =
            "the statements inside a DO block cannot be checked; send them as statements"
                .to_owned();
        if !p.allow_procedures.is_empty() {
            hint.push_str(&format!(", or CALL one of {}", list(&p.allow_procedures)));
        }
        return Err(Refusal::new(Rule::DoBlock, "a DO block", hint));
    }
    if p.allow_unknown {
        return Ok(());
    }
    Err(Refusal::new(
        Rule::UnknownStatement,
        format!(
            "{}, which the gateway could not analyse",
            s.command_or("a statement")
        ),
        format!(
            "statements the gateway can analyse are checked and may run (`pgward explain` shows \
             its analysis); this one: {}",
            s.unknown.as_deref().unwrap_or("unknown")
        ),
    ))
}

/// The session's identity and its search path stay what the gateway and the config say.
fn judge_session_changes(
    p: &Profile,
    s: &Statement,
    text: Option<&str>,
    search_path: &SearchPath,
) -> Result<(), Refusal> {
    let role_write = s.writes.iter().find(|w| w.object == ObjectKind::Role);
    let sets_role = matches!(s.command.as_str(), "SET ROLE" | "SET SESSION AUTHORIZATION");
    if (sets_role || role_write.is_some()) && !p.allow_role_changes {
        let what = match role_write {
            Some(w) if matches!(w.action, WriteAction::Grant | WriteAction::Revoke) => {
                format!("{} of role {}", w.command(), w.relation)
            }
            Some(w) => format!("{} {}", w.command(), w.relation),
            None => s.command.clone(),
        };
        return Err(Refusal::new(
            Rule::RoleChange,
            what,
            "a session keeps the identity the gateway verified; connect as the identity you need",
        ));
    }
    if s.kind == StatementKind::Set && s.is_command("SET") && !p.allow_search_path_changes {
        // Which parameter a SET changes is not in the analysis; read it from the fingerprint,
        // and when that fails, assume the worst.
        let parameter = text.and_then(statement_text::set_parameter);
        if parameter.as_deref().is_none_or(|n| n == "search_path") {
            return Err(Refusal::new(
                Rule::SearchPath,
                "SET search_path",
                format!(
                    "schema-qualify names instead (schema.table); unqualified names resolve in {}",
                    search_path.schemas().join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// COPY that runs a program on the database server or touches its files.
fn judge_copy(p: &Profile, s: &Statement) -> Result<(), Refusal> {
    let Some(copy) = s.copy else {
        return Ok(());
    };
    let through_client = "use COPY ... FROM STDIN or TO STDOUT (psql's \\copy) to move data \
                          through the connection";
    if copy.program && !p.allow_copy_program {
        return Err(Refusal::new(
            Rule::CopyProgram,
            "COPY with PROGRAM, which runs a command on the database server",
            through_client,
        ));
    }
    if copy.file && !p.allow_server_files {
        return Err(Refusal::new(
            Rule::ServerFile,
            "COPY of a file on the database server",
            through_client,
        ));
    }
    Ok(())
}

/// Whether `relation` is named by one of `patterns`; a name whose schema cannot be known must
/// be named in every schema.
fn allowed_by(patterns: &[NamePattern], relation: &Relation) -> bool {
    match relation.schema {
        Some(_) => patterns.iter().any(|p| p.matches(relation)),
        None => patterns
            .iter()
            .any(|p| p.matches_everywhere(&relation.name)),
    }
}

fn read_only_hint(p: &Profile) -> String {
    format!(
        "profile \"{}\" is read-only: SELECT, SHOW, EXPLAIN without ANALYZE, COPY ... TO STDOUT \
         and transaction control are allowed",
        p.name
    )
}

fn unqualified(function: &str) -> &str {
    function.rsplit_once('.').map_or(function, |(_, name)| name)
}

fn list(patterns: &[NamePattern]) -> String {
    match patterns.is_empty() {
        true => "nothing".to_owned(),
        false => patterns
            .iter()
            .map(NamePattern::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

export_plugin!(Guardrails);

#[cfg(test)]
mod tests;
