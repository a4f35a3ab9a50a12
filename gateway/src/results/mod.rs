//! Result rows through plugins as Arrow batches.
//!
//! When a result starts (a RowDescription), the plugins that implement on-result-schema see its
//! columns with their lineage and say which columns they read and which they may replace. If
//! none asks for anything, the rows stay on the byte fast path. Otherwise a [`Filter`] collects
//! DataRows into batches (bounded by rows and bytes, flushed as soon as the server pauses),
//! decodes only the subscribed columns to Arrow, hands each subscriber its columns, and writes
//! the rows back: cells nobody changed are copied byte for byte, changed ones are encoded in
//! the format the client asked for.

pub mod catalog;
pub mod codec;
pub mod copy;
pub mod server_messages;

use crate::plugins::bindings::pgward::plugin::types as wit;
use crate::plugins::{LoadedPlugin, PluginHost, Refusal};
use crate::protocol;
use crate::sqlstate;
use crate::upstream::UpstreamTarget;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use bytes::{BufMut, BytesMut};
use catalog::Catalog;
use codec::{PgType, Styles};
use std::collections::HashMap;
use std::sync::Arc;

/// One column of a RowDescription.
#[derive(Debug, Clone)]
pub struct ResultField {
    pub name: String,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub binary: bool,
}

/// The columns of a RowDescription body; `None` when it is malformed.
pub fn parse_row_description(body: &[u8]) -> Option<Vec<ResultField>> {
    let mut b = body;
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    b = &b[2..];
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let name = protocol::take_cstr(&mut b)?;
        let fixed = b.get(..18)?;
        let table_oid = u32::from_be_bytes(fixed[0..4].try_into().ok()?);
        let attnum = i16::from_be_bytes(fixed[4..6].try_into().ok()?);
        let type_oid = u32::from_be_bytes(fixed[6..10].try_into().ok()?);
        let format = i16::from_be_bytes(fixed[16..18].try_into().ok()?);
        b = &b[18..];
        fields.push(ResultField {
            name: String::from_utf8_lossy(name).into_owned(),
            table_oid,
            attnum,
            type_oid,
            binary: format == 1,
        });
    }
    Some(fields)
}

/// The RowDescription frame of a portal, from its statement's (`statement`: the body of the
/// RowDescription a Describe of the statement answers, every column in text) and its Bind's
/// result formats: none means every column in text, one applies to all, otherwise one per
/// column. `None` when they do not fit (the server refuses such a Bind) or it is malformed.
pub fn portal_row_description(statement: &[u8], formats: &[i16]) -> Option<Vec<u8>> {
    let n = u16::from_be_bytes(statement.get(..2)?.try_into().ok()?) as usize;
    if formats.len() > 1 && formats.len() != n {
        return None;
    }
    let mut frame = Vec::with_capacity(5 + statement.len());
    frame.push(protocol::tag::ROW_DESCRIPTION);
    frame.extend_from_slice(&u32::try_from(statement.len() + 4).ok()?.to_be_bytes());
    frame.extend_from_slice(statement);
    let mut at = 5 + 2;
    for i in 0..n {
        at += frame.get(at..)?.iter().position(|&b| b == 0)? + 1 + 16;
        let format = match formats {
            [] => 0,
            [f] => *f,
            all => all[i],
        };
        frame
            .get_mut(at..at + 2)?
            .copy_from_slice(&format.to_be_bytes());
        at += 2;
    }
    (at == frame.len()).then_some(frame)
}

/// What deciding a result's subscribers needs.
pub struct Subscribe<'a> {
    pub host: &'a PluginHost,
    pub session: &'a wit::Session,
    pub catalog: &'a Catalog,
    pub upstream: &'a UpstreamTarget,
    pub database: &'a str,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub styles: Styles,
}

/// Who reads which columns of a result of one shape; reusable for every result of that shape
/// in a session while the plugins and the catalog stay the same.
pub struct Subscription {
    fields: Vec<ResultField>,
    kinds: Vec<PgType>,
    subs: Vec<Subscriber>,
    /// Columns some subscriber sees.
    needed: Vec<usize>,
}

/// Asks the plugins about a result; `None` when nobody wants its rows (the fast path).
/// `inferred` is the statement analysis's lineage of the output columns, for columns
/// PostgreSQL reports no table for.
pub async fn subscribe(
    s: &Subscribe<'_>,
    fields: Vec<ResultField>,
    inferred: Option<&pgward_sql::lineage::OutputLineage>,
) -> Result<Option<Arc<Subscription>>, Refusal> {
    let chain = s.host.chain();
    let plugins: Vec<Arc<LoadedPlugin>> = chain
        .plugins
        .iter()
        .filter(|p| p.hooks.on_result_schema && p.hooks.on_batch)
        .cloned()
        .collect();
    drop(chain);
    if plugins.is_empty() || fields.is_empty() {
        return Ok(None);
    }
    let columns = lineage(s, &fields, inferred).await?;
    tracing::debug!(
        columns = ?columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid, c.lineage.len()))
            .collect::<Vec<_>>(),
        "result schema"
    );
    let mut subs = Vec::new();
    for plugin in plugins {
        let interest = s.host.on_result_schema(&plugin, s.session, &columns)?;
        let n = fields.len() as u32;
        if let Some(bad) = interest
            .read
            .iter()
            .chain(&interest.modify)
            .find(|&&i| i >= n)
        {
            return Err(s.host.invalid_output(
                &plugin,
                "on-result-schema",
                format!("asked for column {bad} of a result with {n} columns"),
            ));
        }
        let mut cols: Vec<usize> = interest
            .read
            .iter()
            .chain(&interest.modify)
            .map(|&i| i as usize)
            .collect();
        cols.sort_unstable();
        cols.dedup();
        if cols.is_empty() {
            continue;
        }
        let mut modify: Vec<usize> = interest.modify.iter().map(|&i| i as usize).collect();
        modify.sort_unstable();
        modify.dedup();
        subs.push(Subscriber {
            plugin,
            cols,
            modify,
        });
    }
    if subs.is_empty() {
        return Ok(None);
    }
    let mut needed: Vec<usize> = subs.iter().flat_map(|s| s.cols.iter().copied()).collect();
    needed.sort_unstable();
    needed.dedup();
    Ok(Some(Arc::new(Subscription {
        kinds: fields.iter().map(|f| PgType::of(f.type_oid)).collect(),
        fields,
        subs,
        needed,
    })))
}

/// The columns as plugins see them: lineage from the catalog for table columns, inferred from
/// the statement for computed ones.
async fn lineage(
    s: &Subscribe<'_>,
    fields: &[ResultField],
    inferred: Option<&pgward_sql::lineage::OutputLineage>,
) -> Result<Vec<wit::Column>, Refusal> {
    let mut oids: Vec<u32> = fields
        .iter()
        .filter(|f| f.table_oid != 0)
        .map(|f| f.table_oid)
        .collect();
    oids.sort_unstable();
    oids.dedup();
    let tables = if oids.is_empty() {
        HashMap::new()
    } else {
        s.catalog
            .tables(s.upstream, s.database, &oids)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "catalog lookup failed: result refused");
                Refusal {
                    plugin: "pgward".into(),
                    sqlstate: sqlstate::SYSTEM_ERROR.into(),
                    message:
                        "cannot resolve the lineage of the result's columns, so it was not sent"
                            .into(),
                    hint: Some("the gateway log has the details".into()),
                }
            })?
    };
    let per_column = inferred.map(|l| l.columns(fields.len()));
    Ok(fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut lineage = Vec::new();
            if let Some(t) = tables.get(&f.table_oid) {
                match f.attnum {
                    // A whole-row reference (`SELECT c FROM customers c`): every column.
                    0 => lineage.extend(t.columns.values().flatten().cloned()),
                    n => lineage.extend(t.columns.get(&n).into_iter().flatten().cloned()),
                }
            }
            if lineage.is_empty() {
                if let Some(sources) = per_column.as_ref().and_then(|c| c.get(i)) {
                    lineage.extend(sources.iter().map(|s| wit::ColumnLineage {
                        schema: s.relation.schema.clone().unwrap_or_default(),
                        table: s.relation.name.clone(),
                        column: s.column.clone(),
                        inferred: true,
                    }));
                }
            }
            wit::Column {
                index: i as u32,
                name: f.name.clone(),
                type_oid: f.type_oid,
                lineage,
            }
        })
        .collect())
}

/// Where the rows of a flushed batch go, in order.
trait RowSink {
    /// Rows `rows` (a range of the batch) are unchanged.
    fn unchanged(&mut self, rows: std::ops::Range<usize>) -> Result<(), Refusal>;
    /// The buffer a changed row's new DataRow frame is written to, at its end.
    fn buffer(&mut self) -> &mut BytesMut;
    /// Row `row` changed: its new DataRow frame is `buffer()[start..]`.
    fn changed(&mut self, row: usize, start: usize) -> Result<(), Refusal>;
}

/// Frames `range` of `bytes`, which holds frames back to back starting at `starts`.
fn frames<'a>(bytes: &'a [u8], starts: &[usize], range: std::ops::Range<usize>) -> &'a [u8] {
    let end = starts.get(range.end).copied().unwrap_or(bytes.len());
    &bytes[starts[range.start]..end]
}

/// A batch's rows as DataRows, straight into the bytes for the client.
struct DataRows<'a> {
    out: &'a mut BytesMut,
    /// The batch's DataRow frames, back to back, and where each starts.
    rows: &'a [u8],
    starts: &'a [usize],
}

impl RowSink for DataRows<'_> {
    fn unchanged(&mut self, rows: std::ops::Range<usize>) -> Result<(), Refusal> {
        // Rows are back to back: a run of unchanged rows is one copy.
        self.out
            .extend_from_slice(frames(self.rows, self.starts, rows));
        Ok(())
    }

    fn buffer(&mut self) -> &mut BytesMut {
        self.out
    }

    fn changed(&mut self, _row: usize, _start: usize) -> Result<(), Refusal> {
        Ok(())
    }
}

struct Subscriber {
    plugin: Arc<LoadedPlugin>,
    /// Columns the plugin sees (read ∪ modify), in result order.
    cols: Vec<usize>,
    /// Columns it may replace.
    modify: Vec<usize>,
}

/// What the policies did to one result, for its audit record and the metrics.
#[derive(Debug, Default)]
pub struct Report {
    /// Rows that went through the filter.
    pub rows: u64,
    /// Columns whose values a plugin changed, in result order.
    pub masked: Vec<MaskedColumn>,
}

/// A column of a result whose values a plugin changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedColumn {
    /// Its position in the result.
    pub index: usize,
    pub name: String,
    /// The last plugin that changed it.
    pub plugin: String,
    /// The class of data it was masked as, when the plugin says (field metadata
    /// [`CLASS_METADATA`] of the column it returned).
    pub class: Option<String>,
    /// Values that differ from the server's.
    pub values: u64,
}

/// Field metadata a plugin may set on a column it returns: the class of data it masked.
pub const CLASS_METADATA: &str = "pgward.class";

/// One batch's changed column: (index, values changed, plugin, class).
type Change = (usize, u64, String, Option<String>);

/// Per column, the plugin that changed it last and the class it gave.
type ChangedBy<'a> = Vec<Option<(&'a str, Option<String>)>>;

/// A batch after the plugins, as [`Filter::write_rows`] writes it back.
struct Written<'a> {
    rows: &'a [u8],
    cells: &'a [(usize, i32)],
    original: &'a [Option<ArrayRef>],
    arrays: &'a [Option<ArrayRef>],
    changed_by: &'a ChangedBy<'a>,
    changed: &'a [usize],
}

/// A result being filtered through plugins.
pub struct Filter {
    sub: Arc<Subscription>,
    report: Report,
    /// DataRow frames of the current batch, back to back.
    rows: BytesMut,
    starts: Vec<usize>,
    max_rows: usize,
    max_bytes: usize,
    styles: Styles,
}

impl Filter {
    pub fn new(sub: Arc<Subscription>, s: &Subscribe<'_>) -> Filter {
        Filter {
            sub,
            report: Report::default(),
            rows: BytesMut::new(),
            starts: Vec::new(),
            max_rows: s.batch_rows.max(1),
            max_bytes: s.batch_bytes.max(1),
            styles: s.styles,
        }
    }

    /// Adds one DataRow frame; true when the batch is full and must be flushed.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        self.report.rows += 1;
        self.starts.push(self.rows.len());
        self.rows.extend_from_slice(frame);
        self.is_full()
    }

    /// Adds the complete DataRow frames at the start of `bytes`, which starts with one, up
    /// to the batch's bounds, in one copy: how many bytes it took, and whether the batch is
    /// full and must be flushed. A frame with an invalid length (or one over `limit`) is
    /// left for the caller to report.
    pub fn push_rows(&mut self, bytes: &[u8], limit: usize) -> (usize, bool) {
        let base = self.rows.len();
        let mut at = 0;
        while let Ok(Some(h)) = protocol::frame_header(&bytes[at..], limit) {
            if h.tag != protocol::tag::DATA_ROW || bytes.len() - at < h.frame_len {
                break;
            }
            self.starts.push(base + at);
            self.report.rows += 1;
            at += h.frame_len;
            if self.starts.len() >= self.max_rows || base + at >= self.max_bytes {
                break;
            }
        }
        self.rows.extend_from_slice(&bytes[..at]);
        (at, self.is_full())
    }

    fn is_full(&self) -> bool {
        self.starts.len() >= self.max_rows || self.rows.len() >= self.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// What the policies did to the result so far.
    pub fn into_report(self) -> Report {
        self.report
    }

    /// Runs the batch through the subscribers and appends the rows to send to `out`.
    pub fn flush(
        &mut self,
        host: &PluginHost,
        session: &wit::Session,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        let rows = std::mem::take(&mut self.rows);
        let starts = std::mem::take(&mut self.starts);
        // The rows going out take about the bytes they came in.
        out.reserve(rows.len());
        let mut sink = DataRows {
            out,
            rows: &rows,
            starts: &starts,
        };
        let result = self.flush_with(host, session, &rows, &starts, &mut sink);
        self.rows = rows;
        self.starts = starts;
        self.rows.clear();
        self.starts.clear();
        result
    }

    /// Runs `rows` (DataRow frames starting at `starts`) through the subscribers; `sink` gets
    /// every row in order, unchanged or as its new DataRow frame.
    fn flush_with<S: RowSink>(
        &mut self,
        host: &PluginHost,
        session: &wit::Session,
        rows: &[u8],
        starts: &[usize],
        sink: &mut S,
    ) -> Result<(), Refusal> {
        if starts.is_empty() {
            return Ok(());
        }
        let result = self.run(host, session, rows, starts, sink);
        tracing::debug!(
            rows = starts.len(),
            bytes = rows.len(),
            plugins = self.sub.subs.len(),
            ok = result.is_ok(),
            "result batch filtered"
        );
        for (index, values, plugin, class) in result? {
            let masked = &mut self.report.masked;
            match masked.iter_mut().find(|m| m.index == index) {
                Some(m) => {
                    m.values += values;
                    m.plugin = plugin;
                    m.class = class.or(m.class.take());
                }
                None => {
                    let at = masked.partition_point(|m| m.index < index);
                    let name = self.sub.fields[index].name.clone();
                    masked.insert(
                        at,
                        MaskedColumn {
                            index,
                            name,
                            plugin,
                            class,
                            values,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs the batch through the subscribers into `sink`; the columns they changed.
    ///
    /// In four steps: where each cell of the rows is ([`Filter::cells`]), the subscribed
    /// columns decoded to Arrow ([`Filter::decode`]), each subscriber's batch in chain order
    /// ([`Filter::through_plugins`]), and the rows written back, a cell nobody changed byte
    /// for byte ([`Filter::write_rows`]).
    fn run<S: RowSink>(
        &self,
        host: &PluginHost,
        session: &wit::Session,
        rows: &[u8],
        starts: &[usize],
        sink: &mut S,
    ) -> Result<Vec<Change>, Refusal> {
        let nrows = starts.len();
        let cells = self.cells(rows, starts)?;
        let original = self.decode(rows, &cells, nrows)?;
        let (arrays, changed_by) = self.through_plugins(host, session, &original, nrows)?;
        let changed: Vec<usize> = self
            .sub
            .needed
            .iter()
            .copied()
            .filter(|&c| match (&original[c], &arrays[c]) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                _ => false,
            })
            .collect();
        if changed.is_empty() {
            return sink.unchanged(0..nrows).map(|()| Vec::new());
        }
        let written = Written {
            rows,
            cells: &cells,
            original: &original,
            arrays: &arrays,
            changed_by: &changed_by,
            changed: &changed,
        };
        self.write_rows(written, nrows, sink)
    }

    /// Where each cell of the DataRows in `rows` (each starting at `starts`) is: (start, length;
    /// a negative length for NULL), row-major.
    fn cells(&self, rows: &[u8], starts: &[usize]) -> Result<Vec<(usize, i32)>, Refusal> {
        let ncols = self.sub.fields.len();
        let nrows = starts.len();
        let malformed = |what: &str| Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::PROTOCOL_VIOLATION.into(),
            message: format!("malformed DataRow from the server: {what}"),
            hint: None,
        };
        // Cell positions (start, len; len < 0 for NULL) of every row, row-major.
        let mut cells: Vec<(usize, i32)> = Vec::with_capacity(nrows * ncols);
        for (r, &start) in starts.iter().enumerate() {
            let frame = frames(rows, starts, r..r + 1);
            let mut at = 5;
            let count = frame
                .get(at..at + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| malformed("no column count"))?;
            at += 2;
            if count as usize != ncols {
                return Err(malformed("column count differs from the RowDescription"));
            }
            for _ in 0..ncols {
                let len = frame
                    .get(at..at + 4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| malformed("truncated cell"))?;
                at += 4;
                cells.push((start + at, len));
                if len > 0 {
                    at += len as usize;
                    if at > frame.len() {
                        return Err(malformed("cell longer than the row"));
                    }
                }
            }
        }
        Ok(cells)
    }

    /// The subscribed columns of the batch, decoded to Arrow (`None` for the others).
    fn decode(
        &self,
        rows: &[u8],
        cells: &[(usize, i32)],
        nrows: usize,
    ) -> Result<Vec<Option<ArrayRef>>, Refusal> {
        let ncols = self.sub.fields.len();
        let cell = |r: usize, c: usize| -> Option<&[u8]> {
            let (at, len) = cells[r * ncols + c];
            (len >= 0).then(|| &rows[at..at + len as usize])
        };
        let mut arrays: Vec<Option<ArrayRef>> = vec![None; ncols];
        let mut column_cells = Vec::with_capacity(nrows);
        for &c in &self.sub.needed {
            column_cells.clear();
            column_cells.extend((0..nrows).map(|r| cell(r, c)));
            let a = codec::decode_column(
                self.sub.kinds[c],
                self.sub.fields[c].binary,
                &column_cells,
                self.styles,
            )
            .map_err(|e| self.value_error(c, e))?;
            arrays[c] = Some(a);
        }
        Ok(arrays)
    }

    /// The batch through each subscriber in chain order: the columns as the last one left
    /// them, and which plugin changed each column last, with the class it gave.
    fn through_plugins(
        &self,
        host: &PluginHost,
        session: &wit::Session,
        original: &[Option<ArrayRef>],
        nrows: usize,
    ) -> Result<(Vec<Option<ArrayRef>>, ChangedBy<'_>), Refusal> {
        let ncols = self.sub.fields.len();
        let mut arrays = original.to_vec();
        // Which plugin changed each column last, and the class it gave.
        let mut changed_by: ChangedBy = vec![None; ncols];
        for sub in &self.sub.subs {
            let schema = Arc::new(Schema::new(
                sub.cols
                    .iter()
                    .map(|&c| {
                        let f = &self.sub.fields[c];
                        Field::new(&f.name, self.sub.kinds[c].data_type(f.binary), true)
                            .with_metadata(HashMap::from([
                                ("pgward.type_oid".to_string(), f.type_oid.to_string()),
                                ("pgward.index".to_string(), c.to_string()),
                            ]))
                    })
                    .collect::<Vec<_>>(),
            ));
            let columns: Vec<ArrayRef> = sub
                .cols
                .iter()
                .map(|&c| {
                    arrays[c].clone().unwrap_or_else(|| {
                        arrow_array::new_null_array(
                            &self.sub.kinds[c].data_type(self.sub.fields[c].binary),
                            nrows,
                        )
                    })
                })
                .collect();
            let batch = RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| internal(format!("cannot build the batch: {e}")))?;
            let ipc = write_ipc(&batch).map_err(internal)?;
            let Some(reply) = host.on_batch_checked(&sub.plugin, session, &ipc)? else {
                continue;
            };
            let invalid = |what: String| host.invalid_output(&sub.plugin, "on-batch", what);
            let replaced = read_ipc(&reply).map_err(&invalid)?;
            if replaced.num_rows() != nrows || replaced.num_columns() != sub.cols.len() {
                return Err(invalid(format!(
                    "returned {} rows × {} columns for a batch of {nrows} × {}",
                    replaced.num_rows(),
                    replaced.num_columns(),
                    sub.cols.len()
                )));
            }
            for (j, &c) in sub.cols.iter().enumerate() {
                if sub.modify.binary_search(&c).is_err() {
                    continue;
                }
                let new = replaced.column(j);
                let expected = schema.field(j).data_type();
                if new.data_type() != expected {
                    return Err(invalid(format!(
                        "changed the type of column \"{}\" from {expected} to {}",
                        self.sub.fields[c].name,
                        new.data_type()
                    )));
                }
                arrays[c] = Some(new.clone());
                let class = replaced
                    .schema_ref()
                    .field(j)
                    .metadata()
                    .get(CLASS_METADATA);
                changed_by[c] = Some((sub.plugin.name.as_str(), class.cloned()));
            }
        }
        Ok((arrays, changed_by))
    }

    /// Writes the batch's rows to `sink`: unchanged runs as they came, each changed row as a
    /// new DataRow whose unchanged cells are copied byte for byte and changed ones encoded in
    /// the client's format. Returns what changed, per column.
    fn write_rows<S: RowSink>(
        &self,
        w: Written<'_>,
        nrows: usize,
        sink: &mut S,
    ) -> Result<Vec<Change>, Refusal> {
        let Written {
            rows,
            cells,
            original,
            arrays,
            changed_by,
            changed,
        } = w;
        let ncols = self.sub.fields.len();
        let mut changes = Vec::with_capacity(changed.len());
        // What each cell of a changed row is written from.
        enum Source<'a> {
            /// The server's cell, length prefix and bytes as they came.
            Server,
            /// A text column's new values: their bytes in either format, without the encoder.
            Text(&'a StringArray, Vec<bool>),
            /// Other new values, encoded in the client's format.
            Encode(&'a dyn Array, Vec<bool>),
        }
        let mut differs_any = vec![false; nrows];
        let sources: Vec<Source> = arrays
            .iter()
            .enumerate()
            .map(|(c, a)| match (a, &original[c]) {
                (Some(new), Some(old)) if changed.contains(&c) => {
                    // Which rows differ: one pass per column, not per cell.
                    let differing = codec::differing_rows(old.as_ref(), new.as_ref());
                    for (any, &d) in differs_any.iter_mut().zip(&differing) {
                        *any |= d;
                    }
                    let values = differing.iter().filter(|&&d| d).count() as u64;
                    if let (true, Some((plugin, class))) = (values > 0, &changed_by[c]) {
                        changes.push((c, values, plugin.to_string(), class.clone()));
                    }
                    match new.as_string_opt::<i32>() {
                        Some(text) if self.sub.kinds[c].is_plain_text() => {
                            Source::Text(text, differing)
                        }
                        _ => Source::Encode(new.as_ref(), differing),
                    }
                }
                _ => Source::Server,
            })
            .collect();
        let mut value = Vec::new();
        // First row of the run of unchanged rows not yet given to the sink.
        let mut unchanged_from = 0;
        for (r, _) in differs_any.iter().enumerate().filter(|(_, &d)| d) {
            if unchanged_from < r {
                sink.unchanged(unchanged_from..r)?;
            }
            unchanged_from = r + 1;
            let buffer = sink.buffer();
            let start = buffer.len();
            let mut error = None;
            protocol::put_message(buffer, protocol::tag::DATA_ROW, |o| {
                o.put_i16(ncols as i16);
                for (c, source) in sources.iter().enumerate() {
                    let new: &dyn Array = match source {
                        Source::Text(a, d) if d.get(r).copied().unwrap_or(false) => *a,
                        Source::Encode(a, d) if d.get(r).copied().unwrap_or(false) => *a,
                        _ => {
                            let (at, len) = cells[r * ncols + c];
                            o.extend_from_slice(&rows[at - 4..at + len.max(0) as usize]);
                            continue;
                        }
                    };
                    if new.is_null(r) {
                        o.put_i32(-1);
                        continue;
                    }
                    if let Source::Text(text, _) = source {
                        let v = text.value(r).as_bytes();
                        o.put_i32(v.len() as i32);
                        o.extend_from_slice(v);
                        continue;
                    }
                    value.clear();
                    if let Err(e) = codec::encode_value(
                        self.sub.kinds[c],
                        self.sub.fields[c].binary,
                        new,
                        r,
                        &mut value,
                    ) {
                        error = Some((c, e));
                        return;
                    }
                    o.put_i32(value.len() as i32);
                    o.extend_from_slice(&value);
                }
            });
            if let Some((c, e)) = error {
                buffer.truncate(start);
                return Err(self.value_error(c, e));
            }
            sink.changed(r, start)?;
        }
        if unchanged_from < nrows {
            sink.unchanged(unchanged_from..nrows)?;
        }
        Ok(changes)
    }

    /// A value of column `c` the gateway cannot convert.
    fn value_error(&self, c: usize, e: String) -> Refusal {
        Refusal {
            plugin: "pgward".into(),
            sqlstate: sqlstate::FEATURE_NOT_SUPPORTED.into(),
            message: format!(
                "column \"{}\" cannot be passed to the result policies: {e}",
                self.sub.fields[c].name
            ),
            hint: None,
        }
    }
}

/// A `COPY ... TO STDOUT` being filtered: its rows go through a [`Filter`] as DataRows.
pub struct CopyFilter {
    filter: Filter,
    codec: copy::CopyCodec,
    /// The server's CopyData messages of the current batch, back to back.
    messages: BytesMut,
    message_starts: Vec<usize>,
    /// Bytes at the start of each row's message that are not the row (the binary header).
    prefixes: Vec<usize>,
}

impl CopyFilter {
    pub fn new(filter: Filter, format: copy::CopyFormat) -> Self {
        CopyFilter {
            filter,
            codec: copy::CopyCodec::new(format),
            messages: BytesMut::new(),
            message_starts: Vec::new(),
            prefixes: Vec::new(),
        }
    }

    /// Takes one CopyData frame. Rows are held for their batch (true: flush now); anything
    /// else (a CSV header, the binary trailer) goes to `out` after the rows before it.
    pub fn push(
        &mut self,
        host: &PluginHost,
        session: &wit::Session,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, Refusal> {
        let columns = self.filter.sub.fields.len();
        match self.codec.decode(&frame[5..], columns) {
            Ok(copy::CopyRow::Row { frame: row, prefix }) => {
                self.message_starts.push(self.messages.len());
                self.messages.extend_from_slice(frame);
                self.prefixes.push(prefix);
                Ok(self.filter.push(&row))
            }
            Ok(copy::CopyRow::Other) => {
                self.flush(host, session, out)?;
                out.extend_from_slice(frame);
                Ok(false)
            }
            Err(e) => Err(Refusal {
                plugin: "pgward".into(),
                sqlstate: sqlstate::FEATURE_NOT_SUPPORTED.into(),
                message: format!("COPY data cannot be passed to the result policies: {e}"),
                hint: None,
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }

    /// What the policies did to the COPY's rows.
    pub fn into_report(self) -> Report {
        self.filter.report
    }

    /// Runs the held rows through the plugins and appends their CopyData messages to `out`.
    pub fn flush(
        &mut self,
        host: &PluginHost,
        session: &wit::Session,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        let rows = std::mem::take(&mut self.filter.rows);
        let starts = std::mem::take(&mut self.filter.starts);
        let mut sink = CopyRows {
            out,
            messages: &self.messages,
            message_starts: &self.message_starts,
            prefixes: &self.prefixes,
            codec: &self.codec,
            row: BytesMut::new(),
        };
        let result = self
            .filter
            .flush_with(host, session, &rows, &starts, &mut sink);
        self.filter.rows = rows;
        self.filter.rows.clear();
        self.filter.starts = starts;
        self.filter.starts.clear();
        self.messages.clear();
        self.message_starts.clear();
        self.prefixes.clear();
        result
    }
}

/// A batch's rows as the COPY's CopyData messages.
struct CopyRows<'a> {
    out: &'a mut BytesMut,
    /// The server's CopyData messages of the batch, back to back, and where each starts.
    messages: &'a [u8],
    message_starts: &'a [usize],
    prefixes: &'a [usize],
    codec: &'a copy::CopyCodec,
    /// A changed row's DataRow frame, before it is encoded as COPY data.
    row: BytesMut,
}

impl RowSink for CopyRows<'_> {
    fn unchanged(&mut self, rows: std::ops::Range<usize>) -> Result<(), Refusal> {
        self.out
            .extend_from_slice(frames(self.messages, self.message_starts, rows));
        Ok(())
    }

    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.row
    }

    fn changed(&mut self, row: usize, start: usize) -> Result<(), Refusal> {
        let at = self.message_starts[row];
        let prefix = &self.messages[at + 5..at + 5 + self.prefixes[row]];
        let result = self.codec.encode(prefix, &self.row[start..], self.out);
        self.row.truncate(start);
        result.map_err(|e| internal(e.to_string()))
    }
}

/// The format each column of a COPY arrives in.
pub fn set_copy_format(fields: &mut [ResultField], binary: bool) {
    for f in fields {
        f.binary = binary;
    }
}

fn internal(e: String) -> Refusal {
    tracing::error!(error = %e, "result batch failed");
    Refusal {
        plugin: "pgward".into(),
        sqlstate: sqlstate::INTERNAL_ERROR.into(),
        message: format!("result batch failed: {e}"),
        hint: None,
    }
}

fn write_ipc(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), batch.schema_ref())
        .map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    w.into_inner().map_err(|e| e.to_string())
}

fn read_ipc(bytes: &[u8]) -> Result<RecordBatch, String> {
    let mut reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| format!("replacement is not an Arrow IPC stream: {e}"))?;
    let batch = reader
        .next()
        .ok_or("replacement holds no batch")?
        .map_err(|e| format!("replacement batch is malformed: {e}"))?;
    if reader.next().is_some() {
        return Err("replacement holds more than one batch".into());
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(max_rows: usize, max_bytes: usize) -> Filter {
        Filter {
            sub: Arc::new(Subscription {
                fields: Vec::new(),
                kinds: Vec::new(),
                subs: Vec::new(),
                needed: Vec::new(),
            }),
            report: Report::default(),
            rows: BytesMut::new(),
            starts: Vec::new(),
            max_rows,
            max_bytes,
            styles: Styles::default(),
        }
    }

    fn data_row(value: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        protocol::put_message(&mut out, protocol::tag::DATA_ROW, |o| {
            o.put_i16(1);
            o.put_i32(value.len() as i32);
            o.extend_from_slice(value);
        });
        out.to_vec()
    }

    fn row_description(columns: &[(&str, u32, i16)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(columns.len() as i16);
        for (name, type_oid, format) in columns {
            protocol::put_cstr(&mut b, name);
            b.put_u32(16384);
            b.put_i16(1);
            b.put_u32(*type_oid);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(*format);
        }
        b.to_vec()
    }

    #[test]
    fn a_portal_is_described_from_its_statement_and_its_result_formats() {
        let statement = row_description(&[("id", 23, 0), ("email", 25, 0), ("n", 20, 0)]);
        let formats = |f: &[i16]| {
            let frame = portal_row_description(&statement, f)?;
            assert_eq!(frame[0], b'T');
            assert_eq!(
                u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize,
                frame.len() - 1
            );
            let fields = parse_row_description(&frame[5..])?;
            assert_eq!(fields.len(), 3);
            assert_eq!(fields[1].name, "email");
            assert_eq!(fields[2].type_oid, 20);
            Some(fields.iter().map(|f| f.binary).collect::<Vec<_>>())
        };
        assert_eq!(formats(&[]), Some(vec![false, false, false]));
        assert_eq!(formats(&[1]), Some(vec![true, true, true]));
        assert_eq!(formats(&[0, 1, 0]), Some(vec![false, true, false]));
        // The server refuses a Bind whose formats do not fit the columns.
        assert_eq!(formats(&[1, 0]), None);
        // A truncated description is refused, never read past its end.
        for cut in 0..statement.len() {
            assert_eq!(
                portal_row_description(&statement[..cut], &[1]),
                None,
                "cut {cut}"
            );
        }
        let empty = row_description(&[]);
        assert_eq!(
            portal_row_description(&empty, &[]).map(|f| f.len()),
            Some(7)
        );
    }

    #[test]
    fn a_run_of_rows_is_taken_whole_up_to_what_ends_it() {
        let rows: Vec<Vec<u8>> = ["a", "bb", "ccc"]
            .iter()
            .map(|v| data_row(v.as_bytes()))
            .collect();
        let complete = command_complete();
        let mut bytes = rows.concat();
        bytes.extend_from_slice(&complete);

        // Up to the first message that is not a row.
        let mut f = filter(100, 1 << 20);
        assert_eq!(f.push_rows(&bytes, 1 << 20), (rows.concat().len(), false));
        assert_eq!(f.starts, [0, rows[0].len(), rows[0].len() + rows[1].len()]);
        assert_eq!(&f.rows[..], &rows.concat()[..]);

        // Up to an incomplete row, which waits for more bytes.
        let mut f = filter(100, 1 << 20);
        let cut = rows[0].len() + rows[1].len() + 3;
        assert_eq!(f.push_rows(&bytes[..cut], 1 << 20), (cut - 3, false));
        assert_eq!(f.starts.len(), 2);

        // Up to the batch's bounds: rows, then bytes.
        let mut f = filter(2, 1 << 20);
        assert_eq!(
            f.push_rows(&bytes, 1 << 20),
            (rows[0].len() + rows[1].len(), true)
        );
        let mut f = filter(100, rows[0].len() + 1);
        assert_eq!(
            f.push_rows(&bytes, 1 << 20),
            (rows[0].len() + rows[1].len(), true)
        );

        // A row with an invalid length is left for the relay to report.
        let mut bad = rows[0].clone();
        bad.extend_from_slice(&[b'D', 0, 0, 0, 2]);
        let mut f = filter(100, 1 << 20);
        assert_eq!(f.push_rows(&bad, 1 << 20), (rows[0].len(), false));
    }

    fn command_complete() -> Vec<u8> {
        let mut out = BytesMut::new();
        protocol::put_message(&mut out, b'C', |o| protocol::put_cstr(o, "SELECT 3"));
        out.to_vec()
    }
}
