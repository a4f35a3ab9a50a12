//! SQLSTATE codes (PostgreSQL Appendix A) that the gateway and its plugins answer clients with,
//! named as PostgreSQL names the conditions. The gateway and the plugin SDK both use these, so
//! a code means the same wherever it is sent.
//!
//! Any five-character code of an error class is valid on the wire; these are the ones clients
//! and drivers already know how to explain.
#![no_std]
#![forbid(unsafe_code)]

/// `00000` successful_completion.
pub const SUCCESSFUL_COMPLETION: &str = "00000";
/// `08004` sqlserver_rejected_establishment_of_sqlconnection: the gateway could not open the
/// upstream session for reasons that are the operator's to fix.
pub const REJECTED_CONNECTION: &str = "08004";
/// `08006` connection_failure: the upstream connection failed or closed.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08P01` protocol_violation: a malformed or unexpected protocol message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `0A000` feature_not_supported: the statement form is not allowed through the gateway.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `22023` invalid_parameter_value.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// `22021` character_not_in_repertoire: bytes that are not valid in the encoding.
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
/// `25P02` in_failed_sql_transaction.
pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
/// `28000` invalid_authorization_specification: refuse a session.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `28P01` invalid_password: authentication failed.
pub const INVALID_PASSWORD: &str = "28P01";
/// `3D000` invalid_catalog_name: no such database.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// `42000` syntax_error_or_access_rule_violation: a generic policy violation.
pub const ACCESS_RULE_VIOLATION: &str = "42000";
/// `42501` insufficient_privilege: the identity may not do this.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `42601` syntax_error.
pub const SYNTAX_ERROR: &str = "42601";
/// `53300` too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `53400` configuration_limit_exceeded: a limit of the gateway's configuration.
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// `54000` program_limit_exceeded: the statement is too large or too broad.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `55000` object_not_in_prerequisite_state.
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `57014` query_canceled: cancelled, or an approval's wait timed out.
pub const QUERY_CANCELED: &str = "57014";
/// `57P01` admin_shutdown: the gateway or the server is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03` cannot_connect_now: the server is starting up or shutting down.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `57P05` idle_session_timeout.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `58000` system_error: the plugin or the gateway itself failed (used by the SDK before
/// `init`); the statement or result is refused rather than let through.
pub const SYSTEM_ERROR: &str = "58000";
/// `58030` io_error: the audit trail cannot be written and refuses new statements.
pub const IO_ERROR: &str = "58030";
/// `P0001` raise_exception: a custom policy error.
pub const RAISE_EXCEPTION: &str = "P0001";
/// `XX000` internal_error.
pub const INTERNAL_ERROR: &str = "XX000";
/// `PWA01` (pgward's own class PW): the statement waits for approval in defer mode; the
/// message names the request to have approved and then run again.
pub const APPROVAL_DEFERRED: &str = "PWA01";
