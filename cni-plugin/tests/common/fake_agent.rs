//! An in-process stand-in for `margay-node`: both gRPC services of
//! `ipam/proto/margay.proto` on a unix socket, an in-memory allocator over
//! one IPv4 and one IPv6 pool, and an `EndpointUp` that installs the /32
//! (/128) host route through the host veth in the node namespace — over a
//! netlink socket opened in that namespace — before it answers, as the
//! real agent must.
//!
//! Shared by the tests, the standalone `fake_agent` example and the
//! benchmark (`#[path]` include), so it uses only this package's deps.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipam::proto::endpoints_server::{Endpoints, EndpointsServer};
use ipam::proto::ipam_server::{Ipam, IpamServer};
use ipam::proto::{
    AllocateReply, AllocateRequest, AllocatedAddress, EndpointDownReply, EndpointDownRequest,
    EndpointUpReply, EndpointUpRequest, Family, GarbageCollectReply, GarbageCollectRequest,
    GetHandleReply, GetHandleRequest, PoolStatus, ReleaseReply, ReleaseRequest, StatusReply,
    StatusRequest,
};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tonic::{Code, Request, Response, Status};

/// How the fake agent behaves.
#[derive(Debug, Clone)]
pub struct FakeAgentOptions {
    /// IPv4 pool (None: no IPv4).
    pub v4: Option<Ipv4Network>,
    /// IPv6 pool (None: no IPv6).
    pub v6: Option<Ipv6Network>,
    /// Node namespace (a /run/netns path) for host routes; None: the
    /// process's own namespace.
    pub node_netns: Option<PathBuf>,
}

impl Default for FakeAgentOptions {
    fn default() -> Self {
        FakeAgentOptions {
            v4: Some("198.19.0.0/24".parse().expect("const")),
            v6: Some("2001:db8::/120".parse().expect("const")),
            node_netns: None,
        }
    }
}

/// One allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
}

/// The agent's state, inspectable by tests.
#[derive(Debug, Default)]
pub struct State {
    /// handle → allocation.
    pub handles: BTreeMap<String, Held>,
    /// handle → EndpointUp request of live endpoints.
    pub endpoints: BTreeMap<String, EndpointUpRequest>,
    /// RPC names in arrival order.
    pub calls: Vec<&'static str>,
    /// Answer EndpointUp with this code instead of working.
    pub fail_endpoint_up: Option<Code>,
    /// Status.ready.
    pub not_ready: bool,
}

#[derive(Clone)]
struct Svc {
    opts: Arc<FakeAgentOptions>,
    state: Arc<Mutex<State>>,
    nl: rtnetlink::Handle,
}

/// A running fake agent; stops when dropped.
pub struct FakeAgent {
    /// The socket it listens on.
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    rt: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeAgent {
    /// Starts serving on `socket` (removed first if it exists).
    pub fn start(socket: &Path, opts: FakeAgentOptions) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let nl = {
            let handle = rt.handle().clone();
            let ns = opts.node_netns.clone();
            let (conn, nl) = std::thread::spawn(move || -> std::io::Result<_> {
                if let Some(ns) = ns {
                    let f = File::open(ns)?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                let _g = handle.enter();
                let (conn, nl, _) = rtnetlink::new_connection()?;
                Ok((conn, nl))
            })
            .join()
            .map_err(|_| std::io::Error::other("netns thread panicked"))??;
            rt.spawn(conn);
            nl
        };
        let _ = std::fs::remove_file(socket);
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(socket)?
        };
        let state = Arc::new(Mutex::new(State::default()));
        let svc = Svc {
            opts: Arc::new(opts),
            state: state.clone(),
            nl,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(IpamServer::new(svc.clone()))
                .add_service(EndpointsServer::new(svc))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FakeAgent {
            socket: socket.to_path_buf(),
            state,
            rt: Some(rt),
            shutdown: Some(tx),
        })
    }

    /// The state, for assertions and fault injection.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops serving and removes the socket.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Svc {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pools(&self) -> Vec<IpNetwork> {
        let mut out = Vec::new();
        if let Some(v4) = self.opts.v4 {
            out.push(IpNetwork::V4(v4));
        }
        if let Some(v6) = self.opts.v6 {
            out.push(IpNetwork::V6(v6));
        }
        out
    }

    fn capacity(net: &IpNetwork) -> u64 {
        // Usable hosts: the network address (and IPv4 broadcast) excluded.
        let bits = u32::from(if net.is_ipv4() { 32u8 } else { 128u8 } - net.prefix()).min(32);
        let all = 1u64 << bits;
        if net.is_ipv4() {
            all.saturating_sub(2)
        } else {
            all.saturating_sub(1)
        }
    }

    fn free_in(net: &IpNetwork, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let cap = Self::capacity(net);
        (1..=cap).find_map(|i| {
            let ip = match net {
                IpNetwork::V4(n) => IpAddr::V4((u32::from(n.network()) + i as u32).into()),
                IpNetwork::V6(n) => IpAddr::V6((u128::from(n.network()) + u128::from(i)).into()),
            };
            (!used.contains(&ip)).then_some(ip)
        })
    }

    async fn host_routes(&self, ifname: &str, ips: &[String], add: bool) -> Result<(), Status> {
        use futures::TryStreamExt;
        let link = self
            .nl
            .link()
            .get()
            .match_name(ifname.to_string())
            .execute()
            .try_next()
            .await;
        let index = match link {
            Ok(Some(l)) => l.header.index,
            Ok(None) | Err(_) if !add => return Ok(()),
            _ => {
                return Err(Status::failed_precondition(format!(
                    "no interface {ifname}"
                )));
            }
        };
        for ip in ips {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| Status::invalid_argument(format!("bad ip {ip}")))?;
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let msg = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(ip, prefix)
                .map_err(|e| Status::internal(e.to_string()))?
                .output_interface(index)
                .scope(netlink_packet_route::route::RouteScope::Link)
                .build();
            let res = if add {
                self.nl.route().add(msg).replace().execute().await
            } else {
                self.nl.route().del(msg).execute().await
            };
            if let Err(e) = res
                && add
            {
                return Err(Status::internal(format!(
                    "route {ip}/{prefix} dev {ifname}: {e}"
                )));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Ipam for Svc {
    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<AllocateReply>, Status> {
        let req = req.into_inner();
        let mut st = self.state();
        st.calls.push("Allocate");
        if st.not_ready {
            return Err(Status::unavailable("not ready"));
        }
        if let Some(h) = st.handles.get(&req.handle) {
            return Ok(Response::new(reply(&h.ips)));
        }
        let mut fams: Vec<bool> = req
            .families
            .iter()
            .map(|f| *f == Family::Ipv6 as i32)
            .collect();
        if fams.is_empty() {
            fams = self.pools().iter().map(IpNetwork::is_ipv6).collect();
        }
        let used: BTreeSet<IpAddr> = st
            .handles
            .values()
            .flat_map(|h| h.ips.iter().copied())
            .collect();
        let mut ips = Vec::new();
        for v6 in fams {
            let Some(pool) = self.pools().into_iter().find(|p| p.is_ipv6() == v6) else {
                return Err(Status::failed_precondition(format!(
                    "no pool for ipv6={v6}"
                )));
            };
            let wanted = req
                .requested_ips
                .iter()
                .filter_map(|s| s.parse::<IpAddr>().ok())
                .find(|ip| ip.is_ipv6() == v6);
            let ip = match wanted {
                Some(ip) if !pool.contains(ip) => {
                    return Err(Status::failed_precondition(format!("{ip} is in no pool")));
                }
                Some(ip) if used.contains(&ip) => {
                    return Err(Status::already_exists(format!("{ip} in use")));
                }
                Some(ip) => ip,
                None => Self::free_in(&pool, &used)
                    .ok_or_else(|| Status::resource_exhausted(format!("pool {pool} full")))?,
            };
            ips.push(ip);
        }
        st.handles.insert(
            req.handle,
            Held {
                ips: ips.clone(),
                pod_namespace: req.pod_namespace,
                pod_name: req.pod_name,
            },
        );
        Ok(Response::new(reply(&ips)))
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        let mut st = self.state();
        st.calls.push("Release");
        let released = st
            .handles
            .remove(&req.into_inner().handle)
            .map(|h| h.ips.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        Ok(Response::new(ReleaseReply {
            released_ips: released,
        }))
    }

    async fn get_handle(
        &self,
        req: Request<GetHandleRequest>,
    ) -> Result<Response<GetHandleReply>, Status> {
        let mut st = self.state();
        st.calls.push("GetHandle");
        Ok(Response::new(
            match st.handles.get(&req.into_inner().handle) {
                Some(h) => GetHandleReply {
                    found: true,
                    addresses: reply(&h.ips).addresses,
                    pod_namespace: h.pod_namespace.clone(),
                    pod_name: h.pod_name.clone(),
                },
                None => GetHandleReply::default(),
            },
        ))
    }

    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        let req = req.into_inner();
        let mut st = self.state();
        st.calls.push("GarbageCollect");
        let prefix = format!("{}.", req.network);
        let stale: Vec<String> = st
            .handles
            .keys()
            .filter(|h| h.starts_with(&prefix) && !req.valid_handles.contains(h))
            .cloned()
            .collect();
        for h in &stale {
            st.handles.remove(h);
        }
        Ok(Response::new(GarbageCollectReply {
            released_handles: stale,
        }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let mut st = self.state();
        st.calls.push("Status");
        let used: Vec<IpAddr> = st
            .handles
            .values()
            .flat_map(|h| h.ips.iter().copied())
            .collect();
        let pools = self
            .pools()
            .iter()
            .map(|p| PoolStatus {
                name: if p.is_ipv4() {
                    "fake-v4".into()
                } else {
                    "fake-v6".into()
                },
                cidr: p.to_string(),
                capacity: Self::capacity(p),
                allocated: used.iter().filter(|ip| p.contains(**ip)).count() as u64,
                disabled: false,
            })
            .collect();
        Ok(Response::new(StatusReply {
            ready: !st.not_ready,
            node: "fake-node".into(),
            pools,
            message: if st.not_ready {
                "datastore not synced".into()
            } else {
                String::new()
            },
        }))
    }
}

#[tonic::async_trait]
impl Endpoints for Svc {
    async fn endpoint_up(
        &self,
        req: Request<EndpointUpRequest>,
    ) -> Result<Response<EndpointUpReply>, Status> {
        let req = req.into_inner();
        let fail = {
            let mut st = self.state();
            st.calls.push("EndpointUp");
            st.fail_endpoint_up
        };
        if let Some(code) = fail {
            return Err(Status::new(code, "injected EndpointUp failure"));
        }
        self.host_routes(&req.host_ifname, &req.ips, true).await?;
        self.state().endpoints.insert(req.handle.clone(), req);
        Ok(Response::new(EndpointUpReply {}))
    }

    async fn endpoint_down(
        &self,
        req: Request<EndpointDownRequest>,
    ) -> Result<Response<EndpointDownReply>, Status> {
        let req = req.into_inner();
        let ep = {
            let mut st = self.state();
            st.calls.push("EndpointDown");
            st.endpoints.remove(&req.handle)
        };
        if let Some(ep) = ep {
            self.host_routes(&ep.host_ifname, &ep.ips, false).await?;
        }
        Ok(Response::new(EndpointDownReply {}))
    }
}

fn reply(ips: &[IpAddr]) -> AllocateReply {
    AllocateReply {
        addresses: ips
            .iter()
            .map(|ip| AllocatedAddress {
                ip: ip.to_string(),
                block: String::new(),
                pool: if ip.is_ipv4() {
                    "fake-v4".into()
                } else {
                    "fake-v6".into()
                },
                borrowed: false,
            })
            .collect(),
    }
}
