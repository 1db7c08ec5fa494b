//! `hookgate spool stats|replay --config FILE`: inspect or drain the spool of a gateway that is not running
//! (the state database's lock refuses a second process on the same `data_dir`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{crypto, Drainer, Spool, Stats};
use crate::config::{secret::Env, Config};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::state::State;

/// How long `replay` waits for the broker before giving up.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// The state database (held as the lock), the spool and the parked spool.
fn open(config: &Config, env: &dyn Env) -> anyhow::Result<(State, Spool, Spool)> {
    let s = &config.storage;
    let cipher = crypto::load_key(s, env)?;
    let state = State::open(&s.data_dir).context("cannot lock storage.data_dir")?;
    let mut spools = Vec::new();
    for dir in [Spool::dir_of(&s.data_dir), Spool::parked_dir_of(&s.data_dir)] {
        let (spool, recovery) = Spool::open(&dir, cipher.clone(), s.spool_max_bytes)?;
        if recovery.truncated_bytes > 0 || !recovery.quarantined.is_empty() {
            eprintln!(
                "{}: {} torn bytes cut, {} corrupt ranges quarantined",
                dir.display(),
                recovery.truncated_bytes,
                recovery.quarantined.len()
            );
        }
        spools.push(spool);
    }
    let parked = spools.pop().context("parked spool")?;
    let spool = spools.pop().context("spool")?;
    Ok((state, spool, parked))
}

/// Records, bytes and the oldest receipt time, of the spool and of the parked (unroutable) events.
///
/// # Errors
/// The configuration's key, data dir or spool cannot be used.
pub fn stats(config: &Config, env: &dyn Env) -> anyhow::Result<(Stats, Stats)> {
    let (_lock, spool, parked) = open(config, env)?;
    Ok((spool.stats(), parked.stats()))
}

/// Publishes every spooled event (with confirms, in order; unroutable ones are parked) and tries the parked
/// ones once; returns how many left the spool and how many stay parked.
///
/// # Errors
/// The spool cannot be opened, or the broker is not reachable within 30 s.
pub async fn replay(config: &Config, env: &dyn Env) -> anyhow::Result<(usize, usize)> {
    let (_lock, spool, parked) = open(config, env)?;
    let before = spool.len();
    if before == 0 && parked.is_empty() {
        return Ok((0, 0));
    }
    let stop = CancellationToken::new();
    let metrics = Metrics::new();
    let (publisher, task) = Publisher::start(crate::publish_settings(config, env)?, metrics.clone(), stop.clone());
    if !publisher.wait_connected(CONNECT_WAIT).await {
        stop.cancel();
        let _ = task.await;
        anyhow::bail!("the broker is not reachable; {before} events stay in the spool");
    }
    let replayed = Arc::new(AtomicBool::new(false));
    let drainer = Drainer { spool: spool.clone(), parked: parked.clone(), publisher, metrics, replayed };
    drainer.run(stop.clone(), true).await;
    stop.cancel();
    let _ = task.await;
    Ok((before - spool.len(), parked.len()))
}
