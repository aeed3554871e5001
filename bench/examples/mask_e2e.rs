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
//! The hex references are a seeded hash rather than md5 (same alphabet and
//! length; the engine cannot tell them apart).

use dataplane::mask::corpus::{self, Rng};
use dataplane::mask::{mask_data_row, Engine, Hits, MaskingProfile, RowPlan};
use std::hint::black_box;

/// 32 hex digits, fixed per (row, sentence): SplitMix64 of the pair.
fn hex32(g: u64, i: u64) -> String {
    let a = Rng::new(g * 16 + i).next_u64();
    let b = Rng::new(a ^ 0x1234_5678).next_u64();
    format!("{a:016x}{b:016x}")
}

/// `date '2024-01-01' + day` (2024 is a leap year; day < 366).
fn date(day: u64) -> String {
    const MONTHS: [u64; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut d = day;
    let mut m = 0;
    while d >= MONTHS[m] {
        d -= MONTHS[m];
        m += 1;
    }
    format!("2024-{:02}-{:02}", m + 1, d + 1)
}

fn row(g: u64) -> Vec<Option<String>> {
    let customer = format!("customer {} (account {:06})", g % 997, g * 7919 % 100_000);
    let contact = if g.is_multiple_of(5) {
        format!("user{g}@example.com")
    } else {
        format!("contact via portal, ticket {}", g * 31)
    };
    let mut note = Vec::new();
    for i in 1..=8u64 {
        let cents = (g * 13 + i) % 10_000;
        note.push(format!(
            "Order {g}-{i} shipped {} to depot {}, qty {} at {}.{:02} EUR, ref {}.",
            date((g + i) % 365),
            (g * i) % 97,
            i + 1,
            cents / 100,
            cents % 100,
            hex32(g, i)
        ));
    }
    let mut note = note.join(" ");
    let cards = [
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "378282246310005",
    ];
    if g.is_multiple_of(10) {
        note.push_str(&format!(" Paid with card {}.", cards[(g % 3) as usize]));
    } else if g % 20 == 1 {
        note.push_str(" Customer SSN 536-22-8841 on file.");
    } else if g % 20 == 2 {
        note.push_str(" Refund to GB82 WEST 1234 5698 7654 32.");
    } else {
        note.push_str(" No payment details.");
    }
    let amount = (g % 100_000) * 100 / 7;
    vec![
        Some(g.to_string()),
        Some(customer),
        Some(contact),
        Some(note),
        Some(format!("{}.{:02}", amount / 100, amount % 100)),
        Some(format!("2024-01-01 00:00:00+00 + {g}")),
    ]
}

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
    let cols: &[(&str, u32)] = &[
        ("id", 23),
        ("customer", 25),
        ("contact", 25),
        ("note", 25),
        ("amount", 1700),
        ("created", 1184),
    ];
    let mut plan = RowPlan::new();
    plan.describe(&engine, &corpus::row_description(cols))
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
