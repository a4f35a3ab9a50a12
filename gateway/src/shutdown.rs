//! Graceful shutdown, as sessions see it: it begins (finish what you are doing and end once
//! idle), and later its deadline passes (end now). The listener owns the [`Shutdown`], sessions
//! get clones, and a [`TaskTracker`](tokio_util::task::TaskTracker) tells the listener when
//! the last of them has ended.

use tokio_util::sync::CancellationToken;

/// The gateway's shutdown, shared by the listener and every session.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    begun: CancellationToken,
    deadline: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Stops the gateway's sessions as soon as each is idle.
    pub fn begin(&self) {
        self.begun.cancel();
    }

    /// Stops every session now (the grace period is over). Begins shutdown if it had not.
    pub fn expire(&self) {
        self.begun.cancel();
        self.deadline.cancel();
    }

    /// Resolves once shutdown has begun; never, if it never does.
    pub async fn begun(&self) {
        self.begun.cancelled().await
    }

    /// Resolves once the grace period is over.
    pub async fn expired(&self) {
        self.deadline.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sessions_see_the_beginning_then_the_deadline() {
        let s = Shutdown::new();
        let session = s.clone();
        let waiting = tokio::spawn(async move {
            session.begun().await;
            let begun_first = !session.deadline.is_cancelled();
            session.expired().await;
            begun_first
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "nothing has begun yet");
        s.begin();
        assert!(s.begun.is_cancelled());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "the deadline has not passed");
        s.expire();
        assert!(waiting.await.unwrap());
    }
}
