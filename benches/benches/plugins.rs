//! Cost of one on-query call per plugin per statement, marshaling of the statement analysis
//! included, through the real plugin host and a real `.wasm` (build them first with
//! `scripts/build-plugins.sh`).

use criterion::{criterion_group, criterion_main, Criterion};
use pgward::auth::Identity;
use pgward::config::PluginsConfig;
use pgward::plugins::bindings::pgward::plugin::types::Protocol;
use pgward::plugins::{convert_session, PluginHost};
use pgward::sql::{LexOptions, SqlAnalyzer};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("pgward-bench-plugins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        pgward_e2e::plugin_wasm("deny_keyword"),
        dir.join("deny.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.join("deny.toml"),
        "word = \"forbidden_table\"\nsqlstate = \"42501\"\nmessage = \"no\"\n",
    )
    .unwrap();
    let host = PluginHost::start(PluginsConfig {
        directory: Some(dir.clone()),
        watch: false,
        ..Default::default()
    })
    .unwrap();
    let identity = Identity {
        user: "alice".into(),
        groups: vec!["dev".into()],
    };
    let session = convert_session(1, &identity, "bench", "127.0.0.1:5555", "criterion");
    let analyzer = SqlAnalyzer::new(1000);
    let opts = LexOptions::default();
    let chain = host.chain();
    for (label, sql) in [
        ("pgbench select", "SELECT abalance FROM pgbench_accounts WHERE aid = 42"),
        (
            "3-way join",
            "SELECT c.name, o.total, p.title FROM customers c JOIN orders o ON o.customer_id = c.id \
             JOIN products p ON p.id = o.product_id WHERE c.email = 'ada@example.com' AND lower(p.title) LIKE 'x%'",
        ),
    ] {
        let analysis = analyzer.analyze(sql, opts);
        c.bench_function(&format!("on-query, 1 plugin, {label}"), |b| {
            b.iter(|| {
                host.on_query(&chain, &session, black_box(sql), &analysis, Protocol::Simple, |t| {
                    analyzer.analyze(t, opts)
                })
            })
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
