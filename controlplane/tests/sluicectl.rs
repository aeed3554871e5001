//! The real `sluicectl` binary, for what needs no control plane: `certs`
//! writes a CA and certificates that rustls accepts (proved by an
//! in-memory mTLS handshake), local document errors exit 2 before anything
//! is sent, and an unreachable control plane exits 3 at once. Nothing is
//! started besides the binary; tests against a running `sluice-cp` live
//! with the server.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn sluicectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(args)
        .env_remove("SLUICE_CONTROL_PLANE")
        .env_remove("SLUICE_CA")
        .env_remove("SLUICE_CERT")
        .env_remove("SLUICE_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run sluicectl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback URL nobody listens on.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

// ---------------------------------------------------------------- certs

fn chain(dir: &Path, name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(dir: &Path, name: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(dir: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in chain(dir, "ca") {
        roots.add(c).unwrap();
    }
    Arc::new(roots)
}

/// The control plane's side: its certificate, client certificates required.
fn server_config(dir: &Path, cert: &str) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(dir), provider())
        .build()
        .unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(dir, cert), key(dir, cert))
            .unwrap(),
    )
}

/// A node's or sluicectl's side: trusts ca.pem, presents `cert`.
fn client_config(dir: &Path, cert: &str) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(dir))
            .with_client_auth_cert(chain(dir, cert), key(dir, cert))
            .unwrap(),
    )
}

/// Runs a TLS handshake between `client_cert` (connecting to `name`) and
/// the server using `server_cert`, entirely in memory, then sends a byte
/// each way. Returns the first error either side reports.
fn handshake(dir: &Path, server_cert: &str, client_cert: &str, name: &str) -> Result<(), String> {
    let mut c = ClientConnection::new(
        client_config(dir, client_cert),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let mut s = ServerConnection::new(server_config(dir, server_cert)).unwrap();
    let mut wire = Vec::new();
    for _ in 0..20 {
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    if c.is_handshaking() || s.is_handshaking() {
        return Err("handshake did not finish".into());
    }
    let peer = s.peer_certificates().ok_or("no client certificate")?;
    assert_eq!(peer[0], chain(dir, client_cert)[0]);
    use std::io::{Read, Write};
    c.writer().write_all(b"ping").unwrap();
    wire.clear();
    c.write_tls(&mut wire).unwrap();
    s.read_tls(&mut &wire[..]).unwrap();
    s.process_new_packets()
        .map_err(|e| format!("server: {e}"))?;
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    Ok(())
}

#[test]
fn certs_make_a_working_mtls_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = dir.to_str().unwrap();
    let out = sluicectl(&[
        "certs",
        "--dir",
        d,
        "--host",
        "cp.example.com",
        "--host",
        "10.1.2.3",
        "--days",
        "30",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("--cert"), "{stdout}");
    assert!(stdout.contains(&format!("{d}/admin.pem")), "{stdout}");

    for name in ["ca", "control-plane", "node", "admin"] {
        let mode = std::fs::metadata(dir.join(format!("{name}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key is private");
    }

    // sluicectl and data planes, with their own certificates, reach the
    // control plane under each of its names.
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "cp.example.com",
        "10.1.2.3",
    ] {
        handshake(&dir, "control-plane", "admin", name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    handshake(&dir, "control-plane", "node", "localhost").unwrap();

    // Names the certificate does not carry are refused.
    let e = handshake(&dir, "control-plane", "admin", "other.example.com").unwrap_err();
    assert!(
        e.starts_with("client:") && e.contains("not valid for name"),
        "{e}"
    );
    // The server certificate is no client certificate (serverAuth only)…
    let e = handshake(&dir, "control-plane", "control-plane", "localhost").unwrap_err();
    assert!(
        e.starts_with("server:") && e.contains("client authentication"),
        "{e}"
    );
    // …and a client certificate cannot serve.
    let e = handshake(&dir, "node", "admin", "localhost").unwrap_err();
    assert!(
        e.starts_with("client:") && e.contains("server authentication"),
        "{e}"
    );
}

#[test]
fn certs_refuse_to_replace_a_ca_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert!(sluicectl(&["certs", "--dir", d]).status.success());
    let ca = std::fs::read(tmp.path().join("ca.pem")).unwrap();

    let out = sluicectl(&["certs", "--dir", d]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.starts_with("sluicectl: error: "), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), ca);

    assert!(sluicectl(&["certs", "--dir", d, "--force"])
        .status
        .success());
    assert_ne!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), ca);
}

// ---------------------------------------------------------------- exit codes

#[test]
fn invalid_document_exits_2_with_field_path_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("orders.yaml");
    std::fs::write(
        &f,
        "apiVersion: sluice.dev/v1\nkind: Connection\nmetadata: {name: orders}\n\
         spec: {host: db, port: lots, database: orders, user: gw}\n",
    )
    .unwrap();
    let url = dead_url();
    let out = sluicectl(&["--control-plane", &url, "apply", "-f", f.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!(
            "sluicectl: error: {} doc 1 (Connection orders): spec.port: ",
            f.display()
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = sluicectl(&["--control-plane", &url, "apply", "-f", "/nonexistent.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent.yaml"));
}

#[test]
fn usage_errors_exit_2() {
    let out = sluicectl(&["get", "widgets"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown kind"));
    let out = sluicectl(&["--control-plane", "127.0.0.1:7600", "version"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("http:// or https://"));

    let help = sluicectl(&["--help"]);
    assert!(help.status.success());
    let help = text(&help.stdout);
    assert!(help.contains("Exit codes:") && help.contains("3  control plane unreachable"));
}

#[test]
fn unreachable_control_plane_exits_3_quickly() {
    let (a, b) = (dead_url(), dead_url());
    for args in [
        vec!["get", "connections"],
        vec!["delete", "policy", "p"],
        vec!["nodes"],
        vec!["version"],
    ] {
        let urls = format!("{a},{b}");
        let mut all = vec!["--control-plane", urls.as_str()];
        all.extend(args.iter().copied());
        let started = Instant::now();
        let out = sluicectl(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(4), "{args:?}");
        assert!(
            err.starts_with("sluicectl: error: control plane unreachable: "),
            "{err}"
        );
        assert!(
            err.contains(&a) && err.contains(&b),
            "both URLs named: {err}"
        );
        assert!(!err.contains("panicked") && !err.contains("backtrace"));
    }

    // A URL that accepts and hangs up is skipped like one that refuses.
    let closer = TcpListener::bind("127.0.0.1:0").unwrap();
    let closing = format!("http://{}", closer.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in closer.incoming() {
            drop(conn);
        }
    });
    let urls = format!("{closing},{b}");
    let out = sluicectl(&["--control-plane", &urls, "get", "policies"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&closing) && err.contains(&b), "{err}");
    // A change is not sent again elsewhere: it may have been made.
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        "apiVersion: sluice.dev/v1\nkind: Policy\nmetadata: {name: p}\n\
         spec: {connections: [\"*\"], identities: [\"*\"]}\n",
    )
    .unwrap();
    let out = sluicectl(&[
        "--control-plane",
        &urls,
        "apply",
        "-f",
        policy.path().to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("may or may not have been made") && !err.contains(&b),
        "{err}"
    );

    // The environment variable is used when no flag is given.
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("version")
        .env("SLUICE_CONTROL_PLANE", &a)
        .env_remove("SLUICE_CA")
        .env_remove("SLUICE_CERT")
        .env_remove("SLUICE_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stdout).starts_with("client: sluicectl "));
    assert!(text(&out.stderr).contains(&a));
}

/// `--node NAME` certificates: written with a new CA, or issued later from
/// the CA already in the directory (nothing else is touched), and accepted
/// by an mTLS handshake against that CA.
#[test]
fn certs_issue_named_node_certificates_now_and_later() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = dir.to_str().unwrap();
    let out = sluicectl(&["certs", "--dir", d, "--node", "dp-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("node-dp-1.pem"),
        "{}",
        text(&out.stdout)
    );
    handshake(&dir, "control-plane", "node-dp-1", "localhost").unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let admin = std::fs::read(dir.join("admin.pem")).unwrap();

    // Later: one more node, from the same CA.
    let out = sluicectl(&["certs", "--dir", d, "--node", "dp-2", "--node", "dp-3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("node-dp-3.pem"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
    assert_eq!(std::fs::read(dir.join("admin.pem")).unwrap(), admin);
    for n in ["node-dp-2", "node-dp-3"] {
        handshake(&dir, "control-plane", n, "localhost").unwrap_or_else(|e| panic!("{n}: {e}"));
        let mode = std::fs::metadata(dir.join(format!("{n}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{n}.key is private");
    }
    // A node id that could not be one is a usage error.
    let out = sluicectl(&["certs", "--dir", d, "--node", "bad/name"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--node bad/name"),
        "{}",
        text(&out.stderr)
    );
}
