//! Addresses of this node's instances, from its range, kept on disk so an
//! instance keeps its address across agent restarts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use flotilla_api::cidr::Cidr;

const FILE: &str = "addresses.bin";

type Key = (String, String);

/// Assignments of this node's addresses.
#[derive(Debug)]
pub struct Addresses {
    range: Option<Cidr>,
    by_key: BTreeMap<Key, Ipv4Addr>,
    by_ip: std::collections::HashMap<Ipv4Addr, Key>,
    path: PathBuf,
}

impl Addresses {
    /// Loads what a previous run assigned (nothing if the file is missing or
    /// unreadable).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let by_key: BTreeMap<Key, Ipv4Addr> = std::fs::read(&path)
            .ok()
            .and_then(|b| postcard::from_bytes::<Vec<(Key, [u8; 4])>>(&b).ok())
            .map(|v| {
                v.into_iter()
                    .map(|(k, ip)| (k, Ipv4Addr::from(ip)))
                    .collect()
            })
            .unwrap_or_default();
        let by_ip = by_key.iter().map(|(k, ip)| (*ip, k.clone())).collect();
        Self {
            range: None,
            by_key,
            by_ip,
            path,
        }
    }

    fn save(&self) {
        let items: Vec<(&Key, [u8; 4])> =
            self.by_key.iter().map(|(k, ip)| (k, ip.octets())).collect();
        if let Ok(bytes) = postcard::to_allocvec(&items) {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = self.path.with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(tmp, &self.path);
            }
        }
    }

    /// Sets the node's range; assignments outside it are dropped.
    pub fn set_range(&mut self, range: Cidr) {
        if self.range == Some(range) {
            return;
        }
        self.range = Some(range);
        let before = self.by_key.len();
        self.by_key.retain(|_, ip| range.contains(*ip));
        self.by_ip.retain(|ip, _| range.contains(*ip));
        if self.by_key.len() != before {
            self.save();
        }
    }

    /// The key's address, assigning the lowest free one if it has none.
    pub fn assign(&mut self, key: &Key) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_key.get(key) {
            return Some(*ip);
        }
        let range = self.range?;
        let ip = range.hosts().find(|ip| !self.by_ip.contains_key(ip))?;
        self.by_key.insert(key.clone(), ip);
        self.by_ip.insert(ip, key.clone());
        self.save();
        Some(ip)
    }

    /// Frees the key's address.
    pub fn release(&mut self, key: &Key) {
        if let Some(ip) = self.by_key.remove(key) {
            self.by_ip.remove(&ip);
            self.save();
        }
    }

    /// The key holding `ip`.
    pub fn key_of(&self, ip: Ipv4Addr) -> Option<Key> {
        self.by_ip.get(&ip).cloned()
    }
}
