//! Test harness for end-to-end tests: a throwaway PostgreSQL server, the real `pgward` binary on
//! a loopback port, and helpers for real clients (psql, pgbench, tokio-postgres).
//!
//! The server is started once per test binary and killed with it (parent-death signal), data
//! directories live under the system temp dir and are removed by the next run. When tests run
//! as root the server runs as the `postgres` user, as PostgreSQL refuses to run as root.

use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The role the gateway uses towards the upstream, and its password.
pub const UPSTREAM_USER: &str = "pgward_gw";
pub const UPSTREAM_PASSWORD: &str = "gw-secret-1";
/// The superuser of the throwaway server (trust over its Unix socket only).
pub const SUPERUSER: &str = "postgres";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A free loopback port (bound and released; collisions are retried by callers that start servers).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A new empty directory of this test process under the system's temporary directory.
pub fn unique_dir(prefix: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgward-test-{}-{prefix}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

/// Polls `f` every 50 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// The fields of `/proc/PID/stat` after the parenthesised command name: state, parent pid, ….
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Removes temp dirs of earlier test processes that are gone.
fn clean_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pgward-test-") else {
            continue;
        };
        let pid: u32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Directory with PostgreSQL server binaries: $PGWARD_PG_BIN, else the newest under
/// /usr/lib/postgresql, else whatever `initdb` is on PATH.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PGWARD_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!("PostgreSQL server binaries not found: install postgresql or set PGWARD_PG_BIN");
    }
    Ok(Path::new(&path)
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` user, used to run the server when tests run as root.
fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        if !out.status.success() {
            bail!("tests run as root, and there is no `postgres` user to run the server as");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_recursive(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Kills the child with `signal` when the thread that spawned it ends.
fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A throwaway PostgreSQL server.
pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub socket_dir: PathBuf,
    as_user: Option<(u32, u32)>,
    /// Extra `name=value` server settings, given on every (re)start.
    settings: Vec<String>,
}

impl Postgres {
    /// The server shared by all tests of this binary, started on first use.
    pub fn shared() -> &'static Postgres {
        static PG: OnceLock<Postgres> = OnceLock::new();
        PG.get_or_init(|| Postgres::start().expect("starting the throwaway PostgreSQL"))
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.as_user {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C");
        cmd
    }

    /// initdb into a fresh directory and start the server on a free port.
    pub fn start() -> Result<Postgres> {
        Self::start_with(&[])
    }

    /// [`Postgres::start`] with extra `name=value` settings (`max_connections=20`), which
    /// override the defaults here.
    pub fn start_with(settings: &[&str]) -> Result<Postgres> {
        clean_stale_dirs();
        let bin = pg_bin_dir()?;
        let dir = unique_dir("pg");
        let as_user = if is_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        let socket_dir = dir.join("sock");
        std::fs::create_dir_all(&socket_dir)?;
        if let Some((uid, gid)) = as_user {
            chown_recursive(&dir, uid, gid)?;
        }
        let mut pg = Postgres {
            port: 0,
            dir,
            bin,
            socket_dir,
            as_user,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Several attempts in case another process takes the port between probe and bind.
        for _ in 0..5 {
            pg.port = free_port();
            if pg.spawn_server(&data)? {
                pg.bootstrap()?;
                return Ok(pg);
            }
        }
        bail!(
            "PostgreSQL did not start; see {}",
            pg.dir.join("postgres.log").display()
        )
    }

    fn spawn_server(&self, data: &Path) -> Result<bool> {
        // Appended to, so a restarted server's log follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        if let Some((uid, gid)) = self.as_user {
            std::os::unix::fs::chown(self.dir.join("postgres.log"), Some(uid), Some(gid))?;
        }
        let mut cmd = self.command("postgres");
        cmd.args(["-D", data.to_str().unwrap(), "-p", &self.port.to_string()])
            .args(["-k", self.socket_dir.to_str().unwrap()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"]);
        for setting in &self.settings {
            cmd.args(["-c", setting]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd, libc::SIGQUIT);
        // The parent-death signal fires when the spawning *thread* exits, so the server is
        // spawned from a thread that lives as long as the test process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    // Reaped here, so a server stopped or killed by a test leaves no zombie
                    // that a restart would take for a running postmaster.
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let pid = rx.recv()?.context("spawning postgres")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Ok(false);
            }
            let ready = self
                .command("pg_isready")
                .args([
                    "-q",
                    "-h",
                    self.socket_dir.to_str().unwrap(),
                    "-p",
                    &self.port.to_string(),
                ])
                .status()?;
            if ready.success() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(false)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The postmaster's process id, from its pid file (`None` when it is not running).
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server with `pg_ctl stop -m MODE` (`fast`: backends end with 57P01).
    pub fn stop(&self, mode: &str) -> Result<()> {
        let data = self.data_dir();
        let out = self
            .command("pg_ctl")
            .args(["stop", "-w", "-t", "30", "-m", mode, "-D"])
            .arg(&data)
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `kill -9` of the postmaster and every process it started, as a crash would; waits until
    /// they are gone.
    pub fn kill9(&self) -> Result<()> {
        let pid = self.postmaster_pid().context("the server is not running")?;
        // The postmaster is stopped first, so that it forks nothing more and neither it (crash
        // recovery: 57P02) nor a backend (postmaster death: 57P01) can say anything before all
        // of them are gone.
        // SAFETY: kill with pids of the server this harness started.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        let children: Vec<i32> = std::fs::read_dir("/proc")?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| proc_stat(p).and_then(|f| f.get(1)?.parse::<i32>().ok()) == Some(pid))
            .collect();
        for p in children.iter().copied().chain(std::iter::once(pid)) {
            // SAFETY: as above.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::iter::once(pid)
            .chain(children.iter().copied())
            .any(alive)
        {
            if Instant::now() > deadline {
                bail!("the killed server processes are still there");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts the server again on the same port and data, after [`Postgres::stop`] or
    /// [`Postgres::kill9`] (crash recovery runs then).
    pub fn restart(&self) -> Result<()> {
        let data = self.data_dir();
        // A killed postmaster leaves its pid file; nothing of it runs any more.
        if self.postmaster_pid().is_some_and(|p| !alive(p)) {
            let _ = std::fs::remove_file(data.join("postmaster.pid"));
        }
        if !self.spawn_server(&data)? {
            bail!(
                "PostgreSQL did not start again; see {}",
                self.dir.join("postgres.log").display()
            );
        }
        Ok(())
    }

    fn bootstrap(&self) -> Result<()> {
        self.superuser_sql(
            "postgres",
            &format!("CREATE ROLE {UPSTREAM_USER} LOGIN CREATEDB PASSWORD '{UPSTREAM_PASSWORD}';"),
        )?;
        Ok(())
    }

    /// Runs SQL as the superuser over the Unix socket, failing on any error.
    pub fn superuser_sql(&self, db: &str, sql: &str) -> Result<String> {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                self.socket_dir.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", SUPERUSER, "-d", db, "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!(
                "psql as superuser failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A fresh database owned by the gateway's upstream role.
    pub fn create_database(&self, prefix: &str) -> Result<String> {
        let name = format!("{prefix}_{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        self.superuser_sql(
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {UPSTREAM_USER};"),
        )?;
        Ok(name)
    }

    /// A tokio-postgres connection string straight to the server, as the upstream role.
    pub fn direct_conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={UPSTREAM_USER} password={UPSTREAM_PASSWORD} dbname={db}",
            self.port
        )
    }
}

/// A client account of the gateway.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub password: String,
    pub groups: Vec<String>,
}

impl TestUser {
    pub fn new(name: &str, password: &str, groups: &[&str]) -> Self {
        TestUser {
            name: name.into(),
            password: password.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// Options for a gateway under test.
pub struct GatewayOptions {
    pub users: Vec<TestUser>,
    /// Extra TOML appended to the generated `[listen]` table (e.g. `max_connections = 2`).
    pub listen_extra: String,
    /// Extra keys in `[upstream]`.
    pub upstream_extra: String,
    /// Enable TLS with a generated self-signed certificate in this mode.
    pub tls_mode: Option<&'static str>,
    /// Extra keys for the `[tls]` table (e.g. `client_ca = [...]`).
    pub tls_extra: String,
    /// Point the upstream somewhere else (e.g. a dead port).
    pub upstream_port: Option<u16>,
    /// Extra top-level TOML tables.
    pub extra_toml: String,
    /// `auth.method = "trust"` instead of SCRAM.
    pub trust: bool,
    /// `log.level`; tests log at debug, benchmarks at info.
    pub log_level: String,
    /// `plugins.directory`, plus extra keys for the `[plugins]` table.
    pub plugins_dir: Option<PathBuf>,
    pub plugins_extra: String,
    /// The gateway's upstream role and password, instead of [`UPSTREAM_USER`]'s.
    pub upstream_login: Option<(String, String)>,
    /// Serve the admin HTTP server (`/metrics`) on a free port: [`Gateway::metric`].
    pub admin: bool,
    /// Another `pgward` binary than [`pgward_bin`] (a benchmark's baseline build).
    pub binary: Option<PathBuf>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            users: vec![TestUser::new("alice", "alice-pw", &["dev"])],
            listen_extra: String::new(),
            upstream_extra: String::new(),
            tls_mode: None,
            tls_extra: String::new(),
            upstream_port: None,
            extra_toml: String::new(),
            trust: false,
            log_level: "info,pgward=debug".into(),
            plugins_dir: None,
            plugins_extra: String::new(),
            upstream_login: None,
            admin: false,
            binary: None,
        }
    }
}

/// Path of the `pgward` binary built next to the test executable.
pub fn pgward_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PGWARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Tests live in target/<profile>/deps/, other binaries in target/<profile>/.
    let dir = exe.parent().expect("executable in a directory");
    let bin = [
        dir.join("pgward"),
        dir.parent().unwrap_or(dir).join("pgward"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| dir.join("pgward"));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p pgward)",
        bin.display()
    );
    bin
}

/// The cargo target directory the tests were built in (where `scripts/build-plugins.sh` puts
/// the plugins and `scripts/prereqs.sh` the npm drivers).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|p| p.join("plugins").is_dir() && p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A plugin built by `scripts/build-plugins.sh` (`target/plugins/NAME.wasm`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = target_dir().join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (scripts/build-plugins.sh)",
        path.display()
    );
    path
}

/// A fresh, empty plugins directory for one test.
pub fn plugins_dir() -> PathBuf {
    unique_dir("plugins")
}

/// A fresh plugins directory with the example policies: guardrails and mask-pii with its
/// example configuration (`plugins/mask-pii/mask_pii.toml`), which allows one more function to
/// masked identities: `pg_sleep`, so tests have a statement that runs until it is cancelled or
/// the server goes away (mask-pii refuses it by default: a sleep whose length depends on a
/// value is a timing channel).
pub fn policy_plugins_dir() -> PathBuf {
    let dir = plugins_dir();
    let example = include_str!("../../plugins/mask-pii/mask_pii.toml");
    let config = example.replace(
        "\nallow_functions = []\n",
        "\nallow_functions = [\"pg_sleep\"]\n",
    );
    assert_ne!(
        config, example,
        "mask_pii.toml no longer has `allow_functions = []`"
    );
    std::fs::write(dir.join("20-mask_pii.toml"), config).expect("writing the mask-pii config");
    for (wasm, file) in [("guardrails", "10-guardrails"), ("mask_pii", "20-mask_pii")] {
        // Copied aside and renamed, as a deployment would, so no half-written file is loaded.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::copy(plugin_wasm(wasm), &tmp).expect("copying a plugin");
        std::fs::rename(&tmp, dir.join(format!("{file}.wasm"))).expect("installing a plugin");
    }
    dir
}

/// A running `pgward` process.
pub struct Gateway {
    pub port: u16,
    /// The admin server's port, with [`GatewayOptions::admin`].
    pub admin_port: Option<u16>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub users: Vec<TestUser>,
    pub cert_path: Option<PathBuf>,
    child: Option<Child>,
}

impl Gateway {
    /// Writes a config for `pg` and starts the binary, waiting until it accepts connections.
    pub fn start(pg: &Postgres, opts: GatewayOptions) -> Result<Gateway> {
        let dir = unique_dir("gw");
        let mut cert_path = None;
        let mut tls = String::new();
        if let Some(mode) = opts.tls_mode {
            let cert =
                rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
            std::fs::write(dir.join("server.crt"), cert.cert.pem())?;
            std::fs::write(dir.join("server.key"), cert.key_pair.serialize_pem())?;
            cert_path = Some(dir.join("server.crt"));
            tls = format!(
                "[tls]\nmode = \"{mode}\"\ncert = \"server.crt\"\nkey = \"server.key\"\n{}\n",
                opts.tls_extra
            );
        }
        let mut users = String::new();
        if opts.trust {
            users.push_str("[auth]\nmethod = \"trust\"\n\n");
        }
        for u in &opts.users {
            let v = pgward::auth::scram::Verifier::generate(&u.password, 4096)?;
            users.push_str(&format!(
                "[[auth.users]]\nname = \"{}\"\npassword = \"{v}\"\ngroups = {:?}\n",
                u.name, u.groups
            ));
        }
        let plugins = match &opts.plugins_dir {
            Some(d) => format!(
                "[plugins]\ndirectory = \"{}\"\n{}\n",
                d.display(),
                opts.plugins_extra
            ),
            None => String::new(),
        };
        let (up_user, up_password) = opts
            .upstream_login
            .clone()
            .unwrap_or_else(|| (UPSTREAM_USER.into(), UPSTREAM_PASSWORD.into()));
        for _ in 0..5 {
            let port = free_port();
            let admin_port = opts.admin.then(free_port);
            let admin = match admin_port {
                Some(a) => format!("[admin]\naddress = \"127.0.0.1:{a}\"\n"),
                None => String::new(),
            };
            let config = format!(
                "[listen]\naddress = \"127.0.0.1:{port}\"\n{}\n{tls}\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{up_user}\"\npassword = \"{up_password}\"\n{}\n\n[log]\nlevel = \"{}\"\n\n{plugins}\n{users}\n{admin}\n{}\n",
                opts.listen_extra,
                opts.upstream_port.unwrap_or(pg.port),
                opts.upstream_extra,
                opts.log_level,
                opts.extra_toml,
            );
            let config_path = dir.join("pgward.toml");
            std::fs::write(&config_path, config)?;
            let log = std::fs::File::create(dir.join("pgward.log"))?;
            let mut cmd = Command::new(opts.binary.clone().unwrap_or_else(pgward_bin));
            cmd.arg("run")
                .arg("--config")
                .arg(&config_path)
                .env_remove("RUST_LOG")
                .env_remove("PGWARD_UPSTREAM_PASSWORD")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            die_with_parent(&mut cmd, libc::SIGKILL);
            let mut child = cmd.spawn().context("spawning pgward")?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(dir.join("pgward.log")).unwrap_or_default();
                    if log.contains("Address already in use") {
                        break;
                    }
                    bail!("pgward exited with {status}:\n{log}");
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Gateway {
                        port,
                        admin_port,
                        dir,
                        config_path,
                        users: opts.users,
                        cert_path,
                        child: Some(child),
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("pgward did not start listening within 20 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("no free port for pgward after 5 attempts")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The sum of metric `name`'s samples whose labels include `labels`, read from the admin
    /// server's `/metrics` (needs [`GatewayOptions::admin`]).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let port = self.admin_port.expect("started with GatewayOptions::admin");
        let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .expect("a text body");
        metric_sum(&text, name, labels)
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgward.log")).unwrap_or_default()
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill with a pid we spawned and still own.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, sig);
        }
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the gateway process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn user(&self, name: &str) -> &TestUser {
        self.users
            .iter()
            .find(|u| u.name == name)
            .expect("no such test user")
    }

    /// A libpq/tokio-postgres connection string for a gateway user.
    pub fn conn_str(&self, user: &str, db: &str) -> String {
        let u = self.user(user);
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={db}",
            self.port, u.name, u.password
        )
    }

    /// Runs pgbench through the gateway as `user`, panicking with its output if it fails;
    /// returns stdout and stderr.
    pub fn pgbench(&self, user: &str, db: &str, args: &[&str]) -> String {
        let u = self.user(user);
        let out = Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                &u.name,
            ])
            .args(args)
            .arg(db)
            .env("PGPASSWORD", &u.password)
            .output()
            .expect("pgbench is installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
        text
    }

    /// Connects with tokio-postgres (no TLS) and drives the connection in the background.
    pub async fn connect(&self, user: &str, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_str(user, db), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs psql against the gateway; `extra` are more psql arguments (e.g. `-c`, `-f`).
    pub fn psql(&self, user: &str, db: &str, extra: &[&str], stdin: Option<&str>) -> Output {
        let u = self.user(user);
        run_psql(
            &format!(
                "host=127.0.0.1 port={} user={} dbname={db}",
                self.port, u.name
            ),
            &u.password,
            extra,
            stdin,
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs psql with a connection string, a password, and extra arguments.
pub fn run_psql(conninfo: &str, password: &str, extra: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
    ])
    .args(extra)
    .env("PGPASSWORD", password)
    .env("PGCONNECT_TIMEOUT", "10")
    .env_remove("PGSSLMODE")
    .stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("psql is installed");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().expect("psql ran")
}

/// The value of a `prefix` line of a pgbench report (e.g. `"number of failed transactions:"`).
pub fn pgbench_field(report: &str, prefix: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{report}"))
        .trim()
        .to_owned()
}

/// Panics unless a pgbench report says no transaction failed.
pub fn assert_no_failed_transactions(report: &str) {
    let failed = pgbench_field(report, "number of failed transactions:");
    assert!(
        failed.starts_with("0 "),
        "failed transactions: {failed}\n{report}"
    );
}

/// stdout of a successful command, or a panic with its stderr.
pub fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects tokio-postgres straight to the server, bypassing the gateway.
pub async fn connect_direct(pg: &Postgres, db: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(&pg.direct_conn_str(db), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A hand-driven protocol client for tests that need exact control over the bytes sent.
pub struct RawClient {
    stream: Box<dyn RawStream>,
    buf: Vec<u8>,
}

/// A byte stream a [`RawClient`] speaks over: TCP or a Unix socket.
pub trait RawStream: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> RawStream for T {}

impl RawClient {
    pub fn connect(port: u16) -> std::io::Result<RawClient> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream: Box::new(stream),
            buf: Vec::new(),
        })
    }

    /// Connects straight to `pg` over its Unix socket, where the upstream role needs no
    /// password; the bytes that come back are the server's own, for comparisons.
    pub fn connect_direct(pg: &Postgres, db: &str) -> std::io::Result<RawClient> {
        let path = pg.socket_dir.join(format!(".s.PGSQL.{}", pg.port));
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut c = RawClient {
            stream: Box::new(stream),
            buf: Vec::new(),
        };
        c.startup(UPSTREAM_USER, db)?;
        c.read_until_ready()?;
        Ok(c)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a typed message with a correct length.
    pub fn send(&mut self, tag: u8, body: &[u8]) -> std::io::Result<()> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.send_raw(&m)
    }

    /// Sends a StartupMessage (protocol 3.0) for a trust-mode gateway.
    pub fn startup(&mut self, user: &str, db: &str) -> std::io::Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", user), ("database", db)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        self.send_raw(&m)
    }

    /// Reads one message; `None` at end of stream.
    pub fn read_message(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        use std::io::Read as _;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let body = self.buf[5..len + 1].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..len + 1);
                    return Ok(Some((tag, body)));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages up to and including ReadyForQuery (or the end of the stream).
    pub fn read_until_ready(&mut self) -> std::io::Result<Vec<(u8, Vec<u8>)>> {
        let mut out = Vec::new();
        while let Some(m) = self.read_message()? {
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Sends a simple Query.
    pub fn query(&mut self, sql: &str) -> std::io::Result<()> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body)
    }
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(error_body: &[u8]) -> String {
    let mut rest = error_body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if field == b'C' {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    String::new()
}

/// Protocol messages for [`RawClient`] scripts: tag and body, built by the functions here.
pub mod wire {
    use super::RawClient;

    /// A protocol message: tag and body.
    pub type Message = (u8, Vec<u8>);

    pub fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn query(sql: &str) -> Message {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        (b'Q', b)
    }

    pub fn parse(name: &str, sql: &str) -> Message {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&0i16.to_be_bytes());
        (b'P', b)
    }

    /// Bind with no parameters and every result column in `format` (0 text, 1 binary).
    pub fn bind(portal: &str, stmt: &str, format: i16) -> Message {
        bind_params(portal, stmt, &[], format)
    }

    /// Bind with text parameters (`None`: NULL) and every result column in `format`.
    pub fn bind_params(portal: &str, stmt: &str, params: &[Option<&[u8]>], format: i16) -> Message {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        cstr(&mut b, stmt);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&format.to_be_bytes());
        (b'B', b)
    }

    pub fn describe_portal(portal: &str) -> Message {
        let mut b = vec![b'P'];
        cstr(&mut b, portal);
        (b'D', b)
    }

    pub fn execute(portal: &str, max_rows: i32) -> Message {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        b.extend_from_slice(&max_rows.to_be_bytes());
        (b'E', b)
    }

    pub fn sync() -> Message {
        (b'S', Vec::new())
    }

    /// Sends `script` and returns every message up to the last ReadyForQuery it causes.
    pub fn run(client: &mut RawClient, script: &[Message]) -> Vec<Message> {
        let readies = script
            .iter()
            .filter(|(t, _)| matches!(t, b'Q' | b'S'))
            .count();
        for (tag, body) in script {
            client.send(*tag, body).unwrap();
        }
        let mut out = Vec::new();
        for _ in 0..readies {
            out.extend(client.read_until_ready().unwrap());
        }
        out
    }
}

/// The sum of metric `name`'s samples in Prometheus exposition `text` whose labels include
/// `labels` (counters, gauges and untyped values). Panics when `text` does not parse.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
