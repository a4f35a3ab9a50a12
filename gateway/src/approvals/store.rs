//! Where approval requests live: one SQLite file by default (through `rusqlite` with its
//! bundled SQLite, so a gateway needs nothing installed), or a schema of its own in a
//! PostgreSQL control database that several gateways share.
//!
//! Both keep each request as one JSON document plus the columns lookups filter on, and change
//! a request only by read-modify-write inside a transaction, applying the pure transitions of
//! [`super::request`]. The PostgreSQL store announces every change with `NOTIFY`, so a
//! gateway holding a statement hears of a decision made through another gateway at once.
//!
//! Schema versions: `schema_version` holds the version; migrations run in order on start.

use super::request::{ApprovalRequest, Status};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The NOTIFY channel of the PostgreSQL store; the payload is the request id.
pub const CHANNEL: &str = "pgward_approvals";

/// Each entry upgrades the schema by one version (SQLite and PostgreSQL dialects).
const MIGRATIONS: &[(&str, &str)] = &[(
    "CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        requester TEXT NOT NULL,
        approver_group TEXT NOT NULL,
        match_key TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX requests_status ON requests (status, created_at);
    CREATE INDEX requests_match ON requests (requester, match_key);",
    "CREATE TABLE {schema}.requests (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        requester TEXT NOT NULL,
        approver_group TEXT NOT NULL,
        match_key TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        doc JSONB NOT NULL
    );
    CREATE INDEX requests_status ON {schema}.requests (status, created_at);
    CREATE INDEX requests_match ON {schema}.requests (requester, match_key);",
)];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("approvals store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("approvals control database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("approvals store: {0}")]
    Other(String),
}

/// Which requests a listing returns.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub requester: Option<String>,
    pub approver_group: Option<String>,
    pub limit: usize,
}

pub enum Store {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl Store {
    pub async fn insert(&self, r: &ApprovalRequest) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, r) = (s.clone(), r.clone());
                blocking(move || s.insert(&r)).await
            }
            Store::Postgres(p) => p.insert(r).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.get(&id)).await
            }
            Store::Postgres(p) => p.get(id).await,
        }
    }

    /// Newest first.
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<ApprovalRequest>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, f) = (s.clone(), f.clone());
                blocking(move || s.list(&f)).await
            }
            Store::Postgres(p) => p.list(f).await,
        }
    }

    /// Ids of `requester`'s requests with this match key and status, oldest first.
    pub async fn find(
        &self,
        requester: &str,
        match_key: &str,
        status: Status,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, u, k) = (s.clone(), requester.to_owned(), match_key.to_owned());
                blocking(move || s.find(&u, &k, status)).await
            }
            Store::Postgres(p) => p.find(requester, match_key, status).await,
        }
    }

    /// Applies `change` to the stored request inside one transaction and writes it back;
    /// `None` when there is no such request.
    pub async fn update<T: Send + 'static>(
        &self,
        id: &str,
        change: impl FnOnce(&mut ApprovalRequest) -> T + Send + 'static,
    ) -> Result<Option<(ApprovalRequest, T)>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.update(&id, change)).await
            }
            Store::Postgres(p) => p.update(id, change).await,
        }
    }

    /// The store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.ping()).await
            }
            Store::Postgres(p) => p.ping().await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
}

fn to_json(r: &ApprovalRequest) -> Result<String, StoreError> {
    serde_json::to_string(r).map_err(|e| StoreError::Other(e.to_string()))
}

fn from_json(doc: &str) -> Result<ApprovalRequest, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Other(format!("unreadable request: {e}")))
}

/// The embedded store: one SQLite file (WAL journal), one connection behind a lock. Approval
/// traffic is a few writes per decision, far below what one connection serves.
pub struct SqliteStore {
    path: String,
    conn: Mutex<rusqlite::Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = rusqlite::Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // Decisions must survive a crash of the machine, not only of the gateway.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(err)?;
        let version: i64 = tx
            .query_row(
                "SELECT coalesce(max(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Other(format!(
                "{shown} has schema version {version}, newer than this pgward knows ({}): upgrade pgward",
                MIGRATIONS.len()
            )));
        }
        for (i, (sql, _)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(err)?;
            tx.execute("DELETE FROM schema_version", []).map_err(err)?;
            tx.execute("INSERT INTO schema_version VALUES (?1)", [(i + 1) as i64])
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(SqliteStore {
            path: shown,
            conn: Mutex::new(conn),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, r: &ApprovalRequest) -> Result<(), StoreError> {
        let doc = to_json(r)?;
        self.conn()
            .execute(
                "INSERT INTO requests (id, status, requester, approver_group, match_key, created_at, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    r.id,
                    r.status.as_str(),
                    r.requester.user,
                    r.approver_group,
                    r.match_key,
                    r.created_at.0,
                    doc
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        use rusqlite::OptionalExtension;
        let doc: Option<String> = self
            .conn()
            .query_row("SELECT doc FROM requests WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        doc.as_deref().map(from_json).transpose()
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<ApprovalRequest>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT doc FROM requests
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR requester = ?2)
                   AND (?3 IS NULL OR approver_group = ?3)
                 ORDER BY created_at DESC, id LIMIT ?4",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(
                rusqlite::params![
                    f.status.map(Status::as_str),
                    f.requester,
                    f.approver_group,
                    f.limit as i64
                ],
                |r| r.get::<_, String>(0),
            )
            .map_err(self.err())?;
        let mut out = Vec::new();
        for doc in rows {
            out.push(from_json(&doc.map_err(self.err())?)?);
        }
        Ok(out)
    }

    fn find(&self, user: &str, key: &str, status: Status) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id FROM requests WHERE requester = ?1 AND match_key = ?2 AND status = ?3
                 ORDER BY created_at, id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params![user, key, status.as_str()], |r| {
                r.get::<_, String>(0)
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    fn update<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut ApprovalRequest) -> T,
    ) -> Result<Option<(ApprovalRequest, T)>, StoreError> {
        use rusqlite::OptionalExtension;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let doc: Option<String> = tx
            .query_row("SELECT doc FROM requests WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        let Some(doc) = doc else { return Ok(None) };
        let mut r = from_json(&doc)?;
        let out = change(&mut r);
        tx.execute(
            "UPDATE requests SET status = ?2, doc = ?3 WHERE id = ?1",
            rusqlite::params![id, r.status.as_str(), to_json(&r)?],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Some((r, out)))
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.conn()
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(self.err())
    }
}

/// The shared store: a schema in a PostgreSQL control database. One connection serves the
/// gateway's requests (reconnected when it breaks); listening for changes is
/// [`listen`]'s own connection.
pub struct PgStore {
    config: tokio_postgres::Config,
    schema: String,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// The runtime that drives the connections (the gateway's main runtime), whichever
    /// session's thread asks.
    runtime: tokio::runtime::Handle,
}

impl PgStore {
    pub async fn open(config: tokio_postgres::Config, schema: &str) -> Result<PgStore, StoreError> {
        let store = PgStore {
            config,
            schema: schema.to_owned(),
            client: tokio::sync::Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
        self.runtime.spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "approvals control database connection ended");
            }
        });
        Ok(client)
    }

    async fn client(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect().await?);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let s = &self.schema;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Two gateways starting at once migrate one after the other.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('pgward approvals schema'))",
            &[],
        )
        .await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (version INTEGER NOT NULL);"
        ))
        .await?;
        let version: i32 = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {s}.schema_version"),
                &[],
            )
            .await?
            .get(0);
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Other(format!(
                "schema {s} has version {version}, newer than this pgward knows ({}): upgrade pgward",
                MIGRATIONS.len()
            )));
        }
        for (i, (_, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(&sql.replace("{schema}", s)).await?;
            tx.execute(&format!("DELETE FROM {s}.schema_version"), &[])
                .await?;
            tx.execute(
                &format!("INSERT INTO {s}.schema_version VALUES ($1)"),
                &[&((i + 1) as i32)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert(&self, r: &ApprovalRequest) -> Result<(), StoreError> {
        let doc = to_json(r)?;
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "WITH ins AS (INSERT INTO {}.requests (id, status, requester, approver_group, match_key, created_at, doc)
                     VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb) RETURNING id)
                     SELECT pg_notify('{CHANNEL}', id) FROM ins",
                    self.schema
                ),
                &[
                    &r.id,
                    &r.status.as_str(),
                    &r.requester.user,
                    &r.approver_group,
                    &r.match_key,
                    &r.created_at.0,
                    &doc,
                ],
            )
            .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT doc::text FROM {}.requests WHERE id = $1",
                    self.schema
                ),
                &[&id],
            )
            .await?;
        row.map(|r| from_json(r.get(0))).transpose()
    }

    async fn list(&self, f: &ListFilter) -> Result<Vec<ApprovalRequest>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT doc::text FROM {}.requests
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR requester = $2)
                       AND ($3::text IS NULL OR approver_group = $3)
                     ORDER BY created_at DESC, id LIMIT $4",
                    self.schema
                ),
                &[
                    &f.status.map(Status::as_str),
                    &f.requester,
                    &f.approver_group,
                    &(f.limit as i64),
                ],
            )
            .await?;
        rows.iter().map(|r| from_json(r.get(0))).collect()
    }

    async fn find(&self, user: &str, key: &str, status: Status) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id FROM {}.requests WHERE requester = $1 AND match_key = $2 AND status = $3
                     ORDER BY created_at, id",
                    self.schema
                ),
                &[&user, &key, &status.as_str()],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn update<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut ApprovalRequest) -> T,
    ) -> Result<Option<(ApprovalRequest, T)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT doc::text FROM {}.requests WHERE id = $1 FOR UPDATE",
                    self.schema
                ),
                &[&id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut r = from_json(row.get(0))?;
        let out = change(&mut r);
        tx.execute(
            &format!(
                "UPDATE {}.requests SET status = $2, doc = $3::text::jsonb WHERE id = $1",
                self.schema
            ),
            &[&id, &r.status.as_str(), &to_json(&r)?],
        )
        .await?;
        // Delivered at commit, to every gateway listening.
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id])
            .await?;
        tx.commit().await?;
        Ok(Some((r, out)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// Listens for changes other gateways make and hands each changed id to `changed`; `"*"`
/// after (re)connecting, since notifications sent while disconnected are never replayed.
/// Runs until the process ends, reconnecting with backoff.
pub async fn listen(config: tokio_postgres::Config, changed: impl Fn(String)) {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, mut conn)) => {
                let listen_sql = format!("LISTEN {CHANNEL}");
                let subscribe = client.batch_execute(&listen_sql);
                let mut subscribe = std::pin::pin!(subscribe);
                // Drive the connection while LISTEN runs, then keep reading notifications.
                let mut listening = false;
                loop {
                    let message = std::future::poll_fn(|cx| {
                        if !listening {
                            if let std::task::Poll::Ready(r) = subscribe.as_mut().poll(cx) {
                                listening = true;
                                return std::task::Poll::Ready(Some(r.map(|_| None)));
                            }
                        }
                        conn.poll_message(cx).map(|m| m.map(|m| m.map(Some)))
                    })
                    .await;
                    match message {
                        Some(Ok(Some(tokio_postgres::AsyncMessage::Notification(n)))) => {
                            changed(n.payload().to_owned());
                        }
                        Some(Ok(None)) => {
                            tracing::info!("listening for approval decisions of other gateways");
                            backoff = std::time::Duration::from_millis(200);
                            changed("*".into());
                        }
                        Some(Ok(Some(_))) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "approvals listener connection failed");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "approvals listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::super::request::tests::sample;
    use super::super::request::{Mode, Status};
    use super::*;

    fn temp_db() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pgward-approvals-test-{}-{}",
            std::process::id(),
            super::super::request::new_id().unwrap()
        ));
        dir.join("approvals.db")
    }

    #[test]
    fn sqlite_store_keeps_requests_across_reopen_and_updates_atomically() {
        let path = temp_db();
        let r = sample(Mode::Hold, 1);
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert(&r).unwrap();
            assert_eq!(s.get(&r.id).unwrap().as_ref(), Some(&r));
            let (after, changed) = s
                .update(&r.id, |r| r.end(Status::Withdrawn, "client cancelled"))
                .unwrap()
                .unwrap();
            assert!(changed);
            assert_eq!(after.status, Status::Withdrawn);
            assert!(s.update("apr_nope", |_| ()).unwrap().is_none());
        }
        // Reopened (a restart): the request and its new status are there, migrations rerun
        // as no-ops.
        let s = SqliteStore::open(&path).unwrap();
        let again = s.get(&r.id).unwrap().unwrap();
        assert_eq!(again.status, Status::Withdrawn);
        let listed = s
            .list(&ListFilter {
                status: Some(Status::Withdrawn),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert!(s
            .list(&ListFilter {
                status: Some(Status::Pending),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .is_empty());
        assert_eq!(
            s.find("agent", &r.match_key, Status::Withdrawn).unwrap(),
            vec![r.id.clone()]
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn sqlite_store_refuses_a_newer_schema() {
        let path = temp_db();
        drop(SqliteStore::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        drop(conn);
        let e = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(e.contains("newer than this pgward knows"), "{e}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
