//! Who may register, and which hosts: the bearer token of write requests, the
//! address ranges a registered host must resolve into, and host name
//! resolution with a deadline. Without these, anyone who reaches discovery's
//! port could put their own server in a namespace, deregister real ones, or
//! make discovery probe any address (cloud metadata included) for them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// An address range: `10.0.0.0/8`, `fc00::/7`, or a bare address (`::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address; host bits set under the mask are refused.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address range such as 10.0.0.0/8"))?;
        let width = width(net);
        let prefix = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= width)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {width}"))?,
            Some(_) => return Err(format!("{text:?}: the prefix length must be a number")),
        };
        let cidr = Cidr { net, prefix };
        if bits(net) & !cidr.mask() != 0 {
            return Err(format!(
                "{text:?} has bits set past its prefix length; write the network address"
            ));
        }
        Ok(cidr)
    }

    const fn v4(a: [u8; 4], prefix: u8) -> Cidr {
        Cidr {
            net: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            net: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    fn mask(&self) -> u128 {
        let width = width(self.net);
        if self.prefix == 0 {
            0
        } else {
            let ones = u128::MAX << (128 - u32::from(self.prefix));
            ones >> (128 - u32::from(width))
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.net.is_ipv4() && bits(ip) & self.mask() == bits(self.net)
    }

    /// Whether every address of `self` is in `other`.
    fn within(&self, other: &Cidr) -> bool {
        self.prefix >= other.prefix && other.contains(self.net)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn width(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Ranges refused even inside an allowed range, unless an `allowed_hosts`
/// entry lies within them: what no instance should be, and what a stranger
/// would most like discovery to probe for them.
const REFUSED: &[(Cidr, &str)] = &[
    (
        Cidr::v4([0, 0, 0, 0], 8),
        "an unspecified (\"this network\") address",
    ),
    (Cidr::v4([169, 254, 0, 0], 16), "a link-local address"),
    (
        Cidr::v4([100, 100, 100, 200], 32),
        "a cloud metadata address",
    ),
    (Cidr::v4([168, 63, 129, 16], 32), "a cloud metadata address"),
    (Cidr::v4([224, 0, 0, 0], 4), "a multicast address"),
    (
        Cidr::v4([240, 0, 0, 0], 4),
        "a reserved or broadcast address",
    ),
    (Cidr::v6([0; 8], 128), "the unspecified address"),
    (
        Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "a link-local address",
    ),
    (
        Cidr::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "a cloud metadata address",
    ),
    (
        Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        "a multicast address",
    ),
];

/// The `allowed_hosts` of the config, parsed.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    entries: Vec<Cidr>,
}

impl AllowedHosts {
    /// Parses every entry, naming the first that is wrong.
    pub fn parse(entries: &[String]) -> Result<AllowedHosts, String> {
        let entries = entries
            .iter()
            .map(|e| Cidr::parse(e).map_err(|m| format!("allowed_hosts: {m}")))
            .collect::<Result<_, _>>()?;
        Ok(AllowedHosts { entries })
    }

    /// `Ok` if `ip` may be registered and checked, else why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        if let Some((range, what)) = REFUSED.iter().find(|(r, _)| r.contains(ip)) {
            let listed = self
                .entries
                .iter()
                .any(|e| e.contains(ip) && e.within(range));
            return if listed {
                Ok(())
            } else {
                Err(format!(
                    "{ip} is {what}, refused unless allowed_hosts lists it ({range} or within)"
                ))
            };
        }
        if self.entries.iter().any(|e| e.contains(ip)) {
            Ok(())
        } else {
            Err(format!("{ip} is not in discovery's allowed_hosts"))
        }
    }

    /// `Ok` if every address is allowed, else why the first refused one is not.
    pub fn check_all(&self, addrs: &[SocketAddr]) -> Result<(), String> {
        addrs.iter().try_for_each(|a| self.check(a.ip()))
    }
}

/// Why a host gave no addresses.
#[derive(Debug)]
pub enum ResolveError {
    /// The name does not resolve, or resolves to nothing.
    NotFound(String),
    /// No answer within the deadline.
    TimedOut(Duration),
    /// This process could not ask (out of descriptors and the like): not the host's fault.
    Local(io::Error),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::NotFound(m) => f.write_str(m),
            ResolveError::TimedOut(d) => write!(
                f,
                "no answer from the resolver within {}",
                shared::config::format_duration(*d)
            ),
            ResolveError::Local(e) => write!(f, "cannot resolve now: {e}"),
        }
    }
}

/// The addresses of a normalized host: the literal itself, or the name
/// resolved by the system resolver within `limit`.
pub async fn resolve(
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let lookup = async_std::net::ToSocketAddrs::to_socket_addrs(&(host, port));
    match async_std::future::timeout(limit, lookup).await {
        Err(_) => Err(ResolveError::TimedOut(limit)),
        Ok(Err(e)) if shared::local_trouble::is_local_trouble(&e) => Err(ResolveError::Local(e)),
        Ok(Err(e)) => Err(ResolveError::NotFound(format!(
            "{host} does not resolve: {e}"
        ))),
        Ok(Ok(addrs)) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.dedup();
            if addrs.is_empty() {
                Err(ResolveError::NotFound(format!(
                    "{host} resolves to no address"
                )))
            } else {
                Ok(addrs)
            }
        }
    }
}

/// Whether the `Authorization` values carry exactly `Bearer <token>`.
///
/// The scheme is case-insensitive (RFC 9110 section 11.1); more than one
/// `Authorization` header is refused as ambiguous. The token is compared in
/// constant time for a given length, so timing tells a guesser nothing about
/// how many leading bytes were right.
pub fn bearer_matches<'a>(mut values: impl Iterator<Item = &'a str>, token: &str) -> bool {
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> AllowedHosts {
        AllowedHosts::parse(&shared::config::DiscoveryConfig::default().allowed_hosts).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert!(Cidr::parse("10.0.0.0/8")
            .unwrap()
            .contains(ip("10.255.0.1")));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("fc00::/7").unwrap().contains(ip("fd12::1")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "x/8",
            "::/129",
            "10.0.0.0/+8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults_allow_loopback_and_private_ranges_only() {
        let a = defaults();
        for good in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(a.check(ip(good)).is_ok(), "{good} refused");
        }
        for bad in [
            "169.254.169.254",
            "fd00:ec2::254",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "8.8.8.8",
            "fe80::1",
            "ff02::1",
            "::ffff:169.254.169.254",
            "172.32.0.1",
        ] {
            assert!(a.check(ip(bad)).is_err(), "{bad} allowed");
        }
    }

    #[test]
    fn refused_ranges_need_an_entry_within_them() {
        let wide = AllowedHosts::parse(&["0.0.0.0/0".into(), "::/0".into()]).unwrap();
        assert!(wide.check(ip("8.8.8.8")).is_ok());
        assert!(wide.check(ip("169.254.169.254")).is_err());
        assert!(wide.check(ip("fd00:ec2::254")).is_err());
        let listed = AllowedHosts::parse(&["169.254.0.0/16".into()]).unwrap();
        assert!(listed.check(ip("169.254.169.254")).is_ok());
    }

    #[test]
    fn bearer_tokens_match_exactly() {
        let t = "s3cret";
        assert!(bearer_matches(["Bearer s3cret"].into_iter(), t));
        assert!(bearer_matches(["bearer s3cret"].into_iter(), t));
        assert!(!bearer_matches(["Bearer s3cre"].into_iter(), t));
        assert!(!bearer_matches(["Bearer s3cretx"].into_iter(), t));
        assert!(!bearer_matches(["Basic s3cret"].into_iter(), t));
        assert!(!bearer_matches(["s3cret"].into_iter(), t));
        assert!(!bearer_matches(std::iter::empty(), t));
        assert!(!bearer_matches(
            ["Bearer s3cret", "Bearer s3cret"].into_iter(),
            t
        ));
    }
}
