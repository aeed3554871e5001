//! Column rules for `COPY … TO STDOUT`.
//!
//! COPY output carries no RowDescription, so the columns a COPY sends are
//! learned the way PostgreSQL itself would resolve them: the relay asks the
//! target to *describe* (Parse + Describe, never Execute) the query that
//! the COPY runs — the parenthesised query of `COPY (…) TO`, or
//! `SELECT cols FROM table` for `COPY table (cols) TO` — just before the
//! COPY. The description's table oids and attribute numbers give each
//! column its rule exactly as for a SELECT ([`super::rows`]).
//!
//! This module is sans-IO: it finds the COPY statements of a statement
//! text ([`copy_statements`]), turns a description into per-column rules
//! ([`copy_columns`]) and rewrites CopyData rows under them
//! ([`mask_copy_row`], [`mask_binary_copy_row`]). A COPY whose columns are
//! not known (its describe failed, the statement text could not be read,
//! the column count differs) has every field masked whole under the
//! `column:unresolved_copy` rule: values are never sent unmasked because
//! the gateway could not tell which column they are.

use super::derived::Text;
use super::rows::{kind_is_text, mask_chars, rule_of, Field, RowError};
use super::{ColumnAction, ColumnOrigins, CopyFormat, Engine, Hits, RuleId};

/// The options of a COPY TO that decide how its rows read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Text (delimiter) or CSV (delimiter, quote, escape); ignored for
    /// binary.
    pub format: CopyFormat,
    pub binary: bool,
    /// The NULL string as written in the output (`\N` in text, an unquoted
    /// empty field in CSV, or the `NULL` option).
    pub null: Vec<u8>,
    /// The first row is the column names.
    pub header: bool,
}

impl CopyOptions {
    pub fn text() -> Self {
        CopyOptions {
            format: CopyFormat::TEXT,
            binary: false,
            null: b"\\N".to_vec(),
            header: false,
        }
    }
}

/// One `COPY … TO STDOUT` statement of a statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStatement {
    /// Its options (a best guess when `describe` is `None`).
    pub options: CopyOptions,
    /// The query to describe for its columns; `None` when the statement
    /// or its options could not be read (its output is then masked whole).
    pub describe: Option<Vec<u8>>,
    /// No statement comes before it in the text (so nothing the same
    /// Query runs first can change what it reads).
    pub first: bool,
}

/// The `COPY … TO STDOUT` statements of `sql` (one Query may hold several,
/// separated by `;`), in order. Statements that are not a COPY to the
/// client (`COPY … FROM`, `COPY … TO 'file'`, anything else) are left out.
/// `backslash`: string literals take backslash escapes
/// (`standard_conforming_strings` off).
///
/// Fail safe: a statement that starts with `COPY` and mentions `STDOUT`
/// but does not read as a COPY is listed without a query; and when the
/// word `copy` occurs in the text more often than in statements read as
/// COPY (inside a literal or a comment, or a statement this reader took
/// for something else), none of the text's COPYs gets a query: which COPY
/// PostgreSQL runs when could then differ from what this reader saw.
pub fn copy_statements(sql: &[u8], backslash: bool) -> Vec<CopyStatement> {
    let words = copy_words(sql);
    if words == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut first = true;
    let mut copies = 0;
    while start < sql.len() {
        let end = statement_end(sql, start, backslash);
        let stmt = &sql[start..end];
        match classify(stmt, backslash) {
            Class::ToClient(mut s) => {
                s.first = first;
                out.push(s);
                copies += 1;
            }
            Class::OtherCopy | Class::FromStdin => copies += 1,
            Class::Other => {}
        }
        let mut lx = Lex::new(stmt, backslash);
        lx.space();
        first &= lx.i == stmt.len();
        start = end + 1;
    }
    if words > copies {
        for s in &mut out {
            s.describe = None;
        }
    }
    out
}

/// Whether a statement of `sql` is a `COPY … FROM STDIN` (whose copy-in
/// makes the server ignore Syncs until its CopyDone or CopyFail).
pub fn copy_from_stdin(sql: &[u8], backslash: bool) -> bool {
    if copy_words(sql) == 0 {
        return false;
    }
    let mut start = 0;
    while start < sql.len() {
        let end = statement_end(sql, start, backslash);
        if matches!(classify(&sql[start..end], backslash), Class::FromStdin) {
            return true;
        }
        start = end + 1;
    }
    false
}

/// How often the word `copy` (any case, not part of a longer name) occurs.
/// (Every Query's text goes through here: no allocation, one `memchr2`
/// pass for most.)
fn copy_words(s: &[u8]) -> usize {
    words(s, b"copy").count()
}

/// Where `word` (lower case) occurs in `s` as a whole word, in any case.
pub(super) fn words<'a>(s: &'a [u8], word: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memchr2_iter(word[0], word[0].to_ascii_uppercase(), s).filter(move |&i| {
        s.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
            && (i == 0 || !ident_byte(s[i - 1]))
            && s.get(i + word.len()).is_none_or(|&c| !ident_byte(c))
    })
}

/// Where the statement starting at `from` ends: its `;` at parenthesis
/// depth 0 (outside literals, quoted names and comments), or the end.
pub(super) fn statement_end(s: &[u8], from: usize, backslash: bool) -> usize {
    let mut i = from;
    let mut depth = 0usize;
    while i < s.len() {
        if let Some(next) = skip_quoted(s, i, backslash) {
            i = next;
            continue;
        }
        match s[i] {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    s.len()
}

pub(super) fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// PostgreSQL's white space (vertical tab included).
pub(super) fn space_byte(c: u8) -> bool {
    c.is_ascii_whitespace() || c == 0x0B
}

/// An identifier as PostgreSQL keeps it: cut to 63 bytes (`NAMEDATALEN`
/// less one), not inside a UTF-8 character. A longer name in a text names
/// the same column, statement or cursor as its first 63 bytes.
pub(super) fn clip_identifier(v: &mut Vec<u8>) {
    if v.len() > crate::protocol::NAME_MAX {
        let mut k = crate::protocol::NAME_MAX;
        while k > 0 && (v[k] & 0xc0) == 0x80 {
            k -= 1;
        }
        v.truncate(k);
    }
}

/// The parts of the string literal whose opening quote is at `i`, as
/// PostgreSQL reads it: this `'…'`, and each `'…'` that continues it after
/// white space holding a newline (`--` comments too), all read in this
/// one's mode (`escapes`: backslash escapes, as in `E'…'`; `E'x'` then a
/// newline and `'\''` is one string, `x'`). Calls `part` with the inside
/// of each; returns the index past the last closing quote and true, or
/// the end of `s` and false when a part is not closed.
pub(crate) fn string_parts(
    s: &[u8],
    i: usize,
    escapes: bool,
    mut part: impl FnMut(&[u8]),
) -> (usize, bool) {
    let n = s.len();
    let mut start = i + 1;
    let mut j = start;
    while j < n {
        match s[j] {
            b'\\' if escapes => j += 2,
            b'\'' if s.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => {
                part(&s[start..j]);
                match continuation(s, j + 1) {
                    Some(k) => {
                        start = k + 1;
                        j = start;
                    }
                    None => return (j + 1, true),
                }
            }
            _ => j += 1,
        }
    }
    part(&s[start.min(n)..]);
    (n, false)
}

/// Where a string literal continuing the one that ended at `end` opens
/// (its quote): after white space that holds a newline, with `--`
/// comments in it, as PostgreSQL's lexer joins two literals.
fn continuation(s: &[u8], end: usize) -> Option<usize> {
    let mut k = end;
    let mut newline = false;
    loop {
        match *s.get(k)? {
            b' ' | b'\t' | 0x0c => k += 1,
            b'\n' | b'\r' => {
                newline = true;
                k += 1;
            }
            0x0b if newline => k += 1,
            b'-' if s.get(k + 1) == Some(&b'-') => {
                k += memchr::memchr2(b'\n', b'\r', &s[k..])?;
            }
            b'\'' if newline => return Some(k),
            _ => return None,
        }
    }
}

/// If a string literal, quoted identifier, dollar-quoted string or
/// comment starts at `i`, the index just past it (the end of `s` when it
/// is not closed).
pub(super) fn skip_quoted(s: &[u8], i: usize, backslash: bool) -> Option<usize> {
    let n = s.len();
    match s[i] {
        b'\'' => {
            // E'…' strings take backslash escapes (all do with
            // standard_conforming_strings off).
            let escapes = backslash
                || (i > 0 && matches!(s[i - 1], b'e' | b'E') && (i < 2 || !ident_byte(s[i - 2])));
            Some(string_parts(s, i, escapes, |_| {}).0)
        }
        b'"' => {
            let mut j = i + 1;
            while j < n {
                match s[j] {
                    b'"' if s.get(j + 1) == Some(&b'"') => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            Some(n)
        }
        b'-' if s.get(i + 1) == Some(&b'-') => {
            Some(memchr::memchr2(b'\n', b'\r', &s[i..]).map_or(n, |k| i + k + 1))
        }
        b'/' if s.get(i + 1) == Some(&b'*') => {
            // Comments nest.
            let mut depth = 0usize;
            let mut j = i;
            while j + 1 < n {
                match (s[j], s[j + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        j += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                    _ => j += 1,
                }
            }
            Some(n)
        }
        b'$' if i == 0 || !ident_byte(s[i - 1]) => {
            // $tag$ … $tag$ (not $1, a parameter).
            let t = s[i + 1..]
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
                .map(|k| i + 1 + k)?;
            if s[t] != b'$' || s.get(i + 1).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let tag = &s[i..=t];
            Some(memchr::memmem::find(&s[t + 1..], tag).map_or(n, |k| t + 1 + k + tag.len()))
        }
        _ => None,
    }
}

/// A cursor over one statement's tokens.
pub(super) struct Lex<'a> {
    s: &'a [u8],
    pub(super) i: usize,
    backslash: bool,
}

impl<'a> Lex<'a> {
    pub(super) fn new(s: &'a [u8], backslash: bool) -> Self {
        Lex { s, i: 0, backslash }
    }

    pub(super) fn at_end(&mut self) -> bool {
        self.space();
        self.i >= self.s.len()
    }

    /// Past white space and comments.
    fn space(&mut self) {
        while self.i < self.s.len() {
            let c = self.s[self.i];
            if space_byte(c) {
                self.i += 1;
            } else if matches!(c, b'-' | b'/') {
                match skip_quoted(self.s, self.i, self.backslash) {
                    Some(j) => self.i = j,
                    None => return,
                }
            } else {
                return;
            }
        }
    }

    /// A bare word (keyword or identifier) at the cursor, taken.
    fn word(&mut self) -> Option<&'a [u8]> {
        self.space();
        let s = self.s;
        let from = self.i;
        if !s
            .get(from)
            .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80)
        {
            return None;
        }
        let mut j = from;
        while j < s.len() && ident_byte(s[j]) {
            j += 1;
        }
        self.i = j;
        Some(&s[from..j])
    }

    pub(super) fn keyword(&mut self, k: &[u8]) -> bool {
        let at = self.i;
        match self.word() {
            // (`U&"…"` and `U&'…'` are not words followed by `&`.)
            Some(w) if w.eq_ignore_ascii_case(k) && self.s.get(self.i) != Some(&b'&') => true,
            _ => {
                self.i = at;
                false
            }
        }
    }

    pub(super) fn byte(&mut self, b: u8) -> bool {
        self.space();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.space();
        self.s.get(self.i).copied()
    }

    /// A name: a bare identifier (lower-cased) or a `"quoted"` one
    /// (unquoted). Not a Unicode-escaped one (`U&"…"`).
    pub(super) fn name(&mut self) -> Option<Vec<u8>> {
        self.space();
        if self.s.get(self.i) == Some(&b'"') {
            let j = skip_quoted(self.s, self.i, self.backslash)?;
            if j < self.i + 2 || self.s[j - 1] != b'"' {
                return None;
            }
            let inner = &self.s[self.i + 1..j - 1];
            self.i = j;
            let mut v = Vec::with_capacity(inner.len());
            let mut k = 0;
            while k < inner.len() {
                v.push(inner[k]);
                k += if inner[k] == b'"' { 2 } else { 1 };
            }
            clip_identifier(&mut v);
            Some(v)
        } else {
            let w = self.word()?;
            if self.s.get(self.i) == Some(&b'&') {
                return None;
            }
            let mut v = w.to_ascii_lowercase();
            clip_identifier(&mut v);
            Some(v)
        }
    }

    /// After an opening parenthesis: the text up to its closing one
    /// (taken), or None when it is not closed.
    pub(super) fn parenthesised(&mut self) -> Option<&'a [u8]> {
        let s = self.s;
        let from = self.i;
        let mut depth = 1usize;
        let mut j = from;
        while j < s.len() {
            if let Some(next) = skip_quoted(s, j, self.backslash) {
                j = next;
                continue;
            }
            match s[j] {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i = j + 1;
                        return Some(&s[from..j]);
                    }
                }
                _ => {}
            }
            j += 1;
        }
        None
    }

    /// A string constant (`'…'`, `E'…'`, `$tag$…$tag$`), its value; None
    /// for anything else (a `U&'…'` string included).
    fn string(&mut self) -> Option<Vec<u8>> {
        self.space();
        let s = self.s;
        let mut i = self.i;
        let escaped = matches!(s.get(i), Some(b'e' | b'E')) && s.get(i + 1) == Some(&b'\'');
        if escaped {
            i += 1;
        }
        match s.get(i) {
            Some(b'\'') => {
                let escapes = self.backslash || escaped;
                let mut v = Vec::new();
                let (end, closed) = string_parts(s, i, escapes, |p| {
                    v.extend_from_slice(&unescape(p, escapes))
                });
                if !closed {
                    return None;
                }
                self.i = end;
                Some(v)
            }
            Some(b'$') => {
                let end = skip_quoted(s, i, self.backslash)?;
                let t = s[i + 1..].iter().position(|&c| c == b'$')? + i + 1;
                let tag = t + 1 - i;
                if end < i + 2 * tag {
                    return None;
                }
                self.i = end;
                Some(s[t + 1..end - tag].to_vec())
            }
            _ => None,
        }
    }
}

/// The value of a string literal's inside: `''` is `'`; with `escapes`,
/// backslash escapes as PostgreSQL reads them in `E'…'`.
pub(super) fn unescape(v: &[u8], escapes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        if c == b'\'' {
            out.push(b'\'');
            i += 2;
            continue;
        }
        if c != b'\\' || !escapes || i + 1 >= v.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = v[i + 1];
        i += 2;
        let digits = |i: &mut usize, max: usize, radix: u32| {
            let mut x = 0u32;
            let mut k = 0;
            while k < max && *i < v.len() && (v[*i] as char).is_digit(radix) {
                x = x * radix + (v[*i] as char).to_digit(radix).unwrap_or(0);
                *i += 1;
                k += 1;
            }
            (x, k)
        };
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                i -= 1;
                let (x, _) = digits(&mut i, 3, 8);
                out.push(x as u8);
            }
            b'x' => {
                let (x, k) = digits(&mut i, 2, 16);
                if k == 0 {
                    out.push(b'x');
                } else {
                    out.push(x as u8);
                }
            }
            b'u' | b'U' => {
                let (x, k) = digits(&mut i, if e == b'u' { 4 } else { 8 }, 16);
                match char::from_u32(x).filter(|_| k > 0) {
                    Some(ch) => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                    None => out.push(e),
                }
            }
            e => out.push(e),
        }
    }
    out
}

enum Class {
    /// A `COPY … TO STDOUT`.
    ToClient(CopyStatement),
    /// `COPY … FROM STDIN`.
    FromStdin,
    /// Another COPY (`FROM` a file or program, to a file or program).
    OtherCopy,
    Other,
}

/// What one statement is.
fn classify(stmt: &[u8], backslash: bool) -> Class {
    let mut lx = Lex::new(stmt, backslash);
    if !lx.keyword(b"copy") {
        return Class::Other;
    }
    enum Read {
        ToClient(Vec<u8>, Option<CopyOptions>),
        FromStdin,
        Other,
    }
    let read = (|| {
        let binary = lx.keyword(b"binary");
        let describe = if lx.byte(b'(') {
            lx.parenthesised()?.to_vec()
        } else {
            lx.space();
            let from = lx.i;
            loop {
                lx.name()?;
                let at = lx.i;
                if !lx.byte(b'.') {
                    lx.i = at;
                    break;
                }
            }
            let name = &stmt[from..lx.i];
            let cols = if lx.byte(b'(') {
                Some(lx.parenthesised()?)
            } else {
                None
            };
            let mut q = b"SELECT ".to_vec();
            q.extend_from_slice(cols.unwrap_or(b"*"));
            q.extend_from_slice(b" FROM ");
            q.extend_from_slice(name);
            q
        };
        if lx.keyword(b"from") {
            return Some(if lx.keyword(b"stdin") {
                Read::FromStdin
            } else {
                Read::Other
            });
        }
        if !lx.keyword(b"to") {
            return None;
        }
        if !lx.keyword(b"stdout") {
            // A file or a program: nothing comes to the client.
            return (lx.keyword(b"program") || lx.string().is_some()).then_some(Read::Other);
        }
        Some(Read::ToClient(describe, copy_options(&mut lx, binary)))
    })();
    match read {
        Some(Read::ToClient(describe, Some(options))) => Class::ToClient(CopyStatement {
            options,
            describe: Some(describe),
            first: false,
        }),
        Some(Read::Other) => Class::OtherCopy,
        Some(Read::FromStdin) => Class::FromStdin,
        // Not read (the statement, or its options): if it may be a COPY to
        // the client, its output is masked whole.
        Some(Read::ToClient(_, None)) | None => {
            if looks_like_copy_out(stmt) {
                Class::ToClient(CopyStatement {
                    options: guess_options(stmt),
                    describe: None,
                    first: false,
                })
            } else {
                Class::OtherCopy
            }
        }
    }
}

fn looks_like_copy_out(stmt: &[u8]) -> bool {
    let lower = stmt.to_ascii_lowercase();
    memchr::memmem::find(&lower, b"stdout").is_some()
}

/// The options after `TO STDOUT`, to the end of the statement: the list
/// form (`WITH (FORMAT csv, DELIMITER ';', …)`) or the older keywords
/// (`CSV HEADER DELIMITER AS ';' …`). None when they do not read.
fn copy_options(lx: &mut Lex<'_>, binary: bool) -> Option<CopyOptions> {
    let mut csv = false;
    let mut binary = binary;
    let (mut delimiter, mut null, mut quote, mut escape) = (None, None, None, None);
    let mut header = false;
    let one = |v: Vec<u8>| (v.len() == 1).then(|| v[0]);
    lx.keyword(b"with");
    if lx.byte(b'(') {
        loop {
            let name = lx.name()?;
            // The value: absent, a string, a word, a number, a list, `*`.
            let value: Option<Vec<u8>> = match lx.peek() {
                Some(b',' | b')') => None,
                Some(b'(') => {
                    lx.byte(b'(');
                    lx.parenthesised()?;
                    Some(Vec::new())
                }
                Some(b'*') => {
                    lx.byte(b'*');
                    Some(b"*".to_vec())
                }
                Some(b'\'' | b'$') => Some(lx.string()?),
                Some(b'e' | b'E') if lx.s.get(lx.i + 1) == Some(&b'\'') => Some(lx.string()?),
                Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' => {
                    let from = lx.i;
                    while lx.i < lx.s.len()
                        && (lx.s[lx.i].is_ascii_alphanumeric() || b"+-.".contains(&lx.s[lx.i]))
                    {
                        lx.i += 1;
                    }
                    Some(lx.s[from..lx.i].to_vec())
                }
                _ => Some(lx.name()?),
            };
            let lower = value.as_ref().map(|v| v.to_ascii_lowercase());
            match &name[..] {
                b"format" => match lower.as_deref() {
                    Some(b"csv") => csv = true,
                    Some(b"text") => csv = false,
                    Some(b"binary") => binary = true,
                    _ => return None,
                },
                b"delimiter" => delimiter = Some(one(value?)?),
                b"null" => null = Some(value?),
                b"quote" => quote = Some(one(value?)?),
                b"escape" => escape = Some(one(value?)?),
                b"header" => {
                    header = match lower.as_deref() {
                        None | Some(b"true" | b"on" | b"1" | b"match") => true,
                        Some(b"false" | b"off" | b"0") => false,
                        _ => return None,
                    }
                }
                // An encoding whose multi-byte characters can hold ASCII
                // bytes (a delimiter, a backslash) splits fields wrong.
                b"encoding" if !super::ascii_safe_encoding(value.as_deref()?) => return None,
                // FORCE_QUOTE, …: no change to how rows read.
                _ => {}
            }
            if lx.byte(b',') {
                continue;
            }
            if lx.byte(b')') {
                break;
            }
            return None;
        }
    } else {
        while !lx.at_end() {
            let w = lx.word()?.to_ascii_lowercase();
            match &w[..] {
                b"binary" => binary = true,
                b"csv" => csv = true,
                b"header" => header = true,
                b"delimiter" | b"null" | b"quote" | b"escape" | b"encoding" => {
                    lx.keyword(b"as");
                    let v = lx.string()?;
                    match &w[..] {
                        b"delimiter" => delimiter = Some(one(v)?),
                        b"null" => null = Some(v),
                        b"quote" => quote = Some(one(v)?),
                        b"escape" => escape = Some(one(v)?),
                        _ if !super::ascii_safe_encoding(&v) => return None,
                        _ => {}
                    }
                }
                b"force" => {
                    // FORCE QUOTE cols | *, FORCE NOT NULL cols.
                    while lx.keyword(b"quote") || lx.keyword(b"not") || lx.keyword(b"null") {}
                    if !lx.byte(b'*') {
                        loop {
                            lx.name()?;
                            if !lx.byte(b',') {
                                break;
                            }
                        }
                    }
                }
                _ => return None,
            }
        }
    }
    if !lx.at_end() {
        return None;
    }
    let format = if csv {
        let quote = quote.unwrap_or(b'"');
        CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(b','),
            quote,
            escape: escape.unwrap_or(quote),
        }
    } else {
        CopyFormat::Text {
            delimiter: delimiter.unwrap_or(b'\t'),
        }
    };
    Some(CopyOptions {
        format,
        binary,
        null: null.unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() }),
        header,
    })
}

/// Options guessed from a statement that did not read (its output is
/// masked whole; the split only needs to be close): CSV when the text says
/// `csv`, its DELIMITER and QUOTE when written plainly.
fn guess_options(s: &[u8]) -> CopyOptions {
    let lower = s.to_ascii_lowercase();
    let delimiter = option_char(s, &lower, b"delimiter");
    if memchr::memmem::find(&lower, b"csv").is_some() {
        let quote = option_char(s, &lower, b"quote").unwrap_or(b'"');
        CopyOptions {
            format: CopyFormat::Csv {
                delimiter: delimiter.unwrap_or(b','),
                quote,
                escape: quote,
            },
            binary: false,
            null: Vec::new(),
            header: false,
        }
    } else {
        CopyOptions {
            format: CopyFormat::Text {
                delimiter: delimiter.unwrap_or(b'\t'),
            },
            ..CopyOptions::text()
        }
    }
}

/// The options of a `COPY … TO STDOUT` from (the start of) a statement's
/// text, if it is one, without reading the statement: for a text only
/// part of which is at hand (its output is masked whole).
pub fn copy_to_options(sql: &[u8]) -> Option<CopyOptions> {
    let s = sql.trim_ascii_start();
    if s.len() < 4 || !s[..4].eq_ignore_ascii_case(b"copy") || !looks_like_copy_out(s) {
        return None;
    }
    Some(guess_options(s))
}

/// The one-byte value of COPY option `name` written plainly (`name 'c'`,
/// `name as 'c'`, `name E'\t'`), if the text has it.
fn option_char(s: &[u8], lower: &[u8], name: &[u8]) -> Option<u8> {
    let mut from = 0;
    while let Some(k) = memchr::memmem::find(&lower[from..], name) {
        let at = from + k + name.len();
        from = at;
        let mut lx = Lex::new(s, false);
        lx.i = at;
        lx.keyword(b"as");
        if let Some(v) = lx.string().filter(|v| v.len() == 1) {
            return Some(v[0]);
        }
    }
    None
}

/// One column of a COPY's output: its type and its column rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyColumn {
    pub oid: u32,
    pub rule: Option<(RuleId, ColumnAction)>,
    /// Where it comes from (table oid and attribute number; 0 when it is
    /// not a plain column).
    pub table: u32,
    pub attnum: i16,
}

/// The columns of a COPY from the RowDescription of its describe, each with
/// its rule (the stored column's through `origins`, else the result
/// name's).
pub fn copy_columns(
    engine: &Engine,
    origins: Option<&ColumnOrigins>,
    unread: bool,
    statement: Option<&Text>,
    body: &[u8],
) -> Result<Vec<CopyColumn>, RowError> {
    const E: RowError = RowError::Malformed("RowDescription");
    let n = body.get(..2).ok_or(E)?;
    let n = i16::from_be_bytes([n[0], n[1]]);
    let mut rest = body.get(2..).ok_or(E)?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let (name, tail) = crate::protocol::cstr(rest).ok_or(E)?;
        let f = tail.get(..18).ok_or(E)?;
        let field = Field::new(name, f);
        cols.push(CopyColumn {
            oid: field.oid,
            rule: rule_of(engine, origins, unread, statement, &field),
            table: field.table,
            attnum: field.attnum,
        });
        rest = &tail[18..];
    }
    if !rest.is_empty() || n < 0 {
        return Err(E);
    }
    Ok(cols)
}

/// Whether any of `cols` has a rule (else the detectors alone apply, in
/// place).
pub fn any_rule(cols: &[CopyColumn]) -> bool {
    cols.iter().any(|c| c.rule.is_some())
}

/// The rule of field `i`: its column's, or, with the columns unknown
/// (`cols` None, or fewer than the row has), `mask` under the engine's
/// `column:unresolved_copy` rule.
fn field_rule(
    engine: &Engine,
    cols: Option<&[CopyColumn]>,
    i: usize,
) -> Option<(RuleId, ColumnAction)> {
    match cols.and_then(|c| c.get(i)) {
        Some(c) => c.rule,
        None => engine
            .unresolved_copy_rule()
            .map(|r| (r, ColumnAction::Mask)),
    }
}

/// A field of a text or CSV row: its bytes as sent (quotes included), and
/// where its value's bytes are within them.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    raw: (usize, usize),
    pub(super) value: (usize, usize),
    quoted: bool,
}

/// The fields of one text or CSV CopyData payload (one row; PostgreSQL
/// sends one row per message).
fn fields(format: CopyFormat, p: &mut [u8], spans: &mut Vec<Span>) {
    spans.clear();
    for_each_field(format, p, |_, s| spans.push(s));
}

/// Call `f` with the payload and each field's span in turn; `f` may change
/// the bytes of the field's value (the split goes on after it).
pub(super) fn for_each_field(format: CopyFormat, p: &mut [u8], mut f: impl FnMut(&mut [u8], Span)) {
    let len = p.len();
    // (The row's newline ends the last field.)
    let end = if p.last() == Some(&b'\n') {
        len - 1
    } else {
        len
    };
    let end = if matches!(format, CopyFormat::Csv { .. }) && end > 0 && p[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    let mut at = 0;
    loop {
        let span = match format {
            CopyFormat::Text { delimiter } => {
                let mut i = at;
                while i < end && p[i] != delimiter {
                    i += if p[i] == b'\\' { 2 } else { 1 };
                }
                let i = i.min(end);
                Span {
                    raw: (at, i),
                    value: (at, i),
                    quoted: false,
                }
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
            } => {
                if at < end && p[at] == quote {
                    let mut i = at + 1;
                    while i < end {
                        let c = p[i];
                        // An escaped quote or escape (the escape is the
                        // quote, doubled, by default).
                        if c == escape && i + 1 < end && (p[i + 1] == quote || p[i + 1] == escape) {
                            i += 2;
                            continue;
                        }
                        if c == quote {
                            break;
                        }
                        i += 1;
                    }
                    let close = i.min(end);
                    let stop = (close + 1).min(end);
                    // (Anything after the closing quote up to the delimiter
                    // belongs to the field too.)
                    let stop = memchr::memchr(delimiter, &p[stop..end]).map_or(end, |k| stop + k);
                    Span {
                        raw: (at, stop),
                        value: (at + 1, close),
                        quoted: true,
                    }
                } else {
                    let i = memchr::memchr(delimiter, &p[at.min(end)..end]).map_or(end, |k| at + k);
                    Span {
                        raw: (at, i),
                        value: (at, i),
                        quoted: false,
                    }
                }
            }
        };
        at = span.raw.1 + 1;
        f(p, span);
        if at > end {
            break;
        }
    }
}

fn is_null(o: &CopyOptions, p: &[u8], s: &Span) -> bool {
    !s.quoted && p[s.raw.0..s.raw.1] == o.null[..]
}

/// A field's value: text-format escapes decoded, CSV quotes undone (an
/// unquoted CSV value has none: PostgreSQL writes its characters as they
/// are, the ESCAPE character too).
fn decode(format: CopyFormat, quoted: bool, v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if matches!(format, CopyFormat::Csv { .. }) && !quoted {
        out.extend_from_slice(v);
        return;
    }
    let mut i = 0;
    while i < v.len() {
        let (c, next) = decoded_at(format, v, i);
        out.push(c);
        i = next;
    }
}

/// The byte that the raw bytes of a field's value from `v[i]` on stand
/// for, and where the next one starts: a text-format backslash escape or
/// a CSV quote pair (`""`, or the `ESCAPE` character before a quote or
/// itself) is one byte of two or more raw ones.
#[inline]
fn decoded_at(format: CopyFormat, v: &[u8], i: usize) -> (u8, usize) {
    match format {
        CopyFormat::Text { .. } if v[i] == b'\\' && i + 1 < v.len() => text_escape(v, i),
        CopyFormat::Csv { quote, escape, .. }
            if (v[i] == escape || v[i] == quote)
                && v.get(i + 1).is_some_and(|&d| d == quote || d == escape) =>
        {
            (v[i + 1], i + 2)
        }
        _ => (v[i], i + 1),
    }
}

/// Scan one field of a text or CSV row with the detectors, in place. A
/// text-format value with backslash escapes, or a quoted CSV value with
/// quotes inside (`""`, or the `ESCAPE` character), is scanned as the text
/// it stands for: decoded into `scratch`, masked there (JSON members,
/// named values and whole-value tokens see the quotes as written, not
/// doubled; a token is not cut by the `\` PostgreSQL writes before each
/// delimiter character in the data, which the client chooses: `DELIMITER
/// '_'` made `ghp\_…` of a GitHub token), and written back over the same
/// bytes: an escaped character that was masked becomes mask characters
/// over all of its raw bytes, so the field keeps its length and stays
/// well-formed. Returns the hits.
pub(super) fn scan_field(
    engine: &Engine,
    format: CopyFormat,
    p: &mut [u8],
    s: &Span,
    scratch: &mut Vec<u8>,
    hits: &mut Hits,
) -> u32 {
    let v = &mut p[s.value.0..s.value.1];
    if !escaped(format, v, s) {
        return engine.mask_counted(v, hits);
    }
    decode(format, s.quoted, v, scratch);
    let n = engine.mask_counted(scratch, hits);
    if n == 0 {
        return 0;
    }
    // (The raw bytes of each decoded one, as `decode` reads them.)
    let (mut i, mut j) = (0, 0);
    while i < v.len() && j < scratch.len() {
        let (c, next) = decoded_at(format, v, i);
        if scratch[j] != c {
            v[i..next].fill(scratch[j]);
        }
        i = next;
        j += 1;
    }
    n
}

/// Whether field `s`'s value `v` is written with escapes: a backslash in
/// text format, a quote or ESCAPE character inside a quoted CSV value.
fn escaped(format: CopyFormat, v: &[u8], s: &Span) -> bool {
    match format {
        CopyFormat::Text { .. } => memchr::memchr(b'\\', v).is_some(),
        CopyFormat::Csv { quote, escape, .. } => {
            s.quoted && memchr::memchr2(quote, escape, v).is_some()
        }
    }
}

/// Whether the mask character `ch`, written into a field as it is, would
/// read as syntax of COPY options `o` (the client chooses them: `DELIMITER
/// '*'`, or CSV `QUOTE '*'`): the fields of such a COPY that masking
/// changes are then written anew ([`mask_copy_row`]).
pub fn mask_char_clashes(o: &CopyOptions, ch: u8) -> bool {
    matches!(ch, b'\\' | b'\n' | b'\r')
        || match o.format {
            CopyFormat::Text { delimiter } => ch == delimiter,
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
            } => ch == delimiter || ch == quote || ch == escape,
        }
}

/// The byte the text-format escape at `v[i]` (a backslash with a byte
/// after it) stands for, and where the byte after the escape is.
fn text_escape(v: &[u8], i: usize) -> (u8, usize) {
    let c = v[i + 1];
    let mut i = i + 2;
    let b = match c {
        b'b' => 8,
        b'f' => 12,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'v' => 11,
        b'0'..=b'7' => {
            let mut x = (c - b'0') as u32;
            let mut k = 0;
            while k < 2 && i < v.len() && (b'0'..=b'7').contains(&v[i]) {
                x = x * 8 + (v[i] - b'0') as u32;
                i += 1;
                k += 1;
            }
            x as u8
        }
        b'x' if i < v.len() && v[i].is_ascii_hexdigit() => {
            let mut x = 0u32;
            let mut k = 0;
            while k < 2 && i < v.len() && v[i].is_ascii_hexdigit() {
                x = x * 16 + (v[i] as char).to_digit(16).unwrap_or(0);
                i += 1;
                k += 1;
            }
            x as u8
        }
        c => c,
    };
    (b, i)
}

/// A value written as a field of `o`'s format; a CSV value quoted when it
/// must be, or when `quoted` (the field it replaces was: `FORCE_QUOTE`).
fn encode(o: &CopyOptions, v: &[u8], quoted: bool, out: &mut Vec<u8>) {
    match o.format {
        CopyFormat::Text { delimiter } => {
            // (A value that is the NULL string as written reads as NULL: its
            // first byte escaped, it reads as the value, the NULL string
            // being compared before escapes are read.)
            let collides = !v.is_empty() && v == &o.null[..];
            for (k, &c) in v.iter().enumerate() {
                let e = match c {
                    b'\\' => b'\\',
                    8 => b'b',
                    12 => b'f',
                    b'\n' => b'n',
                    b'\r' => b'r',
                    b'\t' => b't',
                    11 => b'v',
                    c if c == delimiter => c,
                    // (Not a letter or digit: `\N`, `\n`, `\123` are
                    // escapes of their own.)
                    c if k == 0 && collides && !c.is_ascii_alphanumeric() => c,
                    _ => {
                        out.push(c);
                        continue;
                    }
                };
                out.push(b'\\');
                out.push(e);
            }
        }
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
        } => {
            let needs = quoted
                || v.is_empty()
                || v == b"\\."
                || v == &o.null[..]
                || v.iter()
                    .any(|&c| c == delimiter || c == quote || c == b'\n' || c == b'\r');
            if !needs {
                out.extend_from_slice(v);
                return;
            }
            out.push(quote);
            for &c in v {
                if c == quote || c == escape {
                    out.push(escape);
                }
                out.push(c);
            }
            out.push(quote);
        }
    }
}

/// Scratch a session keeps for [`mask_copy_row`].
#[derive(Debug, Default)]
pub struct CopyScratch {
    spans: Vec<Span>,
    value: Vec<u8>,
    /// The fields to write anew, in order: a field's index and its new
    /// value (decoded; encoded when written) in `values`, or `None` for
    /// the NULL string.
    replaced: Vec<(usize, Option<(usize, usize)>)>,
    values: Vec<u8>,
}

impl CopyScratch {
    /// Field `i` is to be written as `v` (decoded).
    fn replace(&mut self, i: usize, v: Option<&[u8]>) {
        let v = v.map(|v| {
            let a = self.values.len();
            self.values.extend_from_slice(v);
            (a, self.values.len())
        });
        self.replaced.push((i, v));
    }
}

/// Mask one text or CSV CopyData payload of a COPY with options `o` whose
/// columns are `cols` (`None`: not known; every field is masked whole, as
/// in a row with another number of fields than `cols`). Unruled fields are
/// scanned by the detectors in place, as are `mask` and `keep_last` on
/// values written without escapes. When another rule applies to a non-NULL
/// field (`hash`, `null`, a value with escapes), the whole payload is
/// written to `out` (cleared first) with ruled fields decoded, masked,
/// hashed or nulled, and encoded again, and true is returned. Hits are
/// counted per rule.
pub fn mask_copy_row(
    engine: &Engine,
    o: &CopyOptions,
    cols: Option<&[CopyColumn]>,
    payload: &mut [u8],
    hits: &mut Hits,
    scratch: &mut CopyScratch,
    out: &mut Vec<u8>,
) -> bool {
    mask_copy_fields(engine, o, cols, false, payload, hits, scratch, out)
}

/// The HEADER row of a text or CSV COPY (column names, no column's
/// values): the detectors only, in place as in [`mask_copy_data`], or
/// written anew as [`mask_copy_row`] writes fields when the mask character
/// is the COPY's delimiter, quote or escape. Returns whether `out` holds
/// the new payload.
pub fn mask_copy_header(
    engine: &Engine,
    o: &CopyOptions,
    payload: &mut [u8],
    hits: &mut Hits,
    scratch: &mut CopyScratch,
    out: &mut Vec<u8>,
) -> bool {
    mask_copy_fields(engine, o, None, true, payload, hits, scratch, out)
}

/// [`mask_copy_row`]; `header`: the fields are column names (no rules).
#[allow(clippy::too_many_arguments)]
fn mask_copy_fields(
    engine: &Engine,
    o: &CopyOptions,
    cols: Option<&[CopyColumn]>,
    header: bool,
    payload: &mut [u8],
    hits: &mut Hits,
    scratch: &mut CopyScratch,
    out: &mut Vec<u8>,
) -> bool {
    let format = o.format;
    fields(format, payload, &mut scratch.spans);
    // A row split into another number of fields than the COPY has columns
    // (options read wrong): no field is where its column says.
    let cols = cols.filter(|c| c.len() == scratch.spans.len());
    let ch = engine.mask_char();
    // (A mask character written in place would read as the COPY's
    // syntax: the fields masking changes are written anew.)
    let clash = mask_char_clashes(o, ch);
    // (Text format writes a value equal to the NULL string as it writes
    // NULL; unless that is `\N`, which no value is written as, a ruled
    // field that reads as NULL is masked as a value: fail safe.)
    let null_is_value = matches!(format, CopyFormat::Text { .. }) && o.null != b"\\N";
    scratch.replaced.clear();
    scratch.values.clear();
    for i in 0..scratch.spans.len() {
        let s = scratch.spans[i];
        let esc = escaped(format, &payload[s.value.0..s.value.1], &s);
        let was_null = is_null(o, payload, &s);
        let rule = if header {
            None
        } else {
            field_rule(engine, cols, i)
        };
        match rule {
            None => {
                if !engine.detects() {
                    continue;
                }
                // (A number column as in a DataRow: a card kept as a
                // number gets its masked digits made 0, so the field
                // still loads into its column, and other integers (a
                // random 64-bit id) stay; see `rows::mask_number`.)
                let number = cols
                    .and_then(|c| c.get(i))
                    .map(|c| c.oid)
                    .filter(|o| matches!(o, 20 | 1700));
                match number {
                    Some(oid) if !esc && !clash => {
                        let v = &mut payload[s.value.0..s.value.1];
                        super::rows::mask_number(engine, oid, 0, v, hits);
                    }
                    None if !clash => {
                        scan_field(engine, format, payload, &s, &mut scratch.value, hits);
                    }
                    // (Written with escapes (`\-`, a doubled CSV quote
                    // that is a digit or `-`), or under a clash: decoded,
                    // masked, written anew.)
                    _ => {
                        let mut v = std::mem::take(&mut scratch.value);
                        decode(format, s.quoted, &payload[s.value.0..s.value.1], &mut v);
                        let n = match number {
                            Some(oid) => super::rows::mask_number(engine, oid, 0, &mut v, hits),
                            None => engine.mask_counted(&mut v, hits),
                        };
                        if n > 0 {
                            scratch.replace(i, Some(&v));
                        }
                        scratch.value = v;
                    }
                }
            }
            Some((r, action)) => {
                if was_null && !null_is_value {
                    continue;
                }
                hits.add_at(r, i as u32, 1);
                // `mask` and `keep_last` on a value written without
                // escapes or quotes inside: the same bytes, in place (the
                // rewrite below would give the same).
                let v = &mut payload[s.value.0..s.value.1];
                match action {
                    ColumnAction::Mask if !esc && !clash => {
                        mask_chars(v, 0, ch);
                    }
                    ColumnAction::KeepLast(k) if !esc && !clash => {
                        mask_chars(v, k as usize, ch);
                    }
                    ColumnAction::Null => scratch.replace(i, None),
                    _ => {
                        let mut d = std::mem::take(&mut scratch.value);
                        decode(format, s.quoted, v, &mut d);
                        match action {
                            // (Hashed straight into the new values.)
                            ColumnAction::Hash => {
                                let a = scratch.values.len();
                                engine.hash_into(&d, &mut scratch.values);
                                scratch.replaced.push((i, Some((a, scratch.values.len()))));
                            }
                            // (A value masking leaves as it is, written as
                            // it was: not rewritten.)
                            ColumnAction::KeepLast(k) => {
                                if mask_chars(&mut d, k as usize, ch) {
                                    scratch.replace(i, Some(&d));
                                }
                            }
                            _ => {
                                if mask_chars(&mut d, 0, ch) {
                                    scratch.replace(i, Some(&d));
                                }
                            }
                        }
                        scratch.value = d;
                    }
                }
            }
        }
        // (Masked in place into the NULL string (`NULL '**'`): written anew,
        // quoted or escaped, so that it still reads as a value.)
        if !was_null
            && is_null(o, payload, &s)
            && scratch.replaced.last().is_none_or(|&(k, _)| k != i)
        {
            let mut d = std::mem::take(&mut scratch.value);
            decode(format, s.quoted, &payload[s.value.0..s.value.1], &mut d);
            scratch.replace(i, Some(&d));
            scratch.value = d;
        }
    }
    if scratch.replaced.is_empty() {
        return false;
    }
    out.clear();
    let mut prev = 0;
    for &(i, v) in &scratch.replaced {
        let s = scratch.spans[i];
        out.extend_from_slice(&payload[prev..s.raw.0]);
        prev = s.raw.1;
        match v {
            None => out.extend_from_slice(&o.null),
            Some((a, b)) => encode(o, &scratch.values[a..b], s.quoted, out),
        }
    }
    out.extend_from_slice(&payload[prev..]);
    true
}

/// The `jsonb` type's oid.
const JSONB: u32 = 3802;

/// Mask one binary CopyData payload (the file header on the first, then a
/// tuple, or the trailer) of a COPY whose columns are `cols` (`None`: not
/// known). Unruled fields are scanned in place. A ruled field of a text
/// type gets its rule's action; a ruled field of any other type becomes
/// NULL (its binary form cannot carry a masked value), as does every field
/// of a COPY whose columns are not known. Returns true with the payload
/// rewritten to `out` when a field changed length or became NULL; a
/// payload that does not parse is scanned whole in place.
pub fn mask_binary_copy_row(
    engine: &Engine,
    cols: Option<&[CopyColumn]>,
    payload: &mut [u8],
    hits: &mut Hits,
    out: &mut Vec<u8>,
) -> bool {
    const SIG: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let whole = |p: &mut [u8], hits: &mut Hits| {
        if engine.detects() {
            engine.mask_counted(p, hits);
        }
        false
    };
    let mut at = 0usize;
    if payload.starts_with(SIG) {
        let Some(ext) = payload.get(15..19) else {
            return false;
        };
        at = 19 + crate::protocol::be_u32(ext) as usize;
    }
    let Some(n) = payload.get(at..at + 2) else {
        return false;
    };
    let n = i16::from_be_bytes([n[0], n[1]]);
    if n < 0 {
        return false; // trailer
    }
    // First pass: check the layout, scan unruled fields, see whether a
    // rule applies.
    let mut i = at + 2;
    let mut ruled = false;
    for f in 0..n as usize {
        let Some(l) = payload.get(i..i + 4) else {
            return whole(payload, hits);
        };
        let l = crate::protocol::be_i32(l);
        i += 4;
        if l < 0 {
            continue;
        }
        let end = i + l as usize;
        if end > payload.len() {
            return whole(payload, hits);
        }
        match field_rule(engine, cols, f) {
            None => {
                if engine.detects() {
                    // (A binary `jsonb` is a version byte and the JSON
                    // text: scanned after the byte, as in a DataRow, so
                    // that the JSON name rules and whole-value tokens see
                    // the document.)
                    let oid = cols.and_then(|c| c.get(f)).map(|c| c.oid);
                    let jsonb = oid == Some(JSONB) && payload[i..end].first() == Some(&1);
                    // (A card number kept as a number, alone or in an
                    // array: see `mask_number`; no text in these.)
                    if let Some(o) =
                        oid.filter(|&o| matches!(o, 20 | 1700) || super::rows::number_container(o))
                    {
                        super::rows::mask_number(engine, o, 1, &mut payload[i..end], hits);
                    } else {
                        engine.mask_counted(&mut payload[i + jsonb as usize..end], hits);
                    }
                }
            }
            Some((r, _)) => {
                hits.add_at(r, f as u32, 1);
                ruled = true;
            }
        }
        i = end;
    }
    if !ruled {
        return false;
    }
    out.clear();
    out.extend_from_slice(&payload[..at + 2]);
    let mut i = at + 2;
    let ch = engine.mask_char();
    for f in 0..n as usize {
        let l = crate::protocol::be_i32(&payload[i..i + 4]);
        i += 4;
        if l < 0 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let v = &mut payload[i..i + l as usize];
        i += l as usize;
        let text = cols
            .and_then(|c| c.get(f))
            .is_some_and(|c| kind_is_text(c.oid));
        match field_rule(engine, cols, f) {
            None => {
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(v);
            }
            Some((_, ColumnAction::Hash)) if text => {
                out.extend_from_slice(&(Engine::HASH_LEN as i32).to_be_bytes());
                engine.hash_into(v, out);
            }
            Some((_, ColumnAction::Mask)) if text => {
                mask_chars(v, 0, ch);
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(v);
            }
            Some((_, ColumnAction::KeepLast(k))) if text => {
                mask_chars(v, k as usize, ch);
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(v);
            }
            Some(_) => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out.extend_from_slice(&payload[i..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskingProfile;

    fn describe(sql: &str) -> Vec<Option<String>> {
        describe_with(sql, false)
    }

    fn describe_with(sql: &str, backslash: bool) -> Vec<Option<String>> {
        copy_statements(sql.as_bytes(), backslash)
            .into_iter()
            .map(|s| s.describe.map(|d| String::from_utf8(d).unwrap()))
            .collect()
    }

    fn options(sql: &str) -> CopyOptions {
        copy_statements(sql.as_bytes(), false)[0].options.clone()
    }

    fn csv(delimiter: u8, quote: u8, escape: u8) -> CopyFormat {
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
        }
    }

    #[test]
    fn copy_statements_become_the_queries_they_run() {
        let one = |sql: &str| describe(sql).pop().flatten();
        assert_eq!(
            one("COPY people TO STDOUT").unwrap(),
            "SELECT * FROM people"
        );
        assert_eq!(
            one("copy public.\"Peo;ple\" (ssn, \"Na)me\") to stdout with (format csv)").unwrap(),
            "SELECT ssn, \"Na)me\" FROM public.\"Peo;ple\""
        );
        assert_eq!(
            one("COPY (SELECT ssn AS x FROM people WHERE note = ') TO STDOUT;') TO STDOUT")
                .unwrap(),
            "SELECT ssn AS x FROM people WHERE note = ') TO STDOUT;'"
        );
        assert_eq!(
            one("/* c */ COPY -- x\n BINARY t TO STDOUT").unwrap(),
            "SELECT * FROM t"
        );
        assert_eq!(
            one("COPY (SELECT $q$a)$q$, (1)) TO STDOUT").unwrap(),
            "SELECT $q$a)$q$, (1)"
        );
        assert_eq!(one("\x0bCOPY t TO\x0bSTDOUT").unwrap(), "SELECT * FROM t");
        // Several statements, and the ones that send nothing to the client.
        assert_eq!(
            describe(
                "SELECT 1; COPY a TO STDOUT; COPY b FROM STDIN; COPY c TO '/tmp/x'; \
                 COPY (select E'\\';') TO STDOUT (FORMAT csv)"
            ),
            vec![
                Some("SELECT * FROM a".to_string()),
                Some("select E'\\';'".to_string())
            ]
        );
        assert!(describe("SELECT 'x'").is_empty());
        let first = |sql: &str| {
            copy_statements(sql.as_bytes(), false)
                .iter()
                .map(|s| s.first)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            first(" ; /* x */ COPY a TO STDOUT; COPY b TO STDOUT"),
            [true, false]
        );
        assert_eq!(first("SELECT 1; COPY a TO STDOUT"), [false]);
        assert!(describe("copyt TO STDOUT").is_empty());
        // Unreadable: still a COPY to the client, with no query.
        assert_eq!(describe("COPY (SELECT 1 TO STDOUT"), vec![None]);
        assert_eq!(describe("COPY 1x TO STDOUT"), vec![None]);
        assert_eq!(describe("COPY t TO STDOUT WITH SOMETHING"), vec![None]);
        assert_eq!(describe("COPY t TO STDOUT (FORMAT fancy)"), vec![None]);
        // A name this reader does not take apart: that COPY is listed
        // without a query, so the next one keeps its place.
        assert_eq!(
            describe("COPY U&\"people\" (api_secret) TO STDOUT; COPY (SELECT 1) TO STDOUT"),
            vec![None, Some("SELECT 1".to_string())]
        );
        // A comment ends at a carriage return too, as PostgreSQL ends it.
        assert_eq!(
            describe("COPY (SELECT 1) TO STDOUT; -- x\rCOPY people (s) TO STDOUT"),
            vec![
                Some("SELECT 1".to_string()),
                Some("SELECT s FROM people".to_string())
            ]
        );
        // The word COPY where this reader saw no COPY statement (a string
        // read another way than the server reads it): none described.
        for backslash in [false, true] {
            let d = describe_with(
                "SELECT '\\'; COPY (SELECT 1) TO STDOUT; SELECT '; COPY people (s) TO STDOUT",
                backslash,
            );
            assert!(d.iter().all(Option::is_none), "{backslash}: {d:?}");
        }
        assert_eq!(
            describe_with("SELECT 'a\\'; COPY t TO STDOUT'; COPY u TO STDOUT", true),
            vec![None]
        );
        assert_eq!(describe("SELECT 'copy'; COPY u TO STDOUT"), vec![None]);
    }

    #[test]
    fn copy_options_read_as_postgresql_reads_them() {
        assert_eq!(
            options("COPY (SELECT csv FROM t) TO STDOUT"),
            CopyOptions::text()
        );
        assert_eq!(options("COPY t TO STDOUT CSV").format, CopyFormat::CSV);
        assert_eq!(
            options("COPY t TO STDOUT (FORMAT csv, DELIMITER ';', QUOTE '''')").format,
            csv(b';', b'\'', b'\'')
        );
        assert_eq!(
            options("COPY t TO STDOUT DELIMITER AS '|'").format,
            CopyFormat::Text { delimiter: b'|' }
        );
        for sql in [
            "COPY t TO STDOUT DELIMITER $$|$$",
            "COPY t TO STDOUT (\"delimiter\" '|')",
            "COPY t TO STDOUT WITH (delimiter $x$|$x$)",
        ] {
            assert_eq!(
                options(sql).format,
                CopyFormat::Text { delimiter: b'|' },
                "{sql}"
            );
        }
        for sql in [
            r"COPY t TO STDOUT DELIMITER E'\x09'",
            r"COPY t TO STDOUT DELIMITER E'\011'",
            r"COPY t TO STDOUT (DELIMITER E'\t')",
        ] {
            assert_eq!(options(sql).format, CopyFormat::TEXT, "{sql}");
            assert!(describe(sql)[0].is_some(), "{sql}");
        }
        // A NULL string that says `csv` or `delimiter`.
        let o = options("COPY t TO STDOUT NULL 'csv'");
        assert_eq!((o.format, &o.null[..]), (CopyFormat::TEXT, &b"csv"[..]));
        let o = options("COPY t TO STDOUT NULL 'delimiter ''x'");
        assert_eq!(
            (o.format, &o.null[..]),
            (CopyFormat::TEXT, &b"delimiter 'x"[..])
        );
        // ESCAPE, HEADER, FORCE QUOTE.
        let o = options(r"COPY t TO STDOUT (FORMAT csv, ESCAPE '\', HEADER, FORCE_QUOTE *)");
        assert_eq!(o.format, csv(b',', b'"', b'\\'));
        assert!(o.header && o.null.is_empty());
        let o = options("COPY t TO STDOUT CSV HEADER FORCE QUOTE a, b NULL AS 'n'");
        assert!(o.header && o.null == b"n" && o.format == CopyFormat::CSV);
        assert!(!options("COPY t TO STDOUT (FORMAT csv, HEADER false)").header);
        assert!(options("COPY t TO STDOUT (FORMAT binary)").binary);
        // An encoding whose characters can hold ASCII bytes: no query.
        assert_eq!(describe("COPY t TO STDOUT (ENCODING 'SJIS')"), vec![None]);
        assert_eq!(describe("COPY t TO STDOUT ENCODING 'big5'"), vec![None]);
        assert!(describe("COPY t TO STDOUT (ENCODING 'UTF8')")[0].is_some());
        assert!(copy_from_stdin(b"select 1; COPY t (a) FROM STDIN", false));
        assert!(!copy_from_stdin(
            b"COPY t FROM '/x'; COPY t TO STDOUT",
            false
        ));
        // Options that do not read: no query.
        assert_eq!(describe("COPY t TO STDOUT (DELIMITER '||')"), vec![None]);
        assert_eq!(describe("COPY t TO STDOUT (DELIMITER U&'|')"), vec![None]);
    }

    #[test]
    fn copy_formats_with_their_delimiters_and_quotes() {
        let f = |s: &str| copy_to_options(s.as_bytes()).map(|o| o.format);
        assert_eq!(f("copy t to stdout"), Some(CopyFormat::TEXT));
        assert_eq!(f("COPY t TO STDOUT CSV"), Some(CopyFormat::CSV));
        assert_eq!(f("select 1"), None);
        assert_eq!(f("copy t from stdin"), None);
        assert_eq!(
            f("copy t to stdout (delimiter '|')"),
            Some(CopyFormat::Text { delimiter: b'|' })
        );
        assert_eq!(
            f("COPY t TO STDOUT WITH DELIMITER AS '-'"),
            Some(CopyFormat::Text { delimiter: b'-' })
        );
        assert_eq!(
            f("copy t to stdout with (format csv, delimiter ';', quote '''')"),
            Some(csv(b';', b'\'', b'\''))
        );
        assert_eq!(
            f(r"copy t to stdout (format text, delimiter E'\t')"),
            Some(CopyFormat::Text { delimiter: b'\t' })
        );
        assert_eq!(f("copy t to stdout (delimiter"), Some(CopyFormat::TEXT));
    }

    fn engine() -> Engine {
        let p = MaskingProfile::from_yaml(
            "columns:\n  - { column: secret, action: mask }\n  - { column: ssn, action: { keep_last: 4 } }\n  - { column: h, action: hash }\n  - { column: gone, action: 'null' }\nhash_key: '0123456789abcdef'\n",
        )
        .unwrap();
        Engine::compile(&p).unwrap()
    }

    fn cols(e: &Engine, names: &[&str]) -> Vec<CopyColumn> {
        names
            .iter()
            .map(|n| CopyColumn {
                oid: 25,
                rule: e.column_rule(n.as_bytes(), 25),
                table: 0,
                attnum: 0,
            })
            .collect()
    }

    fn run(e: &Engine, f: CopyFormat, c: Option<&[CopyColumn]>, row: &str) -> String {
        let o = CopyOptions {
            format: f,
            null: if matches!(f, CopyFormat::Csv { .. }) {
                Vec::new()
            } else {
                b"\\N".to_vec()
            },
            ..CopyOptions::text()
        };
        run_with(e, &o, c, row)
    }

    fn run_with(e: &Engine, o: &CopyOptions, c: Option<&[CopyColumn]>, row: &str) -> String {
        let mut p = row.as_bytes().to_vec();
        let mut hits = Hits::new();
        let mut out = Vec::new();
        let mut s = CopyScratch::default();
        if mask_copy_row(e, o, c, &mut p, &mut hits, &mut s, &mut out) {
            String::from_utf8(out).unwrap()
        } else {
            String::from_utf8(p).unwrap()
        }
    }

    #[test]
    fn rules_apply_to_text_and_csv_fields_by_position() {
        let e = engine();
        let c = cols(&e, &["id", "secret", "ssn", "h", "gone", "note"]);
        let mut hash = Vec::new();
        e.hash_into(b"a\tb", &mut hash);
        let hash = String::from_utf8(hash).unwrap();
        assert_eq!(
            run(
                &e,
                CopyFormat::TEXT,
                Some(&c),
                "1\tp\\\\w\\td\t078-05-1120\ta\\tb\tx\tok\n"
            ),
            format!("1\t*****\t*******1120\t{hash}\t\\N\tok\n")
        );
        assert_eq!(
            run(
                &e,
                CopyFormat::TEXT,
                Some(&c),
                "1\t\\N\t\\N\t\\N\t\\N\tok\n"
            ),
            "1\t\\N\t\\N\t\\N\t\\N\tok\n"
        );
        // keep_last keeps a delimiter: quoted again in CSV, escaped in text.
        // (A quoted field written anew stays quoted, as `FORCE_QUOTE` asks.)
        assert_eq!(
            run(
                &e,
                CopyFormat::CSV,
                Some(&c),
                "1,\"a,\"\"b\",\"xx\"\"y,z\",\"a\tb\",gone,\n"
            ),
            format!("1,\"****\",\"**\"\"y,z\",\"{hash}\",,\n")
        );
        assert_eq!(
            run(&e, CopyFormat::TEXT, Some(&c), "1\tx\tab\\tcd\tq\t\t\n"),
            format!("1\t*\t*b\\tcd\t{}\t\\N\t\n", {
                let mut h = Vec::new();
                e.hash_into(b"q", &mut h);
                String::from_utf8(h).unwrap()
            })
        );
        // `mask` and `keep_last` on values without escapes: in place.
        let mut p = b"1\tabc\t078-05-1120\t\\N\t\\N\tok\n".to_vec();
        let (mut hits, mut out, mut sc) = (Hits::new(), Vec::new(), CopyScratch::default());
        assert!(!mask_copy_row(
            &e,
            &CopyOptions::text(),
            Some(&c),
            &mut p,
            &mut hits,
            &mut sc,
            &mut out
        ));
        assert_eq!(p, b"1\t***\t*******1120\t\\N\t\\N\tok\n");
        assert_eq!(hits.total(), 2);
        // An empty value stays a value in CSV (quoted), unlike NULL.
        assert_eq!(
            run(&e, CopyFormat::CSV, Some(&c), "1,\"\",,,,\n"),
            "1,\"\",,,,\n"
        );
        // Columns not known: every field masked whole.
        assert_eq!(
            run(&e, CopyFormat::TEXT, None, "12\tab\\\\\t\\N\n"),
            "**\t***\t\\N\n"
        );
        // Another number of fields than columns (options read wrong): the
        // row masked whole.
        assert_eq!(run(&e, CopyFormat::TEXT, Some(&c[..1]), "1\tx\n"), "*\t*\n");
        // CSV with ESCAPE '\', and a NULL string of its own.
        let o = CopyOptions {
            format: CopyFormat::Csv {
                delimiter: b',',
                quote: b'"',
                escape: b'\\',
            },
            null: b"NIL".to_vec(),
            ..CopyOptions::text()
        };
        let c2 = cols(&e, &["h", "gone", "ssn", "note"]);
        let mut hx = Vec::new();
        e.hash_into(b"x\",\"y", &mut hx);
        assert_eq!(
            run_with(&e, &o, Some(&c2), "\"x\\\",\\\"y\",a,NIL,\"\\\"q,1234\"\n"),
            format!(
                "\"{}\",NIL,NIL,\"\\\"q,1234\"\n",
                String::from_utf8(hx).unwrap()
            )
        );
    }

    #[test]
    fn binary_copy_nulls_ruled_non_text_and_unknown_fields() {
        let e = engine();
        let mut c = cols(&e, &["secret", "ssn", "gone", "note"]);
        c[1].oid = 23; // an int under a keep_last rule: NULL
        let mut p = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        p.extend_from_slice(&4i16.to_be_bytes());
        for v in [&b"abc"[..], &[0, 0, 0, 7], b"x", b"4111 1111 1111 1111"] {
            p.extend_from_slice(&(v.len() as i32).to_be_bytes());
            p.extend_from_slice(v);
        }
        let (mut hits, mut out) = (Hits::new(), Vec::new());
        assert!(mask_binary_copy_row(
            &e,
            Some(&c),
            &mut p.clone(),
            &mut hits,
            &mut out
        ));
        let mut want = p[..19 + 2].to_vec();
        want.extend_from_slice(&3i32.to_be_bytes());
        want.extend_from_slice(b"***");
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&19i32.to_be_bytes());
        want.extend_from_slice(b"**** **** **** 1111");
        assert_eq!(out, want);
        assert!(mask_binary_copy_row(
            &e,
            None,
            &mut p.clone(),
            &mut hits,
            &mut out
        ));
        let mut want = p[..19 + 2].to_vec();
        for _ in 0..4 {
            want.extend_from_slice(&(-1i32).to_be_bytes());
        }
        assert_eq!(out, want);
        // The trailer passes.
        assert!(!mask_binary_copy_row(
            &e,
            None,
            &mut (-1i16).to_be_bytes().to_vec(),
            &mut hits,
            &mut out
        ));
    }

    #[test]
    fn binary_copy_jsonb_is_scanned_after_its_version_byte() {
        let e = engine();
        let mut c = cols(&e, &["doc", "v"]);
        c[0].oid = JSONB;
        c[1].oid = JSONB;
        let tuple = |docs: &[&[u8]]| {
            let mut p = (docs.len() as i16).to_be_bytes().to_vec();
            for d in docs {
                p.extend_from_slice(&(d.len() as i32 + 1).to_be_bytes());
                p.push(1);
                p.extend_from_slice(d);
            }
            p
        };
        let mut p = tuple(&[
            br#"{"service": "billing", "secret": "hunter2"}"#,
            br#""hvs.CAESIJlWh5GxLk7G1eXqZ0Y3tQmBz8aN2pRfHs6vKdUo4cTw""#,
        ]);
        let (mut hits, mut out) = (Hits::new(), Vec::new());
        assert!(!mask_binary_copy_row(
            &e,
            Some(&c),
            &mut p,
            &mut hits,
            &mut out
        ));
        let want = tuple(&[
            br#"{"service": "billing", "secret": "*******"}"#,
            br#""hvs.************************************************""#,
        ]);
        assert_eq!(String::from_utf8_lossy(&p), String::from_utf8_lossy(&want));
        assert_eq!(hits.total(), 2);
    }

    /// A card number in a binary `int8` field: its masked digits become 0
    /// (see `rows::mask_number`), in place.
    #[test]
    fn binary_copy_masks_card_numbers_kept_as_numbers() {
        let e = engine();
        let mut c = cols(&e, &["id", "pan"]);
        c[0].oid = 20;
        c[1].oid = 20;
        let tuple = |vals: &[i64]| {
            let mut p = (vals.len() as i16).to_be_bytes().to_vec();
            for v in vals {
                p.extend_from_slice(&8i32.to_be_bytes());
                p.extend_from_slice(&v.to_be_bytes());
            }
            p
        };
        let mut p = tuple(&[7, 4111111111111111]);
        let (mut hits, mut out) = (Hits::new(), Vec::new());
        assert!(!mask_binary_copy_row(
            &e,
            Some(&c),
            &mut p,
            &mut hits,
            &mut out
        ));
        assert_eq!(p, tuple(&[7, 1111]));
        assert_eq!(hits.total(), 1);
    }

    /// An unquoted CSV value has no escapes (PostgreSQL writes the ESCAPE
    /// character in it as it is): a rule that rewrites it reads it so.
    #[test]
    fn unquoted_csv_values_are_read_as_written() {
        let e = engine();
        let c = cols(&e, &["h", "ssn"]);
        let f = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'\\',
        };
        // (`hash` of the value as written: its hash in a row of the same
        // value, and `keep_last` over its 7 characters.)
        let got = run(&e, f, Some(&c), "12\\\\345,12\\\\345\n");
        let mut hashed = Vec::new();
        e.hash_into(b"12\\\\345", &mut hashed);
        let want = format!("{},***\\345\n", String::from_utf8(hashed).unwrap());
        assert_eq!(got, want);
    }

    #[test]
    fn text_values_with_escapes_are_scanned_as_their_text() {
        // PostgreSQL writes `\` before each delimiter character in the
        // data, and the client picks the delimiter: a token cut by a `\`
        // went out in clear.
        let e = engine();
        let ghp = "ghp_Xq7Lm2Pz9Rt4Vw8Ny3Kb6Hd1Fs5Gj0Ce2UaQ";
        let cases: &[(u8, String, String)] = &[
            (
                b'_',
                format!("2_ci token {}\n", ghp.replace('_', "\\_")),
                format!("2_ci token ghp\\_{}\n", "*".repeat(ghp.len() - 4)),
            ),
            (
                b' ',
                "3 Authorization:\\ Bearer\\ abcDEF123456ghiJKL7890mnopQR\n".into(),
                format!("3 Authorization:\\ Bearer\\ {}\n", "*".repeat(28)),
            ),
            (
                b'@',
                "4@postgres://app:s3cretPass\\@db/x\n".into(),
                "4@postgres://app:**********\\@db/x\n".into(),
            ),
            // (Kept punctuation stays escaped.)
            (
                b'-',
                "5-card 4111\\-1111\\-1111\\-1111\n".into(),
                "5-card ****\\-****\\-****\\-1111\n".into(),
            ),
            // (A masked escaped character becomes mask characters over both
            // of its bytes.)
            (
                b'Q',
                format!("7Qtoken {}\n", ghp.replace('Q', "\\Q")),
                format!("7Qtoken ghp_{}\n", "*".repeat(ghp.len() - 4 + 1)),
            ),
        ];
        for (d, row, want) in cases {
            let f = CopyFormat::Text { delimiter: *d };
            let mut p = row.as_bytes().to_vec();
            let mut hits = Hits::new();
            assert_eq!(
                crate::mask::mask_copy_data(&e, f, &mut p, &mut hits),
                1,
                "{row}"
            );
            assert_eq!(String::from_utf8(p).unwrap(), *want, "{row}");
            let c = cols(&e, &["id", "note"]);
            assert_eq!(run(&e, f, Some(&c), row), *want, "{row}");
        }
        // Tab-separated with `\n` inside a value: the same as the value.
        let row = "6\tpem -----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\n";
        let mut p = row.as_bytes().to_vec();
        let mut hits = Hits::new();
        assert_eq!(
            crate::mask::mask_copy_data(&e, CopyFormat::TEXT, &mut p, &mut hits),
            1
        );
        assert!(!String::from_utf8(p).unwrap().contains("MIIEvQ"));
    }

    #[test]
    fn csv_values_with_quotes_are_scanned_as_their_text() {
        let e = engine();
        let vault = "hvs.CAESIJlWh5GxLk7G1eXqZ0Y3tQmBz8aN2pRfHs6vKdUo4cTw";
        let vault_masked = format!("hvs.{}", "*".repeat(vault.len() - 4));
        let row = format!(
            "1,\"{{\"\"t\"\": \"\"{vault}\"\", \"\"secret\"\": \"\"hunter2\"\"}}\",\
             \"secret=\"\"hunter2\"\" ok\",\"\"\"{vault}\"\"\",\"a \"\"4111 1111 1111 1111\"\"\"\n"
        );
        let want = format!(
            "1,\"{{\"\"t\"\": \"\"{vault_masked}\"\", \"\"secret\"\": \"\"*******\"\"}}\",\
             \"secret=\"\"*******\"\" ok\",\"\"\"{vault_masked}\"\"\",\"a \"\"**** **** **** 1111\"\"\"\n"
        );
        let csv = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
        };
        // Unruled fields of a COPY with known columns, and a COPY without
        // rules (detectors only).
        let c = cols(&e, &["id", "doc", "note", "v", "w"]);
        assert_eq!(run(&e, csv, Some(&c), &row), want);
        let mut p = row.as_bytes().to_vec();
        let mut hits = Hits::new();
        assert_eq!(crate::mask::mask_copy_data(&e, csv, &mut p, &mut hits), 5);
        assert_eq!(String::from_utf8(p).unwrap(), want);
        // ESCAPE '\\': the pairs are `\"` and `\\`.
        let esc = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'\\',
        };
        let mut p = b"\"{\\\"secret\\\": \\\"hunter2\\\"}\"\n".to_vec();
        assert_eq!(crate::mask::mask_copy_data(&e, esc, &mut p, &mut hits), 1);
        assert_eq!(
            String::from_utf8(p).unwrap(),
            "\"{\\\"secret\\\": \\\"*******\\\"}\"\n"
        );
    }
}
