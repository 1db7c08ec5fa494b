//! Static header values a provider was asked to send (Tyro's `sessionKey`), compared in constant time.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;

use super::{secret_eq, AuthError, Check, Unverified};
use crate::config::{secret, secret::Env, ConfigError, HeaderSecret};

#[derive(Debug)]
pub struct StaticHeaders {
    expected: Vec<(http::HeaderName, secret::Secret)>,
}

impl StaticHeaders {
    pub fn build(key: &str, headers: &BTreeMap<String, HeaderSecret>, env: &dyn Env) -> Result<Self, ConfigError> {
        if headers.is_empty() {
            return Err(ConfigError::key(key, "list at least one header"));
        }
        let expected = headers
            .iter()
            .map(|(name, h)| {
                let header = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ConfigError::key(&format!("{key}.{name}"), "not a valid header name"))?;
                let value = secret::resolve_one(
                    &format!("{key}.{name}.value"),
                    h.value.as_ref().map(|v| v.0.as_str()),
                    h.value_env.as_deref(),
                    h.value_file.as_deref(),
                    env,
                )?;
                Ok((header, value))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(StaticHeaders { expected })
    }
}

impl Check for StaticHeaders {
    fn method(&self) -> &'static str {
        "headers"
    }

    fn head_only(&self) -> bool {
        true
    }

    fn verify<'a>(&'a self, req: &'a Unverified) -> BoxFuture<'a, Result<(), AuthError>> {
        let ok = self.expected.iter().fold(true, |ok, (name, value)| {
            let presented = req.parts.headers.get(name).map(|v| v.as_bytes()).unwrap_or_default();
            ok & secret_eq(presented, value.expose())
        });
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(AuthError::Unauthorized { method: "headers", challenge: None })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::request;
    use crate::config::InlineSecret;

    #[tokio::test]
    async fn value_must_match_exactly() {
        let cfg = BTreeMap::from([(
            "sessionKey".to_string(),
            HeaderSecret { value: Some(InlineSecret("k1".into())), value_env: None, value_file: None },
        )]);
        let check = StaticHeaders::build("k", &cfg, &std::collections::HashMap::new()).unwrap();
        assert_eq!(check.verify(&request(&[("sessionkey", "k1")], b"", "1.1.1.1")).await, Ok(()));
        for bad in [vec![("sessionkey", "k2")], vec![("sessionkey", "k1x")], vec![]] {
            assert!(check.verify(&request(&bad, b"", "1.1.1.1")).await.is_err());
        }
    }
}
