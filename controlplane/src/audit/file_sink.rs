//! The embedded audit sink: append-only, hash-chained segment files per
//! node under one directory.
//!
//! ```text
//! dir/
//!   LOCK                              flock: one process per directory
//!   nodes/<node_id>/
//!     HEAD                            "<sequence> <hash hex>\n": the chain head,
//!                                     replaced atomically after every append
//!     00000000000000000001.log        segment; the name is its first sequence
//!
//! segment = MAGIC record*
//! record  = len:u32le crc32(payload):u32le payload[len]
//! payload = AuditRecord (prost) with prev_hash and hash set
//! ```
//!
//! An append writes the batch, `fdatasync`s it, then replaces `HEAD`; only
//! then is the batch acknowledged. `HEAD` is what makes a deleted tail
//! visible to [`verify`](AuditSink::verify). On open, the in-memory index
//! (each node's last sequence and hash) is rebuilt from the segments and
//! `HEAD`; a torn record at the end of a node's last segment that is past
//! `HEAD` (written, never acknowledged) is cut off with a warning. Damage
//! anywhere else is left in place as evidence for `verify`, and appends go
//! on in a new segment.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use proto::{AuditRecord, SearchRequest, SearchResponse, VerifyResponse};

use super::chain::{self, hex, unhex, GENESIS, HASH_LEN};
use super::sink::{
    limit_of, matches, new_records, sort_key, validate_node_id, AuditSink, Result, SinkError,
};
use super::verify::{verify_node_witnessed, verify_unseen, Head, StoredRecord};
use super::witness::Witness;
use crate::store::BoxFuture;

/// First bytes of every segment (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"SLAUDIT\x01";
/// The chain head file in each node directory.
pub const HEAD_FILE: &str = "HEAD";
const HEAD_TMP: &str = "HEAD.tmp";
const LOCK_FILE: &str = "LOCK";
const NODES_DIR: &str = "nodes";
const SEGMENT_EXT: &str = ".log";
const HEADER: usize = 8;
/// Default size at which a segment is closed.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The embedded sink. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    _lock: File,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, NodeState>,
    poisoned: bool,
}

struct NodeState {
    dir: PathBuf,
    last_seq: u64,
    last_hash: [u8; HASH_LEN],
    /// The segment appends go to, with its length; None: start a new one.
    active: Option<(File, PathBuf, u64)>,
}

impl FileSink {
    /// Opens (creating) the sink in `dir` with 64 MiB segments.
    pub async fn open(dir: &Path) -> Result<FileSink> {
        FileSink::open_with(dir, DEFAULT_SEGMENT_BYTES).await
    }

    /// Opens the sink with segments closed at `segment_bytes`.
    pub async fn open_with(dir: &Path, segment_bytes: u64) -> Result<FileSink> {
        let dir = dir.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(dir, segment_bytes))
            .await
            .map_err(|e| SinkError::Unavailable(format!("open task failed: {e}")))??;
        Ok(FileSink {
            inner: Arc::new(inner),
        })
    }

    /// The directory it writes to.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SinkError::Unavailable(format!("audit file task failed: {e}")))?
    }
}

impl Inner {
    fn open(dir: PathBuf, segment_bytes: u64) -> Result<Inner> {
        let nodes_dir = dir.join(NODES_DIR);
        fs::create_dir_all(&nodes_dir)
            .map_err(SinkError::io(format!("create {}", nodes_dir.display())))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(SinkError::io(format!("open {}", lock_path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(SinkError::Locked(dir.display().to_string()));
        }
        let mut state = State::default();
        for entry in fs::read_dir(&nodes_dir)
            .map_err(SinkError::io(format!("list {}", nodes_dir.display())))?
        {
            let entry = entry.map_err(SinkError::io(format!("list {}", nodes_dir.display())))?;
            let Some(node_id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_node_id(&node_id).is_err() || !entry.path().is_dir() {
                continue;
            }
            let node = open_node(&node_id, entry.path(), segment_bytes)?;
            state.nodes.insert(node_id, node);
        }
        Ok(Inner {
            dir,
            segment_bytes,
            state: Mutex::new(state),
            _lock: lock,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node_dirs(&self) -> Result<Vec<(String, PathBuf)>> {
        let nodes_dir = self.dir.join(NODES_DIR);
        let mut out = Vec::new();
        for entry in fs::read_dir(&nodes_dir)
            .map_err(SinkError::io(format!("list {}", nodes_dir.display())))?
        {
            let entry = entry.map_err(SinkError::io(format!("list {}", nodes_dir.display())))?;
            if let Some(name) = entry.file_name().to_str() {
                if validate_node_id(name).is_ok() && entry.path().is_dir() {
                    out.push((name.to_string(), entry.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn append(&self, node_id: &str, records: Vec<AuditRecord>) -> Result<u64> {
        validate_node_id(node_id)?;
        let mut guard = self.state();
        let state = &mut *guard;
        if state.poisoned {
            return Err(SinkError::Poisoned);
        }
        if !state.nodes.contains_key(node_id) {
            let dir = self.dir.join(NODES_DIR).join(node_id);
            fs::create_dir_all(&dir).map_err(SinkError::io(format!("create {}", dir.display())))?;
            sync_dir(&self.dir.join(NODES_DIR))?;
            state.nodes.insert(
                node_id.to_string(),
                NodeState {
                    dir,
                    last_seq: 0,
                    last_hash: GENESIS,
                    active: None,
                },
            );
        }
        let node = state.nodes.get_mut(node_id).expect("inserted above");
        let mut fresh = new_records(node_id, node.last_seq, records)?;
        if fresh.is_empty() {
            return Ok(node.last_seq);
        }
        let mut hash = node.last_hash;
        let mut buf = Vec::new();
        for rec in &mut fresh {
            hash = chain::link(&hash, rec);
            let start = buf.len();
            buf.extend_from_slice(&[0; HEADER]);
            rec.encode(&mut buf).expect("Vec grows");
            let len = (buf.len() - start - HEADER) as u32;
            let crc = crc32fast::hash(&buf[start + HEADER..]);
            buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let first = node.last_seq + 1;
        let last = node.last_seq + fresh.len() as u64;

        let full = matches!(&node.active, Some((_, _, len)) if *len >= self.segment_bytes);
        if node.active.is_none() || full {
            let path = node.dir.join(segment_name(first));
            let mut f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(SinkError::io(format!("create {}", path.display())))?;
            f.write_all(SEGMENT_MAGIC)
                .and_then(|()| f.sync_data())
                .map_err(SinkError::io(format!("write {}", path.display())))?;
            sync_dir(&node.dir)?;
            node.active = Some((f, path, HEADER as u64));
        }
        let (file, path, len) = node.active.as_mut().expect("active segment");
        let write = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = write {
            // Undo a partial write; if that fails too, stop accepting.
            if file.set_len(*len).is_err() {
                state.poisoned = true;
            }
            return Err(SinkError::io(format!("append to {}", path.display()))(e));
        }
        *len += buf.len() as u64;
        write_head(&node.dir, last, &hash)?;
        node.last_seq = last;
        node.last_hash = hash;
        Ok(last)
    }

    fn durable_through(&self, node_id: &str) -> u64 {
        self.state().nodes.get(node_id).map_or(0, |n| n.last_seq)
    }

    /// Every readable record of every node (or of `node`), unordered.
    fn all_records(&self, node: Option<&str>) -> Result<Vec<AuditRecord>> {
        let _state = self.state();
        let mut out = Vec::new();
        for (name, dir) in self.node_dirs()? {
            if node.is_some_and(|n| n != name) {
                continue;
            }
            for seg in segments(&dir)? {
                let scan = scan_segment(&seg)?;
                out.extend(
                    scan.entries
                        .into_iter()
                        .filter(|e| e.damage.is_empty())
                        .filter_map(|e| e.record.ok()),
                );
            }
        }
        Ok(out)
    }

    fn search(&self, f: &SearchRequest) -> Result<SearchResponse> {
        let node = (!f.node_id.is_empty()).then_some(f.node_id.as_str());
        let mut hits: Vec<AuditRecord> = self
            .all_records(node)?
            .into_iter()
            .filter(|r| matches(f, r))
            .collect();
        hits.sort_by_key(sort_key);
        let limit = limit_of(f);
        let truncated = hits.len() > limit;
        hits.truncate(limit);
        Ok(SearchResponse {
            records: hits,
            truncated,
        })
    }

    fn head(&self, node_id: &str) -> Option<Head> {
        let state = self.state();
        let n = state.nodes.get(node_id).filter(|n| n.last_seq > 0)?;
        Some(Head {
            sequence: n.last_seq,
            hash: n.last_hash.to_vec(),
        })
    }

    fn verify(
        &self,
        node: Option<&str>,
        witnesses: &BTreeMap<String, Witness>,
    ) -> Result<VerifyResponse> {
        let _state = self.state();
        let mut resp = VerifyResponse::default();
        let mut seen = Vec::new();
        for (name, dir) in self.node_dirs()? {
            if node.is_some_and(|n| n != name) {
                continue;
            }
            let head = read_head(&dir)?;
            let mut stored = Vec::new();
            for seg in segments(&dir)? {
                let scan = scan_segment(&seg)?;
                stored.extend(scan.entries);
                if let Some(pos) = scan.torn_at {
                    stored.push(StoredRecord {
                        sequence: None,
                        record: Err("damaged or incomplete record at the end of the segment".into()),
                        damage: vec![],
                        location: format!("{}, byte {pos}", seg.display()),
                    });
                }
            }
            let (findings, checked) =
                verify_node_witnessed(&name, stored, head.as_ref(), witnesses.get(&name));
            resp.findings.extend(findings);
            resp.records_checked += checked;
            resp.nodes_checked += 1;
            seen.push(name);
        }
        verify_unseen(witnesses, &seen, node, &mut resp);
        Ok(resp)
    }
}

impl AuditSink for FileSink {
    fn append<'a>(
        &'a self,
        node_id: &'a str,
        records: Vec<AuditRecord>,
    ) -> BoxFuture<'a, Result<u64>> {
        let node_id = node_id.to_string();
        Box::pin(self.blocking(move |i| i.append(&node_id, records)))
    }

    fn durable_through<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<u64>> {
        let node_id = node_id.to_string();
        Box::pin(self.blocking(move |i| Ok(i.durable_through(&node_id))))
    }

    fn search<'a>(&'a self, filter: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResponse>> {
        let filter = filter.clone();
        Box::pin(self.blocking(move |i| i.search(&filter)))
    }

    fn head<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<Option<Head>>> {
        let node_id = node_id.to_string();
        Box::pin(self.blocking(move |i| Ok(i.head(&node_id))))
    }

    fn verify_witnessed<'a>(
        &'a self,
        node_id: Option<&'a str>,
        witnesses: &'a BTreeMap<String, Witness>,
    ) -> BoxFuture<'a, Result<VerifyResponse>> {
        let node_id = node_id.map(str::to_owned);
        let witnesses = witnesses.clone();
        Box::pin(self.blocking(move |i| i.verify(node_id.as_deref(), &witnesses)))
    }

    fn records_for_session<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>>> {
        let filter = SearchRequest {
            session_id: session_id.to_string(),
            limit: u32::MAX,
            ..Default::default()
        };
        Box::pin(self.blocking(move |i| Ok(i.search(&filter)?.records)))
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_EXT}")
}

/// A node's segment files in sequence order.
fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(SinkError::io(format!("list {}", dir.display())))? {
        let entry = entry.map_err(SinkError::io(format!("list {}", dir.display())))?;
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_EXT)) else {
            continue;
        };
        if digits.len() == 20 {
            if let Ok(n) = digits.parse::<u64>() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// What reading one segment found.
struct Scan {
    /// Every whole record frame, damaged or not, in file order.
    entries: Vec<StoredRecord>,
    /// Offset where a torn tail starts (a short frame, or a damaged frame
    /// with only zeros after it).
    torn_at: Option<u64>,
    /// Offset of the end of the last undamaged frame.
    good_end: u64,
}

fn scan_segment(path: &Path) -> Result<Scan> {
    let buf = fs::read(path).map_err(SinkError::io(format!("read {}", path.display())))?;
    let mut scan = Scan {
        entries: Vec::new(),
        torn_at: None,
        good_end: HEADER as u64,
    };
    if buf.len() < HEADER || &buf[..HEADER] != SEGMENT_MAGIC {
        if SEGMENT_MAGIC.starts_with(&buf) {
            // Created but torn before its header was written.
            scan.torn_at = Some(0);
            scan.good_end = 0;
        } else {
            scan.entries.push(StoredRecord {
                sequence: None,
                record: Err("the segment header is damaged; its records cannot be read".into()),
                damage: vec![],
                location: path.display().to_string(),
            });
        }
        return Ok(scan);
    }
    let mut pos = HEADER;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let len = if rest.len() >= HEADER {
            u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize
        } else {
            usize::MAX
        };
        if len == usize::MAX || rest.len() - HEADER < len {
            scan.torn_at = Some(pos as u64);
            break;
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let payload = &rest[HEADER..HEADER + len];
        let end = pos + HEADER + len;
        let crc_ok = !payload.is_empty() && crc32fast::hash(payload) == crc;
        let decoded = AuditRecord::decode(payload).map_err(|e| e.to_string());
        if !crc_ok && buf[end..].iter().all(|&b| b == 0) {
            scan.torn_at = Some(pos as u64);
            break;
        }
        let mut damage = Vec::new();
        if !crc_ok {
            damage.push("checksum mismatch".to_string());
        } else {
            scan.good_end = end as u64;
        }
        scan.entries.push(StoredRecord {
            sequence: decoded
                .as_ref()
                .ok()
                .and_then(|r| r.metadata.as_ref())
                .map(|m| m.sequence),
            record: decoded,
            damage,
            location: format!("{}, byte {pos}", path.display()),
        });
        pos = end;
    }
    Ok(scan)
}

/// Rebuilds a node's index entry; cuts a torn, unacknowledged tail.
fn open_node(node_id: &str, dir: PathBuf, segment_bytes: u64) -> Result<NodeState> {
    let head = read_head(&dir)?;
    let head_seq = head.as_ref().map_or(0, |h| h.sequence);
    let segs = segments(&dir)?;
    // The last intact record, in file order.
    let mut last_good: Option<(u64, Vec<u8>)> = None;
    let mut last_scan = None;
    for seg in &segs {
        let scan = scan_segment(seg)?;
        for e in &scan.entries {
            if let (true, Ok(r)) = (e.damage.is_empty(), &e.record) {
                let seq = r.metadata.as_ref().map_or(0, |m| m.sequence);
                if seq > last_good.as_ref().map_or(0, |(s, _)| *s) {
                    last_good = Some((seq, r.hash.clone()));
                }
            }
        }
        last_scan = Some(scan);
    }
    let good_seq = last_good.as_ref().map_or(0, |(s, _)| *s);
    let mut active = None;
    if let (Some(path), Some(scan)) = (segs.last(), last_scan) {
        let tail_clean = match scan.torn_at {
            None => true,
            // Past HEAD: written but never acknowledged; safe to cut.
            Some(pos) if good_seq >= head_seq => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(SinkError::io(format!("open {}", path.display())))?;
                let keep = pos.max(scan.good_end);
                let cut = fs::metadata(path).map(|m| m.len()).unwrap_or(keep) - keep;
                f.set_len(keep)
                    .and_then(|()| f.sync_all())
                    .map_err(SinkError::io(format!("truncate {}", path.display())))?;
                if keep == 0 {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(SinkError::io(format!("open {}", path.display())))?;
                    f.write_all(SEGMENT_MAGIC)
                        .and_then(|()| f.sync_all())
                        .map_err(SinkError::io(format!("write {}", path.display())))?;
                }
                tracing::warn!(
                    node = node_id,
                    segment = %path.display(),
                    bytes = cut,
                    "audit sink: cut off a torn, unacknowledged record"
                );
                true
            }
            Some(pos) => {
                tracing::error!(
                    node = node_id,
                    segment = %path.display(),
                    offset = pos,
                    "audit sink: acknowledged records at the end of a segment are damaged; \
                     leaving them for `audit verify` and appending to a new segment"
                );
                false
            }
        };
        let len = fs::metadata(path)
            .map_err(SinkError::io(format!("stat {}", path.display())))?
            .len();
        if tail_clean && len < segment_bytes {
            let f = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(SinkError::io(format!("open {}", path.display())))?;
            active = Some((f, path.clone(), len));
        }
    }
    let (last_seq, last_hash) = match (&head, last_good) {
        (Some(h), Some((seq, _))) if seq < h.sequence => (h.sequence, h.hash.clone()),
        (_, Some((seq, hash))) => (seq, hash),
        (Some(h), None) => (h.sequence, h.hash.clone()),
        (None, None) => (0, GENESIS.to_vec()),
    };
    let last_hash: [u8; HASH_LEN] = last_hash.try_into().unwrap_or_else(|h: Vec<u8>| {
        tracing::error!(node = node_id, hash = %hex(&h), "audit sink: chain head hash has the wrong length");
        [0xff; HASH_LEN]
    });
    if last_seq > head_seq {
        // Records synced but HEAD not replaced before a crash.
        write_head(&dir, last_seq, &last_hash)?;
    }
    Ok(NodeState {
        dir,
        last_seq,
        last_hash,
        active,
    })
}

fn read_head(dir: &Path) -> Result<Option<Head>> {
    let path = dir.join(HEAD_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SinkError::io(format!("read {}", path.display()))(e)),
    };
    let mut parts = text.split_whitespace();
    let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
    let hash = parts.next().and_then(unhex);
    match (seq, hash) {
        (Some(sequence), Some(hash)) => Ok(Some(Head { sequence, hash })),
        _ => {
            tracing::error!(file = %path.display(), "audit sink: chain head file is unreadable");
            Ok(None)
        }
    }
}

fn write_head(dir: &Path, seq: u64, hash: &[u8]) -> Result<()> {
    let tmp = dir.join(HEAD_TMP);
    let mut f = File::create(&tmp).map_err(SinkError::io(format!("create {}", tmp.display())))?;
    f.write_all(format!("{seq} {}\n", hex(hash)).as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(SinkError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(HEAD_FILE))
        .map_err(SinkError::io(format!("rename {}", tmp.display())))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SinkError::io(format!("fsync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{AuditMetadata, AuditSession, AuditStatement, FindingKind, VerifyFinding};

    fn rec(node: &str, seq: u64) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                node_id: node.into(),
                sequence: seq,
                time_unix_nanos: 1_000 + seq as i64,
                ..Default::default()
            }),
            session: Some(AuditSession {
                id: format!("s{}", seq % 2),
                ..Default::default()
            }),
            statement: Some(AuditStatement {
                sql: format!("select {seq}"),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn recs(node: &str, r: std::ops::RangeInclusive<u64>) -> Vec<AuditRecord> {
        r.map(|s| rec(node, s)).collect()
    }

    fn kinds(f: &[VerifyFinding]) -> Vec<(FindingKind, u64, u64)> {
        f.iter()
            .map(|f| (f.kind(), f.first_sequence, f.last_sequence))
            .collect()
    }

    fn only_segment(sink: &FileSink, node: &str) -> PathBuf {
        let segs = segments(&sink.dir().join(NODES_DIR).join(node)).unwrap();
        assert_eq!(segs.len(), 1);
        segs[0].clone()
    }

    /// The record frames of a segment, header included.
    fn frames(path: &Path) -> Vec<Vec<u8>> {
        let buf = fs::read(path).unwrap();
        let mut pos = HEADER;
        let mut out = Vec::new();
        while pos < buf.len() {
            let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
            out.push(buf[pos..pos + HEADER + len].to_vec());
            pos += HEADER + len;
        }
        out
    }

    fn write_frames(path: &Path, frames: &[Vec<u8>]) {
        let mut buf = SEGMENT_MAGIC.to_vec();
        for f in frames {
            buf.extend_from_slice(f);
        }
        fs::write(path, buf).unwrap();
    }

    async fn sink_with(node: &str, n: u64) -> (tempfile::TempDir, FileSink) {
        let d = tempfile::tempdir().unwrap();
        let s = FileSink::open(d.path()).await.unwrap();
        assert_eq!(s.append(node, recs(node, 1..=n)).await.unwrap(), n);
        (d, s)
    }

    #[tokio::test]
    async fn append_is_idempotent_refuses_gaps_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = FileSink::open_with(d.path(), 300).await.unwrap();
        assert_eq!(s.durable_through("n1").await.unwrap(), 0);
        assert_eq!(s.append("n1", recs("n1", 1..=3)).await.unwrap(), 3);
        // Redelivery, whole or overlapping.
        assert_eq!(s.append("n1", recs("n1", 1..=3)).await.unwrap(), 3);
        assert_eq!(s.append("n1", recs("n1", 2..=5)).await.unwrap(), 5);
        let err = s.append("n1", recs("n1", 7..=8)).await.unwrap_err();
        assert!(
            matches!(
                err,
                SinkError::Gap {
                    expected: 6,
                    got: 7,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            s.append("../x", recs("../x", 1..=1)).await,
            Err(SinkError::InvalidArgument(_))
        ));
        assert_eq!(s.append("n2", recs("n2", 1..=2)).await.unwrap(), 2);
        // A second process cannot open the directory.
        assert!(matches!(
            FileSink::open(d.path()).await,
            Err(SinkError::Locked(_))
        ));
        drop(s);

        let s = FileSink::open_with(d.path(), 300).await.unwrap();
        assert_eq!(s.durable_through("n1").await.unwrap(), 5);
        assert_eq!(s.durable_through("n2").await.unwrap(), 2);
        assert_eq!(s.append("n1", recs("n1", 4..=9)).await.unwrap(), 9);
        let segs = segments(&d.path().join(NODES_DIR).join("n1")).unwrap();
        assert!(segs.len() > 1, "segments roll at 300 bytes");
        let v = s.verify(None).await.unwrap();
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!((v.nodes_checked, v.records_checked), (2, 11));

        // Stored records carry the chain.
        let all = s.search(&SearchRequest::default()).await.unwrap().records;
        assert_eq!(all.len(), 11);
        let n1: Vec<_> = all
            .iter()
            .filter(|r| r.metadata.as_ref().unwrap().node_id == "n1")
            .collect();
        assert_eq!(n1[0].prev_hash, GENESIS);
        for w in n1.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
    }

    #[tokio::test]
    async fn search_and_session_records() {
        let (_d, s) = sink_with("n", 6).await;
        let r = s
            .search(&SearchRequest {
                session_id: "s1".into(),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(r.truncated);
        let seqs = |v: &[AuditRecord]| {
            v.iter()
                .map(|r| r.metadata.as_ref().unwrap().sequence)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&r.records), [1, 3]);
        assert_eq!(seqs(&s.records_for_session("s0").await.unwrap()), [2, 4, 6]);
        let r = s
            .search(&SearchRequest {
                from_unix_nanos: 1_002,
                to_unix_nanos: 1_004,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(seqs(&r.records), [2, 3]);
    }

    #[tokio::test]
    async fn verify_names_an_edited_byte() {
        let (_d, s) = sink_with("n", 5).await;
        let seg = only_segment(&s, "n");
        let mut buf = fs::read(&seg).unwrap();
        let at = buf.windows(8).position(|w| w == b"select 2").unwrap();
        buf[at + 7] = b'9';
        fs::write(&seg, &buf).unwrap();
        let v = s.verify(None).await.unwrap();
        assert_eq!(kinds(&v.findings), [(FindingKind::Edited, 2, 2)]);
        assert!(v.findings[0].detail.contains("checksum mismatch"));

        // The same edit with the checksum fixed up is still named.
        let mut f = frames(&seg);
        let crc = crc32fast::hash(&f[1][HEADER..]);
        f[1][4..8].copy_from_slice(&crc.to_le_bytes());
        write_frames(&seg, &f);
        let v = s.verify(None).await.unwrap();
        assert_eq!(kinds(&v.findings), [(FindingKind::Edited, 2, 2)]);
        assert!(v.findings[0].detail.contains("content hashes to"));
    }

    #[tokio::test]
    async fn verify_names_deleted_and_reordered_records() {
        let (d, s) = sink_with("n", 6).await;
        let seg = only_segment(&s, "n");
        let orig = frames(&seg);

        let mut f = orig.clone();
        f.remove(2);
        write_frames(&seg, &f);
        assert_eq!(
            kinds(&s.verify(None).await.unwrap().findings),
            [(FindingKind::Gap, 3, 3)]
        );

        let mut f = orig.clone();
        f.truncate(4);
        write_frames(&seg, &f);
        assert_eq!(
            kinds(&s.verify(None).await.unwrap().findings),
            [(FindingKind::Deleted, 5, 6)]
        );

        let mut f = orig.clone();
        f.swap(3, 4);
        write_frames(&seg, &f);
        assert_eq!(
            kinds(&s.verify(None).await.unwrap().findings),
            [(FindingKind::OutOfOrder, 4, 4)]
        );

        // A deleted tail stays visible after a restart, and appends go on
        // from the head (the node does not resend acknowledged records).
        let mut f = orig;
        f.truncate(4);
        write_frames(&seg, &f);
        drop(s);
        let s = FileSink::open(d.path()).await.unwrap();
        assert_eq!(s.durable_through("n").await.unwrap(), 6);
        assert_eq!(s.append("n", recs("n", 7..=7)).await.unwrap(), 7);
        assert_eq!(
            kinds(&s.verify(None).await.unwrap().findings),
            [(FindingKind::Gap, 5, 6)]
        );
    }

    #[tokio::test]
    async fn torn_unacknowledged_tail_is_cut_on_open() {
        let (d, s) = sink_with("n", 3).await;
        let seg = only_segment(&s, "n");
        drop(s);
        let clean = fs::read(&seg).unwrap();
        // A record written past HEAD and torn by a crash.
        let mut f = frames(&seg);
        let mut extra = f[2].clone();
        extra.truncate(extra.len() / 2);
        f.push(extra);
        write_frames(&seg, &f);
        let s = FileSink::open(d.path()).await.unwrap();
        assert_eq!(fs::read(&seg).unwrap(), clean);
        assert_eq!(s.append("n", recs("n", 4..=4)).await.unwrap(), 4);
        assert!(s.verify(None).await.unwrap().findings.is_empty());
    }

    #[tokio::test]
    async fn damaged_acknowledged_tail_is_kept_as_evidence() {
        let (d, s) = sink_with("n", 3).await;
        let seg = only_segment(&s, "n");
        drop(s);
        let mut buf = fs::read(&seg).unwrap();
        let n = buf.len();
        buf[n - 1] ^= 0x55;
        fs::write(&seg, &buf).unwrap();
        let s = FileSink::open(d.path()).await.unwrap();
        assert_eq!(fs::read(&seg).unwrap(), buf, "evidence is not cut off");
        assert_eq!(s.durable_through("n").await.unwrap(), 3);
        assert_eq!(s.append("n", recs("n", 4..=4)).await.unwrap(), 4);
        let f = s.verify(None).await.unwrap().findings;
        assert_eq!(kinds(&f)[0], (FindingKind::Edited, 3, 3), "{f:?}");
    }
}
