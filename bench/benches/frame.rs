//! Frame splitter throughput: the per-chunk work the relay does in each
//! direction, over realistic server output cut into socket-sized reads.

use bench::{pgbench_select_responses, wide_rows};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::protocol::frame::FrameScanner;
use std::hint::black_box;

fn scan_chunks(stream: &[u8], chunk: usize) -> u32 {
    let mut s = FrameScanner::new(1 << 30);
    let mut ready = 0u32;
    for c in stream.chunks(chunk) {
        s.scan(c, |t, _, _| {
            if t == b'Z' {
                ready += 1;
            }
        })
        .unwrap();
    }
    ready
}

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_scan");
    let small = pgbench_select_responses(2000);
    let wide = wide_rows(2000, 1024);
    for (name, stream) in [("pgbench_select", &small), ("rows_1KiB", &wide)] {
        for chunk in [8 * 1024, 64 * 1024] {
            g.throughput(Throughput::Bytes(stream.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, chunk), &chunk, |b, &chunk| {
                b.iter(|| black_box(scan_chunks(black_box(stream), chunk)))
            });
        }
    }
    // One Query message, as a client sends it.
    let mut q = Vec::new();
    bench::msg(
        &mut q,
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;\0",
    );
    g.throughput(Throughput::Elements(1));
    g.bench_function("client_query_message", |b| {
        let mut s = FrameScanner::new(1 << 30);
        b.iter(|| {
            let mut n = 0;
            s.scan(black_box(&q), |t, _, _| n += (t == b'Q') as u32)
                .unwrap();
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, frame);
criterion_main!(benches);
