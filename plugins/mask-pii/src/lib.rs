//! Built-in policy: mask personal and secret data in results by lineage and content (work in progress).
#![forbid(unsafe_code)]
