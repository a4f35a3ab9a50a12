//! Stand-ins for statements the gateway refuses.
//!
//! A refused statement cannot simply be left out: the client's pipeline counts on one answer
//! per message, in order, and a refusal inside a transaction block must fail that block on the
//! server as it would fail on the client's screen. So the relay sends upstream, in the refused
//! statement's place, a Query (or a Parse) whose text is a token no server can parse,
//! `pgward_denied_<session>_<n>`. The server fails it where the statement would have run —
//! skipping the rest of an extended-protocol pipeline up to Sync, aborting the transaction
//! block — and its syntax error, which names the token, is replaced on the way back by the
//! refusal registered under that token ([`StandIns::refusal_for`]).
//!
//! A token the server never parsed (it came after an earlier error of its pipeline, or in a
//! transaction that had failed already) leaves its entry behind; the oldest go past
//! [`MAX_WAITING`].

use crate::error::{ClientError, Refused};
use crate::plugins::Refusal;
use crate::protocol;
use crate::sqlstate;
use bytes::{BufMut, BytesMut};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

/// Prefix of every stand-in statement.
pub(super) const TOKEN_PREFIX: &str = "pgward_denied_";

/// Most refusals kept waiting for their stand-in's error.
const MAX_WAITING: usize = 4096;

/// The session's stand-ins whose error has not come back: written by the client side, read
/// by the server side.
#[derive(Default)]
pub(super) struct StandIns {
    /// The server side looks at errors only while this is not empty.
    waiting: RefCell<VecDeque<(String, BytesMut)>>,
    next: Cell<u64>,
}

impl StandIns {
    /// Registers `refusal` for session `session_id`; returns the stand-in's SQL text.
    pub(super) fn register(&self, session_id: u64, refusal: &Refusal) -> String {
        let n = self.next.get() + 1;
        self.next.set(n);
        let token = format!("{TOKEN_PREFIX}{session_id}_{n}");
        let mut error = BytesMut::new();
        ClientError::refusal(refusal, Refused::Statement).encode(&mut error);
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() >= MAX_WAITING {
            waiting.pop_front();
        }
        waiting.push_back((token.clone(), error));
        token
    }

    /// The refusal (an ErrorResponse frame) to send instead of the server's ErrorResponse
    /// `frame`, when `frame` is the syntax error of a stand-in.
    pub(super) fn refusal_for(&self, frame: &[u8]) -> Option<BytesMut> {
        if self.waiting.borrow().is_empty() {
            return None;
        }
        let e = protocol::parse_error_body(frame.get(5..)?);
        if e.code != sqlstate::SYNTAX_ERROR || !e.message.contains(TOKEN_PREFIX) {
            return None;
        }
        let mut waiting = self.waiting.borrow_mut();
        let i = waiting
            .iter()
            // Match the token itself, not quotes around it: localized messages quote differently.
            .position(|(t, _)| contains_token(&e.message, t))?;
        let (_, error) = waiting.remove(i)?;
        Some(error)
    }
}

/// A Query, or a Parse with the given statement name and the remaining parameter-type bytes.
pub(super) fn put_statement(
    out: &mut BytesMut,
    tag: u8,
    name: Option<&[u8]>,
    sql: &str,
    param_types: &[u8],
) {
    protocol::put_message(out, tag, |o| {
        if tag == protocol::tag::PARSE {
            o.extend_from_slice(name.unwrap_or(b""));
            o.put_u8(0);
        }
        protocol::put_cstr(o, sql);
        if tag == protocol::tag::PARSE {
            o.extend_from_slice(param_types);
        }
    });
}

/// `text` contains `token` not followed by another digit or `_` (token `x_1` is not in `x_12`).
fn contains_token(text: &str, token: &str) -> bool {
    text.match_indices(token).any(|(i, _)| {
        !text[i + token.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(message: &str) -> Refusal {
        Refusal {
            plugin: "guardrails".into(),
            sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// The server's ErrorResponse for a statement text it cannot parse.
    fn syntax_error(message: &str) -> BytesMut {
        let mut f = BytesMut::new();
        protocol::put_error(
            &mut f,
            &protocol::ErrorFields {
                severity: protocol::Severity::Error,
                code: sqlstate::SYNTAX_ERROR,
                message,
                detail: None,
                hint: None,
            },
        );
        f
    }

    #[test]
    fn each_stand_in_error_becomes_its_own_refusal() {
        let s = StandIns::default();
        let first = s.register(7, &refusal("first"));
        let second = s.register(7, &refusal("second"));
        assert_eq!(first, "pgward_denied_7_1");
        assert_eq!(second, "pgward_denied_7_2");
        // The server answers the second first (the first was skipped in a failed pipeline).
        let e = s
            .refusal_for(&syntax_error(&format!(
                "syntax error at or near \"{second}\""
            )))
            .expect("the second stand-in's error is replaced");
        let fields = protocol::parse_error_body(&e[5..]);
        assert_eq!(fields.message, "second");
        assert_eq!(fields.code, sqlstate::INSUFFICIENT_PRIVILEGE);
        let detail = b"Ddenied by policy plugin \"guardrails\"\0";
        assert!(e.windows(detail.len()).any(|w| w == detail));
        // A localized message quotes differently; the token is still found.
        let e = s.refusal_for(&syntax_error(&format!("Syntaxfehler bei »{first}«")));
        assert_eq!(
            protocol::parse_error_body(&e.unwrap()[5..]).message,
            "first"
        );
        // Each is answered once.
        assert!(s
            .refusal_for(&syntax_error(&format!(
                "syntax error at or near \"{first}\""
            )))
            .is_none());
    }

    #[test]
    fn other_errors_pass_and_token_prefixes_do_not_match() {
        let s = StandIns::default();
        // No stand-in waiting: the error is not even parsed.
        assert!(s.refusal_for(b"E\0\0\0\x04").is_none());
        for _ in 0..12 {
            s.register(3, &refusal("r"));
        }
        // `pgward_denied_3_1` is a prefix of `pgward_denied_3_12`: only the 12th matches.
        let e = s.refusal_for(&syntax_error(
            "syntax error at or near \"pgward_denied_3_12\"",
        ));
        assert!(e.is_some());
        let e = s.refusal_for(&syntax_error(
            "syntax error at or near \"pgward_denied_3_12\"",
        ));
        assert!(e.is_none(), "answered once");
        // A user's own syntax error, and a token in another SQLSTATE's message, pass.
        assert!(s
            .refusal_for(&syntax_error("syntax error at or near \"SELEC\""))
            .is_none());
        let mut other = BytesMut::new();
        protocol::put_error(
            &mut other,
            &protocol::ErrorFields {
                severity: protocol::Severity::Error,
                code: "42P01",
                message: "relation \"pgward_denied_3_1\" does not exist",
                detail: None,
                hint: None,
            },
        );
        assert!(s.refusal_for(&other).is_none());
        // A frame too short to be an error is not one.
        assert!(s.refusal_for(b"E").is_none());
    }

    #[test]
    fn a_statement_or_parse_stand_in_is_well_formed() {
        let mut q = BytesMut::new();
        put_statement(
            &mut q,
            protocol::tag::QUERY,
            None,
            "pgward_denied_1_1",
            &[0, 0],
        );
        assert_eq!(&q[..], b"Q\0\0\0\x16pgward_denied_1_1\0");
        let mut p = BytesMut::new();
        put_statement(
            &mut p,
            protocol::tag::PARSE,
            Some(b"s1"),
            "x",
            &[0, 1, 0, 0, 0, 23],
        );
        assert_eq!(&p[..], b"P\0\0\0\x0fs1\0x\0\0\x01\0\0\0\x17");
    }
}
