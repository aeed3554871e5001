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
//! A view column is a column of the view in RowDescription. So with the
//! ruled columns, the read takes the stored queries of the views over
//! their relations ([`view_query`]) and follows each view column to what
//! it shows ([`ColumnOrigins::resolve_views`]): under another name, the
//! source's rule; computed, the strongest rule its expression (or, when
//! that cannot be followed, its view) reads.
//!
//! What this cannot see: an expression in a statement (`api_secret || ''`,
//! a function call, a cast, a scalar subquery) and the result of a set
//! operation (`UNION`) have no origin ([`super::derived`] reads the
//! statement's text for them), and a copy under another name (`CREATE
//! TABLE … AS`) is a column of its own; the detectors, which scan every
//! text value, still apply there. A relation created after
//! the catalog was read is resolved once it is read again: a result from a
//! relation newer than the newest one read marks the cache stale
//! ([`ColumnOrigins::newest_relation`]), so the next login reads it again.
//!
//! Sans-IO: the query text and the parsing of its rows; the relay runs it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use super::derived::{literal_names, strength, strongest_mention, Derived};
use super::Engine;

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

/// The view read, after [`catalog_query`]: each view and materialized view
/// that reads one of `relations` (the relations with ruled columns), a
/// relation with JSON, XML, composite or extension-typed columns, or a
/// function created after `initdb`, directly or through other views, as
/// `('v', oid, name, reads, tree)`
/// (and each of `relations` as `('r', oid, name, NULL, NULL)`, for a
/// statement that reads its whole row, [`ColumnOrigins::whole_row_by_name`];
/// and each SQL or PL/pgSQL function created after `initdb` whose result
/// may be text as `('f', oid, name, reads, body)`, `reads` the columns a
/// `BEGIN ATOMIC` body reads, for a statement or view that calls it,
/// [`ColumnOrigins::function`]):
/// - `reads`: the columns its query reads, `relation:attnum,…` (from
///   `pg_depend`: every column it names anywhere, also in `WHERE`);
/// - `tree`: its stored query (`pg_rewrite.ev_action`), whose top-level
///   target list gives each column's source, as RowDescription does for a
///   statement ([`top_targets`]), and its constants (JSON keys).
///
/// Not the definition as text (`pg_get_viewdef`): deparsing cost the
/// server 110 µs a view, three times the rest of this query
/// (`bench/RESULTS.md` section 12).
///
/// A field longer than `cap` bytes comes as NULL (the view is then followed
/// as far as the other fields allow, and masks more).
pub fn view_query(relations: &[u32], cap: usize) -> String {
    // Views start from the relations with ruled columns, those with JSON,
    // XML, composite or extension-typed columns (arrays and domains of
    // them too: JSON keys and composite fields name values), and the
    // functions created after `initdb` (their bodies may read ruled
    // columns).
    let mut list = String::with_capacity(relations.len() * 7);
    for (k, r) in relations.iter().enumerate() {
        if k > 0 {
            list.push(',');
        }
        list.push_str(&r.to_string());
    }
    let rule = "d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                AND r.oid = d.objid AND r.ev_type = '1' AND r.ev_class <> d.refobjid";
    format!(
        "WITH RECURSIVE v(oid) AS (\
           SELECT r.ev_class FROM pg_catalog.pg_depend d, pg_catalog.pg_rewrite r \
            WHERE (d.refobjid = ANY('{{{list}}}'::pg_catalog.oid[]) OR d.refobjid IN ( \
                     SELECT a.attrelid FROM pg_catalog.pg_attribute a \
                       JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
                       JOIN pg_catalog.pg_type e ON e.oid = CASE WHEN ty.typelem <> 0 AND ty.typlen = -1 \
                         THEN ty.typelem WHEN ty.typbasetype <> 0 THEN ty.typbasetype ELSE ty.oid END \
                      WHERE a.attrelid > {last_initdb} AND a.attnum > 0 \
                        AND (e.typtype = 'c' OR e.oid > {last_initdb} OR e.oid IN (114, 142, 3802)))) \
              AND {rule} \
           UNION SELECT r.ev_class FROM pg_catalog.pg_depend d, pg_catalog.pg_rewrite r \
            WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
              AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
              AND d.refobjid > {last_initdb} AND r.oid = d.objid AND r.ev_type = '1' \
           UNION SELECT r.ev_class FROM v, pg_catalog.pg_depend d, pg_catalog.pg_rewrite r \
            WHERE d.refobjid = v.oid AND {rule}) \
         SELECT 'v', r.ev_class::int8, c.relname::text, \
           CASE WHEN pg_catalog.octet_length(t.reads) <= {cap} THEN t.reads END, \
           CASE WHEN pg_catalog.octet_length(t.tree) <= {cap} THEN t.tree END \
         FROM v JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid AND r.ev_type = '1' \
           AND r.rulename = '_RETURN' \
           JOIN pg_catalog.pg_class c ON c.oid = r.ev_class, \
         LATERAL (SELECT (SELECT pg_catalog.string_agg(d.refobjid::text || ':' || d.refobjsubid::text, ',') \
                            FROM pg_catalog.pg_depend d \
                           WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                             AND d.objid = r.oid \
                             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                             AND d.refobjid <> r.ev_class) AS reads, \
                         r.ev_action::text AS tree) t \
         UNION ALL SELECT 'a', a.attrelid::int8, a.attname::text, a.attnum::text, NULL \
           FROM pg_catalog.pg_attribute a WHERE a.attrelid IN (SELECT oid FROM v) \
            AND a.attnum > 0 AND NOT a.attisdropped \
         UNION ALL SELECT 'r', c.oid::int8, c.relname::text, NULL, NULL FROM pg_catalog.pg_class c \
          WHERE c.oid = ANY('{{{list}}}'::pg_catalog.oid[]) \
         UNION ALL SELECT 'f', p.oid::int8, p.proname::text, \
           (SELECT pg_catalog.string_agg(d.refobjid::text || ':' || d.refobjsubid::text, ',') \
              FROM pg_catalog.pg_depend d \
             WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid \
               AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass), \
           CASE WHEN pg_catalog.octet_length(p.prosrc) <= {cap} THEN p.prosrc END \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
         WHERE p.oid > {last_initdb} AND l.lanname IN ('sql', 'plpgsql') \
           AND p.prorettype NOT IN ({FUNCTION_TYPES_LEFT_OUT})",
        last_initdb = FIRST_NORMAL_OID - 1,
    )
}

/// Most views kept from one view read; the rest are followed as opaque
/// (their columns mask more). As many functions.
pub const MAX_VIEWS: usize = 1 << 16;

/// Result types of the functions the view read leaves out: what a
/// statement's computed column of that type would not take a rule for
/// (bool, integers, oid, floats, numeric, date, timestamps), and `void`,
/// `trigger`, `event_trigger`.
const FUNCTION_TYPES_LEFT_OUT: &str =
    "16, 20, 21, 23, 26, 700, 701, 1700, 1082, 1114, 1184, 2278, 2279, 3838";

/// PostgreSQL's `FirstNormalObjectId`: oids below it are `initdb`'s.
const FIRST_NORMAL_OID: u32 = 16384;

/// Where a column's values come from, when a name rule covers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A ruled column's stored name: that name's rule.
    Name(Box<[u8]>),
    /// Something that could not be followed (a view definition too long to
    /// read, a text the reading of [`super::derived`] cannot follow): the
    /// profile's strongest name rule.
    Unreadable,
}

impl Source {
    pub fn rule(&self, engine: &Engine) -> Derived {
        match self {
            Source::Name(n) => engine.column_rule_by_name(n),
            Source::Unreadable => engine.strongest_name_rule(),
        }
    }
}

/// The stronger of two sources under `engine` (the first of equals).
fn stronger_source(engine: &Engine, a: Option<Source>, b: Option<Source>) -> Option<Source> {
    let rank = |s: &Option<Source>| {
        s.as_ref()
            .and_then(|s| s.rule(engine))
            .map(|(_, a)| strength(a))
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

/// A view or materialized view as the view read gives it, until
/// [`ColumnOrigins::resolve_views`].
#[derive(Debug, Clone)]
struct ViewDef {
    /// The columns (attnum > 0) and relations (0) its query reads; None:
    /// not known (too long).
    reads: Option<Vec<(u32, i16)>>,
    /// Its top-level target list; None: not readable.
    targets: Option<Vec<Target>>,
    /// Whether it reads a whole row of a relation (`p::text`).
    whole_rows: bool,
    /// Its name (`pg_class.relname`).
    name: Box<[u8]>,
    /// The values of every constant in its query; None: not known.
    consts: Option<Vec<Box<[u8]>>>,
    /// Every function its query calls.
    funcs: Vec<u32>,
}

/// `relation:attnum,…` (None: NULL).
fn reads_field(v: Option<&[u8]>) -> Result<Option<Vec<(u32, i16)>>, BadCatalogRow> {
    let Some(v) = v else { return Ok(None) };
    v.split(|&b| b == b',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (r, a) = std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.split_once(':'))
                .ok_or(BadCatalogRow)?;
            Ok((
                r.parse().map_err(|_| BadCatalogRow)?,
                a.parse().map_err(|_| BadCatalogRow)?,
            ))
        })
        .collect::<Result<Vec<(u32, i16)>, _>>()
        .map(Some)
}

/// A function as the view read gives it: oid, name, the columns a `BEGIN
/// ATOMIC` body reads, its body's text (None: too long).
type FuncDef = (u32, Box<[u8]>, Option<Vec<(u32, i16)>>, Option<Box<[u8]>>);

/// A column of a view's stored query: its number and name, and the
/// relation and column it shows as it is (`table` 0: computed; `column`
/// 0: a whole row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub resno: i16,
    pub name: Box<[u8]>,
    pub table: u32,
    pub column: i16,
    /// The relation columns (0: a whole row) its expression reads; None:
    /// not known (a subquery, a column of a join or subquery of the view).
    pub reads: Option<Vec<(u32, i16)>>,
    /// The functions its expression calls.
    pub funcs: Vec<u32>,
    /// The values of the constants in its expression (as stored: a text
    /// value after its length header).
    pub consts: Vec<Box<[u8]>>,
}

/// Stored names of the columns a name rule matches, by (table oid,
/// attribute number), as read from one database's catalog, and where the
/// columns of views that read them come from.
#[derive(Debug)]
pub struct ColumnOrigins {
    /// Ruled columns' stored names, and for a view column that shows a
    /// ruled column as it is (under another name too), that column's name.
    names: HashMap<(u32, i16), Box<[u8]>>,
    /// A view's computed column (an expression, a whole row) whose view
    /// reads ruled columns: the strongest of them. For text-like types.
    computed: HashMap<(u32, i16), Source>,
    /// Views whose stored query could not be read: any column of theirs
    /// not resolved otherwise, as `computed`.
    opaque: HashMap<u32, Source>,
    /// The names of view columns resolved to a ruled source, to their
    /// view's name and that source: a statement that names `contacts` and
    /// computes from `tax_id` computes from `ssn`.
    renamed: HashMap<Box<[u8]>, ByView>,
    /// Views read and not yet resolved, and their columns' names.
    views: HashMap<u32, ViewDef>,
    view_columns: HashMap<(u32, i16), Box<[u8]>>,
    /// The relations with ruled columns and the views over them, by name
    /// (a statement names them so).
    relations: HashMap<Box<[u8]>, Vec<u32>>,
    /// Functions read and not yet resolved.
    funcs: Vec<FuncDef>,
    /// Functions whose bodies read ruled columns (or cannot be read), by
    /// name (the strongest of overloads) and by oid.
    functions: HashMap<Box<[u8]>, Source>,
    function_oids: HashMap<u32, Source>,
    /// Distinguishes reads whose names count in statement texts (view
    /// columns, relations, functions; 0: none), for the rules texts keep.
    lineage: u64,
    /// The attribute numbers in `names` and `computed`, by table (for a
    /// whole row).
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

/// Sources by view name.
type ByView = HashMap<Box<[u8]>, Source>;

/// A row of the catalog query that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCatalogRow;

impl Default for ColumnOrigins {
    fn default() -> Self {
        ColumnOrigins {
            names: HashMap::new(),
            computed: HashMap::new(),
            opaque: HashMap::new(),
            renamed: HashMap::new(),
            views: HashMap::new(),
            view_columns: HashMap::new(),
            relations: HashMap::new(),
            funcs: Vec::new(),
            functions: HashMap::new(),
            function_oids: HashMap::new(),
            lineage: 0,
            ruled: HashMap::new(),
            generated: HashSet::new(),
            newest: 0,
            dropped: 0,
            stale: AtomicBool::new(false),
            notify: None,
        }
    }
}

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
            computed: self.computed.clone(),
            opaque: self.opaque.clone(),
            renamed: self.renamed.clone(),
            views: HashMap::new(),
            view_columns: HashMap::new(),
            relations: self.relations.clone(),
            funcs: Vec::new(),
            functions: self.functions.clone(),
            function_oids: self.function_oids.clone(),
            lineage: self.lineage,
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

    /// The strongest rule among relation `table`'s ruled columns (what a
    /// whole row of it, `select p from people p`, holds).
    pub fn whole_row(&self, engine: &Engine, table: u32) -> Derived {
        self.whole_row_source(engine, table)
            .and_then(|s| s.rule(engine))
    }

    /// Where a view's computed column (or any column of a view that could
    /// not be read) comes from, when it reads ruled columns. Its rule
    /// applies to text-like types.
    #[inline]
    pub fn computed(&self, table: u32, attnum: i16) -> Option<&Source> {
        if self.computed.is_empty() && self.opaque.is_empty() {
            return None;
        }
        self.computed
            .get(&(table, attnum))
            .or_else(|| self.opaque.get(&table))
    }

    /// The views with a column named `name` resolved to a ruled source:
    /// (view name, source).
    pub fn renamed(&self, name: &[u8]) -> impl Iterator<Item = (&[u8], &Source)> + '_ {
        self.renamed
            .get(name)
            .into_iter()
            .flatten()
            .map(|(v, s)| (&v[..], s))
    }

    /// 0 when no name of this read counts in statement texts (a view
    /// column resolved to a ruled source, a relation with ruled columns, a
    /// function reading them); otherwise unique to this read.
    pub fn lineage_id(&self) -> u64 {
        self.lineage
    }

    /// What a function named `name` returns, when its body (of any of its
    /// overloads) reads ruled columns or cannot be read.
    pub fn function(&self, name: &[u8]) -> Option<&Source> {
        self.functions.get(name)
    }

    /// The strongest source among the ruled columns of the relations (or
    /// views) named `name` (in any schema): what a whole row of it holds.
    pub fn whole_row_by_name(&self, engine: &Engine, name: &[u8]) -> Option<Source> {
        self.relations
            .get(name)
            .into_iter()
            .flatten()
            .map(|&r| self.whole_row_source(engine, r))
            .fold(None, |a, b| stronger_source(engine, a, b))
    }

    /// The relations with ruled columns (what [`view_query`] asks about).
    pub fn ruled_relations(&self) -> Vec<u32> {
        let mut r: Vec<u32> = self.ruled.keys().copied().collect();
        r.sort_unstable();
        r
    }

    fn source(&self, table: u32, attnum: i16) -> Option<Source> {
        match self.names.get(&(table, attnum)) {
            Some(n) => Some(Source::Name(n.clone())),
            None => self.computed(table, attnum).cloned(),
        }
    }

    /// Take one DataRow body of [`view_query`]'s result (text format).
    pub fn add_view_row(&mut self, body: &[u8]) -> Result<(), BadCatalogRow> {
        if body.get(..2) != Some(&[0, 5][..]) {
            return Err(BadCatalogRow);
        }
        let mut f = Fields { rest: &body[2..] };
        let kind = f.next()?.ok_or(BadCatalogRow)?;
        let oid: u32 = f.number()?;
        let name = f.next()?.ok_or(BadCatalogRow)?;
        if !matches!(kind, b"v" | b"r" | b"f" | b"a") {
            return Err(BadCatalogRow);
        }
        if kind == b"a" {
            // A view's column: its number and name.
            let attnum: i16 = f.number()?;
            if self.view_columns.len() < MAX_ORIGINS {
                self.view_columns.insert((oid, attnum), name.into());
            }
            return Ok(());
        }
        if kind == b"f" {
            let reads = reads_field(f.next()?)?;
            let body = f.next()?.map(Into::into);
            if self.funcs.len() < MAX_VIEWS {
                self.funcs.push((oid, name.into(), reads, body));
            } else {
                // (Not kept to be read: what it returns is not known.)
                self.function_oids.insert(oid, Source::Unreadable);
                self.functions.insert(name.into(), Source::Unreadable);
            }
            return Ok(());
        }
        let by_name = self.relations.entry(name.into()).or_default();
        if !by_name.contains(&oid) {
            by_name.push(oid);
        }
        if kind == b"r" {
            return Ok(());
        }
        let reads = reads_field(f.next()?)?;
        let tree = f.next()?;
        let def = ViewDef {
            reads,
            targets: tree.and_then(top_targets),
            whole_rows: tree.is_none_or(|t| memchr::memmem::find(t, b":varattno 0 ").is_some()),
            consts: tree.and_then(all_consts),
            funcs: tree.map(all_funcs).unwrap_or_default(),
            name: name.into(),
        };
        if self.views.len() < MAX_VIEWS || self.views.contains_key(&oid) {
            self.views.insert(oid, def);
        } else {
            self.opaque.insert(oid, Source::Unreadable);
        }
        Ok(())
    }

    /// Follow the views read ([`ColumnOrigins::add_view_row`]) to the
    /// ruled columns they show, views of views first:
    /// - a column that shows a column as it is (`ssn AS tax_id`) takes
    ///   that column's name (the view's own name for it when a rule
    ///   matches that first);
    /// - a computed column (an expression, a whole row) takes the strongest
    ///   rule among the ruled columns, constants' words and functions its
    ///   expression reads (when that cannot be followed, its view reads),
    ///   for text-like types;
    /// - a view whose stored query could not be read: every column not
    ///   resolved otherwise, as a computed one.
    pub fn resolve_views(&mut self, engine: &Engine) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // (Statement texts read from here on see relations and functions by
        // name: a lineage id now, a new one at the end.)
        if !self.relations.is_empty() || !self.funcs.is_empty() {
            self.lineage = NEXT.fetch_add(1, Relaxed);
        }
        // Functions first (views call them), read as statements are, with
        // this read: the strongest of the ruled columns a `BEGIN ATOMIC`
        // body reads and of the names, whole rows and functions its text
        // reads (again while that changes: a function calling another);
        // too long: unreadable. Once more after the views (a body naming a
        // view's column).
        let funcs = std::mem::take(&mut self.funcs);
        for _ in 0..3 {
            if !self.resolve_functions(engine, &funcs) {
                break;
            }
        }
        let views = std::mem::take(&mut self.views);
        let names = std::mem::take(&mut self.view_columns);
        // Views of views first (an explicit stack: chains may be long); a
        // view read by one being resolved (a cycle the catalog should not
        // hold) counts as unreadable.
        let mut done: HashSet<u32> = HashSet::with_capacity(views.len());
        let mut started: HashSet<u32> = HashSet::with_capacity(views.len());
        let mut order: Vec<u32> = views.keys().copied().collect();
        order.sort_unstable();
        for root in order {
            let mut stack = vec![(root, false)];
            while let Some((v, expanded)) = stack.pop() {
                if expanded {
                    self.resolve_view(engine, &views, &names, v, &done);
                    done.insert(v);
                    continue;
                }
                if !started.insert(v) {
                    continue;
                }
                stack.push((v, true));
                let def = &views[&v];
                let reads = def.reads.as_deref().unwrap_or(&[]).iter().map(|&(r, _)| r);
                let shown = def
                    .targets
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .map(|t| t.table);
                for r in reads.chain(shown) {
                    if views.contains_key(&r) && !started.contains(&r) {
                        stack.push((r, false));
                    }
                }
            }
        }
        if !views.is_empty() {
            self.resolve_functions(engine, &funcs);
        }
        // (A new id for every read that has any: a statement's rule read
        // under an earlier read may lack a view resolved since.)
        if !self.renamed.is_empty() || !self.relations.is_empty() || !self.functions.is_empty() {
            self.lineage = NEXT.fetch_add(1, Relaxed);
        }
    }

    /// One reading of the functions' bodies; whether any source changed.
    fn resolve_functions(&mut self, engine: &Engine, funcs: &[FuncDef]) -> bool {
        let mut oids = HashMap::with_capacity(funcs.len());
        let mut names: HashMap<Box<[u8]>, Source> = HashMap::new();
        for (oid, name, reads, body) in funcs {
            let mut s = None;
            for &(r, a) in reads.as_deref().unwrap_or(&[]) {
                if a > 0 {
                    s = stronger_source(engine, s, self.source(r, a));
                }
            }
            let text = match body {
                Some(b) => stronger_source(
                    engine,
                    strongest_mention(engine, b, false, Some(self)),
                    strongest_mention(engine, b, true, Some(self)),
                ),
                None => Some(Source::Unreadable),
            };
            let Some(s) = stronger_source(engine, s, text) else {
                continue;
            };
            oids.insert(*oid, s.clone());
            let kept = names.remove(name);
            if let Some(s) = stronger_source(engine, kept, Some(s)) {
                names.insert(name.clone(), s);
            }
        }
        // (Those not kept to be read stay as they are.)
        let mut changed = false;
        for (oid, s) in oids {
            changed |= self.function_oids.insert(oid, s.clone()).as_ref() != Some(&s);
        }
        for (name, s) in names {
            let kept = self.functions.get(&name).cloned();
            let s = stronger_source(engine, kept.clone(), Some(s));
            if s != kept {
                changed = true;
                if let Some(s) = s {
                    self.functions.insert(name, s);
                }
            }
        }
        changed
    }

    /// Resolve view `v`, the views it reads being `done` (one that is not
    /// reads as unreadable). `names`: the views' column names.
    fn resolve_view(
        &mut self,
        engine: &Engine,
        views: &HashMap<u32, ViewDef>,
        names: &HashMap<(u32, i16), Box<[u8]>>,
        v: u32,
        done: &HashSet<u32>,
    ) {
        let def = &views[&v];
        let reads = def.reads.as_deref().unwrap_or(&[]);
        let pending = |r: u32| views.contains_key(&r) && !done.contains(&r);
        // Where a column comes from: unreadable when from a view not
        // resolved.
        let source = |o: &Self, r: u32, a: i16| {
            if pending(r) {
                Some(Source::Unreadable)
            } else if a > 0 {
                o.source(r, a)
            } else {
                o.whole_row_source(engine, r)
            }
        };
        // What a computed column whose expression cannot be followed reads:
        // the strongest ruled column the view reads (every ruled column of
        // a relation whose whole row it reads).
        let mut read = if def.reads.is_none() {
            Some(Source::Unreadable)
        } else {
            None
        };
        for &(r, a) in reads {
            if a > 0 || pending(r) {
                read = stronger_source(engine, read, source(self, r, a));
            }
        }
        if def.whole_rows {
            // (The catalog keeps a relation's columns, or the relation when
            // none is named: any relation read may be one whose whole row
            // is.)
            let mut relations: Vec<u32> = reads.iter().map(|&(r, _)| r).collect();
            relations.dedup();
            for r in relations {
                read = stronger_source(engine, read, source(self, r, 0));
            }
        }
        // And the functions it calls anywhere, and the words of its
        // constants (a JSON key in a subquery).
        let read = match &def.consts {
            Some(consts) => self.with_consts_and_calls(engine, read, consts, &def.funcs),
            None => Some(Source::Unreadable),
        };
        let Some(targets) = &def.targets else {
            if let Some(s) = read {
                self.opaque.insert(v, s);
            }
            return;
        };
        for t in targets {
            let key = (v, t.resno);
            if self.names.len() + self.computed.len() >= MAX_ORIGINS {
                // (Kept whole: what the view reads, for all its columns.)
                self.dropped += 1;
                self.opaque
                    .insert(v, read.clone().unwrap_or(Source::Unreadable));
                continue;
            }
            let plain = if t.table == 0 || t.column == 0 || pending(t.table) {
                None
            } else {
                self.names.get(&(t.table, t.column)).cloned()
            };
            let found = match plain {
                Some(n) => Some((Source::Name(n), false)),
                None => {
                    let s = if pending(t.table) {
                        Some(Source::Unreadable)
                    } else if t.table != 0 && t.column != 0 {
                        // A view's computed column shown as it is stays
                        // computed.
                        self.computed(t.table, t.column).cloned()
                    } else if t.table != 0 {
                        self.whole_row_source(engine, t.table)
                    } else if let Some(reads) = &t.reads {
                        // An expression over columns of the relations the
                        // view reads: those columns, its constants' words
                        // (a JSON key) and the functions it calls.
                        let mut s = None;
                        for &(r, a) in reads {
                            s = stronger_source(engine, s, source(self, r, a));
                        }
                        self.with_consts_and_calls(engine, s, &t.consts, &t.funcs)
                    } else {
                        read.clone()
                    };
                    s.map(|s| (s, true))
                }
            };
            let Some((found, computed)) = found else {
                continue;
            };
            // The view's own name for it may be ruled too (a column of that
            // name in the catalog read): the stronger rule stays.
            let own = self.names.get(&key).cloned().map(Source::Name);
            let own_rule = own
                .as_ref()
                .and_then(|s| s.rule(engine))
                .map(|r| strength(r.1));
            let found_rule = found.rule(engine).map(|r| strength(r.1));
            if own.is_some() && own_rule >= found_rule {
                continue;
            }
            let fresh = own.is_none() && !self.computed.contains_key(&key);
            match (&found, computed) {
                (Source::Name(n), false) => {
                    self.names.insert(key, n.clone());
                }
                _ => {
                    self.names.remove(&key);
                    self.computed.insert(key, found.clone());
                }
            }
            if fresh {
                self.ruled.entry(v).or_default().push(t.resno);
            }
            // Statements name the column by the view's name for it now (a
            // renamed column, a materialized view's column list), else as
            // stored.
            let name = names.get(&key).unwrap_or(&t.name);
            if !name.is_empty() && !engine.name_ruled(name) {
                // (Views of the same name in other schemas: the stronger.)
                let by_view = self.renamed.entry(name.clone()).or_default();
                let kept = by_view.remove(&def.name);
                if let Some(s) = stronger_source(engine, kept, Some(found)) {
                    by_view.insert(def.name.clone(), s);
                }
            }
        }
    }

    /// `s` with the strongest ruled name among constants' words (a JSON
    /// key) and the sources of the functions called.
    fn with_consts_and_calls(
        &self,
        engine: &Engine,
        mut s: Option<Source>,
        consts: &[Box<[u8]>],
        funcs: &[u32],
    ) -> Option<Source> {
        for c in consts {
            // (Printable runs: a stored text value starts with its length.)
            for run in c
                .split(|&b| b < 0x20 || b == 0x7f)
                .filter(|r| !r.is_empty())
            {
                literal_names(run, |n| {
                    if engine.name_ruled(n) {
                        s = stronger_source(engine, s.take(), Some(Source::Name(n.into())));
                    }
                });
            }
        }
        for f in funcs {
            s = stronger_source(engine, s, self.function_oids.get(f).cloned());
        }
        s
    }

    fn whole_row_source(&self, engine: &Engine, table: u32) -> Option<Source> {
        let opaque = self.opaque.get(&table).cloned();
        self.ruled
            .get(&table)
            .into_iter()
            .flatten()
            .filter_map(|&a| self.source(table, a))
            .fold(opaque, |a, b| stronger_source(engine, a, Some(b)))
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

/// The columns of a stored query's (`pg_node_tree` text, `({QUERY …})`)
/// top-level target list, as [`Target`]s, leaving out junk entries. None
/// when the text is not of that shape.
pub fn top_targets(tree: &[u8]) -> Option<Vec<Target>> {
    let mut t = Tokens { s: tree, i: 0 };
    if t.next()? != b"(" || t.next()? != b"{" || t.next()? != b"QUERY" {
        return None;
    }
    // The Query's own fields are at depth 2; its range table comes before
    // its target list.
    let mut relations: Vec<Option<u32>> = Vec::new();
    let mut depth = 2;
    loop {
        match t.next()? {
            b"(" | b"{" => depth += 1,
            b")" | b"}" => {
                depth -= 1;
                if depth < 2 {
                    return None;
                }
            }
            b":rtable" if depth == 2 => relations = range_table(&mut t)?,
            b":targetList" if depth == 2 => break,
            _ => {}
        }
    }
    let mut out = Vec::new();
    if !list_opens(&mut t)? {
        return Some(out);
    }
    while next_node(&mut t, b"TARGETENTRY")? {
        let mut te = Target {
            reads: Some(Vec::new()),
            ..Target::default()
        };
        let mut junk = false;
        // The nodes open around the current token: the entry's own fields
        // at 1, its expression's nodes deeper (`(` lists as `b"("`).
        let mut open: Vec<&[u8]> = vec![b"TARGETENTRY"];
        // The VAR being read: (varno, varattno, varlevelsup).
        let mut var = (0usize, 0i16, 0u32);
        while !open.is_empty() {
            let tok = t.next()?;
            match tok {
                b"{" => {
                    let name = t.next()?;
                    if !matches!(name, b"VAR" | b"CONST") && !SIMPLE_NODES.contains(&name) {
                        // A subquery, a sublink, a node this reading does
                        // not know: what the column reads is not known.
                        te.reads = None;
                    }
                    if name == b"VAR" {
                        var = (0, 0, 0);
                    }
                    open.push(name);
                }
                b"(" => open.push(b"("),
                b")" | b"}" => {
                    if open.pop() == Some(&b"VAR"[..]) {
                        // A column of a relation of the range table.
                        let source = relations.get(var.0.wrapping_sub(1)).copied().flatten();
                        match (&mut te.reads, source) {
                            (Some(r), Some(rel)) if var.2 == 0 => r.push((rel, var.1)),
                            _ => te.reads = None,
                        }
                    }
                }
                _ if open.len() == 1 => match tok {
                    b":resno" => te.resno = node_number(t.next()?)?,
                    b":resname" => te.name = node_string(t.next()?),
                    b":resorigtbl" => te.table = node_number(t.next()?)?,
                    b":resorigcol" => te.column = node_number(t.next()?)?,
                    b":resjunk" => junk = t.next()? == b"true",
                    _ => {}
                },
                _ => match (open.last().copied(), tok) {
                    (Some(b"VAR"), b":varno") => var.0 = node_number(t.next()?)?,
                    (Some(b"VAR"), b":varattno") => var.1 = node_number(t.next()?)?,
                    (Some(b"VAR"), b":varlevelsup") => var.2 = node_number(t.next()?)?,
                    (Some(b"FUNCEXPR"), b":funcid") => te.funcs.push(node_number(t.next()?)?),
                    (Some(b"CONST"), b":constvalue") => {
                        if let Some(v) = const_bytes(&mut t)? {
                            te.consts.push(v.into());
                        }
                    }
                    _ => {}
                },
            }
        }
        if !junk {
            out.push(te);
        }
    }
    Some(out)
}

/// After a list field's name: whether a list follows (`(`), or none
/// (`<>`); None for anything else.
fn list_opens(t: &mut Tokens<'_>) -> Option<bool> {
    match t.next()? {
        b"<>" => Some(false),
        b"(" => Some(true),
        _ => None,
    }
}

/// In a list: whether a node named `name` opens next (its name read), or
/// the list ends; None for anything else.
fn next_node(t: &mut Tokens<'_>, name: &[u8]) -> Option<bool> {
    match t.next()? {
        b")" => Some(false),
        b"{" => (t.next()? == name).then_some(true),
        _ => None,
    }
}

/// Expression nodes whose value comes from their arguments alone (the
/// VARs and CONSTs under them say what a column reads): calls, operators,
/// casts, CASE, COALESCE, arrays, rows, collation. Not field selection
/// (`(info).secret_q`): a composite type's field is a column of its own.
const SIMPLE_NODES: &[&[u8]] = &[
    b"FUNCEXPR",
    b"OPEXPR",
    b"DISTINCTEXPR",
    b"NULLIFEXPR",
    b"SCALARARRAYOPEXPR",
    b"BOOLEXPR",
    b"RELABELTYPE",
    b"COERCEVIAIO",
    b"ARRAYCOERCEEXPR",
    b"CONVERTROWTYPEEXPR",
    b"COLLATEEXPR",
    b"CASEEXPR",
    b"CASEWHEN",
    b"CASETESTEXPR",
    b"ARRAYEXPR",
    b"ROWEXPR",
    b"COALESCEEXPR",
    b"MINMAXEXPR",
    b"NULLTEST",
    b"BOOLEANTEST",
    b"SUBSCRIPTINGREF",
    b"COERCETODOMAIN",
    b"NAMEDARGEXPR",
];

/// The range table of a stored query (after its `:rtable`): for each
/// entry, the relation it reads when it is a relation (`:rtekind 0`).
fn range_table(t: &mut Tokens<'_>) -> Option<Vec<Option<u32>>> {
    let mut out = Vec::new();
    if !list_opens(t)? {
        return Some(out);
    }
    while next_node(t, b"RANGETBLENTRY")? {
        let (mut kind, mut relid) = (None::<u32>, None::<u32>);
        let mut depth = 1;
        while depth > 0 {
            let tok = t.next()?;
            match tok {
                b"(" | b"{" => depth += 1,
                b")" | b"}" => depth -= 1,
                _ if depth == 1 => match tok {
                    b":rtekind" => kind = Some(node_number(t.next()?)?),
                    b":relid" => relid = Some(node_number(t.next()?)?),
                    // (Names, which may read as field names: skipped.)
                    b":ctename" | b":enrname" => {
                        t.next()?;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        out.push(if kind == Some(0) { relid } else { None });
    }
    Some(out)
}

/// The bytes of a CONST's `:constvalue` (`<>` for NULL, else `len [ b0 b1
/// … ]`, each byte a signed or unsigned decimal). Outer None: malformed.
fn const_bytes(t: &mut Tokens<'_>) -> Option<Option<Vec<u8>>> {
    let len = t.next()?;
    if len == b"<>" {
        return Some(None);
    }
    let len: usize = node_number(len)?;
    if t.next()? != b"[" {
        return None;
    }
    let mut v = Vec::with_capacity(len.min(1 << 16));
    loop {
        let tok = t.next()?;
        if tok == b"]" {
            return Some(Some(v));
        }
        let b: i16 = node_number(tok)?;
        v.push(b as u8);
    }
}

/// The tokens after each field `field` (with its trailing space) of a
/// stored query, wherever it is (`memmem`, not a walk of the tree).
fn after_field<'a>(tree: &'a [u8], field: &'static [u8]) -> impl Iterator<Item = Tokens<'a>> {
    memchr::memmem::find_iter(tree, field)
        // (A field name starts a token.)
        .filter(move |&at| at == 0 || TOKEN_BYTE[usize::from(tree[at - 1])] == SPACE)
        .map(move |at| Tokens {
            s: tree,
            i: at + field.len(),
        })
}

/// The values of every CONST of a stored query; None when one does not
/// read.
fn all_consts(tree: &[u8]) -> Option<Vec<Box<[u8]>>> {
    let mut out = Vec::new();
    for mut t in after_field(tree, b":constvalue ") {
        if let Some(v) = const_bytes(&mut t)? {
            out.push(v.into());
        }
    }
    Some(out)
}

/// The functions every FUNCEXPR of a stored query calls.
fn all_funcs(tree: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for mut t in after_field(tree, b":funcid ") {
        if let Some(f) = t.next().and_then(node_number) {
            out.push(f);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The tokens of a `pg_node_tree` text, as the server's reader splits it:
/// `(`, `)`, `{`, `}`, and the words between white space, a backslash
/// taking the next byte as part of the word.
struct Tokens<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Tokens<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.s;
        let mut i = self.i;
        while i < s.len() && TOKEN_BYTE[usize::from(s[i])] == SPACE {
            i += 1;
        }
        let start = i;
        match TOKEN_BYTE[usize::from(*s.get(start)?)] {
            BRACKET => i += 1,
            _ => loop {
                match s.get(i).map(|&c| TOKEN_BYTE[usize::from(c)]) {
                    Some(WORD) => i += 1,
                    Some(ESCAPE) => i += 2,
                    _ => break,
                }
            },
        }
        self.i = i.min(s.len());
        Some(&s[start..self.i])
    }
}

const WORD: u8 = 0;
const SPACE: u8 = 1;
const BRACKET: u8 = 2;
const ESCAPE: u8 = 3;

/// What each byte is to [`Tokens`].
static TOKEN_BYTE: [u8; 256] = {
    let mut t = [WORD; 256];
    t[b' ' as usize] = SPACE;
    t[b'\n' as usize] = SPACE;
    t[b'\t' as usize] = SPACE;
    t[b'(' as usize] = BRACKET;
    t[b')' as usize] = BRACKET;
    t[b'{' as usize] = BRACKET;
    t[b'}' as usize] = BRACKET;
    t[b'\\' as usize] = ESCAPE;
    t
};

fn node_number<T: std::str::FromStr>(tok: &[u8]) -> Option<T> {
    std::str::from_utf8(tok).ok()?.parse().ok()
}

/// A name as the node writer spells it: `<>` for none, a backslash before
/// each byte it escapes.
fn node_string(tok: &[u8]) -> Box<[u8]> {
    if tok == b"<>" {
        return Box::default();
    }
    let mut out = Vec::with_capacity(tok.len());
    let mut i = 0;
    while i < tok.len() {
        if tok[i] == b'\\' && i + 1 < tok.len() {
            i += 1;
        }
        out.push(tok[i]);
        i += 1;
    }
    out.into()
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

    fn view_row(oid: u32, reads: Option<&str>, tree: Option<&[u8]>) -> Vec<u8> {
        let mut b = 5i16.to_be_bytes().to_vec();
        let name = format!("v{oid}");
        let oid = oid.to_string();
        for f in [
            Some(&b"v"[..]),
            Some(oid.as_bytes()),
            Some(name.as_bytes()),
            reads.map(str::as_bytes),
            tree,
        ] {
            match f {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    fn targets(tree: &[u8]) -> Vec<(i16, String, u32, i16)> {
        top_targets(tree)
            .unwrap()
            .into_iter()
            .map(|t| {
                (
                    t.resno,
                    String::from_utf8(t.name.into()).unwrap(),
                    t.table,
                    t.column,
                )
            })
            .collect()
    }

    // Stored queries as PostgreSQL 15 wrote them (`pg_rewrite.ev_action`)
    // for, with `people` (oid 16384: id, name, ssn, api_secret, profile):
    // `contacts` (16389): select id, ssn as tax_id, upper(api_secret) as k,
    //   name, p as whole from people p where id > 0;
    // `c2` (16397): select tax_id as t2, upper(k) as k2,
    //   (select max(ssn) from people) as m from contacts;
    // `u` (16407): select ssn as x from people union select name from people.
    const CONTACTS: &[u8] = include_bytes!("testdata/view_contacts.tree");
    const C2: &[u8] = include_bytes!("testdata/view_c2.tree");
    const UNION: &[u8] = include_bytes!("testdata/view_u.tree");
    // `jv` (16415): select upper(p.name) as un, p.profile->>'ssn' as pk,
    //   p.name || ' ' || q.api_secret as ns, coalesce(p.name, id::text) as cn
    //   from people p join people q using (id);
    const JV: &[u8] = include_bytes!("testdata/view_jv.tree");
    const SUBQUERY: &[u8] = b"({QUERY :rtable <> :targetList ({TARGETENTRY :expr {SUBLINK \
        :subLinkType 4 :subselect {QUERY :targetList ({TARGETENTRY :expr {CONST :consttype 25 \
        :constvalue 14 [ 56 0 0 0 97 112 105 95 115 101 99 114 101 116 ]} :resno 1 :resname text \
        :resorigtbl 0 :resorigcol 0 :resjunk false})}} :resno 1 :resname m :resorigtbl 0 \
        :resorigcol 0 :resjunk false})})";

    #[test]
    fn the_top_level_target_list_of_a_stored_query() {
        let s = |v: &str| v.to_string();
        assert_eq!(
            targets(CONTACTS),
            vec![
                (1, s("id"), 16384, 1),
                (2, s("tax_id"), 16384, 3),
                (3, s("k"), 0, 0),
                (4, s("name"), 16384, 2),
                (5, s("whole"), 16384, 0),
            ]
        );
        // (Not the target list of the subquery inside `m`.)
        assert_eq!(
            targets(C2),
            vec![
                (1, s("t2"), 16389, 2),
                (2, s("k2"), 0, 0),
                (3, s("m"), 0, 0)
            ]
        );
        assert_eq!(targets(UNION), vec![(1, s("x"), 0, 0)]);
        // What each computed column's expression reads: relation columns
        // (0: a whole row) and constants; not known through a subquery, a
        // UNION's branches.
        let reads = |tree| -> Vec<Option<Vec<(u32, i16)>>> {
            top_targets(tree)
                .unwrap()
                .into_iter()
                .map(|t| t.reads)
                .collect()
        };
        assert_eq!(
            reads(CONTACTS),
            vec![
                Some(vec![(16384, 1)]),
                Some(vec![(16384, 3)]),
                Some(vec![(16384, 4)]),
                Some(vec![(16384, 2)]),
                Some(vec![(16384, 0)]),
            ]
        );
        assert_eq!(
            reads(C2),
            vec![Some(vec![(16389, 2)]), Some(vec![(16389, 3)]), None]
        );
        assert_eq!(reads(UNION), vec![None]);
        assert_eq!(
            reads(JV),
            vec![
                Some(vec![(16384, 2)]),
                Some(vec![(16384, 5)]),
                Some(vec![(16384, 2), (16384, 4)]),
                // (An inner join's merged column is stored as its left
                // column.)
                Some(vec![(16384, 2), (16384, 1)]),
            ]
        );
        let jv = top_targets(JV).unwrap();
        assert_eq!(
            jv[1].consts,
            vec![Box::from(&[28, 0, 0, 0, b's', b's', b'n'][..])]
        );
        assert_eq!(jv[2].consts, vec![Box::from(&[20, 0, 0, 0, b' '][..])]);
        // Escaped names; junk entries left out; an empty list.
        let odd = br"({QUERY :rtable <> :targetList ({TARGETENTRY :expr {VAR :varno 1 :location 3} :resno 2 :resname Odd\ Name\(x\) :ressortgroupref 0 :resorigtbl 16384 :resorigcol 3 :resjunk false} {TARGETENTRY :expr <> :resno 3 :resname <> :resorigtbl 0 :resorigcol 0 :resjunk true}) :override 0})";
        assert_eq!(targets(odd), vec![(2, s("Odd Name(x)"), 16384, 3)]);
        assert_eq!(targets(b"({QUERY :targetList <> :override 0})"), vec![]);
        for bad in [
            &b""[..],
            b"(",
            b"({QUERY :rtable <>})",
            b"({SELECT :targetList <>})",
            b"({QUERY :targetList ({TARGETENTRY :resno x})})",
            b"({QUERY :targetList ({VAR :resno 1})})",
            &CONTACTS[..CONTACTS.len() / 2],
            // (Cut inside the target list.)
            &CONTACTS[..memchr::memmem::find(CONTACTS, b":resname k ").unwrap()],
        ] {
            assert_eq!(top_targets(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn view_columns_take_the_rules_of_the_ruled_columns_they_show() {
        use crate::mask::derived::Text;
        use crate::mask::{ColumnAction, Engine, MaskingProfile};
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        let keep = |n: &[u8]| e.name_ruled(n);
        let mut o = ColumnOrigins::new();
        for (rel, cols) in [
            (16384, &["id", "name", "ssn", "api_secret", "profile"][..]),
            (16389, &["id", "tax_id", "k", "name", "whole"]),
            (16397, &["t2", "k2", "m"]),
            (16407, &["x"]),
            (16410, &["a", "b"]),
            (16415, &["un", "pk", "ns", "cn"]),
            (16440, &["m"]),
            (16420, &["n"]),
        ] {
            for (k, c) in cols.iter().enumerate() {
                let a = (k + 1).to_string();
                o.add_row(&row(&[Some(&rel.to_string()), Some(&a), Some(c)]), keep)
                    .unwrap();
            }
        }
        assert_eq!(o.ruled_relations(), vec![16384]);
        let rows = [
            view_row(
                16389,
                Some("16384:1,16384:2,16384:3,16384:4"),
                Some(CONTACTS),
            ),
            view_row(16397, Some("16389:2,16389:3,16384:3"), Some(C2)),
            view_row(16407, Some("16384:2,16384:3"), Some(UNION)),
            // Stored query too long to read: every column, by what it reads.
            view_row(16410, Some("16384:3"), None),
            // Nothing readable at all: the profile's strongest name rule.
            view_row(16420, None, None),
            view_row(16415, Some("16384:1,16384:2,16384:4,16384:5"), Some(JV)),
            // `select (select 'api_secret'::text) as m from people`: a
            // column made by a subquery, over `id` alone.
            view_row(16440, Some("16384:1"), Some(SUBQUERY)),
        ];
        for r in &rows {
            o.add_view_row(r).unwrap();
        }
        assert_eq!(o.lineage_id(), 0);
        o.resolve_views(&e);
        let rule = |s: Option<&Source>| s.and_then(|s| s.rule(&e)).map(|r| r.1);
        let keep4 = Some(ColumnAction::KeepLast(4));
        let mask = Some(ColumnAction::Mask);
        // Shown as they are: the source's name, under the view's own name.
        assert_eq!(o.name(16389, 2), Some(&b"ssn"[..]));
        assert_eq!(o.name(16397, 1), Some(&b"ssn"[..]));
        assert_eq!((o.name(16389, 1), o.name(16389, 4)), (None, None));
        assert_eq!((o.computed(16389, 1), o.computed(16389, 4)), (None, None));
        // Computed: the strongest ruled column the view reads (`*secret*`'s
        // mask over `ssn`'s keep_last), through another view's computed
        // column, a whole row, a subquery, a UNION.
        assert_eq!(rule(o.computed(16389, 3)), mask);
        assert_eq!(rule(o.computed(16389, 5)), mask);
        assert_eq!(rule(o.computed(16397, 2)), mask);
        assert_eq!(rule(o.computed(16397, 3)), mask);
        assert_eq!(rule(o.computed(16407, 1)), keep4);
        // (Without its stored query, a view may read whole rows: those of
        // the relations it reads count.)
        assert_eq!(rule(o.computed(16410, 2)), mask);
        assert_eq!(o.computed(16420, 1), Some(&Source::Unreadable));
        // By what each expression reads: an unruled column alone, a JSON
        // key, a ruled column, unruled columns only.
        assert_eq!(o.computed(16415, 1), None);
        assert_eq!(rule(o.computed(16415, 2)), keep4);
        assert_eq!(rule(o.computed(16415, 3)), mask);
        assert_eq!(o.computed(16415, 4), None);
        assert_eq!(o.renamed(b"un").count(), 0);
        // A computed column a subquery makes takes what the view reads,
        // the words of its constants included.
        assert_eq!(rule(o.computed(16440, 1)), mask);
        assert_eq!(o.whole_row(&e, 16389).map(|r| r.1), mask);
        assert_eq!(o.whole_row(&e, 16384).map(|r| r.1), mask);
        // A statement that computes from a view column computes from its
        // source.
        let by_view = |n: &[u8]| -> Vec<(String, Option<ColumnAction>)> {
            o.renamed(n)
                .map(|(v, s)| (String::from_utf8(v.to_vec()).unwrap(), rule(Some(s))))
                .collect()
        };
        assert_eq!(by_view(b"tax_id"), vec![("v16389".to_string(), keep4)]);
        assert_eq!(by_view(b"k"), vec![("v16389".to_string(), mask)]);
        assert_eq!(by_view(b"name"), vec![]);
        assert_ne!(o.lineage_id(), 0);
        // (When the text names the view: another relation's `tax_id` is
        // not this one.)
        let text = Text::new(
            b"select upper(tax_id) from public.V16389",
            Some(false),
            false,
        );
        assert_eq!(text.rule(&e, None), None);
        assert_eq!(text.rule(&e, Some(&o)).map(|r| r.1), keep4);
        let other = Text::new(b"select upper(tax_id) from invoices", Some(false), false);
        assert_eq!(other.rule(&e, Some(&o)), None);
        let quoted = Text::new(
            b"select upper(\"tax_id\") from \"v16389\"",
            Some(false),
            false,
        );
        assert_eq!(quoted.rule(&e, Some(&o)).map(|r| r.1), keep4);
        // A continued read keeps what was followed.
        let c = o.continued();
        assert_eq!(c.name(16397, 1), Some(&b"ssn"[..]));
        assert_eq!(rule(c.computed(16397, 2)), mask);
        assert_eq!(c.lineage_id(), o.lineage_id());

        // A view over unruled columns only: nothing.
        let mut p = ColumnOrigins::new();
        p.add_row(&row(&[Some("16384"), Some("3"), Some("ssn")]), keep)
            .unwrap();
        p.add_view_row(&view_row(16430, Some("16384:1,16384:2"), Some(UNION)))
            .unwrap();
        p.resolve_views(&e);
        assert_eq!(p.computed(16430, 1), None);
        assert_eq!(p.renamed(b"x").count(), 0);
    }

    #[test]
    fn a_statement_reading_a_whole_row_as_a_value_takes_its_rules() {
        use crate::mask::derived::Text;
        use crate::mask::{ColumnAction, Engine, MaskingProfile};
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        let mut o = people(&e);
        o.add_view_row(&row(&[
            Some("r"),
            Some("16384"),
            Some("people"),
            None,
            None,
        ]))
        .unwrap();
        o.resolve_views(&e);
        assert_ne!(o.lineage_id(), 0);
        let rule = |sql: &str| {
            Text::new(sql.as_bytes(), Some(false), false)
                .rule(&e, Some(&o))
                .map(|r| r.1)
        };
        let mask = Some(ColumnAction::Mask);
        for sql in [
            "select row_to_json(p) from people p",
            "select p::text from public.people as p where p.id = 1",
            "select to_jsonb(people) from people",
            "select json_agg(x) from orders o join people x on x.id = o.person",
            "select \"P\"::text from people \"P\"",
        ] {
            assert_eq!(rule(sql), mask, "{sql}");
        }
        for sql in [
            "select upper(p.name) from people p",
            "select upper(name) from people",
            "select row_to_json(o) from orders o join people p on p.id = o.person",
            "select p::text from other p",
        ] {
            assert_eq!(rule(sql), None, "{sql}");
        }
    }

    #[test]
    fn functions_whose_bodies_read_ruled_columns() {
        use crate::mask::derived::Text;
        use crate::mask::{ColumnAction, Engine, MaskingProfile};
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        let mut o = people(&e);
        let f = |oid: &str, name: &str, reads: Option<&str>, body: Option<&str>| {
            row(&[Some("f"), Some(oid), Some(name), reads, body])
        };
        for r in [
            f(
                "18220",
                "get_key",
                Some(""),
                Some(" select api_secret from people where id = i "),
            ),
            f(
                "18221",
                "get_tax",
                None,
                Some(" begin return (select ssn from people where id = i); end "),
            ),
            // `BEGIN ATOMIC`: no text, the columns it reads.
            f("18222", "atomic_key", Some("16384:1,16384:4"), Some("")),
            f(
                "18223",
                "harmless",
                None,
                Some("select upper(name) from people"),
            ),
            // An overload of `get_key` that reads nothing ruled: the
            // strongest of the two.
            f("18224", "get_key", None, Some("select 'x'")),
            // Too long to read.
            f("18225", "long_one", None, None),
        ] {
            o.add_view_row(&r).unwrap();
        }
        // A view calling `get_key`: its column reads what the function does.
        let tree = b"({QUERY :rtable <> :targetList ({TARGETENTRY :expr {FUNCEXPR :funcid 18220 \
            :funcresulttype 25 :args ({CONST :consttype 23 :constvalue 4 [ 1 0 0 0 0 0 0 0 ]}) \
            :location 7} :resno 1 :resname a :resorigtbl 0 :resorigcol 0 :resjunk false})})";
        o.add_view_row(&view_row(16450, Some(""), Some(tree)))
            .unwrap();
        o.resolve_views(&e);
        let rule = |sql: &str| {
            Text::new(sql.as_bytes(), Some(false), false)
                .rule(&e, Some(&o))
                .map(|r| r.1)
        };
        let mask = Some(ColumnAction::Mask);
        assert_eq!(rule("select get_key(1)"), mask);
        assert_eq!(
            rule("select public.get_tax(2)"),
            Some(ColumnAction::KeepLast(4))
        );
        assert_eq!(rule("select atomic_key(2) as k"), mask);
        assert_eq!(rule("select harmless(1)"), None);
        assert_eq!(rule("select upper(name) from people"), None);
        assert_eq!(
            rule("select long_one(1)"),
            e.strongest_name_rule().map(|r| r.1)
        );
        assert_eq!(
            o.computed(16450, 1).and_then(|s| s.rule(&e)).map(|r| r.1),
            mask
        );
        assert_eq!(o.function(b"harmless"), None);
    }

    /// A read of `people` (16384: id, name, ssn, api_secret).
    fn people(e: &crate::mask::Engine) -> ColumnOrigins {
        let mut o = ColumnOrigins::new();
        for (k, c) in ["id", "name", "ssn", "api_secret"].iter().enumerate() {
            let a = (k + 1).to_string();
            o.add_row(&row(&[Some("16384"), Some(&a), Some(c)]), |n| {
                e.name_ruled(n)
            })
            .unwrap();
        }
        o
    }

    /// A view whose stored query shows column `from` of 16384 as its
    /// column 1, named `name` in the stored query.
    fn shows(name: &str, from: (u32, i16)) -> Vec<u8> {
        format!(
            "({{QUERY :rtable <> :targetList ({{TARGETENTRY :expr {{VAR :varno 1 :varattno {} \
             :varlevelsup 0}} :resno 1 :resname {name} :resorigtbl {} :resorigcol {} \
             :resjunk false}})}})",
            from.1, from.0, from.1
        )
        .into_bytes()
    }

    #[test]
    fn view_columns_keep_the_stronger_rule_their_names_and_long_chains() {
        use crate::mask::{ColumnAction, Engine, MaskingProfile};
        let e = Engine::compile(&MaskingProfile::default()).unwrap();
        let keep = |n: &[u8]| e.name_ruled(n);
        let mut o = people(&e);
        // `api_secret as ssn`: the view's own name is ruled (keep_last 4),
        // its source's rule (mask) is stronger.
        o.add_row(&row(&[Some("16460"), Some("1"), Some("ssn")]), keep)
            .unwrap();
        o.add_view_row(&view_row(
            16460,
            Some("16384:4"),
            Some(&shows("ssn", (16384, 4))),
        ))
        .unwrap();
        // Renamed since (`alter view … rename column`), or named by a
        // materialized view's column list: statements use the new name.
        o.add_view_row(&view_row(
            16470,
            Some("16384:4"),
            Some(&shows("api_secret", (16384, 4))),
        ))
        .unwrap();
        o.add_view_row(&row(&[
            Some("a"),
            Some("16470"),
            Some("tag"),
            Some("1"),
            None,
        ]))
        .unwrap();
        // A chain of 100 views, each showing the next one's column; the
        // outermost has the lowest oid.
        for k in 0..100u32 {
            let v = 30000 + k;
            let from = if k == 99 { (16384, 3) } else { (v + 1, 1) };
            o.add_view_row(&view_row(
                v,
                Some(&format!("{}:{}", from.0, from.1)),
                Some(&shows("c", from)),
            ))
            .unwrap();
        }
        // A name with a carriage return is one token, as the server reads it.
        let cr = b"({QUERY :rtable <> :targetList ({TARGETENTRY :expr {VAR :varno 1 :varattno 3 \
            :varlevelsup 0} :resno 1 :resname a\r:resno\r9 :resorigtbl 16384 :resorigcol 3 \
            :resjunk false})})";
        assert_eq!(targets(cr), vec![(1, "a\r:resno\r9".to_string(), 16384, 3)]);
        o.resolve_views(&e);
        assert_eq!(o.name(16460, 1), Some(&b"api_secret"[..]));
        assert_eq!(o.name(16470, 1), Some(&b"api_secret"[..]));
        let by_view = |n: &[u8]| o.renamed(n).map(|(v, _)| v.to_vec()).collect::<Vec<_>>();
        assert_eq!(by_view(b"tag"), vec![b"v16470".to_vec()]);
        assert!(by_view(b"api_secret").is_empty());
        assert_eq!(o.name(30000, 1), Some(&b"ssn"[..]));
        assert_eq!(
            e.column_rule_by_name(o.name(30000, 1).unwrap())
                .map(|r| r.1),
            Some(ColumnAction::KeepLast(4))
        );
    }

    #[test]
    fn bad_view_rows_are_errors() {
        let mut o = ColumnOrigins::new();
        for r in [
            view_row(1, Some("16384"), None),
            view_row(1, Some("x:1"), None),
            view_row(1, Some("1:99999"), None),
            row(&[Some("1"), Some("v"), None]),
            row(&[Some("x"), Some("v"), None, None]),
            row(&[Some("1"), None, None, None]),
        ] {
            assert_eq!(o.add_view_row(&r), Err(BadCatalogRow), "{r:?}");
        }
        // (A bad tree is a view that cannot be read, not a bad row.)
        o.add_view_row(&view_row(1, Some(""), Some(b"({"))).unwrap();
        assert!(
            view_query(&[16384, 16390], 1 << 20).contains("ANY('{16384,16390}'::pg_catalog.oid[])")
        );
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
