//! The `pgward` command line.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pgward::config::Config;
use std::io::BufRead as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "pgward", version, about = "Identity-aware PostgreSQL gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Configuration file.
    #[arg(long, short, env = "PGWARD_CONFIG", default_value = "pgward.toml")]
    config: PathBuf,
    /// Overrides listen.address.
    #[arg(long, env = "PGWARD_LISTEN")]
    listen: Option<String>,
    /// Overrides upstream.host.
    #[arg(long, env = "PGWARD_UPSTREAM_HOST")]
    upstream_host: Option<String>,
    /// Overrides upstream.port.
    #[arg(long, env = "PGWARD_UPSTREAM_PORT")]
    upstream_port: Option<u16>,
    /// Overrides upstream.user.
    #[arg(long, env = "PGWARD_UPSTREAM_USER")]
    upstream_user: Option<String>,
    /// Overrides log.level.
    #[arg(long, env = "PGWARD_LOG")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. The upstream password may come from PGWARD_UPSTREAM_PASSWORD.
    Run(ConfigArgs),
    /// Validate the configuration and exit.
    CheckConfig(ConfigArgs),
    /// Read a password from standard input and print its SCRAM-SHA-256 verifier for auth.users.
    HashPassword {
        #[arg(long, default_value_t = pgward::auth::scram::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// Show the plugins the running gateway has loaded (from its status file).
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// List, show, approve or deny approval requests through the admin API.
    Approvals {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Bearer tokens for approvers of the admin API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Verify the audit trail, or make its signing key.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the SQL analysis of a statement as JSON.
    Explain {
        sql: String,
        /// Lex as a session with standard_conforming_strings = off would.
        #[arg(long)]
        no_standard_conforming_strings: bool,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Name, version, content hash, hooks, load time and last error of every plugin file.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of the gateway's admin API.
    #[arg(
        long,
        env = "PGWARD_ADMIN_URL",
        default_value = "http://127.0.0.1:6480",
        global = true
    )]
    url: String,
    /// Your approver token (from `pgward token new`).
    #[arg(long, env = "PGWARD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Requests, newest first.
    List {
        /// pending, approved, denied, expired, withdrawn, executed or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Only this requester's.
        #[arg(long)]
        requester: Option<String>,
        /// Only this approver group's.
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One request, as JSON: statement, parameters, requester, rule, decisions.
    Show { id: String },
    /// Approve a request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a request; the comment is shown to the requester.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and the signed checkpoints of audit files (or directories of
    /// them, in order); exits 1 at the first record that was edited, removed, inserted or
    /// reordered.
    Verify {
        /// Audit files or directories.
        #[arg(required_unless_present = "postgres")]
        paths: Vec<PathBuf>,
        /// Verify the records of the PostgreSQL sink instead (connection string of the control
        /// database; password may come from PGWARD_AUDIT_PASSWORD).
        #[arg(long, requires = "origin")]
        postgres: Option<String>,
        #[arg(long, default_value = "pgward")]
        postgres_schema: String,
        /// Whose chain to verify in the table: the gateway's audit.origin (default its
        /// listen.address).
        #[arg(long)]
        origin: Option<String>,
        /// The Ed25519 public key (64 hex digits, as `pgward audit keygen` prints it) that
        /// must have signed every checkpoint.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Write a new Ed25519 signing key (PKCS#8) for audit.signing_key and print its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

fn audit_command(command: AuditCommand) -> anyhow::Result<()> {
    use pgward::audit::chain;
    match command {
        AuditCommand::Keygen { out } => {
            anyhow::ensure!(!out.exists(), "{} exists already", out.display());
            let (pkcs8, public) = pgward::audit::generate_key()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            std::io::Write::write_all(&mut f, &pkcs8)?;
            println!("public key: {}", chain::hex(&public));
            Ok(())
        }
        AuditCommand::Verify {
            paths,
            public_key,
            postgres,
            postgres_schema,
            origin,
        } => {
            let key = match &public_key {
                Some(hex) => {
                    let bytes = (0..hex.len())
                        .step_by(2)
                        .map(|i| {
                            hex.get(i..i + 2)
                                .and_then(|b| u8::from_str_radix(b, 16).ok())
                        })
                        .collect::<Option<Vec<u8>>>()
                        .filter(|b| b.len() == 32)
                        .context("--public-key must be 64 hex digits")?;
                    Some(bytes)
                }
                None => None,
            };
            let mut files = Vec::new();
            for p in &paths {
                if p.is_dir() {
                    files.extend(
                        chain::files_in(p).with_context(|| format!("reading {}", p.display()))?,
                    );
                } else {
                    files.push(p.clone());
                }
            }
            let r = match (&postgres, &origin) {
                (Some(conn), Some(origin)) => {
                    let text = pgward::audit::postgres::read_all(conn, &postgres_schema, origin)?;
                    let name = format!("{postgres_schema}.audit_events[{origin}]");
                    chain::verify_sources(&[(name, text)], key.as_deref())
                }
                _ => chain::verify(&files, key.as_deref()),
            };
            for (file, line) in &r.unfinished {
                println!("{file}:{line}: unfinished record (the gateway stopped while writing it); the chain ends before it");
            }
            match (&r.problem, &r.last_checkpoint) {
                (Some(p), _) => {
                    println!("FAILED: {p}");
                    println!("{} records before it are intact", r.records);
                    std::process::exit(1);
                }
                (None, Some((seq, root))) => println!(
                    "ok: {} records up to seq {}, {} checkpoints verified; last checkpoint: seq {seq} root {root}; {} records after it are not sealed by a checkpoint",
                    r.records, r.last_seq, r.checkpoints, r.unsealed
                ),
                (None, None) if key.is_none() => println!(
                    "ok: {} records up to seq {}, chain intact; checkpoints not checked (no --public-key)",
                    r.records, r.last_seq
                ),
                (None, None) => println!(
                    "ok: {} records up to seq {}, chain intact; no signed checkpoint yet",
                    r.records, r.last_seq
                ),
            }
            Ok(())
        }
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token and the SHA-256 for `token_sha256` in `[[approvals.approvers]]`.
    New,
    /// Read a token on standard input and print its SHA-256.
    Hash,
}

fn approvals_command(api: ApiArgs, command: ApprovalsCommand) -> anyhow::Result<()> {
    let client = pgward::cli::ApiClient::new(&api.url, api.token);
    match command {
        ApprovalsCommand::List {
            status,
            requester,
            group,
            limit,
            json,
        } => {
            let mut query = format!("?status={}&limit={limit}", pgward::cli::encode(&status));
            if let Some(r) = requester {
                query.push_str(&format!("&requester={}", pgward::cli::encode(&r)));
            }
            if let Some(g) = group {
                query.push_str(&format!("&group={}", pgward::cli::encode(&g)));
            }
            let requests = client.list(&query)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&requests)?);
            } else {
                pgward::cli::print_list(&requests);
            }
        }
        ApprovalsCommand::Show { id } => {
            println!("{}", serde_json::to_string_pretty(&client.show(&id)?)?);
        }
        ApprovalsCommand::Approve { id, comment } => {
            let r = client.decide(&id, true, comment.as_deref())?;
            println!(
                "{id}: {}",
                r.get("status").and_then(|s| s.as_str()).unwrap_or("?")
            );
        }
        ApprovalsCommand::Deny { id, comment } => {
            let r = client.decide(&id, false, comment.as_deref())?;
            println!(
                "{id}: {}",
                r.get("status").and_then(|s| s.as_str()).unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(&args.config)?;
    if let Some(v) = &args.listen {
        config.listen.address = v.clone();
    }
    if let Some(v) = &args.upstream_host {
        config.upstream.host = v.clone();
    }
    if let Some(v) = args.upstream_port {
        config.upstream.port = v;
    }
    if let Some(v) = &args.upstream_user {
        config.upstream.user = v.clone();
    }
    if let Some(v) = &args.log_level {
        config.log.level = v.clone();
    }
    config.validate(&format!(
        "{} (with command-line overrides)",
        args.config.display()
    ))?;
    Ok(config)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgward: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = load(&args)?;
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.level.clone());
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            // This runtime only accepts connections and waits for signals; sessions run on
            // the gateway's worker threads.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let gateway = pgward::server::Gateway::bind(config).await?;
                gateway.run(shutdown_signal()).await;
                anyhow::Ok(())
            })
        }
        Command::CheckConfig(args) => {
            let config = load(&args)?;
            if config.tls.cert.is_some() && config.tls.key.is_some() {
                // Also reads the client CA bundles and CRLs.
                pgward::tls::client_facing_config(&config.tls)?;
            }
            pgward::auth::cert::CertRules::new(&config.auth.certificates).map_err(|e| {
                anyhow::anyhow!("{}: auth.certificates: {e}", args.config.display())
            })?;
            // Reads every JWKS file and fetches every JWKS URL, checking each key.
            pgward::auth::jwt::TokenVerifier::new(&config.auth.tokens)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
            if let Some(ca) = &config.upstream.ca_cert {
                pgward::tls::client_config(ca)?;
            }
            println!("{}: ok", args.config.display());
            Ok(())
        }
        Command::HashPassword { iterations } => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password on standard input");
            anyhow::ensure!(iterations > 0, "--iterations must be at least 1");
            let v = pgward::auth::scram::Verifier::generate(password, iterations)?;
            println!("{v}");
            Ok(())
        }
        Command::Plugins {
            command: PluginsCommand::List { config, json },
        } => {
            let config = load(&config)?;
            let path = pgward::plugins::status_path(&config.plugins)
                .context("plugins.directory is not set in the configuration")?;
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "{}: no status yet (is the gateway running with this config?)",
                    path.display()
                )
            })?;
            if json {
                println!("{text}");
                return Ok(());
            }
            let status: Vec<pgward::plugins::PluginStatus> = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a plugin status file", path.display()))?;
            println!(
                "{:<4} {:<24} {:<10} {:<14} {:<40} {:<12} last error",
                "pos", "name", "version", "hash", "hooks", "loaded"
            );
            for s in status {
                println!(
                    "{:<4} {:<24} {:<10} {:<14} {:<40} {:<12} {}",
                    s.position
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.name.unwrap_or_else(|| format!("({})", s.file)),
                    s.version.unwrap_or_default(),
                    s.hash
                        .map(|h| h[..12.min(h.len())].to_string())
                        .unwrap_or_default(),
                    s.hooks.join(","),
                    s.loaded_at.map(|t| t.to_string()).unwrap_or_default(),
                    s.last_error.unwrap_or_default(),
                );
            }
            Ok(())
        }
        Command::Approvals { api, command } => approvals_command(api, command),
        Command::Audit { command } => audit_command(command),
        Command::Token { command } => {
            match command {
                TokenCommand::New => {
                    let (token, hash) = pgward::cli::new_token()
                        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
                    println!("token:        {token}");
                    println!("token_sha256: {hash}");
                }
                TokenCommand::Hash => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the token from standard input")?;
                    let token = line.trim();
                    anyhow::ensure!(!token.is_empty(), "empty token on standard input");
                    println!(
                        "{}",
                        pgward::approvals::request::hex(&pgward::approvals::token_hash(token))
                    );
                }
            }
            Ok(())
        }
        Command::Explain {
            sql,
            no_standard_conforming_strings,
        } => {
            let opts = pgward::sql::LexOptions {
                standard_conforming_strings: !no_standard_conforming_strings,
            };
            let analysis = pgward::sql::analyze(&sql, opts);
            println!("{}", serde_json::to_string_pretty(&analysis)?);
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
