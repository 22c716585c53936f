//! The overlay task: the one owner of the tunnel devices, their entries
//! and the overlay routes. See [`crate::overlay`] for the channel map.
//!
//! Each pass computes the [`Plan`] from the cluster and the IPAM view, then
//! brings IPAM (this node's tunnel addresses), the kernel
//! ([`OverlayKernel::sync`]) and this node's annotations to it, and
//! publishes the pods' MTU. The kernel is re-read only when the plan moved
//! or the reconcile period passed (repairs what someone else changed);
//! a failed step is retried a second later.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use margay_types::Selector;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Family, Input, Mac, Peer, Plan, PoolFacts, Settings, plan};
use crate::dataplane::vxlan::Tunnel;
use crate::dataplane::vxlan::kernel::OverlayKernel;
use crate::k8s::cluster::{Cluster, Kind};
use crate::k8s::crd::{AllowedUse, IPPool};
use crate::k8s::ipam::view::{IpamView, tunnel_handle};
use crate::k8s::node::NodeIdentity;
use crate::status::health::{Health, Pulse};

/// MTU assumed when the underlay interface cannot be read.
const FALLBACK_MTU: u32 = 1500;
/// A failed pass is retried after this long.
const RETRY: Duration = Duration::from_secs(1);

/// What the task works with.
#[derive(Clone)]
pub struct OverlayDeps {
    /// The cluster view (Nodes, IPPools).
    pub cluster: Cluster,
    /// IPAM view updates.
    pub view: watch::Receiver<Arc<IpamView>>,
    /// IPAM, for this node's tunnel addresses.
    pub alloc: ipam::Allocator,
    /// Who we are.
    pub me: NodeIdentity,
    /// Device settings.
    pub settings: Settings,
    /// Where the pods' MTU is published (read by Allocate).
    pub mtu: Arc<watch::Sender<u32>>,
    /// Liveness and `/status`.
    pub health: Arc<Health>,
    /// How often the kernel is re-read.
    pub reconcile_interval: Duration,
}

/// Another node's overlay facts from its Node object.
pub fn peer_of(n: &Node) -> Peer {
    let facts = crate::k8s::node::node_facts(n);
    let ann = n.metadata.annotations.as_ref();
    let tunnel = |af: Family| -> Option<(IpAddr, Mac)> {
        let (addr_key, mac_key) = super::annotation_keys(af);
        let ip: IpAddr = ann?.get(addr_key)?.parse().ok()?;
        let mac: Mac = ann?.get(mac_key)?.parse().ok()?;
        (Family::of(ip) == af).then_some((ip, mac))
    };
    Peer {
        underlay: [facts.ipv4.map(IpAddr::V4), facts.ipv6.map(IpAddr::V6)],
        tunnel: [tunnel(Family::V4), tunnel(Family::V6)],
    }
}

/// The pools as the overlay sees them; `labels` are this node's.
pub fn pool_facts(pools: &[Arc<IPPool>], labels: &BTreeMap<String, String>) -> Vec<PoolFacts> {
    pools
        .iter()
        .filter_map(|p| {
            let cidr = p.spec.cidr.parse().ok()?;
            Some(PoolFacts {
                name: p.metadata.name.clone().unwrap_or_default(),
                cidr,
                mode: p.spec.effective_vxlan_mode(),
                for_tunnel: !p.spec.disabled
                    && p.spec
                        .effective_allowed_uses()
                        .contains(&AllowedUse::Tunnel)
                    && Selector::compile_opt(p.spec.node_selector.as_ref())
                        .is_ok_and(|s| s.matches(labels)),
            })
        })
        .collect()
}

struct Task {
    d: OverlayDeps,
    kernel: OverlayKernel,
    underlay_if: Option<String>,
    /// The plan the kernel was last brought to.
    applied: Option<Plan>,
    /// The annotations last written to our Node.
    published: Option<BTreeMap<&'static str, Option<String>>>,
    problems: Vec<String>,
    /// Every other node's overlay facts, read again from the Nodes only
    /// when they changed (not for every IPAM view change: at 5,000 nodes
    /// that was most of the agent's CPU under pod churn).
    peers: Option<Arc<BTreeMap<String, Peer>>>,
}

impl Task {
    fn me(&self) -> &str {
        &self.d.me.name
    }

    async fn input_plan(&mut self) -> Plan {
        let me = self.d.me.name.clone();
        let labels = self
            .d
            .cluster
            .nodes
            .get(&kube::runtime::reflector::ObjectRef::new(&me))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        let peers = match &self.peers {
            Some(p) => p.clone(),
            None => {
                let p: Arc<BTreeMap<String, Peer>> = Arc::new(
                    self.d
                        .cluster
                        .nodes
                        .state()
                        .iter()
                        .filter_map(|n| Some((n.metadata.name.clone()?, peer_of(n))))
                        .collect(),
                );
                self.peers = Some(p.clone());
                p
            }
        };
        let pools = pool_facts(&self.d.cluster.pools.state(), &labels);
        let underlay_mtu = match &self.underlay_if {
            Some(i) => match self.kernel.link(i).await {
                Ok(Some((_, mtu))) if mtu > 0 => mtu,
                _ => FALLBACK_MTU,
            },
            None => FALLBACK_MTU,
        };
        let view = self.d.view.borrow().clone();
        plan(&Input {
            me: self.me(),
            underlay: [
                self.d.me.ipv4.as_ref().map(|c| c.addr),
                self.d.me.ipv6.as_ref().map(|c| c.addr),
            ],
            underlay_mtu,
            peers: &peers,
            pools: &pools,
            view: &view,
            settings: &self.d.settings,
        })
    }

    /// Tunnel addresses: give back the stale ones, ask for missing ones.
    /// True when IPAM did what the plan asked.
    async fn tunnel_addresses(&self, p: &Plan) -> bool {
        let mut ok = true;
        for ip in &p.stale_tunnels {
            let handle = tunnel_handle(self.me(), ip.is_ipv6());
            match self.d.alloc.release(&handle).await {
                Ok(ips) => {
                    tracing::info!(handle = %handle, released = ?ips, "VXLAN tunnel address released")
                }
                Err(e) => {
                    tracing::warn!(handle = %handle, error = %e, "releasing the VXLAN tunnel address failed; retrying");
                    ok = false;
                }
            }
        }
        for (af, dev) in &p.devices {
            let pools = &p.tunnel_pools[af.idx()];
            if dev.address.is_some() || pools.is_empty() {
                continue;
            }
            let handle = tunnel_handle(self.me(), af.is_v6());
            let req = ipam::AllocRequest {
                handle: handle.clone(),
                attrs: ipam::model::AllocationAttrs {
                    node: Some(self.me().to_string()),
                    ..Default::default()
                },
                families: vec![*af],
                pool_hints: pools.clone(),
                requested_ips: Vec::new(),
                use_: Some(AllowedUse::Tunnel),
            };
            match self.d.alloc.allocate(req).await {
                Ok(a) => {
                    tracing::info!(handle = %handle, addresses = ?a.iter().map(|a| a.ip).collect::<Vec<_>>(), "VXLAN tunnel address allocated")
                }
                Err(e) => {
                    tracing::warn!(handle = %handle, error = %e, "allocating the VXLAN tunnel address failed; retrying");
                    ok = false;
                }
            }
        }
        ok
    }

    /// One pass; true when every step succeeded.
    async fn pass(&mut self, reread_kernel: bool) -> bool {
        let p = self.input_plan().await;
        if p.problems != self.problems {
            for pr in &p.problems {
                tracing::warn!(problem = %pr, "overlay");
            }
            self.problems = p.problems.clone();
            self.d
                .health
                .set_status("overlay_problems", serde_json::json!(p.problems));
        }
        // First: an Allocate waiting for it answers at once.
        self.d.mtu.send_if_modified(|m| {
            let moved = *m != p.pod_mtu;
            if moved {
                tracing::info!(mtu = p.pod_mtu, "pod MTU");
            }
            *m = p.pod_mtu;
            moved
        });
        let mut ok = self.tunnel_addresses(&p).await;
        if reread_kernel || self.applied.as_ref() != Some(&p) {
            match self
                .kernel
                .sync(&p.kernel(), self.underlay_if.as_deref())
                .await
            {
                Ok(r) => {
                    if r.changed() {
                        tracing::info!(
                            devices = ?p.devices.keys().map(|a| a.device()).collect::<Vec<_>>(),
                            routes = p.routes.len(),
                            vteps = p.fdb.len(),
                            created = r.devices_created,
                            removed_devices = r.devices_removed,
                            written = r.written,
                            removed = r.removed,
                            "overlay synced"
                        );
                    }
                    self.applied = Some(p.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %crate::logging::chain(&e), "overlay sync failed; retrying");
                    self.applied = None;
                    ok = false;
                }
            }
        }
        let wanted = p.annotations();
        if self.published.as_ref() != Some(&wanted) {
            match crate::k8s::node::patch_node_annotations(
                &self.d.cluster.client(),
                self.me(),
                &wanted,
            )
            .await
            {
                Ok(()) => self.published = Some(wanted),
                Err(e) => {
                    tracing::warn!(error = %e, "publishing the VXLAN tunnel annotations failed; retrying");
                    ok = false;
                }
            }
        }
        self.d.health.set_status(
            "overlay",
            serde_json::json!({
                "devices": p.devices.values().map(|d| serde_json::json!({
                    "name": d.af.device(), "vni": d.vni, "port": d.port, "mtu": d.mtu,
                    "mac": d.mac.to_string(), "address": d.address.map(|a| a.to_string()),
                })).collect::<Vec<_>>(),
                "routes": p.routes.len(),
                "vteps": p.fdb.len(),
                "pod_mtu": p.pod_mtu,
            }),
        );
        ok
    }
}

/// Runs the overlay task (on a runtime in the node's namespace) until the
/// cluster view goes away.
pub async fn run(d: OverlayDeps, mut pulse: Pulse) {
    let kernel = match OverlayKernel::connect() {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "no netlink socket: the VXLAN overlay is not managed");
            return pulse.retire();
        }
    };
    let underlay_if =
        d.me.ipv4
            .as_ref()
            .or(d.me.ipv6.as_ref())
            .and_then(|c| c.ifname.clone());
    let mut gens = d.cluster.subscribe();
    let mut seen = gens.borrow().clone();
    let mut view = d.view.clone();
    let mut tick = tokio::time::interval(d.reconcile_interval);
    let mut t = Task {
        d,
        kernel,
        underlay_if,
        applied: None,
        published: None,
        problems: Vec::new(),
        peers: None,
    };
    let mut dirty = true;
    let mut reread = true;
    let mut retry_at: Option<Instant> = None;
    loop {
        if dirty && view.borrow().synced && seen.all_synced() {
            dirty = false;
            if t.pass(std::mem::take(&mut reread)).await {
                retry_at = None;
            } else {
                retry_at = Some(Instant::now() + RETRY);
            }
        }
        tokio::select! {
            r = gens.changed() => {
                if r.is_err() { return pulse.retire(); }
                let now = gens.borrow().clone();
                let moved = now.changed_since(&seen);
                if moved.contains(&Kind::Node) || now.all_synced() != seen.all_synced() {
                    t.peers = None;
                }
                if moved.iter().any(|k| matches!(k, Kind::Node | Kind::IpPool))
                    || now.all_synced() != seen.all_synced()
                {
                    dirty = true;
                }
                seen = now;
            }
            r = view.changed() => {
                if r.is_err() { return pulse.retire(); }
                dirty = true;
            }
            _ = tick.tick() => {
                dirty = true;
                reread = true;
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                dirty = true;
                reread = true;
            }
            () = pulse.tick() => {}
        }
    }
}
