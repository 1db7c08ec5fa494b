//! Dedup and order state shared by replicas, in Redis (`storage.shared`).
//!
//! Keys: `<prefix>:dedup:<source>\u{1f}<id>` holds a random claim token while a delivery is in flight (`SET NX
//! PX <ack_timeout + 5s>`: a claim left by a crashed replica expires) and `done` once stored (`PX dedup_window`).
//! Release is a compare-and-delete (Lua), so a replica never deletes another one's claim.
//! `<prefix>:order:<source>\u{1f}<subject>` is a hash of the latest time (`t`, ms) and rank (`r`), updated by a
//! Lua compare-and-set that also answers whether the event is out of order.

use std::time::Duration;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::time::Instant;

/// Longest one Redis round trip may take before the operation counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a waiter on another replica's claim looks again.
const POLL: Duration = Duration::from_millis(50);
const DONE: &str = "done";

const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// ARGV: time ms, has time (0/1), rank (0 = none), ttl ms. Returns 1 when out of order.
const ORDER: &str = r"
local cur = redis.call('HMGET', KEYS[1], 't', 'r')
local t, has_t, r = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local ooo = 0
local ct, cr = tonumber(cur[1]), tonumber(cur[2])
if ct ~= nil and cr ~= nil then
  if (has_t and ct > 0 and t < ct) or (r > 0 and r < cr) then ooo = 1 end
  if t < ct then t = ct end
  if r < cr then r = cr end
end
redis.call('HSET', KEYS[1], 't', t, 'r', r)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return ooo";

/// A failed Redis operation.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
}

/// What the shared claim found.
pub enum SharedClaim {
    New(String),
    Duplicate,
    Busy,
}

/// The Redis connection and scripts. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    release: Script,
    order: Script,
}

impl Shared {
    /// Connects to `url`; keys start with `prefix`.
    ///
    /// # Errors
    /// The URL is invalid or Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Shared, SharedError> {
        let client = redis::Client::open(url)?;
        let conn = tokio::time::timeout(OP_TIMEOUT * 5, ConnectionManager::new(client))
            .await
            .map_err(|_| SharedError::Timeout)??;
        Ok(Shared { conn, prefix: prefix.to_string(), release: Script::new(RELEASE), order: Script::new(ORDER) })
    }

    fn dedup_key(&self, key: &str) -> String {
        format!("{}:dedup:{key}", self.prefix)
    }

    /// Claims `key` (see the module doc); polls another holder's claim until it is done, gone or `deadline`.
    ///
    /// # Errors
    /// Redis failed or did not answer in time.
    pub async fn claim(&self, key: &str, ttl: Duration, deadline: Instant) -> Result<SharedClaim, SharedError> {
        let k = self.dedup_key(key);
        let token = format!("{:016x}{:016x}", OsRng.next_u64(), OsRng.next_u64());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        loop {
            let set: Option<String> =
                timed(redis::cmd("SET").arg(&k).arg(&token).arg("NX").arg("PX").arg(ttl_ms).query_async(&mut conn))
                    .await?;
            if set.is_some() {
                return Ok(SharedClaim::New(token));
            }
            let held: Option<String> = timed(conn.get(&k)).await?;
            match held.as_deref() {
                Some(DONE) => return Ok(SharedClaim::Duplicate),
                None => continue,
                Some(_) if Instant::now() + POLL >= deadline => return Ok(SharedClaim::Busy),
                Some(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Marks `key` done for `window`.
    ///
    /// # Errors
    /// Redis failed or did not answer in time.
    pub async fn complete(&self, key: &str, window: Duration) -> Result<(), SharedError> {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        timed(redis::cmd("SET").arg(self.dedup_key(key)).arg(DONE).arg("PX").arg(ms).query_async::<()>(&mut conn)).await
    }

    /// Deletes `key` if it still holds `token` (a failed store); errors are logged, the claim then expires.
    pub async fn release(&self, key: &str, token: &str) {
        let mut conn = self.conn.clone();
        let mut call = self.release.key(self.dedup_key(key));
        call.arg(token);
        if let Err(error) = timed(call.invoke_async::<i64>(&mut conn)).await {
            tracing::warn!(%error, "shared dedup claim not released; it expires on its own");
        }
    }

    /// Records (time ms, rank) for a subject and answers whether the event is out of order.
    ///
    /// # Errors
    /// Redis failed or did not answer in time.
    pub async fn observe_order(
        &self,
        key: &str,
        time_ms: Option<i64>,
        rank: u8,
        ttl: Duration,
    ) -> Result<bool, SharedError> {
        let mut conn = self.conn.clone();
        let mut call = self.order.key(format!("{}:order:{key}", self.prefix));
        call.arg(time_ms.unwrap_or(0))
            .arg(if time_ms.is_some() { "1" } else { "0" })
            .arg(rank)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        Ok(timed(call.invoke_async::<i64>(&mut conn)).await? == 1)
    }
}

async fn timed<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, SharedError> {
    tokio::time::timeout(OP_TIMEOUT, f).await.map_err(|_| SharedError::Timeout)?.map_err(SharedError::from)
}
