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

use super::catalog::Taken;
use super::io::{
    raw_fd, shutdown_fd, write_all, ClientIo, MaybeTls, PacketReader, ReadError, TargetIo,
};
use super::{Shared, Worker};
use crate::audit::{self, Clock, CoreAudit, Tracker, WhenFull};
use crate::auth::cert::ClientCert;
use crate::cancel::{CancelRegistry, CancelTarget};
use crate::metrics::{bump, Outcome};
use crate::protocol::backend::{self, Severity};
use crate::protocol::frame::{FrameError, FrameScanner, Part};
use crate::protocol::startup::{self, StartupPacket};
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

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Now, for the audit tracker.
fn audit_clock() -> Clock {
    audit_clock_at(Instant::now())
}

/// The audit clock at `now` (an `Instant` the caller already took). Wall
/// time is derived from the monotonic clock and a per-thread anchor read
/// again every 100 ms, so a statement costs no extra clock reads (each is a
/// system call on some virtual machines) and a step of the wall clock shows
/// within 100 ms.
fn audit_clock_at(now: Instant) -> Clock {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, i64)>> = const { Cell::new(None) };
    }
    let base = *BASE.get_or_init(Instant::now);
    let unix_ns = ANCHOR.with(|a| match a.get() {
        Some((at, unix)) if now >= at && now - at < Duration::from_millis(100) => {
            unix + (now - at).as_nanos() as i64
        }
        _ => {
            let unix = unix_nanos();
            a.set(Some((now, unix)));
            unix
        }
    });
    Clock {
        mono_ns: now.saturating_duration_since(base).as_nanos() as u64,
        unix_ns,
    }
}

/// A session's audit state (audit on).
struct SessionAudit<'w> {
    core: &'w CoreAudit,
    tracker: RefCell<Tracker>,
    /// Identity, session and connection fields, encoded once.
    prefix: Vec<u8>,
    /// Snapshot version the session last checked its grant against.
    version: Cell<i64>,
    started: Clock,
}

impl SessionAudit<'_> {
    fn record(&self, kind: proto::AuditKind, at: Clock) -> proto::AuditRecord {
        proto::AuditRecord {
            metadata: Some(proto::AuditMetadata {
                kind: kind as i32,
                time_unix_nanos: at.unix_ns,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn session_audit<'w>(
    core: &'w CoreAudit,
    worker: &Worker,
    session: &SessionRequest,
    peer: SocketAddr,
    tls: bool,
) -> SessionAudit<'w> {
    let snap = worker.shared.snapshot.load();
    let groups = snap
        .identities
        .get(&session.identity)
        .map(|i| i.groups.clone())
        .unwrap_or_default();
    let method = match (session.auth_method, session.cleartext_key) {
        ("jwt", _) => proto::AuthMethod::Jwt,
        ("client_cert", _) => proto::AuthMethod::ClientCert,
        (_, true) => proto::AuthMethod::CleartextApiKey,
        _ => proto::AuthMethod::ScramApiKey,
    };
    let app = session
        .params
        .iter()
        .find(|(k, _)| k == b"application_name")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let c = &session.connection;
    let prefix = audit::record::session_fields(
        &proto::AuditIdentity {
            name: session.identity.clone(),
            groups,
            auth_method: method as i32,
            issuer: session.jwt_issuer.clone().unwrap_or_default(),
        },
        &proto::AuditSession {
            id: core.session_id(),
            client_address: peer.to_string(),
            application_name: app,
            tls,
        },
        &proto::AuditConnection {
            name: c.name.clone(),
            target: format!("{}:{}", c.host, c.port),
            database: c.database.clone(),
            role: c.user.clone(),
        },
    );
    SessionAudit {
        core,
        tracker: RefCell::new(core.tracker()),
        prefix,
        version: Cell::new(snap.version as i64),
        started: audit_clock(),
    }
}

/// Store the session's finished statement records in the core's ring,
/// before the bytes that answered them go on. Fail closed: wait for room
/// (the client's answer waits with them). Fail open: drop what does not
/// fit, counted.
async fn store_records(a: &SessionAudit<'_>) {
    loop {
        let all = {
            let mut t = a.tracker.borrow_mut();
            a.core.drain_tracker(&mut t, &a.prefix, a.version.get())
        };
        if all {
            return;
        }
        match a.core.when_full() {
            WhenFull::FailOpen => {
                a.core.drop_tracker_records(&mut a.tracker.borrow_mut());
                return;
            }
            WhenFull::FailClosed => monoio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Write a session's last message (a FATAL; none when empty) and end the
/// stream: a TLS client gets its close_notify, as the server's own
/// sessions end (psql reported "SSL SYSCALL error: EOF detected" after
/// the error). Not after a write that did not finish in time (a client
/// that does not read): the stream is left as it is, and the socket is
/// closed so.
async fn write_last<W: AsyncWriteRent>(io: &mut W, bytes: Vec<u8>) {
    let sent = monoio::time::timeout(Duration::from_secs(1), write_all(io, bytes)).await;
    if matches!(sent, Ok(Ok(_))) {
        let _ = monoio::time::timeout(Duration::from_millis(200), io.shutdown()).await;
    }
}

/// Close in the audit trail a session whose start was recorded but that
/// ended before the relay began (an unsafe client encoding, a failed
/// catalog read, a client gone before the greeting): its SessionEnd,
/// with the error the client got.
async fn end_before_relay(a: Option<&SessionAudit<'_>>, code: &str, message: &str) {
    let Some(a) = a else { return };
    let now = audit_clock();
    let mut rec = a.record(proto::AuditKind::SessionEnd, now);
    rec.outcome = Some(proto::AuditOutcome {
        decision: proto::Decision::Allow as i32,
        duration_nanos: now.mono_ns.saturating_sub(a.started.mono_ns),
        sqlstate: code.into(),
        error_message: message.into(),
        ..Default::default()
    });
    store_record(a, &mut rec, Duration::from_secs(5)).await;
}

/// Store one session-level record; fail closed waits up to `limit` for
/// room. Returns whether it was stored.
async fn store_record(a: &SessionAudit<'_>, rec: &mut proto::AuditRecord, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if a.core.push_record(rec, &a.prefix, a.version.get()).is_ok() {
            return true;
        }
        if a.core.when_full() == WhenFull::FailOpen || Instant::now() >= deadline {
            a.core.count_unaudited(1);
            return false;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Fail closed, with records unable to be kept: let the statements
/// already sent finish (their records use the ring's headroom), wait a
/// little for the backlog to drain, then refuse. True: go ahead.
async fn admit(a: &SessionAudit<'_>) -> bool {
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        if !a.core.should_refuse() {
            return true;
        }
        if a.tracker.borrow().in_flight() == 0 && Instant::now() >= deadline {
            return false;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether this read holds a message that runs or prepares a statement.
fn has_statement(scan: &FrameScanner, buf: &[u8]) -> bool {
    let mut probe = scan.clone();
    let mut found = false;
    let _ = probe.scan(buf, |t, _, _| {
        found |= matches!(t, tag::QUERY | tag::PARSE | tag::BIND | tag::EXECUTE | b'F');
    });
    found
}

/// How the handshake phase ended.
enum Handshake {
    /// The client's stream, its session, bytes read past the handshake,
    /// and its address (the peer's, or a trusted load balancer's PROXY
    /// protocol header's).
    Ready(ClientIo, Box<SessionRequest>, Vec<u8>, SocketAddr),
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

async fn serve_inner(worker: &Rc<Worker>, tcp: TcpStream, mut peer: SocketAddr) -> Option<Outcome> {
    let shared = &worker.shared;
    let _ = tcp.set_nodelay(true);
    let client_fd = raw_fd(&tcp);
    let limits = &shared.limits;
    let hs_deadline = Duration::from_millis(limits.handshake_timeout_ms);
    let handshake = monoio::time::timeout(hs_deadline, client_handshake(worker, tcp, peer)).await;
    let (mut client, session, leftover) = match handshake {
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return Some(Outcome::Timeout);
        }
        Ok(Handshake::Done(o)) => return Some(o),
        Ok(Handshake::Ready(c, s, l, client)) => {
            peer = client;
            (c, s, l)
        }
    };

    let tls = matches!(client, MaybeTls::Tls(_));
    let audit = match &worker.audit {
        Some(core) if core.should_refuse() && !admit_session(core).await => {
            core.count_refused();
            write_last(
                &mut client,
                fatal(
                    audit::AUDIT_UNAVAILABLE_SQLSTATE,
                    audit::AuditGate::refusal_message(),
                ),
            )
            .await;
            return Some(Outcome::AuditUnavailable);
        }
        Some(core) => Some(session_audit(core, worker, &session, peer, tls)),
        None => None,
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
    let (mut target, target_fd, mut ready) = match connect {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%peer, identity = %session.identity, connection = %conn.name, code = %e.code, "target unavailable: {}", e.message);
            write_last(&mut client, fatal(&e.code, &e.message)).await;
            return Some(Outcome::TargetUnavailable);
        }
    };

    let cancel_target = CancelTarget {
        addrs: conn.addrs.clone(),
        pid: ready.pid,
        secret: ready.secret,
    };
    if let Some(a) = &audit {
        let mut rec = a.record(proto::AuditKind::SessionStart, a.started);
        rec.outcome = Some(proto::AuditOutcome {
            decision: proto::Decision::Allow as i32,
            ..Default::default()
        });
        if !store_record(a, &mut rec, Duration::from_millis(200)).await
            && a.core.when_full() == WhenFull::FailClosed
        {
            a.core.count_refused();
            shutdown_fd(target_fd);
            write_last(
                &mut client,
                fatal(
                    audit::AUDIT_UNAVAILABLE_SQLSTATE,
                    audit::AuditGate::refusal_message(),
                ),
            )
            .await;
            return Some(Outcome::AuditUnavailable);
        }
    }
    // The client encoding the target settled on (startup parameter, PGOPTIONS,
    // a role or database default): masking reads ASCII-safe encodings only.
    let encoding = ready.client_encoding.take();
    if let Some(enc) = encoding.as_deref() {
        if session.masking.is_some() && !crate::mask::ascii_safe_encoding(enc) {
            shutdown_fd(target_fd);
            let msg = unsafe_encoding_message(&String::from_utf8_lossy(enc));
            tracing::info!(%peer, identity = %session.identity, connection = %conn.name, "{msg}");
            write_last(&mut client, fatal(sqlstate::FEATURE_NOT_SUPPORTED, &msg)).await;
            end_before_relay(audit.as_ref(), sqlstate::FEATURE_NOT_SUPPORTED, &msg).await;
            return Some(Outcome::Rejected);
        }
    }
    // Where result columns come from, so column rules follow aliases: read
    // from the target's catalog now, before the client's first statement
    // (or this worker's recent read), for the session's profile, or the
    // connection's for a session that sees results unmasked (a new snapshot
    // may mask it). Only on a connection that sent nothing past its
    // ReadyForQuery (as PostgreSQL does).
    let origins = match session.masking.as_ref().or(conn.masking.as_ref()) {
        Some(engine) if ready.ready_for_query.len() == 6 => {
            match super::catalog::origins(
                worker,
                &conn,
                engine,
                &mut target,
                &mut ready.ready_for_query,
                ready.server_major,
            )
            .await
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(%peer, identity = %session.identity, connection = %conn.name, code = %e.code, "{}", e.message);
                    shutdown_fd(target_fd);
                    write_last(&mut client, fatal(&e.code, &e.message)).await;
                    end_before_relay(audit.as_ref(), &e.code, &e.message).await;
                    return Some(Outcome::TargetUnavailable);
                }
            }
        }
        _ => None,
    };
    // (The login's ParameterStatus and notices pass no masker.)
    if let Some(engine) = session.masking.as_ref() {
        let mut hits = crate::mask::Hits::new();
        crate::session::masker::mask_login_messages(engine, &mut ready.forward, &mut hits);
        if hits.total() > 0 {
            worker.metrics.count_hits(engine, &mut hits);
        }
    }
    let guard = shared.cancels.register(cancel_target.clone());
    let mut hello = Vec::with_capacity(ready.forward.len() + 64);
    backend::auth_ok(&mut hello);
    hello.extend_from_slice(&ready.forward);
    backend::backend_key_data(&mut hello, ready.pid, guard.minted());
    hello.extend_from_slice(&ready.ready_for_query);
    if write_all(&mut client, hello).await.is_err() {
        shutdown_fd(target_fd);
        end_before_relay(audit.as_ref(), "", "client closed before the session began").await;
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
        audit.as_ref(),
        encoding.as_deref(),
        ready.time_zone.as_deref(),
        ready.standard_conforming_strings.as_deref(),
        origins,
        ready.server_major,
    )
    .await;
    worker.metrics.sessions_open.fetch_sub(1, Relaxed);
    drop(guard);
    None
}

fn unsafe_encoding_message(enc: &str) -> String {
    format!(
        "client_encoding {enc} cannot be used while results are masked: its multi-byte characters can contain ASCII bytes; use UTF8"
    )
}

/// Why every new session is refused now: the node is draining (57P01), or
/// has no snapshot yet (57P03). Asked when a startup packet arrives (not at
/// accept), and answered then, after TLS when the client asked for it, as
/// PostgreSQL refuses them: a TLS client reads the error too. An
/// SSLRequest and a CancelRequest still go through (a cancel may stop a
/// query that a drain waits on).
fn refusal(shared: &Shared) -> Option<(&'static str, &'static str, Outcome)> {
    if shared.draining.load(Relaxed) {
        Some((
            sqlstate::ADMIN_SHUTDOWN,
            "the gateway is shutting down",
            Outcome::Shutdown,
        ))
    } else if !shared.snapshot_ready.load(Relaxed) {
        Some((
            sqlstate::CANNOT_CONNECT_NOW,
            "the gateway is starting: no configuration snapshot from the control plane yet",
            Outcome::NotReady,
        ))
    } else {
        None
    }
}

/// Run the client handshake: TLS upgrade, authentication, authorization
/// (a session refused by [`refusal`] once its startup packet is read).
async fn client_handshake(worker: &Rc<Worker>, tcp: TcpStream, mut peer: SocketAddr) -> Handshake {
    let shared = &worker.shared;
    let m = &worker.metrics;
    let mut hs = ClientHandshake::new(
        shared.snapshot.load_full(),
        shared.tls.is_some(),
        shared.tls_required,
    );
    if shared.tls.as_ref().is_some_and(|t| t.client_certificates()) {
        hs.client_certificates_asked();
    }
    let mut reader = PacketReader::new();
    let mut io: ClientIo = MaybeTls::Plain(tcp);
    if let Some(policy) = &shared.proxy {
        match super::proxy::client_address(&mut reader, &mut io, policy, peer).await {
            Ok(Ok((client, result))) => {
                if result != "none" {
                    m.proxy_header(result);
                }
                peer = client;
            }
            Ok(Err(refusal)) => {
                m.proxy_header(refusal.result());
                // (Any peer that reaches the port can cause these: a warning
                // at most every 10 s per core, the rest at debug.)
                if super::proxy::warn_now(Instant::now()) {
                    tracing::warn!(%peer, "connection refused: {refusal} (further refusals on this core within 10 s are logged at debug; sluice_proxy_protocol_headers_total counts them all)");
                } else {
                    tracing::debug!(%peer, "connection refused: {refusal}");
                }
                let reply = fatal(sqlstate::PROTOCOL_VIOLATION, &refusal.to_string());
                // (On record as a refused connection, under the peer's own
                // address: a header from outside `trusted` may be someone
                // choosing the address they would be audited under.)
                if let Some(a) = &worker.audit {
                    audit_auth_failure(worker, a, &hs, peer, "proxy_protocol", &reply);
                }
                write_last(&mut io, reply).await;
                return Handshake::Done(Outcome::ProtocolError);
            }
            Err(e) => {
                return read_failed(worker, &mut io, e, "invalid PROXY protocol header").await
            }
        }
    }
    loop {
        let step = if hs.expects_untagged() {
            match reader
                .read_untagged(&mut io, shared.limits.max_startup_packet_bytes)
                .await
            {
                Ok(p) => {
                    if matches!(startup::parse(&p), Ok(StartupPacket::Startup(_))) {
                        if let Some((code, message, outcome)) = refusal(shared) {
                            write_last(&mut io, fatal(code, message)).await;
                            return Handshake::Done(outcome);
                        }
                    }
                    hs.on_untagged(&p)
                }
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
                        write_last(&mut io, fatal(sqlstate::INTERNAL_ERROR, "no randomness")).await;
                        return Handshake::Done(Outcome::ProtocolError);
                    }
                    hs.on_message(t, &body, &nonce, unix_now())
                }
                Err(ReadError::BadLength(len)) => {
                    m.protocol_errors.fetch_add(1, Relaxed);
                    hs.oversize_message(len)
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
                let (acceptor, peer_cert, end_point) = shared
                    .tls
                    .as_ref()
                    .expect("StartTls only when TLS is configured")
                    .acceptor();
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        io = MaybeTls::Tls(Box::new(tls));
                        hs.tls_established();
                        if let Some(e) = end_point {
                            hs.server_end_point(e);
                        }
                        // (A certificate the client CA verified, if it sent one.)
                        let der = peer_cert
                            .and_then(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take());
                        if let Some(c) = der
                            .and_then(Result::ok)
                            .and_then(|d| ClientCert::from_der(&d))
                        {
                            hs.client_certificate(c);
                        }
                    }
                    Err(e) => {
                        let refused = peer_cert
                            .and_then(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take())
                            .and_then(Result::err);
                        let Some(why) = refused else {
                            tracing::debug!("client TLS handshake failed: {e}");
                            return Handshake::Done(Outcome::TlsError);
                        };
                        // A certificate the client CA does not vouch for (another CA's,
                        // expired, not for client auth…) is an authentication failure;
                        // the client got a TLS alert, the record says 28000.
                        let reason = match &why {
                            rustls::Error::InvalidCertificate(
                                rustls::CertificateError::Revoked,
                            ) => "revoked_certificate",
                            rustls::Error::InvalidCertificate(
                                rustls::CertificateError::UnknownRevocationStatus,
                            ) => "unknown_revocation_status",
                            _ => "invalid_certificate",
                        };
                        let message =
                            format!("client certificate refused in the TLS handshake: {why}");
                        m.auth_failure(reason);
                        if let Some(a) = &worker.audit {
                            let reply = fatal(sqlstate::INVALID_AUTHORIZATION, &message);
                            audit_auth_failure(worker, a, &hs, peer, reason, &reply);
                        }
                        tracing::info!(%peer, reason, "connection refused: {message}");
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
                    if let Some(a) = &worker.audit {
                        audit_auth_failure(worker, a, &hs, peer, r, &reply);
                    }
                }
                tracing::info!(identity = %hs.identity(), reason = auth_reason.unwrap_or("-"), "connection refused: {log}");
                write_last(&mut io, reply).await;
                return Handshake::Done(outcome);
            }
            Step::Ready { reply, session } => {
                if write_all(&mut io, reply).await.is_err() {
                    return Handshake::Done(Outcome::ClientClosed);
                }
                let leftover = reader.leftover().to_vec();
                return Handshake::Ready(io, Box::new(session), leftover, peer);
            }
        }
    }
}

/// An AUTH_FAILURE record: who was attempted, from where, and why. Nothing
/// ran, so a full ring only counts the record as lost.
fn audit_auth_failure(
    worker: &Worker,
    core: &CoreAudit,
    hs: &ClientHandshake,
    peer: SocketAddr,
    reason: &str,
    reply: &[u8],
) {
    if !core.admit_failure(Instant::now()) {
        return;
    }
    let f = backend::parse_error_fields(reply.get(5..).unwrap_or_default());
    let mut rec = proto::AuditRecord {
        metadata: Some(proto::AuditMetadata {
            kind: proto::AuditKind::AuthFailure as i32,
            time_unix_nanos: unix_nanos(),
            ..Default::default()
        }),
        identity: Some(proto::AuditIdentity {
            name: hs.identity().to_string(),
            ..Default::default()
        }),
        session: Some(proto::AuditSession {
            client_address: peer.to_string(),
            tls: hs.tls_active(),
            ..Default::default()
        }),
        connection: Some(proto::AuditConnection {
            name: hs.connection().to_string(),
            ..Default::default()
        }),
        outcome: Some(proto::AuditOutcome {
            decision: proto::Decision::Deny as i32,
            sqlstate: f.code,
            error_message: format!("{reason}: {}", f.message),
            ..Default::default()
        }),
        ..Default::default()
    };
    let version = worker.shared.snapshot.load().version as i64;
    if core.push_record(&mut rec, &[], version).is_err() {
        core.count_unaudited(1);
    }
}

/// A new session while records cannot be kept (fail closed): wait a
/// little for the backlog to drain. True: go ahead.
async fn admit_session(core: &CoreAudit) -> bool {
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
        if !core.should_refuse() {
            return true;
        }
    }
    false
}

async fn read_failed(worker: &Rc<Worker>, io: &mut ClientIo, e: ReadError, msg: &str) -> Handshake {
    match e {
        ReadError::Eof | ReadError::Io(_) => Handshake::Done(Outcome::ClientClosed),
        ReadError::BadLength(len) => {
            worker.metrics.protocol_errors.fetch_add(1, Relaxed);
            tracing::info!(len, "{msg}");
            write_last(io, fatal(sqlstate::PROTOCOL_VIOLATION, msg)).await;
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
    /// A write to the client is under way (see `relay`'s end: one the end
    /// cuts short leaves a TLS stream that must not be written again).
    client_writing: Cell<bool>,
    /// Forwarding time of the last client request, waiting for its answer.
    request_added: Cell<Duration>,
    /// Snapshot generation the session's grant was last checked against.
    generation: Cell<u64>,
    /// Generation of the revocation lists its client certificate was last
    /// checked against (0: not yet; see `cert_refused`).
    crl_generation: Cell<u64>,
    session: &'a SessionRequest,
    /// Result masking (None: this session sees results unmasked).
    masker: RefCell<Option<TargetMasker>>,
    audit: Option<&'a SessionAudit<'a>>,
    /// Bytes sent to the client in this session.
    bytes_to_client: Cell<u64>,
    /// The target's transaction status at its last ReadyForQuery.
    txn: Cell<u8>,
    /// The client has an unnamed prepared statement it may bind again
    /// (a simple Query would destroy it).
    unnamed: Cell<bool>,
    /// The client may still use the unnamed portal (bound in this
    /// transaction block; a simple Query would destroy it).
    unnamed_portal: Cell<bool>,
    /// Nothing from the target is held or half forwarded (a session's own
    /// catalog read starts its answers at a frame boundary).
    target_idle: Cell<bool>,
    /// A ReadyForQuery whose status byte is still to come.
    z_split: Cell<bool>,
    /// Wakes the client pump when its own catalog read's column query is
    /// answered (or the read is over).
    catalog_step: tokio::sync::Notify,
    /// The session's own catalog reads (see `catalog::SessionCatalog`).
    catalog: RefCell<super::catalog::SessionCatalog>,
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
    /// The JWT or client certificate that opened the session expired
    /// (`SessionRequest::expired_message`, sent with 28000: the
    /// authorization the session rests on no longer holds, as a login with
    /// the token gets 28P01 `JWT expired`).
    TokenExpired(&'static str),
    /// A reloaded revocation list no longer accepts the client certificate
    /// that opened the session (why, sent with 28000).
    CertRefused(&'static str),
    /// A statement refused: its audit record could not be kept.
    AuditRefused,
    /// The client encoding changed to one masking cannot read.
    UnsafeEncoding(String),
    /// The target's answers to the session's own catalog read were not
    /// where they were expected (the session's account of requests and
    /// answers went wrong): nothing more of it can be told apart.
    CatalogMisaligned,
    /// The masker cannot tell which request the target's answers belong
    /// to (`TargetMasker::adrift`).
    MaskerAdrift,
}

/// Why the client certificate of a certificate session is no longer
/// accepted, if revocation lists loaded since it was last checked refuse
/// it (its handshake checked the lists of then; lists loaded since are
/// checked at its first statement and after each reload). One atomic load
/// per batch of a certificate session's statements otherwise.
fn cert_refused(worker: &Worker, state: &RelayState) -> Option<&'static str> {
    let cert = state.session.client_cert.as_deref()?;
    let tls = worker.shared.tls.as_ref()?;
    let lists = tls.revocations.load();
    if lists.generation == state.crl_generation.get() {
        return None;
    }
    let why = lists
        .refuses(&cert.issuer, &cert.serial)
        .map(|r| r.session_message());
    state.crl_generation.set(lists.generation);
    why
}

/// What the client is told when a session's own catalog read is answered
/// out of place ([`End::CatalogMisaligned`]).
const MISALIGNED: &str = "the target's answers no longer line up with this session's requests (a catalog read of the gateway's was answered out of place); the session ends";

/// What the client is told when the masker cannot pair the target's
/// answers with its requests ([`End::MaskerAdrift`]).
const ADRIFT: &str = "the target's answers can no longer be paired with this session's requests (Syncs sent during a COPY FROM STDIN that failed); the session ends";

// The session's parts, each borrowed separately by the two pumps.
#[allow(clippy::too_many_arguments)]
async fn relay(
    worker: &Rc<Worker>,
    (client, client_fd): (ClientIo, RawFd),
    (target, target_fd): (TargetIo, RawFd),
    leftover: Vec<u8>,
    cancel: &CancelTarget,
    session: &SessionRequest,
    audit: Option<&SessionAudit<'_>>,
    // The client encoding, TimeZone and standard_conforming_strings the
    // target reported at startup.
    client_encoding: Option<&[u8]>,
    time_zone: Option<&[u8]>,
    standard_strings: Option<&[u8]>,
    // Where result columns come from (see `catalog`).
    origins: Option<std::sync::Arc<crate::mask::ColumnOrigins>>,
    server_major: Option<u32>,
) {
    let limits = &worker.shared.limits;
    let (mut cr, mut cw) = client.into_split();
    let (mut tr, mut tw) = target.into_split();
    let state = RelayState {
        in_flight: Cell::new(0),
        client_writing: Cell::new(false),
        request_added: Cell::new(Duration::ZERO),
        generation: Cell::new(session.generation),
        crl_generation: Cell::new(0),
        session,
        masker: RefCell::new(Some({
            let mut m =
                TargetMasker::for_session(session.masking.clone(), limits.max_frame_bytes as usize);
            if let Some(enc) = client_encoding {
                m.set_client_encoding(enc);
            }
            if let Some(tz) = time_zone {
                m.set_time_zone(tz);
            }
            if let Some(v) = standard_strings {
                m.set_standard_conforming_strings(v);
            }
            m.set_origins(origins);
            m.follow_schema(limits.column_origins);
            if let Some(a) = audit {
                // Masked counts per statement, and masked SQL text and
                // parameters, for the records.
                m.record_hits(true);
                a.tracker.borrow_mut().set_masking(m.engine().clone());
            }
            m
        })),
        audit,
        bytes_to_client: Cell::new(0),
        txn: Cell::new(b'I'),
        unnamed: Cell::new(false),
        unnamed_portal: Cell::new(false),
        target_idle: Cell::new(true),
        z_split: Cell::new(false),
        catalog_step: tokio::sync::Notify::new(),
        catalog: RefCell::new(super::catalog::SessionCatalog::new(
            worker,
            &session.connection,
            session
                .masking
                .as_ref()
                .or(session.connection.masking.as_ref()),
            server_major,
        )),
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
    let reason: std::borrow::Cow<'static, str> = match &end {
        End::Terminated => "the client ended the session".into(),
        End::TargetClosed => "the target closed the connection".into(),
        End::Closed => "the client closed the connection".into(),
        End::ClientFrame(e) => format!("invalid frame from the client: {e}").into(),
        End::TargetFrame(e) => format!("invalid frame from the target: {e}").into(),
        End::Revoked(why) => format!("permission revoked: {}", why.0).into(),
        End::TokenExpired(why) | End::CertRefused(why) => (*why).into(),
        End::AuditRefused => "statement refused: audit records cannot be stored".into(),
        End::UnsafeEncoding(enc) => unsafe_encoding_message(enc).into(),
        End::CatalogMisaligned => MISALIGNED.into(),
        End::MaskerAdrift => ADRIFT.into(),
    };
    let client_gone = matches!(end, End::Closed);
    // The session's last message to the client (a FATAL), if any.
    let mut last = None;
    match end {
        End::Terminated | End::TargetClosed => {}
        End::AuditRefused => {
            if let Some(a) = audit {
                a.core.count_refused();
            }
            tracing::info!(identity = %session.identity, connection = %session.connection.name, "statement refused: audit records cannot be stored");
            last = Some(fatal(
                audit::AUDIT_UNAVAILABLE_SQLSTATE,
                audit::AuditGate::refusal_message(),
            ));
        }
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
        End::UnsafeEncoding(enc) => {
            let msg = unsafe_encoding_message(&enc);
            tracing::info!(identity = %session.identity, connection = %session.connection.name, "{msg}");
            last = Some(fatal(sqlstate::FEATURE_NOT_SUPPORTED, &msg));
        }
        End::Revoked(why) => {
            bump(&worker.metrics.sessions_revoked, 1);
            tracing::info!(identity = %session.identity, connection = %session.connection.name, "session revoked at its next statement: {}", why.0);
            last = Some(fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                &format!("permission revoked: {}", why.0),
            ));
        }
        End::TokenExpired(why) => {
            bump(&worker.metrics.sessions_expired, 1);
            tracing::info!(identity = %session.identity, connection = %session.connection.name, method = session.auth_method, "session ended at its first statement after its credential expired");
            last = Some(fatal(sqlstate::INVALID_AUTHORIZATION, why));
        }
        End::CertRefused(why) => {
            bump(&worker.metrics.sessions_revoked, 1);
            tracing::info!(identity = %session.identity, connection = %session.connection.name, "session ended at its next statement: {why}");
            last = Some(fatal(sqlstate::INVALID_AUTHORIZATION, why));
        }
        End::ClientFrame(e) => {
            bump(&worker.metrics.protocol_errors, 1);
            tracing::info!("client sent an invalid frame: {e}");
            last = Some(fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()));
        }
        End::CatalogMisaligned => {
            bump(&worker.metrics.protocol_errors, 1);
            tracing::warn!(identity = %session.identity, connection = %session.connection.name, "{MISALIGNED}");
            last = Some(fatal(sqlstate::PROTOCOL_VIOLATION, MISALIGNED));
        }
        End::MaskerAdrift => {
            bump(&worker.metrics.protocol_errors, 1);
            tracing::warn!(identity = %session.identity, connection = %session.connection.name, "{ADRIFT}");
            last = Some(fatal(sqlstate::PROTOCOL_VIOLATION, ADRIFT));
        }
        End::TargetFrame(e) => {
            bump(&worker.metrics.protocol_errors, 1);
            tracing::warn!("target sent an invalid frame: {e}");
            last = Some(fatal(
                sqlstate::PROTOCOL_VIOLATION,
                &format!("invalid frame from the target: {e}"),
            ));
        }
    }
    shutdown_fd(target_fd);
    // The last message and the close_notify (`write_last`). Not after a
    // write to the client that this end cut short (the other direction
    // ended first): a TLS stream is left without its buffer then, and
    // writing to it again panics. The socket is closed as it is then.
    if !client_gone && !state.client_writing.get() {
        write_last(&mut cw, last.unwrap_or_default()).await;
    }
    shutdown_fd(client_fd);
    if let Some(a) = audit {
        let now = audit_clock();
        a.tracker.borrow_mut().finish(now);
        store_records(a).await;
        let mut rec = a.record(proto::AuditKind::SessionEnd, now);
        rec.outcome = Some(proto::AuditOutcome {
            decision: proto::Decision::Allow as i32,
            bytes: state.bytes_to_client.get(),
            duration_nanos: now.mono_ns.saturating_sub(a.started.mono_ns),
            error_message: reason.into_owned(),
            ..Default::default()
        });
        store_record(a, &mut rec, Duration::from_secs(5)).await;
    }
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
        // Fail closed: a statement whose record could not be kept is not
        // forwarded (checked before anything of this read is).
        if let Some(a) = state.audit {
            if a.core.should_refuse() && has_statement(scan, &buf) && !admit(a).await {
                return End::AuditRefused;
            }
        }
        let mut statements = 0u32;
        let mut requests = 0u32;
        let mut terminate = false;
        let mut parses = 0u32;
        let mut calls = 0u32;
        let now = if state.audit.is_some() {
            audit_clock_at(t0)
        } else {
            Clock::default()
        };
        // The profile of a new snapshot applies from this read's statements
        // on, as the masker and the audit tracker see them (the masker
        // decides how to treat a COPY as it sees the request). Whether the
        // session may go on is checked below, once they are counted.
        let snap = worker.shared.snapshot.load();
        if snap.generation != state.generation.get() {
            if let Some(mk) = state.masker.borrow_mut().as_mut() {
                let s = state.session;
                mk.set_engine(snap.masking_for(&s.identity, &s.connection.name));
                if let Some(a) = state.audit {
                    a.tracker.borrow_mut().set_masking(mk.engine().clone());
                }
            }
        }
        drop(snap);
        let mut tracker = state.audit.map(|a| a.tracker.borrow_mut());
        let mark = tracker.as_ref().map_or(0, |t| t.mark());
        let mut injections = Vec::new();
        // Whether an own catalog read may go before this read's requests
        // (`own_catalog_read`): nothing owed nor an extended-protocol batch
        // open (the masker's account of requests and answers), both
        // streams at a frame boundary.
        let mut first = None;
        let quiet = scan.at_boundary()
            && state.target_idle.get()
            && state.masker.borrow().as_ref().is_some_and(|m| m.quiet());
        let unnamed = (state.unnamed.get(), state.unnamed_portal.get());
        let scanned = {
            let mut masker = state.masker.borrow_mut();
            let base = buf.as_ptr() as usize;
            let r = scan.scan_parts(&buf, |part| {
                if let Part::Start { tag: t, body, .. } = part {
                    if first.is_none() {
                        first = Some((t, body.first() == Some(&0)));
                    }
                    // (A name not in this read yet counts as empty.)
                    let empty = body.first().is_none_or(|&b| b == 0);
                    match t {
                        tag::QUERY => {
                            state.unnamed.set(false);
                            state.unnamed_portal.set(false);
                        }
                        b'P' if empty => state.unnamed.set(true),
                        b'B' if empty => state.unnamed_portal.set(true),
                        _ => {}
                    }
                }
                if let Part::Start {
                    tag: t, body, done, ..
                } = part
                {
                    if let Some(mk) = masker.as_mut() {
                        // Where the frame starts in this read (None: its
                        // header began in the last one).
                        let at = (body.as_ptr() as usize - base).checked_sub(5);
                        mk.on_client_frame(t, body, done, at);
                    }
                    match t {
                        tag::QUERY => {
                            statements += 1;
                            requests += 1;
                        }
                        tag::PARSE => parses += 1,
                        tag::EXECUTE => statements += 1,
                        tag::SYNC => requests += 1,
                        // (A FunctionCall is answered by a ReadyForQuery.
                        // It runs a function on the target, which can run
                        // any SQL: a revocation stops it as a statement.)
                        b'F' => {
                            requests += 1;
                            calls += 1;
                        }
                        // A Bind plans its statement, and planning runs
                        // functions (IMMUTABLE ones are folded): checked
                        // like a statement too.
                        tag::BIND => calls += 1,
                        tag::TERMINATE => terminate = true,
                        _ => {}
                    }
                }
                if let (Part::More { body, done }, Some(mk)) = (&part, masker.as_mut()) {
                    mk.on_client_more(body, *done);
                }
                if let Some(t) = tracker.as_mut() {
                    t.client_part(part, now);
                }
            });
            if let Some(mk) = masker.as_mut() {
                injections = mk.take_injections();
            }
            r
        };
        drop(tracker);
        if let Err(e) = scanned {
            return End::ClientFrame(e);
        }
        if statements + parses + calls > 0 {
            // A JWT or certificate session ends at its first statement once
            // its token or certificate has expired (no timer: one idle past
            // then ends at its next one). The wall clock as the audit clock derives it from `t0` (no
            // clock read of its own; one per core per 100 ms at most).
            let expired = state.session.valid_until.is_some() && {
                let unix_ns = if state.audit.is_some() {
                    now.unix_ns
                } else {
                    audit_clock_at(t0).unix_ns
                };
                state
                    .session
                    .token_expired(u64::try_from(unix_ns / 1_000_000_000).unwrap_or(0))
            };
            // A certificate session, and revocation lists loaded since it
            // last looked: is its certificate still accepted?
            let ended = if expired {
                let why = state.session.expired_message();
                Some((why, End::TokenExpired(why)))
            } else {
                cert_refused(worker, state).map(|why| (why, End::CertRefused(why)))
            };
            if let Some((why, end)) = ended {
                if let Some(a) = state.audit {
                    // As for a revocation: the statements of this read
                    // were never sent.
                    a.tracker.borrow_mut().refuse_since(
                        mark,
                        sqlstate::INVALID_AUTHORIZATION,
                        why,
                        audit_clock(),
                    );
                    store_records(a).await;
                }
                return end;
            }
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
                    s.jwt_provider.as_deref().zip(s.jwt_issuer.as_deref()),
                    s.client_cert.as_deref(),
                ) {
                    if let Some(a) = state.audit {
                        // The statements of this read were never sent;
                        // their records name the snapshot that refused them.
                        a.version.set(snap.version as i64);
                        let msg = format!("permission revoked: {}", why.0);
                        a.tracker.borrow_mut().refuse_since(
                            mark,
                            sqlstate::INSUFFICIENT_PRIVILEGE,
                            &msg,
                            audit_clock(),
                        );
                        store_records(a).await;
                    }
                    return End::Revoked(why);
                }
                state.generation.set(snap.generation);
                if let Some(a) = state.audit {
                    a.version.set(snap.version as i64);
                }
            }
        }
        // Records the client side finished (statements PostgreSQL will skip
        // after an error in the pipeline).
        if let Some(a) = state.audit {
            if a.tracker.borrow().records_waiting() > 0 {
                store_records(a).await;
            }
        }
        // A session's own catalog read: its column query is sent and
        // answered first, then its view query goes before these requests.
        let mut own_read = None;
        // (Still so after the awaits above.)
        if quiet && state.target_idle.get() {
            if let Some(columns) = own_catalog_read(worker, state, first, unnamed) {
                let (res, _) = wr.write_all(columns).await;
                if res.is_err() {
                    return End::TargetClosed;
                }
                state.catalog_step.notified().await;
                own_read = state.catalog.borrow_mut().views();
            }
        }
        // Counted before forwarding, so a client that sees the answer also
        // sees counters that include its request.
        bump(&m.statements, statements as u64);
        bump(&m.bytes_client_to_target, n as u64);
        // The gateway's own time: up to issuing the forward. The send
        // itself is kernel time, and on a shared host it can include the
        // target's work (the woken backend runs before the send returns).
        let spent = t0.elapsed();
        // In flight before it is sent: its answer may be read before this
        // send returns.
        if requests > 0 {
            state.in_flight.set(state.in_flight.get() + requests);
            state.request_added.set(spent);
        }
        if injections.is_empty() && own_read.is_none() {
            let (res, b) = wr.write_all(buf).await;
            buf = b;
            if res.is_err() {
                return End::TargetClosed;
            }
        } else {
            // The gateway's own describes of COPY statements go just before
            // the frames that run them (see `mask::copyout`).
            // (The session's own catalog read before all of them.)
            let extra: usize = injections.iter().map(|(_, b)| b.len()).sum();
            let mut with = own_read.unwrap_or_default();
            with.reserve(n + extra);
            let mut from = 0;
            for (at, bytes) in &injections {
                with.extend_from_slice(&buf[from..*at]);
                with.extend_from_slice(bytes);
                from = *at;
            }
            with.extend_from_slice(&buf[from..]);
            let (res, _) = wr.write_all(with).await;
            if res.is_err() {
                return End::TargetClosed;
            }
        }
        if terminate {
            return End::Terminated;
        }
        if n == buf.capacity() && n < max {
            buf.reserve(n);
        }
    }
}

/// The Queries of a session's own catalog read to send before the client's
/// requests of this read (see `catalog::SessionCatalog`), or another
/// session's read taken instead. `first`: the read's first frame's tag and
/// whether its body starts with an empty name; `unnamed`: whether the
/// client kept an unnamed statement and an unnamed portal before it. Before an extended-protocol request
/// only when the simple Queries destroy nothing the client may still use:
/// its unnamed statement (unless a Parse first replaces it), or its
/// unnamed portal.
fn own_catalog_read(
    worker: &Worker,
    state: &RelayState<'_>,
    first: Option<(u8, bool)>,
    (unnamed, unnamed_portal): (bool, bool),
) -> Option<Vec<u8>> {
    let status = state.txn.get();
    let allowed = match first {
        Some((tag::QUERY, _)) => true,
        // (Parse, Bind, Close, Describe, Execute, Flush.)
        Some((t @ (b'P' | b'B' | b'C' | b'D' | b'E' | b'H'), empty)) => {
            !unnamed_portal && (!unnamed || t == b'P' && empty)
        }
        _ => false,
    };
    if !allowed {
        return None;
    }
    let mut masker = state.masker.borrow_mut();
    let mk = masker.as_mut().filter(|m| m.active())?;
    let begin =
        state
            .catalog
            .borrow_mut()
            .begin(worker, mk.engine(), mk.origins(), status, Instant::now());
    match begin {
        super::catalog::Begin::Nothing => None,
        super::catalog::Begin::Adopt(o) => {
            mk.set_origins(o);
            mk.rules_read();
            None
        }
        super::catalog::Begin::Send(b) => {
            mk.schema_read_sent();
            Some(b)
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
        state.target_idle.set(false);
        // The answers to the session's own catalog read come first.
        if state.catalog.borrow().reading() {
            let taken = state
                .catalog
                .borrow_mut()
                .take_answers(&mut buf, limits.max_frame_bytes);
            match taken {
                Err(e) => return End::TargetFrame(e),
                Ok(Taken::Pending) => continue,
                Ok(Taken::Misaligned) => return End::CatalogMisaligned,
                Ok(Taken::Columns) => {
                    state.catalog_step.notify_one();
                    continue;
                }
                Ok(Taken::Done { own, waiting }) => {
                    let (o, read) = state.catalog.borrow_mut().settle(worker, own);
                    if let Some(mk) = state.masker.borrow_mut().as_mut() {
                        mk.set_origins(o);
                        mk.schema_read_done(read);
                        if read {
                            mk.rules_read();
                        }
                    }
                    if waiting {
                        state.catalog_step.notify_one();
                    }
                    if buf.is_empty() {
                        state.target_idle.set(true);
                        continue;
                    }
                }
            }
        }
        let t0 = Instant::now();
        // (Why the masker stops the session, if it does.)
        let mut refused: Option<End> = None;
        // Masking decides how much of the buffer may go now.
        let (ready, rewritten) = {
            let mut masker = state.masker.borrow_mut();
            match masker.as_mut() {
                None => (buf.len(), false),
                Some(mk) => {
                    let p = mk.process(&mut buf);
                    if p.refused {
                        refused = Some(match mk.unsafe_encoding() {
                            Some(enc) => End::UnsafeEncoding(enc.to_owned()),
                            None => End::MaskerAdrift,
                        });
                    }
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
        let now = if state.audit.is_some() {
            audit_clock_at(t0)
        } else {
            Clock::default()
        };
        let scanned = {
            let mut tracker = state.audit.map(|a| a.tracker.borrow_mut());
            // Values masked per frame go to the statement each frame answers.
            let masker = state.masker.borrow();
            let mut masked = masker
                .as_ref()
                .map(|m| m.frame_hits())
                .filter(|h| tracker.is_some() && !h.is_empty())
                .map(|h| h.iter().peekable());
            let mut frame = 0u32;
            // What the client gets (without the answers to the gateway's
            // own requests, which the masker drops).
            let fwd: &[u8] = if rewritten { &out } else { &buf[..ready] };
            let mut catalog = state.catalog.borrow_mut();
            // A ReadyForQuery counts once whole (its status byte read).
            let ready = |status: u8, frames: &mut u32| {
                *frames += 1;
                state.txn.set(status);
                if status == b'I' {
                    state.unnamed_portal.set(false);
                }
            };
            scan.scan_parts(fwd, |part| {
                if let Part::More { body, done: true } = part {
                    if state.z_split.replace(false) {
                        ready(body.last().copied().unwrap_or(b'I'), &mut ready_frames);
                    }
                }
                if let Part::Start {
                    tag: t, body, done, ..
                } = part
                {
                    if t == tag::READY_FOR_QUERY {
                        match body.first() {
                            Some(&status) if done => ready(status, &mut ready_frames),
                            _ => state.z_split.set(true),
                        }
                    }
                    if done {
                        catalog.client_frame(t, body);
                    }
                    if let (Some(tr), Some(hits)) = (tracker.as_mut(), masked.as_mut()) {
                        while let Some((_, rule, column, n)) = hits.next_if(|h| h.0 == frame) {
                            tr.target_masked(rule, column, n);
                        }
                    }
                    frame += 1;
                }
                if let Some(t) = tracker.as_mut() {
                    t.target_part(part, now);
                }
            })
        };
        if let Err(e) = scanned {
            return End::TargetFrame(e);
        }
        if ready == 0 {
            if let Some(end) = refused {
                return end;
            }
            continue;
        }
        // The records of the statements this read completes are in the
        // ring before the client can see them complete.
        let sent = if rewritten { out.len() } else { ready };
        if let Some(a) = state.audit {
            if a.tracker.borrow().records_waiting() > 0 {
                store_records(a).await;
            }
            state
                .bytes_to_client
                .set(state.bytes_to_client.get() + sent as u64);
        }
        bump(&m.bytes_target_to_client, sent as u64);
        // As on the request side: up to issuing the forward.
        let spent = t0.elapsed();
        // Answered before the client can see it: its next request finds
        // nothing in flight (a session's own catalog read goes only then),
        // and whether the target's stream stops at a frame boundary.
        // (Set before the write, as the in-flight count: the client may
        // answer before the write returns. A write that waits on a client
        // that does not read, while a read waits on it, is the wait a
        // direct connection to PostgreSQL would have too.)
        state
            .target_idle
            .set(ready == buf.len() && scan.at_boundary());
        if ready_frames > 0 {
            state
                .in_flight
                .set(state.in_flight.get().saturating_sub(ready_frames));
            let added = state.request_added.get() + spent;
            m.record_added(added.as_nanos() as u64);
        }
        state.client_writing.set(true);
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
        state.client_writing.set(false);
        if let Some(end) = refused {
            // What came before the switch (or the error that set the
            // masker adrift) went out; nothing after it does.
            return end;
        }
        // Keep the incomplete frame (if any) at the front.
        if ready == buf.len() {
            buf.clear();
        } else {
            buf.drain(..ready);
        }
        if ready == buf.capacity() && buf.capacity() < limits.max_buffer_bytes {
            buf.reserve(ready);
        }
    }
}
