//! Record fields serialized once, where they are made.
//!
//! A statement record is made on the relay's thread and written on the audit writer's. Built
//! as a `serde_json` map, each of its names and values is an allocation made on one thread and
//! freed on the other (the allocator's slow path both times), and the writer walks the map
//! again to serialize it. [`Fields`] holds the values already in their canonical JSON form, in
//! one buffer, with their names: two allocations per record, and the writer copies the bytes
//! into the record's line as they are.

use serde_json::Value;

/// Named values of a record in canonical JSON (see [`super::chain`]), in one buffer.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    text: Vec<u8>,
    /// Each field's name and where its value is in `text`, in the order pushed (or by name,
    /// after [`Fields::sort`]).
    index: Vec<(&'static str, u32, u32)>,
}

impl Fields {
    pub fn with_capacity(fields: usize, bytes: usize) -> Fields {
        Fields {
            text: Vec::with_capacity(bytes),
            index: Vec::with_capacity(fields),
        }
    }

    fn push(&mut self, name: &'static str, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.text.len() as u32;
        write(&mut self.text);
        self.index.push((name, start, self.text.len() as u32));
    }

    /// Orders the fields by name (of a name pushed twice, the first pushed stays first), as a
    /// record has them: the writer then merges sorted runs instead of sorting each record.
    pub fn sort(&mut self) {
        self.index.sort_by(|a, b| a.0.cmp(b.0));
    }

    pub fn str(&mut self, name: &'static str, value: &str) {
        self.push(name, |t| super::chain::json_str(value, t));
    }

    /// A string, or `null`.
    pub fn opt_str(&mut self, name: &'static str, value: Option<&str>) {
        match value {
            Some(v) => self.str(name, v),
            None => self.null(name),
        }
    }

    pub fn null(&mut self, name: &'static str) {
        self.push(name, |t| t.extend_from_slice(b"null"));
    }

    pub fn u64(&mut self, name: &'static str, value: u64) {
        self.push(name, |t| {
            t.extend_from_slice(itoa::Buffer::new().format(value).as_bytes())
        });
    }

    /// An array of strings (`None` items as `null`).
    pub fn strs<S: AsRef<str>>(
        &mut self,
        name: &'static str,
        items: impl IntoIterator<Item = Option<S>>,
    ) {
        self.push(name, |t| {
            t.push(b'[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    t.push(b',');
                }
                match item {
                    Some(s) => super::chain::json_str(s.as_ref(), t),
                    None => t.extend_from_slice(b"null"),
                }
            }
            t.push(b']');
        });
    }

    /// Any JSON value, in canonical form.
    pub fn value(&mut self, name: &'static str, value: &Value) {
        self.push(name, |t| super::chain::canonical(value, t));
    }

    /// Each field's name and canonical value, in the order pushed (or by name, once sorted).
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        self.index
            .iter()
            .map(|&(name, start, end)| (name, &self.text[start as usize..end as usize]))
    }

    /// The canonical value of field `name` (the last one pushed under it).
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        self.entries()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, v)| v)
    }

    pub fn get_u64(&self, name: &str) -> Option<u64> {
        std::str::from_utf8(self.raw(name)?).ok()?.parse().ok()
    }

    pub fn get_str(&self, name: &str) -> Option<String> {
        serde_json::from_slice(self.raw(name)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let mut f = Fields::default();
        f.u64("n", 42);
        f.str("s", "tab\there \"quoted\" é \u{1}");
        f.opt_str("none", None);
        f.strs("list", [Some("a"), None, Some("b\\c")]);
        f.strs::<&str>("empty", []);
        f.value("nested", &serde_json::json!({"z": 1, "a": [true, null]}));
        let got: Vec<(&str, String)> = f
            .entries()
            .map(|(n, v)| (n, String::from_utf8(v.to_vec()).unwrap()))
            .collect();
        let expected = [
            ("n", serde_json::json!(42)),
            ("s", serde_json::json!("tab\there \"quoted\" é \u{1}")),
            ("none", Value::Null),
            ("list", serde_json::json!(["a", null, "b\\c"])),
            ("empty", serde_json::json!([])),
            ("nested", serde_json::json!({"a": [true, null], "z": 1})),
        ];
        for ((name, text), (want_name, want)) in got.iter().zip(expected) {
            assert_eq!(*name, want_name);
            let mut canonical = Vec::new();
            super::super::chain::canonical(&want, &mut canonical);
            assert_eq!(text.as_bytes(), &canonical[..], "{name}");
        }
        assert_eq!(got.len(), 6);
        assert_eq!(f.get_u64("n"), Some(42));
        assert_eq!(
            f.get_str("s").as_deref(),
            Some("tab\there \"quoted\" é \u{1}")
        );
        assert_eq!(f.get_str("missing"), None);
    }
}
