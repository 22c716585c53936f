//! Path attributes (RFC 4271 §5, RFC 1997, RFC 4360, RFC 4456, RFC 6793,
//! RFC 8092):
//! types and their value encodings. The attribute-list walk and the RFC 7606
//! decisions live in `update.rs`.

use std::net::Ipv4Addr;

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::Reader;
use super::{AS_TRANS, EncodeCx};

/// Attribute type codes.
pub mod attr_code {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MED: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES.
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID.
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST.
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI.
    pub const MP_REACH: u8 = 14;
    /// MP_UNREACH_NLRI.
    pub const MP_UNREACH: u8 = 15;
    /// EXTENDED COMMUNITIES (RFC 4360).
    pub const EXT_COMMUNITIES: u8 = 16;
    /// AS4_PATH.
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR.
    pub const AS4_AGGREGATOR: u8 = 18;
    /// LARGE_COMMUNITY.
    pub const LARGE_COMMUNITY: u8 = 32;
}

/// Attribute flag bits.
pub mod flag {
    /// Optional.
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial.
    pub const PARTIAL: u8 = 0x20;
    /// Extended length.
    pub const EXTENDED: u8 = 0x10;
    /// Well-known (transitive, not optional).
    pub const WELL_KNOWN: u8 = TRANSITIVE;
    /// Optional transitive.
    pub const OPT_TRANS: u8 = OPTIONAL | TRANSITIVE;
}

/// The (optional, transitive) bits each known attribute must carry.
pub(crate) fn expected_flags(code: u8) -> Option<u8> {
    use attr_code::*;
    Some(match code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => flag::WELL_KNOWN,
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH | MP_UNREACH => flag::OPTIONAL,
        AGGREGATOR | COMMUNITIES | EXT_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR
        | LARGE_COMMUNITY => flag::OPT_TRANS,
        _ => return None,
    })
}

/// ORIGIN values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// 0.
    Igp,
    /// 1.
    Egp,
    /// 2.
    Incomplete,
}

impl Origin {
    pub(crate) fn from_u8(v: u8) -> Option<Origin> {
        match v {
            0 => Some(Origin::Igp),
            1 => Some(Origin::Egp),
            2 => Some(Origin::Incomplete),
            _ => None,
        }
    }
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Origin::Igp => 0,
            Origin::Egp => 1,
            Origin::Incomplete => 2,
        }
    }
}

/// AS_PATH segment types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SegmentKind {
    /// AS_SET (1).
    Set,
    /// AS_SEQUENCE (2).
    Sequence,
    /// AS_CONFED_SEQUENCE (3, RFC 5065).
    ConfedSequence,
    /// AS_CONFED_SET (4, RFC 5065).
    ConfedSet,
}

impl SegmentKind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => SegmentKind::Set,
            2 => SegmentKind::Sequence,
            3 => SegmentKind::ConfedSequence,
            4 => SegmentKind::ConfedSet,
            _ => return None,
        })
    }
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            SegmentKind::Set => 1,
            SegmentKind::Sequence => 2,
            SegmentKind::ConfedSequence => 3,
            SegmentKind::ConfedSet => 4,
        }
    }
    /// A confederation segment?
    pub fn is_confed(self) -> bool {
        matches!(self, SegmentKind::ConfedSequence | SegmentKind::ConfedSet)
    }
}

/// One AS_PATH segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AsSegment {
    /// Segment type.
    pub kind: SegmentKind,
    /// AS numbers (4-octet form).
    pub asns: Vec<u32>,
}

/// An AS path in 4-octet form (AS4_PATH already merged for 2-octet peers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    /// The segments in order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path of one sequence.
    pub fn sequence(asns: impl Into<Vec<u32>>) -> Self {
        let asns = asns.into();
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: SegmentKind::Sequence,
                asns,
            }],
        }
    }

    /// Path length for the decision process (RFC 4271 §9.1.2.2 a): each AS in
    /// a sequence counts one, a set counts one, confederation segments zero.
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                _ => 0,
            })
            .sum()
    }

    /// The first AS of the path when it starts with a sequence (the
    /// neighbour AS for MED comparison and the eBGP first-AS check).
    pub fn first_as(&self) -> Option<u32> {
        let s = self.segments.first()?;
        if s.kind == SegmentKind::Sequence {
            s.asns.first().copied()
        } else {
            None
        }
    }

    /// Does any segment hold `asn`?
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// Is the path empty?
    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.asns.is_empty())
    }

    /// Prepend `asn` (RFC 4271 §5.1.2 b).
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(s) if s.kind == SegmentKind::Sequence && s.asns.len() < 255 => {
                s.asns.insert(0, asn)
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }

    /// Decode an AS_PATH / AS4_PATH value; `None` if malformed (RFC 7606 §7.2:
    /// unknown segment type, zero-length segment, overrun or underrun).
    pub(crate) fn decode(v: &[u8], four: bool) -> Option<AsPath> {
        let width = if four { 4 } else { 2 };
        let mut r = Reader::new(v);
        let mut segments = Vec::new();
        while !r.is_empty() {
            let kind = SegmentKind::from_u8(r.u8()?)?;
            let n = usize::from(r.u8()?);
            if n == 0 {
                return None;
            }
            let raw = r.take(n * width)?;
            let asns = if four {
                raw.chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                raw.chunks_exact(2)
                    .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                    .collect()
            };
            segments.push(AsSegment { kind, asns });
        }
        Some(AsPath { segments })
    }

    /// Does the path need AS4_PATH when sent to a 2-octet speaker?
    fn needs_as4(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.asns.iter().any(|&a| a > 0xffff))
    }

    fn value_len(&self, four: bool, skip_confed: bool) -> usize {
        let width = if four { 4 } else { 2 };
        self.segments
            .iter()
            .filter(|s| !(skip_confed && s.kind.is_confed()))
            .map(|s| s.asns.len().div_ceil(255) * 2 + s.asns.len() * width)
            .sum()
    }

    fn encode_value(&self, four: bool, skip_confed: bool, out: &mut BytesMut) {
        for s in &self.segments {
            if skip_confed && s.kind.is_confed() {
                continue;
            }
            // Segments longer than 255 ASes are split into several.
            for chunk in s.asns.chunks(255) {
                out.put_u8(s.kind.to_u8());
                out.put_u8(chunk.len() as u8);
                for &a in chunk {
                    if four {
                        out.put_u32(a);
                    } else {
                        out.put_u16(u16::try_from(a).unwrap_or(AS_TRANS as u16));
                    }
                }
            }
        }
    }

    /// RFC 6793 §4.2.3: rebuild the 4-octet path from AS_PATH (2-octet, with
    /// AS_TRANS) and AS4_PATH.
    pub(crate) fn merge_as4(self, as4: AsPath) -> AsPath {
        let n2 = self.path_len();
        let n4 = as4.path_len();
        if n2 < n4 {
            return self;
        }
        let mut need = n2 - n4;
        let mut out: Vec<AsSegment> = Vec::new();
        for s in self.segments {
            if need == 0 && !(s.kind.is_confed() && out.is_empty()) {
                break;
            }
            match s.kind {
                SegmentKind::Sequence => {
                    let k = need.min(s.asns.len());
                    need -= k;
                    out.push(AsSegment {
                        kind: s.kind,
                        asns: s.asns[..k].to_vec(),
                    });
                }
                SegmentKind::Set => {
                    need -= 1;
                    out.push(s);
                }
                _ => out.push(s),
            }
        }
        for s in as4.segments {
            match (out.last_mut(), s.kind) {
                (Some(last), SegmentKind::Sequence)
                    if last.kind == SegmentKind::Sequence
                        && last.asns.len() + s.asns.len() <= 255 =>
                {
                    last.asns.extend_from_slice(&s.asns)
                }
                _ => out.push(s),
            }
        }
        out.retain(|s| !s.asns.is_empty());
        AsPath { segments: out }
    }
}

/// AGGREGATOR (4-octet AS form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aggregator {
    /// Aggregating AS.
    pub asn: u32,
    /// Aggregating speaker.
    pub addr: Ipv4Addr,
}

/// One RFC 8092 large community.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    /// Global administrator.
    pub global: u32,
    /// Local data part 1.
    pub local1: u32,
    /// Local data part 2.
    pub local2: u32,
}

/// An attribute carried unparsed (unknown optional transitive).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawAttr {
    /// Flags as received (without the extended-length bit).
    pub flags: u8,
    /// Type code.
    pub code: u8,
    /// Value.
    pub value: Bytes,
}

/// The path attributes of an UPDATE, except MP_REACH/MP_UNREACH.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH (merged with AS4_PATH).
    pub as_path: Option<AsPath>,
    /// NEXT_HOP (IPv4 NLRI only).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE.
    pub atomic_aggregate: bool,
    /// AGGREGATOR (merged with AS4_AGGREGATOR).
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES (RFC 1997).
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY (RFC 8092).
    pub large_communities: Vec<LargeCommunity>,
    /// EXTENDED COMMUNITIES (RFC 4360).
    pub ext_communities: Vec<super::community::ExtCommunity>,
    /// ORIGINATOR_ID (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456).
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unknown optional transitive attributes, passed through.
    pub unknown: Vec<RawAttr>,
    /// Recognised optional transitive attributes that arrived with the
    /// Partial bit set; they keep it when passed on (RFC 4271 §4.3: once
    /// set, no later speaker clears it).
    pub partial: Partial,
}

/// A set of recognised optional transitive attribute codes (AGGREGATOR,
/// COMMUNITIES, EXTENDED COMMUNITIES, LARGE_COMMUNITY, AS4_PATH,
/// AS4_AGGREGATOR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Partial(u8);

impl Partial {
    fn bit(code: u8) -> u8 {
        use attr_code::*;
        match code {
            AGGREGATOR => 1,
            COMMUNITIES => 2,
            LARGE_COMMUNITY => 4,
            AS4_PATH => 8,
            AS4_AGGREGATOR => 16,
            EXT_COMMUNITIES => 32,
            _ => 0,
        }
    }

    /// Mark `code` as partial (other codes are ignored).
    pub fn insert(&mut self, code: u8) {
        self.0 |= Self::bit(code);
    }

    /// Was `code` received partial?
    pub fn contains(self, code: u8) -> bool {
        Self::bit(code) != 0 && self.0 & Self::bit(code) != 0
    }

    /// The Partial flag to send with `code`.
    pub fn flag(self, code: u8) -> u8 {
        if self.contains(code) {
            flag::PARTIAL
        } else {
            0
        }
    }
}

pub(crate) fn put_attr_header(out: &mut BytesMut, flags: u8, code: u8, len: usize) {
    let flags = flags & !flag::EXTENDED;
    if len > 255 {
        out.put_u8(flags | flag::EXTENDED);
        out.put_u8(code);
        out.put_u16(len as u16);
    } else {
        out.put_u8(flags);
        out.put_u8(code);
        out.put_u8(len as u8);
    }
}

impl PathAttrs {
    /// Append the attributes, in type-code order, to `out`.
    pub(crate) fn encode(&self, cx: &EncodeCx, out: &mut BytesMut) {
        use attr_code::*;
        let p = self.partial;
        if let Some(o) = self.origin {
            put_attr_header(out, flag::WELL_KNOWN, ORIGIN, 1);
            out.put_u8(o.to_u8());
        }
        let empty = AsPath::default();
        let path = self.as_path.as_ref().unwrap_or(&empty);
        if self.as_path.is_some() {
            put_attr_header(
                out,
                flag::WELL_KNOWN,
                AS_PATH,
                path.value_len(cx.four_byte_as, false),
            );
            path.encode_value(cx.four_byte_as, false, out);
        }
        if let Some(nh) = self.next_hop {
            put_attr_header(out, flag::WELL_KNOWN, NEXT_HOP, 4);
            out.put_slice(&nh.octets());
        }
        if let Some(m) = self.med {
            put_attr_header(out, flag::OPTIONAL, MED, 4);
            out.put_u32(m);
        }
        if let Some(lp) = self.local_pref {
            put_attr_header(out, flag::WELL_KNOWN, LOCAL_PREF, 4);
            out.put_u32(lp);
        }
        if self.atomic_aggregate {
            put_attr_header(out, flag::WELL_KNOWN, ATOMIC_AGGREGATE, 0);
        }
        if let Some(a) = self.aggregator {
            if cx.four_byte_as {
                put_attr_header(out, flag::OPT_TRANS | p.flag(AGGREGATOR), AGGREGATOR, 8);
                out.put_u32(a.asn);
            } else {
                put_attr_header(out, flag::OPT_TRANS | p.flag(AGGREGATOR), AGGREGATOR, 6);
                out.put_u16(u16::try_from(a.asn).unwrap_or(AS_TRANS as u16));
            }
            out.put_slice(&a.addr.octets());
        }
        if !self.communities.is_empty() {
            put_attr_header(
                out,
                flag::OPT_TRANS | p.flag(COMMUNITIES),
                COMMUNITIES,
                self.communities.len() * 4,
            );
            for c in &self.communities {
                out.put_u32(*c);
            }
        }
        if let Some(id) = self.originator_id {
            put_attr_header(out, flag::OPTIONAL, ORIGINATOR_ID, 4);
            out.put_slice(&id.octets());
        }
        if !self.cluster_list.is_empty() {
            put_attr_header(
                out,
                flag::OPTIONAL,
                CLUSTER_LIST,
                self.cluster_list.len() * 4,
            );
            for c in &self.cluster_list {
                out.put_slice(&c.octets());
            }
        }
        if !self.ext_communities.is_empty() {
            put_attr_header(
                out,
                flag::OPT_TRANS | p.flag(EXT_COMMUNITIES),
                EXT_COMMUNITIES,
                self.ext_communities.len() * 8,
            );
            for c in &self.ext_communities {
                out.put_slice(&c.0);
            }
        }
        if !cx.four_byte_as {
            if self.as_path.is_some() && path.needs_as4() {
                put_attr_header(
                    out,
                    flag::OPT_TRANS | p.flag(AS4_PATH),
                    AS4_PATH,
                    path.value_len(true, true),
                );
                path.encode_value(true, true, out);
            }
            if let Some(a) = self.aggregator.filter(|a| a.asn > 0xffff) {
                let pf = p.flag(AS4_AGGREGATOR) | p.flag(AGGREGATOR);
                put_attr_header(out, flag::OPT_TRANS | pf, AS4_AGGREGATOR, 8);
                out.put_u32(a.asn);
                out.put_slice(&a.addr.octets());
            }
        }
        if !self.large_communities.is_empty() {
            put_attr_header(
                out,
                flag::OPT_TRANS | p.flag(LARGE_COMMUNITY),
                LARGE_COMMUNITY,
                self.large_communities.len() * 12,
            );
            for c in &self.large_communities {
                out.put_u32(c.global);
                out.put_u32(c.local1);
                out.put_u32(c.local2);
            }
        }
        for u in &self.unknown {
            put_attr_header(out, u.flags, u.code, u.value.len());
            out.put_slice(&u.value);
        }
    }
}
