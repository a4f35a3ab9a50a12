//! Output-column lineage: which source columns each column a statement returns may derive from.
//!
//! A RowDescription names a table column only for a plain column reference; anything computed
//! (`lower(email)`, a subquery, a CTE, a union) arrives anonymous. This module infers, from the
//! statement alone and without the catalog, a superset of the source columns behind each output
//! column. Wherever the text leaves a choice open (an unqualified column with several tables in
//! scope, a column inside a subquery's `*`, an expression too deep to follow) every candidate is
//! reported: masking too much is a nuisance, masking too little is a leak.
//!
//! Not seen here: what a function reads on its own (a SQL function that selects from a table
//! reports only its arguments), and what a view expands to (the gateway resolves views with
//! [`infer_output_lineage`] on their definitions).

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::rc::Rc;

use serde::Serialize;
use sqlparser::ast::{
    AccessExpr, CopySource, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, OutputClause, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor, TableObject,
    TableWithJoins, UpdateTableFromKind, Values, Visit, Visitor, With,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::names::{self, MAX_OPERATOR_CHAIN};
use crate::{lexer, LexOptions, RelationName};

/// Nesting of queries and expressions followed before a subtree is over-approximated.
const MAX_DEPTH: u32 = 64;
/// Queries and expressions analysed per statement before the rest is over-approximated; bounds
/// the work of recursive CTEs nested in recursive CTEs.
const MAX_STEPS: u32 = 100_000;
/// Rounds of a `WITH RECURSIVE` fixpoint before its CTEs are over-approximated.
const MAX_RECURSIVE_ROUNDS: usize = 8;
/// The column of a whole-row source.
const WHOLE_ROW: &str = "*";

/// A source column an output may derive from. `column == "*"` means the whole row of the relation
/// (a whole-row reference such as `c`, `c.*` inside an expression, `row_to_json(c)`), i.e. every column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SourceColumn {
    /// The table or view, as written (a CTE or subquery is never named here).
    pub relation: RelationName,
    /// The column name with PostgreSQL case folding, or `*` for every column.
    pub column: String,
}

impl SourceColumn {
    /// Whether this stands for every column of `relation`.
    pub fn is_whole_row(&self) -> bool {
        self.column == WHOLE_ROW
    }

    fn whole_row(relation: RelationName) -> Self {
        SourceColumn {
            relation,
            column: WHOLE_ROW.to_owned(),
        }
    }
}

/// One item of the statement's output list, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "sources", rename_all = "snake_case")]
pub enum OutputItem {
    /// One output column, derived from these sources (empty: a constant or parameter).
    Column(Vec<SourceColumn>),
    /// A `*` or `t.*` in the select list: expands to an unknown number of columns, each derived from some of these sources.
    Wildcard(Vec<SourceColumn>),
}

impl OutputItem {
    /// The sources of this item.
    pub fn sources(&self) -> &[SourceColumn] {
        match self {
            OutputItem::Column(s) | OutputItem::Wildcard(s) => s,
        }
    }
}

/// The source columns behind each column a statement returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputLineage {
    /// The output list in order; a wildcard item stands for any number of columns.
    pub items: Vec<OutputItem>,
}

impl OutputLineage {
    /// The sources of each of `n` result columns (the RowDescription's count): items before a single wildcard map
    /// from the front, items after it from the back, the middle columns get the wildcard's sources. With more than
    /// one wildcard, or when the counts cannot match, every column gets the union of all sources (safe over-approximation).
    pub fn columns(&self, n: usize) -> Vec<Vec<SourceColumn>> {
        let wildcards: Vec<bool> = self
            .items
            .iter()
            .map(|i| matches!(i, OutputItem::Wildcard(_)))
            .collect();
        match spread(&wildcards, n) {
            Some(map) => map
                .into_iter()
                .map(|i| self.items[i].sources().to_vec())
                .collect(),
            None => vec![self.all_sources(); n],
        }
    }

    /// Union of every source of every item.
    pub fn all_sources(&self) -> Vec<SourceColumn> {
        let mut all: Vec<SourceColumn> = self
            .items
            .iter()
            .flat_map(|i| i.sources().iter().cloned())
            .collect();
        tidy(&mut all);
        all
    }
}

/// Infers the output lineage of one SQL statement text (used by the gateway for view definitions from
/// `pg_get_viewdef`). `None` when the text does not parse or is not a row-returning statement.
pub fn infer_output_lineage(sql: &str) -> Option<OutputLineage> {
    // sqlparser builds operator chains as deep trees that are dropped recursively.
    if lexer::longest_operator_chain(sql, LexOptions::default()) > MAX_OPERATOR_CHAIN {
        return None;
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [statement] = statements.as_slice() else {
        return None;
    };
    statement_output(statement).0
}

/// The output lineage of a parsed statement, and whether it was read from a string literal (a
/// name sqlparser took from `'...'`), which the fingerprint does not keep.
pub(crate) fn statement_output(statement: &Statement) -> (Option<OutputLineage>, bool) {
    let mut builder = Builder {
        steps: MAX_STEPS,
        literal_dependent: false,
    };
    let output = builder
        .statement(statement, &Scope::default())
        .map(QueryOutput::into_lineage);
    (output, builder.literal_dependent)
}

/// For each of `n` result columns, the index of the item it comes from; `None` when the items
/// cannot be laid over `n` columns (more than one wildcard, or counts that disagree).
fn spread(is_wildcard: &[bool], n: usize) -> Option<Vec<usize>> {
    let len = is_wildcard.len();
    let mut wildcards = is_wildcard.iter().enumerate().filter(|(_, w)| **w);
    match (wildcards.next(), wildcards.next()) {
        (None, _) => (len == n).then(|| (0..n).collect()),
        (Some((w, _)), None) => {
            let after = len - w - 1;
            (w + after <= n).then(|| {
                (0..n)
                    .map(|i| match i {
                        i if i < w => i,
                        i if i < n - after => w,
                        i => i + len - n,
                    })
                    .collect()
            })
        }
        _ => None,
    }
}

/// Drops repeated sources and columns of a relation whose whole row is already there; keeps the
/// first-seen order.
fn tidy(sources: &mut Vec<SourceColumn>) {
    if sources.len() < 2 {
        return;
    }
    if sources.len() <= 16 {
        let mut i = 0;
        while i < sources.len() {
            let s = &sources[i];
            let redundant = sources[..i].contains(s)
                || (!s.is_whole_row()
                    && sources
                        .iter()
                        .any(|t| t.is_whole_row() && t.relation == s.relation));
            if redundant {
                sources.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    let whole: HashSet<RelationName> = sources
        .iter()
        .filter(|s| s.is_whole_row())
        .map(|s| s.relation.clone())
        .collect();
    let mut seen = HashSet::with_capacity(sources.len());
    sources
        .retain(|s| (s.is_whole_row() || !whole.contains(&s.relation)) && seen.insert(s.clone()));
}

/// One item of a query's output while the statement is analysed.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// One column; `name` is what PostgreSQL calls it, `None` when we cannot tell.
    Column {
        name: Option<String>,
        sources: Vec<SourceColumn>,
    },
    /// Any number of columns. With `by_name`, every whole-row source is a table expanded by `*`,
    /// so its column `c` is `{table, c}`; without, a column of it may derive from any source.
    Wildcard {
        sources: Vec<SourceColumn>,
        by_name: bool,
    },
}

impl Item {
    fn sources(&self) -> &[SourceColumn] {
        match self {
            Item::Column { sources, .. } | Item::Wildcard { sources, .. } => sources,
        }
    }

    fn is_wildcard(&self) -> bool {
        matches!(self, Item::Wildcard { .. })
    }

    fn column(name: Option<String>, mut sources: Vec<SourceColumn>) -> Self {
        tidy(&mut sources);
        Item::Column { name, sources }
    }

    fn wildcard(mut sources: Vec<SourceColumn>, by_name: bool) -> Self {
        tidy(&mut sources);
        Item::Wildcard { sources, by_name }
    }
}

/// How sure a lookup of a column by name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// The column is not there.
    None,
    /// It may be there (a table's columns are unknown without the catalog).
    Maybe,
    /// It is there by name.
    Certain,
}

impl Match {
    fn or(self, other: Match) -> Match {
        match (self, other) {
            (Match::Certain, _) | (_, Match::Certain) => Match::Certain,
            (Match::Maybe, _) | (_, Match::Maybe) => Match::Maybe,
            _ => Match::None,
        }
    }
}

/// The output of a query, subquery or CTE.
#[derive(Debug, Clone, PartialEq, Default)]
struct QueryOutput {
    items: Vec<Item>,
}

impl QueryOutput {
    fn into_lineage(self) -> OutputLineage {
        let items = self
            .items
            .into_iter()
            .map(|item| match item {
                Item::Column { sources, .. } => OutputItem::Column(sources),
                Item::Wildcard { sources, .. } => OutputItem::Wildcard(sources),
            })
            .collect();
        OutputLineage { items }
    }

    fn all_sources(&self, out: &mut Vec<SourceColumn>) {
        for item in &self.items {
            out.extend_from_slice(item.sources());
        }
    }

    /// The sources of the output column called `col`.
    fn column(&self, col: &str, out: &mut Vec<SourceColumn>) -> Match {
        let mut found = Match::None;
        for item in &self.items {
            if let Item::Column {
                name: Some(name),
                sources,
            } = item
            {
                if name == col {
                    out.extend_from_slice(sources);
                    found = Match::Certain;
                }
            }
        }
        if found == Match::Certain {
            return found;
        }
        for item in &self.items {
            match item {
                Item::Column { name: Some(_), .. } => {}
                Item::Column {
                    name: None,
                    sources,
                }
                | Item::Wildcard {
                    sources,
                    by_name: false,
                } => {
                    out.extend_from_slice(sources);
                    found = Match::Maybe;
                }
                Item::Wildcard {
                    sources,
                    by_name: true,
                } => {
                    out.extend(sources.iter().map(|s| match s.is_whole_row() {
                        true => SourceColumn {
                            relation: s.relation.clone(),
                            column: col.to_owned(),
                        },
                        false => s.clone(),
                    }));
                    found = Match::Maybe;
                }
            }
        }
        found
    }

    /// Applies a column alias list such as `AS t(a, b)`, which renames by position.
    fn renamed(mut self, names: Vec<String>) -> Self {
        let mut names = names.into_iter();
        let mut positional = true;
        for item in &mut self.items {
            match item {
                Item::Column { name, .. } if positional => match names.next() {
                    Some(alias) => *name = Some(alias),
                    None => break,
                },
                // Past a wildcard we cannot tell which columns the remaining aliases rename.
                Item::Column { name, .. } => *name = None,
                Item::Wildcard { by_name, .. } => {
                    if names.len() == 0 && positional {
                        break;
                    }
                    positional = false;
                    *by_name = false;
                }
            }
        }
        self
    }

    /// Sources for each of `n` columns, with names where the item is a column.
    fn fit(&self, n: usize) -> Option<Vec<(Option<String>, Vec<SourceColumn>)>> {
        let wildcards: Vec<bool> = self.items.iter().map(Item::is_wildcard).collect();
        let map = spread(&wildcards, n)?;
        Some(
            map.into_iter()
                .map(|i| match &self.items[i] {
                    Item::Column { name, sources } => (name.clone(), sources.clone()),
                    Item::Wildcard { sources, .. } => (None, sources.clone()),
                })
                .collect(),
        )
    }

    /// UNION, INTERSECT or EXCEPT: column i derives from column i of either side.
    fn set_operation(self, right: QueryOutput) -> QueryOutput {
        let shape = |q: &QueryOutput| q.items.iter().map(Item::is_wildcard).collect::<Vec<_>>();
        let (left_shape, right_shape) = (shape(&self), shape(&right));
        let pairwise =
            left_shape == right_shape || !left_shape.iter().chain(&right_shape).any(|w| *w);
        if pairwise {
            let mut right = right.items.into_iter();
            let mut items: Vec<Item> = self
                .items
                .into_iter()
                .map(|item| {
                    let more = right.next();
                    let more = more.as_ref().map_or(&[][..], Item::sources);
                    match item {
                        Item::Column { name, mut sources } => {
                            sources.extend_from_slice(more);
                            Item::column(name, sources)
                        }
                        Item::Wildcard { mut sources, .. } => {
                            sources.extend_from_slice(more);
                            Item::wildcard(sources, false)
                        }
                    }
                })
                .collect();
            items.extend(right.map(|item| match item {
                Item::Column { sources, .. } => Item::column(None, sources),
                Item::Wildcard { sources, .. } => Item::wildcard(sources, false),
            }));
            return QueryOutput { items };
        }
        let zip = |named: Vec<(Option<String>, Vec<SourceColumn>)>, other: &[Item]| QueryOutput {
            items: named
                .into_iter()
                .zip(other)
                .map(|((name, mut sources), item)| {
                    sources.extend_from_slice(item.sources());
                    Item::column(name, sources)
                })
                .collect(),
        };
        if !right_shape.contains(&true) {
            if let Some(left) = self.fit(right.items.len()) {
                return zip(left, &right.items);
            }
        }
        if !left_shape.contains(&true) {
            if let Some(fitted) = right.fit(self.items.len()) {
                let names = self.items.iter().map(|i| match i {
                    Item::Column { name, .. } => name.clone(),
                    Item::Wildcard { .. } => None,
                });
                let right_items: Vec<Item> = fitted
                    .into_iter()
                    .map(|(_, sources)| Item::Column {
                        name: None,
                        sources,
                    })
                    .collect();
                let left: Vec<_> = names
                    .zip(self.items.iter().map(|i| i.sources().to_vec()))
                    .collect();
                return zip(left, &right_items);
            }
        }
        let mut sources = Vec::new();
        self.all_sources(&mut sources);
        right.all_sources(&mut sources);
        QueryOutput {
            items: vec![Item::wildcard(sources, false)],
        }
    }
}

/// Joins the columns one `*` or `t.*` expands to. Adjacent wildcards merge; if wildcards are
/// still apart, the whole expansion becomes one wildcard, so that the other items of the select
/// list can still be placed by [`OutputLineage::columns`].
fn expansion(items: Vec<Item>) -> Vec<Item> {
    let mut merged: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        match (merged.last_mut(), item) {
            (
                Some(Item::Wildcard { sources, by_name }),
                Item::Wildcard {
                    sources: more,
                    by_name: more_by_name,
                },
            ) => {
                sources.extend(more);
                *by_name &= more_by_name;
            }
            (_, item) => merged.push(item),
        }
    }
    if merged.iter().filter(|i| i.is_wildcard()).count() > 1 {
        // Named columns fold in unchanged, but a whole-row one would read as a table's `*`.
        let by_name = merged.iter().all(|i| match i {
            Item::Wildcard { by_name, .. } => *by_name,
            Item::Column { sources, .. } => !sources.iter().any(SourceColumn::is_whole_row),
        });
        let sources = merged
            .iter()
            .flat_map(|i| i.sources().iter().cloned())
            .collect();
        return vec![Item::wildcard(sources, by_name)];
    }
    for item in &mut merged {
        if let Item::Wildcard { sources, .. } = item {
            tidy(sources);
        }
    }
    merged
}

/// One item of a FROM clause.
#[derive(Debug)]
struct FromItem {
    /// The name that qualifies its columns: the alias, else the table's, function's or CTE's.
    refname: Option<String>,
    /// The schema written before an unaliased table, for `schema.table.column`.
    schema: Option<String>,
    /// Reachable only qualified: the `old` and `new` rows of RETURNING.
    qualified_only: bool,
    kind: FromKind,
}

#[derive(Debug)]
enum FromKind {
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
    fn column(&self, col: &str, out: &mut Vec<SourceColumn>) -> Match {
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

    fn whole_row(&self, out: &mut Vec<SourceColumn>) {
        match &self.kind {
            FromKind::Table { relation, .. } => out.push(SourceColumn::whole_row(relation.clone())),
            FromKind::Subquery(output) => output.all_sources(out),
            FromKind::Function { sources, .. } => out.extend_from_slice(sources),
            FromKind::Join(items) => items.iter().for_each(|i| i.whole_row(out)),
        }
    }

    /// What `*` over this item expands to.
    fn expand(&self, out: &mut Vec<Item>) {
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
struct Scope<'p> {
    items: Vec<FromItem>,
    ctes: Vec<(String, Rc<QueryOutput>)>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn child(parent: &'p Scope<'p>) -> Self {
        Scope {
            items: Vec::new(),
            ctes: Vec::new(),
            parent: Some(parent),
        }
    }

    fn levels(&self) -> impl Iterator<Item = &Scope<'p>> {
        std::iter::successors(Some(self), |s| s.parent)
    }

    fn cte(&self, name: &str) -> Option<&Rc<QueryOutput>> {
        self.levels()
            .find_map(|l| l.ctes.iter().rev().find(|(n, _)| n == name).map(|(_, o)| o))
    }

    /// The FROM item a qualifier (`t`, `s.t` or `db.s.t`) names, nearest level first.
    fn find(&self, qualifier: &[String]) -> Option<&FromItem> {
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
    fn column(&self, col: &str, fallback: bool, out: &mut Vec<SourceColumn>) {
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
    fn reference(&self, parts: &[String], out: &mut Vec<SourceColumn>) {
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
    fn everything(&self, out: &mut Vec<SourceColumn>) {
        for level in self.levels() {
            level.items.iter().for_each(|i| i.whole_row(out));
        }
    }
}

struct Builder {
    /// Analysis steps left before the rest of the statement is over-approximated.
    steps: u32,
    literal_dependent: bool,
}

impl Builder {
    fn ident(&mut self, ident: &Ident) -> String {
        names::fold_noting(ident, &mut self.literal_dependent)
    }

    fn parts(&mut self, name: &ObjectName) -> Vec<String> {
        names::parts(name, &mut self.literal_dependent)
    }

    fn relation(&mut self, name: &ObjectName) -> RelationName {
        names::relation(self.parts(name))
    }

    fn alias_columns(&mut self, alias: Option<&TableAlias>) -> Vec<String> {
        alias
            .map(|a| a.columns.iter().map(|c| self.ident(&c.name)).collect())
            .unwrap_or_default()
    }

    /// Whether to go on analysing at `depth`; `false` means over-approximate instead.
    fn step(&mut self, depth: u32) -> bool {
        if depth >= MAX_DEPTH || self.steps == 0 {
            return false;
        }
        self.steps -= 1;
        true
    }

    fn statement(&mut self, s: &Statement, root: &Scope) -> Option<QueryOutput> {
        match s {
            Statement::Query(q) => returns_rows(&q.body).then(|| self.query(q, root, 0)),
            Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_) => self.returning(s, root, 0),
            Statement::Declare { stmts, .. } => match stmts.as_slice() {
                [declare] => declare
                    .for_query
                    .as_ref()
                    .filter(|q| returns_rows(&q.body))
                    .map(|q| self.query(q, root, 0)),
                _ => None,
            },
            Statement::Copy {
                source, to: true, ..
            } => Some(match source {
                CopySource::Query(q) => self.query(q, root, 0),
                CopySource::Table {
                    table_name,
                    columns,
                } => {
                    let relation = self.relation(table_name);
                    let items = match columns.is_empty() {
                        true => vec![Item::Wildcard {
                            sources: vec![SourceColumn::whole_row(relation)],
                            by_name: true,
                        }],
                        false => columns
                            .iter()
                            .map(|c| {
                                let column = self.ident(c);
                                Item::Column {
                                    name: Some(column.clone()),
                                    sources: vec![SourceColumn {
                                        relation: relation.clone(),
                                        column,
                                    }],
                                }
                            })
                            .collect(),
                    };
                    QueryOutput { items }
                }
            }),
            _ => None,
        }
    }

    fn query(&mut self, q: &Query, scope: &Scope, depth: u32) -> QueryOutput {
        if !self.step(depth) {
            return self.opaque_output(q, scope);
        }
        let depth = depth + 1;
        match &q.with {
            Some(with) => {
                let scope = self.with(with, scope, depth);
                self.set_expr(&q.body, &scope, depth)
            }
            None => self.set_expr(&q.body, scope, depth),
        }
    }

    /// The scope a WITH clause opens, each CTE's output worked out.
    fn with<'s>(&mut self, with: &With, scope: &'s Scope<'s>, depth: u32) -> Scope<'s> {
        let mut inner = Scope::child(scope);
        if !with.recursive {
            // Each CTE sees the ones before it.
            for cte in &with.cte_tables {
                let output = self.query(&cte.query, &inner, depth);
                let name = self.ident(&cte.alias.name);
                let columns = self.alias_columns(Some(&cte.alias));
                inner.ctes.push((name, Rc::new(output.renamed(columns))));
            }
            return inner;
        }
        // Every CTE sees every other and itself: iterate from empty outputs to a fixpoint.
        for cte in &with.cte_tables {
            let name = self.ident(&cte.alias.name);
            inner.ctes.push((name, Rc::default()));
        }
        for _ in 0..MAX_RECURSIVE_ROUNDS {
            let mut next = Vec::with_capacity(with.cte_tables.len());
            for cte in &with.cte_tables {
                let output = self.query(&cte.query, &inner, depth);
                let columns = self.alias_columns(Some(&cte.alias));
                next.push(output.renamed(columns));
            }
            let stable = next.iter().zip(&inner.ctes).all(|(n, (_, o))| n == &**o);
            for ((_, slot), output) in inner.ctes.iter_mut().zip(next) {
                *slot = Rc::new(output);
            }
            if stable {
                return inner;
            }
        }
        // No fixpoint: every CTE may hold anything its WITH reads.
        let mut sources = Vec::new();
        for cte in &with.cte_tables {
            self.opaque(&*cte.query, scope, &mut sources);
        }
        let output = Rc::new(QueryOutput {
            items: vec![Item::wildcard(sources, false)],
        });
        for (_, slot) in &mut inner.ctes {
            *slot = Rc::clone(&output);
        }
        inner
    }

    fn set_expr(&mut self, body: &SetExpr, scope: &Scope, depth: u32) -> QueryOutput {
        match body {
            SetExpr::Select(select) => self.select(select, scope, depth),
            SetExpr::Query(q) => self.query(q, scope, depth),
            SetExpr::SetOperation { .. } => {
                // Long UNION chains nest to the left; walk them without recursion.
                let mut rights = Vec::new();
                let mut leftmost = body;
                while let SetExpr::SetOperation { left, right, .. } = leftmost {
                    rights.push(&**right);
                    leftmost = left;
                }
                let mut output = self.set_expr(leftmost, scope, depth);
                for right in rights.into_iter().rev() {
                    let right = self.set_expr(right, scope, depth + 1);
                    output = output.set_operation(right);
                }
                output
            }
            SetExpr::Values(values) => self.values(values, scope, depth),
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.returning(s, scope, depth).unwrap_or_default()
            }
            SetExpr::Table(table) => {
                let parts = [&table.schema_name, &table.table_name];
                let name =
                    ObjectName::from(parts.into_iter().flatten().cloned().collect::<Vec<_>>());
                let item = self.table(&name, None, scope);
                let mut items = Vec::new();
                item.expand(&mut items);
                QueryOutput {
                    items: expansion(items),
                }
            }
        }
    }

    fn values(&mut self, values: &Values, scope: &Scope, depth: u32) -> QueryOutput {
        let width = values.rows.iter().map(|r| r.content.len()).max();
        let mut columns = vec![Vec::new(); width.unwrap_or(0)];
        for row in &values.rows {
            for (e, sources) in row.content.iter().zip(&mut columns) {
                self.expr(e, scope, depth, sources);
            }
        }
        let items = columns
            .into_iter()
            .enumerate()
            .map(|(i, sources)| Item::column(Some(format!("column{}", i + 1)), sources))
            .collect();
        QueryOutput { items }
    }

    fn select(&mut self, select: &Select, scope: &Scope, depth: u32) -> QueryOutput {
        let mut level = Scope::child(scope);
        for from in &select.from {
            self.join(from, &mut level, scope, depth);
        }
        self.projection(&select.projection, &level, depth)
    }

    /// Adds the items of `a JOIN b ...` to `level`. A LATERAL subquery or a function sees the
    /// items before it (`level`); a plain subquery sees only the enclosing query (`plain`).
    fn join(&mut self, from: &TableWithJoins, level: &mut Scope, plain: &Scope, depth: u32) {
        let factors = std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation));
        for factor in factors {
            let items = self.factor_items(factor, level, plain, depth);
            level.items.extend(items);
        }
    }

    fn factor_items(
        &mut self,
        factor: &TableFactor,
        level: &Scope,
        plain: &Scope,
        depth: u32,
    ) -> Vec<FromItem> {
        let function = |b: &mut Self,
                        name: Option<String>,
                        alias: &Option<TableAlias>,
                        mut sources: Vec<SourceColumn>| {
            let refname = alias.as_ref().map(|a| b.ident(&a.name)).or(name);
            let columns = b.alias_columns(alias.as_ref());
            tidy(&mut sources);
            FromItem {
                refname,
                schema: None,
                qualified_only: false,
                kind: FromKind::Function { sources, columns },
            }
        };
        let item = match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => self.table(name, alias.as_ref(), level),
            TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } => {
                let mut sources = Vec::new();
                for arg in &args.args {
                    self.function_arg(arg, level, depth, &mut sources);
                }
                let name = self.function_name(name);
                function(self, name, alias, sources)
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                let mut sources = Vec::new();
                for arg in args {
                    self.function_arg(arg, level, depth, &mut sources);
                }
                let name = self.function_name(name);
                function(self, name, alias, sources)
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let scope = if *lateral { level } else { plain };
                let output = self.query(subquery, scope, depth);
                let columns = self.alias_columns(alias.as_ref());
                FromItem {
                    refname: alias.as_ref().map(|a| self.ident(&a.name)),
                    schema: None,
                    qualified_only: false,
                    kind: FromKind::Subquery(Rc::new(output.renamed(columns))),
                }
            }
            TableFactor::TableFunction { expr, alias } => {
                let mut sources = Vec::new();
                self.expr(expr, level, depth, &mut sources);
                function(self, None, alias, sources)
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                let mut sources = Vec::new();
                for e in array_exprs {
                    self.expr(e, level, depth, &mut sources);
                }
                function(self, Some("unnest".to_owned()), alias, sources)
            }
            TableFactor::JsonTable {
                json_expr, alias, ..
            } => {
                let mut sources = Vec::new();
                self.expr(json_expr, level, depth, &mut sources);
                function(self, Some("json_table".to_owned()), alias, sources)
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = Scope::child(level);
                self.join(table_with_joins, &mut inner, plain, depth);
                let items = std::mem::take(&mut inner.items);
                match alias {
                    None => return items,
                    Some(alias) => FromItem {
                        refname: Some(self.ident(&alias.name)),
                        schema: None,
                        qualified_only: false,
                        kind: FromKind::Join(items),
                    },
                }
            }
            other => {
                // Not PostgreSQL syntax; whatever it reads, it may return.
                let mut sources = Vec::new();
                self.opaque(other, level, &mut sources);
                function(self, None, &None, sources)
            }
        };
        vec![item]
    }

    /// A named FROM item: a CTE in scope, else a table or view.
    fn table(&mut self, name: &ObjectName, alias: Option<&TableAlias>, scope: &Scope) -> FromItem {
        let relation = self.relation(name);
        let alias_name = alias.map(|a| self.ident(&a.name));
        let columns = self.alias_columns(alias);
        let cte = match name.0.len() {
            1 => scope.cte(&relation.name),
            _ => None,
        };
        if let Some(cte) = cte {
            let output = match columns.is_empty() {
                true => Rc::clone(cte),
                false => Rc::new((**cte).clone().renamed(columns)),
            };
            return FromItem {
                refname: Some(alias_name.unwrap_or(relation.name)),
                schema: None,
                qualified_only: false,
                kind: FromKind::Subquery(output),
            };
        }
        let (refname, schema) = match alias_name {
            Some(alias) => (alias, None),
            None => (relation.name.clone(), relation.schema.clone()),
        };
        FromItem {
            refname: Some(refname),
            schema,
            qualified_only: false,
            kind: FromKind::Table {
                relation,
                renamed: columns,
            },
        }
    }

    fn function_name(&mut self, name: &ObjectName) -> Option<String> {
        name.0
            .last()
            .and_then(ObjectNamePart::as_ident)
            .map(|i| self.ident(i))
    }

    /// The RETURNING list of INSERT, UPDATE, DELETE or MERGE; `None` without one.
    fn returning(&mut self, s: &Statement, scope: &Scope, depth: u32) -> Option<QueryOutput> {
        let mut level = Scope::child(scope);
        let items = match s {
            Statement::Insert(insert) => {
                let items = returning_items(&insert.returning, &insert.output)?;
                if let TableObject::TableName(name) = &insert.table {
                    let mut item = self.table(name, None, &Scope::default());
                    if let Some(alias) = &insert.table_alias {
                        item.refname = Some(self.ident(&alias.alias));
                        item.schema = None;
                    }
                    level.items.push(item);
                }
                items
            }
            Statement::Update(update) => {
                let items = returning_items(&update.returning, &update.output)?;
                self.join(&update.table, &mut level, scope, depth);
                if let Some(
                    UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from),
                ) = &update.from
                {
                    for from in from {
                        self.join(from, &mut level, scope, depth);
                    }
                }
                items
            }
            Statement::Delete(delete) => {
                let items = returning_items(&delete.returning, &delete.output)?;
                let (sqlparser::ast::FromTable::WithFromKeyword(from)
                | sqlparser::ast::FromTable::WithoutKeyword(from)) = &delete.from;
                for from in from.iter().chain(delete.using.iter().flatten()) {
                    self.join(from, &mut level, scope, depth);
                }
                items
            }
            Statement::Merge(merge) => {
                let items = match &merge.output {
                    Some(
                        OutputClause::Returning { select_items, .. }
                        | OutputClause::Output { select_items, .. },
                    ) => select_items,
                    None => return None,
                };
                for factor in [&merge.table, &merge.source] {
                    let items = self.factor_items(factor, &level, scope, depth);
                    level.items.extend(items);
                }
                items
            }
            _ => return None,
        };
        // PostgreSQL 18: `old` and `new` are the target row before and after the change.
        let target = level.items.first().and_then(|i| match &i.kind {
            FromKind::Table { relation, .. } => Some(relation.clone()),
            _ => None,
        });
        if let Some(relation) = target {
            for name in ["old", "new"] {
                if !level
                    .items
                    .iter()
                    .any(|i| i.refname.as_deref() == Some(name))
                {
                    level.items.push(FromItem {
                        refname: Some(name.to_owned()),
                        schema: None,
                        qualified_only: true,
                        kind: FromKind::Table {
                            relation: relation.clone(),
                            renamed: Vec::new(),
                        },
                    });
                }
            }
        }
        Some(self.projection(items, &level, depth))
    }

    fn projection(&mut self, list: &[SelectItem], level: &Scope, depth: u32) -> QueryOutput {
        let mut items = Vec::with_capacity(list.len());
        for item in list {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = self.column_name(e);
                    items.push(self.output_column(e, name, level, depth));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let name = Some(self.ident(alias));
                    items.push(self.output_column(expr, name, level, depth));
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let name = aliases.first().map(|a| self.ident(a));
                    items.push(self.output_column(expr, name, level, depth));
                }
                SelectItem::Wildcard(_) => {
                    let mut expanded = Vec::new();
                    for from in level.items.iter().filter(|i| !i.qualified_only) {
                        from.expand(&mut expanded);
                    }
                    items.extend(expansion(expanded));
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    _,
                ) => {
                    let parts = self.parts(name);
                    let mut expanded = Vec::new();
                    match level.find(&parts) {
                        Some(from) => from.expand(&mut expanded),
                        None => {
                            let mut sources = Vec::new();
                            level.reference(&parts, &mut sources);
                            expanded.push(Item::wildcard(sources, false));
                        }
                    }
                    items.extend(expansion(expanded));
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    let mut sources = Vec::new();
                    self.expr(e, level, depth, &mut sources);
                    items.push(Item::wildcard(sources, false));
                }
            }
        }
        QueryOutput { items }
    }

    fn output_column(&mut self, e: &Expr, name: Option<String>, scope: &Scope, depth: u32) -> Item {
        let mut sources = Vec::new();
        self.expr(e, scope, depth, &mut sources);
        Item::column(name, sources)
    }

    /// The name PostgreSQL gives an unaliased output column, where we are sure of it.
    fn column_name(&mut self, e: &Expr) -> Option<String> {
        match e {
            Expr::Identifier(ident) => Some(self.ident(ident)),
            Expr::CompoundIdentifier(idents) => idents.last().map(|i| self.ident(i)),
            Expr::Function(f) => self.function_name(&f.name),
            Expr::Nested(inner) => self.column_name(inner),
            // A cast keeps a column's or function's name; of anything else it takes the type's.
            Expr::Cast { expr, .. } => match &**expr {
                Expr::Value(_) => None,
                inner => self.column_name(inner),
            },
            Expr::Value(_) => Some("?column?".to_owned()),
            Expr::Case { .. } => Some("case".to_owned()),
            Expr::Exists { .. } => Some("exists".to_owned()),
            Expr::Array(_) => Some("array".to_owned()),
            _ => None,
        }
    }

    /// Adds the sources of `e` to `out`.
    fn expr(&mut self, e: &Expr, scope: &Scope, depth: u32, out: &mut Vec<SourceColumn>) {
        if !self.step(depth) {
            return self.opaque(e, scope, out);
        }
        let depth = depth + 1;
        match e {
            Expr::Identifier(ident) => {
                let name = self.ident(ident);
                scope.reference(std::slice::from_ref(&name), out);
            }
            Expr::CompoundIdentifier(idents) => {
                let parts: Vec<String> = idents.iter().map(|i| self.ident(i)).collect();
                scope.reference(&parts, out);
            }
            Expr::QualifiedWildcard(name, _) => self.whole_row(name, scope, out),
            Expr::Wildcard(_) => {
                if let Some(level) = scope.levels().find(|l| !l.items.is_empty()) {
                    level.items.iter().for_each(|i| i.whole_row(out));
                }
            }
            Expr::Value(_) | Expr::TypedString(_) => {}
            Expr::Nested(inner)
            | Expr::Cast { expr: inner, .. }
            | Expr::UnaryOp { expr: inner, .. } => self.expr(inner, scope, depth, out),
            Expr::BinaryOp { .. } => {
                // `a || b || c ...` nests to the left, possibly thousands deep: walk it flat.
                let mut rights = Vec::new();
                let mut leftmost = e;
                while let Expr::BinaryOp { left, right, .. } = leftmost {
                    rights.push(&**right);
                    leftmost = left;
                }
                self.expr(leftmost, scope, depth, out);
                for right in rights.into_iter().rev() {
                    self.expr(right, scope, depth, out);
                }
            }
            Expr::Function(f) => self.function(f, scope, depth, out),
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => {
                self.query(q, scope, depth).all_sources(out)
            }
            Expr::CompoundFieldAccess { root, access_chain } => {
                if !self.field_of_row(root, access_chain, scope, out) {
                    self.expr(root, scope, depth, out);
                }
                for access in access_chain {
                    if let AccessExpr::Subscript(subscript) = access {
                        self.generic(subscript, None, scope, depth, out);
                    }
                }
            }
            _ => self.generic(e, Some(e), scope, depth, out),
        }
    }

    /// `(c).email` where `c` is a FROM item: that item's `email`. False when `root` is no FROM item.
    fn field_of_row(
        &mut self,
        root: &Expr,
        access_chain: &[AccessExpr],
        scope: &Scope,
        out: &mut Vec<SourceColumn>,
    ) -> bool {
        let mut base = root;
        while let Expr::Nested(inner) = base {
            base = inner;
        }
        let (Expr::Identifier(row), Some(AccessExpr::Dot(Expr::Identifier(field)))) =
            (base, access_chain.first())
        else {
            return false;
        };
        let (row, field) = (self.ident(row), self.ident(field));
        let Some(item) = scope.find(std::slice::from_ref(&row)) else {
            return false;
        };
        if item.column(&field, out) == Match::None {
            item.whole_row(out);
        }
        // A column named like the item, if some table has one, takes precedence.
        scope.column(&row, false, out);
        true
    }

    /// `t.*` inside an expression.
    fn whole_row(&mut self, name: &ObjectName, scope: &Scope, out: &mut Vec<SourceColumn>) {
        let parts = self.parts(name);
        match scope.find(&parts) {
            Some(item) => item.whole_row(out),
            None => scope.reference(&parts, out),
        }
    }

    fn function(&mut self, f: &Function, scope: &Scope, depth: u32, out: &mut Vec<SourceColumn>) {
        // FILTER and OVER choose rows; the value comes from the arguments, and for ordered-set
        // aggregates such as `mode() WITHIN GROUP (ORDER BY x)` from the ordering.
        for args in [&f.args, &f.parameters] {
            match args {
                FunctionArguments::None => {}
                FunctionArguments::Subquery(q) => self.query(q, scope, depth).all_sources(out),
                FunctionArguments::List(list) => {
                    for arg in &list.args {
                        self.function_arg(arg, scope, depth, out);
                    }
                }
            }
        }
        for order in &f.within_group {
            self.expr(&order.expr, scope, depth, out);
        }
    }

    fn function_arg(
        &mut self,
        arg: &FunctionArg,
        scope: &Scope,
        depth: u32,
        out: &mut Vec<SourceColumn>,
    ) {
        let (FunctionArg::Named { arg, .. }
        | FunctionArg::ExprNamed { arg, .. }
        | FunctionArg::Unnamed(arg)) = arg;
        match arg {
            FunctionArgExpr::Expr(e) => self.expr(e, scope, depth, out),
            FunctionArgExpr::QualifiedWildcard(name) => self.whole_row(name, scope, out),
            // `count(*)` reads no value.
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {}
        }
    }

    /// Sources of every expression directly under `node` (not `root` itself), and of every
    /// subquery, through sqlparser's visitor so that no kind of expression is missed.
    fn generic<T: Visit>(
        &mut self,
        node: &T,
        root: Option<&Expr>,
        scope: &Scope,
        depth: u32,
        out: &mut Vec<SourceColumn>,
    ) {
        let mut walk = Walk {
            builder: self,
            scope,
            depth,
            out,
            root: root.map(|e| e as *const Expr),
            inside: None,
        };
        let _ = node.visit(&mut walk);
    }

    /// Everything `node` could return: whole rows of every FROM item in scope and of every
    /// relation named inside it (a CTE name counts, with the CTE's sources).
    fn opaque<T: Visit>(&mut self, node: &T, scope: &Scope, out: &mut Vec<SourceColumn>) {
        scope.everything(out);
        let mut relations = Relations {
            builder: self,
            found: Vec::new(),
            seen: HashSet::new(),
        };
        let _ = node.visit(&mut relations);
        for relation in relations.found {
            if relation.schema.is_none() {
                if let Some(cte) = scope.cte(&relation.name) {
                    cte.all_sources(out);
                }
            }
            out.push(SourceColumn::whole_row(relation));
        }
    }

    fn opaque_output(&mut self, q: &Query, scope: &Scope) -> QueryOutput {
        let mut sources = Vec::new();
        self.opaque(q, scope, &mut sources);
        QueryOutput {
            items: vec![Item::wildcard(sources, false)],
        }
    }
}

fn returning_items<'a>(
    returning: &'a Option<Vec<SelectItem>>,
    output: &'a Option<OutputClause>,
) -> Option<&'a [SelectItem]> {
    match (returning, output) {
        (Some(items), _)
        | (
            None,
            Some(OutputClause::Returning {
                select_items: items,
                ..
            }),
        )
        | (
            None,
            Some(OutputClause::Output {
                select_items: items,
                ..
            }),
        ) => Some(items),
        (None, None) => None,
    }
}

/// Whether a statement body sends rows: not `SELECT ... INTO`, not DML without RETURNING.
fn returns_rows(body: &SetExpr) -> bool {
    let mut body = body;
    loop {
        match body {
            SetExpr::Select(select) => return select.into.is_none(),
            SetExpr::SetOperation { left, .. } => body = left,
            SetExpr::Query(q) => body = &q.body,
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                return match s {
                    Statement::Insert(i) => returning_items(&i.returning, &i.output).is_some(),
                    Statement::Update(u) => returning_items(&u.returning, &u.output).is_some(),
                    Statement::Delete(d) => returning_items(&d.returning, &d.output).is_some(),
                    Statement::Merge(m) => m.output.is_some(),
                    _ => false,
                };
            }
            SetExpr::Values(_) | SetExpr::Table(_) => return true,
        }
    }
}

/// A node the visitor is inside of and has already handed to the builder.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inside {
    Expr(*const Expr),
    Query(*const Query),
}

/// Hands each top-most expression and subquery under a node to the [`Builder`].
struct Walk<'b, 's, 'p> {
    builder: &'b mut Builder,
    scope: &'s Scope<'p>,
    depth: u32,
    out: &'b mut Vec<SourceColumn>,
    root: Option<*const Expr>,
    /// Set while the visitor walks a subtree the builder already analysed.
    inside: Option<Inside>,
}

impl Visitor for Walk<'_, '_, '_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.inside.is_none() && self.root != Some(e as *const Expr) {
            self.builder.expr(e, self.scope, self.depth, self.out);
            self.inside = Some(Inside::Expr(e));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.inside == Some(Inside::Expr(e)) {
            self.inside = None;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.inside.is_none() {
            self.builder
                .query(q, self.scope, self.depth)
                .all_sources(self.out);
            self.inside = Some(Inside::Query(q));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.inside == Some(Inside::Query(q)) {
            self.inside = None;
        }
        ControlFlow::Continue(())
    }
}

/// Every relation name under a node, in first-seen order.
struct Relations<'b> {
    builder: &'b mut Builder,
    found: Vec<RelationName>,
    seen: HashSet<RelationName>,
}

impl Visitor for Relations<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        let relation = self.builder.relation(name);
        if self.seen.insert(relation.clone()) {
            self.found.push(relation);
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{analyze, StatementKind};

    fn render_sources(sources: &[SourceColumn]) -> String {
        sources
            .iter()
            .map(|s| format!("{}.{}", s.relation, s.column))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Each output item as `"t.a t.b"`, a wildcard as `"*(t.*)"`.
    fn items(sql: &str) -> Vec<String> {
        let lineage = infer_output_lineage(sql).unwrap_or_else(|| panic!("no lineage: {sql:.200}"));
        lineage
            .items
            .iter()
            .map(|item| match item {
                OutputItem::Column(s) => render_sources(s),
                OutputItem::Wildcard(s) => format!("*({})", render_sources(s)),
            })
            .collect()
    }

    fn columns(sql: &str, n: usize) -> Vec<String> {
        infer_output_lineage(sql)
            .unwrap()
            .columns(n)
            .iter()
            .map(|s| render_sources(s))
            .collect()
    }

    #[test]
    fn plain_columns_and_aliases_map_to_their_table() {
        assert_eq!(
            items("SELECT id, email AS e, users.name FROM users"),
            ["users.id", "users.email", "users.name"]
        );
        assert_eq!(
            items("SELECT u.email, x.y.z FROM users AS u, x.y"),
            ["users.email", "x.y.z"]
        );
        assert_eq!(items("SELECT * FROM users"), ["*(users.*)"]);
        assert_eq!(items("WITH x AS (SELECT 1) TABLE users"), ["*(users.*)"]);
        // A bare name that is a FROM item is its whole row; a table may also have such a column.
        assert_eq!(
            items("SELECT c FROM customers c, orders o"),
            ["customers.* orders.c"]
        );
    }

    #[test]
    fn computed_columns_keep_their_sources() {
        assert_eq!(
            items(
                "SELECT lower(email), email || '', coalesce(nick, first || ' ' || last), \
                 CASE WHEN vip THEN phone ELSE 'n/a' END, ssn::text, data->>'card', \
                 ARRAY[home, work], substring(iban FROM 1 FOR 4), 42, $1 FROM users"
            ),
            [
                "users.email",
                "users.email",
                "users.nick users.first users.last",
                "users.vip users.phone",
                "users.ssn",
                "users.data",
                "users.home users.work",
                "users.iban",
                "",
                "",
            ]
        );
    }

    #[test]
    fn whole_row_references_are_every_column() {
        assert_eq!(
            items(
                "SELECT row_to_json(c), c, to_jsonb(c.*), json_agg(c), (c).email \
                 FROM customers c"
            ),
            [
                "customers.*",
                "customers.*",
                "customers.*",
                "customers.*",
                // `c` could also be a composite column of that name.
                "customers.email customers.c"
            ]
        );
        // Over a subquery, the whole row is everything the subquery returns.
        assert_eq!(
            items("SELECT row_to_json(s) FROM (SELECT lower(email) AS e, id FROM users) s"),
            ["users.email users.id"]
        );
    }

    #[test]
    fn wildcard_in_the_middle_spreads_over_the_result_columns() {
        let sql = "SELECT id, c.*, lower(email) FROM customers c";
        assert_eq!(
            items(sql),
            ["customers.id", "*(customers.*)", "customers.email"]
        );
        assert_eq!(
            columns(sql, 5),
            [
                "customers.id",
                "customers.*",
                "customers.*",
                "customers.*",
                "customers.email"
            ]
        );
        // An empty table still fits; too few columns cannot, and get everything.
        assert_eq!(columns(sql, 2), ["customers.id", "customers.email"]);
        assert_eq!(columns(sql, 1), ["customers.*"]);
        // `SELECT *` over a join is one wildcard, so the items around it still place.
        let sql = "SELECT *, upper(o.note) FROM users u JOIN orders o ON o.uid = u.id";
        assert_eq!(items(sql), ["*(users.* orders.*)", "orders.note"]);
        assert_eq!(
            columns(sql, 3),
            ["users.* orders.*", "users.* orders.*", "orders.note"]
        );
        // Two wildcards cannot be placed: every column gets everything.
        let sql = "SELECT u.*, 1, o.* FROM users u, orders o";
        assert_eq!(columns(sql, 3), vec!["users.* orders.*"; 3]);
        // Counts that disagree without a wildcard: everything too.
        assert_eq!(columns("SELECT a, b FROM t", 3), vec!["t.a t.b"; 3]);
    }

    #[test]
    fn aggregates_and_window_functions_derive_from_their_arguments() {
        assert_eq!(
            items(
                "SELECT string_agg(email, ','), array_agg(name ORDER BY id), count(*), \
                 count(email) FILTER (WHERE ssn > 0), row_number() OVER (ORDER BY ssn), \
                 lag(phone) OVER (PARTITION BY id), \
                 mode() WITHIN GROUP (ORDER BY city) FROM users GROUP BY zip HAVING max(pin) > 0"
            ),
            [
                "users.email",
                "users.name",
                "",
                "users.email",
                "",
                "users.phone",
                "users.city"
            ]
        );
    }

    #[test]
    fn subqueries_in_the_select_list_contribute_their_outputs() {
        assert_eq!(
            items(
                "SELECT (SELECT max(o.total) FROM orders o WHERE o.uid = u.id), \
                 EXISTS (SELECT 1 FROM cards WHERE cards.uid = u.id), \
                 ARRAY(SELECT number FROM cards k WHERE k.uid = u.id), \
                 u.id IN (SELECT uid FROM banned) FROM users u WHERE u.id IN (SELECT uid FROM vip)"
            ),
            [
                "orders.total",
                "",
                // Unqualified inside a subquery: it may be the outer table's column.
                "cards.number users.number",
                "users.id banned.uid users.uid"
            ]
        );
        // An unqualified column inside may belong to the outer query.
        assert_eq!(
            items("SELECT (SELECT name FROM orgs WHERE orgs.id = org_id) FROM users"),
            ["orgs.name users.name"]
        );
    }

    #[test]
    fn derived_tables_resolve_through_their_select_list() {
        assert_eq!(
            items(
                "SELECT s.e, n, s.* FROM (SELECT lower(email) AS e, id AS n, 1 AS k FROM users) s"
            ),
            ["users.email", "users.id", "users.email", "users.id", ""]
        );
        // Through a `*`, a named column maps to the table's column of that name.
        assert_eq!(
            items("SELECT email FROM (SELECT * FROM users WHERE id > 0) s"),
            ["users.email"]
        );
        // Renamed by position, it could be any column.
        assert_eq!(
            items("SELECT a, b FROM (SELECT * FROM users) s(a)"),
            ["users.*", "users.*"]
        );
        assert_eq!(
            items("SELECT a, b FROM (SELECT email, ssn FROM users) AS s(a, b)"),
            ["users.email", "users.ssn"]
        );
        assert_eq!(
            items("SELECT * FROM (SELECT email AS e FROM users) AS s"),
            ["users.email"]
        );
    }

    #[test]
    fn lateral_subqueries_and_table_functions_see_earlier_from_items() {
        assert_eq!(
            items(
                "SELECT t.x, e.value FROM users u \
                 CROSS JOIN LATERAL (SELECT u.email AS x) t, \
                 LATERAL jsonb_array_elements(u.tags) e"
            ),
            ["users.email", "users.tags"]
        );
        assert_eq!(
            items("SELECT g, x.* FROM generate_series(1, 3) g, unnest($1) x"),
            ["", "*()"]
        );
        assert_eq!(
            items("SELECT r.a FROM users u, jsonb_to_recordset(u.doc) AS r(a int, b text)"),
            ["users.doc"]
        );
    }

    #[test]
    fn ctes_resolve_to_their_bodies_and_are_never_relations() {
        assert_eq!(
            items(
                "WITH a AS (SELECT email, lower(name) AS n FROM users), \
                 b AS (SELECT n AS nn FROM a) \
                 SELECT a.email, b.nn, a FROM a, b"
            ),
            ["users.email", "users.name", "users.email users.name"]
        );
        assert_eq!(
            items("WITH c(x) AS (SELECT ssn FROM people) SELECT * FROM c"),
            ["people.ssn"]
        );
        assert_eq!(items("WITH c AS (SELECT 1 AS one) TABLE c"), [""]);
        // A schema-qualified name is a table even when a CTE has the same name.
        assert_eq!(
            items("WITH users AS (SELECT 1 AS email) SELECT u.email FROM public.users u"),
            ["public.users.email"]
        );
    }

    #[test]
    fn recursive_ctes_reach_a_fixpoint() {
        assert_eq!(
            items(
                "WITH RECURSIVE chain(id, boss, mail) AS ( \
                   SELECT id, manager_id, email FROM staff WHERE manager_id IS NULL \
                   UNION ALL \
                   SELECT s.id, s.manager_id, c.mail FROM staff s JOIN chain c ON s.manager_id = c.id \
                 ) SELECT mail, boss FROM chain"
            ),
            ["staff.email", "staff.manager_id"]
        );
        // Values that move between columns each round still end up everywhere they can.
        assert_eq!(
            items(
                "WITH RECURSIVE t(a, b, c, n) AS (SELECT x, y, z, 0 FROM s \
                 UNION ALL SELECT b, c, a, n + 1 FROM t WHERE n < 5) SELECT a FROM t"
            ),
            ["s.x s.y s.z"]
        );
    }

    #[test]
    fn nested_recursive_ctes_stay_bounded() {
        let mut sql = "SELECT secret FROM vault".to_owned();
        for i in 0..12 {
            sql = format!(
                "WITH RECURSIVE r{i}(v) AS ({sql} UNION ALL SELECT v FROM r{i}) SELECT v FROM r{i}"
            );
        }
        let started = std::time::Instant::now();
        let all = infer_output_lineage(&sql).unwrap().all_sources();
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        assert!(all.iter().any(|s| s.relation.name == "vault"), "{all:?}");
    }

    #[test]
    fn set_operations_union_their_branches() {
        assert_eq!(
            items("SELECT email, id FROM users UNION SELECT contact, 0 FROM leads EXCEPT SELECT addr, k FROM optout"),
            [
                "users.email leads.contact optout.addr",
                "users.id optout.k"
            ]
        );
        // A wildcard branch laid over a plain one.
        assert_eq!(
            items("SELECT a, b FROM t UNION ALL SELECT * FROM u"),
            ["t.a u.*", "t.b u.*"]
        );
        // Derived lookups use the first branch's names.
        assert_eq!(
            items("SELECT e FROM (SELECT email AS e FROM users UNION SELECT phone FROM leads) s"),
            ["users.email leads.phone"]
        );
        let chain = vec!["SELECT a FROM t"; 3000].join(" UNION ALL ");
        assert_eq!(items(&chain), ["t.a"]);
    }

    #[test]
    fn joins_resolve_aliases_and_over_approximate_unqualified_columns() {
        assert_eq!(
            items(
                "SELECT u.email, name, o.total FROM users u \
                 LEFT JOIN orders o ON o.uid = u.id JOIN (orgs g JOIN plans p USING (pid)) ON g.id = u.org"
            ),
            [
                "users.email",
                "users.name orders.name orgs.name plans.name",
                "orders.total"
            ]
        );
        // A derived table known to have the column settles it.
        assert_eq!(
            items("SELECT k FROM users, (SELECT lower(email) AS k FROM users) s"),
            ["users.email"]
        );
        // An aliased join hides the names inside.
        assert_eq!(
            items("SELECT j.a FROM (x JOIN y ON true) AS j"),
            ["x.a y.a"]
        );
    }

    #[test]
    fn names_are_folded_quoted_names_keep_their_case() {
        assert_eq!(
            items(r#"SELECT "Email", Phone, "S"."T"."Ssn", s.t.x FROM "S"."T", S.T"#),
            [
                "S.T.Email s.t.Email",
                "S.T.phone s.t.phone",
                "S.T.Ssn",
                "s.t.x"
            ]
        );
        assert_eq!(
            items("SELECT public.users.email FROM users"),
            ["users.email"]
        );
        assert_eq!(
            items("SELECT u.email FROM db.app.users u"),
            ["app.users.email"]
        );
    }

    #[test]
    fn returning_derives_from_the_target_table() {
        assert_eq!(
            items("INSERT INTO s.users AS x (email) VALUES ('a') RETURNING x.id, lower(email), *"),
            ["s.users.id", "s.users.email", "*(s.users.*)"]
        );
        assert_eq!(
            items("UPDATE users u SET email = o.mail FROM other o WHERE o.id = u.id RETURNING u.email, old.email, new.ssn, note"),
            ["users.email", "users.email", "users.ssn", "users.note other.note"]
        );
        assert_eq!(
            items("DELETE FROM users WHERE id = 1 RETURNING *"),
            ["*(users.*)"]
        );
        assert_eq!(
            items("WITH d AS (DELETE FROM users RETURNING email) SELECT upper(email) FROM d"),
            ["users.email"]
        );
        assert_eq!(
            items("WITH n AS (SELECT 1) INSERT INTO log SELECT * FROM n RETURNING log.msg"),
            ["log.msg"]
        );
        assert_eq!(
            items("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING t.a"),
            ["t.a"]
        );
        for sql in [
            "INSERT INTO users (email) VALUES ('a')",
            "UPDATE users SET email = 'x'",
            "DELETE FROM users",
            "WITH n AS (SELECT 1) DELETE FROM users",
        ] {
            assert_eq!(infer_output_lineage(sql), None, "{sql}");
        }
    }

    #[test]
    fn copy_to_reports_the_copied_columns() {
        assert_eq!(
            items("COPY (SELECT lower(email) FROM users) TO STDOUT"),
            ["users.email"]
        );
        assert_eq!(
            items("COPY users (id, \"Email\") TO STDOUT WITH (FORMAT csv)"),
            ["users.id", "users.Email"]
        );
        assert_eq!(items("COPY s.users TO '/tmp/x'"), ["*(s.users.*)"]);
        assert_eq!(infer_output_lineage("COPY users FROM STDIN"), None);
    }

    #[test]
    fn declare_cursor_reports_its_query() {
        assert_eq!(
            items("DECLARE cur CURSOR WITH HOLD FOR SELECT email, ssn FROM users"),
            ["users.email", "users.ssn"]
        );
    }

    #[test]
    fn values_columns_union_their_rows() {
        assert_eq!(items("VALUES (1, 'a'), (2, 'b')"), ["", ""]);
        assert_eq!(
            items("SELECT column2, x FROM (VALUES (1, 'a')) v, (VALUES ((SELECT ssn FROM p))) AS w(x)"),
            ["", "p.ssn"]
        );
    }

    #[test]
    fn statements_without_rows_have_no_lineage() {
        for sql in [
            "EXPLAIN SELECT email FROM users",
            "EXPLAIN ANALYZE SELECT email FROM users",
            "SELECT email INTO copy FROM users",
            "CREATE TABLE t (a int)",
            "CREATE VIEW v AS SELECT email FROM users",
            "SET search_path = x",
            "BEGIN",
            "FETCH 10 FROM cur",
            "",
            "SELEC email FROM users",
            "SELECT 1; SELECT 2",
            "SELECT (",
        ] {
            assert_eq!(infer_output_lineage(sql), None, "{sql}");
        }
    }

    #[test]
    fn view_definitions_from_the_catalog_parse() {
        // As pg_get_viewdef prints them.
        assert_eq!(
            items(" SELECT users.id,\n    lower(users.email) AS email\n   FROM users\n  WHERE users.active;"),
            ["users.id", "users.email"]
        );
    }

    #[test]
    fn statement_analysis_carries_the_output() {
        let opts = LexOptions::default();
        let a = analyze("SELECT lower(email) FROM users; DELETE FROM t", opts);
        let [select, delete] = a.statements.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(select.kind, StatementKind::Select);
        assert_eq!(
            select.output.as_ref().unwrap().items,
            [OutputItem::Column(vec![SourceColumn {
                relation: RelationName {
                    schema: None,
                    name: "users".into()
                },
                column: "email".into()
            }])]
        );
        assert!(delete.output.is_none());
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json["statements"][0]["output"],
            serde_json::json!({"items": [{"kind": "column", "sources": [
                {"relation": {"schema": null, "name": "users"}, "column": "email"}
            ]}]})
        );
        assert!(json["statements"][1].get("output").is_none());
        let unknown = analyze("SELECT * FROM U&\"x\"", opts);
        assert!(unknown.has_unknown() && unknown.statements[0].output.is_none());
        // The cache hands out the same lineage for every text of a shape.
        let analyzer = crate::SqlAnalyzer::new(16);
        let first = analyzer.analyze("SELECT email FROM users WHERE id = 1", opts);
        let second = analyzer.analyze("SELECT email FROM users WHERE id = 2", opts);
        assert_eq!(first.statements[0].output, second.statements[0].output);
    }

    #[test]
    fn deep_nesting_over_approximates_instead_of_failing() {
        // The parser's own limit stops nesting before MAX_DEPTH; raise it to get past ours.
        let mut sql = "SELECT lower(secret) FROM vault".to_owned();
        for i in 0..40 {
            sql = format!("SELECT (SELECT ({sql}) FROM t{i}) FROM u{i}");
        }
        let lineage = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let statements = Parser::new(&PostgreSqlDialect {})
                    .with_recursion_limit(1000)
                    .try_with_sql(&sql)
                    .and_then(|mut p| p.parse_statements())
                    .unwrap();
                statement_output(&statements[0]).0
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(lineage.items.len(), 1);
        let all = lineage.all_sources();
        assert!(
            all.iter()
                .any(|s| s.relation.name == "vault" && s.is_whole_row()),
            "{all:?}"
        );
        assert!(all.iter().any(|s| s.relation.name == "u39"), "{all:?}");
        let long = format!("SELECT {} FROM t", vec!["a"; 6000].join(" || "));
        assert_eq!(infer_output_lineage(&long), None);
        let long = format!("SELECT {} FROM t", vec!["a"; 2000].join(" || "));
        assert_eq!(infer_output_lineage(&long).unwrap().all_sources().len(), 1);
    }

    #[test]
    fn never_panics_on_random_input() {
        let pieces = [
            "SELECT",
            " ",
            "*",
            ",",
            "(",
            ")",
            "FROM",
            "t",
            "u.",
            "a",
            "WITH",
            "x",
            "AS",
            "UNION",
            "RECURSIVE",
            "LATERAL",
            "JOIN",
            "ON",
            "true",
            "RETURNING",
            "DELETE",
            "VALUES",
            ".*",
            "row_to_json",
            "'",
            "\"",
            "1",
            "::",
            "||",
            "INSERT INTO",
            "COPY",
            "TO STDOUT",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            let sql: String = (0..(seed % 20))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    pieces[(seed % pieces.len() as u64) as usize]
                })
                .collect();
            if let Some(lineage) = infer_output_lineage(&sql) {
                let _ = (lineage.columns(3), lineage.all_sources());
            }
        }
    }
}
