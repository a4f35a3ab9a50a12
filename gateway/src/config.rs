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
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
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
        if self.auth.users.is_empty() {
            return Err(invalid(
                "auth.users",
                "no users: add at least one [[auth.users]] entry (see `pgward hash-password`)"
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
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
