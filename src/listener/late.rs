//! HTTP/1.1: a request head that is late is answered `408 Request Timeout` before the connection closes (SPEC §5:
//! "answered `408 Request Timeout` where HTTP still allows an answer, else the connection is closed").
//!
//! [`drive`](super::idle::drive) marks the connection's [`Activity`] late when its head is due. [`LateAnswer`],
//! the stream between hyper and the socket (or TLS), then writes the answer — only when part of a head came in
//! since the last answer; a silent connection is closed without one, since nothing was asked — and ends the read
//! side, so hyper stops. The answer goes out once, whether hyper is reading the head or shutting the connection
//! down when it notices; a peer that does not read it is dropped with the connection (`CLOSE_GRACE`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::idle::Activity;

/// The whole answer: no body, and the connection closes after it.
pub const ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// A connection's stream that answers a late head (see the module docs).
pub struct LateAnswer<I> {
    inner: I,
    activity: Arc<Activity>,
    /// Bytes came in since the last answer was written: part of a head.
    partial: bool,
    /// How much of [`ANSWER`] is written.
    sent: usize,
}

impl<I> LateAnswer<I> {
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        LateAnswer { inner, activity, partial: false, sent: 0 }
    }
}

impl<I: AsyncWrite + Unpin> LateAnswer<I> {
    /// Writes and flushes what is left of [`ANSWER`] when it is owed; `Ready` once it is out or cannot be.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.partial {
            return Poll::Ready(Ok(()));
        }
        let done = ready!(self.poll_write_answer(cx));
        // Written, or failed: either way it is not tried again.
        self.partial = false;
        Poll::Ready(done)
    }

    fn poll_write_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = ANSWER.get(self.sent..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for LateAnswer<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.is_late() {
            // The answer, then end of input: hyper stops reading and closes. A failed write closes all the same.
            let _ = ready!(this.poll_answer(cx));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.partial = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for LateAnswer<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.partial = false;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.partial = false;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.is_late() {
            let _ = ready!(this.poll_answer(cx));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
