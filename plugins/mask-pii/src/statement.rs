//! Statements refused before they run, for sessions whose results are masked, when
//! `on_uncertain = "deny"`: what the plugin cannot follow from a result's lineage.
//!
//! Masking works on what the gateway can say about each result column. Some statements move
//! data where that lineage is lost or defeated; those are refused (SQLSTATE 42501) with the
//! reason. In order:
//!
//! 1. **Unknown statements**: text the gateway could not analyse (`DO` blocks, unusual
//!    syntax). Nothing is known about what they read or print.
//! 2. **Functions not known to be safe**: any function outside the built-in list
//!    ([`BUILTIN_FUNCTIONS`]) and `allow_functions`, anywhere in the text, special forms
//!    (`SUBSTRING(x FROM ..)`, `OVERLAY`, `TRIM`) included. Functions can cut a value into
//!    pieces no detector recognises (`substr`, `left`, `split_part`, `translate`), encode it
//!    (`encode`, `md5`), read tables the statement does not name (user functions,
//!    `query_to_xml`), or send it elsewhere (`set_config`, `pg_notify`, `RAISE` in a function).
//! 3. **Statistics catalogs**: `pg_statistic`, `pg_stats`, `pg_stats_ext(_exprs)` and
//!    `pg_statistic_ext_data` hold sample values of every analysed column.
//! 4. **Truncating casts**: a cast to `char(n)`, `varchar(n)`, `bit(n)`, `"char"` in a
//!    statement that reads a relation: a prefix of a value is not recognisable.
//! 5. **Casts that echo or encode a value**: a classified column (or a whole row of a
//!    relation that may hold one) cast to a type other than `text`, `varchar`, `bpchar` or
//!    `citext`: `ssn::int` fails with `invalid input syntax for type integer: "123-45-6789"`,
//!    and errors do not pass through the masking; `::bytea` (then `::text`) turns a value into
//!    hex escapes; `::name` cuts it at 63 bytes.
//! 6. **Cursors and SQL-level prepared statements over computed columns**: when some class
//!    has no detector, a `DECLARE ... CURSOR FOR` or `PREPARE ... AS` whose query is not a
//!    plain column list. `FETCH` and `EXECUTE` results carry no lineage for computed columns,
//!    so only the detectors would see them.
//! 7. **Writes of rows that were read**: INSERT/UPDATE/MERGE/SELECT INTO/CREATE TABLE AS/
//!    materialized views that read a relation (any relation: a view can hide a classified
//!    table) store values in columns no class names. Allowed: reads of `trusted_relations`
//!    only, and an UPDATE that reads only its own table and copies no classified column (or
//!    whole row) into a column no class names (`SET phone = $1`, `SET n = n + 1`).
//! 8. **COPY to a server file or program**.
//! 9. **Changes to the tables the classes name** (and to any schema): ALTER, RENAME, triggers,
//!    rules, policies, indexes. Classes match by name, so a renamed column or table, or a
//!    schema renamed, would no longer be classified; a generated column or a trigger copies
//!    values into columns no class names; a unique index reports duplicate keys, values
//!    included, in its error.

use crate::config::{Config, OnUncertain};
use crate::patterns::FunctionPattern;
use crate::plan::Active;
use crate::sqlscan::{self, Tok};
use pgward_plugin_sdk::prelude::*;

/// Functions callable on masked data without `allow_functions`: they keep values whole
/// (aggregates, case changes, concatenation, JSON and array builders), return numbers, dates
/// or booleans, or read catalog metadata (what psql's `\d` and drivers call). A `*` matches
/// any run of characters. Unqualified or `pg_catalog.`-qualified calls only; the
/// `information_schema._pg_*` helpers are allowed too.
pub const BUILTIN_FUNCTIONS: &[&str] = &[
    // Aggregates and window functions.
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_*",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "any_value",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // Whole values, case changes, concatenation, sizes.
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "lower",
    "upper",
    "initcap",
    "concat",
    "concat_ws",
    "format",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "position",
    "strpos",
    // JSON and arrays built from whole values. `array` is the `ARRAY(SELECT ...)` constructor
    // (psql's `\du` uses it), which the gateway's analysis reports as a call.
    "array",
    "row_to_json",
    "to_json",
    "to_jsonb",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "array_to_json",
    "json_object",
    "jsonb_object",
    "json_strip_nulls",
    "jsonb_strip_nulls",
    "jsonb_pretty",
    "json_typeof",
    "jsonb_typeof",
    "array_to_string",
    "array_length",
    "array_lower",
    "array_upper",
    "array_ndims",
    "array_dims",
    "cardinality",
    "array_append",
    "array_prepend",
    "array_cat",
    "unnest",
    "array_position",
    "array_positions",
    // Dates and times.
    "now",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "date_bin",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    "to_char",
    "timezone",
    // Numbers.
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "sign",
    "sqrt",
    "cbrt",
    "power",
    "pow",
    "exp",
    "ln",
    "log",
    "log10",
    "mod",
    "div",
    "random",
    "random_normal",
    "pi",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "width_bucket",
    "gcd",
    "lcm",
    "scale",
    "factorial",
    // Other values and session facts.
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "generate_series",
    "num_nulls",
    "num_nonnulls",
    "pg_typeof",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_user",
    "session_user",
    "current_role",
    "version",
    "current_setting",
    "pg_backend_pid",
    "txid_current",
    "pg_current_xact_id",
    "pg_is_in_recovery",
    "pg_postmaster_start_time",
    "inet_server_addr",
    "inet_server_port",
    // Catalog metadata (psql's \d, drivers): names, definitions and sizes, never rows.
    "format_type",
    "obj_description",
    "col_description",
    "shobj_description",
    "pg_get_*",
    "has_*_privilege",
    "pg_has_role",
    "pg_*_is_visible",
    "pg_encoding_to_char",
    "pg_*_size",
    "pg_size_pretty",
    "pg_relation_is_publishable",
    "pg_is_other_temp_schema",
    "pg_my_temp_schema",
    "pg_tablespace_location",
    "to_reg*",
];

/// Relations that hold sample values of every analysed column.
const STATISTICS: &[&str] = &[
    "pg_statistic",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic_ext_data",
];

/// Cast targets that neither truncate nor fail on any text.
const SAFE_TARGETS: &[&str] = &[
    "text",
    "varchar",
    "character varying",
    "bpchar",
    "citext",
    "unknown",
];

/// Cast targets that truncate when given a length (or, for `char`, without one).
const TRUNCATING: &[&str] = &[
    "char",
    "character",
    "varchar",
    "character varying",
    "bpchar",
    "nchar",
    "national character",
    "bit",
    "bit varying",
    "varbit",
];

/// Checks `query` for a session with `active` classes.
pub fn check(
    config: &Config,
    builtin: &[FunctionPattern],
    active: Active,
    query: &Query,
) -> Verdict {
    if active.is_empty() || config.on_uncertain == OnUncertain::Detect {
        return Verdict::Allow;
    }
    match refusal(config, builtin, active, query) {
        None => Verdict::Allow,
        Some((message, hint)) => {
            Verdict::deny(sqlstate::INSUFFICIENT_PRIVILEGE, message).with_hint(hint)
        }
    }
}

/// Whether judging `query` reads its raw text (calls and casts need parentheses or `::`, and
/// cursors, PREPARE and UPDATE their own tokens); otherwise the analysis alone decides.
pub fn reads_text(query: &Query) -> bool {
    query.sql.contains(['(', ':'])
        || query.statements.iter().any(|s| {
            s.is_command("DECLARE CURSOR")
                || matches!(s.kind, StatementKind::Prepare | StatementKind::Update)
        })
}

/// The reason to refuse `query`, and a hint.
fn refusal(
    config: &Config,
    builtin: &[FunctionPattern],
    active: Active,
    query: &Query,
) -> Option<(String, String)> {
    const ADMIN: &str =
        "results of this identity are masked (mask-pii); an exempt identity can run it";
    if let Some(s) = query.statements.iter().find(|s| s.is_unknown()) {
        return Some((
            format!(
                "{} statements cannot be checked for classified data (the gateway could not analyse it), so it was not run",
                s.command
            ),
            ADMIN.into(),
        ));
    }
    // The text is read only when a check needs it: calls and casts need parentheses or `::`,
    // and cursors, PREPARE and UPDATE their own tokens. `SELECT a FROM t WHERE id = $1`
    // (most traffic) is judged on the analysis alone.
    let needs_tokens = reads_text(query);
    let tokens = if needs_tokens {
        sqlscan::tokenize(&query.sql)
    } else {
        Ok(Vec::new())
    };
    let toks = match tokens {
        Ok(t) => t,
        Err(e) => {
            return Some((
                format!(
                    "the statement cannot be checked for classified data ({e}), so it was not run"
                ),
                ADMIN.into(),
            ))
        }
    };

    // 2. Functions.
    let analysed = query.functions().map(|f| match f.rsplit_once('.') {
        Some((s, n)) => (Some(s.to_owned()), n.to_owned()),
        None => (None, f.to_owned()),
    });
    for (schema, name) in analysed.chain(sqlscan::calls(&toks)) {
        let builtin_ok = (matches!(schema.as_deref(), None | Some("pg_catalog"))
            && builtin.iter().any(|p| p.matches(None, &name)))
            // The information schema's helpers (`_pg_expandarray`, ...), used by JDBC.
            || (schema.as_deref() == Some("information_schema") && name.starts_with("_pg_"));
        let allowed = builtin_ok
            || config
                .allow_functions
                .iter()
                .any(|p| p.matches(schema.as_deref(), &name));
        if !allowed {
            let shown = match &schema {
                Some(s) => format!("{s}.{name}"),
                None => name.clone(),
            };
            return Some((
                format!(
                    "the statement calls {shown}(), which can carry classified values past the masking (cut, encode or read them on its own), so it was not run"
                ),
                "an administrator can allow the function with allow_functions in mask_pii.toml; results of this identity are masked".into(),
            ));
        }
    }

    // 3. Statistics catalogs.
    if let Some(r) = query.reads().find(|r| {
        matches!(r.schema.as_deref(), None | Some("pg_catalog"))
            && STATISTICS.contains(&r.name.as_str())
    }) {
        return Some((
            format!("{} holds sample values of table columns, so it cannot be read by an identity whose results are masked", r.name),
            ADMIN.into(),
        ));
    }

    let reads: Vec<&Relation> = query.reads().collect();
    let sensitive_relations: Vec<String> = reads
        .iter()
        .filter(|r| {
            active.iter().any(|i| {
                config.classes[i]
                    .lineage
                    .iter()
                    .any(|p| p.matches_relation(r))
            })
        })
        .map(|r| r.name.clone())
        .collect();
    let classified_names: Vec<&str> = active
        .iter()
        .flat_map(|i| {
            config.classes[i]
                .lineage
                .iter()
                .filter_map(|p| p.column_name())
        })
        .collect();
    // A class naming every column of a relation the statement reads: any column is classified.
    let any_column = active.iter().any(|i| {
        config.classes[i]
            .lineage
            .iter()
            .any(|p| p.column_name().is_none() && reads.iter().any(|r| p.matches_relation(r)))
    });
    let row_names = sqlscan::row_names(&toks, &sensitive_relations);

    // 4, 5. Casts.
    for cast in sqlscan::casts(&toks) {
        let target = cast.target.as_str();
        let operand = &toks[cast.operand.clone()];
        let sensitive = operand.iter().enumerate().any(|(k, t)| {
            let Some(name) = t.ident() else {
                return false;
            };
            let qualifier = operand.get(k + 1) == Some(&Tok::Dot);
            let called = operand.get(k + 1) == Some(&Tok::Open);
            let type_name = k > 0 && operand[k - 1] == Tok::Cast;
            if qualifier || called || type_name {
                return false;
            }
            let is_keyword = t
                .word()
                .is_some_and(|w| matches!(w, "null" | "true" | "false"));
            !is_keyword
                && (any_column
                    || classified_names.contains(&name)
                    || row_names.iter().any(|r| r == name))
        });
        let truncating = (TRUNCATING.contains(&target)
            && (cast.modifier || matches!(target, "char" | "character" | "nchar"))
            && !reads.is_empty())
            // `name` keeps 63 bytes: enough to cut a whole row short.
            || (target == "name" && sensitive);
        if truncating {
            return Some((
                format!(
                    "the statement casts to {target}{}, which can cut classified values into pieces the masking cannot recognise, so it was not run",
                    if cast.modifier { "(n)" } else if target == "name" { "" } else { "(1)" }
                ),
                "cast to text or varchar without a length; results of this identity are masked".into(),
            ));
        }
        if SAFE_TARGETS.contains(&target) || !sensitive {
            continue;
        }
        let why = if target == "bytea" {
            "bytea turns it into escaped bytes the detectors cannot read"
        } else {
            "a value that does not convert would be shown in the error message"
        };
        return Some((
            format!("the statement casts classified data to {target}: {why}, so it was not run"),
            "compare or convert the masked value instead; results of this identity are masked"
                .into(),
        ));
    }

    // Statement by statement, with its own tokens where a check needs them.
    let slices: Vec<&[Tok]> = toks
        .split(|t| *t == Tok::Semi)
        .filter(|s| !s.is_empty())
        .collect();
    let aligned = slices.len() == query.statements.len();
    let blind = active
        .iter()
        .any(|i| config.classes[i].detectors.is_empty());
    for (n, s) in query.statements.iter().enumerate() {
        let mine = if aligned { Some(slices[n]) } else { None };

        // 6. Cursors and prepared statements over computed columns.
        let defines = s.is_command("DECLARE CURSOR") || s.kind == StatementKind::Prepare;
        if defines && blind && !s.reads.is_empty() {
            let plain = mine.is_some_and(|t| {
                let names = sqlscan::row_names(
                    t,
                    &s.reads.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                );
                sqlscan::inner_query(t).is_some_and(|q| sqlscan::is_plain_query(t, q, &names))
            });
            if !plain {
                return Some((
                    format!(
                        "{} of a query with computed columns: their results would reach the client without lineage, and some classified data has no detector, so it was not run",
                        if s.kind == StatementKind::Prepare { "PREPARE" } else { "DECLARE CURSOR" }
                    ),
                    "select plain columns in the cursor or prepared statement, or run the query directly; results of this identity are masked".into(),
                ));
            }
        }

        // 7. Writes of rows that were read.
        let row_write = s.writes.iter().find(|w| match w.action {
            WriteAction::Insert
            | WriteAction::Update
            | WriteAction::Merge
            | WriteAction::SelectInto
            | WriteAction::Refresh => true,
            WriteAction::Create => {
                matches!(w.object, ObjectKind::Table | ObjectKind::MaterializedView)
                    && !s.reads.is_empty()
            }
            _ => false,
        });
        if let Some(w) = row_write {
            let trusted = s.reads.iter().all(|r| {
                config
                    .trusted_relations
                    .iter()
                    .any(|p| p.matches_relation_strictly(r))
            });
            // An UPDATE of one table that reads nothing else may copy a value into another
            // column of it, unless the value is classified and the column it lands in is not.
            let own_update = s.kind == StatementKind::Update
                && s.reads
                    .iter()
                    .all(|r| s.writes.iter().any(|w| w.relation.name == r.name))
                && mine
                    .and_then(sqlscan::update_assignments)
                    .is_some_and(|assignments| {
                        assignments.iter().all(|a| {
                            let classified_source = a.sources.iter().any(|src| {
                                any_column
                                    || classified_names.contains(&src.as_str())
                                    || row_names.iter().any(|r| r == src)
                                    || s.writes.iter().any(|w| w.relation.name == *src)
                            });
                            let classified_target = !a.targets.is_empty()
                                && a.targets.iter().all(|t| {
                                    active.iter().any(|i| {
                                        config.classes[i].lineage.iter().any(|p| {
                                            p.matches_column(
                                                w.relation.schema.as_deref().unwrap_or(""),
                                                &w.relation.name,
                                                t,
                                            )
                                        })
                                    })
                                });
                            !a.subquery && (!classified_source || classified_target)
                        })
                    });
            if !s.reads.is_empty() && !trusted && !own_update {
                let read = s
                    .reads
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Some((
                    format!(
                        "the statement writes rows into {} from what it reads ({read}): classified values would be stored where they are not classified, so it was not run",
                        w.relation
                    ),
                    "an administrator can list relations that hold no classified data in trusted_relations; results of this identity are masked".into(),
                ));
            }
        }

        // 8. COPY to the server.
        if let Some(c) = s.copy {
            if c.direction == CopyDirection::To && (c.file || c.program) {
                return Some((
                    "COPY to a server file or program bypasses the masking, so it was not run"
                        .into(),
                    ADMIN.into(),
                ));
            }
        }

        // 9. Changes to the tables the classes name.
        let reshaped = s.writes.iter().find(|w| match (w.action, w.object) {
            (WriteAction::Alter, ObjectKind::Schema) => true,
            (WriteAction::Alter | WriteAction::CreateIndex, _) => active.iter().any(|i| {
                config.classes[i]
                    .lineage
                    .iter()
                    .any(|p| p.matches_relation(&w.relation))
            }),
            _ => false,
        });
        if let Some(w) = reshaped {
            return Some((
                format!(
                    "the statement changes {} ({}), which holds classified data: a renamed column, a generated column, a trigger or an index could carry values past the masking, so it was not run",
                    w.relation,
                    w.command()
                ),
                ADMIN.into(),
            ));
        }
    }
    None
}

/// The built-in allowlist, parsed once.
pub fn builtin_patterns() -> Vec<FunctionPattern> {
    BUILTIN_FUNCTIONS
        .iter()
        .map(|f| FunctionPattern::parse(f).expect("built-in function patterns are valid"))
        .collect()
}
