//! `ip_allow`: CIDR allowlists (InstaMed publishes eight addresses). The address is the one the listener
//! resolved: the socket's, or a trusted proxy's `X-Forwarded-For` / PROXY header.

use futures_util::future::BoxFuture;
use ipnet::IpNet;

use super::{AuthError, Check, Unverified};

#[derive(Debug)]
pub struct IpAllow {
    nets: Vec<IpNet>,
}

impl IpAllow {
    pub fn new(nets: Vec<IpNet>) -> Self {
        IpAllow { nets }
    }
}

/// Treats an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it carries.
pub fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Check for IpAllow {
    fn method(&self) -> &'static str {
        "ip_allow"
    }

    fn head_only(&self) -> bool {
        true
    }

    fn verify<'a>(&'a self, req: &'a Unverified) -> BoxFuture<'a, Result<(), AuthError>> {
        let ip = canonical(req.client_ip);
        let ok = self.nets.iter().any(|n| n.contains(&ip));
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(AuthError::Forbidden { method: "ip_allow" })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::request;

    #[tokio::test]
    async fn only_listed_addresses_pass() {
        let check = IpAllow::new(vec!["216.177.67.4/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]);
        for ok in ["216.177.67.4", "10.1.2.3", "::ffff:216.177.67.4"] {
            assert_eq!(check.verify(&request(&[], b"", ok)).await, Ok(()), "{ok}");
        }
        for bad in ["216.177.67.5", "11.0.0.1", "::1"] {
            assert_eq!(check.verify(&request(&[], b"", bad)).await, Err(AuthError::Forbidden { method: "ip_allow" }));
        }
    }
}
