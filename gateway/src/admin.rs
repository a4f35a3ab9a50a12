//! The admin HTTP server: the approvals API, `/healthz` and `/readyz`, on its own address
//! (loopback by default), HTTP or HTTPS.
//!
//! API (JSON; every `/v1` call needs `Authorization: Bearer TOKEN` of an
//! `[[approvals.approvers]]` entry):
//!
//! | method and path | what it does |
//! | --- | --- |
//! | `GET /v1/approvals?status=&requester=&group=&limit=` | requests, newest first |
//! | `GET /v1/approvals/{id}` | one request |
//! | `POST /v1/approvals/{id}/approve` | approve, body `{"comment": "..."}` (optional) |
//! | `POST /v1/approvals/{id}/deny` | deny, body `{"comment": "..."}` (optional) |
//!
//! Errors are `{"error": "..."}` with 400 (malformed input), 401 (no or unknown token), 403
//! (not an approver of the request's group, or the requester's own identity), 404 (no such
//! request), 409 (no longer pending, or already decided by this identity) and 503 (store down).

use crate::approvals::request::{is_valid_id, Verdict};
use crate::approvals::store::ListFilter;
use crate::approvals::{request::DecideError, Approvals, DecideRefusal};
use crate::config::AdminConfig;
use crate::shared::GatewayShared;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tracing::{info, warn};

/// A bound admin server, not yet serving.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

type Shared = Arc<GatewayShared>;

/// An API error: status and a message for the caller.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl AdminServer {
    pub async fn bind(addr: &str, config: &AdminConfig) -> std::io::Result<AdminServer> {
        let tls = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config(cert, key).map_err(std::io::Error::other)?,
            )),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(AdminServer { listener, tls })
    }

    /// Serves until the process ends.
    pub async fn serve(self, shared: Shared) {
        let addr = self.listener.local_addr().ok();
        let app = router(shared);
        info!(address = ?addr, tls = self.tls.is_some(), "admin server listening");
        let result = match self.tls {
            None => axum::serve(self.listener, app).await,
            Some(acceptor) => {
                axum::serve(
                    TlsListener {
                        inner: self.listener,
                        acceptor,
                    },
                    app,
                )
                .await
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "admin server stopped");
        }
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(shared)
}

async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::METRICS.encode(),
    )
        .into_response()
}

async fn readyz(State(gw): State<Shared>) -> Response {
    if let Some(a) = &gw.approvals {
        if let Err(e) = a.ping().await {
            warn!(error = %e, "readiness: approvals store unavailable");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "approvals store unavailable\n",
            )
                .into_response();
        }
    }
    "ready\n".into_response()
}

fn approvals(gw: &GatewayShared) -> Result<&Approvals, ApiError> {
    gw.approvals.as_deref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "approvals are not configured on this gateway".into(),
        )
    })
}

/// The approver whose bearer token the request carries.
fn authenticate<'a>(
    a: &'a Approvals,
    headers: &HeaderMap,
) -> Result<&'a crate::config::ApproverConfig, ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.into());
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer TOKEN\""))?;
    a.approver(token)
        .ok_or_else(|| unauthorized("unknown token"))
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    warn!(error = %e, "approvals store failed");
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the approvals store is unavailable; see the gateway log".into(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    requester: Option<String>,
    group: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(gw): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let a = approvals(&gw)?;
    authenticate(a, &headers)?;
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(crate::approvals::request::Status::parse(s).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown status {s:?}: use pending, approved, denied, expired, withdrawn or executed"),
            )
        })?),
    };
    let filter = ListFilter {
        status,
        requester: q.requester,
        approver_group: q.group,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let requests = a.list(&filter).await.map_err(store_error)?;
    Ok(Json(serde_json::json!({ "requests": requests })).into_response())
}

async fn show(
    State(gw): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let a = approvals(&gw)?;
    authenticate(a, &headers)?;
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no approval request {id:?}"));
    if !is_valid_id(&id) {
        return Err(not_found());
    }
    match a.get(&id).await.map_err(store_error)? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(not_found()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    comment: Option<String>,
}

async fn approve(
    state: State<Shared>,
    headers: HeaderMap,
    id: Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    decide(state, headers, id, body, Verdict::Approve).await
}

async fn deny(
    state: State<Shared>,
    headers: HeaderMap,
    id: Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    decide(state, headers, id, body, Verdict::Deny).await
}

/// Most bytes of a decision's comment.
const MAX_COMMENT: usize = 4096;

async fn decide(
    State(gw): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
    verdict: Verdict,
) -> Result<Response, ApiError> {
    let a = approvals(&gw)?;
    let approver = authenticate(a, &headers)?;
    let body: DecideBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecideBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("malformed JSON body (expected {{\"comment\": \"...\"}}): {e}"),
            )
        })?
    };
    if body.comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("the comment is longer than {MAX_COMMENT} bytes"),
        ));
    }
    if !is_valid_id(&id) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no approval request {id:?}"),
        ));
    }
    match a.decide(&id, approver, verdict, body.comment).await {
        Ok(r) => Ok(Json(r).into_response()),
        Err(DecideRefusal::NotFound) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no approval request {id:?}"),
        )),
        Err(e @ DecideRefusal::NotInGroup { .. }) => {
            info!(request = %id, approver = %approver.name, "decision refused: not in the approver group");
            Err(ApiError(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(DecideRefusal::Rule(e @ DecideError::SelfApproval)) => {
            info!(request = %id, approver = %approver.name, "decision refused: own request");
            Err(ApiError(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(DecideRefusal::Rule(e)) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(DecideRefusal::Store(e)) => Err(store_error(e)),
    }
}

/// Accepts TLS connections for axum; a failed handshake is logged and skipped.
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.inner.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => info!(client = %addr, error = %e, "admin TLS handshake failed"),
                Err(_) => info!(client = %addr, "admin TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
