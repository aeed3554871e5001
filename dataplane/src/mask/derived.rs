//! Column rules for computed result columns.
//!
//! A RowDescription names the stored column a result column shows only
//! when the column is that column's value as it is (`ssn`, `p.ssn AS id`,
//! through subqueries and CTEs): then its table oid and attribute number
//! are set, and [`super::origins`] finds the stored column's rule. A
//! column computed by an expression (`upper(ssn)`, `ssn || ''`,
//! `coalesce(api_secret, '')`, a UNION of `ssn` columns) has table oid 0
//! and a name of its own (`upper`, `?column?`, an alias), so neither way
//! finds the rule of the columns it was computed from.
//!
//! The statement's text does: [`derived_rule`] reads the names it mentions
//! (outside string literals, comments and dollar-quoted bodies) and gives
//! the strongest rule among those that name a ruled column. The plan
//! applies it to every computed result column of a text-like type of that
//! statement ([`super::rows::rule_of`]). It errs towards masking: a
//! computed column that does not use the ruled column is masked too when
//! the statement mentions it elsewhere (`SELECT upper(name) … WHERE ssn =
//! …`). Computed columns of other types (counts, sums, dates) are left
//! alone: a count of SSNs is not an SSN.

use super::copyout::{ident_byte, skip_quoted, statement_end, Lex};
use super::engine::{Engine, RuleId};
use super::profile::ColumnAction;

/// The rule computed columns of a statement take, if any.
pub type Derived = Option<(RuleId, ColumnAction)>;

/// A statement's text, and whether its string literals take backslash
/// escapes (`standard_conforming_strings` off when it was sent).
pub type StatementText = Option<(std::rc::Rc<[u8]>, bool)>;

/// The rule of a statement's computed columns, read from its text on first
/// need (most results have no computed text column, and their statements
/// are never read) with the engine planning now: a rule id is only
/// meaningful to the engine that gave it.
pub struct Lazy<'a> {
    sql: Option<(&'a [u8], bool)>,
    rule: Option<Derived>,
}

impl<'a> Lazy<'a> {
    /// For the statement `sql` (with its backslash setting); None: not
    /// known, no rule.
    pub fn new(sql: Option<(&'a [u8], bool)>) -> Self {
        Lazy { sql, rule: None }
    }

    pub fn of(text: &'a StatementText) -> Self {
        Lazy::new(text.as_ref().map(|(t, b)| (&**t, *b)))
    }

    pub fn get(&mut self, engine: &Engine) -> Derived {
        let sql = self.sql;
        *self
            .rule
            .get_or_insert_with(|| sql.and_then(|(s, b)| derived_rule(engine, s, b)))
    }
}

/// The strongest name rule among the names `sql` mentions (with
/// `backslash`, every string literal takes backslash escapes:
/// `standard_conforming_strings` off). None when it mentions no ruled
/// name, or the engine has no name rules.
pub fn derived_rule(engine: &Engine, sql: &[u8], backslash: bool) -> Derived {
    if !engine.has_name_rules() {
        return None;
    }
    let mut best: Option<(RuleId, ColumnAction)> = None;
    let mut consider = |name: &[u8]| {
        // (One regex, the rules' alternation, before the rule by rule
        // search: most names are key words and unruled columns.)
        if !engine.name_ruled(name) {
            return;
        }
        if let Some(r) = engine.column_rule_by_name(name) {
            if best.is_none_or(|b| strength(r.1) > strength(b.1)) {
                best = Some(r);
            }
        }
    };
    let s = sql;
    let mut lower = Vec::new();
    // After FROM, JOIN, UPDATE, INTO, TABLE (ONLY): a relation's name.
    let mut relation = false;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'"' {
            // A quoted name: as written, `""` read as `"` (to the end of
            // the text when it is not closed).
            lower.clear();
            let mut j = i + 1;
            while j < s.len() {
                if s[j] == b'"' {
                    if s.get(j + 1) != Some(&b'"') {
                        break;
                    }
                    j += 1;
                }
                lower.push(s[j]);
                j += 1;
            }
            i = j + 1;
            if !not_column(s, i.min(s.len()), &mut relation) {
                consider(&lower);
            }
            continue;
        }
        if let Some(next) = skip_quoted(s, i, backslash) {
            // A string literal, dollar-quoted body or comment.
            i = next;
            continue;
        }
        if (c.is_ascii_alphabetic() || c == b'_' || c >= 0x80) && (i == 0 || !ident_byte(s[i - 1]))
        {
            let mut j = i;
            while j < s.len() && ident_byte(s[j]) {
                j += 1;
            }
            // A bare name is folded to lower case, as the server does.
            lower.clear();
            lower.extend(s[i..j].iter().map(u8::to_ascii_lowercase));
            i = j;
            if matches!(
                &lower[..],
                b"from" | b"join" | b"update" | b"into" | b"table" | b"only"
            ) {
                relation = true;
                continue;
            }
            if !not_column(s, j, &mut relation) {
                consider(&lower);
            }
            continue;
        }
        i += 1;
    }
    best
}

/// SQL-level prepared statements and their use, in a simple Query's text:
/// the statements it prepares (`PREPARE name [(types)] AS statement`:
/// name and statement text) and the names it runs (`EXECUTE name`). An
/// `EXECUTE`'s computed columns are the prepared statement's, whose text
/// came in an earlier Query.
#[derive(Debug, Default, PartialEq)]
pub struct SqlPrepared {
    pub prepares: Vec<(Vec<u8>, Vec<u8>)>,
    pub executes: Vec<Vec<u8>>,
}

pub fn sql_prepared(sql: &[u8], backslash: bool) -> SqlPrepared {
    let mut out = SqlPrepared::default();
    // (Most Queries do neither. A superset of the statements that may:
    // the text's start and each `;`, literals or not, past white space,
    // at a `p`, an `e` or a comment.)
    let may = |at: usize| {
        let rest = &sql[at.min(sql.len())..];
        let k = rest.iter().position(|&c| !c.is_ascii_whitespace());
        k.is_some_and(|k| matches!(rest[k] | 0x20, b'p' | b'e' | b'-' | b'/'))
    };
    if !may(0) && !memchr::memchr_iter(b';', sql).any(|i| may(i + 1)) {
        return out;
    }
    let mut from = 0;
    while from < sql.len() {
        let end = statement_end(sql, from, backslash);
        let stmt = &sql[from..end];
        let mut lx = Lex::new(stmt, backslash);
        if lx.keyword(b"prepare") {
            if let Some(name) = lx.name() {
                if lx.byte(b'(') {
                    lx.parenthesised();
                }
                if lx.keyword(b"as") {
                    out.prepares
                        .push((name, stmt[lx.i..].trim_ascii_start().to_vec()));
                }
            }
        } else if lx.keyword(b"execute") {
            if let Some(name) = lx.name() {
                out.executes.push(name);
            }
        }
        from = end + 1;
    }
    out
}

/// Whether the name ending at `end` is not a column's: a relation's (each
/// part of a qualified one, `relation` being set after the key word that
/// precedes one, and kept through its dots), or a qualifier (`t.` of
/// `t.col`: a table, schema or alias). A function's name (before `(`) is
/// taken as a column's.
fn not_column(s: &[u8], end: usize, relation: &mut bool) -> bool {
    let next = s[end..].iter().find(|c| !c.is_ascii_whitespace());
    let dot = next == Some(&b'.');
    let call = next == Some(&b'(');
    let skip = !call && (dot || *relation);
    *relation = *relation && dot;
    skip
}

/// How much of a value an action hides, for choosing among rules.
fn strength(a: ColumnAction) -> u32 {
    match a {
        ColumnAction::Null => u32::MAX,
        ColumnAction::Hash => u32::MAX - 1,
        ColumnAction::Mask => u32::MAX - 2,
        // Keeping fewer characters hides more.
        ColumnAction::KeepLast(n) => u32::MAX - 3 - u32::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskingProfile;

    fn rule(e: &Engine, sql: &str) -> Option<(String, ColumnAction)> {
        derived_rule(e, sql.as_bytes(), false).map(|(r, a)| (e.rule_name(r).to_string(), a))
    }

    #[test]
    fn names_the_text_mentions() {
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        let keep4 = ColumnAction::KeepLast(4);
        assert_eq!(rule(&e, "SELECT upper(ssn) FROM people").unwrap().1, keep4);
        assert_eq!(
            rule(&e, "select P.SSN || '' from people p").unwrap().1,
            keep4
        );
        assert_eq!(
            rule(&e, "SELECT coalesce(api_secret, '') FROM apps"),
            Some(("column:*secret*".into(), ColumnAction::Mask))
        );
        // Quoted names keep their case; `""` is a quote.
        assert!(rule(&e, r#"SELECT "Password" || '' FROM t"#).is_some());
        assert!(rule(&e, r#"SELECT "my""password" FROM t"#).is_some());
        // The strongest of several: mask over keep the last 4.
        assert_eq!(
            rule(&e, "SELECT ssn || password FROM people").unwrap().1,
            ColumnAction::Mask
        );
        // Not in literals, comments or dollar-quoted bodies.
        for sql in [
            "SELECT 'ssn' || 'password'",
            "SELECT 1 -- ssn\n",
            "SELECT /* password /* nested */ ssn */ 1",
            "SELECT $$ssn$$, $x$password$x$",
            "SELECT E'\\'ssn' AS a",
            "SELECT name, max_tokens, token_type FROM t",
            "SELECT count(*) FROM people",
        ] {
            assert_eq!(rule(&e, sql), None, "{sql}");
        }
        // Relation names and qualifiers are not columns; functions are.
        for sql in [
            "SELECT concat(name, kind) FROM user_secrets",
            "SELECT upper(s.name) FROM app.user_secrets s JOIN api_tokens t ON t.id = s.id",
            "SELECT upper(name) FROM ONLY \"Secrets\"",
            "UPDATE password_resets SET n = n + 1 RETURNING upper(code)",
            "SELECT secret_box.x FROM secret_box",
        ] {
            assert_eq!(rule(&e, sql), None, "{sql}");
        }
        for sql in [
            "SELECT * FROM get_secrets()",
            "SELECT (secret_rec).field FROM t",
            "SELECT upper(t.secret_answer) FROM t",
            "SELECT upper(secret_answer) FROM user_secrets",
        ] {
            assert!(rule(&e, sql).is_some(), "{sql}");
        }
        // With standard_conforming_strings off, `\'` does not end a literal.
        assert_eq!(derived_rule(&e, br"SELECT 'a\' ssn'", true), None);
        assert!(derived_rule(&e, br"SELECT 'a\' ssn'", false).is_some());
        // A literal or quoted name left open reads to the end.
        assert_eq!(rule(&e, "SELECT 'ssn"), None);
        assert!(rule(&e, "SELECT \"ssn").is_some());
        assert!(rule(&e, "\"").is_none());
    }

    #[test]
    fn sql_level_prepare_and_execute() {
        let p = sql_prepared(
            b"PREPARE q (int) AS SELECT upper(ssn) FROM t WHERE id = $1; \
              prepare \"Q2\" as select 1; EXECUTE q(1); execute \"Q2\"; select 'prepare x as y'",
            false,
        );
        assert_eq!(
            p.prepares,
            vec![
                (
                    b"q".to_vec(),
                    b"SELECT upper(ssn) FROM t WHERE id = $1".to_vec()
                ),
                (b"Q2".to_vec(), b"select 1".to_vec()),
            ]
        );
        assert_eq!(p.executes, vec![b"q".to_vec(), b"Q2".to_vec()]);
        assert_eq!(sql_prepared(b"select 1", false), SqlPrepared::default());
        assert_eq!(
            sql_prepared(b"explain execute q; deallocate q", false),
            SqlPrepared::default()
        );
    }

    #[test]
    fn no_name_rules_no_rule() {
        let p = MaskingProfile::from_yaml("columns: []").unwrap();
        let e = Engine::compile(&p).unwrap();
        assert_eq!(rule(&e, "SELECT upper(ssn), password FROM people"), None);
    }
}
