//! Typed plugin configuration from the TOML text the gateway hands to `init`.

use serde::de::DeserializeOwned;

/// Parses a plugin's TOML configuration into `T`.
///
/// Derive `Deserialize` with `#[serde(crate = "pgward_plugin_sdk::serde")]` so the plugin needs
/// no serde dependency of its own; `#[serde(default)]` makes keys optional, which also lets an
/// absent config file (`""`) work. The error names the line and key at fault, e.g.
/// ``invalid plugin config: line 2, key `word`: invalid type: integer `5`, expected a string``.
pub fn config<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| describe(text, &e))
}

fn describe(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return format!("invalid plugin config: {message}");
    };
    // A missing field is reported against its whole table; its name is in the message already.
    if message.starts_with("missing field") {
        return format!("invalid plugin config: {message}");
    }
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let line = &text[line_start..line_end];
    match line.split_once('=') {
        Some((key, _)) if line_start + key.len() <= start => format!(
            "invalid plugin config: line {line_no}, key `{}`: {message}",
            key.trim()
        ),
        _ => format!("invalid plugin config: line {line_no}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        word: String,
        #[serde(default)]
        tables: Vec<String>,
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = config::<Conf>("tables = []\nword = 5\n").unwrap_err();
        assert!(err.contains("line 2, key `word`"), "{err}");
        assert!(err.contains("expected a string"), "{err}");
        let err = config::<Conf>("tables = []\n").unwrap_err();
        assert!(err.contains("missing field `word`"), "{err}");
        let err = config::<Conf>("word = \"x\"\ntabels = []\n").unwrap_err();
        assert!(err.contains("tabels"), "{err}");
        let err = config::<Conf>("word = \n").unwrap_err();
        assert!(err.starts_with("invalid plugin config: line 1"), "{err}");
    }

    #[test]
    fn config_accepts_defaults() {
        let c: Conf = config("word = \"x\"").unwrap();
        assert_eq!((c.word.as_str(), c.tables.len()), ("x", 0));
    }
}
