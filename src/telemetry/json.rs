//! The JSON line of `logging.format = "json"`, written straight into the line buffer: the same object
//! tracing-subscriber's `json().flatten_event(true)` writes (`timestamp`, `level`, the event's fields in order,
//! `target`), without its per-line costs (a `String` for the timestamp, serde_json's serializer behind an adaptor
//! that checks every small write for UTF-8 again). One line per delivery makes this the gateway's most frequent
//! piece of work after the HTTP exchange itself.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of the JSON format.
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // A record of the `log` crate (through tracing-log) names its own target and level.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields { w: &mut w, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .w
                .write_char(',')
                .and_then(|()| string(self.w, field.name()))
                .and_then(|()| self.w.write_char(':'))
                .and_then(|()| value(self.w));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| string(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    /// As serde_json: a finite number (`Debug` keeps the `.0` and uses an exponent where serde_json does), else
    /// `null`.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |w| if value.is_finite() { write!(w, "{value:?}") } else { w.write_str("null") });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A JSON string.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what it is given as the inside of a JSON string (as serde_json does: quote, backslash and control
/// characters; everything else as it is).
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::telemetry::Shared;

    fn events() {
        let outcome = crate::respond::Stored::Duplicate;
        tracing::info!(target: "hookgate::pipeline", source = "card", request_id = 7u64, event_id = "tx-1",
            status = 200u16, ?outcome, latency_ms = 0.123, "delivery stored");
        tracing::warn!(target: "hookgate::pipeline", source = "t\"y\\r\no\u{1}", latency_ms = 3.0,
            neg = -4i64, ok = false, big = 1e21, tiny = 1e-7, nan = f64::NAN, reason = %"bad \"sig\"", "refused");
        tracing::error!(target: "hookgate", error = ?std::io::Error::other("disk\tfull"), "spool write failed");
    }

    /// Lines of `events()` through `subscriber`, parsed.
    fn lines(json: bool) -> Vec<serde_json::Map<String, Value>> {
        let out = Shared::default();
        let w = out.clone();
        let make = move || w.clone();
        let builder = tracing_subscriber::fmt().with_writer(make).with_ansi(false);
        if json {
            tracing::subscriber::with_default(builder.event_format(JsonLine).finish(), events);
        } else {
            tracing::subscriber::with_default(
                builder.json().flatten_event(true).with_current_span(false).finish(),
                events,
            );
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap().as_object().unwrap().clone()).collect()
    }

    #[test]
    fn writes_the_object_tracing_subscribers_json_writes() {
        let (ours, theirs) = (lines(true), lines(false));
        assert_eq!(ours.len(), 3);
        for (mut a, mut b) in ours.into_iter().zip(theirs) {
            let (ta, tb) = (a.remove("timestamp").unwrap(), b.remove("timestamp").unwrap());
            assert_eq!(ta.as_str().unwrap().len(), tb.as_str().unwrap().len(), "{ta} / {tb}");
            assert!(ta.as_str().unwrap().ends_with('Z'));
            assert_eq!(a, b);
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "same keys in the same order");
        }
    }

    #[test]
    fn escapes_as_json() {
        let first = &lines(true)[1];
        assert_eq!(first["source"], "t\"y\\r\no\u{1}");
        assert_eq!(first["reason"], "bad \"sig\"");
        assert_eq!(first["latency_ms"], 3.0);
        assert_eq!(first["nan"], Value::Null);
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["target"], "hookgate::pipeline");
    }
}
