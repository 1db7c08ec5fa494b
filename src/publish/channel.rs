//! One confirm-mode channel with pipelined publishes.
//!
//! Returned (unroutable) messages: RabbitMQ sends `basic.return` before the `basic.ack` of the same message, and
//! lapin hands the returned message to the next confirm it completes — which, with several publishes in flight
//! or a `multiple` ack, may be another publish's. So each publish records any returned message it receives by
//! its `message_id`, waits until every earlier publish on the channel has recorded its own, and then looks for
//! its id: a returned event is never reported as stored.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Poll};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::PublishError;

/// How many returned ids to remember for correlation before forgetting the oldest batch.
const MAX_RETURNED: usize = 10_000;

pub struct ConfirmChannel {
    channel: Channel,
    /// Serializes `basic.publish` frames and numbers them.
    next_seq: Mutex<u64>,
    tracker: Mutex<Tracker>,
    settled: Notify,
}

#[derive(Default)]
struct Tracker {
    outstanding: BTreeSet<u64>,
    returned: HashSet<String>,
}

impl ConfirmChannel {
    pub fn new(channel: Channel) -> Self {
        ConfirmChannel {
            channel,
            next_seq: Mutex::new(0),
            tracker: Mutex::new(Tracker::default()),
            settled: Notify::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes one persistent, mandatory message and waits for its confirm until `deadline`.
    pub async fn publish(
        &self,
        exchange: &str,
        message: (ShortString, &[u8], BasicProperties),
        message_id: &str,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let (seq, confirm) = self.send(exchange, message, deadline).await?;
        let settle = Settle { ch: self, seq };
        let result = self.confirmed(seq, confirm, message_id, deadline).await;
        drop(settle);
        result
    }

    /// Sends one persistent, mandatory message: returns once its frames are written, with its number on this
    /// channel and its confirm. Sends on one channel reach the broker in the order they return. The caller must
    /// [`ConfirmChannel::settle`] the number whatever happens next (an [`ConfirmChannel::confirmed`] does).
    pub async fn send(
        &self,
        exchange: &str,
        (routing_key, body, props): (ShortString, &[u8], BasicProperties),
        deadline: Instant,
    ) -> Result<(u64, PublisherConfirm), PublishError> {
        // `mandatory`: an unroutable message comes back as basic.return instead of being dropped silently.
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let exchange = ShortString::try_new(exchange).map_err(|_| PublishError::Encode("exchange name too long"))?;
        let mut publish = std::pin::pin!(self.channel.basic_publish(exchange, routing_key, options, body, props));
        // lapin takes the delivery tag and queues the frames in the first poll of `basic_publish`: numbering and
        // that poll under one lock make our numbers, the broker's tags and the wire order agree. The frames are
        // written by lapin's I/O thread after the lock is released, so the publishes queued meanwhile (on any
        // channel) go out together, in one write.
        let (seq, first) = {
            let mut next = self.next_seq.lock().unwrap_or_else(|e| e.into_inner());
            let seq = *next;
            *next += 1;
            self.tracker().outstanding.insert(seq);
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            (seq, publish.as_mut().poll(&mut cx))
        };
        // Settles the number if this send fails or is cancelled; disarmed once the caller owns it.
        let settle = Settle { ch: self, seq };
        let sent = match first {
            Poll::Ready(sent) => Ok(sent),
            Poll::Pending => tokio::time::timeout_at(deadline, publish).await,
        };
        match sent {
            Ok(Ok(confirm)) => {
                std::mem::forget(settle);
                Ok((seq, confirm))
            }
            Ok(Err(e)) => Err(PublishError::Channel(e.to_string())),
            Err(_) => Err(PublishError::Timeout),
        }
    }

    /// Waits until `deadline` for the confirm of the message sent as `seq`, settles `seq`, and then (for an ack)
    /// until every earlier send on the channel has recorded any returned message, to tell a returned one.
    pub async fn confirmed(
        &self,
        seq: u64,
        confirm: PublisherConfirm,
        message_id: &str,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let result = match tokio::time::timeout_at(deadline, confirm).await {
            Err(_) => Err(PublishError::Timeout),
            Ok(Err(e)) => Err(PublishError::Channel(e.to_string())),
            Ok(Ok(confirmation)) => {
                let nack = confirmation.is_nack();
                if let Some(id) = returned_id(confirmation) {
                    self.record_returned(id);
                }
                if nack {
                    Err(PublishError::Nack)
                } else {
                    Ok(())
                }
            }
        };
        self.settle(seq);
        result?;
        self.wait_earlier(seq, deadline).await?;
        if self.tracker().returned.remove(message_id) {
            return Err(PublishError::Returned);
        }
        Ok(())
    }

    fn record_returned(&self, id: String) {
        let mut t = self.tracker();
        if t.returned.len() >= MAX_RETURNED {
            t.returned.clear();
        }
        t.returned.insert(id);
    }

    /// Marks a publish finished, whatever its outcome (again: no effect).
    pub fn settle(&self, seq: u64) {
        self.tracker().outstanding.remove(&seq);
        self.settled.notify_waiters();
    }

    /// Waits until every publish numbered before `seq` has settled, so their returned messages are recorded.
    async fn wait_earlier(&self, seq: u64, deadline: Instant) -> Result<(), PublishError> {
        loop {
            let notified = self.settled.notified();
            if self.tracker().outstanding.range(..seq).next().is_none() {
                return Ok(());
            }
            tokio::time::timeout_at(deadline, notified).await.map_err(|_| PublishError::Timeout)?;
        }
    }
}

/// Settles a publish's sequence number when dropped — also when the request is cancelled mid-publish (client
/// gone, deadline passed), so later publishes on the channel never wait for it.
struct Settle<'a> {
    ch: &'a ConfirmChannel,
    seq: u64,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.ch.settle(self.seq);
    }
}

fn returned_id(confirmation: Confirmation) -> Option<String> {
    let message = confirmation.take_message()?;
    Some(message.delivery.properties.message_id().as_ref().map(|s| s.as_str().to_string()).unwrap_or_default())
}
