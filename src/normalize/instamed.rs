//! InstaMed: payment triggers (Approved, Declined, Voided, Refunded, Returned, Chargeback, Settlement, Error)
//! and payment-plan triggers (Created, Updated), in JSON, XML or NVP.

use super::{slug, Extracted, Fields};

const STATUS: [&str; 4] = ["TransactionStatus", "EventType", "Trigger", "Status"];

pub(super) fn extract(f: &Fields<'_>) -> Extracted {
    let tx = f.get("TransactionID");
    let plan = f.get("PaymentPlanID");
    let kind = f.first(&STATUS).map(|raw| kind_of(&raw, tx.is_none() && plan.is_some()));
    let subject = tx.or(plan);
    let id_parts = match (&subject, &kind) {
        (Some(s), Some(k)) => Some(vec![s.clone(), k.clone()]),
        _ => None,
    };
    Extracted { id_parts, kind, subject, time: f.first(&["TransactionDate", "PaymentPlanDate", "Date"]) }
}

/// Maps a trigger or status to `payment.*` or `paymentplan.*`.
fn kind_of(raw: &str, plan_only: bool) -> String {
    let s = match slug(raw) {
        s if s.is_empty() => "unknown".to_string(),
        s => s,
    };
    let bare = s.replace(['.', '-'], "");
    let payment = match bare.as_str() {
        "approved" | "approval" | "paymentapproved" => Some("approved"),
        "declined" | "paymentdeclined" => Some("declined"),
        "voided" | "void" | "paymentvoided" => Some("voided"),
        "refunded" | "refund" | "paymentrefunded" => Some("refunded"),
        "returned" | "return" | "paymentreturned" => Some("returned"),
        "chargeback" | "chargedback" | "paymentchargeback" => Some("chargeback"),
        "settlement" | "settled" | "paymentsettlement" => Some("settlement"),
        "error" | "paymenterror" => Some("error"),
        _ => None,
    };
    if let Some(p) = payment {
        return format!("payment.{p}");
    }
    let plan = match bare.as_str() {
        "created" | "paymentplancreated" | "plancreated" => Some("created"),
        "updated" | "paymentplanupdated" | "planupdated" => Some("updated"),
        _ => None,
    };
    match plan {
        Some(p) => format!("paymentplan.{p}"),
        None if plan_only => format!("paymentplan.{s}"),
        None => format!("payment.{s}"),
    }
}

/// approved/declined < settlement < voided, refunded, returned, chargeback.
pub(super) fn rank(kind: &str) -> Option<u8> {
    match kind {
        "payment.approved" | "payment.declined" => Some(1),
        "payment.settlement" => Some(2),
        "payment.voided" | "payment.refunded" | "payment.returned" | "payment.chargeback" => Some(3),
        _ => None,
    }
}
