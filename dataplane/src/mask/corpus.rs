//! Generated test data for the masking engine, shared by the property tests
//! and the criterion benchmark (`bench/benches/mask.rs`): valid (and
//! deliberately invalid) sensitive values, realistic clean values, and a
//! realistic `orders` result set with sensitive values at a realistic
//! density. Deterministic: everything is drawn from a seeded [`Rng`].
//!
//! Not part of the data plane proper; public only so the bench crate can use
//! it.

/// SplitMix64: small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
    pub fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len())]
    }
    pub fn digit(&mut self) -> char {
        (b'0' + self.below(10) as u8) as char
    }
    pub fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| self.digit()).collect()
    }
    /// Between `lo` and `hi` random digits.
    pub fn digits_range(&mut self, lo: usize, hi: usize) -> String {
        let n = self.range(lo, hi);
        self.digits(n)
    }
    /// Between `lo` and `hi` random characters from `alphabet`.
    pub fn alphabet_range(&mut self, alphabet: &[u8], lo: usize, hi: usize) -> String {
        let n = self.range(lo, hi);
        self.from_alphabet(alphabet, n)
    }
    pub fn from_alphabet(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const UPPER_DIGIT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const HEX: &[u8] = b"0123456789abcdef";

const FIRST: &[&str] = &[
    "Maria",
    "John",
    "Aiko",
    "Oluwaseun",
    "Chen",
    "Fatima",
    "Liam",
    "Sofia",
    "Mateo",
    "Priya",
    "Noah",
    "Emma",
    "Jakob",
    "Zoë",
    "Mohammed",
    "Ana",
    "Lucas",
    "Ingrid",
    "Kwame",
    "Olivia",
];
const LAST: &[&str] = &[
    "Garcia", "Smith", "Tanaka", "Adeyemi", "Wang", "Haddad", "O'Neil", "Rossi", "Müller", "Patel",
    "Johnson", "Dubois", "Nowak", "Silva", "Kowalski", "Brown", "Jensen", "Kim",
];
const STREETS: &[&str] = &[
    "Elm Street",
    "Main St",
    "Rue de Rivoli",
    "Baker Street",
    "Hauptstraße",
    "Calle Mayor",
    "Oak Avenue",
    "Sunset Blvd",
    "Via Roma",
    "Market Street",
];
const CITIES: &[&str] = &[
    "Springfield, IL",
    "London",
    "Paris",
    "Berlin",
    "Madrid",
    "Austin, TX",
    "Toronto, ON",
    "Milano",
    "Kraków",
    "Osaka",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp.example.net",
    "gmail.com",
    "outlook.co.uk",
    "company.io",
    "uni-example.edu",
];
const WORDS: &[&str] = &[
    "customer",
    "called",
    "about",
    "the",
    "order",
    "refund",
    "approved",
    "shipping",
    "delayed",
    "package",
    "delivered",
    "to",
    "front",
    "desk",
    "please",
    "check",
    "invoice",
    "items",
    "of",
    "replacement",
    "sent",
    "on",
    "warehouse",
    "ticket",
    "escalated",
    "by",
    "agent",
    "notes",
    "price",
    "match",
    "requested",
    "for",
    "size",
    "color",
    "returned",
    "and",
    "credited",
];
const STATUS: &[&str] = &[
    "pending",
    "paid",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
];

// ---------------------------------------------------------------------------
// Sensitive values.

/// The kinds of sensitive value the default profile must mask (IP addresses
/// only with the detectors turned on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Card,
    Iban,
    Ssn,
    Email,
    Phone,
    AwsKey,
    Jwt,
    GithubToken,
    SlackToken,
    StripeKey,
    GoogleApiKey,
    Bearer,
    PrivateKey,
    OpenAiKey,
    AnthropicKey,
    GitlabToken,
    HuggingfaceToken,
    NpmToken,
    ShopifyToken,
    DigitaloceanToken,
    GrafanaToken,
    PostmanApiKey,
    NewrelicApiKey,
    AgeSecretKey,
    SendgridApiKey,
    Ipv4,
    Ipv6,
}

impl Kind {
    /// Every kind, in the order the generators draw them.
    pub const ALL: &'static [Kind] = &[
        Kind::Card,
        Kind::Iban,
        Kind::Ssn,
        Kind::Email,
        Kind::Phone,
        Kind::AwsKey,
        Kind::Jwt,
        Kind::GithubToken,
        Kind::SlackToken,
        Kind::StripeKey,
        Kind::GoogleApiKey,
        Kind::Bearer,
        Kind::PrivateKey,
        Kind::OpenAiKey,
        Kind::AnthropicKey,
        Kind::GitlabToken,
        Kind::HuggingfaceToken,
        Kind::NpmToken,
        Kind::ShopifyToken,
        Kind::DigitaloceanToken,
        Kind::GrafanaToken,
        Kind::PostmanApiKey,
        Kind::NewrelicApiKey,
        Kind::AgeSecretKey,
        Kind::SendgridApiKey,
        Kind::Ipv4,
        Kind::Ipv6,
    ];
    /// Masked by the default profile: all but the IP addresses (the last
    /// two of [`Kind::ALL`]).
    pub const DEFAULT_ON: &'static [Kind] = Kind::ALL.split_at(Kind::ALL.len() - 2).0;
}

/// A valid value of `kind`.
pub fn sensitive(kind: Kind, r: &mut Rng) -> String {
    match kind {
        Kind::Card => card(r),
        Kind::Iban => iban(r),
        Kind::Ssn => ssn(r),
        Kind::Email => email(r),
        Kind::Phone => phone(r),
        Kind::AwsKey => format!(
            "{}{}",
            r.pick(&["AKIA", "ASIA"]),
            r.from_alphabet(UPPER_DIGIT, 16)
        ),
        Kind::Jwt => jwt(r),
        Kind::GithubToken => {
            if r.chance(0.8) {
                format!(
                    "{}{}",
                    r.pick(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]),
                    r.from_alphabet(ALNUM, 36)
                )
            } else {
                format!(
                    "github_pat_{}_{}",
                    r.from_alphabet(ALNUM, 22),
                    r.from_alphabet(ALNUM, 59)
                )
            }
        }
        Kind::SlackToken => {
            if r.chance(0.8) {
                format!(
                    "{}{}-{}-{}",
                    r.pick(&["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-"]),
                    r.digits(12),
                    r.digits(13),
                    r.from_alphabet(ALNUM, 24)
                )
            } else {
                format!(
                    "xapp-1-{}-{}-{}",
                    r.from_alphabet(ALNUM, 11),
                    r.digits(13),
                    r.from_alphabet(ALNUM, 64)
                )
            }
        }
        Kind::StripeKey => format!(
            "{}{}",
            r.pick(&["sk_live_", "sk_test_", "rk_live_", "rk_test_"]),
            r.alphabet_range(ALNUM, 24, 99)
        ),
        Kind::GoogleApiKey => format!("AIza{}", r.from_alphabet(B64URL, 35)),
        Kind::Bearer => {
            let tok = if r.chance(0.3) {
                jwt(r)
            } else {
                r.alphabet_range(B64URL, 20, 64)
            };
            format!("{} {tok}", r.pick(&["Bearer", "bearer", "BEARER"]))
        }
        Kind::PrivateKey => pem(r),
        // (Each with a digit and a capital, as the detector requires.)
        Kind::OpenAiKey => match r.below(3) {
            0 => format!(
                "sk-proj-{}{}{}",
                r.from_alphabet(B64URL, 154),
                r.digits(1),
                r.from_alphabet(UPPER, 1)
            ),
            1 => format!(
                "{}{}{}{}",
                r.pick(&["sk-svcacct-", "sk-admin-"]),
                r.from_alphabet(UPPER, 1),
                r.digits(1),
                r.alphabet_range(B64URL, 58, 158)
            ),
            // The legacy form: 48 letters and digits, `T3BlbkFJ` in the
            // middle.
            _ => format!(
                "sk-{}T3BlbkFJ{}",
                r.from_alphabet(ALNUM, 20),
                r.from_alphabet(ALNUM, 20)
            ),
        },
        Kind::AnthropicKey => format!(
            "{}{}AA",
            r.pick(&["sk-ant-api03-", "sk-ant-admin01-"]),
            r.from_alphabet(B64URL, 93)
        ),
        Kind::GitlabToken => format!(
            "{}-{}",
            r.pick(&["glpat", "glpat", "gldt", "glptt", "glrt"]),
            r.from_alphabet(B64URL, 20)
        ),
        Kind::HuggingfaceToken => format!("hf_{}", r.from_alphabet(ALNUM, 34)),
        Kind::NpmToken => format!("npm_{}", r.from_alphabet(ALNUM, 36)),
        Kind::ShopifyToken => format!(
            "{}{}",
            r.pick(&["shpat_", "shpss_"]),
            r.from_alphabet(HEX, 32)
        ),
        Kind::DigitaloceanToken => format!(
            "{}_v1_{}",
            r.pick(&["dop", "doo", "dor"]),
            r.from_alphabet(HEX, 64)
        ),
        Kind::GrafanaToken => format!(
            "glc_{}{}",
            r.alphabet_range(B64, 32, 160),
            r.pick(&["", "=", "=="])
        ),
        Kind::PostmanApiKey => format!(
            "PMAK-{}-{}",
            r.from_alphabet(HEX, 24),
            r.from_alphabet(HEX, 34)
        ),
        Kind::NewrelicApiKey => format!("NRAK-{}", r.from_alphabet(UPPER_DIGIT, 27)),
        Kind::AgeSecretKey => format!(
            "AGE-SECRET-KEY-1{}",
            r.from_alphabet(b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)
        ),
        Kind::SendgridApiKey => format!(
            "SG.{}.{}",
            r.from_alphabet(B64URL, 22),
            r.from_alphabet(B64URL, 43)
        ),
        Kind::Ipv4 => format!(
            "{}.{}.{}.{}",
            r.range(1, 255),
            r.below(256),
            r.below(256),
            r.range(1, 254)
        ),
        Kind::Ipv6 => ipv6(r),
    }
}

/// Luhn check digit for `digits` (without it).
fn luhn_digit(digits: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        let mut d = (c - b'0') as u32;
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

/// Card number digits with a brand prefix, valid Luhn (or, with
/// `valid = false`, the wrong check digit).
pub fn card_digits(r: &mut Rng, valid: bool) -> String {
    let (prefix, len): (String, usize) = match r.below(9) {
        0 => ("4".into(), *r.pick(&[&16usize, &16, &13, &19])),
        1 => (format!("5{}", r.range(1, 5)), 16),
        2 => (format!("{}", r.range(2221, 2720)), 16),
        3 => (r.pick(&["34", "37"]).into(), 15),
        4 => ("6011".into(), r.range(16, 19)),
        5 => (format!("{}", r.range(3528, 3589)), 16),
        6 => ("36".into(), 14),
        7 => ("62".into(), r.range(16, 19)),
        _ => (format!("{}", r.range(644, 649)), 16),
    };
    let mut d: Vec<u8> = prefix.into_bytes();
    while d.len() < len - 1 {
        d.push(r.digit() as u8);
    }
    let mut check = luhn_digit(&d);
    if !valid {
        check = (check + 1 + r.below(9) as u8) % 10;
    }
    d.push(b'0' + check);
    String::from_utf8(d).unwrap()
}

/// Group digits with a separator: 4-4-4-4… (Amex 4-6-5).
fn group(d: &str, sep: &str) -> String {
    let sizes: &[usize] = if d.len() == 15 {
        &[4, 6, 5]
    } else {
        &[4, 4, 4, 4, 4]
    };
    let mut out = String::new();
    let mut at = 0;
    for &s in sizes {
        if at >= d.len() {
            break;
        }
        if at > 0 {
            out.push_str(sep);
        }
        let e = (at + s).min(d.len());
        out.push_str(&d[at..e]);
        at = e;
    }
    out
}

pub fn card(r: &mut Rng) -> String {
    let d = card_digits(r, true);
    format_card(r, &d)
}

pub fn format_card(r: &mut Rng, d: &str) -> String {
    match r.below(3) {
        0 => d.to_string(),
        1 => group(d, " "),
        _ => group(d, "-"),
    }
}

pub fn ssn_parts(r: &mut Rng) -> (u32, u32, u32) {
    let mut area = r.range(1, 899) as u32;
    if area == 666 {
        area = 665;
    }
    (area, r.range(1, 99) as u32, r.range(1, 9999) as u32)
}

pub fn ssn(r: &mut Rng) -> String {
    let (a, g, s) = ssn_parts(r);
    let sep = if r.chance(0.85) { "-" } else { " " };
    format!("{a:03}{sep}{g:02}{sep}{s:04}")
}

/// An SSN-shaped value with an impossible area, group or serial.
pub fn ssn_invalid(r: &mut Rng) -> String {
    let (a, g, s) = ssn_parts(r);
    match r.below(4) {
        0 => format!("000-{g:02}-{s:04}"),
        1 => format!("666-{g:02}-{s:04}"),
        2 => format!("{:03}-{g:02}-{s:04}", r.range(900, 999)),
        _ => format!("{a:03}-00-{s:04}"),
    }
}

fn mod97(s: &str) -> u32 {
    s.bytes().fold(0u32, |rem, c| {
        if c.is_ascii_digit() {
            (rem * 10 + (c - b'0') as u32) % 97
        } else {
            (rem * 100 + (c - b'A' + 10) as u32) % 97
        }
    })
}

/// A valid IBAN (with `valid = false`: wrong check digits), compact or in
/// groups of four.
pub fn iban_with(r: &mut Rng, valid: bool) -> String {
    let countries: Vec<([u8; 2], usize)> = super::detect::iban_countries().collect();
    let (cc, len) = countries[r.below(countries.len())];
    let cc = std::str::from_utf8(&cc).unwrap().to_string();
    let letters = matches!(
        cc.as_str(),
        "GB" | "NL" | "IE" | "BG" | "MT" | "QA" | "JO" | "KW"
    );
    let mut bban = String::new();
    if letters {
        bban.push_str(&r.from_alphabet(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4));
    }
    while bban.len() < len - 4 {
        bban.push(r.digit());
    }
    let rem = mod97(&format!("{bban}{cc}00"));
    let mut check = 98 - rem;
    if !valid {
        check = (check + 1 + r.below(96) as u32) % 97;
        if check < 2 {
            check += 2;
        }
        if check == 98 - rem {
            check = if check == 2 { 3 } else { 2 };
        }
    }
    let compact = format!("{cc}{check:02}{bban}");
    if r.chance(0.5) {
        compact
    } else {
        compact
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn iban(r: &mut Rng) -> String {
    iban_with(r, true)
}

pub fn email(r: &mut Rng) -> String {
    let first = ascii_name(r.pick(FIRST));
    let last = ascii_name(r.pick(LAST));
    let local = match r.below(5) {
        0 => format!("{first}.{last}"),
        1 => format!("{}{}", &first[..1], last),
        2 => format!("{first}_{}", r.digits_range(2, 4)),
        3 => format!("{first}+{}", r.pick(&["news", "orders", "x"])),
        _ => r.alphabet_range(b"abcdefghijklmnopqrstuvwxyz0123456789", 3, 16),
    };
    format!("{local}@{}", r.pick(DOMAINS))
}

fn ascii_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_lowercase()
}

pub fn phone(r: &mut Rng) -> String {
    let npa = format!("{}{}", r.range(2, 9), r.digits(2));
    let nxx = format!("{}{}", r.range(2, 9), r.digits(2));
    let line = r.digits(4);
    match r.below(9) {
        0 => format!("+1 {npa} {nxx} {line}"),
        1 => format!("+1{npa}{nxx}{line}"),
        2 => format!("({npa}) {nxx}-{line}"),
        3 => format!("{npa}-{nxx}-{line}"),
        4 => format!("{npa}.{nxx}.{line}"),
        5 => format!("+44 {} {} {}", r.range(20, 79), r.digits(4), r.digits(4)),
        6 => format!("0{} {} {}", r.range(20, 79), r.digits(4), r.digits(4)),
        7 => format!(
            "0{} {} {} {} {}",
            r.range(1, 9),
            r.digits(2),
            r.digits(2),
            r.digits(2),
            r.digits(2)
        ),
        _ => format!("+49 {} {}", r.range(30, 89), r.digits(8)),
    }
}

fn b64url_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn jwt(r: &mut Rng) -> String {
    let header = b64url_of(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = format!(
        r#"{{"sub":"{}","iat":{}}}"#,
        r.digits(8),
        1_700_000_000 + r.below(1 << 24)
    );
    format!(
        "{header}.{}.{}",
        b64url_of(payload.as_bytes()),
        r.from_alphabet(B64URL, 43)
    )
}

pub fn pem(r: &mut Rng) -> String {
    let label = r.pick(&[
        "RSA PRIVATE KEY",
        "PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
    ]);
    let mut s = format!("-----BEGIN {label}-----\n");
    for _ in 0..r.range(2, 8) {
        s.push_str(&r.from_alphabet(B64, 64));
        s.push('\n');
    }
    s.push_str(&r.alphabet_range(B64, 4, 60));
    s.push_str("==\n");
    s.push_str(&format!("-----END {label}-----"));
    s
}

pub fn ipv6(r: &mut Rng) -> String {
    let groups: Vec<String> = (0..8).map(|_| format!("{:x}", r.below(0x10000))).collect();
    match r.below(3) {
        0 => groups.join(":"),
        1 => format!("2001:db8::{}", groups[7]),
        _ => format!("fe80::{}:{}", groups[6], groups[7]),
    }
}

// ---------------------------------------------------------------------------
// Surroundings and clean values.

/// Delimiters put between a value and random text around it.
const DELIMS: &[&str] = &[
    " ", "\t", "\n", ", ", "; ", " (", ") ", "[", "] ", "\"", "'", " = ", "=", " / ", "|", ": ",
];

/// Random filler text: words, numbers, punctuation. Ends (or starts, for a
/// suffix) with a letter, so the delimiter next to the value is not glued
/// to a number (`7 06 12 34 56 78` is ambiguous to anyone).
pub fn filler(r: &mut Rng, max_len: usize) -> String {
    let mut s = String::new();
    let target = r.below(max_len + 1);
    while s.len() < target {
        match r.below(6) {
            0 => s.push_str(&r.digits_range(1, 6)),
            1 => s.push_str(r.pick(&[".", ",", "!", "?", ":", "-", "#", "%", "&"])),
            2 => s.push_str(r.pick(FIRST)),
            _ => s.push_str(r.pick(WORDS)),
        }
        s.push(' ');
    }
    if !s.is_empty() {
        s.push_str(r.pick(WORDS));
    }
    s
}

/// `value` inside random text: returns the cell and the value's offset.
pub fn surround(r: &mut Rng, value: &str, max_filler: usize) -> (String, usize) {
    let mut cell = String::new();
    if r.chance(0.8) {
        cell.push_str(&filler(r, max_filler));
        cell.push_str(r.pick(DELIMS));
    }
    let at = cell.len();
    cell.push_str(value);
    if r.chance(0.8) {
        cell.push_str(r.pick(DELIMS));
        let f = filler(r, max_filler);
        cell.push_str(f.trim_start_matches(|c: char| !c.is_ascii_alphabetic()));
    }
    (cell, at)
}

pub fn name(r: &mut Rng) -> String {
    format!("{} {}", r.pick(FIRST), r.pick(LAST))
}

pub fn address(r: &mut Rng) -> String {
    match r.below(3) {
        0 => format!(
            "{} {}, {} {}",
            r.range(1, 9999),
            r.pick(STREETS),
            r.pick(CITIES),
            r.digits(5)
        ),
        1 => format!(
            "{} {}, Apt {}{}, {}",
            r.range(1, 999),
            r.pick(STREETS),
            r.range(1, 40),
            r.pick(&["", "A", "B"]),
            r.pick(CITIES)
        ),
        _ => format!(
            "{} {}, {} {}",
            r.pick(STREETS),
            r.range(1, 200),
            r.digits(5),
            r.pick(CITIES)
        ),
    }
}

pub fn timestamp(r: &mut Rng) -> String {
    let (y, mo, d, h, mi, s) = (
        r.range(2015, 2026),
        r.range(1, 12),
        r.range(1, 28),
        r.below(24),
        r.below(60),
        r.below(60),
    );
    match r.below(4) {
        0 => format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        1 => format!(
            "{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:06}+00",
            r.below(1_000_000)
        ),
        2 => format!("{y}-{mo:02}-{d:02}"),
        _ => format!("{d:02}/{mo:02}/{y} {h:02}:{mi:02}"),
    }
}

pub fn order_ref(r: &mut Rng) -> String {
    match r.below(5) {
        0 => format!("ORD-{}-{}", r.range(2015, 2026), r.digits(6)),
        1 => format!("INV-{}", r.digits(5)),
        2 => format!("#{}", r.range(10000, 999_999)),
        3 => format!(
            "SKU-{}-{}",
            r.digits(5),
            r.pick(&["XS", "S", "M", "L", "XL"])
        ),
        _ => format!(
            "1Z{}{}",
            r.from_alphabet(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 6),
            r.digits(10)
        ),
    }
}

pub fn price(r: &mut Rng) -> String {
    let cents = r.below(10_000_000);
    match r.below(3) {
        0 => format!("{}.{:02}", cents / 100, cents % 100),
        1 => format!(
            "${},{:03}.{:02}",
            cents / 100_000,
            (cents / 100) % 1000,
            cents % 100
        ),
        _ => format!("EUR {},{:02}", cents / 100, cents % 100),
    }
}

pub fn uuid(r: &mut Rng) -> String {
    let h = |r: &mut Rng, n| r.from_alphabet(b"0123456789abcdef", n);
    format!(
        "{}-{}-4{}-a{}-{}",
        h(r, 8),
        h(r, 4),
        h(r, 3),
        h(r, 3),
        h(r, 12)
    )
}

/// Free text with numbers in it (dates, amounts, order numbers, counts).
pub fn free_text(r: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..r.range(6, 30) {
        // Mostly words; numbers of every common shape. ISBNs (13 dashed
        // digits, a card-shaped trap) are rare, as in real notes.
        match r.below(14) {
            12 if r.chance(0.1) => s.push_str(&format!(
                "978-{}-{}-{}-{}",
                r.digit(),
                r.digits(2),
                r.digits(6),
                r.digit()
            )),
            0 => s.push_str(&timestamp(r)),
            1 => s.push_str(&price(r)),
            2 => s.push_str(&order_ref(r)),
            3 => s.push_str(&r.range(1, 500).to_string()),
            4 => s.push_str(&name(r)),
            5 => s.push_str(&format!(
                "v{}.{}.{}",
                r.below(10),
                r.below(30),
                r.below(100)
            )),
            6 => s.push_str(&format!("{}%", r.range(1, 99))),
            _ => s.push_str(r.pick(WORDS)),
        }
        s.push_str(r.pick(&[" ", " ", " ", ", ", ". "]));
    }
    s.trim_end().to_string()
}

/// One clean (non-sensitive) value of a random realistic kind.
pub fn clean_value(r: &mut Rng) -> String {
    match r.below(12) {
        0 => name(r),
        1 => address(r),
        2 => order_ref(r),
        3 => timestamp(r),
        4 => price(r),
        5 => uuid(r),
        6 => r.pick(STATUS).to_string(),
        // Numeric ids: sequential-looking integers and snowflake ids.
        7 => {
            if r.chance(0.7) {
                r.range(1, 99_999_999).to_string()
            } else {
                format!("1{}", r.digits_range(17, 18))
            }
        }
        8 => format!("{}", 1_700_000_000_000u64 + r.below(1 << 40) as u64),
        _ => free_text(r),
    }
}

// ---------------------------------------------------------------------------
// A realistic result set.

/// Pieces [`touching_text`] strings together: separators, token prefixes,
/// digit groups and other bytes detectors look at.
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
    "%40",
    "%",
    "sk-",
    "sk-proj-",
    "sk-ant-api03-",
    "glpat-",
    "gl",
    "hf_",
    "npm_",
    "shpat_",
    "dop_v1_",
    "glc_",
    "PMAK-",
    "NRAK-",
    "AGE-SECRET-KEY-1",
    "SG.",
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

/// Up to `max` bytes of fragments, digit runs, sensitive values, clean
/// values, words and phone numbers strung together with no separator
/// between them, so that values touch and detectors' spans meet: what the
/// differential checks (`mask_dump`, the row-vs-cells tests) feed the
/// engine.
pub fn touching_text(r: &mut Rng, max: usize) -> String {
    let mut s = String::new();
    let target = r.below(max + 1);
    while s.len() < target {
        match r.below(10) {
            0 => s.push_str(&r.digits_range(1, 20)),
            1 => {
                let k = Kind::ALL[r.below(Kind::ALL.len())];
                s.push_str(&sensitive(k, r));
            }
            2 => s.push_str(&clean_value(r)),
            3 => s.push_str(&r.alphabet_range(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                1,
                12,
            )),
            4 => s.push_str(&r.alphabet_range(b"0123456789 -.()+", 1, 30)),
            5 => s.push_str(&phone(r)),
            _ => s.push_str(r.pick(FRAGMENTS)),
        }
    }
    s
}

/// The columns of [`touching_row`]: three text columns and an int column
/// (not scanned), so that values sit next to each other in one scan.
pub const TOUCHING_COLUMNS: &[(&str, u32)] = &[("a", 25), ("n", 23), ("b", 25), ("c", 1043)];

/// A row of [`TOUCHING_COLUMNS`]: each value [`touching_text`] of up to 10,
/// 40, 80 or 200 bytes, or NULL one time in ten.
pub fn touching_row(r: &mut Rng) -> Vec<Option<String>> {
    (0..TOUCHING_COLUMNS.len())
        .map(|_| {
            (!r.chance(0.1)).then(|| {
                let max = [10, 40, 80, 200][r.below(4)];
                touching_text(r, max)
            })
        })
        .collect()
}

/// Column of the generated `orders` table: name and type oid.
pub const ORDERS_COLUMNS: &[(&str, u32)] = &[
    ("id", 23),
    ("customer", 25),
    ("email", 1043),
    ("phone", 1043),
    ("shipping_address", 25),
    ("created_at", 1184),
    ("total", 1700),
    ("order_ref", 1043),
    ("status", 1043),
    ("notes", 25),
];

/// A value of `kind` in filler text, as the `orders` notes plant one:
/// `filler value filler`, each filler up to 60 bytes of words, numbers and
/// punctuation (so the value may sit next to a number). Returns the text
/// and where the value lies in it.
pub fn planted(kind: Kind, r: &mut Rng) -> (String, std::ops::Range<usize>) {
    let v = sensitive(kind, r);
    let (a, b) = (filler(r, 60), filler(r, 60));
    let at = a.len() + 1;
    (format!("{a} {v} {b}"), at..at + v.len())
}

/// Rows of `orders`, as text values (None = NULL). Every row has an e-mail
/// and most a phone number; about one note in eight quotes a card, SSN,
/// IBAN, token or key, the rest are clean free text.
pub fn orders(r: &mut Rng, rows: usize) -> Vec<Vec<Option<String>>> {
    (0..rows)
        .map(|i| {
            let note = if r.chance(0.125) {
                let k = *r.pick(&[
                    &Kind::Card,
                    &Kind::Card,
                    &Kind::Ssn,
                    &Kind::Iban,
                    &Kind::Phone,
                    &Kind::Email,
                    &Kind::AwsKey,
                    &Kind::Jwt,
                    &Kind::GithubToken,
                    &Kind::StripeKey,
                    &Kind::Bearer,
                ]);
                Some(planted(k, r).0)
            } else if r.chance(0.3) {
                None
            } else {
                Some(free_text(r))
            };
            vec![
                Some((100_000 + i).to_string()),
                Some(name(r)),
                Some(email(r)),
                if r.chance(0.8) { Some(phone(r)) } else { None },
                Some(address(r)),
                Some(timestamp(r)),
                Some(
                    price(r)
                        .trim_start_matches(['$', 'E', 'U', 'R', ' '])
                        .replace(',', ""),
                ),
                Some(order_ref(r)),
                Some(r.pick(STATUS).to_string()),
                note,
            ]
        })
        .collect()
}

/// Clean free text of about `bytes` bytes (no sensitive values).
pub fn clean_text(r: &mut Rng, bytes: usize) -> String {
    let mut s = String::new();
    while s.len() < bytes {
        s.push_str(&free_text(r));
        s.push('\n');
    }
    s
}

/// RowDescription body for `columns` (all text format).
pub fn row_description(columns: &[(&str, u32)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(columns.len() as i16).to_be_bytes());
    for (i, (name, oid)) in columns.iter().enumerate() {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&16384u32.to_be_bytes());
        b.extend_from_slice(&(i as i16 + 1).to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    b
}

/// DataRow body for text values.
pub fn data_row(values: &[Option<String>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b
}

/// What [`super::mask_data_row`] must give for the DataRow of `values` under
/// `plan` (described by `engine`, all columns scanned or skipped): the row
/// with each value the plan scans masked on its own
/// ([`super::Engine::mask_counted`], hits into `hits`).
pub fn masked_cell_by_cell(
    engine: &super::Engine,
    plan: &super::RowPlan,
    values: &[Option<String>],
    hits: &mut super::Hits,
) -> Vec<u8> {
    let cells: Vec<Option<String>> = values
        .iter()
        .zip(plan.columns())
        .map(|(v, c)| {
            v.clone().map(|v| {
                let mut b = v.into_bytes();
                if matches!(c, super::ColumnPlan::Detect { .. }) {
                    engine.mask_counted(&mut b, hits);
                }
                String::from_utf8(b).expect("masking keeps UTF-8")
            })
        })
        .collect();
    data_row(&cells)
}
