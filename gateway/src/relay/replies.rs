//! The replies the relay waits for, in the order the server will send them.
//!
//! The server answers the messages of a session strictly in order, and says little about
//! which message an answer is for: a RowDescription may answer a Query, the client's Describe
//! of a portal, or a Describe the gateway added before an Execute; a CommandComplete ends one
//! statement of a Query or a whole Execute; an ErrorResponse makes the server skip the rest of
//! an extended-protocol pipeline up to its Sync. So the client side records here each message
//! whose answer matters (to result filtering, COPY, the commit guard and the gateway's own
//! queries), and the server side asks, for each answer, what it was for.
//!
//! Kept only while the relay follows the protocol (result plugins or approvals configured):
//! a bare relay never looks at answers. Both directions edit the queue; they run in the
//! session's one task, so it is a `RefCell`, and [`Replies::pending`] hands out a [`Pending`]
//! (held between two awaits only), whose operations are named after the protocol event they
//! follow.

use super::{Described, Sent, SessionDescribed, StatementColumns};
use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::sync::Arc;

/// A request sent upstream whose answer the relay must recognise.
#[derive(Debug)]
pub(super) enum Expect {
    /// A Query: its results, one statement after another, then ReadyForQuery.
    Query(Sent),
    /// A Describe: RowDescription or NoData (after ParameterDescription for a statement).
    Describe(Describe),
    /// An Execute of a portal bound to this statement, and how its columns are known.
    Execute(Sent, Columns),
    /// A Sync (or FunctionCall): ReadyForQuery. `during_copy`: sent after an Execute or Query
    /// with no CopyDone or CopyFail since. If that statement starts a COPY FROM STDIN, the
    /// server ignores this Sync (as the protocol says it does in copy-in mode) and no
    /// ReadyForQuery answers it: libpq and tokio-postgres send Bind, Execute, Sync at once.
    Sync { during_copy: bool },
    /// A Query of the gateway's own (see `commit_guard`): its answers are dropped up to its
    /// ReadyForQuery, or with `forward` its ErrorResponse and ReadyForQuery go to the client
    /// (the COMMIT or ROLLBACK that ends a wrapped Query).
    Own { forward: bool },
    /// The gateway's own Parse, Describe and Close of the SELECTs behind a Query's COPY TO
    /// STDOUT statements, then a Sync: the answers fill in the columns, and are dropped.
    OwnDescribe(Arc<SessionDescribed>),
}

/// Whose Describe the server answers, and what its answer is for.
#[derive(Debug)]
pub(super) enum Describe {
    /// The client's own: relayed, and it describes no result that follows.
    Client,
    /// The columns of the Execute right after it: the client's own Describe of that portal
    /// (relayed) or the gateway's (not relayed).
    Portal { relay: bool },
    /// A prepared statement's columns, kept for the portals bound to it: the client's own
    /// Describe of it (relayed) or the gateway's (not relayed).
    Statement {
        columns: Arc<StatementColumns>,
        relay: bool,
    },
}

/// How the gateway knows the columns of an Execute's rows.
#[derive(Debug, PartialEq)]
pub(super) enum Columns {
    /// It does not: no result plugin was active when the Execute went upstream.
    Unknown,
    /// From the Describe right before it.
    Described,
    /// From its statement's description and its portal's result formats.
    Statement,
}

/// What a RowDescription or NoData answers.
#[derive(Debug)]
pub(super) enum DescriptionOf {
    /// A Describe of a portal; `execute`: the statement of the Execute right behind it, whose
    /// rows these columns are (`None` when no Execute follows).
    Portal {
        relay: bool,
        execute: Option<Option<Arc<crate::sql::Analysis>>>,
    },
    /// A Describe of a prepared statement (its columns stored already).
    Statement { relay: bool },
    /// The client's own Describe, for no result that follows.
    Client,
    /// A result of the Query at the front (a RowDescription only).
    Query(Option<Arc<crate::sql::Analysis>>),
    /// Nothing waiting for a description (the relay does not follow this answer).
    Unexpected,
}

/// What a CommandComplete, EmptyQueryResponse or PortalSuspended ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// One statement of the Query at the front (which stays until its ReadyForQuery).
    QueryStatement,
    /// The Execute at the front.
    Execute(Sent),
    /// Nothing the relay follows.
    Nothing,
}

/// The reply to a request of the gateway's own, at the front of the queue.
pub(super) enum OwnReply {
    /// To a Query of its own; `forward`: its error and ReadyForQuery go to the client.
    Query { forward: bool },
    /// To the Describes behind a COPY TO STDOUT.
    Describe(Arc<SessionDescribed>),
}

/// The session's queue of expected replies.
#[derive(Default)]
pub(super) struct Replies {
    queue: RefCell<VecDeque<Expect>>,
}

impl Replies {
    /// The queue, borrowed until the returned value is dropped (never across an await: the
    /// other direction borrows it too).
    pub(super) fn pending(&self) -> Pending<'_> {
        Pending(self.queue.borrow_mut())
    }
}

/// The queue, borrowed.
pub(super) struct Pending<'a>(RefMut<'a, VecDeque<Expect>>);

impl Pending<'_> {
    // What went upstream.

    /// A Query.
    pub(super) fn query(&mut self, sent: Sent) {
        self.0.push_back(Expect::Query(sent));
    }

    /// A Describe, the client's or the gateway's.
    pub(super) fn describe(&mut self, describe: Describe) {
        self.0.push_back(Expect::Describe(describe));
    }

    /// An Execute.
    pub(super) fn execute(&mut self, sent: Sent, columns: Columns) {
        self.0.push_back(Expect::Execute(sent, columns));
    }

    /// A Sync or FunctionCall (see [`Expect::Sync`] for `during_copy`).
    pub(super) fn sync(&mut self, during_copy: bool) {
        self.0.push_back(Expect::Sync { during_copy });
    }

    /// A Query of the gateway's own.
    pub(super) fn own_query(&mut self, forward: bool) {
        self.0.push_back(Expect::Own { forward });
    }

    /// The gateway's own Describes of a Query's COPY TO STDOUT statements, then a Sync.
    pub(super) fn own_describe(&mut self, described: Arc<SessionDescribed>) {
        self.0.push_back(Expect::OwnDescribe(described));
    }

    // What came back.

    /// The request of the gateway's own that the server is answering, if it is one.
    pub(super) fn own_reply(&self) -> Option<OwnReply> {
        match self.0.front()? {
            Expect::Own { forward } => Some(OwnReply::Query { forward: *forward }),
            Expect::OwnDescribe(d) => Some(OwnReply::Describe(d.clone())),
            _ => None,
        }
    }

    /// ReadyForQuery of the gateway's own request at the front.
    pub(super) fn own_ready(&mut self) {
        self.0.pop_front();
    }

    /// ParameterDescription: whether it answers the gateway's own Describe of a statement
    /// (the client never asked for it).
    pub(super) fn describing_own_statement(&self) -> bool {
        matches!(
            self.0.front(),
            Some(Expect::Describe(Describe::Statement { relay: false, .. }))
        )
    }

    /// RowDescription (`rows`) or NoData. A prepared statement's columns are set to
    /// `answer()` before the queue is given back.
    pub(super) fn description(
        &mut self,
        rows: bool,
        answer: impl FnOnce() -> Described,
    ) -> DescriptionOf {
        match self.0.front() {
            Some(Expect::Describe(_)) => {}
            Some(Expect::Query(s)) if rows => return DescriptionOf::Query(s.analysis.clone()),
            _ => return DescriptionOf::Unexpected,
        }
        let Some(Expect::Describe(d)) = self.0.pop_front() else {
            return DescriptionOf::Unexpected;
        };
        match d {
            Describe::Portal { relay } => DescriptionOf::Portal {
                relay,
                execute: match self.0.front() {
                    Some(Expect::Execute(s, _)) => Some(s.analysis.clone()),
                    _ => None,
                },
            },
            Describe::Statement { columns, relay } => {
                let _ = columns.described.set(answer());
                DescriptionOf::Statement { relay }
            }
            Describe::Client => DescriptionOf::Client,
        }
    }

    /// CopyOutResponse: the statement copying out, and its index in its Query (0 for an
    /// Execute); `statement` is the index of the Query's current statement.
    pub(super) fn copying(&self, statement: usize) -> Option<(Sent, usize)> {
        match self.0.front()? {
            Expect::Query(s) => Some((s.clone(), statement)),
            Expect::Execute(s, _) => Some((s.clone(), 0)),
            _ => None,
        }
    }

    /// The Execute at the front, whose rows arrive now.
    pub(super) fn executing(&self) -> Option<(&Sent, &Columns)> {
        match self.0.front()? {
            Expect::Execute(s, c) => Some((s, c)),
            _ => None,
        }
    }

    /// CommandComplete or EmptyQueryResponse (`suspended` false), or PortalSuspended.
    pub(super) fn ended(&mut self, suspended: bool) -> Ended {
        match self.0.front() {
            Some(Expect::Query(_)) if !suspended => Ended::QueryStatement,
            Some(Expect::Execute(..)) => match self.0.pop_front() {
                Some(Expect::Execute(s, _)) => Ended::Execute(s),
                _ => Ended::Nothing,
            },
            _ => Ended::Nothing,
        }
    }

    /// ErrorResponse: the server skips the rest of an extended-protocol pipeline up to its
    /// Sync, so the Describes and Executes waiting at the front get no answer.
    pub(super) fn failed(&mut self) {
        while matches!(
            self.0.front(),
            Some(Expect::Describe(_) | Expect::Execute(..))
        ) {
            if let Some(Expect::Describe(d)) = self.0.pop_front() {
                d.skipped();
            }
        }
    }

    /// ReadyForQuery (not of the gateway's own request): everything up to the Query or Sync it
    /// answers is over. `done` sees each Query and Execute that ended with it; returns the
    /// Query, if a Query it was.
    pub(super) fn ready(&mut self, mut done: impl FnMut(&Sent)) -> Option<Sent> {
        while let Some(e) = self.0.pop_front() {
            match e {
                Expect::Query(s) => {
                    done(&s);
                    return Some(s);
                }
                Expect::Sync { .. } | Expect::Own { .. } | Expect::OwnDescribe(_) => break,
                Expect::Execute(s, _) => done(&s),
                Expect::Describe(d) => d.skipped(),
            }
        }
        None
    }

    /// COPY FROM STDIN began for the request at the front: the Syncs queued right behind it
    /// that were sent before its CopyDone or CopyFail get no ReadyForQuery. Removes them;
    /// returns how many.
    pub(super) fn copy_in_started(&mut self) -> u32 {
        let mut dropped = 0;
        while matches!(self.0.get(1), Some(Expect::Sync { during_copy: true })) {
            self.0.remove(1);
            dropped += 1;
        }
        dropped
    }

    /// Whether an Execute is still waiting for its answer.
    pub(super) fn executes_waiting(&self) -> bool {
        self.0.iter().any(|e| matches!(e, Expect::Execute(..)))
    }

    /// Takes every expected reply (for tests that play the server).
    #[cfg(test)]
    pub(super) fn take_all(&mut self) -> Vec<Expect> {
        self.0.drain(..).collect()
    }
}

impl Describe {
    /// The server skipped this Describe: a statement's columns must be asked for again.
    pub(super) fn skipped(self) {
        if let Describe::Statement { columns, .. } = self {
            let _ = columns.described.set(Described::Skipped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{LexOptions, SqlAnalyzer};

    fn sent(sql: &str) -> Sent {
        let a = SqlAnalyzer::new(0).analyze(sql, LexOptions::default());
        Sent::new(Some(a), sql, None)
    }

    /// What a test's RowDescription or NoData stores for a statement.
    fn no_answer() -> Described {
        Described::NoData
    }

    fn text(s: Option<&Sent>) -> Option<String> {
        s.and_then(|s| s.analysis.as_ref())
            .map(|a| a.fingerprint.clone())
    }

    #[test]
    fn a_pipeline_of_bind_describe_execute_and_sync() {
        let r = Replies::default();
        let mut q = r.pending();
        // Parse/Bind/Describe portal/Execute/Sync, twice.
        q.describe(Describe::Portal { relay: true });
        q.execute(sent("SELECT 1"), Columns::Described);
        q.sync(false);
        q.describe(Describe::Portal { relay: false });
        q.execute(sent("SELECT 2"), Columns::Described);
        q.sync(false);
        match q.description(true, no_answer) {
            DescriptionOf::Portal {
                relay: true,
                execute: Some(a),
            } => assert_eq!(a.unwrap().fingerprint, "select ?"),
            other => panic!("{other:?}"),
        }
        assert!(q.executing().is_some());
        assert!(q.executes_waiting());
        assert!(matches!(q.ended(false), Ended::Execute(_)));
        let mut done = 0;
        assert!(q.ready(|_| done += 1).is_none());
        assert_eq!(done, 0, "the Execute ended before");
        // The second pipeline's Describe was the gateway's: not relayed.
        assert!(matches!(
            q.description(true, no_answer),
            DescriptionOf::Portal { relay: false, .. }
        ));
        assert!(matches!(q.ended(false), Ended::Execute(_)));
        assert!(q.ready(|_| ()).is_none());
        assert!(!q.executes_waiting());
        assert!(q.take_all().is_empty());
    }

    #[test]
    fn an_error_mid_pipeline_skips_to_the_sync() {
        let r = Replies::default();
        let mut q = r.pending();
        q.execute(sent("SELECT 1/0"), Columns::Unknown);
        q.describe(Describe::Client);
        q.execute(sent("SELECT 2"), Columns::Unknown);
        q.sync(false);
        q.query(sent("SELECT 3"));
        // The first Execute fails: the server skips the Describe and the second Execute.
        q.failed();
        assert!(!q.executes_waiting());
        // Its ReadyForQuery answers the Sync only; the Query waits.
        assert!(q.ready(|_| panic!("nothing ran")).is_none());
        assert!(matches!(
            q.description(true, no_answer),
            DescriptionOf::Query(_)
        ));
        assert!(matches!(q.ended(false), Ended::QueryStatement));
        let mut seen = Vec::new();
        let query = q.ready(|s| seen.push(text(Some(s))));
        assert_eq!(text(query.as_ref()).as_deref(), Some("select ?"));
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_query_of_several_statements_stays_until_ready() {
        let r = Replies::default();
        let mut q = r.pending();
        q.query(sent("SELECT 1; SELECT 2"));
        assert!(matches!(
            q.description(true, no_answer),
            DescriptionOf::Query(_)
        ));
        assert!(matches!(q.ended(false), Ended::QueryStatement));
        // NoData does not answer a Query (a Query's statement without rows sends none).
        assert!(matches!(
            q.description(false, no_answer),
            DescriptionOf::Unexpected
        ));
        assert!(matches!(
            q.description(true, no_answer),
            DescriptionOf::Query(_)
        ));
        assert!(matches!(q.ended(false), Ended::QueryStatement));
        assert!(q.ready(|_| ()).is_some());
        assert!(q.take_all().is_empty());
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_ready_for_query() {
        let r = Replies::default();
        let mut q = r.pending();
        // Bind, Execute (COPY FROM STDIN), Sync sent at once; a Sync after the copy's end.
        q.execute(sent("COPY t FROM STDIN"), Columns::Unknown);
        q.sync(true);
        q.sync(true);
        q.sync(false);
        q.sync(true);
        assert_eq!(q.copy_in_started(), 2);
        assert_eq!(q.copy_in_started(), 0, "only the ones right behind");
        assert!(matches!(q.copying(0), Some((_, 0))));
        assert!(matches!(q.ended(false), Ended::Execute(_)));
        let left = q.take_all();
        assert!(matches!(
            left[..],
            [
                Expect::Sync { during_copy: false },
                Expect::Sync { during_copy: true }
            ]
        ));
    }

    #[test]
    fn the_gateways_own_requests_are_told_apart() {
        let r = Replies::default();
        let mut q = r.pending();
        q.own_query(true);
        q.own_describe(Arc::new(SessionDescribed::default()));
        q.query(sent("COPY t TO STDOUT"));
        assert!(matches!(
            q.own_reply(),
            Some(OwnReply::Query { forward: true })
        ));
        q.own_ready();
        assert!(matches!(q.own_reply(), Some(OwnReply::Describe(_))));
        q.own_ready();
        assert!(q.own_reply().is_none());
        // A COPY TO STDOUT of the second statement of a Query.
        let (s, index) = q.copying(1).expect("the Query copies");
        assert_eq!(index, 1);
        assert!(s.copy_sql.is_some());
        // A PortalSuspended does not end a Query's statement.
        assert!(matches!(q.ended(true), Ended::Nothing));
    }

    #[test]
    fn a_statement_described_by_the_gateway_is_not_relayed() {
        let r = Replies::default();
        let mut q = r.pending();
        let columns = StatementColumns::new(0);
        q.describe(Describe::Statement {
            columns: columns.clone(),
            relay: false,
        });
        q.describe(Describe::Statement {
            columns: columns.clone(),
            relay: true,
        });
        assert!(q.describing_own_statement());
        assert!(matches!(
            q.description(false, no_answer),
            DescriptionOf::Statement { relay: false }
        ));
        assert!(matches!(columns.described.get(), Some(Described::NoData)));
        assert!(!q.describing_own_statement());
        // The second is skipped by an error: its columns must be asked for again.
        let other = StatementColumns::new(0);
        q.take_all();
        q.describe(Describe::Statement {
            columns: other.clone(),
            relay: true,
        });
        q.failed();
        assert!(matches!(other.described.get(), Some(Described::Skipped)));
    }
}
