//! Cancel keys: each client gets key data of the gateway's own, mapped to the upstream backend
//! that serves it, so a CancelRequest reaches exactly that backend.

use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The upstream backend a client's cancel key points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub upstream_pid: i32,
    pub upstream_secret: i32,
}

/// Secret, upstream backend, and the waker of a statement the gateway itself holds (one
/// waiting for approval), which a cancel withdraws.
type CancelEntry = (i32, CancelTarget, Arc<Notify>);

/// All live cancel keys. Touched at session start and end and on a cancel only.
pub struct CancelRegistry {
    next_pid: AtomicI32,
    keys: Mutex<HashMap<i32, CancelEntry>>,
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

    /// Registers a session; returns the (pid, secret) to hand the client, and what a cancel
    /// with that key wakes.
    pub fn register(&self, target: CancelTarget) -> (i32, i32, Arc<Notify>) {
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
                let cancelled = Arc::new(Notify::new());
                v.insert((secret, target, cancelled.clone()));
                return (pid, secret, cancelled);
            }
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }

    /// The target for a client's key, if pid and secret both match; wakes whatever the
    /// session holds in the gateway.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys.get(&pid) {
            Some((s, t, cancelled)) if *s == secret => {
                cancelled.notify_waiters();
                Some(*t)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx).is_ready()
    }

    #[test]
    fn keys_need_both_pid_and_secret() {
        let r = CancelRegistry::new();
        let t = CancelTarget {
            upstream_pid: 42,
            upstream_secret: 7,
        };
        let (pid, secret, cancelled) = r.register(t);
        let (pid2, _, _) = r.register(t);
        let woken = cancelled.notified();
        let mut woken = std::pin::pin!(woken);
        woken.as_mut().enable();
        assert_ne!(pid, pid2);
        assert_eq!(r.lookup(pid, secret), Some(t));
        assert_eq!(r.lookup(pid, secret.wrapping_add(1)), None);
        // The matching cancel woke the session's waiter.
        assert!(futures_poll(woken.as_mut()));
        r.unregister(pid);
        assert_eq!(r.lookup(pid, secret), None);
    }
}
