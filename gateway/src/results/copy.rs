//! `COPY ... TO STDOUT` through result plugins: the COPY's columns, its format, and its rows
//! as DataRows (and back).
//!
//! The columns come from describing the equivalent SELECT on the gateway's catalog connection;
//! each CopyData row becomes a DataRow of the same cells (text cells unescaped, binary tuples
//! as they are), so the same [`Filter`](super::Filter) handles it. Rows nobody changed are
//! sent as the server's own CopyData messages; changed rows are written in the COPY's format.

use bytes::{BufMut, BytesMut};
use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Binary COPY's file header signature.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The text forms of a COPY's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text {
        delimiter: u8,
        null: Vec<u8>,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        header: bool,
    },
    Binary,
}

impl CopyFormat {
    pub fn is_binary(&self) -> bool {
        matches!(self, CopyFormat::Binary)
    }
}

/// A COPY statement the gateway cannot filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyPlanError {
    #[error("the COPY statement cannot be parsed: {0}")]
    Parse(String),
    #[error("statement is not a COPY ... TO STDOUT")]
    NotCopyOut,
    #[error("{what} {value:?} is not a single-byte character")]
    NotOneByte { what: &'static str, value: char },
    #[error("COPY option {0} is not supported")]
    Option(String),
    #[error("COPY format {0:?} is not supported")]
    Format(String),
}

/// COPY data the gateway cannot read or write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyDataError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{what} has {found} fields, the COPY {expected}")]
    Fields {
        what: &'static str,
        found: i64,
        expected: usize,
    },
}

impl From<&'static str> for CopyDataError {
    fn from(reason: &'static str) -> Self {
        CopyDataError::Malformed(reason)
    }
}

/// What the gateway needs to filter one `COPY ... TO STDOUT`.
#[derive(Debug)]
pub struct CopyPlan {
    /// A SELECT returning the same columns, to describe.
    pub select: String,
    /// The format, or why the gateway cannot read or write it.
    pub format: Result<CopyFormat, CopyPlanError>,
}

/// The plan of statement `index` (0-based, empty statements not counted) of `sql`, which must
/// be a `COPY ... TO STDOUT`.
pub fn plan(sql: &str, index: usize) -> Result<CopyPlan, CopyPlanError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| CopyPlanError::Parse(e.to_string()))?;
    let Some(Statement::Copy {
        source,
        to: true,
        target: CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    }) = statements.get(index)
    else {
        return Err(CopyPlanError::NotCopyOut);
    };
    let select = match source {
        CopySource::Table {
            table_name,
            columns,
        } if columns.is_empty() => format!("SELECT * FROM {table_name}"),
        CopySource::Table {
            table_name,
            columns,
        } => format!(
            "SELECT {} FROM {table_name}",
            columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CopySource::Query(q) => q.to_string(),
    };
    Ok(CopyPlan {
        select,
        format: format(options, legacy_options),
    })
}

fn one_byte(c: char, what: &'static str) -> Result<u8, CopyPlanError> {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .ok_or(CopyPlanError::NotOneByte { what, value: c })
}

fn format(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> Result<CopyFormat, CopyPlanError> {
    let mut kind = "text".to_string();
    let mut delimiter = None;
    let mut null: Option<String> = None;
    let mut header = false;
    let mut quote = None;
    let mut escape = None;
    for o in options {
        match o {
            CopyOption::Format(f) => kind = f.value.to_lowercase(),
            CopyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "DELIMITER")?),
            CopyOption::Null(s) => null = Some(s.clone()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(one_byte(*c, "QUOTE")?),
            CopyOption::Escape(c) => escape = Some(one_byte(*c, "ESCAPE")?),
            CopyOption::ForceQuote(cols) if cols.is_empty() => {}
            other => return Err(CopyPlanError::Option(other.to_string())),
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => kind = "binary".into(),
            CopyLegacyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "DELIMITER")?),
            CopyLegacyOption::Null(s) => null = Some(s.clone()),
            CopyLegacyOption::Csv(csv) => {
                kind = "csv".into();
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = Some(one_byte(*q, "QUOTE")?),
                        CopyLegacyCsvOption::Escape(e) => escape = Some(one_byte(*e, "ESCAPE")?),
                        other => return Err(CopyPlanError::Option(other.to_string())),
                    }
                }
            }
            other => return Err(CopyPlanError::Option(other.to_string())),
        }
    }
    match kind.as_str() {
        "text" => Ok(CopyFormat::Text {
            delimiter: delimiter.unwrap_or(b'\t'),
            null: null.unwrap_or_else(|| "\\N".into()).into_bytes(),
        }),
        "csv" => {
            let quote = quote.unwrap_or(b'"');
            Ok(CopyFormat::Csv {
                delimiter: delimiter.unwrap_or(b','),
                quote,
                escape: escape.unwrap_or(quote),
                null: null.unwrap_or_default().into_bytes(),
                header,
            })
        }
        "binary" => Ok(CopyFormat::Binary),
        other => Err(CopyPlanError::Format(other.to_owned())),
    }
}

/// Reads COPY rows of one format into DataRow frames and writes changed rows back.
#[derive(Debug)]
pub struct CopyCodec {
    pub format: CopyFormat,
    /// Binary: the file header was read. Csv: the header line was passed.
    started: bool,
}

/// What one CopyData message holds.
pub enum CopyRow {
    /// A row: as a DataRow frame; `prefix` bytes of the message precede it (binary header).
    Row { frame: BytesMut, prefix: usize },
    /// Not a row (the CSV header line, the binary trailer): relay it as it is.
    Other,
}

impl CopyCodec {
    pub fn new(format: CopyFormat) -> Self {
        CopyCodec {
            format,
            started: false,
        }
    }

    /// Decodes one CopyData body.
    pub fn decode(&mut self, data: &[u8], columns: usize) -> Result<CopyRow, CopyDataError> {
        match &self.format {
            CopyFormat::Binary => {
                let mut prefix = 0;
                if !self.started {
                    self.started = true;
                    let h = data
                        .get(..SIGNATURE.len() + 8)
                        .filter(|h| h.starts_with(SIGNATURE))
                        .ok_or("binary COPY data without its header")?;
                    let ext =
                        u32::from_be_bytes(h[SIGNATURE.len() + 4..].try_into().unwrap_or_default());
                    prefix = SIGNATURE.len() + 8 + ext as usize;
                    if data.len() < prefix {
                        return Err("binary COPY header is truncated".into());
                    }
                }
                let tuple = &data[prefix..];
                if tuple == [0xff, 0xff] {
                    return Ok(CopyRow::Other);
                }
                check_tuple(tuple, columns)?;
                let mut frame = BytesMut::with_capacity(tuple.len() + 5);
                frame.put_u8(b'D');
                frame.put_i32(tuple.len() as i32 + 4);
                frame.extend_from_slice(tuple);
                Ok(CopyRow::Row { frame, prefix })
            }
            CopyFormat::Csv { header: true, .. } if !self.started => {
                self.started = true;
                Ok(CopyRow::Other)
            }
            CopyFormat::Text { delimiter, null } => {
                let line = data
                    .strip_suffix(b"\n")
                    .ok_or("COPY text row without a line end")?;
                let mut cells: Vec<Option<Vec<u8>>> = Vec::with_capacity(columns);
                for field in line.split(|b| b == delimiter) {
                    cells.push(if field == null.as_slice() {
                        None
                    } else {
                        Some(unescape_text(field)?)
                    });
                }
                // A delimiter escaped as `\<delimiter>` splits wrongly above; PostgreSQL never
                // writes one (it is the delimiter itself only when it is also escaped data).
                row_frame(cells, columns)
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                let line = data
                    .strip_suffix(b"\n")
                    .ok_or("COPY csv row without a line end")?;
                let cells = split_csv(line, *delimiter, *quote, *escape, null)?;
                row_frame(cells, columns)
            }
        }
    }

    /// Appends a CopyData message for the row in DataRow `frame`, after `prefix`.
    pub fn encode(
        &self,
        prefix: &[u8],
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CopyDataError> {
        let tuple = frame.get(5..).ok_or("short DataRow")?;
        crate::protocol::put_message(out, b'd', |o| {
            o.extend_from_slice(prefix);
            match &self.format {
                CopyFormat::Binary => o.extend_from_slice(tuple),
                CopyFormat::Text { delimiter, null } => {
                    for (i, cell) in cells(tuple).enumerate() {
                        if i > 0 {
                            o.put_u8(*delimiter);
                        }
                        match cell {
                            None => o.extend_from_slice(null),
                            Some(v) => escape_text(v, *delimiter, o),
                        }
                    }
                    o.put_u8(b'\n');
                }
                CopyFormat::Csv {
                    delimiter,
                    quote,
                    escape,
                    null,
                    ..
                } => {
                    for (i, cell) in cells(tuple).enumerate() {
                        if i > 0 {
                            o.put_u8(*delimiter);
                        }
                        if let Some(v) = cell {
                            let quoted = v.is_empty()
                                || v == null.as_slice()
                                || v == b"\\."
                                || v.iter().any(|&b| {
                                    b == *delimiter || b == *quote || b == b'\n' || b == b'\r'
                                });
                            if quoted {
                                o.put_u8(*quote);
                                for &b in v {
                                    if b == *quote || b == *escape {
                                        o.put_u8(*escape);
                                    }
                                    o.put_u8(b);
                                }
                                o.put_u8(*quote);
                            } else {
                                o.extend_from_slice(v);
                            }
                        }
                    }
                    o.put_u8(b'\n');
                }
            }
        });
        Ok(())
    }
}

fn check_tuple(tuple: &[u8], columns: usize) -> Result<(), CopyDataError> {
    let n = tuple
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or("binary COPY tuple is empty")?;
    if n as usize != columns {
        return Err(CopyDataError::Fields {
            what: "binary COPY tuple",
            found: i64::from(n),
            expected: columns,
        });
    }
    let mut at = 2;
    for _ in 0..n {
        let len = tuple
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("binary COPY tuple is truncated")?;
        at += 4 + len.max(0) as usize;
    }
    if at != tuple.len() {
        return Err("binary COPY message holds more than one tuple".into());
    }
    Ok(())
}

/// The cells of a DataRow body (after the tag and length).
fn cells(tuple: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let n = tuple
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0)
        .max(0) as usize;
    let mut at = 2;
    (0..n).map(move |_| {
        let len = tuple
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(-1);
        at += 4;
        if len < 0 {
            return None;
        }
        let v = tuple.get(at..at + len as usize).unwrap_or_default();
        at += len as usize;
        Some(v)
    })
}

fn row_frame(cells: Vec<Option<Vec<u8>>>, columns: usize) -> Result<CopyRow, CopyDataError> {
    if cells.len() != columns {
        return Err(CopyDataError::Fields {
            what: "COPY row",
            found: cells.len() as i64,
            expected: columns,
        });
    }
    let mut frame = BytesMut::new();
    crate::protocol::put_message(&mut frame, b'D', |o| {
        o.put_i16(cells.len() as i16);
        for c in &cells {
            match c {
                None => o.put_i32(-1),
                Some(v) => {
                    o.put_i32(v.len() as i32);
                    o.extend_from_slice(v);
                }
            }
        }
    });
    Ok(CopyRow::Row { frame, prefix: 0 })
}

fn unescape_text(field: &[u8]) -> Result<Vec<u8>, CopyDataError> {
    if !field.contains(&b'\\') {
        return Ok(field.to_vec());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let next = *field
            .get(i + 1)
            .ok_or("COPY text value ends with a backslash")?;
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (next - b'0') as u32;
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn escape_text(v: &[u8], delimiter: u8, o: &mut BytesMut) {
    let special = |b: u8| b == b'\\' || b == delimiter || matches!(b, 8..=13);
    if !v.iter().any(|&b| special(b)) {
        o.extend_from_slice(v);
        return;
    }
    for &b in v {
        match b {
            b'\\' => o.extend_from_slice(b"\\\\"),
            8 => o.extend_from_slice(b"\\b"),
            12 => o.extend_from_slice(b"\\f"),
            b'\n' => o.extend_from_slice(b"\\n"),
            b'\r' => o.extend_from_slice(b"\\r"),
            b'\t' => o.extend_from_slice(b"\\t"),
            11 => o.extend_from_slice(b"\\v"),
            d if d == delimiter => {
                o.put_u8(b'\\');
                o.put_u8(d);
            }
            other => o.put_u8(other),
        }
    }
}

fn split_csv(
    line: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
) -> Result<Vec<Option<Vec<u8>>>, CopyDataError> {
    let mut cells = Vec::new();
    let mut i = 0;
    loop {
        let mut value = Vec::new();
        let mut quoted = false;
        let start = i;
        while i < line.len() && line[i] != delimiter {
            if line[i] == quote {
                quoted = true;
                i += 1;
                loop {
                    let b = *line.get(i).ok_or("unterminated quoted CSV value")?;
                    let next = line.get(i + 1).copied();
                    if b == escape
                        && (next == Some(quote) || (escape != quote && next == Some(escape)))
                    {
                        value.extend(next);
                        i += 2;
                    } else if b == quote {
                        i += 1;
                        break;
                    } else {
                        value.push(b);
                        i += 1;
                    }
                }
            } else {
                value.push(line[i]);
                i += 1;
            }
        }
        let raw = &line[start..i];
        cells.push(if !quoted && raw == null {
            None
        } else {
            Some(value)
        });
        if i >= line.len() {
            break;
        }
        i += 1; // the delimiter
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(format: CopyFormat, line: &[u8], columns: usize) {
        let mut codec = CopyCodec::new(format);
        let CopyRow::Row { frame, .. } = codec.decode(line, columns).unwrap() else {
            panic!("not a row");
        };
        let mut out = BytesMut::new();
        codec.encode(&[], &frame, &mut out).unwrap();
        assert_eq!(&out[5..], line);
    }

    #[test]
    fn text_rows_round_trip() {
        let text = CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
        };
        roundtrip(text.clone(), b"1\thello\t\\N\t\n", 4);
        roundtrip(text, b"a\\tb\\\\c\\nd\t\n", 2);
    }

    #[test]
    fn csv_rows_round_trip() {
        let csv = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: false,
        };
        roundtrip(csv.clone(), b"1,\"a,b\",,\"\",\"say \"\"hi\"\"\"\n", 5);
        roundtrip(csv, b"x,\"line\nbreak\"\n", 2);
    }

    #[test]
    fn plans_name_the_columns_and_format() {
        let p = plan("COPY public.t (a, \"B\") TO STDOUT (FORMAT csv, HEADER)", 0).unwrap();
        assert_eq!(p.select, "SELECT a, \"B\" FROM public.t");
        assert!(matches!(p.format, Ok(CopyFormat::Csv { header: true, .. })));
        let p = plan("SELECT 1; COPY (SELECT x FROM y) TO STDOUT WITH BINARY", 1).unwrap();
        assert_eq!(p.select, "SELECT x FROM y");
        assert_eq!(p.format, Ok(CopyFormat::Binary));
        let p = plan("COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE (a))", 0).unwrap();
        assert!(p.format.is_err());
        assert!(plan("COPY t FROM STDIN", 0).is_err());
    }
}
