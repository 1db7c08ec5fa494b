//! The tracing subscriber: JSON lines in production, readable text in development. `RUST_LOG` overrides
//! `logging.level`. Nothing here ever formats a body, a header value or a secret: events carry ids, sizes,
//! statuses and latencies only.
//!
//! Dependencies are not trusted to keep that rule, so a second filter sits in front of the configured one and
//! no directive can lift it: lapin logs every returned (unroutable) message at WARN, body bytes and headers
//! included, and at TRACE every AMQP frame; its parse errors can carry the bytes they failed on. lapin and
//! amq-protocol are therefore silenced (the publisher logs broker failures itself). Every other dependency (h2,
//! hyper, rustls, redis, ...) is capped at WARN: at DEBUG and TRACE h2 prints frames and hyper request heads.
//!
//! The one line per delivery (the pipeline's INFO line) is not one `write(2)` per request: it is appended to
//! a buffer that a thread of its own writes out every [`FLUSH_EVERY`] (or at once past [`FLUSH_BYTES`]). Every
//! other line first writes out what is buffered, then itself, so lines keep their order, and a process that
//! stops (whose last line is `hookgate stopped` or an error) leaves nothing behind; a `kill -9` can lose the
//! delivery lines of the last [`FLUSH_EVERY`].

mod json;
mod throttle;

pub use throttle::Throttle;

use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
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
    let fmt = tracing_subscriber::fmt::layer().with_writer(LogWriter::stderr()).with_ansi(ansi);
    let _ = match logging.format {
        LogFormat::Json => base.with(fmt.event_format(json::JsonLine)).try_init(),
        LogFormat::Text => base.with(fmt).try_init(),
    };
}

/// How long a delivery line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Buffered bytes past which the line that passes them writes the buffer out itself.
pub const FLUSH_BYTES: usize = 64 << 10;

/// The target of the per-delivery INFO line (`pipeline/answer.rs` names it explicitly, so moving the code that
/// logs it cannot turn the buffering off); only INFO lines of this target are buffered.
pub const DELIVERY_TARGET: &str = "hookgate::pipeline";

/// Where lines go: `out` (stderr in the process), with the delivery lines buffered (see the module doc).
pub struct LogSink {
    pending: Mutex<Vec<u8>>,
    /// Held while anything is written to `out`, so buffered and direct lines keep their order.
    out: Mutex<Box<dyn Write + Send>>,
}

impl LogSink {
    pub fn new(out: Box<dyn Write + Send>) -> LogSink {
        LogSink { pending: Mutex::new(Vec::with_capacity(FLUSH_BYTES)), out: Mutex::new(out) }
    }

    fn out(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_pending(&self) -> Vec<u8> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *pending, Vec::with_capacity(FLUSH_BYTES))
    }

    /// Appends a delivery line; writes the buffer out when it has grown past [`FLUSH_BYTES`].
    fn buffer(&self, line: &[u8]) {
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.extend_from_slice(line);
            pending.len() >= FLUSH_BYTES
        };
        if full {
            self.flush();
        }
    }

    /// Writes out what is buffered, then `line`.
    fn direct(&self, line: &[u8]) {
        let mut out = self.out();
        let pending = self.take_pending();
        // A log that cannot be written is not an error of the delivery; nothing else to do with it.
        let _ = out.write_all(&pending).and_then(|()| out.write_all(line)).and_then(|()| out.flush());
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        let mut out = self.out();
        let pending = self.take_pending();
        if !pending.is_empty() {
            let _ = out.write_all(&pending).and_then(|()| out.flush());
        }
    }
}

/// The `MakeWriter` of the subscriber: one [`LogSink`] for the process, flushed by its own thread.
#[derive(Clone, Copy)]
pub struct LogWriter {
    sink: &'static LogSink,
}

impl LogWriter {
    /// The process's sink on stderr (created once, with its flushing thread).
    pub fn stderr() -> LogWriter {
        static SINK: OnceLock<&'static LogSink> = OnceLock::new();
        let sink = *SINK.get_or_init(|| {
            let sink: &'static LogSink = Box::leak(Box::new(LogSink::new(Box::new(std::io::stderr()))));
            let started = std::thread::Builder::new().name("hookgate-log".into()).spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                sink.flush();
            });
            if started.is_err() {
                eprintln!("hookgate: cannot start the log thread; delivery lines are written as they come");
            }
            sink
        });
        LogWriter { sink }
    }

    /// A writer on `sink` (tests; the process uses [`LogWriter::stderr`]).
    pub fn on(sink: &'static LogSink) -> LogWriter {
        LogWriter { sink }
    }
}

/// One line: buffered or direct (the formatter writes each line with one `write_all`).
pub struct Line {
    sink: &'static LogSink,
    buffered: bool,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.buffered {
            self.sink.buffer(buf);
        } else {
            self.sink.direct(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { sink: self.sink, buffered: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        let buffered = *meta.level() == Level::INFO && meta.target() == DELIVERY_TARGET;
        Line { sink: self.sink, buffered }
    }
}

/// A writer into a shared buffer: tests read what was logged through it.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Shared(pub(crate) std::sync::Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn delivery_lines_are_buffered_and_every_other_line_writes_them_out_first_in_order() {
        let out = Shared::default();
        let sink: &'static LogSink = Box::leak(Box::new(LogSink::new(Box::new(out.clone()))));
        let writer = LogWriter::on(sink);
        let subscriber = tracing_subscriber::fmt().with_writer(writer).without_time().with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "hookgate::pipeline", n = 1, "delivery stored");
            tracing::info!(target: "hookgate::pipeline", n = 2, "delivery stored");
            assert!(out.0.lock().unwrap().is_empty(), "delivery lines wait in the buffer");
            tracing::warn!(target: "hookgate::pipeline", n = 3, "delivery refused");
            tracing::info!(target: "hookgate::pipeline", n = 4, "delivery stored");
            tracing::info!(target: "hookgate", "hookgate stopped");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        for (line, want) in text.lines().zip(["n=1", "n=2", "n=3", "n=4", "stopped"]) {
            assert!(line.contains(want), "{want} out of order:\n{text}");
        }
        // Past FLUSH_BYTES a delivery line writes the buffer out itself; flush() writes the rest.
        let before = out.0.lock().unwrap().len();
        let line = vec![b'x'; 1000];
        for _ in 0..(FLUSH_BYTES / 1000 + 1) {
            sink.buffer(&line);
        }
        assert!(out.0.lock().unwrap().len() > before, "a full buffer is written out");
        sink.buffer(b"tail\n");
        sink.flush();
        assert!(out.0.lock().unwrap().ends_with(b"tail\n"));
    }

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
