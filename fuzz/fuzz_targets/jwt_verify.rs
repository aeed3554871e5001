//! `JwtIssuer::verify` with arbitrary tokens.
//!
//! `mode % 3`:
//! 0: the rest of the input, as (lossy) UTF-8, is the token;
//! 1: a correctly ES256-signed token whose claims segment is the input
//!    (so the claim checks after the signature run on arbitrary JSON);
//! 2: a correctly signed token with good claims whose header segment is the
//!    input (alg/kid/typ confusion).
//! Bit 2 of `mode` picks the identity (`agent` or empty). Invariant: never
//! panics; `looks_like_jwt` never panics either.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use base64::Engine;
use dataplane::auth::jwt::{looks_like_jwt, JwtIssuer};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn fixtures() -> &'static (JwtIssuer, EncodingKey) {
    static F: OnceLock<(JwtIssuer, EncodingKey)> = OnceLock::new();
    F.get_or_init(|| {
        let iss = JwtIssuer::new(
            "corp",
            "https://idp",
            &["sluice".to_string()],
            "sub",
            30,
            common::JWKS,
        )
        .expect("fixture JWKS");
        let key = EncodingKey::from_ec_pem(common::EC_PRIVATE_PEM.as_bytes()).expect("fixture key");
        (iss, key)
    })
}

fn signed(header: &[u8], claims: &[u8], key: &EncodingKey) -> String {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, Algorithm::ES256).expect("sign");
    format!("{msg}.{sig}")
}

const GOOD_HEADER: &[u8] = br#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (iss, key) = fixtures();
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => signed(GOOD_HEADER, rest, key),
        _ => {
            let claims = format!(
                r#"{{"iss":"https://idp","aud":"sluice","sub":"agent","exp":{}}}"#,
                common::NOW + 60
            );
            signed(rest, claims.as_bytes(), key)
        }
    };
    let identity = if mode & 4 != 0 { "agent" } else { "" };
    let _ = looks_like_jwt(&token);
    let _ = iss.verify(&token, identity, common::NOW);
});
