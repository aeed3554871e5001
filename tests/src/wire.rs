//! A raw PostgreSQL wire client for the tests that must send what real
//! drivers never send (garbage, oversize frames, half frames) or see what
//! they hide (BackendKeyData). Built on postgres-protocol's message writers
//! and SCRAM client; framing is read by hand. Every read has a deadline.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::STEP_TIMEOUT;

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn tag_char(&self) -> char {
        self.tag as char
    }
}

/// What a read saw.
#[derive(Debug)]
pub enum Event {
    Msg(Msg),
    /// Orderly close by the peer.
    Eof,
    /// The peer reset the connection (also a close, from the client's view).
    Reset(io::Error),
}

/// Fields of an ErrorResponse / NoticeResponse, by field type byte.
#[derive(Debug, Clone, Default)]
pub struct ErrorFields(pub BTreeMap<u8, String>);

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut m = BTreeMap::new();
        let mut i = 0;
        while i < body.len() && body[i] != 0 {
            let t = body[i];
            let end = body[i + 1..]
                .iter()
                .position(|&b| b == 0)
                .map(|p| p + i + 1)
                .unwrap_or(body.len());
            m.insert(t, String::from_utf8_lossy(&body[i + 1..end]).into_owned());
            i = end + 1;
        }
        ErrorFields(m)
    }
    pub fn code(&self) -> &str {
        self.0.get(&b'C').map(String::as_str).unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.0.get(&b'M').map(String::as_str).unwrap_or("")
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.message())
    }
}

/// How a connection ended after bad input.
#[derive(Debug)]
pub struct Closed {
    /// ErrorResponses received before the close.
    pub errors: Vec<ErrorFields>,
    /// Any other messages received before the close.
    pub others: Vec<Msg>,
    /// True for EOF, false for a reset.
    pub orderly: bool,
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(port: u16) -> Raw {
        let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("TCP connect hung")
            .expect("TCP connect");
        stream.set_nodelay(true).ok();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        tokio::time::timeout(STEP_TIMEOUT, self.stream.write_all(data))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write hung"))?
    }

    async fn fill(&mut self, want: usize) -> io::Result<bool> {
        while self.buf.len() < want {
            let mut tmp = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut tmp).await?;
            if n == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
        Ok(true)
    }

    /// Read one byte (the answer to SSLRequest / GSSENCRequest).
    pub async fn read_byte(&mut self, limit: Duration) -> Option<Event> {
        let fut = async {
            match self.fill(1).await {
                Ok(true) => {
                    let b = self.buf.remove(0);
                    Event::Msg(Msg {
                        tag: b,
                        body: vec![],
                    })
                }
                Ok(false) => Event::Eof,
                Err(e) => Event::Reset(e),
            }
        };
        tokio::time::timeout(limit, fut).await.ok()
    }

    /// Read one message, EOF or reset; `None` if nothing happened within
    /// `limit`.
    pub async fn read_event(&mut self, limit: Duration) -> Option<Event> {
        let fut = async {
            match self.fill(5).await {
                Ok(true) => {}
                Ok(false) => return Event::Eof,
                Err(e) => return Event::Reset(e),
            }
            let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap());
            assert!(
                (4..1 << 30).contains(&len),
                "gateway sent a frame with length {len} (tag {:?})",
                self.buf[0] as char
            );
            let total = 1 + len as usize;
            match self.fill(total).await {
                Ok(true) => {}
                Ok(false) => return Event::Eof,
                Err(e) => return Event::Reset(e),
            }
            let frame: Vec<u8> = self.buf.drain(..total).collect();
            Event::Msg(Msg {
                tag: frame[0],
                body: frame[5..].to_vec(),
            })
        };
        tokio::time::timeout(limit, fut).await.ok()
    }

    /// Read one message; panics on close or after [`STEP_TIMEOUT`].
    pub async fn read_msg(&mut self) -> Msg {
        match self.read_event(STEP_TIMEOUT).await {
            Some(Event::Msg(m)) => m,
            Some(other) => panic!("expected a message, got {other:?}"),
            None => panic!("no message within {STEP_TIMEOUT:?} (hang)"),
        }
    }

    /// Read until the peer closes, collecting what it sent. Panics if the
    /// connection is still open after `limit` (bad input must never hang).
    pub async fn expect_close(&mut self, limit: Duration, what: &str) -> Closed {
        let deadline = tokio::time::Instant::now() + limit;
        let mut errors = Vec::new();
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_event(left).await {
                Some(Event::Msg(m)) if m.tag == b'E' => errors.push(ErrorFields::parse(&m.body)),
                Some(Event::Msg(m)) => others.push(m),
                Some(Event::Eof) => {
                    return Closed {
                        errors,
                        others,
                        orderly: true,
                    }
                }
                Some(Event::Reset(_)) => {
                    return Closed {
                        errors,
                        others,
                        orderly: false,
                    }
                }
                None => panic!(
                    "{what}: connection neither answered with an error nor closed within {limit:?} \
                     (errors so far: {errors:?}, other messages: {:?})",
                    others.iter().map(Msg::tag_char).collect::<Vec<_>>()
                ),
            }
        }
    }
}

/// A StartupMessage (protocol 3.0) with these parameters.
pub fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf).unwrap();
    buf.to_vec()
}

/// A simple Query message.
pub fn query_bytes(sql: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf).unwrap();
    buf.to_vec()
}

/// Extended-protocol messages: Parse (no parameter types).
pub fn parse_bytes(name: &str, sql: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::parse(name, sql, std::iter::empty(), &mut buf).unwrap();
    buf.to_vec()
}

/// Bind of `statement` to `portal`, no parameters, text results.
pub fn bind_bytes(portal: &str, statement: &str) -> Vec<u8> {
    bind_with_formats(portal, statement, &[])
}

/// Bind of `statement` to `portal`, no parameters, every result column in
/// binary format.
pub fn bind_binary_bytes(portal: &str, statement: &str) -> Vec<u8> {
    bind_with_formats(portal, statement, &[1])
}

/// Bind of `statement` to `portal`, no parameters, with these result
/// format codes.
fn bind_with_formats(portal: &str, statement: &str, formats: &[i16]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::bind(
        portal,
        statement,
        std::iter::empty(),
        std::iter::empty::<()>(),
        |_, _| Ok(postgres_protocol::IsNull::No),
        formats.iter().copied(),
        &mut buf,
    )
    .map_err(|_| "bind")
    .unwrap();
    buf.to_vec()
}

/// Describe of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe_bytes(kind: u8, name: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::describe(kind, name, &mut buf).unwrap();
    buf.to_vec()
}

/// Execute of `portal`, all rows; then Sync when `sync`.
pub fn execute_bytes(portal: &str, sync: bool) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::execute(portal, 0, &mut buf).unwrap();
    if sync {
        frontend::sync(&mut buf);
    }
    buf.to_vec()
}

/// A Sync message.
pub fn sync_bytes() -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::sync(&mut buf);
    buf.to_vec()
}

/// A CancelRequest packet.
pub fn cancel_bytes(pid: i32, secret: i32) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut buf);
    buf.to_vec()
}

/// An authenticated session on a raw socket.
pub struct Session {
    pub raw: Raw,
    /// From BackendKeyData.
    pub pid: i32,
    pub secret: i32,
    pub params: Vec<(String, String)>,
    /// The authentication requests the gateway sent (10 = SASL, 3 = cleartext…).
    pub auth_codes: Vec<i32>,
}

/// Log in as `user` to connection `db` with `password` (SCRAM-SHA-256 or
/// cleartext, whichever the gateway asks for). `Err` carries the
/// ErrorResponse. Panics on a hang or on a broken SCRAM exchange.
pub async fn login(
    port: u16,
    user: &str,
    db: &str,
    password: &str,
) -> Result<Session, ErrorFields> {
    login_on(Raw::connect(port).await, user, db, password).await
}

/// [`login`] on an already connected socket (e.g. after an SSLRequest was
/// answered `N`).
pub async fn login_on(
    mut raw: Raw,
    user: &str,
    db: &str,
    password: &str,
) -> Result<Session, ErrorFields> {
    raw.send(&startup_bytes(&[("user", user), ("database", db)]))
        .await
        .expect("send startup");
    let mut scram: Option<ScramSha256> = None;
    let mut s = Session {
        raw,
        pid: 0,
        secret: 0,
        params: vec![],
        auth_codes: vec![],
    };
    loop {
        let m = s.raw.read_msg().await;
        match m.tag {
            b'R' => {
                let code = i32::from_be_bytes(m.body[..4].try_into().unwrap());
                s.auth_codes.push(code);
                let data = &m.body[4..];
                let mut out = BytesMut::new();
                match code {
                    0 => {}
                    3 => frontend::password_message(password.as_bytes(), &mut out).unwrap(),
                    10 => {
                        let mechs: Vec<String> = data
                            .split(|&b| b == 0)
                            .filter(|x| !x.is_empty())
                            .map(|x| String::from_utf8_lossy(x).into_owned())
                            .collect();
                        assert!(
                            mechs.iter().any(|m| m == "SCRAM-SHA-256"),
                            "SASL mechanisms offered: {mechs:?}"
                        );
                        let sc =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", sc.message(), &mut out)
                            .unwrap();
                        scram = Some(sc);
                    }
                    11 => {
                        let sc = scram.as_mut().expect("SASLContinue before SASL");
                        sc.update(data).expect("server-first-message is valid");
                        frontend::sasl_response(sc.message(), &mut out).unwrap();
                    }
                    12 => {
                        let sc = scram.as_mut().expect("SASLFinal before SASL");
                        sc.finish(data).expect(
                            "server signature verifies (gateway proves it holds the verifier)",
                        );
                    }
                    other => panic!("unexpected authentication request {other}"),
                }
                if !out.is_empty() {
                    s.raw.send(&out).await.expect("send auth response");
                }
            }
            b'E' => return Err(ErrorFields::parse(&m.body)),
            b'S' => {
                let mut parts = m.body.split(|&b| b == 0);
                let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                s.params.push((k, v));
            }
            b'K' => {
                s.pid = i32::from_be_bytes(m.body[..4].try_into().unwrap());
                s.secret = i32::from_be_bytes(m.body[4..8].try_into().unwrap());
            }
            b'Z' => return Ok(s),
            b'N' => {}
            other => panic!("unexpected message {:?} during login", other as char),
        }
    }
}

/// Rows of a simple query, as text.
pub type Rows = Vec<Vec<Option<String>>>;

impl Session {
    /// Run a simple query and collect its rows (all result sets together).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, ErrorFields> {
        self.raw.send(&query_bytes(sql)).await.expect("send query");
        self.read_result().await
    }

    /// Read DataRows until ReadyForQuery.
    pub async fn read_result(&mut self) -> Result<Rows, ErrorFields> {
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let m = self.raw.read_msg().await;
            match m.tag {
                b'D' => rows.push(parse_data_row(&m.body)),
                b'E' => err = Some(ErrorFields::parse(&m.body)),
                b'Z' => {
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }
}

fn parse_data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut i = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body[i..i + 4].try_into().unwrap());
        i += 4;
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(
                String::from_utf8_lossy(&body[i..i + len]).into_owned(),
            ));
            i += len;
        }
    }
    out
}
