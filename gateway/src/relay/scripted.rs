//! The relay driven by byte slices: a test plays both the client and the server over loopback
//! sockets, writes the messages of each side as bytes and checks, byte for byte, what the
//! relay passes on, replaces or adds. No PostgreSQL and no plugin: what is checked is the
//! relay's own handling of the protocol (pipelines, errors mid-pipeline, portals, notices
//! between rows, a statement refused inside a transaction block and in a pipeline).

use super::*;
use crate::auth::Identity;
use crate::protocol::Severity;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// One message: its tag, length and `body`.
pub(super) fn m(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    protocol::put_message(&mut out, tag, |o| o.extend_from_slice(body));
    out.to_vec()
}

/// A NUL-terminated string.
pub(super) fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub(super) fn query(sql: &str) -> Vec<u8> {
    m(msg::QUERY, &z(sql))
}

pub(super) fn parse(name: &str, sql: &str) -> Vec<u8> {
    m(msg::PARSE, &[z(name), z(sql), vec![0, 0]].concat())
}

pub(super) fn bind(portal: &str, statement: &str) -> Vec<u8> {
    m(
        msg::BIND,
        &[z(portal), z(statement), vec![0, 0, 0, 0, 0, 0]].concat(),
    )
}

fn describe_portal(portal: &str) -> Vec<u8> {
    m(msg::DESCRIBE, &[vec![target::PORTAL], z(portal)].concat())
}

pub(super) fn execute(portal: &str) -> Vec<u8> {
    m(msg::EXECUTE, &[z(portal), vec![0, 0, 0, 0]].concat())
}

pub(super) fn sync() -> Vec<u8> {
    m(msg::SYNC, &[])
}

pub(super) fn ready(status: u8) -> Vec<u8> {
    m(msg::READY_FOR_QUERY, &[status])
}

pub(super) fn complete(tag: &str) -> Vec<u8> {
    m(msg::COMMAND_COMPLETE, &z(tag))
}

/// A one-column text RowDescription.
pub(super) fn row_description(column: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend(z(column));
    body.extend([
        0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 255, 255, 255, 255, 255, 255, 0, 0,
    ]);
    m(msg::ROW_DESCRIPTION, &body)
}

pub(super) fn data_row(value: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend((value.len() as i32).to_be_bytes());
    body.extend(value.as_bytes());
    m(msg::DATA_ROW, &body)
}

pub(super) fn error(code: &str, message: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    protocol::put_error(
        &mut out,
        &protocol::ErrorFields {
            severity: Severity::Error,
            code,
            message,
            detail: None,
            hint: None,
        },
    );
    out.to_vec()
}

/// CopyInResponse of one text column.
pub(super) fn copy_in_response() -> Vec<u8> {
    m(msg::COPY_IN_RESPONSE, &[0, 0, 1, 0, 0])
}

pub(super) fn notice(message: &str) -> Vec<u8> {
    let body = [
        vec![b'S'],
        z("NOTICE"),
        vec![b'C'],
        z("00000"),
        vec![b'M'],
        z(message),
        vec![0],
    ]
    .concat();
    m(msg::NOTICE_RESPONSE, &body)
}

/// A relay between two loopback connections whose other ends the test holds.
struct Scripted {
    /// The test as the client.
    client: TcpStream,
    /// The test as the server.
    server: TcpStream,
    relay: tokio::task::JoinHandle<String>,
    /// The gateway's shutdown, as the session sees it.
    shutdown: Shutdown,
}

async fn connected() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

impl Scripted {
    /// A bare relay (no plugins, no audit trail) for a session of `identity`.
    async fn start(identity: Identity) -> Scripted {
        let (client, client_gw) = connected().await;
        let (server_gw, server) = connected().await;
        let shutdown = Shutdown::new();
        let stopping = shutdown.clone();
        // A session is a local task (its state is not shared across threads): it runs on a
        // runtime of its own, as on a gateway worker thread.
        let (client_gw, server_gw) = (client_gw.into_std().unwrap(), server_gw.into_std().unwrap());
        let relay = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&runtime, async move {
                let analyzer = SqlAnalyzer::new(10);
                let session =
                    crate::plugins::convert_session(1, &identity, "db", "127.0.0.1:1", "");
                let ctx = RelayContext::bare(&analyzer, &identity, &session);
                let state = RelayState::new(protocol::TXN_IDLE);
                let mut client = Stream::Plain(TcpStream::from_std(client_gw).unwrap());
                let mut server = Stream::Plain(TcpStream::from_std(server_gw).unwrap());
                let end = run(&ctx, &mut client, &mut server, &state, stopping).await;
                end.to_string()
            })
        });
        Scripted {
            client,
            server,
            relay,
            shutdown,
        }
    }

    async fn client_sends(&mut self, messages: &[Vec<u8>]) {
        self.client.write_all(&messages.concat()).await.unwrap();
    }

    async fn server_sends(&mut self, messages: &[Vec<u8>]) {
        self.server.write_all(&messages.concat()).await.unwrap();
    }

    /// The client sends `messages` and the server receives exactly them.
    async fn passes_upstream(&mut self, messages: &[Vec<u8>]) {
        self.client_sends(messages).await;
        self.server_gets(messages).await;
    }

    /// The server sends `messages` and the client receives exactly them.
    async fn passes_back(&mut self, messages: &[Vec<u8>]) {
        self.server_sends(messages).await;
        self.client_gets(messages).await;
    }

    /// A COPY FROM STDIN as libpq starts it: Parse, Bind, Execute and Sync at once, then the
    /// server's CopyInResponse (the Sync is ignored in copy-in mode).
    async fn libpq_copy_starts(&mut self) {
        self.passes_upstream(&[
            parse("", "COPY t FROM STDIN"),
            bind("", ""),
            execute(""),
            sync(),
        ])
        .await;
        self.passes_back(&[m(b'1', &[]), m(b'2', &[]), copy_in_response()])
            .await;
    }

    /// What the server receives next: exactly `messages`, byte for byte.
    async fn server_gets(&mut self, messages: &[Vec<u8>]) {
        let want = messages.concat();
        let got = read_exactly(&mut self.server, want.len()).await;
        assert_eq!(frames(&got), frames(&want), "upstream");
    }

    /// What the client receives next: exactly `messages`, byte for byte.
    async fn client_gets(&mut self, messages: &[Vec<u8>]) {
        let want = messages.concat();
        let got = read_exactly(&mut self.client, want.len()).await;
        assert_eq!(frames(&got), frames(&want), "to the client");
    }

    /// The client hangs up; the relay ends without an error.
    async fn finish(mut self) {
        self.client
            .write_all(&m(msg::TERMINATE, &[]))
            .await
            .unwrap();
        // Nothing else reached the server: the Terminate comes next, then the end.
        self.server_gets(&[m(msg::TERMINATE, &[])]).await;
        let end = tokio::time::timeout(Duration::from_secs(5), self.relay)
            .await
            .expect("the relay ends")
            .unwrap();
        assert_eq!(end, "client terminated");
    }
}

impl Scripted {
    /// Shutdown begins (its deadline never comes) while the session is busy: the relay must
    /// still be running `wait` later.
    async fn busy_when_shutdown_begins(&mut self, wait: Duration) {
        self.shutdown.begin();
        tokio::time::sleep(wait).await;
        assert!(
            !self.relay.is_finished(),
            "the relay ended a session that was not idle"
        );
    }

    /// Shutdown begins (its deadline never comes): the relay must end as soon as the session
    /// is idle, within `within`.
    async fn ends_once_idle(self, within: Duration) {
        self.shutdown.begin();
        let end = tokio::time::timeout(within, self.relay)
            .await
            .expect("the idle session ends when shutdown begins")
            .unwrap();
        assert_eq!(end, "gateway shutdown");
    }
}

async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("the bytes arrive")
        .unwrap();
    buf
}

/// Messages as (tag, body) for readable assertion failures.
fn frames(bytes: &[u8]) -> Vec<(char, String)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(Some(h)) = protocol::frame_header(rest, 1 << 20) {
        let Some(frame) = rest.get(..h.frame_len) else {
            break;
        };
        out.push((
            h.tag as char,
            String::from_utf8_lossy(&frame[5..]).into_owned(),
        ));
        rest = &rest[h.frame_len..];
    }
    assert!(rest.is_empty(), "a partial message: {rest:?}");
    out
}

fn user() -> Identity {
    Identity {
        user: "u".into(),
        ..Default::default()
    }
}

/// A session whose role the gateway sets upstream: changing it is refused (42501), which
/// goes through the same stand-in as a plugin's deny.
fn mapped_role() -> Identity {
    Identity {
        upstream_role: Some("app".into()),
        ..user()
    }
}

#[tokio::test]
async fn a_pipeline_with_notices_between_rows_passes_byte_for_byte() {
    let mut s = Scripted::start(user()).await;
    let pipeline = [
        parse("s1", "SELECT v FROM t"),
        bind("", "s1"),
        describe_portal(""),
        execute(""),
        sync(),
        bind("p2", "s1"),
        execute("p2"),
        sync(),
    ];
    s.passes_upstream(&pipeline).await;
    let answers = [
        m(b'1', &[]),
        m(b'2', &[]),
        row_description("v"),
        data_row("a"),
        notice("between rows"),
        data_row("b"),
        complete("SELECT 2"),
        ready(protocol::TXN_IDLE),
        m(b'2', &[]),
        data_row("a"),
        m(msg::PORTAL_SUSPENDED, &[]),
        ready(protocol::TXN_IDLE),
    ];
    s.passes_back(&answers).await;
    s.finish().await;
}

#[tokio::test]
async fn an_error_mid_pipeline_reaches_the_client_and_the_next_pipeline_runs() {
    let mut s = Scripted::start(user()).await;
    let first = [
        parse("", "SELECT 1/0"),
        bind("", ""),
        execute(""),
        parse("", "SELECT 1"),
        bind("", ""),
        execute(""),
        sync(),
    ];
    s.passes_upstream(&first).await;
    // The server fails the first Execute and skips the rest up to Sync.
    let answers = [
        m(b'1', &[]),
        m(b'2', &[]),
        error("22012", "division by zero"),
        ready(protocol::TXN_IDLE),
    ];
    s.passes_back(&answers).await;
    let second = [query("SELECT 2")];
    s.passes_upstream(&second).await;
    let answers = [
        row_description("?column?"),
        data_row("2"),
        complete("SELECT 1"),
        ready(protocol::TXN_IDLE),
    ];
    s.passes_back(&answers).await;
    s.finish().await;
}

#[tokio::test]
async fn a_statement_refused_inside_a_transaction_fails_it_in_its_place() {
    let mut s = Scripted::start(mapped_role()).await;
    s.passes_upstream(&[query("BEGIN")]).await;
    let began = [complete("BEGIN"), ready(protocol::TXN_IN_BLOCK)];
    s.passes_back(&began).await;
    // The refused statement goes upstream as a stand-in the server cannot parse...
    s.client_sends(&[query("SET ROLE admin")]).await;
    s.server_gets(&[query("pgward_denied_1_1")]).await;
    // ...so the server fails the block where the statement would have run, and its syntax
    // error for the stand-in becomes the refusal.
    s.server_sends(&[
        error(
            sqlstate::SYNTAX_ERROR,
            "syntax error at or near \"pgward_denied_1_1\"",
        ),
        ready(protocol::TXN_FAILED),
    ])
    .await;
    let refusal = ClientError::refusal(
        &Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
            message: "this session's role is set by pgward for its identity and cannot be changed: SET ROLE / RESET ROLE".into(),
            hint: None,
        },
        Refused::Statement,
    );
    let mut refused = BytesMut::new();
    refusal.encode(&mut refused);
    s.client_gets(&[refused.to_vec(), ready(protocol::TXN_FAILED)])
        .await;
    // A server error that names no stand-in passes as it is.
    s.passes_upstream(&[query("SELECT 1")]).await;
    let aborted = [
        error(
            sqlstate::IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        ),
        ready(protocol::TXN_FAILED),
    ];
    s.passes_back(&aborted).await;
    s.passes_upstream(&[query("ROLLBACK")]).await;
    s.finish().await;
}

#[tokio::test]
async fn a_statement_refused_in_a_pipeline_is_answered_in_its_place() {
    let mut s = Scripted::start(mapped_role()).await;
    // The refused Parse keeps its statement name; Bind and Execute of it go on as they are.
    s.client_sends(&[
        parse("s1", "SET ROLE admin"),
        bind("", "s1"),
        execute(""),
        sync(),
    ])
    .await;
    s.server_gets(&[
        parse("s1", "pgward_denied_1_1"),
        bind("", "s1"),
        execute(""),
        sync(),
    ])
    .await;
    s.server_sends(&[
        error(
            sqlstate::SYNTAX_ERROR,
            "syntax error at or near \"pgward_denied_1_1\"",
        ),
        ready(protocol::TXN_IDLE),
    ])
    .await;
    let mut refused = BytesMut::new();
    ClientError::refusal(
        &Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
            message: "this session's role is set by pgward for its identity and cannot be changed: SET ROLE / RESET ROLE".into(),
            hint: None,
        },
        Refused::Statement,
    )
    .encode(&mut refused);
    s.client_gets(&[refused.to_vec(), ready(protocol::TXN_IDLE)])
        .await;
    s.finish().await;
}

#[tokio::test]
async fn an_idle_session_ends_when_shutdown_begins() {
    let mut s = Scripted::start(user()).await;
    s.passes_upstream(&[query("SELECT 1")]).await;
    let answers = [
        row_description("?column?"),
        data_row("1"),
        complete("SELECT 1"),
        ready(protocol::TXN_IDLE),
    ];
    s.passes_back(&answers).await;
    s.ends_once_idle(Duration::from_secs(5)).await;
}

/// libpq and tokio-postgres send Bind, Execute and Sync of a COPY FROM STDIN at once; the
/// server ignores that Sync in copy-in mode and answers only the one after CopyDone.
#[tokio::test]
async fn a_copy_in_with_its_sync_sent_ahead_leaves_the_session_idle() {
    let mut s = Scripted::start(user()).await;
    s.libpq_copy_starts().await;
    let data = [m(msg::COPY_DATA, b"42\n"), m(msg::COPY_DONE, &[]), sync()];
    s.passes_upstream(&data).await;
    let done = [complete("COPY 1"), ready(protocol::TXN_IDLE)];
    s.passes_back(&done).await;
    // Again, the Sync sent after the CopyInResponse arrived, then as a simple Query.
    let start = [bind("", ""), execute("")];
    s.passes_upstream(&start).await;
    let copy_in = [m(b'2', &[]), copy_in_response()];
    s.passes_back(&copy_in).await;
    let data = [
        sync(),
        m(msg::COPY_DATA, b"43\n"),
        m(msg::COPY_DONE, &[]),
        sync(),
    ];
    s.passes_upstream(&data).await;
    s.passes_back(&done).await;
    s.passes_upstream(&[query("COPY t FROM STDIN")]).await;
    let copy_in = [copy_in_response()];
    s.passes_back(&copy_in).await;
    let data = [m(msg::COPY_DATA, b"44\n"), m(msg::COPY_DONE, &[])];
    s.passes_upstream(&data).await;
    s.passes_back(&done).await;
    s.ends_once_idle(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_session_in_copy_in_or_with_a_statement_after_it_is_not_idle() {
    let mut s = Scripted::start(user()).await;
    // libpq's COPY: the Sync sent ahead is ignored by the server, yet the copy is running.
    s.libpq_copy_starts().await;
    s.busy_when_shutdown_begins(Duration::from_millis(300))
        .await;
    // The client ends the copy and, at once, sends the next statement (tokio-postgres
    // pipelines another task's request this way): that Sync is answered, and waited for.
    let data = [
        m(msg::COPY_DATA, b"42\n"),
        m(msg::COPY_DONE, &[]),
        sync(),
        parse("", "SELECT 1"),
        bind("", ""),
        execute(""),
        sync(),
    ];
    s.passes_upstream(&data).await;
    let done = [complete("COPY 1"), ready(protocol::TXN_IDLE)];
    s.passes_back(&done).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!s.relay.is_finished(), "the SELECT is still running");
    let answers = [
        m(b'1', &[]),
        m(b'2', &[]),
        data_row("1"),
        complete("SELECT 1"),
        ready(protocol::TXN_IDLE),
    ];
    s.passes_back(&answers).await;
    let end = tokio::time::timeout(Duration::from_secs(5), s.relay)
        .await
        .expect("idle once the SELECT is answered")
        .unwrap();
    assert_eq!(end, "gateway shutdown");
}
