//! `protocol::startup::parse` (and `packet_len`) over arbitrary untagged
//! packets.
//!
//! The first input byte is a mode: bit 0 rewrites the length prefix to the
//! real length (so the parser goes past the length check), bit 1 also forces
//! protocol code 3.0 (so parameter parsing is reached). Invariants: never
//! panics; a parsed 3.0 StartupMessage re-encodes to exactly the same bytes;
//! a CancelRequest is 16 bytes.
#![no_main]

use dataplane::protocol::backend;
use dataplane::protocol::startup::{self, StartupPacket, PROTOCOL_3_0};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut packet = rest.to_vec();
    if mode & 1 != 0 && packet.len() >= 4 {
        let n = packet.len() as u32;
        packet[..4].copy_from_slice(&n.to_be_bytes());
    }
    if mode & 2 != 0 && packet.len() >= 8 {
        packet[4..8].copy_from_slice(&PROTOCOL_3_0.to_be_bytes());
    }
    if packet.len() >= 4 {
        let prefix = [packet[0], packet[1], packet[2], packet[3]];
        let _ = startup::packet_len(&prefix, 10_000);
        let _ = startup::packet_len(&prefix, u32::MAX);
    }
    match startup::parse(&packet) {
        Ok(StartupPacket::Startup(s)) => {
            for (k, v) in &s.params {
                assert!(!k.is_empty() && !k.contains(&0) && !v.contains(&0));
            }
            if (s.major, s.minor) == (3, 0) {
                let mut again = Vec::new();
                backend::startup_message(&mut again, &s.params);
                assert_eq!(again, packet, "StartupMessage does not round-trip");
            }
            let _ = s.get("user");
        }
        Ok(StartupPacket::Cancel { .. }) => assert_eq!(packet.len(), 16),
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
            assert_eq!(packet.len(), 8)
        }
        Err(_) => {}
    }
});
