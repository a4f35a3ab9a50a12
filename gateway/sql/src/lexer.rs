//! A byte lexer that follows PostgreSQL's `scan.l`: it finds statement boundaries and produces
//! the literal-free fingerprint. It never fails: malformed input only sets flags.

use crate::LexOptions;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Whitespace or a comment.
    Space,
    /// Unquoted identifier or keyword.
    Word,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// Any string form, dollar-quoted string or number.
    Literal,
    /// `$n`.
    Param,
    Semicolon,
    /// Any other single byte.
    Op,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Token {
    pub kind: Tok,
    pub start: usize,
    pub end: usize,
}

/// What the lexer noticed besides tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LexFlags {
    /// A quote, dollar quote or comment ran to the end of the text.
    pub unterminated: bool,
    /// standard_conforming_strings=off and a plain or `N''` string holds a backslash.
    pub backslash_in_plain_string: bool,
    /// A `?` operator outside literals: it would read like the literal placeholder.
    pub question_operator: bool,
    /// A plain string would end elsewhere had standard_conforming_strings been off (`'a\'...`).
    /// The setting can change in the middle of a pipeline, before the server reports it.
    pub depends_on_string_mode: bool,
    /// A non-ASCII byte right before a backslash: in client encodings such as SJIS or BIG5 the
    /// backslash is part of a multibyte character, so the server would read the quoting
    /// differently.
    pub multibyte_backslash: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `''` doubles a quote; backslash is an ordinary character.
    Standard,
    /// Backslash escapes the next byte (`E''`, or plain strings when standard_conforming_strings=off).
    Backslash,
    /// `B''` and `X''`: the first quote ends the literal.
    Bits,
}

pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    standard_strings: bool,
    pub flags: LexFlags,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str, opts: LexOptions) -> Self {
        Lexer {
            src: src.as_bytes(),
            pos: 0,
            standard_strings: opts.standard_conforming_strings,
            flags: LexFlags::default(),
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn plain_string(&mut self, body: usize) -> usize {
        if self.standard_strings {
            let end = self.string(body, Quoting::Standard);
            if self.src[body..end].contains(&b'\\') {
                let flags = self.flags;
                let other = self.string(body, Quoting::Backslash);
                self.flags = flags;
                if other != end {
                    self.flags.depends_on_string_mode = true;
                }
            }
            end
        } else {
            let end = self.string(body, Quoting::Backslash);
            if self.src[body..end].contains(&b'\\') {
                self.flags.backslash_in_plain_string = true;
            }
            end
        }
    }

    /// Scans a string body starting at `i` (just past the opening quote), including PostgreSQL's
    /// continuation of a literal across a newline (`'a'\n'b'` is one literal, with the same
    /// escaping rules as its first part). Returns the end offset.
    fn string(&mut self, mut i: usize, quoting: Quoting) -> usize {
        let s = self.src;
        loop {
            match s.get(i) {
                None => {
                    self.flags.unterminated = true;
                    return s.len();
                }
                Some(b'\\') if quoting == Quoting::Backslash => i += 2,
                Some(b'\'') if quoting != Quoting::Bits && s.get(i + 1) == Some(&b'\'') => i += 2,
                Some(b'\'') => match self.continuation(i + 1) {
                    Some(next) => i = next,
                    None => return i + 1,
                },
                Some(_) => i += 1,
            }
        }
    }

    /// PostgreSQL's `quotecontinue`: horizontal space or `--` comments, a newline, any space or
    /// comment lines, then a quote. Returns the offset just past that quote.
    fn continuation(&self, mut i: usize) -> Option<usize> {
        let s = self.src;
        loop {
            match s.get(i) {
                Some(b' ' | b'\t' | 0x0b | 0x0c) => i += 1,
                Some(b'-') if s.get(i + 1) == Some(&b'-') => i = line_end(s, i),
                Some(b'\n' | b'\r') => break,
                _ => return None,
            }
        }
        loop {
            match s.get(i) {
                Some(b) if is_space(*b) => i += 1,
                Some(b'-') if s.get(i + 1) == Some(&b'-') => i = line_end(s, i),
                Some(b'\'') => return Some(i + 1),
                _ => return None,
            }
        }
    }

    fn block_comment(&mut self, mut i: usize) -> usize {
        let s = self.src;
        let mut depth = 1u32;
        while i < s.len() {
            match (s[i], self.at(i + 1)) {
                (b'/', b'*') => {
                    depth += 1;
                    i += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        self.flags.unterminated = true;
        s.len()
    }

    fn quoted_ident(&mut self, mut i: usize) -> usize {
        let s = self.src;
        loop {
            match s.get(i) {
                None => {
                    self.flags.unterminated = true;
                    return s.len();
                }
                Some(b'"') if s.get(i + 1) == Some(&b'"') => i += 2,
                Some(b'"') => return i + 1,
                Some(_) => i += 1,
            }
        }
    }

    /// `$tag$...$tag$` starting at `start`; `None` when `start` does not open a dollar quote.
    fn dollar_quote(&mut self, start: usize) -> Option<usize> {
        let s = self.src;
        let mut i = start + 1;
        if i < s.len() && is_ident_start(s[i]) {
            i += 1;
            while i < s.len() && is_ident_start(s[i]) | s[i].is_ascii_digit() {
                i += 1;
            }
        }
        if s.get(i) != Some(&b'$') {
            return None;
        }
        let delim = &s[start..=i];
        let mut j = i + 1;
        while j < s.len() {
            if s[j] == b'$' && s[j..].starts_with(delim) {
                return Some(j + delim.len());
            }
            j += 1;
        }
        self.flags.unterminated = true;
        Some(s.len())
    }

    /// Decimal, hexadecimal, octal and binary integers with `_` separators, decimals and
    /// exponents, as PostgreSQL 16 lexes them. Trailing junk is left for the next token.
    fn number(&self, start: usize) -> usize {
        let s = self.src;
        let radix_digit: Option<fn(u8) -> bool> = match (s[start], self.at(start + 1) | 0x20) {
            (b'0', b'x') => Some(|b: u8| b.is_ascii_hexdigit()),
            (b'0', b'o') => Some(|b: u8| (b'0'..=b'7').contains(&b)),
            (b'0', b'b') => Some(|b: u8| b == b'0' || b == b'1'),
            _ => None,
        };
        if let Some(is_digit) = radix_digit {
            let digits = digits_with_separators(s, start + 2, is_digit);
            if digits > start + 2 {
                return digits;
            }
        }
        let mut i = digits_with_separators(s, start, |b| b.is_ascii_digit());
        if self.at(i) == b'.' && self.at(i + 1) != b'.' {
            i = digits_with_separators(s, i + 1, |b| b.is_ascii_digit());
        }
        if self.at(i) | 0x20 == b'e' {
            let mut j = i + 1;
            if matches!(self.at(j), b'+' | b'-') {
                j += 1;
            }
            if self.at(j).is_ascii_digit() {
                i = digits_with_separators(s, j, |b| b.is_ascii_digit());
            }
        }
        i
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let s = self.src;
        let start = self.pos;
        let b = *s.get(start)?;
        let next = self.at(start + 1);
        let (kind, end) = match b {
            _ if is_space(b) => {
                let mut i = start + 1;
                while i < s.len() && is_space(s[i]) {
                    i += 1;
                }
                (Tok::Space, i)
            }
            b'-' if next == b'-' => (Tok::Space, line_end(s, start)),
            b'/' if next == b'*' => (Tok::Space, self.block_comment(start + 2)),
            b'\'' => (Tok::Literal, self.plain_string(start + 1)),
            b'"' => (Tok::QuotedIdent, self.quoted_ident(start + 1)),
            b'$' if next.is_ascii_digit() => {
                let mut i = start + 1;
                while i < s.len() && s[i].is_ascii_digit() {
                    i += 1;
                }
                (Tok::Param, i)
            }
            b'$' => match self.dollar_quote(start) {
                Some(end) => (Tok::Literal, end),
                None => (Tok::Op, start + 1),
            },
            b'0'..=b'9' => (Tok::Literal, self.number(start)),
            b'.' if next.is_ascii_digit() => (Tok::Literal, self.number(start)),
            b';' => (Tok::Semicolon, start + 1),
            _ if is_ident_start(b) => match (b | 0x20, next, self.at(start + 2)) {
                (b'e', b'\'', _) => (Tok::Literal, self.string(start + 2, Quoting::Backslash)),
                (b'b' | b'x', b'\'', _) => (Tok::Literal, self.string(start + 2, Quoting::Bits)),
                (b'n', b'\'', _) => (Tok::Literal, self.plain_string(start + 2)),
                // U&'' is rejected by the server when standard_conforming_strings is off, so its
                // quoting only matters with it on.
                (b'u', b'&', b'\'') => (Tok::Literal, self.string(start + 3, Quoting::Standard)),
                (b'u', b'&', b'"') => (Tok::QuotedIdent, self.quoted_ident(start + 3)),
                _ => {
                    let mut i = start + 1;
                    while i < s.len() && is_ident_cont(s[i]) {
                        i += 1;
                    }
                    (Tok::Word, i)
                }
            },
            _ => (Tok::Op, start + 1),
        };
        self.pos = end;
        Some(Token { kind, start, end })
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn line_end(s: &[u8], from: usize) -> usize {
    s[from..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map_or(s.len(), |p| from + p)
}

fn digits_with_separators(s: &[u8], mut i: usize, is_digit: impl Fn(u8) -> bool) -> usize {
    while i < s.len() {
        if is_digit(s[i]) {
            i += 1;
        } else if s[i] == b'_' && i + 1 < s.len() && is_digit(s[i + 1]) {
            i += 2;
        } else {
            break;
        }
    }
    i
}

/// psql's rule for where a statement ends: a `;` outside parentheses and outside the
/// `BEGIN ... END` body of `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (SQL-standard bodies).
#[derive(Default)]
pub(crate) struct Boundary {
    parens: u32,
    begins: u32,
    leading: [u8; 4],
    words: usize,
}

impl Boundary {
    pub fn word(&mut self, w: &[u8]) {
        if self.words == 0 {
            self.leading = [0; 4];
        }
        let tracked = ["create", "function", "procedure", "or", "replace"];
        if self.words < 4 && tracked.iter().any(|t| w.eq_ignore_ascii_case(t.as_bytes())) {
            self.leading[self.words] = w[0].to_ascii_lowercase();
        }
        self.words += 1;
        let l = self.leading;
        let routine = l[0] == b'c'
            && (matches!(l[1], b'f' | b'p')
                || (l[1] == b'o' && l[2] == b'r' && matches!(l[3], b'f' | b'p')));
        if routine && self.parens == 0 {
            // CASE also closes with END; it only matters inside a BEGIN.
            let opens = w.eq_ignore_ascii_case(b"begin")
                || (w.eq_ignore_ascii_case(b"case") && self.begins > 0);
            if opens {
                self.begins += 1;
            } else if w.eq_ignore_ascii_case(b"end") && self.begins > 0 {
                self.begins -= 1;
            }
        }
    }

    pub fn op(&mut self, b: u8) {
        match b {
            b'(' => self.parens += 1,
            b')' => self.parens = self.parens.saturating_sub(1),
            _ => {}
        }
    }

    /// True when this `;` ends the statement.
    pub fn semicolon(&mut self) -> bool {
        let ends = self.parens == 0 && self.begins == 0;
        if ends {
            *self = Boundary::default();
        }
        ends
    }
}

/// Writes the fingerprint of `sql` into `out` (appending) in one pass.
pub(crate) fn normalize_into(sql: &str, opts: LexOptions, out: &mut Vec<u8>) -> LexFlags {
    let src = sql.as_bytes();
    out.reserve(src.len());
    let base = out.len();
    let mut lexer = Lexer::new(sql, opts);
    lexer.flags.multibyte_backslash = src.windows(2).any(|w| w[0] >= 0x80 && w[1] == b'\\');
    let mut boundary = Boundary::default();
    let (mut space, mut separator, mut in_statement) = (false, false, false);
    let mut after_uescape = false;
    // Whether a `-` here would be a sign rather than a binary minus: after an operator
    // (`a + -4`, `in (-1, -2)`), not after an operand or a closing bracket.
    let mut sign_position = false;
    while let Some(t) = lexer.next() {
        let text = &src[t.start..t.end];
        match t.kind {
            Tok::Space => {
                space = true;
                continue;
            }
            Tok::Semicolon if boundary.semicolon() => {
                separator |= in_statement;
                in_statement = false;
                space = false;
                continue;
            }
            _ => {}
        }
        let next = src.get(t.end).copied().unwrap_or(0);
        let signed_number = next.is_ascii_digit()
            || (next == b'.' && src.get(t.end + 1).is_some_and(u8::is_ascii_digit));
        if t.kind == Tok::Op && text[0] == b'-' && sign_position && signed_number {
            // pgbench sends `abalance + -4`: fold the sign into the literal so signs do not
            // double the number of shapes.
            continue;
        }
        if separator && out.len() > base {
            out.extend_from_slice(b"; ");
        } else if space && in_statement {
            out.push(b' ');
        }
        (space, separator, in_statement) = (false, false, true);
        match t.kind {
            Tok::Word => {
                boundary.word(text);
                let at = out.len();
                out.extend_from_slice(text);
                out[at..].make_ascii_lowercase();
            }
            Tok::QuotedIdent if text[0] != b'"' => {
                out.extend_from_slice(b"u&");
                out.extend_from_slice(&text[2..]);
            }
            // The UESCAPE character changes what a U&"" identifier spells, so it is kept.
            Tok::Literal if !after_uescape => out.push(b'?'),
            Tok::Op => {
                boundary.op(text[0]);
                lexer.flags.question_operator |= text[0] == b'?';
                out.push(text[0]);
            }
            _ => out.extend_from_slice(text),
        }
        after_uescape = t.kind == Tok::Word && text.eq_ignore_ascii_case(b"uescape");
        sign_position = t.kind == Tok::Op && !matches!(text[0], b')' | b']');
    }
    lexer.flags
}

/// Byte ranges of the non-empty statements of `sql`, without surrounding space and comments.
pub(crate) fn split(sql: &str, opts: LexOptions) -> Vec<std::ops::Range<usize>> {
    let mut pieces = Vec::new();
    let mut boundary = Boundary::default();
    let mut current: Option<std::ops::Range<usize>> = None;
    let lexer = Lexer::new(sql, opts);
    for t in lexer {
        match t.kind {
            Tok::Space => continue,
            Tok::Semicolon if boundary.semicolon() => {
                pieces.extend(current.take());
                continue;
            }
            Tok::Word => boundary.word(&sql.as_bytes()[t.start..t.end]),
            Tok::Op => boundary.op(sql.as_bytes()[t.start]),
            _ => {}
        }
        current.get_or_insert(t.start..t.end).end = t.end;
    }
    pieces.extend(current);
    pieces
}

/// Identifiers and keywords of one statement as PostgreSQL lexes them: unquoted ones as
/// written, quoted ones unescaped (`quoted` true).
pub(crate) fn words(sql: &str, opts: LexOptions) -> Vec<(String, bool)> {
    let src = sql.as_bytes();
    Lexer::new(sql, opts)
        .filter_map(|t| {
            let text = &src[t.start..t.end];
            match t.kind {
                Tok::Word => Some((String::from_utf8_lossy(text).into_owned(), false)),
                Tok::QuotedIdent => {
                    let body = &text[text.iter().position(|&b| b == b'"')? + 1..];
                    let body = body.strip_suffix(b"\"").unwrap_or(body);
                    let value = String::from_utf8_lossy(body).replace("\"\"", "\"");
                    Some((value, true))
                }
                _ => None,
            }
        })
        .collect()
}

/// The longest run of operators at one parenthesis level not broken by a comma, an upper bound
/// on how deep a chain like `a OR b OR ...` nests in sqlparser's tree.
pub(crate) fn longest_operator_chain(sql: &str, opts: LexOptions) -> usize {
    let src = sql.as_bytes();
    let mut runs = vec![0usize];
    let mut longest = 0;
    for t in Lexer::new(sql, opts) {
        let text = &src[t.start..t.end];
        let level = runs.len() - 1;
        match (t.kind, text[0]) {
            (Tok::Op, b'(') => runs.push(0),
            (Tok::Op, b')') if level > 0 => {
                runs.pop();
            }
            (Tok::Op, b',') => runs[level] = 0,
            (
                Tok::Op,
                b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%'
                | b'^' | b'&' | b'|' | b'`' | b'?',
            )
            | (Tok::Word, _)
                if t.kind == Tok::Op
                    || text.eq_ignore_ascii_case(b"and")
                    || text.eq_ignore_ascii_case(b"or") =>
            {
                runs[level] += 1;
                longest = longest.max(runs[level]);
            }
            _ => {}
        }
    }
    longest
}

/// The command words that open a statement, upper-cased (`CREATE MATERIALIZED VIEW`,
/// `ALTER SYSTEM`, `VACUUM`), skipping modifiers such as `OR REPLACE`, `TEMP` or `UNIQUE`.
pub(crate) fn leading_command(sql: &str, opts: LexOptions) -> String {
    const MODIFIERS: &[&str] = &[
        "or",
        "replace",
        "temp",
        "temporary",
        "unlogged",
        "global",
        "local",
        "unique",
        "trusted",
        "procedural",
        "recursive",
        "constraint",
    ];
    // Words that PostgreSQL's command names continue after.
    const CONTINUED: &[&str] = &[
        "materialized",
        "foreign",
        "data",
        "text",
        "search",
        "event",
        "access",
        "operator",
        "large",
        "default",
        "security",
        "import",
        "reassign",
        "refresh",
    ];
    let src = sql.as_bytes();
    let mut lexer = Lexer::new(sql, opts).filter(|t| t.kind != Tok::Space);
    let mut words = std::iter::from_fn(|| {
        let t = lexer.next().filter(|t| t.kind == Tok::Word)?;
        Some(String::from_utf8_lossy(&src[t.start..t.end]).to_ascii_lowercase())
    });
    let Some(first) = words.next() else {
        return "UNKNOWN".to_owned();
    };
    let mut command = vec![first];
    if matches!(command[0].as_str(), "create" | "alter" | "drop") {
        match words.by_ref().find(|w| !MODIFIERS.contains(&w.as_str())) {
            Some(object) => command.push(object),
            None => return command[0].to_ascii_uppercase(),
        }
    }
    while command.len() < 5 && CONTINUED.contains(&command[command.len() - 1].as_str()) {
        match words.next() {
            Some(w) => command.push(w),
            None => break,
        }
    }
    command.join(" ").to_ascii_uppercase()
}

/// A stable 64-bit hash (word-wise FNV-1a style with a murmur3 finalizer). Fingerprint ids are
/// stored by users: changing this function changes every id.
pub(crate) fn fingerprint_hash(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(PRIME)
            .rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: LexOptions = LexOptions {
        standard_conforming_strings: true,
    };
    const OFF: LexOptions = LexOptions {
        standard_conforming_strings: false,
    };

    fn norm(sql: &str, opts: LexOptions) -> (String, LexFlags) {
        let mut out = Vec::new();
        let flags = normalize_into(sql, opts, &mut out);
        (String::from_utf8(out).unwrap(), flags)
    }

    fn n(sql: &str) -> String {
        norm(sql, ON).0
    }

    fn pieces(sql: &str, opts: LexOptions) -> Vec<&str> {
        split(sql, opts).into_iter().map(|r| &sql[r]).collect()
    }

    #[test]
    fn every_string_form_becomes_one_placeholder() {
        assert_eq!(
            n(
                r"SELECT 'a''b', E'x\'y', e'\\', U&'d\0061t', B'01', x'1F', N'n', $$a'b$$, $t$ $x$ $t$"
            ),
            "select ?, ?, ?, ?, ?, ?, ?, ?, ?"
        );
    }

    #[test]
    fn numbers_become_placeholders_but_parameters_stay() {
        assert_eq!(
            n("SELECT 1, 1.5, .5, 1.5e-3, 1e10, 0x1F, 0o17, 0b101, 1_000 FROM t WHERE a = $1 AND b = $12"),
            "select ?, ?, ?, ?, ?, ?, ?, ?, ? from t where a = $1 and b = $12"
        );
        assert_eq!(n("SELECT 1..2"), "select ?.?");
        assert_eq!(
            n("UPDATE t SET a = a + -4 WHERE b IN (-1, - 2, -.5) AND c = d -1 AND e = (f)-1"),
            "update t set a = a + ? where b in (?, - ?, ?) and c = d -? and e = (f)-?"
        );
    }

    #[test]
    fn comments_are_dropped_and_whitespace_collapsed() {
        assert_eq!(
            n("  SELECT /* outer /* nested */ still */ a,\n\t-- line\n  b FROM t  "),
            "select a, b from t"
        );
        assert_eq!(n("SELECT a/**/b"), "select a b");
        assert_eq!(n("SELECT a+--c\n1"), "select a+ ?");
    }

    #[test]
    fn unquoted_names_fold_and_quoted_names_stay() {
        assert_eq!(
            n(r#"SELECT Ab, "Ab", "a""b", U&"d\0061t", café$1 FROM Sch."T""#),
            r#"select ab, "Ab", "a""b", u&"d\0061t", café$1 from sch."T""#
        );
    }

    #[test]
    fn uescape_character_is_kept() {
        assert_eq!(
            n(r#"SELECT U&"d!0061t" UESCAPE '!' FROM t"#),
            r#"select u&"d!0061t" uescape '!' from t"#
        );
    }

    #[test]
    fn statements_are_separated_and_empty_ones_dropped() {
        assert_eq!(n(";; SELECT 1 ;\n;select 2;;"), "select ?; select ?");
        assert_eq!(n(";;"), "");
    }

    #[test]
    fn escape_string_hides_no_statement() {
        let sql = r"SELECT E'\'; DROP TABLE x; --'";
        assert_eq!(n(sql), "select ?");
        assert_eq!(pieces(sql, ON), [sql]);
        // E'\'' is a complete literal, so PostgreSQL runs the DROP.
        let sql = r"SELECT E'\''; DROP TABLE x; --'";
        assert_eq!(pieces(sql, ON), [r"SELECT E'\''", "DROP TABLE x"]);
    }

    #[test]
    fn backslash_meaning_follows_standard_conforming_strings() {
        let sql = r"SELECT 'a\'; DROP TABLE x; --'";
        assert_eq!(pieces(sql, ON), [r"SELECT 'a\'", "DROP TABLE x"]);
        assert!(!norm(sql, ON).1.backslash_in_plain_string);
        let (text, flags) = norm(sql, OFF);
        assert_eq!(text, "select ?");
        assert!(flags.backslash_in_plain_string);
        assert!(
            !norm("SELECT 'plain', E'\\n'", OFF)
                .1
                .backslash_in_plain_string
        );
    }

    #[test]
    fn string_continues_across_newline_with_its_escaping() {
        assert_eq!(n("SELECT 'a'\n  'b' -- c\n"), "select ?");
        assert_eq!(n("SELECT 'a' -- c\n'b'"), "select ?");
        assert_eq!(n("SELECT 'a' 'b'"), "select ? ?");
        // The continued part keeps E'' escaping, so the semicolon stays inside the literal.
        let sql = "SELECT E'x'\n'\\'; DROP TABLE t; --'";
        assert_eq!(pieces(sql, ON), [sql]);
    }

    #[test]
    fn bit_strings_end_at_the_first_quote() {
        assert_eq!(n("SELECT B'01''10'"), "select ??");
    }

    #[test]
    fn dollar_quotes_are_not_parameters_or_identifiers() {
        assert_eq!(
            n("SELECT $1, a$b$c, $body$ DROP TABLE t; $b$ $body$"),
            "select $1, a$b$c, ?"
        );
        assert_eq!(n("SELECT $ab"), "select $ab");
        let sql = "DO $$ BEGIN DROP TABLE t; END $$; SELECT 1";
        assert_eq!(
            pieces(sql, ON),
            ["DO $$ BEGIN DROP TABLE t; END $$", "SELECT 1"]
        );
    }

    #[test]
    fn sql_standard_function_body_is_one_statement() {
        let create = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END";
        let sql = format!("{create}; SELECT 3");
        assert_eq!(pieces(&sql, ON), [create, "SELECT 3"]);
        assert_eq!(
            pieces("SELECT (1; 2); BEGIN; END", ON),
            ["SELECT (1; 2)", "BEGIN", "END"]
        );
    }

    #[test]
    fn unterminated_input_is_flagged() {
        for sql in [
            "SELECT 'abc",
            "SELECT $a$ x",
            "SELECT 1 /* open",
            "SELECT \"x",
            "SELECT E'\\",
        ] {
            assert!(norm(sql, ON).1.unterminated, "{sql}");
        }
        assert!(!norm("SELECT 'a' -- open", ON).1.unterminated);
    }

    #[test]
    fn question_operator_is_flagged() {
        assert!(norm("SELECT j ? 'k'", ON).1.question_operator);
        assert!(!norm("SELECT '?' /* ? */", ON).1.question_operator);
    }

    #[test]
    fn words_unescape_quoted_identifiers() {
        assert_eq!(
            words(r#"SELECT "a""b", x 'lit' FROM t"#, ON),
            [
                ("SELECT".into(), false),
                ("a\"b".into(), true),
                ("x".into(), false),
                ("FROM".into(), false),
                ("t".into(), false)
            ]
        );
    }

    #[test]
    fn leading_command_names_the_statement() {
        for (sql, want) in [
            ("vacuum (analyze) t", "VACUUM"),
            ("ALTER SYSTEM SET x = 1", "ALTER SYSTEM"),
            ("create or replace temp view v as select 1", "CREATE VIEW"),
            ("CREATE UNIQUE INDEX i ON t (a)", "CREATE INDEX"),
            (
                "create materialized view mv as select 1",
                "CREATE MATERIALIZED VIEW",
            ),
            ("DROP FOREIGN DATA WRAPPER w", "DROP FOREIGN DATA WRAPPER"),
            (
                "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
                "IMPORT FOREIGN SCHEMA",
            ),
            ("/* c */ (SELECT 1)", "UNKNOWN"),
        ] {
            assert_eq!(leading_command(sql, ON), want, "{sql}");
        }
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: fingerprint ids are stored by users and must not change between releases.
        assert_eq!(
            format!("{:016x}", fingerprint_hash(b"select ?")),
            "60ff0cdda84d5c30"
        );
        assert_ne!(
            fingerprint_hash(b"select ?"),
            fingerprint_hash(b"select ?;")
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"'\"$-/*;\\eEuUbBxXnN&01_.9 \n\r\t()?aZ\xc3\xa9";
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len % 40)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let sql = String::from_utf8_lossy(&bytes);
            for opts in [ON, OFF] {
                let (text, _) = norm(&sql, opts);
                assert!(text.len() <= sql.len() + 2 * sql.matches(';').count() + 1);
                for r in split(&sql, opts) {
                    assert!(sql.get(r).is_some());
                }
                let _ = (words(&sql, opts), leading_command(&sql, opts));
            }
        }
    }
}
