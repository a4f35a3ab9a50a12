//! Webhook notifications: a signed JSON POST per approver group when a request is created or
//! decided.
//!
//! Signature (as Slack signs its requests): `X-Pgward-Timestamp` is the Unix time in seconds,
//! `X-Pgward-Signature` is `v1=` followed by the hex HMAC-SHA256, under the group's secret, of
//! `v1:{timestamp}:{body}`. A receiver recomputes it over the raw body, compares in constant
//! time, and refuses timestamps older than five minutes, so a captured delivery cannot be
//! replayed later. [`verify`] is that check.
//!
//! Deliveries run on one thread of their own behind a bounded queue: the gateway never waits
//! for a receiver, a full queue drops (and logs) the notification, and failures are retried
//! with exponential backoff.

use std::collections::BinaryHeap;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Notifications waiting for delivery; past this, new ones are dropped with a warning.
const QUEUE: usize = 1024;
/// Attempts per delivery (the first and the retries).
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How old a signed timestamp a receiver should accept.
pub const MAX_AGE_SECS: u64 = 300;

/// One delivery.
pub struct Delivery {
    pub url: String,
    pub secret: Vec<u8>,
    pub body: String,
}

/// Signs `body` at `timestamp` (seconds): the `X-Pgward-Signature` value.
pub fn sign(secret: &[u8], timestamp: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, format!("v1:{timestamp}:{body}").as_bytes());
    format!("v1={}", super::request::hex(tag.as_ref()))
}

/// Why a receiver must refuse a delivery.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature does not match")]
    BadSignature,
    #[error("the timestamp is too old or in the future")]
    Stale,
}

/// What a receiver does with a delivery: the signature over the raw body, checked in constant
/// time, and a timestamp no older than [`MAX_AGE_SECS`].
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &str,
    now_secs: u64,
) -> Result<(), VerifyError> {
    let ts: u64 = timestamp.parse().map_err(|_| VerifyError::Stale)?;
    if now_secs.abs_diff(ts) > MAX_AGE_SECS {
        return Err(VerifyError::Stale);
    }
    let hex = signature
        .strip_prefix("v1=")
        .ok_or(VerifyError::BadSignature)?;
    let tag = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(VerifyError::BadSignature)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, format!("v1:{ts}:{body}").as_bytes(), &tag)
        .map_err(|_| VerifyError::BadSignature)
}

/// Hands deliveries to the webhook thread.
pub struct Notifier {
    tx: mpsc::SyncSender<Delivery>,
}

impl Notifier {
    pub fn start() -> std::io::Result<Notifier> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("pgward-webhooks".into())
            .spawn(move || deliver_all(rx))?;
        Ok(Notifier { tx })
    }

    /// Queues a delivery; never blocks.
    pub fn send(&self, d: Delivery) {
        if let Err(e) = self.tx.try_send(d) {
            let url = match &e {
                mpsc::TrySendError::Full(d) | mpsc::TrySendError::Disconnected(d) => d.url.clone(),
            };
            warn!(url = %url, "webhook queue full or stopped: notification dropped");
        }
    }
}

struct Retry {
    due: Instant,
    attempt: u32,
    delivery: Delivery,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Retry {
    // Earliest due first out of the max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due)
    }
}

fn deliver_all(rx: mpsc::Receiver<Delivery>) {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build(),
    );
    let mut retries: BinaryHeap<Retry> = BinaryHeap::new();
    loop {
        let wait = retries
            .peek()
            .map(|r| r.due.saturating_duration_since(Instant::now()));
        let next = match wait {
            Some(w) if w.is_zero() => retries.pop().map(|r| (r.attempt, r.delivery)),
            Some(w) => match rx.recv_timeout(w) {
                Ok(d) => Some((1, d)),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(d) => Some((1, d)),
                Err(_) => return,
            },
        };
        let Some((attempt, delivery)) = next else {
            continue;
        };
        match post(&agent, &delivery) {
            Ok(()) => debug!(url = %delivery.url, attempt, "webhook delivered"),
            Err(e) if attempt < ATTEMPTS => {
                let delay = FIRST_RETRY * 2u32.pow(attempt - 1);
                info!(url = %delivery.url, attempt, error = %e, retry_in = ?delay, "webhook failed; will retry");
                retries.push(Retry {
                    due: Instant::now() + delay,
                    attempt: attempt + 1,
                    delivery,
                });
            }
            Err(e) => warn!(url = %delivery.url, attempt, error = %e, "webhook failed; giving up"),
        }
    }
}

fn post(agent: &ureq::Agent, d: &Delivery) -> Result<(), String> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs())
        .unwrap_or(0);
    let response = agent
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("User-Agent", concat!("pgward/", env!("CARGO_PKG_VERSION")))
        .header("X-Pgward-Timestamp", &ts.to_string())
        .header("X-Pgward-Signature", &sign(&d.secret, ts, &d.body))
        .send(d.body.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let body = r#"{"event":"approval.created"}"#;
        let sig = sign(b"s3cret", 1_700_000_000, body);
        assert!(sig.starts_with("v1=") && sig.len() == 67, "{sig}");
        assert_eq!(
            verify(b"s3cret", "1700000000", &sig, body, 1_700_000_010),
            Ok(())
        );
        assert_eq!(
            verify(
                b"s3cret",
                "1700000000",
                &sig,
                &body.replace("created", "decided"),
                1_700_000_010
            ),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(b"other", "1700000000", &sig, body, 1_700_000_010),
            Err(VerifyError::BadSignature)
        );
        // The timestamp is signed: moving it forward to dodge the age check breaks the signature.
        assert_eq!(
            verify(b"s3cret", "1700000500", &sig, body, 1_700_000_510),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(
                b"s3cret",
                "1700000000",
                &sig,
                body,
                1_700_000_000 + MAX_AGE_SECS + 1
            ),
            Err(VerifyError::Stale)
        );
        let mut tampered = sig.clone();
        tampered.replace_range(10..11, if &sig[10..11] == "0" { "1" } else { "0" });
        assert_eq!(
            verify(b"s3cret", "1700000000", &tampered, body, 1_700_000_010),
            Err(VerifyError::BadSignature)
        );
    }
}
