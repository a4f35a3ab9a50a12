//! Names in the config: lineage patterns of classes (`public.customers.email`, `*.*.ssn`) and
//! function patterns of `allow_functions` (`pg_get_*`, `app.safe_fn`).

use pgward_plugin_sdk::Relation;

/// One part of a dotted name: `*` or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Any,
    Exact(String),
}

impl Part {
    /// An empty actual name is unknown: it may be anything (fail closed).
    fn matches(&self, actual: &str) -> bool {
        match self {
            Part::Any => true,
            Part::Exact(name) => actual.is_empty() || name == actual,
        }
    }

    fn exact(&self) -> Option<&str> {
        match self {
            Part::Any => None,
            Part::Exact(name) => Some(name),
        }
    }
}

/// Splits a dotted name written as in SQL: unquoted parts folded to lower case, `"Quoted"` parts
/// kept exactly (`""` escapes a quote), unquoted `*` a wildcard.
fn split(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err("a quoted name is not closed".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c.is_whitespace() {
                    return Err(format!("unexpected {c:?} in a name"));
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() && !quoted {
            return Err("a part of the name is empty".into());
        }
        parts.push(if !quoted && part == "*" {
            Part::Any
        } else {
            Part::Exact(part)
        });
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(format!("unexpected {c:?} after a quoted name")),
        }
    }
}

/// Which source columns belong to a class: `column`, `table.column` or `schema.table.column`,
/// each part a name or `*`. Missing leading parts are `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineagePattern {
    text: String,
    schema: Part,
    table: Part,
    column: Part,
}

impl LineagePattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = split(text).map_err(|e| format!("lineage pattern {text:?}: {e}"))?;
        if parts.len() > 3 {
            return Err(format!(
                "lineage pattern {text:?} has {} parts; write column, table.column or schema.table.column",
                parts.len()
            ));
        }
        while parts.len() < 3 {
            parts.insert(0, Part::Any);
        }
        let column = parts.pop().expect("3 parts");
        let table = parts.pop().expect("3 parts");
        let schema = parts.pop().expect("3 parts");
        Ok(LineagePattern {
            text: text.to_owned(),
            schema,
            table,
            column,
        })
    }

    /// The pattern as written in the config.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether column `schema.table.column` of a result's lineage matches. An empty schema or
    /// table (the gateway could not resolve it) matches any.
    pub fn matches_column(&self, schema: &str, table: &str, column: &str) -> bool {
        self.schema.matches(schema)
            && self.table.matches(table)
            && (column.is_empty() || self.column.matches(column))
    }

    /// Whether some column of table `schema.table` may match: a whole-row source.
    pub fn matches_table(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }

    /// Whether relation `r`, as a statement names it, may hold a matching column. A relation
    /// written without a schema may be in any schema.
    pub fn matches_relation(&self, r: &Relation) -> bool {
        self.schema.matches(r.schema.as_deref().unwrap_or("")) && self.table.matches(&r.name)
    }

    /// Whether relation `r` is certainly one the pattern names: a relation written without a
    /// schema matches only a pattern whose schema part is `*` (for trust, not for masking).
    pub fn matches_relation_strictly(&self, r: &Relation) -> bool {
        let schema = match (&self.schema, r.schema.as_deref()) {
            (Part::Any, _) => true,
            (Part::Exact(p), Some(s)) => p == s,
            (Part::Exact(_), None) => false,
        };
        schema && self.table.matches(&r.name) && !r.name.is_empty()
    }

    /// The column name, unless the pattern's column part is `*`.
    pub fn column_name(&self) -> Option<&str> {
        self.column.exact()
    }
}

/// A name pattern for `allow_functions`: `name` or `schema.name`; each part may hold one `*`
/// standing for any run of characters (`pg_get_*`, `app.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionPattern {
    schema: Option<Glob>,
    name: Glob,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    prefix: String,
    /// `Some(suffix)` when the part holds a `*`.
    suffix: Option<String>,
}

impl Glob {
    fn new(part: &str) -> Result<Self, String> {
        match part.split_once('*') {
            None => Ok(Glob {
                prefix: part.to_owned(),
                suffix: None,
            }),
            Some((prefix, suffix)) if !suffix.contains('*') => Ok(Glob {
                prefix: prefix.to_owned(),
                suffix: Some(suffix.to_owned()),
            }),
            Some(_) => Err("at most one `*` per part".into()),
        }
    }

    fn matches(&self, s: &str) -> bool {
        match &self.suffix {
            None => self.prefix == s,
            Some(suffix) => {
                s.len() >= self.prefix.len() + suffix.len()
                    && s.starts_with(&self.prefix)
                    && s.ends_with(suffix.as_str())
            }
        }
    }
}

impl FunctionPattern {
    /// Parses `name`, `schema.name`, with unquoted parts folded to lower case.
    pub fn parse(text: &str) -> Result<Self, String> {
        let error = |e: &str| format!("function pattern {text:?}: {e}");
        // `*` inside a part is a glob here, not a wildcard part: split by hand.
        let raw: Vec<&str> = text.trim().split('.').collect();
        if raw.iter().any(|p| p.is_empty()) || raw.len() > 2 {
            return Err(error("write name or schema.name"));
        }
        let fold = |p: &str| -> Result<Glob, String> {
            if let Some(q) = p.strip_prefix('"') {
                let inner = q.strip_suffix('"').ok_or_else(|| error("unclosed quote"))?;
                return Ok(Glob {
                    prefix: inner.replace("\"\"", "\""),
                    suffix: None,
                });
            }
            if p.chars().any(|c| c.is_whitespace() || c == '"' || c == '(') {
                return Err(error("a name has no spaces, quotes or parentheses"));
            }
            Glob::new(&p.to_lowercase()).map_err(|e| error(&e))
        };
        Ok(match raw.as_slice() {
            [name] => FunctionPattern {
                schema: None,
                name: fold(name)?,
            },
            [schema, name] => FunctionPattern {
                schema: Some(fold(schema)?),
                name: fold(name)?,
            },
            _ => unreachable!("checked above"),
        })
    }

    /// Whether a call of `schema.name` (schema as written, `None` when unqualified) matches. A
    /// pattern without a schema matches the name in any schema.
    pub fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        if !self.name.matches(name) {
            return false;
        }
        match (&self.schema, schema) {
            (None, _) => true,
            // An unqualified call may resolve to the pattern's schema.
            (Some(_), None) => true,
            (Some(p), Some(s)) => p.matches(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_patterns_fold_pad_and_treat_unknown_parts_as_any() {
        let p = LineagePattern::parse("public.customers.email").unwrap();
        assert!(p.matches_column("public", "customers", "email"));
        assert!(!p.matches_column("public", "customers", "name"));
        assert!(!p.matches_column("other", "customers", "email"));
        assert!(p.matches_column("", "customers", "email"), "unknown schema");
        assert!(p.matches_table("public", "customers"));
        assert!(!p.matches_table("public", "orders"));

        let ssn = LineagePattern::parse("*.*.SSN").unwrap();
        assert!(ssn.matches_column("hr", "people", "ssn"));
        assert!(ssn.matches_table("any", "table"));
        assert_eq!(ssn.column_name(), Some("ssn"));

        let bare = LineagePattern::parse("y.phone").unwrap();
        assert!(bare.matches_column("x", "y", "phone"));
        let quoted = LineagePattern::parse("\"Crm\".\"People\".\"E\"\"mail\"").unwrap();
        assert!(quoted.matches_column("Crm", "People", "E\"mail"));
        assert!(!quoted.matches_column("crm", "people", "e\"mail"));
        let all = LineagePattern::parse("public.customers.*").unwrap();
        assert!(all.matches_column("public", "customers", "anything"));
        assert_eq!(all.column_name(), None);

        assert!(p.matches_relation(&Relation::new(None, "customers")));
        assert!(p.matches_relation(&Relation::new(Some("public"), "customers")));
        assert!(!p.matches_relation(&Relation::new(Some("crm"), "customers")));
        assert!(p.matches_relation_strictly(&Relation::new(Some("public"), "customers")));
        assert!(!p.matches_relation_strictly(&Relation::new(None, "customers")));
        assert!(bare.matches_relation_strictly(&Relation::new(None, "y")));

        for bad in ["", "a..b", "a.b.c.d", "\"open", "a b", "x.\"y\"z"] {
            assert!(LineagePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn function_patterns_glob_within_a_part() {
        let p = FunctionPattern::parse("pg_get_*").unwrap();
        assert!(p.matches(Some("pg_catalog"), "pg_get_viewdef"));
        assert!(p.matches(None, "pg_get_expr"));
        assert!(!p.matches(None, "pg_read_file"));
        let q = FunctionPattern::parse("App.Safe_*").unwrap();
        assert!(q.matches(Some("app"), "safe_mask"));
        assert!(q.matches(None, "safe_mask"));
        assert!(!q.matches(Some("public"), "safe_mask"));
        let any_in_schema = FunctionPattern::parse("util.*").unwrap();
        assert!(any_in_schema.matches(Some("util"), "x"));
        let has_priv = FunctionPattern::parse("has_*_privilege").unwrap();
        assert!(has_priv.matches(None, "has_table_privilege"));
        assert!(!has_priv.matches(None, "has_privilege_x"));
        for bad in ["", "a.b.c", "a**", "f(x)", "a b", "\"x"] {
            assert!(FunctionPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
