//! Column lineage from the upstream catalog: table oid + attribute number (as a RowDescription
//! reports them) → schema, table and column names; a view's columns → the base-table columns
//! its definition reads (inferred from `pg_get_viewdef` with the gateway's SQL analysis).
//!
//! Lookups run on the gateway's own upstream connections (one per database and worker thread,
//! opened on first use with the gateway's credentials), never on a client's session. Results
//! are cached per database and dropped whenever DDL runs through the gateway.
//!
//! Why not `tokio-postgres` for these connections: they must log in exactly as sessions do
//! (`upstream.auth_methods`, which refuses md5, cleartext and trust unless allowed; TLS with
//! SCRAM-SHA-256-PLUS channel binding; SASLprep), which [`UpstreamTarget::connect`] enforces.
//! tokio-postgres would answer a server's cleartext or md5 request with the password and needs a
//! TLS connector crate of its own. After the login the catalog sends a simple Query, or a
//! Parse + Describe + Sync, and reads rows with the gateway's own framing ([`protocol`]).

use crate::plugins::bindings::pgward::plugin::types as wit;
use crate::protocol;
use crate::stream::Stream;
use crate::upstream::UpstreamTarget;
use bytes::{Buf, BufMut, BytesMut};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

/// Most tables cached per gateway before the cache starts over.
const MAX_TABLES: usize = 10_000;
/// How long one catalog query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a catalog lookup failed. It may name upstream hosts: it goes to the log, and a client
/// is told only that the lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot connect for catalog lookups: {0}")]
    Connect(#[source] crate::upstream::UpstreamError),
    #[error("catalog connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("catalog connection: {0}")]
    Protocol(#[from] protocol::FrameError),
    #[error("catalog connection closed")]
    Closed,
    #[error("catalog query timed out")]
    Timeout,
    #[error("catalog query failed: {0}")]
    Query(String),
    #[error("{0}")]
    Malformed(&'static str),
}

/// What the catalog says about one relation.
#[derive(Debug)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// Lineage of each column by attribute number: the column itself for a table, the
    /// columns it derives from for a view.
    pub columns: HashMap<i16, Vec<wit::ColumnLineage>>,
}

/// The shared cache of catalog lookups.
#[derive(Default)]
pub struct Catalog {
    tables: Mutex<HashMap<(String, u32), Arc<TableInfo>>>,
    /// Bumped by every invalidation; a lookup that started before one is not cached.
    generation: AtomicU64,
}

type Conn = Arc<tokio::sync::Mutex<Option<Stream>>>;

thread_local! {
    /// Catalog connections of this worker thread, by database. A connection is driven by the
    /// runtime that opened it, so each worker thread has its own.
    static CONNECTIONS: RefCell<HashMap<String, Conn>> = RefCell::new(HashMap::new());
}

impl Catalog {
    /// Changes whenever something is forgotten.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets everything about `database` (DDL ran there).
    pub fn invalidate(&self, database: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.retain(|(db, _), _| db != database);
    }

    /// The relations with these oids; an oid the catalog does not know is left out.
    pub async fn tables(
        &self,
        upstream: &UpstreamTarget,
        database: &str,
        oids: &[u32],
    ) -> Result<HashMap<u32, Arc<TableInfo>>, CatalogError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            for &oid in oids {
                match tables.get(&(database.to_owned(), oid)) {
                    Some(t) => {
                        found.insert(oid, t.clone());
                    }
                    None if !missing.contains(&oid) => missing.push(oid),
                    None => {}
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let loaded = self.load(upstream, database, &missing).await?;
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let cacheable = self.generation.load(Ordering::Acquire) == generation;
        if tables.len() + loaded.len() > MAX_TABLES {
            tables.clear();
        }
        for (oid, info) in loaded {
            let info = Arc::new(info);
            if cacheable {
                tables.insert((database.to_owned(), oid), info.clone());
            }
            found.insert(oid, info);
        }
        Ok(found)
    }

    async fn load(
        &self,
        upstream: &UpstreamTarget,
        database: &str,
        oids: &[u32],
    ) -> Result<HashMap<u32, TableInfo>, CatalogError> {
        let list = oids
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT c.oid, n.nspname, c.relname, c.relkind, a.attnum, a.attname, \
             CASE WHEN c.relkind IN ('v','m') AND a.attnum = 1 THEN pg_catalog.pg_get_viewdef(c.oid) END \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.oid IN ({list}) ORDER BY c.oid, a.attnum"
        );
        let rows = query(upstream, database, &sql).await?;
        let mut out: HashMap<u32, TableInfo> = HashMap::new();
        let mut views: HashMap<u32, String> = HashMap::new();
        for row in rows {
            let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
            let (Some(oid), Some(schema), Some(name), Some(kind), Some(attnum), Some(attname)) = (
                field(0).and_then(|v| v.parse::<u32>().ok()),
                field(1),
                field(2),
                field(3),
                field(4).and_then(|v| v.parse::<i16>().ok()),
                field(5),
            ) else {
                return Err(CatalogError::Malformed(
                    "unexpected row from the catalog query",
                ));
            };
            if let Some(def) = field(6) {
                views.insert(oid, def.to_owned());
            }
            let info = out.entry(oid).or_insert_with(|| TableInfo {
                schema: schema.to_owned(),
                name: name.to_owned(),
                columns: HashMap::new(),
            });
            let inferred = matches!(kind, "v" | "m");
            info.columns.insert(
                attnum,
                vec![wit::ColumnLineage {
                    schema: schema.to_owned(),
                    table: name.to_owned(),
                    column: attname.to_owned(),
                    inferred,
                }],
            );
        }
        // A view's columns derive from what its definition reads, not from the view itself
        // (a policy on `public.customers.email` must hold for a view over it).
        for (oid, def) in views {
            let Some(info) = out.get_mut(&oid) else {
                continue;
            };
            let n = info.columns.len();
            let per_column = pgward_sql::lineage::infer_output_lineage(&def)
                .map(|l| l.columns(n))
                .unwrap_or_default();
            for (attnum, lineage) in info.columns.iter_mut() {
                let sources = per_column.get((*attnum as usize).wrapping_sub(1));
                let derived: Vec<wit::ColumnLineage> = sources
                    .into_iter()
                    .flatten()
                    .map(|s| wit::ColumnLineage {
                        schema: s.relation.schema.clone().unwrap_or_default(),
                        table: s.relation.name.clone(),
                        column: s.column.clone(),
                        inferred: true,
                    })
                    .collect();
                // A view column derives from what its definition reads; the view's own name
                // stays only when the definition was not understood (or is a constant).
                if !derived.is_empty() {
                    *lineage = derived;
                }
            }
            if per_column.is_empty() {
                warn!(view = %info.name, "view definition not understood: its columns carry the view's own lineage only");
            }
        }
        Ok(out)
    }
}

/// The columns `sql` would return in `database` (Parse + Describe, nothing runs).
pub async fn describe(
    upstream: &UpstreamTarget,
    database: &str,
    sql: &str,
) -> Result<Vec<super::ResultField>, CatalogError> {
    let mut out = BytesMut::new();
    protocol::put_message(&mut out, protocol::tag::PARSE, |o| {
        o.put_u8(0);
        protocol::put_cstr(o, sql);
        o.put_i16(0);
    });
    protocol::put_message(&mut out, protocol::tag::DESCRIBE, |o| {
        o.put_u8(protocol::target::STATEMENT);
        o.put_u8(0);
    });
    protocol::put_message(&mut out, protocol::tag::SYNC, |_| {});
    let reply = exchange(upstream, database, out).await?;
    match reply.row_description {
        Some(body) => super::parse_row_description(&body).ok_or(CatalogError::Malformed(
            "malformed RowDescription from the catalog connection",
        )),
        None => Ok(Vec::new()),
    }
}

/// Runs one catalog query in `database`; each row as its text fields.
async fn query(
    upstream: &UpstreamTarget,
    database: &str,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, CatalogError> {
    let mut out = BytesMut::new();
    protocol::put_message(&mut out, protocol::tag::QUERY, |o| {
        protocol::put_cstr(o, sql)
    });
    exchange(upstream, database, out).await.map(|r| r.rows)
}

/// What the server answered, up to ReadyForQuery.
struct Reply {
    rows: Vec<Vec<Option<String>>>,
    row_description: Option<BytesMut>,
}

/// Sends `request` on this thread's catalog connection to `database` and reads the answer.
async fn exchange(
    upstream: &UpstreamTarget,
    database: &str,
    request: BytesMut,
) -> Result<Reply, CatalogError> {
    let conn = CONNECTIONS.with(|c| {
        c.borrow_mut()
            .entry(database.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
            .clone()
    });
    let mut slot = conn.lock().await;
    if slot.is_none() {
        let session = upstream
            .connect(
                &[
                    ("database", database),
                    ("application_name", "pgward catalog"),
                ],
                None,
            )
            .await
            .map_err(CatalogError::Connect)?;
        debug!(database, "catalog connection opened");
        *slot = Some(session.stream);
    }
    let Some(stream) = slot.as_mut() else {
        return Err(CatalogError::Closed);
    };
    match tokio::time::timeout(QUERY_TIMEOUT, run(stream, &request)).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => {
            // The connection may be in any state now: open a new one next time.
            *slot = None;
            Err(e)
        }
        Err(_) => {
            *slot = None;
            Err(CatalogError::Timeout)
        }
    }
}

async fn run(stream: &mut Stream, request: &[u8]) -> Result<Reply, CatalogError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut rows = Vec::new();
    let mut row_description = None;
    let mut error = None;
    loop {
        let header = match protocol::frame_header(&buf, 64 << 20) {
            Ok(Some(h)) if buf.len() >= h.frame_len => h,
            Ok(_) => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(CatalogError::Closed);
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let frame = buf.split_to(header.frame_len);
        let mut body = &frame[5..];
        match header.tag {
            protocol::tag::DATA_ROW => {
                if body.len() < 2 {
                    return Err(CatalogError::Malformed("short DataRow"));
                }
                let n = body.get_i16().max(0) as usize;
                let mut row = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = protocol::take_i32(&mut body)
                        .ok_or(CatalogError::Malformed("short DataRow"))?;
                    if len < 0 {
                        row.push(None);
                        continue;
                    }
                    let len = len as usize;
                    let v = body
                        .get(..len)
                        .ok_or(CatalogError::Malformed("short DataRow"))?;
                    row.push(Some(String::from_utf8_lossy(v).into_owned()));
                    body = &body[len..];
                }
                rows.push(row);
            }
            protocol::tag::ROW_DESCRIPTION => row_description = Some(BytesMut::from(body)),
            protocol::tag::ERROR_RESPONSE => error = Some(protocol::parse_error_body(body).message),
            protocol::tag::READY_FOR_QUERY => {
                return match error {
                    Some(e) => Err(CatalogError::Query(e)),
                    None => Ok(Reply {
                        rows,
                        row_description,
                    }),
                }
            }
            _ => {}
        }
    }
}
