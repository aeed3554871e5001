//! `net::proxy::parse` over arbitrary bytes at a connection's start (a
//! PROXY protocol v1 or v2 header, or anything else a peer sends first).
//!
//! Invariants: never panics; a header is never longer than the input; it
//! does not depend on the bytes after it (the same header parses from the
//! input cut at its end); and no shorter prefix of it parses as a header
//! (a header split across reads is waited for, never taken early).
#![no_main]

use dataplane::net::proxy::{parse, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Parsed::Header { len, source } = parse(data) {
        assert!(len <= data.len() && len > 0);
        assert_eq!(parse(&data[..len]), Parsed::Header { len, source });
        for k in 1..len {
            assert!(
                !matches!(parse(&data[..k]), Parsed::Header { .. }),
                "a {k}-byte prefix of a {len}-byte header parsed as one"
            );
        }
    }
});
