//! Per-family destination tables. A destination with one path (the common
//! case) stores it inline; only contested destinations allocate. IPv4 keys
//! are packed into a `u64`. Tables are segmented ([`SegMap`]): they grow a
//! segment at a time.

use std::net::{IpAddr, Ipv4Addr};

use super::decision::Path;
use super::segmap::SegMap;
use crate::wire::Prefix;

/// The paths of one destination; the selected ones (best first, then the
/// rest of the ECMP set) come first.
#[derive(Clone, Debug)]
pub enum Dest {
    /// Exactly one path, selected if `usable`.
    One(Path),
    /// Several paths.
    Many(Box<Multi>),
}

/// Several paths and how many of them are selected.
#[derive(Clone, Debug)]
pub struct Multi {
    /// All paths, selected first.
    pub paths: Vec<Path>,
    /// Number of selected paths.
    pub nsel: usize,
}

impl Dest {
    /// All paths.
    pub fn paths(&self) -> &[Path] {
        match self {
            Dest::One(p) => std::slice::from_ref(p),
            Dest::Many(m) => &m.paths,
        }
    }

    /// The selected paths (best first).
    pub fn selected(&self) -> &[Path] {
        match self {
            Dest::One(p) => std::slice::from_ref(p),
            Dest::Many(m) => &m.paths[..m.nsel],
        }
    }

    /// Take the paths out as a vector.
    pub fn into_vec(self) -> Vec<Path> {
        match self {
            Dest::One(p) => vec![p],
            Dest::Many(m) => m.paths,
        }
    }

    /// Build from paths ordered selected-first.
    pub fn from_vec(mut paths: Vec<Path>, nsel: usize) -> Option<Dest> {
        match paths.len() {
            0 => None,
            1 if nsel == 1 => paths.pop().map(Dest::One),
            _ => Some(Dest::Many(Box::new(Multi { paths, nsel }))),
        }
    }
}

/// A key type for a table.
pub trait Key: Copy + Eq + std::hash::Hash {
    /// From a prefix of the table's family.
    fn from_prefix(p: &Prefix) -> Self;
    /// Back to the prefix.
    fn to_prefix(self) -> Prefix;
}

/// IPv4: address and length packed into one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct V4Key(u64);

impl Key for V4Key {
    fn from_prefix(p: &Prefix) -> Self {
        let a = match p.addr() {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(_) => 0,
        };
        V4Key(u64::from(a) << 8 | u64::from(p.len()))
    }
    fn to_prefix(self) -> Prefix {
        let addr = Ipv4Addr::from((self.0 >> 8) as u32);
        let len = (self.0 & 0xff) as u8;
        // Keys are only made from valid prefixes.
        Prefix::new(IpAddr::V4(addr), len.min(32))
            .unwrap_or_else(|_| Prefix::from(ipnetwork::IpNetwork::from(IpAddr::V4(addr))))
    }
}

impl Key for Prefix {
    fn from_prefix(p: &Prefix) -> Self {
        *p
    }
    fn to_prefix(self) -> Prefix {
        self
    }
}

/// One family's table.
#[derive(Debug)]
pub struct Table<K: Key> {
    /// Destinations.
    pub map: SegMap<K, Dest>,
}

impl<K: Key> Default for Table<K> {
    fn default() -> Self {
        Table {
            map: SegMap::default(),
        }
    }
}

impl<K: Key> Table<K> {
    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// No destination?
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
