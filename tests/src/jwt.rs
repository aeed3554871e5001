//! Test JWT issuer: an RSA key (fixture, RS256) and an EC P-256 key (made at
//! run time with rcgen, ES256), their JWKS, and token signing with
//! jsonwebtoken. A second RSA key and a second EC key forge signatures under
//! the same `kid`s.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const RSA_KID: &str = "test-rsa-1";
pub const EC_KID: &str = "test-ec-1";
pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "sluice";

pub struct JwtKeys {
    rsa: EncodingKey,
    rsa_forger: EncodingKey,
    ec: EncodingKey,
    ec_forger: EncodingKey,
    /// The issuer's JWKS (public keys of `rsa` and `ec` only).
    pub jwks: Value,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read fixture {p:?}: {e}"))
}

fn rsa_jwk(pem: &[u8], kid: &str) -> Value {
    let der = crate::client::pem_blocks(pem, "PRIVATE KEY")
        .pop()
        .expect("PKCS#8 PEM");
    let kp = ring::rsa::KeyPair::from_pkcs8(&der).expect("RSA PKCS#8 key");
    let comps = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
    json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
           "n": b64url(&comps.n), "e": b64url(&comps.e)})
}

fn ec_key() -> (EncodingKey, [u8; 65]) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let raw: [u8; 65] = kp
        .public_key_raw()
        .try_into()
        .expect("uncompressed P-256 point");
    let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("EC PEM");
    (enc, raw)
}

impl JwtKeys {
    pub fn new() -> JwtKeys {
        let rsa_pem = fixture("jwt_rsa_a.pem");
        let rsa = EncodingKey::from_rsa_pem(&rsa_pem).expect("RSA PEM");
        let rsa_forger = EncodingKey::from_rsa_pem(&fixture("jwt_rsa_b.pem")).expect("RSA PEM");
        let (ec, point) = ec_key();
        let (ec_forger, _) = ec_key();
        let ec_jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": EC_KID, "x": b64url(&point[1..33]), "y": b64url(&point[33..])});
        let jwks = json!({"keys": [rsa_jwk(&rsa_pem, RSA_KID), ec_jwk]});
        JwtKeys {
            rsa,
            rsa_forger,
            ec,
            ec_forger,
            jwks,
        }
    }

    pub fn write_jwks(&self, path: &Path) {
        std::fs::write(path, serde_json::to_vec_pretty(&self.jwks).unwrap()).unwrap();
    }

    /// RS256 token signed by the issuer's RSA key.
    pub fn rs256(&self, claims: &Value) -> String {
        sign(Algorithm::RS256, RSA_KID, &self.rsa, claims)
    }

    /// ES256 token signed by the issuer's EC key.
    pub fn es256(&self, claims: &Value) -> String {
        sign(Algorithm::ES256, EC_KID, &self.ec, claims)
    }

    /// RS256 token with the issuer's `kid` but signed by another RSA key.
    pub fn rs256_forged(&self, claims: &Value) -> String {
        sign(Algorithm::RS256, RSA_KID, &self.rsa_forger, claims)
    }

    /// ES256 token with the issuer's `kid` but signed by another EC key.
    pub fn es256_forged(&self, claims: &Value) -> String {
        sign(Algorithm::ES256, EC_KID, &self.ec_forger, claims)
    }
}

impl Default for JwtKeys {
    fn default() -> Self {
        Self::new()
    }
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, claims, key).expect("sign JWT")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims for `sub` from the test issuer, expiring in 10 minutes.
pub fn claims(sub: &str) -> Value {
    let t = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": t, "nbf": t - 5, "exp": t + 600})
}
