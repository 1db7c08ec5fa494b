//! The client address used by `ip_allow` and the per-client rate limit.
//!
//! Invariants:
//! - It is the socket's peer address unless that peer is in `server.trusted_proxies`. Only then is a PROXY
//!   protocol v2 header or `X-Forwarded-For` believed; anyone else could write any address there.
//! - With `server.proxy_protocol = true`, every connection must open with a PROXY v2 header, from a trusted
//!   proxy. A connection from an untrusted peer, or with a malformed header, is dropped before TLS and HTTP.
//! - `X-Forwarded-For` is read right to left, skipping the trusted proxies that appended to it; the first other
//!   address is the client. An entry that is not an IP address stops the walk at the last trusted hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::auth::ip::canonical;

/// The 12-byte signature that opens a PROXY protocol v2 header.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longer address blocks are refused (the largest standard one, AF_UNIX, is 216 bytes; TLVs may follow).
const MAX_BLOCK: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the peer is not a trusted proxy")]
    Untrusted,
    #[error("not a PROXY protocol v2 header")]
    BadSignature,
    #[error("unsupported PROXY version or command")]
    BadVersion,
    #[error("the PROXY address block is malformed")]
    BadAddress,
    #[error("the PROXY header could not be read")]
    Io,
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// Reads a PROXY v2 header from a connection from `peer`. `Ok(None)`: a `LOCAL` connection (the proxy's own
/// health check) or an address family without an IP address; the socket address stands.
///
/// # Errors
/// A [`ProxyError`]: the connection must be dropped.
pub async fn read_proxy_v2<S: AsyncRead + Unpin>(
    io: &mut S,
    peer: IpAddr,
    trusted: &[IpNet],
) -> Result<Option<SocketAddr>, ProxyError> {
    if !is_trusted(peer, trusted) {
        return Err(ProxyError::Untrusted);
    }
    let mut head = [0u8; 16];
    io.read_exact(&mut head).await.map_err(|_| ProxyError::Io)?;
    let (local, family, len) = parse_head(&head)?;
    if len > MAX_BLOCK {
        return Err(ProxyError::BadAddress);
    }
    let mut block = vec![0u8; len];
    io.read_exact(&mut block).await.map_err(|_| ProxyError::Io)?;
    let addr = parse_block(family, &block)?;
    Ok(if local { None } else { addr })
}

/// The fixed 16 bytes: signature, version 2 and command, family, length. Returns (is LOCAL, family, length).
fn parse_head(head: &[u8; 16]) -> Result<(bool, u8, usize), ProxyError> {
    if head[..12] != SIGNATURE {
        return Err(ProxyError::BadSignature);
    }
    let local = match head[12] {
        0x20 => true,
        0x21 => false,
        _ => return Err(ProxyError::BadVersion),
    };
    Ok((local, head[13], usize::from(u16::from_be_bytes([head[14], head[15]]))))
}

/// The source address of the address block (TLVs after it are ignored).
fn parse_block(family: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match family >> 4 {
        0x1 if matches!(family & 0x0f, 0x1 | 0x2) => {
            let b = block.get(..12).ok_or(ProxyError::BadAddress)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(&b[8..10]))))
        }
        0x2 if matches!(family & 0x0f, 0x1 | 0x2) => {
            let b = block.get(..36).ok_or(ProxyError::BadAddress)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port(&b[32..34]))))
        }
        0x0 | 0x3 => Ok(None),
        _ => Err(ProxyError::BadAddress),
    }
}

/// The client address of a request from `peer` (the socket's, or the one a PROXY header gave).
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else { return peer };
        hops.extend(text.split(',').map(str::trim));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else { return client };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    fn xff(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let t = trusted();
        assert_eq!(client_ip(ip("203.0.113.9"), &xff(&["216.177.67.4"]), &t), ip("203.0.113.9"), "spoofed");
        assert_eq!(client_ip(ip("10.0.0.5"), &xff(&["216.177.67.4"]), &t), ip("216.177.67.4"));
        assert_eq!(client_ip(ip("10.0.0.5"), &xff(&["216.177.67.4, 1.2.3.4, 10.0.0.7"]), &t), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.5"), &xff(&["216.177.67.4", "1.2.3.4"]), &t), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.5"), &xff(&["216.177.67.4, junk, 10.0.0.7"]), &t), ip("10.0.0.7"));
        assert_eq!(client_ip(ip("10.0.0.5"), &xff(&[]), &t), ip("10.0.0.5"));
    }

    fn v2(cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let len = u16::try_from(block.len()).unwrap().to_be_bytes();
        [&SIGNATURE[..], &[cmd, family], &len, block].concat()
    }

    async fn read(bytes: &[u8], peer: &str) -> Result<Option<SocketAddr>, ProxyError> {
        let mut io = bytes;
        read_proxy_v2(&mut io, peer.parse().unwrap(), &trusted()).await
    }

    #[tokio::test]
    async fn proxy_v2_headers() {
        let tcp4 = [216, 177, 67, 4, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb];
        assert_eq!(read(&v2(0x21, 0x11, &tcp4), "10.0.0.5").await, Ok(Some("216.177.67.4:40000".parse().unwrap())));
        let mut tcp6 = [0u8; 36];
        tcp6[15] = 1;
        tcp6[33] = 80;
        assert_eq!(read(&v2(0x21, 0x21, &tcp6), "10.0.0.5").await, Ok(Some("[::1]:80".parse().unwrap())));
        assert_eq!(read(&v2(0x20, 0x11, &tcp4), "10.0.0.5").await, Ok(None), "LOCAL");
        assert_eq!(read(&v2(0x21, 0x00, &[]), "10.0.0.5").await, Ok(None), "UNSPEC");
        assert_eq!(read(&v2(0x21, 0x11, &tcp4), "203.0.113.9").await, Err(ProxyError::Untrusted));
        assert_eq!(read(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "10.0.0.5").await, Err(ProxyError::BadSignature));
        assert_eq!(read(&v2(0x11, 0x11, &tcp4), "10.0.0.5").await, Err(ProxyError::BadVersion));
        assert_eq!(read(&v2(0x21, 0x11, &tcp4[..6]), "10.0.0.5").await, Err(ProxyError::BadAddress));
        assert_eq!(read(&v2(0x21, 0x51, &tcp4), "10.0.0.5").await, Err(ProxyError::BadAddress));
        assert_eq!(read(&v2(0x21, 0x11, &tcp4)[..20], "10.0.0.5").await, Err(ProxyError::Io), "truncated");
        assert_eq!(read(&v2(0x21, 0x11, &[0u8; 2000]), "10.0.0.5").await, Err(ProxyError::BadAddress), "too long");
    }
}
