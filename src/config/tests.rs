use super::*;

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/hookgate.example.toml")).unwrap()
}

fn err(text: &str) -> String {
    Config::parse(text).and_then(Config::validate).unwrap_err().to_string()
}

const MINIMAL: &str = "[sources.a]\npreset = \"generic\"\nunauthenticated = true\n";

#[test]
fn the_example_parses_and_validates() {
    let cfg = Config::parse(&example()).and_then(Config::validate).unwrap();
    assert_eq!(cfg.sources.len(), 7);
    let tyro = &cfg.sources["tyro"];
    assert_eq!(tyro.retry_status, Some(500));
    assert_eq!(tyro.methods.as_deref().unwrap(), ["POST", "GET", "PUT", "DELETE"]);
    assert_eq!(cfg.sources["instamed"].ack_timeout, Some(Dur::secs(20)));
    assert_eq!(cfg.sources["billing"].ack_timeout, Some(Dur::secs(10)));
    assert_eq!(cfg.sources["billing"].path.as_deref(), Some("/webhooks/billing"));
    assert_eq!(tyro.rate_limit.map(|b| (b.per_second, b.burst)), Some((500, 1000)));
    assert_eq!(cfg.rate_limits.max_clients, 100_000);
    let poller = &cfg.pollers["instamed"];
    assert_eq!(
        (poller.interval, poller.token_ttl, poller.source.as_str()),
        (Dur::secs(10), Dur::secs(900), "instamed")
    );
}

#[test]
fn the_dev_config_validates() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/dev.toml")).unwrap();
    let cfg = Config::parse(&text).and_then(Config::validate).unwrap();
    crate::source::build_all(&cfg, &std::collections::HashMap::new()).unwrap();
}

#[test]
fn defaults_match_the_spec() {
    let cfg = Config::parse(MINIMAL).and_then(Config::validate).unwrap();
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(cfg.broker.exchange, "hookgate");
    assert_eq!(cfg.broker.publish_timeout, Dur::secs(2));
    assert_eq!(cfg.server.max_connections, 10_000);
    assert_eq!(cfg.server.max_header_bytes, 16_384);
    assert_eq!(cfg.server.drain_timeout, Dur::secs(20));
    assert_eq!(cfg.server.idle_timeout, Dur::secs(60));
    assert_eq!(cfg.server.max_inflight_body_bytes, 268_435_456);
    assert_eq!(cfg.server.max_inflight_body_bytes_per_client, Some(67_108_864), "a quarter, filled in");
    assert_eq!(cfg.server.http2_max_concurrent_streams, 32);
    assert_eq!(cfg.storage.spool_max_bytes, 1 << 30);
    assert_eq!(cfg.storage.cache_bytes, 4 << 20);
    let a = &cfg.sources["a"];
    assert_eq!((a.dedup_window, a.max_body_bytes, a.retry_status), (Dur::secs(72 * 3600), 1_048_576, Some(503)));
    assert_eq!(cfg.rate_limits.per_client.burst, 2000);
    assert_eq!(cfg.rate_limits.max_clients, 100_000);
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let e = err("[server]\nlisten = \"0.0.0.0:1\"\nlisen = \"x\"\n");
    assert!(e.contains("server.lisen") && e.contains("unknown field `lisen`") && e.contains("line 3"), "{e}");
    let e = err(&format!("{MINIMAL}[sources.a.auth]\nbasci = []\n"));
    assert!(e.contains("unknown field `basci`"), "{e}");
}

#[test]
fn each_kind_of_mistake_is_explained() {
    let cases = [
        (
            "[sources.a]\npreset = \"paypal\"\nunauthenticated = true\n",
            "`sources.a.preset`: unknown variant (value not shown), expected one of `instamed`",
        ),
        ("[sources.a]\npreset = \"generic\"\n", "`sources.a.auth`: no authentication method"),
        ("[sources.a]\npreset = \"generic\"\nunauthenticated = true\nack_timeout = \"20\"\n", "invalid duration"),
        ("[sources.a]\npreset = \"generic\"\nunauthenticated = true\nretry_status = 404\n", "`sources.a.retry_status`"),
        ("[sources.a]\npreset = \"generic\"\nunauthenticated = true\npath = \"x\"\n", "`sources.a.path`"),
        ("[sources.a]\npreset = \"generic\"\nunauthenticated = true\nmethods = [\"FETCH\"]\n", "FETCH is not one of"),
        ("[sources.A]\npreset = \"generic\"\nunauthenticated = true\n", "a source name"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[broker]\nurl = \"http://x\"\n", "`broker.url`: must start with amqp://"),
        ("", "`sources`: no source is configured"),
        ("[pollers.instamed]\nsource = \"a\"\n", "missing field `account_id`"),
        ("[logging]\nlevel = \"[[\"\n", "`logging.level`"),
        ("[rate_limits]\nmax_clients = 0\n", "`rate_limits.max_clients`: must be between 1"),
        ("[rate_limits]\nper_client = { per_second = 0, burst = 1 }\n", "`rate_limits.per_client`"),
        (
            "[sources.a]\npreset = \"generic\"\nunauthenticated = true\ncontent_types = [\"text/plain\"]\n",
            "`sources.a.content_types`: \"text/plain\" is not a JSON, XML or form-encoded media type",
        ),
        ("[sources.a]\npreset = \"generic\"\nunauthenticated = true\ncontent_types = []\n", "list at least one"),
        (
            "[sources.a]\npreset = \"tyro\"\nunauthenticated = true\ncontent_types = [\"application/json; q=1\"]\n",
            "`sources.a.content_types`",
        ),
    ];
    for (text, expected) in cases {
        let text =
            if text.contains("[sources") || text.is_empty() { text.to_string() } else { format!("{text}{MINIMAL}") };
        let e = err(&text);
        assert!(e.contains(expected), "{text:?}: {e}");
    }
    let e =
        err(&format!("[sources.b]\npreset = \"generic\"\nunauthenticated = true\npath = \"/webhooks/a\"\n{MINIMAL}"));
    assert!(e.contains("is used by another source"), "{e}");
    let e =
        err("[sources.a]\npreset = \"generic\"\nack_timeout = \"2s\"\n[sources.a.auth]\nip_allow = [\"10.0.0.0/8\"]\n");
    assert!(e.contains("`sources.a.ack_timeout`: must leave room for broker.publish_timeout"), "{e}");
    let e = err("[sources.a]\npreset = \"generic\"\n[sources.a.auth]\nclient_cert = { subjects = [] }\n");
    assert!(e.contains("needs server.tls.client_ca"), "{e}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nnope = 1\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()) && e.contains("server.nope"), "{e}");
    let e = Config::load(&dir.path().join("missing.toml")).unwrap_err().to_string();
    assert!(e.contains("missing.toml") && e.contains("cannot read"), "{e}");
}

#[test]
fn check_config_output_redacts_secrets() {
    let text = "[broker]\nurl = \"amqp://u:brokerpw@h/%2f\"\n[sources.a]\npreset = \"generic\"\n[sources.a.auth]\nbasic = [{ username = \"u\", password = \"hunter2\" }]\nheaders = { k = { value = \"hdrsecret\" } }\n";
    let cfg = Config::parse(text).and_then(Config::validate).unwrap();
    let out = cfg.to_redacted_toml();
    for secret in ["brokerpw", "hunter2", "hdrsecret"] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
    assert!(out.contains("<redacted>") && out.contains("path = \"/webhooks/a\""), "{out}");
    // The printed configuration is itself a valid configuration.
    Config::parse(&out).unwrap();
}

#[test]
fn a_syntax_error_never_quotes_a_value_as_its_key() {
    // A missing comma in a list written one element per line: the error's line holds a value, not a key.
    let cases = [
        ("[broker]\nurls = [\n  \"amqp://u:pw1@a/%2f\"\n  \"amqp://u:pw2@b/%2f\",\n]\n", "`broker`", 4),
        (
            "[broker]\nurls = [\n  \"amqp://u:pw1@a/%2f?x=1\"\n  \"amqp://u:pw2@b/%2f?heartbeat=10\",\n]\n",
            "`broker`",
            4,
        ),
        (
            "[sources.a]\npreset = \"generic\"\n[sources.a.auth.hmac]\nscheme = \"x-signature\"\n\
             secrets = [\n  \"pw1\"\n  \"pw2=\"\n]\n",
            "`sources.a.auth.hmac`",
            7,
        ),
    ];
    for (text, expected, line) in cases {
        let e = Config::parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with(expected) && e.contains(&format!("(line {line})")), "{text:?}: {e}");
        assert!(!e.contains("pw"), "a value in the error: {e}");
    }
}

#[test]
fn check_config_output_redacts_credentials_in_http_urls() {
    let url = "https://u:s3cret@idp.example:8443/keys?token=abc";
    let jwks = format!(
        "[sources.a]\npreset = \"generic\"\n[sources.a.auth]\nbearer = {{ jwks_url = \"{url}\", issuer = \"i\", audience = \"a\" }}\n"
    );
    let polled = poller(&format!("sso_url = \"{url}\"\nnvp_url = \"{url}\"\n"));
    for text in [jwks, polled] {
        let out = Config::parse(&text).and_then(Config::validate).unwrap().to_redacted_toml();
        assert!(!out.contains("s3cret") && !out.contains("abc"), "{out}");
        assert!(out.contains("https://u:<redacted>@idp.example:8443/keys?<redacted>"), "{out}");
        // The printed configuration is still a configuration.
        Config::parse(&out).unwrap();
    }
}

/// `[section]` with `text`, on the minimal config, validated; `check-config`'s output of it holds no `pw`.
fn printed_without_passwords(section: &str, text: &str) -> Result<Config, crate::config::ConfigError> {
    let cfg = Config::parse(&format!("[{section}]\n{text}\n{MINIMAL}")).and_then(Config::validate)?;
    let printed = cfg.to_redacted_toml();
    assert!(!printed.contains("pw"), "{printed}");
    Ok(cfg)
}

#[test]
fn the_shared_store_url_from_the_environment_or_a_file_keeps_its_password_out_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-url");
    std::fs::write(&file, "redis://:pw1@redis.cache:6379\n").unwrap();
    let env = std::collections::HashMap::from([
        ("REDIS".to_string(), "rediss://:pw2@redis.cache:6380".to_string()),
        ("HTTP".to_string(), "http://:pw3@redis.cache".to_string()),
    ]);
    let shared = |text: &str| printed_without_passwords("storage", text)?.shared_url(&env);
    assert_eq!(shared("shared_env = \"REDIS\"").unwrap().as_deref(), Some("rediss://:pw2@redis.cache:6380"));
    let from_file = shared(&format!("shared_file = {:?}", file.display().to_string())).unwrap();
    assert_eq!(from_file.as_deref(), Some("redis://:pw1@redis.cache:6379"));
    assert_eq!(shared("shared = \"redis://h:6379\"").unwrap().as_deref(), Some("redis://h:6379"));
    assert_eq!(shared("").unwrap(), None);
    for (text, expected) in [
        ("shared_env = \"UNSET\"", "`storage.shared_env`: environment variable UNSET is not set"),
        ("shared_env = \"HTTP\"", "`storage.shared_env`: must start with redis:// or rediss://"),
        (
            "shared = \"redis://h\"\nshared_env = \"REDIS\"",
            "`storage.shared`: give one of `shared`, `shared_env` or `shared_file`",
        ),
    ] {
        let e = shared(text).unwrap_err().to_string();
        assert!(e.contains(expected), "{text:?}: {e}");
        assert!(!e.contains("pw"), "a URL's password in an error: {e}");
    }
}

#[test]
fn broker_urls_rules_and_redaction() {
    let two = "[broker]\nurls = [\"amqp://u:pw1@a:5672/%2f\", \"amqps://u:pw2@b:5671/%2f\"]\n";
    let cfg = Config::parse(&format!("{two}{MINIMAL}")).and_then(Config::validate).unwrap();
    let env = std::collections::HashMap::<String, String>::new();
    assert_eq!(cfg.broker_urls(&env).unwrap(), ["amqp://u:pw1@a:5672/%2f", "amqps://u:pw2@b:5671/%2f"]);
    let out = cfg.to_redacted_toml();
    assert!(!out.contains("pw1") && !out.contains("pw2"), "{out}");
    assert!(out.contains("amqp://u:<redacted>@a:5672/%2f") && out.contains("amqps://u:<redacted>@b:5671/%2f"), "{out}");
    Config::parse(&out).unwrap();
    // The one-node forms stay, and no form at all is the local default.
    let one = Config::parse(&format!("[broker]\nurl = \"amqp://h/\"\n{MINIMAL}")).and_then(Config::validate).unwrap();
    assert_eq!(one.broker_urls(&env).unwrap(), ["amqp://h/"]);
    let none = Config::parse(MINIMAL).and_then(Config::validate).unwrap();
    assert_eq!(none.broker_urls(&env).unwrap(), [DEFAULT_BROKER_URL]);
    for (text, expected) in [
        (
            "[broker]\nurl = \"amqp://h/\"\nurls = [\"amqp://h/\"]\n",
            "`broker.url`: give one of `url`, `url_env`, `url_file`, `urls`, `urls_env` or `urls_file`",
        ),
        ("[broker]\nurl_env = \"X\"\nurls = [\"amqp://h/\"]\n", "`broker.url`: give one of"),
        ("[broker]\nurls = []\n", "`broker.urls`: must list 1 to 16 nodes"),
        ("[broker]\nurls = [\"amqp://a/\", \"http://b\"]\n", "`broker.urls[1]`: must start with amqp://"),
    ] {
        let e = err(&format!("{text}{MINIMAL}"));
        assert!(e.contains(expected), "{text:?}: {e}");
    }
}

#[test]
fn broker_urls_from_the_environment_or_a_file_keep_the_credentials_out_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (list, one) = (dir.path().join("urls"), dir.path().join("url"));
    std::fs::write(&list, "amqp://u:pw1@a:5672/%2f\namqps://u:pw2@b:5671/%2f\n\n").unwrap();
    std::fs::write(&one, "amqps://u:pw3@c:5671/%2f\n").unwrap();
    let env = std::collections::HashMap::from([
        ("BROKERS".to_string(), "amqp://u:pw1@a:5672/%2f, amqps://u:pw2@b:5671/%2f".to_string()),
        ("BAD".to_string(), "amqp://u:pw1@a/\nhttp://u:pw9@b/".to_string()),
        ("COMMA".to_string(), "amqp://u:p,w1@a/%2f,amqp://u:pw2@b/%2f,".to_string()),
        ("HTTP".to_string(), "http://u:pw9@b/".to_string()),
    ]);
    let urls = |text: &str| printed_without_passwords("broker", text)?.broker_urls(&env);
    let two = ["amqp://u:pw1@a:5672/%2f", "amqps://u:pw2@b:5671/%2f"];
    assert_eq!(urls("urls_env = \"BROKERS\"").unwrap(), two);
    // A comma separates only where the next URL starts: one in a password stays in it.
    assert_eq!(urls("urls_env = \"COMMA\"").unwrap(), ["amqp://u:p,w1@a/%2f", "amqp://u:pw2@b/%2f"]);
    assert_eq!(urls(&format!("urls_file = {:?}", list.display().to_string())).unwrap(), two);
    assert_eq!(urls(&format!("url_file = {:?}", one.display().to_string())).unwrap(), ["amqps://u:pw3@c:5671/%2f"]);
    for (text, expected) in [
        ("urls_env = \"UNSET\"".to_string(), "`broker.urls_env`: environment variable UNSET is not set"),
        ("urls_env = \"BAD\"".to_string(), "`broker.urls_env`: node 2 must start with amqp:// or amqps://"),
        ("url_env = \"HTTP\"".to_string(), "`broker.url_env`: must start with amqp:// or amqps://"),
        (format!("url_file = {:?}", dir.path().join("none").display().to_string()), "`broker.url_file`: cannot read"),
        (format!("url = \"amqp://h/\"\nurls_file = {:?}", list.display().to_string()), "`broker.url`: give one of"),
    ] {
        let e = urls(&text).unwrap_err().to_string();
        assert!(e.contains(expected), "{text:?}: {e}");
        assert!(!e.contains("pw"), "a URL's password in an error: {e}");
    }
    let blank = dir.path().join("blank");
    std::fs::write(&blank, ",\n").unwrap();
    let e = urls(&format!("urls_file = {:?}", blank.display().to_string())).unwrap_err().to_string();
    assert!(e.contains("`broker.urls_file`: must list 1 to 16 nodes"), "{e}");
    let binary = dir.path().join("binary");
    std::fs::write(&binary, [0xff, 0xfe]).unwrap();
    let e = urls(&format!("url_file = {:?}", binary.display().to_string())).unwrap_err().to_string();
    assert!(e.contains("`broker.url_file`: is not UTF-8 text"), "{e}");
}

#[test]
fn storage_rules() {
    let e = err(&format!("{MINIMAL}[storage]\nshared = \"http://x\"\n"));
    assert!(e.contains("storage.shared") && e.contains("redis://"), "{e}");
    let e = err(&format!("{MINIMAL}[storage]\nspool_key_file = \"/k\"\nspool_key_env = \"K\"\n"));
    assert!(e.contains("storage.spool_key_file"), "{e}");
    let e = err(&format!("{MINIMAL}[storage]\nspool_max_bytes = 10\n"));
    assert!(e.contains("storage.spool_max_bytes"), "{e}");
    let e = err(&format!("{MINIMAL}[storage]\ncache_bytes = 4096\n"));
    assert!(e.contains("storage.cache_bytes"), "{e}");
    let cfg = Config::parse(MINIMAL).and_then(Config::validate).unwrap();
    assert_eq!(cfg.storage.shared_prefix, "hookgate");
}

/// Every source of the example builds (secrets resolved) once its environment variables and files exist.
#[test]
fn every_example_source_builds() {
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let text = example().replace("/run/secrets/", &format!("{d}/")).replace("/etc/hookgate/", &format!("{d}/"));
    std::fs::write(dir.path().join("instamed-password-next"), "next-pw\n").unwrap();
    std::fs::write(dir.path().join("card-webhook-secret"), "card-secret\n").unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","x":"{}","y":"{}"}}]}}"#,
        b64(&point[1..33]),
        b64(&point[33..65])
    );
    std::fs::write(dir.path().join("internal-jwks.json"), jwks).unwrap();
    let env: std::collections::HashMap<String, String> = [
        ("INSTAMED_PASSWORD", "pw"),
        ("TYRO_SECRET", "tyro-secret"),
        ("TYRO_SESSION_KEY", "session"),
        ("BILLING_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("PARTNER_SECRET", "partner-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = Config::parse(&text).and_then(Config::validate).unwrap();
    let sources = crate::source::build_all(&cfg, &env).unwrap();
    let methods: Vec<_> = sources.iter().map(|s| (s.name.to_string(), s.verifier.methods())).collect();
    assert!(methods.contains(&("instamed".into(), vec!["ip_allow", "client_cert", "basic"])), "{methods:?}");
    assert!(methods.contains(&("tyro".into(), vec!["headers", "hmac"])), "{methods:?}");
    assert!(methods.contains(&("internal".into(), vec!["bearer"])), "{methods:?}");
}

#[test]
fn auth_mistakes_are_found_by_validate() {
    let src = "[sources.a]\npreset = \"generic\"\n[sources.a.auth]\n";
    let cases = [
        ("hmac = { scheme = \"custom\", secrets_env = [\"X\"], signed = \"{body}\" }", "`sources.a.auth.hmac.header`"),
        ("hmac = { scheme = \"tyro\", header = \"X\" }", "`sources.a.auth.hmac.header`: only for scheme"),
        ("bearer = { issuer = \"i\", audience = \"a\" }", "`sources.a.auth.bearer`: give exactly one"),
        ("bearer = { jwks_url = \"https://idp/jwks\", issuer = \"i\" }", "`sources.a.auth.bearer.audience`"),
        ("bearer = { hs256_secret_env = \"X\", algorithms = [\"none\"] }", "`sources.a.auth.bearer.algorithms`"),
        ("ip_allow = []", "`sources.a.auth.ip_allow`"),
        ("basic = []", "`sources.a.auth.basic`"),
    ];
    for (line, expected) in cases {
        let e = err(&format!("{src}{line}\n"));
        assert!(e.contains(expected), "{line}: {e}");
    }
}

#[test]
fn proxy_protocol_and_crls_need_their_companions() {
    let e = err(&format!("[server]\nproxy_protocol = true\n{MINIMAL}"));
    assert!(e.contains("`server.proxy_protocol`: needs server.trusted_proxies"), "{e}");
    let e = err(&format!("[server.tls]\ncert = \"c\"\nkey = \"k\"\ncrls = [\"x.crl\"]\n{MINIMAL}"));
    assert!(e.contains("`server.tls.crls`: needs server.tls.client_ca"), "{e}");
}

#[test]
fn a_duration_past_a_year_is_refused_naming_the_key() {
    // Past what any key needs, a duration would overflow the clock arithmetic it feeds (a deadline, a timer).
    for (text, key) in [
        ("[broker]\npublish_timeout = \"18446744073709551615s\"\n", "`broker.publish_timeout`"),
        ("[server]\nbody_read_timeout = \"300000000000y\"\n", "`server.body_read_timeout`"),
        ("[server]\nidle_timeout = \"366days\"\n", "`server.idle_timeout`"),
        (
            "[sources.b]\npreset = \"generic\"\nunauthenticated = true\ndedup_window = \"400d\"\n",
            "`sources.b.dedup_window`",
        ),
    ] {
        let e = std::panic::catch_unwind(|| err(&format!("{text}{MINIMAL}"))).unwrap_or_else(|_| "panicked".into());
        assert!(e.contains(key) && e.contains("at most 365 days"), "{text:?}: {e}");
    }
    let cfg = Config::parse(&format!("[server]\nidle_timeout = \"365days\"\n{MINIMAL}")).and_then(Config::validate);
    assert_eq!(cfg.unwrap().server.idle_timeout, Dur::secs(365 * 86_400));
}

#[test]
fn type_errors_name_the_key_and_file_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[sources.a.auth]\nbasic = [{ username = \"u\", password = 73914455821 }]\n",
            "73914455821",
            "sources.a.auth.basic",
        ),
        ("[sources.a.auth]\nheaders = { k = { value = true } }\n", "true", "sources.a.auth.headers"),
        ("[sources.a]\nmax_body_bytes = \"hunter2-s3cret\"\n", "hunter2-s3cret", "sources.a.max_body_bytes"),
        ("[sources.a]\nack_timeout = \"hunter2-s3cret\"\n", "hunter2", "sources.a.ack_timeout"),
        ("[sources.a]\npreset = \"hunter2-s3cret\"\n", "hunter2", "sources.a.preset"),
        ("[sources.a]\nretry_status = 3.14159265\n", "3.14159", "sources.a.retry_status"),
        ("[broker]\nurl = 1234567890123\n", "1234567890123", "broker.url"),
    ];
    for (i, (text, value, key)) in cases.into_iter().enumerate() {
        let text = if text.starts_with("[sources.a]") {
            format!("{text}unauthenticated = true\n")
        } else if text.starts_with("[sources.a.auth]") {
            format!("[sources.a]\npreset = \"generic\"\n{text}")
        } else {
            format!("{text}{MINIMAL}")
        };
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(!e.contains(value), "{key}: the value is echoed: {e}");
        assert!(e.contains(key) && e.contains(&path.display().to_string()), "{key}: names key and file: {e}");
        assert!(e.contains("line "), "{key}: names the line: {e}");
    }
}

const IM_SOURCE: &str = "[sources.im]\npreset = \"instamed\"\nunauthenticated = true\n";

fn poller(extra: &str) -> String {
    format!(
        "{IM_SOURCE}[pollers.p]\nsource = \"im\"\naccount_id = \"acct\"\nalias = \"al\"\npassword_env = \"PW\"\n\
         merchant_id = \"6011000551245\"\nstore_id = \"001\"\nterminal_id = \"002\"\nunauthenticated = true\n{extra}"
    )
}

#[test]
fn poller_defaults_match_the_spec() {
    let cfg = Config::parse(&poller("")).and_then(Config::validate).unwrap();
    let p = &cfg.pollers["p"];
    assert_eq!(p.path.as_deref(), Some("/poll/p"));
    assert_eq!((p.interval, p.token_ttl, p.request_timeout), (Dur::secs(10), Dur::secs(900), Dur::secs(10)));
    assert_eq!(p.sso_url, DEFAULT_SSO_URL);
    assert_eq!(p.nvp_url, DEFAULT_NVP_URL);
    assert_eq!((p.max_in_flight, p.max_jobs), (16, 100_000));
    let shown = cfg.to_redacted_toml();
    assert!(shown.contains("[pollers.p]") && shown.contains("interval = \"10s\""), "{shown}");
}

#[test]
fn poller_mistakes_name_the_key() {
    let cases = [
        ("source = \"nope\"\n", "`pollers.p.source`: no source named \"nope\""),
        ("path = \"/webhooks/im\"\n", "`pollers.p.path`: /webhooks/im collides with the path of source im"),
        ("path = \"/poll/{x}\"\n", "`pollers.p.path`: must be a literal path"),
        ("sso_url = \"ftp://x\"\n", "`pollers.p.sso_url`"),
        ("password = \"inline\"\n", "`pollers.p.password`: give exactly one of"),
        ("interval = \"1ms\"\n", "`pollers.p.interval`"),
        ("token_ttl = \"1s\"\n", "`pollers.p.token_ttl`: must be at least `interval`"),
        ("max_in_flight = 0\n", "`pollers.p.max_in_flight`"),
        ("unknown = 1\n", "unknown field `unknown`"),
    ];
    for (extra, expected) in cases {
        let text =
            poller("").replace("source = \"im\"\n", "").replacen("[pollers.p]\n", &format!("[pollers.p]\n{extra}"), 1);
        let text = if extra.starts_with("source") {
            text
        } else {
            text.replacen("[pollers.p]\n", "[pollers.p]\nsource = \"im\"\n", 1)
        };
        let e = err(&text);
        assert!(e.contains(expected), "{extra:?}: {e}");
    }
    let generic = poller("").replace("preset = \"instamed\"", "preset = \"generic\"");
    assert!(err(&generic).contains("must use preset = \"instamed\""), "{}", err(&generic));
    let full = poller("");
    let no_auth = full.strip_suffix("unauthenticated = true\n").unwrap();
    assert!(err(no_auth).contains("`pollers.p.auth`: no authentication method"), "{}", err(no_auth));
    let two = format!("{}[pollers.q]\nsource = \"im\"\npath = \"/poll/p\"\naccount_id = \"a\"\nalias = \"a\"\npassword = \"x\"\nmerchant_id = \"m\"\nstore_id = \"s\"\nterminal_id = \"t\"\nunauthenticated = true\n", poller(""));
    assert!(err(&two).contains("is used by another poller"), "{}", err(&two));
}

#[test]
fn a_clients_share_of_the_body_budget_is_a_quarter_or_at_most_the_budget() {
    let cfg = |server: &str| Config::parse(&format!("[server]\n{server}{MINIMAL}")).and_then(Config::validate);
    let quarter = cfg("max_inflight_body_bytes = 1048576\n").unwrap();
    assert_eq!(
        (quarter.server.max_inflight_body_bytes_per_client, quarter.server.body_share()),
        (Some(262_144), 262_144)
    );
    let off = cfg("max_inflight_body_bytes_per_client = 0\n").unwrap();
    assert_eq!(off.server.body_share(), 0, "0 turns it off");
    assert!(off.to_redacted_toml().contains("max_inflight_body_bytes_per_client = 0"), "check-config prints it");
    let e =
        cfg("max_inflight_body_bytes = 65536\nmax_inflight_body_bytes_per_client = 65537\n").unwrap_err().to_string();
    assert!(e.contains("`server.max_inflight_body_bytes_per_client`") && e.contains("at most"), "{e}");
}

#[test]
fn a_body_cap_no_spool_record_can_hold_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    let text = "[server]\nmax_inflight_body_bytes = 1073741824\n\
        [sources.a]\npreset = \"generic\"\nunauthenticated = true\nmax_body_bytes = 67108864\n";
    std::fs::write(&path, text).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("big.toml") && e.contains("`sources.a.max_body_bytes`") && e.contains("spool record"), "{e}");
    // The largest body a record holds is accepted.
    let max = crate::spool::format::MAX_BODY_BYTES;
    let ok = format!("[server]\nmax_inflight_body_bytes = 1073741824\n{MINIMAL}max_body_bytes = {max}\n");
    Config::parse(&ok).and_then(Config::validate).unwrap();
    // A body larger than the whole in-flight budget could never be read.
    let e = err(&format!("[server]\nmax_inflight_body_bytes = 65536\n{MINIMAL}max_body_bytes = 65537\n"));
    assert!(e.contains("`sources.a.max_body_bytes`") && e.contains("server.max_inflight_body_bytes"), "{e}");
    let e = err(&format!("[server]\nhttp2_max_concurrent_streams = 0\n{MINIMAL}"));
    assert!(e.contains("`server.http2_max_concurrent_streams`"), "{e}");
    let e = err(&format!("[server]\nidle_timeout = \"0s\"\n{MINIMAL}"));
    assert!(e.contains("`server.idle_timeout`"), "{e}");
}
