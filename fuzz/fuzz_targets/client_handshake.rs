//! `ClientHandshake` driven by a fuzzer-chosen client.
//!
//! Input: `[mode, messages...]`, messages as `tag:u8, len:u8, body[len]`.
//! `mode` picks TLS availability/requirement/established, the identity
//! (`agent`: API key, `human`: JWT, `both`, or unknown), the database
//! (granted or not), an extra `_pq_.` option, and whether the startup packet
//! is the valid one or the first fuzzed message. While the handshake expects
//! untagged packets, message bodies are sent as untagged packets with a
//! correct length prefix; afterwards as tagged messages to `on_message`.
//! Invariants: never panics; every reply is a sequence of whole backend
//! frames (or the single byte `N`); a Reject reply is an ErrorResponse.
#![no_main]

#[path = "common.rs"]
mod common;

use dataplane::protocol::backend;
use dataplane::protocol::frame::FrameScanner;
use dataplane::session::handshake::{ClientHandshake, Step};
use libfuzzer_sys::fuzz_target;

fn assert_frames(bytes: &[u8]) {
    if bytes == b"N" {
        return;
    }
    let mut s = FrameScanner::new(u32::MAX);
    s.scan(bytes, |_, _, _| {}).expect("reply is well framed");
    assert!(s.at_boundary(), "reply ends mid-frame");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut hs = ClientHandshake::new(common::snapshot(), mode & 1 != 0, mode & 2 != 0);
    if mode & 4 != 0 {
        hs.tls_established();
    }
    let user = ["agent", "human", "both", "nobody"][(mode >> 3 & 3) as usize];
    let db: &[u8] = if mode & 0x20 != 0 { b"scram" } else { b"app" };
    let mut params: Vec<(&[u8], &[u8])> = vec![
        (b"user", user.as_bytes()),
        (b"database", db),
        (b"application_name", b"fuzz"),
    ];
    if mode & 0x40 != 0 {
        params.push((b"_pq_.fuzz", b"1"));
    }
    let nonce = [7u8; 18];
    let mut step = if mode & 0x80 != 0 {
        Step::Reply(Vec::new())
    } else {
        let mut startup = Vec::new();
        backend::startup_message(&mut startup, &params);
        hs.on_untagged(&startup)
    };
    let mut msgs = common::messages(rest);
    loop {
        match step {
            Step::Reply(r) => assert_frames(&r),
            Step::StartTls => hs.tls_established(),
            Step::Cancel { .. } => return,
            Step::Reject { reply, .. } => {
                assert_eq!(reply.first(), Some(&b'E'), "reject is not an ErrorResponse");
                assert_frames(&reply);
                return;
            }
            Step::Ready { reply, session } => {
                assert_frames(&reply);
                assert_eq!(session.connection.name, "app", "ungranted connection opened");
                return;
            }
            Step::CheckApiKey { verifier, password } => {
                // (What the driver runs off the core.)
                step = hs.api_key_checked(verifier.matches_password(&password.0));
                continue;
            }
        }
        let Some((tag, body)) = msgs.next() else {
            return;
        };
        step = if hs.expects_untagged() {
            let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
            packet.extend_from_slice(body);
            hs.on_untagged(&packet)
        } else {
            hs.on_message(tag, body, &nonce, common::NOW)
        };
    }
});
