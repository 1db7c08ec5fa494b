//! Encryption at rest: AES-256-GCM per record, a fresh random 96-bit nonce for each, the record's seq as
//! associated data (a record cannot be moved to another position unnoticed).
//!
//! The key is 32 random bytes, base64, from `storage.spool_key_file` or `storage.spool_key_env`. It must live
//! outside `data_dir`: a copy of the volume alone must not be enough to read the payloads (patient and card data).

use std::path::{Path, PathBuf};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;

use crate::config::secret::{self, Env};
use crate::config::{ConfigError, Storage};

pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed payload has beyond its plaintext: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The spool cipher. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

impl Cipher {
    /// A cipher from 32 key bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        Cipher(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)))
    }

    /// nonce | ciphertext+tag. `None` only if the AEAD refuses (it does not for inputs this size).
    pub fn seal(&self, seq: u64, plaintext: &[u8]) -> Option<Vec<u8>> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self.0.encrypt(&nonce, Payload { msg: plaintext, aad: &seq.to_le_bytes() }).ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Some(out)
    }

    /// Appends nonce | ciphertext+tag of `plaintext` to `out` (the same bytes as [`Cipher::seal`], sealed in
    /// place in the writer's batch buffer). `nonce` must be fresh random bytes ([`Cipher::fill_nonces`]).
    /// `None` (and `out` unchanged) only if the AEAD refuses.
    pub fn seal_into(&self, seq: u64, nonce: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let nonce = nonce.get(..NONCE_LEN)?;
        let start = out.len();
        out.extend_from_slice(nonce);
        out.extend_from_slice(plaintext);
        let sealed = self.0.encrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &seq.to_le_bytes(),
            &mut out[start + NONCE_LEN..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Some(())
            }
            Err(_) => {
                out.truncate(start);
                None
            }
        }
    }

    /// Fills `nonces` with random bytes from the OS (one call for a whole batch of records). `None` when the OS
    /// generator fails.
    pub fn fill_nonces(nonces: &mut [u8]) -> Option<()> {
        OsRng.try_fill_bytes(nonces).ok()
    }

    /// The plaintext, or `None` when the key is wrong or the record was altered.
    pub fn open(&self, seq: u64, sealed: &[u8]) -> Option<Vec<u8>> {
        let nonce = sealed.get(..NONCE_LEN)?;
        let ct = sealed.get(NONCE_LEN..)?;
        self.0.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &seq.to_le_bytes() }).ok()
    }
}

/// Loads the spool key named by `[storage]`; `Ok(None)` when none is configured (development only).
///
/// # Errors
/// A [`ConfigError`] naming the key: both forms given, unreadable, not base64 of 32 bytes, or a key file inside
/// `data_dir`.
pub fn load_key(storage: &Storage, env: &dyn Env) -> Result<Option<Cipher>, ConfigError> {
    let (key, value) = match (&storage.spool_key_file, &storage.spool_key_env) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ConfigError::key("storage.spool_key_file", "give either spool_key_file or spool_key_env"))
        }
        (Some(file), None) => {
            if inside(file, &storage.data_dir) {
                return Err(ConfigError::key(
                    "storage.spool_key_file",
                    "must not be inside storage.data_dir (the key would sit next to what it protects)",
                ));
            }
            ("storage.spool_key_file", secret::resolve_one("storage.spool_key", None, None, Some(file), env)?)
        }
        (None, Some(name)) => {
            ("storage.spool_key_env", secret::resolve_one("storage.spool_key", None, Some(name), None, env)?)
        }
    };
    let text = String::from_utf8_lossy(value.expose()).trim().to_string();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| ConfigError::key(key, "is not base64"))?;
    let bytes: [u8; 32] =
        bytes.try_into().map_err(|_| ConfigError::key(key, "must be 32 random bytes, base64 encoded"))?;
    Ok(Some(Cipher::new(&bytes)))
}

/// Whether `file` lies inside `dir` (compared after resolving both as far as they exist).
fn inside(file: &Path, dir: &Path) -> bool {
    let abs = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
        p.canonicalize().unwrap_or(p)
    };
    let parent = file.parent().map(abs).unwrap_or_default();
    parent.starts_with(abs(dir))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let c = Cipher::new(&[7u8; 32]);
        let sealed = c.seal(9, b"PATIENT-123").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"PATIENT-123"));
        assert_eq!(c.open(9, &sealed).unwrap(), b"PATIENT-123");
        assert!(c.open(10, &sealed).is_none(), "seq is bound as associated data");
        assert!(Cipher::new(&[8u8; 32]).open(9, &sealed).is_none());
        let mut nonces = [0u8; 2 * NONCE_LEN];
        Cipher::fill_nonces(&mut nonces).unwrap();
        assert_ne!(nonces[..NONCE_LEN], nonces[NONCE_LEN..], "fresh random nonces");
        let mut out = b"head".to_vec();
        c.seal_into(9, &nonces[..NONCE_LEN], b"PATIENT-123", &mut out).unwrap();
        assert_eq!(out.len(), 4 + SEAL_OVERHEAD + 11);
        assert_eq!(c.open(9, &out[4..]).unwrap(), b"PATIENT-123", "readable as a sealed payload");
    }

    #[test]
    fn key_rules() {
        let dir = tempfile::tempdir().unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let env: HashMap<String, String> = [("K".to_string(), key.clone())].into();
        let mut s = Storage { data_dir: dir.path().join("data"), ..Storage::default() };
        assert!(load_key(&s, &env).unwrap().is_none());
        s.spool_key_env = Some("K".into());
        assert!(load_key(&s, &env).unwrap().is_some());
        s.spool_key_env = None;
        std::fs::create_dir_all(&s.data_dir).unwrap();
        let inner = s.data_dir.join("spool.key");
        std::fs::write(&inner, &key).unwrap();
        s.spool_key_file = Some(inner);
        let e = load_key(&s, &env).unwrap_err().to_string();
        assert!(e.contains("storage.spool_key_file") && e.contains("data_dir"), "{e}");
        let outer = dir.path().join("spool.key");
        std::fs::write(&outer, "c2hvcnQ=").unwrap();
        s.spool_key_file = Some(outer);
        assert!(load_key(&s, &env).unwrap_err().to_string().contains("32 random bytes"));
    }
}
