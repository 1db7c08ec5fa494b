//! Provider timestamps: RFC 3339, ISO-8601 without a zone (taken as UTC), `YYYY-MM-DD hh:mm:ss`, US dates, and
//! Unix seconds or milliseconds.

use std::sync::LazyLock;

use chrono::format::{parse, Item, Parsed, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Date-times without a zone, tried in order (taken as UTC).
const NAIVE: [&str; 6] = [
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];
/// Dates alone (midnight UTC).
const DATES: [&str; 2] = ["%Y-%m-%d", "%m/%d/%Y"];

/// A format string, parsed.
type Format = Vec<Item<'static>>;

/// The formats above, parsed once (`parse_from_str` parses its format string again on every call, and every
/// delivery's timestamp goes through here).
static COMPILED: LazyLock<(Vec<Format>, Vec<Format>)> = LazyLock::new(|| {
    let compile = |formats: &[&str]| -> Vec<Format> {
        formats.iter().filter_map(|f| StrftimeItems::new(f).parse_to_owned().ok()).collect()
    };
    (compile(&NAIVE), compile(&DATES))
});

fn parsed(s: &str, items: &[Item<'static>]) -> Option<Parsed> {
    let mut p = Parsed::new();
    parse(&mut p, s, items.iter()).ok()?;
    Some(p)
}

pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    let s = raw.trim().trim_matches('"');
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        return if s.len() >= 13 { Utc.timestamp_millis_opt(n).single() } else { Utc.timestamp_opt(n, 0).single() };
    }
    let (naive, dates) = &*COMPILED;
    let time = |items: &Format| -> Option<NaiveDateTime> { parsed(s, items)?.to_naive_datetime_with_offset(0).ok() };
    if let Some(t) = naive.iter().find_map(time) {
        return Some(t.and_utc());
    }
    let date = |items: &Format| -> Option<NaiveDate> { parsed(s, items)?.to_naive_date().ok() };
    dates.iter().find_map(date).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_formats() {
        let t = |s| parse_time(s).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        assert_eq!(t("2016-01-15T20:37:21.5238539Z").as_deref(), Some("2016-01-15T20:37:21Z"));
        assert_eq!(t("2025-04-18 14:55:28").as_deref(), Some("2025-04-18T14:55:28Z"));
        assert_eq!(t("\"2021-01-13T04:23:50.659Z\"").as_deref(), Some("2021-01-13T04:23:50Z"));
        assert_eq!(t("1700000000").as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(t("1700000000000").as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(t("01/15/2016 08:37:21 PM").as_deref(), Some("2016-01-15T20:37:21Z"));
        assert_eq!(t("2016-01-15").as_deref(), Some("2016-01-15T00:00:00Z"));
        assert_eq!(t("yesterday"), None);
    }

    #[test]
    fn compiled_formats_parse_as_parse_from_str_does() {
        assert_eq!(COMPILED.0.len(), NAIVE.len());
        assert_eq!(COMPILED.1.len(), DATES.len());
        let samples = [
            "2025-04-18T14:55:28.5",
            "2025-04-18 14:55:28",
            "01/15/2016 08:37:21 PM",
            "01/15/2016 20:37:21",
            "2016-01-15T20:37",
            "2016-01-15 20:37",
            "2016-01-15",
            "01/15/2016",
            "2016-13-45 99:99:99",
            "13/45/2016",
            "2016-01-15 20:37:21 trailing",
            "",
        ];
        for s in samples {
            let old = NAIVE
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .or_else(|| DATES.iter().find_map(|f| NaiveDate::parse_from_str(s, f).ok()?.and_hms_opt(0, 0, 0)))
                .map(|t| t.and_utc());
            assert_eq!(parse_time(s), old, "{s}");
        }
    }
}
