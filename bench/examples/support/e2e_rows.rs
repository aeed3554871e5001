//! The rows of RESULTS §8's `mask_rows` table (`bench/e2e/mask_overhead.sh`),
//! shared by `mask_e2e` and `mask_relay`. The hex references are a seeded
//! hash rather than md5 (same alphabet and length; the engine cannot tell
//! them apart).

use dataplane::mask::corpus::Rng;

/// Columns of `mask_rows`: (name, type oid).
pub const COLUMNS: &[(&str, u32)] = &[
    ("id", 23),
    ("customer", 25),
    ("contact", 25),
    ("note", 25),
    ("amount", 1700),
    ("created", 1184),
];

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

/// Row `g` of `mask_rows` (text format values).
pub fn row(g: u64) -> Vec<Option<String>> {
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
