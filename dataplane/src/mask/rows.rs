//! Masking at the message level (sans-IO): DataRow, CopyData, ErrorResponse
//! and NoticeResponse bodies.
//!
//! - [`RowPlan::describe`] reads a RowDescription body once per result set
//!   and decides per column: scan with the detectors, apply a column rule,
//!   or leave alone ([`ColumnPlan`]).
//! - [`mask_data_row`] applies the plan to one DataRow body. Same-length
//!   changes happen in place, so the frame is forwarded from the buffer it
//!   arrived in; `hash` and `null` change lengths, so the frame is rewritten
//!   into a caller-owned `Vec` (reused: no allocation once it has grown).
//! - [`mask_copy_data`] masks the fields of COPY TO output (text or CSV).
//! - [`mask_error_fields`] masks the human-readable fields of ErrorResponse
//!   and NoticeResponse (a unique violation's detail repeats the value).
//!
//! Which types are scanned: text-like types (`text`, `varchar`, `bpchar`,
//! `name`, `"char"`, `unknown`) in either format; `json`, `xml` and text
//! arrays in text format; `jsonb` in binary format after its version byte;
//! and types with an oid not listed here (citext, enums, domains: their oids
//! differ per database) in text format only. Numbers, dates, uuids, bytea
//! and other non-text types are not scanned: a rewritten digit would not
//! parse as the type.
//!
//! Column rules `mask`, `keep_last` and `hash` on any other type (numbers,
//! uuids, dates, json, arrays…) apply to the value's text form, and the
//! column is presented to the client as `text`:
//! [`RowPlan::retype_description`] rewrites its type in the RowDescription
//! in place (same length), so a hashed integer key still joins and a card
//! number stored as `int8` keeps its last four digits. Binary values are
//! printed as text first (the types `crate::audit::binval` reads; any other
//! type's binary value becomes NULL, fail safe). Rule `null` keeps the type.

use super::derived::{StatementText, Text};
use super::detect;
use super::engine::{length_prefixed, Engine, Hits, Region, RuleId};
use super::origins::ColumnOrigins;
use super::profile::ColumnAction;
use crate::protocol::{be_i32, tag};
use jiff::tz::TimeZone;
use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// A DataRow, CopyData or error body that is not well-formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("DataRow has {got} columns but its RowDescription had {want}")]
    ColumnCount { got: usize, want: usize },
}

/// What to do with one column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnPlan {
    /// Leave the value alone (binary non-text types, or nothing to do).
    Skip,
    /// Run the detectors over the value from byte `from` (1 for binary
    /// jsonb, whose first byte is a version number).
    Detect { from: u8 },
    /// Column rule `mask`: every character becomes the mask character.
    MaskAll(RuleId),
    /// Column rule `keep_last`: all but the last N characters masked.
    KeepLast(u16, RuleId),
    /// Column rule `hash`: the value becomes its keyed hash (length changes).
    Hash(RuleId),
    /// Column rule `null`.
    Null(RuleId),
    /// Column rule `mask`, `keep_last` or `hash` on a binary value of a
    /// non-text type: printed as text, then the rule's action (length
    /// changes; NULL if the type's binary form is not read here).
    Printed(RuleId),
    /// A binary value of a non-text type the client was told is `text` (by
    /// a rule since dropped): printed as text, nothing masked.
    AsText,
    /// A binary `jsonb`, `json`, `xml` or text-array value the client was
    /// told is `text` (by a rule since dropped): scanned in place as
    /// `Detect`, then printed as text (jsonb without its version byte, an
    /// array in its `{…}` form).
    DetectAsText { from: u8 },
}

impl ColumnPlan {
    /// Whether a non-NULL value makes the row a rewritten frame (its
    /// length changes, or it is printed as text).
    fn rewrites(self) -> bool {
        matches!(
            self,
            ColumnPlan::Hash(_)
                | ColumnPlan::Null(_)
                | ColumnPlan::Printed(_)
                | ColumnPlan::AsText
                | ColumnPlan::DetectAsText { .. }
        )
    }
}

/// How a type's values can be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain text: scan, and rewrite characters for column rules.
    Text,
    /// Text with syntax (json, xml, arrays): scan; column rules retype it.
    Structured,
    /// Binary jsonb: version byte, then json text.
    JsonbBinary,
    /// Not text (or binary of an unknown type): left to column rules.
    Other,
}

/// Built-in type names a column rule may use in `type:`.
const TYPES: &[(&str, u32)] = &[
    ("bool", 16),
    ("boolean", 16),
    ("bytea", 17),
    ("char", 18),
    ("name", 19),
    ("int8", 20),
    ("bigint", 20),
    ("int2", 21),
    ("smallint", 21),
    ("int4", 23),
    ("int", 23),
    ("integer", 23),
    ("text", 25),
    ("oid", 26),
    ("json", 114),
    ("xml", 142),
    ("json[]", 199),
    ("cidr", 650),
    ("float4", 700),
    ("real", 700),
    ("float8", 701),
    ("double precision", 701),
    ("unknown", 705),
    ("money", 790),
    ("macaddr", 829),
    ("inet", 869),
    ("int4[]", 1007),
    ("text[]", 1009),
    ("bpchar[]", 1014),
    ("varchar[]", 1015),
    ("bpchar", 1042),
    ("character", 1042),
    ("varchar", 1043),
    ("character varying", 1043),
    ("date", 1082),
    ("time", 1083),
    ("timestamp", 1114),
    ("timestamptz", 1184),
    ("interval", 1186),
    ("timetz", 1266),
    ("bit", 1560),
    ("varbit", 1562),
    ("numeric", 1700),
    ("decimal", 1700),
    ("uuid", 2950),
    ("jsonb", 3802),
    ("jsonb[]", 3807),
];

/// Oid of a built-in type name (case-insensitive).
pub fn type_oid(name: &str) -> Option<u32> {
    TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, o)| o)
}

/// Whether a binary value of type `oid` is its text (text, varchar, …).
pub(super) fn kind_is_text(oid: u32) -> bool {
    kind(oid, 1) == Kind::Text
}

fn kind(oid: u32, format: i16) -> Kind {
    let text = format == 0;
    match oid {
        25 | 1043 | 1042 | 19 | 18 | 705 => Kind::Text,
        114 | 142 => Kind::Structured,
        3802 if text => Kind::Structured,
        3802 => Kind::JsonbBinary,
        // Text arrays in either format: in binary, the elements are raw
        // text between length words, so scanning the whole value finds them.
        199 | 1009 | 1014 | 1015 | 3807 => Kind::Structured,
        _ if TYPES.iter().any(|&(_, o)| o == oid) => Kind::Other,
        _ if text => Kind::Text,
        // Types without a fixed oid (citext, domains over text, composites,
        // enums): in binary their text is raw bytes; scan it (fail safe).
        _ => Kind::Structured,
    }
}

/// The column rule of a result column: its stored column's, when
/// `origins` knows where it comes from (an alias renames it), else its
/// result name's; for a computed column (no table) of a text-like type
/// without either, the rule of the ruled names its statement's `text`
/// mentions (see [`super::derived`]). A text-like column of a relation
/// newer than `origins`' read takes the strongest name rule.
pub(super) fn rule_of(
    engine: &Engine,
    origins: Option<&ColumnOrigins>,
    unread: bool,
    text: Option<&Text>,
    f: &Field<'_>,
) -> Option<(RuleId, ColumnAction)> {
    // After a schema change of the session's own that no read knows yet
    // (`unread`: a statement sent in the same Query or write as a `CREATE
    // OR REPLACE VIEW`, before a read could go), any relation may show
    // anything under any name: text-like columns take the strongest name
    // rule.
    if unread && derived_applies(f.oid) {
        if let (Some(o), 1..) = (origins, f.table) {
            o.saw_relation(f.table);
        }
        let named = engine.column_rule(f.name, f.oid);
        return super::derived::stronger(named, engine.strongest_name_rule());
    }
    // A view's computed column: the strongest rule its view reads.
    let mut computed = None;
    let stored = match (origins, f.table) {
        (Some(o), 1..) if f.attnum == 0 => {
            // A whole row (`select p from people p`): the strongest rule of
            // the columns it holds.
            o.saw_relation(f.table);
            let whole = o.whole_row(engine, f.table);
            if whole.is_some() {
                return whole;
            }
            None
        }
        (Some(o), 1..) => {
            o.saw_relation(f.table);
            if derived_applies(f.oid) {
                computed = o.computed(f.table, f.attnum);
            }
            o.name(f.table, f.attnum)
        }
        _ => None,
    };
    if let Some(r) = stored.and_then(|n| engine.column_rule(n, f.oid)) {
        return Some(r);
    }
    let named = engine.column_rule(f.name, f.oid);
    // A computed column takes the stronger of its result name's rule and
    // what it is computed from: `substr(api_secret, 1, 8) AS ssn` must not
    // show four characters of a secret at a time.
    // A column of a relation newer than the read (a view created in the
    // same Query, or since the session's last read) may show anything under
    // any name: until a read knows it, its text-like columns take the
    // strongest name rule.
    let unknown = |o: &ColumnOrigins| f.table > o.newest_relation() && o.newest_relation() > 0;
    let from = match computed {
        Some(s) => s.rule(engine),
        None if origins.is_some_and(unknown) && derived_applies(f.oid) => {
            engine.strongest_name_rule()
        }
        None if f.table == 0 && derived_applies(f.oid) => {
            text.and_then(|t| t.rule(engine, origins))
        }
        None => None,
    };
    super::derived::stronger(named, from)
}

/// Whether a computed column of type `oid` takes its statement's rule: its
/// text form can carry a ruled column's characters (text, JSON, arrays,
/// enums, composites; `bytea`, whose text form is the bytes in hex).
fn derived_applies(oid: u32) -> bool {
    oid == 17 || kind(oid, 0) != Kind::Other
}

fn plan_for(
    engine: &Engine,
    oid: u32,
    format: i16,
    rule: Option<(RuleId, ColumnAction)>,
) -> ColumnPlan {
    let kind = kind(oid, format);
    match (rule, kind) {
        // (Binary `int8[]`/`numeric[]`: no text in them; their elements go
        // through `mask_number`.)
        (None, _) if format != 0 && number_container(oid) => ColumnPlan::Skip,
        (None, Kind::Text | Kind::Structured) if engine.detects() => ColumnPlan::Detect { from: 0 },
        (None, Kind::JsonbBinary) if engine.detects() => ColumnPlan::Detect { from: 1 },
        (None, _) => ColumnPlan::Skip,
        (Some((r, ColumnAction::Null)), _) => ColumnPlan::Null(r),
        // Text, or the text form of any type: the characters themselves.
        (Some((r, action)), _) if kind == Kind::Text || format == 0 => match action {
            ColumnAction::Mask => ColumnPlan::MaskAll(r),
            ColumnAction::KeepLast(n) => ColumnPlan::KeepLast(n, r),
            ColumnAction::Hash => ColumnPlan::Hash(r),
            ColumnAction::Null => ColumnPlan::Null(r),
        },
        (Some((r, _)), _) => ColumnPlan::Printed(r),
    }
}

/// Whether a column of type `oid` with `rule` is shown to the client as
/// `text`: a rule other than `null` on a type that is not plain text.
fn retyped(oid: u32, rule: Option<(RuleId, ColumnAction)>) -> bool {
    matches!(rule, Some((_, a)) if a != ColumnAction::Null) && kind(oid, 0) != Kind::Text
}

#[derive(Debug, Clone)]
struct Column {
    oid: u32,
    /// Result format code (0 text, 1 binary).
    format: i16,
    rule: Option<(RuleId, ColumnAction)>,
    plan: ColumnPlan,
    name_end: usize,
}

/// Per-result-set masking plan, built from RowDescription. Keep one per
/// session and reuse it: `describe` reuses its vectors.
#[derive(Debug, Clone, Default)]
pub struct RowPlan {
    cols: Vec<Column>,
    names: Vec<u8>,
    column_hits: Vec<u64>,
    /// Scratch for one row: the cells to scan, their columns, their hits
    /// (at most one region per column: one slot per column, never resized
    /// per row).
    regions: Vec<Region>,
    region_cols: Vec<u32>,
    region_hits: Vec<u32>,
    /// Per column: the byte of its values the detectors scan from
    /// (`Detect`'s `from`), or [`NO_SCAN`].
    scan_from: Vec<u32>,
    /// Every column is `Skip` or `Detect`: rows take [`detect_regions`],
    /// the column walk without a branch per plan.
    scan_only: bool,
    /// Scratch for one row: the cells of the number columns ([`is_number`])
    /// long enough to hold a card (column, start, end), as
    /// [`detect_regions`] finds them.
    number_cells: Vec<(u32, u32, u32)>,
    work: bool,
    rewrites: bool,
    /// Some column is shown as `text` ([`RowPlan::retype_description`]).
    retypes: bool,
    /// The session's `TimeZone` as the target reported it, and the time zone
    /// it names once a binary `timestamptz` had to be printed as text
    /// (`None` in the cell: UTC). Resolved on first use, so sessions that
    /// never need it never look it up.
    zone_name: Vec<u8>,
    zone: OnceCell<Option<TimeZone>>,
    /// Stored names of the columns name rules match, by table oid and
    /// attribute number (see [`super::origins`]): a column's rule is its
    /// stored name's, whatever the query calls it.
    origins: Option<Arc<ColumnOrigins>>,
    /// See [`RowPlan::set_unread`].
    unread: bool,
    /// The text of the statement described next, for its computed columns
    /// ([`RowPlan::set_statement`]).
    statement: StatementText,
}

impl RowPlan {
    pub fn new() -> Self {
        Self::default()
    }

    /// The session's `TimeZone` (ParameterStatus): binary `timestamptz`
    /// values a column rule turns into text print in it, as text results
    /// do, so a hashed or partly kept time reads the same in both formats.
    /// A name this host cannot resolve leaves UTC (a warning, once per
    /// process).
    pub fn set_time_zone(&mut self, name: &[u8]) {
        if self.zone_name != name {
            self.zone_name.clear();
            self.zone_name.extend_from_slice(name);
            self.zone = OnceCell::new();
        }
    }

    /// The session's time zone (`None`: UTC, also when none was reported).
    fn zone(&self) -> Option<&TimeZone> {
        self.zone
            .get_or_init(|| {
                if self.zone_name.is_empty() {
                    return None;
                }
                let z = crate::audit::binval::session_zone(&self.zone_name);
                // (Once per process: every session of a host without the
                // database would say the same.)
                static WARNED: AtomicBool = AtomicBool::new(false);
                if z.is_none() && !WARNED.swap(true, Relaxed) {
                    tracing::warn!(
                        zone = %String::from_utf8_lossy(&self.zone_name),
                        "session TimeZone not in this host's time zone database; binary timestamptz values under column rules print in UTC (logged once)"
                    );
                }
                z
            })
            .as_ref()
    }

    /// Resolve columns to the stored columns they come from with this
    /// catalog read (`None`: by result names only). Applies from the next
    /// [`RowPlan::describe`].
    pub fn set_origins(&mut self, origins: Option<Arc<ColumnOrigins>>) {
        self.origins = origins;
    }

    /// The session changed the schema since the read in use began (it is
    /// read again before the session's next statement): until then every
    /// text-like column described takes the profile's strongest name rule.
    pub fn set_unread(&mut self, unread: bool) {
        self.unread = unread;
    }

    /// See [`RowPlan::set_unread`].
    pub fn unread(&self) -> bool {
        self.unread
    }

    /// The text of the statement whose results are described next (and
    /// its backslash setting): computed text-like columns take the rule of
    /// the ruled names it mentions ([`super::derived`]). Kept for every
    /// later [`RowPlan::describe`] until set again.
    pub fn set_statement(&mut self, text: StatementText) {
        self.statement = text;
    }

    /// The catalog read columns are resolved with ([`RowPlan::set_origins`]).
    pub fn origins(&self) -> Option<&ColumnOrigins> {
        self.origins.as_deref()
    }

    /// The read itself, shared.
    pub fn origins_shared(&self) -> Option<&Arc<ColumnOrigins>> {
        self.origins.as_ref()
    }

    /// Build the plan from a RowDescription body (after tag and length).
    /// The column formats are taken from the message; see
    /// [`RowPlan::set_result_formats`] for extended-protocol statements.
    pub fn describe(&mut self, engine: &Engine, body: &[u8]) -> Result<(), RowError> {
        const E: RowError = RowError::Malformed("RowDescription");
        self.cols.clear();
        self.names.clear();
        let n = body.get(..2).ok_or(E)?;
        let n = i16::from_be_bytes([n[0], n[1]]);
        if n < 0 {
            return Err(E);
        }
        let mut rest = &body[2..];
        for _ in 0..n {
            let (name, tail) = crate::protocol::cstr(rest).ok_or(E)?;
            let f = tail.get(..18).ok_or(E)?;
            let field = Field::new(name, f);
            let oid = field.oid;
            let format = i16::from_be_bytes([f[16], f[17]]);
            rest = &tail[18..];
            self.names.extend_from_slice(name);
            let rule = if engine.enabled() {
                rule_of(
                    engine,
                    self.origins.as_deref(),
                    self.unread,
                    self.statement.as_deref(),
                    &field,
                )
            } else {
                None
            };
            let plan = if engine.enabled() {
                plan_for(engine, oid, format, rule)
            } else {
                ColumnPlan::Skip
            };
            self.cols.push(Column {
                oid,
                format,
                rule,
                plan,
                name_end: self.names.len(),
            });
        }
        if !rest.is_empty() {
            return Err(E);
        }
        self.finish();
        Ok(())
    }

    /// Re-plan for the result format codes of a Bind message (0 codes: all
    /// text; 1: all that one; else one per column). A RowDescription
    /// answering Describe of a *statement* carries zero format codes; the
    /// real formats are the Bind's.
    pub fn set_result_formats(&mut self, engine: &Engine, formats: &[i16]) -> Result<(), RowError> {
        if formats.len() > 1 && formats.len() != self.cols.len() {
            return Err(RowError::Malformed("Bind result formats"));
        }
        for (i, c) in self.cols.iter_mut().enumerate() {
            let f = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats[i],
            };
            c.format = f;
            c.plan = if engine.enabled() {
                plan_for(engine, c.oid, f, c.rule)
            } else {
                ColumnPlan::Skip
            };
        }
        self.finish();
        Ok(())
    }

    /// For rows whose column types are unknown (a statement never
    /// described, planned as `text`): a binary column under a rule that
    /// rewrites characters becomes NULL (rule `null`), since its bytes may
    /// be a number's, which asterisks would turn into another number; as
    /// a binary value of a type not read here does under a rule.
    pub fn null_ruled_binary(&mut self) {
        for c in &mut self.cols {
            if c.format == 1 {
                if let ColumnPlan::MaskAll(r) | ColumnPlan::KeepLast(_, r) | ColumnPlan::Hash(r) =
                    c.plan
                {
                    c.plan = ColumnPlan::Null(r);
                }
            }
        }
        self.finish();
    }

    /// Present the columns whose rule applies to a non-text type's text
    /// form as `text` (oid 25, no size, no modifier): rewrites `body`, the
    /// RowDescription this plan was built from, in place (same length).
    /// Returns whether anything changed.
    pub fn retype_description(&self, body: &mut [u8]) -> bool {
        self.retypes
            && retype_where(body, |i, _| {
                self.cols.get(i).is_some_and(|c| retyped(c.oid, c.rule))
            })
    }

    /// Per column: whether [`RowPlan::retype_description`] shows it as
    /// `text`. `None` when no column is.
    pub fn shown_as_text(&self) -> Option<Vec<bool>> {
        self.retypes
            .then(|| self.cols.iter().map(|c| retyped(c.oid, c.rule)).collect())
    }

    /// Keep to the types the client was told when the description reached
    /// it, under the profile of that time (`told`: the columns shown as
    /// `text` then, as [`RowPlan::shown_as_text`] gave; none if empty): a
    /// column it takes for its server type but that now has a rule on the
    /// text form gets NULL (which any type parses); one it takes for `text`
    /// whose rule is gone gets its text form (binary values printed), not
    /// bytes of another type. For a statement prepared before a profile
    /// change and run after it.
    pub fn keep_to_told_types(&mut self, told: &[bool]) {
        if !self.retypes && !told.contains(&true) {
            return;
        }
        for (i, c) in self.cols.iter_mut().enumerate() {
            let was_text = told.get(i).copied().unwrap_or(false);
            match (was_text, retyped(c.oid, c.rule), c.plan) {
                (false, true, _) => {
                    if let Some((r, _)) = c.rule {
                        c.plan = ColumnPlan::Null(r);
                    }
                }
                (true, false, ColumnPlan::Skip) if c.format != 0 => {
                    c.plan = ColumnPlan::AsText;
                }
                (true, false, ColumnPlan::Detect { from }) if c.format != 0 => {
                    c.plan = ColumnPlan::DetectAsText { from };
                }
                _ => {}
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        self.work = self
            .cols
            .iter()
            .any(|c| c.plan != ColumnPlan::Skip || is_number(c));
        self.rewrites = self.cols.iter().any(|c| c.plan.rewrites());
        self.retypes = self.cols.iter().any(|c| retyped(c.oid, c.rule));
        self.column_hits.clear();
        self.column_hits.resize(self.cols.len(), 0);
        let n = self.cols.len();
        self.regions.clear();
        self.regions.resize(n, Region { start: 0, end: 0 });
        self.region_cols.clear();
        self.region_cols.resize(n, 0);
        self.region_hits.clear();
        self.region_hits.resize(n, 0);
        self.scan_from.clear();
        self.scan_from
            .extend(self.cols.iter().map(|c| match c.plan {
                ColumnPlan::Detect { from } => u32::from(from),
                _ if is_number(c) && c.format == 0 => NUMBER_TEXT,
                _ if is_number(c) => NUMBER_BINARY,
                _ => NO_SCAN,
            }));
        self.scan_only = self
            .cols
            .iter()
            .all(|c| matches!(c.plan, ColumnPlan::Skip | ColumnPlan::Detect { .. }));
    }

    /// Forget the current result set.
    pub fn clear(&mut self) {
        self.cols.clear();
        self.names.clear();
        self.finish();
    }

    /// The plan of each column.
    pub fn columns(&self) -> impl Iterator<Item = ColumnPlan> + '_ {
        self.cols.iter().map(|c| c.plan)
    }

    pub fn len(&self) -> usize {
        self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// True when no column needs any work (DataRows pass untouched).
    pub fn is_noop(&self) -> bool {
        !self.work
    }

    /// True when some column's rule changes value lengths.
    pub fn may_rewrite(&self) -> bool {
        self.rewrites
    }

    /// Column `i`'s name as sent by the server.
    pub fn column_name(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.cols[i - 1].name_end };
        &self.names[start..self.cols[i].name_end]
    }

    /// Values masked per column since the plan was built (or last taken).
    pub fn column_hits(&self) -> &[u64] {
        &self.column_hits
    }

    /// Hand each column with hits to `f(index, name, count)` and reset them
    /// (for the audit record at CommandComplete).
    pub fn take_column_hits(&mut self, mut f: impl FnMut(usize, &[u8], u64)) {
        for i in 0..self.cols.len() {
            let c = self.column_hits[i];
            if c > 0 {
                f(i, self.column_name(i), c);
                self.column_hits[i] = 0;
            }
        }
    }
}

/// [`RowPlan::retype_description`] for a description no plan is built from
/// yet (a statement Describe, whose rows come after a Bind): rules are
/// matched only against the columns whose type is not text. Returns which
/// columns are shown as `text` (`None`: none, or a malformed body, which
/// is left as it is).
pub fn retype_statement_description(
    engine: &Engine,
    origins: Option<&ColumnOrigins>,
    unread: bool,
    statement: Option<&Text>,
    body: &mut [u8],
) -> Option<Vec<bool>> {
    if !engine.enabled() {
        return None;
    }
    let n = body
        .get(..2)
        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
    let mut told: Option<Vec<bool>> = None;
    retype_where(body, |i, f| {
        let text = kind(f.oid, 0) != Kind::Text
            && retyped(f.oid, rule_of(engine, origins, unread, statement, &f));
        if text {
            told.get_or_insert_with(|| vec![false; n])[i] = true;
        }
        text
    });
    told
}

/// A RowDescription field: its name, table oid, attribute number, type oid.
pub(super) struct Field<'a> {
    name: &'a [u8],
    pub(super) table: u32,
    pub(super) attnum: i16,
    pub(super) oid: u32,
}

impl<'a> Field<'a> {
    /// From the field's name and the (at least 10) bytes after its NUL.
    pub(super) fn new(name: &'a [u8], f: &[u8]) -> Self {
        Field {
            name,
            table: crate::protocol::be_u32(f),
            attnum: i16::from_be_bytes([f[4], f[5]]),
            oid: crate::protocol::be_u32(&f[6..]),
        }
    }
}

/// Set the type of the fields of RowDescription `body` for which
/// `as_text(index, field)` holds to `text` (oid 25, no size, no modifier),
/// in place. Whether any was; a malformed body is left as it is.
fn retype_where(body: &mut [u8], mut as_text: impl FnMut(usize, Field<'_>) -> bool) -> bool {
    // The offset of each field's 18 bytes after its name, all checked
    // before anything is written.
    let field_at = |at: usize, body: &[u8]| {
        crate::protocol::cstr(body.get(at..)?)
            .filter(|(_, tail)| tail.len() >= 18)
            .map(|(name, _)| at + name.len() + 1)
    };
    let Some(n) = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
        return false;
    };
    let mut at = 2;
    for _ in 0..n.max(0) {
        match field_at(at, body) {
            Some(f) => at = f + 18,
            None => return false,
        }
    }
    if at != body.len() {
        return false;
    }
    let mut changed = false;
    let mut at = 2;
    for i in 0..n.max(0) as usize {
        let Some(f) = field_at(at, body) else {
            break; // (Checked above.)
        };
        if as_text(i, Field::new(&body[at..f - 1], &body[f..f + 10])) {
            body[f + 6..f + 10].copy_from_slice(&25u32.to_be_bytes());
            body[f + 10..f + 12].copy_from_slice(&(-1i16).to_be_bytes());
            body[f + 12..f + 16].copy_from_slice(&(-1i32).to_be_bytes());
            changed = true;
        }
        at = f + 18;
    }
    changed
}

/// What [`mask_data_row`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOutcome {
    /// Nothing masked; forward the frame as it is.
    Unchanged,
    /// Masked in place; forward the (same-length) frame from its buffer.
    MaskedInPlace,
    /// A length changed: forward `out` (a whole frame, tag and length
    /// included) instead of the original frame.
    Rewritten,
}

/// [`RowPlan`]'s `scan_from` for a column that is not scanned.
const NO_SCAN: u32 = u32::MAX;

/// [`RowPlan`]'s `scan_from` for a column [`mask_number`] looks at (not
/// scanned as text either), in text and in binary form.
const NUMBER_TEXT: u32 = u32::MAX - 1;
const NUMBER_BINARY: u32 = u32::MAX - 2;

/// The column walk of [`mask_data_row`] for a plan whose columns are all
/// `Skip` or `Detect` (`scan_from`: one entry per column, as many as the
/// row has): the cells to scan go to `regions` and their columns to
/// `cols` (both at least as long as `scan_from`); returns how many.
/// Without a branch per column on its plan or on NULL: each slot is
/// written, and kept when the value has bytes from `from` on (a NULL has
/// none, a skipped column's `from` is past any value), so the loop waits
/// only for each length word.
fn detect_regions(
    scan_from: &[u32],
    body: &[u8],
    regions: &mut [Region],
    cols: &mut [u32],
    json: &mut bool,
    numbers: &mut Vec<(u32, u32, u32)>,
) -> Result<usize, RowError> {
    const E: RowError = RowError::Malformed("DataRow");
    let mut at = 2;
    let mut k = 0;
    *json = false;
    for (i, &from) in scan_from.iter().enumerate() {
        let len = be_i32(body.get(at..at + 4).ok_or(E)?);
        at += 4;
        let len = len.max(0) as usize;
        let end = at.checked_add(len).filter(|&e| e <= body.len()).ok_or(E)?;
        // (A number long enough for a card: see `mask_number`.)
        if (from == NUMBER_TEXT && len >= 13) || (from == NUMBER_BINARY && len >= 8) {
            numbers.push((i as u32, at as u32, end as u32));
        }
        let from = (from as usize).min(len);
        *regions.get_mut(k).ok_or(E)? = Region {
            start: (at + from) as u32,
            end: end as u32,
        };
        *cols.get_mut(k).ok_or(E)? = i as u32;
        // (Whether some region may be a JSON document.)
        *json |= from < len && super::json::may_start(&body[at + from..end]);
        k += usize::from(from < len);
        at = end;
    }
    if at != body.len() {
        return Err(E);
    }
    Ok(k)
}

/// Whether column `c` is an `int8` or `numeric` one that no rule names
/// and the detectors do not scan as text ([`number_cell`] looks at it).
fn is_number(c: &Column) -> bool {
    // (`AsText`: a statement described under a rule, whose client was told
    // `text`, printed after the rule is gone: masked before printing.)
    (matches!(c.oid, 20 | 1700) || (c.format != 0 && number_container(c.oid)))
        && c.rule.is_none()
        && matches!(c.plan, ColumnPlan::Skip | ColumnPlan::AsText)
}

/// Oids of `int8[]` and `numeric[]`.
const INT8_ARRAY: u32 = 1016;
const NUMERIC_ARRAY: u32 = 1231;
/// Oids of `int8range`, `numrange` and their multiranges.
const INT8_RANGE: u32 = 3926;
const NUM_RANGE: u32 = 3906;
const INT8_MULTIRANGE: u32 = 4536;
const NUM_MULTIRANGE: u32 = 4532;

/// Whether a binary value of type `oid` holds `int8`/`numeric` values and
/// no text: arrays, ranges and multiranges of them ([`mask_number`] walks
/// them).
pub(super) fn number_container(oid: u32) -> bool {
    matches!(
        oid,
        INT8_ARRAY | NUMERIC_ARRAY | INT8_RANGE | NUM_RANGE | INT8_MULTIRANGE | NUM_MULTIRANGE
    )
}

/// [`mask_number`] over the cells [`detect_regions`] found for the number
/// columns (the other plans' walk, `walk_columns`, calls [`number_cell`]
/// itself). Whether one changed.
#[inline(never)]
fn mask_number_cells(
    engine: &Engine,
    plan: &mut RowPlan,
    body: &mut [u8],
    hits: &mut Hits,
) -> bool {
    let mut changed = false;
    for k in 0..plan.number_cells.len() {
        let (c, s, e) = plan.number_cells[k];
        changed |= number_cell(
            engine,
            plan,
            c as usize,
            &mut body[s as usize..e as usize],
            hits,
        );
    }
    changed
}

/// One cell of number column `col` through [`mask_number`], its hits
/// counted on the column.
fn number_cell(
    engine: &Engine,
    plan: &mut RowPlan,
    col: usize,
    cell: &mut [u8],
    hits: &mut Hits,
) -> bool {
    let c = &plan.cols[col];
    // (Too short for 13 digits: most amounts and ids.)
    if cell.len() < if c.format == 0 { 13 } else { 8 } {
        return false;
    }
    let logged = hits.log_len();
    let n = mask_number(engine, c.oid, c.format, cell, hits);
    if n == 0 {
        return false;
    }
    for h in hits.logged_since(logged) {
        h.at = col as u32;
    }
    plan.column_hits[col] += u64::from(n);
    true
}

/// Whether the ASCII digits `d` pass the Luhn check.
fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let v = u32::from(b - b'0');
            match (i % 2 == 1, v * 2) {
                (true, x) if x > 9 => x - 9,
                (true, x) => x,
                (false, _) => v,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A card number stored or cast as a number (`int8`, `numeric`: `select
/// pan::bigint`, a legacy `numeric(16)` column), in text or binary form:
/// the digits of its integer part, when there are 13 to 16 of them, go
/// through the detectors, and those they mask become `0`, so the value
/// stays a number of its type (`4111111111111111` → `1111` with the
/// default format) in place. Longer integers (random 64-bit ids, 18–19
/// digits) and shorter ones are left alone. Returns the hits.
pub(super) fn mask_number(
    engine: &Engine,
    oid: u32,
    format: i16,
    cell: &mut [u8],
    hits: &mut Hits,
) -> u32 {
    const MIN: usize = 13;
    const MAX: usize = 16;
    // The integer part's digits, without sign or leading zeros.
    let mut digits = [0u8; MAX];
    // Zeroes the digits the detectors mask; how many hits.
    let scan = |d: &mut [u8], hits: &mut Hits| -> u32 {
        // (Only a card can be a bare run of digits among the built-in
        // detectors, and every card passes Luhn: the others, a tenth of
        // random numbers and most epoch times, skip the scan.)
        if !engine.has_custom() && !luhn(d) {
            return 0;
        }
        let orig: [u8; MAX] = {
            let mut o = [0u8; MAX];
            o[..d.len()].copy_from_slice(d);
            o
        };
        let n = engine.mask_counted(d, hits);
        for (b, &o) in d.iter_mut().zip(&orig) {
            if *b != o {
                *b = b'0';
            }
        }
        n
    };
    match (oid, format) {
        (20 | 1700, 0) => {
            let sign = usize::from(matches!(cell.first(), Some(b'-' | b'+')));
            let int_end = cell[sign..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(cell.len(), |k| sign + k);
            if !matches!(cell.get(int_end), None | Some(b'.')) {
                return 0; // NaN, Infinity, exponents
            }
            let first = cell[sign..int_end]
                .iter()
                .position(|&b| b != b'0')
                .map_or(int_end, |k| sign + k);
            let d = &mut cell[first..int_end];
            if !(MIN..=MAX).contains(&d.len()) {
                return 0;
            }
            scan(d, hits)
        }
        (20, 1) if cell.len() == 8 => {
            let v = i64::from_be_bytes(cell[..8].try_into().unwrap());
            let mut a = v.unsigned_abs();
            if !(10u64.pow(MIN as u32 - 1)..10u64.pow(MAX as u32)).contains(&a) {
                return 0;
            }
            let n = a.ilog10() as usize + 1;
            for k in (0..n).rev() {
                digits[k] = b'0' + (a % 10) as u8;
                a /= 10;
            }
            let hit = scan(&mut digits[..n], hits);
            if hit > 0 {
                let m = digits[..n]
                    .iter()
                    .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
                let m = if v < 0 { -(m as i64) } else { m as i64 };
                cell.copy_from_slice(&m.to_be_bytes());
            }
            hit
        }
        // ndigits, weight, sign, dscale, then base-10000 digits: four
        // groups before the point (weight 3) hold 13 to 16 digits.
        (1700, 1) if cell.len() >= 8 => {
            let word = |i: usize| u16::from_be_bytes([cell[i], cell[i + 1]]);
            let (ndigits, weight, sign) = (word(0) as usize, word(2) as i16, word(4));
            if weight != 3 || sign > 0x4000 || cell.len() != 8 + 2 * ndigits {
                return 0;
            }
            let group = |k: usize| if k < ndigits { word(8 + 2 * k) } else { 0 };
            if (0..4).any(|k| group(k) > 9999) || group(0) == 0 {
                return 0;
            }
            let mut all = [0u8; MAX];
            for k in 0..4 {
                let g = group(k);
                for (j, p) in [1000, 100, 10, 1].iter().enumerate() {
                    all[4 * k + j] = b'0' + (g / p % 10) as u8;
                }
            }
            let lead = all.iter().position(|&b| b != b'0').unwrap_or(MAX);
            let hit = scan(&mut all[lead..], hits);
            if hit > 0 {
                for k in 0..4.min(ndigits) {
                    let g = all[4 * k..4 * k + 4]
                        .iter()
                        .fold(0u16, |acc, &b| acc * 10 + u16::from(b - b'0'));
                    cell[8 + 2 * k..10 + 2 * k].copy_from_slice(&g.to_be_bytes());
                }
            }
            hit
        }
        // A binary array: dimensions, flags, element oid, a (length, lower
        // bound) pair per dimension, then each element's length and bytes.
        (INT8_ARRAY | NUMERIC_ARRAY, 1) => {
            let word = |i: usize| cell.get(i..i + 4).map(be_i32);
            let (Some(ndim), Some(elem)) = (word(0), word(8)) else {
                return 0;
            };
            let elem = elem as u32;
            if !(0..=6).contains(&ndim) || !matches!(elem, 20 | 1700) {
                return 0;
            }
            let mut at = 12 + 8 * ndim as usize;
            let mut n = 0;
            while let Some((bytes, next)) = length_prefixed(cell, at) {
                if let Some(r) = bytes {
                    n += mask_number(engine, elem, 1, &mut cell[r], hits);
                }
                at = next;
            }
            n
        }
        // A binary range: a flags byte, then each finite bound's length and
        // bytes (none when empty).
        (INT8_RANGE | NUM_RANGE, 1) => {
            let elem = if oid == INT8_RANGE { 20 } else { 1700 };
            let Some(&flags) = cell.first() else {
                return 0;
            };
            const EMPTY: u8 = 0x01;
            const LB_INF: u8 = 0x08;
            const UB_INF: u8 = 0x10;
            if flags & EMPTY != 0 {
                return 0;
            }
            let mut at = 1;
            let mut n = 0;
            for inf in [LB_INF, UB_INF] {
                if flags & inf != 0 {
                    continue;
                }
                let Some((Some(r), next)) = length_prefixed(cell, at) else {
                    break;
                };
                n += mask_number(engine, elem, 1, &mut cell[r], hits);
                at = next;
            }
            n
        }
        // A binary multirange: a count, then each range's length and bytes.
        (INT8_MULTIRANGE | NUM_MULTIRANGE, 1) => {
            let range = if oid == INT8_MULTIRANGE {
                INT8_RANGE
            } else {
                NUM_RANGE
            };
            let mut at = 4;
            let mut n = 0;
            while let Some((Some(r), next)) = length_prefixed(cell, at) {
                n += mask_number(engine, range, 1, &mut cell[r], hits);
                at = next;
            }
            n
        }
        _ => 0,
    }
}

/// Mask every character of `v` (UTF-8 continuation bytes included, so the
/// result stays valid UTF-8), except the last `keep` characters; returns
/// whether any byte was masked (none when `v` has `keep` characters or
/// fewer).
pub(super) fn mask_chars(v: &mut [u8], keep: usize, ch: u8) -> bool {
    let Some(cut) = masked_part(v, keep) else {
        return false;
    };
    v[..cut].fill(ch);
    cut > 0
}

/// The bytes [`mask_chars`] masks: `v[..cut]`, all but the last `keep`
/// characters; None when `v` has fewer than `keep`. A character is a
/// whole UTF-8 sequence, else one byte: a byte `0x80..=0xBF` that ends no
/// sequence is a character of its own (LATIN1 `°±²³´`, whose five bytes
/// had counted as no character at all, and were kept in clear).
pub(super) fn masked_part(v: &[u8], keep: usize) -> Option<usize> {
    let mut cut = v.len();
    let mut kept = 0;
    while kept < keep && cut > 0 {
        cut -= utf8_char_before(v, cut);
        kept += 1;
    }
    (kept == keep).then_some(cut)
}

/// The length of the character that ends at `end` (`end > 0`): the UTF-8
/// sequence whose lead byte is at most three bytes back and whose length
/// reaches exactly `end`, else 1.
fn utf8_char_before(v: &[u8], end: usize) -> usize {
    if v[end - 1] & 0xC0 != 0x80 {
        return 1;
    }
    for n in 2..=4.min(end) {
        let lead = v[end - n];
        if lead & 0xC0 == 0x80 {
            continue;
        }
        let len = match lead {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 0,
        };
        return if len == n { n } else { 1 };
    }
    1
}

/// What the column walk of [`mask_data_row`] found: how many cells to scan
/// (in the plan's `regions` and `region_cols`), whether a column rule
/// changed a value in place, and whether the row is to be rewritten.
struct Walk {
    regions: usize,
    changed: bool,
    rewrite: bool,
}

/// The column walk of [`mask_data_row`] for any plan: column rules that
/// keep the length are applied in place; the cells to scan are listed.
fn walk_columns(
    engine: &Engine,
    plan: &mut RowPlan,
    body: &mut [u8],
    hits: &mut Hits,
) -> Result<Walk, RowError> {
    const E: RowError = RowError::Malformed("DataRow");
    let ch = engine.mask_char();
    let mut at = 2;
    let mut walk = Walk {
        regions: 0,
        changed: false,
        rewrite: false,
    };
    for i in 0..plan.cols.len() {
        let len = be_i32(body.get(at..at + 4).ok_or(E)?);
        at += 4;
        if len < 0 {
            continue;
        }
        let end = at
            .checked_add(len as usize)
            .filter(|&e| e <= body.len())
            .ok_or(E)?;
        let v = &mut body[at..end];
        at = end;
        let p = plan.cols[i].plan;
        // (A non-NULL value of a column whose plan changes its length.)
        walk.rewrite |= p.rewrites();
        let hit = match p {
            // (A card kept as a number: `number_cell` counts its hits.)
            ColumnPlan::Skip | ColumnPlan::AsText => {
                if is_number(&plan.cols[i]) && engine.detects() {
                    walk.changed |= number_cell(engine, plan, i, v, hits);
                }
                0
            }
            ColumnPlan::Detect { from } | ColumnPlan::DetectAsText { from } => {
                // Scanned after the walk, all cells of the row in one pass.
                let from = (from as usize).min(v.len());
                if from < v.len() {
                    plan.regions[walk.regions] = Region {
                        start: (end - v.len() + from) as u32,
                        end: end as u32,
                    };
                    plan.region_cols[walk.regions] = i as u32;
                    walk.regions += 1;
                }
                0
            }
            ColumnPlan::MaskAll(r) => {
                mask_chars(v, 0, ch);
                hits.add_at(r, i as u32, 1);
                1
            }
            ColumnPlan::KeepLast(k, r) => {
                mask_chars(v, k as usize, ch);
                hits.add_at(r, i as u32, 1);
                1
            }
            ColumnPlan::Hash(r) | ColumnPlan::Null(r) | ColumnPlan::Printed(r) => {
                hits.add_at(r, i as u32, 1);
                1
            }
        };
        if hit > 0 {
            plan.column_hits[i] += hit;
            walk.changed = true;
        }
    }
    if at != body.len() {
        return Err(E);
    }
    Ok(walk)
}

/// Apply `plan` to one DataRow body (after tag and length).
///
/// Same-length work is done in `body` in place. When a `hash` or `null`
/// rule hits a non-NULL value, the whole frame (tag, length, body) is
/// written to `out` (cleared first) and `Rewritten` is returned. Hits are
/// counted per rule in `hits` and per column in the plan.
pub fn mask_data_row(
    engine: &Engine,
    plan: &mut RowPlan,
    body: &mut [u8],
    hits: &mut Hits,
    out: &mut Vec<u8>,
) -> Result<RowOutcome, RowError> {
    const E: RowError = RowError::Malformed("DataRow");
    if plan.is_noop() {
        return Ok(RowOutcome::Unchanged);
    }
    let n = body.get(..2).ok_or(E)?;
    let n = i16::from_be_bytes([n[0], n[1]]) as usize;
    if n != plan.cols.len() {
        return Err(RowError::ColumnCount {
            got: n,
            want: plan.cols.len(),
        });
    }
    if plan.regions.len() < n || plan.region_cols.len() < n || plan.region_hits.len() < n {
        // (A plan left half-built by a RowDescription that failed.)
        plan.regions.resize(n, Region { start: 0, end: 0 });
        plan.region_cols.resize(n, 0);
        plan.region_hits.resize(n, 0);
    }
    let mut numbers_changed = false;
    // (Whether a region may hold a JSON document: known exactly on the
    // common path; the other path lets `mask_regions` look at each.)
    let mut json = true;
    let walk = if plan.scan_only && plan.scan_from.len() == n {
        plan.number_cells.clear();
        let regions = detect_regions(
            &plan.scan_from,
            body,
            &mut plan.regions,
            &mut plan.region_cols,
            &mut json,
            &mut plan.number_cells,
        )?;
        if !plan.number_cells.is_empty() && engine.detects() {
            numbers_changed = mask_number_cells(engine, plan, body, hits);
        }
        Walk {
            regions,
            changed: false,
            rewrite: false,
        }
    } else {
        walk_columns(engine, plan, body, hits)?
    };
    let (k, mut changed, rewrite) = (walk.regions, walk.changed || numbers_changed, walk.rewrite);
    if k > 0 {
        let region_hits = &mut plan.region_hits[..k];
        region_hits.fill(0);
        let logged = hits.log_len();
        if engine.mask_regions(body, &plan.regions[..k], region_hits, hits, json) > 0 {
            changed = true;
            let cols = &plan.region_cols[..k];
            // Logged hits name their region; make that the column.
            for h in hits.logged_since(logged) {
                if let Some(&c) = cols.get(h.at as usize) {
                    h.at = c;
                }
            }
            for (&c, &hit) in cols.iter().zip(&plan.region_hits[..k]) {
                plan.column_hits[c as usize] += hit as u64;
            }
        }
    }
    if !rewrite {
        return Ok(if changed {
            RowOutcome::MaskedInPlace
        } else {
            RowOutcome::Unchanged
        });
    }
    out.clear();
    out.push(tag::DATA_ROW);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body[..2]);
    let mut at = 2;
    for c in &plan.cols {
        let len = be_i32(&body[at..at + 4]);
        at += 4;
        let v = if len < 0 {
            None
        } else {
            let v = &body[at..at + len as usize];
            at += len as usize;
            Some(v)
        };
        match (c.plan, v) {
            (ColumnPlan::Hash(_), Some(v)) => {
                out.extend_from_slice(&(Engine::HASH_LEN as i32).to_be_bytes());
                engine.hash_into(v, out);
            }
            (ColumnPlan::Printed(_), Some(v)) => {
                printed(engine, c.oid, plan.zone(), c.rule.map(|r| r.1), v, out)
            }
            (ColumnPlan::AsText | ColumnPlan::DetectAsText { .. }, Some(v)) => {
                printed(engine, c.oid, plan.zone(), None, v, out)
            }
            (ColumnPlan::Null(_), _) | (_, None) => out.extend_from_slice(&(-1i32).to_be_bytes()),
            (_, Some(v)) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(RowOutcome::Rewritten)
}

/// Longest text form of a binary value [`printed`] writes (a `numeric`
/// can print to thousands of digits); longer ones become NULL.
const PRINTED_MAX: usize = 1 << 16;

/// A binary value of type `oid` as text (a `timestamptz` in `zone`, the
/// session's) with a column rule's `action` (if any) applied, written to
/// `out` as a DataRow cell (length word and bytes); NULL when the type's
/// binary form is not read here.
fn printed(
    engine: &Engine,
    oid: u32,
    zone: Option<&TimeZone>,
    action: Option<ColumnAction>,
    v: &[u8],
    out: &mut Vec<u8>,
) {
    let Some(text) = crate::audit::binval::binary_text_in(oid, v, false, PRINTED_MAX, zone)
        .filter(|t| t.len() <= PRINTED_MAX)
    else {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return;
    };
    let mut text = text.into_bytes();
    let keep = match action {
        Some(ColumnAction::Hash) => {
            out.extend_from_slice(&(Engine::HASH_LEN as i32).to_be_bytes());
            engine.hash_into(&text, out);
            return;
        }
        Some(ColumnAction::Null) => {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return;
        }
        Some(ColumnAction::Mask) => Some(0),
        Some(ColumnAction::KeepLast(n)) => Some(n as usize),
        None => None,
    };
    if let Some(keep) = keep {
        mask_chars(&mut text, keep, engine.mask_char());
    }
    out.extend_from_slice(&(text.len() as i32).to_be_bytes());
    out.extend_from_slice(&text);
}

/// COPY TO output format (from the COPY statement; CopyOutResponse only says
/// text or binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// `FORMAT text`: fields split by `delimiter` (default tab), backslash
    /// escapes.
    Text { delimiter: u8 },
    /// `FORMAT csv`: fields split by `delimiter` (default `,`), optionally
    /// quoted with `quote` (default `"`), in which `escape` (default: the
    /// quote, so doubled) comes before a quote or escape character.
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
    },
}

impl CopyFormat {
    pub const TEXT: CopyFormat = CopyFormat::Text { delimiter: b'\t' };
    pub const CSV: CopyFormat = CopyFormat::Csv {
        delimiter: b',',
        quote: b'"',
        escape: b'"',
    };
}

/// Mask the fields of one CopyData payload of COPY TO output, in place.
/// Returns the number of hits.
///
/// PostgreSQL sends one row per CopyData message, so every payload starts at
/// a row boundary and a value is never split across two messages (a CSV
/// value with newlines stays in one message too). This function relies on
/// that: a quoted CSV field still open at the end of the payload is masked
/// as far as it goes and the next payload is read as starting a new row.
/// Detectors only: a COPY under column rules goes through
/// [`super::copyout::mask_copy_row`].
pub fn mask_copy_data(
    engine: &Engine,
    format: CopyFormat,
    payload: &mut [u8],
    hits: &mut Hits,
) -> u32 {
    if !engine.detects() {
        return 0;
    }
    let mut n = 0;
    // (Only a quoted CSV value with quotes inside uses it.)
    let mut scratch = Vec::new();
    super::copyout::for_each_field(format, payload, |p, s| {
        n += super::copyout::scan_field(engine, format, p, &s, &mut scratch, hits);
    });
    n
}

/// Scan the column names of a RowDescription body with the detectors, in
/// place (same length): a name can be made from data (`create view v as
/// select 1 as <value>` in dynamic SQL). Called after the plans and rules
/// have read the names as the server sent them. Returns the hits.
pub fn mask_description_names(engine: &Engine, body: &mut [u8], hits: &mut Hits) -> u32 {
    if !engine.detects() {
        return 0;
    }
    let Some(n) = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
        return 0;
    };
    let mut found = 0;
    let mut at = 2;
    for _ in 0..n.max(0) {
        let Some(len) = body.get(at..).and_then(|b| memchr::memchr(0, b)) else {
            return found;
        };
        found += engine.mask_counted(&mut body[at..at + len], hits);
        at += len + 1 + 18;
    }
    found
}

/// Fields of ErrorResponse/NoticeResponse that carry free text and so may
/// quote values: message, detail, hint, context, internal query; and the
/// names of a schema, table, column, data type and constraint, which
/// `RAISE … USING` sets to any text (`column = v`).
const TEXT_FIELDS: &[u8] = b"MDHWqstcdn";

/// Mask the free-text fields of an ErrorResponse or NoticeResponse body in
/// place (same length). A detail of the form `Key (col, …)=(value, …) …`
/// (unique and foreign-key violations) whose columns have a column rule has
/// the whole value list masked. Returns the number of hits.
pub fn mask_error_fields(
    engine: &Engine,
    body: &mut [u8],
    hits: &mut Hits,
) -> Result<u32, RowError> {
    const E: RowError = RowError::Malformed("ErrorResponse");
    if !engine.enabled() {
        return Ok(0);
    }
    let mut n = 0;
    let mut at = 0;
    loop {
        let code = *body.get(at).ok_or(E)?;
        if code == 0 {
            break;
        }
        let s = at + 1;
        let e = s + memchr::memchr(0, &body[s..]).ok_or(E)?;
        if TEXT_FIELDS.contains(&code) {
            let field = &mut body[s..e];
            if code == b'D' {
                n += key_values(engine, field, hits);
            }
            n += engine.mask_counted(field, hits);
            n += engine.mask_words(field, hits);
        }
        at = e + 1;
    }
    Ok(n)
}

/// What an ErrorResponse or NoticeResponse can quote beyond what the
/// detectors find, masked whole in place (same length):
/// - a constraint violation's `Failing row contains (…)` detail, which
///   lists every column of the row, ruled ones too, whatever the statement
///   named (`update creds set note = null`), when the profile has name
///   rules;
/// - when the statement names a ruled column (`rule`: its rule, as its
///   computed columns take): the message text `RAISE` or `ASSERT` made
///   (its context says so: the message, detail and hint are the
///   function's own text, `raise notice 'v=%', secret`), or else what lies
///   between the first and the last double quote of the message, detail
///   and context (`invalid input syntax for type integer: "…"` of
///   `api_secret::int`), and a dynamic statement's internal query. For
///   `RAISE`, a ruled name anywhere in the statement's text (`sql`) counts
///   too: the body of a `DO` block is a string.
///
/// Returns the number of fields changed (each counted under its rule).
pub fn mask_error_values(
    engine: &Engine,
    body: &mut [u8],
    rule: Option<(RuleId, ColumnAction)>,
    sql: Option<&[u8]>,
    hits: &mut Hits,
) -> u32 {
    let Some(strongest) = engine.strongest_name_rule() else {
        return 0;
    };
    if !engine.enabled() {
        return 0;
    }
    let ch = engine.mask_char();
    // The fields, as (code, start, end); none if the body does not parse.
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        let Some(&code) = body.get(at) else {
            return 0;
        };
        if code == 0 {
            break;
        }
        let Some(len) = memchr::memchr(0, &body[at + 1..]) else {
            return 0;
        };
        fields.push((code, at + 1, at + 1 + len));
        at += len + 2;
    }
    // (`RAISE` and `ASSERT` print the function's own text.)
    let raise = fields.iter().any(|&(c, s, e)| {
        c == b'W'
            && (memchr::memmem::find(&body[s..e], b"at RAISE").is_some()
                || memchr::memmem::find(&body[s..e], b"at ASSERT").is_some())
    });
    let rule = match (rule, sql) {
        (None, Some(sql)) if raise => words_rule(engine, sql),
        (r, _) => r,
    };
    // (libxml's messages quote the input line, unquoted.)
    let xml = fields
        .iter()
        .any(|&(c, s, e)| c == b'C' && matches!(&body[s..e], b"2200M" | b"2200N"));
    // (An operator name read from a value, not `text = integer`.)
    let reg_operator = fields
        .iter()
        .any(|&(c, s, e)| c == b'R' && matches!(&body[s..e], b"regoperin" | b"regoperatorin"));
    // (SQL run from text, `query_to_xml`'s or EXECUTE's, names what it read
    // without quotes: `function <value>() does not exist`.)
    let internal = fields.iter().any(|&(c, _, _)| c == b'q');
    // Every byte of `v` the mask character; whether one changed (a value
    // masked already is not counted again).
    let whole = |v: &mut [u8]| {
        let changed = v.iter().any(|&b| b != ch);
        v.fill(ch);
        changed
    };
    let mut n = 0;
    for &(code, s, e) in &fields {
        let f = &mut body[s..e];
        // (Also a partition's `Partition key of the failing row contains
        // (…) = (…)`.)
        if code == b'D' {
            if let Some(k) = memchr::memmem::find(f, b"ailing row contains (") {
                let inner = k + b"ailing row contains (".len();
                let close = f.iter().rposition(|&b| b == b')').unwrap_or(f.len());
                if close > inner && whole(&mut f[inner..close]) {
                    hits.add(strongest.0, 1);
                    n += 1;
                }
                continue;
            }
        }
        let Some((r, _)) = rule else {
            continue;
        };
        let changed = match code {
            b'M' | b'D' | b'H' if raise || internal => whole(f),
            // The internal query of a dynamic statement (its literals).
            b'q' => whole(f),
            // From the first double quote to the last: a value may hold
            // quotes itself (`"x"y"`); and where messages put it unquoted.
            b'M' | b'D' | b'W' => {
                let quoted = match (memchr::memchr(b'"', f), memchr::memrchr(b'"', f)) {
                    (Some(a), Some(b)) if b > a + 1 => Some((a + 1, b)),
                    _ => None,
                };
                let mut spans = Vec::new();
                unquoted_values(code, f, xml, reg_operator, &mut spans);
                let mut changed = false;
                for (a, b) in quoted.into_iter().chain(spans) {
                    changed |= whole(&mut f[a..b]);
                }
                changed
            }
            _ => false,
        };
        if changed {
            hits.add(r, 1);
            n += 1;
        }
    }
    n
}

/// Where PostgreSQL's messages echo an input value without double quotes
/// (the statement's value, when it names a ruled column): the rest of a
/// `JSON data, line N: …` context line; the whole detail of an XML
/// parse error (`xml`: SQLSTATE 2200M/2200N; libxml prints the input
/// line); a `Key (…)=(…)` detail's values (of columns no rule names:
/// `insert into t(name) select password …`); PL/pgSQL's
/// `print_strict_params` detail (`parameters: t = '…'`); and messages that
/// end with a name parsed from the value (`operator does not exist: …` of
/// `regoperin`, `reg_operator`, not of `text = integer`; `improper
/// qualified name (too many dotted names): …`). Spans of `f` pushed to
/// `out`.
fn unquoted_values(
    code: u8,
    f: &[u8],
    xml: bool,
    reg_operator: bool,
    out: &mut Vec<(usize, usize)>,
) {
    const OPERATOR: &[u8] = b"operator does not exist: ";
    const MESSAGES: &[&[u8]] = &[
        b"improper relation name (too many dotted names): ",
        b"improper qualified name (too many dotted names): ",
        b"cross-database references are not implemented: ",
    ];
    match code {
        b'W' => {
            let mut at = 0;
            for line in f.split(|&b| b == b'\n') {
                if line.starts_with(b"JSON data, line ") {
                    if let Some(k) = memchr::memmem::find(line, b": ") {
                        out.push((at + k + 2, at + line.len()));
                    }
                }
                at += line.len() + 1;
            }
        }
        b'D' if xml => out.push((0, f.len())),
        b'D' if f.starts_with(b"parameters: ") => out.push((12, f.len())),
        b'D' => {
            if let Some(k) = memchr::memmem::find(f, b"Key (") {
                if let Some(m) = memchr::memmem::find(&f[k..], b")=(") {
                    let from = k + m + 3;
                    if let Some(close) = memchr::memrchr(b')', &f[from..]) {
                        out.push((from, from + close));
                    }
                }
            }
        }
        b'M' => {
            if let Some(p) = MESSAGES.iter().find(|p| f.starts_with(p)) {
                out.push((p.len(), f.len()));
            } else if reg_operator && f.starts_with(OPERATOR) {
                out.push((OPERATOR.len(), f.len()));
            }
        }
        _ => {}
    }
}

/// The strongest rule among the ruled names of a text's words, anywhere in
/// it (string literals and dollar-quoted bodies too: the body of a `DO`
/// block, which the reading of computed columns leaves out).
pub fn words_rule(engine: &Engine, sql: &[u8]) -> Option<(RuleId, ColumnAction)> {
    let mut best: Option<(RuleId, ColumnAction)> = None;
    let mut lower = Vec::new();
    for w in sql.split(|b| !(b.is_ascii_alphanumeric() || *b == b'_')) {
        if w.is_empty() || w[0].is_ascii_digit() {
            continue;
        }
        lower.clear();
        lower.extend(w.iter().map(u8::to_ascii_lowercase));
        if engine.name_ruled(&lower) {
            best = super::derived::stronger(best, engine.column_rule_by_name(&lower));
        }
    }
    best
}

/// `Key (a, b)=(x, y) …`: mask `x, y` when a column rule names `a` or `b`.
fn key_values(engine: &Engine, d: &mut [u8], hits: &mut Hits) -> u32 {
    let Some(k) = memchr::memmem::find(d, b"Key (") else {
        return 0;
    };
    let cols_start = k + 5;
    let Some(mid) = memchr::memmem::find(&d[cols_start..], b")=(") else {
        return 0;
    };
    let cols_end = cols_start + mid;
    let vals_start = cols_end + 3;
    let Some(vals_end) = memchr::memrchr(b')', &d[vals_start..]).map(|i| vals_start + i) else {
        return 0;
    };
    let rule = d[cols_start..cols_end]
        .split(|&b| b == b',')
        .map(|c| c.trim_ascii())
        .map(|c| {
            c.strip_prefix(b"\"")
                .and_then(|c| c.strip_suffix(b"\""))
                .unwrap_or(c)
        })
        .find_map(|c| engine.column_rule_by_name(c));
    match rule {
        Some((r, _)) => {
            let all = detect::Fmt {
                keep_punct: true,
                ..engine.fmt()
            };
            detect::mask_range(d, vals_start, vals_end, 0, &all);
            hits.add(r, 1);
            1
        }
        None => 0,
    }
}
