//! The driver matrix: each real client runs its own smoke through a gateway with guardrails and
//! mask-pii loaded, logging in with SCRAM as an identity whose results are masked: connect,
//! simple and prepared statements, parameters of several types, binary results where the
//! driver uses them, transactions, a policy refusal and a server error with recovery, COPY and
//! cancel where the driver supports them.
//!
//! psql (with its catalog meta-commands, which must be neither refused nor masked wrongly),
//! pgbench, tokio-postgres and sqlx run here; psycopg 3, asyncpg, node-postgres and the
//! PostgreSQL JDBC driver run the scripts in `tests/drivers/`. `scripts/prereqs.sh` installs
//! them: Debian's python3-psycopg, python3-asyncpg and libpostgresql-jdbc-java, and `pg` and
//! `pg-copy-streams` from npm into `target/drivers/node`.

use futures_util::{SinkExt, TryStreamExt};
use pgward_e2e::{
    assert_no_failed_transactions, pgbench_field, policy_plugins_dir, stdout_ok, target_dir,
    Gateway, GatewayOptions, Postgres,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SEED: &str = "
CREATE TABLE customers (
    id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, phone text, ssn text,
    card text, notes text
);
INSERT INTO customers VALUES
 (1, 'Ada Lovelace', 'ada@example.com', '+1 415 555 0100', '078-05-1120', '4111 1111 1111 1111', 'prefers email');
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric, created timestamptz DEFAULT now());
CREATE INDEX items_name ON items (name);
CREATE VIEW cheap_items AS SELECT id, name FROM items WHERE price < 10;
CREATE FUNCTION item_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM items';
CREATE SCHEMA inventory;
";

/// A fresh database and a gateway with the example policies; alice (group `dev`) is masked.
fn setup(prefix: &str) -> (&'static Postgres, String, Gateway) {
    let pg = Postgres::shared();
    let db = pg.create_database(prefix).unwrap();
    pg.superuser_sql(&db, &format!("SET ROLE pgward_gw; {SEED}"))
        .unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            plugins_dir: Some(policy_plugins_dir()),
            ..Default::default()
        },
    )
    .unwrap();
    (pg, db, gw)
}

/// Runs a driver's smoke program and asserts it printed SMOKE OK; the gateway must not have
/// panicked meanwhile.
fn run_smoke(gw: &Gateway, name: &str, cmd: &mut Command) {
    let started = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{name} did not run ({e}): scripts/prereqs.sh installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("SMOKE OK"),
        "{name} smoke failed:\n{text}\n--- gateway log tail:\n{}",
        log_tail(gw)
    );
    assert!(!gw.log().contains("panicked"));
    println!("{name}: ok in {:?}", started.elapsed());
}

fn log_tail(gw: &Gateway) -> String {
    let log = gw.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers")
        .join(name)
}

#[test]
fn psql_meta_commands_and_copy_are_neither_refused_nor_leak() {
    let (_pg, db, gw) = setup("drv_psql");
    let meta = [
        "\\l",
        "\\dn",
        "\\dt",
        "\\d",
        "\\dv",
        "\\di",
        "\\df",
        "\\du",
        "\\dx",
        "\\d customers",
        "\\d+ items",
        "\\dt inventory.*",
        "\\dp",
        "\\conninfo",
    ];
    let mut args = Vec::new();
    for m in meta {
        args.extend(["-c", m]);
    }
    let out = gw.psql("alice", &db, &args, None);
    let text = stdout_ok(&out);
    for expect in [
        db.as_str(),
        "customers",
        "items",
        "cheap_items",
        "items_name",
        "item_count",
    ] {
        assert!(text.contains(expect), "{expect} missing from:\n{text}");
    }
    // \copy is COPY TO STDOUT / FROM STDIN underneath: data in, masked data out.
    let out = gw.psql(
        "alice",
        &db,
        &[
            "-c",
            "\\copy items (name) FROM STDIN",
            "-c",
            "\\copy (SELECT name FROM items ORDER BY 1) TO STDOUT",
            "-c",
            "\\copy (SELECT email FROM customers) TO STDOUT",
        ],
        Some("psql c1\npsql c2\n\\.\n"),
    );
    let text = stdout_ok(&out);
    assert!(text.starts_with("psql c1\npsql c2\n"), "{text}");
    assert!(!text.contains("ada@example.com"), "{text}");
    // A refusal and a server error are reported as psql reports them.
    let out = gw.psql("alice", &db, &["-c", "DELETE FROM items"], None);
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains("ERROR:  guardrails: rule"), "{refused}");
    // A transaction: what it wrote is gone after ROLLBACK, and kept after COMMIT.
    let count = |gw: &Gateway| {
        let out = gw.psql(
            "alice",
            &db,
            &["-tA", "-c", "SELECT count(*) FROM items"],
            None,
        );
        stdout_ok(&out).trim().to_owned()
    };
    let before: i64 = count(&gw).parse().unwrap();
    let out = gw.psql(
        "alice",
        &db,
        &[
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO items (name) VALUES ('psql rolled back')",
            "-c",
            "ROLLBACK",
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO items (name) VALUES ('psql committed')",
            "-c",
            "COMMIT",
        ],
        None,
    );
    stdout_ok(&out);
    assert_eq!(count(&gw), (before + 1).to_string());
    let out = gw.psql(
        "alice",
        &db,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            "SELECT 1/0",
            "-c",
            "SELECT 'recovered'",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("recovered"));
}

#[test]
fn pgbench_runs_every_mode_through_the_policies() {
    let (pg, db, gw) = setup("drv_pgbench");
    // Initialised through a gateway without plugins: `pgbench -i` drops its tables first,
    // which guardrails refuses.
    let plain = Gateway::start(pg, GatewayOptions::default()).unwrap();
    plain.pgbench("alice", &db, &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [true, false] {
            let mut args = vec!["-M", mode, "-c", "2", "-j", "2", "-t", "200"];
            if select_only {
                args.push("-S");
            }
            let report = gw.pgbench("alice", &db, &args);
            assert_no_failed_transactions(&report);
            assert!(
                pgbench_field(&report, "number of transactions actually processed:")
                    .starts_with("400/400"),
                "{report}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_smoke() {
    let (_pg, db, gw) = setup("drv_tokio");
    let client = gw.connect("alice", &db).await.unwrap();
    // Simple protocol.
    let messages = client.simple_query("SELECT 1; SELECT 2").await.unwrap();
    let rows: Vec<&str> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["1", "2"]);
    // Parameters of several types; tokio-postgres asks for binary results.
    let row = client
        .query_one(
            "SELECT $1::int4 + 1, $2::text || '!', $3::float8 * 2, $4::bool, $5::bytea, $6::text, $7::int8",
            &[&41i32, &"hi", &1.25f64, &true, &vec![0u8, 1], &None::<String>, &(1i64 << 40)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, f64>(2), 2.5);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Vec<u8>>(4), vec![0, 1]);
    assert_eq!(row.get::<_, Option<String>>(5), None);
    assert_eq!(row.get::<_, i64>(6), 1 << 40);
    let doubled = client.prepare("SELECT $1::int4 * 2").await.unwrap();
    for i in 0..3i32 {
        let v: i32 = client.query_one(&doubled, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i * 2);
    }
    // Masked.
    let email: String = client
        .query_one("SELECT email FROM customers WHERE id = $1", &[&1i32])
        .await
        .unwrap()
        .get(0);
    assert_ne!(email, "ada@example.com");
    assert!(!email.is_empty());
    // Transactions.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO items (name) VALUES ($1)", &[&"tokio kept"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO items (name) VALUES ($1)",
        &[&"tokio rolled back"],
    )
    .await
    .unwrap();
    let err = tx.execute("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    let err = tx.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
    tx.rollback().await.unwrap();
    let counts = client
        .query_one(
            "SELECT count(*) FILTER (WHERE name = 'tokio kept'), \
             count(*) FILTER (WHERE name = 'tokio rolled back') FROM items",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((counts.get::<_, i64>(0), counts.get::<_, i64>(1)), (1, 0));
    // A refusal, a server error, recovery.
    let err = client.execute("DELETE FROM items", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    let err = client
        .query_one("SELECT 1 / $1::int4", &[&0i32])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    assert_eq!(
        client
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    // COPY in and out.
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY items (name) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"tokio c1\ntokio c2\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let out: Vec<bytes::Bytes> = client
        .copy_out("COPY (SELECT name FROM items WHERE name LIKE 'tokio c%' ORDER BY 1) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat(), b"tokio c1\ntokio c2\n");
    // Cancel.
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap();
    assert_eq!(
        client
            .query_one("SELECT 3", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_smoke() {
    use sqlx::{Connection as _, Executor as _};
    let (_pg, db, gw) = setup("drv_sqlx");
    let url = format!(
        "postgres://alice:alice-pw@127.0.0.1:{}/{db}?sslmode=disable",
        gw.port
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    // Simple protocol (an unprepared string) and prepared statements (sqlx caches them).
    conn.execute("SELECT 1; SELECT 2").await.unwrap();
    for _ in 0..3 {
        let row: (i32, String, f64, bool, Vec<u8>, Option<String>, i64) = sqlx::query_as(
            "SELECT $1::int4 + 1, $2::text || '!', $3::float8 * 2, $4::bool, $5::bytea, $6::text, $7::int8",
        )
        .bind(41i32)
        .bind("hi")
        .bind(1.25f64)
        .bind(true)
        .bind(vec![0u8, 1])
        .bind(None::<String>)
        .bind(1i64 << 40)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            row,
            (42, "hi!".into(), 2.5, true, vec![0, 1], None, 1 << 40)
        );
    }
    // Masked (binary results).
    let email: String = sqlx::query_scalar("SELECT email FROM customers WHERE id = $1")
        .bind(1i32)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_ne!(email, "ada@example.com");
    // Transactions.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO items (name) VALUES ($1)")
        .bind("sqlx kept")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO items (name) VALUES ($1)")
        .bind("sqlx rolled back")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE name = 'sqlx kept'), \
         count(*) FILTER (WHERE name = 'sqlx rolled back') FROM items",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(counts, (1, 0));
    // A refusal, a server error, recovery.
    let code = |e: sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.code().map(|c| c.into_owned()))
    };
    let err = sqlx::query("DELETE FROM items")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(code(err).as_deref(), Some("42501"));
    let err = sqlx::query("SELECT 1 / $1::int4")
        .bind(0i32)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(code(err).as_deref(), Some("22012"));
    let v: i32 = sqlx::query_scalar("SELECT 2")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 2);
    // COPY in and out. sqlx has no cancel API.
    let mut copy = conn
        .copy_in_raw("COPY items (name) FROM STDIN")
        .await
        .unwrap();
    copy.send(b"sqlx c1\nsqlx c2\n".as_slice()).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), 2);
    let out: Vec<bytes::Bytes> = conn
        .copy_out_raw(
            "COPY (SELECT name FROM items WHERE name LIKE 'sqlx c%' ORDER BY 1) TO STDOUT",
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat(), b"sqlx c1\nsqlx c2\n");
    conn.close().await.unwrap();
}

#[test]
fn psycopg_smoke() {
    let (_pg, db, gw) = setup("drv_psycopg");
    // Debian's Python, where python3-psycopg is installed.
    run_smoke(
        &gw,
        "psycopg",
        Command::new("/usr/bin/python3")
            .arg(script("smoke_psycopg.py"))
            .arg(gw.conn_str("alice", &db) + " sslmode=disable"),
    );
}

#[test]
fn asyncpg_smoke() {
    let (_pg, db, gw) = setup("drv_asyncpg");
    run_smoke(
        &gw,
        "asyncpg",
        Command::new("/usr/bin/python3")
            .arg(script("smoke_asyncpg.py"))
            .arg(format!(
                "postgresql://alice:alice-pw@127.0.0.1:{}/{db}",
                gw.port
            )),
    );
}

#[test]
fn node_postgres_smoke() {
    let (_pg, db, gw) = setup("drv_node");
    let modules = target_dir().join("drivers/node/node_modules");
    assert!(
        modules.join("pg").is_dir(),
        "{} has no pg: scripts/prereqs.sh installs it",
        modules.display()
    );
    run_smoke(
        &gw,
        "node-postgres",
        Command::new("node")
            .arg(script("smoke_node_pg.js"))
            .arg(gw.port.to_string())
            .arg(&db)
            .env("NODE_PATH", &modules),
    );
}

#[test]
fn jdbc_smoke() {
    let (_pg, db, gw) = setup("drv_jdbc");
    run_smoke(
        &gw,
        "jdbc",
        Command::new("java")
            .arg("-cp")
            .arg("/usr/share/java/postgresql.jar")
            .arg(script("Smoke.java"))
            .arg(gw.port.to_string())
            .arg(&db),
    );
}

/// libpq and tokio-postgres send COPY FROM STDIN in the extended protocol as Bind, Execute,
/// Sync at once, then the data, CopyDone and another Sync; the server ignores the first Sync
/// (copy-in mode) and answers one ReadyForQuery. The gateway — following the protocol for
/// mask-pii and for the audit trail — must not wait for a second one: the statements after it
/// are answered in step, masked, and recorded once each, also when the early Sync reaches the
/// gateway after the server's CopyInResponse (a race that once let a row through unmasked).
#[test]
fn an_extended_copy_in_with_an_early_sync_keeps_the_session_in_step() {
    use pgward_e2e::wire::{self as msg, run};
    let pg = Postgres::shared();
    let db = pg.create_database("drv_copysync").unwrap();
    pg.superuser_sql(&db, &format!("SET ROLE pgward_gw; {SEED}"))
        .unwrap();
    let trail = pgward_e2e::unique_dir("copysync-trail");
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            trust: true,
            plugins_dir: Some(policy_plugins_dir()),
            extra_toml: format!("[audit]\ndirectory = \"{}\"\n", trail.display()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = pgward_e2e::RawClient::connect(gw.port).unwrap();
    c.startup("alice", &db).unwrap();
    c.read_until_ready().unwrap();
    for round in 0..3 {
        let got = run(
            &mut c,
            &[msg::parse("", "COPY items (name) FROM STDIN"), msg::sync()],
        );
        assert_eq!(got.last().map(|m| m.0), Some(b'Z'), "{got:?}");
        // Round 1 sends its Sync only once the copy has begun: the gateway reads it after the
        // CopyInResponse, and must still know the server ignores it.
        let late_sync = round == 1;
        for m in [msg::bind("", "", 0), msg::execute("", 0), msg::sync()] {
            if !(late_sync && m.0 == b'S') {
                c.send(m.0, &m.1).unwrap();
            }
        }
        assert_eq!(c.read_message().unwrap().unwrap().0, b'2');
        assert_eq!(c.read_message().unwrap().unwrap().0, b'G');
        if late_sync {
            c.send(b'S', b"").unwrap();
        }
        c.send(b'd', format!("copy {round}\n").as_bytes()).unwrap();
        c.send(b'c', b"").unwrap();
        c.send(b'S', b"").unwrap();
        let done = c.read_until_ready().unwrap();
        let tags: String = done.iter().map(|m| m.0 as char).collect();
        assert_eq!(tags, "CZ", "{done:?}");
        // The next statement gets its own answers, masked.
        let got = run(
            &mut c,
            &[
                msg::parse("", "SELECT email FROM customers WHERE id = 1"),
                msg::bind("", "", 0),
                msg::execute("", 0),
                msg::sync(),
            ],
        );
        let tags: String = got.iter().map(|m| m.0 as char).collect();
        assert_eq!(tags, "12DCZ", "round {round}: {got:?}");
        let row = String::from_utf8_lossy(&got[2].1).into_owned();
        assert!(!row.contains("ada@example.com"), "{row}");
    }
    let out = gw.psql("alice", &db, &["-c", "SELECT count(*) FROM items"], None);
    assert_eq!(stdout_ok(&out), "3\n");
    drop(c);
    // Each COPY is one statement record with its row, none left unfinished.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let text: String = std::fs::read_dir(&trail)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        if text.contains("\"session.end\"") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let copies: Vec<&str> = records
        .lines()
        .filter(|l| l.contains("\"kind\":\"statement\"") && l.contains("copy items"))
        .collect();
    assert!(
        copies
            .iter()
            .filter(|l| l.contains("\"outcome\":\"ok\""))
            .count()
            == 3
            && copies.iter().all(|l| !l.contains("unfinished")),
        "{copies:#?}"
    );
}
