//! A polling job: one registered SSO token, its state and its counters, stored as JSON in the `poll_jobs` table
//! of the state database (`state.rs`) under `<poller>\u{1f}<token>`.

use serde::{Deserialize, Serialize};

/// Finished jobs are kept this long after they end, so `GET <path>/<token>` still answers and a repeated
/// registration of the same token stays one job.
pub const RETENTION_MS: u64 = 24 * 3600 * 1000;

/// Longest token accepted (InstaMed's are 48 characters of base64).
pub const MAX_TOKEN_BYTES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Still being polled.
    Pending,
    /// The transaction details were published (or were already stored, from a webhook).
    Complete,
    /// InstaMed said `EXPIRED`, or `token_ttl` passed while it said `NEW`; `<source>.sso.expired` was published.
    Expired,
    /// Upstream errors until `token_ttl`; `<source>.sso.expired` was published, its body's `state` `failed`.
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 4] = [JobState::Pending, JobState::Complete, JobState::Expired, JobState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Complete => "complete",
            JobState::Expired => "expired",
            JobState::Failed => "failed",
        }
    }
}

/// What is stored per token. Times are milliseconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub token: String,
    pub state: JobState,
    pub registered_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Calls made to InstaMed for this token (status and receipt).
    pub attempts: u32,
    /// Upstream errors in a row (the back-off exponent); reset by a good answer.
    pub failures: u32,
    /// The last token status InstaMed gave (`NEW`, `COMPLETE`, ...), upper-case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    /// The outcome label of the last upstream error, if the last call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The id of the event the job published (`message_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Job {
    pub fn new(token: String, now_ms: u64) -> Self {
        Job {
            token,
            state: JobState::Pending,
            registered_ms: now_ms,
            updated_ms: now_ms,
            finished_ms: None,
            attempts: 0,
            failures: 0,
            last_status: None,
            last_error: None,
            event_id: None,
        }
    }

    /// The store key of a token of a poller.
    pub fn key(poller: &str, token: &str) -> String {
        format!("{poller}\u{1f}{token}")
    }

    /// When the record may be purged: a pending job is kept past its life, a finished one for [`RETENTION_MS`].
    pub fn expires_ms(&self, token_ttl_ms: u64) -> u64 {
        let end = self.finished_ms.unwrap_or(self.registered_ms.saturating_add(token_ttl_ms));
        end.max(self.updated_ms).saturating_add(RETENTION_MS)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Job> {
        serde_json::from_slice(bytes).ok()
    }

    /// The answer of `GET <path>/<token>`: state, counters and RFC 3339 times (never the token itself).
    pub fn to_json(&self) -> serde_json::Value {
        let time = |ms: u64| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        serde_json::json!({
            "state": self.state.as_str(),
            "attempts": self.attempts,
            "registered_at": time(self.registered_ms),
            "updated_at": time(self.updated_ms),
            "finished_at": self.finished_ms.and_then(time),
            "last_status": self.last_status,
            "last_error": self.last_error,
            "event_id": self.event_id,
        })
    }
}

/// Whether a registered token is acceptable: 1 to [`MAX_TOKEN_BYTES`] bytes of base64 / URL-safe characters
/// (it travels in a URL path, a SOAP field and a form field).
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'.'))
}

/// A short, stable, non-reversible name of a token for logs (the token itself is never logged).
pub fn token_ref(token: &str) -> String {
    crate::normalize::sha256_hex(token.as_bytes()).chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_render_without_the_token() {
        let mut job = Job::new("NTJmY2Y5NmMtOTg2Yi00NDM0LTk2ZWYtZjc3OGE1OTVhN2Qz".into(), 1_700_000_000_000);
        job.attempts = 3;
        assert_eq!(Job::decode(&job.encode()), Some(job.clone()));
        let json = job.to_json().to_string();
        assert!(json.contains(r#""state":"pending""#) && json.contains(r#""attempts":3"#), "{json}");
        assert!(json.contains("2023-11-14T22:13:20.000Z") && !json.contains(&job.token), "{json}");
        assert_eq!(job.expires_ms(900_000), 1_700_000_000_000 + 900_000 + RETENTION_MS);
    }

    #[test]
    fn tokens_are_bounded() {
        assert!(valid_token("NTJmY2Y5NmMtOTg2Yi00NDM0LTk2ZWYtZjc3OGE1OTVhN2Qz"));
        assert!(valid_token("a+b/c="));
        assert!(!valid_token(""));
        assert!(!valid_token(&"a".repeat(MAX_TOKEN_BYTES + 1)));
        assert!(!valid_token("a b") && !valid_token("a<b") && !valid_token("a\u{1f}b"));
    }
}
