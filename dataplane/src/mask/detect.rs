//! Validators: given a candidate position found by the SIMD scan, decide
//! whether a sensitive value is there and mask it in place (same length).
//!
//! Every function here reads the bytes themselves; the block masks only say
//! where to look. All functions are bounds-checked scalar code without
//! allocation.

use std::mem::MaybeUninit;

/// Compiled mask format (see [`super::MaskFormat`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fmt {
    pub ch: u8,
    pub keep_punct: bool,
    pub card_keep: usize,
    pub ssn_keep: usize,
    pub iban_keep: usize,
    pub phone_keep: usize,
    pub email_keep_tld: bool,
    pub keep_prefix: bool,
}

#[inline]
fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Byte classes of the scalar validators, one table load per byte.
const K_DIGIT: u8 = 1;
const K_GLUE: u8 = 2;
const K_ALNUM: u8 = 4;
/// E-mail local part: letters, digits and `. _ % + - *`.
const K_LOCAL: u8 = 8;
/// Domain label: letters, digits and `-`.
const K_LABEL: u8 = 16;
const K_ALPHA: u8 = 32;

static KIND: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut k = 0;
        if b.is_ascii_digit() {
            k |= K_DIGIT;
        }
        if matches!(b, b' ' | b'(' | b')' | b'+' | b'-' | b'.') {
            k |= K_GLUE;
        }
        if b.is_ascii_alphanumeric() {
            k |= K_ALNUM | K_LOCAL | K_LABEL;
        }
        if b.is_ascii_alphabetic() {
            k |= K_ALPHA;
        }
        if matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'*') {
            k |= K_LOCAL;
        }
        if b == b'-' {
            k |= K_LABEL;
        }
        t[i] = k;
        i += 1;
    }
    t
};

#[inline(always)]
fn is(b: u8, k: u8) -> bool {
    KIND[b as usize] & k != 0
}

#[inline]
fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The value starting at `p` is not glued to a preceding word. A letter
/// right after a backslash counts as a boundary: COPY text format writes a
/// newline in a value as `\n`.
#[inline]
pub(crate) fn boundary_before(buf: &[u8], p: usize) -> bool {
    p == 0 || !alnum(buf[p - 1]) || (p >= 2 && buf[p - 2] == b'\\')
}

/// The value ending before `p` is not glued to a following word.
#[inline]
pub(crate) fn boundary_after(buf: &[u8], p: usize) -> bool {
    p >= buf.len() || !alnum(buf[p])
}

/// Mask `[start, end)`: letters and digits (and, unless punctuation is kept,
/// everything else, non-ASCII bytes included) become the mask character,
/// except the last `keep` letters or digits.
pub(crate) fn mask_range(buf: &mut [u8], start: usize, end: usize, keep: usize, f: &Fmt) {
    #[cfg(target_arch = "x86_64")]
    if start < end && end - start <= 96 && buf.len() >= 8 {
        mask_short(buf, start, end, keep, f);
        return;
    }
    let s = &mut buf[start..end];
    let cut = kept_from(s, keep);
    mask_tables(s, cut, f);
}

/// Where the kept suffix of `s` starts: at its `keep`-th letter or digit
/// from the end (0 when it has fewer; `s.len()` when `keep` is 0).
#[inline]
fn kept_from(s: &[u8], keep: usize) -> usize {
    let mut cut = s.len();
    let mut keep = keep;
    while keep > 0 && cut > 0 {
        cut -= 1;
        keep -= is(s[cut], K_ALNUM) as usize;
    }
    cut
}

/// [`kept_from`] of a range of `len` bytes (at most 32) whose letters and
/// digits are the bits of `alnum` (bit `i` for byte `i`): the highest
/// `keep` bits cleared one by one, without a load per byte.
#[inline(always)]
fn kept_from_bits(mut alnum: u32, len: usize, keep: usize) -> usize {
    let mut cut = len;
    for _ in 0..keep {
        if alnum == 0 {
            return 0;
        }
        cut = (31 - alnum.leading_zeros()) as usize;
        alnum ^= 1 << cut;
    }
    cut
}

/// [`mask_range`] of all of `s`, the kept suffix from `cut`, by tables.
fn mask_tables(s: &mut [u8], cut: usize, f: &Fmt) {
    let (head_t, tail_t) = if f.keep_punct {
        (&MASKED_KEEP_PUNCT, &TAIL_KEEP_PUNCT)
    } else {
        (&MASKED_ALL, &TAIL_ALL)
    };
    let (head, tail) = s.split_at_mut(cut);
    // Branch-free: each table byte is 0xff for bytes to mask, else 0.
    let ch = f.ch;
    for b in head {
        *b ^= (*b ^ ch) & head_t[*b as usize];
    }
    for b in tail {
        *b ^= (*b ^ ch) & tail_t[*b as usize];
    }
}

/// [`mask_range`] of `start..end` (at most 96 bytes of a buffer of at
/// least 8) by 16-byte vectors (SSE2): each byte's class and whether it
/// lies in the head or the kept suffix decide, as the tables do. Buffers of
/// 8 to 15 bytes are one vector of their first and last 8 bytes. A range
/// of up to 16 bytes lies in the first vector, whose letter-and-digit mask
/// gives the kept suffix ([`kept_from_bits`]); longer ones walk their bytes
/// for it ([`kept_from`]). Loads never read what a store of this function
/// just wrote (no store-forwarding stalls on overlapping chunks).
#[cfg(target_arch = "x86_64")]
fn mask_short(buf: &mut [u8], start: usize, end: usize, keep: usize, f: &Fmt) {
    use std::arch::x86_64::*;
    let n = buf.len();
    let len = end - start;
    debug_assert!(start < end && len <= 96 && end <= n && n >= 8);
    // SAFETY: SSE2 is part of x86_64; every load and store is 16 bytes
    // inside `buf`.
    unsafe {
        let set = |c: u8| _mm_set1_epi8(c as i8);
        // `x`: 16 bytes; `k`: each one's position relative to `start`
        // (within -15..=110); `cut`: the kept suffix's, relative to `start`.
        let blend = |x: __m128i, k: __m128i, cut: usize| {
            let before_cut = _mm_cmpgt_epi8(set(cut as u8), k);
            let head = _mm_and_si128(_mm_cmpgt_epi8(k, set(0xff)), before_cut);
            let tail = _mm_andnot_si128(before_cut, _mm_cmpgt_epi8(set(len as u8), k));
            let alnum = alnum16(x);
            let (hc, tc) = if f.keep_punct {
                let hi = _mm_cmplt_epi8(x, _mm_setzero_si128());
                (_mm_or_si128(alnum, hi), hi)
            } else {
                let eq = |c: u8| _mm_cmpeq_epi8(x, set(c));
                let st = _mm_or_si128(
                    _mm_or_si128(
                        _mm_or_si128(eq(b'"'), eq(b'\'')),
                        _mm_or_si128(eq(b'\\'), eq(b'\t')),
                    ),
                    _mm_or_si128(
                        _mm_or_si128(eq(b'\n'), eq(b'\r')),
                        _mm_or_si128(_mm_or_si128(eq(b','), eq(b'|')), eq(0)),
                    ),
                );
                let ns = _mm_xor_si128(st, _mm_set1_epi8(-1));
                (ns, _mm_andnot_si128(alnum, ns))
            };
            let sel = _mm_or_si128(_mm_and_si128(head, hc), _mm_and_si128(tail, tc));
            _mm_or_si128(_mm_andnot_si128(sel, x), _mm_and_si128(sel, set(f.ch)))
        };
        // Letters and digits of the range, from those of a vector whose
        // bits are bytes `at..at + 16` of `buf` (`at <= start`; only for
        // ranges of up to 16 bytes).
        let range_bits = |alnum: u32, at: usize| (alnum >> (start - at)) & ((1u32 << len) - 1);
        let idx = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let p = buf.as_mut_ptr();
        if n >= 16 {
            // Chunks from `start`, the last one moved back to end inside
            // the buffer (bytes outside `start..end` are left as they are;
            // masking twice is masking once). The next chunk is loaded
            // before this one is stored.
            let mut at = start;
            let mut q = at.min(n - 16);
            let mut x = _mm_loadu_si128(p.add(q) as *const __m128i);
            let cut = if len <= 16 {
                // (`q <= start` and `end <= q + 16`.)
                let alnum = _mm_movemask_epi8(alnum16(x)) as u32;
                kept_from_bits(range_bits(alnum, q), len, keep)
            } else {
                kept_from(&buf[start..end], keep)
            };
            loop {
                let out = blend(x, _mm_add_epi8(idx, set(q.wrapping_sub(start) as u8)), cut);
                at += 16;
                if at >= end {
                    _mm_storeu_si128(p.add(q) as *mut __m128i, out);
                    break;
                }
                let nq = at.min(n - 16);
                let nx = _mm_loadu_si128(p.add(nq) as *const __m128i);
                _mm_storeu_si128(p.add(q) as *mut __m128i, out);
                q = nq;
                x = nx;
            }
        } else {
            let (x, k) = split16(buf);
            // Lanes 0–7 are bytes 0–7, lanes 8–15 bytes `n - 8..n`.
            let alnum = _mm_movemask_epi8(alnum16(x)) as u32;
            let bits = (alnum & 0xff) | (alnum >> 8) << (n - 8);
            let cut = kept_from_bits(range_bits(bits, 0), len, keep);
            let out = blend(x, _mm_sub_epi8(k, set(start as u8)), cut);
            let lo = _mm_cvtsi128_si64(out) as u64;
            let hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(out, out)) as u64;
            buf[..8].copy_from_slice(&lo.to_le_bytes());
            buf[n - 8..].copy_from_slice(&hi.to_le_bytes());
        }
    }
}

/// 0xff for the ASCII letters and digits of `x`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn alnum16(x: std::arch::x86_64::__m128i) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of x86_64.
    unsafe {
        let set = |c: u8| _mm_set1_epi8(c as i8);
        let t = _mm_sub_epi8(_mm_or_si128(x, set(0x20)), set(b'a'));
        let td = _mm_sub_epi8(x, set(b'0'));
        _mm_or_si128(
            _mm_cmpeq_epi8(_mm_min_epu8(t, set(25)), t),
            _mm_cmpeq_epi8(_mm_min_epu8(td, set(9)), td),
        )
    }
}

/// A buffer of 8 to 16 bytes as one vector: its first 8 bytes, then its
/// last 8; and each byte's position in the buffer.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn split16(buf: &[u8]) -> (std::arch::x86_64::__m128i, std::arch::x86_64::__m128i) {
    use std::arch::x86_64::*;
    let n = buf.len();
    debug_assert!((8..=16).contains(&n));
    let lo = u64::from_le_bytes(buf[..8].try_into().unwrap());
    let hi = u64::from_le_bytes(buf[n - 8..].try_into().unwrap());
    // SAFETY: SSE2 is part of x86_64.
    unsafe {
        let x = _mm_set_epi64x(hi as i64, lo as i64);
        let k = _mm_add_epi8(
            _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7),
            _mm_set_epi64x(((n - 8) as u64 * 0x0101_0101_0101_0101) as i64, 0),
        );
        (x, k)
    }
}

/// Bytes `mask_range` masks (outside the kept suffix): letters, digits and
/// non-ASCII bytes, plus, unless punctuation is kept, everything that is not
/// structural. 0xff = mask. `tail`: in the kept suffix, letters and digits
/// stay.
const fn masked_table(keep_punct: bool, tail: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let masked = b.is_ascii_alphanumeric() || b >= 0x80 || (!keep_punct && !structural(b));
        if masked && !(tail && b.is_ascii_alphanumeric()) {
            t[i] = 0xff;
        }
        i += 1;
    }
    t
}
static MASKED_KEEP_PUNCT: [u8; 256] = masked_table(true, false);
/// 0xff for ASCII letters and digits.
static ALNUM_FF: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        if (i as u8).is_ascii_alphanumeric() {
            t[i] = 0xff;
        }
        i += 1;
    }
    t
};
static MASKED_ALL: [u8; 256] = masked_table(false, false);
static TAIL_KEEP_PUNCT: [u8; 256] = masked_table(true, true);
static TAIL_ALL: [u8; 256] = masked_table(false, true);

/// Bytes never masked, so an in-place rewrite cannot break the quoting or
/// field structure of CSV, COPY text or JSON around the value.
#[inline]
const fn structural(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'\'' | b'\\' | b'\t' | b'\n' | b'\r' | b',' | b'|' | 0
    )
}

/// Length of the run of bytes from `p` satisfying `pred`, at most `max`.
#[inline]
pub(crate) fn run(buf: &[u8], p: usize, max: usize, pred: impl Fn(u8) -> bool) -> usize {
    let end = buf.len().min(p.saturating_add(max));
    buf[p.min(end)..end]
        .iter()
        .position(|&b| !pred(b))
        .unwrap_or(end - p.min(end))
}

// ---------------------------------------------------------------------------
// Digit groups: cards, SSNs, phone numbers, IPv4.

/// Most digit groups looked at together; longer runs are walked in
/// overlapping windows.
pub(crate) const MAX_GROUPS: usize = 24;
const WINDOW_OVERLAP: usize = 8;

/// The separator before a digit group: its length (3 = longer) and first
/// two bytes, packed as `len | a << 8 | b << 16` (`b` is 0 unless `len` is
/// 2 or more). One 32-bit word, so a group is written with whole-word
/// stores and its separator read with one load: separate byte fields were
/// written byte by byte and read back two at a time, a load that no
/// single store could forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Sep(u32);

impl Sep {
    #[inline(always)]
    fn new(len: usize, a: u8, b: u8) -> Sep {
        Sep(len.min(3) as u32 | (a as u32) << 8 | (b as u32) << 16)
    }
    #[inline(always)]
    fn len(self) -> usize {
        (self.0 & 0xff) as usize
    }
    #[inline(always)]
    fn a(self) -> u8 {
        (self.0 >> 8) as u8
    }
    #[inline(always)]
    fn b(self) -> u8 {
        (self.0 >> 16) as u8
    }
    #[inline]
    fn single(self, c: u8) -> bool {
        self == Sep::new(1, c, 0)
    }
    /// Cards: one space or one dash.
    #[inline]
    fn card(self) -> bool {
        self.single(b' ') || self.single(b'-')
    }
    /// Phones: one or two of `space - . ( )`.
    #[inline]
    fn phone(self) -> bool {
        let ok = |c: u8| matches!(c, b' ' | b'-' | b'.' | b'(' | b')');
        (self.len() == 1 && ok(self.a())) || (self.len() == 2 && ok(self.a()) && ok(self.b()))
    }
    /// National numbers: one space, dash or dot.
    #[inline]
    fn plain(self) -> bool {
        self.single(b' ') || self.single(b'-') || self.single(b'.')
    }
    /// After an area code in parentheses: `)` or `) `.
    #[inline]
    fn closes_paren(self) -> bool {
        self.single(b')') || self == Sep::new(2, b')', b' ')
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Group {
    start: u32,
    end: u32,
    /// Separator before this group (none for the first).
    sep: Sep,
}

impl Group {
    #[inline]
    fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    #[inline]
    fn start(&self) -> usize {
        self.start as usize
    }
    #[inline]
    fn end(&self) -> usize {
        self.end as usize
    }
}

/// Room for `MAX_GROUPS` groups, of which the tokenizers write the first
/// `n` (left unwritten otherwise: zeroing the array cost more than the
/// tokenizing of a short run).
struct Groups([MaybeUninit<Group>; MAX_GROUPS]);

impl Groups {
    #[inline(always)]
    fn new() -> Self {
        Groups([const { MaybeUninit::uninit() }; MAX_GROUPS])
    }
    #[inline(always)]
    fn set(&mut self, k: usize, v: Group) {
        self.0[k] = MaybeUninit::new(v);
    }
    /// The first `n` groups.
    ///
    /// # Safety
    /// Groups `0..n` have been written with [`Groups::set`].
    #[inline(always)]
    unsafe fn first(&self, n: usize) -> &[Group] {
        let n = n.min(MAX_GROUPS);
        // SAFETY: the caller wrote the first `n`; `MaybeUninit<Group>` has
        // the layout of `Group`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<Group>(), n) }
    }
}

/// Which digit detectors are on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DigitDetectors {
    pub card: bool,
    pub ssn: bool,
    pub phone: bool,
    pub ipv4: bool,
}

impl DigitDetectors {
    pub fn any(&self) -> bool {
        self.card || self.ssn || self.phone || self.ipv4
    }
}

/// Hits found in one digit run, by detector.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DigitHits {
    pub card: u32,
    pub ssn: u32,
    pub phone: u32,
    pub ipv4: u32,
}

/// Split the digit run starting at `pos` (a digit) into groups, stopping at
/// `end`, at the first byte that is neither a digit nor glue, or after
/// `MAX_GROUPS` groups. Returns the number of groups.
fn tokenize(buf: &[u8], mut i: usize, end: usize, g: &mut Groups) -> usize {
    let end = end.min(buf.len());
    let mut ng = 0;
    let mut sep = Sep::default();
    while i < end && ng < MAX_GROUPS {
        let k = KIND[buf[i] as usize];
        if k & K_DIGIT != 0 {
            let s = i;
            i += 1;
            while i < end && is(buf[i], K_DIGIT) {
                i += 1;
            }
            g.set(
                ng,
                Group {
                    start: s as u32,
                    end: i as u32,
                    sep,
                },
            );
            ng += 1;
            sep = Sep::default();
        } else if k & K_GLUE != 0 {
            sep = match sep.len() {
                0 => Sep::new(1, buf[i], 0),
                1 => Sep::new(2, sep.a(), buf[i]),
                _ => Sep::new(3, sep.a(), sep.b()),
            };
            i += 1;
        } else {
            break;
        }
    }
    ng
}

/// [`tokenize`] from the digit bits of the run instead of its bytes: bit `j`
/// of `digits` says whether byte `first + j` is a digit, and every byte in
/// `first..end` (at most 64 of them, `first` a digit) is a digit or glue.
/// Group starts and ends are the transitions of the bits; only the glue
/// bytes are read. Returns `None` when the run has `MAX_GROUPS` groups or
/// more (the byte walk handles the windows).
#[inline]
fn tokenize_bits(
    buf: &[u8],
    first: usize,
    end: usize,
    digits: u64,
    g: &mut Groups,
) -> Option<usize> {
    let n = end - first;
    debug_assert!((1..=64).contains(&n));
    let d = digits & (u64::MAX >> (64 - n));
    let mut starts = d & !(d << 1);
    let mut ends = d & !(d >> 1);
    let ng = starts.count_ones() as usize;
    if ng >= MAX_GROUPS {
        return None;
    }
    let mut prev = 0usize;
    for k in 0..ng {
        let s = starts.trailing_zeros() as usize;
        let e = ends.trailing_zeros() as usize + 1;
        starts &= starts - 1;
        ends &= ends - 1;
        let sep = if k == 0 {
            Sep::default()
        } else {
            let gap = s - prev;
            let at = first + prev;
            Sep::new(gap, buf[at], if gap >= 2 { buf[at + 1] } else { 0 })
        };
        g.set(
            k,
            Group {
                start: (first + s) as u32,
                end: (first + e) as u32,
                sep,
            },
        );
        prev = e;
    }
    Some(ng)
}

/// A byte [`digit_run`] may start at (an earlier rewrite may have masked
/// the first digit of a run: no group then).
#[inline]
pub(crate) fn digit_or_glue(b: u8) -> bool {
    is(b, K_DIGIT | K_GLUE)
}

/// Look for cards, SSNs, phones and IPv4 addresses in the digit run that
/// starts at `first` (a digit) and ends at most at `end`; mask them and
/// add them to `hits` (which the caller zeroed).
///
/// `digits`, when given, holds the digit bits of the run's bytes (bit `j`
/// for byte `first + j`): the caller vouches that the run is at most 64
/// bytes of digits and glue, unchanged since the bits were computed.
///
/// (`hits` is the caller's, not a returned value: returned, the 16-byte
/// struct went back through memory, and its 16-byte reload right after
/// `window`'s 4-byte count stores could not be store-forwarded.)
pub(crate) fn digit_run(
    buf: &mut [u8],
    first: usize,
    end: usize,
    digits: Option<u64>,
    on: DigitDetectors,
    f: &Fmt,
    hits: &mut DigitHits,
) {
    if first >= end.min(buf.len()) || !digit_or_glue(buf[first]) {
        return;
    }
    let mut g = Groups::new();
    if let Some(d) = digits {
        if let Some(ng) = tokenize_bits(buf, first, end, d, &mut g) {
            // SAFETY: `tokenize_bits` wrote the first `ng` groups.
            let groups = unsafe { g.first(ng) };
            validate(buf, groups, on, f, hits);
            return;
        }
    }
    // A window's rewrites turn digits into mask characters, which end a
    // run: the next window starts at the first digit from its overlap on
    // (not inside a value just masked, which would stop the walk there),
    // and after a window the walk goes on past such bytes to `end`.
    let next_digit = |buf: &[u8], p: usize| {
        buf[p.min(end)..end]
            .iter()
            .position(u8::is_ascii_digit)
            .map(|i| p + i)
    };
    let mut pos = first;
    let mut windowed = false;
    loop {
        let ng = tokenize(buf, pos, end, &mut g);
        // SAFETY: `tokenize` wrote the first `ng` groups.
        let groups = unsafe { g.first(ng) };
        let from = if ng < MAX_GROUPS {
            validate(buf, groups, on, f, hits);
            if !windowed {
                break;
            }
            // (Past where this run stopped: `tokenize` ends at `end` or at
            // a byte that is neither digit nor glue, after its last group.)
            groups.last().map_or(end, |l| l.end())
        } else {
            window(buf, groups, on, f, hits);
            windowed = true;
            groups[ng - WINDOW_OVERLAP].start()
        };
        match next_digit(buf, from) {
            Some(p) if p > pos => pos = p,
            _ => break,
        }
    }
}

/// [`window`] over the groups of a whole run (or of its last window): less
/// a last group that begins a word ([`without_word`]); and when nothing is
/// found, once more less a last group that counts the word after it
/// ([`without_count`]), for phones and SSNs.
#[inline]
fn validate(buf: &mut [u8], groups: &[Group], on: DigitDetectors, f: &Fmt, hits: &mut DigitHits) {
    let g = without_word(buf, groups);
    let found = |h: &DigitHits| h.card + h.ssn + h.phone + h.ipv4;
    let before = found(hits);
    window(buf, g, on, f, hits);
    if found(hits) == before {
        if let Some(rest) = without_count(buf, g) {
            // (Not cards: `6011 1134 9346 9550 1` is a card number of 17
            // digits, or 16 and a count; a card written in groups of four
            // may end in a shorter group.)
            let on = DigitDetectors { card: false, ..on };
            window(buf, rest, on, f, hits);
        }
    }
}

/// The groups of a run less its last one when that one is a count of the
/// word after it: one to three digits after a single space, then a space
/// and a letter (`415 555 2671 3 times`, `123 45 6789 2 forms`).
/// Only tried when the whole run holds no value: a number written in
/// pairs (`06 12 34 56 78 ordered`) ends with such a group too.
#[inline]
fn without_count<'g>(buf: &[u8], g: &'g [Group]) -> Option<&'g [Group]> {
    let (last, rest) = g.split_last()?;
    let e = last.end();
    let count = !rest.is_empty()
        && last.len() <= 3
        && last.sep.single(b' ')
        && buf.get(e) == Some(&b' ')
        && buf.get(e + 1).is_some_and(u8::is_ascii_alphabetic);
    count.then_some(rest)
}

/// The groups of a run less its last one when that one begins a word: a
/// group after a space whose digits run straight into a letter (`2nd`,
/// `24h`, `3rd`, the digits opening an e-mail's local part) is no digit
/// group of the number before it, which ends at that space. So `call
/// 415-555-2671 2nd floor` and `4111 1111 1111 1111 2x` are a phone and a
/// card; without this the number's right edge is the `2`, glued to a word.
/// Not an `x` before a digit (`415 555 2671x12`: an extension, which
/// `phone_right` reads), and only the run's last group (the letter is the
/// byte after the run).
#[inline]
fn without_word<'g>(buf: &[u8], g: &'g [Group]) -> &'g [Group] {
    let Some((last, rest)) = g.split_last() else {
        return g;
    };
    let e = last.end();
    let word = !rest.is_empty()
        && buf.get(e).is_some_and(u8::is_ascii_alphabetic)
        && !(matches!(buf[e], b'x' | b'X') && buf.get(e + 1).is_some_and(u8::is_ascii_digit))
        && (last.sep.a() == b' ' || (last.sep.len() >= 2 && last.sep.b() == b' '));
    if word {
        rest
    } else {
        g
    }
}

fn window(buf: &mut [u8], g: &[Group], on: DigitDetectors, f: &Fmt, hits: &mut DigitHits) {
    let ng = g.len();
    let mut used: u64 = 0;
    let free = |used: u64, a: usize, b: usize| (used >> a) & ((1u64 << (b - a + 1)) - 1) == 0;
    let take = |used: &mut u64, a: usize, b: usize| *used |= ((1u64 << (b - a + 1)) - 1) << a;
    // A value starting at group k has a clean left edge: the first group
    // needs a word boundary; later ones are preceded by glue.
    // A card is not a slice of a longer number written the same way: the
    // groups next to it must not be joined by its own separator.
    let left_ok = |buf: &[u8], k: usize, inner: Option<Sep>| {
        if k == 0 {
            boundary_before(buf, g[0].start())
        } else {
            inner != Some(g[k].sep)
        }
    };
    let right_ok = |buf: &[u8], j: usize, inner: Option<Sep>| {
        if j + 1 == ng {
            boundary_after(buf, g[j].end())
        } else {
            inner != Some(g[j + 1].sep)
        }
    };

    if on.ssn {
        for k in 0..ng.saturating_sub(2) {
            let (a, b, c) = (&g[k], &g[k + 1], &g[k + 2]);
            if a.len() != 3 || b.len() != 2 || c.len() != 4 || !free(used, k, k + 2) {
                continue;
            }
            let s = b.sep;
            if c.sep != s || !(s.single(b'-') || s.single(b' ')) {
                continue;
            }
            if starts_joined(buf, g, k, s)
                && ends_joined(buf, g, k + 2, s)
                && ssn_valid(buf, a.start(), b.start(), c.start())
            {
                mask_range(buf, a.start(), c.end(), f.ssn_keep, f);
                take(&mut used, k, k + 2);
                hits.ssn += 1;
            }
        }
    }

    if on.card {
        let mut k = 0;
        while k < ng {
            let mut found = None;
            // Every issuer prefix `issuer_ok` knows starts with 2–6 or 8.
            if free(used, k, k) && matches!(buf[g[k].start()], b'2'..=b'6' | b'8') {
                let sep = if k + 1 < ng {
                    g[k + 1].sep
                } else {
                    Sep::default()
                };
                let mut total = 0;
                for j in k..ng {
                    // (A card written in groups starts with a group of
                    // four: `4111 1111 …`, Amex `3782 822463 10005`.)
                    if !free(used, j, j)
                        || (j > k && (!g[j].sep.card() || g[j].sep != sep || g[k].len() != 4))
                    {
                        break;
                    }
                    total += g[j].len();
                    if total > 19 {
                        break;
                    }
                    let inner = (j > k).then_some(sep);
                    if total >= 13
                        && !decimal_fraction(buf, g[k].start())
                        && left_ok(buf, k, inner)
                        && right_ok(buf, j, inner)
                        && card_valid(buf, &g[k..=j], total)
                    {
                        found = Some(j);
                        break;
                    }
                }
            }
            if let Some(j) = found {
                mask_range(buf, g[k].start(), g[j].end(), f.card_keep, f);
                take(&mut used, k, j);
                hits.card += 1;
                k = j + 1;
            } else {
                k += 1;
            }
        }
    }

    if on.phone {
        let mut k = 0;
        while k < ng {
            match phone_at(buf, g, k, used) {
                Some((start, j)) => {
                    mask_range(buf, start, g[j].end(), f.phone_keep, f);
                    take(&mut used, k, j);
                    hits.phone += 1;
                    k = j + 1;
                }
                None => k += 1,
            }
        }
    }

    if on.ipv4 {
        for k in 0..ng.saturating_sub(3) {
            if !free(used, k, k + 3) {
                continue;
            }
            // (Cheapest test first: most runs of four groups or more are
            // dates, times and phone numbers, not joined by single dots.)
            let dots = || (k + 1..k + 4).all(|i| g[i].sep.single(b'.'));
            let octets = || {
                (k..k + 4).all(|i| {
                    let d = &buf[g[i].start()..g[i].end()];
                    d.len() <= 3 && d.iter().fold(0u32, |v, &c| v * 10 + (c - b'0') as u32) <= 255
                })
            };
            let left = || {
                isolated_left(buf, g, k)
                    && !(k == 0 && g[k].start() > 0 && buf[g[k].start() - 1] == b'.')
            };
            let right = || {
                isolated_right(buf, g, k + 3)
                    && !(buf.get(g[k + 3].end()) == Some(&b'.')
                        && buf.get(g[k + 3].end() + 1).is_some_and(u8::is_ascii_digit))
            };
            if dots() && octets() && left() && right() {
                mask_range(buf, g[k].start(), g[k + 3].end(), 0, f);
                take(&mut used, k, k + 3);
                hits.ipv4 += 1;
            }
        }
    }
}

/// Group `k` starts a value: it begins the run at a word boundary, or the
/// separator before it is more than one character (`, ` is not glue, so a
/// one-character separator means the digits before may belong to it).
#[inline]
fn isolated_left(buf: &[u8], g: &[Group], k: usize) -> bool {
    if k == 0 {
        boundary_before(buf, g[0].start())
    } else {
        g[k].sep.len() >= 2
    }
}

/// Group `j` ends a value: the run ends there at a word boundary, or the
/// separator after it is more than one character.
#[inline]
fn isolated_right(buf: &[u8], g: &[Group], j: usize) -> bool {
    if j + 1 == g.len() {
        boundary_after(buf, g[j].end())
    } else {
        g[j + 1].sep.len() >= 2
    }
}

/// Group `k` starts a value whose groups are joined by `inner`: it starts
/// a value ([`isolated_left`]), or the value is joined by something other
/// than a space and the separator before it is another one (`0608
/// 894-83-3583`: the dashes start after the space). (Not for values joined
/// by spaces: in `212 2016-06-03` the year is no group of a number.)
#[inline]
fn starts_joined(buf: &[u8], g: &[Group], k: usize, inner: Sep) -> bool {
    isolated_left(buf, g, k) || (k > 0 && !inner.single(b' ') && g[k].sep != inner)
}

/// Group `j` ends a value whose groups are joined by `inner`: it ends a
/// value ([`isolated_right`]), or the value is joined by something other
/// than a space and the separator after it is another one (`894-83-3583
/// 0608`, `939.518.2767 915818`). (Not for values joined by spaces: `456
/// 71 2025-07-12` is no SSN.)
#[inline]
fn ends_joined(buf: &[u8], g: &[Group], j: usize, inner: Sep) -> bool {
    isolated_right(buf, g, j) || (j + 1 < g.len() && !inner.single(b' ') && g[j + 1].sep != inner)
}

/// Area 001–899 except 666, group 01–99, serial 0001–9999, and not one of
/// the numbers famously printed in advertising.
fn ssn_valid(buf: &[u8], a: usize, g: usize, s: usize) -> bool {
    let num = |p: usize, n: usize| {
        buf[p..p + n]
            .iter()
            .fold(0u32, |v, &c| v * 10 + (c - b'0') as u32)
    };
    let (area, group, serial) = (num(a, 3), num(g, 2), num(s, 4));
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && !matches!((area, group, serial), (78, 5, 1120) | (219, 9, 9999))
}

/// Digits starting at `p` are the fraction of a decimal number (`2.26…`,
/// `12.55…`): never a card.
#[inline]
fn decimal_fraction(buf: &[u8], p: usize) -> bool {
    p >= 2 && buf[p - 1] == b'.' && buf[p - 2].is_ascii_digit()
}

/// Issuer prefix and length plausible, Luhn check digit valid.
fn card_valid(buf: &[u8], groups: &[Group], total: usize) -> bool {
    // First four digits as a number (fewer if the first groups are short).
    let mut lead = 0u32;
    let mut nlead = 0;
    'outer: for gr in groups {
        for &c in &buf[gr.start()..gr.end()] {
            lead = lead * 10 + (c - b'0') as u32;
            nlead += 1;
            if nlead == 4 {
                break 'outer;
            }
        }
    }
    if !issuer_ok(lead, total) {
        return false;
    }
    let mut sum = 0u32;
    let mut double = false;
    for gr in groups.iter().rev() {
        for &c in buf[gr.start()..gr.end()].iter().rev() {
            let mut d = (c - b'0') as u32;
            if double {
                d *= 2;
                if d > 9 {
                    d -= 9;
                }
            }
            sum += d;
            double = !double;
        }
    }
    sum.is_multiple_of(10)
}

/// Known issuer identification ranges (first four digits) and their lengths.
fn issuer_ok(lead4: u32, len: usize) -> bool {
    let l2 = lead4 / 100;
    let l3 = lead4 / 10;
    let l1 = lead4 / 1000;
    match l1 {
        // Visa
        4 => matches!(len, 13 | 16 | 19),
        // Mastercard 51–55; Mastercard 2-series 2221–2720; Mir 2200–2204
        5 => match l2 {
            51..=55 => len == 16,
            // Maestro 50, 56–58
            50 | 56..=58 => (13..=19).contains(&len),
            _ => false,
        },
        2 => {
            ((2221..=2720).contains(&lead4) && len == 16)
                || ((2200..=2204).contains(&lead4) && (16..=19).contains(&len))
        }
        // Amex 34/37, JCB 3528–3589, Diners 300–305, 3095, 36, 38–39
        3 => {
            ((l2 == 34 || l2 == 37) && len == 15)
                || ((3528..=3589).contains(&lead4) && (16..=19).contains(&len))
                || (((300..=305).contains(&l3)
                    || lead4 == 3095
                    || l2 == 36
                    || l2 == 38
                    || l2 == 39)
                    && (14..=19).contains(&len))
        }
        // Discover 6011, 644–649, 65; UnionPay 62; Maestro/RuPay 60, 63, 67
        6 => (16..=19).contains(&len) || (matches!(l2, 63 | 67) && (13..=19).contains(&len)),
        // UnionPay 81
        8 => l2 == 81 && (16..=19).contains(&len),
        _ => false,
    }
}

/// Group `j` ends a phone number: it ends a value ([`isolated_right`]), or
/// the run ends there with an extension glued on by `x` (`415-555-2671x123`,
/// `+1-415-555-2671x1234`): `x`, 1–5 digits, a word boundary.
#[inline]
fn phone_right(buf: &[u8], g: &[Group], j: usize) -> bool {
    if isolated_right(buf, g, j) {
        return true;
    }
    let e = g[j].end();
    if j + 1 != g.len() || !matches!(buf.get(e), Some(b'x' | b'X')) {
        return false;
    }
    let d = run(buf, e + 1, 6, |b| b.is_ascii_digit());
    (1..=5).contains(&d) && boundary_after(buf, e + 1 + d)
}

/// A phone number starting at group `k`: returns where its text starts (a
/// `+` or `(` before the digits included) and its last group.
fn phone_at(buf: &[u8], g: &[Group], k: usize, used: u64) -> Option<(usize, usize)> {
    let ng = g.len();
    let free = |i: usize| (used >> i) & 1 == 0;
    if !free(k) {
        return None;
    }
    let s = g[k].start();
    let before = if s > 0 { buf[s - 1] } else { 0 };
    // The last group `j` from `from` on, the groups after `from` joined by
    // separators `joins` accepts, where the digits so far (`total` before
    // `from`) are 9–15 and the number ends: E.164's length.
    let international = |from: usize, mut total: usize, joins: &dyn Fn(Sep) -> bool| {
        let mut best = None;
        for j in from..ng {
            if !free(j) || (j > from && !joins(g[j].sep)) {
                break;
            }
            total += g[j].len();
            if total > 15 {
                break;
            }
            // (Joined as the number's last group is: `+14155552671 8`
            // ends at the space, `+1-415-555-2671 0608` too.)
            let inner = if j > from { g[j].sep } else { Sep::default() };
            if total >= 9 && (phone_right(buf, g, j) || ends_joined(buf, g, j, inner)) {
                best = Some(j);
            }
        }
        best
    };

    // E.164: `+`, then 9–15 digits in groups joined by phone separators.
    if before == b'+' && boundary_before(buf, s - 1) {
        return international(k, 0, &Sep::phone).map(|j| (s - 1, j));
    }

    // North American: [1] (NPA) NXX XXXX.
    let lead1 = g[k].len() == 1 && buf[s] == b'1';
    let ka = if lead1 { k + 1 } else { k };
    if ka + 2 < ng
        && (ka..ka + 3).all(free)
        && g[ka].len() == 3
        && g[ka + 1].len() == 3
        && g[ka + 2].len() == 4
        && (!lead1 || g[ka].sep.phone())
        && g[ka + 1].sep.phone()
        && g[ka + 2].sep.phone()
        && (b'2'..=b'9').contains(&buf[g[ka].start()])
        && (b'2'..=b'9').contains(&buf[g[ka + 1].start()])
        && (phone_right(buf, g, ka + 2) || ends_joined(buf, g, ka + 2, g[ka + 2].sep))
    {
        if before == b'(' && boundary_before(buf, s - 1) {
            return Some((s - 1, ka + 2));
        }
        if starts_joined(buf, g, k, g[ka + 1].sep) {
            return Some((s, ka + 2));
        }
    }

    // International with the `00` prefix: `0049 30 12345678`, `0044 20 7946
    // 0958`, `001-415-555-2671`. A group of `00` and a country code (1–3
    // digits, not starting with 0), then groups joined by one consistent
    // space, dash or dot; 9–15 digits after the `00`, as E.164. (Never a
    // trunk-0 number: no area code starts with 0. Not after a `+`: `+00` is
    // a time zone.)
    if (3..=5).contains(&g[k].len())
        && before != b'+'
        && buf[s..s + 3].starts_with(b"00")
        && buf[s + 2] != b'0'
        && k + 1 < ng
        && g[k + 1].sep.plain()
        && isolated_left(buf, g, k)
    {
        let sep = g[k + 1].sep;
        return international(k + 1, g[k].len() - 2, &|x| x == sep).map(|j| (s, j));
    }

    // Brazil: `(DD) NNNN-NNNN` / `(DD) NNNNN-NNNN`, an area code of two
    // digits 1–9 in parentheses, the number joined by one dash.
    if before == b'('
        && boundary_before(buf, s - 1)
        && g[k].len() == 2
        && k + 2 < ng
        && (k..k + 3).all(free)
        && buf[s..s + 2].iter().all(|&c| c != b'0')
        && g[k + 1].sep.closes_paren()
        && (4..=5).contains(&g[k + 1].len())
        && g[k + 2].sep.single(b'-')
        && g[k + 2].len() == 4
        && phone_right(buf, g, k + 2)
    {
        return Some((s - 1, k + 2));
    }

    // Trunk-0 national: 0 and an area code (not starting with 0: `+00 249
    // 213 433` is a time zone and numbers), a group of 2–5 digits, then
    // groups of 2–8 (`01632 960123`, `030 12345678`) joined by one
    // consistent space, dash or dot, 10–11 digits in all, or 12 as two
    // groups of 3–4 and 8 digits (German mobiles: `0151 12345678`). The
    // first group may stand in parentheses, closed by `)` or `) ` (`(02)
    // 9876 5432`, `(030) 12345678`): the groups after it are then joined by
    // one consistent space, dash or dot.
    if (2..=5).contains(&g[k].len()) && buf[s] == b'0' && buf[s + 1] != b'0' && k + 1 < ng {
        let paren = before == b'(' && boundary_before(buf, s - 1) && g[k + 1].sep.closes_paren();
        if paren || isolated_left(buf, g, k) {
            let sep = if paren {
                g.get(k + 2).map_or(Sep::default(), |x| x.sep)
            } else {
                g[k + 1].sep
            };
            let mut total = g[k].len();
            let mut last = k;
            for (j, gj) in g.iter().enumerate().skip(k + 1) {
                if !free(j)
                    || (gj.sep != sep && !(paren && j == k + 1))
                    || !(2..=8).contains(&gj.len())
                    || (total + gj.len() > 11
                        && !(j == k + 1 && total <= 4 && total + gj.len() == 12))
                {
                    break;
                }
                total += gj.len();
                last = j;
            }
            // (After `(0…)` and a single group, no separator to check.)
            let sep_ok = sep.plain() || (paren && last == k + 1);
            if (10..=12).contains(&total) && sep_ok && phone_right(buf, g, last) {
                return Some((if paren { s - 1 } else { s }, last));
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// IBAN (found from a digit run preceded by two capital letters).

/// IBAN length by country code (a lookup in a table built at compile
/// time: the detector asks for every two capitals before a digit run).
fn iban_len(c0: u8, c1: u8) -> Option<usize> {
    let (a, b) = (
        c0.wrapping_sub(b'A') as usize,
        c1.wrapping_sub(b'A') as usize,
    );
    if a >= 26 || b >= 26 {
        return None;
    }
    match IBAN_LEN[a * 26 + b] {
        0 => None,
        l => Some(l as usize),
    }
}

/// [`iban_len`]'s table: index `26 * (c0 - 'A') + (c1 - 'A')`, 0 for no
/// country.
const IBAN_LEN: [u8; 26 * 26] = {
    const LIST: &[(&[u8; 2], u8)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NL", 18),
        (b"NO", 15),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"SA", 24),
        (b"SC", 31),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
    ];
    let mut t = [0u8; 26 * 26];
    let mut i = 0;
    while i < LIST.len() {
        let (cc, l) = LIST[i];
        t[(cc[0] - b'A') as usize * 26 + (cc[1] - b'A') as usize] = l;
        i += 1;
    }
    t
};

/// Countries the IBAN detector knows (for tests and corpus generation).
pub fn iban_countries() -> impl Iterator<Item = ([u8; 2], usize)> {
    (b'A'..=b'Z')
        .flat_map(|a| (b'A'..=b'Z').map(move |b| [a, b]))
        .filter_map(|c| iban_len(c[0], c[1]).map(|l| (c, l)))
}

/// An IBAN starting at `s` (its country code); masks it and returns its end.
pub(crate) fn iban(buf: &mut [u8], s: usize, f: &Fmt) -> Option<usize> {
    if s + 4 > buf.len() || !boundary_before(buf, s) {
        return None;
    }
    let len = iban_len(buf[s], buf[s + 1])?;
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    while n < len {
        let c = *buf.get(i)?;
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            chars[n] = c;
            n += 1;
            i += 1;
        } else if c == b' ' && n % 4 == 0 && buf.get(i + 1).is_some_and(|b| alnum(*b)) {
            i += 1;
        } else {
            return None;
        }
    }
    if !boundary_after(buf, i) || !chars[2].is_ascii_digit() || !chars[3].is_ascii_digit() {
        return None;
    }
    let mut rem = 0u32;
    for &c in chars[4..len].iter().chain(&chars[..4]) {
        rem = if c.is_ascii_digit() {
            (rem * 10 + (c - b'0') as u32) % 97
        } else {
            (rem * 100 + (c - b'A' + 10) as u32) % 97
        };
    }
    if rem != 1 {
        return None;
    }
    mask_range(buf, s + 2, i, f.iban_keep, f);
    Some(i)
}

// ---------------------------------------------------------------------------
// Anchored detectors. Each gets the anchor byte's position `p`, returns the
// end of what it masked.

/// E-mail address around the `@` at `at`.
pub(crate) fn email(buf: &mut [u8], at: usize, f: &Fmt) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if (8..=64).contains(&buf.len()) {
        return email_short(buf, at, f);
    }
    email_bytes(buf, at, f)
}

/// [`email`] by a walk over the bytes.
fn email_bytes(buf: &mut [u8], at: usize, f: &Fmt) -> Option<usize> {
    email_walk(buf, at, at + 1, f)
}

/// An e-mail address written URL-encoded, `jane.doe%40example.com` (query
/// strings, `mailto:` links, logged URLs), with the `%` of its `%40` at
/// `p`: validated and masked as one with its `@` there, the `%40` kept.
pub(crate) fn email_encoded(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if buf.get(p..p + 3) != Some(b"%40") {
        return None;
    }
    email_walk(buf, p, p + 3, f)
}

/// The byte walk of [`email`] for a local part ending at `local_end` and a
/// domain from `dom_start` (`local_end + 1` after an `@`).
#[inline]
fn email_walk(buf: &mut [u8], local_end: usize, dom_start: usize, f: &Fmt) -> Option<usize> {
    let at = local_end;
    let lo = at.saturating_sub(64);
    let mut ls = at;
    while ls > lo && is(buf[ls - 1], K_LOCAL) {
        ls -= 1;
    }
    while ls < at && buf[ls] == b'.' {
        ls += 1;
    }
    if ls == at {
        return None;
    }
    let n = buf.len();
    let mut i = dom_start;
    let mut labels = 0;
    let mut tld = i;
    // Whether the last label is all letters.
    let mut alpha;
    loop {
        let max = n.min(i + 63);
        let start = i;
        alpha = true;
        while i < max {
            let k = KIND[buf[i] as usize];
            if k & K_LABEL == 0 {
                break;
            }
            alpha &= k & K_ALPHA != 0;
            i += 1;
        }
        if i == start {
            break;
        }
        tld = start;
        labels += 1;
        if i + 1 < n && buf[i] == b'.' && is(buf[i + 1], K_ALNUM) {
            i += 1;
        } else {
            break;
        }
    }
    // (Only the first label can be empty: a `.` is taken only before an
    // alphanumeric byte.)
    if labels < 2 || i - tld < 2 || !alpha {
        return None;
    }
    let dom_end = if f.email_keep_tld { tld } else { i };
    if f.keep_punct {
        // Local part and domain hold only letters, digits and ASCII
        // punctuation, and the `@` is punctuation: masking the letters and
        // digits of the whole span is `mask_range` of each part.
        // (An `@` is no letter or digit; the `%40` of an encoded one is
        // kept as it is.)
        let ch = f.ch;
        let (local, rest) = buf[ls..dom_end].split_at_mut(at - ls);
        for b in local.iter_mut().chain(&mut rest[dom_start - at..]) {
            *b ^= (*b ^ ch) & ALNUM_FF[*b as usize];
        }
    } else {
        mask_range(buf, ls, dom_end, 0, f);
    }
    Some(i)
}

/// [`email`] for a value of 8 to 64 bytes: the local part and the domain
/// from class masks of the whole value (SSE2, loaded straight from the
/// value: 16-byte chunks, the last one moved back to end at the end, or
/// for fewer than 16 bytes its first and last 8), the rewrite by
/// [`mask_range`]. Same result as the byte walk.
#[cfg(target_arch = "x86_64")]
fn email_short(buf: &mut [u8], at: usize, f: &Fmt) -> Option<usize> {
    use std::arch::x86_64::*;
    let n = buf.len();
    debug_assert!(at < n && (8..=64).contains(&n));
    // (Class masks; bits past the end are clear.)
    let (mut local, mut label, mut alpha, mut alnum, mut dot) = (0u64, 0u64, 0u64, 0u64, 0u64);
    // The loaded chunks, for the rewrite.
    // SAFETY: SSE2 is part of x86_64.
    let mut xs = [unsafe { _mm_setzero_si128() }; 4];
    // SAFETY: SSE2 is part of x86_64; every load is inside `buf`.
    unsafe {
        let set = |c: u8| _mm_set1_epi8(c as i8);
        // Movemasks of: local-part bytes, label bytes, letters, letters
        // and digits, dots.
        let classes = |x: __m128i| {
            let t = _mm_sub_epi8(_mm_or_si128(x, set(0x20)), set(b'a'));
            let al = _mm_cmpeq_epi8(_mm_min_epu8(t, set(25)), t);
            let td = _mm_sub_epi8(x, set(b'0'));
            let dg = _mm_cmpeq_epi8(_mm_min_epu8(td, set(9)), td);
            let an = _mm_or_si128(al, dg);
            let da = _mm_cmpeq_epi8(x, set(b'-'));
            let dt = _mm_cmpeq_epi8(x, set(b'.'));
            let lb = _mm_or_si128(an, da);
            let p = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, set(b'_')), _mm_cmpeq_epi8(x, set(b'%'))),
                _mm_or_si128(_mm_cmpeq_epi8(x, set(b'+')), _mm_cmpeq_epi8(x, set(b'*'))),
            );
            let lc = _mm_or_si128(_mm_or_si128(lb, dt), p);
            [lc, lb, al, an, dt].map(|v| _mm_movemask_epi8(v) as u32 as u64)
        };
        if n >= 16 {
            for (l, slot) in xs.iter_mut().enumerate().take(n.div_ceil(16)) {
                let o = (16 * l).min(n - 16);
                let x = _mm_loadu_si128(buf.as_ptr().add(o) as *const __m128i);
                *slot = x;
                let [a, b, c, d, e] = classes(x);
                local |= a << o;
                label |= b << o;
                alpha |= c << o;
                alnum |= d << o;
                dot |= e << o;
            }
        } else {
            let (x, _) = split16(buf);
            xs[0] = x;
            let place = |m: u64| (m & 0xff) | (m >> 8) << (n - 8);
            let [a, b, c, d, e] = classes(x);
            local = place(a);
            label = place(b);
            alpha = place(c);
            alnum = place(d);
            dot = place(e);
        }
    }
    let (m, i) = email_bits([local, label, alpha, alnum, dot], at, n, f)?;
    // SAFETY: SSE2 is part of x86_64; every store is 16 bytes inside
    // `buf`, at the offset its chunk was loaded from.
    unsafe {
        let ch = _mm_set1_epi8(f.ch as i8);
        let bit = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
        // Blend the mask character into `x` where the 16 bits of `b` are set.
        let blend = |x: __m128i, b: u64| {
            let spread = |v: u64| ((v & 0xff) * 0x0101_0101_0101_0101) as i64;
            let sel = _mm_set_epi64x(spread(b >> 8), spread(b));
            let sel = _mm_cmpeq_epi8(_mm_and_si128(sel, bit), bit);
            _mm_or_si128(_mm_andnot_si128(sel, x), _mm_and_si128(sel, ch))
        };
        if n >= 16 {
            // (Chunks overlapping the last one store the same bytes there:
            // both blend the loaded bytes by the same bits.)
            for (l, &x) in xs.iter().enumerate().take(n.div_ceil(16)) {
                let o = (16 * l).min(n - 16);
                let b = (m >> o) & 0xffff;
                if b != 0 {
                    _mm_storeu_si128(buf.as_mut_ptr().add(o) as *mut __m128i, blend(x, b));
                }
            }
        } else {
            let b = (m & 0xff) | ((m >> (n - 8)) & 0xff) << 8;
            let out = blend(xs[0], b);
            let lo = _mm_cvtsi128_si64(out) as u64;
            let hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(out, out)) as u64;
            buf[..8].copy_from_slice(&lo.to_le_bytes());
            buf[n - 8..].copy_from_slice(&hi.to_le_bytes());
        }
    }
    Some(i)
}

/// The bit arithmetic of the short e-mail paths: from the class masks of a
/// value of `n <= 64` bytes (local-part bytes, label bytes, letters,
/// letters and digits, dots) and the `@` at `at`, the bytes to mask and
/// the end of the address, as [`email`] finds them.
#[inline(always)]
fn email_bits(
    [local, label, alpha, alnum, dot]: [u64; 5],
    at: usize,
    n: usize,
    f: &Fmt,
) -> Option<(u64, usize)> {
    // Local part: the run of local-part bytes before the `@`, leading dots
    // dropped (the byte walk stops 64 bytes back: never, here).
    let not_local = !local & ((1u64 << at) - 1);
    let mut ls = if not_local == 0 {
        0
    } else {
        64 - not_local.leading_zeros() as usize
    };
    // (The `@` is no dot: this stops at `at` at the latest.)
    ls += (!(dot >> ls)).trailing_zeros() as usize;
    if ls >= at {
        return None;
    }
    // Domain: labels of letters, digits and `-`, joined by a `.` followed by
    // a letter or digit; the first label is not empty. (No label can reach
    // the 63-byte limit in 64 bytes.)
    let s = at + 1;
    if s >= n || (label >> s) & 1 == 0 {
        return None;
    }
    let joins = dot & (alnum >> 1);
    let ext = label | joins;
    let i = s + (!(ext >> s)).trailing_zeros() as usize;
    let span = (u64::MAX >> (64 - (i - s))) << s;
    let inner = joins & span;
    if inner == 0 {
        return None;
    }
    let tld = 64 - inner.leading_zeros() as usize;
    if i - tld < 2 || !alpha & (u64::MAX >> (64 - (i - tld))) << tld != 0 {
        return None;
    }
    let dom_end = if f.email_keep_tld { tld } else { i };
    // The bytes to mask: every byte of the span is ASCII and none is
    // structural, so `mask_range` of it masks its letters and digits with
    // punctuation kept, else all of it.
    let span = (u64::MAX >> (64 - (dom_end - ls))) << ls;
    let m = if f.keep_punct { alnum & span } else { span };
    Some((m, i))
}

/// [`email`] for a value of at most 64 bytes, on a CPU with AVX-512BW:
/// the class masks of [`email_short`] from one masked load of the whole
/// value (bits past the end clear: the padding is zero bytes, in no
/// class), the same bit arithmetic, and the rewrite by one masked store of
/// the mask character. Same result as [`email`].
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW, BMI1, BMI2 and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,bmi1,bmi2,popcnt")]
pub(crate) unsafe fn email_avx512(buf: &mut [u8], at: usize, f: &Fmt) -> Option<usize> {
    use std::arch::x86_64::*;
    let n = buf.len();
    if n > 64 || at >= n {
        return email(buf, at, f);
    }
    let load: u64 = u64::MAX >> (64 - n);
    // SAFETY: the CPU supports AVX-512F/BW (this function's contract); the
    // masked load reads the `n` bytes of `buf` only (masked-out bytes are
    // neither read nor fault).
    let (local, label, alpha, alnum, dot) = unsafe {
        let set = |c: u8| _mm512_set1_epi8(c as i8);
        let x = _mm512_maskz_loadu_epi8(load, buf.as_ptr() as *const i8);
        let t = _mm512_sub_epi8(_mm512_or_si512(x, set(0x20)), set(b'a'));
        let al = _mm512_cmple_epu8_mask(t, set(25));
        let dg = _mm512_cmple_epu8_mask(_mm512_sub_epi8(x, set(b'0')), set(9));
        let eq = |c: u8| _mm512_cmpeq_epi8_mask(x, set(c));
        let an = al | dg;
        let (da, dt) = (eq(b'-'), eq(b'.'));
        let lb = an | da;
        let p = eq(b'_') | eq(b'%') | eq(b'+') | eq(b'*');
        (lb | dt | p, lb, al, an, dt)
    };
    let (m, i) = email_bits([local, label, alpha, alnum, dot], at, n, f)?;
    // SAFETY: as above; the store writes the bytes of `m`, all below `n`
    // (masked-out bytes are not written and do not fault).
    unsafe {
        _mm512_mask_storeu_epi8(buf.as_mut_ptr() as *mut i8, m, _mm512_set1_epi8(f.ch as i8));
    }
    Some(i)
}

/// JWT: `ey…`.`…`.`…` with the `J` of `eyJ` at `p`.
pub(crate) fn jwt(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if p < 2 || &buf[p - 2..p] != b"ey" {
        return None;
    }
    let s = p - 2;
    if s > 0 && (b64url(buf[s - 1]) || buf[s - 1] == b'.') {
        return None;
    }
    let l1 = run(buf, s, 8192, b64url);
    let dot1 = s + l1;
    if l1 < 10 || buf.get(dot1) != Some(&b'.') {
        return None;
    }
    let l2 = run(buf, dot1 + 1, 1 << 16, b64url);
    let dot2 = dot1 + 1 + l2;
    if l2 < 2 || buf.get(dot2) != Some(&b'.') {
        return None;
    }
    let l3 = run(buf, dot2 + 1, 8192, b64url);
    let end = dot2 + 1 + l3;
    for b in &mut buf[s..end] {
        if *b != b'.' {
            *b = f.ch;
        }
    }
    Some(end)
}

/// Mask `[body, end)` of a token whose fixed prefix starts at `s`.
fn mask_token(buf: &mut [u8], s: usize, body: usize, end: usize, f: &Fmt) {
    mask_all(buf, if f.keep_prefix { body } else { s }, end, f);
}

/// Mask every byte of `buf[from..end]`, punctuation included (the
/// credential bodies of tokens, `Bearer` and `Basic`, webhook paths,
/// custom literals).
pub(crate) fn mask_all(buf: &mut [u8], from: usize, end: usize, f: &Fmt) {
    let all = Fmt {
        keep_punct: false,
        ..*f
    };
    mask_range(buf, from, end, 0, &all);
}

/// A token of `min` or more letters and digits (up to 256) from `body`,
/// its prefix from `s`, at a word boundary and not followed by `_`: masked
/// (see [`mask_token`]); returns its end.
fn alnum_token(buf: &mut [u8], s: usize, body: usize, min: usize, f: &Fmt) -> Option<usize> {
    let l = run(buf, body, 256, alnum);
    if l < min || !boundary_before(buf, s) || buf.get(body + l) == Some(&b'_') {
        return None;
    }
    mask_token(buf, s, body, body + l, f);
    Some(body + l)
}

/// AWS access key id `AKIA`/`ASIA` + 16, with the `K`/`S` at `p`.
pub(crate) fn aws(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if p < 1
        || buf[p - 1] != b'A'
        || !matches!(buf.get(p), Some(b'K' | b'S'))
        || buf.get(p + 1..p + 3) != Some(b"IA")
    {
        return None;
    }
    let s = p - 1;
    let body = s + 4;
    let l = run(buf, body, 17, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit()
    });
    if l != 16 || !boundary_before(buf, s) || !boundary_after(buf, body + 16) {
        return None;
    }
    mask_token(buf, s, body, body + 16, f);
    Some(body + 16)
}

/// Google API key `AIza` + 35, with the `z` at `p`.
pub(crate) fn google(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if p < 2 || &buf[p - 2..p] != b"AI" || buf.get(p + 1) != Some(&b'a') {
        return None;
    }
    let s = p - 2;
    let body = s + 4;
    let l = run(buf, body, 36, b64url);
    if l != 35 || !boundary_before(buf, s) {
        return None;
    }
    mask_token(buf, s, body, body + 35, f);
    Some(body + 35)
}

/// Tokens whose prefix ends in `_`, with the `_` at `p`: GitHub (`ghp_`…
/// and `github_pat_`), Stripe (`sk_live_`… and webhook signing secrets
/// `whsec_` + 24 or more letters and digits), Hugging Face (`hf_` + 30 or
/// more), npm (`npm_` + 36 or more), Shopify (`shpat_`, `shpss_` + 32 hex
/// digits), DigitalOcean (`dop_v1_`, `doo_v1_`, `dor_v1_` + 64 hex digits)
/// and Grafana Cloud (`glc_` + 32 or more of base64 and its padding).
pub(crate) fn underscore(
    buf: &mut [u8],
    p: usize,
    on: TokenDetectors,
    f: &Fmt,
) -> Option<(usize, Vendor)> {
    let (github, stripe) = (on.github, on.stripe);
    if github && p >= 3 && &buf[p - 3..p - 1] == b"gh" && b"pousr".contains(&buf[p - 1]) {
        if let Some(end) = alnum_token(buf, p - 3, p + 1, 30, f) {
            return Some((end, Vendor::GitHub));
        }
    }
    if github && p >= 6 && &buf[p - 6..p] == b"github" && buf.get(p + 1..p + 5) == Some(b"pat_") {
        let s = p - 6;
        let body = p + 5;
        let l = run(buf, body, 256, |b| alnum(b) || b == b'_');
        if l >= 40 && boundary_before(buf, s) {
            mask_token(buf, s, body, body + l, f);
            return Some((body + l, Vendor::GitHub));
        }
    }
    if stripe
        && p >= 2
        && (&buf[p - 2..p] == b"sk" || &buf[p - 2..p] == b"rk")
        && matches!(buf.get(p + 1..p + 6), Some(b"live_") | Some(b"test_"))
    {
        if let Some(end) = alnum_token(buf, p - 2, p + 6, 16, f) {
            return Some((end, Vendor::Stripe));
        }
    }
    if stripe && p >= 5 && &buf[p - 5..p] == b"whsec" {
        if let Some(end) = alnum_token(buf, p - 5, p + 1, 24, f) {
            return Some((end, Vendor::Stripe));
        }
    }
    if on.huggingface && p >= 2 && &buf[p - 2..p] == b"hf" {
        if let Some(end) = alnum_token(buf, p - 2, p + 1, 30, f) {
            return Some((end, Vendor::HuggingFace));
        }
    }
    if on.npm && p >= 3 && &buf[p - 3..p] == b"npm" {
        if let Some(end) = alnum_token(buf, p - 3, p + 1, 36, f) {
            return Some((end, Vendor::Npm));
        }
    }
    if on.shopify && p >= 5 && matches!(&buf[p - 5..p], b"shpat" | b"shpss") {
        if let Some(end) = hex_token(buf, p - 5, p + 1, 32, f) {
            return Some((end, Vendor::Shopify));
        }
    }
    if on.digitalocean
        && p >= 3
        && matches!(&buf[p - 3..p], b"dop" | b"doo" | b"dor")
        && buf.get(p + 1..p + 4) == Some(b"v1_")
    {
        if let Some(end) = hex_token(buf, p - 3, p + 4, 64, f) {
            return Some((end, Vendor::DigitalOcean));
        }
    }
    if on.grafana && p >= 3 && &buf[p - 3..p] == b"glc" && boundary_before(buf, p - 3) {
        let body = p + 1;
        let l = run(buf, body, 1024, |b| alnum(b) || b == b'+' || b == b'/');
        if l >= 32 {
            let end = body + l + run(buf, body + l, 2, |b| b == b'=');
            mask_token(buf, p - 3, body, end, f);
            return Some((end, Vendor::Grafana));
        }
    }
    None
}

/// Exactly `n` hex digits at `at`, not glued to a following letter or
/// digit.
fn hex_len(buf: &[u8], at: usize, n: usize) -> bool {
    run(buf, at, n, |b| b.is_ascii_hexdigit()) == n && boundary_after(buf, at + n)
}

/// A token of prefix `buf[s..body]` and exactly `n` hex digits, at a word
/// boundary: masked after its prefix; returns its end.
fn hex_token(buf: &mut [u8], s: usize, body: usize, n: usize, f: &Fmt) -> Option<usize> {
    if !boundary_before(buf, s) || !hex_len(buf, body, n) {
        return None;
    }
    mask_token(buf, s, body, body + n, f);
    Some(body + n)
}

// ---------------------------------------------------------------------------
// Tokens recognized only as a whole value: their prefixes have no anchor
// byte the scan could afford (`hvs.`, `dapi`, `key-`, `pypi-`, a bot id and
// `:AA`…), so they are checked once per value instead, by its length and
// first bytes: a value (a cell, a COPY field, a JSON string, a
// notification's payload, a word of an error message) that is the token,
// ASCII whitespace around it and a JSON string's quotes aside.

/// The whole-value tokens that are on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WholeTokens {
    pub vault: bool,
    pub databricks: bool,
    pub mailgun: bool,
    pub telegram: bool,
    pub linear: bool,
    pub pypi: bool,
    pub doppler: bool,
    pub pulumi: bool,
    pub sentry: bool,
    /// Grafana service-account tokens (`glsa_`), rule `grafana_token`.
    pub grafana: bool,
    /// Shopify custom-app and partner tokens (`shpca_`, `shppa_`), rule
    /// `shopify_token`.
    pub shopify: bool,
}

impl WholeTokens {
    pub(crate) fn any(&self) -> bool {
        self.vault
            || self.databricks
            || self.mailgun
            || self.telegram
            || self.linear
            || self.pypi
            || self.doppler
            || self.pulumi
            || self.sentry
            || self.grafana
            || self.shopify
    }
}

/// Which whole-value token [`whole_token`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WholeKind {
    Vault,
    Databricks,
    Mailgun,
    Telegram,
    Linear,
    Pypi,
    Doppler,
    Pulumi,
    Sentry,
    Grafana,
    Shopify,
}

/// The shortest whole-value token (`hvs.` and 24 characters), and the
/// longest value looked at (PyPI and Sentry tokens run to some 200
/// characters; whitespace around them included).
pub(crate) const WHOLE_MIN: usize = 28;
pub(crate) const WHOLE_MAX: usize = 512;

/// The first four bytes of the whole-value tokens with a prefix of their
/// own, and their slots in [`WHOLE_PREFIXES`] (a perfect hash: the top 5
/// bits of the prefix times [`WHOLE_HASH`]).
const WHOLE_PREFIX_LIST: [&[u8; 4]; 16] = [
    b"hvs.", b"hvb.", b"hvr.", b"dapi", b"dp.p", b"dp.s", b"dp.c", b"dp.a", b"key-", b"lin_",
    b"pypi", b"pul-", b"sntr", b"shpc", b"shpp", b"glsa",
];
const WHOLE_HASH: u32 = 0x9d64_3c25;
static WHOLE_PREFIXES: [u32; 32] = {
    // (Empty slots hold a prefix no token has.)
    let mut t = [u32::MAX; 32];
    let mut i = 0;
    while i < WHOLE_PREFIX_LIST.len() {
        let p = u32::from_le_bytes(*WHOLE_PREFIX_LIST[i]);
        let h = (p.wrapping_mul(WHOLE_HASH) >> 27) as usize;
        assert!(t[h] == u32::MAX, "WHOLE_HASH must keep the prefixes apart");
        t[h] = p;
        i += 1;
    }
    t
};

/// Whether `v` may be a whole-value token, from its length and first
/// bytes alone: a perfect hash of the first four, then (for a Telegram
/// bot id) a digit first and a `:` 8 to 10 bytes in. Both branches go
/// the same way for nearly every value, as the first letters of names
/// and notes would not; [`whole_token`] decides.
#[inline(always)]
pub(crate) fn may_be_whole(v: &[u8]) -> bool {
    let n = v.len();
    if !(WHOLE_MIN..=WHOLE_MAX).contains(&n) {
        // (Longer, a token only with whitespace around it: `char(n)`
        // padding, or quotes around that.)
        return n > WHOLE_MAX && (space(v[0]) || space(v[n - 1]) || matches!(v[0], b'"' | b'\''));
    }
    let p = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    if WHOLE_PREFIXES[(p.wrapping_mul(WHOLE_HASH) >> 27) as usize] == p {
        return true;
    }
    // (Else a Telegram bot id, or whitespace or a JSON string's quote
    // before a token: rare first bytes, so the branch stays predicted.)
    match v[0] {
        b'0'..=b'9' => n >= 44 && (v[8] == b':' || v[9] == b':' || v[10] == b':'),
        b => b == b'"' || b == b'\'' || space(b),
    }
}

/// ASCII whitespace, vertical tab included (which `is_ascii_whitespace`
/// leaves out and PostgreSQL's `isspace` does not).
#[inline]
fn space(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b
}

/// `[A-Za-z0-9_-]`.
#[inline]
fn token_char(b: u8) -> bool {
    alnum(b) || b == b'_' || b == b'-'
}

/// All of `s` is in `class`.
#[inline]
fn all_of(s: &[u8], class: impl Fn(u8) -> bool) -> bool {
    s.iter().all(|&b| class(b))
}

/// `s` is exactly `n` hex digits.
#[inline]
fn hex_of(s: &[u8], n: usize) -> bool {
    s.len() == n && all_of(s, |b| b.is_ascii_hexdigit())
}

/// The token that is the whole of `buf` (ASCII whitespace and vertical
/// tabs around it, and the quotes of a JSON string or single quotes, with
/// whitespace inside them, aside), masked after its prefix (all of it
/// without `keep_prefix`):
/// - Vault `hvs.`, `hvb.`, `hvr.` + 24 or more of `[A-Za-z0-9_-]` holding
///   a digit and a capital, and for a namespace other than the root one
///   `.` and its 5-character id;
/// - Databricks `dapi` + 32 hex digits, and an optional `-` + 1 or 2
///   digits;
/// - Mailgun `key-` + 32 hex digits;
/// - Telegram bot tokens: 8 to 10 digits (the bot id, kept), `:`, `AA` +
///   33 of `[A-Za-z0-9_-]`;
/// - Linear `lin_api_` + 40 letters and digits, `lin_oauth_` + 64 hex;
/// - PyPI `pypi-AgEIcHlwaS5vcmc` (the macaroon's `pypi.org` header) + 50
///   or more of `[A-Za-z0-9_-]`;
/// - Doppler `dp.pt.`, `dp.st.` (and the config's name and `.`, kept),
///   `dp.sa.`, `dp.ct.`, `dp.scim.`, `dp.audit.` + 40 to 44 letters and
///   digits;
/// - Pulumi `pul-` + 40 hex digits;
/// - Sentry `sntryu_` + 64 hex digits, `sntrys_` + 60 or more of
///   `[A-Za-z0-9+/=_]`;
/// - Grafana `glsa_` + 32 letters and digits + `_` + 8 hex digits;
/// - Shopify `shpca_`, `shppa_` + 32 hex digits.
pub(crate) fn whole_token(buf: &mut [u8], on: WholeTokens, f: &Fmt) -> Option<WholeKind> {
    let n = buf.len();
    if n < WHOLE_MIN {
        return None;
    }
    let trim = |(mut s, mut e): (usize, usize)| {
        while s < e && space(buf[s]) {
            s += 1;
        }
        while e > s && space(buf[e - 1]) {
            e -= 1;
        }
        (s, e)
    };
    let (mut s, mut e) = trim((0, n));
    // (A JSON string scalar, as a `jsonb` value prints: quotes kept; or a
    // value in single quotes. Whitespace inside them too.)
    if e - s >= 2 && matches!(buf[s], b'"' | b'\'') && buf[e - 1] == buf[s] {
        (s, e) = trim((s + 1, e - 1));
    }
    let t = &buf[s..e];
    if !(WHOLE_MIN..=WHOLE_MAX).contains(&t.len()) {
        return None;
    }
    let (kind, body) = match t[0] {
        b'h' if on.vault && matches!(&t[..4], b"hvs." | b"hvb." | b"hvr.") => {
            // (A token of a namespace other than the root one ends in `.`
            // and the namespace's id, 5 letters and digits.)
            let id = match t.len().checked_sub(6) {
                Some(d) if t[d] == b'.' && all_of(&t[d + 1..], alnum) => d,
                _ => t.len(),
            };
            // (Random base64url: a digit and a capital, which names such as
            // `hvs.production_database_replica` lack.)
            let body = &t[4..id];
            let ok = id >= WHOLE_MIN
                && all_of(body, token_char)
                && body.iter().any(u8::is_ascii_digit)
                && body.iter().any(u8::is_ascii_uppercase);
            ok.then_some((WholeKind::Vault, 4))?
        }
        b'd' if on.databricks && t.starts_with(b"dapi") => {
            let rest = &t[4..];
            let ok = hex_of(&rest[..32.min(rest.len())], 32)
                && match &rest[32..] {
                    [] => true,
                    [b'-', d @ ..] => {
                        (1..=2).contains(&d.len()) && all_of(d, |b| b.is_ascii_digit())
                    }
                    _ => false,
                };
            ok.then_some((WholeKind::Databricks, 4))?
        }
        b'd' if on.doppler && t.starts_with(b"dp.") => {
            let kinds: [&[u8]; 6] = [b"pt.", b"st.", b"sa.", b"ct.", b"scim.", b"audit."];
            let k = kinds.iter().find(|k| t[3..].starts_with(k))?;
            let mut body = 3 + k.len();
            // (A service token names its config, kept: `dp.st.prd.`.)
            if *k == b"st." {
                let cfg = t[body..].iter().take_while(|&&b| b != b'.').count();
                if body + cfg < t.len()
                    && (1..=64).contains(&cfg)
                    && all_of(&t[body..body + cfg], token_char)
                {
                    body += cfg + 1;
                }
            }
            let tail = &t[body..];
            ((40..=44).contains(&tail.len()) && all_of(tail, alnum))
                .then_some((WholeKind::Doppler, body))?
        }
        b'k' if on.mailgun && t.starts_with(b"key-") && hex_of(&t[4..], 32) => {
            (WholeKind::Mailgun, 4)
        }
        b'0'..=b'9' if on.telegram => {
            let id = t.iter().take_while(|b| b.is_ascii_digit()).count();
            let ok = (8..=10).contains(&id)
                && t[id..].starts_with(b":AA")
                && t.len() == id + 1 + 35
                && all_of(&t[id + 3..], token_char);
            ok.then_some((WholeKind::Telegram, id + 1))?
        }
        b'l' if on.linear
            && t.starts_with(b"lin_api_")
            && t.len() == 48
            && all_of(&t[8..], alnum) =>
        {
            (WholeKind::Linear, 8)
        }
        b'l' if on.linear && t.starts_with(b"lin_oauth_") && hex_of(&t[10..], 64) => {
            (WholeKind::Linear, 10)
        }
        b'p' if on.pypi
            && t.starts_with(b"pypi-AgEIcHlwaS5vcmc")
            && t.len() >= 20 + 50
            && all_of(&t[20..], token_char) =>
        {
            (WholeKind::Pypi, 5)
        }
        b'p' if on.pulumi && t.starts_with(b"pul-") && hex_of(&t[4..], 40) => {
            (WholeKind::Pulumi, 4)
        }
        b's' if on.sentry && t.starts_with(b"sntryu_") && hex_of(&t[7..], 64) => {
            (WholeKind::Sentry, 7)
        }
        b's' if on.sentry
            && t.starts_with(b"sntrys_")
            && t.len() >= 7 + 60
            && all_of(&t[7..], |b| {
                alnum(b) || matches!(b, b'+' | b'/' | b'=' | b'_')
            }) =>
        {
            (WholeKind::Sentry, 7)
        }
        b's' if on.shopify
            && matches!(t.get(..6), Some(b"shpca_" | b"shppa_"))
            && hex_of(&t[6..], 32) =>
        {
            (WholeKind::Shopify, 6)
        }
        b'g' if on.grafana
            && t.starts_with(b"glsa_")
            && t.len() == 5 + 32 + 1 + 8
            && all_of(&t[5..37], alnum)
            && t[37] == b'_'
            && hex_of(&t[38..], 8) =>
        {
            (WholeKind::Grafana, 5)
        }
        _ => return None,
    };
    // (Already masked, its prefix kept, by an earlier pass over the same
    // text: a JSON member, the value test. A mask character that a token
    // may hold, `_` or `=`, would count it again.)
    if all_of(&t[body..], |b| b == f.ch) {
        return None;
    }
    mask_token(buf, s, s + body, e, f);
    Some(kind)
}

/// Bytes that end a word for [`words_tokens`]: ASCII whitespace and
/// `"'(),;[]{}<>$`, the backquote and the backslash (not `:` or `=`,
/// which Telegram and Sentry tokens hold).
static WORD_END: [bool; 256] = {
    let mut t = [false; 256];
    // (The backslash too: an array of `json` prints a string element's
    // quotes as `\"`.)
    let ends = b" \t\n\r\x0b\x0c\"'(),;[]{}<>$`\\";
    let mut i = 0;
    while i < ends.len() {
        t[ends[i] as usize] = true;
        i += 1;
    }
    t
};

/// [`whole_token`] for every word of a text (error and notice fields: `…
/// for type integer: "dapi…"`, `Key (v)=(hvs.…)`; string literals in the
/// SQL text of audit records), words as [`WORD_END`] ends them, less a
/// full stop, colon, `!` or `?` after them (`token hvs.… was refused.`).
/// `found` gets the kind of each token masked.
pub(crate) fn words_tokens(
    buf: &mut [u8],
    on: WholeTokens,
    f: &Fmt,
    mut found: impl FnMut(WholeKind),
) {
    let sep = |b: u8| WORD_END[b as usize];
    let n = buf.len();
    let mut i = 0;
    while i < n {
        while i < n && sep(buf[i]) {
            i += 1;
        }
        let s = i;
        while i < n && !sep(buf[i]) {
            i += 1;
        }
        let mut e = i;
        while e > s && matches!(buf[e - 1], b'.' | b':' | b'!' | b'?') {
            e -= 1;
        }
        // (A token the text's test as a value masked already is not
        // counted again: `whole_token` leaves one already masked.)
        if e - s >= WHOLE_MIN {
            if let Some(k) = whole_token(&mut buf[s..e], on, f) {
                found(k);
            }
        }
    }
}

/// Which vendor a token whose prefix ends in `-` or `_` belongs to (see
/// [`dash_token`] and [`underscore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vendor {
    GitHub,
    Stripe,
    OpenAi,
    Anthropic,
    GitLab,
    HuggingFace,
    Npm,
    Shopify,
    DigitalOcean,
    Grafana,
    Postman,
    NewRelic,
    Age,
}

/// The token detectors [`dash_token`] and [`underscore`] may report.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokenDetectors {
    pub github: bool,
    pub stripe: bool,
    pub openai: bool,
    pub anthropic: bool,
    pub gitlab: bool,
    pub huggingface: bool,
    pub npm: bool,
    pub shopify: bool,
    pub digitalocean: bool,
    pub grafana: bool,
    pub postman: bool,
    pub newrelic: bool,
    pub age: bool,
}

/// GitLab token prefixes, without their `-` (personal, deploy, pipeline
/// trigger, runner, CI build, feed, incoming mail, agent, service account
/// and OAuth application secrets).
const GITLAB_PREFIXES: [&[u8]; 10] = [
    b"glpat", b"gldt", b"glptt", b"glrt", b"glcbt", b"glft", b"glimt", b"glagent", b"glsoat",
    b"gloas",
];

/// Tokens whose prefix ends in `-`, with that `-` at `p`:
/// - OpenAI: `sk-proj-`, `sk-svcacct-`, `sk-admin-` or `sk-None-` and 40
///   or more of `[A-Za-z0-9_-]` holding a digit and a capital; `sk-` and
///   32 or more letters and digits holding a digit and a letter (the legacy
///   form, which several other AI APIs use too);
/// - Anthropic: `sk-ant-` (and its version, `api03-`, `admin01-`) and 32
///   or more of `[A-Za-z0-9_-]`;
/// - GitLab: [`GITLAB_PREFIXES`] and `-`, then 20 or more of
///   `[A-Za-z0-9_.-]` (the routable form has dots), not ending in a dot;
/// - Postman: `PMAK-` + 24 hex digits, `-` and 34 hex digits;
/// - New Relic user keys: `NRAK-` + 27 capitals and digits;
/// - age secret keys: `AGE-SECRET-KEY-1` + 58 characters of upper-case
///   bech32, with the `-` before the `1` at `p`.
///
/// Each at a word boundary. Returns the token's end and vendor.
pub(crate) fn dash_token(
    buf: &mut [u8],
    p: usize,
    on: TokenDetectors,
    f: &Fmt,
) -> Option<(usize, Vendor)> {
    if p >= 2 && &buf[p - 2..p] == b"sk" && boundary_before(buf, p - 2) {
        let s = p - 2;
        let after = &buf[p + 1..];
        if after.starts_with(b"ant-") {
            if !on.anthropic {
                return None;
            }
            // The version segment (`api03-`) is part of the kept prefix.
            let v = p + 5;
            let l = run(buf, v, 16, |b| b.is_ascii_lowercase() || b.is_ascii_digit());
            let body = if l > 0 && buf.get(v + l) == Some(&b'-') {
                v + l + 1
            } else {
                v
            };
            let n = run(buf, body, 1024, b64url);
            if n < 32 {
                return None;
            }
            mask_token(buf, s, body, body + n, f);
            return Some((body + n, Vendor::Anthropic));
        }
        if !on.openai {
            return None;
        }
        let named = [&b"proj-"[..], b"svcacct-", b"admin-", b"None-"]
            .into_iter()
            .find(|k| after.starts_with(k));
        if let Some(k) = named {
            let body = p + 1 + k.len();
            let n = run(buf, body, 1024, b64url);
            let t = &buf[body..body + n];
            if n < 40 || !t.iter().any(u8::is_ascii_digit) || !t.iter().any(u8::is_ascii_uppercase)
            {
                return None;
            }
            mask_token(buf, s, body, body + n, f);
            return Some((body + n, Vendor::OpenAi));
        }
        let body = p + 1;
        let n = run(buf, body, 256, alnum);
        let t = &buf[body..body + n];
        if n < 32
            || matches!(buf.get(body + n), Some(b'-' | b'_'))
            || !t.iter().any(u8::is_ascii_digit)
            || !t.iter().any(u8::is_ascii_alphabetic)
        {
            return None;
        }
        mask_token(buf, s, body, body + n, f);
        return Some((body + n, Vendor::OpenAi));
    }
    // (Every GitLab prefix ends in `t` or `s`: most `-` anchors skip the
    // search.)
    let gitlab = (on.gitlab && p >= 1 && matches!(buf[p - 1], b't' | b's'))
        .then(|| {
            GITLAB_PREFIXES
                .into_iter()
                .find(|k| p >= k.len() && &buf[p - k.len()..p] == *k)
        })
        .flatten();
    if let Some(k) = gitlab {
        let s = p - k.len();
        if !boundary_before(buf, s) {
            return None;
        }
        let body = p + 1;
        let mut n = run(buf, body, 512, |b| b64url(b) || b == b'.');
        while n > 0 && buf[body + n - 1] == b'.' {
            n -= 1;
        }
        if n < 20 {
            return None;
        }
        mask_token(buf, s, body, body + n, f);
        return Some((body + n, Vendor::GitLab));
    }
    if p < 4 {
        return None;
    }
    let (s, body) = (p - 4, p + 1);
    let (end, vendor) = match &buf[s..p] {
        b"PMAK" if on.postman => {
            let ok = hex_len(buf, body, 24)
                && buf.get(body + 24) == Some(&b'-')
                && hex_len(buf, body + 25, 34);
            (ok.then_some(body + 59)?, Vendor::Postman)
        }
        b"NRAK" if on.newrelic => {
            let n = run(buf, body, 28, |b| {
                b.is_ascii_uppercase() || b.is_ascii_digit()
            });
            (
                (n == 27 && boundary_after(buf, body + 27)).then_some(body + 27)?,
                Vendor::NewRelic,
            )
        }
        b"-KEY" if on.age && p >= 14 && &buf[p - 14..p] == b"AGE-SECRET-KEY" => {
            const BECH32: &[u8] = b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L";
            if buf.get(body) != Some(&b'1') || !boundary_before(buf, p - 14) {
                return None;
            }
            let n = run(buf, body + 1, 59, |b| BECH32.contains(&b));
            if n != 58 || !boundary_after(buf, body + 59) {
                return None;
            }
            mask_token(buf, p - 14, body + 1, body + 59, f);
            return Some((body + 59, Vendor::Age));
        }
        _ => return None,
    };
    if !boundary_before(buf, s) {
        return None;
    }
    mask_token(buf, s, body, end, f);
    Some((end, vendor))
}

/// SendGrid API key `SG.` + 22, `.` and 43 of `[A-Za-z0-9_-]`, with the `G`
/// at `p`.
pub(crate) fn sendgrid(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if p < 1 || buf[p - 1] != b'S' || buf.get(p + 1) != Some(&b'.') {
        return None;
    }
    let (s, body) = (p - 1, p + 2);
    let end = body + 66;
    if !boundary_before(buf, s)
        || run(buf, body, 23, b64url) != 22
        || buf.get(body + 22) != Some(&b'.')
        || run(buf, body + 23, 44, b64url) != 43
    {
        return None;
    }
    mask_token(buf, s, body, end, f);
    Some(end)
}

/// Slack `xox?-` / `xapp-` with the `x` at `p`.
pub(crate) fn slack(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    let pre = buf.get(p..p + 5)?;
    let ok =
        (&pre[..3] == b"xox" && b"baprse".contains(&pre[3]) && pre[4] == b'-') || pre == b"xapp-";
    if !ok || !boundary_before(buf, p) {
        return None;
    }
    let body = p + 5;
    let l = run(buf, body, 512, |b| alnum(b) || b == b'-');
    if l < 10 {
        return None;
    }
    mask_token(buf, p, body, body + l, f);
    Some(body + l)
}

/// Slack webhook URL `https://hooks.slack.com/services/T…/B…/<secret>`
/// (also `/workflows/` and `/triggers/`) with the `/` after the path's
/// first word at `p`: the path after it (segments of letters and digits
/// joined by `/`, the first starting with `T`, at least three, the last of
/// 16 or more) is masked, slashes included; the URL up to `p` is kept.
pub(crate) fn slack_webhook(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    let head = &buf[..p];
    let hooks = b"hooks.slack.com/";
    let kind = [&b"services"[..], b"workflows", b"triggers"]
        .into_iter()
        .find(|k| head.ends_with(k))?;
    if !head[..p - kind.len()].ends_with(hooks) || buf.get(p + 1) != Some(&b'T') {
        return None;
    }
    let body = p + 1;
    let (mut end, mut segs, mut last) = (body, 0, 0);
    loop {
        let l = run(buf, end, 256, alnum);
        if l == 0 {
            break;
        }
        segs += 1;
        last = l;
        end += l;
        if buf.get(end) != Some(&b'/') || !buf.get(end + 1).is_some_and(|&b| alnum(b)) {
            break;
        }
        end += 1;
    }
    if segs < 3 || last < 16 {
        return None;
    }
    mask_all(buf, body, end, f);
    Some(end)
}

/// PEM private key: `-----BEGIN … PRIVATE KEY-----` (or an OpenPGP
/// `-----BEGIN PGP PRIVATE KEY BLOCK-----`) with the `B` at `p`;
/// masks the base64 body up to `-----END` (or the end of the buffer).
pub(crate) fn pem(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if p < 5 || &buf[p - 5..p] != b"-----" || buf.get(p..p + 6) != Some(b"BEGIN ") {
        return None;
    }
    let label_start = p + 6;
    let window = &buf[label_start..buf.len().min(label_start + 64)];
    let close = memchr::memmem::find(window, b"-----")?;
    let label = &window[..close];
    if !label.ends_with(b"PRIVATE KEY") && label != b"PGP PRIVATE KEY BLOCK" {
        return None;
    }
    let body = label_start + close + 5;
    let end = memchr::memmem::find(&buf[body..], b"-----END")
        .map(|e| body + e)
        .unwrap_or(buf.len());
    let mut escaped = false;
    for b in &mut buf[body..end] {
        if escaped {
            escaped = false;
            continue;
        }
        if *b == b'\\' {
            escaped = true;
        } else if alnum(*b) || matches!(*b, b'+' | b'/' | b'=') {
            *b = f.ch;
        }
    }
    Some(end)
}

/// `Bearer <credential>` (any case) with the `B`/`b` at `p`.
pub(crate) fn bearer(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if !buf.get(p..p + 7)?.eq_ignore_ascii_case(b"bearer ") || !boundary_before(buf, p) {
        return None;
    }
    let body = p + 7 + run(buf, p + 7, 8, |b| b == b' ');
    let tok = |b: u8| alnum(b) || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
    let mut l = run(buf, body, 1 << 16, tok);
    if l < 16 {
        return None;
    }
    l += run(buf, body + l, 3, |b| b == b'=');
    mask_all(buf, body, body + l, f);
    Some(body + l)
}

/// `Basic <credential>` (any case) with the `B`/`b` at `p`: masks the
/// base64 credential (padded to a multiple of 4, up to 512 characters) only
/// when it decodes to `user:password`: valid UTF-8 without control
/// characters, whose first `:` is not its first character (an empty password
/// counts, as API keys sent as the user have). An ordinary word after
/// `basic` decodes to bytes that are not (`Only` decodes to `:)r`).
pub(crate) fn basic(buf: &mut [u8], p: usize, f: &Fmt) -> Option<usize> {
    if !buf.get(p..p + 6)?.eq_ignore_ascii_case(b"basic ") || !boundary_before(buf, p) {
        return None;
    }
    let body = p + 6 + run(buf, p + 6, 8, |b| b == b' ');
    let l = run(buf, body, 513, |b| alnum(b) || b == b'+' || b == b'/');
    let pad = run(buf, body + l, 3, |b| b == b'=');
    let end = body + l + pad;
    if !(4..=512).contains(&l) || pad > 2 || (l + pad) % 4 != 0 || !boundary_after(buf, end) {
        return None;
    }
    // (Canonical padding and zero trailing bits, as any encoder writes.)
    use base64::Engine as _;
    let mut out = [0u8; 384];
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(&buf[body..end], &mut out)
        .ok()?;
    let text = std::str::from_utf8(&out[..n]).ok()?;
    if text.find(':').is_none_or(|i| i == 0) || text.chars().any(char::is_control) {
        return None;
    }
    mask_all(buf, body, end, f);
    Some(end)
}

/// IPv6 address around the `:` at `p`. Returns `(end, masked)`: the end of
/// the hex/colon run examined, so the caller skips its other colons.
pub(crate) fn ipv6(buf: &mut [u8], p: usize, f: &Fmt) -> (usize, bool) {
    let chr = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut s = p;
    while s > 0 && p - s < 45 && chr(buf[s - 1]) {
        s -= 1;
    }
    let mut e = p + run(buf, p, 46, chr);
    let run_end = e;
    // A trailing `.` or single `:` is punctuation, not part of the address.
    while e > s
        && (buf[e - 1] == b'.' || (buf[e - 1] == b':' && !(e >= s + 2 && buf[e - 2] == b':')))
    {
        e -= 1;
    }
    while s < e && (buf[s] == b'.' || (buf[s] == b':' && buf.get(s + 1) != Some(&b':'))) {
        s += 1;
    }
    let text = &buf[s..e];
    let colons = text.iter().filter(|&&b| b == b':').count();
    let ok = e - s <= 45
        && colons >= 2
        && text.iter().any(u8::is_ascii_hexdigit)
        && boundary_before(buf, s)
        && boundary_after(buf, e)
        && std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
    if ok {
        mask_range(buf, s, e, 0, f);
    }
    (run_end, ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::corpus::Rng;

    fn fmts() -> [Fmt; 3] {
        let f = Fmt {
            ch: b'*',
            keep_punct: true,
            card_keep: 4,
            ssn_keep: 4,
            iban_keep: 4,
            phone_keep: 2,
            email_keep_tld: true,
            keep_prefix: true,
        };
        [
            f,
            Fmt {
                email_keep_tld: false,
                ..f
            },
            Fmt {
                keep_punct: false,
                ch: b'#',
                ..f
            },
        ]
    }

    /// `mask_range` by vectors masks exactly what the tables do, for any
    /// bytes, range, buffer length and kept suffix.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn mask_range_short_matches_tables() {
        let mut r = Rng::new(12);
        for _ in 0..200_000 {
            let n = r.range(1, 130);
            let buf: Vec<u8> = (0..n)
                .map(|_| match r.below(4) {
                    0 => r.below(256) as u8,
                    1 => b"09azAZ@[`{/:"[r.below(12)],
                    2 => b"\"'\\\t\n\r,|\0 -.()+*"[r.below(16)],
                    _ => b'0' + r.below(10) as u8,
                })
                .collect();
            let start = r.below(n);
            let end = r.range(start + 1, n.min(start + 96));
            let keep = r.below(8);
            for f in &fmts() {
                let (mut a, mut b) = (buf.clone(), buf.clone());
                mask_range(&mut a, start, end, keep, f);
                let cut = kept_from(&b[start..end], keep);
                mask_tables(&mut b[start..end], cut, f);
                assert_eq!(a, b, "{buf:?} {start}..{end} keep {keep}");
            }
        }
    }

    /// Values of 1..`longest` bytes made of `pieces` (cut to 64 bytes, or
    /// at random below `longest`): `validate` finds and masks exactly what
    /// the byte walk does, for every `@` and every format.
    #[cfg(target_arch = "x86_64")]
    fn short_emails_match_byte_walk(
        seed: u64,
        pieces: &[&str],
        longest: usize,
        cut_at_random: bool,
        validate: impl Fn(&mut [u8], usize, &Fmt) -> Option<usize>,
    ) {
        let mut r = Rng::new(seed);
        for _ in 0..200_000 {
            let mut s = Vec::new();
            let target = r.range(1, longest);
            while s.len() < target {
                s.extend_from_slice(r.pick(pieces).as_bytes());
            }
            s.truncate(if cut_at_random {
                r.range(1, longest)
            } else {
                64
            });
            let ats: Vec<usize> = (0..s.len()).filter(|&i| s[i] == b'@').collect();
            for &at in &ats {
                for f in &fmts() {
                    let (mut a, mut b) = (s.clone(), s.clone());
                    assert_eq!(
                        validate(&mut a, at, f),
                        email_bytes(&mut b, at, f),
                        "{:?} at {at}",
                        String::from_utf8_lossy(&s)
                    );
                    assert_eq!(a, b, "{:?} at {at}", String::from_utf8_lossy(&s));
                }
            }
        }
    }

    /// The mask-driven e-mail validator of short values (through `email`)
    /// finds and masks exactly what the byte walk does.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn email_short_matches_byte_walk() {
        const PIECES: &[&str] = &[
            "a", "Z", "7", "ab", "x9", ".", "..", "-", "_", "%", "+", "*", "@", " ", ",", "com",
            "co", "uk", "q1", "é", "\\", "\"", "example", "mail-x",
        ];
        short_emails_match_byte_walk(11, PIECES, 64, false, email);
    }

    /// The AVX-512 e-mail validator finds and masks exactly what the byte
    /// walk does (on a CPU that has it).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn email_avx512_matches_byte_walk() {
        if !crate::mask::Kernel::Avx512.available()
            || !std::arch::is_x86_feature_detected!("bmi1")
            || !std::arch::is_x86_feature_detected!("bmi2")
            || !std::arch::is_x86_feature_detected!("popcnt")
        {
            return;
        }
        const PIECES: &[&str] = &[
            "a", "Z", "7", "ab", "x9", ".", "..", "-", "_", "%", "+", "*", "@", " ", ",", "com",
            "co", "uk", "q1", "é", "\\", "\"", "example", "mail-x", "\0", "`", "{", "/",
        ];
        // SAFETY: the CPU has the features (checked above).
        short_emails_match_byte_walk(12, PIECES, 70, true, |v, at, f| unsafe {
            email_avx512(v, at, f)
        });
    }
}
