//! Client authentication and authorization at the gateway: API keys (SCRAM)
//! with and without TLS, JWTs (RS256, ES256) over TLS, and every rejection
//! with its SQLSTATE and its `sluice_auth_failures_total` reason; a JWT
//! session ended when its token expires.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use sluice_tests::client::{err_text, ClientCa, ClientOptions};
use sluice_tests::jwt::{self, JwtKeys};
use sluice_tests::{
    connect, connect_tls, db_code, ApiKey, DevCerts, Gateway, GatewayConfig, Metrics, Pg,
};
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::Config;

struct Fixture {
    keys: JwtKeys,
    jwks: PathBuf,
    agent2: ApiKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = sluice_tests::process_tempdir("sluice-jwks-");
        let keys = JwtKeys::new();
        let jwks = dir.join("jwks.json");
        keys.write_jwks(&jwks);
        Fixture {
            keys,
            jwks,
            agent2: ApiKey::generate(),
        }
    })
}

/// Connections `app` and `other`; `agent1` (group bots) may use `app`,
/// `agent2` only `other`; JWT identity `alice` (group bots) from issuer
/// `corp`; TLS offered, not required.
fn auth_config() -> GatewayConfig {
    let pg = Pg::shared();
    let f = fixture();
    GatewayConfig::new()
        .tls(DevCerts::shared(), false)
        .pg_connection("app", pg)
        .pg_connection("other", pg)
        .jwt_issuer("corp", jwt::ISSUER, &[jwt::AUDIENCE], &f.jwks)
        .identity_key("agent1", &ApiKey::shared().verifier, &["bots"])
        .identity_key("agent2", &f.agent2.verifier, &[])
        .identity_jwt("alice", "corp", &["bots"])
        .identity_key_and_jwt("bob", &f.agent2.verifier, "corp")
        .grant(&["app"], &["bob"], &["bots"])
        .grant(&["other"], &["agent2"], &[])
}

fn gateway() -> Gateway {
    Gateway::start_with(&auth_config())
}

fn tls_config(gw: &Gateway, user: &str, password: &str, db: &str) -> Config {
    let mut c = gw.config(user, password, db);
    c.ssl_mode(SslMode::Require);
    c
}

fn verify_full() -> tokio_postgres_rustls::MakeRustlsConnect {
    ClientOptions::tls_verify_full(&DevCerts::shared().ca_pem_bytes())
}

async fn assert_works(client: &tokio_postgres::Client) {
    let r = client
        .query_one("select current_user::text, 7::int4", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "app_owner");
    assert_eq!(r.get::<_, i32>(1), 7);
}

/// Assert that `res` is a server error with SQLSTATE `code` and return its
/// message.
#[track_caller]
fn expect_rejected(
    res: Result<tokio_postgres::Client, tokio_postgres::Error>,
    code: &str,
    what: &str,
) -> String {
    match res {
        Ok(_) => panic!("{what}: connection was accepted, expected SQLSTATE {code}"),
        Err(e) => {
            assert_eq!(
                db_code(&e).as_deref(),
                Some(code),
                "{what}: expected SQLSTATE {code}, got {}",
                err_text(&e)
            );
            println!("{what}: {}", err_text(&e));
            e.as_db_error().unwrap().message().to_string()
        }
    }
}

/// Wait (briefly) until `sluice_auth_failures_total{reason}` exceeds its
/// value in `before`.
async fn assert_auth_failure_counted(gw: &Gateway, before: &Metrics, reason: &str) {
    let name = "sluice_auth_failures_total";
    let b = before.get(name, &[("reason", reason)]);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = gw.metrics();
        let a = m.get(name, &[("reason", reason)]);
        if a >= b + 1.0 {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{name}{{reason=\"{reason}\"}} did not increase ({b} -> {a}); all lines:\n{}",
                m.lines_for(name)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_accepted_with_sslmode_disable_prefer_require() {
    let gw = gateway();
    let key = &ApiKey::shared().key;
    // disable
    let c = connect(&gw.config("agent1", key, "app")).await.unwrap();
    assert_works(&c).await;
    // prefer (TLS offered by the gateway, so TLS is used)
    let mut cfg = gw.config("agent1", key, "app");
    cfg.ssl_mode(SslMode::Prefer);
    let c = connect_tls(&cfg, ClientOptions::tls_no_verify())
        .await
        .unwrap();
    assert_works(&c).await;
    // require, with and without SCRAM channel binding
    let c = connect_tls(&tls_config(&gw, "agent1", key, "app"), verify_full())
        .await
        .unwrap();
    assert_works(&c).await;
    let mut cfg = tls_config(&gw, "agent1", key, "app");
    cfg.channel_binding(ChannelBinding::Disable);
    let c = connect_tls(&cfg, verify_full()).await.unwrap();
    assert_works(&c).await;
    // agent2 reaches the connection it is granted.
    let c = connect(&gw.config("agent2", &fixture().agent2.key, "other"))
        .await
        .unwrap();
    assert_works(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_is_28p01_bad_password() {
    let gw = gateway();
    let before = gw.metrics();
    // Another identity's valid key is still the wrong key.
    let res = connect(&gw.config("agent1", &fixture().agent2.key, "app")).await;
    expect_rejected(res, "28P01", "wrong API key");
    assert_auth_failure_counted(&gw, &before, "bad_password").await;
    let before = gw.metrics();
    let res = connect_tls(&tls_config(&gw, "agent1", "nope", "app"), verify_full()).await;
    expect_rejected(res, "28P01", "wrong API key over TLS");
    assert_auth_failure_counted(&gw, &before, "bad_password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_identity_is_28000() {
    let gw = gateway();
    let before = gw.metrics();
    let res = connect(&gw.config("ghost", &ApiKey::shared().key, "app")).await;
    expect_rejected(res, "28000", "unknown identity");
    assert_auth_failure_counted(&gw, &before, "unknown_identity").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_connection_is_3d000() {
    let gw = gateway();
    let before = gw.metrics();
    let res = connect(&gw.config("agent1", &ApiKey::shared().key, "nope")).await;
    expect_rejected(res, "3D000", "unknown connection");
    assert_auth_failure_counted(&gw, &before, "unknown_connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_not_granted_is_42501() {
    let gw = gateway();
    let before = gw.metrics();
    let res = connect(&gw.config("agent2", &fixture().agent2.key, "app")).await;
    expect_rejected(res, "42501", "identity not granted the connection");
    assert_auth_failure_counted(&gw, &before, "not_granted").await;
    // And agent1 is not granted `other`.
    let before = gw.metrics();
    let res = connect(&gw.config("agent1", &ApiKey::shared().key, "other")).await;
    expect_rejected(res, "42501", "agent1 on other");
    assert_auth_failure_counted(&gw, &before, "not_granted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_and_es256_accepted_over_tls() {
    let gw = gateway();
    let f = fixture();
    for (alg, token) in [
        ("RS256", f.keys.rs256(&jwt::claims("alice"))),
        ("ES256", f.keys.es256(&jwt::claims("alice"))),
    ] {
        let c = connect_tls(&tls_config(&gw, "alice", &token, "app"), verify_full())
            .await
            .unwrap_or_else(|e| panic!("valid {alg} JWT rejected: {}", err_text(&e)));
        assert_works(&c).await;
    }
    // An audience list containing ours is fine too.
    let mut claims = jwt::claims("alice");
    claims["aud"] = json!(["something-else", jwt::AUDIENCE]);
    let c = connect_tls(
        &tls_config(&gw, "alice", &f.keys.rs256(&claims), "app"),
        verify_full(),
    )
    .await
    .unwrap_or_else(|e| panic!("JWT with aud list rejected: {}", err_text(&e)));
    assert_works(&c).await;
}

/// An identity with both an API key and a JWT issuer is asked for a
/// cleartext password over TLS; its API key works there (checked on the
/// gateway's blocking pool), a JWT works, a wrong key does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_or_jwt_for_the_same_identity_over_tls() {
    let gw = gateway();
    let f = fixture();
    let c = connect_tls(&tls_config(&gw, "bob", &f.agent2.key, "app"), verify_full())
        .await
        .unwrap_or_else(|e| panic!("API key over TLS rejected: {}", err_text(&e)));
    assert_works(&c).await;
    let token = f.keys.es256(&jwt::claims("bob"));
    let c = connect_tls(&tls_config(&gw, "bob", &token, "app"), verify_full())
        .await
        .unwrap_or_else(|e| panic!("JWT for bob rejected: {}", err_text(&e)));
    assert_works(&c).await;
    let before = gw.metrics();
    let res = connect_tls(&tls_config(&gw, "bob", "sk_wrong", "app"), verify_full()).await;
    expect_rejected(res, "28P01", "wrong API key over TLS");
    assert_auth_failure_counted(&gw, &before, "bad_password").await;
}

async fn jwt_rejected(gw: &Gateway, token: &str, reason: &str, words: &str, what: &str) {
    let before = gw.metrics();
    let res = connect_tls(&tls_config(gw, "alice", token, "app"), verify_full()).await;
    let msg = expect_rejected(res, "28P01", what);
    assert!(
        msg.to_lowercase().contains(words),
        "{what}: message should say why (contain {words:?}): {msg:?}"
    );
    assert_auth_failure_counted(gw, &before, reason).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_expired_is_28p01() {
    let gw = gateway();
    let mut claims = jwt::claims("alice");
    let t = jwt::now();
    claims["iat"] = json!(t - 7200);
    claims["nbf"] = json!(t - 7200);
    claims["exp"] = json!(t - 3600);
    let f = fixture();
    jwt_rejected(
        &gw,
        &f.keys.rs256(&claims),
        "jwt_expired",
        "expired",
        "expired RS256",
    )
    .await;
    jwt_rejected(
        &gw,
        &f.keys.es256(&claims),
        "jwt_expired",
        "expired",
        "expired ES256",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_wrong_audience_is_28p01() {
    let gw = gateway();
    let mut claims = jwt::claims("alice");
    claims["aud"] = json!("someone-else");
    jwt_rejected(
        &gw,
        &fixture().keys.rs256(&claims),
        "jwt_audience",
        "audience",
        "wrong audience",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bad_signature_is_28p01() {
    let gw = gateway();
    let f = fixture();
    let claims = jwt::claims("alice");
    jwt_rejected(
        &gw,
        &f.keys.rs256_forged(&claims),
        "jwt_signature",
        "signature",
        "forged RS256",
    )
    .await;
    jwt_rejected(
        &gw,
        &f.keys.es256_forged(&claims),
        "jwt_signature",
        "signature",
        "forged ES256",
    )
    .await;
    // A valid token with one payload byte changed.
    let good = f.keys.rs256(&claims);
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload = parts[1].to_string();
    let last = payload.pop().unwrap();
    payload.push(if last == 'A' { 'B' } else { 'A' });
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    let before = gw.metrics();
    let res = connect_tls(&tls_config(&gw, "alice", &tampered, "app"), verify_full()).await;
    expect_rejected(res, "28P01", "tampered payload");
    let after = gw.metrics();
    let n = |m: &Metrics| {
        m.get("sluice_auth_failures_total", &[("reason", "jwt_signature")])
            + m.get("sluice_auth_failures_total", &[("reason", "jwt_invalid")])
    };
    assert!(
        n(&after) > n(&before),
        "{}",
        after.lines_for("sluice_auth_failures_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_wrong_issuer_is_28p01() {
    let gw = gateway();
    let mut claims = jwt::claims("alice");
    claims["iss"] = json!("https://evil.test");
    jwt_rejected(
        &gw,
        &fixture().keys.es256(&claims),
        "jwt_issuer",
        "issuer",
        "wrong issuer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_malformed_or_for_someone_else_is_28p01() {
    let gw = gateway();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let payload = b64(&jwt::claims("alice").to_string());
    // A header that is cut-off JSON.
    let before = gw.metrics();
    let token = format!("{}.{payload}.c2ln", b64(r#"{"alg":"RS256","kid":"#));
    let res = connect_tls(&tls_config(&gw, "alice", &token, "app"), verify_full()).await;
    expect_rejected(res, "28P01", "JWT with a malformed header");
    assert_auth_failure_counted(&gw, &before, "jwt_invalid").await;
    // The `alg: none` trick.
    let before = gw.metrics();
    let token = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let res = connect_tls(&tls_config(&gw, "alice", &token, "app"), verify_full()).await;
    expect_rejected(res, "28P01", "unsigned JWT (alg none)");
    assert_auth_failure_counted(&gw, &before, "jwt_invalid").await;
    // Algorithm confusion: HS256 keyed with public material.
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(jwt::RSA_KID.to_string());
    let secret = fixture().keys.jwks["keys"][0]["n"]
        .as_str()
        .unwrap()
        .to_string();
    let token = jsonwebtoken::encode(
        &h,
        &jwt::claims("alice"),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let res = connect_tls(&tls_config(&gw, "alice", &token, "app"), verify_full()).await;
    expect_rejected(res, "28P01", "HS256 JWT keyed with the RSA modulus");
    // Not JWT-shaped at all: rejected; the reason label is the gateway's
    // choice (it may treat it as a wrong password).
    let res = connect_tls(&tls_config(&gw, "alice", "not-a-jwt", "app"), verify_full()).await;
    expect_rejected(res, "28P01", "password that is not a JWT");
    // A valid token whose `sub` names another identity.
    let before = gw.metrics();
    let token = fixture().keys.rs256(&jwt::claims("mallory"));
    let res = connect_tls(&tls_config(&gw, "alice", &token, "app"), verify_full()).await;
    expect_rejected(res, "28P01", "JWT for another subject");
    assert_auth_failure_counted(&gw, &before, "jwt_subject").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_without_tls_is_28000() {
    let gw = gateway();
    let before = gw.metrics();
    let token = fixture().keys.rs256(&jwt::claims("alice"));
    let res = connect(&gw.config("alice", &token, "app")).await;
    expect_rejected(res, "28000", "JWT over plaintext");
    let after = gw.metrics();
    let name = "sluice_auth_failures_total";
    assert!(
        after.get(name, &[]) > before.get(name, &[]),
        "a refused plaintext JWT login must be counted:\n{}",
        after.lines_for(name)
    );
    println!("counters after plaintext JWT:\n{}", after.lines_for(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_plaintext_clients() {
    let gw = Gateway::start_with(&auth_config().tls(DevCerts::shared(), true));
    let before = gw.metrics();
    let res = connect(&gw.config("agent1", &ApiKey::shared().key, "app")).await;
    match res {
        Ok(_) => panic!("plaintext client accepted although tls.required is set"),
        Err(e) => println!("plaintext with tls.required: {}", err_text(&e)),
    }
    assert_auth_failure_counted(&gw, &before, "tls_required").await;
    let c = connect_tls(
        &tls_config(&gw, "agent1", &ApiKey::shared().key, "app"),
        verify_full(),
    )
    .await
    .unwrap();
    assert_works(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_do_not_disturb_good_ones() {
    let gw = gateway();
    let good = connect(&gw.config("agent1", &ApiKey::shared().key, "app"))
        .await
        .unwrap();
    let futs = (0..20).map(|i| {
        let cfg = gw.config("agent1", &format!("bad-{i}"), "app");
        async move { connect(&cfg).await.map(|_| ()) }
    });
    let results = futures_util::future::join_all(futs).await;
    for r in results {
        let e = r.expect_err("bad key accepted");
        assert_eq!(db_code(&e).as_deref(), Some("28P01"), "{}", err_text(&e));
    }
    assert_works(&good).await;
    gw.assert_alive();
}

/// A draining gateway refuses new sessions with 57P01 once it has read
/// their startup packet, after TLS when the client asks for it: a TLS
/// client reads the error (it got none: the FATAL came before the answer
/// to its SSLRequest). A CancelRequest still reaches the query the drain
/// waits on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_refuses_tls_and_plain_clients_with_57p01() {
    let key = ApiKey::shared();
    let gw = Gateway::start_with(
        &GatewayConfig::standard(Pg::shared(), key)
            .tls(DevCerts::shared(), false)
            .limit("drain_timeout_ms", 20_000),
    );
    let open = connect(&gw.config("agent1", &key.key, "app"))
        .await
        .unwrap();
    let cancel = open.cancel_token();
    let sleeping = tokio::spawn(async move { open.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sluice_tests::process::signal(gw.pid(), libc::SIGTERM));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Err(e) = connect_tls(&tls_config(&gw, "agent1", &key.key, "app"), verify_full()).await
    else {
        panic!("a TLS session began while draining");
    };
    assert_eq!(db_code(&e).as_deref(), Some("57P01"), "{}", err_text(&e));
    assert!(err_text(&e).contains("shutting down"), "{}", err_text(&e));
    let Err(e) = connect(&gw.config("agent1", &key.key, "app")).await else {
        panic!("a session began while draining");
    };
    assert_eq!(db_code(&e).as_deref(), Some("57P01"), "{}", err_text(&e));
    // The drain's query, cancelled through the draining gateway.
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the cancelled query did not end")
        .unwrap();
    let e = r.expect_err("pg_sleep(30) finished");
    assert_eq!(db_code(&e).as_deref(), Some("57014"), "{}", err_text(&e));
}

/// A session the gateway ends with a FATAL over TLS is closed cleanly (TLS
/// close_notify): psql shows the error and nothing after it (it added "SSL
/// SYSCALL error: EOF detected").
#[test]
fn a_fatal_over_tls_ends_the_session_cleanly() {
    let key = ApiKey::shared();
    let gw = Gateway::start_with(
        &GatewayConfig::standard(Pg::shared(), key).tls(DevCerts::shared(), false),
    );
    let mut c = std::process::Command::new("psql");
    c.env("PGCONNECT_TIMEOUT", "10")
        .env("PSQLRC", "/dev/null")
        .args([
            "-X",
            "-c",
            "set client_encoding to 'BIG5'",
            &gw.url("agent1", &key.key, "app", "sslmode=require"),
        ]);
    let out = sluice_tests::process::run(&mut c, None, Duration::from_secs(60));
    assert!(
        out.stderr.contains("client_encoding BIG5"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("SSL SYSCALL"), "{}", out.stderr);
    // … at login (the encoding, before the relay; a wrong key, in the
    // handshake).
    for (encoding, password, want) in [
        ("SJIS", key.key.as_str(), "client_encoding SJIS"),
        ("UTF8", "not-the-key", "password authentication failed"),
    ] {
        let mut c = std::process::Command::new("psql");
        c.env("PGCONNECT_TIMEOUT", "10")
            .env("PSQLRC", "/dev/null")
            .env("PGCLIENTENCODING", encoding)
            .args([
                "-X",
                "-c",
                "select 1",
                &gw.url("agent1", password, "app", "sslmode=require"),
            ]);
        let out = sluice_tests::process::run(&mut c, None, Duration::from_secs(60));
        assert!(out.stderr.contains(want), "{}", out.stderr);
        assert!(!out.stderr.contains("SSL SYSCALL"), "{}", out.stderr);
    }
}

/// Sleep until the wall clock is `ms` milliseconds past Unix second `secs`.
async fn sleep_until_unix(secs: u64, ms: u64) {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms);
    if let Ok(left) = at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

/// The statement on `c` is refused with FATAL 28000 `session token expired`
/// and the gateway closes the connection.
async fn assert_token_expired(
    res: Result<(), tokio_postgres::Error>,
    c: &tokio_postgres::Client,
    what: &str,
) {
    let e = res.expect_err(&format!(
        "{what}: statement allowed after the token expired"
    ));
    assert_eq!(
        db_code(&e).as_deref(),
        Some("28000"),
        "{what}: {}",
        err_text(&e)
    );
    let db = e.as_db_error().unwrap();
    assert_eq!(db.severity(), "FATAL", "{what}: {}", err_text(&e));
    assert_eq!(db.message(), "session token expired", "{what}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.is_closed() {
        assert!(
            Instant::now() < deadline,
            "{what}: connection still open after the FATAL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        c.simple_query("select 1").await.is_err(),
        "{what}: closed connection answered"
    );
}

/// AC-12: a session opened with a JWT ends when the token expires. Its
/// first statement at or after `exp` plus the issuer's leeway (the login
/// check's) is not forwarded: FATAL 28000 `session token expired`, the
/// connection closed, in a transaction block too and for a Parse, and
/// with audit on the refused Query gets a POLICY_DECISION (DENY) record
/// and each session's end record says why. Past `exp` but within the
/// leeway statements still run; an API key session is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_session_ends_at_its_first_statement_after_the_token_expires() {
    // `leeway_seconds` of the test issuer (`GatewayConfig::jwt_issuer`).
    const LEEWAY: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&auth_config().audit(dir.path(), ""));
    let exp = jwt::now() + 3;
    let mut claims = jwt::claims("alice");
    claims["exp"] = json!(exp);
    let token = fixture().keys.es256(&claims);
    let cfg = tls_config(&gw, "alice", &token, "app");
    let idle = connect_tls(&cfg, verify_full()).await.expect("JWT login");
    let in_block = connect_tls(&cfg, verify_full()).await.expect("JWT login");
    let keyed = connect(&gw.config("agent1", &ApiKey::shared().key, "app"))
        .await
        .unwrap();
    idle.simple_query("select 1 as jwt_exp_before")
        .await
        .unwrap();
    in_block.batch_execute("begin").await.unwrap();

    // Past exp, within the leeway: still allowed.
    sleep_until_unix(exp + 1, 0).await;
    idle.simple_query("select 2 as jwt_exp_leeway")
        .await
        .expect("a statement within the leeway");
    in_block
        .query_one("select 3::int as jwt_exp_block_leeway", &[])
        .await
        .expect("a statement within the leeway, in a block");

    // Past exp + leeway: the next statement ends the session.
    sleep_until_unix(exp + LEEWAY, 300).await;
    let res = idle
        .simple_query("select 4 as jwt_exp_refused")
        .await
        .map(drop);
    assert_token_expired(res, &idle, "simple Query").await;
    let res = in_block
        .query_one("select 5::int as jwt_exp_block_refused", &[])
        .await
        .map(drop);
    assert_token_expired(res, &in_block, "Parse in a transaction block").await;
    // A session authenticated otherwise goes on.
    assert_works(&keyed).await;
    assert_eq!(
        gw.metrics().get("sluice_sessions_expired_total", &[]),
        2.0,
        "{}",
        gw.metrics().lines_for("sluice_sessions_expired_total")
    );
    drop((idle, in_block, keyed));
    gw.wait_connections_closed(Duration::from_secs(10)).await;
    gw.stop();

    let recs = sluice_tests::audit_records(dir.path());
    let kind = |r: &proto::AuditRecord| r.metadata.as_ref().unwrap().kind;
    let with = |marker: &str| -> Vec<&proto::AuditRecord> {
        recs.iter()
            .filter(|r| r.statement.as_ref().is_some_and(|s| s.sql.contains(marker)))
            .collect()
    };
    for (marker, k) in [
        ("jwt_exp_before", proto::AuditKind::Query),
        ("jwt_exp_leeway", proto::AuditKind::Query),
        ("jwt_exp_block_leeway", proto::AuditKind::Execute),
    ] {
        let got: Vec<_> = with(marker)
            .into_iter()
            .filter(|r| kind(r) == k as i32)
            .collect();
        assert_eq!(got.len(), 1, "{marker}: {got:#?}");
        let o = got[0].outcome.as_ref().unwrap();
        assert_eq!(o.decision, proto::Decision::Allow as i32, "{marker}");
    }
    let refused = with("jwt_exp_refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let r = refused[0];
    assert_eq!(kind(r), proto::AuditKind::PolicyDecision as i32);
    assert_eq!(
        r.statement.as_ref().unwrap().sql,
        "select 4 as jwt_exp_refused"
    );
    let id = r.identity.as_ref().unwrap();
    assert_eq!(id.name, "alice");
    assert_eq!(id.auth_method, proto::AuthMethod::Jwt as i32);
    let o = r.outcome.as_ref().unwrap();
    assert_eq!(o.decision, proto::Decision::Deny as i32);
    assert_eq!(o.sqlstate, "28000");
    assert_eq!(o.error_message, "session token expired");
    assert_eq!(o.rows, 0);
    // The Parse refused in the block was never sent, and has no record (as
    // under a revocation: a refused Query, Execute or FunctionCall has
    // one); its session's end record says why.
    let block_refused = with("jwt_exp_block_refused");
    assert!(block_refused.is_empty(), "{block_refused:#?}");
    let ends: Vec<_> = recs
        .iter()
        .filter(|r| kind(r) == proto::AuditKind::SessionEnd as i32)
        .filter(|r| r.identity.as_ref().is_some_and(|i| i.name == "alice"))
        .collect();
    assert_eq!(ends.len(), 2, "{ends:#?}");
    for e in ends {
        let o = e.outcome.as_ref().unwrap();
        assert_eq!(o.error_message, "session token expired", "{e:#?}");
    }
}

/// A gateway on `cfg` with TLS whose `client_ca_file` is `ca` (written into
/// `dir`), and identity `agent7` that logs in with a certificate carrying
/// `spiffe://corp.example/agent/7`.
fn cert_gateway(dir: &std::path::Path, ca: &ClientCa, cfg: GatewayConfig) -> Gateway {
    cert_gateway_with(dir, &ca.cert.pem(), "", cfg)
}

/// As [`cert_gateway`], with the client CA file holding `ca_pem` and
/// `extra` added to the `tls` section (`, client_crl_files: [...]`).
fn cert_gateway_with(
    dir: &std::path::Path,
    ca_pem: &str,
    extra: &str,
    mut cfg: GatewayConfig,
) -> Gateway {
    let ca_file = dir.join("client-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    cfg = cfg.tls(DevCerts::shared(), false);
    cfg.identities.push(
        "{ name: agent7, client_cert: { spiffe_id: \"spiffe://corp.example/agent/7\" }, groups: [bots] }"
            .into(),
    );
    let yaml = cfg.to_yaml().replace(
        "required: false }",
        &format!(
            "required: false, client_ca_file: {:?}{extra} }}",
            ca_file.display().to_string()
        ),
    );
    Gateway::start(&yaml)
}

/// Client certificates (`tls.client_ca_file`, `identities[].client_cert`):
/// a certificate the client CA signed authenticates the identity whose
/// SPIFFE ID or subject CN it carries, with no password; the session is
/// audited as `client_cert`. Another identity's certificate, none, or one
/// from another CA is refused; an API-key identity presenting a
/// certificate still logs in with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_the_identity_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("agents CA");
    let mut cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared())
        .audit(&dir.path().join("audit"), "");
    cfg.identities
        .push("{ name: ops, client_cert: { subject_cn: ops-1 }, groups: [bots] }".into());
    let gw = cert_gateway(dir.path(), &ca, cfg);
    let as_ = |user: &str| {
        let mut c = gw.config(user, "", "app");
        c.ssl_mode(SslMode::Require);
        c
    };

    let agent7 = ca.client(Some("spiffe://corp.example/agent/7"), "whatever");
    let c = connect_tls(&as_("agent7"), agent7.clone())
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()));
    let who: String = c
        .query_one("select current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app_owner");
    let c = connect_tls(&as_("ops"), ca.client(None, "ops-1"))
        .await
        .unwrap();
    c.simple_query("select 1").await.unwrap();
    // An API-key identity presenting a certificate logs in with its key.
    let mut key_cfg = gw.agent_config();
    key_cfg.ssl_mode(SslMode::Require);
    connect_tls(&key_cfg, agent7.clone()).await.unwrap();

    for (user, tls, want) in [
        (
            "agent7",
            ca.client(Some("spiffe://corp.example/agent/8"), "agent-8"),
            "the client certificate presented (spiffe://corp.example/agent/8) is not identity \"agent7\"'s",
        ),
        ("ops", agent7.clone(), "is not identity \"ops\"'s"),
        (
            "agent7",
            ClientOptions::tls_no_verify(),
            "identity \"agent7\" authenticates with a client certificate",
        ),
    ] {
        let e = connect_tls(&as_(user), tls).await.err().unwrap();
        assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));
        assert!(err_text(&e).contains(want), "{}", err_text(&e));
    }
    // Without TLS there is no certificate.
    let e = connect(&gw.config("agent7", "", "app"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));
    // A certificate another CA signed fails the TLS handshake itself.
    let stranger = ClientCa::new("someone else").client(Some("spiffe://corp.example/agent/7"), "x");
    let e = connect_tls(&as_("agent7"), stranger).await.err().unwrap();
    assert_eq!(db_code(&e), None, "{}", err_text(&e));
    gw.assert_alive();

    let m = gw.metrics();
    let failures = |r: &str| m.get("sluice_auth_failures_total", &[("reason", r)]);
    assert_eq!(
        (failures("bad_certificate"), failures("no_certificate")),
        (2.0, 2.0)
    );
    drop(c);
    gw.stop();
    let recs = sluice_tests::audit_records(&dir.path().join("audit"));
    let methods: Vec<(String, i32)> = recs
        .iter()
        .filter(|r| r.metadata.as_ref().unwrap().kind == proto::AuditKind::SessionStart as i32)
        .map(|r| {
            let i = r.identity.as_ref().unwrap();
            (i.name.clone(), i.auth_method)
        })
        .collect();
    let cert = proto::AuthMethod::ClientCert as i32;
    assert!(methods.contains(&("agent7".into(), cert)), "{methods:?}");
    assert!(methods.contains(&("ops".into(), cert)), "{methods:?}");
    assert!(
        methods.iter().any(|(n, m)| n == "agent1" && *m != cert),
        "{methods:?}"
    );
}

/// A session that logged in with a client certificate ends at its first
/// statement after the certificate's `notAfter`, as a JWT session does at
/// its token's expiry: FATAL 28000 `session client certificate expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_session_ends_at_its_first_statement_after_the_certificate_expires() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("agents CA");
    let gw = cert_gateway(
        dir.path(),
        &ca,
        GatewayConfig::standard(Pg::shared(), ApiKey::shared()),
    );
    let until = std::time::SystemTime::now() + Duration::from_secs(4);
    let tls = ca.client_until(Some("spiffe://corp.example/agent/7"), "a7", Some(until));
    let mut login = gw.config("agent7", "", "app");
    login.ssl_mode(SslMode::Require);
    let c = connect_tls(&login, tls).await.unwrap();
    c.simple_query("select 1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let e = c.simple_query("select 1").await.err().unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));
    assert_eq!(
        e.as_db_error().map(|d| (d.severity(), d.message())),
        Some(("FATAL", "session client certificate expired"))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.is_closed() {
        assert!(
            Instant::now() < deadline,
            "connection still open after the FATAL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.metrics().get("sluice_sessions_expired_total", &[]), 1.0);
}

/// What a client certificate must be to authenticate: one the client CA
/// vouches for (directly or through an intermediate it signed that is a
/// CA), valid now, for client authentication; and the identity's SPIFFE ID
/// exactly, as its only URI SAN (an X.509-SVID has exactly one). Anything
/// else fails the TLS handshake or is refused with 28000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_the_ca_does_not_vouch_for_exactly_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("agents CA");
    let cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared())
        .audit(&dir.path().join("audit"), "");
    let gw = cert_gateway(dir.path(), &ca, cfg);
    let mut agent7 = gw.config("agent7", "", "app");
    agent7.ssl_mode(SslMode::Require);
    let id = "spiffe://corp.example/agent/7";

    // Through an intermediate CA the client CA signed, sent with it.
    let issuing = ca.intermediate("agents issuing CA", true);
    let c = connect_tls(&agent7, issuing.client(Some(id), "a7"))
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()));
    c.simple_query("select 1").await.unwrap();

    // Not vouched for: the TLS handshake fails.
    let when = |y| rcgen::date_time_ymd(y, 1, 1);
    let mut expired = ClientCa::params(&[id], "a7");
    (expired.not_before, expired.not_after) = (when(2000), when(2001));
    let mut early = ClientCa::params(&[id], "a7");
    (early.not_before, early.not_after) = (when(2090), when(2091));
    let mut server_only = ClientCa::params(&[id], "a7");
    server_only.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    for (what, tls) in [
        ("expired", ca.issue(expired)),
        ("not yet valid", ca.issue(early)),
        ("for serverAuth only", ca.issue(server_only)),
        (
            "signed by a certificate that is not a CA",
            ca.intermediate("not a CA", false).client(Some(id), "a7"),
        ),
        (
            "presented without its key",
            ClientOptions::tls_client_cert_any_key(
                ca.issue_der(ClientCa::params(&[id], "a7")).0,
                rcgen::KeyPair::generate().unwrap().serialize_der(),
            ),
        ),
    ] {
        let e = connect_tls(&agent7, tls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(db_code(&e), None, "{what}: {}", err_text(&e));
    }

    // Vouched for, but not exactly the identity's SPIFFE ID as the only URI.
    for (what, uris, cn) in [
        (
            "a second URI SAN",
            &["spiffe://corp.example/agent/8", id][..],
            "a8",
        ),
        ("the SPIFFE ID as CN", &[][..], id),
        ("another case", &["spiffe://CORP.example/agent/7"][..], "a7"),
        (
            "percent-encoded",
            &["spiffe://corp.example/agent/%37"][..],
            "a7",
        ),
        (
            "a trailing slash",
            &["spiffe://corp.example/agent/7/"][..],
            "a7",
        ),
    ] {
        let e = connect_tls(&agent7, ca.issue(ClientCa::params(uris, cn)))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(
            db_code(&e).as_deref(),
            Some("28000"),
            "{what}: {}",
            err_text(&e)
        );
        assert!(
            err_text(&e).contains("is not identity \"agent7\"'s"),
            "{what}: {}",
            err_text(&e)
        );
    }
    gw.assert_alive();
    // Each counted, logged and audited: the TLS handshake's refusals too
    // (the client got a TLS alert, not an ErrorResponse).
    let m = gw.metrics();
    let failures = |r: &str| m.get("sluice_auth_failures_total", &[("reason", r)]);
    assert_eq!(
        (failures("invalid_certificate"), failures("bad_certificate")),
        (5.0, 5.0)
    );
    let log = gw.log();
    for why in [
        "certificate expired",
        "certificate not valid yet",
        "does not allow extended key usage for client authentication",
        "EndEntityUsedAsCa",
        "BadSignature",
    ] {
        assert!(
            log.lines().any(
                |l| l.contains("client certificate refused in the TLS handshake")
                    && l.contains(why)
            ),
            "{why}:\n{log}"
        );
    }
    gw.stop();
    let recs = sluice_tests::audit_records(&dir.path().join("audit"));
    let refused = auth_failure_messages(&recs);
    let count = |p: &str| refused.iter().filter(|m| m.starts_with(p)).count();
    assert_eq!(
        (count("invalid_certificate: "), count("bad_certificate: ")),
        (5, 5),
        "{refused:#?}"
    );
}

/// The `reason: message` of each AUTH_FAILURE record among `recs`.
fn auth_failure_messages(recs: &[proto::AuditRecord]) -> Vec<String> {
    recs.iter()
        .filter(|r| r.metadata.as_ref().unwrap().kind == proto::AuditKind::AuthFailure as i32)
        .map(|r| r.outcome.as_ref().unwrap().error_message.clone())
        .collect()
}

/// Revocation lists (`tls.client_crl_files`): a client certificate one of
/// them revokes fails the TLS handshake (audited as `revoked_certificate`);
/// a list reloaded on SIGHUP ends the sessions of the certificates it now
/// revokes at their next statement (28000) and refuses them from then on;
/// a list that does not load leaves the last good one in use; a
/// certificate whose issuer has no list is refused (its status unknown)
/// unless `client_crl_allow_unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused_and_lists_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("agents CA");
    let other = ClientCa::new("partner CA");
    let crl = dir.path().join("agents.crl");
    std::fs::write(&crl, ca.crl(1, &[2])).unwrap();
    let cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared())
        .audit(&dir.path().join("audit"), "");
    let gw = cert_gateway_with(
        dir.path(),
        &(ca.cert.pem() + &other.cert.pem()),
        &format!(
            ", client_crl_files: [{:?}], reload_interval_s: 0",
            crl.display().to_string()
        ),
        cfg,
    );
    let mut agent7 = gw.config("agent7", "", "app");
    agent7.ssl_mode(SslMode::Require);
    let id = "spiffe://corp.example/agent/7";
    let refused = |r: &str| {
        gw.metrics()
            .get("sluice_auth_failures_total", &[("reason", r)])
    };
    // (Counted once the client has its TLS alert: waited for, then exact.)
    let counted = |r: &'static str, n: f64| {
        let gw = &gw;
        async move {
            gw.wait_for(&format!("{r} at {n}"), || refused(r) >= n)
                .await;
            assert_eq!(refused(r), n, "{r}");
        }
    };

    let c1 = connect_tls(&agent7, ca.client_serial(1, id, "a7"))
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()));
    c1.simple_query("select 1").await.unwrap();
    // Revoked by the list loaded at start.
    let e = connect_tls(&agent7, ca.client_serial(2, id, "a7"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&e), None, "{}", err_text(&e));
    counted("revoked_certificate", 1.0).await;
    // No list for the partner CA's certificates: status unknown.
    let e = connect_tls(&agent7, other.client_serial(9, id, "a7"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&e), None, "{}", err_text(&e));
    counted("unknown_revocation_status", 1.0).await;
    let m = gw.metrics();
    assert_eq!(m.get("sluice_tls_revoked_certificates", &[]), 1.0);
    assert!(m.get("sluice_tls_crl_next_update_timestamp_seconds", &[]) > 0.0);

    // A new list revokes serial 1 too: its open session ends at its next
    // statement, and it is refused from then on.
    std::fs::write(&crl, ca.crl(2, &[1, 2])).unwrap();
    gw.hangup();
    gw.wait_metric("sluice_tls_reloads_total", 1.0).await;
    let e = c1.simple_query("select 1").await.err().unwrap();
    assert_eq!(
        e.as_db_error()
            .map(|d| (d.severity(), d.code().code(), d.message())),
        Some(("FATAL", "28000", "session client certificate revoked")),
        "{}",
        err_text(&e)
    );
    assert!(connect_tls(&agent7, ca.client_serial(1, id, "a7"))
        .await
        .is_err());
    counted("revoked_certificate", 2.0).await;
    let c3 = connect_tls(&agent7, ca.client_serial(3, id, "a7"))
        .await
        .unwrap();
    c3.simple_query("select 1").await.unwrap();

    // A list that does not load: the last good one stays in use.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    )
    .unwrap();
    gw.hangup();
    gw.wait_metric("sluice_tls_reload_failures_total", 1.0)
        .await;
    gw.wait_for("the failed reload logged", || {
        gw.log().contains("TLS files not reloaded")
    })
    .await;
    assert!(connect_tls(&agent7, ca.client_serial(1, id, "a7"))
        .await
        .is_err());
    c3.simple_query("select 1").await.unwrap();
    connect_tls(&agent7, ca.client_serial(4, id, "a7"))
        .await
        .unwrap();
    let m = gw.metrics();
    assert_eq!(m.get("sluice_tls_reloads_total", &[]), 1.0);
    assert_eq!(m.get("sluice_sessions_revoked_total", &[]), 1.0);
    gw.assert_alive();
    drop((c1, c3));
    gw.stop();

    // The revocations are in the audit trail: the refused handshakes as
    // auth failures, the ended session's statement as refused.
    let recs = sluice_tests::audit_records(&dir.path().join("audit"));
    let reasons = auth_failure_messages(&recs);
    assert_eq!(
        reasons
            .iter()
            .filter(|m| m.starts_with("revoked_certificate: "))
            .count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|m| m.starts_with("unknown_revocation_status: "))
            .count(),
        1,
        "{reasons:?}"
    );
    let mut ended: Vec<_> = recs
        .iter()
        .filter(|r| {
            r.outcome
                .as_ref()
                .is_some_and(|o| o.error_message == "session client certificate revoked")
        })
        .map(|r| r.metadata.as_ref().unwrap().kind)
        .collect();
    ended.sort();
    let mut want = vec![
        proto::AuditKind::PolicyDecision as i32,
        proto::AuditKind::SessionEnd as i32,
    ];
    want.sort();
    assert_eq!(ended, want, "{recs:#?}");
    // So are the loads of the lists: at start and at the reload that
    // changed them (not the one that failed).
    let loads: Vec<(String, usize, u64)> = recs
        .iter()
        .filter(|r| r.metadata.as_ref().unwrap().kind == proto::AuditKind::TlsLoaded as i32)
        .map(|r| {
            let t = r.tls.as_ref().unwrap();
            assert_eq!(t.crls.len(), 1);
            assert!(t.crls[0].issuer.contains("agents CA"), "{t:?}");
            (t.trigger.clone(), t.client_cas.len(), t.crls[0].revoked)
        })
        .collect();
    assert_eq!(
        loads,
        [("start".to_string(), 2, 1), ("sighup".to_string(), 2, 2)]
    );

    // With `client_crl_allow_unknown`, the partner CA's certificates pass.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agents.crl"), ca.crl(1, &[2])).unwrap();
    let gw = cert_gateway_with(
        dir.path(),
        &(ca.cert.pem() + &other.cert.pem()),
        &format!(
            ", client_crl_files: [{:?}], client_crl_allow_unknown: true",
            dir.path().join("agents.crl").display().to_string()
        ),
        GatewayConfig::standard(Pg::shared(), ApiKey::shared()),
    );
    let mut agent7 = gw.config("agent7", "", "app");
    agent7.ssl_mode(SslMode::Require);
    connect_tls(&agent7, other.client_serial(9, id, "a7"))
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()));
    assert!(connect_tls(&agent7, ca.client_serial(2, id, "a7"))
        .await
        .is_err());
}

/// The server certificate rotates without a restart: new files are found
/// by the periodic check (`tls.reload_interval_s`), new connections get the
/// new certificate, and sessions already open go on. A key that does not
/// match its certificate (a rotation caught half-written) is not loaded:
/// the last good pair stays in use, and the next check loads the pair once
/// it is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_rotates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, certs) = DevCerts::rotatable(dir.path());
    let cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared()).tls(&certs, true);
    let yaml = cfg
        .to_yaml()
        .replace("required: true }", "required: true, reload_interval_s: 1 }");
    assert!(yaml.contains("reload_interval_s: 1"), "{yaml}");
    let gw = Gateway::start(&yaml);
    let mut login = gw.agent_config();
    login.ssl_mode(SslMode::Require);
    let trusts = |d: &DevCerts| ClientOptions::tls_verify_full(&d.ca_pem_bytes());

    let c = connect_tls(&login, trusts(&old))
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()));
    assert!(connect_tls(&login, trusts(&new)).await.is_err());
    let before = gw
        .metrics()
        .get("sluice_tls_certificate_expiry_timestamp_seconds", &[]);
    assert!(before > 0.0);

    // Half a rotation: the new key with the old certificate.
    DevCerts::replace(&certs.server_key, &new.server_key);
    gw.wait_metric("sluice_tls_reload_failures_total", 1.0)
        .await;
    connect_tls(&login, trusts(&old)).await.unwrap();
    // The whole of it.
    DevCerts::replace(&certs.server_pem, &new.server_pem);
    gw.wait_metric("sluice_tls_reloads_total", 1.0).await;
    connect_tls(&login, trusts(&new))
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()));
    assert!(connect_tls(&login, trusts(&old)).await.is_err());
    // The session opened before goes on, on its old TLS.
    c.simple_query("select 1").await.unwrap();
    assert!(gw.metrics().has("sluice_tls_loaded_timestamp_seconds", &[]));
    // The failure was logged once, not at every check.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        gw.log().matches("TLS files not reloaded").count(),
        1,
        "{}",
        gw.log()
    );
    gw.assert_alive();
}

/// Static mode: SIGHUP applies the configuration file as edited since
/// start (its identities, grants, connections, JWT issuers and masking
/// profiles) as a new snapshot version, without dropping sessions: a
/// session whose identity the new file no longer has ends at its next
/// statement (42501), a new identity logs in. Sections that take a restart
/// are named in a warning and left as they were; a file that does not load
/// or check changes nothing. Each applied version is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_edited_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared())
        .audit(&dir.path().join("audit"), "");
    let gw = Gateway::start_with(&cfg);
    let c1 = connect(&gw.agent_config()).await.unwrap();
    c1.simple_query("select 1").await.unwrap();
    let key2 = ApiKey::generate();
    let agent2 = gw.config("agent2", &key2.key, "app");
    let e = connect(&agent2).await.err().unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));

    // agent1 out, agent2 in; and a section that takes a restart.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let edited: String = text
        .lines()
        .filter(|l| !l.contains("name: \"agent1\"") && !l.contains("name: agent1"))
        .map(|l| match l {
            "identities:" => format!(
                "identities:\n  - {{ name: agent2, api_key: {:?}, groups: [bots] }}",
                key2.verifier
            ),
            l if l.starts_with("workers:") => "workers: 1".to_string(),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(edited, text);
    std::fs::write(&gw.config_path, &edited).unwrap();
    gw.hangup();
    gw.wait_metric("sluice_config_reloads_total", 1.0).await;
    assert_eq!(gw.metrics().get("sluice_snapshot_version", &[]), 2.0);
    connect(&agent2)
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()))
        .simple_query("select 1")
        .await
        .unwrap();
    let e = c1.simple_query("select 1").await.err().unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("42501"), "{}", err_text(&e));
    assert!(
        err_text(&e).contains("permission revoked"),
        "{}",
        err_text(&e)
    );
    let e = connect(&gw.agent_config()).await.err().unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));
    // (The warning's own line: every log has `workers=` in its start-up
    // lines.)
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("take a restart") && l.contains("\"workers\"")),
        "{log}"
    );

    // Files that do not load or check: nothing changes.
    for (n, bad) in [
        (1.0, format!("{edited}\ngrants: [oops")),
        (
            2.0,
            edited.replace("groups: [bots] }", "groups: [bots], api_kee: x }"),
        ),
    ] {
        std::fs::write(&gw.config_path, &bad).unwrap();
        gw.hangup();
        gw.wait_metric("sluice_config_reload_failures_total", n)
            .await;
    }
    assert!(gw
        .log()
        .contains("configuration not reloaded, version 2 stays in use"));
    assert!(gw.log().contains("api_kee"), "{}", gw.log());
    // The file as applied, again: no new version (a SIGHUP sent for the
    // TLS files changes nothing else).
    std::fs::write(&gw.config_path, &edited).unwrap();
    gw.hangup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.log().contains("version 2 stays") || !gw.log().contains("are unchanged") {
        assert!(Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = gw.metrics();
    assert_eq!(m.get("sluice_snapshot_version", &[]), 2.0);
    assert_eq!(m.get("sluice_config_reloads_total", &[]), 1.0);
    connect(&agent2).await.unwrap();
    gw.assert_alive();
    gw.stop();

    let recs = sluice_tests::audit_records(&dir.path().join("audit"));
    let versions: Vec<i64> = recs
        .iter()
        .filter_map(|r| r.metadata.as_ref())
        .filter(|m| m.kind == proto::AuditKind::SnapshotApplied as i32)
        .map(|m| m.snapshot_version)
        .collect();
    assert_eq!(versions, [1, 2]);
}

/// A SIGHUP that comes while the node starts (after the file was read,
/// before the reload handler is in place) is not lost: it applies the file
/// once the node is up. Start-up is held inside `run` by a target password
/// file that is a FIFO nobody writes to yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_node_starts_reloads_once_it_is_up() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("target-password");
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let pg = Pg::shared();
    let yaml = GatewayConfig::standard(pg, ApiKey::shared())
        .to_yaml()
        .replace(
            &format!("password: {:?}", pg.app_password),
            &format!("password_file: {:?}", fifo.display().to_string()),
        );
    assert!(yaml.contains("password_file"), "{yaml}");
    let starting = std::thread::spawn(move || Gateway::start(&yaml));

    // The node is reading the FIFO: past the start of `run`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let writer = loop {
        // SAFETY: a NUL-terminated path; the fd is closed below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
        if fd >= 0 {
            break fd;
        }
        assert!(Instant::now() < deadline, "sluice-dp never opened the FIFO");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Which process holds it open (once its open() has returned).
    let holder = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.starts_with("sluice-dp"))
                    && std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                        fds.filter_map(Result::ok)
                            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == fifo))
                    })
            })
    };
    let pid = loop {
        if let Some(pid) = holder() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no sluice-dp process holds the FIFO"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // The file edited since it was read (the password inline now, so the
    // reload does not read the FIFO), then the signal.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let at = args.iter().position(|a| *a == b"--config").unwrap();
    let config = PathBuf::from(String::from_utf8(args[at + 1].to_vec()).unwrap());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            &format!("password_file: {:?}", fifo.display().to_string()),
            &format!("password: {:?}", pg.app_password),
        ),
    )
    .unwrap();
    // SAFETY: a signal to the gateway this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    let password = pg.app_password.clone();
    // SAFETY: writing a buffer we own to the fd opened above, then closing it.
    unsafe {
        libc::write(writer, password.as_ptr().cast(), password.len());
        libc::close(writer);
    }
    let gw = tokio::task::spawn_blocking(move || starting.join().unwrap())
        .await
        .unwrap();
    assert_eq!(gw.pid(), pid);
    gw.wait_metric("sluice_config_reloads_total", 1.0).await;
    assert_eq!(gw.metrics().get("sluice_snapshot_version", &[]), 2.0);
    connect(&gw.agent_config())
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
    gw.assert_alive();
}
