//! The connection supervisor: connect, declare, open confirm channels, watch, and rebuild with back-off.
//!
//! lapin's own auto-recovery is not enabled (it has an open hang bug); a failed connection is dropped whole and
//! a new one built, while publishes fail fast with `NotConnected` in between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use super::channel::ConfirmChannel;
use super::Shared;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown: the longest wait for outstanding confirms, and then for the connection to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a live connection's state is checked besides its events.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A live connection and its confirm channels.
pub struct Pool {
    pub conn: Connection,
    pub channels: Vec<ConfirmChannel>,
    blocked: AtomicBool,
    broken: AtomicBool,
    /// Counts what the alternate exchange takes (`unrouted.rs`); ends with the connection.
    observer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(task) = &self.observer {
            task.abort();
        }
    }
}

impl Pool {
    pub fn blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// Asks the supervisor to rebuild (a channel error was seen while publishing).
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    fn healthy(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
            && self.conn.status().connected()
            && self.channels.iter().all(ConfirmChannel::is_open)
    }
}

pub(super) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut nodes = Nodes::new(shared.settings.urls.len());
    let mut backoff = MIN_BACKOFF;
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let node = nodes.current();
        let Some(url) = shared.settings.urls.get(node) else { break };
        let attempt = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&shared, url)) => r,
            () = shutdown.cancelled() => break,
        };
        let pause = match attempt {
            Ok(Ok(pool)) => {
                failures = 0;
                backoff = MIN_BACKOFF;
                if serve(&shared, pool, node, &shutdown).await {
                    break;
                }
                // The lost node is tried last: the next one in the list is most likely up.
                nodes.advance(true);
                MIN_BACKOFF
            }
            Ok(Err(error)) => {
                failures += 1;
                log_failure(failures, node, &error);
                nodes.pause_after_failure(&mut backoff)
            }
            Err(_) => {
                failures += 1;
                log_failure(failures, node, &"connect timed out");
                nodes.pause_after_failure(&mut backoff)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tracing::info!("broker publisher stopped");
}

/// Installs a live connection and watches it; returns true when stopping for shutdown.
async fn serve(shared: &Shared, pool: Pool, node: usize, shutdown: &CancellationToken) -> bool {
    let pool = Arc::new(pool);
    install(shared, Some(pool.clone()));
    tracing::info!(exchange = %shared.settings.exchange, node, channels = pool.channels.len(), "broker connected");
    let stopping = watch(&pool, &shared.metrics, shutdown).await;
    install(shared, None);
    if stopping {
        close(&pool).await;
        return true;
    }
    tracing::warn!(node, "broker connection lost; reconnecting");
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, pool.conn.close(320, "hookgate reconnecting".into())).await;
    false
}

/// Which of `broker.urls` to try next: in order, in turn. A failed node moves on to the next at once; the back-off
/// only grows once every node has failed in a row.
struct Nodes {
    len: usize,
    current: usize,
    failed_in_row: usize,
}

impl Nodes {
    fn new(len: usize) -> Nodes {
        Nodes { len: len.max(1), current: 0, failed_in_row: 0 }
    }

    fn current(&self) -> usize {
        self.current
    }

    fn advance(&mut self, connected: bool) {
        self.current = (self.current + 1) % self.len;
        self.failed_in_row = if connected { 0 } else { self.failed_in_row + 1 };
    }

    /// Moves past a failed node; returns how long to wait before the next attempt.
    fn pause_after_failure(&mut self, backoff: &mut Duration) -> Duration {
        self.advance(false);
        if self.failed_in_row % self.len != 0 {
            return Duration::ZERO;
        }
        let pause = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        pause
    }
}

fn log_failure(failures: u32, node: usize, error: &dyn std::fmt::Display) {
    // Log the first failure and then every 20th, so an outage does not flood the log.
    if failures == 1 || failures % 20 == 0 {
        tracing::warn!(%error, failures, node, "broker connection failed");
    }
}

fn install(shared: &Shared, pool: Option<Arc<Pool>>) {
    shared.metrics.broker_connected.set(i64::from(pool.is_some()));
    shared.metrics.broker_blocked.set(0);
    match shared.pool.write() {
        Ok(mut slot) => *slot = pool,
        Err(poisoned) => *poisoned.into_inner() = pool,
    }
}

async fn connect(shared: &Shared, url: &str) -> Result<Pool, lapin::Error> {
    let s = &shared.settings;
    let props = ConnectionProperties::default().with_connection_name("hookgate".into());
    let conn = Connection::connect(url, props).await?;
    declare(&conn, s).await?;
    let channels = open_channels(&conn, s.channels.max(1)).await?;
    let observer = match &s.alternate_exchange {
        Some(ae) => super::unrouted::observe(&conn, ae, shared.unrouted.clone(), shared.metrics.clone()).await?,
        None => None,
    };
    Ok(Pool { conn, channels, blocked: AtomicBool::new(false), broken: AtomicBool::new(false), observer })
}

/// Declares the exchange (durable, so it and its bindings survive a broker restart) with its alternate exchange:
/// a durable fanout exchange `<exchange>.unrouted` bound to a durable queue of the same name, which keeps every
/// event no binding matched (SPEC §4). With `declare_exchange = false` the exchange must already exist: a
/// passive declare checks that without changing it. Runs on a channel of its own, since a refused declare
/// closes the channel.
pub(crate) async fn declare(conn: &Connection, s: &super::Settings) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    let ch = conn.create_channel().await?;
    if !s.declare_exchange {
        let passive = ExchangeDeclareOptions { passive: true, ..durable };
        ch.exchange_declare(s.exchange.as_str().into(), ExchangeKind::Topic, passive, FieldTable::default()).await?;
        return close_quietly(ch).await;
    }
    let mut args = FieldTable::default();
    if let Some(ae) = &s.alternate_exchange {
        // On channels of its own: in a cluster, a classic queue (an earlier version's) may live on a node that is
        // down, and the gateway must still publish through the nodes that are up (broker.urls).
        match declare_alternate(conn, ae).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => tracing::warn!(
                alternate_exchange = %ae,
                "the alternate exchange's queue lives on a cluster node that is down (NOT_FOUND): publishing on; \
                 events no binding matches are not kept until that node is back"
            ),
            Err(e) => return Err(e),
        }
        // https://www.rabbitmq.com/docs/ae
        args.insert("alternate-exchange".into(), AMQPValue::LongString(ae.as_str().into()));
    }
    match ch.exchange_declare(s.exchange.as_str().into(), ExchangeKind::Topic, durable, args).await {
        Ok(()) => close_quietly(ch).await,
        Err(e) if is_precondition_failed(&e) => {
            // The exchange exists with other arguments (typically declared before the alternate exchange was
            // configured). Redeclaring cannot change it; use it as it is: events no binding matches are then
            // returned and parked in the spool — unless a policy gives the exchange an alternate exchange.
            tracing::warn!(
                exchange = %s.exchange,
                alternate_exchange = ?s.alternate_exchange,
                "broker.exchange exists with different arguments (PRECONDITION_FAILED): using it as it is; set the \
                 alternate exchange with a policy (docs/operations.md, \"Unroutable events\") or unroutable \
                 events are parked in the spool"
            );
            let ch = conn.create_channel().await?;
            let passive = ExchangeDeclareOptions { passive: true, ..durable };
            ch.exchange_declare(s.exchange.as_str().into(), ExchangeKind::Topic, passive, FieldTable::default())
                .await?;
            close_quietly(ch).await
        }
        Err(e) => Err(e),
    }
}

/// The fanout alternate exchange and its durable queue, bound. The queue is a quorum queue, replicated over a
/// cluster's nodes (<https://www.rabbitmq.com/docs/quorum-queues>) so what it keeps outlives a node; the classic
/// queue an earlier version declared is used as it is (RabbitMQ cannot change a queue's type, and deleting it would
/// drop what it holds).
async fn declare_alternate(conn: &Connection, ae: &str) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    ch.exchange_declare(ae.into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    let queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let ch = match ch.queue_declare(ae.into(), queue, quorum).await {
        Ok(_) => ch,
        // The refused declare closed its channel.
        Err(e) if is_precondition_failed(&e) => {
            tracing::warn!(
                queue = %ae,
                "the alternate exchange's queue exists with other arguments (PRECONDITION_FAILED; typically a classic \
                 queue an earlier version declared): using it as it is; a classic queue lives on one node of a \
                 cluster (docs/operations.md, \"Unroutable events\")"
            );
            let ch = conn.create_channel().await?;
            let passive = QueueDeclareOptions { passive: true, ..queue };
            ch.queue_declare(ae.into(), passive, FieldTable::default()).await?;
            ch
        }
        Err(e) => return Err(e),
    };
    ch.queue_bind(ae.into(), ae.into(), "".into(), QueueBindOptions::default(), FieldTable::default()).await?;
    close_quietly(ch).await
}

/// 404: here, a durable classic queue whose home node is down.
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

async fn close_quietly(ch: Channel) -> Result<(), lapin::Error> {
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

async fn open_channels(conn: &Connection, n: usize) -> Result<Vec<ConfirmChannel>, lapin::Error> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = conn.create_channel().await?;
        // Publisher confirms: the broker acks each message once it has taken responsibility for it.
        // https://www.rabbitmq.com/docs/confirms#publisher-confirms
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ConfirmChannel::new(ch));
    }
    Ok(channels)
}

/// Watches a live connection; returns true when stopping for shutdown, false when the connection failed.
async fn watch(pool: &Pool, metrics: &crate::metrics::Metrics, shutdown: &CancellationToken) -> bool {
    let mut events = pool.conn.events_listener();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return true,
            ev = events.next() => match ev {
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "broker blocked the connection");
                    pool.blocked.store(true, Ordering::Release);
                    metrics.broker_blocked.set(1);
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("broker unblocked the connection");
                    pool.blocked.store(false, Ordering::Release);
                    metrics.broker_blocked.set(0);
                }
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(%error, "broker connection error");
                    return false;
                }
                Some(_) => {}
                None => return false,
            },
            _ = tick.tick() => if !pool.healthy() { return false },
        }
    }
}

/// Closes the connection at shutdown, after in-flight confirms had their chance. Runs after the listener has
/// drained, so every request already has its answer (a publish that was not confirmed in time was spooled):
/// waiting is bounded (all channels together, then the close), so a stalled broker cannot hold the exit up.
async fn close(pool: &Pool) {
    let confirms = futures_util::future::join_all(pool.channels.iter().map(|ch| ch.channel().wait_for_confirms()));
    let _ = tokio::time::timeout(CLOSE_WAIT, confirms).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, pool.conn.close(200, "hookgate stopping".into())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_tried_in_turn_and_back_off_after_a_full_round() {
        let mut backoff = MIN_BACKOFF;
        let mut n = Nodes::new(3);
        assert_eq!(n.current(), 0);
        assert_eq!(n.pause_after_failure(&mut backoff), Duration::ZERO);
        assert_eq!(n.current(), 1);
        assert_eq!(n.pause_after_failure(&mut backoff), Duration::ZERO);
        assert_eq!(n.current(), 2);
        assert_eq!(n.pause_after_failure(&mut backoff), MIN_BACKOFF, "every node failed: back off");
        assert_eq!((n.current(), backoff), (0, MIN_BACKOFF * 2));
        n.advance(true);
        assert_eq!(n.current(), 1, "after a lost connection the next node is tried first");
        assert_eq!(n.pause_after_failure(&mut backoff), Duration::ZERO);
    }

    #[test]
    fn one_node_backs_off_after_each_failure() {
        let mut backoff = MIN_BACKOFF;
        let mut n = Nodes::new(1);
        assert_eq!(n.pause_after_failure(&mut backoff), MIN_BACKOFF);
        assert_eq!(n.pause_after_failure(&mut backoff), MIN_BACKOFF * 2);
        assert_eq!(n.current(), 0);
    }
}
