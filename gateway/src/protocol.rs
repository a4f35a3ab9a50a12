//! PostgreSQL wire protocol v3: framing, the few messages the gateway builds or reads, and the
//! startup packets. Everything else is relayed as raw frames without being decoded.

use bytes::{BufMut, BytesMut};

/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// PostgreSQL refuses startup packets larger than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Transaction status byte of ReadyForQuery.
pub const TXN_IDLE: u8 = b'I';
pub const TXN_IN_BLOCK: u8 = b'T';
pub const TXN_FAILED: u8 = b'E';

/// Message type bytes. Client and server messages share letters (`D` is the client's Describe
/// and the server's DataRow), so each name says which message it is; match a frame's tag only
/// against the names of its direction.
pub mod tag {
    // From the client.
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, and the SASL initial and continued responses.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
    // Both directions.
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    // From the server.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// What a Describe or Close names (the byte after its tag and length).
pub mod target {
    pub const STATEMENT: u8 = b'S';
    pub const PORTAL: u8 = b'P';
}

/// Why a byte stream is not a valid protocol stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
}

/// Header of a typed message: its type byte and total length including the type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Bytes of the whole frame: 1 (tag) + 4 (length) + body.
    pub frame_len: usize,
}

/// Reads the header of a typed message at the start of `buf`, if 5 bytes are there.
pub fn frame_header(buf: &[u8], limit: usize) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len as i64));
    }
    let len = len as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(Some(FrameHeader {
        tag: buf[0],
        frame_len: len + 1,
    }))
}

/// A startup-phase packet sent by a client (no type byte).
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
    Startup { params: Vec<(String, String)> },
}

/// Why a startup packet was refused; `sqlstate` is what the client is told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i64),
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    UnsupportedVersion(i32, i32),
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Length of the startup packet at the start of `buf`, once its 4-byte length is there.
pub fn startup_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::BadLength(len as i64));
    }
    Ok(Some(len as usize))
}

/// Parses a complete startup packet (length prefix included).
pub fn parse_startup(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST_CODE if body.is_empty() => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST_CODE if body.is_empty() => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST_CODE if body.len() == 8 => Ok(StartupPacket::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => Err(
            StartupError::Malformed("request packet has the wrong length"),
        ),
        PROTOCOL_3_0 => {
            let mut params = Vec::new();
            let mut rest = body;
            loop {
                let key =
                    take_cstr(&mut rest).ok_or(StartupError::Malformed("unterminated key"))?;
                if key.is_empty() {
                    break;
                }
                let value =
                    take_cstr(&mut rest).ok_or(StartupError::Malformed("unterminated value"))?;
                let key = String::from_utf8(key.to_vec())
                    .map_err(|_| StartupError::Malformed("key is not UTF-8"))?;
                let value = String::from_utf8(value.to_vec())
                    .map_err(|_| StartupError::Malformed("value is not UTF-8"))?;
                params.push((key, value));
            }
            if !rest.is_empty() {
                return Err(StartupError::Malformed("bytes after the final terminator"));
            }
            Ok(StartupPacket::Startup { params })
        }
        other => Err(StartupError::UnsupportedVersion(
            other >> 16,
            other & 0xffff,
        )),
    }
}

/// Splits a NUL-terminated string off the front of `rest`.
pub fn take_cstr<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = rest.iter().position(|&b| b == 0)?;
    let s = &rest[..end];
    *rest = &rest[end + 1..];
    Some(s)
}

/// Splits a big-endian i32 off the front of `rest`.
pub fn take_i32(rest: &mut &[u8]) -> Option<i32> {
    if rest.len() < 4 {
        return None;
    }
    let v = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    *rest = &rest[4..];
    Some(v)
}

/// Writes a typed message whose body is produced by `body`, patching the length afterwards.
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early and desynchronise the peer; PostgreSQL strings
    // cannot contain NUL, so drop them.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.put_u8(0);
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse the gateway itself sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: Severity,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

pub fn put_error(out: &mut BytesMut, e: &ErrorFields<'_>) {
    put_message(out, tag::ERROR_RESPONSE, |o| {
        o.put_u8(b'S');
        put_cstr(o, e.severity.as_str());
        o.put_u8(b'V');
        put_cstr(o, e.severity.as_str());
        o.put_u8(b'C');
        put_cstr(o, e.code);
        o.put_u8(b'M');
        put_cstr(o, e.message);
        if let Some(d) = e.detail {
            o.put_u8(b'D');
            put_cstr(o, d);
        }
        if let Some(h) = e.hint {
            o.put_u8(b'H');
            put_cstr(o, h);
        }
        o.put_u8(0);
    });
}

pub fn put_ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, tag::READY_FOR_QUERY, |o| o.put_u8(status));
}

pub fn put_auth(out: &mut BytesMut, code: i32, data: &[u8]) {
    put_message(out, tag::AUTHENTICATION, |o| {
        o.put_i32(code);
        o.extend_from_slice(data);
    });
}

pub fn put_backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    put_message(out, tag::BACKEND_KEY_DATA, |o| {
        o.put_i32(pid);
        o.put_i32(secret);
    });
}

/// A StartupMessage for protocol 3.0 with the given parameters.
pub fn put_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let len_at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST_CODE);
}

pub fn put_cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST_CODE);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// Fields of an ErrorResponse or NoticeResponse body, decoded for logging and mapping.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )
    }
}

/// Decodes the fields of an ErrorResponse body (without tag and length).
pub fn parse_error_body(mut body: &[u8]) -> ServerError {
    let mut e = ServerError::default();
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        body = rest;
        let Some(value) = take_cstr(&mut body) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match field {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_roundtrip() {
        let mut b = BytesMut::new();
        put_startup(&mut b, &[("user", "alice"), ("database", "db")]);
        let len = startup_len(&b).unwrap().unwrap();
        assert_eq!(len, b.len());
        let p = parse_startup(&b).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
    }

    #[test]
    fn startup_rejects_garbage() {
        assert!(startup_len(&[0, 0, 0, 3]).is_err());
        assert!(startup_len(&[0x7f, 0, 0, 0]).is_err());
        let mut b = BytesMut::new();
        b.put_i32(12);
        b.put_i32(PROTOCOL_3_0);
        b.extend_from_slice(b"abcd");
        assert!(parse_startup(&b).is_err());
        let mut b = BytesMut::new();
        b.put_i32(8);
        b.put_i32(0x0002_0000);
        assert_eq!(
            parse_startup(&b),
            Err(StartupError::UnsupportedVersion(2, 0))
        );
    }

    #[test]
    fn cancel_packet() {
        let mut b = BytesMut::new();
        put_cancel_request(&mut b, 7, -9);
        assert_eq!(
            parse_startup(&b).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: -9 }
        );
    }

    #[test]
    fn frame_header_limits() {
        assert_eq!(frame_header(b"Q\0\0", 100), Ok(None));
        assert_eq!(
            frame_header(b"Q\0\0\0\x02", 100),
            Err(FrameError::BadLength(2))
        );
        assert!(matches!(
            frame_header(b"Q\0\x10\0\0", 100),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            frame_header(b"Q\0\0\0\x05x", 100),
            Ok(Some(FrameHeader {
                tag: b'Q',
                frame_len: 6
            }))
        );
    }

    #[test]
    fn error_roundtrip() {
        let mut b = BytesMut::new();
        put_error(
            &mut b,
            &ErrorFields {
                severity: Severity::Error,
                code: "42501",
                message: "no",
                detail: None,
                hint: Some("h"),
            },
        );
        let e = parse_error_body(&b[5..]);
        assert_eq!(e.code, "42501");
        assert_eq!(e.message, "no");
        assert_eq!(e.severity, "ERROR");
    }
}
