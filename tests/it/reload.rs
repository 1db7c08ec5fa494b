//! Hot reload (`SIGHUP`, SPEC §5): a new certificate serves new handshakes while open connections keep working;
//! sources added, changed and removed take effect at once without dropping a request in flight; a rotated secret
//! file; a broken file refused with its key in the log while the old config keeps serving; restart-only keys
//! named. The process tests send a real `SIGHUP` to the real binary.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{amqp_url, delete_exchange, proc_config, unique, Client, Gateway, Pki, Proc, Queue, JSON};

const APPLIED: &str = "hookgate_config_reloads_total{outcome=\"applied\"}";
const REFUSED: &str = "hookgate_config_reloads_total{outcome=\"refused\"}";

fn generic(name: &str) -> String {
    format!("[sources.{name}]\npreset = \"generic\"\nunauthenticated = true\n")
}

/// A TLS connection: the server's end-entity certificate and an HTTP/1.1 sender on it (kept alive).
async fn connect(
    gw: &Gateway,
    tls: Arc<rustls::ClientConfig>,
) -> (Vec<u8>, hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.expect("TLS handshake");
    let cert = stream.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("http1");
    tokio::spawn(conn);
    (cert, sender)
}

async fn post_on(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, body: &'static [u8]) -> u16 {
    let req = http::Request::builder()
        .method("POST")
        .uri("/webhooks/generic")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request");
    let resp = sender.send_request(req).await.expect("answer on the open connection");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_serves_new_handshakes_while_open_connections_keep_working() {
    let pki = Pki::new();
    let extra = format!("{}{}", pki.server_toml(false), generic("generic"));
    let gw = Gateway::start(&extra).await;
    let mut q = gw.queue("#").await;
    let client = pki.client_config(None, &[b"http/1.1"]);
    let (before, mut open) = connect(&gw, client.clone()).await;
    assert_eq!(before, pki.server_der());
    assert_eq!(post_on(&mut open, br#"{"event":"before.reload"}"#).await, 200);

    let reissued = pki.reissue_server();
    assert_ne!(reissued, before);
    let applied = gw.reload().await.expect("reload applied");
    assert!(applied.restart_required.is_empty(), "{applied:?}");

    let (after, mut fresh) = connect(&gw, client).await;
    assert_eq!(after, reissued, "a new handshake sees the new certificate");
    assert_eq!(post_on(&mut fresh, br#"{"event":"new.connection"}"#).await, 200);
    assert!(!open.is_closed(), "the connection opened before the reload is still open");
    assert_eq!(post_on(&mut open, br#"{"event":"old.connection"}"#).await, 200);
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(q.next(Duration::from_secs(5)).await.expect("a message").routing_key);
    }
    keys.sort();
    assert_eq!(keys, ["generic.before.reload", "generic.new.connection", "generic.old.connection"]);
    assert_eq!(gw.metric(APPLIED).await, 1.0);
    assert_eq!(gw.metric(REFUSED).await, 0.0);

    // A key that does not match the certificate refuses the whole file: the source it adds is not served either.
    let key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    std::fs::write(pki.dir.path().join("server.key"), key).expect("write");
    gw.rewrite(&amqp_url(), &format!("{extra}{}", generic("added")));
    let refused = gw.reload().await.expect_err("a mismatched key is refused");
    assert_eq!(refused.key, "server.tls.key");
    assert_eq!(refused.file.as_deref(), Some(gw.config_path.as_path()));
    assert_eq!(gw.metric(REFUSED).await, 1.0);
    let (still, mut conn) = connect(&gw, pki.client_config(None, &[b"http/1.1"])).await;
    assert_eq!(still, reissued, "the running certificate keeps serving");
    let req = http::Request::builder()
        .method("POST")
        .uri("/webhooks/added")
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    assert_eq!(conn.send_request(req).await.expect("answer").status(), 404, "nothing of a refused file is used");
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoking_crl_refuses_new_handshakes_after_a_reload() {
    let pki = Pki::new();
    let crl = pki.dir.path().join("clients.crl");
    std::fs::write(&crl, pki.crl(&[], false)).expect("crl");
    let extra = format!("{}crls = [\"{}\"]\n{}", pki.server_toml(true), crl.display(), generic("generic"));
    let gw = Gateway::start(&extra).await;
    let mut q = gw.queue("#").await;
    let client = pki.client_config(Some(pki.client_with_serial("client", 77)), &[b"http/1.1"]);
    let ok = gw.try_request(Some(client.clone()), "POST", "/webhooks/generic", &JSON, br#"{"event":"a"}"#).await;
    assert_eq!(ok.map(|r| r.status), Ok(200));

    std::fs::write(&crl, pki.crl(&[77], false)).expect("crl");
    gw.reload().await.expect("reload applied");
    let started = tokio::time::Instant::now();
    let refused = gw.try_request(Some(client), "POST", "/webhooks/generic", &JSON, br#"{"event":"b"}"#).await;
    crate::auth::refused_by_alert("a revoked certificate after the reload", refused, started.elapsed());
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.a");
    q.close().await;
    gw.stop().await;
}

/// Headers and the first half of a body to `path`; the rest is sent later.
async fn start_request(gw: &Gateway, path: &str, body: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    tcp.write_all(&body[..body.len() / 2]).await.expect("write");
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_added_changed_and_removed_take_effect_at_once_without_dropping_a_request() {
    let amqp = amqp_url();
    let sources = format!("{}{}", generic("old"), generic("kept"));
    let server = "body_read_timeout = \"6s\"\n";
    let env = [("KEPT_TOKEN".to_string(), "t1".to_string())].into_iter().collect();
    let gw = Gateway::start_full(server, &sources, &amqp, env).await;
    let mut q = gw.queue("#").await;
    assert_eq!(gw.post("/webhooks/new", &JSON, br#"{"event":"x"}"#).await.status, 404);

    // A delivery to `old` is in flight (routed, body half read) while `old` is removed.
    let body = br#"{"event":"in.flight","pad":"................................"}"#;
    let mut in_flight = start_request(&gw, "/webhooks/old", body).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let kept =
        "[sources.kept]\npreset = \"generic\"\n[sources.kept.auth.headers]\nx-token = { value_env = \"KEPT_TOKEN\" }\n";
    gw.rewrite(&amqp, &format!("{}{kept}", generic("new")));
    let mut applied = gw.reload().await.expect("reload applied");
    applied.sources.sort();
    assert_eq!(applied.sources, ["kept", "new"]);
    in_flight.write_all(&body[body.len() / 2..]).await.expect("write");
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), in_flight.read(&mut answer)).await.expect("answer").unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 Stored"), "{}", String::from_utf8_lossy(&answer[..n]));
    assert_eq!(q.next(Duration::from_secs(5)).await.expect("in-flight event").routing_key, "old.in.flight");

    let r = gw.post("/webhooks/new", &JSON, br#"{"event":"added"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(q.next(Duration::from_secs(5)).await.expect("added").routing_key, "new.added");
    let r = gw.post("/webhooks/old", &JSON, br#"{"event":"removed"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
    let r = gw.post("/webhooks/kept", &JSON, br#"{"event":"changed"}"#).await;
    assert_eq!(r.status, 401, "the changed source now wants its header");
    let r = gw.post("/webhooks/kept", &[JSON[0], ("x-token", "t1")], br#"{"event":"changed"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "kept.changed");
    q.close().await;
    gw.stop().await;
}

const TOKEN_SOURCE: &str = "[sources.s]\npreset = \"generic\"\n[sources.s.auth.headers]\n";

async fn post_token(client: Client, token: &str, n: u32) -> u16 {
    let body = format!(r#"{{"event":"rotated","n":{n}}}"#);
    client.post("/webhooks/s", &[JSON[0], ("x-token", token)], body.as_bytes()).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_a_secret_file_refuses_a_broken_file_and_names_restart_only_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("token");
    std::fs::write(&secret, "old-token\n").expect("secret");
    let sources = format!("{TOKEN_SOURCE}x-token = {{ value_file = \"{}\" }}\n", secret.display());
    let exchange = unique("hookgate-reload");
    let mut q = Queue::bind(&exchange, "#").await;
    let config = proc_config(dir.path(), &exchange, &amqp_url(), &sources, "");
    let p = Proc::spawn(&config).await;
    assert_eq!(post_token(p.client, "old-token", 1).await, 200);

    // A rotated secret file: the old value is refused, the new one accepted.
    std::fs::write(&secret, "new-token\n").expect("secret");
    p.signal("HUP");
    p.wait_metric(APPLIED, 1.0).await;
    assert_eq!(post_token(p.client, "old-token", 2).await, 401, "{}", p.output());
    assert_eq!(post_token(p.client, "new-token", 3).await, 200);

    // A file that does not validate: refused, named in one log line, the running config keeps serving.
    let good = std::fs::read_to_string(&config).expect("config");
    let broken = good.replace("preset = \"generic\"\n", "preset = \"generic\"\nack_timeout = \"0s\"\n");
    std::fs::write(&config, &broken).expect("config");
    p.signal("HUP");
    p.wait_metric(REFUSED, 1.0).await;
    let refusal = p.output().lines().filter(|l| l.contains("reload refused")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(refusal.len(), 1, "{}", p.output());
    assert!(refusal[0].contains("sources.s.ack_timeout"), "{}", refusal[0]);
    assert!(refusal[0].contains(&config.display().to_string()), "{}", refusal[0]);
    assert_eq!(post_token(p.client, "new-token", 4).await, 200);
    assert_eq!(p.metric(APPLIED).await, 1.0);

    // Keys that cannot change live: applied without them, each named.
    let moved = good.replace("[server]\n", "[server]\nmax_connections = 7\n").replace("/data\"", "/elsewhere\"");
    std::fs::write(&config, moved).expect("config");
    p.signal("HUP");
    p.wait_metric(APPLIED, 2.0).await;
    let line = p.output().lines().rfind(|l| l.contains("restart_required")).map(str::to_string).unwrap_or_default();
    assert!(line.contains("server.max_connections") && line.contains("storage.data_dir"), "{}", p.output());
    assert_eq!(post_token(p.client, "new-token", 5).await, 200, "still serving on the running settings");
    assert!(!dir.path().join("elsewhere").exists(), "data_dir keeps its running value");

    let mut got = Vec::new();
    while let Some(m) = q.next(Duration::from_secs(2)).await {
        got.push(String::from_utf8_lossy(&m.body).into_owned());
    }
    got.sort();
    let n = |n: u32| format!(r#"{{"event":"rotated","n":{n}}}"#);
    assert_eq!(got, [n(1), n(3), n(4), n(5)]);
    drop(p);
    q.close().await;
    delete_exchange(&exchange).await;
}

fn token(kid: &str, key: &jsonwebtoken::EncodingKey) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({"iss": "https://idp.example", "aud": "hookgate", "iat": now, "exp": now + 300});
    let header = jsonwebtoken::Header {
        alg: jsonwebtoken::Algorithm::ES256,
        kid: Some(kid.to_string()),
        ..jsonwebtoken::Header::default()
    };
    format!("Bearer {}", jsonwebtoken::encode(&header, &claims, key).expect("encode"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_file_takes_effect_at_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let ((old_key, old_jwk), (new_key, new_jwk)) = (crate::support::ec_key("old"), crate::support::ec_key("new"));
    std::fs::write(&jwks, serde_json::json!({ "keys": [old_jwk] }).to_string()).expect("jwks");
    let source = format!(
        "[sources.oauth]\npreset = \"generic\"\n[sources.oauth.auth]\n\
         bearer = {{ jwks_file = \"{}\", issuer = \"https://idp.example\", audience = \"hookgate\" }}\n",
        jwks.display()
    );
    let gw = Gateway::start(&source).await;
    let mut q = gw.queue("#").await;
    let post = |auth: String, event: &'static str| {
        let gw = &gw;
        async move {
            let body = format!(r#"{{"event":"{event}"}}"#);
            gw.post("/webhooks/oauth", &[JSON[0], ("authorization", &auth)], body.as_bytes()).await.status
        }
    };
    assert_eq!(post(token("old", &old_key), "old.key").await, 200);
    assert_eq!(post(token("new", &new_key), "refused").await, 401);

    std::fs::write(&jwks, serde_json::json!({ "keys": [new_jwk] }).to_string()).expect("jwks");
    gw.reload().await.expect("reload applied");
    assert_eq!(post(token("old", &old_key), "refused").await, 401, "the key removed from the file is refused");
    assert_eq!(post(token("new", &new_key), "new.key").await, 200);
    assert_eq!(q.next(Duration::from_secs(5)).await.expect("first").routing_key, "oauth.old.key");
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "oauth.new.key");
    q.close().await;
    gw.stop().await;
}
