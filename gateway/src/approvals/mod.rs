//! Approvals: a require-approval verdict becomes a request that waits for a person or an AI
//! controller.
//!
//! - [`request`]: the request record and its state machine (pure, unit-tested).
//! - [`store`]: SQLite (default) or PostgreSQL (shared by several gateways, with NOTIFY).
//! - [`webhook`]: signed notifications per approver group.
//! - here: the service the relay and the admin API share: create, wait, decide, withdraw,
//!   and the one-time re-run of an approved deferred statement.
//!
//! Every request, decision and execution is logged as one `approval` event at info level
//! (`event` = `approval.created`, `approval.decided`, ...), through [`Approvals::record`], the
//! one place an audit sink will hook in.

pub mod request;
pub mod store;
pub mod webhook;

use crate::config::{ApprovalStoreKind, ApprovalsConfig, ApproverConfig, Config};
use crate::sqlstate;
use request::{ApprovalRequest, DecideError, Decision, Status, Timestamp, Verdict};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use store::{ListFilter, Store, StoreError};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// The SQLSTATE of a deferred statement: approval was requested, run it again once approved.
pub const SQLSTATE_DEFERRED: &str = sqlstate::APPROVAL_DEFERRED;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("approvals: {0}")]
    Config(String),
    #[error("approvals: cannot start the webhook thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Why a decision through the API was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecideRefusal {
    #[error("no such approval request")]
    NotFound,
    #[error("{approver} is not an approver of group \"{group}\"")]
    NotInGroup { approver: String, group: String },
    #[error(transparent)]
    Rule(#[from] DecideError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a held statement's wait ended.
#[derive(Debug)]
pub enum WaitOutcome {
    Approved(ApprovalRequest),
    Denied(ApprovalRequest),
    /// Expired, or some other end the holder did not cause.
    Ended(ApprovalRequest),
    TimedOut,
    Failed(StoreError),
}

/// The approvals service of one gateway.
pub struct Approvals {
    config: ApprovalsConfig,
    store: Store,
    /// Ids of requests that changed (`"*"`: any may have); held statements re-read theirs.
    changes: broadcast::Sender<String>,
    notifier: webhook::Notifier,
    /// Approver tokens by the SHA-256 of the token.
    approvers: HashMap<[u8; 32], ApproverConfig>,
    webhooks: HashMap<String, (String, Vec<u8>)>,
    public_url: String,
    /// This gateway's listen address, recorded with the requests it creates.
    gateway: String,
    /// The gateway's main runtime, where background work (withdrawing the request of a
    /// session that ended while held) runs.
    runtime: tokio::runtime::Handle,
    audit: Option<Arc<crate::audit::Audit>>,
}

/// SHA-256 of a bearer token, as `token_sha256` holds it.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Approvals {
    /// Opens the store (migrating it), starts the webhook thread and, for PostgreSQL, the
    /// listener for other gateways' decisions. Runs on the gateway's main runtime.
    pub async fn start(
        config: &Config,
        audit: Option<Arc<crate::audit::Audit>>,
    ) -> Result<Arc<Approvals>, ApprovalsError> {
        let Some(a) = config.approvals.clone() else {
            return Err(ApprovalsError::Config("not configured".into()));
        };
        let (changes, _) = broadcast::channel(1024);
        let store = match a.store {
            ApprovalStoreKind::Sqlite => {
                let path = a.sqlite_path.clone();
                let s = tokio::task::spawn_blocking(move || store::SqliteStore::open(&path))
                    .await
                    .map_err(|e| ApprovalsError::Config(e.to_string()))??;
                info!(path = %a.sqlite_path.display(), "approvals store: SQLite");
                Store::Sqlite(Arc::new(s))
            }
            ApprovalStoreKind::Postgres => {
                let text = a.postgres.as_deref().unwrap_or_default();
                let mut pg: tokio_postgres::Config = text
                    .parse()
                    .map_err(|e| ApprovalsError::Config(format!("approvals.postgres: {e}")))?;
                if let Ok(pw) = std::env::var("PGWARD_APPROVALS_PASSWORD") {
                    pg.password(pw);
                }
                pg.application_name("pgward-approvals");
                let s = store::PgStore::open(pg.clone(), &a.postgres_schema).await?;
                let tx = changes.clone();
                tokio::spawn(store::listen(pg, move |id| {
                    let _ = tx.send(id);
                }));
                info!(schema = %a.postgres_schema, "approvals store: PostgreSQL");
                Store::Postgres(Arc::new(s))
            }
        };
        let approvers = a
            .approvers
            .iter()
            .filter_map(|ap| parse_hex32(&ap.token_sha256).map(|h| (h, ap.clone())))
            .collect();
        let mut webhooks = HashMap::new();
        for g in &a.groups {
            let Some(url) = &g.webhook else { continue };
            let secret = match (&g.webhook_secret, &g.webhook_secret_env) {
                (Some(s), _) => s.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    ApprovalsError::Config(format!(
                        "approvals.groups \"{}\": webhook_secret_env: environment variable {var} is not set",
                        g.name
                    ))
                })?,
                (None, None) => String::new(),
            };
            webhooks.insert(g.name.clone(), (url.clone(), secret.into_bytes()));
        }
        let admin = config.admin_address().unwrap_or_default();
        let scheme = if config.admin.cert.is_some() {
            "https"
        } else {
            "http"
        };
        let public_url = a
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{admin}"))
            .trim_end_matches('/')
            .to_owned();
        Ok(Arc::new(Approvals {
            store,
            changes,
            notifier: webhook::Notifier::start()?,
            approvers,
            webhooks,
            public_url,
            gateway: config.listen.address.clone(),
            runtime: tokio::runtime::Handle::current(),
            audit,
            config: a,
        }))
    }

    pub fn config(&self) -> &ApprovalsConfig {
        &self.config
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The approver a bearer token belongs to.
    pub fn approver(&self, token: &str) -> Option<&ApproverConfig> {
        self.approvers.get(&token_hash(token))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        let mut r = self.store.get(id).await?;
        if let Some(r) = &mut r {
            // Shown as it stands now, even if nobody has written the expiry yet.
            r.refresh(Timestamp::now());
        }
        Ok(r)
    }

    pub async fn list(&self, f: &ListFilter) -> Result<Vec<ApprovalRequest>, StoreError> {
        let now = Timestamp::now();
        let mut all = self.store.list(f).await?;
        for r in &mut all {
            r.refresh(now);
        }
        if let Some(status) = f.status {
            all.retain(|r| r.status == status);
        }
        Ok(all)
    }

    /// Stores a new request and tells its approvers.
    pub async fn create(&self, r: ApprovalRequest) -> Result<ApprovalRequest, StoreError> {
        self.store.insert(&r).await?;
        self.record("approval.created", &r, None);
        Ok(r)
    }

    /// Records an approver's decision, after checking they may make it.
    pub async fn decide(
        &self,
        id: &str,
        approver: &ApproverConfig,
        verdict: Verdict,
        comment: Option<String>,
    ) -> Result<ApprovalRequest, DecideRefusal> {
        let current = self.store.get(id).await?.ok_or(DecideRefusal::NotFound)?;
        if !approver.groups.contains(&current.approver_group) {
            return Err(DecideRefusal::NotInGroup {
                approver: approver.name.clone(),
                group: current.approver_group,
            });
        }
        let decision = Decision {
            approver: approver.name.clone(),
            identity: approver
                .identity
                .clone()
                .unwrap_or_else(|| approver.name.clone()),
            kind: approver.kind,
            verdict,
            at: Timestamp::now(),
            proven_by: format!("bearer token \"{}\"", approver.name),
            comment,
        };
        let valid_for = self.config.valid_for;
        let (r, outcome) = self
            .store
            .update(id, move |r| {
                let now = decision.at;
                r.decide(decision, now, valid_for)
            })
            .await?
            .ok_or(DecideRefusal::NotFound)?;
        outcome?;
        self.changed(&r.id);
        self.record("approval.decided", &r, r.decisions.last());
        Ok(r)
    }

    /// Ends a pending request without a decision (withdrawn, expired); returns it as stored.
    pub async fn end(
        &self,
        id: &str,
        status: Status,
        why: &'static str,
    ) -> Result<Option<ApprovalRequest>, StoreError> {
        let Some((r, changed)) = self.store.update(id, move |r| r.end(status, why)).await? else {
            return Ok(None);
        };
        if changed {
            self.changed(&r.id);
            self.record(
                match status {
                    Status::Withdrawn => "approval.withdrawn",
                    _ => "approval.expired",
                },
                &r,
                None,
            );
        }
        Ok(Some(r))
    }

    /// Marks an approved request as run; false when it no longer may run.
    pub async fn execute(&self, id: &str) -> Result<bool, StoreError> {
        let Some((r, ran)) = self
            .store
            .update(id, |r| r.execute(Timestamp::now()))
            .await?
        else {
            return Ok(false);
        };
        if ran {
            self.changed(&r.id);
            self.record("approval.executed", &r, None);
        }
        Ok(ran)
    }

    /// For a deferred statement: claims an approved, still valid request of `user` with this
    /// match key (it is then executed and cannot be claimed again), or returns a pending one.
    pub async fn deferred(&self, user: &str, key: &str) -> Result<Deferred, StoreError> {
        for id in self.store.find(user, key, Status::Approved).await? {
            if self.execute(&id).await? {
                let r = self.store.get(&id).await?;
                return Ok(r.map(Deferred::Run).unwrap_or(Deferred::New));
            }
        }
        let now = Timestamp::now();
        for id in self.store.find(user, key, Status::Pending).await? {
            if let Some(mut r) = self.store.get(&id).await? {
                if !r.refresh(now) {
                    return Ok(Deferred::Pending(r));
                }
            }
        }
        Ok(Deferred::New)
    }

    /// Waits until request `id` is decided or ends, or `timeout` passes.
    pub async fn wait(&self, id: &str, timeout: Duration) -> WaitOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changes.subscribe();
        loop {
            match self.store.get(id).await {
                Ok(Some(mut r)) => {
                    r.refresh(Timestamp::now());
                    match r.status {
                        Status::Pending => {}
                        Status::Approved => return WaitOutcome::Approved(r),
                        Status::Denied => return WaitOutcome::Denied(r),
                        _ => return WaitOutcome::Ended(r),
                    }
                }
                Ok(None) => {
                    return WaitOutcome::Failed(StoreError::Other(format!("request {id} vanished")))
                }
                Err(e) => return WaitOutcome::Failed(e),
            }
            // Wake on a change to this request; re-read every few seconds anyway, in case a
            // notification was lost.
            let recheck = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let until = recheck.min(deadline);
                match tokio::time::timeout_at(until, changes.recv()).await {
                    Ok(Ok(changed)) if changed != id && changed != "*" => continue,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                    Ok(_) => break,
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return WaitOutcome::TimedOut
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Withdraws `id` in the background unless disarmed: for a held statement whose session
    /// ends without its wait ending (shutdown, the server went away).
    pub fn withdraw_on_drop(self: &Arc<Self>, id: &str) -> WithdrawOnDrop {
        WithdrawOnDrop {
            approvals: self.clone(),
            id: Some(id.to_owned()),
        }
    }

    fn changed(&self, id: &str) {
        let _ = self.changes.send(id.to_owned());
    }

    /// The one place every request, decision and execution is reported: the log now, the
    /// audit trail later.
    pub fn record(&self, event: &'static str, r: &ApprovalRequest, decision: Option<&Decision>) {
        info!(
            event,
            request = %r.id,
            status = r.status.as_str(),
            requester = %r.requester.user,
            session = r.requester.session_id,
            plugin = %r.plugin,
            rule = %r.rule,
            approver_group = %r.approver_group,
            approver = decision.map(|d| d.approver.as_str()).unwrap_or(""),
            fingerprint = %r.statement.fingerprint_id,
            "approval"
        );
        crate::metrics::METRICS
            .approvals
            .get_or_create(&crate::metrics::EventLabels {
                event: event.trim_start_matches("approval.").to_owned(),
            })
            .inc();
        if let Some(audit) = &self.audit {
            audit.emit(
                event,
                serde_json::json!({
                    "request": r.id,
                    "status": r.status.as_str(),
                    "mode": r.mode,
                    "session": r.requester.session_id,
                    "user": r.requester.user,
                    "groups": r.requester.groups,
                    "plugin": r.plugin,
                    "rule": r.rule,
                    "reason": r.reason,
                    "approver_group": r.approver_group,
                    "quorum": r.quorum,
                    "fingerprint_id": r.statement.fingerprint_id,
                    "decision": decision,
                    "end_reason": r.end_reason,
                }),
            );
        }
        if matches!(event, "approval.created" | "approval.decided") {
            self.notify(event, r);
        }
    }

    fn notify(&self, event: &str, r: &ApprovalRequest) {
        let Some((url, secret)) = self.webhooks.get(&r.approver_group) else {
            return;
        };
        let body = serde_json::json!({
            "event": event,
            "request": r,
            "links": {
                "self": format!("{}/v1/approvals/{}", self.public_url, r.id),
                "approve": format!("{}/v1/approvals/{}/approve", self.public_url, r.id),
                "deny": format!("{}/v1/approvals/{}/deny", self.public_url, r.id),
            },
            "cli": format!("pgward approvals show {}", r.id),
        });
        match serde_json::to_string(&body) {
            Ok(body) => self.notifier.send(webhook::Delivery {
                url: url.clone(),
                secret: secret.clone(),
                body,
            }),
            Err(e) => warn!(error = %e, "cannot encode webhook payload"),
        }
    }
}

/// See [`Approvals::withdraw_on_drop`].
pub struct WithdrawOnDrop {
    approvals: Arc<Approvals>,
    id: Option<String>,
}

impl WithdrawOnDrop {
    pub fn disarm(&mut self) {
        self.id = None;
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let a = self.approvals.clone();
            self.approvals.runtime.spawn(async move {
                if let Err(e) = a.end(&id, Status::Withdrawn, "session ended").await {
                    warn!(request = %id, error = %e, "cannot withdraw approval request");
                }
            });
        }
    }
}

/// What a deferred statement finds in the store.
pub enum Deferred {
    /// Approved and now claimed: run it.
    Run(ApprovalRequest),
    /// Already asked for and still pending.
    Pending(ApprovalRequest),
    /// Nothing yet: create a request.
    New,
}
