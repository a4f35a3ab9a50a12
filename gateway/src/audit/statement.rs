//! Statement records that wait for the server's answer.
//!
//! A statement's verdict is decided when it goes upstream, but what an auditor asks next —
//! did it run, how many rows, how long, which error — is known only once the server has
//! answered. So the relay builds the decided part of a record ([`Decided`]) when it judges a
//! Query or Parse, and [`Outcomes`] keeps it, in the order the server answers, until the
//! statement's CommandComplete, error, PortalSuspended or ReadyForQuery; the record is then
//! written whole: one `statement` record per Query message and per Execute.
//!
//! Statements refused by the gateway are recorded at once (nothing of theirs runs), and so
//! are held statements that were not released. A statement still open when the session ends
//! is written with `outcome = "unfinished"`.

use super::fields::Fields;
use super::Audit;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// The decided part of a statement's record, shared by every execution of a prepared
/// statement.
pub type Decided = Arc<Fields>;

/// Bound parameter values of one Bind, as recorded.
pub type Params = Arc<[Option<String>]>;

/// What the server will answer for, in order.
enum Awaited {
    /// A Query: its statements' results, then ReadyForQuery.
    Query(Open),
    /// An Execute: CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute(Open),
    /// A Sync or FunctionCall: ReadyForQuery. `during_copy`: sent before the CopyDone of a
    /// statement that may start COPY FROM STDIN, when the server ignores it.
    Sync { during_copy: bool },
}

struct Open {
    /// `None` when there is nothing left to write (it was refused and recorded already).
    record: Option<(Decided, Option<Params>)>,
    started: Instant,
    rows: u64,
    bytes: u64,
    tags: Vec<String>,
    /// The error that ended a Query.
    sqlstate: Option<String>,
}

impl Open {
    fn new(record: Option<(Decided, Option<Params>)>) -> Open {
        Open {
            record,
            started: Instant::now(),
            rows: 0,
            bytes: 0,
            tags: Vec::new(),
            sqlstate: None,
        }
    }
}

/// How a statement ended, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It completed (CommandComplete, or an empty query).
    Ok,
    /// The server failed it.
    Error,
    /// The portal was suspended: the client asked for a limited number of rows.
    Suspended,
    /// It never ran: an earlier error in its pipeline made the server skip it.
    Skipped,
    /// The session ended before the server answered.
    Unfinished,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Suspended => "suspended",
            Outcome::Skipped => "skipped",
            Outcome::Unfinished => "unfinished",
        }
    }
}

/// Rows and bytes the server sent since the last statement ended: the server side counts
/// them without touching the queue.
#[derive(Debug, Default)]
pub struct Tally {
    pub rows: u64,
    pub bytes: u64,
}

/// The session's statements whose records wait for the server.
pub struct Outcomes<'a> {
    audit: &'a Audit,
    session: u64,
    /// Edited by both directions of the session's one task (see `relay::RelayState`).
    queue: RefCell<VecDeque<Awaited>>,
}

impl<'a> Outcomes<'a> {
    pub fn new(audit: &'a Audit, session: u64) -> Self {
        Outcomes {
            audit,
            session,
            queue: RefCell::new(VecDeque::new()),
        }
    }

    fn queue(&self) -> std::cell::RefMut<'_, VecDeque<Awaited>> {
        self.queue.borrow_mut()
    }

    /// A Query went upstream.
    pub fn query(&self, record: Option<Decided>) {
        self.queue()
            .push_back(Awaited::Query(Open::new(record.map(|d| (d, None)))));
    }

    /// An Execute went upstream.
    pub fn execute(&self, record: Option<(Decided, Option<Params>)>) {
        self.queue().push_back(Awaited::Execute(Open::new(record)));
    }

    /// A Sync or FunctionCall went upstream; `during_copy` as for the relay's queue.
    pub fn sync(&self, during_copy: bool) {
        self.queue().push_back(Awaited::Sync { during_copy });
    }

    /// COPY FROM STDIN began for the statement at the front: the Syncs sent right after it
    /// get no ReadyForQuery. Returns how many were dropped.
    pub fn copy_in_started(&self) -> u32 {
        let mut q = self.queue();
        let mut dropped = 0;
        while matches!(q.get(1), Some(Awaited::Sync { during_copy: true })) {
            q.remove(1);
            dropped += 1;
        }
        dropped
    }

    /// The statement the server is answering for, as the audit trail numbers it.
    pub fn current_statement(&self) -> Option<u64> {
        let q = self.queue();
        let open = match q.front()? {
            Awaited::Query(o) | Awaited::Execute(o) => o,
            Awaited::Sync { .. } => return None,
        };
        open.record
            .as_ref()
            .and_then(|(d, _)| d.get_u64("statement"))
    }

    /// CommandComplete with `tag`, or EmptyQueryResponse (`None`).
    pub fn completed(&self, tag: Option<&str>, tally: &mut Tally) {
        let mut q = self.queue();
        match q.front_mut() {
            Some(Awaited::Query(open)) => {
                add(open, tag, tally);
            }
            Some(Awaited::Execute(_)) => {
                if let Some(Awaited::Execute(mut open)) = q.pop_front() {
                    add(&mut open, tag, tally);
                    self.write(open, Outcome::Ok);
                }
            }
            _ => {}
        }
    }

    /// PortalSuspended: the Execute's row limit was reached.
    pub fn suspended(&self, tally: &mut Tally) {
        let mut q = self.queue();
        if let Some(Awaited::Execute(_)) = q.front() {
            if let Some(Awaited::Execute(mut open)) = q.pop_front() {
                add(&mut open, None, tally);
                self.write(open, Outcome::Suspended);
            }
        }
    }

    /// An ErrorResponse with `sqlstate`: the Query fails here, or the Execute fails and the
    /// server skips the rest of its pipeline up to Sync.
    pub fn failed(&self, sqlstate: &str, tally: &mut Tally) {
        let mut q = self.queue();
        match q.front_mut() {
            Some(Awaited::Query(open)) => {
                add(open, None, tally);
                open.sqlstate = Some(sqlstate.to_owned());
            }
            Some(Awaited::Execute(_)) => {
                if let Some(Awaited::Execute(mut open)) = q.pop_front() {
                    add(&mut open, None, tally);
                    open.sqlstate = Some(sqlstate.to_owned());
                    self.write(open, Outcome::Error);
                }
                while let Some(Awaited::Execute(_)) = q.front() {
                    if let Some(Awaited::Execute(open)) = q.pop_front() {
                        self.write(open, Outcome::Skipped);
                    }
                }
            }
            _ => {}
        }
    }

    /// ReadyForQuery: the Query, or everything up to the Sync, is over.
    pub fn ready(&self, tally: &mut Tally) {
        let mut q = self.queue();
        while let Some(a) = q.pop_front() {
            match a {
                Awaited::Query(mut open) => {
                    add(&mut open, None, tally);
                    let outcome = match open.sqlstate {
                        Some(_) => Outcome::Error,
                        None => Outcome::Ok,
                    };
                    self.write(open, outcome);
                    break;
                }
                Awaited::Execute(open) => self.write(open, Outcome::Skipped),
                Awaited::Sync { .. } => break,
            }
        }
        *tally = Tally::default();
    }

    /// The session is over: what is still open is written as unfinished.
    pub fn end(&self) {
        let mut q = self.queue();
        while let Some(a) = q.pop_front() {
            if let Awaited::Query(open) | Awaited::Execute(open) = a {
                self.write(open, Outcome::Unfinished);
            }
        }
    }

    fn write(&self, open: Open, outcome: Outcome) {
        let Some((decided, params)) = open.record else {
            return;
        };
        // The decided part is shared by every execution of a prepared statement: the record
        // refers to it, and adds what this execution did.
        let mut own = Fields::with_capacity(8, 128);
        own.u64("session", self.session);
        if let Some(p) = params {
            own.strs("parameters", p.iter().map(Option::as_deref));
        }
        own.str("outcome", outcome.as_str());
        if let Some(s) = open.sqlstate {
            own.str("sqlstate", &s);
        }
        own.u64("rows", open.rows);
        own.u64("bytes", open.bytes);
        own.u64("duration_us", open.started.elapsed().as_micros() as u64);
        if !open.tags.is_empty() {
            own.strs("results", open.tags.iter().map(Some));
        }
        self.audit.emit_fields("statement", decided, own);
    }
}

/// Adds what the server sent since the last statement ended, and a command tag, to `open`.
fn add(open: &mut Open, tag: Option<&str>, tally: &mut Tally) {
    open.bytes += tally.bytes;
    match tag.and_then(rows_of_tag) {
        // The tag counts what a DML statement touched; a SELECT's tag and the DataRows agree.
        Some(n) => open.rows += n,
        None => open.rows += tally.rows,
    }
    if let Some(t) = tag {
        open.tags.push(t.to_owned());
    }
    *tally = Tally::default();
}

/// The row count at the end of a command tag (`SELECT 3`, `INSERT 0 2`, `UPDATE 1`, ...).
pub fn rows_of_tag(tag: &str) -> Option<u64> {
    let (command, rest) = tag.split_once(' ')?;
    match command {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            rest.rsplit(' ').next()?.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuditConfig;
    use std::time::Duration;

    use serde_json::Value;

    fn decided(n: u64) -> Decided {
        let mut f = Fields::default();
        f.u64("statement", n);
        Arc::new(f)
    }

    /// Drives `Outcomes` as the relay does and reads back the records it wrote.
    #[test]
    fn each_execution_gets_the_outcome_the_server_gave_it() {
        let dir = std::env::temp_dir().join(format!(
            "pgward-outcomes-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let config = AuditConfig {
            directory: dir.clone(),
            ..AuditConfig::default()
        };
        let audit = Audit::start(&config, "gw-test").unwrap();
        let o = Outcomes::new(&audit, 7);
        let mut t = Tally::default();
        // A pipeline: ok, failed, skipped by the server, then Sync.
        let params: Params = Arc::from(vec![Some("42".to_owned()), None]);
        o.execute(Some((decided(1), Some(params))));
        o.execute(Some((decided(1), None)));
        o.execute(Some((decided(2), None)));
        o.sync(false);
        t.rows = 2;
        t.bytes = 60;
        o.completed(Some("SELECT 2"), &mut t);
        o.failed("22012", &mut t);
        o.ready(&mut t);
        // A Query of two statements; a refused one (no record) after it.
        o.query(Some(decided(3)));
        o.query(None);
        o.completed(Some("INSERT 0 5"), &mut t);
        o.completed(Some("UPDATE 2"), &mut t);
        o.ready(&mut t);
        o.failed("42501", &mut t);
        o.ready(&mut t);
        // A row-limited Execute, and one still running when the session ends.
        o.execute(Some((decided(4), None)));
        t.rows = 10;
        o.suspended(&mut t);
        o.execute(Some((decided(4), None)));
        o.end();
        assert!(audit.flush(Duration::from_secs(5)));
        let files = crate::audit::chain::files_in(&dir).unwrap();
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &Value| r["kind"] == "statement")
            .collect();
        let brief: Vec<String> = records
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r["statement"], r["outcome"], r["rows"], r["sqlstate"]
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                r#"1 "ok" 2 null"#,
                r#"1 "error" 0 "22012""#,
                r#"2 "skipped" 0 null"#,
                r#"3 "ok" 7 null"#,
                r#"4 "suspended" 10 null"#,
                r#"4 "unfinished" 0 null"#,
            ]
        );
        assert_eq!(records[0]["parameters"], serde_json::json!(["42", null]));
        assert_eq!(records[0]["bytes"], 60);
        assert_eq!(records[0]["session"], 7);
        assert_eq!(
            records[3]["results"],
            serde_json::json!(["INSERT 0 5", "UPDATE 2"])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rows_come_from_the_command_tag() {
        assert_eq!(rows_of_tag("SELECT 3"), Some(3));
        assert_eq!(rows_of_tag("INSERT 0 25"), Some(25));
        assert_eq!(rows_of_tag("UPDATE 0"), Some(0));
        assert_eq!(rows_of_tag("COPY 1000"), Some(1000));
        assert_eq!(rows_of_tag("CREATE TABLE"), None);
        assert_eq!(rows_of_tag("BEGIN"), None);
        assert_eq!(rows_of_tag("SELECT"), None);
    }
}
