//! Content detectors: hand-written scanners that find sensitive substrings in a value.
//!
//! Each scanner walks the bytes once, allocation-free, and reports byte spans. Matches are
//! ASCII-delimited, so every span starts and ends on a UTF-8 character boundary. What each one
//! accepts, and what it deliberately does not:
//!
//! | detector | finds | does not take |
//! | --- | --- | --- |
//! | `email` | `local@domain.tld` (local part `A-Za-z0-9._%+-` or non-ASCII; a TLD of 2+ letters) | `a@b`, `user@localhost`, `@x.com` |
//! | `phone` | E.164 (`+` and 8–15 digits, separators allowed), `00`-prefixed international, NANP `(555) 123-4567` / `555-123-4567` / `1 555 123 4567`, trunk-prefixed national numbers (`020 7946 0958`, `06-12345678`: a leading 0, separators, 9–12 digits) | plain integers without separators, dates (`2024-01-15`, `01-02-2024`), versions, IP addresses |
//! | `card` | 13–19 digits, single spaces or dashes between them, first digit 2–6, Luhn-valid; also a card inside a longer run of digit groups | other lengths, Luhn failures, one unbroken run of more than 19 digits |
//! | `ssn` | `AAA-GG-SSSS` (dashes or spaces) with area not 000/666/9xx, group not 00, serial not 0000 | nine digits without separators, invalid areas/groups/serials |
//! | `iban` | country code + check digits + BBAN of the country's registered length, grouped by spaces or not, mod-97 valid | unknown countries, wrong lengths, checksum failures |
//! | `jwt` | `eyJ…​.eyJ…​.sig` (base64url header and payload, any further parts) | a lone `eyJ…` segment |
//! | `private_key` | `-----BEGIN … PRIVATE KEY-----` through its `-----END …-----` line (to the end of the value when the END line is missing) | public keys and certificates |
//! | `api_key` | well-known prefixes with a long enough body: Stripe `sk_live_`/`sk_test_`/`rk_…`/`whsec_`, GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`/`github_pat_`, GitLab `glpat-`, Slack `xoxb-`/`xoxp-`/`xoxa-`/`xoxr-`/`xoxs-`/`xapp-`, AWS `AKIA`/`ASIA` + 16, Google `AIza` + 35, OpenAI/Anthropic `sk-`, npm `npm_`, PyPI `pypi-`, Hugging Face `hf_`, SendGrid `SG.`, Shopify `shpat_`, DigitalOcean `dop_v1_`, plus `detectors.api_key_prefixes` | a prefix inside a word (`task-…`) or with a short body |

/// A kind of sensitive content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    /// A PEM private key block.
    PrivateKey = 0,
    /// A JSON Web Token.
    Jwt = 1,
    /// An API key or secret token with a well-known prefix.
    ApiKey = 2,
    /// An IBAN.
    Iban = 3,
    /// A payment card number.
    Card = 4,
    /// A US social security number.
    Ssn = 5,
    /// An email address.
    Email = 6,
    /// A phone number.
    Phone = 7,
}

impl Detector {
    /// Every detector, most specific first: where two matches overlap the earlier one names
    /// the merged span.
    pub const ALL: [Detector; 8] = [
        Detector::PrivateKey,
        Detector::Jwt,
        Detector::ApiKey,
        Detector::Iban,
        Detector::Card,
        Detector::Ssn,
        Detector::Email,
        Detector::Phone,
    ];

    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            Detector::PrivateKey => "private_key",
            Detector::Jwt => "jwt",
            Detector::ApiKey => "api_key",
            Detector::Iban => "iban",
            Detector::Card => "card",
            Detector::Ssn => "ssn",
            Detector::Email => "email",
            Detector::Phone => "phone",
        }
    }

    /// The detector a config name stands for.
    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A match: bytes `start..end` of the value, found by `detector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Which detector found it (the most specific one when matches overlapped).
    pub detector: Detector,
}

/// A set of enabled detectors with their settings.
#[derive(Debug, Clone, Default)]
pub struct Detectors {
    enabled: u8,
    /// Extra API-key prefixes from the config; bodies of at least 16 `[A-Za-z0-9_-]`.
    extra_prefixes: Vec<Vec<u8>>,
}

impl Detectors {
    /// The detectors in `set`, with extra API-key prefixes.
    pub fn new(set: impl IntoIterator<Item = Detector>, extra_prefixes: &[String]) -> Self {
        Detectors {
            enabled: set.into_iter().fold(0, |m, d| m | d.bit()),
            extra_prefixes: extra_prefixes
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Whether no detector is enabled.
    pub fn is_empty(&self) -> bool {
        self.enabled == 0
    }

    /// Whether `d` is enabled.
    pub fn has(&self, d: Detector) -> bool {
        self.enabled & d.bit() != 0
    }

    /// The same settings with only the detectors in `mask` (a bit per [`Detector`]).
    pub fn only(&self, mask: u8) -> Detectors {
        Detectors {
            enabled: self.enabled & mask,
            extra_prefixes: self.extra_prefixes.clone(),
        }
    }

    /// The bit mask of a set of detectors, for [`Detectors::only`].
    pub fn mask_of(set: impl IntoIterator<Item = Detector>) -> u8 {
        set.into_iter().fold(0, |m, d| m | d.bit())
    }

    /// Every match in `text`, sorted, overlapping matches merged, into `spans` (cleared first).
    pub fn find(&self, text: &[u8], spans: &mut Vec<Span>) {
        spans.clear();
        if self.enabled == 0 || text.is_empty() {
            return;
        }
        let profile = Profile::of(text);
        let mut push = |start: usize, end: usize, detector: Detector| {
            spans.push(Span {
                start,
                end,
                detector,
            })
        };
        if self.has(Detector::PrivateKey) && profile.dashes {
            private_keys(text, &mut push);
        }
        if self.has(Detector::Jwt) && profile.letters {
            jwts(text, &mut push);
        }
        if self.has(Detector::ApiKey) && profile.letters {
            api_keys(text, &self.extra_prefixes, &mut push);
        }
        if self.has(Detector::Iban) && profile.digits >= 2 && profile.letters {
            ibans(text, &mut push);
        }
        if self.has(Detector::Card) && profile.digits >= 13 {
            cards(text, &mut push);
        }
        if self.has(Detector::Ssn) && profile.digits >= 9 {
            ssns(text, &mut push);
        }
        if self.has(Detector::Email) && profile.at {
            emails(text, &mut push);
        }
        if self.has(Detector::Phone) && profile.digits >= 7 {
            phones(text, &mut push);
        }
        merge(spans);
    }

    /// Whether `text` holds any match (cheaper than [`Detectors::find`] when it does not).
    pub fn any(&self, text: &[u8], scratch: &mut Vec<Span>) -> bool {
        self.find(text, scratch);
        !scratch.is_empty()
    }
}

/// What a value contains, to skip scanners that cannot match.
struct Profile {
    digits: usize,
    at: bool,
    letters: bool,
    dashes: bool,
}

impl Profile {
    fn of(text: &[u8]) -> Profile {
        let mut p = Profile {
            digits: 0,
            at: false,
            letters: false,
            dashes: false,
        };
        for &c in text {
            match c {
                b'0'..=b'9' => p.digits += 1,
                b'@' => p.at = true,
                b'-' => p.dashes = true,
                _ if c.is_ascii_alphabetic() => p.letters = true,
                _ => {}
            }
        }
        p
    }
}

/// Sorts spans and merges overlapping ones into their union, named by the most specific
/// detector among them.
fn merge(spans: &mut Vec<Span>) {
    if spans.len() < 2 {
        return;
    }
    spans.sort_by_key(|s| (s.start, s.detector));
    let mut w = 0;
    for r in 1..spans.len() {
        let s = spans[r];
        if s.start < spans[w].end {
            let m = &mut spans[w];
            m.end = m.end.max(s.end);
            m.detector = m.detector.min(s.detector);
        } else {
            w += 1;
            spans[w] = s;
        }
    }
    spans.truncate(w + 1);
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

fn byte(text: &[u8], i: usize) -> u8 {
    text.get(i).copied().unwrap_or(0)
}

/// Whether the digits starting at `i` continue a number that starts before `i`: the byte
/// before is alphanumeric, or a separator right after a digit.
fn continues_number(text: &[u8], i: usize) -> bool {
    if i == 0 {
        return false;
    }
    let p = text[i - 1];
    is_alnum(p)
        || (matches!(p, b'-' | b'.' | b' ' | b'/')
            && i >= 2
            && text[i - 2].is_ascii_digit()
            && p != b' ')
}

fn emails(text: &[u8], push: &mut impl FnMut(usize, usize, Detector)) {
    let local_char = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c) || c >= 0x80;
    let label_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80;
    let mut from = 0;
    while let Some(off) = text[from..].iter().position(|&c| c == b'@') {
        let at = from + off;
        from = at + 1;
        let mut start = at;
        while start > 0 && local_char(text[start - 1]) {
            start -= 1;
        }
        while start < at && text[start] == b'.' {
            start += 1;
        }
        if start == at || text[at - 1] == b'.' {
            continue;
        }
        // Labels of the domain; the last one's leading ASCII letters are the TLD.
        let mut end = at + 1;
        let mut labels = 0;
        let mut last_label_start = end;
        loop {
            let label_start = end;
            while end < text.len() && label_char(text[end]) {
                end += 1;
            }
            if end == label_start || text[label_start] == b'-' {
                end = label_start;
                break;
            }
            labels += 1;
            last_label_start = label_start;
            if byte(text, end) == b'.' && label_char(byte(text, end + 1)) {
                end += 1;
                continue;
            }
            break;
        }
        if labels < 2 {
            continue;
        }
        let tld = text[last_label_start..end]
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        if tld < 2 {
            continue;
        }
        let end = last_label_start + tld;
        push(start, end, Detector::Email);
        from = end;
    }
}

/// Digit groups of a number written with single separators from `seps`, starting at `i`:
/// (group start, group end) pairs and the separator before each group (0 for the first).
fn digit_groups(text: &[u8], i: usize, seps: &[u8], groups: &mut Vec<(usize, usize, u8)>) {
    groups.clear();
    let mut j = i;
    let mut sep = 0;
    loop {
        let start = j;
        while j < text.len() && text[j].is_ascii_digit() {
            j += 1;
        }
        if j == start {
            break;
        }
        groups.push((start, j, sep));
        let s = byte(text, j);
        if seps.contains(&s) && byte(text, j + 1).is_ascii_digit() {
            sep = s;
            j += 1;
        } else {
            break;
        }
    }
}

fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (k, d) in digits.rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

fn cards(text: &[u8], push: &mut impl FnMut(usize, usize, Detector)) {
    let mut groups = Vec::new();
    let mut digits = Vec::with_capacity(19);
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() || continues_number(text, i) {
            i += 1;
            continue;
        }
        digit_groups(text, i, b" -", &mut groups);
        let run_end = groups.last().map_or(i + 1, |g| g.1);
        // Every window of consecutive groups holding 13-19 digits that is a valid card is
        // reported (overlaps merge): a card inside `42 4111 1111 1111 1111` is found whatever
        // the groups around it happen to add up to. One unbroken run of more than 19 digits
        // is a long number, not a card.
        for a in 0..groups.len() {
            let mut n = 0;
            for b in a..groups.len() {
                n += groups[b].1 - groups[b].0;
                if n > 19 {
                    break;
                }
                if n < 13 {
                    continue;
                }
                digits.clear();
                for g in &groups[a..=b] {
                    digits.extend_from_slice(&text[g.0..g.1]);
                }
                if (b'2'..=b'6').contains(&digits[0]) && luhn(digits.iter().copied()) {
                    push(groups[a].0, groups[b].1, Detector::Card);
                }
            }
        }
        i = run_end;
    }
}

fn ssns(text: &[u8], push: &mut impl FnMut(usize, usize, Detector)) {
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let mut i = 0;
    while i + 11 <= text.len() {
        let w = &text[i..i + 11];
        let sep = w[3];
        if !(sep == b'-' || sep == b' ')
            || w[6] != sep
            || !digits(&w[0..3])
            || !digits(&w[4..6])
            || !digits(&w[7..11])
            || continues_number(text, i)
        {
            i += 1;
            continue;
        }
        let after = byte(text, i + 11);
        let continued = is_alnum(after)
            || (matches!(after, b'-' | b'.' | b'/') && byte(text, i + 12).is_ascii_digit());
        let area = &w[0..3];
        let valid = area != b"000"
            && area != b"666"
            && area[0] != b'9'
            && &w[4..6] != b"00"
            && &w[7..11] != b"0000";
        if valid && !continued {
            push(i, i + 11, Detector::Ssn);
            i += 11;
        } else {
            i += 1;
        }
    }
}

fn phones(text: &[u8], push: &mut impl FnMut(usize, usize, Detector)) {
    let mut groups: Vec<(usize, usize, u8)> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        let plus = c == b'+' && byte(text, i + 1).is_ascii_digit();
        let paren = c == b'(' && byte(text, i + 1).is_ascii_digit();
        if !(plus || paren || c.is_ascii_digit())
            || (i > 0 && (is_alnum(text[i - 1]) || text[i - 1] == b'+'))
            || (c.is_ascii_digit() && continues_number(text, i))
        {
            i += 1;
            continue;
        }
        match phone_at(text, i, &mut groups) {
            Some(end) => {
                push(i, end, Detector::Phone);
                i = end;
            }
            None => {
                // Skip the rest of this run of digits so its tail is not read as a number.
                i += 1;
                while i < text.len() && text[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
}

/// The end of a phone number starting at `start` (`+`, `(` or a digit), if it is one.
fn phone_at(text: &[u8], start: usize, groups: &mut Vec<(usize, usize, u8)>) -> Option<usize> {
    let plus = text[start] == b'+';
    let mut j = start + usize::from(plus);
    // Groups of digits separated by one of ` -.`, the first (or, after a country code, the
    // second) possibly in parentheses: (555) 123-4567, +44 (0)20 7946 0958.
    groups.clear();
    let mut parens = 0;
    let mut sep = 0u8;
    loop {
        let open = byte(text, j) == b'(';
        if open {
            parens += 1;
            j += 1;
        }
        let gs = j;
        while j < text.len() && text[j].is_ascii_digit() {
            j += 1;
        }
        if j == gs {
            return None;
        }
        groups.push((gs, j, sep));
        if open {
            if byte(text, j) != b')' {
                return None;
            }
            j += 1;
        }
        let s = byte(text, j);
        let next = byte(text, j + 1);
        if matches!(s, b' ' | b'-' | b'.') && (next.is_ascii_digit() || next == b'(') {
            sep = s;
            j += 1;
        } else if open && (next.is_ascii_digit() || s.is_ascii_digit()) && s != b')' {
            // `(555)123-4567`
            sep = b')';
            if !s.is_ascii_digit() {
                return None;
            }
        } else {
            break;
        }
    }
    let end = j;
    if parens > 1 || is_alnum(byte(text, end)) || groups.len() > 8 {
        return None;
    }
    let total: usize = groups.iter().map(|g| g.1 - g.0).sum();
    let mut lens = [0usize; 8];
    for (l, g) in lens.iter_mut().zip(groups.iter()) {
        *l = g.1 - g.0;
    }
    let lens = &lens[..groups.len()];
    let first = text[groups[0].0];
    let seps_of = |a: usize| groups[a].2;
    // A date in any order: 2024-01-15, 15.01.2024, with a time group after it.
    let dateish = lens.len() >= 3
        && ((lens[0] == 4 && lens[1] == 2 && lens[2] == 2)
            || (lens[0] == 2 && lens[1] == 2 && lens[2] == 4))
        && seps_of(1) == seps_of(2)
        && matches!(seps_of(1), b'-' | b'.');
    if dateish {
        return None;
    }
    if plus {
        return (8..=15).contains(&total).then_some(end);
    }
    if text[start] == b'0' && byte(text, start + 1) == b'0' && groups.len() >= 2 {
        // 00 international prefix.
        return (10..=17).contains(&total).then_some(end);
    }
    let separated = groups.len() >= 2;
    // NANP: [1] 3-3-4, the area code possibly in parentheses.
    let nanp = match lens {
        [3, 3, 4] => true,
        [1, 3, 3, 4] => first == b'1',
        [3, 7] => text[start] == b'(',
        _ => false,
    };
    if separated && nanp {
        return Some(end);
    }
    // Trunk-prefixed national numbers: 020 7946 0958, 06-12345678, 01 23 45 67 89.
    let trunk = first == b'0' || text[start] == b'(' && byte(text, start + 1) == b'0';
    if separated && trunk && (9..=12).contains(&total) && lens.iter().all(|&l| l <= 8) {
        return Some(end);
    }
    None
}

/// Registered IBAN lengths by country code (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], u8)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

fn ibans(text: &[u8], push: &mut impl FnMut(usize, usize, Detector)) {
    let mut i = 0;
    while i + 4 <= text.len() {
        let cc = [
            text[i].to_ascii_uppercase(),
            byte(text, i + 1).to_ascii_uppercase(),
        ];
        let head = cc[0].is_ascii_uppercase()
            && cc[1].is_ascii_uppercase()
            && byte(text, i + 2).is_ascii_digit()
            && byte(text, i + 3).is_ascii_digit()
            && (i == 0 || !is_alnum(text[i - 1]));
        let len = head
            .then(|| IBAN_LENGTHS.iter().find(|(c, _)| **c == cc))
            .flatten()
            .map(|(_, l)| usize::from(*l));
        let Some(len) = len else {
            i += 1;
            continue;
        };
        // Collect `len` alphanumerics, allowing single spaces between them.
        let mut chars = [0u8; 34];
        let mut n = 0;
        let mut j = i;
        while n < len && j < text.len() {
            let c = text[j];
            if is_alnum(c) {
                chars[n] = c.to_ascii_uppercase();
                n += 1;
                j += 1;
            } else if c == b' ' && n > 0 && is_alnum(byte(text, j + 1)) {
                j += 1;
            } else {
                break;
            }
        }
        if n == len && !is_alnum(byte(text, j)) && iban_checksum_ok(&chars[..len]) {
            push(i, j, Detector::Iban);
            i = j;
        } else {
            i += 1;
        }
    }
}

/// ISO 7064 mod 97-10 over the IBAN moved by four characters, letters as 10..35.
fn iban_checksum_ok(iban: &[u8]) -> bool {
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        match c {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(c - b'A' + 10)) % 97,
            _ => return false,
        }
    }
    rem == 1
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

fn jwts(text: &[u8], push: &mut impl FnMut(usize, usize, Detector)) {
    let mut from = 0;
    while let Some(off) = find(&text[from..], b"eyJ") {
        let start = from + off;
        from = start + 3;
        if start > 0 && is_b64url(text[start - 1]) {
            continue;
        }
        let seg = |k: usize| {
            let mut e = k;
            while e < text.len() && is_b64url(text[e]) {
                e += 1;
            }
            e
        };
        let header_end = seg(start);
        if header_end - start < 10 || byte(text, header_end) != b'.' {
            continue;
        }
        let payload = header_end + 1;
        if !starts(text, payload, b"eyJ") {
            continue;
        }
        let mut end = seg(payload);
        // Signature and any further (JWE) parts, possibly empty.
        while byte(text, end) == b'.' {
            end = seg(end + 1);
        }
        push(start, end, Detector::Jwt);
        from = end;
    }
}

fn private_keys(text: &[u8], push: &mut impl FnMut(usize, usize, Detector)) {
    let mut from = 0;
    while let Some(off) = find(&text[from..], b"-----BEGIN ") {
        let start = from + off;
        from = start + 11;
        let Some(label_len) = find(&text[from..], b"-----") else {
            break;
        };
        let label = &text[from..from + label_len];
        if label.len() > 64 || find(label, b"PRIVATE KEY").is_none() {
            continue;
        }
        let after_begin = from + label_len + 5;
        let end = match find(&text[after_begin..], b"-----END ") {
            Some(e) => {
                let end_label = after_begin + e + 9;
                match find(&text[end_label..], b"-----") {
                    Some(close) => end_label + close + 5,
                    None => text.len(),
                }
            }
            // No END line: everything after BEGIN may be key material.
            None => text.len(),
        };
        push(start, end, Detector::PrivateKey);
        from = end;
    }
}

/// (prefix, minimum body length, exact body length) of well-known API keys and tokens.
const API_KEYS: &[(&[u8], usize, Option<usize>)] = &[
    (b"sk_live_", 16, None),
    (b"sk_test_", 16, None),
    (b"rk_live_", 16, None),
    (b"rk_test_", 16, None),
    (b"whsec_", 16, None),
    (b"ghp_", 30, None),
    (b"gho_", 30, None),
    (b"ghu_", 30, None),
    (b"ghs_", 30, None),
    (b"ghr_", 30, None),
    (b"github_pat_", 30, None),
    (b"glpat-", 20, None),
    (b"xoxb-", 10, None),
    (b"xoxp-", 10, None),
    (b"xoxa-", 10, None),
    (b"xoxr-", 10, None),
    (b"xoxs-", 10, None),
    (b"xapp-", 10, None),
    (b"AKIA", 16, Some(16)),
    (b"ASIA", 16, Some(16)),
    (b"AIza", 35, Some(35)),
    (b"sk-", 20, None),
    (b"npm_", 36, None),
    (b"pypi-", 50, None),
    (b"hf_", 30, None),
    (b"SG.", 20, None),
    (b"shpat_", 32, None),
    (b"dop_v1_", 40, None),
];

/// First bytes of [`API_KEYS`], to skip most positions at once.
const API_FIRST_BYTES: &[u8] = b"srwgxAnphSd";

fn api_keys(text: &[u8], extra: &[Vec<u8>], push: &mut impl FnMut(usize, usize, Detector)) {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if !c.is_ascii_alphabetic() || (i > 0 && (word(text[i - 1]) || text[i - 1] == b'-')) {
            i += 1;
            continue;
        }
        if !API_FIRST_BYTES.contains(&c) && extra.iter().all(|p| p[0] != c) {
            i += 1;
            continue;
        }
        let known = API_KEYS
            .iter()
            .map(|(p, min, exact)| (*p, *min, *exact))
            .chain(extra.iter().map(|p| (p.as_slice(), 16, None)))
            .filter(|(p, _, _)| starts(text, i, p));
        let mut matched = None;
        for (prefix, min, exact) in known {
            let body_start = i + prefix.len();
            let mut e = body_start;
            // SendGrid keys are SG.<id>.<secret>.
            let dots = prefix == b"SG.";
            while e < text.len() && (is_b64url(text[e]) || (dots && text[e] == b'.')) {
                e += 1;
            }
            let body = e - body_start;
            let ok = match exact {
                Some(n) => {
                    body == n
                        && text[body_start..e]
                            .iter()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || n == 35)
                }
                None => body >= min,
            };
            if ok {
                matched = Some(e);
                break;
            }
        }
        match matched {
            Some(end) => {
                push(i, end, Detector::ApiKey);
                i = end;
            }
            None => i += 1,
        }
    }
}

/// Whether `h[at..]` starts with `n`; a byte loop, cheaper than a `memcmp` call for the short
/// needles here.
fn starts(h: &[u8], at: usize, n: &[u8]) -> bool {
    h.len() >= at + n.len() && n.iter().zip(&h[at..]).all(|(a, b)| a == b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let last = haystack.len().checked_sub(needle.len())?;
    (0..=last).find(|&i| haystack[i] == first && starts(haystack, i, needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The substrings `d` alone finds in `text`.
    fn found(d: Detector, text: &str) -> Vec<String> {
        let mut spans = Vec::new();
        Detectors::new([d], &[]).find(text.as_bytes(), &mut spans);
        spans
            .iter()
            .map(|s| text[s.start..s.end].to_owned())
            .collect()
    }

    fn none(d: Detector, text: &str) {
        assert_eq!(
            found(d, text),
            Vec::<String>::new(),
            "{} in {text:?}",
            d.name()
        );
    }

    #[test]
    fn emails_are_found_inside_text_and_json() {
        assert_eq!(
            found(Detector::Email, "ada@example.com"),
            ["ada@example.com"]
        );
        assert_eq!(
            found(
                Detector::Email,
                r#"{"email":"Ada.Lovelace+x@mail.Example.co.uk","id":1}"#
            ),
            ["Ada.Lovelace+x@mail.Example.co.uk"]
        );
        assert_eq!(
            found(
                Detector::Email,
                "write to .bob@x.org. or carol_1@sub-d.example.io, thanks"
            ),
            ["bob@x.org", "carol_1@sub-d.example.io"]
        );
        assert_eq!(
            found(Detector::Email, "jürgen@exämple.de"),
            ["jürgen@exämple.de"]
        );
        assert_eq!(
            found(Detector::Email, "連絡先はada@example.comです"),
            ["連絡先はada@example.com"]
        );
        assert_eq!(found(Detector::Email, "a@b@c.com"), ["b@c.com"]);
        for text in [
            "a@b",
            "user@localhost",
            "@example.com",
            "x@.com",
            "x@-a.com",
            "x@a.c",
            "x@a.12",
            "no at sign",
            "a.@b.com",
        ] {
            none(Detector::Email, text);
        }
    }

    #[test]
    fn cards_need_length_prefix_and_luhn() {
        assert_eq!(
            found(Detector::Card, "4111111111111111"),
            ["4111111111111111"]
        );
        assert_eq!(
            found(Detector::Card, "card: 4111 1111 1111 1111."),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found(Detector::Card, "5500-0000-0000-0004"),
            ["5500-0000-0000-0004"]
        );
        assert_eq!(
            found(Detector::Card, "amex 378282246310005"),
            ["378282246310005"]
        );
        assert_eq!(
            found(Detector::Card, "order 42: 4111 1111 1111 1111"),
            ["4111 1111 1111 1111"]
        );
        // Inside a longer run of groups, every valid window is masked: the card is covered
        // whatever the groups before it add up to.
        for text in [
            "42 4111 1111 1111 1111",
            "7 4111 1111 1111 1111",
            "4111 1111 1111 1111 12",
        ] {
            let got = found(Detector::Card, text);
            assert!(
                got.len() == 1 && got[0].contains("4111 1111 1111 1111"),
                "{text}: {got:?}"
            );
        }
        assert_eq!(
            found(Detector::Card, "x4111111111111111"),
            Vec::<String>::new()
        );
        none(Detector::Card, "4111111111111112"); // Luhn fails
        none(Detector::Card, "0000000000000000"); // Luhn passes, no issuer starts with 0
        none(Detector::Card, "411111111111"); // 12 digits
        none(Detector::Card, "41111111111111111111111"); // one long number
        none(Detector::Card, "4111--1111-1111-1111");
    }

    #[test]
    fn ssns_follow_the_validity_rules() {
        assert_eq!(found(Detector::Ssn, "123-45-6789"), ["123-45-6789"]);
        assert_eq!(found(Detector::Ssn, "ssn 123 45 6789;"), ["123 45 6789"]);
        assert_eq!(found(Detector::Ssn, "(078-05-1120)"), ["078-05-1120"]);
        for text in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "123-45-67890",
            "1123-45-6789",
            "123-45-6789-1",
            "123-45 6789",
            "a123-45-6789",
        ] {
            none(Detector::Ssn, text);
        }
    }

    #[test]
    fn phones_in_common_formats_but_not_integers_or_dates() {
        for (text, phone) in [
            ("+14155552671", "+14155552671"),
            ("call +1 415-555-2671 now", "+1 415-555-2671"),
            ("+44 20 7946 0958", "+44 20 7946 0958"),
            ("+49 (30) 1234567", "+49 (30) 1234567"),
            ("(555) 123-4567", "(555) 123-4567"),
            ("(555)123-4567", "(555)123-4567"),
            ("555-123-4567", "555-123-4567"),
            ("555.123.4567", "555.123.4567"),
            ("1 555 123 4567", "1 555 123 4567"),
            ("020 7946 0958", "020 7946 0958"),
            ("06-12345678", "06-12345678"),
            ("01 23 45 67 89", "01 23 45 67 89"),
            ("0044 20 7946 0958", "0044 20 7946 0958"),
        ] {
            assert_eq!(found(Detector::Phone, text), [phone], "{text}");
        }
        for text in [
            "5551234567",
            "4155552671",
            "2024-01-15",
            "2024-01-15 10:30:00",
            "15.01.2024",
            "01-02-2024 10",
            "1.2.3",
            "192.168.1.1",
            "version 10.0.19045",
            "id 12345",
            "+123",
            "123-45-6789",
            "x555-123-4567",
            "555-123-45678",
            "12:30:45",
        ] {
            none(Detector::Phone, text);
        }
    }

    #[test]
    fn ibans_need_country_length_and_checksum() {
        assert_eq!(
            found(Detector::Iban, "DE89370400440532013000"),
            ["DE89370400440532013000"]
        );
        assert_eq!(
            found(Detector::Iban, "pay to DE89 3704 0044 0532 0130 00 EUR"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            found(Detector::Iban, "GB82WEST12345698765432"),
            ["GB82WEST12345698765432"]
        );
        assert_eq!(
            found(Detector::Iban, "nl91abna0417164300"),
            ["nl91abna0417164300"]
        );
        none(Detector::Iban, "DE89370400440532013001"); // checksum
        none(Detector::Iban, "DE8937040044053201300"); // length
        none(Detector::Iban, "ZZ89370400440532013000"); // no such country
        none(Detector::Iban, "XDE89370400440532013000");
        none(Detector::Iban, "DE893704004405320130001");
    }

    #[test]
    fn secrets_are_found() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(found(Detector::Jwt, &format!("Bearer {jwt} x")), [jwt]);
        assert_eq!(
            found(Detector::Jwt, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
            ["eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."]
        );
        none(Detector::Jwt, "eyJhbGciOiJIUzI1NiJ9 alone");
        none(Detector::Jwt, "eyJhbGciOiJIUzI1NiJ9.notapayload.sig");

        let key =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            found(Detector::PrivateKey, &format!("key: {key} done")),
            [key]
        );
        let escaped = r#"{"k":"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----"}"#;
        assert_eq!(found(Detector::PrivateKey, escaped).len(), 1);
        let cut = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE";
        assert_eq!(found(Detector::PrivateKey, cut), [cut]);
        none(
            Detector::PrivateKey,
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        );
        none(
            Detector::PrivateKey,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        );

        for key in [
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "AKIAIOSFODNN7EXAMPLE",
            "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
            "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
            "glpat-xxxxxxxxxxxxxxxxxxxx",
        ] {
            assert_eq!(
                found(Detector::ApiKey, &format!("token={key};")),
                [key],
                "{key}"
            );
        }
        for text in [
            "task-abcdefghijklmnopqrstuvwxyz",
            "sk_live_short",
            "AKIAIOSFODNN7EXAMPL",
            "AKIAIOSFODNN7EXAMPLEX",
            "mask-abcdefghijklmnopqrstuvwxyz01",
        ] {
            none(Detector::ApiKey, text);
        }
        let mut spans = Vec::new();
        Detectors::new([Detector::ApiKey], &["acme_".to_owned()])
            .find(b"k acme_0123456789abcdef", &mut spans);
        assert_eq!((spans[0].start, spans[0].end), (2, 23));
    }

    /// Generated text mixing fragments of every detector's patterns with multi-byte
    /// characters: no panic, and every span is sorted, disjoint and on character boundaries.
    #[test]
    fn spans_are_disjoint_and_on_character_boundaries_for_any_text() {
        const PIECES: &[&str] = &[
            "ada",
            "@",
            ".",
            "example",
            "com",
            "-",
            " ",
            "+1",
            "(",
            ")",
            "555",
            "0",
            "4111",
            "123",
            "45",
            "6789",
            "DE89",
            "3704",
            "eyJ",
            "hbGci",
            "-----BEGIN ",
            "PRIVATE KEY",
            "-----",
            "-----END ",
            "sk_live_",
            "ghp_",
            "AKIA",
            "é",
            "日本",
            "👋",
            "ß",
            "\n",
            "\"",
            ",",
            "{",
            "}",
            ":",
            "_",
            "x",
            "9",
            "00",
            "/",
            "ü@ä.de",
        ];
        let all = Detectors::new(Detector::ALL, &["acme_".to_owned()]);
        let mut spans = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 24) as usize;
            let mut r = seed;
            for _ in 0..n {
                r = r
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(PIECES[(r >> 33) as usize % PIECES.len()]);
            }
            all.find(text.as_bytes(), &mut spans);
            let mut last = 0;
            for sp in &spans {
                assert!(
                    sp.start >= last && sp.start < sp.end && sp.end <= text.len(),
                    "{text:?}: {spans:?}"
                );
                assert!(
                    text.is_char_boundary(sp.start) && text.is_char_boundary(sp.end),
                    "{text:?}: {spans:?}"
                );
                last = sp.end;
            }
            let mut out = String::new();
            crate::strategy::partial_into(&text, 4, &mut out);
            assert_eq!(out.chars().count(), text.chars().count());
        }
    }

    #[test]
    fn api_key_first_bytes_cover_every_prefix() {
        for (prefix, _, _) in API_KEYS {
            assert!(
                API_FIRST_BYTES.contains(&prefix[0]),
                "{}",
                String::from_utf8_lossy(prefix)
            );
        }
    }

    #[test]
    fn overlapping_matches_merge_under_the_most_specific_detector() {
        let all = Detectors::new(Detector::ALL, &[]);
        let mut spans = Vec::new();
        let text = b"card 4111 1111 1111 1111, mail ada@example.com, ssn 123-45-6789";
        all.find(text, &mut spans);
        let kinds: Vec<_> = spans.iter().map(|s| s.detector).collect();
        assert_eq!(kinds, [Detector::Card, Detector::Email, Detector::Ssn]);
        // A phone-looking prefix of the card does not split it.
        assert_eq!(&text[spans[0].start..spans[0].end], b"4111 1111 1111 1111");
        let mut m = vec![
            Span {
                start: 5,
                end: 9,
                detector: Detector::Phone,
            },
            Span {
                start: 0,
                end: 6,
                detector: Detector::Card,
            },
            Span {
                start: 20,
                end: 22,
                detector: Detector::Email,
            },
        ];
        merge(&mut m);
        assert_eq!(
            m,
            [
                Span {
                    start: 0,
                    end: 9,
                    detector: Detector::Card
                },
                Span {
                    start: 20,
                    end: 22,
                    detector: Detector::Email
                },
            ]
        );
        assert!(!all.any(
            b"nothing to see here, order 12345 on 2024-01-15",
            &mut spans
        ));
    }
}
