//! [`SqlAnalyzer`]: analyses cached by fingerprint, so repeated query shapes skip sqlparser.
//!
//! The cache returns the analysis computed from the first text seen with a fingerprint. That is
//! sound because an analysis holds no literal values, and any analysis that looked at a literal
//! (a constant WHERE such as `1=1`, `EXPLAIN (ANALYZE 0)`) is never stored.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::lexer::{self, LexFlags};
use crate::{analyze, Analysis, LexOptions};

const SHARDS: usize = 16;
/// A thread's key buffer is dropped after a text longer than this, not kept forever.
const MAX_KEPT_KEY: usize = 64 * 1024;

thread_local! {
    /// Reused fingerprint buffer, so a cache hit allocates nothing.
    static KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Shared, thread-safe analyzer with a bounded cache keyed by fingerprint and [`LexOptions`].
pub struct SqlAnalyzer {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    parses: AtomicU64,
    hits: AtomicU64,
}

/// Entries by key hash; a bucket holds the (rare) keys sharing a hash.
type Bucket = Vec<(Box<[u8]>, Arc<Analysis>)>;

#[derive(Default)]
struct Shard {
    buckets: HashMap<u64, Bucket, BuildHasherDefault<Prehashed>>,
    len: usize,
}

/// The map key is already a good hash; hashing it again would be wasted work.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl SqlAnalyzer {
    /// An analyzer caching at most `capacity` analyses (0 disables the cache).
    pub fn new(capacity: usize) -> Self {
        let shards = SHARDS.min(capacity.max(1));
        SqlAnalyzer {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_capacity: capacity / shards,
            parses: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Analyses one Query-message string (which may hold several statements) or one Parse text.
    pub fn analyze(&self, sql: &str, opts: LexOptions) -> Arc<Analysis> {
        KEY.with(|key| match key.try_borrow_mut() {
            Ok(mut key) => {
                let analysis = self.analyze_with(sql, opts, &mut key);
                if key.capacity() > MAX_KEPT_KEY {
                    *key = Vec::new();
                }
                analysis
            }
            Err(_) => self.analyze_with(sql, opts, &mut Vec::new()),
        })
    }

    /// How many statements went through sqlparser (cache misses and uncacheable texts).
    pub fn parse_count(&self) -> u64 {
        self.parses.load(Ordering::Relaxed)
    }

    /// How many analyses were served from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn analyze_with(&self, sql: &str, opts: LexOptions, key: &mut Vec<u8>) -> Arc<Analysis> {
        key.clear();
        // The options are the first byte of the key: the same text lexes differently under them.
        key.push(u8::from(opts.standard_conforming_strings));
        let flags = lexer::normalize_into(sql, opts, key);
        let reusable = cacheable(flags) && self.shard_capacity > 0;
        let hash = lexer::fingerprint_hash(key);
        let shard = &self.shards[(hash >> 40) as usize % self.shards.len()];
        if reusable {
            if let Some(hit) = lock(shard).get(hash, key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return hit;
            }
        }
        let outcome = analyze::analyze_text(sql, opts, &key[1..], flags);
        self.parses.fetch_add(outcome.parses, Ordering::Relaxed);
        let analysis = Arc::new(outcome.analysis);
        if reusable && outcome.reusable {
            lock(shard).insert(hash, key, &analysis, self.shard_capacity);
        }
        analysis
    }
}

/// Whether an analysis of a text with these lexer flags may serve other texts.
pub(crate) fn cacheable(flags: LexFlags) -> bool {
    // The backslash flag is only raised when standard_conforming_strings is off.
    !flags.unterminated
        && !flags.question_operator
        && !flags.backslash_in_plain_string
        && !flags.depends_on_string_mode
        && !flags.multibyte_backslash
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic elsewhere cannot leave a shard half-updated in a way that matters: entries are
    // immutable and `len` only bounds memory.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    fn get(&self, hash: u64, key: &[u8]) -> Option<Arc<Analysis>> {
        let bucket = self.buckets.get(&hash)?;
        bucket
            .iter()
            .find(|(k, _)| **k == *key)
            .map(|(_, a)| Arc::clone(a))
    }

    fn insert(&mut self, hash: u64, key: &[u8], analysis: &Arc<Analysis>, capacity: usize) {
        if self.get(hash, key).is_some() {
            return;
        }
        if self.len >= capacity {
            // Clearing the shard is O(1) amortised and keeps hits free of LRU bookkeeping (a
            // hit only reads). Fingerprints collapse literals, so the working set of shapes is
            // normally far below capacity; when it is not, the cost is one re-parse per shape.
            self.buckets.clear();
            self.len = 0;
        }
        self.buckets
            .entry(hash)
            .or_default()
            .push((key.into(), Arc::clone(analysis)));
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StatementKind;

    const ON: LexOptions = LexOptions {
        standard_conforming_strings: true,
    };
    const OFF: LexOptions = LexOptions {
        standard_conforming_strings: false,
    };

    impl SqlAnalyzer {
        fn len(&self) -> usize {
            self.shards.iter().map(|s| lock(s).len).sum()
        }
    }

    #[test]
    fn pgbench_shapes_are_parsed_once() {
        let analyzer = SqlAnalyzer::new(1024);
        let first = analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 123;", ON);
        let second = analyzer.analyze(
            "select abalance   from pgbench_accounts where aid = 98765",
            ON,
        );
        assert_eq!((analyzer.parse_count(), analyzer.cache_hits()), (1, 1));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(
            second.fingerprint,
            "select abalance from pgbench_accounts where aid = ?"
        );
        analyzer.analyze(
            "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 7;",
            ON,
        );
        analyzer.analyze(
            "UPDATE pgbench_accounts SET abalance = abalance + 4410 WHERE aid = 99;",
            ON,
        );
        assert_eq!((analyzer.parse_count(), analyzer.cache_hits()), (2, 2));
    }

    #[test]
    fn constant_where_results_are_never_shared() {
        for (first, second) in [("1=1", "1=2"), ("1=2", "1=1"), ("'a'='a'", "'a'='b'")] {
            let analyzer = SqlAnalyzer::new(1024);
            let a = analyzer.analyze(&format!("DELETE FROM t WHERE {first}"), ON);
            let b = analyzer.analyze(&format!("DELETE FROM t WHERE {second}"), ON);
            assert_eq!(a.fingerprint, b.fingerprint);
            assert_ne!(
                a.statements[0].where_always_true,
                b.statements[0].where_always_true
            );
            assert_eq!((analyzer.parse_count(), analyzer.cache_hits()), (2, 0));
        }
    }

    #[test]
    fn lex_options_are_part_of_the_key() {
        let analyzer = SqlAnalyzer::new(1024);
        let on = analyzer.analyze("SELECT 'x' FROM t", ON);
        let off = analyzer.analyze("SELECT 'x' FROM t", OFF);
        assert!(!Arc::ptr_eq(&on, &off));
        assert_eq!(on.fingerprint_id, off.fingerprint_id);
        analyzer.analyze("SELECT 'y' FROM t", OFF);
        assert_eq!((analyzer.parse_count(), analyzer.cache_hits()), (2, 1));
    }

    #[test]
    fn backslash_ambiguity_is_unknown_and_never_cached() {
        let analyzer = SqlAnalyzer::new(1024);
        analyzer.analyze("SELECT 'ab' FROM t", OFF);
        let a = analyzer.analyze(r"SELECT 'a\'; DROP TABLE t; --' FROM t", OFF);
        assert_eq!(a.statements.len(), 1);
        assert_eq!(a.statements[0].kind, StatementKind::Unknown);
        assert_eq!((analyzer.parse_count(), analyzer.cache_hits()), (1, 0));
    }

    #[test]
    fn unterminated_text_is_never_cached() {
        let analyzer = SqlAnalyzer::new(1024);
        for sql in [
            "SELECT 'abc",
            "SELECT 'xyz",
            "SELECT $a$ open",
            "SELECT 1 /* open",
        ] {
            assert!(analyzer.analyze(sql, ON).has_unknown(), "{sql}");
        }
        assert_eq!(
            (
                analyzer.parse_count(),
                analyzer.cache_hits(),
                analyzer.len()
            ),
            (0, 0, 0)
        );
        let a = analyzer.analyze("DELETE FROM t; SELECT 'open", ON);
        assert_eq!(a.statements[0].writes[0].relation.name, "t");
        assert_eq!(a.statements[1].kind, StatementKind::Unknown);
        analyzer.analyze("DELETE FROM t; SELECT 'open", ON);
        assert_eq!((analyzer.parse_count(), analyzer.cache_hits()), (2, 0));
    }

    #[test]
    fn question_operator_text_is_never_cached() {
        let analyzer = SqlAnalyzer::new(1024);
        analyzer.analyze("SELECT * FROM t WHERE j ? 'k'", ON);
        analyzer.analyze("SELECT * FROM t WHERE j ? 'k'", ON);
        assert_eq!((analyzer.parse_count(), analyzer.cache_hits()), (2, 0));
    }

    #[test]
    fn cache_stays_within_capacity() {
        let analyzer = SqlAnalyzer::new(32);
        for i in 0..500 {
            let a = analyzer.analyze(&format!("SELECT c{i} FROM t{i} WHERE id = {i}"), ON);
            assert_eq!(a.statements[0].reads[0].name, format!("t{i}"));
            assert!(analyzer.len() <= 32);
        }
        let disabled = SqlAnalyzer::new(0);
        disabled.analyze("SELECT 1", ON);
        disabled.analyze("SELECT 2", ON);
        assert_eq!(
            (
                disabled.parse_count(),
                disabled.cache_hits(),
                disabled.len()
            ),
            (2, 0, 0)
        );
    }

    #[test]
    fn concurrent_callers_see_one_consistent_analysis() {
        let analyzer = Arc::new(SqlAnalyzer::new(1024));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let analyzer = Arc::clone(&analyzer);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let a =
                            analyzer.analyze(&format!("DELETE FROM t{} WHERE id = {i}", i % 8), ON);
                        assert_eq!(
                            a.statements[0].writes[0].relation.name,
                            format!("t{}", i % 8),
                            "thread {t}"
                        );
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(analyzer.parse_count() + analyzer.cache_hits(), 800);
        assert!(analyzer.parse_count() <= 8 * 4);
    }

    /// Run with `--release -- --nocapture --ignored` for meaningful numbers.
    #[test]
    #[ignore]
    fn timing_of_normalize_and_cache_hit() {
        const ROUNDS: u32 = 200_000;
        let analyzer = SqlAnalyzer::new(1024);
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 123456;";
        analyzer.analyze(sql, ON);
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(crate::normalize(std::hint::black_box(sql), ON));
        }
        let normalize = start.elapsed() / ROUNDS;
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(analyzer.analyze(std::hint::black_box(sql), ON));
        }
        let hit = start.elapsed() / ROUNDS;
        let start = std::time::Instant::now();
        for _ in 0..2_000 {
            std::hint::black_box(crate::analyze(std::hint::black_box(sql), ON));
        }
        let miss = start.elapsed() / 2_000;
        println!("normalize(): {normalize:?}; analyze() cache hit (normalize+lookup): {hit:?}; uncached analyze(): {miss:?}");
    }
}
