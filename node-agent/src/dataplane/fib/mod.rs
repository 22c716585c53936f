//! Kernel FIB adapter: programs BGP best paths with rtnetlink.
//!
//! Every route Margay installs carries route protocol [`RTPROT_MARGAY`] (80,
//! unused in `/etc/iproute2/rt_protos` and FRR's `rt_protos.d/frr.conf`,
//! which take 186–193), so a restarted agent can tell its routes apart and
//! [`Fib::reconcile`] removes only ours that are no longer wanted. Installs
//! are `replace` upserts (idempotent); an ECMP set becomes one multipath
//! route; deletes ignore "no such route". Writes go in batches on a raw
//! netlink socket ([`batch`]: hundreds of routes per `send`, only failures
//! answered); dumps use rtnetlink. Both sockets belong to the network
//! namespace of the thread that calls [`Fib::new`]: open it on a thread that
//! has entered the target netns.
//!
//! Routes go in with metric [`FIB_METRIC`] (1280), above the kernel's
//! defaults (0 for IPv4, 1024 for IPv6) that the agent's local routes
//! (protocol 81) and an operator's static routes use. The metric is part of
//! a route's key, so a BGP path for the same prefix as a pod /32 or a block
//! blackhole is a second route beside it — neither owner's `replace` or
//! delete can clobber the other's — and the local route wins the lookup.

pub(crate) mod batch;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

pub use bgp::rib::FibChange;
use bgp::rib::intern::FastState;
pub use bgp::wire::Prefix;
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol, RouteVia,
};
use rtnetlink::RouteMessageBuilder;

/// Margay's route protocol number.
pub const RTPROT_MARGAY: u8 = 80;

/// Metric (priority) of Margay's BGP routes.
pub const FIB_METRIC: u32 = 1280;

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
    /// The kernel refused a route of a batch.
    #[error("kernel refused {op} of {prefix}")]
    Kernel {
        /// "replace" or "delete".
        op: &'static str,
        /// The prefix.
        prefix: Prefix,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The batch socket failed.
    #[error("netlink batch write failed")]
    Batch(#[source] std::io::Error),
}

/// A handle on the kernel routing table of one network namespace.
pub struct Fib {
    handle: rtnetlink::Handle,
    batch: batch::BatchSocket,
    conn: tokio::task::JoinHandle<()>,
    stats: Counters,
}

/// Cumulative work of [`Fib::apply`] (relaxed atomics: `apply` takes
/// `&self`).
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    routes: AtomicU64,
    total_ns: AtomicU64,
    kernel_ns: AtomicU64,
}

/// Where [`Fib::apply`]'s time went since the handle was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibStats {
    /// Calls.
    pub batches: u64,
    /// Routes written (after merging changes to the same prefix).
    pub routes: u64,
    /// In `apply` in all.
    pub total: Duration,
    /// Of which in the kernel (`send` of the batched messages).
    pub kernel: Duration,
}

impl Drop for Fib {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The rtnetlink message for `prefix` via `hops` (none: a delete), as the
/// maintained `netlink-packet-route` types build it: what [`Fib::apply`]
/// writes for a multipath route, and what `bench_bgp --only floor` sends
/// one request at a time through the `rtnetlink` crate to measure the
/// batched writer ([`batch`]) against.
pub fn message(prefix: &Prefix, hops: &[IpAddr]) -> RouteMessage {
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

/// Can the kernel use next hop `h` for `prefix`? See [`usable_next_hops`].
fn usable(prefix: &Prefix, h: &IpAddr) -> bool {
    match prefix.addr() {
        IpAddr::V4(_) => true,
        IpAddr::V6(_) => matches!(h, IpAddr::V6(a) if a.to_ipv4_mapped().is_none()),
    }
}

/// The route to write for `prefix` via the usable ones of `hops` (none: a
/// delete): one gateway of the prefix's own family is encoded directly,
/// anything else through [`message`].
fn route(prefix: &Prefix, hops: &[IpAddr]) -> batch::Route {
    let simple = |gw: Option<IpAddr>| batch::Route::Simple {
        dst: prefix.addr(),
        len: prefix.len(),
        gw,
        protocol: RTPROT_MARGAY,
        metric: FIB_METRIC,
    };
    let mut usable_hops = hops.iter().filter(|h| usable(prefix, h));
    match (usable_hops.next(), usable_hops.next()) {
        (None, _) => simple(None),
        (Some(h), None) => match (prefix.addr(), h) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => simple(Some(*h)),
            (IpAddr::V4(_), IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => simple(Some(IpAddr::V4(v4))),
                None => batch::Route::Msg(message(prefix, &[*h])),
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => simple(None),
        },
        _ => batch::Route::Msg(message(prefix, &usable_next_hops(prefix, hops))),
    }
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

impl Fib {
    /// Open a netlink socket in the calling thread's network namespace; the
    /// connection task runs on the current tokio runtime.
    pub fn new() -> Result<Fib, FibError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(FibError::Open)?;
        let batch = batch::BatchSocket::open().map_err(FibError::Open)?;
        Ok(Fib {
            handle,
            batch,
            conn: tokio::spawn(conn),
            stats: Counters::default(),
        })
    }

    /// Where [`Fib::apply`]'s time went so far.
    pub fn stats(&self) -> FibStats {
        let s = &self.stats;
        FibStats {
            batches: s.batches.load(Relaxed),
            routes: s.routes.load(Relaxed),
            total: Duration::from_nanos(s.total_ns.load(Relaxed)),
            kernel: Duration::from_nanos(s.kernel_ns.load(Relaxed)),
        }
    }

    /// Apply best-path changes in order of arrival: non-empty next hops are
    /// upserted, empty ones deleted — written in batches of ~500 messages per
    /// netlink `send`, without per-route acknowledgements (the kernel
    /// reports only failures). The kernel's work (a microsecond or two per
    /// route) runs on the calling thread: give a big table its own thread. Next hops the kernel cannot use for the
    /// prefix are dropped ([`usable_next_hops`]); a prefix left with none is
    /// removed. Returns how many prefixes were written, or the first error
    /// after trying all.
    pub async fn apply(&self, changes: &[FibChange]) -> Result<usize, FibError> {
        let start = Instant::now();
        let mut kernel = Duration::ZERO;
        // Only the last change per prefix matters within a batch.
        let mut seen: HashSet<Prefix, FastState> =
            HashSet::with_capacity_and_hasher(changes.len(), FastState::default());
        let last: Vec<&FibChange> = changes
            .iter()
            .rev()
            .filter(|c| seen.insert(c.prefix))
            .collect();
        drop(seen);
        let ops: Vec<(Prefix, batch::Op)> = last
            .iter()
            .map(|c| {
                let op = if c.next_hops.iter().any(|h| usable(&c.prefix, h)) {
                    batch::Op::Replace
                } else {
                    batch::Op::Delete
                };
                (c.prefix, op)
            })
            .collect();
        let routes = last.iter().zip(&ops).map(|(c, &(_, op))| {
            if c.next_hops.iter().any(|h| !usable(&c.prefix, h)) {
                tracing::warn!(prefix = %c.prefix, next_hops = ?c.next_hops, "next hops of the wrong family cannot be installed");
            }
            (op, route(&c.prefix, &c.next_hops))
        });
        let written = self.batch.write(routes, &mut kernel);
        let s = &self.stats;
        s.batches.fetch_add(1, Relaxed);
        s.routes.fetch_add(ops.len() as u64, Relaxed);
        s.kernel_ns.fetch_add(nanos(kernel), Relaxed);
        s.total_ns.fetch_add(nanos(start.elapsed()), Relaxed);
        check(&written.map_err(FibError::Batch)?, &ops)?;
        Ok(ops.len())
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
        let ops: Vec<(Prefix, batch::Op)> =
            stale.iter().map(|(p, _)| (*p, batch::Op::Delete)).collect();
        let mut kernel = Duration::ZERO;
        let failures = self
            .batch
            .write(
                stale
                    .into_iter()
                    .map(|(_, m)| (batch::Op::Delete, batch::Route::Msg(m))),
                &mut kernel,
            )
            .map_err(FibError::Batch)?;
        check(&failures, &ops)?;
        Ok(n)
    }
}

/// A reconcile that does not stop the writer: started when the writer
/// decides to reconcile, it asks the RIB ([`bgp::driver::FibView`]) what
/// the kernel should hold while the writer keeps applying batches — the
/// RIB may be waiting for room in the writer's queue before it can answer
/// — and notes every prefix written meanwhile. The kernel then keeps the
/// RIB's answer and those: a route the RIB added after answering was
/// written after the start, so nothing it wants goes; a route of ours that
/// nobody wants (left by a previous run) does. The writer keeps no table of
/// its own for this.
pub struct PendingReconcile {
    touched: HashSet<Prefix, FastState>,
    answer: tokio::task::JoinHandle<Result<Vec<Prefix>, bgp::driver::DriverError>>,
}

impl PendingReconcile {
    /// Ask the RIB (from a task on the current runtime).
    pub fn start(rib: &bgp::driver::FibView) -> PendingReconcile {
        let rib = rib.clone();
        PendingReconcile {
            touched: HashSet::default(),
            answer: tokio::spawn(async move { rib.prefixes().await }),
        }
    }

    /// The writer applied this batch.
    pub fn note(&mut self, batch: &[FibChange]) {
        self.touched.extend(batch.iter().map(|c| c.prefix));
    }

    /// The RIB's answer (cancel-safe: poll it in a `select!` beside the
    /// batches); `None` if the speaker stopped.
    pub async fn answer(&mut self) -> Option<Vec<Prefix>> {
        (&mut self.answer).await.ok()?.ok()
    }

    /// [`answer`](Self::answer) of the reconcile in progress, if any; never
    /// ready while there is none (for a `select!` branch of a writer loop).
    pub async fn answer_of(pending: &mut Option<PendingReconcile>) -> Option<Vec<Prefix>> {
        match pending {
            Some(r) => r.answer().await,
            None => std::future::pending().await,
        }
    }

    /// Remove our kernel routes outside `rib` (the answer) and the
    /// prefixes written since the start. Returns how many went.
    pub async fn finish(self, fib: &Fib, rib: Vec<Prefix>) -> Result<usize, FibError> {
        let mut wanted: HashSet<Prefix> = rib.into_iter().collect();
        wanted.extend(self.touched);
        fib.reconcile(&wanted).await
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The first failure of a batch that is not "already so" (a delete of a
/// route that is not there), as an error naming the prefix.
fn check(failures: &[(usize, i32)], ops: &[(Prefix, batch::Op)]) -> Result<(), FibError> {
    for &(i, errno) in failures {
        let Some(&(prefix, op)) = ops.get(i) else {
            continue;
        };
        if op == batch::Op::Delete && (errno == libc::ESRCH || errno == libc::ENOENT) {
            continue;
        }
        return Err(FibError::Kernel {
            op: if op == batch::Op::Delete {
                "delete"
            } else {
                "replace"
            },
            prefix,
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn emitted(r: &batch::Route) -> Vec<u8> {
        let mut b = Vec::new();
        r.emit(&mut b);
        b
    }

    fn via_builder(prefix: &Prefix, hops: &[IpAddr]) -> Vec<u8> {
        use netlink_packet_core::Emitable;
        let m = message(prefix, hops);
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    /// The direct encoding is byte for byte what rtnetlink's builder makes.
    #[test]
    fn simple_routes_encode_like_the_builder() {
        let cases: [(&str, &[&str]); 6] = [
            ("240.0.0.16/28", &["198.18.0.1"]),
            ("240.0.0.16/28", &[]),
            ("0.0.0.0/0", &["10.0.0.1"]),
            ("2001:db8:1::/48", &["2001:db8::1"]),
            ("2001:db8:1::/48", &[]),
            ("198.19.0.1/32", &["::ffff:198.18.0.7"]),
        ];
        for (p, hops) in cases {
            let prefix: Prefix = p.parse().unwrap();
            let hops: Vec<IpAddr> = hops.iter().map(|h| h.parse().unwrap()).collect();
            let r = route(&prefix, &hops);
            assert!(matches!(r, batch::Route::Simple { .. }), "{p} {hops:?}");
            // The builder is given what the kernel gets: a mapped IPv6
            // next hop becomes its IPv4 address.
            let canon: Vec<IpAddr> = hops.iter().map(|h| h.to_canonical()).collect();
            assert_eq!(emitted(&r), via_builder(&prefix, &canon), "{p} {hops:?}");
        }
    }

    /// Multipath and RFC 8950 next hops go through the builder; next hops
    /// of the wrong family are dropped.
    #[test]
    fn other_routes_use_the_builder() {
        let p4: Prefix = "198.19.0.0/26".parse().unwrap();
        let two: Vec<IpAddr> = vec!["198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap()];
        assert!(matches!(route(&p4, &two), batch::Route::Msg(_)));
        assert_eq!(emitted(&route(&p4, &two)), via_builder(&p4, &two));
        let v6hop: Vec<IpAddr> = vec!["2001:db8::7".parse().unwrap()];
        assert!(matches!(route(&p4, &v6hop), batch::Route::Msg(_)));
        let p6: Prefix = "2001:db8:2::/48".parse().unwrap();
        let v4hop: Vec<IpAddr> = vec!["198.18.0.1".parse().unwrap()];
        assert_eq!(emitted(&route(&p6, &v4hop)), via_builder(&p6, &[]));
    }
}
