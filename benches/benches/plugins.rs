//! Cost of plugin calls through the real plugin host and real `.wasm` components (build them
//! first with `scripts/build-plugins.sh`):
//! - one on-query call per plugin per statement, marshaling of the statement analysis included,
//!   with `deny-keyword` (lower-cases and searches the SQL text) and with the template plugin
//!   (checks on the analysis only), and through the built-in guardrails and mask-pii;
//! - one on-batch call of the mask-column plugin on 4096 rows of one text column, Arrow IPC in
//!   and out, against the same plugin code run natively (decode, mask, encode);
//! - one on-batch call of mask-pii on the same column, classified by lineage, with its keyed
//!   hash and with the partial strategy.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use criterion::{criterion_group, criterion_main, Criterion};
use mask_column::MaskColumn;
use pgward::auth::Identity;
use pgward::config::PluginsConfig;
use pgward::plugins::bindings::pgward::plugin::types::{
    BatchResult, Column, ColumnLineage, Protocol,
};
use pgward::plugins::{convert_session, Chain, LoadedPlugin, PluginHost};
use pgward::sql::{LexOptions, SqlAnalyzer};
use pgward_plugin_sdk::Plugin;
use std::hint::black_box;
use std::sync::Arc;

/// Rows of the on-batch benchmark (the gateway's batch size is bounded by rows and bytes).
const BATCH_ROWS: usize = 4096;

/// A plugin host over a fresh directory holding `files` (built plugin, file stem, config),
/// with the verdict cache off: the on-query benchmarks measure calls.
fn host_with(label: &str, files: &[(&str, &str, &str)]) -> (Arc<PluginHost>, std::path::PathBuf) {
    host_caching(label, files, 0)
}

fn host_caching(
    label: &str,
    files: &[(&str, &str, &str)],
    verdict_cache: usize,
) -> (Arc<PluginHost>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "pgward-bench-plugins-{label}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (wasm, stem, config) in files {
        std::fs::copy(
            pgward_e2e::plugin_wasm(wasm),
            dir.join(format!("{stem}.wasm")),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{stem}.toml")), config).unwrap();
    }
    let host = PluginHost::start(PluginsConfig {
        directory: Some(dir.clone()),
        watch: false,
        verdict_cache,
        ..Default::default()
    })
    .unwrap();
    (host, dir)
}

/// The plugin `name` of `chain`.
fn loaded(chain: &Chain, name: &str) -> Arc<LoadedPlugin> {
    chain
        .plugins
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} is loaded"))
        .clone()
}

fn bench(c: &mut Criterion) {
    let (host, dir) = host_with(
        "deny",
        &[
            (
                "deny_keyword",
                "deny",
                "word = \"forbidden_table\"\nsqlstate = \"42501\"\nmessage = \"no\"\n",
            ),
            ("mask_column", "mask_column", MASK_CONFIG),
        ],
    );
    // The template: the checks a typical policy makes on the analysis (fingerprints, commands,
    // groups, dropped tables), so its time is mostly the call and the marshaling.
    let (template, template_dir) = host_with(
        "template",
        &[(
            "pgward_plugin_template",
            "template",
            "deny_commands = [\"VACUUM\"]\nprotected_tables = [\"public.accounts\"]\n\
             drop_allowed_groups = [\"dba\"]\n",
        )],
    );
    // The built-in policies with the configs the load benchmark uses.
    let (policies, policies_dir) = host_with(
        "policies",
        &[
            ("guardrails", "10-guardrails", ""),
            ("mask_pii", "20-mask_pii", MASK_PII_CONFIG),
        ],
    );
    let identity = Identity {
        user: "alice".into(),
        groups: vec!["dev".into()],
        ..Default::default()
    };
    let session = convert_session(1, &identity, "bench", "127.0.0.1:5555", "criterion");
    let analyzer = SqlAnalyzer::new(1000);
    // The same policies answering from their verdict cache (contract 0.5 cache-verdict).
    let (cached, cached_dir) = host_caching(
        "policies-cached",
        &[
            ("guardrails", "10-guardrails", ""),
            ("mask_pii", "20-mask_pii", MASK_PII_CONFIG),
        ],
        4096,
    );
    let cached_chain = cached.chain();
    let who = cached.identity_id(&session);
    let opts = LexOptions::default();
    let chain = host.chain();
    let template_chain = template.chain();
    let policies_chain = policies.chain();
    for (label, sql) in [
        ("pgbench select", "SELECT abalance FROM pgbench_accounts WHERE aid = 42"),
        (
            "3-way join",
            "SELECT c.name, o.total, p.title FROM customers c JOIN orders o ON o.customer_id = c.id \
             JOIN products p ON p.id = o.product_id WHERE c.email = 'ada@example.com' AND lower(p.title) LIKE 'x%'",
        ),
    ] {
        let analysis = analyzer.analyze(sql, opts);
        for (plugin, host, chain) in [
            ("deny-keyword", &host, &chain),
            ("template", &template, &template_chain),
            ("guardrails + mask-pii (2 calls)", &policies, &policies_chain),
            ("guardrails + mask-pii, cache hits", &cached, &cached_chain),
        ] {
            c.bench_function(&format!("on-query, {plugin}, {label}"), |b| {
                b.iter(|| {
                    host.on_query(
                        chain,
                        &session,
                        who,
                        black_box(sql),
                        &analysis,
                        Protocol::Simple,
                        |t| analyzer.analyze(t, opts),
                    )
                })
            });
        }
    }

    let plugin = loaded(&chain, "mask-column");
    let emails = emails(BATCH_ROWS);
    let ipc = ipc_stream(&emails);
    let result = host.on_batch(&plugin, &session, &ipc).expect("on-batch");
    check_masked(&emails, &result);
    c.bench_function(&format!("on-batch, mask-column, {BATCH_ROWS} rows"), |b| {
        b.iter(|| host.on_batch(&plugin, &session, black_box(&ipc)))
    });

    // The same plugin code, natively: the price of the sandbox and the copies in and out.
    let mut native = <MaskColumn as Plugin>::init(MASK_CONFIG).unwrap();
    let native_session = pgward_plugin_sdk::Session::default();
    c.bench_function(
        &format!("on-batch, mask-column natively, {BATCH_ROWS} rows"),
        |b| b.iter(|| native.on_batch(&native_session, black_box(&ipc))),
    );

    // mask-pii as a result arrives: the statement (on-query), the columns with their lineage
    // (on-result-schema: the plan), then the batch as the gateway sends it (each field says
    // its type and place in the result).
    let gateway_ipc = {
        let field = Field::new("email", DataType::Utf8, true).with_metadata(
            [("pgward.type_oid", "25"), ("pgward.index", "0")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        let column: ArrayRef = Arc::new(StringArray::from_iter_values(&emails));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![column]).unwrap();
        let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref()).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        writer.into_inner().unwrap()
    };
    let (partial, partial_dir) = host_with(
        "mask-pii-partial",
        &[(
            "mask_pii",
            "mask_pii",
            &MASK_PII_CONFIG.replace("strategy = \"hash\"", "strategy = \"partial\""),
        )],
    );
    let partial_chain = partial.chain();
    for (strategy, host, chain) in [
        ("keyed hash", &policies, &policies_chain),
        ("partial", &partial, &partial_chain),
    ] {
        let plugin = loaded(chain, "mask-pii");
        let sql = "SELECT email FROM public.customers";
        let analysis = analyzer.analyze(sql, opts);
        host.on_query(chain, &session, 0, sql, &analysis, Protocol::Simple, |t| {
            analyzer.analyze(t, opts)
        });
        let columns = [Column {
            index: 0,
            name: "email".into(),
            type_oid: 25,
            lineage: vec![ColumnLineage {
                schema: "public".into(),
                table: "customers".into(),
                column: "email".into(),
                inferred: false,
            }],
        }];
        let interest = host
            .on_result_schema(&plugin, &session, &columns)
            .expect("on-result-schema");
        assert_eq!(interest.modify, [0], "mask-pii masks the e-mails");
        let result = host
            .on_batch(&plugin, &session, &gateway_ipc)
            .expect("on-batch");
        let BatchResult::Replace(bytes) = result else {
            panic!("mask-pii did not replace the batch: {result:?}");
        };
        let batch = StreamReader::try_new(bytes.as_slice(), None)
            .unwrap()
            .next()
            .expect("one batch")
            .unwrap();
        let masked = batch.column(0).as_string::<i32>();
        assert_eq!(masked.len(), emails.len());
        for (email, masked) in emails.iter().zip(masked) {
            assert_ne!(
                masked,
                Some(email.as_str()),
                "{strategy} left {email} as it was"
            );
        }
        c.bench_function(
            &format!("on-batch, mask-pii {strategy}, {BATCH_ROWS} rows"),
            |b| b.iter(|| host.on_batch(&plugin, &session, black_box(&gateway_ipc))),
        );
    }
    for dir in [dir, template_dir, policies_dir, partial_dir, cached_dir] {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// mask-pii as the load benchmark runs it: e-mails classified by lineage, keyed hash.
const MASK_PII_CONFIG: &str = "[hash]\nkey = \"bench-key-0123456789abcdef\"\n\n[[class]]\n\
    name = \"email\"\nlineage = [\"*.*.email\"]\ndetectors = [\"email\"]\nstrategy = \"hash\"\n";

const MASK_CONFIG: &str = "columns = [\"email\"]\n";

/// Distinct, realistic addresses of 18 to 31 bytes (24 on average).
fn emails(rows: usize) -> Vec<String> {
    const FIRST: [&str; 10] = [
        "ada", "grace", "alan", "edsger", "barbara", "donald", "margaret", "ken", "dennis",
        "frances",
    ];
    const LAST: [&str; 10] = [
        "lovelace", "hopper", "turing", "dijkstra", "liskov", "knuth", "hamilton", "thompson",
        "ritchie", "allen",
    ];
    const DOMAINS: [&str; 4] = ["example.com", "mail.org", "corp.io", "uni.edu"];
    (0..rows)
        .map(|i| {
            format!(
                "{}.{}{}@{}",
                FIRST[i % 10],
                LAST[(i / 10) % 10],
                i % 97,
                DOMAINS[i % 4]
            )
        })
        .collect()
}

/// One batch with one Utf8 column `email`, as the gateway would send it.
fn ipc_stream(emails: &[String]) -> Vec<u8> {
    let column: ArrayRef = Arc::new(StringArray::from_iter_values(emails));
    let batch = RecordBatch::try_from_iter([("email", column)]).unwrap();
    let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref()).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    writer.into_inner().unwrap()
}

/// The plugin's answer holds every address masked, in order.
fn check_masked(emails: &[String], result: &BatchResult) {
    let BatchResult::Replace(bytes) = result else {
        panic!("mask-column did not replace the batch: {result:?}");
    };
    let mut reader = StreamReader::try_new(bytes.as_slice(), None).unwrap();
    let batch = reader.next().expect("one batch").unwrap();
    assert!(reader.next().is_none(), "more than one batch");
    let masked = batch.column(0).as_string::<i32>();
    assert_eq!(masked.len(), emails.len());
    for (email, masked) in emails.iter().zip(masked) {
        let masked = masked.expect("no nulls");
        assert_eq!(masked, mask_column::mask(email));
        assert_ne!(masked, email);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
