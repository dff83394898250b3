//! Address allow-lists: which IP addresses a service may register, check or
//! connect to. Discovery holds registered hosts to its `allowed_hosts`; the
//! gateway holds every instance it would connect to to its
//! `allowed_upstreams`, so a record that reached its ring by another way (put
//! straight into etcd, say) still cannot send it to the cloud metadata
//! address. Both lists default to [`default_ranges`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// Which setting a list comes from, for the messages that name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The config key (`allowed_hosts`).
    pub key: &'static str,
    /// Whose key it is, as a refusal says it (`discovery`).
    pub owner: &'static str,
}

impl Setting {
    /// Discovery's `allowed_hosts`: which hosts may be registered and checked.
    pub const DISCOVERY: Setting = Setting {
        key: "allowed_hosts",
        owner: "discovery",
    };
    /// The gateway's `allowed_upstreams`: which addresses it may connect to.
    pub const GATEWAY: Setting = Setting {
        key: "allowed_upstreams",
        owner: "the gateway",
    };
}

/// The ranges both lists hold by default: loopback and the private ranges.
pub fn default_ranges() -> Vec<String> {
    [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    ]
    .map(String::from)
    .to_vec()
}

/// An allow-list of the config, parsed: discovery's `allowed_hosts` or the
/// gateway's `allowed_upstreams`.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    entries: Vec<Cidr>,
    setting: Setting,
}

impl AllowedHosts {
    /// Parses discovery's `allowed_hosts`, naming the first entry that is wrong.
    pub fn parse(entries: &[String]) -> Result<AllowedHosts, String> {
        Self::parse_setting(Setting::DISCOVERY, entries)
    }

    /// Parses the list of `setting`, naming the first entry that is wrong.
    pub fn parse_setting(setting: Setting, entries: &[String]) -> Result<AllowedHosts, String> {
        let entries = entries
            .iter()
            .map(|e| Cidr::parse(e).map_err(|m| format!("{}: {m}", setting.key)))
            .collect::<Result<_, _>>()?;
        Ok(AllowedHosts { entries, setting })
    }

    /// `Ok` if `ip` is allowed (may be registered and checked, or connected
    /// to), else why not.
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
                    "{ip} is {what}, refused unless {} lists it ({range} or within)",
                    self.setting.key
                ))
            };
        }
        if self.entries.iter().any(|e| e.contains(ip)) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is not in {}'s {}",
                self.setting.owner, self.setting.key
            ))
        }
    }

    /// `Ok` if every address is allowed, else why the first refused one is not.
    pub fn check_all(&self, addrs: &[SocketAddr]) -> Result<(), String> {
        addrs.iter().try_for_each(|a| self.check(a.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> AllowedHosts {
        AllowedHosts::parse_setting(Setting::GATEWAY, &default_ranges()).unwrap()
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
    fn refusals_name_the_setting_they_come_from() {
        let gateway = AllowedHosts::parse_setting(Setting::GATEWAY, &default_ranges()).unwrap();
        let why = gateway.check(ip("0.0.0.0")).unwrap_err();
        assert!(why.contains("allowed_upstreams lists it"), "{why}");
        let why = gateway.check(ip("8.8.8.8")).unwrap_err();
        assert_eq!(why, "8.8.8.8 is not in the gateway's allowed_upstreams");
        let discovery = AllowedHosts::parse(&default_ranges()).unwrap();
        let why = discovery.check(ip("8.8.8.8")).unwrap_err();
        assert_eq!(why, "8.8.8.8 is not in discovery's allowed_hosts");
        let bad = AllowedHosts::parse_setting(Setting::GATEWAY, &["10.0.0.1/8".into()]);
        assert!(bad.unwrap_err().starts_with("allowed_upstreams: "));
    }

    #[test]
    fn discovery_and_gateway_default_to_the_same_ranges() {
        assert_eq!(
            crate::config::DiscoveryConfig::default().allowed_hosts,
            default_ranges()
        );
    }
}
