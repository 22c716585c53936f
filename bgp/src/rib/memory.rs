//! What the RIB's structures take in memory, by kind: computed from their
//! sizes and capacities (and, for the attribute sets and contested
//! destinations, one walk over them), so it costs a pass over the
//! attribute sets: ask when the RIB is quiet, not per UPDATE.

use std::collections::{HashMap, HashSet};
use std::mem::size_of;

use super::Rib;
use super::table::Dest;

/// Bytes and counts of one kind of structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Entries (destinations, attribute sets, …).
    pub count: usize,
    /// Hash table slots allocated (0 for non-tables).
    pub slots: usize,
    /// Bytes allocated, allocator overhead included (estimated).
    pub bytes: usize,
}

/// The RIB's memory by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RibMemory {
    /// IPv4 destination table (keys and inline paths).
    pub v4: Usage,
    /// IPv6 destination table.
    pub v6: Usage,
    /// Path lists of destinations with more than one path.
    pub multi: Usage,
    /// The interning table of attribute sets (its slots only).
    pub intern_table: Usage,
    /// The attribute sets themselves, with what they own on the heap.
    pub attrs: Usage,
    /// Adj-RIB-Out and pending exports of every update group.
    pub adj_out: Usage,
}

impl RibMemory {
    /// Everything.
    pub fn total(&self) -> usize {
        self.v4.bytes
            + self.v6.bytes
            + self.multi.bytes
            + self.intern_table.bytes
            + self.attrs.bytes
            + self.adj_out.bytes
    }
}

/// What glibc's malloc takes for a request of `n` bytes (8 bytes of
/// header, 16-byte granules, 32 at least).
pub fn heap(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// Slots of a hashbrown table with room for `capacity` entries.
fn slots(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c if c < 8 => (c + 1).next_power_of_two(),
        c => (c * 8 / 7).next_power_of_two(),
    }
}

/// A hash table's allocation: its slots plus one control byte each (and a
/// group's worth more).
pub fn table<T>(len: usize, capacity: usize) -> Usage {
    let s = slots(capacity);
    Usage {
        count: len,
        slots: s,
        bytes: if s == 0 {
            0
        } else {
            heap(s * size_of::<T>() + s + 16)
        },
    }
}

/// A `HashMap`'s allocation.
pub fn map<K, V, S>(m: &HashMap<K, V, S>) -> Usage {
    table::<(K, V)>(m.len(), m.capacity())
}

/// A `HashSet`'s allocation.
pub fn set<K, S>(m: &HashSet<K, S>) -> Usage {
    table::<K>(m.len(), m.capacity())
}

fn add(a: &mut Usage, b: Usage) {
    a.count += b.count;
    a.slots += b.slots;
    a.bytes += b.bytes;
}

impl Rib {
    /// Memory by kind (walks the attribute sets and the destinations with
    /// several paths).
    pub fn memory(&self) -> RibMemory {
        let mut m = RibMemory {
            v4: self.v4.map.memory(),
            v6: self.v6.map.memory(),
            ..RibMemory::default()
        };
        let multi = |d: &Dest| match d {
            Dest::Many(x) => {
                heap(size_of::<super::table::Multi>())
                    + heap(x.paths.capacity() * size_of::<super::decision::Path>())
            }
            Dest::One(_) => 0,
        };
        for d in self.v4.map.values().chain(self.v6.map.values()) {
            let b = multi(d);
            if b > 0 {
                m.multi.count += 1;
                m.multi.bytes += b;
            }
        }
        let (table, attrs) = self.interner.memory();
        m.intern_table = table;
        m.attrs = attrs;
        for g in self.groups.values() {
            add(&mut m.adj_out, g.memory());
        }
        m
    }
}
