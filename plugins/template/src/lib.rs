//! A small but complete pgward policy plugin, meant to be copied as the start of your own.
//!
//! It refuses:
//! - any statement whose command is in `deny_commands` (e.g. `ALTER SYSTEM`);
//! - any query whose fingerprint id is in `deny_fingerprints` (pins one exact query shape);
//! - `DROP TABLE` of a table in `protected_tables`, unless the user is in `drop_allowed_groups`,
//!   with SQLSTATE 42501 and a hint naming who may do it.
//!
//! See `pgward_plugin_template.toml` next to this crate for the configuration. Build with
//! `cargo build --release --target wasm32-wasip2 -p pgward-plugin-template` and copy
//! `target/wasm32-wasip2/release/pgward_plugin_template.wasm` (and the `.toml`) into the
//! gateway's plugins directory.
#![forbid(unsafe_code)]

use pgward_plugin_sdk::prelude::*;

/// The policy, built once per instance from its configuration.
pub struct Template {
    config: Config,
}

/// The plugin's configuration (`pgward_plugin_template.toml`); every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Commands nobody may run, as PostgreSQL names them ("ALTER SYSTEM", "TRUNCATE TABLE").
    pub deny_commands: Vec<String>,
    /// Fingerprint ids (16 hex digits) of queries nobody may run.
    pub deny_fingerprints: Vec<String>,
    /// Tables that may not be dropped (`schema.name`, `name` or `schema.*`).
    pub protected_tables: Vec<String>,
    /// Groups whose members may drop protected tables.
    pub drop_allowed_groups: Vec<String>,
}

impl Plugin for Template {
    const NAME: &'static str = "template";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_QUERY;

    fn init(text: &str) -> Result<Self, String> {
        let mut config: Config = config(text)?;
        for id in &mut config.deny_fingerprints {
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "deny_fingerprints: {id:?} is not a fingerprint id (16 hex digits)"
                ));
            }
            id.make_ascii_lowercase();
        }
        log(
            Level::Info,
            format!(
                "{} denied commands, {} denied fingerprints, {} protected table patterns",
                config.deny_commands.len(),
                config.deny_fingerprints.len(),
                config.protected_tables.len()
            ),
        );
        Ok(Template { config })
    }

    fn on_query(&mut self, session: &Session, query: &Query) -> Verdict {
        let c = &self.config;
        if c.deny_fingerprints.contains(&query.fingerprint_id) {
            return Verdict::deny(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "this query is blocked by policy",
            )
            .with_hint(format!("fingerprint {}", query.fingerprint_id));
        }
        if let Some(s) = query.find(|s| c.deny_commands.iter().any(|d| s.is_command(d))) {
            return Verdict::deny(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("{} is not allowed through this gateway", s.command),
            );
        }
        if session.in_any_group(&c.drop_allowed_groups) {
            return Verdict::Allow;
        }
        let dropped = query.writes().find(|w| {
            w.is(WriteAction::Drop, ObjectKind::Table)
                && w.relation.matches_any(&c.protected_tables)
        });
        match dropped {
            Some(w) => {
                log(
                    Level::Warn,
                    format!("refused DROP TABLE {} by {}", w.relation, session.user()),
                );
                Verdict::deny(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("table {} is protected and may not be dropped", w.relation),
                )
                .with_hint(match c.drop_allowed_groups.as_slice() {
                    [] => "no one may drop it through this gateway".to_owned(),
                    groups => format!("ask a member of {}", groups.join(" or ")),
                })
            }
            None => Verdict::Allow,
        }
    }
}

export_plugin!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use pgward_plugin_sdk::testing::{analyze, TestHarness};

    const CONFIG: &str = include_str!("../pgward_plugin_template.toml");

    #[test]
    fn drop_of_protected_table_is_denied_with_hint() {
        let mut h = TestHarness::<Template>::new(CONFIG).unwrap();
        let alice = h.session("alice", &["dev"]);
        for sql in [
            "DROP TABLE public.accounts",
            "drop table ACCOUNTS",
            "DROP TABLE IF EXISTS scratch, audit.events CASCADE",
        ] {
            let v = h.query(&alice, sql);
            let deny = v.as_deny().unwrap_or_else(|| panic!("{sql}: {v:?}"));
            assert_eq!(deny.sqlstate, "42501");
            assert_eq!(deny.hint.as_deref(), Some("ask a member of dba"));
        }
        assert!(h.logged("refused DROP TABLE accounts by alice"));
    }

    #[test]
    fn other_drops_and_reads_are_allowed() {
        let mut h = TestHarness::<Template>::new(CONFIG).unwrap();
        let alice = h.session("alice", &["dev"]);
        assert!(h.query(&alice, "DROP TABLE scratch").is_allow());
        assert!(h.query(&alice, "DROP VIEW accounts").is_allow());
        assert!(h.query(&alice, "SELECT * FROM public.accounts").is_allow());
    }

    #[test]
    fn unqualified_drop_may_resolve_into_a_protected_schema() {
        let mut h = TestHarness::<Template>::new("protected_tables = [\"billing.*\"]").unwrap();
        let alice = h.session("alice", &[]);
        assert!(h.query(&alice, "DROP TABLE invoices").is_deny());
        assert!(h.query(&alice, "DROP TABLE public.scratch").is_allow());
        let v = h.query(&alice, "DROP TABLE billing.invoices");
        assert_eq!(
            v.as_deny().and_then(|d| d.hint.as_deref()),
            Some("no one may drop it through this gateway")
        );
    }

    #[test]
    fn allowed_group_may_drop_protected_tables() {
        let mut h = TestHarness::<Template>::new(CONFIG).unwrap();
        let dana = h.session("dana", &["dba"]);
        assert!(h.query(&dana, "DROP TABLE public.accounts").is_allow());
    }

    #[test]
    fn denied_commands_are_refused_anywhere_in_the_text() {
        let mut h = TestHarness::<Template>::new(CONFIG).unwrap();
        let dana = h.session("dana", &["dba"]);
        let v = h.query(&dana, "SELECT 1; ALTER SYSTEM SET work_mem = '1GB'");
        assert_eq!(v.sqlstate(), Some("42501"));
        assert!(h.query(&dana, "TRUNCATE t").is_deny());
    }

    #[test]
    fn denied_fingerprint_matches_whatever_the_literals() {
        let id = analyze("SELECT * FROM users WHERE id = 1", Protocol::Simple).fingerprint_id;
        let config = format!("deny_fingerprints = [\"{}\"]", id.to_uppercase());
        let mut h = TestHarness::<Template>::new(&config).unwrap();
        let bob = h.session("bob", &[]);
        assert!(h.query(&bob, "select * from users where id = 42").is_deny());
        assert!(h
            .query(&bob, "SELECT * FROM users WHERE name = 'x'")
            .is_allow());
    }

    #[test]
    fn bad_config_is_refused_with_the_key_named() {
        let err = TestHarness::<Template>::new("protected_tables = \"accounts\"")
            .err()
            .unwrap();
        assert!(err.contains("key `protected_tables`"), "{err}");
        let err = TestHarness::<Template>::new("deny_fingerprints = [\"abc\"]")
            .err()
            .unwrap();
        assert!(err.contains("not a fingerprint id"), "{err}");
    }

    #[test]
    fn empty_config_allows_everything() {
        let mut h = TestHarness::<Template>::new("").unwrap();
        let bob = h.session("bob", &[]);
        assert!(h.query(&bob, "DROP TABLE public.accounts").is_allow());
    }
}
