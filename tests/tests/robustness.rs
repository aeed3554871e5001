//! Bad input and bad peers: garbage, oversize and truncated frames, stalled
//! clients, clients that vanish mid-query, targets that are down or silent.
//! Each case must end in an error response or a clean close — never a hang —
//! and the gateway must keep serving everyone else.
//!
//! Most gateways here run with `workers: 1`, so a stall that blocked a worker
//! would block every other session and fail the test.

use std::time::{Duration, Instant};

use sluice_tests::client::{err_text, step};
use sluice_tests::wire::{self, query_bytes, startup_bytes, Event, Raw};
use sluice_tests::{connect, db_code, ApiKey, Gateway, GatewayConfig, Pg};

const CLOSE_LIMIT: Duration = Duration::from_secs(10);

fn one_worker() -> GatewayConfig {
    GatewayConfig::standard(Pg::shared(), ApiKey::shared()).workers(1)
}

/// The gateway is alive and a fresh session can log in and query.
async fn assert_healthy(gw: &Gateway) {
    gw.assert_alive();
    let c = gw.agent().await;
    let r = step("health query", c.query_one("select 41::int4 + 1", &[]))
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
    gw.assert_alive();
}

async fn send_and_expect_close(gw: &Gateway, bytes: &[u8], what: &str) {
    let mut raw = Raw::connect(gw.port).await;
    // The gateway may close before taking everything; a failed write is fine.
    let _ = raw.send(bytes).await;
    let closed = raw.expect_close(CLOSE_LIMIT, what).await;
    println!(
        "{what}: errors {:?}, orderly close: {}",
        closed
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        closed.orderly
    );
    assert!(
        closed
            .others
            .iter()
            .all(|m| m.tag != b'R' || m.body.get(..4) != Some(&[0, 0, 0, 0])),
        "{what}: gateway sent AuthenticationOk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_error_or_close() {
    let gw = Gateway::start_with(&one_worker());
    // Random content in a complete 256-byte packet (a random length prefix
    // could announce more bytes than we send and turn this into a stall,
    // which is a separate test).
    let mut random = vec![0u8; 256];
    sluice_tests::TestRng::new(9).fill(&mut random);
    random[..4].copy_from_slice(&256u32.to_be_bytes());
    random[4] = 0x7e; // no known protocol code starts with 0x7e
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "TLS ClientHello without SSLRequest",
            vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00],
        ),
        ("random bytes", random.clone()),
        (
            "unknown protocol code",
            vec![0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78],
        ),
        ("protocol 2.0", vec![0, 0, 0, 8, 0, 2, 0, 0]),
        ("length below minimum", vec![0, 0, 0, 3, 0]),
        ("zero length", vec![0, 0, 0, 0]),
        ("negative length", vec![0x80, 0, 0, 0, 0, 3, 0, 0]),
        ("startup without terminator", {
            let mut s = startup_bytes(&[("user", "agent1"), ("database", "app")]);
            let n = s.len();
            s[n - 1] = b'x';
            s
        }),
        (
            "startup without user",
            startup_bytes(&[("database", "app")]),
        ),
        ("startup key without value", {
            let mut b = vec![0, 0, 0, 0, 0, 3, 0, 0];
            b.extend_from_slice(b"user\0");
            b.push(0);
            let n = b.len() as u32;
            b[..4].copy_from_slice(&n.to_be_bytes());
            b
        }),
    ];
    for (what, bytes) in &cases {
        send_and_expect_close(&gw, bytes, what).await;
    }
    // Startup, then garbage instead of the SASL response.
    let mut raw = Raw::connect(gw.port).await;
    raw.send(&startup_bytes(&[("user", "agent1"), ("database", "app")]))
        .await
        .unwrap();
    let m = raw.read_msg().await;
    assert_eq!(m.tag, b'R');
    // A complete Query frame where the SASLInitialResponse should be.
    let _ = raw.send(&query_bytes("select 1")).await;
    raw.expect_close(CLOSE_LIMIT, "Query instead of SASLInitialResponse")
        .await;
    // And a complete frame of random bytes with a bogus tag.
    let mut raw = Raw::connect(gw.port).await;
    raw.send(&startup_bytes(&[("user", "agent1"), ("database", "app")]))
        .await
        .unwrap();
    raw.read_msg().await;
    let mut frame = vec![0x02];
    frame.extend_from_slice(&((random.len() + 4) as u32).to_be_bytes());
    frame.extend_from_slice(&random);
    let _ = raw.send(&frame).await;
    raw.expect_close(CLOSE_LIMIT, "random frame instead of SASLInitialResponse")
        .await;
    // Connect and leave at once, many times.
    for _ in 0..50 {
        drop(Raw::connect(gw.port).await);
    }
    assert_healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_startup_packet_is_refused() {
    let gw = Gateway::start_with(&one_worker());
    // Length just over the 10000-byte limit, with some of the body.
    let mut b = 10_001u32.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 3, 0, 0]);
    b.extend_from_slice(&[b'a'; 200]);
    send_and_expect_close(&gw, &b, "startup length 10001").await;
    // A real startup packet over the limit (huge option value).
    let big = "x".repeat(20_000);
    let s = startup_bytes(&[
        ("user", "agent1"),
        ("database", "app"),
        ("application_name", &big),
    ]);
    send_and_expect_close(&gw, &s, "startup packet of 20 kB").await;
    // 2 GB length prefix on the startup packet.
    send_and_expect_close(
        &gw,
        &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        "startup length 2 GB",
    )
    .await;
    assert_healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_length_prefix_after_auth_is_refused() {
    let gw = Gateway::start_with(&one_worker());
    let key = &ApiKey::shared().key;
    for (what, frame) in [
        (
            "Query with length 0x7fffffff",
            vec![b'Q', 0x7f, 0xff, 0xff, 0xff, b's', b'e'],
        ),
        (
            "Parse with length 0x7fffffff",
            vec![b'P', 0x7f, 0xff, 0xff, 0xff],
        ),
        (
            "CopyData with length 0xffffffff",
            vec![b'd', 0xff, 0xff, 0xff, 0xff],
        ),
        ("Query with length 2", vec![b'Q', 0, 0, 0, 2]),
        ("unknown message type", vec![0x01, 0, 0, 0, 4]),
    ] {
        let mut s = wire::login(gw.port, "agent1", "app", key)
            .await
            .unwrap_or_else(|e| panic!("login: {e}"));
        let t0 = Instant::now();
        let _ = s.raw.send(&frame).await;
        let closed = s.raw.expect_close(CLOSE_LIMIT, what).await;
        println!(
            "{what}: closed after {:?}, errors {:?}",
            t0.elapsed(),
            closed
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
    }
    // Over a configured max_frame_bytes, a real (complete) message.
    let gw2 = Gateway::start_with(&one_worker().limit("max_frame_bytes", 65536));
    let mut s = wire::login(gw2.port, "agent1", "app", key).await.unwrap();
    let big = format!("select '{}'", "y".repeat(100_000));
    let _ = s.raw.send(&query_bytes(&big)).await;
    let closed = s
        .raw
        .expect_close(CLOSE_LIMIT, "100 kB Query over max_frame_bytes=65536")
        .await;
    println!("frame over max_frame_bytes: errors {:?}", closed.errors);
    // A result bigger than max_frame_bytes is the target's doing; the client
    // must get an error or a close, not a hang.
    let mut s = wire::login(gw2.port, "agent1", "app", key).await.unwrap();
    let _ = s.raw.send(&query_bytes("select repeat('r', 200000)")).await;
    let mut seen = String::new();
    loop {
        match s.raw.read_event(CLOSE_LIMIT).await {
            Some(Event::Msg(m)) if m.tag == b'E' => {
                seen.push_str(&format!("E({}) ", wire::ErrorFields::parse(&m.body)))
            }
            Some(Event::Msg(m)) if m.tag == b'Z' => {
                seen.push('Z');
                break;
            }
            Some(Event::Msg(m)) => seen.push_str(&format!("{} ", m.tag_char())),
            Some(Event::Eof) => {
                seen.push_str("EOF");
                break;
            }
            Some(Event::Reset(_)) => {
                seen.push_str("RESET");
                break;
            }
            None => panic!("DataRow over max_frame_bytes from the target: hang (seen: {seen})"),
        }
    }
    println!("DataRow over max_frame_bytes from the target: {seen}");
    assert_healthy(&gw2).await;
    assert_healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_is_closed_by_handshake_timeout() {
    let gw = Gateway::start_with(&one_worker().limit("handshake_timeout_ms", 1000));
    // A session established before the stalls keeps working throughout.
    let established = gw.agent().await;
    let mut stalls = vec![];
    // (a) half a startup packet
    let mut a = Raw::connect(gw.port).await;
    a.send(&[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's'])
        .await
        .unwrap();
    stalls.push(("half a startup packet", a));
    // (b) nothing at all
    stalls.push(("nothing sent", Raw::connect(gw.port).await));
    // (c) startup sent, SASL never answered
    let mut c = Raw::connect(gw.port).await;
    c.send(&startup_bytes(&[("user", "agent1"), ("database", "app")]))
        .await
        .unwrap();
    let m = c.read_msg().await;
    assert_eq!(m.tag, b'R', "expected an authentication request");
    stalls.push(("SASL exchange abandoned", c));
    // (d) half of the SASLInitialResponse
    let mut d = Raw::connect(gw.port).await;
    d.send(&startup_bytes(&[("user", "agent1"), ("database", "app")]))
        .await
        .unwrap();
    d.read_msg().await;
    d.send(&[b'p', 0, 0, 0, 60, b'S', b'C']).await.unwrap();
    stalls.push(("half a SASLInitialResponse", d));

    let r = established.query_one("select 1::int4", &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 1);
    let t0 = Instant::now();
    for (what, mut raw) in stalls {
        let closed = raw.expect_close(CLOSE_LIMIT, what).await;
        println!(
            "{what}: closed {:?} after the stalls began, errors {:?}",
            t0.elapsed(),
            closed
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
    }
    let r = established.query_one("select 2::int4", &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 2);
    assert_healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frame_after_auth_does_not_block_others() {
    let gw = Gateway::start_with(&one_worker());
    let key = &ApiKey::shared().key;
    let established = gw.agent().await;
    // Session A sends 7 bytes of a Query and stops.
    let mut a = wire::login(gw.port, "agent1", "app", key).await.unwrap();
    let frame = query_bytes("select 'resumed' as r");
    a.raw.send(&frame[..7]).await.unwrap();
    // Session B claims a 1 MB Query and sends 10 bytes of it.
    let mut b = wire::login(gw.port, "agent1", "app", key).await.unwrap();
    let mut partial = vec![b'Q'];
    partial.extend_from_slice(&(1_000_000u32).to_be_bytes());
    partial.extend_from_slice(b"select 1; ");
    b.raw.send(&partial).await.unwrap();

    // Everyone else is served: an old session, and new logins.
    for i in 0..5i32 {
        let r = step(
            "query during stall",
            established.query_one("select $1::int4", &[&i]),
        )
        .await
        .unwrap();
        assert_eq!(r.get::<_, i32>(0), i);
        let c = gw.agent().await;
        let r = step(
            "new session during stall",
            c.query_one("select $1::int4 * 2", &[&i]),
        )
        .await
        .unwrap();
        assert_eq!(r.get::<_, i32>(0), i * 2);
    }
    // A finishes its frame late and gets its answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.raw.send(&frame[7..]).await.unwrap();
    let rows = a.read_result().await.expect("resumed query");
    assert_eq!(rows, vec![vec![Some("resumed".to_string())]]);
    // A's session is still fine.
    let rows = a.simple_query("select 'again'").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("again"));
    drop(b);
    assert_healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_query_stops_server_query() {
    let pg = Pg::shared();
    let gw = Gateway::start_with(&one_worker());
    let mut s = wire::login(gw.port, "agent1", "app", &ApiKey::shared().key)
        .await
        .unwrap();
    let marker = "vanish-3f9d";
    s.raw
        .send(&query_bytes(&format!("select pg_sleep(30) /* {marker} */")))
        .await
        .unwrap();
    let su = pg.superuser().await;
    let find = "select pid from pg_stat_activity where state = 'active' and query like $1 \
                and pid <> pg_backend_pid()";
    let pat = format!("%{marker}%");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        if let Some(r) = su.query(find, &[&pat]).await.unwrap().first() {
            break r.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "query never started on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The client vanishes.
    drop(s);
    let t0 = Instant::now();
    let limit = Duration::from_secs(10);
    loop {
        let rows = su
            .query(
                "select state, query from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        let running = rows.first().is_some_and(|r| {
            r.get::<_, Option<String>>(0).as_deref() == Some("active")
                && r.get::<_, Option<String>>(1)
                    .unwrap_or_default()
                    .contains(marker)
        });
        if !running {
            println!(
                "server query stopped {:?} after the client vanished",
                t0.elapsed()
            );
            break;
        }
        assert!(
            t0.elapsed() < limit,
            "pg_sleep(30) of a vanished client still running on backend {pid} after {limit:?}: \
             the gateway must cancel it / close the server connection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_down_or_silent_gives_class_08() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let dead_port = sluice_tests::free_port(); // nothing listens here
                                               // A target that accepts TCP and never says anything.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let cfg = GatewayConfig::new()
        .workers(1)
        .limit("connect_timeout_ms", 1000)
        .pg_connection("app", pg)
        .connection(
            "down",
            "127.0.0.1",
            dead_port,
            "appdb",
            "app_owner",
            Some("x"),
        )
        .connection(
            "silent",
            "127.0.0.1",
            silent_port,
            "appdb",
            "app_owner",
            Some("x"),
        )
        .connection(
            "badpw",
            "127.0.0.1",
            pg.port,
            "appdb",
            "app_owner",
            Some("wrong-password"),
        )
        .identity_key("agent1", &key.verifier, &["bots"])
        .grant(&["*"], &[], &["bots"]);
    let gw = Gateway::start_with(&cfg);
    for db in ["down", "silent"] {
        let t0 = Instant::now();
        let res = connect(&gw.config("agent1", &key.key, db)).await;
        let e = match res {
            Ok(_) => panic!("connection `{db}` succeeded although its target is unusable"),
            Err(e) => e,
        };
        let code = db_code(&e).unwrap_or_else(|| panic!("{db}: no SQLSTATE: {}", err_text(&e)));
        println!("target {db}: {} after {:?}", err_text(&e), t0.elapsed());
        assert!(
            code.starts_with("08"),
            "target {db}: expected class 08, got {code}"
        );
    }
    // Target rejects the gateway's credentials: an error, never a hang.
    let res = connect(&gw.config("agent1", &key.key, "badpw")).await;
    match res {
        Ok(_) => panic!("target accepted a wrong password?"),
        Err(e) => println!("target refuses gateway credentials: {}", err_text(&e)),
    }
    drop(silent);
    assert_healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_requests_without_tls_configured() {
    let gw = Gateway::start_with(&one_worker());
    let key = &ApiKey::shared().key;
    // SSLRequest: 'N', then a normal startup on the same socket.
    let mut raw = Raw::connect(gw.port).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    match raw.read_byte(CLOSE_LIMIT).await {
        Some(Event::Msg(m)) => assert_eq!(m.tag, b'N', "answer to SSLRequest"),
        other => panic!("SSLRequest: expected 'N', got {other:?}"),
    }
    let mut s = wire::login_on(raw, "agent1", "app", key)
        .await
        .unwrap_or_else(|e| panic!("login after SSLRequest/N: {e}"));
    assert_eq!(
        s.simple_query("select 1").await.unwrap()[0][0].as_deref(),
        Some("1")
    );
    // GSSENCRequest: declined with 'N', as PostgreSQL without GSSAPI does,
    // and the startup goes on on the same socket.
    let mut raw = Raw::connect(gw.port).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    match raw.read_byte(CLOSE_LIMIT).await {
        Some(Event::Msg(m)) if m.tag == b'N' => {
            let mut s = wire::login_on(raw, "agent1", "app", key)
                .await
                .unwrap_or_else(|e| panic!("login after GSSENCRequest/N: {e}"));
            assert_eq!(
                s.simple_query("select 1").await.unwrap()[0][0].as_deref(),
                Some("1")
            );
        }
        other => panic!("GSSENCRequest: expected 'N', got {other:?}"),
    }
    // Two SSLRequests in a row: the second gets 'N' again (and the session
    // goes on) or an error and a close, never silence.
    let mut raw = Raw::connect(gw.port).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let _ = raw.read_byte(CLOSE_LIMIT).await;
    let _ = raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    match raw.read_byte(CLOSE_LIMIT).await {
        Some(Event::Msg(m)) if m.tag == b'N' => {
            let mut s = wire::login_on(raw, "agent1", "app", key)
                .await
                .unwrap_or_else(|e| panic!("login after two SSLRequests: {e}"));
            assert_eq!(
                s.simple_query("select 1").await.unwrap()[0][0].as_deref(),
                Some("1")
            );
        }
        Some(Event::Msg(m)) if m.tag == b'E' => {
            println!("second SSLRequest answered with an error")
        }
        Some(Event::Eof) | Some(Event::Reset(_)) => println!("second SSLRequest: closed"),
        other => panic!("second SSLRequest: unexpected {other:?}"),
    }
    assert_healthy(&gw).await;
}

/// A Bind with a negative count of parameter or result formats (which
/// PostgreSQL reads as none) is answered as the server answers it: the
/// masker multiplied the count, which overflowed in debug builds and
/// panicked the worker, ending the node for every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_with_negative_format_counts_is_answered() {
    let gw = Gateway::start_with(&one_worker());
    let key = ApiKey::shared();
    for (what, pf, rf) in [
        ("parameter formats", -1i16, 0i16),
        ("result formats", 0, -1),
    ] {
        let mut s = wire::login(gw.port, "agent1", "app", &key.key)
            .await
            .unwrap_or_else(|e| panic!("login: {e:?}"));
        let mut b = wire::parse_bytes("", "select 'x'::text");
        // Portal "", statement "", the format counts, no parameters.
        let mut body = vec![0u8, 0];
        body.extend_from_slice(&pf.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&rf.to_be_bytes());
        b.push(b'B');
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(&body);
        b.extend(wire::execute_bytes("", true));
        s.raw.send(&b).await.unwrap();
        let r = s.read_result().await;
        println!("{what}: {r:?}");
    }
    assert_healthy(&gw).await;
}
