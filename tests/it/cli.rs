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

#[test]
fn usage_errors_exit_64() {
    assert_eq!(hookgate(&["run"]).0, 64);
    assert_eq!(hookgate(&["frobnicate", "--config", "x"]).0, 64);
    assert_eq!(hookgate(&["--help"]).0, 0);
}
