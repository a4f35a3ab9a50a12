//! End-to-end load harness: pgbench `-S` and a large-result stream, interleaved across targets
//! (PostgreSQL directly, through pgward, through PgBouncer in session mode) in one run, so the
//! ratios compare like with like on a noisy shared machine.
//!
//! Run with `scripts/bench.sh` (builds release binaries first). Knobs (environment):
//! `BENCH_SECONDS` per pgbench run (default 10), `BENCH_ROUNDS` (default 3),
//! `BENCH_ROWS` for the large result (default 3000000), `BENCH_SCALE` pgbench scale (default 10),
//! `BENCH_SKIP_PGBOUNCER=1` when PgBouncer is not installed, `BENCH_SUITES` (comma-separated,
//! default `pgbench,stream,results`), `BENCH_WIDE_ROWS` for the wide result through result
//! plugins (default 2000000), `BENCH_MEMORY_ROWS` for the peak-memory run (default 10000000),
//! `BENCH_TARGETS` to keep only the named pgbench targets (besides direct and bare pgward),
//! `BENCH_BASELINE_BIN` for gateways from another build (`pgward baseline` bare,
//! `baseline+guardrails+mask-pii` under pgbench, `baseline+mask 1 column` streaming results: a
//! no-regression comparison of two commits in one run).
//!
//! For profiling by hand: `loadbench serve` starts every target and prints where it listens;
//! `loadbench query PORT USER PASSWORD DB SQL [TIMES]` streams one query's rows (binary, as the
//! benchmark reads them) and prints rows/s.

use anyhow::{bail, Context, Result};
use futures_util::TryStreamExt;
use pgward_e2e::{Gateway, GatewayOptions, Postgres, UPSTREAM_PASSWORD, UPSTREAM_USER};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime+stime (and, with `children`, cutime+cstime) of a process, in seconds.
fn proc_cpu(pid: u32, children: bool) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may contain spaces, start after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // rest[0] is field 3 (state); utime is field 14 -> index 11.
    let mut ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    if children {
        ticks += f.get(13).copied().unwrap_or(0.0) + f.get(14).copied().unwrap_or(0.0);
    }
    ticks / clock_ticks()
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|pp| pp.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(p);
        }
    }
    out
}

/// CPU seconds used so far by PostgreSQL: the postmaster, its live children, and its exited ones.
fn postgres_cpu(postmaster: u32) -> f64 {
    proc_cpu(postmaster, true)
        + children_of(postmaster)
            .into_iter()
            .map(|c| proc_cpu(c, false))
            .sum::<f64>()
}

/// CPU seconds of reaped children of this process (pgbench runs).
fn reaped_children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn postmaster_pid(pg: &Postgres) -> Result<u32> {
    let text = std::fs::read_to_string(pg.dir.join("data/postmaster.pid"))?;
    Ok(text.lines().next().unwrap_or("").trim().parse()?)
}

struct Target {
    name: &'static str,
    port: u16,
    user: String,
    password: String,
    /// Process whose CPU is the proxy's own.
    proxy_pid: Option<u32>,
}

#[derive(Default, Clone)]
struct Sample {
    value: f64,
    proxy_cpu: f64,
    postgres_cpu: f64,
    client_cpu: f64,
    /// Context switches during the run: of the whole machine, and of the proxy's threads.
    switches: u64,
    proxy_switches: u64,
}

/// Context switches of the whole machine since boot (`ctxt` in /proc/stat).
fn machine_switches() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Context switches, voluntary and not, of every thread of `pid` (a thread that exited
/// takes its count with it; the gateway's threads live as long as it does).
fn proc_switches(pid: u32) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

fn pgbench(t: &Target, db: &str, mode: &str, clients: u32, seconds: u64) -> Result<f64> {
    let out = Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &t.port.to_string(),
            "-U",
            &t.user,
            "-n",
            "-S",
        ])
        .args([
            "-M",
            mode,
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .arg(db)
        .env("PGPASSWORD", &t.password)
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench against {} failed: {}{}",
            t.name,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions:"))
        .unwrap_or("0")
        .trim();
    if !failed.starts_with('0') {
        bail!(
            "pgbench against {} had failed transactions: {failed}",
            t.name
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{text}"))
}

async fn stream_rows(t: &Target, db: &str) -> Result<f64> {
    stream_query(t, db, "SELECT * FROM bench_rows")
        .await
        .map(|(_, rps)| rps)
}

/// Streams `sql` (binary results, as tokio-postgres asks for them); rows and rows/s.
async fn stream_query(t: &Target, db: &str, sql: &str) -> Result<(u64, f64)> {
    let conn = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={db}",
        t.port, t.user, t.password
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let started = Instant::now();
    let stream = client.query_raw(sql, std::iter::empty::<i32>()).await?;
    futures_util::pin_mut!(stream);
    let mut n = 0u64;
    while stream.try_next().await?.is_some() {
        n += 1;
    }
    Ok((n, n as f64 / started.elapsed().as_secs_f64()))
}

/// Peak resident memory of a process (`VmHWM`), KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A plugins directory holding one built plugin under `file`, with its config.
fn one_plugin_dir(wasm: &str, file: &str, config: &str) -> Result<std::path::PathBuf> {
    plugins_dir_of(file, &[(wasm, file, config)])
}

/// A plugins directory `name` holding built plugins (component, file stem, config); the stems
/// sort in chain order.
fn plugins_dir_of(name: &str, plugins: &[(&str, &str, &str)]) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pgward-test-{}-bench-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (wasm, file, config) in plugins {
        let built = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/plugins")
            .join(format!("{wasm}.wasm"));
        if !built.exists() {
            bail!(
                "{} is missing: run scripts/build-plugins.sh",
                built.display()
            );
        }
        std::fs::copy(&built, dir.join(format!("{file}.wasm")))?;
        std::fs::write(dir.join(format!("{file}.toml")), config)?;
    }
    Ok(dir)
}

/// mask-pii for the benchmark tables: e-mails classified by lineage and hashed (the default
/// keyed hash, SipHash-2-4, per value), the detectors on every other text column (its secure
/// default).
const MASK_PII_BENCH: &str = "[hash]\nkey = \"bench-key-0123456789abcdef\"\n\n\
    [[class]]\nname = \"email\"\nlineage = [\"*.*.email\"]\ndetectors = [\"email\"]\nstrategy = \"hash\"\n";

fn target_of(name: &'static str, g: &Gateway) -> Target {
    let u = g.user("alice").clone();
    Target {
        name,
        port: g.port,
        user: u.name,
        password: u.password,
        proxy_pid: Some(g.pid()),
    }
}

/// The wide result of the results suite: ten columns of common types, one of them e-mails.
const WIDE_SELECT: &str = "SELECT * FROM bench_wide";

fn start_pgbouncer(pg: &Postgres, db: &str, dir: &Path) -> Result<(Child, u16)> {
    let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("pgbouncer not installed (scripts/prereqs.sh --bench installs it)")?;
    let port = pgward_e2e::free_port();
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("userlist.txt"),
        format!("\"{UPSTREAM_USER}\" \"{UPSTREAM_PASSWORD}\"\n"),
    )?;
    std::fs::write(
        dir.join("pgbouncer.ini"),
        format!(
            "[databases]\n{db} = host=127.0.0.1 port={} dbname={db}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\npool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 64\nignore_startup_parameters = extra_float_digits\nlogfile = {}\n",
            pg.port,
            dir.join("userlist.txt").display(),
            dir.join("pgbouncer.log").display()
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg(dir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // PgBouncer refuses to run as root.
        let uid: u32 =
            String::from_utf8(Command::new("id").args(["-u", "postgres"]).output()?.stdout)?
                .trim()
                .parse()?;
        let gid: u32 =
            String::from_utf8(Command::new("id").args(["-g", "postgres"]).output()?.stdout)?
                .trim()
                .parse()?;
        for f in ["", "userlist.txt", "pgbouncer.ini"] {
            std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid))?;
        }
        cmd.uid(uid).gid(gid);
    }
    let child = cmd.spawn().context("starting pgbouncer")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "pgbouncer did not start; see {}",
                dir.join("pgbouncer.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, port))
}

/// A gateway as benchmarked: logging at info, `BENCH_WORKERS` workers, optional plugins.
fn bench_gateway(pg: &Postgres, plugins_dir: Option<std::path::PathBuf>) -> Result<Gateway> {
    bench_gateway_with(pg, plugins_dir, String::new())
}

fn bench_gateway_with(
    pg: &Postgres,
    plugins_dir: Option<std::path::PathBuf>,
    extra_toml: String,
) -> Result<Gateway> {
    Gateway::start(
        pg,
        GatewayOptions {
            listen_extra: format!(
                "max_connections = 500\nworkers = {}",
                env_num("BENCH_WORKERS", 0)
            ),
            log_level: "info".into(),
            plugins_dir,
            extra_toml,
            ..Default::default()
        },
    )
}

/// A plugins directory with the deny-keyword test plugin and the template plugin.
fn plugin_dir_for_bench() -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = root.join("target/plugins");
    let deny = built.join("deny_keyword.wasm");
    let template = built.join("pgward_plugin_template.wasm");
    if !deny.exists() || !template.exists() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("pgward-test-{}-benchplugins", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::copy(&deny, dir.join("10-deny.wasm")).ok()?;
    std::fs::write(
        dir.join("10-deny.toml"),
        "word = \"forbidden_table\"\nsqlstate = \"42501\"\nmessage = \"no\"\n",
    )
    .ok()?;
    std::fs::copy(&template, dir.join("20-template.wasm")).ok()?;
    let _ = std::fs::copy(
        root.join("plugins/template/pgward_plugin_template.toml"),
        dir.join("20-template.toml"),
    );
    Some(dir)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("query") {
        let [_, _, port, user, password, db, sql, rest @ ..] = args.as_slice() else {
            bail!("usage: loadbench query PORT USER PASSWORD DB SQL [TIMES]");
        };
        let t = Target {
            name: "query",
            port: port.parse().context("PORT")?,
            user: user.clone(),
            password: password.clone(),
            proxy_pid: None,
        };
        let times: u32 = rest.first().map(|n| n.parse()).transpose()?.unwrap_or(1);
        for _ in 0..times {
            let (rows, rps) = stream_query(&t, db, sql).await?;
            println!("{rows} rows, {rps:.0} rows/s");
        }
        return Ok(());
    }
    let seconds = env_num("BENCH_SECONDS", 10);
    let rounds = env_num("BENCH_ROUNDS", 3);
    let rows = env_num("BENCH_ROWS", 3_000_000);
    let scale = env_num("BENCH_SCALE", 10);
    let skip_bouncer = std::env::var("BENCH_SKIP_PGBOUNCER").is_ok_and(|v| v == "1");
    let suites = std::env::var("BENCH_SUITES").unwrap_or_else(|_| "pgbench,stream,results".into());
    let suite = |name: &str| suites.split(',').any(|s| s.trim() == name);
    let wide_rows = env_num("BENCH_WIDE_ROWS", 2_000_000);
    let memory_rows = env_num("BENCH_MEMORY_ROWS", 10_000_000);

    eprintln!("starting PostgreSQL");
    let pg = Postgres::start()?;
    let db = pg.create_database("bench")?;
    let direct = Target {
        name: "direct",
        port: pg.port,
        user: UPSTREAM_USER.into(),
        password: UPSTREAM_PASSWORD.into(),
        proxy_pid: None,
    };
    eprintln!("pgbench -i -s {scale}");
    let init = Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            UPSTREAM_USER,
        ])
        .arg(&db)
        .env("PGPASSWORD", UPSTREAM_PASSWORD)
        .output()?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    pg.superuser_sql(
        &db,
        &format!(
            "CREATE TABLE bench_rows AS SELECT g AS id, md5(g::text) AS a, g * 2 AS b, now() AS c FROM generate_series(1, {rows}) g; ALTER TABLE bench_rows OWNER TO {UPSTREAM_USER};"
        ),
    )?;
    pg.superuser_sql(&db, "VACUUM ANALYZE bench_rows")?;
    if suite("results") {
        pg.superuser_sql(
            &db,
            &format!(
                "CREATE TABLE bench_wide AS SELECT g::int8 AS id, md5(g::text) AS name, \
                 'user' || g || '@example.com' AS email, (g % 1000)::int4 AS score, \
                 g / 7.0::float8 AS ratio, (g % 100000)::numeric / 100 AS amount, g % 2 = 0 AS active, \
                 '2024-01-01'::date + (g % 365) AS day, '2024-01-01'::timestamptz + g * interval '1 second' AS at, \
                 repeat('x', (g % 40)::int) AS note FROM generate_series(1, {wide_rows}) g; \
                 ALTER TABLE bench_wide OWNER TO {UPSTREAM_USER};"
            ),
        )?;
        pg.superuser_sql(&db, "VACUUM ANALYZE bench_wide")?;
    }

    let gw = bench_gateway(&pg, None)?;
    let alice = gw.user("alice").clone();
    let pgward = Target {
        name: "pgward",
        port: gw.port,
        user: alice.name.clone(),
        password: alice.password.clone(),
        proxy_pid: Some(gw.pid()),
    };
    let mut bouncer_child = None;
    let mut targets = vec![direct, pgward];
    // The same gateway with two on-query plugins, when they are built (scripts/build-plugins.sh).
    let plugin_gw = match plugin_dir_for_bench() {
        Some(dir) => Some(bench_gateway(&pg, Some(dir))?),
        None => {
            eprintln!("plugins not built: skipping the pgward+plugins target");
            None
        }
    };
    if let Some(g) = &plugin_gw {
        let u = g.user("alice").clone();
        targets.push(Target {
            name: "pgward+2 plugins",
            port: g.port,
            user: u.name,
            password: u.password,
            proxy_pid: Some(g.pid()),
        });
    }
    // The built-in policies as a deployment would run them: guardrails (built-in default
    // profile) and mask-pii.
    let policy_gw = if suite("pgbench") || suite("results") {
        let dir = plugins_dir_of(
            "policies",
            &[
                ("guardrails", "10-guardrails", ""),
                ("mask_pii", "20-mask_pii", MASK_PII_BENCH),
            ],
        )?;
        Some(bench_gateway(&pg, Some(dir))?)
    } else {
        None
    };
    if let Some(g) = policy_gw.as_ref().filter(|_| suite("pgbench")) {
        targets.push(target_of("pgward+guardrails+mask-pii", g));
    }
    // The bare gateway again with the audit trail on: a record per session and statement,
    // file sink, synced after every written batch.
    let audit_gw = if suite("pgbench") {
        let dir = std::env::temp_dir().join(format!("pgward-bench-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let toml = format!(
            "[audit]\ndirectory = \"{}\"\nfsync = \"batch\"\n",
            dir.display()
        );
        Some(bench_gateway_with(&pg, None, toml)?)
    } else {
        None
    };
    if let Some(g) = &audit_gw {
        targets.push(target_of("pgward+audit", g));
    }
    // And without the sync: what the records cost apart from the disk's flush.
    let audit_nosync_gw = if suite("pgbench") {
        let dir =
            std::env::temp_dir().join(format!("pgward-bench-audit-nosync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let toml = format!(
            "[audit]\ndirectory = \"{}\"\nfsync = \"never\"\n",
            dir.display()
        );
        Some(bench_gateway_with(&pg, None, toml)?)
    } else {
        None
    };
    if let Some(g) = &audit_nosync_gw {
        targets.push(target_of("pgward+audit fsync=never", g));
    }
    // `BENCH_BASELINE_BIN`: gateways again from another build, for a no-regression comparison
    // of two commits in one interleaved run: bare, with guardrails + mask-pii (pgbench) and
    // masking one column (results).
    let baseline_bin = std::env::var_os("BENCH_BASELINE_BIN").map(std::path::PathBuf::from);
    let baseline = |plugins_dir: Option<std::path::PathBuf>| -> Result<Option<Gateway>> {
        let Some(bin) = &baseline_bin else {
            return Ok(None);
        };
        let g = Gateway::start(
            &pg,
            GatewayOptions {
                listen_extra: format!(
                    "max_connections = 500\nworkers = {}",
                    env_num("BENCH_WORKERS", 0)
                ),
                log_level: "info".into(),
                plugins_dir,
                binary: Some(bin.clone()),
                ..Default::default()
            },
        )?;
        Ok(Some(g))
    };
    let baseline_gw = if suite("pgbench") {
        baseline(None)?
    } else {
        None
    };
    if let Some(g) = &baseline_gw {
        targets.push(target_of("pgward baseline", g));
    }
    let baseline_policy_gw = if suite("pgbench") && baseline_bin.is_some() {
        baseline(Some(plugins_dir_of(
            "policies-baseline",
            &[
                ("guardrails", "10-guardrails", ""),
                ("mask_pii", "20-mask_pii", MASK_PII_BENCH),
            ],
        )?))?
    } else {
        None
    };
    if let Some(g) = &baseline_policy_gw {
        targets.push(target_of("baseline+guardrails+mask-pii", g));
    }
    if !skip_bouncer {
        let (child, port) = start_pgbouncer(&pg, &db, &gw.dir.join("pgbouncer"))?;
        targets.push(Target {
            name: "pgbouncer",
            port,
            user: UPSTREAM_USER.into(),
            password: UPSTREAM_PASSWORD.into(),
            proxy_pid: Some(child.id()),
        });
        bouncer_child = Some(child);
    }
    // `BENCH_TARGETS` (comma-separated names) keeps only some pgbench targets besides direct
    // and bare pgward: fewer targets per round, so a comparison drifts less with the machine.
    if let Ok(only) = std::env::var("BENCH_TARGETS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        targets.retain(|t| {
            matches!(t.name, "direct" | "pgward" | "pgward baseline") || only.contains(&t.name)
        });
    }
    // Result plugins: an identity transform of every column, and masking of one column.
    let mut result_gws: Vec<(&'static str, Gateway)> = Vec::new();
    if suite("results") {
        let identity = one_plugin_dir(
            "batch_transform",
            "identity",
            "mode = \"identity\"\ncolumns = [\"*\"]\n",
        )?;
        let mask = one_plugin_dir("mask_column", "mask", "columns = [\"email\"]\n")?;
        result_gws.push(("pgward+identity", bench_gateway(&pg, Some(identity))?));
        result_gws.push(("pgward+mask 1 column", bench_gateway(&pg, Some(mask))?));
        let mask = one_plugin_dir("mask_column", "mask-baseline", "columns = [\"email\"]\n")?;
        if let Some(g) = baseline(Some(mask))? {
            result_gws.push(("baseline+mask 1 column", g));
        }
    }
    let mut result_targets: Vec<Target> = result_gws
        .iter()
        .map(|(name, g)| target_of(name, g))
        .collect();
    if let Some(g) = policy_gw.as_ref().filter(|_| suite("results")) {
        result_targets.push(target_of("pgward+guardrails+mask-pii", g));
    }
    // The same with the partial strategy (keep the last 4 characters) instead of the hash.
    let partial_gw = if suite("results") {
        let config = MASK_PII_BENCH.replace(
            "strategy = \"hash\"",
            "strategy = \"partial\"\nkeep_last = 4",
        );
        let dir = plugins_dir_of("mask-pii-partial", &[("mask_pii", "mask_pii", &config)])?;
        Some(bench_gateway(&pg, Some(dir))?)
    } else {
        None
    };
    if let Some(g) = &partial_gw {
        result_targets.push(target_of("pgward+mask-pii partial", g));
    }
    let postmaster = postmaster_pid(&pg)?;
    if std::env::args().nth(1).as_deref() == Some("serve") {
        // For profiling by hand: keep everything up and say where it is.
        for t in targets.iter().chain(&result_targets) {
            println!(
                "{} port={} user={} password={} db={db} pid={:?}",
                t.name, t.port, t.user, t.password, t.proxy_pid
            );
        }
        let secs = env_num("BENCH_SERVE_SECONDS", 600);
        // Ctrl-C ends it early and still stops every server (they are dropped on return).
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(());
    }
    eprintln!("binary: {}", pgward_e2e::pgward_bin().display());

    let configs: Vec<(&str, u32)> = vec![
        ("simple", 8),
        ("simple", 32),
        ("prepared", 8),
        ("prepared", 32),
    ];
    // (config, target) -> samples
    let mut results: BTreeMap<(String, &str), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for (mode, clients) in configs.iter().filter(|_| suite("pgbench")) {
            for t in &targets {
                let before = (
                    t.proxy_pid.map(|p| proc_cpu(p, false)).unwrap_or(0.0),
                    postgres_cpu(postmaster),
                    reaped_children_cpu(),
                    machine_switches(),
                    t.proxy_pid.map(proc_switches).unwrap_or(0),
                );
                let tps = pgbench(t, &db, mode, *clients, seconds)?;
                let switched = (
                    machine_switches(),
                    t.proxy_pid.map(proc_switches).unwrap_or(0),
                );
                std::thread::sleep(Duration::from_millis(300));
                let after = (
                    t.proxy_pid.map(|p| proc_cpu(p, false)).unwrap_or(0.0),
                    postgres_cpu(postmaster),
                    reaped_children_cpu(),
                );
                eprintln!("round {round} {mode} c={clients} {}: {tps:.0} tps", t.name);
                results
                    .entry((format!("pgbench -S -M {mode} -c {clients}"), t.name))
                    .or_default()
                    .push(Sample {
                        value: tps,
                        proxy_cpu: after.0 - before.0,
                        postgres_cpu: after.1 - before.1,
                        client_cpu: after.2 - before.2,
                        switches: switched.0.saturating_sub(before.3),
                        proxy_switches: switched.1.saturating_sub(before.4),
                    });
            }
        }
        for t in targets
            .iter()
            .filter(|t| suite("stream") && (t.name == "direct" || t.name == "pgward"))
        {
            let before = (
                t.proxy_pid.map(|p| proc_cpu(p, false)).unwrap_or(0.0),
                postgres_cpu(postmaster),
            );
            let rps = stream_rows(t, &db).await?;
            let after = (
                t.proxy_pid.map(|p| proc_cpu(p, false)).unwrap_or(0.0),
                postgres_cpu(postmaster),
            );
            eprintln!("round {round} stream {}: {rps:.0} rows/s", t.name);
            results
                .entry((format!("stream {rows} rows (rows/s)"), t.name))
                .or_default()
                .push(Sample {
                    value: rps,
                    proxy_cpu: after.0 - before.0,
                    postgres_cpu: after.1 - before.1,
                    client_cpu: 0.0,
                    switches: 0,
                    proxy_switches: 0,
                });
        }
        let wide: Vec<&Target> = targets
            .iter()
            .filter(|t| t.name == "direct" || t.name == "pgward")
            .chain(&result_targets)
            .filter(|_| suite("results"))
            .collect();
        for t in wide.iter().filter(|t| t.name != "pgward+identity") {
            let (n, rps) = stream_query(t, &db, "SELECT email FROM bench_wide").await?;
            if n != wide_rows {
                bail!("{}: {n} rows of {wide_rows}", t.name);
            }
            eprintln!("round {round} pii column {}: {rps:.0} rows/s", t.name);
            results
                .entry((
                    format!("1-column PII result, {wide_rows} rows (rows/s)"),
                    t.name,
                ))
                .or_default()
                .push(Sample {
                    value: rps,
                    ..Default::default()
                });
        }
        for t in wide {
            let before = (
                t.proxy_pid.map(|p| proc_cpu(p, false)).unwrap_or(0.0),
                postgres_cpu(postmaster),
            );
            let (n, rps) = stream_query(t, &db, WIDE_SELECT).await?;
            if n != wide_rows {
                bail!("{}: {n} rows of {wide_rows}", t.name);
            }
            let after = (
                t.proxy_pid.map(|p| proc_cpu(p, false)).unwrap_or(0.0),
                postgres_cpu(postmaster),
            );
            eprintln!("round {round} wide {}: {rps:.0} rows/s", t.name);
            results
                .entry((
                    format!("wide 10-column result, {wide_rows} rows (rows/s)"),
                    t.name,
                ))
                .or_default()
                .push(Sample {
                    value: rps,
                    proxy_cpu: after.0 - before.0,
                    postgres_cpu: after.1 - before.1,
                    client_cpu: 0.0,
                    switches: 0,
                    proxy_switches: 0,
                });
        }
    }

    let mut all_targets: Vec<&Target> = targets.iter().collect();
    for t in &result_targets {
        if !all_targets.iter().any(|a| a.name == t.name) {
            all_targets.push(t);
        }
    }
    // Peak memory of a long result through a subscribing plugin, on a gateway that has done
    // nothing else (its peak before is that of a fresh process after one small query).
    let mut memory_note = None;
    if suite("results") {
        let dir = one_plugin_dir("mask_column", "mask-memory", "columns = [\"email\"]\n")?;
        let g = bench_gateway(&pg, Some(dir))?;
        let t = target_of("pgward+mask 1 column", &g);
        stream_query(&t, &db, "SELECT 'a@example.com' AS email").await?;
        let before = peak_rss_kib(g.pid());
        let sql = format!(
            "SELECT g::int8 AS id, md5(g::text) AS name, 'user' || g || '@example.com' AS email, \
             (g % 1000)::int4 AS score, g / 7.0::float8 AS ratio FROM generate_series(1, {memory_rows}) g"
        );
        let (n, rps) = stream_query(&t, &db, &sql).await?;
        let after = peak_rss_kib(g.pid());
        memory_note = Some(format!(
            "{n} rows (5 columns, e-mails masked) through a fresh pgward with mask-column: {rps:.0} rows/s; \
             gateway peak RSS {} MiB before, {} MiB after: growth {} MiB",
            before / 1024,
            after / 1024,
            after.saturating_sub(before) / 1024
        ));
    }

    println!("\n{rounds} interleaved rounds, {seconds} s per pgbench run, pgbench scale {scale}, medians; CPU = seconds per run (median)\n");
    println!("| workload | target | TPS or rows/s | vs direct | vs PgBouncer | proxy CPU s | postgres CPU s | pgbench CPU s |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let workloads: Vec<String> = {
        let mut w: Vec<String> = results.keys().map(|(w, _)| w.clone()).collect();
        w.dedup();
        w
    };
    for w in &workloads {
        let med = |name: &str| -> Option<(f64, f64, f64, f64)> {
            let s = results.get(&(w.clone(), name))?;
            let mut v: Vec<f64> = s.iter().map(|x| x.value).collect();
            let mut p: Vec<f64> = s.iter().map(|x| x.proxy_cpu).collect();
            let mut g: Vec<f64> = s.iter().map(|x| x.postgres_cpu).collect();
            let mut c: Vec<f64> = s.iter().map(|x| x.client_cpu).collect();
            Some((
                median(&mut v),
                median(&mut p),
                median(&mut g),
                median(&mut c),
            ))
        };
        let direct = med("direct").map(|m| m.0);
        let bouncer = med("pgbouncer").map(|m| m.0);
        for t in &all_targets {
            let Some((v, p, g, c)) = med(t.name) else {
                continue;
            };
            let ratio = |base: Option<f64>| {
                base.filter(|b| *b > 0.0)
                    .map(|b| format!("{:.2}x", v / b))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "| {w} | {} | {v:.0} | {} | {} | {} | {g:.1} | {} |",
                t.name,
                ratio(direct),
                ratio(bouncer),
                if t.proxy_pid.is_some() {
                    format!("{p:.1}")
                } else {
                    "-".into()
                },
                if c > 0.0 {
                    format!("{c:.1}")
                } else {
                    "-".into()
                },
            );
        }
    }
    // The same rounds compared one by one: each target against bare pgward in the same round,
    // which drifts less with a noisy machine than the medians above.
    println!("\nPer-round ratio to bare pgward (median, range) and context switches per transaction (median: whole machine, proxy)\n");
    println!("| workload | target | ratio to pgward | range | switches / transaction | proxy switches / transaction |");
    println!("|---|---|---:|---:|---:|---:|");
    for w in workloads.iter().filter(|w| w.starts_with("pgbench")) {
        let Some(bare) = results.get(&(w.clone(), "pgward")) else {
            continue;
        };
        for t in &all_targets {
            let Some(s) = results.get(&(w.clone(), t.name)) else {
                continue;
            };
            let mut ratios: Vec<f64> = s
                .iter()
                .zip(bare)
                .filter(|(_, b)| b.value > 0.0)
                .map(|(x, b)| x.value / b.value)
                .collect();
            let per_txn = |n: u64, x: &Sample| n as f64 / (x.value * seconds as f64).max(1.0);
            let mut machine: Vec<f64> = s.iter().map(|x| per_txn(x.switches, x)).collect();
            let mut proxy: Vec<f64> = s.iter().map(|x| per_txn(x.proxy_switches, x)).collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            println!(
                "| {w} | {} | {:.2}x | {lo:.2}-{hi:.2} | {:.2} | {} |",
                t.name,
                median(&mut ratios),
                median(&mut machine),
                if t.proxy_pid.is_some() {
                    format!("{:.2}", median(&mut proxy))
                } else {
                    "-".into()
                },
            );
        }
    }
    if let Some(note) = memory_note {
        println!("\n{note}");
    }
    if let Some(mut c) = bouncer_child {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(plugin_gw);
    drop(policy_gw);
    drop(partial_gw);
    drop(gw);
    Ok(())
}
