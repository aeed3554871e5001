//! The target → client side of the relay for RESULTS §8's workload, without
//! sockets: what `pump_target` does per read (`TargetMasker::process`, the
//! metric update, the frame scan, keeping a split frame at the front of an
//! 8 KiB buffer), over the responses to `bench/e2e/mask_overhead.sh`'s
//! SELECT of 20 `mask_rows` rows (~19 KB), so that instruction counts of
//! masking on and off can be compared with `mask_e2e`'s engine alone:
//!
//! ```bash
//! cargo build --release -p bench --example mask_relay
//! # (instructions of 2000 transactions - 0) / 2000, per mode
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/mask_relay on simple 2000
//! perf stat -x, -e task-clock target/release/examples/mask_relay on simple 20000
//! ```
//!
//! Arguments: `on` (default profile), `off` (a passive masker, as a session
//! with `masking_profile: none`) or `none` (no masker); `simple` or
//! `extended` (the messages `pgbench -M simple|extended` gets back);
//! transactions (default 10000). `MASK_KERNEL=avx2|ssse3|scalar|avx512`
//! picks the classification kernel (default: the best this CPU has).

use dataplane::mask::{corpus, Engine, Kernel, MaskingProfile};
use dataplane::metrics::CoreMetrics;
use dataplane::protocol::frame::FrameScanner;
use dataplane::session::masker::TargetMasker;
use std::hint::black_box;
use std::sync::Arc;

#[path = "support/e2e_rows.rs"]
mod e2e_rows;
use e2e_rows::{row, COLUMNS};

const ROWS: u64 = 20;
const BUFFER: usize = 8 * 1024;
const MAX_FRAME: usize = 1 << 30;

fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn sql(start: u64) -> Vec<u8> {
    let mut q = format!(
        "SELECT id, customer, contact, note, amount, created FROM mask_rows \
         WHERE id >= {start} AND id < {start} + {ROWS};"
    )
    .into_bytes();
    q.push(0);
    q
}

/// The client's messages of one transaction, as (tag, body).
type Requests = Vec<(u8, Vec<u8>)>;

fn requests(extended: bool, start: u64) -> Requests {
    if !extended {
        return vec![(b'Q', sql(start))];
    }
    let mut parse = vec![0u8];
    parse.extend_from_slice(&sql(start));
    parse.extend_from_slice(&0i16.to_be_bytes());
    // Bind: portal "", statement "", no parameters, no result formats.
    let bind = [0u8, 0, 0, 0, 0, 0, 0, 0].to_vec();
    vec![
        (b'P', parse),
        (b'B', bind),
        (b'D', b"P\0".to_vec()),
        (b'E', [0u8, 0, 0, 0, 0].to_vec()),
        (b'S', Vec::new()),
    ]
}

/// The target's answer to one transaction.
fn response(extended: bool, start: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if extended {
        frame(&mut out, b'1', b"");
        frame(&mut out, b'2', b"");
    }
    frame(&mut out, b'T', &corpus::row_description(COLUMNS));
    for g in start..start + ROWS {
        frame(&mut out, b'D', &corpus::data_row(&row(g)));
    }
    frame(&mut out, b'C', b"SELECT 20\0");
    frame(&mut out, b'Z', b"I");
    out
}

fn kernel() -> Kernel {
    match std::env::var("MASK_KERNEL").as_deref() {
        Ok("avx512") => Kernel::Avx512,
        Ok("avx2") => Kernel::Avx2,
        Ok("ssse3") => Kernel::Ssse3,
        Ok("scalar") => Kernel::Scalar,
        Ok(k) => panic!("unknown kernel {k}"),
        Err(_) => Kernel::best(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("on", String::as_str);
    let extended = match args.get(2).map_or("simple", String::as_str) {
        "simple" => false,
        "extended" => true,
        p => panic!("unknown protocol {p}"),
    };
    let txns: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let mut masker = match mode {
        "on" => Some(TargetMasker::for_session(
            Some(Arc::new(
                Engine::compile_with_kernel(&MaskingProfile::default(), kernel()).unwrap(),
            )),
            MAX_FRAME,
        )),
        "off" => Some(TargetMasker::for_session(None, MAX_FRAME)),
        "none" => None,
        m => panic!("unknown mode {m}"),
    };
    // 64 different results, used in turn.
    let work: Vec<(Requests, Vec<u8>)> = (0..64u64)
        .map(|i| {
            let start = 1 + i * 311 % 19_000;
            (requests(extended, start), response(extended, start))
        })
        .collect();
    let metrics = CoreMetrics::new(0, "bench");
    let mut scan = FrameScanner::new(MAX_FRAME as u32);
    let mut buf: Vec<u8> = Vec::with_capacity(BUFFER);
    let mut out: Vec<u8> = Vec::new();
    let (mut sent, mut masked) = (0usize, 0u64);
    for t in 0..txns {
        let (reqs, resp) = &work[t % work.len()];
        if let Some(m) = masker.as_mut() {
            for (tag, body) in reqs {
                m.on_client_frame(*tag, body, true, None);
            }
        }
        let mut from = 0usize;
        while from < resp.len() {
            // One read: as much as the buffer holds.
            let held = buf.len();
            if held == buf.capacity() {
                buf.reserve(held.max(BUFFER));
            }
            let take = (buf.capacity() - held).min(resp.len() - from);
            buf.extend_from_slice(&resp[from..from + take]);
            from += take;
            let (ready, rewritten) = match masker.as_mut() {
                None => (buf.len(), false),
                Some(mk) => {
                    let p = mk.process(&mut buf);
                    if p.masked > 0 {
                        masked += u64::from(p.masked);
                        metrics.count_masked(mk);
                    }
                    if p.rewritten {
                        out.clear();
                        out.extend_from_slice(mk.out());
                    }
                    (p.ready, p.rewritten)
                }
            };
            scan.scan_parts(&buf[..ready], |part| {
                black_box(part);
            })
            .unwrap();
            sent += if rewritten { out.len() } else { ready };
            black_box(&buf[..ready]);
            if ready == buf.len() {
                buf.clear();
            } else {
                buf.drain(..ready);
            }
            if ready == buf.capacity() {
                buf.reserve(ready);
            }
        }
    }
    println!("mask_relay {mode}: {txns} transactions, {sent} bytes sent, {masked} rows masked");
}
