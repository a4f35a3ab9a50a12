//! The message pump of an established session. Both directions run in the session's task, so a
//! round trip costs no task hop, and each direction stops reading while its write is pending, so
//! a slow reader holds back the other side instead of filling the gateway's memory.
//!
//! Frames are relayed as bytes. Only the messages the gateway must understand are looked at:
//! Query and Parse from the client (SQL analysis), ReadyForQuery, ParameterStatus and
//! ErrorResponse from the server (session state). Everything else, DataRow included, is passed
//! on without being decoded or copied into a new buffer.

use crate::auth::Identity;
use crate::error::ClientError;
use crate::plugins::bindings::pgward::plugin::types as wit;
use crate::plugins::{PluginHost, QueryDecision, Refusal};
use crate::protocol::{self, FrameError};
use crate::server::ShutdownSignal;
use crate::sql::{LexOptions, SqlAnalyzer};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use bytes::{Buf, BufMut, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Read buffer for server messages; large so a big result moves in few system calls.
const SERVER_READ_BUF: usize = 64 * 1024;
const CLIENT_READ_BUF: usize = 16 * 1024;
/// PostgreSQL's own bound on any message (`PQ_LARGE_MESSAGE_LIMIT`).
const MAX_PROTOCOL_MESSAGE: usize = (1 << 30) - 1;

/// Session state that both directions read or write.
pub struct RelayState {
    txn_status: AtomicU8,
    /// Query, Sync and FunctionCall messages sent upstream whose ReadyForQuery has not come back.
    pending: AtomicU32,
    standard_conforming_strings: AtomicBool,
    /// The client stream ends on a message boundary, so the gateway may add its own message.
    client_at_boundary: AtomicBool,
    /// The server sent a FATAL error; it will close and the client already knows why.
    server_fatal: AtomicBool,
    /// Extended-protocol messages were sent upstream after the last Sync: a statement may run
    /// with no ReadyForQuery counted for it yet (Flush-driven pipelines).
    unsynced: AtomicBool,
    /// Part of a client message was forwarded and the rest has not arrived yet.
    client_mid_frame: AtomicBool,
    /// Denied statements were sent upstream as a unique invalid token, so the server fails them
    /// in order and in the right transaction state; its syntax error for each token is replaced
    /// by the refusal. Touched only when something was denied.
    substitutions: Mutex<VecDeque<(String, BytesMut)>>,
    has_substitutions: AtomicBool,
    next_token: AtomicU64,
}

/// `text` contains `token` not followed by another digit or `_` (token `x_1` is not in `x_12`).
fn contains_token(text: &str, token: &str) -> bool {
    text.match_indices(token).any(|(i, _)| {
        !text[i + token.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '_')
    })
}

/// Prefix of the stand-in statement for a denied one.
const DENY_TOKEN: &str = "pgward_denied_";

impl RelayState {
    pub fn new(txn_status: u8) -> Self {
        RelayState {
            txn_status: AtomicU8::new(txn_status),
            pending: AtomicU32::new(0),
            standard_conforming_strings: AtomicBool::new(true),
            client_at_boundary: AtomicBool::new(true),
            server_fatal: AtomicBool::new(false),
            unsynced: AtomicBool::new(false),
            client_mid_frame: AtomicBool::new(false),
            substitutions: Mutex::new(VecDeque::new()),
            has_substitutions: AtomicBool::new(false),
            next_token: AtomicU64::new(1),
        }
    }

    /// Registers a refusal; returns the stand-in SQL text to send upstream instead.
    fn substitute(&self, session_id: u64, refusal: &Refusal) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        let token = format!("{DENY_TOKEN}{session_id}_{n}");
        let mut error = BytesMut::new();
        let detail = format!("denied by policy plugin \"{}\"", refusal.plugin);
        protocol::put_error(
            &mut error,
            &protocol::ErrorFields {
                severity: protocol::Severity::Error,
                code: &refusal.sqlstate,
                message: &refusal.message,
                detail: Some(&detail),
                hint: refusal.hint.as_deref(),
            },
        );
        let mut subs = self.substitutions.lock().unwrap_or_else(|e| e.into_inner());
        // A stand-in the server never parsed (it was inside an already failed transaction or
        // after an earlier error of the same pipeline) leaves its entry behind; keep few.
        if subs.len() >= 4096 {
            subs.pop_front();
        }
        subs.push_back((token.clone(), error));
        self.has_substitutions.store(true, Ordering::Release);
        token
    }

    /// The refusal to send instead of the server's error for a stand-in, if `frame` is one.
    fn take_substitution(&self, frame: &[u8]) -> Option<BytesMut> {
        if !self.has_substitutions.load(Ordering::Acquire) {
            return None;
        }
        let e = protocol::parse_error_body(&frame[5..]);
        if e.code != "42601" || !e.message.contains(DENY_TOKEN) {
            return None;
        }
        let mut subs = self.substitutions.lock().unwrap_or_else(|e| e.into_inner());
        let i = subs
            .iter()
            // Match the token itself, not quotes around it: localized messages quote differently.
            .position(|(t, _)| contains_token(&e.message, t))?;
        let (_, error) = subs.remove(i)?;
        if subs.is_empty() {
            self.has_substitutions.store(false, Ordering::Release);
        }
        Some(error)
    }

    /// Tracks the server settings that change how the gateway reads SQL.
    pub fn observe_parameter(&self, name: &str, value: &str) {
        if name == "standard_conforming_strings" {
            self.standard_conforming_strings
                .store(value.eq_ignore_ascii_case("on"), Ordering::Relaxed);
        }
    }

    pub fn txn_status(&self) -> u8 {
        self.txn_status.load(Ordering::Relaxed)
    }

    fn lex_options(&self) -> LexOptions {
        LexOptions {
            standard_conforming_strings: self.standard_conforming_strings.load(Ordering::Relaxed),
        }
    }

    /// Nothing is in flight and no transaction is open: closing now loses nothing. Errs on
    /// the side of busy (after a Sync sent during COPY IN, which the server ignores, the session
    /// never looks idle again; it is then closed only at the shutdown deadline).
    pub fn is_idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
            && !self.unsynced.load(Ordering::Acquire)
            && !self.client_mid_frame.load(Ordering::Acquire)
            && self.txn_status() == protocol::TXN_IDLE
            && self.client_at_boundary.load(Ordering::Acquire)
    }
}

/// Per-session inputs of the relay.
pub struct RelayContext<'a> {
    pub analyzer: &'a SqlAnalyzer,
    pub max_message_size: usize,
    pub idle_timeout: Duration,
    pub identity: &'a Identity,
    pub session_id: u64,
    pub plugins: Option<&'a PluginHost>,
    /// The session as plugins see it.
    pub plugin_session: &'a wit::Session,
}

/// Why the relay stopped.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate (already forwarded).
    ClientTerminated,
    /// The client closed its socket without Terminate.
    ClientEof,
    /// The server closed its socket.
    ServerEof,
    IdleTimeout,
    Shutdown,
    ClientIo(std::io::Error),
    ServerIo(std::io::Error),
    ClientProtocol(FrameError),
    ServerProtocol(FrameError),
}

/// Relays until one side ends, the session idles out, or shutdown asks it to stop.
pub async fn run(
    ctx: &RelayContext<'_>,
    client: &mut Stream,
    server: &mut Stream,
    state: &RelayState,
    shutdown: ShutdownSignal,
) -> RelayEnd {
    let (mut client_r, mut client_w) = client.split();
    let (mut server_r, mut server_w) = server.split();
    tokio::select! {
        end = client_to_server(ctx, &mut client_r, &mut server_w, state) => end,
        end = server_to_client(&mut server_r, &mut client_w, state) => end,
        end = wait_for_shutdown(shutdown, state) => end,
    }
}

/// Closes both sides after the relay, telling the client why when it is safe to add a message.
pub async fn finish(end: RelayEnd, client: &mut Stream, server: &mut Stream, state: &RelayState) {
    let to_client = match &end {
        RelayEnd::ClientTerminated | RelayEnd::ClientEof | RelayEnd::ClientIo(_) => None,
        RelayEnd::ServerEof | RelayEnd::ServerIo(_)
            if state.server_fatal.load(Ordering::Relaxed) =>
        {
            None
        }
        RelayEnd::ServerEof | RelayEnd::ServerIo(_) => Some(ClientError::fatal(
            "08006",
            "the upstream server closed the connection unexpectedly",
        )),
        RelayEnd::IdleTimeout => Some(ClientError::fatal(
            "57P05",
            "terminating connection due to idle-session timeout",
        )),
        RelayEnd::Shutdown => Some(ClientError::fatal(
            "57P01",
            "terminating connection due to administrator command",
        )),
        RelayEnd::ClientProtocol(e) => Some(ClientError::fatal(
            "08P01",
            format!("invalid message from client: {e}"),
        )),
        RelayEnd::ServerProtocol(e) => {
            warn!(error = %e, "protocol violation from the upstream server");
            Some(ClientError::fatal(
                "08P01",
                "protocol violation from the upstream server",
            ))
        }
    };
    if let Some(e) = to_client {
        if state.client_at_boundary.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.send_and_close(client)).await;
        }
    }
    if !matches!(
        end,
        RelayEnd::ClientTerminated | RelayEnd::ServerEof | RelayEnd::ServerIo(_)
    ) {
        // Terminate, so the server ends the backend at once instead of logging a lost client.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            server.write_all(&[b'X', 0, 0, 0, 4]).await?;
            server.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
}

async fn wait_for_shutdown(mut shutdown: ShutdownSignal, state: &RelayState) -> RelayEnd {
    let deadline = loop {
        if let Some(deadline) = *shutdown.borrow_and_update() {
            break deadline;
        }
        if shutdown.changed().await.is_err() {
            // The gateway dropped the sender without shutting down: never fire.
            std::future::pending::<()>().await;
        }
    };
    // Let the session finish what it is doing, up to the deadline.
    while !state.is_idle() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    RelayEnd::Shutdown
}

fn message_limit(tag: u8, max_inspected: usize) -> usize {
    match tag {
        b'Q' | b'P' | b'F' => max_inspected,
        _ => MAX_PROTOCOL_MESSAGE,
    }
}

async fn client_to_server(
    ctx: &RelayContext<'_>,
    client: &mut ReadHalf<'_>,
    server: &mut WriteHalf<'_>,
    state: &RelayState,
) -> RelayEnd {
    let mut buf = BytesMut::with_capacity(CLIENT_READ_BUF);
    let mut out = BytesMut::with_capacity(CLIENT_READ_BUF);
    // Bytes of the current frame still to copy through without looking at them.
    let mut pass = 0usize;
    loop {
        if buf.capacity() - buf.len() < CLIENT_READ_BUF / 4 {
            buf.reserve(CLIENT_READ_BUF);
        }
        let n = match read_client(ctx, client, &mut buf, state).await {
            Ok(Some(n)) => n,
            Ok(None) => return RelayEnd::IdleTimeout,
            Err(e) => return RelayEnd::ClientIo(e),
        };
        if n == 0 {
            return RelayEnd::ClientEof;
        }
        let mut pos = 0;
        let mut terminated = false;
        loop {
            if pass > 0 {
                let take = pass.min(buf.len() - pos);
                out.extend_from_slice(&buf[pos..pos + take]);
                pos += take;
                pass -= take;
                if pass > 0 {
                    break;
                }
            }
            let Some(&tag) = buf.get(pos) else { break };
            let header =
                match protocol::frame_header(&buf[pos..], message_limit(tag, ctx.max_message_size))
                {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return RelayEnd::ClientProtocol(e),
                };
            match tag {
                b'Q' | b'P' | b'F' => {
                    if buf.len() - pos < header.frame_len {
                        // Grow as the bytes arrive: a header alone must not pin a large buffer.
                        buf.reserve((header.frame_len - (buf.len() - pos)).min(1 << 20));
                        break;
                    }
                    let frame = &buf[pos..pos + header.frame_len];
                    inspect_client_message(ctx, state, frame, &mut out);
                    pos += header.frame_len;
                    if tag == b'P' {
                        state.unsynced.store(true, Ordering::Release);
                    } else {
                        state.pending.fetch_add(1, Ordering::AcqRel);
                    }
                }
                b'X' => {
                    out.extend_from_slice(&buf[pos..pos + 5.min(buf.len() - pos)]);
                    terminated = true;
                    break;
                }
                _ => {
                    match tag {
                        b'S' => {
                            state.pending.fetch_add(1, Ordering::AcqRel);
                            state.unsynced.store(false, Ordering::Release);
                        }
                        b'B' | b'E' | b'D' | b'C' | b'H' => {
                            state.unsynced.store(true, Ordering::Release)
                        }
                        _ => {}
                    }
                    pass = header.frame_len;
                }
            }
        }
        buf.advance(pos);
        state
            .client_mid_frame
            .store(pass > 0 || !buf.is_empty(), Ordering::Release);
        if !out.is_empty() {
            if let Err(e) = write_flush(server, &out).await {
                return RelayEnd::ServerIo(e);
            }
            out.clear();
        }
        if terminated {
            return RelayEnd::ClientTerminated;
        }
    }
}

/// Reads from the client; `None` when the session sat idle past the idle timeout.
async fn read_client(
    ctx: &RelayContext<'_>,
    client: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    state: &RelayState,
) -> std::io::Result<Option<usize>> {
    if ctx.idle_timeout.is_zero() {
        return client.read_buf(buf).await.map(Some);
    }
    loop {
        match tokio::time::timeout(ctx.idle_timeout, client.read_buf(buf)).await {
            Ok(r) => return r.map(Some),
            // Busy sessions (a long query, an open transaction) are not idle.
            Err(_) if state.is_idle() => return Ok(None),
            Err(_) => continue,
        }
    }
}

/// Looks at a complete Query, Parse or FunctionCall frame and appends what goes upstream in
/// its place: the frame itself, a rewritten frame, or a stand-in that makes the server fail it.
fn inspect_client_message(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    frame: &[u8],
    out: &mut BytesMut,
) {
    let chain = ctx.plugins.map(|p| p.chain());
    let policing = chain.as_ref().is_some_and(|c| c.wants_query());
    let mut body = &frame[5..];
    let (name, sql) = match frame[0] {
        b'Q' => (None, protocol::take_cstr(&mut body)),
        b'P' => {
            let name = protocol::take_cstr(&mut body);
            (name, protocol::take_cstr(&mut body))
        }
        _ => {
            // FunctionCall runs a function by oid, outside any SQL the policies could judge.
            if policing {
                let refusal = Refusal {
                    plugin: "pgward".into(),
                    sqlstate: "0A000".into(),
                    message:
                        "the FunctionCall protocol message is not allowed while policies are active"
                            .into(),
                    hint: Some("call the function with a SELECT statement".into()),
                };
                deny(ctx, state, &refusal, b'Q', None, out);
            } else {
                out.extend_from_slice(frame);
            }
            return;
        }
    };
    let Some(sql) = sql else {
        // Malformed: the server rejects it with its own error.
        debug!(tag = %(frame[0] as char), "malformed message passed to the server");
        out.extend_from_slice(frame);
        return;
    };
    let lex = state.lex_options();
    let (text, analysis) = match std::str::from_utf8(sql) {
        Ok(text) => (text, Some(ctx.analyzer.analyze(text, lex))),
        Err(_) => ("", None),
    };
    if let Some(a) = &analysis {
        debug!(
            user = %ctx.identity.user,
            fingerprint = %a.fingerprint_id,
            statements = a.statements.len(),
            "statement analysed"
        );
    }
    let (Some(host), Some(chain)) = (ctx.plugins, chain.as_ref().filter(|_| policing)) else {
        out.extend_from_slice(frame);
        return;
    };
    let Some(analysis) = analysis else {
        // Text the gateway cannot read cannot be judged: fail closed.
        let refusal = Refusal {
            plugin: "pgward".into(),
            sqlstate: "22021".into(),
            message: "statement text is not valid UTF-8".into(),
            hint: None,
        };
        deny(ctx, state, &refusal, frame[0], name, out);
        return;
    };
    let protocol_kind = if frame[0] == b'Q' {
        wit::Protocol::Simple
    } else {
        wit::Protocol::Extended
    };
    let decision = host.on_query(
        chain,
        ctx.plugin_session,
        text,
        &analysis,
        protocol_kind,
        |t| ctx.analyzer.analyze(t, lex),
    );
    match decision {
        QueryDecision::Allow => out.extend_from_slice(frame),
        QueryDecision::Rewrite(new_sql) => {
            info!(fingerprint = %analysis.fingerprint_id, "statement rewritten by policy");
            put_statement(out, frame[0], name, &new_sql, body);
        }
        QueryDecision::Deny(refusal) => deny(ctx, state, &refusal, frame[0], name, out),
    }
}

/// Sends a stand-in for a denied statement: the server fails it in order, and its error is
/// replaced by the refusal on the way back.
fn deny(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    refusal: &Refusal,
    tag: u8,
    name: Option<&[u8]>,
    out: &mut BytesMut,
) {
    info!(plugin = %refusal.plugin, sqlstate = %refusal.sqlstate, "statement denied");
    let token = state.substitute(ctx.session_id, refusal);
    put_statement(out, tag, name, &token, &[0, 0]);
}

/// A Query, or a Parse with the given statement name and the remaining parameter-type bytes.
fn put_statement(out: &mut BytesMut, tag: u8, name: Option<&[u8]>, sql: &str, param_types: &[u8]) {
    protocol::put_message(out, tag, |o| {
        if tag == b'P' {
            o.extend_from_slice(name.unwrap_or(b""));
            o.put_u8(0);
        }
        protocol::put_cstr(o, sql);
        if tag == b'P' {
            o.extend_from_slice(param_types);
        }
    });
}

async fn server_to_client(
    server: &mut ReadHalf<'_>,
    client: &mut WriteHalf<'_>,
    state: &RelayState,
) -> RelayEnd {
    let mut buf = BytesMut::with_capacity(SERVER_READ_BUF);
    let mut pass = 0usize;
    loop {
        if buf.capacity() - buf.len() < SERVER_READ_BUF / 4 {
            buf.reserve(SERVER_READ_BUF);
        }
        match server.read_buf(&mut buf).await {
            Ok(0) => return RelayEnd::ServerEof,
            Ok(_) => {}
            Err(e) => return RelayEnd::ServerIo(e),
        }
        let mut pos = 0;
        // Bytes before `written` were already sent (only when an error was replaced).
        let mut written = 0;
        loop {
            if pass > 0 {
                let take = pass.min(buf.len() - pos);
                pos += take;
                pass -= take;
                if pass > 0 {
                    break;
                }
            }
            let header = match protocol::frame_header(&buf[pos..], MAX_PROTOCOL_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return RelayEnd::ServerProtocol(e),
            };
            match header.tag {
                b'Z' | b'S' | b'E' => {
                    if buf.len() - pos < header.frame_len {
                        break;
                    }
                    let frame = &buf[pos..pos + header.frame_len];
                    if header.tag == b'E' {
                        if let Some(refusal) = state.take_substitution(frame) {
                            // Send what came before the server's error, then the refusal.
                            state.client_at_boundary.store(false, Ordering::Release);
                            if let Err(e) = write_flush(client, &buf[written..pos]).await {
                                return RelayEnd::ClientIo(e);
                            }
                            if let Err(e) = write_flush(client, &refusal).await {
                                return RelayEnd::ClientIo(e);
                            }
                            pos += header.frame_len;
                            written = pos;
                            continue;
                        }
                    }
                    observe_server_message(state, frame);
                    pos += header.frame_len;
                }
                _ => pass = header.frame_len,
            }
        }
        if pos > written {
            state.client_at_boundary.store(false, Ordering::Release);
            if let Err(e) = write_flush(client, &buf[written..pos]).await {
                return RelayEnd::ClientIo(e);
            }
        }
        if pos > 0 {
            buf.advance(pos);
            state.client_at_boundary.store(pass == 0, Ordering::Release);
        }
    }
}

fn observe_server_message(state: &RelayState, frame: &[u8]) {
    let body = &frame[5..];
    match frame[0] {
        b'Z' => {
            if let Some(&status) = body.first() {
                state.txn_status.store(status, Ordering::Relaxed);
            }
            let _ = state
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
        }
        b'S' => {
            let mut b = body;
            if let (Some(k), Some(v)) = (protocol::take_cstr(&mut b), protocol::take_cstr(&mut b)) {
                if let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) {
                    state.observe_parameter(k, v);
                }
            }
        }
        b'E' => {
            let e = protocol::parse_error_body(body);
            if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                state.server_fatal.store(true, Ordering::Relaxed);
            }
        }
        _ => {}
    }
}

async fn write_flush(w: &mut WriteHalf<'_>, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
