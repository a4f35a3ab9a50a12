//! The approval request: what is recorded, and the one state machine every store applies
//! (pending → approved / denied / expired / withdrawn, approved → executed / expired).
//! Pure: no I/O, so each transition is unit-tested and both stores behave alike.

use crate::config::ApproverKind;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; RFC 3339 (UTC) in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// RFC 3339 with milliseconds, e.g. `2026-12-02T18:30:00.123Z`.
    pub fn rfc3339(self) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(Timestamp(ms.min(i64::MAX as u128) as i64))
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for approvers.
    Pending,
    /// Enough approvers agreed; the statement may run (held: now; deferred: once, when re-run).
    Approved,
    /// An approver refused.
    Denied,
    /// Nobody decided in time, or an approved deferred statement was not re-run in time.
    Expired,
    /// The requester cancelled or disconnected while it was held.
    Withdrawn,
    /// The gateway ran the approved statement.
    Executed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Withdrawn => "withdrawn",
            Status::Executed => "executed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "withdrawn" => Status::Withdrawn,
            "executed" => Status::Executed,
            _ => return None,
        })
    }
}

/// How the client waits (the verdict's `approval-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Hold,
    Defer,
}

/// Who asked, as the gateway verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub user: String,
    pub groups: Vec<String>,
    /// How the identity was proven (`scram-sha-256`, `trust`).
    pub method: String,
    pub session_id: u64,
    pub client_addr: String,
    pub application_name: String,
    pub database: String,
}

/// The statement waiting for approval, with the gateway's analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementRecord {
    /// The exact text the client sent.
    pub sql: String,
    /// `simple` (Query) or `extended` (Parse/Bind).
    pub protocol: String,
    /// Bound parameter values (extended protocol): text, `\x`-prefixed hex for binary values,
    /// null for SQL NULL.
    pub params: Vec<Option<String>>,
    /// Command of each statement (`UPDATE`, `DROP TABLE`, ...).
    pub commands: Vec<String>,
    pub reads: Vec<String>,
    /// What is written and how, e.g. `update billing.invoices`.
    pub writes: Vec<String>,
    pub fingerprint: String,
    pub fingerprint_id: String,
}

/// An approver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Deny,
}

/// One approver's decision, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The token's name (`approvals.approvers[].name`).
    pub approver: String,
    /// The identity behind the token; what quorum and self-approval are judged on.
    pub identity: String,
    pub kind: ApproverKind,
    pub verdict: Verdict,
    pub at: Timestamp,
    /// How the approver was proven, e.g. `bearer token "carol-laptop"`.
    pub proven_by: String,
    pub comment: Option<String>,
}

/// A statement waiting for (or past) its approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// `apr_` and 26 base32 characters of 128 random bits.
    pub id: String,
    pub status: Status,
    pub mode: Mode,
    pub requester: Requester,
    pub statement: StatementRecord,
    /// The plugin and rule that asked, and why.
    pub plugin: String,
    pub rule: String,
    pub reason: String,
    pub approver_group: String,
    /// Distinct approver identities needed.
    pub quorum: u32,
    pub created_at: Timestamp,
    /// Pending past this: expired.
    pub expires_at: Timestamp,
    /// Deferred and approved: the statement may be re-run (once) until then.
    pub valid_until: Option<Timestamp>,
    pub decided_at: Option<Timestamp>,
    pub executed_at: Option<Timestamp>,
    pub decisions: Vec<Decision>,
    /// Why a request ended without a decision (`client cancelled`, `timed out`, ...).
    pub end_reason: Option<String>,
    /// The gateway that created it (`host:port` of its listener).
    pub gateway: String,
    /// SHA-256 of (requester, statement text, parameters): what a deferred re-run must match.
    pub match_key: String,
}

/// Why a decision was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("the request is {}, not pending", .0.as_str())]
    NotPending(Status),
    #[error("nobody may decide a request of their own identity")]
    SelfApproval,
    #[error("{0} has already decided this request")]
    AlreadyDecided(String),
}

/// A random request id: `apr_` and 26 characters of RFC 4648 base32 (lower case) of 128 bits.
pub fn new_id() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut id = String::from("apr_");
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            id.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        id.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    Ok(id)
}

/// True when `id` has the shape of a request id (checked before any store is asked).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 30
        && id.starts_with("apr_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// What a deferred re-run must match: the same identity, text and parameters.
pub fn match_key(user: &str, sql: &str, params: &[Option<String>]) -> String {
    let canonical = serde_json::json!([user, sql.trim(), params]).to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    hex(digest.as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ApprovalRequest {
    /// Moves a request whose time ran out to `expired`; true when it changed.
    pub fn refresh(&mut self, now: Timestamp) -> bool {
        let ran_out = match self.status {
            Status::Pending => now >= self.expires_at,
            Status::Approved => self.valid_until.is_some_and(|v| now >= v),
            _ => false,
        };
        if ran_out {
            self.status = Status::Expired;
            self.end_reason = Some(match self.decided_at {
                Some(_) => "approved but not run within its validity window".into(),
                None => "not decided in time".into(),
            });
        }
        ran_out
    }

    /// Records `decision`. A deny ends the request; approvals from `quorum` distinct identities
    /// approve it (a deferred one then stays valid for `valid_for`).
    pub fn decide(
        &mut self,
        decision: Decision,
        now: Timestamp,
        valid_for: Duration,
    ) -> Result<(), DecideError> {
        self.refresh(now);
        if self.status != Status::Pending {
            return Err(DecideError::NotPending(self.status));
        }
        if decision.identity == self.requester.user {
            return Err(DecideError::SelfApproval);
        }
        if self
            .decisions
            .iter()
            .any(|d| d.identity == decision.identity)
        {
            return Err(DecideError::AlreadyDecided(decision.identity));
        }
        let verdict = decision.verdict;
        self.decisions.push(decision);
        match verdict {
            Verdict::Deny => {
                self.status = Status::Denied;
                self.decided_at = Some(now);
            }
            Verdict::Approve => {
                let approvals = self
                    .decisions
                    .iter()
                    .filter(|d| d.verdict == Verdict::Approve)
                    .count();
                if approvals as u32 >= self.quorum.max(1) {
                    self.status = Status::Approved;
                    self.decided_at = Some(now);
                    if self.mode == Mode::Defer {
                        self.valid_until = Some(now.plus(valid_for));
                    }
                }
            }
        }
        Ok(())
    }

    /// The requester gave up (cancel, disconnect) or the hold timed out; true when it was
    /// still pending.
    pub fn end(&mut self, status: Status, why: &str) -> bool {
        if self.status != Status::Pending {
            return false;
        }
        self.status = status;
        self.end_reason = Some(why.to_owned());
        true
    }

    /// The approved statement was released to the server; false when it was not approved
    /// (or no longer valid).
    pub fn execute(&mut self, now: Timestamp) -> bool {
        self.refresh(now);
        if self.status != Status::Approved {
            return false;
        }
        self.status = Status::Executed;
        self.executed_at = Some(now);
        true
    }

    /// The latest comment of a deciding approver, for the client.
    pub fn denial(&self) -> Option<&Decision> {
        self.decisions
            .iter()
            .rev()
            .find(|d| d.verdict == Verdict::Deny)
    }

    /// Identities that approved so far.
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.verdict == Verdict::Approve)
            .count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(mode: Mode, quorum: u32) -> ApprovalRequest {
        let now = Timestamp(1_000_000);
        ApprovalRequest {
            id: new_id().unwrap(),
            status: Status::Pending,
            mode,
            requester: Requester {
                user: "agent".into(),
                groups: vec!["ai-agents".into()],
                method: "scram-sha-256".into(),
                session_id: 7,
                client_addr: "127.0.0.1:5555".into(),
                application_name: "psql".into(),
                database: "app".into(),
            },
            statement: StatementRecord {
                sql: "UPDATE billing.invoices SET paid = true WHERE id = 1".into(),
                protocol: "simple".into(),
                params: vec![],
                commands: vec!["UPDATE".into()],
                reads: vec!["billing.invoices".into()],
                writes: vec!["update billing.invoices".into()],
                fingerprint: "update billing.invoices set paid = ? where id = ?".into(),
                fingerprint_id: "0011223344556677".into(),
            },
            plugin: "approval_rules".into(),
            rule: "agents-billing-writes".into(),
            reason: "because".into(),
            approver_group: "billing-owners".into(),
            quorum,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(60)),
            valid_until: None,
            decided_at: None,
            executed_at: None,
            decisions: vec![],
            end_reason: None,
            gateway: "127.0.0.1:6432".into(),
            match_key: match_key("agent", "UPDATE ...", &[]),
        }
    }

    fn decision(identity: &str, verdict: Verdict) -> Decision {
        Decision {
            approver: format!("{identity}-token"),
            identity: identity.into(),
            kind: ApproverKind::Person,
            verdict,
            at: Timestamp(1_000_001),
            proven_by: "bearer token".into(),
            comment: Some("ok".into()),
        }
    }

    const NOW: Timestamp = Timestamp(1_000_500);
    const VALID: Duration = Duration::from_secs(600);

    #[test]
    fn ids_are_unique_and_well_formed() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_ne!(a, b);
        assert!(is_valid_id(&a), "{a}");
        assert!(!is_valid_id("apr_x"));
        assert!(!is_valid_id(&a.replace("apr_", "req_")));
        assert!(!is_valid_id("apr_AAAAAAAAAAAAAAAAAAAAAAAAAA"));
    }

    #[test]
    fn one_approval_approves_with_quorum_one() {
        let mut r = sample(Mode::Hold, 1);
        r.decide(decision("carol", Verdict::Approve), NOW, VALID)
            .unwrap();
        assert_eq!(r.status, Status::Approved);
        assert_eq!(r.valid_until, None, "a held statement runs now");
        assert!(r.execute(NOW));
        assert_eq!(r.status, Status::Executed);
        assert!(!r.execute(NOW), "runs once");
    }

    #[test]
    fn quorum_needs_distinct_identities() {
        let mut r = sample(Mode::Defer, 2);
        r.decide(decision("carol", Verdict::Approve), NOW, VALID)
            .unwrap();
        assert_eq!(r.status, Status::Pending);
        assert_eq!(
            r.decide(decision("carol", Verdict::Approve), NOW, VALID),
            Err(DecideError::AlreadyDecided("carol".into()))
        );
        r.decide(decision("dave", Verdict::Approve), NOW, VALID)
            .unwrap();
        assert_eq!(r.status, Status::Approved);
        assert_eq!(r.valid_until, Some(NOW.plus(VALID)));
        assert_eq!(r.approvals(), 2);
    }

    #[test]
    fn the_requester_never_decides() {
        let mut r = sample(Mode::Hold, 1);
        assert_eq!(
            r.decide(decision("agent", Verdict::Approve), NOW, VALID),
            Err(DecideError::SelfApproval)
        );
        assert_eq!(r.status, Status::Pending);
        assert!(r.decisions.is_empty());
    }

    #[test]
    fn a_deny_ends_it_and_nothing_decides_after() {
        let mut r = sample(Mode::Hold, 2);
        r.decide(decision("carol", Verdict::Approve), NOW, VALID)
            .unwrap();
        r.decide(decision("dave", Verdict::Deny), NOW, VALID)
            .unwrap();
        assert_eq!(r.status, Status::Denied);
        assert_eq!(r.denial().unwrap().identity, "dave");
        assert_eq!(
            r.decide(decision("erin", Verdict::Approve), NOW, VALID),
            Err(DecideError::NotPending(Status::Denied))
        );
        assert!(!r.execute(NOW));
    }

    #[test]
    fn time_runs_out_for_pending_and_for_unused_approvals() {
        let mut r = sample(Mode::Defer, 1);
        let late = r.expires_at;
        assert_eq!(
            r.decide(decision("carol", Verdict::Approve), late, VALID),
            Err(DecideError::NotPending(Status::Expired))
        );
        let mut r = sample(Mode::Defer, 1);
        r.decide(decision("carol", Verdict::Approve), NOW, VALID)
            .unwrap();
        assert!(!r.execute(NOW.plus(VALID)), "validity window over");
        assert_eq!(r.status, Status::Expired);
    }

    #[test]
    fn withdrawing_only_ends_pending_requests() {
        let mut r = sample(Mode::Hold, 1);
        assert!(r.end(Status::Withdrawn, "client cancelled"));
        assert_eq!(r.status, Status::Withdrawn);
        assert!(!r.end(Status::Expired, "timed out"));
        assert_eq!(r.status, Status::Withdrawn);
    }

    #[test]
    fn match_keys_differ_by_user_text_and_parameters() {
        let k = match_key("agent", "UPDATE t SET x = $1", &[Some("1".into())]);
        assert_eq!(
            k,
            match_key("agent", "  UPDATE t SET x = $1\n", &[Some("1".into())])
        );
        assert_ne!(
            k,
            match_key("other", "UPDATE t SET x = $1", &[Some("1".into())])
        );
        assert_ne!(
            k,
            match_key("agent", "UPDATE t SET x = $1", &[Some("2".into())])
        );
        assert_ne!(k, match_key("agent", "UPDATE t SET x = $1", &[None]));
        assert_ne!(
            k,
            match_key("agent", "UPDATE t SET y = $1", &[Some("1".into())])
        );
    }

    #[test]
    fn json_round_trip_with_rfc3339_times() {
        let r = sample(Mode::Hold, 1);
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"created_at\":\"1970-01-01T00:16:40.000Z\""),
            "{json}"
        );
        let back: ApprovalRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
