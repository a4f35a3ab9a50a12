//! Cancel keys: each client gets key data of the gateway's own, mapped to the upstream backend
//! that serves it, so a CancelRequest reaches exactly that backend.

use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The upstream backend a client's cancel key points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub upstream_pid: i32,
    pub upstream_secret: i32,
}

/// All live cancel keys. Touched at session start and end and on a cancel only.
pub struct CancelRegistry {
    next_pid: AtomicI32,
    keys: Mutex<HashMap<i32, (i32, CancelTarget)>>,
    rng: ring::rand::SystemRandom,
}

impl Default for CancelRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelRegistry {
    pub fn new() -> Self {
        CancelRegistry {
            next_pid: AtomicI32::new(1),
            keys: Mutex::new(HashMap::new()),
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// Registers a session; returns the (pid, secret) to hand the client.
    pub fn register(&self, target: CancelTarget) -> (i32, i32) {
        let mut secret = [0u8; 4];
        // If the system RNG fails, a zero secret still maps only to this session's backend.
        let _ = self.rng.fill(&mut secret);
        let secret = i32::from_ne_bytes(secret);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let pid = self
                .next_pid
                .fetch_add(1, Ordering::Relaxed)
                .checked_abs()
                .unwrap_or(1)
                .max(1);
            if let std::collections::hash_map::Entry::Vacant(v) = keys.entry(pid) {
                v.insert((secret, target));
                return (pid, secret);
            }
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }

    /// The target for a client's key, if pid and secret both match.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys.get(&pid) {
            Some((s, t)) if *s == secret => Some(*t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_need_both_pid_and_secret() {
        let r = CancelRegistry::new();
        let t = CancelTarget {
            upstream_pid: 42,
            upstream_secret: 7,
        };
        let (pid, secret) = r.register(t);
        let (pid2, _) = r.register(t);
        assert_ne!(pid, pid2);
        assert_eq!(r.lookup(pid, secret), Some(t));
        assert_eq!(r.lookup(pid, secret.wrapping_add(1)), None);
        r.unregister(pid);
        assert_eq!(r.lookup(pid, secret), None);
    }
}
