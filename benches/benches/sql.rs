//! Cost of SQL analysis on the hot path: normalizing a statement and hitting the cache (what
//! every repeated statement pays), against a full sqlparser analysis (what a new shape pays once).

use criterion::{criterion_group, criterion_main, Criterion};
use pgward::sql::{analyze, normalize, LexOptions, SqlAnalyzer};
use std::hint::black_box;

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
const JOIN: &str = "SELECT c.name, o.total, p.title FROM customers c JOIN orders o ON o.customer_id = c.id \
                    JOIN products p ON p.id = o.product_id WHERE c.email = 'ada@example.com' AND o.total > 10.5";

fn bench(c: &mut Criterion) {
    let opts = LexOptions::default();
    c.bench_function("normalize pgbench select", |b| {
        b.iter(|| normalize(black_box(PGBENCH_SELECT), opts))
    });
    let analyzer = SqlAnalyzer::new(10_000);
    analyzer.analyze(PGBENCH_SELECT, opts);
    let mut aid = 0u32;
    c.bench_function("analyze pgbench select (cache hit, new literal)", |b| {
        b.iter_batched(
            || {
                aid = aid.wrapping_add(7919);
                format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
            },
            |sql| analyzer.analyze(black_box(&sql), opts),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("analyze 3-way join (uncached parse)", |b| {
        b.iter(|| analyze(black_box(JOIN), opts))
    });
    let insert = format!(
        "INSERT INTO t (a, b, c) VALUES {}",
        (0..100)
            .map(|i| format!("({i}, 'x{i}', {i}.5)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    c.bench_function("analyze 100-row insert (uncached parse)", |b| {
        b.iter(|| analyze(black_box(&insert), opts))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
