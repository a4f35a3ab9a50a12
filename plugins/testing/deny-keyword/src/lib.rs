//! Test plugin: denies any query whose SQL text contains a configured word (ignoring ASCII
//! case), allows the rest. `word` is required, so a missing config refuses the load.
//!
//! ```toml
//! word = "forbidden_table"
//! sqlstate = "42501"            # default
//! message = "forbidden word"    # default: "query mentions a forbidden word"
//! show_identity = true          # default false: append the session's identity to the message
//! cacheable = true              # default false: look in the normalized text, and mark every
//!                               # verdict cacheable (contract 0.5)
//! allow_groups = ["ops"]        # sessions in these groups are allowed whatever they send
//! ```
#![forbid(unsafe_code)]

use pgward_plugin_sdk::prelude::*;

/// Denies queries containing [`Config::word`].
pub struct DenyKeyword {
    word: String,
    deny: Deny,
    show_identity: bool,
    cacheable: bool,
    allow_groups: Vec<String>,
}

/// `deny_keyword.toml`.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// The word that gets a query denied.
    pub word: String,
    /// The SQLSTATE of the refusal.
    #[serde(default = "default_sqlstate")]
    pub sqlstate: String,
    /// The message of the refusal.
    #[serde(default = "default_message")]
    pub message: String,
    /// Append who the session is and how it was proven to the message (for tests of identity).
    #[serde(default)]
    pub show_identity: bool,
    /// Look for the word in the normalized text (so the verdict depends on the statement's
    /// shape alone) and mark every verdict cacheable.
    #[serde(default)]
    pub cacheable: bool,
    /// Groups whose sessions are allowed whatever they send.
    #[serde(default)]
    pub allow_groups: Vec<String>,
}

fn default_sqlstate() -> String {
    sqlstate::INSUFFICIENT_PRIVILEGE.to_owned()
}

fn default_message() -> String {
    "query mentions a forbidden word".to_owned()
}

impl Plugin for DenyKeyword {
    const NAME: &'static str = "deny-keyword";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_QUERY;

    fn init(text: &str) -> Result<Self, String> {
        let c: Config = config(text)?;
        if c.word.is_empty() {
            return Err("word must not be empty".to_owned());
        }
        let deny = Deny::new(c.sqlstate, c.message);
        deny.validate()?;
        Ok(DenyKeyword {
            word: c.word.to_ascii_lowercase(),
            deny,
            show_identity: c.show_identity,
            cacheable: c.cacheable,
            allow_groups: c.allow_groups,
        })
    }

    fn on_query(&mut self, session: &Session, query: &Query) -> Verdict {
        let text = match self.cacheable {
            true => {
                cache_verdict();
                &query.fingerprint
            }
            false => &query.sql,
        };
        if session.in_any_group(&self.allow_groups) {
            return Verdict::Allow;
        }
        if text.to_ascii_lowercase().contains(&self.word) {
            log(Level::Info, "deny-keyword: denied a query");
            let mut deny = self.deny.clone();
            if self.show_identity {
                let id = &session.identity;
                let p = id.proven_by;
                let proofs: Vec<&str> = [
                    (p.password, "password"),
                    (p.certificate, "certificate"),
                    (p.token, "token"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect();
                deny.message = format!(
                    "{} [user={} groups={} proven_by={} issuer={} subject={} role={}]",
                    deny.message,
                    id.user,
                    id.groups.join(","),
                    proofs.join("+"),
                    id.token_issuer.as_deref().unwrap_or("-"),
                    id.certificate_subject.as_deref().unwrap_or("-"),
                    id.upstream_role.as_deref().unwrap_or("-"),
                );
            }
            return Verdict::Deny(deny);
        }
        Verdict::Allow
    }
}

export_plugin!(DenyKeyword);

#[cfg(test)]
mod tests {
    use super::*;
    use pgward_plugin_sdk::testing::TestHarness;

    #[test]
    fn query_with_the_word_is_denied_with_configured_error() {
        let mut h = TestHarness::<DenyKeyword>::new(
            "word = \"forbidden_table\"\nsqlstate = \"42P01\"\nmessage = \"no\"",
        )
        .unwrap();
        let s = h.session("alice", &[]);
        let v = h.query(&s, "SELECT * FROM Forbidden_Table");
        assert_eq!(v, Verdict::deny("42P01", "no"));
        assert!(h.logged("denied a query"));
        assert!(h.query(&s, "SELECT * FROM allowed").is_allow());
    }

    #[test]
    fn defaults_apply_and_word_is_required() {
        let mut h = TestHarness::<DenyKeyword>::new("word = \"x_y\"").unwrap();
        let s = h.session("alice", &[]);
        assert_eq!(h.query(&s, "SELECT x_y").sqlstate(), Some("42501"));
        let err = TestHarness::<DenyKeyword>::new("").err().unwrap();
        assert!(err.contains("missing field `word`"), "{err}");
        assert!(TestHarness::<DenyKeyword>::new("word = \"a\"\nsqlstate = \"1\"").is_err());
    }
}
