//! Who may register, and which hosts: the bearer token of write requests, the
//! address ranges a registered host must resolve into, and host name
//! resolution with a deadline. Without these, anyone who reaches discovery's
//! port could put their own server in a namespace, deregister real ones, or
//! make discovery probe any address (cloud metadata included) for them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The address ranges and their allow-list live in `shared`, where the
/// gateway's `allowed_upstreams` uses the same parsing and matching.
pub use shared::allowed::AllowedHosts;

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
    use shared::allowed::Cidr;

    fn defaults() -> AllowedHosts {
        AllowedHosts::parse(&shared::config::DiscoveryConfig::default().allowed_hosts).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The rules themselves are tested in `shared::allowed`; here, that
    /// discovery's defaults and messages are what they were.
    #[test]
    fn discovery_defaults_and_messages_are_unchanged() {
        let a = defaults();
        assert!(a.check(ip("127.0.0.1")).is_ok());
        assert!(a.check(ip("192.168.1.1")).is_ok());
        assert_eq!(
            a.check(ip("8.8.8.8")).unwrap_err(),
            "8.8.8.8 is not in discovery's allowed_hosts"
        );
        let why = a.check(ip("169.254.169.254")).unwrap_err();
        assert!(
            why.contains("refused unless allowed_hosts lists it"),
            "{why}"
        );
        let bad = AllowedHosts::parse(&["10.0.0.1/8".into()]).unwrap_err();
        assert!(bad.starts_with("allowed_hosts: "), "{bad}");
        assert!(Cidr::parse("10.0.0.0/8").unwrap().contains(ip("10.1.1.1")));
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
