//! Self-checks of the harness itself (no gateway): the throwaway PostgreSQL
//! starts, answers as the roles the other tests rely on, and the metrics and
//! YAML helpers behave.

use sluice_tests::{ApiKey, GatewayConfig, Pg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_starts_with_app_role_and_database() {
    let pg = Pg::shared();
    let c = pg.direct().await;
    let r = c
        .query_one(
            "select current_user::text, current_database()::text, \
             current_setting('max_connections')::int4, current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "app_owner");
    assert_eq!(r.get::<_, String>(1), "appdb");
    assert_eq!(r.get::<_, i32>(2) as u32, sluice_tests::pg::MAX_CONNECTIONS);
    assert!(
        r.get::<_, i32>(3) >= 150000,
        "PostgreSQL 15 or newer expected"
    );
    let su = pg.superuser().await;
    let r = su
        .query_one(
            "select rolsuper from pg_roles where rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    // The server refuses wrong passwords (so the gateway's credentials matter).
    let mut bad = pg.direct_config();
    bad.password("wrong");
    let Err(e) = sluice_tests::connect(&bad).await else {
        panic!("wrong password accepted");
    };
    assert_eq!(sluice_tests::db_code(&e).as_deref(), Some("28P01"));
}

#[test]
fn gateway_config_yaml_shape() {
    let key = ApiKey {
        key: "k".into(),
        verifier: "SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg==".into(),
    };
    let y = GatewayConfig::new()
        .workers(1)
        .limit("handshake_timeout_ms", 1000)
        .connection("app", "127.0.0.1", 5432, "appdb", "u", Some("p\"w"))
        .identity_key("agent1", &key.verifier, &["bots"])
        .grant(&["app"], &[], &["bots"])
        .to_yaml();
    assert!(y.contains("workers: 1\n"), "{y}");
    assert!(y.contains("  handshake_timeout_ms: 1000\n"), "{y}");
    assert!(y.contains("password: \"p\\\"w\""), "{y}");
    assert!(
        y.contains("- { name: \"agent1\", api_key: \"SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg==\""),
        "{y}"
    );
}
