//! The per-connection driver: carries out what the sans-IO handshakes ask,
//! opens the target session, then relays both directions from the buffers
//! the bytes arrived in.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use ring::rand::SecureRandom;

use super::io::{
    raw_fd, shutdown_fd, write_all, ClientIo, MaybeTls, PacketReader, ReadError, TargetIo,
};
use super::Worker;
use crate::cancel::{CancelRegistry, CancelTarget};
use crate::metrics::{bump, Outcome};
use crate::protocol::backend::{self, Severity};
use crate::protocol::frame::{FrameError, FrameScanner};
use crate::protocol::{sqlstate, tag};
use crate::session::handshake::{ClientHandshake, SessionRequest, Step};
use crate::session::masker::TargetMasker;
use crate::session::target::{TargetError, TargetHandshake, TargetReady, TargetStep};
use crate::snapshot::ConnectionEntry;

/// Largest authentication message accepted from a client (JWTs included).
const MAX_AUTH_MESSAGE: u32 = 64 * 1024;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fatal(code: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    backend::error_response(&mut out, Severity::Fatal, code, message, None);
    out
}

/// How the handshake phase ended.
enum Handshake {
    Ready(ClientIo, Box<SessionRequest>, Vec<u8>),
    Done(Outcome),
}

/// Serve one accepted client connection to the end.
pub async fn serve(worker: Rc<Worker>, tcp: TcpStream, peer: SocketAddr) {
    let m = &worker.metrics;
    m.connections_open.fetch_add(1, Relaxed);
    let outcome = serve_inner(&worker, tcp, peer).await;
    if let Some(o) = outcome {
        m.outcome(o);
    }
    m.connections_open.fetch_sub(1, Relaxed);
}

async fn serve_inner(worker: &Rc<Worker>, tcp: TcpStream, peer: SocketAddr) -> Option<Outcome> {
    let shared = &worker.shared;
    let _ = tcp.set_nodelay(true);
    let client_fd = raw_fd(&tcp);
    if shared.draining.load(Relaxed) {
        let mut io = tcp;
        let _ = write_all(
            &mut io,
            fatal(sqlstate::ADMIN_SHUTDOWN, "the gateway is shutting down"),
        )
        .await;
        return Some(Outcome::Shutdown);
    }
    if !shared.snapshot_ready.load(Relaxed) {
        let mut io = tcp;
        let _ = write_all(
            &mut io,
            fatal(
                sqlstate::CANNOT_CONNECT_NOW,
                "the gateway is starting: no configuration snapshot from the control plane yet",
            ),
        )
        .await;
        return Some(Outcome::NotReady);
    }
    let limits = &shared.limits;
    let hs_deadline = Duration::from_millis(limits.handshake_timeout_ms);
    let handshake = monoio::time::timeout(hs_deadline, client_handshake(worker, tcp)).await;
    let (mut client, session, leftover) = match handshake {
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return Some(Outcome::Timeout);
        }
        Ok(Handshake::Done(o)) => return Some(o),
        Ok(Handshake::Ready(c, s, l)) => (c, s, l),
    };

    let conn = session.connection.clone();
    let connect = monoio::time::timeout(
        Duration::from_millis(limits.connect_timeout_ms),
        open_target(&conn, &session, limits.max_frame_bytes),
    )
    .await
    .unwrap_or_else(|_| {
        Err(TargetError {
            code: sqlstate::UNABLE_TO_CONNECT.into(),
            message: format!(
                "timed out connecting to the target for connection \"{}\"",
                conn.name
            ),
        })
    });
    let (target, target_fd, ready) = match connect {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%peer, identity = %session.identity, connection = %conn.name, code = %e.code, "target unavailable: {}", e.message);
            let _ = write_all(&mut client, fatal(&e.code, &e.message)).await;
            return Some(Outcome::TargetUnavailable);
        }
    };

    let cancel_target = CancelTarget {
        addrs: conn.addrs.clone(),
        pid: ready.pid,
        secret: ready.secret,
    };
    let guard = shared.cancels.register(cancel_target.clone());
    let mut hello = Vec::with_capacity(ready.forward.len() + 64);
    backend::auth_ok(&mut hello);
    hello.extend_from_slice(&ready.forward);
    backend::backend_key_data(&mut hello, ready.pid, guard.minted());
    hello.extend_from_slice(&ready.ready_for_query);
    if write_all(&mut client, hello).await.is_err() {
        return Some(Outcome::ClientClosed);
    }
    tracing::debug!(%peer, identity = %session.identity, connection = %conn.name, method = session.auth_method, pid = ready.pid, "session established");
    worker.metrics.outcome(Outcome::Established);
    worker.metrics.sessions_open.fetch_add(1, Relaxed);
    relay(
        worker,
        (client, client_fd),
        (target, target_fd),
        leftover,
        &cancel_target,
        &session,
    )
    .await;
    worker.metrics.sessions_open.fetch_sub(1, Relaxed);
    drop(guard);
    None
}

/// Run the client handshake: TLS upgrade, authentication, authorization.
async fn client_handshake(worker: &Rc<Worker>, tcp: TcpStream) -> Handshake {
    let shared = &worker.shared;
    let m = &worker.metrics;
    let mut hs = ClientHandshake::new(
        shared.snapshot.load_full(),
        shared.tls.is_some(),
        shared.tls_required,
    );
    let mut reader = PacketReader::new();
    let mut io: ClientIo = MaybeTls::Plain(tcp);
    loop {
        let step = if hs.expects_untagged() {
            match reader
                .read_untagged(&mut io, shared.limits.max_startup_packet_bytes)
                .await
            {
                Ok(p) => hs.on_untagged(&p),
                Err(e) => {
                    return read_failed(worker, &mut io, e, "invalid length of startup packet")
                        .await
                }
            }
        } else {
            match reader.read_tagged(&mut io, MAX_AUTH_MESSAGE).await {
                Ok((t, body)) => {
                    let mut nonce = [0u8; 18];
                    if shared.rng.fill(&mut nonce).is_err() {
                        let _ =
                            write_all(&mut io, fatal(sqlstate::INTERNAL_ERROR, "no randomness"))
                                .await;
                        return Handshake::Done(Outcome::ProtocolError);
                    }
                    hs.on_message(t, &body, &nonce, unix_now())
                }
                Err(e) => {
                    return read_failed(worker, &mut io, e, "invalid authentication message length")
                        .await
                }
            }
        };
        // A cleartext API key costs 4096 PBKDF2 rounds: run it on the
        // blocking pool so the other sessions of this core keep moving.
        let step = match step {
            Step::CheckApiKey { verifier, password } => {
                let check = monoio::spawn_blocking(move || verifier.matches_password(&password.0));
                hs.api_key_checked(check.await.unwrap_or(false))
            }
            other => other,
        };
        match step {
            Step::CheckApiKey { .. } => {
                // api_key_checked never asks again.
                return Handshake::Done(Outcome::ProtocolError);
            }
            Step::Reply(bytes) => {
                if write_all(&mut io, bytes).await.is_err() {
                    return Handshake::Done(Outcome::ClientClosed);
                }
            }
            Step::StartTls => {
                if !reader.leftover().is_empty() {
                    let _ = write_all(
                        &mut io,
                        fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            "received unencrypted data after SSL request",
                        ),
                    )
                    .await;
                    return Handshake::Done(Outcome::ProtocolError);
                }
                let MaybeTls::Plain(mut tcp) = io else {
                    return Handshake::Done(Outcome::ProtocolError);
                };
                if write_all(&mut tcp, b"S".to_vec()).await.is_err() {
                    return Handshake::Done(Outcome::ClientClosed);
                }
                let acceptor = shared
                    .tls
                    .as_ref()
                    .expect("StartTls only when TLS is configured");
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        io = MaybeTls::Tls(Box::new(tls));
                        hs.tls_established();
                    }
                    Err(e) => {
                        tracing::debug!("client TLS handshake failed: {e}");
                        return Handshake::Done(Outcome::TlsError);
                    }
                }
            }
            Step::Cancel { pid, secret } => {
                handle_cancel(worker, pid, secret).await;
                return Handshake::Done(Outcome::CancelRequest);
            }
            Step::Reject {
                reply,
                outcome,
                auth_reason,
                log,
            } => {
                if let Some(r) = auth_reason {
                    m.auth_failure(r);
                }
                tracing::info!(identity = %hs.identity(), reason = auth_reason.unwrap_or("-"), "connection refused: {log}");
                let _ = write_all(&mut io, reply).await;
                return Handshake::Done(outcome);
            }
            Step::Ready { reply, session } => {
                if write_all(&mut io, reply).await.is_err() {
                    return Handshake::Done(Outcome::ClientClosed);
                }
                let leftover = reader.leftover().to_vec();
                return Handshake::Ready(io, Box::new(session), leftover);
            }
        }
    }
}

async fn read_failed(worker: &Rc<Worker>, io: &mut ClientIo, e: ReadError, msg: &str) -> Handshake {
    match e {
        ReadError::Eof | ReadError::Io(_) => Handshake::Done(Outcome::ClientClosed),
        ReadError::BadLength(len) => {
            worker.metrics.protocol_errors.fetch_add(1, Relaxed);
            tracing::info!(len, "{msg}");
            let _ = write_all(io, fatal(sqlstate::PROTOCOL_VIOLATION, msg)).await;
            Handshake::Done(Outcome::ProtocolError)
        }
    }
}

/// Route a CancelRequest to the session that owns the key.
async fn handle_cancel(worker: &Rc<Worker>, pid: i32, minted: i32) {
    let m = &worker.metrics;
    if !worker.bad_cancels.allow(unix_now()) {
        m.cancel("rate_limited");
        return;
    }
    match worker.shared.cancels.lookup(pid, minted) {
        Some(t) => {
            // Counted when routed; `target_error` counts the ones that then
            // could not be delivered.
            m.cancel("forwarded");
            let limit = Duration::from_millis(worker.shared.limits.connect_timeout_ms);
            let sent = monoio::time::timeout(limit, send_cancel(&t))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
            if let Err(e) = sent {
                tracing::warn!(pid, "cancel could not reach the target: {e}");
                m.cancel("target_error");
            }
        }
        None => {
            worker.bad_cancels.failed();
            if CancelRegistry::node_of(minted) != worker.shared.node_id {
                tracing::debug!(
                    pid,
                    node = CancelRegistry::node_of(minted),
                    "cancel key minted by another node"
                );
            }
            m.cancel("unknown_key");
        }
    }
}

/// Send the real CancelRequest to the target.
pub async fn send_cancel(t: &CancelTarget) -> io::Result<()> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no target address");
    for addr in t.addrs.iter() {
        match TcpStream::connect_addr(*addr).await {
            Ok(mut s) => {
                let (res, _) = s
                    .write_all(backend::cancel_request(t.pid, t.secret).to_vec())
                    .await;
                res?;
                // Wait for the server to close, so the cancel has been read.
                let (_, _) = s.read(vec![0u8; 1]).await;
                return Ok(());
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connect and log in to the target; returns its stream, raw fd and the
/// messages the client must see.
async fn open_target(
    conn: &ConnectionEntry,
    session: &SessionRequest,
    max_frame: u32,
) -> Result<(TargetIo, RawFd, TargetReady), TargetError> {
    let mut tcp = None;
    let mut last_err = None;
    for addr in conn.addrs.iter() {
        match TcpStream::connect_addr(*addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last_err = Some(format!("{addr}: {e}")),
        }
    }
    let Some(tcp) = tcp else {
        return Err(TargetError {
            code: sqlstate::UNABLE_TO_CONNECT.into(),
            message: format!(
                "could not connect to the target for connection \"{}\" ({})",
                conn.name,
                last_err.unwrap_or_default()
            ),
        });
    };
    let _ = tcp.set_nodelay(true);
    let fd = raw_fd(&tcp);
    let io_err = |e: &dyn std::fmt::Display| TargetError {
        code: sqlstate::CONNECTION_FAILURE.into(),
        message: format!("connection to the target for \"{}\" failed: {e}", conn.name),
    };
    let mut reader = PacketReader::new();
    let mut io: TargetIo = match &conn.tls {
        None => MaybeTls::Plain(tcp),
        Some(tls) => {
            let mut tcp = tcp;
            write_all(&mut tcp, backend::ssl_request().to_vec())
                .await
                .map_err(|e| io_err(&e))?;
            match reader.read_byte(&mut tcp).await {
                Ok(b'S') => {}
                Ok(_) => {
                    return Err(TargetError {
                        code: sqlstate::UNABLE_TO_CONNECT.into(),
                        message: format!(
                            "the target for connection \"{}\" does not support TLS",
                            conn.name
                        ),
                    })
                }
                Err(_) => return Err(io_err(&"closed during SSL negotiation")),
            }
            let connector = monoio_rustls::TlsConnector::from(tls.config.clone());
            let s = connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|e| io_err(&format!("TLS: {e}")))?;
            MaybeTls::Tls(Box::new(s))
        }
    };
    let mut th = TargetHandshake::new(conn);
    write_all(&mut io, th.startup_packet(&session.params))
        .await
        .map_err(|e| io_err(&e))?;
    loop {
        let (t, body) = match reader.read_tagged(&mut io, max_frame).await {
            Ok(m) => m,
            Err(ReadError::Eof) => return Err(io_err(&"the target closed the connection")),
            Err(ReadError::Io(e)) => return Err(io_err(&e)),
            Err(ReadError::BadLength(l)) => {
                return Err(io_err(&format!("invalid message length {l}")))
            }
        };
        match th.on_message(t, &body) {
            TargetStep::Send(b) => {
                write_all(&mut io, b).await.map_err(|e| io_err(&e))?;
            }
            TargetStep::Continue => {}
            TargetStep::Ready(mut r) => {
                // Anything the target sent past ReadyForQuery is relayed too.
                r.ready_for_query.extend_from_slice(reader.leftover());
                return Ok((io, fd, r));
            }
            TargetStep::Fail(e) => return Err(e),
        }
    }
}

/// State both relay directions share (same thread, no locks).
struct RelayState<'a> {
    /// Requests (Query, Sync) sent and not yet answered by ReadyForQuery.
    in_flight: Cell<u32>,
    /// Forwarding time of the last client request, waiting for its answer.
    request_added: Cell<Duration>,
    /// Snapshot generation the session's grant was last checked against.
    generation: Cell<u64>,
    session: &'a SessionRequest,
    /// Result masking (None: this session sees results unmasked).
    masker: RefCell<Option<TargetMasker>>,
}

enum End {
    /// The client sent Terminate.
    Terminated,
    /// EOF or error on the side that ended.
    Closed,
    /// A malformed or oversize frame from the client.
    ClientFrame(FrameError),
    /// A malformed or oversize frame from the target.
    TargetFrame(FrameError),
    TargetClosed,
    /// A new snapshot no longer allows this session.
    Revoked(crate::snapshot::Revoked),
}

async fn relay(
    worker: &Rc<Worker>,
    (client, client_fd): (ClientIo, RawFd),
    (target, target_fd): (TargetIo, RawFd),
    leftover: Vec<u8>,
    cancel: &CancelTarget,
    session: &SessionRequest,
) {
    let limits = &worker.shared.limits;
    let (mut cr, mut cw) = client.into_split();
    let (mut tr, mut tw) = target.into_split();
    let state = RelayState {
        in_flight: Cell::new(0),
        request_added: Cell::new(Duration::ZERO),
        generation: Cell::new(session.generation),
        session,
        masker: RefCell::new(
            session
                .masking
                .clone()
                .map(|e| TargetMasker::new(e, limits.max_frame_bytes as usize)),
        ),
    };
    let mut c_scan = FrameScanner::new(limits.max_frame_bytes);
    let mut t_scan = FrameScanner::new(limits.max_frame_bytes);
    let mut first = leftover;
    first.reserve(limits.buffer_bytes.saturating_sub(first.len()));
    let end = {
        let c2s = pump_client(worker, &mut cr, &mut tw, &mut c_scan, &state, first);
        let s2c = pump_target(worker, &mut tr, &mut cw, &mut t_scan, &state);
        monoio::select! {
            e = c2s => e,
            e = s2c => e,
        }
    };
    match end {
        End::Terminated | End::TargetClosed => {}
        End::Closed => {
            if state.in_flight.get() > 0 {
                // The client vanished mid-query: stop the work on the server.
                let t = cancel.clone();
                let limit = Duration::from_millis(worker.shared.limits.connect_timeout_ms);
                monoio::spawn(async move {
                    if let Ok(Err(e)) = monoio::time::timeout(limit, send_cancel(&t)).await {
                        tracing::debug!("cancel after client loss failed: {e}");
                    }
                });
            }
        }
        End::Revoked(why) => {
            bump(&worker.metrics.sessions_revoked, 1);
            tracing::info!(identity = %session.identity, connection = %session.connection.name, "session revoked at its next statement: {}", why.0);
            let _ = cw
                .write_all(fatal(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    &format!("permission revoked: {}", why.0),
                ))
                .await;
        }
        End::ClientFrame(e) => {
            bump(&worker.metrics.protocol_errors, 1);
            tracing::info!("client sent an invalid frame: {e}");
            let _ = cw
                .write_all(fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()))
                .await;
        }
        End::TargetFrame(e) => {
            bump(&worker.metrics.protocol_errors, 1);
            tracing::warn!("target sent an invalid frame: {e}");
            let _ = cw
                .write_all(fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    &format!("invalid frame from the target: {e}"),
                ))
                .await;
        }
    }
    shutdown_fd(target_fd);
    shutdown_fd(client_fd);
}

/// Client → target.
async fn pump_client<R: AsyncReadRent, W: AsyncWriteRent>(
    worker: &Rc<Worker>,
    rd: &mut R,
    wr: &mut W,
    scan: &mut FrameScanner,
    state: &RelayState<'_>,
    mut buf: Vec<u8>,
) -> End {
    let m = &worker.metrics;
    let max = worker.shared.limits.max_buffer_bytes;
    // Bytes read during the handshake go first.
    let mut pending = !buf.is_empty();
    loop {
        if !pending {
            let (res, b) = rd.read(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            }
        }
        pending = false;
        let n = buf.len();
        let t0 = Instant::now();
        let mut statements = 0u32;
        let mut requests = 0u32;
        let mut terminate = false;
        let mut parses = 0u32;
        {
            let mut masker = state.masker.borrow_mut();
            if let Err(e) = scan.scan(&buf, |t, len, body| {
                if let Some(m) = masker.as_mut() {
                    m.on_client_frame(t, body, body.len() == len as usize);
                }
                match t {
                    tag::QUERY => {
                        statements += 1;
                        requests += 1;
                    }
                    tag::PARSE => parses += 1,
                    tag::EXECUTE => statements += 1,
                    tag::SYNC => requests += 1,
                    tag::TERMINATE => terminate = true,
                    _ => {}
                }
            }) {
                return End::ClientFrame(e);
            }
            if statements + parses > 0 {
                // A new snapshot since this session last looked: is it still
                // allowed? One atomic load per batch of statements otherwise.
                let snap = worker.shared.snapshot.load();
                if snap.generation != state.generation.get() {
                    let s = state.session;
                    if let Err(why) = snap.recheck(
                        &s.identity,
                        &s.connection.name,
                        s.auth_method,
                        s.verifier.as_ref(),
                    ) {
                        return End::Revoked(why);
                    }
                    state.generation.set(snap.generation);
                    // The profile in force now applies from these statements on.
                    match snap.masking_for(&s.identity, &s.connection.name) {
                        None => *masker = None,
                        Some(e) => match masker.as_mut() {
                            Some(m) => m.set_engine(e),
                            None => {
                                *masker = Some(TargetMasker::new(
                                    e,
                                    worker.shared.limits.max_frame_bytes as usize,
                                ))
                            }
                        },
                    }
                }
            }
        }
        // Counted before forwarding, so a client that sees the answer also
        // sees counters that include its request.
        bump(&m.statements, statements as u64);
        bump(&m.bytes_client_to_target, n as u64);
        let (res, b) = wr.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return End::TargetClosed;
        }
        if requests > 0 {
            state.in_flight.set(state.in_flight.get() + requests);
            state.request_added.set(t0.elapsed());
        }
        if terminate {
            return End::Terminated;
        }
        if n == buf.capacity() && n < max {
            buf.reserve(n);
        }
    }
}

/// Target → client.
///
/// Without masking each read is scanned and forwarded whole. With masking
/// (`state.masker`), data frames are forwarded only once whole: a split
/// DataRow/RowDescription/CopyData/ErrorResponse stays at the front of the
/// buffer and the next read is appended after it.
async fn pump_target<R: AsyncReadRent, W: AsyncWriteRent>(
    worker: &Rc<Worker>,
    rd: &mut R,
    wr: &mut W,
    scan: &mut FrameScanner,
    state: &RelayState<'_>,
) -> End {
    let m = &worker.metrics;
    let limits = &worker.shared.limits;
    let mut buf = Vec::with_capacity(limits.buffer_bytes);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let held = buf.len();
        if held == buf.capacity() {
            buf.reserve(held.max(limits.buffer_bytes));
        }
        let cap = buf.capacity();
        let (res, slice) = rd.read(buf.slice_mut(held..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return End::TargetClosed,
            Ok(_) => {}
        }
        let t0 = Instant::now();
        // Masking decides how much of the buffer may go now.
        let (ready, rewritten) = {
            let mut masker = state.masker.borrow_mut();
            match masker.as_mut() {
                None => (buf.len(), false),
                Some(mk) => {
                    let p = mk.process(&mut buf);
                    if p.masked > 0 {
                        m.count_masked(mk);
                    }
                    if p.rewritten {
                        out.clear();
                        out.extend_from_slice(mk.out());
                    }
                    (p.ready, p.rewritten)
                }
            }
        };
        let mut ready_frames = 0u32;
        if let Err(e) = scan.scan(&buf[..ready], |t, _, _| {
            if t == tag::READY_FOR_QUERY {
                ready_frames += 1;
            }
        }) {
            return End::TargetFrame(e);
        }
        if ready == 0 {
            continue;
        }
        let sent = if rewritten { out.len() } else { ready };
        bump(&m.bytes_target_to_client, sent as u64);
        if rewritten {
            let (res, b) = wr.write_all(std::mem::take(&mut out)).await;
            out = b;
            if res.is_err() {
                return End::Closed;
            }
        } else if ready == buf.len() {
            let (res, b) = wr.write_all(buf).await;
            buf = b;
            if res.is_err() {
                return End::Closed;
            }
        } else {
            let (res, slice) = wr.write_all(buf.slice(0..ready)).await;
            buf = slice.into_inner();
            if res.is_err() {
                return End::Closed;
            }
        }
        // Keep the incomplete frame (if any) at the front.
        if ready == buf.len() {
            buf.clear();
        } else {
            buf.drain(..ready);
        }
        if ready_frames > 0 {
            state
                .in_flight
                .set(state.in_flight.get().saturating_sub(ready_frames));
            let added = state.request_added.get() + t0.elapsed();
            m.record_added(added.as_nanos() as u64);
        }
        if ready == buf.capacity() && buf.capacity() < limits.max_buffer_bytes {
            buf.reserve(ready);
        }
    }
}
