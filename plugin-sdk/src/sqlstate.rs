//! SQLSTATE codes plugins commonly deny with (PostgreSQL Appendix A).
//!
//! Any five-character code of an error class is accepted; these are the ones clients and
//! drivers already know how to explain.

/// `42501` insufficient_privilege: the identity may not do this.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `28000` invalid_authorization_specification: refuse a session.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `0A000` feature_not_supported: the statement form is not allowed through the gateway.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `42000` syntax_error_or_access_rule_violation: a generic policy violation.
pub const ACCESS_RULE_VIOLATION: &str = "42000";
/// `54000` program_limit_exceeded: the statement is too large or too broad.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `P0001` raise_exception: a custom policy error.
pub const RAISE_EXCEPTION: &str = "P0001";
/// `58000` system_error: the plugin itself failed (used by the SDK before `init`).
pub const SYSTEM_ERROR: &str = "58000";
