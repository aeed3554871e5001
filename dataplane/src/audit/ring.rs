//! Per-core audit rings: one memory-mapped file per data core, in the spool
//! directory (`core-<n>.ring`).
//!
//! A data core appends each audit record here, with plain memory copies and
//! one release store, before the bytes that complete the statement go to
//! the client. The file is mapped `MAP_SHARED`, so what a core has written
//! lives in the kernel's page cache, not in the process: it survives the
//! process being killed (SIGKILL, a panic, an OOM kill) and is found again
//! by the next start. No syscall, lock or allocation happens per record.
//! (It does not survive a power loss or a kernel crash: only what the
//! control thread has moved into the spool and synced does.)
//!
//! ```text
//! file   = header[4096] data[capacity]
//! header = magic "SLRING\0\1"   @0
//!          capacity u64         @8    bytes of the data area
//!          core u32             @16
//!          write u64            @64   producer: end of the last published frame
//!          next_seq u64         @72   producer: core_seq of the next frame
//!          read u64             @128  consumer: end of the last frame moved to the spool
//! frame  = len:u32le crc32(seq ‖ payload):u32le seq:u64le payload[len]
//! ```
//!
//! `write` and `read` are byte positions that only grow; the byte for
//! position `p` is at `data[p % capacity]`, and a frame may wrap around the
//! end of the data area. One producer (the core's thread) and one consumer
//! (the control side) per ring, single-producer single-consumer:
//!
//! * the producer copies a frame into `[write, write + size)`, which it has
//!   checked is free (`write + size - read <= capacity`, `read` loaded with
//!   Acquire, so the consumer's reads of that space happened before), then
//!   publishes it with a Release store of `write`;
//! * the consumer Acquire-loads `write`, reads frames up to it, moves them
//!   into the spool, and only then Release-stores `read`, handing the space
//!   back.
//!
//! Neither side ever touches bytes the other may be writing, so the data
//! area is only accessed through raw pointers, never through a Rust
//! reference that would cover the other side's bytes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// SQLSTATE sent to a client whose statement is refused because audit
/// records cannot be kept (`53100` disk_full).
pub const AUDIT_UNAVAILABLE_SQLSTATE: &str = "53100";

/// First bytes of a ring file (format version 1).
pub const RING_MAGIC: &[u8; 8] = b"SLRING\x00\x01";
/// Bytes before the data area (one page).
pub const RING_HEADER_BYTES: usize = 4096;
/// Bytes in front of every payload.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Smallest data area accepted.
pub const MIN_RING_BYTES: u64 = 64 * 1024;
/// Largest data area accepted.
pub const MAX_RING_BYTES: u64 = 1 << 30;

const OFF_CAPACITY: usize = 8;
const OFF_CORE: usize = 16;
const OFF_WRITE: usize = 64;
const OFF_NEXT_SEQ: usize = 72;
const OFF_READ: usize = 128;

/// What to do with a statement when its audit record cannot be kept (ring
/// full, spool at its quota or unwritable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Refuse the statement with [`AUDIT_UNAVAILABLE_SQLSTATE`] (default:
    /// nothing runs unaudited).
    #[default]
    FailClosed,
    /// Run it anyway; the lost record is counted and logged.
    FailOpen,
}

/// Written by the control side, read by every core: whether the spool
/// takes records right now. Cores read it with one relaxed load before
/// forwarding a statement.
#[derive(Debug, Default)]
pub struct AuditGate {
    closed: AtomicBool,
}

impl AuditGate {
    /// Whether the spool refuses records (at its quota, or unwritable).
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Set by the control side after each spool append.
    pub fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::Relaxed);
    }

    /// The message a refused client gets.
    pub fn refusal_message() -> &'static str {
        "audit records cannot be stored right now (the audit spool is at its disk quota \
         or cannot be written, or the audit ring is full): new statements are refused \
         until the backlog drains"
    }
}

/// The ring could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("audit ring {path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file is not a ring, or its positions or a frame are impossible.
    #[error("audit ring {path} is damaged: {what}")]
    Corrupt { path: PathBuf, what: String },
}

/// One shared mapping of a ring file.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    capacity: u64,
    core: u32,
    path: PathBuf,
    _file: File,
}

// SAFETY: the mapping is plain shared memory; the pointer is only used
// through `atomic` (header words, atomics only) and `copy_in`/`copy_out`
// (data area), whose callers follow the single-producer single-consumer
// protocol of the module docs, so the threads holding it never race on a
// byte. munmap in Drop runs once, when the last Arc goes.
unsafe impl Send for Mapping {}
// SAFETY: see Send; shared access is limited to atomics and disjoint ranges.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; no reference into
        // the mapping outlives `self` (all accessors borrow `self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl Mapping {
    fn io(path: &Path, context: &'static str) -> impl FnOnce(io::Error) -> RingError {
        let path = path.to_path_buf();
        move |source| RingError::Io {
            path,
            context,
            source,
        }
    }

    fn map(file: File, path: &Path) -> Result<Mapping, RingError> {
        let len = file.metadata().map_err(Self::io(path, "stat"))?.len();
        let corrupt = |what: String| RingError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        if len < (RING_HEADER_BYTES as u64) + MIN_RING_BYTES
            || len > (RING_HEADER_BYTES as u64) + MAX_RING_BYTES
        {
            return Err(corrupt(format!("file size {len} is not a ring")));
        }
        // SAFETY: mapping a regular file we opened read-write, length = its
        // size; MAP_SHARED so stores reach the page cache. MAP_POPULATE
        // faults the pages in now, not on a data core's first write.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Self::io(path, "mmap")(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null on success");
        let mut m = Mapping {
            ptr,
            len: len as usize,
            capacity: 0,
            core: 0,
            path: path.to_path_buf(),
            _file: file,
        };
        let mut magic = [0u8; 8];
        // SAFETY: the header page is inside the mapping (len checked above).
        unsafe { std::ptr::copy_nonoverlapping(m.ptr.as_ptr(), magic.as_mut_ptr(), 8) };
        if &magic != RING_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        m.capacity = m.atomic(OFF_CAPACITY).load(Ordering::Relaxed);
        m.core = m.atomic(OFF_CORE).load(Ordering::Relaxed) as u32;
        if m.capacity + RING_HEADER_BYTES as u64 != len {
            return Err(corrupt(format!(
                "header says {} data bytes, file has {}",
                m.capacity,
                len - RING_HEADER_BYTES as u64
            )));
        }
        let (w, r) = (
            m.atomic(OFF_WRITE).load(Ordering::Acquire),
            m.atomic(OFF_READ).load(Ordering::Acquire),
        );
        if r > w || w - r > m.capacity {
            return Err(corrupt(format!(
                "positions read {r} write {w} for capacity {}",
                m.capacity
            )));
        }
        Ok(m)
    }

    /// One 8-byte header word, as an atomic.
    fn atomic(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= RING_HEADER_BYTES);
        // SAFETY: `off` is one of the OFF_* constants: 8-aligned inside the
        // first page of a page-aligned mapping, so the pointer is valid and
        // aligned for AtomicU64 for as long as `self` lives. Every access to
        // these words, from any thread or process, is atomic.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() }
    }

    /// Copy `src` into the data area at ring position `pos` (wrapping).
    ///
    /// # Safety
    /// `[pos, pos + src.len())` must be space the caller owns under the ring
    /// protocol (the producer, between `write` and `read + capacity`), and
    /// `src.len() <= capacity`.
    unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let at = (pos % self.capacity) as usize;
        let first = src.len().min(self.capacity as usize - at);
        let data = self.ptr.as_ptr().add(RING_HEADER_BYTES);
        std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(at), first);
        std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
    }

    /// Copy from the data area at ring position `pos` (wrapping) into `dst`.
    ///
    /// # Safety
    /// `[pos, pos + dst.len())` must be published frames the caller owns
    /// under the ring protocol (the consumer, between `read` and `write`),
    /// and `dst.len() <= capacity`.
    unsafe fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        self.copy_out_raw(pos, dst.as_mut_ptr(), dst.len());
    }

    /// As [`Mapping::copy_out`], into `len` bytes at `dst` that need not be
    /// initialized.
    ///
    /// # Safety
    /// As for `copy_out`, and `dst` must be valid for `len` bytes of writes.
    unsafe fn copy_out_raw(&self, pos: u64, dst: *mut u8, len: usize) {
        let at = (pos % self.capacity) as usize;
        let first = len.min(self.capacity as usize - at);
        let data = self.ptr.as_ptr().add(RING_HEADER_BYTES);
        std::ptr::copy_nonoverlapping(data.add(at), dst, first);
        std::ptr::copy_nonoverlapping(data, dst.add(first), len - first);
    }
}

/// Path of core `core`'s ring in `dir`.
pub fn ring_path(dir: &Path, core: u32) -> PathBuf {
    dir.join(format!("core-{core}.ring"))
}

/// The core number in a ring file name, if it is one.
pub fn parse_ring_name(name: &str) -> Option<u32> {
    let n = name.strip_prefix("core-")?.strip_suffix(".ring")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// A ring file, opened. Split it into its producer and consumer.
pub struct RingFile {
    map: Arc<Mapping>,
}

impl RingFile {
    /// Open the ring at `path`, or create it with `capacity` data bytes for
    /// `core` if there is none. An existing ring keeps its own capacity
    /// (see [`RingFile::capacity`]) and contents.
    pub fn open_or_create(path: &Path, core: u32, capacity: u64) -> Result<RingFile, RingError> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => Ok(RingFile {
                map: Arc::new(Mapping::map(f, path)?),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create(path, core, capacity, 1),
            Err(e) => Err(Mapping::io(path, "open")(e)),
        }
    }

    /// Create (replacing any file there) an empty ring whose first frame
    /// will carry `next_seq`.
    pub fn create(
        path: &Path,
        core: u32,
        capacity: u64,
        next_seq: u64,
    ) -> Result<RingFile, RingError> {
        assert!(
            (MIN_RING_BYTES..=MAX_RING_BYTES).contains(&capacity),
            "ring capacity out of range"
        );
        let tmp = path.with_extension("ring.tmp");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(Mapping::io(&tmp, "create"))?;
        let len = RING_HEADER_BYTES as u64 + capacity;
        // Allocate every block now: writing into a hole of a sparse file on
        // a full disk would kill the process with SIGBUS.
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
        if rc != 0 {
            return Err(Mapping::io(&tmp, "allocate")(io::Error::from_raw_os_error(
                rc,
            )));
        }
        let mut header = vec![0u8; RING_HEADER_BYTES];
        header[..8].copy_from_slice(RING_MAGIC);
        header[OFF_CAPACITY..OFF_CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
        header[OFF_CORE..OFF_CORE + 8].copy_from_slice(&u64::from(core).to_le_bytes());
        header[OFF_NEXT_SEQ..OFF_NEXT_SEQ + 8].copy_from_slice(&next_seq.max(1).to_le_bytes());
        use std::os::unix::fs::FileExt;
        f.write_all_at(&header, 0)
            .and_then(|()| f.sync_all())
            .map_err(Mapping::io(&tmp, "write header"))?;
        fs::rename(&tmp, path).map_err(Mapping::io(path, "rename"))?;
        if let Some(dir) = path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(RingFile {
            map: Arc::new(Mapping::map(f, path)?),
        })
    }

    /// Data bytes of this ring.
    pub fn capacity(&self) -> u64 {
        self.map.capacity
    }

    /// The core the ring was made for.
    pub fn core(&self) -> u32 {
        self.map.core
    }

    pub fn path(&self) -> &Path {
        &self.map.path
    }

    /// Published bytes not yet consumed.
    pub fn depth(&self) -> u64 {
        self.map.atomic(OFF_WRITE).load(Ordering::Acquire)
            - self.map.atomic(OFF_READ).load(Ordering::Acquire)
    }

    /// `core_seq` the next frame will carry.
    pub fn next_seq(&self) -> u64 {
        self.map.atomic(OFF_NEXT_SEQ).load(Ordering::Acquire)
    }

    /// Raise the next `core_seq` to at least `seq` (at startup, before the
    /// producer exists: sequences must keep growing past what the spool
    /// has seen, even when a ring file was replaced).
    pub fn raise_next_seq(&self, seq: u64) {
        self.map
            .atomic(OFF_NEXT_SEQ)
            .fetch_max(seq, Ordering::AcqRel);
    }

    /// The two ends. Call once per opening: there must be one producer and
    /// one consumer per ring at a time.
    pub fn split(self) -> (RingProducer, RingConsumer) {
        let m = &self.map;
        let producer = RingProducer {
            map: m.clone(),
            capacity: m.capacity,
            write: m.atomic(OFF_WRITE).load(Ordering::Acquire),
            next_seq: m.atomic(OFF_NEXT_SEQ).load(Ordering::Acquire).max(1),
            read: m.atomic(OFF_READ).load(Ordering::Acquire),
        };
        let consumer = RingConsumer {
            map: m.clone(),
            read: m.atomic(OFF_READ).load(Ordering::Acquire),
        };
        (producer, consumer)
    }

    /// Only the consumer (a ring left by a core that no longer exists).
    pub fn into_consumer(self) -> RingConsumer {
        self.split().1
    }
}

/// The ring had no room for the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

/// A data core's end. `Send`, so it can be moved to its worker at start;
/// there it is used from that one thread only.
pub struct RingProducer {
    map: Arc<Mapping>,
    capacity: u64,
    /// Our copy of the header's `write` (only we store it).
    write: u64,
    next_seq: u64,
    /// Last `read` loaded from the header.
    read: u64,
}

impl RingProducer {
    /// `core_seq` the next pushed frame will carry (put it in the record's
    /// metadata before encoding it).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes free now (one Acquire load of the consumer's position).
    pub fn free(&mut self) -> u64 {
        self.read = self.map.atomic(OFF_READ).load(Ordering::Acquire);
        self.capacity - (self.write - self.read)
    }

    /// Largest payload one frame can carry.
    pub fn max_payload(&self) -> usize {
        (self.capacity as usize / 4).min(u32::MAX as usize) - FRAME_HEADER_BYTES
    }

    /// Append one frame carrying `payload` and [`RingProducer::next_seq`],
    /// and publish it. Returns its `core_seq`. Copies the payload into a
    /// frame first; the data path uses [`RingProducer::push_framed`].
    pub fn push(&mut self, payload: &[u8]) -> Result<u64, RingFull> {
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        frame.resize(FRAME_HEADER_BYTES, 0);
        frame.extend_from_slice(payload);
        self.push_framed(&mut frame)
    }

    /// As [`RingProducer::push`], for a payload already in place behind
    /// [`FRAME_HEADER_BYTES`] bytes of room: the header is filled in there,
    /// the checksum taken in one pass and the frame copied in one piece. No
    /// syscall, lock or allocation.
    pub fn push_framed(&mut self, frame: &mut [u8]) -> Result<u64, RingFull> {
        assert!(
            frame.len() >= FRAME_HEADER_BYTES,
            "no room for the frame header"
        );
        let len = frame.len() - FRAME_HEADER_BYTES;
        if len > self.max_payload() {
            return Err(RingFull);
        }
        let size = frame.len() as u64;
        if self.write + size - self.read > self.capacity && self.free() < size {
            return Err(RingFull);
        }
        let seq = self.next_seq;
        frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
        frame[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        // SAFETY: `[write, write + size)` is free: write + size - read <=
        // capacity with `read` Acquire-loaded, so the consumer is done with
        // it; only this producer writes there until `write` is published.
        unsafe {
            self.map.copy_in(self.write, frame);
        }
        self.write += size;
        self.next_seq += 1;
        self.map
            .atomic(OFF_NEXT_SEQ)
            .store(self.next_seq, Ordering::Relaxed);
        // Publish: the consumer's Acquire load of `write` sees the bytes.
        self.map
            .atomic(OFF_WRITE)
            .store(self.write, Ordering::Release);
        Ok(seq)
    }
}

/// One frame read by the consumer: where its payload sits in the caller's
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    pub core: u32,
    pub core_seq: u64,
    pub start: usize,
    pub end: usize,
}

/// The control side's end.
pub struct RingConsumer {
    map: Arc<Mapping>,
    /// Committed position (what the header's `read` holds).
    read: u64,
}

impl RingConsumer {
    pub fn core(&self) -> u32 {
        self.map.core
    }

    pub fn path(&self) -> &Path {
        &self.map.path
    }

    pub fn capacity(&self) -> u64 {
        self.map.capacity
    }

    /// Position up to which frames have been moved out.
    pub fn committed(&self) -> u64 {
        self.read
    }

    /// Position up to which the producer has published.
    pub fn published(&self) -> u64 {
        self.map.atomic(OFF_WRITE).load(Ordering::Acquire)
    }

    /// Published bytes not yet committed.
    pub fn depth(&self) -> u64 {
        self.published() - self.read
    }

    /// Where the frame at `pos` (published, not committed) ends, by its
    /// length field, when that length is one a frame can have and the frame
    /// ends at or before the published end: where the next frame would
    /// start if the one at `pos` is damaged past its length (a payload
    /// byte, its checksum or sequence).
    pub fn frame_end(&self, pos: u64) -> Option<u64> {
        let write = self.published();
        if pos < self.read
            || write - pos < FRAME_HEADER_BYTES as u64
            || write - self.read > self.map.capacity
        {
            return None;
        }
        let mut len = [0u8; 4];
        // SAFETY: `[pos, pos + 4)` is published and not committed (as in
        // `read_from`).
        unsafe { self.map.copy_out(pos, &mut len) };
        let size = FRAME_HEADER_BYTES as u64 + u64::from(u32::from_le_bytes(len));
        (size <= self.map.capacity / 4 && size <= write - pos).then_some(pos + size)
    }

    /// Copy frames published after `from` (a position at or after the
    /// committed one) into `out`, up to about `max_bytes`, noting each in
    /// `frames`. Returns the position after the last frame read; nothing is
    /// handed back to the producer until [`RingConsumer::commit`].
    pub fn read_from(
        &self,
        from: u64,
        max_bytes: usize,
        out: &mut Vec<u8>,
        frames: &mut Vec<RawFrame>,
    ) -> Result<u64, RingError> {
        let write = self.published();
        let m = &self.map;
        let corrupt = |what: String| RingError::Corrupt {
            path: m.path.clone(),
            what,
        };
        if from < self.read || from > write {
            return Err(corrupt(format!(
                "read position {from} outside [{}, {write}]",
                self.read
            )));
        }
        // A write position more than a lap ahead (a damaged header) would
        // make the copies below read outside the data area.
        if write - self.read > m.capacity {
            return Err(corrupt(format!(
                "write position {write} is more than the capacity {} past the read position {}",
                m.capacity, self.read
            )));
        }
        let mut pos = from;
        let mut taken = 0usize;
        // Made once: `Hasher::new` checks the CPU's features each time.
        let hasher = crc32fast::Hasher::new();
        while pos < write && taken < max_bytes.max(1) {
            if write - pos < FRAME_HEADER_BYTES as u64 {
                return Err(corrupt(format!("short frame header at {pos}")));
            }
            let mut head = [0u8; FRAME_HEADER_BYTES];
            // SAFETY: `[pos, write)` is published and not yet committed:
            // the producer does not write there (it never writes past
            // `read + capacity`, and `read` <= `pos`).
            unsafe { m.copy_out(pos, &mut head) };
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
            let seq = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
            let size = FRAME_HEADER_BYTES as u64 + len;
            if size > m.capacity / 4 {
                return Err(corrupt(format!(
                    "frame at {pos} of {len} bytes is larger than a frame can be"
                )));
            }
            if size > write - pos {
                return Err(corrupt(format!(
                    "frame at {pos} of {len} bytes runs past the published end {write}"
                )));
            }
            let start = out.len();
            out.reserve(len as usize);
            // SAFETY: as above, the whole frame is inside `[pos, write)`;
            // `out` has room for `len` more bytes, all written before
            // `set_len` makes them part of it.
            unsafe {
                m.copy_out_raw(
                    pos + FRAME_HEADER_BYTES as u64,
                    out.as_mut_ptr().add(start),
                    len as usize,
                );
                out.set_len(start + len as usize);
            }
            let mut h = hasher.clone();
            h.update(&seq.to_le_bytes());
            h.update(&out[start..]);
            if h.finalize() != crc {
                out.truncate(start);
                return Err(corrupt(format!("checksum mismatch in frame at {pos}")));
            }
            frames.push(RawFrame {
                core: m.core,
                core_seq: seq,
                start,
                end: out.len(),
            });
            pos += size;
            taken += size as usize;
        }
        Ok(pos)
    }

    /// Hand everything before `pos` (a position returned by
    /// [`RingConsumer::read_from`]) back to the producer.
    pub fn commit(&mut self, pos: u64) {
        debug_assert!(pos >= self.read && pos <= self.published());
        self.read = pos;
        // Release: our reads of the frames happen before the producer may
        // overwrite them.
        self.map.atomic(OFF_READ).store(pos, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(core_seq: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (core_seq as usize * 31 + i) as u8)
            .collect()
    }

    fn drain(c: &mut RingConsumer) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut frames = Vec::new();
        let pos = c
            .read_from(c.committed(), usize::MAX, &mut out, &mut frames)
            .unwrap();
        c.commit(pos);
        frames
            .iter()
            .map(|f| (f.core_seq, out[f.start..f.end].to_vec()))
            .collect()
    }

    #[test]
    fn ring_names() {
        assert_eq!(parse_ring_name("core-12.ring"), Some(12));
        assert_eq!(parse_ring_name("core-.ring"), None);
        assert_eq!(parse_ring_name("core-1.ring.tmp"), None);
        assert_eq!(
            ring_path(Path::new("/x"), 3),
            PathBuf::from("/x/core-3.ring")
        );
    }

    #[test]
    fn push_then_read_wraps_and_fills() {
        let d = tempfile::tempdir().unwrap();
        let f = RingFile::open_or_create(&d.path().join("core-0.ring"), 0, MIN_RING_BYTES).unwrap();
        let (mut p, mut c) = f.split();
        assert_eq!(p.free(), MIN_RING_BYTES);
        // Odd sizes, so frames straddle the end of the data area.
        let mut expect = Vec::new();
        let mut seq = 1;
        for round in 0..40 {
            loop {
                let body = payload(seq, 100 + (seq as usize * 7) % 900);
                match p.push(&body) {
                    Ok(s) => {
                        assert_eq!(s, seq);
                        expect.push((seq, body));
                        seq += 1;
                    }
                    Err(RingFull) => break,
                }
            }
            assert!(p.free() < 1100, "round {round}: full means little room");
            let got = drain(&mut c);
            assert_eq!(got, expect, "round {round}");
            expect.clear();
            assert_eq!(c.depth(), 0);
        }
        assert!(seq > 1000);
    }

    #[test]
    fn reopen_keeps_unconsumed_frames_and_sequence() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("core-2.ring");
        {
            let f = RingFile::open_or_create(&path, 2, MIN_RING_BYTES).unwrap();
            let (mut p, mut c) = f.split();
            for i in 1..=10 {
                p.push(&payload(i, 50)).unwrap();
            }
            // Consume 4 of them.
            let mut out = Vec::new();
            let mut frames = Vec::new();
            let end = c
                .read_from(c.committed(), 1, &mut out, &mut frames)
                .unwrap();
            assert_eq!(frames.len(), 1);
            c.commit(end);
            let end = c.read_from(end, 3 * 66, &mut out, &mut frames).unwrap();
            assert_eq!(frames.len(), 4);
            c.commit(end);
        }
        let f = RingFile::open_or_create(&path, 9, 2 * MIN_RING_BYTES).unwrap();
        assert_eq!(
            (f.core(), f.capacity(), f.next_seq()),
            (2, MIN_RING_BYTES, 11)
        );
        f.raise_next_seq(5);
        assert_eq!(f.next_seq(), 11);
        f.raise_next_seq(20);
        let (mut p, mut c) = f.split();
        let got = drain(&mut c);
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (5..=10).collect::<Vec<_>>()
        );
        assert_eq!(got[0].1, payload(5, 50));
        assert_eq!(p.push(b"x").unwrap(), 20);
    }

    #[test]
    fn damaged_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("core-0.ring");
        let f = RingFile::open_or_create(&path, 0, MIN_RING_BYTES).unwrap();
        let (mut p, _c) = f.split();
        p.push(&payload(1, 300)).unwrap();
        drop(p);
        drop(_c);
        // What the consumer of a ring file holding `bytes` reports.
        let read_err = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            let c = RingFile::open_or_create(&path, 0, MIN_RING_BYTES)
                .unwrap()
                .into_consumer();
            c.read_from(0, usize::MAX, &mut Vec::new(), &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        // What opening a ring file holding `bytes` reports.
        let open_err = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            RingFile::open_or_create(&path, 0, MIN_RING_BYTES)
                .err()
                .unwrap()
                .to_string()
        };
        // A flipped byte inside the payload: the checksum catches it.
        let mut bytes = fs::read(&path).unwrap();
        bytes[RING_HEADER_BYTES + FRAME_HEADER_BYTES + 10] ^= 1;
        let err = read_err(&bytes);
        assert!(err.contains("checksum"), "{err}");
        bytes[RING_HEADER_BYTES + FRAME_HEADER_BYTES + 10] ^= 1;
        // A frame length no frame can have (it would read past the data
        // area).
        let mut long = bytes.clone();
        long[RING_HEADER_BYTES..RING_HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_err(&long);
        assert!(err.contains("larger than a frame"), "{err}");
        // A write position more than a lap ahead: refused at opening (and
        // by `read_from`, should the header change while running).
        let mut ahead = bytes.clone();
        ahead[OFF_WRITE..OFF_WRITE + 8].copy_from_slice(&(3 * MIN_RING_BYTES).to_le_bytes());
        let err = open_err(&ahead);
        assert!(err.contains("positions"), "{err}");
        // Bad magic.
        bytes[0] = b'X';
        let err = open_err(&bytes);
        assert!(err.contains("magic"), "{err}");
        // Truncated.
        fs::write(&path, &bytes[..100]).unwrap();
        assert!(RingFile::open_or_create(&path, 0, MIN_RING_BYTES).is_err());
    }

    /// A frame damaged past its length field ends where that length says,
    /// the published end included: the last frame published too, so a
    /// consumer skips it alone rather than taking "the rest of the ring"
    /// (which, with the core still writing, holds frames published since).
    #[test]
    fn a_damaged_frame_ends_where_its_length_says_even_the_last_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("core-0.ring");
        let (mut p, c) = RingFile::open_or_create(&path, 0, MIN_RING_BYTES)
            .unwrap()
            .split();
        p.push(&payload(1, 100)).unwrap();
        p.push(&payload(2, 50)).unwrap();
        let second = (FRAME_HEADER_BYTES + 100) as u64;
        let end = second + (FRAME_HEADER_BYTES + 50) as u64;
        assert_eq!(c.frame_end(0), Some(second));
        assert_eq!(c.frame_end(second), Some(end), "the last frame");
        assert_eq!(c.frame_end(end), None, "nothing published there");
    }

    #[test]
    fn producer_and_consumer_threads_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let f = RingFile::open_or_create(&d.path().join("core-0.ring"), 0, MIN_RING_BYTES).unwrap();
        let (mut p, mut c) = f.split();
        let total = 50_000u64;
        let producer = std::thread::spawn(move || {
            let mut full = 0u64;
            for i in 1..=total {
                let body = payload(i, (i % 200) as usize + 1);
                while p.push(&body).is_err() {
                    full += 1;
                    std::thread::yield_now();
                }
            }
            full
        });
        let mut next = 1u64;
        let mut out = Vec::new();
        let mut frames = Vec::new();
        while next <= total {
            out.clear();
            frames.clear();
            let pos = c
                .read_from(c.committed(), 4096, &mut out, &mut frames)
                .unwrap();
            for f in &frames {
                assert_eq!(f.core_seq, next);
                assert_eq!(
                    out[f.start..f.end],
                    payload(next, (next % 200) as usize + 1)
                );
                next += 1;
            }
            c.commit(pos);
            if frames.is_empty() {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
    }

    /// Child half of `frames_survive_sigkill`: writes frames forever,
    /// reporting on stdout how many are published.
    #[test]
    #[ignore = "run by frames_survive_sigkill in a child process"]
    fn sigkill_child_writer() {
        let Some(dir) = std::env::var_os("SLUICE_RING_CHILD_DIR") else {
            return;
        };
        let f = RingFile::open_or_create(&Path::new(&dir).join("core-0.ring"), 0, 1 << 20).unwrap();
        let (mut p, _c) = f.split();
        use std::io::Write;
        let mut stdout = std::io::stdout();
        loop {
            let seq = p.next_seq();
            if p.push(&payload(seq, 40 + (seq % 90) as usize)).is_err() {
                // Full: the parent kills us before it matters.
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            if seq.is_multiple_of(100) {
                writeln!(stdout, "published {seq}").unwrap();
                stdout.flush().unwrap();
            }
        }
    }

    #[test]
    fn frames_survive_sigkill() {
        use std::io::BufRead;
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "audit::ring::tests::sigkill_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SLUICE_RING_CHILD_DIR", d.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0u64;
        while seen < 3000 {
            let line = lines.next().expect("child output").unwrap();
            if let Some(n) = line.strip_prefix("published ") {
                seen = n.parse().unwrap();
            }
        }
        // SAFETY: plain kill(2) of our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));

        let f = RingFile::open_or_create(&d.path().join("core-0.ring"), 0, 1 << 20).unwrap();
        let (_p, mut c) = f.split();
        let got = drain(&mut c);
        // Every frame reported published is there, whole, in order, and
        // nothing but whole frames follow it.
        assert!(got.len() as u64 >= seen, "{} < {seen}", got.len());
        for (i, (seq, body)) in got.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(*body, payload(*seq, 40 + (*seq % 90) as usize));
        }
    }
}
