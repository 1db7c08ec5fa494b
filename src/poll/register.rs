//! The registration API of a poller, on the public listener and authenticated like a source:
//!
//! - `POST <path>` with `{"token": "..."}` → `202 Accepted` (body: the job, as `GET` shows it) once the job is
//!   committed to `data_dir`; the same token again → `202`, the same job. Bad JSON, no `token`, or a token that
//!   is not 1–256 base64/URL-safe characters → `400`; no or wrong credentials → `401`/`403`; more than
//!   `max_jobs` pending → `503 Too Many Jobs`; the state database failing → `503 Store Unavailable`.
//! - `GET <path>/<token>` → `200` with the job's state as JSON, `404` for a token never registered (or purged).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::ext::ReasonPhrase;
use tokio::sync::watch;
use tokio::time::Instant;

use super::job::{valid_token, Job};
use super::{Poller, Slot};
use crate::auth::{Peer, Unverified};
use crate::error::PipelineError;
use crate::parse::ParseError;
use crate::state::{now_ms, Op};

/// A registration body larger than this is refused (`413`).
pub const MAX_BODY_BYTES: u64 = 4096;
/// A registration (auth, body, durable write) is answered within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// Why a registration got no `2xx`.
enum Refusal {
    Pipeline(PipelineError),
    Full,
    NotStored,
    Unknown,
}

impl From<PipelineError> for Refusal {
    fn from(e: PipelineError) -> Self {
        Refusal::Pipeline(e)
    }
}

/// Answers one request to `<path>` (`token` = `None`) or `<path>/<token>`.
pub async fn handle<B>(
    poller: &Poller,
    req: Request<B>,
    peer: Peer,
    token: Option<String>,
    reading: &crate::pipeline::RequestLimits,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let allowed = matches!((&token, &method), (None, &Method::POST) | (Some(_), &Method::GET));
    if !allowed {
        let allow = if token.is_some() { "GET" } else { "POST" };
        return refused(poller, Refusal::Pipeline(PipelineError::MethodNotAllowed { allow: allow.into() }));
    }
    let deadline = Instant::now() + DEADLINE;
    let result = tokio::time::timeout_at(deadline, async {
        let body_until = deadline.min(Instant::now() + reading.body_read_timeout);
        let body = authenticate(poller, req, peer, body_until, reading).await?;
        match token {
            None => register(poller, &body).await.map(|job| (StatusCode::ACCEPTED, "Accepted", job)),
            Some(token) => lookup(poller, &token).await.map(|job| (StatusCode::OK, "OK", job)),
        }
    })
    .await
    .unwrap_or(Err(Refusal::NotStored));
    match result {
        Ok((status, phrase, job)) => {
            tracing::info!(poller = %poller.name, job = %super::job::token_ref(&job.token), state = job.state.as_str(), status = status.as_u16(), "poll job answered");
            json_answer(status, phrase, &job)
        }
        Err(r) => refused(poller, r),
    }
}

async fn authenticate<B>(
    poller: &Poller,
    req: Request<B>,
    peer: Peer,
    body_until: Instant,
    reading: &crate::pipeline::RequestLimits,
) -> Result<Bytes, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    crate::http::check_header_bytes(&parts.headers, reading.max_header_bytes)?;
    let content_length = crate::pipeline::content_length(&parts.headers)?;
    let client_ip = peer.client_ip(&parts.headers);
    let mut unverified = Unverified { parts, body: Bytes::new(), peer, client_ip, now: SystemTime::now() };
    poller.verifier.verify_head(&unverified).await.map_err(PipelineError::Auth)?;
    // The registration body is small; it leaves the in-flight budget once verified.
    let held = reading.bodies.permit(client_ip);
    let (bytes, _held) = crate::http::read_body(body, content_length, MAX_BODY_BYTES, body_until, held).await?;
    unverified.body = bytes;
    let request = poller.verifier.verify(unverified).await.map_err(PipelineError::Auth)?;
    Ok(request.body().clone())
}

fn malformed(why: &'static str) -> Refusal {
    Refusal::Pipeline(PipelineError::Parse(ParseError::Malformed("JSON", why)))
}

/// Reads the token of a registration body.
fn token_of(body: &[u8]) -> Result<String, Refusal> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| malformed("not JSON"))?;
    let token = value.get("token").and_then(|t| t.as_str()).ok_or_else(|| malformed("no token"))?;
    if !valid_token(token) {
        return Err(malformed("not a valid token"));
    }
    Ok(token.to_string())
}

async fn register(poller: &Poller, body: &[u8]) -> Result<Job, Refusal> {
    let token = token_of(body)?;
    if let Some(job) = wait_durable(poller, &token).await? {
        return Ok(job);
    }
    if let Some(job) = poller.stored(&token).await.map_err(|_| Refusal::NotStored)? {
        return Ok(job);
    }
    let (done, durable) = watch::channel(None);
    let job = {
        let mut q = poller.lock();
        if q.jobs.contains_key(&token) {
            None
        } else if q.jobs.len() >= poller.max_jobs {
            return Err(Refusal::Full);
        } else {
            let job = Job::new(token.clone(), now_ms());
            q.jobs.insert(token.clone(), Slot { job: job.clone(), durable });
            Some(job)
        }
    };
    // Registered by a concurrent request since the first look: the same job.
    let Some(job) = job else { return wait_durable(poller, &token).await?.ok_or(Refusal::NotStored) };
    let op = Op::PollJob { key: poller.key(&token), record: job.encode(), expires_ms: job.expires_ms(poller.ttl_ms()) };
    if let Err(error) = poller.state.write(vec![op]).await {
        tracing::error!(poller = %poller.name, %error, "poll job not stored");
        poller.lock().jobs.remove(&token);
        let _ = done.send(Some(false));
        return Err(Refusal::NotStored);
    }
    let _ = done.send(Some(true));
    poller.gauge(super::JobState::Pending).inc();
    poller.schedule(token, Instant::now());
    Ok(job)
}

/// When a registration of `token` is pending (or being committed), waits for its commit and returns the job.
async fn wait_durable(poller: &Poller, token: &str) -> Result<Option<Job>, Refusal> {
    let Some(mut durable) = poller.lock().jobs.get(token).map(|s| s.durable.clone()) else { return Ok(None) };
    let committed = durable.wait_for(Option::is_some).await.map(|v| *v == Some(true)).unwrap_or(true);
    if !committed {
        return Err(Refusal::NotStored);
    }
    Ok(poller.pending(token))
}

async fn lookup(poller: &Poller, token: &str) -> Result<Job, Refusal> {
    if !valid_token(token) {
        return Err(Refusal::Unknown);
    }
    if let Some(job) = poller.pending(token) {
        return Ok(job);
    }
    poller.stored(token).await.map_err(|_| Refusal::NotStored)?.ok_or(Refusal::Unknown)
}

fn json_answer(status: StatusCode, phrase: &'static str, job: &Job) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&job.to_json()).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(ReasonPhrase::from_static(phrase.as_bytes()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn refused(poller: &Poller, refusal: Refusal) -> Response<Full<Bytes>> {
    let error = match refusal {
        Refusal::Pipeline(e) => e,
        Refusal::Full => return plain(poller, StatusCode::SERVICE_UNAVAILABLE, "Too Many Jobs"),
        Refusal::NotStored => return plain(poller, StatusCode::SERVICE_UNAVAILABLE, "Store Unavailable"),
        Refusal::Unknown => return plain(poller, StatusCode::NOT_FOUND, "Not Found"),
    };
    if let PipelineError::Auth(a) = &error {
        poller.metrics.auth_failures.with_label_values(&[&poller.name, a.method()]).inc();
    }
    tracing::warn!(poller = %poller.name, reason = error.reason(), "poll registration refused");
    crate::respond::response(&Err(error), StatusCode::SERVICE_UNAVAILABLE)
}

/// An answer of the poller's own (not a pipeline outcome): the phrase is also the body.
fn plain(poller: &Poller, status: StatusCode, phrase: &'static str) -> Response<Full<Bytes>> {
    if status.is_server_error() {
        tracing::warn!(poller = %poller.name, status = status.as_u16(), phrase, "poll registration not answered 2xx");
    }
    let mut resp = Response::new(Full::new(Bytes::from(format!("{phrase}\n"))));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(ReasonPhrase::from_static(phrase.as_bytes()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5u32));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_bodies_are_checked() {
        assert_eq!(token_of(br#"{"token":"NTJmY2Y5"}"#).ok().as_deref(), Some("NTJmY2Y5"));
        for bad in [&b"{"[..], b"[]", br#"{"tok":"x"}"#, br#"{"token":5}"#, br#"{"token":""}"#, br#"{"token":"a b"}"#] {
            assert!(token_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"token":"{}"}}"#, "a".repeat(300));
        assert!(token_of(long.as_bytes()).is_err());
    }
}
