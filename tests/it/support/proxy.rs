//! A TCP proxy in front of RabbitMQ that tests cut, stall and restore.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === impl Proxy ===

/// A TCP proxy in front of RabbitMQ that a test can cut (close everything, refuse new connections), stall
/// (keep connections open but forward nothing) and restore — the shared broker itself is never touched.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct ProxyState {
    stalled: bool,
    conns: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Proxy { addr, state, accept_task: Mutex::new(Some(task)) }
    }

    /// The broker URL through this proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Closes every proxied connection and stops accepting (connections are refused).
    pub fn cut(&self) {
        if let Some(t) = self.accept_task.lock().expect("lock").take() {
            t.abort();
        }
        for c in self.state.lock().expect("lock").conns.drain(..) {
            c.abort();
        }
    }

    /// Accepts again on the same port.
    pub async fn restore(&self) {
        self.state.lock().expect("lock").stalled = false;
        let mut listener = None;
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                listener = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listener = listener.expect("rebind the proxy port");
        *self.accept_task.lock().expect("lock") = Some(tokio::spawn(accept_loop(listener, self.state.clone())));
    }

    /// Keeps connections open but stops forwarding bytes (a broker that never confirms).
    pub fn stall(&self, stalled: bool) {
        self.state.lock().expect("lock").stalled = stalled;
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<ProxyState>>) {
    while let Ok((client, _)) = listener.accept().await {
        let st = state.clone();
        let task = tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect("127.0.0.1:5672").await else { return };
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::join!(pump(cr, uw, st.clone()), pump(ur, cw, st));
        });
        state.lock().expect("lock").conns.push(task);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    st: Arc<Mutex<ProxyState>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while st.lock().expect("lock").stalled {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
