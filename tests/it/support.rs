//! The test harness: a real gateway on 127.0.0.1:0 against the real RabbitMQ, an HTTP(S) client, a queue
//! consumer, generated certificates and a TCP proxy that can cut or stall the broker connection.

#![allow(dead_code)]

mod ports;
mod process;
mod proxy;

pub use process::{proc_config, proc_config_server, Proc};
pub use proxy::Proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hookgate::config::Config;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The `Content-Type` header of a JSON delivery.
pub const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

/// One unauthenticated `generic` source at `/webhooks/generic`.
pub const GENERIC: &str = "[sources.generic]\npreset = \"generic\"\nunauthenticated = true\n";

pub const AMQP_DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker the tests use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| AMQP_DEFAULT.to_string())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}-{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

/// Connects to the broker, failing at once with instructions when it is not there.
pub async fn broker() -> Connection {
    let url = amqp_url();
    for _ in 0..20 {
        if let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("RabbitMQ is not reachable at {url}; start it with `bash .ci/services` (or set AMQP_URL)");
}

/// Path of a file under tests/fixtures.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture exists")
}

// === impl Gateway ===

/// A running gateway with its own exchange and its own `storage.data_dir`.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub exchange: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub shutdown: CancellationToken,
    /// The data dir: a fresh temp dir unless the test passed its own (to restart on the same state).
    pub data_dir: std::path::PathBuf,
    /// The config file the gateway was started from (and reloads).
    pub config_path: std::path::PathBuf,
    /// `[server]`, `[storage]` and `[broker]` extras, to write the same file with other sources ([`Gateway::rewrite`]).
    extras: (String, String, String),
    _data: Option<tempfile::TempDir>,
    _config_dir: tempfile::TempDir,
    app: Option<hookgate::App>,
}

/// What [`Gateway::start_opts`] may set beyond the sources.
#[derive(Default)]
pub struct Opts {
    /// Extra `[server]` keys.
    pub server: String,
    /// Extra `[storage]` keys (besides `data_dir`).
    pub storage: String,
    /// Extra `[broker]` keys (`alternate_exchange`, `declare_exchange`).
    pub broker: String,
    /// Reuse a data dir (a restart); default: a fresh temp dir.
    pub data_dir: Option<std::path::PathBuf>,
    /// Reuse an exchange (a restart); default: a unique one.
    pub exchange: Option<String>,
    /// Wait for /readyz (default true when the broker is the shared one).
    pub no_wait: bool,
}

/// Config text common to every test gateway: loopback listeners are bound by the harness.
/// `server` holds extra `[server]` keys (it must not repeat the defaults set here).
pub fn base_config(exchange: &str, amqp: &str, server: &str) -> String {
    base_config_with(exchange, amqp, server, "")
}

/// [`base_config`] with extra `[broker]` keys.
pub fn base_config_with(exchange: &str, amqp: &str, server: &str, broker: &str) -> String {
    let mut server = server.to_string();
    for (key, value) in
        [("header_read_timeout", "\"2s\""), ("body_read_timeout", "\"2s\""), ("drain_timeout", "\"5s\"")]
    {
        if !server.contains(key) {
            server.push_str(&format!("{key} = {value}\n"));
        }
    }
    // A TOML array (see [`urls_form`]) is the cluster form, `broker.urls`; an empty one leaves the node to the
    // `[broker]` extras (`urls_env`, `url_file`, ...).
    let node = match amqp {
        "" => String::new(),
        _ if amqp.starts_with('[') => format!("urls = {amqp}"),
        _ => format!("url = \"{amqp}\""),
    };
    format!("[broker]\n{node}\nexchange = \"{exchange}\"\npublish_timeout = \"1s\"\n{broker}\n[server]\n{server}")
}

/// `broker.urls` for [`Gateway::start_with`] in place of one URL: the nodes of a cluster, in the order tried.
pub fn urls_form(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The whole config file of a test gateway.
fn config_text(
    exchange: &str,
    amqp: &str,
    data_dir: &std::path::Path,
    (server, storage, broker): &(String, String, String),
    extra: &str,
) -> String {
    format!(
        "{}{extra}\n[storage]\ndata_dir = \"{}\"\n{storage}",
        base_config_with(exchange, amqp, server, broker),
        data_dir.display()
    )
}

impl Gateway {
    /// Starts a gateway from `extra` (sources, server.tls, ...) appended to [`base_config`].
    pub async fn start(extra: &str) -> Gateway {
        Gateway::start_with(extra, &amqp_url(), HashMap::new()).await
    }

    pub async fn start_with(extra: &str, amqp: &str, env: HashMap<String, String>) -> Gateway {
        Gateway::start_full("", extra, amqp, env).await
    }

    /// Full control: extra `[server]` keys, the rest of the config, the broker URL and the environment.
    pub async fn start_full(server: &str, extra: &str, amqp: &str, env: HashMap<String, String>) -> Gateway {
        Gateway::start_opts(extra, amqp, env, Opts { server: server.to_string(), ..Opts::default() }).await
    }

    /// Everything configurable, including storage and restarts on the same data dir and exchange.
    pub async fn start_opts(extra: &str, amqp: &str, env: HashMap<String, String>, opts: Opts) -> Gateway {
        let exchange = opts.exchange.unwrap_or_else(|| unique("hookgate-test"));
        let (data, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let extras = (opts.server, opts.storage, opts.broker);
        let text = config_text(&exchange, amqp, &data_dir, &extras, extra);
        let config =
            Config::parse(&text).and_then(Config::validate).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let config_dir = tempfile::tempdir().expect("tempdir");
        let config_path = config_dir.path().join("hookgate.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let listeners = hookgate::Listeners {
            public: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            admin: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let shutdown = CancellationToken::new();
        let app = hookgate::App::start(&config, &config_path, Arc::new(env), listeners, shutdown.clone())
            .await
            .expect("gateway starts");
        let gw = Gateway {
            addr: app.public_addr,
            admin: app.admin_addr,
            exchange,
            tls: None,
            shutdown,
            data_dir,
            config_path,
            extras,
            _data: data,
            _config_dir: config_dir,
            app: Some(app),
        };
        if amqp == amqp_url() && !opts.no_wait {
            gw.wait_ready().await;
        }
        gw
    }

    /// Rewrites the config file with `extra` in place of the sources (and `server.tls`) it was started with,
    /// keeping the broker, `[server]` and `[storage]` settings. `amqp` is the broker URL.
    pub fn rewrite(&self, amqp: &str, extra: &str) {
        let text = config_text(&self.exchange, amqp, &self.data_dir, &self.extras, extra);
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// What `SIGHUP` does, without a signal: re-read the config file.
    pub async fn reload(&self) -> Result<hookgate::reload::Applied, hookgate::config::ConfigError> {
        self.app.as_ref().expect("running").reload().await
    }

    /// A client-only handle to a plain-HTTP gateway at `addr` (for requests from spawned tasks).
    pub fn client_for(addr: SocketAddr) -> Client {
        Client { addr }
    }

    /// Waits (up to 15 s) until `/readyz` answers 200 and the broker is connected (with the spool, a gateway is
    /// ready before that, but tests want their first event published directly).
    pub async fn wait_ready(&self) {
        for _ in 0..300 {
            if self.admin_get("/readyz").await.0 == 200 && self.metric("hookgate_broker_connected").await == 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway not ready within 15 s");
    }

    /// A queue bound to this gateway's exchange with `pattern`.
    pub async fn queue(&self, pattern: &str) -> Queue {
        Queue::bind(&self.exchange, pattern).await
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.request("POST", path, headers, body).await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let req = build_request(method, path, headers, body);
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        match &self.tls {
            None => send(stream, req).await,
            Some(cfg) => {
                let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
                let tls = connector.connect(name, stream).await.expect("TLS handshake");
                send(tls, req).await
            }
        }
    }

    /// A request over TLS with `tls` (or plain, with `None`) that may fail: a refused handshake or a dropped
    /// connection is an `Err`.
    pub async fn try_request(
        &self,
        tls: Option<Arc<rustls::ClientConfig>>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Resp, String> {
        let req = build_request(method, path, headers, body);
        let stream = TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
        match tls {
            None => try_send(stream, req).await,
            Some(cfg) => {
                let connector = tokio_rustls::TlsConnector::from(cfg);
                let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
                let tls = connector.connect(name, stream).await.map_err(|e| e.to_string())?;
                try_send(tls, req).await
            }
        }
    }

    /// GET on the admin listener: status and body. An admin listener that cannot be reached fails the test (a
    /// metric read from it must never pass as 0).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let stream = TcpStream::connect(self.admin).await.expect("the admin listener is reachable");
        let r = send(stream, build_request("GET", path, &[], b"")).await;
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The value of one exposition line of `/metrics` (0 when absent: a labelled series appears once used).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
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
        panic!("{series} did not reach {value} within 15 s (now {})", self.metric(series).await);
    }

    /// Writes raw bytes on a plain connection and returns what the gateway answered until it closed or 3 s passed.
    pub async fn raw(&self, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Stops the gateway and waits for it; then deletes its exchange.
    pub async fn stop(mut self) {
        self.halt().await;
        delete_exchange(&self.exchange).await;
    }

    /// Stops the gateway and waits for it, keeping its exchange and data dir (to start it again).
    pub async fn halt(&mut self) {
        self.shutdown.cancel();
        if let Some(app) = self.app.take() {
            tokio::time::timeout(Duration::from_secs(30), app.wait())
                .await
                .expect("stops in time")
                .expect("clean stop");
        }
    }

    /// Stops a gateway whose exchange another one (already stopped) has deleted.
    pub async fn halt_and_forget(mut self) {
        self.halt().await;
    }

    /// Takes ownership of the temp data dir (so it outlives this gateway, for a restart).
    pub fn keep_data(&mut self) -> Option<tempfile::TempDir> {
        self._data.take()
    }
}

/// Sends requests to a plain-HTTP gateway.
#[derive(Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
}

impl Client {
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        send(stream, build_request("POST", path, headers, body)).await
    }
}

impl Client {
    /// A POST that may fail (the gateway was killed): `None` when no answer came.
    pub async fn try_post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Resp> {
        let stream = TcpStream::connect(self.addr).await.ok()?;
        Client::try_post_on(stream, path, headers, body).await
    }

    /// [`Client::try_post`] on a connection the caller made.
    pub async fn try_post_on(stream: TcpStream, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Resp> {
        try_send(stream, build_request("POST", path, headers, body)).await.ok()
    }

    /// A GET that may fail: status and body.
    pub async fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let stream = TcpStream::connect(self.addr).await.ok()?;
        let r = try_send(stream, build_request("GET", path, &[], b"")).await.ok()?;
        Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }
}

/// A loopback port to bind later (a gateway process, the proxy after a cut): free when handed out, handed out once
/// per run, and below the ephemeral range (see [`ports`]).
pub fn free_port() -> u16 {
    ports::free_port_in(PORTS).expect("a free loopback port in 26000-31999")
}

/// The suite's share of the loopback ports below the ephemeral range.
const PORTS: std::ops::Range<u32> = 26_000..32_000;

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Deletes a test exchange, and its alternate exchange and queue (`<name>.unrouted`).
pub async fn delete_exchange(name: &str) {
    // Best-effort cleanup, bounded: a broker operation that never completes must not hang the suite.
    let _ = tokio::time::timeout(Duration::from_secs(15), delete_exchange_now(name)).await;
}

async fn delete_exchange_now(name: &str) {
    let conn = broker().await;
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch.exchange_delete(name.into(), Default::default()).await;
        let unrouted = format!("{name}.unrouted");
        let _ = ch.exchange_delete(unrouted.as_str().into(), Default::default()).await;
        let _ = ch.queue_delete(unrouted.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "done".into()).await;
}

fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder().method(method).uri(path).header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).expect("request")
}

/// An answer: status, reason phrase, headers and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

async fn send<S>(io: S, req: http::Request<Full<Bytes>>) -> Resp
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    try_send(io, req).await.expect("response")
}

/// No request of the harness waits longer than this: a gateway that never answers fails its test, never hangs
/// the suite.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

async fn try_send<S>(io: S, req: http::Request<Full<Bytes>>) -> Result<Resp, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(REQUEST_LIMIT, round_trip(io, req))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_LIMIT:?}")))
}

/// An error and its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn round_trip<S>(io: S, req: http::Request<Full<Bytes>>) -> Result<Resp, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| chain(&e))?;
    let conn = tokio::spawn(conn);
    let resp = match sender.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            // The connection's own error says why (a TLS alert, a reset); the request's only that it ended.
            let why = match tokio::time::timeout(Duration::from_secs(1), conn).await {
                Ok(Ok(Err(e))) => chain(&e),
                _ => String::new(),
            };
            return Err(format!("{}: {why}", chain(&e)));
        }
    };
    let status = resp.status();
    let reason = resp
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok(Resp { status: status.as_u16(), reason, headers, body })
}

// === impl Queue ===

/// An exclusive, auto-delete queue bound to a test exchange.
pub struct Queue {
    conn: Connection,
    consumer: lapin::Consumer,
}

/// One consumed message.
#[derive(Debug)]
pub struct Message {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub props: lapin::BasicProperties,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<AMQPValue> {
        self.props.headers().as_ref().and_then(|h| h.inner().get(name).cloned())
    }

    /// A string header (`cloudEvents_*`).
    pub fn text(&self, name: &str) -> Option<String> {
        match self.header(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

impl Queue {
    pub async fn bind(exchange: &str, pattern: &str) -> Queue {
        let conn = broker().await;
        let mut ch = conn.create_channel().await.expect("channel");
        // Use the exchange as the gateway declared it; else declare it with the gateway's default arguments (its
        // alternate exchange), so either may come first.
        let passive = ExchangeDeclareOptions { durable: true, passive: true, ..Default::default() };
        if ch.exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default()).await.is_err() {
            ch = conn.create_channel().await.expect("channel");
            let mut args = FieldTable::default();
            args.insert("alternate-exchange".into(), AMQPValue::LongString(format!("{exchange}.unrouted").into()));
            let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
            ch.exchange_declare(exchange.into(), ExchangeKind::Topic, opts, args).await.expect("exchange");
        }
        let qopts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let q = ch.queue_declare("".into(), qopts, FieldTable::default()).await.expect("queue");
        ch.queue_bind(
            q.name().clone(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let consume = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let consumer =
            ch.basic_consume(q.name().clone(), "test".into(), consume, FieldTable::default()).await.expect("consume");
        Queue { conn, consumer }
    }

    /// Consumes an existing queue (e.g. `<exchange>.unrouted`), taking its messages.
    pub async fn consume(name: &str) -> Queue {
        let conn = broker().await;
        let ch = conn.create_channel().await.expect("channel");
        let consume = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let consumer =
            ch.basic_consume(name.into(), "test".into(), consume, FieldTable::default()).await.expect("consume");
        Queue { conn, consumer }
    }

    /// The next message, or `None` after `wait`. A consumer that ended or failed fails the test: "nothing
    /// arrived" must mean the queue was read and stayed empty.
    pub async fn next(&mut self, wait: Duration) -> Option<Message> {
        let next = tokio::time::timeout(wait, self.consumer.next()).await.ok()?;
        let d = next.expect("the consumer is still open").expect("the consumer delivers");
        Some(Message { routing_key: d.routing_key.as_str().to_string(), body: d.data, props: d.properties })
    }

    /// Exactly one message within `wait`, and no second one shortly after.
    pub async fn exactly_one(&mut self, wait: Duration) -> Message {
        let m = self.next(wait).await.expect("a message in the queue");
        if let Some(extra) = self.next(Duration::from_millis(300)).await {
            panic!("a second message arrived: {:?}", extra.props.message_id());
        }
        m
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(15), self.conn.close(200, "done".into())).await;
    }
}

// === impl Pki ===

/// A test CA with a server certificate for `localhost` / 127.0.0.1, written to a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "hookgate test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let ca = params.self_signed(&key).expect("CA");
        let issuer = rcgen::Issuer::new(params, key);
        let mut server = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        server.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let skey = rcgen::KeyPair::generate().expect("key");
        let scert = server.signed_by(&skey, &issuer).expect("server cert");
        std::fs::write(dir.path().join("server.crt"), scert.pem()).expect("write");
        std::fs::write(dir.path().join("server.key"), skey.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write");
        Pki { dir, ca_pem: ca.pem(), issuer }
    }

    /// Writes a new server certificate and key (same names, same CA) over the old ones; returns its DER.
    pub fn reissue_server(&self) -> Vec<u8> {
        let mut server = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        server.distinguished_name.push(rcgen::DnType::CommonName, "localhost (reissued)");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = server.signed_by(&key, &self.issuer).expect("server cert");
        std::fs::write(self.dir.path().join("server.crt"), cert.pem()).expect("write");
        std::fs::write(self.dir.path().join("server.key"), key.serialize_pem()).expect("write");
        cert.der().to_vec()
    }

    /// The DER of the server certificate in the files now.
    pub fn server_der(&self) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(self.dir.path().join("server.crt")).expect("read");
        rustls_pki_types::CertificateDer::from_pem_slice(&pem).expect("cert").to_vec()
    }

    /// `[server.tls]` for this PKI; with `client_ca`, client certificates from this CA are verified.
    pub fn server_toml(&self, client_ca: bool) -> String {
        let d = self.dir.path().display();
        let ca = if client_ca { format!("client_ca = \"{d}/ca.crt\"\n") } else { String::new() };
        format!("[server.tls]\ncert = \"{d}/server.crt\"\nkey = \"{d}/server.key\"\n{ca}")
    }

    /// A client certificate (PEM chain, PEM key) for `cn`, signed by this CA.
    pub fn client(&self, cn: &str) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec![format!("{cn}")]).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate for `cn` with a chosen serial number (for CRLs).
    pub fn client_with_serial(&self, cn: &str, serial: u64) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec![cn.to_string()]).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A PEM CRL of this CA revoking `serials`; `expired`: its nextUpdate is in the past.
    pub fn crl(&self, serials: &[u64], expired: bool) -> String {
        let next_update = if expired { rcgen::date_time_ymd(2021, 1, 1) } else { rcgen::date_time_ymd(2099, 1, 1) };
        let revoked_certs = serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2020, 6, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 6, 1),
            next_update,
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).expect("CRL").pem().expect("CRL PEM")
    }

    /// A TLS client trusting this CA, optionally presenting a client certificate, with the given ALPN.
    pub fn client_config(&self, client: Option<(String, String)>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls_pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("ca")).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut cfg = match client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = vec![rustls_pki_types::CertificateDer::from_pem_slice(chain.as_bytes()).expect("cert")];
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
                builder.with_client_auth_cert(chain, key).expect("client auth")
            }
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// An ES256 signing key and its JWK.
pub fn ec_key(kid: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key");
    let p = pair.public_key().as_ref();
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
        "x": B64URL.encode(&p[1..33]), "y": B64URL.encode(&p[33..65])});
    (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}
