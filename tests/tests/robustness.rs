//! Bad input, limits, cancellation, shutdown and a dead upstream: clear errors, no panics, and
//! the gateway keeps serving.

use pgward_e2e::{sqlstate, stdout_ok, wait_until, Gateway, GatewayOptions, Postgres, RawClient};
use std::time::{Duration, Instant};

fn trust_gateway(pg: &Postgres, listen_extra: &str) -> Gateway {
    Gateway::start(
        pg,
        GatewayOptions {
            trust: true,
            listen_extra: listen_extra.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The gateway still serves a normal client.
fn assert_serves(gw: &Gateway, db: &str) {
    let out = gw.psql("alice", db, &["-c", "SELECT 'still here'"], None);
    assert_eq!(stdout_ok(&out), "still here\n");
}

fn backends_of(pg: &Postgres, db: &str) -> u32 {
    pg.superuser_sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn garbage_and_oversized_startup_packets_get_protocol_errors() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = trust_gateway(pg, "");
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // Length far above PostgreSQL's 10 000-byte startup limit.
        [
            &100_000_000i32.to_be_bytes()[..],
            &196608i32.to_be_bytes()[..],
        ]
        .concat(),
        // Negative and too-small lengths.
        (-5i32).to_be_bytes().to_vec(),
        [&4i32.to_be_bytes()[..]].concat(),
        // Protocol 2.0.
        [&8i32.to_be_bytes()[..], &131072i32.to_be_bytes()[..]].concat(),
        // A startup message whose parameters are not terminated.
        [
            &15i32.to_be_bytes()[..],
            &196608i32.to_be_bytes()[..],
            b"user\0al",
        ]
        .concat(),
        // A cancel request of the wrong length.
        [
            &12i32.to_be_bytes()[..],
            &80877102i32.to_be_bytes()[..],
            &[0, 0, 0, 1],
        ]
        .concat(),
    ];
    for bytes in cases {
        let mut c = RawClient::connect(gw.port).unwrap();
        c.send_raw(&bytes).unwrap();
        let reply = c.read_message().unwrap();
        let (tag, body) = reply.unwrap_or_else(|| panic!("no error reply to {bytes:?}"));
        assert_eq!(tag, b'E', "reply to {bytes:?}");
        assert_eq!(sqlstate(&body), "08P01", "reply to {bytes:?}");
        assert!(
            c.read_message().unwrap().is_none(),
            "connection closed after the error"
        );
    }
    // Connect and vanish, or send half a packet and vanish.
    drop(RawClient::connect(gw.port).unwrap());
    let mut c = RawClient::connect(gw.port).unwrap();
    c.send_raw(&[0, 0]).unwrap();
    drop(c);
    assert_serves(&gw, &db);
    assert!(!gw.log().contains("panicked"));
}

#[test]
fn malformed_messages_mid_session_close_only_that_session() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = trust_gateway(pg, "max_message_size = 4096");
    // A message length smaller than its header.
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", &db).unwrap();
    c.read_until_ready().unwrap();
    c.send_raw(b"Q\0\0\0\x02").unwrap();
    let (tag, body) = c.read_message().unwrap().unwrap();
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "08P01"));
    assert!(c.read_message().unwrap().is_none());
    // A Query larger than max_message_size.
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", &db).unwrap();
    c.read_until_ready().unwrap();
    let big = format!("SELECT '{}'", "x".repeat(10_000));
    c.query(&big).unwrap();
    let (tag, body) = c.read_message().unwrap().unwrap();
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "08P01"));
    // Invalid UTF-8 and a Query without its terminator reach the server, which rejects them;
    // the session stays usable.
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", &db).unwrap();
    c.read_until_ready().unwrap();
    c.send(b'Q', b"SELECT '\xff\xfe'\0").unwrap();
    let msgs = c.read_until_ready().unwrap();
    assert!(
        msgs.iter()
            .any(|(t, b)| *t == b'E' && sqlstate(b) == "22021"),
        "{msgs:?}"
    );
    c.send(b'Q', b"SELECT 1").unwrap();
    let msgs = c.read_until_ready().unwrap();
    assert!(msgs.iter().any(|(t, _)| *t == b'E'), "{msgs:?}");
    c.query("SELECT 'alive'").unwrap();
    let msgs = c.read_until_ready().unwrap();
    assert!(
        msgs.iter()
            .any(|(t, b)| *t == b'D' && b.ends_with(b"alive")),
        "{msgs:?}"
    );
    // Upstream backends of the broken sessions are gone.
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || backends_of(pg, &db) == 0));
    assert_serves(&gw, &db);
}

#[test]
fn unmodelled_message_types_pass_through() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = trust_gateway(pg, "");
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", &db).unwrap();
    c.read_until_ready().unwrap();
    // FunctionCall (legacy fast-path) of pg_backend_pid(), oid 2026, no arguments, text result.
    let mut body = 2026i32.to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    c.send(b'F', &body).unwrap();
    let msgs = c.read_until_ready().unwrap();
    assert_eq!(
        msgs.first().map(|m| m.0),
        Some(b'V'),
        "FunctionCallResponse: {msgs:?}"
    );
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
    c.query("SELECT 1").unwrap();
    assert!(c.read_until_ready().unwrap().iter().any(|m| m.0 == b'D'));
}

#[tokio::test]
async fn connection_limit_refuses_with_53300() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            listen_extra: "max_connections = 2".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let a = gw.connect("alice", &db).await.unwrap();
    let b = gw.connect("alice", &db).await.unwrap();
    let Err(err) = gw.connect("alice", &db).await else {
        panic!("third connection must be refused")
    };
    let code = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .map(|c| c.code().to_owned());
    assert_eq!(code.as_deref(), Some("53300"), "{err}");
    drop(a);
    // A slot frees up once a session ends.
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(c) = gw.connect("alice", &db).await {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = ok.expect("slot freed after a session closed");
    c.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn idle_sessions_time_out_but_open_transactions_do_not() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            listen_extra: "idle_timeout = \"1s\"".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let idle = gw.connect("alice", &db).await.unwrap();
    let busy = gw.connect("alice", &db).await.unwrap();
    busy.batch_execute("BEGIN").await.unwrap();
    // A long statement is not idleness either.
    busy.batch_execute("SELECT pg_sleep(1.6)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        idle.is_closed() || idle.simple_query("SELECT 1").await.is_err(),
        "idle session closed"
    );
    busy.batch_execute("COMMIT").await.unwrap();
    assert!(gw.log().contains("end=idle timeout"), "{}", gw.log());
}

#[tokio::test]
async fn cancel_request_stops_the_right_query() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = Gateway::start(pg, GatewayOptions::default()).unwrap();
    let victim = gw.connect("alice", &db).await.unwrap();
    let bystander = gw.connect("alice", &db).await.unwrap();
    let token = victim.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { victim.batch_execute("SELECT pg_sleep(30)").await });
    let other = tokio::spawn(async move {
        bystander
            .query_one("SELECT pg_sleep(1.5), 'done'::text", &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    // The other session's query was not cancelled.
    let row = other.await.unwrap().unwrap();
    assert_eq!(row.get::<_, String>(1), "done");
    // A made-up key cancels nothing and is ignored.
    let mut c = RawClient::connect(gw.port).unwrap();
    c.send_raw(
        &[
            &16i32.to_be_bytes()[..],
            &80877102i32.to_be_bytes()[..],
            &7i32.to_be_bytes()[..],
            &9i32.to_be_bytes()[..],
        ]
        .concat(),
    )
    .unwrap();
    assert!(c.read_message().unwrap().is_none());
}

#[test]
fn dead_upstream_gets_a_clear_error() {
    let pg = Postgres::shared();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            upstream_port: Some(pgward_e2e::free_port()),
            ..Default::default()
        },
    )
    .unwrap();
    let out = gw.psql("alice", "postgres", &["-c", "SELECT 1"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not connect to the upstream server"),
        "{err}"
    );
    assert!(gw.log().contains("upstream connection failed"));
    // A database that does not exist is reported as PostgreSQL reports it.
    let gw = Gateway::start(pg, GatewayOptions::default()).unwrap();
    let out = gw.psql("alice", "no_such_db", &["-c", "SELECT 1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("database \"no_such_db\" does not exist"),
        "{err}"
    );
}

// Multi-threaded: the dropped client's connection task must run to send Terminate while the
// test blocks on the raw client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnects_release_upstream_backends() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = trust_gateway(pg, "");
    // Terminate, then an abrupt close in the middle of a transaction.
    let c = gw.connect("alice", &db).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    let mut raw = RawClient::connect(gw.port).unwrap();
    raw.startup("alice", &db).unwrap();
    raw.read_until_ready().unwrap();
    raw.query("BEGIN; CREATE TABLE half_done (id int);")
        .unwrap();
    raw.read_until_ready().unwrap();
    drop(raw);
    assert!(
        wait_until(Duration::from_secs(5), || backends_of(pg, &db) == 0),
        "backends left behind: {}\n{}",
        pg.superuser_sql("postgres", &format!("SELECT pid, state, query, backend_type FROM pg_stat_activity WHERE datname = '{db}'")).unwrap(),
        gw.log()
    );
    // The abandoned transaction was rolled back.
    let exists = pg
        .superuser_sql(&db, "SELECT to_regclass('half_done') IS NULL")
        .unwrap();
    assert_eq!(exists.trim(), "t");
}

#[tokio::test]
async fn sigterm_lets_running_statements_finish_then_closes_the_rest() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let mut gw = Gateway::start(
        pg,
        GatewayOptions {
            listen_extra: "shutdown_timeout = \"2s\"".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let running = gw.connect("alice", &db).await.unwrap();
    let in_txn = gw.connect("alice", &db).await.unwrap();
    in_txn.batch_execute("BEGIN").await.unwrap();
    let started = Instant::now();
    let query = tokio::spawn(async move {
        let r = running
            .query_one("SELECT pg_sleep(1), 'finished'::text", &[])
            .await;
        (r, running)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once shutdown began.
    assert!(gw.connect("alice", &db).await.is_err());
    let (r, _running) = query.await.unwrap();
    assert_eq!(
        r.unwrap().get::<_, String>(1),
        "finished",
        "the running statement completed"
    );
    // The open transaction is closed at the deadline with an admin-shutdown error.
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(10));
        (s, gw)
    })
    .await
    .unwrap();
    let (exit, gw) = status;
    assert!(exit.expect("gateway exited").success());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for the deadline"
    );
    let err = in_txn.batch_execute("SELECT 1").await.unwrap_err();
    assert!(in_txn.is_closed(), "{err}");
    assert!(gw.log().contains("shutdown complete"));
}

#[test]
fn slow_reader_keeps_gateway_memory_bounded() {
    let pg = Postgres::shared();
    let db = pg.create_database("robust").unwrap();
    let gw = trust_gateway(pg, "");
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", &db).unwrap();
    c.read_until_ready().unwrap();
    let baseline = gw.rss_kib();
    // 1 GiB of result: 131072 rows of 8 KiB.
    c.query("SELECT repeat('x', 8192) FROM generate_series(1, 131072)")
        .unwrap();
    // Read slowly for a while: the gateway must not buffer what the client has not taken.
    let mut rows = 0u64;
    let mut peak = baseline;
    for _ in 0..20 {
        for _ in 0..16 {
            if let Some((b'D', _)) = c.read_message().unwrap() {
                rows += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(gw.rss_kib());
    }
    // Then drain the rest at full speed and check nothing was lost.
    loop {
        let (tag, body) = c
            .read_message()
            .unwrap()
            .expect("result ends with ReadyForQuery");
        match tag {
            b'D' => {
                rows += 1;
                assert_eq!(body.len(), 2 + 4 + 8192);
            }
            b'Z' => break,
            b'E' => panic!("error {}", sqlstate(&body)),
            _ => {}
        }
        if rows % 8192 == 0 {
            peak = peak.max(gw.rss_kib());
        }
    }
    assert_eq!(rows, 131_072);
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 32 * 1024,
        "gateway RSS grew by {growth} KiB while relaying 1 GiB"
    );
}
