//! IPv4 ranges: the cluster's instance range split into per-node ranges, the
//! service range, and the addresses in them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network `a.b.c.d/len`, held with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    base: u32,
    len: u8,
}

/// A text that is not `a.b.c.d/len`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 network (expected a.b.c.d/len, len 0-32)")]
pub struct CidrError(pub String);

impl Cidr {
    /// The network of `addr` with a prefix of `len` bits.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Cidr> {
        (len <= 32).then(|| Cidr {
            base: u32::from(addr) & Self::mask(len),
            len,
        })
    }

    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        }
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The first address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// Number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == self.base
    }

    /// True when `other` lies wholly inside.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.network())
    }

    /// The `n`-th address (0 is the network address), if inside.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(self.base + n as u32))
    }

    /// Addresses usable by hosts: all but the network and broadcast addresses
    /// (for prefixes up to /30).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (first, last) = if self.len >= 31 {
            (0, self.size())
        } else {
            (1, self.size() - 1)
        };
        (first..last).map(|n| Ipv4Addr::from(self.base + n as u32))
    }

    /// The `n`-th subnet of prefix `len` inside this network.
    pub fn subnet(&self, len: u8, n: u64) -> Option<Cidr> {
        if len < self.len || len > 32 {
            return None;
        }
        let count = 1u64 << (len - self.len);
        if n >= count {
            return None;
        }
        let step = 1u64 << (32 - u32::from(len));
        Cidr::new(Ipv4Addr::from(self.base + (n * step) as u32), len)
    }

    /// How many subnets of prefix `len` fit.
    pub fn subnets(&self, len: u8) -> u64 {
        if len < self.len || len > 32 {
            0
        } else {
            1u64 << (len - self.len)
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        if len.is_empty() || !len.chars().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        let len: u8 = len.parse().map_err(|_| err())?;
        Cidr::new(addr, len).ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_hosts_and_membership() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(c.subnets(24), 256);
        let s = c.subnet(24, 3).unwrap();
        assert_eq!(s.to_string(), "10.244.3.0/24");
        assert!(c.covers(&s));
        assert!(s.contains("10.244.3.77".parse().unwrap()));
        assert!(!s.contains("10.244.4.1".parse().unwrap()));
        assert_eq!(s.hosts().count(), 254);
        assert_eq!(s.hosts().next().unwrap().to_string(), "10.244.3.1");
        assert!(c.subnet(24, 256).is_none());
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!("10.1.2.3/33".parse::<Cidr>().is_err());
        assert!("10.1.2.3".parse::<Cidr>().is_err());
    }
}
