//! Phone numbers that are a whole cell, in the common layouts (a contact
//! column holds little else): recognised from two word loads and masked
//! whole, without the classification and the block walk
//! (`Engine::phone_cell`), which spend some 1 300 instructions on each to
//! reach the same result. In a DataRow, such cells are left out of the
//! scan of the row's other cells (`Engine::scan_regions_phones`, which says
//! why that changes nothing for the others).
//!
//! Why the result is the same: such a cell is one run of digits and glue,
//! so the block walk does exactly one of two things with it, and the
//! validators find exactly one phone number in it, the whole cell.
//! - A layout that opens with `+` or `(`: that byte is the only anchor that
//!   does anything (the others are the `-` of a number, whose byte before is
//!   no token prefix's: `may_anchor`), and it comes first, so
//!   `Engine::phone_opener` validates the run after it, all of the cell
//!   (at most 40 bytes, 9 digits or more). The run walk then meets the same
//!   run and skips it (`Opened::is`): its first digit is masked.
//! - A layout that starts with a digit has no anchor that does anything; the
//!   run walk validates the run when a candidate shape starts in it, which
//!   depends on the masks alone, so on the layout alone (the engine checks
//!   it for each layout when it is compiled: `Engine::phone_layouts`).
//!
//! In both, `detect::digit_run` splits the run into the layout's groups,
//! none of which reads as a word or a count; no three of them are an SSN's
//! 3-2-4, there are fewer than the 13 digits of a card, and none is joined
//! by dots into four; and `phone_at` at the first group takes all of
//! them: as E.164 after the `+`, as a North American number (`N`: 2–9),
//! as a trunk-0 national number (`Z`: 1–9; `00` would be an international
//! prefix). The cell's ends are word boundaries. So the cell is masked as
//! `mask_range(cell, 0, len, phone_keep)` and one phone number is counted,
//! at region 0, and nothing after that changes it: the mask character is
//! none of the anchors, digits or glue, and with at most 9 digits kept
//! the opener's first digit is masked (`Engine::phone_layouts` checks both).

use super::classify::BlockMasks;
use super::detect::{mask_range, Fmt};

/// The cells a layout may be, by length.
pub(super) const MIN_LEN: usize = 12;
pub(super) const MAX_LEN: usize = 16;

/// A layout of a whole cell: its length, and for its first eight and its
/// last eight bytes (overlapping words for cells under 16 bytes) the lowest
/// and the highest each byte may be, eight to a word, as
/// [`within`] tests them.
pub(super) struct Layout {
    pub pattern: &'static [u8],
    pub n: usize,
    /// Opens with `+` or `(` (a phone opener), else with a digit.
    pub opener: bool,
    min: [u64; 2],
    max: [u64; 2],
}

/// The bytes a pattern byte stands for: `d` a digit, `N` 2–9, `Z` 1–9,
/// any other byte itself.
const fn range(b: u8) -> (u8, u8) {
    match b {
        b'd' => (b'0', b'9'),
        b'N' => (b'2', b'9'),
        b'Z' => (b'1', b'9'),
        _ => (b, b),
    }
}

/// The layout of `pattern` (see [`range`]).
const fn layout(pattern: &'static [u8]) -> Layout {
    let n = pattern.len();
    assert!(n >= MIN_LEN && n <= MAX_LEN);
    let mut min = [0u64; 2];
    let mut max = [0u64; 2];
    let mut i = 0;
    while i < 8 {
        let (lo, hi) = range(pattern[i]);
        min[0] |= (lo as u64) << (8 * i);
        max[0] |= (hi as u64) << (8 * i);
        let (lo, hi) = range(pattern[n - 8 + i]);
        min[1] |= (lo as u64) << (8 * i);
        max[1] |= (hi as u64) << (8 * i);
        i += 1;
    }
    Layout {
        pattern,
        n,
        opener: matches!(pattern[0], b'+' | b'('),
        min,
        max,
    }
}

/// The orders corpus's layouts (`corpus::phone`), and North American
/// numbers joined by spaces.
pub(super) const LAYOUTS: [Layout; 10] = [
    layout(b"+d ddd ddd dddd"),
    layout(b"+ddddddddddd"),
    layout(b"(Ndd) Ndd-dddd"),
    layout(b"Ndd-Ndd-dddd"),
    layout(b"Ndd.Ndd.dddd"),
    layout(b"Ndd Ndd dddd"),
    layout(b"+dd dd dddd dddd"),
    layout(b"+dd dd dddddddd"),
    layout(b"0Zd dddd dddd"),
    layout(b"0Z dd dd dd dd"),
];

const HIGH: u64 = 0x8080_8080_8080_8080;

/// Each byte of `w` (all below 0x80) between those of `min` and `max`
/// (all below 0x80): per byte, `w | 0x80` minus the lowest keeps its top
/// bit when it is not below it, the highest plus 0x80 minus `w` when it is
/// not above it; no byte borrows from the next.
#[inline(always)]
fn within(w: u64, min: u64, max: u64) -> bool {
    ((w | HIGH) - min) & ((max | HIGH) - w) & HIGH == HIGH
}

/// Whether `cell` may be of a layout (the cheap test before
/// [`layout_of`]): a bit of a set of the first bytes, cleared for other
/// lengths.
#[inline(always)]
pub(super) fn may_be(cell: &[u8]) -> bool {
    const FIRST: u64 = 1 << b'+' | 1 << b'(' | 0x3ff << b'0';
    let b = cell.first().copied().unwrap_or(0);
    let len = u64::from(cell.len().wrapping_sub(MIN_LEN) <= MAX_LEN - MIN_LEN);
    (FIRST >> (b & 63)) & len & u64::from(b < 64) != 0
}

/// The first eight and the last eight bytes of a cell of 8 bytes or more.
#[inline(always)]
fn words(cell: &[u8]) -> (u64, u64) {
    let word = |i: usize| u64::from_le_bytes(cell[i..i + 8].try_into().unwrap());
    (word(0), word(cell.len() - 8))
}

/// Which of the layouts whose bit is set in `on` `cell` (of `MIN_LEN` to
/// `MAX_LEN` bytes) is, if any.
#[inline(always)]
pub(super) fn layout_of(cell: &[u8], on: u16) -> Option<usize> {
    let n = cell.len();
    let (first, last) = words(cell);
    if (first | last) & HIGH != 0 {
        return None;
    }
    LAYOUTS.iter().enumerate().position(|(i, l)| {
        l.n == n
            && on >> i & 1 != 0
            && within(first, l.min[0], l.max[0])
            && within(last, l.min[1], l.max[1])
    })
}

/// The bytes of a cell of a layout that `detect::mask_range` over all of
/// it rewrites with `fmt` (as for [`mask`]: 0xff in each byte rewritten,
/// of the first and the last eight), found by masking a cell of the
/// layout. They are the same for every cell of it: which bytes
/// `mask_range` rewrites follows from which are letters or digits, which
/// are its structural bytes, and where the kept suffix starts, all fixed by
/// the layout; and it rewrites them to the mask character, none of the
/// layout's bytes (`Engine::phone_layouts`), so every one changes.
pub(super) fn rewritten(l: &Layout, fmt: &Fmt) -> [u64; 2] {
    let mut cell: Vec<u8> = l.pattern.iter().map(|&b| range(b).1).collect();
    let before = words(&cell);
    mask_range(&mut cell, 0, l.n, fmt.phone_keep, fmt);
    let after = words(&cell);
    let lanes = |a: u64, b: u64| {
        (0..8).fold(0u64, |m, i| {
            let byte = 0xffu64 << (8 * i);
            m | if (a ^ b) & byte != 0 { byte } else { 0 }
        })
    };
    [lanes(before.0, after.0), lanes(before.1, after.1)]
}

/// `detect::mask_range` over all of `cell`, a cell of a layout whose
/// [`rewritten`] bytes are `lanes`, with mask character `ch`: those bytes
/// set to it, with two word stores (both words read first).
#[inline(always)]
pub(super) fn mask(cell: &mut [u8], lanes: [u64; 2], ch: u8) {
    let n = cell.len();
    let fill = u64::from(ch) * 0x0101_0101_0101_0101;
    let (first, last) = words(cell);
    let put = |w: u64, m: u64| w & !m | fill & m;
    cell[n - 8..].copy_from_slice(&put(last, lanes[1]).to_le_bytes());
    cell[..8].copy_from_slice(&put(first, lanes[0]).to_le_bytes());
}

impl Layout {
    /// The masks the classification gives a cell of this layout (the same
    /// for every cell of it): digits, glue, and the space, dash and dot
    /// separators.
    pub(super) fn masks(&self) -> BlockMasks {
        let mut m = BlockMasks::default();
        for (i, &b) in self.pattern.iter().enumerate() {
            let bit = 1u64 << i;
            match b {
                b'd' | b'N' | b'Z' | b'0'..=b'9' => m.digit |= bit,
                _ => {
                    assert!(super::classify::is_glue(b));
                    m.glue |= bit;
                    match b {
                        b' ' => m.space |= bit,
                        b'-' => m.dash |= bit,
                        b'.' => m.dot |= bit,
                        _ => {}
                    }
                }
            }
        }
        m
    }
}
