//! How the gateway lets the upstream server authenticate it: SCRAM-SHA-256 only unless the
//! config allows weaker methods, and SCRAM bound to the TLS connection (SCRAM-SHA-256-PLUS,
//! tls-server-end-point) when the upstream speaks TLS. Against a PostgreSQL server of its own,
//! whose pg_hba.conf asks some roles for md5, cleartext or nothing.

use pgward_e2e::{connect_direct, Gateway, GatewayOptions, Postgres, TestUser};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// A server of its own (its pg_hba.conf and TLS settings change), with roles that log in by
/// md5, cleartext password and trust, and TLS with a certificate from a CA of the test.
struct Upstream {
    pg: Postgres,
    ca: std::path::PathBuf,
}

fn upstream() -> Upstream {
    let pg = Postgres::start().unwrap();
    let data = pg.dir.join("data");
    let owner = std::fs::metadata(&data).unwrap();
    // A CA, and the server's certificate for 127.0.0.1 / localhost signed by it.
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "upstream test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    for (name, text) in [
        ("server.crt", server.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        let path = data.join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    let ca_path = pg.dir.join("ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let hba = data.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all up_md5 127.0.0.1/32 md5\n\
             host all up_clear 127.0.0.1/32 password\n\
             host all up_trust 127.0.0.1/32 trust\n{rest}"
        ),
    )
    .unwrap();
    pg.superuser_sql(
        "postgres",
        "SET password_encryption = 'md5';
         CREATE ROLE up_md5 LOGIN PASSWORD 'md5-pw';
         RESET password_encryption;
         CREATE ROLE up_clear LOGIN PASSWORD 'clear-pw';
         CREATE ROLE up_trust LOGIN;",
    )
    .unwrap();
    // ALTER SYSTEM cannot share a transaction with the rest.
    pg.superuser_sql("postgres", "ALTER SYSTEM SET ssl = on")
        .unwrap();
    pg.superuser_sql("postgres", "SELECT pg_reload_conf()")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.superuser_sql("postgres", "SHOW ssl").unwrap().trim() != "on" {
        assert!(Instant::now() < deadline, "ssl did not turn on");
        std::thread::sleep(Duration::from_millis(50));
    }
    Upstream { pg, ca: ca_path }
}

fn gateway(up: &Upstream, login: (&str, &str), upstream_extra: &str) -> Gateway {
    Gateway::start(
        &up.pg,
        GatewayOptions {
            users: vec![TestUser::new("alice", "alice-pw", &[])],
            upstream_login: Some((login.0.into(), login.1.into())),
            upstream_extra: upstream_extra.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Connects alice through `gw`: the server's answer to `SELECT current_user`, or the error.
async fn who(gw: &Gateway) -> Result<String, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&gw.conn_str("alice", "postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let rows = client.simple_query("SELECT current_user").await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

fn log_has(gw: &Gateway, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if gw.log().contains(text) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weaker_upstream_methods_are_refused_unless_allowed_and_scram_binds_to_tls() {
    let up = upstream();
    // The upstream itself accepts each role as pg_hba.conf says.
    connect_direct(&up.pg, "postgres").await.unwrap();

    for (role, password, method) in [
        ("up_md5", "md5-pw", "md5"),
        ("up_clear", "clear-pw", "password"),
        ("up_trust", "", "trust"),
    ] {
        // Refused by default, before any credential is sent; the client is told only that
        // the gateway could not log in, the log names the method and the key.
        let gw = gateway(&up, (role, password), "");
        let err = who(&gw).await.unwrap_err();
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(db.code().code(), "08004", "{role}: {db:?}");
        assert!(!db.message().contains(method), "{}", db.message());
        let expected = format!(
            "upstream asked for {method} authentication, which upstream.auth_methods does not allow"
        );
        assert!(log_has(&gw, &expected), "{role}: {}", gw.log());
        drop(gw);
        // Allowed explicitly: it logs in.
        let gw = gateway(
            &up,
            (role, password),
            &format!("auth_methods = [\"scram-sha-256\", \"{method}\"]"),
        );
        assert_eq!(who(&gw).await.unwrap(), role, "{}", gw.log());
    }

    // SCRAM over plain TCP, then over TLS: bound to the connection by the server
    // certificate's hash, which PostgreSQL checks against its own.
    let gw = gateway(
        &up,
        (pgward_e2e::UPSTREAM_USER, pgward_e2e::UPSTREAM_PASSWORD),
        "",
    );
    assert_eq!(who(&gw).await.unwrap(), pgward_e2e::UPSTREAM_USER);
    assert!(log_has(&gw, "mechanism=\"SCRAM-SHA-256\""), "{}", gw.log());
    drop(gw);
    let tls = format!(
        "tls = \"verify-full\"\nca_cert = \"{}\"\nserver_name = \"localhost\"\nchannel_binding = \"require\"",
        up.ca.display()
    );
    let gw = gateway(
        &up,
        (pgward_e2e::UPSTREAM_USER, pgward_e2e::UPSTREAM_PASSWORD),
        &tls,
    );
    assert_eq!(
        who(&gw).await.unwrap(),
        pgward_e2e::UPSTREAM_USER,
        "{}",
        gw.log()
    );
    assert!(
        log_has(&gw, "mechanism=\"SCRAM-SHA-256-PLUS\""),
        "{}",
        gw.log()
    );
    drop(gw);
    // The default (`prefer`) binds too when the server offers it over TLS.
    let gw = gateway(
        &up,
        (pgward_e2e::UPSTREAM_USER, pgward_e2e::UPSTREAM_PASSWORD),
        &tls.replace("\nchannel_binding = \"require\"", ""),
    );
    assert_eq!(who(&gw).await.unwrap(), pgward_e2e::UPSTREAM_USER);
    assert!(
        log_has(&gw, "mechanism=\"SCRAM-SHA-256-PLUS\""),
        "{}",
        gw.log()
    );
    drop(gw);

    // `require` without TLS, or with weaker methods allowed, is a config error naming the key.
    for extra in [
        "channel_binding = \"require\"".to_owned(),
        format!("{tls}\nauth_methods = [\"scram-sha-256\", \"md5\"]"),
        "auth_methods = []".to_owned(),
    ] {
        let err = Gateway::start(
            &up.pg,
            GatewayOptions {
                users: vec![TestUser::new("alice", "alice-pw", &[])],
                upstream_extra: extra.clone(),
                ..Default::default()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{extra} started"));
        let text = format!("{err:#}");
        assert!(
            text.contains("upstream.channel_binding") || text.contains("upstream.auth_methods"),
            "{extra}: {text}"
        );
    }
}

#[test]
fn an_unknown_method_name_is_refused_with_its_key() {
    let dir = std::env::temp_dir().join(format!("pgward-upauth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pgward.toml");
    std::fs::write(
        &config,
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nuser = \"u\"\nauth_methods = [\"kerberos\"]\n[[auth.users]]\nname = \"a\"\npassword = \"SCRAM-SHA-256$4096:AAAA$AAAA:AAAA\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(pgward_e2e::pgward_bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("auth_methods") && text.contains("kerberos"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
