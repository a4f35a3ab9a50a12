//! Arrow helpers for `on_batch` (cargo feature `arrow`): decode the batch the gateway sends,
//! transform string columns, encode the replacement.
//!
//! The gateway calls `on_batch` with one Arrow IPC *stream* holding exactly one record batch:
//! the columns the plugin named in `on_result_schema`, in result order, each field named as the
//! client sees the column. [`read_batch`] decodes it, [`map_strings`] (or the allocation-free
//! [`map_strings_into`], [`map_nullable_strings_into`] when a value may become NULL, and
//! [`map_strings_fixed_ascii`] when every new value is fixed-width ASCII, such as a hash,
//! [`map_strings_shrinking`] when no new value is longer than the old one, such as a mask),
//! [`map_list_values`] (the elements of array columns) and [`replace_column`] change it,
//! [`write_batch`] encodes the answer
//! for [`BatchResult::Replace`]; [`transform_batch`] does all of that around one closure and
//! fails closed on any error.
//!
//! A replacement is the received batch with some columns replaced: same columns, same order,
//! same number of rows. The client has already been told each column's PostgreSQL type, so a
//! replaced column should keep the Arrow data type it arrived with (a masked `Utf8` stays
//! `Utf8`).
//!
//! Errors are `String`s that say what is wrong, ready for a log line or an abort message. The
//! Arrow crates are re-exported ([`arrow_array`], [`arrow_schema`], [`arrow_buffer`]), so a
//! plugin needs no Arrow dependency of its own, and no version of its own to keep in step.
//!
//! See the crate documentation, "Result batches", for a complete plugin.

use crate::sqlstate;
use crate::types::{BatchResult, Deny};
use arrow_array::builder::{BooleanBufferBuilder, StringViewBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{GenericStringArray, OffsetSizeTrait, RecordBatchOptions};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{read_record_batch, RecordBatchDecoder};
use arrow_ipc::writer::StreamWriter;
use arrow_ipc::{root_as_message, Message};
use arrow_schema::ArrowError;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

pub use arrow_array;
pub use arrow_array::{Array, ArrayRef, LargeStringArray, RecordBatch, StringArray};
pub use arrow_buffer;
pub use arrow_schema;
pub use arrow_schema::{DataType, Field, Schema, SchemaRef};

thread_local! {
    /// The bytes of the batch the gateway passed to the `on_batch` call running now, set only
    /// by the component glue around that call (see [`from_gateway`]).
    static FROM_GATEWAY: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Calls `f` with `bytes`, the batch the gateway sent to `on_batch`, marked as the gateway's
/// for [`read_batch`] until `f` returns.
///
/// The gateway builds every batch it sends from arrays it has validated itself (a text column's
/// UTF-8 is checked before its array exists, offsets come from Arrow's builders), so the SDK
/// does not validate those exact bytes a second time, and their arrays share the bytes instead
/// of a copy. Any other bytes given to [`read_batch`] (a copy, a slice, a test's batch) are
/// validated in full.
#[cfg_attr(not(any(target_arch = "wasm32", test)), allow(dead_code))]
pub(crate) fn from_gateway<R>(bytes: Vec<u8>, f: impl FnOnce(&[u8]) -> R) -> R {
    /// Unmarks the bytes however `f` ends.
    struct Unmark;
    impl Drop for Unmark {
        fn drop(&mut self) {
            FROM_GATEWAY.with(|g| g.borrow_mut().take());
        }
    }
    let buffer = Buffer::from_vec(bytes);
    FROM_GATEWAY.with(|g| *g.borrow_mut() = Some(buffer.clone()));
    let _unmark = Unmark;
    f(buffer.as_slice())
}

/// The gateway's buffer when `ipc` is exactly the batch of the running `on_batch`.
fn gateway_buffer(ipc: &[u8]) -> Option<Buffer> {
    FROM_GATEWAY.with(|g| {
        g.borrow()
            .as_ref()
            .filter(|b| b.as_ptr() == ipc.as_ptr() && b.len() == ipc.len())
            .cloned()
    })
}

/// Decodes the Arrow IPC stream `on_batch` receives into its one record batch.
///
/// Fails when the bytes are not an IPC stream, hold no batch or more than one, or hold
/// dictionary batches (the gateway does not dictionary-encode columns).
///
/// Given the very bytes `on_batch` received, the arrays share them (no copy) and their values
/// are not validated again: the gateway validated them when it built the batch (a host of
/// the `pgward:plugin` contract must only send batches Arrow's own validation accepts). Other bytes
/// are copied once and validated in full (offsets within bounds, UTF-8 of text columns), so a
/// malformed stream is an error, never a bad array.
pub fn read_batch(ipc: &[u8]) -> Result<RecordBatch, String> {
    // The stream is walked here rather than with `arrow_ipc::reader::StreamReader`, whose
    // support for delta dictionaries links arrow-select: a component of 1.78 MB instead of 0.95.
    let mut messages = Messages { rest: ipc };
    let (message, _) = messages
        .next()?
        .ok_or("batch is not an Arrow IPC stream: it is empty")?;
    let schema = message
        .header_as_schema()
        .ok_or_else(|| {
            format!(
                "batch is not an Arrow IPC stream: it starts with a {:?} message, not a schema",
                message.header_type()
            )
        })
        .and_then(|s| {
            try_fb_to_schema(s).map_err(|e| format!("Arrow IPC stream has an invalid schema: {e}"))
        })?;
    let schema = Arc::new(schema);
    let (message, body) = messages
        .next()?
        .ok_or("Arrow IPC stream holds no record batch (expected exactly one)")?;
    let Some(header) = message.header_as_record_batch() else {
        return Err(format!(
            "Arrow IPC stream holds a {:?} message where a record batch was expected",
            message.header_type()
        ));
    };
    let no_dictionaries = HashMap::new();
    let version = message.version();
    let batch = match gateway_buffer(ipc) {
        Some(whole) => {
            // The body is a slice of the gateway's bytes: the arrays share it.
            let body =
                whole.slice_with_length(body.as_ptr() as usize - ipc.as_ptr() as usize, body.len());
            let mut skip = arrow_data::UnsafeFlag::new();
            // SAFETY: these are the exact bytes the gateway sent to the running `on_batch`
            // (`from_gateway`), encoded by arrow-ipc from arrays the gateway built with
            // validation; the metadata was still verified (`root_as_message`), and buffers
            // that are not aligned for their type are still copied.
            #[allow(unsafe_code)]
            unsafe {
                skip.set(true)
            };
            RecordBatchDecoder::try_new(&body, header, schema, &no_dictionaries, &version)
                .map(|d| d.with_require_alignment(false).with_skip_validation(skip))
                .and_then(|d| d.read_record_batch())
        }
        None => {
            // Copies the body once, into an aligned buffer the arrays then share.
            let body = Buffer::from(body);
            read_record_batch(&body, header, schema, &no_dictionaries, None, &version)
        }
    }
    .map_err(|e| format!("Arrow IPC stream holds an invalid batch: {e}"))?;
    match messages.next()? {
        None => Ok(batch),
        Some((m, _)) if m.header_as_record_batch().is_some() => Err(
            "Arrow IPC stream holds more than one record batch (expected exactly one)".to_owned(),
        ),
        Some((m, _)) => Err(format!(
            "Arrow IPC stream holds a {:?} message after its record batch",
            m.header_type()
        )),
    }
}

/// The encapsulated messages of an IPC stream held in memory.
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    /// The next message and its body; `None` at the end-of-stream marker or the end of the bytes.
    fn next(&mut self) -> Result<Option<(Message<'a>, &'a [u8])>, String> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let mut len = self.take(4)?;
        // 0xFFFFFFFF then the length; a bare length is the pre-1.0 framing, still valid.
        if len == [0xff; 4] {
            len = self.take(4)?;
        }
        let len = i32::from_le_bytes(len.try_into().expect("4 bytes"));
        if len == 0 {
            if !self.rest.is_empty() {
                return Err(format!(
                    "Arrow IPC stream has {} bytes after its end-of-stream marker",
                    self.rest.len()
                ));
            }
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| format!("Arrow IPC stream has a message of length {len}"))?;
        let metadata = self.take(len)?;
        let message = root_as_message(metadata)
            .map_err(|e| format!("Arrow IPC stream has an invalid message: {e}"))?;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| {
            format!(
                "Arrow IPC stream has a body of {} bytes",
                message.bodyLength()
            )
        })?;
        Ok(Some((message, self.take(body_len)?)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!(
                "Arrow IPC stream is truncated: {n} bytes expected, {} left",
                self.rest.len()
            ));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
}

/// Encodes `batch` as an Arrow IPC stream (schema, the batch, end-of-stream marker), the form
/// [`BatchResult::Replace`] carries.
pub fn write_batch(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let error = |e: ArrowError| format!("cannot encode the batch as an Arrow IPC stream: {e}");
    let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref()).map_err(error)?;
    writer.write(batch).map_err(error)?;
    writer.finish().map_err(error)?;
    writer.into_inner().map_err(error)
}

/// A new string array holding `f(value)` for every value of `array`; nulls stay null and `f` is
/// not called for them.
///
/// `array` must be `Utf8`, `LargeUtf8` or `Utf8View`; the result has the same data type and
/// length. Return `Cow::Borrowed(value)` from `f` to keep a value. Every `Cow::Owned` is an
/// allocation, which inside a plugin costs more than the rewrite itself: on hot paths prefer
/// [`map_strings_into`].
pub fn map_strings(
    array: &dyn Array,
    mut f: impl FnMut(&str) -> Cow<'_, str>,
) -> Result<ArrayRef, String> {
    map_strings_into(array, |value, out| out.push_str(&f(value)))
}

/// Like [`map_strings`], without an allocation per value: `f` appends the new value to `out`,
/// which is empty on each call (one buffer reused for the whole array).
///
/// Masking 4096 addresses this way takes less than half the time of returning a new `String` per
/// value, natively and in a plugin.
pub fn map_strings_into(
    array: &dyn Array,
    mut f: impl FnMut(&str, &mut String),
) -> Result<ArrayRef, String> {
    map_nullable_strings_into(array, |value, out| {
        f(value, out);
        true
    })
}

/// Like [`map_strings_into`], but `f` may also turn a value into NULL: it appends the new
/// value to `out` and returns `true`, or returns `false` for NULL (whatever it appended is
/// dropped). Nulls stay null and `f` is not called for them.
///
/// For policies that must sometimes withhold a whole value, such as a masking strategy that
/// replaces a value with NULL. One buffer is reused for the whole array, as in
/// [`map_strings_into`].
pub fn map_nullable_strings_into(
    array: &dyn Array,
    mut f: impl FnMut(&str, &mut String) -> bool,
) -> Result<ArrayRef, String> {
    fn offsets<O: OffsetSizeTrait>(
        strings: &GenericStringArray<O>,
        f: &mut impl FnMut(&str, &mut String) -> bool,
    ) -> Result<GenericStringArray<O>, String> {
        let n = strings.len();
        let old = strings.value_offsets();
        let mut values = Vec::with_capacity(old[n].as_usize() - old[0].as_usize());
        let mut column = StringColumn::with_capacity(n);
        let mut out = String::new();
        for i in 0..n {
            let valid = strings.is_valid(i) && {
                out.clear();
                f(strings.value(i), &mut out)
            };
            if valid {
                values.extend_from_slice(out.as_bytes());
            }
            let end = O::from_usize(values.len()).ok_or_else(|| {
                format!(
                    "the new values of the column exceed {} bytes",
                    O::MAX_OFFSET
                )
            })?;
            column.push(end, valid);
        }
        // SAFETY: each offset is the length of `values` after a value was appended, and every
        // value appended is a whole `&str`. Validating it all again would cost as much as
        // building it.
        #[allow(unsafe_code)]
        Ok(unsafe { column.finish(values) })
    }
    match array.data_type() {
        DataType::Utf8 => Ok(Arc::new(offsets(array.as_string::<i32>(), &mut f)?)),
        DataType::LargeUtf8 => Ok(Arc::new(offsets(array.as_string::<i64>(), &mut f)?)),
        DataType::Utf8View => {
            let strings = array.as_string_view();
            let mut builder = StringViewBuilder::with_capacity(strings.len());
            let mut out = String::new();
            for value in strings {
                match value {
                    Some(s) => {
                        out.clear();
                        if f(s, &mut out) {
                            builder.append_value(&out);
                        } else {
                            builder.append_null();
                        }
                    }
                    None => builder.append_null(),
                }
            }
            Ok(Arc::new(builder.finish()))
        }
        other => Err(not_a_string_column(other)),
    }
}

/// Like [`map_nullable_strings_into`] for a transform whose every new value is exactly
/// `width` ASCII bytes (a fixed-width pseudonym, a hex digest): `f` fills `out`, which is
/// `width` bytes long and part of the new column, and returns `true`, or returns `false` for
/// NULL. `out` starts with unspecified bytes (zeros, or what a call that returned `false`
/// left), so `f` must write all of it. Nulls stay null and `f` is not called for them.
///
/// No value is copied or checked one by one (for `Utf8` and `LargeUtf8`, the types the
/// gateway sends; `Utf8View` goes value by value): each is written where it ends up, and the
/// new column is checked to be ASCII once, in bulk. Masking with a keyed hash this way costs about
/// two thirds of what [`map_nullable_strings_into`] does in a plugin. Fails, and the batch
/// with it, if `f` wrote a byte that is not ASCII.
///
/// ```
/// # use pgward_plugin_sdk::arrow::*;
/// # use pgward_plugin_sdk::arrow::arrow_array::cast::AsArray;
/// let emails = StringArray::from(vec![Some("ada@example.com"), None, Some("bob@example.com")]);
/// let masked = map_strings_fixed_ascii(&emails, 4, |email, out| {
///     out.copy_from_slice(format!("{:04x}", email.len()).as_bytes());
///     true
/// })
/// .unwrap();
/// let masked = masked.as_string::<i32>();
/// assert_eq!(masked.value(0), "000f");
/// assert!(masked.is_null(1));
/// ```
pub fn map_strings_fixed_ascii(
    array: &dyn Array,
    width: usize,
    mut f: impl FnMut(&str, &mut [u8]) -> bool,
) -> Result<ArrayRef, String> {
    fn fixed<O: OffsetSizeTrait>(
        strings: &GenericStringArray<O>,
        width: usize,
        f: &mut impl FnMut(&str, &mut [u8]) -> bool,
    ) -> Result<GenericStringArray<O>, String> {
        let n = strings.len();
        let too_large = || {
            format!(
                "the new values of the column exceed {} bytes",
                O::MAX_OFFSET
            )
        };
        let total = n.checked_mul(width).ok_or_else(too_large)?;
        O::from_usize(total).ok_or_else(too_large)?;
        let mut values = vec![0u8; total];
        let mut column = StringColumn::with_capacity(n);
        let mut end = 0;
        for i in 0..n {
            let valid = strings.is_valid(i) && f(strings.value(i), &mut values[end..end + width]);
            if valid {
                end += width;
            }
            // At most `total`, which fits.
            column.push(O::usize_as(end), valid);
        }
        values.truncate(end);
        if !values.is_ascii() {
            return Err("a new value is not ASCII".to_owned());
        }
        // SAFETY: the offsets grow by `width` per value up to `values.len()`, and `values` is
        // ASCII (checked above), so every value is UTF-8.
        #[allow(unsafe_code)]
        Ok(unsafe { column.finish(values) })
    }
    match array.data_type() {
        DataType::Utf8 => Ok(Arc::new(fixed(array.as_string::<i32>(), width, &mut f)?)),
        DataType::LargeUtf8 => Ok(Arc::new(fixed(array.as_string::<i64>(), width, &mut f)?)),
        DataType::Utf8View => {
            let mut scratch = vec![0u8; width];
            let mut ascii = true;
            let mapped = map_nullable_strings_into(array, |value, out| {
                if !f(value, &mut scratch) {
                    return false;
                }
                match std::str::from_utf8(&scratch) {
                    Ok(text) if text.is_ascii() => out.push_str(text),
                    _ => ascii = false,
                }
                true
            })?;
            if !ascii {
                return Err("a new value is not ASCII".to_owned());
            }
            Ok(mapped)
        }
        other => Err(not_a_string_column(other)),
    }
}

/// Like [`map_nullable_strings_into`] for a transform whose new value is never longer than
/// the old one (masking characters with `*`, cutting a value short): `f` writes the new value
/// at the start of `out`, which is as long as the old value, starts with unspecified bytes and
/// is part of the new column, and returns how many bytes it wrote, or `None` for NULL. Nulls
/// stay null and `f` is not called for them.
///
/// Values are written where they end up (for `Utf8` and `LargeUtf8`, the types the gateway
/// sends; `Utf8View` goes value by value), and the new column's UTF-8 is checked once for the
/// whole column. Fails, and the batch with it, if `f` claims more bytes than `out` has or
/// wrote something that is not UTF-8.
///
/// ```
/// # use pgward_plugin_sdk::arrow::*;
/// # use pgward_plugin_sdk::arrow::arrow_array::cast::AsArray;
/// let cards = StringArray::from(vec![Some("4111 1111 1111 1111"), None]);
/// let masked = map_strings_shrinking(&cards, |card, out| {
///     let (hide, show) = card.as_bytes().split_at(card.len().saturating_sub(4));
///     let (hidden, shown) = out.split_at_mut(hide.len());
///     for (o, &c) in hidden.iter_mut().zip(hide) {
///         *o = if c == b' ' { b' ' } else { b'*' };
///     }
///     shown.copy_from_slice(show);
///     Some(card.len())
/// })
/// .unwrap();
/// assert_eq!(masked.as_string::<i32>().value(0), "**** **** **** 1111");
/// assert!(masked.is_null(1));
/// ```
pub fn map_strings_shrinking(
    array: &dyn Array,
    mut f: impl FnMut(&str, &mut [u8]) -> Option<usize>,
) -> Result<ArrayRef, String> {
    fn shrink<O: OffsetSizeTrait>(
        strings: &GenericStringArray<O>,
        f: &mut impl FnMut(&str, &mut [u8]) -> Option<usize>,
    ) -> Result<GenericStringArray<O>, String> {
        let n = strings.len();
        let old = strings.value_offsets();
        let mut values = vec![0u8; old[n].as_usize() - old[0].as_usize()];
        let mut column = StringColumn::with_capacity(n);
        let mut end = 0;
        for i in 0..n {
            let wrote = if strings.is_valid(i) {
                let value = strings.value(i);
                let room = value.len();
                f(value, &mut values[end..end + room])
                    .map(|wrote| {
                        if wrote <= room {
                            Ok(wrote)
                        } else {
                            Err(format!(
                                "a new value claims {wrote} bytes where the old one had {room}"
                            ))
                        }
                    })
                    .transpose()?
            } else {
                None
            };
            end += wrote.unwrap_or(0);
            // Never past the old values' length, which fits.
            column.push(O::usize_as(end), wrote.is_some());
        }
        values.truncate(end);
        // One check for the column; then every value must start and end on a character.
        let text =
            std::str::from_utf8(&values).map_err(|e| format!("a new value is not UTF-8: {e}"))?;
        if !column
            .offsets
            .iter()
            .all(|o| text.is_char_boundary(o.as_usize()))
        {
            return Err("a new value ends inside a UTF-8 character".to_owned());
        }
        // SAFETY: the offsets never decrease and end at `values.len()`; `values` is UTF-8 and
        // every offset is a character boundary in it (checked above).
        #[allow(unsafe_code)]
        Ok(unsafe { column.finish(values) })
    }
    match array.data_type() {
        DataType::Utf8 => Ok(Arc::new(shrink(array.as_string::<i32>(), &mut f)?)),
        DataType::LargeUtf8 => Ok(Arc::new(shrink(array.as_string::<i64>(), &mut f)?)),
        DataType::Utf8View => {
            let mut scratch = Vec::new();
            let mut error = None;
            let mapped = map_nullable_strings_into(array, |value, out| {
                scratch.clear();
                scratch.resize(value.len(), 0);
                let Some(wrote) = f(value, &mut scratch) else {
                    return false;
                };
                match scratch.get(..wrote).map(std::str::from_utf8) {
                    Some(Ok(text)) => out.push_str(text),
                    Some(Err(e)) => error = Some(format!("a new value is not UTF-8: {e}")),
                    None => {
                        error = Some(format!(
                            "a new value claims {wrote} bytes where the old one had {}",
                            value.len()
                        ))
                    }
                }
                true
            })?;
            match error {
                Some(e) => Err(e),
                None => Ok(mapped),
            }
        }
        other => Err(not_a_string_column(other)),
    }
}

fn not_a_string_column(found: &DataType) -> String {
    format!("expected a string column (Utf8, LargeUtf8 or Utf8View), found {found}")
}

/// The offsets and validity of a new string column built value by value; its bytes are the
/// caller's.
struct StringColumn<O> {
    offsets: Vec<O>,
    /// Built only once a value is NULL.
    nulls: Option<BooleanBufferBuilder>,
    /// How many values the column will have.
    len: usize,
}

impl<O: OffsetSizeTrait> StringColumn<O> {
    fn with_capacity(len: usize) -> Self {
        let mut offsets = Vec::with_capacity(len + 1);
        offsets.push(O::default());
        StringColumn {
            offsets,
            nulls: None,
            len,
        }
    }

    /// The next value ends at `end` in the column's bytes; a NULL (`valid` false) ends where
    /// the value before it did.
    fn push(&mut self, end: O, valid: bool) {
        if valid {
            if let Some(nulls) = &mut self.nulls {
                nulls.append(true);
            }
        } else {
            let before = self.offsets.len() - 1;
            let len = self.len;
            self.nulls
                .get_or_insert_with(|| {
                    let mut b = BooleanBufferBuilder::new(len);
                    b.append_n(before, true);
                    b
                })
                .append(false);
        }
        self.offsets.push(end);
    }

    /// The column over `values`.
    ///
    /// # Safety
    ///
    /// The offsets pushed never decrease, the last is `values.len()`, and the bytes between
    /// every two of them are valid UTF-8.
    #[allow(unsafe_code)]
    unsafe fn finish(self, values: Vec<u8>) -> GenericStringArray<O> {
        let nulls = self.nulls.map(|mut b| NullBuffer::new(b.finish()));
        // SAFETY: the caller's promise, and one validity bit per value pushed.
        unsafe {
            GenericStringArray::<O>::new_unchecked(
                OffsetBuffer::new_unchecked(ScalarBuffer::from(self.offsets)),
                Buffer::from_vec(values),
                nulls,
            )
        }
    }
}

/// A list column (`List` or `LargeList`, the gateway's form of a PostgreSQL array) with its
/// element values replaced by `f(values)`: same offsets, same nulls, so every list keeps its
/// length. `f` gets the flat array of all elements and must return one of the same length.
///
/// ```
/// # use pgward_plugin_sdk::arrow::*;
/// # use pgward_plugin_sdk::arrow::arrow_array::{cast::AsArray, builder::{ListBuilder, StringBuilder}};
/// let mut b = ListBuilder::new(StringBuilder::new());
/// b.values().append_value("ada@example.com");
/// b.append(true);
/// b.append_null();
/// let lists = b.finish();
/// let masked = map_list_values(&lists, |items| map_strings_into(items, |_, out| out.push('*')))
///     .unwrap();
/// let masked = masked.as_list::<i32>();
/// assert_eq!(masked.value(0).as_string::<i32>().value(0), "*");
/// assert!(masked.is_null(1));
/// ```
pub fn map_list_values(
    array: &dyn Array,
    f: impl FnOnce(&ArrayRef) -> Result<ArrayRef, String>,
) -> Result<ArrayRef, String> {
    fn remap<O: OffsetSizeTrait>(
        list: &arrow_array::GenericListArray<O>,
        f: impl FnOnce(&ArrayRef) -> Result<ArrayRef, String>,
    ) -> Result<ArrayRef, String> {
        let values = f(list.values())?;
        if values.len() != list.values().len() {
            return Err(format!(
                "list elements were replaced by {} values, expected {}",
                values.len(),
                list.values().len()
            ));
        }
        let (DataType::List(field) | DataType::LargeList(field)) = list.data_type() else {
            unreachable!("a GenericListArray has a list type");
        };
        let field = Arc::new(
            field
                .as_ref()
                .clone()
                .with_data_type(values.data_type().clone())
                .with_nullable(field.is_nullable() || values.null_count() > 0),
        );
        arrow_array::GenericListArray::<O>::try_new(
            field,
            list.offsets().clone(),
            values,
            list.nulls().cloned(),
        )
        .map(|l| Arc::new(l) as ArrayRef)
        .map_err(|e| format!("cannot rebuild the list column: {e}"))
    }
    match array.data_type() {
        DataType::List(_) => remap(array.as_list::<i32>(), f),
        DataType::LargeList(_) => remap(array.as_list::<i64>(), f),
        other => Err(format!(
            "expected a list column (List or LargeList), found {other}"
        )),
    }
}

/// `batch` with column `index` replaced by `new`, which must have as many rows as the batch.
///
/// The field keeps its name and metadata; its data type becomes `new`'s, and it becomes
/// nullable if `new` holds nulls.
pub fn replace_column(
    batch: &RecordBatch,
    index: usize,
    new: ArrayRef,
) -> Result<RecordBatch, String> {
    replace(batch, index, new, None)
}

/// The field metadata key that names the class of data a plugin masked a column as (for
/// example `email`). The gateway reads it from the batch a plugin returns: the audit trail's
/// `result.masked` record and the `pgward_masked_values_total` metric name the class.
pub const CLASS_METADATA: &str = "pgward.class";

/// [`replace_column`], naming the class of data the new values mask under
/// [`CLASS_METADATA`] in the field's metadata.
pub fn replace_column_as(
    batch: &RecordBatch,
    index: usize,
    new: ArrayRef,
    class: &str,
) -> Result<RecordBatch, String> {
    replace(batch, index, new, Some(class))
}

fn replace(
    batch: &RecordBatch,
    index: usize,
    new: ArrayRef,
    class: Option<&str>,
) -> Result<RecordBatch, String> {
    let schema = batch.schema_ref();
    let Some(old) = schema.fields().get(index) else {
        return Err(format!(
            "cannot replace column {index}: the batch has {} columns",
            batch.num_columns()
        ));
    };
    if new.len() != batch.num_rows() {
        return Err(format!(
            "replacement for column {index} ({:?}) has {} rows, the batch has {}",
            old.name(),
            new.len(),
            batch.num_rows()
        ));
    }
    let mut field = old
        .as_ref()
        .clone()
        .with_data_type(new.data_type().clone())
        .with_nullable(old.is_nullable() || new.null_count() > 0);
    if let Some(class) = class {
        let mut metadata = field.metadata().clone();
        metadata.insert(CLASS_METADATA.to_owned(), class.to_owned());
        field = field.with_metadata(metadata);
    }
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields[index] = Arc::new(field);
    let mut columns = batch.columns().to_vec();
    columns[index] = new;
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(schema), columns, &options)
        .map_err(|e| format!("cannot replace column {index}: {e}"))
}

/// The whole of a typical `on_batch`: decodes `ipc`, hands the batch to `transform`, and encodes
/// what it returns. `Ok(None)` means nothing changed ([`BatchResult::Unchanged`]); `Ok(Some(b))`
/// replaces the batch with `b`; an error of the transform or of the decoding or encoding aborts
/// the result with SQLSTATE 58000 and the error text, so a plugin that cannot do its job never
/// lets the rows through unchanged.
pub fn transform_batch(
    ipc: &[u8],
    transform: impl FnOnce(RecordBatch) -> Result<Option<RecordBatch>, String>,
) -> BatchResult {
    let result = read_batch(ipc)
        .and_then(transform)
        .and_then(|b| b.as_ref().map(write_batch).transpose());
    match result {
        Ok(None) => BatchResult::Unchanged,
        Ok(Some(bytes)) => BatchResult::Replace(bytes),
        Err(e) => BatchResult::Abort(Deny::new(sqlstate::SYSTEM_ERROR, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, StringViewArray};

    fn emails() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("email", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![
                    Some("ada@example.com"),
                    None,
                    Some("ü@x"),
                ])),
            ],
        )
        .unwrap()
    }

    fn upper(s: &str) -> Cow<'_, str> {
        if s.bytes().any(|b| b.is_ascii_lowercase()) {
            Cow::Owned(s.to_ascii_uppercase())
        } else {
            Cow::Borrowed(s)
        }
    }

    #[test]
    fn a_written_batch_reads_back_equal() {
        let batch = emails();
        let ipc = write_batch(&batch).unwrap();
        assert_eq!(read_batch(&ipc).unwrap(), batch);
        assert_eq!(read_batch(&ipc).unwrap().schema(), batch.schema());
    }

    #[test]
    fn the_gateways_batch_is_read_in_place_and_any_other_bytes_are_validated() {
        let batch = emails();
        let ipc = write_batch(&batch).unwrap();
        let read = from_gateway(ipc.clone(), |bytes| {
            let read = read_batch(bytes).unwrap();
            let values = read.column(1).as_string::<i32>().values().as_ptr() as usize;
            let received = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
            assert!(received.contains(&values), "the values were copied");
            read
        });
        assert_eq!(read, batch);
        assert!(gateway_buffer(&ipc).is_none(), "the mark outlives the call");

        // Invalid UTF-8 in a text value: the same bytes, unless they are the very bytes
        // `on_batch` received, are refused.
        let mut corrupt = ipc.clone();
        let at = corrupt
            .windows(3)
            .position(|w| w == b"ada")
            .expect("the value is in the stream");
        corrupt[at] = 0xff;
        let err = from_gateway(ipc, |_| read_batch(&corrupt).unwrap_err());
        assert!(err.contains("invalid batch"), "{err}");
        // A copy of the gateway's bytes is not the gateway's.
        let err = from_gateway(corrupt.clone(), |bytes| {
            let copy = bytes.to_vec();
            read_batch(&copy).unwrap_err()
        });
        assert!(err.contains("invalid batch"), "{err}");
    }

    #[test]
    fn fixed_width_ascii_values_are_written_in_place_for_every_string_type() {
        let strings = [Some("ada@example.com"), None, Some("ü@x"), Some("")];
        let arrays: [ArrayRef; 3] = [
            Arc::new(StringArray::from(strings.to_vec())),
            Arc::new(LargeStringArray::from(strings.to_vec())),
            Arc::new(StringViewArray::from(strings.to_vec())),
        ];
        for array in arrays {
            // NULL for the empty value; whatever its call wrote is dropped.
            let mapped = map_strings_fixed_ascii(array.as_ref(), 3, |v, out| {
                out.copy_from_slice(format!("{:03}", v.len()).as_bytes());
                !v.is_empty()
            })
            .unwrap();
            assert_eq!(mapped.data_type(), array.data_type());
            let expected = map_nullable_strings_into(array.as_ref(), |v, out| {
                out.push_str(&format!("{:03}", v.len()));
                !v.is_empty()
            })
            .unwrap();
            assert_eq!(&mapped, &expected, "{}", array.data_type());
            assert_eq!(mapped.null_count(), 2);

            let err = map_strings_fixed_ascii(array.as_ref(), 2, |_, out| {
                out.copy_from_slice("é".as_bytes());
                true
            })
            .unwrap_err();
            assert!(err.contains("not ASCII"), "{err}");
        }
        let err = map_strings_fixed_ascii(&Int32Array::from(vec![1]), 4, |_, _| true).unwrap_err();
        assert!(err.contains("expected a string column"), "{err}");
    }

    #[test]
    fn shrinking_values_are_written_in_place_for_every_string_type() {
        let strings = [Some("ada@example.com"), None, Some("ü@xé"), Some("")];
        let arrays: [ArrayRef; 3] = [
            Arc::new(StringArray::from(strings.to_vec())),
            Arc::new(LargeStringArray::from(strings.to_vec())),
            Arc::new(StringViewArray::from(strings.to_vec())),
        ];
        // Every character but the last becomes `*`; the empty value becomes NULL.
        let star = |v: &str, out: &mut String| {
            let chars = v.chars().count();
            out.extend(std::iter::repeat_n('*', chars.saturating_sub(1)));
            out.extend(v.chars().last());
            !v.is_empty()
        };
        for array in arrays {
            let mapped = map_strings_shrinking(array.as_ref(), |v, out| {
                let mut new = String::new();
                star(v, &mut new).then(|| {
                    out[..new.len()].copy_from_slice(new.as_bytes());
                    new.len()
                })
            })
            .unwrap();
            let expected = map_nullable_strings_into(array.as_ref(), star).unwrap();
            assert_eq!(&mapped, &expected, "{}", array.data_type());
            if let Some(utf8) = mapped.as_string_opt::<i32>() {
                assert_eq!(utf8.value(2), "***é");
            }

            // Claiming more room than there is, or leaving half a character, fails.
            let err = map_strings_shrinking(array.as_ref(), |v, _| Some(v.len() + 1)).unwrap_err();
            assert!(err.contains("claims"), "{err}");
            let err = map_strings_shrinking(array.as_ref(), |v, out| {
                out.copy_from_slice(v.as_bytes());
                Some(if v.starts_with('ü') { 1 } else { v.len() })
            })
            .unwrap_err();
            assert!(err.contains("UTF-8"), "{err}");
        }
    }

    #[test]
    fn pre_1_0_framing_and_metadata_v4_are_read() {
        use arrow_ipc::writer::IpcWriteOptions;
        use arrow_ipc::MetadataVersion;
        let batch = emails();
        let options = IpcWriteOptions::try_new(8, true, MetadataVersion::V4).unwrap();
        let mut writer =
            StreamWriter::try_new_with_options(Vec::new(), batch.schema_ref(), options).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let ipc = writer.into_inner().unwrap();
        assert_ne!(
            ipc[..4],
            [0xff; 4],
            "legacy framing has no continuation marker"
        );
        assert_eq!(read_batch(&ipc).unwrap(), batch);
    }

    #[test]
    fn reading_names_what_is_wrong_with_the_stream() {
        let err = read_batch(b"not arrow").unwrap_err();
        assert!(err.starts_with("Arrow IPC stream is truncated"), "{err}");
        let err = read_batch(&[]).unwrap_err();
        assert!(err.contains("it is empty"), "{err}");

        let batch = emails();
        let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref()).unwrap();
        writer.finish().unwrap();
        let empty = writer.into_inner().unwrap();
        let err = read_batch(&empty).unwrap_err();
        assert!(err.contains("no record batch"), "{err}");

        let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref()).unwrap();
        writer.write(&batch).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let two = writer.into_inner().unwrap();
        let err = read_batch(&two).unwrap_err();
        assert!(err.contains("more than one record batch"), "{err}");

        let ipc = write_batch(&batch).unwrap();
        let err = read_batch(&ipc[..ipc.len() - 20]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let mut trailing = ipc.clone();
        trailing.push(0);
        let err = read_batch(&trailing).unwrap_err();
        assert!(err.contains("after its end-of-stream marker"), "{err}");
        // Without the end-of-stream marker the stream ends with the bytes (the format allows it).
        assert_eq!(read_batch(&ipc[..ipc.len() - 8]).unwrap(), batch);
        let err = read_batch(&ipc[8..]).unwrap_err();
        assert!(err.starts_with("Arrow IPC stream"), "{err}");
    }

    #[test]
    fn reading_refuses_a_batch_before_its_schema_and_dictionaries() {
        use arrow_array::types::Int32Type;
        use arrow_array::DictionaryArray;
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let batch = RecordBatch::try_from_iter([("d", Arc::new(dict) as ArrayRef)]).unwrap();
        let err = read_batch(&write_batch(&batch).unwrap()).unwrap_err();
        assert!(
            err.contains("DictionaryBatch message where a record batch"),
            "{err}"
        );

        // A schema message alone twice: the second is not a batch.
        let schema = emails().schema();
        let mut writer = StreamWriter::try_new(Vec::new(), &schema).unwrap();
        writer.finish().unwrap();
        let only_schema = writer.into_inner().unwrap();
        let schema_len = only_schema.len() - 8;
        let mut twice = only_schema[..schema_len].to_vec();
        twice.extend_from_slice(&only_schema);
        let err = read_batch(&twice).unwrap_err();
        assert!(err.contains("Schema message where a record batch"), "{err}");
    }

    #[test]
    fn mapping_strings_keeps_nulls_and_type() {
        let batch = emails();
        let mut calls = 0;
        let mapped = map_strings(batch.column(1).as_ref(), |s| {
            calls += 1;
            upper(s)
        })
        .unwrap();
        assert_eq!(calls, 2, "f is not called for nulls");
        assert_eq!(mapped.data_type(), &DataType::Utf8);
        let mapped = mapped.as_string::<i32>();
        assert_eq!(
            mapped.iter().collect::<Vec<_>>(),
            [Some("ADA@EXAMPLE.COM"), None, Some("ü@X")]
        );
    }

    #[test]
    fn mapping_works_on_large_view_and_sliced_strings() {
        let large = LargeStringArray::from(vec![Some("a"), None]);
        let mapped = map_strings(&large, upper).unwrap();
        assert_eq!(mapped.data_type(), &DataType::LargeUtf8);
        assert_eq!(
            mapped.as_string::<i64>().iter().collect::<Vec<_>>(),
            [Some("A"), None]
        );

        let view = StringViewArray::from(vec![Some("a much longer string than twelve"), None]);
        let mapped = map_strings(&view, upper).unwrap();
        assert_eq!(mapped.data_type(), &DataType::Utf8View);
        assert_eq!(
            mapped.as_string_view().value(0),
            "A MUCH LONGER STRING THAN TWELVE"
        );
        assert!(mapped.is_null(1));

        let sliced = StringArray::from(vec!["x", "y", "z"]).slice(1, 2);
        let mapped = map_strings(&sliced, upper).unwrap();
        assert_eq!(
            mapped.as_string::<i32>().iter().collect::<Vec<_>>(),
            [Some("Y"), Some("Z")]
        );
    }

    #[test]
    fn mapping_into_a_reused_buffer_sees_it_empty_each_time() {
        let batch = emails();
        for array in [
            batch.column(1).clone(),
            Arc::new(LargeStringArray::from(vec![Some("ab"), None, Some("c")])) as ArrayRef,
            Arc::new(StringViewArray::from(vec![Some("ab"), None, Some("c")])) as ArrayRef,
        ] {
            let mapped = map_strings_into(&array, |s, out| {
                assert!(out.is_empty());
                out.push_str(s);
                out.push('!');
            })
            .unwrap();
            assert_eq!(mapped.data_type(), array.data_type());
            assert_eq!(mapped.len(), 3);
            assert!(mapped.is_null(1));
        }
        let first = |s: &str, out: &mut String| out.extend(s.chars().next());
        let mapped = map_strings_into(batch.column(1), first).unwrap();
        assert_eq!(
            mapped.as_string::<i32>().iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("ü")]
        );
    }

    #[test]
    fn nullable_mapping_can_withhold_values() {
        for array in [
            Arc::new(StringArray::from(vec![Some("keep"), None, Some("drop")])) as ArrayRef,
            Arc::new(LargeStringArray::from(vec![
                Some("keep"),
                None,
                Some("drop"),
            ])) as ArrayRef,
            Arc::new(StringViewArray::from(vec![
                Some("keep"),
                None,
                Some("drop"),
            ])) as ArrayRef,
        ] {
            let mut calls = 0;
            let mapped = map_nullable_strings_into(&array, |s, out| {
                calls += 1;
                assert!(out.is_empty());
                out.push_str(s);
                out.push('!');
                s != "drop"
            })
            .unwrap();
            assert_eq!(calls, 2, "f is not called for nulls");
            assert_eq!(mapped.data_type(), array.data_type());
            assert_eq!((mapped.len(), mapped.null_count()), (3, 2));
            assert!(mapped.is_valid(0) && mapped.is_null(2));
        }
        let mapped = map_nullable_strings_into(&StringArray::from(vec!["ab"]), |s, out| {
            out.push_str(s);
            true
        })
        .unwrap();
        assert_eq!(mapped.as_string::<i32>().value(0), "ab");
        let err = map_nullable_strings_into(&Int32Array::from(vec![1]), |_, _| true).unwrap_err();
        assert!(err.contains("found Int32"), "{err}");
    }

    #[test]
    fn list_values_are_replaced_keeping_offsets_and_nulls() {
        use arrow_array::builder::{LargeListBuilder, ListBuilder, StringBuilder};
        let mut b = ListBuilder::new(StringBuilder::new());
        b.values().append_value("a");
        b.values().append_value("bb");
        b.append(true);
        b.append_null();
        b.append(true);
        b.values().append_null();
        b.append(true);
        let lists: ArrayRef = Arc::new(b.finish());
        let upper_items = |items: &ArrayRef| map_strings(items, upper);
        let mapped = map_list_values(&lists, upper_items).unwrap();
        assert_eq!(mapped.data_type(), lists.data_type());
        let mapped = mapped.as_list::<i32>();
        assert_eq!(
            mapped.value_offsets(),
            lists.as_list::<i32>().value_offsets()
        );
        assert!(mapped.is_null(1));
        assert_eq!(mapped.value(0).as_string::<i32>().value(1), "BB");
        assert_eq!(mapped.value(2).len(), 0);
        assert!(mapped.value(3).is_null(0));
        // A slice of a list column keeps working: its offsets still index the full values.
        let sliced = lists.slice(2, 2);
        let mapped = map_list_values(&sliced, upper_items).unwrap();
        assert_eq!(mapped.len(), 2);

        let mut b = LargeListBuilder::new(StringBuilder::new());
        b.values().append_value("x");
        b.append(true);
        let large: ArrayRef = Arc::new(b.finish());
        let mapped = map_list_values(&large, upper_items).unwrap();
        assert_eq!(
            mapped.as_list::<i64>().value(0).as_string::<i32>().value(0),
            "X"
        );

        let err = map_list_values(&lists, |items| Ok(items.slice(0, 1))).unwrap_err();
        assert!(err.contains("expected 3"), "{err}");
        let err = map_list_values(&Int32Array::from(vec![1]), upper_items).unwrap_err();
        assert!(err.contains("found Int32"), "{err}");
    }

    #[test]
    fn mapping_refuses_non_string_columns() {
        let err = map_strings(&Int32Array::from(vec![1]), upper).unwrap_err();
        assert!(err.contains("found Int32"), "{err}");
    }

    #[test]
    fn replacing_a_column_keeps_name_metadata_and_other_columns() {
        let batch = emails();
        let metadata =
            std::collections::HashMap::from([("pg.type_oid".to_owned(), "25".to_owned())]);
        let schema = Schema::new(vec![
            batch.schema().field(0).clone(),
            batch.schema().field(1).clone().with_metadata(metadata),
        ]);
        let batch = RecordBatch::try_new(Arc::new(schema), batch.columns().to_vec()).unwrap();
        let new: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let replaced = replace_column(&batch, 1, new.clone()).unwrap();
        assert_eq!(replaced.column(0), batch.column(0));
        assert_eq!(replaced.column(1), &new);
        assert_eq!(replaced.schema().field(1), batch.schema().field(1));

        let err = replace_column(&batch, 2, new.clone()).unwrap_err();
        assert!(err.contains("has 2 columns"), "{err}");
        let err = replace_column(&batch, 1, new.slice(0, 2)).unwrap_err();
        assert!(err.contains("has 2 rows, the batch has 3"), "{err}");
    }

    #[test]
    fn replacing_with_nulls_makes_the_field_nullable() {
        let batch = emails();
        let new: ArrayRef = Arc::new(Int32Array::from(vec![Some(1), None, Some(3)]));
        let replaced = replace_column(&batch, 0, new).unwrap();
        assert!(replaced.schema().field(0).is_nullable());
    }

    #[test]
    fn transform_batch_encodes_replacements_and_fails_closed() {
        let ipc = write_batch(&emails()).unwrap();
        assert_eq!(transform_batch(&ipc, |_| Ok(None)), BatchResult::Unchanged);

        let result = transform_batch(&ipc, |batch| {
            let upper = map_strings(batch.column(1), upper)?;
            replace_column(&batch, 1, upper).map(Some)
        });
        let BatchResult::Replace(bytes) = result else {
            panic!("expected a replacement, got {result:?}");
        };
        let out = read_batch(&bytes).unwrap();
        assert_eq!(out.column(1).as_string::<i32>().value(0), "ADA@EXAMPLE.COM");

        for result in [
            transform_batch(b"junk", |_| Ok(None)),
            transform_batch(&ipc, |_| Err("no".to_owned())),
        ] {
            let BatchResult::Abort(deny) = result else {
                panic!("expected an abort, got {result:?}");
            };
            assert_eq!(deny.sqlstate, sqlstate::SYSTEM_ERROR);
            deny.validate().unwrap();
        }
    }
}
