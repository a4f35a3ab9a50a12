//! Native throughput of on_batch on 4096-row batches of one column: `cargo run --release -p
//! pgward-plugin-mask-pii --example throughput [label filter]`. Inside wasm expect about a
//! third of it (the mask-column plugin runs 3x slower in wasm than natively, BENCHMARKS.md).
use mask_pii::MaskPii;
use pgward_plugin_sdk::arrow::{write_batch, ArrayRef, Field, RecordBatch, Schema, StringArray};
use pgward_plugin_sdk::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

const CONFIG: &str = r#"
[hash]
key = "bench-key-0123456789abcdef"
[[class]]
name = "email"
lineage = ["public.customers.email"]
detectors = ["email"]
strategy = "partial"
[[class]]
name = "card"
lineage = ["public.customers.card"]
detectors = ["card"]
strategy = "hash"
[[class]]
name = "ssn"
lineage = ["*.*.ssn"]
detectors = ["ssn", "phone", "iban", "jwt", "api_key", "private_key"]
strategy = "redact"
"#;

fn main() {
    let rows = 4096;
    let emails: Vec<String> = (0..rows)
        .map(|i| format!("user.name{}@example{}.com", i, i % 7))
        .collect();
    let notes: Vec<String> = (0..rows)
        .map(|i| format!("order {} shipped on 2024-01-{:02}, thanks", i, i % 28 + 1))
        .collect();
    let mut p = <MaskPii as Plugin>::init(CONFIG).unwrap();
    let s = Session {
        id: 1,
        ..Default::default()
    };
    for (label, column, lineage, values) in [
        ("partial, email column", "email", "email", &emails),
        ("hash, email values as card column", "card", "card", &emails),
        ("detect, clean free text", "notes", "", &notes),
        ("detect, every value an email", "notes", "", &emails),
    ] {
        if std::env::args()
            .nth(1)
            .is_some_and(|only| !label.contains(&only))
        {
            continue;
        }
        let lineage = if lineage.is_empty() {
            vec![]
        } else {
            vec![ColumnLineage {
                schema: "public".into(),
                table: "customers".into(),
                column: lineage.into(),
                inferred: false,
            }]
        };
        let col = Column {
            index: 0,
            name: column.into(),
            type_oid: 25,
            lineage,
        };
        p.on_result_schema(&s, &[col]);
        let field = Field::new(column, pgward_plugin_sdk::arrow::DataType::Utf8, true)
            .with_metadata(HashMap::from([
                ("pgward.type_oid".to_owned(), "25".to_owned()),
                ("pgward.index".to_owned(), "0".to_owned()),
            ]));
        let array: ArrayRef = Arc::new(StringArray::from_iter_values(values.iter()));
        let ipc = write_batch(
            &RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array]).unwrap(),
        )
        .unwrap();
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(p.on_batch(&s, &ipc));
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{label}: {:.0} values/s ({:.1} µs per batch of {rows})",
            (n * rows) as f64 / secs,
            secs / n as f64 * 1e6
        );
    }
    // Baseline: the least a masking plugin does (decode, a run of stars and the last four
    // characters per value, encode), as the mask-column test plugin does.
    let field = Field::new("email", pgward_plugin_sdk::arrow::DataType::Utf8, true);
    let array: ArrayRef = Arc::new(StringArray::from_iter_values(emails.iter()));
    let ipc = write_batch(
        &RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array]).unwrap(),
    )
    .unwrap();
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(pgward_plugin_sdk::arrow::transform_batch(&ipc, |b| {
            let m = pgward_plugin_sdk::arrow::map_strings_into(b.column(0), |v, out| {
                let cut = v.len().saturating_sub(4);
                out.push_str(
                    &"********************************************************"[..cut.min(56)],
                );
                out.push_str(&v[cut..]);
            })?;
            pgward_plugin_sdk::arrow::replace_column(&b, 0, m).map(Some)
        }));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "baseline (stars and the last 4): {:.0} values/s ({:.1} µs per batch of {rows})",
        (n * rows) as f64 / secs,
        secs / n as f64 * 1e6
    );
}
