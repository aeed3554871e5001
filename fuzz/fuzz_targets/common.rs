//! Fixtures shared by the fuzz targets (included with `#[path]`; each target
//! uses only part of it).
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use dataplane::auth::scram::Verifier;
use dataplane::config::Config;
use dataplane::snapshot::Snapshot;

/// A throwaway P-256 key made for these fuzz targets only (PKCS#8). It signs
/// fuzzer-chosen claims so that `JwtIssuer::verify` gets past the signature
/// check; it protects nothing.
pub const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSrQ7rqCUhA0G6rUg
5T0dxlJalSv+wbnazZtnFzNZrDOhRANCAASBBkyoIhrOcR8/ezl1YBESqQ5v5J4p
KZ/e03/XhR4tuuAEwkgBBYYRMqx8g2djdUqPePSJ+d13jD/vDn0DZzJd
-----END PRIVATE KEY-----
";

/// The matching public key as a JWKS document.
pub const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"gQZMqCIaznEfP3s5dWAREqkOb-SeKSmf3tN_14UeLbo","y":"4ATCSAEFhhEyrHyDZ2N1So949In53XeMP-8OfQNnMl0"}]}"#;

/// Unix time the targets pretend it is.
pub const NOW: u64 = 1_000_000;

/// The API key of every `api_key` identity below is `key`.
pub fn verifier() -> Verifier {
    Verifier::with_salt(b"key", b"saltsalt".to_vec(), 1)
}

/// A snapshot with API-key, JWT and mixed identities and connections pinned
/// to each target auth method. Built once per process.
pub fn snapshot() -> Arc<Snapshot> {
    static SNAP: OnceLock<Arc<Snapshot>> = OnceLock::new();
    SNAP.get_or_init(|| {
        let jwks = std::env::temp_dir().join(format!("sluice-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&jwks, JWKS).expect("write JWKS fixture");
        let y = format!(
            r#"
jwt_issuers:
  - name: corp
    issuer: "https://idp"
    audience: [sluice]
    jwks_file: "{jwks}"
connections:
  - name: app
    target: {{ host: 127.0.0.1, port: 5432, database: app, user: app, password: pw }}
  - name: scram
    target: {{ host: 127.0.0.1, port: 5432, database: s, user: s, password: pw, auth: scram-sha256 }}
  - name: md5
    target: {{ host: 127.0.0.1, port: 5432, database: m, user: m, password: pw, auth: md5 }}
  - name: trust
    target: {{ host: 127.0.0.1, port: 5432, database: t, user: t, auth: trust }}
  - name: nopw
    target: {{ host: 127.0.0.1, port: 5432, database: n, user: n }}
identities:
  - name: agent
    api_key: "{v}"
  - name: human
    jwt_issuer: corp
  - name: both
    api_key: "{v}"
    jwt_issuer: corp
grants:
  - connections: [app]
    identities: [agent, human, both]
"#,
            jwks = jwks.display(),
            v = verifier(),
        );
        let cfg = Config::from_yaml(&y).expect("fixture config parses");
        cfg.validate().expect("fixture config validates");
        let snap = Snapshot::build(&cfg, 1).expect("fixture snapshot builds");
        let _ = std::fs::remove_file(&jwks);
        Arc::new(snap)
    })
    .clone()
}

/// Split `data` into (tag, body) messages: `tag:u8, len:u8, body[len]`
/// (a one-byte length keeps the fuzzer's inputs small; the last message
/// takes what is left if it is short).
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let tag = data[0];
        let len = (data[1] as usize).min(data.len() - 2);
        let body = &data[2..2 + len];
        data = &data[2 + len..];
        Some((tag, body))
    })
}
