//! OIDC JWT verification against an issuer's JWKS (RS256, ES256).
//!
//! Sans-IO: the JWKS is parsed when the snapshot is built, and the current
//! time is passed in, so verification is a pure function of its inputs.
//! A token is accepted only when its signature verifies with a key of the
//! issuer, `iss` matches, one of the `aud` values is configured, `exp` is in
//! the future and `nbf` (when present) is not, within the configured leeway,
//! and the identity claim names the identity the client asked to be.
//! Verification also says until when the token is accepted, so that a
//! session it opened can end then ([`expired`]).

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Why a token was refused. Each maps to an auth-failure metric reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("JWT is malformed: {0}")]
    Invalid(String),
    #[error("JWT algorithm {0} is not accepted (RS256 or ES256)")]
    Algorithm(String),
    #[error("JWT signature does not verify with any key of issuer `{0}`")]
    Signature(String),
    #[error("JWT expired")]
    Expired,
    #[error("JWT is not valid yet (nbf)")]
    NotYetValid,
    #[error("JWT issuer does not match")]
    Issuer,
    #[error("JWT audience does not match")]
    Audience,
    #[error("JWT claim `{0}` does not name this identity")]
    Subject(String),
}

impl JwtError {
    /// Metric label for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Invalid(_) | JwtError::Algorithm(_) | JwtError::NotYetValid => "jwt_invalid",
            JwtError::Signature(_) => "jwt_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::Issuer => "jwt_issuer",
            JwtError::Audience => "jwt_audience",
            JwtError::Subject(_) => "jwt_subject",
        }
    }
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// A configured issuer with its parsed keys.
pub struct JwtIssuer {
    pub name: String,
    issuer: String,
    audience: Vec<String>,
    identity_claim: String,
    leeway: u64,
    keys: Vec<Key>,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl JwtIssuer {
    /// The expected `iss` claim.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Build from a JWKS document. Keys of other types or algorithms are
    /// skipped; an issuer with no usable key is an error.
    pub fn new(
        name: &str,
        issuer: &str,
        audience: &[String],
        identity_claim: &str,
        leeway: u64,
        jwks_json: &str,
    ) -> Result<JwtIssuer, String> {
        let set: JwkSet =
            serde_json::from_str(jwks_json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) => {
                    if ec.curve != jsonwebtoken::jwk::EllipticCurve::P256 {
                        continue;
                    }
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Some(ka) = jwk.common.key_algorithm {
                let matches = matches!(
                    (ka, alg),
                    (jsonwebtoken::jwk::KeyAlgorithm::RS256, Algorithm::RS256)
                        | (jsonwebtoken::jwk::KeyAlgorithm::ES256, Algorithm::ES256)
                );
                if !matches {
                    continue;
                }
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key in JWKS: {e}"))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("JWKS has no RS256 or ES256 (P-256) key".to_string());
        }
        Ok(JwtIssuer {
            name: name.to_string(),
            issuer: issuer.to_string(),
            audience: audience.to_vec(),
            identity_claim: identity_claim.to_string(),
            leeway,
            keys,
        })
    }

    /// Verify `token` for `identity` at unix time `now`. Accepted, it
    /// returns the first unix second at which it no longer is: `exp` plus
    /// the leeway (see [`expired`]).
    pub fn verify(&self, token: &str, identity: &str, now: u64) -> Result<u64, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Invalid(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        // Time and audience are checked below with the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut verified = None;
        for k in self.keys.iter().filter(|k| k.alg == header.alg) {
            if header.kid.is_some() && k.kid.is_some() && header.kid != k.kid {
                continue;
            }
            match jsonwebtoken::decode::<Value>(token, &k.key, &validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature
                    | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                    | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                    | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => continue,
                    _ => return Err(JwtError::Invalid(e.to_string())),
                },
            }
        }
        let claims = verified.ok_or_else(|| JwtError::Signature(self.name.clone()))?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.audience.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| self.audience.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(JwtError::Audience);
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or_else(|| JwtError::Invalid("missing exp claim".into()))?;
        if exp < 0.0 {
            return Err(JwtError::Expired);
        }
        let until = (exp as u64).saturating_add(self.leeway);
        if expired(until, now) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_f64()
                .ok_or_else(|| JwtError::Invalid("nbf is not a number".into()))?;
            if nbf > now.saturating_add(self.leeway) as f64 {
                return Err(JwtError::NotYetValid);
            }
        }
        if claims.get(&self.identity_claim).and_then(Value::as_str) != Some(identity) {
            return Err(JwtError::Subject(self.identity_claim.clone()));
        }
        Ok(until)
    }
}

/// Whether a token accepted until `until` (what [`JwtIssuer::verify`]
/// returned) has expired at unix second `now`. The login check's own
/// bound, so a session opened with the token ends when a login with it
/// would be refused.
pub fn expired(until: u64, now: u64) -> bool {
    until <= now
}

/// Cheap shape check used to tell a JWT from an API key in a cleartext
/// password: three base64url segments, the first decoding to a JSON header.
pub fn looks_like_jwt(s: &str) -> bool {
    s.len() > 20 && s.starts_with("eyJ") && s.bytes().filter(|&b| b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn ec_issuer() -> (JwtIssuer, EncodingKey) {
        ec_issuer_with_leeway(0)
    }

    fn ec_issuer_with_leeway(leeway: u64) -> (JwtIssuer, EncodingKey) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pk = kp.public_key_raw(); // 0x04 || X || Y
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64.encode(&pk[1..33]), "y": b64.encode(&pk[33..65]),
        }]});
        let iss = JwtIssuer::new(
            "corp",
            "https://idp",
            &["sluice".into()],
            "sub",
            leeway,
            &jwks.to_string(),
        )
        .unwrap();
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        (iss, enc)
    }

    fn token(enc: &EncodingKey, claims: Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        encode(&h, &claims, enc).unwrap()
    }

    /// The leeway (`leeway_seconds`, any u64 in a config or a pushed
    /// IdentityProvider) widens both bounds without overflowing: an `nbf`
    /// check with a huge leeway panicked in a debug build (a data core's
    /// panic stops the node) and wrapped in a release build (every token
    /// with an `nbf` refused as not yet valid).
    #[test]
    fn leeway_applies_to_exp_and_nbf_without_overflow() {
        let now = 1_000_000;
        let claims = |nbf: u64, exp: u64| serde_json::json!({"iss": "https://idp", "aud": "sluice", "sub": "agent", "nbf": nbf, "exp": exp});
        let (iss, enc) = ec_issuer_with_leeway(30);
        assert_eq!(
            iss.verify(&token(&enc, claims(now + 20, now + 60)), "agent", now),
            Ok(now + 90)
        );
        assert_eq!(
            iss.verify(&token(&enc, claims(now - 60, now - 20)), "agent", now),
            Ok(now + 10)
        );
        assert_eq!(
            iss.verify(&token(&enc, claims(now + 40, now + 60)), "agent", now),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            iss.verify(&token(&enc, claims(now - 60, now - 40)), "agent", now),
            Err(JwtError::Expired)
        );
        let (iss, enc) = ec_issuer_with_leeway(u64::MAX);
        assert_eq!(
            iss.verify(&token(&enc, claims(now, now + 60)), "agent", now),
            Ok(u64::MAX)
        );
    }

    /// A token is accepted until `exp` plus the leeway, and from that
    /// second on it is expired, at login (`verify`) as in an open session
    /// (`expired`): the same bound. A fractional `exp` counts from its
    /// whole second.
    #[test]
    fn accepted_until_exp_plus_leeway_and_expired_from_then_on() {
        let now = 1_000_000;
        let (iss, enc) = ec_issuer_with_leeway(5);
        let claims = |exp: serde_json::Value| serde_json::json!({"iss": "https://idp", "aud": "sluice", "sub": "agent", "exp": exp});
        let until = iss
            .verify(&token(&enc, claims((now + 10).into())), "agent", now)
            .unwrap();
        assert_eq!(until, now + 15);
        assert!(!expired(until, now + 14));
        assert!(expired(until, now + 15));
        assert!(expired(until, now + 16));
        // At login, the same seconds.
        let t = token(&enc, claims((now + 10).into()));
        assert_eq!(iss.verify(&t, "agent", now + 14), Ok(now + 15));
        assert_eq!(iss.verify(&t, "agent", now + 15), Err(JwtError::Expired));
        let fractional = token(&enc, claims(serde_json::json!(now as f64 + 10.9)));
        assert_eq!(iss.verify(&fractional, "agent", now), Ok(now + 15));
        // No leeway: expired at `exp` itself.
        let (iss, enc) = ec_issuer();
        let t = token(&enc, claims((now + 10).into()));
        assert_eq!(iss.verify(&t, "agent", now + 9), Ok(now + 10));
        assert!(expired(now + 10, now + 10));
    }

    #[test]
    fn es256_valid_and_each_failure() {
        let (iss, enc) = ec_issuer();
        let now = 1_000_000;
        let good = serde_json::json!({"iss": "https://idp", "aud": "sluice", "sub": "agent", "exp": now + 60});
        assert!(looks_like_jwt(&token(&enc, good.clone())));
        assert_eq!(
            iss.verify(&token(&enc, good.clone()), "agent", now),
            Ok(now + 60)
        );
        assert_eq!(
            iss.verify(&token(&enc, good.clone()), "other", now),
            Err(JwtError::Subject("sub".into()))
        );
        let mut c = good.clone();
        c["exp"] = (now - 1).into();
        assert_eq!(
            iss.verify(&token(&enc, c), "agent", now),
            Err(JwtError::Expired)
        );
        let mut c = good.clone();
        c["aud"] = "other".into();
        assert_eq!(
            iss.verify(&token(&enc, c), "agent", now),
            Err(JwtError::Audience)
        );
        let mut c = good.clone();
        c["iss"] = "https://evil".into();
        assert_eq!(
            iss.verify(&token(&enc, c), "agent", now),
            Err(JwtError::Issuer)
        );
        let (_, other_key) = ec_issuer();
        assert!(matches!(
            iss.verify(&token(&other_key, good), "agent", now),
            Err(JwtError::Signature(_))
        ));
        assert!(matches!(
            iss.verify("a.b.c", "agent", now),
            Err(JwtError::Invalid(_))
        ));
    }
}
