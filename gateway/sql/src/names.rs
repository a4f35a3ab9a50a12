//! Helpers both the statement analysis ([`crate::analyze`]) and column lineage
//! ([`crate::lineage`]) use to read names out of sqlparser's tree, folded as PostgreSQL folds
//! them, and the bound on operator chains both check before parsing.

use crate::RelationName;
use sqlparser::ast::{Ident, ObjectName};

/// sqlparser builds `a OR b OR ...` as a left-deep tree that it visits and drops recursively;
/// beyond about 20 000 links that overflows a 2 MiB thread stack (tokio's default).
pub(crate) const MAX_OPERATOR_CHAIN: usize = 5_000;

/// PostgreSQL identifier folding: unquoted names are lower-cased.
pub(crate) fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// An identifier folded, noting in `literal_dependent` when the name came from a string
/// literal (the analysis then depends on a literal's value).
pub(crate) fn fold_noting(ident: &Ident, literal_dependent: &mut bool) -> String {
    *literal_dependent |= !matches!(ident.quote_style, None | Some('"'));
    fold(ident)
}

/// The folded parts of a qualified name.
pub(crate) fn parts(name: &ObjectName, literal_dependent: &mut bool) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => fold_noting(ident, literal_dependent),
            None => part.to_string(),
        })
        .collect()
}

/// A relation from the folded parts of its name: the last is the name, the one before it the
/// schema; a database qualifier before that is dropped.
pub(crate) fn relation(mut parts: Vec<String>) -> RelationName {
    let name = parts.pop().unwrap_or_default();
    RelationName {
        schema: parts.pop(),
        name,
    }
}
