//! The tracing subscriber: JSON lines in production, readable text in development. `RUST_LOG` overrides
//! `logging.level`. Nothing here ever formats a body, a header value or a secret: events carry ids, sizes,
//! statuses and latencies only.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Logging};

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(logging: &Logging, rust_log: Option<String>) {
    let filter = rust_log
        .and_then(|d| EnvFilter::try_new(d).ok())
        .or_else(|| EnvFilter::try_new(&logging.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match logging.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
