//! PostgreSQL values ⇄ Arrow arrays, in the text and the binary wire formats.
//!
//! Decoding builds one Arrow array per subscribed column from the cells of a batch of DataRows.
//! Encoding runs only for values a plugin changed: a value equal to the one decoded keeps its
//! original bytes, so a column a plugin handed back untouched is relayed byte-identical.
//!
//! Text-format dates, times and intervals are read in the styles PostgreSQL uses by default
//! (`DateStyle` ISO, `IntervalStyle` postgres); the relay refuses to decode them under any
//! other style instead of guessing.

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, FixedSizeBinaryBuilder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    IntervalMonthDayNanoType, Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef, StringArray};
use arrow_buffer::{BooleanBufferBuilder, IntervalMonthDayNano, NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, IntervalUnit, TimeUnit};
use std::fmt::Write as _;
use std::sync::Arc;

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's binary epoch.
const PG_EPOCH_DAYS: i64 = 10_957;
const USECS_PER_DAY: i64 = 86_400_000_000;
const PG_EPOCH_USECS: i64 = PG_EPOCH_DAYS * USECS_PER_DAY;

/// How a PostgreSQL type is represented in Arrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// Kept as its decimal text: no Arrow decimal holds every numeric (NaN, ±Infinity, 1000 digits).
    Numeric,
    /// text, varchar, bpchar, name, json, jsonb, xml: UTF-8 text.
    Text,
    /// jsonb in binary format carries a version byte before the text.
    Jsonb,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    /// Any other type: its text (text format) or its raw bytes (binary format).
    Other,
}

impl Kind {
    pub fn of(type_oid: u32) -> Kind {
        match type_oid {
            16 => Kind::Bool,
            21 => Kind::Int2,
            23 => Kind::Int4,
            20 => Kind::Int8,
            700 => Kind::Float4,
            701 => Kind::Float8,
            1700 => Kind::Numeric,
            25 | 1043 | 1042 | 19 | 114 | 142 => Kind::Text,
            3802 => Kind::Jsonb,
            17 => Kind::Bytea,
            1082 => Kind::Date,
            1083 => Kind::Time,
            1114 => Kind::Timestamp,
            1184 => Kind::TimestampTz,
            1186 => Kind::Interval,
            2950 => Kind::Uuid,
            _ => Kind::Other,
        }
    }

    /// The Arrow type of a column of this kind in `binary` or text format.
    pub fn data_type(self, binary: bool) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int2 => DataType::Int16,
            Kind::Int4 => DataType::Int32,
            Kind::Int8 => DataType::Int64,
            Kind::Float4 => DataType::Float32,
            Kind::Float8 => DataType::Float64,
            Kind::Numeric | Kind::Text | Kind::Jsonb => DataType::Utf8,
            Kind::Bytea => DataType::Binary,
            Kind::Date => DataType::Date32,
            Kind::Time => DataType::Time64(TimeUnit::Microsecond),
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
            Kind::Uuid => DataType::FixedSizeBinary(16),
            Kind::Other if binary => DataType::Binary,
            Kind::Other => DataType::Utf8,
        }
    }
}

/// Session settings that change how text values read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Styles {
    /// `DateStyle` starts with ISO.
    pub iso_dates: bool,
    /// `IntervalStyle` is `postgres`.
    pub postgres_intervals: bool,
}

fn bad(kind: Kind, cell: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&cell[..cell.len().min(40)]).into_owned();
    format!("cannot read {kind:?} value {shown:?}")
}

fn utf8(cell: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(cell).map_err(|_| "a text value is not valid UTF-8".to_string())
}

fn be<const N: usize>(kind: Kind, cell: &[u8]) -> Result<[u8; N], String> {
    cell.try_into()
        .map_err(|_| format!("binary {kind:?} value has {} bytes", cell.len()))
}

/// A column's PostgreSQL type as the filter handles it: a scalar kind, or a one-dimensional
/// array of one (Arrow `List`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgType {
    pub kind: Kind,
    /// Element type oid when this is an array type the gateway reads.
    pub element: Option<u32>,
}

impl PgType {
    /// Whether a value of this type is its UTF-8 text, in either format (text, varchar, json...).
    pub fn is_plain_text(self) -> bool {
        self.kind == Kind::Text && self.element.is_none()
    }
}

/// Array type oids and their element oids, for the element types with their own [`Kind`].
const ARRAYS: &[(u32, u32)] = &[
    (1000, 16),
    (1001, 17),
    (1003, 19),
    (1005, 21),
    (1007, 23),
    (1009, 25),
    (1014, 1042),
    (1015, 1043),
    (1016, 20),
    (1021, 700),
    (1022, 701),
    (1115, 1114),
    (1182, 1082),
    (1183, 1083),
    (1185, 1184),
    (1187, 1186),
    (1231, 1700),
    (2951, 2950),
    (199, 114),
    (3807, 3802),
];

impl PgType {
    pub fn of(type_oid: u32) -> PgType {
        match ARRAYS.iter().find(|(a, _)| *a == type_oid) {
            Some(&(_, element)) => PgType {
                kind: Kind::of(element),
                element: Some(element),
            },
            None => PgType {
                kind: Kind::of(type_oid),
                element: None,
            },
        }
    }

    pub fn data_type(self, binary: bool) -> DataType {
        match self.element {
            Some(_) => DataType::List(Arc::new(arrow_schema::Field::new(
                "item",
                self.kind.data_type(binary),
                true,
            ))),
            None => self.kind.data_type(binary),
        }
    }
}

/// Builds the Arrow array of one column from its cells (`None` = NULL).
pub fn decode_column(
    t: PgType,
    binary: bool,
    cells: &[Option<&[u8]>],
    styles: Styles,
) -> Result<ArrayRef, String> {
    let Some(element) = t.element else {
        return decode_scalar(t.kind, binary, cells, styles);
    };
    // Elements of every array, back to back, and where each array ends.
    let mut elements: Vec<Option<Vec<u8>>> = Vec::new();
    let mut offsets = vec![0i32];
    let mut nulls = Vec::with_capacity(cells.len());
    for cell in cells {
        match cell {
            None => nulls.push(false),
            Some(c) if binary => {
                nulls.push(true);
                array_from_binary(c, element, &mut elements)?
            }
            Some(c) => {
                nulls.push(true);
                array_from_text(utf8(c)?, &mut elements)?
            }
        }
        offsets.push(i32::try_from(elements.len()).map_err(|_| "array too large")?);
    }
    let refs: Vec<Option<&[u8]>> = elements.iter().map(|e| e.as_deref()).collect();
    let values = decode_scalar(t.kind, binary, &refs, styles)?;
    let field = Arc::new(arrow_schema::Field::new(
        "item",
        values.data_type().clone(),
        true,
    ));
    arrow_array::ListArray::try_new(
        field,
        arrow_buffer::OffsetBuffer::new(offsets.into()),
        values,
        Some(arrow_buffer::NullBuffer::from(nulls)),
    )
    .map(|a| Arc::new(a) as ArrayRef)
    .map_err(|e| e.to_string())
}

fn array_from_binary(c: &[u8], element: u32, out: &mut Vec<Option<Vec<u8>>>) -> Result<(), String> {
    let word = |i: usize| {
        c.get(i..i + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "binary array is truncated".to_string())
    };
    let ndim = word(0)?;
    if word(8)? as u32 != element {
        return Err("binary array has an unexpected element type".into());
    }
    let mut at = 12;
    match ndim {
        0 => return Ok(()),
        1 => {}
        _ => return Err("multi-dimensional arrays cannot be passed to result policies".into()),
    }
    let len = word(at)?;
    if word(at + 4)? != 1 {
        return Err(
            "arrays with a lower bound other than 1 cannot be passed to result policies".into(),
        );
    }
    at += 8;
    for _ in 0..len.max(0) {
        let n = word(at)?;
        at += 4;
        if n < 0 {
            out.push(None);
        } else {
            let v = c
                .get(at..at + n as usize)
                .ok_or("binary array is truncated")?;
            out.push(Some(v.to_vec()));
            at += n as usize;
        }
    }
    Ok(())
}

fn array_from_text(s: &str, out: &mut Vec<Option<Vec<u8>>>) -> Result<(), String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("arrays with explicit bounds cannot be passed to result policies")?;
    if inner.is_empty() {
        return Ok(());
    }
    let b = inner.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'{') {
            return Err("multi-dimensional arrays cannot be passed to result policies".into());
        }
        if b.get(i) == Some(&b'"') {
            let mut v = Vec::new();
            i += 1;
            loop {
                match b.get(i) {
                    Some(b'\\') => {
                        v.push(*b.get(i + 1).ok_or("unterminated array element")?);
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&x) => {
                        v.push(x);
                        i += 1;
                    }
                    None => return Err("unterminated array element".into()),
                }
            }
            out.push(Some(v));
        } else {
            let end = b[i..]
                .iter()
                .position(|&x| x == b',')
                .map_or(b.len(), |p| i + p);
            let raw = &b[i..end];
            out.push(if raw.eq_ignore_ascii_case(b"NULL") {
                None
            } else {
                Some(raw.to_vec())
            });
            i = end;
        }
        match b.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err("malformed array value".into()),
        }
    }
}

/// Appends array value `i` of list array `a` (not null).
fn encode_array(
    t: PgType,
    binary: bool,
    a: &dyn Array,
    i: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let list = a.as_list::<i32>();
    let values = list.value(i);
    let mut element = Vec::new();
    if binary {
        let n = values.len() as i32;
        out.extend_from_slice(&(if n == 0 { 0i32 } else { 1 }).to_be_bytes());
        out.extend_from_slice(&((values.null_count() > 0) as i32).to_be_bytes());
        out.extend_from_slice(&t.element.unwrap_or_default().to_be_bytes());
        if n > 0 {
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
        }
        for j in 0..values.len() {
            if values.is_null(j) {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            element.clear();
            encode_scalar(t.kind, true, values.as_ref(), j, &mut element)?;
            out.extend_from_slice(&(element.len() as i32).to_be_bytes());
            out.extend_from_slice(&element);
        }
        return Ok(());
    }
    out.push(b'{');
    for j in 0..values.len() {
        if j > 0 {
            out.push(b',');
        }
        if values.is_null(j) {
            out.extend_from_slice(b"NULL");
            continue;
        }
        element.clear();
        encode_scalar(t.kind, false, values.as_ref(), j, &mut element)?;
        let quote = element.is_empty()
            || element.eq_ignore_ascii_case(b"NULL")
            || element.iter().any(|&c| {
                matches!(c, b'{' | b'}' | b',' | b'"' | b'\\') || c.is_ascii_whitespace()
            });
        if quote {
            out.push(b'"');
            for &c in &element {
                if c == b'"' || c == b'\\' {
                    out.push(b'\\');
                }
                out.push(c);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(&element);
        }
    }
    out.push(b'}');
    Ok(())
}

fn decode_scalar(
    kind: Kind,
    binary: bool,
    cells: &[Option<&[u8]>],
    styles: Styles,
) -> Result<ArrayRef, String> {
    if !binary
        && ((matches!(
            kind,
            Kind::Date | Kind::Timestamp | Kind::TimestampTz | Kind::Time
        ) && !styles.iso_dates)
            || (kind == Kind::Interval && !styles.postgres_intervals))
    {
        return Err(format!(
            "{kind:?} values in text format can be read only with DateStyle ISO and IntervalStyle postgres"
        ));
    }
    macro_rules! prim {
        ($builder:ty, $parse:expr) => {{
            let mut b = <$builder>::with_capacity(cells.len());
            for cell in cells {
                match cell {
                    None => b.append_null(),
                    Some(c) => b.append_value($parse(c)?),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match kind {
        Kind::Bool => prim!(BooleanBuilder, |c: &[u8]| -> Result<bool, String> {
            match (binary, c) {
                (true, [b]) => Ok(*b != 0),
                (false, b"t") => Ok(true),
                (false, b"f") => Ok(false),
                _ => Err(bad(kind, c)),
            }
        }),
        Kind::Int2 => prim!(Int16Builder, |c: &[u8]| if binary {
            be::<2>(kind, c).map(i16::from_be_bytes)
        } else {
            utf8(c)?.parse::<i16>().map_err(|_| bad(kind, c))
        }),
        Kind::Int4 => prim!(Int32Builder, |c: &[u8]| if binary {
            be::<4>(kind, c).map(i32::from_be_bytes)
        } else {
            utf8(c)?.parse::<i32>().map_err(|_| bad(kind, c))
        }),
        Kind::Int8 => prim!(Int64Builder, |c: &[u8]| if binary {
            be::<8>(kind, c).map(i64::from_be_bytes)
        } else {
            utf8(c)?.parse::<i64>().map_err(|_| bad(kind, c))
        }),
        Kind::Float4 => prim!(Float32Builder, |c: &[u8]| if binary {
            be::<4>(kind, c).map(f32::from_be_bytes)
        } else {
            parse_float(utf8(c)?)
                .map(|f| f as f32)
                .ok_or_else(|| bad(kind, c))
        }),
        Kind::Float8 => prim!(Float64Builder, |c: &[u8]| if binary {
            be::<8>(kind, c).map(f64::from_be_bytes)
        } else {
            parse_float(utf8(c)?).ok_or_else(|| bad(kind, c))
        }),
        Kind::Numeric | Kind::Text | Kind::Jsonb => decode_strings(kind, binary, cells)?,
        Kind::Other if !binary => decode_strings(kind, binary, cells)?,
        Kind::Bytea | Kind::Other => {
            let mut b = BinaryBuilder::new();
            for cell in cells {
                match cell {
                    None => b.append_null(),
                    Some(c) if binary => b.append_value(c),
                    Some(c) => b.append_value(bytea_from_text(c).ok_or_else(|| bad(kind, c))?),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Date => prim!(Date32Builder, |c: &[u8]| if binary {
            be::<4>(kind, c).map(|b| {
                let d = i32::from_be_bytes(b);
                if d == i32::MAX || d == i32::MIN {
                    d
                } else {
                    d.saturating_add(PG_EPOCH_DAYS as i32)
                }
            })
        } else {
            parse_date(utf8(c)?).ok_or_else(|| bad(kind, c))
        }),
        Kind::Time => prim!(Time64MicrosecondBuilder, |c: &[u8]| if binary {
            be::<8>(kind, c).map(i64::from_be_bytes)
        } else {
            parse_time(utf8(c)?).ok_or_else(|| bad(kind, c))
        }),
        Kind::Timestamp | Kind::TimestampTz => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(cells.len());
            for cell in cells {
                match cell {
                    None => b.append_null(),
                    Some(c) => b.append_value(if binary {
                        let t = i64::from_be_bytes(be::<8>(kind, c)?);
                        if t == i64::MAX || t == i64::MIN {
                            t
                        } else {
                            t.saturating_add(PG_EPOCH_USECS)
                        }
                    } else {
                        parse_timestamp(utf8(c)?, kind == Kind::TimestampTz)
                            .ok_or_else(|| bad(kind, c))?
                    }),
                }
            }
            let a = b.finish();
            if kind == Kind::TimestampTz {
                Arc::new(a.with_timezone("UTC"))
            } else {
                Arc::new(a)
            }
        }
        Kind::Interval => prim!(IntervalMonthDayNanoBuilder, |c: &[u8]| if binary {
            let b = be::<16>(kind, c)?;
            let us = i64::from_be_bytes(b[0..8].try_into().unwrap_or_default());
            let days = i32::from_be_bytes(b[8..12].try_into().unwrap_or_default());
            let months = i32::from_be_bytes(b[12..16].try_into().unwrap_or_default());
            Ok(IntervalMonthDayNano::new(
                months,
                days,
                us.saturating_mul(1000),
            ))
        } else {
            parse_interval(utf8(c)?).ok_or_else(|| bad(kind, c))
        }),
        Kind::Uuid => {
            let mut b = FixedSizeBinaryBuilder::with_capacity(cells.len(), 16);
            for cell in cells {
                match cell {
                    None => b.append_null(),
                    Some(c) => {
                        let v = if binary {
                            be::<16>(kind, c)?
                        } else {
                            parse_uuid(c).ok_or_else(|| bad(kind, c))?
                        };
                        b.append_value(v).map_err(|e| e.to_string())?;
                    }
                }
            }
            Arc::new(b.finish())
        }
    })
}

fn decode_strings(kind: Kind, binary: bool, cells: &[Option<&[u8]>]) -> Result<ArrayRef, String> {
    let bytes: usize = cells.iter().flatten().map(|c| c.len()).sum();
    if !(binary && matches!(kind, Kind::Numeric | Kind::Jsonb)) {
        return text_array(cells, bytes);
    }
    let mut b = StringBuilder::with_capacity(cells.len(), bytes);
    let mut scratch = String::new();
    for cell in cells {
        match cell {
            None => b.append_null(),
            Some(c) => match (kind, binary) {
                (Kind::Numeric, true) => {
                    scratch.clear();
                    numeric_to_text(c, &mut scratch).ok_or_else(|| bad(kind, c))?;
                    b.append_value(&scratch);
                }
                (Kind::Jsonb, true) => match c.split_first() {
                    Some((1, rest)) => b.append_value(utf8(rest)?),
                    _ => return Err(bad(kind, c)),
                },
                _ => b.append_value(utf8(c)?),
            },
        }
    }
    Ok(Arc::new(b.finish()))
}

/// Cells that are UTF-8 text as they are: their bytes back to back, checked as UTF-8 once for
/// the whole column (and each value's bounds) instead of value by value.
fn text_array(cells: &[Option<&[u8]>], bytes: usize) -> Result<ArrayRef, String> {
    let mut values = Vec::with_capacity(bytes);
    let mut offsets = Vec::with_capacity(cells.len() + 1);
    offsets.push(0i32);
    let mut valid = BooleanBufferBuilder::new(cells.len());
    for cell in cells {
        if let Some(c) = cell {
            values.extend_from_slice(c);
        }
        valid.append(cell.is_some());
        offsets.push(i32::try_from(values.len()).map_err(|_| "text column too large")?);
    }
    let nulls = NullBuffer::new(valid.finish());
    let array = StringArray::try_new(
        OffsetBuffer::new(offsets.into()),
        values.into(),
        (nulls.null_count() > 0).then_some(nulls),
    )
    .map_err(|_| "a text value is not valid UTF-8".to_string())?;
    Ok(Arc::new(array))
}

/// For each row, whether `new` holds a different value than `old` (same type assumed). Strings
/// are compared with one downcast for the whole column; other types row by row.
pub fn differing_rows(old: &dyn Array, new: &dyn Array) -> Vec<bool> {
    let n = old.len().min(new.len());
    if old.data_type() == &DataType::Utf8 {
        let (o, w) = (old.as_string::<i32>(), new.as_string::<i32>());
        return (0..n)
            .map(|i| match (o.is_null(i), w.is_null(i)) {
                (false, false) => o.value(i) != w.value(i),
                (a, b) => a != b,
            })
            .collect();
    }
    (0..n).map(|i| !same_value(old, new, i)).collect()
}

/// Whether row `i` holds the same value in `old` and `new` (same type assumed).
pub fn same_value(old: &dyn Array, new: &dyn Array, i: usize) -> bool {
    if old.is_null(i) || new.is_null(i) {
        return old.is_null(i) && new.is_null(i);
    }
    macro_rules! prim {
        ($t:ty) => {
            old.as_primitive::<$t>().value(i) == new.as_primitive::<$t>().value(i)
        };
    }
    match old.data_type() {
        DataType::Boolean => old.as_boolean().value(i) == new.as_boolean().value(i),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        // Bitwise, so NaN equals itself and -0 stays distinct from 0.
        DataType::Float32 => {
            old.as_primitive::<Float32Type>().value(i).to_bits()
                == new.as_primitive::<Float32Type>().value(i).to_bits()
        }
        DataType::Float64 => {
            old.as_primitive::<Float64Type>().value(i).to_bits()
                == new.as_primitive::<Float64Type>().value(i).to_bits()
        }
        DataType::Utf8 => old.as_string::<i32>().value(i) == new.as_string::<i32>().value(i),
        DataType::Binary => old.as_binary::<i32>().value(i) == new.as_binary::<i32>().value(i),
        DataType::Date32 => prim!(Date32Type),
        DataType::Time64(_) => prim!(Time64MicrosecondType),
        DataType::Timestamp(..) => prim!(TimestampMicrosecondType),
        DataType::Interval(_) => prim!(IntervalMonthDayNanoType),
        DataType::FixedSizeBinary(_) => {
            old.as_fixed_size_binary().value(i) == new.as_fixed_size_binary().value(i)
        }
        DataType::List(_) => {
            old.as_list::<i32>().value(i).to_data() == new.as_list::<i32>().value(i).to_data()
        }
        _ => false,
    }
}

/// Appends value `i` of `a` (not null) in PostgreSQL's `binary` or text format.
pub fn encode_value(
    t: PgType,
    binary: bool,
    a: &dyn Array,
    i: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match t.element {
        Some(_) => encode_array(t, binary, a, i, out),
        None => encode_scalar(t.kind, binary, a, i, out),
    }
}

fn encode_scalar(
    kind: Kind,
    binary: bool,
    a: &dyn Array,
    i: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut s = String::new();
    match kind {
        Kind::Bool => {
            let v = a.as_boolean().value(i);
            if binary {
                out.push(v as u8)
            } else {
                out.push(if v { b't' } else { b'f' })
            }
        }
        Kind::Int2 => num(out, binary, a.as_primitive::<Int16Type>().value(i)),
        Kind::Int4 => num(out, binary, a.as_primitive::<Int32Type>().value(i)),
        Kind::Int8 => num(out, binary, a.as_primitive::<Int64Type>().value(i)),
        Kind::Float4 => {
            let v = a.as_primitive::<Float32Type>().value(i);
            if binary {
                out.extend_from_slice(&v.to_be_bytes())
            } else {
                out.extend_from_slice(float_text(v as f64, v.to_string()).as_bytes())
            }
        }
        Kind::Float8 => {
            let v = a.as_primitive::<Float64Type>().value(i);
            if binary {
                out.extend_from_slice(&v.to_be_bytes())
            } else {
                out.extend_from_slice(float_text(v, v.to_string()).as_bytes())
            }
        }
        Kind::Numeric => {
            let v = a.as_string::<i32>().value(i);
            if binary {
                numeric_to_binary(v, out).ok_or_else(|| format!("{v:?} is not a numeric"))?
            } else {
                out.extend_from_slice(v.as_bytes())
            }
        }
        Kind::Text => out.extend_from_slice(a.as_string::<i32>().value(i).as_bytes()),
        Kind::Jsonb => {
            if binary {
                out.push(1)
            }
            out.extend_from_slice(a.as_string::<i32>().value(i).as_bytes())
        }
        Kind::Other if !binary => out.extend_from_slice(a.as_string::<i32>().value(i).as_bytes()),
        Kind::Bytea | Kind::Other => {
            let v = a.as_binary::<i32>().value(i);
            if binary || kind == Kind::Other {
                out.extend_from_slice(v)
            } else {
                out.extend_from_slice(b"\\x");
                for b in v {
                    let _ = write!(s, "{b:02x}");
                }
                out.extend_from_slice(s.as_bytes())
            }
        }
        Kind::Date => {
            let d = a.as_primitive::<Date32Type>().value(i);
            if binary {
                let pg = if d == i32::MAX || d == i32::MIN {
                    d
                } else {
                    d.saturating_sub(PG_EPOCH_DAYS as i32)
                };
                out.extend_from_slice(&pg.to_be_bytes())
            } else {
                format_date(d as i64, &mut s);
                out.extend_from_slice(s.as_bytes())
            }
        }
        Kind::Time => {
            let t = a.as_primitive::<Time64MicrosecondType>().value(i);
            if binary {
                out.extend_from_slice(&t.to_be_bytes())
            } else {
                format_time(t, &mut s);
                out.extend_from_slice(s.as_bytes())
            }
        }
        Kind::Timestamp | Kind::TimestampTz => {
            let t = a.as_primitive::<TimestampMicrosecondType>().value(i);
            if binary {
                let pg = if t == i64::MAX || t == i64::MIN {
                    t
                } else {
                    t.saturating_sub(PG_EPOCH_USECS)
                };
                out.extend_from_slice(&pg.to_be_bytes())
            } else {
                format_timestamp(t, kind == Kind::TimestampTz, &mut s);
                out.extend_from_slice(s.as_bytes())
            }
        }
        Kind::Interval => {
            let v = a.as_primitive::<IntervalMonthDayNanoType>().value(i);
            let us = v.nanoseconds / 1000;
            if binary {
                out.extend_from_slice(&us.to_be_bytes());
                out.extend_from_slice(&v.days.to_be_bytes());
                out.extend_from_slice(&v.months.to_be_bytes());
            } else {
                format_interval(v.months, v.days, us, &mut s);
                out.extend_from_slice(s.as_bytes())
            }
        }
        Kind::Uuid => {
            let v = a.as_fixed_size_binary().value(i);
            if binary {
                out.extend_from_slice(v)
            } else {
                for (n, b) in v.iter().enumerate() {
                    if matches!(n, 4 | 6 | 8 | 10) {
                        s.push('-');
                    }
                    let _ = write!(s, "{b:02x}");
                }
                out.extend_from_slice(s.as_bytes())
            }
        }
    }
    Ok(())
}

trait BeInt: std::fmt::Display {
    fn be(&self, out: &mut Vec<u8>);
}
macro_rules! be_int {
    ($($t:ty),*) => {$(impl BeInt for $t { fn be(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_be_bytes()) } })*};
}
be_int!(i16, i32, i64);

fn num(out: &mut Vec<u8>, binary: bool, v: impl BeInt) {
    if binary {
        v.be(out)
    } else {
        let _ = write!(Writer(out), "{v}");
    }
}

struct Writer<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn float_text(v: f64, shortest: String) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        shortest
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn bytea_from_text(c: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex) = c.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return None;
        }
        let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        return hex
            .chunks(2)
            .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
            .collect();
    }
    // The escape format (bytea_output = escape): \\ and \ooo octal, the rest literal.
    let mut out = Vec::with_capacity(c.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == b'\\' {
            if c.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let o = c.get(i + 1..i + 4)?;
                let v = o.iter().try_fold(0u16, |acc, &d| {
                    (b'0'..=b'7')
                        .contains(&d)
                        .then(|| acc * 8 + (d - b'0') as u16)
                })?;
                out.push(u8::try_from(v).ok()?);
                i += 4;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    Some(out)
}

fn parse_uuid(c: &[u8]) -> Option<[u8; 16]> {
    let hex: Vec<u8> = c.iter().copied().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, p) in hex.chunks(2).enumerate() {
        let d = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        out[i] = d(p[0])? << 4 | d(p[1])?;
    }
    Some(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year 0 = 1 BC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

/// `YYYY-MM-DD[ BC]` → days since 1970.
fn parse_date_days(s: &str) -> Option<i64> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(s) => (s, true),
        None => (s, false),
    };
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1 {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    Some(days_from_civil(y, m, d))
}

fn parse_date(s: &str) -> Option<i32> {
    match s {
        "infinity" => Some(i32::MAX),
        "-infinity" => Some(i32::MIN),
        _ => i32::try_from(parse_date_days(s)?).ok(),
    }
}

/// `HH:MM:SS[.ffffff]` → microseconds.
fn parse_time(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, ':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec = it.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let sec: i64 = whole.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut us: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..6 {
        us *= 10;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + us)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` → microseconds since 1970 (UTC for tz).
fn parse_timestamp(s: &str, tz: bool) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(s) => (s, true),
        None => (s, false),
    };
    let (date, time) = s.split_once(' ')?;
    let (time, offset) = if tz {
        let at = time.rfind(['+', '-'])?;
        let (t, o) = time.split_at(at);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let mut secs = 0i64;
        for (i, part) in o[1..].split(':').enumerate() {
            let v: i64 = part.parse().ok()?;
            secs += v * [3600, 60, 1].get(i)?;
        }
        (t, sign * secs)
    } else {
        (time, 0)
    };
    let days = parse_date_days(&format!("{date}{}", if bc { " BC" } else { "" }))?;
    let us = parse_time(time)?;
    Some(days * USECS_PER_DAY + us - offset * 1_000_000)
}

/// IntervalStyle `postgres`: `[N year[s]] [N mon[s]] [N day[s]] [[+-]HH:MM:SS[.f]]`.
fn parse_interval(s: &str) -> Option<IntervalMonthDayNano> {
    let (mut months, mut days, mut us) = (0i64, 0i64, 0i64);
    let mut words = s.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w.contains(':') {
            let (sign, t) = match w.as_bytes()[0] {
                b'-' => (-1, &w[1..]),
                b'+' => (1, &w[1..]),
                _ => (1, w),
            };
            // Hours may exceed 24 (and two digits).
            let (h, rest) = t.split_once(':')?;
            let h: i64 = h.parse().ok()?;
            let rest_us = parse_time(&format!("0:{rest}"))?;
            us += sign * (h * 3_600_000_000 + rest_us);
            continue;
        }
        let n: i64 = w.parse().ok()?;
        match words.next()? {
            "year" | "years" => months += n * 12,
            "mon" | "mons" => months += n,
            "day" | "days" => days += n,
            _ => return None,
        }
    }
    Some(IntervalMonthDayNano::new(
        i32::try_from(months).ok()?,
        i32::try_from(days).ok()?,
        us.checked_mul(1000)?,
    ))
}

fn format_date(days: i64, s: &mut String) {
    match days {
        d if d == i32::MAX as i64 => s.push_str("infinity"),
        d if d == i32::MIN as i64 => s.push_str("-infinity"),
        _ => {
            let (y, m, d) = civil_from_days(days);
            let (y, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
            let _ = write!(s, "{y:04}-{m:02}-{d:02}");
            if bc {
                s.push_str(" BC");
            }
        }
    }
}

fn format_time(us: i64, s: &mut String) {
    let (secs, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let _ = write!(
        s,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
}

fn format_timestamp(us: i64, tz: bool, s: &mut String) {
    if us == i64::MAX || us == i64::MIN {
        s.push_str(if us == i64::MAX {
            "infinity"
        } else {
            "-infinity"
        });
        return;
    }
    let days = us.div_euclid(USECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (yy, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
    let _ = write!(s, "{yy:04}-{m:02}-{d:02} ");
    format_time(us.rem_euclid(USECS_PER_DAY), s);
    if tz {
        s.push_str("+00");
    }
    if bc {
        s.push_str(" BC");
    }
}

fn format_interval(months: i32, days: i32, us: i64, s: &mut String) {
    let plural = |n: i64| if n == 1 { "" } else { "s" };
    let (y, mo) = (months as i64 / 12, months as i64 % 12);
    let mut parts = Vec::new();
    if y != 0 {
        parts.push(format!("{y} year{}", plural(y)));
    }
    if mo != 0 {
        parts.push(format!("{mo} mon{}", plural(mo)));
    }
    if days != 0 {
        parts.push(format!("{days} day{}", plural(days as i64)));
    }
    if us != 0 || parts.is_empty() {
        let mut t = String::new();
        let neg = us < 0;
        format_time(us.abs() % USECS_PER_DAY, &mut t);
        let hours = us.abs() / 3_600_000_000;
        let rest = t.split_once(':').map(|(_, r)| r).unwrap_or("00:00");
        let sign = if neg {
            "-"
        } else if !parts.is_empty() && (months < 0 || days < 0) {
            "+"
        } else {
            ""
        };
        parts.push(format!("{sign}{hours:02}:{rest}"));
    }
    s.push_str(&parts.join(" "));
}

/// Binary numeric → its text, as PostgreSQL prints it.
fn numeric_to_text(c: &[u8], s: &mut String) -> Option<()> {
    let h = |i: usize| c.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ndigits = h(0)? as usize;
    let weight = h(2)? as i16 as i64;
    let sign = h(4)?;
    let dscale = h(6)? as i64;
    match sign {
        0xC000 => {
            s.push_str("NaN");
            return Some(());
        }
        0xD000 => {
            s.push_str("Infinity");
            return Some(());
        }
        0xF000 => {
            s.push_str("-Infinity");
            return Some(());
        }
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<i64> = (0..ndigits)
        .map(|i| h(8 + 2 * i).map(|d| d as i64))
        .collect::<Option<_>>()?;
    if digits.iter().any(|&d| d > 9999) {
        return None;
    }
    if sign == 0x4000 {
        s.push('-');
    }
    // Integer part: groups 0..=weight.
    if weight < 0 {
        s.push('0');
    } else {
        for g in 0..=weight {
            let d = digits.get(g as usize).copied().unwrap_or(0);
            if g == 0 {
                let _ = write!(s, "{d}");
            } else {
                let _ = write!(s, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut g = weight + 1;
        while (frac.len() as i64) < dscale {
            let d = if g >= 0 {
                digits.get(g as usize).copied().unwrap_or(0)
            } else {
                0
            };
            let _ = write!(frac, "{d:04}");
            g += 1;
        }
        s.push_str(&frac[..dscale as usize]);
    }
    Some(())
}

/// Numeric text → PostgreSQL's binary numeric.
fn numeric_to_binary(v: &str, out: &mut Vec<u8>) -> Option<()> {
    let special = match v {
        "NaN" => Some(0xC000u16),
        "Infinity" => Some(0xD000),
        "-Infinity" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        for x in [0u16, 0, sign, 0] {
            out.extend_from_slice(&x.to_be_bytes());
        }
        return Some(());
    }
    let (neg, v) = match v.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, v.strip_prefix('+').unwrap_or(v)),
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let dscale = frac.len() as u16;
    let int = int.trim_start_matches('0');
    // Pad the integer part on the left and the fraction on the right to groups of 4.
    let pad_l = (4 - int.len() % 4) % 4;
    let pad_r = (4 - frac.len() % 4) % 4;
    let all: String = "0".repeat(pad_l) + int + frac + &"0".repeat(pad_r);
    let mut groups: Vec<u16> = all
        .as_bytes()
        .chunks(4)
        .map(|g| std::str::from_utf8(g).ok()?.parse().ok())
        .collect::<Option<_>>()?;
    let mut weight = ((int.len() + pad_l) / 4) as i64 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign: u16 = if neg && !groups.is_empty() { 0x4000 } else { 0 };
    out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_text(kind: Kind, values: &[&str]) {
        let cells: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_bytes())).collect();
        let styles = Styles {
            iso_dates: true,
            postgres_intervals: true,
        };
        let t = PgType {
            kind,
            element: None,
        };
        let a = decode_column(t, false, &cells, styles).unwrap();
        for (i, v) in values.iter().enumerate() {
            let mut out = Vec::new();
            encode_value(t, false, a.as_ref(), i, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), *v, "{kind:?}");
        }
    }

    #[test]
    fn text_values_round_trip() {
        roundtrip_text(Kind::Int4, &["0", "-2147483648", "42"]);
        roundtrip_text(Kind::Float8, &["1.5", "NaN", "-Infinity", "0.1"]);
        roundtrip_text(Kind::Date, &["2024-02-29", "0044-03-15 BC", "infinity"]);
        roundtrip_text(Kind::Time, &["00:00:00", "23:59:59.5", "12:00:00.000001"]);
        roundtrip_text(
            Kind::Timestamp,
            &[
                "2024-01-02 03:04:05.123456",
                "1970-01-01 00:00:00",
                "-infinity",
            ],
        );
        roundtrip_text(Kind::TimestampTz, &["2024-01-02 03:04:05+00"]);
        roundtrip_text(
            Kind::Interval,
            &[
                "1 year 2 mons 3 days 04:05:06.5",
                "00:00:00",
                "-1 days +02:00:00",
                "-00:00:01",
            ],
        );
        roundtrip_text(Kind::Uuid, &["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]);
        roundtrip_text(Kind::Bytea, &["\\x00ff10"]);
    }

    #[test]
    fn text_arrays_round_trip() {
        let styles = Styles {
            iso_dates: true,
            postgres_intervals: true,
        };
        for (oid, v) in [
            (1009, r#"{"x y",NULL,é,"","NULL",a}"#),
            (1007, "{1,2,NULL}"),
            (1007, "{}"),
            (1009, r#"{"a\\b","q\"t"}"#),
        ] {
            let t = PgType::of(oid);
            let a = decode_column(t, false, &[Some(v.as_bytes()), None], styles).unwrap();
            assert!(a.is_null(1));
            let mut out = Vec::new();
            encode_value(t, false, a.as_ref(), 0, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), v);
        }
        assert!(decode_column(PgType::of(1007), false, &[Some(b"{{1},{2}}")], styles).is_err());
        assert!(decode_column(PgType::of(1007), false, &[Some(b"[0:1]={1,2}")], styles).is_err());
    }

    #[test]
    fn timestamptz_offsets_become_utc() {
        let a = parse_timestamp("2024-01-02 03:04:05+05:30", true).unwrap();
        let b = parse_timestamp("2024-01-01 21:34:05+00", true).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn binary_numeric_both_ways() {
        for v in [
            "0",
            "1",
            "-12345.678",
            "0.0001",
            "10000",
            "123456789.000000001",
            "NaN",
        ] {
            let mut bin = Vec::new();
            numeric_to_binary(v, &mut bin).unwrap();
            let mut text = String::new();
            numeric_to_text(&bin, &mut text).unwrap();
            assert_eq!(text, v);
        }
    }

    #[test]
    fn text_columns_are_checked_as_utf8_value_by_value() {
        let styles = Styles {
            iso_dates: true,
            postgres_intervals: true,
        };
        let text = PgType::of(25);
        let ok = decode_column(
            text,
            false,
            &[Some("é".as_bytes()), None, Some(b"")],
            styles,
        )
        .unwrap();
        let ok = ok.as_string::<i32>();
        assert_eq!((ok.value(0), ok.is_null(1), ok.value(2)), ("é", true, ""));
        for binary in [false, true] {
            // Not UTF-8; and "é" split across two values, valid only back to back.
            for cells in [&[Some(&b"a\xff"[..])][..], &[Some(b"\xc3"), Some(b"\xa9")]] {
                let e = decode_column(text, binary, cells, styles).unwrap_err();
                assert!(e.contains("not valid UTF-8"), "{e}");
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let styles = Styles {
            iso_dates: true,
            postgres_intervals: true,
        };
        for kind in [
            Kind::Bool,
            Kind::Int2,
            Kind::Float4,
            Kind::Date,
            Kind::Timestamp,
            Kind::TimestampTz,
            Kind::Interval,
            Kind::Uuid,
            Kind::Numeric,
            Kind::Time,
        ] {
            for binary in [false, true] {
                for junk in [&b"\xff\xfe"[..], b"", b"x:y:z", b"99999999999999999999"] {
                    let _ = decode_scalar(kind, binary, &[Some(junk)], styles);
                    let _ = decode_column(PgType::of(1007), binary, &[Some(junk)], styles);
                }
            }
        }
    }
}
