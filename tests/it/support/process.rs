//! The real `hookgate` binary as a child process, for crash tests.

use std::time::Duration;

use hookgate::config::Config;

use super::{base_config, free_port, metric_value, unique, Client};

// === impl Proc ===

/// The real `hookgate` binary as a child process (plain HTTP on loopback), for crash tests: it can be SIGKILLed.
pub struct Proc {
    child: std::process::Child,
    pub client: Client,
    pub admin: Client,
    pub log: std::path::PathBuf,
}

/// A config file for [`Proc`]: the given sources and `[storage]` keys, fresh loopback ports.
pub fn proc_config(
    dir: &std::path::Path,
    exchange: &str,
    amqp: &str,
    sources: &str,
    storage: &str,
) -> std::path::PathBuf {
    proc_config_server(dir, exchange, amqp, "", sources, storage)
}

/// [`proc_config`] with extra `[server]` keys.
pub fn proc_config_server(
    dir: &std::path::Path,
    exchange: &str,
    amqp: &str,
    server: &str,
    sources: &str,
    storage: &str,
) -> std::path::PathBuf {
    let (port, admin) = (free_port(), free_port());
    let text = format!(
        "{}{sources}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[logging]\nformat = \"text\"\n[storage]\ndata_dir = \"{}\"\n{storage}",
        base_config(exchange, amqp, &format!("listen = \"127.0.0.1:{port}\"\n{server}")),
        dir.join("data").display(),
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

impl Proc {
    /// Starts `hookgate run --config FILE` and waits (15 s) until it is ready with the broker connected.
    pub async fn spawn(config: &std::path::Path) -> Proc {
        Proc::spawn_cmd(config, std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))).await
    }

    /// As [`Proc::spawn`], with `RUST_LOG` set to `rust_log` (`None`: unset, so `logging.level` applies).
    pub async fn spawn_rust_log(config: &std::path::Path, rust_log: Option<&str>) -> Proc {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        Proc::spawn_cmd(config, cmd).await
    }

    async fn spawn_cmd(config: &std::path::Path, cmd: std::process::Command) -> Proc {
        let p = Proc::launch_cmd(config, cmd);
        for _ in 0..300 {
            let ready = p.admin.try_get("/readyz").await.is_some_and(|(s, _)| s == 200);
            if ready && p.metric("hookgate_broker_connected").await == 1.0 {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("hookgate process not ready in 15 s:\n{}", p.output());
    }

    /// Starts `hookgate run --config FILE` and returns at once, ready or not.
    pub fn launch(config: &std::path::Path) -> Proc {
        Proc::launch_cmd(config, std::process::Command::new(env!("CARGO_BIN_EXE_hookgate")))
    }

    fn launch_cmd(config: &std::path::Path, mut cmd: std::process::Command) -> Proc {
        let parsed = Config::load(config).expect("valid test config");
        let log = config.with_extension(format!("{}.log", unique("run")));
        let child = cmd
            .args(["run", "--config", config.to_str().expect("utf-8 path")])
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("log"))
            .spawn()
            .expect("spawn hookgate");
        Proc { child, client: Client { addr: parsed.server.listen }, admin: Client { addr: parsed.admin.listen }, log }
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin.try_get("/metrics").await.expect("the admin listener is reachable");
        metric_value(&text, series)
    }

    /// Waits (up to 15 s) until a metric series has `value`.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        for _ in 0..300 {
            if self.metric(series).await == value {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{series} did not reach {value} within 15 s (now {})\n{}", self.metric(series).await, self.output());
    }

    /// Sends a real signal (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// What the process logged.
    pub fn output(&self) -> String {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.log), read(&self.log.with_extension("err")))
    }

    /// The process id (to read its CPU time and memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code once the process has exited (`None` while it runs; `-1` for a death by signal).
    pub fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().map(|s| s.code().unwrap_or(-1))
    }

    /// Waits up to `within` for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < until {
            if let Some(code) = self.exited() {
                return Some(code);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.exited()
    }

    /// SIGKILL: no drain, no flush, nothing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
