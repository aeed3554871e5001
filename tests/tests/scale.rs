//! Scale: 1,000 concurrent client sessions through one gateway node, all
//! open at once, all still serving queries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_tests::client::{err_text, within};
use sluice_tests::{connect, raise_nofile_limit, ApiKey, Gateway, GatewayConfig, Pg};

const SESSIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_sessions() {
    let limit = raise_nofile_limit();
    // Each session costs the test one socket and the gateway two.
    assert!(
        limit >= (SESSIONS as u64) * 2 + 200,
        "RLIMIT_NOFILE hard limit {limit} is too low for {SESSIONS} sessions"
    );
    let pg = Pg::shared();
    assert!(sluice_tests::pg::MAX_CONNECTIONS >= SESSIONS as u32 + 50);
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let cfg = gw.agent_config();

    let t0 = Instant::now();
    let failures = Arc::new(AtomicUsize::new(0));
    let clients: Vec<tokio_postgres::Client> = within(
        Duration::from_secs(240),
        "opening 1000 sessions",
        futures_util::stream::iter(0..SESSIONS)
            .map(|i| {
                let cfg = cfg.clone();
                let failures = failures.clone();
                async move {
                    match connect(&cfg).await {
                        Ok(c) => Some(c),
                        Err(e) => {
                            if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("session {i}: {}", err_text(&e));
                            }
                            None
                        }
                    }
                }
            })
            .buffer_unordered(64)
            .filter_map(|c| async move { c })
            .collect(),
    )
    .await;
    println!("opened {} sessions in {:?}", clients.len(), t0.elapsed());
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "some of the {SESSIONS} sessions failed to open"
    );
    assert_eq!(clients.len(), SESSIONS);

    // All are open at once: the gateway and the server both see them.
    let open = gw.metrics().get("sluice_connections_open", &[]);
    assert!(open >= SESSIONS as f64, "sluice_connections_open = {open}");
    let su = pg.superuser().await;
    let backends: i64 = su
        .query_one(
            "select count(*) from pg_stat_activity where datname = 'appdb' and usename = 'app_owner'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        backends >= SESSIONS as i64,
        "server backends for appdb: {backends}"
    );

    // Queries keep flowing on every session, all at once.
    let t1 = Instant::now();
    let results = within(
        Duration::from_secs(240),
        "3 queries on each of 1000 sessions",
        futures_util::future::join_all(clients.iter().enumerate().map(|(i, c)| async move {
            for k in 0..3i64 {
                let v = i as i64 * 10 + k;
                let r = c.query_one("select $1::int8 + 1", &[&v]).await?;
                if r.get::<_, i64>(0) != v + 1 {
                    panic!("session {i}: wrong answer");
                }
            }
            c.simple_query("select 1").await?;
            Ok::<_, tokio_postgres::Error>(())
        })),
    )
    .await;
    let bad: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("session {i}: {}", err_text(e)))
        })
        .collect();
    println!("{} queries in {:?}", SESSIONS * 4, t1.elapsed());
    assert!(
        bad.is_empty(),
        "{} sessions failed, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );

    gw.assert_alive();
    drop(clients);
    // The gateway notices the closes.
    gw.wait_connections_closed(Duration::from_secs(30)).await;
}
