//! The gateway's analysis, as the WIT types plugins receive.

use super::wit;
use pgward_sql as sql;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

thread_local! {
    /// Converted queries by the address of the cached analysis they came from. The `Weak` keeps
    /// that allocation from being reused while the entry exists, so an address names one
    /// analysis; a statement shape is converted once per thread, not once per call.
    static CONVERTED: RefCell<HashMap<usize, (Weak<sql::Analysis>, wit::Query)>> =
        RefCell::new(HashMap::new());
}

/// Most entries kept per thread (analyses of texts that were not cacheable come and go).
const MAX_CONVERTED: usize = 512;

/// Runs `f` with the `query` record for `text`, converting `analysis` only the first time this
/// thread sees it.
pub fn with_query<R>(
    text: &str,
    analysis: &Arc<sql::Analysis>,
    protocol: wit::Protocol,
    f: impl FnOnce(&wit::Query) -> R,
) -> R {
    CONVERTED.with(|cell| {
        let Ok(mut map) = cell.try_borrow_mut() else {
            return f(&query(text, analysis, protocol));
        };
        let key = Arc::as_ptr(analysis) as usize;
        let fresh = map
            .get(&key)
            .is_some_and(|(w, _)| w.upgrade().is_some_and(|a| Arc::ptr_eq(&a, analysis)));
        if !fresh {
            if map.len() >= MAX_CONVERTED {
                map.clear();
            }
            map.insert(
                key,
                (Arc::downgrade(analysis), query("", analysis, protocol)),
            );
        }
        match map.get_mut(&key) {
            Some((_, q)) => {
                q.sql.clear();
                q.sql.push_str(text);
                q.protocol = protocol;
                f(q)
            }
            None => f(&query(text, analysis, protocol)),
        }
    })
}

/// The `query` record for one statement text.
pub fn query(text: &str, analysis: &sql::Analysis, protocol: wit::Protocol) -> wit::Query {
    wit::Query {
        sql: text.to_owned(),
        fingerprint: analysis.fingerprint.clone(),
        fingerprint_id: analysis.fingerprint_id.clone(),
        statements: analysis.statements.iter().map(statement).collect(),
        protocol,
    }
}

fn relation(r: &sql::RelationName) -> wit::Relation {
    wit::Relation {
        schema: r.schema.clone(),
        name: r.name.clone(),
    }
}

fn statement(s: &sql::StatementAnalysis) -> wit::Statement {
    wit::Statement {
        kind: kind(s.kind),
        command: s.command.clone(),
        reads: s.reads.iter().map(relation).collect(),
        writes: s
            .writes
            .iter()
            .map(|w| wit::Write {
                relation: relation(&w.relation),
                action: action(w.action),
                object: object(w.object),
                has_where: w.has_where,
            })
            .collect(),
        functions: s.functions.clone(),
        has_where: s.has_where,
        where_always_true: s.where_always_true,
        explain_analyze: s.explain_analyze,
        copy: s.copy.as_ref().map(|c| wit::CopyInfo {
            direction: match c.direction {
                sql::CopyDirection::From => wit::CopyDirection::From,
                sql::CopyDirection::To => wit::CopyDirection::To,
            },
            query: matches!(c.target, sql::CopyTargetKind::Query),
            program: c.program,
            file: c.file,
            stdio: c.stdio,
        }),
        unknown: s.unknown.clone(),
    }
}

fn kind(k: sql::StatementKind) -> wit::StatementKind {
    use sql::StatementKind as S;
    use wit::StatementKind as W;
    match k {
        S::Select => W::Select,
        S::Insert => W::Insert,
        S::Update => W::Update,
        S::Delete => W::Delete,
        S::Merge => W::Merge,
        S::Copy => W::Copy,
        S::Ddl => W::Ddl,
        S::Transaction => W::Transaction,
        S::Set => W::Set,
        S::Show => W::Show,
        S::Explain => W::Explain,
        S::Prepare => W::Prepare,
        S::Execute => W::Execute,
        S::Deallocate => W::Deallocate,
        S::Call => W::Call,
        S::Grant => W::Grant,
        S::Revoke => W::Revoke,
        S::Utility => W::Utility,
        S::Unknown => W::Unknown,
    }
}

fn action(a: sql::WriteAction) -> wit::WriteAction {
    use sql::WriteAction as S;
    use wit::WriteAction as W;
    match a {
        S::Insert => W::Insert,
        S::Update => W::Update,
        S::Delete => W::Delete,
        S::Merge => W::Merge,
        S::CopyFrom => W::CopyFrom,
        S::SelectInto => W::SelectInto,
        S::Create => W::Create,
        S::CreateIndex => W::CreateIndex,
        S::Alter => W::Alter,
        S::Drop => W::Drop,
        S::Truncate => W::Truncate,
        S::Comment => W::Comment,
        S::Grant => W::Grant,
        S::Revoke => W::Revoke,
        S::Refresh => W::Refresh,
        S::Lock => W::Lock,
        S::Maintain => W::Maintain,
    }
}

fn object(o: sql::ObjectKind) -> wit::ObjectKind {
    use sql::ObjectKind as S;
    use wit::ObjectKind as W;
    match o {
        S::Table => W::Table,
        S::View => W::View,
        S::MaterializedView => W::MaterializedView,
        S::ForeignTable => W::ForeignTable,
        S::Index => W::Index,
        S::Sequence => W::Sequence,
        S::Schema => W::Schema,
        S::Database => W::Database,
        S::Function => W::Function,
        S::Procedure => W::Procedure,
        S::Type => W::Type,
        S::Domain => W::Domain,
        S::Extension => W::Extension,
        S::Role => W::Role,
        S::Trigger => W::Trigger,
        S::Server => W::Server,
        S::Other => W::Other,
    }
}

/// The `session` record plugins see.
pub fn session(
    id: u64,
    identity: &crate::auth::Identity,
    database: &str,
    client_addr: &str,
    application_name: &str,
) -> wit::Session {
    wit::Session {
        id,
        identity: wit::Identity {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            proven_by: {
                let mut p = wit::Proofs::empty();
                for (on, flag) in [
                    (identity.proofs.password, wit::Proofs::PASSWORD),
                    (identity.proofs.certificate, wit::Proofs::CERTIFICATE),
                    (identity.proofs.token, wit::Proofs::TOKEN),
                ] {
                    if on {
                        p |= flag;
                    }
                }
                p
            },
            token_issuer: identity.token_issuer.clone(),
            certificate_subject: identity.certificate_subject.clone(),
            upstream_role: identity.upstream_role.clone(),
        },
        database: database.to_owned(),
        client_addr: client_addr.to_owned(),
        application_name: application_name.to_owned(),
    }
}
