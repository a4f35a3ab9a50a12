//! The protocol relayed end to end: psql, tokio-postgres, COPY, NOTIFY, errors, large results.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgward_e2e::{connect_direct, stdout_ok, Gateway, GatewayOptions, Postgres};
use std::time::Duration;

fn setup() -> (&'static Postgres, Gateway, String) {
    let pg = Postgres::shared();
    let db = pg.create_database("relay").unwrap();
    let gw = Gateway::start(pg, GatewayOptions::default()).unwrap();
    (pg, gw, db)
}

#[test]
fn psql_simple_queries_and_multi_statement_strings() {
    let (_pg, gw, db) = setup();
    let out = gw.psql(
        "alice",
        &db,
        &["-c", "CREATE TABLE t (id int primary key, name text); INSERT INTO t VALUES (1, 'one'), (2, 'two'); SELECT name FROM t ORDER BY id;"],
        None,
    );
    assert_eq!(stdout_ok(&out), "one\ntwo\n");
    // A multi-statement string returns every result.
    let out = gw.psql(
        "alice",
        &db,
        &["-c", "SELECT 1; SELECT count(*) FROM t; SELECT 'a;b'"],
        None,
    );
    assert_eq!(stdout_ok(&out), "1\n2\na;b\n");
    // psql scripts with several statements, one result each.
    let out = gw.psql(
        "alice",
        &db,
        &[],
        Some("SELECT 40 + 2;\nSELECT current_database();\n"),
    );
    assert_eq!(stdout_ok(&out), format!("42\n{db}\n"));
}

#[test]
fn session_reports_server_parameters_and_runs_as_upstream_role() {
    let (_pg, gw, db) = setup();
    let out = gw.psql(
        "alice",
        &db,
        &[
            "-c",
            "SHOW server_version_num",
            "-c",
            "SELECT current_user",
            "-c",
            "SHOW application_name",
        ],
        None,
    );
    let text = stdout_ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].parse::<u32>().unwrap() >= 100000);
    assert_eq!(lines[1], pgward_e2e::UPSTREAM_USER);
    assert_eq!(lines[2], "psql", "application_name is forwarded upstream");
}

#[tokio::test]
async fn extended_protocol_prepared_binary_and_portal() {
    let (_pg, gw, db) = setup();
    let client = gw.connect("alice", &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE items (id int8 primary key, price numeric, tags text[], at timestamptz default now(), raw bytea)")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO items (id, price, tags, raw) VALUES ($1, $2::text::numeric, $3, $4)")
        .await
        .unwrap();
    for i in 0..50i64 {
        let tags = vec![format!("t{i}"), "x".to_string()];
        client
            .execute(
                &insert,
                &[&i, &format!("{i}.25"), &tags, &vec![i as u8, 0, 255]],
            )
            .await
            .unwrap();
    }
    // Binary results through a named prepared statement, reused.
    let select = client
        .prepare("SELECT id, price::text, tags, raw FROM items WHERE id >= $1 ORDER BY id")
        .await
        .unwrap();
    for _ in 0..3 {
        let rows = client.query(&select, &[&40i64]).await.unwrap();
        assert_eq!(rows.len(), 10);
        let id: i64 = rows[0].get(0);
        let price: String = rows[0].get(1);
        let tags: Vec<String> = rows[0].get(2);
        let raw: Vec<u8> = rows[0].get(3);
        assert_eq!((id, price.as_str()), (40, "40.25"));
        assert_eq!(tags, vec!["t40".to_string(), "x".to_string()]);
        assert_eq!(raw, vec![40, 0, 255]);
    }
    // A portal executed with a row limit returns PortalSuspended between batches.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT id FROM items ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 7).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 7);
        seen.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    tx.commit().await.unwrap();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn copy_in_and_out_round_trips_data() {
    let (pg, gw, db) = setup();
    let client = gw.connect("alice", &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE c (id int, body text)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tline {i} with tab\\tand unicode é€\n"));
    }
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(7_000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 20_000);
    let out = client.copy_out("COPY c TO STDOUT").await.unwrap();
    let chunks: Vec<Bytes> = out.try_collect().await.unwrap();
    let back: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(back).unwrap(), data);
    // The server agrees with what the client sent.
    let direct = connect_direct(pg, &db).await.unwrap();
    let row = direct
        .query_one("SELECT count(*), max(id) FROM c", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i32>(1)),
        (20_000, 19_999)
    );
    // psql's \copy uses the same protocol; CSV this time.
    let csv_path = gw.dir.join("out.csv");
    let out = gw.psql(
        "alice",
        &db,
        &[
            "-c",
            &format!(
                "\\copy (SELECT id, body FROM c WHERE id < 3 ORDER BY id) TO '{}' CSV",
                csv_path.display()
            ),
        ],
        None,
    );
    stdout_ok(&out);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.starts_with("0,line 0 with tab\tand unicode é€\n"));
}

#[tokio::test]
async fn error_inside_transaction_then_recovery() {
    let (_pg, gw, db) = setup();
    let client = gw.connect("alice", &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE e (id int primary key)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO e VALUES (1);")
        .await
        .unwrap();
    let err = client
        .batch_execute("INSERT INTO e VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505");
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.code().unwrap().code(),
        "25P02",
        "transaction is aborted"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // An error in the middle of a result: rows already sent, then the error.
    let err = client
        .simple_query("SELECT 1/(5-g) FROM generate_series(1,10) g")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    let err = client
        .query("SELECT 1/(5-g) FROM generate_series(1,10) g", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    // The session still works for the extended and simple protocols.
    let v: i32 = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    let rows = client.simple_query("SELECT 'ok'").await.unwrap();
    let values: Vec<&str> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["ok"]);
}

#[tokio::test]
async fn notify_reaches_listener_through_gateway() {
    let (_pg, gw, db) = setup();
    let (listener, mut conn) =
        tokio_postgres::connect(&gw.conn_str("alice", &db), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let sender = gw.connect("alice", &db).await.unwrap();
    sender
        .batch_execute("NOTIFY jobs, 'payload-1'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification within 5 s")
        .unwrap();
    assert_eq!(got, ("jobs".to_string(), "payload-1".to_string()));
}

#[tokio::test]
async fn notices_are_relayed() {
    let (_pg, gw, db) = setup();
    let (client, mut conn) =
        tokio_postgres::connect(&gw.conn_str("alice", &db), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    client
        .batch_execute("DROP TABLE IF EXISTS never_there")
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(notice.contains("never_there"), "{notice}");
}

#[tokio::test]
async fn large_result_streams_completely() {
    let (_pg, gw, db) = setup();
    let client = gw.connect("alice", &db).await.unwrap();
    let stream = client
        .query_raw(
            "SELECT g, repeat('x', 100) FROM generate_series(1, 300000) g",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut count = 0i64;
    let mut sum = 0i64;
    while let Some(row) = stream.try_next().await.unwrap() {
        count += 1;
        sum += row.get::<_, i32>(0) as i64;
    }
    assert_eq!(count, 300_000);
    assert_eq!(sum, 300_000 * 300_001 / 2);
}
