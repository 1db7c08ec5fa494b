//! Realistic provider traffic: unique bodies of each provider with its authentication, provider retries of
//! events already sent, and out-of-order pairs (the later status of a transaction first).
//!
//! - prepaid card: the processor's JSON (`/work/shared/providers/004_*`), `X-Signature` = hex HMAC-SHA256(body)
//! - InstaMed: XML and NVP bodies with HTTP Basic
//! - Tyro Health: JSON with `X-Sender-Timestamp` / `X-Sender-Signature` (HMAC-SHA256 of timestamp + body)

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const CARD_SECRET: &str = "bench-card-secret";
pub const TYRO_SECRET: &str = "bench-tyro-secret";
pub const INSTAMED_USER: &str = "instamed";
pub const INSTAMED_PASSWORD: &str = "bench-password";

/// One request a provider sends.
#[derive(Debug)]
pub struct Delivery {
    pub path: &'static str,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Identifies the event (the body, which a retry repeats byte for byte); what the queue check compares.
    pub key: u64,
}

/// The traffic mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mix {
    /// 60% prepaid card, 15% InstaMed XML, 10% InstaMed NVP, 15% Tyro.
    Realistic,
    /// Prepaid card only (the issue's measurement).
    Card,
}

/// SplitMix64: enough randomness for traffic shapes, no extra dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

pub fn key_of(body: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Makes deliveries for one connection: unique per (run, stream, counter).
pub struct Traffic {
    rng: Rng,
    run: u64,
    stream: u64,
    counter: u64,
    mix: Mix,
    retry_share: f64,
    out_of_order_share: f64,
    recent: Vec<Arc<Delivery>>,
    pending: Option<Arc<Delivery>>,
    basic: String,
}

/// Deliveries a stream remembers for retries.
const RECENT: usize = 256;

impl Traffic {
    pub fn new(run: u64, stream: u64, mix: Mix, retry_share: f64, out_of_order_share: f64) -> Traffic {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{INSTAMED_USER}:{INSTAMED_PASSWORD}"));
        Traffic {
            rng: Rng::new(run.wrapping_mul(31).wrapping_add(stream)),
            run,
            stream,
            counter: 0,
            mix,
            retry_share,
            out_of_order_share,
            recent: Vec::with_capacity(RECENT),
            pending: None,
            basic: format!("Basic {basic}"),
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The next request: the second half of an out-of-order pair, a retry, or a new event.
    pub fn next(&mut self) -> Arc<Delivery> {
        if let Some(p) = self.pending.take() {
            return self.remember(p);
        }
        if !self.recent.is_empty() && self.rng.unit() < self.retry_share {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            return self.recent[i].clone();
        }
        if self.rng.unit() < self.out_of_order_share {
            let tx = self.unique_hex();
            let (late, early) = if self.rng.below(2) == 0 {
                (self.instamed_xml(&tx, "Refunded"), self.instamed_xml(&tx, "Approved"))
            } else {
                (self.tyro(&tx, "healthFundPaidInvoice"), self.tyro(&tx, "healthFundApprovedInvoice"))
            };
            self.pending = Some(Arc::new(early));
            return self.remember(Arc::new(late));
        }
        let d = self.fresh();
        self.remember(Arc::new(d))
    }

    /// A new event only (no retries, no pairs).
    pub fn fresh(&mut self) -> Delivery {
        let tx = self.unique_hex();
        let roll = self.rng.below(100);
        match (self.mix, roll) {
            (Mix::Card, _) | (Mix::Realistic, 0..60) => self.card(&tx),
            (Mix::Realistic, 60..75) => self.instamed_xml(&tx, "Approved"),
            (Mix::Realistic, 75..85) => self.instamed_nvp(&tx, "Approved"),
            _ => self.tyro(&tx, "healthFundApprovedInvoice"),
        }
    }

    fn remember(&mut self, d: Arc<Delivery>) -> Arc<Delivery> {
        if self.recent.len() < RECENT {
            self.recent.push(d.clone());
        } else {
            let i = self.rng.below(RECENT as u64) as usize;
            self.recent[i] = d.clone();
        }
        d
    }

    fn unique_hex(&mut self) -> String {
        self.counter += 1;
        format!("{:08x}{:08x}{:016x}", self.run & 0xffff_ffff, self.stream, self.counter)
    }

    fn card(&mut self, tx: &str) -> Delivery {
        let amount = self.rng.below(500_000);
        let approval = self.rng.below(1_000_000);
        let card = self.rng.below(10_000);
        let (code, desc) = match self.rng.below(4) {
            0 => ("PP00DS", "Authorization"),
            1 => ("XP20DS", "VRX Reload"),
            _ => ("PP80DS", "Purchase (Internet / Phone Authorization)"),
        };
        let uuid = format!("{}-{}-{}-{}-{}", &tx[0..8], &tx[8..12], &tx[12..16], &tx[16..20], &tx[20..32]);
        let body = format!(
            r#"{{"MessageType":"Transaction","Amount":"{amount}","ApprovalCode":"{approval:06}","CalculatedFeeAmount":"","CardNumber":"{card:04}","CardStatus":"ACT","TimeStamp":"{ts}","PostTransactionCardBalance":"0","PostTransactionHoldsBalance":"{amount}","TerminalAddress":"BIOPLUS SP PHARMACYINDIA","TerminalCity":"INDIANAPOLIS","TerminalCountry":"US","TerminalID":"0001","TerminalNameLocation":"","TerminalOwner":"Sample Pharmacy","TransactionCode":"{code}","TransactionDescription":"{desc}","TransactionId":"{uuid}","TransactionOrigin":"POS","UniqueRequestId":"","MCC":"5912","RetailPackId":"1000000001","IssuerName":"HealthCo Rx","ProductType":"Virtual Rx Sample Plan","ISOFullMessage":"ISO0260000070{iso}","AdditionalDataCode":"","AdditionalDataCodeDesc":"","AdditionalFeeOperation":"Credit","AdditionalFee":"0","BusinessProcessId":"29342e21:{bp:x}:-4f4c"}}"#,
            ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
            iso = "0".repeat(330),
            bp = self.rng.next_u64(),
        );
        let signature = hmac_hex(CARD_SECRET, &[body.as_bytes()]);
        delivery("/webhooks/prepaid-card", "application/json", vec![("X-Signature", signature)], body)
    }

    fn instamed_xml(&mut self, tx: &str, status: &str) -> Delivery {
        let amount = self.rng.below(100_000);
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Webhook>\n  <TransactionID>{tx}</TransactionID>\n  <TransactionStatus>{status}</TransactionStatus>\n  <TransactionDate>{ts}</TransactionDate>\n  <MerchantID>6011000551245</MerchantID>\n  <PatientFirstName>John</PatientFirstName>\n  <PatientLastName>Smith &amp; Sons</PatientLastName>\n  <Amount>{}.{:02}</Amount>\n  <CardBrand>MASTERCARD</CardBrand>\n  <LastFourDigits>4444</LastFourDigits>\n</Webhook>\n",
            amount / 100,
            amount % 100,
            ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        );
        delivery("/webhooks/instamed", "application/xml", vec![("Authorization", self.basic.clone())], body)
    }

    fn instamed_nvp(&mut self, tx: &str, status: &str) -> Delivery {
        let amount = self.rng.below(100_000);
        let body = format!(
            "TransactionID={tx}&TransactionStatus={status}&TransactionDate={ts}&Amount={}.{:02}&PatientFirstName=Jane&PatientLastName=Doe&cardBrand=VISA&lastFourDigits=1111&responseMessage=Approved",
            amount / 100,
            amount % 100,
            ts = chrono::Utc::now().format("%Y-%m-%dT%H%%3A%M%%3A%SZ"),
        );
        delivery(
            "/webhooks/instamed",
            "application/x-www-form-urlencoded",
            vec![("Authorization", self.basic.clone())],
            body,
        )
    }

    fn tyro(&mut self, tx: &str, event: &str) -> Delivery {
        let now = chrono::Utc::now();
        let body = format!(
            r#"{{"event":"{event}","transactionId":"{tx}","invoiceReference":"INV-{n}","businessStatus":"approved","modified":"{m}","amountBenefit":"85.00","amountGap":"15.00","patient":{{"firstName":"Alex","lastName":"Citizen","healthFundMemberNumber":"{member}"}},"claims":[{{"status":"approved","amountBenefit":"85.00"}}]}}"#,
            n = self.counter,
            m = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            member = self.rng.below(1_000_000_000),
        );
        let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let signature = hmac_hex(TYRO_SECRET, &[ts.as_bytes(), body.as_bytes()]);
        delivery(
            "/webhooks/tyro",
            "application/json",
            vec![("X-Sender-Timestamp", ts), ("X-Sender-Signature", signature)],
            body,
        )
    }
}

fn delivery(
    path: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> Delivery {
    let body = Bytes::from(body);
    Delivery { path, content_type, headers, key: key_of(&body), body }
}

/// The `[sources.*]` of the generated config; with `client_cert`, each source also requires a client certificate.
pub fn sources_toml(client_cert: bool) -> String {
    let cc = if client_cert { "client_cert = {}\n" } else { "" };
    format!(
        "[sources.prepaid-card]\npreset = \"prepaid-card\"\n[sources.prepaid-card.auth]\nhmac = {{ scheme = \"x-signature\", secrets = [\"{CARD_SECRET}\"] }}\n{cc}\n\
         [sources.instamed]\npreset = \"instamed\"\n[sources.instamed.auth]\nbasic = [{{ username = \"{INSTAMED_USER}\", password = \"{INSTAMED_PASSWORD}\" }}]\n{cc}\n\
         [sources.tyro]\npreset = \"tyro\"\npath = \"/webhooks/tyro\"\nmethods = [\"POST\"]\n[sources.tyro.auth]\nhmac = {{ scheme = \"tyro\", secrets = [\"{TYRO_SECRET}\"] }}\n{cc}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_unique_and_retries_repeat_them() {
        let mut t = Traffic::new(1, 2, Mix::Realistic, 0.3, 0.1);
        let mut keys = std::collections::HashSet::new();
        let mut repeats = 0;
        for _ in 0..2000 {
            if !keys.insert(t.next().key) {
                repeats += 1;
            }
        }
        assert!((300..900).contains(&repeats), "{repeats}");
    }
}
