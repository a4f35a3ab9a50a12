//! Built-in policy: require approval for sensitive statements (work in progress).
#![forbid(unsafe_code)]
