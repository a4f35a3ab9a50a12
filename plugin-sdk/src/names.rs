//! Names in a plugin's configuration: patterns for relations and functions, and the search path
//! that decides which schema an unqualified name in a statement points to; and how writes are
//! named in messages.
//!
//! ```
//! use pgward_plugin_sdk::prelude::*;
//!
//! #[derive(Debug, Deserialize)]
//! #[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
//! struct Config {
//!     protected: Vec<NamePattern>,   // a malformed pattern is a config error naming the key
//!     #[serde(default)]
//!     search_path: SearchPath,       // default ["public"]
//! }
//!
//! let c: Config = config(r#"protected = ["public.accounts", "billing.*"]"#).unwrap();
//! // `DELETE FROM Accounts` names `accounts` without a schema: with search_path = public it is
//! // public.accounts.
//! let written = Relation::new(None, "accounts");
//! let candidates = c.search_path.candidates(&written);
//! assert_eq!(candidates, [Relation::new(Some("public"), "accounts")]);
//! assert!(candidates.iter().any(|r| c.protected.iter().any(|p| p.matches(r))));
//! let err = config::<Config>(r#"protected = ["a.b.c"]"#).unwrap_err();
//! assert!(err.contains("key `protected`") && err.contains("not a name pattern"), "{err}");
//! ```

use crate::types::{
    split_pattern, ObjectKind, PatternPart, Relation, Statement, Write, WriteAction,
};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A pattern from a plugin's config naming relations or functions: `name` (in any schema),
/// `schema.name`, `schema.*` or `*`. Written as in SQL: unquoted parts are folded to lower
/// case, `"Quoted"` parts are kept exactly. Deserializes from a string, so a malformed pattern
/// refuses the config with the key named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    text: String,
    schema: Option<PatternPart>,
    name: PatternPart,
}

impl NamePattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "{text:?} is not a name pattern (expected name, schema.name, schema.* or *; \
                 quote names with upper case or dots: \"My Table\")"
            )
        };
        if has_unquoted_space(text) {
            return Err(invalid());
        }
        let mut parts = split_pattern(text);
        let (schema, name) = match parts.len() {
            1 => (None, parts.remove(0)),
            2 => {
                let name = parts.remove(1);
                (Some(parts.remove(0)), name)
            }
            _ => return Err(invalid()),
        };
        Ok(NamePattern {
            text: text.trim().to_owned(),
            schema,
            name,
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `relation` may be one this pattern names. As with [`Relation::matches`], a
    /// relation without a schema matches the pattern in any schema (resolve it first with
    /// [`SearchPath::candidates`] to know where it points).
    pub fn matches(&self, relation: &Relation) -> bool {
        if !self.name.matches(&relation.name) {
            return false;
        }
        match (&self.schema, &relation.schema) {
            (None, _) | (Some(_), None) => true,
            (Some(pattern), Some(actual)) => pattern.matches(actual),
        }
    }

    /// Whether this pattern names the function `name` as the gateway reports it
    /// (`pg_read_file`, `pg_catalog.pg_read_file`); same rules as [`NamePattern::matches`].
    pub fn matches_function(&self, name: &str) -> bool {
        self.matches(&Relation::from_qualified(name))
    }

    /// Whether the pattern names every object in `schema` (`schema.*`, `*`): what a rule on it
    /// means for `CREATE SCHEMA`, `ALTER SCHEMA` or `DROP SCHEMA`.
    pub fn covers_schema(&self, schema: &str) -> bool {
        self.name == PatternPart::Any && self.schema.as_ref().is_none_or(|s| s.matches(schema))
    }

    /// Whether the pattern may name something inside `schema` (`schema.accounts`, `schema.*`,
    /// or a pattern without a schema): what `DROP SCHEMA ... CASCADE` would reach.
    pub fn touches_schema(&self, schema: &str) -> bool {
        self.schema.as_ref().is_none_or(|s| s.matches(schema))
    }

    /// Whether the pattern names `name` in every schema (`name`, `*.name`, `*`): what a rule
    /// needs to cover a name whose schema cannot be known.
    pub fn matches_everywhere(&self, name: &str) -> bool {
        self.name.matches(name) && matches!(self.schema, None | Some(PatternPart::Any))
    }

    /// Whether the pattern names everything (`*` or `*.*`).
    pub fn is_everything(&self) -> bool {
        self.name == PatternPart::Any && matches!(self.schema, None | Some(PatternPart::Any))
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for NamePattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NamePattern::parse(s)
    }
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        NamePattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whitespace outside `"quotes"`: `public. accounts` is a typo, not a name.
fn has_unquoted_space(text: &str) -> bool {
    let mut quoted = false;
    text.trim().chars().any(|c| {
        if c == '"' {
            quoted = !quoted;
        }
        !quoted && c.is_whitespace()
    })
}

/// The schemas an unqualified name in a statement is looked up in, in order, like PostgreSQL's
/// `search_path`. Plugins have no catalog, so a plugin takes the path from its config (set it
/// to what the database uses); [`SearchPath::candidates`] then says where a name may point.
/// Deserializes from a list of schema names; the default is `["public"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath(Vec<String>);

impl SearchPath {
    /// A path of schema names written as in SQL (`public`, `"Sales"`); at least one.
    pub fn new<S: AsRef<str>>(schemas: &[S]) -> Result<Self, String> {
        if schemas.is_empty() {
            return Err("a search path needs at least one schema".to_owned());
        }
        let mut path = Vec::with_capacity(schemas.len());
        for text in schemas {
            let text = text.as_ref();
            match split_pattern(text).as_slice() {
                [PatternPart::Exact(name)] if name.starts_with('$') => {
                    return Err(format!(
                        "{text:?}: name the schemas themselves (upstream, the session's role is \
                         the gateway's, not the client's)"
                    ))
                }
                [PatternPart::Exact(name)] if !has_unquoted_space(text) => path.push(name.clone()),
                _ => return Err(format!("{text:?} is not a schema name")),
            }
        }
        Ok(SearchPath(path))
    }

    /// The schemas, folded, in order.
    pub fn schemas(&self) -> &[String] {
        &self.0
    }

    /// The relations `relation` may be: itself when it names a schema, otherwise the same name
    /// in each schema of the path, in order (PostgreSQL uses the first where it exists).
    pub fn candidates(&self, relation: &Relation) -> Vec<Relation> {
        match relation.schema {
            Some(_) => vec![relation.clone()],
            None => self
                .0
                .iter()
                .map(|schema| Relation::new(Some(schema), &relation.name))
                .collect(),
        }
    }
}

impl Default for SearchPath {
    fn default() -> Self {
        SearchPath(vec!["public".to_owned()])
    }
}

impl<'de> Deserialize<'de> for SearchPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let schemas = Vec::<String>::deserialize(d)?;
        SearchPath::new(&schemas).map_err(serde::de::Error::custom)
    }
}

impl ObjectKind {
    /// The kind as SQL names it: `TABLE`, `MATERIALIZED VIEW`, `FUNCTION`...
    pub fn sql_name(self) -> &'static str {
        match self {
            ObjectKind::Table => "TABLE",
            ObjectKind::View => "VIEW",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
            ObjectKind::ForeignTable => "FOREIGN TABLE",
            ObjectKind::Index => "INDEX",
            ObjectKind::Sequence => "SEQUENCE",
            ObjectKind::Schema => "SCHEMA",
            ObjectKind::Database => "DATABASE",
            ObjectKind::Function => "FUNCTION",
            ObjectKind::Procedure => "PROCEDURE",
            ObjectKind::Type => "TYPE",
            ObjectKind::Domain => "DOMAIN",
            ObjectKind::Extension => "EXTENSION",
            ObjectKind::Role => "ROLE",
            ObjectKind::Trigger => "TRIGGER",
            ObjectKind::Server => "SERVER",
            ObjectKind::Other => "OBJECT",
        }
    }
}

impl Write {
    /// The SQL command that makes this write, for messages: `DELETE`, `DROP TABLE`,
    /// `CREATE FUNCTION`, `COPY FROM`, `VACUUM or ANALYZE`...
    pub fn command(&self) -> String {
        use WriteAction as A;
        let object = self.object.sql_name();
        match self.action {
            A::Insert => "INSERT".to_owned(),
            A::Update => "UPDATE".to_owned(),
            A::Delete => "DELETE".to_owned(),
            A::Merge => "MERGE".to_owned(),
            A::CopyFrom => "COPY FROM".to_owned(),
            A::SelectInto => "SELECT INTO".to_owned(),
            A::Create => format!("CREATE {object}"),
            A::CreateIndex => "CREATE INDEX".to_owned(),
            A::Alter => format!("ALTER {object}"),
            A::Drop => format!("DROP {object}"),
            A::Truncate => "TRUNCATE".to_owned(),
            A::Comment => "COMMENT".to_owned(),
            A::Grant => "GRANT".to_owned(),
            A::Revoke => "REVOKE".to_owned(),
            A::Refresh => "REFRESH MATERIALIZED VIEW".to_owned(),
            A::Lock => "LOCK TABLE".to_owned(),
            A::Maintain => "VACUUM or ANALYZE".to_owned(),
        }
    }

    /// This write of `statement` named for messages, with `name` for its relation:
    /// `DELETE on public.accounts`, or `DELETE on public.accounts inside COPY` when it hides
    /// in another command.
    pub fn describe(&self, statement: &Statement, name: &Relation) -> String {
        let verb = match self.action {
            WriteAction::Maintain => statement.command.clone(),
            _ => self.command(),
        };
        if statement.command.starts_with(&verb) || verb.starts_with(&statement.command) {
            format!("{verb} on {name}")
        } else {
            format!("{verb} on {name} inside {}", statement.command)
        }
    }
}

impl Statement {
    /// The statement's command for messages, or `fallback` when the gateway gave none.
    pub fn command_or<'a>(&'a self, fallback: &'a str) -> &'a str {
        if self.command.is_empty() {
            fallback
        } else {
            &self.command
        }
    }
}

impl Relation {
    /// A relation from a name as the gateway reports functions and prints relations
    /// (`schema.name` or `name`, parts already folded).
    pub fn from_qualified(name: &str) -> Self {
        match name.rsplit_once('.') {
            Some((schema, name)) => Relation::new(Some(schema), name),
            None => Relation::new(None, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> NamePattern {
        NamePattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_fold_like_sql_and_reject_typos() {
        let accounts = Relation::new(Some("public"), "accounts");
        assert!(p("PUBLIC.Accounts").matches(&accounts));
        assert!(p("\"public\".\"accounts\"").matches(&accounts));
        assert!(!p("public.\"Accounts\"").matches(&accounts));
        assert!(p("accounts").matches(&accounts));
        assert!(p("public.*").matches(&accounts) && p("*").matches(&accounts));
        assert!(!p("billing.*").matches(&accounts));
        assert!(p("\"My Schema\".t").matches(&Relation::new(Some("My Schema"), "t")));
        for bad in [
            "",
            "a.b.c",
            "public. accounts",
            "public.\"open",
            "a..b",
            "my table",
        ] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(p(" billing.* ").to_string(), "billing.*");
    }

    #[test]
    fn schema_questions_for_schema_level_ddl() {
        assert!(p("billing.*").covers_schema("billing") && p("*").covers_schema("x"));
        assert!(!p("billing.invoices").covers_schema("billing"));
        assert!(p("billing.invoices").touches_schema("billing"));
        assert!(p("invoices").touches_schema("anything"));
        assert!(!p("billing.*").touches_schema("public"));
        assert!(p("*").is_everything() && p("*.*").is_everything());
        assert!(!p("public.*").is_everything());
        assert!(p("notes").matches_everywhere("notes") && p("*.notes").matches_everywhere("notes"));
        assert!(!p("public.notes").matches_everywhere("notes"));
    }

    #[test]
    fn functions_match_with_or_without_schema() {
        assert!(p("pg_read_file").matches_function("pg_catalog.pg_read_file"));
        assert!(p("pg_read_file").matches_function("pg_read_file"));
        assert!(p("pg_catalog.pg_read_file").matches_function("pg_read_file"));
        assert!(!p("dblink").matches_function("dblink_exec"));
        assert!(!p("public.dblink").matches_function("ext.dblink"));
    }

    #[test]
    fn search_path_resolves_unqualified_names_only() {
        let path = SearchPath::new(&["Billing", "public"]).unwrap();
        assert_eq!(path.schemas(), ["billing", "public"]);
        assert_eq!(
            path.candidates(&Relation::new(None, "Invoices")),
            [
                Relation::new(Some("billing"), "Invoices"),
                Relation::new(Some("public"), "Invoices")
            ]
        );
        let qualified = Relation::new(Some("x"), "t");
        assert_eq!(
            path.candidates(&qualified),
            std::slice::from_ref(&qualified)
        );
        assert_eq!(SearchPath::default().schemas(), ["public"]);
        assert!(SearchPath::new::<&str>(&[]).is_err());
        assert!(SearchPath::new(&["\"$user\"", "public"]).is_err());
        assert!(SearchPath::new(&["a.b"]).is_err());
        assert!(SearchPath::new(&["*"]).is_err());
    }
}
