//! The delay queue of one poller and one attempt of one job.
//!
//! One task per poller sleeps until the earliest due time in the heap (or until a registration queues an
//! earlier one), then starts an attempt for every due job — each only after taking one of `max_in_flight`
//! permits, so the calls to InstaMed in flight stay bounded and a backlog waits in the heap, not in tasks.
//!
//! An attempt: `GetSSOTokenStatus`; `NEW` → due again after `interval`; `COMPLETE`/`USED` → `ViewReceipt`, and
//! the NVP answer enters the pipeline as an event of the poller's source; `EXPIRED` → `<source>.sso.expired`.
//! An upstream error is retried after a back-off (doubling from `interval`, capped at 8 × `interval`, with
//! jitter), never past the token's life. At `token_ttl` (one last call is made then) the job ends: `expired`
//! if InstaMed last said `NEW`, `failed` if the last call was an upstream error; both publish
//! `<source>.sso.expired` (SPEC §8), whose body's `state` and `last_error` tell the two apart.
//! A completed token whose receipt cannot be stored (broker and spool down) is retried past `token_ttl`: the
//! payment is known to have happened and must not be lost.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::instamed::Outcome;
use super::job::token_ref;
use super::soap::TokenStatus;
use super::{Job, JobState, Poller};
use crate::event::Event;
use crate::http::BodyPermit;
use crate::parse::{self, Format};
use crate::pipeline::{normalized, Gateway, Parsed};
use crate::respond::Stored;
use crate::state::{now_ms, Op};

/// A pending job's record is written at least every this many attempts.
const PERSIST_EVERY: u32 = 10;
/// Longest back-off, in intervals.
const MAX_BACKOFF_INTERVALS: u32 = 8;
/// How often finished jobs are recounted for `hookgate_poll_jobs`.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);
/// In-flight attempts get this long to finish at shutdown; the rest are dropped (and resumed at the next start).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the poller until `shutdown`.
pub async fn run(poller: Arc<Poller>, gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let mut attempts = JoinSet::new();
    let mut recount = tokio::time::interval(RECOUNT_EVERY);
    'run: loop {
        while attempts.try_join_next().is_some() {}
        let next = poller.lock().heap.peek().map(|r| r.0 .0);
        let sleep = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)));
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = poller.wake.notified() => continue,
            _ = recount.tick() => {
                poller.recount().await;
                continue;
            }
            () = sleep => {}
        }
        while let Some(token) = pop_due(&poller, Instant::now()) {
            while attempts.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = poller.in_flight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'run,
                },
                () = shutdown.cancelled() => {
                    poller.schedule(token, Instant::now());
                    break 'run;
                }
            };
            let (poller, gateway) = (poller.clone(), gateway.clone());
            attempts.spawn(async move {
                attempt(&poller, &gateway, &token).await;
                drop(permit);
            });
        }
    }
    let _ = tokio::time::timeout(STOP_GRACE, async { while attempts.join_next().await.is_some() {} }).await;
}

fn pop_due(poller: &Poller, now: Instant) -> Option<String> {
    let mut q = poller.lock();
    if q.heap.peek().is_some_and(|r| r.0 .0 <= now) {
        return q.heap.pop().map(|r| r.0 .2);
    }
    None
}

/// How a job continues after an attempt.
enum Next {
    Again(Instant),
    Finish(JobState, Option<String>),
}

async fn attempt(poller: &Poller, gateway: &Gateway, token: &str) {
    let Some(mut job) = poller.pending(token) else { return };
    let before = (job.last_status.clone(), job.last_error.clone());
    let life_end_ms = job.registered_ms.saturating_add(poller.ttl_ms());
    let next = step(poller, gateway, &mut job, life_end_ms).await;
    job.updated_ms = now_ms();
    match next {
        Next::Again(due) => {
            // The stored record is advisory while pending (the queue holds the live one, which `GET` reads):
            // written when what it says changes, and every few attempts for the counters.
            if before != (job.last_status.clone(), job.last_error.clone()) || job.attempts % PERSIST_EVERY == 0 {
                poller.state.write_later(vec![record(poller, &job)]);
            }
            if let Some(slot) = poller.lock().jobs.get_mut(token) {
                slot.job = job;
            }
            poller.schedule(token.to_string(), due);
        }
        Next::Finish(state, event_id) => finish(poller, job, state, event_id).await,
    }
}

/// One status call and what follows from it.
async fn step(poller: &Poller, gateway: &Gateway, job: &mut Job, life_end_ms: u64) -> Next {
    job.attempts += 1;
    let outcome = poller.upstream.token_status(&job.token).await;
    count(poller, "token_status", outcome);
    let past_life = now_ms() >= life_end_ms;
    match outcome {
        Outcome::Status(TokenStatus::New) => {
            note(job, outcome, Some(TokenStatus::New));
            if past_life {
                return publish_final(poller, gateway, job, JobState::Expired).await;
            }
            Next::Again(due_in(poller.interval, life_end_ms))
        }
        Outcome::Status(TokenStatus::Expired) => {
            note(job, outcome, Some(TokenStatus::Expired));
            publish_final(poller, gateway, job, JobState::Expired).await
        }
        Outcome::Status(TokenStatus::Complete) => {
            note(job, outcome, Some(TokenStatus::Complete));
            receipt(poller, gateway, job, past_life).await
        }
        error => upstream_error(poller, gateway, job, error, past_life, life_end_ms).await,
    }
}

async fn receipt(poller: &Poller, gateway: &Gateway, job: &mut Job, past_life: bool) -> Next {
    job.attempts += 1;
    let body = match poller.upstream.view_receipt(&job.token).await {
        Ok(body) => body,
        Err(outcome) => {
            count(poller, "view_receipt", outcome);
            let life_end = job.registered_ms.saturating_add(poller.ttl_ms());
            return upstream_error(poller, gateway, job, outcome, past_life, life_end).await;
        }
    };
    let Ok(payload) = parse::parse(Format::Nvp, &body) else {
        count(poller, "view_receipt", Outcome::Garbage);
        let life_end = job.registered_ms.saturating_add(poller.ttl_ms());
        return upstream_error(poller, gateway, job, Outcome::Garbage, past_life, life_end).await;
    };
    count(poller, "view_receipt", Outcome::Receipt);
    let headers = http::HeaderMap::new();
    let parsed = Parsed { payload: &payload, params: &[], query: &[], headers: &headers };
    let source = &poller.source;
    let event = normalized(source, &parsed, ("application/x-www-form-urlencoded".to_string(), body.clone()));
    drop(payload);
    let deadline = Instant::now() + source.answer_within();
    let mut event_id = None;
    match gateway.ingest_event(source, (event, BodyPermit::default()), deadline, &mut event_id).await {
        Ok(stored) => {
            log_stored(poller, job, stored, "poll receipt stored");
            Next::Finish(JobState::Complete, event_id)
        }
        Err(error) => {
            // Known complete: retried (also past the token's life) until the store takes it.
            tracing::error!(poller = %poller.name, job = %token_ref(&job.token), reason = error.reason(), "poll receipt not stored");
            job.failures += 1;
            job.last_error = Some("store".into());
            Next::Again(Instant::now() + backoff(poller, job))
        }
    }
}

async fn upstream_error(
    poller: &Poller,
    gateway: &Gateway,
    job: &mut Job,
    outcome: Outcome,
    past_life: bool,
    life_end_ms: u64,
) -> Next {
    job.failures += 1;
    job.last_error = Some(outcome.as_str().into());
    tracing::warn!(poller = %poller.name, job = %token_ref(&job.token), outcome = outcome.as_str(), failures = job.failures, "poll upstream error");
    if past_life {
        return publish_final(poller, gateway, job, JobState::Failed).await;
    }
    let delay = backoff(poller, job);
    Next::Again(due_in(delay, life_end_ms))
}

fn note(job: &mut Job, _outcome: Outcome, status: Option<TokenStatus>) {
    job.failures = 0;
    job.last_error = None;
    job.last_status = status.map(|s| s.as_str().to_string());
}

/// Now + `delay`, but never past the end of the token's life (the last call is made then).
fn due_in(delay: Duration, life_end_ms: u64) -> Instant {
    let left = Duration::from_millis(life_end_ms.saturating_sub(now_ms()));
    Instant::now() + delay.min(left)
}

/// `interval` × 2^(failures−1), capped at [`MAX_BACKOFF_INTERVALS`] intervals, ±20 % jitter (so jobs that failed
/// together do not retry together).
fn backoff(poller: &Poller, job: &Job) -> Duration {
    let factor = 1u32 << job.failures.saturating_sub(1).min(3);
    let base = poller.interval * factor.min(MAX_BACKOFF_INTERVALS);
    let seed = crate::normalize::sha256_hex(format!("{}{}", job.token, job.attempts).as_bytes());
    let r = u32::from_str_radix(seed.get(..4).unwrap_or("0"), 16).unwrap_or(0) as f64 / 65535.0;
    base.mul_f64(0.8 + 0.4 * r)
}

fn count(poller: &Poller, call: &str, outcome: Outcome) {
    poller.metrics.poll.requests.with_label_values(&[&poller.name, call, outcome.as_str()]).inc();
}

fn log_stored(poller: &Poller, job: &Job, stored: Stored, msg: &'static str) {
    tracing::info!(poller = %poller.name, job = %token_ref(&job.token), outcome = ?stored, attempts = job.attempts, "{msg}");
}

/// Publishes `<source>.sso.expired` for a job that ends without a receipt (`state` expired or failed).
async fn publish_final(poller: &Poller, gateway: &Gateway, job: &mut Job, state: JobState) -> Next {
    let event = sso_event(poller, job, state);
    let deadline = Instant::now() + poller.source.answer_within();
    let mut event_id = None;
    match gateway.ingest_event(&poller.source, (event, BodyPermit::default()), deadline, &mut event_id).await {
        Ok(stored) => {
            log_stored(poller, job, stored, "poll outcome stored");
            Next::Finish(state, event_id)
        }
        Err(error) => {
            tracing::error!(poller = %poller.name, job = %token_ref(&job.token), reason = error.reason(), "poll outcome not stored");
            Next::Again(Instant::now() + backoff(poller, job))
        }
    }
}

/// The event a job raises itself: type `sso.expired` (SPEC §8: on `EXPIRED` or at `token_ttl`, whatever the last
/// call said), the token as subject, a small JSON body whose `state` says `expired` or `failed`.
fn sso_event(poller: &Poller, job: &Job, state: JobState) -> Event {
    let kind = "sso.expired";
    let id = format!("{}:{kind}", job.token);
    let id = if id.len() > 200 { format!("sha256:{}", crate::normalize::sha256_hex(id.as_bytes())) } else { id };
    let body = serde_json::json!({
        "poller": &*poller.name,
        "token": job.token,
        "state": state.as_str(),
        "attempts": job.attempts,
        "last_status": job.last_status,
        "last_error": job.last_error,
        "registered_at": job.to_json()["registered_at"],
    });
    Event {
        source: poller.source.name.clone(),
        id,
        kind: kind.to_string(),
        subject: Some(job.token.clone()),
        time: Some(chrono::Utc::now()),
        rank: None,
        received_at: chrono::Utc::now(),
        content_type: "application/json".to_string(),
        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        out_of_order: false,
    }
}

fn record(poller: &Poller, job: &Job) -> Op {
    Op::PollJob { key: poller.key(&job.token), record: job.encode(), expires_ms: job.expires_ms(poller.ttl_ms()) }
}

/// Writes the final state durably, then drops the job from the queue. If the write fails the job stays pending
/// and is tried again (its event, same id, is then a duplicate).
async fn finish(poller: &Poller, mut job: Job, state: JobState, event_id: Option<String>) {
    job.state = state;
    job.finished_ms = Some(job.updated_ms);
    job.event_id = event_id;
    if let Err(error) = poller.state.write(vec![record(poller, &job)]).await {
        tracing::error!(poller = %poller.name, job = %token_ref(&job.token), %error, "poll job state not stored");
        poller.schedule(job.token.clone(), Instant::now() + poller.interval);
        return;
    }
    poller.lock().jobs.remove(&job.token);
    poller.gauge(JobState::Pending).dec();
    poller.gauge(state).inc();
    let took = Duration::from_millis(job.updated_ms.saturating_sub(job.registered_ms));
    poller.metrics.poll.duration.with_label_values(&[&poller.name]).observe(took.as_secs_f64());
    tracing::info!(poller = %poller.name, job = %token_ref(&job.token), state = state.as_str(), attempts = job.attempts, "poll job finished");
}
