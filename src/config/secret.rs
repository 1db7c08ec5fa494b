//! Loading secrets given inline, from the environment (`*_env`) or from a file (`*_file`).
//!
//! The environment is passed in as an [`Env`], so tests never touch the process environment.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Where environment variables come from.
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A loaded secret. Its bytes are only reachable through [`Secret::expose`]; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Resolves a secret that may be given exactly one way: inline, `*_env` or `*_file`.
///
/// `key` is the dotted config key of the inline form (e.g. `sources.tyro.auth.basic[0].password`);
/// errors name it.
pub fn resolve_one(
    key: &str,
    inline: Option<&str>,
    env_name: Option<&str>,
    file: Option<&Path>,
    env: &dyn Env,
) -> Result<Secret, ConfigError> {
    let given = usize::from(inline.is_some()) + usize::from(env_name.is_some()) + usize::from(file.is_some());
    if given != 1 {
        return Err(ConfigError::key(
            key,
            format!("give exactly one of `{0}`, `{0}_env` or `{0}_file`", last_segment(key)),
        ));
    }
    if let Some(value) = inline {
        return non_empty(key, Secret::new(value.as_bytes()));
    }
    if let Some(name) = env_name {
        let value = env.var(name).ok_or_else(|| {
            ConfigError::key(&format!("{key}_env"), format!("environment variable {name} is not set"))
        })?;
        return non_empty(&format!("{key}_env"), Secret::new(value.into_bytes()));
    }
    let path = file.map(Path::to_path_buf).unwrap_or_default();
    read_file(&format!("{key}_file"), &path)
}

/// Resolves a list of secrets (several may be active at once, for rotation) from all three forms together.
pub fn resolve_many<'a>(
    key: &str,
    inline: impl Iterator<Item = &'a str>,
    env_names: impl Iterator<Item = &'a String>,
    files: impl Iterator<Item = &'a PathBuf>,
    env: &dyn Env,
) -> Result<Vec<Secret>, ConfigError> {
    let mut out = Vec::new();
    for value in inline {
        out.push(non_empty(key, Secret::new(value.as_bytes()))?);
    }
    for name in env_names {
        let value = env.var(name).ok_or_else(|| {
            ConfigError::key(&format!("{key}_env"), format!("environment variable {name} is not set"))
        })?;
        out.push(non_empty(&format!("{key}_env"), Secret::new(value.into_bytes()))?);
    }
    for path in files {
        out.push(read_file(&format!("{key}_file"), path)?);
    }
    if out.is_empty() {
        return Err(ConfigError::key(
            key,
            format!("give at least one of `{0}`, `{0}_env` or `{0}_file`", last_segment(key)),
        ));
    }
    Ok(out)
}

fn read_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let mut bytes =
        std::fs::read(path).map_err(|e| ConfigError::key(key, format!("cannot read {}: {e}", path.display())))?;
    // Mounted secrets usually end with a newline that is not part of the value.
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    non_empty(key, Secret::new(bytes))
}

fn non_empty(key: &str, secret: Secret) -> Result<Secret, ConfigError> {
    if secret.expose().is_empty() {
        return Err(ConfigError::key(key, "the secret is empty"));
    }
    Ok(secret)
}

fn last_segment(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([("PW".to_string(), "from-env".to_string())])
    }

    #[test]
    fn each_form_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let k = "sources.a.auth.basic[0].password";
        assert_eq!(resolve_one(k, Some("x"), None, None, &env()).unwrap().expose(), b"x");
        assert_eq!(resolve_one(k, None, Some("PW"), None, &env()).unwrap().expose(), b"from-env");
        assert_eq!(resolve_one(k, None, None, Some(&file), &env()).unwrap().expose(), b"from-file");
    }

    #[test]
    fn mistakes_name_the_key() {
        let k = "sources.a.auth.basic[0].password";
        let err = resolve_one(k, None, Some("MISSING"), None, &env()).unwrap_err().to_string();
        assert!(err.contains("password_env") && err.contains("MISSING is not set"), "{err}");
        let err = resolve_one(k, Some("x"), Some("PW"), None, &env()).unwrap_err().to_string();
        assert!(err.contains("exactly one of `password`"), "{err}");
        let err = resolve_one(k, None, None, Some(Path::new("/nonexistent/pw")), &env()).unwrap_err().to_string();
        assert!(err.contains("password_file") && err.contains("cannot read"), "{err}");
    }
}
