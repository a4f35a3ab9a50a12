//! Test plugin for result streaming: subscribes to result columns by name and transforms them.
//!
//! ```toml
//! mode = "identity"    # identity | upper | drop-row | retype | abort
//! columns = ["*"]      # names the client sees; "*" is every column
//! ```
//!
//! - `identity` reads and "replaces" the columns with what it got: the gateway must send the
//!   rows byte-identical to the server's.
//! - `upper` upper-cases string columns and string arrays (other types are returned as they are).
//! - `drop-row`, `retype` and `abort` break the contract or refuse: the gateway must end the
//!   result with an error, never a truncated result that looks complete.
#![forbid(unsafe_code)]

use pgward_plugin_sdk::arrow::arrow_array::cast::AsArray;
use pgward_plugin_sdk::arrow::arrow_array::ListArray;
use pgward_plugin_sdk::arrow::{self, Array, ArrayRef, DataType, RecordBatch};
use pgward_plugin_sdk::prelude::*;
use std::sync::Arc;

/// What the plugin does to each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", rename_all = "kebab-case")]
pub enum Mode {
    Identity,
    Upper,
    DropRow,
    Retype,
    Abort,
}

/// `batch_transform.toml`.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    pub columns: Vec<String>,
}

pub struct BatchTransform {
    config: Config,
}

impl BatchTransform {
    fn wants(&self, name: &str) -> bool {
        self.config.columns.iter().any(|c| c == "*" || c == name)
    }
}

fn upper_strings(array: &dyn Array) -> Result<ArrayRef, String> {
    arrow::map_strings_into(array, |v, out| out.push_str(&v.to_uppercase()))
}

/// Upper-cases string columns and string arrays (`List<Utf8>`).
fn upper(batch: RecordBatch) -> Result<Option<RecordBatch>, String> {
    let mut batch = batch;
    for i in 0..batch.num_columns() {
        let column = batch.column(i).clone();
        let new = match column.data_type() {
            DataType::Utf8 => upper_strings(column.as_ref())?,
            DataType::List(field) if field.data_type() == &DataType::Utf8 => {
                let list = column.as_list::<i32>();
                let values = upper_strings(list.values().as_ref())?;
                let nulls = list.nulls().cloned();
                let array =
                    ListArray::try_new(field.clone(), list.offsets().clone(), values, nulls)
                        .map_err(|e| e.to_string())?;
                Arc::new(array) as ArrayRef
            }
            _ => continue,
        };
        batch = arrow::replace_column(&batch, i, new)?;
    }
    Ok(Some(batch))
}

impl Plugin for BatchTransform {
    const NAME: &'static str = "batch-transform";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_RESULT_SCHEMA.union(Hooks::ON_BATCH);

    fn init(text: &str) -> Result<Self, String> {
        Ok(BatchTransform {
            config: config(text)?,
        })
    }

    fn on_result_schema(&mut self, _session: &Session, columns: &[Column]) -> SchemaInterest {
        let cols: Vec<u32> = columns
            .iter()
            .filter(|c| self.wants(&c.name))
            .map(|c| c.index)
            .collect();
        SchemaInterest {
            read: cols.clone(),
            modify: cols,
        }
    }

    fn on_batch(&mut self, _session: &Session, batch: &[u8]) -> BatchResult {
        match self.config.mode {
            Mode::Identity => arrow::transform_batch(batch, |b| Ok(Some(b))),
            Mode::Upper => arrow::transform_batch(batch, upper),
            Mode::DropRow => arrow::transform_batch(batch, |b| {
                Ok(Some(b.slice(0, b.num_rows().saturating_sub(1))))
            }),
            Mode::Retype => arrow::transform_batch(batch, |b| {
                let n = b.num_rows();
                let ints: Arc<dyn Array> =
                    Arc::new(arrow::arrow_array::Int64Array::from(vec![7i64; n]));
                let mut out = b;
                for i in 0..out.num_columns() {
                    if out.column(i).data_type() != &DataType::Int64 {
                        out = arrow::replace_column(&out, i, ints.clone())?;
                    }
                }
                Ok(Some(out))
            }),
            Mode::Abort => BatchResult::Abort(
                Deny::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "batch-transform refuses these rows",
                )
                .with_hint("this is a test plugin"),
            ),
        }
    }
}

export_plugin!(BatchTransform);
