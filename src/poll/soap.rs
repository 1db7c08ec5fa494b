//! `GetSSOTokenStatus` as SOAP 1.1: the request envelope (built with quick-xml's writer, every value escaped)
//! and the answer (read with quick-xml's reader, hardened like `parse/xml.rs`: no DOCTYPE, bounded depth).

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

/// The `SOAPAction` header value of the call (quoted, as SOAP 1.1 writes it).
pub const SOAP_ACTION: &str = "\"http://tempuri.org/GetSSOTokenStatus\"";
const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const NS_TEMPURI: &str = "http://tempuri.org/";
const MAX_DEPTH: usize = 16;

/// The fields of one `GetSSOTokenStatus` call.
pub struct StatusRequest<'a> {
    pub token: &'a str,
    pub account_id: &'a str,
    pub alias: &'a str,
    pub password: &'a str,
}

/// The envelope of a `GetSSOTokenStatus` call.
pub fn envelope(req: &StatusRequest<'_>) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(512));
    // Writing into a Vec cannot fail; the results are ignored for that reason.
    let _ = w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)));
    let mut env = BytesStart::new("soap:Envelope");
    env.push_attribute(("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"));
    env.push_attribute(("xmlns:xsd", "http://www.w3.org/2001/XMLSchema"));
    env.push_attribute(("xmlns:soap", NS_SOAP));
    let _ = w.write_event(Event::Start(env));
    let _ = w.write_event(Event::Start(BytesStart::new("soap:Body")));
    let mut call = BytesStart::new("GetSSOTokenStatus");
    call.push_attribute(("xmlns", NS_TEMPURI));
    let _ = w.write_event(Event::Start(call));
    for (name, value) in
        [("tokenID", req.token), ("accountID", req.account_id), ("alias", req.alias), ("password", req.password)]
    {
        let _ = w.write_event(Event::Start(BytesStart::new(name)));
        let _ = w.write_event(Event::Text(BytesText::new(value)));
        let _ = w.write_event(Event::End(BytesEnd::new(name)));
    }
    let _ = w.write_event(Event::End(BytesEnd::new("GetSSOTokenStatus")));
    let _ = w.write_event(Event::End(BytesEnd::new("soap:Body")));
    let _ = w.write_event(Event::End(BytesEnd::new("soap:Envelope")));
    w.into_inner()
}

/// A token's status as InstaMed reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    New,
    /// `COMPLETE`, or `USED` as a newer page of InstaMed's portal names it.
    Complete,
    Expired,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::New => "NEW",
            TokenStatus::Complete => "COMPLETE",
            TokenStatus::Expired => "EXPIRED",
        }
    }
}

/// What an answer body said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Status(TokenStatus),
    /// A `GetSSOTokenStatusResult` with a value we do not know.
    UnknownStatus,
    /// A `soap:Fault`.
    Fault,
    /// Not XML, or XML without a result or a fault.
    Garbage,
}

/// Reads an answer body. Matching of the status is case-insensitive and ignores surrounding white space.
pub fn parse_answer(body: &[u8]) -> Answer {
    let Ok(text) = std::str::from_utf8(body) else { return Answer::Garbage };
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut in_result = false;
    let mut result = String::new();
    loop {
        match reader.read_event() {
            Err(_) | Ok(Event::DocType(_)) => return Answer::Garbage,
            Ok(Event::Start(e)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Answer::Garbage;
                }
                match e.local_name().into_inner() {
                    "Fault" => return Answer::Fault,
                    "GetSSOTokenStatusResult" => in_result = true,
                    _ => {}
                }
            }
            Ok(Event::Empty(e)) => match e.local_name().into_inner() {
                "Fault" => return Answer::Fault,
                "GetSSOTokenStatusResult" => return Answer::UnknownStatus,
                _ => {}
            },
            Ok(Event::Text(t)) if in_result => {
                if result.len() < 64 {
                    result.push_str(&t.xml10_content());
                }
            }
            Ok(Event::CData(c)) if in_result && result.len() < 64 => {
                result.push_str(&c);
            }
            Ok(Event::End(e)) => {
                depth = depth.saturating_sub(1);
                if in_result && e.local_name().into_inner() == "GetSSOTokenStatusResult" {
                    return status_of(&result);
                }
            }
            Ok(Event::Eof) => return Answer::Garbage,
            Ok(_) => {}
        }
    }
}

fn status_of(raw: &str) -> Answer {
    match raw.trim().to_ascii_uppercase().as_str() {
        "NEW" => Answer::Status(TokenStatus::New),
        "COMPLETE" | "USED" => Answer::Status(TokenStatus::Complete),
        "EXPIRED" => Answer::Status(TokenStatus::Expired),
        _ => Answer::UnknownStatus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer shape of an ASMX SOAP 1.1 service (InstaMed's page names the method and its states, with no
    /// sample envelope: this is the shape every ASMX service answers in).
    pub fn answer(status: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
             xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
             <soap:Body><GetSSOTokenStatusResponse xmlns=\"http://tempuri.org/\"><GetSSOTokenStatusResult>{status}\
             </GetSSOTokenStatusResult></GetSSOTokenStatusResponse></soap:Body></soap:Envelope>"
        )
    }

    #[test]
    fn the_envelope_carries_the_four_fields_escaped() {
        let req = StatusRequest { token: "NTJm+/=", account_id: "acct", alias: "al&<x>", password: "p\"w" };
        let xml = String::from_utf8(envelope(&req)).unwrap();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>"), "{xml}");
        assert!(
            xml.contains("<soap:Envelope") && xml.contains("xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"")
        );
        assert!(xml.contains("<GetSSOTokenStatus xmlns=\"http://tempuri.org/\">"), "{xml}");
        assert!(xml.contains("<tokenID>NTJm+/=</tokenID><accountID>acct</accountID>"), "{xml}");
        assert!(xml.contains("<alias>al&amp;&lt;x&gt;</alias>"), "{xml}");
        let fields = crate::parse::parse(crate::parse::Format::Xml, xml.as_bytes());
        assert!(fields.is_ok(), "well-formed: {xml}");
    }

    #[test]
    fn statuses_are_read_case_insensitively() {
        assert_eq!(parse_answer(answer("NEW").as_bytes()), Answer::Status(TokenStatus::New));
        assert_eq!(parse_answer(answer("Complete").as_bytes()), Answer::Status(TokenStatus::Complete));
        assert_eq!(parse_answer(answer("used").as_bytes()), Answer::Status(TokenStatus::Complete));
        assert_eq!(parse_answer(answer(" EXPIRED ").as_bytes()), Answer::Status(TokenStatus::Expired));
        assert_eq!(parse_answer(answer("PENDING").as_bytes()), Answer::UnknownStatus);
        assert_eq!(parse_answer(answer("").as_bytes()), Answer::UnknownStatus);
    }

    #[test]
    fn faults_and_garbage_are_told_apart() {
        let fault = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><soap:Fault>\
                     <faultcode>soap:Server</faultcode><faultstring>Server was unable to process request.</faultstring>\
                     </soap:Fault></soap:Body></soap:Envelope>";
        assert_eq!(parse_answer(fault.as_bytes()), Answer::Fault);
        assert_eq!(parse_answer(b"<html><body>Service Unavailable</body></html>"), Answer::Garbage);
        assert_eq!(parse_answer(b"not xml at all <<<"), Answer::Garbage);
        assert_eq!(parse_answer(b"<!DOCTYPE x [<!ENTITY a \"b\">]><x>&a;</x>"), Answer::Garbage);
        assert_eq!(parse_answer(&[0xff, 0xfe]), Answer::Garbage);
        let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
        assert_eq!(parse_answer(deep.as_bytes()), Answer::Garbage);
    }
}
