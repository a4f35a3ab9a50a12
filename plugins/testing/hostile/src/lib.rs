//! Test plugin that misbehaves on purpose, to prove the gateway fails closed.
//!
//! Queries whose SQL contains `trigger` (default `hostile`) get the behaviour chosen by `mode`;
//! all other queries are allowed, so a test can show the session stays usable afterwards.
//!
//! | mode | behaviour |
//! | --- | --- |
//! | `loop` | never returns (the epoch deadline must stop it) |
//! | `alloc` | allocates 1 MiB blocks until memory runs out (the memory cap must stop it) |
//! | `trap` | panics, which traps the instance |
//! | `garbage` | denies with SQLSTATE `"XX"` and an empty message (the host must reject it) |
//! | `huge` | rewrites the query to a 64 MiB string |
//! | `loop-in-init` | never returns from `init` (the load's deadline must stop it) |
//!
//! ```toml
//! mode = "loop"
//! trigger = "hostile"   # default
//! ```
#![forbid(unsafe_code)]

use pgward_plugin_sdk::prelude::*;
use std::hint::black_box;

/// How to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", rename_all = "lowercase")]
pub enum Mode {
    /// Never return.
    Loop,
    /// Allocate without bound.
    Alloc,
    /// Panic (a trap).
    Trap,
    /// Return an invalid verdict.
    Garbage,
    /// Return a 64 MiB rewrite.
    Huge,
    /// Never return from `init`.
    #[serde(rename = "loop-in-init")]
    LoopInInit,
}

/// `hostile.toml`.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// The misbehaviour.
    pub mode: Mode,
    /// Text that makes a query trigger it.
    #[serde(default = "default_trigger")]
    pub trigger: String,
}

fn default_trigger() -> String {
    "hostile".to_owned()
}

/// The misbehaving plugin.
pub struct Hostile {
    config: Config,
}

/// Size of the `huge` rewrite.
pub const HUGE_LEN: usize = 64 << 20;

impl Hostile {
    /// Runs the configured misbehaviour; returns only for `garbage` and `huge`.
    pub fn misbehave(&self) -> Verdict {
        match self.config.mode {
            Mode::Loop | Mode::LoopInInit => {
                let mut spins = 0u64;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            Mode::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![0xA5; 1 << 20]));
                    black_box(&hoard);
                }
            }
            Mode::Trap => panic!("hostile plugin traps on purpose"),
            Mode::Garbage => Verdict::Deny(Deny {
                sqlstate: "XX".to_owned(),
                message: String::new(),
                hint: None,
            }),
            Mode::Huge => {
                let mut sql = String::with_capacity(HUGE_LEN);
                sql.push_str("SELECT '");
                sql.extend(std::iter::repeat_n('x', HUGE_LEN - "SELECT ''".len()));
                sql.push('\'');
                Verdict::Rewrite(sql)
            }
        }
    }
}

impl Plugin for Hostile {
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_QUERY;

    fn init(text: &str) -> Result<Self, String> {
        let hostile = Hostile {
            config: config(text)?,
        };
        if hostile.config.mode == Mode::LoopInInit {
            hostile.misbehave();
        }
        Ok(hostile)
    }

    fn on_query(&mut self, _session: &Session, query: &Query) -> Verdict {
        if query.sql.contains(&self.config.trigger) {
            return self.misbehave();
        }
        Verdict::Allow
    }
}

export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;
    use pgward_plugin_sdk::testing::{analyze, TestHarness};

    fn on_query(mode: &str, sql: &str) -> Verdict {
        let mut h = TestHarness::<Hostile>::new(&format!("mode = \"{mode}\"")).unwrap();
        let s = h.session("mallory", &[]);
        h.plugin_mut().on_query(&s, &analyze(sql, Protocol::Simple))
    }

    #[test]
    fn untriggered_queries_are_allowed_in_every_mode() {
        for mode in ["loop", "alloc", "trap", "garbage", "huge"] {
            assert!(on_query(mode, "SELECT 1").is_allow(), "{mode}");
        }
    }

    #[test]
    fn garbage_is_a_verdict_the_gateway_rejects() {
        let v = on_query("garbage", "SELECT 'hostile'");
        assert!(v.validate().is_err());
    }

    #[test]
    fn huge_rewrites_to_64_mib() {
        let v = on_query("huge", "SELECT 'hostile'");
        assert_eq!(v.rewritten_sql().map(str::len), Some(HUGE_LEN));
    }

    #[test]
    #[should_panic(expected = "traps on purpose")]
    fn trap_panics() {
        on_query("trap", "SELECT 'hostile'");
    }

    #[test]
    fn unknown_mode_is_refused() {
        let err = TestHarness::<Hostile>::new("mode = \"nap\"").err().unwrap();
        assert!(err.contains("key `mode`"), "{err}");
    }
}
