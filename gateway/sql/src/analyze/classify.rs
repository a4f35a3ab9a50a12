//! A statement's kind and command, and what its top level says (WHERE, COPY).

use sqlparser::ast::{
    CopySource, CopyTarget, ObjectName, ObjectNamePart, Reset, Set, SetExpr, Statement,
};

use crate::lexer;
use crate::names::fold;
use crate::{CopyDirection, CopyInfo, CopyTargetKind, LexOptions, StatementKind};

pub(super) fn classify(
    s: &Statement,
    sql: &str,
    opts: LexOptions,
) -> Option<(StatementKind, String)> {
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

pub(super) fn top_level_where(s: &Statement) -> Option<bool> {
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

pub(super) fn copy_info(s: &Statement) -> Option<CopyInfo> {
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
