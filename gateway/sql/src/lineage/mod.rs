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
//!
//! - here: the public types, the entry points and the helpers the others share (`spread`,
//!   `tidy`);
//! - [`items`]: a query's output items while it is analysed, and how `*` expands;
//! - [`scope`]: the FROM items in scope at each query level, and name resolution in them;
//! - [`builder`]: the walk over a statement that builds each query's output.

use std::collections::HashSet;

use serde::Serialize;
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::names::MAX_OPERATOR_CHAIN;
use crate::{lexer, LexOptions, RelationName};

mod builder;
mod items;
mod scope;

use builder::Builder;
use items::QueryOutput;
use scope::Scope;

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
