//! The client IP the per-IP rate limits key on ([`super::limit`]).
//!
//! It is the TCP peer's address, unless the peer is one of the configured trusted proxies
//! (`--trusted-proxies` / `ORDERFLOW_TRUSTED_PROXIES`: IPs and CIDRs, none by default). Then
//! `X-Forwarded-For` is read from the right, hop by hop, skipping trusted proxies: the first
//! address that is not one is the client (each proxy appends the address it got the request
//! from, so everything left of the first untrusted hop may be made up by the client). When
//! every hop is trusted, the leftmost is taken. A hop that is not an IP address ends the walk:
//! the last trusted hop before it is taken. From an untrusted peer the header is ignored.

use std::{net::IpAddr, str::FromStr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// None: `X-Forwarded-For` is never read.
    pub fn none() -> Self {
        TrustedProxies(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client IP of a request from `peer` with these headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 one, so that `::ffff:10.0.0.1` matches `10.0.0.0/8`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` hop: an IP, possibly with a port (`1.2.3.4:5678`, `[::1]:5678`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    None
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of IPs and CIDRs, e.g. `10.0.0.0/8, 192.168.1.7`; empty: none.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(|ip| IpNet::from(canonical(ip)))
                    .map_err(|_| format!("`{item}` is neither an IP address nor a CIDR"))?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.7".parse().unwrap();
        let h = headers(&["6.6.6.6, 1.2.3.4"]);
        assert_eq!(trusted.client_ip(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        assert_eq!(trusted.client_ip(ip("10.1.2.3"), &h), ip("1.2.3.4"));
        assert_eq!(
            TrustedProxies::none().client_ip(ip("10.1.2.3"), &h),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: TrustedProxies = "10.0.0.0/8,192.168.1.7".parse().unwrap();
        let peer = ip("10.0.0.1");
        // A client-made-up left part is skipped; trusted hops on the right too.
        let h = headers(&["6.6.6.6, 1.2.3.4, 192.168.1.7", "10.9.9.9"]);
        assert_eq!(trusted.client_ip(peer, &h), ip("1.2.3.4"));
        // Every hop trusted: the leftmost.
        assert_eq!(
            trusted.client_ip(peer, &headers(&["10.2.2.2, 10.3.3.3"])),
            ip("10.2.2.2")
        );
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            trusted.client_ip(peer, &headers(&["1.2.3.4, junk, 10.3.3.3"])),
            ip("10.3.3.3")
        );
        // Ports, IPv6 and IPv4-mapped peers.
        assert_eq!(
            trusted.client_ip(peer, &headers(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.1"), &headers(&["1.2.3.4:80"])),
            ip("1.2.3.4")
        );
        assert_eq!(trusted.client_ip(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn lists_parse() {
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert_eq!(
            " 127.0.0.1 , ::1, 10.0.0.0/8 "
                .parse::<TrustedProxies>()
                .unwrap()
                .0
                .len(),
            3
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.local".parse::<TrustedProxies>().is_err());
    }
}
