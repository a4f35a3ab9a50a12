//! Client authentication by the gateway itself, and TLS towards clients.

use pgward_e2e::{run_psql, stdout_ok, Gateway, GatewayOptions, Postgres, TestUser};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn scram_login_succeeds_and_wrong_password_gets_28p01() {
    let pg = Postgres::shared();
    let db = pg.create_database("auth").unwrap();
    let gw = Gateway::start(pg, GatewayOptions::default()).unwrap();

    let client = gw.connect("alice", &db).await.unwrap();
    let v: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);

    let bad = format!(
        "host=127.0.0.1 port={} user=alice password=nope dbname={db}",
        gw.port
    );
    let Err(err) = tokio_postgres::connect(&bad, tokio_postgres::NoTls).await else {
        panic!("login with a wrong password must fail")
    };
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");

    // An unknown user fails exactly like a wrong password: names cannot be probed.
    let ghost = format!(
        "host=127.0.0.1 port={} user=ghost password=x dbname={db}",
        gw.port
    );
    let Err(err) = tokio_postgres::connect(&ghost, tokio_postgres::NoTls).await else {
        panic!("login as an unknown user must fail")
    };
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");

    // psql sees the same error text PostgreSQL would print.
    let out = run_psql(
        &format!("host=127.0.0.1 port={} user=alice dbname={db}", gw.port),
        "wrong",
        &["-c", "SELECT 1"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("password authentication failed for user \"alice\""),
        "{}",
        stderr(&out)
    );

    // The password never appears in the gateway log, and SQL text is not logged at info.
    let log = gw.log();
    assert!(!log.contains("alice-pw"));
    assert!(log.contains("password authentication failed"));
}

#[test]
fn groups_and_identity_are_logged_not_secrets() {
    let pg = Postgres::shared();
    let db = pg.create_database("auth").unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: vec![TestUser::new(
                "agent-7",
                "Tr1cky pass'word",
                &["ai-agents", "readers"],
            )],
            ..Default::default()
        },
    )
    .unwrap();
    let out = gw.psql("agent-7", &db, &["-c", "SELECT 'secret-literal-123'"], None);
    assert_eq!(stdout_ok(&out), "secret-literal-123\n");
    let log = gw.log();
    let auth_line = log
        .lines()
        .find(|l| l.contains("authenticated"))
        .expect("an authenticated line");
    assert!(
        auth_line.contains("agent-7") && auth_line.contains("ai-agents"),
        "{auth_line}"
    );
    let info_lines: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(!info_lines.is_empty());
    assert!(
        info_lines.iter().all(|l| !l.contains("secret-literal-123")),
        "SQL text at info level"
    );
}

#[test]
fn tls_with_sslmode_require() {
    let pg = Postgres::shared();
    let db = pg.create_database("tls").unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            tls_mode: Some("required"),
            ..Default::default()
        },
    )
    .unwrap();
    let base = format!("host=127.0.0.1 port={} user=alice dbname={db}", gw.port);
    let out = run_psql(
        &format!("{base} sslmode=require"),
        "alice-pw",
        &["-c", "SELECT 'over tls'"],
        None,
    );
    assert_eq!(stdout_ok(&out), "over tls\n");
    // Verifying the server certificate against the generated CA works too.
    let cert = gw.cert_path.as_ref().unwrap().display().to_string();
    let out = run_psql(
        &format!("{base} sslmode=verify-full sslrootcert={cert} host=localhost"),
        "alice-pw",
        &["-c", "SELECT 1"],
        None,
    );
    assert_eq!(stdout_ok(&out), "1\n");
    // Without TLS the gateway refuses the connection.
    let out = run_psql(
        &format!("{base} sslmode=disable"),
        "alice-pw",
        &["-c", "SELECT 1"],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("requires TLS"), "{}", stderr(&out));
}

#[test]
fn tls_optional_serves_both_and_disabled_answers_n() {
    let pg = Postgres::shared();
    let db = pg.create_database("tls").unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            tls_mode: Some("optional"),
            ..Default::default()
        },
    )
    .unwrap();
    let base = format!("host=127.0.0.1 port={} user=alice dbname={db}", gw.port);
    for mode in ["require", "disable", "prefer"] {
        let out = run_psql(
            &format!("{base} sslmode={mode}"),
            "alice-pw",
            &["-c", "SELECT 'm'"],
            None,
        );
        assert_eq!(stdout_ok(&out), "m\n", "sslmode={mode}");
    }
    let plain = Gateway::start(pg, GatewayOptions::default()).unwrap();
    let out = run_psql(
        &format!(
            "host=127.0.0.1 port={} user=alice dbname={db} sslmode=require",
            plain.port
        ),
        "alice-pw",
        &["-c", "SELECT 1"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not support SSL"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn trust_mode_admits_only_configured_users() {
    let pg = Postgres::shared();
    let db = pg.create_database("trust").unwrap();
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            trust: true,
            ..Default::default()
        },
    )
    .unwrap();
    let out = run_psql(
        &format!("host=127.0.0.1 port={} user=alice dbname={db}", gw.port),
        "",
        &["-c", "SELECT 'trusted'"],
        None,
    );
    assert_eq!(stdout_ok(&out), "trusted\n");
    let out = run_psql(
        &format!("host=127.0.0.1 port={} user=mallory dbname={db}", gw.port),
        "",
        &["-c", "SELECT 1"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not known to pgward"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn startup_settings_that_change_the_role_are_refused() {
    let pg = Postgres::shared();
    let db = pg.create_database("auth").unwrap();
    let gw = Gateway::start(pg, GatewayOptions::default()).unwrap();
    let conninfo = format!("host=127.0.0.1 port={} user=alice dbname={db}", gw.port);
    for options in [
        "-c role=postgres",
        "-crole=postgres",
        "-c r\\ole=postgres",
        "-c client_encoding=SJIS",
    ] {
        let out = run_psql(
            &format!("{conninfo} options='{}'", options.replace('\\', "\\\\")),
            "alice-pw",
            &["-c", "SELECT current_user"],
            None,
        );
        assert!(!out.status.success(), "{options} must be refused");
        assert!(
            stderr(&out).contains("not allowed through pgward")
                || stderr(&out).contains("not supported by pgward"),
            "{options}: {}",
            stderr(&out)
        );
    }
    // Harmless settings pass through.
    let out = run_psql(
        &format!("{conninfo} options='-c statement_timeout=5s'"),
        "alice-pw",
        &["-c", "SHOW statement_timeout"],
        None,
    );
    assert_eq!(stdout_ok(&out), "5s\n");
}

#[tokio::test]
async fn non_ascii_passwords_work_upstream_and_for_clients_after_saslprep() {
    let pg = Postgres::shared();
    let db = pg.create_database("auth").unwrap();
    // SASLprep changes both passwords (U+2163 is "IV" under NFKC, U+00A0 becomes a space), so
    // hashing the raw UTF-8 bytes, as the gateway once did, fails against PostgreSQL's verifier
    // and against libpq's proof.
    let upstream_password = "\u{2163}-gateway\u{00A0}s\u{00E9}cret";
    pg.superuser_sql(
        "postgres",
        &format!("CREATE ROLE pgward_unicode LOGIN PASSWORD '{upstream_password}'"),
    )
    .unwrap();
    let client_password = "\u{216B}-\u{00E4}lice\u{00A0}pw";
    let gw = Gateway::start(
        pg,
        GatewayOptions {
            users: vec![TestUser::new("alice", client_password, &["dev"])],
            upstream_login: Some(("pgward_unicode".into(), upstream_password.into())),
            ..Default::default()
        },
    )
    .unwrap();
    let out = gw.psql("alice", &db, &["-c", "SELECT current_user"], None);
    assert_eq!(stdout_ok(&out).trim(), "pgward_unicode", "{}", gw.log());
    // tokio-postgres applies SASLprep too (its connection-string parser would split at the
    // no-break space, so the password is set directly).
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(gw.port)
        .user("alice")
        .password(client_password)
        .dbname(&db)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let who: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "pgward_unicode");
    pg.superuser_sql("postgres", "DROP OWNED BY pgward_unicode")
        .ok();
}
