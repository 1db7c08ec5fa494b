//! Tyro Health, the prepaid-card processor, Standard Webhooks and the generic preset.

use super::{slug, Extracted, Fields};

const TYRO_SUBJECT: [&str; 6] = ["transactionId", "transaction_id", "transaction._id", "transaction.id", "_id", "id"];
const TYRO_EVENT: [&str; 4] = ["event", "eventName", "eventType", "webhookEvent"];
const TYRO_TIME: [&str; 4] = ["modified", "transaction.modified", "updated", "updatedAt"];

pub(super) fn tyro(f: &Fields<'_>) -> Extracted {
    let kind = f.first(&TYRO_EVENT).map(|e| tyro_event(&e));
    let subject = f.first(&TYRO_SUBJECT);
    let time = f.first(&TYRO_TIME);
    let id_parts = match (&subject, &kind) {
        (Some(s), Some(k)) => Some([Some(s.clone()), Some(k.clone()), time.clone()].into_iter().flatten().collect()),
        _ => None,
    };
    Extracted { id_parts, kind, subject, time }
}

/// Tyro's event names, also as the short path segments its examples use (`/approved`, `/paid`, `/rejected`).
fn tyro_event(raw: &str) -> String {
    match slug(raw).as_str() {
        "approved" => "healthfundapprovedinvoice".into(),
        "paid" => "healthfundpaidinvoice".into(),
        "rejected" => "healthfundrejectedinvoice".into(),
        "completed" => "invoicecompleted".into(),
        other => other.to_string(),
    }
}

/// approved < paid; rejected is final.
pub(super) fn tyro_rank(kind: &str) -> Option<u8> {
    match kind {
        "healthfundapprovedinvoice" => Some(1),
        "healthfundpaidinvoice" | "invoicecompleted" => Some(2),
        "healthfundrejectedinvoice" => Some(3),
        _ => None,
    }
}

pub(super) fn prepaid_card(f: &Fields<'_>) -> Extracted {
    let subject = f.get("TransactionId");
    let kind = match (f.get("MessageType"), f.get("TransactionCode")) {
        (m, Some(code)) => {
            Some(format!("{}.{}", m.map(|m| slug(&m)).unwrap_or_else(|| "transaction".into()), card_code(&code)))
        }
        (Some(m), None) => Some(slug(&m)),
        (None, None) => None,
    };
    Extracted { id_parts: subject.clone().map(|s| vec![s]), kind, subject, time: f.get("TimeStamp") }
}

fn card_code(code: &str) -> String {
    match code.trim().to_ascii_uppercase().as_str() {
        "PP80DS" => "purchase".into(),
        "PP00DS" => "authorization".into(),
        "XP31DS" => "balance-inquiry".into(),
        "XP20DS" => "reload".into(),
        "XP25DS" => "unload".into(),
        "AP01DS" => "atm-withdrawal".into(),
        other => slug(other),
    }
}

pub(super) fn standard_webhooks(f: &Fields<'_>) -> Extracted {
    Extracted {
        id_parts: f.get("webhook-id").map(|id| vec![id]),
        kind: f.get("type").map(|t| slug(&t)),
        subject: None,
        time: f.get("webhook-timestamp"),
    }
}

pub(super) fn generic(f: &Fields<'_>) -> Extracted {
    Extracted { kind: f.get("event").map(|t| slug(&t)), ..Extracted::default() }
}
