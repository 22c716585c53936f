//! The overlay's kernel side: makes the tunnel devices, their FDB and
//! neighbour entries and the overlay routes (protocol [`RTPROT_OVERLAY`])
//! equal to what is [`Wanted`], over rtnetlink, in the namespace the connection was
//! opened in.
//!
//! [`OverlayKernel::sync`] reads what is there and changes only what
//! differs: a device whose VXLAN parameters (VNI, port, local address,
//! underlay link, learning) differ is re-created, a wrong MTU or MAC is set
//! in place, entries and routes are added, replaced or removed one by one.
//! Everything on `vxlan.margay` / `vxlan-v6.margay` and every route with
//! protocol 82 is Margay's; nothing else is touched. A restarted agent
//! therefore reconciles without a gap: what is still right stays.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt as _;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteHeader, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

pub use super::netlink::OverlayError;
use super::netlink::{
    Link, errno, fail, gone, link_of, parse_neigh, parse_route, route_message, same_tunnel,
};
use super::{Device, Family, Fdb, Neigh, OVERLAY_METRIC, RTPROT_OVERLAY, Tunnel, Via, Wanted};

/// What a sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Devices created (or re-created).
    pub devices_created: usize,
    /// Devices removed.
    pub devices_removed: usize,
    /// Entries, addresses and routes added or replaced.
    pub written: usize,
    /// Entries, addresses and routes removed.
    pub removed: usize,
}

impl Report {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.devices_created + self.devices_removed + self.written + self.removed > 0
    }
}

/// Owner of the overlay's kernel state in one network namespace.
pub struct OverlayKernel {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for OverlayKernel {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl OverlayKernel {
    /// Opens a netlink connection in the calling thread's network namespace
    /// (inside a tokio runtime).
    pub fn connect() -> std::io::Result<OverlayKernel> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(OverlayKernel {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    async fn links(&self) -> Result<BTreeMap<String, Link>, OverlayError> {
        let mut out = BTreeMap::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(fail("listing", "links"))? {
            if let (Some(name), l) = link_of(&m) {
                out.insert(name, l);
            }
        }
        Ok(out)
    }

    /// The index and MTU of interface `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<(u32, u32)>, OverlayError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let (_, l) = link_of(&m);
                Ok(Some((l.index, l.mtu)))
            }
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(fail("looking up", name)(e)),
        }
    }

    async fn create(&self, d: &Device, underlay: Option<u32>) -> Result<u32, OverlayError> {
        let name = d.af.device();
        let mut b = LinkVxlan::new(name, d.vni)
            .port(d.port)
            .learning(false)
            .mtu(d.mtu)
            .address(d.mac.0.to_vec());
        b = match d.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        if let Some(i) = underlay {
            b = b.dev(i);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(fail("creating", name))?;
        let (index, _) = self
            .link(name)
            .await?
            .ok_or_else(|| fail("creating", name)(rtnetlink::Error::RequestFailed))?;
        // No link-local address and no router solicitations on the tunnel:
        // the only addresses on it are the tunnel addresses.
        let quiet = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        if let Err(e) = self.handle.link().set(quiet).execute().await {
            tracing::debug!(device = name, error = %e, "addrgenmode none refused (no IPv6?)");
        }
        Ok(index)
    }

    /// The device of `d`'s family as it should be; returns its index and
    /// whether it was (re-)created.
    async fn ensure_device(
        &self,
        d: &Device,
        have: Option<&Link>,
        underlay: Option<u32>,
        report: &mut Report,
    ) -> Result<u32, OverlayError> {
        let name = d.af.device();
        let index = match have {
            Some(l) if same_tunnel(l, d, underlay) => {
                if l.mtu != d.mtu || l.mac != d.mac.0 {
                    let m = LinkUnspec::new_with_index(l.index)
                        .mtu(d.mtu)
                        .address(d.mac.0.to_vec())
                        .build();
                    self.handle
                        .link()
                        .set(m)
                        .execute()
                        .await
                        .map_err(fail("setting MTU / MAC of", name))?;
                    report.written += 1;
                }
                l.index
            }
            Some(l) => {
                tracing::info!(
                    device = name,
                    "tunnel parameters changed: re-creating the device"
                );
                self.delete_link(l.index, name).await?;
                report.devices_created += 1;
                self.create(d, underlay).await?
            }
            None => {
                report.devices_created += 1;
                self.create(d, underlay).await?
            }
        };
        self.ensure_address(index, d, report).await?;
        if !have.is_some_and(|l| l.up && same_tunnel(l, d, underlay)) {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(fail("setting up", name))?;
        }
        Ok(index)
    }

    async fn ensure_address(
        &self,
        index: u32,
        d: &Device,
        report: &mut Report,
    ) -> Result<(), OverlayError> {
        let name = d.af.device();
        let mut have = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(fail("listing addresses of", name))?
        {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                have.push((ip, m));
            }
        }
        let host_len = |ip: &IpAddr| if ip.is_ipv4() { 32 } else { 128 };
        for (ip, m) in have.iter() {
            if Some(*ip) == d.address && m.header.prefix_len == host_len(ip) {
                continue;
            }
            match self.handle.address().del(m.clone()).execute().await {
                Ok(()) => report.removed += 1,
                Err(e) if gone(&e) || errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(fail("removing an address of", name)(e)),
            }
        }
        if let Some(ip) = d.address
            && !have
                .iter()
                .any(|(h, m)| *h == ip && m.header.prefix_len == host_len(&ip))
        {
            let mut req = self
                .handle
                .address()
                .add(index, ip, host_len(&ip))
                .replace();
            if ip.is_ipv6() {
                let m = req.message_mut();
                m.header.flags |= AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute()
                .await
                .map_err(fail("adding the tunnel address to", name))?;
            report.written += 1;
        }
        Ok(())
    }

    async fn delete_link(&self, index: u32, name: &str) -> Result<(), OverlayError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(fail("deleting", name)(e)),
        }
    }

    async fn dump_neigh(
        &self,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, OverlayError> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(m) = s.try_next().await.map_err(fail("listing", "neighbours"))? {
            out.push(m);
        }
        Ok(out)
    }

    /// Makes the kernel equal to `plan`; `underlay` is the interface the
    /// tunnels send through (the one carrying the node's address).
    pub async fn sync(
        &self,
        plan: &Wanted<'_>,
        underlay: Option<&str>,
    ) -> Result<Report, OverlayError> {
        let mut report = Report::default();
        let links = self.links().await?;
        let underlay_index = underlay.and_then(|n| links.get(n)).map(|l| l.index);
        let mut index: BTreeMap<Family, u32> = BTreeMap::new();
        for af in Family::BOTH {
            let have = links.get(af.device());
            match (plan.devices.get(&af), have) {
                (Some(d), have) => {
                    let i = self
                        .ensure_device(d, have, underlay_index, &mut report)
                        .await?;
                    index.insert(af, i);
                }
                (None, Some(l)) => {
                    self.delete_link(l.index, af.device()).await?;
                    report.devices_removed += 1;
                }
                (None, None) => {}
            }
        }
        let by_index: BTreeMap<u32, Family> = index.iter().map(|(af, i)| (*i, *af)).collect();
        self.sync_fdb(plan, &index, &by_index, &mut report).await?;
        self.sync_neigh(plan, &index, &by_index, &mut report)
            .await?;
        self.sync_routes(plan, &index, &by_index, &mut report)
            .await?;
        Ok(report)
    }

    async fn sync_fdb(
        &self,
        plan: &Wanted<'_>,
        index: &BTreeMap<Family, u32>,
        by_index: &BTreeMap<u32, Family>,
        report: &mut Report,
    ) -> Result<(), OverlayError> {
        let mut have: BTreeSet<Fdb> = BTreeSet::new();
        for m in self.dump_neigh(AddressFamily::Bridge).await? {
            let Some(&af) = by_index.get(&m.header.ifindex) else {
                continue;
            };
            let entry = parse_neigh(&m).map(|(_, mac, dst)| Fdb { af, mac, dst });
            match entry {
                Some(f) if plan.fdb.contains(&f) => {
                    have.insert(f);
                }
                _ => {
                    tracing::debug!(device = af.device(), entry = ?entry, "removing an FDB entry");
                    match self.handle.neighbours().del(m).execute().await {
                        Ok(()) => report.removed += 1,
                        Err(e) if gone(&e) => {}
                        Err(e) => return Err(fail("removing an FDB entry of", af.device())(e)),
                    }
                }
            }
        }
        for f in plan.fdb.difference(&have) {
            let Some(&i) = index.get(&f.af) else { continue };
            tracing::debug!(device = f.af.device(), mac = %f.mac, dst = %f.dst, "adding an FDB entry");
            self.handle
                .neighbours()
                .add_bridge(i, &f.mac.0)
                .destination(f.dst)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(fail(
                    "adding FDB entry",
                    format!("{} dst {} on {}", f.mac, f.dst, f.af.device()),
                ))?;
            report.written += 1;
        }
        Ok(())
    }

    async fn sync_neigh(
        &self,
        plan: &Wanted<'_>,
        index: &BTreeMap<Family, u32>,
        by_index: &BTreeMap<u32, Family>,
        report: &mut Report,
    ) -> Result<(), OverlayError> {
        let mut have: BTreeSet<Neigh> = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for m in self.dump_neigh(family).await? {
                let Some(&af) = by_index.get(&m.header.ifindex) else {
                    continue;
                };
                // The kernel's own multicast entries (NOARP, e.g. ff02::16
                // for MLD) are not ours and come back at once.
                if m.header.state == NeighbourState::Noarp {
                    continue;
                }
                let entry = parse_neigh(&m).map(|(_, mac, ip)| Neigh { af, ip, mac });
                match entry {
                    Some(n)
                        if plan.neigh.contains(&n)
                            && m.header.state == NeighbourState::Permanent =>
                    {
                        have.insert(n);
                    }
                    _ => {
                        tracing::debug!(device = af.device(), entry = ?entry, state = ?m.header.state, "removing a neighbour");
                        match self.handle.neighbours().del(m).execute().await {
                            Ok(()) => report.removed += 1,
                            Err(e) if gone(&e) => {}
                            Err(e) => return Err(fail("removing a neighbour of", af.device())(e)),
                        }
                    }
                }
            }
        }
        for n in plan.neigh.difference(&have) {
            let Some(&i) = index.get(&n.af) else { continue };
            tracing::debug!(device = n.af.device(), ip = %n.ip, mac = %n.mac, "adding a neighbour");
            self.handle
                .neighbours()
                .add(i, n.ip)
                .link_layer_address(&n.mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(fail(
                    "adding neighbour",
                    format!("{} lladdr {} on {}", n.ip, n.mac, n.af.device()),
                ))?;
            report.written += 1;
        }
        Ok(())
    }

    async fn sync_routes(
        &self,
        plan: &Wanted<'_>,
        index: &BTreeMap<Family, u32>,
        by_index: &BTreeMap<u32, Family>,
        report: &mut Report,
    ) -> Result<(), OverlayError> {
        let mut right: BTreeSet<IpNetwork> = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = family;
            let mut stale = Vec::new();
            let mut s = self.handle.route().get(q).execute();
            while let Some(m) = s.try_next().await.map_err(fail("listing", "routes"))? {
                if m.header.protocol != RouteProtocol::Other(RTPROT_OVERLAY)
                    || m.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                match parse_route(&m, by_index) {
                    Some((dst, via, metric)) if metric == OVERLAY_METRIC => {
                        if plan.routes.get(&dst) == Some(&via) {
                            right.insert(dst);
                        } else if !plan.routes.contains_key(&dst) {
                            stale.push(m);
                        }
                        // else: replaced below (same destination and metric)
                    }
                    _ => stale.push(m),
                }
            }
            for m in stale {
                tracing::debug!(route = ?parse_route(&m, by_index), "removing an overlay route");
                match self.handle.route().del(m).execute().await {
                    Ok(()) => report.removed += 1,
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(fail("removing", "an overlay route")(e)),
                }
            }
        }
        // Routes to the tunnel addresses first: the block routes use them
        // as their onlink gateways.
        let (to_gateways, rest): (Vec<_>, Vec<_>) = plan
            .routes
            .iter()
            .partition(|(_, via)| matches!(via, Via::Device { .. }));
        for (dst, via) in to_gateways.into_iter().chain(rest) {
            if right.contains(dst) {
                continue;
            }
            let Some(m) = route_message(dst, via, index) else {
                continue;
            };
            tracing::debug!(%dst, ?via, "writing an overlay route");
            self.handle
                .route()
                .add(m)
                .replace()
                .execute()
                .await
                .map_err(fail("writing the route to", dst.to_string()))?;
            report.written += 1;
        }
        Ok(())
    }
}
