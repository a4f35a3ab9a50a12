//! Client authentication and the gateway's identities.

pub mod cert;
pub mod jwt;
pub mod scram;

use std::collections::HashMap;
use std::sync::Arc;

/// What proved a session's identity; more than one when a certificate was required as well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Proofs {
    /// A SCRAM-SHA-256 password.
    pub password: bool,
    /// A client certificate from a configured CA, mapped by an `auth.certificates` rule.
    pub certificate: bool,
    /// A signed JWT from a configured issuer.
    pub token: bool,
}

/// Who a session is, as the gateway verified it. Plugins and audit see this, never a claim the
/// client made up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated user name.
    pub user: String,
    /// Groups from the configuration (and, for tokens, from the token's groups claim).
    pub groups: Vec<String>,
    /// How the identity was proven; none only with `auth.method = "trust"`.
    pub proofs: Proofs,
    /// The `iss` claim of the token that proved it.
    pub token_issuer: Option<String>,
    /// The certificate field it was mapped from (a URI or DNS SAN, or the subject CN).
    pub certificate_subject: Option<String>,
    /// The role the gateway sets upstream for the session (`SET ROLE`), if one is mapped.
    pub upstream_role: Option<String>,
}

impl Identity {
    /// A name for how the identity was proven, for metrics, logs and the audit trail:
    /// `scram-sha-256`, `cert`, `jwt`, `cert+scram-sha-256`, `cert+jwt` or `trust`.
    pub fn method(&self) -> &'static str {
        let p = self.proofs;
        match (p.certificate, p.password, p.token) {
            (true, true, _) => "cert+scram-sha-256",
            (true, false, true) => "cert+jwt",
            (true, false, false) => "cert",
            (false, true, _) => "scram-sha-256",
            (false, false, true) => "jwt",
            (false, false, false) => "trust",
        }
    }

    /// Adds `groups` not yet in the identity's groups, keeping their order.
    pub fn add_groups<'a>(&mut self, groups: impl IntoIterator<Item = &'a String>) {
        for g in groups {
            if !self.groups.contains(g) {
                self.groups.push(g.clone());
            }
        }
    }
}

/// Why a statement would change the session's role, which a session with a mapped upstream
/// role may not do: its grants and row-level security are that role's. `None`: it would not.
///
/// Statements are judged by their analysis (`SET ROLE`, `RESET ROLE`, `SET SESSION
/// AUTHORIZATION` in any spelling, `DISCARD ALL`, any call of `set_config`), and text the
/// gateway cannot parse (a `DO` block, say) is refused when it mentions a role or
/// authorization at all: fail closed.
pub fn role_change(text: &str, analysis: Option<&pgward_sql::Analysis>) -> Option<&'static str> {
    let Some(analysis) = analysis else {
        return Some("statement text the gateway cannot read");
    };
    for s in &analysis.statements {
        match s.command.as_str() {
            "SET ROLE" | "RESET ROLE" => return Some("SET ROLE / RESET ROLE"),
            "SET SESSION AUTHORIZATION" | "RESET SESSION AUTHORIZATION" => {
                return Some("SET SESSION AUTHORIZATION")
            }
            "DISCARD ALL" => return Some("DISCARD ALL (it resets the role)"),
            _ => {}
        }
        if s.functions
            .iter()
            .any(|f| f == "set_config" || f.ends_with(".set_config"))
        {
            return Some("set_config()");
        }
    }
    if analysis.has_unknown() {
        let lower = text.to_ascii_lowercase();
        if ["role", "authorization", "set_config"]
            .iter()
            .any(|w| lower.contains(w))
        {
            return Some("a statement the gateway cannot parse that mentions roles");
        }
    }
    None
}

/// A user the gateway authenticates.
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub verifier: Option<scram::Verifier>,
    pub groups: Vec<String>,
    /// A password alone is not enough: a certificate must map to this user too.
    pub require_certificate: bool,
    pub upstream_role: Option<String>,
}

/// The users known to the gateway, by name.
#[derive(Debug, Clone, Default)]
pub struct UserDirectory {
    pub users: Arc<HashMap<String, UserEntry>>,
}
