//! Verified identity for agents and services, end to end through the real gateway: signed JWTs
//! (HS256, RS256 from a JWKS file) presented as the password, mTLS client certificates from a
//! configured CA mapped by SAN or CN, a certificate required on top of a password, and an
//! upstream role per identity that the client cannot switch away from. psql, tokio-postgres
//! and psycopg connect with each method.

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pgward_e2e::{plugin_wasm, plugins_dir, run_psql, Gateway, GatewayOptions, Postgres};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const HS_SECRET: &str = "ci-shared-secret-of-at-least-32-bytes!!";
const CI_ISSUER: &str = "https://ci.example";
const IDP_ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "pgward";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An RSA signing key and its public half as a JWK.
struct RsaKey {
    kid: String,
    encoding: EncodingKey,
    public_der: Vec<u8>,
    jwk: Value,
}

impl RsaKey {
    fn generate(kid: &str) -> RsaKey {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let public = private.to_public_key();
        let der = private.to_pkcs1_der().unwrap();
        let public_der = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&public)
            .unwrap()
            .as_bytes()
            .to_vec();
        RsaKey {
            kid: kid.into(),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            public_der,
            jwk: json!({
                "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64(&public.n().to_bytes_be()),
                "e": b64(&public.e().to_bytes_be()),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &self.encoding).unwrap()
    }
}

fn write_jwks(path: &Path, keys: &[&RsaKey]) {
    let set = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, set.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hs_token(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims(iss: &str, sub: &str, groups: &[&str]) -> Value {
    json!({
        "iss": iss, "sub": sub, "aud": AUDIENCE,
        "exp": now() + 600, "iat": now(), "groups": groups,
    })
}

/// A CA that signs client certificates, and a CRL of it.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes a client certificate and key (0600, as libpq demands) under `dir`.
    fn client(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        uri: Option<&str>,
        serial: u64,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(u) = uri {
            p.subject_alt_names = vec![SanType::URI(u.try_into().unwrap())];
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.serial_number = Some(SerialNumber::from(serial));
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }

    fn crl(&self, revoked: &[u64]) -> String {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 2),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// Everything one gateway of these tests needs: keys, CA files, plugins.
struct Fixture {
    dir: PathBuf,
    rsa: RsaKey,
    ca: Ca,
    jwks: PathBuf,
    plugins: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = plugins_dir();
        let rsa = RsaKey::generate("k1");
        let jwks = dir.join("idp-jwks.json");
        write_jwks(&jwks, &[&rsa]);
        let ca = Ca::new("pgward test agents CA");
        std::fs::write(dir.join("agents-ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(dir.join("agents.crl.pem"), ca.crl(&[99])).unwrap();
        // Plugins: guardrails (agents are read-only) and a probe that reports the identity.
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::copy(
            plugin_wasm("guardrails"),
            plugins.join("10-guardrails.wasm"),
        )
        .unwrap();
        std::fs::write(
            plugins.join("10-guardrails.toml"),
            "[[profiles]]\nname = \"agents\"\ngroups = [\"ai-agents\"]\nread_only = true\n\n\
             [[profiles]]\nname = \"others\"\nallow_unbounded_writes = true\n",
        )
        .unwrap();
        std::fs::copy(plugin_wasm("deny_keyword"), plugins.join("20-probe.wasm")).unwrap();
        std::fs::write(
            plugins.join("20-probe.toml"),
            "word = \"whoami_probe\"\nmessage = \"probe\"\nshow_identity = true\n",
        )
        .unwrap();
        Fixture {
            dir,
            rsa,
            ca,
            jwks,
            plugins,
        }
    }

    /// The `[auth]` part: token issuers, certificate rules and `extra` (users, roles).
    fn auth_toml(&self, extra: &str) -> String {
        format!(
            r#"
[[auth.tokens]]
issuer = "{CI_ISSUER}"
audience = "{AUDIENCE}"
algorithms = ["HS256"]
secret = "{HS_SECRET}"
leeway = "5s"
groups = ["ci"]

[[auth.tokens]]
issuer = "{IDP_ISSUER}"
audience = ["{AUDIENCE}", "other"]
algorithms = ["RS256"]
jwks_file = "{jwks}"
leeway = "5s"
groups_claim = "groups"

[[auth.certificates]]
field = "uri-san"
match = "spiffe://example.org/agent/pricing"
identity = "pricing-agent"
groups = ["ai-agents"]

[[auth.certificates]]
field = "uri-san"
pattern = "spiffe://example.org/svc/*"
identity = "svc-{{1}}"
groups = ["services"]

[[auth.certificates]]
field = "cn"
match = "alice"
method = "cert+password"
{extra}
"#,
            jwks = self.jwks.display()
        )
    }

    fn tls_extra(&self) -> String {
        format!(
            "client_ca = [\"{}\"]\nclient_crl = [\"{}\"]\n",
            self.dir.join("agents-ca.pem").display(),
            self.dir.join("agents.crl.pem").display()
        )
    }

    fn start(&self, pg: &Postgres, extra_auth: &str) -> Gateway {
        Gateway::start(
            pg,
            GatewayOptions {
                tls_mode: Some("optional"),
                tls_extra: self.tls_extra(),
                plugins_dir: Some(self.plugins.clone()),
                extra_toml: self.auth_toml(extra_auth),
                users: Vec::new(),
                ..Default::default()
            },
        )
        .unwrap()
    }
}

fn scram_user(name: &str, password: &str, extra: &str) -> String {
    let v = pgward::auth::scram::Verifier::generate(password, 4096).unwrap();
    format!("\n[[auth.users]]\nname = \"{name}\"\npassword = \"{v}\"\n{extra}\n")
}

/// Connects with tokio-postgres, optionally over TLS with a client certificate.
async fn connect(
    gw: &Gateway,
    db: &str,
    user: &str,
    password: Option<&str>,
    cert: Option<&(PathBuf, PathBuf)>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut conf = format!("host=127.0.0.1 port={} user='{user}' dbname={db}", gw.port);
    if let Some(p) = password {
        conf.push_str(&format!(" password='{p}'"));
    }
    match cert {
        None => {
            let (client, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
        Some((crt, key)) => {
            use rustls_pki_types::pem::PemObject;
            use rustls_pki_types::{CertificateDer, PrivateKeyDer};
            conf.push_str(" sslmode=require");
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(gw.cert_path.as_ref().unwrap()).unwrap())
                .unwrap();
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(crt).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap();
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            let (client, conn) = tokio_postgres::connect(&conf, tls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}

/// The probe plugin's report of who the session is (the message of its refusal).
async fn whoami(client: &tokio_postgres::Client) -> String {
    let e = client
        .simple_query("SELECT 'whoami_probe'")
        .await
        .expect_err("the probe denies");
    e.as_db_error()
        .expect("a server error")
        .message()
        .to_owned()
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_agents_authenticate_and_their_identity_and_groups_reach_plugins() {
    let pg = Postgres::shared();
    let db = pg.create_database("jwt").unwrap();
    pg.superuser_sql(
        &db,
        "CREATE TABLE notes (id int); GRANT ALL ON notes TO pgward_gw;",
    )
    .unwrap();
    let f = Fixture::new();
    let gw = f.start(pg, "");

    // HS256 from the CI issuer: its configured group applies.
    let t = hs_token(&claims(CI_ISSUER, "deployer", &[]));
    let c = connect(&gw, &db, "deployer", Some(&t), None).await.unwrap();
    let who = whoami(&c).await;
    assert!(
        who.contains(
            "[user=deployer groups=ci proven_by=token issuer=https://ci.example subject=- role=-]"
        ),
        "{who}"
    );
    c.simple_query("INSERT INTO notes VALUES (1)")
        .await
        .unwrap();

    // RS256 from the IdP's JWKS file: the token's groups claim puts the agent in ai-agents,
    // whose guardrails profile is read-only.
    let t = f.rsa.sign(&claims(IDP_ISSUER, "agent-7", &["ai-agents"]));
    let c = connect(&gw, &db, "agent-7", Some(&t), None).await.unwrap();
    assert!(whoami(&c)
        .await
        .contains("user=agent-7 groups=ai-agents proven_by=token issuer=https://idp.example"));
    let rows = c
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 1);
    let e = c
        .simple_query("INSERT INTO notes VALUES (2)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert!(
        e.as_db_error().unwrap().message().contains("read-only")
            || format!("{e:?}").contains("read-only"),
        "{e:?}"
    );

    // psql with the token as its password.
    let out = run_psql(
        &format!("host=127.0.0.1 port={} user=agent-7 dbname={db}", gw.port),
        &t,
        &["-c", "SELECT count(*) FROM notes"],
        None,
    );
    assert_eq!(pgward_e2e::stdout_ok(&out).trim(), "1");

    // The JWKS file is reloaded when it changes: a rotated-in key verifies at once.
    let k2 = RsaKey::generate("k2");
    let t2 = k2.sign(&claims(IDP_ISSUER, "agent-8", &[]));
    assert_eq!(
        sqlstate(
            &connect(&gw, &db, "agent-8", Some(&t2), None)
                .await
                .unwrap_err()
        ),
        "28P01"
    );
    write_jwks(&f.jwks, &[&f.rsa, &k2]);
    connect(&gw, &db, "agent-8", Some(&t2), None)
        .await
        .expect("the new key is picked up from the changed JWKS file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_all_refused_alike_and_the_log_says_why() {
    let pg = Postgres::shared();
    let db = pg.create_database("jwtbad").unwrap();
    let f = Fixture::new();
    let gw = f.start(pg, "");
    let good = claims(IDP_ISSUER, "agent-1", &[]);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let other_key = RsaKey::generate("k1"); // same kid, another key
    let unknown_kid = RsaKey::generate("k-unknown");
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_bytes())
    );
    // HS256 "signed" with the issuer's RSA public key as the HMAC secret: the classic
    // algorithm confusion.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(&f.rsa.public_der),
    )
    .unwrap();
    let tampered = {
        let t = f.rsa.sign(&good);
        let parts: Vec<&str> = t.split('.').collect();
        let evil = with("groups", json!(["dba"]));
        format!(
            "{}.{}.{}",
            parts[0],
            b64(evil.to_string().as_bytes()),
            parts[2]
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("expired", f.rsa.sign(&with("exp", json!(now() - 3600)))),
        (
            "not yet valid",
            f.rsa.sign(&with("nbf", json!(now() + 3600))),
        ),
        (
            "wrong audience",
            f.rsa.sign(&with("aud", json!("someone-else"))),
        ),
        (
            "wrong issuer",
            f.rsa.sign(&with("iss", json!("https://evil.example"))),
        ),
        ("no exp", {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("exp");
            f.rsa.sign(&c)
        }),
        ("alg none", none_token),
        ("HS/RS confusion", confused),
        ("tampered payload", tampered),
        ("wrongly signed", other_key.sign(&good)),
        ("unknown key", unknown_kid.sign(&good)),
        ("HS256 with a wrong secret", {
            encode(
                &Header::new(Algorithm::HS256),
                &claims(CI_ISSUER, "agent-1", &[]),
                &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-it"),
            )
            .unwrap()
        }),
        (
            "another identity",
            f.rsa.sign(&claims(IDP_ISSUER, "agent-2", &[])),
        ),
        ("not a JWT", "hunter2".into()),
    ];
    let mut messages = std::collections::HashSet::new();
    for (what, token) in &cases {
        let e = connect(&gw, &db, "agent-1", Some(token), None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: the token was accepted"));
        assert_eq!(sqlstate(&e), "28P01", "{what}: {e}");
        messages.insert(e.as_db_error().unwrap().message().to_owned());
    }
    // The client learns nothing about which check failed.
    assert_eq!(
        messages.into_iter().collect::<Vec<_>>(),
        vec!["token authentication failed for user \"agent-1\"".to_owned()]
    );
    // The operator does.
    let log = gw.log();
    for reason in [
        "ExpiredSignature",
        "ImmatureSignature",
        "InvalidAudience",
        "no configured issuer matches iss \"https://evil.example\"",
        "Missing required claim: exp",
        "unknown variant `none`",
        "algorithm \"HS256\" is not allowed",
        "InvalidSignature",
        "no key for kid \"k-unknown\"",
        "proves another identity",
    ] {
        assert!(log.contains(reason), "the log names {reason:?}:\n{log}");
    }
    // The good token still works.
    connect(&gw, &db, "agent-1", Some(&f.rsa.sign(&good)), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_map_to_identities_and_bad_ones_are_refused() {
    let pg = Postgres::shared();
    let db = pg.create_database("mtls").unwrap();
    let f = Fixture::new();
    let gw = f.start(
        pg,
        &scram_user(
            "alice",
            "alice-pw",
            "groups = [\"dev\"]\nrequire_certificate = true",
        ),
    );
    let d = &f.dir;
    let pricing = f.ca.client(
        d,
        "pricing",
        "pricing",
        Some("spiffe://example.org/agent/pricing"),
        10,
    );
    let billing = f.ca.client(
        d,
        "billing",
        "billing",
        Some("spiffe://example.org/svc/billing"),
        11,
    );
    let no_san = f.ca.client(d, "nosan", "pricing-agent", None, 12);
    let revoked = f.ca.client(
        d,
        "revoked",
        "r",
        Some("spiffe://example.org/agent/pricing"),
        99,
    );
    let alice_cert = f.ca.client(d, "alice", "alice", None, 13);
    let other_ca = Ca::new("someone else's CA");
    let foreign = other_ca.client(
        d,
        "foreign",
        "x",
        Some("spiffe://example.org/agent/pricing"),
        10,
    );

    // The certificate alone proves the SPIFFE ID's identity, with the rule's groups: the
    // agents' read-only guardrails profile applies.
    let c = connect(&gw, &db, "pricing-agent", None, Some(&pricing))
        .await
        .unwrap();
    let who = whoami(&c).await;
    assert!(
        who.contains("[user=pricing-agent groups=ai-agents proven_by=certificate issuer=- subject=spiffe://example.org/agent/pricing role=-]"),
        "{who}"
    );
    let e = c.simple_query("CREATE TABLE t (a int)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let c = connect(&gw, &db, "svc-billing", None, Some(&billing))
        .await
        .unwrap();
    assert!(whoami(&c)
        .await
        .contains("user=svc-billing groups=services proven_by=certificate"));

    // Refused: another CA's certificate and a revoked one (in the handshake), one without the
    // SAN a rule needs, one presented for another user.
    for (what, cert, user) in [
        ("another CA", &foreign, "pricing-agent"),
        ("revoked", &revoked, "pricing-agent"),
    ] {
        let e = connect(&gw, &db, user, None, Some(cert)).await.unwrap_err();
        assert!(
            e.as_db_error().is_none(),
            "{what}: refused in the TLS handshake: {e}"
        );
    }
    for (what, cert, user) in [
        ("no SAN", &no_san, "pricing-agent"),
        ("another identity", &pricing, "svc-billing"),
    ] {
        let e = connect(&gw, &db, user, None, Some(cert)).await.unwrap_err();
        assert_eq!(sqlstate(&e), "28000", "{what}: {e}");
        assert_eq!(
            e.as_db_error().unwrap().message(),
            format!("certificate authentication failed for user \"{user}\"")
        );
    }
    let log = gw.log();
    assert!(log.contains("matches no auth.certificates rule"), "{log}");
    assert!(log.contains("proves another identity"), "{log}");

    // alice must bring both: her password alone is refused, with her certificate it works.
    let e = connect(&gw, &db, "alice", Some("alice-pw"), None)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{e}");
    let c = connect(&gw, &db, "alice", Some("alice-pw"), Some(&alice_cert))
        .await
        .unwrap();
    assert!(whoami(&c)
        .await
        .contains("user=alice groups=dev proven_by=password+certificate issuer=- subject=alice"));
    let e = connect(&gw, &db, "alice", Some("wrong"), Some(&alice_cert))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_upstream_role_applies_grants_and_cannot_be_switched_back() {
    let pg = Postgres::shared();
    let db = pg.create_database("roles").unwrap();
    let role = format!("{db}_agent");
    pg.superuser_sql(
        &db,
        &format!(
            "CREATE ROLE {role} NOLOGIN; GRANT {role} TO pgward_gw;
             CREATE TABLE catalog_items (id int); INSERT INTO catalog_items VALUES (1), (2);
             CREATE TABLE salaries (who text, amount int); INSERT INTO salaries VALUES ('x', 1);
             GRANT SELECT ON catalog_items TO {role};
             GRANT ALL ON salaries TO pgward_gw;"
        ),
    )
    .unwrap();
    let f = Fixture::new();
    let gw = f.start(
        pg,
        &format!("\n[[auth.roles]]\ngroup = \"ai-agents\"\nrole = \"{role}\"\n"),
    );
    let t = f.rsa.sign(&claims(IDP_ISSUER, "agent-r", &["ai-agents"]));
    let c = connect(&gw, &db, "agent-r", Some(&t), None).await.unwrap();
    let row = c
        .query_one("SELECT current_user::text, session_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), role);
    assert_eq!(row.get::<_, String>(1), "pgward_gw");
    assert!(whoami(&c).await.contains(&format!("role={role}]")));
    // PostgreSQL's own grants apply to the identity: the mapped role may read the catalog but
    // not the salaries the gateway's own role could read.
    let n: i64 = c
        .query_one("SELECT count(*) FROM catalog_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let e = c.simple_query("SELECT * FROM salaries").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("permission denied"),
        "{e}"
    );
    // Every way of switching the role back is refused by the gateway.
    for sql in [
        "SET ROLE pgward_gw",
        "SET ROLE NONE",
        "set role = 'pgward_gw'",
        "SET SESSION ROLE pgward_gw",
        "SET LOCAL ROLE pgward_gw",
        "RESET ROLE",
        "RESET role",
        "SET SESSION AUTHORIZATION pgward_gw",
        "SET SESSION AUTHORIZATION DEFAULT",
        "RESET SESSION AUTHORIZATION",
        "SELECT set_config('role', 'pgward_gw', false)",
        "SELECT pg_catalog.set_config('role', 'pgward_gw', false)",
        "SELECT SET_CONFIG(chr(114)||'ole', 'pgward_gw', false)",
        "DISCARD ALL",
        "DO $$ BEGIN EXECUTE 'SET ROLE pgward_gw'; END $$",
    ] {
        let e = c
            .simple_query(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
        let row = c.query_one("SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), role, "after {sql}");
        // The extended protocol is judged the same way.
        assert!(c.prepare(sql).await.is_err(), "prepare {sql}");
    }
    // Startup options cannot pick the role either.
    let conf = format!(
        "host=127.0.0.1 port={} user=agent-r dbname={db} password='{t}' options='-c role=pgward_gw'",
        gw.port
    );
    let e = tokio_postgres::connect(&conf, tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    // A role the gateway cannot set refuses the session rather than running it as pgward_gw.
    let gw2 = f.start(
        pg,
        "\n[[auth.roles]]\ngroup = \"ai-agents\"\nrole = \"no_such_role_at_all\"\n",
    );
    let e = connect(&gw2, &db, "agent-r", Some(&t), None)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert!(gw2.log().contains("SET ROLE"), "{}", gw2.log());
}

/// psql, tokio-postgres and psycopg each connect with a password, a token and a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_tokio_postgres_and_psycopg_connect_with_every_method() {
    let pg = Postgres::shared();
    let db = pg.create_database("idclients").unwrap();
    let f = Fixture::new();
    let gw = f.start(pg, &scram_user("bob", "bob-pw", "groups = [\"dev\"]"));
    let pricing = f.ca.client(
        &f.dir,
        "pricing",
        "pricing",
        Some("spiffe://example.org/agent/pricing"),
        20,
    );
    let token = f.rsa.sign(&claims(IDP_ISSUER, "agent-9", &["ops"]));
    type Method<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a (PathBuf, PathBuf)>,
        &'a str,
    );
    let methods: [Method; 3] = [
        (
            "password",
            "bob",
            Some("bob-pw"),
            None,
            "proven_by=password",
        ),
        ("token", "agent-9", Some(&token), None, "proven_by=token"),
        (
            "certificate",
            "pricing-agent",
            None,
            Some(&pricing),
            "proven_by=certificate",
        ),
    ];
    for (method, user, password, cert, expect) in methods {
        // tokio-postgres
        let c = connect(&gw, &db, user, password, cert).await.unwrap();
        assert!(
            whoami(&c).await.contains(expect),
            "tokio-postgres, {method}"
        );
        // psql and psycopg take the same libpq connection string.
        let mut conninfo = format!("host=127.0.0.1 port={} user={user} dbname={db}", gw.port);
        if let Some((crt, key)) = cert {
            conninfo.push_str(&format!(
                " sslmode=require sslcert={} sslkey={}",
                crt.display(),
                key.display()
            ));
        }
        let out = run_psql(
            &conninfo,
            password.unwrap_or(""),
            &["-c", "SELECT 'whoami_probe'"],
            None,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "psql, {method}: {err}");
        // Debian's Python, where python3-psycopg is installed (scripts/prereqs.sh).
        let out = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(PSYCOPG_PROBE)
            .arg(&conninfo)
            .env("PGPASSWORD", password.unwrap_or(""))
            .output()
            .expect("python3 runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "psycopg, {method}: {text}");
        assert!(
            text.contains("42501") && text.contains(expect),
            "psycopg, {method}: {text}"
        );
    }
}

const PSYCOPG_PROBE: &str = r#"
import sys
import psycopg
with psycopg.connect(sys.argv[1]) as conn:
    try:
        conn.execute("SELECT 'whoami_probe'")
        print("not denied")
        sys.exit(1)
    except psycopg.Error as e:
        print(e.sqlstate, str(e))
"#;

/// A plugin built for contract 0.3 keeps loading and sees its sessions' users and groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_built_for_contract_0_3_keep_working() {
    let pg = Postgres::shared();
    let db = pg.create_database("v03").unwrap();
    let dir = plugins_dir();
    std::fs::copy(plugin_wasm("contract_0_3"), dir.join("10-old.wasm")).unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            plugins_dir: Some(dir),
            ..Default::default()
        },
    )
    .unwrap();
    let c = gw.connect("alice", &db).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let e = c.simple_query("SELECT 'v03_probe'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "contract 0.3 plugin saw user=alice groups=dev"
    );
    assert!(gw.log().contains("contract=V0_3"), "{}", gw.log());
}

/// `pgward check-config` reads the CA bundles, CRLs and JWKS files and checks the mapping
/// rules, naming the file and key of each problem.
#[test]
fn check_config_validates_ca_bundles_crls_jwks_files_and_mapping_rules() {
    let dir = plugins_dir();
    let ca = Ca::new("check CA");
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.join("crl.pem"), ca.crl(&[])).unwrap();
    let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("server.crt"), server.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server.key_pair.serialize_pem()).unwrap();
    let rsa = RsaKey::generate("k1");
    write_jwks(&dir.join("jwks.json"), &[&rsa]);
    std::fs::write(dir.join("garbage.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("garbage.json"), "{ not json").unwrap();
    std::fs::write(
        dir.join("badkey.json"),
        r#"{"keys":[{"kty":"RSA","kid":"x","n":"AQAB","e":""}]}"#,
    )
    .unwrap();
    let config = |ca: &str, crl: &str, jwks: &str, algorithms: &str, identity: &str| {
        format!(
            r#"
[listen]
address = "127.0.0.1:6543"
[upstream]
host = "127.0.0.1"
user = "gw"
[tls]
mode = "optional"
cert = "server.crt"
key = "server.key"
client_ca = ["{ca}"]
client_crl = ["{crl}"]
[[auth.tokens]]
issuer = "https://idp.example"
audience = "pgward"
algorithms = {algorithms}
jwks_file = "{jwks}"
[[auth.certificates]]
pattern = "spiffe://example.org/agent/*"
identity = "{identity}"
"#
        )
    };
    let check = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(pgward_e2e::pgward_bin())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = || {
        config(
            "ca.pem",
            "crl.pem",
            "jwks.json",
            r#"["RS256"]"#,
            "agent-{1}",
        )
    };
    let (ok, err) = check("good.toml", good());
    assert!(ok, "{err}");
    for (name, text, expect) in [
        (
            "ca.toml",
            config("garbage.pem", "crl.pem", "jwks.json", r#"["RS256"]"#, "a"),
            "garbage.pem: no PEM certificate found",
        ),
        (
            "crl.toml",
            config("ca.pem", "garbage.pem", "jwks.json", r#"["RS256"]"#, "a"),
            "garbage.pem",
        ),
        (
            "jwks.toml",
            config("ca.pem", "crl.pem", "garbage.json", r#"["RS256"]"#, "a"),
            "auth.tokens[0].jwks_file: not a JWKS",
        ),
        (
            "key.toml",
            config("ca.pem", "crl.pem", "badkey.json", r#"["RS256"]"#, "a"),
            "auth.tokens[0].jwks_file: key \"x\" cannot verify signatures",
        ),
        (
            "none.toml",
            config("ca.pem", "crl.pem", "jwks.json", r#"["none"]"#, "a"),
            "none.toml: auth.tokens[0].algorithms: \"none\" is never accepted",
        ),
        (
            "rule.toml",
            config("ca.pem", "crl.pem", "jwks.json", r#"["RS256"]"#, "agent-{2}"),
            "rule.toml: auth.certificates[0].identity: \"agent-{2}\": {2} but the pattern has 1 star(s)",
        ),
        (
            "nojwks.toml",
            good().replace("jwks_file = \"jwks.json\"\n", ""),
            "nojwks.toml: auth.tokens[0].jwks_file: an RS/ES/PS/EdDSA algorithm is allowed",
        ),
    ] {
        let (ok, err) = check(name, text);
        assert!(!ok, "{name} passed");
        assert!(err.contains(expect), "{name}: expected {expect:?} in:\n{err}");
    }
}

/// An issuer's keys from a JWKS URL: fetched at start, cached, fetched again for a key id it
/// does not know yet (a rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_cached_and_refetched_for_a_new_key() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let pg = Postgres::shared();
    let db = pg.create_database("jwksurl").unwrap();
    let k1 = RsaKey::generate("u1");
    let k2 = RsaKey::generate("u2");
    let served = Arc::new(Mutex::new(json!({ "keys": [k1.jwk.clone()] }).to_string()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    {
        let (served, fetches) = (served.clone(), fetches.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: Vec::new(),
            extra_toml: format!(
                "[[auth.tokens]]\nissuer = \"{IDP_ISSUER}\"\naudience = \"{AUDIENCE}\"\nalgorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:{port}/jwks\"\njwks_refresh = \"1h\"\n"
            ),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched once at start");
    for _ in 0..3 {
        let t = k1.sign(&claims(IDP_ISSUER, "agent-u", &[]));
        connect(&gw, &db, "agent-u", Some(&t), None).await.unwrap();
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached for jwks_refresh");
    // The issuer rotates in a key: the first token naming it makes the gateway fetch again.
    *served.lock().unwrap() = json!({ "keys": [k1.jwk.clone(), k2.jwk.clone()] }).to_string();
    let t = k2.sign(&claims(IDP_ISSUER, "agent-u", &[]));
    // The refetch waits 30 s after the last fetch, so it is not a way to hammer the issuer.
    let e = connect(&gw, &db, "agent-u", Some(&t), None)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert!(gw.log().contains("no key for kid \"u2\""), "{}", gw.log());
}
