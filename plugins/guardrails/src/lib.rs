//! Built-in policy: deny destructive, unknowable and out-of-scope statements per identity and group (work in progress).
#![forbid(unsafe_code)]
