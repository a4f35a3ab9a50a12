//! The audit trail: one structured, hash-chained record per session, statement, approval step
//! and gateway start or stop, written by a thread of its own.
//!
//! - [`chain`]: canonical hashing, signed checkpoints, and the verifier behind
//!   `pgward audit verify`.
//! - here: [`Audit`], which sessions hand events to (a bounded queue, never disk I/O on the
//!   relay's path), and the writer thread: it numbers and chains the records, appends them to
//!   `audit-NNNNNNNNNNNN.jsonl` files (rotated by size and age), syncs them per `fsync`, copies
//!   them to stdout if asked, and signs a checkpoint every `checkpoint_every` records, every
//!   `checkpoint_interval`, and at shutdown.
//!
//! When the sink cannot keep up or cannot write, [`Audit::healthy`] turns false; with
//! `on_failure = "refuse"` the relay then refuses new statements with SQLSTATE 58030 until the
//! writer has caught up again.

pub mod chain;
pub mod fields;
pub mod postgres;
pub mod statement;

use crate::config::{AuditConfig, AuditFailure, Fsync};
use fields::Fields;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit: {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit.signing_key: {path}: not an Ed25519 PKCS#8 key ({reason})")]
    Key { path: String, reason: String },
    #[error("audit: {0}")]
    Other(String),
}

/// One record on its way to the writer, which numbers, chains and serializes it.
pub struct Event {
    kind: &'static str,
    time: SystemTime,
    /// The name of the gateway that emitted it (checkpoints, the writer's own, carry none).
    from_gateway: bool,
    /// Fields shared with other records (a prepared statement's decided part, the same for
    /// each of its executions): read where they are, not copied.
    shared: Option<Arc<Fields>>,
    /// This record's own fields.
    own: Map<String, Value>,
    /// Own fields serialized already.
    fields: Fields,
}

enum Msg {
    Event(Event),
    /// Write and sync everything queued before it, then answer.
    Flush(mpsc::Sender<()>),
}

/// The gateway's audit trail.
pub struct Audit {
    tx: mpsc::SyncSender<Msg>,
    healthy: Arc<AtomicBool>,
    refuse_when_unhealthy: bool,
    dropped: AtomicU64,
    config: AuditConfig,
}

impl Audit {
    /// Opens the trail (continuing the chain of the files already there) and starts the
    /// writer thread.
    pub fn start(config: &AuditConfig, gateway: &str) -> Result<Arc<Audit>, AuditError> {
        let key = match &config.signing_key {
            Some(path) => Some(load_key(path)?),
            None => None,
        };
        let writer = Writer::open(config, gateway, key)?;
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        std::thread::Builder::new()
            .name("pgward-audit".into())
            .spawn(move || writer.run(rx, h))
            .map_err(|e| AuditError::Other(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(Audit {
            tx,
            healthy,
            refuse_when_unhealthy: config.on_failure == AuditFailure::Refuse,
            dropped: AtomicU64::new(0),
            config: config.clone(),
        }))
    }

    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// Queues an event of `kind` with `fields` (an object); never blocks. A full queue marks
    /// the trail unhealthy and the event is counted as dropped.
    pub fn emit(&self, kind: &'static str, fields: Value) {
        let own = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.send(Event {
            own,
            ..Event::new(kind)
        });
    }

    /// Queues an event of `kind` made of `shared` fields, which other events carry too, and
    /// its own `fields`; never blocks.
    pub fn emit_fields(&self, kind: &'static str, shared: Arc<Fields>, mut fields: Fields) {
        fields.sort();
        self.send(Event {
            shared: Some(shared),
            fields,
            ..Event::new(kind)
        });
    }

    fn send(&self, event: Event) {
        let m = &crate::metrics::METRICS;
        m.audit_records.inc();
        if self.tx.try_send(Msg::Event(event)).is_ok() {
            m.audit_queue_depth.inc();
        } else {
            m.audit_dropped.inc();
            self.healthy.store(false, Ordering::Release);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                error!(dropped = n, "audit queue full: events dropped");
            }
        }
    }

    /// Whether new statements may run (false only with `on_failure = "refuse"` while the
    /// trail cannot be written).
    pub fn admits_statements(&self) -> bool {
        !self.refuse_when_unhealthy || self.healthy.load(Ordering::Acquire)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes and syncs everything queued so far (graceful shutdown), waiting up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

impl Event {
    fn new(kind: &'static str) -> Event {
        Event {
            kind,
            time: SystemTime::now(),
            from_gateway: true,
            shared: None,
            own: Map::new(),
            fields: Fields::default(),
        }
    }
}

/// Reads an Ed25519 PKCS#8 key (`pgward audit keygen` writes one).
fn load_key(path: &Path) -> Result<ring::signature::Ed25519KeyPair, AuditError> {
    let bytes = std::fs::read(path).map_err(|source| AuditError::Io {
        path: path.display().to_string(),
        source,
    })?;
    ring::signature::Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| AuditError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A new Ed25519 key: (PKCS#8 bytes to keep secret, raw public key).
pub fn generate_key() -> Result<(Vec<u8>, Vec<u8>), AuditError> {
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| AuditError::Other("the system random generator failed".into()))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| AuditError::Other(e.to_string()))?;
    Ok((pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    file: Option<(File, PathBuf)>,
    size: u64,
    opened: Instant,
    seq: u64,
    last_hash: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    key: Option<ring::signature::Ed25519KeyPair>,
    origin: String,
    config: AuditConfig,
    /// Lines not yet written (kept across a failed write).
    pending: Vec<u8>,
    pending_since_sync: bool,
    last_sync: Instant,
    pg: Option<postgres::PgSink>,
    /// Every record's `schema`, and `gateway` of the events the gateway emits.
    schema: &'static str,
    gateway: String,
    /// The record being written's time, formatted (kept to reuse its allocation).
    time: String,
}

impl Writer {
    fn open(
        config: &AuditConfig,
        gateway: &str,
        key: Option<ring::signature::Ed25519KeyPair>,
    ) -> Result<Writer, AuditError> {
        let dir = config.directory.clone();
        let io = |source| AuditError::Io {
            path: dir.display().to_string(),
            source,
        };
        if config.file {
            std::fs::create_dir_all(&dir).map_err(io)?;
        }
        let origin = config.origin.clone().unwrap_or_else(|| gateway.to_owned());
        let pg = match &config.postgres {
            Some(conn) => Some(postgres::PgSink::open(
                conn,
                &config.postgres_schema,
                &origin,
            )?),
            None => None,
        };
        let mut w = Writer {
            pg,
            dir: dir.clone(),
            file: None,
            size: 0,
            opened: Instant::now(),
            seq: 0,
            last_hash: chain::GENESIS.to_owned(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            key,
            origin,
            config: config.clone(),
            pending: Vec::new(),
            pending_since_sync: false,
            last_sync: Instant::now(),
            schema: chain::SCHEMA,
            gateway: gateway.to_owned(),
            time: String::with_capacity(32),
        };
        if !config.file {
            // The table is the trail: continue its chain.
            if let Some((seq, hash)) = w.pg.as_mut().map(|p| p.last()).transpose()?.flatten() {
                w.seq = seq;
                w.last_hash = hash;
            }
            info!(
                next_seq = w.seq + 1,
                signed = w.key.is_some(),
                "audit trail open (PostgreSQL only)"
            );
            return Ok(w);
        }
        let files = chain::files_in(&dir).map_err(io)?;
        if let Some(last) = files.last() {
            // Continue the chain from the last complete record.
            let text = std::fs::read(last).map_err(|source| AuditError::Io {
                path: last.display().to_string(),
                source,
            })?;
            let complete = text.ends_with(b"\n");
            let found = text
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .filter_map(|l| serde_json::from_slice::<Map<String, Value>>(l).ok())
                .next_back();
            if let Some(r) = found {
                w.seq = r.get("seq").and_then(Value::as_u64).unwrap_or(0);
                w.last_hash = r
                    .get("hash")
                    .and_then(Value::as_str)
                    .unwrap_or(chain::GENESIS)
                    .to_owned();
            }
            let size = text.len() as u64;
            if complete && size < config.max_file_size {
                let f = OpenOptions::new()
                    .append(true)
                    .open(last)
                    .map_err(|source| AuditError::Io {
                        path: last.display().to_string(),
                        source,
                    })?;
                w.file = Some((f, last.clone()));
                w.size = size;
            } else if !complete {
                warn!(file = %last.display(), "audit file ends in an unfinished record (the gateway stopped mid-write); continuing in a new file");
            }
        }
        info!(directory = %dir.display(), next_seq = w.seq + 1, signed = w.key.is_some(), "audit trail open");
        Ok(w)
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>, healthy: Arc<AtomicBool>) {
        let tick = Duration::from_millis(200);
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.checkpoint();
                    let _ = self.write_out(true);
                    return;
                }
            };
            let mut flushes = Vec::new();
            // Group commit: once a record arrives, let more gather for `batch_wait` before
            // writing, so under load one write and one sync cover many records. The thread
            // sleeps rather than waits on the queue: a sender then wakes nobody.
            if matches!(first, Some(Msg::Event(_))) && !self.config.batch_wait.is_zero() {
                std::thread::sleep(self.config.batch_wait);
            }
            let mut next = first;
            let mut taken = 0;
            while let Some(m) = next {
                match m {
                    Msg::Event(e) => {
                        crate::metrics::METRICS.audit_queue_depth.dec();
                        self.append_event(e)
                    }
                    Msg::Flush(reply) => flushes.push(reply),
                }
                taken += 1;
                next = if taken < BATCH_MAX {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !flushes.is_empty()
                || (self.config.checkpoint_interval > Duration::ZERO
                    && self.since_checkpoint > 0
                    && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval)
            {
                self.checkpoint();
            }
            let sync = !flushes.is_empty()
                || match self.config.fsync {
                    Fsync::Batch => true,
                    Fsync::Interval => self.last_sync.elapsed() >= Duration::from_secs(1),
                    Fsync::Never => false,
                };
            match self.write_out(sync) {
                Ok(()) => {
                    if !healthy.swap(true, Ordering::AcqRel) {
                        info!("audit trail writable again");
                    }
                    for f in flushes {
                        let _ = f.send(());
                    }
                }
                Err(e) => {
                    crate::metrics::METRICS.audit_write_errors.inc();
                    if healthy.swap(false, Ordering::AcqRel) {
                        error!(error = %e, "cannot write the audit trail; retrying");
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    fn append(&mut self, event: Event) {
        /// A field's value: to serialize, or serialized already.
        enum Piece<'a> {
            Str(&'a str),
            Num(u64),
            Value(&'a Value),
            Raw(&'a [u8]),
        }
        self.seq += 1;
        self.time.clear();
        // Writing to a String cannot fail.
        let _ = write!(
            self.time,
            "{}",
            humantime::format_rfc3339_micros(event.time)
        );
        let prev = std::mem::take(&mut self.last_hash);
        let shared = event.shared.as_deref();
        let mut fields: Vec<(&str, Piece)> = Vec::with_capacity(32);
        // The writer's fields first: of a name given twice, the first is kept.
        fields.extend([
            ("schema", Piece::Str(self.schema)),
            ("seq", Piece::Num(self.seq)),
            ("prev", Piece::Str(&prev)),
            ("kind", Piece::Str(event.kind)),
            ("time", Piece::Str(&self.time)),
        ]);
        if event.from_gateway {
            fields.push(("gateway", Piece::Str(&self.gateway)));
        }
        fields.extend(event.fields.entries().map(|(k, v)| (k, Piece::Raw(v))));
        fields.extend(event.own.iter().map(|(k, v)| (k.as_str(), Piece::Value(v))));
        if let Some(s) = shared {
            fields.extend(s.entries().map(|(k, v)| (k, Piece::Raw(v))));
        }
        // Each source is in name order already (see `Fields::sort`), so this stable sort
        // merges a few runs; of a name given twice, the first is kept.
        fields.sort_by(|a, b| a.0.cmp(b.0));
        fields.dedup_by(|later, first| later.0 == first.0);
        fields.retain(|(k, _)| *k != "hash");
        // One canonical serialization, written where the line goes: it is hashed, and the
        // hash appended to it makes the line.
        let mut scratch = Vec::new();
        let buf = if self.config.file {
            &mut self.pending
        } else {
            &mut scratch
        };
        let start = buf.len();
        buf.push(b'{');
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            chain::json_key(k, buf);
            match v {
                Piece::Str(s) => chain::json_str(s, buf),
                Piece::Num(n) => buf.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
                Piece::Value(v) => chain::canonical(v, buf),
                Piece::Raw(r) => buf.extend_from_slice(r),
            }
        }
        buf.push(b'}');
        let digest = ring::digest::digest(&ring::digest::SHA256, &buf[start..]);
        let mut hash = String::with_capacity(64);
        chain::hex_into(digest.as_ref(), &mut hash);
        buf.pop();
        if buf.len() - start > 1 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"\"hash\":\"");
        buf.extend_from_slice(hash.as_bytes());
        buf.extend_from_slice(b"\"}\n");
        let line = &buf[start..];
        if self.config.stdout {
            let _ = std::io::stdout().lock().write_all(line);
        }
        if let Some(pg) = &mut self.pg {
            if pg.pending.len() < postgres::MAX_PENDING {
                let get = |key: &str| {
                    let i = fields.binary_search_by(|(k, _)| (*k).cmp(key)).ok()?;
                    match fields[i].1 {
                        Piece::Str(s) => Some(Value::String(s.to_owned())),
                        Piece::Num(n) => Some(Value::from(n)),
                        Piece::Value(v) => Some(v.clone()),
                        Piece::Raw(r) => serde_json::from_slice(r).ok(),
                    }
                };
                let text = String::from_utf8_lossy(line);
                pg.pending.push(postgres::Row::of(get, text.trim_end()));
            } else {
                crate::metrics::METRICS.audit_dropped.inc();
            }
        }
        self.last_hash = hash;
    }

    /// Appends an event, and a checkpoint when `checkpoint_every` records have passed.
    fn append_event(&mut self, event: Event) {
        self.append(event);
        self.since_checkpoint += 1;
        if self.config.checkpoint_every > 0 && self.since_checkpoint >= self.config.checkpoint_every
        {
            self.checkpoint();
        }
    }

    /// Appends a signed checkpoint over everything so far (no-op without a key or new records).
    fn checkpoint(&mut self) {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        if self.since_checkpoint == 0 {
            return;
        }
        let Some(key) = &self.key else {
            return;
        };
        let message = chain::checkpoint_message(&self.origin, self.seq, &self.last_hash);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(key.sign(message.as_bytes()));
        let public = chain::hex(key.public_key().as_ref());
        let mut fields = Fields::with_capacity(5, 256);
        fields.str("origin", &self.origin);
        fields.u64("size", self.seq);
        fields.str("root", &self.last_hash);
        fields.str("signature", &signature);
        fields.str("public_key", &public);
        self.append(Event {
            from_gateway: false,
            fields,
            ..Event::new("checkpoint")
        });
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
    }

    fn write_out(&mut self, sync: bool) -> std::io::Result<()> {
        self.write_file(sync)?;
        if let Some(pg) = &mut self.pg {
            pg.flush().map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    fn write_file(&mut self, sync: bool) -> std::io::Result<()> {
        if self.pending.is_empty() {
            if sync && self.pending_since_sync {
                if let Some((f, _)) = &self.file {
                    f.sync_data()?;
                }
                self.pending_since_sync = false;
                self.last_sync = Instant::now();
            }
            return Ok(());
        }
        let rotate = self.file.is_none()
            || self.size >= self.config.max_file_size
            || (!self.config.rotate_every.is_zero()
                && self.opened.elapsed() >= self.config.rotate_every);
        if rotate {
            // The first record waiting names the new file, so names sort in chain order.
            let first_seq = self.seq + 1 - count_lines(&self.pending);
            let path = self.dir.join(format!("audit-{first_seq:012}.jsonl"));
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            if let Some((old, _)) = self.file.take() {
                old.sync_data()?;
            }
            // Make the new name itself durable.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            self.file = Some((f, path));
            self.size = 0;
            self.opened = Instant::now();
        }
        let (f, _) = self.file.as_mut().expect("opened above");
        f.write_all(&self.pending)?;
        self.size += self.pending.len() as u64;
        self.pending.clear();
        self.pending_since_sync = true;
        if sync {
            f.sync_data()?;
            self.pending_since_sync = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

/// Most records written in one go.
const BATCH_MAX: usize = 4096;

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, key: Option<PathBuf>) -> AuditConfig {
        AuditConfig {
            directory: dir.to_path_buf(),
            signing_key: key,
            checkpoint_every: 3,
            ..AuditConfig::default()
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pgward-audit-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_chain_continues_across_restarts_and_verifies_with_the_key() {
        let dir = temp_dir("restart");
        std::fs::create_dir_all(&dir).unwrap();
        let (pkcs8, public) = generate_key().unwrap();
        std::fs::write(dir.join("key.pk8"), &pkcs8).unwrap();
        let cfg = config(&dir.join("trail"), Some(dir.join("key.pk8")));
        for run in 0..2 {
            let a = Audit::start(&cfg, "gw-test").unwrap();
            for i in 0..4 {
                a.emit("statement", serde_json::json!({"run": run, "i": i}));
            }
            assert!(a.flush(Duration::from_secs(5)));
        }
        let files = chain::files_in(&dir.join("trail")).unwrap();
        let r = chain::verify(&files, Some(&public));
        assert!(r.problem.is_none(), "{:?}", r.problem);
        // 8 events, a checkpoint after every 3 records and one at each flush.
        assert!(r.checkpoints >= 3, "{r:?}");
        assert_eq!(r.unsealed, 0);
        assert_eq!(r.records, r.last_seq);
        // Another key does not verify the checkpoints.
        let (_, other) = generate_key().unwrap();
        let r = chain::verify(&files, Some(&other));
        assert!(r
            .problem
            .unwrap()
            .message
            .contains("not signed by the given key"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
