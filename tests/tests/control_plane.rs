//! Control plane end to end: real `sluice-cp` (embedded store and real
//! etcd), real `sluice-dp` nodes subscribed to it, real clients.

use std::time::Duration;

use sluice_tests::cp::{self, Admin, ControlPlane};
use sluice_tests::{ApiKey, Pg};

fn base_config(pg: &Pg, key: &ApiKey) -> String {
    [
        cp::connection_yaml("app", pg),
        cp::api_key_yaml("agent1-key", "agent1", &key.verifier, &["bots"]),
        cp::policy_yaml("bots-app", &["app"], &[], &["bots"]),
    ]
    .join("---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reaches_nodes_and_clients_connect() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let cp = ControlPlane::embedded();
    let mut admin = Admin::connect(&cp.url()).await;
    let v = admin.apply(&base_config(pg, key)).await.version;
    let n1 = cp::node(&[cp.url()], "n1", "", true).unwrap();
    let n2 = cp::node(&[cp.url()], "n2", "", true).unwrap();
    admin.wait_applied(2, v, Duration::from_secs(10)).await;
    for n in [&n1, &n2] {
        let c = n.agent().await;
        let row = c.query_one("select 1::int", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
    }
}
