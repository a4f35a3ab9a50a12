//! The FROM items in scope at each query level, and name resolution in them.

use std::rc::Rc;

use super::items::*;
use super::*;
use crate::RelationName;

/// One item of a FROM clause.
#[derive(Debug)]
pub(super) struct FromItem {
    /// The name that qualifies its columns: the alias, else the table's, function's or CTE's.
    pub(super) refname: Option<String>,
    /// The schema written before an unaliased table, for `schema.table.column`.
    pub(super) schema: Option<String>,
    /// Reachable only qualified: the `old` and `new` rows of RETURNING.
    pub(super) qualified_only: bool,
    pub(super) kind: FromKind,
}

#[derive(Debug)]
pub(super) enum FromKind {
    /// A table or view; `renamed` is a column alias list, which renames by unknown position.
    Table {
        relation: RelationName,
        renamed: Vec<String>,
    },
    /// A subquery or CTE.
    Subquery(Rc<QueryOutput>),
    /// A function in FROM: every column derives from its arguments.
    Function {
        sources: Vec<SourceColumn>,
        columns: Vec<String>,
    },
    /// An aliased join, `(a JOIN b ON ...) AS j`.
    Join(Vec<FromItem>),
}

impl FromItem {
    pub(super) fn column(&self, col: &str, out: &mut Vec<SourceColumn>) -> Match {
        match &self.kind {
            FromKind::Table { relation, renamed } => {
                let renamed = renamed.iter().any(|r| r == col);
                out.push(SourceColumn {
                    relation: relation.clone(),
                    column: if renamed { WHOLE_ROW } else { col }.to_owned(),
                });
                if renamed {
                    Match::Certain
                } else {
                    Match::Maybe
                }
            }
            FromKind::Subquery(output) => output.column(col, out),
            FromKind::Function { sources, columns } => {
                out.extend_from_slice(sources);
                match columns.iter().any(|c| c == col) {
                    true => Match::Certain,
                    false => Match::Maybe,
                }
            }
            FromKind::Join(items) => items
                .iter()
                .fold(Match::None, |found, item| found.or(item.column(col, out))),
        }
    }

    pub(super) fn whole_row(&self, out: &mut Vec<SourceColumn>) {
        match &self.kind {
            FromKind::Table { relation, .. } => out.push(SourceColumn::whole_row(relation.clone())),
            FromKind::Subquery(output) => output.all_sources(out),
            FromKind::Function { sources, .. } => out.extend_from_slice(sources),
            FromKind::Join(items) => items.iter().for_each(|i| i.whole_row(out)),
        }
    }

    /// What `*` over this item expands to.
    pub(super) fn expand(&self, out: &mut Vec<Item>) {
        match &self.kind {
            FromKind::Table { relation, renamed } => out.push(Item::Wildcard {
                sources: vec![SourceColumn::whole_row(relation.clone())],
                by_name: renamed.is_empty(),
            }),
            FromKind::Subquery(output) => out.extend(output.items.iter().cloned()),
            FromKind::Function { sources, .. } => out.push(Item::Wildcard {
                sources: sources.clone(),
                by_name: false,
            }),
            FromKind::Join(items) => items.iter().for_each(|i| i.expand(out)),
        }
    }
}

/// What names mean at one query level: its FROM items and CTEs, then the enclosing levels'.
#[derive(Default)]
pub(super) struct Scope<'p> {
    pub(super) items: Vec<FromItem>,
    pub(super) ctes: Vec<(String, Rc<QueryOutput>)>,
    pub(super) parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    pub(super) fn child(parent: &'p Scope<'p>) -> Self {
        Scope {
            items: Vec::new(),
            ctes: Vec::new(),
            parent: Some(parent),
        }
    }

    pub(super) fn levels(&self) -> impl Iterator<Item = &Scope<'p>> {
        std::iter::successors(Some(self), |s| s.parent)
    }

    pub(super) fn cte(&self, name: &str) -> Option<&Rc<QueryOutput>> {
        self.levels()
            .find_map(|l| l.ctes.iter().rev().find(|(n, _)| n == name).map(|(_, o)| o))
    }

    /// The FROM item a qualifier (`t`, `s.t` or `db.s.t`) names, nearest level first.
    pub(super) fn find(&self, qualifier: &[String]) -> Option<&FromItem> {
        let (schema, name) = match qualifier {
            [] => return None,
            [name] => (None, name),
            [.., schema, name] => (Some(schema), name),
        };
        let matches = |i: &&FromItem, exact: bool| {
            i.refname.as_ref() == Some(name)
                && match (schema, exact) {
                    (None, _) => true,
                    (Some(s), true) => i.schema.as_ref() == Some(s),
                    // `public.t.c` may name a `t` written without its schema.
                    (Some(_), false) => {
                        i.schema.is_none() && matches!(i.kind, FromKind::Table { .. })
                    }
                }
        };
        self.levels()
            .find_map(|l| l.items.iter().find(|i| matches(i, true)))
            .or_else(|| {
                schema?;
                self.levels()
                    .find_map(|l| l.items.iter().find(|i| matches(i, false)))
            })
    }

    /// An unqualified column: at the nearest level where it is certainly found, else every
    /// candidate at every level (a table may or may not have it, and an outer query's may too).
    /// With `fallback`, a name found nowhere takes the innermost level's whole rows.
    pub(super) fn column(&self, col: &str, fallback: bool, out: &mut Vec<SourceColumn>) {
        let before = out.len();
        for level in self.levels() {
            let (mut certain, mut maybe) = (Vec::new(), Vec::new());
            let mut found_certain = false;
            for item in level.items.iter().filter(|i| !i.qualified_only) {
                let mut found = Vec::new();
                match item.column(col, &mut found) {
                    Match::Certain => {
                        found_certain = true;
                        certain.extend(found);
                    }
                    Match::Maybe => maybe.extend(found),
                    Match::None => {}
                }
            }
            // Found for sure here, PostgreSQL looks no further out; a table at an inner level
            // may still have had it.
            if found_certain {
                out.extend(certain);
                return;
            }
            out.extend(maybe);
        }
        if fallback && out.len() == before {
            if let Some(level) = self.levels().find(|l| !l.items.is_empty()) {
                level.items.iter().for_each(|i| i.whole_row(out));
            }
        }
    }

    /// A column reference `a`, `t.a`, `s.t.a`, `t.composite.field`; a bare FROM item name is also
    /// its whole row.
    pub(super) fn reference(&self, parts: &[String], out: &mut Vec<SourceColumn>) {
        match parts {
            [] => {}
            [name] => match self.find(parts) {
                Some(item) => {
                    item.whole_row(out);
                    // A column of that name, if some table has one, takes precedence.
                    self.column(name, false, out);
                }
                None => self.column(name, true, out),
            },
            _ => {
                for k in (1..parts.len()).rev().take(3) {
                    if let Some(item) = self.find(&parts[..k]) {
                        if item.column(&parts[k], out) == Match::None {
                            item.whole_row(out);
                        }
                        return;
                    }
                }
                self.column(&parts[0], true, out);
            }
        }
    }

    /// Whole rows of every FROM item at every level.
    pub(super) fn everything(&self, out: &mut Vec<SourceColumn>) {
        for level in self.levels() {
            level.items.iter().for_each(|i| i.whole_row(out));
        }
    }
}
