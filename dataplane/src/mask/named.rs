//! Secrets that text names: the value after a key that a name rule matches
//! (`password=hunter2`, `api_key: 9f8e…`, `"db_password": "x"`,
//! `AccountKey=…;`, `aws_secret_access_key = …`), and the password of a URL
//! (`postgres://app:S3cret@db.internal/orders`).
//!
//! Both start at an anchor the scan already found: the `=` or `:` after the
//! key, the `:` of `://`. They only parse here; the engine decides from
//! the profile's name rules whether a key names a secret and rewrites the
//! value (see `Engine::named_value`).

use super::detect::run;

/// Bytes of a key: `db_password`, `spring.datasource.password`,
/// `--password`, `AWS_SECRET_ACCESS_KEY`.
fn is_key(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// Longest key looked at (longer runs of key bytes are no key).
const MAX_KEY: usize = 64;

/// Longest value looked at: a longer one is masked up to here (so a value
/// without an end costs a bounded walk, whatever the cell's length).
const MAX_VALUE: usize = 4096;

/// The byte before the separator of a `key=value` or `key: value` may end
/// a key: a letter, a quote, a space or a tab. (The classifier's
/// neighbour test rules out digits and glue bytes before the scalar code
/// runs; this is the exact test.)
#[inline(always)]
pub(crate) fn may_follow_key(b: u8) -> bool {
    b.is_ascii_alphabetic() || matches!(b, b'"' | b'\'' | b' ' | b'\t')
}

/// A key and its value, as [`assignment`] found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assignment {
    /// The key's bytes, without quotes.
    pub key: (usize, usize),
    /// The value's bytes, without quotes.
    pub value: (usize, usize),
    /// The value holds a backslash escape (a quoted one): `keep_last` keeps
    /// nothing, as in JSON (its last characters could be half an escape).
    pub escaped: bool,
}

/// The assignment whose separator is at `p` in `buf` (`=`, `:`, or the
/// first byte of `:=` or `=>`), if there is one:
///
/// - the key: the key bytes right before (a letter among them), after
///   optional blanks, and inside quotes if it is quoted;
/// - the value: after optional blanks, a quoted string (`"…"`, `'…'`;
///   up to the end of the line when it is not closed), or else the bytes
///   up to a blank, a line end, `,` `;` `)` `]` `}` or a quote (and `&`
///   in a query string, after a key that follows `?` or `&`).
///
/// None for comparisons (`==`, `!=`, `<=`, `>=`), for a URL's `://`, for an
/// empty value, for a value that opens an object or array, and for the
/// words `true`, `false`, `null`, `none`, `nil`, `yes`, `no`, `on`, `off`
/// (flags that name a secret: `require_password: true`). After a quoted
/// key and a `:` (JSON, a Python dict) only a quoted value counts: an
/// unquoted one is a number or a literal, and masking it would break the
/// document.
///
/// `key_ok` decides on the key before the value is looked at (the name
/// rules: most keys are no secret's, and their values are not walked).
pub(crate) fn assignment(
    buf: &[u8],
    p: usize,
    key_ok: impl FnOnce(&[u8]) -> bool,
) -> Option<Assignment> {
    let n = buf.len();
    let sep = *buf.get(p)?;
    let next = buf.get(p + 1).copied();
    let prev = if p > 0 { buf[p - 1] } else { 0 };
    let vs = match (sep, next) {
        (b':', Some(b'=')) | (b'=', Some(b'>')) => p + 2,
        (b':', Some(b':' | b'/')) | (b'=', Some(b'=')) => return None,
        (b'=', _) if matches!(prev, b'=' | b'!' | b'<' | b'>' | b':') => return None,
        (b':' | b'=', _) => p + 1,
        _ => return None,
    };
    // The key.
    let mut k = p;
    while k > 0 && is_blank(buf[k - 1]) && p - k < 8 {
        k -= 1;
    }
    let quote = match k.checked_sub(1).map(|i| buf[i]) {
        Some(q @ (b'"' | b'\'')) => {
            k -= 1;
            Some(q)
        }
        _ => None,
    };
    let ke = k;
    let lo = ke.saturating_sub(MAX_KEY + 1);
    while k > lo && is_key(buf[k - 1]) {
        k -= 1;
    }
    let ks = k;
    if ks == ke || (ks == lo && ks > 0 && is_key(buf[ks - 1])) {
        return None;
    }
    if !buf[ks..ke].iter().any(u8::is_ascii_alphabetic) {
        return None;
    }
    if let Some(q) = quote {
        if ks == 0 || buf[ks - 1] != q {
            return None;
        }
    }
    if !key_ok(&buf[ks..ke]) {
        return None;
    }
    // The value.
    let mut v = vs;
    while v < n && is_blank(buf[v]) && v - vs < 8 {
        v += 1;
    }
    let first = *buf.get(v)?;
    let (value, escaped) = if first == b'"' || first == b'\'' {
        let s = v + 1;
        let lim = n.min(s + MAX_VALUE);
        let mut i = s;
        let mut escaped = false;
        while i < lim && buf[i] != first && buf[i] != b'\n' {
            if buf[i] == b'\\' && first == b'"' {
                escaped = true;
                i += 1;
            }
            i += 1;
        }
        ((s, i.min(lim)), escaped)
    } else {
        if quote.is_some() && sep == b':' {
            return None;
        }
        if matches!(first, b'{' | b'[') {
            return None;
        }
        // (`&` ends a value in a query string only: `?a=1&token=x&b=2`,
        // not `DB_PASSWORD=Tr0ub4dor&3`.)
        let query = ks > 0 && matches!(buf[ks - 1], b'?' | b'&');
        let e = v + run(buf, v, MAX_VALUE, |b| {
            let end = matches!(
                b,
                b' ' | b'\t' | b'\r' | b'\n' | b',' | b';' | b')' | b']' | b'}' | b'"' | b'\''
            );
            !(end || query && b == b'&')
        });
        if is_flag(&buf[v..e]) {
            return None;
        }
        ((v, e), false)
    };
    if value.0 == value.1 {
        return None;
    }
    Some(Assignment {
        key: (ks, ke),
        value,
        escaped,
    })
}

/// The literals a flag or an unset setting is written as.
fn is_flag(v: &[u8]) -> bool {
    const WORDS: [&[u8]; 9] = [
        b"true", b"false", b"null", b"none", b"nil", b"yes", b"no", b"on", b"off",
    ];
    v.len() <= 5 && WORDS.iter().any(|w| w.eq_ignore_ascii_case(v))
}

/// Bytes of a URL's user information (RFC 3986: unreserved, `%`
/// escapes, sub-delimiters, `:`).
fn is_userinfo(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
        )
}

/// Bytes of a URL's host (a name, an IPv4 address, an IPv6 one in
/// brackets).
fn is_host(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'[' | b']' | b':')
}

/// Longest user information, and host, looked at.
const MAX_USERINFO: usize = 256;

/// The credential in the URL whose `://` starts at `p` in `buf`
/// (`scheme://user:password@host…`): masks the password with `ch` (every
/// byte) and returns the end of the host, so that the `@` is not taken for
/// an e-mail's. A user name alone is masked when it looks like a token
/// (`https://ghp_…@github.com`: 20 or more bytes, letters and digits among
/// them); an empty password, or none, masks nothing.
pub(crate) fn url_password(buf: &mut [u8], p: usize, ch: u8) -> Option<usize> {
    if buf.get(p..p + 3) != Some(b"://") {
        return None;
    }
    // A scheme: letters, digits, `+ - .`, starting with a letter.
    let mut s = p;
    while s > 0 && (buf[s - 1].is_ascii_alphanumeric() || matches!(buf[s - 1], b'+' | b'-' | b'.'))
    {
        s -= 1;
    }
    if s == p || !buf[s].is_ascii_alphabetic() {
        return None;
    }
    let u = p + 3;
    let at = u + run(buf, u, MAX_USERINFO, is_userinfo);
    if at >= buf.len() || buf[at] != b'@' || at == u {
        return None;
    }
    let info = &buf[u..at];
    let (from, to) = match memchr::memchr(b':', info) {
        Some(c) => (u + c + 1, at),
        None => {
            let token = info.len() >= 20
                && info.iter().any(u8::is_ascii_digit)
                && info.iter().any(u8::is_ascii_alphabetic);
            if !token {
                return None;
            }
            (u, at)
        }
    };
    if from == to {
        return None;
    }
    buf[from..to].fill(ch);
    Some(at + 1 + run(buf, at + 1, MAX_USERINFO, is_host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &str, sep: usize) -> Option<(String, String)> {
        let b = s.as_bytes();
        assignment(b, sep, |_| true).map(|a| {
            (
                s[a.key.0..a.key.1].to_string(),
                s[a.value.0..a.value.1].to_string(),
            )
        })
    }

    /// The assignment at the last byte of the first `sep` in `s`.
    fn at(s: &str, sep: &str) -> Option<(String, String)> {
        kv(s, s.find(sep).expect("separator") + sep.len() - 1)
    }

    #[test]
    fn keys_and_values() {
        let p = |k: &str, v: &str| Some((k.to_string(), v.to_string()));
        assert_eq!(at("password=hunter2", "="), p("password", "hunter2"));
        assert_eq!(at("x password: hunter2 y", ":"), p("password", "hunter2"));
        assert_eq!(
            at("DB_PASSWORD=Tr0ub4dor&3", "="),
            p("DB_PASSWORD", "Tr0ub4dor&3")
        );
        let conn = "User ID=admin;Password=Pa55word!;";
        assert_eq!(at(conn, "D="), p("ID", "admin"));
        assert_eq!(at(conn, "d="), p("Password", "Pa55word!"));
        assert_eq!(
            at("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "="),
            p("aws_secret_access_key", "wJalrXUtnFEMI/K7MDENG")
        );
        assert_eq!(at(r#"{'password': 'a b'}"#, ":"), p("password", "a b"));
        assert_eq!(at(r#" "api_key" : "k\"1" "#, ":"), p("api_key", r#"k\"1"#));
        assert_eq!(at(r#"'password' => 'x'"#, "="), p("password", "x"));
        assert_eq!(at("password := \"x\"", ":"), p("password", "x"));
        assert_eq!(
            at("--password=s3cr3t --user=bob", "="),
            p("--password", "s3cr3t")
        );
        assert_eq!(at("?user=bob&token=abc123&x=1", "r="), p("user", "bob"));
        assert_eq!(at("?user=bob&token=abc123&x=1", "n="), p("token", "abc123"));
        assert_eq!(
            at("password: \"unclosed\nnext", ":"),
            p("password", "unclosed")
        );
    }

    #[test]
    fn not_assignments() {
        for (s, sep) in [
            ("a == b", "="),
            ("a != b", "="),
            ("a <= b", "="),
            ("https://x", ":"),
            ("std::string", ":"),
            ("password=", "="),
            ("password: ", ":"),
            ("require_password: true", ":"),
            ("password=NULL", "="),
            (r#"{"password": 1234}"#, ":"),
            (r#"{"password": {"a": 1}}"#, ":"),
            ("password: [1, 2]", ":"),
            ("12:30", ":"),
            (": x", ":"),
            ("'password\": 'x'", ":"),
        ] {
            assert_eq!(at(s, sep), None, "{s:?}");
        }
        // A run of key bytes longer than a key.
        let long = format!("{}=x", "a".repeat(80));
        assert_eq!(at(&long, "="), None);
        let just = format!("{}=x", "a".repeat(64));
        assert!(at(&just, "=").is_some());
        // A key refused before its value is looked at.
        assert_eq!(assignment(b"user=bob", 4, |k| k == b"password"), None);
    }

    #[test]
    fn values_are_bounded() {
        let long = format!("password={}", "x".repeat(3 * MAX_VALUE));
        let a = assignment(long.as_bytes(), 8, |_| true).unwrap();
        assert_eq!(a.value, (9, 9 + MAX_VALUE));
        let quoted = format!("password='{}", "x".repeat(3 * MAX_VALUE));
        let a = assignment(quoted.as_bytes(), 8, |_| true).unwrap();
        assert_eq!(a.value, (10, 10 + MAX_VALUE));
    }

    fn url(s: &str) -> (String, Option<usize>) {
        let mut b = s.as_bytes().to_vec();
        let p = s.find("://").expect("://");
        let e = url_password(&mut b, p, b'*');
        (String::from_utf8(b).unwrap(), e)
    }

    #[test]
    fn url_passwords() {
        let s = "postgres://app:S3cretPass99@db.internal:5432/orders";
        assert_eq!(
            url(s),
            (
                "postgres://app:************@db.internal:5432/orders".into(),
                Some(s.find("/orders").unwrap())
            )
        );
        assert_eq!(
            url("mysql://root:hunter2@10.0.0.5/db").0,
            "mysql://root:*******@10.0.0.5/db"
        );
        assert_eq!(
            url("redis://:authpass123@cache:6379/0").0,
            "redis://:***********@cache:6379/0"
        );
        assert_eq!(
            url("https://ghp_1A2b3C4d5E6f7G8h9I0j@github.com/o/r.git").0,
            "https://************************@github.com/o/r.git"
        );
        for s in [
            "https://example.com/a@b",
            "https://bob@example.com/",
            "https://bob:@example.com/",
            "ftp://user:pass word@host",
            "://x:y@z",
            "1ab://x:y@z",
        ] {
            assert_eq!(url(s), (s.to_string(), None), "{s:?}");
        }
    }
}
