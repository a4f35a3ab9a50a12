//! Relations read and written and functions called, by a visitor over the whole statement.

use std::ops::ControlFlow;

use sqlparser::ast::{
    CommentObject, CopySource, Expr, FromTable, GrantObjects, Ident, ObjectName, ObjectType, Query,
    SchemaName, Select, SetExpr, Statement, TableFactor, TableObject, UtilityOption, Value,
    Visitor,
};

use super::eval::Eval;
use crate::names::{self, fold};
use crate::{ObjectKind, RelationName, Write, WriteAction};

/// CTE names visible at one query level. Without RECURSIVE, a CTE sees only the ones before it.
struct CteScope {
    ctes: Vec<(String, *const Query)>,
    visible: usize,
    recursive: bool,
}

#[derive(Default)]
pub(super) struct Collector {
    pub(super) reads: Vec<RelationName>,
    pub(super) writes: Vec<Write>,
    pub(super) functions: Vec<String>,
    scopes: Vec<CteScope>,
    /// Depth of EXPLAIN without ANALYZE: the statements inside do not run.
    dry_run: u32,
    pub(super) where_always_true: bool,
    pub(super) literal_dependent: bool,
    pub(super) explain_analyze: bool,
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
