//! SCRAM-SHA-256 (RFC 5802 / 7677) as PostgreSQL speaks it, server side.
//!
//! Sluice stores only the verifier of an API key, in PostgreSQL's own format
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, so a leaked
//! configuration does not leak keys and the key never crosses the wire.
//!
//! Over TLS, `SCRAM-SHA-256-PLUS` is offered too, with channel binding type
//! `tls-server-end-point` (RFC 5929: a hash of the certificate the gateway
//! presented, as libpq and tokio-postgres compute it), so that a client with
//! `channel_binding=require` connects, and a client's proof is bound to the
//! TLS connection it came on (a relay in between would present another
//! certificate). A client that could bind but believes the server cannot
//! (flag `y`) is refused where binding was offered (RFC 5802 §6: a
//! downgrade).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use std::num::NonZeroU32;

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel binding type offered.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
pub const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("not a SCRAM-SHA-256 verifier: {0}")]
    BadVerifier(&'static str),
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The channel binding data does not match this connection's (or
    /// names a type other than `tls-server-end-point`).
    #[error("SCRAM channel binding check failed")]
    ChannelBinding,
    /// The client could bind but believes the server cannot (`y`), where
    /// binding was offered; or it chose `SCRAM-SHA-256-PLUS` and did not
    /// bind, or bound under plain `SCRAM-SHA-256`.
    #[error("SCRAM channel binding negotiation error: {0}")]
    Negotiation(&'static str),
    #[error("nonce mismatch")]
    Nonce,
    #[error("password authentication failed")]
    BadProof,
}

/// A stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Compare two keys without an early exit on the first difference.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    std::hint::black_box(diff) == 0
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, b).as_ref());
    out
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let iters = NonZeroU32::new(iterations.max(1)).expect("max(1) is non-zero");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iters, salt, password, &mut out);
    out
}

fn decode32(s: &str, what: &'static str) -> Result<[u8; 32], ScramError> {
    let v = B64.decode(s).map_err(|_| ScramError::BadVerifier(what))?;
    v.try_into().map_err(|_| ScramError::BadVerifier(what))
}

impl Verifier {
    /// Derive the verifier of `password` with a fresh random salt.
    pub fn generate(password: &[u8], iterations: u32) -> Verifier {
        let mut salt = vec![0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .expect("system random source");
        Self::with_salt(password, salt, iterations)
    }

    pub fn with_salt(password: &[u8], salt: Vec<u8>, iterations: u32) -> Verifier {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        Verifier {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// Parse PostgreSQL's `SCRAM-SHA-256$iter:salt$stored:server` form.
    pub fn parse(s: &str) -> Result<Verifier, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier("must start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier(
            "expected <iterations>:<salt>$<StoredKey>:<ServerKey>",
        ))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or(ScramError::BadVerifier("expected <iterations>:<salt>"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(ScramError::BadVerifier("expected <StoredKey>:<ServerKey>"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| ScramError::BadVerifier("iterations is not a number"))?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier("iterations must be > 0"));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::BadVerifier("salt is not base64"))?;
        if salt.is_empty() {
            return Err(ScramError::BadVerifier("salt is empty"));
        }
        Ok(Verifier {
            iterations,
            salt,
            stored_key: decode32(stored, "StoredKey is not 32 bytes of base64")?,
            server_key: decode32(server, "ServerKey is not 32 bytes of base64")?,
        })
    }

    /// Check a password given in clear (over TLS) against the verifier.
    pub fn matches_password(&self, password: &[u8]) -> bool {
        let salted = salted_password(password, &self.salt, self.iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ct_eq(&sha256(&client_key), &self.stored_key)
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Server side of one SCRAM exchange. Sans-IO: feed the client's messages,
/// get back what to send.
pub struct ScramServer {
    verifier: Verifier,
    state: State,
    /// The `tls-server-end-point` data of this connection, where binding
    /// was offered (`SCRAM-SHA-256-PLUS` advertised).
    offered: Option<std::sync::Arc<[u8]>>,
    /// The client chose `SCRAM-SHA-256-PLUS`.
    plus: bool,
}

enum State {
    Initial,
    SentFirst {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        gs2_header: String,
    },
    Done,
}

impl ScramServer {
    /// Without channel binding (plain `SCRAM-SHA-256`, none offered).
    pub fn new(verifier: Verifier) -> Self {
        Self::with_binding(verifier, None, false)
    }

    /// `offered`: this connection's `tls-server-end-point` data, where
    /// `SCRAM-SHA-256-PLUS` was advertised; `plus`: the client chose it.
    pub fn with_binding(
        verifier: Verifier,
        offered: Option<std::sync::Arc<[u8]>>,
        plus: bool,
    ) -> Self {
        ScramServer {
            verifier,
            state: State::Initial,
            offered,
            plus,
        }
    }

    /// Handle client-first-message; `server_nonce` must be fresh random
    /// printable characters. Returns server-first-message.
    pub fn client_first(&mut self, msg: &[u8], server_nonce: &str) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        match (flag, self.plus) {
            ("n", false) => {}
            ("y", false) if self.offered.is_none() => {}
            ("y", false) => {
                return Err(ScramError::Negotiation(
                    "the client supports channel binding but thinks the server does not; this server does",
                ))
            }
            (f, true) if f.starts_with("p=") => {
                if f.strip_prefix("p=") != Some(TLS_SERVER_END_POINT) || self.offered.is_none() {
                    return Err(ScramError::ChannelBinding);
                }
            }
            (f, false) if f.starts_with("p=") => {
                return Err(ScramError::Negotiation(
                    "channel binding requested under SCRAM-SHA-256 (it takes SCRAM-SHA-256-PLUS)",
                ))
            }
            ("n" | "y", true) => {
                return Err(ScramError::Negotiation(
                    "SCRAM-SHA-256-PLUS chosen without channel binding",
                ))
            }
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(ScramError::Malformed("bad authzid"));
        }
        let gs2_header = format!("{flag},{authzid},");
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(r) = attr.strip_prefix("r=") {
                client_nonce = Some(r);
            }
        }
        let client_nonce = client_nonce.ok_or(ScramError::Malformed("missing nonce"))?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad nonce"));
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let out = server_first.clone().into_bytes();
        self.state = State::SentFirst {
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
            gs2_header,
        };
        Ok(out)
    }

    /// Handle client-final-message. On success returns server-final-message.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::SentFirst {
            client_first_bare,
            server_first,
            nonce,
            gs2_header,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("unexpected message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut cbind = None;
        let mut r = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                r = Some(v);
            }
        }
        let cbind = cbind.ok_or(ScramError::Malformed("missing channel binding"))?;
        // The gs2 header, and for `p=` this connection's binding data.
        let mut want = gs2_header.into_bytes();
        if self.plus {
            want.extend_from_slice(self.offered.as_deref().unwrap_or_default());
        }
        if B64.decode(cbind).ok() != Some(want) {
            return Err(ScramError::ChannelBinding);
        }
        if r != Some(nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof has the wrong length"));
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_sig = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_sig[i];
        }
        if !ct_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_sig = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_sig)).into_bytes())
    }
}

/// A fresh API key: `sk_` and 24 random bytes, base64url. Only its SCRAM
/// verifier is ever stored.
pub fn generate_api_key() -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .expect("system random source");
    format!(
        "sk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run_exchange(key: &[u8], verifier: &Verifier) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(key, ChannelBinding::unsupported());
        let mut server = ScramServer::new(verifier.clone());
        let first = server.client_first(client.message(), "c2VydmVybm9uY2U")?;
        client.update(&first).expect("client accepts server-first");
        let fin = server.client_final(client.message())?;
        client
            .finish(&fin)
            .expect("client verifies server signature");
        Ok(())
    }

    #[test]
    fn exchange_with_real_client_succeeds() {
        let v = Verifier::generate(b"sk_test_key", 4096);
        run_exchange(b"sk_test_key", &v).unwrap();
    }

    #[test]
    fn wrong_key_fails() {
        let v = Verifier::generate(b"sk_test_key", 4096);
        assert_eq!(run_exchange(b"sk_other", &v), Err(ScramError::BadProof));
    }

    #[test]
    fn verifier_round_trips_and_matches_postgres_format() {
        let v = Verifier::with_salt(b"pencil", b"0123456789abcdef".to_vec(), 4096);
        let s = v.to_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"));
        assert_eq!(Verifier::parse(&s).unwrap(), v);
        assert!(v.matches_password(b"pencil"));
        assert!(!v.matches_password(b"pencil2"));
    }

    /// One exchange with the real client, channel binding `cb` on the
    /// client's side; the server offered `offered` and the client chose
    /// `plus`.
    fn bound_exchange(
        cb: ChannelBinding,
        offered: Option<&[u8]>,
        plus: bool,
    ) -> Result<(), ScramError> {
        let v = Verifier::generate(b"sk_test_key", 16);
        let mut client = ScramSha256::new(b"sk_test_key", cb);
        let mut server = ScramServer::with_binding(v, offered.map(Into::into), plus);
        let first = server.client_first(client.message(), "c2VydmVybm9uY2U")?;
        client.update(&first).expect("client accepts server-first");
        let fin = server.client_final(client.message())?;
        client.finish(&fin).expect("client verifies the server");
        Ok(())
    }

    /// SCRAM-SHA-256-PLUS with `tls-server-end-point`: the client's hash of
    /// the certificate it saw must be this connection's; a client that
    /// could bind but was not offered binding passes, one that was offered
    /// it and says it was not (`y`) does not.
    #[test]
    fn channel_binding_binds_the_proof_to_the_connection() {
        let hash = [7u8; 32];
        let cb = || ChannelBinding::tls_server_end_point(hash.to_vec());
        bound_exchange(cb(), Some(&hash), true).unwrap();
        assert_eq!(
            bound_exchange(cb(), Some(&[8u8; 32]), true),
            Err(ScramError::ChannelBinding),
            "a relay presenting another certificate"
        );
        // Plain SCRAM on a connection that offered PLUS.
        bound_exchange(ChannelBinding::unsupported(), Some(&hash), false).unwrap();
        assert!(matches!(
            bound_exchange(ChannelBinding::unrequested(), Some(&hash), false),
            Err(ScramError::Negotiation(_))
        ));
        // Nothing offered (no TLS): `y` is fine.
        bound_exchange(ChannelBinding::unrequested(), None, false).unwrap();
        // PLUS chosen but not bound, bound under plain SCRAM.
        assert!(matches!(
            bound_exchange(ChannelBinding::unsupported(), Some(&hash), true),
            Err(ScramError::Negotiation(_))
        ));
        assert!(matches!(
            bound_exchange(cb(), Some(&hash), false),
            Err(ScramError::Negotiation(_))
        ));
    }

    #[test]
    fn refuses_channel_binding_and_garbage() {
        let v = Verifier::generate(b"k", 16);
        let mut s = ScramServer::new(v.clone());
        assert!(matches!(
            s.client_first(b"p=tls-server-end-point,,n=,r=abc", "x"),
            Err(ScramError::Negotiation(_))
        ));
        let mut s = ScramServer::with_binding(v.clone(), Some(vec![1].into()), true);
        assert_eq!(
            s.client_first(b"p=tls-unique,,n=,r=abc", "x"),
            Err(ScramError::ChannelBinding)
        );
        let mut s = ScramServer::new(v.clone());
        assert!(s.client_first(b"garbage", "x").is_err());
        let mut s = ScramServer::new(v);
        assert!(s.client_final(b"c=biws,r=x,p=AAAA").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$0:AA==$x:y").is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(a in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                                b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let v = Verifier::with_salt(b"k", b"salt".to_vec(), 1);
            let mut s = ScramServer::new(v.clone());
            let _ = s.client_first(&a, "n");
            let _ = s.client_final(&b);
            let mut s = ScramServer::with_binding(v, Some(vec![1; 32].into()), true);
            let _ = s.client_first(&a, "n");
            let _ = s.client_final(&b);
        }
    }
}
