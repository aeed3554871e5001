//! `Engine::phone_cell` (phone numbers alone in their cell, masked without
//! the scan) against the scan itself: the same bytes, the same count and
//! the same hits, logged the same, for phone-like cells and their near
//! misses, under profiles that take the short cut and profiles that do not.

use super::corpus::{self, Rng};
use super::phone::LAYOUTS;
use super::*;
use proptest::prelude::*;

/// Profiles to compare under: the default (IPv4 off), every detector on,
/// other mask formats (a mask character a validator reads, all bytes
/// masked, more digits kept than the short cut allows), the phone detector
/// off.
fn profiles() -> Vec<MaskingProfile> {
    let base = MaskingProfile::default();
    let with = |f: &dyn Fn(&mut MaskingProfile)| {
        let mut p = base.clone();
        f(&mut p);
        p
    };
    vec![
        base.clone(),
        with(&|p| p.detectors = Detectors::all()),
        with(&|p| {
            p.format.mask_char = '#';
            p.format.keep_punctuation = false;
            p.format.phone_keep_last = 0;
        }),
        with(&|p| {
            p.detectors = Detectors::all();
            p.format.mask_char = '!';
            p.format.phone_keep_last = 9;
        }),
        with(&|p| p.format.phone_keep_last = 10),
        with(&|p| p.format.phone_keep_last = 11),
        with(&|p| p.format.phone_keep_last = 12),
        with(&|p| {
            p.format.mask_char = '_';
            p.format.keep_punctuation = false;
        }),
        with(&|p| p.format.mask_char = '%'),
        with(&|p| p.detectors.phone = false),
    ]
}

/// Pairs of engines to compare: with the short cut and without, for each
/// profile, with the kernel of this CPU and the others it has.
fn engines() -> &'static [(Engine, Engine)] {
    static E: std::sync::OnceLock<Vec<(Engine, Engine)>> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        let mut v = Vec::new();
        for p in profiles() {
            let others = [Kernel::Avx2, Kernel::Ssse3, Kernel::Scalar];
            for kernel in std::iter::once(None).chain(
                others
                    .into_iter()
                    .filter(|k| k.available() && *k != Kernel::best())
                    .map(Some),
            ) {
                let compile = || match kernel {
                    None => Engine::compile(&p).unwrap(),
                    Some(k) => Engine::compile_with_kernel(&p, k).unwrap(),
                };
                v.push((compile(), compile().without_phone_cells()));
            }
        }
        v
    })
}

/// A cell of one of the layouts, its digits at random: half of them keep
/// the layout's `N` (2–9) and `Z` (1–9), the others any digit there.
fn layout_cell(r: &mut Rng) -> Vec<u8> {
    let l = &LAYOUTS[r.below(LAYOUTS.len())];
    let strict = r.chance(0.5);
    l.pattern
        .iter()
        .map(|&b| match b {
            b'N' if strict => b'0' + r.range(2, 9) as u8,
            b'Z' if strict => b'0' + r.range(1, 9) as u8,
            b'd' | b'N' | b'Z' => b'0' + r.below(10) as u8,
            b => b,
        })
        .collect()
}

/// Digit groups joined by separators a phone number may or may not have.
fn groups(r: &mut Rng) -> Vec<u8> {
    let seps: &[&str] = &[
        " ", " ", "-", "-", ".", ") ", ")", "(", "+", "", "  ", "x", "/", " - ", "--",
    ];
    let mut s = String::new();
    match r.below(4) {
        0 => s.push('+'),
        1 => s.push('('),
        _ => {}
    }
    for k in 0..r.range(1, 6) {
        if k > 0 {
            s.push_str(r.pick(seps));
        }
        let len = r.range(1, 9);
        s.push_str(&r.digits(len));
    }
    s.into_bytes()
}

/// A phone-like cell, or a near miss: a corpus phone number, a layout
/// filled at random, random groups, then perhaps a byte changed, added or
/// taken out, and text or another detector's value before or after it.
fn phone_like(r: &mut Rng) -> Vec<u8> {
    let mut s = match r.below(4) {
        0 => corpus::phone(r).into_bytes(),
        1 | 2 => layout_cell(r),
        _ => groups(r),
    };
    let bytes: &[&str] = &[
        "0", "5", "1", " ", "(", ")", "+", "-", ".", "x", "a", "A", "\t", ":", "=", "@", "_", "*",
        "é", "\u{ff}", "k", "#",
    ];
    for _ in 0..r.below(3) {
        if r.chance(0.5) {
            break;
        }
        let at = r.below(s.len() + 1);
        let b = r.pick(bytes).as_bytes();
        match r.below(3) {
            0 if at < s.len() => {
                s.remove(at);
            }
            1 if at < s.len() => {
                s.splice(at..at + 1, b.iter().copied());
            }
            _ => {
                s.splice(at..at, b.iter().copied());
            }
        }
    }
    let others: &[&str] = &[
        "tel ",
        "Call ",
        "x",
        "ph:",
        "4111 1111 1111 1111 ",
        "123-45-6789 ",
        "10.0.0.1 ",
        "a@b.co ",
        "+00 ",
        "2024-01-01 ",
        "GB82WEST12345698765432 ",
        "é",
    ];
    if r.chance(0.15) {
        let mut p = r.pick(others).as_bytes().to_vec();
        p.extend_from_slice(&s);
        s = p;
    }
    if r.chance(0.15) {
        let mut t = r.pick(others).as_bytes().to_vec();
        t.reverse();
        s.extend_from_slice(&t);
    }
    s
}

/// Mask `cell` with both engines of every pair: the same bytes, count and
/// hits (logged hits included).
fn same(cell: &[u8]) {
    for (fast, scan) in engines() {
        let run = |e: &Engine| {
            let mut v = cell.to_vec();
            let mut h = Hits::new();
            h.log_hits(true);
            let n = e.mask_counted(&mut v, &mut h);
            (v, n, h)
        };
        let (a, b) = (run(fast), run(scan));
        assert_eq!(
            a,
            b,
            "cell {:?} ({:?} kernel)",
            String::from_utf8_lossy(cell),
            fast.kernel()
        );
    }
}

#[test]
fn the_default_profile_takes_every_layout() {
    for p in [
        MaskingProfile::default(),
        MaskingProfile {
            detectors: Detectors::all(),
            ..MaskingProfile::default()
        },
    ] {
        let e = Engine::compile(&p).unwrap();
        assert_eq!(e.phone_cells(), (1 << LAYOUTS.len()) - 1);
    }
}

#[test]
fn every_corpus_phone_number_takes_the_short_cut() {
    let e = Engine::compile(&MaskingProfile::default()).unwrap();
    let mut r = Rng::new(7);
    for _ in 0..2_000 {
        let cell = corpus::phone(&mut r);
        assert!(
            super::phone::layout_of(cell.as_bytes(), e.phone_cells()).is_some(),
            "{cell}"
        );
        same(cell.as_bytes());
    }
}

#[test]
fn every_layout_agrees_with_the_scan() {
    let mut r = Rng::new(2026);
    for _ in 0..20_000 {
        same(&layout_cell(&mut r));
    }
}

/// The two word stores of `phone::mask` rewrite what `mask_range` over
/// the cell does, for every layout, digits kept, punctuation kept or not,
/// and mask character.
#[test]
fn the_word_mask_is_mask_range() {
    let mut r = Rng::new(11);
    for keep in 0..=9 {
        for keep_punct in [false, true] {
            for ch in *b"*#~^?!" {
                let fmt = Engine::compile(&MaskingProfile {
                    format: MaskFormat {
                        mask_char: ch as char,
                        keep_punctuation: keep_punct,
                        phone_keep_last: keep,
                        ..MaskFormat::default()
                    },
                    ..MaskingProfile::default()
                })
                .unwrap()
                .fmt();
                for l in &LAYOUTS {
                    let lanes = super::phone::rewritten(l, &fmt);
                    for _ in 0..20 {
                        let cell: Vec<u8> = l
                            .pattern
                            .iter()
                            .map(|&b| match b {
                                b'd' | b'N' | b'Z' => b'0' + r.below(10) as u8,
                                b => b,
                            })
                            .collect();
                        let (mut a, mut b) = (cell.clone(), cell);
                        super::phone::mask(&mut a, lanes, ch);
                        detect::mask_range(&mut b, 0, l.n, keep as usize, &fmt);
                        assert_eq!(a, b, "keep {keep}, punctuation {keep_punct}");
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// Phone-like cells and near misses: the short cut masks and counts
    /// what the scan does.
    #[test]
    fn phone_cells_agree_with_the_scan(seed in any::<u64>()) {
        let mut r = Rng::new(seed);
        same(&phone_like(&mut r));
    }

    /// Any bytes of the lengths the layouts have, mostly digits and glue.
    #[test]
    fn short_cells_agree_with_the_scan(
        cell in proptest::collection::vec(
            prop_oneof![
                8 => proptest::sample::select(b"0123456789".to_vec()),
                4 => proptest::sample::select(b" ()+-.".to_vec()),
                1 => any::<u8>(),
            ],
            11..=17,
        )
    ) {
        same(&cell);
    }
}

/// Engines to compare whole rows under: [`profiles`]' and one with
/// custom literals and regexes (run on each cell after the scan, the
/// phone cells' included) and a `keep_last` name rule, all with the short
/// cut and without, with every kernel of this CPU.
fn row_engines() -> &'static [(Engine, Engine)] {
    static E: std::sync::OnceLock<Vec<(Engine, Engine)>> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        let mut custom = MaskingProfile::from_yaml(
            "custom_literals: [ { name: codes, values: [BLUEBIRD, '555'], case_insensitive: true } ]\n\
             custom_regexes: [ { name: tail4, pattern: '[0-9]{4}$' } ]\n\
             columns: [ { column: '*pin*', action: { keep_last: 2 } }, { column: 'secret*', action: mask } ]\n",
        )
        .unwrap();
        custom.detectors = Detectors::all();
        let mut v = Vec::new();
        for p in profiles().into_iter().chain([custom]) {
            for kernel in [Kernel::Avx2, Kernel::Ssse3, Kernel::Scalar]
                .into_iter()
                .filter(|k| k.available())
            {
                let compile = || Engine::compile_with_kernel(&p, kernel).unwrap();
                v.push((compile(), compile().without_phone_cells()));
            }
        }
        v
    })
}

/// A cell of a row: a phone number alone (any layout, or a near miss),
/// an e-mail, a card, a note with values in it, a named value, bytes
/// above 0x7f, a long cell, or none at all.
fn row_cell(r: &mut Rng) -> Option<Vec<u8>> {
    Some(match r.below(14) {
        0 => return None,
        1 => Vec::new(),
        2..=4 => layout_cell(r),
        5 => phone_like(r),
        6 => corpus::email(r).into_bytes(),
        7 => corpus::sensitive(corpus::Kind::Card, r).into_bytes(),
        8 => corpus::sensitive(corpus::Kind::ALL[r.below(corpus::Kind::ALL.len())], r).into_bytes(),
        9 => corpus::clean_value(r).into_bytes(),
        10 => {
            let phone = corpus::phone(r);
            let (v, _) = corpus::surround(r, &phone, 40);
            v.into_bytes()
        }
        11 => {
            let keys = ["password", "api_key", "pin", "token", "secret_x"];
            let seps = ["=", ": ", "="];
            let mut s = String::new();
            for _ in 0..r.range(1, 6) {
                let (key, sep) = (r.pick(&keys), r.pick(&seps));
                let len = r.range(3, 12);
                s.push_str(&format!("{key}{sep}{} ", r.digits(len)));
            }
            s.into_bytes()
        }
        12 => {
            let mut v = layout_cell(r);
            let at = r.below(v.len() + 1);
            v.insert(at, 0xc3);
            v.insert(at + 1, 0xa9);
            v
        }
        _ => (0..r.range(0, 300))
            .map(|_| b"0123456789 -.@+()AKIAbe:=x_\xc3\xa9"[r.below(29)])
            .collect(),
    })
}

/// Text, varchar, `int4`, `int8`, JSON, text arrays, `jsonb`, by name
/// plain or ruled.
const ROW_TYPES: [u32; 8] = [25, 25, 1043, 23, 20, 114, 1009, 3802];

/// A random row masked by both engines of every pair: the same bytes,
/// outcome, hits (the list of where they were, in its order, too) and
/// column counts.
fn same_row(r: &mut Rng) {
    let n = r.range(1, 40);
    let names: Vec<String> = (0..n)
        .map(|i| match r.below(10) {
            0 => format!("pin{i}"),
            1 => format!("secret{i}"),
            _ => format!("c{i}"),
        })
        .collect();
    let cols: Vec<(&str, u32)> = names
        .iter()
        .map(|s| (s.as_str(), ROW_TYPES[r.below(ROW_TYPES.len())]))
        .collect();
    let vals: Vec<Option<Vec<u8>>> = (0..n).map(|_| row_cell(r)).collect();
    let mut body = Vec::new();
    body.extend_from_slice(&(n as i16).to_be_bytes());
    for v in &vals {
        match v {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let formats: Vec<i16> = match r.below(3) {
        0 => Vec::new(),
        1 => vec![1],
        _ => (0..n).map(|_| r.below(2) as i16).collect(),
    };
    for (fast, scan) in row_engines() {
        let run = |e: &Engine| {
            let mut plan = RowPlan::new();
            plan.describe(e, &corpus::row_description(&cols)).unwrap();
            plan.set_result_formats(e, &formats).unwrap();
            let mut b = body.clone();
            let mut h = Hits::new();
            h.log_hits(true);
            let mut out = Vec::new();
            let o = mask_data_row(e, &mut plan, &mut b, &mut h, &mut out);
            (b, format!("{o:?}"), out, h, plan.column_hits().to_vec())
        };
        let (a, b) = (run(fast), run(scan));
        assert_eq!(
            a,
            b,
            "row {:?} ({:?} kernel)",
            vals.iter()
                .map(|v| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
                .collect::<Vec<_>>(),
            fast.kernel()
        );
    }
}

#[test]
fn orders_rows_agree_with_the_scan() {
    let mut r = Rng::new(5);
    for (fast, scan) in row_engines() {
        let run = |e: &Engine, vals: &[Option<String>]| {
            let mut plan = RowPlan::new();
            plan.describe(e, &corpus::row_description(corpus::ORDERS_COLUMNS))
                .unwrap();
            let mut b = corpus::data_row(vals);
            let mut h = Hits::new();
            h.log_hits(true);
            let o = mask_data_row(e, &mut plan, &mut b, &mut h, &mut Vec::new());
            (b, format!("{o:?}"), h, plan.column_hits().to_vec())
        };
        for vals in corpus::orders(&mut r, 300) {
            assert_eq!(run(fast, &vals), run(scan, &vals), "{vals:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_500))]

    /// Whole DataRows mixing phone cells with everything else: the short
    /// cut on the rows' path masks, counts and lists what the scan does.
    #[test]
    fn rows_agree_with_the_scan(seed in any::<u64>()) {
        same_row(&mut Rng::new(seed));
    }
}

/// A phone number opened by `+` is counted once however many digits are
/// kept: when all of them are (the phone mask changes nothing), the run
/// walk meets the run the opener validated unchanged and must not count
/// it again. Also with the `+` at every offset of a block, and in a row.
#[test]
fn an_opened_number_is_counted_once_whatever_is_kept() {
    for keep in 0..=16 {
        let e = Engine::compile(&MaskingProfile {
            format: MaskFormat {
                phone_keep_last: keep,
                ..MaskFormat::default()
            },
            ..MaskingProfile::default()
        })
        .unwrap();
        for number in ["+1 415 555 0132", "+44 20 1234 5678", "+33 1 23 45 67 89"] {
            for pad in 0..70 {
                let cell = format!("{}{number}", " ".repeat(pad));
                let mut v = cell.clone().into_bytes();
                let mut h = Hits::new();
                let n = e.mask_counted(&mut v, &mut h);
                assert_eq!(
                    (n, h.get(Builtin::Phone)),
                    (1, 1),
                    "keep {keep}: {cell:?} -> {:?}",
                    String::from_utf8_lossy(&v)
                );
                let mut plan = RowPlan::new();
                plan.describe(&e, &corpus::row_description(&[("a", 25), ("b", 25)]))
                    .unwrap();
                let mut body = corpus::data_row(&[Some("x".repeat(pad)), Some(cell.clone())]);
                let mut h = Hits::new();
                mask_data_row(&e, &mut plan, &mut body, &mut h, &mut Vec::new()).unwrap();
                assert_eq!(h.get(Builtin::Phone), 1, "keep {keep}: row {cell:?}");
            }
        }
    }
}
