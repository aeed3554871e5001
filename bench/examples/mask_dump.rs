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
//! `MASK_DUMP_INPUT=1` writes each result on one line, escaped, with its
//! input after it (`{result:?} <- {input:?}`): for reading the differences
//! a change makes (`diff` of two such dumps), not for `cmp` against a plain
//! dump.
//!
//! `mask_dump rows-vs-cells` compares instead the dump's random rows masked
//! as DataRows with the same values masked one by one (see
//! [`rows_vs_cells`]).

use dataplane::mask::corpus::{self, Rng};
use dataplane::mask::{mask_data_row, Engine, Hits, Kernel, MaskingProfile, RowPlan};
use std::io::Write;

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
        "detectors: { email: false, jwt: false, aws_access_key: false, iban: false, private_key: false, github_token: false, slack_token: false, stripe_key: false, google_api_key: false, bearer_token: false, openai_api_key: false, anthropic_api_key: false, gitlab_token: false, huggingface_token: false, npm_token: false }\n",
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
    let with_input = std::env::var_os("MASK_DUMP_INPUT").is_some();
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
        cells.push(corpus::touching_text(&mut fz, max));
    }
    for (name, p) in profiles() {
        for (kernel, noplanes) in [first_kernel(), (Kernel::Scalar, false)] {
            let e = Engine::compile_with_kernel(&p, kernel).unwrap();
            let e = if noplanes { e.without_planes() } else { e };
            let mut hits = Hits::new();
            for c in &cells {
                let mut v = c.as_bytes().to_vec();
                let n = e.mask_counted(&mut v, &mut hits);
                let v = String::from_utf8_lossy(&v);
                if with_input {
                    writeln!(out, "{name} {n} {v:?} <- {c:?}").unwrap();
                } else {
                    writeln!(out, "{name} {n} {v}").unwrap();
                }
            }
            writeln!(out, "{name} hits {:?}", hits.iter().collect::<Vec<_>>()).unwrap();
            // Whole rows: three random text columns and an int column, so
            // values sit next to each other in one scan.
            let mut plan = RowPlan::new();
            plan.describe(&e, &corpus::row_description(corpus::TOUCHING_COLUMNS))
                .unwrap();
            let mut o = Vec::new();
            let mut rr = Rng::new(5);
            for _ in 0..20_000 {
                let vals = corpus::touching_row(&mut rr);
                let mut body = corpus::data_row(&vals);
                let input = body.clone();
                let res = mask_data_row(&e, &mut plan, &mut body, &mut hits, &mut o).unwrap();
                let body = String::from_utf8_lossy(&body);
                if with_input {
                    let input = String::from_utf8_lossy(&input);
                    writeln!(out, "{name} row {res:?} {body:?} <- {input:?}").unwrap();
                } else {
                    writeln!(out, "{name} row {res:?} {body}").unwrap();
                }
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
/// many, and exits 1 if any do. The two agree since the validation order
/// became one of position (`bench/RESULTS.md` §7, pass 13); the test
/// `touching_values_mask_the_same_in_a_row_as_cell_by_cell` checks the same
/// rows under every kernel.
fn rows_vs_cells() -> i32 {
    let p = MaskingProfile::default();
    let mut differ = 0;
    for kernel in [first_kernel().0, Kernel::Scalar] {
        let e = Engine::compile_with_kernel(&p, kernel).unwrap();
        let mut plan = RowPlan::new();
        plan.describe(&e, &corpus::row_description(corpus::TOUCHING_COLUMNS))
            .unwrap();
        let mut o = Vec::new();
        let mut rr = Rng::new(5);
        let mut n = 0;
        for _ in 0..20_000 {
            let vals = corpus::touching_row(&mut rr);
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
