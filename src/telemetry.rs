//! The tracing subscriber: JSON lines in production, readable text in development. `RUST_LOG` overrides
//! `logging.level`. Nothing here ever formats a body, a header value or a secret: events carry ids, sizes,
//! statuses and latencies only.
//!
//! Dependencies are not trusted to keep that rule, so a second filter sits in front of the configured one and
//! no directive can lift it: lapin logs every returned (unroutable) message at WARN, body bytes and headers
//! included, and at TRACE every AMQP frame; its parse errors can carry the bytes they failed on. lapin and
//! amq-protocol are therefore silenced (the publisher logs broker failures itself). Every other dependency (h2,
//! hyper, rustls, redis, ...) is capped at WARN: at DEBUG and TRACE h2 prints frames and hyper request heads.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Logging};

/// The most a dependency may log (its warnings and errors), whatever `logging.level` or `RUST_LOG` say.
const DEPENDENCY_CAP: LevelFilter = LevelFilter::WARN;

/// Dependency targets that are never logged: they can print message contents even at WARN or ERROR.
const SILENCED: [&str; 2] = ["lapin", "amq_protocol"];

/// The filter no configuration can lift: our own targets pass (to the configured filter), the silenced ones
/// never, every other target at most [`DEPENDENCY_CAP`]. A target matches by prefix (`lapin` covers
/// `lapin::returned_messages`, `amq_protocol` covers `amq_protocol_tcp`).
pub fn dependency_filter() -> Targets {
    let silenced = SILENCED.iter().map(|t| (*t, LevelFilter::OFF));
    Targets::new().with_default(DEPENDENCY_CAP).with_target("hookgate", LevelFilter::TRACE).with_targets(silenced)
}

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(logging: &Logging, rust_log: Option<String>) {
    let filter = rust_log
        .and_then(|d| EnvFilter::try_new(d).ok())
        .or_else(|| EnvFilter::try_new(&logging.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let base = tracing_subscriber::registry().with(filter).with(dependency_filter());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match logging.format {
        LogFormat::Json => base.with(fmt.json().flatten_event(true).with_current_span(false)).try_init(),
        LogFormat::Text => base.with(fmt).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    fn passes(target: &str, level: Level) -> bool {
        dependency_filter().would_enable(target, &level)
    }

    #[test]
    fn dependencies_are_capped_and_lapin_is_silenced() {
        assert!(passes("hookgate::pipeline", Level::TRACE));
        assert!(passes("hookgate", Level::DEBUG));
        assert!(!passes("lapin::returned_messages", Level::WARN));
        assert!(!passes("lapin::io_loop", Level::ERROR));
        assert!(!passes("amq_protocol_tcp", Level::ERROR));
        for dep in ["h2::codec::framed_read", "hyper::proto::h1::role", "rustls::server", "redis::aio", "mio"] {
            assert!(!passes(dep, Level::DEBUG), "{dep} at debug");
            assert!(!passes(dep, Level::TRACE), "{dep} at trace");
            assert!(passes(dep, Level::WARN), "{dep} keeps its warnings");
        }
    }
}
