//! What every session of the gateway shares: configuration, identities, the plugin host,
//! catalog, approvals and audit trail. Built once by [`crate::server::Gateway::bind`].

use crate::auth::UserEntry;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::sql::SqlAnalyzer;
use crate::upstream::UpstreamTarget;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Everything sessions share; built once at start.
pub struct GatewayShared {
    pub config: Config,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub upstream: UpstreamTarget,
    pub users: HashMap<String, UserEntry>,
    /// Rules mapping client certificates to identities.
    pub cert_rules: crate::auth::cert::CertRules,
    /// Verifiers of JWTs presented as the password.
    pub tokens: Arc<crate::auth::jwt::TokenVerifier>,
    pub analyzer: SqlAnalyzer,
    pub cancels: CancelRegistry,
    /// The plugin runtime, when a plugins directory is configured.
    pub plugins: Option<Arc<crate::plugins::PluginHost>>,
    /// Key for decoy SCRAM verifiers of unknown users; random per process.
    pub decoy_secret: [u8; 32],
    /// Column lineage from the upstream catalog, for result plugins.
    pub catalog: crate::results::catalog::Catalog,
    /// The approvals workflow, when `[approvals]` is configured.
    pub approvals: Option<Arc<crate::approvals::Approvals>>,
    /// The audit trail, when `[audit]` is configured.
    pub audit: Option<Arc<crate::audit::Audit>>,
    /// The next session's id.
    pub(crate) next_session: AtomicU64,
}
