//! The request path, stage by stage, top to bottom. No other logic lives here: each stage is a call into its
//! module, and every failure is a [`PipelineError`] turned into an answer by `respond.rs`.
//!
//! ```text
//! route → rate limit → header cap → head auth → read body (in-flight budget) → auth → parse → normalize →
//! dedup claim → order check → store (broker or spool) → dedup done (queued for the next group commit, not
//! waited for) → respond
//! ```
//!
//! The rate limits (per client address, global, per source) are checked right after routing, on the headers
//! alone: a refused request costs no body read and no auth work. They apply to unknown paths too (a scanner is
//! limited like a sender), counted under `source="unmatched"`.
//!
//! The whole path runs under the source's answer deadline (`ack_timeout` minus a margin): whatever the broker
//! or the client does, the provider gets an answer before its own timeout.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Full;
use tokio::time::Instant;

use crate::auth::{Authenticated, Peer, Unverified};
use crate::dedup::{Claim, Dedup};
use crate::error::PipelineError;
use crate::event::Event;
use crate::http::{check_header_bytes, read_body, BodyBudget, BodyPermit};
use crate::metrics::Metrics;
use crate::normalize::{EventMeta, Fields};
use crate::order::Order;
use crate::parse::{self, Format, Payload};
use crate::publish::Sink;
use crate::ratelimit::RateLimits;
use crate::respond::Stored;
use crate::router::{Route, Router};
use crate::source::Source;

mod answer;

/// Distinct `type` label values kept per source before the rest are counted as `other`.
const MAX_TYPE_LABELS: usize = 64;
/// A shared in-flight claim outlives the source's `ack_timeout` by this much (then a crashed holder's expires).
const CLAIM_GRACE: Duration = Duration::from_secs(5);

/// The `[server]` limits every request is read under.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// `server.max_inflight_body_bytes`, shared by every connection.
    pub bodies: BodyBudget,
}

/// Everything the request path needs.
pub struct Gateway {
    /// The routing table (and with it every source's auth and limits); a reload swaps it whole. Each request
    /// reads it once, so a request in flight finishes with the source it was routed to.
    pub router: ArcSwap<Router>,
    pub sink: Arc<dyn Sink>,
    pub dedup: Dedup,
    pub order: Order,
    pub metrics: Metrics,
    /// `[rate_limits]`: per client and global (each source holds its own bucket).
    pub limits: Arc<RateLimits>,
    /// InstaMed pollers: their registration paths are answered before the sources are routed.
    pub pollers: Vec<Arc<crate::poll::Poller>>,
    /// The header cap, the body timeout and the in-flight body budget.
    pub reading: RequestLimits,
    type_labels: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    /// The ERROR line about deliveries not stored: one per [`STORE_ERROR_EVERY`], with the count.
    store_errors: crate::telemetry::Throttle,
}

/// At most one ERROR line per this period about deliveries not stored (each one is also counted in
/// `hookgate_posting_errors_total`).
pub const STORE_ERROR_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Gateway {
    pub fn new(
        router: Router,
        sink: Arc<dyn Sink>,
        (dedup, order): (Dedup, Order),
        metrics: Metrics,
        limits: Arc<RateLimits>,
        reading: RequestLimits,
    ) -> Self {
        Gateway {
            router: ArcSwap::from_pointee(router),
            sink,
            dedup,
            order,
            metrics,
            reading,
            limits,
            pollers: Vec::new(),
            type_labels: Mutex::default(),
            store_errors: crate::telemetry::Throttle::new(STORE_ERROR_EVERY),
        }
    }

    /// Adds the pollers whose registration API this gateway answers.
    #[must_use]
    pub fn with_pollers(mut self, pollers: Vec<Arc<crate::poll::Poller>>) -> Self {
        self.pollers = pollers;
        self
    }

    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>, peer: Peer) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let request_id = next_request_id();
        let client_ip = peer.client_ip(req.headers());
        // A poller's registration API: the global and per-client limits apply, then its own auth (`poll/register.rs`).
        if let Some((poller, token)) = self.pollers.iter().find_map(|p| p.route(req.uri().path()).map(|t| (p, t))) {
            if let Err(limited) = self.limits.check(client_ip, None) {
                return self.finish(None, request_id, None, started, Err(limited.into()));
            }
            return crate::poll::register::handle(poller, req, peer, token, &self.reading).await;
        }
        let route = self.router.load().route(req.method(), req.uri().path());
        let routed = match &route {
            Route::Matched { source, .. } | Route::MethodNotAllowed { source } => Some(source.as_ref()),
            Route::NotFound => None,
        };
        if let Err(limited) = self.limits.check(client_ip, routed.and_then(|s| s.rate_limit.as_ref())) {
            return self.finish(routed, request_id, None, started, Err(limited.into()));
        }
        let (source, params) = match route {
            Route::Matched { source, params } => (source, params),
            Route::MethodNotAllowed { source } => {
                let allow = source.methods.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
                return self.finish(
                    Some(&source),
                    request_id,
                    None,
                    started,
                    Err(PipelineError::MethodNotAllowed { allow }),
                );
            }
            Route::NotFound => return self.finish(None, request_id, None, started, Err(PipelineError::NotFound)),
        };
        let deadline = started + source.answer_within();
        let mut event_id = None;
        let result =
            match tokio::time::timeout_at(deadline, self.process(&source, req, peer, params, deadline, &mut event_id))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(PipelineError::Deadline),
            };
        self.finish(Some(&source), request_id, event_id.as_deref(), started, result)
    }

    async fn process<B>(
        &self,
        source: &Source,
        req: Request<B>,
        peer: Peer,
        params: Vec<(String, String)>,
        deadline: Instant,
        event_id: &mut Option<String>,
    ) -> Result<Stored, PipelineError>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        check_header_bytes(&parts.headers, self.reading.max_header_bytes)?;
        let content_length = content_length(&parts.headers)?;
        let client_ip = peer.client_ip(&parts.headers);
        let mut unverified = Unverified { parts, body: Bytes::new(), peer, client_ip, now: SystemTime::now() };
        source.verifier.verify_head(&unverified).await.map_err(|e| self.auth_failed(source, e))?;
        let body_until = deadline.min(Instant::now() + self.reading.body_read_timeout);
        // The body's bytes stay held in the in-flight budget until its event is stored or refused — after the
        // answer, when the store outlives the deadline.
        let (bytes, held) =
            read_body(body, content_length, source.max_body_bytes, body_until, self.reading.bodies.permit(client_ip))
                .await?;
        unverified.body = bytes;
        let request = source.verifier.verify(unverified).await.map_err(|e| self.auth_failed(source, e))?;
        // Parsed, normalized and dropped before anything waits: a parsed tree can cost tens of times its body (a
        // body of tiny objects), and the store step may wait up to the deadline.
        let event = event_of(source, &request, &params)?;
        drop(request);
        self.ingest_event(source, (event, held), deadline, event_id).await
    }

    /// dedup claim → order check → store → dedup done: the one path of every event after parse and
    /// normalization ([`normalized`]) — a webhook's, a polling job's receipt (`poll/schedule.rs`), and the
    /// `sso.*` events a poller raises itself.
    ///
    /// # Errors
    /// The event is not durable (and its dedup claim is released), or another copy is being stored.
    pub async fn ingest_event(
        &self,
        source: &Source,
        (mut event, held): (Event, BodyPermit),
        deadline: Instant,
        event_id: &mut Option<String>,
    ) -> Result<Stored, PipelineError> {
        *event_id = Some(event.id.clone());
        let guard = match self.dedup.claim(&source.name, &event.id, source.ack_timeout + CLAIM_GRACE, deadline).await {
            Claim::Duplicate => {
                self.metrics.retries.with_label_values(&[&source.name]).inc();
                return Ok(Stored::Duplicate);
            }
            Claim::Busy => return Err(PipelineError::InFlight),
            Claim::Unavailable => return Err(PipelineError::DedupUnavailable),
            Claim::New(guard) => guard,
        };
        if self.order.observe(&event, source.dedup_window).await {
            event.out_of_order = true;
            self.metrics.out_of_order.with_label_values(&[&source.name]).inc();
        }
        // Storing and recording the id run as their own task: a provider that hangs up (or the answer deadline)
        // cancels this request, but never an event half-way between the broker's confirm and its dedup record.
        // A failure drops the guard, which releases the claim: the provider's retry is admitted. The task holds
        // the body's share of the in-flight budget, so stores that outlive their answers (a stuck disk) are
        // bounded by it: new deliveries are turned away at once instead.
        let (sink, window, metrics) = (self.sink.clone(), source.dedup_window, self.metrics.clone());
        let event = tokio::spawn(async move {
            let _held = held;
            sink.store(&event, deadline).await?;
            guard
                .complete(window, move |failed| {
                    for store in failed.stores() {
                        metrics.dedup_record_failures.with_label_values(&[store]).inc();
                    }
                })
                .await;
            Ok::<Event, crate::store::StoreError>(event)
        })
        .await
        .map_err(|_| PipelineError::StoreTaskFailed)??;
        let type_label = self.type_label(&source.name, &event.kind);
        self.metrics.events.with_label_values(&[source.name.as_ref(), type_label]).inc();
        self.metrics.request_body_bytes.with_label_values(&[&source.name]).observe(event.body.len() as f64);
        Ok(Stored::Stored)
    }

    fn auth_failed(&self, source: &Source, e: crate::auth::AuthError) -> PipelineError {
        self.metrics.auth_failures.with_label_values(&[&source.name, e.method()]).inc();
        PipelineError::Auth(e)
    }

    /// Keeps the `type` label a closed set: the first few distinct types per source, then `other`.
    fn type_label<'k>(&self, source: &Arc<str>, kind: &'k str) -> &'k str {
        let mut seen = self.type_labels.lock().unwrap_or_else(|e| e.into_inner());
        let types = seen.entry(source.clone()).or_default();
        if types.contains(kind) {
            return kind;
        }
        if types.len() < MAX_TYPE_LABELS {
            types.insert(kind.to_string());
            return kind;
        }
        "other"
    }
}

fn next_request_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The declared body length. RFC 9112 §6.3 framing is hyper's: with both `Content-Length` and `Transfer-Encoding`
/// it drops the `Content-Length` before the request gets here, reads the chunks and closes the connection after
/// the answer (`docs/http-answers.md`; tested on the wire).
pub(crate) fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, PipelineError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse().ok()).map(Some).ok_or(PipelineError::BadFraming),
    }
}

/// An authenticated delivery's event: its body parsed and normalized; the parsed tree does not outlive it.
fn event_of(source: &Source, request: &Authenticated, params: &[(String, String)]) -> Result<Event, PipelineError> {
    let (format, payload) = parse_body(source, request)?;
    let query = query_pairs(request.parts().uri.query());
    let published = published_body(request, format, params, &query);
    let signed = signed_only(source, request);
    let parsed = match &signed {
        None => Parsed { payload: &payload, params, query: &query, headers: &request.parts().headers },
        Some(headers) => Parsed { payload: &payload, params: &[], query: &[], headers },
    };
    Ok(normalized(source, &parsed, published))
}

/// The event of a parsed delivery (a webhook's, or a polling job's receipt): its metadata extracted by the
/// source's normalization rules, the published body and content type as given.
pub fn normalized(source: &Source, parsed: &Parsed<'_>, (content_type, body): (String, Bytes)) -> Event {
    let fields =
        Fields { payload: parsed.payload, params: parsed.params, query: parsed.query, headers: parsed.headers };
    let meta = source.rules.extract(&fields, &body);
    build_event(source, meta, content_type, body)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// Content type → parsed payload, if the source takes that type. A body-less delivery (Tyro GET/DELETE) needs no
/// content type, and a `GET` or `DELETE` with an empty body is body-less whatever content type it names (Tyro
/// sends the headers a client asked for with every webhook).
fn parse_body<'r>(source: &Source, request: &'r Authenticated) -> Result<(Format, Payload<'r>), PipelineError> {
    let method = &request.parts().method;
    if request.body().is_empty() && (method == http::Method::GET || method == http::Method::DELETE) {
        return Ok((Format::Empty, Payload::Empty));
    }
    let content_type = request.parts().headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("\u{0}"));
    if content_type.is_some_and(|ct| ct.len() > 255) {
        return Err(parse::ParseError::UnsupportedMediaType.into());
    }
    let format = parse::format_of(content_type, request.body().len())?;
    if !source.accepts.allows(format, content_type) {
        return Err(parse::ParseError::UnsupportedMediaType.into());
    }
    Ok((format, parse::parse(format, request.body())?))
}

/// What normalization reads of a parsed delivery: the payload's fields, then path and query parameters, then
/// the request headers.
pub struct Parsed<'a> {
    pub payload: &'a Payload<'a>,
    pub params: &'a [(String, String)],
    pub query: &'a [(String, String)],
    pub headers: &'a http::HeaderMap,
}

/// The headers normalization may read. On an `hmac` source only the ones the scheme signs (and, by the caller,
/// no path or query parameters): a captured body replayed to another path stays the same event.
fn signed_only(source: &Source, request: &Authenticated) -> Option<http::HeaderMap> {
    let all = &request.parts().headers;
    let signed = source.verifier.signed_headers()?;
    let mut headers = http::HeaderMap::new();
    for name in signed {
        if let Some(value) = all.get(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    Some(headers)
}

/// What is published: the provider's bytes with the request's content type, or, for a body-less delivery, a JSON
/// object of its path and query parameters.
fn published_body(
    request: &Authenticated,
    format: Format,
    params: &[(String, String)],
    query: &[(String, String)],
) -> (String, Bytes) {
    if format != Format::Empty {
        let ct = request.parts().headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        return (ct.to_string(), request.body().clone());
    }
    let mut map = serde_json::Map::new();
    for (k, v) in params.iter().chain(query.iter()) {
        map.entry(k.clone()).or_insert_with(|| serde_json::Value::String(v.clone()));
    }
    let json = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_else(|_| b"{}".to_vec());
    ("application/json".to_string(), Bytes::from(json))
}

pub fn build_event(source: &Source, meta: EventMeta, content_type: String, body: Bytes) -> Event {
    Event {
        source: source.name.clone(),
        id: meta.id,
        kind: meta.kind,
        subject: meta.subject,
        time: meta.time,
        rank: meta.rank,
        received_at: chrono::Utc::now(),
        content_type,
        body,
        out_of_order: false,
    }
}

#[cfg(test)]
mod tests;
