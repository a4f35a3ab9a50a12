//! Finding, compiling and watching plugin files.

use super::{Chain, Hooks, LoadedPlugin, PluginHost, CONTRACT_VERSION};
use notify::{RecursiveMode, Watcher};
use ring::digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tracing::{error, info, warn};
use wasmtime::component::Component;

/// What `pgward plugins list` shows for one file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PluginStatus {
    pub file: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub hash: Option<String>,
    pub hooks: Vec<String>,
    /// Seconds since the Unix epoch when the running version was loaded.
    pub loaded_at: Option<u64>,
    /// Position in the chain, if it runs.
    pub position: Option<usize>,
    pub last_error: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// `.wasm` files of the directory, by file stem. Hidden files and editors' temporary files are
/// ignored, so writing `x.wasm.tmp` and renaming it over `x.wasm` swaps atomically.
fn wasm_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".wasm") || !path.is_file() {
            continue;
        }
        out.push((name.trim_end_matches(".wasm").to_owned(), path));
    }
    out.sort();
    Ok(out)
}

/// Loads every plugin of `dir`, reusing unchanged versions from `current`. Returns the new
/// chain order and the status of each file.
pub(super) fn scan(
    host: &PluginHost,
    dir: &Path,
    current: &Chain,
) -> (Vec<Arc<LoadedPlugin>>, Vec<PluginStatus>) {
    let files = match wasm_files(dir) {
        Ok(f) => f,
        Err(e) => {
            error!(dir = %dir.display(), error = %e, "cannot read the plugins directory; keeping the current chain");
            return (current.plugins.clone(), Vec::new());
        }
    };
    let mut loaded = Vec::new();
    let mut status = Vec::new();
    for (stem, path) in files {
        let previous = current.plugins.iter().find(|p| p.file == stem).cloned();
        let outcome = load(host, &stem, &path, previous.as_ref());
        let mut st = PluginStatus {
            file: path.display().to_string(),
            name: None,
            version: None,
            hash: None,
            hooks: Vec::new(),
            loaded_at: None,
            position: None,
            last_error: None,
        };
        let running = match outcome {
            Ok(p) => Some(p),
            Err(e) => {
                match &previous {
                    Some(_) => {
                        error!(file = %path.display(), error = %e, "plugin failed to load; the previous version stays active")
                    }
                    None => error!(file = %path.display(), error = %e, "plugin failed to load"),
                }
                st.last_error = Some(e);
                previous
            }
        };
        if let Some(p) = running {
            st.name = Some(p.name.clone());
            st.version = Some(p.version.clone());
            st.hash = Some(p.hash.clone());
            st.hooks = p.hooks.names().into_iter().map(String::from).collect();
            st.loaded_at = p
                .loaded_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
            loaded.push(p);
        }
        status.push(st);
    }
    // Explicit order first, then file-name order.
    let order = &host.settings().order;
    loaded.sort_by_key(|p| {
        order
            .iter()
            .position(|o| *o == p.file)
            .unwrap_or(usize::MAX)
    });
    for (i, p) in loaded.iter().enumerate() {
        if let Some(st) = status
            .iter_mut()
            .find(|s| s.hash.as_deref() == Some(&p.hash) && s.name.as_deref() == Some(&p.name))
        {
            st.position = Some(i);
        }
    }
    (loaded, status)
}

/// Loads one file, or returns `previous` if neither the file nor its config changed.
fn load(
    host: &PluginHost,
    stem: &str,
    path: &Path,
    previous: Option<&Arc<LoadedPlugin>>,
) -> Result<Arc<LoadedPlugin>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let hash = sha256_hex(&bytes);
    let config_path = path.with_extension("toml");
    let config = match std::fs::read_to_string(&config_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: cannot read: {e}", config_path.display())),
    };
    let config_hash = sha256_hex(config.as_bytes());
    if let Some(p) = previous {
        if p.hash == hash && p.config_hash == config_hash {
            return Ok(p.clone());
        }
    }
    let component = compile(host, &bytes, &hash)?;
    let contract = check_contract(host, &component)?;
    let instance_pre = host
        .linker
        .instantiate_pre(&component)
        .map_err(|e| format!("does not fit this gateway's plugin contract: {e:#}"))?;
    let pre = super::exports::PluginPre::new(instance_pre, contract).map_err(|e| {
        format!(
            "does not export the plugin world of pgward:plugin@{}.{}.{}: {e}",
            CONTRACT_VERSION.0, CONTRACT_VERSION.1, CONTRACT_VERSION.2
        )
    })?;
    let mut plugin = LoadedPlugin {
        id: host.next_id(),
        file: stem.to_owned(),
        name: stem.to_owned(),
        version: String::new(),
        hash,
        config_hash,
        hooks: Hooks::default(),
        loaded_at: SystemTime::now(),
        config,
        pre,
        failures: Default::default(),
        verdicts: super::verdicts::VerdictCache::new(host.settings().verdict_cache),
        metrics: Default::default(),
    };
    // Probe: instantiate, ask for the plugin's info and run init with its config, under a
    // deadline like any call (the epoch ticks while it runs).
    let _running = host.ticker.running();
    let mut store = host.new_store(&plugin);
    let probe_deadline = host
        .settings()
        .batch_deadline
        .max(Duration::from_millis(500));
    PluginHost::arm(&mut store, probe_deadline);
    let instance = super::poll_once(plugin.pre.instantiate_async(&mut store))
        .map_err(|e| format!("cannot be instantiated: {e:#}"))?;
    let info = super::poll_once(instance.call_info(&mut store))
        .map_err(|e| format!("info() failed: {e:#}"))?;
    if info.name.is_empty() || info.name.len() > 128 {
        return Err("info() returned an empty or overlong name".into());
    }
    plugin.name = info.name;
    plugin.version = info.version.chars().take(64).collect();
    plugin.hooks = Hooks {
        on_connect: info.hooks.contains(super::wit::Hooks::ON_CONNECT),
        on_query: info.hooks.contains(super::wit::Hooks::ON_QUERY),
        on_result_schema: info.hooks.contains(super::wit::Hooks::ON_RESULT_SCHEMA),
        on_batch: info.hooks.contains(super::wit::Hooks::ON_BATCH),
    };
    PluginHost::arm(&mut store, probe_deadline);
    match super::poll_once(instance.call_init(&mut store, &plugin.config)) {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => {
            return Err(format!(
                "{}: rejected by the plugin: {msg}",
                config_path.display()
            ))
        }
        Err(e) => return Err(format!("init trapped: {e:#}")),
    }
    info!(plugin = %plugin.name, version = %plugin.version, contract = ?plugin.pre.contract(), hash = %&plugin.hash[..12], hooks = ?plugin.hooks.names(), "plugin loaded");
    Ok(Arc::new(plugin))
}

/// Compiles a component, or loads it from the artifact cache.
fn compile(host: &PluginHost, bytes: &[u8], hash: &str) -> Result<Component, String> {
    let cache_dir = host
        .settings()
        .cache_dir
        .clone()
        .or_else(|| host.settings().directory.as_ref().map(|d| d.join(".cache")));
    // The key covers the wasm and the engine's configuration and version, so an artifact from
    // another wasmtime or another config is never loaded.
    let engine_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        host.engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    };
    let artifact = cache_dir
        .as_ref()
        .map(|d| d.join(format!("{hash}-{engine_key:016x}.cwasm")));
    if let Some(path) = &artifact {
        if path.exists() {
            match load_artifact(host, path) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    warn!(artifact = %path.display(), error = %e, "ignoring unusable compiled artifact")
                }
            }
        }
    }
    let component = Component::new(&host.engine, bytes)
        .map_err(|e| format!("is not a valid WebAssembly component: {e:#}"))?;
    if let (Some(dir), Some(path)) = (&cache_dir, &artifact) {
        let saved = std::fs::create_dir_all(dir).and_then(|_| {
            let data = component.serialize().map_err(std::io::Error::other)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, path)
        });
        if let Err(e) = saved {
            warn!(dir = %dir.display(), error = %e, "cannot cache the compiled plugin");
        }
    }
    Ok(component)
}

#[allow(unsafe_code)]
fn load_artifact(host: &PluginHost, path: &Path) -> Result<Component, String> {
    // SAFETY: wasmtime requires that a deserialized artifact was produced by `serialize` of a
    // compatible engine and not tampered with. The file is written only by `compile` above,
    // into the gateway's own cache directory, under a name that includes the SHA-256 of the
    // source and the engine's compatibility hash. Anyone able to write there can replace the
    // plugins themselves.
    unsafe { Component::deserialize_file(&host.engine, path) }.map_err(|e| format!("{e:#}"))
}

/// Refuses components built for another major (0.x: minor) version of `pgward:plugin` than
/// the ones this gateway loads, and says which one a component speaks.
fn check_contract(host: &PluginHost, component: &Component) -> Result<super::Contract, String> {
    let mut found = None;
    let ty = component.component_type();
    for (name, _) in ty.imports(&host.engine).chain(ty.exports(&host.engine)) {
        let Some(rest) = name.strip_prefix("pgward:plugin/") else {
            continue;
        };
        let Some((_, version)) = rest.split_once('@') else {
            continue;
        };
        let parts: Vec<u64> = version
            .split(['.', '-'])
            .take(3)
            .filter_map(|p| p.parse().ok())
            .collect();
        let (major, minor) = (
            parts.first().copied().unwrap_or(0),
            parts.get(1).copied().unwrap_or(0),
        );
        let contract = super::Contract::of(major, minor);
        if contract.is_none() || found.is_some_and(|f| Some(f) != contract) {
            return Err(format!(
                "built for contract pgward:plugin@{version}, but this gateway speaks pgward:plugin@{}.{}.{}: rebuild it against a matching pgward-plugin-sdk",
                CONTRACT_VERSION.0, CONTRACT_VERSION.1, CONTRACT_VERSION.2
            ));
        }
        found = contract;
    }
    Ok(found.unwrap_or(super::Contract::V0_5))
}

/// Writes the status of every plugin file for `pgward plugins list`.
pub(super) fn write_status(host: &PluginHost, status: &[PluginStatus]) {
    let Some(path) = status_path(host.settings()) else {
        return;
    };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        warn!(path = %path.display(), error = %e, "cannot write the plugin status file");
    }
}

/// Where the running gateway records plugin status.
pub fn status_path(settings: &crate::config::PluginsConfig) -> Option<PathBuf> {
    settings
        .cache_dir
        .clone()
        .or_else(|| settings.directory.as_ref().map(|d| d.join(".cache")))
        .map(|d| d.join("status.json"))
}

/// Watches `dir` and reloads after changes settle. Events arrive while a file is still being
/// written; waiting for 150 ms of quiet means a file is loaded once, whole (and a half-written
/// file that fails to compile is retried on its next change, the previous version staying on).
pub(super) fn watch(host: Weak<PluginHost>, dir: PathBuf) -> notify::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            let relevant = e.paths.iter().any(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.') && (name.ends_with(".wasm") || name.ends_with(".toml"))
            });
            if relevant && !e.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("pgward-plugin-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            while rx.recv().is_ok() {
                while rx.recv_timeout(Duration::from_millis(150)).is_ok() {}
                let Some(host) = host.upgrade() else { return };
                host.reload();
            }
        })
        .map(|_| ())
        .map_err(|e| notify::Error::generic(&e.to_string()))
}
