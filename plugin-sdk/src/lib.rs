//! The pgward plugin SDK.
//!
//! The plugin contract (`wit/`), the trait plugin authors implement and the native test harness
//! arrive with the plugin runtime; this crate reserves the name and the place in the workspace.
#![forbid(unsafe_code)]
