//! `mask_pii.toml`: the classes of sensitive data, how each is masked, who is exempt, and what
//! happens when masking cannot be guaranteed. Parsed and checked once, at load; every error
//! names the key at fault.

use crate::detect::{Detector, Detectors};
use crate::patterns::{FunctionPattern, LineagePattern};
use crate::strategy::{HashAlgorithm, Hasher, Strategy};
use pgward_plugin_sdk::prelude::*;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
struct File {
    /// What to do when masking cannot be guaranteed: "deny" (default) or "detect".
    #[serde(default)]
    on_uncertain: Option<String>,
    /// Run the detectors on text columns that no class claims (default true).
    #[serde(default = "yes")]
    scan_unclassified: bool,
    /// Functions, beyond the built-in list, that may be called by identities whose results
    /// are masked (with `on_uncertain = "deny"`).
    #[serde(default)]
    allow_functions: Vec<String>,
    /// Relations holding no classified data (and no views over it) that statements writing
    /// rows may read (with `on_uncertain = "deny"`).
    #[serde(default)]
    trusted_relations: Vec<String>,
    #[serde(default)]
    hash: HashFile,
    #[serde(default)]
    exempt: ExemptFile,
    #[serde(default)]
    detectors: DetectorsFile,
    #[serde(default, rename = "class")]
    classes: Vec<ClassFile>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
struct HashFile {
    key: Option<String>,
    length: Option<usize>,
    algorithm: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
struct ExemptFile {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
struct DetectorsFile {
    #[serde(default)]
    api_key_prefixes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
struct ClassFile {
    name: String,
    #[serde(default)]
    lineage: Vec<String>,
    #[serde(default)]
    detectors: Vec<String>,
    strategy: String,
    keep_last: Option<usize>,
    redact_with: Option<String>,
    #[serde(default)]
    exempt: ExemptFile,
}

/// What happens when masking a result cannot be guaranteed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUncertain {
    /// Refuse the statement (or stop the result): fail closed.
    Deny,
    /// Mask what the detectors find and let the rest through: best effort.
    Detect,
}

/// Who sees cleartext.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exempt {
    /// User names.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
}

impl Exempt {
    /// Whether `session`'s verified identity is exempt.
    pub fn covers(&self, session: &Session) -> bool {
        self.users.iter().any(|u| u == session.user()) || session.in_any_group(&self.groups)
    }
}

/// One class of sensitive data.
#[derive(Debug, Clone)]
pub struct Class {
    /// Its name, used in messages.
    pub name: String,
    /// Source columns that hold it.
    pub lineage: Vec<LineagePattern>,
    /// Detectors that recognise its values in any text.
    pub detectors: Vec<Detector>,
    /// How its values are masked.
    pub strategy: Strategy,
    /// Who sees it in cleartext (besides the global exemptions).
    pub exempt: Exempt,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// In config order: where several classes match a column, the first one wins.
    pub classes: Vec<Class>,
    pub on_uncertain: OnUncertain,
    pub scan_unclassified: bool,
    pub allow_functions: Vec<FunctionPattern>,
    pub trusted_relations: Vec<LineagePattern>,
    pub hasher: Option<Hasher>,
    pub exempt: Exempt,
    /// Every detector some class uses, with the detector settings.
    pub detectors: Detectors,
}

/// At most this many classes: a session's active classes are a bit set.
pub const MAX_CLASSES: usize = 64;

/// Default text of the `redact` strategy.
pub const DEFAULT_REDACT: &str = "[redacted]";
/// Default `keep_last` of the `partial` strategy.
pub const DEFAULT_KEEP_LAST: usize = 4;
/// Default number of hex digits of the `hash` strategy.
pub const DEFAULT_HASH_LENGTH: usize = 16;

impl Config {
    /// Parses and checks `text` (the contents of `mask_pii.toml`).
    pub fn parse(text: &str) -> Result<Config, String> {
        let file: File = config(text)?;
        let invalid = |msg: String| format!("invalid plugin config: {msg}");
        let on_uncertain = match file.on_uncertain.as_deref() {
            None | Some("deny") => OnUncertain::Deny,
            Some("detect") => OnUncertain::Detect,
            Some(other) => {
                return Err(invalid(format!(
                    "key `on_uncertain`: {other:?} is not \"deny\" or \"detect\""
                )))
            }
        };
        if file.classes.is_empty() {
            return Err(invalid(
                "no [[class]] is configured: name at least one class of sensitive data".into(),
            ));
        }
        if file.classes.len() > MAX_CLASSES {
            return Err(invalid(format!(
                "{} classes configured; at most {MAX_CLASSES} are supported",
                file.classes.len()
            )));
        }
        for prefix in &file.detectors.api_key_prefixes {
            let ok = prefix.len() >= 3
                && prefix
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                && prefix.as_bytes()[0].is_ascii_alphabetic();
            if !ok {
                return Err(invalid(format!(
                    "key `detectors.api_key_prefixes`: {prefix:?} must start with a letter and have 3 or more of A-Z a-z 0-9 _ -"
                )));
            }
        }
        let mut classes: Vec<Class> = Vec::new();
        let mut owner: Vec<(Detector, String)> = Vec::new();
        for c in file.classes {
            let key = |k: &str| format!("class `{}`, key `{k}`", c.name);
            if c.name.trim().is_empty() {
                return Err(invalid("a [[class]] has an empty `name`".into()));
            }
            if classes.iter().any(|k| k.name == c.name) {
                return Err(invalid(format!("two classes are named `{}`", c.name)));
            }
            let lineage = c
                .lineage
                .iter()
                .map(|p| LineagePattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("{}: {e}", key("lineage"))))?;
            let mut detectors = Vec::new();
            for d in &c.detectors {
                let Some(det) = Detector::from_name(d) else {
                    let names: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
                    return Err(invalid(format!(
                        "{}: unknown detector {d:?} (one of {})",
                        key("detectors"),
                        names.join(", ")
                    )));
                };
                if let Some((_, other)) = owner.iter().find(|(o, _)| *o == det) {
                    return Err(invalid(format!(
                        "{}: detector {d:?} is already used by class `{other}`; a detector belongs to one class",
                        key("detectors")
                    )));
                }
                owner.push((det, c.name.clone()));
                detectors.push(det);
            }
            if lineage.is_empty() && detectors.is_empty() {
                return Err(invalid(format!(
                    "class `{}` has neither `lineage` nor `detectors`: it would match nothing",
                    c.name
                )));
            }
            let strategy = match c.strategy.as_str() {
                "redact" => {
                    let with = c
                        .redact_with
                        .clone()
                        .unwrap_or_else(|| DEFAULT_REDACT.into());
                    // The text goes inside JSON strings, array and record literals: none of
                    // their special characters.
                    let bad = with.is_empty()
                        || with.len() > 64
                        || with
                            .chars()
                            .any(|ch| ch.is_control() || "\"\\{}(),'".contains(ch));
                    if bad {
                        return Err(invalid(format!(
                            "{}: {with:?} must be 1 to 64 characters without quotes, backslashes, braces, parentheses, commas or control characters",
                            key("redact_with")
                        )));
                    }
                    Strategy::Redact(with)
                }
                "partial" => {
                    let keep_last = c.keep_last.unwrap_or(DEFAULT_KEEP_LAST);
                    if !(1..=64).contains(&keep_last) {
                        return Err(invalid(format!(
                            "{}: {keep_last} is not between 1 and 64",
                            key("keep_last")
                        )));
                    }
                    Strategy::Partial { keep_last }
                }
                "hash" => Strategy::Hash,
                "null" => Strategy::Null,
                other => {
                    return Err(invalid(format!(
                        "{}: {other:?} is not one of \"redact\", \"partial\", \"hash\", \"null\"",
                        key("strategy")
                    )))
                }
            };
            if c.keep_last.is_some() && !matches!(strategy, Strategy::Partial { .. }) {
                return Err(invalid(format!(
                    "{}: only the \"partial\" strategy keeps characters",
                    key("keep_last")
                )));
            }
            if c.redact_with.is_some() && !matches!(strategy, Strategy::Redact(_)) {
                return Err(invalid(format!(
                    "{}: only the \"redact\" strategy uses a replacement text",
                    key("redact_with")
                )));
            }
            classes.push(Class {
                name: c.name,
                lineage,
                detectors,
                strategy,
                exempt: Exempt {
                    users: c.exempt.users,
                    groups: c.exempt.groups,
                },
            });
        }
        let hashing = classes.iter().find(|c| c.strategy == Strategy::Hash);
        let hasher = match (&file.hash.key, hashing) {
            (None, Some(c)) => {
                return Err(invalid(format!(
                    "key `hash.key` is required: class `{}` uses the \"hash\" strategy",
                    c.name
                )))
            }
            (Some(key), _) if key.len() < 16 => {
                return Err(invalid(
                    "key `hash.key`: use at least 16 bytes (32 random bytes, e.g. `openssl rand -hex 32`)"
                        .into(),
                ))
            }
            (Some(key), _) => {
                let length = file.hash.length.unwrap_or(DEFAULT_HASH_LENGTH);
                if !(8..=64).contains(&length) {
                    return Err(invalid(format!(
                        "key `hash.length`: {length} is not between 8 and 64 hex digits"
                    )));
                }
                let algorithm = match file.hash.algorithm.as_deref() {
                    None | Some("siphash") => HashAlgorithm::SipHash,
                    Some("blake3") => HashAlgorithm::Blake3,
                    Some("hmac-sha256") => HashAlgorithm::HmacSha256,
                    Some(other) => {
                        return Err(invalid(format!(
                            "key `hash.algorithm`: {other:?} is not one of \"blake3\", \"siphash\", \"hmac-sha256\""
                        )))
                    }
                };
                if length > algorithm.max_hex_len() {
                    return Err(invalid(format!(
                        "key `hash.length`: {length} hex digits is more than `hash.algorithm` {:?}{} gives, {}; set `hash.algorithm = \"blake3\"` for up to 64",
                        algorithm.name(),
                        if file.hash.algorithm.is_none() { " (the default)" } else { "" },
                        algorithm.max_hex_len()
                    )));
                }
                Some(Hasher::new(algorithm, key.as_bytes(), length))
            }
            (None, None) => {
                if file.hash.length.is_some() || file.hash.algorithm.is_some() {
                    return Err(invalid(
                        "keys `hash.length` and `hash.algorithm` need a `hash.key`".into(),
                    ));
                }
                None
            }
        };
        let allow_functions = file
            .allow_functions
            .iter()
            .map(|p| FunctionPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("key `allow_functions`: {e}")))?;
        let trusted_relations = file
            .trusted_relations
            .iter()
            .map(|p| {
                // `schema.table` or `table`, stored as a pattern whose column is `*`.
                if p.contains(".*.") || p.matches('.').count() > 1 {
                    return Err(format!("{p:?} is not `table` or `schema.table`"));
                }
                LineagePattern::parse(&format!("{p}.*"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("key `trusted_relations`: {e}")))?;
        let detectors = Detectors::new(
            classes.iter().flat_map(|c| c.detectors.iter().copied()),
            &file.detectors.api_key_prefixes,
        );
        Ok(Config {
            classes,
            on_uncertain,
            scan_unclassified: file.scan_unclassified,
            allow_functions,
            trusted_relations,
            hasher,
            exempt: Exempt {
                users: file.exempt.users,
                groups: file.exempt.groups,
            },
            detectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[class]]
name = "email"
lineage = ["public.customers.email"]
detectors = ["email"]
strategy = "partial"
"#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn a_minimal_config_has_safe_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.on_uncertain, OnUncertain::Deny);
        assert!(c.scan_unclassified);
        assert_eq!(c.classes[0].strategy, Strategy::Partial { keep_last: 4 });
        assert!(c.hasher.is_none());
        assert!(c.detectors.has(Detector::Email) && !c.detectors.has(Detector::Ssn));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("").contains("no [[class]]"));
        assert!(err(&format!("on_uncertain = \"maybe\"\n{MINIMAL}")).contains("key `on_uncertain`"));
        let e = err("[[class]]\nname = \"x\"\nlineage = [\"a.b.c.d\"]\nstrategy = \"null\"\n");
        assert!(
            e.contains("class `x`, key `lineage`") && e.contains("4 parts"),
            "{e}"
        );
        let e = err("[[class]]\nname = \"x\"\ndetectors = [\"passport\"]\nstrategy = \"null\"\n");
        assert!(
            e.contains("key `detectors`") && e.contains("unknown detector \"passport\""),
            "{e}"
        );
        let e = err("[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"shred\"\n");
        assert!(e.contains("key `strategy`"), "{e}");
        let e = err("[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n");
        assert!(
            e.contains("key `hash.key` is required") && e.contains("class `x`"),
            "{e}"
        );
        let e = err("[hash]\nkey = \"short\"\n[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n");
        assert!(e.contains("key `hash.key`: use at least 16 bytes"), "{e}");
        let e = err("[hash]\nkey = \"0123456789abcdef\"\nlength = 4\n[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n");
        assert!(e.contains("key `hash.length`"), "{e}");
        // The default SipHash gives up to 32 digits; BLAKE3 up to 64.
        let e = err("[hash]\nkey = \"0123456789abcdef\"\nlength = 40\n[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n");
        assert!(
            e.contains("key `hash.length`") && e.contains("hash.algorithm = \"blake3\""),
            "{e}"
        );
        let e = err("[hash]\nkey = \"0123456789abcdef\"\nlength = 33\nalgorithm = \"siphash\"\n[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n");
        assert!(
            e.contains("\"siphash\" gives, 32") && !e.contains("the default"),
            "{e}"
        );
        assert!(Config::parse("[hash]\nkey = \"0123456789abcdef\"\nlength = 40\nalgorithm = \"blake3\"\n[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n").is_ok());
        let e = err("[hash]\nkey = \"0123456789abcdef\"\nalgorithm = \"md5\"\n[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"hash\"\n");
        assert!(
            e.contains("key `hash.algorithm`") && e.contains("\"md5\""),
            "{e}"
        );
        let e = err("[hash]\nalgorithm = \"blake3\"\n[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"null\"\n");
        assert!(e.contains("need a `hash.key`"), "{e}");
        let e = err(
            "[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"redact\"\nkeep_last = 2\n",
        );
        assert!(e.contains("key `keep_last`"), "{e}");
        let e = err(
            "[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"partial\"\nkeep_last = 0\n",
        );
        assert!(e.contains("key `keep_last`"), "{e}");
        let e = err("[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"redact\"\nredact_with = \"{x}\"\n");
        assert!(e.contains("key `redact_with`"), "{e}");
        let e = err("[[class]]\nname = \"x\"\nstrategy = \"null\"\n");
        assert!(e.contains("neither `lineage` nor `detectors`"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[[class]]\nname = \"email\"\nlineage = [\"x\"]\nstrategy = \"null\"\n"
        ));
        assert!(e.contains("two classes are named `email`"), "{e}");
        let e = err(&format!("{MINIMAL}\n[[class]]\nname = \"other\"\ndetectors = [\"email\"]\nstrategy = \"null\"\n"));
        assert!(e.contains("already used by class `email`"), "{e}");
        let e = err(&format!("allow_functions = [\"a.b.c\"]\n{MINIMAL}"));
        assert!(e.contains("key `allow_functions`"), "{e}");
        let e = err(&format!("trusted_relations = [\"a.b.c\"]\n{MINIMAL}"));
        assert!(e.contains("key `trusted_relations`"), "{e}");
        let e = err(&format!(
            "[detectors]\napi_key_prefixes = [\"x\"]\n{MINIMAL}"
        ));
        assert!(e.contains("key `detectors.api_key_prefixes`"), "{e}");
        let e = err(&format!("colour = 1\n{MINIMAL}"));
        assert!(e.contains("colour"), "{e}");
        let e = err("[[class]]\nname = \"x\"\nlineage = [\"t.c\"]\nstrategy = \"null\"\nexempt = { user = [\"a\"] }\n");
        assert!(e.contains("user"), "{e}");
    }

    #[test]
    fn exemptions_cover_users_and_groups() {
        let e = Exempt {
            users: vec!["dana".into()],
            groups: vec!["support-lead".into()],
        };
        let session = |user: &str, groups: &[&str]| Session {
            identity: Identity {
                user: user.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(e.covers(&session("dana", &[])));
        assert!(e.covers(&session("sam", &["support", "support-lead"])));
        assert!(!e.covers(&session("sam", &["support"])));
    }
}
