//! Control plane end to end: real `sluice-cp` (embedded store and real
//! etcd), real `sluice-dp` nodes subscribed to it, real clients.
//!
//! Scenarios that make sense for both stores are written once, taking a
//! [`Backend`], and run twice (`<scenario>::embedded`, `<scenario>::etcd`);
//! the etcd ones share one etcd per test binary, each under its own key
//! prefix. Tests that stop etcd start their own.
//!
//! Every wait is a poll with a deadline; nothing asserts speed.

use std::time::{Duration, Instant};

use proto::resource::Spec;
use sluice_tests::cp::{self, Admin, Backend, ControlPlane, CpCerts, Etcd, StoreKind};
use sluice_tests::{connect, db_code, process, ApiKey, Gateway, Pg};

/// Generous bound for a change to reach nodes on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(20);
/// Bound for a node to find a control plane again after an outage (its
/// reconnect backoff has grown meanwhile).
const RECONNECT_LIMIT: Duration = Duration::from_secs(40);

/// Node settings appended to `control_plane:`: one data core, and a short
/// drain so stopping a node with open sessions is quick.
const NODE: &str = "workers: 1\nlimits:\n  drain_timeout_ms: 500\n";

/// Run a scenario `async fn name(Backend)` once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(Backend::Etcd).await
            }
        }
    )*};
}

on_both_stores!(
    apply_reaches_every_node,
    invalid_documents_are_refused_and_change_nothing,
    unappliable_snapshot_is_nacked_and_node_keeps_serving,
    nodes_survive_a_control_plane_restart,
    revoked_grants_end_open_sessions,
    membership_lists_nodes_and_drops_dead_ones,
    node_is_not_ready_until_its_first_snapshot,
    mutual_tls_between_nodes_and_control_plane,
);

// ---------------------------------------------------------------- helpers

fn base_config(pg: &Pg, key: &ApiKey) -> String {
    [
        cp::connection_yaml("app", pg),
        cp::api_key_yaml("agent1-key", "agent1", &key.verifier, &["bots"]),
        cp::policy_yaml("bots-app", &["app"], &[], &["bots"]),
    ]
    .join("---\n")
}

/// A second connection `app2` (same database) granted to `bots`.
fn app2_config(pg: &Pg) -> String {
    [
        cp::connection_yaml("app2", pg),
        cp::policy_yaml("bots-app2", &["app2"], &[], &["bots"]),
    ]
    .join("---\n")
}

/// A Connection like [`cp::connection_yaml`] but to `host`.
fn connection_to(name: &str, host: &str, pg: &Pg) -> String {
    let doc = cp::connection_yaml(name, pg);
    assert!(doc.contains("host: 127.0.0.1"));
    doc.replace("host: 127.0.0.1", &format!("host: {host}"))
}

/// A node subscribed to `urls`, ready (it has applied a snapshot).
fn start_node(urls: &[String], name: &str) -> Gateway {
    cp::node(urls, name, NODE, true).unwrap_or_else(|e| panic!("node {name}: {e}"))
}

fn metric(g: &Gateway, name: &str) -> f64 {
    g.metrics().get(name, &[])
}

/// Poll a node's metric until `ok` holds; panics after `limit`.
async fn wait_metric(g: &Gateway, name: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let m = g.metrics();
        let v = m.get(name, &[]);
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} on node {} stuck at {v} for {limit:?}\n{}",
            g.port,
            m.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll until the node's log holds `needle` at least `n` times.
async fn wait_log(g: &Gateway, needle: &str, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if g.log().matches(needle).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node log has not shown {needle:?} {n} times within {limit:?}\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(g: &Gateway, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok((200, _)) = g.http_get("/readyz") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node not ready within {limit:?}: {:?}\n{}",
            g.http_get("/readyz"),
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node_ids(l: &proto::ListNodesResponse) -> Vec<String> {
    l.nodes
        .iter()
        .map(|n| n.node.as_ref().map(|n| n.id.clone()).unwrap_or_default())
        .collect()
}

async fn select_one(c: &tokio_postgres::Client) {
    let row = tokio::time::timeout(LIMIT, c.query_one("select 1::int", &[]))
        .await
        .expect("query hung")
        .unwrap_or_else(|e| panic!("select 1: {}", err_text(&e)));
    assert_eq!(row.get::<_, i32>(0), 1);
}

fn err_text(e: &tokio_postgres::Error) -> String {
    sluice_tests::client::err_text(e)
}

/// Connect as `user` with `key` to connection `db` through `g` and run a
/// statement.
async fn works(g: &Gateway, user: &str, key: &str, db: &str) -> tokio_postgres::Client {
    let c = connect(&g.config(user, key, db)).await.unwrap_or_else(|e| {
        panic!(
            "connect {user}@{db} through node {}: {}\n{}",
            g.port,
            err_text(&e),
            g.log()
        )
    });
    select_one(&c).await;
    c
}

/// Connecting with `cfg` must fail; the error.
async fn refused(cfg: &tokio_postgres::Config, what: &str) -> tokio_postgres::Error {
    match connect(cfg).await {
        Ok(_) => panic!("{what}: connection accepted"),
        Err(e) => e,
    }
}

/// The control plane's answer to `try_apply` after `etcd` came back,
/// retried while the store is still unavailable.
async fn apply_retrying(admin: &mut Admin, yaml: &str, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        match admin.try_apply(yaml).await {
            Ok(r) => return r.version,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "apply still refused after {limit:?}: {} {}",
                    e.code(),
                    e.message()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The next statement on `c` is refused with 42501 "permission revoked"
/// and the connection is closed by the gateway.
async fn assert_revoked(c: &tokio_postgres::Client, what: &str) {
    let e = tokio::time::timeout(LIMIT, c.query_one("select 1::int", &[]))
        .await
        .expect("query hung")
        .err()
        .unwrap_or_else(|| panic!("{what}: statement still allowed after the revocation"));
    assert_eq!(
        db_code(&e).as_deref(),
        Some("42501"),
        "{what}: {}",
        err_text(&e)
    );
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("permission revoked"), "{what}: {msg}");
    let deadline = Instant::now() + LIMIT;
    while !c.is_closed() {
        assert!(
            Instant::now() < deadline,
            "{what}: connection still open after the FATAL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = c.simple_query("select 1").await;
    assert!(again.is_err(), "{what}: closed connection answered");
}

// -------------------------------------------------------------- scenarios

/// Issue 3: apply → every node runs the new version; a client can use a
/// connection the apply added.
async fn apply_reaches_every_node(b: Backend) {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::on(b, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&base_config(pg, key)).await.version;
    assert!(v1 > 0);
    let nodes: Vec<Gateway> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| start_node(&[cp.url()], n))
        .collect();
    admin.wait_applied(3, v1, LIMIT).await;
    for n in &nodes {
        works(n, "agent1", &key.key, "app").await;
        // `app2` does not exist yet.
        let e = refused(
            &n.config("agent1", &key.key, "app2"),
            "app2 before it was applied",
        )
        .await;
        assert_eq!(db_code(&e).as_deref(), Some("3D000"), "{}", err_text(&e));
    }

    let v2 = admin.apply(&app2_config(pg)).await.version;
    assert!(v2 > v1, "apply did not raise the version: {v1} → {v2}");
    admin.wait_applied(3, v2, LIMIT).await;
    let l = admin.nodes().await;
    assert_eq!(l.latest_version, v2);
    assert_eq!(admin.version().await.snapshot_version, v2);
    for s in &l.nodes {
        assert_eq!(s.applied_version, v2, "{s:?}");
        assert_eq!(s.latest_version, v2, "{s:?}");
        assert!(s.last_error.is_empty(), "{s:?}");
    }
    for n in &nodes {
        assert_eq!(metric(n, "sluice_snapshot_version"), v2 as f64);
        assert!(metric(n, "sluice_snapshots_applied_total") >= 2.0);
        assert_eq!(metric(n, "sluice_snapshots_rejected_total"), 0.0);
        works(n, "agent1", &key.key, "app2").await;
    }
}

/// Issue 3: an invalid document is refused at apply, naming its field;
/// nothing changes.
async fn invalid_documents_are_refused_and_change_nothing(b: Backend) {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::on(b, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&base_config(pg, key)).await.version;
    let n1 = start_node(&[cp.url()], "n1");
    admin.wait_applied(1, v1, LIMIT).await;

    // Refused by the server itself (no client-side parsing in between).
    let bad_port = proto::Resource {
        api_version: proto::API_VERSION.into(),
        kind: "Connection".into(),
        name: "badport".into(),
        spec: Some(Spec::Connection(proto::ConnectionSpec {
            host: "127.0.0.1".into(),
            port: 70000,
            database: pg.app_db.clone(),
            user: pg.app_user.clone(),
            password: pg.app_password.clone(),
            ..Default::default()
        })),
        revision: 0,
    };
    let e = admin
        .apply_resources(vec![bad_port])
        .await
        .expect_err("port 70000 accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("spec.port"), "{}", e.message());
    assert!(e.message().contains("badport"), "{}", e.message());

    // The YAML path (what sluicectl sends) names it too.
    let doc =
        cp::connection_yaml("badport", pg).replace(&format!("port: {}", pg.port), "port: 70000");
    let e = admin
        .try_apply(&doc)
        .await
        .expect_err("port 70000 accepted");
    assert!(e.message().contains("spec.port"), "{}", e.message());

    // A Policy naming a Connection that does not exist: refused by the
    // server's whole-configuration check.
    let e = admin
        .try_apply(&cp::policy_yaml("orphan", &["nope"], &[], &["bots"]))
        .await
        .expect_err("policy naming a missing connection accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("spec.connections[0]"),
        "{}",
        e.message()
    );

    // One bad document in a set: none of the set lands.
    let set = [
        cp::connection_yaml("app3", pg),
        cp::policy_yaml("orphan", &["app3", "nope"], &[], &["bots"]),
    ]
    .join("---\n");
    let e = admin.try_apply(&set).await.expect_err("bad set accepted");
    assert!(
        e.message().contains("spec.connections[1]"),
        "{}",
        e.message()
    );

    // Nothing changed.
    for (kind, name) in [
        ("Connection", "badport"),
        ("Policy", "orphan"),
        ("Connection", "app3"),
    ] {
        let r = admin.get(kind, name).await;
        assert_eq!(
            r.as_ref().map_err(|e| e.code()).err(),
            Some(tonic::Code::NotFound),
            "{kind} {name} stored after a refused apply: {r:?}"
        );
    }
    assert_eq!(admin.version().await.snapshot_version, v1);
    let l = admin.nodes().await;
    assert_eq!(l.latest_version, v1);
    assert!(l.nodes.iter().all(|n| n.applied_version == v1), "{l:#?}");
    assert_eq!(metric(&n1, "sluice_snapshot_version"), v1 as f64);
    assert_eq!(metric(&n1, "sluice_snapshots_rejected_total"), 0.0);
    works(&n1, "agent1", &key.key, "app").await;
}

/// Issue 3: a snapshot a node cannot apply is NACKed; the node keeps its
/// previous snapshot and says why; fixing the document clears it.
async fn unappliable_snapshot_is_nacked_and_node_keeps_serving(b: Backend) {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::on(b, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&base_config(pg, key)).await.version;
    let nodes = [start_node(&[cp.url()], "n1"), start_node(&[cp.url()], "n2")];
    admin.wait_applied(2, v1, LIMIT).await;
    let open = works(&nodes[0], "agent1", &key.key, "app").await;

    // Valid as a document, so the control plane takes it; no node can
    // resolve the host.
    let ghost = [
        connection_to("ghost", "no-such-host.invalid", pg),
        cp::policy_yaml("bots-ghost", &["ghost"], &[], &["bots"]),
    ]
    .join("---\n");
    let v2 = admin.apply(&ghost).await.version;
    assert!(v2 > v1);
    let l = admin
        .wait_nodes("both nodes NACK", LIMIT, |l| {
            l.nodes.len() == 2 && l.nodes.iter().all(|n| !n.last_error.is_empty())
        })
        .await;
    for s in &l.nodes {
        assert_eq!(s.applied_version, v1, "NACKing node moved on: {s:?}");
        assert_eq!(s.latest_version, v2, "{s:?}");
        assert!(
            s.last_error.contains("ghost") && s.last_error.contains("spec.host"),
            "last_error does not name the connection and field: {s:?}"
        );
    }
    for n in &nodes {
        assert!(metric(n, "sluice_snapshots_rejected_total") >= 1.0);
        assert_eq!(metric(n, "sluice_snapshot_version"), v1 as f64);
        assert_eq!(n.http_get("/readyz").unwrap().0, 200);
        // Still serving on the previous snapshot, new sessions too.
        works(n, "agent1", &key.key, "app").await;
        let e = refused(
            &n.config("agent1", &key.key, "ghost"),
            "connection from a NACKed snapshot usable",
        )
        .await;
        assert_eq!(db_code(&e).as_deref(), Some("3D000"), "{}", err_text(&e));
    }
    select_one(&open).await;

    // Fixed: every node applies again, the error is gone.
    let v3 = admin
        .apply(&connection_to("ghost", "127.0.0.1", pg))
        .await
        .version;
    assert!(v3 > v2);
    admin.wait_applied(2, v3, LIMIT).await;
    let l = admin
        .wait_nodes("errors cleared", LIMIT, |l| {
            l.nodes.iter().all(|n| n.last_error.is_empty())
        })
        .await;
    assert!(l.nodes.iter().all(|n| n.applied_version == v3), "{l:#?}");
    for n in &nodes {
        assert_eq!(metric(n, "sluice_snapshot_version"), v3 as f64);
        works(n, "agent1", &key.key, "ghost").await;
    }
    select_one(&open).await;
}

/// Issue 3: the control plane SIGKILLed: nodes keep authenticating and
/// serving on their last snapshot; restarted, nodes resubscribe on their
/// own and get new applies.
async fn nodes_survive_a_control_plane_restart(b: Backend) {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::on(b, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&base_config(pg, key)).await.version;
    let n1 = start_node(&[cp.url()], "n1");
    admin.wait_applied(1, v1, LIMIT).await;
    let open = works(&n1, "agent1", &key.key, "app").await;
    wait_metric(&n1, "sluice_control_plane_connected", LIMIT, |v| v == 1.0).await;
    let reconnects = metric(&n1, "sluice_control_plane_reconnects_total");

    cp.kill();
    wait_metric(&n1, "sluice_control_plane_connected", LIMIT, |v| v == 0.0).await;
    select_one(&open).await;
    works(&n1, "agent1", &key.key, "app").await; // a new login too
    assert_eq!(n1.http_get("/readyz").unwrap().0, 200);
    assert_eq!(metric(&n1, "sluice_snapshot_version"), v1 as f64);
    let e = refused(
        &n1.config("agent1", "sk_wrong", "app"),
        "bad key accepted while the control plane is down",
    )
    .await;
    assert_eq!(db_code(&e).as_deref(), Some("28P01"), "{}", err_text(&e));

    cp.spawn();
    wait_metric(
        &n1,
        "sluice_control_plane_connected",
        RECONNECT_LIMIT,
        |v| v == 1.0,
    )
    .await;
    assert!(metric(&n1, "sluice_control_plane_reconnects_total") > reconnects);
    let mut admin = Admin::connect(&cp.url()).await;
    assert_eq!(admin.version().await.snapshot_version, v1);
    let v2 = admin.apply(&app2_config(pg)).await.version;
    assert!(v2 > v1);
    admin.wait_applied(1, v2, LIMIT).await;
    works(&n1, "agent1", &key.key, "app2").await;
    select_one(&open).await;
}

/// Issue 3: a removed grant or key ends the identity's open sessions at
/// their next statement (42501, closed); other identities keep working.
async fn revoked_grants_end_open_sessions(b: Backend) {
    let pg = Pg::shared();
    let key1 = ApiKey::shared();
    let key2 = ApiKey::generate();
    let cp = ControlPlane::on(b, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let cfg = [
        base_config(pg, key1),
        cp::api_key_yaml("agent2-key", "agent2", &key2.verifier, &[]),
        cp::policy_yaml("agent2-app", &["app"], &["agent2"], &[]),
    ]
    .join("---\n");
    let v = admin.apply(&cfg).await.version;
    let n1 = start_node(&[cp.url()], "n1");
    admin.wait_applied(1, v, LIMIT).await;
    let other = works(&n1, "agent2", &key2.key, "app").await;

    // 1. The Policy that granted agent1 (through its group) is deleted.
    let c1 = works(&n1, "agent1", &key1.key, "app").await;
    let v = admin
        .delete("Policy", "bots-app")
        .await
        .expect("delete policy");
    admin.wait_applied(1, v, LIMIT).await;
    assert_revoked(&c1, "policy deleted").await;
    select_one(&other).await;
    let e = refused(
        &n1.config("agent1", &key1.key, "app"),
        "agent1 logged in without a grant",
    )
    .await;
    assert_eq!(db_code(&e).as_deref(), Some("42501"), "{}", err_text(&e));
    assert_eq!(metric(&n1, "sluice_sessions_revoked_total"), 1.0);

    // 2. A Policy applied again without the identity.
    let v = admin
        .apply(&cp::policy_yaml("bots-app", &["app"], &["agent1"], &[]))
        .await
        .version;
    admin.wait_applied(1, v, LIMIT).await;
    let c1 = works(&n1, "agent1", &key1.key, "app").await;
    let v = admin
        .apply(&cp::policy_yaml("bots-app", &["app"], &["agent3"], &[]))
        .await
        .version;
    admin.wait_applied(1, v, LIMIT).await;
    assert_revoked(&c1, "identity dropped from the policy").await;
    select_one(&other).await;
    assert_eq!(metric(&n1, "sluice_sessions_revoked_total"), 2.0);

    // 3. The identity's ApiKey is deleted (it stays granted by name).
    let v = admin
        .apply(&cp::policy_yaml("bots-app", &["app"], &["agent1"], &[]))
        .await
        .version;
    admin.wait_applied(1, v, LIMIT).await;
    let c1 = works(&n1, "agent1", &key1.key, "app").await;
    let v = admin
        .delete("ApiKey", "agent1-key")
        .await
        .expect("delete key");
    admin.wait_applied(1, v, LIMIT).await;
    assert_revoked(&c1, "api key deleted").await;
    let e = refused(
        &n1.config("agent1", &key1.key, "app"),
        "deleted key still logs in",
    )
    .await;
    assert!(
        matches!(db_code(&e).as_deref(), Some("28000" | "28P01")),
        "{}",
        err_text(&e)
    );
    assert_eq!(metric(&n1, "sluice_sessions_revoked_total"), 3.0);

    // A change that does not concern agent2 never touched its session.
    select_one(&other).await;
    works(&n1, "agent2", &key2.key, "app").await;
    assert_eq!(metric(&n1, "sluice_sessions_revoked_total"), 3.0);
}

/// Issue 3: membership lists id, address, cores, applied version and
/// heartbeat; a node that dies disappears.
async fn membership_lists_nodes_and_drops_dead_ones(b: Backend) {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::on(b, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&base_config(pg, key)).await.version;
    let m1 = start_node(&[cp.url()], "m1");
    // (m2 with client-facing TLS: it reports its certificate's expiry.)
    let dev = sluice_tests::DevCerts::shared();
    let m2 = cp::node(
        &[cp.url()],
        "m2",
        &format!(
            "workers: 2\nlimits:\n  drain_timeout_ms: 500\ntls: {{ cert_file: {:?}, key_file: {:?} }}\n",
            dev.server_pem.display().to_string(),
            dev.server_key.display().to_string()
        ),
        true,
    )
    .unwrap_or_else(|e| panic!("node m2: {e}"));
    let m3 = start_node(&[cp.url()], "m3");
    admin.wait_applied(3, v1, LIMIT).await;
    let l = admin.nodes().await;
    assert_eq!(node_ids(&l), ["m1", "m2", "m3"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (s, (g, cores)) in l.nodes.iter().zip([(&m1, 1), (&m2, 2), (&m3, 1)]) {
        let n = s.node.as_ref().unwrap();
        assert_eq!(n.address, format!("127.0.0.1:{}", g.port), "{s:?}");
        assert_eq!(n.cores, cores, "{s:?}");
        assert!(!n.build.is_empty(), "{s:?}");
        if n.id == "m2" {
            assert!(n.tls_cert_not_after > now / 1000, "{s:?}");
        } else {
            assert_eq!(n.tls_cert_not_after, 0, "{s:?}");
        }
        assert_eq!(n.crl_next_update, 0, "{s:?}");
        assert_eq!(s.applied_version, v1, "{s:?}");
        assert!(s.last_error.is_empty(), "{s:?}");
        assert!(
            (now - 60_000..=now + 5_000).contains(&s.last_heartbeat_unix_ms),
            "heartbeat {} not near now {now}: {s:?}",
            s.last_heartbeat_unix_ms
        );
    }
    // Heartbeats (every second here) keep the record fresh.
    let first = l.nodes[0].last_heartbeat_unix_ms;
    admin
        .wait_nodes("m1 heartbeat advances", LIMIT, |l| {
            l.nodes
                .iter()
                .find(|n| n.node.as_ref().is_some_and(|n| n.id == "m1"))
                .is_some_and(|n| n.last_heartbeat_unix_ms > first)
        })
        .await;

    // SIGKILL: no goodbye; its stream breaks and it is dropped.
    assert!(process::signal(m2.pid(), libc::SIGKILL));
    admin
        .wait_nodes("killed m2 removed", LIMIT, |l| node_ids(l) == ["m1", "m3"])
        .await;
    // SIGTERM: a clean stop.
    m3.stop();
    admin
        .wait_nodes("stopped m3 removed", LIMIT, |l| node_ids(l) == ["m1"])
        .await;
    works(&m1, "agent1", &key.key, "app").await;
}

/// Issue 3: a node started while the control plane is down is not ready
/// (readyz 503, clients 57P03) until it gets its first snapshot.
async fn node_is_not_ready_until_its_first_snapshot(b: Backend) {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::unstarted(b, vec![]);
    let n1 = cp::node(&[cp.url()], "n1", NODE, false).unwrap_or_else(|e| panic!("{e}"));
    // It has tried at least once.
    wait_metric(&n1, "sluice_control_plane_reconnects_total", LIMIT, |v| {
        v >= 1.0
    })
    .await;
    let (code, body) = n1.http_get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    let e = refused(
        &n1.agent_config(),
        "client served before the first snapshot",
    )
    .await;
    assert_eq!(db_code(&e).as_deref(), Some("57P03"), "{}", err_text(&e));
    assert_eq!(n1.http_get("/readyz").unwrap().0, 503);

    cp.spawn();
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&base_config(pg, key)).await.version;
    wait_ready(&n1, RECONNECT_LIMIT).await;
    admin.wait_applied(1, v1, LIMIT).await;
    works(&n1, "agent1", &key.key, "app").await;
}

/// Issue 3: mutual TLS between nodes and the control plane; nodes without
/// a certificate from the right CA are refused.
async fn mutual_tls_between_nodes_and_control_plane(b: Backend) {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let tmp = tempfile::tempdir().unwrap();
    let certs = CpCerts::generate_with_nodes(&tmp.path().join("pki"), &["tls-node"]);
    let foreign = CpCerts::generate(&tmp.path().join("foreign"));
    let cp = ControlPlane::on(b, certs.server_args());
    assert!(cp.url().starts_with("https://127.0.0.1:"), "{}", cp.url());
    let ca = certs.read("ca.pem");
    let mut admin = Admin::try_connect_tls(
        &cp.url(),
        &ca,
        Some((&certs.read("admin.pem"), &certs.read("admin.key"))),
    )
    .await
    .unwrap();
    let v1 = admin.apply(&base_config(pg, key)).await.version;

    // The node's own certificate (CN sluice-node:tls-node).
    let good = cp::node(
        &[cp.url()],
        "tls-node",
        &format!("{}{NODE}", certs.node_yaml_as("node-tls-node")),
        true,
    )
    .unwrap_or_else(|e| panic!("mTLS node: {e}"));
    admin.wait_applied(1, v1, LIMIT).await;
    works(&good, "agent1", &key.key, "app").await;

    // Certificates carry roles. A node certificate cannot administer…
    let mut as_node = Admin::try_connect_tls(
        &cp.url(),
        &ca,
        Some((&certs.read("node.pem"), &certs.read("node.key"))),
    )
    .await
    .unwrap();
    let e = as_node.try_nodes().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node certificate"), "{e:?}");
    // `sluicectl audit search` with the certificate `who`.pem.
    let search_as = |who: &str| {
        let (cert, key) = (
            certs.path(&format!("{who}.pem")),
            certs.path(&format!("{who}.key")),
        );
        cp.ctl(
            &[
                "--ca",
                &certs.path("ca.pem"),
                "--cert",
                &cert,
                "--key",
                &key,
                "audit",
                "search",
            ],
            None,
        )
    };
    // …nor read the audit trail…
    let out = search_as("node");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("node certificate"), "{}", out.stderr);
    // …while the admin certificate can.
    let out = search_as("admin");
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    // An admin certificate cannot act as a node, and a node's own
    // certificate cannot act as another node.
    for (name, cert, why) in [
        (
            "admin-node",
            "admin",
            "admin certificate cannot call the node services",
        ),
        (
            "impostor",
            "node-tls-node",
            "the client certificate is for node",
        ),
    ] {
        let n = cp::node(
            &[cp.url()],
            name,
            &format!("{}{NODE}", certs.node_yaml_as(cert)),
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        wait_log(&n, why, 1, LIMIT).await;
        assert_eq!(n.http_get("/readyz").unwrap().0, 503, "{}", n.log());
        assert_eq!(metric(&n, "sluice_snapshots_applied_total"), 0.0);
    }
    assert_eq!(node_ids(&admin.nodes().await), ["tls-node"]);

    // A client certificate from another CA: the node never gets a snapshot.
    let foreign_yaml = format!(
        "  ca_file: {}\n  cert_file: {}\n  key_file: {}\n{NODE}",
        sluice_tests::gateway::y(&certs.path("ca.pem")),
        sluice_tests::gateway::y(&foreign.path("node.pem")),
        sluice_tests::gateway::y(&foreign.path("node.key")),
    );
    let bad = cp::node(&[cp.url()], "foreign-node", &foreign_yaml, false)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_log(&bad, "control plane unavailable", 2, LIMIT).await;
    assert_eq!(bad.http_get("/readyz").unwrap().0, 503, "{}", bad.log());
    assert_eq!(metric(&bad, "sluice_snapshots_applied_total"), 0.0);
    let e = refused(
        &bad.agent_config(),
        "node with a foreign certificate served",
    )
    .await;
    assert_eq!(db_code(&e).as_deref(), Some("57P03"), "{}", err_text(&e));
    assert_eq!(node_ids(&admin.nodes().await), ["tls-node"]);

    // No client certificate at all: an https node cannot be configured so.
    let e = match cp::node(
        &[cp.url()],
        "nocert-node",
        &format!(
            "  ca_file: {}\n{NODE}",
            sluice_tests::gateway::y(&certs.path("ca.pem"))
        ),
        false,
    ) {
        Ok(g) => panic!("node without a client certificate started\n{}", g.log()),
        Err(e) => e,
    };
    assert!(e.contains("control_plane.cert_file"), "{e}");
    // …and the control plane refuses a client that presents none.
    match Admin::try_connect_tls(&cp.url(), &ca, None).await {
        Err(_) => {}
        Ok(mut a) => {
            let r = a.try_nodes().await;
            assert!(
                r.is_err(),
                "control plane served a client without a certificate: {r:?}"
            );
        }
    }
    // …or one from another CA.
    match Admin::try_connect_tls(
        &cp.url(),
        &ca,
        Some((&foreign.read("admin.pem"), &foreign.read("admin.key"))),
    )
    .await
    {
        Err(_) => {}
        Ok(mut a) => {
            let r = a.try_nodes().await;
            assert!(
                r.is_err(),
                "control plane served a foreign client certificate: {r:?}"
            );
        }
    }

    // The good node still runs and still gets changes.
    let v2 = admin.apply(&app2_config(pg)).await.version;
    admin.wait_applied(1, v2, LIMIT).await;
    works(&good, "agent1", &key.key, "app2").await;
    assert_eq!(bad.http_get("/readyz").unwrap().0, 503);
}

// ------------------------------------------------------- etcd-only scenarios

/// Issue 3: two replicas on one etcd; nodes fail over when the one they use
/// dies; both report the same version; a node whose only control plane died
/// leaves the list when its lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_state_and_nodes_fail_over() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let store = StoreKind::Etcd(Etcd::shared().endpoint(), cp::unique_prefix("replicas"));
    let ttl = vec!["--node-ttl".to_string(), "2".to_string()];
    let a = ControlPlane::start_with(store.clone(), ttl.clone());
    let b = ControlPlane::start_with(store, ttl);
    let mut admin_a = Admin::connect(&a.url()).await;
    let mut admin_b = Admin::connect(&b.url()).await;

    let v1 = admin_a.apply(&base_config(pg, key)).await.version;
    // The replica that took the apply answers it once its snapshot has it
    // (read your own write); the other one gets there by its own watch,
    // and computes the same version for the same configuration.
    assert_eq!(admin_a.version().await.snapshot_version, v1);
    let deadline = Instant::now() + LIMIT;
    while admin_b.version().await.snapshot_version != v1 {
        assert!(Instant::now() < deadline, "replica B never reached {v1}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // x knows both replicas; y only A. Both start on A.
    let x = start_node(&[a.url(), b.url()], "x");
    let y = start_node(&[a.url()], "y");
    admin_b.wait_applied(2, v1, LIMIT).await;
    // Membership is shared too.
    let seen = |l: &proto::ListNodesResponse| {
        let v: Vec<(String, i64)> = node_ids(l)
            .into_iter()
            .zip(l.nodes.iter().map(|n| n.applied_version))
            .collect();
        (v, l.latest_version)
    };
    assert_eq!(seen(&admin_a.nodes().await), seen(&admin_b.nodes().await));
    let reconnects = metric(&x, "sluice_control_plane_reconnects_total");

    a.kill();
    // x fails over to B and re-registers there; y cannot, and its record
    // goes when A's lease (2 s) runs out.
    wait_metric(&x, "sluice_control_plane_reconnects_total", LIMIT, |v| {
        v > reconnects
    })
    .await;
    wait_metric(&x, "sluice_control_plane_connected", LIMIT, |v| v == 1.0).await;
    admin_b
        .wait_nodes("y expired, x listed through B", LIMIT, |l| {
            node_ids(l) == ["x"]
        })
        .await;
    // Past A's lease x is still listed (its record moved to B's lease).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node_ids(&admin_b.nodes().await), ["x"]);

    let v2 = admin_b.apply(&app2_config(pg)).await.version;
    assert!(v2 > v1);
    admin_b.wait_applied(1, v2, LIMIT).await;
    works(&x, "agent1", &key.key, "app2").await;
    // y serves on what it has.
    works(&y, "agent1", &key.key, "app").await;
    assert_eq!(metric(&y, "sluice_snapshot_version"), v1 as f64);

    // A comes back: it reports B's version, and y finds it by itself.
    a.spawn();
    let mut admin_a = Admin::connect(&a.url()).await;
    let deadline = Instant::now() + LIMIT;
    while admin_a.version().await.snapshot_version != v2 {
        assert!(
            Instant::now() < deadline,
            "restarted replica A never reached {v2}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin_a.nodes().await.latest_version, v2);
    admin_a.wait_applied(2, v2, RECONNECT_LIMIT).await;
    works(&y, "agent1", &key.key, "app2").await;
}

/// Issue 3: etcd restarted: the control plane recovers by itself and the
/// next apply reaches nodes; nodes serve throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_recovers_from_an_etcd_restart() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let etcd = Etcd::start();
    let cp = ControlPlane::etcd(&etcd, "/sluice/");
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&base_config(pg, key)).await.version;
    let n1 = start_node(&[cp.url()], "n1");
    admin.wait_applied(1, v1, LIMIT).await;
    let open = works(&n1, "agent1", &key.key, "app").await;

    etcd.kill();
    // While etcd is away an apply is refused (not hung, not lost).
    let r = tokio::time::timeout(Duration::from_secs(30), admin.try_apply(&app2_config(pg)))
        .await
        .expect("apply hung while etcd is down");
    let e = r.expect_err("apply accepted while etcd is down");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    // Nodes do not depend on etcd.
    works(&n1, "agent1", &key.key, "app").await;
    select_one(&open).await;

    etcd.spawn();
    let v2 = apply_retrying(&mut admin, &app2_config(pg), Duration::from_secs(30)).await;
    assert!(v2 > v1);
    admin.wait_applied(1, v2, RECONNECT_LIMIT).await;
    works(&n1, "agent1", &key.key, "app2").await;
    select_one(&open).await;
    assert!(cp.log().contains("sluice-cp listening"));
}

// ------------------------------------------------ transport refusals

/// Issue 3: sluice-cp refuses plaintext on a non-loopback listener.
#[test]
fn control_plane_refuses_plaintext_off_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let port = sluice_tests::free_port();
    let out = process::run(
        std::process::Command::new(cp::bin("sluice-cp"))
            .arg("--listen")
            .arg(format!("0.0.0.0:{port}"))
            .arg("--plaintext")
            .arg("--data-dir")
            .arg(tmp.path().join("data")),
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success(), "sluice-cp started: {out:?}");
    assert!(
        out.stderr.contains("--plaintext") && out.stderr.contains("loopback"),
        "unclear refusal: {}",
        out.stderr
    );
}

/// Issue 3: sluice-dp refuses an http:// control plane that is not on
/// loopback, naming the field.
#[test]
fn node_refuses_plaintext_control_plane_off_loopback() {
    let e = match cp::node(&["http://10.1.2.3:7600".to_string()], "n1", NODE, false) {
        Ok(g) => panic!(
            "sluice-dp started with a plaintext remote control plane\n{}",
            g.log()
        ),
        Err(e) => e,
    };
    assert!(e.contains("control_plane.urls[0]"), "{e}");
    // Loopback by name is fine (it starts, not ready: nothing listens).
    let port = sluice_tests::free_port();
    let g = cp::node(&[format!("http://localhost:{port}")], "n2", NODE, false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.http_get("/readyz").unwrap().0, 503);
}

/// Serve `body` as JSON to every HTTP request on a loopback port, counting
/// requests. The thread lives as long as the test process.
fn serve_json(body: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, hits)
}

/// An IdentityProvider given by `jwksUrl`: the control plane fetches the
/// keys at apply and ships them in the snapshot; a node then accepts that
/// issuer's JWTs over TLS. An unreachable URL is refused at apply, naming
/// `spec.jwksUrl`; `get` does not echo the fetched document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_keys_fetched_from_jwks_url() {
    use sluice_tests::{connect_tls, jwt, ClientOptions, DevCerts};
    let pg = Pg::shared();
    let keys = jwt::JwtKeys::new();
    let (jwks_port, hits) = serve_json(keys.jwks.to_string());
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let idp = |url: &str| {
        format!(
            "apiVersion: sluice.dev/v1\nkind: IdentityProvider\nmetadata: {{name: corp}}\nspec:\n  issuer: \"{}\"\n  audience: [\"{}\"]\n  jwksUrl: \"{url}\"\n",
            jwt::ISSUER,
            jwt::AUDIENCE
        )
    };
    let config = [
        cp::connection_yaml("app", pg),
        idp(&format!("http://127.0.0.1:{jwks_port}/jwks.json")),
        cp::policy_yaml("alice-app", &["app"], &["alice"], &[]),
    ]
    .join("---\n");
    let v = admin.apply(&config).await.version;
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "JWKS never fetched"
    );
    let certs = DevCerts::shared();
    let node = cp::node(
        &[cp.url()],
        "jwt-node",
        &format!(
            "{NODE}tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
            certs.server_pem.display(),
            certs.server_key.display()
        ),
        true,
    )
    .unwrap();
    admin.wait_applied(1, v, LIMIT).await;
    let mut cfg = node.config("alice", &keys.rs256(&jwt::claims("alice")), "app");
    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let c = connect_tls(&cfg, ClientOptions::tls_no_verify())
        .await
        .unwrap_or_else(|e| panic!("JWT from the fetched JWKS refused: {}", err_text(&e)));
    select_one(&c).await;

    // The fetched document is not echoed back.
    let got = admin.get("IdentityProvider", "corp").await.unwrap();
    let Some(Spec::IdentityProvider(p)) = &got[0].spec else {
        panic!("not an IdentityProvider: {got:?}")
    };
    assert!(p.jwks_json.is_empty(), "get echoed the fetched JWKS");

    // A URL nobody answers is refused at apply, naming the field.
    let dead = sluice_tests::free_port();
    let e = admin
        .try_apply(&idp(&format!("http://127.0.0.1:{dead}/jwks.json")))
        .await
        .expect_err("an unreachable jwksUrl was accepted");
    assert!(
        e.message().contains("spec.jwksUrl"),
        "refusal does not name the field: {}",
        e.message()
    );
}

/// A FunctionCall message (`F`, the fast-path protocol: libpq's `PQfn`) of
/// function `oid`, no arguments, text result.
fn function_call(oid: i32) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes()); // argument formats
    body.extend_from_slice(&0i16.to_be_bytes()); // arguments
    body.extend_from_slice(&0i16.to_be_bytes()); // result format
    let mut m = vec![b'F'];
    m.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    m.extend_from_slice(&body);
    m
}

/// A FunctionCall runs SQL on the target like a statement does (any
/// function, `query_to_xml` included), so a session whose grant was
/// revoked is ended by its next FunctionCall too, not only by its next
/// Query or Execute (it was not: the fast path went on after the
/// revocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_is_ended_by_its_next_function_call() {
    use sluice_tests::wire;
    const PG_BACKEND_PID: i32 = 2026;
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let v = admin.apply(&base_config(pg, key)).await.version;
    let n1 = start_node(&[cp.url()], "n1");
    admin.wait_applied(1, v, LIMIT).await;
    let mut s = wire::login(n1.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    // The fast path works while the grant stands.
    s.raw.send(&function_call(PG_BACKEND_PID)).await.unwrap();
    let m = s.raw.read_msg().await;
    assert_eq!(m.tag_char(), 'V', "FunctionCallResponse expected");
    assert_eq!(s.raw.read_msg().await.tag_char(), 'Z');

    let v = admin
        .delete("Policy", "bots-app")
        .await
        .expect("delete policy");
    admin.wait_applied(1, v, LIMIT).await;
    s.raw.send(&function_call(PG_BACKEND_PID)).await.unwrap();
    let closed = s
        .raw
        .expect_close(LIMIT, "FunctionCall after the revocation")
        .await;
    assert!(
        closed.others.iter().all(|m| m.tag != b'V'),
        "a revoked session's FunctionCall was answered: {:?}",
        closed
            .others
            .iter()
            .map(|m| m.tag_char())
            .collect::<Vec<_>>()
    );
    assert_eq!(closed.errors.len(), 1, "{:?}", closed.errors);
    assert_eq!(closed.errors[0].code(), "42501", "{}", closed.errors[0]);
    assert!(
        closed.errors[0].message().contains("permission revoked"),
        "{}",
        closed.errors[0]
    );
    assert_eq!(metric(&n1, "sluice_sessions_revoked_total"), 1.0);
}

/// A JWT session rests on the IdentityProvider that vouched for it:
/// deleting that provider (a compromised IdP, say) ends the session at its
/// next statement even while another provider remains. (It did not: only
/// an identity left with no provider at all lost its JWT sessions.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_identity_provider_ends_the_jwt_sessions_it_vouched_for() {
    use sluice_tests::{connect_tls, jwt, ClientOptions, DevCerts};
    let pg = Pg::shared();
    let keys = jwt::JwtKeys::new();
    let idp = |name: &str, issuer: &str| {
        format!(
            "apiVersion: sluice.dev/v1\nkind: IdentityProvider\nmetadata: {{name: {name}}}\nspec:\n  issuer: \"{issuer}\"\n  audience: [\"{}\"]\n  jwks: {}\n",
            jwt::AUDIENCE,
            keys.jwks
        )
    };
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let config = [
        cp::connection_yaml("app", pg),
        idp("corp", jwt::ISSUER),
        idp("partner", "https://partner.test"),
        cp::policy_yaml("alice-app", &["app"], &["alice"], &[]),
    ]
    .join("---\n");
    let v = admin.apply(&config).await.version;
    let certs = DevCerts::shared();
    let node = cp::node(
        &[cp.url()],
        "jwt-node",
        &format!(
            "{NODE}tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
            certs.server_pem.display(),
            certs.server_key.display()
        ),
        true,
    )
    .unwrap();
    admin.wait_applied(1, v, LIMIT).await;
    let login = |claims: serde_json::Value| {
        let mut cfg = node.config("alice", &keys.rs256(&claims), "app");
        cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
        async move { connect_tls(&cfg, ClientOptions::tls_no_verify()).await }
    };
    let by_corp = login(jwt::claims("alice"))
        .await
        .unwrap_or_else(|e| panic!("JWT from corp refused: {}", err_text(&e)));
    select_one(&by_corp).await;
    let mut claims = jwt::claims("alice");
    claims["iss"] = "https://partner.test".into();
    let by_partner = login(claims)
        .await
        .unwrap_or_else(|e| panic!("JWT from partner refused: {}", err_text(&e)));
    select_one(&by_partner).await;

    let v = admin
        .delete("IdentityProvider", "corp")
        .await
        .expect("delete identity provider");
    admin.wait_applied(1, v, LIMIT).await;
    assert_revoked(&by_corp, "the identity provider that vouched was deleted").await;
    // The other provider's session, and its new logins, go on.
    select_one(&by_partner).await;
    let Err(e) = login(jwt::claims("alice")).await else {
        panic!("a JWT of the deleted provider logged in");
    };
    assert_eq!(db_code(&e).as_deref(), Some("28P01"), "{}", err_text(&e));
}

/// A Bind plans its statement on the target, and planning runs functions
/// (an IMMUTABLE one with constant arguments is folded at Bind, and can
/// RAISE what it reads as a notice): a revoked session's Bind is refused
/// too. (It was forwarded: only Query, Parse and Execute were checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_is_ended_by_its_next_bind() {
    use sluice_tests::wire;
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let v = admin.apply(&base_config(pg, key)).await.version;
    let n1 = start_node(&[cp.url()], "n1");
    admin.wait_applied(1, v, LIMIT).await;
    let mut s = wire::login(n1.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    s.raw
        .send(&[wire::parse_bytes("s1", "select 1"), wire::sync_bytes()].concat())
        .await
        .unwrap();
    assert_eq!(s.raw.read_msg().await.tag_char(), '1');
    assert_eq!(s.raw.read_msg().await.tag_char(), 'Z');

    let v = admin
        .delete("Policy", "bots-app")
        .await
        .expect("delete policy");
    admin.wait_applied(1, v, LIMIT).await;
    s.raw
        .send(&[wire::bind_bytes("", "s1"), wire::sync_bytes()].concat())
        .await
        .unwrap();
    let closed = s.raw.expect_close(LIMIT, "Bind after the revocation").await;
    let tags: Vec<char> = closed.others.iter().map(|m| m.tag_char()).collect();
    assert!(
        !tags.contains(&'2'),
        "a revoked session's Bind was forwarded: {tags:?}"
    );
    assert_eq!(closed.errors.len(), 1, "{:?}", closed.errors);
    assert_eq!(closed.errors[0].code(), "42501", "{}", closed.errors[0]);
}

/// A Group with `n` members of 60 characters each (about `n` × 62 bytes).
fn big_group(name: &str, n: usize) -> proto::Resource {
    proto::Resource {
        api_version: proto::API_VERSION.into(),
        kind: "Group".into(),
        name: name.into(),
        spec: Some(Spec::Group(proto::GroupSpec {
            members: (0..n).map(|i| format!("{name}-{i:0>50}")).collect(),
        })),
        revision: 0,
    }
}

/// A configuration larger than gRPC's default 4 MiB message limit (here
/// two applies of 2.5 MiB each, each under it) still reaches nodes and
/// `sluicectl get`; one over `MAX_CONFIG_BYTES` is refused at apply, with
/// a message saying so. Embedded store: etcd refuses values over its own
/// request limit (1.5 MiB by default) by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_over_4_mib_reaches_nodes_and_get() {
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    for name in ["big-a", "big-b"] {
        admin
            .apply_resources(vec![big_group(name, 40_000)])
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e:?}"));
    }
    let v = admin.version().await.snapshot_version;
    let n1 = start_node(&[cp.url()], "n1");
    admin.wait_applied(1, v, LIMIT).await;
    assert_eq!(metric(&n1, "sluice_control_plane_connected"), 1.0);

    let out = cp.ctl(&["get", "groups", "-o", "json"], None);
    out.assert_success("get groups");
    assert!(out.stdout.len() > 4 << 20, "{} bytes", out.stdout.len());
    assert!(out.stdout.contains("big-b-"), "get groups lists big-b");

    let over = proto::MAX_CONFIG_BYTES / 62 + 1_000;
    let e = admin
        .apply_resources(vec![big_group("huge", over)])
        .await
        .expect_err("a configuration over MAX_CONFIG_BYTES");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("MiB"), "{}", e.message());
    assert_eq!(admin.version().await.snapshot_version, v, "nothing changed");
}

/// etcd refuses a configuration over its request limit (the 2.5 MiB one
/// here is over etcd's gRPC message limit too): `sluicectl apply` says so
/// and exits 1, refused, not 3 as when the control plane or etcd is down,
/// which an operator (or a script) would wait out and retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_over_etcds_limit_is_refused_not_unreachable() {
    let cp = ControlPlane::on(Backend::Etcd, vec![]);
    let members: Vec<String> = (0..40_000).map(|i| format!("m-{i:0>56}")).collect();
    let yaml = format!(
        "apiVersion: sluice.dev/v1\nkind: Group\nmetadata: {{name: big}}\nspec:\n  members: [{}]\n",
        members.join(", ")
    );
    let out = cp.ctl(&["apply", "-f", "-"], Some(yaml.as_bytes()));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("--max-request-bytes"),
        "the message says which limit: {}",
        out.stderr
    );
    // The control plane and etcd are fine.
    let small =
        "apiVersion: sluice.dev/v1\nkind: Group\nmetadata: {name: small}\nspec: {members: [a]}\n";
    cp.ctl(&["apply", "-f", "-"], Some(small.as_bytes()))
        .assert_success("a small apply after the refused one");
}

/// A resource whose spec is another kind's (a client building resources
/// itself, not sluicectl) is refused: stored, it would be a Connection to
/// the control plane's reference checks and `get`, and a Group to nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_of_another_kind_is_refused() {
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let r = proto::Resource {
        api_version: proto::API_VERSION.into(),
        kind: "Connection".into(),
        name: "db".into(),
        spec: Some(Spec::Group(proto::GroupSpec {
            members: vec!["agent1".into()],
        })),
        revision: 0,
    };
    let e = admin
        .apply_resources(vec![r])
        .await
        .expect_err("a Group spec under kind Connection");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("document 1 (Connection db): spec:"),
        "{}",
        e.message()
    );
    assert_eq!(admin.version().await.snapshot_version, 0, "nothing stored");
}

/// A stream's node id is fixed by its first request (checked there against
/// a certificate that names a node): a later request naming another node
/// closes the stream, and `nodes` never lists the node under that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_change_its_id_mid_stream() {
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let ch = tonic::transport::Endpoint::from_shared(cp.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = proto::snapshot_service_client::SnapshotServiceClient::new(ch);
    let request = |id: &str| proto::SnapshotRequest {
        node: Some(proto::Node {
            id: id.into(),
            address: "127.0.0.1:1".into(),
            cores: 1,
            build: "test".into(),
            ..Default::default()
        }),
        applied_version: 0,
        response_nonce: String::new(),
        error_detail: None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(request("n-a")).await.unwrap();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut responses = client.stream(requests).await.unwrap().into_inner();
    let first = responses.message().await.unwrap();
    assert!(first.is_some(), "the current snapshot at once");
    admin
        .wait_nodes("n-a listed", LIMIT, |l| node_ids(l) == ["n-a"])
        .await;

    tx.send(request("n-b")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let ids = node_ids(&admin.nodes().await);
        assert!(
            !ids.iter().any(|i| i == "n-b"),
            "listed under the name it switched to: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = tokio::time::timeout(LIMIT, responses.message())
        .await
        .expect("the stream is closed");
    let e = end.expect_err("closed with an error");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    admin
        .wait_nodes("n-a gone with its stream", LIMIT, |l| l.nodes.is_empty())
        .await;
}

/// An apply refused as a whole writes nothing, not even the JWKS document
/// it fetched for an IdentityProvider in it: those keys would otherwise go
/// to nodes at once (a new snapshot version), trusted under the provider's
/// name though its new `jwksUrl` was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_apply_does_not_change_fetched_jwks() {
    use sluice_tests::jwt;
    let keys_a = jwt::JwtKeys::new();
    let keys_b = jwt::JwtKeys::new();
    let (port_a, _) = serve_json(keys_a.jwks.to_string());
    let (port_b, hits_b) = serve_json(keys_b.jwks.to_string());
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let idp = |port: u16| {
        format!(
            "apiVersion: sluice.dev/v1\nkind: IdentityProvider\nmetadata: {{name: corp}}\nspec:\n  issuer: \"{}\"\n  audience: [\"{}\"]\n  jwksUrl: \"http://127.0.0.1:{port}/jwks.json\"\n",
            jwt::ISSUER,
            jwt::AUDIENCE
        )
    };
    admin.apply(&idp(port_a)).await;
    let v = admin.version().await.snapshot_version;
    let refused = [
        idp(port_b),
        cp::policy_yaml("p", &["missing"], &["alice"], &[]),
    ]
    .join("---\n");
    let e = admin
        .try_apply(&refused)
        .await
        .expect_err("a Policy naming a missing Connection");
    assert!(e.message().contains("missing"), "{}", e.message());
    assert!(hits_b.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        admin.version().await.snapshot_version,
        v,
        "the refused apply made a new snapshot"
    );
}

/// `ClientCertificate` resources: a node whose TLS trusts a client CA lets
/// the identity a certificate names log in with it (no password), and
/// ends its sessions at their next statement once the resource is deleted;
/// `sluicectl get` lists the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_resources_authenticate_and_their_deletion_ends_sessions() {
    use sluice_tests::client::ClientCa;
    use sluice_tests::{connect_tls, DevCerts};
    let pg = Pg::shared();
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("agents CA");
    let ca_file = dir.path().join("client-ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let cert_doc = "apiVersion: sluice.dev/v1\nkind: ClientCertificate\nmetadata: {name: agent7-cert}\nspec:\n  identity: agent7\n  spiffeId: \"spiffe://corp.example/agent/7\"\n  groups: [bots]\n";
    let config = [
        cp::connection_yaml("app", pg),
        cert_doc.to_string(),
        cp::policy_yaml("agent7-app", &["app"], &["agent7"], &[]),
    ]
    .join("---\n");
    let v = admin.apply(&config).await.version;
    let certs = DevCerts::shared();
    let node = cp::node(
        &[cp.url()],
        "cert-node",
        &format!(
            "{NODE}tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  client_ca_file: \"{}\"\n",
            certs.server_pem.display(),
            certs.server_key.display(),
            ca_file.display()
        ),
        true,
    )
    .unwrap();
    admin.wait_applied(1, v, LIMIT).await;
    let login = |tls| {
        let mut cfg = node.config("agent7", "", "app");
        cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
        async move { connect_tls(&cfg, tls).await }
    };
    let c = login(ca.client(Some("spiffe://corp.example/agent/7"), "a7"))
        .await
        .unwrap_or_else(|e| panic!("certificate refused: {}\n{}", err_text(&e), node.log()));
    select_one(&c).await;
    let e = login(ca.client(Some("spiffe://corp.example/agent/8"), "a8"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));
    let out = cp.ctl(&["get", "certs"], None);
    assert!(
        out.stdout.contains("agent7-cert") && out.stdout.contains("spiffe://corp.example/agent/7"),
        "{}",
        out.stdout
    );

    let v = admin
        .delete("ClientCertificate", "agent7-cert")
        .await
        .expect("delete the certificate");
    admin.wait_applied(1, v, LIMIT).await;
    assert_revoked(&c, "the identity's client certificate was deleted").await;
    let e = login(ca.client(Some("spiffe://corp.example/agent/7"), "a7"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));
}

/// A node without `tls.client_ca_file` asks no client for a certificate,
/// so an identity that only a `ClientCertificate` lets in cannot log in
/// there: it is told so (28000), and the node warns when it applies such a
/// snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_client_ca_says_certificate_identities_cannot_log_in_there() {
    use sluice_tests::client::ClientCa;
    use sluice_tests::{connect_tls, DevCerts};
    let pg = Pg::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let cert_doc = "apiVersion: sluice.dev/v1\nkind: ClientCertificate\nmetadata: {name: agent7-cert}\nspec:\n  identity: agent7\n  spiffeId: \"spiffe://corp.example/agent/7\"\n";
    let config = [
        cp::connection_yaml("app", pg),
        cert_doc.to_string(),
        cp::policy_yaml("agent7-app", &["app"], &["agent7"], &[]),
    ]
    .join("---\n");
    let v = admin.apply(&config).await.version;
    let certs = DevCerts::shared();
    let node = cp::node(
        &[cp.url()],
        "no-client-ca",
        &format!(
            "{NODE}tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
            certs.server_pem.display(),
            certs.server_key.display(),
        ),
        true,
    )
    .unwrap();
    admin.wait_applied(1, v, LIMIT).await;
    let mut cfg = node.config("agent7", "", "app");
    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let ca = ClientCa::new("agents CA");
    let e = connect_tls(&cfg, ca.client(Some("spiffe://corp.example/agent/7"), "a7"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_code(&e).as_deref(), Some("28000"), "{}", err_text(&e));
    assert!(
        err_text(&e).contains("this gateway does not accept client certificates"),
        "{}",
        err_text(&e)
    );
    assert!(
        node.log()
            .contains("cannot log in with it on this node: it has no tls.client_ca_file"),
        "{}",
        node.log()
    );
}
