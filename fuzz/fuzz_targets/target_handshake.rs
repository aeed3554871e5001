//! `TargetHandshake` against a fuzzer-played target server.
//!
//! Input: `[conn_sel, messages...]`, messages as `tag:u8, len:u8, body[len]`.
//! `conn_sel % 5` picks a connection whose target auth is auto (with
//! password), pinned SCRAM, pinned md5, pinned trust (no password), or auto
//! without a password. Invariants: never panics; what the gateway sends is
//! whole frames; a Ready carries a ReadyForQuery frame and well-framed
//! forwarded messages.
#![no_main]

#[path = "common.rs"]
mod common;

use dataplane::protocol::frame::FrameScanner;
use dataplane::session::target::{TargetHandshake, TargetStep};
use libfuzzer_sys::fuzz_target;

fn assert_frames(bytes: &[u8]) {
    let mut s = FrameScanner::new(u32::MAX);
    s.scan(bytes, |_, _, _| {}).expect("well framed");
    assert!(s.at_boundary(), "ends mid-frame");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let snap = common::snapshot();
    let name = ["app", "scram", "md5", "trust", "nopw"][sel as usize % 5];
    let conn = &snap.connections[name];
    let mut th = TargetHandshake::new(conn);
    let startup = th.startup_packet(&[(b"application_name".to_vec(), b"fuzz".to_vec())]);
    assert_eq!(
        u32::from_be_bytes([startup[0], startup[1], startup[2], startup[3]]) as usize,
        startup.len()
    );
    for (tag, body) in common::messages(rest) {
        match th.on_message(tag, body) {
            TargetStep::Send(out) => assert_frames(&out),
            TargetStep::Continue => {}
            TargetStep::Ready(r) => {
                assert_eq!(r.ready_for_query.first(), Some(&b'Z'));
                assert_frames(&r.ready_for_query);
                assert_frames(&r.forward);
                return;
            }
            TargetStep::Fail(_) => return,
        }
    }
});
