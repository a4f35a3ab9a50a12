//! Test plugin: rewrites one exact statement text into another, allows everything else.
//!
//! The match ignores surrounding whitespace and one trailing `;`.
//!
//! ```toml
//! from = "SELECT 'pgward-rewrite-me'"   # default
//! to = "SELECT 'rewritten'"             # default
//! ```
#![forbid(unsafe_code)]

use pgward_plugin_sdk::prelude::*;

/// Rewrites [`Config::from`] to [`Config::to`].
pub struct Rewrite {
    config: Config,
}

/// `rewrite.toml`.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// The statement text to replace.
    pub from: String,
    /// The replacement text.
    pub to: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            from: "SELECT 'pgward-rewrite-me'".to_owned(),
            to: "SELECT 'rewritten'".to_owned(),
        }
    }
}

fn statement_text(sql: &str) -> &str {
    let sql = sql.trim();
    sql.strip_suffix(';').unwrap_or(sql).trim_end()
}

impl Plugin for Rewrite {
    const NAME: &'static str = "rewrite";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_QUERY;

    fn init(text: &str) -> Result<Self, String> {
        let config: Config = config(text)?;
        if statement_text(&config.from).is_empty() || statement_text(&config.to).is_empty() {
            return Err("from and to must not be empty".to_owned());
        }
        Ok(Rewrite { config })
    }

    fn on_query(&mut self, _session: &Session, query: &Query) -> Verdict {
        if statement_text(&query.sql) == statement_text(&self.config.from) {
            return Verdict::rewrite(self.config.to.clone());
        }
        Verdict::Allow
    }
}

export_plugin!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use pgward_plugin_sdk::testing::TestHarness;

    #[test]
    fn exact_text_is_rewritten_and_the_rest_allowed() {
        let mut h = TestHarness::<Rewrite>::new("").unwrap();
        let s = h.session("alice", &[]);
        let v = h.query(&s, " SELECT 'pgward-rewrite-me';\n");
        assert_eq!(v.rewritten_sql(), Some("SELECT 'rewritten'"));
        assert!(h.query(&s, "SELECT 'pgward-rewrite-me', 1").is_allow());
        assert!(h.query(&s, "select 'pgward-rewrite-me'").is_allow());
    }

    #[test]
    fn configured_texts_replace_the_defaults() {
        let mut h = TestHarness::<Rewrite>::new("from = \"SELECT 1\"\nto = \"SELECT 2\"").unwrap();
        let s = h.session("alice", &[]);
        assert_eq!(h.query(&s, "SELECT 1").rewritten_sql(), Some("SELECT 2"));
    }
}
