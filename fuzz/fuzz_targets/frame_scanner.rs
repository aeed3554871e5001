//! `FrameScanner` over arbitrary bytes, fed whole and in fuzzer-chosen pieces.
//!
//! Input: `[limit_sel, limit_byte, sizes[8], payload...]`. The payload is
//! scanned once as a single chunk and once cut into chunks whose sizes cycle
//! through `sizes` (a size byte of 0 also scans an empty chunk). Invariants:
//! - never panics;
//! - both runs report the same `(tag, body_len)` sequence up to the first
//!   error, and the same error (or none);
//! - every `body_here` is at most `body_len` long, and in the chunked run it
//!   is a prefix of the body the one-chunk run saw;
//! - without an error, both scanners end in the same boundary state.
#![no_main]

use dataplane::protocol::frame::{FrameError, FrameScanner};
use libfuzzer_sys::fuzz_target;

type Frames = Vec<(u8, u32, Vec<u8>)>;

fn scan_chunks<'a>(
    max_body: u32,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Frames, Result<(), FrameError>, bool) {
    let mut s = FrameScanner::new(max_body);
    let mut frames = Vec::new();
    let mut res = Ok(());
    for c in chunks {
        res = s.scan(c, |t, l, here| {
            assert!(here.len() as u64 <= l as u64, "body_here longer than body");
            frames.push((t, l, here.to_vec()));
        });
        if res.is_err() {
            break;
        }
    }
    (frames, res, s.at_boundary())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let max_body = match data[0] % 4 {
        0 => data[1] as u32,
        1 => (data[1] as u32) << 8,
        2 => 1 << 20,
        _ => u32::MAX,
    };
    let sizes = &data[2..10];
    let payload = &data[10..];

    let (whole, whole_res, whole_boundary) = scan_chunks(max_body, std::iter::once(payload));

    let mut pieces = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < payload.len() && k < 4096 {
        let b = sizes[k % sizes.len()];
        k += 1;
        if b == 0 {
            pieces.push(&payload[at..at]);
            continue;
        }
        let n = (b as usize % 64 + 1).min(payload.len() - at);
        pieces.push(&payload[at..at + n]);
        at += n;
    }
    if at < payload.len() {
        pieces.push(&payload[at..]);
    }
    let (split, split_res, split_boundary) = scan_chunks(max_body, pieces.into_iter());

    assert_eq!(whole_res, split_res, "error outcome differs");
    let w: Vec<(u8, u32)> = whole.iter().map(|f| (f.0, f.1)).collect();
    let s: Vec<(u8, u32)> = split.iter().map(|f| (f.0, f.1)).collect();
    assert_eq!(w, s, "frame sequence differs");
    for (a, b) in whole.iter().zip(split.iter()) {
        assert!(a.2.starts_with(&b.2), "chunked body prefix is not a prefix of the body");
    }
    if whole_res.is_ok() {
        assert_eq!(whole_boundary, split_boundary, "boundary state differs");
    }
});
