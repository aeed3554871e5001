//! The embedded store's append-only log format.
//!
//! ```text
//! file   = MAGIC record*
//! record = len:u32le crc32(payload):u32le payload[len]
//! payload= revision:i64le n_ops:u32le op*
//! op     = 1:u8 key_len:u32le key lease:i64le(0 = none) value_len:u32le value   (put)
//!        | 2:u8 key_len:u32le key                                              (delete)
//! ```
//!
//! One record is one store revision; a record may hold several operations
//! (a prefix delete, a lease's keys expiring), all at that revision.

use super::{LeaseId, Result, Revision, StoreError};

/// First bytes of every log file (format version 1).
pub(crate) const MAGIC: &[u8; 8] = b"SLUICE\x00\x01";
/// Records larger than this are treated as damage, not data.
const MAX_RECORD: usize = 256 << 20;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub revision: Revision,
    pub ops: Vec<Op>,
}

/// What replaying a log found.
#[derive(Debug)]
pub(crate) struct Replay {
    pub records: Vec<Record>,
    /// Length of the valid part of the file (magic + whole records).
    pub valid_len: u64,
    /// Whether bytes after `valid_len` (a torn last record) must be cut off.
    pub torn: bool,
}

/// Encodes one record, header included.
pub(crate) fn encode(rec: &Record) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(&rec.revision.to_le_bytes());
    payload.extend_from_slice(&len_u32(rec.ops.len()).to_le_bytes());
    for op in &rec.ops {
        match op {
            Op::Put { key, value, lease } => {
                payload.push(OP_PUT);
                put_bytes(&mut payload, key.as_bytes());
                payload.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
                put_bytes(&mut payload, value);
            }
            Op::Delete { key } => {
                payload.push(OP_DELETE);
                put_bytes(&mut payload, key.as_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&len_u32(payload.len()).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("store record field larger than 4 GiB")
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&len_u32(b.len()).to_le_bytes());
    out.extend_from_slice(b);
}

/// Decodes a whole log file. A damaged *last* record (short, or failing its
/// checksum with nothing but zeros after it) is reported as torn; damage
/// followed by more data is corruption and refused.
pub(crate) fn decode_all(buf: &[u8]) -> Result<Replay> {
    if buf.len() < MAGIC.len() {
        // Empty, or the magic itself was torn while creating the file.
        if MAGIC.starts_with(buf) {
            return Ok(Replay {
                records: Vec::new(),
                valid_len: 0,
                torn: !buf.is_empty(),
            });
        }
        return Err(StoreError::Corrupt("log file has no valid header".into()));
    }
    if &buf[..MAGIC.len()] != MAGIC {
        return Err(StoreError::Corrupt(
            "log file header is not a Sluice store log (format 1)".into(),
        ));
    }
    let mut pos = MAGIC.len();
    let mut records = Vec::new();
    while pos < buf.len() {
        let rest = &buf[pos..];
        if rest.len() < 8 {
            return Ok(torn(records, pos));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || rest.len() - 8 < len {
            // A torn append leaves a record that runs past the end of the
            // file, but so does a damaged length field in the middle of
            // the log: only the first is the last record. Cutting the file
            // here after damage would silently drop every later revision.
            let last = records.last().map_or(1, |r: &Record| r.revision);
            match torn_prefix(&rest[8..], len, last) {
                // What is there is the start of the next record, cut short:
                // a torn append. Its values may hold any bytes, even those
                // of a whole record, so nothing inside it is evidence.
                Prefix::Torn => return Ok(torn(records, pos)),
                Prefix::Whole(m) if m < rest.len() - 8 && crc32(&rest[8..8 + m]) == crc => {
                    return Err(StoreError::Corrupt(format!(
                        "damaged log record at byte offset {pos}: its length field says {len} \
                         bytes, but a whole, valid record of {m} bytes is there, followed by {} \
                         more bytes",
                        rest.len() - 8 - m
                    )))
                }
                Prefix::Whole(_) | Prefix::Invalid => {}
            }
            if let Some(at) = later_record(buf, pos + 1, last) {
                return Err(StoreError::Corrupt(format!(
                    "damaged log record at byte offset {pos} (its length field says {len} bytes, \
                     {} are left) followed by a valid record at byte offset {at}",
                    rest.len() - 8
                )));
            }
            return Ok(torn(records, pos));
        }
        let payload = &rest[8..8 + len];
        let end = pos + 8 + len;
        let decoded = if crc32(payload) == crc {
            decode_payload(payload)
        } else {
            None
        };
        match decoded {
            Some(rec) => records.push(rec),
            None if buf[end..].iter().all(|&b| b == 0) => return Ok(torn(records, pos)),
            None => {
                return Err(StoreError::Corrupt(format!(
                    "damaged log record at byte offset {pos} followed by {} more bytes",
                    buf.len() - end
                )))
            }
        }
        pos = end;
    }
    Ok(Replay {
        records,
        valid_len: pos as u64,
        torn: false,
    })
}

/// What the bytes of a record that runs past the end of the log are.
enum Prefix {
    /// A consistent beginning of a payload of the declared length with the
    /// next revision, cut short: what a crash mid-append leaves.
    Torn,
    /// A whole payload of this many bytes, shorter than the declared
    /// length, with more bytes after it: the length field is damaged.
    Whole(usize),
    /// Neither.
    Invalid,
}

/// Reads `avail`, the bytes after a record header whose length field says
/// `len` (more than there are), as the payload of the record that follows
/// revision `last`.
fn torn_prefix(avail: &[u8], len: usize, last: Revision) -> Prefix {
    /// Ran out of bytes: the record was cut here.
    struct Cut;
    struct P<'a> {
        buf: &'a [u8],
        at: usize,
        len: usize,
    }
    impl<'a> P<'a> {
        /// `Ok(None)`: the field does not fit in the declared length.
        fn take(&mut self, n: usize) -> Result<Option<&'a [u8]>, Cut> {
            if self.at.saturating_add(n) > self.len {
                return Ok(None);
            }
            if self.at + n > self.buf.len() {
                return Err(Cut);
            }
            let b = &self.buf[self.at..self.at + n];
            self.at += n;
            Ok(Some(b))
        }
        fn u32(&mut self) -> Result<Option<usize>, Cut> {
            Ok(self
                .take(4)?
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize))
        }
        /// A length-prefixed byte string; `Ok(Some(None))` when it is cut
        /// (its bytes need not be whole to be consistent).
        fn bytes(&mut self) -> Result<Option<&'a [u8]>, Cut> {
            let Some(n) = self.u32()? else {
                return Ok(None);
            };
            self.take(n)
        }
    }
    let mut p = P {
        buf: avail,
        at: 0,
        len,
    };
    let parsed = (|| -> Result<bool, Cut> {
        let Some(rev) = p.take(8)? else {
            return Ok(false);
        };
        if i64::from_le_bytes(rev.try_into().expect("8 bytes")) != last.saturating_add(1) {
            return Ok(false);
        }
        let Some(n) = p.u32()? else { return Ok(false) };
        if n == 0 {
            return Ok(false);
        }
        for _ in 0..n {
            let Some(op) = p.take(1)? else {
                return Ok(false);
            };
            match op[0] {
                OP_PUT => {
                    let Some(key) = p.bytes()? else {
                        return Ok(false);
                    };
                    if std::str::from_utf8(key).is_err() || p.take(8)?.is_none() {
                        return Ok(false);
                    }
                    if p.bytes()?.is_none() {
                        return Ok(false);
                    }
                }
                OP_DELETE => match p.bytes()? {
                    Some(key) if std::str::from_utf8(key).is_ok() => {}
                    _ => return Ok(false),
                },
                _ => return Ok(false),
            }
        }
        Ok(true)
    })();
    match parsed {
        // (No record is written longer than that, or shorter than its
        // revision and count.)
        Err(Cut) if (12..=MAX_RECORD).contains(&len) => Prefix::Torn,
        Err(Cut) => Prefix::Invalid,
        Ok(true) => Prefix::Whole(p.at),
        Ok(false) => Prefix::Invalid,
    }
}

/// The offset of the first whole, valid record at or after `from` whose
/// revision follows `after`, if any: evidence that damage before it is not
/// a torn tail.
fn later_record(buf: &[u8], from: usize, after: Revision) -> Option<usize> {
    // Every record takes more than one byte, so no later revision can be
    // further ahead than the bytes left.
    let max_rev = after.saturating_add(i64::try_from(buf.len()).unwrap_or(i64::MAX));
    (from..buf.len()).find(|&q| {
        let rest = &buf[q..];
        // Header, revision and op count at least.
        if rest.len() < 8 + 12 {
            return false;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if !(12..=MAX_RECORD).contains(&len) || rest.len() - 8 < len {
            return false;
        }
        let rev = i64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
        if rev <= after || rev > max_rev {
            return false;
        }
        let payload = &rest[8..8 + len];
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        crc32(payload) == crc && decode_payload(payload).is_some()
    })
}

fn torn(records: Vec<Record>, pos: usize) -> Replay {
    Replay {
        records,
        valid_len: pos as u64,
        torn: true,
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_owned)
    }
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut c = Cursor(payload);
    let revision = c.i64()?;
    let n = c.u32()? as usize;
    let mut ops = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        match c.u8()? {
            OP_PUT => {
                let key = c.string()?;
                let lease = c.i64()?;
                let value = c.bytes()?.to_vec();
                ops.push(Op::Put {
                    key,
                    value,
                    lease: (lease != 0).then_some(lease),
                });
            }
            OP_DELETE => ops.push(Op::Delete { key: c.string()? }),
            _ => return None,
        }
    }
    if !c.0.is_empty() || revision < 2 || ops.is_empty() {
        return None;
    }
    Some(Record { revision, ops })
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3, the zlib/PNG one).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rev: Revision) -> Record {
        Record {
            revision: rev,
            ops: vec![
                Op::Put {
                    key: "config/a".into(),
                    value: b"hello".to_vec(),
                    lease: Some(7),
                },
                Op::Delete {
                    key: "config/b".into(),
                },
            ],
        }
    }

    fn file(records: &[Record]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for r in records {
            buf.extend(encode(r));
        }
        buf
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn roundtrip() {
        let recs = vec![sample(2), sample(3)];
        let buf = file(&recs);
        let r = decode_all(&buf).unwrap();
        assert_eq!(r.records, recs);
        assert!(!r.torn);
        assert_eq!(r.valid_len, buf.len() as u64);
    }

    #[test]
    fn torn_tail_is_reported_at_every_cut() {
        let full = file(&[sample(2), sample(3)]);
        let first = file(&[sample(2)]).len();
        for cut in first + 1..full.len() {
            let r = decode_all(&full[..cut]).unwrap();
            assert_eq!(r.records.len(), 1, "cut at {cut}");
            assert!(r.torn);
            assert_eq!(r.valid_len, first as u64);
        }
    }

    #[test]
    fn bad_checksum_on_last_record_is_torn_but_in_the_middle_is_corrupt() {
        let mut buf = file(&[sample(2), sample(3)]);
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        let r = decode_all(&buf).unwrap();
        assert!(r.torn);
        assert_eq!(r.records.len(), 1);

        let mut buf = file(&[sample(2), sample(3)]);
        buf[MAGIC.len() + 10] ^= 0xff;
        assert!(matches!(decode_all(&buf), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn damaged_length_in_the_middle_is_corrupt_not_torn() {
        let recs = [sample(2), sample(3), sample(4)];
        let second = file(&recs[..1]).len();
        for (byte, value) in [(3, 0x7f), (2, 0x01), (0, 0xff)] {
            let mut buf = file(&recs);
            // The second record's length now runs past the end of the file.
            buf[second + byte] = value;
            match decode_all(&buf) {
                Err(StoreError::Corrupt(m)) => {
                    assert!(m.contains(&format!("byte offset {second}")), "{m}")
                }
                other => panic!("length byte {byte} = {value:#x}: {other:?}"),
            }
        }
        // The same damage to the last record is a torn tail.
        let mut buf = file(&recs);
        let third = file(&recs[..2]).len();
        buf[third + 3] = 0x7f;
        let r = decode_all(&buf).unwrap();
        assert!(r.torn);
        assert_eq!(r.records, recs[..2]);
        assert_eq!(r.valid_len, third as u64);
    }

    /// A crash mid-append tears the last record wherever it is cut; a
    /// value that happens to hold the bytes of a whole record (a stored
    /// document can hold any bytes) is still only part of that torn record,
    /// not a later record after damage.
    #[test]
    fn torn_tail_whose_value_holds_a_record_is_still_torn() {
        let recs = [sample(2), sample(3)];
        let inner = encode(&sample(4));
        let mut value = b"prefix ".to_vec();
        value.extend_from_slice(&inner);
        value.extend_from_slice(b" suffix");
        let last = Record {
            revision: 4,
            ops: vec![Op::Put {
                key: "config/current".into(),
                value,
                lease: None,
            }],
        };
        let mut full = file(&recs);
        let valid = full.len();
        full.extend(encode(&last));
        for cut in valid + 1..full.len() {
            match decode_all(&full[..cut]) {
                Ok(r) => {
                    assert!(r.torn, "cut at {cut}");
                    assert_eq!(r.records, recs, "cut at {cut}");
                    assert_eq!(r.valid_len, valid as u64, "cut at {cut}");
                }
                Err(e) => panic!("cut at {cut} of {}: {e}", full.len()),
            }
        }
        assert_eq!(decode_all(&full).unwrap().records.len(), 3);
    }

    /// A whole record whose length field was damaged, followed by a record
    /// torn by a crash (so no whole record after it to give it away): the
    /// damaged record was durable, and is not cut off with the torn one.
    #[test]
    fn damaged_length_before_a_torn_record_is_corrupt() {
        let recs = [sample(2), sample(3), sample(4)];
        let second = file(&recs[..1]).len();
        let third = file(&recs[..2]).len();
        for cut in [third + 4, third + 12, third + 20] {
            let mut buf = file(&recs)[..cut].to_vec();
            buf[second + 3] = 0x7f;
            match decode_all(&buf) {
                Err(StoreError::Corrupt(m)) => {
                    assert!(m.contains(&format!("byte offset {second}")), "{m}")
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let mut buf = file(&[sample(2)]);
        let valid = buf.len();
        buf.extend([0u8; 100]);
        let r = decode_all(&buf).unwrap();
        assert!(r.torn);
        assert_eq!(r.valid_len, valid as u64);
    }

    #[test]
    fn header() {
        assert!(decode_all(b"").unwrap().records.is_empty());
        assert!(decode_all(b"SLUI").unwrap().torn);
        assert!(matches!(
            decode_all(b"NOTSLUICEATALL"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
