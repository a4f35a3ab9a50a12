//! The approvals workflow end to end: the approval-rules plugin compiled to WebAssembly, a real
//! PostgreSQL, the real gateway with its admin API, psql and tokio-postgres as clients, the
//! `pgward approvals` CLI and raw HTTP as approvers, and a webhook receiver on loopback.

use pgward_e2e::{
    connect_direct, free_port, pgward_bin, plugin_wasm, plugins_dir, run_psql, Gateway,
    GatewayOptions, Postgres, TestUser, UPSTREAM_PASSWORD, UPSTREAM_USER,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const RULES: &str = r#"
search_path = ["public"]

[[rules]]
name = "agents-billing-writes"
groups = ["ai-agents"]
on = ["billing.*"]
approvers = "billing-owners"
reason = "AI agents change billing data only with a person's approval"

[[rules]]
name = "payments-defer"
groups = ["ai-agents"]
on = ["public.payments"]
approvers = "finance"
mode = "defer"

[[rules]]
name = "prod-ddl"
on = ["prod.*"]
actions = ["ddl"]
approvers = "dba"
quorum = 2
"#;

const SCHEMA: &str = r#"
CREATE SCHEMA billing;
CREATE SCHEMA prod;
CREATE TABLE billing.invoices (id int PRIMARY KEY, amount numeric NOT NULL, paid bool NOT NULL DEFAULT false);
INSERT INTO billing.invoices VALUES (1, 10, false), (2, 20, false), (3, 30, true);
CREATE TABLE prod.orders (id int PRIMARY KEY, status text);
CREATE TABLE payments (id int PRIMARY KEY, amount numeric NOT NULL);
INSERT INTO payments VALUES (1, 100), (2, 200);
"#;

const WEBHOOK_SECRET: &str = "whsec-test-1";

/// Approver tokens: (name, identity, groups).
const APPROVERS: &[(&str, &str, &[&str])] = &[
    ("carol", "carol", &["billing-owners", "finance", "dba"]),
    ("dave", "dave", &["billing-owners", "dba"]),
    // A second token of carol's: counts as carol, never as a second approver.
    ("carol-bot", "carol", &["dba"]),
    // The agent's own identity behind another name: may never approve the agent's requests.
    ("agent-helper", "agent", &["billing-owners", "finance"]),
    ("mallory", "mallory", &["marketing"]),
];

fn token(name: &str) -> String {
    format!("tok-{name}-0123456789abcdef")
}

struct Setup {
    pg: &'static Postgres,
    db: String,
    gw: Gateway,
    api: String,
}

struct Options {
    hold_timeout: &'static str,
    webhook: Option<u16>,
    /// An explicit store: `sqlite_path = ...` or `store = "postgres"` lines.
    store: String,
    db: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hold_timeout: "30s",
            webhook: None,
            store: String::new(),
            db: None,
        }
    }
}

fn approvals_toml(admin_port: u16, o: &Options) -> String {
    let mut t = format!(
        "[admin]\naddress = \"127.0.0.1:{admin_port}\"\n\n[approvals]\nhold_timeout = \"{}\"\nvalid_for = \"10m\"\n{}\n",
        o.hold_timeout, o.store
    );
    if let Some(port) = o.webhook {
        t.push_str(&format!(
            "[[approvals.groups]]\nname = \"billing-owners\"\nwebhook = \"http://127.0.0.1:{port}/hook\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n"
        ));
    }
    for (name, identity, groups) in APPROVERS {
        let hash: String = pgward::approvals::token_hash(&token(name))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        t.push_str(&format!(
            "[[approvals.approvers]]\nname = \"{name}\"\nidentity = \"{identity}\"\ngroups = {groups:?}\ntoken_sha256 = \"{hash}\"\n"
        ));
    }
    t
}

fn install(dir: &Path) {
    let tmp = dir.join(".approval_rules.wasm.tmp");
    std::fs::copy(plugin_wasm("approval_rules"), &tmp).unwrap();
    std::fs::write(dir.join("approval_rules.toml"), RULES).unwrap();
    std::fs::rename(&tmp, dir.join("approval_rules.wasm")).unwrap();
}

async fn setup(o: Options) -> Setup {
    let pg = Postgres::shared();
    let db = match &o.db {
        Some(db) => db.clone(),
        None => {
            let db = pg.create_database("approvals").unwrap();
            connect_direct(pg, &db)
                .await
                .unwrap()
                .batch_execute(SCHEMA)
                .await
                .unwrap();
            db
        }
    };
    let dir = plugins_dir();
    install(&dir);
    let admin = free_port();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: vec![
                TestUser::new("agent", "agent-pw", &["ai-agents"]),
                TestUser::new("dev", "dev-pw", &["developers"]),
            ],
            plugins_dir: Some(dir),
            extra_toml: approvals_toml(admin, &o),
            ..Default::default()
        },
    )
    .unwrap();
    Setup {
        pg,
        db,
        gw,
        api: format!("http://127.0.0.1:{admin}"),
    }
}

/// A call to the admin API: (status, JSON body).
fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let result = match method {
        "GET" => {
            let mut r = agent.get(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.send(body.unwrap_or("").as_bytes())
        }
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

impl Setup {
    fn get(&self, path: &str, who: &str) -> (u16, Value) {
        http(
            "GET",
            &format!("{}{path}", self.api),
            Some(&token(who)),
            None,
        )
    }

    fn decide(&self, id: &str, who: &str, verb: &str, comment: &str) -> (u16, Value) {
        let body = serde_json::json!({ "comment": comment }).to_string();
        http(
            "POST",
            &format!("{}/v1/approvals/{id}/{verb}", self.api),
            Some(&token(who)),
            Some(&body),
        )
    }

    /// Waits until `user` has a request with `status`, and returns the newest one.
    fn wait_for(&self, user: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (code, v) = self.get(
                &format!("/v1/approvals?status={status}&requester={user}"),
                "carol",
            );
            assert_eq!(code, 200, "{v}");
            if let Some(r) = v["requests"].as_array().and_then(|a| a.first()) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {status} request of {user}:\n{}",
                self.gw.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn request(&self, id: &str) -> Value {
        let (code, v) = self.get(&format!("/v1/approvals/{id}"), "carol");
        assert_eq!(code, 200, "{v}");
        v
    }

    /// `pgward approvals ARGS` as `who`: (success, stdout + stderr).
    fn cli(&self, who: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(pgward_bin())
            .arg("approvals")
            .args(args)
            .env("PGWARD_ADMIN_URL", &self.api)
            .env("PGWARD_TOKEN", token(who))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn psql_async(&self, user: &str, sql: &str) -> std::thread::JoinHandle<std::process::Output> {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} dbname={}",
            self.gw.port, self.db
        );
        let password = self.gw.user(user).password.clone();
        let sql = sql.to_owned();
        std::thread::spawn(move || run_psql(&conn, &password, &["-c", &sql], None))
    }

    async fn direct(&self) -> Client {
        connect_direct(self.pg, &self.db).await.unwrap()
    }
}

async fn invoice(direct: &Client, id: i32) -> (String, bool) {
    let row = direct
        .query_one(
            "SELECT amount::text, paid FROM billing.invoices WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn db_error(e: &tokio_postgres::Error) -> (&str, &str) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (db.code().code(), db.message())
}

/// The gateway's database, for tests that share one (two gateways, a restart).
async fn fresh_database(pg: &Postgres) -> String {
    let db = pg.create_database("approvals").unwrap();
    connect_direct(pg, &db)
        .await
        .unwrap()
        .batch_execute(SCHEMA)
        .await
        .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statement_runs_when_approved_from_the_cli_and_the_client_sees_its_result() {
    let s = setup(Options::default()).await;
    let direct = s.direct().await;
    let psql = s.psql_async(
        "agent",
        "UPDATE billing.invoices SET paid = true WHERE id = 1",
    );
    let r = s.wait_for("agent", "pending");
    let id = r["id"].as_str().unwrap().to_owned();
    // Everything an approver needs is in the request.
    assert_eq!(r["mode"], "hold");
    assert_eq!(r["requester"]["user"], "agent");
    assert_eq!(r["requester"]["groups"][0], "ai-agents");
    assert_eq!(r["requester"]["method"], "scram-sha-256");
    assert_eq!(r["requester"]["database"], s.db.as_str());
    assert_eq!(r["requester"]["application_name"], "psql");
    assert_eq!(
        r["statement"]["sql"],
        "UPDATE billing.invoices SET paid = true WHERE id = 1"
    );
    assert_eq!(r["statement"]["protocol"], "simple");
    assert_eq!(r["statement"]["commands"][0], "UPDATE");
    assert_eq!(r["statement"]["writes"][0], "update billing.invoices");
    assert_eq!(r["plugin"], "approval-rules");
    assert_eq!(r["rule"], "agents-billing-writes");
    assert_eq!(r["approver_group"], "billing-owners");
    assert!(r["reason"]
        .as_str()
        .unwrap()
        .contains("AI agents change billing data only with a person's approval"));
    assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    // Held, not run; other sessions go on meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(invoice(&direct, 1).await, ("10".into(), false));
    let dev = s.gw.connect("dev", &s.db).await.unwrap();
    let started = Instant::now();
    dev.simple_query("UPDATE billing.invoices SET amount = 15 WHERE id = 3")
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(invoice(&direct, 3).await, ("15".into(), true));
    let (ok, out) = s.cli("carol", &["list"]);
    assert!(
        ok && out.contains(&id) && out.contains("UPDATE billing.invoices"),
        "{out}"
    );
    let (ok, out) = s.cli("carol", &["show", &id]);
    assert!(
        ok && out.contains("\"rule\": \"agents-billing-writes\""),
        "{out}"
    );
    let (ok, out) = s.cli("carol", &["approve", &id, "--comment", "month-end close"]);
    assert!(ok, "{out}");
    assert!(out.contains("approved"), "{out}");
    let out = psql.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(invoice(&direct, 1).await, ("10".into(), true));
    let r = s.request(&id);
    assert_eq!(r["status"], "executed");
    assert_eq!(r["decisions"][0]["approver"], "carol");
    assert_eq!(r["decisions"][0]["comment"], "month-end close");
    assert_eq!(r["decisions"][0]["proven_by"], "bearer token \"carol\"");
    let log = s.gw.log();
    for event in ["approval.created", "approval.decided", "approval.executed"] {
        assert!(log.contains(event), "{event} missing from the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statement_denied_returns_the_comment_and_changes_nothing() {
    let s = setup(Options::default()).await;
    let direct = s.direct().await;
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    let held = tokio::spawn(async move {
        let r = agent
            .simple_query("DELETE FROM billing.invoices WHERE id = 2")
            .await;
        (agent, r)
    });
    let r = s.wait_for("agent", "pending");
    let (code, v) = s.decide(
        r["id"].as_str().unwrap(),
        "dave",
        "deny",
        "not during the audit",
    );
    assert_eq!(code, 200, "{v}");
    let (agent, result) = held.await.unwrap();
    let err = result.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(
        message.contains("was denied by dave: not during the audit"),
        "{message}"
    );
    assert_eq!(invoice(&direct, 2).await, ("20".into(), false));
    // The session goes on.
    let n: i64 = agent
        .query_one("SELECT count(*) FROM billing.invoices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statement_times_out_with_an_error_naming_the_request() {
    let s = setup(Options {
        hold_timeout: "1s",
        ..Default::default()
    })
    .await;
    let direct = s.direct().await;
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    let started = Instant::now();
    let err = agent
        .simple_query("UPDATE billing.invoices SET amount = 0 WHERE id = 1")
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (code, message) = db_error(&err);
    assert_eq!(code, "57014");
    let r = s.wait_for("agent", "expired");
    assert!(
        message.contains(r["id"].as_str().unwrap()) && message.contains("not decided within 1s"),
        "{message}"
    );
    assert_eq!(invoice(&direct, 1).await, ("10".into(), false));
    // Too late to approve.
    let (code, v) = s.decide(r["id"].as_str().unwrap(), "carol", "approve", "");
    assert_eq!(code, 409, "{v}");
    agent.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_or_disconnect_withdraws_a_held_request() {
    let s = setup(Options::default()).await;
    let direct = s.direct().await;
    // CancelRequest, as a driver sends it.
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    let cancel = agent.cancel_token();
    let held = tokio::spawn(async move {
        let r = agent
            .simple_query("UPDATE billing.invoices SET amount = 1 WHERE id = 1")
            .await;
        (agent, r)
    });
    let r = s.wait_for("agent", "pending");
    let id = r["id"].as_str().unwrap().to_owned();
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (agent, result) = held.await.unwrap();
    let (code, message) = db_error(result.as_ref().unwrap_err());
    assert_eq!(code, "57014");
    assert!(
        message.contains(&id) && message.contains("withdrawn"),
        "{message}"
    );
    assert_eq!(s.request(&id)["status"], "withdrawn");
    assert_eq!(s.request(&id)["end_reason"], "client cancelled");
    agent.simple_query("SELECT 1").await.unwrap();

    // A client that goes away (psql killed) withdraws its request too.
    let conn = format!(
        "host=127.0.0.1 port={} user=agent dbname={}",
        s.gw.port, s.db
    );
    let mut psql = Command::new("psql")
        .args([
            "-X",
            "-d",
            &conn,
            "-c",
            "UPDATE billing.invoices SET amount = 2 WHERE id = 2",
        ])
        .env("PGPASSWORD", "agent-pw")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let id2 = loop {
        let (_, v) = s.get("/v1/approvals?status=pending&requester=agent", "carol");
        if let Some(r) = v["requests"].as_array().and_then(|a| a.first()) {
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "{}", s.gw.log());
        std::thread::sleep(Duration::from_millis(25));
    };
    psql.kill().unwrap();
    psql.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.request(&id2)["status"] != "withdrawn" {
        assert!(Instant::now() < deadline, "{}", s.request(&id2));
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(s.request(&id2)["end_reason"], "client disconnected");
    // Approving a withdrawn request does nothing.
    let (code, _) = s.decide(&id2, "carol", "approve", "");
    assert_eq!(code, 409);
    assert_eq!(invoice(&direct, 1).await, ("10".into(), false));
    assert_eq!(invoice(&direct, 2).await, ("20".into(), false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statement_inside_a_transaction_and_a_pipeline_behaves_like_a_slow_server() {
    let s = setup(Options::default()).await;
    let direct = s.direct().await;
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    let agent = std::sync::Arc::new(agent);
    // BEGIN ... held UPDATE ... COMMIT.
    let a = agent.clone();
    let txn = tokio::spawn(async move {
        a.simple_query("BEGIN").await?;
        a.simple_query("SELECT 1").await?;
        let updated = a
            .simple_query("UPDATE billing.invoices SET amount = 12 WHERE id = 1")
            .await?;
        a.simple_query("COMMIT").await?;
        Ok::<_, tokio_postgres::Error>(updated.len())
    });
    let r = s.wait_for("agent", "pending");
    // Not committed while held: the server sees an open transaction, nothing changed.
    assert_eq!(invoice(&direct, 1).await, ("10".into(), false));
    let (code, v) = s.decide(r["id"].as_str().unwrap(), "carol", "approve", "ok");
    assert_eq!(code, 200, "{v}");
    txn.await.unwrap().unwrap();
    assert_eq!(invoice(&direct, 1).await, ("12".into(), false));

    // Denied inside a transaction: the transaction is failed, as after a server error.
    let a = agent.clone();
    let txn = tokio::spawn(async move {
        a.simple_query("BEGIN").await.unwrap();
        let denied = a
            .simple_query("UPDATE billing.invoices SET amount = 13 WHERE id = 1")
            .await
            .unwrap_err();
        let after = a.simple_query("SELECT 1").await.unwrap_err();
        a.simple_query("ROLLBACK").await.unwrap();
        (
            db_error(&denied).0.to_owned(),
            db_error(&after).0.to_owned(),
        )
    });
    let r = s.wait_for("agent", "pending");
    s.decide(r["id"].as_str().unwrap(), "carol", "deny", "no");
    let (denied, after) = txn.await.unwrap();
    assert_eq!(denied, "42501");
    assert_eq!(
        after, "25P02",
        "the client and the server agree the transaction failed"
    );
    assert_eq!(invoice(&direct, 1).await, ("12".into(), false));

    // Extended protocol, pipelined: a held Bind with its parameters, a query behind it.
    let a = agent.clone();
    let pipeline = tokio::spawn(async move {
        let update = a.execute(
            "UPDATE billing.invoices SET amount = $1::int WHERE id = $2",
            &[&77i32, &2i32],
        );
        let count = a.query_one("SELECT count(*) FROM billing.invoices", &[]);
        let (u, c) = futures_util::future::join(update, count).await;
        (u.unwrap(), c.unwrap().get::<_, i64>(0))
    });
    let r = s.wait_for("agent", "pending");
    assert_eq!(r["statement"]["protocol"], "extended");
    assert_eq!(
        r["statement"]["sql"],
        "UPDATE billing.invoices SET amount = $1::int WHERE id = $2"
    );
    // Parameters as the driver bound them: tokio-postgres sends binary, shown as hex.
    assert_eq!(r["statement"]["params"][1], "\\x00000002", "{r}");
    assert_eq!(invoice(&direct, 2).await, ("20".into(), false));
    s.decide(r["id"].as_str().unwrap(), "dave", "approve", "");
    let (updated, count) = pipeline.await.unwrap();
    assert_eq!((updated, count), (1, 3));
    assert_eq!(invoice(&direct, 2).await, ("77".into(), false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_must_be_in_the_group_never_the_requester_and_a_quorum_needs_two() {
    let s = setup(Options::default()).await;
    let direct = s.direct().await;
    let psql = s.psql_async(
        "agent",
        "UPDATE billing.invoices SET paid = true WHERE id = 2",
    );
    let r = s.wait_for("agent", "pending");
    let id = r["id"].as_str().unwrap().to_owned();
    // The agent's identity under another token name.
    let (code, v) = s.decide(&id, "agent-helper", "approve", "looks fine to me");
    assert_eq!(code, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("own identity"), "{v}");
    // Outside the approver group.
    let (code, v) = s.decide(&id, "mallory", "approve", "");
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("billing-owners"),
        "{v}"
    );
    let (ok, out) = s.cli("mallory", &["approve", &id]);
    assert!(!ok && out.contains("403"), "{out}");
    assert_eq!(s.request(&id)["status"], "pending");
    assert!(s.request(&id)["decisions"].as_array().unwrap().is_empty());
    s.decide(&id, "carol", "approve", "");
    assert!(psql.join().unwrap().status.success());
    assert_eq!(invoice(&direct, 2).await, ("20".into(), true));

    // Quorum of two distinct identities (rule prod-ddl), for anyone's DDL on prod.
    let psql = s.psql_async("dev", "ALTER TABLE prod.orders ADD COLUMN note text");
    let r = s.wait_for("dev", "pending");
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["quorum"], 2);
    let (code, v) = s.decide(&id, "carol", "approve", "");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "pending", "one approval of two");
    // carol's second token is still carol.
    let (code, v) = s.decide(&id, "carol-bot", "approve", "");
    assert_eq!(code, 409, "{v}");
    std::thread::sleep(Duration::from_millis(200));
    let cols: i64 = direct
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'prod' AND table_name = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cols, 2, "still held after one approval");
    let (code, v) = s.decide(&id, "dave", "approve", "");
    assert_eq!(code, 200, "{v}");
    assert!(psql.join().unwrap().status.success());
    let cols: i64 = direct
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'prod' AND table_name = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cols, 3);
    assert_eq!(s.request(&id)["status"], "executed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_statement_runs_once_after_approval_and_changes_need_a_new_one() {
    let s = setup(Options::default()).await;
    let direct = s.direct().await;
    let sql = "UPDATE payments SET amount = amount + 1 WHERE id = 1";
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    let err = agent.simple_query(sql).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "PWA01");
    let r = s.wait_for("agent", "pending");
    let id = r["id"].as_str().unwrap().to_owned();
    assert!(message.contains(&id), "{message}");
    assert_eq!(r["mode"], "defer");
    // Re-running before the decision names the same request.
    let err = agent.simple_query(sql).await.unwrap_err();
    assert!(db_error(&err).1.contains(&id) && db_error(&err).1.contains("still pending"));
    let (ok, out) = s.cli("carol", &["approve", &id]);
    assert!(ok, "{out}");
    // Once...
    agent.simple_query(sql).await.unwrap();
    // ...and only once.
    let err = agent.simple_query(sql).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "PWA01");
    assert!(!message.contains(&id), "a new request: {message}");
    let amount: String = direct
        .query_one("SELECT amount::text FROM payments WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(amount, "101");
    assert_eq!(s.request(&id)["status"], "executed");

    // Approval is for that text: another statement needs its own.
    let second = s.wait_for("agent", "pending");
    s.decide(second["id"].as_str().unwrap(), "carol", "approve", "");
    let err = agent
        .simple_query("UPDATE payments SET amount = amount + 1000 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "PWA01");

    // Extended protocol: the approval is for those parameter values.
    let stmt = "UPDATE payments SET amount = amount + 1 WHERE id = $1";
    let err = agent.execute(stmt, &[&2i32]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "PWA01");
    let pending = s
        .get("/v1/approvals?status=pending&requester=agent", "carol")
        .1;
    let r = pending["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["statement"]["sql"] == stmt)
        .unwrap()
        .clone();
    assert_eq!(r["statement"]["params"][0], "\\x00000002");
    s.decide(r["id"].as_str().unwrap(), "carol", "approve", "");
    let err = agent.execute(stmt, &[&1i32]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "PWA01", "other parameters");
    assert_eq!(agent.execute(stmt, &[&2i32]).await.unwrap(), 1);
    let err = agent.execute(stmt, &[&2i32]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "PWA01", "once only");
    let amounts: String = direct
        .query_one(
            "SELECT string_agg(amount::text, ',' ORDER BY id) FROM payments",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(amounts, "101,201");
}

/// One webhook delivery: lower-cased headers and the raw body.
type Delivery = (Vec<(String, String)>, String);

/// A webhook receiver on loopback: each delivery's headers and body. It answers 503 to the
/// first `fail_first` deliveries (which it still reports) and 200 to the rest.
fn webhook_receiver(fail_first: usize) -> (u16, mpsc::Receiver<Delivery>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let answer: &[u8] = if n < fail_first {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            };
            let _ = stream.write_all(answer);
            if tx
                .send((headers, String::from_utf8(body).unwrap()))
                .is_err()
            {
                return;
            }
        }
    });
    (port, rx)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_a_signed_payload_at_once_and_a_tampered_one_fails_verification() {
    let (port, deliveries) = webhook_receiver(1);
    let s = setup(Options {
        webhook: Some(port),
        ..Default::default()
    })
    .await;
    let psql = s.psql_async(
        "agent",
        "UPDATE billing.invoices SET paid = true WHERE id = 1",
    );
    let started = Instant::now();
    let (headers, body) = deliveries
        .recv_timeout(Duration::from_secs(5))
        .expect("a webhook delivery");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "delivered after {:?}",
        started.elapsed()
    );
    // The receiver failed that one (503): the same payload comes again after a backoff.
    let (_, retried) = deliveries
        .recv_timeout(Duration::from_secs(5))
        .expect("a retried delivery");
    assert_eq!(retried, body);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "backed off"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts = header(&headers, "x-pgward-timestamp");
    let sig = header(&headers, "x-pgward-signature");
    pgward::approvals::webhook::verify(WEBHOOK_SECRET.as_bytes(), ts, sig, &body, now)
        .expect("a correctly signed payload");
    let tampered = body.replace("billing", "b1lling");
    assert!(
        pgward::approvals::webhook::verify(WEBHOOK_SECRET.as_bytes(), ts, sig, &tampered, now)
            .is_err()
    );
    assert!(pgward::approvals::webhook::verify(b"wrong", ts, sig, &body, now).is_err());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"], "approval.created");
    let id = v["request"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        v["links"]["approve"],
        format!("{}/v1/approvals/{id}/approve", s.api)
    );
    assert_eq!(
        v["request"]["statement"]["sql"],
        "UPDATE billing.invoices SET paid = true WHERE id = 1"
    );
    // The decision is announced too.
    s.decide(&id, "carol", "approve", "ok");
    let (_, body) = deliveries.recv_timeout(Duration::from_secs(5)).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"], "approval.decided");
    assert_eq!(v["request"]["status"], "approved");
    assert!(psql.join().unwrap().status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_input_gets_a_clear_4xx_and_changes_nothing() {
    let s = setup(Options::default()).await;
    let agent = s.gw.connect("agent", &s.db).await.unwrap();
    agent
        .simple_query("UPDATE payments SET amount = 5 WHERE id = 2")
        .await
        .unwrap_err();
    let r = s.wait_for("agent", "pending");
    let id = r["id"].as_str().unwrap().to_owned();
    let url = |p: &str| format!("{}{p}", s.api);
    let approve = url(&format!("/v1/approvals/{id}/approve"));
    let cases: Vec<(u16, (u16, Value))> = vec![
        (401, http("POST", &approve, None, Some("{}"))),
        (401, http("POST", &approve, Some("not-a-token"), Some("{}"))),
        (401, http("GET", &url("/v1/approvals"), None, None)),
        (
            400,
            http(
                "POST",
                &approve,
                Some(&token("carol")),
                Some("{\"comment\": "),
            ),
        ),
        (
            400,
            http(
                "POST",
                &approve,
                Some(&token("carol")),
                Some("{\"coment\": \"x\"}"),
            ),
        ),
        (
            400,
            http(
                "GET",
                &url("/v1/approvals?status=maybe"),
                Some(&token("carol")),
                None,
            ),
        ),
        (
            404,
            http(
                "POST",
                &url("/v1/approvals/apr_aaaaaaaaaaaaaaaaaaaaaaaaaa/approve"),
                Some(&token("carol")),
                Some("{}"),
            ),
        ),
        (
            404,
            http(
                "GET",
                &url("/v1/approvals/nope"),
                Some(&token("carol")),
                None,
            ),
        ),
        (
            404,
            http("GET", &url("/v1/nothing"), Some(&token("carol")), None),
        ),
    ];
    for (want, (got, body)) in &cases {
        assert_eq!(got, want, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let r = s.request(&id);
    assert_eq!(r["status"], "pending");
    assert!(r["decisions"].as_array().unwrap().is_empty());
    let (ok, out) = s.cli("carol", &["show", "apr_aaaaaaaaaaaaaaaaaaaaaaaaaa"]);
    assert!(!ok && out.contains("404"), "{out}");
    let (code, _) = http("GET", &url("/healthz"), None, None);
    assert_eq!(code, 200);
    let (code, _) = http("GET", &url("/readyz"), None, None);
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_request_survives_a_gateway_restart() {
    let pg = Postgres::shared();
    let db = fresh_database(pg).await;
    let store_dir: PathBuf = std::env::temp_dir().join(format!(
        "pgward-approvals-restart-{}-{}",
        std::process::id(),
        free_port()
    ));
    let store = format!("sqlite_path = \"{}\"\n", store_dir.join("a.db").display());
    let s = setup(Options {
        store: store.clone(),
        db: Some(db.clone()),
        ..Default::default()
    })
    .await;
    let agent = s.gw.connect("agent", &db).await.unwrap();
    agent
        .simple_query("UPDATE payments SET amount = 7 WHERE id = 1")
        .await
        .unwrap_err();
    let id = s.wait_for("agent", "pending")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(agent);
    let mut gw = s.gw;
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let s = setup(Options {
        store,
        db: Some(db.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(s.request(&id)["status"], "pending");
    s.decide(&id, "carol", "approve", "after the restart");
    let agent = s.gw.connect("agent", &db).await.unwrap();
    agent
        .simple_query("UPDATE payments SET amount = 7 WHERE id = 1")
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(store_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_the_postgres_store_and_a_hold_on_one_is_released_by_the_other() {
    let pg = Postgres::shared();
    let db = fresh_database(pg).await;
    let control = pg.create_database("control").unwrap();
    let store = format!(
        "store = \"postgres\"\npostgres = \"host=127.0.0.1 port={} user={UPSTREAM_USER} password={UPSTREAM_PASSWORD} dbname={control}\"\n",
        pg.port
    );
    let a = setup(Options {
        store: store.clone(),
        db: Some(db.clone()),
        ..Default::default()
    })
    .await;
    let b = setup(Options {
        store,
        db: Some(db.clone()),
        ..Default::default()
    })
    .await;
    let direct = connect_direct(pg, &db).await.unwrap();
    let psql = a.psql_async(
        "agent",
        "UPDATE billing.invoices SET paid = true WHERE id = 1",
    );
    // Visible through B's API, decided there.
    let r = b.wait_for("agent", "pending");
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r["gateway"],
        format!("127.0.0.1:{}", a.gw.port),
        "created by gateway A"
    );
    let decided = Instant::now();
    let (code, v) = b.decide(&id, "carol", "approve", "via B");
    assert_eq!(code, 200, "{v}");
    let out = psql.join().unwrap();
    assert!(
        decided.elapsed() < Duration::from_secs(1),
        "A's client proceeded after {:?}",
        decided.elapsed()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(invoice(&direct, 1).await, ("10".into(), true));
    assert_eq!(a.request(&id)["status"], "executed");
    // The tables live in a schema of their own in the control database.
    let n = pg
        .superuser_sql(&control, "SELECT count(*) FROM pgward.requests")
        .unwrap();
    assert_eq!(n.trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_https_when_given_a_certificate() {
    let pg = Postgres::shared();
    let dir = plugins_dir();
    install(&dir);
    let tls_dir = std::env::temp_dir().join(format!(
        "pgward-admin-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&tls_dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(tls_dir.join("admin.crt"), cert.cert.pem()).unwrap();
    std::fs::write(tls_dir.join("admin.key"), cert.key_pair.serialize_pem()).unwrap();
    let admin = free_port();
    let toml = approvals_toml(admin, &Options::default()).replace(
        "[admin]\n",
        &format!(
            "[admin]\ncert = \"{}\"\nkey = \"{}\"\n",
            tls_dir.join("admin.crt").display(),
            tls_dir.join("admin.key").display()
        ),
    );
    let _gw = Gateway::start(
        pg,
        GatewayOptions {
            plugins_dir: Some(dir),
            extra_toml: toml,
            ..Default::default()
        },
    )
    .unwrap();
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                        ureq::tls::Certificate::from_der(cert.cert.der()).to_owned(),
                    ])))
                    .build(),
            )
            .build(),
    );
    let mut r = agent
        .get(&format!("https://127.0.0.1:{admin}/v1/approvals"))
        .header("Authorization", &format!("Bearer {}", token("carol")))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(v["requests"].as_array().unwrap().is_empty());
    // Plain HTTP on the TLS port gets no API answer.
    let plain = ureq::get(&format!("http://127.0.0.1:{admin}/healthz")).call();
    assert!(
        !matches!(&plain, Ok(r) if r.status().as_u16() == 200),
        "{plain:?}"
    );
    let _ = std::fs::remove_dir_all(tls_dir);
}
