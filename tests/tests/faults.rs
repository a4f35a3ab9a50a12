//! Faults around the gateway: the upstream restarted or killed mid-session, clients that vanish
//! mid-result, mid-COPY and mid-transaction, thousands of idle clients, a connection storm above
//! the server's `max_connections`, and a plugin that fails on every call under load. Each test
//! asserts what a client sees (SQLSTATEs, no hang) and what the server is left with.
//!
//! The tests that stop or crash PostgreSQL, or need other server limits, start a server of
//! their own.

use pgward_e2e::{
    policy_plugins_dir, sqlstate, stdout_ok, wait_until, Gateway, GatewayOptions, Postgres,
    RawClient,
};
use std::time::{Duration, Instant};

const SEED: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.com');
CREATE TABLE t (v int);
";

/// A gateway with guardrails and mask-pii, trust authentication for the test clients.
fn policy_gateway(pg: &Postgres, listen_extra: &str) -> Gateway {
    Gateway::start(
        pg,
        GatewayOptions {
            trust: true,
            listen_extra: listen_extra.into(),
            plugins_dir: Some(policy_plugins_dir()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn seeded_database(pg: &Postgres, prefix: &str) -> String {
    let db = pg.create_database(prefix).unwrap();
    pg.superuser_sql(&db, &format!("SET ROLE pgward_gw; {SEED}"))
        .unwrap();
    db
}

/// Messages a client received: tag and body.
type Messages = Vec<(u8, Vec<u8>)>;

/// A session through the gateway, ready for queries.
fn session(gw: &Gateway, db: &str) -> RawClient {
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", db).unwrap();
    let hello = c.read_until_ready().unwrap();
    assert_eq!(hello.last().map(|m| m.0), Some(b'Z'), "{hello:?}");
    c
}

/// Sends a Query and returns everything up to ReadyForQuery.
fn simple(c: &mut RawClient, sql: &str) -> Vec<(u8, Vec<u8>)> {
    c.query(sql).unwrap();
    c.read_until_ready().unwrap()
}

fn assert_ok(messages: &[(u8, Vec<u8>)]) {
    assert!(
        messages.iter().all(|m| m.0 != b'E') && messages.last().map(|m| m.0) == Some(b'Z'),
        "{messages:?}"
    );
}

/// Every message until the gateway closes the connection; a read that times out (20 s) fails.
fn read_to_end(c: &mut RawClient) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match c.read_message() {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return out,
            // A reset after the last message is an end too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("no end of the session ({e}); got {out:?}"),
        }
    }
}

/// The SQLSTATE of the last ErrorResponse among `messages`.
fn last_error(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    messages
        .iter()
        .rev()
        .find(|m| m.0 == b'E')
        .map(|m| sqlstate(&m.1))
}

/// The clients' server sessions in `db` (not the gateway's own catalog connections).
fn backends_of(pg: &Postgres, db: &str) -> Vec<String> {
    pg.superuser_sql(
        "postgres",
        &format!(
            "SELECT state || ':' || coalesce(xact_start::text, '-') FROM pg_stat_activity \
             WHERE datname = '{db}' AND backend_type = 'client backend' \
             AND application_name <> 'pgward catalog'"
        ),
    )
    .unwrap()
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Proves the policy plugins still work: guardrails refuses a DELETE without WHERE, and
/// mask-pii masks an e-mail address (which needs the gateway's catalog connection).
fn assert_policies_work(gw: &Gateway, db: &str) {
    let mut c = session(gw, db);
    let refused = simple(&mut c, "DELETE FROM t");
    assert_eq!(
        last_error(&refused).as_deref(),
        Some("42501"),
        "{refused:?}"
    );
    let rows = simple(&mut c, "SELECT email FROM customers");
    assert_ok(&rows);
    let text = String::from_utf8_lossy(&rows.iter().flat_map(|m| m.1.clone()).collect::<Vec<_>>())
        .into_owned();
    assert!(!text.contains("ada@example.com"), "unmasked: {text}");
    assert!(rows.iter().any(|m| m.0 == b'D'), "{rows:?}");
}

#[test]
fn an_upstream_restart_ends_sessions_with_57p01_and_new_ones_work_when_it_is_back() {
    let pg = Postgres::start().unwrap();
    let db = seeded_database(&pg, "restart");
    let gw = policy_gateway(&pg, "");
    assert_policies_work(&gw, &db);

    let mut idle = session(&gw, &db);
    let mut in_transaction = session(&gw, &db);
    assert_ok(&simple(
        &mut in_transaction,
        "BEGIN; INSERT INTO t VALUES (1)",
    ));
    let mut busy = session(&gw, &db);
    busy.query("SELECT pg_sleep(60)").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || backends_of(&pg, &db)
            .iter()
            .any(|s| s.starts_with("active"))),
        "the sleep never started"
    );

    let stopping = Instant::now();
    pg.stop("fast").unwrap();
    for (name, c) in [
        ("idle", &mut idle),
        ("in a transaction", &mut in_transaction),
        ("running a statement", &mut busy),
    ] {
        let got = read_to_end(c);
        assert_eq!(
            last_error(&got).as_deref(),
            Some("57P01"),
            "{name}: the server's shutdown reaches the client: {got:?}"
        );
        assert_eq!(got.last().map(|m| m.0), Some(b'E'), "{name}: {got:?}");
    }
    assert!(stopping.elapsed() < Duration::from_secs(15));

    // While the server is down, a new session is refused at once with a connection error.
    let started = Instant::now();
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", &db).unwrap();
    let got = read_to_end(&mut c);
    assert_eq!(last_error(&got).as_deref(), Some("08006"), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The first session after the server is back works, and so do the plugins (their catalog
    // connection was lost too); the interrupted transaction left nothing.
    pg.restart().unwrap();
    let out = gw.psql("alice", &db, &["-c", "SELECT count(*) FROM t"], None);
    assert_eq!(stdout_ok(&out), "0\n");
    assert_policies_work(&gw, &db);
    assert!(!gw.log().contains("panicked"));
}

#[test]
fn an_upstream_killed_mid_copy_and_mid_transaction_leaves_clients_told_and_nothing_committed() {
    let pg = Postgres::start().unwrap();
    let db = seeded_database(&pg, "crash");
    let gw = policy_gateway(&pg, "");

    let mut in_transaction = session(&gw, &db);
    assert_ok(&simple(
        &mut in_transaction,
        "BEGIN; INSERT INTO t VALUES (1), (2)",
    ));
    let mut copying = session(&gw, &db);
    copying.query("COPY t FROM STDIN").unwrap();
    let started = copying.read_message().unwrap().unwrap();
    assert_eq!(started.0, b'G', "CopyInResponse: {started:?}");
    for i in 0..100 {
        copying.send(b'd', format!("{i}\n").as_bytes()).unwrap();
    }
    // The COPY has reached the server before it dies.
    assert!(wait_until(Duration::from_secs(10), || backends_of(
        &pg, &db
    )
    .iter()
    .any(|s| s.starts_with("active"))));

    pg.kill9().unwrap();
    // The COPY client goes on sending and ends its data: it is told, never left hanging.
    for i in 100..200 {
        let _ = copying.send(b'd', format!("{i}\n").as_bytes());
    }
    let _ = copying.send(b'c', b"");
    for (name, c) in [
        ("in a transaction", &mut in_transaction),
        ("mid-COPY", &mut copying),
    ] {
        let got = read_to_end(c);
        assert_eq!(
            last_error(&got).as_deref(),
            Some("08006"),
            "{name}: the client is told the server connection is gone: {got:?}"
        );
    }
    // While the server is down, new sessions are refused with a connection error.
    let got = session_or_refusal(&gw, &db);
    assert_eq!(last_error(&got).as_deref(), Some("08006"), "{got:?}");

    pg.restart().unwrap();
    let out = gw.psql("alice", &db, &["-c", "SELECT count(*) FROM t"], None);
    assert_eq!(stdout_ok(&out), "0\n", "nothing of either committed");
    assert_policies_work(&gw, &db);
    assert!(!gw.log().contains("panicked"));
}

/// A new session's messages until ReadyForQuery or the end (for a server that may be down).
fn session_or_refusal(gw: &Gateway, db: &str) -> Vec<(u8, Vec<u8>)> {
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", db).unwrap();
    let got = c.read_until_ready().unwrap();
    if got.last().map(|m| m.0) == Some(b'Z') {
        return got;
    }
    let mut rest = read_to_end(&mut c);
    let mut all = got;
    all.append(&mut rest);
    all
}

#[test]
fn clients_that_vanish_leave_no_server_session_and_no_open_transaction() {
    let pg = Postgres::shared();
    let db = seeded_database(pg, "vanish");
    let gw = policy_gateway(pg, "");

    // Mid-result: a large result, of which the client reads a little.
    let mut reader = session(&gw, &db);
    reader
        .query(&format!(
            "SELECT g, '{}' AS pad FROM generate_series(1, 2000000) g",
            "x".repeat(200)
        ))
        .unwrap();
    for _ in 0..100 {
        reader.read_message().unwrap().unwrap();
    }
    // Mid-COPY IN.
    let mut copier = session(&gw, &db);
    copier.query("COPY t FROM STDIN").unwrap();
    assert_eq!(copier.read_message().unwrap().unwrap().0, b'G');
    copier.send(b'd', b"7\n").unwrap();
    // Mid-transaction, holding a row lock.
    let mut locker = session(&gw, &db);
    assert_ok(&simple(
        &mut locker,
        "BEGIN; INSERT INTO t VALUES (8); SELECT * FROM customers WHERE id = 1 FOR UPDATE",
    ));
    assert!(wait_until(Duration::from_secs(10), || backends_of(pg, &db)
        .len()
        == 3));

    // Gone without a Terminate.
    drop(reader);
    drop(copier);
    drop(locker);
    assert!(
        wait_until(Duration::from_secs(10), || backends_of(pg, &db).is_empty()),
        "server sessions left: {:?}",
        backends_of(pg, &db)
    );
    // Nothing committed, and the row lock is free (a statement timeout proves no wait).
    let out = gw.psql(
        "alice",
        &db,
        &[
            "-c",
            "SET lock_timeout = '2s'",
            "-c",
            "UPDATE customers SET name = name WHERE id = 1",
            "-c",
            "SELECT count(*) FROM t",
        ],
        None,
    );
    assert_eq!(stdout_ok(&out), "0\n");
    assert!(!gw.log().contains("panicked"));
}

#[test]
fn two_thousand_idle_clients_cost_little_memory_and_all_keep_working() {
    const CLIENTS: usize = 2000;
    let pg = Postgres::start_with(&["max_connections=2100"]).unwrap();
    let db = pg.create_database("idle").unwrap();
    let gw = Gateway::start(
        &pg,
        GatewayOptions {
            trust: true,
            listen_extra: "max_connections = 2100".into(),
            log_level: "info".into(),
            ..Default::default()
        },
    )
    .unwrap();
    // Warm: the first sessions size the allocator's arenas and the runtime's buffers.
    let mut warm: Vec<RawClient> = (0..20).map(|_| session(&gw, &db)).collect();
    for c in &mut warm {
        assert_ok(&simple(c, "SELECT 1"));
    }
    let before = gw.rss_kib();
    let mut clients: Vec<RawClient> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..CLIENTS / 4)
                        .map(|_| session(&gw, &db))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    for c in &mut clients {
        assert_ok(&simple(c, "SELECT 1"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = gw.rss_kib();
    let per_session = (after.saturating_sub(before)) as f64 / CLIENTS as f64;
    println!(
        "{CLIENTS} idle sessions: gateway RSS {before} KiB -> {after} KiB, {per_session:.1} KiB per session"
    );
    assert!(
        per_session < 200.0,
        "{per_session:.1} KiB per idle session ({before} -> {after} KiB)"
    );
    // A new client is served at once next to them, and every idle one still answers.
    let mut fresh = session(&gw, &db);
    assert_ok(&simple(&mut fresh, "SELECT 2"));
    for c in clients.iter_mut().step_by(7) {
        assert_ok(&simple(c, "SELECT 3"));
    }
}

#[test]
fn a_connection_storm_above_the_servers_limit_gets_53300_for_the_excess_only() {
    // 20 connections, 3 of them for superusers: 17 for the gateway's role.
    let pg = Postgres::start_with(&["max_connections=20"]).unwrap();
    let db = seeded_database(&pg, "storm");
    let gw = Gateway::start(
        &pg,
        GatewayOptions {
            trust: true,
            log_level: "info".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut resident: Vec<RawClient> = (0..4)
        .map(|i| {
            let mut c = session(&gw, &db);
            assert_ok(&simple(
                &mut c,
                &format!("BEGIN; INSERT INTO t VALUES ({i})"),
            ));
            c
        })
        .collect();

    const STORM: usize = 40;
    let outcomes: Vec<(Option<RawClient>, Messages)> = std::thread::scope(|s| {
        let attempts: Vec<_> = (0..STORM)
            .map(|_| {
                s.spawn(|| {
                    let mut c = RawClient::connect(gw.port).unwrap();
                    c.startup("alice", &db).unwrap();
                    let got = c.read_until_ready().unwrap();
                    if got.last().map(|m| m.0) == Some(b'Z') {
                        (Some(c), got)
                    } else {
                        let mut all = got;
                        all.extend(read_to_end(&mut c));
                        (None, all)
                    }
                })
            })
            .collect();
        attempts.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for (client, messages) in outcomes {
        match client {
            Some(c) => admitted.push(c),
            None => {
                assert_eq!(
                    last_error(&messages).as_deref(),
                    Some("53300"),
                    "{messages:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        !admitted.is_empty() && admitted.len() <= 13,
        "{} admitted",
        admitted.len()
    );
    assert_eq!(admitted.len() + refused, STORM);
    // The admitted and the resident sessions are unaffected.
    for c in &mut admitted {
        assert_ok(&simple(c, "SELECT 1"));
    }
    for c in &mut resident {
        assert_ok(&simple(c, "COMMIT"));
    }
    let mut c = admitted.pop().unwrap();
    let counted = simple(&mut c, "SELECT count(*) FROM t");
    assert_ok(&counted);
    assert!(
        counted.iter().any(|m| m.0 == b'D' && m.1.ends_with(b"4")),
        "{counted:?}"
    );
    // Once sessions end, new ones are admitted again.
    drop(admitted);
    drop(c);
    assert!(wait_until(Duration::from_secs(10), || {
        let got = session_or_refusal(&gw, &db);
        got.last().map(|m| m.0) == Some(b'Z')
    }));
    assert!(!gw.log().contains("panicked"));
}

/// The hostile test plugin set to trap on every statement (an empty trigger matches all).
fn failing_plugin_dir() -> std::path::PathBuf {
    let dir = pgward_e2e::plugins_dir();
    std::fs::write(
        dir.join("hostile.toml"),
        "mode = \"trap\"\ntrigger = \"\"\n",
    )
    .unwrap();
    let tmp = dir.join(".hostile.tmp");
    std::fs::copy(pgward_e2e::plugin_wasm("hostile"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("hostile.wasm")).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_on_every_call_under_load_denies_each_statement_and_memory_stays_flat() {
    let pg = Postgres::shared();
    let db = pg.create_database("failing").unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            plugins_dir: Some(failing_plugin_dir()),
            log_level: "warn".into(),
            ..Default::default()
        },
    )
    .unwrap();

    // pgbench's first statement of each client is refused: it reports the plugin and ends.
    let script = pgward_e2e::unique_dir("failing-script").join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let started = Instant::now();
    let out = std::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &gw.port.to_string(), "-U", "alice"])
        .args(["-n", "-c", "4", "-j", "2", "-T", "5", "-f"])
        .arg(&script)
        .arg(&db)
        .env("PGPASSWORD", "alice-pw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert_eq!(
        text.matches("aborted in command 0").count(),
        4,
        "every client is refused at its first statement: {text}"
    );
    assert!(text.contains("plugin \"hostile\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Load that goes on after each refusal: eight sessions, simple and extended protocol.
    let run = |seconds: u64| {
        let gw = &gw;
        let db = &db;
        async move {
            let tasks: Vec<_> = (0..8)
                .map(|i| async move {
                    let client = gw.connect("alice", db).await.unwrap();
                    let until = Instant::now() + Duration::from_secs(seconds);
                    let mut refused = 0u64;
                    while Instant::now() < until {
                        let err = if i % 2 == 0 {
                            client.simple_query("SELECT 1").await.unwrap_err()
                        } else {
                            client.query("SELECT $1::int", &[&i]).await.unwrap_err()
                        };
                        let code = err.as_db_error().map(|e| e.code().code().to_owned());
                        assert_eq!(code.as_deref(), Some("58000"), "{err}");
                        refused += 1;
                    }
                    refused
                })
                .collect();
            futures_util::future::join_all(tasks)
                .await
                .into_iter()
                .sum::<u64>()
        }
    };
    let warm = run(2).await;
    let before = gw.rss_kib();
    let loaded = run(6).await;
    let after = gw.rss_kib();
    println!("failing plugin: {warm} + {loaded} statements refused; RSS {before} -> {after} KiB");
    assert!(loaded > 1000, "only {loaded} statements in 6 s");
    assert!(
        after < before + 16 * 1024,
        "memory grew under a failing plugin: {before} -> {after} KiB"
    );
    assert!(!gw.log().contains("panicked"));
}
