//! Where a result column comes from, so that a column rule follows the
//! stored column and not only the name a query gives it.
//!
//! A column rule matches the names in RowDescription, and
//! `SELECT api_secret AS k FROM t` describes the column as `k`. But
//! RowDescription also carries, for a column that is a plain reference to
//! a table (or view) column, that column's table oid and attribute number,
//! through aliases, subqueries and CTEs. So the gateway reads, from the
//! target's `pg_attribute`, the columns whose stored names a name rule
//! matches ([`catalog_query`], once per login or per cached period, before
//! the client's first statement), and [`RowPlan`](super::RowPlan) applies
//! the rule of a column's stored name (then, if none, of its result name).
//!
//! What this cannot see: an expression (`api_secret || ''`, a function
//! call, a cast) has no origin, and a copy under another name (a view that
//! renames, `CREATE TABLE … AS`) is a column of its own; the detectors,
//! which scan every text value, still apply there. A relation created after
//! the catalog was read is resolved once it is read again: a result from a
//! relation newer than the newest one read marks the cache stale
//! ([`ColumnOrigins::newest_relation`]), so the next login reads it again.
//!
//! Sans-IO: the query text and the parsing of its rows; the relay runs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use super::profile::ColumnRule;

/// Most entries kept from one catalog read; rows past it are dropped (and
/// counted, [`ColumnOrigins::dropped`]).
pub const MAX_ORIGINS: usize = 1 << 20;

/// The catalog query for these column rules, or `None` when no rule
/// matches by name (there is nothing to resolve).
///
/// It selects `(attrelid, attnum, attname)` of the live columns a name rule
/// may match, narrowed in the server by `ILIKE` for globs and `~*` for
/// regexes written with the operators both regex dialects read alike
/// (letters, digits, `_ - ^ $ . * + ? | ( )`); a name rule outside those
/// drops the narrowing (every column is read and the engine's own matchers
/// choose). The server's narrowing is a superset (case-insensitive), never
/// the decision: [`ColumnOrigins::add_row`] keeps what the engine matches.
/// A last row `(0, 0, max(pg_class.oid))` gives the newest relation read.
pub fn catalog_query(rules: &[ColumnRule]) -> Option<String> {
    let mut terms = Vec::new();
    let mut narrow = true;
    for r in rules {
        let term = match (&r.column, &r.column_regex) {
            (Some(g), _) => like_term(g),
            (_, Some(re)) => regex_term(re),
            _ => continue,
        };
        match term {
            Some(t) => terms.push(t),
            None => narrow = false,
        }
    }
    if terms.is_empty() && narrow {
        return None;
    }
    let filter = if narrow {
        format!(" AND ({})", terms.join(" OR "))
    } else {
        String::new()
    };
    Some(format!(
        "SELECT attrelid::int8, attnum, attname::text FROM pg_catalog.pg_attribute \
         WHERE attnum > 0 AND NOT attisdropped{filter} \
         UNION ALL SELECT 0, 0, max(oid)::text FROM pg_catalog.pg_class"
    ))
}

/// `attname ILIKE '…' ESCAPE '!'` for a glob; `None` if it holds a
/// backslash (whose meaning in a string literal depends on
/// `standard_conforming_strings`).
fn like_term(glob: &str) -> Option<String> {
    let mut s = String::with_capacity(glob.len() + 32);
    s.push_str("attname ILIKE '");
    for c in glob.chars() {
        match c {
            '*' => s.push('%'),
            '?' => s.push('_'),
            '%' | '_' | '!' => {
                s.push('!');
                s.push(c);
            }
            '\'' => s.push_str("''"),
            '\\' => return None,
            c => s.push(c),
        }
    }
    s.push_str("' ESCAPE '!'");
    Some(s)
}

/// `attname ~* '…'` for a regex both dialects read alike; `None` otherwise.
fn regex_term(re: &str) -> Option<String> {
    let body = re.strip_prefix("(?i)").unwrap_or(re);
    let plain = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-^$.*+?|()".contains(&b))
        && !body.contains("(?")
        && !body.is_empty();
    plain.then(|| format!("attname ~* '{body}'"))
}

/// Stored names of the columns a name rule matches, by (table oid,
/// attribute number), as read from one database's catalog.
#[derive(Debug, Default)]
pub struct ColumnOrigins {
    names: HashMap<(u32, i16), Box<[u8]>>,
    newest: u32,
    dropped: u64,
    stale: AtomicBool,
    /// Bumped when this read goes stale, so that other holders of reads
    /// (other cores) read again too.
    notify: Option<&'static AtomicU64>,
}

/// A row of the catalog query that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCatalogRow;

impl ColumnOrigins {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take one DataRow body (after tag and length) of [`catalog_query`]'s
    /// result, text format. `keep` says whether a stored name is one a rule
    /// matches (the engine's matchers).
    pub fn add_row(
        &mut self,
        body: &[u8],
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(), BadCatalogRow> {
        let mut f = Fields {
            rest: body.get(2..).ok_or(BadCatalogRow)?,
        };
        if body[..2] != [0, 3] {
            return Err(BadCatalogRow);
        }
        let rel: u32 = f.number()?;
        let attnum: i16 = f.number()?;
        let name = f.next()?.ok_or(BadCatalogRow)?;
        if rel == 0 {
            // The newest relation (NULL only in an empty pg_class).
            self.newest = std::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(BadCatalogRow)?;
            return Ok(());
        }
        if !keep(name) {
            return Ok(());
        }
        if self.names.len() >= MAX_ORIGINS {
            self.dropped += 1;
            return Ok(());
        }
        self.names.insert((rel, attnum), name.into());
        Ok(())
    }

    /// The stored name of column `attnum` of relation `table`, when a rule
    /// matches it.
    #[inline]
    pub fn name(&self, table: u32, attnum: i16) -> Option<&[u8]> {
        if self.names.is_empty() {
            return None;
        }
        self.names.get(&(table, attnum)).map(|n| &n[..])
    }

    /// Number of columns resolved.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Rows beyond [`MAX_ORIGINS`] that were not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The highest relation oid in the catalog when it was read.
    pub fn newest_relation(&self) -> u32 {
        self.newest
    }

    /// Count on `epoch` when this read goes stale ([`ColumnOrigins::saw_relation`]).
    pub fn notify_stale(&mut self, epoch: &'static AtomicU64) {
        self.notify = Some(epoch);
    }

    /// A result column came from relation `table`: if it is newer than the
    /// read, mark this read stale (its columns are unknown here), once.
    #[inline]
    pub fn saw_relation(&self, table: u32) {
        if table > self.newest && !self.stale.load(Relaxed) && !self.stale.swap(true, Relaxed) {
            if let Some(n) = self.notify {
                n.fetch_add(1, Relaxed);
            }
        }
    }

    /// Whether a relation newer than the read has been seen since.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Relaxed)
    }
}

/// The text fields of a DataRow.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<Option<&'a [u8]>, BadCatalogRow> {
        let l = self.rest.get(..4).ok_or(BadCatalogRow)?;
        let l = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        self.rest = &self.rest[4..];
        if l < 0 {
            return Ok(None);
        }
        let v = self.rest.get(..l as usize).ok_or(BadCatalogRow)?;
        self.rest = &self.rest[l as usize..];
        Ok(Some(v))
    }

    fn number<T: std::str::FromStr>(&mut self) -> Result<T, BadCatalogRow> {
        let v = self.next()?.ok_or(BadCatalogRow)?;
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BadCatalogRow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::profile::{ColumnAction, MaskingProfile};

    fn rule(glob: Option<&str>, re: Option<&str>) -> ColumnRule {
        ColumnRule {
            column: glob.map(str::to_string),
            column_regex: re.map(str::to_string),
            type_: None,
            action: ColumnAction::Mask,
        }
    }

    fn row(fields: &[Option<&str>]) -> Vec<u8> {
        let mut b = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn query_narrows_by_globs_and_plain_regexes() {
        let q = catalog_query(&MaskingProfile::default().columns).unwrap();
        assert!(q.contains("attname ILIKE '%password%' ESCAPE '!'"), "{q}");
        assert!(
            q.contains("attname ~* '^(ssn|.*_ssn|social_security(_number)?)$'"),
            "{q}"
        );
        assert!(q.contains("UNION ALL SELECT 0, 0, max(oid)::text"), "{q}");
        let q = catalog_query(&[rule(Some("a_b%c!d?'*"), None)]).unwrap();
        assert!(
            q.contains("attname ILIKE 'a!_b!%c!!d_''%' ESCAPE '!'"),
            "{q}"
        );
        let q = catalog_query(&[rule(None, Some("(?i)^card_(no|number)$"))]).unwrap();
        assert!(q.contains("attname ~* '^card_(no|number)$'"), "{q}");
    }

    #[test]
    fn rules_the_server_may_read_otherwise_read_every_column() {
        for re in [r"\bssn\b", "^[a-z]+_key$", "(?i:ssn)", "x{2}", "a(?:b)"] {
            let q = catalog_query(&[rule(Some("*token"), None), rule(None, Some(re))]).unwrap();
            assert!(!q.contains("ILIKE"), "{re}: {q}");
            assert!(q.contains("NOT attisdropped UNION ALL"), "{re}: {q}");
        }
        let q = catalog_query(&[rule(Some(r"a\b"), None)]).unwrap();
        assert!(!q.contains("ILIKE"), "{q}");
    }

    #[test]
    fn no_name_rule_no_query() {
        let mut typed = rule(None, None);
        typed.type_ = Some(crate::mask::profile::TypeRef::Name("uuid".into()));
        assert_eq!(catalog_query(&[typed]), None);
        assert_eq!(catalog_query(&[]), None);
    }

    #[test]
    fn rows_resolve_and_the_newest_relation_is_kept() {
        let mut o = ColumnOrigins::new();
        let keep = |n: &[u8]| n.ends_with(b"secret");
        o.add_row(&row(&[Some("16390"), Some("2"), Some("api_secret")]), keep)
            .unwrap();
        o.add_row(&row(&[Some("16390"), Some("3"), Some("secretary")]), keep)
            .unwrap();
        o.add_row(&row(&[Some("0"), Some("0"), Some("16401")]), keep)
            .unwrap();
        assert_eq!(o.name(16390, 2), Some(&b"api_secret"[..]));
        assert_eq!(o.name(16390, 3), None);
        assert_eq!(o.name(16391, 2), None);
        assert_eq!(o.len(), 1);
        assert_eq!(o.newest_relation(), 16401);
        static EPOCH: AtomicU64 = AtomicU64::new(0);
        o.notify_stale(&EPOCH);
        o.saw_relation(16401);
        o.saw_relation(0);
        assert!(!o.is_stale());
        assert_eq!(EPOCH.load(Relaxed), 0);
        o.saw_relation(16402);
        o.saw_relation(16500);
        assert!(o.is_stale());
        assert_eq!(EPOCH.load(Relaxed), 1);
    }

    #[test]
    fn bad_rows_are_errors() {
        let mut o = ColumnOrigins::new();
        let keep = |_: &[u8]| true;
        for r in [
            row(&[Some("1"), Some("2")]),
            row(&[Some("x"), Some("2"), Some("n")]),
            row(&[Some("1"), Some("99999"), Some("n")]),
            row(&[Some("1"), Some("2"), None]),
            row(&[Some("0"), Some("0"), Some("")]),
            vec![0, 3, 0, 0],
            vec![0],
        ] {
            assert_eq!(o.add_row(&r, keep), Err(BadCatalogRow), "{r:?}");
        }
        assert!(o.is_empty());
    }
}
