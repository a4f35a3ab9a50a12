//! The few facts guardrails needs that the analysis does not carry: which parameter a `SET`
//! changes, and which SQL-level prepared statement `PREPARE`, `EXECUTE` and `DEALLOCATE` name.
//!
//! They are read from the query's fingerprint, not from the raw SQL: the gateway has already
//! removed comments, replaced every literal (plain, `E''` and dollar-quoted strings, numbers) by
//! `?`, folded unquoted words to lower case and collapsed whitespace. What is left is words,
//! `"quoted identifiers"` and punctuation, so a quoted identifier is the only place a `;` can
//! hide. Anything that does not read as expected is `None`, and the caller fails closed.

/// The fingerprint of each statement, in order, when the fingerprint splits into exactly as
/// many statements as the analysis has. A `;` inside parentheses (`CREATE RULE ... DO (a; b)`)
/// does not end a statement.
pub fn split(fingerprint: &str, statements: usize) -> Option<Vec<&str>> {
    let mut pieces = Vec::with_capacity(statements);
    let mut quoted = false;
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in fingerprint.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ';' if !quoted && depth == 0 => {
                pieces.push(fingerprint[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(fingerprint[start..].trim());
    pieces.retain(|p| !p.is_empty());
    (pieces.len() == statements && !quoted).then_some(pieces)
}

/// One token of a statement's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted word (already lower-case).
    Word(String),
    /// A quoted identifier, without its quotes.
    Quoted(String),
    /// Any other character outside quotes: `(`, `)`, `,`, `=`, `?`...
    Punct(char),
}

fn tokens(piece: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = piece.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut word = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            word.push('"');
                        }
                        '"' => break,
                        c => word.push(c),
                    }
                }
                out.push(Token::Quoted(word));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek() {
                    if !(c.is_alphanumeric() || c == '_' || c == '$') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
            c => out.push(Token::Punct(c)),
        }
    }
    out
}

/// A word or quoted identifier.
fn word(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token::Word(w) | Token::Quoted(w)) => Some(w),
        _ => None,
    }
}

/// The parameter a `SET [SESSION | LOCAL] name ...` changes, lower-cased (PostgreSQL compares
/// parameter names ignoring case, quoted or not).
pub fn set_parameter(piece: &str) -> Option<String> {
    let t = tokens(piece);
    if word(t.first())? != "set" {
        return None;
    }
    let mut i = 1;
    if matches!(word(t.get(i)), Some("session" | "local")) {
        i += 1;
    }
    Some(word(t.get(i))?.to_lowercase())
}

/// The statement name of `PREPARE name [(types)] AS ...`.
pub fn prepared_name(piece: &str) -> Option<String> {
    let t = tokens(piece);
    (word(t.first())? == "prepare").then(|| word(t.get(1)).map(str::to_owned))?
}

/// The statement name `EXECUTE name [(args)]` runs, also under `EXPLAIN [(options)]
/// [ANALYZE] [VERBOSE]`. `None` if the statement executes no prepared statement.
pub fn executed_name(piece: &str) -> Option<String> {
    let t = tokens(piece);
    let mut i = 0;
    if word(t.first()) == Some("explain") {
        i = 1;
        if t.get(i) == Some(&Token::Punct('(')) {
            let close = t[i..].iter().position(|t| *t == Token::Punct(')'))?;
            i += close + 1;
        }
        while matches!(word(t.get(i)), Some("analyze" | "analyse" | "verbose")) {
            i += 1;
        }
    }
    (word(t.get(i))? == "execute").then(|| word(t.get(i + 1)).map(str::to_owned))?
}

/// What a `DEALLOCATE [PREPARE] name | ALL` removes.
#[derive(Debug, PartialEq, Eq)]
pub enum Deallocate {
    /// One prepared statement.
    Name(String),
    /// Every prepared statement of the session.
    All,
}

/// What `DEALLOCATE` (or `DISCARD ALL`) removes; `None` for other statements.
pub fn deallocated(piece: &str) -> Option<Deallocate> {
    let t = tokens(piece);
    match word(t.first())? {
        "discard" if word(t.get(1)) == Some("all") => Some(Deallocate::All),
        "deallocate" => {
            let i = if word(t.get(1)) == Some("prepare") {
                2
            } else {
                1
            };
            match t.get(i) {
                Some(Token::Word(w)) if w == "all" => Some(Deallocate::All),
                other => word(other).map(|name| Deallocate::Name(name.to_owned())),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_split_outside_quoted_identifiers() {
        let fp = "prepare \"a;b\" as select ?; execute \"a;b\"(?); set search_path = public";
        assert_eq!(
            split(fp, 3).unwrap(),
            [
                "prepare \"a;b\" as select ?",
                "execute \"a;b\"(?)",
                "set search_path = public"
            ]
        );
        assert!(split(fp, 2).is_none());
        let rule =
            "create rule r as on insert to t do also (delete from a; delete from b); set x = ?";
        assert_eq!(split(rule, 2).unwrap()[1], "set x = ?");
        assert!(split("select \"open", 1).is_none());
    }

    #[test]
    fn set_names_its_parameter() {
        assert_eq!(
            set_parameter("set search_path to a, b").as_deref(),
            Some("search_path")
        );
        assert_eq!(
            set_parameter("set local \"Search_Path\" = ?").as_deref(),
            Some("search_path")
        );
        assert_eq!(
            set_parameter("set session statement_timeout = ?").as_deref(),
            Some("statement_timeout")
        );
        assert_eq!(set_parameter("set time zone ?").as_deref(), Some("time"));
        assert_eq!(set_parameter("select ?"), None);
    }

    #[test]
    fn prepared_statement_names_are_found_where_they_run() {
        assert_eq!(
            prepared_name("prepare p (int) as delete from t where id = $1").as_deref(),
            Some("p")
        );
        assert_eq!(
            prepared_name("prepare \"My Stmt\" as select ?").as_deref(),
            Some("My Stmt")
        );
        assert_eq!(executed_name("execute p(?)").as_deref(), Some("p"));
        assert_eq!(executed_name("execute p").as_deref(), Some("p"));
        assert_eq!(
            executed_name("explain analyze execute \"P\"(?)").as_deref(),
            Some("P")
        );
        assert_eq!(
            executed_name("explain (analyze, buffers) execute p").as_deref(),
            Some("p")
        );
        assert_eq!(executed_name("explain analyze select * from execute"), None);
        assert_eq!(
            deallocated("deallocate p"),
            Some(Deallocate::Name("p".into()))
        );
        assert_eq!(
            deallocated("deallocate prepare \"all\""),
            Some(Deallocate::Name("all".into()))
        );
        assert_eq!(deallocated("deallocate all"), Some(Deallocate::All));
        assert_eq!(deallocated("discard all"), Some(Deallocate::All));
        assert_eq!(deallocated("discard plans"), None);
    }
}
