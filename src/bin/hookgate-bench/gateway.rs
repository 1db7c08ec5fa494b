//! The gateway under test: a child process with a generated config, its own exchange and data directory; its
//! readiness, admin metrics and `/proc` figures (peak RSS, CPU seconds).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// What the generated config holds besides the sources.
pub struct Setup {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub exchange: String,
    pub amqp: String,
    pub server_tls: String,
    pub sources: String,
    pub storage_extra: String,
    pub log_level: String,
    /// `[rate_limits]` body; empty: limits far above any load.
    pub rate_limits: String,
    pub trusted_proxies: bool,
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Spawn to `/readyz` 200.
    pub ready_after: Duration,
}

/// A loopback address for a process the bench starts (the gateway), below the ephemeral range.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let port = crate::ports::free_port_in(32_000..32_768)
        .ok_or_else(|| anyhow::anyhow!("no free loopback port in 32000-32767"))?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn config(s: &Setup, addr: SocketAddr, admin: SocketAddr, data_dir: &Path) -> String {
    let proxies = if s.trusted_proxies { "trusted_proxies = [\"127.0.0.1/32\"]\n" } else { "" };
    let limits = if s.rate_limits.is_empty() {
        "global = { per_second = 10000000, burst = 10000000 }\nper_client = { per_second = 10000000, burst = 10000000 }\n"
    } else {
        &s.rate_limits
    };
    format!(
        "[server]\nlisten = \"{addr}\"\n{proxies}\n{tls}\n[admin]\nlisten = \"{admin}\"\n\n[broker]\nurl = \"{amqp}\"\nexchange = \"{ex}\"\n\n\
         [storage]\ndata_dir = \"{data}\"\n{extra}\n\n[rate_limits]\n{limits}\n[logging]\nformat = \"json\"\nlevel = \"{level}\"\n\n{sources}",
        tls = s.server_tls,
        amqp = s.amqp,
        ex = s.exchange,
        data = data_dir.display(),
        extra = s.storage_extra,
        level = s.log_level,
        sources = s.sources,
    )
}

impl Gateway {
    /// Writes the config, starts the binary and waits until `/readyz` answers 200.
    pub async fn start(s: &Setup, data_dir: &Path) -> anyhow::Result<Gateway> {
        let (addr, admin) = (free_addr()?, free_addr()?);
        let path = s.dir.join(format!("hookgate-{}.toml", addr.port()));
        std::fs::write(&path, config(s, addr, admin, data_dir))?;
        let log = std::fs::File::create(s.dir.join(format!("gateway-{}.log", addr.port())))?;
        let started = Instant::now();
        let child = Command::new(&s.binary)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", s.binary.display()))?;
        let mut g = Gateway { child, addr, admin, ready_after: Duration::ZERO };
        loop {
            if let Ok(Some(status)) = g.child.try_wait() {
                bail!("the gateway exited at start ({status}); see {}", s.dir.display());
            }
            if g.admin_get("/readyz").await.is_ok_and(|(code, _)| code == 200) {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the gateway was not ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        g.ready_after = started.elapsed();
        Ok(g)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    }

    /// The sum of every series of a metric family (`name` or `name{...}`).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics(&[name]).await.first().copied().unwrap_or(f64::NAN)
    }

    /// [`Gateway::metric`] of each name, from one scrape (NaN each when the scrape fails).
    pub async fn metrics(&self, names: &[&str]) -> Vec<f64> {
        let Ok((_, text)) = self.admin_get("/metrics").await else { return vec![f64::NAN; names.len()] };
        let sum = |name: &str| {
            text.lines()
                .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        names.iter().map(|n| sum(n)).collect()
    }

    pub fn stats(&self) -> ProcStats {
        ProcStats::read(self.pid())
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 30 s).
    pub async fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `/proc/PID` figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// VmHWM, bytes.
    pub peak_rss: u64,
    pub rss: u64,
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

impl ProcStats {
    pub fn read(pid: u32) -> ProcStats {
        let mut p = ProcStats::default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        p.peak_rss = field("VmHWM:") * 1024;
        p.rss = field("VmRSS:") * 1024;
        p.voluntary_switches = field("voluntary_ctxt_switches:");
        p.involuntary_switches = field("nonvoluntary_ctxt_switches:");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        p.cpu_secs = (ticks(11) + ticks(12)) / clock_ticks();
        p
    }
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
