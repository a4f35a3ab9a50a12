//! Client certificates: which identity a verified certificate proves.
//!
//! rustls verifies the chain to a configured CA (and the CRLs) during the handshake; this module
//! reads the end-entity certificate's SANs and subject CN (rustls-webpki exposes no URI SANs)
//! and maps one of them to a pgward identity by the `auth.certificates` rules.

use crate::config::{CertField, CertMethod, CertRuleConfig};

/// A certificate that cannot be read, or an `auth.certificates` rule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot parse the client certificate: {0}")]
    Certificate(String),
    #[error("invalid subjectAltName extension: {0}")]
    SubjectAltName(String),
    #[error("the rule has neither match nor pattern")]
    NoMatcher,
    #[error("{template:?}: unclosed '{{'")]
    Unclosed { template: String },
    #[error("{template:?}: {{{n}}} but the pattern has {stars} star(s)")]
    NoSuchStar {
        template: String,
        n: usize,
        stars: usize,
    },
    #[error("{template:?}: unknown placeholder {{{name}}}")]
    UnknownPlaceholder { template: String, name: String },
}

/// The fields of a client certificate that rules can match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFields {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub common_name: Option<String>,
}

impl CertFields {
    /// Reads the fields of a DER certificate (already verified by the TLS handshake).
    pub fn parse(der: &[u8]) -> Result<CertFields, CertError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Certificate(e.to_string()))?;
        let mut fields = CertFields::default();
        match cert.subject_alternative_name() {
            Ok(Some(san)) => {
                for name in &san.value.general_names {
                    match name {
                        GeneralName::URI(u) => fields.uri_sans.push((*u).to_owned()),
                        GeneralName::DNSName(d) => fields.dns_sans.push((*d).to_owned()),
                        _ => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => return Err(CertError::SubjectAltName(e.to_string())),
        }
        fields.common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(fields)
    }

    fn values(&self, field: CertField) -> Vec<&str> {
        match field {
            CertField::UriSan => self.uri_sans.iter().map(String::as_str).collect(),
            CertField::DnsSan => self.dns_sans.iter().map(String::as_str).collect(),
            CertField::Cn => self.common_name.iter().map(String::as_str).collect(),
        }
    }
}

/// What a certificate proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub identity: String,
    pub groups: Vec<String>,
    /// The field value the identity was mapped from.
    pub subject: String,
    /// The certificate alone authenticates (`method = "cert"`).
    pub alone: bool,
    pub upstream_role: Option<String>,
}

/// One compiled `auth.certificates` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    field: CertField,
    matcher: Matcher,
    identity: Option<String>,
    groups: Vec<String>,
    alone: bool,
    upstream_role: Option<String>,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    /// The literal pieces between the stars.
    Pattern(Vec<String>),
}

impl Rule {
    /// Compiles a rule; the error says what is wrong with its `identity` template.
    pub fn new(c: &CertRuleConfig) -> Result<Rule, CertError> {
        let matcher = match (&c.exact, &c.pattern) {
            (Some(v), _) => Matcher::Exact(v.clone()),
            (None, Some(p)) => Matcher::Pattern(p.split('*').map(str::to_owned).collect()),
            (None, None) => return Err(CertError::NoMatcher),
        };
        let stars = match &matcher {
            Matcher::Exact(_) => 0,
            Matcher::Pattern(parts) => parts.len() - 1,
        };
        if let Some(t) = &c.identity {
            check_template(t, stars)?;
        }
        Ok(Rule {
            field: c.field,
            matcher,
            identity: c.identity.clone(),
            groups: c.groups.clone(),
            alone: c.method == CertMethod::Cert,
            upstream_role: c.upstream_role.clone(),
        })
    }

    fn apply(&self, value: &str) -> Option<CertIdentity> {
        let captures = match &self.matcher {
            Matcher::Exact(v) => (v == value).then(Vec::new)?,
            Matcher::Pattern(parts) => glob(parts, value)?,
        };
        let identity = match &self.identity {
            None => value.to_owned(),
            Some(t) => fill(t, value, &captures),
        };
        if identity.is_empty() {
            return None;
        }
        Some(CertIdentity {
            identity,
            groups: self.groups.clone(),
            subject: value.to_owned(),
            alone: self.alone,
            upstream_role: self.upstream_role.clone(),
        })
    }
}

/// The rules in order; the first that matches a field of the certificate decides.
#[derive(Debug, Clone, Default)]
pub struct CertRules(Vec<Rule>);

impl CertRules {
    pub fn new(configs: &[CertRuleConfig]) -> Result<CertRules, CertError> {
        configs
            .iter()
            .map(Rule::new)
            .collect::<Result<_, _>>()
            .map(CertRules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identity the certificate proves, if a rule maps it.
    pub fn map(&self, fields: &CertFields) -> Option<CertIdentity> {
        self.0.iter().find_map(|rule| {
            fields
                .values(rule.field)
                .into_iter()
                .find_map(|v| rule.apply(v))
        })
    }
}

/// Matches `value` against the literal `parts` of a pattern (joined by stars); a star matches
/// any run of characters without `/`. Returns what each star matched.
fn glob(parts: &[String], value: &str) -> Option<Vec<String>> {
    fn go(parts: &[String], value: &str, caps: &mut Vec<String>) -> bool {
        let Some((first, rest)) = parts.split_first() else {
            return value.is_empty();
        };
        let Some(after) = value.strip_prefix(first.as_str()) else {
            return false;
        };
        if rest.is_empty() {
            return after.is_empty();
        }
        // A star: try every length of its match, shortest first, up to the first `/`.
        let limit = after.find('/').unwrap_or(after.len());
        for end in (0..=limit).filter(|&e| after.is_char_boundary(e)) {
            caps.push(after[..end].to_owned());
            if go(rest, &after[end..], caps) {
                return true;
            }
            caps.pop();
        }
        false
    }
    let mut caps = Vec::new();
    go(parts, value, &mut caps).then_some(caps)
}

fn check_template(t: &str, stars: usize) -> Result<(), CertError> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or_else(|| CertError::Unclosed {
            template: t.to_owned(),
        })?;
        let name = &rest[open + 1..open + close];
        match name.parse::<usize>() {
            Ok(n) if n >= 1 && n <= stars => {}
            Ok(n) => {
                return Err(CertError::NoSuchStar {
                    template: t.to_owned(),
                    n,
                    stars,
                })
            }
            Err(_) if name == "value" => {}
            Err(_) => {
                return Err(CertError::UnknownPlaceholder {
                    template: t.to_owned(),
                    name: name.to_owned(),
                })
            }
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

fn fill(t: &str, value: &str, caps: &[String]) -> String {
    let mut out = t.replace("{value}", value);
    for (i, c) in caps.iter().enumerate().rev() {
        out = out.replace(&format!("{{{}}}", i + 1), c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        field: CertField,
        exact: Option<&str>,
        pattern: Option<&str>,
        identity: Option<&str>,
    ) -> CertRuleConfig {
        CertRuleConfig {
            field,
            exact: exact.map(Into::into),
            pattern: pattern.map(Into::into),
            identity: identity.map(Into::into),
            groups: vec!["agents".into()],
            method: CertMethod::Cert,
            upstream_role: None,
        }
    }

    #[test]
    fn rules_map_exact_values_and_patterns_in_order() {
        let rules = CertRules::new(&[
            rule(
                CertField::UriSan,
                Some("spiffe://example.org/agent/pricing"),
                None,
                Some("pricing-agent"),
            ),
            rule(
                CertField::UriSan,
                None,
                Some("spiffe://example.org/agent/*"),
                Some("agent-{1}"),
            ),
            rule(CertField::Cn, None, Some("*.svc"), None),
        ])
        .unwrap();
        let uri = |u: &str| CertFields {
            uri_sans: vec![u.into()],
            ..Default::default()
        };
        assert_eq!(
            rules
                .map(&uri("spiffe://example.org/agent/pricing"))
                .unwrap()
                .identity,
            "pricing-agent"
        );
        let m = rules
            .map(&uri("spiffe://example.org/agent/billing"))
            .unwrap();
        assert_eq!(
            (m.identity.as_str(), m.subject.as_str()),
            ("agent-billing", "spiffe://example.org/agent/billing")
        );
        // A star does not cross '/', and the whole value must match.
        assert!(rules.map(&uri("spiffe://example.org/agent/a/b")).is_none());
        assert!(rules
            .map(&uri("spiffe://other.org/agent/pricing"))
            .is_none());
        assert!(rules
            .map(&uri("xspiffe://example.org/agent/pricing"))
            .is_none());
        let cn = CertFields {
            common_name: Some("web.svc".into()),
            ..Default::default()
        };
        assert_eq!(rules.map(&cn).unwrap().identity, "web.svc");
        assert!(rules.map(&CertFields::default()).is_none());
    }

    #[test]
    fn templates_are_checked() {
        assert!(Rule::new(&rule(CertField::Cn, Some("x"), None, Some("{1}"))).is_err());
        assert!(Rule::new(&rule(
            CertField::Cn,
            None,
            Some("a*b*"),
            Some("{2}-{1}-{value}")
        ))
        .is_ok());
        assert!(Rule::new(&rule(CertField::Cn, None, Some("a*"), Some("{who}"))).is_err());
        assert!(Rule::new(&rule(CertField::Cn, None, Some("a*"), Some("{1"))).is_err());
    }
}
