//! One row per measured phase; printed as a table or as JSON (for scripts).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::broker::Check;
use crate::client::Tally;
use crate::gateway::ProcStats;
use crate::ReportFormat;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Row {
    pub scenario: String,
    pub transport: String,
    /// Answers per second (every status).
    pub answers_per_s: f64,
    /// Events answered 200 per second.
    pub ok_per_s: f64,
    /// `ok_per_s` / the broker's ceiling.
    pub ratio: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub peak_rss_mib: f64,
    pub cpu_s_per_1000: f64,
    pub ready_ms: Option<f64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    pub check: Option<Check>,
    pub notes: BTreeMap<String, String>,
}

pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

impl Row {
    pub fn from_tally(scenario: &str, transport: &str, t: &Tally, secs: f64, cpu: f64, stats: ProcStats) -> Row {
        let ok = t.statuses.get(&200).copied().unwrap_or(0);
        Row {
            scenario: scenario.into(),
            transport: transport.into(),
            answers_per_s: t.answered as f64 / secs,
            ok_per_s: ok as f64 / secs,
            p50_ms: ms(&t.hist, 0.5),
            p99_ms: ms(&t.hist, 0.99),
            p999_ms: ms(&t.hist, 0.999),
            max_ms: t.hist.max() as f64 / 1000.0,
            peak_rss_mib: stats.peak_rss as f64 / 1048576.0,
            cpu_s_per_1000: if t.answered == 0 { 0.0 } else { cpu * 1000.0 / t.answered as f64 },
            statuses: t.statuses.clone(),
            errors: t.errors,
            ..Row::default()
        }
    }

    pub fn note(&mut self, k: &str, v: impl ToString) {
        self.notes.insert(k.into(), v.to_string());
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub machine: BTreeMap<String, String>,
    pub ceilings: Vec<f64>,
    pub ceiling: Option<f64>,
    /// The ceiling of the contract's message (`broker::Shape::Contract`), when measured.
    pub contract_ceiling: Option<f64>,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn all_delivered(&self) -> bool {
        self.rows.iter().filter_map(|r| r.check.as_ref()).all(|c| c.lost == 0 && c.unexpected == 0)
    }

    pub fn print(&self, format: ReportFormat) {
        if format == ReportFormat::Json {
            println!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
            return;
        }
        for (k, v) in &self.machine {
            println!("{k}: {v}");
        }
        if let Some(c) = self.ceiling {
            let each: Vec<String> = self.ceilings.iter().map(|c| format!("{c:.0}")).collect();
            println!("broker ceiling: {c:.0}/s (runs: {})", each.join(", "));
        }
        if let Some(c) = self.contract_ceiling {
            println!("contract ceiling: {c:.0}/s (the gateway's message: topic exchange, CloudEvents headers)");
        }
        println!(
            "| scenario | transport | 200/s | ratio | p50 / p99 / p99.9 / max ms | peak RSS MiB | CPU s/1000 | ready ms | answers | lost / unexpected / dup | notes |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}"));
            let ready = r.ready_ms.map_or("-".into(), |x| format!("{x:.0}"));
            let check =
                r.check.as_ref().map_or("-".into(), |c| format!("{} / {} / {}", c.lost, c.unexpected, c.duplicates));
            let statuses: Vec<String> = r.statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let notes: Vec<String> = r.notes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "| {} | {} | {:.0} | {} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} | {:.3} | {} | {}{} | {} | {} |",
                r.scenario,
                r.transport,
                r.ok_per_s,
                ratio,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.max_ms,
                r.peak_rss_mib,
                r.cpu_s_per_1000,
                ready,
                statuses.join(" "),
                if r.errors > 0 { format!(" err:{}", r.errors) } else { String::new() },
                check,
                notes.join(" "),
            );
        }
    }
}
