//! Denied-flow logging: optional, rate-limited nft `log group N` rules just
//! before each counted `drop` of Margay's tables, whose log prefix is the
//! drop rule's [`RuleOrigin`] comment. The agent reads the group over
//! NFLOG (nfnetlink_log) and writes one JSON line per packet.
//!
//! The NFLOG wire format (netlink + nfnetlink_log attributes) is decoded
//! here, sans-IO: [`decode`] turns a received datagram into [`NlEvent`]s,
//! [`bind_request`] builds the configuration request, [`DeniedFlow::of`]
//! makes the JSON record with pod names from a [`PodResolver`]. The socket
//! lives in the agent (`dataplane/nflog.rs`).
//!
//! The limit and the log share a rule of their own, placed before the drop
//! with the same matches (a `limit` is a match: over the rate the rule does
//! not match, so it must not carry the verdict, or packets over the rate
//! would fall through past the drop).

/// Logging of denied packets.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use serde_json::{Value, json};

use crate::model::{ClusterState, PodKey};
use crate::origin::RuleOrigin;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DenyLog {
    /// NFLOG group the agent listens on.
    pub group: u16,
    /// Log at most this many packets per second per drop rule ...
    pub rate_per_second: u32,
    /// ... with bursts of this many.
    pub burst: u32,
}

impl Default for DenyLog {
    fn default() -> Self {
        DenyLog {
            group: 7,
            rate_per_second: 10,
            burst: 20,
        }
    }
}

impl DenyLog {
    /// The statements (JSON) of the log rule of a drop whose origin is `o`.
    pub fn statements(&self, o: &RuleOrigin) -> Vec<Value> {
        vec![
            json!({"limit": {"rate": self.rate_per_second, "per": "second", "burst": self.burst}}),
            json!({"log": {"prefix": o.comment(), "group": self.group}}),
        ]
    }
}

// include/uapi/linux/netlink.h, netfilter/nfnetlink.h, nfnetlink_log.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Why a datagram could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: {have} bytes, need {need}")]
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: length {len} is out of bounds")]
    BadLength { what: &'static str, len: usize },
    #[error("payload: IP version {0} is neither 4 nor 6")]
    BadIpVersion(u8),
}

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NflogPacket {
    /// The NFLOG group (`res_id`).
    pub group: u16,
    /// The log prefix: the drop rule's origin comment.
    pub prefix: Option<String>,
    /// Ethertype (`0x0800`, `0x86dd`), from the packet header.
    pub hw_protocol: Option<u16>,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    /// Seconds and microseconds since the epoch (when the kernel stamped it).
    pub timestamp: Option<(u64, u64)>,
    /// The packet from its network header on (as much as was copied).
    pub payload: Vec<u8>,
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NlEvent {
    Packet(NflogPacket),
    /// An acknowledgement (`errno` 0) or an error (a negative errno).
    Ack {
        errno: i32,
    },
    /// Anything else (skipped).
    Other {
        ty: u16,
    },
}

fn need(what: &'static str, buf: &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        return Err(DecodeError::Short {
            what,
            need: n,
            have: buf.len(),
        });
    }
    Ok(())
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn be_u32(what: &'static str, b: &[u8]) -> Result<u32, DecodeError> {
    need(what, b, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Decodes every netlink message of one received datagram.
pub fn decode(buf: &[u8]) -> Result<Vec<NlEvent>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        need("netlink header", rest, NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(DecodeError::BadLength {
                what: "netlink message",
                len,
            });
        }
        let ty = u16_ne(rest, 4);
        let body = &rest[NLMSG_HDRLEN..len];
        out.push(match ty {
            NLMSG_ERROR => {
                need("netlink error", body, 4)?;
                NlEvent::Ack {
                    errno: i32::from_ne_bytes([body[0], body[1], body[2], body[3]]),
                }
            }
            t if t == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET => {
                NlEvent::Packet(decode_packet(body)?)
            }
            NLMSG_DONE => NlEvent::Other { ty },
            _ => NlEvent::Other { ty },
        });
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(out)
}

fn decode_packet(body: &[u8]) -> Result<NflogPacket, DecodeError> {
    need("nfgenmsg", body, 4)?;
    let mut p = NflogPacket {
        group: u16::from_be_bytes([body[2], body[3]]),
        ..NflogPacket::default()
    };
    let mut attrs = &body[4..];
    while attrs.len() >= 4 {
        let len = u16_ne(attrs, 0) as usize;
        if len < 4 || len > attrs.len() {
            return Err(DecodeError::BadLength {
                what: "nflog attribute",
                len,
            });
        }
        let ty = u16_ne(attrs, 2) & NLA_TYPE_MASK;
        let v = &attrs[4..len];
        match ty {
            NFULA_PACKET_HDR => {
                need("packet header", v, 2)?;
                p.hw_protocol = Some(u16::from_be_bytes([v[0], v[1]]));
            }
            NFULA_TIMESTAMP => {
                need("timestamp", v, 16)?;
                p.timestamp = Some((be_u64(v), be_u64(&v[8..])));
            }
            NFULA_IFINDEX_INDEV => p.indev = Some(be_u32("indev", v)?),
            NFULA_IFINDEX_OUTDEV => p.outdev = Some(be_u32("outdev", v)?),
            NFULA_PAYLOAD => p.payload = v.to_vec(),
            NFULA_PREFIX => {
                let s = v.split(|b| *b == 0).next().unwrap_or_default();
                p.prefix = Some(String::from_utf8_lossy(s).into_owned());
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(p)
}

fn push_attr(out: &mut Vec<u8>, ty: u16, v: &[u8]) {
    let len = 4 + v.len();
    out.extend((len as u16).to_ne_bytes());
    out.extend(ty.to_ne_bytes());
    out.extend(v);
    out.resize(align4(out.len()), 0);
}

/// The request that binds the socket to `group` and asks for the first
/// `copy_range` bytes of each packet (the kernel answers with an ack).
pub fn bind_request(group: u16, copy_range: u32, seq: u32) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    m.extend([0u8 /* AF_UNSPEC */, 0 /* NFNETLINK_V0 */]);
    m.extend(group.to_be_bytes());
    push_attr(&mut m, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = copy_range.to_be_bytes().to_vec();
    mode.extend([NFULNL_COPY_PACKET, 0]);
    push_attr(&mut m, NFULA_CFG_MODE, &mode);
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// Addresses, protocol and ports of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1/58 ICMP).
    pub proto: u8,
    /// TCP/UDP/SCTP ports (absent for other protocols or a short copy).
    pub ports: Option<(u16, u16)>,
}

/// Reads the IP header (and the ports) of a logged packet. IPv6 extension
/// headers are not walked: `proto` is then the first next-header value.
pub fn flow_key(payload: &[u8]) -> Result<FlowKey, DecodeError> {
    need("IP header", payload, 1)?;
    let (src, dst, proto, l4) = match payload[0] >> 4 {
        4 => {
            need("IPv4 header", payload, 20)?;
            let ihl = usize::from(payload[0] & 0x0f) * 4;
            if ihl < 20 {
                return Err(DecodeError::BadLength {
                    what: "IPv4 header",
                    len: ihl,
                });
            }
            let a = |i: usize| {
                Ipv4Addr::new(payload[i], payload[i + 1], payload[i + 2], payload[i + 3])
            };
            (
                IpAddr::V4(a(12)),
                IpAddr::V4(a(16)),
                payload[9],
                payload.get(ihl..).unwrap_or_default(),
            )
        }
        6 => {
            need("IPv6 header", payload, 40)?;
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&payload[i..i + 16]);
                Ipv6Addr::from(o)
            };
            (
                IpAddr::V6(a(8)),
                IpAddr::V6(a(24)),
                payload[6],
                &payload[40..],
            )
        }
        v => return Err(DecodeError::BadIpVersion(v)),
    };
    let ports = (matches!(proto, 6 | 17 | 132) && l4.len() >= 4).then(|| {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    });
    Ok(FlowKey {
        src,
        dst,
        proto,
        ports,
    })
}

/// Who owns an address (the agent implements it over its cluster view).
pub trait PodResolver {
    fn pod_of(&self, ip: IpAddr) -> Option<PodKey>;
}

impl PodResolver for ClusterState {
    fn pod_of(&self, ip: IpAddr) -> Option<PodKey> {
        self.pods
            .values()
            .find(|p| crate::plan::is_member(p) && p.ips.contains(&ip))
            .map(|p| p.key.clone())
    }
}

/// One denied packet, as the agent writes it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeniedFlow {
    /// Seconds since the epoch, with microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `<tier>:<policy>` of the rule that dropped it (or the raw prefix).
    pub policy: String,
    pub rule: String,
    pub direction: String,
    pub action: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
}

impl DeniedFlow {
    /// The record of a logged packet.
    pub fn of(p: &NflogPacket, pods: &dyn PodResolver) -> Result<DeniedFlow, DecodeError> {
        let k = flow_key(&p.payload)?;
        let prefix = p.prefix.clone().unwrap_or_default();
        let (policy, rule, direction, action) = match RuleOrigin::parse(prefix.trim()) {
            Some(o) => (
                o.policy_label(),
                o.rule_label(),
                o.direction.as_str().to_string(),
                o.action.as_str().to_string(),
            ),
            None => (prefix, "-".into(), "-".into(), "deny".into()),
        };
        let proto = match k.proto {
            1 => "icmp".to_string(),
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            58 => "icmpv6".to_string(),
            132 => "sctp".to_string(),
            n => n.to_string(),
        };
        Ok(DeniedFlow {
            time: p.timestamp.map(|(s, us)| format!("{s}.{us:06}")),
            policy,
            rule,
            direction,
            action,
            src: k.src,
            dst: k.dst,
            proto,
            sport: k.ports.map(|p| p.0),
            dport: k.ports.map(|p| p.1),
            src_pod: pods.pod_of(k.src).map(|k| k.to_string()),
            dst_pod: pods.pod_of(k.dst).map(|k| k.to_string()),
        })
    }

    /// The JSON line (no trailing newline).
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// A datagram as the kernel sends it (built field by field here from
    /// include/uapi/linux/netfilter/nfnetlink_log.h).
    fn packet_msg(group: u16, prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN];
        m.extend([2u8, 0]);
        m.extend(group.to_be_bytes());
        push_attr(&mut m, NFULA_PACKET_HDR, &[0x08, 0x00, 3, 0]);
        push_attr(&mut m, NFULA_IFINDEX_OUTDEV, &7u32.to_be_bytes());
        let mut ts = 1_700_000_000u64.to_be_bytes().to_vec();
        ts.extend(42u64.to_be_bytes());
        push_attr(&mut m, NFULA_TIMESTAMP, &ts);
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        push_attr(&mut m, NFULA_PREFIX, &p);
        push_attr(&mut m, NFULA_PAYLOAD, payload);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        m
    }

    fn tcp_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0u8; 16]);
        p
    }

    #[test]
    fn decodes_a_logged_packet_into_a_json_record_with_pods() {
        let x = Xyz::new(1, true);
        let xa = &x.state.pods[&PodKey::new("x", "a")];
        let zc = &x.state.pods[&PodKey::new("z", "c")];
        let v4 = |p: &crate::model::PodInfo| match p.ips.iter().find(|i| i.is_ipv4()) {
            Some(IpAddr::V4(a)) => a.octets(),
            _ => panic!("no v4"),
        };
        let payload = tcp_v4(v4(zc), v4(xa), 40000, 80);
        let mut dgram = packet_msg(7, "np x/from-b ingress - deny", &payload);
        dgram.extend(packet_msg(
            7,
            "not ours",
            &tcp_v4([198, 18, 0, 1], v4(xa), 1, 2),
        ));
        let ev = decode(&dgram).unwrap();
        assert_eq!(ev.len(), 2);
        let NlEvent::Packet(p) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (p.group, p.outdev, p.hw_protocol),
            (7, Some(7), Some(0x0800))
        );
        let rec = DeniedFlow::of(p, &x.state).unwrap();
        assert_eq!(rec.policy, "np:x/from-b");
        assert_eq!(
            (rec.rule.as_str(), rec.direction.as_str()),
            ("-", "ingress")
        );
        assert_eq!(rec.src_pod.as_deref(), Some("z/c"));
        assert_eq!(rec.dst_pod.as_deref(), Some("x/a"));
        assert_eq!(
            (rec.proto.as_str(), rec.sport, rec.dport),
            ("tcp", Some(40000), Some(80))
        );
        let line: serde_json::Value = serde_json::from_str(&rec.json_line()).unwrap();
        assert_eq!(line["time"], "1700000000.000042");
        let NlEvent::Packet(p2) = &ev[1] else {
            panic!()
        };
        let rec2 = DeniedFlow::of(p2, &x.state).unwrap();
        assert_eq!(
            (rec2.policy.as_str(), rec2.src_pod.clone()),
            ("not ours", None)
        );
    }

    #[test]
    fn bind_request_and_acks() {
        let r = bind_request(7, 128, 1);
        assert_eq!(r.len(), 16 + 4 + 8 + 12);
        assert_eq!(
            u32::from_ne_bytes([r[0], r[1], r[2], r[3]]) as usize,
            r.len()
        );
        let mut ack = vec![0u8; 16];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend((-1i32).to_ne_bytes());
        ack.extend(&r[..16]);
        assert_eq!(decode(&ack).unwrap(), vec![NlEvent::Ack { errno: -1 }]);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let good = packet_msg(7, "x", &tcp_v4([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        for cut in [3, 15, 17, 30] {
            assert!(decode(&good[..cut]).is_err(), "cut {cut}");
        }
        assert!(flow_key(&[0x45, 0, 0]).is_err());
        assert!(flow_key(&[0x75]).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(buf in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&buf);
            let _ = flow_key(&buf);
        }
    }

    use super::*;
    use crate::build::admin::{a_namespaces, anp, deny};
    use crate::build::{NetPol, from, pods, sel};
    use crate::ruleset::Verdict;
    use crate::testkit::Xyz;

    fn world() -> Xyz {
        let mut x = Xyz::new(2, true);
        x.state
            .add_policy(
                NetPol::new("x", "from-b")
                    .ingress(from(vec![pods(sel(&[("pod", "b")]))]))
                    .build(),
            )
            .unwrap();
        let a = anp("deny-y", 5)
            .subject_namespaces(sel(&[("ns", "z")]))
            .ingress(deny(vec![a_namespaces(sel(&[("ns", "y")]))]))
            .build();
        x.state.admin_policies.insert("deny-y".into(), a);
        x
    }

    #[test]
    fn log_rules_precede_every_drop_and_change_no_verdict() {
        let mut x = world();
        let plain = x.render();
        assert!(plain.iter().all(|rs| {
            rs.chains
                .values()
                .flatten()
                .all(|r| !matches!(r.verdict, Verdict::Log(_)))
        }));
        for n in &mut x.nodes {
            n.deny_log = Some(DenyLog::default());
        }
        let logged = x.render();
        assert!(
            x.mismatches(&logged).is_empty(),
            "logging changed a verdict"
        );
        let mut drops = 0;
        for rs in &logged {
            for (name, rules) in &rs.chains {
                for (i, r) in rules.iter().enumerate() {
                    if r.verdict != Verdict::Drop {
                        continue;
                    }
                    drops += 1;
                    let prev = i.checked_sub(1).map(|j| &rules[j]);
                    assert!(
                        prev.is_some_and(|p| p.verdict == Verdict::Log(DenyLog::default())
                            && p.matches == r.matches
                            && p.origin == r.origin),
                        "{name}[{i}] drop without its log rule"
                    );
                }
            }
        }
        assert!(drops >= 3, "deny chain, policy default, ANP deny: {drops}");
    }
}
