//! The audit trail's per-statement cost on a data core, without I/O: the
//! tracker fed one pgbench `-S` exchange (Query; RowDescription, DataRow,
//! CommandComplete, ReadyForQuery) and the record encoded into a reused
//! buffer, as the relay does. Variants: SQL recorded as sent, and SQL put
//! through the default masking profile first (what the data plane does).

use bench::pgbench_select_responses;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::audit::record::{encode_statement, Origin};
use dataplane::audit::{Clock, Tracker};
use dataplane::mask::{Engine, MaskingProfile};
use dataplane::protocol::frame::FrameScanner;
use std::hint::black_box;

fn statement(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_statement");
    g.throughput(Throughput::Elements(1));
    let mut query = Vec::new();
    bench::msg(
        &mut query,
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 73321;\0",
    );
    let answer = pgbench_select_responses(1);
    let engine = Engine::compile_shared(&MaskingProfile::default()).unwrap();
    for (name, masking) in [("sql_as_sent", false), ("sql_masked", true)] {
        g.bench_function(name, |b| {
            let mut t = Tracker::new(4096);
            if masking {
                t.set_masking(engine.clone());
            }
            let mut cs = FrameScanner::new(1 << 30);
            let mut ts = FrameScanner::new(1 << 30);
            let mut buf = Vec::with_capacity(512);
            let origin = Origin {
                core: 0,
                core_seq: 1,
                snapshot_version: 1,
            };
            let mut now = 0u64;
            b.iter(|| {
                now += 1000;
                let clock = Clock {
                    mono_ns: now,
                    unix_ns: now as i64,
                };
                cs.scan_parts(black_box(&query), |p| t.client_part(p, clock))
                    .unwrap();
                ts.scan_parts(black_box(&answer), |p| t.target_part(p, clock))
                    .unwrap();
                while let Some(v) = t.peek_record() {
                    buf.clear();
                    encode_statement(&mut buf, origin, &[], &v);
                    t.pop_record();
                }
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, statement);
criterion_main!(benches);
