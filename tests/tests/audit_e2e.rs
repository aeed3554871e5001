//! Audit end to end: real `sluice-dp` nodes (mmap rings → spool → Ship)
//! subscribed to a real `sluice-cp` (file sink), real clients. What the
//! client saw completed must be at the sink, exactly once, through control
//! plane and data plane crashes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use proto::audit_query_client::AuditQueryClient;
use proto::{AuditKind, SearchRequest};
use sluice_tests::cp::{self, Admin, Backend, ControlPlane};
use sluice_tests::{ApiKey, Gateway, Pg};

const LIMIT: Duration = Duration::from_secs(60);

fn base_config(pg: &Pg, key: &ApiKey) -> String {
    [
        cp::connection_yaml("app", pg),
        cp::api_key_yaml("agent1-key", "agent1", &key.verifier, &["bots"]),
        cp::policy_yaml("bots-app", &["app"], &[], &["bots"]),
    ]
    .join("---\n")
}

/// A node named `name` with its audit spool in `spool` (kept across
/// restarts of the node).
fn node(cp_url: &str, name: &str, spool: &Path) -> Gateway {
    cp::node(
        &[cp_url.to_string()],
        name,
        &format!(
            "workers: 1\nlimits:\n  drain_timeout_ms: 500\naudit:\n  spool_dir: \"{}\"\n  ring_dir: \"{}\"\n",
            spool.display(),
            spool.join("rings").display()
        ),
        true,
    )
    .unwrap_or_else(|e| panic!("node {name} did not start: {e}"))
}

/// Every stored record whose SQL contains `marker`: (kind, sql) → count,
/// and the (node, sequence) pairs seen (to catch duplicates).
async fn stored(url: &str, marker: &str) -> (HashMap<(i32, String), usize>, Vec<(String, u64)>) {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let Ok(ch) = ch else {
        return (HashMap::new(), Vec::new());
    };
    let Ok(resp) = AuditQueryClient::new(ch)
        .search(SearchRequest {
            identity: "agent1".into(),
            limit: 100_000,
            ..Default::default()
        })
        .await
    else {
        return (HashMap::new(), Vec::new());
    };
    let resp = resp.into_inner();
    assert!(!resp.truncated);
    let mut counts = HashMap::new();
    let mut keys = Vec::new();
    for r in resp.records {
        let sql = r
            .statement
            .as_ref()
            .map(|s| s.sql.clone())
            .unwrap_or_default();
        if !sql.contains(marker) {
            continue;
        }
        let md = r.metadata.as_ref().unwrap();
        keys.push((md.node_id.clone(), md.sequence));
        assert_eq!(r.identity.as_ref().unwrap().name, "agent1");
        assert_eq!(r.connection.as_ref().unwrap().name, "app");
        let outcome = r.outcome.as_ref().expect("outcome");
        if md.kind == AuditKind::Query as i32 || md.kind == AuditKind::Execute as i32 {
            assert_eq!(outcome.rows, 1, "rows of {sql}");
            assert_eq!(outcome.decision, proto::Decision::Allow as i32);
        }
        *counts.entry((md.kind, sql)).or_insert(0) += 1;
    }
    (counts, keys)
}

/// Wait until every statement in `want` (simple-query SQL texts) is stored;
/// then check each exactly once and no (node, sequence) twice.
async fn expect_exactly(url: &str, marker: &str, want: &[String]) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let (counts, keys) = stored(url, marker).await;
        let have = want
            .iter()
            .filter(|s| counts.contains_key(&(AuditKind::Query as i32, (*s).clone())))
            .count();
        if have == want.len() {
            for s in want {
                assert_eq!(
                    counts[&(AuditKind::Query as i32, s.clone())],
                    1,
                    "statement stored more than once: {s}"
                );
            }
            let mut k = keys.clone();
            k.sort();
            k.dedup();
            assert_eq!(k.len(), keys.len(), "a (node, sequence) stored twice");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {} statements reached the sink",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// N statements through two nodes → exactly N statement records at the
/// sink, each with identity, connection, SQL and outcome; the extended
/// protocol's executions are recorded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_through_two_nodes_reach_the_sink_once() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    admin.apply(&base_config(pg, key)).await;
    let dir = tempfile::tempdir().unwrap();
    let n1 = node(&cp.url(), "audit-a", &dir.path().join("a"));
    let n2 = node(&cp.url(), "audit-b", &dir.path().join("b"));
    let mut want = Vec::new();
    for (i, n) in [&n1, &n2].into_iter().enumerate() {
        let c = n.agent().await;
        for j in 0..60 {
            let sql = format!("select {j} as two_nodes_{i}");
            c.simple_query(&sql).await.unwrap();
            want.push(sql);
        }
        let stmt = c
            .prepare(&format!("select $1::int4 as two_nodes_ext_{i}"))
            .await
            .unwrap();
        for j in 0..20 {
            c.query_one(&stmt, &[&j]).await.unwrap();
        }
    }
    expect_exactly(&cp.url(), "two_nodes_", &want).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let (counts, _) = stored(&cp.url(), "two_nodes_ext_").await;
        let executes: usize = counts
            .iter()
            .filter(|((k, _), _)| *k == AuditKind::Execute as i32)
            .map(|(_, n)| n)
            .sum();
        if executes >= 40 {
            assert_eq!(executes, 40, "EXECUTE records: {counts:?}");
            break;
        }
        assert!(Instant::now() < deadline, "EXECUTE records: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The control plane killed mid-load and restarted: the nodes keep serving
/// and spooling; afterwards every statement is at the sink exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_mid_load_loses_and_doubles_nothing() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    admin.apply(&base_config(pg, key)).await;
    let dir = tempfile::tempdir().unwrap();
    let n1 = node(&cp.url(), "audit-cpkill", &dir.path().join("a"));
    let c = n1.agent().await;
    let mut want = Vec::new();
    for j in 0..300 {
        if j == 100 {
            cp.kill();
        }
        if j == 200 {
            cp.spawn();
        }
        let sql = format!("select {j} as cp_killed");
        c.simple_query(&sql).await.unwrap();
        want.push(sql);
    }
    expect_exactly(&cp.url(), "cp_killed", &want).await;
}

/// A node SIGKILLed mid-load and restarted (same name, same spool): every
/// statement the client saw complete has its record at the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sigkilled_mid_load_keeps_what_the_client_saw() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    admin.apply(&base_config(pg, key)).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let n1 = node(&cp.url(), "audit-kill", &spool);
    let c = n1.agent().await;
    let killer = {
        let pid = n1.pid();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            sluice_tests::process::signal(pid, libc::SIGKILL);
        })
    };
    let mut completed = Vec::new();
    for j in 0..100_000 {
        let sql = format!("select {j} as node_killed");
        match c.simple_query(&sql).await {
            Ok(_) => completed.push(sql),
            Err(_) => break,
        }
    }
    killer.await.unwrap();
    assert!(completed.len() > 10, "too few statements before the kill");
    assert!(completed.len() < 100_000, "the node was never killed");
    drop(n1);
    let _n1 = node(&cp.url(), "audit-kill", &spool);
    expect_exactly(&cp.url(), "node_killed", &completed).await;
}

/// A session whose grant is removed: its next statement is refused before
/// it reaches PostgreSQL, and that refusal is evidence too: a
/// POLICY_DECISION record (DENY, 42501, the refused SQL) at the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_refused_by_a_revocation_has_a_policy_decision_record() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    admin.apply(&base_config(pg, key)).await;
    let dir = tempfile::tempdir().unwrap();
    let n1 = node(&cp.url(), "audit-revoke", &dir.path().join("a"));
    let c = n1.agent().await;
    c.simple_query("select 1 as revoke_before").await.unwrap();
    let v = admin
        .delete("Policy", "bots-app")
        .await
        .expect("delete policy");
    admin.wait_applied(1, v, LIMIT).await;
    let e = c
        .simple_query("select 2 as revoke_refused")
        .await
        .expect_err("statement allowed after the revocation");
    assert_eq!(sluice_tests::db_code(&e).as_deref(), Some("42501"));

    let deadline = Instant::now() + LIMIT;
    loop {
        let ch = tonic::transport::Endpoint::from_shared(cp.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let recs = AuditQueryClient::new(ch)
            .search(SearchRequest {
                identity: "agent1".into(),
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let of = |marker: &str| -> Vec<proto::AuditRecord> {
            recs.iter()
                .filter(|r| r.statement.as_ref().is_some_and(|s| s.sql.contains(marker)))
                .cloned()
                .collect()
        };
        let refused = of("revoke_refused");
        if !refused.is_empty() {
            assert_eq!(refused.len(), 1, "{refused:#?}");
            let r = &refused[0];
            let md = r.metadata.as_ref().unwrap();
            assert_eq!(md.kind, AuditKind::PolicyDecision as i32);
            assert!(md.snapshot_version >= v, "{md:?}");
            let o = r.outcome.as_ref().unwrap();
            assert_eq!(o.decision, proto::Decision::Deny as i32);
            assert_eq!(o.sqlstate, "42501");
            assert!(o.error_message.contains("permission revoked"), "{o:?}");
            assert_eq!(o.rows, 0);
            assert_eq!(r.statement.as_ref().unwrap().statement_kind, "select");
            // The statement before it ran, and was allowed.
            let before = of("revoke_before");
            assert_eq!(before.len(), 1);
            assert_eq!(
                before[0].outcome.as_ref().unwrap().decision,
                proto::Decision::Allow as i32
            );
            assert_eq!(
                before[0].metadata.as_ref().unwrap().kind,
                AuditKind::Query as i32
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no record of the refused statement"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (SQL, node, sequence) of every stored statement record whose SQL
/// contains `marker`.
async fn placed(url: &str, marker: &str) -> Vec<(String, String, u64)> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let recs = AuditQueryClient::new(ch)
        .search(SearchRequest {
            identity: "agent1".into(),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    recs.into_iter()
        .filter(|r| r.statement.as_ref().is_some_and(|s| s.sql.contains(marker)))
        .map(|r| {
            let md = r.metadata.unwrap();
            (r.statement.unwrap().sql, md.node_id, md.sequence)
        })
        .collect()
}

/// `sluicectl audit verify` finds every chain intact.
#[track_caller]
fn verify_clean(cp: &ControlPlane) {
    let out = cp.ctl(&["audit", "verify"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "audit verify\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout,
        out.stderr
    );
}

/// Run `n` simple queries `select <j> as <marker>` on `gw`; their SQL.
async fn run(gw: &Gateway, marker: &str, n: usize) -> Vec<String> {
    let c = gw.agent().await;
    let mut sqls = Vec::new();
    for j in 0..n {
        let sql = format!("select {j} as {marker}");
        c.simple_query(&sql).await.unwrap();
        sqls.push(sql);
    }
    sqls
}

/// A fresh database of the harness's PostgreSQL for a PostgreSQL sink;
/// its connection string.
fn fresh_db(db: &str) -> String {
    let pg = Pg::shared();
    pg.psql_super(
        "postgres",
        &[&format!("CREATE DATABASE {db} OWNER {}", pg.app_user)],
    )
    .assert_success("create database");
    format!(
        "host=127.0.0.1 port={} user={} password={} dbname={db} connect_timeout=10",
        pg.port, pg.app_user, pg.app_password
    )
}

/// Take the audit database away from the control plane (`false`) or give
/// it back (`true`): the control plane keeps serving its configuration.
fn allow_connections(db: &str, allow: bool) {
    let mut cmds = vec![format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {allow}")];
    if !allow {
        cmds.push(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'"
        ));
    }
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    Pg::shared()
        .psql_super("postgres", &cmds)
        .assert_success("ALTER DATABASE");
}

/// A node started on a new, empty spool directory under a name the control
/// plane already stores records for, that takes statements before its
/// first hello can be answered (the audit database is away), ships them
/// after what is stored: every one is stored once, the chain intact. (They
/// were taken for stored and dropped, or stalled the shipping, when the
/// spool numbered them 1, 2, ... as if the chain were its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_spool_under_a_stored_name_ships_after_what_is_stored() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let db = "audit_e2e_new_spool";
    let dsn = fresh_db(db);
    let cp = ControlPlane::on(Backend::Embedded, vec!["--audit-postgres".into(), dsn]);
    let mut admin = Admin::connect(&cp.url()).await;
    admin.apply(&base_config(pg, key)).await;
    let dir = tempfile::tempdir().unwrap();
    let name = "audit-new-spool";

    let first = node(&cp.url(), name, &dir.path().join("first"));
    let before = run(&first, "new_spool_before", 40).await;
    expect_exactly(&cp.url(), "new_spool_before", &before).await;
    drop(first);

    allow_connections(db, false);
    let second = node(&cp.url(), name, &dir.path().join("second"));
    let during = run(&second, "new_spool_during", 10).await;
    // Past the node's hello wait: it would send what it has.
    tokio::time::sleep(Duration::from_secs(3)).await;
    allow_connections(db, true);
    expect_exactly(&cp.url(), "new_spool_during", &during).await;
    // Shipping goes on.
    let after = run(&second, "new_spool_after", 10).await;
    expect_exactly(&cp.url(), "new_spool_after", &after).await;
    expect_exactly(&cp.url(), "new_spool_before", &before).await;
    let seqs = |v: Vec<(String, String, u64)>| -> Vec<u64> {
        assert!(v.iter().all(|(_, n, _)| n == name), "{v:?}");
        v.into_iter().map(|(_, _, s)| s).collect()
    };
    let last_before = seqs(placed(&cp.url(), "new_spool_before").await);
    let first_during = seqs(placed(&cp.url(), "new_spool_during").await);
    assert!(
        first_during.iter().min() > last_before.iter().max(),
        "{last_before:?} {first_during:?}"
    );
    verify_clean(&cp);
    assert!(
        second
            .log()
            .contains("audit spool placed in this node's chain"),
        "{}",
        second.log()
    );
}

/// A node renamed while it keeps its spool directory (a new hostname under
/// the default name, on a persistent volume): what it shipped stays under
/// its old name, what was waiting ships under the new one, and shipping
/// goes on; each statement stored once, both chains intact. (The spool's
/// sequences ran far past the new name's chain: shipping stopped and the
/// spool filled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_node_keeping_its_spool_ships_under_its_new_name() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    admin.apply(&base_config(pg, key)).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (old, new) = ("audit-rename-old", "audit-rename-new");

    let n = node(&cp.url(), old, &spool);
    let shipped = run(&n, "rename_shipped", 30).await;
    expect_exactly(&cp.url(), "rename_shipped", &shipped).await;
    // Everything acknowledged (what is sent under the old name and not
    // acknowledged at the rename is stored under both names: a known gap).
    let deadline = Instant::now() + LIMIT;
    while n.metrics().get("sluice_audit_ship_lag_records", &[]) > 0.0 {
        assert!(Instant::now() < deadline, "records never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Records waiting in the spool when the name changes.
    cp.kill();
    let waiting = run(&n, "rename_waiting", 10).await;
    drop(n);
    cp.spawn();

    let n = node(&cp.url(), new, &spool);
    expect_exactly(&cp.url(), "rename_waiting", &waiting).await;
    let after = run(&n, "rename_after", 10).await;
    expect_exactly(&cp.url(), "rename_after", &after).await;
    expect_exactly(&cp.url(), "rename_shipped", &shipped).await;
    for (marker, name) in [
        ("rename_shipped", old),
        ("rename_waiting", new),
        ("rename_after", new),
    ] {
        let v = placed(&cp.url(), marker).await;
        assert!(v.iter().all(|(_, n, _)| n == name), "{marker}: {v:?}");
    }
    verify_clean(&cp);
    assert!(
        n.log()
            .contains(&format!("name changed from {old} to {new}")),
        "{}",
        n.log()
    );
}

/// The control plane away and the node's spool full, under `when_full:
/// fail_open`: statements run and their records are dropped, and the trail
/// says so. Once the control plane is back, RECORDS_LOST records reach the
/// sink, counting every record the node dropped; `sluicectl audit search
/// --kind records-lost` lists them and `evidence` sums them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_dropped_while_the_spool_is_full_are_reported_at_the_sink() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    admin.apply(&base_config(pg, key)).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("a");
    let n = cp::node(
        &[cp.url()],
        "audit-lost",
        &format!(
            "workers: 1\nlimits:\n  drain_timeout_ms: 500\naudit:\n  spool_dir: \"{}\"\n  \
             ring_dir: \"{}\"\n  quota_bytes: 32768\n  ring_bytes: 65536\n  \
             max_sql_bytes: 1024\n  when_full: fail_open\n",
            spool.display(),
            spool.join("rings").display()
        ),
        true,
    )
    .unwrap();
    let c = n.agent().await;
    cp.kill();
    let pad = "x".repeat(200);
    for j in 0..1500 {
        c.simple_query(&format!("select '{pad}' /* lost-{j} */"))
            .await
            .unwrap();
    }
    let dropped = n.metrics().get("sluice_audit_unaudited_total", &[]);
    assert!(dropped > 0.0, "the spool filled and records were dropped");
    cp.spawn();

    let deadline = Instant::now() + LIMIT;
    let lost = loop {
        let out = cp.ctl(
            &["audit", "search", "--kind", "records-lost", "-o", "json"],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        let lost: u64 = v["records"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        assert_eq!(r["loss"]["reason"], "fail_open", "{r:#}");
                        r["loss"]["records"].as_u64().unwrap()
                    })
                    .sum()
            })
            .unwrap_or(0);
        if lost as f64 >= dropped || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(lost as f64, dropped, "{}", cp.log());
    let report = dir.path().join("report");
    let out = cp.ctl(
        &[
            "evidence",
            "--from",
            "1h",
            "--to",
            "now",
            "--out",
            report.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.success(), "{}", out.stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("evidence.json")).unwrap())
            .unwrap();
    let au9 = v["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "AU-9")
        .unwrap()
        .clone();
    assert_eq!(
        au9["facts"]["records the nodes reported lost"], lost,
        "{au9:#}"
    );
    let out = cp.ctl(&["audit", "search", "--kind", "records-lost"], None);
    let table = &out.stdout;
    assert!(table.contains("fail_open ("), "{table}");
}
