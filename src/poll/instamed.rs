//! The two InstaMed calls of a polling job, each reduced to an [`Outcome`] (the `outcome` label of
//! `hookgate_poll_requests_total`): `GetSSOTokenStatus` (SOAP 1.1) and the `ViewReceipt` NVP request.
//!
//! Neither the token nor the password is ever logged or put in an error: failures are outcome labels.

use bytes::Bytes;
use http::{StatusCode, Uri};

use super::client::{CallError, HttpClient};
use super::soap::{self, Answer, StatusRequest, TokenStatus};
use crate::config::secret::Secret;

/// Where and as whom to call InstaMed.
pub struct Upstream {
    pub client: HttpClient,
    pub sso_url: Uri,
    pub nvp_url: Uri,
    pub account_id: String,
    pub alias: String,
    pub password: Secret,
    pub merchant_id: String,
    pub store_id: String,
    pub terminal_id: String,
}

/// The closed set of call outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A status answer (`new`, `complete`, `expired`).
    Status(TokenStatus),
    /// The receipt (NVP) arrived.
    Receipt,
    Timeout,
    Connect,
    /// HTTP 5xx without a SOAP fault.
    Http5xx,
    /// Any other non-2xx status.
    HttpStatus,
    Fault,
    UnknownStatus,
    /// Unreadable, empty, oversized or otherwise not the expected answer.
    Garbage,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Status(TokenStatus::New) => "new",
            Outcome::Status(TokenStatus::Complete) => "complete",
            Outcome::Status(TokenStatus::Expired) => "expired",
            Outcome::Receipt => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect_error",
            Outcome::Http5xx => "http_5xx",
            Outcome::HttpStatus => "http_status",
            Outcome::Fault => "soap_fault",
            Outcome::UnknownStatus => "unknown_status",
            Outcome::Garbage => "invalid_answer",
        }
    }

    /// Whether this is an upstream error (retried with back-off).
    pub fn is_error(self) -> bool {
        !matches!(self, Outcome::Status(_) | Outcome::Receipt)
    }
}

/// Every outcome label, for documentation and tests.
pub const OUTCOMES: [&str; 11] = [
    "new",
    "complete",
    "expired",
    "ok",
    "timeout",
    "connect_error",
    "http_5xx",
    "http_status",
    "soap_fault",
    "unknown_status",
    "invalid_answer",
];

fn call_error(e: CallError) -> Outcome {
    match e {
        CallError::Timeout => Outcome::Timeout,
        CallError::Connect => Outcome::Connect,
        CallError::TooLarge => Outcome::Garbage,
    }
}

impl Upstream {
    /// Asks the status of `token`.
    pub async fn token_status(&self, token: &str) -> Outcome {
        let password = String::from_utf8_lossy(self.password.expose());
        let body = soap::envelope(&StatusRequest {
            token,
            account_id: &self.account_id,
            alias: &self.alias,
            password: &password,
        });
        let extra = Some(("soapaction", soap::SOAP_ACTION));
        let (status, answer) = match self.client.post(&self.sso_url, "text/xml; charset=utf-8", extra, body).await {
            Ok(r) => r,
            Err(e) => return call_error(e),
        };
        match (status, soap::parse_answer(&answer)) {
            (_, Answer::Fault) => Outcome::Fault,
            (s, _) if s.is_server_error() => Outcome::Http5xx,
            (s, _) if !s.is_success() => Outcome::HttpStatus,
            (_, Answer::Status(t)) => Outcome::Status(t),
            (_, Answer::UnknownStatus) => Outcome::UnknownStatus,
            (_, Answer::Garbage) => Outcome::Garbage,
        }
    }

    /// Fetches the transaction details of a completed token (`transactionAction=ViewReceipt`).
    ///
    /// # Errors
    /// The outcome, when the answer is not a usable NVP body.
    pub async fn view_receipt(&self, token: &str) -> Result<Bytes, Outcome> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("merchantID", &self.merchant_id)
            .append_pair("storeID", &self.store_id)
            .append_pair("terminalID", &self.terminal_id)
            .append_pair("transactionAction", "ViewReceipt")
            .append_pair("requestToken", "false")
            .append_pair("singleSignOnToken", token)
            .finish();
        let (status, answer) = self
            .client
            .post(&self.nvp_url, "application/x-www-form-urlencoded", None, form.into_bytes())
            .await
            .map_err(call_error)?;
        match status {
            s if s.is_server_error() => Err(Outcome::Http5xx),
            StatusCode::OK => Ok(answer),
            _ => Err(Outcome::HttpStatus),
        }
    }
}
