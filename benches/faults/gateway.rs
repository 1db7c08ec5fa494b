//! The gateway as a real process (`hookgate run`), killed with SIGKILL and restarted on the same `data_dir`; and a
//! tiny HTTP/1.1 client for its public and admin ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Gateway {
    bin: PathBuf,
    dir: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
}

/// A loopback port for a process the run starts (the gateway, a node, the proxy), below the ephemeral range.
pub fn free_port() -> anyhow::Result<u16> {
    crate::ports::free_port_in(32_000..32_768).ok_or_else(|| anyhow::anyhow!("no free loopback port in 32000-32767"))
}

impl Gateway {
    pub fn new(bin: &Path, base: &Path) -> anyhow::Result<Gateway> {
        let dir = base.join("gateway");
        std::fs::create_dir_all(dir.join("data"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Ok(Gateway { bin: bin.to_path_buf(), dir, addr, admin, child: None })
    }

    /// Writes the config (broker URL, spool cap) and starts the process; waits for `/readyz` 200.
    /// `amqp` is one URL, or a TOML array of them (`broker.urls`, a cluster).
    pub async fn start(&mut self, amqp: &str, exchange: &str, spool_max_bytes: u64) -> anyhow::Result<Duration> {
        let broker = if amqp.starts_with('[') { format!("urls = {amqp}") } else { format!("url = \"{amqp}\"") };
        let config = format!(
            "[server]\nlisten = \"{}\"\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"2s\"\n\
             drain_timeout = \"5s\"\n[admin]\nlisten = \"{}\"\n[broker]\n{broker}\nexchange = \"{exchange}\"\n\
             publish_timeout = \"1s\"\n[storage]\ndata_dir = \"{}\"\nspool_max_bytes = {spool_max_bytes}\n\
             [logging]\nlevel = \"warn\"\n[sources.generic]\npreset = \"generic\"\nunauthenticated = true\n",
            self.addr,
            self.admin,
            self.dir.join("data").display()
        );
        let path = self.dir.join("hookgate.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("hookgate.log"))?;
        let started = tokio::time::Instant::now();
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        while started.elapsed() < Duration::from_secs(60) {
            if get(self.admin, "/readyz").await.is_some_and(|(s, _)| s == 200) {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the gateway was not ready within 60 s (see {})", self.dir.join("hookgate.log").display())
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the drain (then SIGKILL).
    pub async fn stop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for _ in 0..200 {
            if self.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some()) {
                self.child = None;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9();
    }

    /// The sum of every series of a metric family (0 when absent or the gateway is down).
    pub async fn metric(&self, family: &str) -> f64 {
        let Some((_, text)) = get(self.admin, "/metrics").await else { return 0.0 };
        text.lines()
            .filter(|l| l.strip_prefix(family).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): status and reason, or `None` when no
/// complete answer came within 20 s.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: hookgate\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        s.write_all(body).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let (status_line, rest) = text.split_once("\r\n")?;
        let mut parts = status_line.splitn(3, ' ');
        let status = parts.nth(1)?.parse().ok()?;
        let reason = parts.next().unwrap_or("").to_string();
        let body = rest.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, if method == "GET" { body } else { reason }))
    };
    tokio::time::timeout(Duration::from_secs(20), exchange).await.ok().flatten()
}

pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(addr, "GET", path, b"").await
}
