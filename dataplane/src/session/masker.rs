//! Masking on the target → client stream of one session (sans-IO).
//!
//! [`TargetMasker`] sits between the bytes read from the target and the
//! bytes written to the client. It walks whole frames; the ones that can
//! carry data (RowDescription, DataRow, CopyData during COPY TO,
//! ErrorResponse, NoticeResponse) are only forwarded whole, so a frame split
//! across reads is held back until the rest arrives (the buffer grows up to
//! the frame size limit). Everything else passes untouched, even when split.
//! Same-length masking happens in the read buffer; when a column rule
//! changes a length (`hash`, `null`) the chunk is re-assembled into a
//! second buffer.
//!
//! Which RowDescription applies to a DataRow follows the protocol: a simple
//! query's RowDescription precedes its rows; in the extended protocol a
//! `Describe` of a statement is cached under the statement's name and
//! applied when a `BindComplete` answers the `Bind` that used it, with the
//! Bind's result formats (binary results of text columns are scanned too).
//! The client side feeds the requests ([`TargetMasker::on_client_frame`]),
//! the target side answers them in order. Where the description is unknown
//! (a Bind too large to read its formats, a statement never described),
//! every column of the rows is scanned with the detectors: masking fails
//! safe, never open.
//!
//! Plans are built from RowDescriptions as the server sent them (and kept
//! so); what is forwarded shows a column whose rule applies to a non-text
//! type's text form as `text` ([`RowPlan::retype_description`]), so the
//! client parses the masked or hashed value it gets.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use crate::mask::copyout::{
    any_rule, copy_columns, copy_from_stdin, copy_statements, copy_to_options,
    mask_binary_copy_row, mask_char_clashes, mask_copy_header, mask_copy_row, CopyColumn,
    CopyOptions, CopyScratch, CopyStatement,
};
use crate::mask::derived::{
    has_word, has_words_in_order, sql_commands, BindValues, SqlCommand, StatementText, Text,
    MAX_PARAM_NAME, MAX_TEXT,
};
use crate::mask::{
    ascii_safe_encoding, mask_copy_data, mask_data_row, mask_description_names, mask_error_fields,
    mask_error_values, retype_statement_description, Engine, HitAt, Hits, RowOutcome, RowPlan,
};
use crate::protocol::backend::{self, parameter_status, parse_error_fields};
use crate::protocol::tag;
use crate::protocol::{server_name, NAME_MAX};
use crate::session::schema::SchemaWatch;

/// The COPY TO stream in progress.
#[derive(Debug, Clone, Copy)]
enum CopyOut {
    /// Text or CSV (how: the COPY's options).
    Fields,
    /// Binary COPY: no field boundaries known; every payload is scanned
    /// with the detectors as raw bytes (fail safe: values are never
    /// forwarded unscanned).
    Binary,
}

/// The columns of a COPY TO, for column rules.
#[derive(Debug, Clone)]
enum CopyCols {
    /// No column rules when it was requested: detectors only.
    Detect,
    /// Its describe (by id) is on its way.
    Waiting(u64),
    Resolved(Rc<[CopyColumn]>),
    /// Not known: every field is masked whole.
    Unresolved,
}

/// A COPY TO the client asked for: (sync epoch, the number of the Query
/// or Execute that runs it, options, columns).
type CopyRequest = (u64, u64, CopyOptions, CopyCols);

/// The statement name of the gateway's own describes (of the query a COPY
/// runs; see [`crate::mask::copyout`]); closed right after. With a random
/// part drawn once per process: no client can name it, so none of a
/// client's answers is taken for the gateway's, nor the reverse.
fn own_statement() -> &'static [u8] {
    static NAME: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut r = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        let mut n = b"sluice.copy.describe.".to_vec();
        crate::protocol::hex_into(&mut n, &r);
        n
    })
}

/// Close (frontend; the backend's `C` is CommandComplete).
const CLOSE: u8 = b'C';

/// FunctionCall (frontend; answered with a ReadyForQuery).
const FUNCTION_CALL: u8 = b'F';

/// What [`TargetMasker::process`] decided for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Bytes `[0..ready)` of the chunk may be forwarded (or `out()` when
    /// `rewritten`); `[ready..)` is an incomplete data frame to keep and
    /// complete with the next read.
    pub ready: usize,
    /// The ready part was re-assembled into [`TargetMasker::out`].
    pub rewritten: bool,
    /// Values masked in this chunk.
    pub masked: u32,
    /// The client switched to an encoding masking cannot read
    /// ([`TargetMasker::unsafe_encoding`]); `[0..ready)` stops before the
    /// ParameterStatus that says so. Or the masker cannot tell which
    /// request the answers after `[0..ready)` belong to
    /// ([`TargetMasker::adrift`]). End the session.
    pub refused: bool,
}

/// (frame index within the chunk, rule name, column name, values); names
/// are ranges of [`FrameHits`]' text.
type FrameHit = (u32, (u32, u32), (u32, u32), u64);

/// Values masked in the frames of one chunk, by frame: for the audit
/// trail, which gives them to the statement the frame answers.
#[derive(Debug, Default)]
pub struct FrameHits {
    entries: Vec<FrameHit>,
    text: String,
}

impl FrameHits {
    pub fn clear(&mut self) {
        self.entries.clear();
        self.text.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (frame index, rule, column, values), frames in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str, &str, u64)> + '_ {
        self.entries.iter().map(|&(f, r, c, n)| {
            (
                f,
                &self.text[r.0 as usize..r.1 as usize],
                &self.text[c.0 as usize..c.1 as usize],
                n,
            )
        })
    }

    fn push_text(&mut self, s: &str) -> (u32, u32) {
        let a = self.text.len() as u32;
        self.text.push_str(s);
        (a, self.text.len() as u32)
    }

    fn add(&mut self, frame: u32, rule: &str, column: &[u8], n: u64) {
        // Same rule and column as an entry of this frame: add to it.
        for e in self.entries.iter_mut().rev() {
            if e.0 != frame {
                break;
            }
            if &self.text[e.1 .0 as usize..e.1 .1 as usize] == rule
                && self.text.as_bytes()[e.2 .0 as usize..e.2 .1 as usize] == *column
            {
                e.3 += n;
                return;
            }
        }
        let r = self.push_text(rule);
        let c = self.push_text(&String::from_utf8_lossy(column));
        self.entries.push((frame, r, c, n));
    }
}

/// What a prepared statement or portal is, for COPY (absent: not a COPY).
#[derive(Debug, Clone)]
enum CopyKind {
    /// A COPY TO STDOUT: its options, and the query to describe (None: its
    /// text could not be read).
    Out(CopyOptions, Option<Rc<[u8]>>),
    /// A COPY FROM STDIN (Syncs during its copy-in get no answer).
    In,
    /// Not known: a name parsed or bound again before its Close was
    /// answered (the server may refuse the new one and keep the old). A
    /// COPY from it is masked whole.
    Unknown,
}

/// A Close waiting for its CloseComplete: (sync epoch, the gateway's own,
/// a client's kind and name).
type Closing = (u64, bool, Option<(u8, Vec<u8>)>);

/// A Bind waiting for its BindComplete: (sync epoch, portal, statement,
/// result formats, parameters, [`TargetMasker::replaced`] when it was sent).
type Bound = (
    u64,
    Vec<u8>,
    Vec<u8>,
    Option<Vec<i16>>,
    Option<Box<[u8]>>,
    u64,
);

/// A portal bound to a statement not yet described: (portal, statement,
/// the Bind's result formats, the portal's text).
type BoundUndescribed = (Vec<u8>, Vec<u8>, Vec<i16>, StatementText);

/// Which columns of a description the client was shown as `text`
/// ([`RowPlan::shown_as_text`]); `None`: none, it got the server's types.
type Told = Option<Rc<[bool]>>;

/// A statement's RowDescription as the server sent it, what the client
/// was told, its text, and [`TargetMasker::replaced`] when its Describe was
/// sent (a description from before a later count may be another
/// statement's).
type Prepared = (Rc<[u8]>, Told, StatementText, u64);

/// A portal's RowDescription as the server sent it, result formats, what
/// the client was told, and its statement's text (for the rule of its
/// computed columns).
type Described = (Rc<[u8]>, Option<Vec<i16>>, Told, StatementText);

/// A Describe waiting for its answer: (sync epoch, `Some(name)` for a
/// statement Describe or `None` for a portal, the portal's name, and
/// [`TargetMasker::replaced`] when it was sent).
type Describing = (u64, Option<Vec<u8>>, Vec<u8>, u64);

/// Requests whose answers the masker must pair up, tagged with the number
/// of the Sync (or Query) they precede, so the ones PostgreSQL skips after
/// an error can be dropped at the next ReadyForQuery.
#[derive(Default)]
struct Pending {
    /// (epoch, statement name, whether this Parse put the name in use,
    /// its text).
    parses: VecDeque<(u64, Vec<u8>, bool, StatementText)>,
    describes: VecDeque<Describing>,
    /// (portal, statement name, result formats; None if unreadable).
    binds: VecDeque<Bound>,
    /// What produces the next rows, in order: a simple Query (None, with
    /// its text) or an Execute of a portal; numbered (`next_result`).
    results: VecDeque<(u64, Option<Vec<u8>>, StatementText, u64)>,
    next_result: u64,
    /// Close messages: whether each is the gateway's own, and a client's
    /// kind (`S` or `P`) and name.
    closes: VecDeque<Closing>,
}

impl Pending {
    /// A Query, Execute or FunctionCall sent in sync epoch `e`; its number
    /// (as the COPYs it runs were requested under).
    fn result(&mut self, e: u64, portal: Option<Vec<u8>>, text: StatementText) -> u64 {
        let n = self.next_result;
        self.next_result += 1;
        self.results.push_back((e, portal, text, n));
        n
    }
}

pub struct TargetMasker {
    engine: Arc<Engine>,
    /// False for a session that sees results unmasked: the masker then only
    /// keeps its bookkeeping (statement and portal descriptions), so that a
    /// snapshot switching masking on mid-session masks correctly at once.
    active: bool,
    plan: RowPlan,
    /// The current plan came from nothing (scan every column).
    plan_known: bool,
    /// Width of the scan-everything plan in `plan`, if that is what it
    /// holds (rebuilt only when a row of another width comes).
    fallback_width: Option<usize>,
    /// The result formats `fallback_plan` planned with (None: text).
    fallback_formats: Option<Vec<i16>>,
    /// The RowDescription body and result formats `plan` was built from.
    plan_desc: Option<Vec<u8>>,
    plan_formats: Option<Vec<i16>>,
    /// The types the client was told that `plan` keeps to (`None`: the
    /// description was just forwarded, under the current profile).
    plan_told: Option<Told>,
    /// Whether that description gave a plan.
    plan_desc_ok: bool,
    /// The statement text `plan` was built with.
    plan_text: StatementText,
    /// Shared with `portals`: a Bind costs a reference count, not a copy.
    statements: HashMap<Vec<u8>, Prepared>,
    /// Bytes of the texts in `prepared` and `cursors`.
    prepared_bytes: usize,
    cursors_bytes: usize,
    /// The texts of prepared statements and of the statements of bound
    /// portals, for the rule of their computed columns
    /// ([`crate::mask::derived`]).
    /// (Protocol and SQL-level prepared statements share one namespace in
    /// the server, as do portals and SQL cursors.) A name that may hold
    /// either of two statements keeps both texts ([`Text::joined`]).
    prepared: HashMap<Vec<u8>, Rc<Text>>,
    portal_text: HashMap<Vec<u8>, Rc<Text>>,
    /// The statement each portal was bound to (by a Bind that read), and
    /// [`TargetMasker::replaced`] when that Bind was sent, until its
    /// transaction ends.
    portal_stmt: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// SQL cursors (`DECLARE name … FOR query`), with the sync epoch of the
    /// Query that declared them (they end with their transaction).
    cursors: HashMap<Vec<u8>, (u64, Rc<Text>)>,
    /// A Query or Parse split across reads: its tag and body so far (up
    /// to [`MAX_TEXT`] and a little), whose text is read when it is whole
    /// ([`TargetMasker::on_client_more`]).
    gather: Option<(u8, Vec<u8>)>,
    /// A Bind split across reads, read as its parts come for its result
    /// formats ([`TargetMasker::on_client_more`]).
    split_bind: Option<SplitBind>,
    /// An Execute or a Describe whose first read ended inside its name:
    /// its tag, epoch, and bytes so far (a Describe's kind, then the name),
    /// read to the name's end by [`TargetMasker::on_client_more`].
    split_name: Option<(u8, u64, Vec<u8>)>,
    /// Portal → (RowDescription, result formats), so rows of a portal
    /// executed again later (after PortalSuspended) use its own plan.
    portals: HashMap<Vec<u8>, Described>,
    /// The portal the current plan belongs to.
    plan_portal: Option<Vec<u8>>,
    /// A portal bound to a statement not yet described, with the Bind's
    /// result formats: a Describe of the statement sent after the Bind
    /// (tokio-postgres `query_typed`) gives its plan.
    bound_undescribed: Option<BoundUndescribed>,
    /// Portal → the result formats of the Bind that made it, for portals of
    /// a statement not described when bound: their rows are read by
    /// `fallback_plan`, which must know which columns are binary even when
    /// another portal was bound since.
    undescribed_formats: HashMap<Vec<u8>, Vec<i16>>,
    pending: Pending,
    /// Syncs/Queries sent, and ReadyForQuery received.
    sent_epoch: u64,
    done_epoch: u64,
    /// The sync epochs a Query or FunctionCall ends (not a Sync): after an
    /// error in an extended-protocol message the server skips them until a
    /// Sync, and they get no ReadyForQuery.
    query_ends: VecDeque<u64>,
    /// Such epochs skipped: the next ReadyForQuery ends them too.
    skipped: u64,
    /// The server skips what comes until the next Sync (an
    /// extended-protocol message failed since the last one): a Query or
    /// FunctionCall sent now ends no sync epoch.
    skipping: bool,
    /// The next RowDescription answers a statement Describe of this name
    /// (sent at this [`TargetMasker::replaced`]).
    describing: Option<Vec<u8>>,
    describing_at: u64,
    /// SQL that can replace prepared statements (`PREPARE … AS`, also as
    /// dynamic SQL: [`replaces_statements`]) sent so far: a statement described
    /// before the last of them may hold another query now (`DEALLOCATE s;
    /// PREPARE s AS …` in the namespace protocol statements share), so its
    /// description is not used for the rows of a Bind of it.
    replaced: u64,
    /// Statements whose text is such SQL (it runs at each Execute of a
    /// portal bound to them), and those portals.
    replacing_stmts: std::collections::HashSet<Vec<u8>>,
    replacing_portals: std::collections::HashSet<Vec<u8>>,
    /// COPY TO statements sent, in order: format and columns, taken when
    /// their CopyOutResponse comes.
    copy_requested: VecDeque<CopyRequest>,
    /// Prepared statements and portals that are a COPY TO, with its format
    /// and the query that describes its columns (extended protocol; a
    /// simple Query carries its own text).
    copy_stmts: HashMap<Vec<u8>, CopyKind>,
    copy_portals: HashMap<Vec<u8>, CopyKind>,
    /// Statement and portal names in use (parsed or bound and not closed),
    /// as far as the client side can tell.
    open_stmts: std::collections::HashSet<Vec<u8>>,
    /// (Portals with the sync epoch of their Bind.)
    open_portals: HashMap<Vec<u8>, u64>,
    /// A COPY that starts in this sync epoch cannot be told apart from
    /// other requests: every COPY in it is masked whole.
    poisoned: std::collections::BTreeSet<u64>,
    /// A client frame's names could not be read (split across reads):
    /// every later COPY is masked whole.
    copy_untrusted: bool,
    /// The sync epoch of a simple Query with a COPY FROM STDIN, or of an
    /// Execute of one, until the client's CopyDone or CopyFail (or its
    /// error, or the ReadyForQuery that ends the epoch, when the copy never
    /// started): the server ignores Syncs during its copy-in.
    copy_in_query: Option<u64>,
    /// An Execute was answered since the last ReadyForQuery: a setting it
    /// changed (`set_config('standard_conforming_strings', …)`) is
    /// reported only at ReadyForQuery (PostgreSQL 14 and later), so the
    /// texts sent until then are read both ways ([`TargetMasker::settled`]).
    unreported: bool,
    /// Its copy-in started (CopyInResponse came): Syncs sent from now until
    /// its CopyDone or CopyFail get no answer.
    copy_in_started: bool,
    /// Syncs were sent during the copy-in in progress (not counted). If the
    /// COPY fails rather than completes, those sent after the data it
    /// refused are answered, and how many is not known: see `adrift`.
    copy_in_uncounted: bool,
    /// Which request the target's answers belong to can no longer be told
    /// (the case above): the session must end.
    adrift: bool,
    /// Syncs sent after such a Query (sync epoch `.0`) while it was not
    /// yet known whether its copy-in starts: `.1` of them, each counted as
    /// to be answered. A COPY that fails first (a missing table) never
    /// starts its copy-in, and then the server answers every one with a
    /// ReadyForQuery; kept past the client's CopyDone until the Query's
    /// CopyInResponse or ReadyForQuery tells. (One entry per such Query,
    /// in order: another may be sent before the first is answered.)
    copy_in_unsure: VecDeque<(u64, u64)>,
    /// The engine's column rules changed since the catalog read in use
    /// (see [`TargetMasker::set_engine`]), until [`TargetMasker::rules_read`].
    rules_unread: bool,
    /// When the copy-in did start: those Syncs got no answer, so the
    /// ReadyForQuery of the Query (sync epoch `.0`) also ends their `.1`
    /// sync epochs.
    copy_in_ignored: Option<(u64, u64)>,
    copy_out: Option<CopyOut>,
    /// The columns of the COPY in progress (with column rules).
    copy_cols: Option<Rc<[CopyColumn]>>,
    /// Its options, and whether its header row is still to come.
    copy_options: CopyOptions,
    copy_header: bool,
    /// String literals take backslash escapes (`standard_conforming_strings`
    /// off), for reading statement texts.
    backslash_strings: bool,
    /// The COPY in progress is masked field by field through
    /// `mask_copy_row`/`mask_binary_copy_row`: under column rules (its
    /// columns known, or not: then every field is masked whole), or for
    /// its number columns (`rows::mask_number`).
    copy_ruled: bool,
    copy_scratch: CopyScratch,
    /// The gateway's own describes sent: (sync epoch, id, the described
    /// query), in order.
    own_describes: VecDeque<(u64, u64, StatementText)>,
    next_own: u64,
    /// The sync epochs of the gateway's own Syncs (before a Query).
    own_syncs: VecDeque<u64>,
    /// Messages to put before client frames: (offset of the frame in the
    /// read, bytes), in order; taken by the relay.
    injections: Vec<(usize, Vec<u8>)>,
    /// Extended-protocol messages since the last Sync or Query.
    unsynced: u32,
    /// The error of a failed own describe (without its position, which
    /// points into the describe's text), for the Query of this sync epoch:
    /// it stands in for that Query's "transaction is aborted" error.
    own_error: Option<(u64, Vec<u8>)>,
    /// The last ReadyForQuery said "idle" (not in a transaction block).
    tx_idle: bool,
    /// Tells the schema changes of the session's own statements.
    watch: SchemaWatch,
    /// The session reads its catalog again after them
    /// ([`TargetMasker::follow_schema`]).
    follow_schema: bool,
    /// Schema changes told so far, how many of them the read in use knows,
    /// and for a read in progress, how many were told when it was sent.
    changes: u64,
    changes_read: u64,
    read_covers: Option<u64>,
    /// A frame (tag, length, body) to forward in place of the one
    /// [`TargetMasker::on_target_frame`] was given.
    replace_with: Option<Vec<u8>>,
    hits: Hits,
    /// The client encoding in force when it is not ASCII-safe.
    unsafe_encoding: Option<String>,
    /// Hits by frame of the last chunk (only when [`TargetMasker::record_hits`]).
    frame_hits: FrameHits,
    out: Vec<u8>,
    /// Scratch for one rewritten DataRow.
    row_buf: Vec<u8>,
    /// Body bytes of a passed-through frame still to come.
    skip: usize,
    max_frame: usize,
}

impl TargetMasker {
    /// A masker for `engine`, or a passive one (bookkeeping only) for a
    /// session without masking.
    pub fn for_session(engine: Option<Arc<Engine>>, max_frame: usize) -> Self {
        match engine {
            Some(e) => Self::new(e, max_frame),
            None => {
                let mut m = Self::new(default_engine(), max_frame);
                m.active = false;
                m
            }
        }
    }

    /// Whether results are masked.
    pub fn active(&self) -> bool {
        self.active
    }

    pub fn new(engine: Arc<Engine>, max_frame: usize) -> Self {
        TargetMasker {
            engine,
            active: true,
            plan: RowPlan::new(),
            plan_known: false,
            fallback_width: None,
            fallback_formats: None,
            plan_desc: None,
            plan_formats: None,
            plan_told: None,
            plan_desc_ok: false,
            plan_text: None,
            statements: HashMap::new(),
            prepared: HashMap::new(),
            portal_text: HashMap::new(),
            portal_stmt: HashMap::new(),
            cursors: HashMap::new(),
            gather: None,
            split_bind: None,
            split_name: None,
            prepared_bytes: 0,
            cursors_bytes: 0,
            portals: HashMap::new(),
            plan_portal: None,
            bound_undescribed: None,
            undescribed_formats: HashMap::new(),
            pending: Pending::default(),
            sent_epoch: 0,
            done_epoch: 0,
            query_ends: VecDeque::new(),
            skipped: 0,
            skipping: false,
            describing: None,
            describing_at: 0,
            replaced: 0,
            replacing_stmts: Default::default(),
            replacing_portals: Default::default(),
            copy_requested: VecDeque::new(),
            copy_stmts: HashMap::new(),
            copy_portals: HashMap::new(),
            open_stmts: Default::default(),
            open_portals: Default::default(),
            poisoned: Default::default(),
            copy_untrusted: false,
            copy_in_query: None,
            unreported: false,
            copy_in_started: false,
            copy_in_uncounted: false,
            adrift: false,
            copy_in_unsure: VecDeque::new(),
            rules_unread: false,
            copy_in_ignored: None,
            copy_out: None,
            copy_cols: None,
            copy_options: CopyOptions::text(),
            copy_header: false,
            backslash_strings: false,
            copy_ruled: false,
            copy_scratch: CopyScratch::default(),
            own_describes: VecDeque::new(),
            next_own: 0,
            own_syncs: VecDeque::new(),
            injections: Vec::new(),
            unsynced: 0,
            own_error: None,
            tx_idle: true,
            watch: SchemaWatch::default(),
            follow_schema: false,
            changes: 0,
            changes_read: 0,
            read_covers: None,
            replace_with: None,
            hits: Hits::new(),
            unsafe_encoding: None,
            frame_hits: FrameHits::default(),
            out: Vec::new(),
            row_buf: Vec::new(),
            skip: 0,
            max_frame,
        }
    }

    /// Use another profile (or none) from the next rows on (a new
    /// snapshot). Kept descriptions are re-planned with the new engine.
    pub fn set_engine(&mut self, engine: Option<Arc<Engine>>) {
        match engine {
            None => self.active = false,
            Some(e) => {
                if !self.active || !Arc::ptr_eq(&self.engine, &e) {
                    // The result in progress (its description already
                    // forwarded) is planned again under the new rules,
                    // keeping to the types its client was told then; its
                    // rows must not fall back to the detectors alone.
                    let in_progress = self
                        .plan_desc
                        .take()
                        .filter(|_| self.plan_known && self.fallback_width.is_none())
                        .map(|d| {
                            let told: Told = match self.plan_told.take() {
                                Some(t) => t,
                                None if self.active => self.plan.shown_as_text().map(Rc::from),
                                None => None,
                            };
                            (d, self.plan_formats.take(), told, self.plan_text.clone())
                        });
                    // A COPY in progress that was read without column rules
                    // (masking was off): its fields are masked whole from
                    // here on, as a COPY whose columns are not known.
                    if !self.active && self.copy_out.is_some() && e.has_column_rules() {
                        self.copy_ruled = true;
                        self.copy_cols = None;
                    }
                    // Other column rules: the catalog read in use found the
                    // columns the old ones name. Until one for these lands,
                    // text-like columns take the strongest name rule (an
                    // alias of a newly ruled column would show it).
                    if self.plan.origins().is_some() && e.rules_key() != self.engine.rules_key() {
                        self.rules_unread = true;
                        self.set_unread(true);
                    }
                    self.engine = e;
                    self.active = true;
                    self.plan_known = false;
                    self.fallback_width = None;
                    self.plan_desc = None;
                    self.plan_portal = None;
                    // (The rows of a portal take its own description again:
                    // `plan_for_current_result`.)
                    if let Some((d, f, told, text)) = in_progress {
                        self.describe(&d, f.as_deref(), Some(&told), &text);
                    }
                }
            }
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The re-assembled chunk when [`Processed::rewritten`].
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// Hits per rule since the last call; cleared.
    pub fn take_hits(&mut self, mut f: impl FnMut(&str, u64)) {
        for (rule, n) in self.hits.iter() {
            if n > 0 {
                f(self.engine.rule_name(rule), n);
            }
        }
        self.hits.clear();
    }

    /// The client encoding the target reported (ParameterStatus
    /// `client_encoding`).
    pub fn set_client_encoding(&mut self, name: &[u8]) {
        self.unsafe_encoding =
            (!ascii_safe_encoding(name)).then(|| String::from_utf8_lossy(name).into_owned());
    }

    /// The session's `TimeZone` the target reported (ParameterStatus, at
    /// startup and after a `SET`): binary `timestamptz` values that column
    /// rules turn into text print in it.
    pub fn set_time_zone(&mut self, name: &[u8]) {
        self.plan.set_time_zone(name);
    }

    /// The target's `standard_conforming_strings` (`off`: backslashes
    /// escape in every string literal).
    pub fn set_standard_conforming_strings(&mut self, v: &[u8]) {
        self.backslash_strings = v.eq_ignore_ascii_case(b"off");
    }

    /// Where result columns come from (the target's catalog, read at
    /// login): column rules then follow a stored column under an alias.
    pub fn set_origins(&mut self, origins: Option<Arc<crate::mask::ColumnOrigins>>) {
        self.plan.set_origins(origins);
        self.plan_desc = None;
        self.plan_known = false;
    }

    /// Follow the session's own schema changes: from one told by a
    /// CommandComplete until a read of the session's own knows it, every
    /// text-like column described takes the profile's strongest name rule
    /// ([`RowPlan::set_unread`]). Only for sessions that read their catalog
    /// again after such a change (`net::catalog::SessionCatalog`).
    pub fn follow_schema(&mut self, on: bool) {
        self.follow_schema = on;
        self.set_unread(on && self.changes > self.changes_read);
    }

    /// [`RowPlan::set_unread`]; a plan kept from before a change of it is
    /// not used again (`describe` keeps a plan by description and text).
    fn set_unread(&mut self, unread: bool) {
        let unread = unread || self.rules_unread;
        if self.plan.unread() != unread {
            self.plan.set_unread(unread);
            self.plan_desc = None;
        }
    }

    /// The origins just set ([`TargetMasker::set_origins`]) were read for
    /// this engine's column rules.
    pub fn rules_read(&mut self) {
        if self.rules_unread {
            self.rules_unread = false;
            self.set_unread(self.follow_schema && self.changes > self.changes_read);
        }
    }

    /// A catalog read of the session's own is sent now: it knows every
    /// change told so far.
    pub fn schema_read_sent(&mut self) {
        self.read_covers = Some(self.changes);
    }

    /// That read is over; `read`: it was read (not refused).
    pub fn schema_read_done(&mut self, read: bool) {
        if let Some(c) = self.read_covers.take().filter(|_| read) {
            self.changes_read = self.changes_read.max(c);
        }
        self.set_unread(self.follow_schema && self.changes > self.changes_read);
    }

    /// A frame the client is sent (not an answer to the gateway's own
    /// requests), for the schema changes it tells.
    #[inline]
    fn watch_frame(&mut self, t: u8, body: &[u8]) {
        if self.watch.frame(t, body).is_some() {
            self.changes += 1;
            if self.follow_schema {
                self.set_unread(true);
            }
        }
    }

    /// The catalog read result columns are resolved with (see
    /// [`TargetMasker::set_origins`]).
    pub fn origins(&self) -> Option<&Arc<crate::mask::ColumnOrigins>> {
        self.plan.origins_shared()
    }

    /// The masker cannot tell which request the target's answers belong
    /// to: Syncs were sent during a copy-in (which the server ignores
    /// there) that then failed, and the server answers those sent after the
    /// data it refused. Rows could be read with another statement's
    /// columns: while masking is on, the session must end.
    pub fn adrift(&self) -> bool {
        self.adrift
    }

    /// The client encoding, when masking cannot work in it (results must
    /// then not be sent while masking is on).
    pub fn unsafe_encoding(&self) -> Option<&str> {
        self.unsafe_encoding.as_deref()
    }

    /// Keep the hits of each chunk by frame ([`TargetMasker::frame_hits`]),
    /// for the audit trail.
    pub fn record_hits(&mut self, on: bool) {
        self.hits.log_hits(on);
    }

    /// The hits of the frames of the last chunk [`TargetMasker::process`]
    /// handled, by frame index (the n-th frame starting in the chunk's
    /// ready part).
    pub fn frame_hits(&self) -> &FrameHits {
        &self.frame_hits
    }

    /// Move the logged hits to `frame`'s entries; column indexes name
    /// columns of the current plan when `row`.
    fn collect_hits(&mut self, frame: u32, row: bool) {
        let log = self.hits.take_log();
        for h in log.iter().flatten() {
            let column: &[u8] =
                if row && h.at != HitAt::NOWHERE && (h.at as usize) < self.plan.len() {
                    self.plan.column_name(h.at as usize)
                } else {
                    b""
                };
            self.frame_hits
                .add(frame, self.engine.rule_name(h.rule), column, u64::from(h.n));
        }
        self.hits.put_log(log);
    }

    /// Hits per column (name) since the last call; cleared.
    pub fn take_column_hits(&mut self, mut f: impl FnMut(&[u8], u64)) {
        self.plan.take_column_hits(|_, name, n| f(name, n));
    }

    /// A client frame, as the relay sees it (`body` may be a prefix of the
    /// body when the frame is split across reads). `at`: where the frame
    /// starts in the read being relayed (None when it started in an earlier
    /// one), so that the gateway's own describes of a COPY can be put
    /// before it ([`TargetMasker::take_injections`]).
    pub fn on_client_frame(&mut self, t: u8, body: &[u8], whole: bool, at: Option<usize>) {
        let e = self.sent_epoch;
        match t {
            tag::QUERY => {
                let text = body.strip_suffix(&[0]).unwrap_or(body);
                let stmts = if whole {
                    copy_statements(text, self.backslash_strings)
                } else {
                    // (Only part of the text is at hand: its COPY, if any,
                    // cannot be described.)
                    copy_to_options(body)
                        .map(|options| CopyStatement {
                            options,
                            describe: None,
                            first: false,
                        })
                        .into_iter()
                        .collect()
                };
                let mut inject = Vec::new();
                // Only the Query's first statement is described: the
                // describe runs before the whole Query, so a later COPY
                // could read what earlier statements change (search_path,
                // DDL); and a describe that fails aborts a transaction
                // block, where only a first COPY would fail the same way.
                // Only with nothing else outstanding: the text was read
                // with the settings the server reported last (and the
                // answers to the describe are the next it sends). Own
                // requests go before the Query, in the epoch their Sync
                // closes; the Query's COPYs are in the next.
                let quiet = self.quiet() && at.is_some();
                let mut cols = Vec::with_capacity(stmts.len());
                for st in &stmts {
                    let q = st.describe.as_deref().filter(|_| quiet && st.first);
                    cols.push(self.copy_cols_for(e, q, &mut inject));
                }
                let mut e = e;
                if !inject.is_empty() {
                    backend::sync(&mut inject);
                    self.own_syncs.push_back(e);
                    self.sent_epoch += 1;
                    e += 1;
                    self.injections.push((at.unwrap_or(0), inject));
                }
                for (st, c) in stmts.into_iter().zip(cols) {
                    let n = self.pending.next_result;
                    self.copy_requested.push_back((e, n, st.options, c));
                }
                if whole && copy_from_stdin(text, self.backslash_strings) {
                    self.copy_in_sent(e);
                }
                if whole && replaces_statements(text) {
                    self.replaced += 1;
                }
                // (The whole text: which statement a RowDescription answers
                // is not tracked. What is at hand when the Query is split
                // across reads.)
                let text = self.statement_text(text, whole, e);
                self.pending.result(e, None, text);
                self.gather = (!whole).then(|| (tag::QUERY, body.to_vec()));
                self.query_sent(e);
                self.unsynced = 0;
            }
            tag::EXECUTE => {
                self.unsynced += 1;
                let Some(portal) = pname(body).map(<[u8]>::to_vec) else {
                    if whole {
                        self.unreadable_execute(e);
                    } else {
                        // (Its portal's name when the rest comes:
                        // `on_client_more`.)
                        self.split_name = Some((tag::EXECUTE, e, server_name(body).to_vec()));
                    }
                    return;
                };
                self.execute_sent(e, portal, at);
            }
            tag::SYNC => {
                // (Ignored by a server in copy-in. Before its CopyInResponse
                // it is counted, and uncounted there: see `copy_in_syncs`.)
                match self.copy_in_query {
                    Some(_) if self.copy_in_started => self.copy_in_uncounted = true,
                    Some(q) => {
                        self.sent_epoch += 1;
                        match self.copy_in_unsure.back_mut() {
                            Some((u, n)) if *u == q => *n += 1,
                            _ => self.copy_in_unsure.push_back((q, 1)),
                        }
                    }
                    None => self.sent_epoch += 1,
                }
                self.unsynced = 0;
                self.skipping = false;
            }
            // FunctionCall: answered with a ReadyForQuery. A function
            // called by its oid may read ruled columns (`query_to_xml` of a
            // query given as an argument): its result is a computed value
            // of a statement whose text is not known. Not so the
            // large-object functions (psql's `\lo_export`): their data is a
            // file's, as a `bytea` value's is (the detectors only).
            FUNCTION_CALL => {
                let oid = body.get(..4).map(crate::protocol::be_u32);
                let text = (!oid.is_some_and(large_object_function)).then(unreadable);
                self.pending.result(e, None, text);
                self.query_sent(e);
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                // (A copy-in ends, if one started; the Syncs sent during
                // it were not counted.)
                self.copy_in_query = None;
                self.copy_in_started = false;
            }
            tag::PARSE => {
                let settled = self.settled();
                self.unsynced += 1;
                if !whole {
                    self.gather = Some((tag::PARSE, body.to_vec()));
                }
                let Some(raw) = cstr(body) else {
                    self.copy_untrusted = true;
                    let text = Some(unreadable());
                    self.pending.parses.push_back((e, Vec::new(), false, text));
                    return;
                };
                let name = server_name(raw).to_vec();
                let sql_body = body.get(raw.len() + 1..).unwrap_or_default();
                if whole && replaces_statements(sql_body) {
                    self.replacing_stmts.insert(name.clone());
                } else if whole {
                    self.replacing_stmts.remove(&name);
                }
                // A COPY prepared with the extended protocol: its options
                // and query, for the Execute of a portal bound to it (the
                // query only when the text was read with the settings in
                // force).
                let sql = body.get(raw.len() + 1..).unwrap_or_default();
                let text = self.text_of(cstr(sql).unwrap_or(sql), whole, e, true);
                let kind = if whole {
                    let sql = cstr(sql).unwrap_or(sql);
                    match copy_statements(sql, self.backslash_strings)
                        .into_iter()
                        .next()
                    {
                        Some(st) => Some(CopyKind::Out(
                            st.options,
                            st.describe.filter(|_| settled).map(Rc::from),
                        )),
                        None if copy_from_stdin(sql, self.backslash_strings) => Some(CopyKind::In),
                        None => None,
                    }
                } else {
                    copy_to_options(sql).map(|o| CopyKind::Out(o, None))
                };
                // A name in use: the server refuses this Parse and keeps
                // the statement it has.
                let added = !name.is_empty() && self.open_stmts.insert(name.clone());
                let kind = if !name.is_empty() && !added {
                    Some(CopyKind::Unknown)
                } else {
                    kind
                };
                match kind {
                    Some(k) => self.copy_stmts.insert(name.clone(), k),
                    None => self.copy_stmts.remove(&name),
                };
                self.pending.parses.push_back((e, name, added, text));
            }
            tag::DESCRIBE => {
                self.unsynced += 1;
                match body.get(1..).and_then(pname) {
                    Some(name) => self.describe_sent(e, body.first().copied(), name.to_vec()),
                    // (Its name when the rest comes: `on_client_more`.)
                    None if !whole => {
                        let b = body[..body.len().min(1 + NAME_MAX)].to_vec();
                        self.split_name = Some((tag::DESCRIBE, e, b));
                    }
                    None => self.describe_sent(e, body.first().copied(), Vec::new()),
                }
            }
            tag::BIND => {
                self.unsynced += 1;
                if !whole {
                    // (Its names, when not all in this read, and its result
                    // formats when the rest comes: `on_client_more`.)
                    let mut b = SplitBind::default();
                    b.feed(body);
                    if b.names_read() {
                        let [portal, stmt] = std::mem::take(&mut b.names);
                        self.bind_sent(e, portal, stmt, None, None);
                    } else {
                        b.unnamed = Some(e);
                    }
                    self.split_bind = Some(b);
                    return;
                }
                let Some((portal, stmt, formats, params)) = parse_bind(body, true) else {
                    self.unreadable_bind(e);
                    return;
                };
                let params = params.map(|r| &body[r]);
                self.bind_sent(e, portal, stmt, formats, params);
            }
            CLOSE => {
                self.unsynced += 1;
                let what = body.first().copied().zip(body.get(1..).and_then(pname));
                if what.is_none() {
                    self.copy_untrusted = true;
                }
                let what = what.map(|(k, n)| (k, n.to_vec()));
                self.pending.closes.push_back((e, false, what));
            }
            _ => {}
        }
    }

    /// A COPY FROM STDIN sent in sync epoch `e` (a Query's or an
    /// Execute's), or what may be one.
    fn copy_in_sent(&mut self, e: u64) {
        self.copy_in_query = Some(e);
        self.copy_in_started = false;
    }

    /// A Query or FunctionCall sent in sync epoch `e` ends it, unless the
    /// server skips it.
    fn query_sent(&mut self, e: u64) {
        if !self.skipping {
            self.query_ends.push_back(e);
            self.sent_epoch += 1;
        }
    }

    /// An ErrorResponse answered a request. When the request is an
    /// extended-protocol message (a request of this sync epoch is pending
    /// that is not a Query or FunctionCall), the server skips every message
    /// until the next Sync: the Queries and FunctionCalls sent after it get
    /// no ReadyForQuery, and so do those sent until that Sync.
    fn error_answered(&mut self) {
        let d = self.done_epoch;
        let p = &self.pending;
        let extended = p.parses.front().is_some_and(|r| r.0 == d)
            || p.describes.front().is_some_and(|r| r.0 == d)
            || p.binds.front().is_some_and(|r| r.0 == d)
            || p.closes.front().is_some_and(|r| r.0 == d)
            || matches!(p.results.front(), Some((r, Some(_), ..)) if *r == d);
        self.copy_out = None;
        self.execute_answered();
        if self.copy_in_query == Some(d) {
            // (Its copy-in, if it started, is over: Syncs count again.)
            self.copy_in_query = None;
            self.copy_in_started = false;
        }
        if std::mem::take(&mut self.copy_in_uncounted) {
            self.adrift = true;
            return;
        }
        if !extended {
            return;
        }
        let mut k = 0;
        for &q in self.query_ends.iter().skip_while(|&&q| q < d) {
            if q != d + k {
                break;
            }
            k += 1;
        }
        self.skipped += k;
        // (No Sync sent after it yet.)
        self.skipping |= d + k >= self.sent_epoch;
    }

    /// An Execute sent, once its portal's name is read (`at`: where its
    /// frame starts in this read, None when it started in an earlier one).
    fn execute_sent(&mut self, e: u64, portal: Vec<u8>, at: Option<usize>) {
        if self.replacing_portals.contains(&portal) {
            self.replaced += 1;
        }
        match self.copy_portals.get(&portal).cloned() {
            Some(CopyKind::Out(o, q)) => {
                let mut inject = Vec::new();
                let q = q.as_deref().filter(|_| at.is_some());
                let c = self.copy_cols_for(e, q, &mut inject);
                if !inject.is_empty() {
                    self.injections.push((at.unwrap_or(0), inject));
                }
                let n = self.pending.next_result;
                self.copy_requested.push_back((e, n, o, c));
            }
            // Syncs sent after it are answered, or ignored when its copy-in
            // starts (CopyInResponse): as after a simple Query's COPY FROM.
            // (A statement of unknown kind may be one.)
            Some(CopyKind::In) => self.copy_in_sent(e),
            Some(CopyKind::Unknown) => {
                self.poisoned.insert(e);
                self.copy_in_sent(e);
            }
            None => {}
        }
        self.pending.result(e, Some(portal), None);
    }

    /// A Describe of a statement (`S`) or portal, once its name is read.
    fn describe_sent(&mut self, e: u64, kind: Option<u8>, name: Vec<u8>) {
        let at = self.replaced;
        match kind {
            Some(b'S') => self
                .pending
                .describes
                .push_back((e, Some(name), Vec::new(), at)),
            _ => self.pending.describes.push_back((e, None, name, at)),
        }
    }

    /// An Execute whose portal's name cannot be read (the server refuses
    /// it).
    fn unreadable_execute(&mut self, e: u64) {
        self.copy_untrusted = true;
        self.replaced += 1;
        // (An Execute's: the server's error for it makes it skip what
        // follows until a Sync.)
        self.pending.result(e, Some(Vec::new()), None);
    }

    /// A Bind sent, once its names are read (`params`: its parameter part,
    /// when the whole message was at hand).
    fn bind_sent(
        &mut self,
        e: u64,
        portal: Vec<u8>,
        stmt: Vec<u8>,
        formats: Option<Vec<i16>>,
        params: Option<&[u8]>,
    ) {
        // The parameters short enough to be a key or a path, where
        // the statement reads members (`profile->>$1`) and a name
        // rule may match their words.
        let params = params
            .filter(|_| self.engine.has_name_rules())
            .filter(|_| {
                // (The last Parse of the name, which the server may
                // refuse, or the statement it holds.)
                let pending = self.pending.parses.iter().rev().find(|p| p.1 == stmt);
                pending.is_some_and(|p| p.3.as_ref().is_some_and(|t| t.reads_members()))
                    || self.prepared.get(&stmt).is_some_and(|t| t.reads_members())
            })
            .and_then(short_params);
        if self.replacing_stmts.contains(&stmt) {
            self.replacing_portals.insert(portal.clone());
        } else {
            self.replacing_portals.remove(&portal);
        }
        // (A portal in use keeps the epoch it was bound in.)
        let dup = !portal.is_empty() && self.open_portals.contains_key(&portal);
        if !portal.is_empty() && !dup {
            self.open_portals.insert(portal.clone(), e);
        }
        let kind = if dup {
            Some(CopyKind::Unknown)
        } else {
            self.copy_stmts.get(&stmt).cloned()
        };
        match kind {
            Some(k) => self.copy_portals.insert(portal.clone(), k),
            None => self.copy_portals.remove(&portal),
        };
        self.pending
            .binds
            .push_back((e, portal, stmt, formats, params, self.replaced));
    }

    /// A Bind whose names cannot be read (the server refuses it).
    fn unreadable_bind(&mut self, e: u64) {
        self.copy_untrusted = true;
        self.pending
            .binds
            .push_back((e, Vec::new(), Vec::new(), None, None, 0));
    }

    /// More of the client frame last started (`done`: its last bytes): a
    /// Query or Parse split across reads gets its text once whole, a Bind
    /// its result formats.
    pub fn on_client_more(&mut self, body: &[u8], done: bool) {
        if let Some((t, e, mut b)) = self.split_name.take() {
            // (A Describe's kind first, then the name; as the server keeps
            // a name: its first bytes.)
            let skip = usize::from(t == tag::DESCRIBE);
            let pre = skip.saturating_sub(b.len()).min(body.len());
            b.extend_from_slice(&body[..pre]);
            let rest = &body[pre..];
            let z = memchr::memchr(0, rest);
            let part = &rest[..z.unwrap_or(rest.len())];
            let room = (skip + NAME_MAX).saturating_sub(b.len());
            b.extend_from_slice(&part[..part.len().min(room)]);
            match (t, z) {
                (_, None) if !done => self.split_name = Some((t, e, b)),
                (tag::EXECUTE, Some(_)) => self.execute_sent(e, b, None),
                (tag::EXECUTE, None) => self.unreadable_execute(e),
                (_, z) => {
                    let name = b.get(1..).filter(|_| z.is_some()).unwrap_or_default();
                    self.describe_sent(e, b.first().copied(), name.to_vec());
                }
            }
            return;
        }
        if let Some(mut b) = self.split_bind.take() {
            b.feed(body);
            if let Some(e) = b.unnamed.filter(|_| b.names_read()) {
                // (Its names were cut by the end of its first read.)
                b.unnamed = None;
                let [portal, stmt] = std::mem::take(&mut b.names);
                self.bind_sent(e, portal, stmt, None, None);
            }
            if !done {
                self.split_bind = Some(b);
                return;
            }
            if let Some(e) = b.unnamed {
                self.unreadable_bind(e);
                return;
            }
            // (Rows without its formats are read as a statement never
            // described.)
            if let (Some(f), Some(b)) = (b.formats(), self.pending.binds.back_mut()) {
                b.3 = Some(f);
            }
            return;
        }
        let Some((_, buf)) = self.gather.as_mut() else {
            return;
        };
        if buf.len() <= MAX_TEXT + 1024 {
            buf.extend_from_slice(&body[..body.len().min(MAX_TEXT + 1025 - buf.len())]);
        }
        if !done {
            return;
        }
        let (t, buf) = self.gather.take().expect("gathering");
        let too_long = buf.len() > MAX_TEXT + 1024;
        let read = |m: &mut Self, sql: &[u8], e: u64| {
            let sql = cstr(sql).unwrap_or(sql);
            if too_long {
                Some(unreadable())
            } else {
                m.text_of(sql, true, e, t == tag::PARSE)
            }
        };
        match t {
            tag::QUERY => {
                let Some(e) = self
                    .pending
                    .results
                    .back()
                    .filter(|r| r.1.is_none())
                    .map(|r| r.0)
                else {
                    return;
                };
                let text = read(self, &buf, e);
                if let Some(r) = self.pending.results.back_mut() {
                    r.2 = text;
                }
                // (A COPY FROM STDIN read only now, or a text too long to
                // read, which may hold one.)
                if too_long || copy_from_stdin(cstr(&buf).unwrap_or(&buf), self.backslash_strings) {
                    self.copy_in_sent(e);
                }
                if replaces_statements(&buf) {
                    self.replaced += 1;
                }
            }
            _ => {
                let Some(e) = self.pending.parses.back().map(|p| p.0) else {
                    return;
                };
                let Some(raw) = cstr(&buf) else {
                    return;
                };
                let sql = &buf[raw.len() + 1..];
                let name = server_name(raw);
                if replaces_statements(sql) {
                    self.replacing_stmts.insert(name.to_vec());
                }
                let text = read(self, sql, e);
                if let Some(p) = self.pending.parses.back_mut() {
                    if p.1.is_empty() && !p.2 {
                        // (Its name was cut by the end of a read.)
                        p.1 = name.to_vec();
                    }
                    p.3 = text;
                }
                // Whether it is a COPY, now that it is whole (a COPY FROM
                // makes the server ignore Syncs during its copy-in): its
                // query is not described (not read when it was sent).
                let sql = cstr(sql).unwrap_or(sql);
                let kind = if too_long {
                    Some(CopyKind::Unknown)
                } else {
                    match copy_statements(sql, self.backslash_strings)
                        .into_iter()
                        .next()
                    {
                        Some(st) => Some(CopyKind::Out(st.options, None)),
                        None if copy_from_stdin(sql, self.backslash_strings) => Some(CopyKind::In),
                        None => None,
                    }
                };
                // (A name in use stays of unknown kind.)
                match (self.copy_stmts.get(name), kind) {
                    (Some(CopyKind::Unknown), _) => {}
                    (_, Some(k)) => {
                        self.copy_stmts.insert(name.to_vec(), k);
                    }
                    (_, None) => {
                        self.copy_stmts.remove(name);
                    }
                }
            }
        }
    }

    /// The Execute at the front of the results (if that is one) answered:
    /// a setting it changed is reported only at ReadyForQuery.
    fn execute_answered(&mut self) {
        if matches!(self.pending.results.front(), Some((_, Some(_), ..))) {
            self.pending.results.pop_front();
            self.unreported = true;
        }
    }

    /// No statement the client sent is still to run (a Query, an Execute,
    /// a FunctionCall: a `SET` among them could change how the server reads
    /// the next text), and no COPY FROM is taking data.
    fn settled(&self) -> bool {
        self.pending.results.is_empty() && self.copy_in_query.is_none() && !self.unreported
    }

    /// Settled, and nothing the client sent is unanswered (as far as the
    /// counts tell) or half-sent: the answers to a describe sent now are
    /// the next the server sends (a session's own catalog read goes only
    /// then: `net::catalog::SessionCatalog`).
    pub fn quiet(&self) -> bool {
        self.settled()
            && !self.skipping
            && self.unsynced == 0
            && self.sent_epoch == self.done_epoch
            && self.pending.parses.is_empty()
            && self.pending.describes.is_empty()
            && self.pending.binds.is_empty()
            && self.pending.closes.is_empty()
            && self.own_describes.is_empty()
            && self.own_syncs.is_empty()
    }

    /// How the columns of a COPY requested in sync epoch `e` will be known:
    /// detectors only (no column rules), by a describe of `query` appended
    /// to `inject`, or not at all (masked whole).
    fn copy_cols_for(&mut self, e: u64, query: Option<&[u8]>, inject: &mut Vec<u8>) -> CopyCols {
        match query {
            _ if !self.rules() => CopyCols::Detect,
            Some(q) => CopyCols::Waiting(self.own_describe(e, q, inject)),
            None => CopyCols::Unresolved,
        }
    }

    /// A statement's text as kept for the rule of its computed columns
    /// ([`crate::mask::derived`]): read when a result of it has one, with
    /// the engine of that time. `whole`: all of it is at hand (else it
    /// counts as unreadable). Read with the backslash setting of now, or
    /// both ways when something sent before may still change it.
    ///
    /// SQL-level prepared statements and cursors it makes are kept by
    /// name, and the texts of those it runs (`EXECUTE`, `FETCH`, `MOVE`)
    /// are added to its own (an unknown name makes it unreadable).
    fn statement_text(&mut self, sql: &[u8], whole: bool, e: u64) -> StatementText {
        self.text_of(sql, whole, e, false)
    }

    /// [`TargetMasker::statement_text`]; `parse`: the text of a Parse,
    /// which runs when a portal bound to it is executed, maybe after the
    /// statements it `EXECUTE`s or `FETCH`es from were prepared again: it
    /// is then unreadable.
    fn text_of(&mut self, sql: &[u8], whole: bool, e: u64, parse: bool) -> StatementText {
        // (A text that names `standard_conforming_strings` may change how
        // its own later statements read.)
        let backslash = if self.settled() && !has_word(sql, b"standard_conforming_strings") {
            Some(self.backslash_strings)
        } else {
            None
        };
        if !whole {
            // (Read when the rest comes: `on_client_more`.)
            return Some(Text::new(sql, backslash, true));
        }
        // How the text reads: with the setting of now, or both ways.
        let mut cmds = sql_commands(sql, self.backslash_strings);
        if backslash.is_none() {
            cmds.extend(sql_commands(sql, !self.backslash_strings));
        }
        if cmds.is_empty() {
            return Some(Text::new(sql, backslash, false));
        }
        // A name that may be refused, or may not run, keeps its old text
        // too. `DEALLOCATE` and `CLOSE` drop nothing: one that does not run
        // (an error before it) would leave a name holding its statement
        // while a later PREPARE of it, refused, put another text there.
        // Cursors are forgotten when their transaction ends. A name run
        // twice is added once; the texts run are joined once, at the end.
        let mut ran: std::collections::HashSet<(bool, Vec<u8>)> = Default::default();
        let mut runs: Vec<Rc<Text>> = Vec::new();
        let mut runs_unknown = false;
        for cmd in cmds {
            match cmd {
                SqlCommand::Prepare(name, q) => {
                    let t = Text::new(&q, backslash, false);
                    self.keep_prepared(name, t, true);
                }
                SqlCommand::Declare(name, q) => {
                    self.forget_portal(Some(&name));
                    // (Past the limit forgotten: their fetches are
                    // unreadable.)
                    let t = Text::new(&q, backslash, false);
                    keep_text(
                        &mut self.cursors,
                        &mut self.cursors_bytes,
                        name,
                        t,
                        |t| (e, t),
                        |c| &c.1,
                    );
                }
                SqlCommand::Execute(_) | SqlCommand::Fetch(_) if parse => runs_unknown = true,
                SqlCommand::Execute(_) | SqlCommand::Fetch(_) if runs_unknown => {}
                SqlCommand::Execute(name) => {
                    if let Some(r) = self.prepared.get(&name) {
                        if ran.insert((true, name)) {
                            runs.push(r.clone());
                        }
                    } else {
                        runs_unknown = true;
                    }
                }
                SqlCommand::Fetch(name) => {
                    if let Some(r) = self.portal_or_cursor(&name) {
                        if ran.insert((false, name)) {
                            runs.push(r);
                        }
                    } else {
                        runs_unknown = true;
                    }
                }
                SqlCommand::Unreadable(kind) => match kind {
                    // A name these cannot read (`U&"…"`): what it runs is
                    // not known; what it defines could be any name's.
                    SqlCommand::EXECUTE | SqlCommand::FETCH => runs_unknown = true,
                    SqlCommand::PREPARE => {
                        for t in self.prepared.values_mut() {
                            *t = unreadable();
                        }
                        self.prepared_bytes = 0;
                    }
                    _ => {
                        self.forget_portal(None);
                        for c in self.cursors.values_mut() {
                            c.1 = unreadable();
                        }
                        self.cursors_bytes = 0;
                    }
                },
                // (Its text is kept; the portal's description is not.)
                SqlCommand::Close(name) => self.forget_portal(name.as_deref()),
                SqlCommand::Deallocate(_) => {}
            }
        }
        let own = Text::new(sql, backslash, runs_unknown);
        if runs.is_empty() {
            return Some(own);
        }
        let mut parts: Vec<&Text> = vec![&own];
        parts.extend(runs.iter().map(|r| &**r));
        Some(Text::concat(&parts))
    }

    /// Forget the description of portal `name` (`None`: of every portal),
    /// which ends with its transaction or is closed, by a Close or by SQL:
    /// another portal may take the name (a cursor declared, or opened by a
    /// PL/pgSQL function), and its rows must not be read with the old
    /// columns. (A portal without one is read as a statement never
    /// described.)
    fn forget_portal(&mut self, name: Option<&[u8]>) {
        match name {
            Some(n) => {
                self.portals.remove(n);
            }
            None => self.portals.clear(),
        }
        if name.is_none_or(|n| self.plan_portal.as_deref() == Some(n)) {
            self.plan_portal = None;
        }
    }

    /// Keep `t` as the text of prepared statement `name`: joined to the
    /// text the name has (`join`: the name may still hold that statement),
    /// or in its place. Past [`MAX_KEPT`] bytes in all, every kept text is
    /// forgotten (statements without one are unreadable).
    fn keep_prepared(&mut self, name: Vec<u8>, t: Rc<Text>, join: bool) {
        let map = &mut self.prepared;
        let bytes = &mut self.prepared_bytes;
        if !join {
            // (In the place of the text the name has.)
            if let Some(old) = map.remove(&name) {
                *bytes = bytes.saturating_sub(old.sql().len());
            }
        }
        keep_text(map, bytes, name, t, |t| t, |t| t);
    }

    /// The text of what portal or SQL cursor `name` runs (both, when both
    /// names are known).
    fn portal_or_cursor(&self, name: &[u8]) -> StatementText {
        let cursor = self.cursors.get(name).map(|c| &c.1);
        match (self.portal_text.get(name), cursor) {
            (Some(p), Some(c)) => Some(p.joined(c)),
            (p, c) => p.or(c).cloned(),
        }
    }

    /// Whether column rules apply to what this session is sent now.
    fn rules(&self) -> bool {
        self.active && self.engine.has_column_rules()
    }

    /// Append the gateway's own describe of `query` (Close, Parse, Describe,
    /// Close of [`own_statement`]; never executed) to `out`, in sync epoch
    /// `e`; its id.
    fn own_describe(&mut self, e: u64, query: &[u8], out: &mut Vec<u8>) -> u64 {
        let name = own_statement();
        // (Closed first too: a statement of that name left over, whatever
        // the reason, would make every later describe fail.)
        backend::close_statement(out, name);
        backend::parse(out, name, query);
        backend::describe_statement(out, name);
        backend::close_statement(out, name);
        let id = self.next_own;
        self.next_own += 1;
        self.pending.closes.push_back((e, true, None));
        self.pending
            .parses
            .push_back((e, own_statement().to_vec(), false, None));
        self.pending
            .describes
            .push_back((e, Some(own_statement().to_vec()), Vec::new(), 0));
        self.pending.closes.push_back((e, true, None));
        let text = self.statement_text(query, true, e);
        self.own_describes.push_back((e, id, text));
        id
    }

    /// The gateway's own messages to put before client frames of the read
    /// just fed to [`TargetMasker::on_client_frame`]: (offset of the frame,
    /// bytes), in order.
    pub fn take_injections(&mut self) -> Vec<(usize, Vec<u8>)> {
        std::mem::take(&mut self.injections)
    }

    /// Answers to the gateway's own requests are outstanding (they are
    /// held whole, to be dropped).
    fn own_outstanding(&self) -> bool {
        !self.own_describes.is_empty()
            || !self.own_syncs.is_empty()
            || self.pending.closes.iter().any(|c| c.1)
    }

    /// The describe `id` was answered: the columns of its COPY.
    fn resolve_own(&mut self, cols: CopyCols) {
        let Some((_, id, _)) = self.own_describes.pop_front() else {
            return;
        };
        for r in self.copy_requested.iter_mut() {
            if matches!(r.3, CopyCols::Waiting(w) if w == id) {
                r.3 = cols;
                return;
            }
        }
    }

    /// Process one chunk read from the target (any held bytes first).
    pub fn process(&mut self, buf: &mut [u8]) -> Processed {
        let hits_before = self.hits.total();
        let mut at = 0usize;
        let n = buf.len();
        let mut rewritten = false;
        let mut masked = 0u32;
        // Start of the bytes not yet copied to `out` (when rewriting).
        let mut copied = 0usize;
        // Frames starting in this chunk, for the hits by frame.
        let mut frame = 0u32;
        self.frame_hits.clear();
        if self.active && (self.unsafe_encoding.is_some() || self.adrift) {
            // Masking came on (a new snapshot) in an encoding it cannot read,
            // or with answers it cannot pair.
            return Processed {
                ready: 0,
                rewritten: false,
                masked: 0,
                refused: true,
            };
        }
        let mut refused = false;
        if self.skip > 0 {
            let take = self.skip.min(n);
            self.skip -= take;
            at = take;
        }
        while at < n {
            if n - at < 5 {
                // A header split across reads: hold it.
                break;
            }
            let t = buf[at];
            let len =
                u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
            if len < 4 {
                // Malformed: forward as is; the relay's frame check refuses it.
                at = n;
                break;
            }
            let total = 1 + len;
            // (CommandComplete too: its tag tells schema changes.)
            // (NotificationResponse and FunctionCallResponse carry data
            // too, and are masked whole: one split across reads is held.)
            let data = matches!(t, b'T' | b'D' | b'E' | b'N' | b'S' | b'C' | b'A' | b'V')
                || (t == b'd' && self.copy_out.is_some())
                // (Answers to the gateway's own requests are dropped whole.)
                || self.own_outstanding();
            if at + total > n {
                if data && total <= self.max_frame.saturating_add(5) {
                    break; // hold: forwarded once whole
                }
                // Not a data frame (or over the limit, which the frame
                // scanner refuses anyway): pass the part we have through.
                if !self.on_target_frame(t, &mut buf[at + 5..n]) {
                    self.watch_frame(t, &buf[at + 5..n]);
                }
                if self.hits.log_len() > 0 {
                    self.collect_hits(frame, false);
                }
                self.skip = at + total - n;
                at = n;
                break;
            }
            let body = &mut buf[at + 5..at + total];
            if t == b'S' {
                match parameter_status(body) {
                    Some((b"client_encoding", v)) => {
                        self.set_client_encoding(v);
                        if self.active && self.unsafe_encoding.is_some() {
                            refused = true;
                            break;
                        }
                    }
                    Some((b"TimeZone", v)) => self.set_time_zone(v),
                    Some((b"standard_conforming_strings", v)) => {
                        self.set_standard_conforming_strings(v)
                    }
                    _ => {}
                }
            }
            if t == b'D' {
                self.watch_frame(t, &[]);
            }
            match t {
                b'D' if !self.active => {}
                b'D' => {
                    self.plan_for_current_result();
                    if !self.plan_known {
                        self.fallback_plan(body);
                    }
                    let mut rw = std::mem::take(&mut self.row_buf);
                    rw.clear();
                    match mask_data_row(&self.engine, &mut self.plan, body, &mut self.hits, &mut rw)
                    {
                        Ok(RowOutcome::Unchanged) => {}
                        Ok(RowOutcome::MaskedInPlace) => masked += 1,
                        Ok(RowOutcome::Rewritten) => {
                            masked += 1;
                            splice(&mut self.out, &mut rewritten, &buf[copied..at]);
                            self.out.extend_from_slice(&rw);
                            copied = at + total;
                        }
                        Err(e) => {
                            // A row that does not match its description: scan
                            // every column rather than forward it unmasked.
                            tracing::debug!("masking: {e}; scanning all columns");
                            self.fallback_plan(&buf[at + 5..at + total]);
                            let body = &mut buf[at + 5..at + total];
                            rw.clear();
                            match mask_data_row(
                                &self.engine,
                                &mut self.plan,
                                body,
                                &mut self.hits,
                                &mut rw,
                            ) {
                                Ok(RowOutcome::MaskedInPlace) => masked += 1,
                                // (A rule that changes lengths: `hash`, `null`.)
                                Ok(RowOutcome::Rewritten) => {
                                    masked += 1;
                                    splice(&mut self.out, &mut rewritten, &buf[copied..at]);
                                    self.out.extend_from_slice(&rw);
                                    copied = at + total;
                                }
                                _ => {}
                            }
                        }
                    }
                    self.row_buf = rw;
                }
                // The header row (column names, no column's values: the
                // detectors only, as for a RowDescription's names), and rows
                // under column rules or of a binary COPY (whose fields a rule
                // may turn to NULL): possibly a new length.
                b'd' if (self.copy_header && matches!(self.copy_out, Some(CopyOut::Fields)))
                    || (self.active
                        && (self.copy_ruled || matches!(self.copy_out, Some(CopyOut::Binary)))) =>
                {
                    let header = std::mem::take(&mut self.copy_header);
                    if self.active {
                        let mut rw = std::mem::take(&mut self.row_buf);
                        rw.clear();
                        let cols = self.copy_cols.clone();
                        let changed = match self.copy_out {
                            Some(CopyOut::Fields) if header => mask_copy_header(
                                &self.engine,
                                &self.copy_options,
                                body,
                                &mut self.hits,
                                &mut self.copy_scratch,
                                &mut rw,
                            ),
                            Some(CopyOut::Fields) => mask_copy_row(
                                &self.engine,
                                &self.copy_options,
                                cols.as_deref(),
                                body,
                                &mut self.hits,
                                &mut self.copy_scratch,
                                &mut rw,
                            ),
                            _ => mask_binary_copy_row(
                                &self.engine,
                                cols.as_deref(),
                                body,
                                &mut self.hits,
                                &mut rw,
                            ),
                        };
                        if changed {
                            splice(&mut self.out, &mut rewritten, &buf[copied..at]);
                            self.out.push(t);
                            self.out
                                .extend_from_slice(&((rw.len() + 4) as u32).to_be_bytes());
                            self.out.extend_from_slice(&rw);
                            copied = at + total;
                        }
                        self.row_buf = rw;
                    }
                }
                _ => {
                    let drop = self.on_target_frame(t, body);
                    if t == b'T' && !drop && self.active {
                        // (After the plans read the names as sent.)
                        mask_description_names(&self.engine, body, &mut self.hits);
                    }
                    if !drop {
                        self.watch_frame(t, &buf[at + 5..at + total]);
                    }
                    if let Some(f) = self.replace_with.take() {
                        splice(&mut self.out, &mut rewritten, &buf[copied..at]);
                        self.out.extend_from_slice(&f);
                        copied = at + total;
                    } else if drop {
                        // An answer to the gateway's own request: not
                        // forwarded.
                        splice(&mut self.out, &mut rewritten, &buf[copied..at]);
                        copied = at + total;
                        at += total;
                        continue;
                    }
                }
            }
            if self.hits.log_len() > 0 {
                self.collect_hits(frame, t == b'D');
            }
            frame += 1;
            at += total;
            if self.active && self.adrift {
                // (After the error that set it.)
                refused = true;
                break;
            }
        }
        if rewritten {
            self.out.extend_from_slice(&buf[copied..at]);
        }
        // COPY, error and notification hits count as masked values too.
        let other = (self.hits.total() - hits_before) as u32;
        Processed {
            ready: at,
            rewritten,
            masked: masked.max(other),
            refused,
        }
    }
}

impl TargetMasker {
    /// Bookkeeping for a complete (or passed-through) non-DataRow frame.
    /// True for an answer to the gateway's own request, which is not
    /// forwarded (those are always complete: held while outstanding).
    fn on_target_frame(&mut self, t: u8, body: &mut [u8]) -> bool {
        match t {
            b'1' => {
                // ParseComplete: the statement's old description is stale.
                if let Some((_, name, _, text)) = self.pending.parses.pop_front() {
                    if name == own_statement() {
                        return true;
                    }
                    // A portal bound to the name before runs the old
                    // statement: this one's description is not its.
                    if self.bound_undescribed.as_ref().is_some_and(|b| b.1 == name) {
                        self.bound_undescribed = None;
                    }
                    // (Nor does a Describe of such a portal describe this
                    // statement.)
                    self.portal_stmt.retain(|_, s| s.0 != name);
                    self.statements.remove(&name);
                    // (A named statement may have been prepared again by
                    // SQL since this Parse was sent: both texts. The
                    // unnamed one is replaced by each Parse.)
                    let join = !name.is_empty();
                    let t = text.unwrap_or_else(unreadable);
                    self.keep_prepared(name, t, join);
                }
            }
            b't' => {
                // ParameterDescription: a statement Describe is answered;
                // its RowDescription (or NoData) follows.
                if let Some((_, d, _, at)) = self.pending.describes.pop_front() {
                    let d = d.unwrap_or_default();
                    let own = d == own_statement();
                    self.describing = Some(d);
                    self.describing_at = at;
                    return own;
                }
            }
            b'T' if self.describing.as_deref() == Some(own_statement()) => {
                // The columns of a COPY the gateway described.
                self.describing = None;
                let text = self.own_describes.front().and_then(|o| o.2.clone());
                let cols = match copy_columns(
                    &self.engine,
                    self.plan.origins(),
                    self.plan.unread(),
                    text.as_deref(),
                    body,
                ) {
                    Ok(c) => CopyCols::Resolved(Rc::from(c)),
                    Err(_) => CopyCols::Unresolved,
                };
                self.resolve_own(cols);
                return true;
            }
            b'n' if self.describing.as_deref() == Some(own_statement()) => {
                self.describing = None;
                self.resolve_own(CopyCols::Unresolved);
                return true;
            }
            b'3' => {
                // CloseComplete.
                match self.pending.closes.pop_front() {
                    Some((_, true, _)) => return true,
                    // The name is free again.
                    Some((_, false, Some((b'S', name)))) => {
                        if self.bound_undescribed.as_ref().is_some_and(|b| b.1 == name) {
                            self.bound_undescribed = None;
                        }
                        self.open_stmts.remove(&name);
                        self.copy_stmts.remove(&name);
                        self.replacing_stmts.remove(&name);
                        if let Some(old) = self.prepared.remove(&name) {
                            self.prepared_bytes =
                                self.prepared_bytes.saturating_sub(old.sql().len());
                        }
                    }
                    Some((_, false, Some((_, name)))) => {
                        self.open_portals.remove(&name);
                        self.copy_portals.remove(&name);
                        self.replacing_portals.remove(&name);
                        self.portal_text.remove(&name);
                        self.portal_stmt.remove(&name);
                        self.undescribed_formats.remove(&name);
                        self.forget_portal(Some(&name));
                    }
                    _ => {}
                }
            }
            b'E' if self.own_syncs.front() == Some(&self.done_epoch) => {
                // The gateway's describe failed (its Sync's epoch holds
                // nothing else): the COPY after it fails the same way (in a
                // transaction block, with "transaction is aborted": this
                // error is shown instead), or is masked whole.
                tracing::debug!("describe of a COPY failed; its fields are masked whole");
                let _ = mask_error_fields(&self.engine, body, &mut self.hits);
                let mut e = Vec::new();
                backend::error_without(&mut e, b'E', body, b'P');
                self.own_error = Some((self.done_epoch + 1, e));
                return true;
            }
            b'E' if matches!(&self.own_error, Some((q, _)) if *q == self.done_epoch)
                && parse_error_fields(body).code == "25P02" =>
            {
                self.replace_with = self.own_error.take().map(|(_, e)| e);
                self.copy_out = None;
            }
            b'T' => {
                // Plans are built from the description as the server sent
                // it; the client gets ruled non-text columns as text.
                if let Some(name) = self.describing.take() {
                    // Rows come after a Bind; keep the description.
                    let desc = Rc::from(&*body);
                    // (A statement without a text: forgotten, unreadable.)
                    let text = Some(self.prepared.get(&name).cloned().unwrap_or_else(unreadable));
                    let told = if self.active {
                        retype_statement_description(
                            &self.engine,
                            self.plan.origins(),
                            self.plan.unread(),
                            text.as_deref(),
                            body,
                        )
                        .map(Rc::from)
                    } else {
                        None
                    };
                    // A portal bound to it before this Describe (in the
                    // same batch) runs with this description, unless SQL
                    // that may replace the statement was sent between them
                    // (the portal runs the query the name had).
                    // (With the Bind's text: its parameters' words.)
                    let at = self.describing_at;
                    if let Some((portal, _, f, bound)) =
                        self.bound_undescribed.take_if(|(p, st, ..)| {
                            *st == name
                                && self.plan_portal.as_ref() == Some(p)
                                && self
                                    .portal_stmt
                                    .get(p)
                                    .is_some_and(|s| s.0 == name && s.1 >= at)
                        })
                    {
                        let bound = bound.or_else(|| text.clone());
                        self.describe(&desc, Some(&f), Some(&told), &bound);
                        self.portals
                            .insert(portal, (desc.clone(), Some(f), told.clone(), bound));
                    }
                    self.statements
                        .insert(name, (desc, told, text, self.describing_at));
                } else if matches!(self.pending.describes.front(), Some((d, None, ..))
                    if !matches!(self.pending.results.front(), Some((q, None, ..)) if q < d))
                {
                    // A portal Describe (not sent after a simple Query still
                    // unanswered): its formats are in the message.
                    let (_, _, portal, _) = self.pending.describes.pop_front().expect("front");
                    let desc: Rc<[u8]> = Rc::from(&*body);
                    // (A portal without a text: a `WITH HOLD` cursor after
                    // its transaction, or bound by a Bind that did not read.)
                    let text = Some(self.portal_or_cursor(&portal).unwrap_or_else(unreadable));
                    self.describe(body, None, None, &text);
                    let told = if self.retype_forwarded(body) {
                        self.plan.shown_as_text().map(Rc::from)
                    } else {
                        None
                    };
                    // A statement never described itself takes this
                    // description: a client that has it may run the
                    // statement again without a Describe.
                    // (Or one described before SQL that may have replaced
                    // it: this one is what it held when the portal's Bind
                    // was sent, `at`, so it serves later Binds while no such
                    // SQL follows.)
                    if let Some((stmt, at)) = self.portal_stmt.get(&portal) {
                        if self.statements.get(stmt).is_none_or(|d| d.3 < *at) {
                            let st = self.prepared.get(stmt).cloned().unwrap_or_else(unreadable);
                            let entry = (desc.clone(), told.clone(), Some(st), *at);
                            self.statements.insert(stmt.clone(), entry);
                        }
                    }
                    self.portals
                        .insert(portal.clone(), (desc, None, told, text));
                    self.plan_portal = Some(portal);
                } else {
                    // A simple query's result.
                    let text = match self.pending.results.front() {
                        Some((_, None, t, _)) => t.clone(),
                        _ => None,
                    };
                    self.describe(body, None, None, &text);
                    self.retype_forwarded(body);
                    self.plan_portal = None;
                }
            }
            // NoData answers a statement or portal Describe.
            b'n' if self.describing.take().is_none()
                && matches!(self.pending.describes.front(), Some((_, None, ..))) =>
            {
                self.pending.describes.pop_front();
            }
            b'2' => {
                // BindComplete: rows of this portal use the statement's
                // description with the Bind's result formats.
                if let Some((_, portal, stmt, formats, params, at)) = self.pending.binds.pop_front()
                {
                    // (A portal bound before is no longer the current one.)
                    self.bound_undescribed = None;
                    // A parameter may be a member's key or path
                    // (`profile->>$1`): its words count as a literal's
                    // (only when one is ruled: the text, and so the plan,
                    // stay the same otherwise).
                    let params = params
                        .filter(|p| crate::mask::derived::params_rule(&self.engine, p).is_some());
                    let bound = |t: Rc<Text>| match &params {
                        Some(p) if t.reads_members() => t.with_params(p.clone()),
                        _ => t,
                    };
                    // (A Bind that did not read names nothing.)
                    let t = match self.prepared.get(&stmt) {
                        Some(t) if formats.is_some() || !portal.is_empty() || !stmt.is_empty() => {
                            bound(t.clone())
                        }
                        _ => unreadable(),
                    };
                    self.portal_text.insert(portal.clone(), t);
                    self.undescribed_formats.remove(&portal);
                    if formats.is_some() {
                        self.portal_stmt.insert(portal.clone(), (stmt.clone(), at));
                    }
                    // (Not a description from before SQL that may have
                    // replaced the statement when the Bind was sent: its
                    // rows are read as those of a statement never
                    // described, `fallback_plan`.)
                    let desc = self.statements.get(&stmt).filter(|d| d.3 >= at).cloned();
                    match (desc, formats) {
                        (Some((d, told, text, _)), Some(f)) => {
                            let text = text.map(bound);
                            self.describe(&d, Some(&f), Some(&told), &text);
                            self.portals
                                .insert(portal.clone(), (d, Some(f), told, text));
                        }
                        (_, f) => {
                            self.plan_known = false;
                            self.portals.remove(&portal);
                            if let Some(f) = &f {
                                self.undescribed_formats.insert(portal.clone(), f.clone());
                            }
                            let text = self.portal_text.get(&portal).cloned();
                            self.bound_undescribed =
                                f.map(|f| (portal.clone(), stmt.clone(), f, text));
                        }
                    }
                    self.plan_portal = Some(portal);
                }
            }
            b'C' | b's' | b'I' => {
                // An Execute is answered (a simple query ends at ReadyForQuery).
                self.execute_answered();
                // (A COPY FROM completed: the Syncs sent during its copy-in
                // were all ignored.)
                self.copy_in_uncounted = false;
            }
            b'H' => {
                // CopyOutResponse: format 0 = text (or csv), 1 = binary;
                // then the number of columns.
                // The request of the Query or Execute answered now. Those
                // of statements answered before it ran no COPY (what the
                // client side took for one ran another statement: one
                // prepared again by SQL, a cursor under a COPY portal's
                // name); a COPY this side did not see has none.
                let now = self.pending.results.front().map(|r| r.3);
                while let (Some(r), Some(now)) = (self.copy_requested.front(), now) {
                    if r.1 >= now {
                        break;
                    }
                    self.copy_requested.pop_front();
                }
                let requested = self.copy_requested.pop_front_if(|r| Some(r.1) == now);
                self.copy_options = requested
                    .as_ref()
                    .map_or_else(CopyOptions::text, |r| r.2.clone());
                self.copy_out = match body.first() {
                    Some(0) => Some(CopyOut::Fields),
                    _ => Some(CopyOut::Binary),
                };
                self.copy_header = self.copy_options.header;
                let n = body
                    .get(1..3)
                    .map(|b| i16::from_be_bytes([b[0], b[1]]) as usize);
                // Whose request this is cannot be told when an Execute of
                // this epoch ran a statement or portal of unknown kind, or
                // a client frame's names were not read.
                let unsure = self.copy_untrusted || self.poisoned.contains(&self.done_epoch);
                let cols = match requested {
                    Some((.., c)) if !(unsure && self.rules()) => c,
                    // A COPY the client side did not see coming.
                    _ if self.rules() => CopyCols::Unresolved,
                    _ => CopyCols::Detect,
                };
                // `COPY table TO` leaves generated columns out; `SELECT *`
                // has them.
                let cols = match (cols, self.plan.origins()) {
                    (CopyCols::Resolved(c), Some(o)) if n.is_some_and(|n| n < c.len()) => {
                        let kept: Vec<CopyColumn> = c
                            .iter()
                            .filter(|c| c.table == 0 || !o.is_generated(c.table, c.attnum))
                            .copied()
                            .collect();
                        CopyCols::Resolved(Rc::from(kept))
                    }
                    (c, _) => c,
                };
                // (A mask character that is the COPY's delimiter, quote or
                // escape: the fields masking changes are written anew
                // there too.)
                let clash = mask_char_clashes(&self.copy_options, self.engine.mask_char());
                (self.copy_ruled, self.copy_cols) = match cols {
                    CopyCols::Detect => (clash, None),
                    // (Number columns too: a card kept as a number gets
                    // its digits zeroed there, `mask_copy_row`.)
                    CopyCols::Resolved(c) if Some(c.len()) == n => {
                        let numbers = c.iter().any(|c| matches!(c.oid, 20 | 1700));
                        (any_rule(&c) || numbers || clash, Some(c))
                    }
                    // Not answered, failed, or other columns than described
                    // (generated ones the catalog read did not name).
                    _ => (true, None),
                };
            }
            b'E' if !self.active => self.error_answered(),
            b'G' => {
                // CopyInResponse: the copy-in of the simple Query being
                // answered started. The Syncs sent after that Query (and
                // before its CopyDone or CopyFail) get no answer.
                if self.copy_in_query == Some(self.done_epoch) {
                    self.copy_in_started = true;
                }
                if let Some(&(q, n)) = self.copy_in_unsure.front() {
                    if q == self.done_epoch {
                        self.copy_in_ignored = Some((q, n));
                        self.copy_in_unsure.pop_front();
                    }
                }
            }
            b'd' | b'N' | b'A' | b'V' | b'S' if !self.active => {}
            // (Binary COPY goes through `process`.)
            b'd' if matches!(self.copy_out, Some(CopyOut::Fields)) => {
                mask_copy_data(&self.engine, self.copy_options.format, body, &mut self.hits);
            }
            b'c' => {
                self.copy_out = None;
                self.copy_ruled = false;
            }
            // NotificationResponse: pid, channel, payload (NOTIFY can carry
            // row data, and a channel named by dynamic SQL too).
            b'A' if self.engine.detects() && body.len() > 4 => {
                if let Some(ch) = memchr::memchr(0, &body[4..]) {
                    let start = 4 + ch + 1;
                    self.engine
                        .mask_counted(&mut body[4..start - 1], &mut self.hits);
                    let end = body.len().saturating_sub(1).max(start);
                    self.engine
                        .mask_counted(&mut body[start..end], &mut self.hits);
                }
            }
            // FunctionCallResponse: the length of the result and its bytes
            // (`loread` through a FunctionCall, as psql's `\lo_export`
            // does, returns stored text). Under its statement's rule (see
            // FUNCTION_CALL) it is NULL: its type is not known (text, or a
            // binary number that masked bytes would make another).
            b'V' if body.len() > 4 => {
                let text = self.current_text();
                match text.and_then(|t| t.rule(&self.engine, self.plan.origins())) {
                    Some((r, _)) => {
                        self.hits.add(r, 1);
                        let mut f = vec![b'V'];
                        f.extend_from_slice(&8u32.to_be_bytes());
                        f.extend_from_slice(&(-1i32).to_be_bytes());
                        self.replace_with = Some(f);
                    }
                    None if self.engine.detects() => {
                        self.engine.mask_counted(&mut body[4..], &mut self.hits);
                    }
                    None => {}
                }
            }
            // ParameterStatus: a setting the session set from data
            // (`set_config('application_name', v, false)`) comes back in
            // it. (Those the gateway reads were read before this.)
            b'S' => {
                mask_parameter_value(&self.engine, body, &mut self.hits);
            }
            b'E' | b'N' => {
                // (What the statement's rule covers first, whole; then the
                // detectors.)
                // (The detectors and a `Key (col)=(…)` detail's column rule
                // first, then what the statement's rule covers, whole.)
                let _ = mask_error_fields(&self.engine, body, &mut self.hits);
                let text = self.current_text();
                let rule = text
                    .as_ref()
                    .and_then(|t| t.rule(&self.engine, self.plan.origins()));
                let sql = text.as_ref().map(|t| t.sql());
                mask_error_values(&self.engine, body, rule, sql, &mut self.hits);
                if t == b'E' {
                    self.error_answered();
                }
            }
            b'Z' => {
                self.bound_undescribed = None;
                self.unreported = false;
                // (More ReadyForQuery than requests counted: go by the
                // server.)
                let skipped = std::mem::take(&mut self.skipped);
                self.done_epoch = (self.done_epoch + 1 + skipped).min(self.sent_epoch);
                if let Some((q, n)) = self.copy_in_ignored {
                    if q < self.done_epoch {
                        // (The Syncs its copy-in ignored.)
                        self.done_epoch = (self.done_epoch + n).min(self.sent_epoch);
                        self.copy_in_ignored = None;
                    }
                }
                while self
                    .copy_in_unsure
                    .front()
                    .is_some_and(|&(q, _)| q < self.done_epoch)
                {
                    // (Its copy-in never started: they are answered.)
                    self.copy_in_unsure.pop_front();
                }
                let done = self.done_epoch;
                self.copy_ruled = false;
                self.tx_idle = body.first() == Some(&b'I');
                if matches!(&self.own_error, Some((q, _)) if *q < done) {
                    self.own_error = None;
                }
                self.poisoned.retain(|&p| p >= done);
                if self.copy_in_query.is_some_and(|q| q < done) {
                    self.copy_in_query = None;
                    self.copy_in_started = false;
                }
                if self.tx_idle {
                    // Named portals end with their transaction: those bound
                    // before this ReadyForQuery (not ones sent ahead of it).
                    self.open_portals.retain(|_, &mut e| e >= done);
                    let open = &self.open_portals;
                    self.replacing_portals
                        .retain(|p| p.is_empty() || open.contains_key(p));
                    // SQL cursors too (a `WITH HOLD` one, forgotten here,
                    // has its fetches masked as unreadable), and every portal
                    // bound before it (BindComplete came before it).
                    let bytes = &mut self.cursors_bytes;
                    self.cursors.retain(|_, c| {
                        let keep = c.0 >= done;
                        if !keep {
                            *bytes = bytes.saturating_sub(c.1.sql().len());
                        }
                        keep
                    });
                    self.portal_text.clear();
                    self.portal_stmt.clear();
                    self.undescribed_formats.clear();
                    self.forget_portal(None);
                }
                self.own_describes.retain(|(e, _, _)| *e >= done);
                self.pending.closes.retain(|(e, _, _)| *e >= done);
                // Requests before this Sync that were skipped after an error
                // get no answer: forget them (a Parse that never ran leaves
                // its name free).
                for (_, name, added, _) in self.pending.parses.iter().filter(|p| p.0 < done) {
                    if *added {
                        self.open_stmts.remove(name);
                    }
                }
                self.pending.parses.retain(|(e, _, _, _)| *e >= done);
                self.pending.describes.retain(|(e, ..)| *e >= done);
                self.pending.binds.retain(|(e, ..)| *e >= done);
                self.pending.results.retain(|r| r.0 >= done);
                self.copy_requested.retain(|r| r.0 >= done);
                self.query_ends.retain(|&q| q >= done);
                self.describing = None;
                self.copy_out = None;
                if done
                    .checked_sub(1)
                    .is_some_and(|d| self.own_syncs.front() == Some(&d))
                {
                    // (Everything of the gateway's Sync was answered or
                    // skipped: nothing to tell the client.)
                    self.own_syncs.pop_front();
                    return true;
                }
            }
            _ => {}
        }
        false
    }

    /// The text of the statement whose answers come now (a simple Query's,
    /// or the portal's of an Execute), when known.
    fn current_text(&self) -> StatementText {
        match self.pending.results.front() {
            Some((_, None, text, _)) => text.clone(),
            // (Described, or bound only: an Execute without a Describe.)
            Some((_, Some(portal), ..)) => self
                .portals
                .get(portal)
                .and_then(|p| p.3.clone())
                .or_else(|| self.portal_text.get(portal).cloned()),
            None => None,
        }
    }

    /// Rows of an Execute use that portal's plan (it may have been
    /// suspended and resumed after other statements).
    fn plan_for_current_result(&mut self) {
        let Some((_, Some(portal), ..)) = self.pending.results.front() else {
            return;
        };
        // Once per DataRow: the unnamed portal (the common case) without a
        // call to memcmp.
        if let Some(p) = &self.plan_portal {
            if p.len() == portal.len() && (p.is_empty() || p == portal) {
                return;
            }
        }
        let portal = portal.clone();
        self.plan_known = match self.portals.get(&portal).cloned() {
            Some((d, f, told, text)) => {
                self.describe(&d, f.as_deref(), Some(&told), &text);
                self.plan_known
            }
            None => false,
        };
        self.plan_portal = Some(portal);
    }

    /// Plan from a description as the server sent it. `told`: what the
    /// client was told of its types when it got it (a cached statement or
    /// portal, maybe under another profile), which the plan keeps to;
    /// `None` for a description being forwarded now.
    ///
    /// `text`: the statement's (for the rule of its computed columns).
    fn describe(
        &mut self,
        desc: &[u8],
        formats: Option<&[i16]>,
        told: Option<&Told>,
        text: &StatementText,
    ) {
        // The same result shape as the plan was built from (a statement
        // run again): keep the plan. Column rules match names by pattern,
        // which costs more than comparing the description.
        if self.fallback_width.is_none()
            && self.plan_desc.as_deref() == Some(desc)
            && self.plan_formats.as_deref() == formats
            && self.plan_told.as_ref() == told
            && same_text(&self.plan_text, text)
        {
            self.plan_known = self.plan_desc_ok;
            return;
        }
        self.fallback_width = None;
        self.plan_text = text.clone();
        self.plan.set_statement(text.clone());
        self.plan_known = plan_from(&mut self.plan, &self.engine, desc, formats);
        if let (true, Some(told)) = (self.plan_known, told) {
            self.plan.keep_to_told_types(told.as_deref().unwrap_or(&[]));
        }
        let mut d = self.plan_desc.take().unwrap_or_default();
        d.clear();
        d.extend_from_slice(desc);
        self.plan_desc = Some(d);
        self.plan_formats = formats.map(<[i16]>::to_vec);
        self.plan_told = told.cloned();
        self.plan_desc_ok = self.plan_known;
    }

    /// Show the client the columns the current plan (just built from
    /// `body`) applies a rule to the text form of as `text`; whether any.
    fn retype_forwarded(&self, body: &mut [u8]) -> bool {
        self.active && self.plan_known && self.plan.retype_description(body)
    }

    /// No known description: scan every column of rows like `row`, and
    /// give each the rule its statement's text gives a computed column
    /// (the strongest among the ruled names it mentions; the strongest
    /// name rule when it is not known): a column rule must not be escaped
    /// by leaving the Describe out.
    fn fallback_plan(&mut self, row: &[u8]) {
        let n = row
            .get(..2)
            .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
        let text = match self.pending.results.front() {
            Some((_, Some(portal), ..)) => self
                .portals
                .get(portal)
                .and_then(|p| p.3.clone())
                .or_else(|| self.portal_or_cursor(portal)),
            Some((_, None, t, _)) => t.clone(),
            None => None,
        }
        .or_else(|| Some(unreadable()));
        // The result formats of the Bind that made the portal, when known
        // (else text, as a simple query's rows are).
        let formats = match self.pending.results.front() {
            Some((_, Some(portal), ..)) => self.undescribed_formats.get(portal).cloned(),
            _ => None,
        };
        if self.fallback_width == Some(n)
            && same_text(&self.plan_text, &text)
            && self.fallback_formats == formats
        {
            return;
        }
        let mut desc = Vec::with_capacity(2 + n * 20);
        desc.extend_from_slice(&(n as i16).to_be_bytes());
        for _ in 0..n {
            desc.extend_from_slice(b"?\0");
            desc.extend_from_slice(&0u32.to_be_bytes()); // table oid
            desc.extend_from_slice(&0i16.to_be_bytes()); // attnum
            desc.extend_from_slice(&25u32.to_be_bytes()); // text
            desc.extend_from_slice(&(-1i16).to_be_bytes());
            desc.extend_from_slice(&(-1i32).to_be_bytes());
            desc.extend_from_slice(&0i16.to_be_bytes()); // text format
        }
        // (Columns of no table: each takes its statement's rule.)
        self.plan_text = text.clone();
        self.plan.set_statement(text);
        let _ = self.plan.describe(&self.engine, &desc);
        if let Some(f) = &formats {
            if self.plan.set_result_formats(&self.engine, f).is_err() {
                // (Format codes for another number of columns: the server
                // refuses such a Bind; read the row as text.)
                let _ = self.plan.describe(&self.engine, &desc);
            }
            // (A binary column of unknown type under a rule: NULL.)
            self.plan.null_ruled_binary();
        }
        self.fallback_formats = formats;
        self.plan_desc = None;
        // Stays "unknown": a row of another width gets its own plan.
        self.plan_known = false;
        self.fallback_width = Some(n);
    }
}

/// Most bytes of prepared statement texts, and of cursor texts, a session
/// keeps: past it they are forgotten (and read as unreadable).
const MAX_KEPT: usize = 16 << 20;

/// Whether SQL `text` may replace a prepared statement when it runs: the
/// words of a `PREPARE name [(types)] AS statement`, anywhere in it (so in
/// dynamic SQL too, `'PREPARE ' || quote_ident(n) || ' AS ' || q`).
///
/// Only a `PREPARE` (or a Parse, which the masker reads) gives a name a
/// statement: `DEALLOCATE` and `DISCARD` take them away, after which a Bind
/// of the name fails until one of those gives it another. Counting them
/// (a pool's `DISCARD TEMP` at each recycle), or the word "prepare" alone
/// (a note's text), made every statement described before read as never
/// described for the rest of the session: a cached statement's unruled
/// columns took its text's rule and its binary numbers were masked as text.
fn replaces_statements(text: &[u8]) -> bool {
    has_words_in_order(text, b"prepare", b"as")
}

/// The large-object functions libpq's interface calls by FunctionCall
/// (`lo_open` … `lo_tell`, `lo_create`, `lo_unlink`, `lo_truncate` and the
/// 64-bit `lo_lseek64`, `lo_tell64`, `lo_truncate64`).
fn large_object_function(oid: u32) -> bool {
    matches!(oid, 715 | 952..=958 | 964 | 1004 | 3170..=3172)
}

/// A text that cannot be read (its statement's computed text columns take
/// the strongest name rule).
fn unreadable() -> Rc<Text> {
    Text::new(b"", None, true)
}

/// Whether two statement texts are the same (an unnamed statement parsed
/// again with the same text keeps its plan).
fn same_text(a: &StatementText, b: &StatementText) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            Rc::ptr_eq(x, y)
                || (x.partial() == y.partial()
                    && x.backslash() == y.backslash()
                    && x.params() == y.params()
                    && x.sql() == y.sql())
        }
        _ => false,
    }
}

/// Plan from a RowDescription and, for a Bind, its result formats; false if
/// either does not parse.
fn plan_from(plan: &mut RowPlan, engine: &Engine, desc: &[u8], formats: Option<&[i16]>) -> bool {
    plan.describe(engine, desc).is_ok()
        && formats.is_none_or(|f| plan.set_result_formats(engine, f).is_ok())
}

/// The built-in profile's engine, for planning in passive maskers.
fn default_engine() -> Arc<Engine> {
    static E: std::sync::OnceLock<Arc<Engine>> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        Engine::compile_shared(&crate::mask::MaskingProfile::default())
            .expect("the built-in profile compiles")
    })
    .clone()
}

fn cstr(b: &[u8]) -> Option<&[u8]> {
    memchr::memchr(0, b).map(|i| &b[..i])
}

/// A prepared statement's or portal's name in a protocol message, as the
/// server keeps it ([`server_name`]: a Close of a name alike in its first
/// 63 bytes closed another).
fn pname(b: &[u8]) -> Option<&[u8]> {
    cstr(b).map(server_name)
}

/// Start (or go on) re-assembling a chunk into `out`: the bytes before the
/// frame being replaced or dropped.
fn splice(out: &mut Vec<u8>, rewritten: &mut bool, before: &[u8]) {
    if !*rewritten {
        *rewritten = true;
        out.clear();
    }
    out.extend_from_slice(before);
}

/// Keep text `t` under `name` in `map` (as `wrap` makes it a value),
/// joined to the text the name has (`text` reads it from a value), counting
/// the bytes kept in `bytes`: past [`MAX_KEPT`] in all, every text of the
/// map is forgotten.
fn keep_text<V>(
    map: &mut HashMap<Vec<u8>, V>,
    bytes: &mut usize,
    name: Vec<u8>,
    t: Rc<Text>,
    wrap: impl FnOnce(Rc<Text>) -> V,
    text: fn(&V) -> &Rc<Text>,
) {
    let t = match map.get(&name) {
        Some(old) => text(old).joined(&t),
        None => t,
    };
    *bytes += t.sql().len();
    if let Some(old) = map.insert(name, wrap(t)) {
        *bytes = bytes.saturating_sub(text(&old).sql().len());
    }
    if *bytes > MAX_KEPT {
        map.clear();
        *bytes = 0;
    }
}

/// A Bind's portal, statement, result formats and where its parameter
/// part is in the body.
type BindNames = (
    Vec<u8>,
    Vec<u8>,
    Option<Vec<i16>>,
    Option<std::ops::Range<usize>>,
);

/// Portal, statement name, result format codes and parameter part of a
/// Bind body (formats and parameters only when the whole message is at
/// hand); None when the names are not all in the part of the body at hand.
fn parse_bind(body: &[u8], whole: bool) -> Option<BindNames> {
    let p = memchr::memchr(0, body)?;
    let portal = server_name(&body[..p]).to_vec();
    let rest = &body[p + 1..];
    let s = memchr::memchr(0, rest)?;
    let stmt = server_name(&rest[..s]).to_vec();
    if !whole {
        return Some((portal, stmt, None, None));
    }
    fn take<'a>(r: &mut &'a [u8], k: usize) -> Option<&'a [u8]> {
        let (v, rest) = r.split_at_checked(k)?;
        *r = rest;
        Some(v)
    }
    let mut params = None;
    let formats = (|| {
        let mut r = &rest[s + 1..];
        // (A negative count reads as none, as the server reads it.)
        let nf = i16::from_be_bytes(take(&mut r, 2)?.try_into().ok()?).max(0) as usize;
        take(&mut r, nf * 2)?;
        let from = body.len() - r.len();
        let np = i16::from_be_bytes(r.get(..2)?.try_into().ok()?);
        r = BindValues::new(r).rest()?;
        if np > 0 {
            params = Some(from..body.len() - r.len());
        }
        let nr = i16::from_be_bytes(take(&mut r, 2)?.try_into().ok()?).max(0) as usize;
        let raw = take(&mut r, nr * 2)?;
        Some(
            raw.chunks(2)
                .map(|c| i16::from_be_bytes([c[0], c[1]]))
                .collect(),
        )
    })();
    Some((portal, stmt, formats, params))
}

/// A Bind split across reads, read as its parts come for the result
/// formats that end it. Its parameter values are skipped as they pass, not
/// kept: a Bind may carry megabytes (an upload with a `RETURNING`), and one
/// kept only up to a limit lost its result formats, so its rows were read
/// as a statement never described (binary numbers masked as text).
#[derive(Debug, Default)]
struct SplitBind {
    /// Bytes not read yet (never more than one read's and a count's worth:
    /// a parameter value's are skipped).
    buf: Vec<u8>,
    /// Bytes of a parameter value still to skip.
    skip: usize,
    step: BindStep,
    /// The result formats, once read.
    formats: Option<Vec<i16>>,
    /// The portal's and the statement's names, as the server keeps them.
    names: [Vec<u8>; 2],
    /// The epoch of a Bind whose names were not all in its first read: it
    /// is accounted once they come (`TargetMasker::bind_sent`).
    unnamed: Option<u64>,
}

/// What a [`SplitBind`] reads next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum BindStep {
    /// The portal's name (0) or the statement's (1).
    #[default]
    Names0,
    Names1,
    ParamFormats,
    ParamCount,
    /// Parameter values left.
    Params(u16),
    ResultFormats,
    /// Read to its result formats, or not readable.
    Done,
}

impl SplitBind {
    /// The next part of the Bind's body.
    fn feed(&mut self, part: &[u8]) {
        if self.step == BindStep::Done {
            return;
        }
        let k = self.skip.min(part.len());
        self.skip -= k;
        self.buf.extend_from_slice(&part[k..]);
        let count = |r: &[u8]| r.get(..2).map(|c| i16::from_be_bytes([c[0], c[1]]).max(0));
        let mut at = 0;
        loop {
            let r = &self.buf[at..];
            match self.step {
                BindStep::Names0 | BindStep::Names1 => {
                    // (As the server keeps a name: its first bytes. A name
                    // may be cut by the end of a read, even the first.)
                    let z = memchr::memchr(0, r);
                    let part = &r[..z.unwrap_or(r.len())];
                    let name = &mut self.names[usize::from(self.step == BindStep::Names1)];
                    let room = NAME_MAX.saturating_sub(name.len());
                    name.extend_from_slice(&part[..part.len().min(room)]);
                    let Some(z) = z else {
                        at = self.buf.len();
                        break;
                    };
                    at += z + 1;
                    self.step = match self.step {
                        BindStep::Names0 => BindStep::Names1,
                        _ => BindStep::ParamFormats,
                    };
                }
                BindStep::ParamFormats => {
                    let Some(n) = count(r) else { break };
                    let end = 2 + 2 * n as usize;
                    if r.len() < end {
                        break;
                    }
                    at += end;
                    self.step = BindStep::ParamCount;
                }
                BindStep::ParamCount => {
                    let Some(n) = count(r) else { break };
                    at += 2;
                    self.step = BindStep::Params(n as u16);
                }
                BindStep::Params(0) => self.step = BindStep::ResultFormats,
                BindStep::Params(left) => {
                    let Some(l) = r.get(..4) else { break };
                    // (NULL: no bytes.)
                    let len =
                        usize::try_from(i32::from_be_bytes([l[0], l[1], l[2], l[3]])).unwrap_or(0);
                    self.step = BindStep::Params(left - 1);
                    let have = r.len() - 4;
                    if len > have {
                        self.skip = len - have;
                        at = self.buf.len();
                        break;
                    }
                    at += 4 + len;
                }
                BindStep::ResultFormats => {
                    let Some(n) = count(r) else { break };
                    let Some(raw) = r.get(2..2 + 2 * n as usize) else {
                        break;
                    };
                    self.formats = Some(
                        raw.chunks(2)
                            .map(|c| i16::from_be_bytes([c[0], c[1]]))
                            .collect(),
                    );
                    self.step = BindStep::Done;
                    at = self.buf.len();
                }
                BindStep::Done => break,
            }
        }
        self.buf.drain(..at);
    }

    /// The result formats, when the Bind was read to them.
    fn formats(self) -> Option<Vec<i16>> {
        self.formats
    }

    /// Whether both names were read.
    fn names_read(&self) -> bool {
        !matches!(self.step, BindStep::Names0 | BindStep::Names1)
    }
}

/// The values of a Bind's parameter part (count, then length and value of
/// each) short enough to be a key or a path ([`MAX_PARAM_NAME`] bytes), in
/// the same layout; None when there is none.
fn short_params(part: &[u8]) -> Option<Box<[u8]>> {
    let mut out = vec![0, 0];
    let mut kept = 0i16;
    let mut values = BindValues::new(part);
    for v in (&mut values).filter(|v| v.len() <= MAX_PARAM_NAME) {
        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
        out.extend_from_slice(v);
        kept += 1;
    }
    values.rest()?;
    if kept == 0 {
        return None;
    }
    out[..2].copy_from_slice(&kept.to_be_bytes());
    Some(out.into())
}

/// Scan a ParameterStatus body's value (a setting can hold data:
/// `set_config('application_name', v, false)`, or a role's default set
/// from data) with the detectors, in place. Returns the hits.
fn mask_parameter_value(engine: &Engine, body: &mut [u8], hits: &mut Hits) -> u32 {
    if !engine.detects() {
        return 0;
    }
    match memchr::memchr(0, body) {
        Some(name) => {
            let end = body.len().saturating_sub(1).max(name + 1);
            engine.mask_counted(&mut body[name + 1..end], hits)
        }
        None => 0,
    }
}

/// Mask the messages the target sent during login, which reach the client
/// before any masker runs (ParameterStatus values: a role's default
/// `application_name`; NoticeResponse fields), in place. `buf` holds whole
/// backend messages; anything that does not parse is left as it is.
pub fn mask_login_messages(engine: &Engine, buf: &mut [u8], hits: &mut Hits) {
    let mut at = 0;
    while at + 5 <= buf.len() {
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        let end = at + 1 + len;
        if len < 4 || end > buf.len() {
            return;
        }
        let (t, body) = (buf[at], &mut buf[at + 5..end]);
        match t {
            b'S' => {
                mask_parameter_value(engine, body, hits);
            }
            b'N' => {
                let _ = mask_error_fields(engine, body, hits);
            }
            _ => {}
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskingProfile;

    fn engine() -> Arc<Engine> {
        Engine::compile_shared(&MaskingProfile::default()).unwrap()
    }

    fn frame(t: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![t];
        f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn row_desc(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut b = (cols.len() as i16).to_be_bytes().to_vec();
        for (name, oid) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
        }
        frame(b'T', &b)
    }

    fn data_row(vals: &[&str]) -> Vec<u8> {
        let mut b = (vals.len() as i16).to_be_bytes().to_vec();
        for v in vals {
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        frame(b'D', &b)
    }

    const CARD: &str = "4111 1111 1111 1111";

    /// Client: Parse "s1", Describe S "s1", Sync; then Bind s1 (binary
    /// results), Execute, Sync.
    fn prepare_and_run_binary(m: &mut TargetMasker) {
        m.on_client_frame(tag::PARSE, b"s1\0select\0\0\0", true, Some(0));
        m.on_client_frame(tag::DESCRIBE, b"Ss1\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        run_s1_binary(m);
    }

    /// Client: Bind s1 (binary results), Execute, Sync.
    fn run_s1_binary(m: &mut TargetMasker) {
        let mut bind = b"\0s1\0".to_vec();
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes()); // binary
        m.on_client_frame(tag::BIND, &bind, true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
    }

    #[test]
    fn simple_query_rows_are_masked_in_place_even_when_split() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let mut stream = row_desc(&[("note", 25)]);
        stream.extend(data_row(&[&format!("card {CARD} ok")]));
        stream.extend(frame(b'C', b"SELECT 1\0"));
        stream.extend(frame(b'Z', b"I"));
        // Feed in every split position; the forwarded bytes never hold the card.
        for cut in 1..stream.len() {
            let mut m2 = TargetMasker::new(engine(), 1 << 20);
            let mut fwd = Vec::new();
            let mut first = stream[..cut].to_vec();
            let p = m2.process(&mut first);
            fwd.extend_from_slice(&first[..p.ready]);
            let mut second = first[p.ready..].to_vec();
            second.extend_from_slice(&stream[cut..]);
            let p = m2.process(&mut second);
            assert_eq!(p.ready, second.len(), "cut {cut}");
            fwd.extend_from_slice(&second[..p.ready]);
            assert_eq!(fwd.len(), stream.len());
            assert!(
                memchr::memmem::find(&fwd, b"4111 1111").is_none(),
                "cut {cut}"
            );
        }
        let mut all = stream.clone();
        let p = m.process(&mut all);
        assert_eq!(p.masked, 1);
    }

    #[test]
    fn hits_are_listed_by_frame_rule_and_column() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.record_hits(true);
        let mut s = row_desc(&[("id", 25), ("contact", 25), ("note", 25)]);
        s.extend(data_row(&["1", "bob@example.com", "-"])); // frame 1
        s.extend(data_row(&["2", "none", "plain"])); // frame 2: nothing
        s.extend(data_row(&["3", "a@example.com b@example.org", CARD])); // frame 3
        s.extend(frame(b'C', b"SELECT 3\0"));
        s.extend(frame(b'Z', b"I"));
        s.extend(frame(
            b'E',
            format!("SERROR\0C23505\0Mdup {CARD}\0\0").as_bytes(),
        )); // frame 6
        let p = m.process(&mut s);
        assert_eq!(p.ready, s.len());
        let got: Vec<_> = m
            .frame_hits()
            .iter()
            .map(|(f, r, c, n)| (f, r.to_string(), c.to_string(), n))
            .collect();
        assert_eq!(
            got,
            [
                (1, "email".to_string(), "contact".to_string(), 1),
                (3, "email".to_string(), "contact".to_string(), 2),
                (3, "payment_card".to_string(), "note".to_string(), 1),
                (6, "payment_card".to_string(), String::new(), 1),
            ]
        );
        // The next chunk starts a new list.
        let mut s = data_row(&["4", "x", "y"]);
        m.process(&mut s);
        assert!(m.frame_hits().is_empty());
        // Without recording, nothing is listed (metrics still count).
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let mut s = data_row(&["bob@example.com"]);
        assert_eq!(m.process(&mut s).masked, 1);
        assert!(m.frame_hits().is_empty());
    }

    #[test]
    fn a_repeated_description_reuses_the_plan_until_the_profile_changes() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let result = |v: &str| {
            let mut s = row_desc(&[("memo_text", 25)]);
            s.extend(data_row(&[v]));
            s.extend(frame(b'C', b"SELECT 1\0"));
            s.extend(frame(b'Z', b"I"));
            s
        };
        for _ in 0..3 {
            let mut s = result("plain words");
            m.process(&mut s);
            assert!(memchr::memmem::find(&s, b"plain words").is_some());
        }
        // A profile that masks the column whole: the same description now
        // gets the new plan.
        let p: MaskingProfile =
            serde_yaml::from_str("columns: [{ column: 'memo_*', action: mask }]").unwrap();
        m.set_engine(Some(Engine::compile_shared(&p).unwrap()));
        let mut s = result("plain words");
        m.process(&mut s);
        assert!(memchr::memmem::find(&s, b"plain words").is_none());
        // And back.
        m.set_engine(Some(engine()));
        let mut s = result("plain words");
        m.process(&mut s);
        assert!(memchr::memmem::find(&s, b"plain words").is_some());
    }

    /// A column rule on a non-text type: the client is told `text` (in a
    /// simple query's and a Describe's RowDescription) while masking is on,
    /// and the server's type while the session sees results unmasked.
    #[test]
    fn ruled_non_text_columns_are_described_as_text_while_masking() {
        let p: MaskingProfile =
            serde_yaml::from_str("columns: [{ column: 'acct', action: hash }]").unwrap();
        let e = Engine::compile_shared(&p).unwrap();
        let type_of = |s: &[u8], col: usize| {
            // Both test columns have 4-byte names: oid at 2 + k*23 + 5 + 6.
            let at = 5 + 2 + col * 23 + 5 + 6;
            u32::from_be_bytes(s[at..at + 4].try_into().unwrap())
        };
        let mut m = TargetMasker::new(e.clone(), 1 << 20);
        m.on_client_frame(tag::QUERY, b"select\0", true, Some(0));
        let mut s = row_desc(&[("acct", 23), ("idno", 23)]);
        s.extend(data_row(&["42", "7"]));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        let p = m.process(&mut s);
        assert!(p.rewritten);
        let out = m.out().to_vec();
        assert_eq!((type_of(&out, 0), type_of(&out, 1)), (25, 23));
        let mut h = Vec::new();
        e.hash_into(b"42", &mut h);
        assert!(memchr::memmem::find(&out, &h).is_some());

        // A statement Describe, then a Bind asking for binary results: the
        // binary int4 is hashed as its text form.
        prepare_and_run_binary(&mut m);
        let mut s = frame(b'1', b"");
        s.extend(frame(b't', &0i16.to_be_bytes()));
        let at = s.len();
        s.extend(row_desc(&[("acct", 23), ("idno", 23)]));
        s.extend(frame(b'Z', b"I"));
        s.extend(frame(b'2', b""));
        let mut row = 2i16.to_be_bytes().to_vec();
        for v in [42i32, 7] {
            row.extend_from_slice(&4i32.to_be_bytes());
            row.extend_from_slice(&v.to_be_bytes());
        }
        s.extend(frame(b'D', &row));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        let p = m.process(&mut s);
        assert_eq!((type_of(&s[at..], 0), type_of(&s[at..], 1)), (25, 23));
        assert!(p.rewritten);
        assert!(memchr::memmem::find(m.out(), &h).is_some());

        // Unmasked: the server's types.
        m.set_engine(None);
        let mut s = row_desc(&[("acct", 23), ("idno", 23)]);
        m.process(&mut s);
        assert_eq!((type_of(&s, 0), type_of(&s, 1)), (23, 23));
    }

    /// A statement prepared under one profile and run under another keeps
    /// the types its Describe told the client: a column it takes for an
    /// int4 that a new rule would hash comes as NULL; one it was told is
    /// text, whose rule is gone, comes as text.
    #[test]
    fn a_prepared_statement_keeps_the_types_it_was_described_with() {
        let ruled: MaskingProfile =
            serde_yaml::from_str("columns: [{ column: 'acct', action: hash }]").unwrap();
        let ruled = Engine::compile_shared(&ruled).unwrap();
        let plain = engine();
        // The answers to Parse, Describe, Sync.
        let described = |m: &mut TargetMasker| {
            let mut s = frame(b'1', b"");
            s.extend(frame(b't', &0i16.to_be_bytes()));
            s.extend(row_desc(&[("acct", 23)]));
            s.extend(frame(b'Z', b"I"));
            m.process(&mut s);
        };
        // The answers to Bind, Execute, Sync.
        let answers = || {
            let mut s = frame(b'2', b"");
            let mut row = 1i16.to_be_bytes().to_vec();
            row.extend_from_slice(&4i32.to_be_bytes());
            row.extend_from_slice(&42i32.to_be_bytes());
            s.extend(frame(b'D', &row));
            s.extend(frame(b'C', b"SELECT 1\0"));
            s.extend(frame(b'Z', b"I"));
            s
        };
        // The forwarded DataRow's only cell.
        let cell = |m: &TargetMasker, s: &[u8], p: Processed| -> Option<Vec<u8>> {
            let out = if p.rewritten { m.out() } else { &s[..p.ready] };
            let d = memchr::memmem::find(out, b"D\0\0\0").unwrap();
            let len = i32::from_be_bytes(out[d + 7..d + 11].try_into().unwrap());
            (len >= 0).then(|| out[d + 11..d + 11 + len as usize].to_vec())
        };

        // Described under `first`, run under `then`: the forwarded cell.
        let run = |first: &Arc<Engine>, then: &Arc<Engine>| {
            let mut m = TargetMasker::new(first.clone(), 1 << 20);
            m.on_client_frame(tag::PARSE, b"s1\0select\0\0\0", true, Some(0));
            m.on_client_frame(tag::DESCRIBE, b"Ss1\0", true, Some(0));
            m.on_client_frame(tag::SYNC, b"", true, Some(0));
            described(&mut m);
            m.set_engine(Some(then.clone()));
            run_s1_binary(&mut m);
            let mut s = answers();
            let p = m.process(&mut s);
            cell(&m, &s, p)
        };
        // Told int4 (no rule then), run with the rule: NULL.
        assert_eq!(run(&plain, &ruled), None);
        // Told text (the rule then), run without it: "42" as text.
        assert_eq!(run(&ruled, &plain).as_deref(), Some(&b"42"[..]));
        // Same profile throughout: hashed, as the client was told.
        let mut h = Vec::new();
        ruled.hash_into(b"42", &mut h);
        assert_eq!(run(&ruled, &ruled), Some(h));
    }

    /// Computed columns (no table oid) of a text-like type take the rule
    /// of the ruled names their statement mentions, per statement, in the
    /// simple and the extended protocol.
    #[test]
    fn computed_columns_take_the_rule_of_the_names_their_statement_mentions() {
        const SECRET: &str = "s3cr3t-value";
        // What the masker forwards of `s`, as text.
        let run = |m: &mut TargetMasker, mut s: Vec<u8>| -> String {
            String::from_utf8_lossy(&forwarded(m, &mut s)).into_owned()
        };
        let rows = |desc: &[(&str, u32)], vals: &[&str]| {
            let mut s = row_desc(desc);
            s.extend(data_row(vals));
            s.extend(frame(b'C', b"SELECT 1\0"));
            s.extend(frame(b'Z', b"I"));
            s
        };
        let query = |m: &mut TargetMasker, sql: &str| {
            let mut q = sql.as_bytes().to_vec();
            q.push(0);
            m.on_client_frame(tag::QUERY, &q, true, Some(0));
        };
        let mut m = TargetMasker::new(engine(), 1 << 20);
        // Simple Query: the text computed column is masked whole, the
        // count is not; a statement that mentions no ruled name keeps its
        // computed column as it is.
        query(
            &mut m,
            "SELECT upper(api_secret), count(*) FROM apps GROUP BY 1",
        );
        let out = run(
            &mut m,
            rows(&[("upper", 25), ("count", 20)], &[SECRET, "7"]),
        );
        assert!(!out.contains(SECRET) && out.contains("************") && out.contains('7'));
        query(&mut m, "SELECT upper(name), count(*) FROM apps GROUP BY 1");
        let out = run(
            &mut m,
            rows(&[("upper", 25), ("count", 20)], &[SECRET, "7"]),
        );
        assert!(out.contains(SECRET), "same description, other text: {out}");
        // The same text again keeps the same plan.
        query(&mut m, "SELECT upper(name), count(*) FROM apps GROUP BY 1");
        assert!(run(
            &mut m,
            rows(&[("upper", 25), ("count", 20)], &[SECRET, "7"])
        )
        .contains(SECRET));
        // An SSN column's rule keeps the last four characters.
        query(&mut m, "SELECT ssn || '' FROM people");
        let out = run(&mut m, rows(&[("?column?", 25)], &["123-45-6789x"]));
        assert!(out.contains("********789x"), "{out}");

        // Extended, pipelined, unnamed statement and portal: each
        // Describe of a portal uses its own statement's text.
        let mut m = TargetMasker::new(engine(), 1 << 20);
        for sql in [
            "SELECT concat(password, '') AS p",
            "SELECT concat(login, '') AS p",
        ] {
            let mut parse = b"\0".to_vec();
            parse.extend_from_slice(sql.as_bytes());
            parse.extend_from_slice(b"\0\0\0");
            m.on_client_frame(tag::PARSE, &parse, true, Some(0));
            m.on_client_frame(tag::BIND, b"\0\0\0\0\0\0\0\0", true, Some(0));
            m.on_client_frame(tag::DESCRIBE, b"P\0", true, Some(0));
            m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        }
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = Vec::new();
        for v in ["first-value", "second-value"] {
            s.extend(frame(b'1', b""));
            s.extend(frame(b'2', b""));
            s.extend(row_desc(&[("p", 25)]));
            s.extend(data_row(&[v]));
            s.extend(frame(b'C', b"SELECT 1\0"));
        }
        s.extend(frame(b'Z', b"I"));
        let out = run(&mut m, s);
        assert!(
            !out.contains("first-value") && out.contains("second-value"),
            "{out}"
        );

        // A named statement described under one profile and run under
        // another: its text is read again with the new engine.
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(
            tag::PARSE,
            b"s1\0SELECT lower(api_key) AS k\0\0\0",
            true,
            Some(0),
        );
        m.on_client_frame(tag::DESCRIBE, b"Ss1\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'1', b"");
        s.extend(frame(b't', &0i16.to_be_bytes()));
        s.extend(row_desc(&[("k", 25)]));
        s.extend(frame(b'Z', b"I"));
        m.process(&mut s);
        let hashed: MaskingProfile = serde_yaml::from_str(
            "columns: [{ column: 'x', action: mask }, { column: '*key*', action: hash }]",
        )
        .unwrap();
        m.set_engine(Some(Engine::compile_shared(&hashed).unwrap()));
        m.on_client_frame(tag::BIND, b"\0s1\0\0\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'2', b"");
        s.extend(data_row(&["abc-key"]));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        let out = run(&mut m, s);
        let mut h = Vec::new();
        Engine::compile_shared(&hashed)
            .unwrap()
            .hash_into(b"abc-key", &mut h);
        assert!(out.contains(std::str::from_utf8(&h).unwrap()), "{out}");
    }

    /// Texts replaced by later Parses of the unnamed statement are taken
    /// off the kept total: a named statement keeps its text however many
    /// unnamed statements come after it.
    #[test]
    fn replaced_texts_do_not_count_towards_the_kept_limit() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let parse = |m: &mut TargetMasker, name: &str, sql: &str| {
            let mut b = name.as_bytes().to_vec();
            b.push(0);
            b.extend_from_slice(sql.as_bytes());
            b.extend_from_slice(b"\0\0\0");
            m.on_client_frame(tag::PARSE, &b, true, Some(0));
            m.on_client_frame(tag::SYNC, b"", true, Some(0));
            let mut s = frame(b'1', b"");
            s.extend(frame(b'Z', b"I"));
            m.process(&mut s);
        };
        parse(&mut m, "s1", "SELECT upper(ssn) AS x FROM people");
        // 20 MiB of unnamed statements in all, 1 MiB at a time.
        let big = format!("SELECT 1 -- {}", "x".repeat((1 << 20) - 64));
        for _ in 0..20 {
            parse(&mut m, "", &big);
        }
        m.on_client_frame(tag::DESCRIBE, b"Ss1\0", true, Some(0));
        m.on_client_frame(tag::BIND, b"\0s1\0\0\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b't', &0i16.to_be_bytes());
        s.extend(row_desc(&[("x", 25)]));
        s.extend(frame(b'2', b""));
        s.extend(data_row(&["123-45-6789"]));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        let out = String::from_utf8_lossy(&forwarded(&mut m, &mut s)).into_owned();
        // `ssn`'s own rule (keep the last four), not the strongest (mask).
        assert!(out.contains("*******6789"), "{out}");
    }

    #[test]
    fn switching_to_an_ascii_unsafe_encoding_stops_before_the_switch() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let mut s = frame(b'C', b"SELECT 1\0");
        s.extend(frame(b'Z', b"I"));
        let cut = s.len();
        s.extend(frame(b'S', b"client_encoding\0SJIS\0"));
        s.extend(frame(b'C', b"SET\0"));
        s.extend(data_row(&["bob@example.com"]));
        let p = m.process(&mut s);
        assert!(p.refused);
        assert_eq!(p.ready, cut);
        assert_eq!(m.unsafe_encoding(), Some("SJIS"));
        // And stays refused.
        let mut more = data_row(&["x"]);
        let p = m.process(&mut more);
        assert!(p.refused && p.ready == 0);
        // Passive (unmasked) sessions only take note; masking switched on
        // later refuses at once.
        let mut m = TargetMasker::for_session(None, 1 << 20);
        let mut s = frame(b'S', b"client_encoding\0BIG5\0");
        s.extend(data_row(&["bob@example.com"]));
        let p = m.process(&mut s);
        assert!(!p.refused && p.ready == s.len());
        m.set_engine(Some(engine()));
        let mut s = data_row(&["bob@example.com"]);
        assert!(m.process(&mut s).refused);
        // Back to UTF8 is fine.
        let mut s = frame(b'S', b"client_encoding\0UTF8\0");
        let mut m = TargetMasker::new(engine(), 1 << 20);
        assert!(!m.process(&mut s).refused);
    }

    #[test]
    fn extended_rows_use_the_described_statement_with_bind_formats() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        prepare_and_run_binary(&mut m);
        let mut s = frame(b'1', b"");
        s.extend(frame(b't', &0i16.to_be_bytes()));
        s.extend(row_desc(&[("email", 25)]));
        s.extend(frame(b'Z', b"I"));
        s.extend(frame(b'2', b""));
        s.extend(data_row(&["mail bob@example.com now"]));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        let p = m.process(&mut s);
        assert_eq!(p.ready, s.len());
        assert!(memchr::memmem::find(&s, b"bob@example.com").is_none());
    }

    /// A Bind split across reads gets its result formats when the rest
    /// comes: its rows keep the statement's plan (read as a statement
    /// never described, a binary `int8` took the text's `ssn` rule).
    #[test]
    fn a_bind_split_across_reads_keeps_its_result_formats() {
        split_bind_keeps_its_result_formats(&[], &[6]);
    }

    /// Also a Bind too long to keep whole (a parameter of megabytes, an
    /// upload with a `RETURNING`), in any number of reads: its parameter
    /// values are skipped, not kept, and its result formats were lost.
    #[test]
    fn a_long_bind_split_across_reads_keeps_its_result_formats() {
        let big = vec![b'x'; 3 * MAX_TEXT];
        split_bind_keeps_its_result_formats(&big, &[6]);
        split_bind_keeps_its_result_formats(&big, &[4, 9, 14, 100, MAX_TEXT, 2 * MAX_TEXT + 5]);
        // Every split point of a short one.
        let small = b"12345".to_vec();
        let mut bind_len = 0;
        split_bind_keeps_its_result_formats_with(&small, &[], &mut bind_len);
        for at in 4..bind_len {
            split_bind_keeps_its_result_formats(&small, &[at]);
        }
    }

    /// Client: Parse `s1` (`select ssn`) and `s2` (`select n`), Describe
    /// both, Sync.
    fn describe_ssn_and_n(m: &mut TargetMasker) {
        m.on_client_frame(tag::PARSE, b"s1\0select ssn from t\0\0\0", true, Some(0));
        m.on_client_frame(tag::PARSE, b"s2\0select n from t\0\0\0", true, Some(0));
        m.on_client_frame(tag::DESCRIBE, b"Ss1\0", true, Some(0));
        m.on_client_frame(tag::DESCRIBE, b"Ss2\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
    }

    /// The server's answers to [`describe_ssn_and_n`].
    fn ssn_and_n_described() -> Vec<u8> {
        let mut s = frame(b'1', b"");
        s.extend(frame(b'1', b""));
        s.extend(frame(b't', &0i16.to_be_bytes()));
        s.extend(row_desc(&[("ssn", 25)]));
        s.extend(frame(b't', &0i16.to_be_bytes()));
        s.extend(row_desc(&[("n", 25)]));
        s.extend(frame(b'Z', b"I"));
        s
    }

    /// An Execute whose first read ends inside its portal's name: its rows
    /// are read with that portal's plan when the rest comes, not with the
    /// plan of whatever was bound last (an unruled column of another
    /// statement, which let `p1`'s ssn out whole).
    #[test]
    fn an_execute_cut_inside_its_portal_name_uses_that_portals_plan() {
        for cut in [0, 1, 2] {
            let mut m = TargetMasker::new(engine(), 1 << 20);
            describe_ssn_and_n(&mut m);
            m.on_client_frame(tag::BIND, b"p1\0s1\0\0\0\0\0\0\0", true, Some(0));
            m.on_client_frame(tag::BIND, b"p2\0s2\0\0\0\0\0\0\0", true, Some(0));
            let exec = b"p1\0\0\0\0\0";
            m.on_client_frame(tag::EXECUTE, &exec[..cut], false, Some(0));
            m.on_client_more(&exec[cut..], true);
            m.on_client_frame(tag::SYNC, b"", true, Some(0));
            let mut s = ssn_and_n_described();
            s.extend(frame(b'2', b""));
            s.extend(frame(b'2', b""));
            s.extend(data_row(&["123456789"]));
            s.extend(frame(b'C', b"SELECT 1\0"));
            s.extend(frame(b'Z', b"I"));
            let out = forwarded(&mut m, &mut s);
            assert!(
                memchr::memmem::find(&out, b"*****6789").is_some(),
                "cut at {cut}: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    /// The same with a Describe of the portal cut inside its name (or
    /// before its kind): it describes `p1`, not the unnamed portal. (Here
    /// the unnamed portal's text alone names `ssn`; sluice-tests'
    /// `a_describe_split_inside_its_portal_name_describes_that_portal`
    /// shows the leak with real column origins.)
    #[test]
    fn a_describe_cut_inside_its_portal_name_describes_that_portal() {
        for cut in [0, 1, 2] {
            let mut m = TargetMasker::new(engine(), 1 << 20);
            describe_ssn_and_n(&mut m);
            m.on_client_frame(tag::BIND, b"\0s1\0\0\0\0\0\0\0", true, Some(0));
            m.on_client_frame(tag::BIND, b"p1\0s2\0\0\0\0\0\0\0", true, Some(0));
            let describe = b"Pp1\0";
            m.on_client_frame(tag::DESCRIBE, &describe[..cut], false, Some(0));
            m.on_client_more(&describe[cut..], true);
            m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
            m.on_client_frame(tag::SYNC, b"", true, Some(0));
            let mut s = ssn_and_n_described();
            s.extend(frame(b'2', b""));
            s.extend(frame(b'2', b""));
            s.extend(row_desc(&[("n", 25)]));
            s.extend(data_row(&["123456789"]));
            s.extend(frame(b'C', b"SELECT 1\0"));
            s.extend(frame(b'Z', b"I"));
            let out = forwarded(&mut m, &mut s);
            assert!(
                memchr::memmem::find(&out, b"*****6789").is_some(),
                "cut at {cut}: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    /// A Bind whose first read ends before or inside its names (an agent
    /// can send its bytes so) is read when the rest comes: it was taken for
    /// a Bind of the unnamed portal with no result formats, whose binary
    /// rows were read as text (an `int8` under `keep_last` kept its low
    /// bytes, the number itself for most values).
    #[test]
    fn a_bind_cut_inside_its_names_keeps_its_names_and_result_formats() {
        for at in 0..4 {
            split_bind_keeps_its_result_formats(&[], &[at]);
            split_bind_keeps_its_result_formats(b"12345", &[at]);
            split_bind_keeps_its_result_formats(b"12345", &[at, at + 1, 9]);
        }
    }

    fn split_bind_keeps_its_result_formats(param: &[u8], cuts: &[usize]) {
        split_bind_keeps_its_result_formats_with(param, cuts, &mut 0);
    }

    /// A Bind of `s1` (a parameter `param` when not empty, binary results)
    /// sent in pieces cut at `cuts`; its rows keep the statement's plan.
    fn split_bind_keeps_its_result_formats_with(param: &[u8], cuts: &[usize], len: &mut usize) {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let (sql, np): (&[u8], i16) = if param.is_empty() {
            (b"s1\0select ssn, n from t\0\0\0", 0)
        } else {
            (b"s1\0select ssn, n from t where $1 <> ''\0\0\0", 1)
        };
        m.on_client_frame(tag::PARSE, sql, true, Some(0));
        m.on_client_frame(tag::DESCRIBE, b"Ss1\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut bind = b"\0s1\0".to_vec();
        bind.extend_from_slice(&np.to_be_bytes());
        bind.extend_from_slice(&vec![0u8; 2 * np as usize]);
        bind.extend_from_slice(&np.to_be_bytes());
        if np > 0 {
            bind.extend_from_slice(&(param.len() as i32).to_be_bytes());
            bind.extend_from_slice(param);
        }
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes()); // binary
        *len = bind.len();
        let mut at = 0;
        for (i, &cut) in cuts.iter().chain([&bind.len()]).enumerate() {
            let part = &bind[at..cut];
            if i == 0 {
                m.on_client_frame(tag::BIND, part, cut == bind.len(), Some(0));
            } else {
                m.on_client_more(part, cut == bind.len());
            }
            at = cut;
        }
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'1', b"");
        s.extend(frame(b't', &np.to_be_bytes()));
        s.extend(row_desc(&[("ssn", 25), ("n", 20)]));
        s.extend(frame(b'Z', b"I"));
        s.extend(frame(b'2', b""));
        let mut row = 2i16.to_be_bytes().to_vec();
        row.extend_from_slice(&9i32.to_be_bytes());
        row.extend_from_slice(b"123456789");
        row.extend_from_slice(&8i32.to_be_bytes());
        row.extend_from_slice(&42i64.to_be_bytes());
        s.extend(frame(b'D', &row));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        let p = m.process(&mut s);
        let out = if p.rewritten {
            m.out().to_vec()
        } else {
            s[..p.ready].to_vec()
        };
        let mut want = 9i32.to_be_bytes().to_vec();
        want.extend_from_slice(b"*****6789");
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&42i64.to_be_bytes());
        assert!(
            memchr::memmem::find(&out, &want).is_some(),
            "cut at {cuts:?}: {out:?}"
        );
    }

    /// A statement described only through a portal (pgJDBC's
    /// server-prepared statements: Bind, Describe of the portal, Execute,
    /// then Bind and Execute alone) keeps that description for its later
    /// Binds when no `PREPARE` was sent after the portal's Bind: one sent
    /// at any time before, even before its Parse, made every such statement
    /// read as never described for the rest of the session (a binary
    /// `int8` took the text's `ssn` rule).
    #[test]
    fn a_statement_described_through_a_portal_after_a_prepare_keeps_it() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let mut bind = b"\0S_1\0".to_vec();
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&2i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes()); // binary int8
        let mut row = 2i16.to_be_bytes().to_vec();
        row.extend_from_slice(&9i32.to_be_bytes());
        row.extend_from_slice(b"123456789");
        row.extend_from_slice(&8i32.to_be_bytes());
        row.extend_from_slice(&42i64.to_be_bytes());
        let mut want = 9i32.to_be_bytes().to_vec();
        want.extend_from_slice(b"*****6789");
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&42i64.to_be_bytes());
        let run = |m: &mut TargetMasker, s: &mut Vec<u8>| {
            let p = m.process(s);
            let out = if p.rewritten {
                m.out().to_vec()
            } else {
                s[..p.ready].to_vec()
            };
            assert!(memchr::memmem::find(&out, &want).is_some(), "{out:?}");
        };
        m.on_client_frame(tag::QUERY, b"prepare p1 as select 1\0", true, Some(0));
        let mut s = frame(b'C', b"PREPARE\0");
        s.extend(frame(b'Z', b"I"));
        m.process(&mut s);
        m.on_client_frame(
            tag::PARSE,
            b"S_1\0select ssn, n from t\0\0\0",
            true,
            Some(0),
        );
        m.on_client_frame(tag::BIND, &bind, true, Some(0));
        m.on_client_frame(tag::DESCRIBE, b"P\0", true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut desc = row_desc(&[("ssn", 25), ("n", 20)]);
        // (A portal's description carries its result formats.)
        let n = desc.len();
        desc[n - 2..].copy_from_slice(&1i16.to_be_bytes());
        let mut s = frame(b'1', b"");
        s.extend(frame(b'2', b""));
        s.extend(desc);
        s.extend(frame(b'D', &row));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        run(&mut m, &mut s);
        m.on_client_frame(tag::BIND, &bind, true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'2', b"");
        s.extend(frame(b'D', &row));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        run(&mut m, &mut s);
    }

    /// Statements and portals that run a `PREPARE` are forgotten when they
    /// are closed (or their transaction ends): a client that names each
    /// statement anew (tokio-postgres: `s0`, `s1`, … closed when dropped)
    /// grew them without bound.
    #[test]
    fn replacing_statements_are_forgotten_when_closed() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        for i in 0..100 {
            let parse = format!("s{i}\0prepare p{i} as select 1\0\0\0");
            m.on_client_frame(tag::PARSE, parse.as_bytes(), true, Some(0));
            let bind = format!("c{i}\0s{i}\0\0\0\0\0\0\0");
            m.on_client_frame(tag::BIND, bind.as_bytes(), true, Some(0));
            let close = format!("Ss{i}\0");
            m.on_client_frame(CLOSE, close.as_bytes(), true, Some(0));
            m.on_client_frame(tag::SYNC, b"", true, Some(0));
            let mut s = frame(b'1', b"");
            s.extend(frame(b'2', b""));
            s.extend(frame(b'3', b""));
            s.extend(frame(b'Z', b"I"));
            m.process(&mut s);
        }
        assert!(m.replacing_stmts.is_empty(), "{:?}", m.replacing_stmts);
        assert!(m.replacing_portals.is_empty(), "{:?}", m.replacing_portals);
    }

    /// What may give a statement name another statement: a `PREPARE … AS`,
    /// also as dynamic SQL; not SQL that only takes statements away, nor
    /// the word in a note.
    #[test]
    fn sql_that_replaces_statements() {
        for sql in [
            "deallocate s; prepare s as select 1",
            "PREPARE s (int) AS select $1",
            "do $$ begin execute 'prepare s as ' || q; end $$",
            "select run(format('PREPARE %I AS %s', n, q))",
        ] {
            assert!(replaces_statements(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "discard temp",
            "discard all",
            "deallocate all",
            "deallocate prepare s",
            "select 'time to prepare the report'",
            "select 1 as prepare",
            "select prepared_at as t from t",
        ] {
            assert!(!replaces_statements(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn unknown_description_scans_every_column() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let mut s = data_row(&["x", CARD]);
        m.process(&mut s);
        assert!(memchr::memmem::find(&s, b"4111 1111").is_none());
    }

    #[test]
    fn fallback_plan_follows_the_row_width() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let mut s = data_row(&["x", CARD]);
        s.extend(data_row(&["x", CARD]));
        s.extend(data_row(&["x", "y", CARD]));
        m.process(&mut s);
        assert!(memchr::memmem::find(&s, b"4111 1111").is_none());
    }

    /// A row that does not match its description is read with every
    /// column under its statement's rule: one that changes lengths (here
    /// `hash`) makes a new row, which is the one forwarded (the row was
    /// sent as it came).
    #[test]
    fn a_row_not_matching_its_description_is_rewritten_under_a_hash_rule() {
        let hashed: MaskingProfile =
            serde_yaml::from_str("columns: [{ column: '*key*', action: hash }]").unwrap();
        let mut m = TargetMasker::new(Engine::compile_shared(&hashed).unwrap(), 1 << 20);
        m.on_client_frame(tag::QUERY, b"select api_key from t\0", true, Some(0));
        let mut s = row_desc(&[("api_key", 25)]);
        s.extend(data_row(&["k9-value", "k9-other"]));
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        let out = forwarded(&mut m, &mut s);
        assert!(memchr::memmem::find(&out, b"k9-").is_none());
    }

    /// What `process` forwards of `s`.
    fn forwarded(m: &mut TargetMasker, s: &mut [u8]) -> Vec<u8> {
        let p = m.process(s);
        if p.rewritten {
            m.out().to_vec()
        } else {
            s[..p.ready].to_vec()
        }
    }

    /// NotificationResponse (channel and payload, one split across reads
    /// held until whole), FunctionCallResponse and ParameterStatus values
    /// are scanned.
    #[test]
    fn notifications_function_results_and_settings_are_masked() {
        let card: &[u8] = b"4111111111111111";
        let has = |b: &[u8]| b.windows(card.len()).filter(|w| *w == card).count();
        let mut m = TargetMasker::new(engine(), 1 << 20);
        let mut body = vec![0, 0, 0, 7];
        body.extend_from_slice(card);
        body.push(0);
        for _ in 0..300 {
            body.extend_from_slice(b"paid with ");
            body.extend_from_slice(card);
            body.extend_from_slice(b", ");
        }
        body.push(0);
        let mut s = frame(b'A', &body);
        let mut v = vec![0, 0, 0, 16];
        v.extend_from_slice(card);
        s.extend(frame(b'V', &v));
        let mut p = b"application_name\0".to_vec();
        p.extend_from_slice(card);
        p.push(0);
        s.extend(frame(b'S', &p));
        s.extend(frame(b'Z', b"I"));
        assert_eq!(has(&s), 303);
        // The notification split across reads: held, nothing of it goes.
        let half = s.len() / 3;
        assert_eq!(m.process(&mut s[..half]).ready, 0);
        let out = forwarded(&mut m, &mut s);
        assert_eq!(tags(&out), b"AVSZ");
        assert_eq!(out.len(), s.len());
        assert_eq!(has(&out), 0, "{}", String::from_utf8_lossy(&out));
        assert_eq!(rule_hits(&mut m, "payment_card"), 303);
    }

    /// Column names made from data are scanned, after the plan read them:
    /// a `password` column keeps its rule.
    #[test]
    fn column_names_are_scanned_after_planning() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(tag::QUERY, b"select 1\0", true, Some(0));
        let mut s = row_desc(&[("bob@example.com", 25), ("password", 25)]);
        s.extend(data_row(&["x", "hunter2"]));
        s.extend(frame(b'Z', b"I"));
        let out = forwarded(&mut m, &mut s);
        let want = [
            row_desc(&[("***@*******.com", 25), ("password", 25)]),
            data_row(&["x", "*******"]),
            frame(b'Z', b"I"),
        ]
        .concat();
        assert_eq!(out, want);
    }

    /// The hits of rule `name` since the last take.
    fn rule_hits(m: &mut TargetMasker, name: &str) -> u64 {
        let mut n = 0;
        m.take_hits(|rule, k| {
            if rule == name {
                n += k;
            }
        });
        n
    }

    /// Tags of the frames in `b`.
    fn tags(b: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        let mut at = 0;
        while at + 5 <= b.len() {
            t.push(b[at]);
            at += 1 + u32::from_be_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
        }
        t
    }

    /// A COPY TO's answer: CopyOutResponse (text, `cols` columns), one
    /// row, CopyDone, CommandComplete, ReadyForQuery.
    fn copy_out_answer(s: &mut Vec<u8>, cols: u8, row: &[u8]) {
        let mut h = vec![0, 0, cols];
        h.extend(std::iter::repeat_n(0, 2 * cols as usize));
        s.extend(frame(b'H', &h));
        s.extend(frame(b'd', row));
        s.extend(frame(b'c', b""));
        s.extend(frame(b'C', b"COPY 1\0"));
        s.extend(frame(b'Z', b"I"));
    }

    /// The target's answer to the gateway's describe of a COPY.
    fn own_answer(desc: Option<&[(&str, u32)]>) -> Vec<u8> {
        let mut s = Vec::new();
        // (The gateway closes its statement first.)
        s.extend(frame(b'3', b""));
        match desc {
            Some(cols) => {
                s.extend(frame(b'1', b""));
                s.extend(frame(b't', &[0, 0]));
                s.extend(row_desc(cols));
                s.extend(frame(b'3', b""));
            }
            None => s.extend(frame(
                b'E',
                b"SERROR\0C42P01\0Mrelation \"t\" does not exist\0\0",
            )),
        }
        s.extend(frame(b'Z', b"I"));
        s
    }

    #[test]
    fn errors_and_copy_out_are_masked() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(
            tag::QUERY,
            b"COPY t TO STDOUT (FORMAT csv)\0",
            true,
            Some(7),
        );
        // The gateway describes `SELECT * FROM t` before the Query.
        let inj = m.take_injections();
        assert_eq!(inj.len(), 1);
        assert_eq!(inj[0].0, 7);
        assert_eq!(tags(&inj[0].1), b"CPDCS");
        assert!(memchr::memmem::find(&inj[0].1, b"SELECT * FROM t\0").is_some());
        let mut s = own_answer(Some(&[("id", 23), ("api_secret", 25), ("note", 25)]));
        s.extend(frame(b'H', &[0, 0, 3, 0, 0, 0, 0, 0, 0]));
        s.extend(frame(b'd', format!("1,abc,{CARD}\n").as_bytes()));
        s.extend(frame(b'd', b"2,,\n"));
        s.extend(frame(b'c', b""));
        s.extend(frame(b'C', b"COPY 2\0"));
        s.extend(frame(
            b'E',
            format!("SERROR\0C23505\0MKey (card)=({CARD}) exists\0\0").as_bytes(),
        ));
        s.extend(frame(b'Z', b"I"));
        let out = forwarded(&mut m, &mut s);
        // The answers to the describe are not forwarded.
        assert_eq!(tags(&out), b"HddcCEZ");
        assert!(memchr::memmem::find(&out, b"4111 1111").is_none());
        assert!(memchr::memmem::find(&out, b"1,***,").is_some());
        assert!(memchr::memmem::find(&out, b"2,,\n").is_some());
        assert_eq!(rule_hits(&mut m, "column:*secret*"), 1);
    }

    #[test]
    fn a_copy_whose_columns_are_not_known_is_masked_whole() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        // Not the Query's first statement: not described (the describe
        // would run before the table exists).
        m.on_client_frame(
            tag::QUERY,
            b"create table t(); COPY t TO STDOUT\0",
            true,
            Some(0),
        );
        assert!(m.take_injections().is_empty());
        let mut s = frame(b'C', b"CREATE TABLE\0");
        copy_out_answer(&mut s, 2, b"12\tab\\\\\n");
        let out = forwarded(&mut m, &mut s);
        assert_eq!(tags(&out), b"CHdcCZ");
        assert!(memchr::memmem::find(&out, b"**\t***\n").is_some());
        // A describe that failed: its answers are dropped, the COPY masked
        // whole if it runs.
        m.on_client_frame(tag::QUERY, b"COPY t TO STDOUT\0", true, Some(0));
        assert_eq!(m.take_injections().len(), 1);
        let mut s = own_answer(None);
        copy_out_answer(&mut s, 1, b"abc\n");
        let out = forwarded(&mut m, &mut s);
        assert_eq!(tags(&out), b"HdcCZ");
        assert!(memchr::memmem::find(&out, b"***\n").is_some());
        // Other columns than described (a generated column COPY leaves
        // out, unknown to the catalog read): masked whole too.
        m.on_client_frame(tag::QUERY, b"COPY t TO STDOUT\0", true, Some(0));
        assert_eq!(m.take_injections().len(), 1);
        let mut s = own_answer(Some(&[("a", 25), ("b", 25)]));
        copy_out_answer(&mut s, 1, b"abc\n");
        let out = forwarded(&mut m, &mut s);
        assert_eq!(tags(&out), b"HdcCZ");
        assert!(memchr::memmem::find(&out, b"***\n").is_some());
        // A client mid-pipeline (unsynced extended messages before the
        // Query): no describe.
        m.on_client_frame(tag::PARSE, b"\0select 1\0\0\0", true, Some(0));
        m.on_client_frame(tag::QUERY, b"COPY t TO STDOUT\0", true, Some(0));
        assert!(m.take_injections().is_empty());
    }

    /// ReadyForQuery that answer no Sync or Query (a FunctionCall), and
    /// Syncs that get none (sent during an extended COPY FROM STDIN), keep
    /// the count of answers owed right: the gateway's own ReadyForQuery is
    /// the one dropped.
    #[test]
    fn own_answers_stay_paired_after_function_calls_and_copy_in() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(FUNCTION_CALL, b"\0\0\0\x01", true, Some(0));
        let mut s = frame(b'V', b"\xff\xff\xff\xff");
        s.extend(frame(b'Z', b"I"));
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"VZ");
        // Extended COPY FROM STDIN: Parse, Bind, Execute, Sync (ignored in
        // copy-in), data, CopyDone, Sync.
        m.on_client_frame(tag::PARSE, b"\0COPY t FROM STDIN\0\0\0", true, Some(0));
        m.on_client_frame(tag::BIND, b"\0\0\0\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        m.on_client_frame(tag::COPY_DATA, b"1\n", true, Some(0));
        m.on_client_frame(tag::COPY_DONE, b"", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'1', b"");
        s.extend(frame(b'2', b""));
        s.extend(frame(b'G', &[0, 0, 1, 0, 0]));
        s.extend(frame(b'C', b"COPY 1\0"));
        s.extend(frame(b'Z', b"I"));
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"12GCZ");
        for _ in 0..2 {
            m.on_client_frame(tag::QUERY, b"COPY t TO STDOUT\0", true, Some(0));
            assert_eq!(m.take_injections().len(), 1);
            let mut s = own_answer(Some(&[("api_secret", 25)]));
            copy_out_answer(&mut s, 1, b"hunter2\n");
            let out = forwarded(&mut m, &mut s);
            assert_eq!(tags(&out), b"HdcCZ");
            assert!(memchr::memmem::find(&out, b"*******\n").is_some());
        }
        // A COPY FROM STDIN that fails before its copy-in starts: the
        // session is settled again at its ReadyForQuery.
        m.on_client_frame(tag::QUERY, b"COPY nope FROM STDIN\0", true, Some(0));
        let mut s = nope_answer();
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"EZ");
        m.on_client_frame(tag::QUERY, b"COPY t TO STDOUT\0", true, Some(0));
        assert_eq!(m.take_injections().len(), 1);
        let mut s = own_answer(Some(&[("api_secret", 25)]));
        copy_out_answer(&mut s, 1, b"hunter2\n");
        let out = forwarded(&mut m, &mut s);
        assert_eq!(tags(&out), b"HdcCZ");
        assert!(memchr::memmem::find(&out, b"*******\n").is_some());
    }

    /// Schema changes of the session's own, told by CommandComplete tags
    /// (one split across reads too): the plan fails closed from the change
    /// until a read sent after it is read; a refused read, or one sent
    /// before a later change, leaves it so.
    #[test]
    fn own_schema_changes_fail_closed_until_read() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.follow_schema(true);
        let complete = |m: &mut TargetMasker, tag: &[u8]| {
            let mut s = frame(b'C', tag);
            s.extend(frame(b'Z', b"I"));
            forwarded(m, &mut s);
        };
        m.on_client_frame(tag::QUERY, b"select 1\0", true, Some(0));
        let mut s = frame(b'D', b"\0\x01\0\0\0\x011");
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'Z', b"I"));
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"DCZ");
        assert!(!m.plan.unread(), "a query's rows are no change");
        m.on_client_frame(tag::QUERY, b"create view v as select 1\0", true, Some(0));
        // (The tag cut after `CR`: held until whole.)
        let mut s = frame(b'C', b"CREATE VIEW\0");
        s.extend(frame(b'Z', b"I"));
        let mut first = s[..7].to_vec();
        let p = m.process(&mut first);
        assert_eq!(p.ready, 0);
        assert!(!m.plan.unread());
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"CZ");
        assert!(m.plan.unread());
        // Refused: still unknown.
        m.schema_read_sent();
        m.schema_read_done(false);
        assert!(m.plan.unread());
        // A read sent, then another change before it is read.
        m.schema_read_sent();
        m.on_client_frame(tag::QUERY, b"alter view v rename to w\0", true, Some(0));
        complete(&mut m, b"ALTER VIEW\0");
        m.schema_read_done(true);
        assert!(m.plan.unread());
        m.schema_read_sent();
        m.schema_read_done(true);
        assert!(!m.plan.unread());
        // Not followed: no read would come.
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(tag::QUERY, b"create view v as select 1\0", true, Some(0));
        complete(&mut m, b"CREATE VIEW\0");
        assert!(!m.plan.unread());
    }

    /// The same statement text and description as the last result, after a
    /// schema change of the session's own (pipelined Queries in one write,
    /// or a prepared statement run again): the plan kept from before the
    /// change must not stand in for the fail-closed one.
    #[test]
    fn a_kept_plan_does_not_outlive_an_own_schema_change() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.follow_schema(true);
        let select = |m: &mut TargetMasker| {
            m.on_client_frame(tag::QUERY, b"select label from r_v\0", true, Some(0));
            let mut s = row_desc(&[("label", 25)]);
            s.extend(data_row(&["hunter2"]));
            s.extend(frame(b'C', b"SELECT 1\0"));
            s.extend(frame(b'Z', b"I"));
            forwarded(m, &mut s)
        };
        // Before: `label` is no ruled name.
        assert!(memchr::memmem::find(&select(&mut m), b"hunter2").is_some());
        m.on_client_frame(
            tag::QUERY,
            b"create or replace view r_v as select api_secret as label from creds\0",
            true,
            Some(0),
        );
        let mut s = frame(b'C', b"CREATE VIEW\0");
        s.extend(frame(b'Z', b"I"));
        forwarded(&mut m, &mut s);
        assert!(m.plan.unread());
        // The same Query again, before a read: fails closed.
        let out = select(&mut m);
        assert!(
            memchr::memmem::find(&out, b"hunter2").is_none(),
            "unmasked after the change: {:?}",
            String::from_utf8_lossy(&out)
        );
    }

    /// The answer to `COPY nope FROM STDIN` (no such table): an error
    /// and ReadyForQuery, no copy-in.
    fn nope_answer() -> Vec<u8> {
        let mut s = frame(
            b'E',
            b"SERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0",
        );
        s.extend(frame(b'Z', b"I"));
        s
    }

    /// Syncs sent right behind a simple Query's COPY FROM STDIN, before its
    /// answer: the server ignores them when the copy-in starts, and answers
    /// each with a ReadyForQuery when the COPY fails first (a missing
    /// table). The count of answers owed stays right either way.
    #[test]
    fn syncs_behind_a_copy_from_stdin_count_by_its_outcome() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        // Fails first: the Sync is answered.
        m.on_client_frame(tag::QUERY, b"COPY nope FROM STDIN\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = nope_answer();
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"EZ");
        assert!(!m.quiet(), "the Sync's ReadyForQuery is still owed");
        let mut s = frame(b'Z', b"I");
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"Z");
        assert!(m.quiet());
        // Starts: the Syncs sent before its CopyInResponse and during the
        // copy-in get none.
        m.on_client_frame(tag::QUERY, b"COPY t FROM STDIN\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'G', &[0, 0, 1, 0, 0]);
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"G");
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        m.on_client_frame(tag::COPY_DATA, b"1\n", true, Some(0));
        m.on_client_frame(tag::COPY_DONE, b"", true, Some(0));
        assert!(!m.quiet());
        let mut s = frame(b'C', b"COPY 1\0");
        s.extend(frame(b'Z', b"I"));
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"CZ");
        assert!(m.quiet());
        // The next COPY TO is still paired with its own describe.
        m.on_client_frame(tag::QUERY, b"COPY t TO STDOUT\0", true, Some(0));
        assert_eq!(m.take_injections().len(), 1);
        let mut s = own_answer(Some(&[("api_secret", 25)]));
        copy_out_answer(&mut s, 1, b"hunter2\n");
        let out = forwarded(&mut m, &mut s);
        assert_eq!(tags(&out), b"HdcCZ");
        assert!(memchr::memmem::find(&out, b"*******\n").is_some());
        assert!(m.quiet());
    }

    /// Two simple-Query COPY FROM STDIN pipelined (each with its data,
    /// CopyDone and a Sync behind it) before the first CopyInResponse: the
    /// server ignores both Syncs (each arrives during a copy-in). The
    /// second Query's unsure Syncs must not replace the first's.
    #[test]
    fn unsure_syncs_of_two_pipelined_copies_in_stay_apart() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        for t in ["COPY a FROM STDIN\0", "COPY b FROM STDIN\0"] {
            m.on_client_frame(tag::QUERY, t.as_bytes(), true, Some(0));
            m.on_client_frame(tag::SYNC, b"", true, Some(0));
            m.on_client_frame(tag::COPY_DATA, b"1\n", true, Some(0));
            m.on_client_frame(tag::COPY_DONE, b"", true, Some(0));
        }
        for _ in 0..2 {
            let mut s = frame(b'G', &[0, 0, 1, 0, 0]);
            s.extend(frame(b'C', b"COPY 1\0"));
            s.extend(frame(b'Z', b"I"));
            assert_eq!(tags(&forwarded(&mut m, &mut s)), b"GCZ");
        }
        // Nothing else comes: nothing is owed.
        assert!(m.quiet(), "sent {} done {}", m.sent_epoch, m.done_epoch);
    }

    /// Cases where the gateway cannot be sure which columns a COPY sends,
    /// each masked whole: a statement name parsed again before its Close
    /// was answered (the server refuses the new Parse and keeps the old
    /// statement), an Execute whose portal name was split across reads,
    /// and a Query sent behind another one still unanswered (a SET before
    /// it could change how the server reads its text).
    #[test]
    fn copies_the_gateway_cannot_pair_are_masked_whole() {
        let copy_row = |m: &mut TargetMasker, before: Vec<u8>| {
            let mut s = before;
            copy_out_answer(&mut s, 1, b"hunter2\n");
            forwarded(m, &mut s)
        };
        // A reused statement name.
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(
            tag::PARSE,
            b"s\0COPY (SELECT api_secret FROM t) TO STDOUT\0\0\0",
            true,
            Some(0),
        );
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'1', b"");
        s.extend(frame(b'Z', b"I"));
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"1Z");
        m.on_client_frame(
            tag::PARSE,
            b"s\0COPY (SELECT note FROM t) TO STDOUT\0\0\0",
            true,
            Some(0),
        );
        m.on_client_frame(tag::BIND, b"\0s\0\0\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(40));
        m.on_client_frame(tag::SYNC, b"", true, Some(50));
        // (No describe: the statement's kind is not known.)
        assert!(m.take_injections().is_empty());
        let mut s = frame(
            b'E',
            b"SERROR\0C42P05\0Mprepared statement \"s\" already exists\0\0",
        );
        s.extend(frame(b'Z', b"I"));
        forwarded(&mut m, &mut s);
        m.on_client_frame(tag::BIND, b"\0s\0\0\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(40));
        m.on_client_frame(tag::SYNC, b"", true, Some(50));
        assert!(m.take_injections().is_empty());
        let out = copy_row(&mut m, frame(b'2', b""));
        assert!(
            memchr::memmem::find(&out, b"*******\n").is_some(),
            "{out:?}"
        );
        // An Execute's portal name cut by the end of a read.
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(tag::EXECUTE, b"longport", false, Some(0));
        assert!(m.take_injections().is_empty());
        let out = copy_row(&mut m, Vec::new());
        assert!(memchr::memmem::find(&out, b"*******\n").is_some());
        // A Query behind one not answered yet.
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(
            tag::QUERY,
            b"SET standard_conforming_strings = off\0",
            true,
            Some(0),
        );
        m.on_client_frame(
            tag::QUERY,
            b"COPY (SELECT note FROM t) TO STDOUT\0",
            true,
            Some(60),
        );
        assert!(m.take_injections().is_empty());
        let mut s = frame(b'C', b"SET\0");
        s.extend(frame(b'S', b"standard_conforming_strings\0off\0"));
        s.extend(frame(b'Z', b"I"));
        forwarded(&mut m, &mut s);
        let out = copy_row(&mut m, Vec::new());
        assert!(memchr::memmem::find(&out, b"*******\n").is_some());
        // ... then read with the reported setting.
        assert!(m.backslash_strings);
        // A Sync sent during a simple Query's COPY FROM STDIN gets no
        // answer: the next COPY is still paired.
        m.on_client_frame(tag::QUERY, b"COPY t FROM STDIN\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        m.on_client_frame(tag::COPY_DONE, b"", true, Some(0));
        let mut s = frame(b'G', &[0, 0, 1, 0, 0]);
        s.extend(frame(b'C', b"COPY 0\0"));
        s.extend(frame(b'Z', b"I"));
        assert_eq!(tags(&forwarded(&mut m, &mut s)), b"GCZ");
        m.on_client_frame(tag::QUERY, b"COPY t TO STDOUT\0", true, Some(0));
        assert_eq!(m.take_injections().len(), 1);
        let out = copy_row(&mut m, own_answer(Some(&[("note", 25)])));
        assert_eq!(tags(&out), b"HdcCZ");
        assert!(memchr::memmem::find(&out, b"hunter2\n").is_some());
    }

    /// A portal bound ahead of an earlier statement's ReadyForQuery stays
    /// in use at that ReadyForQuery: binding its name again later is a
    /// reuse (the server keeps the first), and a COPY from it is masked
    /// whole.
    #[test]
    fn a_portal_bound_ahead_of_a_ready_for_query_stays_in_use() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(tag::QUERY, b"SELECT 1\0", true, Some(0));
        m.on_client_frame(
            tag::PARSE,
            b"s\0COPY (SELECT api_secret FROM t) TO STDOUT\0\0\0",
            true,
            Some(0),
        );
        m.on_client_frame(tag::BIND, b"q\0s\0\0\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::SYNC, b"", true, Some(0));
        let mut s = frame(b'C', b"SELECT 1\0");
        s.extend(frame(b'Z', b"I"));
        forwarded(&mut m, &mut s);
        m.on_client_frame(
            tag::PARSE,
            b"n\0COPY (SELECT note FROM t) TO STDOUT\0\0\0",
            true,
            Some(0),
        );
        m.on_client_frame(tag::BIND, b"q\0n\0\0\0\0\0\0\0", true, Some(0));
        m.on_client_frame(tag::EXECUTE, b"q\0\0\0\0\0", true, Some(40));
        assert!(m.take_injections().is_empty());
    }

    /// The header row of `COPY … (HEADER)` is column names: passed as is;
    /// a NULL string of the statement's own is kept.
    #[test]
    fn a_copy_header_and_null_string_are_kept() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(
            tag::QUERY,
            b"COPY t TO STDOUT (FORMAT csv, HEADER, NULL 'NIL')\0",
            true,
            Some(0),
        );
        assert_eq!(m.take_injections().len(), 1);
        let mut s = own_answer(Some(&[("id", 25), ("api_secret", 25)]));
        s.extend(frame(b'H', &[0, 0, 2, 0, 0, 0, 0]));
        s.extend(frame(b'd', b"id,api_secret\n"));
        s.extend(frame(b'd', b"1,hunter2\n"));
        s.extend(frame(b'd', b"2,NIL\n"));
        s.extend(frame(b'c', b""));
        s.extend(frame(b'C', b"COPY 2\0"));
        s.extend(frame(b'Z', b"I"));
        let out = forwarded(&mut m, &mut s);
        assert!(memchr::memmem::find(&out, b"id,api_secret\n").is_some());
        assert!(memchr::memmem::find(&out, b"1,*******\n").is_some());
        assert!(memchr::memmem::find(&out, b"2,NIL\n").is_some());
    }

    /// A header row's names are scanned by the detectors (a column named
    /// by data), its column's rule aside.
    #[test]
    fn a_copy_header_is_scanned() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(
            tag::QUERY,
            b"COPY t TO STDOUT (FORMAT csv, HEADER)\0",
            true,
            Some(0),
        );
        assert_eq!(m.take_injections().len(), 1);
        let mut s = own_answer(Some(&[("bob@example.com", 25)]));
        s.extend(frame(b'H', &[0, 0, 1, 0, 0]));
        s.extend(frame(b'd', b"bob@example.com\n"));
        s.extend(frame(b'd', b"x\n"));
        s.extend(frame(b'c', b""));
        s.extend(frame(b'C', b"COPY 1\0"));
        s.extend(frame(b'Z', b"I"));
        let out = forwarded(&mut m, &mut s);
        assert!(memchr::memmem::find(&out, b"***@*******.com\n").is_some());
        assert!(memchr::memmem::find(&out, b"bob@").is_none());
    }

    #[test]
    fn an_extended_copy_is_described_before_its_execute() {
        let mut m = TargetMasker::new(engine(), 1 << 20);
        m.on_client_frame(
            tag::PARSE,
            b"\0COPY (SELECT api_secret AS k FROM t) TO STDOUT\0\0\0",
            true,
            Some(0),
        );
        m.on_client_frame(tag::BIND, b"\0\0\0\0\0\0\0\0", true, Some(20));
        m.on_client_frame(tag::EXECUTE, b"\0\0\0\0\0", true, Some(40));
        m.on_client_frame(tag::SYNC, b"", true, Some(50));
        let inj = m.take_injections();
        assert_eq!(inj.len(), 1);
        assert_eq!(inj[0].0, 40);
        // No Sync of its own in the client's pipeline.
        assert_eq!(tags(&inj[0].1), b"CPDC");
        assert!(memchr::memmem::find(&inj[0].1, b"\0SELECT api_secret AS k FROM t\0").is_some());
        let mut s = frame(b'1', b"");
        s.extend(frame(b'2', b""));
        s.extend(frame(b'3', b""));
        s.extend(frame(b'1', b""));
        s.extend(frame(b't', &[0, 0]));
        s.extend(row_desc(&[("api_secret", 25)]));
        s.extend(frame(b'3', b""));
        copy_out_answer(&mut s, 1, b"hunter2\n");
        let out = forwarded(&mut m, &mut s);
        assert_eq!(tags(&out), b"12HdcCZ");
        assert!(memchr::memmem::find(&out, b"*******\n").is_some());
    }

    #[test]
    fn bind_formats_parse() {
        let mut bind = b"p\0s\0".to_vec();
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&3i32.to_be_bytes());
        bind.extend_from_slice(b"abc");
        bind.extend_from_slice(&2i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        // (The parameter part: count, then length and value of each.)
        assert_eq!(&bind[8..10], &1i16.to_be_bytes());
        assert_eq!(
            parse_bind(&bind, true),
            Some((b"p".to_vec(), b"s".to_vec(), Some(vec![0, 1]), Some(8..17)))
        );
        assert_eq!(
            parse_bind(&bind, false),
            Some((b"p".to_vec(), b"s".to_vec(), None, None))
        );
        // Only values short enough to be a key or path are kept.
        let long = vec![b'x'; MAX_PARAM_NAME + 1];
        let mut part = 3i16.to_be_bytes().to_vec();
        for v in [&b"ssn"[..], &long, b""] {
            part.extend_from_slice(&(v.len() as i32).to_be_bytes());
            part.extend_from_slice(v);
        }
        let short = short_params(&part).unwrap();
        assert_eq!(&short[..], &[0, 1, 0, 0, 0, 3, b's', b's', b'n'][..]);
        assert_eq!(short_params(&part[..20]), None);
        assert_eq!(short_params(&[0, 0]), None);
        assert_eq!(parse_bind(b"p\0s", false), None);
    }

    /// A portal bound before its statement is described (tokio-postgres
    /// `query_typed`), re-Binds and re-Parses around it, and Bind parameters
    /// as a member's key.
    mod bound_before_described {
        use super::*;

        fn fwd(m: &mut TargetMasker, mut s: Vec<u8>) -> String {
            String::from_utf8_lossy(&forwarded(m, &mut s)).into_owned()
        }
        fn parse(m: &mut TargetMasker, name: &str, sql: &str) {
            let mut b = format!("{name}\0{sql}\0").into_bytes();
            b.extend_from_slice(&0i16.to_be_bytes());
            m.on_client_frame(tag::PARSE, &b, true, Some(0));
        }
        fn bind(m: &mut TargetMasker, portal: &str, stmt: &str, params: &[&str]) {
            let mut b = format!("{portal}\0{stmt}\0").into_bytes();
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&(params.len() as i16).to_be_bytes());
            for p in params {
                b.extend_from_slice(&(p.len() as i32).to_be_bytes());
                b.extend_from_slice(p.as_bytes());
            }
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            m.on_client_frame(tag::BIND, &b, true, Some(0));
        }
        fn describe_s(m: &mut TargetMasker, name: &str) {
            m.on_client_frame(
                tag::DESCRIBE,
                format!("S{name}\0").as_bytes(),
                true,
                Some(0),
            );
        }
        fn execute(m: &mut TargetMasker, portal: &str) {
            let mut b = format!("{portal}\0").into_bytes();
            b.extend_from_slice(&0i32.to_be_bytes());
            m.on_client_frame(tag::EXECUTE, &b, true, Some(0));
        }
        fn sync(m: &mut TargetMasker) {
            m.on_client_frame(tag::SYNC, b"", true, Some(0));
        }
        fn tail(desc: &[(&str, u32)], val: &str) -> Vec<u8> {
            let mut s = frame(b't', &[0, 0]);
            s.extend(row_desc(desc));
            s.extend(rows(val));
            s
        }
        /// The answers to Parse, Describe of the statement and Sync.
        fn described(desc: &[(&str, u32)]) -> Vec<u8> {
            let mut s = frame(b'1', b"");
            s.extend(frame(b't', &[0, 0]));
            s.extend(row_desc(desc));
            s.extend(frame(b'Z', b"I"));
            s
        }
        /// One row holding `val`, its CommandComplete and ReadyForQuery.
        fn rows(val: &str) -> Vec<u8> {
            let mut s = data_row(&[val]);
            s.extend(frame(b'C', b"SELECT 1\0"));
            s.extend(frame(b'Z', b"I"));
            s
        }
        const SECRET: &str = "s3cr3t-value-xyz";

        /// tokio-postgres `query_typed`: Parse, Bind with `params`, Describe
        /// of the statement, Execute, Sync, answered with one column `col`
        /// holding [`SECRET`]; what the client gets.
        fn query_typed(sql: &str, params: &[&str], col: &str) -> String {
            let mut m = TargetMasker::new(engine(), 1 << 20);
            parse(&mut m, "", sql);
            bind(&mut m, "", "", params);
            describe_s(&mut m, "");
            execute(&mut m, "");
            sync(&mut m);
            let mut s = frame(b'1', b"");
            s.extend(frame(b'2', b""));
            s.extend(tail(&[(col, 25)], SECRET));
            fwd(&mut m, s)
        }

        #[test]
        fn control_ssn_column_is_masked() {
            let out = query_typed("SELECT ssn FROM people", &[], "ssn");
            assert!(!out.contains(SECRET), "control leaked: {out:?}");
        }

        /// A Parse of the name between the Bind and the Describe: the portal
        /// runs the old statement, so the new description is not its plan (its
        /// rows get the detectors, as any statement never described).
        #[test]
        fn reparse_between_bind_and_describe() {
            let mut m = TargetMasker::new(engine(), 1 << 20);
            parse(&mut m, "", "SELECT ssn FROM people");
            bind(&mut m, "", "", &[]);
            parse(&mut m, "", "SELECT 'x'::text AS note");
            describe_s(&mut m, "");
            execute(&mut m, "");
            sync(&mut m);
            let mut s = frame(b'1', b"");
            s.extend(frame(b'2', b""));
            s.extend(frame(b'1', b""));
            s.extend(frame(b't', &[0, 0]));
            s.extend(row_desc(&[("note", 25)]));
            fwd(&mut m, s);
            assert!(!m.portals.contains_key(&b""[..]));
            assert!(m.bound_undescribed.is_none());
            let out = fwd(&mut m, rows("123-45-6789"));
            assert!(!out.contains("123-45-6789"), "{out:?}");
        }

        #[test]
        fn rebind_to_described_statement_then_describe_other() {
            let mut m = TargetMasker::new(engine(), 1 << 20);
            // Batch 1: S (harmless, never described), T (secret) described.
            parse(&mut m, "s", "SELECT 'x'::text AS note");
            parse(&mut m, "t", "SELECT ssn FROM people");
            describe_s(&mut m, "t");
            sync(&mut m);
            let mut s = frame(b'1', b"");
            s.extend(described(&[("ssn", 25)]));
            fwd(&mut m, s);
            // Batch 2: Bind "" s, Bind "" t, Describe S s, Execute "".
            bind(&mut m, "", "s", &[]);
            bind(&mut m, "", "t", &[]);
            describe_s(&mut m, "s");
            execute(&mut m, "");
            sync(&mut m);
            let mut s = frame(b'2', b"");
            s.extend(frame(b'2', b""));
            s.extend(tail(&[("note", 25)], SECRET));
            let out = fwd(&mut m, s);
            assert!(!out.contains(SECRET), "re-Bind leaked: {out:?}");
        }

        #[test]
        fn query_typed_member_param() {
            let out = query_typed("select profile->>$1 from p", &["ssn"], "?column?");
            assert!(!out.contains(SECRET), "query_typed param leaked: {out:?}");
        }

        #[test]
        fn cached_member_param_control() {
            let mut m = TargetMasker::new(engine(), 1 << 20);
            parse(&mut m, "", "select profile->>$1 from p");
            describe_s(&mut m, "");
            sync(&mut m);
            fwd(&mut m, described(&[("?column?", 25)]));
            bind(&mut m, "", "", &["ssn"]);
            execute(&mut m, "");
            sync(&mut m);
            let mut s = frame(b'2', b"");
            s.extend(rows(SECRET));
            let out = fwd(&mut m, s);
            assert!(!out.contains(SECRET), "cached param leaked: {out:?}");
        }

        #[test]
        fn refused_reparse_hides_member_params() {
            let mut m = TargetMasker::new(engine(), 1 << 20);
            parse(&mut m, "s", "select profile->>$1 from p");
            describe_s(&mut m, "s");
            sync(&mut m);
            fwd(&mut m, described(&[("?column?", 25)]));
            // One write: a refused Parse of s, Sync, then Bind s with "ssn".
            parse(&mut m, "s", "select 1");
            sync(&mut m);
            bind(&mut m, "", "s", &["ssn"]);
            execute(&mut m, "");
            sync(&mut m);
            let mut s = frame(b'E', b"SERROR\0C42P05\0Mexists\0\0");
            s.extend(frame(b'Z', b"I"));
            s.extend(frame(b'2', b""));
            s.extend(rows(SECRET));
            let out = fwd(&mut m, s);
            assert!(
                !out.contains(SECRET),
                "refused re-Parse param leaked: {out:?}"
            );
        }
    }
}
