//! Statement kinds for audit records, from the SQL text (sans-IO).
//!
//! A lexical classifier, not a parser: it skips comments, string and
//! identifier quoting and dollar-quoted bodies, splits the text into
//! statements at top-level `;`, and names each by its leading keyword (for
//! `WITH`, the first data keyword after the common table expressions). A
//! text with statements of several kinds gets them all, in order, joined by
//! commas (`select,update`). Only the part of the SQL the record keeps is
//! classified.

use std::borrow::Cow;

/// The kinds, in the order of [`KINDS`].
const KINDS: [&str; 13] = [
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "copy",
    "ddl",
    "dcl",
    "transaction",
    "explain",
    "utility",
    "other",
    "empty",
];

const SELECT: u8 = 0;
const INSERT: u8 = 1;
const UPDATE: u8 = 2;
const DELETE: u8 = 3;
const MERGE: u8 = 4;
const COPY: u8 = 5;
const DDL: u8 = 6;
const DCL: u8 = 7;
const TRANSACTION: u8 = 8;
const EXPLAIN: u8 = 9;
const UTILITY: u8 = 10;
const OTHER: u8 = 11;

/// `prepare` alone: a utility, or, before `transaction`, a transaction
/// statement (decided by the caller, which looks at the next word only
/// then).
const PREPARE: u8 = 0xff;

/// The kind a statement's leading keyword gives (or [`PREPARE`]). The word
/// is folded to lower case in a stack buffer and matched as a whole, so a
/// keyword costs a length switch and a compare or two.
fn keyword_kind(word: &[u8]) -> u8 {
    let mut low = [0u8; 12];
    if word.len() > low.len() {
        return OTHER;
    }
    let w = &mut low[..word.len()];
    w.copy_from_slice(word);
    w.make_ascii_lowercase();
    match &*w {
        b"select" | b"values" | b"table" => SELECT,
        b"insert" => INSERT,
        b"update" => UPDATE,
        b"delete" => DELETE,
        b"merge" => MERGE,
        b"copy" => COPY,
        b"create" | b"alter" | b"drop" | b"truncate" | b"comment" | b"security" | b"import" => DDL,
        b"grant" | b"revoke" => DCL,
        b"begin" | b"start" | b"commit" | b"rollback" | b"savepoint" | b"release" | b"end"
        | b"abort" => TRANSACTION,
        b"prepare" => PREPARE,
        b"explain" => EXPLAIN,
        b"set" | b"show" | b"reset" | b"vacuum" | b"analyze" | b"analyse" | b"lock" | b"listen"
        | b"unlisten" | b"notify" | b"call" | b"do" | b"declare" | b"fetch" | b"move"
        | b"close" | b"discard" | b"deallocate" | b"execute" | b"checkpoint" | b"load"
        | b"cluster" | b"reindex" | b"refresh" => UTILITY,
        _ => OTHER,
    }
}

/// The distinct kinds of a text, in the order they first appear (at most
/// one of each, so no allocation).
struct Kinds {
    list: [u8; KINDS.len()],
    n: usize,
}

impl Kinds {
    fn new() -> Kinds {
        Kinds {
            list: [0; KINDS.len()],
            n: 0,
        }
    }

    fn add(&mut self, kind: u8) {
        if !self.as_slice().contains(&kind) && self.n < self.list.len() {
            self.list[self.n] = kind;
            self.n += 1;
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.list[..self.n]
    }
}

/// A token at paren depth 0 of one statement.
enum Tok<'a> {
    Word(&'a [u8]),
    /// Anything else (a parenthesized group, a literal, an operator).
    Other,
    End,
}

/// Walks one statement's top-level tokens.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    /// Skip whitespace and comments.
    fn skip_space(&mut self) {
        let s = self.s;
        loop {
            while self.i < s.len() && s[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
            if s[self.i..].starts_with(b"--") {
                self.i = memchr::memchr(b'\n', &s[self.i..]).map_or(s.len(), |k| self.i + k + 1);
            } else if s[self.i..].starts_with(b"/*") {
                // Nested block comments.
                let mut depth = 0usize;
                while self.i < s.len() {
                    if s[self.i..].starts_with(b"/*") {
                        depth += 1;
                        self.i += 2;
                    } else if s[self.i..].starts_with(b"*/") {
                        depth -= 1;
                        self.i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.i += 1;
                    }
                }
            } else {
                return;
            }
        }
    }

    /// Skip a quoted literal or identifier starting at `self.i`.
    fn skip_quoted(&mut self, q: u8, backslash: bool) {
        let s = self.s;
        if q == b'\'' {
            // (With the literals PostgreSQL joins to it across a newline,
            // in its mode.)
            self.i = crate::mask::copyout::string_parts(s, self.i, backslash, |_| {}).0;
            return;
        }
        self.i += 1;
        while self.i < s.len() {
            let c = s[self.i];
            self.i += 1;
            if backslash && c == b'\\' {
                self.i += 1;
            } else if c == q {
                if self.i < s.len() && s[self.i] == q {
                    self.i += 1; // doubled quote
                } else {
                    return;
                }
            }
        }
        self.i = self.i.min(s.len());
    }

    /// A dollar-quote opener (`$$`, `$tag$`) at `self.i`: its length.
    fn dollar_tag(&self) -> Option<usize> {
        let s = &self.s[self.i..];
        if s.first() != Some(&b'$') {
            return None;
        }
        let mut k = 1;
        while k < s.len() && (s[k].is_ascii_alphanumeric() || s[k] == b'_' || s[k] >= 0x80) {
            if k == 1 && s[k].is_ascii_digit() {
                return None; // $1: a parameter
            }
            k += 1;
        }
        (s.get(k) == Some(&b'$')).then_some(k + 1)
    }

    /// The next top-level token; `;` at depth 0 ends the statement.
    fn next(&mut self) -> Tok<'a> {
        self.skip_space();
        let s = self.s;
        let Some(&c) = s.get(self.i) else {
            return Tok::End;
        };
        match c {
            b';' => Tok::End,
            b'(' => {
                let mut depth = 0usize;
                while self.i < s.len() {
                    match s[self.i] {
                        b'(' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b')' => {
                            self.i += 1;
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        b'\'' => {
                            let e = self.i > 0
                                && matches!(s[self.i - 1], b'e' | b'E')
                                && (self.i < 2 || !s[self.i - 2].is_ascii_alphanumeric());
                            self.skip_quoted(b'\'', e)
                        }
                        b'"' => self.skip_quoted(b'"', false),
                        b'$' => self.skip_dollar(),
                        b'-' | b'/' => {
                            let at = self.i;
                            self.skip_space();
                            if self.i == at {
                                self.i += 1;
                            }
                        }
                        _ => self.i += 1,
                    }
                }
                Tok::Other
            }
            b'\'' => {
                self.skip_quoted(b'\'', false);
                Tok::Other
            }
            b'"' => {
                self.skip_quoted(b'"', false);
                Tok::Other
            }
            b'$' => {
                self.skip_dollar();
                Tok::Other
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = self.i;
                while self.i < s.len()
                    && (s[self.i].is_ascii_alphanumeric()
                        || s[self.i] == b'_'
                        || s[self.i] == b'$'
                        || s[self.i] >= 0x80)
                {
                    self.i += 1;
                }
                let w = &s[start..self.i];
                // E'...' strings take backslash escapes.
                if w.eq_ignore_ascii_case(b"e") && s.get(self.i) == Some(&b'\'') {
                    self.skip_quoted(b'\'', true);
                    return Tok::Other;
                }
                Tok::Word(w)
            }
            _ => {
                self.i += 1;
                Tok::Other
            }
        }
    }

    fn skip_dollar(&mut self) {
        match self.dollar_tag() {
            Some(n) => {
                let tag = &self.s[self.i..self.i + n];
                self.i += n;
                self.i = memchr::memmem::find(&self.s[self.i..], tag)
                    .map_or(self.s.len(), |k| self.i + k + n);
            }
            None => self.i += 1,
        }
    }

    /// Skip to just past the `;` ending this statement (or the end).
    fn finish_statement(&mut self) {
        loop {
            match self.next() {
                Tok::End => {
                    if self.i < self.s.len() {
                        self.i += 1; // the ';'
                    }
                    return;
                }
                Tok::Word(_) | Tok::Other => {}
            }
        }
    }
}

/// Whether `sql` holds one statement at most: no `;` but trailing ones
/// (a `;` in a literal or comment also sends the text the long way).
fn single(sql: &[u8]) -> bool {
    match memchr::memchr(b';', sql) {
        None => true,
        Some(i) => sql[i..]
            .iter()
            .all(|&c| c == b';' || c.is_ascii_whitespace()),
    }
}

/// The common case without lexing: one statement whose first token is a
/// keyword that decides its kind alone (`SELECT …`, `INSERT …`), followed
/// by white space or the end. Anything else (comments, `WITH`, `PREPARE`,
/// parentheses, unknown words) is left to [`kinds`], which gives the same
/// answer for the texts taken here.
fn plain_single(sql: &[u8]) -> Option<u8> {
    let start = sql.iter().position(|c| !c.is_ascii_whitespace())?;
    let rest = &sql[start..];
    let len = rest
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    if len == 0 || rest.get(len).is_some_and(|c| !c.is_ascii_whitespace()) {
        return None;
    }
    match keyword_kind(&rest[..len]) {
        OTHER | PREPARE => None,
        k if single(sql) => Some(k),
        _ => None,
    }
}

/// The kinds of the statements of `sql`, each once, in the order they
/// first appear.
fn kinds(sql: &[u8]) -> Kinds {
    let mut lx = Lexer { s: sql, i: 0 };
    let mut out = Kinds::new();
    // The common case: no `;` but (maybe) a trailing one. Then the first
    // statement is the only one, and it is not walked to its end.
    let single = single(sql);
    while lx.i < sql.len() {
        lx.skip_space();
        if sql.get(lx.i) == Some(&b'(') {
            // Only a query can stand in parentheses at the top.
            out.add(SELECT);
            lx.finish_statement();
            continue;
        }
        let kind = match lx.next() {
            Tok::End => {
                if lx.i < sql.len() {
                    lx.i += 1;
                }
                continue; // empty statement
            }
            Tok::Other => OTHER,
            Tok::Word(w) if w.eq_ignore_ascii_case(b"with") => {
                let mut k = OTHER;
                loop {
                    match lx.next() {
                        Tok::Word(w) => {
                            let kk = keyword_kind(w);
                            if matches!(kk, SELECT | INSERT | UPDATE | DELETE | MERGE) {
                                k = kk;
                                break;
                            }
                        }
                        Tok::Other => {}
                        Tok::End => break,
                    }
                }
                k
            }
            Tok::Word(w) => match keyword_kind(w) {
                PREPARE => {
                    let save = lx.i;
                    let next = lx.next();
                    lx.i = save;
                    match next {
                        Tok::Word(n) if n.eq_ignore_ascii_case(b"transaction") => TRANSACTION,
                        _ => UTILITY,
                    }
                }
                k => k,
            },
        };
        out.add(kind);
        if single {
            break;
        }
        lx.finish_statement();
    }
    out
}

/// The statement kind to record for `sql`: one of [`KINDS`], or several
/// joined by commas; `empty` for a text with no statement.
pub fn statement_kind(sql: &str) -> Cow<'static, str> {
    if let Some(k) = plain_single(sql.as_bytes()) {
        return Cow::Borrowed(KINDS[k as usize]);
    }
    let k = kinds(sql.as_bytes());
    match k.as_slice() {
        [] => Cow::Borrowed(KINDS[12]),
        [one] => Cow::Borrowed(KINDS[*one as usize]),
        many => Cow::Owned(
            many.iter()
                .map(|&i| KINDS[i as usize])
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::statement_kind as k;

    #[test]
    fn leading_keywords() {
        assert_eq!(k("select 1"), "select");
        assert_eq!(k("  SELECT * FROM t"), "select");
        assert_eq!(k("values (1)"), "select");
        assert_eq!(k("insert into t values (1)"), "insert");
        assert_eq!(k("UPDATE t SET a = 1"), "update");
        assert_eq!(k("delete from t"), "delete");
        assert_eq!(
            k("merge into t using s on true when matched then do nothing"),
            "merge"
        );
        assert_eq!(k("copy t to stdout"), "copy");
        assert_eq!(k("create table t (a int)"), "ddl");
        assert_eq!(k("drop table t"), "ddl");
        assert_eq!(k("truncate t"), "ddl");
        assert_eq!(k("grant select on t to bob"), "dcl");
        assert_eq!(k("begin"), "transaction");
        assert_eq!(k("COMMIT"), "transaction");
        assert_eq!(k("prepare transaction 'x'"), "transaction");
        assert_eq!(k("prepare p as select 1"), "utility");
        assert_eq!(k("set search_path = x"), "utility");
        assert_eq!(k("explain analyze select 1"), "explain");
        assert_eq!(k("frobnicate"), "other");
        assert_eq!(k(""), "empty");
        assert_eq!(k(" ; ;"), "empty");
        assert_eq!(k("-- only a comment"), "empty");
    }

    #[test]
    fn comments_and_quoting_are_skipped() {
        assert_eq!(k("/* delete */ select 1"), "select");
        assert_eq!(k("/* a /* nested */ delete */ select 1"), "select");
        assert_eq!(k("-- drop table t\nselect 1"), "select");
        assert_eq!(k("select 'a;delete from t'"), "select");
        assert_eq!(k("select E'\\';delete'"), "select");
        assert_eq!(k("select \"x;drop\" from t"), "select");
        assert_eq!(k("do $$ begin delete from t; end $$"), "utility");
        assert_eq!(
            k("do $f$ begin; drop table t; end $f$; select 1"),
            "utility,select"
        );
        assert_eq!(k("select $1::int; select 2"), "select");
        // A literal continued after a newline keeps E'…''s escapes, also
        // inside parentheses: the `;` is inside the string.
        assert_eq!(k("select E'x'\n'\\'; delete from t'"), "select");
        assert_eq!(k("select (E'x'\n'\\';'); delete from t"), "select,delete");
        assert_eq!(k("select 'a' -- c\n 'b;'; delete from t"), "select,delete");
    }

    #[test]
    fn several_statements_name_every_kind_once_in_order() {
        assert_eq!(k("select 1; select 2"), "select");
        assert_eq!(k("begin; update t set a = 1; commit"), "transaction,update");
        assert_eq!(k("select 1; delete from t;"), "select,delete");
    }

    #[test]
    fn with_names_the_data_statement() {
        assert_eq!(k("with x as (select 1) select * from x"), "select");
        assert_eq!(
            k("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO log SELECT * FROM d"),
            "insert"
        );
        assert_eq!(
            k("with recursive r(n) as (select 1 union all select n+1 from r) update t set a = 1"),
            "update"
        );
        assert_eq!(
            k("with x as materialized (select 1) delete from t using x"),
            "delete"
        );
    }

    #[test]
    fn parenthesized_and_garbage() {
        assert_eq!(k("(select 1) union (select 2)"), "select");
        assert_eq!(k("1 + 1"), "other");
        for s in [
            "'",
            "\"",
            "$$",
            "/*",
            "(((",
            ")",
            "$a$ x",
            "e'\\",
            "select (",
            "\u{fffd};drop",
        ] {
            let _ = k(s); // never panics, always terminates
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "[ -~\\n\\t;()'\"$/*-]{0,64}|\\PC{0,32}") {
            let got = k(&s);
            proptest::prop_assert!(!got.is_empty());
        }

        /// The shortcut names a text exactly as the lexer does.
        #[test]
        fn shortcut_agrees_with_the_lexer(
            lead in "[ \t\n]{0,2}",
            word in "(?i)(select|insert|update|delete|merge|copy|create|drop|grant|begin|commit|prepare|explain|set|with|values|frob|e)",
            rest in "[ -~\n;]{0,40}",
        ) {
            let s = format!("{lead}{word}{rest}");
            if let Some(fast) = super::plain_single(s.as_bytes()) {
                let slow = super::kinds(s.as_bytes());
                proptest::prop_assert_eq!(slow.as_slice(), &[fast][..], "{:?}", s);
            }
        }
    }
}
