//! Result rows through plugins as Arrow batches, compared byte for byte with what the server
//! sends on a direct connection: every common type, NULLs, empty and large values, in text and
//! binary format, over the simple and the extended protocol, row-limited portals and cursors.

use pgward_e2e::wire::{self as msg, run, Message};
use pgward_e2e::{
    plugin_wasm, plugins_dir, sqlstate, Gateway, GatewayOptions, Postgres, RawClient,
};
use std::path::Path;

const EVERY_TYPE: &str = r#"
CREATE TABLE every_type (
    id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric,
    t text, vc varchar(20), bc char(5), nm name, by bytea, d date, tm time, ts timestamp,
    tz timestamptz, iv interval, u uuid, j json, jb jsonb, ai int4[], at text[], other inet
);
INSERT INTO every_type VALUES
 (1, true, 1, 2, 3, 1.5, 2.25, 12345.6789, 'hello', 'v', 'ab', 'nm', '\x00ff', '2024-02-29',
  '12:34:56.789', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02',
  '1 year 2 mons 3 days 04:05:06', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}',
  '{"b": [1, 2]}', '{1,2,NULL}', '{"x y",NULL,"é"}', '10.0.0.1'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, false, -32768, -2147483648, -9223372036854775808, 'NaN', '-Infinity', 'NaN', '', '', '',
  '', '\x', '0044-03-15 BC', '00:00:00', 'infinity', '-infinity', '-1 days +02:00:00',
  '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}', '::1'),
 (4, true, 32767, 2147483647, 9223372036854775807, 3.4e38, 1e-300, -0.00000000000000000001,
  'Grüße 👋 日本語', 'ünïcødé', 'ß', 'ñame', decode(repeat('ab', 50000), 'hex'), '9999-12-31',
  '23:59:59.999999', '1900-01-01 00:00:00', '2038-01-19 03:14:07.5-05:30', '-178000000 years',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', '"big"', '[null, true]', '{-1}', '{""}', '1.2.3.4/32'),
 (5, false, 0, 0, 0, 0, -0, 100000000000000000000000000000, repeat('x', 100000), 'tab	quote"',
  'a''b', 'x', '\x5c', '2000-01-01', '24:00:00', '2000-01-01 00:00:00', '1970-01-01 00:00:00+00',
  '0', '01234567-89ab-cdef-0123-456789abcdef', '{"nested": {"k": [1, "two"]}}', 'null', '{}', '{"\\"}',
  '0.0.0.0');
CREATE FUNCTION noisy(v text, id int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF id = 2 THEN
        RAISE NOTICE 'computing row %', id;
    END IF;
    RETURN v;
END $$;
"#;

const TABLE_COLUMNS: &str = "id,b,i2,i4,i8,f4,f8,n,t,vc,bc,nm,by,d,tm,ts,tz,iv,u,j,jb,ai,at,other";

const SELECT_ALL: &str = "SELECT * FROM every_type ORDER BY id";

/// Message sequences that return table data, one per path.
fn scripts() -> Vec<(&'static str, Vec<Message>)> {
    use msg::*;
    let extended = |format| {
        vec![
            parse("", SELECT_ALL),
            bind("", "", format),
            describe_portal(""),
            execute("", 0),
            sync(),
        ]
    };
    vec![
        ("simple query", vec![query(SELECT_ALL)]),
        (
            // The server flushes row 1 together with the notice raised while computing row 2:
            // the notice must not overtake row 1, which waits in a batch.
            "notice in the middle of a result",
            vec![query(
                "SELECT id, noisy(t, id) AS t FROM every_type ORDER BY id",
            )],
        ),
        (
            "multi-statement query",
            vec![query(
                "SELECT 1 AS one; SELECT * FROM every_type ORDER BY id DESC; SELECT 'x' AS t",
            )],
        ),
        ("extended, text", extended(0)),
        ("extended, binary", extended(1)),
        (
            "prepared statement, Bind + Execute without Describe",
            vec![
                parse("s1", SELECT_ALL),
                sync(),
                bind("", "s1", 1),
                execute("", 0),
                bind("", "s1", 0),
                execute("", 0),
                sync(),
            ],
        ),
        (
            "row-limited portal",
            vec![
                query("BEGIN"),
                parse("", SELECT_ALL),
                bind("p1", "", 0),
                describe_portal("p1"),
                execute("p1", 2),
                execute("p1", 2),
                execute("p1", 0),
                sync(),
                bind("p2", "", 1),
                execute("p2", 3),
                sync(),
                execute("p2", 0),
                sync(),
                query("COMMIT"),
            ],
        ),
        (
            "cursor",
            vec![query(
                "BEGIN; DECLARE c CURSOR FOR SELECT * FROM every_type ORDER BY id; \
                 FETCH 2 FROM c; FETCH ALL FROM c; CLOSE c; COMMIT",
            )],
        ),
        ("COPY text", vec![query("COPY every_type TO STDOUT")]),
        (
            "COPY csv with header",
            vec![query("COPY every_type TO STDOUT (FORMAT csv, HEADER)")],
        ),
        (
            "COPY (query) binary",
            vec![query(
                "COPY (SELECT * FROM every_type ORDER BY id) TO STDOUT (FORMAT binary)",
            )],
        ),
        (
            "COPY through the extended protocol",
            vec![
                parse("", "COPY every_type TO STDOUT WITH CSV"),
                bind("", "", 0),
                execute("", 0),
                sync(),
            ],
        ),
        (
            "binary cursor",
            vec![query(
                "BEGIN; DECLARE c BINARY CURSOR FOR SELECT * FROM every_type ORDER BY id; \
                 FETCH ALL FROM c; COMMIT",
            )],
        ),
    ]
}

fn gateway(pg: &Postgres, dir: &Path) -> Gateway {
    Gateway::start(
        pg,
        GatewayOptions {
            trust: true,
            plugins_dir: Some(dir.to_path_buf()),
            // Small batches, so every script crosses batch boundaries. The server's notices
            // and errors as they are: these tests compare bytes with a direct connection
            // (`server_messages` has tests of its own in mask_pii.rs).
            plugins_extra: "batch_rows = 2\nserver_messages = \"pass\"\n".into(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn install_transform(dir: &Path, config: &str) {
    std::fs::write(dir.join("batch_transform.toml"), config).unwrap();
    std::fs::copy(
        plugin_wasm("batch_transform"),
        dir.join("batch_transform.wasm"),
    )
    .unwrap();
}

fn setup(prefix: &str, config: &str) -> (&'static Postgres, String, Gateway) {
    let pg = Postgres::shared();
    let db = pg.create_database(prefix).unwrap();
    pg.superuser_sql(&db, &format!("SET ROLE pgward_gw; {EVERY_TYPE}"))
        .unwrap();
    let dir = plugins_dir();
    install_transform(&dir, config);
    let gw = gateway(pg, &dir);
    (pg, db, gw)
}

fn gateway_client(gw: &Gateway, db: &str) -> RawClient {
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup("alice", db).unwrap();
    let hello = c.read_until_ready().unwrap();
    assert_eq!(hello.last().map(|m| m.0), Some(b'Z'), "{hello:?}");
    c
}

fn describe(messages: &[Message]) -> String {
    messages
        .iter()
        .map(|(t, b)| format!("{}:{}", *t as char, b.len()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The cells of a DataRow body.
fn cells(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
            at += 4;
            (len >= 0).then(|| {
                let v = body[at..at + len as usize].to_vec();
                at += len as usize;
                v
            })
        })
        .collect()
}

/// `v` with the letters of its UTF-8 parts upper-cased (binary array headers pass as they are).
fn upper_bytes(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for chunk in v.utf8_chunks() {
        out.extend_from_slice(chunk.valid().to_uppercase().as_bytes());
        out.extend_from_slice(chunk.invalid());
    }
    out
}

/// Position of columns `t` and `at` in the table.
const T_INDEX: usize = 8;
const AT_INDEX: usize = 22;

/// In CSV rows split naively at commas, fields after `jb` (which holds commas) shift.
fn csv_tail(name: &str, i: usize) -> bool {
    (name.contains("csv") || name.contains("extended protocol")) && i > T_INDEX
}

/// The fields of a CopyData row: binary tuples by their cells (after the file header),
/// text and CSV rows split at their delimiter (enough for the columns before `t`, which
/// hold no delimiter).
fn copy_fields(data: &[u8], delimiter: u8) -> Vec<Vec<u8>> {
    let mut data = data;
    if let Some(rest) = data.strip_prefix(b"PGCOPY\n\xff\r\n\0".as_slice()) {
        data = &rest[8..];
    }
    if data.len() >= 2 && (data == [0xff, 0xff] || !data.ends_with(b"\n")) {
        let n = i16::from_be_bytes([data[0], data[1]]);
        if n < 0 {
            return Vec::new();
        }
        return cells(data)
            .into_iter()
            .map(|c| c.unwrap_or_default())
            .collect();
    }
    let line = data.strip_suffix(b"\n").unwrap_or(data);
    line.split(|&b| b == delimiter)
        .map(<[u8]>::to_vec)
        .collect()
}

/// Column names of a RowDescription body.
fn column_names(body: &[u8]) -> Vec<String> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    (0..n)
        .map(|_| {
            let end = at + body[at..].iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8(body[at..end].to_vec()).unwrap();
            at = end + 1 + 18;
            name
        })
        .collect()
}

#[test]
fn identity_plugin_relays_every_type_byte_identical_on_every_path() {
    let (pg, db, gw) = setup("res_identity", "mode = \"identity\"\ncolumns = [\"*\"]\n");
    let mut direct = RawClient::connect_direct(pg, &db).unwrap();
    let mut through = gateway_client(&gw, &db);
    for (name, script) in scripts() {
        let expected = run(&mut direct, &script);
        let got = run(&mut through, &script);
        assert!(
            expected
                .iter()
                .filter(|m| matches!(m.0, b'D' | b'd'))
                .count()
                >= 5,
            "{name}: the script returns the table"
        );
        assert!(
            !expected.iter().any(|m| m.0 == b'E'),
            "{name}: the script itself fails: {}",
            describe(&expected)
        );
        if got != expected {
            panic!(
                "{name}: differs from a direct connection\n direct: {}\n pgward: {}",
                describe(&expected),
                describe(&got)
            );
        }
    }
    // The rows went through the plugin in batches, not the fast path.
    let log = gw.log();
    let batches = log.matches("result batch filtered").count();
    assert!(batches >= 20, "{batches} batches filtered:\n{log}");
    assert!(!log.contains("ok=false"), "no batch failed:\n{log}");
}

#[test]
fn upper_plugin_changes_exactly_its_column_on_every_path() {
    let (pg, db, gw) = setup("res_upper", "mode = \"upper\"\ncolumns = [\"t\", \"at\"]\n");
    let mut direct = RawClient::connect_direct(pg, &db).unwrap();
    let mut through = gateway_client(&gw, &db);
    for (name, script) in scripts() {
        let expected = run(&mut direct, &script);
        let got = run(&mut through, &script);
        assert_eq!(
            expected.len(),
            got.len(),
            "{name}: same messages\n direct: {}\n pgward: {}",
            describe(&expected),
            describe(&got)
        );
        // Until a RowDescription says otherwise (Bind + Execute alone gets none), the table's.
        let mut columns: Vec<String> = TABLE_COLUMNS.split(',').map(str::to_owned).collect();
        let mut changed = 0;
        for (e, g) in expected.iter().zip(&got) {
            assert_eq!(e.0, g.0, "{name}: same message types");
            match e.0 {
                b'T' => {
                    assert_eq!(e, g, "{name}: same columns");
                    columns = column_names(&e.1);
                }
                b'D' => {
                    let (ec, gc) = (cells(&e.1), cells(&g.1));
                    assert_eq!(ec.len(), gc.len());
                    for (i, (ev, gv)) in ec.iter().zip(&gc).enumerate() {
                        // `at` is a text[]: its elements are upper-cased (its text and binary
                        // forms hold no other letters here).
                        if columns.get(i).is_some_and(|c| c == "t" || c == "at") {
                            let upper = ev.as_deref().map(upper_bytes);
                            assert_eq!(gv, &upper, "{name}: column t upper-cased");
                            if ev != gv {
                                changed += 1;
                            }
                        } else {
                            assert_eq!(ev, gv, "{name}: column {i} untouched");
                        }
                    }
                }
                b'd' => {
                    let csv = name.contains("csv") || name.contains("extended protocol");
                    let delimiter = if csv { b',' } else { b'\t' };
                    let (ef, gf) = (copy_fields(&e.1, delimiter), copy_fields(&g.1, delimiter));
                    assert_eq!(ef.len(), gf.len(), "{name}: same COPY fields");
                    for (i, (ev, gv)) in ef.iter().zip(&gf).enumerate() {
                        let header = ef[0] == b"id";
                        if (i == T_INDEX || i == AT_INDEX) && !header && !csv_tail(name, i) {
                            assert_eq!(gv, &upper_bytes(ev), "{name}: COPY field upper-cased");
                            if ev != gv {
                                changed += 1;
                            }
                        } else if csv_tail(name, i) && !header {
                            // Shifted fields: only letters may differ (the `at` array).
                            assert_eq!(upper_bytes(ev), upper_bytes(gv), "{name}: COPY field {i}");
                        } else {
                            assert_eq!(ev, gv, "{name}: COPY field {i} untouched");
                        }
                    }
                }
                _ => assert_eq!(e, g, "{name}: other messages untouched"),
            }
        }
        assert!(changed > 0, "{name}: some value of t was changed");
    }
}

#[test]
fn a_plugin_that_breaks_the_batch_contract_ends_the_result_with_an_error() {
    for (mode, code, words) in [
        ("drop-row", "58000", "rows"),
        ("retype", "58000", "type"),
        ("abort", "42501", "refuses these rows"),
    ] {
        let (_pg, db, gw) = setup(
            &format!("res_{}", mode.replace('-', "_")),
            &format!("mode = \"{mode}\"\ncolumns = [\"t\", \"i4\"]\n"),
        );
        let mut c = gateway_client(&gw, &db);
        for (name, script) in scripts() {
            let got = run(&mut c, &script);
            let error = got
                .iter()
                .find(|m| m.0 == b'E')
                .unwrap_or_else(|| panic!("{mode}/{name}: no error in {}", describe(&got)));
            assert_eq!(sqlstate(&error.1), code, "{mode}/{name}");
            let text = String::from_utf8_lossy(&error.1);
            assert!(
                text.contains(words) || mode == "abort",
                "{mode}/{name}: {text}"
            );
            // No CommandComplete claims the refused result finished.
            let error_at = got.iter().position(|m| m.0 == b'E').unwrap();
            let first_data = got
                .iter()
                .position(|m| m.0 == b'T' && column_names(&m.1).contains(&"t".to_string()));
            if let Some(t) = first_data.filter(|&t| t < error_at) {
                assert!(
                    !got[t..error_at].iter().any(|m| m.0 == b'C'),
                    "{mode}/{name}: result looked complete: {}",
                    describe(&got)
                );
            }
            // The session goes on.
            c.query("ROLLBACK").unwrap();
            c.read_until_ready().unwrap();
            let after = run(&mut c, &[msg::query("SELECT 41 + 1 AS answer")]);
            assert!(
                after
                    .iter()
                    .any(|m| m.0 == b'D' && cells(&m.1)[0].as_deref() == Some(&b"42"[..])),
                "{mode}/{name}: session still works: {}",
                describe(&after)
            );
        }
    }
}

#[test]
fn a_copy_the_gateway_cannot_rewrite_is_refused_only_when_a_plugin_reads_it() {
    let (_pg, db, gw) = setup("res_copy", "mode = \"upper\"\ncolumns = [\"t\"]\n");
    let mut c = gateway_client(&gw, &db);
    // FORCE_QUOTE of listed columns cannot be reproduced for changed rows: refused, no data.
    let got = run(
        &mut c,
        &[msg::query(
            "COPY every_type (id, t) TO STDOUT (FORMAT csv, FORCE_QUOTE (t))",
        )],
    );
    let error = got.iter().find(|m| m.0 == b'E').expect("refused");
    assert_eq!(sqlstate(&error.1), "0A000");
    assert!(
        !got.iter().any(|m| m.0 == b'd'),
        "no data: {}",
        describe(&got)
    );
    // The same COPY of columns no plugin reads is relayed as it is.
    let got = run(
        &mut c,
        &[msg::query(
            "COPY every_type (id, vc) TO STDOUT (FORMAT csv, FORCE_QUOTE (vc))",
        )],
    );
    assert!(!got.iter().any(|m| m.0 == b'E'), "{}", describe(&got));
    assert_eq!(got.iter().filter(|m| m.0 == b'd').count(), 5);
    // COPY FROM STDIN still works.
    c.query("COPY every_type (id, t) FROM STDIN").unwrap();
    let m = c.read_message().unwrap().unwrap();
    assert_eq!(m.0, b'G', "CopyInResponse");
    c.send(b'd', b"100\tcopied\n").unwrap();
    c.send(b'c', b"").unwrap();
    let done = c.read_until_ready().unwrap();
    assert!(done.iter().any(|m| m.0 == b'C'), "{}", describe(&done));
}

#[test]
fn a_plugin_that_asks_for_nothing_leaves_results_untouched() {
    let (pg, db, gw) = setup(
        "res_none",
        "mode = \"upper\"\ncolumns = [\"no_such_column\"]\n",
    );
    let mut direct = RawClient::connect_direct(pg, &db).unwrap();
    let mut through = gateway_client(&gw, &db);
    for (name, script) in scripts() {
        assert_eq!(
            run(&mut direct, &script),
            run(&mut through, &script),
            "{name}"
        );
    }
}

/// Values the contract cannot hand a plugin faithfully (multi-dimensional arrays, arrays with
/// another lower bound, text dates under a non-ISO DateStyle) stop the column with 0A000, in
/// text and binary format alike; nothing of the result leaks and the session goes on.
#[test]
fn values_the_gateway_cannot_convert_are_refused_with_0a000_in_either_format() {
    let (_pg, db, gw) = setup(
        "res_unconverted",
        "mode = \"identity\"\ncolumns = [\"*\"]\n",
    );
    let mut c = gateway_client(&gw, &db);
    let refused = |got: &[Message], what: &str| {
        let error = got.iter().find(|m| m.0 == b'E');
        let error = error.unwrap_or_else(|| panic!("{what}: not refused: {}", describe(got)));
        assert_eq!(sqlstate(&error.1), "0A000", "{what}");
        assert!(
            !got.iter().any(|m| m.0 == b'D'),
            "{what}: {}",
            describe(got)
        );
    };
    for sql in [
        "SELECT '{{1,2},{3,4}}'::int[] AS a",
        "SELECT '[0:1]={7,8}'::int[] AS a",
    ] {
        refused(&run(&mut c, &[msg::query(sql)]), sql);
        let binary = [
            msg::parse("", sql),
            msg::bind("", "", 1),
            msg::describe_portal(""),
            msg::execute("", 0),
            msg::sync(),
        ];
        refused(&run(&mut c, &binary), &format!("{sql} (binary)"));
    }
    let got = run(&mut c, &[msg::query("SET DateStyle = 'German'")]);
    assert!(got.iter().any(|m| m.0 == b'C'), "{}", describe(&got));
    refused(
        &run(&mut c, &[msg::query("SELECT DATE '2024-01-31' AS d")]),
        "a German date",
    );
    // The session goes on: ISO dates convert again.
    run(&mut c, &[msg::query("SET DateStyle = 'ISO'")]);
    let got = run(&mut c, &[msg::query("SELECT DATE '2024-01-31' AS d")]);
    assert!(
        got.iter()
            .any(|m| m.0 == b'D' && cells(&m.1)[0].as_deref() == Some(&b"2024-01-31"[..])),
        "{}",
        describe(&got)
    );
}

/// What a client is told about a refused result and what the database keeps agree: nothing
/// after the refusal in the same string or pipeline commits, and a refusal inside a
/// transaction block fails the block. Every case that is refused here committed its write
/// before the commit guard (the server ran the rest of the string or pipeline regardless).
#[test]
fn nothing_after_a_refused_result_commits() {
    let pg = Postgres::shared();
    let db = pg.create_database("res_guard").unwrap();
    pg.superuser_sql(
        &db,
        "SET ROLE pgward_gw; CREATE TABLE people (id int, secret text); \
         INSERT INTO people VALUES (1, 'hunter2'); CREATE TABLE log (x int);",
    )
    .unwrap();
    let dir = plugins_dir();
    install_transform(&dir, "mode = \"abort\"\ncolumns = [\"secret\"]\n");
    let gw = gateway(pg, &dir);
    let mut c = gateway_client(&gw, &db);
    let logged = |x: i32| -> bool {
        let out = pg
            .superuser_sql(&db, &format!("SELECT count(*) FROM log WHERE x = {x}"))
            .unwrap();
        out.trim() == "1"
    };
    let tags = |got: &[Message]| -> String {
        got.iter()
            .map(|(t, b)| match t {
                b'E' => format!("E{}", sqlstate(b)),
                b'Z' => format!("Z{}", b[0] as char),
                b'C' => format!("C{}", String::from_utf8_lossy(&b[..b.len() - 1])),
                t => (*t as char).to_string(),
            })
            .filter(|t| !matches!(t.as_str(), "1" | "2" | "T" | "D" | "n" | "t" | "N"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    use msg::*;
    let statement = |sql: &str| vec![parse("", sql), bind("", "", 0), execute("", 0)];

    // Outside a transaction block: a write after the refused read is rolled back, and the
    // same string whose result is not refused commits.
    let got = run(
        &mut c,
        &[query(
            "SELECT secret FROM people; INSERT INTO log VALUES (1)",
        )],
    );
    assert_eq!(tags(&got), "E42501 ZI");
    assert!(!logged(1), "the write after the refused result committed");
    let got = run(
        &mut c,
        &[query("SELECT id FROM people; INSERT INTO log VALUES (2)")],
    );
    assert_eq!(tags(&got), "CSELECT 1 CINSERT 0 1 ZI");
    assert!(logged(2));
    // A write whose own result is refused does not commit either.
    let got = run(
        &mut c,
        &[query("INSERT INTO log VALUES (3) RETURNING x AS secret")],
    );
    assert_eq!(tags(&got), "E42501 ZI");
    assert!(!logged(3));

    // In a block, the refusal fails the block as an error would.
    let got = run(
        &mut c,
        &[
            query("BEGIN"),
            query("SELECT secret FROM people"),
            query("INSERT INTO log VALUES (4)"),
            query("COMMIT"),
        ],
    );
    assert_eq!(tags(&got), "CBEGIN ZT E42501 ZE E25P02 ZE CROLLBACK ZI");
    assert!(!logged(4));

    // An extended pipeline: the write after the refused Execute is rolled back at its Sync.
    let mut script = statement("SELECT secret FROM people");
    script.extend(statement("INSERT INTO log VALUES (5)"));
    script.push(sync());
    let got = run(&mut c, &script);
    assert_eq!(tags(&got), "E42501 ZI");
    assert!(!logged(5));
    let mut script = statement("SELECT id FROM people");
    script.extend(statement("INSERT INTO log VALUES (6)"));
    script.push(sync());
    let got = run(&mut c, &script);
    assert_eq!(tags(&got), "CSELECT 1 CINSERT 0 1 ZI");
    assert!(logged(6));

    // Pipelined through a block: everything after the refusal fails, the COMMIT rolls back.
    let mut script = vec![query("BEGIN")];
    script.extend(statement("SELECT secret FROM people"));
    script.push(sync());
    script.extend(statement("INSERT INTO log VALUES (7)"));
    script.push(sync());
    script.push(query("COMMIT"));
    let got = run(&mut c, &script);
    assert_eq!(tags(&got), "CBEGIN ZT E42501 ZE E25P02 ZE CROLLBACK ZI");
    assert!(!logged(7));

    // A COMMIT inside a pipeline after the refused result does not run.
    let mut script = vec![query("BEGIN")];
    script.extend(statement("INSERT INTO log VALUES (8)"));
    script.extend(statement("SELECT secret FROM people"));
    script.extend(statement("COMMIT"));
    script.push(sync());
    let got = run(&mut c, &script);
    assert_eq!(tags(&got), "CBEGIN ZT CINSERT 0 1 E42501 ZE");
    let got = run(&mut c, &[query("ROLLBACK")]);
    assert_eq!(tags(&got), "CROLLBACK ZI");
    assert!(!logged(8));

    // A string that would commit after a result is refused before it runs; one that commits
    // nothing it did runs.
    let got = run(
        &mut c,
        &[query(
            "SELECT id FROM people; INSERT INTO log VALUES (9); COMMIT",
        )],
    );
    assert_eq!(tags(&got), "E0A000 ZI");
    assert!(!logged(9));
    let got = run(&mut c, &[query("BEGIN; SELECT secret FROM people; COMMIT")]);
    assert_eq!(tags(&got), "CBEGIN E42501 ZI");
    let got = run(&mut c, &[query("BEGIN; SELECT id FROM people; COMMIT")]);
    assert_eq!(tags(&got), "CBEGIN CSELECT 1 CCOMMIT ZI");

    // The session is as the client believes: idle, and working.
    let got = run(&mut c, &[query("INSERT INTO log VALUES (10)")]);
    assert_eq!(tags(&got), "CINSERT 0 1 ZI");
    assert!(logged(10));
}

/// A COPY TO STDOUT is filtered by the columns the session itself reads: a temporary table or
/// a `search_path` of the session's own that shadows a table of the same name is described as
/// the session sees it, not as the gateway's catalog connection would.
#[test]
fn a_copy_is_described_as_the_session_sees_its_table() {
    let pg = Postgres::shared();
    let db = pg.create_database("res_copy_names").unwrap();
    pg.superuser_sql(
        &db,
        "SET ROLE pgward_gw; CREATE TABLE items (id int, label text); \
         INSERT INTO items VALUES (1, 'label'); CREATE SCHEMA s2; \
         CREATE TABLE s2.items (id int, name text); INSERT INTO s2.items VALUES (2, 'schema');",
    )
    .unwrap();
    let dir = plugins_dir();
    install_transform(&dir, "mode = \"upper\"\ncolumns = [\"name\"]\n");
    let gw = gateway(pg, &dir);
    let copied = |got: &[Message]| -> Result<String, String> {
        if let Some(e) = got.iter().find(|m| m.0 == b'E') {
            return Err(sqlstate(&e.1));
        }
        Ok(got
            .iter()
            .filter(|m| m.0 == b'd')
            .map(|m| String::from_utf8_lossy(&m.1).into_owned())
            .collect())
    };
    use msg::*;

    // Before the session changes anything, both protocols read the table the catalog sees.
    let mut c = gateway_client(&gw, &db);
    assert_eq!(
        copied(&run(&mut c, &[query("COPY items TO STDOUT")])),
        Ok("1\tlabel\n".into())
    );

    // A temporary table shadows `items`: its `name` column is the plugin's.
    let got = run(
        &mut c,
        &[query(
            "CREATE TEMP TABLE items (id int, name text); INSERT INTO items VALUES (3, 'temp')",
        )],
    );
    assert!(got.iter().all(|m| m.0 != b'E'), "{}", describe(&got));
    assert_eq!(
        copied(&run(&mut c, &[query("COPY items TO STDOUT")])),
        Ok("3\tTEMP\n".into())
    );
    assert_eq!(
        copied(&run(
            &mut c,
            &[query("COPY (SELECT name FROM items) TO STDOUT")]
        )),
        Ok("TEMP\n".into())
    );
    // Through the extended protocol the gateway cannot ask the session first: an unqualified
    // name is refused, a qualified one is read.
    let extended = |sql: &str| vec![parse("", sql), bind("", "", 0), execute("", 0), sync()];
    assert_eq!(
        copied(&run(&mut c, &extended("COPY items TO STDOUT"))),
        Err("0A000".into())
    );
    assert_eq!(
        copied(&run(&mut c, &extended("COPY public.items TO STDOUT"))),
        Ok("1\tlabel\n".into())
    );
    // In one string after the statement that changes the names, the COPY is refused.
    assert_eq!(
        copied(&run(
            &mut c,
            &[query("DROP TABLE pg_temp.items; COPY items TO STDOUT")]
        )),
        Err("0A000".into())
    );

    // A search_path of the session's own.
    let mut c = gateway_client(&gw, &db);
    run(&mut c, &[query("SET search_path = s2, public")]);
    assert_eq!(
        copied(&run(&mut c, &[query("COPY items TO STDOUT")])),
        Ok("2\tSCHEMA\n".into())
    );
    // Inside a transaction block, and after a failed statement, the session's answer holds.
    let got = run(
        &mut c,
        &[
            query("BEGIN"),
            query("COPY items (name) TO STDOUT"),
            query("SELECT 1/0"),
            query("COPY items TO STDOUT"),
            query("ROLLBACK"),
        ],
    );
    let codes: Vec<String> = got
        .iter()
        .filter(|m| m.0 == b'E')
        .map(|m| sqlstate(&m.1))
        .collect();
    assert_eq!(codes, ["22012", "25P02"], "{}", describe(&got));
    assert!(
        got.iter().any(|m| m.0 == b'd' && m.1 == b"SCHEMA\n"),
        "{}",
        describe(&got)
    );
    assert_eq!(
        copied(&run(&mut c, &[query("SELECT 1")])),
        Ok(String::new())
    );
}
