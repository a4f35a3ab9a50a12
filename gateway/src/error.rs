//! What a client is told when the gateway refuses or ends something. Internal error text reaches
//! a client only through these constructors, so nothing leaks by accident: [`ClientError`] is
//! the one type of everything the gateway itself says in an ErrorResponse — its own errors and
//! the plugins' refusals ([`ClientError::refusal`]) — and [`ClientError::encode`] the one place
//! it is put on the wire.

use crate::plugins::Refusal;
use crate::protocol::{self, ErrorFields, Severity};
use crate::sqlstate;
use crate::upstream::UpstreamError;
use bytes::BytesMut;
use std::borrow::Cow;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// An ErrorResponse the gateway sends on its own behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    /// SQLSTATE: one of [`sqlstate`]'s, or the code a plugin's refusal carries.
    pub code: Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// What a plugin's refusal stopped, which its DETAIL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A statement (on-query): the client's statement fails.
    Statement,
    /// A result (on-result-schema, on-batch): its rows are not sent.
    Result,
    /// The session (on-connect): the connection ends.
    Session,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)
    }
}

impl ClientError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Fatal,
            code: Cow::Borrowed(code),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A plugin's refusal as the client is told it; the DETAIL names the plugin.
    pub fn refusal(r: &Refusal, refused: Refused) -> Self {
        let (severity, detail) = match refused {
            Refused::Statement => (
                Severity::Error,
                format!("denied by policy plugin \"{}\"", r.plugin),
            ),
            Refused::Result => (
                Severity::Error,
                format!("refused by result policy \"{}\"", r.plugin),
            ),
            Refused::Session => (
                Severity::Fatal,
                format!("denied by policy plugin \"{}\"", r.plugin),
            ),
        };
        ClientError {
            severity,
            code: Cow::Owned(r.sqlstate.clone()),
            message: r.message.clone(),
            detail: Some(detail),
            hint: r.hint.clone(),
        }
    }

    pub fn fatal_hint(
        code: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ClientError {
            hint: Some(hint.into()),
            ..Self::fatal(code, message)
        }
    }

    /// The error a client sees when its upstream session cannot be opened. Errors about the
    /// session itself (no such database) pass through; problems with the gateway's own
    /// credentials or network are summarised, as they are the operator's to fix.
    pub fn from_upstream(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Refused(se) => {
                let code = match se.code.as_str() {
                    sqlstate::INVALID_CATALOG_NAME => sqlstate::INVALID_CATALOG_NAME,
                    sqlstate::TOO_MANY_CONNECTIONS => sqlstate::TOO_MANY_CONNECTIONS,
                    sqlstate::CANNOT_CONNECT_NOW => sqlstate::CANNOT_CONNECT_NOW,
                    sqlstate::INSUFFICIENT_PRIVILEGE => sqlstate::INSUFFICIENT_PRIVILEGE,
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    _ => sqlstate::REJECTED_CONNECTION,
                };
                ClientError::fatal(code, se.message.clone())
            }
            UpstreamError::Auth(_)
            | UpstreamError::NoPassword
            | UpstreamError::Scram(_)
            | UpstreamError::WeakAuth(_)
            | UpstreamError::NoChannelBinding => {
                ClientError::fatal(
                    sqlstate::REJECTED_CONNECTION,
                    "pgward could not log in to the upstream server; see the gateway log",
                )
            }
            // The role mapping is the operator's: name no role to the client.
            UpstreamError::Role { .. } => ClientError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "pgward could not set the upstream role mapped to this identity; see the gateway log",
            ),
            UpstreamError::UnsupportedAuth(_) => ClientError::fatal(
                sqlstate::REJECTED_CONNECTION,
                "upstream authentication method not supported by pgward; see the gateway log",
            ),
            _ => ClientError::fatal(
                sqlstate::CONNECTION_FAILURE,
                "pgward could not connect to the upstream server; see the gateway log",
            ),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        protocol::put_error(
            out,
            &ErrorFields {
                severity: self.severity,
                code: &self.code,
                message: &self.message,
                detail: self.detail.as_deref(),
                hint: self.hint.as_deref(),
            },
        );
    }

    /// Writes the error and shuts the connection down.
    pub async fn send_and_close<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(128);
        self.encode(&mut out);
        w.write_all(&out).await?;
        w.flush().await?;
        w.shutdown().await
    }
}
