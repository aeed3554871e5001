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
