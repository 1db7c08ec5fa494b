//! The hyper service of one connection: hands each request to the pipeline with the connection's peer, and
//! reads bodies under the source's byte cap and time limit.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::auth::Peer;
use crate::error::PipelineError;
use crate::pipeline::Gateway;

/// The service for one connection.
pub fn service(
    gateway: Arc<Gateway>,
    peer: Peer,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let (gateway, peer) = (gateway.clone(), peer.clone());
        async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
    })
}

/// Reads a whole body: at most `max` bytes (checked on `Content-Length` first, then while streaming) and
/// finished by `until`.
///
/// # Errors
/// [`PipelineError::TooLarge`], [`PipelineError::BodyTimeout`] or [`PipelineError::BodyRead`].
pub async fn read_body<B>(
    body: B,
    content_length: Option<u64>,
    max: u64,
    until: Instant,
) -> Result<Bytes, PipelineError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if content_length.is_some_and(|n| n > max) {
        return Err(PipelineError::TooLarge);
    }
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match tokio::time::timeout_at(until, limited.collect()).await {
        Err(_) => Err(PipelineError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(PipelineError::TooLarge),
        Ok(Err(_)) => Err(PipelineError::BodyRead),
    }
}
