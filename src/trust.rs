//! What the service trusts about where a request comes from, parsed once from the settings:
//! the browser origins whose cookie-authenticated writes are accepted (`auth.rs`), and the
//! reverse proxies whose forwarding headers name the client (`telemetry.rs`).

use std::fmt;
use std::net::IpAddr;

/// A web origin (RFC 6454): scheme, host and port, the port always explicit, so
/// `https://A.example` and `https://a.example:443` are the same origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl WebOrigin {
    /// The origin of an `http(s)` URL that may carry a path (`PUBLIC_BASE_URL`).
    pub fn of_url(text: &str) -> Option<Self> {
        let url = url::Url::parse(text.trim()).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        Some(Self {
            scheme: url.scheme().to_owned(),
            // Lower-cased, IDNA-encoded, IPv6 in brackets: as browsers serialise it.
            host: url.host_str()?.to_owned(),
            port: url.port_or_known_default()?,
        })
    }

    /// An origin as browsers send it in `Origin` and as `CORS_ALLOW_ORIGINS` lists them:
    /// `scheme://host[:port]` and nothing after. `null` (sandboxed frames, `file:`, some
    /// redirects) and anything with a path, query or user name is not an origin.
    pub fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.split_once("://")?;
        if rest.is_empty() || rest.contains(['/', '\\', '?', '#', '@']) {
            return None;
        }
        Self::of_url(text)
    }
}

impl fmt::Display for WebOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The origins trusted to make cookie-authenticated writes: the service's own
/// (`PUBLIC_BASE_URL`) and those listed in `CORS_ALLOW_ORIGINS` (a `*` there lists none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedOrigins(Vec<WebOrigin>);

impl TrustedOrigins {
    /// The set, from origins already parsed.
    pub fn new(origins: Vec<WebOrigin>) -> Self {
        Self(origins)
    }

    /// Whether the value of an `Origin` header is one of them (`null` never is).
    pub fn trusts(&self, origin: &str) -> bool {
        WebOrigin::parse(origin).is_some_and(|o| self.0.contains(&o))
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `ADDRESS/PREFIX`, or a bare address (one host). Host bits past the prefix are ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = addr.parse::<IpAddr>().ok()?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max)?
            }
            Some(_) => return None,
        };
        Some(Self { addr, prefix })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, width) = match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u128::from(net.to_bits()), u128::from(ip.to_bits()), 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => (net.to_bits(), ip.to_bits(), 128),
            _ => return false,
        };
        // Equal in the first `prefix` bits: nothing differs above the host bits.
        (net ^ ip)
            .checked_shr(width - u32::from(self.prefix))
            .unwrap_or(0)
            == 0
    }
}

/// The peers whose `X-Real-IP` and `X-Forwarded-For` are believed (`TRUSTED_PROXIES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// `TRUSTED_PROXIES`' default: the loopback addresses, where nginx runs beside us.
    pub const DEFAULT: &'static str = "127.0.0.1/32,::1/128";

    /// A comma-separated list of addresses and networks; the error names the bad entry.
    pub fn parse(value: &str) -> Result<Self, String> {
        let nets = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                IpNet::parse(s).ok_or_else(|| {
                    format!("'{s}' is not an IP address or network such as 10.0.0.0/8")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nets.is_empty() {
            return Err("lists no address or network".to_owned());
        }
        Ok(Self(nets))
    }

    /// Whether `ip` belongs to a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::parse(Self::DEFAULT).unwrap_or(Self(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        let trusted = TrustedOrigins::new(vec![
            WebOrigin::of_url("https://Files.Example.com/base/path").unwrap(),
            WebOrigin::parse("http://app.example:8080").unwrap(),
            WebOrigin::parse("http://[::1]:5070").unwrap(),
        ]);
        for yes in [
            "https://files.example.com",
            "https://FILES.example.com:443",
            "http://app.example:8080",
            "http://[::1]:5070",
        ] {
            assert!(trusted.trusts(yes), "{yes}");
        }
        for no in [
            "null",
            "",
            "http://files.example.com",
            "https://files.example.com:8443",
            "https://evil.files.example.com",
            "https://files.example.com.evil.example",
            "http://app.example",
            "https://app.example:8080",
            "https://files.example.com/",
            "https://files.example.com/base/path",
            "https://user@files.example.com",
            "files.example.com",
            "ftp://files.example.com",
        ] {
            assert!(!trusted.trusts(no), "{no}");
        }
        assert!(!TrustedOrigins::default().trusts("https://files.example.com"));
    }

    #[test]
    fn networks_match_their_prefix() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.255.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(!n.contains(ip("::1")));
        let one = IpNet::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.9")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "/8",
            "10.0.0.0/+8",
            "host",
        ] {
            assert!(IpNet::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn proxies_default_to_loopback_and_name_a_bad_entry() {
        let d = TrustedProxies::default();
        assert!(d.contains(ip("127.0.0.1")));
        assert!(d.contains(ip("::1")));
        assert!(d.contains(ip("::ffff:127.0.0.1")));
        assert!(!d.contains(ip("127.0.0.2")));
        assert!(!d.contains(ip("10.0.0.1")));
        let list = TrustedProxies::parse(" 10.0.0.0/8 , fd00::/8 ").unwrap();
        assert!(list.contains(ip("10.9.9.9")) && list.contains(ip("fd12::1")));
        let e = TrustedProxies::parse("10.0.0.0/8, nginx").unwrap_err();
        assert!(e.contains("'nginx'"), "{e}");
        assert!(TrustedProxies::parse(" , ").is_err());
    }
}
