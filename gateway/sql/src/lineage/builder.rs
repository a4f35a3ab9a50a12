//! The walk over a statement that builds each query's output lineage.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::rc::Rc;

use sqlparser::ast::{
    AccessExpr, CopySource, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, OutputClause, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor, TableObject,
    TableWithJoins, UpdateTableFromKind, Values, Visit, Visitor, With,
};

use super::items::*;
use super::scope::*;
use super::*;
use crate::names;
use crate::RelationName;

pub(super) struct Builder {
    /// Analysis steps left before the rest of the statement is over-approximated.
    pub(super) steps: u32,
    pub(super) literal_dependent: bool,
}

impl Builder {
    pub(super) fn ident(&mut self, ident: &Ident) -> String {
        names::fold_noting(ident, &mut self.literal_dependent)
    }

    pub(super) fn parts(&mut self, name: &ObjectName) -> Vec<String> {
        names::parts(name, &mut self.literal_dependent)
    }

    pub(super) fn relation(&mut self, name: &ObjectName) -> RelationName {
        names::relation(self.parts(name))
    }

    pub(super) fn alias_columns(&mut self, alias: Option<&TableAlias>) -> Vec<String> {
        alias
            .map(|a| a.columns.iter().map(|c| self.ident(&c.name)).collect())
            .unwrap_or_default()
    }

    /// Whether to go on analysing at `depth`; `false` means over-approximate instead.
    pub(super) fn step(&mut self, depth: u32) -> bool {
        if depth >= MAX_DEPTH || self.steps == 0 {
            return false;
        }
        self.steps -= 1;
        true
    }

    pub(super) fn statement(&mut self, s: &Statement, root: &Scope) -> Option<QueryOutput> {
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

    pub(super) fn query(&mut self, q: &Query, scope: &Scope, depth: u32) -> QueryOutput {
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
    pub(super) fn with<'s>(&mut self, with: &With, scope: &'s Scope<'s>, depth: u32) -> Scope<'s> {
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

    pub(super) fn set_expr(&mut self, body: &SetExpr, scope: &Scope, depth: u32) -> QueryOutput {
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

    pub(super) fn values(&mut self, values: &Values, scope: &Scope, depth: u32) -> QueryOutput {
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

    pub(super) fn select(&mut self, select: &Select, scope: &Scope, depth: u32) -> QueryOutput {
        let mut level = Scope::child(scope);
        for from in &select.from {
            self.join(from, &mut level, scope, depth);
        }
        self.projection(&select.projection, &level, depth)
    }

    /// Adds the items of `a JOIN b ...` to `level`. A LATERAL subquery or a function sees the
    /// items before it (`level`); a plain subquery sees only the enclosing query (`plain`).
    pub(super) fn join(
        &mut self,
        from: &TableWithJoins,
        level: &mut Scope,
        plain: &Scope,
        depth: u32,
    ) {
        let factors = std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation));
        for factor in factors {
            let items = self.factor_items(factor, level, plain, depth);
            level.items.extend(items);
        }
    }

    pub(super) fn factor_items(
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
    pub(super) fn table(
        &mut self,
        name: &ObjectName,
        alias: Option<&TableAlias>,
        scope: &Scope,
    ) -> FromItem {
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

    pub(super) fn function_name(&mut self, name: &ObjectName) -> Option<String> {
        name.0
            .last()
            .and_then(ObjectNamePart::as_ident)
            .map(|i| self.ident(i))
    }

    /// The RETURNING list of INSERT, UPDATE, DELETE or MERGE; `None` without one.
    pub(super) fn returning(
        &mut self,
        s: &Statement,
        scope: &Scope,
        depth: u32,
    ) -> Option<QueryOutput> {
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

    pub(super) fn projection(
        &mut self,
        list: &[SelectItem],
        level: &Scope,
        depth: u32,
    ) -> QueryOutput {
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

    pub(super) fn output_column(
        &mut self,
        e: &Expr,
        name: Option<String>,
        scope: &Scope,
        depth: u32,
    ) -> Item {
        let mut sources = Vec::new();
        self.expr(e, scope, depth, &mut sources);
        Item::column(name, sources)
    }

    /// The name PostgreSQL gives an unaliased output column, where we are sure of it.
    pub(super) fn column_name(&mut self, e: &Expr) -> Option<String> {
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
    pub(super) fn expr(
        &mut self,
        e: &Expr,
        scope: &Scope,
        depth: u32,
        out: &mut Vec<SourceColumn>,
    ) {
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
    pub(super) fn field_of_row(
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
    pub(super) fn whole_row(
        &mut self,
        name: &ObjectName,
        scope: &Scope,
        out: &mut Vec<SourceColumn>,
    ) {
        let parts = self.parts(name);
        match scope.find(&parts) {
            Some(item) => item.whole_row(out),
            None => scope.reference(&parts, out),
        }
    }

    pub(super) fn function(
        &mut self,
        f: &Function,
        scope: &Scope,
        depth: u32,
        out: &mut Vec<SourceColumn>,
    ) {
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

    pub(super) fn function_arg(
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
    pub(super) fn generic<T: Visit>(
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
    pub(super) fn opaque<T: Visit>(
        &mut self,
        node: &T,
        scope: &Scope,
        out: &mut Vec<SourceColumn>,
    ) {
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

    pub(super) fn opaque_output(&mut self, q: &Query, scope: &Scope) -> QueryOutput {
        let mut sources = Vec::new();
        self.opaque(q, scope, &mut sources);
        QueryOutput {
            items: vec![Item::wildcard(sources, false)],
        }
    }
}

pub(super) fn returning_items<'a>(
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
pub(super) fn returns_rows(body: &SetExpr) -> bool {
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
pub(super) enum Inside {
    Expr(*const Expr),
    Query(*const Query),
}

/// Hands each top-most expression and subquery under a node to the [`Builder`].
pub(super) struct Walk<'b, 's, 'p> {
    pub(super) builder: &'b mut Builder,
    pub(super) scope: &'s Scope<'p>,
    pub(super) depth: u32,
    pub(super) out: &'b mut Vec<SourceColumn>,
    pub(super) root: Option<*const Expr>,
    /// Set while the visitor walks a subtree the builder already analysed.
    pub(super) inside: Option<Inside>,
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
pub(super) struct Relations<'b> {
    pub(super) builder: &'b mut Builder,
    pub(super) found: Vec<RelationName>,
    pub(super) seen: HashSet<RelationName>,
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
