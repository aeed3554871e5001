//! PROXY protocol at the start of a client connection (`proxy_protocol:` in
//! the config): the address a load balancer's client connected from, which
//! becomes the session's client address in audit records and logs. Behind a
//! load balancer every peer address is the balancer's own; the header (v1
//! text or v2 binary, parsed by the `ppp` crate) carries the real one.
//!
//! Believed only from `trusted` peers, so a client cannot pick the address
//! it is audited under. A PostgreSQL client's first packet starts with the
//! high byte of its length (0), a header with `P` (`PROXY `) or `\r` (v2's
//! signature), so a connection without a header is told apart from its
//! first byte, without waiting for more than the client sends.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use monoio::io::AsyncReadRent;
use ppp::{v1, v2, HeaderResult, PartialResult};

use super::io::{PacketReader, ReadError};

/// Longest v2 header accepted: its address block and the TLVs cloud load
/// balancers add (VPC endpoint ids, link ids) take a few dozen bytes.
const MAX_HEADER: usize = 4096;

/// Longest v1 header, its CRLF included (the protocol's limit).
const MAX_V1: usize = 107;

/// Which peers may send a header, and whether one is required.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    trusted: Vec<IpNet>,
    required: bool,
}

impl ProxyPolicy {
    pub fn new(trusted: Vec<IpNet>, required: bool) -> ProxyPolicy {
        let trusted = trusted.into_iter().map(canonical).collect();
        ProxyPolicy { trusted, required }
    }

    /// Whether `ip` is in a trusted network (an IPv4 peer seen on an IPv6
    /// socket, `::ffff:10.0.0.5`, as its IPv4 address).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// A network of IPv4-mapped addresses (`::ffff:10.0.0.5`, as a peer on an
/// IPv6 listener is logged) as the IPv4 one it is, since peers are compared
/// as IPv4 addresses.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// Why a connection was refused before its first PostgreSQL packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A header from a peer that is not trusted.
    Untrusted,
    /// No header where one is required.
    Missing,
    /// A header that does not parse (the parser's reason).
    Malformed(String),
}

impl Refusal {
    /// The `sluice_proxy_protocol_headers_total` result it counts under.
    pub fn result(&self) -> &'static str {
        match self {
            Refusal::Untrusted => "untrusted",
            Refusal::Missing => "missing",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Untrusted => {
                f.write_str("PROXY protocol header from an address not in proxy_protocol.trusted")
            }
            Refusal::Missing => f.write_str(
                "connections must come through a trusted load balancer \
                 (a PROXY protocol header is required)",
            ),
            Refusal::Malformed(why) => write!(f, "invalid PROXY protocol header: {why}"),
        }
    }
}

/// Whether a refusal at `now` is logged as a warning: the first on this
/// thread (core), then at most one per 10 s.
pub fn warn_now(now: std::time::Instant) -> bool {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(10));
        if due {
            last.set(Some(now));
        }
        due
    })
}

/// What the bytes at the start of a connection hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header may be complete once more bytes come.
    Incomplete,
    /// A header of `len` bytes; `source` is the client's address, None
    /// when the header gives none (v2 `LOCAL`, a health check; v1
    /// `UNKNOWN`; a v2 UNIX or unspecified address).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a valid header.
    Invalid(String),
}

/// Whether a connection whose first byte is `first` starts with a header.
pub fn starts_header(first: u8) -> bool {
    first == b'P' || first == b'\r'
}

/// Parse the header at the start of `buf` (which [`starts_header`]).
pub fn parse(buf: &[u8]) -> Parsed {
    // The first byte tells the version (`HeaderResult::parse` reads a bad
    // v2 header again as v1, and gives v1's reason for it).
    let header: HeaderResult = if buf.first() == Some(&b'P') {
        // (A v1 line is parsed whole: `ppp` reads a cut one, `… 40001 54`,
        // as a complete header or a bad port.)
        let Some(lf) = memchr::memchr(b'\n', buf) else {
            return if buf.len() >= MAX_V1 {
                Parsed::Invalid(format!("no line end in {MAX_V1} bytes"))
            } else {
                Parsed::Incomplete
            };
        };
        if buf[..lf].last() != Some(&b'\r') {
            return Parsed::Invalid("the line does not end in CRLF".into());
        }
        // (The line has ended: a field it lacks is an error too.)
        v1::Header::try_from(&buf[..=lf]).into()
    } else {
        let header = v2::Header::try_from(buf);
        if header.is_incomplete() {
            return if buf.len() >= MAX_HEADER {
                Parsed::Invalid(format!("longer than {MAX_HEADER} bytes"))
            } else {
                Parsed::Incomplete
            };
        }
        header.into()
    };
    match header {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            source: match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            },
        },
        HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

/// The client's address for a connection from `peer`: the header's source
/// when the connection starts with one (consumed from `reader`), else
/// `peer`; a refusal when `policy` does not allow what came. Reads no more
/// than the header and what arrives with it.
pub async fn client_address<R: AsyncReadRent>(
    reader: &mut PacketReader,
    io: &mut R,
    policy: &ProxyPolicy,
    peer: SocketAddr,
) -> Result<Result<(SocketAddr, &'static str), Refusal>, ReadError> {
    reader.fill(io, 1).await?;
    if !starts_header(reader.leftover()[0]) {
        return Ok(if policy.required {
            Err(Refusal::Missing)
        } else {
            Ok((peer, "none"))
        });
    }
    if !policy.trusts(peer.ip()) {
        return Ok(Err(Refusal::Untrusted));
    }
    loop {
        match parse(reader.leftover()) {
            Parsed::Incomplete => {
                let have = reader.leftover().len();
                reader.fill(io, have + 1).await?;
            }
            Parsed::Header { len, source } => {
                reader.consume(len);
                return Ok(Ok(match source {
                    Some(addr) => (addr, "accepted"),
                    None => (peer, "no_address"),
                }));
            }
            Parsed::Invalid(why) => return Ok(Err(Refusal::Malformed(why))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: v2::Command, addresses: impl Into<v2::Addresses>) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers_give_the_source_address_and_their_length() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.2 40001 5432\r\n";
        let mut buf = h.to_vec();
        buf.extend_from_slice(&[0, 0, 0, 8, 4, 210, 22, 47]);
        assert_eq!(
            parse(&buf),
            Parsed::Header {
                len: h.len(),
                source: Some(addr("203.0.113.7:40001"))
            }
        );
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40002 5432\r\n";
        assert_eq!(
            parse(h6),
            Parsed::Header {
                len: h6.len(),
                source: Some(addr("[2001:db8::7]:40002"))
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn v2_headers_give_the_source_address_unless_local() {
        let h = v2_header(
            v2::Command::Proxy,
            (addr("203.0.113.9:40003"), addr("10.0.0.2:5432")),
        );
        let mut buf = h.clone();
        buf.extend_from_slice(b"rest");
        assert_eq!(
            parse(&buf),
            Parsed::Header {
                len: h.len(),
                source: Some(addr("203.0.113.9:40003"))
            }
        );
        let local = v2_header(v2::Command::Local, v2::Addresses::Unspecified);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: local.len(),
                source: None
            }
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete_and_garbage_is_invalid() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.2 40001 5432\r\n".to_vec();
        let v2 = v2_header(
            v2::Command::Proxy,
            (addr("[2001:db8::9]:1"), addr("[2001:db8::1]:5432")),
        );
        for h in [v1, v2] {
            for n in 1..h.len() {
                assert_eq!(parse(&h[..n]), Parsed::Incomplete, "{n} of {h:?}");
            }
        }
        for bad in [
            &b"PROXY TCP4 not-an-address 10.0.0.2 1 2\r\n"[..],
            b"PROXY TCP9 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PRIXY TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x11\x11\0\x0c",
            b"PROXY TCP4 203.0.113.7 10.0.0.2 40001 5432\n\0\0\0\x08",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        // A v1 line that never ends is cut at the protocol's 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        // A v2 header announcing more than the limit is refused once the
        // limit is reached, not waited for.
        let mut big = v2_header(v2::Command::Local, v2::Addresses::Unspecified);
        big[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        big.resize(MAX_HEADER, 0);
        assert!(matches!(parse(&big), Parsed::Invalid(_)));
    }

    /// The refusal names what is wrong with the header an operator's load
    /// balancer sent.
    #[test]
    fn a_malformed_header_is_refused_for_its_own_reason() {
        let why = |buf: &[u8]| match parse(buf) {
            Parsed::Invalid(why) => why,
            other => panic!("{buf:?}: {other:?}"),
        };
        let mut version_one = v2_header(
            v2::Command::Proxy,
            (addr("203.0.113.9:40003"), addr("10.0.0.2:5432")),
        );
        version_one[12] = 0x11;
        assert!(
            why(&version_one).contains("version"),
            "{}",
            why(&version_one)
        );
        // An IPv4 address block cut to 8 bytes.
        let mut short = version_one[..16].to_vec();
        short[12..16].copy_from_slice(&[0x21, 0x11, 0, 8]);
        short.extend_from_slice(&[203, 0, 113, 9, 10, 0, 0, 2]);
        assert!(why(&short).contains("address family"), "{}", why(&short));
        // A v1 line ended by LF alone, and one that ends before its ports.
        let lf = why(b"PROXY TCP4 203.0.113.7 10.0.0.2 40001 5432\n\0\0\0\x08");
        assert!(lf.contains("CRLF"), "{lf}");
        let cut = why(b"PROXY TCP4 203.0.113.7 10.0.0.2\r\n");
        assert!(cut.contains("port"), "{cut}");
    }

    #[test]
    fn a_postgres_first_packet_is_not_a_header() {
        // SSLRequest, GSSENCRequest, CancelRequest, a startup packet: each
        // starts with the high byte of a length of at most
        // `limits.max_startup_packet_bytes` (1 MiB), which is 0.
        let mut startup = 196_608u32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0agent1\0\0");
        startup.splice(0..0, (startup.len() as u32 + 4).to_be_bytes());
        assert!(matches!(
            crate::protocol::startup::parse(&startup),
            Ok(crate::protocol::startup::StartupPacket::Startup(_))
        ));
        for first in [
            &[0u8, 0, 0, 8, 4, 210, 22, 47][..],
            &[0, 0, 0, 8, 4, 210, 22, 48],
            &[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2],
            &startup,
        ] {
            assert!(!starts_header(first[0]), "{first:?}");
        }
        assert!(starts_header(b"PROXY "[0]) && starts_header(b"\r\n\r\n"[0]));
    }

    #[test]
    fn trusted_networks_match_ipv4_peers_seen_as_ipv6() {
        let p = ProxyPolicy::new(
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            false,
        );
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(p.trusts("2001:db8::5".parse().unwrap()));
        assert!(!p.trusts("11.0.0.1".parse().unwrap()));
        assert!(!p.trusts("::ffff:11.0.0.1".parse().unwrap()));
    }

    /// A refused peer on an IPv6 listener is logged as
    /// `[::ffff:10.0.0.5]:41000`: that address, put in `trusted` as logged,
    /// trusts it.
    #[test]
    fn trusted_networks_written_ipv4_mapped_match_their_ipv4_peers() {
        let p = ProxyPolicy::new(
            vec![
                "::ffff:10.0.0.5/128".parse().unwrap(),
                "::ffff:192.168.0.0/112".parse().unwrap(),
            ],
            false,
        );
        assert!(p.trusts("::ffff:10.0.0.5".parse().unwrap()));
        assert!(p.trusts("10.0.0.5".parse().unwrap()));
        assert!(p.trusts("::ffff:192.168.3.4".parse().unwrap()));
        assert!(!p.trusts("10.0.0.6".parse().unwrap()));
        assert!(!p.trusts("::ffff:192.169.0.1".parse().unwrap()));
    }

    /// What the `proxy_header` fuzz target asserts, over generated headers
    /// (v1 and v2, with TLVs) followed by arbitrary bytes, and over
    /// arbitrary bytes that start like a header.
    mod props {
        use super::*;
        use proptest::prelude::*;

        fn invariants(data: &[u8]) {
            if let Parsed::Header { len, source } = parse(data) {
                assert!(len > 0 && len <= data.len());
                assert_eq!(parse(&data[..len]), Parsed::Header { len, source });
                for k in 1..len {
                    assert!(
                        !matches!(parse(&data[..k]), Parsed::Header { .. }),
                        "a {k}-byte prefix of a {len}-byte header parsed as one: {data:?}"
                    );
                }
            }
        }

        fn v1() -> impl Strategy<Value = Vec<u8>> {
            (
                any::<[u8; 4]>(),
                any::<[u16; 8]>(),
                any::<u16>(),
                any::<bool>(),
            )
                .prop_map(|(v4, v6, port, six)| {
                    let line = if six {
                        let a = std::net::Ipv6Addr::from(v6);
                        format!("PROXY TCP6 {a} {a} {port} 5432\r\n")
                    } else {
                        let a = std::net::Ipv4Addr::from(v4);
                        format!("PROXY TCP4 {a} {a} {port} 5432\r\n")
                    };
                    line.into_bytes()
                })
        }

        fn v2() -> impl Strategy<Value = Vec<u8>> {
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..40),
            )
                .prop_map(|(ip, port, local, tlv)| {
                    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
                    h.push(if local { 0x20 } else { 0x21 });
                    h.push(0x11);
                    h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
                    h.extend_from_slice(&ip);
                    h.extend_from_slice(&[10, 0, 0, 1]);
                    h.extend_from_slice(&port.to_be_bytes());
                    h.extend_from_slice(&5432u16.to_be_bytes());
                    h.extend_from_slice(&tlv);
                    h
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn a_header_then_anything(
                h in prop_oneof![v1(), v2()],
                rest in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let data = [h.as_slice(), &rest].concat();
                let whole = matches!(parse(&data), Parsed::Header { len, .. } if len == h.len());
                prop_assert!(whole, "{:?}", parse(&data));
                invariants(&data);
            }

            #[test]
            fn bytes_that_start_like_a_header(
                first in prop_oneof![Just(b'P'), Just(b'\r')],
                rest in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                let data = [&[first][..], &rest].concat();
                invariants(&data);
            }
        }
    }
}
