//! The `sluice-dp` command line: `apikey`, `dev-certs`, `check-config`, and
//! refusing a bad config at start. Needs no PostgreSQL.

use std::num::NonZeroU32;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sluice_tests::client::pem_blocks;
use sluice_tests::process::{self, sluice_bin, Output};
use sluice_tests::{ApiKey, DevCerts, GatewayConfig};

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {s:?}"))
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, msg).as_ref().to_vec()
}

/// Check that `verifier` is the RFC 5802/7677 verifier of `key`.
fn check_verifier(key: &str, verifier: &str) {
    let rest = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .unwrap_or_else(|| panic!("verifier must start with SCRAM-SHA-256$: {verifier}"));
    let (iter_salt, keys) = rest.split_once('$').expect("verifier has two `$` parts");
    let (iters, salt) = iter_salt.split_once(':').expect("<iterations>:<salt>");
    let (stored, server) = keys.split_once(':').expect("<StoredKey>:<ServerKey>");
    let iters: u32 = iters.parse().expect("iteration count");
    assert_eq!(iters, 4096, "iteration count");
    let salt = b64(salt);
    assert!(salt.len() >= 16, "salt of {} bytes", salt.len());
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iters).unwrap(),
        &salt,
        key.as_bytes(),
        &mut salted,
    );
    let client_key = hmac(&salted, b"Client Key");
    let want_stored = ring::digest::digest(&ring::digest::SHA256, &client_key);
    let want_server = hmac(&salted, b"Server Key");
    assert_eq!(
        b64(stored),
        want_stored.as_ref(),
        "StoredKey does not match the key"
    );
    assert_eq!(b64(server), want_server, "ServerKey does not match the key");
}

#[test]
fn apikey_prints_key_and_matching_verifier() {
    let out = process::run(
        Command::new(sluice_bin()).arg("apikey"),
        None,
        Duration::from_secs(30),
    );
    out.assert_success("sluice-dp apikey");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "expected two lines: {:?}", out.stdout);
    let key = lines[0]
        .strip_prefix("key: ")
        .expect("first line `key: ...`");
    let verifier = lines[1]
        .strip_prefix("verifier: ")
        .expect("second line `verifier: ...`");
    assert!(key.len() >= 24, "key too short to be a secret: {key:?}");
    assert!(
        key.bytes().all(|b| b.is_ascii_graphic()),
        "key should be printable ASCII: {key:?}"
    );
    check_verifier(key, verifier);
    // --json, and fresh randomness each time.
    let a = ApiKey::generate();
    let b = ApiKey::generate();
    check_verifier(&a.key, &a.verifier);
    assert_ne!(a.key, b.key);
    assert_ne!(a.verifier, b.verifier);
    assert_ne!(a.key, key);
}

fn verify_cert(certs: &DevCerts, names: &[&str], bad_names: &[&str]) {
    let ca = std::fs::read(&certs.ca_pem).unwrap();
    let server = std::fs::read(&certs.server_pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_blocks(&ca, "CERTIFICATE") {
        roots.add(CertificateDer::from(c)).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = pem_blocks(&server, "CERTIFICATE")
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    assert!(!chain.is_empty(), "server.pem has no certificate");
    let key = std::fs::read_to_string(&certs.server_key).unwrap();
    assert!(
        key.contains("PRIVATE KEY-----"),
        "server.key is not a PEM private key"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    for n in names {
        let name = ServerName::try_from(n.to_string()).unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("server.pem does not verify for {n}: {e}"));
    }
    for n in bad_names {
        let name = ServerName::try_from(n.to_string()).unwrap();
        assert!(
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
                .is_err(),
            "server.pem verifies for {n}, which it should not name"
        );
    }
}

#[test]
fn dev_certs_writes_a_ca_and_a_server_cert_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCerts::generate(dir.path(), &[]);
    verify_cert(&certs, &["127.0.0.1", "localhost"], &["example.com"]);
    let dir2 = tempfile::tempdir().unwrap();
    let certs2 = DevCerts::generate(dir2.path(), &["db.sluice.test", "10.1.2.3"]);
    verify_cert(&certs2, &["db.sluice.test", "10.1.2.3"], &["other.test"]);
    // Two runs make two different CAs.
    assert_ne!(
        std::fs::read(&certs.ca_pem).unwrap(),
        std::fs::read(&certs2.ca_pem).unwrap()
    );
}

fn good_yaml() -> String {
    let key = ApiKey::shared();
    format!(
        "listen: [\"127.0.0.1:16432\"]\nadmin_listen: \"127.0.0.1:19187\"\n{}",
        GatewayConfig::new()
            .connection("app", "127.0.0.1", 5432, "appdb", "app_owner", Some("pw"))
            .identity_key("agent1", &key.verifier, &["bots"])
            .grant(&["app"], &[], &["bots"])
            .to_yaml()
    )
}

fn check_config(yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).unwrap();
    process::run(
        Command::new(sluice_bin())
            .arg("check-config")
            .arg("--config")
            .arg(&p),
        None,
        Duration::from_secs(30),
    )
}

#[test]
fn check_config_accepts_good_and_names_the_bad_field() {
    let good = good_yaml();
    check_config(&good).assert_success("check-config on a good config");
    let cases = [
        (
            "bad port",
            good.replace("port: 5432", "port: lots"),
            "connections[0].target.port",
        ),
        (
            "port 0",
            good.replace("port: 5432", "port: 0"),
            "connections[0].target.port",
        ),
        (
            "unknown field",
            good.replace("user: \"app_owner\"", "user: \"app_owner\", pasword: \"x\""),
            "pasword",
        ),
        (
            "grant of unknown connection",
            good.replace("connections: [\"app\"]", "connections: [\"nope\"]"),
            "grants[0].connections[0]",
        ),
        (
            "bad verifier",
            good.replace(&ApiKey::shared().verifier, "SCRAM-SHA-256$x"),
            "identities[0].api_key",
        ),
        (
            "bad listen",
            good.replace("127.0.0.1:16432", "localhost"),
            "listen[0]",
        ),
    ];
    for (what, yaml, field) in cases {
        assert_ne!(yaml, good, "{what}: replacement did not apply");
        let out = check_config(&yaml);
        assert_eq!(out.status.code(), Some(1), "{what}: exit status: {out:?}");
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            all.contains(field),
            "{what}: output does not name `{field}`: {all}"
        );
    }
}

#[test]
fn gateway_refuses_to_start_on_a_bad_config() {
    let yaml = good_yaml().replace("port: 5432", "port: lots");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, yaml).unwrap();
    let out = process::run(
        Command::new(sluice_bin()).arg("--config").arg(&p),
        None,
        Duration::from_secs(30),
    );
    assert!(
        !out.success(),
        "sluice-dp started with a bad config: {out:?}"
    );
    assert!(
        out.stderr
            .contains("config field `connections[0].target.port`"),
        "stderr should name the field: {}",
        out.stderr
    );
    // A control plane from the environment (as `deploy/local/up.sh` tells
    // `sluicectl` users to export) with a file that carries connections:
    // the error says where the control plane came from.
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("--config")
        .arg(&p)
        .env("SLUICE_CONTROL_PLANE", "http://127.0.0.1:1");
    std::fs::write(&p, good_yaml()).unwrap();
    let out = process::run(&mut cmd, None, Duration::from_secs(30));
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("`connections`") && out.stderr.contains("SLUICE_CONTROL_PLANE"),
        "{}",
        out.stderr
    );
    // A missing file is an error too, not a hang.
    let out = process::run(
        Command::new(sluice_bin())
            .arg("--config")
            .arg(dir.path().join("missing.yaml")),
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success());
}
