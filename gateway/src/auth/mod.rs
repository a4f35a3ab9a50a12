//! Client authentication and the gateway's identities.

pub mod scram;

use std::collections::HashMap;
use std::sync::Arc;

/// Who a session is, as the gateway verified it. Plugins and audit see this, never a claim the
/// client made up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated user name.
    pub user: String,
    /// Groups the configuration gives this user.
    pub groups: Vec<String>,
}

/// A user the gateway authenticates.
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub verifier: Option<scram::Verifier>,
    pub groups: Vec<String>,
}

/// The users known to the gateway, by name.
#[derive(Debug, Clone, Default)]
pub struct UserDirectory {
    pub users: Arc<HashMap<String, UserEntry>>,
}
