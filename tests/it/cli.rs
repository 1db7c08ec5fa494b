//! The `hookgate` binary: `check-config` and exit codes.

use std::process::Command;

fn hookgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate")).args(args).output().expect("run hookgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_path(name: &str) -> String {
    format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_prints_the_effective_config_redacted() {
    let (code, out, err) = hookgate(&["check-config", "--config", &config_path("dev.toml")]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("dev-password") && !out.contains("dev-session-key") && !out.contains("guest:guest"), "{out}");
    assert!(out.contains("<redacted>"));
    assert!(out.contains("retry_status = 500"), "tyro's default is filled in:\n{out}");
}

#[test]
fn a_bad_config_exits_64_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[sources.x]\npreset = \"generic\"\nunauthenticated = true\nack_timout = \"5s\"\n").unwrap();
    let (code, _, err) = hookgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("sources.x.ack_timout") && err.contains("unknown field"),
        "{err}"
    );
    let (code, _, err) = hookgate(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    std::fs::write(&path, "[sources.x]\npreset = \"generic\"\n[sources.x.auth]\nbasic = [{ username = \"u\", password_env = \"HOOKGATE_TEST_UNSET_VAR\" }]\n").unwrap();
    let (code, _, err) = hookgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains("sources.x.auth.basic[0].password_env") && err.contains("HOOKGATE_TEST_UNSET_VAR is not set"),
        "{err}"
    );
}

/// A secret that cannot be resolved (a variable not set, a file not readable) is a configuration mistake like one in
/// the file's text: every command that meets it exits 64 and names the file and the key.
#[test]
fn an_unresolvable_secret_exits_64_naming_file_and_key_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let file = path.to_str().unwrap();
    let data = dir.path().join("data");
    let write = |broker: &str, storage: &str, hmac: &str| {
        let text = format!(
            "[broker]\n{broker}[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\ndata_dir = \"{}\"\n{storage}[sources.card]\npreset = \"prepaid-card\"\n\
             [sources.card.auth]\nhmac = {{ scheme = \"x-signature\", {hmac} }}\n",
            data.display()
        );
        std::fs::write(&path, text).unwrap();
    };
    let expect = |args: &[&str], key: &str, reason: &str| {
        let (code, out, err) = hookgate(args);
        let said = format!("{out}{err}");
        assert_eq!(code, 64, "{args:?}: {said}");
        assert!(said.contains(file) && said.contains(&format!("`{key}`")) && said.contains(reason), "{args:?}: {said}");
    };
    let secret = "secrets = [\"card-s3cret\"]";

    write("url_env = \"HOOKGATE_TEST_UNSET_URL\"\n", "", secret);
    for command in ["check-config", "run", "tail"] {
        expect(&[command, "--config", file], "broker.url_env", "HOOKGATE_TEST_UNSET_URL is not set");
    }
    write("", "", "secrets_env = [\"HOOKGATE_TEST_UNSET_CARD\"]");
    let body = dir.path().join("body.json");
    std::fs::write(&body, b"{}").unwrap();
    let sign = ["sign", "--config", file, "--source", "card", "--body", body.to_str().unwrap()];
    expect(&sign, "sources.card.auth.hmac.secrets_env", "HOOKGATE_TEST_UNSET_CARD is not set");
    let key = dir.path().join("no-such-key");
    write("", &format!("spool_key_file = \"{}\"\n", key.display()), secret);
    for command in ["check-config", "run"] {
        expect(&[command, "--config", file], "storage.spool_key_file", "no-such-key");
    }
    expect(&["spool", "stats", "--config", file], "storage.spool_key_file", "no-such-key");
    std::fs::write(&key, "not base64!").unwrap();
    expect(&["check-config", "--config", file], "storage.spool_key_file", "base64");
    write("", "shared_env = \"HOOKGATE_TEST_UNSET_REDIS\"\n", secret);
    for command in ["check-config", "run"] {
        expect(&[command, "--config", file], "storage.shared_env", "HOOKGATE_TEST_UNSET_REDIS is not set");
    }
}

#[test]
fn check_config_resolves_the_pollers_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poll.toml");
    let text = "[sources.im]\npreset = \"instamed\"\nunauthenticated = true\n[pollers.im]\nsource = \"im\"\n\
                account_id = \"a\"\nalias = \"b\"\npassword_env = \"HOOKGATE_TEST_UNSET_SSO\"\nmerchant_id = \"m\"\n\
                store_id = \"s\"\nterminal_id = \"t\"\nunauthenticated = true\n";
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = hookgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("pollers.im.password_env") && err.contains("HOOKGATE_TEST_UNSET_SSO is not set"), "{err}");
    std::fs::write(&path, text.replace("password_env = \"HOOKGATE_TEST_UNSET_SSO\"", "password = \"sso-s3cret\""))
        .unwrap();
    let (code, out, err) = hookgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[pollers.im]") && out.contains("token_ttl = \"15m\"") && !out.contains("sso-s3cret"),
        "{out}"
    );
}

/// SPEC §8's poller example, word for word (its JWKS file beside it, its password in the environment), passes
/// `check-config`: its `bearer` gives a JWKS and an audience, no issuer.
#[test]
fn the_spec_poller_example_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let (_, jwk) = crate::support::ec_key("idp-1");
    std::fs::write(dir.path().join("internal-jwks.json"), serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let example = r#"
[pollers.instamed]
source = "instamed"            # events are published as this source's events (same preset, same dedup)
path = "/poll/instamed"        # where internal services register SSO tokens (auth as for a source)
sso_url = "https://online.instamed.com/Forms/WebServices/SSOService.asmx"
nvp_url = "https://online.instamed.com/payment/NVP.aspx"
account_id = "..."
alias = "..."
password_env = "INSTAMED_SSO_PASSWORD"
merchant_id = "..."
store_id = "..."
terminal_id = "..."
interval = "10s"
token_ttl = "15m"
[pollers.instamed.auth]
bearer = { jwks_file = "internal-jwks.json", audience = "hookgate" }
"#;
    let text = format!("[sources.instamed]\npreset = \"instamed\"\nunauthenticated = true\n{example}");
    std::fs::write(dir.path().join("hookgate.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check-config", "--config", "hookgate.toml"])
        .current_dir(dir.path())
        .env("INSTAMED_SSO_PASSWORD", "sso-s3cret")
        .output()
        .expect("run hookgate");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let bearer = "[pollers.instamed.auth.bearer]\njwks_file = \"internal-jwks.json\"\naudience = \"hookgate\"\n";
    assert!(stdout.contains(bearer) && !stdout.contains("issuer"), "no issuer is made up:\n{stdout}");
}

/// `run` is the default command, and a start that fails for anything but the configuration (here: the public port
/// is taken) exits 1 (SPEC §6), naming what failed.
#[test]
fn run_is_the_default_command_and_a_failed_start_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n\
         [logging]\nformat = \"text\"\n{}",
        dir.path().join("data").display(),
        crate::support::GENERIC
    );
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = hookgate(&["--config", path.to_str().unwrap()]);
    let said = format!("{out}{err}");
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("cannot bind") && said.contains(&format!("server.listen 127.0.0.1:{port}")), "{said}");
    drop(taken);
}

#[test]
fn usage_errors_exit_64() {
    assert_eq!(hookgate(&["run"]).0, 64);
    assert_eq!(hookgate(&["frobnicate", "--config", "x"]).0, 64);
    assert_eq!(hookgate(&["--help"]).0, 0);
}

/// `hookgate tail` shows what landed in the exchange — routing key, id, headers, the body's size and hash — and
/// never the body itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_each_event_without_its_body() {
    use sha2::Digest;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let gw =
        crate::support::Gateway::start("[sources.card]\npreset = \"prepaid-card\"\nunauthenticated = true\n").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tail.toml");
    let text = format!(
        "{}[sources.card]\npreset = \"prepaid-card\"\nunauthenticated = true\n",
        crate::support::base_config(&gw.exchange, &crate::support::amqp_url(), "")
    );
    std::fs::write(&path, text).unwrap();
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["tail", "--config", path.to_str().unwrap(), "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until tail's queue is bound before posting.
    let mut err = BufReader::new(tail.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), err.next_line()).await.unwrap().unwrap();
    assert!(line.unwrap_or_default().contains("waiting for events"));

    let body = crate::support::fixture("prepaid-card-purchase.json");
    let r = gw.post("/webhooks/card", &[("content-type", "application/json")], &body).await;
    assert_eq!(r.status, 200);
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), tail.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let event: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(event["routing_key"], "card.transaction.purchase");
    assert_eq!(event["message_id"], "967297ae-e208-4268-a0ea-e1bea1d1b75d");
    assert_eq!(event["headers"]["cloudEvents_type"], "card.transaction.purchase");
    assert_eq!(event["body_bytes"], body.len());
    assert_eq!(event["body_sha256"], hex::encode(sha2::Sha256::digest(&body)));
    for field in ["TerminalAddress", "BIOPLUS", "ApprovalCode", "377907"] {
        assert!(!stdout.contains(field), "tail printed payload content ({field}): {stdout}");
    }
    gw.stop().await;
}
