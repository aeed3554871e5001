//! The untagged packets a client may send first: StartupMessage,
//! SSLRequest, GSSENCRequest, CancelRequest.

use super::{be_i32, be_u32};

pub const PROTOCOL_3_0: u32 = 196_608;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A parsed untagged packet. Borrowed from the packet bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(Startup<'a>),
}

/// A StartupMessage: protocol version and parameters in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Startup<'a> {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Startup<'a> {
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        self.params
            .iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedProtocol(u16, u16),
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed,
}

/// Read the length prefix of an untagged packet; `Err` when it is outside
/// `8..=max`.
pub fn packet_len(prefix: &[u8; 4], max: u32) -> Result<u32, StartupError> {
    let len = be_u32(prefix);
    if len < 8 || len > max {
        Err(StartupError::BadLength)
    } else {
        Ok(len)
    }
}

/// Parse a whole untagged packet (length prefix included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket<'_>, StartupError> {
    if packet.len() < 8 || be_u32(packet) as usize != packet.len() {
        return Err(StartupError::BadLength);
    }
    let code = be_u32(&packet[4..8]);
    match code {
        SSL_REQUEST_CODE if packet.len() == 8 => return Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if packet.len() == 8 => return Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if packet.len() == 16 => {
            return Ok(StartupPacket::Cancel {
                pid: be_i32(&packet[8..12]),
                secret: be_i32(&packet[12..16]),
            })
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            return Err(StartupError::BadLength)
        }
        _ => {}
    }
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol(major, minor));
    }
    let mut rest = &packet[8..];
    let mut params = Vec::new();
    loop {
        let Some((key, tail)) = super::cstr(rest) else {
            return Err(StartupError::Malformed);
        };
        if key.is_empty() {
            if !tail.is_empty() {
                return Err(StartupError::Malformed);
            }
            break;
        }
        let Some((val, tail)) = super::cstr(tail) else {
            return Err(StartupError::Malformed);
        };
        params.push((key, val));
        rest = tail;
    }
    Ok(StartupPacket::Startup(Startup {
        major,
        minor,
        params,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend;

    #[test]
    fn parses_startup_params() {
        let mut p = Vec::new();
        backend::startup_message(&mut p, &[(b"user", b"agent"), (b"database", b"app")]);
        match parse(&p).unwrap() {
            StartupPacket::Startup(s) => {
                assert_eq!((s.major, s.minor), (3, 0));
                assert_eq!(s.get("user"), Some(&b"agent"[..]));
                assert_eq!(s.get("database"), Some(&b"app"[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_special_codes() {
        assert_eq!(
            parse(&backend::ssl_request()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse(&backend::cancel_request(42, -7)).unwrap(),
            StartupPacket::Cancel {
                pid: 42,
                secret: -7
            }
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(
            packet_len(&[0x7f, 0xff, 0xff, 0xff], 10_000),
            Err(StartupError::BadLength)
        );
        assert_eq!(
            packet_len(&[0, 0, 0, 4], 10_000),
            Err(StartupError::BadLength)
        );
        let mut p = Vec::new();
        backend::startup_message(&mut p, &[(b"user", b"a")]);
        let n = p.len();
        p.truncate(n - 1); // drop terminator
        p[0..4].copy_from_slice(&((n - 1) as u32).to_be_bytes());
        assert!(parse(&p).is_err());
        let mut v2 = p.clone();
        v2[4..8].copy_from_slice(&0x0002_0000u32.to_be_bytes());
        assert!(matches!(
            parse(&v2),
            Err(StartupError::UnsupportedProtocol(2, 0))
        ));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 8..300)) {
            let n = bytes.len() as u32;
            bytes[0..4].copy_from_slice(&n.to_be_bytes());
            let _ = parse(&bytes);
        }
    }
}
