//! The command line: config validation, password hashing, SQL explain.

use pgward_e2e::pgward_bin;
use std::io::Write as _;
use std::process::{Command, Stdio};

fn run(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(pgward_bin())
        .args(args)
        .env_remove("PGWARD_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgward-test-{}-cli", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"
[listen]
address = "127.0.0.1:6543"
[upstream]
host = "127.0.0.1"
user = "gw"
[auth]
method = "trust"
[[auth.users]]
name = "alice"
groups = ["dev"]
"#;

#[test]
fn check_config_accepts_good_and_names_file_and_key_of_bad() {
    let good = config_file("good.toml", GOOD);
    let (ok, stdout, stderr) = run(&["check-config", "--config", good.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok"));

    let typo = config_file(
        "typo.toml",
        &GOOD.replace("user = \"gw\"", "user = \"gw\"\nprot = 5432"),
    );
    let (ok, _, stderr) = run(&["check-config", "--config", typo.to_str().unwrap()], None);
    assert!(!ok);
    assert!(
        stderr.contains("typo.toml") && stderr.contains("prot"),
        "{stderr}"
    );

    let bad_value = config_file("bad.toml", &GOOD.replace("127.0.0.1:6543", "localhost"));
    let (ok, _, stderr) = run(
        &["check-config", "--config", bad_value.to_str().unwrap()],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("bad.toml: listen.address:"), "{stderr}");

    let (ok, _, stderr) = run(
        &["check-config", "--config", "/nonexistent/pgward.toml"],
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/pgward.toml: cannot read"),
        "{stderr}"
    );

    // Command-line overrides are validated too.
    let (ok, _, stderr) = run(
        &[
            "check-config",
            "--config",
            good.to_str().unwrap(),
            "--listen",
            "nope",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("listen.address"), "{stderr}");

    let missing_cert = config_file(
        "tls.toml",
        &format!(
            "[tls]\nmode = \"required\"\ncert = \"missing.crt\"\nkey = \"missing.key\"\n{GOOD}"
        ),
    );
    let (ok, _, stderr) = run(
        &["check-config", "--config", missing_cert.to_str().unwrap()],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("missing.crt"), "{stderr}");
}

#[test]
fn hash_password_prints_a_verifier_the_config_accepts() {
    let (ok, stdout, stderr) = run(&["hash-password"], Some("correct horse\n"));
    assert!(ok, "{stderr}");
    let verifier = stdout.trim();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(!stdout.contains("correct horse"));
    let text = GOOD
        .replace("[auth]\nmethod = \"trust\"\n", "")
        .replace("groups = [\"dev\"]", &format!("password = \"{verifier}\""));
    let path = config_file("hashed.toml", &text);
    let (ok, _, stderr) = run(&["check-config", "--config", path.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    let (ok, _, _) = run(&["hash-password"], Some(""));
    assert!(!ok, "empty password refused");
}

#[test]
fn explain_prints_the_analysis_as_json() {
    let (ok, stdout, stderr) = run(
        &[
            "explain",
            "WITH gone AS (DELETE FROM app.orders WHERE id = 4 RETURNING *) SELECT * FROM gone",
        ],
        None,
    );
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let stmt = &v["statements"][0];
    let writes = stmt["writes"].as_array().unwrap();
    assert_eq!(writes.len(), 1, "{stdout}");
    assert_eq!(writes[0]["relation"]["schema"], "app");
    assert_eq!(writes[0]["relation"]["name"], "orders");
    assert!(v["fingerprint"].as_str().unwrap().contains("?"), "{stdout}");
    let (ok, stdout, _) = run(&["explain", "DO $$ BEGIN PERFORM 1; END $$"], None);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["statements"][0]["kind"], "unknown", "{stdout}");
}
