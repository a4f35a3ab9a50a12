use super::*;
use pgward_plugin_sdk::testing::TestHarness;

const EXAMPLE: &str = include_str!("../approval_rules.toml");

/// The approval a statement needs; panics when it needs none.
#[track_caller]
fn held(h: &mut TestHarness<ApprovalRules>, s: &Session, sql: &str) -> Approval {
    match h.query(s, sql) {
        Verdict::RequireApproval(a) => a,
        other => panic!(
            "{sql:?} by {}: expected require-approval, got {other:?}",
            s.user()
        ),
    }
}

#[track_caller]
fn rule_of(a: &Approval) -> &str {
    a.reason
        .strip_prefix("rule \"")
        .and_then(|r| r.split_once('"'))
        .map(|(name, _)| name)
        .unwrap_or_else(|| panic!("reason without a rule: {}", a.reason))
}

#[track_caller]
fn assert_allowed(h: &mut TestHarness<ApprovalRules>, s: &Session, sql: &str) {
    let v = h.query(s, sql);
    assert!(v.is_allow(), "{sql:?} by {}: {v:?}", s.user());
}

struct Fixture {
    h: TestHarness<ApprovalRules>,
    agent: Session,
    dev: Session,
}

fn fixture() -> Fixture {
    let mut h = TestHarness::<ApprovalRules>::new(EXAMPLE).unwrap();
    let agent = h.session("agent", &["ai-agents"]);
    let dev = h.session("dev", &["developers"]);
    Fixture { h, agent, dev }
}

#[test]
fn agent_writes_to_billing_need_billing_owners() {
    let mut f = fixture();
    let a = held(
        &mut f.h,
        &f.agent,
        "UPDATE billing.invoices SET paid = true WHERE id = 1",
    );
    assert_eq!(
        a.reason,
        "rule \"agents-billing-writes\" covers UPDATE on billing.invoices: AI agents change \
         billing data only with a person's approval"
    );
    assert_eq!(a.approver_group, "billing-owners");
    assert!(f.h.logged(
        "rule agents-billing-writes requires approval by billing-owners for a statement of agent"
    ));
    for sql in [
        "INSERT INTO billing.invoices VALUES (1)",
        "DELETE FROM BILLING.\"invoices\" WHERE id = 1",
        "WITH x AS (DELETE FROM billing.invoices WHERE id = 1 RETURNING *) SELECT * FROM x",
        "COPY (UPDATE billing.invoices SET paid = true WHERE id = 1 RETURNING id) TO STDOUT",
        "EXPLAIN ANALYZE DELETE FROM billing.invoices WHERE id = 1",
        "MERGE INTO billing.invoices i USING src s ON i.id = s.id WHEN MATCHED THEN DELETE",
        "SELECT * INTO billing.stash FROM public.orders",
        "CREATE TABLE billing.copy AS SELECT 1",
        "TRUNCATE billing.invoices",
        "DROP SCHEMA billing CASCADE",
        "PREPARE p AS DELETE FROM billing.invoices WHERE id = $1",
        "SELECT 1; UPDATE billing.invoices SET paid = true WHERE id = 1",
    ] {
        let a = held(&mut f.h, &f.agent, sql);
        assert_eq!(rule_of(&a), "agents-billing-writes", "{sql}");
    }
    let a = held(
        &mut f.h,
        &f.agent,
        "COPY (DELETE FROM billing.invoices WHERE id = 1 RETURNING id) TO STDOUT",
    );
    assert!(
        a.reason.contains("DELETE on billing.invoices inside COPY"),
        "{}",
        a.reason
    );
    // Reads, and writes elsewhere, need no approval.
    for sql in [
        "SELECT * FROM billing.invoices",
        "EXPLAIN DELETE FROM billing.invoices",
        "INSERT INTO public.notes VALUES ('UPDATE billing.invoices SET paid = true')",
        "INSERT INTO public.orders SELECT * FROM billing.invoices",
    ] {
        assert_allowed(&mut f.h, &f.agent, sql);
    }
    // The rule is for ai-agents only.
    assert_allowed(
        &mut f.h,
        &f.dev,
        "UPDATE billing.invoices SET paid = true WHERE id = 1",
    );
}

#[test]
fn ddl_in_prod_needs_dba_approval_from_anyone() {
    let mut f = fixture();
    for sql in [
        "CREATE TABLE prod.t (id int)",
        "ALTER TABLE prod.orders ADD COLUMN note text",
        "DROP TABLE prod.orders",
        "CREATE INDEX ON prod.orders (id)",
        "COMMENT ON TABLE prod.orders IS 'x'",
        "GRANT SELECT ON prod.orders TO reporting",
        "CREATE SCHEMA prod",
        "ALTER SCHEMA prod RENAME TO old_prod",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO reporting",
    ] {
        let a = held(&mut f.h, &f.dev, sql);
        assert_eq!(
            (rule_of(&a), a.approver_group.as_str()),
            ("prod-ddl", "dba"),
            "{sql}"
        );
    }
    // Rows in prod may change; DDL elsewhere is not held.
    assert_allowed(
        &mut f.h,
        &f.dev,
        "UPDATE prod.orders SET status = 'x' WHERE id = 1",
    );
    assert_allowed(&mut f.h, &f.dev, "CREATE TABLE scratch.t (id int)");
    assert_allowed(&mut f.h, &f.dev, "CREATE TABLE t (id int)");
}

#[test]
fn the_verdict_carries_the_rule_its_mode_and_its_quorum() {
    let mut f = fixture();
    let a = held(&mut f.h, &f.dev, "DROP TABLE prod.orders");
    assert_eq!(a.rule, "prod-ddl");
    assert_eq!(a.mode, ApprovalMode::Defer);
    assert_eq!(a.quorum, 2);
    let a = held(
        &mut f.h,
        &f.agent,
        "UPDATE billing.invoices SET paid = true WHERE id = 1",
    );
    assert_eq!(a.rule, "agents-billing-writes");
    assert_eq!(a.mode, ApprovalMode::Hold, "hold is the default");
    assert_eq!(a.quorum, 1, "one approver is the default");
    let err = TestHarness::<ApprovalRules>::new(
        "[[rules]]\nname = \"r\"\napprovers = \"g\"\nmode = \"later\"\n",
    )
    .err()
    .expect("an unknown mode is refused");
    assert!(err.contains("mode"), "{err}");
}

#[test]
fn updates_and_deletes_of_listed_tables_need_finance() {
    let mut f = fixture();
    for sql in [
        "UPDATE payments SET amount = 0 WHERE id = 1",
        "DELETE FROM public.refunds WHERE id = 1",
        "UPDATE \"payments\" SET amount = 0 WHERE id = 1",
    ] {
        let a = held(&mut f.h, &f.dev, sql);
        assert_eq!(
            (rule_of(&a), a.approver_group.as_str()),
            ("payment-corrections", "finance"),
            "{sql}"
        );
    }
    let a = held(
        &mut f.h,
        &f.dev,
        "UPDATE payments SET amount = 0 WHERE id = 1",
    );
    assert_eq!(
        a.reason,
        "rule \"payment-corrections\" covers UPDATE on public.payments"
    );
    assert_allowed(&mut f.h, &f.dev, "INSERT INTO payments VALUES (1)");
    assert_allowed(
        &mut f.h,
        &f.dev,
        "UPDATE other.payments SET amount = 0 WHERE id = 1",
    );
    assert_allowed(
        &mut f.h,
        &f.dev,
        "UPDATE \"Payments\" SET amount = 0 WHERE id = 1",
    );
}

#[test]
fn unqualified_names_resolve_through_the_search_path() {
    let config = r#"
search_path = ["billing", "public"]

[[rules]]
name = "billing"
on = ["billing.*"]
approvers = "owners"
"#;
    let mut h = TestHarness::<ApprovalRules>::new(config).unwrap();
    let s = h.session("x", &[]);
    let a = held(&mut h, &s, "DELETE FROM invoices WHERE id = 1");
    assert_eq!(
        a.reason,
        "rule \"billing\" covers DELETE on billing.invoices"
    );
    assert_allowed(&mut h, &s, "DELETE FROM public.invoices WHERE id = 1");
}

#[test]
fn writes_that_cannot_be_seen_need_the_first_rules_approval() {
    let mut f = fixture();
    for sql in [
        "DO $$ BEGIN DELETE FROM billing.invoices; END $$",
        "CALL billing.settle()",
        "VACUUM (ANALYZE) billing.invoices",
    ] {
        let a = held(&mut f.h, &f.agent, sql);
        assert_eq!(rule_of(&a), "agents-billing-writes", "{sql}");
        let a = held(&mut f.h, &f.dev, sql);
        assert_eq!(rule_of(&a), "prod-ddl", "{sql}");
    }
    let a = held(&mut f.h, &f.agent, "REINDEX TABLE billing.invoices");
    assert!(
        a.reason
            .contains("covers REINDEX, which the gateway could not analyse"),
        "{}",
        a.reason
    );
    let config = EXAMPLE.replace(
        "hold_invisible_writes = true",
        "hold_invisible_writes = false",
    );
    let mut h = TestHarness::<ApprovalRules>::new(&config).unwrap();
    let s = h.session("agent", &["ai-agents"]);
    assert_allowed(&mut h, &s, "CALL billing.settle()");
    // Nobody any rule is for: nothing to hold.
    let mut h = TestHarness::<ApprovalRules>::new(
        "[[rules]]\nname = \"r\"\nusers = [\"bob\"]\napprovers = \"ops\"",
    )
    .unwrap();
    let s = h.session("alice", &[]);
    assert_allowed(&mut h, &s, "DO $$ BEGIN END $$");
}

#[test]
fn actions_are_checked_by_name() {
    let config = r#"
[[rules]]
name = "no-agent-truncate"
users = ["agent"]
on = ["*"]
actions = ["truncate", "drop", "copy-from"]
approvers = "dba"
"#;
    let mut h = TestHarness::<ApprovalRules>::new(config).unwrap();
    let s = h.session("agent", &[]);
    for sql in ["TRUNCATE t", "DROP VIEW v", "COPY t FROM STDIN"] {
        assert_eq!(
            rule_of(&held(&mut h, &s, sql)),
            "no-agent-truncate",
            "{sql}"
        );
    }
    assert_allowed(&mut h, &s, "DELETE FROM t WHERE id = 1");
    let err = TestHarness::<ApprovalRules>::new(&config.replace("\"drop\"", "\"dorp\""))
        .err()
        .unwrap();
    assert!(
        err.contains("key `actions`") && err.contains("dorp"),
        "{err}"
    );
}

#[test]
fn bad_configs_are_refused_with_the_key_named() {
    let err = |text: &str| TestHarness::<ApprovalRules>::new(text).err().unwrap();
    let e = err("[[rules]]\nname = \"r\"");
    assert!(e.contains("missing field `approvers`"), "{e}");
    let e = err("[[rules]]\nname = \"r\"\napprovers = \"x\"\napprover = \"y\"");
    assert!(e.contains("approver"), "{e}");
    let e = err("[[rules]]\nname = \"r\"\napprovers = \"x\"\non = [\"a.b.c\"]");
    assert!(e.contains("key `on`"), "{e}");
    let e = err("[[rules]]\nname = \"r\"\napprovers = \" \"");
    assert!(e.contains("approvers must name a group"), "{e}");
    let e = err(
        "[[rules]]\nname = \"r\"\napprovers = \"x\"\n[[rules]]\nname = \"r\"\napprovers = \"x\"",
    );
    assert!(e.contains("used twice"), "{e}");
    let e = err("[[rules]]\nname = \"r\"\napprovers = \"x\"\nactions = []");
    assert!(e.contains("must not be empty"), "{e}");
    assert!(TestHarness::<ApprovalRules>::new("").is_ok());
}

/// Every verdict follows from the config, the identity and the statement's shape (the plugin
/// keeps no session state), so every one is cacheable: held or allowed alike.
#[test]
fn every_verdict_is_cacheable() {
    let Fixture { mut h, agent, dev } = fixture();
    for (s, sql) in [
        (
            &agent,
            "UPDATE billing.invoices SET paid = true WHERE id = 1",
        ),
        (&agent, "SELECT * FROM billing.invoices"),
        (&dev, "UPDATE billing.invoices SET paid = true WHERE id = 1"),
    ] {
        h.query(s, sql);
        assert!(h.cacheable(), "{sql}");
    }
}
