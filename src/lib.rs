//! hookgate: a reliable webhook fan-out gateway.
//!
//! Providers (InstaMed, Tyro Health, a prepaid-card processor, Standard Webhooks senders) post events; hookgate
//! authenticates each delivery by its source's rules, answers only once the event is durable (confirmed by
//! RabbitMQ, or fsynced to the local spool), drops provider retries, flags events that arrive out of order, and
//! publishes every event once to a topic exchange as a CloudEvent.
//!
//! # Layout
//!
//! Request path, in order:
//!
//! - [`tls`]: rustls server config — chain, key, optional client-CA verifier, ALPN.
//! - [`listener`]: accept loop, connection cap, PROXY v2 header, TLS handshake timeout, HTTP/2 or HTTP/1.1 by
//!   ALPN (a bounded sniff on plain HTTP), idle connections closed, drain.
//! - [`client_addr`]: the client address — socket, or PROXY header / `X-Forwarded-For` from trusted proxies.
//! - [`http`]: the per-connection hyper service; the header cap; body reading under a byte cap, a time limit and
//!   the in-flight body budget shared by all connections.
//! - [`pipeline`]: calls the stages below in order for one request; no other logic.
//! - [`router`]: (method, path) → configured [`source::Source`]; path parameters.
//! - [`ratelimit`]: governor buckets per client address, global and per source → 429; the pruned, capped
//!   per-client map.
//! - [`auth`]: `Unverified` → `Authenticated`; one check per method in `auth/`.
//! - [`parse`]: content type → payload; JSON, XML, NVP with size and depth limits.
//! - [`normalize`]: payload → event id, type, subject, time, rank; one preset per provider. Pure.
//! - [`event`]: the event envelope.
//! - [`dedup`]: the idempotency index — claim, complete, release; local, or shared by replicas in Redis.
//! - [`order`]: out-of-order detection per `(source, subject)`.
//! - [`store`]: the durable [`publish::Sink`]: the broker first, the spool when it does not confirm in time.
//! - [`publish`]: lapin connection supervisor, confirm channel pool, the CloudEvents AMQP message.
//! - [`spool`]: the encrypted, crash-safe append-only log of unconfirmed events, and its drainer.
//! - [`respond`]: the one mapping from outcome to HTTP status and reason phrase.
//!
//! Beside the request path: [`poll`] (InstaMed polling: the registration API, durable jobs in the state
//! database, one delay queue per poller; results enter the pipeline after `parse`, as a webhook's do).
//!
//! Cross-cutting: [`config`] (typed, strict, validated), [`source`] (a source built from config, secrets
//! resolved), [`error`] (classification), [`state`] (the embedded redb database under `storage.data_dir`),
//! [`private_fs`] (`0700` directories and `0600` files under `data_dir`),
//! [`metrics`] (every family; the admin listener), [`telemetry`], [`shutdown`], [`reload`] (`SIGHUP`: re-read the
//! file, swap TLS and sources whole, or refuse it). Tools: [`tail`] (`hookgate tail`,
//! prints what lands in the exchange).
#![forbid(unsafe_code)]

pub mod auth;
pub mod client_addr;
pub mod config;
pub mod dedup;
pub mod error;
pub mod event;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod normalize;
pub mod order;
pub mod parse;
pub mod pipeline;
pub mod poll;
pub mod private_fs;
pub mod publish;
pub mod ratelimit;
pub mod reload;
pub mod respond;
pub mod router;
pub mod shutdown;
pub mod source;
pub mod spool;
pub mod state;
pub mod store;
pub mod tail;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{secret::Env, Config};
use crate::dedup::{redis::Shared, Dedup};
use crate::metrics::{Metrics, Readiness};
use crate::order::Order;
use crate::pipeline::Gateway;
use crate::publish::{Publisher, Sink};
use crate::spool::Spool;
use crate::state::State;
use crate::store::Store;

/// Confirm channels per broker connection.
const CONFIRM_CHANNELS: usize = 4;

/// Sockets the gateway serves on (bound by the caller, so tests can use port 0).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `[server] listen` and `[admin] listen`.
    ///
    /// # Errors
    /// When either address cannot be bound.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let public = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on server.listen {}", config.server.listen))?;
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
        Ok(Listeners { public, admin })
    }
}

/// A running gateway.
pub struct App {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    reloader: reload::Reloader,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    /// The admin listener and its own stop, cancelled once every other task has finished.
    admin: (tokio::task::JoinHandle<()>, CancellationToken),
}

impl App {
    /// Builds every stage from a validated config (resolving secrets through `env`) and starts serving.
    /// `path` is the file `config` was loaded from: [`App::reload`] reads it again (with the same `env`).
    ///
    /// # Errors
    /// A configuration problem found while building (a secret, certificate or spool key that cannot be loaded,
    /// as a [`config::ConfigError`]), or storage that cannot be opened (`data_dir`, the spool, Redis).
    pub async fn start(
        config: &Config,
        path: &Path,
        env: Arc<dyn Env>,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> anyhow::Result<App> {
        let sources = source::build_all(config, &*env).map_err(|e| e.in_file(path))?;
        let tls = match &config.server.tls {
            Some(tls) => Some(tls::Current::new(tls::server_config(tls).map_err(|e| e.in_file(path))?)),
            None => {
                tracing::warn!(
                    "server.tls is not configured: serving PLAIN HTTP. Development only — never expose this"
                );
                None
            }
        };
        let metrics = Metrics::new();
        crate::tls::record_expiry(&metrics, config.server.tls.as_ref().and_then(tls::not_after));
        let storage = Storage::open(config, &*env, &metrics).await?;
        // Stopped only after the listener has drained, so in-flight requests still get their confirms.
        let after_drain = CancellationToken::new();
        let (publisher, publisher_task) =
            Publisher::start(publish_settings(config, &*env)?, metrics.clone(), after_drain.clone());
        // Replay runs first: until the drainer has seen the spool empty, /readyz is 503 and new events queue
        // behind the spooled ones.
        let replayed = Arc::new(AtomicBool::new(storage.spool.is_empty()));
        let spools = (storage.spool.clone(), storage.parked.clone());
        let store = Store::new(publisher.clone(), spools, replayed.clone(), metrics.clone());
        let sink: Arc<dyn Sink> = Arc::new(store);
        let drainer = spool::Drainer {
            spool: storage.spool,
            parked: storage.parked,
            publisher,
            metrics: metrics.clone(),
            replayed,
        };
        let drain_task = tokio::spawn(drainer.run(after_drain.clone(), false));
        let pollers = poll::build_all(config, &sources, &*env, &storage.state, &metrics)?;
        for p in &pollers {
            let pending = p.load().await.context("cannot read the polling jobs in storage.data_dir")?;
            tracing::info!(poller = %p.name, source = %p.source.name, path = %p.path, methods = ?p.verifier.methods(), pending, "poller configured");
        }
        let router = router::Router::new(sources);
        let rate_limits = Arc::new(ratelimit::RateLimits::new(&config.rate_limits, metrics.rate_limiter_keys.clone()));
        metrics.set_ack_timeouts(router.sources().map(|s| (&*s.name, s.ack_timeout)));
        for s in router.sources() {
            tracing::info!(source = %s.name, preset = %s.preset, methods = ?s.verifier.methods(), "source configured");
        }
        let gateway = Arc::new(
            Gateway::new(
                router,
                sink.clone(),
                (storage.dedup, storage.order),
                metrics.clone(),
                rate_limits.clone(),
                pipeline::RequestLimits {
                    body_read_timeout: config.server.body_read_timeout.0,
                    max_header_bytes: config.server.max_header_bytes,
                    bodies: http::BodyBudget::new(config.server.max_inflight_body_bytes),
                },
            )
            .with_pollers(pollers.clone()),
        );
        let reloader = reload::Reloader::new(path, env, config.clone(), gateway.clone(), tls.clone(), metrics.clone());
        let ready_sink = sink.clone();
        let readiness = Arc::new(Readiness {
            store_ready: Some(Arc::new(move || ready_sink.ready())),
            shutdown: shutdown.clone(),
            ..Readiness::default()
        });
        let public_addr = listeners.public.local_addr()?;
        let admin_addr = listeners.admin.local_addr()?;
        let limits = listener::Limits {
            max_connections: config.server.max_connections,
            tls_handshake_timeout: config.server.tls_handshake_timeout.0,
            header_read_timeout: config.server.header_read_timeout.0,
            max_header_bytes: config.server.max_header_bytes,
            idle_timeout: config.server.idle_timeout.0,
            http2_max_concurrent_streams: config.server.http2_max_concurrent_streams,
            drain_timeout: config.server.drain_timeout.0,
            trusted_proxies: Arc::from(config.server.trusted_proxies.clone()),
            proxy_protocol: config.server.proxy_protocol,
        };
        // Shutdown order: /readyz turns 503 and the listener stops accepting at once; when every in-flight request
        // is answered (or drain_timeout passes), the spool drainer stops (every spooled record is already fsynced;
        // the rest is replayed at the next start) and the publisher closes AMQP; the admin listener stops last
        // (App::wait), so /readyz answers 503 until the process exits.
        let serve_task = tokio::spawn({
            let (gateway, metrics, shutdown, after_drain, readiness) =
                (gateway.clone(), metrics.clone(), shutdown.clone(), after_drain.clone(), readiness.clone());
            async move {
                let draining = {
                    let (shutdown, readiness) = (shutdown.clone(), readiness.clone());
                    tokio::spawn(async move {
                        shutdown.cancelled().await;
                        readiness.draining.store(true, Ordering::Release);
                    })
                };
                listener::serve(listeners.public, tls, gateway, limits, metrics, shutdown).await;
                draining.abort();
                readiness.draining.store(true, Ordering::Release);
                after_drain.cancel();
            }
        });
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(metrics::serve_admin(
            listeners.admin,
            metrics.clone(),
            readiness.clone(),
            config.server.header_read_timeout.0,
            admin_stop.clone(),
        ));
        readiness.listener_up.store(true, Ordering::Release);
        let mut tasks = Vec::new();
        for p in pollers {
            tasks.push(("poller", tokio::spawn(poll::run(p, gateway.clone(), after_drain.clone()))));
        }
        let purge_task = tokio::spawn(purge_loop(gateway, after_drain.clone()));
        let state_task = tokio::spawn(watch_state(storage.state.clone(), after_drain.clone()));
        let prune_task = tokio::spawn(ratelimit::prune_loop(rate_limits, after_drain));
        tracing::info!(public = %public_addr, admin = %admin_addr, tls = config.server.tls.is_some(), "hookgate serving");
        Ok(App {
            public_addr,
            admin_addr,
            metrics,
            shutdown,
            reloader,
            admin: (admin_task, admin_stop),
            tasks: [
                ("listener", serve_task),
                ("publisher", publisher_task),
                ("spool drainer", drain_task),
                ("state writer", state_task),
                ("purge", purge_task),
                ("rate limiter prune", prune_task),
            ]
            .into_iter()
            .chain(tasks)
            .collect(),
        })
    }

    /// Re-reads the config file and applies what can change live (what `SIGHUP` does; see [`reload`]).
    ///
    /// # Errors
    /// The file was refused (it names the file and the key); the running configuration keeps serving.
    pub async fn reload(&self) -> Result<reload::Applied, config::ConfigError> {
        self.reloader.reload().await
    }

    /// A handle that reloads this gateway (for the `SIGHUP` task, which outlives [`App::wait`]'s borrow).
    pub fn reloader(&self) -> reload::Reloader {
        self.reloader.clone()
    }

    /// Waits until every task has finished, then stops the admin listener (so `/readyz` answers 503 until the
    /// end). A critical task (listener, publisher supervisor, spool drainer, state writer, admin listener, ...)
    /// that ends before `shutdown`, or panics, is a failure: it is logged, the rest of the gateway is shut down
    /// (a drain), and the error names it, so the process exits non-zero instead of serving half-alive.
    ///
    /// # Errors
    /// The name of the first task that did not end cleanly.
    pub async fn wait(self) -> anyhow::Result<()> {
        let (mut admin, admin_stop) = self.admin;
        let supervised = supervise(self.tasks, &self.shutdown);
        tokio::pin!(supervised);
        let mut failed = tokio::select! {
            failed = &mut supervised => failed,
            result = &mut admin => {
                died("admin", &result, &self.shutdown);
                let _ = supervised.await;
                Some("admin")
            }
        };
        if !admin.is_finished() {
            admin_stop.cancel();
            if admin.await.is_err() {
                failed.get_or_insert("admin");
            }
        }
        match failed {
            Some(name) => anyhow::bail!("the {name} task stopped"),
            None => Ok(()),
        }
    }
}

/// Awaits every task. The first to end before `shutdown` (or to panic) is a death: logged once, `shutdown` is
/// cancelled so the others drain, and its name is returned.
pub async fn supervise(
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    shutdown: &CancellationToken,
) -> Option<&'static str> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut pending: FuturesUnordered<_> =
        tasks.into_iter().map(|(name, task)| async move { (name, task.await) }).collect();
    let mut failed = None;
    while let Some((name, result)) = pending.next().await {
        if result.is_err() || !shutdown.is_cancelled() {
            died(name, &result, shutdown);
            failed.get_or_insert(name);
        }
    }
    failed
}

fn died(name: &'static str, result: &Result<(), tokio::task::JoinError>, shutdown: &CancellationToken) {
    let panicked = result.as_ref().is_err_and(tokio::task::JoinError::is_panic);
    tracing::error!(task = name, panicked, "a critical task stopped; shutting the gateway down");
    shutdown.cancel();
}

/// Ends if the state writer thread dies (a critical task), or at `shutdown`.
async fn watch_state(state: State, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    while state.writer_alive() {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Every minute: one slice of the index purged (and its filter rebuilt), and the filter's size and the record
/// log's rows reported.
async fn purge_loop(gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                gateway.dedup.purge().await;
                let bytes = i64::try_from(gateway.dedup.filter_bytes()).unwrap_or(i64::MAX);
                gateway.metrics.state_filter_bytes.set(bytes);
                let rows = i64::try_from(gateway.dedup.log_rows()).unwrap_or(i64::MAX);
                gateway.metrics.state_log_rows.set(rows);
            }
            () = shutdown.cancelled() => {
                // Every request is answered by now: commit the dedup records still queued before exiting.
                gateway.dedup.flush().await;
                return;
            }
        }
    }
}

/// The publisher's settings from `[broker]`.
///
/// # Errors
/// The broker URL cannot be resolved.
pub fn publish_settings(config: &Config, env: &dyn Env) -> anyhow::Result<publish::Settings> {
    Ok(publish::Settings {
        urls: config.broker_urls(env)?,
        exchange: config.broker.exchange.clone(),
        declare_exchange: config.broker.declare_exchange,
        alternate_exchange: config.broker.alternate().map(str::to_string),
        publish_timeout: config.broker.publish_timeout.0,
        channels: CONFIRM_CHANNELS,
    })
}

/// Everything under `storage.data_dir` (and the shared store), opened and recovered.
pub struct Storage {
    pub dedup: Dedup,
    pub order: Order,
    pub spool: Spool,
    /// Spooled events that turned out unroutable.
    pub parked: Spool,
    /// The state database (the polling jobs live there too).
    pub state: State,
}

impl Storage {
    /// Opens the state database (which also locks `data_dir` against a second process), connects the shared
    /// store, and opens the spool, recovering it from any crash point.
    ///
    /// # Errors
    /// A bad spool key, an unusable `data_dir`, a spool that cannot be decrypted, or Redis unreachable.
    pub async fn open(config: &Config, env: &dyn Env, metrics: &Metrics) -> anyhow::Result<Storage> {
        let s = &config.storage;
        let cipher = spool::crypto::load_key(s, env)?;
        if cipher.is_none() {
            tracing::warn!(
                "storage.spool_key_file / spool_key_env not set: the spool is written UNENCRYPTED. Development only"
            );
        }
        let cache_bytes = usize::try_from(s.cache_bytes).unwrap_or(usize::MAX);
        let state = State::open_with(&s.data_dir, cache_bytes, s.filter_bytes)
            .with_context(|| format!("cannot open the state in storage.data_dir {}", s.data_dir.display()))?;
        let shared = match &s.shared {
            Some(url) => Some(Shared::connect(url, &s.shared_prefix).await.context("cannot reach storage.shared")?),
            None => None,
        };
        let spool = open_spool(&Spool::dir_of(&s.data_dir), cipher.clone(), s.spool_max_bytes, metrics)?;
        let parked = open_spool(&Spool::parked_dir_of(&s.data_dir), cipher, s.spool_max_bytes, metrics)?;
        metrics.spool_events.set(i64::try_from(spool.len()).unwrap_or(i64::MAX));
        metrics.spool_parked.set(i64::try_from(parked.len()).unwrap_or(i64::MAX));
        metrics.spool_max_bytes.set(i64::try_from(s.spool_max_bytes).unwrap_or(i64::MAX));
        tracing::info!(records = spool.len(), encrypted = spool.encrypted(), shared = shared.is_some(), "storage open");
        let (dedup, order) = (Dedup::new(state.clone(), shared.clone()), Order::new(state.clone(), shared));
        Ok(Storage { dedup, order, spool, parked, state })
    }
}

/// Opens one spool directory, logging what recovery did.
fn open_spool(
    dir: &std::path::Path,
    cipher: Option<spool::Cipher>,
    max_bytes: u64,
    metrics: &Metrics,
) -> anyhow::Result<Spool> {
    let (spool, recovery) =
        Spool::open(dir, cipher, max_bytes).with_context(|| format!("cannot open the spool in {}", dir.display()))?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(bytes = recovery.truncated_bytes, dir = %dir.display(), "spool: torn tail cut at start");
    }
    metrics.spool_quarantined.inc_by(recovery.quarantined.len() as u64);
    Ok(spool)
}
