//! Protocol fuzzing of both directions of the relay, through the real gateway.
//!
//! - **Client side**: sessions of random and mutated frontend messages — every message type the
//!   protocol has, and others; bodies cut short or grown, length fields that lie, missing
//!   terminators, random tags, startup packets mutated the same way — against a gateway with
//!   guardrails, mask-pii and the audit trail on (so the relay follows the extended protocol,
//!   judges statements and filters results) in front of the real PostgreSQL server.
//! - **Server side**: a deliberately malformed server stream — a small server of the test's own
//!   that logs the gateway in and then answers every request with random and mutated backend
//!   messages (row descriptions and rows that disagree, errors, notices, parameter changes, COPY
//!   responses, ReadyForQuery with any status, frames cut short or closed mid-way).
//!
//! Each checks that the gateway never panics, keeps serving a well-behaved session opened before
//! the fuzzing and new ones during it, that its memory stays bounded, and (client side) that the
//! audit trail still verifies. The seed is printed; `PGWARD_FUZZ_SEED` replays one and
//! `PGWARD_FUZZ_ITERATIONS` sets the number of sessions (the README has the long run).

use pgward_e2e::{policy_plugins_dir, Gateway, GatewayOptions, Postgres, RawClient, TestUser};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// splitmix64: small, fast, and the same sequence for a seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `min` to `min + span - 1` random bytes.
    fn junk(&mut self, min: usize, span: usize) -> Vec<u8> {
        let n = min + self.below(span);
        self.bytes(n)
    }
}

fn seed(name: &str) -> u64 {
    let seed = std::env::var("PGWARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{name}: PGWARD_FUZZ_SEED={seed}");
    seed
}

fn iterations(default: usize) -> usize {
    std::env::var("PGWARD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// Mutates a whole frame (or startup packet) in one of the ways a broken or hostile peer would.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    match rng.below(8) {
        // A flipped byte anywhere, the tag and length included.
        0 => {
            let i = rng.below(f.len());
            f[i] ^= 1 << rng.below(8);
        }
        // Cut short.
        1 => f.truncate(rng.below(f.len())),
        // Grown past its length field.
        2 => {
            let extra = rng.junk(1, 64);
            f.extend_from_slice(&extra);
        }
        // A length field that lies: small, negative, a little larger, huge.
        3 if f.len() >= 5 => {
            let len: i32 = match rng.below(4) {
                0 => rng.below(4) as i32,
                1 => -(rng.below(1 << 20) as i32) - 1,
                2 => (f.len() + rng.below(64)) as i32,
                _ => i32::MAX - rng.below(1 << 16) as i32,
            };
            f[1..5].copy_from_slice(&len.to_be_bytes());
        }
        // Terminators removed: strings run into what follows.
        4 => f.retain(|&b| b != 0 || rng.chance(50)),
        // A run of random bytes spliced in.
        5 => {
            let at = rng.below(f.len() + 1);
            let junk = rng.junk(1, 32);
            f.splice(at..at, junk);
        }
        // Another tag.
        6 if !f.is_empty() => f[0] = rng.next() as u8,
        _ => {
            let i = rng.below(f.len());
            f[i] = 0xff;
        }
    }
}

const SQL: &[&str] = &[
    "SELECT 1",
    "SELECT $1::int + 1",
    "SELECT id, name, email FROM customers WHERE id = $1",
    "SELECT * FROM customers",
    "SELECT email FROM customers; SELECT 2",
    "DROP TABLE customers",
    "DELETE FROM customers",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s",
    "COPY customers TO STDOUT",
    "COPY customers FROM STDIN",
    "COPY (SELECT email FROM customers) TO STDOUT (FORMAT binary)",
    "PREPARE p AS SELECT name FROM customers",
    "EXECUTE p",
    "DEALLOCATE ALL",
    "SET search_path = pg_catalog, public",
    "SET DateStyle = 'German'",
    "RESET ALL",
    "SELECT repeat('x', 70000)",
    "SELECT generate_series(1, 500)",
    "INSERT INTO scratch VALUES ($1)",
    "SELECT 'unterminated",
    "SELECT 1/0",
    "LISTEN c; NOTIFY c, 'x'",
    "SET ROLE postgres",
    "DO $$ BEGIN RAISE NOTICE 'n %', 1; END $$",
    "",
    ";;",
    "SELECT pg_sleep(0.01)",
];

const NAMES: &[&[u8]] = &[b"", b"s1", b"s2", b"p", b"pgward_denied_1_1", b"\xff\xfe"];

/// A frontend message: valid in shape, random in content.
fn frontend_message(rng: &mut Rng) -> Vec<u8> {
    let sql = rng.pick(SQL).as_bytes();
    let name = *rng.pick(NAMES);
    let mut b = Vec::new();
    let tag = match rng.below(16) {
        0 | 1 => {
            cstr(&mut b, sql);
            b'Q'
        }
        2 | 3 => {
            cstr(&mut b, name);
            cstr(&mut b, sql);
            let n = rng.below(3);
            b.extend_from_slice(&(n as i16).to_be_bytes());
            for _ in 0..n {
                let oid = *rng.pick(&[0u32, 23, 25, 17, 1184, 3802, 0xffff_ffff]);
                b.extend_from_slice(&oid.to_be_bytes());
            }
            b'P'
        }
        4 | 5 => {
            cstr(&mut b, name);
            cstr(&mut b, rng.pick::<&[u8]>(NAMES));
            let formats = rng.below(3);
            b.extend_from_slice(&(formats as i16).to_be_bytes());
            for _ in 0..formats {
                b.extend_from_slice(&(rng.below(3) as i16).to_be_bytes());
            }
            let params = rng.below(3);
            b.extend_from_slice(&(params as i16).to_be_bytes());
            for _ in 0..params {
                if rng.chance(20) {
                    b.extend_from_slice(&(-1i32).to_be_bytes());
                } else {
                    let v = match rng.below(3) {
                        0 => b"42".to_vec(),
                        1 => vec![0, 0, 0, 7],
                        _ => rng.junk(0, 16),
                    };
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(&v);
                }
            }
            let results = rng.below(3);
            b.extend_from_slice(&(results as i16).to_be_bytes());
            for _ in 0..results {
                b.extend_from_slice(&(rng.below(2) as i16).to_be_bytes());
            }
            b'B'
        }
        6 => {
            b.push(*rng.pick(b"SPX"));
            cstr(&mut b, name);
            b'D'
        }
        7 | 8 => {
            cstr(&mut b, name);
            b.extend_from_slice(&(*rng.pick(&[0i32, 1, 2, -1])).to_be_bytes());
            b'E'
        }
        9 => {
            b.push(*rng.pick(b"SPZ"));
            cstr(&mut b, name);
            b'C'
        }
        10 | 11 => b'S',
        12 => {
            let n = rng.below(40);
            b.extend_from_slice(&rng.bytes(n));
            *rng.pick(b"dcfH")
        }
        13 => {
            // FunctionCall: oid, argument formats, arguments, result format.
            b.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&2i32.to_be_bytes());
            b.extend_from_slice(b"42");
            b.extend_from_slice(&0i16.to_be_bytes());
            b'F'
        }
        14 => {
            let n = rng.below(24);
            b.extend_from_slice(&rng.bytes(n));
            rng.next() as u8
        }
        _ => {
            if rng.chance(90) {
                b'S'
            } else {
                b'X'
            }
        }
    };
    frame(tag, &b)
}

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", user),
        ("database", db),
        ("application_name", "fuzz"),
    ] {
        cstr(&mut body, k.as_bytes());
        cstr(&mut body, v.as_bytes());
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// Reads what comes until the peer closes or is quiet for `quiet`, at most `limit` long.
fn drain(s: &mut TcpStream, quiet: Duration, limit: Duration) -> usize {
    let _ = s.set_read_timeout(Some(quiet));
    let start = Instant::now();
    let mut total = 0;
    let mut chunk = [0u8; 65536];
    while start.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    total
}

/// One fuzzed client session: a startup (sometimes mutated), then random messages, some
/// mutated, written in random pieces. Returns the bytes the gateway sent back.
fn client_session(rng: &mut Rng, port: u16, db: &str) -> usize {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut startup = startup_packet("alice", db);
    if rng.chance(10) {
        mutate(rng, &mut startup);
        let _ = s.write_all(&startup);
        return drain(&mut s, Duration::from_millis(100), Duration::from_secs(2));
    }
    if s.write_all(&startup).is_err() {
        return 0;
    }
    let mut got = drain(&mut s, Duration::from_millis(60), Duration::from_secs(2));
    let mut bytes = Vec::new();
    for _ in 0..1 + rng.below(12) {
        let mut m = frontend_message(rng);
        if rng.chance(15) {
            mutate(rng, &mut m);
        }
        bytes.extend_from_slice(&m);
    }
    let mut at = 0;
    while at < bytes.len() {
        let n = (1 + rng.below(bytes.len())).min(bytes.len() - at);
        if s.write_all(&bytes[at..at + n]).is_err() {
            return got;
        }
        at += n;
        if rng.chance(30) {
            got += drain(&mut s, Duration::from_millis(5), Duration::from_millis(50));
        }
    }
    got + drain(&mut s, Duration::from_millis(80), Duration::from_secs(3))
}

/// A session that works: `SELECT 1` answers 1.
fn well_behaved(c: &mut RawClient) {
    c.query("SELECT 1").unwrap();
    let got = c.read_until_ready().unwrap();
    let row = got.iter().find(|m| m.0 == b'D');
    assert!(
        row.is_some_and(|r| r.1.ends_with(b"1")),
        "a well-behaved session got {got:?}"
    );
}

fn alive(gw: &Gateway) -> bool {
    std::path::Path::new(&format!("/proc/{}", gw.pid())).exists()
}

fn assert_no_panic(gw: &Gateway) {
    let log = gw.log();
    assert!(
        !log.contains("panicked"),
        "the gateway panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const SEED_SQL: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text);
INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.com', '078-05-1120');
CREATE TABLE scratch (v text);
";

#[test]
fn fuzzed_client_messages_never_break_the_gateway() {
    let pg = Postgres::shared();
    let db = pg.create_database("fuzz_client").unwrap();
    pg.superuser_sql(&db, &format!("SET ROLE pgward_gw; {SEED_SQL}"))
        .unwrap();
    let trail = pgward_e2e::unique_dir("fuzz-trail");
    let mut gw = Gateway::start(
        pg,
        GatewayOptions {
            trust: true,
            users: vec![TestUser::new("alice", "alice-pw", &["analysts"])],
            plugins_dir: Some(policy_plugins_dir()),
            plugins_extra: "batch_rows = 3\n".into(),
            extra_toml: format!(
                "[audit]\ndirectory = \"{}\"\nparameters = true\n",
                trail.display()
            ),
            log_level: "info".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut bystander = RawClient::connect(gw.port).unwrap();
    bystander.startup("alice", &db).unwrap();
    bystander.read_until_ready().unwrap();
    well_behaved(&mut bystander);
    let rss_before = gw.rss_kib();

    let sessions = iterations(240);
    let seed = seed("client");
    // Four clients at once, each with its own sequence.
    let received = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let db = db.clone();
            let port = gw.port;
            let received = &received;
            scope.spawn(move || {
                let mut rng = Rng(seed ^ (t << 56));
                for _ in 0..sessions / 4 {
                    let n = client_session(&mut rng, port, &db);
                    received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        scope.spawn(|| {
            // New sessions work while the fuzzing goes on.
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(500));
                let mut c = RawClient::connect(gw.port).unwrap();
                c.startup("alice", &db).unwrap();
                c.read_until_ready().unwrap();
                well_behaved(&mut c);
            }
        });
    });

    assert!(alive(&gw), "the gateway exited");
    assert_no_panic(&gw);
    well_behaved(&mut bystander);
    let rss_after = gw.rss_kib();
    let received = received.into_inner();
    eprintln!(
        "client fuzz: {sessions} sessions, {received} bytes back, gateway RSS {rss_before} KiB -> {rss_after} KiB"
    );
    // The sessions were served (authenticated, answered), not just cut off at the door.
    assert!(
        received > sessions * 200,
        "{received} bytes for {sessions} sessions"
    );
    assert!(
        rss_after < rss_before + 96 * 1024,
        "gateway memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Every statement that ran is in a trail that still verifies.
    drop(bystander);
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let out = std::process::Command::new(pgward_e2e::pgward_bin())
        .args(["audit", "verify"])
        .arg(&trail)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the malformed server sends after logging the gateway in: random backend messages.
fn backend_message(rng: &mut Rng) -> Vec<u8> {
    let mut b = Vec::new();
    let tag = match rng.below(18) {
        0..=2 => {
            // RowDescription: columns of types the result path converts, and others.
            let n = rng.below(4);
            b.extend_from_slice(&(n as i16).to_be_bytes());
            for i in 0..n {
                cstr(
                    &mut b,
                    rng.pick::<&[u8]>(&[b"email", b"id", b"name", b"\xc3("]),
                );
                let any = rng.next() as u32;
                let table = *rng.pick(&[0u32, 16384, any]);
                b.extend_from_slice(&table.to_be_bytes());
                b.extend_from_slice(&((i + 1) as i16).to_be_bytes());
                let oid = *rng.pick(&[
                    23u32, 25, 20, 16, 1700, 1114, 1184, 1082, 17, 1007, 1009, 3802, 114, 2950,
                    600, 0,
                ]);
                b.extend_from_slice(&oid.to_be_bytes());
                b.extend_from_slice(&(-1i16).to_be_bytes());
                b.extend_from_slice(&(-1i32).to_be_bytes());
                b.extend_from_slice(&(rng.below(3) as i16).to_be_bytes());
            }
            b'T'
        }
        3..=6 => {
            // DataRow: any number of fields, any contents (text that is not the type's,
            // binary of the wrong length, NULLs).
            let n = rng.below(4);
            b.extend_from_slice(&(n as i16).to_be_bytes());
            for _ in 0..n {
                if rng.chance(15) {
                    b.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                let v = match rng.below(5) {
                    0 => b"ada@example.com".to_vec(),
                    1 => b"{1,2,{3}}".to_vec(),
                    2 => b"2024-02-30 25:61:00".to_vec(),
                    3 => vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23],
                    _ => rng.junk(0, 24),
                };
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(&v);
            }
            b'D'
        }
        7 => {
            const TAGS: [&[u8]; 5] = [b"SELECT 1", b"INSERT 0 1", b"COPY 2", b"", b"SELECT x"];
            cstr(&mut b, rng.pick::<&[u8]>(&TAGS));
            b'C'
        }
        8 | 9 => {
            const CODES: [&[u8]; 4] = [b"42P01", b"57P01", b"XX000", b"zz"];
            for (code, value) in [
                (b'S', &b"ERROR"[..]),
                (b'C', *rng.pick(&CODES)),
                (b'M', b"fuzzed failure ada@example.com"),
            ] {
                if rng.chance(90) {
                    b.push(code);
                    cstr(&mut b, value);
                }
            }
            b.push(0);
            if rng.chance(50) {
                b'E'
            } else {
                b'N'
            }
        }
        10 => {
            let (k, v) = *rng.pick(&[
                (&b"DateStyle"[..], &b"German, DMY"[..]),
                (b"client_encoding", b"SQL_ASCII"),
                (b"standard_conforming_strings", b"off"),
                (b"IntervalStyle", b"iso_8601"),
                (b"server_version", b"99"),
            ]);
            cstr(&mut b, k);
            cstr(&mut b, v);
            b'S'
        }
        11 => {
            b.push(rng.below(2) as u8);
            let n = rng.below(3);
            b.extend_from_slice(&(n as i16).to_be_bytes());
            for _ in 0..n {
                b.extend_from_slice(&(rng.below(2) as i16).to_be_bytes());
            }
            *rng.pick(b"GHW")
        }
        12 => {
            let n = rng.below(40);
            b.extend_from_slice(&rng.bytes(n));
            *rng.pick(b"dc")
        }
        13 => *rng.pick(b"123nsI"),
        14 => {
            b.extend_from_slice(&(rng.next() as i32).to_be_bytes());
            cstr(&mut b, b"chan");
            cstr(&mut b, b"payload");
            b'A'
        }
        15 => {
            let n = rng.below(3);
            b.extend_from_slice(&(n as i16).to_be_bytes());
            for _ in 0..n {
                b.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            }
            b't'
        }
        16 => {
            let n = rng.below(24);
            b.extend_from_slice(&rng.bytes(n));
            rng.next() as u8
        }
        _ => {
            b.push(*rng.pick(b"IITE?"));
            b'Z'
        }
    };
    frame(tag, &b)
}

/// The server of the test: logs anyone in (trust). Connections to database `health` get
/// correct answers to `SELECT 1`; every other connection gets random answers.
fn malformed_server(seed: u64) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            let rng = Rng(seed.wrapping_add(n as u64 * 7919));
            std::thread::spawn(move || serve(conn, rng));
        }
    });
    port
}

fn read_exact_or_close(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok()?;
    Some(v)
}

fn serve(mut s: TcpStream, mut rng: Rng) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_nodelay(true);
    // Startup, after any number of SSL or GSS requests (refused).
    let params = loop {
        let Some(len) = read_exact_or_close(&mut s, 4) else {
            return;
        };
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        if !(8..=10_000).contains(&len) {
            return;
        }
        let Some(body) = read_exact_or_close(&mut s, len - 4) else {
            return;
        };
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        if code == 80_877_103 || code == 80_877_104 {
            let _ = s.write_all(b"N");
            continue;
        }
        break body;
    };
    let health = params.windows(7).any(|w| w == b"health\0");
    if health {
        // The bystander stays idle for the whole run, however long it is.
        let _ = s.set_read_timeout(None);
    }
    let mut hello = frame(b'R', &0i32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        let mut b = Vec::new();
        cstr(&mut b, k.as_bytes());
        cstr(&mut b, v.as_bytes());
        hello.extend_from_slice(&frame(b'S', &b));
    }
    let mut key = 7i32.to_be_bytes().to_vec();
    key.extend_from_slice(&11i32.to_be_bytes());
    hello.extend_from_slice(&frame(b'K', &key));
    hello.extend_from_slice(&frame(b'Z', b"I"));
    if s.write_all(&hello).is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        // Answer each Query, Sync and Terminate in what has arrived.
        let mut requests = Vec::new();
        while buf.len() >= 5 {
            let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            if len < 4 || buf.len() < len + 1 {
                break;
            }
            requests.push(buf[0]);
            buf.drain(..len + 1);
        }
        for tag in requests {
            let answer = match (tag, health) {
                (b'X', _) => return,
                (b'Q', true) => {
                    let mut t = 1i16.to_be_bytes().to_vec();
                    cstr(&mut t, b"?column?");
                    t.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255]);
                    t.extend_from_slice(&0i16.to_be_bytes());
                    let mut a = frame(b'T', &t);
                    a.extend_from_slice(&frame(b'D', &[0, 1, 0, 0, 0, 1, b'1']));
                    a.extend_from_slice(&frame(b'C', b"SELECT 1\0"));
                    a.extend_from_slice(&frame(b'Z', b"I"));
                    a
                }
                (b'S', true) => frame(b'Z', b"I"),
                (b'Q' | b'S', false) => {
                    let mut a = Vec::new();
                    for _ in 0..rng.below(10) {
                        let mut m = backend_message(&mut rng);
                        if rng.chance(10) {
                            mutate(&mut rng, &mut m);
                        }
                        a.extend_from_slice(&m);
                    }
                    if rng.chance(5) {
                        // Gone mid-answer.
                        let cut = rng.below(a.len() + 1);
                        let _ = s.write_all(&a[..cut]);
                        return;
                    }
                    if rng.chance(80) {
                        a.extend_from_slice(&frame(b'Z', b"I"));
                    }
                    a
                }
                _ => continue,
            };
            if s.write_all(&answer).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_malformed_server_stream_never_breaks_the_gateway() {
    let seed = seed("server");
    let upstream = malformed_server(seed);
    let gw = Gateway::start(
        Postgres::shared(),
        GatewayOptions {
            trust: true,
            users: vec![TestUser::new("alice", "alice-pw", &["analysts"])],
            upstream_port: Some(upstream),
            upstream_extra: "auth_methods = [\"trust\"]\n".into(),
            plugins_dir: Some(policy_plugins_dir()),
            plugins_extra: "batch_rows = 2\n".into(),
            log_level: "info".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut bystander = RawClient::connect(gw.port).unwrap();
    bystander.startup("alice", "health").unwrap();
    bystander.read_until_ready().unwrap();
    well_behaved(&mut bystander);
    let rss_before = gw.rss_kib();

    let sessions = iterations(240);
    let mut rng = Rng(seed ^ 0x5eed);
    let mut received = 0;
    for i in 0..sessions {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", gw.port)) else {
            panic!("the gateway stopped accepting connections after {i} sessions");
        };
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(&startup_packet("alice", "fuzz"));
        received += drain(&mut s, Duration::from_millis(40), Duration::from_secs(2));
        let mut bytes = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let sql = rng.pick(&["SELECT * FROM customers", "SELECT 1", "COPY t TO STDOUT"]);
            if rng.chance(50) {
                bytes.extend_from_slice(&frame(b'Q', format!("{sql}\0").as_bytes()));
            } else {
                let mut p = Vec::new();
                cstr(&mut p, b"");
                cstr(&mut p, sql.as_bytes());
                p.extend_from_slice(&[0, 0]);
                bytes.extend_from_slice(&frame(b'P', &p));
                bytes.extend_from_slice(&frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1]));
                bytes.extend_from_slice(&frame(b'E', &[0, 0, 0, 0, 0]));
                bytes.extend_from_slice(&frame(b'S', &[]));
            }
        }
        let _ = s.write_all(&bytes);
        received += drain(&mut s, Duration::from_millis(60), Duration::from_secs(3));
        if i % 40 == 39 {
            let mut c = RawClient::connect(gw.port).unwrap();
            c.startup("alice", "health").unwrap();
            c.read_until_ready().unwrap();
            well_behaved(&mut c);
        }
    }
    assert!(alive(&gw), "the gateway exited");
    assert_no_panic(&gw);
    well_behaved(&mut bystander);
    let rss_after = gw.rss_kib();
    eprintln!(
        "server fuzz: {sessions} sessions, {received} bytes back, gateway RSS {rss_before} KiB -> {rss_after} KiB"
    );
    // The sessions got past the login: the server's parameters, at least, reached them.
    assert!(
        received > sessions * 200,
        "{received} bytes for {sessions} sessions"
    );
    assert!(
        rss_after < rss_before + 96 * 1024,
        "gateway memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}
