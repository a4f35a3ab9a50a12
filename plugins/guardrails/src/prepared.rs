//! SQL-level prepared statements (`PREPARE name AS ...`) that guardrails judged and allowed,
//! per session, so that `EXECUTE name` can be let through: its statement was checked when it
//! was prepared.
//!
//! This lives in the plugin instance, which the gateway may replace at any time (a reload, a
//! failure). A session whose names were lost gets its `EXECUTE`s denied until it prepares again:
//! forgetting fails closed. The plugin hears nothing when a session ends, so the oldest
//! sessions' names are dropped once [`MAX_NAMES`] are kept.

use std::collections::{BTreeMap, BTreeSet};

/// The most names kept for all sessions together.
pub const MAX_NAMES: usize = 100_000;

/// Prepared statement names by session id.
#[derive(Debug, Default)]
pub struct PreparedStatements {
    sessions: BTreeMap<u64, BTreeSet<String>>,
    names: usize,
}

impl PreparedStatements {
    /// Whether `session` prepared `name` and guardrails allowed it.
    pub fn contains(&self, session: u64, name: &str) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.contains(name))
    }

    /// Records that `session` prepared `name`.
    pub fn insert(&mut self, session: u64, name: String) {
        if self.sessions.entry(session).or_default().insert(name) {
            self.names += 1;
        }
        // Session ids grow over a gateway's life: the smallest belong to the oldest sessions.
        while self.names > MAX_NAMES {
            match self.sessions.keys().find(|&&id| id != session) {
                Some(&oldest) => self.clear(oldest),
                None => {
                    // This session holds every name: drop one of its own.
                    let names = self.sessions.entry(session).or_default();
                    names.pop_first();
                    self.names -= 1;
                }
            }
        }
    }

    /// `DEALLOCATE name`.
    pub fn remove(&mut self, session: u64, name: &str) {
        if let Some(names) = self.sessions.get_mut(&session) {
            if names.remove(name) {
                self.names -= 1;
            }
        }
    }

    /// `DEALLOCATE ALL`, `DISCARD ALL`.
    pub fn clear(&mut self, session: u64) {
        if let Some(names) = self.sessions.remove(&session) {
            self.names -= names.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_session_and_bounded() {
        let mut p = PreparedStatements::default();
        p.insert(1, "a".into());
        p.insert(2, "a".into());
        assert!(p.contains(1, "a") && !p.contains(1, "b"));
        p.remove(1, "a");
        assert!(!p.contains(1, "a") && p.contains(2, "a"));
        p.clear(2);
        assert!(!p.contains(2, "a"));
        for i in 0..MAX_NAMES as u64 + 10 {
            p.insert(i, format!("s{i}"));
        }
        assert_eq!(p.names, MAX_NAMES);
        assert!(
            !p.contains(0, "s0")
                && p.contains(MAX_NAMES as u64 + 9, &format!("s{}", MAX_NAMES + 9))
        );
    }
}
