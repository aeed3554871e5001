//! The node's audit spool: records drained from the core rings are appended
//! here, numbered, and kept until the control plane says it has made them
//! durable. Synchronous `std::fs` code for the control thread (never a data
//! core).
//!
//! ```text
//! dir/
//!   00000000000000000001.seg   segment; the name is its first sequence
//!   00000000000000004097.seg
//!   ACK                        highest sequence acknowledged, decimal text,
//!                              replaced atomically (write ACK.tmp, fsync, rename)
//!   BASE                       the node name the spool ships for and the offset
//!                              between its sequences and that name's chain
//!                              (text, replaced atomically like ACK), or
//!                              `unbased` until the first hello is answered
//!
//! segment = MAGIC record*
//! record  = len:u32le crc32(payload):u32le payload[len]
//! payload = AuditRecord (prost), metadata.sequence set
//! ```
//!
//! * Sequences start at 1 and have no gaps; the spool assigns them at
//!   append, so they are gap-free per node whatever the cores did.
//! * An append writes the whole batch, then (with [`FsyncPolicy::Batch`],
//!   the default) `fdatasync`s before returning: a returned sequence is on
//!   disk. A batch goes into one segment; a new segment starts once the
//!   current one has reached `segment_bytes`.
//! * [`Spool::ack`] records the acknowledged position durably first, then
//!   deletes every segment whose records are all acknowledged.
//! * [`Spool::open`] recovers: a torn last record of the last segment (short,
//!   or failing its checksum with nothing but zeros after it) is cut off with
//!   a warning; damage anywhere else is refused. Numbering continues after
//!   the last good record, and everything after `ACK` is unacknowledged and
//!   is what [`Spool::unacked`] hands out for (re)sending.
//! * The spool's sequences are its own; what the control plane stores is a
//!   chain per node name. [`ShipBase`] maps one to the other: a record of
//!   local sequence `s` ships as `s + offset` under `node`
//!   ([`Spool::unacked_to_ship`]). A new spool is `Unbased` (its `BASE` says
//!   so before its first record): it ships nothing until the control
//!   plane's answer to the hello places it ([`Spool::take_base`]), the first
//!   unacknowledged record right after what the control plane stores for
//!   the node. A node renamed while it keeps its spool is placed the same
//!   way in its new name's chain. A spool written before `BASE` existed
//!   (segments or `ACK`, no `BASE`) shipped with local = chain sequences
//!   under the name its records carry: offset 0.
//! * Disk quota: an append that would take the spool past `quota_bytes` is
//!   refused whole with [`SpoolError::QuotaExceeded`] and writes nothing; the
//!   caller closes the [`super::AuditGate`] (fail closed) or counts the loss
//!   (fail open).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use proto::{AuditMetadata, AuditRecord};

use super::ring::RawFrame;

/// First bytes of every segment file (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"SLSPOOL\x01";
/// Name of the file holding the acknowledged position.
pub const ACK_FILE: &str = "ACK";
const ACK_TMP: &str = "ACK.tmp";
/// Name of the file holding the spool's [`ShipBase`].
pub const BASE_FILE: &str = "BASE";
const BASE_TMP: &str = "BASE.tmp";
/// First line of `BASE` (format version 1).
const BASE_MAGIC: &str = "sluice audit spool base 1";
const SEGMENT_EXT: &str = ".seg";
/// Every this many records a segment remembers an offset, so `unacked` can
/// start reading near the sequence it wants.
const INDEX_EVERY: u64 = 64;
const HEADER: usize = 8;

/// How far past its quota the records of lost records may take the spool
/// ([`Spool::append_reserved`]): a few thousand of them, written at most
/// about once a second per core and reason while records are lost.
pub const LOSS_RESERVE_BYTES: u64 = 1 << 20;
/// Most encoded record bytes [`Spool::unacked_to_ship`] returns at once
/// (at least one record, whatever its size): what it reads is shipped as one
/// `AuditBatch`, which the control plane accepts up to
/// `proto::MAX_AUDIT_BATCH_BYTES`; half of that leaves room for the
/// metadata rewritten on the way (chain ids and sequences).
pub const MAX_SHIP_BYTES: usize = proto::MAX_AUDIT_BATCH_BYTES / 2;

/// When the spool calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// After every appended batch (default): an appended record survives a
    /// power loss.
    #[default]
    Batch,
    /// Never for records (the kernel writes them back); the ACK file is
    /// still synced, since losing it could renumber records.
    Never,
}

/// Where and how the spool keeps its files.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Written into every record's metadata.
    pub node_id: String,
    /// A segment is closed once it holds at least this many bytes.
    pub segment_bytes: u64,
    /// Most bytes the spool's segment files may take together.
    pub quota_bytes: u64,
    /// Largest encoded record accepted.
    pub max_record_bytes: usize,
    pub fsync: FsyncPolicy,
}

impl SpoolConfig {
    /// Defaults: 8 MiB segments, a 1 GiB quota, 1 MiB records, fsync per
    /// batch.
    pub fn new(dir: impl Into<PathBuf>, node_id: impl Into<String>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            node_id: node_id.into(),
            segment_bytes: 8 << 20,
            quota_bytes: 1 << 30,
            max_record_bytes: 1 << 20,
            fsync: FsyncPolicy::Batch,
        }
    }
}

/// What went wrong in a spool operation.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The batch would take the spool past its disk quota; nothing was
    /// written. Statements must be refused (fail closed) until acks free
    /// space.
    #[error(
        "audit spool is at its disk quota: {stored} bytes stored, {batch} more would pass the quota of {quota} bytes"
    )]
    QuotaExceeded { stored: u64, batch: u64, quota: u64 },
    /// One record is larger than `max_record_bytes`; nothing was written.
    #[error("audit record of {size} bytes is larger than the spool's limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    /// The spool's files could not be read or written.
    #[error("audit spool I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The files are damaged beyond a torn last record.
    #[error("audit spool is damaged: {0}")]
    Corrupt(String),
    /// An ack past the last appended sequence.
    #[error("acknowledgement of sequence {acked} but the spool has only appended up to {last}")]
    AckBeyondEnd { acked: u64, last: u64 },
    /// The control plane stores sequences this spool has numbered for
    /// other records that are still waiting: only an operator can sort
    /// that out (the spool directory was replaced while it held records).
    #[error(
        "the control plane already stores this node's records up to sequence {stored}, \
         but the spool has numbered records up to {last} with {pending} still waiting: \
         was the spool directory replaced? Records are kept; shipping stops"
    )]
    Conflict {
        stored: u64,
        last: u64,
        pending: u64,
    },
    /// The control plane's position for this node cannot be reached from
    /// the spool's sequences (an absurd `durable_through`).
    #[error(
        "the control plane stores this node's records up to sequence {durable_through}, \
         which the spool's sequences (acknowledged through {acked}, last {last}) cannot \
         be shipped after"
    )]
    BaseOutOfRange {
        durable_through: u64,
        acked: u64,
        last: u64,
    },
    /// Records asked for shipping before the spool has a place in the
    /// node's chain.
    #[error(
        "the audit spool has no place in node {node}'s chain yet: \
         records are shipped only once the control plane has answered the hello"
    )]
    NotBased { node: String },
    /// An earlier write failed and could not be undone; reopen the spool.
    #[error("audit spool is unusable after a failed write; reopen it")]
    Poisoned,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SpoolError {
    let context = context.into();
    move |source| SpoolError::Io { context, source }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// `first_seq - 1` while empty.
    last_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// (sequence, byte offset of its record) every `INDEX_EVERY` records.
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.last_seq < self.first_seq
    }

    fn note_record(&mut self, seq: u64, offset: u64) {
        if (seq - self.first_seq).is_multiple_of(INDEX_EVERY) {
            self.index.push((seq, offset));
        }
        self.last_seq = seq;
    }

    /// Offset to start reading at to find `seq`.
    fn offset_for(&self, seq: u64) -> u64 {
        let i = self.index.partition_point(|&(s, _)| s <= seq);
        if i == 0 {
            HEADER as u64
        } else {
            self.index[i - 1].1
        }
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the end of the last segment (a torn record).
    pub truncated_bytes: u64,
    /// Segments deleted because they were fully acknowledged.
    pub removed_segments: usize,
}

/// Where the spool's records go in the control plane's chains. See the
/// module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipBase {
    /// Nothing of this spool has been shipped: its records are placed in a
    /// chain at the control plane's first answer to a hello.
    Unbased,
    /// Local sequence `s` ships as `s + offset` in `node`'s chain.
    Based { node: String, offset: i64 },
}

/// What [`Spool::take_base`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseChange {
    /// The spool already ships for this node name, at this offset.
    Kept { offset: i64 },
    /// The spool was placed in this node name's chain (it was `previous`).
    Rebased { previous: ShipBase, offset: i64 },
}

/// The chain sequence of local sequence `local` at `offset` (None when it
/// would fall outside 1..=u64::MAX).
pub fn chain_seq(local: u64, offset: i64) -> Option<u64> {
    u64::try_from(i128::from(local) + i128::from(offset))
        .ok()
        .filter(|&c| c > 0)
}

/// The chain position of local sequence `local` at `offset`, 0 when it
/// falls before the chain's start (local 0: what precedes the spool's first
/// record).
pub fn chain_pos(local: u64, offset: i64) -> u64 {
    let c = i128::from(local) + i128::from(offset);
    u64::try_from(c.max(0)).unwrap_or(u64::MAX)
}

/// The local sequence of chain sequence `chain` at `offset`: 0 for a chain
/// position before anything this spool shipped for the chain.
pub fn local_seq(chain: u64, offset: i64) -> u64 {
    let l = i128::from(chain) - i128::from(offset);
    u64::try_from(l.max(0)).unwrap_or(u64::MAX)
}

/// The spool. See the module docs.
#[derive(Debug)]
pub struct Spool {
    cfg: SpoolConfig,
    segments: Vec<Segment>,
    /// Open for appending: the last segment, while it is not full.
    active: Option<File>,
    next_seq: u64,
    acked: u64,
    bytes: u64,
    recovery: Recovery,
    buf: Vec<u8>,
    poisoned: bool,
    /// Highest `core_seq` per core among the records found at open.
    core_high: HashMap<u32, u64>,
    base: ShipBase,
    /// Whether `base` is what `BASE` says (false for a spool written
    /// before `BASE` existed, until its first hello is answered).
    base_on_disk: bool,
}

impl Spool {
    /// Opens (creating if needed) the spool in `cfg.dir` and recovers it.
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        fs::create_dir_all(&cfg.dir).map_err(io_err(format!("create {}", cfg.dir.display())))?;
        let acked = read_ack(&cfg.dir)?;
        let _ = fs::remove_file(cfg.dir.join(ACK_TMP));
        let base_file = read_base(&cfg.dir)?;
        let _ = fs::remove_file(cfg.dir.join(BASE_TMP));

        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in
            fs::read_dir(&cfg.dir).map_err(io_err(format!("list {}", cfg.dir.display())))?
        {
            let entry = entry.map_err(io_err(format!("list {}", cfg.dir.display())))?;
            let name = entry.file_name();
            let Some(first) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            names.push((first, entry.path()));
        }
        names.sort();

        let mut recovery = Recovery::default();
        let mut core_high = HashMap::new();
        // The node of the first record at or after the acknowledged
        // position: for a spool from before `BASE` existed, the name whose
        // chain its sequences are (a control plane stores a record only
        // under the node id it carries).
        let mut legacy_node = None;
        let mut segments: Vec<Segment> = Vec::new();
        let count = names.len();
        for (i, (first_seq, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let seg = load_segment(
                first_seq,
                path,
                is_last,
                &mut recovery,
                &mut core_high,
                (acked, &mut legacy_node),
            )?;
            if let Some(prev) = segments.last() {
                if !seg.is_empty() && seg.first_seq != prev.last_seq + 1 {
                    return Err(SpoolError::Corrupt(format!(
                        "{} starts at sequence {} but the previous segment ends at {}",
                        seg.path.display(),
                        seg.first_seq,
                        prev.last_seq
                    )));
                }
            }
            if seg.is_empty() && !is_last {
                fs::remove_file(&seg.path)
                    .map_err(io_err(format!("remove {}", seg.path.display())))?;
                continue;
            }
            segments.push(seg);
        }

        let last_record = segments
            .iter()
            .rev()
            .find(|s| !s.is_empty())
            .map(|s| s.last_seq)
            .unwrap_or(0);
        let next_seq = last_record.max(acked) + 1;

        let (base, base_on_disk) = match base_file {
            Some(base) => {
                check_base(&cfg.dir, &base, acked, next_seq - 1)?;
                (base, true)
            }
            // Nothing was ever acknowledged and no record is here, so
            // nothing of this directory was ever shipped: a new spool.
            // Say so on disk before its first record, so that a restart
            // does not take its records for an old spool's.
            None if acked == 0 && last_record == 0 => {
                write_base(&cfg.dir, &ShipBase::Unbased)?;
                (ShipBase::Unbased, true)
            }
            // Written before `BASE` existed: it shipped its own sequences
            // under the name its records carry (or, with none left, under
            // the name it runs as: nothing else says).
            None => (
                ShipBase::Based {
                    node: legacy_node.unwrap_or_else(|| cfg.node_id.clone()),
                    offset: 0,
                },
                false,
            ),
        };

        // Segments fully acknowledged (a crash between writing ACK and
        // deleting them), and an empty last segment whose name does not
        // fit the numbering, go now.
        let mut kept = Vec::with_capacity(segments.len());
        for seg in segments {
            let stale_empty = seg.is_empty() && seg.first_seq != next_seq;
            if (!seg.is_empty() && seg.last_seq <= acked) || stale_empty {
                fs::remove_file(&seg.path)
                    .map_err(io_err(format!("remove {}", seg.path.display())))?;
                recovery.removed_segments += usize::from(!stale_empty);
            } else {
                kept.push(seg);
            }
        }
        let segments = kept;
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let active = match segments.last() {
            Some(seg) if seg.bytes < cfg.segment_bytes => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_err(format!("open {}", seg.path.display())))?,
            ),
            _ => None,
        };
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                dir = %cfg.dir.display(),
                bytes = recovery.truncated_bytes,
                "audit spool: cut off a torn record at the end of the last segment"
            );
        }
        Ok(Spool {
            cfg,
            segments,
            active,
            next_seq,
            acked,
            bytes,
            recovery,
            buf: Vec::new(),
            poisoned: false,
            core_high,
            base,
            base_on_disk,
        })
    }

    /// Numbers `records` (metadata.sequence, node_id, and id when empty),
    /// writes them, and syncs per the fsync policy. Returns the last
    /// sequence assigned. All or nothing: on an error nothing is stored and
    /// the numbers written into `records` are void.
    pub fn append_batch(&mut self, records: &mut [AuditRecord]) -> Result<u64, SpoolError> {
        self.append_records(records, 0)
    }

    /// [`Spool::append_batch`] for the records the node writes about its
    /// own audit trail (`RECORDS_LOST`): they may take the spool up to
    /// [`LOSS_RESERVE_BYTES`] past its quota, so that a spool at its quota,
    /// where `fail_open` drops records, still takes the record of that.
    pub fn append_reserved(&mut self, records: &mut [AuditRecord]) -> Result<u64, SpoolError> {
        self.append_records(records, LOSS_RESERVE_BYTES)
    }

    fn append_records(
        &mut self,
        records: &mut [AuditRecord],
        reserve: u64,
    ) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if records.is_empty() {
            return Ok(self.last_seq());
        }
        self.buf.clear();
        let mut offsets = Vec::with_capacity(records.len());
        for (i, rec) in records.iter_mut().enumerate() {
            let seq = self.next_seq + i as u64;
            let md = rec.metadata.get_or_insert_with(AuditMetadata::default);
            md.sequence = seq;
            md.node_id.clone_from(&self.cfg.node_id);
            if md.id.is_empty() {
                md.id = format!("{}-{seq}", self.cfg.node_id);
            }
            let len = rec.encoded_len();
            if len > self.cfg.max_record_bytes {
                return Err(SpoolError::RecordTooLarge {
                    size: len,
                    max: self.cfg.max_record_bytes,
                });
            }
            offsets.push(self.buf.len() as u64);
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0; HEADER]);
            rec.encode(&mut self.buf).expect("Vec grows");
            let crc = crc32fast::hash(&self.buf[start + HEADER..]);
            self.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
            self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }

        self.write_buf(records.len(), offsets, reserve)
    }

    /// Like [`Spool::append_batch`] for records that arrive encoded (from
    /// the core rings): each payload `batch[f.start..f.end]` is stored as
    /// is, followed by a metadata field carrying the node id, sequence and
    /// id, which a decoder merges into the record
    /// ([`super::record::metadata_overlay`]). Nothing is decoded or
    /// re-encoded. Returns the last sequence assigned; all or nothing.
    pub fn append_raw(&mut self, batch: &[u8], frames: &[RawFrame]) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if frames.is_empty() {
            return Ok(self.last_seq());
        }
        self.buf.clear();
        let mut offsets = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            let seq = self.next_seq + i as u64;
            let start = self.buf.len();
            offsets.push(start as u64);
            self.buf.extend_from_slice(&[0; HEADER]);
            self.buf.extend_from_slice(&batch[f.start..f.end]);
            super::record::metadata_overlay(&mut self.buf, &self.cfg.node_id, seq);
            let len = self.buf.len() - start - HEADER;
            if len > self.cfg.max_record_bytes {
                return Err(SpoolError::RecordTooLarge {
                    size: len,
                    max: self.cfg.max_record_bytes,
                });
            }
            let crc = crc32fast::hash(&self.buf[start + HEADER..]);
            self.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
            self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
        self.write_buf(frames.len(), offsets, 0)
    }

    /// Write `self.buf` (`count` encoded records starting at `offsets`)
    /// as the next sequences, honouring the quota (plus `reserve`) and the
    /// fsync policy.
    fn write_buf(
        &mut self,
        count: usize,
        offsets: Vec<u64>,
        reserve: u64,
    ) -> Result<u64, SpoolError> {
        let roll = self.active.is_none();
        let batch = self.buf.len() as u64 + if roll { HEADER as u64 } else { 0 };
        if self.bytes + batch > self.cfg.quota_bytes + reserve {
            return Err(SpoolError::QuotaExceeded {
                stored: self.bytes,
                batch,
                quota: self.cfg.quota_bytes,
            });
        }
        if roll {
            self.start_segment()?;
        }
        let seg = self
            .segments
            .last_mut()
            .expect("a segment after start_segment");
        let file = self.active.as_mut().expect("an active segment");
        let base = seg.bytes;
        if let Err(e) = file.write_all(&self.buf) {
            // Undo a partial write so the file stays a run of whole records.
            if file.set_len(base).is_err() {
                self.poisoned = true;
            }
            return Err(io_err(format!("append to {}", seg.path.display()))(e));
        }
        if self.cfg.fsync == FsyncPolicy::Batch {
            if let Err(e) = file.sync_data() {
                // The page cache state is unknown after a failed fsync.
                self.poisoned = true;
                return Err(io_err(format!("fdatasync {}", seg.path.display()))(e));
            }
        }
        for (i, off) in offsets.into_iter().enumerate() {
            seg.note_record(self.next_seq + i as u64, base + off);
        }
        seg.bytes += self.buf.len() as u64;
        self.bytes += self.buf.len() as u64;
        self.next_seq += count as u64;
        if seg.bytes >= self.cfg.segment_bytes {
            self.active = None;
        }
        Ok(self.last_seq())
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let path = self.cfg.dir.join(segment_name(self.next_seq));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("create {}", path.display())))?;
        f.write_all(SEGMENT_MAGIC)
            .map_err(io_err(format!("write {}", path.display())))?;
        if self.cfg.fsync == FsyncPolicy::Batch {
            f.sync_data()
                .map_err(io_err(format!("fdatasync {}", path.display())))?;
            sync_dir(&self.cfg.dir)?;
        }
        self.segments.push(Segment {
            first_seq: self.next_seq,
            last_seq: self.next_seq - 1,
            path,
            bytes: HEADER as u64,
            index: Vec::new(),
        });
        self.bytes += HEADER as u64;
        self.active = Some(f);
        Ok(())
    }

    /// The control plane has made every sequence up to `durable_through`
    /// durable: record that, then delete the segments it covers. An ack at
    /// or below the current one is ignored.
    pub fn ack(&mut self, durable_through: u64) -> Result<(), SpoolError> {
        if durable_through <= self.acked {
            return Ok(());
        }
        if durable_through > self.last_seq() {
            return Err(SpoolError::AckBeyondEnd {
                acked: durable_through,
                last: self.last_seq(),
            });
        }
        write_ack(&self.cfg.dir, durable_through)?;
        self.acked = durable_through;
        while let Some(seg) = self.segments.first() {
            if seg.is_empty() || seg.last_seq > durable_through {
                break;
            }
            if self.segments.len() == 1 {
                self.active = None;
            }
            fs::remove_file(&seg.path).map_err(io_err(format!("remove {}", seg.path.display())))?;
            self.bytes -= seg.bytes;
            self.segments.remove(0);
        }
        Ok(())
    }

    /// Up to `max` stored records from sequence `from_seq` on (never below
    /// the acknowledged position), in order, read back from disk.
    pub fn unacked(&self, from_seq: u64, max: usize) -> Result<Vec<AuditRecord>, SpoolError> {
        self.read(from_seq, max, usize::MAX)
    }

    /// [`Spool::unacked`], stopping before `max_bytes` of encoded records
    /// (the first record is read whatever its size).
    fn read(
        &self,
        from_seq: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<AuditRecord>, SpoolError> {
        let from = from_seq.max(self.acked + 1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for seg in &self.segments {
            if out.len() >= max {
                break;
            }
            if seg.is_empty() || seg.last_seq < from {
                continue;
            }
            let mut f =
                File::open(&seg.path).map_err(io_err(format!("open {}", seg.path.display())))?;
            let start = seg.offset_for(from);
            f.seek(SeekFrom::Start(start))
                .map_err(io_err(format!("seek {}", seg.path.display())))?;
            let mut r = BufReader::new(f).take(seg.bytes - start);
            let mut header = [0u8; HEADER];
            let mut payload = Vec::new();
            let mut seq = 0;
            while out.len() < max && seq < seg.last_seq {
                r.read_exact(&mut header)
                    .map_err(io_err(format!("read {}", seg.path.display())))?;
                let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
                if !out.is_empty() && bytes.saturating_add(len) > max_bytes {
                    return Ok(out);
                }
                payload.resize(len, 0);
                r.read_exact(&mut payload)
                    .map_err(io_err(format!("read {}", seg.path.display())))?;
                let rec = decode_checked(&header, &payload).ok_or_else(|| {
                    SpoolError::Corrupt(format!("{} changed under the spool", seg.path.display()))
                })?;
                seq = rec.metadata.as_ref().map_or(0, |m| m.sequence);
                if seq >= from {
                    bytes += len;
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// Last sequence appended (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Highest sequence acknowledged by the control plane.
    pub fn acked_through(&self) -> u64 {
        self.acked
    }

    /// Records appended but not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.last_seq() - self.acked
    }

    /// Bytes the segment files take now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `additional` more bytes would take the spool past its quota.
    pub fn would_exceed(&self, additional: u64) -> bool {
        self.bytes + additional > self.cfg.quota_bytes
    }

    /// What the last [`Spool::open`] repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Highest `metadata.core_seq` per core among the records the spool
    /// held when it was opened (records acknowledged and deleted before
    /// then are not counted). Ring recovery skips frames at or below it:
    /// they reached the spool before a crash stopped the ring from being
    /// told.
    pub fn core_high_water(&self) -> &HashMap<u32, u64> {
        &self.core_high
    }

    /// Where the spool's records go (see the module docs).
    pub fn base(&self) -> &ShipBase {
        &self.base
    }

    /// Whether the spool must be placed in the chain of the name it runs
    /// as ([`SpoolConfig::node_id`]) before it ships anything: a new spool,
    /// or a renamed node's.
    pub fn needs_base(&self) -> bool {
        match &self.base {
            ShipBase::Unbased => true,
            ShipBase::Based { node, .. } => *node != self.cfg.node_id,
        }
    }

    /// The offset to ship at, once based for the name it runs as.
    pub fn offset(&self) -> Option<i64> {
        match &self.base {
            ShipBase::Based { node, offset } if *node == self.cfg.node_id => Some(*offset),
            _ => None,
        }
    }

    /// The control plane answered the hello of the name the spool runs as
    /// with `durable_through`. If the spool [needs a base](Self::needs_base),
    /// place its first unacknowledged record right after `durable_through`
    /// (records at or below the acknowledged position went to the old
    /// name's chain and stay there), and record that durably before
    /// returning: nothing may be shipped before. Otherwise keep the base
    /// (writing it down for a spool from before `BASE` existed); the
    /// caller then treats `durable_through` as an acknowledgement.
    pub fn take_base(&mut self, durable_through: u64) -> Result<BaseChange, SpoolError> {
        if let Some(offset) = self.offset() {
            if !self.base_on_disk {
                write_base(&self.cfg.dir, &self.base)?;
                self.base_on_disk = true;
            }
            return Ok(BaseChange::Kept { offset });
        }
        let offset = i128::from(durable_through) - i128::from(self.acked);
        let first = self.acked.saturating_add(1);
        let fits = i64::try_from(offset).ok().filter(|&o| {
            chain_seq(first, o).is_some() && chain_seq(self.last_seq().max(first), o).is_some()
        });
        let Some(offset) = fits else {
            return Err(SpoolError::BaseOutOfRange {
                durable_through,
                acked: self.acked,
                last: self.last_seq(),
            });
        };
        let base = ShipBase::Based {
            node: self.cfg.node_id.clone(),
            offset,
        };
        write_base(&self.cfg.dir, &base)?;
        let previous = std::mem::replace(&mut self.base, base);
        self.base_on_disk = true;
        Ok(BaseChange::Rebased { previous, offset })
    }

    /// [`Spool::unacked`] as shipped under the name the spool runs as:
    /// sequences moved by the base's offset, `node_id` that name, and an id
    /// the spool assigned (`<node>-<sequence>`) following the new node and
    /// sequence. Refused while the spool [needs a base](Self::needs_base).
    pub fn unacked_to_ship(
        &self,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<AuditRecord>, SpoolError> {
        let Some(offset) = self.offset() else {
            return Err(SpoolError::NotBased {
                node: self.cfg.node_id.clone(),
            });
        };
        // (One batch, which the control plane takes up to a size.)
        let mut records = self.read(from_seq, max, MAX_SHIP_BYTES)?;
        let node = &self.cfg.node_id;
        for rec in &mut records {
            let md = rec.metadata.get_or_insert_with(AuditMetadata::default);
            if offset == 0 && md.node_id == *node {
                continue;
            }
            let local = md.sequence;
            // (Checked when the base was read or taken; kept an error.)
            let chain = chain_seq(local, offset).ok_or_else(|| {
                SpoolError::Corrupt(format!(
                    "{}: offset {offset} puts sequence {local} outside a chain",
                    self.cfg.dir.join(BASE_FILE).display()
                ))
            })?;
            let assigned = md
                .id
                .strip_prefix(md.node_id.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|r| r.parse() == Ok(local));
            if assigned || md.id.is_empty() {
                md.id = format!("{node}-{chain}");
            }
            md.node_id.clone_from(node);
            md.sequence = chain;
        }
        Ok(records)
    }

    /// The control plane already stores records of this node up to `seq`,
    /// beyond anything this spool has numbered (the spool directory was
    /// lost or replaced): continue the numbering after `seq`, so new
    /// records are not mistaken for ones it has. Only allowed while
    /// nothing is waiting to be acknowledged.
    pub fn skip_to(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.last_seq() {
            return Ok(());
        }
        if self.pending() > 0 {
            return Err(SpoolError::Conflict {
                stored: seq,
                last: self.last_seq(),
                pending: self.pending(),
            });
        }
        write_ack(&self.cfg.dir, seq)?;
        self.active = None;
        for seg in self.segments.drain(..) {
            fs::remove_file(&seg.path).map_err(io_err(format!("remove {}", seg.path.display())))?;
        }
        self.bytes = 0;
        self.acked = seq;
        self.next_seq = seq + 1;
        Ok(())
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_EXT}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

fn read_ack(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(ACK_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            SpoolError::Corrupt(format!(
                "{} does not hold a sequence number",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

fn write_ack(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(ACK_TMP);
    let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(format!("{seq}\n").as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(ACK_FILE)).map_err(io_err(format!("rename {}", tmp.display())))?;
    sync_dir(dir)
}

/// `BASE`, if there is one. A file that does not read as one is refused,
/// naming it: guessing a base could ship records over others.
fn read_base(dir: &Path) -> Result<Option<ShipBase>, SpoolError> {
    let path = dir.join(BASE_FILE);
    let text = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    parse_base(&text).map(Some).map_err(|why| {
        SpoolError::Corrupt(format!(
            "{} is not a spool base file ({why}); it says which node name and chain \
             position this spool ships for, so the spool is not used without it",
            path.display()
        ))
    })
}

fn parse_base(bytes: &[u8]) -> Result<ShipBase, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let mut lines = text.lines();
    match lines.next() {
        Some(BASE_MAGIC) => {}
        Some(l) => return Err(format!("first line {l:?}, expected {BASE_MAGIC:?}")),
        None => return Err("empty".into()),
    }
    let mut field = |name: &str| -> Result<String, String> {
        let line = lines
            .next()
            .ok_or_else(|| format!("no {name} line (cut short?)"))?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_string)
            .ok_or_else(|| format!("{line:?} where the {name} line belongs"))
    };
    let state = field("state")?;
    let base = match state.as_str() {
        "unbased" => ShipBase::Unbased,
        "based" => {
            let node = field("node")?;
            if node.is_empty() {
                return Err("empty node name".into());
            }
            let offset = field("offset")?;
            let offset = offset
                .parse()
                .map_err(|_| format!("offset {offset:?} is not a whole number"))?;
            ShipBase::Based { node, offset }
        }
        other => return Err(format!("state {other:?}, expected based or unbased")),
    };
    match lines.next() {
        Some("end") => {}
        Some(l) => return Err(format!("{l:?} where the end line belongs")),
        None => return Err("no end line (cut short?)".into()),
    }
    if lines.next().is_some() {
        return Err("text after the end line".into());
    }
    Ok(base)
}

fn format_base(base: &ShipBase) -> String {
    match base {
        ShipBase::Unbased => format!("{BASE_MAGIC}\nstate unbased\nend\n"),
        ShipBase::Based { node, offset } => {
            format!("{BASE_MAGIC}\nstate based\nnode {node}\noffset {offset}\nend\n")
        }
    }
}

/// Records the base durably: a crash leaves the old file or the new one,
/// never a mix (write BASE.tmp, fsync, rename, fsync the directory).
fn write_base(dir: &Path, base: &ShipBase) -> Result<(), SpoolError> {
    let tmp = dir.join(BASE_TMP);
    let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(format_base(base).as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(BASE_FILE)).map_err(io_err(format!("rename {}", tmp.display())))?;
    sync_dir(dir)
}

/// A base read from disk must place every record the spool holds in
/// 1..=u64::MAX of its chain.
fn check_base(dir: &Path, base: &ShipBase, acked: u64, last: u64) -> Result<(), SpoolError> {
    let ShipBase::Based { offset, .. } = base else {
        return Ok(());
    };
    let first = acked.saturating_add(1);
    if chain_seq(first, *offset).is_none() || chain_seq(last.max(first), *offset).is_none() {
        return Err(SpoolError::Corrupt(format!(
            "{}: offset {offset} puts the spool's sequences from {first} on outside a chain",
            dir.join(BASE_FILE).display(),
        )));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync {}", dir.display())))
}

fn decode_checked(header: &[u8; HEADER], payload: &[u8]) -> Option<AuditRecord> {
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    // Every record has metadata, so an empty payload is zeros, not a record.
    if payload.is_empty() || crc32fast::hash(payload) != crc {
        return None;
    }
    AuditRecord::decode(payload).ok()
}

/// Reads one segment, checking every record; cuts off a torn tail when it
/// is the last segment.
fn load_segment(
    first_seq: u64,
    path: PathBuf,
    is_last: bool,
    recovery: &mut Recovery,
    core_high: &mut HashMap<u32, u64>,
    (acked, node_at_acked): (u64, &mut Option<String>),
) -> Result<Segment, SpoolError> {
    let buf = fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
    let corrupt = |what: String| SpoolError::Corrupt(format!("{}: {what}", path.display()));
    let mut seg = Segment {
        first_seq,
        last_seq: first_seq - 1,
        path: path.clone(),
        bytes: 0,
        index: Vec::new(),
    };
    if buf.len() < HEADER || &buf[..HEADER] != SEGMENT_MAGIC {
        // A segment created but torn before its magic was written.
        if is_last && SEGMENT_MAGIC.starts_with(&buf) {
            rewrite_header(&path)?;
            recovery.truncated_bytes += buf.len() as u64;
            seg.bytes = HEADER as u64;
            return Ok(seg);
        }
        return Err(corrupt("not a spool segment (bad header)".into()));
    }
    let mut pos = HEADER;
    let mut torn_at = None;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let whole = rest.len() >= HEADER && {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            rest.len() - HEADER >= len
        };
        let decoded = if whole {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let header: &[u8; HEADER] = rest[..HEADER].try_into().expect("8 bytes");
            decode_checked(header, &rest[HEADER..HEADER + len]).map(|r| (r, HEADER + len))
        } else {
            None
        };
        match decoded {
            Some((rec, size)) => {
                let seq = rec.metadata.as_ref().map_or(0, |m| m.sequence);
                let expected = seg.last_seq + 1;
                if seq != expected {
                    return Err(corrupt(format!(
                        "record at byte {pos} has sequence {seq}, expected {expected}"
                    )));
                }
                if let Some(md) = rec.metadata {
                    if md.core_seq > 0 {
                        let h = core_high.entry(md.core).or_insert(0);
                        *h = (*h).max(md.core_seq);
                    }
                    if seq >= acked && node_at_acked.is_none() {
                        *node_at_acked = Some(md.node_id);
                    }
                }
                seg.note_record(seq, pos as u64);
                pos += size;
            }
            None => {
                // Torn: the last record is short, or fails its checksum with
                // only zeros after it (blocks allocated but never written).
                let end = if whole {
                    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                    pos + HEADER + len
                } else {
                    buf.len()
                };
                if is_last && buf[end..].iter().all(|&b| b == 0) {
                    torn_at = Some(pos);
                    break;
                }
                return Err(corrupt(format!(
                    "damaged record at byte {pos} followed by {} more bytes",
                    buf.len() - end
                )));
            }
        }
    }
    if let Some(pos) = torn_at {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        f.set_len(pos as u64)
            .and_then(|()| f.sync_all())
            .map_err(io_err(format!("truncate {}", path.display())))?;
        recovery.truncated_bytes += (buf.len() - pos) as u64;
    }
    seg.bytes = pos as u64;
    Ok(seg)
}

fn rewrite_header(path: &Path) -> Result<(), SpoolError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.write_all(SEGMENT_MAGIC)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{AuditKind, AuditStatement};

    fn rec(sql: &str) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                kind: AuditKind::Query as i32,
                time_unix_nanos: 1,
                ..Default::default()
            }),
            statement: Some(AuditStatement {
                sql: sql.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn batch(tag: &str, n: usize) -> Vec<AuditRecord> {
        (0..n).map(|i| rec(&format!("select {tag} {i}"))).collect()
    }

    fn cfg(dir: &Path) -> SpoolConfig {
        let mut c = SpoolConfig::new(dir, "node-a");
        c.segment_bytes = 1024;
        c
    }

    fn seqs(recs: &[AuditRecord]) -> Vec<u64> {
        recs.iter()
            .map(|r| r.metadata.as_ref().unwrap().sequence)
            .collect()
    }

    fn sql(r: &AuditRecord) -> &str {
        &r.statement.as_ref().unwrap().sql
    }

    fn dir_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_str().unwrap().ends_with(SEGMENT_EXT))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().ends_with(SEGMENT_EXT))
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    #[test]
    fn append_numbers_records_and_reopen_resends_what_is_not_acked() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        let mut b = batch("a", 10);
        assert_eq!(s.append_batch(&mut b).unwrap(), 10);
        assert_eq!(seqs(&b), (1..=10).collect::<Vec<_>>());
        let md = b[3].metadata.as_ref().unwrap();
        assert_eq!(
            (md.node_id.as_str(), md.id.as_str()),
            ("node-a", "node-a-4")
        );
        let mut b2 = batch("b", 50);
        for chunk in b2.chunks_mut(10) {
            s.append_batch(chunk).unwrap();
        }
        assert_eq!(s.last_seq(), 60);
        assert!(s.segment_count() > 1, "segments roll at 1 KiB");
        s.ack(25).unwrap();
        assert_eq!(s.pending(), 35);
        assert_eq!(s.bytes(), dir_bytes(d.path()));
        drop(s);

        let mut s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!((s.last_seq(), s.acked_through()), (60, 25));
        let resend = s.unacked(0, 1000).unwrap();
        assert_eq!(seqs(&resend), (26..=60).collect::<Vec<_>>());
        assert_eq!(sql(&resend[0]), "select b 15");
        assert_eq!(resend[0], b2[15]);
        // From the middle, bounded.
        assert_eq!(seqs(&s.unacked(40, 5).unwrap()), [40, 41, 42, 43, 44]);
        let mut b3 = batch("c", 1);
        assert_eq!(s.append_batch(&mut b3).unwrap(), 61);
        s.ack(61).unwrap();
        assert_eq!(
            (s.segment_count(), s.bytes(), dir_bytes(d.path())),
            (0, 0, 0)
        );
        assert!(s.unacked(0, 10).unwrap().is_empty());
        drop(s);

        // Everything acked and deleted: numbering still continues.
        let mut s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(s.last_seq(), 61);
        let mut b4 = batch("d", 2);
        assert_eq!(s.append_batch(&mut b4).unwrap(), 63);
        assert_eq!(seqs(&s.unacked(0, 10).unwrap()), [62, 63]);
    }

    #[test]
    fn ack_is_checked_and_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 3)).unwrap();
        assert!(matches!(
            s.ack(4),
            Err(SpoolError::AckBeyondEnd { acked: 4, last: 3 })
        ));
        s.ack(2).unwrap();
        s.ack(1).unwrap();
        assert_eq!(s.acked_through(), 2);
        assert_eq!(seqs(&s.unacked(1, 10).unwrap()), [3]);
    }

    #[test]
    fn torn_tail_is_cut_at_every_length_and_numbering_continues() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.segment_bytes = 1 << 20;
        let mut s = Spool::open(c.clone()).unwrap();
        s.append_batch(&mut batch("a", 3)).unwrap();
        let good = s.bytes();
        s.append_batch(&mut batch("b", 2)).unwrap();
        let full = fs::read(last_segment(d.path())).unwrap();
        drop(s);
        // A crash between write and fsync can leave any prefix of the
        // second batch; every cut inside its first record loses that record
        // and the one after it, a cut inside the second only the second.
        let first_end = {
            let len =
                u32::from_le_bytes(full[good as usize..good as usize + 4].try_into().unwrap());
            good as usize + HEADER + len as usize
        };
        for cut in good as usize + 1..full.len() {
            fs::write(last_segment(d.path()), &full[..cut]).unwrap();
            let mut s = Spool::open(c.clone()).unwrap();
            let expect_last = if cut < first_end { 3 } else { 4 };
            assert_eq!(s.last_seq(), expect_last, "cut at {cut}");
            assert_eq!(s.recovery().truncated_bytes > 0, cut != first_end);
            assert_eq!(s.bytes(), dir_bytes(d.path()));
            let mut more = batch("c", 1);
            assert_eq!(s.append_batch(&mut more).unwrap(), expect_last + 1);
            let all = s.unacked(0, 100).unwrap();
            assert_eq!(seqs(&all), (1..=expect_last + 1).collect::<Vec<_>>());
            assert_eq!(sql(all.last().unwrap()), "select c 0");
        }
        // A flipped bit in the last record is torn too (nothing after it).
        let mut bad = full.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        fs::write(last_segment(d.path()), &bad).unwrap();
        assert_eq!(Spool::open(c.clone()).unwrap().last_seq(), 4);
        // Zeros after the last good record (preallocated, never written).
        let mut zeros = full[..first_end].to_vec();
        zeros.extend([0u8; 64]);
        fs::write(last_segment(d.path()), &zeros).unwrap();
        assert_eq!(Spool::open(c.clone()).unwrap().last_seq(), 4);
    }

    #[test]
    fn damage_before_the_tail_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 3)).unwrap();
        drop(s);
        let p = last_segment(d.path());
        let mut buf = fs::read(&p).unwrap();
        buf[HEADER + 12] ^= 0xff;
        fs::write(&p, &buf).unwrap();
        let err = Spool::open(cfg(d.path())).unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt(_)), "{err}");
        assert!(
            err.to_string().contains("damaged record at byte 8"),
            "{err}"
        );
    }

    #[test]
    fn torn_segment_header_is_repaired() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 2)).unwrap();
        drop(s);
        fs::write(d.path().join(segment_name(3)), &SEGMENT_MAGIC[..3]).unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(s.last_seq(), 2);
        s.append_batch(&mut batch("b", 1)).unwrap();
        assert_eq!(seqs(&s.unacked(0, 10).unwrap()), [1, 2, 3]);
    }

    #[test]
    fn quota_refuses_whole_batches_and_acks_make_room() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.quota_bytes = 2048;
        let mut s = Spool::open(c).unwrap();
        let mut appended = 0;
        let err = loop {
            match s.append_batch(&mut batch("q", 4)) {
                Ok(last) => appended = last,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, SpoolError::QuotaExceeded { quota: 2048, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("disk quota"), "{err}");
        assert!(s.bytes() <= 2048);
        assert!(s.would_exceed(2048));
        assert_eq!(s.last_seq(), appended, "a refused batch takes no numbers");
        // Nothing was dropped: every appended record is still there.
        assert_eq!(s.unacked(0, 1000).unwrap().len() as u64, appended);
        s.ack(appended).unwrap();
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.append_batch(&mut batch("r", 4)).unwrap(), appended + 4);
    }

    /// A batch read to ship must fit the control plane's limit on one
    /// `AuditBatch` message (32 MiB): 512 records of statements near the
    /// largest `max_sql_bytes` (256 KiB) are 128 MiB, which the control
    /// plane refused to decode, the stream failed, and the node sent the
    /// same batch again, forever: its audit trail stopped there.
    #[test]
    fn records_read_to_ship_fit_one_message() {
        use prost::Message;
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(SpoolConfig::new(d.path(), "node-a")).unwrap();
        let big = "x".repeat(260 << 10);
        let mut b: Vec<AuditRecord> = (0..140).map(|_| rec(&big)).collect();
        s.append_batch(&mut b).unwrap();
        s.take_base(0).unwrap();
        let batch = |records: Vec<AuditRecord>| proto::AuditBatch {
            node_id: "node-a".into(),
            records,
        };
        let mut from = 1;
        while from <= 140 {
            let got = s.unacked_to_ship(from, 512).unwrap();
            assert!(!got.is_empty());
            let n = got.len() as u64;
            assert!(
                batch(got).encoded_len() <= 32 << 20,
                "a batch of {n} records from {from} is over 32 MiB"
            );
            from += n;
        }
    }

    #[test]
    fn oversize_record_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.max_record_bytes = 100;
        let mut s = Spool::open(c).unwrap();
        let mut b = vec![rec(&"x".repeat(200))];
        assert!(matches!(
            s.append_batch(&mut b),
            Err(SpoolError::RecordTooLarge { max: 100, .. })
        ));
        assert_eq!((s.last_seq(), s.bytes()), (0, 0));
    }

    #[test]
    fn crash_between_ack_and_delete_removes_acked_segments_on_open() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 30)).unwrap();
        s.append_batch(&mut batch("b", 30)).unwrap();
        drop(s);
        write_ack(d.path(), 30).unwrap();
        let s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(s.recovery().removed_segments, 1);
        assert_eq!(
            seqs(&s.unacked(0, 100).unwrap()),
            (31..=60).collect::<Vec<_>>()
        );
    }

    /// Records as a core ring would carry them: encoded, with core and
    /// core_seq.
    fn raw_batch(core: u32, seqs: std::ops::RangeInclusive<u64>) -> (Vec<u8>, Vec<RawFrame>) {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for core_seq in seqs {
            let start = bytes.len();
            let mut r = rec(&format!("select {core}.{core_seq}"));
            let md = r.metadata.as_mut().unwrap();
            md.core = core;
            md.core_seq = core_seq;
            r.encode(&mut bytes).unwrap();
            frames.push(RawFrame {
                core,
                core_seq,
                start,
                end: bytes.len(),
            });
        }
        (bytes, frames)
    }

    #[test]
    fn raw_appends_are_numbered_and_remember_core_sequences() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 2)).unwrap();
        let (b0, f0) = raw_batch(0, 1..=5);
        let (b1, f1) = raw_batch(3, 7..=9);
        assert_eq!(s.append_raw(&b0, &f0).unwrap(), 7);
        assert_eq!(s.append_raw(&b1, &f1).unwrap(), 10);
        assert!(s.core_high_water().is_empty(), "counted at open only");
        drop(s);
        let s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(s.core_high_water(), &HashMap::from([(0u32, 5u64), (3, 9)]));
        let all = s.unacked(0, 100).unwrap();
        assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
        let md = all[7].metadata.as_ref().unwrap();
        assert_eq!(
            (md.id.as_str(), md.node_id.as_str(), md.core, md.core_seq),
            ("node-a-8", "node-a", 3, 7)
        );
        assert_eq!(sql(&all[7]), "select 3.7");
    }

    #[test]
    fn raw_appends_respect_the_quota() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.quota_bytes = 600;
        let mut s = Spool::open(c).unwrap();
        let (b, f) = raw_batch(0, 1..=4);
        s.append_raw(&b, &f).unwrap();
        let (b, f) = raw_batch(0, 5..=40);
        assert!(matches!(
            s.append_raw(&b, &f),
            Err(SpoolError::QuotaExceeded { .. })
        ));
        assert_eq!(s.last_seq(), 4);
    }

    #[test]
    fn skip_to_continues_numbering_only_when_nothing_waits() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 3)).unwrap();
        let err = s.skip_to(100).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::Conflict {
                    stored: 100,
                    last: 3,
                    pending: 3
                }
            ),
            "{err}"
        );
        s.ack(3).unwrap();
        s.skip_to(100).unwrap();
        assert_eq!(s.append_batch(&mut batch("b", 1)).unwrap(), 101);
        drop(s);
        let s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!((s.acked_through(), s.last_seq()), (100, 101));
        assert_eq!(seqs(&s.unacked(0, 10).unwrap()), [101]);
    }

    fn ids(recs: &[AuditRecord]) -> Vec<(String, String, u64)> {
        recs.iter()
            .map(|r| {
                let md = r.metadata.as_ref().unwrap();
                (md.node_id.clone(), md.id.clone(), md.sequence)
            })
            .collect()
    }

    fn named(dir: &Path, node: &str) -> SpoolConfig {
        let mut c = cfg(dir);
        c.node_id = node.into();
        c
    }

    #[test]
    fn a_new_spool_ships_nothing_until_placed_after_what_the_control_plane_stores() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        // Written before the first record: a restart must not take this
        // spool for one that shipped its own sequences.
        assert_eq!(read_base(d.path()).unwrap(), Some(ShipBase::Unbased));
        s.append_batch(&mut batch("a", 3)).unwrap();
        drop(s);
        let mut s = Spool::open(cfg(d.path())).unwrap();
        assert!(s.needs_base());
        assert_eq!(s.offset(), None);
        let err = s.unacked_to_ship(0, 10).unwrap_err();
        assert!(matches!(err, SpoolError::NotBased { .. }), "{err}");
        // The control plane stores 40 records of node-a (another spool's).
        assert_eq!(
            s.take_base(40).unwrap(),
            BaseChange::Rebased {
                previous: ShipBase::Unbased,
                offset: 40
            }
        );
        let shipped = s.unacked_to_ship(0, 10).unwrap();
        assert_eq!(
            ids(&shipped),
            [41, 42, 43].map(|q| ("node-a".to_string(), format!("node-a-{q}"), q))
        );
        assert_eq!(sql(&shipped[0]), "select a 0");
        // The spool's own numbering is unchanged.
        assert_eq!(seqs(&s.unacked(0, 10).unwrap()), [1, 2, 3]);
        drop(s);
        // Durable: a restart ships at the same place, and the next hello
        // answer is an acknowledgement.
        let mut s = Spool::open(cfg(d.path())).unwrap();
        assert!(!s.needs_base());
        assert_eq!(s.take_base(42).unwrap(), BaseChange::Kept { offset: 40 });
        s.ack(local_seq(42, 40)).unwrap();
        assert_eq!(seqs(&s.unacked_to_ship(0, 10).unwrap()), [43]);
        s.append_batch(&mut batch("b", 1)).unwrap();
        assert_eq!(seqs(&s.unacked_to_ship(0, 10).unwrap()), [43, 44]);
    }

    #[test]
    fn a_renamed_node_ships_what_waits_after_its_new_names_chain() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(named(d.path(), "old")).unwrap();
        s.take_base(0).unwrap();
        s.append_batch(&mut batch("a", 5)).unwrap();
        s.ack(2).unwrap();
        drop(s);
        let mut s = Spool::open(named(d.path(), "new")).unwrap();
        assert!(s.needs_base());
        assert!(matches!(
            s.unacked_to_ship(0, 10),
            Err(SpoolError::NotBased { .. })
        ));
        // "new" has 7 records already: 3, 4, 5 ship as 8, 9, 10.
        assert_eq!(
            s.take_base(7).unwrap(),
            BaseChange::Rebased {
                previous: ShipBase::Based {
                    node: "old".into(),
                    offset: 0
                },
                offset: 5
            }
        );
        assert_eq!(
            ids(&s.unacked_to_ship(0, 10).unwrap()),
            [8, 9, 10].map(|q| ("new".to_string(), format!("new-{q}"), q))
        );
        // Renamed back: placed again, in the old name's chain.
        drop(s);
        let mut s = Spool::open(named(d.path(), "old")).unwrap();
        s.ack(3).unwrap();
        assert!(s.needs_base());
        assert_eq!(
            s.take_base(2).unwrap(),
            BaseChange::Rebased {
                previous: ShipBase::Based {
                    node: "new".into(),
                    offset: 5
                },
                offset: -1
            }
        );
        assert_eq!(
            ids(&s.unacked_to_ship(0, 10).unwrap()),
            [3, 4].map(|q| ("old".to_string(), format!("old-{q}"), q))
        );
    }

    #[test]
    fn a_spool_from_before_base_files_ships_its_own_sequences_under_its_records_name() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 4)).unwrap();
        s.ack(1).unwrap();
        drop(s);
        fs::remove_file(d.path().join(BASE_FILE)).unwrap();
        let legacy = ShipBase::Based {
            node: "node-a".into(),
            offset: 0,
        };
        let mut s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(s.base(), &legacy);
        assert!(!s.needs_base());
        assert_eq!(read_base(d.path()).unwrap(), None, "open writes nothing");
        assert_eq!(seqs(&s.unacked_to_ship(0, 10).unwrap()), [2, 3, 4]);
        // Written down at the first hello answer.
        assert_eq!(s.take_base(1).unwrap(), BaseChange::Kept { offset: 0 });
        assert_eq!(read_base(d.path()).unwrap(), Some(legacy.clone()));
        drop(s);
        // Renamed: its records say which name it shipped under.
        fs::remove_file(d.path().join(BASE_FILE)).unwrap();
        let mut s = Spool::open(named(d.path(), "node-b")).unwrap();
        assert_eq!(s.base(), &legacy);
        assert!(s.needs_base());
        // (An older version appended under the new name: what waits still
        // starts with records of the name the chain is.)
        s.append_batch(&mut batch("b", 1)).unwrap();
        drop(s);
        assert!(!d.path().join(BASE_FILE).exists());
        let s = Spool::open(named(d.path(), "node-b")).unwrap();
        assert_eq!(s.base(), &legacy);
        drop(s);
        // Everything acknowledged and deleted: only ACK is left, so the
        // name it runs as is all there is to go by.
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.ack(5).unwrap();
        drop(s);
        assert!(!d.path().join(BASE_FILE).exists());
        let s = Spool::open(named(d.path(), "node-b")).unwrap();
        assert_eq!(
            s.base(),
            &ShipBase::Based {
                node: "node-b".into(),
                offset: 0
            }
        );
    }

    #[test]
    fn a_bad_base_file_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 2)).unwrap();
        s.take_base(10).unwrap();
        drop(s);
        let path = d.path().join(BASE_FILE);
        let good = fs::read(&path).unwrap();
        let bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\xff\xfe".to_vec(),
            b"garbage\n".to_vec(),
            format!("{BASE_MAGIC}\nstate maybe\nend\n").into_bytes(),
            format!("{BASE_MAGIC}\nstate based\nnode x\noffset ten\nend\n").into_bytes(),
            format!("{BASE_MAGIC}\nstate based\nnode \noffset 1\nend\n").into_bytes(),
            format!("{BASE_MAGIC}\nstate based\nnode x\noffset 99999999999999999999\nend\n")
                .into_bytes(),
            format!("{BASE_MAGIC}\nstate unbased\nend\nmore\n").into_bytes(),
            // Places the spool's records before the chain's start.
            format!("{BASE_MAGIC}\nstate based\nnode node-a\noffset -1\nend\n").into_bytes(),
        ];
        // Every cut of the good file short of its end line too.
        let cuts = (0..good.len() - 4).map(|n| good[..n].to_vec());
        for bytes in bad.into_iter().chain(cuts) {
            fs::write(&path, &bytes).unwrap();
            let err = Spool::open(cfg(d.path())).unwrap_err();
            assert!(matches!(err, SpoolError::Corrupt(_)), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{:?}: {err}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // A leftover BASE.tmp (a crash while writing) is not used.
        fs::write(&path, &good).unwrap();
        fs::write(d.path().join(BASE_TMP), b"half").unwrap();
        let s = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(s.offset(), Some(10));
        assert!(!d.path().join(BASE_TMP).exists());
    }

    #[test]
    fn an_absurd_durable_through_places_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path())).unwrap();
        s.append_batch(&mut batch("a", 2)).unwrap();
        let err = s.take_base(u64::MAX).unwrap_err();
        assert!(matches!(err, SpoolError::BaseOutOfRange { .. }), "{err}");
        assert!(s.needs_base());
        assert_eq!(read_base(d.path()).unwrap(), Some(ShipBase::Unbased));
        // An offset past i64 is refused the same way.
        let err = s.take_base(i64::MAX as u64 + 10).unwrap_err();
        assert!(matches!(err, SpoolError::BaseOutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("cannot be shipped after"), "{err}");
        s.take_base(1000).unwrap();
        assert_eq!(seqs(&s.unacked_to_ship(0, 10).unwrap()), [1001, 1002]);
    }

    #[test]
    fn chain_and_local_sequences_convert_without_overflow() {
        assert_eq!(chain_seq(1, 40), Some(41));
        assert_eq!(chain_seq(5, -5), None);
        assert_eq!(chain_seq(u64::MAX, 1), None);
        assert_eq!(local_seq(41, 40), 1);
        assert_eq!(local_seq(3, 40), 0);
        assert_eq!(local_seq(u64::MAX, i64::MIN), u64::MAX);
        assert_eq!(chain_pos(0, 40), 40);
        assert_eq!(chain_pos(3, -5), 0);
        assert_eq!(chain_pos(u64::MAX, i64::MAX), u64::MAX);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Append(usize),
            /// Ack this fraction (per mille) of what is pending.
            Ack(u16),
            Reopen,
            /// Cut this many bytes off the last segment, then reopen (a
            /// crash before the last fsync; only unacked data may go).
            Crash(u16),
            Unacked(u16, u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0usize..20).prop_map(Op::Append),
                2 => (0u16..=1000).prop_map(Op::Ack),
                1 => Just(Op::Reopen),
                1 => (1u16..200).prop_map(Op::Crash),
                2 => (0u16..=1000, 1u8..50).prop_map(|(a, b)| Op::Unacked(a, b)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
            #[test]
            fn spool_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
                let d = tempfile::tempdir().unwrap();
                let c = {
                    let mut c = cfg(d.path());
                    c.segment_bytes = 512;
                    c
                };
                let mut s = Spool::open(c.clone()).unwrap();
                // Model: sql text of every record ever appended (index = seq - 1).
                let mut model: Vec<String> = Vec::new();
                let mut acked = 0u64;
                let mut tag = 0;
                for op in ops {
                    match op {
                        Op::Append(n) => {
                            tag += 1;
                            let mut b = batch(&tag.to_string(), n);
                            let last = s.append_batch(&mut b).unwrap();
                            model.extend(b.iter().map(|r| sql(r).to_string()));
                            prop_assert_eq!(last, model.len() as u64);
                        }
                        Op::Ack(f) => {
                            let pending = model.len() as u64 - acked;
                            let to = acked + pending * u64::from(f) / 1000;
                            s.ack(to).unwrap();
                            acked = acked.max(to);
                        }
                        Op::Reopen => {
                            drop(s);
                            s = Spool::open(c.clone()).unwrap();
                        }
                        Op::Crash(cut) => {
                            drop(s);
                            // Only cut into unacked records of the last segment.
                            let unacked = Spool::open(c.clone()).unwrap().unacked(0, usize::MAX).unwrap();
                            if let (Some(first), false) = (unacked.first(), unacked.is_empty()) {
                                let p = last_segment(d.path());
                                let first_in_last: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                                let from = first.metadata.as_ref().unwrap().sequence.max(first_in_last);
                                let len = fs::metadata(&p).unwrap().len();
                                // Byte offset of record `from` in the last segment.
                                let mut off = HEADER as u64;
                                for r in unacked.iter().filter(|r| {
                                    let q = r.metadata.as_ref().unwrap().sequence;
                                    q >= first_in_last && q < from
                                }) {
                                    off += (HEADER + r.encoded_len()) as u64;
                                }
                                let new_len = len.saturating_sub(u64::from(cut)).max(off);
                                if new_len < len {
                                    let f = OpenOptions::new().write(true).open(&p).unwrap();
                                    f.set_len(new_len).unwrap();
                                }
                            }
                            s = Spool::open(c.clone()).unwrap();
                            prop_assert!(s.last_seq() >= acked);
                            model.truncate(s.last_seq() as usize);
                        }
                        Op::Unacked(f, max) => {
                            let span = model.len() as u64 + 2;
                            let from = span * u64::from(f) / 1000;
                            let got = s.unacked(from, usize::from(max)).unwrap();
                            let start = from.max(acked + 1);
                            let want: Vec<&str> = model
                                .iter()
                                .skip(start as usize - 1)
                                .take(usize::from(max))
                                .map(String::as_str)
                                .collect();
                            prop_assert_eq!(got.iter().map(sql).collect::<Vec<_>>(), want);
                            prop_assert_eq!(seqs(&got), (start..start + got.len() as u64).collect::<Vec<_>>());
                        }
                    }
                    prop_assert_eq!(s.last_seq(), model.len() as u64);
                    prop_assert_eq!(s.acked_through(), acked);
                    prop_assert_eq!(s.bytes(), dir_bytes(d.path()));
                }
            }
        }
    }
}
