//! Hot reload (SPEC §5, `SIGHUP`): re-read the config file, build everything that can change live, and swap it
//! in whole — or refuse the file and keep serving the running configuration.
//!
//! Invariants:
//! - **All or nothing.** The new file is loaded and validated, every source is built (secrets inline, `*_env`
//!   and `*_file`; JWKS files; client-certificate rules) and so is the TLS config (certificate, key, client CA,
//!   CRLs) *before* anything is swapped. Any failure refuses the whole reload with one log line naming the file
//!   and the key; nothing of the new file is used.
//! - **Nothing in flight is touched.** The routing table and the TLS config are each swapped atomically
//!   ([`arc_swap`]). A request reads the routing table once and keeps its [`crate::source::Source`] to the end;
//!   a connection takes the TLS config at its accept and keeps its session. Only new requests and new
//!   handshakes see the new file.
//! - **What cannot change live is named, not half-applied.** Listen addresses, plain HTTP ↔ TLS, connection
//!   limits and timeouts, `[broker]`, `[storage]`, `[rate_limits]`, `[logging]` and `[pollers.*]` are fixed when
//!   the process starts (sockets bound, storage opened, the publisher connected, the pollers running). A reload that changes them applies the
//!   rest, logs the keys that keep their running value until a restart, and counts as `applied`.
//! - Reloads run one at a time; file I/O runs on the blocking pool, never on a worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{secret::Env, Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::Gateway;
use crate::router::Router;

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The sources now served, by name.
    pub sources: Vec<String>,
    /// Changed keys that keep their running value until a restart.
    pub restart_required: Vec<String>,
}

/// Re-reads the config file on demand. Cheap to clone; every clone serializes with the others.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    env: Arc<dyn Env>,
    /// The configuration the process started with: what the restart-only keys are compared against.
    started: Config,
    gateway: Arc<Gateway>,
    /// `None`: the process serves plain HTTP, which only a restart changes.
    tls: Option<crate::tls::Current>,
    metrics: Metrics,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// Everything a new file yields, built before anything is swapped.
struct Prepared {
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The new certificate's `notAfter`.
    not_after: Option<i64>,
    restart_required: Vec<String>,
}

// === impl Reloader ===

impl Reloader {
    pub fn new(
        path: &Path,
        env: Arc<dyn Env>,
        started: Config,
        gateway: Arc<Gateway>,
        tls: Option<crate::tls::Current>,
        metrics: Metrics,
    ) -> Self {
        let inner =
            Inner { path: path.to_path_buf(), env, started, gateway, tls, metrics, one_at_a_time: Default::default() };
        Reloader { inner: Arc::new(inner) }
    }

    /// Re-reads the config file and applies what can change live; logs one line and counts the outcome in
    /// `hookgate_config_reloads_total`.
    ///
    /// # Errors
    /// The file does not load, validate or build (a secret, certificate or JWKS file that cannot be used): the
    /// error names the file and the key, and the running configuration keeps serving.
    pub async fn reload(&self) -> Result<Applied, ConfigError> {
        let inner = self.inner.clone();
        let _serial = inner.one_at_a_time.lock().await;
        let prepared = {
            let inner = inner.clone();
            tokio::task::spawn_blocking(move || inner.prepare()).await
        }
        .unwrap_or_else(|_| Err(ConfigError::key("", "the reload task failed").in_file(&inner.path)));
        let file = inner.path.display().to_string();
        match prepared {
            Err(error) => {
                inner.metrics.config_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(
                    file,
                    key = error.key,
                    reason = error.reason,
                    "configuration reload refused; the running configuration keeps serving"
                );
                Err(error)
            }
            Ok(prepared) => {
                let applied = inner.apply(prepared);
                inner.metrics.config_reloads.with_label_values(&["applied"]).inc();
                let sources = applied.sources.join(", ");
                if applied.restart_required.is_empty() {
                    tracing::info!(file, sources, "configuration reloaded");
                } else {
                    let restart_required = applied.restart_required.join(", ");
                    tracing::warn!(
                        file,
                        sources,
                        restart_required,
                        "configuration reloaded; the settings named in restart_required keep their running value until a restart"
                    );
                }
                Ok(applied)
            }
        }
    }
}

// === impl Inner ===

impl Inner {
    /// Loads, validates and builds (blocking: reads the config, secret, certificate and JWKS files).
    fn prepare(&self) -> Result<Prepared, ConfigError> {
        let in_file = |e: ConfigError| if e.file.is_some() { e } else { e.in_file(&self.path) };
        let config = Config::load(&self.path)?;
        let sources = crate::source::build_all(&config, &*self.env).map_err(in_file)?;
        // Built (so checked) even when the process serves plain HTTP and cannot switch until a restart.
        let tls = config.server.tls.as_ref().map(crate::tls::server_config).transpose().map_err(in_file)?;
        let not_after = config.server.tls.as_ref().and_then(crate::tls::not_after);
        let restart_required = restart_only(&self.started, &config);
        Ok(Prepared { router: Router::new(sources), tls, not_after, restart_required })
    }

    /// Swaps in what was built; cannot fail.
    fn apply(&self, prepared: Prepared) -> Applied {
        if let (Some(current), Some(config)) = (&self.tls, prepared.tls) {
            current.store(config);
            crate::tls::record_expiry(&self.metrics, prepared.not_after);
        }
        let sources = prepared.router.sources().map(|s| s.name.to_string()).collect();
        self.metrics.set_ack_timeouts(prepared.router.sources().map(|s| (&*s.name, s.ack_timeout)));
        self.gateway.router.store(Arc::new(prepared.router));
        Applied { sources, restart_required: prepared.restart_required }
    }
}

/// Waits for `SIGHUP`, installed at once (before the gateway starts, so an early signal does not kill the
/// process with its default action).
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Installs the handler. Must run inside the runtime.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
            if signal.is_err() {
                tracing::error!("cannot install the SIGHUP handler; reload by restarting");
            }
            Hangups { signal: signal.ok() }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            return signal.recv().await.is_some();
        }
        std::future::pending().await
    }

    /// Reloads on every `SIGHUP` until `shutdown`.
    pub fn serve(mut self, reloader: Reloader, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = self.recv() => if !got { return },
                    () = shutdown.cancelled() => return,
                }
                tracing::info!(signal = "SIGHUP", "configuration reload requested");
                // The outcome is logged and counted by `reload`.
                let _ = reloader.reload().await;
            }
        })
    }
}

/// The keys, among those fixed at start, whose value in `new` differs from the running one.
pub fn restart_only(running: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let without_tls = |s: &crate::config::Server| crate::config::Server { tls: None, ..s.clone() };
    changed("server", &without_tls(&running.server), &without_tls(&new.server), &mut keys);
    if running.server.tls.is_some() != new.server.tls.is_some() {
        keys.push("server.tls".to_string());
    }
    changed("admin", &running.admin, &new.admin, &mut keys);
    changed("broker", &running.broker, &new.broker, &mut keys);
    changed("storage", &running.storage, &new.storage, &mut keys);
    changed("rate_limits", &running.rate_limits, &new.rate_limits, &mut keys);
    changed("logging", &running.logging, &new.logging, &mut keys);
    // A poller keeps its jobs, queue, client and source until a restart.
    changed("pollers", &running.pollers, &new.pollers, &mut keys);
    keys
}

/// Pushes the dotted keys of `table` that differ. Values redacted when serialized (a URL's password) differ
/// only in `Debug`: then the table itself is named.
fn changed<T: Serialize + std::fmt::Debug>(table: &str, old: &T, new: &T, keys: &mut Vec<String>) {
    if format!("{old:?}") == format!("{new:?}") {
        return;
    }
    let before = keys.len();
    if let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) {
        changed_values(table, &a, &b, keys);
    }
    if keys.len() == before {
        keys.push(table.to_string());
    }
}

fn changed_values(key: &str, a: &serde_json::Value, b: &serde_json::Value, keys: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                changed_values(&format!("{key}.{k}"), x, y, keys);
            }
        }
        _ if a != b => keys.push(key.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let base = "[sources.a]\npreset = \"generic\"\nunauthenticated = true\n";
        Config::parse(&format!("{text}\n{base}")).and_then(Config::validate).expect("valid")
    }

    #[test]
    fn restart_only_keys_are_named() {
        let running = config("[server]\nlisten = \"127.0.0.1:8443\"\n[broker]\nurl = \"amqp://u:p@h/\"");
        let same = config("[server]\nlisten = \"127.0.0.1:8443\"\n[broker]\nurl = \"amqp://u:p@h/\"");
        assert_eq!(restart_only(&running, &same), Vec::<String>::new());
        let new = config(
            "[server]\nlisten = \"127.0.0.1:9443\"\nmax_connections = 5\n[broker]\nurl = \"amqp://u:p@h/\"\n\
             exchange = \"other\"\n[storage]\ndata_dir = \"elsewhere\"\n[admin]\nlisten = \"127.0.0.1:1\"",
        );
        assert_eq!(
            restart_only(&running, &new),
            [
                "server.listen",
                "server.max_connections",
                "admin.listen",
                "broker.exchange",
                // Its default follows the exchange (`<exchange>.unrouted`).
                "broker.alternate_exchange",
                "storage.data_dir"
            ]
        );
    }

    #[test]
    fn pollers_change_only_at_a_restart() {
        let poller = |interval: &str| {
            format!(
                "[sources.im]\npreset = \"instamed\"\nunauthenticated = true\n[pollers.p]\nsource = \"im\"\n\
                 account_id = \"a\"\nalias = \"b\"\npassword = \"c\"\nmerchant_id = \"m\"\nstore_id = \"s\"\n\
                 terminal_id = \"t\"\nunauthenticated = true\ninterval = \"{interval}\"\n"
            )
        };
        assert!(restart_only(&config(&poller("10s")), &config(&poller("10s"))).is_empty());
        assert_eq!(restart_only(&config(&poller("10s")), &config(&poller("5s"))), ["pollers.p.interval"]);
        assert_eq!(restart_only(&config(""), &config(&poller("10s"))), ["pollers.p"]);
    }

    #[test]
    fn a_redacted_change_names_its_table() {
        let running = config("[broker]\nurl = \"amqp://u:old@h/\"");
        let new = config("[broker]\nurl = \"amqp://u:new@h/\"");
        assert_eq!(restart_only(&running, &new), ["broker"]);
    }

    #[test]
    fn tls_files_change_live_but_tls_on_or_off_does_not() {
        let tls = |cert: &str| format!("[server.tls]\ncert = \"{cert}\"\nkey = \"k\"");
        assert!(restart_only(&config(&tls("a")), &config(&tls("b"))).is_empty());
        assert_eq!(restart_only(&config(""), &config(&tls("a"))), ["server.tls"]);
    }
}
