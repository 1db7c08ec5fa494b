//! `client_cert`: the source authorizes a client certificate that the TLS listener has already verified against
//! `server.tls.client_ca` (and its CRLs). Verification is optional at the handshake so sources without
//! `client_cert` share the port; here a missing certificate, or one whose subject and SANs match nothing
//! listed, is a 403.
//!
//! `subjects` entries are a lone `CN=name` (matches the certificate's common name) or a full distinguished name
//! (`CN=webhooks.instamed.com, O=InstaMed, C=US`: the same attributes, in any order). `sans` entries match a DNS
//! name (case-insensitive), an e-mail address, a URI or an IP address of the certificate. With neither list,
//! any verified certificate is allowed.

use std::net::IpAddr;

use futures_util::future::BoxFuture;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use super::{AuthError, Check, Unverified};
use crate::config::{ClientCert, ConfigError};

/// A distinguished name as a sorted list of (attribute type in upper case, value).
type Dn = Vec<(String, String)>;

#[derive(Debug)]
pub struct ClientCertCheck {
    common_names: Vec<String>,
    dns: Vec<Dn>,
    sans: Vec<String>,
}

impl ClientCertCheck {
    /// `key` is `sources.NAME.auth.client_cert`.
    ///
    /// # Errors
    /// A subject that is not `TYPE=value` pairs.
    pub fn build(key: &str, cfg: &ClientCert) -> Result<Self, ConfigError> {
        let (mut common_names, mut dns) = (Vec::new(), Vec::new());
        for (i, subject) in cfg.subjects.iter().enumerate() {
            let dn = parse_dn(subject).ok_or_else(|| {
                ConfigError::key(&format!("{key}.subjects[{i}]"), "write `CN=name` or a DN such as `CN=a, O=b`")
            })?;
            match dn.as_slice() {
                [(t, v)] if t == "CN" => common_names.push(v.clone()),
                _ => dns.push(dn),
            }
        }
        if let Some(i) = cfg.sans.iter().position(|s| s.trim().is_empty()) {
            return Err(ConfigError::key(&format!("{key}.sans[{i}]"), "must not be empty"));
        }
        Ok(ClientCertCheck { common_names, dns, sans: cfg.sans.iter().map(|s| s.trim().to_string()).collect() })
    }

    /// Whether the end-entity certificate (DER) is allowed.
    pub fn allows(&self, der: &[u8]) -> bool {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return false;
        };
        if self.common_names.is_empty() && self.dns.is_empty() && self.sans.is_empty() {
            return true;
        }
        let subject = dn_of(cert.subject());
        let cn_ok = subject.iter().any(|(t, v)| t == "CN" && self.common_names.contains(v));
        cn_ok || self.dns.contains(&subject) || self.san_matches(&cert)
    }

    fn san_matches(&self, cert: &X509Certificate<'_>) -> bool {
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        san.value.general_names.iter().any(|name| self.sans.iter().any(|want| general_name_is(name, want)))
    }
}

fn general_name_is(name: &GeneralName<'_>, want: &str) -> bool {
    match name {
        GeneralName::DNSName(d) => d.eq_ignore_ascii_case(want),
        GeneralName::RFC822Name(e) | GeneralName::URI(e) => *e == want,
        GeneralName::IPAddress(bytes) => match want.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => *bytes == ip.octets().as_slice(),
            Ok(IpAddr::V6(ip)) => *bytes == ip.octets().as_slice(),
            Err(_) => false,
        },
        _ => false,
    }
}

fn parse_dn(text: &str) -> Option<Dn> {
    let mut dn = text
        .split(',')
        .map(|rdn| {
            let (t, v) = rdn.split_once('=')?;
            let (t, v) = (t.trim().to_ascii_uppercase(), v.trim().to_string());
            (!t.is_empty() && !v.is_empty()).then_some((t, v))
        })
        .collect::<Option<Dn>>()?;
    dn.sort();
    Some(dn)
}

fn dn_of(name: &X509Name<'_>) -> Dn {
    let registry = x509_parser::objects::oid_registry();
    let mut dn: Dn = name
        .iter_attributes()
        .map(|attr| {
            let t = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                .map(str::to_ascii_uppercase)
                .unwrap_or_else(|_| attr.attr_type().to_id_string());
            (t, attr.as_str().unwrap_or("\u{fffd}").to_string())
        })
        .collect();
    dn.sort();
    dn
}

impl Check for ClientCertCheck {
    fn method(&self) -> &'static str {
        "client_cert"
    }

    fn head_only(&self) -> bool {
        true
    }

    fn verify<'a>(&'a self, req: &'a Unverified) -> BoxFuture<'a, Result<(), AuthError>> {
        let ok = req.peer.client_certs.as_ref().and_then(|chain| chain.first()).is_some_and(|ee| self.allows(ee));
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(AuthError::Forbidden { method: "client_cert" })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, org: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, o);
        }
        p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn check(subjects: &[&str], sans: &[&str]) -> ClientCertCheck {
        let cfg = ClientCert {
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
        };
        ClientCertCheck::build("sources.s.auth.client_cert", &cfg).unwrap()
    }

    #[test]
    fn subjects_and_sans() {
        let instamed = cert("webhooks.instamed.com", Some("InstaMed"), &["webhooks.instamed.com", "10.1.2.3"]);
        let other = cert("evil.example", Some("InstaMed"), &["evil.example"]);
        assert!(check(&[], &[]).allows(&instamed));
        assert!(check(&["CN=webhooks.instamed.com"], &[]).allows(&instamed));
        assert!(check(&["o=InstaMed, CN=webhooks.instamed.com"], &[]).allows(&instamed), "full DN, any order");
        assert!(!check(&["CN=webhooks.instamed.com, O=Other"], &[]).allows(&instamed), "DN must match whole");
        assert!(check(&[], &["WEBHOOKS.instamed.com"]).allows(&instamed));
        assert!(check(&[], &["10.1.2.3"]).allows(&instamed));
        assert!(!check(&["CN=webhooks.instamed.com"], &["webhooks.instamed.com"]).allows(&other));
        assert!(!check(&["CN=x"], &[]).allows(b"not a certificate"));
    }

    #[test]
    fn bad_subjects_name_the_key() {
        let cfg = ClientCert { subjects: vec!["webhooks.instamed.com".into()], sans: vec![] };
        let e = ClientCertCheck::build("sources.s.auth.client_cert", &cfg).unwrap_err().to_string();
        assert!(e.contains("sources.s.auth.client_cert.subjects[0]"), "{e}");
    }
}
