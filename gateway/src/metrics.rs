//! Prometheus metrics for operators, served by the admin server at `/metrics` (OpenMetrics
//! text, through the `prometheus-client` crate). One process-wide set, so instrumented code
//! needs no plumbing; label values are few and bounded (methods, outcomes, statement kinds,
//! verdicts, plugin names and hooks).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub auth_method: String,
    /// `accepted` or `refused`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    pub kind: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaskLabels {
    pub plugin: String,
    /// The class of data the plugin named (empty when it named none).
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `client_to_server` or `server_to_client`.
    pub direction: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the gateway exports.
pub struct Metrics {
    pub sessions_current: Gauge,
    pub sessions: Family<SessionLabels, Counter>,
    pub statements: Family<StatementLabels, Counter>,
    pub plugin_calls: Family<PluginLabels, Counter>,
    pub plugin_failures: Family<PluginLabels, Counter>,
    pub plugin_call_seconds: HistogramFamily<PluginLabels>,
    pub plugin_cached_verdicts: Family<PluginLabels, Counter>,
    pub approvals: Family<EventLabels, Counter>,
    pub masked_values: Family<MaskLabels, Counter>,
    pub audit_records: Counter,
    pub audit_dropped: Counter,
    pub audit_write_errors: Counter,
    pub audit_queue_depth: Gauge,
    pub upstream_connect_errors: Counter,
    /// Describe messages the relay added to learn a result's columns for result plugins.
    pub describes_added: Counter,
    pub upstream_connect_seconds: Histogram,
    /// Handles of the `relayed_bytes` family, so a write costs one atomic add.
    pub to_server_bytes: Counter,
    pub to_client_bytes: Counter,
    registry: Registry,
}

fn call_histogram() -> Histogram {
    // 1 µs .. ≈ 0.5 s
    Histogram::new(exponential_buckets(1e-6, 2.0, 20))
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("pgward");
        let sessions_current = Gauge::default();
        r.register(
            "sessions_current",
            "Client sessions open now",
            sessions_current.clone(),
        );
        let sessions = Family::<SessionLabels, Counter>::default();
        r.register(
            "sessions",
            "Client connections by authentication method and outcome",
            sessions.clone(),
        );
        let statements = Family::<StatementLabels, Counter>::default();
        r.register(
            "statements",
            "Statements (Query and Parse messages) by kind and verdict",
            statements.clone(),
        );
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        r.register("plugin_calls", "Plugin hook calls", plugin_calls.clone());
        let plugin_failures = Family::<PluginLabels, Counter>::default();
        r.register(
            "plugin_failures",
            "Plugin hook calls that trapped, timed out or broke the contract",
            plugin_failures.clone(),
        );
        let plugin_call_seconds: HistogramFamily<PluginLabels> =
            Family::new_with_constructor(call_histogram);
        r.register(
            "plugin_call_duration_seconds",
            "Duration of plugin hook calls",
            plugin_call_seconds.clone(),
        );
        let plugin_cached_verdicts = Family::<PluginLabels, Counter>::default();
        r.register(
            "plugin_cached_verdicts",
            "Hook calls answered from the verdict cache, without calling the plugin",
            plugin_cached_verdicts.clone(),
        );
        let approvals = Family::<EventLabels, Counter>::default();
        r.register(
            "approvals",
            "Approval request events (created, decided, withdrawn, expired, executed)",
            approvals.clone(),
        );
        let masked_values = Family::<MaskLabels, Counter>::default();
        r.register(
            "masked_values",
            "Result values a plugin changed before they reached the client",
            masked_values.clone(),
        );
        let audit_records = Counter::default();
        r.register(
            "audit_records",
            "Audit records queued",
            audit_records.clone(),
        );
        let audit_dropped = Counter::default();
        r.register(
            "audit_dropped",
            "Audit records dropped because the queue was full",
            audit_dropped.clone(),
        );
        let audit_write_errors = Counter::default();
        r.register(
            "audit_write_errors",
            "Failed writes of the audit trail",
            audit_write_errors.clone(),
        );
        let audit_queue_depth = Gauge::default();
        r.register(
            "audit_queue_depth",
            "Audit records waiting for the writer",
            audit_queue_depth.clone(),
        );
        let describes_added = Counter::default();
        r.register(
            "relay_describes_added",
            "Describe messages the gateway added to learn a prepared statement's or portal's result columns for result plugins",
            describes_added.clone(),
        );
        let upstream_connect_errors = Counter::default();
        r.register(
            "upstream_connect_errors",
            "Failed connections or logins to the upstream server",
            upstream_connect_errors.clone(),
        );
        let upstream_connect_seconds = Histogram::new(exponential_buckets(1e-4, 2.0, 16));
        r.register(
            "upstream_connect_duration_seconds",
            "Time to connect and log in to the upstream server",
            upstream_connect_seconds.clone(),
        );
        let relayed_bytes = Family::<DirectionLabels, Counter>::default();
        r.register(
            "relayed_bytes",
            "Bytes written to the server and to clients",
            relayed_bytes.clone(),
        );
        let to_server_bytes = relayed_bytes
            .get_or_create(&DirectionLabels {
                direction: "client_to_server".into(),
            })
            .clone();
        let to_client_bytes = relayed_bytes
            .get_or_create(&DirectionLabels {
                direction: "server_to_client".into(),
            })
            .clone();
        Metrics {
            sessions_current,
            sessions,
            statements,
            plugin_calls,
            plugin_failures,
            plugin_call_seconds,
            plugin_cached_verdicts,
            approvals,
            masked_values,
            audit_records,
            audit_dropped,
            audit_write_errors,
            audit_queue_depth,
            upstream_connect_errors,
            describes_added,
            upstream_connect_seconds,
            to_server_bytes,
            to_client_bytes,
            registry: r,
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a statement. The counter handles are cached per thread (a few dozen label
    /// pairs at most), so the hot path takes no lock and allocates nothing.
    pub fn statement(&self, kind: &'static str, verdict: &'static str) {
        thread_local! {
            static CACHE: std::cell::RefCell<Vec<(&'static str, &'static str, Counter)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        CACHE.with_borrow_mut(|cache| {
            if let Some((_, _, c)) = cache
                .iter()
                .find(|(k, v, _)| std::ptr::eq(*k, kind) && std::ptr::eq(*v, verdict))
            {
                c.inc();
                return;
            }
            let c = self
                .statements
                .get_or_create(&StatementLabels {
                    kind: kind.to_owned(),
                    verdict: verdict.to_owned(),
                })
                .clone();
            c.inc();
            cache.push((kind, verdict, c));
        });
    }

    pub fn masked(&self, plugin: &str, class: &str, values: u64) {
        self.masked_values
            .get_or_create(&MaskLabels {
                plugin: plugin.to_owned(),
                class: class.to_owned(),
            })
            .inc_by(values);
    }

    pub fn session(&self, auth_method: &str, outcome: &str) {
        self.sessions
            .get_or_create(&SessionLabels {
                auth_method: auth_method.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
