//! Test plugin: masks the text columns it is configured with, by the name the client sees. Every
//! character but the last four becomes `*` (`ada@example.com` → `***********.com`); nulls stay
//! null, values of four characters or fewer are left as they are.
//!
//! ```toml
//! columns = ["email"]   # required, at least one
//! ```
//!
//! A column of that name that is not text aborts the result: the plugin cannot mask it, and
//! relaying it unmasked would leak it. A real masking policy would match on lineage
//! ([`Column::derives_from`]) as well, so that `SELECT email AS e` is masked too.
#![forbid(unsafe_code)]

use pgward_plugin_sdk::arrow;
use pgward_plugin_sdk::prelude::*;

/// Characters left visible at the end of a masked value.
const VISIBLE: usize = 4;

/// Masks the columns named in [`Config::columns`].
pub struct MaskColumn {
    columns: Vec<String>,
}

/// `mask_column.toml`.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// Names of the result columns to mask, compared exactly with the names the client sees.
    pub columns: Vec<String>,
}

impl MaskColumn {
    fn masks(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c == name)
    }
}

/// Appends `value` to `out` with every character but the last four replaced by `*`; a value of
/// four characters or fewer is appended as it is.
pub fn mask_into(value: &str, out: &mut String) {
    // Byte offset of the first visible character, and how many characters precede it.
    let (visible_from, hidden) = if value.is_ascii() {
        let hidden = value.len().saturating_sub(VISIBLE);
        (hidden, hidden)
    } else {
        match value.char_indices().rev().nth(VISIBLE - 1) {
            Some((i, _)) => (i, value[..i].chars().count()),
            None => (0, 0),
        }
    };
    out.reserve(hidden + value.len() - visible_from);
    let mut left = hidden;
    while left > 0 {
        let n = left.min(STARS.len());
        out.push_str(&STARS[..n]);
        left -= n;
    }
    out.push_str(&value[visible_from..]);
}

/// `value` masked as by [`mask_into`].
pub fn mask(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    mask_into(value, &mut out);
    out
}

/// Copied in slices: far cheaper than pushing `*` one character at a time.
const STARS: &str = "********************************";

impl Plugin for MaskColumn {
    const NAME: &'static str = "mask-column";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_RESULT_SCHEMA.union(Hooks::ON_BATCH);

    fn init(text: &str) -> Result<Self, String> {
        let c: Config = config(text)?;
        if c.columns.is_empty() || c.columns.iter().any(String::is_empty) {
            return Err("columns must name at least one column, and no empty name".to_owned());
        }
        Ok(MaskColumn { columns: c.columns })
    }

    fn on_result_schema(&mut self, _session: &Session, columns: &[Column]) -> SchemaInterest {
        let masked: Vec<u32> = columns
            .iter()
            .filter(|c| self.masks(&c.name))
            .map(|c| c.index)
            .collect();
        SchemaInterest {
            read: masked.clone(),
            modify: masked,
        }
    }

    fn on_batch(&mut self, _session: &Session, batch: &[u8]) -> BatchResult {
        // Columns are found by name in the batch itself: this instance need not be the one
        // that answered on_result_schema.
        arrow::transform_batch(batch, |mut batch| {
            let mut changed = false;
            for i in 0..batch.num_columns() {
                let name = batch.schema_ref().field(i).name();
                if !self.masks(name) {
                    continue;
                }
                // Into one reused buffer: an allocation per value would double the cost.
                let masked = arrow::map_strings_into(batch.column(i), mask_into)
                    .map_err(|e| format!("cannot mask column {name:?}: {e}"))?;
                batch = arrow::replace_column(&batch, i, masked)?;
                changed = true;
            }
            Ok(changed.then_some(batch))
        })
    }
}

export_plugin!(MaskColumn);

#[cfg(test)]
mod tests {
    use super::*;
    use pgward_plugin_sdk::arrow::arrow_array::cast::AsArray;
    use pgward_plugin_sdk::arrow::arrow_array::Int32Array;
    use pgward_plugin_sdk::arrow::{
        read_batch, write_batch, ArrayRef, DataType, RecordBatch, StringArray,
    };
    use pgward_plugin_sdk::testing::TestHarness;
    use std::sync::Arc;

    fn harness() -> TestHarness<MaskColumn> {
        TestHarness::new(r#"columns = ["email"]"#).unwrap()
    }

    fn column(index: u32, name: &str, type_oid: u32) -> Column {
        Column {
            index,
            name: name.to_owned(),
            type_oid,
            lineage: Vec::new(),
        }
    }

    fn ipc(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
        write_batch(&RecordBatch::try_from_iter(columns).unwrap()).unwrap()
    }

    #[test]
    fn masks_all_but_the_last_four_characters() {
        assert_eq!(mask("ada@example.com"), "***********.com");
        assert_eq!(mask("jürgen@exämple.de"), "*************e.de");
        assert_eq!(mask("abcde"), "*bcde");
        assert_eq!(mask(&"x".repeat(70)), "*".repeat(66) + "xxxx");
        assert_eq!(mask(&"é".repeat(70)), "*".repeat(66) + "éééé");
        for short in ["abcd", "ü", "ééé", ""] {
            assert_eq!(mask(short), short);
        }
        let mut out = "kept:".to_owned();
        mask_into("secret", &mut out);
        assert_eq!(out, "kept:**cret");
    }

    #[test]
    fn subscribes_to_reading_and_replacing_the_named_columns() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        let columns = [
            column(0, "id", 23),
            column(1, "email", 25),
            column(2, "name", 25),
        ];
        let interest = h.result_schema(&s, &columns);
        assert_eq!(interest.read, [1]);
        assert_eq!(interest.modify, [1]);
        assert!(h.result_schema(&s, &[column(0, "Email", 25)]).is_empty());
    }

    #[test]
    fn batch_comes_back_masked_with_nulls_kept() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        let emails = StringArray::from(vec![Some("ada@example.com"), None, Some("bo@x")]);
        let input = ipc(vec![("email", Arc::new(emails))]);
        let BatchResult::Replace(bytes) = h.batch(&s, &input) else {
            panic!("expected a replacement");
        };
        let out = read_batch(&bytes).unwrap();
        assert_eq!(out.num_columns(), 1);
        assert_eq!(out.schema().field(0).name(), "email");
        assert_eq!(out.schema().field(0).data_type(), &DataType::Utf8);
        let out = out.column(0).as_string::<i32>();
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            [Some("***********.com"), None, Some("bo@x")]
        );
        // The cleartext is nowhere in the bytes that go back to the gateway.
        assert!(!bytes.windows(11).any(|w| w == b"ada@example"));
    }

    #[test]
    fn other_columns_of_the_batch_are_left_alone() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        let input = ipc(vec![
            ("name", Arc::new(StringArray::from(vec!["Ada Lovelace"]))),
            (
                "email",
                Arc::new(StringArray::from(vec!["ada@example.com"])),
            ),
        ]);
        let BatchResult::Replace(bytes) = h.batch(&s, &input) else {
            panic!("expected a replacement");
        };
        let out = read_batch(&bytes).unwrap();
        assert_eq!(out.column(0).as_string::<i32>().value(0), "Ada Lovelace");
        assert_eq!(out.column(1).as_string::<i32>().value(0), "***********.com");

        let names = ipc(vec![("name", Arc::new(StringArray::from(vec!["Ada"])))]);
        assert_eq!(h.batch(&s, &names), BatchResult::Unchanged);
    }

    #[test]
    fn a_column_it_cannot_mask_aborts_the_result() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        let input = ipc(vec![("email", Arc::new(Int32Array::from(vec![7])))]);
        let BatchResult::Abort(deny) = h.batch(&s, &input) else {
            panic!("expected an abort");
        };
        assert_eq!(deny.sqlstate, sqlstate::SYSTEM_ERROR);
        assert!(
            deny.message.contains("cannot mask column \"email\""),
            "{}",
            deny.message
        );

        let BatchResult::Abort(_) = h.batch(&s, b"not arrow") else {
            panic!("expected an abort for a batch that cannot be read");
        };
    }

    #[test]
    fn config_must_name_columns() {
        assert!(TestHarness::<MaskColumn>::new("").is_err());
        assert!(TestHarness::<MaskColumn>::new("columns = []").is_err());
        assert!(TestHarness::<MaskColumn>::new(r#"columns = [""]"#).is_err());
    }
}
