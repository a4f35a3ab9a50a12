//! The server's side of the relay as a processor that does no I/O: it is given the bytes read
//! from the server and works out what the client gets for them — the same bytes (the fast path
//! copies nothing), filtered rows, a refusal in an error's place, a reduced notice — while it
//! keeps the session's state (the queue of expected replies, transaction status, COPY mode).
//!
//! The pump in [`super::server_to_client`] owns the socket halves: it reads into a buffer,
//! calls [`ServerSide::process`] until the processor has looked at every complete frame, writes
//! [`ServerSide::output`] and drops the bytes [`ServerSide::consumed`]. When a result starts
//! (a RowDescription, an Execute's first row, a CopyOutResponse), whether plugins subscribe to
//! its columns may need the catalog: the processor then stops with [`Step::Subscribe`], the
//! pump finds the answer and hands it back with [`ServerSide::answer`], and the next `process`
//! call goes on from the same frame.

use super::*;
use std::ops::Range;

/// The server → client processor of one session.
pub(super) struct ServerSide {
    results: Results,
    /// Rows and bytes of the statement being answered, for its audit record.
    tally: Tally,
    /// Policies are on: the relay follows the server's answers (see [`Replies`]).
    tracking: bool,
    server_messages: ServerMessages,
    /// Bytes of the current frame still to pass without looking at them.
    pass: usize,
    /// Cursors into the buffer being processed: looked at up to `pos`; bytes before `written`
    /// were already copied to `out` or are not for the client.
    pos: usize,
    written: usize,
    /// The plugin chain's generation, looked at once per buffer (see `Results::unfiltered`).
    chain_now: Option<u64>,
    /// What replaces or adds to the server's bytes; empty on the fast path.
    out: BytesMut,
    /// The frame at `pos` waits for the answer to a [`Step::Subscribe`].
    waiting: Option<Waiting>,
    /// That answer, applied by the next [`ServerSide::process`].
    answer: Option<Answer>,
    /// The frame at `pos` was just resumed after a subscription: it is not judged again.
    judged: bool,
}

/// What [`ServerSide::process`] stopped for.
#[derive(Debug)]
pub(super) enum Step {
    /// Every complete frame was looked at: write [`ServerSide::output`], then read more.
    Read,
    /// A result starts: the pump asks whether plugins subscribe to it and calls
    /// [`ServerSide::answer`] before processing again.
    Subscribe(Subscribe),
    /// The server broke the protocol.
    End(RelayEnd),
}

/// A result whose subscription the pump must find (it may read the catalog).
#[derive(Debug)]
pub(super) enum Subscribe {
    /// Rows described by a RowDescription message: `description`, or the frame at `frame` of
    /// the buffer being processed.
    Rows {
        description: Description,
        analysis: Option<Arc<Analysis>>,
        statement: usize,
    },
    /// A COPY TO STDOUT starting with the CopyOutResponse at `frame`.
    Copy {
        frame: Range<usize>,
        sent: Option<Sent>,
        statement: usize,
    },
}

/// Where the RowDescription of a result to subscribe is.
#[derive(Debug)]
pub(super) enum Description {
    /// Made by the gateway (from a prepared statement's description and a portal's formats).
    Made(Vec<u8>),
    /// The whole message at this range of the buffer being processed.
    At(Range<usize>),
}

impl Description {
    pub(super) fn bytes<'b>(&'b self, buf: &'b [u8]) -> &'b [u8] {
        match self {
            Description::Made(d) => d,
            Description::At(r) => &buf[r.clone()],
        }
    }
}

/// The pump's answer to a [`Subscribe`].
pub(super) enum Answer {
    Rows(Result<Option<Filter>, Refusal>),
    Copy(Result<Option<CopyFilter>, Refusal>),
}

/// How the frame at `pos` goes on once its subscription is known.
enum Waiting {
    /// A result streaming unfiltered judged again under a changed chain `chain`.
    Rejudged {
        judged: Unfiltered,
        chain: u64,
        frame_len: usize,
    },
    /// The first row of an Execute not described by a RowDescription: the description made
    /// for it, and where to remember that no plugin subscribes.
    Executed {
        description: Vec<u8>,
        analysis: Option<Arc<Analysis>>,
        columns: Arc<StatementColumns>,
        key: ResultKey,
        frame_len: usize,
    },
    /// A RowDescription of a Query's or Execute's result.
    Described {
        analysis: Option<Arc<Analysis>>,
        statement: usize,
        relay: bool,
        frame_len: usize,
    },
    /// A CopyOutResponse.
    Copy { relay: bool, frame_len: usize },
}

impl ServerSide {
    pub(super) fn new(ctx: &RelayContext<'_>) -> ServerSide {
        ServerSide {
            results: Results::default(),
            tally: Tally::default(),
            tracking: ctx.policies.is_some(),
            server_messages: ctx
                .policies
                .as_ref()
                .map_or(ServerMessages::Pass, |r| r.server_messages),
            pass: 0,
            pos: 0,
            written: 0,
            chain_now: None,
            out: BytesMut::new(),
            waiting: None,
            answer: None,
            judged: false,
        }
    }

    /// The answer to the last [`Step::Subscribe`].
    pub(super) fn answer(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }

    /// Rows of a filtered result are held in a batch, not yet sent.
    pub(super) fn holds_rows(&self) -> bool {
        self.results.holds_rows()
    }

    /// The last byte consumed ends a frame: the gateway may add a message of its own.
    pub(super) fn at_boundary(&self) -> bool {
        self.pass == 0
    }

    /// Runs the rows held in a batch through the plugins into the output (the server paused,
    /// so a small result is not held back for a full batch).
    pub(super) fn flush_held(&mut self, ctx: &RelayContext<'_>, state: &RelayState) {
        if self.results.holds_rows() {
            let host = host(ctx);
            self.results
                .flush_held(state, host, ctx.plugin_session, &mut self.out);
        }
    }

    /// What the client gets for the bytes of `buf` looked at so far, if anything: the
    /// server's own bytes, or the output built in their place. Call [`Self::output_sent`]
    /// once written.
    pub(super) fn output<'s>(&'s mut self, buf: &'s [u8]) -> Option<&'s [u8]> {
        if self.results.discard && self.pass == 0 {
            self.written = self.written.max(self.pos);
        }
        let tail = &buf[self.written.min(self.pos)..self.pos];
        self.written = self.pos;
        if self.out.is_empty() {
            return (!tail.is_empty()).then_some(tail);
        }
        self.out.extend_from_slice(tail);
        Some(&self.out)
    }

    pub(super) fn output_sent(&mut self) {
        self.out.clear();
    }

    /// Bytes at the front of the buffer that were looked at and need not be kept: the caller
    /// drops them; the cursors start again at the buffer's new front.
    pub(super) fn consumed(&mut self) -> usize {
        debug_assert!(self.waiting.is_none(), "consumed while a frame waits");
        let pos = self.pos;
        self.pos = 0;
        self.written = 0;
        self.chain_now = None;
        pos
    }

    /// Looks at the frames of `buf` from where it stopped (the same buffer, grown at its end,
    /// until [`Self::consumed`]).
    pub(super) fn process(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
    ) -> Step {
        if let Some(waiting) = self.waiting.take() {
            let answer = self.answer.take();
            self.judged = matches!(waiting, Waiting::Rejudged { .. } | Waiting::Executed { .. });
            self.resume(ctx, state, buf, waiting, answer);
        }
        let outcomes = ctx.outcomes;
        loop {
            if self.pass > 0 {
                let take = self.pass.min(buf.len() - self.pos);
                self.pos += take;
                self.pass -= take;
                if self.results.discard {
                    self.written = self.pos;
                }
                if self.pass > 0 {
                    return Step::Read;
                }
            }
            let pos = self.pos;
            let header = match protocol::frame_header(&buf[pos..], MAX_PROTOCOL_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => return Step::Read,
                Err(e) => return Step::End(RelayEnd::ServerProtocol(e)),
            };
            if state.own.get() > 0 {
                let own = match state.replies.pending().own_reply() {
                    Some(OwnReply::Query { forward }) => Some((forward, None)),
                    Some(OwnReply::Describe(d)) => Some((false, Some(d))),
                    None => None,
                };
                if let Some((forward, described)) = own {
                    // The answer to a Query of the gateway's own.
                    if buf.len() - pos < header.frame_len {
                        return Step::Read;
                    }
                    self.own_reply(ctx, state, buf, header.frame_len, forward, described);
                    continue;
                }
            }
            // A frame resumed after its subscription was judged under the chain as it is then.
            let judged = std::mem::take(&mut self.judged);
            if header.tag == msg::DATA_ROW && !self.results.discard && !judged {
                if let Some(step) = self.chain_changed(ctx, state, buf, header.frame_len) {
                    return step;
                }
                if self.pass > 0 {
                    // Refused in the row's place: the row is passed over, uncounted.
                    continue;
                }
            }
            if header.tag == msg::DATA_ROW
                && self.tracking
                && !self.results.checked
                && !self.results.discard
            {
                self.results.checked = true;
                let started = match execute_columns(ctx, state) {
                    ExecuteColumns::Known(columns, analysis) => {
                        self.results.unfiltered = Unfiltered::new(ctx, columns, analysis, 0);
                        Ok(())
                    }
                    ExecuteColumns::Statement(description, analysis, columns, key) => {
                        let subscribe = Subscribe::Rows {
                            description: Description::Made(description.clone()),
                            analysis: analysis.clone(),
                            statement: 0,
                        };
                        self.waiting = Some(Waiting::Executed {
                            description,
                            analysis,
                            columns,
                            key,
                            frame_len: header.frame_len,
                        });
                        return Step::Subscribe(subscribe);
                    }
                    // A result plugin became active after this Execute went upstream without
                    // a Describe: its rows cannot be filtered, so none of them leaves.
                    ExecuteColumns::Missing => Err(undescribed_refusal()),
                };
                if let Err(r) = started {
                    self.refuse_at_frame(buf, state, &r, header.frame_len);
                    continue;
                }
            }
            let whole = match header.tag {
                msg::READY_FOR_QUERY | msg::PARAMETER_STATUS | msg::ERROR_RESPONSE => true,
                msg::COMMAND_COMPLETE | msg::PORTAL_SUSPENDED | msg::EMPTY_QUERY_RESPONSE => {
                    self.tracking || outcomes.is_some()
                }
                msg::ROW_DESCRIPTION
                | msg::NO_DATA
                | msg::COPY_OUT_RESPONSE
                | msg::PARAMETER_DESCRIPTION => self.tracking,
                // Rare, and what keeps the count of pending answers right in every mode.
                msg::COPY_IN_RESPONSE => true,
                msg::NOTICE_RESPONSE => {
                    self.server_messages != ServerMessages::Pass || self.results.holds_rows()
                }
                msg::DATA_ROW => self.results.filter.is_some(),
                msg::COPY_DATA | msg::COPY_DONE => self.results.copy.is_some(),
                // No other message may overtake rows held in a batch (a notice raised
                // between two rows, say).
                _ => self.results.holds_rows(),
            };
            if !whole {
                if outcomes.is_some() {
                    self.tally.bytes += header.frame_len as u64;
                    self.tally.rows += u64::from(header.tag == msg::DATA_ROW);
                }
                self.pass = header.frame_len;
                continue;
            }
            if buf.len() - pos < header.frame_len {
                return Step::Read;
            }
            if let Some(step) = self.frame(ctx, state, buf, header.tag, header.frame_len) {
                return step;
            }
        }
    }

    /// A frame (`frame_len` bytes at `pos`) of the answer to one of the gateway's own
    /// requests: what of it the client gets.
    fn own_reply(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        frame_len: usize,
        forward: bool,
        described: Option<Arc<SessionDescribed>>,
    ) {
        let pos = self.pos;
        let frame = &buf[pos..pos + frame_len];
        let tag = frame[0];
        // Notifications and parameter changes are the client's whoever asked.
        let keep = matches!(tag, msg::NOTIFICATION_RESPONSE | msg::PARAMETER_STATUS)
            || (forward && matches!(tag, msg::ERROR_RESPONSE | msg::READY_FOR_QUERY));
        let mut replacement = None;
        if let Some(d) = &described {
            match tag {
                msg::ROW_DESCRIPTION => d.answered(Some(&frame[5..])),
                msg::NO_DATA => d.answered(None),
                msg::ERROR_RESPONSE => d.failed(),
                _ => {}
            }
        }
        match tag {
            msg::READY_FOR_QUERY => {
                state.replies.pending().own_ready();
                state.own.set(state.own.get().saturating_sub(1));
                observe_server_message(state, frame);
                state.answered.notify_one();
            }
            msg::ERROR_RESPONSE | msg::PARAMETER_STATUS => {
                observe_server_message(state, frame);
                if keep && tag == msg::ERROR_RESPONSE {
                    replacement = reduce_server_message(ctx, self.server_messages, frame);
                }
            }
            _ => {}
        }
        if !keep || replacement.is_some() {
            self.out.extend_from_slice(&buf[self.written..pos]);
            if let Some(r) = replacement {
                self.out.extend_from_slice(&r);
            }
            self.written = pos + frame_len;
        }
        self.pos = pos + frame_len;
    }

    /// A DataRow of a result relayed unfiltered while the plugin chain changed: the result is
    /// judged again, as no row may leave unfiltered once a plugin that would subscribe to it
    /// is active. `None` when nothing changed or the answer is known without asking.
    fn chain_changed(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        frame_len: usize,
    ) -> Option<Step> {
        let u = self.results.unfiltered.as_ref()?;
        // One look at the chain per buffer, taken once a result is unfiltered.
        let now = *self
            .chain_now
            .get_or_insert_with(|| ctx.host().map_or(0, |p| p.chain().generation()));
        if u.chain == now {
            return None;
        }
        let judged = self.results.unfiltered.take().expect("checked above");
        match judged.columns.description(&self.results.description) {
            Some(d) => {
                let subscribe = Subscribe::Rows {
                    description: Description::Made(d),
                    analysis: judged.analysis.clone(),
                    statement: judged.statement,
                };
                self.waiting = Some(Waiting::Rejudged {
                    judged,
                    chain: now,
                    frame_len,
                });
                Some(Step::Subscribe(subscribe))
            }
            None if ctx.wants_results() => {
                self.refuse_at_frame(buf, state, &activated_refusal(), frame_len);
                None
            }
            None => {
                self.results.unfiltered = Some(Unfiltered {
                    chain: now,
                    ..judged
                });
                None
            }
        }
    }

    /// Ends the result with `refusal` in place of the frame at `pos` (`frame_len` bytes), which
    /// is dropped with the rest of what the server sends until ReadyForQuery.
    fn refuse_at_frame(
        &mut self,
        buf: &[u8],
        state: &RelayState,
        refusal: &Refusal,
        frame_len: usize,
    ) {
        self.out.extend_from_slice(&buf[self.written..self.pos]);
        self.written = self.pos;
        self.results.refuse(state, &mut self.out, refusal);
        self.pass = frame_len;
    }

    /// Ends the result with `refusal` in place of the frame at `pos` (`frame_len` bytes, a
    /// RowDescription or CopyOutResponse whose subscription refused it). Returns whether the
    /// frame is relayed: never.
    fn refuse_instead(
        &mut self,
        buf: &[u8],
        state: &RelayState,
        refusal: &Refusal,
        frame_len: usize,
    ) -> bool {
        self.out.extend_from_slice(&buf[self.written..self.pos]);
        self.written = self.pos + frame_len;
        self.results.refuse(state, &mut self.out, refusal);
        false
    }

    /// Goes on with the frame that waited for `answer`.
    fn resume(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        waiting: Waiting,
        answer: Option<Answer>,
    ) {
        let pos = self.pos;
        let (rows, copy) = match answer {
            Some(Answer::Rows(r)) => (Some(r), None),
            Some(Answer::Copy(c)) => (None, Some(c)),
            None => (None, None),
        };
        match waiting {
            Waiting::Rejudged {
                judged,
                chain,
                frame_len,
            } => {
                let again = match rows {
                    Some(Ok(None)) => Ok(Unfiltered { chain, ..judged }),
                    Some(Ok(Some(_))) | None => Err(activated_refusal()),
                    Some(Err(r)) => Err(r),
                };
                match again {
                    Ok(u) => self.results.unfiltered = Some(u),
                    Err(r) => self.refuse_at_frame(buf, state, &r, frame_len),
                }
            }
            Waiting::Executed {
                description,
                analysis,
                columns,
                mut key,
                frame_len,
            } => match rows.unwrap_or_else(|| Err(undescribed_refusal())) {
                Ok(filter) => {
                    if filter.is_none() {
                        // After the answer: asking may have created instances.
                        key.instances = crate::plugins::instance_epoch();
                        columns.set_unfiltered(key);
                        let c = KnownColumns::Described(description);
                        self.results.unfiltered = Unfiltered::new(ctx, c, analysis, 0);
                    }
                    self.results.filter = filter;
                }
                Err(r) => self.refuse_at_frame(buf, state, &r, frame_len),
            },
            Waiting::Described {
                analysis,
                statement,
                mut relay,
                frame_len,
            } => {
                match rows.unwrap_or_else(|| Err(activated_refusal())) {
                    Ok(filter) => {
                        if filter.is_none() {
                            let d = &mut self.results.description;
                            d.clear();
                            d.extend_from_slice(&buf[pos..pos + frame_len]);
                            let c = KnownColumns::Query;
                            self.results.unfiltered = Unfiltered::new(ctx, c, analysis, statement);
                        }
                        self.results.filter = filter;
                    }
                    Err(r) => relay = self.refuse_instead(buf, state, &r, frame_len),
                }
                self.frame_end(buf, relay, None, frame_len);
            }
            Waiting::Copy {
                mut relay,
                frame_len,
            } => {
                match copy.unwrap_or_else(|| Err(activated_refusal())) {
                    Ok(c) => self.results.copy = c,
                    Err(r) => relay = self.refuse_instead(buf, state, &r, frame_len),
                }
                self.frame_end(buf, relay, None, frame_len);
            }
        }
    }

    /// A whole frame at `pos` that the relay looks at; `Some` when it waits for a
    /// subscription.
    fn frame(
        &mut self,
        ctx: &RelayContext<'_>,
        state: &RelayState,
        buf: &[u8],
        tag: u8,
        header_len: usize,
    ) -> Option<Step> {
        let outcomes = ctx.outcomes;
        let tracking = self.tracking;
        let pos = self.pos;
        let frame = &buf[pos..pos + header_len];
        // Bytes this step handles: the frame, or a run of DataRows taken together.
        let mut frame_len = header_len;
        // What to do with the frame: relay it as it is, or replace it with `out`'s new bytes.
        let mut relay = !self.results.discard;
        // Bytes that go out in the frame's place: a stand-in refusal, a reduced message.
        let mut replacement: Option<BytesMut> = None;
        if !matches!(tag, msg::DATA_ROW | msg::COPY_DATA) && self.results.holds_rows() {
            // Held rows go out, filtered, before the message after them (CommandComplete,
            // an error, a notice, ...).
            self.out.extend_from_slice(&buf[self.written..pos]);
            self.written = pos;
            if !self
                .results
                .flush_held(state, host(ctx), ctx.plugin_session, &mut self.out)
            {
                relay = false;
            }
        }
        if outcomes.is_some() {
            self.tally.bytes += header_len as u64;
        }
        if matches!(tag, msg::COMMAND_COMPLETE | msg::ERROR_RESPONSE) && state.copy_in.get() {
            state.copy_in.set(false);
            // The copy ends. The client side may have queued Syncs of the copy after its
            // CopyInResponse was read here; the server ignored those too.
            drop_ignored_syncs(state, tracking, outcomes, false);
        }
        let results = &mut self.results;
        let tally = &mut self.tally;
        match tag {
            msg::ERROR_RESPONSE => {
                results.end(ctx, tally);
                if let Some(o) = outcomes {
                    o.failed(&protocol::parse_error_body(&frame[5..]).code, tally);
                }
                replacement = state.stand_ins.refusal_for(frame).or_else(|| {
                    relay
                        .then(|| reduce_server_message(ctx, self.server_messages, frame))
                        .flatten()
                });
                if tracking {
                    // The server skips the rest of an extended pipeline up to Sync.
                    state.replies.pending().failed();
                }
                observe_server_message(state, frame);
            }
            msg::READY_FOR_QUERY => {
                if !tracking && outcomes.is_none() && state.copy_in.replace(false) {
                    // A copy ended with a CommandComplete, which this relay does not look
                    // at: Syncs of it the client sent after its CopyInResponse was read.
                    drop_ignored_syncs(state, tracking, outcomes, false);
                }
                if tracking {
                    let query = state
                        .replies
                        .pending()
                        .ready(|s| invalidate_after_ddl(ctx, s.analysis.as_deref()));
                    let wrapped = query.is_some_and(|q| q.wrapped);
                    results.statement = 0;
                    results.end(ctx, tally);
                    relay = true;
                    let status = frame.get(5).copied().unwrap_or(protocol::TXN_FAILED);
                    if wrapped {
                        // The gateway ends the block it opened; the client gets the
                        // ReadyForQuery of that COMMIT or ROLLBACK.
                        relay = false;
                        let end = if results.discard {
                            WRAPPED_REFUSED
                        } else {
                            status
                        };
                        state.wrapped_end.set(end);
                    } else if results.discard && status == protocol::TXN_IN_BLOCK {
                        // The client was told a statement failed, which fails a block:
                        // so it is told, and the server's block fails before the client's
                        // next message runs.
                        state.poisoned.set(true);
                        let mut z = BytesMut::with_capacity(6);
                        protocol::put_ready_for_query(&mut z, protocol::TXN_FAILED);
                        replacement = Some(z);
                    }
                    results.discard = false;
                    state.discarding.set(false);
                }
                if let Some(o) = outcomes {
                    o.ready(tally);
                }
                observe_server_message(state, frame);
            }
            msg::COPY_IN_RESPONSE => {
                // COPY FROM STDIN began: the Syncs sent right after its statement are
                // ignored by the server and get no ReadyForQuery.
                drop_ignored_syncs(state, tracking, outcomes, true);
                state.client_ended_copy.set(false);
                state.copy_in.set(true);
            }
            msg::NOTICE_RESPONSE if relay => {
                replacement = reduce_server_message(ctx, self.server_messages, frame)
            }
            msg::PARAMETER_STATUS => observe_server_message(state, frame),
            msg::PARAMETER_DESCRIPTION if state.replies.pending().describing_own_statement() => {
                // Our own Describe of a statement: the client did not ask for it.
                relay = false;
            }
            msg::ROW_DESCRIPTION | msg::NO_DATA => {
                let rows = tag == msg::ROW_DESCRIPTION;
                // A statement's description is stored while the queue is locked: the client
                // side, which checks it under the same lock, never sees the Describe
                // answered and its columns missing.
                let of = state.replies.pending().description(rows, || match rows {
                    true => Described::Rows(frame[5..].into(), catalog_generation(ctx)),
                    false => Described::NoData,
                });
                let front = match of {
                    DescriptionOf::Portal { relay: r, execute } => {
                        // A Describe right before an Execute: its columns.
                        relay &= r;
                        execute.map(|a| (a, 0))
                    }
                    DescriptionOf::Statement { relay: r } => {
                        relay &= r;
                        None
                    }
                    DescriptionOf::Client | DescriptionOf::Unexpected => None,
                    DescriptionOf::Query(a) => Some((a, results.statement)),
                };
                // The columns of the result that follows (not a client's own Describe).
                results.checked |= front.is_some();
                if let (Some((analysis, statement)), true) = (front, rows) {
                    let subscribe = Subscribe::Rows {
                        description: Description::At(pos..pos + header_len),
                        analysis: analysis.clone(),
                        statement,
                    };
                    self.waiting = Some(Waiting::Described {
                        analysis,
                        statement,
                        relay,
                        frame_len,
                    });
                    return Some(Step::Subscribe(subscribe));
                }
            }
            msg::DATA_ROW => {
                // Filtered rows: this one and the complete rows after it go out with
                // their batch.
                self.out.extend_from_slice(&buf[self.written..pos]);
                relay = false;
                if let Some(f) = results.filter.as_mut() {
                    let (took, full) = f.push_rows(&buf[pos..], MAX_PROTOCOL_MESSAGE);
                    frame_len = took.max(frame_len);
                    if outcomes.is_some() {
                        tally.bytes += (frame_len - header_len) as u64;
                    }
                    if full {
                        if let Err(r) = f.flush(host(ctx), ctx.plugin_session, &mut self.out) {
                            results.filter = None;
                            results.refuse(state, &mut self.out, &r);
                        }
                    }
                }
                self.written = pos + frame_len;
            }
            msg::COPY_OUT_RESPONSE => {
                results.checked = true;
                let copying = state.replies.pending().copying(results.statement);
                let (sent, statement) = match copying {
                    Some((s, i)) => (Some(s), i),
                    None => (None, 0),
                };
                self.waiting = Some(Waiting::Copy { relay, frame_len });
                return Some(Step::Subscribe(Subscribe::Copy {
                    frame: pos..pos + header_len,
                    sent,
                    statement,
                }));
            }
            msg::COPY_DATA => {
                self.out.extend_from_slice(&buf[self.written..pos]);
                self.written = pos + header_len;
                relay = false;
                if let Some(c) = results.copy.as_mut() {
                    let pushed = c.push(host(ctx), ctx.plugin_session, frame, &mut self.out);
                    let flushed = match pushed {
                        Ok(true) => c.flush(host(ctx), ctx.plugin_session, &mut self.out),
                        Ok(false) => Ok(()),
                        Err(r) => Err(r),
                    };
                    if let Err(r) = flushed {
                        results.copy = None;
                        results.refuse(state, &mut self.out, &r);
                    }
                }
            }
            msg::COMMAND_COMPLETE | msg::PORTAL_SUSPENDED | msg::EMPTY_QUERY_RESPONSE => {
                results.end(ctx, tally);
                if let Some(o) = outcomes {
                    match tag {
                        msg::COMMAND_COMPLETE => {
                            let mut body = &frame[5..];
                            let tag = protocol::take_cstr(&mut body)
                                .and_then(|t| std::str::from_utf8(t).ok());
                            o.completed(Some(tag.unwrap_or("")), tally);
                        }
                        msg::PORTAL_SUSPENDED => o.suspended(tally),
                        _ => o.completed(None, tally),
                    }
                }
                if tracking {
                    let ended = state.replies.pending().ended(tag == msg::PORTAL_SUSPENDED);
                    match ended {
                        Ended::QueryStatement => results.statement += 1,
                        Ended::Execute(a) if tag == msg::COMMAND_COMPLETE => {
                            invalidate_after_ddl(ctx, a.analysis.as_deref())
                        }
                        Ended::Execute(_) | Ended::Nothing => {}
                    }
                }
            }
            _ => {}
        }
        if tracking {
            if tag == msg::READY_FOR_QUERY {
                state.copy_in.set(false);
            }
            if matches!(
                tag,
                msg::COMMAND_COMPLETE
                    | msg::PORTAL_SUSPENDED
                    | msg::EMPTY_QUERY_RESPONSE
                    | msg::ERROR_RESPONSE
                    | msg::READY_FOR_QUERY
                    | msg::COPY_IN_RESPONSE
            ) {
                state.answered.notify_one();
            }
        }
        self.frame_end_sized(buf, relay, replacement, header_len, frame_len);
        None
    }

    /// The frame at `pos` (`frame_len` bytes) is done: relayed as it is, replaced, or dropped.
    fn frame_end(
        &mut self,
        buf: &[u8],
        relay: bool,
        replacement: Option<BytesMut>,
        frame_len: usize,
    ) {
        self.frame_end_sized(buf, relay, replacement, frame_len, frame_len);
    }

    /// As [`Self::frame_end`] for a step that took `frame_len` bytes starting with a frame of
    /// `header_len` (a run of DataRows taken into a batch).
    fn frame_end_sized(
        &mut self,
        buf: &[u8],
        mut relay: bool,
        replacement: Option<BytesMut>,
        header_len: usize,
        frame_len: usize,
    ) {
        let pos = self.pos;
        if let Some(r) = replacement {
            self.out.extend_from_slice(&buf[self.written..pos]);
            self.out.extend_from_slice(&r);
            self.written = pos + header_len;
            relay = false;
        }
        if !relay {
            // Drop the frame: send what came before it first.
            if self.written < pos {
                self.out.extend_from_slice(&buf[self.written..pos]);
            }
            self.written = self.written.max(pos + frame_len);
        } else if self.results.discard {
            self.written = pos + frame_len;
        }
        self.pos = pos + frame_len;
    }
}

/// Where the server's answers stand, for result filtering.
#[derive(Default)]
struct Results {
    /// Statements of the current Query whose results are complete.
    statement: usize,
    filter: Option<Filter>,
    /// The COPY TO STDOUT being filtered.
    copy: Option<CopyFilter>,
    /// A result was refused: drop what the server sends until ReadyForQuery.
    discard: bool,
    /// The current result's columns were described (RowDescription, CopyOutResponse) or its
    /// rows were found not to need it.
    checked: bool,
    /// The current result goes out unfiltered because no plugin of this chain subscribed to
    /// it: judged again if the chain changes while its rows stream.
    unfiltered: Option<Unfiltered>,
    /// The RowDescription of the current Query result (a buffer kept across results).
    description: Vec<u8>,
}

/// A result relayed unfiltered, and how to judge it again (see [`Results::unfiltered`]).
struct Unfiltered {
    /// The chain generation it was judged under.
    chain: u64,
    columns: KnownColumns,
    analysis: Option<Arc<Analysis>>,
    statement: usize,
}

impl Unfiltered {
    fn new(
        ctx: &RelayContext<'_>,
        columns: KnownColumns,
        analysis: Option<Arc<Analysis>>,
        statement: usize,
    ) -> Option<Unfiltered> {
        let chain = ctx.host()?.chain().generation();
        Some(Unfiltered {
            chain,
            columns,
            analysis,
            statement,
        })
    }
}

impl Results {
    /// Rows of a filtered result are held in a batch, not yet sent.
    fn holds_rows(&self) -> bool {
        self.filter.as_ref().is_some_and(|f| !f.is_empty())
            || self.copy.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// Runs the held rows through the plugins into `out`; false when a plugin refused them
    /// (the result is then ended with the refusal).
    fn flush_held(
        &mut self,
        state: &RelayState,
        host: &PluginHost,
        session: &wit::Session,
        out: &mut BytesMut,
    ) -> bool {
        let flushed = match (self.filter.as_mut(), self.copy.as_mut()) {
            (Some(f), _) => f.flush(host, session, out),
            (_, Some(c)) => c.flush(host, session, out),
            _ => Ok(()),
        };
        match flushed {
            Ok(()) => true,
            Err(r) => {
                self.filter = None;
                self.copy = None;
                self.refuse(state, out, &r);
                false
            }
        }
    }

    /// The current result is over: its rows count for the statement's record, and what the
    /// policies masked in it is recorded and counted.
    fn end(&mut self, ctx: &RelayContext<'_>, tally: &mut Tally) {
        self.checked = false;
        self.unfiltered = None;
        let report = match (self.filter.take(), self.copy.take()) {
            (Some(f), _) => f.into_report(),
            (None, Some(c)) => c.into_report(),
            (None, None) => return,
        };
        tally.rows += report.rows;
        if report.masked.is_empty() {
            return;
        }
        for m in &report.masked {
            METRICS.masked(&m.plugin, m.class.as_deref().unwrap_or(""), m.values);
        }
        if let Some(audit) = ctx.audit {
            let columns: Vec<serde_json::Value> = report
                .masked
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "index": m.index,
                        "column": m.name,
                        "plugin": m.plugin,
                        "class": m.class,
                        "values": m.values,
                    })
                })
                .collect();
            audit.emit(
                "result.masked",
                serde_json::json!({
                    "session": ctx.session_id,
                    "statement": ctx.outcomes.and_then(|o| o.current_statement()),
                    "user": ctx.identity.user,
                    "rows": report.rows,
                    "columns": columns,
                }),
            );
        }
    }

    /// Ends the current result with `refusal` (once) and drops what the server sends until
    /// ReadyForQuery.
    fn refuse(&mut self, state: &RelayState, out: &mut BytesMut, refusal: &Refusal) {
        if !self.discard {
            refuse_result(out, refusal);
        }
        self.discard = true;
        state.discarding.set(true);
    }
}

/// The plugin host; only called where a filter exists, which needs plugins.
fn host<'a>(ctx: &RelayContext<'a>) -> &'a PluginHost {
    ctx.host().expect("result filters exist only with plugins")
}

/// How the rows arriving now (the first of a result not described by a RowDescription) can
/// be filtered.
fn execute_columns(ctx: &RelayContext<'_>, state: &RelayState) -> ExecuteColumns {
    let q = state.replies.pending();
    match q.executing() {
        Some((a, Columns::Statement)) => {
            let Some(host) = ctx.host() else {
                return ExecuteColumns::Known(KnownColumns::Undescribed, None);
            };
            let (Some(columns), Some(formats)) = (&a.columns, &a.formats) else {
                return ExecuteColumns::Missing;
            };
            let catalog = catalog_generation(ctx);
            let Some(Described::Rows(body, generation)) = columns.described.get() else {
                return ExecuteColumns::Missing;
            };
            if *generation != catalog {
                return ExecuteColumns::Missing;
            }
            let key = ResultKey {
                chain: host.chain().generation(),
                instances: crate::plugins::instance_epoch(),
                catalog,
                formats: formats.clone(),
            };
            if columns.unfiltered(&key) {
                // Asked before under the same plugins and catalog: no plugin subscribes.
                let c = KnownColumns::Statement(columns.clone(), formats.clone());
                return ExecuteColumns::Known(c, a.analysis.clone());
            }
            match results::portal_row_description(body, formats) {
                Some(d) => ExecuteColumns::Statement(d, a.analysis.clone(), columns.clone(), key),
                None => ExecuteColumns::Missing,
            }
        }
        Some((_, Columns::Unknown)) if ctx.wants_results() => ExecuteColumns::Missing,
        _ => ExecuteColumns::Known(KnownColumns::Undescribed, None),
    }
}

enum ExecuteColumns {
    /// Described already, or no result plugin is active: the rows go on as they are.
    Known(KnownColumns, Option<Arc<Analysis>>),
    /// A RowDescription made from the statement's description and the portal's formats,
    /// and where to remember that no plugin subscribes to it.
    Statement(
        Vec<u8>,
        Option<Arc<Analysis>>,
        Arc<StatementColumns>,
        ResultKey,
    ),
    /// They cannot be filtered: withhold them.
    Missing,
}

/// Where the columns of rows that go on as they are can be read again, should the plugins
/// change while they stream.
enum KnownColumns {
    /// The RowDescription of the current Query result, kept in [`Results::description`].
    Query,
    /// A RowDescription the gateway made for an Execute.
    Described(Vec<u8>),
    /// The prepared statement's description and the portal's result formats.
    Statement(Arc<StatementColumns>, Arc<[i16]>),
    /// Nowhere: the result was not described (no result plugin was active when it started).
    Undescribed,
}

impl KnownColumns {
    /// The result's RowDescription (`query`: the current Query result's), made only when it
    /// is needed again.
    fn description(&self, query: &[u8]) -> Option<Vec<u8>> {
        match self {
            KnownColumns::Query => Some(query.to_vec()),
            KnownColumns::Described(d) => Some(d.clone()),
            KnownColumns::Statement(columns, formats) => match columns.described.get()? {
                Described::Rows(body, _) => results::portal_row_description(body, formats),
                _ => None,
            },
            KnownColumns::Undescribed => None,
        }
    }
}

/// Rows withheld because the policies changed under a result (SQLSTATE 58000): `why`, and a
/// hint to run the statement again.
fn withheld_refusal(why: &str, hint: &str) -> Refusal {
    Refusal {
        plugin: "pgward".into(),
        sqlstate: sqlstate::SYSTEM_ERROR.into(),
        message: why.into(),
        hint: Some(hint.into()),
    }
}

fn activated_refusal() -> Refusal {
    withheld_refusal(
        "a result plugin became active while this result was being sent; its remaining rows are withheld",
        "run the statement again",
    )
}

fn undescribed_refusal() -> Refusal {
    withheld_refusal(
        "a result policy became active while this statement ran, before its columns were described to it, so its rows were withheld",
        "run the statement again: the policies now active will see its result",
    )
}

fn refuse_result(out: &mut BytesMut, refusal: &Refusal) {
    warn!(plugin = %refusal.plugin, sqlstate = %refusal.sqlstate, "result refused");
    ClientError::refusal(refusal, Refused::Result).encode(out);
}

/// The server's ErrorResponse or NoticeResponse `frame` as the client may see it while a
/// result plugin is loaded (`plugins.server_messages`); `None`: unchanged.
fn reduce_server_message(
    ctx: &RelayContext<'_>,
    mode: ServerMessages,
    frame: &[u8],
) -> Option<BytesMut> {
    if mode == ServerMessages::Pass || !ctx.wants_results() {
        return None;
    }
    server_messages::reduce(frame, mode)
}

/// The request at the front of the queues started COPY FROM STDIN: the Syncs queued right
/// behind it, sent before the client ended the copy, get no ReadyForQuery. Removes them from
/// the relay's and the audit trail's queues and from the count of pending answers.
///
/// Called at the CopyInResponse and again at the copy's end, since the client side may queue
/// such a Sync after the CopyInResponse was read. Only Syncs directly behind the front count:
/// anything else the client sent in between ended the copy on the server.
fn drop_ignored_syncs(
    state: &RelayState,
    tracking: bool,
    outcomes: Option<&Outcomes<'_>>,
    copy_starts: bool,
) {
    let mut ignored = 0;
    if !tracking && outcomes.is_none() {
        // Nothing queued: the client side counted them.
        let counted = match copy_starts {
            true => &state.copy_syncs,
            false => &state.copy_ignored,
        };
        ignored = counted.replace(0);
    }
    // The relay's queue stays locked while the audit trail's is edited, as the client side
    // holds it while it queues a Sync in both: the two see the same Syncs.
    let mut q = tracking.then(|| state.replies.pending());
    if let Some(q) = q.as_mut() {
        ignored = q.copy_in_started();
    }
    if let Some(o) = outcomes {
        ignored = ignored.max(o.copy_in_started());
    }
    drop(q);
    if ignored > 0 {
        state
            .pending
            .set(state.pending.get().saturating_sub(ignored));
    }
}

fn observe_server_message(state: &RelayState, frame: &[u8]) {
    let body = &frame[5..];
    match frame[0] {
        msg::READY_FOR_QUERY => {
            if let Some(&status) = body.first() {
                state.txn_status.set(status);
            }
            state.pending.set(state.pending.get().saturating_sub(1));
            state.may_be_idle();
        }
        msg::PARAMETER_STATUS => {
            let mut b = body;
            if let (Some(k), Some(v)) = (protocol::take_cstr(&mut b), protocol::take_cstr(&mut b)) {
                if let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) {
                    state.observe_parameter(k, v);
                }
            }
        }
        msg::ERROR_RESPONSE => {
            let e = protocol::parse_error_body(body);
            if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                state.server_fatal.set(true);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    //! The processor driven by byte slices, as the pump would drive it, with the server's
    //! bytes split at every point.
    use super::super::scripted::{complete, data_row, error, m, notice, ready, row_description, z};
    use super::*;
    use crate::auth::Identity;

    /// A bare session (no plugins, no audit trail): what `check` sees.
    fn bare(check: impl FnOnce(&RelayContext<'_>, &RelayState)) {
        let identity = Identity {
            user: "app".into(),
            ..Default::default()
        };
        let analyzer = SqlAnalyzer::new(10);
        let session = crate::plugins::convert_session(1, &identity, "db", "127.0.0.1:1", "");
        let ctx = RelayContext::bare(&analyzer, &identity, &session);
        let state = RelayState::new(protocol::TXN_IDLE);
        check(&ctx, &state)
    }

    /// What the client gets for the server's bytes arriving in `chunks`, as the pump handles
    /// them; `Err` when the processor ended the session. A bare session subscribes nothing.
    fn relay(
        ctx: &RelayContext<'_>,
        state: &RelayState,
        chunks: &[&[u8]],
    ) -> Result<Vec<u8>, String> {
        let nothing = |s: &Subscribe, _: &[u8]| panic!("a bare session subscribes nothing: {s:?}");
        relay_with(ctx, state, ServerSide::new(ctx), chunks, nothing)
    }

    /// As [`relay`] with processor `side`, each subscription it asks for answered by `answer`
    /// (given the bytes of the buffer it names).
    fn relay_with(
        ctx: &RelayContext<'_>,
        state: &RelayState,
        mut side: ServerSide,
        chunks: &[&[u8]],
        answer: impl Fn(&Subscribe, &[u8]) -> Answer,
    ) -> Result<Vec<u8>, String> {
        let mut buf = BytesMut::new();
        let mut to_client = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match side.process(ctx, state, &buf) {
                    Step::Read => break,
                    Step::End(end) => return Err(end.to_string()),
                    Step::Subscribe(s) => {
                        let a = answer(&s, &buf);
                        side.answer(a);
                    }
                }
            }
            if let Some(bytes) = side.output(&buf) {
                to_client.extend_from_slice(bytes);
            }
            side.output_sent();
            let consumed = side.consumed();
            buf.advance(consumed);
        }
        Ok(to_client)
    }

    /// The stream cut in two at every byte, and in single bytes: each way, the client gets
    /// the same as for the stream in one piece.
    fn every_split(
        ctx: &RelayContext<'_>,
        state: impl Fn() -> RelayState,
        stream: &[u8],
    ) -> Vec<u8> {
        let whole = relay(ctx, &state(), &[stream]).unwrap();
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let got = relay(ctx, &state(), &[a, b]).unwrap();
            assert_eq!(got, whole, "cut at byte {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(relay(ctx, &state(), &bytes).unwrap(), whole, "byte by byte");
        whole
    }

    fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        m(msg::PARAMETER_STATUS, &[z(name), z(value)].concat())
    }

    #[test]
    fn a_bare_stream_reaches_the_client_unchanged_and_uncopied_and_keeps_the_session_state() {
        bare(|ctx, _| {
            let stream = [
                row_description("n"),
                data_row("1"),
                notice("raised between rows"),
                data_row("2"),
                complete("SELECT 2"),
                ready(protocol::TXN_IDLE),
                parameter_status("standard_conforming_strings", "off"),
                complete("BEGIN"),
                ready(protocol::TXN_IN_BLOCK),
            ]
            .concat();
            let fresh = || {
                let s = RelayState::new(protocol::TXN_IDLE);
                s.pending.set(2);
                s
            };
            assert_eq!(every_split(ctx, fresh, &stream), stream);
            // In one piece, the client's bytes are the read buffer itself.
            let state = fresh();
            let mut side = ServerSide::new(ctx);
            assert!(matches!(side.process(ctx, &state, &stream), Step::Read));
            let out = side.output(&stream).expect("bytes for the client");
            assert_eq!(out.as_ptr(), stream.as_ptr(), "passed without a copy");
            assert_eq!(out.len(), stream.len());
            assert_eq!(side.consumed(), stream.len());
            // The session state the server's messages carry.
            assert_eq!(state.txn_status(), protocol::TXN_IN_BLOCK);
            assert_eq!(state.pending.get(), 0);
            assert!(!state.lex_options().standard_conforming_strings);
        });
    }

    #[test]
    fn a_stand_in_error_becomes_its_refusal_wherever_the_bytes_are_cut() {
        bare(|ctx, _| {
            let refusal = Refusal {
                plugin: "guardrails".into(),
                sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                message: "DROP TABLE is not allowed".into(),
                hint: None,
            };
            let token = RelayState::new(protocol::TXN_IDLE)
                .stand_ins
                .register(ctx.session_id, &refusal);
            let stand_in_error = error(
                sqlstate::SYNTAX_ERROR,
                &format!("syntax error at or near \"{token}\""),
            );
            let stream = [
                complete("SELECT 1"),
                stand_in_error.clone(),
                ready(protocol::TXN_IDLE),
            ]
            .concat();
            let waiting = || {
                let s = RelayState::new(protocol::TXN_IDLE);
                s.stand_ins.register(ctx.session_id, &refusal);
                s
            };
            let got = every_split(ctx, waiting, &stream);
            let mut refused = BytesMut::new();
            ClientError::refusal(&refusal, Refused::Statement).encode(&mut refused);
            let want = [
                complete("SELECT 1"),
                refused.to_vec(),
                ready(protocol::TXN_IDLE),
            ]
            .concat();
            assert_eq!(got, want);
            // No stand-in waiting: the same error is the server's, and passes.
            let state = RelayState::new(protocol::TXN_IDLE);
            assert_eq!(relay(ctx, &state, &[&stream]).unwrap(), stream);
        });
    }

    #[test]
    fn the_answers_to_the_gateways_own_query_are_kept_from_the_client() {
        bare(|ctx, _| {
            let ours = [complete("BEGIN"), ready(protocol::TXN_IN_BLOCK)].concat();
            let theirs = [
                row_description("n"),
                data_row("1"),
                complete("SELECT 1"),
                ready(protocol::TXN_IN_BLOCK),
            ]
            .concat();
            let own_query = |forward: bool| {
                move || {
                    let s = RelayState::new(protocol::TXN_IDLE);
                    s.replies.pending().own_query(forward);
                    s.own.set(1);
                    s.pending.set(2);
                    s
                }
            };
            let stream = [ours.clone(), theirs.clone()].concat();
            assert_eq!(every_split(ctx, own_query(false), &stream), theirs);
            let state = own_query(false)();
            relay(ctx, &state, &[&stream]).unwrap();
            assert_eq!(state.own.get(), 0);
            assert_eq!(state.pending.get(), 0);
            // The COMMIT or ROLLBACK ending a block of the gateway's: the client gets its
            // ReadyForQuery (and its error, had it failed), not its CommandComplete.
            let stream = [complete("COMMIT"), ready(protocol::TXN_IDLE)].concat();
            let got = every_split(ctx, own_query(true), &stream);
            assert_eq!(got, ready(protocol::TXN_IDLE));
        });
    }

    #[test]
    fn a_malformed_length_from_the_server_ends_the_session() {
        bare(|ctx, state| {
            let stream = [complete("SELECT 1"), vec![msg::READY_FOR_QUERY, 0, 0, 0, 3]].concat();
            let end = relay(ctx, state, &[&stream]).unwrap_err();
            assert!(end.starts_with("server protocol violation"), "{end}");
        });
    }

    /// A processor that follows the server's answers (policies on) for one Query.
    fn following_a_query(ctx: &RelayContext<'_>, state: &RelayState) -> ServerSide {
        state.replies.pending().query(Sent::default());
        state.pending.set(1);
        let mut side = ServerSide::new(ctx);
        side.tracking = true;
        side
    }

    fn refusal() -> Refusal {
        Refusal {
            plugin: "mask-pii".into(),
            sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
            message: "this result may not be read".into(),
            hint: None,
        }
    }

    #[test]
    fn a_result_waits_for_its_subscription_and_a_refusal_ends_it_wherever_the_bytes_are_cut() {
        bare(|ctx, _| {
            let description = row_description("email");
            let stream = [
                description.clone(),
                data_row("a@example.com"),
                notice("between rows"),
                data_row("b@example.com"),
                complete("SELECT 2"),
                ready(protocol::TXN_IDLE),
            ]
            .concat();
            let mut refused = BytesMut::new();
            ClientError::refusal(&refusal(), Refused::Result).encode(&mut refused);
            let cuts: Vec<usize> = (0..=stream.len()).collect();
            for cut in cuts {
                let (a, b) = stream.split_at(cut);
                for (deny, want) in [
                    // No plugin subscribes: the result goes out as it came.
                    (false, stream.clone()),
                    // Refused: the refusal in the RowDescription's place, nothing of the rows,
                    // and the ReadyForQuery that ends the Query.
                    (true, [refused.to_vec(), ready(protocol::TXN_IDLE)].concat()),
                ] {
                    let state = RelayState::new(protocol::TXN_IDLE);
                    let side = following_a_query(ctx, &state);
                    let asked = std::cell::Cell::new(0);
                    let answer = |s: &Subscribe, buf: &[u8]| {
                        asked.set(asked.get() + 1);
                        let Subscribe::Rows {
                            description: d,
                            statement,
                            ..
                        } = s
                        else {
                            panic!("rows expected: {s:?}");
                        };
                        assert_eq!(d.bytes(buf), &description[..], "the RowDescription");
                        assert_eq!(*statement, 0);
                        Answer::Rows(if deny { Err(refusal()) } else { Ok(None) })
                    };
                    let got = relay_with(ctx, &state, side, &[a, b], answer).unwrap();
                    assert_eq!(got, want, "cut at byte {cut}, refused: {deny}");
                    assert_eq!(asked.get(), 1, "asked once");
                    assert!(!state.discarding.get(), "discards until ReadyForQuery");
                    assert_eq!(state.pending.get(), 0);
                }
            }
        });
    }

    #[test]
    fn a_copy_to_the_client_waits_for_its_subscription_and_a_refusal_drops_its_data() {
        bare(|ctx, _| {
            let copy_out = m(msg::COPY_OUT_RESPONSE, &[0, 0, 1, 0, 0]);
            let data = m(msg::COPY_DATA, b"a@example.com\n");
            let stream = [
                copy_out.clone(),
                data.clone(),
                data.clone(),
                m(msg::COPY_DONE, &[]),
                complete("COPY 2"),
                ready(protocol::TXN_IDLE),
            ]
            .concat();
            let mut refused = BytesMut::new();
            ClientError::refusal(&refusal(), Refused::Result).encode(&mut refused);
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                let state = RelayState::new(protocol::TXN_IDLE);
                let side = following_a_query(ctx, &state);
                let answer = |s: &Subscribe, buf: &[u8]| {
                    let Subscribe::Copy { frame, .. } = s else {
                        panic!("a COPY expected: {s:?}");
                    };
                    assert_eq!(&buf[frame.clone()], &copy_out[..]);
                    Answer::Copy(Err(refusal()))
                };
                let got = relay_with(ctx, &state, side, &[a, b], answer).unwrap();
                let want = [refused.to_vec(), ready(protocol::TXN_IDLE)].concat();
                assert_eq!(got, want, "cut at byte {cut}");
            }
        });
    }
}
