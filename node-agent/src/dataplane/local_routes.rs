//! Kernel routes for what lives on this node: a /32 (/128) to each local
//! pod's `cali*` veth, and a blackhole for each block affine to the node (an
//! unallocated address of our block is dropped here instead of bouncing
//! between the node and its default gateway).
//!
//! These routes carry protocol [`LOCAL_ROUTE_PROTO`] (81), distinct from the
//! BGP-learned routes the FIB programs, so each class has exactly one owner
//! that may reconcile it (as Calico's felix and BIRD do with 80 and `bird`).
//! [`LocalRoutes::sync`] makes the kernel equal to a desired set: it adds or
//! replaces what is missing or different, deletes what is ours and no longer
//! wanted, and never touches a route with another protocol — so a restart
//! reconciles without removing a route that is still right.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt as _;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::fib::batch::{BatchSocket, Op, Route as BatchRoute};

/// Route protocol number of Margay's local routes (`ip route show proto 81`).
pub const LOCAL_ROUTE_PROTO: u8 = 81;

/// One local route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LocalRoute {
    /// `dst dev ifname scope link` (a pod address).
    Device {
        /// The pod's address as a host prefix.
        dst: IpNetwork,
        /// The host-side veth.
        ifname: String,
    },
    /// `blackhole dst` (a block affine to this node).
    Blackhole {
        /// The block.
        dst: IpNetwork,
    },
}

impl LocalRoute {
    /// The destination.
    pub fn dst(&self) -> IpNetwork {
        match self {
            LocalRoute::Device { dst, .. } | LocalRoute::Blackhole { dst } => *dst,
        }
    }

    /// The host route to a pod address via its veth.
    pub fn to_pod(ip: IpAddr, ifname: &str) -> LocalRoute {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        LocalRoute::Device {
            dst: IpNetwork::new(ip, prefix).unwrap_or(IpNetwork::from(ip)),
            ifname: ifname.to_string(),
        }
    }
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Routes added or replaced.
    pub written: usize,
    /// Routes of ours deleted.
    pub removed: usize,
    /// Routes already right.
    pub kept: usize,
    /// Device routes skipped because their interface does not exist (the
    /// pod's veth is gone or not yet created).
    pub missing_interfaces: Vec<String>,
}

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
#[error("{op} {what}: {source}")]
pub struct RouteError {
    op: &'static str,
    what: String,
    #[source]
    source: rtnetlink::Error,
}

/// Owner of the local routes in the namespace the connection was opened in.
pub struct LocalRoutes {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
    /// A blocking socket of the same namespace for [`LocalRoutes::ensure`]:
    /// the interface's index and the route in two syscalls on the calling
    /// thread, instead of two requests through the connection's task (four
    /// task hand-overs, across worker threads, on EndpointUp's path).
    fast: Option<std::sync::Mutex<BatchSocket>>,
}

impl Drop for LocalRoutes {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// A kernel route of ours, as dumped.
struct Installed {
    route: Option<LocalRoute>,
    msg: RouteMessage,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl LocalRoutes {
    /// Opens a netlink connection in the current thread's network namespace
    /// (call it from a thread that entered the node's namespace, inside a
    /// tokio runtime).
    pub fn connect() -> std::io::Result<LocalRoutes> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(LocalRoutes {
            handle,
            conn: tokio::spawn(conn),
            fast: BatchSocket::open().ok().map(std::sync::Mutex::new),
        })
    }

    async fn links(&self) -> Result<BTreeMap<String, u32>, RouteError> {
        let mut out = BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(|source| RouteError {
            op: "listing",
            what: "links".into(),
            source,
        })? {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    out.insert(n.clone(), l.header.index);
                }
            }
        }
        Ok(out)
    }

    async fn installed(&self, names: &BTreeMap<u32, String>) -> Result<Vec<Installed>, RouteError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = family;
            let mut routes = self.handle.route().get(q).execute();
            while let Some(msg) = routes.try_next().await.map_err(|source| RouteError {
                op: "listing",
                what: "routes".into(),
                source,
            })? {
                if msg.header.protocol != RouteProtocol::Other(LOCAL_ROUTE_PROTO)
                    || msg.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                let route = parse(&msg, names);
                out.push(Installed { route, msg });
            }
        }
        Ok(out)
    }

    /// The local routes of ours currently in the kernel.
    pub async fn current(&self) -> Result<BTreeSet<LocalRoute>, RouteError> {
        let by_index: BTreeMap<u32, String> = self
            .links()
            .await?
            .into_iter()
            .map(|(n, i)| (i, n))
            .collect();
        Ok(self
            .installed(&by_index)
            .await?
            .into_iter()
            .filter_map(|i| i.route)
            .collect())
    }

    /// Makes our routes in the kernel equal to `desired` (see module docs).
    pub async fn sync(&self, desired: &BTreeSet<LocalRoute>) -> Result<SyncReport, RouteError> {
        let by_name = self.links().await?;
        let by_index: BTreeMap<u32, String> =
            by_name.iter().map(|(n, i)| (*i, n.clone())).collect();
        let installed = self.installed(&by_index).await?;
        let mut report = SyncReport::default();
        let have: BTreeSet<&LocalRoute> =
            installed.iter().filter_map(|i| i.route.as_ref()).collect();
        // Adds and replacements first: a replaced route never leaves a gap.
        for r in desired {
            if have.contains(r) {
                report.kept += 1;
                continue;
            }
            match self.write(r, &by_name).await {
                Ok(true) => report.written += 1,
                Ok(false) => {
                    if let LocalRoute::Device { ifname, .. } = r {
                        report.missing_interfaces.push(ifname.clone());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let wanted_dsts: BTreeSet<IpNetwork> = desired.iter().map(LocalRoute::dst).collect();
        for i in installed {
            let keep = match &i.route {
                Some(r) => desired.contains(r) || wanted_dsts.contains(&r.dst()),
                None => false,
            };
            if keep {
                continue;
            }
            match self.handle.route().del(i.msg).execute().await {
                Ok(()) => report.removed += 1,
                Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => {}
                Err(source) => {
                    return Err(RouteError {
                        op: "deleting",
                        what: i.route.map(|r| r.dst().to_string()).unwrap_or_default(),
                        source,
                    });
                }
            }
        }
        Ok(report)
    }

    /// Adds or replaces one route now (the fast path of EndpointUp); `false`
    /// if its interface does not exist.
    pub async fn ensure(&self, route: &LocalRoute) -> Result<bool, RouteError> {
        if let Some(done) = self.ensure_now(route) {
            return Ok(done);
        }
        let by_name = match route {
            LocalRoute::Device { ifname, .. } => {
                let mut links = self
                    .handle
                    .link()
                    .get()
                    .match_name(ifname.clone())
                    .execute();
                match links.try_next().await {
                    Ok(Some(l)) => [(ifname.clone(), l.header.index)].into(),
                    Ok(None) => return Ok(false),
                    Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(false),
                    Err(source) => {
                        return Err(RouteError {
                            op: "looking up",
                            what: ifname.clone(),
                            source,
                        });
                    }
                }
            }
            LocalRoute::Blackhole { .. } => BTreeMap::new(),
        };
        self.write(route, &by_name).await
    }

    /// [`LocalRoutes::ensure`] on the blocking socket: `Some(written)`,
    /// or `None` to take the netlink connection instead (no such socket, a
    /// blackhole, or a failure, which that path then reports with the
    /// kernel's error).
    fn ensure_now(&self, route: &LocalRoute) -> Option<bool> {
        let LocalRoute::Device { ifname, .. } = route else {
            return None;
        };
        let sock = self.fast.as_ref()?.lock().ok()?;
        let index = match sock.index_of(ifname) {
            Ok(i) => i,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Some(false),
            Err(_) => return None,
        };
        let mut kernel = std::time::Duration::ZERO;
        let msg = message(route, Some(index));
        match sock.write([(Op::Replace, BatchRoute::Msg(msg))], &mut kernel) {
            Ok(failed) => match failed.first() {
                None => Some(true),
                // As below: gone again, or not up yet; the route stays pending.
                Some((_, e)) if matches!(*e, libc::ENODEV | libc::ENETDOWN) => Some(false),
                Some(_) => None,
            },
            Err(_) => None,
        }
    }

    /// Removes one route of ours if present.
    pub async fn remove(&self, route: &LocalRoute) -> Result<(), RouteError> {
        let msg = message(route, None);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            Err(source) => Err(RouteError {
                op: "deleting",
                what: route.dst().to_string(),
                source,
            }),
        }
    }

    async fn write(
        &self,
        route: &LocalRoute,
        by_name: &BTreeMap<String, u32>,
    ) -> Result<bool, RouteError> {
        let oif = match route {
            LocalRoute::Device { ifname, .. } => match by_name.get(ifname) {
                Some(i) => Some(*i),
                None => return Ok(false),
            },
            LocalRoute::Blackhole { .. } => None,
        };
        match self
            .handle
            .route()
            .add(message(route, oif))
            .replace()
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            // The veth went away between lookup and write, or is not up
            // yet (the CNI plugin brings it up, then calls EndpointUp):
            // the route stays pending, no error and no full resync.
            Err(e) if matches!(errno(&e), Some(libc::ENODEV | libc::ENETDOWN)) => Ok(false),
            Err(source) => Err(RouteError {
                op: "writing",
                what: route.dst().to_string(),
                source,
            }),
        }
    }
}

fn message(route: &LocalRoute, oif: Option<u32>) -> RouteMessage {
    let dst = route.dst();
    let mut msg = match dst {
        IpNetwork::V4(n) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .build(),
        IpNetwork::V6(n) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .build(),
    };
    msg.header.protocol = RouteProtocol::Other(LOCAL_ROUTE_PROTO);
    match route {
        LocalRoute::Device { .. } => {
            msg.header.scope = RouteScope::Link;
            if let Some(i) = oif {
                msg.attributes.push(RouteAttribute::Oif(i));
            }
        }
        LocalRoute::Blackhole { .. } => {
            msg.header.kind = RouteType::BlackHole;
        }
    }
    msg
}

fn parse(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<LocalRoute> {
    let len = msg.header.destination_prefix_length;
    let ip: IpAddr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some((*v4).into()),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some((*v6).into()),
        _ => None,
    })?;
    let dst = IpNetwork::new(ip, len).ok()?;
    if msg.header.kind == RouteType::BlackHole {
        return Some(LocalRoute::Blackhole { dst });
    }
    let oif = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })?;
    Some(LocalRoute::Device {
        dst,
        ifname: names.get(&oif)?.clone(),
    })
}
