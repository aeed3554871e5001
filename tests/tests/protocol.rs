//! Wire-protocol passthrough through `sluice-dp`: simple, extended and
//! prepared queries, pipelining, errors, portals, LISTEN/NOTIFY, cancel,
//! 100 MB COPY in both directions, a 50 MB bind parameter, and the metrics
//! those produce. One PostgreSQL for the whole binary; a gateway per test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt};
use sluice_tests::client::{
    connect_with_messages, err_text, render_row, render_simple, step, within,
};
use sluice_tests::wire::{self, cancel_bytes};
use sluice_tests::{db_code, sha256_hex, ApiKey, Gateway, GatewayConfig, Pg, TestRng};
use tokio_postgres::{AsyncMessage, NoTls};

fn gateway() -> (&'static Pg, Gateway) {
    let pg = Pg::shared();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    (pg, gw)
}

/// Wait until `sql_marker` shows up as an active query in pg_stat_activity;
/// returns its backend pid.
async fn wait_active(pg: &Pg, sql_marker: &str) -> i32 {
    let su = pg.superuser().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = su
            .query(
                "select pid from pg_stat_activity where state = 'active' and query like $1 \
                 and pid <> pg_backend_pid()",
                &[&format!("%{sql_marker}%")],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            return r.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "query with {sql_marker:?} never became active on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_matches_direct() {
    let (pg, gw) = gateway();
    let sql =
        "select 1 as one, 'two'::text as two, null::int as n, 'quote''s \u{e9}\u{1F600}' as u; \
               select g, g::text || 'x' as gx from generate_series(1, 5) g; \
               select current_user as who, current_database() as db; \
               create temp table simple_t (a int); insert into simple_t values (1), (2); \
               update simple_t set a = a + 1; delete from simple_t where a = 3";
    let via = gw.agent().await;
    let direct = pg.direct().await;
    let a = step("simple query via gateway", via.simple_query(sql))
        .await
        .unwrap();
    let b = step("simple query direct", direct.simple_query(sql))
        .await
        .unwrap();
    let (a, b) = (render_simple(&a), render_simple(&b));
    assert_eq!(a, b, "simple query results differ (gateway vs direct)");
    // The session runs as the gateway's target role on the target database.
    assert!(
        a.iter()
            .any(|l| l.contains("who=\"app_owner\"") && l.contains("db=\"appdb\"")),
        "{a:?}"
    );
    // Empty query string (EmptyQueryResponse).
    let e = step("empty query", via.simple_query("")).await.unwrap();
    let d = step("empty query direct", direct.simple_query(""))
        .await
        .unwrap();
    assert_eq!(render_simple(&e), render_simple(&d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_query_with_params_matches_direct() {
    let (pg, gw) = gateway();
    let via = gw.agent().await;
    let direct = pg.direct().await;
    let sql =
        "select $1::int4 + 1 as a, $2::text || 'y' as b, $3::float8 * 2 as c, not $4::bool as d, \
               $5::bytea as e, $6::int8 as f, $7::text as g, array[$1::int4, null, 3] as h";
    let blob: Vec<u8> = (0..=255u8).collect();
    let none: Option<String> = None;
    for (i, text) in ["x", "", "\u{e9}t\u{e9}", "a\tb\nc"].iter().enumerate() {
        let i = i as i32;
        let f = 1.25f64 * i as f64;
        let b = i % 2 == 0;
        let big = i64::MAX - i as i64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&i, text, &f, &b, &blob, &big, &none];
        let ra = step("query via gateway", via.query(sql, &params))
            .await
            .unwrap();
        let rb = step("query direct", direct.query(sql, &params))
            .await
            .unwrap();
        assert_eq!(ra.len(), 1);
        assert_eq!(
            ra.iter().map(render_row).collect::<Vec<_>>(),
            rb.iter().map(render_row).collect::<Vec<_>>()
        );
    }
    // Zero rows, and a statement without a result set.
    let r = via
        .query("select 1 where false and $1::int = 1", &[&1i32])
        .await
        .unwrap();
    assert!(r.is_empty());
    let n = via
        .execute("select g from generate_series(1, $1::int) g", &[&7i32])
        .await
        .unwrap();
    assert_eq!(n, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_match_direct() {
    let (pg, gw) = gateway();
    let via = gw.agent().await;
    let direct = pg.direct().await;
    let sql = "select g, g * 2 as double, md5(g::text) as h from generate_series(1, $1::int4) g";
    let sa = via.prepare(sql).await.unwrap();
    let sb = direct.prepare(sql).await.unwrap();
    let other = via.prepare("select $1::text || $2::text").await.unwrap();
    for n in [0i32, 1, 10, 1000] {
        let ra = via.query(&sa, &[&n]).await.unwrap();
        let rb = direct.query(&sb, &[&n]).await.unwrap();
        assert_eq!(ra.len(), n as usize);
        assert_eq!(
            ra.iter().map(render_row).collect::<Vec<_>>(),
            rb.iter().map(render_row).collect::<Vec<_>>()
        );
        // Interleave another prepared statement.
        let r = via
            .query_one(&other, &[&"a", &n.to_string()])
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), format!("a{n}"));
    }
    assert_eq!(sa.columns().len(), 3);
    assert_eq!(sa.params().len(), 1);
    // A big result through a prepared statement.
    let big = via
        .prepare("select g, repeat('x', 100) from generate_series(1, $1::int4) g")
        .await
        .unwrap();
    let rows = step("200k rows", via.query(&big, &[&200_000i32]))
        .await
        .unwrap();
    assert_eq!(rows.len(), 200_000);
    let sum: i64 = rows.iter().map(|r| r.get::<_, i32>(0) as i64).sum();
    assert_eq!(sum, 200_000 * 200_001 / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_on_one_connection() {
    let (_pg, gw) = gateway();
    let via = gw.agent().await;
    let stmt = via.prepare("select $1::int8 * 3").await.unwrap();
    // tokio-postgres pipelines concurrent requests on one connection.
    let futs = (0..200i64).map(|i| {
        let via = &via;
        let stmt = &stmt;
        async move {
            let r = via.query_one(stmt, &[&i]).await.unwrap();
            assert_eq!(r.get::<_, i64>(0), i * 3);
        }
    });
    step(
        "200 pipelined queries",
        futures_util::future::join_all(futs),
    )
    .await;
    // Pipelined with an error in the middle: the others still succeed.
    let (a, b, c) = tokio::join!(
        via.query_one("select 1::int4", &[]),
        via.query_one("select 1/0", &[]),
        via.query_one("select 3::int4", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(db_code(&b.unwrap_err()).as_deref(), Some("22012"));
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_pass_through_and_session_survives() {
    let (_pg, gw) = gateway();
    let mut via = gw.agent().await;
    let e = via.query("select 1/0", &[]).await.unwrap_err();
    assert_eq!(db_code(&e).as_deref(), Some("22012"), "{}", err_text(&e));
    let e = via.simple_query("selec 1").await.unwrap_err();
    assert_eq!(db_code(&e).as_deref(), Some("42601"), "{}", err_text(&e));
    let e = via
        .query("select * from no_such_table_xyz", &[])
        .await
        .unwrap_err();
    assert_eq!(db_code(&e).as_deref(), Some("42P01"), "{}", err_text(&e));
    // Failed transaction state and recovery.
    via.batch_execute("begin").await.unwrap();
    assert!(via.query("select 1/0", &[]).await.is_err());
    let e = via.query("select 1", &[]).await.unwrap_err();
    assert_eq!(db_code(&e).as_deref(), Some("25P02"), "{}", err_text(&e));
    via.batch_execute("rollback").await.unwrap();
    // Transactions through the client API.
    via.batch_execute("create temp table tx_t (a int)")
        .await
        .unwrap();
    let tx = via.transaction().await.unwrap();
    tx.execute("insert into tx_t values (1)", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = via.transaction().await.unwrap();
    tx.execute("insert into tx_t values (2)", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let r = via
        .query_one("select array_agg(a)::int4[] from tx_t", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, Vec<i32>>(0), vec![2]);
    // Notices (RAISE NOTICE) do not disturb the session.
    via.batch_execute("do $$ begin raise notice 'hello'; end $$")
        .await
        .unwrap();
    let r = via.query_one("select 42::int4", &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_with_row_limit() {
    let (_pg, gw) = gateway();
    let mut via = gw.agent().await;
    let tx = via.transaction().await.unwrap();
    let stmt = tx
        .prepare("select g from generate_series(1, $1::int4) g")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[&10i32]).await.unwrap();
    let mut sizes = vec![];
    let mut all = vec![];
    loop {
        let rows = tx.query_portal(&portal, 3).await.unwrap();
        if rows.is_empty() {
            break;
        }
        sizes.push(rows.len());
        all.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    tx.commit().await.unwrap();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_key_data_carries_real_server_pid() {
    let (_pg, gw) = gateway();
    let key = ApiKey::shared();
    let mut s = wire::login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("raw login failed: {e}"));
    assert_eq!(
        s.auth_codes.first(),
        Some(&10),
        "expected SASL first: {:?}",
        s.auth_codes
    );
    let rows = s.simple_query("select pg_backend_pid()").await.unwrap();
    let pid: i32 = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert_eq!(
        s.pid, pid,
        "BackendKeyData pid must be the server's pg_backend_pid()"
    );
    let names: Vec<&str> = s.params.iter().map(|(k, _)| k.as_str()).collect();
    for p in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "integer_datetimes",
    ] {
        assert!(
            names.contains(&p),
            "ParameterStatus {p} not relayed: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_through_gateway() {
    let (_pg, gw) = gateway();
    let (listener, mut rx) = connect_with_messages(&gw.agent_config()).await.unwrap();
    listener.batch_execute("LISTEN sluice_chan").await.unwrap();
    let notifier = gw.agent().await;
    let pid: i32 = notifier
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let long_payload: String = "p\u{e9}".repeat(2000);
    notifier
        .batch_execute("NOTIFY sluice_chan, 'hello from notifier'")
        .await
        .unwrap();
    notifier
        .execute("select pg_notify('sluice_chan', $1)", &[&long_payload])
        .await
        .unwrap();
    // The listener is idle: the gateway must relay the server's async
    // messages without a client request.
    let mut got = vec![];
    while got.len() < 2 {
        let m = within(
            Duration::from_secs(10),
            "waiting for notification",
            rx.recv(),
        )
        .await
        .expect("listener connection ended");
        if let AsyncMessage::Notification(n) = m {
            got.push((
                n.channel().to_string(),
                n.payload().to_string(),
                n.process_id(),
            ));
        }
    }
    assert_eq!(
        got[0],
        ("sluice_chan".into(), "hello from notifier".into(), pid)
    );
    assert_eq!(got[1], ("sluice_chan".into(), long_payload, pid));
    // The listener still works afterwards.
    listener.batch_execute("UNLISTEN *").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_pg_sleep() {
    let (pg, gw) = gateway();
    let before = gw.metrics();
    let client = gw.agent().await;
    let token = client.cancel_token();
    let marker = "cancel-me-7c1f";
    let sql = format!("select pg_sleep(30) /* {marker} */");
    let task = tokio::spawn(async move { client.simple_query(&sql).await.map(|_| ()) });
    wait_active(pg, marker).await;
    let t0 = Instant::now();
    step("cancel_query", token.cancel_query(NoTls))
        .await
        .expect("send CancelRequest to the gateway");
    let res = within(Duration::from_secs(20), "cancelled query to return", task)
        .await
        .unwrap();
    let elapsed = t0.elapsed();
    println!("cancel: query returned {elapsed:?} after the CancelRequest");
    let err = res.expect_err("pg_sleep(30) should have been cancelled");
    assert_eq!(
        db_code(&err).as_deref(),
        Some("57014"),
        "{}",
        err_text(&err)
    );
    assert!(elapsed < Duration::from_secs(3), "cancel took {elapsed:?}");
    let after = gw.metrics();
    let name = "sluice_cancel_requests_total";
    let (b, a) = (
        before.get(name, &[("result", "forwarded")]),
        after.get(name, &[("result", "forwarded")]),
    );
    assert!(
        a >= b + 1.0,
        "{name}{{result=\"forwarded\"}} {b} -> {a}\n{}",
        after.lines_for(name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_wrong_secret_is_refused_and_counted() {
    let (pg, gw) = gateway();
    let before = gw.metrics();
    let key = ApiKey::shared();
    let mut s = wire::login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap();
    let marker = "not-cancelled-41ab";
    s.raw
        .send(&wire::query_bytes(&format!(
            "select pg_sleep(1.5), 'done' /* {marker} */"
        )))
        .await
        .unwrap();
    let pid = wait_active(pg, marker).await;
    assert_eq!(pid, s.pid);
    // Real pid, wrong secret.
    let mut c = wire::Raw::connect(gw.port).await;
    c.send(&cancel_bytes(s.pid, s.secret ^ 0x5a5a_1234))
        .await
        .unwrap();
    c.expect_close(Duration::from_secs(10), "cancel request")
        .await;
    let rows = s.read_result().await.expect("query must not be cancelled");
    assert_eq!(rows[0][1].as_deref(), Some("done"));
    let after = gw.metrics();
    let name = "sluice_cancel_requests_total";
    let bad = |m: &sluice_tests::Metrics| {
        m.get(name, &[("result", "unknown_key")]) + m.get(name, &[("result", "rate_limited")])
    };
    assert!(
        bad(&after) >= bad(&before) + 1.0,
        "bogus cancel not counted as unknown_key/rate_limited\n{}",
        after.lines_for(name)
    );
    assert_eq!(
        after.get(name, &[("result", "forwarded")]),
        before.get(name, &[("result", "forwarded")]),
        "a cancel with a wrong secret must not be forwarded"
    );
}

/// Rows of the COPY test: `id \t text` with text of 50–199 letters.
struct CopyGen {
    alphabet: Vec<u8>,
    next_id: u64,
}

impl CopyGen {
    fn new() -> Self {
        let mut alphabet = vec![0u8; 1 << 16];
        TestRng::new(42).fill(&mut alphabet);
        for b in alphabet.iter_mut() {
            *b = b'a' + (*b % 26);
        }
        CopyGen {
            alphabet,
            next_id: 0,
        }
    }

    /// Append rows to `buf` until it holds at least `size` bytes. Returns
    /// (rows, sum of text lengths).
    fn fill(&mut self, buf: &mut Vec<u8>, size: usize) -> (u64, u64) {
        let (mut rows, mut chars) = (0, 0);
        while buf.len() < size {
            let id = self.next_id;
            self.next_id += 1;
            let len = 50 + (id % 150) as usize;
            let start = ((id * 7919) % (self.alphabet.len() as u64 - 256)) as usize;
            buf.extend_from_slice(id.to_string().as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(&self.alphabet[start..start + len]);
            buf.push(b'\n');
            rows += 1;
            chars += len as u64;
        }
        (rows, chars)
    }
}

const COPY_OUT: &str = "COPY (select * from copy_t order by id) TO STDOUT";

/// Where the COPY output of `copy_t` first differs from the generator.
async fn first_difference(c: &tokio_postgres::Client) -> String {
    c.batch_execute("set work_mem = '512MB'").await.unwrap();
    let stream = c.copy_out(COPY_OUT).await.unwrap();
    pin_mut!(stream);
    let mut gen = CopyGen::new();
    let mut want: Vec<u8> = Vec::new();
    let mut offset = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if want.len() < chunk.len() {
            gen.fill(&mut want, chunk.len() + 65536);
        }
        if let Some(i) = chunk.iter().zip(want.iter()).position(|(a, b)| a != b) {
            let show = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned();
            return format!(
                "first difference at byte {}: got {:?}, expected {:?}",
                offset + i,
                show(&chunk[i.saturating_sub(20)..]),
                show(&want[i.saturating_sub(20)..])
            );
        }
        offset += chunk.len();
        want.drain(..chunk.len());
    }
    format!("no difference in the first {offset} bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_100mb_in_and_out() {
    const TOTAL: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let (pg, gw) = gateway();
    let via = gw.agent().await;
    via.batch_execute(
        "drop table if exists copy_t; create unlogged table copy_t (id int8, t text)",
    )
    .await
    .unwrap();

    let t0 = Instant::now();
    let mut gen = CopyGen::new();
    let mut in_hash = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut rows, mut chars, mut bytes) = (0u64, 0u64, 0usize);
    let sink = step(
        "COPY FROM STDIN start",
        via.copy_in("COPY copy_t FROM STDIN"),
    )
    .await
    .unwrap();
    pin_mut!(sink);
    while bytes < TOTAL {
        let mut buf = Vec::with_capacity(CHUNK + 256);
        let (r, c) = gen.fill(&mut buf, CHUNK);
        rows += r;
        chars += c;
        bytes += buf.len();
        in_hash.update(&buf);
        step("COPY send", sink.send(Bytes::from(buf)))
            .await
            .unwrap_or_else(|e| panic!("COPY data rejected after {bytes} bytes: {}", err_text(&e)));
    }
    let n = within(Duration::from_secs(120), "COPY finish", sink.finish())
        .await
        .unwrap();
    let in_hash = sluice_tests::hex(in_hash.finish().as_ref());
    println!("copy in: {bytes} bytes, {rows} rows in {:?}", t0.elapsed());
    assert_eq!(n, rows, "COPY FROM STDIN row count");

    let direct = pg.direct().await;
    let r = direct
        .query_one("select count(*), sum(length(t))::int8 from copy_t", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (rows as i64, chars as i64)
    );

    async fn copy_out_hash(c: &tokio_postgres::Client) -> (String, usize) {
        // Heap order is not insertion order (free space is reused, scans
        // synchronize), so ask for id order.
        c.batch_execute("set work_mem = '512MB'").await.unwrap();
        let stream = c.copy_out(COPY_OUT).await.unwrap();
        pin_mut!(stream);
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        let mut n = 0;
        while let Some(chunk) = step("COPY TO STDOUT data", stream.next()).await {
            let chunk = chunk.unwrap_or_else(|e| panic!("COPY OUT: {}", err_text(&e)));
            n += chunk.len();
            h.update(&chunk);
        }
        (sluice_tests::hex(h.finish().as_ref()), n)
    }
    let t1 = Instant::now();
    let (out_hash, out_bytes) = copy_out_hash(&via).await;
    println!("copy out: {out_bytes} bytes in {:?}", t1.elapsed());
    assert_eq!(
        out_bytes, bytes,
        "COPY TO STDOUT through the gateway: byte count"
    );
    if out_hash != in_hash {
        let (direct_hash, _) = copy_out_hash(&direct).await;
        let first_diff = first_difference(&via).await;
        panic!(
            "COPY TO STDOUT through the gateway differs from what went in \
             (direct copy out {} what went in); {first_diff}",
            if direct_hash == in_hash {
                "equals"
            } else {
                "also differs from"
            }
        );
    }
    via.batch_execute("drop table copy_t").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_aborted_by_client_keeps_session_usable() {
    let (_pg, gw) = gateway();
    let via = gw.agent().await;
    via.batch_execute("create temp table abort_t (a int)")
        .await
        .unwrap();
    {
        let sink = via.copy_in("COPY abort_t FROM STDIN").await.unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from_static(b"1\n2\n")).await.unwrap();
        // Dropped without finish(): tokio-postgres sends CopyFail.
    }
    let r = step(
        "query after CopyFail",
        via.query_one("select count(*) from abort_t", &[]),
    )
    .await
    .unwrap();
    assert_eq!(r.get::<_, i64>(0), 0);
    // Bad COPY data: the server's error comes back, the session survives.
    let sink = via.copy_in("COPY abort_t FROM STDIN").await.unwrap();
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\n")).await.ok();
    let e = step("bad copy finish", sink.finish()).await.unwrap_err();
    assert_eq!(db_code(&e).as_deref(), Some("22P02"), "{}", err_text(&e));
    let r = via.query_one("select 5::int4", &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_50mb_as_bind_parameter() {
    const SIZE: usize = 50 * 1024 * 1024;
    let (pg, gw) = gateway();
    let via = gw.agent().await;
    let mut v = vec![0u8; SIZE];
    TestRng::new(50).fill(&mut v);
    let want_sha = sha256_hex(&v);
    via.batch_execute(
        "drop table if exists big_t; create unlogged table big_t (id int primary key, v bytea)",
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let n = within(
        Duration::from_secs(120),
        "insert 50 MB",
        via.execute("insert into big_t values (1, $1)", &[&v]),
    )
    .await
    .unwrap_or_else(|e| panic!("insert of 50 MB value failed: {}", err_text(&e)));
    assert_eq!(n, 1);
    println!("50 MB insert took {:?}", t0.elapsed());
    let q = "select length(v), encode(sha256(v), 'hex'), md5(v) from big_t where id = 1";
    let r = via.query_one(q, &[]).await.unwrap();
    let d = pg.direct().await.query_one(q, &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0) as usize, SIZE);
    assert_eq!(
        r.get::<_, String>(1),
        want_sha,
        "stored value differs from what was sent"
    );
    assert_eq!(r.get::<_, String>(2), d.get::<_, String>(2));
    // And read back whole, through the gateway.
    let r = within(
        Duration::from_secs(120),
        "select 50 MB",
        via.query_one("select v from big_t where id = 1", &[]),
    )
    .await
    .unwrap();
    let back: Vec<u8> = r.get(0);
    assert_eq!(back.len(), SIZE);
    assert!(
        back == v,
        "50 MB value read back through the gateway differs"
    );
    // The same value as a text parameter (text format on the wire).
    let text: String = v.iter().map(|b| (b'a' + b % 26) as char).collect();
    let r = within(
        Duration::from_secs(120),
        "50 MB text param",
        via.query_one("select length($1::text), md5($1::text)", &[&text]),
    )
    .await
    .unwrap();
    let d = pg
        .direct()
        .await
        .query_one("select length($1::text), md5($1::text)", &[&text])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0) as usize, SIZE);
    assert_eq!(r.get::<_, String>(1), d.get::<_, String>(1));
    via.batch_execute("drop table big_t").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_statements_and_bytes() {
    let (_pg, gw) = gateway();
    let m0 = gw.metrics();
    let via = gw.agent().await;
    for i in 0..5i32 {
        let r = via.query_one("select $1::int4", &[&i]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), i);
    }
    via.simple_query("select repeat('z', 100000)")
        .await
        .unwrap();
    let m1 = gw.metrics();
    assert!(
        m1.get("sluice_connections_open", &[]) >= 1.0,
        "connections_open while a client is connected:\n{}",
        m1.lines_for("sluice_connections_open")
    );
    let d = |n: &str, l: &[(&str, &str)]| m1.get(n, l) - m0.get(n, l);
    assert!(
        d("sluice_statements_total", &[]) >= 6.0,
        "{}",
        m1.lines_for("sluice_statements_total")
    );
    assert!(
        d("sluice_bytes_total", &[("direction", "client_to_target")]) > 0.0,
        "{}",
        m1.lines_for("sluice_bytes_total")
    );
    assert!(
        d("sluice_bytes_total", &[("direction", "target_to_client")]) >= 100_000.0,
        "{}",
        m1.lines_for("sluice_bytes_total")
    );
    assert!(
        d("sluice_connections_total", &[]) >= 1.0,
        "{}",
        m1.lines_for("sluice_connections_total")
    );
    assert!(
        d("sluice_gateway_added_seconds_count", &[]) > 0.0,
        "{}",
        m1.lines_for("sluice_gateway_added_seconds")
    );
    assert!(
        m1.has("sluice_gateway_added_seconds", &[("quantile", "0.99")])
            || m1.has("sluice_gateway_added_seconds", &[]),
        "{}",
        m1.lines_for("sluice_gateway_added_seconds")
    );
    let (code, _) = gw.http_get("/healthz").unwrap();
    assert_eq!(code, 200);
    drop(via);
    // The gauge comes back down once the client is gone.
    gw.wait_connections_closed(Duration::from_secs(10)).await;
}
