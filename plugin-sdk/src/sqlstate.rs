//! SQLSTATE codes plugins commonly deny with (PostgreSQL Appendix A): the same constants the
//! gateway answers with, from the `pgward-sqlstate` crate.
//!
//! Any five-character code of an error class is accepted; these are the ones clients and
//! drivers already know how to explain. The usual ones for a plugin: [`INSUFFICIENT_PRIVILEGE`]
//! (the identity may not do this), [`FEATURE_NOT_SUPPORTED`] (the statement form is not
//! allowed), [`ACCESS_RULE_VIOLATION`], [`PROGRAM_LIMIT_EXCEEDED`], [`RAISE_EXCEPTION`], and
//! [`INVALID_AUTHORIZATION`] to refuse a session.

pub use pgward_sqlstate::*;
