//! The command line's client of the admin API (`pgward approvals ...`) and token helper.

use crate::approvals::request::ApprovalRequest;
use std::time::Duration;

/// Where the admin API is and who is calling it.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An admin API call that failed, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    #[error("{url}: unexpected answer: {message}")]
    Malformed { url: String, message: String },
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        let agent = ureq::Agent::new_with_config(
            ureq::config::Config::builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .http_status_as_error(false)
                .build(),
        );
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ApiCallError> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = self.agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                let text = body.map(|b| b.to_string()).unwrap_or_default();
                req.header("Content-Type", "application/json")
                    .send(text.as_bytes())
            }
        };
        let mut response = response.map_err(|source| ApiCallError::Transport {
            url: url.clone(),
            source: Box::new(source),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| ApiCallError::Malformed {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ApiCallError::Malformed {
                url: url.clone(),
                message: format!("{e}: {}", text.chars().take(200).collect::<String>()),
            })?;
        if !(200..300).contains(&status) {
            let message = value
                .get("error")
                .and_then(|m| m.as_str())
                .unwrap_or("request failed")
                .to_owned();
            return Err(ApiCallError::Refused { status, message });
        }
        Ok(value)
    }

    pub fn list(&self, query: &str) -> Result<Vec<ApprovalRequest>, ApiCallError> {
        let v = self.call("GET", &format!("/v1/approvals{query}"), None)?;
        serde_json::from_value(v.get("requests").cloned().unwrap_or_default()).map_err(|e| {
            ApiCallError::Malformed {
                url: self.base.clone(),
                message: e.to_string(),
            }
        })
    }

    pub fn show(&self, id: &str) -> Result<serde_json::Value, ApiCallError> {
        self.call("GET", &format!("/v1/approvals/{}", encode(id)), None)
    }

    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        comment: Option<&str>,
    ) -> Result<serde_json::Value, ApiCallError> {
        let verb = if approve { "approve" } else { "deny" };
        let body = serde_json::json!({ "comment": comment });
        self.call(
            "POST",
            &format!("/v1/approvals/{}/{verb}", encode(id)),
            Some(&body),
        )
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A table of requests, one line each.
pub fn print_list(requests: &[ApprovalRequest]) {
    println!(
        "{:<30} {:<9} {:<5} {:<12} {:<16} {:<20} {:<8} statement",
        "id", "status", "mode", "requester", "group", "created", "approved"
    );
    for r in requests {
        let sql: String = r
            .statement
            .sql
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let sql = if sql.chars().count() > 60 {
            format!("{}…", sql.chars().take(59).collect::<String>())
        } else {
            sql
        };
        println!(
            "{:<30} {:<9} {:<5} {:<12} {:<16} {:<20} {:<8} {}",
            r.id,
            r.status.as_str(),
            match r.mode {
                crate::approvals::request::Mode::Hold => "hold",
                crate::approvals::request::Mode::Defer => "defer",
            },
            r.requester.user,
            r.approver_group,
            &r.created_at.rfc3339()[..19],
            format!("{}/{}", r.approvals(), r.quorum),
            sql
        );
    }
}

/// A new random bearer token and the SHA-256 to put in `token_sha256`.
pub fn new_token() -> Result<(String, String), ring::error::Unspecified> {
    use base64::Engine as _;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    let token = format!(
        "pgw_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = crate::approvals::request::hex(&crate::approvals::token_hash(&token));
    Ok((token, hash))
}
