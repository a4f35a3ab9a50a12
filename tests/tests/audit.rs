//! The audit trail end to end: the real gateway with guardrails and approval-rules compiled to
//! WebAssembly, a scripted session through tokio-postgres, the records it leaves, and
//! `pgward audit verify` against edited, truncated, reordered and re-signed files.

use pgward_e2e::{
    connect_direct, free_port, pgward_bin, plugin_wasm, plugins_dir, Gateway, GatewayOptions,
    Postgres, TestUser,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GUARDRAILS: &str = r#"
search_path = ["public"]
[[profiles]]
name = "agents"
groups = ["ai-agents"]
writable = ["billing.*"]
"#;

const RULES: &str = r#"
search_path = ["public"]
[[rules]]
name = "agents-billing-writes"
groups = ["ai-agents"]
on = ["billing.*"]
approvers = "billing-owners"
"#;

const MASK: &str = r#"
[hash]
key = "audit-test-key-0123456789abcdef"

[[class]]
name = "email"
lineage = ["billing.customers.email"]
detectors = ["email"]
strategy = "hash"
"#;

fn install(dir: &Path, stem: &str, config: &str) {
    let tmp = dir.join(format!(".{stem}.wasm.tmp"));
    std::fs::copy(plugin_wasm(stem), &tmp).unwrap();
    std::fs::write(dir.join(format!("{stem}.toml")), config).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{stem}.wasm"))).unwrap();
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pgward-audit-e2e-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A signing key made by `pgward audit keygen`: (key file, public key hex).
fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("audit.pk8");
    let out = Command::new(pgward_bin())
        .args(["audit", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let public = text
        .trim()
        .strip_prefix("public key: ")
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned();
    (key, public)
}

/// A scratch directory with a signing key and a trail directory in it:
/// (directory, key file, public key hex, trail).
fn trail_setup(name: &str) -> (PathBuf, PathBuf, String, PathBuf) {
    let base = temp(name);
    let (key, public) = keygen(&base);
    let trail = base.join("trail");
    (base, key, public, trail)
}

/// `pgward audit verify`: (success, output).
fn verify(paths: &[&Path], public: &str) -> (bool, String) {
    let out = Command::new(pgward_bin())
        .args(["audit", "verify", "--public-key", public])
        .args(paths)
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

fn records(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn audit_toml(trail: &Path, key: &Path, admin: u16, extra: &str) -> String {
    let hash: String = pgward::approvals::token_hash("tok-carol")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "[audit]\ndirectory = \"{}\"\nsigning_key = \"{}\"\n{extra}\n\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\n[approvals]\n[[approvals.approvers]]\nname = \"carol\"\ngroups = [\"billing-owners\"]\ntoken_sha256 = \"{hash}\"\n",
        trail.display(),
        key.display()
    )
}

async fn gateway(trail: &Path, key: &Path, extra: &str) -> (Gateway, String, u16, PathBuf) {
    let pg = Postgres::shared();
    let db = pg.create_database("audit").unwrap();
    connect_direct(pg, &db)
        .await
        .unwrap()
        .batch_execute(
            "CREATE SCHEMA billing;
             CREATE TABLE billing.invoices (id int PRIMARY KEY, paid bool NOT NULL DEFAULT false);
             INSERT INTO billing.invoices VALUES (1, false), (2, false);
             CREATE TABLE billing.customers (id int PRIMARY KEY, email text NOT NULL);
             INSERT INTO billing.customers VALUES
                 (1, 'ada@example.com'), (2, 'alan@example.org'), (3, 'grace@example.net');",
        )
        .await
        .unwrap();
    let dir = plugins_dir();
    install(&dir, "guardrails", GUARDRAILS);
    install(&dir, "approval_rules", RULES);
    install(&dir, "mask_pii", MASK);
    let admin = free_port();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: vec![TestUser::new("agent", "agent-pw", &["ai-agents"])],
            plugins_dir: Some(dir.clone()),
            plugins_extra: "order = [\"guardrails\", \"approval_rules\", \"mask_pii\"]".into(),
            extra_toml: audit_toml(trail, key, admin, extra),
            ..Default::default()
        },
    )
    .unwrap();
    (gw, db, admin, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_leaves_the_expected_chained_records_and_tampering_is_found() {
    let (base, key, public, trail) = trail_setup("session");
    let pg = Postgres::shared();
    let (control, sink) = control_database(pg);
    let (mut gw, db, admin, plugins) = gateway(
        &trail,
        &key,
        &format!(
            "checkpoint_every = 1000\norigin = \"gw-a\"\npostgres = \"{sink}\"\nparameters = true"
        ),
    )
    .await;
    let agent = gw.connect("agent", &db).await.unwrap();
    agent
        .simple_query("SELECT count(*) FROM billing.invoices WHERE id = 1")
        .await
        .unwrap();
    // Masked by mask-pii: the client never sees an address.
    let rows = agent
        .query("SELECT id, email FROM billing.customers ORDER BY id", &[])
        .await
        .unwrap();
    let email: &str = rows[0].get(1);
    assert!(!email.contains('@'), "{email}");
    // A prepared statement run twice, with its parameters recorded.
    let paid = agent
        .prepare("SELECT paid FROM billing.invoices WHERE id = $1")
        .await
        .unwrap();
    for id in [1i32, 2] {
        assert_eq!(agent.query(&paid, &[&id]).await.unwrap().len(), 1);
    }
    // Failed by the server, then a multi-statement string.
    let err = agent.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    agent
        .batch_execute("SELECT 1 FROM billing.invoices; SELECT 2")
        .await
        .unwrap();
    let denied = agent
        .simple_query("DROP TABLE billing.invoices")
        .await
        .unwrap_err();
    assert!(denied.as_db_error().is_some());
    // Held, then approved through the API.
    let held = {
        let conn = gw.conn_str("agent", &db);
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.simple_query("UPDATE billing.invoices SET paid = true WHERE id = 2")
                .await
                .map(|_| ())
        })
    };
    let api = format!("http://127.0.0.1:{admin}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let id = loop {
        let mut r = ureq::get(&format!("{api}/v1/approvals?status=pending"))
            .header("Authorization", "Bearer tok-carol")
            .call()
            .unwrap();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        if let Some(id) = v["requests"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(25));
    };
    ureq::post(&format!("{api}/v1/approvals/{id}/approve"))
        .header("Authorization", "Bearer tok-carol")
        .send(b"{}".as_slice())
        .unwrap();
    held.await.unwrap().unwrap();

    // The metrics endpoint parses as Prometheus text, and its counters are what happened.
    // (Once the held statement's own session has closed.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let mut r = ureq::get(&format!("{api}/metrics")).call().unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        if text.contains("\npgward_sessions_current 1\n") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let value = |name: &str, labels: &[(&str, &str)]| pgward_e2e::metric_sum(&text, name, labels);
    let statement = |kind, verdict| {
        value(
            "pgward_statements_total",
            &[("kind", kind), ("verdict", verdict)],
        )
    };
    assert_eq!(statement("select", "allow"), 5.0, "{text}");
    assert_eq!(statement("ddl", "deny"), 1.0, "{text}");
    assert_eq!(statement("update", "approved"), 1.0, "{text}");
    assert_eq!(
        value(
            "pgward_sessions_total",
            &[("auth_method", "scram-sha-256"), ("outcome", "accepted")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(value("pgward_sessions_current", &[]), 1.0, "{text}");
    for event in ["created", "decided", "executed"] {
        assert_eq!(
            value("pgward_approvals_total", &[("event", event)]),
            1.0,
            "{text}"
        );
    }
    assert_eq!(
        value(
            "pgward_plugin_calls_total",
            &[("plugin", "guardrails"), ("hook", "on-query")]
        ),
        7.0,
        "{text}"
    );
    assert!(value("pgward_audit_records_total", &[]) >= 14.0, "{text}");
    assert_eq!(
        value(
            "pgward_masked_values_total",
            &[("plugin", "mask-pii"), ("class", "email")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(value("pgward_audit_dropped_total", &[]), 0.0, "{text}");
    assert!(
        value(
            "pgward_relayed_bytes_total",
            &[("direction", "server_to_client")]
        ) > 0.0
    );
    assert!(
        text.contains("pgward_plugin_call_duration_seconds_bucket"),
        "{text}"
    );
    drop(agent);
    // A configuration change while running is a record of its own.
    std::fs::write(
        plugins.join("guardrails.toml"),
        GUARDRAILS.replace(
            "writable = [\"billing.*\"]",
            "writable = [\"billing.*\", \"public.*\"]",
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw
        .log()
        .contains("plugin chain updated chain=[\"guardrails@0.1.0\", \"approval-rules@0.1.0\", \"mask-pii@0.1.0\"]")
        || gw.log().matches("plugin chain updated").count() < 2
    {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());

    let all = records(&trail);
    let kinds: Vec<&str> = all.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    // The agent's own session, in order (the held statement ran in a second session).
    let mine: Vec<&Value> = all
        .iter()
        .filter(|r| r["kind"] == "statement" && r["user"] == "agent")
        .collect();
    assert_eq!(
        &kinds[..4],
        [
            "gateway.start",
            "plugin.loaded",
            "plugin.loaded",
            "plugin.loaded"
        ],
        "{kinds:?}"
    );
    let reloaded: Vec<&Value> = all
        .iter()
        .filter(|r| r["kind"] == "plugin.loaded" && r["config_changed"] == true)
        .collect();
    assert_eq!(reloaded.len(), 1, "{kinds:?}");
    assert_eq!(reloaded[0]["plugin"], "guardrails");
    assert!(reloaded[0]["replaces"]["config_hash"].is_string());
    assert_eq!(
        kinds.last(),
        Some(&"checkpoint"),
        "sealed at shutdown: {kinds:?}"
    );
    assert!(kinds.contains(&"gateway.stop"));
    assert_eq!(kinds.iter().filter(|k| **k == "session.start").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "session.end").count(), 2);
    let brief: Vec<String> = mine
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["protocol"], r["verdict"], r["outcome"], r["rows"]
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            r#""simple" "allow" "ok" 1"#,
            r#""extended" "allow" "ok" 3"#,
            r#""extended" "allow" "ok" 1"#,
            r#""extended" "allow" "ok" 1"#,
            r#""simple" "allow" "error" 0"#,
            r#""simple" "allow" "ok" 3"#,
            r#""simple" "deny" "refused" null"#,
            r#""simple" "approved" "ok" 1"#,
        ],
        "{mine:#?}"
    );
    assert_eq!(
        mine[0]["text"], "select count(*) from billing.invoices where id = ?",
        "literals replaced by default"
    );
    assert_eq!(mine[0]["reads"][0], "billing.invoices");
    assert_eq!(mine[0]["results"], serde_json::json!(["SELECT 1"]));
    assert!(mine[0]["bytes"].as_u64().unwrap() > 0);
    assert!(mine[0]["duration_us"].is_u64());
    // The two executions of one prepared statement: its number, their own parameters.
    assert_eq!(mine[2]["statement"], mine[3]["statement"]);
    // Binary parameters (tokio-postgres sends int4 so) as `\\x` and hex.
    assert_eq!(mine[2]["parameters"], serde_json::json!(["\\x00000001"]));
    assert_eq!(mine[3]["parameters"], serde_json::json!(["\\x00000002"]));
    assert_eq!(mine[4]["sqlstate"], "22012");
    assert_eq!(
        mine[5]["results"],
        serde_json::json!(["SELECT 2", "SELECT 1"])
    );
    assert_eq!(mine[6]["plugin"], "guardrails");
    assert_eq!(mine[6]["sqlstate"], "42501");
    assert_eq!(mine[7]["approval_request"], id.as_str());
    assert_eq!(mine[7]["writes"][0], "update billing.invoices");
    assert_eq!(mine[7]["results"], serde_json::json!(["UPDATE 1"]));
    // What mask-pii changed, right before the record of the statement it masked.
    let at = all
        .iter()
        .position(|r| r["kind"] == "result.masked")
        .expect("a masking record");
    let masked = &all[at];
    assert_eq!(all[at + 1]["statement"], masked["statement"]);
    assert_eq!(
        all[at + 1]["text"],
        "select id, email from billing.customers order by id"
    );
    assert_eq!(masked["rows"], 3);
    assert_eq!(
        masked["columns"],
        serde_json::json!([{"index": 1, "column": "email", "plugin": "mask-pii", "class": "email", "values": 3}])
    );
    let approval: Vec<&str> = all
        .iter()
        .filter(|r| r["request"] == id.as_str())
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        approval,
        ["approval.created", "approval.decided", "approval.executed"]
    );
    let start = all.iter().find(|r| r["kind"] == "session.start").unwrap();
    assert_eq!(start["user"], "agent");
    assert_eq!(start["auth_method"], "scram-sha-256");
    assert_eq!(start["tls"], false);
    let end = all
        .iter()
        .find(|r| r["kind"] == "session.end" && r["session"] == start["session"])
        .unwrap();
    assert_eq!(
        end["statements"], 6,
        "the held UPDATE ran in a session of its own"
    );
    assert!(end["bytes_to_client"].as_u64().unwrap() > 200, "{end}");
    assert!(end["bytes_to_server"].as_u64().unwrap() > 100, "{end}");
    assert_eq!(end["reason"], "client terminated");
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["seq"], (i + 1) as u64);
        assert_eq!(r["schema"], "pgward.audit/1");
        let t = r["time"].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
    }

    let (ok, out) = verify(&[&trail], &public);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{} records", all.len())), "{out}");

    // The PostgreSQL sink got every record, chained the same, and verifies on its own.
    let rows = pg
        .superuser_sql(
            &control,
            "SELECT string_agg(seq || ' ' || kind || ' ' || (record->>'hash'), E'\\n' ORDER BY seq) FROM pgward.audit_events WHERE origin = 'gw-a'",
        )
        .unwrap();
    let expected: Vec<String> = all
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["seq"],
                r["kind"].as_str().unwrap(),
                r["hash"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(rows.trim(), expected.join("\n"));
    let (verified, text) = verify_table(&public, "gw-a", &sink);
    assert!(verified, "{text}");
    assert!(text.contains(&format!("{} records", all.len())), "{text}");
    // Edited in the table: found there too.
    pg.superuser_sql(
        &control,
        "UPDATE pgward.audit_events SET record = jsonb_set(record, '{verdict}', '\"allow\"') WHERE origin = 'gw-a' AND record->>'verdict' = 'deny'",
    )
    .unwrap();
    let (verified, text) = verify_table(&public, "gw-a", &sink);
    assert!(!verified && text.contains("was edited"), "{text}");

    // Each kind of tampering fails at the record it touched.
    let file = std::fs::read_dir(&trail)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let original = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let deny_line = lines
        .iter()
        .position(|l| l.contains("\"verdict\":\"deny\""))
        .unwrap();
    let check = |text: String, expect: &str| {
        let f = base.join("tampered.jsonl");
        std::fs::write(&f, text).unwrap();
        let (ok, out) = verify(&[&f], &public);
        assert!(!ok, "tampering not found ({expect}):\n{out}");
        assert!(out.contains(expect), "expected {expect:?}:\n{out}");
    };
    // One byte edited: the deny becomes an allow.
    let edited: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == deny_line {
                l.replace("\"verdict\":\"deny\"", "\"verdict\":\"allo\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    check(
        edited.join("\n") + "\n",
        &format!(":{}: record {} was edited", deny_line + 1, deny_line + 1),
    );
    // A line deleted.
    let mut deleted = lines.clone();
    deleted.remove(deny_line);
    check(
        deleted.join("\n") + "\n",
        &format!(
            ":{}: record {} follows record {}",
            deny_line + 1,
            deny_line + 2,
            deny_line
        ),
    );
    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(deny_line, deny_line + 1);
    check(swapped.join("\n") + "\n", &format!(":{}:", deny_line + 1));
    // Strip and reseal: the deny removed and the chain recomputed after it; the checkpoint
    // that follows no longer verifies.
    let resealed = reseal_without(&lines, deny_line);
    check(resealed, "is not signed by the given key");
    // Another key refuses every checkpoint.
    let (_, other) = keygen(&temp("other-key"));
    let (ok, out) = verify(&[&file], &other);
    assert!(!ok && out.contains("not signed by the given key"), "{out}");
    // Truncated in the middle of the last record: verified up to the record before it, and the
    // unfinished tail is named.
    let f = base.join("truncated.jsonl");
    let cut = original.len() - 20;
    std::fs::write(&f, &original[..cut]).unwrap();
    let (ok, out) = verify(&[&f], &public);
    assert!(ok, "{out}");
    assert!(out.contains("unfinished record"), "{out}");
    assert!(
        out.contains(&format!("{} records", lines.len() - 1)),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(base);
}

/// `pgward audit verify --postgres` of `origin`'s chain: (success, output).
fn verify_table(public: &str, origin: &str, sink: &str) -> (bool, String) {
    let out = Command::new(pgward_bin())
        .args([
            "audit",
            "verify",
            "--public-key",
            public,
            "--origin",
            origin,
            "--postgres",
            sink,
        ])
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

/// A fresh control database for the PostgreSQL sink: (name, connection string).
fn control_database(pg: &Postgres) -> (String, String) {
    let control = pg.create_database("auditctl").unwrap();
    let sink = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={control}",
        pg.port,
        pgward_e2e::UPSTREAM_USER,
        pgward_e2e::UPSTREAM_PASSWORD
    );
    (control, sink)
}

/// The records without line `skip`, re-chained (as an attacker without the key would).
fn reseal_without(lines: &[&str], skip: usize) -> String {
    use pgward::audit::chain;
    let mut prev = chain::GENESIS.to_owned();
    let mut out = String::new();
    let mut seq = 0u64;
    for (i, l) in lines.iter().enumerate() {
        if i == skip {
            continue;
        }
        seq += 1;
        let Value::Object(mut m) = serde_json::from_str::<Value>(l).unwrap() else {
            unreachable!()
        };
        m.insert("seq".into(), seq.into());
        m.insert("prev".into(), Value::String(prev.clone()));
        let h = chain::record_hash(&m);
        m.insert("hash".into(), Value::String(h.clone()));
        let mut text = Vec::new();
        chain::canonical(&Value::Object(m), &mut text);
        out.push_str(std::str::from_utf8(&text).unwrap());
        out.push('\n');
        prev = h;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pgbench_leaves_a_trail_that_verifies_up_to_its_last_flushed_record() {
    let (base, key, public, trail) = trail_setup("kill9");
    let (mut gw, db, _, _) = gateway(&trail, &key, "checkpoint_every = 500").await;
    let bench = std::thread::spawn({
        let port = gw.port;
        let db = db.clone();
        move || {
            Command::new("pgbench")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "agent"])
                .args(["-n", "-c", "4", "-T", "5", "-f", "-"])
                .arg(&db)
                .env("PGPASSWORD", "agent-pw")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map(|mut c| {
                    use std::io::Write as _;
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(b"SELECT paid FROM billing.invoices WHERE id = 1;\n")
                        .unwrap();
                    c.wait()
                })
        }
    });
    // Let records pile up, then kill the gateway without warning.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "the gateway is still running before the kill:\n{}",
        gw.log()
    );
    gw.signal(libc::SIGKILL);
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let _ = bench.join();
    let (ok, out) = verify(&[&trail], &public);
    assert!(ok, "{out}");
    let n: u64 = out
        .split("ok: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(n > 500, "records were written before the kill: {out}");
    assert!(
        out.contains("last checkpoint: seq"),
        "checkpoints were signed: {out}"
    );
    // A restarted gateway continues the same chain.
    let (mut gw2, db2, _, _) = gateway(&trail, &key, "").await;
    let c = gw2.connect("agent", &db2).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    gw2.signal(libc::SIGTERM);
    assert!(gw2.wait_exit(Duration::from_secs(20)).is_some());
    let (ok, out) = verify(&[&trail], &public);
    assert!(ok, "{out}");
    assert!(out.contains("0 records after it are not sealed"), "{out}");
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_refused_while_the_trail_cannot_be_written_and_run_again_after() {
    let (base, key, public, trail) = trail_setup("failclosed");
    let pg = Postgres::shared();
    let (control, sink) = control_database(pg);
    let (mut gw, db, _, _) = gateway(
        &trail,
        &key,
        &format!("origin = \"gw-f\"\npostgres = \"{sink}\"\non_failure = \"refuse\""),
    )
    .await;
    let agent = gw.connect("agent", &db).await.unwrap();
    agent.simple_query("SELECT 1").await.unwrap();
    // The table goes away under the sink.
    pg.superuser_sql(
        &control,
        "ALTER TABLE pgward.audit_events RENAME TO audit_events_moved",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        match agent.simple_query("SELECT 2").await {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "never refused:\n{}", gw.log());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let db_err = refused.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "58030", "{}", db_err.message());
    assert!(
        db_err.message().contains("audit trail"),
        "{}",
        db_err.message()
    );
    assert!(
        gw.log().contains("cannot write the audit trail"),
        "{}",
        gw.log()
    );
    // Back: statements run again, and the records held meanwhile reach the table.
    pg.superuser_sql(
        &control,
        "ALTER TABLE pgward.audit_events_moved RENAME TO audit_events",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.simple_query("SELECT 3").await.is_err() {
        assert!(Instant::now() < deadline, "never recovered:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(agent);
    std::thread::sleep(Duration::from_millis(200));
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let (ok, out) = verify(&[&trail], &public);
    assert!(ok, "{out}");
    let (verified, text) = verify_table(&public, "gw-f", &sink);
    assert!(verified, "{text}");
    let file_records = records(&trail).len();
    assert!(
        text.contains(&format!("ok: {file_records} records")),
        "the table caught up with the file ({file_records} records): {text}"
    );
    let _ = std::fs::remove_dir_all(base);
}
