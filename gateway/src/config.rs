//! The gateway configuration: one TOML file, parsed strictly (unknown keys are errors), with
//! defaults for everything but the upstream. Errors name the file, the key and what is wrong.

use crate::auth::scram::Verifier;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub sql: SqlConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The approvals workflow; absent: a require-approval verdict is refused with 42501.
    #[serde(default)]
    pub approvals: Option<ApprovalsConfig>,
    /// The admin HTTP server (approvals API, health, readiness).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The audit trail; absent: no audit records.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
}

/// When the audit file is synced to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch the writer writes (at most a few milliseconds of events at risk).
    #[default]
    Batch,
    /// At most once a second.
    Interval,
    /// Left to the operating system.
    Never,
}

/// What happens to new statements while the audit trail cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailure {
    /// Refused with SQLSTATE 58030 until the writer catches up (fail closed).
    #[default]
    Refuse,
    /// Run; events beyond the queue are dropped and counted.
    Buffer,
}

/// Which statement text an audit record carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditText {
    /// Literals replaced by `?` (the fingerprint): no values in the trail.
    #[default]
    Normalized,
    /// The exact text.
    Full,
}

/// `[audit]`: the hash-chained audit trail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Write the JSON-lines files (`directory`).
    pub file: bool,
    /// Directory of `audit-NNNNNNNNNNNN.jsonl` files.
    pub directory: PathBuf,
    /// Also insert every record into `{postgres_schema}.audit_events` of this control database
    /// (libpq-style connection string; password may come from PGWARD_AUDIT_PASSWORD).
    pub postgres: Option<String>,
    pub postgres_schema: String,
    /// Also write every record to standard output.
    pub stdout: bool,
    /// Start a new file past this many bytes.
    pub max_file_size: u64,
    /// Start a new file after this long (`0s`: only by size).
    #[serde(deserialize_with = "duration")]
    pub rotate_every: Duration,
    pub fsync: Fsync,
    /// Group commit: how long the writer waits for more records after one arrives before it
    /// writes (and, with `fsync = "batch"`, syncs) them together (`0s`: write at once).
    #[serde(deserialize_with = "duration")]
    pub batch_wait: Duration,
    /// Events waiting for the writer.
    pub queue: usize,
    pub on_failure: AuditFailure,
    pub statement_text: AuditText,
    /// Record bound parameter values of the extended protocol.
    pub parameters: bool,
    /// Ed25519 PKCS#8 key (`pgward audit keygen`) that signs checkpoints.
    pub signing_key: Option<PathBuf>,
    /// A signed checkpoint after this many records (0: only by time and at shutdown).
    pub checkpoint_every: u64,
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    /// Name in checkpoints (default: `listen.address`).
    pub origin: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: true,
            directory: PathBuf::from("pgward-data/audit"),
            postgres: None,
            postgres_schema: "pgward".into(),
            stdout: false,
            max_file_size: 100 << 20,
            rotate_every: Duration::from_secs(24 * 3600),
            fsync: Fsync::Batch,
            batch_wait: Duration::from_millis(10),
            queue: 65536,
            on_failure: AuditFailure::Refuse,
            statement_text: AuditText::Normalized,
            parameters: false,
            signing_key: None,
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            origin: None,
        }
    }
}

/// Where approval requests are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStoreKind {
    /// One SQLite file (`sqlite_path`): one gateway needs nothing else.
    #[default]
    Sqlite,
    /// A schema of its own in a control database (`postgres`): several gateways share it.
    Postgres,
}

/// `[approvals]`: statements that need approval wait for a person or an AI controller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    pub store: ApprovalStoreKind,
    /// The SQLite file with the requests.
    pub sqlite_path: PathBuf,
    /// libpq-style connection string of the control database (store = "postgres"); its
    /// password may come from PGWARD_APPROVALS_PASSWORD instead.
    pub postgres: Option<String>,
    /// Schema of the approvals tables in the control database.
    pub postgres_schema: String,
    /// How long a held statement waits for its decision.
    #[serde(deserialize_with = "duration")]
    pub hold_timeout: Duration,
    /// How long a deferred request waits for its decision.
    #[serde(deserialize_with = "duration")]
    pub defer_timeout: Duration,
    /// After a deferred request is approved, how long its statement may be run (once).
    #[serde(deserialize_with = "duration")]
    pub valid_for: Duration,
    /// Base URL of the admin API as approvers reach it, for links in notifications
    /// (default: `http://` + `admin.address`).
    pub public_url: Option<String>,
    /// Who may approve, and how they are told.
    pub groups: Vec<ApproverGroupConfig>,
    pub approvers: Vec<ApproverConfig>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            store: ApprovalStoreKind::Sqlite,
            sqlite_path: PathBuf::from("pgward-data/approvals.db"),
            postgres: None,
            postgres_schema: "pgward".into(),
            hold_timeout: Duration::from_secs(300),
            defer_timeout: Duration::from_secs(24 * 3600),
            valid_for: Duration::from_secs(15 * 60),
            public_url: None,
            groups: Vec::new(),
            approvers: Vec::new(),
        }
    }
}

/// `[[approvals.groups]]`: an approver group's notification channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverGroupConfig {
    pub name: String,
    /// URL that receives a signed JSON POST when a request for this group is created or decided.
    #[serde(default)]
    pub webhook: Option<String>,
    /// HMAC-SHA256 key of the webhook signature (or `webhook_secret_env`).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Environment variable holding the webhook secret.
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
}

/// Whether an approver is a person or a program (a chat bot, an AI controller).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApproverKind {
    #[default]
    Person,
    Controller,
}

/// `[[approvals.approvers]]`: one bearer token of the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverConfig {
    /// The token's name, recorded with every decision made with it.
    pub name: String,
    /// The pgward identity (an `auth.users` name) of whoever holds the token: nobody approves
    /// a request of their own identity, whatever token they use. Default: `name`.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub kind: ApproverKind,
    /// Approver groups this token decides for.
    #[serde(default)]
    pub groups: Vec<String>,
    /// SHA-256 of the token, hex (from `pgward token new`); the token itself is never stored.
    pub token_sha256: String,
}

/// `[admin]`: the admin HTTP server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin API; unset: no admin server unless approvals are configured,
    /// which start it on 127.0.0.1:6480.
    pub address: Option<String>,
    /// PEM certificate chain and key: serve HTTPS instead of HTTP.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Config {
    /// Where the admin server listens, if it runs.
    pub fn admin_address(&self) -> Option<String> {
        self.admin
            .address
            .clone()
            .or_else(|| self.approvals.as_ref().map(|_| "127.0.0.1:6480".to_owned()))
    }
}

/// WebAssembly policy plugins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directory watched for `NAME.wasm` (and optional `NAME.toml`); none: no plugins.
    pub directory: Option<PathBuf>,
    /// Names (file stems) that run first, in this order; the rest follow in file-name order.
    pub order: Vec<String>,
    /// Deadline of one on-connect or on-query call.
    #[serde(deserialize_with = "duration")]
    pub query_deadline: Duration,
    /// Deadline of one on-result-schema or on-batch call.
    #[serde(deserialize_with = "duration")]
    pub batch_deadline: Duration,
    /// Linear memory one plugin instance may grow to, in bytes.
    pub memory_limit: usize,
    /// Largest rewrite or message a plugin may return, in bytes.
    pub max_output: usize,
    /// Where compiled plugins are cached (default: `.cache` inside `directory`).
    pub cache_dir: Option<PathBuf>,
    /// Watch the directory and apply changes without a restart.
    pub watch: bool,
    /// Most rows in one result batch handed to on-batch.
    pub batch_rows: usize,
    /// Most bytes of row data in one result batch.
    pub batch_bytes: usize,
    /// Verdicts kept per plugin that it marked cacheable (contract 0.5); 0 turns caching off.
    pub verdict_cache: usize,
    /// The server's errors and notices while a result plugin is loaded: `values` (default)
    /// strips what can quote row values, `generic` keeps only severity and SQLSTATE, `pass`
    /// relays them as they are.
    pub server_messages: crate::results::server_messages::ServerMessages,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            directory: None,
            order: Vec::new(),
            query_deadline: Duration::from_millis(10),
            batch_deadline: Duration::from_millis(200),
            memory_limit: 64 << 20,
            max_output: 1 << 20,
            cache_dir: None,
            watch: true,
            batch_rows: 4096,
            batch_bytes: 1 << 20,
            verdict_cache: 4096,
            server_messages: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Address for PostgreSQL clients, e.g. `127.0.0.1:6432`.
    pub address: String,
    /// Client connections accepted at once; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// Close a client that sits idle outside a transaction this long (`0s`: never).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long running sessions may continue before they are closed.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Largest single protocol message accepted from a client, in bytes.
    pub max_message_size: usize,
    /// Time a client has to finish TLS and authentication.
    #[serde(deserialize_with = "duration")]
    pub auth_timeout: Duration,
    /// Threads that run sessions (`0`: one per CPU).
    pub workers: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: "127.0.0.1:6432".into(),
            max_connections: 1000,
            idle_timeout: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            max_message_size: 64 << 20,
            auth_timeout: Duration::from_secs(30),
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// SSLRequest is answered `N`.
    #[default]
    Disabled,
    /// TLS when the client asks for it.
    Optional,
    /// Clients that do not use TLS are refused.
    Required,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM certificate chain presented to clients.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundles that sign client certificates; set, clients may present one (mTLS).
    pub client_ca: Vec<PathBuf>,
    /// PEM or DER certificate revocation lists of those CAs.
    pub client_crl: Vec<PathBuf>,
    /// Whether the TLS handshake requires a client certificate.
    pub client_certificates: ClientCertificates,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    /// A client may present a certificate; one it presents must verify.
    #[default]
    Optional,
    /// A TLS client without a valid certificate is refused in the handshake.
    Required,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plain TCP to the upstream.
    #[default]
    Disable,
    /// TLS, certificate verified against `ca_cert` and the host name.
    VerifyFull,
}

/// A way the upstream server may authenticate the gateway (`upstream.auth_methods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// SCRAM-SHA-256, with channel binding over TLS when the server offers it.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge: a captured exchange lets anyone log in as the gateway.
    Md5,
    /// The password in cleartext.
    Password,
    /// No authentication at all: any server (or impostor) that answers is believed.
    Trust,
}

impl UpstreamAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamAuth::ScramSha256 => "scram-sha-256",
            UpstreamAuth::Md5 => "md5",
            UpstreamAuth::Password => "password",
            UpstreamAuth::Trust => "trust",
        }
    }
}

/// SCRAM channel binding to the upstream (`upstream.channel_binding`, with TLS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// Bind the exchange to the TLS connection when the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse to log in without it.
    Require,
    Disable,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host name or IP address of the PostgreSQL server.
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// The gateway's own role on the upstream server.
    pub user: String,
    /// Its password (or set PGWARD_UPSTREAM_PASSWORD).
    #[serde(default)]
    pub password: Option<String>,
    /// Database to connect to; by default the one the client asked for.
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// PEM CA bundle that signs the upstream's certificate (required with `verify-full`).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Name to verify in the upstream certificate; defaults to `host`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// How the upstream may authenticate the gateway; anything else is refused.
    #[serde(default = "default_upstream_auth")]
    pub auth_methods: Vec<UpstreamAuth>,
    #[serde(default)]
    pub channel_binding: ChannelBinding,
}

fn default_upstream_auth() -> Vec<UpstreamAuth> {
    vec![UpstreamAuth::ScramSha256]
}

fn default_pg_port() -> u16 {
    5432
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// SCRAM-SHA-256 against the verifiers in `auth.users`.
    #[default]
    ScramSha256,
    /// Anyone may connect as any user in `auth.users`, without a password. Only for local demos.
    Trust,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub method: AuthMethod,
    pub users: Vec<UserConfig>,
    /// Rules mapping a verified client certificate to an identity, tried in order.
    pub certificates: Vec<CertRuleConfig>,
    /// Issuers whose signed JWTs are accepted as the password.
    pub tokens: Vec<TokenIssuerConfig>,
    /// Upstream roles by group, for identities whose own entry names none; first match wins.
    pub roles: Vec<GroupRoleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// A SCRAM-SHA-256 verifier printed by `pgward hash-password`; never a plaintext password.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The password alone is not enough: a client certificate must map to this user as well.
    #[serde(default)]
    pub require_certificate: bool,
    /// Role the gateway `SET ROLE`s the upstream session to for this user.
    #[serde(default)]
    pub upstream_role: Option<String>,
}

/// Which field of a client certificate names the identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertField {
    /// A URI subject alternative name, such as a SPIFFE ID.
    #[default]
    UriSan,
    /// A DNS subject alternative name.
    DnsSan,
    /// The subject's common name.
    Cn,
}

/// What a certificate mapped by a rule proves on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum CertMethod {
    /// The certificate alone authenticates the identity.
    #[default]
    #[serde(rename = "cert")]
    Cert,
    /// The certificate names the identity; its password or token must prove it as well.
    #[serde(rename = "cert+password")]
    CertAndPassword,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRuleConfig {
    #[serde(default)]
    pub field: CertField,
    /// The field's exact value.
    #[serde(default, rename = "match")]
    pub exact: Option<String>,
    /// A pattern for the value: `*` stands for any run of characters without `/`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The identity; `{1}`, `{2}`… are what the pattern's stars matched, `{value}` the whole
    /// value. Default: the value itself.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub method: CertMethod,
    #[serde(default)]
    pub upstream_role: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuerConfig {
    /// The `iss` claim tokens of this issuer carry (required, compared exactly).
    pub issuer: String,
    /// Accepted `aud` values: a token must name one of them.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Signature algorithms accepted, e.g. `["RS256"]`; `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Shared secret for HS256/HS384/HS512 (or `secret_env`).
    #[serde(default)]
    pub secret: Option<String>,
    /// Environment variable holding the shared secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// JWKS file with the issuer's public keys; reloaded when it changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL, fetched at start and cached for `jwks_refresh`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh", deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    /// Claim holding the identity (`sub`, `email`, …).
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Claim holding a list (or one) of group names.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Groups every identity of this issuer is in.
    #[serde(default)]
    pub groups: Vec<String>,
    /// A token alone is not enough: a client certificate must map to the same identity.
    #[serde(default)]
    pub require_certificate: bool,
    /// Accept tokens on connections that are neither TLS nor loopback (the token travels in
    /// clear text).
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(default)]
    pub upstream_role: Option<String>,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_identity_claim() -> String {
    "sub".into()
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRoleConfig {
    pub group: String,
    pub role: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Analysed statement shapes kept in the cache.
    pub cache_entries: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            cache_entries: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `pgward=debug`; RUST_LOG overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Parses `30s`, `500ms`, `5m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"30s\", \"500ms\", \"5m\""))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(de::Error::custom),
    }
}

impl Config {
    /// Reads, parses and validates a configuration file. Relative paths in it are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut config = Self::parse(&text, &file)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.upstream.ca_cert,
            &mut config.plugins.directory,
            &mut config.plugins.cache_dir,
            &mut config.admin.cert,
            &mut config.admin.key,
        ]
        .into_iter()
        .flatten()
        .chain(config.tls.client_ca.iter_mut())
        .chain(config.tls.client_crl.iter_mut())
        .chain(
            config
                .auth
                .tokens
                .iter_mut()
                .filter_map(|t| t.jwks_file.as_mut()),
        ) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(a) = &mut config.approvals {
            if a.sqlite_path.is_relative() {
                a.sqlite_path = base.join(&a.sqlite_path);
            }
        }
        if let Some(a) = &mut config.audit {
            if a.directory.is_relative() {
                a.directory = base.join(&a.directory);
            }
            if let Some(k) = &mut a.signing_key {
                if k.is_relative() {
                    *k = base.join(&*k);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks what the types alone cannot; called again after command-line overrides.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        if self.listen.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen.address",
                format!(
                    "{:?} is not an IP address and port such as \"127.0.0.1:6432\"",
                    self.listen.address
                ),
            ));
        }
        if self.listen.max_connections == 0 {
            return Err(invalid(
                "listen.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.listen.max_message_size < 1024 {
            return Err(invalid(
                "listen.max_message_size",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.tls.mode != TlsMode::Disabled {
            if self.tls.cert.is_none() {
                return Err(invalid(
                    "tls.cert",
                    format!("required when tls.mode is {:?}", self.tls.mode),
                ));
            }
            if self.tls.key.is_none() {
                return Err(invalid(
                    "tls.key",
                    format!("required when tls.mode is {:?}", self.tls.mode),
                ));
            }
        }
        if self.upstream.host.is_empty() {
            return Err(invalid("upstream.host", "must not be empty".into()));
        }
        if self.upstream.user.is_empty() {
            return Err(invalid("upstream.user", "must not be empty".into()));
        }
        if self.upstream.tls == UpstreamTls::VerifyFull && self.upstream.ca_cert.is_none() {
            return Err(invalid(
                "upstream.ca_cert",
                "required when upstream.tls is \"verify-full\"".into(),
            ));
        }
        if self.upstream.auth_methods.is_empty() {
            return Err(invalid(
                "upstream.auth_methods",
                "must list at least one method (\"scram-sha-256\", \"md5\", \"password\", \"trust\")".into(),
            ));
        }
        if self.upstream.channel_binding == ChannelBinding::Require
            && self.upstream.tls != UpstreamTls::VerifyFull
        {
            return Err(invalid(
                "upstream.channel_binding",
                "\"require\" needs TLS to the upstream (upstream.tls = \"verify-full\")".into(),
            ));
        }
        if self.upstream.channel_binding == ChannelBinding::Require
            && self.upstream.auth_methods != [UpstreamAuth::ScramSha256]
        {
            return Err(invalid(
                "upstream.channel_binding",
                "\"require\" binds SCRAM to the TLS connection: upstream.auth_methods must be [\"scram-sha-256\"] alone".into(),
            ));
        }
        if self.auth.users.is_empty()
            && self.auth.certificates.is_empty()
            && self.auth.tokens.is_empty()
        {
            return Err(invalid(
                "auth.users",
                "no users: add at least one [[auth.users]] entry (see `pgward hash-password`), \
                 [[auth.certificates]] rule or [[auth.tokens]] issuer"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.auth.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err(invalid(
                    &format!("auth.users[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if !seen.insert(u.name.as_str()) {
                return Err(invalid(
                    &format!("auth.users[{i}].name"),
                    format!("user {:?} is listed twice", u.name),
                ));
            }
            match (&u.password, self.auth.method) {
                (Some(p), _) => {
                    if let Err(e) = p.parse::<Verifier>() {
                        return Err(invalid(
                            &format!("auth.users[{i}].password"),
                            format!("{e}; generate one with `pgward hash-password`"),
                        ));
                    }
                }
                (None, AuthMethod::ScramSha256) => {
                    return Err(invalid(
                        &format!("auth.users[{i}].password"),
                        "required with auth.method = \"scram-sha-256\"".into(),
                    ))
                }
                (None, AuthMethod::Trust) => {}
            }
        }
        self.validate_identity(&invalid)?;
        if self.plugins.query_deadline.is_zero() || self.plugins.batch_deadline.is_zero() {
            return Err(invalid(
                "plugins.query_deadline",
                "plugin deadlines must be longer than zero".into(),
            ));
        }
        if self.plugins.memory_limit < (1 << 20) {
            return Err(invalid(
                "plugins.memory_limit",
                "must be at least 1 MiB (1048576)".into(),
            ));
        }
        if self.plugins.max_output < 1024 {
            return Err(invalid(
                "plugins.max_output",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.plugins.batch_rows == 0 {
            return Err(invalid("plugins.batch_rows", "must be at least 1".into()));
        }
        if self.plugins.batch_bytes < 1024 {
            return Err(invalid(
                "plugins.batch_bytes",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.sql.cache_entries == 0 {
            return Err(invalid("sql.cache_entries", "must be at least 1".into()));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("{e}")));
        }
        if let Some(addr) = &self.admin.address {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "admin.address",
                    format!("{addr:?} is not an IP address and port such as \"127.0.0.1:6480\""),
                ));
            }
        }
        if self.admin.cert.is_some() != self.admin.key.is_some() {
            let key = if self.admin.cert.is_some() {
                "admin.key"
            } else {
                "admin.cert"
            };
            return Err(invalid(key, "admin.cert and admin.key go together".into()));
        }
        if let Some(a) = &self.approvals {
            self.validate_approvals(a, &invalid)?;
        }
        if let Some(a) = &self.audit {
            if let Some(conn) = &a.postgres {
                if let Err(e) = conn.parse::<tokio_postgres::Config>() {
                    return Err(invalid("audit.postgres", format!("{e}")));
                }
            }
            let schema_ok = !a.postgres_schema.is_empty()
                && a.postgres_schema.len() < 64
                && a.postgres_schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !a.postgres_schema.starts_with(|c: char| c.is_ascii_digit());
            if !schema_ok {
                return Err(invalid(
                    "audit.postgres_schema",
                    "must be a lower-case SQL identifier (letters, digits, _)".into(),
                ));
            }
            if !a.file && a.postgres.is_none() && !a.stdout {
                return Err(invalid(
                    "audit.file",
                    "with file = false, set audit.postgres or audit.stdout: the trail needs a sink"
                        .into(),
                ));
            }
            if a.queue == 0 {
                return Err(invalid("audit.queue", "must be at least 1".into()));
            }
            if a.max_file_size < 4096 {
                return Err(invalid(
                    "audit.max_file_size",
                    "must be at least 4096 bytes".into(),
                ));
            }
            if a.batch_wait > Duration::from_secs(1) {
                return Err(invalid(
                    "audit.batch_wait",
                    "must be at most 1s (records wait this long before they are written)".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_identity(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let role_ok = |key: &str, role: &Option<String>| match role {
            Some(r) if r.is_empty() || r.len() > 63 || r.contains('\0') => {
                Err(invalid(key, "must be a role name of 1 to 63 bytes".into()))
            }
            _ => Ok(()),
        };
        for (i, u) in self.auth.users.iter().enumerate() {
            role_ok(&format!("auth.users[{i}].upstream_role"), &u.upstream_role)?;
            if u.require_certificate && self.tls.client_ca.is_empty() {
                return Err(invalid(
                    &format!("auth.users[{i}].require_certificate"),
                    "needs tls.client_ca: no client certificate can be verified without it".into(),
                ));
            }
        }
        if !self.tls.client_ca.is_empty() && self.tls.mode == TlsMode::Disabled {
            return Err(invalid(
                "tls.client_ca",
                "client certificates need TLS: set tls.mode to \"optional\" or \"required\"".into(),
            ));
        }
        if !self.tls.client_crl.is_empty() && self.tls.client_ca.is_empty() {
            return Err(invalid("tls.client_crl", "needs tls.client_ca".into()));
        }
        if !self.auth.certificates.is_empty() && self.tls.client_ca.is_empty() {
            return Err(invalid(
                "auth.certificates",
                "needs tls.client_ca, the CA bundles that sign client certificates".into(),
            ));
        }
        for (i, r) in self.auth.certificates.iter().enumerate() {
            let key = |k: &str| format!("auth.certificates[{i}].{k}");
            match (&r.exact, &r.pattern) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &key("pattern"),
                        "give either match or pattern, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        &key("match"),
                        "give match (an exact value) or pattern".into(),
                    ))
                }
                (Some(v), None) | (None, Some(v)) if v.is_empty() => {
                    return Err(invalid(&key("match"), "must not be empty".into()))
                }
                _ => {}
            }
            if let Err(e) = crate::auth::cert::Rule::new(r) {
                return Err(invalid(&key("identity"), e.to_string()));
            }
            role_ok(&key("upstream_role"), &r.upstream_role)?;
        }
        let mut issuers = std::collections::HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let key = |k: &str| format!("auth.tokens[{i}].{k}");
            if t.issuer.is_empty() {
                return Err(invalid(&key("issuer"), "must not be empty".into()));
            }
            if !issuers.insert(t.issuer.as_str()) {
                return Err(invalid(
                    &key("issuer"),
                    format!("issuer {:?} is listed twice", t.issuer),
                ));
            }
            if t.audience.is_empty() || t.audience.iter().any(String::is_empty) {
                return Err(invalid(
                    &key("audience"),
                    "name at least one non-empty audience".into(),
                ));
            }
            if t.algorithms.is_empty() {
                return Err(invalid(
                    &key("algorithms"),
                    "list at least one algorithm, e.g. [\"RS256\"]".into(),
                ));
            }
            let mut symmetric = false;
            let mut asymmetric = false;
            for a in &t.algorithms {
                match crate::auth::jwt::parse_algorithm(a) {
                    Ok(alg) if crate::auth::jwt::is_hmac(alg) => symmetric = true,
                    Ok(_) => asymmetric = true,
                    Err(e) => return Err(invalid(&key("algorithms"), e.to_string())),
                }
            }
            if t.secret.is_some() && t.secret_env.is_some() {
                return Err(invalid(
                    &key("secret_env"),
                    "give secret or secret_env, not both".into(),
                ));
            }
            let has_secret = t.secret.is_some() || t.secret_env.is_some();
            if symmetric && !has_secret {
                return Err(invalid(
                    &key("secret"),
                    "an HS* algorithm is allowed: set secret or secret_env".into(),
                ));
            }
            if has_secret && !symmetric {
                return Err(invalid(
                    &key("secret"),
                    "a secret is set but no HS* algorithm is allowed".into(),
                ));
            }
            if let Some(s) = &t.secret {
                if s.len() < 32 {
                    return Err(invalid(&key("secret"), "must be at least 32 bytes".into()));
                }
            }
            let has_jwks = t.jwks_file.is_some() || t.jwks_url.is_some();
            if asymmetric && !has_jwks {
                return Err(invalid(
                    &key("jwks_file"),
                    "an RS/ES/PS/EdDSA algorithm is allowed: set jwks_file or jwks_url".into(),
                ));
            }
            if has_jwks && !asymmetric {
                return Err(invalid(
                    &key("algorithms"),
                    "a JWKS is set but no public-key algorithm is allowed".into(),
                ));
            }
            if t.jwks_file.is_some() && t.jwks_url.is_some() {
                return Err(invalid(
                    &key("jwks_url"),
                    "give jwks_file or jwks_url, not both".into(),
                ));
            }
            if let Some(u) = &t.jwks_url {
                if !(u.starts_with("https://")
                    || u.starts_with("http://127.0.0.1")
                    || u.starts_with("http://localhost")
                    || u.starts_with("http://[::1]"))
                {
                    return Err(invalid(
                        &key("jwks_url"),
                        "must be an https:// URL (plain http only to loopback)".into(),
                    ));
                }
            }
            if t.identity_claim.is_empty() {
                return Err(invalid(&key("identity_claim"), "must not be empty".into()));
            }
            if t.require_certificate && self.tls.client_ca.is_empty() {
                return Err(invalid(
                    &key("require_certificate"),
                    "needs tls.client_ca".into(),
                ));
            }
            role_ok(&key("upstream_role"), &t.upstream_role)?;
        }
        for (i, r) in self.auth.roles.iter().enumerate() {
            if r.group.is_empty() {
                return Err(invalid(
                    &format!("auth.roles[{i}].group"),
                    "must not be empty".into(),
                ));
            }
            role_ok(&format!("auth.roles[{i}].role"), &Some(r.role.clone()))?;
        }
        Ok(())
    }

    fn validate_approvals(
        &self,
        a: &ApprovalsConfig,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if a.store == ApprovalStoreKind::Postgres && a.postgres.is_none() {
            return Err(invalid(
                "approvals.postgres",
                "required with approvals.store = \"postgres\" (a connection string such as \"host=db.internal dbname=pgward_control user=pgward\")".into(),
            ));
        }
        if let Some(conn) = &a.postgres {
            if let Err(e) = conn.parse::<tokio_postgres::Config>() {
                return Err(invalid("approvals.postgres", format!("{e}")));
            }
        }
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() < 64
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !ident(&a.postgres_schema) {
            return Err(invalid(
                "approvals.postgres_schema",
                "must be a lower-case SQL identifier (letters, digits, _)".into(),
            ));
        }
        for (key, d) in [
            ("approvals.hold_timeout", a.hold_timeout),
            ("approvals.defer_timeout", a.defer_timeout),
            ("approvals.valid_for", a.valid_for),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than zero".into()));
            }
        }
        let mut groups = std::collections::HashSet::new();
        for (i, g) in a.groups.iter().enumerate() {
            if g.name.is_empty() || !groups.insert(g.name.as_str()) {
                return Err(invalid(
                    &format!("approvals.groups[{i}].name"),
                    format!("{:?} is empty or listed twice", g.name),
                ));
            }
            if let Some(url) = &g.webhook {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        &format!("approvals.groups[{i}].webhook"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
                if g.webhook_secret.is_none() && g.webhook_secret_env.is_none() {
                    return Err(invalid(
                        &format!("approvals.groups[{i}].webhook_secret"),
                        "a webhook needs webhook_secret or webhook_secret_env, so receivers can verify what they get".into(),
                    ));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, ap) in a.approvers.iter().enumerate() {
            if ap.name.is_empty() || !names.insert(ap.name.as_str()) {
                return Err(invalid(
                    &format!("approvals.approvers[{i}].name"),
                    format!("{:?} is empty or listed twice", ap.name),
                ));
            }
            let hex = ap.token_sha256.len() == 64
                && ap.token_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(invalid(
                    &format!("approvals.approvers[{i}].token_sha256"),
                    "must be 64 hex digits, the SHA-256 of the token (`pgward token new` prints both)".into(),
                ));
            }
            if ap.groups.is_empty() {
                return Err(invalid(
                    &format!("approvals.approvers[{i}].groups"),
                    "an approver needs at least one approver group".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[upstream]
host = "127.0.0.1"
user = "gw"
[auth]
method = "trust"
[[auth.users]]
name = "alice"
"#;

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.listen.address, "127.0.0.1:6432");
        assert_eq!(c.upstream.port, 5432);
        assert_eq!(c.listen.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("user = \"gw\"", "user = \"gw\"\nhots = \"x\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:"), "{e}");
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let text = MINIMAL.replace("[auth]\nmethod = \"trust\"", "[auth]");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml: auth.users[0].password: required with auth.method = \"scram-sha-256\""
        );
        let text = MINIMAL.replace(
            "name = \"alice\"",
            "name = \"alice\"\npassword = \"hunter2\"",
        );
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml: auth.users[0].password: not a SCRAM-SHA-256 verifier"),
            "{e}"
        );
        let text = format!("[tls]\nmode = \"required\"\n{MINIMAL}");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("tls.cert: required"), "{e}");
        let text = format!("[listen]\nidle_timeout = \"5 fortnights\"\n{MINIMAL}");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("idle_timeout") || e.contains("fortnights"),
            "{e}"
        );
    }

    #[test]
    fn approvals_errors_name_the_key() {
        let hash = "a".repeat(64);
        let ok = format!(
            "{MINIMAL}\n[admin]\naddress = \"127.0.0.1:6480\"\n[approvals]\n[[approvals.approvers]]\nname = \"carol\"\ngroups = [\"dba\"]\ntoken_sha256 = \"{hash}\"\n"
        );
        let c = Config::parse(&ok, "t.toml").unwrap();
        let a = c.approvals.as_ref().unwrap();
        assert_eq!(a.hold_timeout, Duration::from_secs(300));
        assert_eq!(a.store, ApprovalStoreKind::Sqlite);
        assert_eq!(c.admin_address().as_deref(), Some("127.0.0.1:6480"));
        let cases = [
            (ok.replace(&hash, "abc"), "approvals.approvers[0].token_sha256"),
            (ok.replace("groups = [\"dba\"]", "groups = []"), "approvals.approvers[0].groups"),
            (ok.replace("[approvals]", "[approvals]\nstore = \"postgres\""), "approvals.postgres"),
            (ok.replace("[approvals]", "[approvals]\nhold_timeout = \"0s\""), "approvals.hold_timeout"),
            (ok.replace("127.0.0.1:6480", "localhost"), "admin.address"),
            (
                ok.replace(
                    "[approvals]",
                    "[approvals]\n[[approvals.groups]]\nname = \"dba\"\nwebhook = \"http://x/\"",
                ),
                "approvals.groups[0].webhook_secret",
            ),
            (
                ok.replace(
                    "[approvals]",
                    "[approvals]\n[[approvals.groups]]\nname = \"dba\"\nwebhook = \"ftp://x/\"\nwebhook_secret = \"s\"",
                ),
                "approvals.groups[0].webhook",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.starts_with(&format!("t.toml: {key}:")), "{key}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
