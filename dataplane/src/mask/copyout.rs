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

use super::rows::{kind_is_text, mask_chars, rule_of, Field, RowError};
use super::{ColumnAction, ColumnOrigins, CopyFormat, Engine, Hits, RuleId};

/// One `COPY … TO STDOUT` statement of a statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStatement {
    /// Its output format (from its options).
    pub format: CopyFormat,
    /// The query to describe for its columns; `None` when the statement
    /// could not be read (its output is then masked whole).
    pub describe: Option<Vec<u8>>,
    /// No statement comes before it in the text (so nothing the same
    /// Query runs first can change what it reads).
    pub first: bool,
}

/// The `COPY … TO STDOUT` statements of `sql` (one Query may hold several,
/// separated by `;`), in order. Statements that are not a COPY to the
/// client (`COPY … FROM`, `COPY … TO 'file'`, anything else) are left out.
pub fn copy_statements(sql: &[u8]) -> Vec<CopyStatement> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut first = true;
    while start < sql.len() {
        let end = statement_end(sql, start);
        let stmt = &sql[start..end];
        if let Some(mut s) = copy_statement(stmt) {
            s.first = first;
            out.push(s);
        }
        let mut lx = Lex { s: stmt, i: 0 };
        lx.space();
        first &= lx.i == stmt.len();
        start = end + 1;
    }
    out
}

/// Where the statement starting at `from` ends: its `;` at parenthesis
/// depth 0 (outside literals, quoted names and comments), or the end.
fn statement_end(s: &[u8], from: usize) -> usize {
    let mut i = from;
    let mut depth = 0usize;
    while i < s.len() {
        if let Some(next) = skip_quoted(s, i) {
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

fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// If a string literal, quoted identifier, dollar-quoted string or
/// comment starts at `i`, the index just past it (the end of `s` when it
/// is not closed).
fn skip_quoted(s: &[u8], i: usize) -> Option<usize> {
    let n = s.len();
    let after = |from: usize, close: &[u8]| {
        memchr::memmem::find(&s[from.min(n)..], close).map_or(n, |k| from + k + close.len())
    };
    match s[i] {
        b'\'' => {
            // E'…' strings take backslash escapes.
            let escapes =
                i > 0 && matches!(s[i - 1], b'e' | b'E') && (i < 2 || !ident_byte(s[i - 2]));
            let mut j = i + 1;
            while j < n {
                match s[j] {
                    b'\\' if escapes => j += 2,
                    b'\'' if s.get(j + 1) == Some(&b'\'') => j += 2,
                    b'\'' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            Some(n)
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
            Some(memchr::memchr(b'\n', &s[i..]).map_or(n, |k| i + k + 1))
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
            Some(after(t + 1, tag))
        }
        _ => None,
    }
}

/// A cursor over one statement's tokens.
struct Lex<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lex<'a> {
    /// Past white space and comments.
    fn space(&mut self) {
        while self.i < self.s.len() {
            let c = self.s[self.i];
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if matches!(c, b'-' | b'/') {
                match skip_quoted(self.s, self.i) {
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

    fn keyword(&mut self, k: &[u8]) -> bool {
        let at = self.i;
        match self.word() {
            Some(w) if w.eq_ignore_ascii_case(k) => true,
            _ => {
                self.i = at;
                false
            }
        }
    }

    fn byte(&mut self, b: u8) -> bool {
        self.space();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A name part: a bare identifier or a `"quoted"` one.
    fn name_part(&mut self) -> bool {
        self.space();
        if self.s.get(self.i) == Some(&b'"') {
            match skip_quoted(self.s, self.i) {
                Some(j) if self.s[j - 1] == b'"' && j > self.i + 1 => {
                    self.i = j;
                    true
                }
                _ => false,
            }
        } else {
            self.word().is_some()
        }
    }

    /// After an opening parenthesis: the text up to its closing one
    /// (taken), or None when it is not closed.
    fn parenthesised(&mut self) -> Option<&'a [u8]> {
        let s = self.s;
        let from = self.i;
        let mut depth = 1usize;
        let mut j = from;
        while j < s.len() {
            if let Some(next) = skip_quoted(s, j) {
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
}

/// One statement, if it is a `COPY … TO STDOUT`.
fn copy_statement(stmt: &[u8]) -> Option<CopyStatement> {
    let mut lx = Lex { s: stmt, i: 0 };
    if !lx.keyword(b"copy") {
        return None;
    }
    let read = (|| {
        let mut lx = Lex { s: stmt, i: lx.i };
        lx.keyword(b"binary");
        let describe = if lx.byte(b'(') {
            lx.parenthesised()?.to_vec()
        } else {
            lx.space();
            let from = lx.i;
            loop {
                if !lx.name_part() {
                    return None;
                }
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
        // `TO STDOUT`; `FROM …` and `TO 'file'`/`TO PROGRAM` send nothing
        // to the client.
        if !lx.keyword(b"to") {
            return Some(None);
        }
        if !lx.keyword(b"stdout") {
            return Some(None);
        }
        Some(Some((describe, lx.i)))
    })();
    match read {
        Some(Some((describe, opts))) => Some(CopyStatement {
            format: options_format(&stmt[opts..]),
            describe: Some(describe),
            first: false,
        }),
        // Not a COPY to the client.
        Some(None) => None,
        // A COPY the lexer cannot follow: if it looks like one to the
        // client, its output is masked whole.
        None => looks_like_copy_out(stmt).then(|| CopyStatement {
            format: options_format(stmt),
            describe: None,
            first: false,
        }),
    }
}

fn looks_like_copy_out(stmt: &[u8]) -> bool {
    let lower = stmt.to_ascii_lowercase();
    memchr::memmem::find(&lower, b"stdout").is_some()
}

/// The format of a `COPY … TO STDOUT` from (the start of) a statement's
/// text, if it is one, without reading the statement: for a text only
/// part of which is at hand.
pub fn copy_to_format(sql: &[u8]) -> Option<CopyFormat> {
    let s = sql.trim_ascii_start();
    if s.len() < 4 || !s[..4].eq_ignore_ascii_case(b"copy") || !looks_like_copy_out(s) {
        return None;
    }
    Some(options_format(s))
}

/// The output format a COPY's options ask for: CSV when they say so (`CSV`,
/// `FORMAT csv`), text otherwise, with DELIMITER and QUOTE (new
/// `(delimiter '|')` and old `delimiter as '|'` syntax): a field split at
/// the wrong byte could join a value with its neighbours and hide it from
/// the detectors.
pub fn options_format(opts: &[u8]) -> CopyFormat {
    let lower = opts.to_ascii_lowercase();
    let delimiter = option_char(opts, &lower, b"delimiter");
    if memchr::memmem::find(&lower, b"csv").is_some() {
        CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(b','),
            quote: option_char(opts, &lower, b"quote").unwrap_or(b'"'),
        }
    } else {
        CopyFormat::Text {
            delimiter: delimiter.unwrap_or(b'\t'),
        }
    }
}

/// The one-byte value of COPY option `name` (`name 'c'`, `name as 'c'`,
/// `name E'\t'`), if the text has it.
fn option_char(s: &[u8], lower: &[u8], name: &[u8]) -> Option<u8> {
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut from = 0;
    while let Some(k) = memchr::memmem::find(&lower[from..], name) {
        let mut i = from + k + name.len();
        from = i;
        skip_ws(&mut i);
        if lower[i..].starts_with(b"as") && lower.get(i + 2).is_some_and(u8::is_ascii_whitespace) {
            i += 2;
            skip_ws(&mut i);
        }
        let escaped = matches!(s.get(i), Some(b'e' | b'E')) && s.get(i + 1) == Some(&b'\'');
        if escaped {
            i += 1;
        }
        if s.get(i) != Some(&b'\'') {
            continue;
        }
        let v = match (s.get(i + 1), s.get(i + 2)) {
            (Some(b'\''), Some(b'\'')) => b'\'',
            (Some(b'\\'), Some(&c)) if escaped => match c {
                b't' => b'\t',
                b'n' => b'\n',
                b'r' => b'\r',
                c => c,
            },
            (Some(&c), _) => c,
            _ => continue,
        };
        return Some(v);
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
            rule: rule_of(engine, origins, &field),
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
            CopyFormat::Csv { delimiter, quote } => {
                if at < end && p[at] == quote {
                    let mut i = at + 1;
                    while i < end {
                        if p[i] == quote {
                            if i + 1 < end && p[i + 1] == quote {
                                i += 2;
                                continue;
                            }
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

fn is_null(format: CopyFormat, p: &[u8], s: &Span) -> bool {
    match format {
        CopyFormat::Text { .. } => &p[s.raw.0..s.raw.1] == b"\\N",
        CopyFormat::Csv { .. } => !s.quoted && s.raw.0 == s.raw.1,
    }
}

/// A field's value: text-format escapes decoded, CSV quotes undone.
fn decode(format: CopyFormat, v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    match format {
        CopyFormat::Text { .. } => {
            let mut i = 0;
            while i < v.len() {
                if v[i] != b'\\' || i + 1 >= v.len() {
                    out.push(v[i]);
                    i += 1;
                    continue;
                }
                let c = v[i + 1];
                i += 2;
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
                out.push(b);
            }
        }
        CopyFormat::Csv { quote, .. } => {
            let mut i = 0;
            while i < v.len() {
                out.push(v[i]);
                i += if v[i] == quote && v.get(i + 1) == Some(&quote) {
                    2
                } else {
                    1
                };
            }
        }
    }
}

/// A value written as a field of `format`.
fn encode(format: CopyFormat, v: &[u8], out: &mut Vec<u8>) {
    match format {
        CopyFormat::Text { delimiter } => {
            for &c in v {
                let e = match c {
                    b'\\' => b'\\',
                    8 => b'b',
                    12 => b'f',
                    b'\n' => b'n',
                    b'\r' => b'r',
                    b'\t' => b't',
                    11 => b'v',
                    c if c == delimiter => c,
                    _ => {
                        out.push(c);
                        continue;
                    }
                };
                out.push(b'\\');
                out.push(e);
            }
        }
        CopyFormat::Csv { delimiter, quote } => {
            let needs = v.is_empty()
                || v == b"\\."
                || v.iter()
                    .any(|&c| c == delimiter || c == quote || c == b'\n' || c == b'\r');
            if !needs {
                out.extend_from_slice(v);
                return;
            }
            out.push(quote);
            for &c in v {
                if c == quote {
                    out.push(quote);
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
    hashed: Vec<u8>,
}

/// Mask one text or CSV CopyData payload of a COPY whose columns are
/// `cols` (`None`: not known; every field is masked whole). Unruled fields
/// are scanned by the detectors in place, as are `mask` and `keep_last` on
/// values written without escapes. When another rule applies to a non-NULL
/// field (`hash`, `null`, a value with escapes), the whole payload is
/// written to `out` (cleared first) with ruled fields decoded, masked,
/// hashed or nulled, and encoded again, and true is returned. Hits are
/// counted per rule.
pub fn mask_copy_row(
    engine: &Engine,
    format: CopyFormat,
    cols: Option<&[CopyColumn]>,
    payload: &mut [u8],
    hits: &mut Hits,
    scratch: &mut CopyScratch,
    out: &mut Vec<u8>,
) -> bool {
    fields(format, payload, &mut scratch.spans);
    let mut ruled = false;
    for (i, s) in scratch.spans.iter().enumerate() {
        match field_rule(engine, cols, i) {
            None => {
                if engine.detects() {
                    engine.mask_counted(&mut payload[s.value.0..s.value.1], hits);
                }
            }
            Some((r, action)) if !is_null(format, payload, s) => {
                hits.add_at(r, i as u32, 1);
                // `mask` and `keep_last` on a value written without
                // escapes or doubled quotes: the same bytes, in place (the
                // rewrite below would give the same).
                let v = &mut payload[s.value.0..s.value.1];
                let plain = match format {
                    CopyFormat::Text { .. } => memchr::memchr(b'\\', v).is_none(),
                    CopyFormat::Csv { quote, .. } => memchr::memchr(quote, v).is_none(),
                };
                match action {
                    ColumnAction::Mask if plain => {
                        mask_chars(v, 0, engine.mask_char());
                    }
                    ColumnAction::KeepLast(k) if plain => {
                        mask_chars(v, k as usize, engine.mask_char());
                    }
                    _ => ruled = true,
                }
            }
            Some(_) => {}
        }
    }
    if !ruled {
        return false;
    }
    out.clear();
    let mut prev = 0;
    let ch = engine.mask_char();
    for (i, s) in scratch.spans.iter().enumerate() {
        let Some((_, action)) = field_rule(engine, cols, i) else {
            continue;
        };
        if is_null(format, payload, s) {
            continue;
        }
        out.extend_from_slice(&payload[prev..s.raw.0]);
        prev = s.raw.1;
        decode(format, &payload[s.value.0..s.value.1], &mut scratch.value);
        let v = &mut scratch.value;
        match action {
            ColumnAction::Null => match format {
                CopyFormat::Text { .. } => out.extend_from_slice(b"\\N"),
                CopyFormat::Csv { .. } => {}
            },
            ColumnAction::Hash => {
                scratch.hashed.clear();
                engine.hash_into(v, &mut scratch.hashed);
                encode(format, &scratch.hashed, out);
            }
            ColumnAction::Mask => {
                mask_chars(v, 0, ch);
                encode(format, v, out);
            }
            ColumnAction::KeepLast(k) => {
                mask_chars(v, k as usize, ch);
                encode(format, v, out);
            }
        }
    }
    out.extend_from_slice(&payload[prev..]);
    true
}

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
                    engine.mask_counted(&mut payload[i..end], hits);
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
        copy_statements(sql.as_bytes())
            .into_iter()
            .map(|s| s.describe.map(|d| String::from_utf8(d).unwrap()))
            .collect()
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
        assert!(describe("SELECT 'COPY t TO STDOUT'").is_empty());
        let first = |sql: &str| {
            copy_statements(sql.as_bytes())
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
        // Formats come from the options only.
        let f = |sql: &str| copy_statements(sql.as_bytes())[0].format;
        assert_eq!(f("COPY (SELECT csv FROM t) TO STDOUT"), CopyFormat::TEXT);
        assert_eq!(f("COPY t TO STDOUT CSV"), CopyFormat::CSV);
        assert_eq!(
            f("COPY t TO STDOUT (FORMAT csv, DELIMITER ';', QUOTE '''')"),
            CopyFormat::Csv {
                delimiter: b';',
                quote: b'\''
            }
        );
        assert_eq!(
            f("COPY t TO STDOUT DELIMITER AS '|'"),
            CopyFormat::Text { delimiter: b'|' }
        );
    }

    #[test]
    fn copy_formats_with_their_delimiters_and_quotes() {
        let f = |s: &str| copy_to_format(s.as_bytes());
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
            Some(CopyFormat::Csv {
                delimiter: b';',
                quote: b'\''
            })
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
        let mut p = row.as_bytes().to_vec();
        let mut hits = Hits::new();
        let mut out = Vec::new();
        let mut s = CopyScratch::default();
        if mask_copy_row(e, f, c, &mut p, &mut hits, &mut s, &mut out) {
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
        assert_eq!(
            run(
                &e,
                CopyFormat::CSV,
                Some(&c),
                "1,\"a,\"\"b\",\"xx\"\"y,z\",\"a\tb\",gone,\n"
            ),
            format!("1,****,\"**\"\"y,z\",{hash},,\n")
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
            CopyFormat::TEXT,
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
        // Fewer columns known than the row has: the rest masked whole.
        assert_eq!(run(&e, CopyFormat::TEXT, Some(&c[..1]), "1\tx\n"), "1\t*\n");
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
}
