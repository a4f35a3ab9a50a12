//! The client's side of the relay as a processor that does no I/O: it is given the bytes read
//! from the client and works out what goes upstream for them — the same bytes, a stand-in for
//! a denied statement, a Describe the result filter needs, the gateway's own BEGIN, COMMIT or
//! ROLLBACK around a Query it wraps — and what the server will answer, in order (see
//! [`Replies`]).
//!
//! The pump in [`super::client_to_server`] owns the socket halves: it reads into a buffer,
//! calls [`ClientSide::process`] until the processor has looked at every complete frame,
//! writes [`ClientSide::output`] and drops the bytes [`ClientSide::consumed`]. Some messages
//! cannot go on at once; the processor then stops and says what it waits for:
//! [`Step::Hold`], a statement that needs approval (the pump decides it and hands the decision
//! back with [`ClientSide::answer`]), and [`Step::Wait`], until the server has answered what
//! went before (the commit guard, see [`commit_guard`]). Either way the pump first sends what
//! the processor has built so far, and the next `process` call goes on where it stopped.

use super::*;

/// The client → server processor of one session.
pub(super) struct ClientSide {
    /// Policies are on: the server's answers are matched to the requests.
    tracking: bool,
    /// The extended protocol's messages are followed, for result filtering or the audit trail.
    extended: bool,
    prepared: Prepared,
    /// An Execute or Query went upstream and no CopyDone or CopyFail since: a Sync now is one
    /// the server ignores if that statement started a COPY FROM STDIN (see
    /// `replies::Expect::Sync`).
    copy_window: bool,
    /// Bytes of the current frame still to copy through without looking at them.
    pass: usize,
    /// The extended-protocol statements since the last Sync, for the commit guard.
    segment: Segment,
    /// The client's next message waits until what went before it is answered (commit guard).
    barrier: bool,
    /// The wait before the next message is over (see `barrier`).
    settled: bool,
    /// What is followed for the messages of one read (taken again after a hold).
    follow: Follow,
    /// The next `process` starts on a new read: `follow` is taken again.
    new_read: bool,
    /// Looked at up to here in the buffer being processed.
    pos: usize,
    /// Bytes missing from a message that must be read whole (see [`Self::missing`]).
    short: usize,
    /// What goes upstream.
    out: BytesMut,
    /// The frame at `pos` waits for an answer or the end of a wait.
    waiting: Option<Waiting>,
    answer: Option<Gate>,
}

/// What [`ClientSide::process`] stopped for.
#[derive(Debug)]
pub(super) enum Step {
    /// Every complete frame was looked at: write [`ClientSide::output`], then read more.
    Read,
    /// A statement needs approval: write the output, decide it, and call
    /// [`ClientSide::answer`] with the decision.
    Hold(Hold),
    /// Write the output and wait until the server has answered as far as `Until` says (or
    /// waits for COPY data), reading the client meanwhile.
    Wait(Until),
    /// The client sent Terminate: write the output and end.
    Terminate,
    /// The client broke the protocol.
    End(RelayEnd),
}

/// A statement held for approval.
#[derive(Debug)]
pub(super) struct Hold {
    pub(super) needs: Arc<NeedsApproval>,
    /// A Bind's parameters, for the approval request (none for a Query).
    pub(super) params: Vec<Option<String>>,
    /// Where the held message ends in the buffer being processed.
    pub(super) frame_end: usize,
}

/// How far the server's answers must have come before the client's next bytes go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Everything sent is answered.
    Quiet,
    /// The Executes of the current pipeline segment are answered.
    ExecutesAnswered,
    /// The Query the gateway wrapped in a transaction block has ended.
    WrappedEnded,
}

impl Until {
    pub(super) fn reached(self, state: &RelayState) -> bool {
        match self {
            Until::Quiet => state.pending.get() == 0,
            Until::ExecutesAnswered => !state.replies.pending().executes_waiting(),
            Until::WrappedEnded => state.wrapped_end.get() != 0,
        }
    }
}

/// How the message at `pos` goes on after a [`Step::Hold`] or [`Step::Wait`].
enum Waiting {
    /// Before the message: the commit guard's wait for quiet.
    Settle,
    /// A Query held for approval.
    Held {
        needs: Arc<NeedsApproval>,
        frame_len: usize,
    },
    /// A Bind held for approval.
    Bind { frame_len: usize },
    /// An Execute gated with its pipeline segment.
    Execute {
        frame_len: usize,
        approved: Option<Decided>,
    },
    /// A Sync gated with its pipeline segment.
    Sync { frame_len: usize },
    /// After a Query the gateway wrapped in a block (already past `pos`): its COMMIT or
    /// ROLLBACK.
    Wrapped,
}

impl ClientSide {
    pub(super) fn new(ctx: &RelayContext<'_>) -> ClientSide {
        let tracking = ctx.policies.is_some();
        ClientSide {
            tracking,
            extended: tracking || ctx.outcomes.is_some(),
            prepared: Prepared::default(),
            copy_window: false,
            pass: 0,
            segment: Segment::default(),
            barrier: false,
            settled: false,
            follow: Follow::now(ctx),
            new_read: true,
            pos: 0,
            short: 0,
            out: BytesMut::with_capacity(CLIENT_READ_BUF),
            waiting: None,
            answer: None,
        }
    }

    /// The decision on the last [`Step::Hold`] (never [`Gate::ClientGone`]: the session ends).
    pub(super) fn answer(&mut self, gate: Gate) {
        self.answer = Some(gate);
    }

    /// What goes upstream so far; call [`Self::output_sent`] once written.
    pub(super) fn output(&self) -> &[u8] {
        &self.out
    }

    pub(super) fn output_sent(&mut self) {
        self.out.clear();
    }

    /// Bytes still to come of a message that is looked at whole (a Query, a Parse, ...), once
    /// the last `process` stopped for them: the pump makes room for them (the header alone must
    /// not pin a large buffer, so the pump bounds what it reserves).
    pub(super) fn missing(&mut self) -> usize {
        std::mem::take(&mut self.short)
    }

    /// Part of a frame was passed on and the rest has not arrived.
    pub(super) fn mid_frame(&self) -> bool {
        self.pass > 0
    }

    /// Bytes at the front of the buffer that were looked at: the caller drops them, and the
    /// next read's messages are followed with the policies as they are then.
    pub(super) fn consumed(&mut self) -> usize {
        debug_assert!(self.waiting.is_none(), "consumed while a message waits");
        self.new_read = true;
        std::mem::take(&mut self.pos)
    }

    /// Looks at the messages of `buf` from where it stopped (the same buffer, grown at its end,
    /// until [`Self::consumed`]).
    pub(super) fn process(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
    ) -> Step {
        if std::mem::take(&mut self.new_read) {
            self.follow = Follow::now(ctx);
        }
        if let Some(waiting) = self.waiting.take() {
            let answer = self.answer.take();
            if let Some(step) = self.resume(ctx, state, buf, waiting, answer) {
                return step;
            }
        }
        loop {
            if self.pass > 0 {
                let take = self.pass.min(buf.len() - self.pos);
                self.out.extend_from_slice(&buf[self.pos..self.pos + take]);
                self.pos += take;
                self.pass -= take;
                if self.pass > 0 {
                    return Step::Read;
                }
            }
            let pos = self.pos;
            let Some(&tag) = buf.get(pos) else {
                return Step::Read;
            };
            if !std::mem::take(&mut self.settled) && (self.barrier || state.poisoned.get()) {
                self.barrier = false;
                self.waiting = Some(Waiting::Settle);
                return Step::Wait(Until::Quiet);
            }
            let limit = message_limit(tag, ctx.max_message_size);
            let header = match protocol::frame_header(&buf[pos..], limit) {
                Ok(Some(h)) => h,
                Ok(None) => return Step::Read,
                Err(e) => return Step::End(RelayEnd::ClientProtocol(e)),
            };
            let extended = self.extended;
            let whole = matches!(tag, msg::QUERY | msg::PARSE | msg::FUNCTION_CALL)
                || (extended
                    && matches!(tag, msg::BIND | msg::DESCRIBE | msg::EXECUTE | msg::CLOSE));
            if whole && buf.len() - pos < header.frame_len {
                self.short = header.frame_len - (buf.len() - pos);
                return Step::Read;
            }
            if !matches!(tag, msg::COPY_DATA | msg::FLUSH | msg::SYNC) {
                // A COPY FROM STDIN the server may be in ends at CopyDone, CopyFail or any
                // other message but CopyData, Flush and Sync; a Query or Execute opens the next.
                self.copy_window = false;
                if !extended && state.copy_in.get() {
                    state.client_ended_copy.set(true);
                }
            }
            let frame_len = header.frame_len;
            let step = match tag {
                msg::QUERY | msg::PARSE | msg::FUNCTION_CALL => {
                    self.statement(ctx, state, buf, tag, frame_len)
                }
                msg::TERMINATE => {
                    self.out
                        .extend_from_slice(&buf[pos..pos + 5.min(buf.len() - pos)]);
                    return Step::Terminate;
                }
                msg::BIND | msg::DESCRIBE | msg::EXECUTE | msg::CLOSE if extended => {
                    let needs = match tag {
                        msg::BIND => self.prepared.bind_needs(&buf[pos..pos + frame_len]),
                        _ => None,
                    };
                    match needs {
                        Some(needs) => {
                            let params = bind_parameters(&buf[pos..pos + frame_len]);
                            self.waiting = Some(Waiting::Bind { frame_len });
                            Some(Step::Hold(Hold {
                                needs,
                                params,
                                frame_end: pos + frame_len,
                            }))
                        }
                        None => self.extended_message(state, buf, ctx, tag, frame_len, true, None),
                    }
                }
                msg::SYNC => self.sync(state, ctx, frame_len),
                _ => {
                    if matches!(
                        tag,
                        msg::BIND | msg::EXECUTE | msg::DESCRIBE | msg::CLOSE | msg::FLUSH
                    ) {
                        if tag == msg::EXECUTE {
                            // Only a relay that follows no answers gets here with one.
                            self.copy_window = true;
                            state.copy_syncs.set(0);
                        }
                        state.unsynced.set(true)
                    }
                    self.pass = frame_len;
                    None
                }
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// Goes on with the message that waited; `Some` when it waits again.
    fn resume(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        waiting: Waiting,
        answer: Option<Gate>,
    ) -> Option<Step> {
        let pos = self.pos;
        // Fail closed: a hold with no decision refuses its statement.
        let decided = || match answer {
            Some(Gate::Run(record)) => Ok(record),
            Some(Gate::Refuse(r)) => Err(r),
            Some(Gate::ClientGone) | None => Err(Refusal {
                plugin: "pgward".into(),
                sqlstate: sqlstate::SYSTEM_ERROR.into(),
                message: "the statement held for approval was not decided".into(),
                hint: None,
            }),
        };
        match waiting {
            Waiting::Settle => {
                if Until::Quiet.reached(state) && state.poisoned.replace(false) {
                    put_own_query(state, &mut self.out, ABORT_SQL, false);
                }
                self.settled = true;
                None
            }
            Waiting::Held { needs, frame_len } => {
                // Policies may have changed while it waited.
                self.follow = Follow::now(ctx);
                let start = self.out.len();
                let sent = match decided() {
                    Ok(record) => {
                        self.out.extend_from_slice(&buf[pos..pos + frame_len]);
                        Sent::new(Some(needs.analysis.clone()), &needs.sql, record)
                    }
                    Err(r) => {
                        deny(ctx, state, &r, msg::QUERY, None, &mut self.out);
                        Sent::default()
                    }
                };
                self.statement_sent(ctx, state, buf, msg::QUERY, frame_len, start, sent, None)
            }
            Waiting::Bind { frame_len } => {
                // Policies may have changed while it waited.
                self.follow = Follow::now(ctx);
                match decided() {
                    Ok(record) => {
                        self.extended_message(state, buf, ctx, msg::BIND, frame_len, true, record)
                    }
                    Err(r) => {
                        // The Bind fails on the server in its place; the pipeline is then
                        // skipped up to Sync, exactly as after a failed Bind.
                        let token = state.stand_ins.register(ctx.session_id, &r);
                        let stand_in = Some(token.as_bytes());
                        put_statement(&mut self.out, msg::PARSE, stand_in, &token, &[0, 0]);
                        self.extended_message(state, buf, ctx, msg::BIND, frame_len, false, None)
                    }
                }
            }
            Waiting::Execute {
                frame_len,
                approved,
            } => {
                if self.segment_gated(state) {
                    self.segment.aborted();
                }
                self.extended_sent(ctx, state, buf, frame_len, true, approved);
                None
            }
            Waiting::Sync { frame_len } => {
                self.segment_gated(state);
                self.synced(ctx, state, frame_len);
                None
            }
            Waiting::Wrapped => {
                let end = match state.wrapped_end.replace(0) {
                    protocol::TXN_IN_BLOCK => "COMMIT",
                    _ => "ROLLBACK",
                };
                put_own_query(state, &mut self.out, end, true);
                None
            }
        }
    }

    /// A Query, Parse or FunctionCall at `pos`: judged, and sent or held.
    fn statement(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        tag: u8,
        frame_len: usize,
    ) -> Option<Step> {
        let pos = self.pos;
        let frame = &buf[pos..pos + frame_len];
        let full = tag == msg::PARSE && self.prepared.approvals.len() >= MAX_PREPARED;
        // Where the message's bytes start in `out`.
        let start = self.out.len();
        let (sent, needs) = match inspect_client_message(ctx, state, frame, &mut self.out) {
            Inspected::Sent(sent) => (sent, None),
            Inspected::Prepared(_, _) if full => {
                let refusal = too_many_held_statements();
                deny_prepared(ctx, state, &refusal, frame, &mut self.out);
                (Sent::default(), None)
            }
            Inspected::Prepared(sent, needs) => (sent, Some(needs)),
            Inspected::Held(needs) => {
                // What came before the held statement runs now (the pump sends it first).
                self.waiting = Some(Waiting::Held {
                    needs: needs.clone(),
                    frame_len,
                });
                return Some(Step::Hold(Hold {
                    needs,
                    params: Vec::new(),
                    frame_end: pos + frame_len,
                }));
            }
        };
        self.statement_sent(ctx, state, buf, tag, frame_len, start, sent, needs)
    }

    /// The statement at `pos` went to `out` (from `start`) as `analysis` says: what the
    /// result policies and the commit guard add around it, and what the server will answer.
    #[allow(clippy::too_many_arguments)]
    fn statement_sent(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        tag: u8,
        frame_len: usize,
        mut start: usize,
        mut analysis: Sent,
        needs: Option<Arc<NeedsApproval>>,
    ) -> Option<Step> {
        let pos = self.pos;
        let frame = &buf[pos..pos + frame_len];
        let (tracking, extended, follow) = (self.tracking, self.extended, self.follow);
        let out = &mut self.out;
        if tracking
            && !state.names_changed.get()
            && analysis
                .analysis
                .as_deref()
                .is_some_and(|a| changes_names(a, frame))
        {
            state.names_changed.set(true);
        }
        if tag == msg::QUERY && follow.wants_results && !state.unsynced.get() {
            // A COPY TO STDOUT's columns, as the session itself will read them.
            let mut ours = BytesMut::new();
            let described = match (&analysis.analysis, &analysis.copy_sql) {
                (Some(a), Some(sql)) => describe_copies(a, sql, &mut ours),
                _ => None,
            };
            if let Some(d) = described {
                let tail = out.split_off(start);
                out.extend_from_slice(&ours);
                state.replies.pending().own_describe(d.clone());
                add(&state.own, 1);
                add(&state.pending, 1);
                start = out.len();
                out.unsplit(tail);
                analysis.copy_described = Some(d);
            }
        }
        let mut wrap = false;
        if tag == msg::QUERY && follow.wants_results {
            let quiet = state.quiet() && !state.unsynced.get();
            let plan = analysis
                .analysis
                .as_deref()
                .map_or(QueryPlan::Pass, |a| commit_guard::plan_query(a, quiet));
            match plan {
                QueryPlan::Pass => {}
                QueryPlan::Barrier => self.barrier = true,
                QueryPlan::Wrap => {
                    let tail = out.split_off(start);
                    put_own_query(state, out, "BEGIN", false);
                    out.unsplit(tail);
                    analysis.wrapped = true;
                    wrap = true;
                }
                QueryPlan::Refuse(message) => {
                    out.truncate(start);
                    refused(ctx, analysis.audit.take());
                    deny(ctx, state, &guard_refusal(message), msg::QUERY, None, out);
                    analysis = Sent::default();
                }
            }
        }
        self.copy_window |= tag == msg::QUERY;
        if tag == msg::QUERY && !extended {
            state.copy_syncs.set(0);
        }
        if let Some(o) = ctx.outcomes {
            match tag {
                msg::QUERY => o.query(analysis.audit.clone()),
                msg::PARSE => {}
                _ => o.sync(false),
            }
        }
        match tag {
            msg::PARSE if extended => {
                let mut body = &frame[5..];
                let name = protocol::take_cstr(&mut body).unwrap_or_default();
                self.prepared.parsed(name, needs);
                Prepared::remember(&mut self.prepared.statements, name, analysis);
            }
            msg::QUERY if tracking => state.replies.pending().query(analysis),
            msg::FUNCTION_CALL if tracking => state.replies.pending().sync(false),
            _ => {}
        }
        self.pos += frame_len;
        if tag == msg::PARSE {
            state.unsynced.set(true);
        } else {
            add(&state.pending, 1);
        }
        if wrap {
            // The wrapped Query runs; its end decides COMMIT or ROLLBACK.
            self.waiting = Some(Waiting::Wrapped);
            return Some(Step::Wait(Until::WrappedEnded));
        }
        None
    }

    /// A Bind, Describe, Execute or Close at `pos` of a relay that follows them; `run`:
    /// it goes upstream (a refused Bind's stand-in went in its place). A Bind released by an
    /// approval carries that decision's record (`approved`).
    #[allow(clippy::too_many_arguments)]
    fn extended_message(
        &mut self,
        state: &RelayState,
        buf: &[u8],
        ctx: &RelayContext<'_>,
        tag: u8,
        frame_len: usize,
        run: bool,
        approved: Option<Decided>,
    ) -> Option<Step> {
        self.copy_window |= tag == msg::EXECUTE;
        if run && tag == msg::EXECUTE && self.follow.wants_results {
            let frame = &buf[self.pos..self.pos + frame_len];
            let traits = self.prepared.execute_traits(frame);
            if self.segment.execute(traits, state.quiet()) == SegmentStep::Gate {
                // The server holds its answers back until a Sync or Flush.
                protocol::put_message(&mut self.out, msg::FLUSH, |_| {});
                self.waiting = Some(Waiting::Execute {
                    frame_len,
                    approved,
                });
                return Some(Step::Wait(Until::ExecutesAnswered));
            }
        }
        self.extended_sent(ctx, state, buf, frame_len, run, approved);
        None
    }

    /// The message at `pos` goes upstream (when `run`) with what following it adds.
    #[allow(clippy::too_many_arguments)]
    fn extended_sent(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        frame_len: usize,
        run: bool,
        approved: Option<Decided>,
    ) {
        if run {
            let message = buf[self.pos..].split_at(frame_len);
            let follow = self.follow;
            self.prepared
                .client_message(ctx, state, follow, message, approved, &mut self.out);
        }
        state.unsynced.set(true);
        self.pos += frame_len;
    }

    /// After the commit guard's wait at a segment's gate: when a result of the segment was
    /// refused, a statement of the gateway's that fails goes first, so the server skips the
    /// rest of the pipeline. True when it did.
    fn segment_gated(&mut self, state: &RelayState) -> bool {
        if !Until::ExecutesAnswered.reached(state) || !state.discarding.get() {
            return false;
        }
        let name = Some(&b"pgward_refused"[..]);
        put_statement(&mut self.out, msg::PARSE, name, ABORT_SQL, &[0, 0]);
        true
    }

    /// A Sync at `pos`: the end of a pipeline, gated by the commit guard if it must be.
    fn sync(
        &mut self,
        state: &RelayState,
        ctx: &RelayContext<'_>,
        frame_len: usize,
    ) -> Option<Step> {
        match self.segment.sync() {
            _ if !self.follow.wants_results => {}
            SegmentStep::Gate => {
                // The server holds its answers back until a Sync or Flush.
                protocol::put_message(&mut self.out, msg::FLUSH, |_| {});
                self.waiting = Some(Waiting::Sync { frame_len });
                return Some(Step::Wait(Until::ExecutesAnswered));
            }
            SegmentStep::Barrier => self.barrier = true,
            SegmentStep::Forward => {}
        }
        self.synced(ctx, state, frame_len);
        None
    }

    /// The Sync at `pos` goes upstream: both queues expect its ReadyForQuery.
    fn synced(&mut self, ctx: &RelayContext<'_>, state: &RelayState, frame_len: usize) {
        let copy_window = self.copy_window;
        {
            // Both queues get the Sync under the relay queue's lock (see
            // `drop_ignored_syncs`).
            let mut q = self.tracking.then(|| state.replies.pending());
            if let Some(q) = q.as_mut() {
                q.sync(copy_window);
            }
            if let Some(o) = ctx.outcomes {
                o.sync(copy_window);
            }
        }
        if copy_window && !self.extended {
            let reading_copy = state.copy_in.get() && !state.client_ended_copy.get();
            match reading_copy {
                // The server reads it in copy-in mode.
                true => add(&state.copy_ignored, 1),
                // Ignored if the statement before it starts a COPY.
                false => add(&state.copy_syncs, 1),
            };
        }
        self.prepared.pipeline += 1;
        add(&state.pending, 1);
        state.unsynced.set(false);
        self.pass = frame_len;
    }
}

/// What the client has prepared and bound, so an Execute's rows can be matched to the
/// statement that produced them (kept only when result filtering is on).
#[derive(Default)]
struct Prepared {
    statements: HashMap<Vec<u8>, Sent>,
    /// Named portals; the unnamed one, which most drivers bind for every execution, is kept
    /// apart so it costs no allocation or hashing.
    portals: HashMap<Vec<u8>, Sent>,
    unnamed_portal: Option<Sent>,
    /// Prepared statements whose every Bind needs approval. Never dropped for space (a Parse
    /// that would not fit is refused instead), so a Bind is never let through unjudged.
    approvals: HashMap<Vec<u8>, Arc<NeedsApproval>>,
    /// Syncs the client sent: the number of the current pipeline.
    pipeline: u64,
    /// The last message was the client's Describe of the portal the next Execute runs.
    described_next: bool,
}

impl Prepared {
    /// A Parse of `name` went upstream: it needs approval at every Bind, or (for the unnamed
    /// statement, which every Parse replaces) no longer does. A named statement keeps its
    /// mark until Close: a second Parse of a name in use fails on the server and leaves the
    /// first statement in place.
    fn parsed(&mut self, name: &[u8], needs: Option<Arc<NeedsApproval>>) {
        match needs {
            Some(n) => {
                self.approvals.insert(name.to_vec(), n);
            }
            None if name.is_empty() => {
                self.approvals.remove(name);
            }
            None => {}
        }
    }

    /// What the statement of the portal an Execute `frame` runs may do (commit guard).
    fn execute_traits(&self, frame: &[u8]) -> Traits {
        let mut body = &frame[5..];
        let portal = protocol::take_cstr(&mut body).unwrap_or_default();
        let analysis = self.portal(portal).and_then(|s| s.analysis.as_deref());
        Traits::of_prepared(analysis)
    }

    fn portal(&self, name: &[u8]) -> Option<&Sent> {
        match name {
            [] => self.unnamed_portal.as_ref(),
            _ => self.portals.get(name),
        }
    }

    /// The approval a Bind of the statement in `frame` needs.
    fn bind_needs(&self, frame: &[u8]) -> Option<Arc<NeedsApproval>> {
        if self.approvals.is_empty() {
            return None;
        }
        let mut body = &frame[5..];
        let _portal = protocol::take_cstr(&mut body)?;
        let stmt = protocol::take_cstr(&mut body)?;
        self.approvals.get(stmt).cloned()
    }

    fn remember(map: &mut HashMap<Vec<u8>, Sent>, name: &[u8], a: Sent) {
        if map.len() >= MAX_PREPARED {
            map.clear();
        }
        map.insert(name.to_vec(), a);
    }

    /// Tracks a Bind, Describe, Execute or Close; appends what goes upstream to `out`. A Bind
    /// released by an approval carries that decision's record (`approved`). `message` is the
    /// frame and the bytes after it that have arrived.
    ///
    /// While a result plugin is active every Execute's columns must be known. They come from
    /// the client's own Describe of the portal right before it (libpq sends one), else from
    /// its statement's description (asked once per statement, at its first Bind, unless the
    /// client described the statement itself), else from a Describe the gateway adds.
    fn client_message(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        follow: Follow,
        (frame, next): (&[u8], &[u8]),
        approved: Option<Decided>,
        out: &mut BytesMut,
    ) {
        let wants = follow.tracking && follow.wants_results;
        let described = std::mem::take(&mut self.described_next);
        let mut body = &frame[5..];
        match frame[0] {
            msg::BIND => {
                if let (Some(portal), Some(stmt)) = (
                    protocol::take_cstr(&mut body),
                    protocol::take_cstr(&mut body),
                ) {
                    let mut a = self.statements.get(stmt).cloned().unwrap_or_default();
                    if approved.is_some() {
                        a.audit = approved;
                    }
                    if a.audit.is_some() && ctx.audit.is_some_and(|x| x.config().parameters) {
                        a.params = Some(bind_parameters(frame).into());
                    }
                    if wants {
                        let stale = a
                            .columns
                            .as_ref()
                            .is_none_or(|c| c.stale(follow.generation));
                        // A named statement is bound again and again: describe it once. The
                        // unnamed one is replaced by every Parse, so its Execute is described.
                        if stale
                            && !stmt.is_empty()
                            && !next_names(next, msg::DESCRIBE, target::PORTAL, portal)
                        {
                            let columns = StatementColumns::new(self.pipeline);
                            put_describe(out, target::STATEMENT, stmt);
                            state.replies.pending().describe(Describe::Statement {
                                columns: columns.clone(),
                                relay: false,
                            });
                            if let Some(s) = self.statements.get_mut(stmt) {
                                s.columns = Some(columns.clone());
                            }
                            a.columns = Some(columns);
                        }
                        if a.columns.is_some() {
                            a.formats = read_bind(frame).map(|b| b.result_formats.into());
                        }
                    }
                    match portal {
                        [] => self.unnamed_portal = Some(a),
                        _ => Self::remember(&mut self.portals, portal, a),
                    }
                }
            }
            msg::DESCRIBE if follow.tracking => {
                let kind = body.first().copied();
                body = body.get(1..).unwrap_or_default();
                let name = protocol::take_cstr(&mut body).unwrap_or_default();
                let describe = match kind {
                    Some(target::PORTAL) if wants && next_names(next, msg::EXECUTE, 0, name) => {
                        self.described_next = true;
                        Describe::Portal { relay: true }
                    }
                    Some(target::STATEMENT) if wants => match self.statements.get_mut(name) {
                        Some(s)
                            if s.columns
                                .as_ref()
                                .is_none_or(|c| c.stale(follow.generation)) =>
                        {
                            let columns = StatementColumns::new(self.pipeline);
                            s.columns = Some(columns.clone());
                            Describe::Statement {
                                columns,
                                relay: true,
                            }
                        }
                        _ => Describe::Client,
                    },
                    _ => Describe::Client,
                };
                state.replies.pending().describe(describe);
            }
            msg::EXECUTE => {
                let portal = protocol::take_cstr(&mut body).unwrap_or_default();
                let analysis = self.portal(portal).cloned().unwrap_or_default();
                if let Some(o) = ctx.outcomes {
                    let params = analysis.params.clone();
                    o.execute(analysis.audit.clone().map(|d| (d, params)));
                }
                if !follow.tracking {
                    out.extend_from_slice(frame);
                    return;
                }
                let mut q = state.replies.pending();
                let columns = if !wants {
                    Columns::Unknown
                } else if described {
                    Columns::Described
                } else if analysis.formats.is_some()
                    && analysis
                        .columns
                        .as_ref()
                        .is_some_and(|c| c.usable(self.pipeline, follow.generation))
                {
                    Columns::Statement
                } else {
                    // Ask for the portal's columns right before its rows: the filter needs
                    // them, and a client need not have asked (Bind + Execute alone is valid).
                    put_describe(out, target::PORTAL, portal);
                    q.describe(Describe::Portal { relay: false });
                    Columns::Described
                };
                q.execute(analysis, columns);
            }
            msg::CLOSE => {
                let kind = body.first().copied();
                body = body.get(1..).unwrap_or_default();
                if let Some(name) = protocol::take_cstr(&mut body) {
                    match kind {
                        Some(target::STATEMENT) => {
                            self.approvals.remove(name);
                            self.statements.remove(name)
                        }
                        _ if name.is_empty() => self.unnamed_portal.take(),
                        _ => self.portals.remove(name),
                    };
                }
            }
            _ => {}
        }
        out.extend_from_slice(frame);
    }
}

/// What the client side follows for the messages of one read (fixed for that read).
#[derive(Debug, Clone, Copy)]
struct Follow {
    /// Result filtering is configured: the server's answers are matched to the requests.
    tracking: bool,
    /// A result plugin is active: every Execute's columns must be known.
    wants_results: bool,
    /// The catalog generation that statement descriptions are read under.
    generation: u64,
}

impl Follow {
    fn now(ctx: &RelayContext<'_>) -> Follow {
        Follow {
            tracking: ctx.policies.is_some(),
            wants_results: ctx.wants_results(),
            generation: catalog_generation(ctx),
        }
    }
}

/// `rest` starts with a complete `tag` message (with `kind` as its first byte unless 0) for
/// the portal or statement `name`: a Describe or an Execute that follows the current frame.
fn next_names(rest: &[u8], tag: u8, kind: u8, name: &[u8]) -> bool {
    let Ok(Some(h)) = protocol::frame_header(rest, MAX_PROTOCOL_MESSAGE) else {
        return false;
    };
    let Some(frame) = rest.get(..h.frame_len).filter(|_| h.tag == tag) else {
        return false;
    };
    let mut body = &frame[5..];
    if kind != 0 {
        match body.split_first() {
            Some((&k, b)) if k == kind => body = b,
            _ => return false,
        }
    }
    protocol::take_cstr(&mut body) == Some(name)
}

#[cfg(test)]
mod tests {
    use super::super::scripted::{self as script, execute, m, query, sync};
    use super::replies::Expect;
    use super::*;

    fn bind(portal: &str, stmt: &str, formats: &[i16], params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        for s in [portal, stmt] {
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        }
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        m(msg::BIND, &b)
    }

    #[test]
    fn bind_parameters_are_text_hex_for_binary_and_none_for_null() {
        let f = bind("", "s1", &[], &[Some(b"42"), None, Some(b"caf\xc3\xa9")]);
        assert_eq!(
            bind_parameters(&f),
            vec![Some("42".into()), None, Some("café".into())]
        );
        let f = bind("p", "s1", &[1], &[Some(&[0, 0, 0, 2]), Some(&[1])]);
        assert_eq!(
            bind_parameters(&f),
            vec![Some("\\x00000002".into()), Some("\\x01".into())]
        );
        let f = bind("p", "s1", &[0, 1], &[Some(b"7"), Some(&[0xff])]);
        assert_eq!(
            bind_parameters(&f),
            vec![Some("7".into()), Some("\\xff".into())]
        );
        // A truncated Bind yields what could be read, never a panic.
        let f = bind("p", "s1", &[], &[Some(b"1234")]);
        for cut in 5..f.len() {
            let _ = bind_parameters(&f[..cut]);
        }
    }

    fn needs(sql: &str) -> Arc<NeedsApproval> {
        Arc::new(NeedsApproval {
            statement: 1,
            ask: ApprovalAsk {
                plugin: "p".into(),
                reason: "r".into(),
                approver_group: "g".into(),
                rule: "rule".into(),
                defer: false,
                quorum: 1,
            },
            sql: sql.into(),
            analysis: crate::sql::SqlAnalyzer::new(10).analyze(sql, LexOptions::default()),
            extended: true,
        })
    }

    #[test]
    fn a_prepared_statement_keeps_its_approval_mark_until_closed() {
        let mut p = Prepared::default();
        p.parsed(b"s1", Some(needs("UPDATE t SET x = $1")));
        assert!(p.bind_needs(&bind("", "s1", &[], &[])).is_some());
        assert!(p.bind_needs(&bind("", "s2", &[], &[])).is_none());
        // A second Parse of a name in use fails on the server: the mark stays.
        p.parsed(b"s1", None);
        assert!(p.bind_needs(&bind("", "s1", &[], &[])).is_some());
        // The unnamed statement is replaced by every Parse.
        p.parsed(b"", Some(needs("DELETE FROM t")));
        assert!(p.bind_needs(&bind("", "", &[], &[])).is_some());
        p.parsed(b"", None);
        assert!(p.bind_needs(&bind("", "", &[], &[])).is_none());
        // Close (statement) removes the mark.
        let mut out = BytesMut::new();
        let mut close = vec![b'S'];
        close.extend_from_slice(b"s1\0");
        let close = m(msg::CLOSE, &close);
        let state = RelayState::new(protocol::TXN_IDLE);
        let fixture = Fixture::new();
        let follow = Follow {
            tracking: false,
            wants_results: false,
            generation: 0,
        };
        p.client_message(
            &fixture.ctx(),
            &state,
            follow,
            (&close, &[]),
            None,
            &mut out,
        );
        assert!(p.bind_needs(&bind("", "s1", &[], &[])).is_none());
        assert_eq!(&out[..], &close[..], "the Close itself goes upstream");
    }

    /// What a [`RelayContext`] borrows.
    struct Fixture {
        identity: Identity,
        session: wit::Session,
        analyzer: SqlAnalyzer,
    }

    impl Fixture {
        fn new() -> Fixture {
            let identity = Identity {
                user: "u".into(),
                ..Default::default()
            };
            let session = crate::plugins::convert_session(1, &identity, "db", "127.0.0.1:1", "");
            Fixture {
                identity,
                session,
                analyzer: SqlAnalyzer::new(10),
            }
        }

        fn ctx(&self) -> RelayContext<'_> {
            RelayContext::bare(&self.analyzer, &self.identity, &self.session)
        }
    }

    fn describe(kind: u8, name: &str) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        m(msg::DESCRIBE, &b)
    }

    /// The client side of a session with a result plugin active: `script` goes through
    /// `client_message` as one read, and what went upstream comes back as (tag, first byte).
    struct Client {
        prepared: Prepared,
        state: RelayState,
        fixture: Fixture,
        follow: Follow,
    }

    impl Client {
        fn new() -> Client {
            let mut prepared = Prepared::default();
            prepared.statements.insert(b"s1".to_vec(), Sent::default());
            prepared.statements.insert(b"s2".to_vec(), Sent::default());
            Client {
                prepared,
                state: RelayState::new(protocol::TXN_IDLE),
                fixture: Fixture::new(),
                follow: Follow {
                    tracking: true,
                    wants_results: true,
                    generation: 1,
                },
            }
        }

        fn send(&mut self, script: &[Vec<u8>]) -> Vec<(u8, u8)> {
            let bytes = script.concat();
            let mut out = BytesMut::new();
            let mut at = 0;
            let ctx = self.fixture.ctx();
            for f in script {
                let message = bytes[at..].split_at(f.len());
                self.prepared.client_message(
                    &ctx,
                    &self.state,
                    self.follow,
                    message,
                    None,
                    &mut out,
                );
                at += f.len();
            }
            let mut sent = Vec::new();
            let mut rest = &out[..];
            while let Ok(Some(h)) = protocol::frame_header(rest, MAX_PROTOCOL_MESSAGE) {
                let kind = match h.tag {
                    b'D' => rest.get(5).copied().unwrap_or(0),
                    _ => 0,
                };
                sent.push((h.tag, kind));
                rest = &rest[h.frame_len..];
            }
            sent
        }

        /// The server's answers to the Describes sent so far: the statements' columns.
        fn answer(&mut self, skip: bool) -> Vec<Columns> {
            let mut executes = Vec::new();
            for e in self.state.replies.pending().take_all() {
                match e {
                    Expect::Describe(d) if skip => d.skipped(),
                    Expect::Describe(Describe::Statement { columns, .. }) => {
                        let _ = columns
                            .described
                            .set(Described::Rows(Box::new([0, 0]), self.follow.generation));
                    }
                    Expect::Execute(_, c) => executes.push(c),
                    _ => {}
                }
            }
            executes
        }

        fn sync(&mut self) {
            self.prepared.pipeline += 1;
        }
    }

    const DESCRIBE_S: (u8, u8) = (b'D', b'S');
    const DESCRIBE_P: (u8, u8) = (b'D', b'P');
    const BIND: (u8, u8) = (b'B', 0);
    const EXECUTE: (u8, u8) = (b'E', 0);

    #[test]
    fn a_named_statement_is_described_once_for_all_its_executions() {
        let mut c = Client::new();
        let run = [bind("", "s1", &[], &[]), execute("")];
        // Its first Bind asks for its columns; the Execute after it takes them from there.
        assert_eq!(c.send(&run), [DESCRIBE_S, BIND, EXECUTE]);
        assert_eq!(c.answer(false), [Columns::Statement]);
        c.sync();
        for _ in 0..3 {
            assert_eq!(c.send(&run), [BIND, EXECUTE]);
            assert_eq!(c.answer(false), [Columns::Statement]);
            c.sync();
        }
        // DDL through the gateway may have changed what its columns are: described again.
        c.follow.generation += 1;
        assert_eq!(c.send(&run), [DESCRIBE_S, BIND, EXECUTE]);
        assert_eq!(c.answer(false), [Columns::Statement]);
        c.sync();
        assert_eq!(c.send(&run), [BIND, EXECUTE]);
    }

    #[test]
    fn the_clients_own_describes_are_used_and_none_added() {
        let mut c = Client::new();
        // libpq: Bind, Describe of the portal, Execute.
        let libpq = [bind("", "s1", &[], &[]), describe(b'P', ""), execute("")];
        for _ in 0..3 {
            assert_eq!(c.send(&libpq), [BIND, DESCRIBE_P, EXECUTE]);
            assert_eq!(c.answer(false), [Columns::Described]);
            c.sync();
        }
        // tokio-postgres: Describe of the statement when preparing, then Bind + Execute.
        assert_eq!(c.send(&[describe(b'S', "s2")]), [DESCRIBE_S]);
        c.answer(false);
        c.sync();
        assert_eq!(
            c.send(&[bind("", "s2", &[], &[]), execute("")]),
            [BIND, EXECUTE]
        );
        assert_eq!(c.answer(false), [Columns::Statement]);
        // A portal no Describe precedes, of a statement the gateway does not know: described
        // right before its Execute.
        c.sync();
        assert_eq!(
            c.send(&[bind("p", "", &[], &[]), execute("p")]),
            [BIND, DESCRIBE_P, EXECUTE]
        );
        assert_eq!(c.answer(false), [Columns::Described]);
        // A Describe of another portal does not describe this Execute.
        c.sync();
        assert_eq!(
            c.send(&[bind("p", "", &[], &[]), describe(b'P', "q"), execute("p")]),
            [BIND, DESCRIBE_P, DESCRIBE_P, EXECUTE]
        );
        assert_eq!(c.answer(false), [Columns::Described]);
    }

    #[test]
    fn a_statement_description_not_known_yet_is_not_relied_on() {
        let mut c = Client::new();
        let run = [bind("", "s1", &[], &[]), execute("")];
        assert_eq!(c.send(&run), [DESCRIBE_S, BIND, EXECUTE]);
        // The next pipeline is sent before the server answered the first: its Execute is
        // described on its own (had the first been skipped, this one would not be).
        c.sync();
        assert_eq!(c.send(&run), [BIND, DESCRIBE_P, EXECUTE]);
        // The server skipped the first pipeline (an error before it): asked again.
        c.answer(true);
        c.sync();
        assert_eq!(c.send(&run), [DESCRIBE_S, BIND, EXECUTE]);
        assert_eq!(c.answer(false), [Columns::Statement]);
        // No result plugin: nothing is described, and the rows are known to need nothing.
        c.follow.wants_results = false;
        c.sync();
        assert_eq!(c.send(&run), [BIND, EXECUTE]);
        assert_eq!(c.answer(false), [Columns::Unknown]);
    }

    // The processor driven by byte slices, as the pump would drive it.

    /// What happened on the way, besides the bytes.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Hold { frame_end: usize },
        Wait(Until),
        Terminate,
    }

    /// What goes upstream for the client's bytes arriving in `chunks`, as the pump handles
    /// them, and the holds and waits on the way; each hold is decided by `decide`. `Err` when
    /// the processor ended the session.
    fn upstream(
        ctx: &RelayContext<'_>,
        state: &RelayState,
        side: &mut ClientSide,
        chunks: &[&[u8]],
        decide: impl Fn(&Hold) -> Gate,
    ) -> Result<(Vec<u8>, Vec<Seen>), String> {
        let mut buf = BytesMut::new();
        let (mut sent, mut seen) = (Vec::new(), Vec::new());
        'reads: for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match side.process(ctx, state, &buf) {
                    Step::Read => break,
                    Step::End(end) => return Err(end.to_string()),
                    Step::Terminate => {
                        seen.push(Seen::Terminate);
                        sent.extend_from_slice(side.output());
                        break 'reads;
                    }
                    Step::Wait(until) => seen.push(Seen::Wait(until)),
                    Step::Hold(hold) => {
                        seen.push(Seen::Hold {
                            frame_end: hold.frame_end,
                        });
                        let gate = decide(&hold);
                        side.answer(gate);
                    }
                }
                // What came before a hold or wait goes upstream first.
                sent.extend_from_slice(side.output());
                side.output_sent();
            }
            sent.extend_from_slice(side.output());
            side.output_sent();
            let consumed = side.consumed();
            buf.advance(consumed);
        }
        Ok((sent, seen))
    }

    fn bare(check: impl FnOnce(&RelayContext<'_>)) {
        let identity = crate::auth::Identity {
            user: "app".into(),
            ..Default::default()
        };
        let analyzer = SqlAnalyzer::new(10);
        let session = crate::plugins::convert_session(1, &identity, "db", "127.0.0.1:1", "");
        check(&RelayContext::bare(&analyzer, &identity, &session))
    }

    fn no_hold(h: &Hold) -> Gate {
        panic!("nothing is held here: {:?}", h.needs.sql)
    }

    #[test]
    fn a_bare_client_stream_goes_upstream_unchanged_wherever_it_is_cut() {
        bare(|ctx| {
            let stream = [
                query("SELECT 1; SELECT 2"),
                script::parse("s", "SELECT $1"),
                script::bind("", "s"),
                execute(""),
                sync(),
                m(msg::COPY_DATA, b"1\tone\n"),
            ]
            .concat();
            let mut cuts: Vec<Vec<&[u8]>> = (0..=stream.len())
                .map(|cut| {
                    let (a, b) = stream.split_at(cut);
                    vec![a, b]
                })
                .collect();
            cuts.push(stream.chunks(1).collect());
            for chunks in cuts {
                let state = RelayState::new(protocol::TXN_IDLE);
                let mut side = ClientSide::new(ctx);
                let (sent, seen) = upstream(ctx, &state, &mut side, &chunks, no_hold).unwrap();
                assert_eq!(sent, stream);
                assert_eq!(seen, []);
                // The Query and the Sync each wait for a ReadyForQuery.
                assert_eq!(state.pending.get(), 2);
                assert!(!state.unsynced.get());
                assert_eq!(state.statements(), 2, "the Query and the Parse were judged");
            }
            // Half a frame passed on: the session is mid-frame until the rest comes.
            let state = RelayState::new(protocol::TXN_IDLE);
            let mut side = ClientSide::new(ctx);
            let copy = m(msg::COPY_DATA, b"1\tone\n");
            let (sent, _) = upstream(ctx, &state, &mut side, &[&copy[..7]], no_hold).unwrap();
            assert_eq!(sent, &copy[..7]);
            assert!(side.mid_frame());
            let (sent, _) = upstream(ctx, &state, &mut side, &[&copy[7..]], no_hold).unwrap();
            assert_eq!(sent, &copy[7..]);
            assert!(!side.mid_frame());
        });
    }

    #[test]
    fn terminate_is_passed_and_ends_and_an_oversized_query_is_refused_before_its_body() {
        bare(|ctx| {
            let state = RelayState::new(protocol::TXN_IDLE);
            let mut side = ClientSide::new(ctx);
            let stream = [query("SELECT 1"), m(msg::TERMINATE, &[])].concat();
            let (sent, seen) = upstream(ctx, &state, &mut side, &[&stream], no_hold).unwrap();
            assert_eq!(sent, stream);
            assert_eq!(seen, [Seen::Terminate]);
            // Part of a Query: nothing goes upstream, and the pump is told what is missing.
            let mut side = ClientSide::new(ctx);
            let whole = query("SELECT 'a long statement'");
            let (sent, _) = upstream(ctx, &state, &mut side, &[&whole[..9]], no_hold).unwrap();
            assert!(sent.is_empty());
            assert_eq!(side.missing(), whole.len() - 9);
            assert_eq!(side.missing(), 0, "said once");
            // A Query header announcing more than `max_message_size` (1 MiB here).
            let mut side = ClientSide::new(ctx);
            let header = [msg::QUERY, 0, 0x20, 0, 0];
            let end = upstream(ctx, &state, &mut side, &[&header], no_hold).unwrap_err();
            assert!(end.starts_with("client protocol violation"), "{end}");
        });
    }

    #[test]
    fn a_block_a_refusal_failed_is_failed_upstream_before_the_next_message() {
        bare(|ctx| {
            let next = query("INSERT INTO t VALUES (1)");
            let mut abort = BytesMut::new();
            put_statement(&mut abort, msg::QUERY, None, ABORT_SQL, &[]);
            // Everything sent is answered: the gateway's failing statement goes first.
            let state = RelayState::new(protocol::TXN_IN_BLOCK);
            state.poisoned.set(true);
            let mut side = ClientSide::new(ctx);
            let (sent, seen) = upstream(ctx, &state, &mut side, &[&next], no_hold).unwrap();
            assert_eq!(seen, [Seen::Wait(Until::Quiet)]);
            assert_eq!(sent, [abort.to_vec(), next.clone()].concat());
            assert!(!state.poisoned.get());
            assert_eq!(state.own.get(), 1);
            // The wait ended otherwise (the server waits for COPY data): nothing is added yet.
            let state = RelayState::new(protocol::TXN_IN_BLOCK);
            state.poisoned.set(true);
            state.pending.set(1);
            let mut side = ClientSide::new(ctx);
            let (sent, seen) = upstream(ctx, &state, &mut side, &[&next], no_hold).unwrap();
            assert_eq!(seen, [Seen::Wait(Until::Quiet)]);
            assert_eq!(sent, next);
            assert!(state.poisoned.get());
        });
    }

    #[test]
    fn a_bind_held_for_approval_goes_upstream_once_approved_or_as_a_stand_in() {
        bare(|ctx| {
            let held = script::bind("", "del");
            let rest = [execute(""), sync()].concat();
            let stream = [held.clone(), rest.clone()].concat();
            let refusal = Refusal {
                plugin: "approval-rules".into(),
                sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                message: "rejected by the approver".into(),
                hint: None,
            };
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                for approve in [true, false] {
                    let state = RelayState::new(protocol::TXN_IDLE);
                    let mut side = ClientSide::new(ctx);
                    // Followed as with the audit trail on: every Bind is looked at.
                    side.extended = true;
                    side.prepared.parsed(b"del", Some(needs("DELETE FROM t")));
                    let decide = |h: &Hold| {
                        assert_eq!(h.needs.sql, "DELETE FROM t");
                        assert!(h.params.is_empty());
                        match approve {
                            true => Gate::Run(None),
                            false => Gate::Refuse(refusal.clone()),
                        }
                    };
                    let (sent, seen) = upstream(ctx, &state, &mut side, &[a, b], decide).unwrap();
                    assert_eq!(
                        seen,
                        [Seen::Hold {
                            frame_end: held.len()
                        }],
                        "cut at {cut}"
                    );
                    if approve {
                        assert_eq!(sent, stream, "cut at {cut}");
                        continue;
                    }
                    // A Parse the server fails in the Bind's place; its error becomes the
                    // refusal, and the server skips the rest of the pipeline.
                    let token = format!("pgward_denied_{}_1", ctx.session_id);
                    let mut stand_in = BytesMut::new();
                    put_statement(
                        &mut stand_in,
                        msg::PARSE,
                        Some(token.as_bytes()),
                        &token,
                        &[0, 0],
                    );
                    assert_eq!(
                        sent,
                        [stand_in.to_vec(), rest.clone()].concat(),
                        "cut at {cut}"
                    );
                    let error = script::error(
                        sqlstate::SYNTAX_ERROR,
                        &format!("syntax error at or near \"{token}\""),
                    );
                    let replaced = state.stand_ins.refusal_for(&error).expect("registered");
                    let fields = protocol::parse_error_body(&replaced[5..]);
                    assert_eq!(fields.message, "rejected by the approver");
                }
            }
        });
    }
}
