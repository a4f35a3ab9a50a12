//! Signed JWTs presented as the password: verified with `jsonwebtoken` against the configured
//! issuers (HS* with a shared secret, RS/PS/ES/EdDSA with keys from a JWKS file or URL).
//!
//! Every check a token can fail — format, algorithm, key, signature, `exp`, `nbf`, `iss`, `aud`,
//! the identity claim — gives the same refusal to the client; the reason goes to the log only.

use crate::config::TokenIssuerConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// An algorithm name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    #[error("\"none\" is never accepted: tokens must be signed")]
    None,
    #[error("unknown algorithm {0:?} (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")]
    Unknown(String),
}

/// An `auth.tokens` entry that cannot be used: the config key (`auth.tokens[0].jwks_url`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct IssuerError {
    pub key: String,
    pub problem: String,
}

/// Parses an algorithm name as JOSE spells it; `none` and unknown names are errors.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, AlgorithmError> {
    if name.eq_ignore_ascii_case("none") {
        return Err(AlgorithmError::None);
    }
    name.parse::<Algorithm>()
        .map_err(|_| AlgorithmError::Unknown(name.to_owned()))
}

/// Whether `alg` is a shared-secret algorithm.
pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// What a valid token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub identity: String,
    pub groups: Vec<String>,
    pub issuer: String,
    pub require_certificate: bool,
    pub upstream_role: Option<String>,
}

/// Why a token was refused (for the log only).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT: {0}")]
    Format(String),
    #[error("no configured issuer matches iss {0:?}")]
    UnknownIssuer(String),
    #[error("algorithm {0:?} is not allowed for this issuer")]
    Algorithm(String),
    #[error("no key for kid {0:?} in the issuer's JWKS")]
    UnknownKey(String),
    #[error("the issuer's JWKS has several keys and the token names none (kid)")]
    NoKid,
    #[error("JWKS: {0}")]
    Jwks(String),
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("claim {0:?} is missing or not a string")]
    Claim(String),
    #[error("tokens are accepted only over TLS or from loopback (auth.tokens[].allow_insecure)")]
    Insecure,
}

/// The issuers' verifiers.
pub struct TokenVerifier {
    issuers: Vec<Issuer>,
}

struct Issuer {
    config: TokenIssuerConfig,
    allowed: Vec<Algorithm>,
    secret: Option<DecodingKey>,
    jwks: Option<Mutex<Jwks>>,
}

/// A JWKS and where it came from.
struct Jwks {
    source: JwksSource,
    keys: JwkSet,
    /// File: its modification time and length when read. URL: when it was fetched.
    stamp: Option<(SystemTime, u64)>,
    fetched: Option<Instant>,
}

enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl TokenVerifier {
    /// Builds the verifiers, reading every JWKS file and fetching every JWKS URL once; the error
    /// names the issuer's key in the config.
    pub fn new(configs: &[TokenIssuerConfig]) -> Result<TokenVerifier, IssuerError> {
        let mut issuers = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let invalid = |key: &str, problem: String| IssuerError {
                key: format!("auth.tokens[{i}].{key}"),
                problem,
            };
            let allowed = c
                .algorithms
                .iter()
                .map(|a| parse_algorithm(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("algorithms", e.to_string()))?;
            let secret = match (&c.secret, &c.secret_env) {
                (Some(s), _) => Some(DecodingKey::from_secret(s.as_bytes())),
                (None, Some(var)) => {
                    let s = std::env::var(var).map_err(|_| {
                        invalid(
                            "secret_env",
                            format!("environment variable {var} is not set"),
                        )
                    })?;
                    if s.len() < 32 {
                        return Err(invalid(
                            "secret_env",
                            format!("{var} must hold at least 32 bytes"),
                        ));
                    }
                    Some(DecodingKey::from_secret(s.as_bytes()))
                }
                (None, None) => None,
            };
            let source = match (&c.jwks_file, &c.jwks_url) {
                (Some(p), _) => Some(JwksSource::File(p.clone())),
                (None, Some(u)) => Some(JwksSource::Url(u.clone())),
                (None, None) => None,
            };
            let jwks = match source {
                Some(source) => {
                    let key = match source {
                        JwksSource::File(_) => "jwks_file",
                        JwksSource::Url(_) => "jwks_url",
                    };
                    let mut j = Jwks {
                        source,
                        keys: JwkSet { keys: Vec::new() },
                        stamp: None,
                        fetched: None,
                    };
                    j.load().map_err(|e| invalid(key, e))?;
                    Some(Mutex::new(j))
                }
                None => None,
            };
            issuers.push(Issuer {
                config: c.clone(),
                allowed,
                secret,
                jwks,
            });
        }
        Ok(TokenVerifier { issuers })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Whether a token may be sent on this connection (TLS, loopback, or an issuer allowing it).
    pub fn accepts_transport(&self, tls: bool, loopback: bool) -> bool {
        tls || loopback || self.issuers.iter().any(|i| i.config.allow_insecure)
    }

    /// Verifies `token` and maps it to an identity. Blocking: it may re-read a JWKS file or
    /// fetch a JWKS URL (call it off the async threads).
    pub fn verify(
        &self,
        token: &str,
        tls: bool,
        loopback: bool,
    ) -> Result<TokenIdentity, TokenError> {
        let token = token.trim();
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Format(e.to_string()))?;
        // The issuer is read unverified only to choose the keys; the signature and then `iss`
        // itself are checked against that issuer's configuration below.
        let unverified: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token)
                .map_err(|e| TokenError::Format(e.to_string()))?
                .claims;
        let iss = unverified.get("iss").and_then(|v| v.as_str()).unwrap_or("");
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.to_owned()))?;
        if !(tls || loopback || issuer.config.allow_insecure) {
            return Err(TokenError::Insecure);
        }
        if !issuer.allowed.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        // The key comes from the algorithm's family: an HS token is checked with the shared
        // secret only, never with a public key read as an HMAC secret (algorithm confusion).
        let key = if is_hmac(header.alg) {
            issuer
                .secret
                .clone()
                .ok_or_else(|| TokenError::Algorithm(format!("{:?}", header.alg)))?
        } else {
            let jwks = issuer
                .jwks
                .as_ref()
                .ok_or_else(|| TokenError::Algorithm(format!("{:?}", header.alg)))?;
            let mut jwks = jwks.lock().unwrap_or_else(|p| p.into_inner());
            jwks.refresh(&issuer.config);
            let jwk = match &header.kid {
                Some(kid) => match jwks.keys.find(kid).cloned() {
                    Some(k) => k,
                    None if jwks.refetch_for_unknown_kid() => jwks
                        .keys
                        .find(kid)
                        .cloned()
                        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?,
                    None => return Err(TokenError::UnknownKey(kid.clone())),
                },
                None if jwks.keys.keys.len() == 1 => jwks.keys.keys[0].clone(),
                None => return Err(TokenError::NoKid),
            };
            if let Some(ka) = jwk.common.key_algorithm {
                if format!("{ka:?}") != format!("{:?}", header.alg) {
                    return Err(TokenError::Algorithm(format!(
                        "{:?} (the key is for {ka:?})",
                        header.alg
                    )));
                }
            }
            DecodingKey::from_jwk(&jwk).map_err(|e| TokenError::Jwks(e.to_string()))?
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = issuer.config.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_issuer(&[&issuer.config.issuer]);
        v.set_audience(&issuer.config.audience);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)?;
        let claims = data.claims;
        let claim = &issuer.config.identity_claim;
        let identity = claims
            .get(claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::Claim(claim.clone()))?
            .to_owned();
        let mut groups = issuer.config.groups.clone();
        if let Some(gc) = &issuer.config.groups_claim {
            let listed: Vec<&str> = match claims.get(gc) {
                Some(serde_json::Value::String(s)) => vec![s.as_str()],
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
                _ => Vec::new(),
            };
            for g in listed {
                if !g.is_empty() && !groups.iter().any(|x| x == g) {
                    groups.push(g.to_owned());
                }
            }
        }
        Ok(TokenIdentity {
            identity,
            groups,
            issuer: issuer.config.issuer.clone(),
            require_certificate: issuer.config.require_certificate,
            upstream_role: issuer.config.upstream_role.clone(),
        })
    }
}

/// Least time between two fetches of a JWKS URL for a kid it did not have.
const REFETCH_AFTER: Duration = Duration::from_secs(30);

impl Jwks {
    fn load(&mut self) -> Result<(), String> {
        let text = match &self.source {
            JwksSource::File(p) => {
                let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                self.stamp = meta.modified().ok().map(|m| (m, meta.len()));
                text
            }
            JwksSource::Url(u) => {
                self.fetched = Some(Instant::now());
                fetch(u)?
            }
        };
        let keys: JwkSet =
            serde_json::from_str(&text).map_err(|e| format!("not a JWKS (RFC 7517): {e}"))?;
        for k in &keys.keys {
            let kid = k.common.key_id.as_deref().unwrap_or("(no kid)");
            check_key(k).map_err(|e| format!("key {kid:?} cannot verify signatures: {e}"))?;
        }
        self.keys = keys;
        Ok(())
    }

    /// Re-reads a changed file, or re-fetches a URL after `jwks_refresh`; on failure the keys
    /// already loaded stay in use and the failure is logged.
    fn refresh(&mut self, config: &TokenIssuerConfig) {
        let stale = match &self.source {
            JwksSource::File(p) => {
                let now = std::fs::metadata(p)
                    .ok()
                    .and_then(|m| m.modified().ok().map(|t| (t, m.len())));
                now != self.stamp
            }
            JwksSource::Url(_) => self
                .fetched
                .is_none_or(|t| t.elapsed() >= config.jwks_refresh),
        };
        if stale {
            if let Err(e) = self.load() {
                tracing::warn!(issuer = %config.issuer, error = %e, "JWKS reload failed; the keys loaded before stay in use");
            } else {
                tracing::info!(issuer = %config.issuer, keys = self.keys.keys.len(), "JWKS loaded");
            }
        }
    }

    /// A URL JWKS may have rotated in a new key: fetch it again, at most every 30 s.
    fn refetch_for_unknown_kid(&mut self) -> bool {
        if !matches!(self.source, JwksSource::Url(_))
            || self.fetched.is_some_and(|t| t.elapsed() < REFETCH_AFTER)
        {
            return false;
        }
        self.load().is_ok()
    }
}

/// Refuses keys that cannot verify anything or are too weak: an HMAC secret in a JWKS (the
/// shared secret belongs in the config), an RSA modulus under 2048 bits, an empty exponent.
fn check_key(k: &jsonwebtoken::jwk::Jwk) -> Result<(), String> {
    use base64::Engine;
    use jsonwebtoken::jwk::AlgorithmParameters;
    match &k.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not taken from a JWKS; use secret".into())
        }
        AlgorithmParameters::RSA(p) => {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let n = b64
                .decode(p.n.trim_end_matches('='))
                .map_err(|e| format!("n: {e}"))?;
            let e = b64
                .decode(p.e.trim_end_matches('='))
                .map_err(|e| format!("e: {e}"))?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(format!("RSA modulus of {bits} bits, at least 2048 needed"));
            }
            if e.iter().all(|b| *b == 0) {
                return Err("RSA exponent is empty".into());
            }
        }
        _ => {}
    }
    DecodingKey::from_jwk(k)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn fetch(url: &str) -> Result<String, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("fetching {url}: {e}"))?;
    resp.body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| format!("reading {url}: {e}"))
}
