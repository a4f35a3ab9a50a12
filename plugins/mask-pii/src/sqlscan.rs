//! A small SQL tokenizer for the statement checks of [`crate::statement`].
//!
//! The gateway's analysis lists the functions a statement calls, but not the special syntax
//! forms (`SUBSTRING(x FROM 1 FOR 3)`, `OVERLAY`, `TRIM`), not casts, and not what is inside a
//! SQL-level `PREPARE`. Those matter here: they cut classified values into pieces the detectors
//! cannot recognise. This module turns the raw text into tokens (strings, comments and
//! dollar-quoted bodies skipped, identifiers folded like PostgreSQL does) and answers the few
//! questions the checks ask. It never has to understand a whole statement; where it cannot
//! read the text at all (an unterminated string or comment) it says so, and the caller refuses.

/// One token of SQL text. Literals carry no text: no check looks inside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An identifier or keyword: unquoted ones folded to lower case, quoted ones kept exactly.
    Ident { name: String, quoted: bool },
    /// A string, bit-string or dollar-quoted literal.
    Str,
    /// A numeric literal.
    Number,
    /// A parameter placeholder (`$1`).
    Param,
    /// `(`.
    Open,
    /// `)`.
    Close,
    /// `[`.
    OpenBracket,
    /// `]`.
    CloseBracket,
    /// `,`.
    Comma,
    /// `.`.
    Dot,
    /// `;`.
    Semi,
    /// `::`.
    Cast,
    /// Any other operator or punctuation (`=`, `||`, `->>`, `*`...).
    Op(String),
}

impl Tok {
    /// The folded name, if this is an unquoted identifier or keyword.
    pub fn word(&self) -> Option<&str> {
        match self {
            Tok::Ident {
                name,
                quoted: false,
            } => Some(name),
            _ => None,
        }
    }

    /// Whether this is the unquoted keyword `kw` (lower case).
    pub fn is(&self, kw: &str) -> bool {
        self.word() == Some(kw)
    }

    /// The name of an identifier, quoted or not.
    pub fn ident(&self) -> Option<&str> {
        match self {
            Tok::Ident { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Tokenizes `sql`; an error when a string, quoted identifier or comment is not terminated.
pub fn tokenize(sql: &str) -> Result<Vec<Tok>, String> {
    let b = sql.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
                loop {
                    if i + 1 >= b.len() {
                        return Err("an unterminated comment".into());
                    }
                    if b[i] == b'/' && b[i + 1] == b'*' {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b[i + 1] == b'/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                i = skip_string(b, i, false)?;
                toks.push(Tok::Str);
            }
            b'"' => {
                let (name, next) = quoted_ident(b, i)?;
                i = next;
                toks.push(Tok::Ident { name, quoted: true });
            }
            b'$' => {
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    toks.push(Tok::Param);
                } else if let Some(end) = dollar_quote(b, i)? {
                    i = end;
                    toks.push(Tok::Str);
                } else {
                    toks.push(Tok::Op("$".into()));
                    i += 1;
                }
            }
            b'(' => {
                toks.push(Tok::Open);
                i += 1;
            }
            b')' => {
                toks.push(Tok::Close);
                i += 1;
            }
            b'[' => {
                toks.push(Tok::OpenBracket);
                i += 1;
            }
            b']' => {
                toks.push(Tok::CloseBracket);
                i += 1;
            }
            b',' => {
                toks.push(Tok::Comma);
                i += 1;
            }
            b';' => {
                toks.push(Tok::Semi);
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                toks.push(Tok::Cast);
                i += 2;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number(b, i);
                toks.push(Tok::Number);
            }
            b'.' => {
                toks.push(Tok::Dot);
                i += 1;
            }
            b'0'..=b'9' => {
                i = number(b, i);
                toks.push(Tok::Number);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                // String prefixes: E'..' (backslash escapes), B'..', X'..', N'..', U&'..', U&"..".
                let next = b.get(i + 1).copied();
                if next == Some(b'\'') && matches!(c, b'e' | b'E') {
                    i = skip_string(b, i + 1, true)?;
                    toks.push(Tok::Str);
                    continue;
                }
                if next == Some(b'\'') && matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') {
                    i = skip_string(b, i + 1, false)?;
                    toks.push(Tok::Str);
                    continue;
                }
                if matches!(c, b'u' | b'U') && next == Some(b'&') {
                    match b.get(i + 2) {
                        Some(b'\'') => {
                            i = skip_string(b, i + 2, false)?;
                            toks.push(Tok::Str);
                            continue;
                        }
                        Some(b'"') => {
                            // The escapes stay unresolved: such a name never equals a plain one,
                            // which only makes a check more careful.
                            let (name, next) = quoted_ident(b, i + 2)?;
                            i = next;
                            toks.push(Tok::Ident { name, quoted: true });
                            continue;
                        }
                        _ => {}
                    }
                }
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                toks.push(Tok::Ident {
                    name: sql[start..i].to_ascii_lowercase(),
                    quoted: false,
                });
            }
            _ => {
                let start = i;
                while i < b.len() && is_op_char(b[i]) {
                    // `--` and `/*` start comments even inside an operator.
                    if i > start && (b[i..].starts_with(b"--") || b[i..].starts_with(b"/*")) {
                        break;
                    }
                    i += 1;
                }
                if i == start {
                    i += 1;
                }
                toks.push(Tok::Op(sql[start..i].to_owned()));
            }
        }
    }
    Ok(toks)
}

fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b':'
    )
}

fn number(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
        // An exponent sign: 1e-5.
        if matches!(b[i], b'e' | b'E') && matches!(b.get(i + 1), Some(b'+' | b'-')) {
            i += 1;
        }
        i += 1;
    }
    i
}

/// Skips a quoted string starting at the quote `b[i]`; `backslash` for E'' strings.
fn skip_string(b: &[u8], i: usize, backslash: bool) -> Result<usize, String> {
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err("an unterminated string".into()),
            Some(b'\\') if backslash => j += 2,
            Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
            Some(b'\'') => return Ok(j + 1),
            Some(_) => j += 1,
        }
    }
}

fn quoted_ident(b: &[u8], i: usize) -> Result<(String, usize), String> {
    let mut name = Vec::new();
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err("an unterminated quoted identifier".into()),
            Some(b'"') if b.get(j + 1) == Some(&b'"') => {
                name.push(b'"');
                j += 2;
            }
            Some(b'"') => return Ok((String::from_utf8_lossy(&name).into_owned(), j + 1)),
            Some(&c) => {
                name.push(c);
                j += 1;
            }
        }
    }
}

/// A dollar-quoted string `$tag$...$tag$` starting at `b[i]`: its end, or `None` when `$` does
/// not start one.
fn dollar_quote(b: &[u8], i: usize) -> Result<Option<usize>, String> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if b.get(j) != Some(&b'$') || b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return Ok(None);
    }
    let tag = &b[i..=j];
    let body = j + 1;
    match b[body..].windows(tag.len()).position(|w| w == tag) {
        Some(p) => Ok(Some(body + p + tag.len())),
        None => Err("an unterminated dollar-quoted string".into()),
    }
}

/// Words that may stand right before `(` without being a function call.
const NOT_CALLS: &[&str] = &[
    "all",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "between",
    "bernoulli",
    "by",
    "case",
    "cast",
    "check",
    "cluster",
    "collate",
    "conflict",
    "constraint",
    "copy",
    "cube",
    "cursor",
    "default",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "escape",
    "except",
    "exclude",
    "exists",
    "explain",
    "filter",
    "for",
    "foreign",
    "from",
    "reindex",
    "vacuum",
    "grouping",
    "group",
    "groups",
    "having",
    "if",
    "ilike",
    "in",
    "include",
    "index",
    "inherits",
    "intersect",
    "into",
    "is",
    "join",
    "key",
    "lateral",
    "like",
    "limit",
    "materialized",
    "not",
    "of",
    "offset",
    "on",
    "only",
    "operator",
    "options",
    "or",
    "order",
    "over",
    "partition",
    "primary",
    "range",
    "recursive",
    "references",
    "repeatable",
    "returning",
    "rollup",
    "row",
    "rows",
    "select",
    "set",
    "sets",
    "stdin",
    "stdout",
    "similar",
    "some",
    "system",
    "table",
    "tablesample",
    "then",
    "union",
    "unique",
    "using",
    "values",
    "view",
    "when",
    "where",
    "window",
    "with",
    "within",
    // Type names with a modifier, `varchar(3)`: casts are checked on their own.
    "bit",
    "char",
    "character",
    "dec",
    "decimal",
    "float",
    "interval",
    "nchar",
    "numeric",
    "time",
    "timestamp",
    "timestamptz",
    "timetz",
    "varbit",
    "varchar",
    "varying",
];

/// Words after which a name followed by `(` is a relation, type or routine being defined or
/// named, not a call (`INSERT INTO t (a)`, `CREATE FUNCTION f(int)`, `PREPARE p (int)`).
const NAMING: &[&str] = &[
    "as",
    "copy",
    "function",
    "into",
    "prepare",
    "procedure",
    "table",
    "trigger",
    "type",
    "view",
    "execute",
    "index",
    "aggregate",
    "operator",
    "references",
    "domain",
    "sequence",
];

/// The functions called in `toks` (qualified as written, folded), as `(schema, name)`.
///
/// A name followed by `(` is a call unless it is a keyword that takes parentheses (`IN (`,
/// `VALUES (`), a type with a modifier, a name being defined (`INSERT INTO t (`), an alias
/// with a column list (`AS x(a, b)`), or a CTE with a column list (`WITH x(a) AS (`).
pub fn calls(toks: &[Tok]) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for i in 0..toks.len() {
        if toks.get(i + 1) != Some(&Tok::Open) {
            continue;
        }
        let Tok::Ident { name, quoted } = &toks[i] else {
            continue;
        };
        let qualified = i >= 2 && toks[i - 1] == Tok::Dot && toks[i - 2].ident().is_some();
        let first = if qualified { i - 2 } else { i };
        if !quoted && !qualified && NOT_CALLS.contains(&name.as_str()) {
            continue;
        }
        if let Some(prev) = first.checked_sub(1).map(|p| &toks[p]) {
            if NAMING.iter().any(|w| prev.is(w)) {
                continue;
            }
            // `CREATE INDEX ... ON t (col)`: the table of the index, not a call.
            if prev.is("on") || (prev.is("only") && first >= 2 && toks[first - 2].is("on")) {
                let start = toks[..first]
                    .iter()
                    .rposition(|t| *t == Tok::Semi)
                    .map_or(0, |p| p + 1);
                if toks.get(start).is_some_and(|t| t.is("create"))
                    && toks[start..first].iter().any(|t| t.is("index"))
                {
                    continue;
                }
            }
            // `FROM t x(a)`, `JOIN s.t x(a)`, `FROM f() x(a)`: an alias with a column list
            // right after a relation. (Two names in a row are never a call; the word before
            // is checked too, so a keyword missing from the lists still leaves a call a call.)
            let before = first.checked_sub(2).map(|p| &toks[p]);
            let relation = is_name(prev)
                && before.is_some_and(|b| {
                    matches!(b, Tok::Comma | Tok::Dot)
                        || b.is("from")
                        || b.is("join")
                        || b.is("only")
                });
            if relation || *prev == Tok::Close {
                continue;
            }
        }
        if let Some(close) = matching_close(toks, i + 1) {
            let after = toks.get(close + 1);
            let after2 = toks.get(close + 2);
            // `WITH x(a) AS (...)`, `x(a) AS MATERIALIZED (...)`.
            if after.is_some_and(|t| t.is("as"))
                && after2.is_some_and(|t| *t == Tok::Open || t.is("materialized") || t.is("not"))
            {
                continue;
            }
        }
        let schema = qualified.then(|| toks[i - 2].ident().unwrap_or_default().to_owned());
        out.push((schema, name.clone()));
    }
    out
}

/// An identifier that can be a name (quoted, or not a keyword).
fn is_name(t: &Tok) -> bool {
    match t {
        Tok::Ident { name, quoted } => *quoted || !is_keyword(name),
        _ => false,
    }
}

/// Words that cannot be an alias or a relation name.
fn is_keyword(word: &str) -> bool {
    NOT_CALLS.contains(&word)
        || matches!(
            word,
            "call"
                | "create"
                | "alter"
                | "drop"
                | "update"
                | "insert"
                | "delete"
                | "merge"
                | "fetch"
                | "declare"
                | "explain"
                | "analyze"
                | "verbose"
                | "returns"
                | "language"
                | "at"
                | "zone"
                | "nulls"
                | "first"
                | "last"
                | "next"
                | "leading"
                | "trailing"
                | "both"
                | "isnull"
                | "notnull"
                | "true"
                | "false"
                | "null"
                | "matched"
                | "each"
                | "statement"
                | "add"
                | "hold"
                | "scroll"
                | "no"
                | "binary"
                | "insensitive"
                | "without"
                | "return"
                | "begin"
                | "raise"
                | "perform"
                | "elsif"
                | "loop"
                | "while"
                | "exit"
                | "continue"
                | "to"
                | "placing"
                | "overlaps"
                | "natural"
                | "cross"
                | "inner"
                | "outer"
                | "full"
                | "left"
                | "right"
                | "unknown"
                | "local"
                | "current"
                | "variadic"
                | "strict"
        )
}

/// The index of the `)` closing the `(` at `open`.
pub fn matching_close(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// The index of the `(` opening the `)` at `close`.
pub fn matching_open(toks: &[Tok], close: usize) -> Option<usize> {
    let mut depth = 0usize;
    for j in (0..=close).rev() {
        match toks[j] {
            Tok::Close => depth += 1,
            Tok::Open => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// One cast in the text: the tokens of its operand and the type it casts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastSite {
    /// Token range of the operand, `start..end`.
    pub operand: std::ops::Range<usize>,
    /// The target type, folded, words joined by one space (`character varying`), schema
    /// dropped; `[]` appended for an array type.
    pub target: String,
    /// The type has a modifier such as a length: `varchar(3)`.
    pub modifier: bool,
}

/// Every `x::type` and `CAST(x AS type)` in `toks`.
pub fn casts(toks: &[Tok]) -> Vec<CastSite> {
    let mut out = Vec::new();
    for i in 0..toks.len() {
        if toks[i] == Tok::Cast {
            let operand = operand_before(toks, i);
            if let Some((target, modifier, _)) = type_at(toks, i + 1) {
                out.push(CastSite {
                    operand,
                    target,
                    modifier,
                });
            }
        } else if toks[i].is("cast") && toks.get(i + 1) == Some(&Tok::Open) {
            let Some(close) = matching_close(toks, i + 1) else {
                continue;
            };
            // The last AS at depth 1 separates the operand from the type.
            let mut depth = 0usize;
            let mut as_at = None;
            for (j, t) in toks.iter().enumerate().take(close).skip(i + 1) {
                match t {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    t if depth == 1 && t.is("as") => as_at = Some(j),
                    _ => {}
                }
            }
            if let Some(a) = as_at {
                if let Some((target, modifier, _)) = type_at(toks, a + 1) {
                    out.push(CastSite {
                        operand: i + 2..a,
                        target,
                        modifier,
                    });
                }
            }
        }
    }
    out
}

/// The operand of the `::` at `cast`: a parenthesised expression or call (with its name), a
/// qualified name, a literal, or a chain of earlier casts ending in one of those.
fn operand_before(toks: &[Tok], cast: usize) -> std::ops::Range<usize> {
    let end = cast;
    let mut start = cast;
    while let Some(last) = start.checked_sub(1) {
        match &toks[last] {
            Tok::Close | Tok::CloseBracket => {
                let open = if toks[last] == Tok::Close {
                    matching_open(toks, last)
                } else {
                    let mut depth = 0usize;
                    (0..=last).rev().find(|&j| match toks[j] {
                        Tok::CloseBracket => {
                            depth += 1;
                            false
                        }
                        Tok::OpenBracket => {
                            depth -= 1;
                            depth == 0
                        }
                        _ => false,
                    })
                };
                let Some(open) = open else {
                    return 0..end;
                };
                // `agg(x) FILTER (WHERE ..)::int`, `f(x) OVER (..)::int`: the cast applies to
                // the call's value, not to what the clause compares.
                if open > 0 && (toks[open - 1].is("filter") || toks[open - 1].is("over")) {
                    return operand_before(toks, open - 1);
                }
                start = open;
                // A call or an array subscript: take the callee or subscripted expression too.
                if start > 0
                    && matches!(
                        toks[start - 1],
                        Tok::Ident { .. } | Tok::Close | Tok::CloseBracket
                    )
                {
                    continue;
                }
            }
            Tok::Ident { .. } | Tok::Str | Tok::Number | Tok::Param => {
                start = last;
                // Qualified names: a.b.c
                while start >= 2 && toks[start - 1] == Tok::Dot && toks[start - 2].ident().is_some()
                {
                    start -= 2;
                }
                // A type name in a cast chain (`x::text::int`): go on to x.
                if start >= 1 && toks[start - 1] == Tok::Cast {
                    start -= 1;
                    continue;
                }
            }
            _ => {}
        }
        // After a complete primary, an earlier `::` continues the chain.
        if start >= 1 && toks[start - 1] == Tok::Cast {
            start -= 1;
            continue;
        }
        break;
    }
    start..end
}

/// The type name starting at `toks[i]`: (folded name, has a modifier, index after it).
fn type_at(toks: &[Tok], i: usize) -> Option<(String, bool, usize)> {
    let mut j = i;
    let mut name = toks.get(j)?.ident()?.to_owned();
    j += 1;
    // Drop a schema: pg_catalog.int4
    while toks.get(j) == Some(&Tok::Dot) {
        name = toks.get(j + 1)?.ident()?.to_owned();
        j += 2;
    }
    // Multi-word names.
    const SECOND: &[(&str, &str)] = &[
        ("character", "varying"),
        ("double", "precision"),
        ("bit", "varying"),
        ("national", "character"),
    ];
    for (a, b) in SECOND {
        if name == *a && toks.get(j).is_some_and(|t| t.is(b)) {
            name = format!("{a} {b}");
            j += 1;
        }
    }
    let mut modifier = false;
    if toks.get(j) == Some(&Tok::Open) {
        let close = matching_close(toks, j)?;
        modifier = true;
        j = close + 1;
    }
    if matches!(name.as_str(), "timestamp" | "time")
        && toks.get(j).is_some_and(|t| t.is("with") || t.is("without"))
    {
        j += 3; // with/without time zone
    }
    let mut array = false;
    while toks.get(j) == Some(&Tok::OpenBracket) {
        array = true;
        j += 1;
        while toks.get(j).is_some_and(|t| *t != Tok::CloseBracket) {
            j += 1;
        }
        j += 1;
    }
    if array {
        name.push_str("[]");
    }
    Some((name, modifier, j))
}

/// The query of a SQL-level `DECLARE name ... CURSOR ... FOR query` or `PREPARE name [(types)]
/// AS query` starting at `toks[0]`: the index of its first token.
pub fn inner_query(toks: &[Tok]) -> Option<usize> {
    let first = toks.first()?;
    if first.is("declare") {
        toks.iter().position(|t| t.is("for")).map(|p| p + 1)
    } else if first.is("prepare") {
        let mut j = 2;
        if toks.get(j) == Some(&Tok::Open) {
            j = matching_close(toks, j)? + 1;
        }
        toks.get(j).filter(|t| t.is("as")).map(|_| j + 1)
    } else {
        None
    }
}

/// Whether the query at `toks[start..]` returns only plain columns of the relations it reads:
/// `TABLE t`, or one `SELECT` whose output list holds only `*`, `t.*` and qualified or
/// unqualified column names (with aliases), read from relations (no subquery or function in
/// FROM), with no set operation and no `WITH`. PostgreSQL names the source table of each such
/// column in the RowDescription, so its lineage survives a cursor or a prepared statement.
/// `row_names` are names that denote a whole row (the relations read and their aliases): an
/// output item that is one of them is a whole-row value, not a plain column.
pub fn is_plain_query(toks: &[Tok], start: usize, row_names: &[String]) -> bool {
    let q = &toks[start..];
    let end = q.iter().position(|t| *t == Tok::Semi).unwrap_or(q.len());
    let q = &q[..end];
    match q.first() {
        Some(t) if t.is("table") => {
            return q[1..]
                .iter()
                .all(|t| matches!(t, Tok::Ident { .. } | Tok::Dot) && !t.is("only"))
        }
        Some(t) if t.is("select") => {}
        _ => return false,
    }
    if q[1..].iter().any(|t| {
        t.is("select")
            || t.is("union")
            || t.is("intersect")
            || t.is("except")
            || t.is("with")
            || t.is("values")
            || t.is("lateral")
    }) {
        return false;
    }
    let Some(from) = q.iter().position(|t| t.is("from")) else {
        return false;
    };
    // The output list: items separated by commas, each `*`, `a.*`, `a`, `a.b` [AS alias].
    let mut j = 1;
    if q.get(j).is_some_and(|t| t.is("distinct") || t.is("all")) {
        j += 1;
    }
    for item in q[j..from].split(|t| *t == Tok::Comma) {
        let mut k = 0;
        let mut parts = 0;
        let mut star = false;
        loop {
            match item.get(k) {
                Some(Tok::Op(op)) if op == "*" => {
                    k += 1;
                    star = true;
                    break;
                }
                Some(Tok::Ident { .. }) => {
                    parts += 1;
                    k += 1;
                    if item.get(k) == Some(&Tok::Dot) {
                        k += 1;
                        continue;
                    }
                    break;
                }
                _ => return false,
            }
        }
        if !star
            && parts == 1
            && item[0]
                .ident()
                .is_some_and(|n| row_names.iter().any(|r| r == n))
        {
            return false;
        }
        match &item[k..] {
            [] => {}
            [alias] if alias.ident().is_some() => {}
            [kw, alias] if kw.is("as") && alias.ident().is_some() => {}
            _ => return false,
        }
    }
    // A function or subquery in FROM: `FROM f(x)`, `JOIN (...)`.
    for (k, t) in q.iter().enumerate().skip(from) {
        if *t == Tok::Open {
            let prev = &q[k - 1];
            if prev.is("from") || prev.is("join") || *prev == Tok::Comma {
                return false;
            }
            if let Tok::Ident { name, .. } = prev {
                // `FROM generate_series(1, 3)` or `JOIN f(x)` (but not `USING (id)`, `IN (...)`).
                if !is_keyword(name) && k >= 2 {
                    let before = &q[k - 2];
                    if before.is("from") || before.is("join") || *before == Tok::Comma {
                        return false;
                    }
                    if *before == Tok::Dot {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Names that denote a whole row in the statement: each relation in `relations` (last part of
/// the name) and the alias it is given in the text (`customers c`, `customers AS c`).
pub fn row_names(toks: &[Tok], relations: &[String]) -> Vec<String> {
    let mut names: Vec<String> = relations.to_vec();
    for i in 0..toks.len() {
        let Some(name) = toks[i].ident() else {
            continue;
        };
        if !relations.iter().any(|r| r == name) || toks.get(i + 1) == Some(&Tok::Dot) {
            continue;
        }
        let mut j = i + 1;
        if toks.get(j).is_some_and(|t| t.is("as")) {
            j += 1;
        }
        if let Some(Tok::Ident {
            name: alias,
            quoted,
        }) = toks.get(j)
        {
            if *quoted || !is_keyword(alias) {
                names.push(alias.clone());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// One assignment of an `UPDATE ... SET`: the columns assigned and what the value reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// The columns assigned (`a`, or `a, b` in `(a, b) = (...)`).
    pub targets: Vec<String>,
    /// Names the value refers to: columns (last part of a qualified name) and whole rows.
    pub sources: Vec<String>,
    /// The value holds a subquery.
    pub subquery: bool,
}

/// The assignments of an `UPDATE ... SET ...` statement; `None` when `toks` is not an UPDATE.
pub fn update_assignments(toks: &[Tok]) -> Option<Vec<Assignment>> {
    if !toks.first()?.is("update") {
        return None;
    }
    let mut depth = 0usize;
    let mut set = None;
    for (j, t) in toks.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.saturating_sub(1),
            t if depth == 0 && t.is("set") => {
                set = Some(j);
                break;
            }
            _ => {}
        }
    }
    let mut out = vec![Assignment::default()];
    let mut depth = 0usize;
    let mut in_value = false;
    for j in set? + 1..toks.len() {
        let t = &toks[j];
        let current = out.last_mut().expect("one assignment at least");
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.saturating_sub(1),
            Tok::Semi => break,
            Tok::Comma if depth == 0 => {
                in_value = false;
                out.push(Assignment::default());
            }
            Tok::Op(op) if depth == 0 && op == "=" && !in_value => in_value = true,
            t if depth == 0 && (t.is("where") || t.is("from") || t.is("returning")) => break,
            Tok::Ident { name, quoted } if !in_value => {
                // `SET a = ...`, `SET (a, b) = ...`, `SET a[1] = ...`, `SET a.f = ...`.
                let column = toks[j - 1] != Tok::Dot && (*quoted || !is_keyword(name));
                current.targets.extend(column.then(|| name.clone()));
            }
            Tok::Ident { name, quoted } => {
                if t.is("select") {
                    current.subquery = true;
                    continue;
                }
                let call = toks.get(j + 1) == Some(&Tok::Open);
                let qualifier = toks.get(j + 1) == Some(&Tok::Dot);
                let type_name = toks[j - 1] == Tok::Cast;
                let value_word = !quoted && is_value_word(name);
                if !call && !qualifier && !type_name && !value_word {
                    current.sources.push(name.clone());
                }
            }
            _ => {}
        }
    }
    out.retain(|a| !a.targets.is_empty() || !a.sources.is_empty() || a.subquery);
    Some(out)
}

/// Words that are values or parts of expressions, not column references.
fn is_value_word(word: &str) -> bool {
    matches!(
        word,
        "null"
            | "true"
            | "false"
            | "default"
            | "current_date"
            | "current_time"
            | "current_timestamp"
            | "localtime"
            | "localtimestamp"
            | "current_user"
            | "session_user"
            | "current_role"
            | "user"
            | "and"
            | "or"
            | "not"
            | "is"
            | "case"
            | "when"
            | "then"
            | "else"
            | "end"
            | "interval"
            | "date"
            | "time"
            | "timestamp"
            | "with"
            | "without"
            | "zone"
            | "at"
            | "array"
            | "row"
            | "in"
            | "like"
            | "ilike"
            | "between"
            | "distinct"
            | "from"
            | "as"
            | "varying"
            | "precision"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<String> {
        calls(&tokenize(sql).unwrap())
            .into_iter()
            .map(|(s, n)| match s {
                Some(s) => format!("{s}.{n}"),
                None => n,
            })
            .collect()
    }

    #[test]
    fn literals_comments_and_quoted_names_are_skipped_or_kept() {
        let toks = tokenize(
            "SELECT 'substr(x)', E'it\\'s', $$ left(a) $$, $f$ x $f$, /* a /* nested */ b */ \"Upper\"(x) -- reverse(y)\n, U&\"d\\0061\", $1",
        )
        .unwrap();
        assert_eq!(
            toks.iter().filter(|t| **t == Tok::Str).count(),
            4,
            "{toks:?}"
        );
        assert_eq!(
            names("SELECT 'substr(x)', \"Upper\"(x) -- reverse(y)"),
            ["Upper"]
        );
        assert!(toks.contains(&Tok::Param));
        for bad in [
            "SELECT 'x",
            "SELECT \"x",
            "SELECT /* x",
            "SELECT $a$ x",
            "SELECT E'\\'",
        ] {
            assert!(tokenize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn calls_include_special_forms_and_skip_keywords_types_and_definitions() {
        assert_eq!(
            names("SELECT substring(email from 1 for 3), TRIM(both ' ' from name), pg_catalog.upper(x) FROM t WHERE id IN (1) AND EXISTS (SELECT 1)"),
            ["substring", "trim", "pg_catalog.upper"]
        );
        assert_eq!(
            names("SELECT x::varchar(3), CAST(y AS numeric(10, 2)) FROM t"),
            Vec::<String>::new()
        );
        assert_eq!(
            names("INSERT INTO t (a, b) VALUES (1, 2)"),
            Vec::<String>::new()
        );
        assert_eq!(
            names("WITH x(a) AS (SELECT 1), y (b) AS MATERIALIZED (SELECT 2) SELECT * FROM x"),
            Vec::<String>::new()
        );
        assert_eq!(
            names("SELECT * FROM t AS x(a, b) JOIN u y(c) USING (id)"),
            Vec::<String>::new()
        );
        assert_eq!(
            names("SELECT * FROM generate_series(1, 3) g, LATERAL unnest(arr) u"),
            ["generate_series", "unnest"]
        );
        assert_eq!(names("CALL do_it(1)"), ["do_it"]);
        assert_eq!(
            names("CREATE UNIQUE INDEX i ON ONLY t (a); SELECT 1 FROM a JOIN b ON f(a.x) = b.y"),
            ["f"]
        );
        assert_eq!(
            names("PREPARE p (int) AS SELECT left(name, 2) FROM t"),
            ["left"]
        );
        assert_eq!(
            names("SELECT count(*) OVER (PARTITION BY a) FILTER (WHERE b) FROM t"),
            ["count"]
        );
    }

    fn cast_list(sql: &str) -> Vec<(String, String, bool)> {
        let toks = tokenize(sql).unwrap();
        casts(&toks)
            .into_iter()
            .map(|c| {
                let operand: Vec<String> = toks[c.operand.clone()]
                    .iter()
                    .map(|t| match t {
                        Tok::Ident { name, .. } => name.clone(),
                        Tok::Cast => "::".into(),
                        Tok::Open => "(".into(),
                        Tok::Close => ")".into(),
                        Tok::Dot => ".".into(),
                        Tok::Op(o) => o.clone(),
                        _ => "_".into(),
                    })
                    .collect();
                (operand.join(" "), c.target, c.modifier)
            })
            .collect()
    }

    #[test]
    fn casts_find_their_operand_and_target() {
        assert_eq!(
            cast_list("SELECT c.ssn::int, (email)::varchar(3), lower(name)::character varying(2), x::text::int, arr[1]::int8 FROM t"),
            [
                ("c . ssn".to_owned(), "int".to_owned(), false),
                ("( email )".into(), "varchar".into(), true),
                ("lower ( name )".into(), "character varying".into(), true),
                ("x".into(), "text".into(), false),
                ("x :: text".into(), "int".into(), false),
                ("arr _ _ _".into(), "int8".into(), false),
            ]
        );
        assert_eq!(
            cast_list("SELECT count(*) FILTER (WHERE name = 'x')::int, max(ssn) OVER (ORDER BY name)::int FROM t"),
            [
                ("count ( * )".to_owned(), "int".to_owned(), false),
                ("max ( ssn )".into(), "int".into(), false),
            ]
        );
        assert_eq!(
            cast_list("SELECT CAST(name || 'x' AS pg_catalog.bpchar(4)), CAST(a AS int[]), 'x'::\"char\", t::timestamp with time zone FROM t"),
            [
                ("name || _".to_owned(), "bpchar".to_owned(), true),
                ("a".into(), "int[]".into(), false),
                ("_".into(), "char".into(), false),
                ("t".into(), "timestamp".into(), false),
            ]
        );
    }

    #[test]
    fn plain_queries_keep_their_lineage() {
        let rows = ["customers".to_owned(), "c".to_owned()];
        let plain = |sql: &str| {
            let toks = tokenize(sql).unwrap();
            is_plain_query(&toks, inner_query(&toks).unwrap(), &rows)
        };
        assert!(plain("DECLARE k CURSOR FOR SELECT * FROM customers"));
        assert!(plain("DECLARE k SCROLL CURSOR WITH HOLD FOR SELECT c.email AS e, name n, c.* FROM public.customers c JOIN orders o USING (id) WHERE id IN (1, 2) ORDER BY 1"));
        assert!(plain(
            "PREPARE p (int) AS SELECT DISTINCT email FROM customers WHERE id = $1"
        ));
        assert!(plain("DECLARE k CURSOR FOR TABLE customers"));
        assert!(!plain(
            "DECLARE k CURSOR FOR SELECT upper(name) FROM customers"
        ));
        assert!(!plain(
            "DECLARE k CURSOR FOR SELECT name || '' FROM customers"
        ));
        assert!(!plain("DECLARE k CURSOR FOR SELECT c FROM customers c"));
        assert!(!plain(
            "DECLARE k CURSOR FOR SELECT n FROM (SELECT upper(name) n FROM customers) s"
        ));
        assert!(!plain(
            "DECLARE k CURSOR FOR SELECT email FROM customers UNION SELECT 'x'"
        ));
        assert!(!plain(
            "DECLARE k CURSOR FOR WITH x AS (SELECT 1) SELECT * FROM x"
        ));
        assert!(!plain(
            "DECLARE k CURSOR FOR SELECT x FROM unnest(array['a']) x"
        ));
        assert!(!plain(
            "DECLARE k CURSOR FOR SELECT email::text FROM customers"
        ));
        assert!(!plain("PREPARE p AS VALUES (1)"));
    }

    #[test]
    fn row_names_include_aliases() {
        let toks =
            tokenize("SELECT c, o FROM public.customers c JOIN orders AS o ON true, customers")
                .unwrap();
        let names = row_names(&toks, &["customers".into(), "orders".into()]);
        assert_eq!(names, ["c", "customers", "o", "orders"]);
    }

    #[test]
    fn update_assignments_name_targets_and_sources() {
        let check = |sql: &str| update_assignments(&tokenize(sql).unwrap());
        let a = |targets: &[&str], sources: &[&str], subquery: bool| Assignment {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            subquery,
        };
        assert_eq!(
            check("UPDATE customers SET phone = $1, updated_at = now(), n = 'x'::text WHERE email = $2").unwrap(),
            [a(&["phone"], &[], false), a(&["updated_at"], &[], false), a(&["n"], &[], false)]
        );
        assert_eq!(
            check("UPDATE customers SET (a, b) = (1, DEFAULT) RETURNING email").unwrap(),
            [a(&["a", "b"], &[], false)]
        );
        assert_eq!(
            check("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2").unwrap(),
            [a(&["abalance"], &["abalance"], false)]
        );
        assert_eq!(
            check("UPDATE customers SET notes = name").unwrap(),
            [a(&["notes"], &["name"], false)]
        );
        assert_eq!(
            check("UPDATE customers SET notes = lower(c.name) || c FROM customers c").unwrap(),
            [a(&["notes"], &["name", "c"], false)]
        );
        assert_eq!(
            check("UPDATE t SET a = (SELECT 1)").unwrap(),
            [a(&["a"], &[], true)]
        );
        assert_eq!(check("SELECT 1"), None);
    }
}
