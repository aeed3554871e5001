//! Differential check for engine changes: masks a fixed, seeded set of
//! inputs (the benchmark corpus, DataRow bodies, and random strings built
//! from digit groups, separators, token prefixes and sensitive values, up
//! to several blocks long) under several profiles and writes every result
//! to stdout. Build it at two commits and compare the outputs:
//!
//! ```bash
//! cargo run --profile bench -p bench --example mask_dump > new.txt
//! cmp old.txt new.txt
//! MASK_DUMP_KERNEL=avx2 target/release/examples/mask_dump | cmp old.txt -
//! ```
//!
//! `MASK_DUMP_KERNEL=avx512-noplanes` runs the AVX-512 kernel without the
//! scan copy that needs VBMI and GFNI (what Skylake-SP runs).
//!
//! `mask_dump rows-vs-cells` compares instead the dump's random rows masked
//! as DataRows with the same values masked one by one (see
//! [`rows_vs_cells`]).

use dataplane::mask::corpus::{self, Kind, Rng};
use dataplane::mask::{mask_data_row, Engine, Hits, Kernel, MaskingProfile, RowPlan};
use std::io::Write;

const FRAGMENTS: &[&str] = &[
    " ",
    " ",
    "  ",
    "-",
    ".",
    "(",
    ")",
    "+",
    ",",
    ":",
    "@",
    "_",
    "/",
    "=",
    "\\",
    "\t",
    "\n",
    "a",
    "b",
    "x",
    "z",
    "J",
    "B",
    "e",
    "ey",
    "eyJ",
    "AI",
    "AIza",
    "AKIA",
    "ASIA",
    "gh",
    "ghp_",
    "sk_",
    "sk_live_",
    "rk_test_",
    "xox",
    "xoxb-",
    "xapp-",
    "Bearer ",
    "bearer  ",
    "-----BEGIN ",
    "PRIVATE KEY-----",
    "-----END",
    "github_pat_",
    ".com",
    ".co.uk",
    "DE",
    "GB",
    "FR",
    "NL",
    "::",
    "fe80::",
    "1",
    "0",
    "9",
    "12",
    "123",
    "1234",
    "12345",
    "415",
    "555",
    "2671",
    "4111",
    "978-",
    "é",
    "\u{2013}",
    "*",
    "#",
    "ORD-",
    "v1.2.",
    "%",
];

fn random_text(r: &mut Rng, max: usize) -> String {
    let mut s = String::new();
    let target = r.below(max + 1);
    while s.len() < target {
        match r.below(10) {
            0 => s.push_str(&r.digits_range(1, 20)),
            1 => {
                let k = *r.pick(&[
                    &Kind::Card,
                    &Kind::Iban,
                    &Kind::Ssn,
                    &Kind::Email,
                    &Kind::Phone,
                    &Kind::AwsKey,
                    &Kind::Jwt,
                    &Kind::GithubToken,
                    &Kind::SlackToken,
                    &Kind::StripeKey,
                    &Kind::GoogleApiKey,
                    &Kind::Bearer,
                    &Kind::PrivateKey,
                    &Kind::Ipv4,
                    &Kind::Ipv6,
                ]);
                s.push_str(&corpus::sensitive(k, r));
            }
            2 => s.push_str(&corpus::clean_value(r)),
            3 => s.push_str(&r.alphabet_range(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                1,
                12,
            )),
            4 => s.push_str(&r.alphabet_range(b"0123456789 -.()+", 1, 30)),
            5 => s.push_str(&corpus::phone(r)),
            _ => s.push_str(r.pick(FRAGMENTS)),
        }
    }
    s
}

/// The kernel compared with the scalar one: the best this CPU has, or the
/// one `MASK_DUMP_KERNEL` names (`avx2`, `ssse3`, `avx512`,
/// `avx512-noplanes`), so every kernel can be checked against the same
/// expected output. The flag: without the VBMI/GFNI scan copy.
fn first_kernel() -> (Kernel, bool) {
    match std::env::var("MASK_DUMP_KERNEL").as_deref() {
        Ok("avx2") => (Kernel::Avx2, false),
        Ok("ssse3") => (Kernel::Ssse3, false),
        Ok("avx512") => (Kernel::Avx512, false),
        Ok("avx512-noplanes") => (Kernel::Avx512, true),
        Ok(k) => panic!("unknown kernel {k}"),
        Err(_) => (Kernel::best(), false),
    }
}

fn profiles() -> Vec<(&'static str, MaskingProfile)> {
    let d = MaskingProfile::default();
    let all = MaskingProfile::from_yaml("detectors: { ipv4: true, ipv6: true }\n").unwrap();
    let plain = MaskingProfile::from_yaml(
        "format: { mask_char: '#', keep_punctuation: false, card_keep_last: 0, phone_keep_last: 0, email_keep_tld: false, token_keep_prefix: false }\n",
    )
    .unwrap();
    let digits_only = MaskingProfile::from_yaml(
        "detectors: { email: false, jwt: false, aws_access_key: false, iban: false, private_key: false, github_token: false, slack_token: false, stripe_key: false, google_api_key: false, bearer_token: false }\n",
    )
    .unwrap();
    let no_phone = MaskingProfile::from_yaml("detectors: { phone: false, ipv4: true }\n").unwrap();
    vec![
        ("default", d),
        ("all", all),
        ("plain", plain),
        ("digits", digits_only),
        ("nophone", no_phone),
    ]
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("rows-vs-cells") {
        std::process::exit(rows_vs_cells());
    }
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut rng = Rng::new(2026);
    let rows = corpus::orders(&mut rng, 3000);
    let mut cells: Vec<String> = Vec::new();
    for r in &rows {
        for v in r.iter().flatten() {
            cells.push(v.clone());
        }
    }
    for _ in 0..3000 {
        cells.push(corpus::free_text(&mut rng));
    }
    let mut fz = Rng::new(77);
    for i in 0..60_000 {
        let max = [20, 64, 70, 130, 300][i % 5];
        cells.push(random_text(&mut fz, max));
    }
    for (name, p) in profiles() {
        for (kernel, noplanes) in [first_kernel(), (Kernel::Scalar, false)] {
            let e = Engine::compile_with_kernel(&p, kernel).unwrap();
            let e = if noplanes { e.without_planes() } else { e };
            let mut hits = Hits::new();
            for c in &cells {
                let mut v = c.as_bytes().to_vec();
                let n = e.mask_counted(&mut v, &mut hits);
                writeln!(out, "{name} {n} {}", String::from_utf8_lossy(&v)).unwrap();
            }
            writeln!(out, "{name} hits {:?}", hits.iter().collect::<Vec<_>>()).unwrap();
            // Whole rows: three random text columns and an int column, so
            // values sit next to each other in one scan.
            let cols: &[(&str, u32)] = &[("a", 25), ("n", 23), ("b", 25), ("c", 1043)];
            let mut plan = RowPlan::new();
            plan.describe(&e, &corpus::row_description(cols)).unwrap();
            let mut o = Vec::new();
            let mut rr = Rng::new(5);
            for _ in 0..20_000 {
                let mut vals = Vec::new();
                for _ in 0..4 {
                    vals.push(if rr.chance(0.1) {
                        None
                    } else {
                        let max = [10, 40, 80, 200][rr.below(4)];
                        Some(random_text(&mut rr, max))
                    });
                }
                let mut body = corpus::data_row(&vals);
                let res = mask_data_row(&e, &mut plan, &mut body, &mut hits, &mut o).unwrap();
                writeln!(out, "{name} row {res:?} {}", String::from_utf8_lossy(&body)).unwrap();
            }
            let mut ch = Vec::new();
            plan.take_column_hits(|i, _, c| ch.push((i, c)));
            writeln!(
                out,
                "{name} rowhits {:?} {ch:?}",
                hits.iter().collect::<Vec<_>>()
            )
            .unwrap();
        }
    }
}

/// `mask_dump rows-vs-cells`: the random rows of the dump (three text
/// columns and an int column), each masked as one DataRow and cell by cell
/// (`Engine::mask_counted` on each scanned value), under the default
/// profile and both kernels; prints the rows where the two differ and how
/// many, and exits 1 if any do. The two should always agree: see
/// `bench/RESULTS.md` §7, pass 12, for the adjacent values where they do not
/// yet.
fn rows_vs_cells() -> i32 {
    let p = MaskingProfile::default();
    let mut differ = 0;
    for kernel in [first_kernel().0, Kernel::Scalar] {
        let e = Engine::compile_with_kernel(&p, kernel).unwrap();
        let cols: &[(&str, u32)] = &[("a", 25), ("n", 23), ("b", 25), ("c", 1043)];
        let mut plan = RowPlan::new();
        plan.describe(&e, &corpus::row_description(cols)).unwrap();
        let mut o = Vec::new();
        let mut rr = Rng::new(5);
        let mut n = 0;
        for _ in 0..20_000 {
            let vals: Vec<Option<String>> = (0..4)
                .map(|_| {
                    (!rr.chance(0.1)).then(|| {
                        let max = [10, 40, 80, 200][rr.below(4)];
                        random_text(&mut rr, max)
                    })
                })
                .collect();
            let mut body = corpus::data_row(&vals);
            mask_data_row(&e, &mut plan, &mut body, &mut Hits::new(), &mut o).unwrap();
            let want = corpus::masked_cell_by_cell(&e, &plan, &vals, &mut Hits::new());
            if body != want {
                n += 1;
                println!("{kernel:?}: {vals:?}");
                println!("  as a row:      {:?}", String::from_utf8_lossy(&body));
                println!("  cell by cell:  {:?}", String::from_utf8_lossy(&want));
            }
        }
        println!("{kernel:?}: {n} of 20000 rows differ");
        differ += n;
    }
    i32::from(differ > 0)
}
