//! Per-session statement tracking for the audit trail (sans-IO).
//!
//! The relay feeds every frame it forwards, in order, as the
//! [`FrameScanner`](crate::protocol::frame::FrameScanner) reports it: client
//! frames with [`Tracker::client_part`], target frames with
//! [`Tracker::target_part`]. A frame may arrive in pieces (a header and a
//! body prefix, then more body in later reads); the tracker keeps only what
//! it needs from each (the first bytes of SQL text, names, bind parameter
//! lengths, a command tag, an error's SQLSTATE and message), in buffers it
//! reuses. Time is passed in ([`Clock`]); there is no clock and no I/O here.
//!
//! Requests are queued in the order the client sent them; PostgreSQL
//! answers in that order, so each response belongs to the oldest
//! unanswered request:
//!
//! | request | answered (and its record made) by |
//! |---|---|
//! | Query | ReadyForQuery (one QUERY record per Query message, however many statements it holds; rows summed, first error kept) |
//! | Parse | ParseComplete or ErrorResponse (PARSE record) |
//! | Bind | BindComplete or ErrorResponse (BIND record) |
//! | Execute | CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse (EXECUTE record, with its prepared statement's SQL) |
//! | Describe | RowDescription or NoData (no record) |
//! | Close | CloseComplete (no record) |
//! | Sync | ReadyForQuery (no record) |
//! | FunctionCall | ReadyForQuery (a QUERY record naming the function oid) |
//!
//! After an ErrorResponse to an extended-protocol message PostgreSQL skips
//! every message up to the next Sync: those get their records at once,
//! marked `skipped`. Requests still unanswered when the session ends get
//! records marked `incomplete` ([`Tracker::finish`]).
//!
//! Prepared statements and portals are tracked by name, so Bind and
//! Execute records carry their statement's SQL. A Parse, Bind or Close
//! changes them only once PostgreSQL confirms it (ParseComplete,
//! BindComplete, CloseComplete; a simple Query drops the unnamed statement
//! and portal when it runs). Until then the change is pending: messages
//! sent after it see it (the newest pending change to a name, else the
//! confirmed state), as PostgreSQL runs them after it; an ErrorResponse
//! drops it, with every change PostgreSQL skips after it. So a rejected
//! Parse (a duplicate name, a syntax error, one skipped after an earlier
//! error) never replaces the statement PostgreSQL still has, and a skipped
//! Close forgets nothing. A failed Parse of the unnamed statement leaves
//! none (PostgreSQL drops it before parsing). Requests queued past a Sync
//! that found their statement or portal through a change that was then
//! dropped look it up again. Portals end with their transaction: a
//! ReadyForQuery with status `I` drops them all (an Execute pipelined past
//! that Sync which found one gets no SQL; PostgreSQL answers it 34000).
//!
//! Finished records wait in the tracker until the driver takes them
//! ([`Tracker::peek_record`], [`Tracker::pop_record`]) and writes them to
//! the core's ring — before it forwards the bytes that answered them.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use proto::{AuditKind, Decision};

use super::binval::binary_text;
use super::record::{MaskedEntry, StatementView};
use crate::mask::{Engine, Hits};
use crate::protocol::frame::Part;
use crate::protocol::{be_u32, tag};

/// Longest statement or portal name kept.
pub const NAME_CAP: usize = 256;
/// Bind parameter lengths listed per record (the count is always exact).
pub const MAX_LISTED_PARAMS: usize = 256;
/// Bytes of an ErrorResponse kept (SQLSTATE and the start of the message).
const ERROR_CAP: usize = 2048;
/// Bytes of a CommandComplete kept.
const TAG_CAP: usize = 64;
/// Parameter types kept per prepared statement (from Parse or
/// ParameterDescription); later parameters are recorded as if untyped.
const MAX_PARAM_TYPES: usize = 256;

/// Time, passed in by the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Monotonic nanoseconds (any fixed origin), for durations.
    pub mono_ns: u64,
    /// Wall clock, Unix nanoseconds, for record times.
    pub unix_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    Query,
    FunctionCall,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
}

impl Req {
    fn of_client_tag(t: u8) -> Option<Req> {
        Some(match t {
            tag::QUERY => Req::Query,
            b'F' => Req::FunctionCall,
            tag::PARSE => Req::Parse,
            tag::BIND => Req::Bind,
            b'D' => Req::Describe,
            tag::EXECUTE => Req::Execute,
            b'C' => Req::Close,
            tag::SYNC => Req::Sync,
            _ => return None,
        })
    }

    fn audit_kind(self) -> Option<AuditKind> {
        match self {
            Req::Query | Req::FunctionCall => Some(AuditKind::Query),
            Req::Parse => Some(AuditKind::Parse),
            Req::Bind => Some(AuditKind::Bind),
            Req::Execute => Some(AuditKind::Execute),
            Req::Describe | Req::Close | Req::Sync => None,
        }
    }

    /// Answered by ReadyForQuery.
    fn ends_at_ready(self) -> bool {
        matches!(self, Req::Query | Req::FunctionCall | Req::Sync)
    }
}

/// SQL text as recorded: cut to the configured size on a UTF-8 boundary.
#[derive(Debug, Clone, Default)]
struct Text {
    text: Option<Rc<str>>,
    /// Statement kind(s) ([`super::kind`]); empty when not classified.
    kind: Cow<'static, str>,
    truncated: bool,
    /// Size of the whole text.
    bytes: u64,
}

/// Bytes of SQL text kept past `max_sql` for masking only: a value the
/// cut at `max_sql` splits (a card number, a token up to this long) is
/// masked whole before the cut, not kept in part.
const CUT_SLACK: usize = 256;

impl Text {
    fn new(bytes: &[u8], full: u64, max: usize) -> Text {
        Self::masked(bytes, full, max, None)
    }

    /// As [`Text::new`], with the sensitive values `mask` finds masked
    /// (`scratch` is a reused buffer).
    fn masked(bytes: &[u8], full: u64, max: usize, mask: Option<(&Engine, &mut Vec<u8>)>) -> Text {
        let kept = utf8_prefix(&bytes[..bytes.len().min(max)], max);
        let truncated = full > kept.len() as u64 || kept.len() < bytes.len().min(max);
        let text = match mask {
            _ if kept.is_empty() => None,
            None => Some(Rc::from(kept.as_ref())),
            // Masked before the cut, over up to `CUT_SLACK` bytes more of
            // what came: a value the cut would split is found whole, and
            // only its masked form is kept.
            Some((engine, scratch)) if kept.len() < bytes.len() => {
                let more = utf8_prefix(&bytes[..bytes.len().min(max + CUT_SLACK)], max + CUT_SLACK);
                let m = mask_text(engine, &more, scratch);
                let mut end = kept.len().min(m.len());
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                Some(Rc::from(&m[..end]))
            }
            Some((engine, scratch)) => Some(Rc::from(mask_text(engine, &kept, scratch).as_ref())),
        };
        Text {
            kind: super::kind::statement_kind(&kept),
            text,
            truncated,
            bytes: full,
        }
    }

    fn as_str(&self) -> &str {
        self.text.as_deref().unwrap_or("")
    }
}

/// The longest valid UTF-8 prefix, or a lossy copy (cut to `max` bytes)
/// when invalid bytes sit in the middle (protobuf strings must be UTF-8).
fn utf8_prefix(b: &[u8], max: usize) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => s.into(),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&b[..e.valid_up_to()])
            .expect("valid up to here")
            .into(),
        Err(_) => {
            let s = String::from_utf8_lossy(b).into_owned();
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string().into()
        }
    }
}

/// `text` with what `engine` detects masked (in `scratch` when anything
/// was; `text` itself otherwise).
fn mask_text<'a>(engine: &Engine, text: &'a str, scratch: &'a mut Vec<u8>) -> Cow<'a, str> {
    scratch.clear();
    scratch.extend_from_slice(text.as_bytes());
    let mut hits = Hits::new();
    let mut n = engine.mask_counted(scratch, &mut hits);
    // (Whole-value tokens in string literals: only texts that have one.)
    if memchr::memchr(b'\'', scratch).is_some() {
        n += engine.mask_words(scratch, &mut hits);
    }
    if n == 0 {
        return Cow::Borrowed(text);
    }
    // Lossy: a custom pattern may have cut a multi-byte character.
    String::from_utf8_lossy(scratch)
}

/// Bytes that read as text (a text-like parameter sent in binary).
fn printable(v: &[u8]) -> bool {
    std::str::from_utf8(v)
        .is_ok_and(|s| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
}

/// Where a prepared statement's parameter types are kept.
type TypeSlot = Rc<RefCell<Option<Rc<[u32]>>>>;

/// Parameter type OIDs as Parse and ParameterDescription send them: a
/// count, then that many OIDs (as many as `b` holds, up to
/// [`MAX_PARAM_TYPES`]).
fn parse_types(b: &[u8]) -> Option<Rc<[u32]>> {
    if b.len() < 2 {
        return None;
    }
    let n = usize::from(u16::from_be_bytes([b[0], b[1]])).min(MAX_PARAM_TYPES);
    let oids: Vec<u32> = b[2..]
        .chunks_exact(4)
        .take(n)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (!oids.is_empty()).then(|| Rc::from(oids))
}

/// `text` with what `engine` (if any) detects masked, in place in its own
/// allocation.
fn mask_owned(engine: Option<&Engine>, text: String) -> String {
    let Some(e) = engine else {
        return text;
    };
    let mut bytes = text.into_bytes();
    e.mask_counted(&mut bytes, &mut Hits::new());
    // Lossy: a custom pattern may have cut a multi-byte character.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The values of the Bind `b` holds, masked; `types` are its statement's
/// parameter types, which say how to read binary values; `max_sql` is
/// the Bind's budget.
fn bind_values(
    b: &BindWalker,
    types: Option<&[u32]>,
    engine: Option<&Engine>,
    max_sql: usize,
) -> Option<Params> {
    if b.lengths.is_empty() {
        return None;
    }
    let mut spans = b.spans.iter();
    let mut out = Vec::with_capacity(b.lengths.len());
    // Values read by their type share the Bind's budget as printed
    // (a few bytes of numeric can print as thousands of digits).
    let mut room = max_sql;
    // The values' bytes share `max_sql` as they came. The walker keeps
    // `CUT_SLACK` more: a text or hex value is masked over them and then
    // cut to its share, so a value the cut splits is masked whole first.
    let mut raw_room = max_sql;
    for (i, &len) in b.lengths.iter().enumerate() {
        if len < 0 {
            out.push(None);
            continue;
        }
        let (start, kept, cut) = if len == 0 {
            (0, 0, false)
        } else {
            spans.next().copied().unwrap_or((0, 0, true))
        };
        let more = &b.values[start as usize..(start + kept) as usize];
        let share = more.len().min(raw_room);
        raw_room -= share;
        let v = &more[..share];
        let mut cut = cut || share < len as usize;
        let typed = if b.binary(i) {
            let oid = types.and_then(|t| t.get(i)).copied().unwrap_or(0);
            binary_text(oid, v, cut, room).or_else(|| {
                // (A value the share cut that came whole in the walker's
                // slack, as a fixed-size one (`int8`) must to be read:
                // printed from all its bytes, then masked and cut to the
                // room as any typed value; not the hex of its first bytes,
                // which would spell a card number's first digits.)
                let whole = share < more.len() && more.len() == len as usize;
                let t = binary_text(oid, more, false, room).filter(|_| whole)?;
                cut = false;
                Some(t)
            })
        } else {
            None
        };
        let mut text = if let Some(t) = typed {
            let mut t = match text_like(b, types, i) {
                // (A text-like type prints its bytes as they came: masked
                // over `more` as a text value is, then cut to what `v`
                // printed, so a value the cut splits is masked whole.)
                Some(skip) if more.len() > share && engine.is_some() => {
                    let mut m =
                        mask_owned(engine, utf8_prefix(&more[skip..], more.len()).into_owned());
                    if m.len() > t.len() {
                        let mut end = t.len();
                        while !m.is_char_boundary(end) {
                            end -= 1;
                        }
                        m.truncate(end);
                    }
                    m
                }
                _ => mask_owned(engine, t),
            };
            // Cut after masking, so no cut hides a value from it.
            if t.len() > room {
                let mut end = room;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
                cut = true;
            }
            room -= t.len();
            t
        } else if b.binary(i) && !printable(v) {
            // A type not read here (bytea, a geometric type, ...): its
            // bytes in hex, masked as bytes first, so a card number
            // written as ASCII inside a binary value is not spelled out
            // in hex.
            let mut raw = more.to_vec();
            if let Some(e) = engine {
                e.mask_counted(&mut raw, &mut Hits::new());
            }
            raw.truncate(share);
            let mut t = Vec::with_capacity(2 + 2 * raw.len());
            t.extend_from_slice(b"\\x");
            crate::protocol::hex_into(&mut t, &raw);
            String::from_utf8(t).expect("hex is ASCII")
        } else {
            let mut t = mask_owned(engine, utf8_prefix(more, more.len()).into_owned());
            if t.len() > share {
                let mut end = share;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
            }
            t
        };
        if cut {
            text.push('…');
        }
        out.push(Some(text.into_boxed_str()));
    }
    Some(Rc::from(out))
}

/// Bytes before the text of Bind value `i` when it is a binary value of a
/// text-like type that `binary_text` prints as its bytes (`jsonb`: its
/// version byte).
fn text_like(b: &BindWalker, types: Option<&[u32]>, i: usize) -> Option<usize> {
    use super::binval::oid;
    match types.and_then(|t| t.get(i)).copied().unwrap_or(0) {
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON | oid::XML => Some(0),
        oid::JSONB => Some(1),
        _ => None,
    }
    .filter(|_| b.binary(i))
}

/// Bind parameter values as recorded: text, masked; `None` for NULL.
type Params = Rc<[Option<Box<str>>]>;

fn name(b: &[u8]) -> Option<Rc<str>> {
    if b.is_empty() {
        None
    } else {
        Some(Rc::from(
            utf8_prefix(&b[..b.len().min(NAME_CAP)], NAME_CAP).as_ref(),
        ))
    }
}

/// A prepared statement PostgreSQL confirmed (ParseComplete).
#[derive(Debug, Clone)]
struct Stmt {
    name: Option<Rc<str>>,
    sql: Text,
    /// Parameter type OIDs (0: unspecified), from the Parse or, once the
    /// client described the statement, from PostgreSQL's
    /// ParameterDescription. They say how to read binary values. A slot
    /// of this Parse's own: a Describe keeps the slot, so its answer lands
    /// on the statement described even if the name was reused since.
    types: TypeSlot,
}

/// A portal PostgreSQL confirmed (BindComplete).
#[derive(Debug, Clone, Default)]
struct Portal {
    stmt: Option<Rc<str>>,
    sql: Text,
    param_count: u32,
    params: Option<Rc<[i32]>>,
    values: Option<Params>,
}

/// A statement as a later message sees it: confirmed ([`Stmt`]) or made
/// by a Parse still waiting for its answer (the request's own fields).
#[derive(Clone, Copy)]
struct StmtRef<'a> {
    name: &'a Option<Rc<str>>,
    sql: &'a Text,
    types: &'a TypeSlot,
}

/// A portal as a later message sees it: confirmed ([`Portal`]) or made
/// by a Bind still waiting for its answer (the request's own fields).
#[derive(Clone, Copy)]
struct PortalRef<'a> {
    stmt: &'a Option<Rc<str>>,
    sql: &'a Text,
    param_count: u32,
    params: &'a Option<Rc<[i32]>>,
    values: &'a Option<Params>,
}

impl Stmt {
    fn as_ref(&self) -> StmtRef<'_> {
        StmtRef {
            name: &self.name,
            sql: &self.sql,
            types: &self.types,
        }
    }
}

impl Portal {
    fn as_ref(&self) -> PortalRef<'_> {
        PortalRef {
            stmt: &self.stmt,
            sql: &self.sql,
            param_count: self.param_count,
            params: &self.params,
            values: &self.values,
        }
    }
}

impl PortalRef<'_> {
    fn to_owned(self) -> Portal {
        Portal {
            stmt: self.stmt.clone(),
            sql: self.sql.clone(),
            param_count: self.param_count,
            params: self.params.clone(),
            values: self.values.clone(),
        }
    }
}

/// A statement or portal name as a map key; `None`: the unnamed one (no
/// allocation for it).
type Key = Option<Rc<[u8]>>;

/// PostgreSQL finds prepared statements and portals by the first
/// `NAMEDATALEN - 1` bytes of their names (its hash tables are keyed so):
/// two names that share those bytes are one statement to it, so they are
/// one here too. 63 is PostgreSQL's default build, which every packaged
/// server uses.
const PG_NAME_KEY: usize = 63;

/// The part of a name PostgreSQL looks a statement or portal up by.
#[inline]
fn pg_name(name: &[u8]) -> &[u8] {
    &name[..name.len().min(PG_NAME_KEY)]
}

fn key(name: &[u8]) -> Key {
    let name = pg_name(name);
    (!name.is_empty()).then(|| Rc::from(name))
}

fn key_is(key: &Key, name: &[u8]) -> bool {
    key.as_deref().unwrap_or_default() == pg_name(name)
}

/// What a request changes in the session's statements and portals (to
/// the one its [`Pending::key`] names) once PostgreSQL confirms it. Until
/// then the change is pending: messages after it see it (PostgreSQL runs
/// them after it), but the confirmed state does not have it, and an error
/// drops it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Change {
    #[default]
    None,
    /// Parse: the statement is the request's (its name, SQL and type slot
    /// in the request's fields). Confirmed by ParseComplete.
    Parse,
    /// Bind: the portal is the request's (its fields). Confirmed by
    /// BindComplete.
    Bind,
    /// Close of a statement; confirmed by CloseComplete.
    CloseStmt,
    /// Close of a portal; confirmed by CloseComplete.
    ClosePortal,
    /// A simple Query drops the unnamed statement and the unnamed portal
    /// when PostgreSQL runs it (at its start, so even if it fails).
    Query,
}

impl Change {
    /// A change to a statement (else to a portal, or none).
    fn to_stmt(self) -> bool {
        matches!(self, Change::Parse | Change::CloseStmt | Change::Query)
    }

    /// A change to a portal (else to a statement, or none).
    fn to_portal(self) -> bool {
        matches!(self, Change::Bind | Change::ClosePortal | Change::Query)
    }
}

/// The newest pending change to each name (the id of its request): what
/// later messages see before the confirmed state.
#[derive(Debug, Default)]
struct Overlay {
    unnamed: Option<u64>,
    named: HashMap<Rc<[u8]>, u64>,
}

impl Overlay {
    #[inline]
    fn get(&self, name: &[u8]) -> Option<u64> {
        let name = pg_name(name);
        if name.is_empty() {
            self.unnamed
        } else if self.named.is_empty() {
            None
        } else {
            self.named.get(name).copied()
        }
    }

    #[inline]
    fn set(&mut self, key: &Key, id: u64) {
        match key {
            None => self.unnamed = Some(id),
            Some(k) => {
                self.named.insert(k.clone(), id);
            }
        }
    }

    /// Request `id` left the queue (confirmed or dropped): if its change
    /// was the newest to `key`, no change to it is pending any more (any
    /// older one left the queue before it).
    #[inline]
    fn unlink(&mut self, key: &Key, id: u64) {
        match key {
            None => {
                if self.unnamed == Some(id) {
                    self.unnamed = None;
                }
            }
            Some(k) => {
                if self.named.get(&**k) == Some(&id) {
                    self.named.remove(&**k);
                }
            }
        }
    }

    fn clear(&mut self) {
        self.unnamed = None;
        self.named.clear();
    }
}

#[derive(Debug)]
struct Failure {
    sqlstate: String,
    message: String,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    req: Req,
    start: Clock,
    end_ns: u64,
    sql: Text,
    statement_name: Option<Rc<str>>,
    portal_name: Option<Rc<str>>,
    param_count: u32,
    params: Option<Rc<[i32]>>,
    values: Option<Params>,
    /// Values masked in the results, per rule and column.
    masked: Vec<MaskedEntry>,
    /// Rows of the statements completed so far.
    rows: u64,
    /// DataRows since the last CommandComplete.
    data_rows: u64,
    bytes: u64,
    error: Option<Box<Failure>>,
    /// Refused by policy before it was forwarded (a POLICY_DECISION
    /// record, decision DENY).
    refused: bool,
    skipped: bool,
    incomplete: bool,
    /// A Parse: the type slot of the statement it makes. A Describe of a
    /// prepared statement: that statement's type slot, for its
    /// ParameterDescription.
    types: Option<TypeSlot>,
    /// What this request changes in the statements and portals, until
    /// PostgreSQL confirms it (then applied) or refuses or skips it (then
    /// dropped).
    change: Change,
    /// The name `change` is to (`None`: the unnamed statement or portal).
    key: Key,
    /// A Bind, Describe or Execute that found its statement or portal in
    /// a pending change: how many requests back that change's request is
    /// (if it is dropped, what this request found is looked up again); 0:
    /// none. (Not an `Option<u64>`: a request is moved a few times, and
    /// kept under 256 bytes its moves stay short.)
    via_back: u32,
}

impl Pending {
    fn new(id: u64, req: Req, start: Clock) -> Pending {
        Pending {
            id,
            req,
            start,
            end_ns: start.mono_ns,
            sql: Text::default(),
            statement_name: None,
            portal_name: None,
            param_count: 0,
            params: None,
            values: None,
            masked: Vec::new(),
            rows: 0,
            data_rows: 0,
            bytes: 0,
            error: None,
            refused: false,
            skipped: false,
            incomplete: false,
            types: None,
            change: Change::None,
            key: None,
            via_back: 0,
        }
    }

    /// The request whose pending change this one found its statement or
    /// portal through.
    fn via(&self) -> Option<u64> {
        (self.via_back > 0).then(|| self.id - u64::from(self.via_back))
    }

    fn set_via(&mut self, via: Option<u64>) {
        self.via_back = via
            .and_then(|v| u32::try_from(self.id.checked_sub(v)?).ok())
            .unwrap_or(0);
    }

    /// This Execute runs `portal` (its statement, SQL and bind values; the
    /// default: none), found through the pending change of `via`.
    fn run_portal(&mut self, portal: Portal, via: Option<u64>) {
        self.statement_name = portal.stmt;
        self.sql = portal.sql;
        self.param_count = portal.param_count;
        self.params = portal.params;
        self.values = portal.values;
        self.set_via(via);
    }

    /// The statement this pending Parse makes.
    fn stmt_made(&self) -> Option<StmtRef<'_>> {
        match self.change {
            Change::Parse => self.types.as_ref().map(|types| StmtRef {
                name: &self.statement_name,
                sql: &self.sql,
                types,
            }),
            _ => None,
        }
    }

    /// The portal this pending Bind makes.
    fn portal_made(&self) -> Option<PortalRef<'_>> {
        match self.change {
            Change::Bind => Some(PortalRef {
                stmt: &self.statement_name,
                sql: &self.sql,
                param_count: self.param_count,
                params: &self.params,
                values: &self.values,
            }),
            _ => None,
        }
    }

    /// Whether PostgreSQL carried it out: answered without an error (a
    /// simple Query drops the unnamed statement and portal even if it then
    /// fails), not skipped, not refused, not left unanswered.
    fn carried_out(&self) -> bool {
        !self.skipped
            && !self.incomplete
            && !self.refused
            && (self.error.is_none() || self.req == Req::Query)
    }
}

/// The statement `name` names as a request sees it after a pending
/// change `p` (`Err`: `p` changes something else).
fn stmt_after<'a>(p: &'a Pending, name: &[u8]) -> Result<Option<StmtRef<'a>>, ()> {
    if !p.change.to_stmt() || !key_is(&p.key, name) {
        return Err(());
    }
    Ok(p.stmt_made())
}

/// The portal `name` names as a request sees it after a pending change
/// `p` (`Err`: `p` changes something else).
fn portal_after<'a>(p: &'a Pending, name: &[u8]) -> Result<Option<PortalRef<'a>>, ()> {
    if !p.change.to_portal() || !key_is(&p.key, name) {
        return Err(());
    }
    Ok(p.portal_made())
}

/// Bind body after the two names: formats, parameters (lengths only).
#[derive(Debug, Default)]
struct BindWalker {
    state: BindState,
    /// Bytes still to read (accumulate or skip) in this state.
    need: u32,
    acc: [u8; 4],
    acc_n: u8,
    nparams: u16,
    cur: u16,
    lengths: Vec<i32>,
    /// Parameter format codes (as sent: none, one for all, or one each).
    nformats: u16,
    formats: Vec<i16>,
    /// Values of the listed parameters, up to `budget` bytes in all;
    /// `spans[i]` = (start in `values`, bytes kept, cut short).
    values: Vec<u8>,
    spans: Vec<(u32, u32, bool)>,
    budget: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum BindState {
    #[default]
    NFormats,
    Formats,
    NParams,
    ParamLen,
    ParamValue,
    Done,
}

impl BindWalker {
    fn reset(&mut self, budget: usize) {
        self.state = BindState::NFormats;
        self.need = 2;
        self.acc_n = 0;
        self.nparams = 0;
        self.cur = 0;
        self.lengths.clear();
        self.nformats = 0;
        self.formats.clear();
        self.values.clear();
        self.spans.clear();
        self.budget = budget;
    }

    /// Whether parameter `i` was sent in binary format.
    fn binary(&self, i: usize) -> bool {
        match self.nformats {
            0 => false,
            1 => self.formats.first() == Some(&1),
            _ => self.formats.get(i) == Some(&1),
        }
    }

    fn next_param(&mut self) {
        self.cur += 1;
        if self.cur >= self.nparams {
            self.state = BindState::Done;
        } else {
            self.state = BindState::ParamLen;
            self.need = 4;
        }
    }

    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            match self.state {
                BindState::Done => return,
                BindState::Formats | BindState::ParamValue => {
                    let take = (self.need as usize).min(b.len());
                    if self.state == BindState::Formats {
                        // Keep the codes of the listed parameters.
                        for &x in &b[..take] {
                            self.acc[self.acc_n as usize] = x;
                            self.acc_n += 1;
                            if self.acc_n == 2 {
                                self.acc_n = 0;
                                if self.formats.len() <= MAX_LISTED_PARAMS {
                                    self.formats
                                        .push(i16::from_be_bytes([self.acc[0], self.acc[1]]));
                                }
                            }
                        }
                    }
                    if self.state == BindState::ParamValue
                        && usize::from(self.cur) < MAX_LISTED_PARAMS
                    {
                        if let Some(span) = self.spans.last_mut() {
                            let room = self.budget.saturating_sub(self.values.len());
                            let keep = room.min(take);
                            self.values.extend_from_slice(&b[..keep]);
                            span.1 += keep as u32;
                            if keep < take {
                                span.2 = true;
                            }
                        }
                    }
                    self.need -= take as u32;
                    b = &b[take..];
                    if self.need == 0 {
                        if self.state == BindState::Formats {
                            self.state = BindState::NParams;
                            self.need = 2;
                        } else {
                            self.next_param();
                        }
                    }
                }
                BindState::NFormats | BindState::NParams | BindState::ParamLen => {
                    let take = (self.need as usize).min(b.len());
                    let n = self.acc_n as usize;
                    self.acc[n..n + take].copy_from_slice(&b[..take]);
                    self.acc_n += take as u8;
                    self.need -= take as u32;
                    b = &b[take..];
                    if self.need > 0 {
                        continue;
                    }
                    self.acc_n = 0;
                    match self.state {
                        BindState::NFormats => {
                            let n = u16::from_be_bytes([self.acc[0], self.acc[1]]);
                            self.nformats = n;
                            if n > 0 {
                                self.state = BindState::Formats;
                                self.need = 2 * u32::from(n);
                            } else {
                                self.state = BindState::NParams;
                                self.need = 2;
                            }
                        }
                        BindState::NParams => {
                            self.nparams = u16::from_be_bytes([self.acc[0], self.acc[1]]);
                            self.cur = 0;
                            if self.nparams == 0 {
                                self.state = BindState::Done;
                            } else {
                                self.state = BindState::ParamLen;
                                self.need = 4;
                            }
                        }
                        _ => {
                            let len = i32::from_be_bytes(self.acc);
                            if self.lengths.len() < MAX_LISTED_PARAMS {
                                self.lengths.push(len);
                                if len > 0 {
                                    self.spans.push((self.values.len() as u32, 0, false));
                                }
                            }
                            if len > 0 {
                                self.state = BindState::ParamValue;
                                self.need = len as u32;
                            } else {
                                self.next_param();
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What is kept of the frame being received (either side).
#[derive(Debug, Default)]
struct Capture {
    active: bool,
    tag: u8,
    len: u32,
    /// Body bytes seen so far.
    pos: u64,
    head: Vec<u8>,
    cap: usize,
    /// Offsets of the first NULs in the body (names end there).
    nul: [u64; 2],
    want_nuls: u8,
    found: u8,
    /// Id of the queued request this frame is (client side).
    pending: Option<u64>,
    bind: BindWalker,
    /// Bytes of bind parameter values kept per Bind.
    bind_budget: usize,
}

impl Capture {
    fn begin(&mut self, t: u8, len: u32, cap: usize, want_nuls: u8) {
        self.active = true;
        self.tag = t;
        self.len = len;
        self.pos = 0;
        self.head.clear();
        self.cap = cap;
        self.want_nuls = want_nuls;
        self.found = 0;
        self.pending = None;
        if t == tag::BIND {
            self.bind.reset(self.bind_budget);
        }
    }

    fn feed(&mut self, piece: &[u8]) {
        if self.head.len() < self.cap {
            let take = (self.cap - self.head.len()).min(piece.len());
            self.head.extend_from_slice(&piece[..take]);
        }
        let base = self.pos;
        let mut off = 0;
        while self.found < self.want_nuls {
            match memchr::memchr(0, &piece[off..]) {
                Some(i) => {
                    self.nul[self.found as usize] = base + (off + i) as u64;
                    self.found += 1;
                    off += i + 1;
                }
                None => break,
            }
        }
        if self.tag == tag::BIND && self.found == 2 {
            let start = self.nul[1] + 1;
            let end = base + piece.len() as u64;
            if end > start {
                let from = start.saturating_sub(base) as usize;
                self.bind.feed(&piece[from..]);
            }
        }
        self.pos += piece.len() as u64;
    }

    /// The head bytes from body offset `from` to the `k`-th NUL (or the end
    /// of what was kept).
    fn until_nul(&self, from: u64, k: usize) -> &[u8] {
        let from = (from as usize).min(self.head.len());
        let end = if self.found as usize > k {
            (self.nul[k] as usize).min(self.head.len())
        } else {
            self.head.len()
        };
        &self.head[from..end.max(from)]
    }
}

/// One session's tracker. See the module docs.
#[derive(Debug)]
pub struct Tracker {
    max_sql: usize,
    queue: VecDeque<Pending>,
    done: VecDeque<Pending>,
    next_id: u64,
    /// An extended-protocol message failed and the client has not sent its
    /// Sync yet: PostgreSQL skips what comes until then.
    skip_until_sync: bool,
    client: Capture,
    target: Capture,
    /// Statements and portals as PostgreSQL has them: changed only when
    /// it confirms a change (ParseComplete, BindComplete, CloseComplete,
    /// a simple Query run).
    unnamed_stmt: Option<Stmt>,
    stmts: HashMap<Rc<[u8]>, Stmt>,
    unnamed_portal: Option<Portal>,
    portals: HashMap<Rc<[u8]>, Portal>,
    /// The newest pending change to each statement and portal name,
    /// looked up before the confirmed state.
    pending_stmts: Overlay,
    pending_portals: Overlay,
    /// Pending changes just dropped (request id, name): requests still
    /// queued that found something through them look it up again.
    dropped: Vec<(u64, Key)>,
    /// Masks SQL text and bind parameters before they are recorded.
    engine: Option<Arc<Engine>>,
    scratch: Vec<u8>,
}

impl Tracker {
    /// `max_sql` caps the SQL text kept per record.
    pub fn new(max_sql: usize) -> Tracker {
        Tracker {
            max_sql,
            queue: VecDeque::new(),
            done: VecDeque::new(),
            next_id: 0,
            skip_until_sync: false,
            client: Capture {
                // (`CUT_SLACK` more, for masking only: see `bind_values`.)
                bind_budget: max_sql + CUT_SLACK,
                ..Capture::default()
            },
            target: Capture::default(),
            unnamed_stmt: None,
            stmts: HashMap::new(),
            unnamed_portal: None,
            portals: HashMap::new(),
            pending_stmts: Overlay::default(),
            pending_portals: Overlay::default(),
            dropped: Vec::new(),
            engine: None,
            scratch: Vec::new(),
        }
    }

    /// Mask the SQL text and bind parameters of records with `engine`
    /// from now on (the session's masking profile, or the default one for
    /// a session that sees results unmasked: the audit trail never keeps
    /// what the detectors find).
    pub fn set_masking(&mut self, engine: Arc<Engine>) {
        self.engine = Some(engine);
    }

    /// Values masked in a frame of the answer now streaming: they belong
    /// to the oldest unanswered request (call before
    /// [`Tracker::target_part`] for the frame).
    pub fn target_masked(&mut self, rule: &str, column: &str, n: u64) {
        let Some(p) = self.queue.front_mut() else {
            return;
        };
        match p
            .masked
            .iter_mut()
            .find(|m| &*m.rule == rule && &*m.column == column)
        {
            Some(m) => m.count += n,
            None => p.masked.push(MaskedEntry {
                rule: rule.into(),
                column: column.into(),
                count: n,
            }),
        }
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Records waiting to be taken.
    pub fn records_waiting(&self) -> usize {
        self.done.len()
    }

    /// Feed a piece of a client frame (as forwarded to the target).
    pub fn client_part(&mut self, part: Part<'_>, now: Clock) {
        match part {
            Part::Start {
                tag: t,
                len,
                body,
                done,
            } => {
                let (cap, nuls) = match t {
                    // (`CUT_SLACK` more: see `Text::masked`.)
                    tag::QUERY => (self.max_sql + 1 + CUT_SLACK, 0),
                    // Name, SQL, and the parameter types after them.
                    tag::PARSE => (
                        NAME_CAP + 2 + self.max_sql + 2 + 4 * MAX_PARAM_TYPES + CUT_SLACK,
                        2,
                    ),
                    tag::DESCRIBE => (NAME_CAP + 2, 1),
                    tag::BIND => (2 * NAME_CAP + 2, 2),
                    tag::EXECUTE => (NAME_CAP + 1, 1),
                    b'C' => (NAME_CAP + 2, 1),
                    b'F' => (4, 0),
                    _ => (0, 0),
                };
                self.client.begin(t, len, cap, nuls);
                if let Some(req) = Req::of_client_tag(t) {
                    if req == Req::Sync {
                        self.skip_until_sync = false;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.queue.push_back(Pending::new(id, req, now));
                    self.client.pending = Some(id);
                }
                self.client.feed(body);
                if done {
                    self.client_frame_done();
                }
            }
            Part::More { body, done } => {
                if self.client.active {
                    self.client.feed(body);
                    if done {
                        self.client_frame_done();
                    }
                }
            }
        }
    }

    fn client_frame_done(&mut self) {
        self.client.active = false;
        let Some(id) = self.client.pending else {
            return;
        };
        // The request queued when this frame started (unless a confused
        // target already answered it). Filled in where it is queued.
        let Some(req) = self.queue.back().filter(|p| p.id == id).map(|p| p.req) else {
            return;
        };
        // PostgreSQL discards it (an earlier message failed): it changes
        // nothing.
        let skipped = self.skip_until_sync && req != Req::Sync;
        let c = &self.client;
        match c.tag {
            tag::QUERY => {
                let full = u64::from(c.len.saturating_sub(1));
                let n = c.head.len().min(full as usize);
                let mask = self.engine.as_deref().map(|e| (e, &mut self.scratch));
                let sql = Text::masked(&c.head[..n], full, self.max_sql, mask);
                let p = self.queue.back_mut().expect("queued");
                p.sql = sql;
                // It drops the unnamed statement and portal: a change only
                // if there is one (confirmed or pending).
                if !skipped
                    && (self.unnamed_stmt.is_some()
                        || self.unnamed_portal.is_some()
                        || self.pending_stmts.unnamed.is_some()
                        || self.pending_portals.unnamed.is_some())
                {
                    p.change = Change::Query;
                    self.pending_stmts.unnamed = Some(id);
                    self.pending_portals.unnamed = Some(id);
                }
            }
            b'F' => {
                let oid = if c.head.len() >= 4 {
                    be_u32(&c.head)
                } else {
                    0
                };
                let text = format!("-- function call (fastpath), oid {oid}");
                let full = text.len() as u64;
                let p = self.queue.back_mut().expect("queued");
                p.sql = Text::new(text.as_bytes(), full, self.max_sql);
                p.sql.kind = Cow::Borrowed("utility");
            }
            tag::PARSE => {
                let stmt_name = crate::protocol::server_name(c.until_nul(0, 0));
                let sql_from = if c.found >= 1 {
                    c.nul[0] + 1
                } else {
                    c.head.len() as u64
                };
                let sql = c.until_nul(sql_from, 1);
                let full = if c.found >= 2 {
                    c.nul[1] - sql_from
                } else {
                    u64::from(c.len).saturating_sub(sql_from)
                };
                let types = if c.found >= 2 {
                    parse_types(c.head.get(c.nul[1] as usize + 1..).unwrap_or(&[]))
                } else {
                    None
                };
                let sql = Text::masked(
                    sql,
                    full,
                    self.max_sql,
                    self.engine.as_deref().map(|e| (e, &mut self.scratch)),
                );
                let stmt = name(stmt_name);
                let key = if skipped { None } else { key(stmt_name) };
                let p = self.queue.back_mut().expect("queued");
                p.statement_name = stmt;
                p.sql = sql;
                if !skipped {
                    p.types = Some(Rc::new(RefCell::new(types)));
                    p.change = Change::Parse;
                    self.pending_stmts.set(&key, id);
                    p.key = key;
                }
            }
            tag::BIND => {
                let portal_name = crate::protocol::server_name(c.until_nul(0, 0));
                let stmt_from = if c.found >= 1 {
                    c.nul[0] + 1
                } else {
                    c.head.len() as u64
                };
                let stmt_name = crate::protocol::server_name(c.until_nul(stmt_from, 1));
                let (stmt, via) = self.find_stmt(stmt_name);
                let types = stmt.and_then(|s| s.types.borrow().clone());
                let values = bind_values(
                    &c.bind,
                    types.as_deref(),
                    self.engine.as_deref(),
                    self.max_sql,
                );
                let (stmt, sql) = match stmt {
                    Some(s) => (s.name.clone(), s.sql.clone()),
                    None => (name(stmt_name), Text::default()),
                };
                let param_count = u32::from(c.bind.nparams);
                let params = (!c.bind.lengths.is_empty()).then(|| Rc::from(&c.bind.lengths[..]));
                let portal = name(portal_name);
                let key = if skipped { None } else { key(portal_name) };
                let p = self.queue.back_mut().expect("queued");
                p.portal_name = portal;
                p.statement_name = stmt;
                p.sql = sql;
                p.param_count = param_count;
                p.params = params;
                p.values = values;
                p.set_via(via);
                if !skipped {
                    p.change = Change::Bind;
                    self.pending_portals.set(&key, id);
                    p.key = key;
                }
            }
            tag::DESCRIBE if c.head.first() == Some(&b'S') && c.found >= 1 => {
                let (stmt, via) = self.find_stmt(crate::protocol::server_name(c.until_nul(1, 0)));
                let slot = stmt.map(|s| s.types.clone());
                let p = self.queue.back_mut().expect("queued");
                p.types = slot;
                p.set_via(via);
            }
            tag::EXECUTE => {
                let portal_name = crate::protocol::server_name(c.until_nul(0, 0));
                let (portal, via) = self.find_portal(portal_name);
                let portal = portal.map(PortalRef::to_owned).unwrap_or_default();
                let portal_name = name(portal_name);
                let p = self.queue.back_mut().expect("queued");
                p.portal_name = portal_name;
                p.run_portal(portal, via);
            }
            b'C' if !skipped => {
                let change = match c.head.first() {
                    Some(b'S') => Change::CloseStmt,
                    Some(b'P') => Change::ClosePortal,
                    _ => Change::None,
                };
                let key = if change == Change::None {
                    None
                } else {
                    key(crate::protocol::server_name(c.until_nul(1, 0)))
                };
                if change.to_stmt() {
                    self.pending_stmts.set(&key, id);
                } else if change.to_portal() {
                    self.pending_portals.set(&key, id);
                }
                let p = self.queue.back_mut().expect("queued");
                p.change = change;
                p.key = key;
            }
            _ => {}
        }
        if skipped {
            // PostgreSQL discards it: an earlier message failed.
            if let Some(mut p) = self.queue.pop_back() {
                p.skipped = true;
                self.finish_one(p);
            }
        }
    }

    /// Make the change of queued request `i` the newest pending one to
    /// its name.
    #[inline]
    fn register(&mut self, i: usize) {
        let Some(p) = self.queue.get(i) else {
            return;
        };
        if p.change.to_stmt() {
            self.pending_stmts.set(&p.key, p.id);
        }
        if p.change.to_portal() {
            self.pending_portals.set(&p.key, p.id);
        }
    }

    /// The queued request `id`.
    #[inline]
    fn queued(&self, id: u64) -> Option<&Pending> {
        // Ids are consecutive unless a skipped request left a gap.
        let first = self.queue.front()?.id;
        let at = usize::try_from(id.checked_sub(first)?).ok()?;
        match self.queue.get(at) {
            Some(p) if p.id == id => Some(p),
            _ => {
                let i = self.queue.binary_search_by_key(&id, |p| p.id).ok()?;
                self.queue.get(i)
            }
        }
    }

    /// The statement `name` names for a message sent now: made by the
    /// newest pending change to it (and that change's request), else the
    /// confirmed one.
    fn find_stmt(&self, name: &[u8]) -> (Option<StmtRef<'_>>, Option<u64>) {
        if let Some(id) = self.pending_stmts.get(name) {
            if let Some(found) = self.queued(id).and_then(|p| stmt_after(p, name).ok()) {
                return (found, Some(id));
            }
            debug_assert!(false, "pending statement change {id} not queued");
        }
        (self.confirmed_stmt(name), None)
    }

    /// As [`Tracker::find_stmt`], for a portal.
    fn find_portal(&self, name: &[u8]) -> (Option<PortalRef<'_>>, Option<u64>) {
        if let Some(id) = self.pending_portals.get(name) {
            if let Some(found) = self.queued(id).and_then(|p| portal_after(p, name).ok()) {
                return (found, Some(id));
            }
            debug_assert!(false, "pending portal change {id} not queued");
        }
        (self.confirmed_portal(name), None)
    }

    /// The statement `name` names after the change of queued request
    /// `at`, else the confirmed one (for looking up again after a change
    /// was dropped).
    fn stmt_at(&self, at: Option<usize>, name: &[u8]) -> (Option<StmtRef<'_>>, Option<u64>) {
        match at.and_then(|j| self.queue.get(j)) {
            Some(p) => (stmt_after(p, name).ok().flatten(), Some(p.id)),
            None => (self.confirmed_stmt(name), None),
        }
    }

    /// As [`Tracker::stmt_at`], for a portal.
    fn portal_at(&self, at: Option<usize>, name: &[u8]) -> (Option<PortalRef<'_>>, Option<u64>) {
        match at.and_then(|j| self.queue.get(j)) {
            Some(p) => (portal_after(p, name).ok().flatten(), Some(p.id)),
            None => (self.confirmed_portal(name), None),
        }
    }

    fn confirmed_stmt(&self, name: &[u8]) -> Option<StmtRef<'_>> {
        if name.is_empty() {
            self.unnamed_stmt.as_ref().map(Stmt::as_ref)
        } else {
            self.stmts.get(pg_name(name)).map(Stmt::as_ref)
        }
    }

    fn confirmed_portal(&self, name: &[u8]) -> Option<PortalRef<'_>> {
        if name.is_empty() {
            self.unnamed_portal.as_ref().map(Portal::as_ref)
        } else {
            self.portals.get(pg_name(name)).map(Portal::as_ref)
        }
    }

    /// The oldest request is leaving the queue: apply its change if
    /// PostgreSQL carried it out, else drop it (requests still queued that
    /// found something through it look it up again:
    /// [`Tracker::look_up_again`]).
    #[inline(never)]
    fn settle_front(&mut self) {
        let Some(p) = self.queue.front_mut() else {
            return;
        };
        let change = std::mem::take(&mut p.change);
        let key = p.key.take();
        let types = p.types.take();
        let p = &*p;
        if change.to_stmt() {
            self.pending_stmts.unlink(&key, p.id);
        }
        if change.to_portal() {
            self.pending_portals.unlink(&key, p.id);
        }
        if !p.carried_out() {
            // PostgreSQL drops the unnamed statement before it parses a
            // new one: a failed Parse of "" leaves none.
            let drops_unnamed =
                change == Change::Parse && key.is_none() && p.error.is_some() && !p.skipped;
            let id = p.id;
            self.drop_change(change, key, id, drops_unnamed);
            return;
        }
        match change {
            Change::None => {}
            Change::Parse => {
                let Some(types) = types else {
                    return;
                };
                let stmt = Stmt {
                    name: p.statement_name.clone(),
                    sql: p.sql.clone(),
                    types,
                };
                match key {
                    None => self.unnamed_stmt = Some(stmt),
                    Some(k) => {
                        self.stmts.insert(k, stmt);
                    }
                }
            }
            Change::Bind => {
                let portal = Portal {
                    stmt: p.statement_name.clone(),
                    sql: p.sql.clone(),
                    param_count: p.param_count,
                    params: p.params.clone(),
                    values: p.values.clone(),
                };
                match key {
                    None => self.unnamed_portal = Some(portal),
                    Some(k) => {
                        self.portals.insert(k, portal);
                    }
                }
            }
            Change::CloseStmt => match &key {
                None => self.unnamed_stmt = None,
                Some(k) => {
                    self.stmts.remove(&**k);
                }
            },
            Change::ClosePortal => match &key {
                None => self.unnamed_portal = None,
                Some(k) => {
                    self.portals.remove(&**k);
                }
            },
            Change::Query => {
                self.unnamed_stmt = None;
                self.unnamed_portal = None;
            }
        }
    }

    /// The change of request `id` did not happen.
    #[cold]
    #[inline(never)]
    fn drop_change(&mut self, change: Change, key: Key, id: u64, drops_unnamed_stmt: bool) {
        if drops_unnamed_stmt {
            self.unnamed_stmt = None;
        }
        if change != Change::None {
            self.dropped.push((id, key));
        }
    }

    /// Pending changes were dropped (their requests failed or were
    /// skipped): the requests still queued after them (past a Sync) that
    /// found a statement or portal through one look it up again, in
    /// order (a Bind looked up again changes what an Execute through it
    /// found).
    #[inline]
    fn look_up_again(&mut self) {
        if !self.dropped.is_empty() {
            self.look_up_dropped();
        }
    }

    #[cold]
    #[inline(never)]
    fn look_up_dropped(&mut self) {
        // Ids in order: the changes dropped, then the Binds looked up again
        // (queued after them, in queue order).
        let mut dropped = std::mem::take(&mut self.dropped);
        // The newest change queued before request `i` to each name (its
        // index), as the pass goes: one pass, however long the queue.
        let mut stmts: HashMap<Key, usize> = HashMap::new();
        let mut portals: HashMap<Key, usize> = HashMap::new();
        for i in 0..self.queue.len() {
            let found = self.queue[i]
                .via()
                .and_then(|via| dropped.binary_search_by_key(&via, |d| d.0).ok())
                .map(|at| dropped[at].1.clone());
            if let Some(key) = found {
                let name = key.as_deref().unwrap_or_default();
                match self.queue[i].req {
                    Req::Bind => {
                        let (stmt, via) = self.stmt_at(stmts.get(&key).copied(), name);
                        let sql = stmt.map(|s| s.sql.clone()).unwrap_or_default();
                        let p = &mut self.queue[i];
                        p.sql = sql;
                        p.set_via(via);
                        if p.change == Change::Bind {
                            dropped.push((p.id, p.key.clone()));
                        }
                    }
                    Req::Describe => {
                        let (stmt, via) = self.stmt_at(stmts.get(&key).copied(), name);
                        let slot = stmt.map(|s| s.types.clone());
                        let p = &mut self.queue[i];
                        p.types = slot;
                        p.set_via(via);
                    }
                    Req::Execute => {
                        let (portal, via) = self.portal_at(portals.get(&key).copied(), name);
                        let portal = portal.map(PortalRef::to_owned).unwrap_or_default();
                        self.queue[i].run_portal(portal, via);
                    }
                    _ => {}
                }
            }
            let p = &self.queue[i];
            if p.change.to_stmt() {
                stmts.insert(p.key.clone(), i);
            }
            if p.change.to_portal() {
                portals.insert(p.key.clone(), i);
            }
        }
        dropped.clear();
        self.dropped = dropped;
    }

    /// Feed a piece of a target frame (as it is about to go to the client).
    pub fn target_part(&mut self, part: Part<'_>, now: Clock) {
        match part {
            Part::Start {
                tag: t,
                len,
                body,
                done,
            } => {
                if let Some(head) = self.queue.front_mut() {
                    head.bytes += 5 + u64::from(len);
                }
                match t {
                    tag::COMMAND_COMPLETE
                    | tag::ERROR_RESPONSE
                    | tag::PARAMETER_DESCRIPTION
                    | tag::READY_FOR_QUERY => {
                        let cap = match t {
                            tag::COMMAND_COMPLETE => TAG_CAP,
                            tag::ERROR_RESPONSE => ERROR_CAP,
                            // The transaction status.
                            tag::READY_FOR_QUERY => 1,
                            _ => 2 + 4 * MAX_PARAM_TYPES,
                        };
                        self.target.begin(t, len, cap, 0);
                        self.target.feed(body);
                        if done {
                            self.target_frame_done(now);
                        }
                    }
                    _ => {
                        self.target.active = false;
                        self.target_frame(t, now);
                    }
                }
            }
            Part::More { body, done } => {
                if self.target.active {
                    self.target.feed(body);
                    if done {
                        self.target_frame_done(now);
                    }
                }
            }
        }
    }

    fn front_is(&self, r: Req) -> bool {
        self.queue.front().is_some_and(|p| p.req == r)
    }

    /// A target frame that needs no body.
    fn target_frame(&mut self, t: u8, now: Clock) {
        match t {
            tag::DATA_ROW => {
                if let Some(p) = self.queue.front_mut() {
                    p.data_rows += 1;
                }
            }
            b'I' | b's' if self.front_is(Req::Execute) => self.complete_front(now),
            b'1' if self.front_is(Req::Parse) => self.complete_front(now),
            b'2' if self.front_is(Req::Bind) => self.complete_front(now),
            b'3' if self.front_is(Req::Close) => self.complete_front(now),
            b'n' | tag::ROW_DESCRIPTION if self.front_is(Req::Describe) => self.complete_front(now),
            _ => {}
        }
    }

    /// A ReadyForQuery with transaction status `status`: answers the
    /// oldest Query, FunctionCall or Sync; anything before it that got no
    /// answer is closed as incomplete.
    fn ready(&mut self, status: Option<u8>, now: Clock) {
        while let Some(p) = self.queue.front_mut() {
            let ends = p.req.ends_at_ready();
            if !ends {
                p.incomplete = true;
            }
            self.complete_front(now);
            if ends {
                break;
            }
        }
        if status == Some(b'I') && (self.unnamed_portal.is_some() || !self.portals.is_empty()) {
            // No transaction open: PostgreSQL has dropped every portal
            // (protocol-level portals never outlive their transaction).
            // Changes still pending (requests sent after this Sync) apply
            // when they are confirmed, as before.
            self.unnamed_portal = None;
            self.portals.clear();
            if !self.queue.is_empty() {
                self.forget_ended_portals();
            }
        }
        self.look_up_again();
    }

    /// Every portal was just dropped at the end of a transaction: the
    /// Executes queued after it (pipelined past the Sync) that found their
    /// portal in what was dropped (the confirmed state, or a change of a
    /// request now settled) find none, as PostgreSQL will (34000). Those
    /// that found a Bind queued after the Sync keep it.
    #[cold]
    #[inline(never)]
    fn forget_ended_portals(&mut self) {
        let Some(first) = self.queue.front().map(|p| p.id) else {
            return;
        };
        for p in self.queue.iter_mut() {
            if p.req == Req::Execute && p.via().is_none_or(|v| v < first) {
                p.run_portal(Portal::default(), None);
            }
        }
    }

    fn target_frame_done(&mut self, now: Clock) {
        self.target.active = false;
        if self.target.tag == tag::READY_FOR_QUERY {
            let status = self.target.head.first().copied();
            self.ready(status, now);
            return;
        }
        let Some(front) = self.queue.front_mut() else {
            return;
        };
        if self.target.tag == tag::PARAMETER_DESCRIPTION {
            // The answer to a Describe of a statement: its types.
            if front.req == Req::Describe {
                if let Some(slot) = front.types.take() {
                    *slot.borrow_mut() = parse_types(&self.target.head);
                }
            }
            return;
        }
        if self.target.tag == tag::COMMAND_COMPLETE {
            let rows = tag_rows(&self.target.head);
            front.rows += rows.unwrap_or(front.data_rows);
            front.data_rows = 0;
            if front.req == Req::Execute {
                self.complete_front(now);
            }
            return;
        }
        // ErrorResponse.
        let f = crate::protocol::backend::parse_error_fields(&self.target.head);
        let failure = Box::new(Failure {
            sqlstate: f.code,
            message: f.message,
        });
        match front.req {
            Req::Query | Req::FunctionCall => {
                // The first error is the one that stopped the query.
                front.error.get_or_insert(failure);
            }
            // A failed COMMIT at Sync: the statements have their records.
            Req::Sync => {}
            _ => {
                front.error = Some(failure);
                self.complete_front(now);
                // PostgreSQL skips everything up to the next Sync; what
                // they would have changed is dropped.
                while let Some(p) = self.queue.front_mut() {
                    if p.req == Req::Sync {
                        self.look_up_again();
                        return;
                    }
                    p.skipped = true;
                    self.complete_front(now);
                }
                self.dropped.clear();
                self.skip_until_sync = true;
            }
        }
    }

    /// The oldest request is answered: its change applied (or dropped),
    /// its record made.
    fn complete_front(&mut self, now: Clock) {
        if self.queue.front().is_some_and(|p| p.change != Change::None) {
            self.settle_front();
        }
        if let Some(mut p) = self.queue.pop_front() {
            p.end_ns = now.mono_ns;
            self.finish_one(p);
        }
    }

    fn finish_one(&mut self, p: Pending) {
        if p.req.audit_kind().is_some() {
            self.done.push_back(p);
        }
    }

    /// Where the requests fed from now on start (for
    /// [`Tracker::refuse_since`]).
    pub fn mark(&self) -> u64 {
        self.next_id
    }

    /// The requests fed since `mark` were refused by policy and never
    /// forwarded: each Query, FunctionCall and Execute among them gets a
    /// POLICY_DECISION record (decision DENY, with `sqlstate` and
    /// `message`); the other extended-protocol steps are dropped.
    pub fn refuse_since(&mut self, mark: u64, sqlstate: &str, message: &str, now: Clock) {
        let at = self
            .queue
            .iter()
            .position(|p| p.id >= mark)
            .unwrap_or(self.queue.len());
        let mut changed = false;
        for mut p in self.queue.drain(at..) {
            changed |= p.change != Change::None;
            p.change = Change::None;
            if matches!(p.req, Req::Query | Req::FunctionCall | Req::Execute) {
                p.refused = true;
                p.end_ns = now.mono_ns;
                p.error = Some(Box::new(Failure {
                    sqlstate: sqlstate.into(),
                    message: message.into(),
                }));
                self.done.push_back(p);
            }
        }
        if changed {
            // Never forwarded: their changes never happen. The newest
            // pending change to each name is now an older one, if any.
            self.pending_stmts.clear();
            self.pending_portals.clear();
            for i in 0..self.queue.len() {
                self.register(i);
            }
        }
    }

    /// The session ended: every request still unanswered gets a record
    /// marked incomplete.
    pub fn finish(&mut self, now: Clock) {
        while let Some(p) = self.queue.front_mut() {
            p.incomplete = true;
            self.complete_front(now);
        }
        self.dropped.clear();
    }

    /// The oldest finished record, if any.
    pub fn peek_record(&self) -> Option<StatementView<'_>> {
        let p = self.done.front()?;
        let (sqlstate, error_message) = match &p.error {
            Some(f) => (f.sqlstate.as_str(), f.message.as_str()),
            None => ("", ""),
        };
        let kind = if p.refused {
            AuditKind::PolicyDecision
        } else {
            p.req.audit_kind().expect("only recorded kinds are kept")
        };
        Some(StatementView {
            kind: kind as i32,
            decision: if p.refused {
                Decision::Deny
            } else {
                Decision::Allow
            } as i32,
            time_unix_nanos: p.start.unix_ns,
            sql: p.sql.as_str(),
            sql_truncated: p.sql.truncated,
            sql_bytes: p.sql.bytes,
            statement_kind: &p.sql.kind,
            statement_name: p.statement_name.as_deref().unwrap_or(""),
            portal_name: p.portal_name.as_deref().unwrap_or(""),
            parameter_count: p.param_count,
            parameter_lengths: p.params.as_deref().unwrap_or(&[]),
            parameters: p.values.as_deref().unwrap_or(&[]),
            masked: &p.masked,
            rows: p.rows + p.data_rows,
            bytes: p.bytes,
            duration_nanos: p.end_ns.saturating_sub(p.start.mono_ns),
            sqlstate,
            error_message,
            skipped: p.skipped,
            incomplete: p.incomplete,
        })
    }

    /// Drop the record [`Tracker::peek_record`] returned (it was stored).
    pub fn pop_record(&mut self) {
        self.done.pop_front();
    }
}

/// Row count of a command tag (`SELECT 5`, `INSERT 0 3`, `COPY 10`), if it
/// has one.
fn tag_rows(body: &[u8]) -> Option<u64> {
    let body = body.strip_suffix(&[0]).unwrap_or(body);
    let last = body.rsplit(|&b| b == b' ').next()?;
    if last.is_empty() || body.len() == last.len() || !last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::binval::numeric_bytes;
    use crate::protocol::frame::FrameScanner;

    /// A finished record, owned, for assertions.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    struct Rec {
        kind: i32,
        sql: String,
        truncated: bool,
        sql_bytes: u64,
        stmt: String,
        portal: String,
        params: (u32, Vec<i32>),
        values: Vec<Option<String>>,
        masked: Vec<(String, String, u64)>,
        rows: u64,
        sqlstate: String,
        skipped: bool,
        incomplete: bool,
    }

    fn rec(kind: AuditKind, sql: &str) -> Rec {
        Rec {
            kind: kind as i32,
            sql: sql.into(),
            sql_bytes: sql.len() as u64,
            ..Default::default()
        }
    }

    fn take(t: &mut Tracker) -> Vec<Rec> {
        let mut out = Vec::new();
        while let Some(v) = t.peek_record() {
            out.push(Rec {
                kind: v.kind,
                sql: v.sql.into(),
                truncated: v.sql_truncated,
                sql_bytes: v.sql_bytes,
                stmt: v.statement_name.into(),
                portal: v.portal_name.into(),
                params: (v.parameter_count, v.parameter_lengths.to_vec()),
                values: v
                    .parameters
                    .iter()
                    .map(|p| p.as_deref().map(String::from))
                    .collect(),
                masked: v
                    .masked
                    .iter()
                    .map(|m| (m.rule.to_string(), m.column.to_string(), m.count))
                    .collect(),
                rows: v.rows,
                sqlstate: v.sqlstate.into(),
                skipped: v.skipped,
                incomplete: v.incomplete,
            });
            t.pop_record();
        }
        out
    }

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &cstr(sql))
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = cstr(name);
        b.extend(cstr(sql));
        b.extend(0u16.to_be_bytes());
        msg(b'P', &b)
    }

    fn bind(portal: &str, stmt: &str, params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = cstr(portal);
        b.extend(cstr(stmt));
        b.extend(1u16.to_be_bytes());
        b.extend(0u16.to_be_bytes());
        b.extend((params.len() as u16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b.extend(0u16.to_be_bytes());
        msg(b'B', &b)
    }

    fn execute(portal: &str) -> Vec<u8> {
        let mut b = cstr(portal);
        b.extend(0i32.to_be_bytes());
        msg(b'E', &b)
    }

    fn describe_portal(portal: &str) -> Vec<u8> {
        let mut b = vec![b'P'];
        b.extend(cstr(portal));
        msg(b'D', &b)
    }

    fn close_stmt(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend(cstr(name));
        msg(b'C', &b)
    }

    fn sync() -> Vec<u8> {
        msg(b'S', b"")
    }

    fn complete(t: &str) -> Vec<u8> {
        msg(b'C', &cstr(t))
    }

    fn row() -> Vec<u8> {
        msg(b'D', &[0, 1, 0, 0, 0, 1, b'1'])
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn error(code: &str, m: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend(cstr("ERROR"));
        b.push(b'C');
        b.extend(cstr(code));
        b.push(b'M');
        b.extend(cstr(m));
        b.push(0);
        msg(b'E', &b)
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// Feed `client` then `target` bytes, cut into pieces at `cuts`.
    struct Session {
        t: Tracker,
        cs: FrameScanner,
        ts: FrameScanner,
        now: u64,
    }

    impl Session {
        fn new(max_sql: usize) -> Session {
            Session {
                t: Tracker::new(max_sql),
                cs: FrameScanner::new(1 << 30),
                ts: FrameScanner::new(1 << 30),
                now: 1000,
            }
        }

        fn clock(&mut self) -> Clock {
            self.now += 10;
            Clock {
                mono_ns: self.now,
                unix_ns: self.now as i64,
            }
        }

        fn client(&mut self, bytes: &[u8], chunk: usize) {
            for c in bytes.chunks(chunk.max(1)) {
                let now = self.clock();
                let t = &mut self.t;
                self.cs.scan_parts(c, |p| t.client_part(p, now)).unwrap();
            }
        }

        fn target(&mut self, bytes: &[u8], chunk: usize) {
            for c in bytes.chunks(chunk.max(1)) {
                let now = self.clock();
                let t = &mut self.t;
                self.ts.scan_parts(c, |p| t.target_part(p, now)).unwrap();
            }
        }
    }

    /// Run a request/response exchange with every chunk size from 1 byte
    /// up, checking the records are the same each time.
    fn exchange(max_sql: usize, steps: &[(&[u8], &[u8])]) -> Vec<Rec> {
        let mut first: Option<Vec<Rec>> = None;
        let longest = steps
            .iter()
            .map(|(c, t)| c.len().max(t.len()))
            .max()
            .unwrap_or(1);
        for chunk in (1..=longest.min(64)).chain([longest]) {
            let mut s = Session::new(max_sql);
            for (c, t) in steps {
                s.client(c, chunk);
                s.target(t, chunk);
            }
            let got = take(&mut s.t);
            assert_eq!(s.t.in_flight(), 0, "chunk {chunk}");
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(&got, f, "chunk size {chunk}"),
            }
        }
        first.unwrap()
    }

    #[test]
    fn simple_query() {
        let got = exchange(
            4096,
            &[(
                &query("select 1"),
                &cat(&[msg(b'T', b"\0\0"), row(), complete("SELECT 1"), ready()]),
            )],
        );
        let mut want = rec(AuditKind::Query, "select 1");
        want.rows = 1;
        assert_eq!(got, vec![want]);
    }

    #[test]
    fn outcome_times_and_bytes() {
        let mut s = Session::new(4096);
        s.client(&query("select 1"), 1000);
        let answer = cat(&[row(), complete("SELECT 1"), ready()]);
        s.target(&answer, 1000);
        let v = s.t.peek_record().unwrap();
        assert_eq!(v.time_unix_nanos, 1010);
        assert_eq!(v.duration_nanos, 10);
        assert_eq!(v.bytes, answer.len() as u64);
    }

    #[test]
    fn multi_statement_query_is_one_record_with_rows_summed() {
        let got = exchange(
            4096,
            &[(
                &query("insert into t values (1),(2); select * from t; show x; create table u()"),
                &cat(&[
                    complete("INSERT 0 2"),
                    msg(b'T', b"\0\0"),
                    row(),
                    row(),
                    complete("SELECT 2"),
                    msg(b'T', b"\0\0"),
                    row(),
                    complete("SHOW"),
                    complete("CREATE TABLE"),
                    ready(),
                ]),
            )],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rows, 5);
    }

    #[test]
    fn error_in_a_query_keeps_the_first_sqlstate() {
        let got = exchange(
            4096,
            &[
                (
                    &query("select 1/0; select 2"),
                    &cat(&[error("22012", "division by zero"), ready()]),
                ),
                (&query(""), &cat(&[msg(b'I', b""), ready()])),
            ],
        );
        let mut want = rec(AuditKind::Query, "select 1/0; select 2");
        want.sqlstate = "22012".into();
        assert_eq!(got, vec![want, rec(AuditKind::Query, "")]);
    }

    #[test]
    fn sql_is_capped_on_a_char_boundary() {
        let sql = format!("select '{}'", "é".repeat(20));
        let got = exchange(
            12,
            &[(&query(&sql), &cat(&[complete("SELECT 1"), ready()]))],
        );
        // "select 'é" is 10 bytes; the next é would end at 12... and one
        // more would pass the cap.
        assert_eq!(got[0].sql, "select 'éé");
        assert!(got[0].truncated);
        assert_eq!(got[0].sql_bytes, sql.len() as u64);
    }

    #[test]
    fn invalid_utf8_is_made_valid() {
        let mut b = b"select '".to_vec();
        b.extend([0xff, 0xfe]);
        b.extend(b"'\0");
        let got = exchange(
            4096,
            &[(&msg(b'Q', &b), &cat(&[complete("SELECT 1"), ready()]))],
        );
        assert_eq!(got[0].sql, "select '\u{fffd}\u{fffd}'");
    }

    #[test]
    fn extended_unnamed() {
        let client = cat(&[
            parse("", "select $1::int"),
            bind("", "", &[Some(b"42")]),
            describe_portal(""),
            execute(""),
            sync(),
        ]);
        let target = cat(&[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'T', b"\0\0"),
            row(),
            complete("SELECT 1"),
            ready(),
        ]);
        let got = exchange(4096, &[(&client, &target)]);
        let sql = "select $1::int";
        let mut b = rec(AuditKind::Bind, sql);
        b.params = (1, vec![2]);
        b.values = vec![Some("42".into())];
        let mut e = rec(AuditKind::Execute, sql);
        e.params = (1, vec![2]);
        e.values = vec![Some("42".into())];
        e.rows = 1;
        assert_eq!(got, vec![rec(AuditKind::Parse, sql), b, e]);
    }

    #[test]
    fn prepared_statement_executed_twice_by_name() {
        let sql = "select * from t where a = $1 and b = $2";
        let got = exchange(
            4096,
            &[
                (
                    &cat(&[parse("s1", sql), sync()]),
                    &cat(&[msg(b'1', b""), ready()]),
                ),
                (
                    &cat(&[bind("p1", "s1", &[Some(b"1"), None]), execute("p1"), sync()]),
                    &cat(&[msg(b'2', b""), row(), row(), complete("SELECT 2"), ready()]),
                ),
                (
                    &cat(&[
                        bind("", "s1", &[Some(&[7u8; 300]), Some(b"")]),
                        execute(""),
                        close_stmt("s1"),
                        sync(),
                    ]),
                    &cat(&[
                        msg(b'2', b""),
                        complete("SELECT 0"),
                        msg(b'3', b""),
                        ready(),
                    ]),
                ),
                // After Close the name is unknown: the record says so.
                (
                    &cat(&[bind("", "s1", &[]), execute(""), sync()]),
                    &cat(&[
                        error("26000", "prepared statement \"s1\" does not exist"),
                        ready(),
                    ]),
                ),
            ],
        );
        let kinds: Vec<i32> = got.iter().map(|r| r.kind).collect();
        use AuditKind::*;
        assert_eq!(
            kinds,
            [Parse, Bind, Execute, Bind, Execute, Bind, Execute].map(|k| k as i32)
        );
        assert_eq!((got[0].stmt.as_str(), got[0].sql.as_str()), ("s1", sql));
        assert_eq!(
            (got[2].stmt.as_str(), got[2].portal.as_str(), got[2].rows),
            ("s1", "p1", 2)
        );
        assert_eq!(got[2].params, (2, vec![1, -1]));
        assert_eq!(got[4].params, (2, vec![300, 0]));
        assert_eq!(got[4].sql, sql);
        assert_eq!((got[5].stmt.as_str(), got[5].sql.as_str()), ("s1", ""));
        assert_eq!(got[5].sqlstate, "26000");
        assert!(got[6].skipped && got[6].sqlstate.is_empty());
    }

    #[test]
    fn pipeline_error_skips_up_to_sync() {
        // Two pipelined batches; the first fails at its second Execute.
        let client = cat(&[
            parse("", "insert into t values (1)"),
            bind("", "", &[]),
            execute(""),
            parse("", "insert into t values ('x')"),
            bind("", "", &[]),
            execute(""),
            parse("", "select 3"),
            bind("", "", &[]),
            execute(""),
            sync(),
            parse("", "select 4"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]);
        let target = cat(&[
            msg(b'1', b""),
            msg(b'2', b""),
            complete("INSERT 0 1"),
            error("22P02", "invalid input syntax"),
            ready(),
            msg(b'1', b""),
            msg(b'2', b""),
            row(),
            complete("SELECT 1"),
            ready(),
        ]);
        let got = exchange(4096, &[(&client, &target)]);
        let summary: Vec<(i32, &str, bool, &str)> = got
            .iter()
            .map(|r| (r.kind, r.sql.as_str(), r.skipped, r.sqlstate.as_str()))
            .collect();
        use AuditKind::*;
        let i1 = "insert into t values (1)";
        let ix = "insert into t values ('x')";
        assert_eq!(
            summary,
            vec![
                (Parse as i32, i1, false, ""),
                (Bind as i32, i1, false, ""),
                (Execute as i32, i1, false, ""),
                (Parse as i32, ix, false, "22P02"),
                (Bind as i32, ix, true, ""),
                (Execute as i32, ix, true, ""),
                (Parse as i32, "select 3", true, ""),
                (Bind as i32, "select 3", true, ""),
                (Execute as i32, "select 3", true, ""),
                (Parse as i32, "select 4", false, ""),
                (Bind as i32, "select 4", false, ""),
                (Execute as i32, "select 4", false, ""),
            ]
        );
    }

    #[test]
    fn error_before_the_client_sent_the_rest_of_the_pipeline() {
        let mut s = Session::new(4096);
        s.client(&cat(&[parse("", "selec 1"), bind("", "", &[])]), 1000);
        s.target(&error("42601", "syntax error"), 1000);
        // Sent after the error arrived, before Sync: skipped too.
        s.client(&cat(&[execute(""), sync()]), 1000);
        s.target(&ready(), 1000);
        let got = take(&mut s.t);
        let flags: Vec<(i32, bool, &str)> = got
            .iter()
            .map(|r| (r.kind, r.skipped, r.sqlstate.as_str()))
            .collect();
        use AuditKind::*;
        assert_eq!(
            flags,
            [
                (Parse as i32, false, "42601"),
                (Bind as i32, true, ""),
                (Execute as i32, true, "")
            ]
        );
        // After the Sync, statements run again.
        s.client(&query("select 1"), 1000);
        s.target(&cat(&[complete("SELECT 1"), ready()]), 1000);
        assert!(!take(&mut s.t)[0].skipped);
    }

    #[test]
    fn portal_suspended_and_resumed() {
        let mut e1 = cat(&[bind("c1", "", &[])]);
        e1.extend({
            let mut b = cstr("c1");
            b.extend(2i32.to_be_bytes());
            msg(b'E', &b)
        });
        let got = exchange(
            4096,
            &[
                (
                    &cat(&[parse("", "select generate_series(1,3)"), e1, msg(b'H', b"")]),
                    &cat(&[msg(b'1', b""), msg(b'2', b""), row(), row(), msg(b's', b"")]),
                ),
                (
                    &cat(&[execute("c1"), sync()]),
                    &cat(&[row(), complete("SELECT 1"), ready()]),
                ),
            ],
        );
        let rows: Vec<(i32, u64, &str)> = got
            .iter()
            .map(|r| (r.kind, r.rows, r.portal.as_str()))
            .collect();
        use AuditKind::*;
        assert_eq!(
            rows,
            [
                (Parse as i32, 0, ""),
                (Bind as i32, 0, "c1"),
                (Execute as i32, 2, "c1"),
                (Execute as i32, 1, "c1")
            ]
        );
    }

    #[test]
    fn copy_in_and_out() {
        let got = exchange(
            4096,
            &[
                (&query("copy t from stdin"), &msg(b'G', &[0, 0, 0])),
                (
                    &cat(&[msg(b'd', b"1\n2\n"), msg(b'd', b"3\n"), msg(b'c', b"")]),
                    &cat(&[complete("COPY 3"), ready()]),
                ),
                (
                    &query("copy t to stdout"),
                    &cat(&[
                        msg(b'H', &[0, 0, 0]),
                        msg(b'd', b"1\n"),
                        msg(b'd', b"2\n"),
                        msg(b'c', b""),
                        complete("COPY 2"),
                        ready(),
                    ]),
                ),
                (&query("copy t from stdin"), &msg(b'G', &[0, 0, 0])),
                (
                    &msg(b'f', &cstr("client gave up")),
                    &cat(&[error("57014", "COPY from stdin failed"), ready()]),
                ),
            ],
        );
        let rows: Vec<(u64, &str)> = got.iter().map(|r| (r.rows, r.sqlstate.as_str())).collect();
        assert_eq!(rows, [(3, ""), (2, ""), (0, "57014")]);
    }

    #[test]
    fn unanswered_requests_are_incomplete_at_the_end() {
        let mut s = Session::new(4096);
        s.client(&cat(&[query("select pg_sleep(10)"), parse("", "x")]), 1000);
        s.t.finish(Clock::default());
        let got = take(&mut s.t);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.incomplete));
    }

    #[test]
    fn notices_and_parameter_status_count_only_bytes() {
        let got = exchange(
            4096,
            &[(
                &query("set application_name = 'x'"),
                &cat(&[
                    msg(b'N', &cstr("Snotice")),
                    msg(b'S', &cat(&[cstr("application_name"), cstr("x")])),
                    complete("SET"),
                    ready(),
                ]),
            )],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rows, 0);
    }

    #[test]
    fn function_call_is_recorded() {
        let mut b = 1234u32.to_be_bytes().to_vec();
        b.extend([0, 0, 0, 0, 0, 0]);
        let got = exchange(
            4096,
            &[(&msg(b'F', &b), &cat(&[msg(b'V', &[0, 0, 0, 0]), ready()]))],
        );
        assert_eq!(got[0].sql, "-- function call (fastpath), oid 1234");
    }

    #[test]
    fn large_bind_parameters_stream_through() {
        let big = vec![b'x'; 200_000];
        let got = exchange(
            4096,
            &[(
                &cat(&[
                    parse("", "insert into t values ($1, $2)"),
                    bind("", "", &[Some(&big), None]),
                    execute(""),
                    sync(),
                ]),
                &cat(&[
                    msg(b'1', b""),
                    msg(b'2', b""),
                    complete("INSERT 0 1"),
                    ready(),
                ]),
            )],
        );
        assert_eq!(got[2].params, (2, vec![200_000, -1]));
        assert_eq!(got[2].rows, 1);
    }

    #[test]
    fn listed_parameter_lengths_are_capped() {
        let params: Vec<Option<&[u8]>> = (0..1000).map(|_| Some(&b"ab"[..])).collect();
        let got = exchange(
            4096,
            &[(
                &cat(&[parse("", "x"), bind("", "", &params), sync()]),
                &cat(&[msg(b'1', b""), msg(b'2', b""), ready()]),
            )],
        );
        assert_eq!(got[1].params.0, 1000);
        assert_eq!(got[1].params.1.len(), MAX_LISTED_PARAMS);
    }

    fn masking_session(max_sql: usize) -> Session {
        let mut s = Session::new(max_sql);
        s.t.set_masking(Engine::compile_shared(&crate::mask::MaskingProfile::default()).unwrap());
        s
    }

    /// A Bind with every parameter in `format`.
    fn bind_fmt(format: i16, params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = cstr("");
        b.extend(cstr(""));
        b.extend(1u16.to_be_bytes());
        b.extend(format.to_be_bytes());
        b.extend((params.len() as u16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b.extend(0u16.to_be_bytes());
        msg(b'B', &b)
    }

    fn parse_typed(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
        let mut b = cstr(name);
        b.extend(cstr(sql));
        b.extend((types.len() as u16).to_be_bytes());
        for t in types {
            b.extend(t.to_be_bytes());
        }
        msg(b'P', &b)
    }

    fn describe_stmt(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend(cstr(name));
        msg(b'D', &b)
    }

    fn parameter_description(types: &[u32]) -> Vec<u8> {
        let mut b = (types.len() as u16).to_be_bytes().to_vec();
        for t in types {
            b.extend(t.to_be_bytes());
        }
        msg(b't', &b)
    }

    #[test]
    fn typed_values_share_the_bind_budget_as_printed() {
        // 8 bytes that print as 5002 characters: hex. 10 bytes that print
        // as 21 (1e20): read until the printed budget (48) is spent.
        let huge = numeric_bytes(&[], 1000, false, 1000);
        let big = numeric_bytes(&[1], 5, false, 0);
        let mut s = masking_session(48);
        s.client(
            &cat(&[
                parse_typed("", "select $1, $2, $3, $4", &[1700, 1700, 1700, 1700]),
                bind_fmt(1, &[Some(&huge), Some(&big), Some(&big), Some(&big)]),
                execute(""),
                sync(),
            ]),
            4096,
        );
        s.target(
            &cat(&[
                msg(b'1', b""),
                msg(b'2', b""),
                complete("SELECT 0"),
                ready(),
            ]),
            4096,
        );
        let got = take(&mut s.t);
        let exec = got
            .iter()
            .find(|r| r.kind == AuditKind::Execute as i32)
            .unwrap();
        let v: Vec<&str> = exec.values.iter().map(|x| x.as_deref().unwrap()).collect();
        assert!(v[0].starts_with("\\x") && v[0].len() < 40, "{v:?}");
        assert_eq!(v[1], format!("1{}", "0".repeat(20)));
        assert_eq!(v[2], v[1]);
        // 6 bytes of room left: it would print longer, so hex.
        assert!(v[3].starts_with("\\x"), "{v:?}");
    }

    #[test]
    fn parameter_types_land_on_the_statement_described_even_if_replaced() {
        let mut s = masking_session(4096);
        s.client(
            &cat(&[
                parse("", "select $1::int8"),
                describe_stmt(""),
                parse("", "select $1::bytea"),
                sync(),
            ]),
            4096,
        );
        s.target(
            &cat(&[
                msg(b'1', b""),
                parameter_description(&[20]),
                msg(b'n', b""),
                msg(b'1', b""),
                ready(),
            ]),
            4096,
        );
        s.client(
            &cat(&[
                bind_fmt(1, &[Some(&[0, 0, 0, 0, 0, 0, 0, 9])]),
                execute(""),
                sync(),
            ]),
            4096,
        );
        s.target(&cat(&[msg(b'2', b""), complete("SELECT 1"), ready()]), 4096);
        let got = take(&mut s.t);
        let exec = got
            .iter()
            .find(|r| r.kind == AuditKind::Execute as i32)
            .unwrap();
        // The bytea statement was never described: its value stays hex.
        assert_eq!(exec.values[0].as_deref(), Some("\\x0000000000000009"));
    }

    #[test]
    fn binary_values_are_read_by_their_type_and_masked() {
        let card: i64 = 4111_1111_1111_1111;
        let card_num = numeric_bytes(&[4111, 1111, 1111, 1111], 3, false, 0);
        let mut json = vec![1u8];
        json.extend_from_slice(br#"{"mail": "ann@example.com", "n": 1}"#);
        for chunk in [1, 5, 4096] {
            // Types from the Parse (named statement), and from the
            // ParameterDescription answering a Describe (unnamed one).
            let mut s = masking_session(4096);
            s.client(
                &cat(&[
                    parse_typed(
                        "s1",
                        "insert into t values ($1, $2, $3, $4)",
                        &[20, 1700, 3802, 23],
                    ),
                    parse("", "select $1, $2"),
                    describe_stmt(""),
                    sync(),
                ]),
                chunk,
            );
            s.target(
                &cat(&[
                    msg(b'1', b""),
                    msg(b'1', b""),
                    parameter_description(&[20, 1184]),
                    msg(b'n', b""),
                    ready(),
                ]),
                chunk,
            );
            let mut b1 = cstr("");
            b1.extend(cstr("s1"));
            b1.extend(1u16.to_be_bytes());
            b1.extend(1i16.to_be_bytes());
            b1.extend(4u16.to_be_bytes());
            for v in [
                &card.to_be_bytes()[..],
                &card_num,
                &json,
                &7i32.to_be_bytes(),
            ] {
                b1.extend((v.len() as i32).to_be_bytes());
                b1.extend_from_slice(v);
            }
            b1.extend(0u16.to_be_bytes());
            s.client(
                &cat(&[
                    msg(b'B', &b1),
                    execute(""),
                    bind_fmt(
                        1,
                        &[Some(&card.to_be_bytes()), Some(&[0, 0, 0, 0, 0, 0, 0, 9])],
                    ),
                    execute(""),
                    sync(),
                ]),
                chunk,
            );
            s.target(
                &cat(&[
                    msg(b'2', b""),
                    complete("INSERT 0 1"),
                    msg(b'2', b""),
                    row(),
                    complete("SELECT 1"),
                    ready(),
                ]),
                chunk,
            );
            let got = take(&mut s.t);
            let execs: Vec<&Rec> = got
                .iter()
                .filter(|r| r.kind == AuditKind::Execute as i32)
                .collect();
            assert_eq!(execs.len(), 2, "chunk {chunk}: {got:?}");
            let v = &execs[0].values;
            for x in &v[..2] {
                let x = x.as_deref().unwrap();
                assert!(
                    x.len() == 16 && !x.contains("41111111") && x.ends_with("1111"),
                    "{x}"
                );
            }
            let j = v[2].as_deref().unwrap();
            assert!(
                j.starts_with(r#"{"mail": ""#) && !j.contains("ann@example.com"),
                "{j}"
            );
            assert_eq!(v[3].as_deref(), Some("7"));
            let v = &execs[1].values;
            let x = v[0].as_deref().unwrap();
            assert!(x.len() == 16 && !x.contains("41111111"), "{x}");
            // A timestamptz, typed by the ParameterDescription.
            assert_eq!(v[1].as_deref(), Some("2000-01-01 00:00:00.000009+00"));
        }
    }

    #[test]
    fn unread_binary_values_are_masked_as_bytes_before_hex() {
        // A bytea (not read as text) holding a card number in ASCII
        // between non-printable bytes.
        let mut v = vec![0u8, 1];
        v.extend_from_slice(b"4111111111111111");
        v.push(0);
        let mut card_hex = Vec::new();
        crate::protocol::hex_into(&mut card_hex, b"41111111");
        let card_hex = String::from_utf8(card_hex).unwrap();
        for chunk in [1, 7, 4096] {
            let mut s = masking_session(4096);
            s.client(
                &cat(&[
                    parse_typed("", "select $1", &[17]),
                    bind_fmt(1, &[Some(&v)]),
                    execute(""),
                    sync(),
                ]),
                chunk,
            );
            s.target(
                &cat(&[
                    msg(b'1', b""),
                    msg(b'2', b""),
                    row(),
                    complete("SELECT 1"),
                    ready(),
                ]),
                chunk,
            );
            let got = take(&mut s.t);
            let exec = got
                .iter()
                .find(|r| r.kind == AuditKind::Execute as i32)
                .unwrap();
            let x = exec.values[0].as_deref().unwrap();
            assert!(
                x.starts_with("\\x0001") && x.len() == 2 + 2 * v.len(),
                "{x}"
            );
            assert!(!x.contains(&card_hex), "chunk {chunk}: {x}");
        }
    }

    #[test]
    fn bind_values_and_sql_are_recorded_masked() {
        for chunk in [1, 3, 7, 4096] {
            let mut s = masking_session(64);
            s.client(
                &cat(&[
                    query("select '4111 1111 1111 1111' as card"),
                    parse("", "insert into t values ($1, $2, $3, $4)"),
                    bind(
                        "",
                        "",
                        &[Some(b"4111 1111 1111 1111"), None, Some(b""), Some(b"bob")],
                    ),
                    bind_fmt(1, &[Some(&[0, 0, 0, 42]), Some(b"mail ann@example.com")]),
                    bind_fmt(0, &[Some(&[b'y'; 100])]),
                    sync(),
                ]),
                chunk,
            );
            s.target(
                &cat(&[
                    complete("SELECT 1"),
                    ready(),
                    msg(b'1', b""),
                    msg(b'2', b""),
                    msg(b'2', b""),
                    msg(b'2', b""),
                    ready(),
                ]),
                chunk,
            );
            let got = take(&mut s.t);
            assert_eq!(got.len(), 5, "chunk {chunk}");
            assert!(!got[0].sql.contains("4111"), "{}", got[0].sql);
            assert!(got[0].sql.starts_with("select '"), "{}", got[0].sql);
            assert_eq!(
                got[0].sql.len(),
                "select '4111 1111 1111 1111' as card".len()
            );
            let card = got[2].values[0].clone().unwrap();
            assert!(!card.contains("4111") && card.len() == 19, "{card}");
            assert_eq!(
                got[2].values[1..],
                [None, Some(String::new()), Some("bob".into())]
            );
            assert_eq!(got[3].values[0].as_deref(), Some("\\x0000002a"));
            let mail = got[3].values[1].clone().unwrap();
            assert!(
                mail.starts_with("mail ") && !mail.contains("ann@example.com"),
                "{mail}"
            );
            // All values of a Bind share max_sql bytes.
            assert_eq!(got[4].values, [Some(format!("{}…", "y".repeat(64)))]);
        }
    }

    /// SQL texts and Bind values longer than `max_sql`: a card or a
    /// whole-value token that the cut splits is masked as the whole value
    /// it was, not kept in part.
    #[test]
    fn sql_cut_inside_a_value_keeps_only_its_masked_part() {
        let b62 = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789".repeat(3);
        let vault = format!("hv{}.CAESIJ{}", "s", &b62[..90]);
        for sql in [
            format!("insert into t values ('k', '{vault}')"),
            format!("select '{} card 4111 1111 1111 1111' as c", "x".repeat(40)),
        ] {
            let mut s = masking_session(64);
            s.client(&cat(&[query(&sql)]), 4096);
            s.target(&cat(&[complete("INSERT 0 1"), ready()]), 4096);
            let got = take(&mut s.t);
            let text = &got[0].sql;
            assert!(text.len() <= 64 && text.len() >= 40, "{text}");
            assert!(!text.contains("CAESIJ") && !text.contains("4111"), "{text}");
            assert!(sql.starts_with(&text[..20]), "{text}");
        }
        // A Bind value the budget cuts inside a card.
        let v = format!("{} 4111 1111 1111 1111", "x".repeat(50));
        let kept = bound_under_64(
            parse("", "insert into t values ($1)"),
            bind("", "", &[Some(v.as_bytes())]),
        )[0]
        .clone()
        .unwrap();
        assert!(
            kept.starts_with(&"x".repeat(50)) && kept.ends_with('…'),
            "{kept}"
        );
        assert!(
            !kept.contains("4111") && kept.len() <= 64 + '…'.len_utf8(),
            "{kept}"
        );
    }

    /// The values recorded for `bind` (after `parse`, then a Sync, all
    /// answered) with `max_sql` 64.
    fn bound_under_64(parse: Vec<u8>, bind: Vec<u8>) -> Vec<Option<String>> {
        let mut s = masking_session(64);
        s.client(&cat(&[parse, bind, sync()]), 4096);
        s.target(&cat(&[msg(b'1', b""), msg(b'2', b""), ready()]), 4096);
        take(&mut s.t)[1].values.to_vec()
    }

    /// A text-like value sent in binary with its type known (text,
    /// varchar, jsonb: what drivers such as tokio-postgres send) that the
    /// Bind budget cuts inside a card: masked whole before the cut too.
    #[test]
    fn binary_text_bind_value_cut_inside_a_card_is_masked_whole() {
        let card = format!("{} 4111 1111 1111 1111", "x".repeat(50));
        let json = format!("\x01{{\"k\": \"{} 4111 1111 1111 1111\"}}", "x".repeat(44));
        for (oid, v) in [(25u32, card.clone()), (1043, card.clone()), (3802, json)] {
            let kept = bound_under_64(
                parse_typed("", "insert into t values ($1)", &[oid]),
                bind_fmt(1, &[Some(v.as_bytes())]),
            )[0]
            .clone()
            .unwrap();
            assert!(
                kept.ends_with('\u{2026}') && kept.contains("xxxx"),
                "{oid}: {kept}"
            );
            assert!(!kept.contains("4111"), "{oid}: {kept}");
        }
    }

    /// A card number sent as a binary int8 that the Bind budget cuts
    /// (the whole value is in the walker's slack): printed, masked and cut
    /// to the room, not the hex of its first bytes (`\\x000e9b08…` would
    /// tell the card's first six digits: 0x000e9b08 << 32 = 4111106…).
    #[test]
    fn binary_int8_card_cut_by_the_budget_is_not_spelled_in_hex() {
        let card: i64 = 4111111111111111;
        let pad = "x".repeat(60);
        let kept = bound_under_64(
            parse_typed("", "insert into t values ($1, $2)", &[25, 20]),
            bind_fmt(1, &[Some(pad.as_bytes()), Some(&card.to_be_bytes())]),
        )[1]
        .clone()
        .unwrap();
        assert!(!kept.starts_with("\\x") && !kept.contains("4111"), "{kept}");
    }

    #[test]
    fn masked_counts_go_to_the_statement_whose_rows_they_were_in() {
        let mut s = Session::new(4096);
        s.client(
            &cat(&[
                parse("", "select a"),
                bind("", "", &[]),
                execute(""),
                parse("", "select b"),
                bind("", "", &[]),
                execute(""),
                sync(),
            ]),
            4096,
        );
        s.target(&cat(&[msg(b'1', b""), msg(b'2', b""), row()]), 4096);
        s.t.target_masked("email", "contact", 1);
        s.target(&row(), 4096);
        s.t.target_masked("email", "contact", 2);
        s.t.target_masked("payment_card", "note", 1);
        s.target(&complete("SELECT 2"), 4096);
        s.target(&cat(&[msg(b'1', b""), msg(b'2', b"")]), 4096);
        s.t.target_masked("email", "contact", 5);
        s.target(&cat(&[row(), complete("SELECT 1"), ready()]), 4096);
        let got = take(&mut s.t);
        let masked: Vec<_> = got.iter().map(|r| r.masked.clone()).collect();
        let e = |r: &str, c: &str, n| (r.to_string(), c.to_string(), n);
        assert_eq!(
            masked,
            [
                vec![],
                vec![],
                vec![e("email", "contact", 3), e("payment_card", "note", 1)],
                vec![],
                vec![],
                vec![e("email", "contact", 5)],
            ]
        );
    }

    #[test]
    fn refused_requests_become_policy_decisions() {
        let mut s = Session::new(4096);
        s.client(&query("select 1"), 4096);
        s.target(&cat(&[complete("SELECT 1"), ready()]), 4096);
        let mark = s.t.mark();
        s.client(
            &cat(&[
                query("delete from t"),
                parse("", "select $1"),
                bind("", "", &[Some(b"1")]),
                execute(""),
                sync(),
            ]),
            5,
        );
        let now = s.clock();
        s.t.refuse_since(mark, "42501", "permission revoked: grant removed", now);
        assert_eq!(s.t.in_flight(), 0);
        let mut kinds = Vec::new();
        while let Some(v) = s.t.peek_record() {
            kinds.push((
                v.kind,
                v.decision,
                v.sql.to_string(),
                v.sqlstate.to_string(),
            ));
            s.t.pop_record();
        }
        let deny = |sql: &str| {
            (
                AuditKind::PolicyDecision as i32,
                Decision::Deny as i32,
                sql.to_string(),
                "42501".to_string(),
            )
        };
        assert_eq!(
            kinds,
            [
                (
                    AuditKind::Query as i32,
                    Decision::Allow as i32,
                    "select 1".to_string(),
                    String::new()
                ),
                deny("delete from t"),
                deny("select $1"),
            ]
        );
    }

    fn close_portal(name: &str) -> Vec<u8> {
        let mut b = vec![b'P'];
        b.extend(cstr(name));
        msg(b'C', &b)
    }

    /// (kind, SQL, skipped, SQLSTATE) of each record.
    fn outline(got: &[Rec]) -> Vec<(AuditKind, &str, bool, &str)> {
        got.iter()
            .map(|r| {
                (
                    AuditKind::try_from(r.kind).unwrap(),
                    r.sql.as_str(),
                    r.skipped,
                    r.sqlstate.as_str(),
                )
            })
            .collect()
    }

    /// Parse "s1" as `select 1`, confirmed.
    fn prepared_s1() -> (Vec<u8>, Vec<u8>) {
        (
            cat(&[parse("s1", "select 1"), sync()]),
            cat(&[msg(b'1', b""), ready()]),
        )
    }

    /// Bind "" to "s1", Execute it, Sync; answered with one row.
    fn run_s1() -> (Vec<u8>, Vec<u8>) {
        (
            cat(&[bind("", "s1", &[]), execute(""), sync()]),
            cat(&[msg(b'2', b""), row(), complete("SELECT 1"), ready()]),
        )
    }

    #[test]
    fn a_rejected_duplicate_parse_keeps_the_original_statement() {
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let (c2, t2) = run_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[
                        parse("s1", "select 2"),
                        bind("", "s1", &[]),
                        execute(""),
                        sync(),
                    ]),
                    &cat(&[
                        error("42P05", "prepared statement \"s1\" already exists"),
                        ready(),
                    ]),
                ),
                (&c2, &t2),
            ],
        );
        assert_eq!(
            outline(&got),
            [
                (Parse, "select 1", false, ""),
                (Parse, "select 2", false, "42P05"),
                // Skipped: what the client sent, as it meant it.
                (Bind, "select 2", true, ""),
                (Execute, "select 2", true, ""),
                // What PostgreSQL ran.
                (Bind, "select 1", false, ""),
                (Execute, "select 1", false, ""),
            ]
        );
        assert_eq!(got[5].stmt, "s1");
        assert_eq!(got[5].rows, 1);
    }

    #[test]
    fn a_parse_with_a_syntax_error_keeps_the_old_named_statement() {
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let (c2, t2) = run_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[parse("s1", "selec 2"), sync()]),
                    &cat(&[error("42601", "syntax error"), ready()]),
                ),
                (&c2, &t2),
            ],
        );
        assert_eq!(
            outline(&got)[1..],
            [
                (Parse, "selec 2", false, "42601"),
                (Bind, "select 1", false, ""),
                (Execute, "select 1", false, "")
            ]
        );
    }

    #[test]
    fn a_failed_parse_of_the_unnamed_statement_leaves_none() {
        // PostgreSQL drops the unnamed statement before parsing the next.
        use AuditKind::*;
        let got = exchange(
            4096,
            &[
                (
                    &cat(&[parse("", "select 1"), sync()]),
                    &cat(&[msg(b'1', b""), ready()]),
                ),
                (
                    &cat(&[parse("", "selec 2"), sync()]),
                    &cat(&[error("42601", "syntax error"), ready()]),
                ),
                (
                    &cat(&[bind("", "", &[]), execute(""), sync()]),
                    &cat(&[
                        error("26000", "unnamed prepared statement does not exist"),
                        ready(),
                    ]),
                ),
            ],
        );
        assert_eq!(
            outline(&got)[2..],
            [(Bind, "", false, "26000"), (Execute, "", true, "")]
        );
    }

    #[test]
    fn a_pipeline_after_an_error_changes_nothing() {
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let (c2, t2) = run_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[
                        bind("", "nosuch", &[]),
                        close_stmt("s1"),
                        parse("s1", "select 2"),
                        bind("p1", "s1", &[]),
                        execute("p1"),
                        sync(),
                    ]),
                    &cat(&[
                        error("26000", "prepared statement \"nosuch\" does not exist"),
                        ready(),
                    ]),
                ),
                (&c2, &t2),
                // Portal p1 was never made either.
                (
                    &cat(&[execute("p1"), sync()]),
                    &cat(&[error("34000", "portal \"p1\" does not exist"), ready()]),
                ),
            ],
        );
        assert_eq!(
            outline(&got),
            [
                (Parse, "select 1", false, ""),
                (Bind, "", false, "26000"),
                (Parse, "select 2", true, ""),
                (Bind, "select 2", true, ""),
                (Execute, "select 2", true, ""),
                (Bind, "select 1", false, ""),
                (Execute, "select 1", false, ""),
                (Execute, "", false, "34000"),
            ]
        );
    }

    #[test]
    fn a_close_skipped_after_an_error_keeps_the_statement() {
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let (c2, t2) = run_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[execute("nosuch"), close_stmt("s1"), sync()]),
                    &cat(&[error("34000", "portal \"nosuch\" does not exist"), ready()]),
                ),
                (&c2, &t2),
            ],
        );
        assert_eq!(
            outline(&got)[2..],
            [
                (Bind, "select 1", false, ""),
                (Execute, "select 1", false, "")
            ]
        );
    }

    #[test]
    fn a_confirmed_close_forgets_the_statement_and_the_portal() {
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[bind("p1", "s1", &[]), sync()]),
                    &cat(&[msg(b'2', b""), ready()]),
                ),
                (
                    &cat(&[close_stmt("s1"), close_portal("p1"), sync()]),
                    &cat(&[msg(b'3', b""), msg(b'3', b""), ready()]),
                ),
                (
                    &cat(&[execute("p1"), bind("", "s1", &[]), sync()]),
                    &cat(&[error("34000", "portal \"p1\" does not exist"), ready()]),
                ),
            ],
        );
        assert_eq!(
            outline(&got),
            [
                (Parse, "select 1", false, ""),
                (Bind, "select 1", false, ""),
                (Execute, "", false, "34000"),
                (Bind, "", true, ""),
            ]
        );
    }

    #[test]
    fn a_pipeline_sees_its_own_pending_changes() {
        // Close, Parse again, Bind and Execute in one pipeline: each sees
        // what the ones before it did, as PostgreSQL runs them.
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let (c2, t2) = run_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[
                        close_stmt("s1"),
                        parse("s1", "select 2"),
                        bind("p1", "s1", &[Some(b"7")]),
                        execute("p1"),
                        close_portal("p1"),
                        sync(),
                    ]),
                    &cat(&[
                        msg(b'3', b""),
                        msg(b'1', b""),
                        msg(b'2', b""),
                        row(),
                        complete("SELECT 1"),
                        msg(b'3', b""),
                        ready(),
                    ]),
                ),
                (&c2, &t2),
            ],
        );
        assert_eq!(
            outline(&got),
            [
                (Parse, "select 1", false, ""),
                (Parse, "select 2", false, ""),
                (Bind, "select 2", false, ""),
                (Execute, "select 2", false, ""),
                (Bind, "select 2", false, ""),
                (Execute, "select 2", false, ""),
            ]
        );
        assert_eq!(got[3].values, [Some("7".to_string())]);
        assert_eq!((got[3].portal.as_str(), got[3].stmt.as_str()), ("p1", "s1"));
    }

    #[test]
    fn requests_past_a_sync_look_again_when_a_pending_change_fails() {
        // One write: a duplicate Parse, Sync, then Bind and Execute of the
        // name. The duplicate fails; what runs past the Sync is the
        // original statement.
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[
                        parse("s1", "select 2"),
                        describe_stmt("s1"),
                        sync(),
                        bind("", "s1", &[]),
                        execute(""),
                        sync(),
                    ]),
                    &cat(&[
                        error("42P05", "prepared statement \"s1\" already exists"),
                        ready(),
                        msg(b'2', b""),
                        row(),
                        complete("SELECT 1"),
                        ready(),
                    ]),
                ),
            ],
        );
        assert_eq!(
            outline(&got),
            [
                (Parse, "select 1", false, ""),
                (Parse, "select 2", false, "42P05"),
                (Bind, "select 1", false, ""),
                (Execute, "select 1", false, ""),
            ]
        );
    }

    #[test]
    fn a_simple_query_drops_the_unnamed_statement_and_portal() {
        use AuditKind::*;
        let got = exchange(
            4096,
            &[
                (
                    &cat(&[parse("", "select 1"), bind("", "", &[]), sync()]),
                    &cat(&[msg(b'1', b""), msg(b'2', b""), ready()]),
                ),
                (
                    &query("select 9"),
                    &cat(&[row(), complete("SELECT 1"), ready()]),
                ),
                (
                    &cat(&[execute(""), bind("", "", &[]), sync()]),
                    &cat(&[error("34000", "portal \"\" does not exist"), ready()]),
                ),
            ],
        );
        assert_eq!(
            outline(&got)[2..],
            [
                (Query, "select 9", false, ""),
                (Execute, "", false, "34000"),
                (Bind, "", true, ""),
            ]
        );
    }

    #[test]
    fn portals_live_until_their_transaction_ends() {
        // Inside BEGIN (ReadyForQuery 'T') a named portal outlives a Sync;
        // at COMMIT (ReadyForQuery 'I') PostgreSQL drops it, and an
        // Execute of it after that ran nothing (34000), with no SQL.
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let in_xact = msg(b'Z', b"T");
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (&query("begin"), &cat(&[complete("BEGIN"), in_xact.clone()])),
                (
                    &cat(&[bind("p1", "s1", &[]), sync()]),
                    &cat(&[msg(b'2', b""), in_xact.clone()]),
                ),
                (
                    &cat(&[execute("p1"), sync()]),
                    &cat(&[row(), complete("SELECT 1"), in_xact.clone()]),
                ),
                (&query("commit"), &cat(&[complete("COMMIT"), ready()])),
                (
                    &cat(&[execute("p1"), sync()]),
                    &cat(&[error("34000", "portal \"p1\" does not exist"), ready()]),
                ),
            ],
        );
        assert_eq!(
            outline(&got),
            [
                (Parse, "select 1", false, ""),
                (Query, "begin", false, ""),
                (Bind, "select 1", false, ""),
                (Execute, "select 1", false, ""),
                (Query, "commit", false, ""),
                (Execute, "", false, "34000"),
            ]
        );
    }

    #[test]
    fn no_portal_is_kept_past_its_transaction() {
        // (A client that names every portal anew and never closes them
        // leaves nothing to pile up in the tracker.)
        let (c0, t0) = prepared_s1();
        let mut s = Session::new(4096);
        s.client(&c0, 4096);
        s.target(&t0, 4096);
        for i in 0..100 {
            s.client(&cat(&[bind(&format!("p{i}"), "s1", &[]), sync()]), 4096);
            s.target(&cat(&[msg(b'2', b""), ready()]), 4096);
        }
        s.client(&cat(&[bind("", "s1", &[]), sync()]), 4096);
        s.target(&cat(&[msg(b'2', b""), ready()]), 4096);
        assert!(s.t.portals.is_empty() && s.t.unnamed_portal.is_none());
        s.client(&cat(&[bind("p1", "s1", &[]), sync()]), 4096);
        s.target(&cat(&[msg(b'2', b""), msg(b'Z', b"T")]), 4096);
        assert_eq!(s.t.portals.len(), 1, "kept inside a transaction block");
    }

    #[test]
    fn an_execute_pipelined_past_the_end_of_its_portals_transaction_finds_none() {
        // One write: Bind p1, Sync, Execute p1, Bind p2, Execute p2, Sync.
        // The first Sync ends the implicit transaction and p1 with it; p2,
        // bound after it, runs.
        use AuditKind::*;
        let (c0, t0) = prepared_s1();
        let got = exchange(
            4096,
            &[
                (&c0, &t0),
                (
                    &cat(&[
                        bind("p1", "s1", &[]),
                        sync(),
                        execute("p1"),
                        sync(),
                        bind("p2", "s1", &[]),
                        execute("p2"),
                        sync(),
                    ]),
                    &cat(&[
                        msg(b'2', b""),
                        ready(),
                        error("34000", "portal \"p1\" does not exist"),
                        ready(),
                        msg(b'2', b""),
                        row(),
                        complete("SELECT 1"),
                        ready(),
                    ]),
                ),
            ],
        );
        assert_eq!(
            outline(&got),
            [
                (Parse, "select 1", false, ""),
                (Bind, "select 1", false, ""),
                (Execute, "", false, "34000"),
                (Bind, "select 1", false, ""),
                (Execute, "select 1", false, ""),
            ]
        );
    }

    #[test]
    fn refused_requests_change_nothing() {
        let mut s = Session::new(4096);
        s.client(&cat(&[parse("s1", "select 1"), sync()]), 4096);
        let mark = s.t.mark();
        s.client(
            &cat(&[close_stmt("s1"), parse("s1", "select 2"), sync()]),
            4096,
        );
        let now = s.clock();
        s.t.refuse_since(mark, "42501", "permission revoked", now);
        // Before the first Parse is answered, a Bind sees it.
        s.client(&cat(&[bind("", "s1", &[]), execute(""), sync()]), 4096);
        s.target(
            &cat(&[
                msg(b'1', b""),
                ready(),
                msg(b'2', b""),
                complete("SELECT 1"),
                ready(),
            ]),
            4096,
        );
        let got = take(&mut s.t);
        let sql: Vec<&str> = got.iter().map(|r| r.sql.as_str()).collect();
        assert_eq!(sql, ["select 1", "select 1", "select 1"]);
    }

    #[test]
    fn tags() {
        assert_eq!(tag_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(tag_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(tag_rows(b"CREATE TABLE\0"), None);
        assert_eq!(tag_rows(b"5\0"), None);
        assert_eq!(tag_rows(b"\0"), None);
    }

    /// A client message for the model test: statement and portal names
    /// from a small set, so they collide.
    #[derive(Debug, Clone)]
    enum Step {
        Parse(&'static str, &'static str),
        Bind(&'static str, &'static str),
        Describe(&'static str),
        Execute(&'static str),
        CloseStmt(&'static str),
        ClosePortal(&'static str),
        Query,
        Sync,
    }

    fn step_strategy() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let name = || prop::sample::select(vec!["", "a", "b"]);
        let sql = prop::sample::select(vec!["select 1", "select 2", "select 3", "selec bad"]);
        prop_oneof![
            4 => (name(), sql).prop_map(|(n, q)| Step::Parse(n, q)),
            4 => (name(), name()).prop_map(|(p, s)| Step::Bind(p, s)),
            1 => name().prop_map(Step::Describe),
            4 => name().prop_map(Step::Execute),
            1 => name().prop_map(Step::CloseStmt),
            1 => name().prop_map(Step::ClosePortal),
            1 => Just(Step::Query),
            3 => Just(Step::Sync),
        ]
    }

    /// What PostgreSQL answers to `steps`, each step's answer apart
    /// (empty: skipped after an error), and for each Bind and Execute run
    /// or refused, the SQL its record must carry (`None`: skipped).
    fn postgres_model(steps: &[Step]) -> (Vec<Vec<u8>>, Vec<Option<String>>) {
        let mut stmts: HashMap<&str, &str> = HashMap::new();
        let mut portals: HashMap<&str, &str> = HashMap::new();
        let mut failed = false;
        let mut answers = Vec::new();
        let mut want = Vec::new();
        for s in steps {
            if failed && !matches!(s, Step::Sync) {
                answers.push(Vec::new());
                if matches!(s, Step::Bind(..) | Step::Execute(_)) {
                    want.push(None);
                }
                continue;
            }
            let answer = match *s {
                Step::Parse(n, q) => {
                    if n.is_empty() {
                        stmts.remove(n);
                    }
                    if q.starts_with("selec ") {
                        failed = true;
                        error("42601", "syntax error")
                    } else if stmts.contains_key(n) {
                        failed = true;
                        error("42P05", "prepared statement already exists")
                    } else {
                        stmts.insert(n, q);
                        msg(b'1', b"")
                    }
                }
                Step::Bind(p, n) => match stmts.get(n).copied() {
                    None => {
                        failed = true;
                        want.push(Some(String::new()));
                        error("26000", "prepared statement does not exist")
                    }
                    Some(_) if !p.is_empty() && portals.contains_key(p) => {
                        failed = true;
                        want.push(Some(stmts[n].to_string()));
                        error("42P03", "cursor already exists")
                    }
                    Some(q) => {
                        portals.insert(p, q);
                        want.push(Some(q.to_string()));
                        msg(b'2', b"")
                    }
                },
                Step::Describe(n) => match stmts.get(n) {
                    Some(_) => cat(&[parameter_description(&[]), msg(b'n', b"")]),
                    None => {
                        failed = true;
                        error("26000", "prepared statement does not exist")
                    }
                },
                Step::Execute(p) => match portals.get(p).copied() {
                    Some(q) => {
                        want.push(Some(q.to_string()));
                        cat(&[row(), complete("SELECT 1")])
                    }
                    None => {
                        failed = true;
                        want.push(Some(String::new()));
                        error("34000", "portal does not exist")
                    }
                },
                Step::CloseStmt(n) => {
                    stmts.remove(n);
                    msg(b'3', b"")
                }
                Step::ClosePortal(p) => {
                    portals.remove(p);
                    msg(b'3', b"")
                }
                Step::Query => {
                    // Its implicit transaction ends: every portal goes.
                    stmts.remove("");
                    portals.clear();
                    cat(&[complete("SELECT 1"), ready()])
                }
                Step::Sync => {
                    // Outside a transaction block (`ready()` says 'I'),
                    // Sync ends the implicit transaction: every portal goes.
                    failed = false;
                    portals.clear();
                    ready()
                }
            };
            answers.push(answer);
        }
        (answers, want)
    }

    fn step_bytes(s: &Step) -> Vec<u8> {
        match *s {
            Step::Parse(n, q) => parse(n, q),
            Step::Bind(p, n) => bind(p, n, &[]),
            Step::Describe(n) => describe_stmt(n),
            Step::Execute(p) => execute(p),
            Step::CloseStmt(n) => close_stmt(n),
            Step::ClosePortal(p) => close_portal(p),
            Step::Query => query("select 9"),
            Step::Sync => sync(),
        }
    }

    proptest::proptest! {
        /// Against a model of PostgreSQL's prepared statements and portals
        /// (a rejected Parse keeps the old statement, a failed Parse of ""
        /// leaves none, everything up to Sync skipped after an error, a
        /// simple Query drops the unnamed statement, a transaction's end
        /// drops every portal), pipelined
        /// in flights of any length: every Bind and Execute record names
        /// the SQL PostgreSQL ran (or none where it had no such statement or
        /// portal).
        #[test]
        fn records_follow_what_postgres_ran(
            steps in proptest::collection::vec(step_strategy(), 1..40),
            flights in proptest::collection::vec(1usize..8, 40),
            chunk in 1usize..64,
        ) {
            let (answers, want) = postgres_model(&steps);
            let mut s = Session::new(4096);
            // The client sends a flight of messages, then PostgreSQL's
            // answers to them arrive.
            let mut at = 0;
            for n in flights.iter().copied().chain(std::iter::repeat(8)) {
                if at >= steps.len() {
                    break;
                }
                let end = (at + n).min(steps.len());
                let sent: Vec<Vec<u8>> = steps[at..end].iter().map(step_bytes).collect();
                s.client(&sent.concat(), chunk);
                s.target(&answers[at..end].concat(), chunk);
                at = end;
            }
            s.t.finish(Clock::default());
            let got: Vec<Rec> = take(&mut s.t)
                .into_iter()
                .filter(|r| {
                    r.kind == AuditKind::Bind as i32 || r.kind == AuditKind::Execute as i32
                })
                .collect();
            proptest::prop_assert_eq!(got.len(), want.len());
            for (i, (r, w)) in got.iter().zip(&want).enumerate() {
                if let Some(w) = w {
                    proptest::prop_assert!(!r.skipped, "{i}: {r:?}");
                    proptest::prop_assert_eq!(&r.sql, w, "{}: {:?}", i, r);
                } else {
                    proptest::prop_assert!(r.skipped || r.incomplete, "{i}: {r:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(
            client in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            target in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let mut t = Tracker::new(64);
            let mut cs = FrameScanner::new(1 << 12);
            let mut ts = FrameScanner::new(1 << 12);
            let _ = cs.scan_parts(&client, |p| t.client_part(p, Clock::default()));
            let _ = ts.scan_parts(&target, |p| t.target_part(p, Clock::default()));
            t.finish(Clock::default());
            while t.peek_record().is_some() {
                t.pop_record();
            }
        }
    }
}
