//! In-place frame splitter for the relay path.
//!
//! A tagged PostgreSQL message is `tag:u8, len:u32 (includes itself), body`.
//! [`FrameScanner`] walks the bytes of each read as they arrive, reports every
//! frame header it completes together with the part of the body that is in the
//! same chunk, and remembers how much body is still to come. Frames are never
//! copied or reassembled: the caller forwards the chunk from the buffer it was
//! read into, so a value larger than any buffer streams straight through.
//! Only a header split across two reads (at most 4 bytes) is kept aside.

use super::be_u32;

/// A frame that can not be valid PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: u32 },
    #[error("message of type {tag:?} is {len} bytes, over the limit of {limit}")]
    TooLarge { tag: char, len: u32, limit: u32 },
}

/// Streaming frame splitter; one per direction of a session.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    hdr: [u8; 5],
    have: u8,
    /// Body bytes of the current frame not yet seen.
    remaining: u32,
    max_body: u32,
}

impl FrameScanner {
    /// `max_body` is the largest body (length minus its own 4 bytes) accepted.
    pub fn new(max_body: u32) -> Self {
        FrameScanner {
            hdr: [0; 5],
            have: 0,
            remaining: 0,
            max_body,
        }
    }

    /// True when the scanner is between frames (no partial header or body).
    #[inline]
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Walk `chunk`. For each frame whose header completes inside it, call
    /// `on_frame(tag, body_len, body_here)` where `body_here` is the prefix of
    /// the body present in this chunk (all of it when the frame is whole).
    #[inline]
    pub fn scan<F>(&mut self, chunk: &[u8], mut on_frame: F) -> Result<(), FrameError>
    where
        F: FnMut(u8, u32, &[u8]),
    {
        self.scan_parts(chunk, |part| {
            if let Part::Start { tag, len, body, .. } = part {
                on_frame(tag, len, body)
            }
        })
    }

    /// Like [`FrameScanner::scan`], but also reports the rest of a body
    /// that continues past the chunk its header was in ([`Part::More`]),
    /// and says which part ends each frame: a consumer that needs more
    /// than a frame's first bytes (the audit tracker) sees every body byte
    /// exactly once, in order, without anything being copied here.
    #[inline]
    pub fn scan_parts<F>(&mut self, chunk: &[u8], mut on_part: F) -> Result<(), FrameError>
    where
        F: FnMut(Part<'_>),
    {
        let mut i = 0usize;
        let n = chunk.len();
        while i < n {
            if self.remaining > 0 {
                let take = (self.remaining as usize).min(n - i);
                self.remaining -= take as u32;
                on_part(Part::More {
                    body: &chunk[i..i + take],
                    done: self.remaining == 0,
                });
                i += take;
                continue;
            }
            let (tag, len) = if self.have == 0 && n - i >= 5 {
                let t = chunk[i];
                let l = be_u32(&chunk[i + 1..i + 5]);
                i += 5;
                (t, l)
            } else {
                let need = 5 - self.have as usize;
                let take = need.min(n - i);
                self.hdr[self.have as usize..self.have as usize + take]
                    .copy_from_slice(&chunk[i..i + take]);
                self.have += take as u8;
                i += take;
                if self.have < 5 {
                    return Ok(());
                }
                self.have = 0;
                (self.hdr[0], be_u32(&self.hdr[1..5]))
            };
            if len < 4 {
                return Err(FrameError::BadLength {
                    tag: tag as char,
                    len,
                });
            }
            let body = len - 4;
            if body > self.max_body {
                return Err(FrameError::TooLarge {
                    tag: tag as char,
                    len,
                    limit: self.max_body,
                });
            }
            let here = (body as usize).min(n - i);
            self.remaining = body - here as u32;
            on_part(Part::Start {
                tag,
                len: body,
                body: &chunk[i..i + here],
                done: self.remaining == 0,
            });
            i += here;
        }
        Ok(())
    }
}

/// One piece of a frame, as [`FrameScanner::scan_parts`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    /// A frame header completed: its tag, body length, the body bytes in
    /// this chunk, and whether they are the whole body.
    Start {
        tag: u8,
        len: u32,
        body: &'a [u8],
        done: bool,
    },
    /// More body of the frame last started; `done` on its last bytes.
    More { body: &'a [u8], done: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn collect(s: &mut FrameScanner, chunks: &[&[u8]]) -> Vec<(u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for c in chunks {
            s.scan(c, |t, l, b| out.push((t, l, b.to_vec()))).unwrap();
        }
        out
    }

    #[test]
    fn whole_frames_in_one_chunk() {
        let mut buf = msg(b'Q', b"select 1\0");
        buf.extend(msg(b'X', b""));
        let mut s = FrameScanner::new(1 << 20);
        let got = collect(&mut s, &[&buf]);
        assert_eq!(
            got,
            vec![(b'Q', 9, b"select 1\0".to_vec()), (b'X', 0, vec![])]
        );
        assert!(s.at_boundary());
    }

    #[test]
    fn every_split_point_gives_same_frames() {
        let mut buf = msg(b'T', b"rowdesc");
        buf.extend(msg(b'D', &[7u8; 300]));
        buf.extend(msg(b'Z', b"I"));
        for cut in 0..=buf.len() {
            let mut s = FrameScanner::new(1 << 20);
            let got = collect(&mut s, &[&buf[..cut], &buf[cut..]]);
            let tags: Vec<_> = got.iter().map(|g| (g.0, g.1)).collect();
            assert_eq!(tags, vec![(b'T', 7), (b'D', 300), (b'Z', 1)], "cut {cut}");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn byte_at_a_time() {
        let buf = msg(b'D', &[1u8; 40]);
        let mut s = FrameScanner::new(1 << 20);
        let mut n = 0;
        for b in &buf {
            s.scan(std::slice::from_ref(b), |t, l, _| {
                assert_eq!((t, l), (b'D', 40));
                n += 1;
            })
            .unwrap();
        }
        assert_eq!(n, 1);
        assert!(s.at_boundary());
    }

    #[test]
    fn rejects_short_and_huge_lengths() {
        let mut s = FrameScanner::new(1 << 20);
        assert!(matches!(
            s.scan(&[b'Q', 0, 0, 0, 3], |_, _, _| {}),
            Err(FrameError::BadLength { .. })
        ));
        let mut s = FrameScanner::new(1 << 20);
        assert!(matches!(
            s.scan(&[b'Q', 0x7f, 0xff, 0xff, 0xff], |_, _, _| {}),
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// Reassemble frames from parts: every body byte once, `done` once per
    /// frame, on its last part.
    fn reassemble(s: &mut FrameScanner, chunks: &[&[u8]]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut open = false;
        for c in chunks {
            s.scan_parts(c, |p| match p {
                Part::Start {
                    tag,
                    len,
                    body,
                    done,
                } => {
                    assert!(!open, "a frame started before the last one ended");
                    assert_eq!(done, body.len() == len as usize);
                    out.push((tag, body.to_vec()));
                    open = !done;
                }
                Part::More { body, done } => {
                    assert!(open, "more body with no frame open");
                    out.last_mut().unwrap().1.extend_from_slice(body);
                    open = !done;
                }
            })
            .unwrap();
        }
        assert!(!open);
        out
    }

    #[test]
    fn parts_carry_every_body_byte_at_every_split() {
        let mut buf = msg(b'Q', b"select 1\0");
        buf.extend(msg(b'D', &[7u8; 30]));
        buf.extend(msg(b'X', b""));
        for a in 0..=buf.len() {
            for b in a..=buf.len() {
                let mut s = FrameScanner::new(1 << 20);
                let got = reassemble(&mut s, &[&buf[..a], &buf[a..b], &buf[b..]]);
                assert_eq!(
                    got,
                    vec![
                        (b'Q', b"select 1\0".to_vec()),
                        (b'D', vec![7u8; 30]),
                        (b'X', vec![])
                    ],
                    "cuts {a} {b}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_chunking_preserves_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 1..20),
            cuts in proptest::collection::vec(0usize..4000, 0..10),
        ) {
            let mut buf = Vec::new();
            for (k, b) in bodies.iter().enumerate() {
                buf.extend(msg(b'A' + (k % 26) as u8, b));
            }
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (buf.len() + 1)).collect();
            points.sort();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for p in points { chunks.push(&buf[prev..p]); prev = p; }
            chunks.push(&buf[prev..]);
            let mut s = FrameScanner::new(1 << 20);
            let got = collect(&mut s, &chunks);
            proptest::prop_assert_eq!(got.len(), bodies.len());
            for (k, (t, l, _)) in got.iter().enumerate() {
                proptest::prop_assert_eq!(*t, b'A' + (k % 26) as u8);
                proptest::prop_assert_eq!(*l as usize, bodies[k].len());
            }
            proptest::prop_assert!(s.at_boundary());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut s = FrameScanner::new(1 << 16);
            let _ = s.scan(&bytes, |_, _, _| {});
        }
    }
}
