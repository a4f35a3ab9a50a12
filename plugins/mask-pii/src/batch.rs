//! Applying a [`Plan`] to a batch: every planned column is masked in place of its values,
//! keeping its Arrow type and row count, or the result is stopped.

use crate::config::Config;
use crate::detect::{Detector, Detectors, Span};
use crate::plan::{Action, Plan, Signature};
use crate::strategy::{blank, mask_span, mask_whole, partial_to, Hasher, Strategy, ValueKind};
use pgward_plugin_sdk::arrow::arrow_array::cast::AsArray;
use pgward_plugin_sdk::arrow::arrow_array::types::{Int16Type, Int32Type, Int64Type};
use pgward_plugin_sdk::arrow::arrow_array::{new_null_array, GenericBinaryArray, OffsetSizeTrait};
use pgward_plugin_sdk::arrow::arrow_buffer::Buffer;
use pgward_plugin_sdk::arrow::{
    map_list_values, map_nullable_strings_into, map_strings_fixed_ascii, map_strings_shrinking,
    replace_column_as, Array, ArrayRef, DataType, RecordBatch, SchemaRef,
};
use pgward_plugin_sdk::{sqlstate, Deny};
use std::sync::Arc;

/// Why a batch cannot go out.
#[derive(Debug)]
pub enum Stop {
    /// Policy: the client is told why (SQLSTATE 42501).
    Refused(Deny),
    /// Something the plugin cannot handle (SQLSTATE 58000); never leaks the rows.
    Failed(String),
}

impl From<String> for Stop {
    fn from(e: String) -> Self {
        Stop::Failed(e)
    }
}

/// Masks batches for one session; holds buffers reused across columns and batches.
pub struct Masker<'a> {
    config: &'a Config,
    detectors: Detectors,
    /// The class of each detector, by [`Detector`] discriminant.
    class_of: [Option<usize>; 8],
    spans: &'a mut Vec<Span>,
}

impl<'a> Masker<'a> {
    /// A masker for a session with `plan`'s active classes.
    pub fn new(config: &'a Config, plan: &Plan, spans: &'a mut Vec<Span>) -> Self {
        let mut class_of = [None; 8];
        for i in plan.active.iter() {
            for d in &config.classes[i].detectors {
                class_of[*d as usize] = Some(i);
            }
        }
        Masker {
            config,
            detectors: plan.active.detectors(config),
            class_of,
            spans,
        }
    }

    fn strategy_of(&self, d: Detector) -> &'a Strategy {
        let class = self.class_of[d as usize].expect("only active classes' detectors run");
        &self.config.classes[class].strategy
    }

    /// Appends `value` with every detected substring masked; `false` when the value must
    /// become NULL.
    fn mask_detected(&mut self, value: &str, kind: ValueKind, out: &mut String) -> bool {
        self.detectors.find(value.as_bytes(), self.spans);
        let mut at = 0;
        for i in 0..self.spans.len() {
            let s = self.spans[i];
            out.push_str(&value[at..s.start]);
            let strategy = self.strategy_of(s.detector);
            let hasher = self.config.hasher.as_ref();
            if !mask_span(strategy, hasher, kind, &value[s.start..s.end], out) {
                return false;
            }
            at = s.end;
        }
        out.push_str(&value[at..]);
        true
    }

    fn hits(&mut self, value: &[u8]) -> bool {
        self.detectors.any(value, self.spans)
    }
}

/// The signature of a batch: each field's result index and type oid (from the gateway's
/// field metadata; absent metadata never matches a plan) and its name.
pub fn signature(schema: &SchemaRef) -> Signature {
    schema
        .fields()
        .iter()
        .map(|f| {
            let meta = |key: &str| f.metadata().get(key).and_then(|v| v.parse::<u32>().ok());
            (
                meta("pgward.index").unwrap_or(u32::MAX),
                f.name().clone(),
                meta("pgward.type_oid").unwrap_or(0),
            )
        })
        .collect()
}

/// Applies `plan` to `batch`: `Ok(None)` when nothing changed.
pub fn apply(
    masker: &mut Masker<'_>,
    plan: &Plan,
    batch: RecordBatch,
) -> Result<Option<RecordBatch>, Stop> {
    if batch.num_columns() != plan.columns.len() {
        return Err(Stop::Failed(format!(
            "the batch has {} columns, the plan {}",
            batch.num_columns(),
            plan.columns.len()
        )));
    }
    let mut out = batch.clone();
    let mut changed = false;
    for (i, column) in plan.columns.iter().enumerate() {
        let array = batch.column(i);
        // The class the audit trail names for a masked column: the column's class, or
        // `detected` for values a detector found in an unclassified column.
        let mut class = "detected";
        let new = match &column.action {
            Action::Refuse { classes } => {
                if array.null_count() < array.len() {
                    let names: Vec<&str> = classes
                        .iter()
                        .map(|&c| masker.config.classes[c].name.as_str())
                        .collect();
                    return Err(Stop::Refused(
                        Deny::new(
                            sqlstate::INSUFFICIENT_PRIVILEGE,
                            format!(
                                "column \"{}\" mixes {} data with other values, and no detector recognises {} values, so it cannot be masked with certainty; the result was stopped",
                                column.name,
                                names.join(" and "),
                                if names.len() == 1 { "its" } else { "their" },
                            ),
                        )
                        .with_hint("select the classified columns on their own (they are masked), or leave them out"),
                    ));
                }
                None
            }
            Action::Mask { class: c, direct } => {
                let c = &masker.config.classes[*c];
                class = &c.name;
                Some(mask_column(
                    masker,
                    &c.strategy,
                    *direct,
                    column.type_oid,
                    array,
                )?)
            }
            Action::Detect => detect_column(masker, column.type_oid, array)?,
        };
        if let Some(new) = new {
            out = replace_column_as(&out, i, new, class)?;
            changed = true;
        }
    }
    Ok(changed.then_some(out))
}

/// String values masked whole. A text pseudonym (fixed-width hex) and a `partial` mask (never
/// longer than the value) are written where they end up in the new column: the same values
/// `mask_whole` gives, without a copy per value.
fn mask_strings(
    strategy: &Strategy,
    hasher: Option<&Hasher>,
    kind: ValueKind,
    array: &dyn Array,
) -> Result<ArrayRef, String> {
    match (kind, strategy, hasher) {
        (ValueKind::Text, Strategy::Hash, Some(h)) => {
            map_strings_fixed_ascii(array, h.hex_len(), |v, out| {
                h.hex_to(v.as_bytes(), out);
                true
            })
        }
        (ValueKind::Text, Strategy::Partial { keep_last }, _) => {
            map_strings_shrinking(array, |v, out| Some(partial_to(v, *keep_last, out)))
        }
        _ => map_nullable_strings_into(array, |v, out| mask_whole(strategy, hasher, kind, v, out)),
    }
}

/// A column masked whole, value by value, keeping its data type.
fn mask_column(
    masker: &Masker<'_>,
    strategy: &Strategy,
    direct: bool,
    type_oid: u32,
    array: &ArrayRef,
) -> Result<ArrayRef, String> {
    let hasher = masker.config.hasher.as_ref();
    let nulls = || new_null_array(array.data_type(), array.len());
    if *strategy == Strategy::Null {
        return Ok(nulls());
    }
    match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let kind = ValueKind::of(type_oid);
            if kind == ValueKind::Other {
                return Ok(nulls());
            }
            mask_strings(strategy, hasher, kind, array)
        }
        DataType::List(item) | DataType::LargeList(item)
            if matches!(item.data_type(), DataType::Utf8 | DataType::LargeUtf8) =>
        {
            let kind = ValueKind::of_elements(type_oid);
            if kind == ValueKind::Other {
                return Ok(nulls());
            }
            map_list_values(array, |items| mask_strings(strategy, hasher, kind, items))
        }
        DataType::Int16 | DataType::Int32 | DataType::Int64
            if direct && *strategy == Strategy::Hash =>
        {
            let Some(h) = hasher else {
                return Ok(nulls());
            };
            Ok(match array.data_type() {
                DataType::Int16 => Arc::new(
                    array
                        .as_primitive::<Int16Type>()
                        .unary::<_, Int16Type>(|v| h.integer(i64::from(v), 16) as i16),
                ) as ArrayRef,
                DataType::Int32 => Arc::new(
                    array
                        .as_primitive::<Int32Type>()
                        .unary::<_, Int32Type>(|v| h.integer(i64::from(v), 32) as i32),
                ),
                _ => Arc::new(
                    array
                        .as_primitive::<Int64Type>()
                        .unary::<_, Int64Type>(|v| h.integer(v, 64)),
                ) as ArrayRef,
            })
        }
        // Numbers, dates, bytes, uuids: a masked text would not fit; NULL reveals nothing.
        _ => Ok(nulls()),
    }
}

/// A column with detected substrings masked; `None` when nothing was found.
fn detect_column(
    masker: &mut Masker<'_>,
    type_oid: u32,
    array: &ArrayRef,
) -> Result<Option<ArrayRef>, String> {
    match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            detect_strings(masker, ValueKind::of(type_oid), array)
        }
        DataType::List(item) | DataType::LargeList(item)
            if matches!(
                item.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            let kind = ValueKind::of_elements(type_oid);
            let values = match array.data_type() {
                DataType::List(_) => array.as_list::<i32>().values(),
                _ => array.as_list::<i64>().values(),
            };
            if first_hit(masker, values).is_none() {
                return Ok(None);
            }
            map_list_values(array, |items| {
                Ok(detect_strings(masker, kind, items)?.unwrap_or_else(|| items.clone()))
            })
            .map(Some)
        }
        DataType::Binary => detect_binary(masker, array.as_binary::<i32>()),
        DataType::LargeBinary => detect_binary(masker, array.as_binary::<i64>()),
        // Not text: nothing for a detector to find.
        _ => Ok(None),
    }
}

/// The position (among non-null values) of the first value with a detection.
fn first_hit(masker: &mut Masker<'_>, array: &ArrayRef) -> Option<usize> {
    fn scan<'v>(
        masker: &mut Masker<'_>,
        values: impl Iterator<Item = Option<&'v str>>,
    ) -> Option<usize> {
        values.flatten().position(|v| masker.hits(v.as_bytes()))
    }
    match array.data_type() {
        DataType::Utf8 => scan(masker, array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => scan(masker, array.as_string::<i64>().iter()),
        DataType::Utf8View => scan(masker, array.as_string_view().iter()),
        _ => None,
    }
}

fn detect_strings(
    masker: &mut Masker<'_>,
    kind: ValueKind,
    array: &ArrayRef,
) -> Result<Option<ArrayRef>, String> {
    // Most values hold nothing: find the first that does before building a new column, and
    // copy the values before it without scanning them again.
    let Some(first) = first_hit(masker, array) else {
        return Ok(None);
    };
    let mut seen = 0;
    map_nullable_strings_into(array, |v, out| {
        seen += 1;
        if seen <= first {
            out.push_str(v);
            return true;
        }
        masker.mask_detected(v, kind, out)
    })
    .map(Some)
}

/// Binary values (bytea, and types the gateway passes as raw bytes): detected bytes are
/// overwritten with `*` in place, so lengths inside records and arrays stay valid.
fn detect_binary<O: OffsetSizeTrait>(
    masker: &mut Masker<'_>,
    array: &GenericBinaryArray<O>,
) -> Result<Option<ArrayRef>, String> {
    let offsets = array.value_offsets();
    let base = offsets[0].as_usize();
    let end = offsets[offsets.len() - 1].as_usize();
    let mut bytes: Option<Vec<u8>> = None;
    for i in 0..array.len() {
        if array.is_null(i) {
            continue;
        }
        let (s, e) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
        let value = &array.value_data()[s..e];
        masker.detectors.find(value, masker.spans);
        if masker.spans.is_empty() {
            continue;
        }
        let copy = bytes.get_or_insert_with(|| array.value_data()[base..end].to_vec());
        for span in masker.spans.iter() {
            blank(&mut copy[s - base + span.start..s - base + span.end]);
        }
    }
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    // Offsets rebased to the copied range.
    let rebased: Vec<O> = offsets
        .iter()
        .map(|o| O::usize_as(o.as_usize() - base))
        .collect();
    let offsets = pgward_plugin_sdk::arrow::arrow_buffer::OffsetBuffer::new(rebased.into());
    let new =
        GenericBinaryArray::<O>::try_new(offsets, Buffer::from_vec(bytes), array.nulls().cloned())
            .map_err(|e| format!("cannot rebuild a binary column: {e}"))?;
    Ok(Some(Arc::new(new)))
}
