//! Real clients through `sluice-dp`: psql (sslmode disable / require /
//! verify-full, and a script on stdin), pgbench (simple, extended, prepared,
//! TPC-B), and tokio-postgres over rustls (require, verify-full).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_tests::client::{err_text, ClientOptions};
use sluice_tests::process::{self, Output};
use sluice_tests::{connect, connect_tls, ApiKey, DevCerts, Gateway, GatewayConfig, Pg};
use tokio_postgres::config::SslMode;

fn tls_gateway() -> Gateway {
    Gateway::start_with(
        &GatewayConfig::standard(Pg::shared(), ApiKey::shared()).tls(DevCerts::shared(), false),
    )
}

/// A libpq tool with a clean libpq environment.
fn libpq_cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSERVICE",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGGSSENCMODE",
    ] {
        c.env_remove(v);
    }
    c.env("PGCONNECT_TIMEOUT", "10");
    // No ~/.psqlrc, no ~/.postgresql/root.crt surprises.
    c.env("PSQLRC", "/dev/null");
    c
}

fn psql(url: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut c = libpq_cmd("psql");
    c.arg("-X").args(args).arg(url);
    for (k, v) in env {
        c.env(k, v);
    }
    process::run(&mut c, stdin, Duration::from_secs(60))
}

#[test]
fn psql_select_1_sslmode_disable_and_require() {
    let gw = tls_gateway();
    let key = &ApiKey::shared().key;
    let out = psql(
        &gw.url("agent1", key, "app", "sslmode=disable"),
        &["-A", "-t", "-c", "select 1"],
        &[],
        None,
    );
    out.assert_success("psql sslmode=disable");
    assert_eq!(out.stdout.trim(), "1");

    let out = psql(
        &gw.url("agent1", key, "app", "sslmode=require"),
        &["-A", "-t", "-c", "select 1", "-c", "\\conninfo"],
        &[],
        None,
    );
    out.assert_success("psql sslmode=require");
    assert!(out.stdout.starts_with("1\n"), "{}", out.stdout);
    assert!(
        out.stdout.contains("SSL connection"),
        "not TLS: {}",
        out.stdout
    );

    // Default sslmode (prefer) with the password in PGPASSWORD.
    let url = format!("postgresql://agent1@127.0.0.1:{}/app", gw.port);
    let out = psql(
        &url,
        &["-A", "-t", "-c", "select 2"],
        &[("PGPASSWORD", key)],
        None,
    );
    out.assert_success("psql sslmode=prefer");
    assert_eq!(out.stdout.trim(), "2");

    // A wrong key is refused (exit code 2, connection failure).
    let out = psql(
        &gw.url("agent1", "wrong-key", "app", "sslmode=disable"),
        &["-A", "-t", "-c", "select 1"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// libpq with `channel_binding=require` logs in with SCRAM-SHA-256-PLUS
/// (`tls-server-end-point`, the proof bound to the gateway's certificate);
/// without TLS it has nothing to bind to and refuses to go on.
#[test]
fn psql_channel_binding_require() {
    let gw = tls_gateway();
    let key = &ApiKey::shared().key;
    let out = psql(
        &gw.url(
            "agent1",
            key,
            "app",
            "sslmode=require&channel_binding=require",
        ),
        &["-A", "-t", "-c", "select 1"],
        &[],
        None,
    );
    out.assert_success("psql channel_binding=require");
    assert_eq!(out.stdout.trim(), "1");
    let out = psql(
        &gw.url(
            "agent1",
            key,
            "app",
            "sslmode=disable&channel_binding=require",
        ),
        &["-A", "-t", "-c", "select 1"],
        &[],
        None,
    );
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stderr.contains("channel binding"), "{}", out.stderr);
}

/// A server certificate its CA signed with RSASSA-PSS: libpq binds to it
/// by the PSS hash (OpenSSL's `X509_get_signature_info`), as it does with
/// PostgreSQL itself, so `channel_binding=require` logs in here too.
#[test]
fn psql_channel_binding_require_with_an_rsa_pss_signed_certificate() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let certs = DevCerts {
        dir: fixtures.clone(),
        ca_pem: fixtures.join("unused-ca.pem"),
        ca_key: fixtures.join("unused-ca.key"),
        server_pem: fixtures.join("tls_pss_sha256.pem"),
        server_key: fixtures.join("tls_pss.key"),
    };
    let gw = Gateway::start_with(
        &GatewayConfig::standard(Pg::shared(), ApiKey::shared()).tls(&certs, false),
    );
    let out = psql(
        &gw.url(
            "agent1",
            &ApiKey::shared().key,
            "app",
            "sslmode=require&channel_binding=require",
        ),
        &["-A", "-t", "-c", "select 1"],
        &[],
        None,
    );
    out.assert_success("psql channel_binding=require, RSA-PSS-signed certificate");
    assert_eq!(out.stdout.trim(), "1");
}

#[test]
fn psql_sslmode_verify_full_with_dev_ca() {
    let gw = tls_gateway();
    let key = &ApiKey::shared().key;
    let ca = DevCerts::shared().ca_pem.display().to_string();
    for (what, url) in [
        ("ip", gw.url("agent1", key, "app", "sslmode=verify-full")),
        (
            "name",
            format!(
                "postgresql://agent1:{}@localhost:{}/app?sslmode=verify-full&hostaddr=127.0.0.1",
                sluice_tests::url_encode(key),
                gw.port
            ),
        ),
    ] {
        let out = psql(
            &url,
            &["-A", "-t", "-c", "select 1", "-c", "\\conninfo"],
            &[("PGSSLROOTCERT", &ca)],
            None,
        );
        out.assert_success(&format!("psql verify-full ({what})"));
        assert!(out.stdout.contains("SSL connection"), "{}", out.stdout);
    }
    // The same with sslrootcert in the URL.
    let url = gw.url(
        "agent1",
        key,
        "app",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            sluice_tests::url_encode(&ca)
        ),
    );
    psql(&url, &["-A", "-t", "-c", "select 1"], &[], None).assert_success("sslrootcert in URL");
    // Another CA must not verify the gateway's certificate.
    let other = DevCerts::generate(&sluice_tests::process_tempdir("sluice-other-ca-"), &[]);
    let out = psql(
        &gw.url("agent1", key, "app", "sslmode=verify-full"),
        &["-A", "-t", "-c", "select 1"],
        &[("PGSSLROOTCERT", &other.ca_pem.display().to_string())],
        None,
    );
    assert!(
        !out.success(),
        "verify-full succeeded with the wrong CA: {out:?}"
    );
}

const SCRIPT: &str = r#"\set ON_ERROR_STOP 0
create temp table s (id int, name text);
insert into s values (1, 'a'), (2, 'b'), (3, null);
select * from s order by id;
select count(*) as n from s \gset
\echo count is :n
begin;
update s set name = 'z' where id = 2;
select * from s where id = 2;
rollback;
select 1/0;
select current_user, current_database();
\copy s to stdout
copy s from stdin;
4	d
5	e
\.
select * from s order by id;
select g, repeat('w', g) from generate_series(1, 3) g;
prepare p(int) as select $1 + 1;
execute p(41);
\x
select 1 as a, 2 as b;
"#;

#[test]
fn psql_script_on_stdin_matches_direct() {
    let pg = Pg::shared();
    let gw = tls_gateway();
    let via = psql(
        &gw.url("agent1", &ApiKey::shared().key, "app", "sslmode=disable"),
        &[],
        &[],
        Some(SCRIPT.as_bytes()),
    );
    let direct = psql(
        &pg.direct_url(),
        &[],
        &[("PGPASSWORD", &pg.app_password)],
        Some(SCRIPT.as_bytes()),
    );
    via.assert_success("psql script via gateway");
    direct.assert_success("psql script direct");
    assert_eq!(
        via.stdout, direct.stdout,
        "stdout differs (gateway vs direct)"
    );
    assert_eq!(
        via.stderr, direct.stderr,
        "stderr differs (gateway vs direct)"
    );
    assert!(via.stdout.contains("count is 3"), "{}", via.stdout);
    assert!(via.stderr.contains("division by zero"), "{}", via.stderr);
}

fn pgbench(gw: &Gateway, args: &[&str], sslmode: &str) -> Output {
    let mut c = libpq_cmd("pgbench");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &gw.port.to_string(),
        "-U",
        "agent1",
    ])
    .args(args)
    .arg("app")
    .env("PGPASSWORD", &ApiKey::shared().key)
    .env("PGSSLMODE", sslmode);
    process::run(&mut c, None, Duration::from_secs(120))
}

fn check_pgbench_run(out: &Output, what: &str) {
    out.assert_success(what);
    assert!(
        out.stdout.contains("number of failed transactions: 0"),
        "{what}: failed transactions reported:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let processed = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{what}: no processed count:\n{}", out.stdout));
    assert!(processed > 0, "{what}: no transactions processed");
    let tps = out
        .stdout
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("");
    println!("{what}: {processed} transactions, {tps}");
}

#[test]
fn pgbench_through_gateway() {
    let gw = tls_gateway();
    pgbench(&gw, &["-i", "-s", "1", "-q"], "disable").assert_success("pgbench -i -s 1");
    let run = ["-T", "3", "-c", "4", "-j", "2", "-n"];
    for (what, extra, ssl) in [
        ("pgbench -S", &["-S"][..], "disable"),
        (
            "pgbench -S -M extended",
            &["-S", "-M", "extended"][..],
            "disable",
        ),
        (
            "pgbench -S -M prepared",
            &["-S", "-M", "prepared"][..],
            "disable",
        ),
        ("pgbench tpcb", &[][..], "disable"),
        (
            "pgbench -S -M prepared over TLS",
            &["-S", "-M", "prepared"][..],
            "require",
        ),
    ] {
        let mut args: Vec<&str> = run.to_vec();
        args.extend_from_slice(extra);
        let out = pgbench(&gw, &args, ssl);
        check_pgbench_run(&out, what);
    }
    gw.assert_alive();
}

fn ca(certs: &DevCerts) -> Vec<u8> {
    std::fs::read(Path::new(&certs.ca_pem)).unwrap()
}

/// TLS client config naming `host` (for certificate checks) while
/// connecting to 127.0.0.1.
fn named_host_config(gw: &Gateway, key: &str, host: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(host)
        .hostaddr("127.0.0.1".parse().unwrap())
        .port(gw.port)
        .user("agent1")
        .password(key)
        .dbname("app")
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_rustls_require_and_verify_full() {
    let gw = tls_gateway();
    let key = &ApiKey::shared().key;
    let mut cfg = gw.config("agent1", key, "app");
    cfg.ssl_mode(SslMode::Require);
    let c = connect_tls(&cfg, ClientOptions::tls_no_verify())
        .await
        .unwrap();
    assert_eq!(
        c.query_one("select 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    let certs = DevCerts::shared();
    let c = connect_tls(&cfg, ClientOptions::tls_verify_full(&ca(certs)))
        .await
        .unwrap_or_else(|e| panic!("verify-full for 127.0.0.1: {}", err_text(&e)));
    assert_eq!(
        c.query_one("select 2::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );

    // By DNS name (certificate has `localhost`), address given separately.
    let by_name = named_host_config(&gw, key, "localhost");
    let c = connect_tls(&by_name, ClientOptions::tls_verify_full(&ca(certs)))
        .await
        .unwrap_or_else(|e| panic!("verify-full for localhost: {}", err_text(&e)));
    assert_eq!(
        c.query_one("select 3::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );

    // A name the certificate does not carry must fail verification.
    let wrong_name = named_host_config(&gw, key, "not-in-cert.test");
    let res = connect_tls(&wrong_name, ClientOptions::tls_verify_full(&ca(certs))).await;
    assert!(
        res.is_err(),
        "verify-full accepted a host name absent from the certificate"
    );

    // Another CA must fail.
    let other = DevCerts::generate(&sluice_tests::process_tempdir("sluice-other-ca-"), &[]);
    let res = connect_tls(&cfg, ClientOptions::tls_verify_full(&ca(&other))).await;
    assert!(
        res.is_err(),
        "verify-full accepted a certificate from another CA"
    );

    // Large results over TLS.
    let c = connect_tls(&cfg, ClientOptions::tls_no_verify())
        .await
        .unwrap();
    let rows = c
        .query(
            "select g, repeat('t', 200) from generate_series(1, 50000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 50000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_against_gateway_without_tls() {
    let gw = Gateway::start_with(&GatewayConfig::standard(Pg::shared(), ApiKey::shared()));
    let key = &ApiKey::shared().key;
    // prefer: the gateway answers the SSLRequest with N, the client goes on
    // in plaintext.
    let mut cfg = gw.config("agent1", key, "app");
    cfg.ssl_mode(SslMode::Prefer);
    let c = connect_tls(&cfg, ClientOptions::tls_no_verify())
        .await
        .unwrap();
    assert_eq!(
        c.query_one("select 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    // require: must fail cleanly (not hang).
    cfg.ssl_mode(SslMode::Require);
    let res = connect_tls(&cfg, ClientOptions::tls_no_verify()).await;
    assert!(
        res.is_err(),
        "sslmode=require succeeded against a gateway without TLS"
    );
    // disable still works.
    let c = connect(&gw.config("agent1", key, "app")).await.unwrap();
    assert_eq!(
        c.query_one("select 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// psql logs in with a client certificate (`sslcert`/`sslkey`) that
/// `sluice-dp dev-certs --client` issued: the identity whose SPIFFE ID it
/// carries, no password, verify-full against the same dev CA. Revoked with
/// `dev-certs --revoke` (the list the node loads on SIGHUP), it no longer
/// does; the other certificate still does.
#[test]
fn psql_logs_in_with_a_client_certificate_from_dev_certs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(process::sluice_bin());
    cmd.args(["dev-certs", "--dir"])
        .arg(dir.path())
        .args(["--client", "spiffe://corp.example/agent/7"])
        .args(["--client", "spiffe://corp.example/agent/7"]);
    let out = process::run(&mut cmd, None, Duration::from_secs(60));
    out.assert_success("sluice-dp dev-certs --client");
    assert!(
        out.stdout
            .contains("client-1.pem (spiffe://corp.example/agent/7)"),
        "{}",
        out.stdout
    );
    let p = |f: &str| dir.path().join(f).display().to_string();
    let mut cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared());
    cfg.identities.push(
        "{ name: agent7, client_cert: { spiffe_id: \"spiffe://corp.example/agent/7\" }, groups: [bots] }"
            .into(),
    );
    let yaml = format!(
        "tls: {{ cert_file: {:?}, key_file: {:?}, client_ca_file: {:?}, client_crl_files: [{:?}] }}\n{}",
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
        p("ca.crl"),
        cfg.to_yaml()
    );
    let gw = Gateway::start(&yaml);
    let url = format!(
        "host=127.0.0.1 port={} user=agent7 dbname=app sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        gw.port,
        p("ca.pem"),
        p("client-1.pem"),
        p("client-1.key")
    );
    let out = psql(&url, &["-A", "-t", "-c", "select current_user"], &[], None);
    out.assert_success("psql with a client certificate");
    assert_eq!(out.stdout.trim(), "app_owner");

    let mut cmd = Command::new(process::sluice_bin());
    cmd.args(["dev-certs", "--dir"])
        .arg(dir.path())
        .arg("--revoke")
        .arg(p("client-1.pem"));
    let out = process::run(&mut cmd, None, Duration::from_secs(60));
    out.assert_success("sluice-dp dev-certs --revoke");
    assert!(out.stdout.contains("1 revoked"), "{}", out.stdout);
    gw.hangup();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gw.metrics().get("sluice_tls_reloads_total", &[]) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = psql(&url, &["-A", "-t", "-c", "select 1"], &[], None);
    assert!(!out.success(), "a revoked certificate logged in");
    let second = url.replace("client-1.", "client-2.");
    psql(&second, &["-A", "-t", "-c", "select 1"], &[], None)
        .assert_success("psql with the certificate not revoked");
    // Without the certificate: refused, and told why.
    let bare = format!(
        "host=127.0.0.1 port={} user=agent7 dbname=app sslmode=require",
        gw.port
    );
    let out = psql(&bare, &["-c", "select 1"], &[], None);
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("authenticates with a client certificate"),
        "{}",
        out.stderr
    );
}
