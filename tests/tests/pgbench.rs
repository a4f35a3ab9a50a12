//! pgbench through the gateway: initialisation (COPY, DDL, VACUUM) and all three query modes.

use pgward_e2e::{pgbench_field as field, Gateway, GatewayOptions, Postgres};

fn pgbench(gw: &Gateway, db: &str, args: &[&str]) -> String {
    gw.pgbench("alice", db, args)
}

#[test]
fn pgbench_all_modes_run_without_failures() {
    let pg = Postgres::shared();
    let db = pg.create_database("bench").unwrap();
    let mut gw = Gateway::start(pg, GatewayOptions::default()).unwrap();
    pgbench(&gw, &db, &["-i", "-s", "2", "-q"]);
    let accounts = pg
        .superuser_sql(&db, "SELECT count(*) FROM pgbench_accounts")
        .unwrap();
    assert_eq!(accounts.trim(), "200000", "pgbench -i loaded through COPY");
    for mode in ["simple", "extended", "prepared"] {
        // The default TPC-B-like script: BEGIN, updates, insert, select, END.
        let report = pgbench(&gw, &db, &["-M", mode, "-c", "4", "-j", "2", "-T", "3"]);
        let processed: u64 = field(&report, "number of transactions actually processed:")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            processed > 100,
            "{mode}: only {processed} transactions\n{report}"
        );
        let failed = field(&report, "number of failed transactions:");
        assert!(
            failed.starts_with("0 "),
            "{mode}: failed transactions: {failed}\n{report}"
        );
        // Each transaction inserted a history row (pgbench truncates the table before a run).
        let history: u64 = pg
            .superuser_sql(&db, "SELECT count(*) FROM pgbench_history")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(history, processed, "{mode}");
        // Select-only as in the benchmark.
        let report = pgbench(
            &gw,
            &db,
            &["-M", mode, "-S", "-c", "8", "-j", "2", "-T", "2"],
        );
        assert!(
            field(&report, "number of failed transactions:").starts_with("0 "),
            "{report}"
        );
    }

    // Every statement was analysed, but each statement shape was parsed once: the gateway
    // reports its totals when it shuts down.
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(std::time::Duration::from_secs(10)).is_some());
    let log = gw.log();
    let totals = log
        .lines()
        .find(|l| l.contains("sql analysis totals"))
        .unwrap_or_else(|| panic!("no totals in the log:\n{log}"));
    let number = |key: &str| -> u64 {
        totals
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {totals}"))
    };
    let (parsed, hits) = (number("parsed="), number("cache_hits="));
    assert!(hits > 10_000, "{totals}");
    assert!(parsed < 200, "statements re-parsed: {totals}");
}
