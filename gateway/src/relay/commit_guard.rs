//! What a refused result does to the statements around it.
//!
//! A result plugin may refuse a result after its statement went upstream: the client then gets
//! an ErrorResponse in place of the rows and believes, as PostgreSQL's protocol says, that
//! nothing after that point of its query string or pipeline ran. The server does not know of
//! the refusal: it goes on with the later statements of the string or pipeline and commits them
//! with the implicit transaction. These decisions keep the two views in agreement, so a write
//! after a refused read never commits while the client was told it did not run:
//!
//! - a multi-statement Query sent outside a transaction block is run inside one the gateway
//!   opens (`BEGIN` before it), and ended with `ROLLBACK` when a result of it was refused,
//!   `COMMIT` otherwise ([`QueryPlan::Wrap`]);
//! - an extended-protocol pipeline with writes after a result is held at its Sync (or at a
//!   COMMIT inside it) until its results are through the plugins; after a refusal the gateway
//!   makes the server fail a statement of its own first, so the implicit transaction or the
//!   transaction block is aborted ([`SegmentStep::Gate`]);
//! - a refusal inside a transaction block aborts the block: the client's ReadyForQuery says
//!   "failed transaction", and the gateway makes the server's transaction fail before it relays
//!   the client's next message ([`QueryPlan::Barrier`], [`SegmentStep::Barrier`]), holding that
//!   message until the refused unit is answered when the client pipelines;
//! - what cannot be kept in agreement is refused before it runs: a string that would commit
//!   (COMMIT, or a transaction end followed by more writes) after a result, or that starts a
//!   COPY FROM STDIN after one ([`QueryPlan::Refuse`]).
//!
//! Nothing here applies unless a result plugin is active, and the common shapes (one statement
//! outside a block, a one-statement pipeline, statements sent one at a time in a block) cost
//! nothing beyond these checks.

use crate::sql::{Analysis, CopyDirection, StatementAnalysis, StatementKind};

/// What one statement may do that matters after a refused result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Traits {
    /// It may return rows, so a result plugin may refuse its result.
    pub rows: bool,
    /// It changes data (its own effects stay if it commits after its result was refused).
    pub modifies: bool,
    /// It has an effect a refusal before it must undo: data, schema, session settings.
    pub effects: bool,
    /// It calls functions, which may write. Counted as effects after a result only: a read
    /// that calls functions before a refused result is not taken to write.
    pub calls: bool,
    /// It controls transactions (BEGIN, COMMIT, ROLLBACK, savepoints; CALL, whose procedure
    /// may commit; a statement the gateway could not read).
    pub transaction: bool,
    /// It ends the transaction (COMMIT, ROLLBACK, PREPARE TRANSACTION): what follows it in a
    /// string commits on its own.
    pub ends: bool,
    /// It may commit what came before it.
    pub commits: bool,
    /// It is a COPY FROM STDIN: the client's data follows it, so nothing may wait for it.
    pub copy_in: bool,
}

impl Traits {
    /// Everything, for a statement nothing is known of.
    const UNKNOWN: Traits = Traits {
        rows: true,
        modifies: true,
        effects: true,
        calls: true,
        transaction: true,
        ends: true,
        commits: true,
        copy_in: false,
    };

    pub fn of(s: &StatementAnalysis) -> Traits {
        use StatementKind as K;
        if s.kind == K::Unknown {
            return Traits::UNKNOWN;
        }
        let copy_in = s
            .copy
            .as_ref()
            .is_some_and(|c| c.direction == CopyDirection::From && c.stdio);
        // Cursors read; what a cursor's query changes is in `writes`.
        let cursor = s.kind == K::Utility
            && matches!(
                s.command.as_str(),
                "DECLARE CURSOR" | "FETCH" | "CLOSE CURSOR"
            );
        let rows = s.output.is_some()
            || matches!(
                s.kind,
                K::Select | K::Show | K::Explain | K::Execute | K::Call
            )
            || (s.kind == K::Utility && s.command == "FETCH");
        let modifies = !s.writes.is_empty()
            || s.explain_analyze
            || matches!(
                s.kind,
                K::Insert | K::Update | K::Delete | K::Merge | K::Execute | K::Call
            );
        let reads_only =
            (cursor || matches!(s.kind, K::Select | K::Show | K::Explain)) && !modifies;
        let transaction = matches!(s.kind, K::Transaction | K::Call);
        let commits =
            s.kind == K::Transaction && (s.command == "COMMIT" || s.command.starts_with("PREPARE"));
        let ends = commits || (s.kind == K::Transaction && s.command == "ROLLBACK");
        Traits {
            rows,
            modifies,
            effects: modifies || !(reads_only || s.kind == K::Transaction),
            calls: !s.functions.is_empty(),
            transaction,
            ends,
            commits,
            copy_in,
        }
    }

    /// The traits of a prepared statement (one statement, or none for an empty one); `None`
    /// when its text was not analysed.
    pub fn of_prepared(a: Option<&Analysis>) -> Traits {
        match a {
            None => Traits::UNKNOWN,
            Some(a) => a
                .statements
                .iter()
                .map(Traits::of)
                .fold(Traits::default(), |acc, t| Traits {
                    rows: acc.rows || t.rows,
                    modifies: acc.modifies || t.modifies,
                    effects: acc.effects || t.effects,
                    calls: acc.calls || t.calls,
                    transaction: acc.transaction || t.transaction,
                    ends: acc.ends || t.ends,
                    commits: acc.commits || t.commits,
                    copy_in: acc.copy_in || t.copy_in,
                }),
        }
    }
}

/// How a Query is sent while a result plugin is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryPlan {
    /// As it is: no refusal of its results can leave effects behind.
    Pass,
    /// Inside a transaction block of the gateway's: `BEGIN` first, then `COMMIT` or, after a
    /// refusal, `ROLLBACK`.
    Wrap,
    /// As it is, but a refusal aborts the transaction it leaves open, before the client's next
    /// message runs.
    Barrier,
    /// Refused before it runs: a refusal of one of its results could not be undone.
    Refuse(&'static str),
}

/// Decides how to send a Query with analysis `a`; `idle` when the session is outside a
/// transaction block with nothing in flight.
pub(crate) fn plan_query(a: &Analysis, idle: bool) -> QueryPlan {
    let traits: Vec<Traits> = a.statements.iter().map(Traits::of).collect();
    if !traits.iter().any(|t| t.rows) {
        return QueryPlan::Pass;
    }
    let mut rows_before = false;
    let mut effects_before = !idle;
    let mut ended_after_rows = false;
    let mut effects_after_rows = false;
    for t in &traits {
        if rows_before && t.copy_in {
            return QueryPlan::Refuse(COPY_AFTER_ROWS);
        }
        let effects = t.effects || (rows_before && t.calls);
        if (rows_before && t.commits && effects_before) || (ended_after_rows && effects) {
            return QueryPlan::Refuse(COMMIT_AFTER_ROWS);
        }
        effects_after_rows |= (rows_before && effects) || (t.rows && t.modifies);
        ended_after_rows |= rows_before && t.ends;
        rows_before |= t.rows;
        effects_before |= effects;
    }
    let transaction = traits.iter().any(|t| t.transaction);
    if traits.iter().any(|t| t.copy_in) {
        // Its data follows; a refusal before it was already ruled out.
        return QueryPlan::Pass;
    }
    if !idle || transaction {
        QueryPlan::Barrier
    } else if effects_after_rows {
        QueryPlan::Wrap
    } else {
        QueryPlan::Pass
    }
}

const COMMIT_AFTER_ROWS: &str = "a query string that ends a transaction after a statement returning rows cannot run while result policies are active: the policies may refuse that result after the rest committed";
const COPY_AFTER_ROWS: &str = "a query string that starts COPY FROM STDIN after a statement returning rows cannot run while result policies are active";

/// The statements of one extended-protocol pipeline segment (up to its Sync), as they go
/// upstream.
#[derive(Debug, Default)]
pub(crate) struct Segment {
    started: bool,
    /// The session was outside a transaction block, nothing in flight, at its first Execute.
    idle: bool,
    rows_seen: bool,
    effects_seen: bool,
    /// A transaction ended after a result that may be refused.
    ended_after_rows: bool,
    transaction: bool,
    copy_in: bool,
    /// Something with effects follows a result that may be refused.
    effects_after_rows: bool,
    /// The gateway has already made the server fail this segment.
    aborted: bool,
}

/// What to do before a message of the segment goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentStep {
    /// Send it.
    Forward,
    /// Wait until the server has answered the segment's Executes; if a result of them was
    /// refused, make the server fail first.
    Gate,
    /// Send it; a refusal in the segment aborts the transaction it leaves open before the
    /// client's next message runs.
    Barrier,
}

impl Segment {
    /// An Execute of a statement with traits `t`; `idle` as in [`plan_query`].
    pub fn execute(&mut self, t: Traits, idle: bool) -> SegmentStep {
        if !self.started {
            self.started = true;
            self.idle = idle;
            self.effects_seen = !idle;
        }
        let effects = t.effects || (self.rows_seen && t.calls);
        let gate = ((self.rows_seen && t.commits && self.effects_seen)
            || (self.ended_after_rows && effects))
            && !self.aborted;
        self.effects_after_rows |= (self.rows_seen && effects) || (t.rows && t.modifies);
        self.ended_after_rows |= self.rows_seen && t.ends;
        self.rows_seen |= t.rows;
        self.effects_seen |= effects;
        self.transaction |= t.transaction;
        self.copy_in |= t.copy_in;
        if gate {
            SegmentStep::Gate
        } else {
            SegmentStep::Forward
        }
    }

    /// The gateway made the server fail the segment (at a gate).
    pub fn aborted(&mut self) {
        self.aborted = true;
    }

    /// The segment's Sync; the segment starts afresh after it.
    pub fn sync(&mut self) -> SegmentStep {
        let s = std::mem::take(self);
        if !s.rows_seen || s.copy_in {
            SegmentStep::Forward
        } else if s.effects_after_rows && !s.aborted {
            SegmentStep::Gate
        } else if !s.idle || s.transaction {
            SegmentStep::Barrier
        } else {
            SegmentStep::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{analyze, LexOptions};

    fn plan(sql: &str, idle: bool) -> QueryPlan {
        plan_query(&analyze(sql, LexOptions::default()), idle)
    }

    fn traits(sql: &str) -> Traits {
        Traits::of_prepared(Some(&analyze(sql, LexOptions::default())))
    }

    #[test]
    fn single_reads_and_writes_outside_a_block_pass() {
        assert_eq!(
            plan("SELECT abalance FROM pgbench_accounts WHERE aid = 1", true),
            QueryPlan::Pass
        );
        assert_eq!(
            plan("UPDATE t SET a = 1 WHERE id = 2", true),
            QueryPlan::Pass
        );
        assert_eq!(plan("SELECT 1; SELECT 2", true), QueryPlan::Pass);
        assert_eq!(
            plan("INSERT INTO t VALUES (1); SELECT * FROM t", true),
            QueryPlan::Pass
        );
        assert_eq!(plan("COPY t FROM STDIN", true), QueryPlan::Pass);
    }

    #[test]
    fn writes_after_a_result_outside_a_block_are_wrapped() {
        assert_eq!(
            plan("SELECT ssn FROM people; INSERT INTO t VALUES (1)", true),
            QueryPlan::Wrap
        );
        assert_eq!(
            plan("SELECT ssn FROM people; SET search_path = x", true),
            QueryPlan::Wrap
        );
        assert_eq!(
            plan("SELECT ssn FROM people; SELECT f()", true),
            QueryPlan::Wrap
        );
        assert_eq!(
            plan("INSERT INTO t VALUES (1) RETURNING ssn", true),
            QueryPlan::Wrap
        );
        assert_eq!(plan("DELETE FROM t RETURNING *", true), QueryPlan::Wrap);
    }

    #[test]
    fn results_in_a_block_or_with_transaction_control_set_a_barrier() {
        assert_eq!(plan("SELECT ssn FROM people", false), QueryPlan::Barrier);
        assert_eq!(
            plan("SELECT ssn FROM people; INSERT INTO t VALUES (1)", false),
            QueryPlan::Barrier
        );
        assert_eq!(
            plan("BEGIN; SELECT ssn FROM people; COMMIT", true),
            QueryPlan::Barrier
        );
        assert_eq!(
            plan("BEGIN; DECLARE c CURSOR FOR SELECT upper(ssn) FROM people; FETCH 2 FROM c; CLOSE c; COMMIT", true),
            QueryPlan::Barrier
        );
        assert_eq!(
            plan(
                "BEGIN; SELECT ssn FROM people; INSERT INTO t VALUES (1)",
                true
            ),
            QueryPlan::Barrier
        );
        assert_eq!(plan("UPDATE t SET a = 1", false), QueryPlan::Pass);
    }

    #[test]
    fn what_would_commit_after_a_result_is_refused() {
        for sql in [
            "SELECT ssn FROM people; INSERT INTO t VALUES (1); COMMIT",
            "BEGIN; INSERT INTO t VALUES (1); SELECT ssn FROM people; COMMIT",
            "BEGIN; INSERT INTO t VALUES (1) RETURNING ssn; COMMIT",
            "SELECT ssn FROM people; ROLLBACK; INSERT INTO t VALUES (1)",
            "SELECT ssn FROM people; COPY t FROM STDIN",
            "BEGIN; SELECT ssn FROM people; SELECT write_log(); COMMIT",
        ] {
            assert!(matches!(plan(sql, true), QueryPlan::Refuse(_)), "{sql}");
        }
        // In a block, what came before the string commits with it.
        assert!(matches!(
            plan("SELECT ssn FROM people; COMMIT", false),
            QueryPlan::Refuse(_)
        ));
        assert_eq!(
            plan("SELECT ssn FROM people; COMMIT", true),
            QueryPlan::Barrier
        );
    }

    #[test]
    fn a_pipeline_with_writes_after_a_result_is_gated_at_its_sync() {
        let mut s = Segment::default();
        assert_eq!(
            s.execute(traits("SELECT ssn FROM people"), true),
            SegmentStep::Forward
        );
        assert_eq!(
            s.execute(traits("INSERT INTO t VALUES ($1)"), true),
            SegmentStep::Forward
        );
        assert_eq!(s.sync(), SegmentStep::Gate);
        // The next segment starts afresh.
        assert_eq!(
            s.execute(traits("SELECT ssn FROM people"), true),
            SegmentStep::Forward
        );
        assert_eq!(s.sync(), SegmentStep::Forward);
        assert_eq!(s.sync(), SegmentStep::Forward);
    }

    #[test]
    fn a_commit_after_a_result_and_a_write_is_gated_itself() {
        let mut s = Segment::default();
        s.execute(traits("BEGIN"), true);
        s.execute(traits("INSERT INTO t VALUES (1)"), true);
        s.execute(traits("SELECT ssn FROM people"), true);
        assert_eq!(s.execute(traits("COMMIT"), true), SegmentStep::Gate);
        s.aborted();
        assert_eq!(s.sync(), SegmentStep::Barrier);
    }

    #[test]
    fn a_result_in_a_block_sets_a_barrier_and_a_copy_never_waits() {
        let mut s = Segment::default();
        s.execute(
            traits("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            false,
        );
        assert_eq!(s.sync(), SegmentStep::Barrier);
        s.execute(traits("UPDATE t SET a = 1"), false);
        assert_eq!(s.sync(), SegmentStep::Forward);
        s.execute(traits("SELECT ssn FROM people"), true);
        s.execute(traits("COPY t FROM STDIN"), true);
        assert_eq!(s.sync(), SegmentStep::Forward);
        assert_eq!(Traits::of_prepared(None), Traits::UNKNOWN);
    }
}
