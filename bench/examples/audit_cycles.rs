//! Fixed audit work for instruction counting (`valgrind --tool=callgrind`,
//! or `perf stat` where the box has counters): N pgbench `-S` exchanges
//! through a session's [`Tracker`] (SQL masked with the default profile,
//! as the data plane does) and each record pushed into a real ring file by
//! [`CoreAudit`], the whole per-statement path of a data core without the
//! sockets. Instructions per statement = (count at N − count at 0) / N.
//!
//! ```bash
//! cargo build --profile bench -p bench --example audit_cycles
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/audit_cycles 20000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/audit_cycles 0
//! ```
//!
//! With `drain` as the second argument the records are then moved into a
//! spool (no fsync) by the control side's [`Pump`], as the `sluice-audit`
//! thread does: the difference to a run without it is that side's cost.

use std::sync::Arc;

use bench::pgbench_select_responses;
use dataplane::audit::record::session_fields;
use dataplane::audit::ring::RingFile;
use dataplane::audit::{
    AuditGate, AuditStats, Clock, CoreAudit, CoreAuditStats, CoreInit, FsyncPolicy, Pump, Spool,
    SpoolConfig, WhenFull,
};
use dataplane::mask::{Engine, MaskingProfile};
use dataplane::protocol::frame::FrameScanner;
use proto::{AuditConnection, AuditIdentity, AuditSession, AuthMethod};
use std::hint::black_box;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    // Room for every record: nothing consumes the ring here.
    let capacity = (n * 512).clamp(1 << 20, 1 << 30);
    let ring = RingFile::create(&dir.path().join("core-0.ring"), 0, capacity, 1).expect("ring");
    let drain = std::env::args().nth(2).as_deref() == Some("drain");
    let (producer, consumer) = ring.split();
    let stats = Arc::new(CoreAuditStats::default());
    let core = CoreAudit::new(CoreInit {
        core: 0,
        producer,
        gate: Arc::new(AuditGate::default()),
        stats: stats.clone(),
        when_full: WhenFull::FailClosed,
        max_sql_bytes: 4096,
        boot: 1,
        auth_failures_per_second: 0,
    });
    let prefix = session_fields(
        &AuditIdentity {
            name: "agent".into(),
            groups: vec!["bots".into()],
            auth_method: AuthMethod::ScramApiKey as i32,
            issuer: String::new(),
        },
        &AuditSession {
            id: "0000abcd-0-17".into(),
            client_address: "127.0.0.1:51234".into(),
            application_name: "pgbench".into(),
            tls: false,
        },
        &AuditConnection {
            name: "bench".into(),
            target: "127.0.0.1:5432".into(),
            database: "bench".into(),
            role: "bench".into(),
        },
    );
    let engine = Engine::compile_shared(&MaskingProfile::default()).expect("default profile");
    let mut t = core.tracker();
    t.set_masking(engine);
    let mut cs = FrameScanner::new(1 << 30);
    let mut ts = FrameScanner::new(1 << 30);
    let answer = pgbench_select_responses(1);
    // Different accounts, as pgbench sends (built before the loop).
    let queries: Vec<Vec<u8>> = (0..1024u64)
        .map(|i| {
            let mut q = Vec::new();
            let sql = format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};\0",
                1 + (i * 7919) % 1_000_000
            );
            bench::msg(&mut q, b'Q', sql.as_bytes());
            q
        })
        .collect();
    let mut now = 1_000_000u64;
    for i in 0..n {
        let query = &queries[i as usize % queries.len()];
        now += 50_000;
        let clock = Clock {
            mono_ns: now,
            unix_ns: now as i64,
        };
        cs.scan_parts(black_box(query), |p| t.client_part(p, clock))
            .expect("query frame");
        ts.scan_parts(black_box(&answer), |p| t.target_part(p, clock))
            .expect("answer frames");
        assert!(core.drain_tracker(&mut t, &prefix, 1), "ring full");
    }
    let produced = stats.produced.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(produced, n, "one record per statement");
    let mut spooled = 0;
    if drain {
        let mut cfg = SpoolConfig::new(dir.path().join("spool"), "node-1");
        cfg.fsync = FsyncPolicy::Never;
        cfg.quota_bytes = 8 << 30;
        let spool = Spool::open(cfg).expect("spool");
        let mut pump = Pump::new(
            spool,
            vec![consumer],
            Arc::new(AuditGate::default()),
            Arc::new(AuditStats::new(1)),
        );
        loop {
            match pump.step().expect("spool append") {
                0 => break,
                k => spooled += k,
            }
        }
        assert_eq!(spooled as u64, n, "every record spooled");
    }
    println!("{n} statements, {produced} records, {spooled} spooled");
}
