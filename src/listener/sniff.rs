//! Plain HTTP only: tells HTTP/2 prior knowledge from HTTP/1.1 by the first bytes (the caller bounds the wait by
//! `header_read_timeout`), and [`Rewind`] gives those bytes back to hyper. On TLS the protocol comes from ALPN.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

impl Proto {
    /// From the ALPN protocol the TLS handshake settled on (none: HTTP/1.1).
    pub fn from_alpn(alpn: Option<&[u8]>) -> Proto {
        match alpn {
            Some(b"h2") => Proto::Http2,
            _ => Proto::Http1,
        }
    }
}

/// Reads until the bytes so far either stop matching the HTTP/2 preface (HTTP/1.1) or are the whole preface
/// (HTTP/2): at most 24 bytes. `Err` when the peer closes first.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Proto, Bytes)> {
    let mut buf = Vec::with_capacity(PREFACE.len());
    let mut chunk = [0u8; PREFACE.len()];
    loop {
        let want = PREFACE.len() - buf.len();
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&buf) {
            return Ok((Proto::Http1, Bytes::from(buf)));
        }
        if buf.len() == PREFACE.len() {
            return Ok((Proto::Http2, Bytes::from(buf)));
        }
    }
}

// === impl Rewind ===

/// A stream whose first reads return `prefix`, then the stream's own bytes.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_is_http2_anything_else_http1_and_the_bytes_come_back() {
        let mut h2 = &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"[..];
        let (proto, prefix) = sniff(&mut h2).await.unwrap();
        assert_eq!((proto, &prefix[..], h2), (Proto::Http2, &PREFACE[..], &b"\x00\x00"[..]));
        let mut h1 = &b"POST / HTTP/1.1\r\nhost: x\r\n\r\n"[..];
        let (proto, prefix) = sniff(&mut h1).await.unwrap();
        assert_eq!(proto, Proto::Http1);
        let mut all = String::new();
        Rewind::new(prefix, h1).read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "POST / HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut short = &b"PRI * HT"[..];
        assert!(sniff(&mut short).await.is_err(), "closed before the preface is complete");
        assert_eq!(Proto::from_alpn(Some(b"h2")), Proto::Http2);
        assert_eq!(Proto::from_alpn(Some(b"http/1.1")), Proto::Http1);
        assert_eq!(Proto::from_alpn(None), Proto::Http1);
    }
}
