//! Small value types shared by the config structs: durations that read and print as `"20s"`, secrets whose
//! `Debug` and serialized form are redacted, and a field that accepts one string or a list of them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with its unit (`"250ms"`, `"20s"`, `"72h"`), as humantime parses it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(secs: u64) -> Self {
        Dur(Duration::from_secs(secs))
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The longest duration any key takes: longer is a mistake, and a huge one would overflow the clock arithmetic it
/// feeds (a deadline, a timer: `Instant + Duration` panics).
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);
const DURATION_HELP: &str = "invalid duration (write e.g. \"250ms\", \"20s\" or \"72h\"; at most 365 days)";

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        // Neither the text nor humantime's message (which quotes it) is echoed: it may be a misplaced secret.
        let parsed = humantime::parse_duration(text.trim()).map_err(|_| serde::de::Error::custom(DURATION_HELP))?;
        if parsed > MAX_DURATION {
            return Err(serde::de::Error::custom(DURATION_HELP));
        }
        Ok(Dur(parsed))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A secret given inline in the file. Never printed: `Debug` and serialization show `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct InlineSecret(pub String);

impl fmt::Debug for InlineSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for InlineSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// One string or a list of strings (`secrets_env = "A"` or `secrets_env = ["A", "B"]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one).iter(),
            OneOrMany::Many(many) => many.iter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        d: Dur,
    }

    #[test]
    fn durations_carry_units() {
        let h: Holder = toml::from_str("d = \"72h\"").unwrap();
        assert_eq!(h.d.0, Duration::from_secs(72 * 3600));
        let err = toml::from_str::<Holder>("d = \"20\"").err().unwrap().to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn inline_secrets_never_print() {
        let s = InlineSecret("hunter2".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert!(!toml::to_string(&Some(s)).unwrap_or_default().contains("hunter2"));
    }
}
