//! The guardrails plugin, compiled to WebAssembly, in front of a real PostgreSQL: a corpus of
//! destructive attempts that must each be refused with the rule's name while the protected
//! table keeps every row, and a corpus of harmless statements that must pass untouched.

use pgward_e2e::{
    connect_direct, plugin_wasm, plugins_dir, Gateway, GatewayOptions, Postgres, TestUser,
};
use std::path::Path;
use tokio_postgres::{Client, SimpleQueryMessage};

const CONFIG: &str = r#"
search_path = ["public"]

[[profiles]]
name = "dba"
groups = ["dba"]
allow_ddl = true
protected = ["public.accounts"]
allow_procedures = ["public.audit_ping"]

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

/// The schema every test starts from; `accounts` is the table the corpus attacks.
const SCHEMA: &str = r#"
CREATE SCHEMA scratch;
CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL, note text);
INSERT INTO accounts (owner, balance) VALUES
  ('ada', 100), ('alan', 200), ('grace', 300), ('edsger', 400), ('barbara', 500);
CREATE TABLE scratch.notes (id serial PRIMARY KEY, body text);
CREATE PROCEDURE audit_ping() LANGUAGE sql AS $$ INSERT INTO scratch.notes (body) VALUES ('ping') $$;
CREATE PROCEDURE wipe_accounts() LANGUAGE sql AS $$ DELETE FROM accounts $$;
"#;

/// (user, statement, rule that must refuse it).
const DESTRUCTIVE: &[(&str, &str, &str)] = &[
    ("app", "DROP TABLE accounts", "no-drop"),
    ("app", "DROP TABLE public.accounts", "no-drop"),
    ("app", "drop table \"accounts\"", "no-drop"),
    ("app", "DROP TABLE PUBLIC.Accounts CASCADE", "no-drop"),
    ("app", "DROP TABLE IF EXISTS scratch.nothing, accounts", "no-drop"),
    ("app", "TRUNCATE accounts", "no-truncate"),
    ("app", "TRUNCATE ONLY \"public\".\"accounts\" RESTART IDENTITY", "no-truncate"),
    ("app", "DELETE FROM accounts", "unbounded-write"),
    ("app", "UPDATE accounts SET balance = 0", "unbounded-write"),
    ("app", "DELETE FROM accounts WHERE 1=1", "unbounded-write"),
    ("app", "DELETE FROM accounts WHERE true", "unbounded-write"),
    ("app", "UPDATE accounts SET balance = 0 WHERE 'a' = 'a'", "unbounded-write"),
    ("app", "DELETE FROM accounts WHERE NOT false OR id = 1", "unbounded-write"),
    // Writes hidden in other commands.
    ("app", "WITH gone AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM gone", "unbounded-write"),
    ("app", "COPY (DELETE FROM accounts RETURNING *) TO STDOUT", "unbounded-write"),
    ("app", "EXPLAIN ANALYZE DELETE FROM accounts", "unbounded-write"),
    ("app", "EXPLAIN (ANALYZE, COSTS OFF) UPDATE accounts SET balance = 0 WHERE 1 = 1", "unbounded-write"),
    ("app", "PREPARE wipe AS DELETE FROM accounts", "unbounded-write"),
    ("app", "EXECUTE wipe", "execute"),
    ("app", "SELECT * INTO accounts_copy FROM accounts", "ddl"),
    ("dba", "CREATE TABLE stash AS WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d", "unbounded-write"),
    // One bad statement refuses the whole string.
    ("app", "SELECT 1; DELETE FROM accounts", "unbounded-write"),
    ("app", "BEGIN; DELETE FROM accounts; COMMIT", "unbounded-write"),
    // Quoting and comment tricks.
    ("app", "DELETE /* only one row */ FROM/**/accounts -- WHERE id = 1", "unbounded-write"),
    ("app", "SELECT E'\\\\'; DROP TABLE accounts; --'", "no-drop"),
    ("app", "SELECT $a$ $$ $a$; DROP TABLE accounts; -- $$", "no-drop"),
    ("app", "SELECT 1 /* outer /* inner */ still a comment */; DROP TABLE accounts", "no-drop"),
    ("app", "SELECT '--'; TRUNCATE accounts", "no-truncate"),
    ("app", "SELECT '\\'; DROP TABLE accounts; --'", "unknown-statement"),
    // Effects that cannot be known.
    ("app", "DO $$ BEGIN DELETE FROM accounts; END $$", "do-block"),
    ("app", "CALL wipe_accounts()", "call"),
    ("dba", "CALL wipe_accounts()", "call"),
    // DDL without DDL rights.
    ("app", "ALTER TABLE accounts RENAME TO accounts_old", "ddl"),
    ("app", "ALTER TABLE accounts DROP COLUMN balance", "ddl"),
    ("app", "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM accounts'", "ddl"),
    ("app", "CREATE RULE wipe AS ON INSERT TO scratch.notes DO ALSO DELETE FROM accounts", "ddl"),
    // Dangerous functions, role and search path changes.
    ("app", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'nobody'", "dangerous-function"),
    ("app", "SELECT pg_catalog.pg_read_file('/etc/passwd')", "dangerous-function"),
    ("app", "SELECT lo_export(0, '/tmp/pgward-guardrails-x')", "dangerous-function"),
    ("app", "SELECT pg_catalog.set_config('role', 'postgres', false)", "dangerous-function"),
    ("app", "SET ROLE postgres", "role-change"),
    ("app", "SET SESSION AUTHORIZATION postgres", "role-change"),
    ("app", "SET search_path = scratch, public", "search-path"),
    // Even DBAs: protected tables, the server's programs and files, roles.
    ("dba", "DROP TABLE accounts", "no-drop"),
    ("dba", "TRUNCATE accounts", "no-truncate"),
    ("dba", "DROP SCHEMA public CASCADE", "no-drop"),
    ("dba", "DELETE FROM accounts", "unbounded-write"),
    ("dba", "COPY accounts FROM PROGRAM 'true'", "copy-program"),
    ("dba", "COPY (SELECT * FROM accounts) TO PROGRAM 'cat > /dev/null'", "copy-program"),
    ("dba", "COPY accounts TO '/tmp/pgward-guardrails-accounts.csv'", "server-file"),
    ("dba", "CREATE ROLE intruder SUPERUSER", "role-change"),
    ("dba", "GRANT postgres TO pgward_gw", "role-change"),
    // Read-only identities.
    ("agent", "INSERT INTO accounts (owner, balance) VALUES ('mallory', 1)", "read-only"),
    ("agent", "UPDATE accounts SET balance = 0 WHERE id = 1", "read-only"),
    ("agent", "MERGE INTO accounts a USING (SELECT id FROM accounts) s ON a.id = s.id WHEN MATCHED THEN DELETE", "read-only"),
    ("agent", "COPY accounts FROM STDIN", "read-only"),
    ("agent", "SELECT nextval('accounts_id_seq')", "read-only"),
    ("agent", "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE", "read-only"),
    // Writes only to scratch.*.
    ("dev", "DELETE FROM accounts WHERE id = 1", "write-scope"),
    ("dev", "UPDATE \"accounts\" SET balance = 0 WHERE id > 0", "write-scope"),
    ("dev", "WITH x AS (UPDATE accounts SET balance = 0 WHERE id > 0 RETURNING 1) SELECT count(*) FROM x", "write-scope"),
    ("dev", "CREATE RULE wipe AS ON INSERT TO scratch.notes DO ALSO DELETE FROM accounts", "write-scope"),
    ("dev", "MERGE INTO accounts a USING (SELECT id FROM accounts) s ON a.id = s.id WHEN MATCHED THEN DELETE", "write-scope"),
];

/// (user, statement, first value of the first row it returns, if it returns rows).
const HARMLESS: &[(&str, &str, Option<&str>)] = &[
    ("app", "SELECT count(*) FROM accounts", Some("5")),
    ("app", "SELECT owner FROM public.accounts WHERE id = 1", Some("ada")),
    ("app", "SELECT 'DROP TABLE accounts'", Some("DROP TABLE accounts")),
    ("app", "SELECT $$DELETE FROM accounts$$", Some("DELETE FROM accounts")),
    ("app", "SELECT E'\\'; DROP TABLE accounts; --'", Some("'; DROP TABLE accounts; --")),
    ("app", "-- DROP TABLE accounts\nSELECT 1", Some("1")),
    ("app", "SELECT 2 /* TRUNCATE accounts */", Some("2")),
    ("app", "EXPLAIN (COSTS OFF) DELETE FROM accounts", Some("Delete on accounts")),
    ("app", "UPDATE accounts SET note = 'checked' WHERE id = 1", None),
    ("app", "DELETE FROM accounts WHERE id = 999", None),
    ("app", "INSERT INTO scratch.notes (body) VALUES ('DROP TABLE accounts')", None),
    ("app", "WITH t AS (SELECT id FROM accounts) SELECT count(*) FROM t", Some("5")),
    ("app", "BEGIN; SAVEPOINT s1; UPDATE accounts SET note = 'x' WHERE id = 2; ROLLBACK TO SAVEPOINT s1; COMMIT", None),
    ("app", "SET statement_timeout = '5s'", None),
    ("app", "SHOW statement_timeout", Some("5s")),
    ("app", "SELECT lower(owner), pg_sleep(0) FROM accounts WHERE id = 3", Some("grace")),
    ("app", "VALUES (1), (2)", Some("1")),
    ("app", "BEGIN; DECLARE c CURSOR FOR SELECT id FROM accounts ORDER BY id; FETCH 2 FROM c; CLOSE c; COMMIT", Some("1")),
    ("app", "LISTEN jobs; NOTIFY jobs, 'DROP TABLE accounts'; UNLISTEN jobs", None),
    ("app", "PREPARE one_account (int) AS SELECT owner FROM accounts WHERE id = $1; EXECUTE one_account(2)", Some("alan")),
    ("app", "EXECUTE one_account(4)", Some("edsger")),
    ("app", "DEALLOCATE one_account", None),
    ("app", "SELECT * FROM accounts WHERE note = 'DELETE FROM accounts WHERE 1=1'", None),
    ("app", "UPDATE accounts SET balance = balance WHERE id IN (SELECT id FROM accounts WHERE owner = 'ada')", None),
    ("app", "RESET ALL", None),
    ("agent", "SELECT count(*) FROM accounts", Some("5")),
    ("agent", "EXPLAIN ANALYZE SELECT * FROM accounts", None),
    ("agent", "BEGIN READ ONLY; SELECT owner FROM accounts ORDER BY id LIMIT 1; COMMIT", Some("ada")),
    ("dba", "CREATE TABLE scratch.tmp (id int); INSERT INTO scratch.tmp VALUES (1); DROP TABLE scratch.tmp", None),
    ("dba", "CALL audit_ping()", None),
    ("dba", "SELECT count(*) FROM scratch.notes WHERE body = 'ping'", Some("1")),
    ("dba", "COMMENT ON TABLE scratch.notes IS 'notes'", None),
    ("dev", "CREATE TABLE scratch.dev_t (id int); INSERT INTO scratch.dev_t SELECT id FROM accounts", None),
    ("dev", "SELECT count(*) FROM scratch.dev_t", Some("5")),
];

fn install(dir: &Path, config: &str) {
    let tmp = dir.join(".guardrails.wasm.tmp");
    std::fs::copy(plugin_wasm("guardrails"), &tmp).unwrap();
    std::fs::write(dir.join("guardrails.toml"), config).unwrap();
    std::fs::rename(&tmp, dir.join("guardrails.wasm")).unwrap();
}

struct Setup {
    pg: &'static Postgres,
    db: String,
    gw: Gateway,
}

async fn setup() -> Setup {
    let pg = Postgres::shared();
    let db = pg.create_database("guard").unwrap();
    let direct = connect_direct(pg, &db).await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let dir = plugins_dir();
    install(&dir, CONFIG);
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: vec![
                TestUser::new("app", "app-pw", &[]),
                TestUser::new("dba", "dba-pw", &["dba"]),
                TestUser::new("agent", "agent-pw", &["ai-agents"]),
                TestUser::new("dev", "dev-pw", &["developers"]),
            ],
            plugins_dir: Some(dir),
            ..Default::default()
        },
    )
    .unwrap();
    Setup { pg, db, gw }
}

/// Row count and a digest of every row of `accounts`, read past the gateway.
async fn accounts_state(direct: &Client) -> (i64, String) {
    let row = direct
        .query_one(
            "SELECT count(*), md5(string_agg(a::text, ',' ORDER BY id)) FROM accounts a",
            &[],
        )
        .await
        .expect("accounts still exists");
    (row.get(0), row.get(1))
}

/// Panics unless `err` is guardrails' 42501 naming `rule`, with a hint.
#[track_caller]
fn assert_refused_by(err: &tokio_postgres::Error, rule: &str, context: &str) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{context}: not a server error: {err}"));
    let expected = format!("guardrails: rule \"{rule}\" denies ");
    assert_eq!(db.code().code(), "42501", "{context}: {}", db.message());
    assert!(
        db.message().starts_with(&expected),
        "{context}: expected rule {rule}, got: {}",
        db.message()
    );
    assert!(
        db.hint().is_some_and(|h| !h.is_empty()),
        "{context}: no hint"
    );
    assert_eq!(
        db.detail(),
        Some("denied by policy plugin \"guardrails\""),
        "{context}"
    );
}

fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
        _ => None,
    })
}

#[tokio::test]
async fn destructive_corpus_is_refused_and_the_table_keeps_every_row() {
    assert!(DESTRUCTIVE.len() >= 40, "{} attempts", DESTRUCTIVE.len());
    let s = setup().await;
    let direct = connect_direct(s.pg, &s.db).await.unwrap();
    let before = accounts_state(&direct).await;
    assert_eq!(before.0, 5);
    let mut clients = std::collections::HashMap::new();
    for user in ["app", "dba", "agent", "dev"] {
        clients.insert(user, s.gw.connect(user, &s.db).await.unwrap());
    }
    for (i, (user, sql, rule)) in DESTRUCTIVE.iter().enumerate() {
        let context = format!("#{i} {user}: {sql:?}");
        let err = clients[user]
            .simple_query(sql)
            .await
            .expect_err(&format!("{context} ran"));
        assert_refused_by(&err, rule, &context);
        assert_eq!(
            accounts_state(&direct).await,
            before,
            "{context}: accounts changed"
        );
    }
    // Nothing else was created or dropped along the way, and every session is still usable.
    let leftovers: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('accounts_copy', 'stash', 'accounts_old')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
    let rules: i64 = direct
        .query_one("SELECT count(*) FROM pg_rules WHERE rulename = 'wipe'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rules, 0);
    for (user, client) in &clients {
        let n: i64 = client
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .unwrap_or_else(|e| panic!("{user}'s session is unusable: {e}"))
            .get(0);
        assert_eq!(n, 5);
    }
}

#[tokio::test]
async fn harmless_corpus_passes_and_does_what_it_says() {
    assert!(HARMLESS.len() >= 25, "{} statements", HARMLESS.len());
    let s = setup().await;
    let mut clients = std::collections::HashMap::new();
    for user in ["app", "dba", "agent", "dev"] {
        clients.insert(user, s.gw.connect(user, &s.db).await.unwrap());
    }
    for (i, (user, sql, expected)) in HARMLESS.iter().enumerate() {
        let messages = clients[user]
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("#{i} {user}: {sql:?} was refused: {e:?}"));
        if let Some(expected) = expected {
            assert_eq!(
                first_value(&messages).as_deref(),
                Some(*expected),
                "#{i} {user}: {sql:?}"
            );
        }
    }
    // COPY through the connection is allowed (tokio-postgres runs it outside simple_query).
    let agent = &clients["agent"];
    let copied = agent
        .copy_out("COPY accounts (owner) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(copied);
    let mut text = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut copied).await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(text).unwrap().lines().count(), 5);

    let direct = connect_direct(s.pg, &s.db).await.unwrap();
    let row = direct
        .query_one(
            "SELECT count(*), (SELECT note FROM accounts WHERE id = 1), \
             (SELECT note FROM accounts WHERE id = 2) FROM accounts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("checked"));
    assert_eq!(row.get::<_, Option<String>>(2), None, "rolled back");
    let notes: i64 = direct
        .query_one(
            "SELECT count(*) FROM scratch.notes WHERE body = 'DROP TABLE accounts'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes, 1);
}

#[tokio::test]
async fn simple_and_extended_protocol_are_judged_alike() {
    let s = setup().await;
    let direct = connect_direct(s.pg, &s.db).await.unwrap();
    let before = accounts_state(&direct).await;
    let app = s.gw.connect("app", &s.db).await.unwrap();
    for (sql, rule) in [
        ("DELETE FROM accounts", "unbounded-write"),
        ("DROP TABLE accounts", "no-drop"),
        (
            "UPDATE accounts SET balance = 0 WHERE 1 = 1",
            "unbounded-write",
        ),
        (
            "WITH gone AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM gone",
            "unbounded-write",
        ),
        ("SELECT pg_terminate_backend(0)", "dangerous-function"),
    ] {
        let simple = app.simple_query(sql).await.unwrap_err();
        assert_refused_by(&simple, rule, &format!("simple: {sql}"));
        // tokio-postgres sends Parse/Bind/Execute: the Parse is refused.
        let extended = app.execute(sql, &[]).await.unwrap_err();
        assert_refused_by(&extended, rule, &format!("extended: {sql}"));
        assert_eq!(accounts_state(&direct).await, before, "{sql}");
    }
    // With parameters, a bounded write passes and does its work.
    let owner: String = app
        .query_one("SELECT owner FROM accounts WHERE id = $1", &[&2i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "alan");
    let n = app
        .execute(
            "UPDATE accounts SET note = $1 WHERE id = $2",
            &[&"via extended", &3i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let err = app
        .execute("UPDATE accounts SET note = $1", &[&"everyone"])
        .await
        .unwrap_err();
    assert_refused_by(&err, "unbounded-write", "extended UPDATE without WHERE");
    let notes: i64 = direct
        .query_one("SELECT count(*) FROM accounts WHERE note IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes, 1);
}

#[tokio::test]
async fn a_deny_inside_a_transaction_aborts_it_like_any_error() {
    let s = setup().await;
    let direct = connect_direct(s.pg, &s.db).await.unwrap();
    let app = s.gw.connect("app", &s.db).await.unwrap();
    app.batch_execute("BEGIN; UPDATE accounts SET note = 'in tx' WHERE id = 1")
        .await
        .unwrap();
    let err = app.batch_execute("TRUNCATE accounts").await.unwrap_err();
    assert_refused_by(&err, "no-truncate", "TRUNCATE in a transaction");
    let err = app.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P02");
    app.batch_execute("ROLLBACK").await.unwrap();
    let row = direct
        .query_one("SELECT count(*), count(note) FROM accounts", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (5, 0));
}

#[test]
fn psql_shows_the_rule_and_the_hint() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(setup());
    let out =
        s.gw.psql("app", &s.db, &["-c", "DROP TABLE accounts"], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("ERROR:  guardrails: rule \"no-drop\" denies DROP TABLE on public.accounts"),
        "{stderr}"
    );
    assert!(
        stderr.contains("HINT:  profile \"default\" may not drop anything through this gateway"),
        "{stderr}"
    );
    let out = s.gw.psql(
        "dev",
        &s.db,
        &["-c", "DELETE FROM accounts WHERE id = 1"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rule \"write-scope\" denies DELETE on public.accounts")
            && stderr.contains("HINT:  profile \"developers\" may write only to scratch.*"),
        "{stderr}"
    );
}
