//! Gateway-to-target handshake: Sluice logs in to the target PostgreSQL with
//! the credentials it holds (SCRAM-SHA-256, md5, cleartext or trust), then
//! collects what the client must see (ParameterStatus, BackendKeyData,
//! ReadyForQuery). Sans-IO like the client handshake.

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use crate::config::TargetAuth;
use crate::protocol::backend::{self, parse_error_fields};
use crate::protocol::{be_i32, be_u32, cstr, sqlstate, tag};
use crate::snapshot::ConnectionEntry;

/// A failure to open the target session, already mapped to what the client
/// should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    pub code: String,
    pub message: String,
}

impl TargetError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        TargetError {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// What the driver does next.
pub enum TargetStep {
    /// Send these bytes to the target and keep reading.
    Send(Vec<u8>),
    /// Keep reading.
    Continue,
    /// The target session is ready.
    Ready(TargetReady),
    Fail(TargetError),
}

/// The target's side of the session opening.
#[derive(Debug, Default)]
pub struct TargetReady {
    /// ParameterStatus / NoticeResponse / NegotiateProtocolVersion frames,
    /// in order, to relay to the client.
    pub forward: Vec<u8>,
    pub pid: i32,
    pub secret: i32,
    /// The ReadyForQuery frame.
    pub ready_for_query: Vec<u8>,
    /// The last `client_encoding` the target reported (startup parameter,
    /// PGOPTIONS, a role or database default).
    pub client_encoding: Option<Vec<u8>>,
    /// The last `TimeZone` the target reported.
    pub time_zone: Option<Vec<u8>>,
    /// The major version in the target's `server_version` (`15.18 (Debian
    /// …)` → 15, `9.6.24` → 9).
    pub server_major: Option<u32>,
    /// The target's `standard_conforming_strings`.
    pub standard_conforming_strings: Option<Vec<u8>>,
}

pub struct TargetHandshake<'a> {
    conn: &'a ConnectionEntry,
    scram: Option<ScramSha256>,
    ready: TargetReady,
    authenticated: bool,
}

impl<'a> TargetHandshake<'a> {
    pub fn new(conn: &'a ConnectionEntry) -> Self {
        TargetHandshake {
            conn,
            scram: None,
            ready: TargetReady::default(),
            authenticated: false,
        }
    }

    /// The StartupMessage for the target: its user and database, plus the
    /// client's other parameters.
    pub fn startup_packet(&self, params: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut p: Vec<(&[u8], &[u8])> = vec![
            (b"user", self.conn.user.as_bytes()),
            (b"database", self.conn.database.as_bytes()),
        ];
        p.extend(params.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let mut out = Vec::new();
        backend::startup_message(&mut out, &p);
        out
    }

    fn allowed(&self, method: TargetAuth) -> Result<(), TargetError> {
        if self.conn.auth == TargetAuth::Auto || self.conn.auth == method {
            Ok(())
        } else {
            Err(TargetError::new(
                sqlstate::SERVER_REJECTED_CONNECTION,
                format!(
                    "target for connection \"{}\" asked for {method:?} authentication, but the connection is pinned to {:?}",
                    self.conn.name, self.conn.auth
                ),
            ))
        }
    }

    fn password(&self) -> Result<&str, TargetError> {
        self.conn
            .password
            .as_ref()
            .map(|p| p.expose())
            .ok_or_else(|| {
                TargetError::new(
                    sqlstate::SERVER_REJECTED_CONNECTION,
                    format!(
                        "target for connection \"{}\" asks for a password and none is configured",
                        self.conn.name
                    ),
                )
            })
    }

    /// Feed one message from the target.
    pub fn on_message(&mut self, msg_tag: u8, body: &[u8]) -> TargetStep {
        match self.handle(msg_tag, body) {
            Ok(s) => s,
            Err(e) => TargetStep::Fail(e),
        }
    }

    fn handle(&mut self, msg_tag: u8, body: &[u8]) -> Result<TargetStep, TargetError> {
        let malformed = || {
            TargetError::new(
                sqlstate::CONNECTION_FAILURE,
                "malformed message from target",
            )
        };
        match msg_tag {
            tag::AUTHENTICATION => {
                if body.len() < 4 {
                    return Err(malformed());
                }
                let code = be_u32(body);
                let data = &body[4..];
                match code {
                    0 => {
                        if !self.authenticated {
                            self.allowed(TargetAuth::Trust)?;
                        }
                        self.authenticated = true;
                        Ok(TargetStep::Continue)
                    }
                    3 => {
                        self.allowed(TargetAuth::Password)?;
                        let mut out = Vec::new();
                        backend::password_message(&mut out, self.password()?.as_bytes());
                        self.authenticated = true;
                        Ok(TargetStep::Send(out))
                    }
                    5 => {
                        self.allowed(TargetAuth::Md5)?;
                        if data.len() != 4 {
                            return Err(malformed());
                        }
                        let salt = [data[0], data[1], data[2], data[3]];
                        let hash = postgres_protocol::authentication::md5_hash(
                            self.conn.user.as_bytes(),
                            self.password()?.as_bytes(),
                            salt,
                        );
                        let mut out = Vec::new();
                        backend::password_message(&mut out, hash.as_bytes());
                        self.authenticated = true;
                        Ok(TargetStep::Send(out))
                    }
                    10 => {
                        self.allowed(TargetAuth::ScramSha256)?;
                        let mut mechs = data;
                        let mut found = false;
                        while let Some((m, rest)) = cstr(mechs) {
                            if m.is_empty() {
                                break;
                            }
                            found |= m == b"SCRAM-SHA-256";
                            mechs = rest;
                        }
                        if !found {
                            return Err(TargetError::new(
                                sqlstate::SERVER_REJECTED_CONNECTION,
                                "target offers no SASL mechanism Sluice supports",
                            ));
                        }
                        let scram = ScramSha256::new(
                            self.password()?.as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        let mut out = Vec::new();
                        backend::sasl_initial_response(&mut out, "SCRAM-SHA-256", scram.message());
                        self.scram = Some(scram);
                        Ok(TargetStep::Send(out))
                    }
                    11 => {
                        let scram = self.scram.as_mut().ok_or_else(malformed)?;
                        scram.update(data).map_err(|e| {
                            TargetError::new(
                                sqlstate::SERVER_REJECTED_CONNECTION,
                                format!("SCRAM with target failed: {e}"),
                            )
                        })?;
                        let mut out = Vec::new();
                        backend::message(&mut out, tag::PASSWORD, scram.message());
                        Ok(TargetStep::Send(out))
                    }
                    12 => {
                        let mut scram = self.scram.take().ok_or_else(malformed)?;
                        scram.finish(data).map_err(|e| {
                            TargetError::new(
                                sqlstate::SERVER_REJECTED_CONNECTION,
                                format!("target failed SCRAM server verification: {e}"),
                            )
                        })?;
                        self.authenticated = true;
                        Ok(TargetStep::Continue)
                    }
                    other => Err(TargetError::new(
                        sqlstate::SERVER_REJECTED_CONNECTION,
                        format!("target asked for an unsupported authentication method ({other})"),
                    )),
                }
            }
            tag::BACKEND_KEY_DATA => {
                if body.len() != 8 {
                    return Err(malformed());
                }
                self.ready.pid = be_i32(body);
                self.ready.secret = be_i32(&body[4..]);
                Ok(TargetStep::Continue)
            }
            tag::ERROR_RESPONSE => {
                let f = parse_error_fields(body);
                let code = if f.code.starts_with("28") {
                    // The gateway's own credentials were refused: not the
                    // client's fault, and not to be mistaken for it.
                    sqlstate::SERVER_REJECTED_CONNECTION.to_string()
                } else if f.code.is_empty() {
                    sqlstate::CONNECTION_FAILURE.to_string()
                } else {
                    f.code
                };
                Err(TargetError {
                    code,
                    message: format!(
                        "target for connection \"{}\": {}",
                        self.conn.name, f.message
                    ),
                })
            }
            tag::READY_FOR_QUERY => {
                if !self.authenticated {
                    return Err(malformed());
                }
                let mut z = Vec::new();
                backend::message(&mut z, tag::READY_FOR_QUERY, body);
                self.ready.ready_for_query = z;
                Ok(TargetStep::Ready(std::mem::take(&mut self.ready)))
            }
            _ => {
                // ParameterStatus, NoticeResponse, NegotiateProtocolVersion.
                if msg_tag == tag::PARAMETER_STATUS {
                    match backend::parameter_status(body) {
                        Some((b"client_encoding", v)) => {
                            self.ready.client_encoding = Some(v.to_vec())
                        }
                        Some((b"TimeZone", v)) => self.ready.time_zone = Some(v.to_vec()),
                        Some((b"standard_conforming_strings", v)) => {
                            self.ready.standard_conforming_strings = Some(v.to_vec())
                        }
                        Some((b"server_version", v)) => {
                            let major = v.iter().take_while(|c| c.is_ascii_digit());
                            self.ready.server_major = std::str::from_utf8(&v[..major.count()])
                                .ok()
                                .and_then(|s| s.parse().ok());
                        }
                        _ => {}
                    }
                }
                backend::message(&mut self.ready.forward, msg_tag, body);
                Ok(TargetStep::Continue)
            }
        }
    }
}
