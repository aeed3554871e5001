//! Byte classification: the SIMD part of the masking scan.
//!
//! A cell is cut into 64-byte blocks and every block becomes three bitmasks
//! (bit `i` = byte `i` of the block):
//!
//! - `digit`: `0`–`9`;
//! - `glue`: the characters that join the digit groups of a card, SSN or
//!   phone number (`space - . ( ) +`);
//! - `anchor`: the bytes that start (or sit inside) the literal prefixes of
//!   the anchored detectors (`@` for e-mail, `J` of `eyJ`, `z` of `AIza`,
//!   `_` of `ghp_` and `sk_live_`, …); the set is chosen at
//!   compile time from the enabled detectors.
//!
//! `digit` and `glue` are "rectangles" in nibble space (one high nibble, a
//! set of low nibbles), so one pair of `pshufb` table lookups gives both. The
//! anchor set is arbitrary ASCII, so it uses the exact membership test:
//! `lo_table[b & 15]` holds a bit per high nibble 0–7 whose byte is in the
//! set, and `1 << (b >> 4)` (zero for bytes ≥ 0x80) picks the bit.
//!
//! Four kernels compute the same masks: AVX-512 (one 64-byte vector, one
//! mask register per class; short cells by a masked load), AVX2
//! (2 × 32 bytes; short cells built in registers from overlapping loads of
//! their own bytes, `block_avx2_part`), SSSE3 (4 × 16 bytes) and a scalar table walk. [`Kernel::best`] picks one with
//! runtime feature detection (or the one `SLUICE_MASK_KERNEL` names); the tests check that all available kernels
//! agree on random input. The masks are only hints for where to look: every
//! validator re-reads the bytes.

/// Bytes per block (one bit per byte in a `u64`).
pub(crate) const BLOCK: usize = 64;
/// Blocks classified per call (1 KiB), so tables stay in registers.
pub(crate) const CHUNK_BLOCKS: usize = 16;

const CLASS_DIGIT: u8 = 1;
const CLASS_GLUE: u8 = 2;
const CLASS_SPACE: u8 = 4;
const CLASS_DASH: u8 = 8;
const CLASS_DOT: u8 = 16;
/// `A`–`O` (0x41–0x4f) and `P`–`Z` (0x50–0x5a): two rectangles.
const CLASS_UPPER_4: u8 = 32;
const CLASS_UPPER_5: u8 = 64;
/// The `kv` anchors of a classifier (see [`Tables::cls_lo`]): bytes of row 3
/// of the ASCII table (`:` and `=`), marked per classifier in its copy of
/// [`CLS_LO`] (the scalar table and the SSSE3 kernel leave it out).
const CLASS_KV: u8 = 128;

/// Per low nibble: which classes a byte with this low nibble may be in.
const CLS_LO: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 10 {
        t[i] |= CLASS_DIGIT;
        i += 1;
    }
    // ' ' 0x20, '(' 0x28, ')' 0x29, '+' 0x2b, '-' 0x2d, '.' 0x2e
    t[0x0] |= CLASS_GLUE | CLASS_SPACE;
    t[0x8] |= CLASS_GLUE;
    t[0x9] |= CLASS_GLUE;
    t[0xb] |= CLASS_GLUE;
    t[0xd] |= CLASS_GLUE | CLASS_DASH;
    t[0xe] |= CLASS_GLUE | CLASS_DOT;
    let mut i = 0;
    while i < 16 {
        if i >= 1 {
            t[i] |= CLASS_UPPER_4;
        }
        if i <= 10 {
            t[i] |= CLASS_UPPER_5;
        }
        i += 1;
    }
    t
};

/// Per high nibble: which classes live in that row of the ASCII table.
const CLS_HI: [u8; 16] = {
    let mut t = [0u8; 16];
    t[0x2] = CLASS_GLUE | CLASS_SPACE | CLASS_DASH | CLASS_DOT;
    t[0x3] = CLASS_DIGIT;
    t[0x4] = CLASS_UPPER_4;
    t[0x5] = CLASS_UPPER_5;
    t[0x3] |= CLASS_KV;
    t
};

/// `1 << hi` for ASCII high nibbles, 0 for bytes ≥ 0x80.
const HI_BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 0, 0, 0, 0, 0, 0, 0, 0];

/// True for the glue characters (kept in one place for the scalar code).
#[inline]
pub(crate) fn is_glue(b: u8) -> bool {
    matches!(b, b' ' | b'(' | b')' | b'+' | b'-' | b'.')
}

/// `data` (at most `BLOCK` bytes) followed by zero bytes, copied with a few
/// fixed-size moves instead of a call to `memcpy` (most cells are short).
#[inline(always)]
fn padded(data: &[u8]) -> [u8; BLOCK] {
    let mut pad = [0u8; BLOCK];
    let n = data.len();
    assert!(n <= BLOCK);
    // Two overlapping copies of the largest power of two not above `n`.
    macro_rules! two {
        ($k:expr) => {{
            pad[..$k].copy_from_slice(&data[..$k]);
            pad[n - $k..n].copy_from_slice(&data[n - $k..]);
        }};
    }
    if n >= 32 {
        two!(32)
    } else if n >= 16 {
        two!(16)
    } else if n >= 8 {
        two!(8)
    } else if n >= 4 {
        two!(4)
    } else if n >= 2 {
        two!(2)
    } else if n == 1 {
        pad[0] = data[0];
    }
    pad
}

/// The masks of one block.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct BlockMasks {
    pub digit: u64,
    pub glue: u64,
    pub space: u64,
    pub dash: u64,
    pub dot: u64,
    pub upper: u64,
    pub anchor: u64,
    /// Letter anchors the byte next to them rules out, and the `kv`
    /// anchors (see [`Tables::cls_lo`]) after a digit or a glue byte but a
    /// space (a subset of [`letter_reject_scalar`]'s bits; the AVX-512 and
    /// AVX2 kernels fill it, the others leave it 0, which rules out
    /// nothing). The engine skips them: `may_anchor` (and, for `kv`, the
    /// validator) would reject them from the same bytes.
    pub reject: u64,
}

impl BlockMasks {
    /// Shift every mask down by `k` bits (`k < 64`).
    #[inline]
    pub(crate) fn shr(&mut self, k: u32) {
        self.digit >>= k;
        self.glue >>= k;
        self.space >>= k;
        self.dash >>= k;
        self.dot >>= k;
        self.upper >>= k;
        self.anchor >>= k;
        self.reject >>= k;
    }

    /// Keep only the bits in `keep`.
    #[inline]
    pub(crate) fn and(&mut self, keep: u64) {
        self.digit &= keep;
        self.glue &= keep;
        self.space &= keep;
        self.dash &= keep;
        self.dot &= keep;
        self.upper &= keep;
        self.anchor &= keep;
        self.reject &= keep;
    }
}

/// Where `Classifier::classify_chunk` puts the masks of block `k` of a
/// chunk: an array of [`BlockMasks`], or one array per mask (the scan's
/// layout, so that it can compute over several blocks at once).
pub(crate) trait MaskStore {
    fn set(&mut self, k: usize, m: BlockMasks);
    fn get(&self, k: usize) -> BlockMasks;
}

impl<const N: usize> MaskStore for [BlockMasks; N] {
    #[inline(always)]
    fn set(&mut self, k: usize, m: BlockMasks) {
        self[k] = m;
    }
    #[inline(always)]
    fn get(&self, k: usize) -> BlockMasks {
        self[k]
    }
}

/// Which implementation classifies the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Ssse3,
    Avx2,
    /// AVX-512F and AVX-512BW (and AVX2, which the scan around it uses).
    Avx512,
}

/// The environment variable that picks the kernel [`Kernel::best`] returns
/// (`auto`, `avx512`, `avx2`, `ssse3` or `scalar`), for an operator who
/// measures that another kernel serves a CPU better (see
/// `bench/RESULTS.md`). `sluice-dp` checks it at start
/// ([`Kernel::from_env`]).
pub const KERNEL_ENV: &str = "SLUICE_MASK_KERNEL";

impl Kernel {
    /// Every kernel, best first.
    pub const ALL: [Kernel; 4] = [Kernel::Avx512, Kernel::Avx2, Kernel::Ssse3, Kernel::Scalar];

    /// Its name (as [`KERNEL_ENV`] and the metrics spell it).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Ssse3 => "ssse3",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// The kernel [`KERNEL_ENV`] names: `Ok(None)` when it is unset, empty
    /// or `auto`; an error naming the variable when the value is unknown or
    /// this CPU cannot run that kernel.
    pub fn from_env() -> Result<Option<Kernel>, String> {
        match std::env::var(KERNEL_ENV) {
            Ok(v) => Kernel::choose(&v),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{KERNEL_ENV}: not valid UTF-8")),
        }
    }

    /// [`Kernel::from_env`] for the value `v`.
    pub fn choose(v: &str) -> Result<Option<Kernel>, String> {
        let v = v.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        let Some(k) = Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(v))
        else {
            return Err(format!(
                "{KERNEL_ENV}={v:?}: unknown masking kernel (known: auto, avx512, avx2, ssse3, scalar)"
            ));
        };
        if !k.available() {
            return Err(format!(
                "{KERNEL_ENV}={v}: this CPU cannot run the {} masking kernel (it can: {})",
                k.name(),
                Kernel::ALL
                    .into_iter()
                    .filter(|k| k.available())
                    .map(Kernel::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Some(k))
    }

    /// The kernel engines use: the one [`KERNEL_ENV`] names, if it names
    /// one this CPU runs, else the fastest this CPU supports. Read once.
    pub fn best() -> Kernel {
        static PICKED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *PICKED.get_or_init(|| {
            Kernel::from_env()
                .ok()
                .flatten()
                .unwrap_or_else(Kernel::fastest)
        })
    }

    /// The fastest kernel this CPU supports.
    pub fn fastest() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if Kernel::Avx512.available() {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
            if std::arch::is_x86_feature_detected!("ssse3") {
                return Kernel::Ssse3;
            }
        }
        Kernel::Scalar
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Ssse3 => std::arch::is_x86_feature_detected!("ssse3"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The nibble tables of an anchor set (see [`Classifier`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tables {
    /// Per low nibble, a bit per high nibble (0–7) whose byte is an anchor.
    pub anchor: [u8; 16],
    /// [`CLS_LO`] with [`CLASS_KV`] at the low nibbles of the `kv`
    /// anchors: those a digit or a glue byte other than a space right
    /// before rules out (the `=` and `:` of `key=value`, see
    /// [`BlockMasks::reject`]).
    pub cls_lo: [u8; 16],
}

/// Classification tables for one anchor set, plus the kernel to use.
#[derive(Clone, Debug)]
pub(crate) struct Classifier {
    kernel: Kernel,
    tables: Tables,
    /// Scalar: the class bits, and bit 7 for anchors.
    table: [u8; 256],
}

impl Classifier {
    /// `anchors` must be ASCII. `kernel` must be available on this CPU.
    #[cfg(test)]
    pub(crate) fn new(anchors: &[u8], kernel: Kernel) -> Classifier {
        Classifier::with_kv(anchors, b"", kernel)
    }

    /// As [`Classifier::new`], with `kv` (a subset of `anchors`) the
    /// anchors a digit or a glue byte other than a space right before
    /// rules out (the kernels that fill `reject` leave them out).
    pub(crate) fn with_kv(anchors: &[u8], kv: &[u8], kernel: Kernel) -> Classifier {
        assert!(kernel.available(), "kernel {kernel:?} not supported here");
        let mut anchor_lo = [0u8; 16];
        let mut table = [0u8; 256];
        for &a in anchors {
            assert!(a < 0x80, "anchor bytes must be ASCII");
            anchor_lo[(a & 15) as usize] |= 1 << (a >> 4);
            table[a as usize] |= 128;
        }
        let mut cls_lo = CLS_LO;
        for &a in kv {
            assert!(anchors.contains(&a), "kv bytes must be anchors");
            assert!(a >> 4 == 3, "kv bytes must be in row 3 (CLASS_KV)");
            cls_lo[(a & 15) as usize] |= CLASS_KV;
        }
        for b in 0..=255u8 {
            let cls = CLS_LO[(b & 15) as usize] & CLS_HI[(b >> 4) as usize];
            table[b as usize] |= cls;
        }
        Classifier {
            kernel,
            tables: Tables {
                anchor: anchor_lo,
                cls_lo,
            },
            table,
        }
    }

    pub(crate) fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Classify up to `N` blocks from the front of `data` into
    /// `out`; returns how many blocks were filled. A final partial block is
    /// classified as if padded with zero bytes (which are in no class).
    ///
    /// `F` (fast): the caller is compiled with AVX2 enabled (`F >= 1`) or
    /// with AVX2 and AVX-512BW (`F >= 2`; `F == 3`: also VBMI and GFNI, for
    /// [`Classifier::classify_planes`]), so the AVX2 kernel (`F >= 1`) or
    /// the AVX-512 kernel (`F >= 2`) is inlined into it rather than
    /// called.
    #[inline(always)]
    pub(crate) fn classify_chunk<const N: usize, const F: u8>(
        &self,
        data: &[u8],
        out: &mut impl MaskStore,
    ) -> usize {
        let whole = (data.len() / BLOCK).min(N);
        let (blocks, _) = data[..whole * BLOCK].as_chunks::<BLOCK>();
        self.blocks::<F>(blocks, out, 0);
        if whole == N || whole * BLOCK == data.len() {
            return whole;
        }
        let rest = data.len() - whole * BLOCK;
        if whole == 0 {
            out.set(0, self.classify_one::<F>(data));
            return 1;
        }
        #[cfg(target_arch = "x86_64")]
        if F >= 2 && self.kernel == Kernel::Avx512 {
            // SAFETY: `Classifier::new` asserted the CPU supports the
            // kernel; with `F >= 2` the caller is compiled for it.
            // `rest < BLOCK` bytes from `whole * BLOCK` are in `data`.
            let mut m = unsafe {
                x86::block_avx512_part(data[whole * BLOCK..].as_ptr(), rest, &self.tables)
            };
            // (Zero bytes are in no class; only an anchor set holding the
            // zero byte would mark the padding, which the shifted masks of
            // the other kernels do not.)
            m.anchor &= (1u64 << rest) - 1;
            out.set(whole, m);
            return whole + 1;
        }
        // Classify the last 64 bytes (overlapping the previous block) and
        // shift the masks down: the same bits as the block padded with
        // zero bytes, without copying.
        let tail: &[u8; BLOCK] = data[data.len() - BLOCK..].try_into().expect("64 bytes");
        let mut m = [BlockMasks::default()];
        self.blocks::<F>(std::slice::from_ref(tail), &mut m, 0);
        m[0].shr((BLOCK - rest) as u32);
        out.set(whole, m[0]);
        whole + 1
    }

    /// The masks of the first 8 blocks of `data` as one vector per class
    /// (see [`x86::planes_avx512`]), and how many blocks they hold; `None`
    /// unless the caller is compiled for the AVX-512 kernel with VBMI and
    /// GFNI (`F == 3`) and uses it.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn classify_planes<const F: u8>(&self, data: &[u8]) -> Option<(usize, Planes)> {
        if F != 3 || self.kernel != Kernel::Avx512 {
            return None;
        }
        let data = &data[..data.len().min(8 * BLOCK)];
        // SAFETY: `Classifier::new` asserted the CPU supports the kernel;
        // with `F == 3` the caller is compiled for it with VBMI and GFNI,
        // which `fast_scan` in the engine checked.
        let p = unsafe { x86::planes_avx512(data, &self.tables) };
        Some((data.len().div_ceil(BLOCK), p))
    }

    /// Classify at most one block (`data.len() <= BLOCK`), zero-padded.
    #[inline(always)]
    pub(crate) fn classify_one<const F: u8>(&self, data: &[u8]) -> BlockMasks {
        #[cfg(target_arch = "x86_64")]
        if F >= 2 && self.kernel == Kernel::Avx512 {
            assert!(data.len() <= BLOCK);
            // SAFETY: `Classifier::new` asserted the CPU supports the
            // kernel; with `F >= 2` the caller is compiled for it. The
            // masked load reads `data.len()` bytes of `data` only.
            return unsafe { x86::block_avx512_part(data.as_ptr(), data.len(), &self.tables) };
        }
        #[cfg(target_arch = "x86_64")]
        if F >= 1 && self.kernel == Kernel::Avx2 {
            assert!(data.len() <= BLOCK);
            // SAFETY: `Classifier::new` asserted the CPU supports the
            // kernel; with `F >= 1` the caller is compiled for it. The
            // loads read `data.len()` bytes of `data` only.
            return unsafe { x86::block_avx2_part(data.as_ptr(), data.len(), &self.tables) };
        }
        let pad = [padded(data)];
        let mut out = [BlockMasks::default()];
        self.blocks::<F>(&pad, &mut out, 0);
        out[0]
    }

    /// Classify `blocks` into `out` from block `at` on.
    #[inline(always)]
    fn blocks<const F: u8>(&self, blocks: &[[u8; BLOCK]], out: &mut impl MaskStore, at: usize) {
        // The kernels that are not inlined fill a slice (one call a block).
        let mut one = [BlockMasks::default()];
        for (i, b) in blocks.iter().enumerate() {
            let m = match self.kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Classifier::new` asserted the CPU supports the
                // kernel; with `F >= 2` the caller is compiled for it.
                Kernel::Avx512 if F >= 2 => unsafe { x86::block_avx512(b, &self.tables) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => {
                    // SAFETY: `Classifier::new` asserted the CPU supports
                    // the kernel.
                    unsafe { x86::blocks_avx512(std::slice::from_ref(b), &self.tables, &mut one) };
                    one[0]
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Classifier::new` asserted the CPU supports AVX2;
                // with `F` the caller is compiled for it.
                Kernel::Avx2 if F >= 1 => unsafe { x86::block_avx2(b, &self.tables) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => {
                    // SAFETY: `Classifier::new` asserted the CPU supports AVX2.
                    unsafe { x86::blocks_avx2(std::slice::from_ref(b), &self.tables, &mut one) };
                    one[0]
                }
                #[cfg(target_arch = "x86_64")]
                Kernel::Ssse3 => {
                    // SAFETY: `Classifier::new` asserted the CPU supports SSSE3.
                    unsafe { x86::blocks_ssse3(std::slice::from_ref(b), &self.tables, &mut one) };
                    one[0]
                }
                _ => self.block_scalar(b),
            };
            out.set(at + i, m);
        }
    }

    pub(crate) fn block_scalar(&self, block: &[u8; BLOCK]) -> BlockMasks {
        let mut m = BlockMasks::default();
        for (i, &b) in block.iter().enumerate() {
            let c = self.table[b as usize] as u64;
            m.digit |= (c & 1) << i;
            m.glue |= ((c >> 1) & 1) << i;
            m.space |= ((c >> 2) & 1) << i;
            m.dash |= ((c >> 3) & 1) << i;
            m.dot |= ((c >> 4) & 1) << i;
            m.upper |= (((c >> 5) | (c >> 6)) & 1) << i;
            m.anchor |= ((c >> 7) & 1) << i;
        }
        m
    }
}

/// Per low nibble, a bit per high nibble (0–7) whose byte is in `set`.
const fn nibble_set(set: &[u8]) -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < set.len() {
        t[(set[i] & 15) as usize] |= 1 << (set[i] >> 4);
        i += 1;
    }
    t
}

/// Anchors checked against the byte after them (`x` of `xox`/`xapp`,
/// `B`/`b` of `Bearer`/`BEGIN`/`Basic`, `%` of an encoded `@`, `%40`), and
/// the bytes that may follow them.
const AFTER_LETTERS: [u8; 16] = nibble_set(b"xBb%");
const AFTER_OK: [u8; 16] = nibble_set(b"oaeE4");
/// The bytes that may come two after those: `xo[x]`, `xa[p]p`, `be[a]rer`
/// in any case, `BE[G]IN`, `ba[s]ic`, `%4[0]` (the hex digests of free text
/// have many a `be` and few a `bea`, and no `s`; the percentages of prose,
/// `15% off`, are followed by no `4`).
const AFTER2_OK: [u8; 16] = nibble_set(b"xpaAGs0");
/// Anchors checked against the byte before them (`J` of `eyJ`, `z` of
/// `AIza`, `_` of the GitHub, Stripe (`whsec_` among them), Hugging Face,
/// npm, Shopify, DigitalOcean and Grafana prefixes, `-` of `sk-`, the
/// GitLab prefixes, `PMAK-`, `NRAK-` and `…-KEY-1`, `G` of `SG.`, `/` of a
/// Slack webhook's `…/services/`), and the bytes that may precede them.
/// (Only capitals added for those after GitLab's: a lower-case letter
/// before `-`, `_`, `J`, `z` or `/` is common in prose and identifiers
/// (`data-driven`, `media_id`, `plaza`), and every one lets its block
/// through to the validators.)
const BEFORE_LETTERS: [u8; 16] = nibble_set(b"Jz_/-G");
const BEFORE_OK: [u8; 16] = nibble_set(b"yIpousrbkcfmtKYS");

/// Letter anchors in `block` that the bytes next to them rule out (see
/// `may_anchor` in the engine, which checks the same neighbours exactly,
/// and more; the validators check the byte after those too): an `x`, `B`,
/// `b` or `%` not followed by one of `o a e E 4`, or whose byte after next
/// is none of `x p a A G s 0`, a `J`, `z`, `_`, `/`, `-` or `G` not
/// preceded by one of `y I p o u s r b k c f m t K Y S`, and a `kv` byte
/// after a digit or one of `( ) + - .`. Bytes whose neighbour is in another
/// block are never ruled out by it.
#[cfg(test)]
fn letter_reject_scalar(block: &[u8; BLOCK], cls_lo: &[u8; 16]) -> u64 {
    let has = |t: &[u8; 16], b: u8| b < 0x80 && t[(b & 15) as usize] >> (b >> 4) & 1 == 1;
    let mut r = 0u64;
    for i in 0..BLOCK {
        let b = block[i];
        let after = i + 1 < BLOCK && has(&AFTER_LETTERS, b) && !has(&AFTER_OK, block[i + 1]);
        let after2 = i + 2 < BLOCK && has(&AFTER_LETTERS, b) && !has(&AFTER2_OK, block[i + 2]);
        let before = i > 0 && has(&BEFORE_LETTERS, b) && !has(&BEFORE_OK, block[i - 1]);
        let kv_after = i > 0
            && b >> 4 == 3
            && cls_lo[(b & 15) as usize] & CLASS_KV != 0
            && (block[i - 1].is_ascii_digit() || is_glue(block[i - 1]) && block[i - 1] != b' ');
        r |= ((after || after2 || before || kv_after) as u64) << i;
    }
    r
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{store_lanes, Planes};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{
        BlockMasks, Tables, AFTER2_OK, AFTER_LETTERS, AFTER_OK, BEFORE_LETTERS, BEFORE_OK, BLOCK,
        CLASS_DASH, CLASS_DIGIT, CLASS_DOT, CLASS_GLUE, CLASS_KV, CLASS_SPACE, CLASS_UPPER_4,
        CLASS_UPPER_5, CLS_HI, CLS_LO, HI_BIT,
    };
    use std::arch::x86_64::*;

    /// AVX-512 classification of whole blocks.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn blocks_avx512(blocks: &[[u8; BLOCK]], t: &Tables, out: &mut [BlockMasks]) {
        for (block, o) in blocks.iter().zip(out) {
            // SAFETY: this function is compiled with AVX-512F/BW and only
            // called when the CPU has them.
            *o = unsafe { block_avx512(block, t) };
        }
    }

    /// AVX-512 classification of one block, inlined into its caller.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW; the caller should be
    /// compiled with them (else every intrinsic is a call).
    #[inline(always)]
    pub(super) unsafe fn block_avx512(block: &[u8; BLOCK], t: &Tables) -> BlockMasks {
        // SAFETY: the CPU supports AVX-512F (this function's contract);
        // `block` has 64 bytes and `loadu` has no alignment requirement.
        unsafe {
            let v = _mm512_loadu_si512(block.as_ptr() as *const __m512i);
            masks_avx512(v, t)
        }
    }

    /// The first `n` bytes (`n <= 64`) at `p` as a block padded with zero
    /// bytes, by a masked load (which reads nothing past `p + n`).
    ///
    /// # Safety
    /// As [`block_avx512`]; `p..p + n` must be readable.
    #[inline(always)]
    pub(super) unsafe fn block_avx512_part(p: *const u8, n: usize, t: &Tables) -> BlockMasks {
        // SAFETY: the CPU supports AVX-512BW (this function's contract); the
        // load mask covers the `n` readable bytes only, and masked-out
        // bytes are neither read nor fault.
        unsafe {
            let k: __mmask64 = if n >= BLOCK {
                u64::MAX
            } else {
                (1u64 << n) - 1
            };
            let v = _mm512_maskz_loadu_epi8(k, p as *const i8);
            masks_avx512(v, t)
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW.
    #[inline(always)]
    unsafe fn masks_avx512(v: __m512i, t: &Tables) -> BlockMasks {
        // SAFETY: as this function's.
        let (cls, anchor, reject) = unsafe { classes_avx512(v, t) };
        // SAFETY: the CPU supports AVX-512BW (this function's contract).
        let test = |bits: u8| unsafe { _mm512_test_epi8_mask(cls, _mm512_set1_epi8(bits as i8)) };
        BlockMasks {
            reject,
            digit: test(CLASS_DIGIT),
            glue: test(CLASS_GLUE),
            space: test(CLASS_SPACE),
            dash: test(CLASS_DASH),
            dot: test(CLASS_DOT),
            upper: test(CLASS_UPPER_4 | CLASS_UPPER_5),
            anchor,
        }
    }

    /// The `CLASS_*` bits of every byte of `v`, its anchor mask and its
    /// `reject` mask (see [`BlockMasks::reject`]).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW.
    #[inline(always)]
    unsafe fn classes_avx512(v: __m512i, t: &Tables) -> (__m512i, u64, u64) {
        // SAFETY (every intrinsic below): the CPU supports AVX-512F/BW (this
        // function's contract); the table loads read 16-byte arrays.
        unsafe {
            let ld16 = |p: &[u8; 16]| _mm_loadu_si128(p.as_ptr() as *const __m128i);
            let cls_lo = _mm512_broadcast_i32x4(ld16(&t.cls_lo));
            let cls_hi = _mm512_broadcast_i32x4(ld16(&CLS_HI));
            let hi_bit = _mm512_broadcast_i32x4(ld16(&HI_BIT));
            let anc_lo = _mm512_broadcast_i32x4(ld16(&t.anchor));
            let ld = |t: &[u8; 16]| _mm512_broadcast_i32x4(ld16(t));
            let nib = _mm512_set1_epi8(0x0f);
            let lo = _mm512_and_si512(v, nib);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
            let cls = _mm512_and_si512(
                _mm512_shuffle_epi8(cls_lo, lo),
                _mm512_shuffle_epi8(cls_hi, hi),
            );
            let hib = _mm512_shuffle_epi8(hi_bit, hi);
            let a = _mm512_and_si512(_mm512_shuffle_epi8(anc_lo, lo), hib);
            let set = |t: &[u8; 16]| _mm512_test_epi8_mask(_mm512_shuffle_epi8(ld(t), lo), hib);
            let (la, na) = (set(&AFTER_LETTERS), set(&AFTER_OK));
            let (lb, nb) = (set(&BEFORE_LETTERS), set(&BEFORE_OK));
            let na2 = set(&AFTER2_OK);
            // `=` and `:` after a digit or a glue byte but a space.
            let test = |bits: u8| _mm512_test_epi8_mask(cls, _mm512_set1_epi8(bits as i8));
            let kv = test(CLASS_KV);
            let bad = test(CLASS_DIGIT | CLASS_GLUE) & !test(CLASS_SPACE);
            let reject = (la & !((na >> 1) & (na2 >> 2 | 3 << 62)) & !(1 << 63))
                | ((lb & !(nb << 1) | kv & bad << 1) & !1);
            (cls, _mm512_test_epi8_mask(a, a), reject)
        }
    }

    /// The masks of a span of up to 8 blocks, one vector per class: lane
    /// `k` holds block `k`'s mask (what [`BlockMasks`] holds, with the
    /// rejected anchors already dropped from `anchor`).
    #[derive(Clone, Copy)]
    pub(crate) struct Planes {
        pub digit: __m512i,
        pub glue: __m512i,
        pub space: __m512i,
        pub dash: __m512i,
        pub dot: __m512i,
        pub upper: __m512i,
        pub anchor: __m512i,
    }

    impl Planes {
        /// `f` applied to each class's vector.
        #[inline(always)]
        pub(crate) fn map(&self, f: impl Fn(__m512i) -> __m512i) -> Planes {
            Planes {
                digit: f(self.digit),
                glue: f(self.glue),
                space: f(self.space),
                dash: f(self.dash),
                dot: f(self.dot),
                upper: f(self.upper),
                anchor: f(self.anchor),
            }
        }

        /// Keep only the bits in `keep` (lane `k`: of block `k`).
        ///
        /// # Safety
        /// The CPU must support AVX-512F.
        #[inline(always)]
        pub(crate) unsafe fn and(&self, keep: __m512i) -> Planes {
            // SAFETY: the CPU supports AVX-512F (this function's contract).
            self.map(|v| unsafe { _mm512_and_si512(v, keep) })
        }

        /// The masks of the block after each (lane `k` = block `k + 1`;
        /// zero after the last lane).
        ///
        /// # Safety
        /// The CPU must support AVX-512F.
        #[inline(always)]
        pub(crate) unsafe fn next(&self) -> Planes {
            // SAFETY: the CPU supports AVX-512F (this function's contract).
            self.map(|v| unsafe { _mm512_alignr_epi64::<1>(_mm512_setzero_si512(), v) })
        }
    }

    /// Store the 8 lanes of `v` in `dst[..8]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[inline(always)]
    pub(crate) unsafe fn store_lanes(dst: &mut [u64], v: __m512i) {
        let dst = &mut dst[..8];
        // SAFETY: the CPU supports AVX-512F (this function's contract);
        // `dst` holds 64 bytes and `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr() as *mut __m512i, v) }
    }

    /// The masks of the blocks of `data` (at most 8 blocks; a final partial
    /// block padded with zero bytes) as vectors, built in registers: the
    /// scan's gate computes on them right away, and loading them back as
    /// vectors from 64-bit stores of each block's masks would wait for
    /// those stores to reach the cache (store forwarding cannot merge
    /// them).
    ///
    /// Each block's class bytes become its 8 masks by a bit transpose: bit
    /// 7 of the class byte is set for the anchors not rejected, each 8×8
    /// bit matrix of a 64-bit lane (8 bytes × 8 class bits) is transposed
    /// by `gf2p8affineqb`, and a byte permutation gathers each class's 8
    /// bytes into a 64-bit lane. An 8×8 transpose of 64-bit lanes then
    /// turns the 8 blocks' vectors into the 8 classes' vectors.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX-512BW, AVX-512VBMI and GFNI.
    #[inline(always)]
    pub(super) unsafe fn planes_avx512(data: &[u8], t: &Tables) -> Planes {
        // Byte `i` of each 64-bit lane from byte `7 - i`.
        const REVERSE: [u8; 16] = [7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8];
        // Byte `8t + q` from byte `8q + t`.
        const GATHER: [u8; 64] = {
            let mut t = [0u8; 64];
            let mut i = 0;
            while i < 64 {
                t[i] = ((i % 8) * 8 + i / 8) as u8;
                i += 1;
            }
            t
        };
        // SAFETY (every intrinsic below): the CPU supports these features
        // (this function's contract); the masked loads read the `n` bytes of
        // `data` from `at` only, the table loads read arrays of their size.
        unsafe {
            let reverse =
                _mm512_broadcast_i32x4(_mm_loadu_si128(REVERSE.as_ptr() as *const __m128i));
            let gather = _mm512_loadu_si512(GATHER.as_ptr() as *const __m512i);
            // Byte `t` of each 64-bit lane: `1 << t`.
            let unit = _mm512_set1_epi64(0x8040_2010_0804_0201_u64 as i64);
            let top = _mm512_set1_epi8(-128);
            let b: [__m512i; 8] = std::array::from_fn(|k| {
                let at = k * BLOCK;
                if at >= data.len() {
                    return _mm512_setzero_si512();
                }
                let n = (data.len() - at).min(BLOCK);
                let p = data.as_ptr().add(at);
                // (A masked load only for the last block: a plain one is
                // forwarded the bytes just stored there.)
                let (v, keep) = if n == BLOCK {
                    (_mm512_loadu_si512(p as *const __m512i), u64::MAX)
                } else {
                    let keep = (1u64 << n) - 1;
                    (_mm512_maskz_loadu_epi8(keep, p as *const i8), keep)
                };
                let (cls, anchor, reject) = classes_avx512(v, t);
                // (Bit 7 of the class byte becomes the anchor bit:
                // `CLASS_KV` cleared first. Anchors only where there are
                // bytes: see `classify_chunk`.)
                let cls = _mm512_andnot_si512(top, cls);
                let cls =
                    _mm512_mask_mov_epi8(cls, anchor & !reject & keep, _mm512_or_si512(cls, top));
                // `gf2p8affineqb` with the class bytes as the matrix: bit
                // `i` of byte `t` of the result = bit `t` of matrix byte
                // `7 - i`, so byte `t` of each lane is class `t` of its 8
                // bytes once these are reversed.
                let m = _mm512_shuffle_epi8(cls, reverse);
                let x = _mm512_gf2p8affine_epi64_epi8::<0>(unit, m);
                _mm512_permutexvar_epi8(gather, x)
            });
            // Lane `t` of `b[k]` is class `t` of block `k`: transpose.
            let a: [__m512i; 8] = std::array::from_fn(|i| {
                let (x, y) = (b[i & !1], b[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_epi64(x, y)
                } else {
                    _mm512_unpackhi_epi64(x, y)
                }
            });
            // `a[2j]`: even classes of blocks 2j, 2j + 1; `a[2j + 1]`: odd.
            let lo_pairs = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
            let hi_pairs = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
            // `c[i]` (`i % 4` = class `t < 4`): classes `t` and `t + 4` of
            // blocks 0–3 (`i < 4`) or 4–7.
            let c: [__m512i; 8] = std::array::from_fn(|i| {
                let (g, t) = (i / 4 * 4, i % 4);
                let (x, y) = (a[g + t % 2], a[g + 2 + t % 2]);
                let idx = if t < 2 { lo_pairs } else { hi_pairs };
                _mm512_permutex2var_epi64(x, idx, y)
            });
            let class = |t: usize| {
                let (x, y) = (c[t % 4], c[4 + t % 4]);
                if t < 4 {
                    _mm512_shuffle_i64x2::<0x44>(x, y)
                } else {
                    _mm512_shuffle_i64x2::<0xee>(x, y)
                }
            };
            Planes {
                digit: class(0),
                glue: class(1),
                space: class(2),
                dash: class(3),
                dot: class(4),
                upper: _mm512_or_si512(class(5), class(6)),
                anchor: class(7),
            }
        }
    }

    /// AVX2 classification of whole blocks.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn blocks_avx2(blocks: &[[u8; BLOCK]], t: &Tables, out: &mut [BlockMasks]) {
        for (block, o) in blocks.iter().zip(out) {
            // SAFETY: this function is compiled with AVX2 and only called
            // when the CPU has it.
            *o = unsafe { block_avx2(block, t) };
        }
    }

    /// AVX2 classification of one block, inlined into its caller.
    ///
    /// # Safety
    /// The CPU must support AVX2. The caller should be compiled with AVX2
    /// enabled too (else every intrinsic is a call: correct, but slow).
    #[inline(always)]
    pub(super) unsafe fn block_avx2(block: &[u8; BLOCK], t: &Tables) -> BlockMasks {
        // SAFETY: the CPU supports AVX2 (this function's contract); each
        // load reads 32 of the 64 bytes of `block`, and `loadu` has no
        // alignment requirement.
        unsafe {
            let ld = |at: usize| _mm256_loadu_si256(block.as_ptr().add(at) as *const __m256i);
            masks_avx2([ld(0), ld(32)], t)
        }
    }

    /// The masks of a block whose bytes from 0 are the `H` vectors of `v`
    /// (1 or 2), zero bytes after them.
    ///
    /// # Safety
    /// As [`block_avx2`].
    #[inline(always)]
    unsafe fn masks_avx2<const H: usize>(v: [__m256i; H], t: &Tables) -> BlockMasks {
        // SAFETY (every intrinsic below): the CPU supports AVX2 (this
        // function's contract); every table load reads a 16-byte array.
        unsafe {
            let ld16 = |p: &[u8; 16]| _mm_loadu_si128(p.as_ptr() as *const __m128i);
            let cls_lo = _mm256_broadcastsi128_si256(ld16(&t.cls_lo));
            let cls_hi = _mm256_broadcastsi128_si256(ld16(&CLS_HI));
            let hi_bit = _mm256_broadcastsi128_si256(ld16(&HI_BIT));
            let anc_lo = _mm256_broadcastsi128_si256(ld16(&t.anchor));
            let nib = _mm256_set1_epi8(0x0f);
            let zero = _mm256_setzero_si256();
            let upper_bits = _mm256_set1_epi8((CLASS_UPPER_4 | CLASS_UPPER_5) as i8);
            let ld = |t: &[u8; 16]| _mm256_broadcastsi128_si256(ld16(t));
            let (after_letters, after_ok) = (ld(&AFTER_LETTERS), ld(&AFTER_OK));
            let (before_letters, before_ok) = (ld(&BEFORE_LETTERS), ld(&BEFORE_OK));
            let after2_ok = ld(&AFTER2_OK);
            let mut m = BlockMasks::default();
            // Letter anchors and their allowed neighbours (see `reject`).
            let (mut la, mut na, mut lb, mut nb) = (0u64, 0u64, 0u64, 0u64);
            let (mut na2, mut kv) = (0u64, 0u64);
            for (half, v) in v.into_iter().enumerate() {
                let lo = _mm256_and_si256(v, nib);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                let cls = _mm256_and_si256(
                    _mm256_shuffle_epi8(cls_lo, lo),
                    _mm256_shuffle_epi8(cls_hi, hi),
                );
                // Class bit `k` to the top bit of each byte (a 16-bit shift
                // by at most 7 keeps each byte's top bit within the byte).
                macro_rules! has {
                    ($bit:expr) => {{
                        const SH: i32 = 7 - ($bit as u8).trailing_zeros() as i32;
                        _mm256_movemask_epi8(_mm256_slli_epi16::<SH>(cls)) as u32 as u64
                    }};
                }
                let hib = _mm256_shuffle_epi8(hi_bit, hi);
                let a = _mm256_and_si256(_mm256_shuffle_epi8(anc_lo, lo), hib);
                let not_a = _mm256_cmpeq_epi8(a, zero);
                let shift = 32 * half;
                // Bytes of a set given as per-low-nibble high-nibble bits.
                let set = |t: __m256i| {
                    let x = _mm256_and_si256(_mm256_shuffle_epi8(t, lo), hib);
                    (!(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, zero)) as u32) as u64) << shift
                };
                la |= set(after_letters);
                na |= set(after_ok);
                lb |= set(before_letters);
                nb |= set(before_ok);
                na2 |= set(after2_ok);
                kv |= has!(CLASS_KV) << shift;
                m.digit |= has!(CLASS_DIGIT) << shift;
                m.glue |= has!(CLASS_GLUE) << shift;
                m.space |= has!(CLASS_SPACE) << shift;
                m.dash |= has!(CLASS_DASH) << shift;
                m.dot |= has!(CLASS_DOT) << shift;
                let up = _mm256_cmpeq_epi8(_mm256_and_si256(cls, upper_bits), zero);
                m.upper |= (!(_mm256_movemask_epi8(up) as u32) as u64) << shift;
                m.anchor |= (!(_mm256_movemask_epi8(not_a) as u32) as u64) << shift;
            }
            // Bytes 32–63 of one vector are zero bytes: in no class and no
            // letter set; anchors where the zero byte is one.
            if H == 1 && t.anchor[0] & HI_BIT[0] != 0 {
                m.anchor |= !0 << 32;
            }
            let bad = m.digit | m.glue & !m.space;
            m.reject = (la & !((na >> 1) & (na2 >> 2 | 3 << 62)) & !(1 << 63))
                | ((lb & !(nb << 1) | kv & bad << 1) & !1);
            m
        }
    }

    /// `[0, 1, …, 15]` then 16 × `0x80`: from byte `s` on, the `pshufb`
    /// control that moves a vector's bytes down by `s` and zeroes the top
    /// `s`.
    const DOWN: [u8; 32] = {
        let mut t = [0x80u8; 32];
        let mut i = 0;
        while i < 16 {
            t[i] = i as u8;
            i += 1;
        }
        t
    };

    /// Per length `n < 16`, the `pshufb` control that puts the bytes of a
    /// value read as [`block_avx2_part`] reads short ones (two overlapping
    /// words, or three bytes) in place, zero from byte `n` on.
    const SHORT: [[u8; 16]; 16] = {
        let mut t = [[0x80u8; 16]; 16];
        let mut n = 1;
        while n < 16 {
            let mut j = 0;
            while j < n {
                t[n][j] = if n >= 8 && j >= 8 {
                    (j + 16 - n) as u8
                } else if n >= 4 && n < 8 && j >= 4 {
                    (j + 8 - n) as u8
                } else {
                    j as u8
                };
                j += 1;
            }
            n += 1;
        }
        t
    };

    /// The `n` bytes (`n <= 64`) at `p` as a block padded with zero bytes,
    /// built in registers from loads of those bytes only (no copy to a
    /// padded block, whose wide loads would wait for the copy's narrower
    /// stores): whole 16- and 32-byte loads where they fit, the last 16
    /// bytes moved down into place by a `pshufb`, and a value of under 16
    /// bytes read as two overlapping words (or three bytes) and put in
    /// place by a `pshufb`.
    ///
    /// # Safety
    /// As [`block_avx2`]; `p..p + n` must be readable.
    #[inline(always)]
    pub(super) unsafe fn block_avx2_part(p: *const u8, n: usize, t: &Tables) -> BlockMasks {
        debug_assert!(n <= BLOCK);
        // SAFETY: the CPU supports AVX2 (this function's contract); every
        // load of the value reads bytes of `p..p + n` only (each ends at or
        // before `p + n`), unaligned (`loadu`, `read_unaligned`); the table
        // loads read `DOWN[s..s + 16]` with `s <= 16` and a row of `SHORT`.
        unsafe {
            let ld16 = |q: *const u8| _mm_loadu_si128(q as *const __m128i);
            // Bytes `end - 16..end` of the padded block, for
            // `end - 16 < n <= end`: the value's last 16, moved down.
            let tail = |end: usize| {
                _mm_shuffle_epi8(ld16(p.add(n - 16)), ld16(DOWN.as_ptr().add(end - n)))
            };
            let (a, b) = if n >= 32 {
                let b = if n >= 48 {
                    _mm256_set_m128i(tail(64), ld16(p.add(32)))
                } else {
                    _mm256_zextsi128_si256(tail(48))
                };
                (_mm256_loadu_si256(p as *const __m256i), Some(b))
            } else if n >= 16 {
                (_mm256_set_m128i(tail(32), ld16(p)), None)
            } else {
                let x = if n >= 8 {
                    let w = |q: *const u8| (q as *const i64).read_unaligned();
                    _mm_set_epi64x(w(p.add(n - 8)), w(p))
                } else if n >= 4 {
                    let w = |q: *const u8| (q as *const i32).read_unaligned();
                    _mm_set_epi32(0, 0, w(p.add(n - 4)), w(p))
                } else if n > 0 {
                    // Bytes 0, n / 2 and n - 1: each byte of the value in
                    // order, for n of 1 to 3.
                    let b = |i: usize| *p.add(i) as i32;
                    _mm_cvtsi32_si128(b(0) | b(n / 2) << 8 | b(n - 1) << 16)
                } else {
                    _mm_setzero_si128()
                };
                let ctrl = ld16(SHORT[n].as_ptr());
                (_mm256_zextsi128_si256(_mm_shuffle_epi8(x, ctrl)), None)
            };
            match b {
                Some(b) => masks_avx2([a, b], t),
                None => masks_avx2([a], t),
            }
        }
    }

    /// SSSE3 classification of whole blocks.
    ///
    /// # Safety
    /// The CPU must support SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn blocks_ssse3(blocks: &[[u8; BLOCK]], t: &Tables, out: &mut [BlockMasks]) {
        // SAFETY (every load below): the pointer comes from a reference to an
        // array of at least 16 bytes, and `loadu` has no alignment requirement.
        let ld16 = |p: &[u8; 16]| unsafe { _mm_loadu_si128(p.as_ptr() as *const __m128i) };
        let cls_lo = ld16(&CLS_LO);
        let cls_hi = ld16(&CLS_HI);
        let hi_bit = ld16(&HI_BIT);
        let anc_lo = ld16(&t.anchor);
        let nib = _mm_set1_epi8(0x0f);
        let zero = _mm_setzero_si128();
        let bit = |c: u8| _mm_set1_epi8(c as i8);
        let (digit_bit, glue_bit, space_bit) =
            (bit(CLASS_DIGIT), bit(CLASS_GLUE), bit(CLASS_SPACE));
        let (dash_bit, dot_bit) = (bit(CLASS_DASH), bit(CLASS_DOT));
        let upper_bits = bit(CLASS_UPPER_4 | CLASS_UPPER_5);
        for (block, o) in blocks.iter().zip(out) {
            let mut m = BlockMasks::default();
            for q in 0..4 {
                // SAFETY: `block` has 64 bytes; `q * 16 + 16 <= 64`.
                let v = unsafe { _mm_loadu_si128(block.as_ptr().add(q * 16) as *const __m128i) };
                let lo = _mm_and_si128(v, nib);
                let hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
                let cls = _mm_and_si128(_mm_shuffle_epi8(cls_lo, lo), _mm_shuffle_epi8(cls_hi, hi));
                let has = |b: __m128i| {
                    _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_and_si128(cls, b), b)) as u32 as u64
                        & 0xffff
                };
                let a = _mm_and_si128(_mm_shuffle_epi8(anc_lo, lo), _mm_shuffle_epi8(hi_bit, hi));
                let not_a = _mm_cmpeq_epi8(a, zero);
                let shift = 16 * q;
                m.digit |= has(digit_bit) << shift;
                m.glue |= has(glue_bit) << shift;
                m.space |= has(space_bit) << shift;
                m.dash |= has(dash_bit) << shift;
                m.dot |= has(dot_bit) << shift;
                let up = _mm_cmpeq_epi8(_mm_and_si128(cls, upper_bits), zero);
                m.upper |= (!(_mm_movemask_epi8(up) as u32) as u64 & 0xffff) << shift;
                m.anchor |= (!(_mm_movemask_epi8(not_a) as u32) as u64 & 0xffff) << shift;
            }
            *o = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ANCHORS: &[u8] = b"@JKSz_xBb:-%G";

    /// The masks of the block at `data[at..]` without `reject`, after
    /// checking its bits: letter anchors whose neighbour in `data` (or a
    /// zero byte past its end) rules them out, as `letter_reject_scalar`
    /// says for a block. (A kernel may rule out fewer: at block edges, or
    /// none at all.)
    fn strip(m: BlockMasks, data: &[u8], at: usize, cls_lo: &[u8; 16]) -> BlockMasks {
        let mut ok = 0u64;
        for i in 0..BLOCK.min(data.len().saturating_sub(at)) {
            let j = at + i;
            // The bytes around `j` as a block of their own, with `j` at
            // byte 1 (the one before it, the two after it).
            let mut w = [0u8; BLOCK];
            w[1] = data[j];
            if j > 0 {
                w[0] = data[j - 1];
            }
            if j + 1 < data.len() {
                w[2] = data[j + 1];
            }
            if j + 2 < data.len() {
                w[3] = data[j + 2];
            }
            let r = letter_reject_scalar(&w, cls_lo) >> 1 & 1;
            // (Byte 0 of a block has no byte before it in the block.)
            ok |= r << i;
        }
        assert_eq!(
            m.reject & !ok,
            0,
            "reject bits {:x} not in {:x}",
            m.reject,
            ok
        );
        BlockMasks { reject: 0, ..m }
    }

    /// `strip` of each block of a chunk of `data`.
    fn strip_all(ms: &[BlockMasks], data: &[u8], cls_lo: &[u8; 16]) -> Vec<BlockMasks> {
        ms.iter()
            .enumerate()
            .map(|(k, &m)| strip(m, data, k * BLOCK, cls_lo))
            .collect()
    }

    #[test]
    fn letter_reject_finds_what_may_anchor_rejects() {
        let kv = Classifier::with_kv(b"=:", b"=:", Kernel::Scalar);
        let b = |s: &[u8]| {
            let mut pad = [0u8; BLOCK];
            pad[..s.len()].copy_from_slice(s);
            letter_reject_scalar(&pad, &kv.tables.cls_lo)
        };
        // (The second `x` is followed by a zero byte.)
        assert_eq!(b(b"xx"), 0b11);
        // (The byte after next: a zero byte, a space, a `-`.)
        assert_eq!(b(b"xo"), 0b1);
        // (The `-` after an `x` is ruled out too.)
        assert_eq!(b(b"xox-"), 0b1100);
        assert_eq!(b(b"sk- glpat- e- 2-"), 1 << 12 | 1 << 15);
        assert_eq!(
            b(b"SG. Go xG PMAK- KEY- shpat_ a_ data-"),
            1 << 4 | 1 << 7 | 1 << 8 | 1 << 29 | 1 << 35
        );
        assert_eq!(b(b"%40 %4 %20 5%"), 1 << 4 | 1 << 7 | 1 << 12);
        assert_eq!(b(b"Be be bE"), 0b1001001);
        // (The `G` of `BEGIN` is ruled out as `SG.`'s.)
        assert_eq!(b(b"Bearer bearer BEGIN xapp"), 1 << 16);
        assert_eq!(b(b"Bx ab"), 0b10011);
        assert_eq!(b(b"eyJ AIza gh_ J"), 1 << 11 | 1 << 13);
        // (Byte 0: its neighbour is in another block.)
        assert_eq!(b(b"J"), 0);
        // `=` and `:` after a digit or a glue byte but a space.
        assert_eq!(
            b(b"10:22 a=q c = d \"e\": w.= (: +=\t:"),
            1 << 2 | 1 << 23 | 1 << 26 | 1 << 29
        );
    }

    fn all_kernels() -> Vec<Kernel> {
        [Kernel::Scalar, Kernel::Ssse3, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    #[test]
    fn scalar_masks_are_what_the_classes_say() {
        let c = Classifier::new(ANCHORS, Kernel::Scalar);
        let mut block = [0u8; BLOCK];
        for (i, b) in block.iter_mut().enumerate() {
            *b = b" 0a9-.(x)+@J_Z\xff\x80"[i % 16];
        }
        let m = c.block_scalar(&block);
        for (i, &b) in block.iter().enumerate() {
            assert_eq!(m.digit >> i & 1 == 1, b.is_ascii_digit(), "byte {b}");
            assert_eq!(m.glue >> i & 1 == 1, is_glue(b), "byte {b}");
            assert_eq!(m.anchor >> i & 1 == 1, ANCHORS.contains(&b), "byte {b}");
            assert_eq!(m.space >> i & 1 == 1, b == b' ', "byte {b}");
            assert_eq!(m.dash >> i & 1 == 1, b == b'-', "byte {b}");
            assert_eq!(m.dot >> i & 1 == 1, b == b'.', "byte {b}");
            assert_eq!(m.upper >> i & 1 == 1, b.is_ascii_uppercase(), "byte {b}");
        }
    }

    #[test]
    fn every_byte_value_agrees_across_kernels() {
        for k in all_kernels() {
            let c = Classifier::with_kv(ANCHORS, b":", k);
            let s = Classifier::new(ANCHORS, Kernel::Scalar);
            for start in (0..256).step_by(BLOCK) {
                let block: [u8; BLOCK] = std::array::from_fn(|i| (start + i) as u8);
                let mut got = [BlockMasks::default()];
                c.blocks::<0>(&[block], &mut got, 0);
                assert_eq!(
                    strip(got[0], &block, 0, &c.tables.cls_lo),
                    s.block_scalar(&block),
                    "{k:?} at {start}"
                );
                c.blocks::<1>(&[block], &mut got, 0);
                assert_eq!(
                    strip(got[0], &block, 0, &c.tables.cls_lo),
                    s.block_scalar(&block),
                    "{k:?} at {start}"
                );
                c.blocks::<2>(&[block], &mut got, 0);
                assert_eq!(
                    strip(got[0], &block, 0, &c.tables.cls_lo),
                    s.block_scalar(&block),
                    "{k:?} at {start}"
                );
            }
        }
    }

    /// The AVX2 kernel on a value of up to one block, from loads of its
    /// bytes only, gives exactly the masks of the value padded with zero
    /// bytes, at every length, with and without the zero byte as an anchor.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_part_is_the_padded_block() {
        if !Kernel::Avx2.available() {
            return;
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly the bytes the classes and letter sets are about.
            let pick = b"0123456789 -.(+@J_zxBboaeEpAGsyIku/S:K\xff\x80\x00";
            if x.is_multiple_of(4) {
                (x >> 8) as u8
            } else {
                pick[(x >> 8) as usize % pick.len()]
            }
        };
        for anchors in [&b"@JKSz_xBb:"[..], b"\0@J"] {
            let kv: Vec<u8> = anchors.iter().copied().filter(|a| a >> 4 == 3).collect();
            let c = Classifier::with_kv(anchors, &kv, Kernel::Avx2);
            for _ in 0..200 {
                let data: [u8; BLOCK] = std::array::from_fn(|_| byte());
                for n in 0..=BLOCK {
                    let v = &data[..n];
                    // SAFETY: the CPU supports AVX2 (checked above); the
                    // part reads `v` only.
                    let (part, whole) = unsafe {
                        (
                            x86::block_avx2_part(v.as_ptr(), n, &c.tables),
                            x86::block_avx2(&padded(v), &c.tables),
                        )
                    };
                    assert_eq!(part, whole, "{n} bytes {v:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn kernels_agree_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..700),
                                         anchors in proptest::collection::vec(0u8..0x80, 0..12)) {
            let reference = Classifier::new(&anchors, Kernel::Scalar);
            // (The anchors of row 3, as `=` and `:`, every other one.)
            let kv: Vec<u8> = anchors
                .iter()
                .enumerate()
                .filter(|&(i, &a)| i % 2 == 0 && a >> 4 == 3)
                .map(|(_, &a)| a)
                .collect();
            let mut want = [BlockMasks::default(); CHUNK_BLOCKS];
            let nw = reference.classify_chunk::<CHUNK_BLOCKS, 0>(&data, &mut want);
            for k in all_kernels() {
                let c = Classifier::with_kv(&anchors, &kv, k);
                let mut got = [BlockMasks::default(); CHUNK_BLOCKS];
                for f in 0..3 {
                    let ng = match f {
                        0 => c.classify_chunk::<CHUNK_BLOCKS, 0>(&data, &mut got),
                        1 => c.classify_chunk::<CHUNK_BLOCKS, 1>(&data, &mut got),
                        _ => c.classify_chunk::<CHUNK_BLOCKS, 2>(&data, &mut got),
                    };
                    prop_assert_eq!(ng, nw);
                    // (The last block: the tail of `data`, padded.)
                    let got = strip_all(&got[..ng], &data, &c.tables.cls_lo);
                    prop_assert_eq!(&got[..], &want[..nw], "{:?} F={}", k, f);
                }
                if data.len() <= BLOCK {
                    let one = strip(c.classify_one::<2>(&data), &data, 0, &c.tables.cls_lo);
                    prop_assert_eq!(one, reference.classify_one::<0>(&data), "{:?} one", k);
                }
            }
        }

        /// The planes hold what the AVX-512 kernel gives each block (less
        /// the rejected anchors), zero past the last block. (Anchor sets
        /// without the zero byte: `classify_chunk` marks the padding of a
        /// span of one partial block as such anchors, the planes do not.)
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn planes_are_the_blocks_masks(data in proptest::collection::vec(any::<u8>(), 0..600),
                                       anchors in proptest::collection::vec(1u8..0x80, 0..12)) {
            if !(Kernel::Avx512.available()
                && std::arch::is_x86_feature_detected!("avx512vbmi")
                && std::arch::is_x86_feature_detected!("gfni"))
            {
                return Ok(());
            }
            let kv: Vec<u8> = anchors.iter().copied().filter(|a| a >> 4 == 3).collect();
            let c = Classifier::with_kv(&anchors, &kv, Kernel::Avx512);
            let mut want = [BlockMasks::default(); 8];
            let nw = c.classify_chunk::<8, 2>(&data, &mut want);
            let (np, p) = c.classify_planes::<3>(&data).expect("AVX-512 kernel");
            prop_assert_eq!(np, nw);
            let lanes = |v| {
                let mut a = [0u64; 8];
                // SAFETY: the CPU supports AVX-512F (checked above).
                unsafe { store_lanes(&mut a, v) };
                a
            };
            let (digit, glue, space) = (lanes(p.digit), lanes(p.glue), lanes(p.space));
            let (dash, dot, upper) = (lanes(p.dash), lanes(p.dot), lanes(p.upper));
            let anchor = lanes(p.anchor);
            for (k, w) in want.iter().enumerate() {
                let w = if k < nw { *w } else { BlockMasks::default() };
                let got = BlockMasks {
                    digit: digit[k],
                    glue: glue[k],
                    space: space[k],
                    dash: dash[k],
                    dot: dot[k],
                    upper: upper[k],
                    anchor: anchor[k],
                    reject: 0,
                };
                let want = BlockMasks {
                    anchor: w.anchor & !w.reject,
                    reject: 0,
                    ..w
                };
                prop_assert_eq!(got, want, "block {}", k);
            }
        }
    }
}
