//! The relay's end over TLS, with a raw TLS client that can stop reading:
//! a session that ends while the gateway's write to the client is blocked
//! must not write to that TLS stream again (a cut-short write leaves it
//! without its buffer, and the worker panicked on the close_notify).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rustls_pki_types::{CertificateDer, ServerName};
use sluice_tests::client::{err_text, pem_blocks};
use sluice_tests::wire::{self, ErrorFields};
use sluice_tests::{connect, ApiKey, DevCerts, Gateway, GatewayConfig, Pg};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// TLS to the gateway after an SSLRequest, trusting the dev CA.
async fn tls(port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_trusting(port, &DevCerts::shared().ca_pem_bytes()).await
}

/// As [`tls`], trusting the CA certificates in `ca_pem`.
async fn tls_trusting(port: u16, ca_pem: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_blocks(ca_pem, "CERTIFICATE") {
        roots.add(CertificateDer::from(c)).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut s = [0u8];
    tcp.read_exact(&mut s).await.unwrap();
    assert_eq!(s[0], b'S');
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

async fn read_msg<S: AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    let read = async {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).await.unwrap();
        let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        (h[0], body)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no message in 10 s")
}

/// Startup and SCRAM-SHA-256 (no channel binding) up to ReadyForQuery.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, key: &str) {
    if let Err(e) = login_with(s, key, "SCRAM-SHA-256", ChannelBinding::unsupported).await {
        panic!("login failed: {e}");
    }
}

/// Startup and SCRAM with mechanism `mech`, the client binding as `cb`
/// makes it, up to ReadyForQuery or an ErrorResponse.
async fn login_with<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &str,
    mech: &str,
    cb: impl FnOnce() -> ChannelBinding,
) -> Result<(), ErrorFields> {
    let mut cb = Some(cb);
    s.write_all(&wire::startup_bytes(&[
        ("user", "agent1"),
        ("database", "app"),
    ]))
    .await
    .unwrap();
    let mut scram = None;
    loop {
        let (t, body) = read_msg(s).await;
        let mut out = BytesMut::new();
        match (
            t,
            body.get(..4)
                .map(|c| i32::from_be_bytes(c.try_into().unwrap())),
        ) {
            (b'R', Some(10)) => {
                let sc = ScramSha256::new(key.as_bytes(), cb.take().unwrap()());
                frontend::sasl_initial_response(mech, sc.message(), &mut out).unwrap();
                scram = Some(sc);
            }
            (b'R', Some(11)) => {
                let sc = scram.as_mut().unwrap();
                sc.update(&body[4..]).unwrap();
                frontend::sasl_response(sc.message(), &mut out).unwrap();
            }
            (b'R', Some(12)) => scram.as_mut().unwrap().finish(&body[4..]).unwrap(),
            (b'E', _) => return Err(ErrorFields::parse(&body)),
            (b'Z', _) => return Ok(()),
            _ => {}
        }
        if !out.is_empty() {
            s.write_all(&out).await.unwrap();
        }
    }
}

/// A TLS client asks for a large result, stops reading (the gateway's
/// write to it blocks), then sends Terminate: the session ends with the
/// write cut short, and the (only) worker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_while_its_tls_write_is_blocked_leaves_the_worker_serving() {
    let key = ApiKey::shared();
    let gw = Gateway::start_with(
        &GatewayConfig::standard(Pg::shared(), key)
            .tls(DevCerts::shared(), false)
            .workers(1),
    );
    let mut s = tls(gw.port).await;
    login(&mut s, &key.key).await;
    s.write_all(&wire::query_bytes(
        "select repeat('x', 1000) from generate_series(1, 200000)",
    ))
    .await
    .unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut term = BytesMut::new();
    frontend::terminate(&mut term);
    s.write_all(&term).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
    let c = tokio::time::timeout(
        Duration::from_secs(10),
        connect(&gw.config("agent1", &key.key, "app")),
    )
    .await
    .expect("the worker no longer serves")
    .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    c.simple_query("select 1").await.unwrap();
    drop(s);
}

/// SCRAM channel binding (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`): a
/// proof bound to the certificate the gateway presented logs in; one bound
/// to another certificate's hash, as a client's is behind a relay that
/// terminates TLS with a certificate of its own, is refused (08P01) and
/// counted; so is a client that could bind but says the server cannot
/// (`y`). (psql with `channel_binding=require`: `clients.rs`;
/// tokio-postgres-rustls 0.13 computes no binding data.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_ties_the_login_to_the_gateways_certificate() {
    let key = ApiKey::shared();
    let gw = Gateway::start_with(
        &GatewayConfig::standard(Pg::shared(), key).tls(DevCerts::shared(), false),
    );
    let hash_of = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        let der = &s.get_ref().1.peer_certificates().unwrap()[0];
        ring::digest::digest(&ring::digest::SHA256, der)
            .as_ref()
            .to_vec()
    };
    let mut s = tls(gw.port).await;
    let h = hash_of(&s);
    login_with(&mut s, &key.key, "SCRAM-SHA-256-PLUS", || {
        ChannelBinding::tls_server_end_point(h)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));

    let mut s = tls(gw.port).await;
    let mut other = hash_of(&s);
    other[0] ^= 1;
    let e = login_with(&mut s, &key.key, "SCRAM-SHA-256-PLUS", || {
        ChannelBinding::tls_server_end_point(other)
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), "08P01", "{e}");
    assert_eq!(e.message(), "SCRAM channel binding check failed");
    let mut s = tls(gw.port).await;
    let e = login_with(
        &mut s,
        &key.key,
        "SCRAM-SHA-256",
        ChannelBinding::unrequested,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "08P01", "{e}");
    assert!(e.message().contains("negotiation"), "{e}");

    let m = gw.metrics();
    assert_eq!(
        m.get(
            "sluice_auth_failures_total",
            &[("reason", "channel_binding")]
        ),
        2.0
    );
    gw.assert_alive();
}

/// The channel binding data is that of the certificate each connection's
/// own TLS handshake presented: a connection accepted before the
/// certificate rotated binds to the old one, one accepted after to the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_follows_the_certificate_each_connection_was_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, certs) = DevCerts::rotatable(dir.path());
    let api = ApiKey::shared();
    let gw = Gateway::start_with(&GatewayConfig::standard(Pg::shared(), api).tls(&certs, false));
    let hash_of = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        let der = &s.get_ref().1.peer_certificates().unwrap()[0];
        ring::digest::digest(&ring::digest::SHA256, der)
            .as_ref()
            .to_vec()
    };
    let mut before = tls_trusting(gw.port, &old.ca_pem_bytes()).await;
    let old_hash = hash_of(&before);

    DevCerts::replace(&certs.server_key, &new.server_key);
    DevCerts::replace(&certs.server_pem, &new.server_pem);
    gw.hangup();
    gw.wait_metric("sluice_tls_reloads_total", 1.0).await;
    let mut after = tls_trusting(gw.port, &new.ca_pem_bytes()).await;
    let new_hash = hash_of(&after);
    assert_ne!(old_hash, new_hash);

    login_with(&mut before, &api.key, "SCRAM-SHA-256-PLUS", || {
        ChannelBinding::tls_server_end_point(old_hash)
    })
    .await
    .unwrap_or_else(|e| panic!("accepted before the rotation: {e}\n{}", gw.log()));
    login_with(&mut after, &api.key, "SCRAM-SHA-256-PLUS", || {
        ChannelBinding::tls_server_end_point(new_hash)
    })
    .await
    .unwrap_or_else(|e| panic!("accepted after the rotation: {e}\n{}", gw.log()));
    gw.assert_alive();
}
