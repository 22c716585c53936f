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

use std::collections::HashSet;
use std::net::IpAddr;

use bgp::rib::FibChange;
use bgp::wire::Prefix;
use futures::{StreamExt, TryStreamExt, stream};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol, RouteVia,
};
use rtnetlink::RouteMessageBuilder;

/// Margay's route protocol number.
pub const RTPROT_MARGAY: u8 = 80;

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
    let v6_route = m.header.address_family == AddressFamily::Inet6;
    let gw = |h: &IpAddr| -> RouteAttribute {
        match (h, v6_route) {
            (IpAddr::V4(a), false) => RouteAttribute::Gateway(RouteAddress::Inet(*a)),
            (IpAddr::V6(a), true) => match a.to_ipv4_mapped() {
                // An IPv6 route learned over an IPv4 session: IPv4 gateway.
                Some(v4) => RouteAttribute::Via(RouteVia::Inet(v4)),
                None => RouteAttribute::Gateway(RouteAddress::Inet6(*a)),
            },
            (IpAddr::V6(a), false) => RouteAttribute::Via(RouteVia::Inet6(*a)),
            (IpAddr::V4(a), true) => RouteAttribute::Via(RouteVia::Inet(*a)),
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
    /// upserted, empty ones deleted. Returns the first error after trying all.
    pub async fn apply(&self, changes: &[FibChange]) -> Result<usize, FibError> {
        // Only the last change per prefix matters within a batch.
        let mut seen = HashSet::new();
        let last: Vec<&FibChange> = changes
            .iter()
            .rev()
            .filter(|c| seen.insert(c.prefix))
            .collect();
        let n = last.len();
        let results: Vec<Result<(), FibError>> = stream::iter(last)
            .map(|c| {
                let h = self.handle.clone();
                async move {
                    let msg = message(&c.prefix, &c.next_hops);
                    if c.next_hops.is_empty() {
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

    /// Our routes (protocol [`RTPROT_MARGAY`]) in the main table.
    pub async fn ours(&self) -> Result<Vec<Prefix>, FibError> {
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
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Remove our routes that are not in `wanted`; keep the rest untouched
    /// (no flush-and-rebuild: forwarding continues). Returns how many went.
    pub async fn reconcile(&self, wanted: &HashSet<Prefix>) -> Result<usize, FibError> {
        let stale: Vec<FibChange> = self
            .ours()
            .await?
            .into_iter()
            .filter(|p| !wanted.contains(p))
            .map(|prefix| FibChange {
                prefix,
                next_hops: Vec::new(),
            })
            .collect();
        self.apply(&stale).await
    }
}
