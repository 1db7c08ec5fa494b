//! InstaMed polling (SPEC §8): internal services register SSO tokens; hookgate asks InstaMed for each token's
//! status every `interval` until it completes, expires or `token_ttl` passes, and publishes the outcome as an
//! event of the poller's `source` — through the same normalize → dedup → order → store path as a webhook
//! (`pipeline.rs`), so a webhook and a poll of the same transaction are one event.
//!
//! # Invariants
//!
//! - A registration is answered `202` only after its job record is committed (fsynced) to the state database;
//!   the same token again is the same job (`register.rs`).
//! - No task and no timer per job: one scheduler task per poller owns a delay queue (a binary heap keyed by the
//!   next due time); an attempt runs as a task only while it holds one of `max_in_flight` permits
//!   (`schedule.rs`).
//! - A job's final state is written only after its event is durable (stored or a duplicate). A crash in between
//!   leaves it pending: after the restart it is polled again, and the event — same id — is a duplicate, so
//!   nothing is published twice. Pending jobs are loaded at start, before the listener accepts.
//! - Neither the token nor the password is logged: logs carry [`job::token_ref`], a short hash.
//!
//! Files: `job.rs` (the record), `register.rs` (the HTTP API), `schedule.rs` (the delay queue and one
//! attempt), `instamed.rs` (the two calls and their outcomes), `soap.rs` (the envelope), `client.rs` (HTTP).

pub mod client;
pub mod instamed;
pub mod job;
pub mod metrics;
pub mod register;
mod schedule;
pub mod soap;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::auth::Verifier;
use crate::config::{self, secret::Env, ConfigError};
use crate::metrics::Metrics;
use crate::source::Source;
use crate::state::{State, StateError};

pub use job::{Job, JobState};
pub use schedule::run;

/// A configured poller at run time.
pub struct Poller {
    pub name: Arc<str>,
    /// The source whose events the results are.
    pub source: Arc<Source>,
    /// `POST <path>` registers; `GET <path>/<token>` reads a job.
    pub path: String,
    pub verifier: Verifier,
    pub interval: Duration,
    pub token_ttl: Duration,
    pub max_jobs: usize,
    upstream: instamed::Upstream,
    in_flight: Arc<Semaphore>,
    state: State,
    queue: Mutex<Queue>,
    /// Woken when a job is queued earlier than the scheduler's current sleep.
    wake: Notify,
    metrics: Metrics,
}

/// The pending jobs and the delay queue of their next attempts.
#[derive(Default)]
struct Queue {
    /// (due, sequence, token): the sequence keeps equal due times in insertion order.
    heap: BinaryHeap<Reverse<(Instant, u64, String)>>,
    seq: u64,
    /// Pending jobs by token. `durable` turns `Some(true)` once the registration is committed.
    jobs: HashMap<String, Slot>,
}

struct Slot {
    job: Job,
    durable: watch::Receiver<Option<bool>>,
}

impl Poller {
    /// Builds a poller from its validated config, resolving the password.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that cannot be used.
    pub fn build(
        name: &str,
        cfg: &config::Poller,
        source: Arc<Source>,
        server: &config::Server,
        env: &dyn Env,
        (state, metrics): (State, Metrics),
    ) -> Result<Self, ConfigError> {
        let key = format!("pollers.{name}");
        let password = password(name, cfg, env)?;
        let uri =
            |k: &str, v: &str| v.parse::<http::Uri>().map_err(|_| ConfigError::key(&format!("{key}.{k}"), "not a URL"));
        let client = client::HttpClient::new(cfg.request_timeout.0)
            .map_err(|r| ConfigError::key(&format!("{key}.sso_url"), r))?;
        let upstream = instamed::Upstream {
            client,
            sso_url: uri("sso_url", &cfg.sso_url)?,
            nvp_url: uri("nvp_url", &cfg.nvp_url)?,
            account_id: cfg.account_id.clone(),
            alias: cfg.alias.clone(),
            password,
            merchant_id: cfg.merchant_id.clone(),
            store_id: cfg.store_id.clone(),
            terminal_id: cfg.terminal_id.clone(),
        };
        Ok(Poller {
            name: Arc::from(name),
            source,
            path: cfg.path.clone().unwrap_or_else(|| format!("/poll/{name}")),
            verifier: Verifier::build(&key, &cfg.auth, server, env)?,
            interval: cfg.interval.0,
            token_ttl: cfg.token_ttl.0,
            max_jobs: cfg.max_jobs,
            upstream,
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
            state,
            queue: Mutex::default(),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Whether a request path is this poller's: `Some(None)` for `<path>`, `Some(Some(token))` for
    /// `<path>/<token>` (one segment, percent-decoded: a token's `/` comes encoded, `%2F`, so nothing below
    /// `<path>/<token>` is taken from a source; a `+` is itself).
    pub fn route(&self, path: &str) -> Option<Option<String>> {
        let rest = path.strip_prefix(self.path.as_str())?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Some(None);
        }
        let token = rest.strip_prefix('/')?;
        if token.contains('/') {
            return None;
        }
        let decoded = form_urlencoded::parse(format!("t={}", token.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        Some(Some(decoded))
    }

    fn key(&self, token: &str) -> String {
        Job::key(&self.name, token)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.token_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an attempt of `token` at `due`.
    fn schedule(&self, token: String, due: Instant) {
        let earliest = {
            let mut q = self.lock();
            q.seq += 1;
            let seq = q.seq;
            q.heap.push(Reverse((due, seq, token)));
            q.heap.peek().is_some_and(|Reverse((d, s, _))| *d == due && *s == seq)
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    /// The pending job of a token, as the scheduler or `GET` sees it now.
    fn pending(&self, token: &str) -> Option<Job> {
        self.lock().jobs.get(token).filter(|s| *s.durable.borrow() == Some(true)).map(|s| s.job.clone())
    }

    /// The stored record of a token (blocking read, run off the workers).
    async fn stored(&self, token: &str) -> Result<Option<Job>, StateError> {
        let (state, key) = (self.state.clone(), self.key(token));
        let bytes = tokio::task::spawn_blocking(move || state.poll_job(&key))
            .await
            .map_err(|_| StateError("read task failed".into()))??;
        Ok(bytes.as_deref().and_then(Job::decode))
    }

    fn gauge(&self, state: JobState) -> prometheus::IntGauge {
        self.metrics.poll.jobs.with_label_values(&[&self.name, state.as_str()])
    }

    /// Loads every stored job: pending ones are queued (spread over one `interval`), the rest counted.
    ///
    /// # Errors
    /// The state database could not be read.
    pub async fn load(&self) -> Result<usize, StateError> {
        let (state, prefix) = (self.state.clone(), self.key(""));
        let records = tokio::task::spawn_blocking(move || state.poll_jobs(&prefix))
            .await
            .map_err(|_| StateError("read task failed".into()))??;
        let mut counts = HashMap::new();
        let mut pending = Vec::new();
        for (_, bytes) in records {
            let Some(job) = Job::decode(&bytes) else { continue };
            *counts.entry(job.state).or_insert(0i64) += 1;
            if job.state == JobState::Pending {
                pending.push(job);
            }
        }
        for s in JobState::ALL {
            self.gauge(s).set(counts.get(&s).copied().unwrap_or(0));
        }
        let n = pending.len();
        let now = Instant::now();
        for (i, job) in pending.into_iter().enumerate() {
            let (done, durable) = watch::channel(Some(true));
            drop(done);
            let token = job.token.clone();
            self.lock().jobs.insert(token.clone(), Slot { job, durable });
            let spread = self.interval.mul_f64(i as f64 / n.max(1) as f64);
            self.schedule(token, now + spread);
        }
        Ok(n)
    }

    /// Recounts the finished jobs held in `data_dir` (the purge drops old ones), keeping `pending` exact.
    async fn recount(&self) {
        let (state, prefix) = (self.state.clone(), self.key(""));
        let Ok(Ok(records)) = tokio::task::spawn_blocking(move || state.poll_jobs(&prefix)).await else { return };
        let mut counts = HashMap::new();
        for (_, bytes) in records {
            if let Some(job) = Job::decode(&bytes) {
                *counts.entry(job.state).or_insert(0i64) += 1;
            }
        }
        for s in [JobState::Complete, JobState::Expired, JobState::Failed] {
            self.gauge(s).set(counts.get(&s).copied().unwrap_or(0));
        }
    }
}

/// The SSO password of a poller, from exactly one of `password`, `password_env`, `password_file`.
fn password(name: &str, cfg: &config::Poller, env: &dyn Env) -> Result<crate::config::secret::Secret, ConfigError> {
    config::secret::resolve_one(
        &format!("pollers.{name}.password"),
        cfg.password.as_ref().map(|s| s.0.as_str()),
        cfg.password_env.as_deref(),
        cfg.password_file.as_deref(),
        env,
    )
}

/// Resolves every poller's secrets and auth methods without starting anything (`hookgate check-config`).
///
/// # Errors
/// The first key that cannot be used.
pub fn check_all(cfg: &config::Config, env: &dyn Env) -> Result<(), ConfigError> {
    for (name, p) in &cfg.pollers {
        password(name, p, env)?;
        Verifier::build(&format!("pollers.{name}"), &p.auth, &cfg.server, env)?;
    }
    Ok(())
}

/// Builds every configured poller.
///
/// # Errors
/// The first poller that cannot be built.
pub fn build_all(
    cfg: &config::Config,
    sources: &[Arc<Source>],
    env: &dyn Env,
    state: &State,
    metrics: &Metrics,
) -> Result<Vec<Arc<Poller>>, ConfigError> {
    cfg.pollers
        .iter()
        .map(|(name, p)| {
            let source = sources
                .iter()
                .find(|s| *s.name == *p.source)
                .cloned()
                .ok_or_else(|| ConfigError::key(&format!("pollers.{name}.source"), "no such source"))?;
            Poller::build(name, p, source, &cfg.server, env, (state.clone(), metrics.clone())).map(Arc::new)
        })
        .collect()
}
