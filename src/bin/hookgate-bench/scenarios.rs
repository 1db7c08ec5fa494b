//! The scenarios: each starts a fresh gateway (own data directory, exchange and drain queue), measures one or
//! more phases, stops it and checks the queue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use tokio::time::Instant;

use crate::broker::{self, Drain, Proxy, Shape};
use crate::client::{self, Forwarded, Load, Pace, Tally, Target};
use crate::gateway::{dir_bytes, Gateway, ProcStats, Setup};
use crate::report::{Report, Row};
use crate::traffic::{self, Traffic};
use crate::{pki, Args, Scenario, Transport};

struct Ctx {
    args: Args,
    dir: PathBuf,
    run: u64,
    serial: u64,
}

impl Ctx {
    fn traffic(&self, retry: f64, ooo: f64) -> impl Fn(u64) -> Traffic + '_ {
        let (run, mix) = (self.run ^ (self.serial << 40), self.args.mix);
        move |i| Traffic::new(run, i, mix, retry, ooo)
    }

    fn setup(&mut self, transport: Transport, amqp: &str) -> anyhow::Result<(Setup, Option<pki::Pki>)> {
        self.serial += 1;
        let name = format!("hookgate-bench-{:x}-{}", self.run, self.serial);
        let dir = self.dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let pki = match transport {
            Transport::Plain => None,
            Transport::Tls => Some(pki::generate(&dir, false)?),
            Transport::Mtls => Some(pki::generate(&dir, true)?),
        };
        let key = dir.join("spool.key");
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("random"))?;
        std::fs::write(&key, base64::engine::general_purpose::STANDARD.encode(bytes))?;
        let storage_extra = format!("spool_key_file = \"{}\"\n{}", key.display(), self.args.storage_extra);
        let binary = match &self.args.gateway {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("hookgate"),
        };
        let setup = Setup {
            binary,
            dir,
            exchange: name,
            amqp: amqp.to_string(),
            server_tls: pki.as_ref().map(|p| p.server_toml.clone()).unwrap_or_default(),
            sources: traffic::sources_toml(transport == Transport::Mtls),
            storage_extra,
            log_level: self.args.gateway_log_level.clone(),
            rate_limits: String::new(),
            trusted_proxies: false,
        };
        Ok((setup, pki))
    }

    async fn start(&self, setup: &Setup) -> anyhow::Result<Gateway> {
        let g = Gateway::start(setup, &setup.dir.join("data")).await?;
        if let Some(p) = &self.args.pid_file {
            std::fs::write(p, g.pid().to_string())?;
        }
        Ok(g)
    }
}

fn target(g: &Gateway, pki: Option<&pki::Pki>) -> Target {
    Target { addr: g.addr, tls: pki.map(|p| p.client.clone()) }
}

fn name(t: Transport) -> &'static str {
    match t {
        Transport::Plain => "plain",
        Transport::Tls => "tls",
        Transport::Mtls => "mtls",
    }
}

/// The gateway's own timings a phase reads before and after (sum and count of each histogram).
const TIMINGS: [&str; 4] = [
    "hookgate_request_duration_seconds_sum",
    "hookgate_request_duration_seconds_count",
    "hookgate_publish_confirm_seconds_sum",
    "hookgate_publish_confirm_seconds_count",
];

/// One phase against a running gateway: the load, then its row (CPU and RSS from `/proc`).
async fn phase(
    g: &Gateway,
    scenario: &str,
    transport: Transport,
    load: &Load,
    traffic: impl Fn(u64) -> Traffic,
) -> anyhow::Result<(Row, Tally)> {
    let (before, timed_before) = (g.stats(), g.metrics(&TIMINGS).await);
    let (tally, took) = client::run(load, traffic).await?;
    let (after, timed_after) = (g.stats(), g.metrics(&TIMINGS).await);
    let mut row =
        Row::from_tally(scenario, name(transport), &tally, took.as_secs_f64(), after.cpu_secs - before.cpu_secs, after);
    row.note("conns", load.connections);
    note_means(&mut row, &tally, &timed_before, &timed_after);
    Ok((row, tally))
}

/// Where a request's time went, as means over the phase: `client_mean_ms` (sent or due → answer read, as the
/// generator saw it), `handled_mean_ms` (the gateway's `hookgate_request_duration_seconds`: the handler, receipt
/// to answer), `confirm_mean_ms` (its `hookgate_publish_confirm_seconds`: publish → the broker's confirm). What
/// the client sees beyond the handler is reading and writing the request (TLS, HTTP, the kernel, both
/// processes' queues); what the handler takes beyond the confirm is the gateway's own work.
fn note_means(row: &mut Row, tally: &Tally, before: &[f64], after: &[f64]) {
    if !tally.hist.is_empty() {
        row.note("client_mean_ms", format!("{:.2}", tally.hist.mean() / 1000.0));
    }
    let mean_ms = |sum: usize| {
        let n = after.get(sum + 1)? - before.get(sum + 1)?;
        let secs = after.get(sum)? - before.get(sum)?;
        (n >= 1.0).then_some(secs * 1000.0 / n)
    };
    for (note, sum) in [("handled_mean_ms", 0), ("confirm_mean_ms", 2)] {
        if let Some(ms) = mean_ms(sum).filter(|ms| ms.is_finite()) {
            row.note(note, format!("{ms:.2}"));
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let run = u64::from(std::process::id()) << 20 ^ u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("hookgate-bench-{run:x}"));
    std::fs::create_dir_all(&dir)?;
    let mut ctx = Ctx { args, dir: dir.clone(), run, serial: 0 };
    let mut report = Report { machine: machine(), ..Report::default() };
    let all = ctx.args.scenario.contains(&Scenario::All);
    ctx.args.contract_ceiling |= all;
    let chosen = ctx.args.scenario.clone();
    let want = |s: Scenario| all || chosen.contains(&s);
    let with_ceiling = all || ctx.args.ceiling || ctx.args.scenario.contains(&Scenario::Ceiling);
    if with_ceiling {
        report.ceilings.push(ceiling(&ctx, Shape::Raw).await?);
    }
    if ctx.args.contract_ceiling {
        report.contract_ceiling = Some(ceiling(&ctx, Shape::Contract).await?);
    }
    let mut rows = Vec::new();
    if want(Scenario::Max) {
        let transport = ctx.args.transport;
        rows.push(max(&mut ctx, transport, "max").await?);
    }
    if want(Scenario::Fixed) {
        rows.push(fixed(&mut ctx, "fixed").await?);
    }
    if chosen.contains(&Scenario::Steady) {
        rows.push(fixed(&mut ctx, "steady").await?);
    }
    if want(Scenario::Retries) {
        rows.push(retries(&mut ctx).await?);
    }
    if want(Scenario::Spool) {
        rows.push(spool(&mut ctx).await?);
    }
    if want(Scenario::Ratelimit) {
        rows.push(ratelimit(&mut ctx).await?);
    }
    if want(Scenario::Index) {
        rows.extend(index(&mut ctx).await?);
    }
    if with_ceiling && !rows.is_empty() {
        report.ceilings.push(ceiling(&ctx, Shape::Raw).await?);
    }
    if !report.ceilings.is_empty() {
        let c = report.ceilings.iter().sum::<f64>() / report.ceilings.len() as f64;
        report.ceiling = Some(c);
        for r in &mut rows {
            r.ratio = Some(r.ok_per_s / c);
        }
    }
    if let Some(c) = report.contract_ceiling {
        for r in &mut rows {
            r.note("of_contract_ceiling", format!("{:.2}", r.ok_per_s / c));
        }
    }
    report.rows = rows;
    report.print(ctx.args.report);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

fn machine() -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    m.insert("cpus".into(), cpus.to_string());
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        m.insert("loadavg at start".into(), l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    }
    if let Ok(c) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = c.lines().find_map(|l| l.strip_prefix("model name")) {
            m.insert("cpu".into(), model.trim_start_matches([' ', '\t', ':']).to_string());
        }
    }
    m
}

async fn ceiling(ctx: &Ctx, shape: Shape) -> anyhow::Result<f64> {
    let a = &ctx.args;
    let (rate, hist) = broker::ceiling(&a.amqp, a.connections, a.duration, shape, ctx.traffic(0.0, 0.0))
        .await
        .context("broker ceiling")?;
    let what = if shape == Shape::Raw { "broker ceiling" } else { "contract ceiling" };
    eprintln!(
        "{what}: {rate:.0}/s, confirm p50 {:.1} ms p99 {:.1} ms ({} in flight)",
        crate::report::ms(&hist, 0.5),
        crate::report::ms(&hist, 0.99),
        ctx.args.connections
    );
    Ok(rate)
}

/// Stops the gateway (SIGTERM: drains), then checks the queue against the answers.
async fn finish(mut row: Row, g: Gateway, drain: Drain, exchange: &str, tally: &Tally) -> anyhow::Result<Row> {
    row.ready_ms = Some(g.ready_after.as_secs_f64() * 1000.0);
    g.stop().await;
    row.check = Some(drain.check(exchange, &tally.ok_keys, Duration::from_secs(2)).await?);
    eprintln!("{}: {:.0}/s, {:?}", row.scenario, row.ok_per_s, row.check);
    Ok(row)
}

/// Starts the scenario's gateway and binds the queue its delivery check drains.
async fn up(ctx: &Ctx, setup: &Setup) -> anyhow::Result<(Gateway, Drain)> {
    let g = ctx.start(setup).await?;
    // Ready means able to store (the spool counts): the exchange exists once the broker connection is up.
    wait_metric(&g, "hookgate_broker_connected", 1.0, Duration::from_secs(30)).await?;
    let drain = Drain::bind(&ctx.args.amqp, &setup.exchange).await?;
    Ok((g, drain))
}

async fn max(ctx: &mut Ctx, transport: Transport, label: &str) -> anyhow::Result<Row> {
    let (setup, pki) = ctx.setup(transport, &ctx.args.amqp.clone())?;
    let (g, drain) = up(ctx, &setup).await?;
    let load = Load {
        target: target(&g, pki.as_ref()),
        connections: ctx.args.connections,
        duration: ctx.args.duration,
        pace: Pace::Closed,
        forwarded: None,
    };
    let (row, tally) =
        phase(&g, label, transport, &load, ctx.traffic(ctx.args.retry_share, ctx.args.out_of_order_share)).await?;
    finish(row, g, drain, &setup.exchange, &tally).await
}

async fn fixed(ctx: &mut Ctx, label: &str) -> anyhow::Result<Row> {
    let transport = ctx.args.transport;
    let (setup, pki) = ctx.setup(transport, &ctx.args.amqp.clone())?;
    let (g, drain) = up(ctx, &setup).await?;
    let load = Load {
        target: target(&g, pki.as_ref()),
        connections: ctx.args.open_connections,
        duration: ctx.args.duration,
        pace: Pace::Open { rate: ctx.args.rate },
        forwarded: None,
    };
    let (mut row, tally) =
        phase(&g, label, transport, &load, ctx.traffic(ctx.args.retry_share, ctx.args.out_of_order_share)).await?;
    row.note("rate", ctx.args.rate);
    let row = finish(row, g, drain, &setup.exchange, &tally).await?;
    if label == "steady" {
        return Ok(row);
    }
    broker_alone(ctx, row).await
}

/// Adds the broker's own latency at the scenario's rate (`broker::paced`) to a `fixed` row: the floor under the
/// gateway's percentiles on this machine (`broker_alone_*`); with the contract ceiling on (`all`), also the floor
/// for the contract's message (`broker_alone_contract_*`: what the broker alone takes for the message the gateway
/// must publish).
async fn broker_alone(ctx: &Ctx, mut row: Row) -> anyhow::Result<Row> {
    let mut shapes = vec![(Shape::Raw, "broker_alone")];
    if ctx.args.contract_ceiling {
        shapes.push((Shape::Contract, "broker_alone_contract"));
    }
    for (shape, name) in shapes {
        let h = broker::paced(&ctx.args.amqp, shape, ctx.args.rate, ctx.args.duration, ctx.traffic(0.0, 0.0))
            .await
            .context("the broker alone at the fixed rate")?;
        let ms = |q: f64| format!("{:.1}", crate::report::ms(&h, q));
        row.note(&format!("{name}_p50_ms"), ms(0.5));
        row.note(&format!("{name}_p99_ms"), ms(0.99));
        row.note(&format!("{name}_p999_ms"), ms(0.999));
    }
    Ok(row)
}

async fn retries(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let (setup, _) = ctx.setup(Transport::Plain, &ctx.args.amqp.clone())?;
    let (g, drain) = up(ctx, &setup).await?;
    let load = Load {
        target: target(&g, None),
        connections: ctx.args.connections,
        duration: ctx.args.duration,
        pace: Pace::Closed,
        forwarded: None,
    };
    let (mut row, tally) = phase(&g, "retries", Transport::Plain, &load, ctx.traffic(0.95, 0.0)).await?;
    row.note("retry_share", 0.95);
    finish(row, g, drain, &setup.exchange, &tally).await
}

async fn spool(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let transport = ctx.args.transport;
    let proxy = Proxy::start(ctx.args.broker_addr).await?;
    let upstream = ctx.args.broker_addr.to_string();
    if !ctx.args.amqp.contains(&upstream) {
        bail!("--amqp does not contain --broker-addr {upstream}");
    }
    let via = ctx.args.amqp.replace(&upstream, &proxy.addr.to_string());
    let (setup, pki) = ctx.setup(transport, &via)?;
    let (g, drain) = up(ctx, &setup).await?;
    proxy.cut();
    wait_metric(&g, "hookgate_broker_connected", 0.0, Duration::from_secs(20)).await?;
    let load = Load {
        target: target(&g, pki.as_ref()),
        connections: ctx.args.connections,
        duration: ctx.args.duration,
        pace: Pace::Closed,
        forwarded: None,
    };
    let (mut row, tally) =
        phase(&g, "spool", transport, &load, ctx.traffic(ctx.args.retry_share, ctx.args.out_of_order_share)).await?;
    row.note("spooled", g.metric("hookgate_spooled_total").await);
    row.note("spool_MB", format!("{:.0}", dir_bytes(&setup.dir.join("data").join("spool")) as f64 / 1e6));
    proxy.restore();
    let t = Instant::now();
    wait_metric(&g, "hookgate_spool_events", 0.0, Duration::from_secs(600)).await?;
    row.note("drained_in_s", format!("{:.1}", t.elapsed().as_secs_f64()));
    finish(row, g, drain, &setup.exchange, &tally).await
}

async fn wait_metric(g: &Gateway, name: &str, value: f64, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    while g.metric(name).await != value {
        if Instant::now() > until {
            bail!("{name} did not reach {value} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn ratelimit(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let transport = ctx.args.transport;
    let (mut setup, pki) = ctx.setup(transport, &ctx.args.amqp.clone())?;
    setup.trusted_proxies = true;
    setup.rate_limits = "global = { per_second = 20000, burst = 40000 }\nper_client = { per_second = 1, burst = 2 }\n\
                         max_clients = 100000\n"
        .into();
    let (g, drain) = up(ctx, &setup).await?;
    let load = Load {
        target: target(&g, pki.as_ref()),
        connections: ctx.args.connections,
        duration: ctx.args.duration,
        pace: Pace::Closed,
        forwarded: Some(Forwarded { clients: ctx.args.clients, per_address: 4 }),
    };
    let (mut row, tally) = phase(&g, "ratelimit", transport, &load, ctx.traffic(0.0, 0.0)).await?;
    row.note("clients", ctx.args.clients);
    row.note("limiter_keys", g.metric("hookgate_rate_limiter_keys").await);
    row.note("429_without_retry_after", tally.no_retry_after);
    finish(row, g, drain, &setup.exchange, &tally).await
}

/// Stores `n` distinct events in the index of `data_dir` before the gateway starts, through the gateway's own
/// state code: the records deliveries write (a `prepaid-card` event's id is its subject, so it writes no order
/// row), in commits as large as the gateway's largest group commit (`state::BATCH` records; a larger commit
/// frees more pages at once and leaves a larger file than the gateway ever would).
async fn grow_index(data_dir: &Path, n: u64, run: u64) -> anyhow::Result<()> {
    use hookgate::state::{now_ms, Op, State, BATCH};
    let state = State::open(data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let expires_ms = now_ms() + 72 * 3_600_000;
    let mut i = 0u64;
    let started = Instant::now();
    while i < n {
        let batch = (n - i).min(BATCH as u64);
        let ops = (i..i + batch)
            .map(|k| Op::Done {
                key: hookgate::dedup::key("prepaid-card", &format!("{run:08x}-0000-4000-8000-{k:012x}")),
                expires_ms,
            })
            .collect();
        state.write(ops).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        i += batch;
    }
    eprintln!("index: {n} events stored in {:.1} s", started.elapsed().as_secs_f64());
    drop(state);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Bytes of the dedup index on disk: `state.redb` and the record log's files (`state.log.<n>`).
fn state_bytes(data: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(data) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n == "state.redb" || n.starts_with("state.log.")))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

async fn index(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![];
    for n in [0, ctx.args.index_events] {
        let (setup, _) = ctx.setup(Transport::Plain, &ctx.args.amqp.clone())?;
        let data = setup.dir.join("data");
        if n > 0 {
            grow_index(&data, n, ctx.run).await?;
        }
        let before_bytes = state_bytes(&data);
        let (g, drain) = up(ctx, &setup).await?;
        let start_rss = ProcStats::read(g.pid()).rss;
        let load = Load {
            target: target(&g, None),
            connections: ctx.args.connections,
            duration: ctx.args.duration,
            pace: Pace::Closed,
            forwarded: None,
        };
        let label = format!("index {n}");
        let (mut row, tally) =
            phase(&g, &label, Transport::Plain, &load, ctx.traffic(ctx.args.retry_share, 0.0)).await?;
        let after = state_bytes(&data);
        let events = n + tally.stored;
        row.note("rss_at_ready_MiB", format!("{:.1}", start_rss as f64 / 1048576.0));
        row.note("state_MB", format!("{:.1}", after as f64 / 1e6));
        if n > 0 {
            row.note("B_per_event_grown", format!("{:.0}", before_bytes as f64 / n as f64));
        }
        row.note("B_per_event", format!("{:.0}", after as f64 / events.max(1) as f64));
        rows.push(finish(row, g, drain, &setup.exchange, &tally).await?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_are_the_phase_s_differences_and_a_phase_without_confirms_has_no_confirm_mean() {
        let mut tally = Tally::new();
        for micros in [2_000, 4_000, 6_000] {
            tally.hist.record(micros).unwrap();
        }
        let mut row = Row::default();
        // Before: 1 s over 100 requests, 0.5 s over 50 confirms; the phase adds 0.3 s over 100 and 0.2 s over 40.
        note_means(&mut row, &tally, &[1.0, 100.0, 0.5, 50.0], &[1.3, 200.0, 0.7, 90.0]);
        let note = |k: &str| row.notes.get(k).map(String::as_str);
        assert_eq!(note("client_mean_ms"), Some("4.00"));
        assert_eq!(note("handled_mean_ms"), Some("3.00"));
        assert_eq!(note("confirm_mean_ms"), Some("5.00"));

        let mut row = Row::default();
        note_means(&mut row, &Tally::new(), &[1.0, 100.0, 0.5, 50.0], &[1.3, 200.0, 0.5, 50.0]);
        assert_eq!(row.notes.keys().collect::<Vec<_>>(), ["handled_mean_ms"]);
        let mut row = Row::default();
        note_means(&mut row, &Tally::new(), &[f64::NAN; 4], &[1.3, 200.0, 0.7, 90.0]);
        assert!(row.notes.is_empty(), "a failed scrape notes nothing: {:?}", row.notes);
    }
}
