//! The DataRows of RESULTS §8 (`bench/e2e/mask_overhead.sh`'s `mask_rows`:
//! customer with an account number, contact, an order note of eight
//! sentences with order ids, dates, quantities, prices and 32-digit hex
//! references, the odd card, SSN or IBAN; numeric and timestamptz columns
//! the plan skips), masked through `mask_data_row` in fixed work for
//! `perf stat` and `callgrind`:
//!
//! ```bash
//! cargo build --profile bench -p bench --example mask_e2e
//! # (instructions of 5 iterations - 0) / 5 per pass over 2000 rows
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/mask_e2e 5
//! # CPU time (valgrind has no AVX-512, so it runs the AVX2 kernel):
//! perf stat -x, -e task-clock target/release/examples/mask_e2e 20
//! ```
//!
//! Arguments: iterations (default 100), rows (default 2000). With
//! `MASK_PROFILE_YAML` set, that profile instead of the default one.
//!
//! The rows are built by `support/e2e_rows.rs`.

use dataplane::mask::corpus;
use dataplane::mask::{mask_data_row, Engine, Hits, MaskingProfile, RowPlan};
use std::hint::black_box;

#[path = "support/e2e_rows.rs"]
mod e2e_rows;
use e2e_rows::{row, COLUMNS};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iters: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    // MASK_PROFILE_YAML overrides the default profile (to cost parts).
    let p = match std::env::var("MASK_PROFILE_YAML") {
        Ok(y) => MaskingProfile::from_yaml(&y).unwrap(),
        Err(_) => MaskingProfile::default(),
    };
    let engine = Engine::compile(&p).unwrap();
    let mut plan = RowPlan::new();
    plan.describe(&engine, &corpus::row_description(COLUMNS))
        .unwrap();
    let bodies: Vec<Vec<u8>> = (1..=n).map(|g| corpus::data_row(&row(g))).collect();
    let mut work = bodies.clone();
    let mut hits = Hits::new();
    let mut out = Vec::new();
    for _ in 0..iters {
        for (w, b) in work.iter_mut().zip(&bodies) {
            w.copy_from_slice(b);
            mask_data_row(&engine, &mut plan, w, &mut hits, &mut out).unwrap();
        }
        black_box(&work);
    }
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "e2e rows: {n} rows, {bytes} bytes, {iters} iterations, {} hits",
        hits.total()
    );
}
