//! WebAssembly policy plugins loaded by the real gateway: verdicts, rewrites, hot reload, and
//! hostile plugins that must fail closed.

use pgward_e2e::{plugin_wasm, plugins_dir, stdout_ok, Gateway, GatewayOptions, Postgres};
use std::path::Path;
use std::time::{Duration, Instant};

fn install(dir: &Path, file: &str, wasm: &str, config: Option<&str>) {
    // Write then rename, as an operator's deploy should: the gateway never sees half a file.
    let tmp = dir.join(format!(".{file}.wasm.tmp"));
    std::fs::copy(plugin_wasm(wasm), &tmp).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join(format!("{file}.toml")), c).unwrap();
    }
    std::fs::rename(&tmp, dir.join(format!("{file}.wasm"))).unwrap();
}

fn gateway_with(pg: &Postgres, dir: &Path, extra: &str) -> Gateway {
    Gateway::start(
        pg,
        GatewayOptions {
            plugins_dir: Some(dir.to_path_buf()),
            plugins_extra: extra.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn deny_config(word: &str) -> String {
    format!("word = \"{word}\"\nsqlstate = \"42501\"\nmessage = \"{word} is off limits\"\n")
}

/// A fresh database and a gateway whose plugins directory holds deny-keyword as `file`,
/// denying statements that mention `word`.
fn with_deny(file: &str, word: &str) -> (&'static Postgres, String, std::path::PathBuf, Gateway) {
    let pg = Postgres::shared();
    let db = pg.create_database("plug").unwrap();
    let dir = plugins_dir();
    install(&dir, file, "deny_keyword", Some(&deny_config(word)));
    let gw = gateway_with(pg, &dir, "");
    (pg, db, dir, gw)
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

#[tokio::test]
async fn deny_plugin_refuses_its_statements_and_nothing_else() {
    let (pg, db, _dir, gw) = with_deny("10-deny", "forbidden_table");
    let client = gw.connect("alice", &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE forbidden_table (id int); CREATE TABLE ok_table (id int); INSERT INTO forbidden_table VALUES (1)")
        .await
        .expect_err("the multi-statement string mentions forbidden_table");
    // Nothing of a denied multi-statement string ran.
    let direct = pgward_e2e::connect_direct(pg, &db).await.unwrap();
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('forbidden_table', 'ok_table')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    direct
        .batch_execute(
            "CREATE TABLE forbidden_table (id int); INSERT INTO forbidden_table VALUES (1), (2)",
        )
        .await
        .unwrap();

    // Simple protocol.
    let err = client
        .simple_query("DELETE FROM forbidden_table")
        .await
        .unwrap_err();
    assert_eq!(
        db_error(&err),
        ("42501".into(), "forbidden_table is off limits".into())
    );
    let detail = err.as_db_error().unwrap().detail().unwrap_or("").to_owned();
    assert!(
        detail.contains("deny-keyword"),
        "the plugin is named: {detail}"
    );
    // Extended protocol (Parse is refused).
    let err = client
        .prepare("SELECT * FROM forbidden_table WHERE id = $1")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // Other statements work, in both protocols, on the same session.
    let v: i32 = client
        .query_one("SELECT $1::int * 2", &[&21i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    client
        .batch_execute("CREATE TABLE ok_table (id int)")
        .await
        .unwrap();
    // The denied DELETE did not run.
    let n: i64 = direct
        .query_one("SELECT count(*) FROM forbidden_table", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Inside a transaction the deny aborts the transaction, as any error would, and client
    // and server agree about it.
    client
        .batch_execute("BEGIN; INSERT INTO ok_table VALUES (1)")
        .await
        .unwrap();
    let err = client
        .batch_execute("TRUNCATE forbidden_table")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM ok_table", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Pipelined: a denied statement between two allowed ones keeps responses in order.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int", &[]),
        client.query_one("SELECT id FROM forbidden_table LIMIT 1", &[]),
        client.query_one("SELECT 3::int", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(db_error(&b.unwrap_err()).0, "42501");
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
    assert!(gw.log().contains("statement denied"));
}

#[tokio::test]
async fn rewrite_plugin_changes_the_statement() {
    let pg = Postgres::shared();
    let db = pg.create_database("plug").unwrap();
    let dir = plugins_dir();
    install(
        &dir,
        "rewrite",
        "rewrite",
        Some("from = \"SELECT 'pgward-rewrite-me'\"\nto = \"SELECT 'rewritten'\"\n"),
    );
    let gw = gateway_with(pg, &dir, "");
    let out = gw.psql("alice", &db, &["-c", "SELECT 'pgward-rewrite-me'"], None);
    assert_eq!(stdout_ok(&out), "rewritten\n");
    let client = gw.connect("alice", &db).await.unwrap();
    let row = client
        .query_one("SELECT 'pgward-rewrite-me'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "rewritten");
    let row = client.query_one("SELECT 'untouched'", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "untouched");
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn denied(gw: &Gateway, db: &str, sql: &str) -> bool {
    let out = gw.psql("alice", db, &["-c", sql], None);
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("off limits")
}

#[test]
fn each_session_is_introduced_to_a_plugin_once_and_closed_when_it_ends() {
    let (_, db, _dir, gw) = with_deny("10-deny", "forbidden_table");
    // Three sessions of three statements each, then one whose statement is denied: the plugin
    // judges by the session the gateway introduced, once per session.
    for _ in 0..3 {
        let out = gw.psql(
            "alice",
            &db,
            &["-c", "SELECT 1", "-c", "SELECT 2", "-c", "SELECT 3"],
            None,
        );
        assert!(out.status.success(), "{out:?}");
    }
    assert!(denied(&gw, &db, "SELECT * FROM forbidden_table"));
    let closed = wait_for(Duration::from_secs(5), || {
        gw.log().matches("session closed in plugin").count() >= 4
    });
    let log = gw.log();
    assert!(
        closed.is_some(),
        "sessions not closed in the plugin:\n{log}"
    );
    assert_eq!(
        log.matches("session introduced to plugin").count(),
        4,
        "one introduction per session:\n{log}"
    );
    assert_eq!(log.matches("session closed in plugin").count(), 4, "{log}");
}

#[test]
fn hot_reload_under_pgbench_applies_within_a_second() {
    let pg = Postgres::shared();
    let db = pg.create_database("plug").unwrap();
    pg.superuser_sql(
        &db,
        "CREATE TABLE alpha_table (id int); CREATE TABLE beta_table (id int);",
    )
    .unwrap();
    pg.superuser_sql(
        &db,
        "ALTER TABLE alpha_table OWNER TO pgward_gw; ALTER TABLE beta_table OWNER TO pgward_gw;",
    )
    .unwrap();
    let dir = plugins_dir();
    install(
        &dir,
        "10-policy",
        "deny_keyword",
        Some(&deny_config("alpha_table")),
    );
    let gw = gateway_with(pg, &dir, "");
    gw.pgbench("alice", &db, &["-i", "-q", "-s", "1"]);
    std::thread::scope(|scope| {
        let bench = scope.spawn(|| {
            gw.pgbench(
                "alice",
                &db,
                &["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "6"],
            )
        });
        std::thread::sleep(Duration::from_millis(1000));
        assert!(denied(&gw, &db, "SELECT * FROM alpha_table"));
        assert!(!denied(&gw, &db, "SELECT * FROM beta_table"));

        // Replace the rule: a new config and the plugin file swapped in by rename.
        install(
            &dir,
            "10-policy",
            "deny_keyword",
            Some(&deny_config("beta_table")),
        );
        let took = wait_for(Duration::from_secs(3), || {
            denied(&gw, &db, "SELECT * FROM beta_table")
        })
        .expect("the new rule applies");
        assert!(
            took < Duration::from_secs(1),
            "new rule applied after {took:?}"
        );
        assert!(
            !denied(&gw, &db, "SELECT * FROM alpha_table"),
            "the old rule is gone"
        );

        // Deleting the file removes the rule.
        std::fs::remove_file(dir.join("10-policy.wasm")).unwrap();
        let took = wait_for(Duration::from_secs(3), || {
            !denied(&gw, &db, "SELECT * FROM beta_table")
        })
        .expect("the rule is removed");
        assert!(
            took < Duration::from_secs(1),
            "removal applied after {took:?}"
        );

        let report = bench.join().unwrap();
        pgward_e2e::assert_no_failed_transactions(&report);
    });
}

#[test]
fn broken_plugin_is_reported_and_the_previous_version_stays() {
    let (_, db, dir, gw) = with_deny("10-policy", "alpha_table");
    assert!(denied(&gw, &db, "SELECT * FROM alpha_table"));
    // A broken build dropped over the working one.
    std::fs::write(
        dir.join(".broken.tmp"),
        b"\0asm\x0d\0\x01\0garbage that is not a component",
    )
    .unwrap();
    std::fs::rename(dir.join(".broken.tmp"), dir.join("10-policy.wasm")).unwrap();
    let reported = wait_for(Duration::from_secs(5), || {
        gw.log().contains("previous version stays active")
    });
    assert!(reported.is_some(), "{}", gw.log());
    assert!(
        denied(&gw, &db, "SELECT * FROM alpha_table"),
        "old version still enforced"
    );
    // `pgward plugins list` shows the running version and the error.
    let out = std::process::Command::new(pgward_e2e::pgward_bin())
        .args(["plugins", "list", "--json", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let entry = &status[0];
    assert_eq!(entry["name"], "deny-keyword");
    assert_eq!(entry["position"], 0);
    assert!(entry["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "on-query"));
    assert!(
        entry["last_error"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component"),
        "{entry}"
    );
    // A broken plugin that never worked is reported and runs nothing; others still load.
    std::fs::write(dir.join("20-new.wasm"), b"not wasm at all").unwrap();
    let reported = wait_for(Duration::from_secs(5), || gw.log().contains("20-new.wasm"));
    assert!(reported.is_some());
    assert!(denied(&gw, &db, "SELECT * FROM alpha_table"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_closed_within_their_deadline() {
    let pg = Postgres::shared();
    let db = pg.create_database("plug").unwrap();
    for mode in ["loop", "alloc", "trap", "garbage", "huge"] {
        let dir = plugins_dir();
        install(
            &dir,
            "hostile",
            "hostile",
            Some(&format!("mode = \"{mode}\"\n")),
        );
        let gw = gateway_with(
            pg,
            &dir,
            "query_deadline = \"20ms\"\nmemory_limit = 33554432",
        );
        let client = gw.connect("alice", &db).await.unwrap();
        let bystander = gw.connect("alice", &db).await.unwrap();
        for _ in 0..2 {
            let started = Instant::now();
            let err = client.simple_query("SELECT 'hostile'").await.unwrap_err();
            let took = started.elapsed();
            let (code, message) = db_error(&err);
            assert_eq!(code, "58000", "mode {mode}: {message}");
            assert!(
                message.contains("\"hostile\""),
                "mode {mode}: the plugin is named: {message}"
            );
            assert!(
                !message.contains("wasm") && !message.contains("trap"),
                "no internals: {message}"
            );
            assert!(
                took < Duration::from_millis(1500),
                "mode {mode}: took {took:?}"
            );
        }
        // The session and other sessions keep working; statements the plugin ignores pass.
        let v: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
        assert_eq!(v, 5);
        let v: i32 = bystander.query_one("SELECT 6", &[]).await.unwrap().get(0);
        assert_eq!(v, 6);
        let log = gw.log();
        assert!(log.contains("plugin failed"), "mode {mode}: {log}");
        assert!(!log.contains("panicked"), "mode {mode}: gateway panicked");
    }
}

/// A plugin whose `init` never returns is refused at load, at startup and when it arrives
/// later, after the idle gateway's epoch ticker has parked; loading goes on and the other
/// plugins keep working.
#[test]
fn a_plugin_whose_init_never_returns_is_refused_at_startup_and_on_reload() {
    let pg = Postgres::shared();
    let db = pg.create_database("plug").unwrap();
    let dir = plugins_dir();
    install(
        &dir,
        "10-deny",
        "deny_keyword",
        Some(&deny_config("alpha_table")),
    );
    install(
        &dir,
        "20-spin",
        "hostile",
        Some("mode = \"loop-in-init\"\n"),
    );
    let gw = gateway_with(pg, &dir, "");
    let refused = |file: &str| {
        gw.log()
            .lines()
            .any(|l| l.contains(file) && l.contains("plugin failed to load"))
    };
    assert!(refused("20-spin.wasm"), "{}", gw.log());
    assert!(denied(&gw, &db, "SELECT * FROM alpha_table"));

    // Idle long enough for the ticker to park, then the same plugin arrives.
    std::thread::sleep(Duration::from_millis(300));
    install(
        &dir,
        "30-spin",
        "hostile",
        Some("mode = \"loop-in-init\"\n"),
    );
    let reported = wait_for(Duration::from_secs(10), || refused("30-spin.wasm"));
    assert!(reported.is_some(), "the load never ended: {}", gw.log());
    // Reloads go on: a plugin added after it loads.
    install(
        &dir,
        "40-deny",
        "deny_keyword",
        Some(&deny_config("beta_table")),
    );
    let loaded = wait_for(Duration::from_secs(10), || {
        denied(&gw, &db, "SELECT * FROM beta_table")
    });
    assert!(loaded.is_some(), "{}", gw.log());
    assert!(denied(&gw, &db, "SELECT * FROM alpha_table"));
}

#[test]
fn plugin_for_another_contract_version_is_refused_clearly() {
    let pg = Postgres::shared();
    let db = pg.create_database("plug").unwrap();
    let dir = plugins_dir();
    install(&dir, "05-future", "future_contract", None);
    install(
        &dir,
        "10-deny",
        "deny_keyword",
        Some(&deny_config("alpha_table")),
    );
    let gw = gateway_with(pg, &dir, "");
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("05-future.wasm"))
        .unwrap_or_else(|| panic!("the refused plugin is reported:\n{log}"));
    assert!(
        line.contains("pgward:plugin@0.6.0") && line.contains("pgward:plugin@0.5.0"),
        "the error names both versions: {line}"
    );
    // The compatible plugin still loads and runs.
    assert!(denied(&gw, &db, "SELECT * FROM alpha_table"));
}

/// Deadlines count the plugin's own CPU time: a busy machine that preempts the gateway in the
/// middle of a call must not turn healthy plugins into denials.
#[test]
fn healthy_plugins_are_not_denied_on_a_saturated_machine() {
    let pg = Postgres::shared();
    let db = pg.create_database("plug").unwrap();
    let dir = plugins_dir();
    install(
        &dir,
        "10-deny",
        "deny_keyword",
        Some(&deny_config("alpha_table")),
    );
    install(
        &dir,
        "20-template",
        "pgward_plugin_template",
        Some("deny_commands = [\"ALTER SYSTEM\"]\n"),
    );
    // A short deadline makes preemption-induced false denials likely if deadlines were wall time
    // (a runnable thread waits far longer than 5 ms for a core here). At 2 ms the full suite
    // saw a rare failure whose cause is not known yet; the log lines printed on failure tell.
    let gw = gateway_with(pg, &dir, "query_deadline = \"5ms\"");
    gw.pgbench("alice", &db, &["-i", "-q", "-s", "1"]);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gw.pgbench(
            "alice",
            &db,
            &["-n", "-S", "-M", "simple", "-c", "32", "-j", "2", "-T", "4"],
        )
    }));
    // On failure, say why the gateway failed the plugin (the log line names the error).
    let failures: Vec<String> = gw
        .log()
        .lines()
        .filter(|l| l.contains("plugin failed"))
        .map(str::to_owned)
        .collect();
    let report = match run {
        Ok(report) => report,
        Err(e) => {
            eprintln!("gateway log, plugin failures: {failures:#?}");
            std::panic::resume_unwind(e)
        }
    };
    pgward_e2e::assert_no_failed_transactions(&report);
    assert!(
        failures.is_empty(),
        "a healthy plugin was reported as failed: {failures:#?}"
    );
}

/// Two plugin hosts in one process (a benchmark, an embedding) share each thread's instance
/// cache: each host's calls must still reach its own plugins. Both hosts load the same plugin
/// file under the same name with different rules, so only the instance tells them apart.
#[test]
fn two_plugin_hosts_in_one_process_keep_their_plugins_apart() {
    use pgward::auth::Identity;
    use pgward::config::PluginsConfig;
    use pgward::plugins::bindings::pgward::plugin::types::Protocol;
    use pgward::plugins::{convert_session, PluginHost, QueryDecision};
    use pgward::sql::{LexOptions, SqlAnalyzer};

    let host = |word: &str| {
        let dir = plugins_dir();
        install(&dir, "deny", "deny_keyword", Some(&deny_config(word)));
        PluginHost::start(PluginsConfig {
            directory: Some(dir),
            watch: false,
            ..Default::default()
        })
        .unwrap()
    };
    let (alpha, beta) = (host("alpha_table"), host("beta_table"));
    let identity = Identity {
        user: "alice".into(),
        groups: vec![],
        ..Default::default()
    };
    let session = convert_session(1, &identity, "db", "127.0.0.1:5555", "test");
    let analyzer = SqlAnalyzer::new(100);
    let denied = |host: &PluginHost, sql: &str| {
        let analysis = analyzer.analyze(sql, LexOptions::default());
        let decision = host.on_query(
            &host.chain(),
            &session,
            host.identity_id(&session),
            sql,
            &analysis,
            Protocol::Simple,
            |t| analyzer.analyze(t, LexOptions::default()),
        );
        matches!(decision, QueryDecision::Deny(_))
    };
    // Alternately, on this one thread; after the first round each host's instance is reused
    // (switching hosts does not discard the other's).
    let mut created = None;
    for _ in 0..3 {
        assert!(denied(&alpha, "SELECT * FROM alpha_table"));
        assert!(!denied(&beta, "SELECT * FROM alpha_table"));
        assert!(denied(&beta, "SELECT * FROM beta_table"));
        assert!(!denied(&alpha, "SELECT * FROM beta_table"));
        let now = pgward::plugins::instance_epoch();
        assert_eq!(
            *created.get_or_insert(now),
            now,
            "instances were created again"
        );
    }
}

/// The verdict cache (contract 0.5 `cache-verdict`), counted through `/metrics`: a verdict the
/// plugin marked answers later statements of the same shape and identity without a call; another
/// identity or group is judged afresh (a deny never answers for it); a config change or a new
/// `.wasm` empties the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_verdicts_answer_without_a_call_until_the_plugin_or_its_config_changes() {
    let pg = Postgres::shared();
    let db = pg.create_database("cache").unwrap();
    let dir = plugins_dir();
    let config = |message: &str| {
        format!(
            "word = \"secret_table\"\nmessage = \"{message}\"\ncacheable = true\nallow_groups = [\"ops\"]\n"
        )
    };
    install(&dir, "deny", "deny_keyword", Some(&config("no secrets")));
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: vec![
                pgward_e2e::TestUser::new("alice", "alice-pw", &["dev"]),
                pgward_e2e::TestUser::new("bob", "bob-pw", &["ops"]),
            ],
            plugins_dir: Some(dir.clone()),
            admin: true,
            ..Default::default()
        },
    )
    .unwrap();
    let metric = |name: &str| gw.metric(name, &[("plugin", "deny-keyword")]);
    let calls = || metric("pgward_plugin_calls_total");
    let cached = || metric("pgward_plugin_cached_verdicts_total");
    let alice = gw.connect("alice", &db).await.unwrap();
    alice
        .batch_execute("CREATE TABLE secret_table (id int); CREATE TABLE open_table (id int)")
        .await
        .unwrap_err();
    let message = |e: tokio_postgres::Error| db_error(&e).1;
    // Judged once, then answered from the cache: other literals, same shape.
    for id in 1..=4 {
        let e = alice
            .simple_query(&format!("SELECT * FROM secret_table WHERE id = {id}"))
            .await
            .unwrap_err();
        assert_eq!(message(e), "no secrets");
    }
    assert_eq!((calls(), cached()), (2.0, 3.0), "{}", gw.log());
    alice.simple_query("SELECT 1").await.unwrap();
    alice.simple_query("SELECT 2").await.unwrap();
    assert_eq!((calls(), cached()), (3.0, 4.0));
    // Another identity: judged afresh, and allowed (its group is), never the cached deny.
    let bob = gw.connect("bob", &db).await.unwrap();
    bob.batch_execute("CREATE TABLE secret_table (id int)")
        .await
        .unwrap();
    for id in 1..=2 {
        bob.simple_query(&format!("SELECT * FROM secret_table WHERE id = {id}"))
            .await
            .unwrap();
    }
    assert_eq!((calls(), cached()), (5.0, 5.0));
    // Alice again, from another session: still the cached deny.
    let alice2 = gw.connect("alice", &db).await.unwrap();
    let e = alice2
        .simple_query("SELECT * FROM secret_table WHERE id = 9")
        .await
        .unwrap_err();
    assert_eq!(message(e), "no secrets");
    assert_eq!((calls(), cached()), (5.0, 6.0));

    // A config change loads the plugin anew: the next verdict comes from a call, with the
    // new message.
    std::fs::write(dir.join("deny.toml"), config("still no secrets")).unwrap();
    let reloaded = wait_for(Duration::from_secs(15), || {
        gw.log().matches("plugin chain updated").count() >= 2
    });
    assert!(reloaded.is_some(), "{}", gw.log());
    let before = calls();
    let e = alice
        .simple_query("SELECT * FROM secret_table WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(message(e), "still no secrets");
    assert_eq!(calls(), before + 1.0);
    // Another plugin in the file's place (it ignores the config): none of the old plugin's
    // verdicts answer any more.
    install(&dir, "deny", "contract_0_4", None);
    let reloaded = wait_for(Duration::from_secs(15), || {
        gw.log().matches("plugin chain updated").count() >= 3
    });
    assert!(reloaded.is_some(), "{}", gw.log());
    alice
        .simple_query("SELECT * FROM secret_table WHERE id = 2")
        .await
        .unwrap();
    // A 0.4 plugin (no cache-verdict) keeps working under 0.5.
    let e = alice.simple_query("SELECT 'v04_probe'").await.unwrap_err();
    assert_eq!(
        message(e),
        "contract 0.4 plugin saw user=alice groups=dev password=true"
    );
    assert!(gw.log().contains("contract=V0_4"), "{}", gw.log());
}

/// Drops the mask-column plugin (masking `email`) into a running gateway's plugins directory
/// and waits until the chain has been updated with it.
fn hot_load_email_mask(gw: &Gateway, dir: &Path, within: Duration) {
    install(
        dir,
        "20-mask",
        "mask_column",
        Some("columns = [\"email\"]\n"),
    );
    let reloaded = wait_for(within, || {
        gw.log().matches("plugin chain updated").count() >= 2
    });
    assert!(reloaded.is_some(), "{}", gw.log());
}

/// The session still works after a withheld result, and an e-mail it selects now comes back
/// masked.
async fn assert_next_email_masked(client: &tokio_postgres::Client) {
    let rows = client
        .query("SELECT 'ada@example.com'::text AS email", &[])
        .await
        .unwrap();
    let email: &str = rows[0].get(0);
    assert_ne!(email, "ada@example.com");
}

/// An Execute sent while no result plugin was active goes upstream without a Describe. A result
/// plugin loaded while it runs never saw its columns, so its rows are withheld — never passed
/// unfiltered — and the next statement is masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_an_execute_in_flight_when_a_result_plugin_loads_are_withheld() {
    // An on-query plugin alone: results stay on the byte fast path.
    let (_, db, dir, gw) = with_deny("10-deny", "alpha_table");
    let client = std::sync::Arc::new(gw.connect("alice", &db).await.unwrap());
    let slow = client
        .prepare("SELECT pg_sleep(10)::text AS slept, 'ada@example.com'::text AS email")
        .await
        .unwrap();
    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.query(&slow, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    hot_load_email_mask(&gw, &dir, Duration::from_secs(9));
    assert!(
        !running.is_finished(),
        "the plugin loaded only after the statement finished: the test proves nothing"
    );
    let e = running.await.unwrap().unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "58000", "{message}");
    assert!(
        message.contains("before its columns were described"),
        "{message}"
    );
    // The session goes on, and its next result is masked.
    assert_next_email_masked(&client).await;
}

#[tokio::test]
async fn rows_of_a_result_streaming_when_a_result_plugin_loads_are_withheld() {
    use futures_util::StreamExt as _;
    // An on-query plugin alone: results stay on the byte fast path.
    let (_, db, dir, gw) = with_deny("10-deny", "alpha_table");
    // Rows of 9 KB, one every 20 ms: the server sends each as it is made, so the result is
    // still streaming when the plugin arrives.
    let sql = "SELECT i, repeat('x', 9000) AS pad, pg_sleep(0.02)::text AS slept, \
               'ada@example.com'::text AS email FROM generate_series(1, 300) i";
    let simple = gw.connect("alice", &db).await.unwrap();
    let extended = gw.connect("alice", &db).await.unwrap();
    let mut by_query = Box::pin(simple.simple_query_raw(sql).await.unwrap());
    let no_params: [&str; 0] = [];
    let mut by_execute = Box::pin(extended.query_raw(sql, no_params).await.unwrap());
    // The first rows come through as they are: no result plugin yet.
    let first = by_query.next().await.unwrap().unwrap();
    let tokio_postgres::SimpleQueryMessage::RowDescription(_) = first else {
        panic!("expected the columns first");
    };
    for _ in 0..3 {
        let Some(Ok(tokio_postgres::SimpleQueryMessage::Row(row))) = by_query.next().await else {
            panic!("expected a row");
        };
        assert_eq!(row.get("email"), Some("ada@example.com"));
        let row = by_execute.next().await.unwrap().unwrap();
        assert_eq!(row.get::<_, &str>("email"), "ada@example.com");
    }
    hot_load_email_mask(&gw, &dir, Duration::from_secs(5));
    // Rows the gateway sent before the plugin was active may still be on their way; after
    // them the result ends in the refusal, long before its 300 rows.
    let mut rows = 3;
    let end = loop {
        match by_query.next().await {
            Some(Ok(tokio_postgres::SimpleQueryMessage::Row(_))) => rows += 1,
            Some(Ok(other)) => panic!("the result went on to its end: {other:?} after {rows} rows"),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error after {rows} rows"),
        }
    };
    assert!(rows < 300, "{rows}");
    let (code, message) = db_error(&end);
    assert_eq!(code, "58000", "{message}");
    assert!(message.contains("became active while"), "{message}");
    let mut rows = 3;
    let end = loop {
        match by_execute.next().await {
            Some(Ok(_)) => rows += 1,
            Some(Err(e)) => break e,
            None => panic!("the result went on to its end after {rows} rows"),
        }
    };
    assert!(rows < 300, "{rows}");
    let (code, message) = db_error(&end);
    assert_eq!(code, "58000", "{message}");
    // Both sessions go on, and their next results are masked.
    for client in [&simple, &extended] {
        assert_next_email_masked(client).await;
    }
}
