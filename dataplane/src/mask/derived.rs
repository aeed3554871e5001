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
//! (outside comments; the words of string literals too, since a JSON key
//! names a member as a column name names a column) and gives the
//! strongest rule among those that name a ruled column. The plan
//! applies it to every computed result column of a text-like type of that
//! statement ([`super::rows::rule_of`]). It errs towards masking: a
//! computed column that does not use the ruled column is masked too when
//! the statement mentions it elsewhere (`SELECT upper(name) … WHERE ssn =
//! …`). Computed columns of other types (counts, sums, dates) are left
//! alone: a count of SSNs is not an SSN.
//!
//! With the login's catalog read ([`strongest_mention`] with
//! [`ColumnOrigins`]), three more kinds of names count: a view column
//! resolved to a ruled source, when the text also names its view; a
//! relation with ruled columns whose name or alias the text uses as a
//! value (its whole row, `row_to_json(p)`); and a function whose body
//! reads ruled columns.

use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;

use super::copyout::{ident_byte, skip_quoted, space_byte, statement_end, words, Lex};
use super::engine::{Engine, RuleId};
use super::origins::{ColumnOrigins, Source};
use super::profile::ColumnAction;

/// The rule computed columns of a statement take, if any.
pub type Derived = Option<(RuleId, ColumnAction)>;

/// Longest text kept for one statement (with the texts of the SQL-level
/// prepared statements and cursors it runs); a longer one is kept as
/// [`Text::partial`].
pub const MAX_TEXT: usize = 1 << 20;

/// A statement's text as the relay keeps it (with each pending Query and
/// Parse, prepared statement and portal), and the rule of its computed
/// columns, read on first need (most results have no computed text column,
/// and their statements are never read) and kept per engine: a rule id is
/// only meaningful to the engine that gave it.
#[derive(Debug)]
pub struct Text {
    sql: Box<[u8]>,
    /// Whether its string literals take backslash escapes; None: not known
    /// (a setting may change before it runs), so it is read both ways.
    backslash: Option<bool>,
    partial: bool,
    /// The parameters of the Bind that runs it ([`Text::with_params`]):
    /// the parameter part of the Bind body (count, then length and value
    /// of each).
    params: Option<Box<[u8]>>,
    /// Whether it reads members ([`Text::reads_members`]), once known.
    members: Cell<Option<bool>>,
    /// The rule, by engine id and [`ColumnOrigins::lineage_id`].
    rule: Cell<Option<((u64, u64), Derived)>>,
}

/// A statement's text, when known.
pub type StatementText = Option<Rc<Text>>;

impl Text {
    /// `partial`: not all of the text is at hand (the rest of a Query cut
    /// by the end of a read, a prepared statement or cursor whose text is
    /// not known, or more than [`MAX_TEXT`]). Its computed columns then
    /// take the engine's strongest name rule.
    pub fn new(sql: &[u8], backslash: Option<bool>, partial: bool) -> Rc<Text> {
        let partial = partial || sql.len() > MAX_TEXT;
        Rc::new(Text {
            // (A partial text is never read.)
            sql: if partial { Box::default() } else { sql.into() },
            backslash,
            partial,
            params: None,
            members: Cell::new(None),
            rule: Cell::new(None),
        })
    }

    /// Whether a Bind's parameters may name members in this text: it reads
    /// JSON, XML or hstore members (`->`, `#>`, a subscript, a `…json…`,
    /// `…path…` or `…xml…` function), whose keys and paths may come as
    /// parameters (`profile->>$1`).
    pub fn reads_members(&self) -> bool {
        if let Some(m) = self.members.get() {
            return m;
        }
        let s = &self.sql;
        let m = [&b"->"[..], b"#>", b"["]
            .iter()
            .any(|n| memchr::memmem::find(s, n).is_some())
            || [&b"json"[..], b"path", b"xml"]
                .iter()
                .any(|w| has_word_part(s, w));
        self.members.set(Some(m));
        m
    }

    /// This text run by a Bind with `params` (the parameter part of its
    /// body): the words of its parameters count as a literal's would.
    pub fn with_params(&self, params: Box<[u8]>) -> Rc<Text> {
        Rc::new(Text {
            sql: self.sql.clone(),
            backslash: self.backslash,
            partial: self.partial,
            params: Some(params),
            members: self.members.clone(),
            rule: Cell::new(None),
        })
    }

    /// `self` followed by `other`: a statement whose computed columns may
    /// come from either (a Query that runs a prepared statement, a name
    /// that may still hold an older statement).
    pub fn joined(&self, other: &Text) -> Rc<Text> {
        Text::concat(&[self, other])
    }

    /// `parts` one after the other (see [`Text::joined`]): partial when
    /// any is, or when together they exceed [`MAX_TEXT`].
    pub fn concat(parts: &[&Text]) -> Rc<Text> {
        let first = parts.first().and_then(|p| p.backslash);
        let backslash = if parts.iter().all(|p| p.backslash == first) {
            first
        } else {
            None
        };
        let total = parts.iter().map(|p| p.sql.len() + 3).sum::<usize>();
        if parts.iter().any(|p| p.partial) || total > MAX_TEXT + 3 {
            return Text::new(b"", backslash, true);
        }
        let mut sql = Vec::with_capacity(total);
        for (k, p) in parts.iter().enumerate() {
            if k > 0 {
                // (On lines of their own: a text may end in a comment.)
                sql.extend_from_slice(b"\n;\n");
            }
            sql.extend_from_slice(&p.sql);
        }
        Text::new(&sql, backslash, false)
    }

    pub fn sql(&self) -> &[u8] {
        &self.sql
    }

    pub fn partial(&self) -> bool {
        self.partial
    }

    pub fn backslash(&self) -> Option<bool> {
        self.backslash
    }

    /// The parameter part of the Bind that runs it, if any.
    pub fn params(&self) -> Option<&[u8]> {
        self.params.as_deref()
    }

    /// The rule of the statement's computed columns under `engine` (read
    /// once per engine and catalog read: with `origins`, a view column
    /// whose source is ruled counts as that source).
    pub fn rule(&self, engine: &Engine, origins: Option<&ColumnOrigins>) -> Derived {
        let key = (engine.id(), origins.map_or(0, ColumnOrigins::lineage_id));
        if let Some((k, r)) = self.rule.get() {
            if k == key {
                return r;
            }
        }
        let read =
            |b| strongest_mention(engine, &self.sql, b, origins).and_then(|s| s.rule(engine));
        let r = if self.partial {
            engine.strongest_name_rule()
        } else {
            match self.backslash {
                Some(b) => read(b),
                None => stronger(read(false), read(true)),
            }
        };
        let r = match &self.params {
            Some(p) => stronger(r, params_rule(engine, p)),
            None => r,
        };
        self.rule.set(Some((key, r)));
        r
    }
}

/// Longest Bind parameter whose words count ([`Text::with_params`]): a key
/// or path is short; a longer value is data.
pub const MAX_PARAM_NAME: usize = 1024;

/// The strongest rule among the names the values of a Bind's parameter
/// part (count, then length and value of each) give as literals would.
pub fn params_rule(engine: &Engine, part: &[u8]) -> Derived {
    let mut best = None;
    for v in BindValues::new(part).filter(|v| v.len() <= MAX_PARAM_NAME) {
        literal_names(v, |name| {
            if engine.name_ruled(name) {
                consider_source(engine, &mut best, Source::Name(name.into()));
            }
        });
    }
    best.map(|(r, _)| r)
}

/// The values of a Bind's parameter part (count, then length and value of
/// each), NULLs left out. A part cut short ends them early
/// ([`BindValues::rest`] tells).
pub struct BindValues<'a> {
    rest: &'a [u8],
    left: i16,
    cut: bool,
}

impl<'a> BindValues<'a> {
    pub fn new(part: &'a [u8]) -> BindValues<'a> {
        match part.split_first_chunk::<2>() {
            Some((n, rest)) => BindValues {
                rest,
                left: i16::from_be_bytes(*n).max(0),
                cut: false,
            },
            None => BindValues {
                rest: &[],
                left: 0,
                cut: true,
            },
        }
    }

    /// What follows the part once every value is read; None when the part
    /// is cut short.
    pub fn rest(mut self) -> Option<&'a [u8]> {
        for _ in &mut self {}
        (!self.cut).then_some(self.rest)
    }
}

impl<'a> Iterator for BindValues<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.left > 0 {
            self.left -= 1;
            let value = self.rest.split_first_chunk::<4>().and_then(|(l, rest)| {
                let l = i32::from_be_bytes(*l);
                // (NULL: no bytes.)
                let l = usize::try_from(l).unwrap_or(0);
                rest.split_at_checked(l)
            });
            let Some((v, rest)) = value else {
                self.cut = true;
                self.left = 0;
                return None;
            };
            self.rest = rest;
            if !v.is_empty() {
                return Some(v);
            }
        }
        None
    }
}

/// Whether `word` appears in `s` inside a name, any case (`jsonb_path_query`
/// has `json` and `path`).
fn has_word_part(s: &[u8], word: &[u8]) -> bool {
    s.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word))
}

/// The stronger of two rules (the first of equals).
pub(super) fn stronger(a: Derived, b: Derived) -> Derived {
    match (a, b) {
        (Some(x), Some(y)) if strength(y.1) > strength(x.1) => b,
        (None, _) => b,
        _ => a,
    }
}

/// The strongest name rule among the names `sql` mentions (with
/// `backslash`, every string literal takes backslash escapes:
/// `standard_conforming_strings` off). None when it mentions no ruled
/// name, or the engine has no name rules.
pub fn derived_rule(engine: &Engine, sql: &[u8], backslash: bool) -> Derived {
    strongest_mention(engine, sql, backslash, None).and_then(|s| s.rule(engine))
}

/// Functions that run SQL given as text, or read a relation, schema or
/// database given by name: the XML export functions, `ts_stat` (the words
/// of a query's `tsvector`s), `ts_rewrite` and `dblink`'s.
const RUNS_TEXT: [&[u8]; 17] = [
    b"dblink_open",
    b"dblink_fetch",
    b"dblink_send_query",
    b"dblink_exec",
    b"ts_rewrite",
    b"query_to_xml",
    b"query_to_xml_and_xmlschema",
    b"table_to_xml",
    b"table_to_xml_and_xmlschema",
    b"schema_to_xml",
    b"schema_to_xml_and_xmlschema",
    b"database_to_xml",
    b"database_to_xml_and_xmlschema",
    b"cursor_to_xml",
    b"ts_stat",
    b"dblink",
    b"dblink_get_result",
];

/// The ruled name among those `sql` mentions whose rule is the strongest
/// ([`derived_rule`]), or [`Source::Unreadable`] for a text this reading
/// cannot follow. With `origins`, a view column whose source is ruled
/// counts as its source when the text also names its view (`select
/// upper(tax_id) from contacts`, where the view `contacts` renames `ssn`).
pub(super) fn strongest_mention(
    engine: &Engine,
    sql: &[u8],
    backslash: bool,
    origins: Option<&ColumnOrigins>,
) -> Option<Source> {
    if !engine.has_name_rules() {
        return None;
    }
    let mut best: Option<((RuleId, ColumnAction), Source)> = None;
    // A view column resolved to a ruled source counts when the text also
    // names its view (`tax_id` of `contacts`, not an `x` of anything):
    // the names the text mentions, relations too, and those candidates.
    let views = origins.filter(|o| o.lineage_id() != 0);
    let mut names = Noted::default();
    let mut candidates: Vec<(&[u8], &Source)> = Vec::new();
    // (Each name's candidates once: a long text repeats its names.)
    let mut looked_up: HashSet<Vec<u8>> = HashSet::new();
    // The depth of the FROM list being read (a comma goes on with it), and
    // whether the relation being named is INTO's or UPDATE's.
    let mut from_list: Option<usize> = None;
    let mut target = false;
    // A `*` of a select list (`select *`, `a, *`, `returning *`): every
    // relation read is read whole.
    let mut star = false;
    let mut lists = false;
    let mut consider = |name: &[u8]| {
        // (One regex, the rules' alternation, before the rule by rule
        // search: most names are key words and unruled columns.)
        if engine.name_ruled(name) {
            consider_source(engine, &mut best, Source::Name(name.into()));
        } else if let Some(o) = views {
            if !looked_up.insert(name.to_vec()) {
                return;
            }
            candidates.extend(o.renamed(name));
            // A function whose body reads ruled columns.
            if let Some(f) = o.function(name) {
                consider_source(engine, &mut best, f.clone());
            }
        }
    };
    let s = sql;
    // Names the reading below cannot follow: the statement's computed
    // columns take the strongest name rule. A `UESCAPE` clause (another
    // escape character in `U&"…"` names).
    if has_word(s, b"uescape") {
        return Some(Source::Unreadable);
    }
    // Built-in functions that run a query (or read a table) named by a
    // string (`query_to_xml('select * from creds', …)`): what they read
    // is not in the text's names.
    if RUNS_TEXT.iter().any(|f| has_word(s, f)) {
        return Some(Source::Unreadable);
    }
    let mut lower = Vec::new();
    // After FROM, JOIN, UPDATE, INTO, TABLE (ONLY): a relation's name.
    let mut relation = false;
    // Right after a relation's name (1), and after its `AS` (2): an alias
    // followed by `(` renames the relation's columns (`t AS p(a, b)`),
    // which this reading cannot follow.
    let mut alias = 0u8;
    // Open parentheses: whether each is a function call's (after a name),
    // where `FROM` is an argument's (`trim(both from col)`,
    // `extract(year from at)`), not a relation's.
    let mut calls: Vec<bool> = Vec::new();
    let mut after_name = false;
    // The words `IS` (1), `IS NOT` (2), `IS [NOT] DISTINCT` (3) just read.
    let mut is_seq = 0u8;
    // A query's `TABLE` was just read: the relation named next is read
    // whole (its schema qualifier, if any, comes first).
    let mut table_whole = false;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'"' {
            // A quoted name: as written, `""` read as `"` (to the end of
            // the text when it is not closed); after `U&`, with its
            // escapes decoded.
            let unicode = unicode_prefix(s, i);
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
            if unicode {
                match unicode_name(&lower) {
                    Some(n) => lower = n,
                    None => return Some(Source::Unreadable),
                }
            }
            super::copyout::clip_identifier(&mut lower);
            let end = i.min(s.len());
            // (A quoted name right after a relation's is its alias.)
            let gives = alias > 0;
            if alias > 0 {
                alias = 0;
                if next_byte(s, end) == Some(b'(') {
                    return Some(Source::Unreadable);
                }
            }
            if views.is_some() {
                names.note(s, end, relation, target, gives, &lower);
            }
            if !not_column(s, end, &mut relation, &mut alias) {
                consider(&lower);
            }
            after_name = true;
            continue;
        }
        if let Some(next) = skip_quoted(s, i, backslash) {
            // A string literal, dollar-quoted body or comment. The words in
            // a literal count too: a JSON key or path (`profile->>'ssn'`,
            // `profile['ssn']`, `jsonb_extract_path_text(p, 'ssn')`,
            // `'$.ssn'`) names a member as a column names a column.
            if c == b'\'' || c == b'$' {
                let v = match literal_value(s, i, next, backslash) {
                    Some(v) => v,
                    None => return Some(Source::Unreadable),
                };
                literal_names(&v, &mut consider);
            }
            if !matches!(c, b'-' | b'/') {
                alias = 0;
                relation = false;
                after_name = false;
            }
            i = next;
            continue;
        }
        if (c.is_ascii_alphabetic() || c == b'_' || c >= 0x80) && (i == 0 || !ident_byte(s[i - 1]))
        {
            let mut j = i;
            while j < s.len() && ident_byte(s[j]) {
                j += 1;
            }
            // A bare name is folded to lower case, as the server does, and
            // cut to 63 bytes.
            lower.clear();
            lower.extend(s[i..j].iter().map(u8::to_ascii_lowercase));
            super::copyout::clip_identifier(&mut lower);
            i = j;
            lists = matches!(&lower[..], b"select" | b"distinct" | b"all" | b"returning");
            // (`IS [NOT] DISTINCT FROM` is an operator: its FROM names no
            // relation.)
            let operator_from = lower == b"from" && is_seq == 3;
            is_seq = match (&lower[..], is_seq) {
                (b"is", _) => 1,
                (b"not", 1) => 2,
                (b"distinct", 1 | 2) => 3,
                _ => 0,
            };
            if operator_from {
                after_name = false;
                continue;
            }
            // (`update(…)` and `join(…)` may call a function of that name:
            // then no relation follows. `JOIN (` a subquery or a
            // parenthesized join is read as names, which only adds.)
            let call = matches!(&lower[..], b"update" | b"join")
                && next_code(s, j).is_some_and(|(k, c)| {
                    c == b'(' && !opens_query(s, next_code(s, k + 1).map_or(k + 1, |(q, _)| q))
                });
            if !call
                && matches!(
                    &lower[..],
                    b"from" | b"join" | b"update" | b"into" | b"table" | b"only"
                )
            {
                // (Not inside a function call's parentheses.)
                relation = !calls.last().copied().unwrap_or(false);
                // (`TABLE t` is `SELECT * FROM t`, in a subquery or CTE
                // too: `t`, and only it, is read whole.)
                table_whole = relation && lower == b"table" && starts_query(s, i - 5);
                if relation {
                    // A FROM list goes on after commas; after INTO or
                    // UPDATE, a name followed by `(` is still a relation
                    // (its column list), not a function.
                    from_list = (lower == b"from" || lower == b"join").then_some(calls.len());
                    target = matches!(&lower[..], b"into" | b"update");
                }
                alias = 0;
                after_name = false;
                continue;
            }
            if matches!(
                &lower[..],
                b"where"
                    | b"group"
                    | b"having"
                    | b"order"
                    | b"limit"
                    | b"window"
                    | b"union"
                    | b"intersect"
                    | b"except"
                    | b"on"
                    | b"using"
                    | b"returning"
                    | b"set"
                    | b"values"
                    | b"select"
            ) {
                from_list = None;
            }
            let mut gives = false;
            if alias > 0 {
                if alias == 1 && lower == b"as" {
                    alias = 2;
                    continue;
                }
                gives = !NOT_ALIAS.contains(&&lower[..]);
                let renames = gives && next_byte(s, j) == Some(b'(');
                alias = 0;
                if renames {
                    return Some(Source::Unreadable);
                }
            }
            if views.is_some() {
                names.note(s, j, relation, target, gives, &lower);
                // (The relation `TABLE` reads, as a row used as a value.)
                if table_whole && relation && next_byte(s, j) != Some(b'.') {
                    names.values.insert(lower.clone());
                }
            }
            if next_byte(s, j) != Some(b'.') {
                table_whole = false;
            }
            if !not_column(s, j, &mut relation, &mut alias) {
                consider(&lower);
            }
            // (`AS (` opens a CTE's query, no call's arguments.)
            after_name = lower != b"as";

            continue;
        }
        // `FROM (a JOIN b …)`: the relations inside are relations too;
        // `FROM a, b`: so is each after a comma.
        let keep = (c == b'(' && relation && !after_name && !opens_query(s, i + 1))
            || (c == b',' && from_list == Some(calls.len()));
        if c == b'*'
            && (lists
                || matches!(
                    s[..i].iter().rev().find(|&&b| !space_byte(b)),
                    Some(b',' | b'.')
                ))
        {
            star = true;
        }
        if !space_byte(c) {
            lists = false;
        }
        match c {
            // (A parenthesis that opens a query is a subquery's, whatever
            // word comes before it: `array(select …)`, `exists (select …)`,
            // `lateral (select …)`, `as materialized (select …)`.)
            b'(' => calls.push(after_name && !opens_query(s, i + 1)),
            b')' => {
                calls.pop();
                if from_list.is_some_and(|d| d > calls.len()) {
                    from_list = None;
                }
            }
            _ => {}
        }
        if !space_byte(c) {
            is_seq = 0;
            alias = 0;
            after_name = false;
            // (A qualified relation's dots keep it.)
            if c != b'.' {
                relation = keep;
            }
        }
        i += 1;
    }
    for (view, source) in candidates {
        if names.seen.contains(view) {
            consider_source(engine, &mut best, source.clone());
        }
    }
    if let Some(o) = views {
        names.relations.sort_unstable();
        names.relations.dedup();
        for (name, alias) in &names.relations {
            let handle = alias.as_ref().unwrap_or(name);
            if star || names.values.contains(handle) {
                if let Some(whole) = o.whole_row_by_name(engine, name) {
                    consider_source(engine, &mut best, whole);
                }
            }
        }
    }
    best.map(|(_, s)| s)
}

/// The names a text mentions, for the catalog's names: every name (a view
/// counts when the text names it), and for a relation read whole as a
/// value (`row_to_json(p)`, `p::text`, `to_jsonb(people)`) the relations
/// the text reads with their aliases, and the names it uses as values (not
/// a qualifier, a relation or an alias being given).
#[derive(Default)]
struct Noted {
    seen: HashSet<Vec<u8>>,
    relations: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    values: HashSet<Vec<u8>>,
}

impl Noted {
    /// Note `name`, ending at `end`: a relation's name (after FROM or
    /// JOIN, not followed by `.`, nor by `(` unless it is INTO's or
    /// UPDATE's `target`), the alias given to the last relation (`gives`),
    /// or a name used as a value.
    fn note(
        &mut self,
        s: &[u8],
        end: usize,
        relation: bool,
        target: bool,
        gives: bool,
        name: &[u8],
    ) {
        if !self.seen.contains(name) {
            self.seen.insert(name.to_vec());
        }
        let next = next_byte(s, end);
        if relation {
            if next != Some(b'.') && (target || next != Some(b'(')) {
                self.relations.push((name.to_vec(), None));
            }
        } else if gives {
            if let Some((_, alias @ None)) = self.relations.last_mut() {
                *alias = Some(name.to_vec());
            }
        } else if (next != Some(b'.') || star_after_dot(s, end) || row_function_after_dot(s, end))
            && !self.values.contains(name)
        {
            // (`p.*` is the whole row too, and `p.concat`: attribute
            // notation, `concat(p)`.)
            self.values.insert(name.to_vec());
        }
    }
}

/// The names a literal's value may give: the whole value, and each word
/// of it (a JSON key or path: `'ssn'`, `'$.auth.password'`).
pub(super) fn literal_names(v: &[u8], mut name: impl FnMut(&[u8])) {
    name(v);
    for w in v.split(|&b| !ident_byte(b)) {
        if !w.is_empty() && w.len() < v.len() {
            name(w);
        }
    }
}

/// `source` in `best` when its rule is stronger.
fn consider_source(
    engine: &Engine,
    best: &mut Option<((RuleId, ColumnAction), Source)>,
    source: Source,
) {
    if let Some(r) = source.rule(engine) {
        if best
            .as_ref()
            .is_none_or(|(b, _)| strength(r.1) > strength(b.1))
        {
            *best = Some((r, source));
        }
    }
}

/// The value of the string literal or dollar-quoted string at `i` (ending
/// at `next`, or open to the end of the text); None for a `U&'…'` string
/// whose escapes do not read.
fn literal_value(s: &[u8], i: usize, next: usize, backslash: bool) -> Option<Vec<u8>> {
    if s[i] == b'$' {
        // `$tag$…$tag$`.
        let tag = s[i + 1..]
            .iter()
            .position(|&b| b == b'$')
            .map_or(s.len(), |k| i + 2 + k);
        let tag_len = tag - i;
        let end = if next >= tag + tag_len && s[next - tag_len..next] == s[i..tag] {
            next - tag_len
        } else {
            next
        };
        return Some(s[tag.min(end)..end].to_vec());
    }
    let escaped = backslash || escape_prefix(s, i);
    // (Literals separated by white space with a newline are one, read in
    // the first one's mode: `'ss'\n'n'` is `'ssn'`. To the end of the text
    // when one is not closed.)
    let mut v = Vec::new();
    super::copyout::string_parts(s, i, escaped, |p| {
        v.extend_from_slice(&super::copyout::unescape(p, escaped))
    });
    if unicode_prefix(s, i) {
        return unicode_name(&v);
    }
    Some(v)
}

/// Whether the quote at `i` is preceded by `U&` (a Unicode-escaped name or
/// string).
fn unicode_prefix(s: &[u8], i: usize) -> bool {
    i >= 2
        && s[i - 1] == b'&'
        && matches!(s[i - 2], b'u' | b'U')
        && (i == 2 || !ident_byte(s[i - 3]))
}

/// Whether the quote at `i` opens an `E'…'` string (backslash escapes).
fn escape_prefix(s: &[u8], i: usize) -> bool {
    i >= 1 && matches!(s[i - 1], b'e' | b'E') && (i == 1 || !ident_byte(s[i - 2]))
}

/// Words that may follow a relation's name and come before `(` without
/// being an alias.
const NOT_ALIAS: &[&[u8]] = &[
    b"all",
    b"and",
    b"any",
    b"array",
    b"asc",
    b"between",
    b"case",
    b"cast",
    b"cross",
    b"default",
    b"desc",
    b"distinct",
    b"else",
    b"end",
    b"except",
    b"exists",
    b"fetch",
    b"for",
    b"full",
    b"group",
    b"having",
    b"ilike",
    b"in",
    b"inner",
    b"intersect",
    b"is",
    b"isnull",
    b"join",
    b"lateral",
    b"left",
    b"like",
    b"limit",
    b"natural",
    b"not",
    b"notnull",
    b"offset",
    b"on",
    b"or",
    b"order",
    b"overriding",
    b"returning",
    b"right",
    b"select",
    b"set",
    b"similar",
    b"some",
    b"tablesample",
    b"then",
    b"union",
    b"using",
    b"values",
    b"when",
    b"where",
    b"window",
    b"with",
];

/// Whether the text at `at` (after white space) starts a query: a `(`
/// there opens a subquery, not a parenthesized join.
fn opens_query(s: &[u8], at: usize) -> bool {
    let rest = &s[at.min(s.len())..];
    let Some(k) = rest.iter().position(|&c| !space_byte(c)) else {
        return false;
    };
    let word: Vec<u8> = rest[k..]
        .iter()
        .take_while(|&&c| ident_byte(c))
        .map(u8::to_ascii_lowercase)
        .collect();
    matches!(&word[..], b"select" | b"with" | b"values" | b"table") || rest[k] == b'('
}

/// Whether the name ending at `end` is followed by `.` and then `*`.
fn star_after_dot(s: &[u8], end: usize) -> bool {
    after_dot(s, end).is_some_and(|at| s[at] == b'*')
}

/// Where the code after the `.` that follows the name ending at `end`
/// starts (white space and comments skipped).
fn after_dot(s: &[u8], end: usize) -> Option<usize> {
    let (dot, _) = next_code(s, end)?;
    next_code(s, dot + 1).map(|(at, _)| at)
}

/// Whether a query may start at `at` (a `TABLE t` there is `SELECT * FROM
/// t`, not DDL's `CREATE TABLE`, `LOCK TABLE`, `TRUNCATE TABLE`): at the
/// start of a statement, after `(`, or after a set operation.
fn starts_query(s: &[u8], at: usize) -> bool {
    let before = &s[..at.min(s.len())];
    let Some(k) = before.iter().rposition(|&c| !space_byte(c)) else {
        return true;
    };
    if matches!(before[k], b'(' | b';') {
        return true;
    }
    let start = before[..=k]
        .iter()
        .rposition(|&c| !ident_byte(c))
        .map_or(0, |p| p + 1);
    let word = before[start..=k].to_ascii_lowercase();
    matches!(
        &word[..],
        b"union" | b"intersect" | b"except" | b"all" | b"distinct"
    )
}

/// Built-in functions of one argument that take a whole row and give its
/// values as text or JSON: attribute notation calls them on the row
/// (`p.concat` is `concat(p)`, `p.row_to_json` is `row_to_json(p)`).
const ROW_FUNCTIONS: &[&[u8]] = &[
    b"concat",
    b"quote_literal",
    b"quote_nullable",
    b"to_json",
    b"to_jsonb",
    b"row_to_json",
    b"record_out",
    b"json_build_array",
    b"jsonb_build_array",
    b"hstore",
    b"array_agg",
    b"json_agg",
    b"jsonb_agg",
    b"json_agg_strict",
    b"jsonb_agg_strict",
    b"any_value",
    b"record_send",
];

/// Whether `.` and one of [`ROW_FUNCTIONS`] (bare or quoted) follow the
/// name ending at `end`: the name is a row used as a value.
fn row_function_after_dot(s: &[u8], end: usize) -> bool {
    let Some(at) = after_dot(s, end) else {
        return false;
    };
    // (A Unicode-escaped name there: read as such a function, fail safe.)
    if s[at..].len() > 2 && matches!(s[at], b'u' | b'U') && s[at + 1] == b'&' && s[at + 2] == b'"' {
        return true;
    }
    let (start, quoted) = if s[at] == b'"' {
        (at + 1, true)
    } else {
        (at, false)
    };
    let len = s[start.min(s.len())..]
        .iter()
        .take_while(|&&c| ident_byte(c))
        .count();
    let w = &s[start.min(s.len())..(start + len).min(s.len())];
    let closed = !quoted || s.get(start + len) == Some(&b'"');
    closed
        && ROW_FUNCTIONS.iter().any(|f| {
            if quoted {
                w == *f
            } else {
                w.eq_ignore_ascii_case(f)
            }
        })
}

/// The first byte after `end` that is neither white space nor in a
/// comment, and where it is.
fn next_code(s: &[u8], end: usize) -> Option<(usize, u8)> {
    let mut i = end;
    while i < s.len() {
        match s[i] {
            c if space_byte(c) => i += 1,
            b'-' | b'/' => match skip_quoted(s, i, false) {
                Some(n) if n > i => i = n,
                _ => return Some((i, s[i])),
            },
            c => return Some((i, c)),
        }
    }
    None
}

/// The first byte after `end` that is not white space.
fn next_byte(s: &[u8], end: usize) -> Option<u8> {
    s[end.min(s.len())..]
        .iter()
        .copied()
        .find(|&c| !space_byte(c))
}

/// Whether `s` holds `word` (lower case) as a whole word, in any case.
pub fn has_word(s: &[u8], word: &[u8]) -> bool {
    words(s, word).next().is_some()
}

/// Whether `s` holds `first` and, after it, `then` (both lower case) as
/// whole words, in any case.
pub fn has_words_in_order(s: &[u8], first: &[u8], then: &[u8]) -> bool {
    words(s, first)
        .next()
        .is_some_and(|i| has_word(&s[i + first.len()..], then))
}

/// The name a `U&"…"` quoted name's inside stands for: `\XXXX` and
/// `\+XXXXXX` are code points, `\\` a backslash; None when an escape
/// does not read.
fn unicode_name(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] != b'\\' {
            out.push(v[i]);
            i += 1;
            continue;
        }
        let (digits, from) = match v.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
                continue;
            }
            Some(b'+') => (6, i + 2),
            _ => (4, i + 1),
        };
        let hex = std::str::from_utf8(v.get(from..from + digits)?).ok()?;
        let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        i = from + digits;
    }
    Some(out)
}

/// What a simple Query's (or a Parse's) text does with SQL-level prepared
/// statements and cursors, whose results come in later Queries: an
/// `EXECUTE`'s computed columns are its prepared statement's, a `FETCH`'s
/// its cursor's query's. In the order of the text's statements.
#[derive(Debug, PartialEq)]
pub enum SqlCommand {
    /// `PREPARE name [(types)] AS statement`: name, statement text.
    Prepare(Vec<u8>, Vec<u8>),
    /// `EXECUTE name`.
    Execute(Vec<u8>),
    /// `DEALLOCATE [PREPARE] name`; `None` for `ALL`.
    Deallocate(Option<Vec<u8>>),
    /// `DECLARE name … CURSOR … FOR query`: name, query text.
    Declare(Vec<u8>, Vec<u8>),
    /// `FETCH … name` and `MOVE … name`.
    Fetch(Vec<u8>),
    /// `CLOSE name`; `None` for `ALL`.
    Close(Option<Vec<u8>>),
    /// One of these whose name does not read (a `U&"…"` name): which
    /// ([`SqlCommand::PREPARE`], …).
    Unreadable(u8),
}

impl SqlCommand {
    pub const PREPARE: u8 = 1;
    pub const EXECUTE: u8 = 2;
    pub const DECLARE: u8 = 3;
    pub const FETCH: u8 = 4;
}

pub fn sql_commands(sql: &[u8], backslash: bool) -> Vec<SqlCommand> {
    let mut out = Vec::new();
    // (Most Queries do none of these. A superset of the statements that
    // may: the text's start and each `;`, literals or not, past white
    // space, at the first letter of one of the key words, or a comment.)
    let may = |at: usize| {
        next_byte(sql, at.min(sql.len())).is_some_and(|c| {
            matches!(
                c | 0x20,
                b'p' | b'e' | b'd' | b'f' | b'm' | b'c' | b'-' | b'/'
            )
        })
    };
    if !may(0) && !memchr::memchr_iter(b';', sql).any(|i| may(i + 1)) {
        return out;
    }
    let mut from = 0;
    while from < sql.len() {
        let end = statement_end(sql, from, backslash);
        let stmt = &sql[from..end];
        let mut lx = Lex::new(stmt, backslash);
        let rest = |lx: &Lex<'_>| stmt[lx.i..].trim_ascii_start().to_vec();
        if lx.keyword(b"prepare") {
            match lx.name() {
                None => out.push(SqlCommand::Unreadable(SqlCommand::PREPARE)),
                Some(name) => {
                    if lx.byte(b'(') {
                        lx.parenthesised();
                    }
                    if lx.keyword(b"as") {
                        out.push(SqlCommand::Prepare(name, rest(&lx)));
                    }
                }
            }
        } else if lx.keyword(b"execute") {
            match lx.name() {
                Some(name) => out.push(SqlCommand::Execute(name)),
                None => out.push(SqlCommand::Unreadable(SqlCommand::EXECUTE)),
            }
        } else if lx.keyword(b"deallocate") {
            lx.keyword(b"prepare");
            if lx.keyword(b"all") {
                out.push(SqlCommand::Deallocate(None));
            } else if let Some(name) = lx.name() {
                out.push(SqlCommand::Deallocate(Some(name)));
            }
        } else if lx.keyword(b"declare") {
            match lx.name() {
                None => out.push(SqlCommand::Unreadable(SqlCommand::DECLARE)),
                Some(name) => {
                    // (Its options, up to `FOR`.)
                    while !lx.at_end() {
                        if lx.keyword(b"for") {
                            out.push(SqlCommand::Declare(name, rest(&lx)));
                            break;
                        }
                        if lx.name().is_none() {
                            lx.i += 1;
                        }
                    }
                }
            }
        } else if lx.keyword(b"fetch") || lx.keyword(b"move") {
            // The cursor's name comes last (after a direction, a count,
            // FROM or IN).
            let mut last = None;
            while !lx.at_end() {
                match lx.name() {
                    Some(n) => last = Some(n),
                    None => {
                        // (A `U&"…"` name: the last, unreadable.)
                        last = None;
                        lx.i += 1;
                    }
                }
            }
            out.push(last.map_or(SqlCommand::Unreadable(SqlCommand::FETCH), SqlCommand::Fetch));
        } else if lx.keyword(b"close") {
            if lx.keyword(b"all") {
                out.push(SqlCommand::Close(None));
            } else if let Some(name) = lx.name() {
                out.push(SqlCommand::Close(Some(name)));
            }
        }
        from = end + 1;
    }
    out
}

/// Whether the name ending at `end` is not a column's: a relation's (each
/// part of a qualified one, `relation` being set after the key word that
/// precedes one, and kept through its dots; `alias` is set after its last
/// part), or a qualifier (`t.` of `t.col`: a table, schema or alias). A
/// function's name (before `(`) is taken as a column's.
fn not_column(s: &[u8], end: usize, relation: &mut bool, alias: &mut u8) -> bool {
    let next = next_byte(s, end);
    let dot = next == Some(b'.');
    let call = next == Some(b'(');
    let skip = !call && (dot || *relation);
    if *relation && !dot && !call {
        *alias = 1;
    }
    *relation = *relation && dot;
    skip
}

/// How much of a value an action hides, for choosing among rules.
pub(super) fn strength(a: ColumnAction) -> u32 {
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

    /// A Bind's parameter part holding `values` (text).
    fn param_part(values: &[&str]) -> Box<[u8]> {
        let mut p = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            p.extend_from_slice(&(v.len() as i32).to_be_bytes());
            p.extend_from_slice(v.as_bytes());
        }
        p.into()
    }

    #[test]
    fn bind_parameters_count_as_literals_where_members_are_read() {
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        let keep4 = Some(ColumnAction::KeepLast(4));
        let rule = |sql: &str, values: &[&str]| {
            let t = Text::new(sql.as_bytes(), Some(false), false);
            assert!(t.reads_members(), "{sql}");
            t.with_params(param_part(values))
                .rule(&e, None)
                .map(|(_, a)| a)
        };
        assert_eq!(rule("select profile->>$1 from p", &["ssn"]), keep4);
        assert_eq!(rule("select profile #>> $1 from p", &["{a,ssn}"]), keep4);
        assert_eq!(
            rule(
                "select JSONB_EXTRACT_PATH_TEXT(p, $1) from p",
                &["x", "ssn"]
            ),
            keep4
        );
        assert_eq!(rule("select profile->>$1 from p", &["name"]), None);
        // A long value is data, not a key.
        let long = format!("{} ssn", "x".repeat(MAX_PARAM_NAME));
        assert_eq!(rule("select profile->>$1 from p", &[&long]), None);
        // A NULL, a truncated part: no panic, nothing.
        let mut p = (2i16).to_be_bytes().to_vec();
        p.extend_from_slice(&(-1i32).to_be_bytes());
        p.extend_from_slice(&(40i32).to_be_bytes());
        p.extend_from_slice(b"ssn");
        assert_eq!(params_rule(&e, &p), None);
        assert_eq!(params_rule(&e, &[0]), None);
        for sql in [
            "select a from t where id = $1",
            "select upper(b) || $1 from t",
        ] {
            assert!(
                !Text::new(sql.as_bytes(), None, false).reads_members(),
                "{sql}"
            );
        }
    }

    #[test]
    fn functions_that_run_text_take_the_strongest_rule() {
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        let strongest = e.strongest_name_rule();
        assert!(strongest.is_some());
        for sql in [
            "select query_to_xml('select * from creds', true, false, '')",
            "SELECT pg_catalog.TABLE_TO_XML('cr' || 'eds', true, false, '')",
            "select schema_to_xml('public', true, false, '')",
            "select unnest(xpath('//x/text()', query_to_xml('select a as x from t', true, false, '')))::text",
            "select * from ts_stat('select to_tsvector(note) from t')",
            "select * from dblink_fetch('c', 'x', 5) as r(a text)",
            "select ts_rewrite('a'::tsquery, 'select ''a''::tsquery, x::tsquery from t')::text",
        ] {
            assert_eq!(derived_rule(&e, sql.as_bytes(), false), strongest, "{sql}");
        }
        // (Names that only start like one.)
        assert_eq!(rule(&e, "select query_to_xmlish from t"), None);
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
            "SELECT 1 -- ssn\n",
            "SELECT /* password /* nested */ ssn */ 1",
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
        // JSON keys and paths name columns too; other literals do not.
        for sql in [
            "SELECT profile->>'ssn' FROM t",
            "SELECT profile -> 'api_secret' FROM t",
            "SELECT profile#>>'{auth, password}' FROM t",
        ] {
            assert!(rule(&e, sql).is_some(), "{sql}");
        }
        // Words in any literal count (a key may be named anywhere).
        for sql in [
            "SELECT a - 'ssn' FROM t",
            "SELECT profile['api_secret'] FROM t",
            "SELECT profile->>E'\\x73sn' FROM t",
            "SELECT profile->>U&'\\0073sn' FROM t",
            "SELECT jsonb_path_query(p, '$.auth.password') FROM t",
            "SELECT profile#>>'{\"ssn\"}' FROM t",
        ] {
            assert!(rule(&e, sql).is_some(), "{sql}");
        }
        // Dollar-quoted strings, and literals joined across a newline.
        assert!(rule(&e, "SELECT profile->>$$ssn$$ FROM t").is_some());
        assert!(rule(&e, "SELECT profile->>$k$api_secret$k$ FROM t").is_some());
        assert!(rule(&e, "SELECT profile->>'ss'\n  'n' FROM t").is_some());
        assert!(rule(&e, "SELECT profile->>'api_'\n'secret' FROM t").is_some());
        assert_eq!(rule(&e, "SELECT 'ss' 'n'"), None);
        // FROM inside a call is an argument's; a subquery is no relation.
        assert!(rule(&e, "SELECT trim(both from secret_answer) FROM t").is_some());
        assert!(rule(&e, "SELECT extract(year from api_secret_at)::text FROM t").is_some());
        for sql in [
            "SELECT upper(x) FROM (SELECT lower(note) AS x FROM t) s",
            "SELECT 1 FROM t JOIN (SELECT max(name) AS m FROM u) q ON true",
            "SELECT a IS DISTINCT FROM b AND (c OR d) FROM t",
            "SELECT upper(name) FROM\x0bt p",
        ] {
            assert_eq!(rule(&e, sql), None, "{sql}");
        }
        // A Unicode-escaped name is decoded; a UESCAPE clause, or columns
        // renamed by an alias list, cannot be followed: the strongest rule.
        assert!(rule(&e, r#"SELECT upper(U&"secret\005fanswer") FROM t"#).is_some());
        assert!(rule(&e, r#"SELECT upper(U&"\+000073sn") FROM t"#).is_some());
        assert_eq!(rule(&e, r#"SELECT upper(U&"n\0061me") FROM t"#), None);
        let strongest = e
            .strongest_name_rule()
            .map(|(r, a)| (e.rule_name(r).to_string(), a));
        for sql in [
            r#"SELECT upper(U&"d!0061ta" UESCAPE '!') FROM t"#,
            "SELECT upper(y) FROM t AS p(i, x, y)",
            "SELECT upper(y) FROM s.t p (i, y)",
        ] {
            assert_eq!(rule(&e, sql), strongest, "{sql}");
        }
        for sql in [
            "SELECT upper(name) FROM t WHERE id IN (1)",
            "SELECT upper(name) FROM t JOIN u USING (id)",
            "SELECT upper(name) FROM t LIMIT (5)",
            "INSERT INTO t (a, b) VALUES ('x', 'y') RETURNING upper(a)",
        ] {
            assert_eq!(rule(&e, sql), None, "{sql}");
        }
        // With standard_conforming_strings off, `\'` does not end a literal
        // (here, what follows is not a comment).
        let sql = b"SELECT 'a\\' -- ', upper(ssn) AS x\n";
        assert!(derived_rule(&e, sql, true).is_some());
        assert_eq!(derived_rule(&e, sql, false), None);
        // A literal or quoted name left open reads to the end.
        assert!(rule(&e, "SELECT 'ssn").is_some());
        assert!(rule(&e, "SELECT \"ssn").is_some());
        assert!(rule(&e, "\"").is_none());
    }

    /// Texts PostgreSQL reads otherwise than a first reading did (found by
    /// review, each a ruled column in clear through the gateway).
    #[test]
    fn names_as_the_server_reads_them() {
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        for sql in [
            // `IS [NOT] DISTINCT FROM` names no relation.
            "select 1 is distinct from 2 as b, api_secret || '' as x from t",
            "select 1 IS NOT /* c */ DISTINCT FROM 2, upper(api_secret) from t",
            // Functions named `update` and `join`, a comment before `(` too.
            "select update(api_secret) from t",
            "select join (api_secret) from t",
            "select update /**/ (api_secret) from t",
            "select join -- c\n (api_secret) from t",
            // A name over 63 bytes is its first 63 (`…_ssn` after the cut).
            &format!("select upper({}_ssnzz) from t", "a".repeat(59)),
            &format!("select upper(\"{}_ssnZZ\") from t", "a".repeat(59)),
        ] {
            assert!(rule(&e, sql).is_some(), "{sql}");
        }
        // A subquery after JOIN is still one; FROM after IS DISTINCT is
        // no relation, a FROM later still is.
        assert_eq!(
            rule(
                &e,
                "select a from t join (select 1 as x) q on a is distinct from x"
            ),
            None
        );
        assert_eq!(
            rule(&e, "select a is distinct from b from api_secret"),
            None
        );
        // Statement and cursor names are cut as the server cuts them.
        let long = format!("p{}", "q".repeat(70));
        let cut = format!("p{}", "q".repeat(62));
        assert_eq!(
            sql_commands(format!("execute {long}").as_bytes(), false),
            vec![SqlCommand::Execute(cut.into_bytes())]
        );
    }

    #[test]
    fn sql_level_prepared_statements_and_cursors() {
        let p = sql_commands(
            b"PREPARE q (int) AS SELECT upper(ssn) FROM t WHERE id = $1; \
              prepare \"Q2\" as select 1; EXECUTE q(1); execute \"Q2\"; select 'prepare x as y'; \
              DEALLOCATE PREPARE q; deallocate all; \
              declare c1 binary no scroll cursor with hold for select upper(ssn) from t; \
              FETCH FORWARD 5 FROM c1; move c1; fetch \"C2\"; close c1; CLOSE ALL",
            false,
        );
        let v = |s: &str| s.as_bytes().to_vec();
        use SqlCommand::*;
        assert_eq!(
            p,
            vec![
                Prepare(v("q"), v("SELECT upper(ssn) FROM t WHERE id = $1")),
                Prepare(v("Q2"), v("select 1")),
                Execute(v("q")),
                Execute(v("Q2")),
                Deallocate(Some(v("q"))),
                Deallocate(None),
                Declare(v("c1"), v("select upper(ssn) from t")),
                Fetch(v("c1")),
                Fetch(v("c1")),
                Fetch(v("C2")),
                Close(Some(v("c1"))),
                Close(None),
            ]
        );
        assert_eq!(
            sql_commands(
                br#"EXECUTE U&"\0070"; declare U&"c" cursor for select 1; fetch U&"c""#,
                false
            ),
            vec![
                Unreadable(SqlCommand::EXECUTE),
                Unreadable(SqlCommand::DECLARE),
                // (Its name read raw: `U&"\0063"` would be a name no
                // cursor has.)
                Fetch(v("c")),
            ]
        );
        assert_eq!(sql_commands(b"\x0bEXECUTE p", false), vec![Execute(v("p"))]);
        assert!(sql_commands(b"select 1; select 2", false).is_empty());
        assert!(sql_commands(b"explain execute q", false).is_empty());
    }

    #[test]
    fn no_name_rules_no_rule() {
        let p = MaskingProfile::from_yaml("columns: []").unwrap();
        let e = Engine::compile(&p).unwrap();
        assert_eq!(rule(&e, "SELECT upper(ssn), password FROM people"), None);
    }
}
