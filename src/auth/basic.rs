//! HTTP Basic (RFC 7617) with several active credentials, compared in constant time.

use base64::Engine;
use futures_util::future::BoxFuture;

use super::{secret_eq, AuthError, Check, Unverified};
use crate::config::{secret, secret::Env, BasicCredential, ConfigError};

const CHALLENGE: &str = "Basic realm=\"hookgate\", charset=\"UTF-8\"";

#[derive(Debug)]
pub struct Basic {
    credentials: Vec<(String, secret::Secret)>,
}

impl Basic {
    pub fn build(key: &str, creds: &[BasicCredential], env: &dyn Env) -> Result<Self, ConfigError> {
        if creds.is_empty() {
            return Err(ConfigError::key(key, "list at least one credential"));
        }
        let credentials = creds
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pw = secret::resolve_one(
                    &format!("{key}[{i}].password"),
                    c.password.as_ref().map(|p| p.0.as_str()),
                    c.password_env.as_deref(),
                    c.password_file.as_deref(),
                    env,
                )?;
                Ok((c.username.clone(), pw))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Basic { credentials })
    }

    fn matches(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(encoded) = header.and_then(|h| h.to_str().ok()).and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        }) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        // Check every credential so the time taken does not say which user name exists.
        self.credentials
            .iter()
            .fold(false, |ok, (u, p)| ok | (secret_eq(user, u.as_bytes()) & secret_eq(pass, p.expose())))
    }
}

impl Check for Basic {
    fn method(&self) -> &'static str {
        "basic"
    }

    fn head_only(&self) -> bool {
        true
    }

    fn verify<'a>(&'a self, req: &'a Unverified) -> BoxFuture<'a, Result<(), AuthError>> {
        let ok = self.matches(req.parts.headers.get(http::header::AUTHORIZATION));
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(AuthError::Unauthorized { method: "basic", challenge: Some(CHALLENGE) })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::request;
    use crate::config::InlineSecret;

    fn basic() -> Basic {
        let cred = |u: &str, p: &str| BasicCredential {
            username: u.into(),
            password: Some(InlineSecret(p.into())),
            password_env: None,
            password_file: None,
        };
        let env = std::collections::HashMap::new();
        Basic::build("k", &[cred("instamed", "old"), cred("instamed", "new")], &env).unwrap()
    }

    fn header(user: &str, pass: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    }

    #[tokio::test]
    async fn rotation_accepts_both_and_refuses_others() {
        let b = basic();
        for pw in ["old", "new"] {
            let req = request(&[("authorization", &header("instamed", pw))], b"", "1.2.3.4");
            assert_eq!(b.verify(&req).await, Ok(()));
        }
        for h in [header("instamed", "wrong"), header("other", "new"), "Basic !!".into(), "Bearer x".into()] {
            let req = request(&[("authorization", &h)], b"", "1.2.3.4");
            assert!(matches!(b.verify(&req).await, Err(AuthError::Unauthorized { challenge: Some(_), .. })));
        }
        let req = request(&[], b"", "1.2.3.4");
        assert!(b.verify(&req).await.is_err());
    }
}
