//! Where a result column comes from, so that a column rule follows the
//! stored column and not only the name a query gives it.
//!
//! A column rule matches the names in RowDescription, and
//! `SELECT api_secret AS k FROM t` describes the column as `k`. But
//! RowDescription also carries, for a column that is a plain reference to
//! a table (or view) column, that column's table oid and attribute number,
//! through aliases, subqueries and CTEs. So the gateway reads the target's
//! `pg_attribute` ([`catalog_query`], once per login or per cached period,
//! before the client's first statement), keeps the columns whose stored
//! names a name rule matches, and [`RowPlan`](super::RowPlan) applies the
//! rule of a column's stored name (then, if none, of its result name).
//!
//! What this cannot see: an expression (`api_secret || ''`, a function
//! call, a cast, a scalar subquery) and the result of a set operation
//! (`UNION`) have no origin, and a copy under another name (a view that
//! renames, `CREATE TABLE … AS`) is a column of its own; the detectors,
//! which scan every text value, still apply there. A relation created after
//! the catalog was read is resolved once it is read again: a result from a
//! relation newer than the newest one read marks the cache stale
//! ([`ColumnOrigins::newest_relation`]), so the next login reads it again.
//!
//! Sans-IO: the query text and the parsing of its rows; the relay runs it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Most entries kept from one catalog read; rows past it are dropped (and
/// counted, [`ColumnOrigins::dropped`]).
pub const MAX_ORIGINS: usize = 1 << 18;

/// The catalog read: `(attrelid, attnum, attname)` of every live column of
/// every relation whose oid is above `after` and that was created after
/// `initdb` (system catalogs and `information_schema` are left out), and a
/// last row `(0, 0, max(pg_class.oid))`, the newest relation then. `after`
/// is 0 for a whole read, or the newest relation of the read it continues
/// ([`ColumnOrigins::continued`]): relations created since. With
/// `generated` (PostgreSQL 12 and later, which have `attgenerated`), a
/// generated column's number comes negated: `COPY table TO` leaves those
/// out, and a COPY's columns are matched to its describe's without them.
///
/// Every column, not only those the name rules match: PostgreSQL's `ILIKE`
/// and `~*` cost more a row than sending the row does (measured on 2 400
/// user columns, 8 900 in `pg_attribute`: 2.6 ms unfiltered, 12–28 ms
/// narrowed in the server; `bench/RESULTS.md` section 12).
/// [`ColumnOrigins::add_row`] keeps what the engine's matchers match.
pub fn catalog_query(after: u32, generated: bool) -> String {
    format!(
        "SELECT attrelid::int8, {}, attname::text FROM pg_catalog.pg_attribute \
         WHERE attrelid > {} AND attnum > 0 AND NOT attisdropped \
         UNION ALL SELECT 0, 0, max(oid)::text FROM pg_catalog.pg_class",
        if generated {
            "CASE WHEN attgenerated = '' THEN attnum ELSE -attnum END"
        } else {
            "attnum"
        },
        after.max(FIRST_NORMAL_OID - 1)
    )
}

/// PostgreSQL's `FirstNormalObjectId`: oids below it are `initdb`'s.
const FIRST_NORMAL_OID: u32 = 16384;

/// Stored names of the columns a name rule matches, by (table oid,
/// attribute number), as read from one database's catalog.
#[derive(Debug, Default)]
pub struct ColumnOrigins {
    names: HashMap<(u32, i16), Box<[u8]>>,
    /// The attribute numbers in `names`, by table (for a whole row).
    ruled: HashMap<u32, Vec<i16>>,
    /// Generated columns (all of them, ruled or not).
    generated: HashSet<(u32, i16)>,
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
        let mut attnum: i16 = f.number()?;
        let name = f.next()?.ok_or(BadCatalogRow)?;
        if attnum < 0 {
            attnum = attnum.checked_neg().ok_or(BadCatalogRow)?;
            if self.generated.len() < MAX_ORIGINS {
                self.generated.insert((rel, attnum));
            }
        }
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
        if self.names.insert((rel, attnum), name.into()).is_none() {
            self.ruled.entry(rel).or_default().push(attnum);
        }
        Ok(())
    }

    /// A read that continues this one: its columns and newest relation, to
    /// which the rows of `catalog_query(self.newest_relation(), _)` add the
    /// relations created since. Not stale, and no one to notify yet.
    pub fn continued(&self) -> ColumnOrigins {
        ColumnOrigins {
            names: self.names.clone(),
            ruled: self.ruled.clone(),
            generated: self.generated.clone(),
            newest: self.newest,
            dropped: self.dropped,
            stale: AtomicBool::new(false),
            notify: None,
        }
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

    /// The stored names of relation `table`'s columns that a rule matches
    /// (what a whole row of it, `select p from people p`, holds).
    pub fn ruled_names(&self, table: u32) -> impl Iterator<Item = &[u8]> + '_ {
        self.ruled
            .get(&table)
            .into_iter()
            .flatten()
            .filter_map(move |&a| self.name(table, a))
    }

    /// Whether column `attnum` of relation `table` is a generated column
    /// (known from reads of PostgreSQL 12 and later).
    pub fn is_generated(&self, table: u32, attnum: i16) -> bool {
        !self.generated.is_empty() && self.generated.contains(&(table, attnum))
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
        let l = crate::protocol::be_i32(self.rest.get(..4).ok_or(BadCatalogRow)?);
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
    fn rows_resolve_and_the_newest_relation_is_kept() {
        let mut o = ColumnOrigins::new();
        let keep = |n: &[u8]| n.ends_with(b"secret");
        o.add_row(&row(&[Some("16390"), Some("2"), Some("api_secret")]), keep)
            .unwrap();
        o.add_row(&row(&[Some("16390"), Some("3"), Some("secretary")]), keep)
            .unwrap();
        o.add_row(&row(&[Some("0"), Some("0"), Some("16401")]), keep)
            .unwrap();
        // Generated columns come negated: kept as such, named as others.
        o.add_row(&row(&[Some("16390"), Some("-4"), Some("old_secret")]), keep)
            .unwrap();
        o.add_row(&row(&[Some("16390"), Some("-5"), Some("total")]), keep)
            .unwrap();
        assert_eq!(o.name(16390, 2), Some(&b"api_secret"[..]));
        assert_eq!(o.name(16390, 3), None);
        assert_eq!(o.name(16391, 2), None);
        assert_eq!(o.name(16390, 4), Some(&b"old_secret"[..]));
        assert!(o.is_generated(16390, 4) && o.is_generated(16390, 5));
        assert!(!o.is_generated(16390, 2) && !o.continued().is_generated(16390, 3));
        assert!(o.continued().is_generated(16390, 5));
        assert_eq!(o.len(), 2);
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
    fn the_engine_keeps_the_names_its_rules_match() {
        use crate::mask::{ColumnRule, Engine, MaskingProfile};
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        assert!(e.has_name_rules());
        for n in [
            "api_secret",
            "DB_PASSWORD",
            "reset_token",
            "ssn",
            "home_ssn",
            "social_security",
            "user_pwd",
            "id",
            "tokens",
            "SSN",
            "ssn_hash",
            "note",
            "",
            "passphrase_hint",
        ] {
            let n = n.as_bytes();
            assert_eq!(
                e.name_ruled(n),
                e.column_rule_by_name(n).is_some(),
                "{}",
                String::from_utf8_lossy(n)
            );
        }
        let typed = MaskingProfile {
            columns: vec![ColumnRule {
                column: None,
                column_regex: None,
                type_: Some(crate::mask::profile::TypeRef::Name("uuid".into())),
                action: crate::mask::ColumnAction::Mask,
            }],
            ..Default::default()
        };
        assert!(!Engine::compile(&typed).unwrap().has_name_rules());
        let off = MaskingProfile {
            enabled: false,
            ..Default::default()
        };
        assert!(!Engine::compile(&off).unwrap().has_name_rules());
    }

    #[test]
    fn a_continued_read_keeps_the_columns_and_asks_for_newer_relations() {
        assert!(catalog_query(0, false).contains("WHERE attrelid > 16383 AND"));
        assert!(catalog_query(16401, true).contains("WHERE attrelid > 16401 AND"));
        assert!(!catalog_query(0, false).contains("attgenerated"));
        let keep = |_: &[u8]| true;
        let mut o = ColumnOrigins::new();
        o.add_row(&row(&[Some("16390"), Some("2"), Some("api_secret")]), keep)
            .unwrap();
        o.add_row(&row(&[Some("0"), Some("0"), Some("16401")]), keep)
            .unwrap();
        o.saw_relation(16405);
        let mut c = o.continued();
        assert!(!c.is_stale());
        assert_eq!(c.newest_relation(), 16401);
        c.add_row(&row(&[Some("16405"), Some("1"), Some("pin_secret")]), keep)
            .unwrap();
        c.add_row(&row(&[Some("0"), Some("0"), Some("16407")]), keep)
            .unwrap();
        assert_eq!(c.name(16390, 2), Some(&b"api_secret"[..]));
        assert_eq!(c.name(16405, 1), Some(&b"pin_secret"[..]));
        assert_eq!(c.newest_relation(), 16407);
        assert_eq!(o.name(16405, 1), None);
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
