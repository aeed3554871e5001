//! The compiled masking engine: one scan per cell, rewriting in place.
//!
//! [`Engine::compile`] turns a [`MaskingProfile`] into an immutable engine
//! (`Send + Sync`, shared by `Arc` across cores). [`Engine::mask_in_place`]
//! scans one value:
//!
//! 1. [`classify`](super::classify) turns each 64-byte block into digit, glue
//!    and anchor bitmasks with SIMD;
//! 2. every anchor bit (`@`, the `J` of `eyJ`, …) goes to its validator;
//! 3. every run of digits and glue is measured with bit operations: a run
//!    right after two capital letters is tried as an IBAN, a run with at
//!    least 9 digits (4 with IPv4 on) goes to the card, SSN, phone and IPv4
//!    validators, anything shorter costs a few bit operations;
//! 4. custom literal lists (aho-corasick) and regexes, if any, run over the
//!    value afterwards.
//!
//! Every rewrite keeps the length. Nothing allocates.

use std::sync::{Arc, OnceLock};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

#[cfg(target_arch = "x86_64")]
use super::classify::{store_lanes, Planes};
use super::classify::{BlockMasks, Classifier, Kernel, MaskStore, BLOCK, CHUNK_BLOCKS};
use super::detect::{
    self, DigitDetectors, DigitHits, Fmt, TokenDetectors, Vendor, WholeKind, WholeTokens,
};
use super::phone;
use super::profile::{
    compile_regex, ColumnAction, MaskingProfile, ProfileError, TypeRef, MAX_RULES,
};

/// The built-in detectors; their discriminants are their rule ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Builtin {
    PaymentCard = 0,
    Email,
    Ssn,
    Phone,
    Iban,
    Ipv4,
    Ipv6,
    AwsAccessKey,
    Jwt,
    PrivateKey,
    GithubToken,
    SlackToken,
    StripeKey,
    GoogleApiKey,
    BearerToken,
    OpenAiKey,
    AnthropicKey,
    GitlabToken,
    HuggingfaceToken,
    NpmToken,
    UrlPassword,
    ShopifyToken,
    DigitaloceanToken,
    GrafanaToken,
    PostmanApiKey,
    NewrelicApiKey,
    AgeSecretKey,
    SendgridApiKey,
    VaultToken,
    DatabricksToken,
    MailgunApiKey,
    TelegramBotToken,
    LinearApiKey,
    PypiToken,
    DopplerToken,
    PulumiToken,
    SentryToken,
}

/// Number of built-in detectors (rule ids `0..BUILTIN_RULES`).
pub const BUILTIN_RULES: usize = 37;

const BUILTIN_NAMES: [&str; BUILTIN_RULES] = [
    "payment_card",
    "email",
    "ssn",
    "phone",
    "iban",
    "ipv4",
    "ipv6",
    "aws_access_key",
    "jwt",
    "private_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "google_api_key",
    "bearer_token",
    "openai_api_key",
    "anthropic_api_key",
    "gitlab_token",
    "huggingface_token",
    "npm_token",
    "url_password",
    "shopify_token",
    "digitalocean_token",
    "grafana_token",
    "postman_api_key",
    "newrelic_api_key",
    "age_secret_key",
    "sendgrid_api_key",
    "vault_token",
    "databricks_token",
    "mailgun_api_key",
    "telegram_bot_token",
    "linear_api_key",
    "pypi_token",
    "doppler_token",
    "pulumi_token",
    "sentry_token",
];

impl From<Vendor> for Builtin {
    fn from(v: Vendor) -> Builtin {
        match v {
            Vendor::GitHub => Builtin::GithubToken,
            Vendor::Stripe => Builtin::StripeKey,
            Vendor::OpenAi => Builtin::OpenAiKey,
            Vendor::Anthropic => Builtin::AnthropicKey,
            Vendor::GitLab => Builtin::GitlabToken,
            Vendor::HuggingFace => Builtin::HuggingfaceToken,
            Vendor::Npm => Builtin::NpmToken,
            Vendor::Shopify => Builtin::ShopifyToken,
            Vendor::DigitalOcean => Builtin::DigitaloceanToken,
            Vendor::Grafana => Builtin::GrafanaToken,
            Vendor::Postman => Builtin::PostmanApiKey,
            Vendor::NewRelic => Builtin::NewrelicApiKey,
            Vendor::Age => Builtin::AgeSecretKey,
        }
    }
}

impl From<WholeKind> for Builtin {
    fn from(k: WholeKind) -> Builtin {
        match k {
            WholeKind::Vault => Builtin::VaultToken,
            WholeKind::Databricks => Builtin::DatabricksToken,
            WholeKind::Mailgun => Builtin::MailgunApiKey,
            WholeKind::Telegram => Builtin::TelegramBotToken,
            WholeKind::Linear => Builtin::LinearApiKey,
            WholeKind::Pypi => Builtin::PypiToken,
            WholeKind::Doppler => Builtin::DopplerToken,
            WholeKind::Pulumi => Builtin::PulumiToken,
            WholeKind::Sentry => Builtin::SentryToken,
            WholeKind::Grafana => Builtin::GrafanaToken,
            WholeKind::Shopify => Builtin::ShopifyToken,
        }
    }
}

/// A rule: a built-in detector, a custom literal list, a custom regex or a
/// column rule, numbered in that order (see [`Engine::rule_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u8);

impl From<Builtin> for RuleId {
    fn from(b: Builtin) -> Self {
        RuleId(b as u8)
    }
}

/// Hit counters, one per rule id. Keep one per core or per session and add
/// them to metrics when convenient; updating is a plain array increment.
///
/// With [`Hits::log_hits`] on, every hit is also listed with where it was
/// found ([`HitAt`]), so a caller can attribute hits to columns and to the
/// statement whose rows they were in (the audit trail does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hits {
    counts: [u64; MAX_RULES],
    /// The sum of `counts`, and a bit per rule whose count is not 0 (both
    /// follow from `counts`; kept so that totals and the rules hit cost
    /// no walk over every rule).
    total: u64,
    seen: u128,
    log: Option<Vec<HitAt>>,
}

/// One logged hit: the rule, how many values, and where: a region (cell)
/// index during a region scan, a column index once [`mask_data_row`]
/// has translated it, or [`HitAt::NOWHERE`].
///
/// [`mask_data_row`]: super::mask_data_row
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HitAt {
    pub rule: RuleId,
    pub at: u32,
    pub n: u32,
}

impl HitAt {
    pub const NOWHERE: u32 = u32::MAX;
}

impl Default for Hits {
    fn default() -> Self {
        Hits {
            counts: [0; MAX_RULES],
            total: 0,
            seen: 0,
            log: None,
        }
    }
}

impl Hits {
    pub fn new() -> Self {
        Self::default()
    }
    /// List every hit from now on (see [`Hits::take_log`]).
    pub fn log_hits(&mut self, on: bool) {
        self.log = on.then(Vec::new);
    }
    #[inline]
    pub fn add(&mut self, rule: impl Into<RuleId>, n: u64) {
        self.add_at(rule, HitAt::NOWHERE, n);
    }
    /// A hit found at `at` (a region or column index).
    #[inline]
    pub fn add_at(&mut self, rule: impl Into<RuleId>, at: u32, n: u64) {
        let rule = rule.into();
        self.counts[rule.0 as usize] += n;
        self.total += n;
        self.seen |= u128::from(n != 0) << rule.0;
        if let Some(log) = &mut self.log {
            log.push(HitAt {
                rule,
                at,
                n: n.min(u64::from(u32::MAX)) as u32,
            });
        }
    }
    /// Length of the hit list (0 when not logging).
    #[inline]
    pub fn log_len(&self) -> usize {
        self.log.as_ref().map_or(0, Vec::len)
    }
    /// The hits listed since `from`, to re-label.
    #[inline]
    pub fn logged_since(&mut self, from: usize) -> &mut [HitAt] {
        match &mut self.log {
            Some(l) if from < l.len() => &mut l[from..],
            _ => &mut [],
        }
    }
    /// Take the hit list out (to read it while `self` is borrowed
    /// elsewhere); give it back, emptied, with [`Hits::put_log`].
    pub fn take_log(&mut self) -> Option<Vec<HitAt>> {
        self.log.take()
    }
    pub fn put_log(&mut self, mut log: Option<Vec<HitAt>>) {
        if let Some(l) = &mut log {
            l.clear();
        }
        self.log = log;
    }
    pub fn get(&self, rule: impl Into<RuleId>) -> u64 {
        self.counts[rule.into().0 as usize]
    }
    pub fn total(&self) -> u64 {
        self.total
    }
    /// Rules with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (RuleId, u64)> + '_ {
        let mut seen = self.seen;
        std::iter::from_fn(move || {
            let i = seen.trailing_zeros();
            if i == 128 {
                return None;
            }
            seen &= seen - 1;
            Some((RuleId(i as u8), self.counts[i as usize]))
        })
    }
    /// Zero the counts (the hit list is kept).
    pub fn clear(&mut self) {
        let mut seen = self.seen;
        while seen != 0 {
            self.counts[seen.trailing_zeros() as usize] = 0;
            seen &= seen - 1;
        }
        self.total = 0;
        self.seen = 0;
    }
    pub fn merge(&mut self, other: &Hits) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.seen |= other.seen;
    }
}

/// An engine could not be built from a profile.
pub type CompileError = ProfileError;

struct LiteralSet {
    ac: AhoCorasick,
    /// Rule id of each pattern.
    rule_of: Vec<RuleId>,
}

struct ColumnMatcher {
    name: Option<regex::bytes::Regex>,
    oid: Option<u32>,
    action: ColumnAction,
    rule: RuleId,
}

/// A compiled masking profile. Immutable; share it with `Arc`.
pub struct Engine {
    enabled: bool,
    fmt: Fmt,
    classifier: Classifier,
    /// 1: the AVX2 kernel is in use and the CPU has BMI1, BMI2 and POPCNT:
    /// the scan runs as a copy compiled for those features. 2: the same
    /// with the AVX-512 kernel, in a copy compiled for AVX-512F/BW too.
    /// 3: the same with VBMI and GFNI too. 0: none of these.
    fast: u8,
    /// Which anchored detectors are on, by anchor byte.
    on: [bool; BUILTIN_RULES],
    /// Which prefixed tokens `detect::underscore` and `detect::dash_token`
    /// report.
    tokens: TokenDetectors,
    /// The tokens recognized only as a whole value (`detect::whole_token`),
    /// and whether any is on.
    whole: WholeTokens,
    any_whole: bool,
    digits: DigitDetectors,
    /// Fewest digits in a run worth tokenizing.
    min_digits: u32,
    /// Fewest digits in a block and the next 12 bytes for a candidate
    /// shape to start in the block (see `Shapes::on`).
    need: u32,
    /// All ones when any digit detector is on (else no candidate shapes),
    /// when IPv4 is on (every position may start one), when the AWS and
    /// IBAN detectors are on; else 0 (masks for the block walk).
    shape_bits: u64,
    ipv4_bits: u64,
    aws_bits: u64,
    iban_bits: u64,
    any_builtin: bool,
    /// Custom literals or regexes to run.
    custom: bool,
    /// JSON values are walked (see `super::json`): for the name rules with
    /// the `mask` or `keep_last` action, which apply to their members too,
    /// or for whole-value tokens in their strings.
    json_walk: bool,
    /// The name rules apply to named values in text too (`password=…`, see
    /// `super::named`): `=` and `:` are anchors.
    named: bool,
    /// Matches the names those rules match (one pass over a key before
    /// the rules are tried one by one).
    name_any: Option<regex::bytes::Regex>,
    /// Matches the names any column rule matches by name.
    column_names: Option<regex::bytes::Regex>,
    literals: Vec<LiteralSet>,
    regexes: Vec<(regex::bytes::Regex, RuleId)>,
    columns: Vec<ColumnMatcher>,
    /// With column rules: the rule a COPY's fields are masked whole under
    /// when its columns are not known (`column:unresolved_copy`).
    unresolved_copy: Option<RuleId>,
    hash_key: ring::hmac::Key,
    names: Vec<String>,
    /// Unique in the process: what a rule kept outside the engine was
    /// read under (see `super::derived::Text`).
    id: u64,
    /// See [`Engine::rules_key`].
    rules_key: u64,
    /// The strongest action among the name rules (the first rule with it),
    /// for computed columns whose statement cannot be read.
    strongest_name: Option<(RuleId, ColumnAction)>,
    /// The layouts of `phone::LAYOUTS` that a cell is masked as one phone
    /// number by without the scan (bit `i` for layout `i`; see
    /// [`Engine::phone_cell`] and [`Engine::phone_layouts`]).
    phone_cells: u16,
    /// For each of those layouts, the bytes of its cells the phone mask
    /// rewrites (`phone::rewritten`).
    phone_lanes: [[u64; 2]; phone::LAYOUTS.len()],
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("enabled", &self.enabled)
            .field("kernel", &self.classifier.kernel())
            .field("rules", &self.names)
            .finish_non_exhaustive()
    }
}

/// Random hash key drawn once per process (see `MaskingProfile::hash_key`).
fn process_hash_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .expect("system random source");
        k
    })
}

/// Whether `v` holds a byte `>= 0x80`: two overlapping words for the
/// short values of most cells, sixteen bytes a step beyond (cheaper than
/// `is_ascii` on them).
#[inline(always)]
pub(super) fn any_high(v: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |w: &[u8]| u64::from_le_bytes(w[..8].try_into().unwrap());
    let n = v.len();
    let acc = if n >= 16 {
        let tail = &v[n - 16..];
        let mut acc = word(tail) | word(&tail[8..]);
        let mut i = 0;
        while i < n - 16 {
            acc |= word(&v[i..]) | word(&v[i + 8..]);
            i += 16;
        }
        acc
    } else if n >= 8 {
        word(v) | word(&v[n - 8..])
    } else if n >= 4 {
        let half = |w: &[u8]| u64::from(u32::from_le_bytes(w[..4].try_into().unwrap()));
        half(v) | half(&v[n - 4..])
    } else {
        v.iter().fold(0u64, |a, &b| a | u64::from(b))
    };
    acc & HIGH != 0
}

/// The first byte `>= 0x80` of `v` from `from` on (words without one
/// skipped whole).
#[inline]
fn next_high(v: &[u8], from: usize) -> Option<usize> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= v.len() {
        let w = u64::from_le_bytes(v[i..i + 8].try_into().unwrap()) & HIGH;
        if w != 0 {
            return Some(i + (w.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    v[i.min(v.len())..]
        .iter()
        .position(|&b| b >= 0x80)
        .map(|k| i + k)
}

/// Whether `v[i]` may be the ASCII byte that ends a multi-byte character
/// of a client encoding the gateway was not told of: a byte `0x40..=0x7e`
/// after one `>= 0x81` (the second byte of an SJIS, BIG5, GBK, UHC or
/// JOHAB character: `カ` is SJIS `83 4A`), a byte `0x31..=0x3f` after a
/// JOHAB symbol's first byte (`0xd8..=0xf9`), or a digit in the second or
/// fourth place of a GB18030 four-byte character (high, digit, high,
/// digit). The last two never occur in UTF-8 text, so a digit after an
/// accented letter there keeps its place.
#[inline]
fn hidden(v: &[u8], i: usize) -> bool {
    if i == 0 {
        return false;
    }
    let (p, b) = (v[i - 1], v[i]);
    let hi = |k: usize| (0x81..=0xfe).contains(&v[k]);
    let digit = |k: usize| v[k].is_ascii_digit();
    (p >= 0x81 && (0x40..=0x7e).contains(&b))
        || ((0xd8..=0xf9).contains(&p) && (0x31..=0x3f).contains(&b))
        || (b.is_ascii_digit()
            && hi(i - 1)
            && ((i + 2 < v.len() && hi(i + 1) && digit(i + 2))
                || (i >= 3 && hi(i - 3) && digit(i - 2))))
}

/// Whether reading the hidden byte `v[i]` (see [`hidden`]) as part of a
/// character can change what the detectors find: always for one that is
/// not a letter (a `]`, `}` or `;` ends a named value early: SJIS `Ь` is
/// `84 5D`; a digit of GB18030), and for a letter when a digit, `+` or `(`
/// follows, or a word that has five or more token characters, or a digit,
/// or ends in `=`/`:` (`DE89 3704…`, `ssn=…`, keys, `Bearer`). The rest
/// (`ü` then `ller`) ends no detector's boundary; skipping it keeps
/// accented text at one scan.
#[inline]
fn shift_matters(v: &[u8], i: usize) -> bool {
    if !v[i].is_ascii_alphabetic() {
        return true;
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let rest = &v[i + 1..];
    if rest
        .first()
        .is_some_and(|&b| b.is_ascii_digit() || b == b'+' || b == b'(')
    {
        return true;
    }
    let word = rest.iter().take(8).take_while(|&&b| token(b)).count();
    // (A key may have up to eight blanks before its `=`/`:`, as
    // `named::assignment` reads it: `ssn = …`.)
    let blanks = rest[word..]
        .iter()
        .take(8)
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    word >= 5
        || rest[..word].iter().any(u8::is_ascii_digit)
        || matches!(rest.get(word + blanks), Some(b'=' | b':'))
}

/// `value` as a client in an unannounced multi-byte encoding reads it:
/// each [`hidden`] byte made `0x80`, a non-ASCII byte as the character it
/// ends is; `None` when no hidden byte [`shift_matters`]. PostgreSQL 14 and
/// later report a new `client_encoding` only at the end of a Query, and not
/// at all when it is undone before then (`set_config(…, true)`, `SET
/// LOCAL`, a rolled-back `SET`), so rows can arrive in SJIS, BIG5, GBK,
/// UHC, GB18030 or JOHAB while the gateway reads UTF-8; the gateway
/// refuses those encodings (see `ascii_safe_encoding`) where it sees them.
/// The view is scanned too, after the value's own pass
/// ([`Engine::mask_shifted`]): every byte the client may show as ASCII
/// is then read with the boundaries the client sees. Only values with a
/// high byte get here (`any_high`).
fn shifted_view(value: &[u8]) -> Option<Vec<u8>> {
    // (Only the bytes after high ones: word by word to the next.)
    let mut at = 0;
    let needed = loop {
        match next_high(value, at) {
            Some(p) if p + 1 < value.len() => {
                if hidden(value, p + 1) && shift_matters(value, p + 1) {
                    break true;
                }
                at = p + 1;
            }
            _ => break false,
        }
    };
    needed.then(|| {
        (0..value.len())
            .map(|i| if hidden(value, i) { 0x80 } else { value[i] })
            .collect()
    })
}

/// Whether a value long enough for a token may be an array or composite
/// (its first byte `{`, `(`, `[` (bounds) or, in binary form, 0): one test per value, so
/// that others pay next to nothing (see [`Engine::mask_listed`]).
#[inline(always)]
fn may_list(v: &[u8]) -> bool {
    v.len() >= detect::WHOLE_MIN && matches!(v[0], b'{' | b'(' | b'[' | 0)
}

/// The length-prefixed value at `at` of a binary array, composite, range
/// or multirange: its bytes (None for NULL) and where the next one
/// starts; None past the end.
pub(super) fn length_prefixed(
    v: &[u8],
    at: usize,
) -> Option<(Option<std::ops::Range<usize>>, usize)> {
    let len = crate::protocol::be_i32(v.get(at..at + 4)?);
    let start = at + 4;
    match usize::try_from(len) {
        Err(_) => Some((None, start)),
        Ok(len) => {
            let end = start.checked_add(len).filter(|&e| e <= v.len())?;
            Some((Some(start..end), end))
        }
    }
}

/// Calls `f` with each text item of a binary array (`ndim`, flags, element
/// type, the dimensions, then each element's length and bytes) whose
/// element type is text-like, `json` or `jsonb` (after its version byte),
/// or of a binary composite (the field count, then each field's type,
/// length and bytes) for its fields of those types. Anything that does
/// not parse as either is left alone.
fn binary_text_items(v: &mut [u8], mut f: impl FnMut(&mut [u8])) {
    const TEXT_OIDS: [u32; 7] = [25, 1043, 1042, 19, 705, 114, 3802];
    let mut item = |t: u32, x: &mut [u8]| match (t, x.first()) {
        (3802, Some(1)) => f(&mut x[1..]),
        (3802, _) => {}
        _ => f(x),
    };
    let word = |v: &[u8], at: usize| v.get(at..at + 4).map(crate::protocol::be_i32);
    let value = length_prefixed;
    let Some(first) = word(v, 0) else {
        return;
    };
    // An array: 1–6 dimensions, a flag of 0 or 1, a text element type.
    let elem = word(v, 8).map_or(0, |t| t as u32);
    if (1..=6).contains(&first) && matches!(word(v, 4), Some(0 | 1)) && TEXT_OIDS.contains(&elem) {
        let mut at = 12 + 8 * first as usize;
        while let Some((bytes, next)) = value(v, at) {
            if let Some(r) = bytes {
                item(elem, &mut v[r]);
            }
            at = next;
        }
        return;
    }
    // A composite: its fields, each with its type.
    let mut at = 4;
    for _ in 0..first.max(0) {
        let (Some(t), Some((bytes, next))) = (word(v, at), value(v, at + 4)) else {
            return;
        };
        if let Some(r) = bytes.filter(|_| TEXT_OIDS.contains(&(t as u32))) {
            item(t as u32, &mut v[r]);
        }
        at = next;
    }
}

/// Whether a column rule's action rewrites in place, keeping the length
/// (`mask`, `keep_last`): the actions name rules also apply inside JSON
/// values and to named values in text.
fn keeps_length(a: ColumnAction) -> bool {
    matches!(a, ColumnAction::Mask | ColumnAction::KeepLast(_))
}

/// Turn a glob (`*`, `?`) into an anchored, ASCII case-insensitive regex.
fn glob_regex(glob: &str) -> String {
    let mut re = String::from("(?i)^");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    re
}

impl Engine {
    /// Validate and compile a profile, with the fastest kernel for this CPU.
    pub fn compile(p: &MaskingProfile) -> Result<Engine, CompileError> {
        Self::compile_with_kernel(p, Kernel::best())
    }

    /// As [`Engine::compile`] with a chosen classification kernel (tests and
    /// benchmarks compare them). Panics if the CPU lacks the kernel.
    pub fn compile_with_kernel(p: &MaskingProfile, kernel: Kernel) -> Result<Engine, CompileError> {
        p.validate()?;
        let d = &p.detectors;
        let enabled = p.enabled;
        let mut on = [false; BUILTIN_RULES];
        let flags = [
            d.payment_card,
            d.email,
            d.ssn,
            d.phone,
            d.iban,
            d.ipv4,
            d.ipv6,
            d.aws_access_key,
            d.jwt,
            d.private_key,
            d.github_token,
            d.slack_token,
            d.stripe_key,
            d.google_api_key,
            d.bearer_token,
            d.openai_api_key,
            d.anthropic_api_key,
            d.gitlab_token,
            d.huggingface_token,
            d.npm_token,
            d.url_password,
            d.shopify_token,
            d.digitalocean_token,
            d.grafana_token,
            d.postman_api_key,
            d.newrelic_api_key,
            d.age_secret_key,
            d.sendgrid_api_key,
            d.vault_token,
            d.databricks_token,
            d.mailgun_api_key,
            d.telegram_bot_token,
            d.linear_api_key,
            d.pypi_token,
            d.doppler_token,
            d.pulumi_token,
            d.sentry_token,
        ];
        for (o, f) in on.iter_mut().zip(flags) {
            *o = enabled && f;
        }
        let is = |b: Builtin| on[b as usize];
        let mut anchors = Vec::new();
        let mut add = |cond: bool, bytes: &[u8]| {
            if cond {
                anchors.extend_from_slice(bytes);
            }
        };
        add(is(Builtin::Email), b"@%");
        add(is(Builtin::Jwt), b"J");
        add(is(Builtin::GoogleApiKey), b"z");
        let any = |b: &[Builtin]| b.iter().any(|&b| is(b));
        add(
            any(&[
                Builtin::GithubToken,
                Builtin::StripeKey,
                Builtin::HuggingfaceToken,
                Builtin::NpmToken,
                Builtin::ShopifyToken,
                Builtin::DigitaloceanToken,
                Builtin::GrafanaToken,
            ]),
            b"_",
        );
        add(
            any(&[
                Builtin::OpenAiKey,
                Builtin::AnthropicKey,
                Builtin::GitlabToken,
                Builtin::PostmanApiKey,
                Builtin::NewrelicApiKey,
                Builtin::AgeSecretKey,
            ]),
            b"-",
        );
        add(is(Builtin::SendgridApiKey), b"G");
        add(is(Builtin::SlackToken), b"x/");
        add(is(Builtin::PrivateKey) || is(Builtin::BearerToken), b"B");
        add(is(Builtin::BearerToken), b"b");
        add(is(Builtin::Ipv6), b":");
        add(is(Builtin::Phone), b"+(");
        add(is(Builtin::UrlPassword), b":");
        let digits = DigitDetectors {
            card: is(Builtin::PaymentCard),
            ssn: is(Builtin::Ssn),
            phone: is(Builtin::Phone),
            ipv4: is(Builtin::Ipv4),
        };
        let tokens = TokenDetectors {
            github: is(Builtin::GithubToken),
            stripe: is(Builtin::StripeKey),
            openai: is(Builtin::OpenAiKey),
            anthropic: is(Builtin::AnthropicKey),
            gitlab: is(Builtin::GitlabToken),
            huggingface: is(Builtin::HuggingfaceToken),
            npm: is(Builtin::NpmToken),
            shopify: is(Builtin::ShopifyToken),
            digitalocean: is(Builtin::DigitaloceanToken),
            grafana: is(Builtin::GrafanaToken),
            postman: is(Builtin::PostmanApiKey),
            newrelic: is(Builtin::NewrelicApiKey),
            age: is(Builtin::AgeSecretKey),
        };
        let whole = WholeTokens {
            vault: is(Builtin::VaultToken),
            databricks: is(Builtin::DatabricksToken),
            mailgun: is(Builtin::MailgunApiKey),
            telegram: is(Builtin::TelegramBotToken),
            linear: is(Builtin::LinearApiKey),
            pypi: is(Builtin::PypiToken),
            doppler: is(Builtin::DopplerToken),
            pulumi: is(Builtin::PulumiToken),
            sentry: is(Builtin::SentryToken),
            grafana: is(Builtin::GrafanaToken),
            shopify: is(Builtin::ShopifyToken),
        };
        let min_digits = if digits.ipv4 { 4 } else { 9 };

        let mut names: Vec<String> = BUILTIN_NAMES.iter().map(|s| s.to_string()).collect();
        let mut next_rule = BUILTIN_RULES;
        let mut literals = Vec::new();
        if enabled {
            for ci in [false, true] {
                let mut pats: Vec<&str> = Vec::new();
                let mut rule_of = Vec::new();
                for (i, l) in p.custom_literals.iter().enumerate() {
                    if l.case_insensitive == ci {
                        for v in &l.values {
                            pats.push(v);
                            rule_of.push(RuleId((BUILTIN_RULES + i) as u8));
                        }
                    }
                }
                if pats.is_empty() {
                    continue;
                }
                let ac = AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .ascii_case_insensitive(ci)
                    .build(&pats)
                    .map_err(|e| ProfileError::field("custom_literals", e.to_string()))?;
                literals.push(LiteralSet { ac, rule_of });
            }
        }
        for l in &p.custom_literals {
            names.push(l.name.clone());
            next_rule += 1;
        }
        let mut regexes = Vec::new();
        for (i, r) in p.custom_regexes.iter().enumerate() {
            let re = compile_regex(&r.pattern)
                .map_err(|m| ProfileError::field(format!("custom_regexes[{i}].pattern"), m))?;
            if enabled {
                regexes.push((re, RuleId(next_rule as u8)));
            }
            names.push(r.name.clone());
            next_rule += 1;
        }
        let mut columns = Vec::new();
        for (i, c) in p.columns.iter().enumerate() {
            let at = |s: &str| format!("columns[{i}].{s}");
            let name = match (&c.column, &c.column_regex) {
                (Some(g), _) => Some(glob_regex(g)),
                (_, Some(r)) => Some(r.clone()),
                _ => None,
            };
            let name = name
                .map(|r| regex::bytes::Regex::new(&r))
                .transpose()
                .map_err(|e| ProfileError::field(at("column"), e.to_string()))?;
            let oid = match &c.type_ {
                None => None,
                Some(TypeRef::Oid(o)) => Some(*o),
                Some(TypeRef::Name(n)) => Some(
                    super::rows::type_oid(n)
                        .ok_or_else(|| ProfileError::field(at("type"), "unknown type name"))?,
                ),
            };
            let label = c
                .column
                .clone()
                .or_else(|| c.column_regex.clone())
                .unwrap_or_else(|| format!("type {}", oid.unwrap_or(0)));
            names.push(format!("column:{label}"));
            columns.push(ColumnMatcher {
                name,
                oid,
                action: c.action,
                rule: RuleId(next_rule as u8),
            });
            next_rule += 1;
        }
        let unresolved_copy = (!columns.is_empty()).then(|| {
            names.push("column:unresolved_copy".to_string());
            next_rule += 1;
            RuleId((next_rule - 1) as u8)
        });
        // Name rules (a column rule by name that keeps the length) apply to
        // JSON members, and with `named_values` to named values in text.
        let name_rules = || {
            columns
                .iter()
                .filter(|c| keeps_length(c.action))
                .filter_map(|c| c.name.as_ref())
        };
        let json_keys = enabled && name_rules().next().is_some();
        let named = json_keys && d.named_values;
        add(named, b"=:");
        // (`=` and `:` after a digit are no key's, nor a URL's scheme's:
        // the classifier rules them out, as it may not when `:` is IPv6's.)
        let mut kv = Vec::new();
        if named {
            kv.push(b'=');
        }
        if (named || is(Builtin::UrlPassword)) && !is(Builtin::Ipv6) {
            kv.push(b':');
        }
        anchors.sort_unstable();
        anchors.dedup();
        let any_builtin = on.iter().any(|&o| o) || named;
        // (Compiled name patterns, as one alternation.)
        let alternation = |rules: &mut dyn Iterator<Item = &regex::bytes::Regex>| {
            let any = rules
                .map(|r| format!("(?:{})", r.as_str()))
                .collect::<Vec<_>>()
                .join("|");
            regex::bytes::Regex::new(&any)
                .map_err(|e| ProfileError::field("columns", e.to_string()))
        };
        let name_any = if named {
            Some(alternation(&mut name_rules())?)
        } else {
            None
        };
        // Every name rule's, whatever its action: the columns a catalog
        // read keeps (`super::origins`).
        let column_names = if enabled && columns.iter().any(|c| c.name.is_some()) {
            Some(alternation(
                &mut columns.iter().filter_map(|c| c.name.as_ref()),
            )?)
        } else {
            None
        };
        let key: Vec<u8> = match &p.hash_key {
            Some(k) => k.0.as_bytes().to_vec(),
            None => process_hash_key().to_vec(),
        };
        let f = &p.format;
        let mut engine = Engine {
            enabled,
            fmt: Fmt {
                ch: f.mask_char as u8,
                keep_punct: f.keep_punctuation,
                card_keep: f.card_keep_last as usize,
                ssn_keep: f.ssn_keep_last as usize,
                iban_keep: f.iban_keep_last as usize,
                phone_keep: f.phone_keep_last as usize,
                email_keep_tld: f.email_keep_tld,
                keep_prefix: f.token_keep_prefix,
            },
            classifier: Classifier::with_kv(&anchors, &kv, kernel),
            fast: fast_scan(kernel),
            on,
            tokens,
            whole,
            any_whole: whole.any(),
            digits,
            min_digits,
            need: if digits.ipv4 { 4 } else { 7 },
            shape_bits: if digits.any() { u64::MAX } else { 0 },
            ipv4_bits: if digits.ipv4 { u64::MAX } else { 0 },
            aws_bits: if is(Builtin::AwsAccessKey) {
                u64::MAX
            } else {
                0
            },
            iban_bits: if is(Builtin::Iban) { u64::MAX } else { 0 },
            any_builtin,
            custom: !literals.is_empty() || !regexes.is_empty(),
            json_walk: json_keys || whole.any(),
            named,
            name_any,
            column_names,
            literals,
            regexes,
            unresolved_copy: unresolved_copy.filter(|_| enabled),
            strongest_name: columns
                .iter()
                .filter(|c| enabled && c.name.is_some())
                .map(|c| Some((c.rule, c.action)))
                .fold(None, super::derived::stronger),
            columns: if enabled { columns } else { Vec::new() },
            hash_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            names,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            rules_key: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                enabled.hash(&mut h);
                format!("{:?}", p.columns).hash(&mut h);
                h.finish()
            },
            phone_cells: 0,
            phone_lanes: [[0; 2]; phone::LAYOUTS.len()],
        };
        engine.phone_cells = engine.phone_layouts();
        for (lanes, l) in engine.phone_lanes.iter_mut().zip(&phone::LAYOUTS) {
            *lanes = phone::rewritten(l, &engine.fmt);
        }
        Ok(engine)
    }

    /// Compile into an `Arc` for sharing across cores.
    pub fn compile_shared(p: &MaskingProfile) -> Result<Arc<Engine>, CompileError> {
        Self::compile(p).map(Arc::new)
    }

    /// This engine without the AVX-512 scan copy that needs VBMI and GFNI,
    /// as a CPU with AVX-512BW but without them (Skylake-SP, Cascade Lake)
    /// runs it: for tests and `mask_dump` on CPUs that have them.
    #[doc(hidden)]
    pub fn without_planes(mut self) -> Engine {
        self.fast = self.fast.min(2);
        self
    }

    /// Whether the profile masks anything at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether any detector (built-in or custom) scans values.
    pub fn detects(&self) -> bool {
        self.any_builtin || !self.literals.is_empty() || !self.regexes.is_empty()
    }

    /// Whether the profile has custom literal lists or regexes (which may
    /// match anything).
    pub(crate) fn has_custom(&self) -> bool {
        self.custom
    }

    pub fn kernel(&self) -> Kernel {
        self.classifier.kernel()
    }

    pub(crate) fn fmt(&self) -> Fmt {
        self.fmt
    }

    /// The mask character.
    pub fn mask_char(&self) -> u8 {
        self.fmt.ch
    }

    /// Name of a rule: the detector name (`payment_card`, `email`, …), the
    /// custom rule's `name`, or `column:<pattern>` for column rules.
    pub fn rule_name(&self, rule: RuleId) -> &str {
        self.names
            .get(rule.0 as usize)
            .map_or("unknown", |s| s.as_str())
    }

    /// Number of rule ids in use.
    pub fn rule_count(&self) -> usize {
        self.names.len()
    }

    /// The first column rule matching a column's name and type oid.
    pub fn column_rule(&self, name: &[u8], type_oid: u32) -> Option<(RuleId, ColumnAction)> {
        self.columns
            .iter()
            .find(|c| {
                c.oid.is_none_or(|o| o == type_oid)
                    && c.name.as_ref().is_none_or(|r| r.is_match(name))
            })
            .map(|c| (c.rule, c.action))
    }

    /// Unique among the engines of this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Equal for engines of the same column rules (each snapshot compiles
    /// its engines anew): a catalog read for one serves the other.
    pub fn rules_key(&self) -> u64 {
        self.rules_key
    }

    /// The strongest name rule (`null` over `hash` over `mask` over
    /// `keep_last`), for a computed column whose statement's text cannot
    /// be read.
    pub fn strongest_name_rule(&self) -> Option<(RuleId, ColumnAction)> {
        self.strongest_name
    }

    /// Whether the profile has column rules (by name or type).
    pub fn has_column_rules(&self) -> bool {
        !self.columns.is_empty()
    }

    /// The rule a COPY's fields are masked whole under when the columns
    /// they belong to are not known (with column rules only; see
    /// [`super::copyout`]).
    pub fn unresolved_copy_rule(&self) -> Option<RuleId> {
        self.unresolved_copy
    }

    /// Whether a column rule matches by name (so resolving result columns
    /// to stored columns, [`super::origins`], can change a rule).
    pub fn has_name_rules(&self) -> bool {
        self.column_names.is_some()
    }

    /// Whether some column rule matches this name, regardless of type (one
    /// regex, the rules' alternation).
    pub fn name_ruled(&self, name: &[u8]) -> bool {
        self.column_names.as_ref().is_some_and(|r| r.is_match(name))
    }

    /// Whether a column rule matches a column name regardless of type (for
    /// names quoted in error messages).
    pub fn column_rule_by_name(&self, name: &[u8]) -> Option<(RuleId, ColumnAction)> {
        self.columns
            .iter()
            .find(|c| c.name.as_ref().is_some_and(|r| r.is_match(name)))
            .map(|c| (c.rule, c.action))
    }

    /// Append the keyed hash of `value` (32 lowercase hex digits) to `out`.
    pub fn hash_into(&self, value: &[u8], out: &mut Vec<u8>) {
        let tag = ring::hmac::sign(&self.hash_key, value);
        crate::protocol::hex_into(out, &tag.as_ref()[..16]);
    }

    /// Length of [`Engine::hash_into`]'s output.
    pub const HASH_LEN: usize = 32;

    /// Scan `value` and mask every detected sensitive span in place (same
    /// length). Counts hits in `hits`; returns whether anything changed.
    #[inline]
    pub fn mask_in_place(&self, value: &mut [u8], hits: &mut Hits) -> bool {
        self.mask_counted(value, hits) > 0
    }

    /// As [`Engine::mask_in_place`], returning the number of hits.
    /// (Inline: the callers' loops over cells keep it small.)
    #[inline]
    pub fn mask_counted(&self, value: &mut [u8], hits: &mut Hits) -> u32 {
        if value.is_empty() {
            return 0;
        }
        if (self.any_builtin || self.custom) && any_high(value) {
            return self.mask_counted_high(value, hits);
        }
        // (Most values have only the detectors to run, as
        // `mask_counted_ascii` would run them: called last, so that this
        // function needs no frame of its own on their way.)
        if self.any_builtin && !self.custom && !self.may_walk(value) {
            return self.scan_builtin(value, hits);
        }
        self.mask_counted_walked(value, hits)
    }

    /// Whether [`Engine::mask_counted_ascii`] runs more than the
    /// detectors on `value`: the JSON walk or the whole-value tokens.
    #[inline(always)]
    fn may_walk(&self, value: &[u8]) -> bool {
        (self.json_walk && super::json::may_start(value))
            || (self.any_whole && (detect::may_be_whole(value) || may_list(value)))
    }

    /// [`Engine::mask_counted`] of an ASCII value with more to run than
    /// the detectors (out of line: see there).
    #[inline(never)]
    fn mask_counted_walked(&self, value: &mut [u8], hits: &mut Hits) -> u32 {
        self.mask_counted_ascii(value, hits)
    }

    /// [`Engine::mask_counted`] of a value with a byte `>= 0x80`: also as
    /// an unannounced multi-byte client encoding shows it (see
    /// [`shifted_view`]), the view taken before the first pass masks
    /// anything.
    #[cold]
    #[inline(never)]
    fn mask_counted_high(&self, value: &mut [u8], hits: &mut Hits) -> u32 {
        let view = shifted_view(value);
        let mut n = self.mask_counted_ascii(value, hits);
        if let Some(view) = view {
            n += self.mask_shifted(value, &view, hits);
        }
        n
    }

    #[inline(always)]
    fn mask_counted_ascii(&self, value: &mut [u8], hits: &mut Hits) -> u32 {
        let mut n = 0;
        // (Name rules first: a member they mask whole is not counted again
        // by a detector.)
        if self.json_walk && super::json::may_start(value) {
            n += self.mask_json(value, 0, hits);
        }
        if self.any_whole {
            if detect::may_be_whole(value) {
                n += self.mask_whole(value, 0, hits);
            } else if may_list(value) {
                n += self.mask_listed(value, 0, hits);
            }
        }
        if self.any_builtin {
            n += self.scan_builtin(value, hits);
        }
        if self.custom {
            n += self.mask_custom(value, hits);
        }
        n
    }

    /// The detectors over `view` (see [`shifted_view`], taken from
    /// `value` before its first pass), their finds masked in `value` too.
    /// Counted only when this view masks something the first pass did not
    /// (a value both find is counted once).
    #[cold]
    #[inline(never)]
    fn mask_shifted(&self, value: &mut [u8], view: &[u8], hits: &mut Hits) -> u32 {
        let mut scanned = view.to_vec();
        let mut found = Hits::new();
        let mut k = 0;
        if self.any_builtin {
            k += self.scan_builtin(&mut scanned, &mut found);
        }
        if self.custom {
            k += self.mask_custom(&mut scanned, &mut found);
        }
        let mut changed = false;
        for ((v, &s), &w) in value.iter_mut().zip(&scanned).zip(view) {
            if s != w && *v != s {
                *v = s;
                changed = true;
            }
        }
        if !changed {
            return 0;
        }
        for (rule, c) in found.iter() {
            hits.add_at(rule, 0, c);
        }
        k
    }

    /// The name rules over the members of a JSON value (see `super::json`),
    /// hits logged at region `ri`.
    #[inline(never)]
    fn mask_json(&self, value: &mut [u8], ri: u32, hits: &mut Hits) -> u32 {
        let ch = self.fmt.ch;
        super::json::mask_members(
            value,
            ch,
            |key| self.column_rule_by_name(key),
            // (Whole-value tokens as a member's or an array's string.)
            |s| (self.any_whole && detect::may_be_whole(s)).then(|| self.whole_rule(s))?,
            |rule| hits.add_at(rule, ri, 1),
        )
    }

    /// A token that is the whole value (see `detect::whole_token`), its hit
    /// logged at region `ri`.
    fn mask_whole(&self, value: &mut [u8], ri: u32, hits: &mut Hits) -> u32 {
        self.whole_rule(value).map_or(0, |rule| {
            hits.add_at(rule, ri, 1);
            1
        })
    }

    /// The whole-value tokens among the elements of an array or the
    /// fields of a composite (a value [`may_list`] lets through): in text
    /// form (see `json::may_be_list`) the words between its punctuation,
    /// in binary form (a value that starts with a zero byte, as no text
    /// does) its text items (see [`binary_text_items`]). Hits logged at
    /// region `ri`.
    #[cold]
    #[inline(never)]
    fn mask_listed(&self, value: &mut [u8], ri: u32, hits: &mut Hits) -> u32 {
        let mut n = 0;
        if value[0] == 0 {
            binary_text_items(value, |item| {
                if detect::may_be_whole(item) {
                    n += self.mask_whole(item, ri, hits);
                }
            });
        } else if super::json::may_be_list(value) {
            detect::words_tokens(value, self.whole, &self.fmt, |k| {
                hits.add_at(Builtin::from(k), ri, 1);
                n += 1;
            });
        }
        n
    }

    /// The rule of the whole-value token `value` is, masked.
    #[inline(never)]
    fn whole_rule(&self, value: &mut [u8]) -> Option<RuleId> {
        detect::whole_token(value, self.whole, &self.fmt).map(|k| Builtin::from(k).into())
    }

    /// The whole-value tokens among the words of a text (the free-text
    /// fields of errors and notices, which quote values inside sentences).
    pub(crate) fn mask_words(&self, text: &mut [u8], hits: &mut Hits) -> u32 {
        let mut n = 0;
        if self.any_whole {
            detect::words_tokens(text, self.whole, &self.fmt, |k| {
                hits.add(Builtin::from(k), 1);
                n += 1;
            });
        }
        n
    }

    /// Custom literal lists and regexes over one value (kept out of line:
    /// most profiles have none).
    #[inline(never)]
    fn mask_custom(&self, value: &mut [u8], hits: &mut Hits) -> u32 {
        let mut n = 0;
        for set in &self.literals {
            n += self.mask_literals(set, value, hits);
        }
        if !self.regexes.is_empty() {
            n += self.mask_regexes(value, hits);
        }
        n
    }

    /// Mask several values of one buffer (the Detect cells of a DataRow)
    /// in one scan; hits per region are added to `counts`.
    /// `json`: whether a region may start a JSON document (false when the
    /// caller knows none does; see `super::json`).
    pub(crate) fn mask_regions(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        json: bool,
    ) -> u32 {
        let mut n = 0;
        // (The views of cells with high bytes, before anything is masked:
        // see `mask_counted_high`.)
        let mut views = Vec::new();
        if self.any_builtin || self.custom {
            for (ri, r) in regions.iter().enumerate() {
                let cell = &buf[r.start as usize..r.end as usize];
                if any_high(cell) {
                    if let Some(v) = shifted_view(cell) {
                        views.push((ri, v));
                    }
                }
            }
        }
        // (Name rules first, as in `mask_counted`: a cell masks the same in
        // a row as alone.)
        if self.json_walk && json {
            for (ri, r) in regions.iter().enumerate() {
                let (s, e) = (r.start as usize, r.end as usize);
                if super::json::may_start(&buf[s..e]) {
                    let k = self.mask_json(&mut buf[s..e], ri as u32, hits);
                    counts[ri] += k;
                    n += k;
                }
            }
        }
        if self.any_whole {
            for (ri, r) in regions.iter().enumerate() {
                let (s, e) = (r.start as usize, r.end as usize);
                // (The length first: most cells are shorter.)
                if e - s >= detect::WHOLE_MIN {
                    let v = &mut buf[s..e];
                    let k = if detect::may_be_whole(v) {
                        self.mask_whole(v, ri as u32, hits)
                    } else if may_list(v) {
                        self.mask_listed(v, ri as u32, hits)
                    } else {
                        0
                    };
                    counts[ri] += k;
                    n += k;
                }
            }
        }
        if self.any_builtin {
            n += if self.phone_cells != 0 {
                self.scan_regions_phones(buf, regions, counts, hits)
            } else {
                self.scan_regions(buf, regions, counts, hits, &mut 0)
            };
        }
        if !self.literals.is_empty() || !self.regexes.is_empty() {
            for (ri, (r, c)) in regions.iter().zip(counts.iter_mut()).enumerate() {
                let cell = &mut buf[r.start as usize..r.end as usize];
                let logged = hits.log_len();
                let mut k = 0;
                for set in &self.literals {
                    k += self.mask_literals(set, cell, hits);
                }
                k += self.mask_regexes(cell, hits);
                for h in hits.logged_since(logged) {
                    h.at = ri as u32;
                }
                *c += k;
                n += k;
            }
        }
        for (ri, view) in views {
            let r = regions[ri];
            let cell = &mut buf[r.start as usize..r.end as usize];
            let logged = hits.log_len();
            let k = self.mask_shifted(cell, &view, hits);
            for h in hits.logged_since(logged) {
                h.at = ri as u32;
            }
            counts[ri] += k;
            n += k;
        }
        n
    }

    /// [`Engine::scan_regions`] with the cells that are phone numbers in
    /// one of `phone_cells`' layouts masked as [`Engine::phone_cell`] masks
    /// them, and left out of the scan of the others; the same bytes, counts
    /// and hits, logged in the same order.
    ///
    /// Why the others give what they give with them: the scan of a region
    /// depends on no byte outside it. The classification's masks are
    /// cleared outside the regions, and a cell left out is one more such
    /// stretch; every candidate shape is an AND of masks over consecutive
    /// bytes from its start, and so are the gate's terms (superset tests of
    /// them, or of a trigger and the bytes right after it), so none that
    /// starts in a region reaches a byte outside it; a digit run ends at
    /// the first byte outside it; the validators are given their region's
    /// cell (`may_anchor`, `anchor`, `digit_run`, `email`, `aws`, `iban`,
    /// the named values). What the scan carries from one region to the
    /// next are positions (`skip_until`, `dirty`, `named_until`, each
    /// within the region it was set in, so below any later region's bytes)
    /// and `Opened`, which names its run by position and compares the hit
    /// count at two moments within the phone opener's own region.
    /// The order of the hit list is one of position (see
    /// [`Engine::block_slow`]), so of region, up to the named values the
    /// scan masks at its end (`tail`): a phone cell's hit goes after the
    /// hits before that of the regions before its own.
    ///
    /// Rows of more than `PHONE_ROW_MAX` regions, and rows without such a
    /// cell, are scanned as they are.
    #[inline(never)]
    fn scan_regions_phones(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
    ) -> u32 {
        const MAX: usize = PHONE_ROW_MAX;
        let mut phones = 0u32;
        let mut layouts = [0u8; MAX];
        if regions.len() <= MAX {
            for (ri, r) in regions.iter().enumerate() {
                let cell = &buf[r.start as usize..r.end as usize];
                if phone::may_be(cell) {
                    if let Some(i) = phone::layout_of(cell, self.phone_cells) {
                        phones |= 1 << ri;
                        layouts[ri] = i as u8;
                    }
                }
            }
        }
        if phones == 0 {
            return self.scan_regions(buf, regions, counts, hits, &mut 0);
        }
        // The others, by their index in `regions` (`of`).
        let mut rest = [Region { start: 0, end: 0 }; MAX];
        let mut of = [0u8; MAX];
        let mut k = 0;
        for (ri, r) in regions.iter().enumerate() {
            rest[k] = *r;
            of[k] = ri as u8;
            k += usize::from(phones >> ri & 1 == 0);
        }
        let mut rest_counts = [0u32; MAX];
        let logged = hits.log_len();
        let mut tail = usize::MAX;
        let mut n = self.scan_regions(buf, &rest[..k], &mut rest_counts[..k], hits, &mut tail);
        for (j, &c) in rest_counts[..k].iter().enumerate() {
            counts[of[j] as usize] += c;
        }
        for h in hits.logged_since(logged) {
            if let Some(&ri) = of[..k].get(h.at as usize) {
                h.at = u32::from(ri);
            }
        }
        let scanned = hits.log_len();
        let tail = tail.min(scanned);
        let mut left = phones;
        while left != 0 {
            let ri = left.trailing_zeros() as usize;
            left &= left - 1;
            let r = regions[ri];
            let cell = &mut buf[r.start as usize..r.end as usize];
            let i = layouts[ri] as usize;
            // (`mask_range` over the cell, as `phone::rewritten` found it.)
            phone::mask(cell, self.phone_lanes[i], self.fmt.ch);
            hits.add_at(Builtin::Phone, ri as u32, 1);
            counts[ri] += 1;
            n += 1;
        }
        if hits.log_len() > scanned {
            // The list is now the scan's hits in order of position, its
            // named values', and the phone cells' (in order of region):
            // each phone cell's hit is moved to after the scan's hits of
            // the regions before its own.
            let log = hits.logged_since(logged);
            let before = tail - logged;
            let m = log.len() - (scanned - logged);
            log[before..].rotate_right(m);
            let mut i = 0;
            for p in before..before + m {
                let ri = log[p].at;
                while i < p && log[i].at < ri {
                    i += 1;
                }
                log[i..=p].rotate_right(1);
                i += 1;
            }
        }
        n
    }

    fn mask_regexes(&self, value: &mut [u8], hits: &mut Hits) -> u32 {
        let mut n = 0;
        for (re, rule) in &self.regexes {
            let mut at = 0;
            while at <= value.len() {
                let Some(m) = re.find_at(value, at) else {
                    break;
                };
                let (s, e) = (m.start(), m.end());
                detect::mask_range(value, s, e, 0, &self.fmt);
                hits.add(*rule, 1);
                n += 1;
                at = if e > s { e } else { e + 1 };
            }
        }
        n
    }

    fn mask_literals(&self, set: &LiteralSet, value: &mut [u8], hits: &mut Hits) -> u32 {
        let mut n = 0;
        let mut at = 0;
        while at < value.len() {
            let input = aho_corasick::Input::new(&*value).span(at..value.len());
            let Some(m) = set.ac.find(input) else { break };
            detect::mask_all(value, m.start(), m.end(), &self.fmt);
            hits.add(set.rule_of[m.pattern().as_usize()], 1);
            n += 1;
            at = m.end().max(m.start() + 1);
        }
        n
    }

    /// Scan the values at `regions` of `buf` (increasing, disjoint) in one
    /// pass: the blocks are classified once for all of them, and the bytes
    /// between regions (DataRow length words, skipped columns) are cleared
    /// from the masks, so nothing is found there and no value runs into the
    /// next. Validators only ever see their own region. Hits per region go to
    /// `counts` (same length as `regions`).
    ///
    /// `tail`: where the hits of the named values masked at the end of the
    /// scan start in the hit list, when there are any (left as it is
    /// otherwise): every hit logged before it is in the order of its
    /// position in `buf`, so of its region.
    pub(crate) fn scan_regions(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        #[cfg(target_arch = "x86_64")]
        match self.fast {
            // SAFETY: `fast` is set only when the CPU has these features
            // (`fast_scan`).
            3 => return unsafe { self.scan_regions_fast512p(buf, regions, counts, hits, tail) },
            // SAFETY: as above.
            2 => return unsafe { self.scan_regions_fast512(buf, regions, counts, hits, tail) },
            // SAFETY: as above.
            1 => return unsafe { self.scan_regions_fast(buf, regions, counts, hits, tail) },
            _ => {}
        }
        self.scan_regions_slow(buf, regions, counts, hits, tail)
    }

    /// [`Engine::scan_regions`] without the fast features.
    #[inline(never)]
    fn scan_regions_slow(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        self.scan_regions_impl::<0>(buf, regions, counts, hits, tail)
    }

    /// [`Engine::scan_regions`] compiled with the features of the AVX2
    /// kernel plus BMI and POPCNT (bit scans and counts in one instruction).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,popcnt")]
    fn scan_regions_fast(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        self.scan_regions_impl::<1>(buf, regions, counts, hits, tail)
    }

    /// [`Engine::scan_regions`] compiled for the AVX-512 kernel (inlined),
    /// on CPUs without VBMI or GFNI (Skylake-SP, Cascade Lake): short spans
    /// classified block by block, as long ones.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2,bmi1,bmi2,popcnt")]
    fn scan_regions_fast512(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        self.scan_regions_impl::<2>(buf, regions, counts, hits, tail)
    }

    /// [`Engine::scan_regions`] compiled for the AVX-512 kernel (inlined)
    /// with VBMI and GFNI: short spans classified as vectors in registers
    /// (`Classifier::classify_planes`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,gfni,avx2,bmi1,bmi2,popcnt")]
    fn scan_regions_fast512p(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        self.scan_regions_impl::<3>(buf, regions, counts, hits, tail)
    }

    /// `F`: compiled with the fast features (see `classify_chunk`).
    #[inline(always)]
    fn scan_regions_impl<const F: u8>(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        let (Some(first), Some(last)) = (regions.first(), regions.last()) else {
            return 0;
        };
        // Spans of up to `SHORT_BLOCKS` blocks are classified in one chunk
        // either way; a smaller array spares zeroing the large one, and
        // the gate computes fewer blocks. (One short size, not two: each
        // is a copy of the whole walk, and DataRows of 2 to 8 blocks,
        // alternating between two copies, ran slower than with one.)
        let span = (last.end - first.start) as usize;
        if span <= SHORT_BLOCKS * BLOCK {
            self.scan_chunked::<SHORT_BLOCKS, { SHORT_BLOCKS + 1 }, F>(
                buf, regions, counts, hits, tail,
            )
        } else {
            self.scan_chunked::<CHUNK_BLOCKS, { CHUNK_BLOCKS + 1 }, F>(
                buf, regions, counts, hits, tail,
            )
        }
    }

    /// The block walk of [`Engine::scan_regions`], classifying `N` blocks
    /// at a time (before any of them is validated).
    #[inline(always)]
    fn scan_chunked<const N: usize, const L: usize, const F: u8>(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        let (lo, hi) = (
            regions[0].start as usize,
            regions[regions.len() - 1].end as usize,
        );
        let mut st = ScanState::default();
        let mut cur = Cursors::default();
        // Digits of the block before the one processed (its last bit is
        // all the shapes look at).
        let mut prev_digit = 0u64;
        // Short spans on the AVX-512 kernel: one chunk, its masks built as
        // vectors in registers (see `classify_planes`).
        #[cfg(target_arch = "x86_64")]
        if N == SHORT_BLOCKS {
            if let Some((nb, p)) = self.classifier.classify_planes::<F>(&buf[lo..hi]) {
                // SAFETY: `classify_planes` returns planes only to callers
                // compiled for AVX-512.
                let (lanes, g) = unsafe { self.gate_planes::<N, L>(p, regions, lo) };
                let mut w = Walk {
                    prev_digit: &mut prev_digit,
                    st: &mut st,
                    cur: &mut cur,
                };
                self.walk_chunk::<F, N, L>(buf, regions, lo, nb, &lanes, &g, &mut w, counts, hits);
                return self.scan_end(buf, regions, &mut st, &mut cur, counts, hits, tail);
            }
        }
        // (`L = N + 1`: room for the zero block after a full chunk; no
        // more, as the lanes are zeroed for every call.)
        const { assert!(L == N + 1) };
        let mut lanes = Lanes::<L>::default();
        let mut member = 0usize;
        let mut base = lo;
        while base < hi {
            let nb = self
                .classifier
                .classify_chunk::<N, F>(&buf[base..hi], &mut lanes);
            if regions.len() > 1 {
                for k in 0..nb {
                    let bm = membership(regions, &mut member, base + k * BLOCK);
                    // (Most blocks of long values lie in one region.)
                    if bm != u64::MAX {
                        lanes.and(k, bm);
                    }
                }
            }
            // Each block looks 13 bytes ahead into the next one, so the last
            // block of a chunk is processed with the next chunk (unless this
            // chunk reaches the end).
            let at_end = base + nb * BLOCK >= hi;
            let process = if at_end { nb } else { nb - 1 };
            // (Block `nb` is the zero block after the last one. In the
            // first chunk it is still as `default` left it: storing it
            // again would only delay the gate's vector loads of it.)
            if base != lo {
                lanes.set(nb, BlockMasks::default());
            }
            let g = self.gate::<N>(&lanes.view(0), &lanes.view(1));
            let mut w = Walk {
                prev_digit: &mut prev_digit,
                st: &mut st,
                cur: &mut cur,
            };
            self.walk_chunk::<F, N, L>(
                buf, regions, base, process, &lanes, &g, &mut w, counts, hits,
            );
            base += process * BLOCK;
        }
        self.scan_end(buf, regions, &mut st, &mut cur, counts, hits, tail)
    }

    /// The first `process` blocks of a chunk at `base`, classified
    /// (`lanes`) and gated (`g`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn walk_chunk<const F: u8, const N: usize, const L: usize>(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        base: usize,
        process: usize,
        lanes: &Lanes<L>,
        g: &Gated<N>,
        w: &mut Walk,
        counts: &mut [u32],
        hits: &mut Hits,
    ) {
        // (`k` indexes the lanes too.)
        #[allow(clippy::needless_range_loop)]
        for k in 0..process {
            let at = base + k * BLOCK;
            let d = lanes.digit[k];
            if g.work[k] | w.st.run.cand as u64 == 0 {
                // (What `block_gated` does when it finds nothing to
                // validate.)
                w.st.run.carry(d, d | lanes.glue[k], at);
            } else {
                let (m, next) = (lanes.get(k), lanes.get(k + 1));
                let ctx = Ctx { regions, base: at };
                self.block_gated::<F, N>(
                    buf,
                    &ctx,
                    *w.prev_digit,
                    &m,
                    &next,
                    g,
                    k,
                    w.st,
                    w.cur,
                    counts,
                    hits,
                );
            }
            *w.prev_digit = d;
        }
    }

    /// The end of a scan: validates the digit run still open.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn scan_end(
        &self,
        buf: &mut [u8],
        regions: &[Region],
        st: &mut ScanState,
        cur: &mut Cursors,
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        let run = st.run;
        if run.active && run.cand {
            let ri = cur.run.seek(regions, run.first);
            let r = regions[ri];
            if st.opened.is(run.first, r.end as usize, st.hits) {
                return self.scan_named_end(buf, st, counts, hits, tail);
            }
            self.digit_run(
                buf,
                r,
                ri,
                run.first,
                r.end as usize,
                run.digits,
                None,
                st,
                counts,
                hits,
            );
        }
        self.scan_named_end(buf, st, counts, hits, tail)
    }

    /// The end of a scan after its last digit run: the named values left.
    #[inline(always)]
    fn scan_named_end(
        &self,
        buf: &mut [u8],
        st: &mut ScanState,
        counts: &mut [u32],
        hits: &mut Hits,
        tail: &mut usize,
    ) -> u32 {
        if st.named_len != 0 {
            *tail = hits.log_len();
            self.named_end(buf, st, counts, hits);
        }
        st.hits
    }

    /// The lanes of a short span's one chunk at `base` from its planes
    /// (keeping the bits inside `regions`), and the gate's terms.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn gate_planes<const N: usize, const L: usize>(
        &self,
        p: Planes,
        regions: &[Region],
        base: usize,
    ) -> (Lanes<L>, Gated<N>) {
        // SAFETY (all three blocks): the CPU supports AVX-512F (this
        // function's contract).
        let p = if regions.len() > 1 {
            unsafe { p.and(membership8(regions, base)) }
        } else {
            p
        };
        // Each array written whole by one vector store (the zero block
        // after the last one, and `reject`, which `anchor` left out
        // already, stay zero), so the gate's vector loads are forwarded
        // from these stores rather than wait for them.
        let lanes = unsafe { Lanes::from_planes(&p) };
        // (The gate reads no anchors of the block after.)
        let after = Lanes {
            anchor: [0; L],
            ..unsafe { Lanes::from_planes(&p.next()) }
        };
        let g = self.gate::<N>(&lanes.view(0), &after.view(0));
        (lanes, g)
    }

    #[inline]
    fn scan_builtin(&self, buf: &mut [u8], hits: &mut Hits) -> u32 {
        // (Other cells pay a few instructions and a branch that is rarely
        // taken; both ways end in a tail call, so this function keeps no
        // frame of its own.)
        if self.phone_cells != 0 && phone::may_be(buf) {
            return self.phone_cell(buf, hits);
        }
        self.scan_value(buf, hits)
    }

    /// [`Engine::scan_builtin`] by the scan (the copy for the CPU's
    /// features).
    #[inline(always)]
    fn scan_value(&self, buf: &mut [u8], hits: &mut Hits) -> u32 {
        let n = buf.len();
        #[cfg(target_arch = "x86_64")]
        if self.fast > 0 {
            let region = [Region {
                start: 0,
                end: n as u32,
            }];
            // SAFETY (all five calls): `fast` is set only when the CPU has
            // these features (`fast_scan`). (A value of one block does not
            // use the planes.)
            return unsafe {
                match (self.fast, n <= BLOCK) {
                    (2 | 3, true) => self.scan_one_fast512(buf, hits),
                    (3, false) => {
                        self.scan_regions_fast512p(buf, &region, &mut [0u32], hits, &mut 0)
                    }
                    (2, false) => {
                        self.scan_regions_fast512(buf, &region, &mut [0u32], hits, &mut 0)
                    }
                    (_, true) => self.scan_one_fast(buf, hits),
                    (_, false) => self.scan_regions_fast(buf, &region, &mut [0u32], hits, &mut 0),
                }
            };
        }
        self.scan_builtin_slow(buf, hits)
    }

    /// [`Engine::scan_builtin`] of a cell that may be a phone number in one
    /// of the layouts this engine masks without the scan (`phone_cells`):
    /// one that is, masked and counted as the scan would (see
    /// `super::phone` for why that is the same) in place of the some 1 300
    /// instructions the classification, the block walk and the digit-run
    /// validators spend on it; any other by the scan.
    #[inline(never)]
    fn phone_cell(&self, buf: &mut [u8], hits: &mut Hits) -> u32 {
        let Some(i) = phone::layout_of(buf, self.phone_cells) else {
            return self.scan_value(buf, hits);
        };
        // (`mask_range` over the cell, as `phone::rewritten` found it.)
        phone::mask(buf, self.phone_lanes[i], self.fmt.ch);
        hits.add_at(Builtin::Phone, 0, 1);
        1
    }

    /// The layouts of `phone::LAYOUTS` whose cells the scan masks whole
    /// as one phone number with nothing else changed, in this engine, as
    /// a bit set (see `super::phone`). The phone detector must be on; the
    /// mask character none that a validator could read again (no anchor,
    /// digit or glue); at most 9 digits kept (so an opener's first digit
    /// is masked: every opening layout has 10 or more). Then a layout that
    /// opens with `+` or `(` goes to `phone_opener`, which needs 9 digits;
    /// one that starts with a digit to the run walk when `scan_one_impl`
    /// and [`Engine::runs`] find a candidate shape in its masks (tested
    /// here with the same functions); and either one to the validators only
    /// with `min_digits` digits, and without the card test (under 13).
    fn phone_layouts(&self) -> u16 {
        let f = &self.fmt;
        if !self.digits.phone || !b"*#~^?!".contains(&f.ch) || f.phone_keep > 9 {
            return 0;
        }
        let zero = BlockMasks::default();
        let mut on = 0;
        for (i, l) in phone::LAYOUTS.iter().enumerate() {
            let m = l.masks();
            let digits = m.digit.count_ones();
            let walked = if l.opener {
                digits >= 9
            } else {
                let sep = m.space | m.dash | m.dot;
                let w0 = (pre_shape(m.digit, sep) | self.ipv4_bits) & self.shape_bits;
                let pre = Shapes {
                    w0,
                    w1: 0,
                    sep_c: sep,
                    sep_n: 0,
                    exact: false,
                };
                digits >= self.need
                    && w0 != 0
                    && self.may_start_shape(&m, &zero)
                    && self.candidates(0, &m, &zero, pre) & (u64::MAX >> (64 - l.n)) != 0
            };
            let ok = walked && digits >= self.min_digits && digits < 13;
            on |= u16::from(ok) << i;
        }
        on
    }

    /// This engine scanning every cell, phone numbers alone in theirs too
    /// (for the tests that compare [`Engine::phone_cell`] with the scan).
    #[cfg(test)]
    pub(crate) fn without_phone_cells(mut self) -> Engine {
        self.phone_cells = 0;
        self
    }

    /// The layouts this engine masks without the scan (for the tests).
    #[cfg(test)]
    pub(crate) fn phone_cells(&self) -> u16 {
        self.phone_cells
    }

    /// [`Engine::scan_builtin`] without the fast features.
    #[inline(never)]
    fn scan_builtin_slow(&self, buf: &mut [u8], hits: &mut Hits) -> u32 {
        let n = buf.len();
        if n <= BLOCK {
            return self.scan_one_impl::<0>(buf, hits);
        }
        let region = [Region {
            start: 0,
            end: n as u32,
        }];
        self.scan_regions_impl::<0>(buf, &region, &mut [0u32], hits, &mut 0)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,popcnt")]
    fn scan_one_fast(&self, buf: &mut [u8], hits: &mut Hits) -> u32 {
        self.scan_one_impl::<1>(buf, hits)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2,bmi1,bmi2,popcnt")]
    fn scan_one_fast512(&self, buf: &mut [u8], hits: &mut Hits) -> u32 {
        self.scan_one_impl::<2>(buf, hits)
    }

    /// A value of at most one block (most cells): no block after it, no
    /// run carried into it. Validators for what its masks trigger, and
    /// nothing at all when they trigger nothing (not even the digit run
    /// reaching its end, which no block after it would read).
    ///
    /// Shape starts only when the value holds enough digits for one
    /// (`need`, as [`Shapes::on`]), by a branch rather than a mask: the
    /// ids, prices and street numbers of short cells have fewer, and skip
    /// [`pre_shape`]. Only the block's own window: without a block after
    /// it, a start that only the look-ahead window finds has no shape (see
    /// [`Engine::candidates`]).
    #[inline(always)]
    fn scan_one_impl<const F: u8>(&self, buf: &mut [u8], hits: &mut Hits) -> u32 {
        let n = buf.len();
        let m = self.classifier.classify_one::<F>(buf);
        let Triggers {
            anchors: a,
            aws,
            iban,
        } = triggers(
            m.anchor & !m.reject,
            m.glue & !m.dash,
            m.digit,
            m.upper,
            0,
            0,
            (self.aws_bits, self.iban_bits),
        );
        let (w0, sep_c) = if m.digit.count_ones() >= self.need {
            let sep_c = m.space | m.dash | m.dot;
            let w0 = (pre_shape(m.digit, sep_c) | self.ipv4_bits) & self.shape_bits;
            (w0, sep_c)
        } else {
            (0, 0)
        };
        if a | aws | iban | w0 == 0 {
            return 0;
        }
        let region = [Region {
            start: 0,
            end: n as u32,
        }];
        let mut counts = [0u32];
        let mut st = ScanState::default();
        let mut cur = Cursors::default();
        let ctx = Ctx {
            regions: &region,
            base: 0,
        };
        let pre = Shapes {
            w0,
            w1: 0,
            sep_c,
            sep_n: 0,
            exact: false,
        };
        let zero = BlockMasks::default();
        self.block_slow::<F>(
            buf,
            &ctx,
            0,
            &m,
            &zero,
            a,
            aws,
            iban,
            pre,
            &mut st,
            &mut cur,
            &mut counts,
            hits,
        );
        let run = st.run;
        // (Unless an opener validated it: see `phone_opener`.)
        if run.active && run.cand && !st.opened.is(run.first, n, st.hits) {
            self.digit_run(
                buf,
                region[0],
                0,
                run.first,
                n,
                run.digits,
                None,
                &mut st,
                &mut counts,
                hits,
            );
        }
        if st.named_len != 0 {
            self.named_end(buf, &mut st, &mut counts, hits);
        }
        st.hits
    }

    /// Positions in `cur` where a digit run worth validating may start:
    /// runs of at least 13 digits (bare, or joined by single spaces, dashes
    /// or dots), the shapes `ddd-dd-dddd` / `ddd dd dddd` (SSN) and
    /// `ddd?ddd?dddd` (North American phone), `ddddd?ddddd` (national
    /// numbers of two groups, `01632 960123`), the ten-digit national shapes
    /// of [`national`] (`030 12345678`, `03-1234-5678`, `0412 345 678`),
    /// and `d.d.d.d` (IPv4, when on).
    /// Shorter runs (dates, prices, times, ids) cost nothing more.
    ///
    /// Every shape is at most 13 bytes long, so it is found in one of two
    /// 64-bit windows (see [`ahead`]): the block itself for starts 0–51,
    /// the window from byte 52 for starts 52–63. All shapes are plain ANDs
    /// of shifted masks, so bits shifted in as zeros only ever hide a
    /// start, never invent one, and each window is exact where it is used.
    #[inline(always)]
    fn candidates(&self, prev_digit: u64, c: &BlockMasks, n: &BlockMasks, pre: Shapes) -> u64 {
        let ipv4 = self.digits.ipv4;
        let (sep_c, sep_n) = (pre.sep_c, pre.sep_n);
        // Which windows can hold a shape at all: two cheaper superset
        // tests, `pre_shape` (~20 instructions; rejects the dates and
        // prices of free text; computed for one-block values by
        // `scan_one_impl`, for the blocks of long chunks by the gate)
        // and then `may_shape` (~40; rejects dates followed by times).
        // In a chunk the gate computed `may_shape` already (`pre.exact`).
        let in0 =
            ipv4 || (pre.w0 != 0 && (pre.exact || may_shape(c.digit, c.space, c.dash, c.dot) != 0));
        let in1 = n.digit != 0
            && (ipv4
                || (pre.w1 != 0
                    && (pre.exact
                        || may_shape(
                            ahead(c.digit, n.digit),
                            ahead(c.space, n.space),
                            ahead(c.dash, n.dash),
                            ahead(c.dot, n.dot),
                        ) & AHEAD_LOW
                            != 0)));
        if !in0 && !in1 {
            return 0;
        }
        // Digits with a digit right before / right after.
        let dl_c = (c.digit << 1) | (prev_digit >> 63);
        let dr_c = (c.digit >> 1) | (n.digit << 63);
        let dl_n = (n.digit << 1) | (c.digit >> 63);
        let dr_n = n.digit >> 1;
        // Digits plus single separators of one kind between two digits.
        let tight = |sc: u64, sn: u64| {
            let x = c.digit | (sc & dl_c & dr_c);
            (x, ahead(x, n.digit | (sn & dl_n & dr_n)))
        };
        let (sp0, sp1) = tight(c.space, n.space);
        let (da0, da1) = tight(c.dash, n.dash);
        let (dt0, dt1) = tight(c.dot, n.dot);
        let w0 = Window {
            digit: c.digit,
            space: c.space,
            dash: c.dash,
            sep: sep_c,
            sp: sp0,
            da: da0,
            dt: dt0,
        };
        if !in1 {
            // (Without digits in the next block, every shape that starts in
            // the block lies in it: shapes need digits to their end, and the
            // block's own window sees zeros above bit 63 as the next block's
            // digits are. The look-ahead window would only repeat them.)
            return w0.shapes(ipv4);
        }
        let w1 = Window {
            digit: ahead(c.digit, n.digit),
            space: ahead(c.space, n.space),
            dash: ahead(c.dash, n.dash),
            sep: ahead(sep_c, sep_n),
            sp: sp1,
            da: da1,
            dt: dt1,
        };
        let s0 = if in0 { w0.shapes(ipv4) } else { 0 };
        s0 | (w1.shapes(ipv4) & AHEAD_LOW) << AHEAD
    }

    /// Whether a candidate shape may start in `c`: all but the IPv4 shape
    /// are a digit followed by 10 or more digits, spaces, dashes and dots.
    /// Some 20 instructions, against some 200 for [`Engine::candidates`],
    /// and false in most blocks of free text with dates and numbers.
    #[inline(always)]
    fn may_start_shape(&self, c: &BlockMasks, n: &BlockMasks) -> bool {
        if self.digits.ipv4 {
            return true;
        }
        let long11 = |r: u64| {
            let r2 = r & r >> 1;
            let r4 = r2 & r2 >> 2;
            let r8 = r4 & r4 >> 4;
            r8 & r2 >> 8 & r >> 10
        };
        let g = |x: &BlockMasks| x.digit | x.space | x.dash | x.dot;
        let (g0, gn) = (g(c), g(n));
        // (Without digits in the next block, a start the look-ahead window
        // alone finds has no shape: see `candidates`.)
        long11(g0) & c.digit != 0
            || (n.digit != 0 && long11(ahead(g0, gn)) & ahead(c.digit, n.digit) & AHEAD_LOW != 0)
    }

    /// For each block of a chunk (`l`; `n`: the block after each, zero
    /// after the last one), a superset of the bits that `block_slow` sends to a
    /// validator (before the run carried into it): 0 where it has nothing to do but
    /// carry the run. The same terms as `scan_one_impl`'s (in
    /// short chunks the shapes by `may_shape`), less the digit count, over
    /// all `N` blocks at once (a fixed count, so that the
    /// compiler computes them several blocks per vector instruction, with
    /// no scalar remainder; `work` beyond the chunk means nothing). The
    /// terms are kept for `block_gated`, which would compute them again.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn gate<const N: usize>(&self, l: &LaneView<N>, n: &LaneView<N>) -> Gated<N> {
        let mut g = Gated::<N>::default();
        let (aws_bits, iban_bits) = (self.aws_bits, self.iban_bits);
        let (shape_bits, ipv4_bits) = (self.shape_bits, self.ipv4_bits);
        for k in 0..N {
            let (c, cn) = (l.digit[k], n.digit[k]);
            let t = triggers(
                l.anchor[k] & !l.reject[k],
                l.glue[k] & !l.dash[k],
                c,
                l.upper[k],
                cn,
                n.upper[k],
                (aws_bits, iban_bits),
            );
            // (As `scan_one_impl`, less the digit count. In short chunks by
            // the exact superset `may_shape` rather than `pre_shape`
            // (`Gated::EXACT`): computed here for all blocks at once, it
            // costs a few vector instructions a block, and the dates
            // followed by times of free text, which pass `pre_shape`, no
            // longer reach `block_gated`. In long chunks (values of over
            // 512 bytes), whose prose had few such blocks, the extra vector
            // work cost more than it saved.)
            let (sp, da, dt) = (l.space[k], l.dash[k], l.dot[k]);
            let (spn, dan, dtn) = (n.space[k], n.dash[k], n.dot[k]);
            let (w0, w1) = if Gated::<N>::EXACT {
                (
                    may_shape(c, sp, da, dt),
                    may_shape(ahead(c, cn), ahead(sp, spn), ahead(da, dan), ahead(dt, dtn)),
                )
            } else {
                let (sc, sn) = (sp | da | dt, spn | dan | dtn);
                (pre_shape(c, sc), pre_shape(ahead(c, cn), ahead(sc, sn)))
            };
            let w0 = (w0 | ipv4_bits) & shape_bits;
            let w1 = (w1 | ipv4_bits) & AHEAD_LOW & shape_bits;
            // (In short chunks, also the phone openers `+`, `(` (the glue
            // anchors but `-`) without nine bytes of digits and glue after
            // them: `phone_opener` needs nine digits in the run of digits
            // and glue right after the opener, and rewrites only ever make
            // mask characters, never digits or glue, of other bytes. Most
            // are the `+00` of PostgreSQL timestamps in free text.)
            let anchors = if Gated::<N>::EXACT {
                let (x, xn) = (c | l.glue[k], cn | n.glue[k]);
                t.anchors & !(l.glue[k] & !l.dash[k] & !nine_after(x, xn))
            } else {
                t.anchors
            };
            g.anchors[k] = anchors;
            g.aws[k] = t.aws;
            g.iban[k] = t.iban;
            g.w0[k] = w0;
            g.w1[k] = w1;
            g.work[k] = anchors | t.aws | t.iban | w0 | w1;
        }
        g
    }

    /// The block walk for block `k` of a chunk, with the triggers and
    /// shape starts the gate computed (`g`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block_gated<const F: u8, const N: usize>(
        &self,
        buf: &mut [u8],
        ctx: &Ctx,
        prev_digit: u64,
        m: &BlockMasks,
        n: &BlockMasks,
        g: &Gated<N>,
        k: usize,
        st: &mut ScanState,
        cur: &mut Cursors,
        counts: &mut [u32],
        hits: &mut Hits,
    ) {
        let (a, aws, iban) = (g.anchors[k], g.aws[k], g.iban[k]);
        let on = Shapes::on(self, m, n);
        let pre = Shapes {
            w0: g.w0[k] & on,
            w1: g.w1[k] & on,
            sep_c: m.space | m.dash | m.dot,
            sep_n: n.space | n.dash | n.dot,
            exact: Gated::<N>::EXACT,
        };
        if a | aws | iban | pre.w0 | pre.w1 | st.run.cand as u64 == 0 {
            // Nothing to validate here: only the digit run reaching the end
            // of the block is carried (no candidate in it so far).
            st.run.carry(m.digit, m.digit | m.glue, ctx.base);
            return;
        }
        self.block_slow::<F>(
            buf, ctx, prev_digit, m, n, a, aws, iban, pre, st, cur, counts, hits,
        );
    }

    /// The block walk's work for a block with something to validate (from
    /// [`Engine::block_gated`] and [`Engine::scan_one_impl`]).
    ///
    /// Validators rewrite in place as they confirm, and some read the bytes
    /// next to their span (a `7` before a `+`, the `2` after a `(`), so
    /// which of two touching values is confirmed first can decide whether
    /// the other is found. The order is therefore one of position alone,
    /// never of where the 64-byte blocks fall (a DataRow puts them
    /// elsewhere than a lone cell):
    /// - anchors, AWS and IBAN starts sort at their trigger byte;
    /// - a digit run at its end, the first byte after it, so a run carried
    ///   over from the block before sorts after everything before its end
    ///   in either block, as one inside a block does;
    /// - at the same byte: runs, anchors, AWS, IBAN.
    ///
    /// The runs to validate are found from the masks alone
    /// ([`Engine::runs`]), then validated, merged with the triggers, in that
    /// order.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block_slow<const F: u8>(
        &self,
        buf: &mut [u8],
        ctx: &Ctx,
        prev_digit: u64,
        m: &BlockMasks,
        n: &BlockMasks,
        mut a: u64,
        mut aws: u64,
        mut iban: u64,
        pre: Shapes,
        st: &mut ScanState,
        cur: &mut Cursors,
        counts: &mut [u32],
        hits: &mut Hits,
    ) {
        let base = ctx.base;
        let regions = ctx.regions;
        let (mut starts, mut ends, mut carried) = self.runs(prev_digit, m, n, pre, base, st);
        // (A run reaching the end of the block, carried into the next one,
        // sorts after every trigger of this block.)
        loop {
            let t = (a | aws | iban).trailing_zeros();
            let e = ends.trailing_zeros();
            if e <= t {
                if e == 64 {
                    return;
                }
                ends &= ends - 1;
                let end = base + e as usize;
                let (first, digits, bits) = match carried.take() {
                    // (A run an opener in the block before validated when
                    // it could not see its end in the masks: see
                    // `phone_opener`.)
                    Some((first, _)) if st.opened.is(first, end, st.hits) => continue,
                    Some((first, digits)) => (first, digits, None),
                    None => {
                        let i = starts.trailing_zeros();
                        starts &= starts - 1;
                        let first = base + i as usize;
                        if st.opened.is(first, end, st.hits) {
                            continue;
                        }
                        let digits = ((m.digit & ((1u64 << e) - 1)) >> i).count_ones();
                        (first, digits, st.clean_from(first).then_some(m.digit >> i))
                    }
                };
                let ri = cur.run.seek(regions, first);
                self.digit_run(
                    buf,
                    regions[ri],
                    ri,
                    first,
                    end,
                    digits,
                    bits,
                    st,
                    counts,
                    hits,
                );
                continue;
            }
            let bit = 1u64 << t;
            let pos = base + t as usize;
            if a & bit != 0 {
                a &= !bit;
                if pos >= st.skip_until {
                    let ri = cur.anchor.seek(regions, pos);
                    let r = regions[ri];
                    if buf[pos] == b'@' {
                        // (E-mails here, not through `may_anchor` and the
                        // `anchor` call: the most frequent anchor.)
                        let s = r.start as usize;
                        let cell = &mut buf[s..r.end as usize];
                        if let Some(end) = self.email::<F>(cell, pos - s) {
                            st.found(Builtin::Email, ri, s + end, counts, hits);
                        }
                    } else if may_anchor(buf, r, pos) {
                        let bits = (m.digit, m.digit | m.glue);
                        self.anchor(buf, r, ri, pos, bits, base, st, counts, hits);
                    }
                }
            }
            if aws & bit != 0 {
                aws &= !bit;
                if buf[pos] == b'A' {
                    let ri = cur.aws.seek(regions, pos);
                    let r = regions[ri];
                    let cell = &mut buf[r.start as usize..r.end as usize];
                    if let Some(e) = detect::aws(cell, pos - r.start as usize + 1, &self.fmt) {
                        st.found(
                            Builtin::AwsAccessKey,
                            ri,
                            r.start as usize + e,
                            counts,
                            hits,
                        );
                    }
                }
            }
            if iban & bit != 0 {
                iban &= !bit;
                let ri = cur.iban.seek(regions, pos);
                let r = regions[ri];
                let cell = &mut buf[r.start as usize..r.end as usize];
                if let Some(e) = detect::iban(cell, pos - r.start as usize, &self.fmt) {
                    st.found(Builtin::Iban, ri, r.start as usize + e, counts, hits);
                }
            }
        }
    }

    /// The digit runs of a block to validate (see [`Engine::block_slow`]),
    /// from its masks alone: their first digits, their ends, and the run
    /// carried into the block if it ends there and is validated (its first
    /// digit and digit count; its end is the lowest bit of the ends).
    /// Updates the run carried out of the block (`st.run`).
    #[inline(always)]
    fn runs(
        &self,
        prev_digit: u64,
        m: &BlockMasks,
        n: &BlockMasks,
        pre: Shapes,
        base: usize,
        st: &mut ScanState,
    ) -> (u64, u64, Option<(usize, u32)>) {
        let cand = if pre.any() && self.may_start_shape(m, n) {
            self.candidates(prev_digit, m, n, pre)
        } else {
            0
        };
        let x = m.digit | m.glue;
        let mut d = m.digit;
        let (mut starts, mut ends) = (0u64, 0u64);
        let mut carried = None;
        'runs: {
            if st.run.active {
                let run = st.run;
                let e = (!x).trailing_zeros();
                if e == 64 {
                    st.run.digits += d.count_ones();
                    st.run.cand |= cand != 0;
                    break 'runs;
                }
                let low = (1u64 << e) - 1;
                st.run.active = false;
                st.run.cand = false;
                if run.cand || cand & low != 0 {
                    carried = Some((run.first, run.digits + (d & low).count_ones()));
                    ends = 1 << e;
                }
                d &= !low;
            }
            if cand == 0 && x & (1 << 63) == 0 {
                break 'runs;
            }
            while d != 0 {
                let i = d.trailing_zeros();
                if cand >> i == 0 {
                    // No candidate from here on: only a run reaching the
                    // end of the block matters (carried into the next one).
                    // It starts at the first digit of the last stretch of
                    // digits and glue.
                    if x >> 63 == 0 {
                        break 'runs;
                    }
                    let top = d & (u64::MAX << (64 - (!x).leading_zeros()));
                    if top != 0 {
                        let i = top.trailing_zeros();
                        st.run = Run {
                            first: base + i as usize,
                            digits: (d >> i).count_ones(),
                            active: true,
                            cand: false,
                        };
                    }
                    break 'runs;
                }
                let len = (!(x >> i)).trailing_zeros();
                let end = i + len;
                if end >= 64 {
                    st.run = Run {
                        first: base + i as usize,
                        digits: (d >> i).count_ones(),
                        active: true,
                        cand: cand >> i != 0,
                    };
                    break 'runs;
                }
                if (cand >> i) & ((1u64 << len) - 1) != 0 {
                    starts |= 1 << i;
                    ends |= 1 << end;
                }
                d &= !((1u64 << end) - 1);
            }
        }
        (starts, ends, carried)
    }

    /// A run of digits and glue inside region `r`: `first` is its first
    /// digit, `end` where the run stops, `digits` how many digits it holds.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn digit_run(
        &self,
        buf: &mut [u8],
        r: Region,
        ri: usize,
        first: usize,
        end: usize,
        digits: u32,
        bits: Option<u64>,
        st: &mut ScanState,
        counts: &mut [u32],
        hits: &mut Hits,
    ) {
        if digits < self.min_digits {
            return;
        }
        let s = r.start as usize;
        let cell = &mut buf[s..r.end as usize];
        let mut on = self.digits;
        // A card has 13 digits at least.
        on.card &= digits >= 13;
        let mut h = DigitHits::default();
        detect::digit_run(cell, first - s, end - s, bits, on, &self.fmt, &mut h);
        if h.card | h.ssn | h.phone | h.ipv4 == 0 {
            return;
        }
        st.dirty = st.dirty.max(end);
        st.cover(end);
        for (rule, c) in [
            (Builtin::PaymentCard, h.card),
            (Builtin::Ssn, h.ssn),
            (Builtin::Phone, h.phone),
            (Builtin::Ipv4, h.ipv4),
        ] {
            if c > 0 {
                hits.add_at(rule, ri as u32, c as u64);
                counts[ri] += c;
                st.hits += c;
            }
        }
    }

    /// A `+` or `(` that may open a phone number: validate the digit run
    /// right after it (E.164 and `(415) 555-2671` forms, whose separators
    /// the candidate shapes do not cover). `bits` are the digit and the
    /// digit-or-glue masks of the block at `base`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn phone_opener(
        &self,
        buf: &mut [u8],
        r: Region,
        ri: usize,
        pos: usize,
        bits: (u64, u64),
        base: usize,
        st: &mut ScanState,
        counts: &mut [u32],
        hits: &mut Hits,
    ) {
        let first = pos + 1;
        let limit = (r.end as usize).min(first + 40);
        if first >= limit || !buf[first].is_ascii_digit() {
            return;
        }
        let j = first - base;
        if j < BLOCK && st.clean_from(first) {
            // The run from the masks (cleared outside the region): digits
            // and glue up to the first other byte, at most to `limit`.
            let x = bits.1 >> j;
            let run = (!x).trailing_zeros() as usize;
            let max = limit - first;
            if j + run < BLOCK || run >= max {
                let len = run.min(max);
                let d = bits.0 >> j;
                let digits = (d & (u64::MAX >> (64 - len))).count_ones();
                if digits >= 9 {
                    let run = Opening::new(buf, first, len, st);
                    self.digit_run(
                        buf,
                        r,
                        ri,
                        first,
                        first + len,
                        digits,
                        Some(d),
                        st,
                        counts,
                        hits,
                    );
                    run.done(buf, st);
                }
                return;
            }
        }
        let len = buf[first..limit]
            .iter()
            .position(|&b| !(b.is_ascii_digit() || super::classify::is_glue(b)))
            .unwrap_or(limit - first);
        let end = first + len;
        let digits = buf[first..end]
            .iter()
            .filter(|b| b.is_ascii_digit())
            .count() as u32;
        if digits >= 9 {
            let run = Opening::new(buf, first, len, st);
            self.digit_run(buf, r, ri, first, end, digits, None, st, counts, hits);
            run.done(buf, st);
        }
    }

    /// The e-mail validator for the `@` at `p` of `cell`, by AVX-512 in the
    /// scan copies compiled with the fast features (`F >= 2`, see
    /// `classify_chunk`).
    #[inline(always)]
    fn email<const F: u8>(&self, cell: &mut [u8], p: usize) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if F >= 2 {
            // SAFETY: the copies with `F >= 2` run only when `fast` is 2 or
            // 3: the CPU has AVX-512F/BW, BMI1, BMI2 and POPCNT
            // (`fast_scan`).
            return unsafe { detect::email_avx512(cell, p, &self.fmt) };
        }
        detect::email(cell, p, &self.fmt)
    }

    /// Every anchor but `@` (which `block_slow` validates itself).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn anchor(
        &self,
        buf: &mut [u8],
        r: Region,
        ri: usize,
        pos: usize,
        bits: (u64, u64),
        base: usize,
        st: &mut ScanState,
        counts: &mut [u32],
        hits: &mut Hits,
    ) {
        let f = &self.fmt;
        let on = |b: Builtin| self.on[b as usize];
        let s = r.start as usize;
        if matches!(buf[pos], b'+' | b'(') {
            self.phone_opener(buf, r, ri, pos, bits, base, st, counts, hits);
            return;
        }
        let cell = &mut buf[s..r.end as usize];
        let p = pos - s;
        let found: Option<(usize, Builtin)> = match cell[p] {
            b'J' => detect::jwt(cell, p, f).map(|e| (e, Builtin::Jwt)),
            b'z' => detect::google(cell, p, f).map(|e| (e, Builtin::GoogleApiKey)),
            b'%' => detect::email_encoded(cell, p, f).map(|e| (e, Builtin::Email)),
            b'_' => detect::underscore(cell, p, self.tokens, f).map(|(e, v)| (e, v.into())),
            b'-' => detect::dash_token(cell, p, self.tokens, f).map(|(e, v)| (e, v.into())),
            b'G' => detect::sendgrid(cell, p, f).map(|e| (e, Builtin::SendgridApiKey)),
            b'x' => detect::slack(cell, p, f).map(|e| (e, Builtin::SlackToken)),
            b'/' => detect::slack_webhook(cell, p, f).map(|e| (e, Builtin::SlackToken)),
            // Basic: the next letter is an `a`.
            b'B' | b'b' if cell.get(p + 1) == Some(&b'a') => {
                if on(Builtin::BearerToken) {
                    detect::basic(cell, p, f).map(|e| (e, Builtin::BearerToken))
                } else {
                    None
                }
            }
            // Bearer, BEGIN: the next letter is an `e`.
            b'B' | b'b' if !matches!(cell.get(p + 1), Some(b'e' | b'E')) => None,
            b'B' => {
                let pem = if on(Builtin::PrivateKey) {
                    detect::pem(cell, p, f)
                } else {
                    None
                };
                match pem {
                    Some(e) => Some((e, Builtin::PrivateKey)),
                    None if on(Builtin::BearerToken) => {
                        detect::bearer(cell, p, f).map(|e| (e, Builtin::BearerToken))
                    }
                    None => None,
                }
            }
            b'b' => detect::bearer(cell, p, f).map(|e| (e, Builtin::BearerToken)),
            b':' if cell.get(p + 1..p + 3) == Some(b"//") => {
                if on(Builtin::UrlPassword) {
                    super::named::url_password(cell, p, f.ch).map(|e| (e, Builtin::UrlPassword))
                } else {
                    None
                }
            }
            b'=' | b':' => {
                // (Not inside a named value already found: a value holding
                // `=` is walked once, not once per `=`.)
                let v = if pos >= st.named_until {
                    self.named_value(cell, p, s, ri)
                } else {
                    None
                };
                if let Some(v) = v {
                    st.named_until = v.end as usize;
                    if !st.defer(v) {
                        self.named_apply(buf, v, st, counts, hits);
                    }
                    return;
                }
                if cell[p] == b':' && on(Builtin::Ipv6) {
                    let (e, ok) = detect::ipv6(cell, p, f);
                    st.skip_until = st.skip_until.max(s + e);
                    ok.then_some((e, Builtin::Ipv6))
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some((end, rule)) = found {
            st.found(rule, ri, s + end, counts, hits);
        }
    }

    /// The value named by the key before the `=` or `:` at `p` of `cell`
    /// (region `ri`, from buffer offset `s`; see `super::named`) when a
    /// name rule with the `mask` or `keep_last` action matches the key:
    /// its span in the buffer and what to keep, to be
    /// masked at the end of the scan ([`Engine::named_end`]) unless a
    /// detector finds something in it first (`OPENAI_API_KEY=sk-proj-…`
    /// stays the detector's, with its prefix kept and its own count).
    #[inline(never)]
    fn named_value(&self, cell: &[u8], p: usize, s: usize, ri: usize) -> Option<Named> {
        if !self.named || p == 0 || !super::named::may_follow_key(cell[p - 1]) {
            return None;
        }
        let mut found = None;
        let a = super::named::assignment(cell, p, |key| {
            found = self
                .name_any
                .as_ref()
                .is_some_and(|any| any.is_match(key))
                .then(|| self.column_rule_by_name(key))
                .flatten();
            found.is_some()
        })?;
        let (rule, action) = found?;
        let keep = match action {
            ColumnAction::Mask => 0,
            ColumnAction::KeepLast(k) if !a.escaped => k,
            ColumnAction::KeepLast(_) => 0,
            ColumnAction::Hash | ColumnAction::Null => return None,
        };
        Some(Named {
            ri: ri as u32,
            start: (s + a.value.0) as u32,
            end: (s + a.value.1) as u32,
            keep,
            rule: rule.0,
            covered: false,
        })
    }

    /// Mask a named value (buffer offsets) unless it is masked already
    /// (a JSON member the name rules masked before the scan: not counted
    /// twice).
    #[inline(never)]
    fn named_apply(
        &self,
        buf: &mut [u8],
        v: Named,
        st: &mut ScanState,
        counts: &mut [u32],
        hits: &mut Hits,
    ) {
        let val = &mut buf[v.start as usize..v.end as usize];
        let Some(cut) = super::rows::masked_part(val, v.keep as usize) else {
            return;
        };
        let ch = self.fmt.ch;
        if val[..cut].iter().all(|&b| b == ch) {
            return;
        }
        val[..cut].fill(ch);
        hits.add_at(RuleId(v.rule), v.ri, 1);
        counts[v.ri as usize] += 1;
        st.hits += 1;
    }

    /// The named values of a scan that no detector found anything in.
    #[inline(never)]
    fn named_end(&self, buf: &mut [u8], st: &mut ScanState, counts: &mut [u32], hits: &mut Hits) {
        let (named, n) = (st.named, st.named_len as usize);
        st.named_len = 0;
        for v in &named[..n] {
            if !v.covered {
                self.named_apply(buf, *v, st, counts, hits);
            }
        }
    }
}

#[derive(Default)]
struct ScanState {
    /// Anchors before this position are inside something already handled.
    skip_until: usize,
    /// A digit run reaching the end of the previous block (if `active`).
    run: Run,
    /// Digit-run rewrites end at or before this position; with
    /// `skip_until` (which the other validators' rewrites end before), the
    /// bytes from `max(skip_until, dirty)` on are as classified.
    dirty: usize,
    hits: u32,
    /// The digit run `start..end` a phone opener validated last, while
    /// `hits` was still `hits` (see [`Engine::phone_opener`]): validating it
    /// again from its first digit would change nothing.
    opened: Opened,
    /// Named values waiting for the end of the scan (see
    /// [`Engine::named_value`]), the first `named_len`.
    named: [Named; 4],
    named_len: u8,
    /// The end of the last named value found: `=` and `:` before it are
    /// inside it.
    named_until: usize,
}

/// A value named by a key a name rule matches: its span in the buffer, its
/// region, the characters to keep, the rule, and whether a detector found a
/// value ending in it.
#[derive(Clone, Copy, Default)]
struct Named {
    ri: u32,
    start: u32,
    end: u32,
    keep: u16,
    rule: u8,
    covered: bool,
}

/// See [`ScanState::opened`].
#[derive(Clone, Copy, Default)]
struct Opened {
    start: usize,
    end: usize,
    hits: u32,
}

/// The digit run after a phone opener, as it was before the opener
/// validated it (at most 40 bytes: `Engine::phone_opener`).
struct Opening {
    start: usize,
    len: usize,
    hits: u32,
    bytes: [u8; 40],
}

impl Opening {
    #[inline(always)]
    fn new(buf: &[u8], start: usize, len: usize, st: &ScanState) -> Self {
        let mut bytes = [0; 40];
        bytes[..len].copy_from_slice(&buf[start..start + len]);
        Opening {
            start,
            len,
            hits: st.hits,
            bytes,
        }
    }

    /// After the opener validated the run: the block walk meets these
    /// digits again as part of the run of digits and glue they lie in.
    /// When that run is this one (it starts at `start`, with no digit
    /// between the stretch's start and the opener, and ends here, not cut
    /// at 40 bytes) and nothing was found since, validating it again would
    /// change nothing but the count: on unchanged bytes if nothing was
    /// found; from a masked first digit (returning at once); or, when
    /// something was found and the bytes are still as they were (a phone
    /// number that keeps all its digits: `phone_keep_last` at least their
    /// count), finding it again and counting it twice. `block_slow` skips
    /// it (`Opened::is` compares both ends and the hits).
    #[inline(always)]
    fn done(&self, buf: &[u8], st: &mut ScanState) {
        let (s, e) = (self.start, self.start + self.len);
        if st.hits == self.hits
            || !detect::digit_or_glue(buf[s])
            || buf[s..e] == self.bytes[..self.len]
        {
            st.opened = Opened {
                start: s,
                end: e,
                hits: st.hits,
            };
        }
    }
}

impl Opened {
    /// Whether the run `start..end` is the one a phone opener validated,
    /// with nothing found since (`hits`): validating it again would change
    /// nothing.
    #[inline(always)]
    fn is(&self, start: usize, end: usize, hits: u32) -> bool {
        self.hits == hits && self.start == start && self.end == end
    }
}

impl ScanState {
    /// A value found by `rule` in region `ri`, ending at buffer offset
    /// `end` (anchors before it are skipped).
    #[inline(always)]
    fn found(&mut self, rule: Builtin, ri: usize, end: usize, counts: &mut [u32], hits: &mut Hits) {
        hits.add_at(rule, ri as u32, 1);
        counts[ri] += 1;
        self.hits += 1;
        self.skip_until = self.skip_until.max(end);
        self.cover(end);
    }

    /// A detector found a value ending at `end`: the named values it ends
    /// in are its (see [`Engine::named_value`]).
    #[inline(always)]
    fn cover(&mut self, end: usize) {
        if self.named_len != 0 {
            self.cover_named(end);
        }
    }

    /// [`ScanState::cover`] when there are named values (out of line: the
    /// scan inlines `found` at every validator).
    #[cold]
    #[inline(never)]
    fn cover_named(&mut self, end: usize) {
        let end = end as u32;
        for v in &mut self.named[..self.named_len as usize] {
            v.covered |= v.start < end && end <= v.end;
        }
    }

    /// Keep a named value for the end of the scan; false when there is no
    /// room left (it is masked at once).
    #[inline(always)]
    fn defer(&mut self, v: Named) -> bool {
        let n = self.named_len as usize;
        if n == self.named.len() {
            return false;
        }
        self.named[n] = v;
        self.named_len += 1;
        true
    }

    /// Whether the bytes from `pos` on are unchanged since classification
    /// (so the block masks describe them).
    #[inline(always)]
    fn clean_from(&self, pos: usize) -> bool {
        pos >= self.skip_until && pos >= self.dirty
    }
}

#[derive(Clone, Copy, Default)]
struct Run {
    /// Its first digit.
    first: usize,
    /// Digits so far.
    digits: u32,
    /// Whether there is one (the other fields mean nothing otherwise).
    active: bool,
    /// Whether a candidate position lies in it so far (only if `active`).
    cand: bool,
}

impl Run {
    /// The run after a block at `base` with digit mask `d` and digit-or-glue
    /// mask `x` in which no candidate lies (nor in the run so far): the
    /// same run if the block is all digits and glue, else the last stretch
    /// of digits and glue if it reaches the block end and holds a digit
    /// (from its first digit). Without branches.
    #[inline(always)]
    fn carry(&mut self, d: u64, x: u64, base: usize) {
        let gap = !x;
        let cont = gap == 0 && self.active;
        // Bits above the highest byte that is neither digit nor glue (all
        // of them when there is none).
        let lz = gap.leading_zeros();
        let above = if lz == 0 { 0 } else { u64::MAX << (64 - lz) };
        let top = d & above;
        let first = base + top.trailing_zeros() as usize;
        self.first = if cont { self.first } else { first };
        self.digits = if cont { self.digits } else { 0 } + top.count_ones();
        self.active = cont | (top != 0);
        self.cand = false;
    }
}

/// What sends a byte of a block to a validator before any digit run is
/// looked at (see [`triggers`]).
struct Triggers {
    anchors: u64,
    aws: u64,
    iban: u64,
}

/// The triggers of a block, from its anchors (less those the
/// classification ruled out by their neighbours: see
/// `BlockMasks::reject`), glue, digit and capital masks and the next
/// block's digits and capitals; `on` = the AWS and IBAN bits of the
/// engine (`Engine::aws_bits`, `Engine::iban_bits`). One definition for
/// `Engine::gate`, `Engine::block_gated` and `Engine::scan_one_impl`, which
/// must agree: a block the gate lets pass without work is one
/// `block_slow` would find nothing in.
///
/// - Anchors, less the phone openers `+`, `(` not followed by a digit of
///   their region: `phone_opener` returns at once for those, and no
///   rewrite makes a digit of another byte. (`glue_not_dash`: they are the
///   anchors that are glue, with `-`, whose tokens, `sk-…`, `glpat-…`,
///   may go on with a letter.)
/// - `AKIA`/`ASIA` and an IBAN's country code start with two capitals in a
///   row (rare in prose: most capitals start a word): four capitals in a
///   row, and two capitals before two digits. Shapes of four bytes from
///   the pair masks, carried across the block end by the pairs of the next
///   block: one shift per term.
#[inline(always)]
fn triggers(
    anchors: u64,
    glue_not_dash: u64,
    digit: u64,
    upper: u64,
    digit_n: u64,
    upper_n: u64,
    (aws_bits, iban_bits): (u64, u64),
) -> Triggers {
    let pairs = upper & (upper >> 1 | upper_n << 63);
    let pairs_n = upper_n & upper_n >> 1;
    let d2 = digit & (digit >> 1 | digit_n << 63);
    let d2_n = digit_n & digit_n >> 1;
    Triggers {
        anchors: anchors & !(glue_not_dash & !(digit >> 1 | digit_n << 63)),
        aws: pairs & (pairs >> 2 | pairs_n << 62) & aws_bits,
        iban: pairs & (d2 >> 2 | d2_n << 62) & iban_bits,
    }
}

/// The starts of candidate shapes a block may hold, by the cheap superset
/// test of [`pre_shape`] in both windows (see `Engine::candidates`); both
/// zero when the block cannot hold one.
#[derive(Clone, Copy)]
struct Shapes {
    /// `pre_shape` of the block's window, and of the look-ahead window's
    /// starts inside the block.
    w0: u64,
    w1: u64,
    /// Space, dash or dot, in the block and the next one.
    sep_c: u64,
    sep_n: u64,
    /// `w0` and `w1` are [`may_shape`]'s starts (from the gate), not only
    /// [`pre_shape`]'s: `candidates` need not compute `may_shape` again.
    exact: bool,
}

impl Shapes {
    /// All ones when the block has enough digits for a shape to start in
    /// it, else 0: every candidate shape holds at least 7 digits (4 for
    /// IPv4) within its first 13 bytes, so fewer in the block and the next
    /// 12 bytes means no candidate starts here.
    #[inline(always)]
    fn on(e: &Engine, c: &BlockMasks, n: &BlockMasks) -> u64 {
        let enough = c.digit.count_ones() + (n.digit & 0xfff).count_ones() >= e.need;
        if enough {
            u64::MAX
        } else {
            0
        }
    }

    #[inline(always)]
    fn any(&self) -> bool {
        self.w0 | self.w1 != 0
    }
}

/// The masks of a chunk's blocks, one array per mask (see
/// `Engine::gate`), `L` blocks: a chunk's and the zero block after a full
/// one.
struct Lanes<const L: usize> {
    digit: [u64; L],
    glue: [u64; L],
    space: [u64; L],
    dash: [u64; L],
    dot: [u64; L],
    upper: [u64; L],
    anchor: [u64; L],
    reject: [u64; L],
}

impl<const L: usize> Default for Lanes<L> {
    fn default() -> Self {
        Lanes {
            digit: [0; L],
            glue: [0; L],
            space: [0; L],
            dash: [0; L],
            dot: [0; L],
            upper: [0; L],
            anchor: [0; L],
            reject: [0; L],
        }
    }
}

impl<const L: usize> MaskStore for Lanes<L> {
    #[inline(always)]
    fn set(&mut self, k: usize, m: BlockMasks) {
        self.digit[k] = m.digit;
        self.glue[k] = m.glue;
        self.space[k] = m.space;
        self.dash[k] = m.dash;
        self.dot[k] = m.dot;
        self.upper[k] = m.upper;
        self.anchor[k] = m.anchor;
        self.reject[k] = m.reject;
    }
    #[inline(always)]
    fn get(&self, k: usize) -> BlockMasks {
        BlockMasks {
            digit: self.digit[k],
            glue: self.glue[k],
            space: self.space[k],
            dash: self.dash[k],
            dot: self.dot[k],
            upper: self.upper[k],
            anchor: self.anchor[k],
            reject: self.reject[k],
        }
    }
}

impl<const L: usize> Lanes<L> {
    /// The lanes of `p` (block `k` from lane `k`; the blocks from 8 on and
    /// `reject`, which `p.anchor` has applied, zero), each array written
    /// whole by one vector store.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn from_planes(p: &Planes) -> Lanes<L> {
        let lane = |v| {
            let mut a = [0u64; L];
            // SAFETY: the CPU supports AVX-512F (this function's contract).
            unsafe { store_lanes(&mut a, v) };
            a
        };
        Lanes {
            digit: lane(p.digit),
            glue: lane(p.glue),
            space: lane(p.space),
            dash: lane(p.dash),
            dot: lane(p.dot),
            upper: lane(p.upper),
            anchor: lane(p.anchor),
            reject: [0; L],
        }
    }

    /// The lanes of `N` blocks from block `from`.
    #[inline(always)]
    fn view<const N: usize>(&self, from: usize) -> LaneView<'_, N> {
        fn v<const L: usize, const N: usize>(a: &[u64; L], from: usize) -> &[u64; N] {
            a[from..from + N].try_into().expect("N lanes")
        }
        let v = |a| v::<L, N>(a, from);
        LaneView {
            digit: v(&self.digit),
            glue: v(&self.glue),
            space: v(&self.space),
            dash: v(&self.dash),
            dot: v(&self.dot),
            upper: v(&self.upper),
            anchor: v(&self.anchor),
            reject: v(&self.reject),
        }
    }

    /// Keep only the bits in `keep` of block `k`.
    #[inline(always)]
    fn and(&mut self, k: usize, keep: u64) {
        let mut m = self.get(k);
        m.and(keep);
        self.set(k, m);
    }
}

/// The masks of `N` blocks, one array per mask, as the gate reads them.
#[derive(Clone, Copy)]
struct LaneView<'a, const N: usize> {
    digit: &'a [u64; N],
    glue: &'a [u64; N],
    space: &'a [u64; N],
    dash: &'a [u64; N],
    dot: &'a [u64; N],
    upper: &'a [u64; N],
    anchor: &'a [u64; N],
    reject: &'a [u64; N],
}

/// Where a chunk's block walk stands.
struct Walk<'a> {
    /// Digits of the block before the one processed (its last bit is all
    /// the shapes look at).
    prev_digit: &'a mut u64,
    st: &'a mut ScanState,
    cur: &'a mut Cursors,
}

/// What the gate computed for each block of a chunk (see `Engine::gate`):
/// the triggers, the shape starts of both windows (less the digit count),
/// and their union.
struct Gated<const N: usize> {
    anchors: [u64; N],
    aws: [u64; N],
    iban: [u64; N],
    w0: [u64; N],
    w1: [u64; N],
    work: [u64; N],
}

impl<const N: usize> Gated<N> {
    /// Whether the gate's shape starts are `may_shape`'s (else
    /// `pre_shape`'s): in the short chunk.
    const EXACT: bool = N == SHORT_BLOCKS;
}

impl<const N: usize> Default for Gated<N> {
    fn default() -> Self {
        Gated {
            anchors: [0; N],
            aws: [0; N],
            iban: [0; N],
            w0: [0; N],
            w1: [0; N],
            work: [0; N],
        }
    }
}

/// A value inside a larger buffer (a DataRow cell).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub start: u32,
    pub end: u32,
}

struct Ctx<'a> {
    regions: &'a [Region],
    base: usize,
}

/// Monotonic positions in the region list, one per kind of candidate (each
/// kind is visited in increasing position order).
#[derive(Default)]
struct Cursors {
    anchor: Cursor,
    aws: Cursor,
    iban: Cursor,
    run: Cursor,
}

#[derive(Default)]
struct Cursor(usize);

impl Cursor {
    /// Index of the region holding `pos` (which the masks guarantee is in
    /// one); moves forward only.
    #[inline]
    fn seek(&mut self, regions: &[Region], pos: usize) -> usize {
        while regions[self.0].end as usize <= pos {
            self.0 += 1;
        }
        self.0
    }
}

/// Chunk size for spans this short (DataRows, notes): one AVX-512 vector
/// of gate work per term.
const SHORT_BLOCKS: usize = 8;

/// The most regions a row may have for [`Engine::scan_regions_phones`]
/// to take its phone cells out of the scan (a bit each, and arrays of this
/// many on the stack); rows with more are scanned whole.
const PHONE_ROW_MAX: usize = 32;

/// First byte of the look-ahead window: a shape of at most 13 bytes that
/// starts in a block lies wholly in the block or in the 64 bytes from here.
const AHEAD: u32 = 52;
/// The window bits that are starts inside the block (bytes 52–63).
const AHEAD_LOW: u64 = (1 << (64 - AHEAD)) - 1;

/// The bits of bytes `AHEAD..AHEAD + 64` of a block whose bits are `cur`
/// followed by a block whose bits are `next`.
#[inline(always)]
fn ahead(cur: u64, next: u64) -> u64 {
    cur >> AHEAD | next << (64 - AHEAD)
}

/// Bits `i` of a block whose bytes `i + 1 ..= i + 9` are all set in `x`
/// (the block's bits) followed by `xn` (the next block's): doubling runs
/// of set bits across the block end.
#[inline(always)]
pub(super) fn nine_after(x: u64, xn: u64) -> u64 {
    let p2 = x & (x >> 1 | xn << 63);
    let p2n = xn & xn >> 1;
    let p4 = p2 & (p2 >> 2 | p2n << 62);
    let p4n = p2n & p2n >> 2;
    let p8 = p4 & (p4 >> 4 | p4n << 60);
    let p8n = p4n & p4n >> 4;
    // Bytes `i ..= i + 8`.
    let p9 = p8 & (x >> 8 | xn << 56);
    let p9n = p8n & xn >> 8;
    p9 >> 1 | p9n << 63
}

/// The masks the candidate shapes are made of, in one 64-bit window.
struct Window {
    digit: u64,
    space: u64,
    dash: u64,
    /// Space, dash or dot.
    sep: u64,
    /// Digits joined by single spaces / dashes / dots.
    sp: u64,
    da: u64,
    dt: u64,
}

impl Window {
    /// Starts of candidate shapes (see `Engine::candidates`) in the window.
    #[inline(always)]
    fn shapes(&self, ipv4: bool) -> u64 {
        let long13 = |r: u64| {
            let r2 = r & r >> 1;
            let r4 = r2 & r2 >> 2;
            let r8 = r4 & r4 >> 4;
            r8 & r4 >> 8 & r >> 12
        };
        // (Bare digit runs are inside each of these.)
        let mut cand = long13(self.sp) | long13(self.da) | long13(self.dt);
        let dw = self.digit;
        // d d d . d d . d d d d  /  d d d . d d d . d d d d
        let d3 = dw & dw >> 1 & dw >> 2;
        let ssn_tail = dw >> 4 & dw >> 5 & dw >> 7 & dw >> 8 & dw >> 9 & dw >> 10;
        let (dash, space) = (self.dash, self.space);
        cand |= d3 & ssn_tail & ((dash >> 3 & dash >> 6) | (space >> 3 & space >> 6));
        let sep = self.sep;
        cand |= d3
            & sep >> 3
            & dw >> 4
            & dw >> 5
            & dw >> 6
            & sep >> 7
            & dw >> 8
            & dw >> 9
            & dw >> 10
            & dw >> 11;
        // d d d d d . d d d d d (trunk-0 national numbers of two groups:
        // `01632 960123`, `01234 56789`).
        let d5 = d3 & dw >> 3 & dw >> 4;
        cand |= d5 & sep >> 5 & d5 >> 6;
        cand |= national(dw, sep);
        if ipv4 {
            let dt = self.dt;
            let r2 = dt & dt >> 1;
            let r4 = r2 & r2 >> 2;
            cand |= r4 & r2 >> 4 & dt >> 6;
        }
        cand
    }
}

/// A superset of [`may_shape`]: starts of 13 bytes of digits and
/// separators of any kind, of 12 such bytes from digit to digit, of
/// `dd?ddddddd`, and of the frames `ddd?dd??ddd` (separator at
/// 3) and `ddddd?ddddd` (at 5), tested together as `ddd?d???ddd`.
/// Some 20 instructions; dates and prices followed by a word (`2024-05-12
/// to`, `12.50 EUR`) have neither.
#[inline(always)]
fn pre_shape(digit: u64, sep: u64) -> u64 {
    let g = digit | sep;
    let g2 = g & g >> 1;
    let g4 = g2 & g2 >> 2;
    let g8 = g4 & g4 >> 4;
    let d3 = digit & digit >> 1 & digit >> 2;
    // (`ddd?dd??ddd` and `ddddd?ddddd` share `ddd?d???ddd` with a
    // separator at 3 or 5; `dd?dddd?dddd` and `dddd?ddd?ddd` are 12 bytes
    // of digits and separators from digit to digit.)
    let g12 = g8 & g4 >> 8;
    let d2 = digit & digit >> 1;
    (g12 & (g >> 12 | digit & digit >> 11))
        | (d3 & digit >> 4 & d3 >> 8 & (sep >> 3 | sep >> 5))
        | (d2 & sep >> 2 & d3 >> 3 & d3 >> 6 & digit >> 9)
}

/// Starts of the shapes of ten-digit national numbers with a trunk 0 that
/// the others miss: `dd?ddddddd` (a subscriber number of seven digits or
/// more: `030 12345678`, `020-1234567`), `dd?dddd?dddd` (`03-1234-5678`,
/// `02 9876 5432`) and `dddd?ddd?ddd` (`0412 345 678`), separators any of
/// space, dash, dot.
#[inline(always)]
fn national(d: u64, sep: u64) -> u64 {
    let d2 = d & d >> 1;
    let d3 = d2 & d >> 2;
    let d4 = d2 & d2 >> 2;
    let long = d2 & sep >> 2 & d4 >> 3 & d3 >> 7;
    let two_four = d2 & sep >> 2 & d4 >> 3 & sep >> 7 & d4 >> 8;
    let four_three = d4 & sep >> 4 & d3 >> 5 & sep >> 8 & d3 >> 9;
    long | two_four | four_three
}

/// A superset of [`Window::shapes`] without IPv4, from the plain masks of
/// one window: starts of 13 bytes of digits and one kind of separator (the
/// runs of 13, joined or not by single separators), and of the frame the
/// SSN and North American phone shapes share (`ddd?dd??ddd`), and of
/// `ddddd?ddddd` (two-group national numbers), and of [`national`]. Some 50
/// instructions; digits in dates and times (`2024-03-15 10:22`, separators
/// of two kinds) pass the cheaper test of [`pre_shape`] but not this.
#[inline(always)]
fn may_shape(digit: u64, space: u64, dash: u64, dot: u64) -> u64 {
    let long13 = |r: u64| {
        let r2 = r & r >> 1;
        let r4 = r2 & r2 >> 2;
        let r8 = r4 & r4 >> 4;
        r8 & r4 >> 8 & r >> 12
    };
    let d = digit;
    let frame = d
        & d >> 1
        & d >> 2
        & (space | dash | dot) >> 3
        & d >> 4
        & d >> 5
        & d >> 8
        & d >> 9
        & d >> 10;
    let d5 = d & d >> 1 & d >> 2 & d >> 3 & d >> 4;
    let five_five = d5 & (space | dash | dot) >> 5 & d5 >> 6;
    long13(d | space)
        | long13(d | dash)
        | long13(d | dot)
        | frame
        | five_five
        | national(d, space | dash | dot)
}

/// Which compiled copy of the scan the kernel can use (see `Engine::fast`):
/// 2 for AVX-512, 1 for AVX2 (both need BMI1, BMI2 and POPCNT), else 0.
fn fast_scan(kernel: Kernel) -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        let bmi = std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("popcnt");
        // (VBMI and GFNI build the masks of short spans as vectors: Ice
        // Lake and later, Zen 4 and later. Skylake-SP and Cascade Lake have
        // AVX-512BW without them.)
        let planes = std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("gfni");
        match kernel {
            Kernel::Avx512 if bmi && planes && kernel.available() => 3,
            Kernel::Avx512 if bmi && kernel.available() => 2,
            Kernel::Avx2 if bmi && kernel.available() => 1,
            _ => 0,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kernel;
        0
    }
}

/// The byte next to a letter anchor at `pos` (in region `r`) fits one of
/// the prefixes that anchor stands for: `eyJ`, `AIza`, the `_` of
/// `gh?_` / `github_` / `sk_` / `rk_` / `whsec_` / `hf_` / `npm_` /
/// `shpat_` / `shpss_` / `do?_` / `glc_`, the `-` of `sk-` / `gl…-` /
/// `PMAK-` / `NRAK-` / `…-KEY-`, `SG.`, `xox` / `xapp`,
/// `Be…` / `be…` / `Ba…` / `ba…`, `%40`, and the `s/` of a Slack webhook's
/// `services/` (`workflows/`, `triggers/`). When it does not, the
/// validator would find nothing (each checks these bytes first), so the
/// call is skipped. Other anchors always go to their validator.
#[inline(always)]
fn may_anchor(buf: &[u8], r: Region, pos: usize) -> bool {
    /// `bytes` as a set of ASCII bytes (bit `b` for byte `b`): one shift
    /// and test per lookup, however many bytes.
    const fn set(bytes: &[u8]) -> u128 {
        let mut m = 0u128;
        let mut i = 0;
        while i < bytes.len() {
            m |= 1 << bytes[i];
            i += 1;
        }
        m
    }
    let has = |set: u128, b: u8| b < 128 && set >> b & 1 != 0;
    let (s, e) = (r.start as usize, r.end as usize);
    let before = |c: u128| pos >= s + 2 && has(c, buf[pos - 1]);
    let after = |c: u128| pos + 1 < e && has(c, buf[pos + 1]);
    match buf[pos] {
        b'J' => before(const { set(b"y") }),
        b'z' => before(const { set(b"I") }),
        b'_' => before(const { set(b"pousrbkcfmt") }),
        b'-' => before(const { set(b"ktsKY") }),
        // (`SG.`: one byte before, which may start the value.)
        b'G' => pos > s && buf[pos - 1] == b'S' && after(const { set(b".") }),
        b'x' => after(const { set(b"oa") }),
        b'%' => after(const { set(b"4") }) && buf.get(pos + 2) == Some(&b'0') && pos + 2 < e,
        b'B' | b'b' => after(const { set(b"eEa") }),
        b'/' => before(const { set(b"s") }) && after(const { set(b"T") }),
        _ => true,
    }
}

/// [`membership`] of the 8 blocks from `base` at once, lane `k` for the
/// block at `base + 64k`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn membership8(regions: &[Region], base: usize) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let end = base + SHORT_BLOCKS * BLOCK;
    // SAFETY (every intrinsic below): the CPU supports AVX-512F (this
    // function's contract).
    unsafe {
        let b = _mm512_set1_epi64(base as i64);
        let starts = _mm512_add_epi64(b, _mm512_setr_epi64(0, 64, 128, 192, 256, 320, 384, 448));
        let (zero, ones) = (_mm512_setzero_si512(), _mm512_set1_epi64(-1));
        // Ones from the offset of `at` in each block on (none for an
        // offset of 64 or more: `vpsllvq` shifts those out).
        let from = |at: u32| {
            let off = _mm512_sub_epi64(_mm512_set1_epi64(at as i64), starts);
            _mm512_sllv_epi64(ones, _mm512_max_epi64(off, zero))
        };
        let mut bits = zero;
        for r in regions
            .iter()
            .skip_while(|r| r.end as usize <= base)
            .take_while(|r| (r.start as usize) < end)
        {
            bits = _mm512_or_si512(bits, _mm512_andnot_si512(from(r.end), from(r.start)));
        }
        bits
    }
}

/// Bits of the block at `base` that lie inside some region.
#[inline(always)]
pub(super) fn membership(regions: &[Region], cursor: &mut usize, base: usize) -> u64 {
    let end = base + BLOCK;
    while *cursor < regions.len() && (regions[*cursor].end as usize) <= base {
        *cursor += 1;
    }
    // (Most blocks of a long value lie wholly in its region.)
    if let Some(r) = regions.get(*cursor) {
        if r.start as usize <= base && r.end as usize >= end {
            return u64::MAX;
        }
    }
    let mut bits = 0u64;
    let mut i = *cursor;
    while i < regions.len() && (regions[i].start as usize) < end {
        let s = (regions[i].start as usize).max(base) - base;
        let e = (regions[i].end as usize).min(end) - base;
        if e > s {
            let len = e - s;
            let ones = if len == 64 {
                u64::MAX
            } else {
                (1u64 << len) - 1
            };
            bits |= ones << s;
        }
        i += 1;
    }
    bits
}
