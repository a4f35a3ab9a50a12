//! Verdicts a plugin marked cacheable (contract 0.5 `cache-verdict`), so a statement shape
//! an agent sends over and over costs one plugin call, not one per execution.
//!
//! A cached verdict answers a later statement only when everything the plugin promised it
//! depends on is the same: the plugin load (a reload or config change makes a new
//! [`LoadedPlugin`](super::LoadedPlugin), with an empty cache), the identity (user, groups and
//! database, interned per host by [`Identities`]: a deny of one identity never answers
//! another), the protocol, and the normalized text. The caller asks only for statements whose
//! analysis depends on their shape alone (`Analysis::shape_only`), never after a rewrite in
//! the chain, and drops a plugin's entries when it fails.

use super::bindings::pgward::plugin::types as wit;
use super::{ApprovalAsk, Refusal};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// A verdict as the cache keeps it (a rewrite is never cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Allow,
    Deny(Refusal),
    RequireApproval(ApprovalAsk),
}

/// One plugin load's cacheable verdicts: by (identity, protocol), then by normalized text.
pub struct VerdictCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    len: usize,
    by_identity: HashMap<(u64, bool), HashMap<Box<str>, Cached>>,
}

impl VerdictCache {
    /// At most `capacity` verdicts (0: caching off). A full cache starts over.
    pub fn new(capacity: usize) -> Self {
        VerdictCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Entries are whole values: a panic elsewhere cannot leave one half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, identity: u64, extended: bool, fingerprint: &str) -> Option<Cached> {
        self.lock()
            .by_identity
            .get(&(identity, extended))?
            .get(fingerprint)
            .cloned()
    }

    pub fn insert(&self, identity: u64, extended: bool, fingerprint: &str, verdict: Cached) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        if inner.len >= self.capacity {
            inner.by_identity.clear();
            inner.len = 0;
        }
        let shapes = inner.by_identity.entry((identity, extended)).or_default();
        if shapes.insert(fingerprint.into(), verdict).is_none() {
            inner.len += 1;
        }
    }

    /// Forgets every verdict (the plugin failed: what it said before may not hold).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.by_identity.clear();
        inner.len = 0;
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// User, groups and database.
type IdentityKey = (String, Vec<String>, String);

/// Session identities as small numbers: equal user, groups and database, equal number.
#[derive(Default)]
pub struct Identities {
    inner: Mutex<HashMap<IdentityKey, u64>>,
}

/// Most identities remembered; past that numbering starts over with fresh numbers, so an old
/// number is never given to another identity.
const MAX_IDENTITIES: usize = 100_000;

impl Identities {
    pub fn id(&self, session: &wit::Session) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let key = (
            session.identity.user.clone(),
            session.identity.groups.clone(),
            session.database.clone(),
        );
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = map.get(&key) {
            return id;
        }
        if map.len() >= MAX_IDENTITIES {
            map.clear();
        }
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        map.insert(key, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(who: &str) -> Refusal {
        Refusal {
            plugin: "p".into(),
            sqlstate: "42501".into(),
            message: format!("no, {who}"),
            hint: None,
        }
    }

    #[test]
    fn verdicts_are_kept_per_identity_protocol_and_shape_and_bounded() {
        let c = VerdictCache::new(3);
        c.insert(1, false, "select ?", Cached::Allow);
        c.insert(2, false, "select ?", Cached::Deny(refusal("two")));
        assert_eq!(c.get(1, false, "select ?"), Some(Cached::Allow));
        assert_eq!(
            c.get(2, false, "select ?"),
            Some(Cached::Deny(refusal("two")))
        );
        assert_eq!(c.get(1, true, "select ?"), None, "another protocol");
        assert_eq!(c.get(3, false, "select ?"), None, "another identity");
        assert_eq!(c.get(1, false, "select ? from t"), None, "another shape");
        c.insert(1, false, "select ?", Cached::Allow);
        assert_eq!(c.len(), 2, "replacing an entry does not count twice");
        c.insert(1, true, "select ?", Cached::Allow);
        assert_eq!(c.len(), 3);
        // Full: starts over rather than grow.
        c.insert(4, false, "select ?", Cached::Allow);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(1, false, "select ?"), None);
        c.clear();
        assert!(c.is_empty());
        let off = VerdictCache::new(0);
        off.insert(1, false, "select ?", Cached::Allow);
        assert_eq!(off.get(1, false, "select ?"), None);
    }

    #[test]
    fn identities_differ_by_user_groups_and_database() {
        let ids = Identities::default();
        let session = |user: &str, groups: &[&str], db: &str| wit::Session {
            id: 1,
            identity: wit::Identity {
                user: user.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                proven_by: wit::Proofs::PASSWORD,
                token_issuer: None,
                certificate_subject: None,
                upstream_role: None,
            },
            database: db.into(),
            client_addr: String::new(),
            application_name: String::new(),
        };
        let a = ids.id(&session("alice", &["dev"], "app"));
        assert_eq!(a, ids.id(&session("alice", &["dev"], "app")));
        assert_ne!(a, ids.id(&session("alice", &["ops"], "app")));
        assert_ne!(a, ids.id(&session("alice", &["dev"], "other")));
        assert_ne!(a, ids.id(&session("bob", &["dev"], "app")));
    }
}
