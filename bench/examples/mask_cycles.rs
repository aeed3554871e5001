//! Fixed work for `perf stat` (cycles and instructions of this process only,
//! which a busy shared box disturbs far less than wall time):
//!
//! ```bash
//! cargo build --profile bench -p bench --example mask_cycles
//! perf stat -e cycles:u,instructions:u target/release/examples/mask_cycles engine 200
//! ```
//!
//! Contenders: `copy` (the per-iteration copy alone, to subtract), `engine`,
//! `scalar`, `regex`, `rows`, `clean_engine`, `clean_regex`; `columns`
//! times `engine` per text column of the orders corpus instead (`columns
//! ITERS NAME`: that column only). Prints the
//! bytes processed per iteration and the time of one (minimum and median,
//! the per-iteration copy excluded). `MASK_NO_PLANES=1` times the AVX-512 scan
//! copy of CPUs without VBMI and GFNI.

use dataplane::mask::corpus::{self, Rng};
use dataplane::mask::{mask_data_row, Engine, Hits, Kernel, MaskingProfile, RowPlan};
use std::hint::black_box;

#[path = "../benches/support/mask_common.rs"]
mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("engine");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let mut rng = Rng::new(2026);
    let rows = corpus::orders(&mut rng, 10_000);
    let (buf, ranges) = common::cells(&rows);
    let (clean, clean_ranges) = common::clean_cells(&mut rng, 20_000);
    // MASK_PROFILE_YAML overrides the default profile (to cost parts).
    let p = match std::env::var("MASK_PROFILE_YAML") {
        Ok(y) => MaskingProfile::from_yaml(&y).unwrap(),
        Err(_) => MaskingProfile::default(),
    };
    let engine = Engine::compile(&p).unwrap();
    // `MASK_NO_PLANES=1`: the AVX-512 scan as CPUs without VBMI and GFNI
    // (Skylake-SP, Cascade Lake) run it.
    let engine = if std::env::var_os("MASK_NO_PLANES").is_some() {
        engine.without_planes()
    } else {
        engine
    };
    let scalar = Engine::compile_with_kernel(&p, Kernel::Scalar).unwrap();
    let rx = common::RegexMasker::new();
    let (bodies, body_ranges) = common::bodies(&rows);
    let mut plan = RowPlan::new();
    plan.describe(&engine, &corpus::row_description(corpus::ORDERS_COLUMNS))
        .unwrap();
    let mut hits = Hits::new();
    let mut out = Vec::new();
    if what == "columns" {
        columns(&engine, &rows, iters, args.get(3).map(String::as_str));
        return;
    }
    let (data, rs) = match what {
        "rows" => (&bodies, &body_ranges),
        w if w.starts_with("clean") => (&clean, &clean_ranges),
        _ => (&buf, &ranges),
    };
    let mut work = data.clone();
    let mut n = 0u64;
    // Time per iteration, the copy excluded (printed as its minimum and
    // median: the minimum is the least disturbed by a shared box).
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        work.copy_from_slice(data);
        let t = std::time::Instant::now();
        for r in rs.iter() {
            let v = &mut work[r.clone()];
            n += match what {
                "copy" => 0,
                "engine" | "clean_engine" => engine.mask_counted(v, &mut hits) as u64,
                "scalar" => scalar.mask_counted(v, &mut hits) as u64,
                "regex" | "clean_regex" => rx.mask(v) as u64,
                "rows" => {
                    mask_data_row(&engine, &mut plan, v, &mut hits, &mut out).unwrap();
                    0
                }
                other => panic!("unknown contender {other}"),
            };
        }
        black_box(&work);
        times.push(t.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    println!(
        "{what}: {} bytes per iteration, {iters} iterations, {n} hits; \
         per iteration: min {} ns, median {} ns",
        data.len(),
        times.first().copied().unwrap_or(0),
        times.get(times.len() / 2).copied().unwrap_or(0),
    );
}

/// `engine` over the cells of one text column of the orders corpus at a
/// time (or only of column `only`): cells, bytes, hits, and the fastest of
/// `iters` passes, per cell and per byte (where the orders pass goes, by
/// kind of value).
fn columns(engine: &Engine, rows: &[Vec<Option<String>>], iters: usize, only: Option<&str>) {
    let mut hits = Hits::new();
    for (ci, (name, _)) in corpus::ORDERS_COLUMNS.iter().enumerate() {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        let (buf, ranges) = common::cells_of(
            &rows.iter().map(|r| vec![r[ci].clone()]).collect::<Vec<_>>(),
            &[corpus::ORDERS_COLUMNS[ci]],
        );
        if ranges.is_empty() {
            continue;
        }
        let mut work = buf.clone();
        let (mut best, mut found) = (u64::MAX, 0u64);
        for _ in 0..iters.max(1) {
            work.copy_from_slice(&buf);
            let t = std::time::Instant::now();
            found = 0;
            for r in &ranges {
                found += engine.mask_counted(&mut work[r.clone()], &mut hits) as u64;
            }
            black_box(&work);
            best = best.min(t.elapsed().as_nanos() as u64);
        }
        println!(
            "{name:<17} {:>6} cells {:>8} bytes ({:>5.1} per cell) {:>6} hits: min {:>8} ns, {:>6.1} ns per cell, {:>5.2} GB/s",
            ranges.len(),
            buf.len(),
            buf.len() as f64 / ranges.len() as f64,
            found,
            best,
            best as f64 / ranges.len() as f64,
            buf.len() as f64 / best as f64,
        );
    }
}
