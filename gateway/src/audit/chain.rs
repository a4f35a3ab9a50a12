//! The hash chain of the audit trail, its signed checkpoints, and the verifier.
//!
//! Every record is one JSON object on one line. `hash` is the SHA-256 (hex) of the record's
//! canonical serialization without `hash` itself (keys sorted at every level, no whitespace,
//! serde_json's escaping); `prev` is the previous record's `hash` (64 zeros for the first) and
//! `seq` counts from 1, across file rotations and restarts. A `checkpoint` record signs, with
//! the gateway's Ed25519 key, the text `pgward-audit-checkpoint\n{origin}\n{seq}\n{root}\n`,
//! where `seq` and `root` are the sequence number and hash of the record before it — the C2SP
//! tlog-checkpoint idea, so an auditor holding only the public key can tell that everything up
//! to a checkpoint is as the gateway wrote it.
//!
//! What verification can and cannot tell: an edited, removed, inserted or reordered record
//! breaks the chain at that record; re-chaining the rest after an edit (strip and reseal) is
//! caught at the next checkpoint, whose signature no longer matches; records after the last
//! checkpoint are reported as the unsealed tail, and a log cut back to an earlier checkpoint is
//! only detectable against a checkpoint kept elsewhere, which is why `verify` prints the last
//! one.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The `schema` field of every record.
pub const SCHEMA: &str = "pgward.audit/1";
/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical serialization: object keys sorted at every level, no whitespace, serde_json's
/// escaping. Written straight into `out`: no key or value is copied on the way.
pub fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => canonical_object(map, None, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => json_str(s, out),
        // Numbers, booleans and null have one form.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it.
pub fn json_str(s: &str, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `"key":` for a field name. The record's names are the gateway's own identifiers, which need
/// no escaping; any other is escaped as [`json_str`] does.
pub fn json_key(key: &str, out: &mut Vec<u8>) {
    if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    } else {
        json_str(key, out);
        out.push(b':');
    }
}

/// SHA-256 hex of `record`'s canonical form without its `hash` field.
pub fn record_hash(record: &serde_json::Map<String, Value>) -> String {
    let mut text = Vec::with_capacity(512);
    canonical_without_hash(record, &mut text);
    hex(ring::digest::digest(&ring::digest::SHA256, &text).as_ref())
}

/// The canonical form of `record` leaving out its top-level `hash`.
pub fn canonical_without_hash(record: &serde_json::Map<String, Value>, out: &mut Vec<u8>) {
    canonical_object(record, Some("hash"), out);
}

/// An object with its keys sorted, leaving out `skip`.
fn canonical_object(map: &serde_json::Map<String, Value>, skip: Option<&str>, out: &mut Vec<u8>) {
    let kept = |(k, _): &(&String, &Value)| Some(k.as_str()) != skip;
    // serde_json's map iterates in key order unless its `preserve_order` feature is on
    // (features unify across the dependency tree): sort only when it is not.
    let sorted = map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b);
    if sorted {
        canonical_entries(map.iter().filter(kept), out);
    } else {
        let mut entries: Vec<(&String, &Value)> = map.iter().filter(kept).collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        canonical_entries(entries.into_iter(), out);
    }
}

/// An object of `entries`, in the order given (sorted by key, no key twice).
pub fn canonical_entries<'a, K: AsRef<str> + 'a>(
    entries: impl Iterator<Item = (K, &'a Value)>,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(k.as_ref(), out);
        out.push(b':');
        canonical(v, out);
    }
    out.push(b'}');
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    hex_into(bytes, &mut s);
    s
}

/// Appends `bytes` in lower-case hex to `out`.
pub fn hex_into(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// What a checkpoint signs.
pub fn checkpoint_message(origin: &str, seq: u64, root: &str) -> String {
    format!("pgward-audit-checkpoint\n{origin}\n{seq}\n{root}\n")
}

/// The first problem found in a log, phrased for the auditor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub last_seq: u64,
    pub last_hash: String,
    /// (seq, root) of the last checkpoint whose signature verified.
    pub last_checkpoint: Option<(u64, String)>,
    pub checkpoints: u64,
    /// Records after the last verified checkpoint.
    pub unsealed: u64,
    /// A last line that was never finished (the gateway stopped mid-write): file and line.
    pub unfinished: Vec<(String, usize)>,
    /// The first problem: everything before it is intact.
    pub problem: Option<Problem>,
}

/// Verifies `files` in order as one chain. With `public_key` (raw 32-byte Ed25519), every
/// checkpoint's signature is checked against it; without, checkpoints are not trusted.
pub fn verify(files: &[PathBuf], public_key: Option<&[u8]>) -> Report {
    let mut sources = Vec::new();
    for path in files {
        match std::fs::read(path) {
            Ok(t) => sources.push((path.display().to_string(), t)),
            Err(e) => {
                return Report {
                    problem: Some(Problem {
                        file: path.display().to_string(),
                        line: 0,
                        message: format!("cannot read: {e}"),
                    }),
                    ..Report::default()
                }
            }
        }
    }
    verify_sources(&sources, public_key)
}

/// [`verify`] over named texts of JSON lines (files, or rows read from the PostgreSQL sink).
pub fn verify_sources(sources: &[(String, Vec<u8>)], public_key: Option<&[u8]>) -> Report {
    let mut report = Report {
        last_hash: GENESIS.to_owned(),
        ..Report::default()
    };
    let key = public_key
        .map(|k| ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k.to_vec()));
    for (shown, text) in sources {
        let shown = shown.clone();
        let complete = text.ends_with(b"\n");
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        // split leaves an empty last piece after a final newline.
        let n = if complete {
            lines.len() - 1
        } else {
            lines.len()
        };
        for (i, raw) in lines.iter().take(n).enumerate() {
            let line = i + 1;
            let last_piece = i + 1 == n && !complete;
            let problem = |message: String| Problem {
                file: shown.clone(),
                line,
                message,
            };
            let record: serde_json::Map<String, Value> = match serde_json::from_slice(raw) {
                Ok(Value::Object(m)) => m,
                _ if last_piece => {
                    report.unfinished.push((shown.clone(), line));
                    break;
                }
                _ => {
                    report.problem = Some(problem("not a JSON record (edited?)".into()));
                    return report;
                }
            };
            let seq = record.get("seq").and_then(Value::as_u64);
            let prev = record.get("prev").and_then(Value::as_str);
            let hash = record.get("hash").and_then(Value::as_str);
            let (Some(seq), Some(prev), Some(hash)) = (seq, prev, hash) else {
                report.problem = Some(problem("record without seq, prev or hash (edited?)".into()));
                return report;
            };
            let expected = report.last_seq + 1;
            if report.records == 0 && seq != 1 && prev != GENESIS {
                // The files given start later in the chain: trust their first link.
                report.last_seq = seq - 1;
                report.last_hash = prev.to_owned();
            } else if seq > expected {
                report.problem = Some(problem(format!(
                    "record {seq} follows record {}: {} record(s) removed before it",
                    report.last_seq,
                    seq - expected
                )));
                return report;
            } else if seq < expected {
                report.problem = Some(problem(format!(
                    "record {seq} after record {}: inserted or reordered",
                    report.last_seq
                )));
                return report;
            }
            if prev != report.last_hash {
                report.problem = Some(problem(format!(
                    "record {seq} does not link to the record before it: that one was edited, removed or reordered"
                )));
                return report;
            }
            if record_hash(&record) != hash {
                report.problem = Some(problem(format!(
                    "record {seq} was edited: its hash does not match"
                )));
                return report;
            }
            if record.get("kind").and_then(Value::as_str) == Some("checkpoint") {
                report.checkpoints += 1;
                match (&key, checkpoint_parts(&record)) {
                    (Some(key), Some((origin, size, root, sig))) => {
                        let ok = size == seq - 1
                            && root == report.last_hash
                            && key
                                .verify(checkpoint_message(&origin, size, &root).as_bytes(), &sig)
                                .is_ok();
                        if !ok {
                            report.problem = Some(problem(format!(
                                "checkpoint {seq} is not signed by the given key for the records before it"
                            )));
                            return report;
                        }
                        report.last_checkpoint = Some((size, root));
                        report.unsealed = 0;
                    }
                    (Some(_), None) => {
                        report.problem = Some(problem(format!("checkpoint {seq} is malformed")));
                        return report;
                    }
                    (None, _) => report.unsealed += 1,
                }
            } else {
                report.unsealed += 1;
            }
            report.records += 1;
            report.last_seq = seq;
            report.last_hash = hash.to_owned();
        }
    }
    report
}

fn checkpoint_parts(r: &serde_json::Map<String, Value>) -> Option<(String, u64, String, Vec<u8>)> {
    use base64::Engine as _;
    let origin = r.get("origin")?.as_str()?.to_owned();
    let size = r.get("size")?.as_u64()?;
    let root = r.get("root")?.as_str()?.to_owned();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(r.get("signature")?.as_str()?)
        .ok()?;
    Some((origin, size, root, sig))
}

/// The audit files of a directory, oldest first.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_at_every_level() {
        let mut s = Vec::new();
        canonical(
            &json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "é\n"}], "c": null}}),
            &mut s,
        );
        assert_eq!(
            String::from_utf8(s).unwrap(),
            r#"{"a":{"c":null,"d":[1,{"y":"é\n","z":0}]},"b":1}"#
        );
    }
}
