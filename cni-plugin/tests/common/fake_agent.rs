//! An in-process stand-in for `margay-node`: the real `Ipam` gRPC service
//! (`ipam::grpc`, the agent's allocator over the in-memory store
//! `ipam::memstore::MemStore`) plus a fake `Endpoints` service whose
//! `EndpointUp` installs the /32 (/128) host route through the host veth in
//! the node namespace — over a netlink socket opened in that namespace —
//! before it answers, as the real agent must. Both on one unix socket,
//! bound with `cni_proto::uds::UdsListener` like the agent does.
//!
//! Shared by the tests, the standalone `fake_agent` example and the
//! benchmark (`#[path]` include), so it uses only this package's deps.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cni_proto::proto::endpoints_server::{Endpoints, EndpointsServer};
use cni_proto::proto::ipam_server::{Ipam, IpamServer};
use cni_proto::proto::{
    AllocateReply, AllocateRequest, EndpointDownReply, EndpointDownRequest, EndpointUpReply,
    EndpointUpRequest, GarbageCollectReply, GarbageCollectRequest, GetHandleReply,
    GetHandleRequest, ReleaseReply, ReleaseRequest, StatusReply, StatusRequest,
};
use cni_proto::uds::UdsListener;
use ipam::grpc::IpamService;
use ipam::memstore::MemStore;
use ipam::{
    AllocRequest, Allocator, AllocatorOptions, Cidr, HandleInfo, IpamConfig, NodeInfo, PoolParams,
    Store, SystemClock,
};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct FakeAgentOptions {
    /// IPv4 pool (None: no IPv4). Blocks are /26, or the pool itself if smaller.
    pub v4: Option<Ipv4Network>,
    /// IPv6 pool (None: no IPv6). Blocks are /122, or the pool itself if smaller.
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

/// What tests observe and inject besides the allocations.
#[derive(Debug, Default)]
pub struct State {
    /// handle → EndpointUp request of live endpoints.
    pub endpoints: BTreeMap<String, EndpointUpRequest>,
    /// RPC names in arrival order (both services).
    pub calls: Vec<&'static str>,
    /// Answer EndpointUp with this code instead of working.
    pub fail_endpoint_up: Option<Code>,
    /// Answer Allocate with this code instead of working.
    pub fail_allocate: Option<Code>,
}

/// The real `Ipam` service, recording calls.
struct Recorded {
    inner: IpamService,
    state: Arc<Mutex<State>>,
}

impl Recorded {
    fn note(&self, call: &'static str) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .push(call);
    }
}

#[tonic::async_trait]
impl Ipam for Recorded {
    async fn allocate(
        &self,
        r: Request<AllocateRequest>,
    ) -> Result<Response<AllocateReply>, Status> {
        self.note("Allocate");
        let fail = self.state.lock().expect("state").fail_allocate;
        if let Some(code) = fail {
            return Err(Status::new(code, "injected"));
        }
        self.inner.allocate(r).await
    }
    async fn release(&self, r: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        self.note("Release");
        self.inner.release(r).await
    }
    async fn get_handle(
        &self,
        r: Request<GetHandleRequest>,
    ) -> Result<Response<GetHandleReply>, Status> {
        self.note("GetHandle");
        self.inner.get_handle(r).await
    }
    async fn garbage_collect(
        &self,
        r: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        self.note("GarbageCollect");
        self.inner.garbage_collect(r).await
    }
    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.note("Status");
        self.inner.status(r).await
    }
}

/// The fake `Endpoints` service.
#[derive(Clone)]
struct Eps {
    state: Arc<Mutex<State>>,
    nl: rtnetlink::Handle,
}

/// A running agent; stops when dropped.
pub struct FakeAgent {
    /// The socket it listens on.
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    store: Arc<MemStore>,
    alloc: Allocator,
    rt: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

fn pool(net: IpNetwork, default_block: u8) -> Result<PoolParams, String> {
    let cidr: Cidr = net
        .to_string()
        .parse()
        .map_err(|e| format!("{net}: {e:?}"))?;
    let mut p = PoolParams::new(cidr);
    p.block_size = Some(net.prefix().max(default_block));
    Ok(p)
}

impl FakeAgent {
    /// Starts serving on `socket` (a stale socket there is replaced).
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
        let store = Arc::new(MemStore::new(1));
        if let Some(v4) = opts.v4 {
            store.put_pool(
                "pool-v4",
                pool(IpNetwork::V4(v4), 26).map_err(std::io::Error::other)?,
            );
        }
        if let Some(v6) = opts.v6 {
            store.put_pool(
                "pool-v6",
                pool(IpNetwork::V6(v6), 122).map_err(std::io::Error::other)?,
            );
        }
        let alloc = rt
            .block_on(Allocator::start(
                store.clone() as Arc<dyn Store>,
                NodeInfo {
                    name: "fake-node".into(),
                    labels: Default::default(),
                },
                IpamConfig::default(),
                AllocatorOptions {
                    // Fail fast when a test takes the store down.
                    max_attempts: 2,
                    ..Default::default()
                },
                Arc::new(SystemClock),
            ))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let listener = rt
            .block_on(UdsListener::bind(socket))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let state = Arc::new(Mutex::new(State::default()));
        let routes = Routes::new(IpamServer::new(Recorded {
            inner: IpamService::new(alloc.clone()),
            state: state.clone(),
        }))
        .add_service(EndpointsServer::new(Eps {
            state: state.clone(),
            nl,
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(listener.serve(routes, async {
            let _ = rx.await;
        }));
        Ok(FakeAgent {
            socket: socket.to_path_buf(),
            state,
            store,
            alloc,
            rt: Some(rt),
            shutdown: Some(tx),
        })
    }

    /// Endpoints, call log and fault injection.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => panic!("agent stopped"),
        }
    }

    /// Every handle with its addresses, as stored in the IPAM blocks.
    pub fn held(&self) -> BTreeMap<String, Vec<IpAddr>> {
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for b in self.store.snapshot_blocks() {
            for a in &b.spec.allocations {
                if let Some(ip) = b.spec.cidr.nth(u128::from(a.ordinal)) {
                    out.entry(a.handle.clone()).or_default().push(ip);
                }
            }
        }
        out
    }

    /// What the allocator says about a handle.
    pub fn handle(&self, handle: &str) -> Option<HandleInfo> {
        self.block_on(self.alloc.get_handle(handle)).ok().flatten()
    }

    /// Allocates behind the plugin's back (another network, a leak).
    pub fn allocate(&self, handle: &str) -> Vec<IpAddr> {
        let req = AllocRequest {
            handle: handle.to_string(),
            ..Default::default()
        };
        self.block_on(self.alloc.allocate(req))
            .map(|v| v.iter().map(|a| a.ip).collect())
            .unwrap_or_default()
    }

    /// Releases behind the plugin's back.
    pub fn release(&self, handle: &str) {
        let _ = self.block_on(self.alloc.release(handle));
    }

    /// Takes the datastore down (not ready) or brings it back (ready).
    pub fn set_ready(&self, ready: bool) {
        self.store.set_unavailable(!ready);
        let _ = self.block_on(self.alloc.refresh());
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

impl Eps {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
impl Endpoints for Eps {
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
