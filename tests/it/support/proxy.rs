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
    /// AMQP frames to slip into every broker → client stream at the next frame boundary.
    injections: Vec<Vec<u8>>,
    /// Rewrite the broker's publisher confirms (`basic.ack`) into `basic.nack`.
    nack: bool,
}

impl Proxy {
    pub async fn start() -> Proxy {
        // A port no outgoing connection can take while the proxy is cut, so that `restore` can bind it again.
        let listener = TcpListener::bind(("127.0.0.1", super::free_port())).await.expect("bind proxy");
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

    /// Makes the broker appear to send `connection.blocked` (a resource alarm) on every open connection.
    pub fn block(&self, reason: &str) {
        let mut payload = vec![0, 10, 0, 60, u8::try_from(reason.len()).expect("short reason")];
        payload.extend_from_slice(reason.as_bytes());
        self.inject(&payload);
    }

    /// Makes the broker appear to send `connection.unblocked`.
    pub fn unblock(&self) {
        self.inject(&[0, 10, 0, 61]);
    }

    /// While on, every publisher confirm the broker sends reaches the client as a `basic.nack`.
    pub fn nack_confirms(&self, on: bool) {
        self.state.lock().expect("lock").nack = on;
    }

    /// Queues a channel-0 method frame with `payload` for every open connection.
    fn inject(&self, payload: &[u8]) {
        let mut frame = vec![1, 0, 0];
        frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        self.state.lock().expect("lock").injections.push(frame);
    }

    /// Proxied connections open now (the client's that the proxy accepted and has not closed).
    pub fn open_connections(&self) -> usize {
        self.state.lock().expect("lock").conns.iter().filter(|c| !c.is_finished()).count()
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
            tokio::join!(pump(cr, uw, st.clone()), pump_frames(ur, cw, st));
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

/// Broker → client: forwards whole AMQP frames (type, channel, size, payload, 0xCE) so that injected frames land
/// between them.
async fn pump_frames(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    st: Arc<Mutex<ProxyState>>,
) {
    let mut injected = st.lock().expect("lock").injections.len();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(20), from.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        while st.lock().expect("lock").stalled {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while pending.len() >= 7 {
            let size = u32::from_be_bytes([pending[3], pending[4], pending[5], pending[6]]) as usize;
            if pending.len() < size + 8 {
                break;
            }
            let mut frame: Vec<u8> = pending.drain(..size + 8).collect();
            // basic.ack (class 60, method 80) and basic.nack (60, 120) have the same layout.
            if frame[0] == 1 && frame.len() >= 11 && frame[7..11] == [0, 60, 0, 80] && st.lock().expect("lock").nack {
                frame[10] = 120;
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
        if pending.is_empty() {
            let new: Vec<Vec<u8>> = st.lock().expect("lock").injections[injected..].to_vec();
            injected += new.len();
            for frame in new {
                if to.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    }
}
