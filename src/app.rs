//! The running gateway: [`App::start`] builds every stage from a validated config — storage, the store (the
//! broker first, the spool behind it), the pollers, the pipeline, the listeners — and starts their tasks;
//! [`App::wait`] supervises them until shutdown.
//!
//! # Invariants
//!
//! - Shutdown order: `/readyz` turns 503 and the listener stops accepting at once; when every in-flight request
//!   is answered (or `drain_timeout` passes), the spool drainer stops (every spooled record is already fsynced;
//!   the rest is replayed at the next start) and the publisher closes AMQP; the admin listener stops last, so
//!   `/readyz` answers 503 until the process exits.
//! - A critical task that ends before shutdown, or panics, takes the whole gateway down (a drain) and the
//!   process exits non-zero: nothing serves half-alive.
//!
//! Layout: [`storage`] opens everything under `storage.data_dir` (and the shared store).

mod storage;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{secret::Env, Config};
use crate::metrics::{Metrics, Readiness};
use crate::pipeline::Gateway;
use crate::poll::Poller;
use crate::publish::{Publisher, Sink};
use crate::ratelimit::RateLimits;
use crate::source::Source;
use crate::state::State;
use crate::store::Store;
use crate::{http, listener, metrics, pipeline, poll, publish, ratelimit, reload, router, source, spool, tls};

pub use self::storage::Storage;

/// Confirm channels per broker connection.
const CONFIRM_CHANNELS: usize = 4;

/// Sockets the gateway serves on (bound by the caller, so tests can use port 0).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

// === impl Listeners ===

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
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The admin listener and its own stop, cancelled once every other task has finished.
    admin: (JoinHandle<()>, CancellationToken),
}

// === impl App ===

impl App {
    /// Builds every stage from a validated config (resolving secrets through `env`) and starts serving.
    /// `path` is the file `config` was loaded from: [`App::reload`] reads it again (with the same `env`).
    ///
    /// # Errors
    /// A configuration problem found while building (a secret, certificate or spool key that cannot be loaded,
    /// as a [`crate::config::ConfigError`]), or storage that cannot be opened (`data_dir`, the spool, Redis).
    pub async fn start(
        config: &Config,
        path: &Path,
        env: Arc<dyn Env>,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> anyhow::Result<App> {
        let sources = source::build_all(config, &*env).map_err(|e| e.in_file(path))?;
        let tls = server_tls(config, path)?;
        let metrics = Metrics::new();
        tls::record_expiry(&metrics, config.server.tls.as_ref().and_then(tls::not_after));
        let storage = Storage::open(config, &*env, &metrics).await?;
        // Stopped only after the listener has drained, so in-flight requests still get their confirms.
        let after_drain = CancellationToken::new();
        let (publisher, publisher_task) =
            Publisher::start(publish_settings(config, &*env)?, metrics.clone(), after_drain.clone());
        let (sink, drain_task) = start_store(publisher, (storage.spool, storage.parked), &metrics, &after_drain);
        let pollers = load_pollers(config, &sources, &*env, &storage.state, &metrics).await?;
        let (gateway, rate_limits) =
            build_gateway(config, sources, sink.clone(), (storage.dedup, storage.order), &metrics, &pollers);
        let reloader = reload::Reloader::new(path, env, config.clone(), gateway.clone(), tls.clone(), metrics.clone());
        let readiness = Arc::new(Readiness {
            store_ready: Some(Arc::new(move || sink.ready())),
            shutdown: shutdown.clone(),
            ..Readiness::default()
        });
        let (public_addr, admin_addr) = (listeners.public.local_addr()?, listeners.admin.local_addr()?);
        let stops = (&shutdown, &after_drain);
        let serve_task = spawn_listener(listeners.public, tls, gateway.clone(), config, stops, readiness.clone());
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(metrics::serve_admin(
            listeners.admin,
            metrics.clone(),
            readiness.clone(),
            config.server.header_read_timeout.0,
            admin_stop.clone(),
        ));
        readiness.listener_up.store(true, Ordering::Release);
        let pollers: Vec<_> = pollers
            .into_iter()
            .map(|p| ("poller", tokio::spawn(poll::run(p, gateway.clone(), after_drain.clone()))))
            .collect();
        let tasks = [
            ("listener", serve_task),
            ("publisher", publisher_task),
            ("spool drainer", drain_task),
            ("state writer", tokio::spawn(watch_state(storage.state, after_drain.clone()))),
            ("purge", tokio::spawn(purge_loop(gateway, after_drain.clone()))),
            ("rate limiter prune", tokio::spawn(ratelimit::prune_loop(rate_limits, after_drain))),
        ];
        tracing::info!(public = %public_addr, admin = %admin_addr, tls = config.server.tls.is_some(), "hookgate serving");
        Ok(App {
            public_addr,
            admin_addr,
            metrics,
            shutdown,
            reloader,
            admin: (admin_task, admin_stop),
            tasks: tasks.into_iter().chain(pollers).collect(),
        })
    }

    /// Re-reads the config file and applies what can change live (what `SIGHUP` does; see [`reload`]).
    ///
    /// # Errors
    /// The file was refused (it names the file and the key); the running configuration keeps serving.
    pub async fn reload(&self) -> Result<reload::Applied, crate::config::ConfigError> {
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

/// The listener's TLS from `server.tls`; none (plain HTTP, with a warning) when it is not configured.
fn server_tls(config: &Config, path: &Path) -> anyhow::Result<Option<tls::Current>> {
    match &config.server.tls {
        Some(tls) => Ok(Some(tls::Current::new(tls::server_config(tls).map_err(|e| e.in_file(path))?))),
        None => {
            tracing::warn!("server.tls is not configured: serving PLAIN HTTP. Development only — never expose this");
            Ok(None)
        }
    }
}

/// The durable sink (the broker first, the spool when it does not confirm in time) and the spool's drainer.
/// Replay runs first: until the drainer has passed what the spool held at start, new events queue behind the
/// spooled ones (the gateway is ready meanwhile: the spool takes them).
fn start_store(
    publisher: Publisher,
    (spool, parked): (spool::Spool, spool::Spool),
    metrics: &Metrics,
    after_drain: &CancellationToken,
) -> (Arc<dyn Sink>, JoinHandle<()>) {
    let replayed = Arc::new(AtomicBool::new(spool.is_empty()));
    let store = Store::new(publisher.clone(), (spool.clone(), parked.clone()), replayed.clone(), metrics.clone());
    let drainer = spool::Drainer { spool, parked, publisher, metrics: metrics.clone(), replayed };
    (Arc::new(store), tokio::spawn(drainer.run(after_drain.clone(), false)))
}

/// Builds every configured poller and loads its pending jobs from the state database.
async fn load_pollers(
    config: &Config,
    sources: &[Arc<Source>],
    env: &dyn Env,
    state: &State,
    metrics: &Metrics,
) -> anyhow::Result<Vec<Arc<Poller>>> {
    let pollers = poll::build_all(config, sources, env, state, metrics)?;
    for p in &pollers {
        let pending = p.load().await.context("cannot read the polling jobs in storage.data_dir")?;
        tracing::info!(poller = %p.name, source = %p.source.name, path = %p.path, methods = ?p.verifier.methods(), pending, "poller configured");
    }
    Ok(pollers)
}

/// The request pipeline over `sources`, and the rate limiters it shares with their prune task.
fn build_gateway(
    config: &Config,
    sources: Vec<Arc<Source>>,
    sink: Arc<dyn Sink>,
    stores: (crate::dedup::Dedup, crate::order::Order),
    metrics: &Metrics,
    pollers: &[Arc<Poller>],
) -> (Arc<Gateway>, Arc<RateLimits>) {
    let router = router::Router::new(sources);
    let rate_limits = Arc::new(RateLimits::new(&config.rate_limits, metrics.rate_limiter_keys.clone()));
    metrics.set_ack_timeouts(router.sources().map(|s| (&*s.name, s.ack_timeout)));
    for s in router.sources() {
        tracing::info!(source = %s.name, preset = %s.preset, methods = ?s.verifier.methods(), "source configured");
    }
    let limits = pipeline::RequestLimits {
        body_read_timeout: config.server.body_read_timeout.0,
        max_header_bytes: config.server.max_header_bytes,
        bodies: http::BodyBudget::new(config.server.max_inflight_body_bytes, config.server.body_share()),
    };
    let gateway = Gateway::new(router, sink, stores, metrics.clone(), rate_limits.clone(), limits);
    (Arc::new(gateway.with_pollers(pollers.to_vec())), rate_limits)
}

/// The public listener's task: serves until `shutdown`, then (every in-flight request answered, or
/// `drain_timeout` passed) cancels `after_drain`. `/readyz` turns 503 as soon as `shutdown` is cancelled.
fn spawn_listener(
    public: TcpListener,
    tls: Option<tls::Current>,
    gateway: Arc<Gateway>,
    config: &Config,
    (shutdown, after_drain): (&CancellationToken, &CancellationToken),
    readiness: Arc<Readiness>,
) -> JoinHandle<()> {
    let s = &config.server;
    let limits = listener::Limits {
        max_connections: s.max_connections,
        tls_handshake_timeout: s.tls_handshake_timeout.0,
        header_read_timeout: s.header_read_timeout.0,
        max_header_bytes: s.max_header_bytes,
        idle_timeout: s.idle_timeout.0,
        http2_max_concurrent_streams: s.http2_max_concurrent_streams,
        drain_timeout: s.drain_timeout.0,
        trusted_proxies: Arc::from(s.trusted_proxies.clone()),
        proxy_protocol: s.proxy_protocol,
    };
    let (shutdown, after_drain) = (shutdown.clone(), after_drain.clone());
    tokio::spawn(async move {
        let draining = {
            let (shutdown, readiness) = (shutdown.clone(), readiness.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                readiness.draining.store(true, Ordering::Release);
            })
        };
        let metrics = gateway.metrics.clone();
        listener::serve(public, tls, gateway, limits, metrics, shutdown).await;
        draining.abort();
        readiness.draining.store(true, Ordering::Release);
        after_drain.cancel();
    })
}

/// Awaits every task. The first to end before `shutdown` (or to panic) is a death: logged once, `shutdown` is
/// cancelled so the others drain, and its name is returned.
pub async fn supervise(
    tasks: Vec<(&'static str, JoinHandle<()>)>,
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
