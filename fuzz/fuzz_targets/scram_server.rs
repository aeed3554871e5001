//! `ScramServer::client_first` / `client_final` over arbitrary bytes.
//!
//! `mode % 4`:
//! 0: both messages from the input, split at the first 0xFF byte;
//! 1: a valid client-first, then the input as client-final;
//! 2: a valid client-first, then `c=biws,r=<nonce>,p=` + input as
//!    client-final (reaches proof decoding and checking);
//! 3: client-final before client-first, then the input as client-first.
//! Invariant: never panics; a server-first reply echoes the combined nonce.
#![no_main]

#[path = "common.rs"]
mod common;

use dataplane::auth::scram::ScramServer;
use libfuzzer_sys::fuzz_target;

const SERVER_NONCE: &str = "c2VydmVyLW5vbmNlLTEyMzQ";
const CLIENT_FIRST: &[u8] = b"n,,n=,r=clientnonce";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut s = ScramServer::new(common::verifier());
    match mode % 4 {
        0 => {
            let (first, fin) = match rest.iter().position(|&b| b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            if let Ok(sf) = s.client_first(first, SERVER_NONCE) {
                let sf = String::from_utf8(sf).expect("server-first is UTF-8");
                assert!(sf.contains(SERVER_NONCE), "server nonce missing");
            }
            let _ = s.client_final(fin);
            let _ = s.client_final(fin);
        }
        1 | 2 => {
            s.client_first(CLIENT_FIRST, SERVER_NONCE)
                .expect("valid client-first accepted");
            let fin = if mode % 4 == 2 {
                let mut f = format!("c=biws,r=clientnonce{SERVER_NONCE},p=").into_bytes();
                f.extend_from_slice(rest);
                f
            } else {
                rest.to_vec()
            };
            let _ = s.client_final(&fin);
        }
        _ => {
            let _ = s.client_final(rest);
            let _ = s.client_first(rest, SERVER_NONCE);
        }
    }
});
