//! Everything under `storage.data_dir` (the state database, the spool and its parked records) and the shared
//! store, opened and recovered before the gateway serves.

use anyhow::Context;

use crate::config::{secret::Env, Config};
use crate::dedup::{redis::Shared, Dedup};
use crate::metrics::Metrics;
use crate::order::Order;
use crate::spool::{self, Spool};
use crate::state::State;

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
        let shared = match config.shared_url(env)? {
            Some(url) => Some(Shared::connect(&url, &s.shared_prefix).await.context("cannot reach storage.shared")?),
            None => None,
        };
        let spool = open_spool(&Spool::dir_of(&s.data_dir), cipher.clone(), s.spool_max_bytes, metrics)?;
        let parked = open_spool(&Spool::parked_dir_of(&s.data_dir), cipher, s.spool_max_bytes, metrics)?;
        metrics.set_spool_events(spool.len(), parked.len());
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
