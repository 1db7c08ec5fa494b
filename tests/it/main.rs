//! Integration tests: one binary, one harness (`support`), against the real RabbitMQ.

mod support;

mod broker_failures;
mod cli;
mod dedup;
mod ingest;
mod listener;
mod spool;
