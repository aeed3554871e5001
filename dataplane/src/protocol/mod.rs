//! PostgreSQL wire protocol (v3.0), sans-IO.
//!
//! Everything here works on byte slices: no sockets, no clock. The relay
//! path uses [`frame::FrameScanner`], which walks frames in place without
//! copying or allocating; [`startup`] parses the untagged packets a client
//! sends before authentication; [`backend`] writes the messages Sluice itself
//! sends (authentication requests, errors, key data).

pub mod backend;
pub mod frame;
pub mod sqlstate;
pub mod startup;

/// Frontend (client → server) message tags Sluice interprets.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';

    // Backend (server → client) tags.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
}

/// Append `bytes` as lowercase hex digits (two per byte) to `out`.
pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// The longest name PostgreSQL keeps (`NAMEDATALEN` less one): a longer
/// one is cut, so two names alike in their first 63 bytes are one name.
pub const NAME_MAX: usize = 63;

/// A prepared statement's or portal's name in a protocol message as the
/// server keeps it: its first [`NAME_MAX`] bytes, cut byte-wise.
#[inline]
pub fn server_name(n: &[u8]) -> &[u8] {
    &n[..n.len().min(NAME_MAX)]
}

/// Read a big-endian u32 from the first four bytes of `b`.
#[inline]
pub fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Read a big-endian i32 from the first four bytes of `b`.
#[inline]
pub fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Split a NUL-terminated string off the front of `b`.
pub fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, b)?;
    Some((&b[..nul], &b[nul + 1..]))
}
