//! Client-side handshake: from the first byte to an authenticated, authorized
//! session request. Sans-IO: the driver reads a packet (untagged until the
//! StartupMessage, tagged after), hands it to [`ClientHandshake`], and
//! carries out the [`Step`] it returns.

use std::sync::Arc;

use base64::Engine;

use crate::auth::jwt::looks_like_jwt;
use crate::auth::scram::{ScramError, ScramServer, MECHANISM, MECHANISM_PLUS};
use crate::metrics::Outcome;
use crate::protocol::backend::{self, Severity};
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{be_u32, cstr, server_name, sqlstate, tag, NAME_MAX};
use crate::snapshot::{ConnectionEntry, Snapshot};

/// Startup parameters never forwarded to the target.
const GATEWAY_PARAMS: [&str; 3] = ["user", "database", "replication"];

/// Everything the driver needs to open the session once the client is in.
#[derive(Debug)]
pub struct SessionRequest {
    pub identity: String,
    pub connection: Arc<ConnectionEntry>,
    /// How the client proved who it is (`api_key`, `jwt`, `client_cert`).
    pub auth_method: &'static str,
    /// The API key verifier the client proved, so an open session can tell
    /// when its key was deleted or replaced.
    pub verifier: Option<crate::auth::scram::Verifier>,
    /// Snapshot generation the session was authorised under.
    pub generation: u64,
    /// Masking of this session's results (None: unmasked).
    pub masking: Option<Arc<crate::mask::Engine>>,
    /// The API key came as a cleartext password (over TLS), not via SCRAM.
    pub cleartext_key: bool,
    /// For JWTs: the issuer (`iss`) that vouched for the identity.
    pub jwt_issuer: Option<String>,
    /// For JWTs: the name of the configured issuer (`jwt_issuers[].name`,
    /// the `IdentityProvider`) whose keys verified the token, so an open
    /// session can tell when that provider was removed.
    pub jwt_provider: Option<String>,
    /// The first unix second at which the credential the session logged in
    /// with is no longer accepted, when the session ends
    /// ([`SessionRequest::token_expired`]): for a JWT its `exp` plus the
    /// issuer's leeway, for a client certificate the second after its
    /// `notAfter`. None for API keys.
    pub valid_until: Option<u64>,
    /// For client certificates: the one presented, so an open session can
    /// tell when its identity no longer accepts it.
    pub client_cert: Option<Box<crate::auth::cert::ClientCert>>,
    /// Startup parameters to pass on (application_name, client_encoding…).
    pub params: Vec<(Vec<u8>, Vec<u8>)>,
}

impl SessionRequest {
    /// Whether the session's token or certificate has expired at unix
    /// second `now`: the session ends at its first statement from then on,
    /// as a login with it would be refused. Never for an API key session.
    pub fn token_expired(&self, now: u64) -> bool {
        self.valid_until
            .is_some_and(|until| crate::auth::jwt::expired(until, now))
    }

    /// What the client is told when its session ends because its
    /// credential expired.
    pub fn expired_message(&self) -> &'static str {
        if self.auth_method == "client_cert" {
            "session client certificate expired"
        } else {
            "session token expired"
        }
    }
}

/// A password received in clear (over TLS); never printed.
pub struct Cleartext(pub Vec<u8>);

impl std::fmt::Debug for Cleartext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cleartext(<redacted>)")
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes (possibly none) and read the next packet.
    Reply(Vec<u8>),
    /// Answer `S` to an SSLRequest and run the TLS handshake, then continue.
    StartTls,
    /// A CancelRequest: route it, then close without a reply.
    Cancel { pid: i32, secret: i32 },
    /// Send the error and close.
    Reject {
        reply: Vec<u8>,
        outcome: Outcome,
        auth_reason: Option<&'static str>,
        log: String,
    },
    /// A cleartext API key (sent over TLS) must be checked against its
    /// verifier: 4096 PBKDF2 rounds, about 0.7 ms, too long for a data core.
    /// The driver runs `verifier.matches_password(password)` elsewhere and
    /// reports with [`ClientHandshake::api_key_checked`].
    CheckApiKey {
        verifier: crate::auth::scram::Verifier,
        password: Cleartext,
    },
    /// Authenticated and authorized: send `reply` (SASL final, if any) and
    /// open the session.
    Ready {
        reply: Vec<u8>,
        session: SessionRequest,
    },
}

enum State {
    Startup,
    SaslInitial,
    SaslFinal(Box<ScramServer>),
    Password,
    /// Waiting for the driver to check a cleartext API key off the core.
    KeyCheck,
    Done,
}

/// Per-connection handshake state.
pub struct ClientHandshake {
    snapshot: Arc<Snapshot>,
    tls_available: bool,
    tls_required: bool,
    tls_active: bool,
    /// The `tls-server-end-point` channel binding data of the TLS
    /// connection (a hash of the certificate it presented), when there is
    /// one: `SCRAM-SHA-256-PLUS` is offered then.
    end_point: Option<Arc<[u8]>>,
    state: State,
    identity: String,
    connection: String,
    params: Vec<(Vec<u8>, Vec<u8>)>,
    cleartext_key: bool,
    jwt_issuer: Option<String>,
    jwt_provider: Option<String>,
    valid_until: Option<u64>,
    /// The certificate the client presented in its TLS handshake (verified
    /// against `tls.client_ca_file`).
    client_cert: Option<crate::auth::cert::ClientCert>,
    /// Whether the TLS handshake asks for one at all.
    client_certs_asked: bool,
}

/// A name the client gave (startup `user`, `database`) as the gateway keeps
/// it. Identity and connection names are at most [`NAME_MAX`] bytes
/// (PostgreSQL's name length), so a longer one names nothing: it is cut
/// there and marked with `…` (which no name contains), so that it can
/// match no identity or connection, and a refused client cannot write
/// kilobytes into every error, log line and AUTH_FAILURE record.
fn shown_name(name: &[u8]) -> String {
    if name.len() <= NAME_MAX {
        String::from_utf8_lossy(name).into_owned()
    } else {
        format!("{}…", String::from_utf8_lossy(server_name(name)))
    }
}

fn reject(code: &str, message: String, outcome: Outcome, reason: Option<&'static str>) -> Step {
    let mut reply = Vec::new();
    backend::error_response(&mut reply, Severity::Fatal, code, &message, None);
    Step::Reject {
        reply,
        outcome,
        auth_reason: reason,
        log: message,
    }
}

fn protocol_error(message: impl Into<String>) -> Step {
    reject(
        sqlstate::PROTOCOL_VIOLATION,
        message.into(),
        Outcome::ProtocolError,
        None,
    )
}

impl ClientHandshake {
    pub fn new(snapshot: Arc<Snapshot>, tls_available: bool, tls_required: bool) -> Self {
        ClientHandshake {
            snapshot,
            tls_available,
            tls_required,
            tls_active: false,
            end_point: None,
            state: State::Startup,
            identity: String::new(),
            connection: String::new(),
            params: Vec::new(),
            cleartext_key: false,
            jwt_issuer: None,
            jwt_provider: None,
            valid_until: None,
            client_cert: None,
            client_certs_asked: false,
        }
    }

    /// Until the StartupMessage, packets are untagged (`len`, payload).
    pub fn expects_untagged(&self) -> bool {
        matches!(self.state, State::Startup)
    }

    /// The driver finished the TLS handshake.
    pub fn tls_established(&mut self) {
        self.tls_active = true;
    }

    /// The TLS connection's `tls-server-end-point` data (see
    /// `tls::end_point`): SCRAM channel binding is offered.
    pub fn server_end_point(&mut self, data: Arc<[u8]>) {
        self.end_point = Some(data);
    }

    /// This gateway asks TLS clients for a certificate
    /// (`tls.client_ca_file`).
    pub fn client_certificates_asked(&mut self) {
        self.client_certs_asked = true;
    }

    /// The client presented `cert` in its TLS handshake, verified against
    /// the client CA.
    pub fn client_certificate(&mut self, cert: crate::auth::cert::ClientCert) {
        self.client_cert = Some(cert);
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The connection asked for (startup `database`), once known.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// Whether the client is on TLS.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Feed one untagged packet (length prefix included).
    pub fn on_untagged(&mut self, packet: &[u8]) -> Step {
        if !matches!(self.state, State::Startup) {
            return protocol_error("unexpected startup packet");
        }
        let parsed = match startup::parse(packet) {
            Ok(p) => p,
            Err(e @ startup::StartupError::UnsupportedProtocol(..)) => {
                return reject(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    e.to_string(),
                    Outcome::ProtocolError,
                    None,
                )
            }
            Err(e) => return protocol_error(e.to_string()),
        };
        match parsed {
            StartupPacket::SslRequest => {
                if self.tls_available && !self.tls_active {
                    Step::StartTls
                } else {
                    Step::Reply(b"N".to_vec())
                }
            }
            StartupPacket::GssEncRequest => Step::Reply(b"N".to_vec()),
            StartupPacket::Cancel { pid, secret } => Step::Cancel { pid, secret },
            StartupPacket::Startup(s) => self.on_startup(s),
        }
    }

    fn on_startup(&mut self, s: startup::Startup<'_>) -> Step {
        let mut reply = Vec::new();
        let unknown_opts: Vec<&[u8]> = s
            .params
            .iter()
            .filter(|(k, _)| k.starts_with(b"_pq_."))
            .map(|(k, _)| *k)
            .collect();
        if s.minor > 0 || !unknown_opts.is_empty() {
            backend::negotiate_protocol_version(&mut reply, 0, &unknown_opts);
        }
        if s.get("replication")
            .is_some_and(|v| v != b"false" && v != b"0" && v != b"off")
        {
            return reject(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "replication connections are not supported through Sluice".into(),
                Outcome::Rejected,
                None,
            );
        }
        let Some(user) = s.get("user").filter(|u| !u.is_empty()) else {
            return reject(
                sqlstate::INVALID_AUTHORIZATION,
                "no identity given: set the user name to your Sluice identity".into(),
                Outcome::AuthFailed,
                Some("unknown_identity"),
            );
        };
        self.identity = shown_name(user);
        self.connection = shown_name(s.get("database").filter(|d| !d.is_empty()).unwrap_or(user));
        self.params = s
            .params
            .iter()
            .filter(|(k, _)| {
                !k.starts_with(b"_pq_.") && !GATEWAY_PARAMS.iter().any(|g| g.as_bytes() == *k)
            })
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();

        if self.tls_required && !self.tls_active {
            return reject(
                sqlstate::INVALID_AUTHORIZATION,
                "TLS is required by this gateway: connect with sslmode=require".into(),
                Outcome::AuthFailed,
                Some("tls_required"),
            );
        }
        let Some(ident) = self.snapshot.identities.get(&self.identity) else {
            return reject(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "identity \"{}\" is not known to this gateway",
                    self.identity
                ),
                Outcome::AuthFailed,
                Some("unknown_identity"),
            );
        };
        // A client certificate first: the TLS handshake already proved it.
        if let Some(m) = &ident.client_cert {
            let presented = self.client_cert.as_ref();
            if presented.is_some_and(|c| m.matches(c)) {
                return self.authorize(reply, "client_cert");
            }
            if ident.verifier.is_none() && ident.jwt_issuers.is_empty() {
                let (message, reason) = match presented {
                    // (A control plane gave the identity a certificate; this
                    // node has no client CA to verify one with.)
                    None if !self.client_certs_asked => (
                        format!(
                            "identity \"{}\" authenticates with a client certificate, but this gateway does not accept client certificates (it has no tls.client_ca_file)",
                            self.identity
                        ),
                        "no_certificate",
                    ),
                    None => (
                        format!(
                            "identity \"{}\" authenticates with a client certificate: connect over TLS with its certificate and key (sslcert, sslkey)",
                            self.identity
                        ),
                        "no_certificate",
                    ),
                    Some(c) => (
                        format!(
                            "the client certificate presented ({}) is not identity \"{}\"'s",
                            c.describe(),
                            self.identity
                        ),
                        "bad_certificate",
                    ),
                };
                return reject(
                    sqlstate::INVALID_AUTHORIZATION,
                    message,
                    Outcome::AuthFailed,
                    Some(reason),
                );
            }
        }
        if self.tls_active && !ident.jwt_issuers.is_empty() {
            backend::auth_cleartext(&mut reply);
            self.state = State::Password;
        } else if ident.verifier.is_some() {
            // (PLUS first, as PostgreSQL lists them.)
            if self.binding().is_some() {
                backend::auth_sasl(&mut reply, &[MECHANISM_PLUS, MECHANISM]);
            } else {
                backend::auth_sasl(&mut reply, &[MECHANISM]);
            }
            self.state = State::SaslInitial;
        } else {
            return reject(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "identity \"{}\" authenticates with a JWT, which is accepted over TLS only: connect with sslmode=require",
                    self.identity
                ),
                Outcome::AuthFailed,
                Some("tls_required"),
            );
        }
        Step::Reply(reply)
    }

    /// Feed one tagged message received during authentication.
    /// `server_nonce` is fresh randomness (used for SCRAM), `now` is unix time.
    pub fn on_message(
        &mut self,
        msg_tag: u8,
        body: &[u8],
        server_nonce: &[u8; 18],
        now: u64,
    ) -> Step {
        if msg_tag != tag::PASSWORD {
            return self.auth_protocol_error(format!(
                "expected an authentication response, got message type {:?}",
                msg_tag as char
            ));
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::SaslInitial => {
                let Some((mech, rest)) = cstr(body) else {
                    return self.auth_protocol_error("malformed SASLInitialResponse");
                };
                let plus = mech == MECHANISM_PLUS.as_bytes() && self.binding().is_some();
                if mech != MECHANISM.as_bytes() && !plus {
                    return reject(
                        sqlstate::INVALID_AUTHORIZATION,
                        format!(
                            "SASL mechanism {} is not supported",
                            String::from_utf8_lossy(mech)
                        ),
                        Outcome::AuthFailed,
                        Some("bad_method"),
                    );
                }
                if rest.len() < 4 {
                    return self.auth_protocol_error("malformed SASLInitialResponse");
                }
                let n = be_u32(rest) as i32;
                let data = &rest[4..];
                if n < 0 || n as usize != data.len() {
                    return self.auth_protocol_error("malformed SASLInitialResponse");
                }
                let ident = &self.snapshot.identities[&self.identity];
                let mut scram = ScramServer::with_binding(
                    ident.verifier.clone().expect("checked at startup"),
                    self.binding().cloned(),
                    plus,
                );
                let nonce = base64::engine::general_purpose::STANDARD.encode(server_nonce);
                match scram.client_first(data, &nonce) {
                    Ok(first) => {
                        let mut reply = Vec::new();
                        backend::auth_sasl_data(&mut reply, 11, &first);
                        self.state = State::SaslFinal(Box::new(scram));
                        Step::Reply(reply)
                    }
                    Err(e) => self.scram_failed(e),
                }
            }
            State::SaslFinal(mut scram) => match scram.client_final(body) {
                Ok(fin) => {
                    let mut reply = Vec::new();
                    backend::auth_sasl_data(&mut reply, 12, &fin);
                    self.authorize(reply, "api_key")
                }
                Err(e) => self.scram_failed(e),
            },
            State::Password => {
                let Some((pw, _)) = cstr(body) else {
                    return self.auth_protocol_error("malformed PasswordMessage");
                };
                let pw = String::from_utf8_lossy(pw);
                let ident = &self.snapshot.identities[&self.identity];
                if looks_like_jwt(&pw) && !ident.jwt_issuers.is_empty() {
                    // Several issuers: the first that accepts the token wins;
                    // the error reported is the first issuer's.
                    let mut first_err = None;
                    for issuer in &ident.jwt_issuers {
                        match issuer.verify(&pw, &self.identity, now) {
                            Ok(until) => {
                                self.jwt_issuer = Some(issuer.issuer().to_string());
                                self.jwt_provider = Some(issuer.name.clone());
                                self.valid_until = Some(until);
                                return self.authorize(Vec::new(), "jwt");
                            }
                            Err(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    let e = first_err.expect("at least one issuer");
                    return reject(
                        sqlstate::INVALID_PASSWORD,
                        format!(
                            "authentication failed for identity \"{}\": {e}",
                            self.identity
                        ),
                        Outcome::AuthFailed,
                        Some(e.reason()),
                    );
                }
                match &ident.verifier {
                    Some(v) => {
                        self.state = State::KeyCheck;
                        Step::CheckApiKey {
                            verifier: v.clone(),
                            password: Cleartext(pw.into_owned().into_bytes()),
                        }
                    }
                    None => self.bad_password(),
                }
            }
            State::Startup | State::KeyCheck | State::Done => {
                self.auth_protocol_error("unexpected authentication message")
            }
        }
    }

    /// The outcome of a [`Step::CheckApiKey`] the driver ran.
    pub fn api_key_checked(&mut self, matches: bool) -> Step {
        if !matches!(
            std::mem::replace(&mut self.state, State::Done),
            State::KeyCheck
        ) {
            return protocol_error("unexpected API key check");
        }
        if matches {
            self.cleartext_key = true;
            self.authorize(Vec::new(), "api_key")
        } else {
            self.bad_password()
        }
    }

    /// A malformed or unexpected message inside the authentication
    /// exchange: a protocol violation (08P01) that is also a failed login
    /// of the identity the startup named (counted and audited as one).
    fn auth_protocol_error(&self, message: impl Into<String>) -> Step {
        reject(
            sqlstate::PROTOCOL_VIOLATION,
            message.into(),
            Outcome::ProtocolError,
            Some("protocol_violation"),
        )
    }

    /// The driver read an authentication message whose length is outside
    /// what it accepts (`len`): refuse it as [`Self::on_message`] refuses
    /// a malformed one.
    pub fn oversize_message(&mut self, len: u32) -> Step {
        self.state = State::Done;
        self.auth_protocol_error(format!("invalid authentication message length {len}"))
    }

    fn bad_password(&self) -> Step {
        reject(
            sqlstate::INVALID_PASSWORD,
            format!(
                "password authentication failed for identity \"{}\"",
                self.identity
            ),
            Outcome::AuthFailed,
            Some("bad_password"),
        )
    }

    /// The channel binding data offered: over TLS, where the certificate's
    /// hash is known.
    fn binding(&self) -> Option<&Arc<[u8]>> {
        self.end_point.as_ref().filter(|_| self.tls_active)
    }

    fn scram_failed(&self, e: ScramError) -> Step {
        match e {
            ScramError::BadProof | ScramError::Nonce => self.bad_password(),
            // (08P01, as PostgreSQL answers both.)
            ScramError::ChannelBinding | ScramError::Negotiation(_) => reject(
                sqlstate::PROTOCOL_VIOLATION,
                e.to_string(),
                Outcome::AuthFailed,
                Some("channel_binding"),
            ),
            other => self.auth_protocol_error(other.to_string()),
        }
    }

    /// After authentication: the connection must exist and be granted.
    fn authorize(&mut self, reply: Vec<u8>, method: &'static str) -> Step {
        let ident = &self.snapshot.identities[&self.identity];
        let Some(conn) = self.snapshot.connections.get(&self.connection) else {
            return reject(
                sqlstate::INVALID_CATALOG_NAME,
                format!("connection \"{}\" does not exist", self.connection),
                Outcome::Rejected,
                Some("unknown_connection"),
            );
        };
        if !self.snapshot.is_granted(ident, &self.connection) {
            return reject(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "identity \"{}\" is not granted connection \"{}\"",
                    self.identity, self.connection
                ),
                Outcome::Rejected,
                Some("not_granted"),
            );
        }
        Step::Ready {
            reply,
            session: SessionRequest {
                identity: self.identity.clone(),
                connection: conn.clone(),
                auth_method: method,
                verifier: if method == "api_key" {
                    ident.verifier.clone()
                } else {
                    None
                },
                generation: self.snapshot.generation,
                masking: self.snapshot.masking_for(&self.identity, &self.connection),
                cleartext_key: self.cleartext_key,
                jwt_issuer: self.jwt_issuer.take(),
                jwt_provider: self.jwt_provider.take(),
                valid_until: if method == "client_cert" {
                    self.client_cert
                        .as_ref()
                        .map(|c| c.not_after.saturating_add(1))
                } else {
                    self.valid_until.take()
                },
                client_cert: if method == "client_cert" {
                    self.client_cert.take().map(Box::new)
                } else {
                    None
                },
                params: std::mem::take(&mut self.params),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::Verifier;
    use crate::config::Config;
    use base64::Engine;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn snapshot(verifier: &Verifier) -> Arc<Snapshot> {
        let y = format!(
            r#"
connections:
  - name: app
    target: {{ host: 127.0.0.1, port: 5432, database: app, user: app, password: pw }}
  - name: other
    target: {{ host: 127.0.0.1, port: 5432, database: o, user: o, password: pw }}
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

    fn startup(user: &str, db: &str) -> Vec<u8> {
        let mut p = Vec::new();
        backend::startup_message(
            &mut p,
            &[
                (b"user", user.as_bytes()),
                (b"database", db.as_bytes()),
                (b"application_name", b"t"),
            ],
        );
        p
    }

    /// Drive a full SCRAM exchange with the real client implementation.
    fn login(hs: &mut ClientHandshake, key: &[u8]) -> Step {
        let mut client = ScramSha256::new(key, ChannelBinding::unsupported());
        let mut body = Vec::new();
        body.extend_from_slice(b"SCRAM-SHA-256\0");
        body.extend_from_slice(&(client.message().len() as u32).to_be_bytes());
        body.extend_from_slice(client.message());
        let Step::Reply(r) = hs.on_message(b'p', &body, &[7; 18], 0) else {
            panic!("expected SASL continue")
        };
        assert_eq!(r[0], b'R');
        client.update(&r[9..]).unwrap();
        hs.on_message(b'p', client.message(), &[7; 18], 0)
    }

    /// As [`login`], with mechanism `mech` and client-side binding `cb`.
    fn login_bound(hs: &mut ClientHandshake, key: &[u8], mech: &str, cb: ChannelBinding) -> Step {
        let mut client = ScramSha256::new(key, cb);
        let mut body = Vec::new();
        body.extend_from_slice(mech.as_bytes());
        body.push(0);
        body.extend_from_slice(&(client.message().len() as u32).to_be_bytes());
        body.extend_from_slice(client.message());
        let r = match hs.on_message(b'p', &body, &[7; 18], 0) {
            Step::Reply(r) => r,
            other => return other,
        };
        client.update(&r[9..]).unwrap();
        hs.on_message(b'p', client.message(), &[7; 18], 0)
    }

    /// Over TLS with the certificate's hash known, SCRAM-SHA-256-PLUS is
    /// offered first, and a proof bound to another certificate's hash, or
    /// a client that says it could bind (`y`), is refused (08P01).
    #[test]
    fn channel_binding_is_offered_over_tls() {
        let v = Verifier::generate(b"key", 16);
        let hash = vec![9u8; 32];
        let start = |tls: bool| {
            let mut hs = ClientHandshake::new(snapshot(&v), true, false);
            if tls {
                hs.tls_established();
                hs.server_end_point(hash.clone().into());
            }
            let Step::Reply(r) = hs.on_untagged(&startup("agent", "app")) else {
                panic!()
            };
            (hs, r)
        };
        let (mut hs, r) = start(true);
        assert_eq!(&r[9..], b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let step = login_bound(
            &mut hs,
            b"key",
            "SCRAM-SHA-256-PLUS",
            ChannelBinding::tls_server_end_point(hash.clone()),
        );
        assert!(matches!(step, Step::Ready { .. }), "{step:?}");
        for (mech, cb) in [
            (
                "SCRAM-SHA-256-PLUS",
                ChannelBinding::tls_server_end_point(vec![1; 32]),
            ),
            ("SCRAM-SHA-256", ChannelBinding::unrequested()),
        ] {
            let (mut hs, _) = start(true);
            let step = login_bound(&mut hs, b"key", mech, cb);
            assert_eq!(code_of(&step), "08P01", "{mech}");
            assert!(
                matches!(
                    step,
                    Step::Reject {
                        auth_reason: Some("channel_binding"),
                        ..
                    }
                ),
                "{step:?}"
            );
        }
        // Without TLS: plain SCRAM only, and PLUS is not accepted.
        let (mut hs, r) = start(false);
        assert_eq!(&r[9..], b"SCRAM-SHA-256\0\0");
        let step = login_bound(
            &mut hs,
            b"key",
            "SCRAM-SHA-256-PLUS",
            ChannelBinding::tls_server_end_point(hash.clone()),
        );
        assert_eq!(code_of(&step), "28000");
    }

    fn code_of(step: &Step) -> String {
        match step {
            Step::Reject { reply, .. } => backend::parse_error_fields(&reply[5..]).code,
            other => panic!("expected reject, got {other:?}"),
        }
    }

    #[test]
    fn api_key_login_succeeds_and_forwards_params() {
        let v = Verifier::generate(b"key", 16);
        let mut hs = ClientHandshake::new(snapshot(&v), false, false);
        let Step::Reply(r) = hs.on_untagged(&startup("agent", "app")) else {
            panic!()
        };
        assert_eq!(&r[5..9], &10u32.to_be_bytes()); // AuthenticationSASL
        match login(&mut hs, b"key") {
            Step::Ready { session, .. } => {
                assert_eq!(session.identity, "agent");
                assert_eq!(session.connection.name, "app");
                assert_eq!(
                    session.params,
                    vec![(b"application_name".to_vec(), b"t".to_vec())]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejections_carry_sqlstates() {
        let v = Verifier::generate(b"key", 16);
        let snap = snapshot(&v);
        let mut hs = ClientHandshake::new(snap.clone(), false, false);
        hs.on_untagged(&startup("agent", "app"));
        assert_eq!(code_of(&login(&mut hs, b"wrong")), "28P01");

        let mut hs = ClientHandshake::new(snap.clone(), false, false);
        assert_eq!(code_of(&hs.on_untagged(&startup("nobody", "app"))), "28000");

        let mut hs = ClientHandshake::new(snap.clone(), false, false);
        hs.on_untagged(&startup("agent", "missing"));
        assert_eq!(code_of(&login(&mut hs, b"key")), "3D000");

        let mut hs = ClientHandshake::new(snap.clone(), false, false);
        hs.on_untagged(&startup("agent", "other"));
        assert_eq!(code_of(&login(&mut hs, b"key")), "42501");

        let mut hs = ClientHandshake::new(snap, true, true);
        assert_eq!(code_of(&hs.on_untagged(&startup("agent", "app"))), "28000");
    }

    /// A snapshot with identity `both` (API key `key` and issuer `idp`,
    /// leeway 30 s, granted `app`), and the issuer's signing key.
    fn key_and_jwt_snapshot() -> (Arc<Snapshot>, jsonwebtoken::EncodingKey) {
        let v = Verifier::generate(b"key", 16);
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pk = kp.public_key_raw();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
            "x": b64.encode(&pk[1..33]), "y": b64.encode(&pk[33..65])}]});
        let dir = tempfile::tempdir().unwrap();
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, jwks.to_string()).unwrap();
        let y = format!(
            r#"
connections:
  - name: app
    target: {{ host: 127.0.0.1, port: 5432, database: app, user: app, password: pw }}
jwt_issuers:
  - {{ name: idp, issuer: "https://idp", audience: [sluice], jwks_file: "{}" }}
identities:
  - {{ name: both, api_key: "{v}", jwt_issuer: idp }}
grants:
  - {{ connections: [app], identities: [both] }}
"#,
            jwks_path.display()
        );
        let cfg = Config::from_yaml(&y).unwrap();
        cfg.validate().unwrap();
        let snap = Arc::new(Snapshot::build(&cfg, 1).unwrap());
        let enc = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        (snap, enc)
    }

    /// `both` logs in over TLS with the cleartext password `password`.
    fn cleartext_login(snap: &Arc<Snapshot>, password: &[u8], now: u64) -> Step {
        let mut hs = ClientHandshake::new(snap.clone(), true, false);
        hs.tls_established();
        let Step::Reply(r) = hs.on_untagged(&startup("both", "app")) else {
            panic!()
        };
        assert_eq!(&r[5..9], &3u32.to_be_bytes()); // AuthenticationCleartextPassword
        let mut body = password.to_vec();
        body.push(0);
        match hs.on_message(b'p', &body, &[0; 18], now) {
            Step::CheckApiKey { verifier, password } => {
                hs.api_key_checked(verifier.matches_password(&password.0))
            }
            step => step,
        }
    }

    /// An identity with both an API key and a JWT issuer, over TLS, gets a
    /// cleartext password request; an API key sent there is checked by the
    /// driver (off the core) through `CheckApiKey`.
    #[test]
    fn cleartext_api_key_over_tls_is_checked_by_the_driver() {
        let (snap, _) = key_and_jwt_snapshot();
        for (key, ok) in [(&b"key"[..], true), (&b"wrong"[..], false)] {
            let mut hs = ClientHandshake::new(snap.clone(), true, false);
            hs.tls_established();
            let Step::Reply(r) = hs.on_untagged(&startup("both", "app")) else {
                panic!()
            };
            assert_eq!(&r[5..9], &3u32.to_be_bytes()); // AuthenticationCleartextPassword
            let mut body = key.to_vec();
            body.push(0);
            let Step::CheckApiKey { verifier, password } = hs.on_message(b'p', &body, &[0; 18], 0)
            else {
                panic!("expected CheckApiKey")
            };
            assert!(
                !format!("{password:?}").contains("key"),
                "password must not be printable"
            );
            let step = hs.api_key_checked(verifier.matches_password(&password.0));
            if ok {
                assert!(
                    matches!(step, Step::Ready { ref session, .. } if session.auth_method == "api_key"),
                    "{step:?}"
                );
            } else {
                assert_eq!(code_of(&step), "28P01");
            }
        }
    }

    /// A JWT session carries until when its token is accepted (`exp` plus
    /// the issuer's leeway) and counts as expired from that second on, the
    /// second a login with the token is refused; an API key session of the
    /// same identity never expires.
    #[test]
    fn a_jwt_session_expires_with_its_token_and_an_api_key_session_never() {
        let (snap, enc) = key_and_jwt_snapshot();
        let now = 1_000_000;
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("k".into());
        let claims = serde_json::json!({"iss": "https://idp", "aud": "sluice", "sub": "both", "exp": now + 10});
        let token = jsonwebtoken::encode(&h, &claims, &enc).unwrap();
        let Step::Ready { session, .. } = cleartext_login(&snap, token.as_bytes(), now) else {
            panic!("JWT refused")
        };
        assert_eq!(session.auth_method, "jwt");
        assert_eq!(session.valid_until, Some(now + 40));
        assert!(!session.token_expired(now + 39));
        assert!(session.token_expired(now + 40));
        assert!(session.token_expired(u64::MAX));
        assert!(matches!(
            cleartext_login(&snap, token.as_bytes(), now + 39),
            Step::Ready { .. }
        ));
        assert_eq!(
            code_of(&cleartext_login(&snap, token.as_bytes(), now + 40)),
            "28P01"
        );
        let Step::Ready { session, .. } = cleartext_login(&snap, b"key", now) else {
            panic!("API key refused")
        };
        assert_eq!(session.auth_method, "api_key");
        assert_eq!(session.valid_until, None);
        assert!(!session.token_expired(u64::MAX));
    }

    /// A snapshot with identity `a7`, which logs in only with the client
    /// certificate of SPIFFE ID `spiffe://corp/agent/7` (granted `app`).
    fn certificate_snapshot() -> Arc<Snapshot> {
        let y = r#"
tls: { cert_file: s.pem, key_file: s.key, client_ca_file: ca.pem }
connections:
  - name: app
    target: { host: 127.0.0.1, port: 5432, database: app, user: app, password: pw }
identities:
  - { name: a7, client_cert: { spiffe_id: "spiffe://corp/agent/7" } }
grants:
  - { connections: [app], identities: [a7] }
"#;
        let cfg = Config::from_yaml(y).unwrap();
        cfg.validate().unwrap();
        Arc::new(Snapshot::build(&cfg, 1).unwrap())
    }

    /// A certificate identity without a certificate is told what to do: on
    /// a gateway that asks for client certificates, present one; on one that
    /// does not (a node without `tls.client_ca_file` that a control plane
    /// gave `ClientCertificate`s), that it cannot log in here at all.
    #[test]
    fn a_certificate_identity_without_a_certificate_is_told_why() {
        let snap = certificate_snapshot();
        let cert = crate::auth::cert::ClientCert {
            uris: vec!["spiffe://corp/agent/7".into()],
            common_name: None,
            not_after: u64::MAX,
            ..Default::default()
        };
        for (asks, want) in [
            (true, "connect over TLS with its certificate and key"),
            (false, "this gateway does not accept client certificates"),
        ] {
            let mut hs = ClientHandshake::new(snap.clone(), true, false);
            if asks {
                hs.client_certificates_asked();
            }
            hs.tls_established();
            let Step::Reject {
                reply, auth_reason, ..
            } = hs.on_untagged(&startup("a7", "app"))
            else {
                panic!("not refused")
            };
            let f = backend::parse_error_fields(&reply[5..]);
            assert_eq!(
                (f.code.as_str(), auth_reason),
                ("28000", Some("no_certificate"))
            );
            assert!(f.message.contains(want), "{}", f.message);
        }
        let mut hs = ClientHandshake::new(snap, true, false);
        hs.client_certificates_asked();
        hs.tls_established();
        hs.client_certificate(cert);
        assert!(matches!(
            hs.on_untagged(&startup("a7", "app")),
            Step::Ready { session, .. } if session.auth_method == "client_cert"
        ));
    }

    #[test]
    fn ssl_request_and_garbage() {
        let v = Verifier::generate(b"key", 16);
        let mut hs = ClientHandshake::new(snapshot(&v), true, false);
        assert!(matches!(
            hs.on_untagged(&backend::ssl_request()),
            Step::StartTls
        ));
        hs.tls_established();
        assert!(matches!(hs.on_untagged(&backend::ssl_request()), Step::Reply(r) if r == b"N"));
        let mut hs = ClientHandshake::new(snapshot(&v), false, false);
        assert!(matches!(hs.on_untagged(&backend::ssl_request()), Step::Reply(r) if r == b"N"));
        // An unknown protocol version is refused as PostgreSQL does (0A000);
        // a 3.0 packet without its terminator is a protocol violation.
        assert_eq!(
            code_of(&hs.on_untagged(&[0, 0, 0, 9, 1, 2, 3, 4, 5])),
            "0A000"
        );
        assert_eq!(
            code_of(&hs.on_untagged(&[0, 0, 0, 10, 0, 3, 0, 0, b'u', b'x'])),
            "08P01"
        );
        let mut hs = ClientHandshake::new(snapshot(&v), false, false);
        hs.on_untagged(&startup("agent", "app"));
        assert_eq!(
            code_of(&hs.on_message(b'Q', b"select 1\0", &[0; 18], 0)),
            "08P01"
        );
    }
}
