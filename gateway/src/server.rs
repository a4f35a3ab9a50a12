//! The listener: accepts clients, enforces the connection limit, and shuts down gracefully.

use crate::auth::UserEntry;
use crate::cancel::CancelRegistry;
use crate::config::{Config, TlsMode};
use crate::shared::GatewayShared;
use crate::shutdown::Shutdown;
use crate::sql::SqlAnalyzer;
use crate::upstream::UpstreamTarget;
use ring::rand::SecureRandom;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, Instrument};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Plugins(#[from] crate::plugins::StartError),
    #[error(transparent)]
    Approvals(#[from] crate::approvals::ApprovalsError),
    #[error("the system random number generator failed; refusing to start")]
    Random,
    #[error("auth.certificates: {0}")]
    Certificates(#[from] crate::auth::cert::CertError),
    #[error(transparent)]
    Tokens(#[from] crate::auth::jwt::IssuerError),
    #[error("reading the token issuers' keys failed: {0}")]
    TokenTask(String),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot start the admin server on {addr}: {source}")]
    Admin {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet running gateway.
pub struct Gateway {
    shared: Arc<GatewayShared>,
    listener: TcpListener,
    admin: Option<crate::admin::AdminServer>,
}

impl Gateway {
    /// Loads TLS material, builds the user directory and binds the listener.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let tls = match config.tls.mode {
            TlsMode::Disabled => None,
            _ => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::client_facing_config(&config.tls)?,
            )),
        };
        let cert_rules = crate::auth::cert::CertRules::new(&config.auth.certificates)?;
        // Reads the JWKS files and fetches the JWKS URLs: blocking I/O.
        let token_configs = config.auth.tokens.clone();
        let tokens = tokio::task::spawn_blocking(move || {
            crate::auth::jwt::TokenVerifier::new(&token_configs)
        })
        .await
        .map_err(|e| StartError::TokenTask(e.to_string()))??;
        let password = std::env::var("PGWARD_UPSTREAM_PASSWORD")
            .ok()
            .or_else(|| config.upstream.password.clone());
        let upstream = UpstreamTarget::new(config.upstream.clone(), password)?;
        let users = config
            .auth
            .users
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    UserEntry {
                        // Validated when the config was loaded.
                        verifier: u.password.as_deref().and_then(|p| p.parse().ok()),
                        groups: u.groups.clone(),
                        require_certificate: u.require_certificate,
                        upstream_role: u.upstream_role.clone(),
                    },
                )
            })
            .collect();
        let audit = match &config.audit {
            Some(a) => {
                // Opening reads the last file and may connect to the control database.
                let (a, origin) = (a.clone(), config.listen.address.clone());
                let started =
                    tokio::task::spawn_blocking(move || crate::audit::Audit::start(&a, &origin))
                        .await
                        .map_err(|e| crate::audit::AuditError::Other(e.to_string()))?;
                let audit = started?;
                // First in every run; the plugin.loaded records of the initial chain follow.
                audit.emit(
                    "gateway.start",
                    serde_json::json!({
                        "version": env!("CARGO_PKG_VERSION"),
                        "listen": config.listen.address,
                        "plugins_directory": config.plugins.directory,
                        "approvals": config.approvals.is_some(),
                    }),
                );
                Some(audit)
            }
            None => None,
        };
        let plugins = match &config.plugins.directory {
            None => None,
            Some(_) => {
                // Compiling plugins is CPU work: keep it off the async runtime.
                let settings = config.plugins.clone();
                let events = audit.clone().map(|a| -> crate::plugins::EventSink {
                    Arc::new(move |kind, fields| a.emit(kind, fields))
                });
                let started = tokio::task::spawn_blocking(move || {
                    crate::plugins::PluginHost::start_observed(settings, events)
                })
                .await
                .map_err(crate::plugins::StartError::from_join)??;
                Some(started)
            }
        };
        let approvals = match &config.approvals {
            Some(_) => Some(crate::approvals::Approvals::start(&config, audit.clone()).await?),
            None => None,
        };
        let mut decoy_secret = [0u8; 32];
        // A zero key would make every unknown user's decoy verifier predictable.
        ring::rand::SystemRandom::new()
            .fill(&mut decoy_secret)
            .map_err(|_| StartError::Random)?;
        let listener = TcpListener::bind(&config.listen.address)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen.address.clone(),
                source,
            })?;
        let admin = match config.admin_address() {
            Some(addr) => Some(
                crate::admin::AdminServer::bind(&addr, &config.admin)
                    .await
                    .map_err(|source| StartError::Admin {
                        addr: addr.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let shared = GatewayShared {
            analyzer: SqlAnalyzer::new(config.sql.cache_entries),
            config,
            tls,
            upstream,
            users,
            cert_rules,
            tokens: Arc::new(tokens),
            cancels: CancelRegistry::new(),
            plugins,
            decoy_secret,
            catalog: Default::default(),
            approvals,
            audit,
            next_session: AtomicU64::new(1),
        };
        Ok(Gateway {
            shared: Arc::new(shared),
            listener,
            admin,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shared(&self) -> &Arc<GatewayShared> {
        &self.shared
    }

    /// Serves clients until `shutdown` resolves, then stops accepting, lets sessions finish up
    /// to `listen.shutdown_timeout`, and closes the rest with an admin-shutdown error.
    ///
    /// Sessions run on `listen.workers` threads, each with its own single-threaded runtime:
    /// a session never migrates between threads and a wake-up never crosses one, which costs
    /// measurably less per round trip than a work-stealing runtime (see BENCHMARKS.md). This
    /// task only accepts and hands connections out round-robin.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let max = self.shared.config.listen.max_connections;
        let limit = Arc::new(Semaphore::new(max));
        let stopping = Shutdown::new();
        let sessions = TaskTracker::new();
        let workers = match self.shared.config.listen.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let mut senders = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
            let shared = self.shared.clone();
            let (shutdown, tracker) = (stopping.clone(), sessions.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("pgward-worker-{i}"))
                .spawn(move || worker(shared, rx, shutdown, tracker));
            match spawned {
                Ok(t) => {
                    senders.push(tx);
                    threads.push(t);
                }
                Err(e) => error!(error = %e, "cannot start a worker thread"),
            }
        }
        if senders.is_empty() {
            error!("no worker threads: not serving");
            return;
        }
        let addr = self.listener.local_addr().ok();
        if let Some(admin) = self.admin {
            let shared = self.shared.clone();
            tokio::spawn(admin.serve(shared));
        }
        info!(address = ?addr, workers = senders.len(), "pgward listening");

        tokio::pin!(shutdown);
        let mut next = 0usize;
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = &mut shutdown => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(tcp) = tcp.into_std() else { continue };
            let permit = limit.clone().try_acquire_owned().ok();
            let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
            let conn = Accepted {
                tcp,
                peer,
                id,
                permit,
            };
            if let Err(returned) = senders[next % senders.len()].send(conn) {
                // That worker is gone; give the connection to another one.
                error!(worker = next % senders.len(), "worker thread stopped");
                senders.remove(next % senders.len());
                if senders.is_empty() {
                    break;
                }
                let _ = senders[0].send(returned.0);
            }
            next = next.wrapping_add(1);
        }
        drop(self.listener);
        drop(senders);
        let grace = self.shared.config.listen.shutdown_timeout;
        let in_use = max - limit.available_permits();
        info!(sessions = in_use, grace = ?grace, "shutting down: no new connections");
        // Sessions end as soon as each is idle; at the deadline the rest are told and closed.
        stopping.begin();
        sessions.close();
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            stopping.expire();
            // Bounded: each session writes its final error with a timeout of its own.
            let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        info!(
            parsed = self.shared.analyzer.parse_count(),
            cache_hits = self.shared.analyzer.cache_hits(),
            "sql analysis totals"
        );
        if let Some(a) = &self.shared.audit {
            a.emit("gateway.stop", serde_json::json!({ "reason": "signal" }));
            // Everything queued is written, synced and sealed with a checkpoint.
            if !a.flush(Duration::from_secs(10)) {
                error!("the audit trail could not be flushed at shutdown");
            }
        }
        info!("shutdown complete");
    }
}

/// A connection handed from the acceptor to a worker.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    id: u64,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A worker thread: runs the sessions it is handed until the acceptor stops and they all end.
fn worker(
    shared: Arc<GatewayShared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    // Sessions are local tasks: a session's state is shared by its two directions only,
    // which run in its one task, so it needs no atomics or locks (see `relay::RelayState`).
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                conn = rx.recv() => {
                    let Some(conn) = conn else { break };
                    let Ok(tcp) = tokio::net::TcpStream::from_std(conn.tcp) else { continue };
                    let shared = shared.clone();
                    let stopping = shutdown.clone();
                    let span = info_span!("session", id = conn.id, client = %conn.peer, user = tracing::field::Empty, database = tracing::field::Empty);
                    let (id, peer, permit) = (conn.id, conn.peer, conn.permit);
                    sessions.spawn_local(tracker.track_future(
                        async move {
                            let over_limit = permit.is_none();
                            crate::session::serve(shared, tcp, id, peer, over_limit, stopping).await;
                            drop(permit);
                        }
                        .instrument(span),
                    ));
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        while sessions.join_next().await.is_some() {}
    });
}
