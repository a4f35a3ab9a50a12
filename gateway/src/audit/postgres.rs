//! The PostgreSQL sink of the audit trail: the same chained records, batched into one table of
//! a control database that a fleet of gateways shares (`origin` tells their chains apart),
//! indexed by time, identity and session.
//!
//! It runs inside the writer thread, on a small runtime of its own: a failed insert keeps the
//! batch and is retried with the next one (inserts are idempotent on `(origin, seq)`).

use super::AuditError;
use serde_json::Value;

/// One record waiting for the table.
pub struct Row {
    pub seq: i64,
    pub time: String,
    pub kind: String,
    pub user: Option<String>,
    pub session: Option<i64>,
    pub record: String,
}

impl Row {
    /// The row of a record whose fields `get` looks up, written as `line`.
    pub fn of(get: impl Fn(&str) -> Option<Value>, line: &str) -> Row {
        let text = |k| get(k).and_then(|v| v.as_str().map(str::to_owned));
        Row {
            seq: get("seq").and_then(|v| v.as_i64()).unwrap_or(0),
            time: text("time").unwrap_or_default(),
            kind: text("kind").unwrap_or_default(),
            user: text("user"),
            session: get("session").and_then(|v| v.as_i64()),
            record: line.to_owned(),
        }
    }
}

pub struct PgSink {
    runtime: tokio::runtime::Runtime,
    config: tokio_postgres::Config,
    table: String,
    origin: String,
    client: Option<tokio_postgres::Client>,
    pub pending: Vec<Row>,
}

/// Most records kept for the table while it cannot be written; older ones are then only in
/// the file (and the trail is reported unhealthy meanwhile).
pub const MAX_PENDING: usize = 1 << 20;

impl PgSink {
    pub fn open(conn: &str, schema: &str, origin: &str) -> Result<PgSink, AuditError> {
        let mut config: tokio_postgres::Config = conn
            .parse()
            .map_err(|e| AuditError::Other(format!("audit.postgres: {e}")))?;
        if let Ok(pw) = std::env::var("PGWARD_AUDIT_PASSWORD") {
            config.password(pw);
        }
        config.application_name("pgward-audit");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AuditError::Other(format!("audit.postgres: {e}")))?;
        let mut sink = PgSink {
            runtime,
            config,
            table: format!("{schema}.audit_events"),
            origin: origin.to_owned(),
            client: None,
            pending: Vec::new(),
        };
        sink.migrate(schema)?;
        Ok(sink)
    }

    /// Connects unless connected; then `self.client` is set.
    fn ensure(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let config = self.config.clone();
            let client = self.runtime.block_on(async move {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok::<_, tokio_postgres::Error>(client)
            })?;
            self.client = Some(client);
        }
        Ok(())
    }

    /// The runtime and the connected client.
    fn parts(
        &mut self,
    ) -> Result<(&tokio::runtime::Runtime, &tokio_postgres::Client), tokio_postgres::Error> {
        self.ensure()?;
        Ok((
            &self.runtime,
            self.client.as_ref().expect("connected by ensure"),
        ))
    }

    fn migrate(&mut self, schema: &str) -> Result<(), AuditError> {
        let table = self.table.clone();
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtext('pgward audit schema'));
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {table} (
                 origin text NOT NULL,
                 seq bigint NOT NULL,
                 time timestamptz NOT NULL,
                 kind text NOT NULL,
                 \"user\" text,
                 session bigint,
                 record jsonb NOT NULL,
                 PRIMARY KEY (origin, seq)
             );
             CREATE INDEX IF NOT EXISTS audit_events_time ON {table} (time);
             CREATE INDEX IF NOT EXISTS audit_events_user ON {table} (\"user\", time);
             CREATE INDEX IF NOT EXISTS audit_events_session ON {table} (origin, session);"
        );
        let (runtime, client) = self
            .parts()
            .map_err(|e| AuditError::Other(format!("audit.postgres: {e}")))?;
        runtime
            .block_on(client.batch_execute(&format!("BEGIN; {sql} COMMIT;")))
            .map_err(|e| AuditError::Other(format!("audit.postgres: creating {table}: {e}")))
    }

    /// The last record of this origin in the table: (seq, hash).
    pub fn last(&mut self) -> Result<Option<(u64, String)>, AuditError> {
        let sql = format!(
            "SELECT seq, record->>'hash' FROM {} WHERE origin = $1 ORDER BY seq DESC LIMIT 1",
            self.table
        );
        let origin = self.origin.clone();
        let (runtime, client) = self
            .parts()
            .map_err(|e| AuditError::Other(format!("audit.postgres: {e}")))?;
        let row = runtime
            .block_on(client.query_opt(&sql, &[&origin]))
            .map_err(|e| AuditError::Other(format!("audit.postgres: {e}")))?;
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1))))
    }

    /// Inserts what is pending, in one statement.
    pub fn flush(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {} (origin, seq, time, kind, \"user\", session, record)
             SELECT $1, s, t::timestamptz, k, u, sess, r::jsonb
             FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[])
                  AS x(s, t, k, u, sess, r)
             ON CONFLICT (origin, seq) DO NOTHING",
            self.table
        );
        self.ensure()?;
        let client = self.client.as_ref().expect("connected by ensure");
        let seqs: Vec<i64> = self.pending.iter().map(|r| r.seq).collect();
        let times: Vec<&str> = self.pending.iter().map(|r| r.time.as_str()).collect();
        let kinds: Vec<&str> = self.pending.iter().map(|r| r.kind.as_str()).collect();
        let users: Vec<Option<&str>> = self.pending.iter().map(|r| r.user.as_deref()).collect();
        let sessions: Vec<Option<i64>> = self.pending.iter().map(|r| r.session).collect();
        let records: Vec<&str> = self.pending.iter().map(|r| r.record.as_str()).collect();
        let origin = self.origin.clone();
        self.runtime.block_on(client.execute(
            &sql,
            &[&origin, &seqs, &times, &kinds, &users, &sessions, &records],
        ))?;
        self.pending.clear();
        Ok(())
    }
}

/// The records of `origin` in the table, oldest first, as JSON lines (for `verify`).
pub fn read_all(conn: &str, schema: &str, origin: &str) -> Result<Vec<u8>, AuditError> {
    let mut sink = PgSink::open(conn, schema, origin)?;
    let sql = format!(
        "SELECT record::text FROM {} WHERE origin = $1 ORDER BY seq",
        sink.table
    );
    let (runtime, client) = sink
        .parts()
        .map_err(|e| AuditError::Other(format!("audit.postgres: {e}")))?;
    let rows = runtime
        .block_on(client.query(&sql, &[&origin]))
        .map_err(|e| AuditError::Other(format!("audit.postgres: {e}")))?;
    let mut out = Vec::new();
    for r in rows {
        // jsonb reorders keys; the hash is over the canonical form, which does not care.
        out.extend_from_slice(r.get::<_, String>(0).as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}
