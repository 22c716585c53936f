//! Kernel FIB adapter: programs BGP best paths with rtnetlink.
//!
//! Every route Margay installs carries route protocol [`RTPROT_MARGAY`] (80,
//! unused in `/etc/iproute2/rt_protos` and FRR's `rt_protos.d/frr.conf`,
//! which take 186–193), so a restarted agent can tell its routes apart and
//! [`Fib::reconcile`] removes only ours that are no longer wanted. Installs
//! are `replace` upserts (idempotent); an ECMP set becomes one multipath
//! route; deletes ignore "no such route". Requests are pipelined on one
//! netlink socket, which belongs to the network namespace of the thread that
//! calls [`Fib::new`]: open it on a thread that has entered the target netns.
//!
//! Routes go in with metric [`FIB_METRIC`] (1280), above the kernel's
//! defaults (0 for IPv4, 1024 for IPv6) that the agent's local routes
//! (protocol 81) and an operator's static routes use. The metric is part of
//! a route's key, so a BGP path for the same prefix as a pod /32 or a block
//! blackhole is a second route beside it — neither owner's `replace` or
//! delete can clobber the other's — and the local route wins the lookup.

use std::collections::HashSet;
use std::net::IpAddr;

pub use bgp::rib::FibChange;
pub use bgp::wire::Prefix;
use futures::{StreamExt, TryStreamExt, stream};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol, RouteVia,
};
use rtnetlink::RouteMessageBuilder;

/// Margay's route protocol number.
pub const RTPROT_MARGAY: u8 = 80;

/// Metric (priority) of Margay's BGP routes.
pub const FIB_METRIC: u32 = 1280;

/// Requests in flight at once on the netlink socket.
const PIPELINE: usize = 128;

/// FIB errors.
#[derive(Debug, thiserror::Error)]
pub enum FibError {
    /// Could not open the netlink socket.
    #[error("cannot open a netlink route socket")]
    Open(#[source] std::io::Error),
    /// The kernel refused a route.
    #[error("kernel refused {op} of {prefix}")]
    Route {
        /// "replace" or "delete".
        op: &'static str,
        /// The prefix.
        prefix: Prefix,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// Could not dump routes.
    #[error("cannot list kernel routes")]
    Dump(#[source] rtnetlink::Error),
}

/// A handle on the kernel routing table of one network namespace.
pub struct Fib {
    handle: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Fib {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn message(prefix: &Prefix, hops: &[IpAddr]) -> RouteMessage {
    let mut m = match prefix.addr() {
        IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, prefix.len())
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(a, prefix.len())
            .build(),
    };
    m.header.protocol = RouteProtocol::Other(RTPROT_MARGAY);
    m.attributes.push(RouteAttribute::Priority(FIB_METRIC));
    let v6_route = m.header.address_family == AddressFamily::Inet6;
    let gw = |h: &IpAddr| -> RouteAttribute {
        match (h, v6_route) {
            (IpAddr::V4(a), _) => RouteAttribute::Gateway(RouteAddress::Inet(*a)),
            (IpAddr::V6(a), true) => RouteAttribute::Gateway(RouteAddress::Inet6(*a)),
            (IpAddr::V6(a), false) => match a.to_ipv4_mapped() {
                Some(v4) => RouteAttribute::Gateway(RouteAddress::Inet(v4)),
                // RFC 8950: an IPv4 route via an IPv6 next hop.
                None => RouteAttribute::Via(RouteVia::Inet6(*a)),
            },
        }
    };
    match hops {
        [] => {}
        [one] => m.attributes.push(gw(one)),
        many => m.attributes.push(RouteAttribute::MultiPath(
            many.iter()
                .map(|h| {
                    let mut nh = RouteNextHop::default();
                    nh.attributes = vec![gw(h)];
                    nh
                })
                .collect(),
        )),
    }
    m
}

/// The next hops the kernel can use for `prefix`: Linux has no IPv6 route
/// via an IPv4 gateway ("IPv6 routes can not use an IPv4 nexthop"), so for
/// an IPv6 prefix an IPv4 (or IPv4-mapped) next hop is dropped; an IPv4
/// prefix takes IPv4, IPv4-mapped and (RFC 8950) IPv6 next hops.
pub fn usable_next_hops(prefix: &Prefix, hops: &[IpAddr]) -> Vec<IpAddr> {
    match prefix.addr() {
        IpAddr::V4(_) => hops.to_vec(),
        IpAddr::V6(_) => hops
            .iter()
            .filter(|h| matches!(h, IpAddr::V6(a) if a.to_ipv4_mapped().is_none()))
            .copied()
            .collect(),
    }
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ESRCH || m.raw_code() == -libc::ENOENT)
}

impl Fib {
    /// Open a netlink socket in the calling thread's network namespace; the
    /// connection task runs on the current tokio runtime.
    pub fn new() -> Result<Fib, FibError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(FibError::Open)?;
        Ok(Fib {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    /// Apply best-path changes in order of arrival: non-empty next hops are
    /// upserted, empty ones deleted. Next hops the kernel cannot use for the
    /// prefix are dropped ([`usable_next_hops`]); a prefix left with none is
    /// removed. Returns how many prefixes were written, or the first error
    /// after trying all.
    pub async fn apply(&self, changes: &[FibChange]) -> Result<usize, FibError> {
        // Only the last change per prefix matters within a batch.
        let mut seen = HashSet::new();
        // Owned items: a stream of futures borrowing `changes` is not `Send`
        // (higher-ranked lifetimes), and the agent runs this in a task.
        let last: Vec<FibChange> = changes
            .iter()
            .rev()
            .filter(|c| seen.insert(c.prefix))
            .cloned()
            .collect();
        let n = last.len();
        let results: Vec<Result<(), FibError>> = stream::iter(last)
            .map(|c| {
                let h = self.handle.clone();
                async move {
                    let hops = usable_next_hops(&c.prefix, &c.next_hops);
                    if hops.len() < c.next_hops.len() {
                        tracing::warn!(prefix = %c.prefix, next_hops = ?c.next_hops, "next hops of the wrong family cannot be installed");
                    }
                    let msg = message(&c.prefix, &hops);
                    if hops.is_empty() {
                        match h.route().del(msg).execute().await {
                            Ok(()) => Ok(()),
                            Err(e) if is_missing(&e) => Ok(()),
                            Err(source) => Err(FibError::Route {
                                op: "delete",
                                prefix: c.prefix,
                                source,
                            }),
                        }
                    } else {
                        h.route()
                            .add(msg)
                            .replace()
                            .execute()
                            .await
                            .map_err(|source| FibError::Route {
                                op: "replace",
                                prefix: c.prefix,
                                source,
                            })
                    }
                }
            })
            .buffer_unordered(PIPELINE)
            .collect()
            .await;
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))?;
        Ok(n)
    }

    /// Our routes (protocol [`RTPROT_MARGAY`]), in any table.
    pub async fn ours(&self) -> Result<Vec<Prefix>, FibError> {
        Ok(self
            .dump_ours()
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    async fn dump_ours(&self) -> Result<Vec<(Prefix, RouteMessage)>, FibError> {
        let mut out = Vec::new();
        for msg in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(msg).execute();
            while let Some(r) = s.try_next().await.map_err(FibError::Dump)? {
                if r.header.protocol != RouteProtocol::Other(RTPROT_MARGAY) {
                    continue;
                }
                let len = r.header.destination_prefix_length;
                let addr = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                let addr = addr.unwrap_or(match r.header.address_family {
                    AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                });
                if let Ok(p) = Prefix::new(addr, len) {
                    out.push((p, r));
                }
            }
        }
        Ok(out)
    }

    /// Remove our routes that are not in `wanted`; keep the rest untouched
    /// (no flush-and-rebuild: forwarding continues). Each unwanted route is
    /// deleted as the kernel listed it (whatever its metric or table), so a
    /// route left by an older version with other attributes goes too.
    /// Returns how many went.
    pub async fn reconcile(&self, wanted: &HashSet<Prefix>) -> Result<usize, FibError> {
        let stale: Vec<(Prefix, RouteMessage)> = self
            .dump_ours()
            .await?
            .into_iter()
            .filter(|(p, m)| !(wanted.contains(p) && is_ours_exactly(m)))
            .collect();
        let n = stale.len();
        let results: Vec<Result<(), FibError>> = stream::iter(stale)
            .map(|(prefix, msg)| {
                let h = self.handle.clone();
                async move {
                    match h.route().del(msg).execute().await {
                        Ok(()) => Ok(()),
                        Err(e) if is_missing(&e) => Ok(()),
                        Err(source) => Err(FibError::Route {
                            op: "delete",
                            prefix,
                            source,
                        }),
                    }
                }
            })
            .buffer_unordered(PIPELINE)
            .collect()
            .await;
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))?;
        Ok(n)
    }
}

/// A route of ours as [`Fib::apply`] writes it: main table, our metric.
fn is_ours_exactly(m: &RouteMessage) -> bool {
    let metric = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    metric == Some(FIB_METRIC) && table == u32::from(libc::RT_TABLE_MAIN)
}
