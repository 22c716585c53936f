//! UPDATE (RFC 4271 §4.3, RFC 4760) with the revised error handling of
//! RFC 7606. Outcomes short of a session reset are recorded in
//! [`Update::issues`]: `TreatAsWithdraw` turns every announcement of the
//! message into a withdrawal, `AttributeDiscard` drops one attribute.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

use super::attrs::{Aggregator, AsPath, LargeCommunity, Origin, PathAttrs, RawAttr};
use super::attrs::{attr_code as ac, expected_flags, flag, put_attr_header};
use super::community::ExtCommunity;
use super::notification::update_sub as sub;
use super::prefix::{Family, Nlri, decode_nlri, encode_nlri, nlri_len};
use super::reader::Reader;
use super::{AS_TRANS, DecodeCx, DecodeError, EncodeCx, HEADER_LEN, MAX_MESSAGE_LEN};
use super::{begin_message, finish_message, msg_type};

/// A next hop from NEXT_HOP or MP_REACH_NLRI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    /// An IPv4 next hop.
    V4(Ipv4Addr),
    /// An IPv6 global next hop, optionally with a link-local one.
    V6 {
        /// Global address.
        global: Ipv6Addr,
        /// Link-local address (32-octet next hop).
        link_local: Option<Ipv6Addr>,
    },
}

impl NextHop {
    /// The address to forward to (the global one for IPv6).
    pub fn addr(&self) -> IpAddr {
        match self {
            NextHop::V4(a) => IpAddr::V4(*a),
            NextHop::V6 { global, .. } => IpAddr::V6(*global),
        }
    }

    fn wire_len(&self) -> usize {
        match self {
            NextHop::V4(_) => 4,
            NextHop::V6 {
                link_local: None, ..
            } => 16,
            NextHop::V6 {
                link_local: Some(_),
                ..
            } => 32,
        }
    }

    fn put(&self, out: &mut BytesMut) {
        match self {
            NextHop::V4(a) => out.put_slice(&a.octets()),
            NextHop::V6 { global, link_local } => {
                out.put_slice(&global.octets());
                if let Some(ll) = link_local {
                    out.put_slice(&ll.octets());
                }
            }
        }
    }
}

impl From<IpAddr> for NextHop {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => NextHop::V4(a),
            IpAddr::V6(global) => NextHop::V6 {
                global,
                link_local: None,
            },
        }
    }
}

/// MP_REACH_NLRI for a family we carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    /// AFI/SAFI.
    pub family: Family,
    /// Next hop.
    pub next_hop: NextHop,
    /// Announced prefixes.
    pub nlri: Vec<Nlri>,
}

/// MP_UNREACH_NLRI for a family we carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpUnreach {
    /// AFI/SAFI.
    pub family: Family,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<Nlri>,
}

/// An RFC 7606 approach short of a session reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// The attribute was dropped; the routes stand.
    AttributeDiscard,
    /// Every route announced by the message is to be withdrawn.
    TreatAsWithdraw,
}

/// One malformation resolved without a session reset.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttrIssue {
    /// Attribute type code (0 when the attribute list itself is broken).
    pub code: u8,
    /// The approach applied.
    pub action: Action,
    /// What is wrong.
    pub reason: &'static str,
}

/// An UPDATE message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 Withdrawn Routes field.
    pub withdrawn: Vec<Nlri>,
    /// Path attributes other than MP_REACH/MP_UNREACH.
    pub attrs: PathAttrs,
    /// MP_REACH_NLRI, if present and for a family we carry.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI, if present and for a family we carry.
    pub mp_unreach: Option<MpUnreach>,
    /// IPv4 NLRI field.
    pub nlri: Vec<Nlri>,
    /// RFC 7606 outcomes (empty for a clean message).
    pub issues: Vec<AttrIssue>,
}

impl Update {
    /// Prefixes announced and withdrawn, all families.
    pub fn route_count(&self) -> usize {
        self.nlri.len()
            + self.withdrawn.len()
            + self.mp_reach.as_ref().map_or(0, |m| m.nlri.len())
            + self.mp_unreach.as_ref().map_or(0, |m| m.withdrawn.len())
    }

    /// Must the announcements of this message be treated as withdrawals?
    pub fn treat_as_withdraw(&self) -> bool {
        self.issues
            .iter()
            .any(|i| i.action == Action::TreatAsWithdraw)
    }

    /// Is this an End-of-RIB marker (RFC 4724 §2), and for which family?
    pub fn end_of_rib(&self) -> Option<Family> {
        let no_attrs = self.attrs == PathAttrs::default() && self.issues.is_empty();
        if !no_attrs
            || self.mp_reach.is_some()
            || !self.withdrawn.is_empty()
            || !self.nlri.is_empty()
        {
            return None;
        }
        match &self.mp_unreach {
            None => Some(Family::Ipv4Unicast),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            Some(_) => None,
        }
    }

    /// The End-of-RIB marker for a family.
    pub fn eor(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            f => Update {
                mp_unreach: Some(MpUnreach {
                    family: f,
                    withdrawn: Vec::new(),
                }),
                ..Update::default()
            },
        }
    }

    pub(crate) fn decode_body(body: &[u8], cx: &DecodeCx) -> Result<Update, DecodeError> {
        let list = |reason| DecodeError::update(sub::MALFORMED_ATTR_LIST, &[], reason);
        let mut r = Reader::new(body);
        let wlen = r.u16().ok_or(list("withdrawn routes length missing"))?;
        let wbuf = r
            .take(usize::from(wlen))
            .ok_or(list("withdrawn routes length too large"))?;
        let alen = r.u16().ok_or(list("total attribute length missing"))?;
        let abuf = r
            .take(usize::from(alen))
            .ok_or(list("total attribute length too large"))?;
        let nbuf = r.rest();

        let mut u = Update::default();
        let v4_add_path = cx.add_path_rx.contains(Family::Ipv4Unicast);
        decode_nlri(wbuf, Family::Ipv4Unicast, v4_add_path, &mut u.withdrawn).map_err(|_| {
            DecodeError::update(sub::INVALID_NETWORK_FIELD, &[], "withdrawn routes field")
        })?;
        decode_nlri(nbuf, Family::Ipv4Unicast, v4_add_path, &mut u.nlri)
            .map_err(|_| DecodeError::update(sub::INVALID_NETWORK_FIELD, &[], "NLRI field"))?;

        let mut w = AttrWalk {
            cx,
            u,
            seen: [0u64; 4],
            as4_path: None,
            as4_aggregator: None,
        };
        let broken_list = w.walk(abuf)?;
        let mut u = w.finish();

        if broken_list {
            // RFC 7606 §4: treat-as-withdraw, but only if we still know what
            // to withdraw (§3 h); otherwise the session must be reset.
            if u.nlri.is_empty()
                && u.mp_reach.is_none()
                && u.mp_unreach.is_none()
                && u.withdrawn.is_empty()
            {
                return Err(list("attribute list cannot be parsed and no NLRI located"));
            }
        }

        // RFC 7606 §3 d: missing well-known mandatory attributes.
        let reach = !u.nlri.is_empty() || u.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
        if reach {
            if u.attrs.origin.is_none() {
                u.missing(ac::ORIGIN, "ORIGIN missing");
            }
            if u.attrs.as_path.is_none() {
                u.missing(ac::AS_PATH, "AS_PATH missing");
            }
            if !u.nlri.is_empty() && u.attrs.next_hop.is_none() {
                u.missing(ac::NEXT_HOP, "NEXT_HOP missing");
            }
        }
        // RFC 4271 §6.3 with RFC 7606 §7.2: on an external session the path
        // must start with the neighbour's AS and hold no confederation segment.
        if let (Some(peer_as), Some(path)) = (cx.ebgp_peer_as, u.attrs.as_path.as_ref()) {
            if reach && path.first_as() != Some(peer_as) {
                u.issue(
                    ac::AS_PATH,
                    Action::TreatAsWithdraw,
                    "first AS is not the peer's",
                );
            } else if path.segments.iter().any(|s| s.kind.is_confed()) {
                u.issue(
                    ac::AS_PATH,
                    Action::TreatAsWithdraw,
                    "confederation segment from eBGP peer",
                );
            }
        }
        Ok(u)
    }

    fn missing(&mut self, code: u8, reason: &'static str) {
        // A present-but-malformed attribute has its own issue already.
        if !self.issues.iter().any(|i| i.code == code) {
            self.issue(code, Action::TreatAsWithdraw, reason);
        }
    }

    fn issue(&mut self, code: u8, action: Action, reason: &'static str) {
        self.issues.push(AttrIssue {
            code,
            action,
            reason,
        });
    }

    pub(crate) fn encode_body(&self, cx: &EncodeCx, out: &mut BytesMut) {
        let v4_ap = cx.add_path_tx.contains(Family::Ipv4Unicast);
        let wpos = out.len();
        out.put_u16(0);
        for n in &self.withdrawn {
            encode_nlri(n, v4_ap, out);
        }
        patch_u16(out, wpos);
        let apos = out.len();
        out.put_u16(0);
        if let Some(m) = &self.mp_reach {
            encode_mp_reach(m.family, &m.next_hop, &m.nlri, cx, out);
        }
        if let Some(m) = &self.mp_unreach {
            encode_mp_unreach(m.family, &m.withdrawn, cx, out);
        }
        self.attrs.encode(cx, out);
        patch_u16(out, apos);
        for n in &self.nlri {
            encode_nlri(n, v4_ap, out);
        }
    }
}

fn patch_u16(out: &mut BytesMut, pos: usize) {
    let len = (out.len() - pos - 2) as u16;
    out[pos..pos + 2].copy_from_slice(&len.to_be_bytes());
}

fn encode_mp_reach(f: Family, nh: &NextHop, nlri: &[Nlri], cx: &EncodeCx, out: &mut BytesMut) {
    let ap = cx.add_path_tx.contains(f);
    let len = 5 + nh.wire_len() + nlri.iter().map(|n| nlri_len(n, ap)).sum::<usize>();
    put_attr_header(out, flag::OPTIONAL, ac::MP_REACH, len);
    out.put_u16(f.afi());
    out.put_u8(f.safi());
    out.put_u8(nh.wire_len() as u8);
    nh.put(out);
    out.put_u8(0);
    for n in nlri {
        encode_nlri(n, ap, out);
    }
}

fn encode_mp_unreach(f: Family, nlri: &[Nlri], cx: &EncodeCx, out: &mut BytesMut) {
    let ap = cx.add_path_tx.contains(f);
    let len = 3 + nlri.iter().map(|n| nlri_len(n, ap)).sum::<usize>();
    put_attr_header(out, flag::OPTIONAL, ac::MP_UNREACH, len);
    out.put_u16(f.afi());
    out.put_u8(f.safi());
    for n in nlri {
        encode_nlri(n, ap, out);
    }
}

/// State of one walk over the path attributes.
struct AttrWalk<'c> {
    cx: &'c DecodeCx,
    u: Update,
    seen: [u64; 4],
    as4_path: Option<AsPath>,
    as4_aggregator: Option<Aggregator>,
}

impl AttrWalk<'_> {
    /// Walk the attribute list. `Ok(true)` when the list broke off (RFC 7606
    /// §4 overrun/underrun: treat-as-withdraw recorded); `Err` on a session
    /// reset.
    fn walk(&mut self, abuf: &[u8]) -> Result<bool, DecodeError> {
        let mut r = Reader::new(abuf);
        while !r.is_empty() {
            let start = r.rest();
            let header = (r.u8(), r.u8());
            let (Some(flags), Some(code)) = header else {
                self.u
                    .issue(0, Action::TreatAsWithdraw, "attribute header underrun");
                return Ok(true);
            };
            let len = if flags & flag::EXTENDED != 0 {
                r.u16()
            } else {
                r.u8().map(u16::from)
            };
            let Some(len) = len else {
                self.u
                    .issue(code, Action::TreatAsWithdraw, "attribute header underrun");
                return Ok(true);
            };
            let Some(value) = r.take(usize::from(len)) else {
                self.u.issue(
                    code,
                    Action::TreatAsWithdraw,
                    "attribute length overruns the list",
                );
                return Ok(true);
            };
            let whole = &start[..start.len() - r.remaining()];
            let (word, bit) = (usize::from(code / 64), code % 64);
            if self.seen[word] & (1 << bit) != 0 {
                // RFC 7606 §3 g: duplicates are discarded, except MP_(UN)REACH.
                if code == ac::MP_REACH || code == ac::MP_UNREACH {
                    return Err(DecodeError::update(
                        sub::MALFORMED_ATTR_LIST,
                        &[],
                        "MP attribute repeated",
                    ));
                }
                continue;
            }
            self.seen[word] |= 1 << bit;
            self.attribute(flags, code, value, whole)?;
        }
        Ok(false)
    }

    fn attribute(
        &mut self,
        flags: u8,
        code: u8,
        v: &[u8],
        whole: &[u8],
    ) -> Result<(), DecodeError> {
        let cx = self.cx;
        let Some(expected) = expected_flags(code) else {
            return self.unknown(flags, code, v, whole);
        };
        let flags_ok = flags & (flag::OPTIONAL | flag::TRANSITIVE) == expected;
        // Attributes whose malformation RFC 7606 (§7.6, §7.7) and RFC 6793 §6
        // handle by discarding them, whatever the fault.
        let discard_kind = matches!(
            code,
            ac::ATOMIC_AGGREGATE | ac::AGGREGATOR | ac::AS4_PATH | ac::AS4_AGGREGATOR
        );
        if !flags_ok && code != ac::MP_REACH && code != ac::MP_UNREACH {
            let action = if discard_kind {
                Action::AttributeDiscard
            } else {
                Action::TreatAsWithdraw
            };
            self.u.issue(
                code,
                action,
                "attribute flags conflict with the attribute type",
            );
            return Ok(());
        }
        if flags & flag::PARTIAL != 0 && expected == flag::OPT_TRANS {
            self.u.attrs.partial.insert(code);
        }
        let taw = |u: &mut Update, reason| u.issue(code, Action::TreatAsWithdraw, reason);
        let a = &mut self.u.attrs;
        match code {
            ac::ORIGIN => match v {
                [o] => match Origin::from_u8(*o) {
                    Some(o) => a.origin = Some(o),
                    None => taw(&mut self.u, "undefined ORIGIN value"),
                },
                _ => taw(&mut self.u, "ORIGIN length is not 1"),
            },
            ac::AS_PATH => match AsPath::decode(v, cx.four_byte_as) {
                Some(p) => a.as_path = Some(p),
                None => taw(&mut self.u, "malformed AS_PATH"),
            },
            ac::NEXT_HOP => match <[u8; 4]>::try_from(v) {
                Ok(b) => a.next_hop = Some(Ipv4Addr::from(b)),
                Err(_) => taw(&mut self.u, "NEXT_HOP length is not 4"),
            },
            ac::MED => match <[u8; 4]>::try_from(v) {
                Ok(b) => a.med = Some(u32::from_be_bytes(b)),
                Err(_) => taw(&mut self.u, "MULTI_EXIT_DISC length is not 4"),
            },
            ac::LOCAL_PREF => {
                if cx.ebgp_peer_as.is_some() {
                    // RFC 7606 §7.5: LOCAL_PREF from an external peer is discarded.
                    self.u.issue(
                        code,
                        Action::AttributeDiscard,
                        "LOCAL_PREF from an external peer",
                    );
                } else {
                    match <[u8; 4]>::try_from(v) {
                        Ok(b) => a.local_pref = Some(u32::from_be_bytes(b)),
                        Err(_) => taw(&mut self.u, "LOCAL_PREF length is not 4"),
                    }
                }
            }
            ac::ATOMIC_AGGREGATE => {
                if v.is_empty() {
                    a.atomic_aggregate = true;
                } else {
                    self.u.issue(
                        code,
                        Action::AttributeDiscard,
                        "ATOMIC_AGGREGATE length is not 0",
                    );
                }
            }
            ac::AGGREGATOR => {
                let want = if cx.four_byte_as { 8 } else { 6 };
                if v.len() != want {
                    self.u
                        .issue(code, Action::AttributeDiscard, "AGGREGATOR length");
                } else {
                    let (asn, addr) = v.split_at(want - 4);
                    let asn = asn.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b));
                    let addr = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
                    a.aggregator = Some(Aggregator { asn, addr });
                }
            }
            ac::COMMUNITIES => {
                if v.is_empty() || !v.len().is_multiple_of(4) {
                    taw(
                        &mut self.u,
                        "COMMUNITIES length is zero or not a multiple of 4",
                    );
                } else {
                    a.communities = v
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
            }
            ac::ORIGINATOR_ID | ac::CLUSTER_LIST if cx.ebgp_peer_as.is_some() => {
                // Route-reflection attributes have no meaning across an AS
                // boundary; drop them rather than let them steer loop detection.
                self.u.issue(
                    code,
                    Action::AttributeDiscard,
                    "route reflection attribute from an external peer",
                );
            }
            ac::ORIGINATOR_ID => match <[u8; 4]>::try_from(v) {
                Ok(b) => a.originator_id = Some(Ipv4Addr::from(b)),
                Err(_) => taw(&mut self.u, "ORIGINATOR_ID length is not 4"),
            },
            ac::CLUSTER_LIST => {
                if v.is_empty() || !v.len().is_multiple_of(4) {
                    taw(
                        &mut self.u,
                        "CLUSTER_LIST length is zero or not a multiple of 4",
                    );
                } else {
                    a.cluster_list = v
                        .chunks_exact(4)
                        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                        .collect();
                }
            }
            ac::EXT_COMMUNITIES => {
                // RFC 7606 §7.14.
                if v.is_empty() || !v.len().is_multiple_of(8) {
                    taw(
                        &mut self.u,
                        "EXTENDED COMMUNITIES length is zero or not a multiple of 8",
                    );
                } else {
                    a.ext_communities = v
                        .chunks_exact(8)
                        .map(|c| {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(c);
                            ExtCommunity(b)
                        })
                        .collect();
                }
            }
            ac::LARGE_COMMUNITY => {
                if v.is_empty() || !v.len().is_multiple_of(12) {
                    taw(
                        &mut self.u,
                        "LARGE_COMMUNITY length is zero or not a multiple of 12",
                    );
                } else {
                    a.large_communities = v
                        .chunks_exact(12)
                        .map(|c| LargeCommunity {
                            global: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                            local1: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                            local2: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                        })
                        .collect();
                }
            }
            ac::AS4_PATH => {
                // RFC 6793 §6: ignored from a 4-octet speaker; discarded if malformed.
                if !cx.four_byte_as {
                    match AsPath::decode(v, true) {
                        Some(mut p) => {
                            p.segments.retain(|s| !s.kind.is_confed());
                            self.as4_path = Some(p);
                        }
                        None => self
                            .u
                            .issue(code, Action::AttributeDiscard, "malformed AS4_PATH"),
                    }
                }
            }
            ac::AS4_AGGREGATOR => {
                if !cx.four_byte_as {
                    match v {
                        [a0, a1, a2, a3, b0, b1, b2, b3] => {
                            self.as4_aggregator = Some(Aggregator {
                                asn: u32::from_be_bytes([*a0, *a1, *a2, *a3]),
                                addr: Ipv4Addr::new(*b0, *b1, *b2, *b3),
                            })
                        }
                        _ => self
                            .u
                            .issue(code, Action::AttributeDiscard, "AS4_AGGREGATOR length"),
                    }
                }
            }
            ac::MP_REACH => {
                if !flags_ok {
                    self.u
                        .issue(code, Action::TreatAsWithdraw, "MP_REACH_NLRI flags");
                }
                self.mp_reach(v, whole)?;
            }
            ac::MP_UNREACH => {
                if !flags_ok {
                    self.u
                        .issue(code, Action::TreatAsWithdraw, "MP_UNREACH_NLRI flags");
                }
                self.mp_unreach(v, whole)?;
            }
            _ => return self.unknown(flags, code, v, whole),
        }
        Ok(())
    }

    fn unknown(&mut self, flags: u8, code: u8, v: &[u8], whole: &[u8]) -> Result<(), DecodeError> {
        if flags & flag::OPTIONAL == 0 {
            return Err(DecodeError::update(
                sub::UNRECOGNIZED_WELL_KNOWN,
                whole,
                "unrecognized well-known attribute",
            ));
        }
        if flags & flag::TRANSITIVE != 0 {
            self.u.attrs.unknown.push(RawAttr {
                flags: flags & !flag::EXTENDED,
                code,
                value: bytes::Bytes::copy_from_slice(v),
            });
        }
        Ok(())
    }

    fn mp_reach(&mut self, v: &[u8], whole: &[u8]) -> Result<(), DecodeError> {
        let err = |reason| DecodeError::update(sub::OPTIONAL_ATTR, whole, reason);
        let mut r = Reader::new(v);
        let (Some(afi), Some(safi), Some(nhlen)) = (r.u16(), r.u8(), r.u8()) else {
            return Err(err("MP_REACH_NLRI too short"));
        };
        let nh = r
            .take(usize::from(nhlen))
            .ok_or(err("MP_REACH_NLRI next hop overruns"))?;
        r.u8().ok_or(err("MP_REACH_NLRI reserved octet missing"))?;
        let Some(family) = Family::from_afi_safi(afi, safi) else {
            return Ok(()); // a family we did not negotiate: ignored
        };
        let v6 = |b: &[u8]| -> Ipv6Addr {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Ipv6Addr::from(a)
        };
        let next_hop = match (family, nh.len()) {
            (Family::Ipv4Unicast, 4) => NextHop::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3])),
            (Family::Ipv4Unicast, 16 | 32) if !self.cx.ext_next_hop_v4 => {
                return Err(err("IPv6 next hop for IPv4 NLRI without extended next hop"));
            }
            (_, 16) => NextHop::V6 {
                global: v6(nh),
                link_local: None,
            },
            (_, 32) => NextHop::V6 {
                global: v6(&nh[..16]),
                link_local: Some(v6(&nh[16..])),
            },
            // RFC 7606 §7.11: the NLRI cannot be located reliably.
            _ => {
                return Err(err(
                    "MP_REACH_NLRI next hop length inconsistent with AFI/SAFI",
                ));
            }
        };
        let mut nlri = Vec::new();
        decode_nlri(
            r.rest(),
            family,
            self.cx.add_path_rx.contains(family),
            &mut nlri,
        )
        .map_err(|_| err("MP_REACH_NLRI NLRI malformed"))?;
        self.u.mp_reach = Some(MpReach {
            family,
            next_hop,
            nlri,
        });
        Ok(())
    }

    fn mp_unreach(&mut self, v: &[u8], whole: &[u8]) -> Result<(), DecodeError> {
        let err = |reason| DecodeError::update(sub::OPTIONAL_ATTR, whole, reason);
        let mut r = Reader::new(v);
        let (Some(afi), Some(safi)) = (r.u16(), r.u8()) else {
            return Err(err("MP_UNREACH_NLRI too short"));
        };
        let Some(family) = Family::from_afi_safi(afi, safi) else {
            return Ok(());
        };
        let mut withdrawn = Vec::new();
        decode_nlri(
            r.rest(),
            family,
            self.cx.add_path_rx.contains(family),
            &mut withdrawn,
        )
        .map_err(|_| err("MP_UNREACH_NLRI withdrawn routes malformed"))?;
        self.u.mp_unreach = Some(MpUnreach { family, withdrawn });
        Ok(())
    }

    /// RFC 6793 §4.2.3: merge AS4_PATH / AS4_AGGREGATOR from a 2-octet peer.
    fn finish(mut self) -> Update {
        let mut use_as4 = true;
        if let Some(agg) = self.u.attrs.aggregator {
            if agg.asn != AS_TRANS {
                use_as4 = false;
            } else if let Some(a4) = self.as4_aggregator {
                self.u.attrs.aggregator = Some(a4);
            }
        }
        if let (true, Some(p4)) = (use_as4, self.as4_path.take())
            && let Some(p) = self.u.attrs.as_path.take()
        {
            self.u.attrs.as_path = Some(p.merge_as4(p4));
        }
        self.u
    }
}

/// Pack announcements sharing `attrs` into UPDATE messages of at most 4096
/// octets. IPv4 with an IPv4 next hop goes in the NLRI field with NEXT_HOP;
/// everything else in MP_REACH_NLRI. Returns how many messages were written.
pub fn encode_announce(
    attrs: &PathAttrs,
    family: Family,
    next_hop: NextHop,
    nlri: &[Nlri],
    cx: &EncodeCx,
    out: &mut BytesMut,
) -> usize {
    let classic = family == Family::Ipv4Unicast && matches!(next_hop, NextHop::V4(_));
    let ap = cx.add_path_tx.contains(family);
    let mut attrs_only = attrs.clone();
    attrs_only.next_hop = match next_hop {
        NextHop::V4(a) if classic => Some(a),
        _ => None,
    };
    let mut scratch = BytesMut::new();
    attrs_only.encode(cx, &mut scratch);
    // Room left for NLRI after the header, the two length fields, the
    // attributes and (for MP) the MP_REACH header with the next hop.
    let mp_overhead = if classic {
        0
    } else {
        4 + 5 + next_hop.wire_len()
    };
    let fixed = HEADER_LEN + 4 + scratch.len() + mp_overhead;
    let mut written = 0;
    let mut rest = nlri;
    while !rest.is_empty() {
        let mut room = MAX_MESSAGE_LEN.saturating_sub(fixed);
        let mut n = 0;
        for p in rest {
            let l = nlri_len(p, ap);
            if l > room {
                break;
            }
            room -= l;
            n += 1;
        }
        let n = n.max(1);
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        let start = begin_message(out, msg_type::UPDATE);
        out.put_u16(0);
        let apos = out.len();
        out.put_u16(0);
        if !classic {
            encode_mp_reach(family, &next_hop, chunk, cx, out);
        }
        out.put_slice(&scratch);
        patch_u16(out, apos);
        if classic {
            for p in chunk {
                encode_nlri(p, ap, out);
            }
        }
        finish_message(out, start);
        written += 1;
    }
    written
}

/// Pack withdrawals into UPDATE messages of at most 4096 octets.
pub fn encode_withdraw(family: Family, nlri: &[Nlri], cx: &EncodeCx, out: &mut BytesMut) -> usize {
    let ap = cx.add_path_tx.contains(family);
    let classic = family == Family::Ipv4Unicast;
    let fixed = HEADER_LEN + 4 + if classic { 0 } else { 4 + 3 };
    let mut written = 0;
    let mut rest = nlri;
    while !rest.is_empty() {
        let mut room = MAX_MESSAGE_LEN - fixed;
        let mut n = 0;
        for p in rest {
            let l = nlri_len(p, ap);
            if l > room {
                break;
            }
            room -= l;
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n.max(1).min(rest.len()));
        rest = tail;
        let start = begin_message(out, msg_type::UPDATE);
        let wpos = out.len();
        out.put_u16(0);
        if classic {
            for p in chunk {
                encode_nlri(p, ap, out);
            }
        }
        patch_u16(out, wpos);
        let apos = out.len();
        out.put_u16(0);
        if !classic {
            encode_mp_unreach(family, chunk, cx, out);
        }
        patch_u16(out, apos);
        finish_message(out, start);
        written += 1;
    }
    written
}
