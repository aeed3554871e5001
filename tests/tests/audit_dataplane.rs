//! The data plane's audit pipeline through the real `sluice-dp`, in static
//! mode (`audit.enabled: true`, no control plane): records spooled locally,
//! read back from the spool directory after the gateway stops
//! (`dataplane::audit::service::read_dir`). Nothing is mocked; the control
//! plane's side is tested where it lives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use proto::{AuditKind, AuditRecord, AuthMethod, Decision};
use sluice_tests::client::{err_text, step};
use sluice_tests::{audit_records, db_code, wire, ApiKey, Gateway, GatewayConfig, Pg};

fn audited(dir: &Path, extra: &str) -> GatewayConfig {
    GatewayConfig::standard(Pg::shared(), ApiKey::shared()).audit(dir, extra)
}

fn kind(r: &AuditRecord) -> AuditKind {
    AuditKind::try_from(r.metadata.as_ref().unwrap().kind).unwrap()
}

fn sql(r: &AuditRecord) -> &str {
    r.statement.as_ref().map_or("", |s| s.sql.as_str())
}

fn of_kind(recs: &[AuditRecord], k: AuditKind) -> Vec<&AuditRecord> {
    recs.iter().filter(|r| kind(r) == k).collect()
}

/// Statement records whose SQL contains `marker`.
fn with_marker<'a>(recs: &'a [AuditRecord], marker: &str) -> Vec<&'a AuditRecord> {
    recs.iter()
        .filter(|r| matches!(kind(r), AuditKind::Query | AuditKind::Execute))
        .filter(|r| sql(r).contains(marker))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_has_its_record_with_identity_connection_sql_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let c = gw.agent().await;
    step(
        "setup",
        c.batch_execute("create table if not exists audit_t1 (a int primary key, b text)"),
    )
    .await
    .unwrap();
    for i in 0..20 {
        step(
            "simple",
            c.simple_query(&format!("select {i} /* m1-{i} */")),
        )
        .await
        .unwrap();
    }
    // Extended protocol, unnamed statements (tokio-postgres prepares each).
    for i in 0..5 {
        let row = step(
            "extended",
            c.query_one("select $1::int + 1 /* m2 */", &[&i]),
        )
        .await
        .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    // A named prepared statement executed three times.
    let st = c
        .prepare("insert into audit_t1 values ($1, $2) /* m3 */")
        .await
        .unwrap();
    for i in 0..3 {
        c.execute(&st, &[&i, &"x"]).await.unwrap();
    }
    // An error, then a multi-statement query.
    let err = c
        .execute(&st, &[&1, &"dup"])
        .await
        .expect_err("duplicate key");
    assert_eq!(db_code(&err).as_deref(), Some("23505"));
    c.batch_execute("select 1 /* m4 */; select 2; select 3")
        .await
        .unwrap();
    // COPY FROM STDIN.
    let sink = c
        .copy_in("copy audit_t1 from stdin /* m5 */")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"10\ta\n11\tb\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    // An authentication failure.
    let bad = sluice_tests::connect(&gw.config("agent1", "wrong-key", "app")).await;
    assert_eq!(db_code(&bad.err().unwrap()).as_deref(), Some("28P01"));

    let m = gw.metrics();
    assert!(m.get("sluice_audit_records_total", &[("stage", "produced")]) >= 35.0);
    assert_eq!(m.get("sluice_audit_enabled", &[]), 1.0);
    drop(c);
    gw.wait_connections_closed(Duration::from_secs(10)).await;
    let statements = gw.metrics().get("sluice_statements_total", &[]);
    gw.stop();

    let recs = audit_records(dir.path());
    // Sequences 1..n, gap-free, one node.
    let seqs: Vec<u64> = recs
        .iter()
        .map(|r| r.metadata.as_ref().unwrap().sequence)
        .filter(|&s| s > 0)
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // Exactly one statement record per Query or Execute message.
    let stmt_records = recs
        .iter()
        .filter(|r| matches!(kind(r), AuditKind::Query | AuditKind::Execute))
        .count();
    assert_eq!(stmt_records as f64, statements);

    // Simple queries: each once, with everything the record must carry.
    for i in 0..20 {
        let got = with_marker(&recs, &format!("m1-{i} "));
        assert_eq!(got.len(), 1, "m1-{i}");
        let r = got[0];
        assert_eq!(kind(r), AuditKind::Query);
        assert_eq!(sql(r), format!("select {i} /* m1-{i} */"));
        let id = r.identity.as_ref().unwrap();
        assert_eq!(id.name, "agent1");
        assert_eq!(id.groups, ["bots"]);
        assert_eq!(id.auth_method, AuthMethod::ScramApiKey as i32);
        let conn = r.connection.as_ref().unwrap();
        assert_eq!(conn.name, "app");
        assert_eq!(conn.database, "appdb");
        assert_eq!(conn.role, "app_owner");
        let sess = r.session.as_ref().unwrap();
        assert!(sess.client_address.starts_with("127.0.0.1:"), "{sess:?}");
        assert!(!sess.id.is_empty());
        let o = r.outcome.as_ref().unwrap();
        assert_eq!(o.decision, Decision::Allow as i32);
        assert_eq!(o.rows, 1);
        assert!(o.bytes > 0 && o.duration_nanos > 0, "{o:?}");
        assert!(o.sqlstate.is_empty());
        let md = r.metadata.as_ref().unwrap();
        assert!(md.time_unix_nanos > 1_600_000_000_000_000_000);
        assert!(md.core_seq > 0);
        assert_eq!(md.snapshot_version, 1);
        assert!(!md.node_id.is_empty() && md.id == format!("{}-{}", md.node_id, md.sequence));
    }
    // Extended: PARSE, BIND, EXECUTE with the SQL; bind parameter lengths.
    let m2 = with_marker(&recs, "/* m2 */");
    assert_eq!(m2.len(), 5);
    for r in &m2 {
        assert_eq!(kind(r), AuditKind::Execute);
        let s = r.statement.as_ref().unwrap();
        assert_eq!(
            (s.parameter_count, s.parameter_lengths.as_slice()),
            (1, &[4][..])
        );
        assert_eq!(r.outcome.as_ref().unwrap().rows, 1);
    }
    let parses = of_kind(&recs, AuditKind::Parse);
    assert!(parses.iter().any(|r| sql(r).contains("/* m2 */")));
    // The prepared statement: 3 successful executions, then the error.
    let m3 = with_marker(&recs, "/* m3 */");
    assert_eq!(m3.len(), 4);
    assert!(m3
        .iter()
        .all(|r| !r.statement.as_ref().unwrap().statement_name.is_empty()));
    let codes: Vec<&str> = m3
        .iter()
        .map(|r| r.outcome.as_ref().unwrap().sqlstate.as_str())
        .collect();
    assert_eq!(codes, ["", "", "", "23505"]);
    assert!(m3[3]
        .outcome
        .as_ref()
        .unwrap()
        .error_message
        .contains("duplicate key"));
    // One record for the multi-statement query.
    let m4 = with_marker(&recs, "/* m4 */");
    assert_eq!(m4.len(), 1);
    assert_eq!(m4[0].outcome.as_ref().unwrap().rows, 3);
    // COPY: the row count from its command tag.
    let m5 = with_marker(&recs, "/* m5 */");
    assert_eq!(m5.len(), 1);
    assert_eq!(m5[0].outcome.as_ref().unwrap().rows, 2);
    // Sessions: a start and an end for each (the setup and failed login
    // make none), the failure recorded with who and why.
    let starts = of_kind(&recs, AuditKind::SessionStart);
    let ends = of_kind(&recs, AuditKind::SessionEnd);
    assert_eq!(starts.len(), 1);
    assert_eq!(ends.len(), 1);
    assert_eq!(
        starts[0].session.as_ref().unwrap().id,
        ends[0].session.as_ref().unwrap().id
    );
    assert!(ends[0].outcome.as_ref().unwrap().bytes > 0);
    let fails = of_kind(&recs, AuditKind::AuthFailure);
    assert_eq!(fails.len(), 1);
    let f = fails[0];
    assert_eq!(f.identity.as_ref().unwrap().name, "agent1");
    assert_eq!(f.connection.as_ref().unwrap().name, "app");
    assert!(f
        .session
        .as_ref()
        .unwrap()
        .client_address
        .starts_with("127.0.0.1:"));
    let o = f.outcome.as_ref().unwrap();
    assert_eq!(
        (o.decision, o.sqlstate.as_str()),
        (Decision::Deny as i32, "28P01")
    );
    assert!(o.error_message.starts_with("bad_password: "), "{o:?}");
    assert_eq!(of_kind(&recs, AuditKind::SnapshotApplied).len(), 1);
}

/// A session refused after its start was recorded (a client encoding the
/// masker cannot read, asked for at login) is closed in the trail: its
/// SessionEnd carries the error the client got. (It had a start and no
/// end, an "allowed" session that never finished.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refused_after_its_start_is_closed_in_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let mut c = std::process::Command::new("psql");
    c.env("PGCLIENTENCODING", "SJIS")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PSQLRC", "/dev/null")
        .args([
            "-X",
            "-c",
            "select 1",
            &gw.url("agent1", &ApiKey::shared().key, "app", "sslmode=disable"),
        ]);
    let out = sluice_tests::process::run(&mut c, None, Duration::from_secs(60));
    assert!(!out.status.success(), "psql with SJIS was let in");
    assert!(
        out.stderr.contains("client_encoding SJIS"),
        "{}",
        out.stderr
    );
    gw.stop();
    let recs = audit_records(dir.path());
    let starts = of_kind(&recs, AuditKind::SessionStart);
    let ends = of_kind(&recs, AuditKind::SessionEnd);
    assert_eq!((starts.len(), ends.len()), (1, 1), "{recs:#?}");
    assert_eq!(
        starts[0].session.as_ref().unwrap().id,
        ends[0].session.as_ref().unwrap().id
    );
    let o = ends[0].outcome.as_ref().unwrap();
    assert_eq!(o.sqlstate, "0A000", "{o:?}");
    assert!(o.error_message.contains("client_encoding SJIS"), "{o:?}");
}

/// What was masked, per rule and column, is in the statement's record;
/// SQL text and bind parameters are recorded through the masking engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_masked_counts_and_masked_sql_and_parameters() {
    const CARD: &str = "4111 1111 1111 1111";
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let c = gw.agent().await;
    step(
        "setup",
        c.batch_execute(&format!(
            "drop table if exists audit_pii; \
             create table audit_pii (id int, contact text, card text); \
             insert into audit_pii values \
               (1, 'ann@example.com', '{CARD}'), \
               (2, 'bob@example.org', 'none'), \
               (3, 'no contact', '{CARD}') /* m6-insert */"
        )),
    )
    .await
    .unwrap();
    // Simple protocol: 2 e-mails in `contact`, 2 cards in `card`.
    let rows = step(
        "simple",
        c.simple_query("select id, contact, card from audit_pii order by id /* m6 */"),
    )
    .await
    .unwrap();
    assert!(!format!("{rows:?}").contains("ann@example.com"));
    // Extended protocol: a text parameter holding a card, an int
    // parameter, and a card number sent as a binary int8 (read by the type
    // PostgreSQL described for it, then masked).
    let got = step(
        "extended",
        c.query(
            "select contact from audit_pii where card = $1 and id < $2 and $3::int8 <> 0 /* m7 */",
            &[&CARD, &3i32, &4_111_111_111_111_111i64],
        ),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
    // A card literal in the SQL text itself.
    step(
        "literal",
        c.simple_query(&format!("select '{CARD}' /* m8 */")),
    )
    .await
    .unwrap();
    // Binary arrays and timestamps are read by type too: an e-mail inside
    // a text[] is masked like any other.
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    step(
        "array",
        c.query(
            "select cardinality($1::text[]), $2::timestamptz /* m9 */",
            &[&vec!["ann@example.com", "plain"], &when],
        ),
    )
    .await
    .unwrap();
    drop(c);
    gw.wait_connections_closed(Duration::from_secs(10)).await;
    gw.stop();

    let recs = audit_records(dir.path());
    let masked = |r: &AuditRecord| {
        let mut m: Vec<(String, String, u64)> = r
            .outcome
            .as_ref()
            .unwrap()
            .masked
            .iter()
            .map(|m| (m.rule.clone(), m.column.clone(), m.count))
            .collect();
        m.sort();
        m
    };
    let e = |r: &str, c: &str, n| (r.to_string(), c.to_string(), n);
    let m6 = with_marker(&recs, "/* m6 */");
    assert_eq!(m6.len(), 1);
    assert_eq!(
        masked(m6[0]),
        [e("email", "contact", 2), e("payment_card", "card", 2)]
    );
    // Statements that returned nothing sensitive say so.
    assert_eq!(m6[0].statement.as_ref().unwrap().statement_kind, "select");
    let ins = with_marker(&recs, "m6-insert");
    assert_eq!(ins.len(), 1);
    // Statement kinds: every kind of a multi-statement text, in order.
    assert_eq!(
        ins[0].statement.as_ref().unwrap().statement_kind,
        "ddl,insert"
    );
    assert!(masked(ins[0]).is_empty());
    // The INSERT's SQL is recorded with its values masked.
    assert!(!sql(ins[0]).contains("4111") && !sql(ins[0]).contains("ann@example.com"));
    assert!(sql(ins[0]).contains("insert into audit_pii values"));

    let m7 = with_marker(&recs, "/* m7 */");
    assert_eq!(m7.len(), 1);
    assert_eq!(kind(m7[0]), AuditKind::Execute);
    assert_eq!(masked(m7[0]), [e("email", "contact", 1)]);
    let st = m7[0].statement.as_ref().unwrap();
    assert_eq!(st.statement_kind, "select");
    assert_eq!(st.parameters.len(), 3, "{st:?}");
    assert!(!st.parameters[0].contains("4111"), "{st:?}");
    assert_eq!(st.parameters[0].len(), CARD.len(), "{st:?}");
    assert_eq!(st.parameters[1], "3");
    let int8 = &st.parameters[2];
    assert!(
        int8.len() == 16 && !int8.contains("4111") && int8.ends_with("1111"),
        "{st:?}"
    );
    assert!(st.parameter_nulls.is_empty());
    let binds: Vec<_> = of_kind(&recs, AuditKind::Bind)
        .into_iter()
        .filter(|r| sql(r).contains("/* m7 */"))
        .collect();
    assert_eq!(binds.len(), 1);
    assert_eq!(
        binds[0].statement.as_ref().unwrap().parameters,
        st.parameters
    );

    let m8 = with_marker(&recs, "/* m8 */");
    assert_eq!(m8.len(), 1);
    assert!(!sql(m8[0]).contains("4111"), "{}", sql(m8[0]));
    // The result column (unnamed) held the card too.
    assert_eq!(masked(m8[0]), [e("payment_card", "?column?", 1)]);
    let m9 = with_marker(&recs, "/* m9 */");
    let m9: Vec<_> = m9
        .into_iter()
        .filter(|r| kind(r) == AuditKind::Execute)
        .collect();
    assert_eq!(m9.len(), 1);
    let p = &m9[0].statement.as_ref().unwrap().parameters;
    assert!(
        p[0].starts_with('{') && p[0].ends_with(",plain}") && !p[0].contains("ann@"),
        "{p:?}"
    );
    assert_eq!(p[1], "2023-11-14 22:13:20+00", "{p:?}");
    // No record anywhere holds the card or the e-mails in the clear.
    for r in &recs {
        let text = format!("{r:?}");
        assert!(
            !text.contains("4111 1111 1111 1111")
                && !text.contains("4111111111111111")
                && !text.contains("ann@example.com"),
            "{text}"
        );
    }
}

/// Send `frames` in one write; read until `syncs` ReadyForQuery, giving
/// the tags seen and the SQLSTATEs of the errors.
async fn pipeline(s: &mut wire::Session, frames: &[u8], syncs: usize) -> (String, Vec<String>) {
    s.raw.send(frames).await.expect("send pipeline");
    let (mut tags, mut codes) = (String::new(), Vec::new());
    let mut ready = 0;
    while ready < syncs {
        let m = s.raw.read_msg().await;
        tags.push(m.tag_char());
        match m.tag {
            b'E' => codes.push(wire::ErrorFields::parse(&m.body).code().to_string()),
            b'Z' => ready += 1,
            _ => {}
        }
    }
    (tags, codes)
}

/// A raw protocol session through `gw`, logged in as agent1.
async fn raw_session(gw: &Gateway) -> wire::Session {
    wire::login(gw.port, "agent1", "app", &ApiKey::shared().key)
        .await
        .unwrap_or_else(|e| panic!("raw login failed: {e}"))
}

/// Bind prepared statement `stmt` (no parameters) to `portal`.
fn bind_portal(buf: &mut bytes::BytesMut, portal: &str, stmt: &str) {
    let no_params: [Option<&[u8]>; 0] = [];
    let bound = postgres_protocol::message::frontend::bind(
        portal,
        stmt,
        std::iter::empty::<i16>(),
        no_params,
        |_, _| Ok(postgres_protocol::IsNull::No),
        std::iter::empty::<i16>(),
        buf,
    );
    assert!(bound.is_ok(), "bind message");
}

/// Bind prepared statement `stmt` (no parameters) to the unnamed portal
/// and execute it.
fn bind_execute(buf: &mut bytes::BytesMut, stmt: &str) {
    bind_portal(buf, "", stmt);
    postgres_protocol::message::frontend::execute("", 0, buf).unwrap();
}

/// Terminate the raw session, then stop `gw` once it has closed it.
async fn end_raw_session(mut s: wire::Session, gw: Gateway) {
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut buf);
    s.raw.send(&buf.split()).await.unwrap();
    drop(s);
    gw.wait_connections_closed(Duration::from_secs(10)).await;
    gw.stop();
}

/// PostgreSQL drops a portal when its transaction ends (at Sync outside a
/// transaction block, at COMMIT inside one): an Execute of it after that
/// ran nothing (34000), and its record says so, with no SQL; inside the
/// block the portal runs its statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_of_a_portal_whose_transaction_ended_records_no_sql() {
    use postgres_protocol::message::frontend;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let mut s = raw_session(&gw).await;
    let mut buf = bytes::BytesMut::new();
    let sql = "select 1 /* m10-portal */";
    frontend::parse("s1", sql, None, &mut buf).unwrap();
    bind_portal(&mut buf, "p1", "s1");
    frontend::sync(&mut buf);
    assert_eq!(
        pipeline(&mut s, &buf.split(), 1).await,
        ("12Z".into(), vec![])
    );
    // The Sync ended the implicit transaction, and p1 with it.
    frontend::execute("p1", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    assert_eq!(
        pipeline(&mut s, &buf.split(), 1).await,
        ("EZ".into(), vec!["34000".into()])
    );
    // Inside BEGIN … COMMIT, p2 outlives a Sync, not the COMMIT.
    frontend::query("begin", &mut buf).unwrap();
    bind_portal(&mut buf, "p2", "s1");
    frontend::sync(&mut buf);
    frontend::execute("p2", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    frontend::query("commit", &mut buf).unwrap();
    assert_eq!(
        pipeline(&mut s, &buf.split(), 4).await,
        ("CZ2ZDCZCZ".into(), vec![])
    );
    frontend::execute("p2", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    assert_eq!(
        pipeline(&mut s, &buf.split(), 1).await,
        ("EZ".into(), vec!["34000".into()])
    );
    end_raw_session(s, gw).await;

    let recs = audit_records(dir.path());
    let executes: Vec<(&str, &str, &str)> = of_kind(&recs, AuditKind::Execute)
        .into_iter()
        .map(|r| {
            let st = r.statement.as_ref().unwrap();
            let code = r.outcome.as_ref().unwrap().sqlstate.as_str();
            (st.portal_name.as_str(), st.sql.as_str(), code)
        })
        .collect();
    assert_eq!(
        executes,
        [("p1", "", "34000"), ("p2", sql, ""), ("p2", "", "34000")]
    );
}

/// A Parse PostgreSQL rejects (a duplicate statement name) changes nothing
/// in what the records say later Binds and Executes ran: the statement
/// PostgreSQL still has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_parse_does_not_change_the_sql_of_later_records() {
    use postgres_protocol::message::frontend;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let mut s = raw_session(&gw).await;
    let mut buf = bytes::BytesMut::new();
    // s1 is `select 1`.
    frontend::parse("s1", "select 1 /* m9-original */", None, &mut buf).unwrap();
    frontend::sync(&mut buf);
    assert_eq!(
        pipeline(&mut s, &buf.split(), 1).await,
        ("1Z".into(), vec![])
    );
    // A second Parse of s1 is refused (42P05); the Bind and Execute after
    // it are skipped.
    frontend::parse("s1", "select 2 /* m9-rejected */", None, &mut buf).unwrap();
    bind_execute(&mut buf, "s1");
    frontend::sync(&mut buf);
    assert_eq!(
        pipeline(&mut s, &buf.split(), 1).await,
        ("EZ".into(), vec!["42P05".into()])
    );
    // Run s1: PostgreSQL runs `select 1`.
    bind_execute(&mut buf, "s1");
    frontend::sync(&mut buf);
    let (tags, codes) = pipeline(&mut s, &buf.split(), 1).await;
    assert_eq!((tags.as_str(), codes.len()), ("2DCZ", 0));
    // Once more in one write past a Sync: the rejected Parse, Sync, then
    // Bind and Execute of s1 (sent before the error came back).
    frontend::parse("s1", "select 3 /* m9-rejected-too */", None, &mut buf).unwrap();
    frontend::sync(&mut buf);
    bind_execute(&mut buf, "s1");
    frontend::sync(&mut buf);
    assert_eq!(
        pipeline(&mut s, &buf.split(), 2).await,
        ("EZ2DCZ".into(), vec!["42P05".into()])
    );
    end_raw_session(s, gw).await;

    let recs = audit_records(dir.path());
    let run: Vec<(AuditKind, &str, &str)> = recs
        .iter()
        .filter(|r| matches!(kind(r), AuditKind::Bind | AuditKind::Execute))
        .filter(|r| !r.outcome.as_ref().unwrap().skipped)
        .map(|r| {
            let st = r.statement.as_ref().unwrap();
            (kind(r), st.statement_name.as_str(), st.sql.as_str())
        })
        .collect();
    let original = "select 1 /* m9-original */";
    assert_eq!(
        run,
        [
            (AuditKind::Bind, "s1", original),
            (AuditKind::Execute, "s1", original),
            (AuditKind::Bind, "s1", original),
            (AuditKind::Execute, "s1", original),
        ]
    );
    let executed = of_kind(&recs, AuditKind::Execute);
    assert!(executed
        .iter()
        .filter(|r| sql(r).contains("m9-rejected"))
        .all(|r| r.outcome.as_ref().unwrap().skipped));
    let refused: Vec<&str> = of_kind(&recs, AuditKind::Parse)
        .into_iter()
        .filter(|r| r.outcome.as_ref().unwrap().sqlstate == "42P05")
        .map(sql)
        .collect();
    assert_eq!(
        refused,
        [
            "select 2 /* m9-rejected */",
            "select 3 /* m9-rejected-too */"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_through_two_nodes_give_exactly_one_record_each() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let g1 = Gateway::start_with(&audited(d1.path(), ""));
    let g2 = Gateway::start_with(&audited(d2.path(), ""));
    let n = 200;
    let mut tasks = Vec::new();
    for (k, gw) in [&g1, &g2].into_iter().enumerate() {
        for t in 0..2 {
            let cfg = gw.agent_config();
            tasks.push(tokio::spawn(async move {
                let c = sluice_tests::connect(&cfg).await.unwrap();
                for i in 0..n / 4 {
                    c.simple_query(&format!("select 1 /* two-{k}-{t}-{i} */"))
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    g1.wait_connections_closed(Duration::from_secs(10)).await;
    g2.wait_connections_closed(Duration::from_secs(10)).await;
    g1.stop();
    g2.stop();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut nodes = Vec::new();
    for d in [&d1, &d2] {
        let recs = audit_records(d.path());
        nodes.push(recs[0].metadata.as_ref().unwrap().node_id.clone());
        for r in with_marker(&recs, "/* two-") {
            *seen.entry(sql(r).to_string()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), n, "every statement has a record");
    assert!(seen.values().all(|&c| c == 1), "and only one");
    assert_ne!(nodes[0], nodes[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_keeps_the_record_of_every_completed_statement() {
    let dir = tempfile::tempdir().unwrap();
    // The default ring directory (under /dev/shm): what a node runs with.
    let mut cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared());
    cfg.audit = Some(format!(
        "{{ enabled: true, spool_dir: {} }}",
        sluice_tests::gateway::y(&dir.path().display().to_string())
    ));
    let gw = Gateway::start_with(&cfg);
    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let cfg = gw.agent_config();
        let completed = completed.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let c = sluice_tests::connect(&cfg).await.unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let marker = format!("kill-{t}-{i} ");
                // Simple and extended in turn.
                let ok = if i.is_multiple_of(2) {
                    c.simple_query(&format!("select 1 /* {marker}*/"))
                        .await
                        .is_ok()
                } else {
                    c.query(&format!("select $1::int /* {marker}*/"), &[&1i32])
                        .await
                        .is_ok()
                };
                if !ok {
                    return;
                }
                completed.lock().unwrap().push(marker);
                i += 1;
            }
        }));
    }
    // Let the load run, then kill the node in the middle of it.
    while completed.lock().unwrap().len() < 600 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.kill();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let done = completed.lock().unwrap().clone();

    // Restart on the same spool directory: recovery moves the rings into
    // the spool; then stop cleanly and look.
    let gw2 = Gateway::start_with(&cfg);
    assert!(gw2.log().contains("audit spool open"), "{}", gw2.log());
    gw2.stop();
    let rings = dataplane::audit::service::default_ring_dir(dir.path());
    assert!(
        !rings.exists(),
        "a clean stop removes the drained rings: {rings:?}"
    );
    let recs = sluice_tests::audit_records_in(dir.path(), None);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &recs {
        if let Some(i) = sql(r).find("kill-") {
            let s = sql(r);
            let end = s[i..].find(' ').map_or(s.len(), |e| i + e + 1);
            if matches!(kind(r), AuditKind::Query | AuditKind::Execute) {
                *count.entry(&s[i..end]).or_default() += 1;
            }
        }
    }
    let missing: Vec<&String> = done
        .iter()
        .filter(|m| !count.contains_key(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} completed statements have no record: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let dupes: Vec<_> = count.iter().filter(|(_, &c)| c > 1).collect();
    assert!(dupes.is_empty(), "duplicated records: {dupes:?}");
    let seqs: Vec<u64> = recs
        .iter()
        .map(|r| r.metadata.as_ref().unwrap().sequence)
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    println!(
        "{} statements completed before SIGKILL, {} statement records after recovery",
        done.len(),
        count.len()
    );
}

/// Run statements until the gateway refuses one; returns the markers that
/// completed and the refusal.
async fn run_until_refused(
    gw: &Gateway,
    prefix: &str,
    limit: usize,
) -> (Vec<String>, Option<tokio_postgres::Error>) {
    let mut done = Vec::new();
    let mut c = gw.agent().await;
    for i in 0..limit {
        let marker = format!("{prefix}-{i} ");
        match c
            .simple_query(&format!("select '{}' /* {marker}*/", "x".repeat(200)))
            .await
        {
            Ok(_) => done.push(marker),
            Err(e) => {
                if db_code(&e).as_deref() == Some("53100") {
                    return (done, Some(e));
                }
                // The session was closed under us: reconnect and go on.
                assert!(c.is_closed(), "{}", err_text(&e));
                c = gw.agent().await;
            }
        }
    }
    (done, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_spool_quota_statements_are_refused_and_no_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let small = audited(
        dir.path(),
        "quota_bytes: 65536, ring_bytes: 65536, max_sql_bytes: 1024",
    );
    let gw = Gateway::start_with(&small.clone().workers(1));
    let (done, refused) = run_until_refused(&gw, "quota", 5000).await;
    let e = refused.expect("statements are refused once the spool is full");
    let msg = err_text(&e);
    assert!(msg.contains("53100") && msg.contains("audit"), "{msg}");
    assert!(
        done.len() > 50,
        "some statements ran first ({})",
        done.len()
    );
    // New sessions are refused too, with the same clear error.
    let again = sluice_tests::connect(&gw.agent_config()).await;
    if let Ok(c) = again {
        let e = c.simple_query("select 1").await.unwrap_err();
        assert_eq!(db_code(&e).as_deref(), Some("53100"), "{}", err_text(&e));
    } else {
        let e = again.err().unwrap();
        assert_eq!(db_code(&e).as_deref(), Some("53100"), "{}", err_text(&e));
    }
    let m = gw.metrics();
    assert!(m.get("sluice_audit_refused_total", &[]) >= 1.0);
    assert_eq!(m.get("sluice_audit_spool_accepting", &[]), 0.0);
    assert_eq!(m.get("sluice_audit_unaudited_total", &[]), 0.0);
    assert!(m.get("sluice_audit_spool_bytes", &[]) <= 65536.0);
    gw.stop();

    // Nothing was dropped: what did not fit in the spool waits in the ring.
    // The operator raises the quota; the next start moves it all over.
    let bigger = GatewayConfig::standard(Pg::shared(), ApiKey::shared())
        .audit(dir.path(), "quota_bytes: 10485760")
        .workers(1);
    let gw2 = Gateway::start_with(&bigger);
    let c = gw2.agent().await;
    c.simple_query("select 1").await.unwrap();
    drop(c);
    gw2.wait_connections_closed(Duration::from_secs(10)).await;
    gw2.stop();
    let recs = audit_records(dir.path());
    let (spooled, in_rings) =
        dataplane::audit::service::read_dir(dir.path(), Some(&dir.path().join("rings"))).unwrap();
    assert!(in_rings.is_empty(), "all moved to the spool");
    assert_eq!(spooled.len(), recs.len());
    for marker in &done {
        assert_eq!(with_marker(&recs, marker).len(), 1, "{marker}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_runs_statements_past_the_quota_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = audited(
        dir.path(),
        "quota_bytes: 32768, ring_bytes: 65536, max_sql_bytes: 1024, when_full: fail_open",
    )
    .workers(1);
    let gw = Gateway::start_with(&cfg);
    let (done, refused) = run_until_refused(&gw, "open", 1500).await;
    assert!(refused.is_none(), "fail open never refuses");
    assert_eq!(done.len(), 1500);
    // (The session's end record is dropped too, once the client has gone:
    // count after that.)
    gw.wait_connections_closed(Duration::from_secs(10)).await;
    let m = gw.metrics();
    let unaudited = m.get("sluice_audit_unaudited_total", &[]);
    assert!(unaudited > 0.0, "records were lost and counted");
    assert_eq!(m.get("sluice_audit_refused_total", &[]), 0.0);
    gw.stop();
    assert!(gw.log().contains("ran unaudited"), "logged");
    // And in the trail itself, past the quota: every record dropped is
    // counted by a RECORDS_LOST record of the core that dropped it.
    let recs = audit_records(dir.path());
    let reports = of_kind(&recs, AuditKind::RecordsLost);
    assert!(!reports.is_empty());
    let mut lost = 0;
    for r in reports {
        let l = r.loss.as_ref().unwrap();
        assert_eq!(
            (l.reason.as_str(), r.metadata.as_ref().unwrap().core),
            ("fail_open", 0)
        );
        assert!(l.since_unix_nanos <= l.until_unix_nanos, "{l:?}");
        lost += l.records;
    }
    assert_eq!(lost as f64, unaudited);
}

#[test]
fn pgbench_statements_match_records() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new("pgbench");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &gw.port.to_string(),
            "-U",
            "agent1",
        ])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", &ApiKey::shared().key)
        .env("PGSSLMODE", "disable");
        let out = sluice_tests::process::run(&mut c, None, Duration::from_secs(120));
        out.assert_success(&format!("pgbench {args:?}"));
        out
    };
    run(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        run(&["-n", "-S", "-c", "4", "-j", "2", "-t", "200", "-M", mode]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.metrics().get("sluice_connections_open", &[]) > 0.0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let statements = gw.metrics().get("sluice_statements_total", &[]);
    gw.stop();
    let recs = audit_records(dir.path());
    let stmt_records = recs
        .iter()
        .filter(|r| matches!(kind(r), AuditKind::Query | AuditKind::Execute))
        .count();
    assert!(statements >= 3.0 * 800.0);
    assert_eq!(stmt_records as f64, statements);
    let selects = recs
        .iter()
        .filter(|r| matches!(kind(r), AuditKind::Query | AuditKind::Execute))
        .filter(|r| sql(r).starts_with("SELECT abalance FROM pgbench_accounts"))
        .count();
    assert_eq!(selects, 3 * 800);
    assert!(recs
        .iter()
        .all(|r| r.outcome.as_ref().is_none_or(|o| o.sqlstate.is_empty())));
}

/// PostgreSQL keys prepared statements and portals by the first 63 bytes
/// of their names (NAMEDATALEN - 1): a Bind that names a longer statement
/// by another name with the same first 63 bytes runs it. Its records must
/// carry that statement's SQL, as PostgreSQL ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_statement_names_are_matched_as_postgres_matches_them() {
    use postgres_protocol::message::frontend;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let mut s = raw_session(&gw).await;
    let mut buf = bytes::BytesMut::new();
    let stem = "n".repeat(63);
    let (made, used) = (format!("{stem}-made"), format!("{stem}-used"));
    frontend::parse(&made, "select 1 /* m10-long */", None, &mut buf).unwrap();
    frontend::sync(&mut buf);
    assert_eq!(
        pipeline(&mut s, &buf.split(), 1).await,
        ("1Z".into(), vec![])
    );
    bind_execute(&mut buf, &used);
    frontend::sync(&mut buf);
    let (tags, codes) = pipeline(&mut s, &buf.split(), 1).await;
    assert_eq!((tags.as_str(), codes.len()), ("2DCZ", 0), "{codes:?}");
    end_raw_session(s, gw).await;

    let recs = audit_records(dir.path());
    let execs = of_kind(&recs, AuditKind::Execute);
    let exec = execs
        .iter()
        .find(|r| {
            r.statement
                .as_ref()
                .unwrap()
                .statement_name
                .starts_with(&stem)
        })
        .unwrap_or_else(|| panic!("no EXECUTE of the long name: {recs:?}"));
    assert_eq!(sql(exec), "select 1 /* m10-long */");
}

/// Send agent1's startup and read the authentication request.
async fn auth_started(raw: &mut wire::Raw) {
    let startup = wire::startup_bytes(&[("user", "agent1"), ("database", "app")]);
    raw.send(&startup).await.unwrap();
    assert_eq!(raw.read_msg().await.tag_char(), 'R');
}

/// A login that fails inside the authentication exchange with a malformed
/// message (a SCRAM proof that is not base64, a Query where the password
/// goes, an oversize authentication message) is still an authentication
/// failure of the identity it named: the client gets 08P01 and the trail an
/// AUTH_FAILURE record, counted under `protocol_violation`. (They left no
/// record and no auth-failure count: probing an identity with malformed
/// exchanges left no trace in the audit trail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authentication_exchanges_are_auth_failures() {
    use postgres_protocol::message::frontend;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let before = gw.metrics();
    // A SCRAM client-final-message whose proof is not base64.
    let mut raw = wire::Raw::connect(gw.port).await;
    auth_started(&mut raw).await;
    let mut b = bytes::BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdefghijkl", &mut b).unwrap();
    raw.send(&b).await.unwrap();
    let m = raw.read_msg().await;
    let first = String::from_utf8_lossy(&m.body[4..]).into_owned();
    let nonce = first.split(',').next().unwrap();
    let mut b = bytes::BytesMut::new();
    frontend::sasl_response(format!("c=biws,{nonce},p=!!!!").as_bytes(), &mut b).unwrap();
    raw.send(&b).await.unwrap();
    let c = raw.expect_close(Duration::from_secs(5), "bad proof").await;
    assert_eq!(c.errors[0].code(), "08P01", "{}", c.errors[0]);
    // A Query instead of the SASLInitialResponse.
    let mut raw = wire::Raw::connect(gw.port).await;
    auth_started(&mut raw).await;
    raw.send(&wire::query_bytes("select 1")).await.unwrap();
    let c = raw.expect_close(Duration::from_secs(5), "query").await;
    assert_eq!(c.errors[0].code(), "08P01", "{}", c.errors[0]);
    // An authentication message longer than the gateway reads.
    let mut raw = wire::Raw::connect(gw.port).await;
    auth_started(&mut raw).await;
    let mut big = vec![b'p'];
    big.extend_from_slice(&10_000_000u32.to_be_bytes());
    raw.send(&big).await.unwrap();
    let c = raw.expect_close(Duration::from_secs(5), "oversize").await;
    assert_eq!(c.errors[0].code(), "08P01", "{}", c.errors[0]);

    let name = "sluice_auth_failures_total";
    let label = [("reason", "protocol_violation")];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while gw.metrics().get(name, &label) < before.get(name, &label) + 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "malformed logins not counted:\n{}",
            gw.metrics().lines_for(name)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop();
    let recs = audit_records(dir.path());
    let fails = of_kind(&recs, AuditKind::AuthFailure);
    assert_eq!(fails.len(), 3, "{fails:?}");
    for f in fails {
        assert_eq!(f.identity.as_ref().unwrap().name, "agent1");
        assert_eq!(f.connection.as_ref().unwrap().name, "app");
        let o = f.outcome.as_ref().unwrap();
        assert_eq!(
            (o.decision, o.sqlstate.as_str()),
            (Decision::Deny as i32, "08P01")
        );
        assert!(o.error_message.starts_with("protocol_violation: "), "{o:?}");
    }
}

/// The names a refused client gave are kept in its AUTH_FAILURE record cut
/// to PostgreSQL's name length (63 bytes, marked with `…`): no identity or
/// connection name is longer, and a client must not write kilobytes into
/// the trail (and the spool's quota) with each refused login. (A 9 000-byte
/// user name was stored whole, twice: name and message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_records_keep_names_cut_to_63_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), ""));
    let long = "x".repeat(9_000);
    let mut raw = wire::Raw::connect(gw.port).await;
    raw.send(&wire::startup_bytes(&[
        ("user", &long),
        ("database", "app"),
    ]))
    .await
    .unwrap();
    let c = raw.expect_close(Duration::from_secs(5), "long user").await;
    assert_eq!(c.errors[0].code(), "28000", "{}", c.errors[0]);
    let n = c.errors[0].message().len();
    assert!(n < 200, "the error echoes {n} bytes");
    let e = wire::login(gw.port, "agent1", &long, &ApiKey::shared().key)
        .await
        .err()
        .expect("a 9000-byte connection name was accepted");
    assert_eq!(e.code(), "3D000", "{e}");
    let n = e.message().len();
    assert!(n < 200, "the error echoes {n} bytes");
    gw.stop();
    let recs = audit_records(dir.path());
    let fails = of_kind(&recs, AuditKind::AuthFailure);
    assert_eq!(fails.len(), 2, "{fails:?}");
    let cut = format!("{}…", "x".repeat(63));
    let named = |f: &&AuditRecord| {
        (
            f.identity.as_ref().unwrap().name.clone(),
            f.connection.as_ref().unwrap().name.clone(),
        )
    };
    let mut names: Vec<(String, String)> = fails.iter().map(named).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("agent1".to_string(), cut.clone()),
            (cut.clone(), "app".to_string())
        ]
    );
    for f in fails {
        let o = f.outcome.as_ref().unwrap();
        let n = o.error_message.len();
        assert!(n < 200, "the record keeps a {n}-byte message");
    }
}

/// A load balancer in front of the gateway: it accepts on a free port and
/// relays each connection to the gateway, first sending `header` (a PROXY
/// protocol header, as HAProxy or an AWS NLB does).
struct LoadBalancer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn load_balancer(gateway_port: u16, header: Vec<u8>) -> LoadBalancer {
    load_balancer_sending(gateway_port, header, None).await
}

/// [`load_balancer`], sending the header a byte at a time, `gap` apart,
/// when `gap` is given (each byte its own TCP segment).
async fn load_balancer_sending(
    gateway_port: u16,
    header: Vec<u8>,
    gap: Option<Duration>,
) -> LoadBalancer {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", gateway_port)).await
                else {
                    return;
                };
                let sent = match gap {
                    None => up.write_all(&header).await,
                    Some(gap) => {
                        let _ = up.set_nodelay(true);
                        let mut sent = Ok(());
                        for b in &header {
                            sent = up.write_all(&[*b]).await;
                            if sent.is_err() {
                                break;
                            }
                            tokio::time::sleep(gap).await;
                        }
                        sent
                    }
                };
                if sent.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                }
            });
        }
    });
    LoadBalancer { port, task }
}

/// A PROXY protocol v2 header (written out from the specification, not by
/// the parser's crate): PROXY (or LOCAL, with no address) for a TCP over
/// IPv4 client at `src`.
fn proxy_v2(src: Option<([u8; 4], u16)>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match src {
        Some((ip, port)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&ip);
            h.extend_from_slice(&[127, 0, 0, 1]);
            h.extend_from_slice(&port.to_be_bytes());
            h.extend_from_slice(&5432u16.to_be_bytes());
        }
        None => h.extend_from_slice(&[0x20, 0x00, 0, 0]),
    }
    h
}

/// `agent1` on `app` through whatever listens on `port`, with `key`.
fn through(port: u16, key: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("agent1")
        .password(key)
        .dbname("app")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(Duration::from_secs(10));
    c
}

/// Behind a load balancer every peer is the balancer: with
/// `proxy_protocol`, the client address of the header it sends (v1 or v2)
/// is the one audited, for statements and for refused logins alike; a
/// header without an address (v2 LOCAL) and a direct client keep the
/// peer's; a malformed header is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_come_from_a_trusted_load_balancers_proxy_header() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}proxy_protocol: {{ trusted: [127.0.0.0/8] }}\n",
        audited(dir.path(), "").to_yaml()
    );
    let gw = Gateway::start(&yaml);
    let key = &ApiKey::shared().key;
    let v1 = load_balancer(
        gw.port,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 5432\r\n".to_vec(),
    )
    .await;
    let v2 = load_balancer(gw.port, proxy_v2(Some(([198, 51, 100, 9], 40002)))).await;
    let local = load_balancer(gw.port, proxy_v2(None)).await;
    let bad = load_balancer(
        gw.port,
        b"PROXY TCP4 203.0.113.300 127.0.0.1 1 5432\r\n".to_vec(),
    )
    .await;

    for (port, marker) in [
        (v1.port, "pp-v1"),
        (v2.port, "pp-v2"),
        (local.port, "pp-local"),
        (gw.port, "pp-direct"),
    ] {
        let c = sluice_tests::connect(&through(port, key))
            .await
            .unwrap_or_else(|e| panic!("{marker}: {}\n{}", err_text(&e), gw.log()));
        c.simple_query(&format!("select 1 /* {marker} */"))
            .await
            .unwrap();
    }
    let refused = sluice_tests::connect(&through(v1.port, "wrong-key"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&refused).as_deref(), Some("28P01"));
    let e = sluice_tests::connect(&through(bad.port, key))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("08P01"), "{}", err_text(&e));
    assert!(
        err_text(&e).contains("invalid PROXY protocol header"),
        "{}",
        err_text(&e)
    );

    let m = gw.metrics();
    let count = |r: &str| m.get("sluice_proxy_protocol_headers_total", &[("result", r)]);
    assert_eq!(
        [
            "accepted",
            "no_address",
            "malformed",
            "untrusted",
            "missing"
        ]
        .map(count),
        [3.0, 1.0, 1.0, 0.0, 0.0]
    );
    gw.wait_connections_closed(Duration::from_secs(10)).await;
    gw.stop();

    let recs = audit_records(dir.path());
    let address = |r: &AuditRecord| r.session.as_ref().unwrap().client_address.clone();
    let of = |marker: &str| {
        let got = with_marker(&recs, marker);
        assert_eq!(got.len(), 1, "{marker}");
        address(got[0])
    };
    assert_eq!(of("pp-v1"), "203.0.113.7:40001");
    assert_eq!(of("pp-v2"), "198.51.100.9:40002");
    assert!(
        of("pp-local").starts_with("127.0.0.1:"),
        "{}",
        of("pp-local")
    );
    assert!(
        of("pp-direct").starts_with("127.0.0.1:"),
        "{}",
        of("pp-direct")
    );
    let fails = of_kind(&recs, AuditKind::AuthFailure);
    assert_eq!(fails.len(), 2);
    let (header, login): (Vec<&AuditRecord>, Vec<&AuditRecord>) =
        fails.into_iter().partition(|r| {
            r.outcome
                .as_ref()
                .unwrap()
                .error_message
                .starts_with("proxy_protocol: invalid PROXY protocol header")
        });
    assert_eq!(address(login[0]), "203.0.113.7:40001");
    // The malformed header, under the balancer's own address.
    assert!(address(header[0]).starts_with("127.0.0.1:"));
}

/// A header from a peer outside `trusted` is refused (a client cannot pick
/// the address it is audited under), and with `required` a client that
/// bypasses the load balancer is refused too. Each refusal is an
/// AUTH_FAILURE record (reason `proxy_protocol`) under the address the
/// connection came from, not the one its header claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_untrusted_peers_and_missing_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}proxy_protocol: {{ trusted: [10.0.0.0/8], required: true }}\n",
        audited(dir.path(), "").to_yaml()
    );
    let gw = Gateway::start(&yaml);
    let key = &ApiKey::shared().key;
    let lb = load_balancer(gw.port, proxy_v2(Some(([198, 51, 100, 9], 40002)))).await;
    for (port, want) in [
        (
            lb.port,
            "PROXY protocol header from an address not in proxy_protocol.trusted",
        ),
        (gw.port, "a PROXY protocol header is required"),
    ] {
        let e = sluice_tests::connect(&through(port, key))
            .await
            .err()
            .unwrap();
        assert_eq!(db_code(&e).as_deref(), Some("08P01"), "{}", err_text(&e));
        assert!(err_text(&e).contains(want), "{}", err_text(&e));
    }
    let m = gw.metrics();
    let count = |r: &str| m.get("sluice_proxy_protocol_headers_total", &[("result", r)]);
    assert_eq!(
        ["untrusted", "missing", "accepted"].map(count),
        [1.0, 1.0, 0.0]
    );
    gw.assert_alive();
    gw.stop();

    let recs = audit_records(dir.path());
    let fails: Vec<(String, String, String)> = of_kind(&recs, AuditKind::AuthFailure)
        .into_iter()
        .map(|r| {
            let o = r.outcome.as_ref().unwrap();
            (
                r.session.as_ref().unwrap().client_address.clone(),
                o.sqlstate.clone(),
                o.error_message.clone(),
            )
        })
        .collect();
    assert_eq!(fails.len(), 2, "{fails:?}");
    // (In no particular order: the two connections may land on different
    // cores, whose records are read core by core.)
    for want in [
        "proxy_protocol: PROXY protocol header from an address not in proxy_protocol.trusted",
        "proxy_protocol: connections must come through a trusted load balancer (a PROXY protocol header is required)",
    ] {
        let [(address, sqlstate, _)] = &fails
            .iter()
            .filter(|(_, _, message)| message.starts_with(want))
            .collect::<Vec<_>>()[..]
        else {
            panic!("one record of {want:?}: {fails:?}");
        };
        assert!(address.starts_with("127.0.0.1:"), "{fails:?}");
        assert_eq!(sqlstate, "08P01");
    }
}

/// Through load balancers in front of a dual-stack listener (`[::]`: the
/// balancers' peer address is `::ffff:127.0.0.1`, and `trusted` holds it
/// as logged): TLS after the header, a CancelRequest through the balancer,
/// and a v2 header with TLVs (an AWS NLB's VPC endpoint id, padding) that
/// comes a byte at a time; the sessions carry the headers' addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cancels_and_headers_in_pieces_go_through_a_load_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let port = sluice_tests::free_port();
    let yaml = format!(
        "listen: [\"[::]:{port}\"]\n{}proxy_protocol: {{ trusted: [\"::ffff:127.0.0.1\"] }}\n",
        audited(dir.path(), "")
            .tls(sluice_tests::DevCerts::shared(), false)
            .to_yaml()
    );
    let gw = Gateway::start(&yaml);
    let key = &ApiKey::shared().key;
    let v2 = load_balancer(port, proxy_v2(Some(([198, 51, 100, 9], 40002)))).await;

    let mut tls = through(v2.port, key);
    tls.ssl_mode(tokio_postgres::config::SslMode::Require);
    let c = sluice_tests::connect_tls(&tls, sluice_tests::ClientOptions::tls_no_verify())
        .await
        .unwrap_or_else(|e| panic!("TLS: {}\n{}", err_text(&e), gw.log()));
    c.simple_query("select 1 /* pp-tls */").await.unwrap();
    drop(c);

    let c = sluice_tests::connect(&through(v2.port, key)).await.unwrap();
    let cancel = c.cancel_token();
    let sleep = tokio::spawn(async move {
        c.simple_query("select pg_sleep(30) /* pp-cancel */")
            .await
            .map(|_| ())
    });
    let su = Pg::shared().superuser().await;
    let active = "select 1 from pg_stat_activity where state = 'active' \
                  and query like '%pp-cancel%' and pid <> pg_backend_pid()";
    for _ in 0..400 {
        if !su.query(active, &[]).await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    step("cancel", cancel.cancel_query(tokio_postgres::NoTls))
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(3), sleep)
        .await
        .expect("the cancelled query returns within 3 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(db_code(&e).as_deref(), Some("57014"), "{}", err_text(&e));

    // Type 0xEA (AWS): subtype 1, a VPC endpoint id; then a NOOP TLV.
    let mut tlvs = vec![0xea, 0, 23, 1];
    tlvs.extend_from_slice(b"vpce-0123456789abcdef0");
    tlvs.extend_from_slice(&[0x04, 0, 2, 0, 0]);
    let mut with_tlvs = proxy_v2(Some(([192, 0, 2, 77], 40077)));
    with_tlvs[14..16].copy_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
    with_tlvs.extend_from_slice(&tlvs);
    for (marker, header) in [
        ("pp-pieces-v2", with_tlvs),
        (
            "pp-pieces-v1",
            b"PROXY TCP4 203.0.113.8 127.0.0.1 40008 5432\r\n".to_vec(),
        ),
    ] {
        let lb = load_balancer_sending(port, header, Some(Duration::from_millis(5))).await;
        let c = sluice_tests::connect(&through(lb.port, key))
            .await
            .unwrap_or_else(|e| panic!("{marker}: {}\n{}", err_text(&e), gw.log()));
        c.simple_query(&format!("select 1 /* {marker} */"))
            .await
            .unwrap();
    }

    let m = gw.metrics();
    let count = |r: &str| m.get("sluice_proxy_protocol_headers_total", &[("result", r)]);
    // TLS, the cancelled session and its CancelRequest, two in pieces.
    assert_eq!(["accepted", "untrusted"].map(count), [5.0, 0.0]);
    assert_eq!(
        m.get("sluice_cancel_requests_total", &[("result", "forwarded")]),
        1.0
    );
    gw.wait_connections_closed(Duration::from_secs(10)).await;
    gw.stop();

    let recs = audit_records(dir.path());
    let session = |marker: &str| {
        let got = with_marker(&recs, marker);
        assert_eq!(got.len(), 1, "{marker}");
        let s = got[0].session.clone().unwrap();
        (s.client_address, s.tls)
    };
    assert_eq!(session("pp-tls"), ("198.51.100.9:40002".into(), true));
    assert_eq!(session("pp-cancel"), ("198.51.100.9:40002".into(), false));
    assert_eq!(session("pp-pieces-v2"), ("192.0.2.77:40077".into(), false));
    assert_eq!(session("pp-pieces-v1"), ("203.0.113.8:40008".into(), false));
}

/// A flood of failed logins (anyone who can reach the port can cause one)
/// does not fill the spool record by record: past
/// `audit.auth_failures_per_second` (bursts of ten seconds' worth per
/// core) the failures are counted, not written, and the trail says how
/// many in RECORDS_LOST records (`auth_failures_rate_limited`). Every
/// failure is in `sluice_auth_failures_total` all the same, and a good
/// login still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_logins_is_recorded_by_number_past_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&audited(dir.path(), "auth_failures_per_second: 1").workers(1));
    let attempts = 40;
    for _ in 0..attempts {
        let e = sluice_tests::connect(&gw.config("agent1", "sk_wrong", "app"))
            .await
            .err()
            .unwrap();
        assert_eq!(db_code(&e).as_deref(), Some("28P01"), "{}", err_text(&e));
    }
    sluice_tests::connect(&gw.agent_config())
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
    let m = gw.metrics();
    assert_eq!(
        m.get("sluice_auth_failures_total", &[("reason", "bad_password")]),
        attempts as f64
    );
    let limited = m.get("sluice_audit_auth_failures_rate_limited_total", &[]);
    assert!(limited >= 1.0, "{limited}");
    gw.stop();

    let recs = audit_records(dir.path());
    let written = of_kind(&recs, AuditKind::AuthFailure).len();
    let reported: u64 = of_kind(&recs, AuditKind::RecordsLost)
        .iter()
        .map(|r| r.loss.as_ref().unwrap())
        .filter(|l| l.reason == "auth_failures_rate_limited")
        .map(|l| l.records)
        .sum();
    assert_eq!(
        written as u64 + reported,
        attempts,
        "{written} + {reported}"
    );
    assert_eq!(reported as f64, limited);
    // Ten seconds' worth at once, and the refill while the logins ran.
    assert!((10..attempts as usize).contains(&written), "{written}");
    assert_eq!(of_kind(&recs, AuditKind::SessionStart).len(), 1);
}
