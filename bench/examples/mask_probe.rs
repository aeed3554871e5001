//! Per-column cost probe: `mask_probe COLUMN ITERS` masks only the
//! cells of one `orders` column (0 id, 1 customer, 2 e-mail, 3 phone, 4
//! address, 5 created_at, 6 total, 7 order ref, 8 status, 9 notes; 99:
//! 20 000 clean free-text notes), for instruction counts per cell:
//!
//! ```bash
//! cargo build --profile bench -p bench --example mask_probe
//! # (instructions of 2 iterations - 0) / 2 / cells
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/mask_probe 3 2
//! ```

use dataplane::mask::corpus::{self, Rng};
use dataplane::mask::{Engine, Hits, MaskingProfile};
use std::hint::black_box;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(col), Some(iters)) = (
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: mask_probe COLUMN ITERS (COLUMN 0-9 of orders, or 99: clean notes)");
        std::process::exit(2);
    };
    if col > 9 && col != 99 {
        eprintln!("mask_probe: no column {col} (0-9 of orders, or 99)");
        std::process::exit(2);
    }
    let mut rng = Rng::new(2026);
    let rows = corpus::orders(&mut rng, 10_000);
    let engine = Engine::compile(&MaskingProfile::default()).unwrap();
    let cells: Vec<Vec<u8>> = if col == 99 {
        let mut r2 = Rng::new(7);
        (0..20000)
            .map(|_| corpus::free_text(&mut r2).into_bytes())
            .collect()
    } else {
        rows.iter()
            .filter_map(|r| r[col].clone())
            .map(|s| s.into_bytes())
            .collect()
    };
    let mut work = cells.clone();
    let mut hits = Hits::new();
    let mut n = 0u64;
    for _ in 0..iters {
        for (w, c) in work.iter_mut().zip(&cells) {
            w.copy_from_slice(c);
            n += engine.mask_counted(w, &mut hits) as u64;
        }
        black_box(&work);
    }
    let bytes: usize = cells.iter().map(Vec::len).sum();
    println!("col {col}: {} cells, {bytes} bytes, {n} hits", cells.len());
}
