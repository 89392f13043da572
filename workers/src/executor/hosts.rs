//! Which hosts `http` tasks may reach from this worker.
//!
//! A [`HostPolicy`] is checked twice for every request and redirect hop:
//! on the URL's host before the request is built (names and literal
//! addresses), and on every address a name resolves to, inside the
//! client's resolver, so a name that points at a forbidden address (DNS
//! rebinding included) is refused where the connection is made. Link-local
//! addresses, where cloud metadata services answer (`169.254.169.254`,
//! `fd00:ec2::254`, `100.100.100.200`), are refused unless the policy says
//! otherwise: a task that reads them gets the worker's cloud credentials.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Addresses of cloud metadata services outside the link-local ranges.
const METADATA: [IpAddr; 2] = [
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // AWS over IPv6 (inside fc00::/7, not link-local).
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Where `http` tasks may go: `deny` wins over `allow`; an empty `allow`
/// lets every host in; link-local and metadata addresses are refused
/// unless `allow_link_local` or an `allow` network holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// When not empty, the only hosts tasks may reach.
    pub allow: Vec<HostPattern>,
    /// Hosts tasks may never reach.
    pub deny: Vec<HostPattern>,
    /// Let tasks reach link-local and cloud metadata addresses.
    pub allow_link_local: bool,
}

/// A host a policy names: `api.example.com` (that name), `*.example.com`
/// (names under it), `10.0.0.5` (that address) or `10.0.0.0/8` (a
/// network). Names match case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One host name.
    Name(String),
    /// Every name ending in `.suffix`.
    Under(String),
    /// An address and a prefix length.
    Network(IpAddr, u8),
}

/// Why a pattern does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "host pattern {0:?}: write a name (`api.example.com`), `*.example.com`, an address or a \
     network (`10.0.0.0/8`)"
)]
pub struct HostPatternError(String);

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || HostPatternError(text.to_owned());
        let text = text.trim();
        if let Some((addr, bits)) = text.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            return if bits <= max {
                Ok(HostPattern::Network(addr, bits))
            } else {
                Err(bad())
            };
        }
        if let Ok(addr) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
            let bits = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(HostPattern::Network(addr, bits));
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        match text.strip_prefix("*.") {
            Some(suffix) if name_ok(suffix) => Ok(HostPattern::Under(suffix.to_ascii_lowercase())),
            None if name_ok(text) => Ok(HostPattern::Name(text.to_ascii_lowercase())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Name(name) => f.write_str(name),
            HostPattern::Under(suffix) => write!(f, "*.{suffix}"),
            HostPattern::Network(addr, bits) if u32::from(*bits) == full_bits(addr) => {
                write!(f, "{addr}")
            }
            HostPattern::Network(addr, bits) => write!(f, "{addr}/{bits}"),
        }
    }
}

impl HostPattern {
    fn matches_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            HostPattern::Name(own) => *own == name,
            HostPattern::Under(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.')),
            HostPattern::Network(..) => false,
        }
    }

    fn matches_addr(&self, addr: IpAddr) -> bool {
        let HostPattern::Network(net, bits) = self else {
            return false;
        };
        match (canonical(*net), canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

fn full_bits(addr: &IpAddr) -> u32 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `addr` is link-local or a cloud metadata service's.
pub fn is_link_local_or_metadata(addr: IpAddr) -> bool {
    let addr = canonical(addr);
    METADATA.contains(&addr)
        || match addr {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        }
}

/// A host the policy refused, and why; an `http` attempt fails with it as
/// a `permission` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} is refused by this worker: {why}")]
pub struct Refused {
    /// The name or address refused.
    pub host: String,
    /// Which rule refused it, and the setting that changes it.
    pub why: String,
}

impl HostPolicy {
    /// Whether any rule is set beyond the link-local default.
    pub fn is_default(&self) -> bool {
        *self == HostPolicy::default()
    }

    /// Checks a URL's host name before any address is known: the name
    /// rules only (a name the `allow` list does not name may still resolve
    /// into an allowed network, which [`HostPolicy::check_addr`] decides).
    pub fn check_name(&self, name: &str) -> Result<(), Refused> {
        if let Some(rule) = self.deny.iter().find(|p| p.matches_name(name)) {
            return Err(refused(
                name,
                format!("it matches {rule} in worker.http.deny-hosts"),
            ));
        }
        let by_name_only = self
            .allow
            .iter()
            .all(|p| !matches!(p, HostPattern::Network(..)));
        if !self.allow.is_empty()
            && by_name_only
            && !self.allow.iter().any(|p| p.matches_name(name))
        {
            return Err(refused(name, not_allowed()));
        }
        Ok(())
    }

    /// Checks an address the request would connect to, `name` being the
    /// host name it was resolved from (none for a literal address).
    pub fn check_addr(&self, name: Option<&str>, addr: IpAddr) -> Result<(), Refused> {
        let shown = || name.map_or_else(|| addr.to_string(), |n| format!("{n} ({addr})"));
        if let Some(name) = name {
            self.check_name(name)?;
        }
        if let Some(rule) = self.deny.iter().find(|p| p.matches_addr(addr)) {
            return Err(refused(
                &shown(),
                format!("it is in {rule} of worker.http.deny-hosts"),
            ));
        }
        let allowed_net = self.allow.iter().any(|p| p.matches_addr(addr));
        let allowed_name = name.is_some_and(|n| self.allow.iter().any(|p| p.matches_name(n)));
        if !self.allow.is_empty() && !allowed_net && !allowed_name {
            return Err(refused(&shown(), not_allowed()));
        }
        if is_link_local_or_metadata(addr) && !self.allow_link_local && !allowed_net {
            return Err(refused(
                &shown(),
                "it is a link-local or cloud metadata address, where a task could read this \
                 host's cloud credentials (worker.http.allow-link-local = true, or the \
                 address in worker.http.allow-hosts, lets tasks reach it)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

fn refused(host: &str, why: String) -> Refused {
    Refused {
        host: host.to_owned(),
        why,
    }
}

fn not_allowed() -> String {
    "it is not in worker.http.allow-hosts".to_owned()
}

/// The client's resolver: the system's (`getaddrinfo`, on tokio's
/// blocking pool), then the policy on every address; a name left with no
/// allowed address fails with [`Refused`].
#[derive(Debug)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: Arc<HostPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_addr(Some(&host), a.ip()) {
                    Ok(()) => true,
                    Err(refused) => {
                        first_refusal.get_or_insert(refused);
                        false
                    }
                })
                .collect();
            match first_refusal {
                Some(refused) if allowed.is_empty() => Err(Box::new(refused) as _),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> HostPolicy {
        let parse = |list: &[&str]| list.iter().map(|p| p.parse().unwrap()).collect();
        HostPolicy {
            allow: parse(allow),
            deny: parse(deny),
            allow_link_local: false,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn metadata_and_link_local_addresses_are_refused_by_default() {
        let open = HostPolicy::default();
        for addr in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            let refused = open.check_addr(None, ip(addr)).unwrap_err();
            assert!(refused.why.contains("metadata"), "{addr}: {refused}");
        }
        for addr in ["127.0.0.1", "10.1.2.3", "93.184.216.34", "::1"] {
            assert_eq!(open.check_addr(None, ip(addr)), Ok(()), "{addr}");
        }
        let told = HostPolicy {
            allow_link_local: true,
            ..HostPolicy::default()
        };
        assert_eq!(told.check_addr(None, ip("169.254.169.254")), Ok(()));
        let by_net = policy(&["169.254.169.254/32"], &[]);
        assert_eq!(by_net.check_addr(None, ip("169.254.169.254")), Ok(()));
    }

    #[test]
    fn deny_wins_and_allow_lists_names_and_networks() {
        let p = policy(&["*.example.com", "10.0.0.0/8"], &["secret.example.com"]);
        assert_eq!(
            p.check_addr(Some("api.example.com"), ip("93.184.216.34")),
            Ok(())
        );
        assert_eq!(
            p.check_addr(Some("API.Example.com."), ip("93.184.216.34")),
            Ok(())
        );
        assert!(
            p.check_addr(Some("example.com"), ip("93.184.216.34"))
                .is_err()
        );
        assert!(
            p.check_addr(Some("badexample.com"), ip("93.184.216.34"))
                .is_err()
        );
        let denied = p.check_name("secret.example.com").unwrap_err();
        assert!(denied.why.contains("deny-hosts"), "{denied}");
        assert_eq!(p.check_addr(Some("db.internal"), ip("10.9.8.7")), Ok(()));
        assert!(p.check_addr(None, ip("11.0.0.1")).is_err());
        // A name outside the allowed names may still land in an allowed
        // network, so the name check alone lets it pass.
        assert_eq!(p.check_name("db.internal"), Ok(()));
        let names_only = policy(&["api.example.com"], &[]);
        assert!(names_only.check_name("other.example.com").is_err());
    }

    #[test]
    fn patterns_parse_and_print() {
        for (text, shown) in [
            ("api.example.com", "api.example.com"),
            ("*.Example.com", "*.example.com"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.5", "10.0.0.5"),
            ("[::1]", "::1"),
            ("fd00::/8", "fd00::/8"),
        ] {
            let pattern: HostPattern = text.parse().unwrap();
            assert_eq!(pattern.to_string(), shown);
        }
        for bad in ["", "*.", "a..b", "10.0.0.0/33", "http://x", "exa mple.com"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?}");
        }
    }
}
