//! WebAssembly policy plugins: loading from the plugins directory, the ordered chain, hot
//! reload, and sandboxed calls of each hook.
//!
//! # Sandbox
//! One wasmtime engine; each plugin version is compiled once, off the async runtime, and the
//! compiled artifact is cached on disk by content hash. Plugins get an empty WASI context (no
//! files, environment, arguments, stdio, network; clocks frozen at zero) and the `host.log`
//! import. Every call runs under an epoch deadline and a memory cap.
//!
//! # Instances
//! Calls are synchronous and never span an `.await`, and each worker thread runs its sessions
//! one at a time, so one instance per plugin version per worker thread serves every session on
//! that thread: no lock, no pool hand-off and no instantiation on the hot path (an empty call
//! costs ~0.1 µs; instantiating ~15 µs, see FINDINGS.md). An instance that trapped is dropped
//! and the next call instantiates a fresh one.
//!
//! # Fail closed
//! A plugin that traps, runs past its deadline, exceeds its memory or returns an invalid
//! verdict denies the statement with SQLSTATE 58000 naming the plugin; the failure is logged
//! and counted. It is never skipped.

mod convert;
mod loader;
mod ticker;
pub mod verdicts;

use crate::config::PluginsConfig;
use arc_swap::ArcSwap;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use ticker::EpochTicker;
use tracing::{debug, error, info, warn};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod exports;

pub use convert::session as convert_session;
pub use exports::Contract;
pub use loader::{status_path, PluginStatus};

/// Bindings generated from `wit/plugin.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        // Async exports so that WASI host calls (a plugin writing to stdout, say) never
        // `block_on` inside the gateway's runtime; see `poll_once`.
        exports: { default: async },
    });
}

use crate::sqlstate;
use bindings::pgward::plugin::types as wit;

/// The contract version this gateway speaks (`package pgward:plugin@...` in `wit/`).
pub const CONTRACT_VERSION: (u64, u64, u64) = (0, 5, 0);

/// Length of one epoch tick: how often a running call's budget is checked.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Which hooks a plugin implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Hooks {
    pub on_connect: bool,
    pub on_query: bool,
    pub on_result_schema: bool,
    pub on_batch: bool,
}

impl Hooks {
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.on_connect {
            v.push("on-connect");
        }
        if self.on_query {
            v.push("on-query");
        }
        if self.on_result_schema {
            v.push("on-result-schema");
        }
        if self.on_batch {
            v.push("on-batch");
        }
        v
    }
}

/// One loaded plugin version.
pub struct LoadedPlugin {
    /// Unique per load; keys the per-thread instances.
    pub id: u64,
    /// File stem of the `.wasm` (the name used in `plugins.order` and for `NAME.toml`).
    pub file: String,
    /// Name and version the plugin reports.
    pub name: String,
    pub version: String,
    /// SHA-256 of the `.wasm` and of its config, hex.
    pub hash: String,
    pub config_hash: String,
    pub hooks: Hooks,
    pub loaded_at: SystemTime,
    config: String,
    pre: exports::PluginPre,
    failures: AtomicU64,
    /// Verdicts it marked cacheable (contract 0.5), dropped with this load.
    pub verdicts: verdicts::VerdictCache,
    /// Metric handles per hook (on-connect, on-query, on-result-schema, on-batch), made on
    /// first use, so a call costs no label lookup.
    metrics: [std::sync::OnceLock<HookMetrics>; 4],
}

/// One plugin hook's metrics.
struct HookMetrics {
    calls: prometheus_client::metrics::counter::Counter,
    failures: prometheus_client::metrics::counter::Counter,
    seconds: prometheus_client::metrics::histogram::Histogram,
    /// Calls answered from the verdict cache instead.
    cached: prometheus_client::metrics::counter::Counter,
}

impl LoadedPlugin {
    fn hook_metrics(&self, hook: &'static str) -> &HookMetrics {
        let i = match hook {
            "on-connect" => 0,
            "on-query" => 1,
            "on-result-schema" => 2,
            _ => 3,
        };
        self.metrics[i].get_or_init(|| {
            let m = &crate::metrics::METRICS;
            let labels = crate::metrics::PluginLabels {
                plugin: self.name.clone(),
                hook: hook.to_owned(),
            };
            HookMetrics {
                calls: m.plugin_calls.get_or_create(&labels).clone(),
                failures: m.plugin_failures.get_or_create(&labels).clone(),
                seconds: m.plugin_call_seconds.get_or_create(&labels).clone(),
                cached: m.plugin_cached_verdicts.get_or_create(&labels).clone(),
            }
        })
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("hash", &self.hash)
            .finish()
    }
}

/// The plugins in the order they run. Swapped atomically on reload; a statement keeps the chain
/// it started with.
#[derive(Default)]
pub struct Chain {
    /// Changes with every swap; threads drop instances of unloaded versions when it does.
    generation: u64,
    pub plugins: Vec<Arc<LoadedPlugin>>,
    on_query: bool,
    on_connect: bool,
    on_results: bool,
}

impl Chain {
    fn new(generation: u64, plugins: Vec<Arc<LoadedPlugin>>) -> Self {
        Chain {
            generation,
            on_query: plugins.iter().any(|p| p.hooks.on_query),
            on_connect: plugins.iter().any(|p| p.hooks.on_connect),
            on_results: plugins
                .iter()
                .any(|p| p.hooks.on_result_schema && p.hooks.on_batch),
            plugins,
        }
    }

    /// Some plugin implements on-query (otherwise statements need no plugin call).
    pub fn wants_query(&self) -> bool {
        self.on_query
    }

    /// Changes whenever the chain does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Some plugin implements on-result-schema and on-batch (otherwise rows need no plugin).
    pub fn wants_results(&self) -> bool {
        self.on_results
    }
}

/// Per-store state: the WASI context (empty), the limits and the running call's budget.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<str>,
    budget: CallBudget,
    /// The running on-query call marked its verdict cacheable (`cache-verdict`).
    cache_verdict: bool,
}

/// The deadline of one call, in CPU time of the calling thread. Wall-clock time alone would
/// deny healthy statements whenever the machine is busy and the thread is preempted mid-call
/// (seen under pgbench with 32 clients on 2 cores); CPU time measures what the plugin itself
/// spent. A wall-clock cap (ten times the budget plus two seconds: generous, since on a
/// saturated machine a runnable thread can wait hundreds of milliseconds for a core) still
/// bounds a call whose CPU time cannot be read.
///
/// Reading the thread's CPU clock is a system call (≈ 0.5 µs here, a sixth of an on-query
/// call), so a call does not read it when it starts: it takes the thread's last reading
/// ([`CpuSnapshot`]) if that is at most one epoch tick old. The CPU the thread used between
/// that reading and the call's start is at most the wall time between them, so the budget
/// check subtracts that wall time and never counts more than the call used: a plugin can run
/// at most one tick past its budget, which the tick granularity allows anyway.
#[derive(Clone, Copy)]
struct CallBudget {
    /// The thread's CPU time at or before the call's start.
    cpu_base: Duration,
    /// Wall time between that reading and the call's start: CPU the call may not have used.
    slack: Duration,
    cpu: Duration,
    wall_deadline: std::time::Instant,
}

/// A reading of this thread's CPU clock and when it was taken.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    cpu: Duration,
    at: std::time::Instant,
}

thread_local! {
    static CPU_SNAPSHOT: std::cell::Cell<Option<CpuSnapshot>> = const { std::cell::Cell::new(None) };
}

impl CallBudget {
    fn start(cpu: Duration) -> Self {
        let now = std::time::Instant::now();
        let snapshot = match CPU_SNAPSHOT.get() {
            Some(s) if now.saturating_duration_since(s.at) <= EPOCH_TICK => s,
            _ => {
                let s = CpuSnapshot {
                    cpu: thread_cpu_time(),
                    at: now,
                };
                CPU_SNAPSHOT.set(Some(s));
                s
            }
        };
        CallBudget {
            cpu_base: snapshot.cpu,
            slack: now.saturating_duration_since(snapshot.at),
            cpu,
            wall_deadline: now + cpu * 10 + Duration::from_secs(2),
        }
    }

    /// CPU time the call has certainly used so far (it may have used up to `slack` more).
    fn used(&self) -> Duration {
        thread_cpu_time()
            .saturating_sub(self.cpu_base)
            .saturating_sub(self.slack)
    }

    /// Called at each epoch deadline: extend by the CPU time left, or stop the call.
    fn check(&self) -> wasmtime::UpdateDeadline {
        let used = self.used();
        if used >= self.cpu || std::time::Instant::now() >= self.wall_deadline {
            wasmtime::UpdateDeadline::Interrupt
        } else {
            wasmtime::UpdateDeadline::Continue(PluginHost::ticks(self.cpu - used))
        }
    }
}

/// CPU time consumed by the calling thread.
#[allow(unsafe_code)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass; CLOCK_THREAD_CPUTIME_ID is
    // supported on every Linux the gateway runs on. On failure the time reads as zero, which
    // makes the wall-clock cap the only limit.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::pgward::plugin::host::Host for HostState {
    fn log(&mut self, level: wit::Level, message: String) {
        let mut message = message;
        if message.len() > 4096 {
            let mut end = 4096;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let plugin = &*self.plugin;
        match level {
            wit::Level::Trace => tracing::trace!(plugin, "{message}"),
            wit::Level::Debug => tracing::debug!(plugin, "{message}"),
            wit::Level::Info => tracing::info!(plugin, "{message}"),
            wit::Level::Warn => tracing::warn!(plugin, "{message}"),
            wit::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn cache_verdict(&mut self) {
        self.cache_verdict = true;
    }
}

impl bindings::pgward::plugin::types::Host for HostState {}

/// Wall and monotonic clocks that always read zero: verdicts must not depend on time.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Why a call did not produce a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("exceeded its deadline of {0:?}")]
    Deadline(Duration),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("returned an invalid answer: {0}")]
    Invalid(String),
}

/// A statement-level decision of the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryDecision {
    Allow,
    /// Run this text instead (already analysed by each following plugin).
    Rewrite(String),
    Deny(Refusal),
    /// Run it only once approved.
    RequireApproval(ApprovalAsk),
}

/// Receives plugin lifecycle events: a kind and its fields.
pub type EventSink = Arc<dyn Fn(&'static str, serde_json::Value) + Send + Sync>;

/// Tells `events` what a reload changed.
fn report_changes(
    events: &EventSink,
    before: &[Arc<LoadedPlugin>],
    after: &[Arc<LoadedPlugin>],
    status: &[PluginStatus],
) {
    for p in after
        .iter()
        .filter(|p| !before.iter().any(|b| b.id == p.id))
    {
        let previous = before.iter().find(|b| b.file == p.file);
        events(
            "plugin.loaded",
            serde_json::json!({
                "file": p.file,
                "plugin": p.name,
                "version": p.version,
                "hash": p.hash,
                "config_hash": p.config_hash,
                "hooks": p.hooks.names(),
                "replaces": previous.map(|b| serde_json::json!({
                    "version": b.version, "hash": b.hash, "config_hash": b.config_hash,
                })),
                "config_changed": previous.is_some_and(|b| b.hash == p.hash && b.config_hash != p.config_hash),
            }),
        );
    }
    for b in before
        .iter()
        .filter(|b| !after.iter().any(|p| p.file == b.file))
    {
        events(
            "plugin.removed",
            serde_json::json!({ "file": b.file, "plugin": b.name, "version": b.version, "hash": b.hash }),
        );
    }
    for st in status.iter().filter(|s| s.last_error.is_some()) {
        events(
            "plugin.failed",
            serde_json::json!({
                "file": st.file,
                "error": st.last_error,
                "running": st.name.as_ref().map(|n| format!("{n}@{}", st.version.as_deref().unwrap_or(""))),
            }),
        );
    }
}

/// A plugin's require-approval verdict, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalAsk {
    pub plugin: String,
    pub reason: String,
    pub approver_group: String,
    pub rule: String,
    pub defer: bool,
    pub quorum: u32,
}

impl ApprovalAsk {
    /// What the client is told when no approvals workflow is configured.
    pub fn unconfigured(&self) -> Refusal {
        Refusal {
            plugin: self.plugin.clone(),
            sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
            message: format!("approval required: {}", self.reason),
            hint: Some(format!(
                "a member of \"{}\" must approve this statement",
                self.approver_group
            )),
        }
    }
}

/// What the client is told when the chain refuses something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub plugin: String,
    pub sqlstate: String,
    pub message: String,
    pub hint: Option<String>,
}

struct Instance {
    /// The [`PluginHost::id`] of the host it belongs to.
    host: u64,
    store: Store<HostState>,
    plugin: exports::Exports,
    /// Sessions introduced to this instance (`open-session`) and not yet closed.
    /// A set, not a list: a worker thread may serve hundreds of sessions, and every call asks.
    sessions: std::collections::HashSet<u64>,
}

thread_local! {
    /// Instances of plugin versions on this thread, by `LoadedPlugin::id`: a handful, so a
    /// scan beats hashing on every call.
    static INSTANCES: RefCell<Vec<(u64, Instance)>> = const { RefCell::new(Vec::new()) };
    /// Per host (by id), the chain generation its instances here were last pruned for.
    static PRUNED_FOR: RefCell<Vec<(u64, u64)>> = const { RefCell::new(Vec::new()) };
    /// Instances created on this thread so far.
    static INSTANTIATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Changes whenever this thread creates a plugin instance: a new instance remembers nothing
/// its predecessor was told (on-result-schema answers, per-session state), so whatever the
/// gateway remembered about earlier answers must be asked again.
pub fn instance_epoch() -> u64 {
    INSTANTIATIONS.get()
}

/// The plugin runtime: engine, linker, the current chain and the status of every file.
pub struct PluginHost {
    /// Told of plugin loads, failures and removals.
    events: Option<EventSink>,
    /// Unique in the process (instances on a thread are cached for every host together).
    id: u64,
    engine: Engine,
    /// Advances the epoch (deadlines are counted in its ticks) while calls run.
    ticker: Arc<EpochTicker>,
    linker: Linker<HostState>,
    settings: PluginsConfig,
    chain: ArcSwap<Chain>,
    status: Mutex<Vec<PluginStatus>>,
    /// Serialises reloads (the watcher and explicit calls).
    reload_lock: Mutex<()>,
    /// The current chain's generation, for a cheap "has the chain changed" on every call.
    generation: AtomicU64,
    /// Session identities as numbers, for the verdict caches.
    identities: verdicts::Identities,
}

/// Why the plugin runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("plugin runtime: {0}")]
pub struct StartError(String);

impl StartError {
    pub fn from_join(e: tokio::task::JoinError) -> Self {
        StartError(format!("loading plugins: {e}"))
    }
}

impl PluginHost {
    /// Builds the engine and linker and loads every plugin in the directory. Plugins that fail
    /// to load are reported in the log and in `status()`; the rest run.
    pub fn start(settings: PluginsConfig) -> Result<Arc<PluginHost>, StartError> {
        Self::start_observed(settings, None)
    }

    /// [`Self::start`], telling `events` of every plugin loaded, replaced, failed or removed
    /// (`plugin.loaded`, `plugin.failed`, `plugin.removed`; the audit trail listens).
    pub fn start_observed(
        settings: PluginsConfig,
        events: Option<EventSink>,
    ) -> Result<Arc<PluginHost>, StartError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        if std::env::var_os("PGWARD_WASM_PERFMAP").is_some() {
            // For profiling by hand: `perf report` names the plugins' compiled functions
            // (wasmtime writes /tmp/perf-PID.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| StartError(e.to_string()))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| StartError(e.to_string()))?;
        bindings::Plugin::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| StartError(e.to_string()))?;
        // Contract 0.3 and 0.4 components import the host interface under its old versions,
        // which had `log` alone.
        for version in ["0.3.0", "0.4.0"] {
            linker
                .instance(&format!("pgward:plugin/host@{version}"))
                .and_then(|mut host| {
                    host.func_wrap(
                        "log",
                        |mut store: wasmtime::StoreContextMut<'_, HostState>,
                         (level, message): (wit::Level, String)| {
                            bindings::pgward::plugin::host::Host::log(
                                store.data_mut(),
                                level,
                                message,
                            );
                            Ok(())
                        },
                    )
                })
                .map_err(|e| StartError(e.to_string()))?;
        }
        static NEXT_HOST: AtomicU64 = AtomicU64::new(1);
        let ticker = EpochTicker::start(engine.clone(), EPOCH_TICK)
            .map_err(|e| StartError(format!("cannot start the epoch ticker: {e}")))?;
        let host = Arc::new(PluginHost {
            events,
            id: NEXT_HOST.fetch_add(1, Ordering::Relaxed),
            engine: engine.clone(),
            ticker,
            linker,
            settings,
            chain: ArcSwap::from_pointee(Chain::default()),
            status: Mutex::new(Vec::new()),
            reload_lock: Mutex::new(()),
            generation: AtomicU64::new(0),
            identities: verdicts::Identities::default(),
        });
        host.reload();
        if host.settings.watch {
            if let Some(dir) = &host.settings.directory {
                loader::watch(Arc::downgrade(&host), dir.clone())
                    .map_err(|e| StartError(format!("watching {}: {e}", dir.display())))?;
            }
        }
        Ok(host)
    }

    /// The chain statements run through now.
    pub fn chain(&self) -> arc_swap::Guard<Arc<Chain>> {
        self.chain.load()
    }

    /// Every plugin file seen and its state, for `pgward plugins list` and the log.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts the budget of one call.
    fn arm(store: &mut Store<HostState>, deadline: Duration) {
        store.data_mut().budget = CallBudget::start(deadline);
        store.set_epoch_deadline(Self::ticks(deadline));
    }

    fn ticks(deadline: Duration) -> u64 {
        (deadline.as_micros().div_ceil(EPOCH_TICK.as_micros())).max(1) as u64
    }

    fn new_store(&self, plugin: &LoadedPlugin) -> Store<HostState> {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.settings.memory_limit)
            .instances(16)
            .tables(16)
            .memories(4)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits,
                plugin: Arc::from(plugin.name.as_str()),
                budget: CallBudget::start(self.settings.batch_deadline),
                cache_verdict: false,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| Ok(ctx.data().budget.check()));
        store
    }

    /// Instantiates and initialises one instance of `plugin`.
    fn instantiate(&self, plugin: &LoadedPlugin) -> Result<Instance, CallError> {
        INSTANTIATIONS.set(INSTANTIATIONS.get() + 1);
        let mut store = self.new_store(plugin);
        Self::arm(&mut store, self.settings.batch_deadline);
        let instance = poll_once(plugin.pre.instantiate_async(&mut store))
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        Self::arm(&mut store, self.settings.batch_deadline);
        match poll_once(instance.call_init(&mut store, &plugin.config)) {
            Ok(Ok(())) => Ok(Instance {
                host: self.id,
                store,
                plugin: instance,
                sessions: std::collections::HashSet::new(),
            }),
            Ok(Err(msg)) => Err(CallError::Instantiate(format!(
                "init refused its config: {msg}"
            ))),
            Err(e) => Err(CallError::Instantiate(format!("init trapped: {e:#}"))),
        }
    }

    /// Runs `f` on this thread's instance of `plugin` under `deadline`, after introducing
    /// `session` to the instance if it has not met it yet (`open-session`, under the same
    /// deadline). A trap discards the instance.
    /// One hook call, counted and timed in the plugin's metrics.
    fn call<R>(
        &self,
        plugin: &LoadedPlugin,
        hook: &'static str,
        session: &wit::Session,
        deadline: Duration,
        f: impl FnOnce(&mut Store<HostState>, &exports::Exports) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let started = std::time::Instant::now();
        let result = self.call_untimed(plugin, session, deadline, f);
        let m = plugin.hook_metrics(hook);
        m.calls.inc();
        m.seconds.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            m.failures.inc();
        }
        result
    }

    fn call_untimed<R>(
        &self,
        plugin: &LoadedPlugin,
        session: &wit::Session,
        deadline: Duration,
        f: impl FnOnce(&mut Store<HostState>, &exports::Exports) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let _running = self.ticker.running();
        INSTANCES.with(|cell| {
            let mut instances = cell.borrow_mut();
            // After a reload, free this thread's instances of versions no longer in the chain
            // (their memory can be large); the one being called stays even if it was unloaded.
            // Only this host's instances: another host's (a benchmark runs several) stay.
            let generation = self.generation.load(Ordering::Acquire);
            let stale = PRUNED_FOR.with_borrow_mut(|pruned| {
                match pruned.iter_mut().find(|(host, _)| *host == self.id) {
                    Some((_, seen)) if *seen == generation => false,
                    Some((_, seen)) => {
                        *seen = generation;
                        true
                    }
                    None => {
                        pruned.push((self.id, generation));
                        true
                    }
                }
            });
            if stale {
                let chain = self.chain.load();
                instances.retain(|(id, inst)| {
                    inst.host != self.id
                        || *id == plugin.id
                        || chain.plugins.iter().any(|p| p.id == *id)
                });
            }
            let at = match instances.iter().position(|(id, _)| *id == plugin.id) {
                Some(at) => at,
                None => {
                    instances.push((plugin.id, self.instantiate(plugin)?));
                    instances.len() - 1
                }
            };
            let inst = &mut instances[at].1;
            Self::arm(&mut inst.store, deadline);
            let result = if inst.sessions.contains(&session.id) {
                f(&mut inst.store, &inst.plugin)
            } else {
                poll_once(inst.plugin.call_open_session(&mut inst.store, session)).and_then(|()| {
                    debug!(plugin = %plugin.name, session = session.id, "session introduced to plugin");
                    inst.sessions.insert(session.id);
                    f(&mut inst.store, &inst.plugin)
                })
            };
            match result {
                Ok(r) => Ok(r),
                Err(e) => {
                    instances.swap_remove(at);
                    let interrupted = e
                        .downcast_ref::<wasmtime::Trap>()
                        .is_some_and(|t| *t == wasmtime::Trap::Interrupt);
                    Err(if interrupted {
                        CallError::Deadline(deadline)
                    } else {
                        CallError::Trap(format!("{e:#}"))
                    })
                }
            }
        })
    }

    fn record_failure(&self, plugin: &LoadedPlugin, hook: &str, e: &CallError) -> Refusal {
        let n = plugin.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // What it said before may not hold: ask it again.
        plugin.verdicts.clear();
        error!(plugin = %plugin.name, hook, failures = n, error = %e, "plugin failed: statement denied");
        Refusal {
            plugin: plugin.name.clone(),
            sqlstate: sqlstate::SYSTEM_ERROR.into(),
            message: match (hook, e) {
                ("on-batch" | "on-result-schema", CallError::Invalid(what)) => format!(
                    "policy plugin \"{}\" broke the result contract ({}), so the result was withheld",
                    plugin.name,
                    truncate(what, 200)
                ),
                ("on-batch" | "on-result-schema", _) => format!(
                    "policy plugin \"{}\" failed, so the result was withheld",
                    plugin.name
                ),
                _ => format!(
                    "policy plugin \"{}\" failed, so the statement was not run",
                    plugin.name
                ),
            },
            hint: Some("the gateway log has the details".into()),
        }
    }

    /// Runs on-connect of every plugin that implements it; the first deny wins.
    pub fn on_connect(&self, session: &wit::Session) -> Option<Refusal> {
        let chain = self.chain.load();
        if !chain.on_connect {
            return None;
        }
        for p in chain.plugins.iter().filter(|p| p.hooks.on_connect) {
            let verdict = self.call(
                p,
                "on-connect",
                session,
                self.settings.query_deadline,
                |store, inst| poll_once(inst.call_on_connect(store, session.id)),
            );
            match verdict {
                Ok(wit::ConnectVerdict::Allow) => {}
                Ok(wit::ConnectVerdict::Deny(d)) => {
                    return Some(match self.validate_deny(p, d) {
                        Ok(r) => r,
                        Err(e) => self.record_failure(p, "on-connect", &e),
                    })
                }
                Err(e) => return Some(self.record_failure(p, "on-connect", &e)),
            }
        }
        None
    }

    /// The session `id` ended: every instance on this thread it was introduced to forgets it
    /// (`close-session`). An instance that fails to is discarded, which forgets it too.
    pub fn close_session(&self, id: u64) {
        let deadline = self.settings.query_deadline;
        let _running = self.ticker.running();
        INSTANCES.with(|cell| {
            let Ok(mut instances) = cell.try_borrow_mut() else {
                return;
            };
            instances.retain_mut(|(_, inst)| {
                if !inst.sessions.remove(&id) {
                    return true;
                }
                Self::arm(&mut inst.store, deadline);
                match poll_once(inst.plugin.call_close_session(&mut inst.store, id)) {
                    Ok(()) => {
                        debug!(plugin = %inst.store.data().plugin, session = id, "session closed in plugin");
                        true
                    }
                    Err(e) => {
                        warn!(plugin = %inst.store.data().plugin, error = %format!("{e:#}"), "close-session failed; instance discarded");
                        false
                    }
                }
            });
        });
    }

    /// Runs on-query through the chain. `analyse` analyses a rewritten text for the next plugin.
    /// The number [`on_query`](Self::on_query) knows a session's identity by (user, groups,
    /// database), for the verdict caches: once per session.
    pub fn identity_id(&self, session: &wit::Session) -> u64 {
        self.identities.id(session)
    }

    /// Runs the statement through the chain's on-query hooks. A plugin's verdict it marked
    /// cacheable for this identity (`identity`, from [`identity_id`](Self::identity_id)) and
    /// statement shape answers without a call.
    #[allow(clippy::too_many_arguments)]
    pub fn on_query(
        &self,
        chain: &Chain,
        session: &wit::Session,
        identity: u64,
        sql: &str,
        analysis: &Arc<pgward_sql::Analysis>,
        protocol: wit::Protocol,
        analyse: impl Fn(&str) -> Arc<pgward_sql::Analysis>,
    ) -> QueryDecision {
        let deadline = self.settings.query_deadline;
        let extended = protocol == wit::Protocol::Extended;
        let mut rewritten: Option<(String, wit::Query)> = None;
        for p in chain.plugins.iter().filter(|p| p.hooks.on_query) {
            // Only a shape-only analysis, as the chain's first plugins saw it, may be answered
            // for other texts of its shape.
            let cacheable = analysis.shape_only && rewritten.is_none() && p.verdicts.enabled();
            if cacheable {
                if let Some(hit) = p.verdicts.get(identity, extended, &analysis.fingerprint) {
                    p.hook_metrics("on-query").cached.inc();
                    match hit {
                        verdicts::Cached::Allow => continue,
                        verdicts::Cached::Deny(r) => return QueryDecision::Deny(r),
                        verdicts::Cached::RequireApproval(a) => {
                            return QueryDecision::RequireApproval(a)
                        }
                    }
                }
            }
            let mut marked = false;
            let mut ask = |query: &wit::Query| {
                self.call(p, "on-query", session, deadline, |store, inst| {
                    store.data_mut().cache_verdict = false;
                    let verdict = poll_once(inst.call_on_query(store, session.id, query));
                    marked = store.data().cache_verdict;
                    verdict
                })
            };
            let verdict = match &rewritten {
                Some((_, query)) => ask(query),
                None => convert::with_query(sql, analysis, protocol, ask),
            };
            let keep = |v: verdicts::Cached| {
                if cacheable && marked {
                    p.verdicts
                        .insert(identity, extended, &analysis.fingerprint, v);
                }
            };
            match verdict {
                Ok(wit::Verdict::Allow) => keep(verdicts::Cached::Allow),
                Ok(wit::Verdict::Deny(d)) => {
                    return QueryDecision::Deny(match self.validate_deny(p, d) {
                        Ok(r) => {
                            keep(verdicts::Cached::Deny(r.clone()));
                            r
                        }
                        Err(e) => self.record_failure(p, "on-query", &e),
                    })
                }
                Ok(wit::Verdict::Rewrite(text)) => {
                    if text.trim().is_empty()
                        || text.len() > self.settings.max_output
                        || text.contains('\0')
                    {
                        let e = CallError::Invalid(format!(
                            "rewrite of {} bytes (must be non-empty, without NUL, at most {})",
                            text.len(),
                            self.settings.max_output
                        ));
                        return QueryDecision::Deny(self.record_failure(p, "on-query", &e));
                    }
                    let query = convert::query(&text, &analyse(&text), protocol);
                    rewritten = Some((text, query));
                }
                Ok(wit::Verdict::RequireApproval(a)) => {
                    if a.reason.len() > self.settings.max_output
                        || a.approver_group.len() > 256
                        || a.rule.len() > 256
                    {
                        let e = CallError::Invalid("approval request too large".into());
                        return QueryDecision::Deny(self.record_failure(p, "on-query", &e));
                    }
                    if a.reason.trim().is_empty() || a.approver_group.trim().is_empty() {
                        let e = CallError::Invalid(
                            "approval request without a reason or an approver group".into(),
                        );
                        return QueryDecision::Deny(self.record_failure(p, "on-query", &e));
                    }
                    let ask = ApprovalAsk {
                        plugin: p.name.clone(),
                        reason: a.reason,
                        approver_group: a.approver_group,
                        rule: a.rule,
                        defer: a.mode == wit::ApprovalMode::Defer,
                        quorum: a.quorum.clamp(1, 16),
                    };
                    keep(verdicts::Cached::RequireApproval(ask.clone()));
                    return QueryDecision::RequireApproval(ask);
                }
                Err(e) => return QueryDecision::Deny(self.record_failure(p, "on-query", &e)),
            }
        }
        match rewritten {
            Some((text, _)) => QueryDecision::Rewrite(text),
            None => QueryDecision::Allow,
        }
    }

    /// Hands one Arrow IPC batch to `plugin`'s on-batch hook under the batch deadline. Result
    /// streaming calls this per batch for subscribed columns; a failure must abort the result.
    pub fn on_batch(
        &self,
        plugin: &LoadedPlugin,
        session: &wit::Session,
        ipc: &[u8],
    ) -> Result<wit::BatchResult, CallError> {
        let result = self.call(
            plugin,
            "on-batch",
            session,
            self.settings.batch_deadline,
            |store, inst| poll_once(inst.call_on_batch(store, session.id, ipc)),
        )?;
        if let wit::BatchResult::Replace(bytes) = &result {
            // A batch may grow (masking can lengthen values), but not without bound.
            let limit = (ipc.len().saturating_mul(4)).max(self.settings.max_output);
            if bytes.len() > limit {
                return Err(CallError::Invalid(format!(
                    "replacement batch of {} bytes exceeds {limit}",
                    bytes.len()
                )));
            }
        }
        Ok(result)
    }

    /// Asks `plugin` which columns of a result it reads and may replace.
    pub fn on_result_schema(
        &self,
        plugin: &LoadedPlugin,
        session: &wit::Session,
        columns: &[wit::Column],
    ) -> Result<wit::SchemaInterest, Refusal> {
        self.call(
            plugin,
            "on-result-schema",
            session,
            self.settings.batch_deadline,
            |store, inst| poll_once(inst.call_on_result_schema(store, session.id, columns)),
        )
        .map_err(|e| self.record_failure(plugin, "on-result-schema", &e))
    }

    /// [`Self::on_batch`] as the result filter needs it: `None` for unchanged, the replacement
    /// IPC bytes, or the refusal that ends the result (a plugin's abort or its failure).
    pub fn on_batch_checked(
        &self,
        plugin: &LoadedPlugin,
        session: &wit::Session,
        ipc: &[u8],
    ) -> Result<Option<Vec<u8>>, Refusal> {
        match self.on_batch(plugin, session, ipc) {
            Ok(wit::BatchResult::Unchanged) => Ok(None),
            Ok(wit::BatchResult::Replace(bytes)) => Ok(Some(bytes)),
            Ok(wit::BatchResult::Abort(d)) => Err(match self.validate_deny(plugin, d) {
                Ok(r) => r,
                Err(e) => self.record_failure(plugin, "on-batch", &e),
            }),
            Err(e) => Err(self.record_failure(plugin, "on-batch", &e)),
        }
    }

    /// The refusal for output of `plugin` that breaks the contract (counted as a failure).
    pub fn invalid_output(&self, plugin: &LoadedPlugin, hook: &str, what: String) -> Refusal {
        self.record_failure(plugin, hook, &CallError::Invalid(what))
    }

    fn validate_deny(&self, p: &LoadedPlugin, d: wit::Deny) -> Result<Refusal, CallError> {
        let code_ok = d.sqlstate.len() == 5
            && d.sqlstate
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if !code_ok {
            return Err(CallError::Invalid(format!(
                "SQLSTATE {:?} is not 5 characters [0-9A-Z]",
                truncate(&d.sqlstate, 16)
            )));
        }
        if d.sqlstate.starts_with("00") {
            return Err(CallError::Invalid(
                "a deny cannot use a success SQLSTATE (class 00)".into(),
            ));
        }
        if d.message.trim().is_empty() {
            return Err(CallError::Invalid("empty deny message".into()));
        }
        let max = self.settings.max_output.min(8192);
        if d.message.len() > max || d.hint.as_ref().is_some_and(|h| h.len() > max) {
            return Err(CallError::Invalid(format!(
                "deny message longer than {max} bytes"
            )));
        }
        Ok(Refusal {
            plugin: p.name.clone(),
            sqlstate: d.sqlstate,
            message: d.message,
            hint: d.hint,
        })
    }

    /// Loads the directory again: new and changed files are compiled and swapped in, removed
    /// ones dropped; a file that fails keeps its previous version running.
    pub fn reload(&self) {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dir) = self.settings.directory.clone() else {
            return;
        };
        let current = self.chain.load_full();
        let (plugins, status) = loader::scan(self, &dir, &current);
        let changed = plugins.len() != current.plugins.len()
            || plugins
                .iter()
                .zip(&current.plugins)
                .any(|(a, b)| a.id != b.id);
        if let Some(events) = &self.events {
            report_changes(events, &current.plugins, &plugins, &status);
        }
        if changed {
            let names: Vec<String> = plugins
                .iter()
                .map(|p| format!("{}@{}", p.name, p.version))
                .collect();
            info!(chain = ?names, "plugin chain updated");
            let generation = self.next_id();
            self.chain.store(Arc::new(Chain::new(generation, plugins)));
            self.generation.store(generation, Ordering::Release);
        }
        loader::write_status(self, &status);
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// A new plugin version id or chain generation. Unique in the process, not just in this
    /// host: the instances of every host on a thread share one cache keyed by id (a process
    /// with two hosts, a benchmark say, must never call one host's plugin for the other's).
    fn next_id(&self) -> u64 {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn settings(&self) -> &PluginsConfig {
        &self.settings
    }
}

/// Drives a plugin call to completion in one poll. Calls run on a wasmtime fiber and nothing
/// they can reach ever waits (WASI's streams are empty sinks, there is no network or file), so
/// they finish within the poll; a call that does suspend is treated as a failure.
pub(crate) fn poll_once<T>(
    fut: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => Err(wasmtime::Error::msg("plugin call suspended on I/O")),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker.stop();
        warn!("plugin runtime stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin_cpu(d: Duration) {
        let start = thread_cpu_time();
        while thread_cpu_time().saturating_sub(start) < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_budget_counts_the_calls_own_cpu_and_stops_it_past_the_budget() {
        let budget = CallBudget::start(Duration::from_millis(5));
        assert!(matches!(
            budget.check(),
            wasmtime::UpdateDeadline::Continue(_)
        ));
        spin_cpu(Duration::from_millis(8));
        assert!(matches!(
            budget.check(),
            wasmtime::UpdateDeadline::Interrupt
        ));
    }

    #[test]
    fn cpu_spent_before_a_call_is_not_charged_to_it() {
        // Take a reading, burn CPU outside any call, then start one within the same tick or
        // after it: the CPU burnt before the start never counts against the call.
        let _ = CallBudget::start(Duration::from_millis(5));
        spin_cpu(Duration::from_millis(6));
        let budget = CallBudget::start(Duration::from_millis(5));
        assert!(
            budget.used() < Duration::from_millis(2),
            "{:?}",
            budget.used()
        );
        assert!(matches!(
            budget.check(),
            wasmtime::UpdateDeadline::Continue(_)
        ));
        // Within one tick of the reading: the stale reading is corrected by the wall time.
        let _ = CallBudget::start(Duration::from_millis(5));
        spin_cpu(Duration::from_micros(500));
        let budget = CallBudget::start(Duration::from_millis(5));
        assert!(
            budget.used() < Duration::from_millis(1),
            "{:?}",
            budget.used()
        );
    }
}
