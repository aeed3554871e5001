//! Corpus preparation and the regex contender, shared by `benches/mask.rs`
//! and `examples/mask_cycles.rs`.

use dataplane::mask::corpus::{self, Rng};
use std::ops::Range;

/// Patterns equivalent to the default profile's detectors (ASCII mode, as
/// fast as the regex crate gets). The last seven were added on
/// 2026-11-28 (see `bench/RESULTS.md`, "The `RegexSet` contender made
/// equivalent"): before, the set had no pattern for seven of the default
/// profile's detectors.
const PATTERNS: &[&str] = &[
    r"(?-u)\b(?:\d[ -]?){12,18}\d\b",
    r"(?-u)[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    r"(?-u)\b\d{3}[- ]\d{2}[- ]\d{4}\b",
    r"(?-u)(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}\b|\+\d[\d .()-]{7,18}\d|\b0\d{1,4}(?:[ .-]\d{2,5}){1,4}\b",
    r"(?-u)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    r"(?-u)\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    r"(?-u)\beyJ[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
    r"(?-u)-----BEGIN [A-Z ]*PRIVATE KEY-----(?s:.*?)-----END",
    r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})",
    r"(?-u)\b(?:xox[baprse]|xapp)-[A-Za-z0-9-]{10,}",
    r"(?-u)\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
    r"(?-u)\bAIza[A-Za-z0-9_-]{35}",
    r"(?-u)(?i)\bbearer +[A-Za-z0-9._~+/-]{16,}=*",
    r"(?-u)\bsk-(?:(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{40,}|ant-[A-Za-z0-9_-]{32,}|[A-Za-z0-9]{32,})",
    r"(?-u)\bgl(?:pat|dt|ptt|rt|cbt|ft|imt|agent|soat|oas)-[A-Za-z0-9_.-]{20,}",
    r"(?-u)\b(?:hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{36,})",
    r"(?-u)\b(?:shp(?:at|ss)_[0-9a-fA-F]{32}\b|do[por]_v1_[0-9a-fA-F]{64}\b|glc_[A-Za-z0-9+/]{32,}=*|PMAK-[0-9a-fA-F]{24}-[0-9a-fA-F]{34}\b|NRAK-[A-Z0-9]{27}\b|AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b|SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})",
    // Stripe webhook secrets, Slack webhook URLs, PGP private keys,
    // URL-encoded e-mails, HTTP Basic credentials, the passwords of URLs
    // and values that name rules name in text (`password=…`,
    // `api_key: …`), which the default profile also masks.
    r"(?-u)\bwhsec_[A-Za-z0-9+/=]{24,}|hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{8,}",
    r"(?-u)-----BEGIN PGP PRIVATE KEY BLOCK-----(?s:.*?)-----END",
    r"(?-u)[A-Za-z0-9._+-]+%40[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    r"(?-u)(?i)\bbasic +[A-Za-z0-9+/]{8,}=*",
    r"(?-u)://[^/\s:@]+:[^/\s@]+@",
    r"(?-u)(?i)\b[a-z0-9_-]*(?:password|passwd|secret|api_?key|access_token|refresh_token|token|pwd|passphrase|private_key|accountkey)[\x22']? *[=:] *[\x22']?[^\s\x22',;&]+",
    // (The tokens recognized only as a whole value.)
    r"(?-u)^(?:hv[sbr]\.[A-Za-z0-9_-]{24,}|dapi[0-9a-fA-F]{32}(?:-[0-9]{1,2})?|key-[0-9a-fA-F]{32}|[0-9]{8,10}:AA[A-Za-z0-9_-]{33}|lin_api_[A-Za-z0-9]{40}|lin_oauth_[0-9a-fA-F]{64}|pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}|dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}|pul-[0-9a-fA-F]{40}|sntryu_[0-9a-fA-F]{64}|sntrys_[A-Za-z0-9+/=_]{60,}|glsa_[A-Za-z0-9]{32}_[0-9a-fA-F]{8}|shp(?:ca|pa)_[0-9a-fA-F]{32})[ \t\r\n]*$",
];

pub struct RegexMasker {
    set: regex::bytes::RegexSet,
    each: Vec<regex::bytes::Regex>,
}

impl RegexMasker {
    pub fn new() -> Self {
        // (A lazy DFA cache large enough that no pattern set thrashes it:
        // with the default, the set's overlapping search for `matches`
        // clears its cache over and over on this corpus and runs 4× slower
        // once the URL-password pattern is in.)
        const DFA: usize = 256 << 20;
        RegexMasker {
            set: regex::bytes::RegexSetBuilder::new(PATTERNS)
                .dfa_size_limit(DFA)
                .size_limit(DFA)
                .build()
                .unwrap(),
            each: PATTERNS
                .iter()
                .map(|p| {
                    regex::bytes::RegexBuilder::new(p)
                        .dfa_size_limit(DFA)
                        .size_limit(DFA)
                        .build()
                        .unwrap()
                })
                .collect(),
        }
    }

    pub fn mask(&self, v: &mut [u8]) -> u32 {
        if !self.set.is_match(v) {
            return 0;
        }
        let mut n = 0;
        for i in self.set.matches(v).iter() {
            let mut at = 0;
            while let Some(m) = self.each[i].find_at(v, at).map(|m| m.range()) {
                for b in &mut v[m.clone()] {
                    if b.is_ascii_alphanumeric() {
                        *b = b'*';
                    }
                }
                n += 1;
                at = m.end.max(m.start + 1);
                if at > v.len() {
                    break;
                }
            }
        }
        n
    }
}

/// Text cells of the corpus in one buffer, and where each is.
pub fn cells(rows: &[Vec<Option<String>>]) -> (Vec<u8>, Vec<Range<usize>>) {
    cells_of(rows, corpus::ORDERS_COLUMNS)
}

/// Text cells (`text`, `varchar`) of rows with `columns` (name, type oid),
/// in one buffer, and where each is.
pub fn cells_of(
    rows: &[Vec<Option<String>>],
    columns: &[(&str, u32)],
) -> (Vec<u8>, Vec<Range<usize>>) {
    let text_cols: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, (_, oid))| matches!(oid, 25 | 1043))
        .map(|(i, _)| i)
        .collect();
    let mut buf = Vec::new();
    let mut ranges = Vec::new();
    for r in rows {
        for &c in &text_cols {
            if let Some(v) = &r[c] {
                let s = buf.len();
                buf.extend_from_slice(v.as_bytes());
                ranges.push(s..buf.len());
            }
        }
    }
    (buf, ranges)
}

pub fn clean_cells(rng: &mut Rng, n: usize) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut buf = Vec::new();
    let mut ranges = Vec::new();
    for _ in 0..n {
        let v = corpus::free_text(rng);
        let s = buf.len();
        buf.extend_from_slice(v.as_bytes());
        ranges.push(s..buf.len());
    }
    (buf, ranges)
}

/// DataRow bodies of the rows, in one buffer.
pub fn bodies(rows: &[Vec<Option<String>>]) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut bodies = Vec::new();
    let mut ranges = Vec::new();
    for r in rows {
        let s = bodies.len();
        bodies.extend_from_slice(&corpus::data_row(r));
        ranges.push(s..bodies.len());
    }
    (bodies, ranges)
}
