//! Errors and notices from the server while a result plugin is loaded. Their fields can quote
//! row values that no result plugin sees: a NOT NULL or CHECK violation's `Failing row contains
//! (…)`, a unique violation's `Key (ssn)=(…) already exists`, `invalid input syntax for type
//! integer: "…"`, the message of a `RAISE` in a function. `plugins.server_messages` says what
//! the client gets instead (see [`ServerMessages`]); the gateway's own errors (plugin
//! refusals) are not touched.

use crate::protocol;
use bytes::{BufMut, BytesMut};
use serde::Deserialize;

/// What becomes of the server's ErrorResponse and NoticeResponse messages while a result
/// plugin is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerMessages {
    /// Relayed as the server sent them.
    Pass,
    /// Without the fields that quote values (DETAIL, CONTEXT, the internal query and its
    /// position, and any field type this gateway does not know), and with a generic message
    /// and no HINT for the classes whose message itself quotes values: 22 (data exceptions),
    /// P0 (`RAISE`), 00 and 01 (notices and warnings, which `RAISE NOTICE` sends), and for
    /// any message a procedural language raised (PL/pgSQL's `RAISE ... USING ERRCODE`,
    /// PL/Python, PL/Perl, PL/Tcl), whatever its SQLSTATE. Severity, SQLSTATE, the statement
    /// position, the source location and the schema, table, column, type and constraint
    /// names stay.
    #[default]
    Values,
    /// Only severity, SQLSTATE and a generic message.
    Generic,
}

/// Classes (first two SQLSTATE characters) whose message can quote a value.
const QUOTING_CLASSES: &[&[u8]] = &[b"22", b"P0", b"00", b"01"];

/// Whether the message was raised by a function's own code (its text is the function's to
/// choose, and may hold anything it read), judged by the server's source location fields.
fn raised_by_a_function(file: Option<&[u8]>, routine: Option<&[u8]>) -> bool {
    routine == Some(b"exec_stmt_raise")
        || file.is_some_and(|f| {
            matches!(f, b"pl_exec.c" | b"plperl.c" | b"pltcl.c") || f.starts_with(b"plpy_")
        })
}

/// Fields kept in [`ServerMessages::Values`]: severity (twice), SQLSTATE, position, file, line,
/// routine, schema, table, column, data type and constraint names.
const KEPT: &[u8] = b"SVCPFLRstcdn";

/// `frame` (a whole ErrorResponse or NoticeResponse) rewritten for `mode`; `None` when it
/// goes out unchanged.
pub fn reduce(frame: &[u8], mode: ServerMessages) -> Option<BytesMut> {
    if mode == ServerMessages::Pass || frame.len() < 5 {
        return None;
    }
    let tag = frame[0];
    let mut fields: Vec<(u8, &[u8])> = Vec::new();
    let mut body = &frame[5..];
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        body = rest;
        let Some(value) = protocol::take_cstr(&mut body) else {
            // A field cut short: nothing of it is relayed.
            break;
        };
        fields.push((field, value));
    }
    let code = fields
        .iter()
        .find(|(f, _)| *f == b'C')
        .map_or(&b"XX000"[..], |(_, v)| v);
    let field = |name: u8| fields.iter().find(|(f, _)| *f == name).map(|(_, v)| *v);
    let quoting = QUOTING_CLASSES.iter().any(|c| code.starts_with(c))
        || raised_by_a_function(field(b'F'), field(b'R'));
    let generic = mode == ServerMessages::Generic || quoting;
    let keep = |f: u8| match f {
        b'M' | b'H' => !generic,
        _ if mode == ServerMessages::Generic => matches!(f, b'S' | b'V' | b'C'),
        _ => KEPT.contains(&f),
    };
    if fields.iter().all(|(f, _)| keep(*f)) && !generic {
        return None;
    }
    let mut out = BytesMut::with_capacity(frame.len().min(256));
    protocol::put_message(&mut out, tag, |o| {
        for (f, v) in &fields {
            if keep(*f) {
                o.put_u8(*f);
                o.put_slice(v);
                o.put_u8(0);
            }
            if *f == b'C' && generic {
                o.put_u8(b'M');
                o.put_slice(
                    format!(
                        "the server's message is withheld: it may quote values that result plugins mask (SQLSTATE {})",
                        String::from_utf8_lossy(v)
                    )
                    .as_bytes(),
                );
                o.put_u8(0);
            }
        }
        o.put_u8(0);
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, fields: &[(u8, &str)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        protocol::put_message(&mut out, tag, |o| {
            for (f, v) in fields {
                o.put_u8(*f);
                o.put_slice(v.as_bytes());
                o.put_u8(0);
            }
            o.put_u8(0);
        });
        out.to_vec()
    }

    fn fields(frame: &[u8]) -> Vec<(char, String)> {
        let mut body = &frame[5..];
        let mut out = Vec::new();
        while let Some((&f, rest)) = body.split_first() {
            if f == 0 {
                break;
            }
            body = rest;
            let v = protocol::take_cstr(&mut body).unwrap();
            out.push((f as char, String::from_utf8_lossy(v).into_owned()));
        }
        out
    }

    #[test]
    fn a_failing_row_loses_its_detail_and_keeps_what_names_no_value() {
        let frame = message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "23502"),
                (b'M', "null value in column \"name\" of relation \"customers\" violates not-null constraint"),
                (b'D', "Failing row contains (1, null, ada@example.com)."),
                (b's', "public"),
                (b't', "customers"),
                (b'c', "name"),
                (b'W', "SQL statement \"UPDATE …\""),
                (b'F', "execMain.c"),
                (b'L', "1988"),
                (b'R', "ExecConstraints"),
            ],
        );
        let out = reduce(&frame, ServerMessages::Values).unwrap();
        let got = fields(&out);
        assert!(got.iter().all(|(f, _)| !matches!(f, 'D' | 'W')), "{got:?}");
        assert!(got.contains(&('C', "23502".into())));
        assert!(got.iter().any(|(f, m)| *f == 'M' && m.contains("not-null")));
        assert!(got.contains(&('t', "customers".into())));
        assert!(!String::from_utf8_lossy(&out).contains("ada@"));
        assert_eq!(reduce(&frame, ServerMessages::Pass), None);
    }

    #[test]
    fn quoting_classes_get_a_generic_message_and_generic_mode_keeps_only_the_code() {
        let cast = message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "22P02"),
                (
                    b'M',
                    "invalid input syntax for type integer: \"078-05-1120\"",
                ),
                (b'P', "8"),
            ],
        );
        let notice = message(
            b'N',
            &[
                (b'S', "NOTICE"),
                (b'C', "00000"),
                (b'M', "ssn 078-05-1120"),
                (b'H', "x"),
            ],
        );
        for frame in [&cast, &notice] {
            let out = reduce(frame, ServerMessages::Values).unwrap();
            assert_eq!(out[0], frame[0]);
            assert!(!String::from_utf8_lossy(&out).contains("078-05"), "{out:?}");
            assert!(fields(&out)
                .iter()
                .any(|(f, m)| *f == 'M' && m.contains("withheld")));
        }
        let unique = message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "23505"),
                (b'M', "duplicate key"),
                (b'n', "k"),
            ],
        );
        // Nothing to take out: relayed as it is.
        assert_eq!(reduce(&unique, ServerMessages::Values), None);
        let out = reduce(&unique, ServerMessages::Generic).unwrap();
        let got: Vec<char> = fields(&out).into_iter().map(|(f, _)| f).collect();
        assert_eq!(got, ['S', 'C', 'M']);
    }

    #[test]
    fn a_message_a_function_raised_is_withheld_whatever_its_sqlstate() {
        let raised = message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "23505"),
                (b'M', "ssn 078-05-1120 is taken"),
                (b'F', "pl_exec.c"),
                (b'L', "3911"),
                (b'R', "exec_stmt_raise"),
            ],
        );
        let python = message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "42501"),
                (b'M', "plpy.Error: 078-05-1120"),
                (b'F', "plpy_elog.c"),
            ],
        );
        for frame in [&raised, &python] {
            let out = reduce(frame, ServerMessages::Values).unwrap();
            assert!(!String::from_utf8_lossy(&out).contains("078-05"), "{out:?}");
            assert!(fields(&out)
                .iter()
                .any(|(f, m)| *f == 'M' && m.contains("withheld")));
        }
        // The server's own messages of the same class keep their text.
        let own = message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "23505"),
                (b'M', "duplicate key value violates unique constraint \"k\""),
                (b'F', "nbtinsert.c"),
                (b'R', "_bt_check_unique"),
            ],
        );
        assert_eq!(reduce(&own, ServerMessages::Values), None);
    }

    #[test]
    fn cut_short_and_unknown_fields_are_dropped_never_a_panic() {
        let frame = message(b'E', &[(b'S', "ERROR"), (b'C', "42P01"), (b'Z', "?")]);
        let out = reduce(&frame, ServerMessages::Values).unwrap();
        assert!(fields(&out).iter().all(|(f, _)| *f != 'Z'));
        for cut in 0..frame.len() {
            let _ = reduce(&frame[..cut], ServerMessages::Values);
        }
    }
}
