//! A RabbitMQ node of the run's own (own node name, ports, data and log directories, config and cookie), so it
//! can be killed freely; and a TCP proxy in front of it that can cut the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The RabbitMQ scripts themselves: the `/usr/sbin` wrappers switch to the `rabbitmq` user, who cannot write the
/// run's temp dir.
fn tool(name: &str) -> PathBuf {
    let direct = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if direct.exists() {
        direct
    } else {
        PathBuf::from(name)
    }
}

pub struct Node {
    pub name: String,
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn new(base: &Path, name: &str, port: u16, dist_port: u16) -> std::io::Result<Node> {
        let dir = base.join(name.split('@').next().unwrap_or(name));
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq.conf"), format!("listeners.tcp.default = 127.0.0.1:{port}\n"))?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "ERL_EPMD_ADDRESS=127.0.0.1\n")?;
        // One cookie for every node of the run (a cluster's nodes and rabbitmqctl must share it).
        let cookie = dir.join(".erlang.cookie");
        std::fs::write(&cookie, format!("HOOKGATEFAULTS{}", std::process::id()))?;
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
        Ok(Node { name: name.to_string(), port, dist_port, dir, child: None })
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_MNESIA_DIR", d.join("mnesia").join("node"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins-expand"))
            .env("RABBITMQ_QUORUM_DIR", d.join("mnesia").join("quorum"))
            .env("RABBITMQ_STREAM_DIR", d.join("mnesia").join("stream"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}");
    }

    /// Starts the node and waits until it accepts AMQP connections.
    pub async fn start(&mut self) -> anyhow::Result<Duration> {
        let started = tokio::time::Instant::now();
        let log = std::fs::File::create(self.dir.join("server.out"))?;
        let mut cmd = Command::new(tool("rabbitmq-server"));
        self.env(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.child = Some(cmd.spawn()?);
        while started.elapsed() < Duration::from_secs(90) {
            if lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default()).await.is_ok() {
                return Ok(started.elapsed());
            }
            if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                self.child = None;
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        anyhow::bail!(
            "node {} did not start (exited, or not up within 90 s) (see {})",
            self.name,
            self.dir.join("server.out").display()
        )
    }

    /// `rabbitmqctl -n NODE args...`.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(tool("rabbitmqctl"));
        self.env(&mut cmd);
        let out = cmd.arg("-n").arg(&self.name).args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            anyhow::bail!("rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kill -9` of the Erlang VM (the pid file's process, which is also our child after the scripts' `exec`).
    pub fn kill9(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A clean stop; `kill -9` if that fails.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if self.ctl(&["shutdown"]).is_err() {
            self.kill9();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The proxy's accept loop and its connections.
type Tasks = (Option<tokio::task::JoinHandle<()>>, Vec<tokio::task::JoinHandle<()>>);

/// A TCP proxy in front of the node: `cut` closes every connection and refuses new ones until `restore`.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<Mutex<Tasks>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", crate::gateway::free_port()?)).await?;
        let p = Proxy { addr: listener.local_addr()?, upstream, state: Arc::default() };
        p.accept(listener);
        Ok(p)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    fn accept(&self, listener: TcpListener) {
        let (state, upstream) = (self.state.clone(), self.upstream);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    }
                });
                if let Ok(mut s) = state.lock() {
                    s.1.retain(|t| !t.is_finished());
                    s.1.push(conn);
                }
            }
        });
        if let Ok(mut s) = self.state.lock() {
            s.0 = Some(task);
        }
    }

    pub fn cut(&self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(t) = s.0.take() {
                t.abort();
            }
            for c in s.1.drain(..) {
                c.abort();
            }
        }
    }

    pub async fn restore(&self) -> anyhow::Result<()> {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                self.accept(l);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("cannot rebind the proxy port {}", self.addr)
    }
}
