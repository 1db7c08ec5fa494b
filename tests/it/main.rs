//! Integration tests: one binary, one harness (`support`), against the real RabbitMQ.

mod support;

mod auth;
mod broker_failures;
mod canary;
mod cli;
mod content_types;
mod crash;
mod dedup;
mod drain;
mod edge;
mod failover;
mod hardening;
mod ingest;
mod listener;
mod metrics;
mod poll;
mod ratelimit;
mod reload;
mod shared;
mod spool;
mod spool_drain;
mod unroutable;
