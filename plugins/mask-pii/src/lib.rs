//! Built-in policy: mask personal and secret data in results, by lineage and by content.
//!
//! Which data is sensitive comes from two sources together:
//!
//! - **Lineage**: each [class](config::Class) names the source columns that hold it
//!   (`public.customers.email`, `*.*.ssn`). The gateway reports, for every result column,
//!   the table columns it comes from, through aliases, views, subqueries, CTEs, unions and
//!   expressions, so `SELECT email AS e` or `SELECT lower(email)` is still `customers.email`.
//! - **Content**: [detectors](detect) find emails, phone numbers, payment cards (Luhn), US
//!   SSNs (validity rules), IBANs (mod 97), JWTs, private keys and API keys inside any text
//!   value, and a class owns the detectors that recognise its values.
//!
//! Each class masks with one [strategy](strategy::Strategy): `redact` (a fixed text),
//! `partial` (keep the last N letters and digits, at most half), `hash` (SipHash-2-4 by
//! default, keyed BLAKE3 or HMAC-SHA256, with a configured key, hex: deterministic, so joins
//! and GROUP BY still work) or
//! `null`. Users and
//! groups can be exempt globally or per class; an identity exempt from every class pays
//! nothing, since the plugin then asks for no column and its results stay on the gateway's
//! byte fast path.
//!
//! # What happens to each result column
//!
//! For a session, only the classes it is not exempt from count. Then, per column
//! ([`plan::plan_column`]):
//!
//! | the column's lineage | the column's values |
//! | --- | --- |
//! | a table column of class C (`email`, `c.email AS e`) | masked whole with C's strategy; integers may be hashed, other non-text values become NULL |
//! | only columns of one class C, derived (`lower(email)`, `string_agg(email, ',')`, a view's column, `substr(ssn, 1, 3)`) | masked whole with C's strategy (values that are not text become NULL: `length(ssn)`, `count(email)`) |
//! | only classified columns of several classes (`email \|\| phone`) | masked whole with the least revealing of their strategies (null, then redact, hash, partial) |
//! | classified columns mixed with others, or a whole row (`row_to_json(c)`, `c`, `email \|\| note`, a `*` over a subquery) | the detectors mask what they find (each match with the strategy of the detector's class), the rest stays readable — if every class involved has detectors. If one has none, masking cannot be guaranteed: with `on_uncertain = "deny"` (default) the result stops with SQLSTATE 42501 as soon as the column holds a value; with `"detect"` the detectors run anyway (best effort). A value that is not text (`count(c)`) is NULL instead |
//! | no classified source, or no lineage at all (a constant, a parameter, a FETCH of an expression), text-like type | the detectors run (with `scan_unclassified = false`, plain unclassified table columns are skipped) |
//! | not text-like (numbers, dates, booleans, uuids) and not classified | left alone |
//!
//! Masked values keep their column's type, so every client decodes them: `json`/`jsonb` get a
//! JSON string, `numeric` gets NULL (or the hash as digits), array columns are masked element
//! by element, and inside binary values (bytea, types the gateway passes as raw bytes such as
//! records in binary format) detected bytes are overwritten with `*` so the value keeps its
//! length and structure. A detection under the `null` strategy makes the whole value NULL.
//!
//! This covers every way a result reaches the client — simple and extended protocol, text or
//! binary format, cursors, row-limited portals, views and `COPY ... TO STDOUT` — because the
//! gateway hands all of them to `on_result_schema`/`on_batch` with the same lineage.
//!
//! # Statements refused before they run
//!
//! With `on_uncertain = "deny"` some statements are refused (42501) for identities whose
//! results are masked, because they move data where lineage is lost or defeated: unknown
//! statements, functions outside an allowlist, statistics catalogs, truncating casts, casts
//! whose errors would echo a value, cursors and SQL `PREPARE` over computed columns when some
//! class has no detector, writes of rows that were read, COPY to server files, and changes
//! (renames, generated columns, triggers, indexes) to the tables the classes name. The
//! [`statement`] module documents each rule and why.
//!
//! # What this does not cover
//!
//! Inference through predicates (`WHERE ssn LIKE '123%'` returns which rows match), timing,
//! and values that PostgreSQL itself puts in error messages for statements the rules above
//! do not catch. NOTICE messages are not masked: functions that could raise them are outside
//! the allowlist. A function allowed by name runs whatever is found under that name on the
//! search path.
//!
//! # Layout
//! - [`mod@config`]: `mask_pii.toml`, checked at load, errors naming the key.
//! - [`patterns`]: lineage patterns of classes, function patterns of `allow_functions`.
//! - [`detect`]: the content detectors.
//! - [`strategy`]: redact, partial, keyed hash, null; how a masked value fits its type.
//! - [`plan`]: per result, what to do with each column; plans kept per session for `on_batch`.
//! - [`batch`]: applying a plan to an Arrow batch.
//! - [`statement`]: statements refused in `on_query`, and the function allowlist.
//! - [`sqlscan`]: a small SQL tokenizer for those checks.
#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod detect;
pub mod patterns;
pub mod plan;
pub mod siphash;
pub mod sqlscan;
pub mod statement;
pub mod strategy;

use batch::{Masker, Stop};
use config::Config;
use detect::Span;
use patterns::FunctionPattern;
use pgward_plugin_sdk::arrow;
use pgward_plugin_sdk::prelude::*;
use plan::{Active, Plans};

/// The mask-pii plugin.
pub struct MaskPii {
    config: Config,
    builtin: Vec<FunctionPattern>,
    plans: Plans,
    /// Detector matches, reused for every value.
    spans: Vec<Span>,
}

impl MaskPii {
    /// The checked configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The result plans kept for `on_batch` (for tests).
    pub fn plans(&self) -> &Plans {
        &self.plans
    }
}

impl Plugin for MaskPii {
    const NAME: &'static str = "mask-pii";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_QUERY
        .union(Hooks::ON_RESULT_SCHEMA)
        .union(Hooks::ON_BATCH);

    fn init(text: &str) -> Result<Self, String> {
        let config = Config::parse(text)?;
        log(
            Level::Info,
            format!(
                "masking {} classes ({}), on_uncertain = {}",
                config.classes.len(),
                config
                    .classes
                    .iter()
                    .map(|c| format!("{}: {}", c.name, c.strategy.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                match config.on_uncertain {
                    config::OnUncertain::Deny => "deny",
                    config::OnUncertain::Detect => "detect",
                }
            ),
        );
        Ok(MaskPii {
            config,
            builtin: statement::builtin_patterns(),
            plans: Plans::default(),
            spans: Vec::new(),
        })
    }

    fn on_query(&mut self, session: &Session, query: &Query) -> Verdict {
        // Judged on the analysis alone, the verdict depends on the config, the identity and
        // the statement's shape only; a verdict that read the raw text is not reused.
        if !statement::reads_text(query) {
            cache_verdict();
        }
        let active = Active::of(&self.config, session);
        statement::check(&self.config, &self.builtin, active, query)
    }

    fn on_result_schema(&mut self, session: &Session, columns: &[Column]) -> SchemaInterest {
        let Some(plan) = plan::plan_result(&self.config, session, columns) else {
            return SchemaInterest::none();
        };
        let indexes: Vec<u32> = plan.columns.iter().map(|c| c.index).collect();
        self.plans.record(session.id, plan, &self.config);
        SchemaInterest {
            read: indexes.clone(),
            modify: indexes,
        }
    }

    fn on_session_end(&mut self, session: &Session) {
        self.plans.forget_session(session.id);
    }

    fn on_batch(&mut self, session: &Session, ipc: &[u8]) -> BatchResult {
        let batch = match arrow::read_batch(ipc) {
            Ok(b) => b,
            Err(e) => return BatchResult::Abort(Deny::new(sqlstate::SYSTEM_ERROR, e)),
        };
        let signature = batch::signature(batch.schema_ref());
        let Some(plan) = self.plans.find(session.id, signature) else {
            log(
                Level::Warn,
                format!("session {}: a batch arrived for a result this instance has no plan for; it was stopped", session.id),
            );
            return BatchResult::Abort(
                Deny::new(
                    sqlstate::SYSTEM_ERROR,
                    "mask-pii has no record of this result's columns, so its rows were not sent",
                )
                .with_hint("reconnect and run the statement again (the plugin was restarted while this session was open)"),
            );
        };
        let mut masker = Masker::new(&self.config, plan, &mut self.spans);
        match batch::apply(&mut masker, plan, batch) {
            Ok(None) => BatchResult::Unchanged,
            Ok(Some(masked)) => match arrow::write_batch(&masked) {
                Ok(bytes) => BatchResult::Replace(bytes),
                Err(e) => BatchResult::Abort(Deny::new(sqlstate::SYSTEM_ERROR, e)),
            },
            Err(Stop::Refused(deny)) => BatchResult::Abort(deny),
            Err(Stop::Failed(e)) => BatchResult::Abort(Deny::new(
                sqlstate::SYSTEM_ERROR,
                format!("mask-pii cannot mask this result, so it was not sent: {e}"),
            )),
        }
    }
}

export_plugin!(MaskPii);
