//! `hookgate-bench`: the load generator behind `docs/benchmarks.md`. It starts the release gateway as a child
//! process (a generated config, its own exchange and data directory), drives each scenario over HTTP/1.1
//! keep-alive (plain, TLS or mutual TLS), drains a queue bound to the exchange and checks that the messages are
//! exactly the distinct events answered 200, and measures the broker's raw ceiling (lapin, persistent, confirms,
//! the same in-flight count, a durable classic queue) in the same run, so every throughput is also a ratio.
//!
//! ```text
//! cargo build --release --features bench
//! target/release/hookgate-bench --scenario all
//! target/release/hookgate-bench --scenario steady --duration 60s --report json    # for a fault script
//! ```
//!
//! Layout: `traffic.rs` builds the provider bodies and signatures, `client.rs` drives closed and open loops,
//! `gateway.rs` runs the child process and reads its `/proc` figures, `broker.rs` measures the ceiling, drains
//! and checks the queue and holds the TCP proxy, `scenarios.rs` puts them together, `report.rs` prints.

mod broker;
mod client;
mod gateway;
mod pki;
#[path = "../../../tests/it/support/ports.rs"]
mod ports;
mod report;
mod scenarios;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which scenarios to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every scenario below except `steady`, in order.
    All,
    /// The broker's raw ceiling only.
    Ceiling,
    /// Closed loop, `--connections` (64) as fast as answers come.
    Max,
    /// Open loop at `--rate` (2,000/s), latency from the scheduled send time.
    Fixed,
    /// The dedup hit path: a few events, then only their retries.
    Retries,
    /// The broker cut through a proxy: every event goes to the spool; then restored and drained.
    Spool,
    /// `--clients` addresses (X-Forwarded-For from a trusted proxy) at the per-client rate limit.
    Ratelimit,
    /// The dedup index pre-grown to `--index-events`, then `max` again; start-up time and bytes per event.
    Index,
    /// Open loop at `--rate` for `--duration`, for fault scripts (no ceiling run unless asked).
    Steady,
}

/// How the connections are secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Plain,
    Tls,
    Mtls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

/// The command line.
#[derive(Parser, Clone, Debug)]
#[command(name = "hookgate-bench", about = "Load generator and delivery check for hookgate (docs/benchmarks.md)")]
pub struct Args {
    /// Scenarios, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<Scenario>,
    /// Measured time of each load phase.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Keep-alive connections (closed loop) and the broker ceiling's in-flight count.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Events per second of the open-loop scenarios.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Connections of the open-loop scenarios (enough that the rate never waits for a free one).
    #[arg(long, default_value_t = 64)]
    pub open_connections: usize,
    #[arg(long, value_enum, default_value = "tls")]
    pub transport: Transport,
    /// Share of requests that are provider retries of an event already sent.
    #[arg(long, default_value_t = 0.05)]
    pub retry_share: f64,
    /// Share of events sent as out-of-order pairs (the later status first).
    #[arg(long, default_value_t = 0.02)]
    pub out_of_order_share: f64,
    /// Distinct events the `index` scenario stores before measuring (5000000 for the issue's figure).
    #[arg(long, default_value_t = 1_000_000)]
    pub index_events: u64,
    /// Client addresses of the `ratelimit` scenario.
    #[arg(long, default_value_t = 100_000)]
    pub clients: u32,
    /// The gateway binary (default: `hookgate` next to this binary).
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    /// Extra TOML appended to `[storage]` of the generated config (e.g. `cache_bytes = 16777216`).
    #[arg(long, default_value = "")]
    pub storage_extra: String,
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// The broker's `host:port` inside `--amqp` (the spool scenario puts its proxy there).
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub broker_addr: std::net::SocketAddr,
    /// The traffic mix.
    #[arg(long, value_enum, default_value = "realistic")]
    pub mix: traffic::Mix,
    /// Write each started gateway's PID here (for fault scripts).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Measure the broker ceiling too (always on for `all`).
    #[arg(long)]
    pub ceiling: bool,
    /// Measure also the ceiling of the contract's message (always on for `all`): the same publishes shaped as
    /// the gateway's (SPEC §4: CloudEvents headers, through a topic exchange); each row gets
    /// `of_contract_ceiling`, the part of the gap the message format leaves to the gateway; the `fixed` row gets
    /// the broker alone at its rate with that message too (`broker_alone_contract_*`).
    #[arg(long)]
    pub contract_ceiling: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub report: ReportFormat,
    /// The gateway's `logging.level`.
    #[arg(long, default_value = "info")]
    pub gateway_log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookgate-bench: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(scenarios::run(args)) {
        Ok(report) => {
            if report.all_delivered() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("hookgate-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
