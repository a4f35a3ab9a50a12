//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it: stored verifiers, the server side
//! used to authenticate clients, and the client side used towards the upstream server.
//!
//! Channel binding (`-PLUS`) is not offered; a client that asks for it (`p=`) is refused, and one
//! that says it could have used it (`y`) is accepted since the server never advertised it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use std::num::NonZeroU32;

pub const MECHANISM: &str = "SCRAM-SHA-256";
const NONCE_BYTES: usize = 18;
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A stored SCRAM-SHA-256 verifier, in PostgreSQL's text form
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")]
    BadVerifier,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("password authentication failed")]
    WrongProof,
    #[error("server signature does not match: the server does not know the password")]
    BadServerSignature,
    #[error("system random number generator failed")]
    Random,
}

impl std::str::FromStr for Verifier {
    type Err = ScramError;

    fn from_str(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadVerifier)?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier);
        }
        let salt = B64.decode(salt).map_err(|_| ScramError::BadVerifier)?;
        let key = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(ScramError::BadVerifier)
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The password as SCRAM hashes it: normalized with SASLprep (RFC 4013), as libpq and the
/// PostgreSQL server do, so a non-ASCII password means the same on both sides. A password
/// SASLprep refuses (prohibited or unassigned characters) is used as its raw bytes, which is
/// again what PostgreSQL does.
fn prepared(password: &str) -> std::borrow::Cow<'_, str> {
    if password.is_ascii() {
        return std::borrow::Cow::Borrowed(password);
    }
    stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        prepared(password).as_bytes(),
        &mut out,
    );
    out
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ScramError> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ScramError::Random)?;
    Ok(b)
}

impl Verifier {
    /// Derives a verifier for `password` with a fresh random salt (SASLprep applied, as
    /// PostgreSQL does).
    pub fn generate(password: &str, iterations: u32) -> Result<Self, ScramError> {
        let salt = random_bytes::<16>()?.to_vec();
        Ok(Self::derive(password, salt, iterations))
    }

    pub fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// A verifier no password matches, for users that do not exist: the exchange then looks the
    /// same as for a real user with a wrong password, so user names cannot be probed.
    pub fn decoy(user: &str, secret: &[u8]) -> Self {
        let salt = hmac_sha256(secret, user.as_bytes())[..16].to_vec();
        let mut stored_key = [0u8; 32];
        stored_key.copy_from_slice(&hmac_sha256(secret, b"decoy stored key"));
        Verifier {
            iterations: DEFAULT_ITERATIONS,
            salt,
            stored_key,
            server_key: hmac_sha256(secret, b"decoy server key"),
        }
    }
}

/// Server side of one exchange. Feed it the client-first message, send back what `server_first`
/// returns, then call `verify_client_final`.
pub struct ServerExchange {
    verifier: Verifier,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl ServerExchange {
    /// Parses the client-first message (`n,,n=user,r=nonce`).
    pub fn start(verifier: Verifier, client_first: &[u8]) -> Result<Self, ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (cb_flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match cb_flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        let gs2_header = format!("{cb_flag},{authzid},");
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(n) = attr.strip_prefix("r=") {
                client_nonce = Some(n);
            } else if attr.starts_with("m=") {
                return Err(ScramError::Malformed("mandatory extension not supported"));
            }
        }
        let client_nonce = client_nonce.ok_or(ScramError::Malformed("no client nonce"))?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("invalid client nonce"));
        }
        let nonce = format!(
            "{client_nonce}{}",
            B64.encode(random_bytes::<NONCE_BYTES>()?)
        );
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(ServerExchange {
            verifier,
            client_first_bare: bare.to_owned(),
            server_first,
            gs2_header,
            nonce,
        })
    }

    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final message; on success returns the server-final message (`v=...`).
    pub fn verify_client_final(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut channel_binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel_binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let expected_cb = B64.encode(self.gs2_header.as_bytes());
        if channel_binding != Some(expected_cb.as_str()) {
            return Err(ScramError::Malformed("channel binding data does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof has the wrong length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed = sha256(&client_key);
        if !constant_time_eq(&computed, &self.verifier.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The SASL mechanism with channel binding.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// How a client exchange is bound to the connection under it (RFC 5802 §6, RFC 5929).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Not over TLS, or binding disabled: GS2 flag `n`.
    None,
    /// Over TLS, but the server did not offer SCRAM-SHA-256-PLUS: flag `y`, so a server that
    /// does support it sees that someone stripped the offer.
    NotOffered,
    /// `tls-server-end-point`: the hash of the server's certificate
    /// ([`certificate_hash`]); the server checks it against its own.
    TlsServerEndPoint(Vec<u8>),
}

impl Binding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Binding::None => "n,,",
            Binding::NotOffered => "y,,",
            Binding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    pub fn mechanism(&self) -> &'static str {
        match self {
            Binding::TlsServerEndPoint(_) => MECHANISM_PLUS,
            _ => MECHANISM,
        }
    }
}

/// The `tls-server-end-point` hash of a DER certificate: its signature's hash function, and
/// SHA-256 where that is MD5 or SHA-1 (RFC 5929 §4.1) or none is named. `None` for a
/// certificate that does not parse.
pub fn certificate_hash(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let algorithm = match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &ring::digest::SHA384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    };
    Some(ring::digest::digest(algorithm, der).as_ref().to_vec())
}

/// Client side of one exchange, used to log in to the upstream server.
pub struct ClientExchange {
    password: String,
    client_nonce: String,
    client_first_bare: String,
    binding: Binding,
    server_signature: Option<[u8; 32]>,
}

impl ClientExchange {
    pub fn new(password: &str, binding: Binding) -> Result<Self, ScramError> {
        let client_nonce = B64.encode(random_bytes::<NONCE_BYTES>()?);
        // PostgreSQL ignores the SCRAM user name and uses the startup packet's.
        let client_first_bare = format!("n=,r={client_nonce}");
        Ok(ClientExchange {
            password: password.to_owned(),
            client_nonce,
            client_first_bare,
            binding,
            server_signature: None,
        })
    }

    /// The mechanism to name in SASLInitialResponse.
    pub fn mechanism(&self) -> &'static str {
        self.binding.mechanism()
    }

    pub fn client_first(&self) -> String {
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare)
    }

    /// Answers the server-first message with the client-final message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let msg =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in msg.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = Some(v);
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let salt = B64
            .decode(salt.ok_or(ScramError::Malformed("no salt"))?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations
            .ok_or(ScramError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if iterations == 0 || iterations > 10_000_000 {
            return Err(ScramError::Malformed("unreasonable iteration count"));
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        // c= carries the GS2 header and, when bound, the certificate hash.
        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        if let Binding::TlsServerEndPoint(hash) = &self.binding {
            cbind.extend_from_slice(hash);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ client_signature[i];
        }
        let server_key = hmac_sha256(&salted, b"Server Key");
        self.server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message, proving the server knew the password too.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let msg =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let v = msg
            .strip_prefix("v=")
            .ok_or(ScramError::Malformed("no server signature"))?;
        let v = B64
            .decode(v.split(',').next().unwrap_or(""))
            .map_err(|_| ScramError::Malformed("signature is not base64"))?;
        match &self.server_signature {
            Some(expected) if constant_time_eq(expected, &v) => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

/// PostgreSQL's md5 password hash for the upstream md5 method.
pub fn md5_password(user: &str, password: &str, salt: &[u8; 4]) -> String {
    use md5::{Digest, Md5};
    let inner = Md5::digest(format!("{password}{user}").as_bytes());
    let inner_hex = hex(&inner);
    let mut h = Md5::new();
    h.update(inner_hex.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// Compares in constant time, so timing does not tell how much of a secret matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_text_roundtrip() {
        let v = Verifier::generate("s3cret", 4096).unwrap();
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(text.parse::<Verifier>().unwrap(), v);
        assert!("md5abc".parse::<Verifier>().is_err());
        assert!("SCRAM-SHA-256$0:AAAA$AAAA:AAAA"
            .parse::<Verifier>()
            .is_err());
    }

    #[test]
    fn non_ascii_passwords_are_normalized_with_saslprep() {
        // U+2163 (Roman numeral four) is "IV" under NFKC, U+00A0 maps to a space, U+00AD to
        // nothing: PostgreSQL's verifier for the raw text equals ours for the normalized one.
        let salt = b"0123456789abcdef".to_vec();
        let raw = Verifier::derive("\u{2163}-pass\u{00A0}w\u{00AD}ord", salt.clone(), 4096);
        let normalized = Verifier::derive("IV-pass word", salt.clone(), 4096);
        assert_eq!(raw, normalized);
        // Precomposed and decomposed forms of the same text are the same password.
        assert_eq!(
            Verifier::derive("p\u{00E4}ss", salt.clone(), 4096),
            Verifier::derive("pa\u{0308}ss", salt.clone(), 4096)
        );
        // A password SASLprep refuses (a prohibited control character) is hashed as it is.
        assert_ne!(
            Verifier::derive("bad\u{0007}\u{00E4}", salt.clone(), 4096),
            Verifier::derive("bad\u{00E4}", salt, 4096)
        );
    }

    #[test]
    fn client_and_server_agree() {
        let v = Verifier::generate("pencil", 4096).unwrap();
        let mut c = ClientExchange::new("pencil", Binding::None).unwrap();
        let s = ServerExchange::start(v, c.client_first().as_bytes()).unwrap();
        let fin = c.client_final(s.server_first().as_bytes()).unwrap();
        let server_final = s.verify_client_final(fin.as_bytes()).unwrap();
        c.verify_server_final(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_password_is_refused() {
        let v = Verifier::generate("pencil", 4096).unwrap();
        let mut c = ClientExchange::new("crayon", Binding::None).unwrap();
        let s = ServerExchange::start(v, c.client_first().as_bytes()).unwrap();
        let fin = c.client_final(s.server_first().as_bytes()).unwrap();
        assert_eq!(
            s.verify_client_final(fin.as_bytes()),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn tampered_messages_are_refused() {
        let v = Verifier::generate("pencil", 4096).unwrap();
        assert_eq!(
            ServerExchange::start(v.clone(), b"p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
        assert!(ServerExchange::start(v.clone(), b"garbage").is_err());
        assert!(ServerExchange::start(v.clone(), b"n,,n=,r=").is_err());
        let mut c = ClientExchange::new("pencil", Binding::None).unwrap();
        let s = ServerExchange::start(v, c.client_first().as_bytes()).unwrap();
        let fin = c.client_final(s.server_first().as_bytes()).unwrap();
        // A proof that is not 32 bytes, or a nonce that was changed, must not pass.
        let (head, _) = fin.rsplit_once(",p=").unwrap();
        assert!(s
            .verify_client_final(format!("{head},p=AAAA").as_bytes())
            .is_err());
        let swapped = fin.replacen("r=", "r=x", 1);
        assert!(s.verify_client_final(swapped.as_bytes()).is_err());
        assert!(s.verify_client_final(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn rfc7677_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::derive("pencil", salt, 4096);
        let mut s = ServerExchange::start(v, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        // Pin the server nonce to the RFC's.
        s.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        s.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", s.nonce);
        let fin = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            s.verify_client_final(fin.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn md5_matches_postgres() {
        // 'md5' || md5(md5('secret' || 'alice') || 'abcd'), computed independently.
        assert_eq!(
            md5_password("alice", "secret", b"abcd"),
            "md5c90bcafc0a2b54511742383e34d5dc9d"
        );
    }
}
