//! The approval-rules plugin, compiled to WebAssembly, in front of a real PostgreSQL, with its
//! shipped example configuration: statements that need approval are answered with 42501, the
//! rule's reason and the approver group, and do not run.

use pgward_e2e::{
    connect_direct, plugin_wasm, plugins_dir, Gateway, GatewayOptions, Postgres, TestUser,
};
use std::path::Path;
use tokio_postgres::Client;

const EXAMPLE: &str = include_str!("../../plugins/approval-rules/approval_rules.toml");

const SCHEMA: &str = r#"
CREATE SCHEMA billing;
CREATE SCHEMA prod;
CREATE TABLE billing.invoices (id int PRIMARY KEY, amount numeric NOT NULL, paid bool NOT NULL DEFAULT false);
INSERT INTO billing.invoices VALUES (1, 10, false), (2, 20, false), (3, 30, true);
CREATE TABLE prod.orders (id int PRIMARY KEY, status text);
INSERT INTO prod.orders VALUES (1, 'open');
CREATE TABLE payments (id int PRIMARY KEY, amount numeric NOT NULL);
INSERT INTO payments VALUES (1, 100), (2, 200);
CREATE TABLE notes (body text);
"#;

fn install(dir: &Path, stem: &str, wasm: &str, config: &str) {
    let tmp = dir.join(format!(".{stem}.wasm.tmp"));
    std::fs::copy(plugin_wasm(wasm), &tmp).unwrap();
    std::fs::write(dir.join(format!("{stem}.toml")), config).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{stem}.wasm"))).unwrap();
}

struct Setup {
    pg: &'static Postgres,
    db: String,
    gw: Gateway,
}

/// A database with the schema, and a gateway with the plugins `install` puts in its directory.
async fn setup(install_plugins: impl FnOnce(&Path), plugins_extra: &str) -> Setup {
    let pg = Postgres::shared();
    let db = pg.create_database("approve").unwrap();
    connect_direct(pg, &db)
        .await
        .unwrap()
        .batch_execute(SCHEMA)
        .await
        .unwrap();
    let dir = plugins_dir();
    install_plugins(&dir);
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: vec![
                TestUser::new("agent", "agent-pw", &["ai-agents"]),
                TestUser::new("dev", "dev-pw", &["developers"]),
            ],
            plugins_dir: Some(dir),
            plugins_extra: plugins_extra.into(),
            ..Default::default()
        },
    )
    .unwrap();
    Setup { pg, db, gw }
}

/// Everything the tests write to, read past the gateway.
async fn state(direct: &Client) -> String {
    let row = direct
        .query_one(
            "SELECT (SELECT string_agg(i::text, ',' ORDER BY id) FROM billing.invoices i) || ' | ' || \
                    (SELECT string_agg(p::text, ',' ORDER BY id) FROM payments p) || ' | ' || \
                    (SELECT string_agg(o::text, ',' ORDER BY id) FROM prod.orders o) || ' | ' || \
                    (SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname IN ('billing', 'prod', 'public') AND c.relkind = 'r')",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Panics unless `err` is the gateway's answer to a require-approval verdict of `rule`.
#[track_caller]
fn assert_held_by(err: &tokio_postgres::Error, rule: &str, approvers: &str, context: &str) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{context}: not a server error: {err}"));
    assert_eq!(db.code().code(), "42501", "{context}: {}", db.message());
    let expected = format!("approval required: rule \"{rule}\" covers ");
    assert!(
        db.message().starts_with(&expected),
        "{context}: expected rule {rule}, got: {}",
        db.message()
    );
    assert_eq!(
        db.hint(),
        Some(format!("a member of \"{approvers}\" must approve this statement").as_str()),
        "{context}"
    );
}

/// (user, statement, rule, approver group).
const HELD: &[(&str, &str, &str, &str)] = &[
    ("agent", "UPDATE billing.invoices SET paid = true WHERE id = 1", "agents-billing-writes", "billing-owners"),
    ("agent", "INSERT INTO billing.invoices VALUES (4, 40)", "agents-billing-writes", "billing-owners"),
    ("agent", "DELETE FROM BILLING.\"invoices\" WHERE id = 2", "agents-billing-writes", "billing-owners"),
    ("agent", "WITH x AS (DELETE FROM billing.invoices WHERE id = 1 RETURNING *) SELECT count(*) FROM x", "agents-billing-writes", "billing-owners"),
    ("agent", "EXPLAIN ANALYZE UPDATE billing.invoices SET amount = 0 WHERE id = 1", "agents-billing-writes", "billing-owners"),
    ("agent", "MERGE INTO billing.invoices i USING (SELECT 1 AS id) s ON i.id = s.id WHEN MATCHED THEN DELETE", "agents-billing-writes", "billing-owners"),
    ("agent", "SELECT 1; TRUNCATE billing.invoices", "agents-billing-writes", "billing-owners"),
    ("agent", "CREATE TABLE billing.stash AS SELECT * FROM billing.invoices", "agents-billing-writes", "billing-owners"),
    ("agent", "DO $$ BEGIN DELETE FROM billing.invoices; END $$", "agents-billing-writes", "billing-owners"),
    ("dev", "CREATE TABLE prod.t (id int)", "prod-ddl", "dba"),
    ("dev", "ALTER TABLE prod.orders ADD COLUMN note text", "prod-ddl", "dba"),
    ("dev", "DROP TABLE prod.orders", "prod-ddl", "dba"),
    ("dev", "UPDATE payments SET amount = 0 WHERE id = 1", "payment-corrections", "finance"),
    ("dev", "DELETE FROM public.payments WHERE id = 2", "payment-corrections", "finance"),
];

#[tokio::test]
async fn statements_needing_approval_are_refused_with_reason_and_approvers() {
    let s = setup(
        |d| install(d, "approval_rules", "approval_rules", EXAMPLE),
        "",
    )
    .await;
    let direct = connect_direct(s.pg, &s.db).await.unwrap();
    let before = state(&direct).await;
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    let dev = s.gw.connect("dev", &s.db).await.unwrap();
    for (user, sql, rule, approvers) in HELD {
        let client = if *user == "agent" { &agent } else { &dev };
        let context = format!("{user}: {sql:?}");
        let err = client
            .simple_query(sql)
            .await
            .expect_err(&format!("{context} ran"));
        assert_held_by(&err, rule, approvers, &context);
        assert_eq!(state(&direct).await, before, "{context} changed something");
    }
    // The message carries the rule's reason.
    let err = agent
        .simple_query("UPDATE billing.invoices SET paid = true WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "approval required: rule \"agents-billing-writes\" covers UPDATE on billing.invoices: \
         AI agents change billing data only with a person's approval"
    );
    // Extended protocol: the Parse is refused the same way.
    let err = agent
        .execute(
            "UPDATE billing.invoices SET paid = $1 WHERE id = $2",
            &[&true, &1i32],
        )
        .await
        .unwrap_err();
    assert_held_by(&err, "agents-billing-writes", "billing-owners", "extended");
    assert_eq!(state(&direct).await, before);

    // What no rule covers runs, in both protocols.
    let n: i64 = agent
        .query_one("SELECT count(*) FROM billing.invoices WHERE NOT paid", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    agent
        .simple_query("INSERT INTO notes VALUES ('UPDATE billing.invoices SET paid = true')")
        .await
        .unwrap();
    dev.simple_query("UPDATE billing.invoices SET paid = true WHERE id = 1")
        .await
        .unwrap();
    dev.simple_query("INSERT INTO payments VALUES (3, 300); UPDATE prod.orders SET status = 'paid' WHERE id = 1; CREATE TABLE scratch_t (id int)")
        .await
        .unwrap();
    let row = direct
        .query_one(
            "SELECT (SELECT paid FROM billing.invoices WHERE id = 1), \
                    (SELECT count(*) FROM payments), \
                    (SELECT status FROM prod.orders WHERE id = 1), \
                    (SELECT count(*) FROM notes)",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i64>(1), 3);
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("paid"));
    assert_eq!(row.get::<_, i64>(3), 1);
    assert!(s.gw.log().contains("statement denied"), "{}", s.gw.log());
}

#[tokio::test]
async fn guardrails_first_refuses_what_must_never_run_and_approval_holds_the_rest() {
    let guardrails = r#"
[[profiles]]
name = "agents"
groups = ["ai-agents"]
writable = ["billing.*", "public.notes"]
"#;
    let s = setup(
        |d| {
            install(d, "approval_rules", "approval_rules", EXAMPLE);
            install(d, "guardrails", "guardrails", guardrails);
        },
        "order = [\"guardrails\", \"approval_rules\"]",
    )
    .await;
    let direct = connect_direct(s.pg, &s.db).await.unwrap();
    let before = state(&direct).await;
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    // Guardrails refuses an unbounded delete before approval-rules is asked.
    let err = agent
        .simple_query("DELETE FROM billing.invoices")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(
        db.message()
            .starts_with("guardrails: rule \"unbounded-write\""),
        "{}",
        db.message()
    );
    // A bounded one may run once someone approves.
    let err = agent
        .simple_query("DELETE FROM billing.invoices WHERE id = 3")
        .await
        .unwrap_err();
    assert_held_by(
        &err,
        "agents-billing-writes",
        "billing-owners",
        "bounded delete",
    );
    // Outside billing, guardrails' scope decides.
    let err = agent
        .simple_query("UPDATE payments SET amount = 1 WHERE id = 1")
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .starts_with("guardrails: rule \"write-scope\""));
    assert_eq!(state(&direct).await, before);
    agent
        .simple_query("INSERT INTO public.notes VALUES ('ok')")
        .await
        .unwrap();
}
