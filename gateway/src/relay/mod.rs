//! The message pump of an established session. Both directions run in the session's task, so a
//! round trip costs no task hop, and each direction stops reading while its write is pending, so
//! a slow reader holds back the other side instead of filling the gateway's memory.
//!
//! The pumps here own the sockets; the protocol logic of each direction is a processor that
//! does no I/O ([`client_side`], [`server_side`]), given the bytes read and stopping where
//! something must happen outside it (a hold for approval, a wait for the server's answers, a
//! result's subscription). What they share is [`RelayState`]: the queue of expected replies
//! ([`replies`]), the stand-ins of refused statements ([`stand_in`]), the session's status.
//!
//! Frames are relayed as bytes. Only the messages the gateway must understand are looked at:
//! Query and Parse from the client (SQL analysis), ReadyForQuery, ParameterStatus and
//! ErrorResponse from the server (session state). Everything else, DataRow included, is passed
//! on without being decoded or copied into a new buffer.

use crate::approvals::request::{self as approval, ApprovalRequest, Mode, Status, Timestamp};
use crate::approvals::{Approvals, Deferred, WaitOutcome};
use crate::audit::fields::Fields;
use crate::audit::statement::{Decided, Outcomes, Params, Tally};
use crate::auth::Identity;
use crate::error::{ClientError, Refused};
use crate::metrics::METRICS;
use crate::plugins::bindings::pgward::plugin::types as wit;
use crate::plugins::{ApprovalAsk, PluginHost, QueryDecision, Refusal};
use crate::protocol::{self, tag as msg, target, FrameError};
use crate::results::catalog::Catalog;
use crate::results::codec::Styles;
use crate::results::server_messages::{self, ServerMessages};
use crate::results::{self, CopyFilter, Filter};
use crate::shutdown::Shutdown;
use crate::sql::{Analysis, CopyDirection, LexOptions, SqlAnalyzer, StatementKind};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::upstream::UpstreamTarget;
use bytes::{Buf, BufMut, BytesMut};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

mod client_side;
mod commit_guard;
mod replies;
#[cfg(test)]
mod scripted;
mod server_side;
mod stand_in;
use crate::sqlstate;
use client_side::{ClientSide, Step as ClientStep};
use commit_guard::{QueryPlan, Segment, SegmentStep, Traits};
use replies::{Columns, Describe, DescriptionOf, Ended, OwnReply, Replies};
use server_side::{Answer, ServerSide, Step, Subscribe};
use stand_in::{put_statement, StandIns};

/// `wrapped_end` of a wrapped Query a result of which was refused (not a transaction status).
const WRAPPED_REFUSED: u8 = b'R';
/// Read buffer for server messages; large so a big result moves in few system calls.
const SERVER_READ_BUF: usize = 64 * 1024;
const CLIENT_READ_BUF: usize = 16 * 1024;
/// PostgreSQL's own bound on any message (`PQ_LARGE_MESSAGE_LIMIT`).
const MAX_PROTOCOL_MESSAGE: usize = (1 << 30) - 1;

/// Session state that both directions read or write. Both run in the session's one task,
/// a local task of its worker thread, never at the same time: plain cells, no atomics or locks
/// (a borrow of [`Replies`] or [`StandIns`] never lasts across an await).
pub struct RelayState {
    txn_status: Cell<u8>,
    /// Query, Sync and FunctionCall messages sent upstream whose ReadyForQuery has not come back.
    pending: Cell<u32>,
    standard_conforming_strings: Cell<bool>,
    /// The client stream ends on a message boundary, so the gateway may add its own message.
    client_at_boundary: Cell<bool>,
    /// The server sent a FATAL error; it will close and the client already knows why.
    server_fatal: Cell<bool>,
    /// Extended-protocol messages were sent upstream after the last Sync: a statement may run
    /// with no ReadyForQuery counted for it yet (Flush-driven pipelines).
    unsynced: Cell<bool>,
    /// Part of a client message was forwarded and the rest has not arrived yet.
    client_mid_frame: Cell<bool>,
    /// Refused statements sent upstream as stand-ins, whose errors become the refusals.
    stand_ins: StandIns,
    /// What the server will answer, in order, for the messages the relay follows.
    replies: Replies,
    /// `DateStyle` is ISO and `IntervalStyle` postgres: text dates can be decoded.
    iso_dates: Cell<bool>,
    postgres_intervals: Cell<bool>,
    /// A statement of this session waits for approval in the gateway.
    holding: Cell<bool>,
    /// Query and Parse messages judged, for the session's audit record.
    statements: Cell<u64>,
    /// Bytes written to the server and to the client.
    to_server: Cell<u64>,
    to_client: Cell<u64>,
    /// Woken when the server's answers advance (an Execute answered, a ReadyForQuery): what
    /// the commit guard's waits wait on (see [`commit_guard`]).
    answered: tokio::sync::Notify,
    /// A result was refused and the server's answers are dropped until its ReadyForQuery.
    discarding: Cell<bool>,
    /// How a Query the gateway wrapped in a transaction block ended: 0 not yet, the status of
    /// its ReadyForQuery, or `R` when a result of it was refused.
    wrapped_end: Cell<u8>,
    /// A refusal left a transaction block open on the server that the client was told has
    /// failed: the server's transaction fails before the client's next message goes upstream.
    poisoned: Cell<bool>,
    /// The gateway's own Queries sent upstream whose ReadyForQuery has not come back.
    own: Cell<u32>,
    /// The session created relations or changed its `search_path`: the gateway's catalog
    /// connection may see other tables under the same names.
    names_changed: Cell<bool>,
    /// The server waits for the client's COPY data (CopyInResponse came, its end has not).
    copy_in: Cell<bool>,
    /// A relay that follows no answers (no result plugin, no audit trail) counts the Syncs the
    /// server ignores in copy-in mode (a following relay finds them in its queues):
    /// `copy_syncs`, sent right after the last Query or Execute with nothing else between,
    /// ignored if that statement starts COPY FROM STDIN (taken at its CopyInResponse);
    /// `copy_ignored`, sent while the server is in copy-in mode and before the client ended
    /// the copy (taken when the copy ends); `client_ended_copy`, the client has sent what
    /// ends the copy (CopyDone, CopyFail or anything else), so its next Syncs are answered.
    copy_syncs: Cell<u32>,
    copy_ignored: Cell<u32>,
    client_ended_copy: Cell<bool>,
    /// Shutdown has begun and waits for the session to be idle: the relay wakes it
    /// (`idle_changed`) whenever it may have become so. Unset, that costs one load.
    draining: Cell<bool>,
    idle_changed: tokio::sync::Notify,
}

/// A statement text as it went upstream.
#[derive(Debug, Clone, Default)]
struct Sent {
    analysis: Option<Arc<Analysis>>,
    /// The text, kept only when it copies rows to the client (a COPY needs it re-read).
    copy_sql: Option<Arc<str>>,
    /// Its audit record as decided, written once the server has answered for it.
    audit: Option<Decided>,
    /// A portal's bound parameters, when the audit trail records them.
    params: Option<Params>,
    /// A prepared statement's columns once asked for (and the portals bound to it).
    columns: Option<Arc<StatementColumns>>,
    /// A portal's result formats (from its Bind), kept when its statement's columns are.
    formats: Option<Arc<[i16]>>,
    /// A Query the gateway runs inside a transaction block of its own (see [`commit_guard`]).
    wrapped: bool,
    /// The columns of its COPY TO STDOUT statements as the session itself described them,
    /// right before it ran.
    copy_described: Option<Arc<SessionDescribed>>,
}

/// The columns of a Query's COPY TO STDOUT statements, asked of the session itself before the
/// Query runs (so temporary tables and the session's `search_path` count, which the gateway's
/// catalog connection does not see).
#[derive(Debug, Default)]
struct SessionDescribed {
    /// Statement index and what the server answered for it, in the order asked.
    slots: Mutex<Vec<(usize, CopyColumns)>>,
}

#[derive(Debug, Clone, PartialEq)]
enum CopyColumns {
    Pending,
    /// A RowDescription body.
    Rows(Vec<u8>),
    Failed,
}

impl SessionDescribed {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<(usize, CopyColumns)>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next answer (a RowDescription body, or `None` for anything else) arrived.
    fn answered(&self, rows: Option<&[u8]>) {
        let mut slots = self.slots();
        if let Some(slot) = slots.iter_mut().find(|s| s.1 == CopyColumns::Pending) {
            slot.1 = rows.map_or(CopyColumns::Failed, |b| CopyColumns::Rows(b.to_vec()));
        }
    }

    /// The server failed: what was not answered yet never will be.
    fn failed(&self) {
        for slot in self.slots().iter_mut() {
            if slot.1 == CopyColumns::Pending {
                slot.1 = CopyColumns::Failed;
            }
        }
    }

    /// The columns of statement `index`; `None` when they were not asked for.
    fn get(&self, index: usize) -> Option<CopyColumns> {
        self.slots()
            .iter()
            .find(|s| s.0 == index)
            .map(|s| s.1.clone())
    }
}

impl Sent {
    fn new(analysis: Option<Arc<Analysis>>, text: &str, audit: Option<Decided>) -> Sent {
        let copy_sql = analysis
            .as_deref()
            .filter(|a| copies_to_client(a))
            .map(|_| Arc::from(text));
        Sent {
            analysis,
            copy_sql,
            audit,
            params: None,
            columns: None,
            formats: None,
            wrapped: false,
            copy_described: None,
        }
    }
}

/// A prepared statement's result columns, learned from one Describe of it and shared by the
/// portals bound to it, so its executions need no Describe of their own. They hold for the
/// statement's life: PostgreSQL refuses to run a prepared statement whose result types
/// changed, and a table's oid or column numbers change only by DDL, which moves the catalog
/// generation a description was read under.
#[derive(Debug)]
struct StatementColumns {
    /// The client's pipeline (Syncs before it) the Describe went upstream in.
    pipeline: u64,
    described: OnceLock<Described>,
    /// Its rows had no subscriber under these plugins, catalog and result formats: the next
    /// executions under the same ones skip the result-schema lookup (the same answer).
    unfiltered: Mutex<Option<ResultKey>>,
}

/// What decides whether a plugin subscribes to a prepared statement's rows, besides the
/// statement itself: the plugin chain, the plugin instances, the catalog and the portal's
/// result formats. Generations only grow, so a key made before a change never matches after.
#[derive(Debug, Clone, PartialEq)]
struct ResultKey {
    chain: u64,
    instances: u64,
    catalog: u64,
    formats: Arc<[i16]>,
}

#[derive(Debug)]
enum Described {
    /// The RowDescription's body (every column in text), read under this catalog generation.
    Rows(Box<[u8]>, u64),
    /// The statement returns no rows.
    NoData,
    /// The server skipped the Describe (an earlier error in its pipeline).
    Skipped,
}

impl StatementColumns {
    fn new(pipeline: u64) -> Arc<StatementColumns> {
        Arc::new(StatementColumns {
            pipeline,
            described: OnceLock::new(),
            unfiltered: Mutex::new(None),
        })
    }

    fn unfiltered(&self, key: &ResultKey) -> bool {
        let known = self.unfiltered.lock().unwrap_or_else(|e| e.into_inner());
        known.as_ref() == Some(key)
    }

    fn set_unfiltered(&self, key: ResultKey) {
        *self.unfiltered.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    /// An Execute sent now in `pipeline` can take its columns from here: they are known, or
    /// their Describe went in the same pipeline (the server answers it first, or skips both).
    fn usable(&self, pipeline: u64, generation: u64) -> bool {
        match self.described.get() {
            Some(Described::Rows(_, g)) => *g == generation,
            Some(Described::NoData) => true,
            Some(Described::Skipped) => false,
            None => self.pipeline == pipeline,
        }
    }

    /// The statement must be described again (its Describe was skipped, or DDL ran since).
    fn stale(&self, generation: u64) -> bool {
        match self.described.get() {
            Some(Described::Rows(_, g)) => *g != generation,
            Some(Described::Skipped) => true,
            Some(Described::NoData) | None => false,
        }
    }
}

/// A statement a plugin wants approved before it runs: a Query is held where it stands, a
/// Parse goes upstream and each Bind of it is held (it carries the parameter values).
#[derive(Debug)]
struct NeedsApproval {
    ask: ApprovalAsk,
    /// The statement's number in the session's audit records.
    statement: u64,
    sql: String,
    analysis: Arc<Analysis>,
    extended: bool,
}

/// What the gateway makes of a Query, Parse or FunctionCall.
enum Inspected {
    /// Sent upstream (as it was, rewritten, or as a stand-in).
    Sent(Sent),
    /// Held: nothing was sent; run it once approved.
    Held(Arc<NeedsApproval>),
    /// A Parse that went upstream, whose every Bind must be approved.
    Prepared(Sent, Arc<NeedsApproval>),
}

impl RelayState {
    pub fn new(txn_status: u8) -> Self {
        RelayState {
            txn_status: Cell::new(txn_status),
            pending: Cell::new(0),
            standard_conforming_strings: Cell::new(true),
            client_at_boundary: Cell::new(true),
            server_fatal: Cell::new(false),
            unsynced: Cell::new(false),
            client_mid_frame: Cell::new(false),
            stand_ins: StandIns::default(),
            replies: Replies::default(),
            iso_dates: Cell::new(true),
            postgres_intervals: Cell::new(true),
            holding: Cell::new(false),
            statements: Cell::new(0),
            to_server: Cell::new(0),
            to_client: Cell::new(0),
            answered: tokio::sync::Notify::new(),
            discarding: Cell::new(false),
            wrapped_end: Cell::new(0),
            poisoned: Cell::new(false),
            own: Cell::new(0),
            names_changed: Cell::new(false),
            copy_in: Cell::new(false),
            copy_syncs: Cell::new(0),
            copy_ignored: Cell::new(0),
            client_ended_copy: Cell::new(false),
            draining: Cell::new(false),
            idle_changed: tokio::sync::Notify::new(),
        }
    }

    /// Tracks the server settings that change how the gateway reads SQL.
    pub fn observe_parameter(&self, name: &str, value: &str) {
        match name {
            "standard_conforming_strings" => self
                .standard_conforming_strings
                .set(value.eq_ignore_ascii_case("on")),
            "DateStyle" => self.iso_dates.set(value.starts_with("ISO")),
            "IntervalStyle" => self.postgres_intervals.set(value == "postgres"),
            _ => {}
        }
    }

    fn styles(&self) -> Styles {
        Styles {
            iso_dates: self.iso_dates.get(),
            postgres_intervals: self.postgres_intervals.get(),
        }
    }

    /// Statements (Query and Parse messages) the session sent.
    pub fn statements(&self) -> u64 {
        self.statements.get()
    }

    /// Bytes written to (client → server, server → client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.to_server.get(), self.to_client.get())
    }

    pub fn txn_status(&self) -> u8 {
        self.txn_status.get()
    }

    fn lex_options(&self) -> LexOptions {
        LexOptions {
            standard_conforming_strings: self.standard_conforming_strings.get(),
        }
    }

    /// Outside a transaction block, with no Query or Sync awaiting its ReadyForQuery.
    fn quiet(&self) -> bool {
        self.txn_status() == protocol::TXN_IDLE && self.pending.get() == 0
    }

    /// Wakes a shutdown waiting for the session to be idle, if one is: called after each
    /// ReadyForQuery and each client read, where idleness can begin.
    fn may_be_idle(&self) {
        // SeqCst, as the waiter's store and its reads of the idle state: either it sees this
        // change or this sees it waiting.
        if self.draining.get() {
            self.idle_changed.notify_waiters();
        }
    }

    /// Nothing is in flight and no transaction is open: closing now loses nothing. The Syncs
    /// the server ignores during COPY FROM STDIN are not waited for (see `copy_syncs`), and
    /// a session is never idle while the server is in copy-in mode.
    pub fn is_idle(&self) -> bool {
        self.pending.get() == 0
            && !self.copy_in.get()
            && !self.holding.get()
            && !self.unsynced.get()
            && !self.client_mid_frame.get()
            && self.txn_status() == protocol::TXN_IDLE
            && self.client_at_boundary.get()
    }
}

/// Adds `n` to a counter of the session; returns the value before.
fn add<T: Copy + std::ops::Add<Output = T>>(counter: &Cell<T>, n: T) -> T {
    let before = counter.get();
    counter.set(before + n);
    before
}

/// Per-session inputs of the relay.
pub struct RelayContext<'a> {
    pub analyzer: &'a SqlAnalyzer,
    pub max_message_size: usize,
    pub idle_timeout: Duration,
    pub identity: &'a Identity,
    pub session_id: u64,
    /// The session as plugins and approval requests see it.
    pub plugin_session: &'a wit::Session,
    /// The plugin chain and result filtering: `None` when no plugins are configured, and the
    /// relay then only relays (and audits).
    pub policies: Option<Policies<'a>>,
    /// The approvals workflow, when configured.
    pub approvals: Option<&'a Arc<Approvals>>,
    /// Woken by a CancelRequest with this session's key.
    pub cancelled: Option<&'a tokio::sync::Notify>,
    /// How the identity was proven, for approval requests.
    pub auth_method: &'a str,
    /// The audit trail, when configured.
    pub audit: Option<&'a crate::audit::Audit>,
    /// Statement records waiting for the server's answer (with the audit trail).
    pub outcomes: Option<&'a Outcomes<'a>>,
}

/// What judging statements and filtering results through plugins needs.
pub struct Policies<'a> {
    pub host: &'a PluginHost,
    /// The session's identity's number for the plugins' verdict caches
    /// ([`PluginHost::identity_id`]).
    pub identity: u64,
    pub catalog: &'a Catalog,
    pub upstream: &'a UpstreamTarget,
    pub database: &'a str,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    /// What becomes of the server's errors and notices while a result plugin is loaded.
    pub server_messages: ServerMessages,
}

impl<'a> RelayContext<'a> {
    /// A session with no plugins, approvals or audit trail, for tests.
    #[cfg(test)]
    fn bare(
        analyzer: &'a SqlAnalyzer,
        identity: &'a Identity,
        plugin_session: &'a wit::Session,
    ) -> RelayContext<'a> {
        RelayContext {
            analyzer,
            max_message_size: 1 << 20,
            idle_timeout: Duration::ZERO,
            identity,
            session_id: 1,
            plugin_session,
            policies: None,
            approvals: None,
            cancelled: None,
            auth_method: "trust",
            audit: None,
            outcomes: None,
        }
    }

    /// The plugin host, when plugins are configured.
    fn host(&self) -> Option<&'a PluginHost> {
        self.policies.as_ref().map(|p| p.host)
    }

    /// A result plugin is active now.
    fn wants_results(&self) -> bool {
        self.host().is_some_and(|h| h.chain().wants_results())
    }
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

impl std::fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())?;
        match self {
            RelayEnd::ClientIo(e) | RelayEnd::ServerIo(e) => write!(f, ": {e}"),
            RelayEnd::ClientProtocol(e) | RelayEnd::ServerProtocol(e) => write!(f, ": {e}"),
            _ => Ok(()),
        }
    }
}

impl RelayEnd {
    /// A short name for the audit record.
    pub fn reason(&self) -> &'static str {
        match self {
            RelayEnd::ClientTerminated => "client terminated",
            RelayEnd::ClientEof => "client closed the connection",
            RelayEnd::ServerEof => "server closed the connection",
            RelayEnd::IdleTimeout => "idle timeout",
            RelayEnd::Shutdown => "gateway shutdown",
            RelayEnd::ClientIo(_) => "client connection error",
            RelayEnd::ServerIo(_) => "server connection error",
            RelayEnd::ClientProtocol(_) => "client protocol violation",
            RelayEnd::ServerProtocol(_) => "server protocol violation",
        }
    }
}

/// Relays until one side ends, the session idles out, or shutdown asks it to stop.
pub async fn run(
    ctx: &RelayContext<'_>,
    client: &mut Stream,
    server: &mut Stream,
    state: &RelayState,
    shutdown: Shutdown,
) -> RelayEnd {
    let (mut client_r, mut client_w) = client.split();
    let (mut server_r, mut server_w) = server.split();
    tokio::select! {
        end = client_to_server(ctx, &mut client_r, &mut server_w, state) => end,
        end = server_to_client(ctx, &mut server_r, &mut client_w, state) => end,
        end = wait_for_shutdown(shutdown, state) => end,
    }
}

/// Closes both sides after the relay, telling the client why when it is safe to add a message.
pub async fn finish(end: RelayEnd, client: &mut Stream, server: &mut Stream, state: &RelayState) {
    let to_client = match &end {
        RelayEnd::ClientTerminated | RelayEnd::ClientEof | RelayEnd::ClientIo(_) => None,
        RelayEnd::ServerEof | RelayEnd::ServerIo(_) if state.server_fatal.get() => None,
        RelayEnd::ServerEof | RelayEnd::ServerIo(_) => Some(ClientError::fatal(
            sqlstate::CONNECTION_FAILURE,
            "the upstream server closed the connection unexpectedly",
        )),
        RelayEnd::IdleTimeout => Some(ClientError::fatal(
            sqlstate::IDLE_SESSION_TIMEOUT,
            "terminating connection due to idle-session timeout",
        )),
        RelayEnd::Shutdown => Some(ClientError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )),
        RelayEnd::ClientProtocol(e) => Some(ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid message from client: {e}"),
        )),
        RelayEnd::ServerProtocol(e) => {
            warn!(error = %e, "protocol violation from the upstream server");
            Some(ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "protocol violation from the upstream server",
            ))
        }
    };
    if let Some(e) = to_client {
        if state.client_at_boundary.get() {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.send_and_close(client)).await;
        }
    }
    if !matches!(
        end,
        RelayEnd::ClientTerminated | RelayEnd::ServerEof | RelayEnd::ServerIo(_)
    ) {
        // Terminate, so the server ends the backend at once instead of logging a lost client.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            server.write_all(&[msg::TERMINATE, 0, 0, 0, 4]).await?;
            server.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
}

/// Ends the session at shutdown: once it has begun, as soon as the session is idle (woken by
/// the relay, see [`RelayState::may_be_idle`]) or at the deadline, whichever comes first.
async fn wait_for_shutdown(shutdown: Shutdown, state: &RelayState) -> RelayEnd {
    shutdown.begun().await;
    // Let the session finish what it is doing, up to the deadline.
    state.draining.set(true);
    let idle = async {
        loop {
            let changed = state.idle_changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change right after it still wakes this.
            changed.as_mut().enable();
            if state.is_idle() {
                return;
            }
            changed.await;
        }
    };
    tokio::select! {
        _ = idle => {}
        _ = shutdown.expired() => {}
    }
    RelayEnd::Shutdown
}

fn message_limit(tag: u8, max_inspected: usize) -> usize {
    match tag {
        msg::QUERY | msg::PARSE | msg::FUNCTION_CALL => max_inspected,
        _ => MAX_PROTOCOL_MESSAGE,
    }
}

fn catalog_generation(ctx: &RelayContext<'_>) -> u64 {
    ctx.policies.as_ref().map_or(0, |r| r.catalog.generation())
}

/// Most prepared statements and portals remembered; past that the oldest knowledge is dropped
/// (their results then carry no inferred lineage, which only makes plugins more careful).
const MAX_PREPARED: usize = 10_000;

/// Appends a Describe of the portal (`P`) or statement (`S`) `name`.
fn put_describe(out: &mut BytesMut, kind: u8, name: &[u8]) {
    METRICS.describes_added.inc();
    protocol::put_message(out, msg::DESCRIBE, |o| {
        o.put_u8(kind);
        o.extend_from_slice(name);
        o.put_u8(0);
    });
}

/// The client → server pump: reads, lets [`ClientSide`] work out what goes upstream, holds
/// and waits where it says, writes.
async fn client_to_server(
    ctx: &RelayContext<'_>,
    client: &mut ReadHalf<'_>,
    server: &mut WriteHalf<'_>,
    state: &RelayState,
) -> RelayEnd {
    let mut buf = BytesMut::with_capacity(CLIENT_READ_BUF);
    let mut side = ClientSide::new(ctx);
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
        let mut terminated = false;
        loop {
            match side.process(ctx, state, &buf) {
                ClientStep::Read => break,
                ClientStep::Terminate => {
                    terminated = true;
                    break;
                }
                ClientStep::End(end) => return end,
                ClientStep::Wait(until) => {
                    if let Err(e) = flush_to_server(server, &mut side, state).await {
                        return RelayEnd::ServerIo(e);
                    }
                    let reached = |s: &RelayState| until.reached(s);
                    if let Err(end) = wait_answered(state, client, &mut buf, reached).await {
                        return end;
                    }
                }
                ClientStep::Hold(hold) => {
                    if let Err(e) = flush_to_server(server, &mut side, state).await {
                        return RelayEnd::ServerIo(e);
                    }
                    let params = hold.params;
                    let end = hold.frame_end;
                    match gate(ctx, state, &hold.needs, params, client, &mut buf, end).await {
                        Gate::ClientGone => return RelayEnd::ClientEof,
                        decided => side.answer(decided),
                    }
                }
            }
        }
        if !terminated {
            let consumed = side.consumed();
            buf.advance(consumed);
            // Grow as the bytes of a large message arrive, a megabyte at most at a time.
            buf.reserve(side.missing().min(1 << 20));
        }
        state
            .client_mid_frame
            .set(side.mid_frame() || !buf.is_empty());
        state.may_be_idle();
        if let Err(e) = flush_to_server(server, &mut side, state).await {
            return RelayEnd::ServerIo(e);
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
/// Returns what was sent, with its analysis, or that it waits for approval.
fn inspect_client_message(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    frame: &[u8],
    out: &mut BytesMut,
) -> Inspected {
    let chain = ctx.host().map(|p| p.chain());
    let policing = chain.as_ref().is_some_and(|c| c.wants_query());
    let mut body = &frame[5..];
    let (name, sql) = match frame[0] {
        msg::QUERY => (None, protocol::take_cstr(&mut body)),
        msg::PARSE => {
            let name = protocol::take_cstr(&mut body);
            (name, protocol::take_cstr(&mut body))
        }
        _ => {
            // FunctionCall runs a function by oid, outside any SQL the policies could judge.
            if policing {
                let refusal = Refusal {
                    plugin: "pgward".into(),
                    sqlstate: sqlstate::FEATURE_NOT_SUPPORTED.into(),
                    message:
                        "the FunctionCall protocol message is not allowed while policies are active"
                            .into(),
                    hint: Some("call the function with a SELECT statement".into()),
                };
                deny(ctx, state, &refusal, msg::QUERY, None, out);
            } else {
                out.extend_from_slice(frame);
            }
            return Inspected::Sent(Sent::default());
        }
    };
    let Some(sql) = sql else {
        // Malformed: the server rejects it with its own error.
        debug!(tag = %(frame[0] as char), "malformed message passed to the server");
        out.extend_from_slice(frame);
        return Inspected::Sent(Sent::default());
    };
    let number = add(&state.statements, 1) + 1;
    if ctx.audit.is_some_and(|a| !a.admits_statements()) {
        // Fail closed: nothing runs that the trail cannot record.
        let refusal = Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::IO_ERROR.into(),
            message: "the audit trail cannot be written, so no statement may run".into(),
            hint: Some(
                "the gateway log has the details; statements run again once it recovers".into(),
            ),
        };
        deny(ctx, state, &refusal, frame[0], name, out);
        return Inspected::Sent(Sent::default());
    }
    let lex = state.lex_options();
    let (text, analysis) = match std::str::from_utf8(sql) {
        Ok(text) => (text, Some(ctx.analyzer.analyze(text, lex))),
        Err(_) => ("", None),
    };
    if ctx.identity.upstream_role.is_some() {
        if let Some(what) = crate::auth::role_change(text, analysis.as_deref()) {
            let refusal = Refusal {
                plugin: "pgward".into(),
                sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                message: format!(
                    "this session's role is set by pgward for its identity and cannot be changed: {what}"
                ),
                hint: None,
            };
            refused(
                ctx,
                audit_statement(
                    ctx,
                    number,
                    text,
                    analysis.as_deref(),
                    if frame[0] == msg::QUERY {
                        "simple"
                    } else {
                        "extended"
                    },
                    &Judged::Deny(&refusal),
                    None,
                ),
            );
            deny(ctx, state, &refusal, frame[0], name, out);
            return Inspected::Sent(Sent::default());
        }
    }
    if let (Some(a), Some(r)) = (&analysis, &ctx.policies) {
        if a.statements.iter().any(|s| s.kind == StatementKind::Ddl) {
            r.catalog.invalidate(r.database);
        }
    }
    if let Some(a) = &analysis {
        debug!(
            user = %ctx.identity.user,
            fingerprint = %a.fingerprint_id,
            statements = a.statements.len(),
            "statement analysed"
        );
    }
    let protocol_name = if frame[0] == msg::QUERY {
        "simple"
    } else {
        "extended"
    };
    let (Some(policies), Some(chain)) = (&ctx.policies, chain.as_ref().filter(|_| policing)) else {
        let record = audit_statement(
            ctx,
            number,
            text,
            analysis.as_deref(),
            protocol_name,
            &Judged::Allow,
            None,
        );
        out.extend_from_slice(frame);
        return Inspected::Sent(Sent::new(analysis, text, record));
    };
    let Some(analysis) = analysis else {
        // Text the gateway cannot read cannot be judged: fail closed.
        let refusal = Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::CHARACTER_NOT_IN_REPERTOIRE.into(),
            message: "statement text is not valid UTF-8".into(),
            hint: None,
        };
        refused(
            ctx,
            audit_statement(
                ctx,
                number,
                text,
                None,
                protocol_name,
                &Judged::Deny(&refusal),
                None,
            ),
        );
        deny(ctx, state, &refusal, frame[0], name, out);
        return Inspected::Sent(Sent::default());
    };
    let protocol_kind = if frame[0] == msg::QUERY {
        wit::Protocol::Simple
    } else {
        wit::Protocol::Extended
    };
    let decision = policies.host.on_query(
        chain,
        ctx.plugin_session,
        policies.identity,
        text,
        &analysis,
        protocol_kind,
        |t| ctx.analyzer.analyze(t, lex),
    );
    let judged = match &decision {
        QueryDecision::Allow => Judged::Allow,
        QueryDecision::Rewrite(_) => Judged::Rewrite,
        QueryDecision::Deny(r) => Judged::Deny(r),
        QueryDecision::RequireApproval(ask) => Judged::NeedsApproval(ask),
    };
    // Held statements are recorded with their outcome, once decided (see `gate`).
    let held = frame[0] == msg::QUERY && matches!(judged, Judged::NeedsApproval(_));
    let record = match held && ctx.approvals.is_some() {
        true => None,
        false => audit_statement(
            ctx,
            number,
            text,
            Some(&analysis),
            protocol_name,
            &judged,
            None,
        ),
    };
    match decision {
        QueryDecision::Allow => {
            out.extend_from_slice(frame);
            Inspected::Sent(Sent::new(Some(analysis), text, record))
        }
        QueryDecision::Rewrite(new_sql) => {
            info!(fingerprint = %analysis.fingerprint_id, "statement rewritten by policy");
            put_statement(out, frame[0], name, &new_sql, body);
            Inspected::Sent(Sent::new(
                Some(ctx.analyzer.analyze(&new_sql, lex)),
                &new_sql,
                record,
            ))
        }
        QueryDecision::Deny(refusal) => {
            refused(ctx, record);
            deny(ctx, state, &refusal, frame[0], name, out);
            Inspected::Sent(Sent::default())
        }
        QueryDecision::RequireApproval(ask) if ctx.approvals.is_none() => {
            refused(ctx, record);
            deny(ctx, state, &ask.unconfigured(), frame[0], name, out);
            Inspected::Sent(Sent::default())
        }
        QueryDecision::RequireApproval(ask) => {
            // A Parse runs nothing: its record says what each Bind of it will need.
            record_now(ctx, record, "prepared");
            let needs = NeedsApproval {
                statement: number,
                ask,
                sql: text.to_owned(),
                analysis: analysis.clone(),
                extended: frame[0] == msg::PARSE,
            };
            if frame[0] == msg::QUERY {
                return Inspected::Held(Arc::new(needs));
            }
            // Preparing runs nothing: the statement is held at each Bind, with its parameters.
            out.extend_from_slice(frame);
            Inspected::Prepared(Sent::new(Some(analysis), text, None), Arc::new(needs))
        }
    }
}

/// A statement's verdict as the audit record states it.
enum Judged<'a> {
    Allow,
    Rewrite,
    Deny(&'a Refusal),
    NeedsApproval(&'a ApprovalAsk),
    /// The outcome of an approval request: `approved` (it ran), or refused.
    Approval {
        request: Option<&'a str>,
        refusal: Option<&'a Refusal>,
        plugin: &'a str,
    },
}

/// Writes the record of a statement the gateway refused: nothing of it runs, so no answer
/// of the server will complete it.
fn refused(ctx: &RelayContext<'_>, record: Option<Decided>) {
    record_now(ctx, record, "refused");
}

/// Writes a statement's record now, with `outcome`.
fn record_now(ctx: &RelayContext<'_>, record: Option<Decided>, outcome: &str) {
    if let (Some(audit), Some(record)) = (ctx.audit, record) {
        let mut own = Fields::with_capacity(2, 32);
        own.u64("session", ctx.session_id);
        own.str("outcome", outcome);
        audit.emit_fields("statement", record, own);
    }
}

/// The decided part of statement number `number`'s `statement` audit record (`None` without
/// an audit trail); [`refused`] or the session's [`Outcomes`] write it.
fn audit_statement(
    ctx: &RelayContext<'_>,
    number: u64,
    text: &str,
    analysis: Option<&Analysis>,
    protocol: &str,
    judged: &Judged<'_>,
    params: Option<&[Option<String>]>,
) -> Option<Decided> {
    let verdict_name = match judged {
        Judged::Allow => "allow",
        Judged::Rewrite => "rewrite",
        Judged::Deny(_) => "deny",
        Judged::NeedsApproval(_) if ctx.approvals.is_none() => "deny",
        Judged::NeedsApproval(_) => "require-approval",
        Judged::Approval { refusal: None, .. } => "approved",
        Judged::Approval { .. } => "approval-refused",
    };
    let kind = analysis
        .and_then(|a| a.statements.first())
        .map(|s| s.kind.as_str())
        .unwrap_or("unknown");
    METRICS.statement(kind, verdict_name);
    let audit = ctx.audit?;
    let cfg = audit.config();
    let shown = match (cfg.statement_text, analysis) {
        (crate::config::AuditText::Full, _) => text.to_owned(),
        (_, Some(a)) => a.fingerprint.clone(),
        (_, None) => String::new(),
    };
    let (verdict, plugin, sqlstate, message, request) = match judged {
        Judged::Allow => ("allow", None, None, None, None),
        Judged::Rewrite => ("rewrite", None, None, None, None),
        Judged::Deny(r) => (
            "deny",
            Some(r.plugin.as_str()),
            Some(r.sqlstate.as_str()),
            Some(r.message.as_str()),
            None,
        ),
        Judged::NeedsApproval(a) if ctx.approvals.is_none() => (
            "deny",
            Some(a.plugin.as_str()),
            Some(sqlstate::INSUFFICIENT_PRIVILEGE),
            Some(a.reason.as_str()),
            None,
        ),
        Judged::NeedsApproval(a) => (
            "require-approval",
            Some(a.plugin.as_str()),
            None,
            Some(a.reason.as_str()),
            None,
        ),
        Judged::Approval {
            request,
            refusal: None,
            plugin,
        } => ("approved", Some(*plugin), None, None, *request),
        Judged::Approval {
            request,
            refusal: Some(r),
            plugin,
        } => (
            "approval-refused",
            Some(*plugin),
            Some(r.sqlstate.as_str()),
            Some(r.message.as_str()),
            *request,
        ),
    };
    let mut f = Fields::with_capacity(16, 192 + shown.len());
    f.u64("statement", number);
    f.str("user", &ctx.identity.user);
    f.strs("groups", ctx.identity.groups.iter().map(Some));
    f.str("protocol", protocol);
    f.str("text", &shown);
    match analysis {
        Some(a) => {
            f.str("fingerprint_id", &a.fingerprint_id);
            let statements = || a.statements.iter();
            f.strs("commands", statements().map(|s| Some(s.command.as_str())));
            let reads = statements().flat_map(|s| s.reads.iter().map(|r| Some(r.to_string())));
            f.strs("reads", reads);
            let writes = statements().flat_map(|s| {
                s.writes
                    .iter()
                    .map(|w| Some(format!("{} {}", w.action.as_str(), w.relation)))
            });
            f.strs("writes", writes);
        }
        None => {
            for name in ["fingerprint_id", "commands", "reads", "writes"] {
                f.null(name);
            }
        }
    }
    f.str("verdict", verdict);
    f.opt_str("plugin", plugin);
    f.opt_str("sqlstate", sqlstate);
    f.opt_str("message", message);
    f.opt_str("approval_request", request);
    if let (true, Some(p)) = (cfg.parameters, params) {
        f.strs("parameters", p.iter().map(Option::as_deref));
    }
    f.sort();
    Some(Arc::new(f))
}

fn too_many_held_statements() -> Refusal {
    Refusal {
        plugin: "pgward".into(),
        sqlstate: sqlstate::CONFIGURATION_LIMIT_EXCEEDED.into(),
        message: format!(
            "more than {MAX_PREPARED} prepared statements of this session need approval; close some first"
        ),
        hint: None,
    }
}

/// A stand-in for a Parse that was forwarded in `out` already: replaces it.
fn deny_prepared(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    refusal: &Refusal,
    frame: &[u8],
    out: &mut BytesMut,
) {
    out.truncate(out.len().saturating_sub(frame.len()));
    let mut body = &frame[5..];
    let name = protocol::take_cstr(&mut body);
    deny(ctx, state, refusal, msg::PARSE, name, out);
}

/// The parts of a Bind message after its portal and statement names, read in place.
struct BindParts<'a> {
    param_formats: Vec<i16>,
    params: Vec<Option<&'a [u8]>>,
    result_formats: Vec<i16>,
}

/// Reads a Bind frame; `None` when it is malformed (the server refuses it then).
fn read_bind(frame: &[u8]) -> Option<BindParts<'_>> {
    let mut body = frame.get(5..)?;
    protocol::take_cstr(&mut body)?;
    protocol::take_cstr(&mut body)?;
    fn take_i16(b: &mut &[u8]) -> Option<i16> {
        let v = i16::from_be_bytes(b.get(..2)?.try_into().ok()?);
        *b = &b[2..];
        Some(v)
    }
    fn take_formats(b: &mut &[u8]) -> Option<Vec<i16>> {
        let n = take_i16(b)?.max(0);
        (0..n).map(|_| take_i16(b)).collect()
    }
    let param_formats = take_formats(&mut body)?;
    let nparams = take_i16(&mut body)?.max(0) as usize;
    let mut params = Vec::with_capacity(nparams);
    for _ in 0..nparams {
        let len = protocol::take_i32(&mut body)?;
        if len < 0 {
            params.push(None);
            continue;
        }
        let value = body.get(..len as usize)?;
        body = &body[len as usize..];
        params.push(Some(value));
    }
    let result_formats = take_formats(&mut body)?;
    Some(BindParts {
        param_formats,
        params,
        result_formats,
    })
}

/// The parameter values of a Bind: text as it is, binary as `\x` and hex, NULL as `None`.
fn bind_parameters(frame: &[u8]) -> Vec<Option<String>> {
    let Some(bind) = read_bind(frame) else {
        return Vec::new();
    };
    let formats = &bind.param_formats;
    bind.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let binary = match formats.len() {
                0 => false,
                1 => formats[0] == 1,
                _ => formats.get(i) == Some(&1),
            };
            p.map(|value| {
                if binary {
                    format!("\\x{}", approval::hex(value))
                } else {
                    String::from_utf8_lossy(value).into_owned()
                }
            })
        })
        .collect()
}

/// What became of a statement that needed approval.
enum Gate {
    /// Release it; its record (approved) is written once the server has answered.
    Run(Option<Decided>),
    Refuse(Refusal),
    ClientGone,
}

/// Most client bytes read (to notice a disconnect) while a statement is held.
const HOLD_READ_LIMIT: usize = 1 << 20;

/// Decides whether a statement that needs approval runs: defer mode claims an earlier
/// approval or files a request and refuses at once; hold mode files one and waits for its
/// decision, reading the client meanwhile only to notice a cancel or a disconnect (both
/// withdraw the request). Every store failure refuses the statement.
async fn gate(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    needs: &NeedsApproval,
    params: Vec<Option<String>>,
    client: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    frame_end: usize,
) -> Gate {
    let mut request = None;
    // Kept for the audit record only when it records parameters.
    let audited_params = ctx
        .audit
        .filter(|a| a.config().parameters)
        .map(|_| params.clone());
    let gate = decide_held(
        ctx,
        state,
        needs,
        params,
        client,
        buf,
        frame_end,
        &mut request,
    )
    .await;
    let refusal = match &gate {
        Gate::Refuse(r) => Some(r.clone()),
        Gate::ClientGone => Some(Refusal {
            plugin: needs.ask.plugin.clone(),
            sqlstate: sqlstate::CONNECTION_FAILURE.into(),
            message: "the client disconnected while the statement was held".into(),
            hint: None,
        }),
        Gate::Run(_) => None,
    };
    let record = audit_statement(
        ctx,
        needs.statement,
        &needs.sql,
        Some(&needs.analysis),
        if needs.extended { "extended" } else { "simple" },
        &Judged::Approval {
            request: request.as_deref(),
            refusal: refusal.as_ref(),
            plugin: &needs.ask.plugin,
        },
        audited_params.as_deref(),
    );
    match gate {
        Gate::Run(_) => Gate::Run(record),
        other => {
            refused(ctx, record);
            other
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn decide_held(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    needs: &NeedsApproval,
    params: Vec<Option<String>>,
    client: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    frame_end: usize,
    request_id: &mut Option<String>,
) -> Gate {
    let Some(approvals) = ctx.approvals else {
        return Gate::Refuse(needs.ask.unconfigured());
    };
    let ask = &needs.ask;
    let store_failed = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "approvals store failed; statement refused");
        Gate::Refuse(Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::SYSTEM_ERROR.into(),
            message: "the approval request could not be recorded, so the statement was not run"
                .into(),
            hint: Some("the gateway log has the details".into()),
        })
    };
    let user = &ctx.identity.user;
    let key = approval::match_key(user, &needs.sql, &params);
    if ask.defer {
        match approvals.deferred(user, &key).await {
            Ok(Deferred::Run(r)) => {
                info!(request = %r.id, "approved deferred statement runs");
                *request_id = Some(r.id);
                return Gate::Run(None);
            }
            Ok(Deferred::Pending(r)) => {
                *request_id = Some(r.id.clone());
                return Gate::Refuse(deferred_refusal(approvals, &r, true));
            }
            Ok(Deferred::New) => {}
            Err(e) => return store_failed(&e),
        }
    }
    let cancelled = ctx.cancelled.map(|n| n.notified());
    let mut cancelled = std::pin::pin!(cancelled);
    if let Some(c) = cancelled.as_mut().as_pin_mut() {
        // From now on a cancel counts, even one that arrives before the wait starts.
        c.enable();
    }
    let request = match new_request(ctx, approvals, needs, params, key) {
        Ok(r) => r,
        Err(e) => return store_failed(&e),
    };
    let request = match approvals.create(request).await {
        Ok(r) => r,
        Err(e) => return store_failed(&e),
    };
    *request_id = Some(request.id.clone());
    if ask.defer {
        return Gate::Refuse(deferred_refusal(approvals, &request, false));
    }
    let id = request.id.clone();
    // Should the session end while the statement waits, nobody waits for the answer.
    let mut withdraw = approvals.withdraw_on_drop(&id);
    state.holding.set(true);
    let timeout = approvals.config().hold_timeout;
    let wait = approvals.wait(&id, timeout);
    let mut wait = std::pin::pin!(wait);
    let outcome = loop {
        tokio::select! {
            outcome = &mut wait => break Some(outcome),
            _ = async {
                match cancelled.as_mut().as_pin_mut() {
                    Some(c) => c.await,
                    None => std::future::pending().await,
                }
            } => {
                break None;
            }
            read = client.read_buf(buf), if buf.len() < HOLD_READ_LIMIT => {
                let gone = match read {
                    Ok(0) | Err(_) => true,
                    // Terminate right after the held message: the client has given up.
                    Ok(_) => buf.get(frame_end) == Some(&msg::TERMINATE),
                };
                if gone {
                    withdraw.disarm();
                    state.holding.set(false);
                    info!(request = %id, "client disconnected while its statement was held; request withdrawn");
                    if let Err(e) = approvals.end(&id, Status::Withdrawn, "client disconnected").await {
                        warn!(error = %e, request = %id, "cannot withdraw approval request");
                    }
                    return Gate::ClientGone;
                }
            }
        }
    };
    withdraw.disarm();
    state.holding.set(false);
    let outcome = match outcome {
        Some(o) => o,
        None => {
            info!(request = %id, "client cancelled its held statement; request withdrawn");
            if let Err(e) = approvals
                .end(&id, Status::Withdrawn, "client cancelled")
                .await
            {
                warn!(error = %e, request = %id, "cannot withdraw approval request");
            }
            return Gate::Refuse(Refusal {
                plugin: ask.plugin.clone(),
                sqlstate: sqlstate::QUERY_CANCELED.into(),
                message: format!(
                    "canceling statement due to user request; approval request {id} withdrawn"
                ),
                hint: None,
            });
        }
    };
    let outcome = match outcome {
        WaitOutcome::TimedOut => {
            // It may have been decided at the last moment: what the store says wins.
            match approvals
                .end(
                    &id,
                    Status::Expired,
                    "not decided within approvals.hold_timeout",
                )
                .await
            {
                Ok(Some(r)) if r.status == Status::Approved => WaitOutcome::Approved(r),
                Ok(Some(r)) if r.status == Status::Denied => WaitOutcome::Denied(r),
                Ok(_) => WaitOutcome::TimedOut,
                Err(e) => WaitOutcome::Failed(e),
            }
        }
        other => other,
    };
    match outcome {
        WaitOutcome::Approved(_) => match approvals.execute(&id).await {
            Ok(true) => {
                info!(request = %id, "approved statement released to the server");
                Gate::Run(None)
            }
            Ok(false) => Gate::Refuse(Refusal {
                plugin: ask.plugin.clone(),
                sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                message: format!(
                    "approval request {id} is no longer valid; the statement was not run"
                ),
                hint: None,
            }),
            Err(e) => store_failed(&e),
        },
        WaitOutcome::Denied(r) => {
            let (who, comment) = r
                .denial()
                .map(|d| (d.approver.clone(), d.comment.clone()))
                .unwrap_or_default();
            info!(request = %id, approver = %who, "held statement denied");
            Gate::Refuse(Refusal {
                plugin: ask.plugin.clone(),
                sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                message: match comment.filter(|c| !c.is_empty()) {
                    Some(c) => format!("approval request {id} was denied by {who}: {c}"),
                    None => format!("approval request {id} was denied by {who}"),
                },
                hint: None,
            })
        }
        WaitOutcome::Ended(r) => Gate::Refuse(Refusal {
            plugin: ask.plugin.clone(),
            sqlstate: sqlstate::QUERY_CANCELED.into(),
            message: format!(
                "approval request {id} is {} ({}); the statement was not run",
                r.status.as_str(),
                r.end_reason.as_deref().unwrap_or("ended")
            ),
            hint: None,
        }),
        WaitOutcome::TimedOut => {
            info!(request = %id, "held statement timed out");
            Gate::Refuse(Refusal {
                plugin: ask.plugin.clone(),
                sqlstate: sqlstate::QUERY_CANCELED.into(),
                message: format!(
                    "approval request {id} was not decided within {}; the statement was not run",
                    humantime::format_duration(timeout)
                ),
                hint: Some(format!(
                    "a member of \"{}\" must approve it while the statement waits",
                    ask.approver_group
                )),
            })
        }
        WaitOutcome::Failed(e) => store_failed(&e),
    }
}

fn deferred_refusal(approvals: &Approvals, r: &ApprovalRequest, existing: bool) -> Refusal {
    let valid = humantime::format_duration(approvals.config().valid_for);
    Refusal {
        plugin: r.plugin.clone(),
        sqlstate: crate::approvals::SQLSTATE_DEFERRED.into(),
        message: format!(
            "approval required: {}; request {} {} \"{}\"",
            r.reason,
            r.id,
            if existing { "is still pending with" } else { "was sent to" },
            r.approver_group
        ),
        hint: Some(format!(
            "once it is approved (pgward approvals show {}), run the same statement again within {valid}",
            r.id
        )),
    }
}

fn new_request(
    ctx: &RelayContext<'_>,
    approvals: &Approvals,
    needs: &NeedsApproval,
    params: Vec<Option<String>>,
    match_key: String,
) -> Result<ApprovalRequest, String> {
    let id = approval::new_id().map_err(|_| "the system random generator failed".to_owned())?;
    let now = Timestamp::now();
    let a = &needs.analysis;
    let timeout = match needs.ask.defer {
        true => approvals.config().defer_timeout,
        false => approvals.config().hold_timeout,
    };
    let session = ctx.plugin_session;
    Ok(ApprovalRequest {
        id,
        status: Status::Pending,
        mode: if needs.ask.defer {
            Mode::Defer
        } else {
            Mode::Hold
        },
        requester: approval::Requester {
            user: ctx.identity.user.clone(),
            groups: ctx.identity.groups.clone(),
            method: ctx.auth_method.to_owned(),
            session_id: ctx.session_id,
            client_addr: session.client_addr.clone(),
            application_name: session.application_name.clone(),
            database: session.database.clone(),
        },
        statement: approval::StatementRecord {
            sql: needs.sql.clone(),
            protocol: if needs.extended { "extended" } else { "simple" }.into(),
            params,
            commands: a.statements.iter().map(|s| s.command.clone()).collect(),
            reads: a
                .statements
                .iter()
                .flat_map(|s| s.reads.iter().map(|r| r.to_string()))
                .collect(),
            writes: a
                .statements
                .iter()
                .flat_map(|s| {
                    s.writes
                        .iter()
                        .map(|w| format!("{} {}", w.action.as_str(), w.relation))
                })
                .collect(),
            fingerprint: a.fingerprint.clone(),
            fingerprint_id: a.fingerprint_id.clone(),
        },
        plugin: needs.ask.plugin.clone(),
        rule: needs.ask.rule.clone(),
        reason: needs.ask.reason.clone(),
        approver_group: needs.ask.approver_group.clone(),
        quorum: needs.ask.quorum,
        created_at: now,
        expires_at: now.plus(timeout),
        valid_until: None,
        decided_at: None,
        executed_at: None,
        decisions: Vec::new(),
        end_reason: None,
        gateway: approvals.gateway().to_owned(),
        match_key,
    })
}

/// Some statement copies table data to the client (`COPY ... TO STDOUT`).
fn copies_to_client(a: &Analysis) -> bool {
    a.statements.iter().any(|s| {
        s.copy
            .as_ref()
            .is_some_and(|c| c.direction == crate::sql::CopyDirection::To && c.stdio)
    })
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
    let token = state.stand_ins.register(ctx.session_id, refusal);
    put_statement(out, tag, name, &token, &[0, 0]);
}

/// The server → client pump: reads, lets [`ServerSide`] work out what the client gets, finds
/// the subscriptions it asks for, writes.
async fn server_to_client(
    ctx: &RelayContext<'_>,
    server: &mut ReadHalf<'_>,
    client: &mut WriteHalf<'_>,
    state: &RelayState,
) -> RelayEnd {
    let mut buf = BytesMut::with_capacity(SERVER_READ_BUF);
    let mut side = ServerSide::new(ctx);
    let mut known = Subscriptions::default();
    // Bytes already in `buf` that have not been looked at.
    let mut unread = false;
    loop {
        if buf.capacity() - buf.len() < SERVER_READ_BUF / 4 {
            buf.reserve(SERVER_READ_BUF);
        }
        if !unread {
            match server.read_buf(&mut buf).await {
                Ok(0) => return RelayEnd::ServerEof,
                Ok(_) => {}
                Err(e) => return RelayEnd::ServerIo(e),
            }
        }
        unread = false;
        loop {
            let answer = match side.process(ctx, state, &buf) {
                Step::Read => break,
                Step::End(end) => return end,
                Step::Subscribe(Subscribe::Rows {
                    description,
                    analysis,
                    statement,
                }) => {
                    let d = description.bytes(&buf);
                    let started = start_result(ctx, state, &mut known, d, analysis, statement);
                    Answer::Rows(started.await)
                }
                Step::Subscribe(Subscribe::Copy {
                    frame,
                    sent,
                    statement,
                }) => Answer::Copy(start_copy(ctx, state, &buf[frame], sent, statement).await),
            };
            side.answer(answer);
        }
        if let Err(e) = write_to_client(client, &mut side, &buf, state).await {
            return RelayEnd::ClientIo(e);
        }
        let consumed = side.consumed();
        if consumed > 0 {
            buf.advance(consumed);
            state.client_at_boundary.set(side.at_boundary());
            // The ReadyForQuery that made the session idle may only now have reached the
            // client: a shutdown waiting for idleness looks again.
            state.may_be_idle();
        }
        // A partial batch waits only while the server keeps sending: when it pauses, the rows
        // go out, so a small result is never held back for a full batch.
        if side.holds_rows() {
            match tokio::time::timeout(Duration::ZERO, server.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return RelayEnd::ServerEof,
                Ok(Ok(_)) => {
                    unread = true;
                    continue;
                }
                Ok(Err(e)) => return RelayEnd::ServerIo(e),
                Err(_) => {}
            }
            side.flush_held(ctx, state);
            if let Err(e) = write_to_client(client, &mut side, &buf[..0], state).await {
                return RelayEnd::ClientIo(e);
            }
        }
    }
}

/// Writes what the server side has for the client from the bytes of `buf` it looked at.
async fn write_to_client(
    client: &mut WriteHalf<'_>,
    side: &mut ServerSide,
    buf: &[u8],
    state: &RelayState,
) -> std::io::Result<()> {
    let Some(bytes) = side.output(buf) else {
        return Ok(());
    };
    state.client_at_boundary.set(false);
    let written = write_flush(client, bytes, &METRICS.to_client_bytes, &state.to_client).await;
    side.output_sent();
    written
}

fn subscriber<'a>(
    host: &'a PluginHost,
    ctx: &'a RelayContext<'_>,
    r: &'a Policies<'_>,
    state: &RelayState,
) -> results::Subscribe<'a> {
    results::Subscribe {
        host,
        session: ctx.plugin_session,
        catalog: r.catalog,
        upstream: r.upstream,
        database: r.database,
        batch_rows: r.batch_rows,
        batch_bytes: r.batch_bytes,
        styles: state.styles(),
    }
}

/// The COPY TO STDOUT starting with CopyOutResponse `frame`: its filter, if some plugin
/// subscribes to its columns. A COPY the gateway cannot read is refused only then.
async fn start_copy(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    frame: &[u8],
    sent: Option<Sent>,
    statement: usize,
) -> Result<Option<CopyFilter>, Refusal> {
    let Some(r) = &ctx.policies else {
        return Ok(None);
    };
    let host = r.host;
    if !host.chain().wants_results() {
        return Ok(None);
    }
    let refuse = |message: String| Refusal {
        plugin: "pgward".into(),
        sqlstate: sqlstate::FEATURE_NOT_SUPPORTED.into(),
        message,
        hint: Some("read the rows with SELECT, which the result policies can filter".into()),
    };
    let sent = sent.unwrap_or_default();
    let Some(sql) = sent.copy_sql.as_deref() else {
        return Err(refuse(
            "the columns of this COPY cannot be determined, so it was not sent".into(),
        ));
    };
    let plan = results::copy::plan(sql, statement).map_err(|e| refuse(e.to_string()))?;
    let binary = frame.get(5) == Some(&1);
    let columns = frame
        .get(6..8)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .unwrap_or(0);
    let mut fields = match sent.copy_described.as_ref().map(|d| d.get(statement)) {
        Some(Some(CopyColumns::Rows(body))) => results::parse_row_description(&body)
            .ok_or_else(|| refuse("malformed RowDescription from the server".into()))?,
        Some(Some(_)) => {
            return Err(refuse(
                "the session could not describe the columns of this COPY".into(),
            ))
        }
        Some(None) => {
            return Err(refuse(
                "a statement before this COPY in the same query string may change which table it reads, so its columns are unknown; send the COPY in a query of its own".into(),
            ))
        }
        None => {
            // Described on the gateway's catalog connection, which sees neither the
            // session's temporary tables nor its search_path.
            let qualified = sent
                .analysis
                .as_deref()
                .and_then(|a| a.statements.get(statement))
                .is_some_and(|s| {
                    s.reads
                        .iter()
                        .all(|r| r.schema.as_deref().is_some_and(|s| s != "pg_temp"))
                });
            if state.names_changed.get() && !qualified {
                return Err(refuse(
                    "this session created relations or changed its search_path, so the columns of a COPY sent with the extended protocol cannot be told apart from another table's; qualify its tables with their schema, or send it as a simple query".into(),
                ));
            }
            results::catalog::describe(r.upstream, r.database, &plan.select)
                .await
                .map_err(|e| {
                    // The catalog's error may name upstream hosts: the log's, not the client's.
                    warn!(error = %e, "catalog describe of a COPY failed: result refused");
                    refuse(
                        "cannot determine the columns of this COPY, so it was not sent; the gateway log has the details"
                            .into(),
                    )
                })?
        }
    };
    if fields.len() != columns {
        return Err(refuse(format!(
            "this COPY has {columns} columns, its description {}",
            fields.len()
        )));
    }
    results::set_copy_format(&mut fields, binary);
    let inferred = sent
        .analysis
        .as_deref()
        .and_then(|a| a.statements.get(statement))
        .and_then(|s| s.output.as_ref());
    let subscribe = subscriber(host, ctx, r, state);
    let Some(subscription) = results::subscribe(&subscribe, fields, inferred).await? else {
        return Ok(None);
    };
    let filter = Filter::new(subscription, &subscribe);
    let format = plan.format.map_err(|e| {
        refuse(format!(
            "{e} while result policies read this COPY's columns"
        ))
    })?;
    if format.is_binary() != binary {
        return Err(refuse(
            "COPY format differs from what the server sends".into(),
        ));
    }
    Ok(Some(CopyFilter::new(filter, format)))
}

/// The result starting with RowDescription `frame`: its filter, if some plugin subscribes.
/// A session's earlier subscription decisions, by result shape: the same RowDescription from
/// the same statement shape, with the same plugins, plugin instances and catalog, is
/// subscribed the same way.
#[derive(Default)]
struct Subscriptions {
    entries: Vec<Remembered>,
}

struct Remembered {
    chain: u64,
    /// [`crate::plugins::instance_epoch`] when the answer was given.
    instances: u64,
    catalog: u64,
    row_description: Vec<u8>,
    analysis: Option<Arc<Analysis>>,
    statement: usize,
    subscription: Option<Arc<results::Subscription>>,
}

/// Result shapes remembered per session.
const REMEMBERED_SHAPES: usize = 64;

/// The result starting with RowDescription `frame`: its filter, if some plugin subscribes.
async fn start_result(
    ctx: &RelayContext<'_>,
    state: &RelayState,
    known: &mut Subscriptions,
    frame: &[u8],
    analysis: Option<Arc<Analysis>>,
    statement: usize,
) -> Result<Option<Filter>, Refusal> {
    let Some(r) = &ctx.policies else {
        return Ok(None);
    };
    let host = r.host;
    let chain = {
        let c = host.chain();
        if !c.wants_results() {
            return Ok(None);
        }
        c.generation()
    };
    let catalog = r.catalog.generation();
    let subscribe = subscriber(host, ctx, r, state);
    let instances = crate::plugins::instance_epoch();
    let same = |e: &Remembered| {
        e.chain == chain
            && e.instances == instances
            && e.catalog == catalog
            && e.statement == statement
            && e.row_description == frame[5..]
            && match (&e.analysis, &analysis) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    };
    if let Some(e) = known.entries.iter().find(|e| same(e)) {
        return Ok(e.subscription.clone().map(|s| Filter::new(s, &subscribe)));
    }
    let Some(fields) = results::parse_row_description(&frame[5..]) else {
        return Err(Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::PROTOCOL_VIOLATION.into(),
            message: "malformed RowDescription from the server".into(),
            hint: None,
        });
    };
    let inferred = analysis
        .as_deref()
        .and_then(|a| a.statements.get(statement))
        .and_then(|s| s.output.as_ref());
    let subscription = results::subscribe(&subscribe, fields, inferred).await?;
    if known.entries.len() >= REMEMBERED_SHAPES {
        known.entries.remove(0);
    }
    known.entries.push(Remembered {
        chain,
        // After the answers: asking may have created the instances.
        instances: crate::plugins::instance_epoch(),
        catalog,
        row_description: frame[5..].to_vec(),
        analysis,
        statement,
        subscription: subscription.clone(),
    });
    Ok(subscription.map(|s| Filter::new(s, &subscribe)))
}

fn invalidate_after_ddl(ctx: &RelayContext<'_>, analysis: Option<&Analysis>) {
    if let (Some(a), Some(r)) = (analysis, &ctx.policies) {
        if a.statements.iter().any(|s| s.kind == StatementKind::Ddl) {
            r.catalog.invalidate(r.database);
        }
    }
}

/// Sends what the client side has built for the server so far.
async fn flush_to_server(
    server: &mut WriteHalf<'_>,
    side: &mut ClientSide,
    state: &RelayState,
) -> std::io::Result<()> {
    if !side.output().is_empty() {
        write_flush(
            server,
            side.output(),
            &METRICS.to_server_bytes,
            &state.to_server,
        )
        .await?;
        side.output_sent();
    }
    Ok(())
}

/// The name of the gateway's own statement that describes a COPY's columns on the session.
const COPY_DESCRIBE_NAME: &[u8] = b"pgward_copy_describe";

/// Appends a Parse, Describe and Close of the SELECT behind each COPY TO STDOUT of Query `a`
/// (text `sql`), then a Sync; `None` when there is nothing to ask. A COPY after a statement
/// of the same string that may change what its names mean is not asked for (its columns are
/// then unknown, and it is refused if a plugin reads it).
fn describe_copies(a: &Analysis, sql: &str, out: &mut BytesMut) -> Option<Arc<SessionDescribed>> {
    let mut slots = Vec::new();
    let mut changed = false;
    for (i, st) in a.statements.iter().enumerate() {
        let to_client = st
            .copy
            .as_ref()
            .is_some_and(|c| c.direction == CopyDirection::To && c.stdio);
        if to_client && !changed {
            if let Ok(plan) = results::copy::plan(sql, i) {
                put_statement(
                    out,
                    msg::PARSE,
                    Some(COPY_DESCRIBE_NAME),
                    &plan.select,
                    &[0, 0],
                );
                put_describe(out, target::STATEMENT, COPY_DESCRIBE_NAME);
                protocol::put_message(out, msg::CLOSE, |o| {
                    o.put_u8(target::STATEMENT);
                    o.extend_from_slice(COPY_DESCRIBE_NAME);
                    o.put_u8(0);
                });
                slots.push((i, CopyColumns::Pending));
            }
        }
        changed |= statement_changes_names(st, None);
    }
    if slots.is_empty() {
        return None;
    }
    protocol::put_message(out, msg::SYNC, |_| {});
    Some(Arc::new(SessionDescribed {
        slots: Mutex::new(slots),
    }))
}

/// Statement `st` may change which relation a name means: DDL, a `search_path` change,
/// DISCARD, or something the gateway cannot see into. `frame` is the message's text, looked
/// at for `search_path` only when `st` sets something.
fn statement_changes_names(st: &crate::sql::StatementAnalysis, frame: Option<&[u8]>) -> bool {
    use StatementKind as K;
    let sets = st.kind == K::Set || st.functions.iter().any(|f| f.ends_with("set_config"));
    let cursor = matches!(
        st.command.as_str(),
        "DECLARE CURSOR" | "FETCH" | "CLOSE CURSOR"
    );
    match st.kind {
        K::Ddl | K::Unknown | K::Call | K::Execute => true,
        K::Utility => !cursor,
        _ if sets => frame.is_none_or(|f| {
            f.windows(11)
                .any(|w| w.eq_ignore_ascii_case(b"search_path"))
        }),
        _ => false,
    }
}

/// Some statement of `a` (message `frame`) may change which relation a name means.
fn changes_names(a: &Analysis, frame: &[u8]) -> bool {
    a.statements
        .iter()
        .any(|st| statement_changes_names(st, Some(frame)))
}

/// The text the gateway makes the server fail to abort its transaction after a refused
/// result (see [`commit_guard`]); the server's log shows it as a syntax error.
const ABORT_SQL: &str = "pgward_result_refused";

/// Appends a Query of the gateway's own (see [`replies::Expect::Own`]).
fn put_own_query(state: &RelayState, out: &mut BytesMut, sql: &str, forward: bool) {
    put_statement(out, msg::QUERY, None, sql, &[]);
    state.replies.pending().own_query(forward);
    add(&state.own, 1);
    add(&state.pending, 1);
}

/// Client bytes read while the relay waits for the server (commit guard), at most: past that
/// the client is not read until the wait ends.
const MAX_READ_WHILE_WAITING: usize = 1 << 20;

/// Waits until `done` holds, woken as the server's answers advance. The client is read
/// meanwhile (into `buf`, for later), so a client that goes away ends the wait and the session.
/// It also ends when the server waits for COPY data: nothing the relay waits for comes then.
async fn wait_answered(
    state: &RelayState,
    client: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    done: impl Fn(&RelayState) -> bool,
) -> Result<(), RelayEnd> {
    loop {
        if done(state) || state.copy_in.get() {
            return Ok(());
        }
        let answered = state.answered.notified();
        if buf.len() >= MAX_READ_WHILE_WAITING {
            answered.await;
            continue;
        }
        if buf.capacity() - buf.len() < CLIENT_READ_BUF / 4 {
            buf.reserve(CLIENT_READ_BUF);
        }
        tokio::select! {
            _ = answered => {}
            read = client.read_buf(buf) => match read {
                Ok(0) => return Err(RelayEnd::ClientEof),
                Ok(_) => {}
                Err(e) => return Err(RelayEnd::ClientIo(e)),
            },
        }
    }
}

fn guard_refusal(message: &str) -> Refusal {
    Refusal {
        plugin: "pgward".into(),
        sqlstate: sqlstate::FEATURE_NOT_SUPPORTED.into(),
        message: message.into(),
        hint: Some(
            "send the statements after the one that returns rows in a query of their own".into(),
        ),
    }
}

async fn write_flush(
    w: &mut WriteHalf<'_>,
    bytes: &[u8],
    counter: &prometheus_client::metrics::counter::Counter,
    session: &Cell<u64>,
) -> std::io::Result<()> {
    counter.inc_by(bytes.len() as u64);
    add(session, bytes.len() as u64);
    w.write_all(bytes).await?;
    w.flush().await
}
