//! The hyper service of one connection: hands each request to the pipeline with the connection's peer; the
//! header cap; and body reading under the source's byte cap, its time limit and the global in-flight budget.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

mod budget;

pub use budget::{BodyBudget, BodyPermit};

use crate::auth::Peer;
use crate::error::PipelineError;
use crate::listener::Activity;
use crate::pipeline::Gateway;

/// The service for one connection; each request is marked in flight on `activity` until it is answered.
pub fn service(
    gateway: Arc<Gateway>,
    peer: Peer,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let (gateway, peer, busy) = (gateway.clone(), peer.clone(), activity.begin());
        async move {
            let resp = gateway.handle(req, peer).await;
            drop(busy);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// `server.max_header_bytes`: the names and values of all request headers together. hyper bounds the raw head
/// (HTTP/1.1) and the header list (HTTP/2) a little above this, so the exact count is here.
///
/// # Errors
/// [`PipelineError::HeadersTooLarge`].
pub fn check_header_bytes(headers: &HeaderMap, max: usize) -> Result<(), PipelineError> {
    let total: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if total > max {
        return Err(PipelineError::HeadersTooLarge);
    }
    Ok(())
}

/// Reads a whole body: at most `max` bytes (checked on `Content-Length` first, then while streaming), finished
/// by `until`, each byte held in `held` (a permit of the budget for the request's client; a declared
/// `Content-Length` at once), which it returns with the body and which gives the bytes back when dropped.
///
/// # Errors
/// [`PipelineError::TooLarge`], [`PipelineError::Overloaded`], [`PipelineError::BodyTimeout`] or
/// [`PipelineError::BodyRead`].
pub async fn read_body<B>(
    body: B,
    content_length: Option<u64>,
    max: u64,
    until: Instant,
    mut held: BodyPermit,
) -> Result<(Bytes, BodyPermit), PipelineError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if content_length.is_some_and(|n| n > max) {
        return Err(PipelineError::TooLarge);
    }
    held.grow(content_length.unwrap_or(0))?;
    let capacity = usize::try_from(content_length.unwrap_or(0)).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(capacity);
    let read = async {
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| PipelineError::BodyRead)?.into_data() else { continue };
            let total = (buf.len() + data.len()) as u64;
            if total > max {
                return Err(PipelineError::TooLarge);
            }
            held.grow(total)?;
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout_at(until, read).await {
        Err(_) => Err(PipelineError::BodyTimeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok((buf.freeze(), held)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static [u8]]) -> impl hyper::body::Body<Data = Bytes, Error = Infallible> {
        let frames = chunks.iter().map(|c| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(c))));
        http_body_util::StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>()))
    }

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    /// A permit of `budget` for a client of its own (the per-client share is `budget::tests`' subject).
    fn own(budget: &BodyBudget, n: u8) -> BodyPermit {
        budget.permit(std::net::IpAddr::from([192, 0, 2, n]))
    }

    #[tokio::test]
    async fn bodies_hold_the_budget_until_answered_and_past_it_are_refused() {
        let budget = BodyBudget::new(10, 2);
        let (a, held) = read_body(body(&[b"abc", b"def"]), None, 100, later(), own(&budget, 1)).await.unwrap();
        assert_eq!((&a[..], budget.available()), (&b"abcdef"[..], 4));
        // Declared: refused before a byte is read.
        let e = read_body(body(&[b"12345"]), Some(5), 100, later(), own(&budget, 2)).await.unwrap_err();
        assert!(matches!(e, PipelineError::Overloaded), "{e:?}");
        // Streamed: refused when the chunk that passes it arrives; what it held is given back.
        let e = read_body(body(&[b"123", b"45"]), None, 100, later(), own(&budget, 3)).await.unwrap_err();
        assert!(matches!(e, PipelineError::Overloaded), "{e:?}");
        assert_eq!(budget.available(), 4);
        drop(held);
        assert_eq!(budget.available(), 10);
        let (b, _held) = read_body(body(&[b"12345"]), Some(5), 100, later(), own(&budget, 4)).await.unwrap();
        assert_eq!((&b[..], budget.available()), (&b"12345"[..], 5));
        let e = read_body(body(&[b"123", b"45"]), None, 4, later(), own(&budget, 5)).await.unwrap_err();
        assert!(matches!(e, PipelineError::TooLarge), "{e:?}");
    }

    #[test]
    fn header_bytes_count_names_and_values_of_every_header() {
        let mut h = HeaderMap::new();
        h.insert("x-a", http::HeaderValue::from_static("12345"));
        h.append("x-a", http::HeaderValue::from_static("1"));
        assert!(check_header_bytes(&h, 12).is_ok());
        assert!(matches!(check_header_bytes(&h, 11), Err(PipelineError::HeadersTooLarge)));
    }
}
