//! The `hookgate` binary: parse arguments, load and validate the config (exit 64 on a mistake), start the
//! gateway, wait for a signal, drain, exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hookgate::config::{secret::ProcessEnv, Config, ConfigError};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc malloc (see Cargo.toml): less CPU per event on the request path and in the state
/// writer, for a few MiB of RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for bad configuration or usage (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "hookgate", version, about = "Reliable webhook fan-out gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The configuration file (for the default `run` command).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print it with every secret redacted.
    CheckConfig,
    /// Inspect or drain the local spool (while the gateway is stopped).
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// Print the events published to the exchange, one JSON line each (a development aid).
    Tail {
        /// The binding pattern (`#` for everything, `instamed.payment.*`, ...).
        #[arg(long, default_value = "#")]
        bind: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the headers a provider would send with BODY to SOURCE (its hmac scheme, first secret), one
    /// `Name: value` per line, e.g. for `curl -H @headers.txt`.
    Sign {
        /// The source whose `auth.hmac` signs.
        #[arg(long)]
        source: String,
        /// The file holding the exact body to send.
        #[arg(long)]
        body: PathBuf,
    },
}

#[derive(Subcommand)]
enum SpoolAction {
    /// Print the records, bytes and oldest receipt time waiting in the spool.
    Stats,
    /// Publish every spooled event to the broker (with confirms, in receipt order), then exit.
    Replay,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let Some(path) = cli.config else {
        eprintln!("hookgate: --config FILE is required");
        return ExitCode::from(EXIT_USAGE);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return invalid(&path, e),
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => check_config(&config, &path),
        Command::Sign { source, body } => sign(&config, &path, &source, &body),
        Command::Run => run(config, &path),
        Command::Tail { bind, count } => tail(&config, &path, &bind, count),
        Command::Spool { action } => spool(&config, &path, action),
    }
}

/// A configuration mistake, exit 64. One found after the file was read (a secret's variable not set or file not
/// readable, a certificate, the spool key) names the file as a mistake in the file's own text does.
fn invalid(path: &Path, error: ConfigError) -> ExitCode {
    eprintln!("hookgate: invalid configuration: {}", error.in_file(path));
    ExitCode::from(EXIT_USAGE)
}

fn spool(config: &Config, path: &Path, action: SpoolAction) -> ExitCode {
    if let Err(e) = hookgate::spool::crypto::load_key(&config.storage, &ProcessEnv) {
        return invalid(path, e);
    }
    let result = match action {
        SpoolAction::Stats => hookgate::spool::command::stats(config, &ProcessEnv).map(|(s, parked)| {
            let oldest = s.oldest.map_or_else(|| "-".to_string(), |t| t.to_rfc3339());
            println!("records: {}\nbytes: {}\noldest: {oldest}\nparked: {}", s.records, s.bytes, parked.records);
        }),
        SpoolAction::Replay => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(hookgate::spool::command::replay(config, &ProcessEnv)))
            .map(|(n, parked)| {
                println!("replayed: {n}");
                if parked > 0 {
                    println!("parked: {parked} (unroutable: bind a queue or an alternate exchange, then replay again)");
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(config: &Config, path: &Path) -> ExitCode {
    // Building every source resolves its secrets, so a missing variable or file is caught here too.
    let built = hookgate::source::build_all(config, &ProcessEnv)
        .and_then(|_| hookgate::poll::check_all(config, &ProcessEnv))
        .and_then(|_| config.broker_urls(&ProcessEnv))
        .and_then(|_| config.shared_url(&ProcessEnv))
        .and_then(|_| hookgate::spool::crypto::load_key(&config.storage, &ProcessEnv).map(drop));
    if let Err(e) = built {
        return invalid(path, e);
    }
    if let Some(tls) = &config.server.tls {
        if let Err(e) = hookgate::tls::server_config(tls) {
            return invalid(path, e);
        }
    }
    print!("{}", config.to_redacted_toml());
    ExitCode::SUCCESS
}

fn tail(config: &Config, path: &Path, bind: &str, count: Option<u64>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hookgate::tail::run(config, &ProcessEnv, bind, count)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast::<ConfigError>() {
            Ok(e) => invalid(path, e),
            Err(e) => {
                eprintln!("hookgate tail: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn sign(config: &Config, path: &Path, source: &str, body: &Path) -> ExitCode {
    let Some(hmac) = config.sources.get(source).map(|s| &s.auth.hmac) else {
        eprintln!("hookgate: no source named {source:?} in the configuration");
        return ExitCode::from(EXIT_USAGE);
    };
    let Some(hmac) = hmac else {
        eprintln!("hookgate: sources.{source}.auth has no hmac method to sign with");
        return ExitCode::from(EXIT_USAGE);
    };
    let body = match std::fs::read(body) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hookgate: cannot read the body file {}: {e}", body.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let key = format!("sources.{source}.auth.hmac");
    match hookgate::auth::hmac::sign(&key, hmac, &ProcessEnv, &body, std::time::SystemTime::now()) {
        Ok(headers) => {
            for (name, value) in headers {
                println!("{name}: {value}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => invalid(path, e),
    }
}

fn run(config: Config, path: &Path) -> ExitCode {
    hookgate::telemetry::init(&config.logging, std::env::var("RUST_LOG").ok());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(config, path));
    // Blocking tasks still running (a file read, a state lookup) must not hold the exit up past the drain.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Binds, starts and serves the gateway until it has drained.
async fn serve(config: Config, path: &Path) -> ExitCode {
    // Installed first: from here on SIGHUP reloads and SIGTERM/SIGINT drain instead of killing the process (their
    // default actions), also while the gateway starts.
    let hangups = hookgate::reload::Hangups::install();
    let shutdown = CancellationToken::new();
    hookgate::shutdown::on_signals(shutdown.clone());
    let listeners = match hookgate::Listeners::bind(&config).await {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot bind");
            return ExitCode::FAILURE;
        }
    };
    let start = hookgate::App::start(&config, path, Arc::new(ProcessEnv), listeners, shutdown.clone());
    let app = tokio::select! {
        biased;
        // Nothing was acknowledged yet: what the start opened is crash-safe, as after `kill -9`.
        () = shutdown.cancelled() => {
            tracing::info!("hookgate stopped while starting");
            return ExitCode::SUCCESS;
        }
        started = start => match started {
            Ok(app) => app,
            Err(error) => return start_failed(error, path),
        },
    };
    hangups.serve(app.reloader(), shutdown.clone());
    // Bound the whole drain: drain_timeout for requests plus a little for AMQP to close.
    let hard_deadline = config.server.drain_timeout.0 + std::time::Duration::from_secs(5);
    let stopped = async {
        shutdown.cancelled().await;
        tokio::time::sleep(hard_deadline).await;
    };
    tokio::select! {
        r = app.wait() => match r {
            Ok(()) => { tracing::info!("hookgate stopped"); ExitCode::SUCCESS }
            Err(error) => { tracing::error!(%error, "hookgate failed"); ExitCode::FAILURE }
        },
        () = stopped => { tracing::error!("drain did not finish in time"); ExitCode::FAILURE }
    }
}

/// Logs why the gateway could not start: a configuration mistake (named with the file) exits 64, anything else
/// (data_dir unusable, Redis unreachable) exits 1.
fn start_failed(error: anyhow::Error, path: &Path) -> ExitCode {
    match error.downcast::<ConfigError>() {
        Ok(error) => {
            tracing::error!(error = %error.in_file(path), "invalid configuration");
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot start");
            ExitCode::FAILURE
        }
    }
}
