//! The mask-pii plugin in the real gateway: a corpus of statements that try to get classified
//! values out of a seeded table — aliases, expressions, casts, subqueries, CTEs, unions, JSON
//! and array aggregates, whole rows, views, cursors, prepared statements, row-limited portals,
//! COPY in every format, text and binary results, psql and tokio-postgres. For each, no
//! cleartext value of the table appears in anything the masked identity received (rows, COPY
//! data, errors, notices), and an exempt identity sees the cleartext.

use pgward_e2e::wire::{self as msg, run, Message};
use pgward_e2e::{
    plugin_wasm, plugins_dir, sqlstate, stdout_ok, Gateway, GatewayOptions, Postgres, RawClient,
    TestUser,
};

const SEED: &str = r#"
CREATE TABLE customers (
    id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, phone text, ssn text,
    card text, notes text
);
INSERT INTO customers VALUES
 (1, 'Ada Lovelace', 'ada@example.com', '+1 415 555 0100', '078-05-1120', '4111 1111 1111 1111', 'prefers email'),
 (2, 'Alan Turing', 'alan@example.org', '+44 20 7946 0958', '219-09-9999', '5500 0000 0000 0004', 'card on file'),
 (3, 'Grace Hopper', 'grace@example.net', '+1 212 555 0199', '457-55-5462', '3782 822463 10005', 'call back');
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total numeric);
INSERT INTO orders VALUES (1, 1, 42.00), (2, 2, 7.50);
CREATE VIEW customer_contacts AS SELECT id, name, email, phone FROM customers;
CREATE VIEW customer_digest AS SELECT id, upper(email) AS e, ssn || '' AS s, lower(name) AS n FROM customers;
ANALYZE customers;
"#;

/// Every classified value of the seeded table, in the forms a query could turn it into.
fn cleartext() -> Vec<String> {
    let mut v = Vec::new();
    for s in [
        "Ada Lovelace",
        "Alan Turing",
        "Grace Hopper",
        "ada@example.com",
        "alan@example.org",
        "grace@example.net",
        "+1 415 555 0100",
        "+44 20 7946 0958",
        "+1 212 555 0199",
        "078-05-1120",
        "219-09-9999",
        "457-55-5462",
        "4111 1111 1111 1111",
        "5500 0000 0000 0004",
        "3782 822463 10005",
    ] {
        v.push(s.to_lowercase());
        // Digits alone: `replace(card, ' ', '')`, an SSN as a number.
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 9 {
            v.push(digits);
        }
    }
    // Parts that identify a person on their own.
    v.extend(["lovelace", "turing", "hopper"].map(str::to_owned));
    v
}

/// The cleartext values found in `received` (compared ignoring case).
fn leaked(received: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(received).to_lowercase();
    cleartext()
        .into_iter()
        .filter(|c| text.contains(c.as_str()))
        .collect()
}

/// What the masked identity should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Rows (or COPY data), masked.
    Masked,
    /// An error with SQLSTATE 42501: the statement or the result was refused.
    Refused,
}

use Outcome::{Masked, Refused};

fn extended(sql: &str, format: i16) -> Vec<Message> {
    use msg::*;
    vec![
        parse("", sql),
        bind("", "", format),
        describe_portal(""),
        execute("", 0),
        sync(),
    ]
}

fn simple(sql: &str) -> Vec<Message> {
    vec![msg::query(sql)]
}

/// The exfiltration corpus: label, messages, what the masked identity gets.
fn corpus() -> Vec<(&'static str, Vec<Message>, Outcome)> {
    use msg::*;
    vec![
        ("plain select", simple("SELECT * FROM customers ORDER BY id"), Masked),
        (
            "aliases",
            simple("SELECT name AS n, email AS \"E\", ssn s, c.card AS \"card number\" FROM customers c"),
            Masked,
        ),
        (
            "casts that keep the value",
            simple("SELECT email::text, ssn::varchar, phone::bpchar, card::character varying FROM customers"),
            Masked,
        ),
        (
            "expressions",
            simple("SELECT lower(email), upper(name), email || '', ssn || ' ', initcap(name) FROM customers"),
            Masked,
        ),
        (
            "concatenation of classes",
            simple("SELECT name || ' <' || email || '> ' || card FROM customers"),
            Masked,
        ),
        ("coalesce and case", simple("SELECT coalesce(phone, email), CASE WHEN id = 1 THEN ssn ELSE email END FROM customers"), Masked),
        ("format", simple("SELECT format('%s / %s', name, card) FROM customers"), Masked),
        ("subquery in FROM", simple("SELECT x, y FROM (SELECT email AS x, ssn AS y FROM customers) s"), Masked),
        ("scalar subquery", simple("SELECT (SELECT ssn FROM customers WHERE id = 1), (SELECT max(name) FROM customers)"), Masked),
        ("CTE", simple("WITH c AS (SELECT name, ssn, card FROM customers) SELECT * FROM c"), Masked),
        ("union with free text", simple("SELECT email FROM customers UNION ALL SELECT notes FROM customers"), Masked),
        ("union with a constant", simple("SELECT name FROM customers UNION SELECT 'nobody'"), Masked),
        ("string_agg", simple("SELECT string_agg(email, ','), string_agg(name, ';') FROM customers"), Masked),
        ("array_agg, text", simple("SELECT array_agg(ssn), array_agg(name ORDER BY id) FROM customers"), Masked),
        ("array_agg, binary", extended("SELECT array_agg(ssn), array_agg(email) FROM customers", 1), Masked),
        ("unnest of an array", simple("SELECT x FROM customers, unnest(ARRAY[email, ssn, phone]) x"), Masked),
        ("jsonb_build_object", simple("SELECT jsonb_build_object('e', email, 's', ssn, 'c', card) FROM customers"), Masked),
        ("json_agg of classified columns", simple("SELECT json_agg(json_build_array(email, phone)) FROM customers"), Masked),
        ("free text mixed with a column", simple("SELECT notes || ' / ' || email || ' / ' || ssn FROM customers"), Masked),
        ("group by a hashed value", simple("SELECT email, count(*) FROM customers GROUP BY email"), Masked),
        ("window function", simple("SELECT ssn, row_number() OVER (ORDER BY ssn) FROM customers"), Masked),
        ("view", simple("SELECT * FROM customer_contacts"), Masked),
        ("view over expressions", simple("SELECT * FROM customer_digest"), Masked),
        (
            "RETURNING",
            simple("UPDATE customers SET notes = 'seen' WHERE id = 3 RETURNING name, email, ssn"),
            Masked,
        ),
        ("row_to_json of a whole row", simple("SELECT row_to_json(c) FROM customers c"), Refused),
        ("json_agg of whole rows", simple("SELECT json_agg(c) FROM customers c"), Refused),
        ("a whole row", simple("SELECT c FROM customers c"), Refused),
        ("a field of a whole row as JSON", simple("SELECT to_jsonb(c) ->> 'name' FROM customers c"), Refused),
        ("substr", simple("SELECT substr(ssn, 1, 7), substr(name, 1, 4), email FROM customers"), Refused),
        ("left and split_part", simple("SELECT left(email, 5), split_part(email, '@', 1), email FROM customers"), Refused),
        ("encode", simple("SELECT encode(convert_to(name, 'UTF8'), 'base64'), name FROM customers"), Refused),
        ("replace to strip separators", simple("SELECT replace(card, ' ', '') FROM customers"), Refused),
        ("truncating cast", simple("SELECT email::varchar(5), name::char(4), email FROM customers"), Refused),
        ("cast that fails with the value", simple("SELECT ssn::int FROM customers"), Refused),
        (
            "hex through bytea",
            simple("SELECT (notes || email)::bytea::text, email FROM customers"),
            Refused,
        ),
        ("name cut at 63 bytes", simple("SELECT c::text::name, email FROM customers c"), Refused),
        ("name as a regclass", simple("SELECT name::regclass FROM customers"), Refused),
        ("statistics catalog", simple("SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'"), Refused),
        (
            "DO block with a notice",
            simple("DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(name || ssn, ',') FROM customers); END $$"),
            Refused,
        ),
        (
            "copy into a table, then read it",
            simple("CREATE TEMP TABLE stolen AS SELECT * FROM customers; SELECT * FROM stolen"),
            Refused,
        ),
        ("COPY text", simple("COPY customers TO STDOUT"), Masked),
        ("COPY csv with header", simple("COPY (SELECT name, email, ssn FROM customers) TO STDOUT WITH (FORMAT csv, HEADER)"), Masked),
        ("COPY binary", simple("COPY customers TO STDOUT (FORMAT binary)"), Masked),
        (
            "COPY over the extended protocol",
            vec![parse("", "COPY customers TO STDOUT WITH CSV"), bind("", "", 0), execute("", 0), sync()],
            Masked,
        ),
        (
            "cursor",
            simple("BEGIN; DECLARE k CURSOR FOR SELECT * FROM customers ORDER BY id; FETCH 1 FROM k; FETCH ALL FROM k; COMMIT"),
            Masked,
        ),
        (
            "binary cursor",
            simple("BEGIN; DECLARE k BINARY CURSOR FOR SELECT name, email, ssn FROM customers; FETCH ALL FROM k; COMMIT"),
            Masked,
        ),
        (
            "cursor over an expression",
            simple("BEGIN; DECLARE k CURSOR FOR SELECT upper(name) || ssn FROM customers; FETCH ALL FROM k; COMMIT"),
            Refused,
        ),
        (
            "SQL PREPARE and EXECUTE",
            simple("PREPARE q AS SELECT name, email, ssn FROM customers; EXECUTE q; DEALLOCATE q"),
            Masked,
        ),
        ("extended, text", extended("SELECT name, email, phone, ssn, card FROM customers", 0), Masked),
        ("extended, binary", extended("SELECT name, email, phone, ssn, card FROM customers", 1), Masked),
        (
            "row-limited portal",
            vec![
                query("BEGIN"),
                parse("", "SELECT name, email, ssn FROM customers ORDER BY id"),
                bind("p", "", 1),
                describe_portal("p"),
                execute("p", 1),
                execute("p", 1),
                execute("p", 0),
                sync(),
                query("COMMIT"),
            ],
            Masked,
        ),
        (
            "prepared statement, Bind + Execute without Describe",
            vec![
                parse("s1", "SELECT email, ssn FROM customers"),
                sync(),
                bind("", "s1", 1),
                execute("", 0),
                bind("", "s1", 0),
                execute("", 0),
                sync(),
            ],
            Masked,
        ),
    ]
}

/// mask_pii.toml for the test: the documented example (`plugins/mask-pii/mask_pii.toml`).
fn config() -> &'static str {
    include_str!("../../plugins/mask-pii/mask_pii.toml")
}

fn setup(prefix: &str) -> (String, Gateway) {
    setup_with(prefix, config(), "")
}

/// [`setup`] with another mask-pii config and more `[plugins]` keys.
fn setup_with(prefix: &str, mask_config: &str, plugins_extra: &str) -> (String, Gateway) {
    let (db, gw, _) = setup_in(prefix, mask_config, plugins_extra);
    (db, gw)
}

/// [`setup_with`], and the gateway's plugins directory.
fn setup_in(
    prefix: &str,
    mask_config: &str,
    plugins_extra: &str,
) -> (String, Gateway, std::path::PathBuf) {
    let pg = Postgres::shared();
    let db = pg.create_database(prefix).unwrap();
    pg.superuser_sql(&db, &format!("SET ROLE pgward_gw; {SEED}"))
        .unwrap();
    let dir = plugins_dir();
    std::fs::write(dir.join("mask_pii.toml"), mask_config).unwrap();
    let tmp = dir.join(".mask_pii.wasm.tmp");
    std::fs::copy(plugin_wasm("mask_pii"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("mask_pii.wasm")).unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            trust: true,
            users: vec![
                TestUser::new("alice", "alice-pw", &["analysts"]),
                TestUser::new("sam", "sam-pw", &["support-lead"]),
            ],
            plugins_dir: Some(dir.clone()),
            // Small batches: every result crosses batch boundaries.
            plugins_extra: format!("batch_rows = 2\n{plugins_extra}"),
            admin: true,
            ..Default::default()
        },
    )
    .unwrap();
    (db, gw, dir)
}

fn client(gw: &Gateway, user: &str, db: &str) -> RawClient {
    let mut c = RawClient::connect(gw.port).unwrap();
    c.startup(user, db).unwrap();
    let hello = c.read_until_ready().unwrap();
    assert_eq!(hello.last().map(|m| m.0), Some(b'Z'), "{hello:?}");
    c
}

fn received(messages: &[Message]) -> Vec<u8> {
    messages
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .collect()
}

/// A server notice reduced by `plugins.server_messages`, which applies to every identity
/// while a result plugin is loaded, exempt ones included.
fn notice_withheld(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| m.0 == b'N' && String::from_utf8_lossy(&m.1).contains("withheld"))
}

fn errors(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.0 == b'E')
        .map(|m| format!("{} {}", sqlstate(&m.1), String::from_utf8_lossy(&m.1)))
        .collect()
}

#[test]
fn no_cleartext_reaches_a_masked_identity_and_an_exempt_one_sees_it() {
    let (db, gw) = setup("mask_corpus");
    let corpus = corpus();
    assert!(corpus.len() >= 25);
    let mut failures = Vec::new();
    let mut failing_everywhere = 0;
    for (label, script, outcome) in &corpus {
        // A fresh session per statement, so one refusal cannot shape the next.
        let mut alice = client(&gw, "alice", &db);
        let got = run(&mut alice, script);
        let leaks = leaked(&received(&got));
        if !leaks.is_empty() {
            failures.push(format!("{label}: cleartext reached alice: {leaks:?}"));
        }
        let errs = errors(&got);
        let rows = got.iter().filter(|m| matches!(m.0, b'D' | b'd')).count();
        match outcome {
            Masked if !errs.is_empty() || rows == 0 => failures.push(format!(
                "{label}: expected masked rows, got {rows} rows and errors {errs:?}"
            )),
            Refused if !errs.iter().any(|e| e.starts_with("42501")) => failures.push(format!(
                "{label}: expected a 42501 refusal, got {rows} rows and errors {errs:?}"
            )),
            _ => {}
        }
        // The gateway stays usable after a refused result.
        let after = run(&mut alice, &simple("SELECT 1"));
        if !errors(&after).is_empty() {
            failures.push(format!(
                "{label}: the session is broken afterwards: {:?}",
                errors(&after)
            ));
        }

        let mut sam = client(&gw, "sam", &db);
        let got = run(&mut sam, script);
        let server_error = errors(&got).iter().any(|e| !e.starts_with("42501"));
        if server_error {
            // The statement fails in PostgreSQL itself (`name::regclass`): nobody gets values.
            failing_everywhere += 1;
        } else if leaked(&received(&got)).is_empty() && !notice_withheld(&got) {
            failures.push(format!(
                "{label}: the exempt identity did not see cleartext (errors {:?})",
                errors(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        failing_everywhere <= 2,
        "{failing_everywhere} statements of the corpus fail for everyone"
    );
}

#[test]
fn masked_values_are_the_documented_ones_and_hashes_join() {
    let (db, gw) = setup("mask_values");
    let mut alice = client(&gw, "alice", &db);
    let got = run(
        &mut alice,
        &simple("SELECT name, email, phone, ssn, card FROM customers WHERE id = 1"),
    );
    let row = got.iter().find(|m| m.0 == b'D').expect("a row");
    let text = String::from_utf8_lossy(&row.1);
    for masked in [
        "[name]",
        "9d3c5cca624067c1",
        "+* *** *** 0100",
        "[redacted]",
        "**** **** **** 1111",
    ] {
        assert!(text.contains(masked), "{masked} in {text:?}");
    }
    // The keyed hash is the same in every query, so a join on it works.
    let got = run(
        &mut alice,
        &simple(
            "SELECT a.email FROM customers a JOIN customers b ON a.email = b.email WHERE a.id = 1",
        ),
    );
    assert!(String::from_utf8_lossy(&received(&got)).contains("9d3c5cca624067c1"));
}

#[tokio::test]
async fn tokio_postgres_in_text_and_binary_gets_masked_values() {
    let (db, gw) = setup("mask_tokio");
    let alice = gw.connect("alice", &db).await.unwrap();
    // Binary results (a prepared statement).
    let rows = alice
        .query(
            "SELECT name, email, ssn, card, phone FROM customers ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for r in &rows {
        for i in 0..5 {
            let v: Option<String> = r.get(i);
            seen.extend(v);
        }
    }
    assert_eq!(rows.len(), 3);
    assert!(leaked(seen.join(" ").as_bytes()).is_empty(), "{seen:?}");
    // Text results (the simple protocol).
    let messages = alice
        .simple_query(
            "SELECT name, email, ssn FROM customers; SELECT string_agg(email, ',') FROM customers",
        )
        .await
        .unwrap();
    let mut text = String::new();
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            for i in 0..r.len() {
                text.push_str(r.get(i).unwrap_or(""));
            }
        }
    }
    assert!(!text.is_empty());
    assert!(leaked(text.as_bytes()).is_empty(), "{text}");
    // A refusal reaches tokio-postgres as a server error.
    let err = alice
        .query("SELECT row_to_json(c) FROM customers c", &[])
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42501"));

    let sam = gw.connect("sam", &db).await.unwrap();
    let email: String = sam
        .query_one("SELECT email FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(email, "ada@example.com");
}

#[test]
fn psql_output_and_copy_are_masked() {
    let (db, gw) = setup("mask_psql");
    for args in [
        vec!["-c", "SELECT * FROM customers"],
        vec!["-c", "\\copy customers to stdout"],
        vec![
            "-c",
            "\\copy (SELECT name, email FROM customers) to stdout with (format csv)",
        ],
        vec![
            "-c",
            "SELECT c.email, o.total FROM customers c JOIN orders o ON o.customer_id = c.id",
        ],
    ] {
        let out = gw.psql("alice", &db, &args, None);
        let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        assert!(
            leaked(&all).is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&all)
        );
        let exempt = stdout_ok(&gw.psql("sam", &db, &args, None));
        assert!(
            !leaked(exempt.as_bytes()).is_empty(),
            "{args:?}: sam sees cleartext"
        );
    }
}

/// Lineage comes from the catalog and is cached; DDL through the gateway drops the cache, so
/// a renamed column is judged by its new name (here: no longer classified, and no detector
/// recognises names), in a session that had already seen the old one.
#[test]
fn lineage_follows_ddl_run_through_the_gateway() {
    let (db, gw) = setup("mask_ddl");
    let mut alice = client(&gw, "alice", &db);
    let names = |c: &mut RawClient, sql: &str| -> Vec<Option<Vec<u8>>> {
        let got = run(c, &simple(sql));
        assert!(errors(&got).is_empty(), "{sql}: {:?}", errors(&got));
        got.iter()
            .filter(|m| m.0 == b'D')
            .map(|m| {
                let body = &m.1;
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                (len >= 0).then(|| body[6..6 + len as usize].to_vec())
            })
            .collect()
    };
    let before = names(&mut alice, "SELECT name FROM customers ORDER BY id");
    assert_eq!(
        before[0].as_deref(),
        Some(&b"[name]"[..]),
        "masked by lineage"
    );
    // The exempt identity renames the column through the gateway.
    let mut sam = client(&gw, "sam", &db);
    let got = run(
        &mut sam,
        &simple("ALTER TABLE customers RENAME COLUMN name TO full_name"),
    );
    assert!(errors(&got).is_empty(), "{:?}", errors(&got));
    let after = names(&mut alice, "SELECT full_name FROM customers ORDER BY id");
    assert_eq!(
        after[0].as_deref(),
        Some(&b"Ada Lovelace"[..]),
        "public.customers.full_name is not classified"
    );
}

/// A prepared statement is described once (tokio-postgres describes it when preparing, then
/// sends Bind + Execute alone; a raw client Binds with text and binary results in turn):
/// every later execution is masked from that description, and so is it after DDL through
/// the gateway moved its columns (`email` dropped and added back: `SELECT *` reads column 3
/// now, and the gateway describes the statement again — the relay's unit tests show when).
/// mask-pii also matches the column's name, so this does not show the new description is
/// needed; it shows the executions without a Describe of their own stay masked.
#[tokio::test]
async fn a_prepared_statement_is_masked_from_one_description_until_ddl_changes_it() {
    let (db, gw) = setup("mask_described");
    let sam = gw.connect("sam", &db).await.unwrap();
    sam.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, email text); \
         INSERT INTO people VALUES (1, 'first-secret-value'), (2, 'second-secret-value')",
    )
    .await
    .unwrap();
    let alice = gw.connect("alice", &db).await.unwrap();
    let by_id = alice
        .prepare("SELECT * FROM people WHERE id = $1")
        .await
        .unwrap();
    let email = |row: &tokio_postgres::Row| row.get::<_, String>(1);
    let added = || gw.metric("pgward_relay_describes_added_total", &[]);
    let before = added();
    for round in 0..20 {
        let id = 1 + round % 2;
        let row = alice.query_one(&by_id, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), id);
        assert!(
            !email(&row).contains("secret"),
            "execution {round}: {}",
            email(&row)
        );
    }
    // tokio-postgres described the statement itself when it prepared it: its executions need
    // no Describe of the gateway's (before, each of the 20 had one).
    assert_eq!(added() - before, 0.0, "Describes added for 20 executions");
    // The same statement with text and binary results in turn, through a raw client.
    let mut raw = client(&gw, "alice", &db);
    use msg::*;
    let got = run(
        &mut raw,
        &[parse("by_id", "SELECT * FROM people WHERE id = $1"), sync()],
    );
    assert!(errors(&got).is_empty(), "{:?}", errors(&got));
    let execute_by_id = |raw: &mut RawClient, format: i16| {
        let got = run(
            raw,
            &[
                bind_params("", "by_id", &[Some(b"2")], format),
                execute("", 0),
                sync(),
            ],
        );
        assert!(errors(&got).is_empty(), "{:?}", errors(&got));
        assert_eq!(got.iter().filter(|m| m.0 == b'D').count(), 1, "{got:?}");
        String::from_utf8_lossy(&received(&got)).into_owned()
    };
    let before = added();
    for format in [0, 1, 0] {
        let text = execute_by_id(&mut raw, format);
        assert!(!text.contains("secret"), "format {format}: {text}");
    }
    // A Parse with no Describe of the client's: the gateway asks for the statement's columns
    // once, at its first Bind, and each format is made from that one answer.
    assert_eq!(added() - before, 1.0, "Describes added for 3 executions");

    sam.batch_execute(
        "ALTER TABLE people DROP COLUMN email; ALTER TABLE people ADD COLUMN email text; \
         UPDATE people SET email = 'third-secret-value'",
    )
    .await
    .unwrap();
    let row = alice.query_one(&by_id, &[&1i32]).await.unwrap();
    assert!(!email(&row).contains("secret"), "{}", email(&row));
    let text = execute_by_id(&mut raw, 0);
    assert!(!text.contains("secret"), "{text}");
    // The exempt identity sees what the statement now reads.
    let row = sam
        .query_one("SELECT * FROM people WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(email(&row), "third-secret-value");
}

/// The gateway remembers that no plugin reads a prepared statement's rows (an exempt
/// identity's), so later executions skip the lookup; a policy change must still reach the very
/// next execution. Revoking the exemption by a hot reload of mask-pii's config masks the same
/// prepared statement in the same session, in binary (tokio-postgres) and in text.
#[tokio::test]
async fn revoking_an_exemption_masks_the_next_execution_of_a_prepared_statement() {
    let exempt = config().replace("users = []", "users = [\"alice\"]");
    assert_ne!(exempt, config());
    let (db, gw, dir) = setup_in("mask_revoke", &exempt, "");
    let alice = gw.connect("alice", &db).await.unwrap();
    let by_id = alice
        .prepare("SELECT email FROM customers WHERE id = $1")
        .await
        .unwrap();
    let mut raw = client(&gw, "alice", &db);
    use msg::*;
    let got = run(
        &mut raw,
        &[
            parse("by_id", "SELECT email FROM customers WHERE id = $1"),
            sync(),
        ],
    );
    assert!(errors(&got).is_empty(), "{:?}", errors(&got));
    let text = |raw: &mut RawClient| {
        let got = run(
            raw,
            &[
                bind_params("", "by_id", &[Some(b"1")], 0),
                execute("", 0),
                sync(),
            ],
        );
        assert!(errors(&got).is_empty(), "{:?}", errors(&got));
        String::from_utf8_lossy(&received(&got)).into_owned()
    };
    for _ in 0..3 {
        let row = alice.query_one(&by_id, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "ada@example.com");
        assert!(text(&mut raw).contains("ada@example.com"));
    }

    let tmp = dir.join(".mask_pii.toml.tmp");
    std::fs::write(&tmp, config()).unwrap();
    std::fs::rename(&tmp, dir.join("mask_pii.toml")).unwrap();
    let reloaded = pgward_e2e::wait_until(std::time::Duration::from_secs(20), || {
        let out = gw.psql(
            "alice",
            &db,
            &["-c", "SELECT email FROM customers WHERE id = 1"],
            None,
        );
        !stdout_ok(&out).contains("ada@example.com")
    });
    assert!(reloaded, "the new config did not apply to new sessions");
    let row = alice.query_one(&by_id, &[&1i32]).await.unwrap();
    let email = row.get::<_, String>(0);
    assert_ne!(email, "ada@example.com");
    assert!(!email.contains("ada"), "{email}");
    let text = text(&mut raw);
    assert!(!text.contains("ada@example.com"), "{text}");
}

/// The server's errors and notices can quote row values no result plugin sees: a NOT NULL
/// violation's "Failing row contains (…)", a `RAISE NOTICE` in a function, a `RAISE
/// EXCEPTION` with a SQLSTATE of a class whose server messages quote nothing. With a result
/// plugin loaded the gateway strips them (`plugins.server_messages = "values"`, the default);
/// with `"pass"` they reach the client as the server sent them, which shows the test can fail.
#[test]
fn server_errors_and_notices_do_not_quote_masked_values() {
    // A function masked identities may call, which echoes its argument in a notice.
    let mask_config = config().replace(
        "\nallow_functions = []\n",
        "\nallow_functions = [\"public.shout\", \"shout\", \"public.shout_error\", \"shout_error\"]\n",
    );
    let statements = [
        (
            "a failing row",
            "UPDATE customers SET email = NULL WHERE id = 1",
            "23502",
        ),
        (
            "a notice",
            "SELECT shout(ssn) FROM customers WHERE id = 1",
            "",
        ),
        (
            "an error raised with another class's SQLSTATE",
            "SELECT shout_error(ssn) FROM customers WHERE id = 1",
            "23505",
        ),
    ];
    for (mode, leaks_expected) in [("values", false), ("generic", false), ("pass", true)] {
        let (db, gw) = setup_with(
            &format!("mask_msgs_{mode}"),
            &mask_config,
            &format!("server_messages = \"{mode}\"\n"),
        );
        Postgres::shared()
            .superuser_sql(
                &db,
                "SET ROLE pgward_gw; CREATE FUNCTION shout(v text) RETURNS text LANGUAGE plpgsql \
                 AS $$ BEGIN RAISE NOTICE 'value %', v; RETURN 'shouted'; END $$; \
                 CREATE FUNCTION shout_error(v text) RETURNS text LANGUAGE plpgsql \
                 AS $$ BEGIN RAISE EXCEPTION 'value %', v USING ERRCODE = '23505'; END $$",
            )
            .unwrap();
        let mut alice = client(&gw, "alice", &db);
        for (label, sql, code) in statements {
            let got = run(&mut alice, &simple(sql));
            let leaks = leaked(&received(&got));
            assert_eq!(
                !leaks.is_empty(),
                leaks_expected,
                "{mode}, {label}: leaks {leaks:?} in {:?}",
                got.iter()
                    .map(|m| String::from_utf8_lossy(&m.1).into_owned())
                    .collect::<Vec<_>>()
            );
            if code.is_empty() {
                // The notice still arrives (as a notice), and so does the result.
                assert!(got.iter().any(|m| m.0 == b'N'), "{mode}: {got:?}");
                assert!(got.iter().any(|m| m.0 == b'D'), "{mode}: {got:?}");
            } else {
                let errs = errors(&got);
                assert!(
                    errs.len() == 1 && errs[0].starts_with(code),
                    "{mode}, {label}: {errs:?}"
                );
            }
        }
    }
}
