//! One client session: TLS negotiation, startup, authentication, the upstream login, then the
//! relay of the protocol in both directions until either side ends.

use crate::auth::cert::CertFields;
use crate::auth::scram::{self, ServerExchange, Verifier};
use crate::auth::{Identity, Proofs};
use crate::cancel::CancelTarget;
use crate::config::{AuthMethod, ClientCertificates, TlsMode};
use crate::error::{ClientError, Refused};
use crate::protocol::{self, StartupPacket};
use crate::relay::{self, RelayEnd, RelayState};
use crate::shared::GatewayShared;
use crate::shutdown::Shutdown;
use crate::sqlstate;
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// Largest SASL message a client may send during authentication.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// What ended a session before the relay started, for the log.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    ClientIo(#[from] std::io::Error),
    #[error("refused: {0}")]
    Refused(ClientError),
}

impl From<ClientError> for SessionError {
    fn from(e: ClientError) -> Self {
        SessionError::Refused(e)
    }
}

/// Serves one accepted client connection to the end.
pub async fn serve(
    gw: Arc<GatewayShared>,
    tcp: TcpStream,
    id: u64,
    peer: std::net::SocketAddr,
    over_limit: bool,
    shutdown: Shutdown,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    let auth_timeout = gw.config.listen.auth_timeout;
    let started = tokio::time::timeout(
        auth_timeout,
        startup_and_auth(&gw, &mut stream, over_limit, peer),
    )
    .await;
    let (identity, params) = match started {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return,
        Ok(Err(SessionError::Refused(e))) => {
            info!(code = %e.code, reason = %e.message, "connection refused");
            crate::metrics::METRICS.session("unknown", "refused");
            if let Some(a) = &gw.audit {
                a.emit(
                    "session.refused",
                    serde_json::json!({
                        "session": id,
                        "client_addr": peer.to_string(),
                        "sqlstate": e.code,
                        "message": e.message,
                    }),
                );
            }
            let _ = e.send_and_close(&mut stream).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "connection closed during startup");
            return;
        }
        Err(_) => {
            let e = ClientError::fatal(sqlstate::CONNECTION_FAILURE, "authentication timed out");
            info!("authentication timed out");
            let _ = e.send_and_close(&mut stream).await;
            return;
        }
    };
    let session_started = std::time::Instant::now();
    let auth_method = identity.method();
    let metrics = &crate::metrics::METRICS;
    metrics.session(auth_method, "accepted");
    metrics.sessions_current.inc();
    let _open = OpenSession;
    tracing::Span::current().record("user", identity.user.as_str());
    let database = params
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| identity.user.clone());
    tracing::Span::current().record("database", database.as_str());
    info!(groups = ?identity.groups, method = identity.method(), role = ?identity.upstream_role, "authenticated");

    let application_name = params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let plugin_session = crate::plugins::convert_session(
        id,
        &identity,
        &database,
        &peer.to_string(),
        application_name,
    );
    // However this function returns, the plugins are told the session ended.
    let _end = SessionEnd {
        host: gw.plugins.as_deref(),
        id,
    };
    if let Some(host) = &gw.plugins {
        if let Some(refusal) = host.on_connect(&plugin_session) {
            info!(plugin = %refusal.plugin, sqlstate = %refusal.sqlstate, "session refused by policy");
            let mut out = BytesMut::new();
            ClientError::refusal(&refusal, Refused::Session).encode(&mut out);
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
            return;
        }
    }

    // Connect upstream with the gateway's credentials, forwarding the client's parameters.
    let upstream_db = gw
        .config
        .upstream
        .database
        .clone()
        .unwrap_or_else(|| database.clone());
    let mut forward: Vec<(&str, &str)> = vec![("database", upstream_db.as_str())];
    forward.extend(
        params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let connecting = std::time::Instant::now();
    let connected = gw
        .upstream
        .connect(&forward, identity.upstream_role.as_deref())
        .await;
    metrics
        .upstream_connect_seconds
        .observe(connecting.elapsed().as_secs_f64());
    let mut upstream = match connected {
        Ok(u) => u,
        Err(e) => {
            metrics.upstream_connect_errors.inc();
            warn!(error = %e, "upstream connection failed");
            let ce = ClientError::from_upstream(&e);
            let _ = ce.send_and_close(&mut stream).await;
            return;
        }
    };

    let (upstream_pid, upstream_secret) = upstream.backend_key.unwrap_or((0, 0));
    let (pid, secret, cancelled) = gw.cancels.register(CancelTarget {
        upstream_pid,
        upstream_secret,
    });
    let _cancel_guard = CancelGuard { gw: &gw, pid };

    let state = RelayState::new(upstream.txn_status);
    for (k, v) in &upstream.parameters {
        state.observe_parameter(k, v);
    }
    let mut hello = BytesMut::with_capacity(512 + upstream.relay_to_client.len());
    protocol::put_auth(&mut hello, 0, &[]);
    hello.extend_from_slice(&upstream.relay_to_client);
    protocol::put_backend_key(&mut hello, pid, secret);
    protocol::put_ready_for_query(&mut hello, upstream.txn_status);
    if stream.write_all(&hello).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    drop(hello);

    let outcomes = gw
        .audit
        .as_deref()
        .map(|a| crate::audit::statement::Outcomes::new(a, id));
    let ctx = relay::RelayContext {
        analyzer: &gw.analyzer,
        max_message_size: gw.config.listen.max_message_size,
        idle_timeout: gw.config.listen.idle_timeout,
        identity: &identity,
        session_id: id,
        plugin_session: &plugin_session,
        policies: gw.plugins.as_deref().map(|host| relay::Policies {
            host,
            identity: host.identity_id(&plugin_session),
            catalog: &gw.catalog,
            upstream: &gw.upstream,
            database: &plugin_session.database,
            batch_rows: gw.config.plugins.batch_rows,
            batch_bytes: gw.config.plugins.batch_bytes,
            server_messages: gw.config.plugins.server_messages,
        }),
        approvals: gw.approvals.as_ref(),
        cancelled: Some(&cancelled),
        auth_method,
        audit: gw.audit.as_deref(),
        outcomes: outcomes.as_ref(),
    };
    if let Some(a) = &gw.audit {
        a.emit(
            "session.start",
            serde_json::json!({
                "session": id,
                "user": identity.user,
                "groups": identity.groups,
                "auth_method": auth_method,
                "token_issuer": identity.token_issuer,
                "certificate_subject": identity.certificate_subject,
                "upstream_role": identity.upstream_role,
                "client_addr": peer.to_string(),
                "tls": stream.is_tls(),
                "application_name": application_name,
                "database": database,
            }),
        );
    }
    let end = relay::run(&ctx, &mut stream, &mut upstream.stream, &state, shutdown).await;
    match &end {
        RelayEnd::ClientTerminated | RelayEnd::ClientEof => debug!("client closed the session"),
        other => info!(end = %other, "session ended"),
    }
    if let Some(o) = &outcomes {
        o.end();
    }
    if let Some(a) = &gw.audit {
        let (to_server, to_client) = state.bytes();
        a.emit(
            "session.end",
            serde_json::json!({
                "session": id,
                "user": identity.user,
                "duration_ms": session_started.elapsed().as_millis() as u64,
                "statements": state.statements(),
                "bytes_to_server": to_server,
                "bytes_to_client": to_client,
                "reason": end.reason(),
            }),
        );
    }
    relay::finish(end, &mut stream, &mut upstream.stream, &state).await;
}

/// Counts the session in `pgward_sessions_current` while it lives.
struct OpenSession;

impl Drop for OpenSession {
    fn drop(&mut self) {
        crate::metrics::METRICS.sessions_current.dec();
    }
}

struct CancelGuard<'a> {
    gw: &'a GatewayShared,
    pid: i32,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.gw.cancels.unregister(self.pid);
    }
}

/// Negotiates TLS, reads the StartupMessage and authenticates the client. `None` means the
/// connection was a CancelRequest and is done.
async fn startup_and_auth(
    gw: &GatewayShared,
    stream: &mut Stream,
    over_limit: bool,
    peer: std::net::SocketAddr,
) -> Result<Option<(Identity, Vec<(String, String)>)>, SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let params = loop {
        let packet = read_startup_packet(stream, &mut buf).await?;
        match protocol::parse_startup(&packet) {
            Ok(StartupPacket::Ssl) => {
                if stream.is_tls() {
                    return Err(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "SSLRequest received on a TLS connection",
                    )
                    .into());
                }
                // Bytes sent after the SSLRequest but before the handshake could be injected by
                // a man in the middle (CVE-2021-23214): refuse them.
                if !buf.is_empty() {
                    return Err(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    )
                    .into());
                }
                match &gw.tls {
                    Some(acceptor) if gw.config.tls.mode != TlsMode::Disabled => {
                        stream.write_all(b"S").await?;
                        stream.accept_tls(acceptor).await?;
                    }
                    _ => stream.write_all(b"N").await?,
                }
            }
            Ok(StartupPacket::GssEnc) => stream.write_all(b"N").await?,
            Ok(StartupPacket::Cancel { pid, secret }) => {
                match gw.cancels.lookup(pid, secret) {
                    Some(t) => {
                        info!(pid, "cancel request");
                        if let Err(e) = gw.upstream.cancel(t.upstream_pid, t.upstream_secret).await
                        {
                            warn!(error = %e, "forwarding cancel request failed");
                        }
                    }
                    None => info!(pid, "cancel request with unknown key ignored"),
                }
                return Ok(None);
            }
            Ok(StartupPacket::Startup { params }) => break params,
            Err(e) => {
                return Err(ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()).into())
            }
        }
    };
    if over_limit {
        return Err(ClientError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
        .into());
    }
    if gw.config.tls.mode == TlsMode::Required && !stream.is_tls() {
        return Err(ClientError::fatal_hint(
            sqlstate::INVALID_AUTHORIZATION,
            "pgward requires TLS for all connections",
            "connect with sslmode=require",
        )
        .into());
    }
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "replication") {
        if !matches!(v.as_str(), "false" | "off" | "no" | "0") {
            return Err(ClientError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "pgward does not relay replication connections",
            )
            .into());
        }
    }
    check_startup_params(&params)?;
    let identity = authenticate(gw, stream, &mut buf, &user, peer).await?;
    Ok(Some((identity, params)))
}

/// Settings a client may not choose at startup, where no statement analysis sees them:
/// PostgreSQL applies every startup key other than user/database/options, and every `-c`/`--`
/// switch inside `options`, as a setting. Changing the role is a statement that must pass the
/// policy (`SET ROLE`), not a connection parameter.
const FORBIDDEN_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "session_replication_role",
    // Decides which table an unqualified name means; set in the session (`SET search_path`),
    // where policies see it, not at startup, where they do not.
    "search_path",
];

/// Client encodings whose multibyte characters can end in a byte that reads as `\\`, so the
/// server and the gateway would disagree about where a string literal ends.
const UNSAFE_ENCODINGS: &[&str] = &[
    "SJIS",
    "SHIFTJIS",
    "MSKANJI",
    "SHIFTJIS2004",
    "BIG5",
    "WIN950",
    "GBK",
    "CP936",
    "WIN936",
    "UHC",
    "WIN949",
    "GB18030",
    "JOHAB",
];

/// True for client encodings in which a multibyte character can hide a backslash.
pub fn is_unsafe_encoding(name: &str) -> bool {
    let norm: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    UNSAFE_ENCODINGS.contains(&norm.as_str())
}

fn check_setting(name: &str, value: &str) -> Result<(), ClientError> {
    let name = name.to_ascii_lowercase().replace('-', "_");
    if FORBIDDEN_SETTINGS.contains(&name.as_str()) {
        let hint = if name == "search_path" {
            "set it with SET search_path in the session, where policies can see it"
        } else {
            "change it with a statement in the session, where policies can see it"
        };
        return Err(ClientError::fatal_hint(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("setting {name} at connection start is not allowed through pgward"),
            hint,
        ));
    }
    if name == "client_encoding" && is_unsafe_encoding(value) {
        return Err(ClientError::fatal(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("client encoding {value} is not supported by pgward: use UTF8"),
        ));
    }
    if name.starts_with("_pq_.") {
        return Err(ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("protocol extension parameter {name} is not supported by pgward"),
        ));
    }
    Ok(())
}

/// Checks the startup packet's parameters the way PostgreSQL will apply them.
fn check_startup_params(params: &[(String, String)]) -> Result<(), ClientError> {
    let mut seen = std::collections::HashSet::new();
    for (k, v) in params {
        if !seen.insert(k.as_str()) {
            return Err(ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("startup parameter {k} given twice"),
            ));
        }
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => check_options(v)?,
            other => check_setting(other, v)?,
        }
    }
    Ok(())
}

/// Splits `options` like PostgreSQL (whitespace separates, a backslash escapes the next
/// character) and checks every `-c name=value`, `-cname=value` and `--name=value` in it. Other
/// server switches are refused: their effect would bypass the policy unseen.
fn check_options(options: &str) -> Result<(), ClientError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let setting = if w == "-c" {
            i += 1;
            words.get(i).cloned().unwrap_or_default()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else {
            return Err(ClientError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("startup option {w:?} is not allowed through pgward: only -c name=value"),
            ));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid startup option {setting:?}: expected name=value"),
            ));
        };
        check_setting(name.trim(), value.trim())?;
        i += 1;
    }
    Ok(())
}

async fn read_startup_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    loop {
        match protocol::startup_len(buf) {
            Err(e) => {
                return Err(ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()).into())
            }
            Ok(Some(len)) if buf.len() >= len => return Ok(buf.split_to(len)),
            _ => {}
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(SessionError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

/// Reads one typed message from the client during authentication.
async fn read_auth_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    loop {
        match protocol::frame_header(buf, MAX_AUTH_MESSAGE) {
            Err(e) => {
                return Err(ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()).into())
            }
            Ok(Some(h)) if buf.len() >= h.frame_len => {
                if h.tag != protocol::tag::PASSWORD {
                    return Err(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!(
                            "expected password response, got message type {:?}",
                            h.tag as char
                        ),
                    )
                    .into());
                }
                let mut frame = buf.split_to(h.frame_len);
                frame.advance(5);
                return Ok(frame);
            }
            _ => {}
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(SessionError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

async fn authenticate(
    gw: &GatewayShared,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    peer: std::net::SocketAddr,
) -> Result<Identity, SessionError> {
    let entry = gw.users.get(user);
    if gw.config.auth.method == AuthMethod::Trust {
        let entry = entry.ok_or_else(|| {
            ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("role \"{user}\" is not known to pgward"),
            )
        })?;
        return Ok(with_group_role(
            gw,
            Identity {
                user: user.to_owned(),
                groups: entry.groups.clone(),
                upstream_role: entry.upstream_role.clone(),
                ..Default::default()
            },
        ));
    }
    if gw.config.tls.client_certificates == ClientCertificates::Required
        && !gw.config.tls.client_ca.is_empty()
        && !stream.is_tls()
    {
        return Err(ClientError::fatal_hint(
            sqlstate::INVALID_AUTHORIZATION,
            "pgward requires TLS with a client certificate",
            "connect with sslmode=require and sslcert/sslkey",
        )
        .into());
    }
    let cert_failed = || {
        ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("certificate authentication failed for user \"{user}\""),
        )
    };
    // What the client certificate, verified in the handshake, proves.
    let cert = match stream.peer_certificate() {
        Some(der) if !gw.cert_rules.is_empty() => match CertFields::parse(der) {
            Ok(fields) => {
                // A certificate from a trusted CA that no rule maps proves nothing pgward
                // knows: refused rather than ignored, so a wrong certificate never falls back.
                let Some(mapped) = gw.cert_rules.map(&fields) else {
                    info!(user, uri_sans = ?fields.uri_sans, dns_sans = ?fields.dns_sans, cn = ?fields.common_name, "client certificate refused: it matches no auth.certificates rule");
                    return Err(cert_failed().into());
                };
                Some(mapped)
            }
            Err(e) => {
                info!(user, error = %e, "client certificate refused");
                return Err(cert_failed().into());
            }
        },
        _ => None,
    };
    if let Some(c) = &cert {
        if c.identity != user {
            info!(user, certificate = %c.subject, identity = %c.identity, "the client certificate proves another identity than the user asked for");
            return Err(cert_failed().into());
        }
    }
    let mut identity = match &cert {
        Some(c) if c.alone => Identity {
            user: user.to_owned(),
            groups: Vec::new(),
            upstream_role: None,
            ..Default::default()
        },
        _ if entry.is_some_and(|e| e.verifier.is_some()) || gw.tokens.is_empty() => {
            let identity = scram_exchange(gw, stream, buf, user).await?;
            if entry.is_some_and(|e| e.require_certificate) && cert.is_none() {
                info!(user, "password verified, but the user requires a client certificate and none maps to it");
                return Err(cert_failed().into());
            }
            identity
        }
        _ => {
            let identity = token_exchange(gw, stream, buf, user, peer).await?;
            if identity.1 && cert.is_none() {
                info!(user, "token verified, but its issuer requires a client certificate and none maps to the identity");
                return Err(cert_failed().into());
            }
            identity.0
        }
    };
    if let Some(c) = cert {
        identity.proofs.certificate = true;
        identity.certificate_subject = Some(c.subject);
        identity.add_groups(&c.groups);
        if identity.upstream_role.is_none() {
            identity.upstream_role = c.upstream_role;
        }
    }
    if let Some(e) = entry {
        identity.add_groups(&e.groups);
        if identity.upstream_role.is_none() {
            identity.upstream_role = e.upstream_role.clone();
        }
    }
    Ok(with_group_role(gw, identity))
}

/// Gives an identity without a role of its own the role of its first group in `auth.roles`.
fn with_group_role(gw: &GatewayShared, mut identity: Identity) -> Identity {
    if identity.upstream_role.is_none() {
        identity.upstream_role = gw
            .config
            .auth
            .roles
            .iter()
            .find(|r| identity.groups.contains(&r.group))
            .map(|r| r.role.clone());
    }
    identity
}

/// Asks for the password in clear text and verifies it as a JWT of a configured issuer. The
/// second value says whether the issuer requires a client certificate as well.
async fn token_exchange(
    gw: &GatewayShared,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    peer: std::net::SocketAddr,
) -> Result<(Identity, bool), SessionError> {
    let (tls, loopback) = (stream.is_tls(), peer.ip().is_loopback());
    if !gw.tokens.accepts_transport(tls, loopback) {
        return Err(ClientError::fatal_hint(
            sqlstate::INVALID_AUTHORIZATION,
            "token authentication requires TLS",
            "connect with sslmode=require",
        )
        .into());
    }
    let mut out = BytesMut::with_capacity(16);
    protocol::put_auth(&mut out, 3, &[]);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let msg = read_auth_message(stream, buf).await?;
    let mut b = &msg[..];
    let token = protocol::take_cstr(&mut b)
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or_else(|| {
            ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, "malformed password message")
        })?
        .to_owned();
    let verifier = gw.tokens.clone();
    // JWKS files may be re-read and URLs fetched: off the async threads.
    let verified =
        tokio::task::spawn_blocking(move || verifier.verify(&token, tls, loopback)).await;
    let failed = || {
        ClientError::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("token authentication failed for user \"{user}\""),
        )
    };
    let t = match verified {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            info!(user, reason = %e, "token refused");
            return Err(failed().into());
        }
        Err(e) => {
            warn!(error = %e, "token verification did not finish");
            return Err(failed().into());
        }
    };
    if t.identity != user {
        info!(user, identity = %t.identity, issuer = %t.issuer, "token refused: it proves another identity than the user asked for");
        return Err(failed().into());
    }
    Ok((
        Identity {
            user: user.to_owned(),
            groups: t.groups,
            proofs: Proofs {
                token: true,
                ..Default::default()
            },
            token_issuer: Some(t.issuer),
            certificate_subject: None,
            upstream_role: t.upstream_role,
        },
        t.require_certificate,
    ))
}

/// SCRAM-SHA-256 against the user's verifier (a decoy for unknown users, so the exchange looks
/// the same either way).
async fn scram_exchange(
    gw: &GatewayShared,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
) -> Result<Identity, SessionError> {
    let entry = gw.users.get(user);
    let failed = || {
        ClientError::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    };
    let verifier = entry
        .and_then(|e| e.verifier.clone())
        .unwrap_or_else(|| Verifier::decoy(user, &gw.decoy_secret));
    let mut out = BytesMut::with_capacity(128);
    let mut mechs = Vec::from(scram::MECHANISM.as_bytes());
    mechs.extend_from_slice(b"\0\0");
    protocol::put_auth(&mut out, 10, &mechs);
    stream.write_all(&out).await?;
    stream.flush().await?;
    out.clear();

    let msg = read_auth_message(stream, buf).await?;
    let mut b = &msg[..];
    let mechanism = protocol::take_cstr(&mut b).ok_or_else(|| {
        ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse",
        )
    })?;
    if mechanism != scram::MECHANISM.as_bytes() {
        return Err(ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "unsupported SASL mechanism: pgward offers SCRAM-SHA-256",
        )
        .into());
    }
    let len = protocol::take_i32(&mut b).ok_or_else(|| {
        ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse",
        )
    })?;
    if len < 0 || len as usize != b.len() {
        return Err(ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse",
        )
        .into());
    }
    let exchange = ServerExchange::start(verifier, b).map_err(|e| match e {
        scram::ScramError::ChannelBinding => ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "SCRAM channel binding is not supported by pgward",
        ),
        other => ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, other.to_string()),
    })?;
    protocol::put_auth(&mut out, 11, exchange.server_first().as_bytes());
    stream.write_all(&out).await?;
    stream.flush().await?;
    out.clear();

    let msg = read_auth_message(stream, buf).await?;
    match exchange.verify_client_final(&msg) {
        Ok(server_final) if entry.is_some() => {
            protocol::put_auth(&mut out, 12, server_final.as_bytes());
            stream.write_all(&out).await?;
            // AuthenticationOk follows once the upstream session is open.
            Ok(Identity {
                user: user.to_owned(),
                proofs: Proofs {
                    password: true,
                    ..Default::default()
                },
                ..Default::default()
            })
        }
        Ok(_) | Err(scram::ScramError::WrongProof) => {
            info!(user, "password authentication failed");
            Err(failed().into())
        }
        Err(e) => Err(ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()).into()),
    }
}

/// Calls the plugins' `close-session` for a session when it ends (on this worker thread,
/// where its plugin instances live).
struct SessionEnd<'a> {
    host: Option<&'a crate::plugins::PluginHost>,
    id: u64,
}

impl Drop for SessionEnd<'_> {
    fn drop(&mut self) {
        if let Some(host) = self.host {
            host.close_session(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_and_search_path_options_are_refused_in_every_spelling() {
        for bad in [
            "-c role=postgres",
            "--role=postgres",
            "-crole=postgres",
            "-c r\\ole=postgres",
            "-c session_authorization=x",
            "-c session-authorization=x",
            "-c ROLE=x",
            "-c client_encoding=SJIS",
            "-e",
            "-c",
        ] {
            assert!(check_options(bad).is_err(), "{bad}");
        }
        assert!(check_options("-c search_path=app").is_err());
        assert!(check_options("-c statement_timeout=5s -c application_name=x").is_ok());
        assert!(check_options("-c myrole=1 --work-mem=64MB").is_ok());
        assert!(check_options("").is_ok());
    }

    #[test]
    fn startup_keys_are_settings_too() {
        let p = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(check_startup_params(&p(&[("user", "a"), ("role", "admin")])).is_err());
        assert!(check_startup_params(&p(&[("user", "a"), ("search_path", "evil")])).is_err());
        assert!(check_startup_params(&p(&[("options", "-c search_path=evil,public")])).is_err());
        assert!(check_startup_params(&p(&[("user", "a"), ("client_encoding", "sjis")])).is_err());
        assert!(check_startup_params(&p(&[
            ("user", "a"),
            ("options", "-c x=1"),
            ("options", "-c role=b")
        ]))
        .is_err());
        assert!(check_startup_params(&p(&[("user", "a"), ("_pq_.x", "1")])).is_err());
        assert!(check_startup_params(&p(&[
            ("user", "a"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("application_name", "psql"),
        ]))
        .is_ok());
    }
}
