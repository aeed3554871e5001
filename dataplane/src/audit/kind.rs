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

fn keyword_kind(word: &[u8], next: Option<&[u8]>) -> u8 {
    let is = |w: &str| word.eq_ignore_ascii_case(w.as_bytes());
    let next_is = |w: &str| next.is_some_and(|n| n.eq_ignore_ascii_case(w.as_bytes()));
    match () {
        _ if is("select") || is("values") || is("table") => SELECT,
        _ if is("insert") => INSERT,
        _ if is("update") => UPDATE,
        _ if is("delete") => DELETE,
        _ if is("merge") => MERGE,
        _ if is("copy") => COPY,
        _ if is("create")
            || is("alter")
            || is("drop")
            || is("truncate")
            || is("comment")
            || is("security")
            || is("import") =>
        {
            DDL
        }
        _ if is("grant") || is("revoke") => DCL,
        _ if is("begin")
            || is("start")
            || is("commit")
            || is("rollback")
            || is("savepoint")
            || is("release")
            || is("end")
            || is("abort") =>
        {
            TRANSACTION
        }
        _ if is("prepare") && next_is("transaction") => TRANSACTION,
        _ if is("explain") => EXPLAIN,
        _ if is("set")
            || is("show")
            || is("reset")
            || is("vacuum")
            || is("analyze")
            || is("analyse")
            || is("lock")
            || is("listen")
            || is("unlisten")
            || is("notify")
            || is("call")
            || is("do")
            || is("declare")
            || is("fetch")
            || is("move")
            || is("close")
            || is("discard")
            || is("deallocate")
            || is("prepare")
            || is("execute")
            || is("checkpoint")
            || is("load")
            || is("cluster")
            || is("reindex")
            || is("refresh") =>
        {
            UTILITY
        }
        _ => OTHER,
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
                        b'\'' => self.skip_quoted(b'\'', false),
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

/// The kinds of the statements of `sql`, each once, in the order they
/// first appear.
fn kinds(sql: &[u8]) -> Vec<u8> {
    let mut lx = Lexer { s: sql, i: 0 };
    let mut out: Vec<u8> = Vec::new();
    // The common case: no `;` but (maybe) a trailing one. Then the first
    // statement is the only one, and it is not walked to its end.
    let single = match memchr::memchr(b';', sql) {
        None => true,
        Some(i) => sql[i..]
            .iter()
            .all(|&c| c == b';' || c.is_ascii_whitespace()),
    };
    while lx.i < sql.len() {
        lx.skip_space();
        if sql.get(lx.i) == Some(&b'(') {
            // Only a query can stand in parentheses at the top.
            if !out.contains(&SELECT) {
                out.push(SELECT);
            }
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
                            let kk = keyword_kind(w, None);
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
            Tok::Word(w) => {
                let save = lx.i;
                let next = match lx.next() {
                    Tok::Word(n) => Some(n),
                    _ => None,
                };
                lx.i = save;
                keyword_kind(w, next)
            }
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
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
    }
}
