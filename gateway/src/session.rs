//! One client session: TLS negotiation, startup, authentication, the upstream login, then the
//! relay of the protocol in both directions until either side ends.

use crate::auth::scram::{self, ServerExchange, Verifier};
use crate::auth::Identity;
use crate::cancel::CancelTarget;
use crate::config::{AuthMethod, TlsMode};
use crate::error::ClientError;
use crate::protocol::{self, StartupPacket};
use crate::relay::{self, RelayEnd, RelayState};
use crate::server::{GatewayShared, ShutdownSignal};
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// Largest SASL message a client may send during authentication.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

/// What ended a session before the relay started, for the log.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    ClientIo(#[from] std::io::Error),
    #[error("refused: {0}")]
    Refused(ClientError),
    #[error("client took too long to authenticate")]
    AuthTimeout,
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
    shutdown: ShutdownSignal,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    let auth_timeout = gw.config.listen.auth_timeout;
    let started =
        tokio::time::timeout(auth_timeout, startup_and_auth(&gw, &mut stream, over_limit)).await;
    let (identity, params) = match started {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return,
        Ok(Err(SessionError::Refused(e))) => {
            info!(code = e.code, reason = %e.message, "connection refused");
            let _ = e.send_and_close(&mut stream).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "connection closed during startup");
            return;
        }
        Err(_) => {
            let e = ClientError::fatal("08006", "authentication timed out");
            info!("authentication timed out");
            let _ = e.send_and_close(&mut stream).await;
            return;
        }
    };
    tracing::Span::current().record("user", identity.user.as_str());
    let database = params
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| identity.user.clone());
    tracing::Span::current().record("database", database.as_str());
    info!(groups = ?identity.groups, "authenticated");

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
    if let Some(host) = &gw.plugins {
        if let Some(refusal) = host.on_connect(&plugin_session) {
            info!(plugin = %refusal.plugin, sqlstate = %refusal.sqlstate, "session refused by policy");
            let mut out = BytesMut::new();
            protocol::put_error(
                &mut out,
                &protocol::ErrorFields {
                    severity: protocol::Severity::Fatal,
                    code: &refusal.sqlstate,
                    message: &refusal.message,
                    detail: Some(&format!("denied by policy plugin \"{}\"", refusal.plugin)),
                    hint: refusal.hint.as_deref(),
                },
            );
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
    let mut upstream = match gw.upstream.connect(&forward).await {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "upstream connection failed");
            let ce = ClientError::from_upstream(&e);
            let _ = ce.send_and_close(&mut stream).await;
            return;
        }
    };

    let (upstream_pid, upstream_secret) = upstream.backend_key.unwrap_or((0, 0));
    let (pid, secret) = gw.cancels.register(CancelTarget {
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

    let ctx = relay::RelayContext {
        analyzer: &gw.analyzer,
        max_message_size: gw.config.listen.max_message_size,
        idle_timeout: gw.config.listen.idle_timeout,
        identity: &identity,
        session_id: id,
        plugins: gw.plugins.as_deref(),
        plugin_session: &plugin_session,
    };
    let end = relay::run(&ctx, &mut stream, &mut upstream.stream, &state, shutdown).await;
    match &end {
        RelayEnd::ClientTerminated | RelayEnd::ClientEof => debug!("client closed the session"),
        other => info!(end = ?other, "session ended"),
    }
    relay::finish(end, &mut stream, &mut upstream.stream, &state).await;
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
) -> Result<Option<(Identity, Vec<(String, String)>)>, SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let params = loop {
        let packet = read_startup_packet(stream, &mut buf).await?;
        match protocol::parse_startup(&packet) {
            Ok(StartupPacket::Ssl) => {
                if stream.is_tls() {
                    return Err(ClientError::fatal(
                        "08P01",
                        "SSLRequest received on a TLS connection",
                    )
                    .into());
                }
                // Bytes sent after the SSLRequest but before the handshake could be injected by
                // a man in the middle (CVE-2021-23214): refuse them.
                if !buf.is_empty() {
                    return Err(ClientError::fatal(
                        "08P01",
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
            Err(e) => return Err(ClientError::fatal("08P01", e.to_string()).into()),
        }
    };
    if over_limit {
        return Err(ClientError::fatal("53300", "sorry, too many clients already").into());
    }
    if gw.config.tls.mode == TlsMode::Required && !stream.is_tls() {
        return Err(ClientError::fatal_hint(
            "28000",
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
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "replication") {
        if !matches!(v.as_str(), "false" | "off" | "no" | "0") {
            return Err(ClientError::fatal(
                "0A000",
                "pgward does not relay replication connections",
            )
            .into());
        }
    }
    if let Some((_, options)) = params.iter().find(|(k, _)| k == "options") {
        check_options(options)?;
    }
    let identity = authenticate(gw, stream, &mut buf, &user).await?;
    Ok(Some((identity, params)))
}

/// Startup `options` set server settings before any statement is analysed; the ones that change
/// who the session acts as are refused, as `SET ROLE` would need to pass the policy.
fn check_options(options: &str) -> Result<(), ClientError> {
    let lowered = options.to_ascii_lowercase().replace('-', "_");
    for forbidden in ["role", "session_authorization"] {
        let mut rest = lowered.as_str();
        while let Some(i) = rest.find(forbidden) {
            let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
            let after = rest[i + forbidden.len()..].trim_start();
            if before_ok && after.starts_with('=') {
                return Err(ClientError::fatal(
                    "42501",
                    format!("startup option {forbidden} is not allowed through pgward"),
                ));
            }
            rest = &rest[i + forbidden.len()..];
        }
    }
    Ok(())
}

async fn read_startup_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    loop {
        match protocol::startup_len(buf) {
            Err(e) => return Err(ClientError::fatal("08P01", e.to_string()).into()),
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
            Err(e) => return Err(ClientError::fatal("08P01", e.to_string()).into()),
            Ok(Some(h)) if buf.len() >= h.frame_len => {
                if h.tag != b'p' {
                    return Err(ClientError::fatal(
                        "08P01",
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
) -> Result<Identity, SessionError> {
    let entry = gw.users.get(user);
    let failed = || {
        ClientError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };
    if gw.config.auth.method == AuthMethod::Trust {
        let entry = entry.ok_or_else(|| {
            ClientError::fatal("28000", format!("role \"{user}\" is not known to pgward"))
        })?;
        return Ok(Identity {
            user: user.to_owned(),
            groups: entry.groups.clone(),
        });
    }
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
    let mechanism = protocol::take_cstr(&mut b)
        .ok_or_else(|| ClientError::fatal("08P01", "malformed SASLInitialResponse"))?;
    if mechanism != scram::MECHANISM.as_bytes() {
        return Err(ClientError::fatal(
            "28000",
            "unsupported SASL mechanism: pgward offers SCRAM-SHA-256",
        )
        .into());
    }
    let len = protocol::take_i32(&mut b)
        .ok_or_else(|| ClientError::fatal("08P01", "malformed SASLInitialResponse"))?;
    if len < 0 || len as usize != b.len() {
        return Err(ClientError::fatal("08P01", "malformed SASLInitialResponse").into());
    }
    let exchange = ServerExchange::start(verifier, b).map_err(|e| match e {
        scram::ScramError::ChannelBinding => {
            ClientError::fatal("28000", "SCRAM channel binding is not supported by pgward")
        }
        other => ClientError::fatal("08P01", other.to_string()),
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
                groups: entry.map(|e| e.groups.clone()).unwrap_or_default(),
            })
        }
        Ok(_) | Err(scram::ScramError::WrongProof) => {
            info!(user, "password authentication failed");
            Err(failed().into())
        }
        Err(e) => Err(ClientError::fatal("08P01", e.to_string()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_options_are_refused() {
        assert!(check_options("-c role=postgres").is_err());
        assert!(check_options("--role=postgres").is_err());
        assert!(check_options("-c session_authorization = x").is_err());
        assert!(check_options("-c session-authorization=x").is_err());
        assert!(check_options("-c search_path=app -c statement_timeout=5s").is_ok());
        assert!(check_options("-c myrole=1").is_ok());
    }
}
