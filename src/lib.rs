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
//! Assembly: [`App`] (`app.rs`) builds every stage from a config in the order above, starts their tasks and
//! supervises them; `app/storage.rs` opens `storage.data_dir` and the shared store.
//!
//! Cross-cutting: [`config`] (typed, strict, validated), [`source`] (a source built from config, secrets
//! resolved), [`error`] (classification), [`state`] (the embedded redb database under `storage.data_dir`),
//! [`private_fs`] (`0700` directories and `0600` files under `data_dir`),
//! [`metrics`] (every family; the admin listener), [`telemetry`], [`shutdown`], [`reload`] (`SIGHUP`: re-read the
//! file, swap TLS and sources whole, or refuse it). Tools: [`tail`] (`hookgate tail`,
//! prints what lands in the exchange).
#![forbid(unsafe_code)]

mod app;
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

pub use app::{publish_settings, supervise, App, Listeners, Storage};
