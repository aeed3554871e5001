//! Name rules inside JSON values: a column rule that masks columns by name
//! (`*password*`, `*api_key*`, `^ssn$`, with the `mask` or `keep_last`
//! action) also masks the string value of every JSON object member whose
//! key it matches, in any value that starts like a JSON document (`{` or
//! `[`): a `jsonb` config column, a `json` body in a text column.
//! `{"user": "bob", "db_password": "hunter2"}` becomes `{"user": "bob",
//! "db_password": "*******"}`.
//!
//! Same length and still valid JSON: the characters between the quotes
//! become the mask character as a column's do (`rows::mask_chars`: every
//! byte, so no escape or UTF-8 sequence is left half-masked). Numbers, booleans, objects and arrays under such a key are
//! left as they are (a member of a nested object is matched by its own
//! key), and the `hash` and `null` actions, which change a value's length,
//! apply to columns only.

use super::engine::RuleId;
use super::profile::ColumnAction;
use super::rows::mask_chars;

/// Whether a value may be a JSON document: its first byte is `{` or `[`
/// (as `jsonb` prints; a `json` value keeps its input's leading whitespace,
/// and one written with any is left to the detectors). One test per value,
/// so every other value pays next to nothing.
#[inline(always)]
pub(crate) fn may_start(value: &[u8]) -> bool {
    // (`{` is 0x7b, `[` 0x5b: one compare after clearing bit 5.)
    value.first().is_some_and(|&b| b & !0x20 == b'[')
}

/// Whether a value may be a PostgreSQL array or composite in text form
/// (`{a,b}`, `{{a},{b}}`, `[0:1]={a,b}`, `("x y",1)`), whose elements a
/// whole-value token may be (`{hvs.…,dapi…}`): it starts with `(`, with an
/// array's bounds, or with `{` and is not a JSON object (whose first
/// string is followed by `:`; an array's is followed by `,` or `}`). Long
/// enough to hold a token.
#[inline]
pub(crate) fn may_be_list(value: &[u8]) -> bool {
    if value.len() < super::detect::WHOLE_MIN + 2 {
        return false;
    }
    match value[0] {
        b'(' => true,
        b'{' => {
            let s = skip_ws(value, 1);
            match value.get(s) {
                Some(b'"') => string_end(value, s + 1)
                    .is_none_or(|e| value.get(skip_ws(value, e + 1)) != Some(&b':')),
                Some(b'}') | None => false,
                Some(_) => true,
            }
        }
        // An array with bounds other than 1 prints them first:
        // `[0:1]={…}`, `[1:1][1:2]={{…}}` (not a JSON array, `[1, 2]`).
        b'[' => {
            let head = &value[..value.len().min(160)];
            matches!(value[1], b'0'..=b'9' | b'-') && memchr::memmem::find(head, b"]={").is_some()
        }
        _ => false,
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index of the `"` that closes the string whose first byte is at `s`,
/// if it is closed.
fn string_end(buf: &[u8], mut s: usize) -> Option<usize> {
    loop {
        let q = s + memchr::memchr2(b'"', b'\\', buf.get(s..)?)?;
        if buf[q] == b'"' {
            return Some(q);
        }
        s = q + 2;
    }
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while i < buf.len() && is_ws(buf[i]) {
        i += 1;
    }
    i
}

/// Mask, in `buf` (a value that starts with a JSON document), the string
/// value of each object member whose key `rule_of` gives a `mask` or
/// `keep_last` rule, with `ch`; calls `hit` once per value masked and
/// returns how many. `keep_last` keeps characters, not bytes; a value
/// holding an escape is masked whole (its last characters could be half
/// an escape). Every other string value, and every string of an array,
/// goes to `other`, which may mask it in place (same length) and returns
/// the rule it was masked under. Stops at the
/// first unclosed string; bytes outside strings are never changed.
pub(crate) fn mask_members(
    buf: &mut [u8],
    ch: u8,
    rule_of: impl Fn(&[u8]) -> Option<(RuleId, ColumnAction)>,
    mut other: impl FnMut(&mut [u8]) -> Option<RuleId>,
    mut hit: impl FnMut(RuleId),
) -> u32 {
    let start = skip_ws(buf, 0);
    if !matches!(buf.get(start), Some(b'{' | b'[')) {
        return 0;
    }
    let mut n = 0;
    let mut i = start;
    while let Some(q) = memchr::memchr(b'"', &buf[i..]) {
        let ks = i + q + 1;
        let Some(ke) = string_end(buf, ks) else {
            break;
        };
        let colon = skip_ws(buf, ke + 1);
        if buf.get(colon) != Some(&b':') {
            // A string that is no key: an array element.
            if let Some(rule) = other(&mut buf[ks..ke]) {
                n += 1;
                hit(rule);
            }
            i = ke + 1;
            continue;
        }
        let vq = skip_ws(buf, colon + 1);
        if buf.get(vq) != Some(&b'"') {
            // A key whose value is no string: go on inside it.
            i = vq;
            continue;
        }
        let vs = vq + 1;
        let Some(ve) = string_end(buf, vs) else {
            break;
        };
        // (A `hash` or `null` rule, which applies to columns only, leaves
        // the member to `other` as if no rule matched its key.)
        let ruled = rule_of(&buf[ks..ke]).and_then(|(rule, action)| {
            let keep = match action {
                ColumnAction::Mask => Some(0),
                ColumnAction::KeepLast(k) if !buf[vs..ve].contains(&b'\\') => Some(k as usize),
                ColumnAction::KeepLast(_) => Some(0),
                ColumnAction::Hash | ColumnAction::Null => None,
            };
            keep.map(|keep| (rule, keep))
        });
        if let Some((rule, keep)) = ruled {
            if mask_chars(&mut buf[vs..ve], keep, ch) {
                n += 1;
                hit(rule);
            }
        } else if let Some(rule) = other(&mut buf[vs..ve]) {
            n += 1;
            hit(rule);
        }
        i = ve + 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> (String, u32) {
        let mut b = s.as_bytes().to_vec();
        let rule = |k: &[u8]| {
            let k = String::from_utf8_lossy(k).to_lowercase();
            if k.contains("password") || k.contains("api_key") {
                Some((RuleId(20), ColumnAction::Mask))
            } else if k == "ssn" {
                Some((RuleId(21), ColumnAction::KeepLast(4)))
            } else if k == "token" {
                Some((RuleId(22), ColumnAction::Hash))
            } else {
                None
            }
        };
        let n = mask_members(&mut b, b'*', rule, |_| None, |_| {});
        (String::from_utf8(b).unwrap(), n)
    }

    #[test]
    fn string_values_under_matching_keys_are_masked() {
        assert_eq!(
            run(r#"{"user": "bob", "db_password": "hunter2", "n": 3}"#),
            (
                r#"{"user": "bob", "db_password": "*******", "n": 3}"#.into(),
                1
            )
        );
        // Nested, in arrays, compact, escapes, keys with escapes.
        assert_eq!(
            run(r#"[{"a":{"API_KEY":"k-1\"2"}},"password",{"ssn":"123-45-6789"}]"#),
            (
                r#"[{"a":{"API_KEY":"******"}},"password",{"ssn":"*******6789"}]"#.into(),
                2
            )
        );
        assert_eq!(
            run(" \n{\"password\" :\t\"a\\u00e9b\", \"ssn\": \"12\\n3456\"}"),
            (
                " \n{\"password\" :\t\"********\", \"ssn\": \"********\"}".into(),
                2
            )
        );
        // A key whose value is no string, the hash action, a short
        // keep_last value, an empty value.
        assert_eq!(
            run(r#"{"password": 1234, "token": "abc", "ssn": "12", "x_password": ""}"#),
            (
                r#"{"password": 1234, "token": "abc", "ssn": "12", "x_password": ""}"#.into(),
                0
            )
        );
        // `keep_last` keeps characters: the `é` is not split.
        assert_eq!(
            run(r#"{"ssn": "123é456"}"#),
            (r#"{"ssn": "***é456"}"#.into(), 1)
        );
        // A string value that looks like a key elsewhere is not one.
        assert_eq!(
            run(r#"{"note": "password", "v": "x"}"#),
            (r#"{"note": "password", "v": "x"}"#.into(), 0)
        );
    }

    #[test]
    fn other_values_and_broken_documents_are_left_alone() {
        for s in [
            "password: hunter2",
            "\"password\": \"x\"",
            "[INFO] \"password\" is not logged",
            "{\"password\": \"unclosed",
            "{\"unclosed",
            "{\"a\": \"b\\",
            "",
            "{",
        ] {
            let (out, n) = run(s);
            assert_eq!((out.as_str(), n), (s, 0), "{s:?}");
        }
        // Masked up to the first unclosed string.
        assert_eq!(
            run(r#"{"password": "a", "b": "unclosed"#).0,
            r#"{"password": "*", "b": "unclosed"#
        );
        assert!(may_start(b"{") && may_start(b"[1]") && !may_start(b" {") && !may_start(b"a{"));
        assert!(!may_start(b"") && !may_start(b";") && !may_start(b"K"));
    }
}
