//! Startup/authentication path, server side: what Sluice computes for each
//! new client connection (startup parse, SCRAM-SHA-256 exchange, grant
//! check), plus cleartext API-key and JWT verification used over TLS.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use dataplane::auth::jwt::JwtIssuer;
use dataplane::auth::scram::Verifier;
use dataplane::config::Config;
use dataplane::protocol::backend;
use dataplane::session::handshake::{ClientHandshake, Step};
use dataplane::snapshot::Snapshot;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::hint::black_box;

const KEY: &[u8] = b"sk_benchmark_key_0123456789";
const NONCE: [u8; 18] = [42; 18];

fn snapshot(verifier: &Verifier) -> Arc<Snapshot> {
    let y = format!(
        r#"
connections:
  - name: app
    target: {{ host: 127.0.0.1, port: 5432, database: app, user: app, password: pw }}
identities:
  - name: agent
    api_key: "{verifier}"
grants:
  - connections: [app]
    identities: [agent]
"#
    );
    let cfg = Config::from_yaml(&y).unwrap();
    cfg.validate().unwrap();
    Arc::new(Snapshot::build(&cfg, 1).unwrap())
}

/// Record a real client's messages once (fixed server nonce), so the
/// benchmark measures only the gateway's side.
fn recorded_exchange(snap: &Arc<Snapshot>) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut startup = Vec::new();
    backend::startup_message(&mut startup, &[(b"user", b"agent"), (b"database", b"app")]);
    let mut hs = ClientHandshake::new(snap.clone(), false, false);
    hs.on_untagged(&startup);
    let mut client = ScramSha256::new(KEY, ChannelBinding::unsupported());
    let mut initial = Vec::new();
    initial.extend_from_slice(b"SCRAM-SHA-256\0");
    initial.extend_from_slice(&(client.message().len() as u32).to_be_bytes());
    initial.extend_from_slice(client.message());
    let Step::Reply(r) = hs.on_message(b'p', &initial, &NONCE, 0) else {
        panic!("no SASL continue")
    };
    client.update(&r[9..]).unwrap();
    (startup, initial, client.message().to_vec())
}

fn handshake(c: &mut Criterion) {
    let verifier = Verifier::generate(KEY, 4096);
    let snap = snapshot(&verifier);
    let (startup, initial, fin) = recorded_exchange(&snap);
    let mut g = c.benchmark_group("handshake");
    g.bench_function("scram_api_key_full", |b| {
        b.iter(|| {
            let mut hs = ClientHandshake::new(snap.clone(), false, false);
            hs.on_untagged(black_box(&startup));
            hs.on_message(b'p', black_box(&initial), &NONCE, 0);
            match hs.on_message(b'p', black_box(&fin), &NONCE, 0) {
                Step::Ready { session, .. } => black_box(session),
                other => panic!("{other:?}"),
            }
        })
    });
    g.bench_function("startup_parse", |b| {
        b.iter(|| black_box(dataplane::protocol::startup::parse(black_box(&startup)).is_ok()))
    });
    g.sample_size(20);
    g.bench_function("cleartext_api_key_pbkdf2_4096", |b| {
        b.iter(|| black_box(verifier.matches_password(black_box(KEY))))
    });

    // ES256 JWT verification.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pk = kp.public_key_raw();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": b64.encode(&pk[1..33]), "y": b64.encode(&pk[33..65])}]});
    let issuer = JwtIssuer::new(
        "idp",
        "https://idp",
        &["sluice".into()],
        "sub",
        0,
        &jwks.to_string(),
    )
    .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("k".into());
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &h,
        &serde_json::json!({"iss": "https://idp", "aud": "sluice", "sub": "agent", "exp": 4_000_000_000u64}),
        &enc,
    )
    .unwrap();
    g.sample_size(100);
    g.bench_function("jwt_es256_verify", |b| {
        b.iter(|| {
            issuer
                .verify(black_box(&token), "agent", 1_000_000)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
