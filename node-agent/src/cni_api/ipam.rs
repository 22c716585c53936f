//! [`AgentIpam`], the `Ipam` gRPC service the CNI plugin calls: the
//! `ipam` crate's service, plus the addresses a Pod asks for in its
//! `margay.dev/ip-addrs` annotation (a JSON list, as Calico's
//! `cni.projectcalico.org/ipAddrs`), the endpoint prepared while the
//! allocation is recorded, the early answer (see [`super`]) and request
//! metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_proto::proto::ipam_server::{Ipam, IpamServer};
use cni_proto::proto::{
    AllocateReply, AllocateRequest, GarbageCollectReply, GarbageCollectRequest, GetHandleReply,
    GetHandleRequest, ReleaseReply, ReleaseRequest, StatusReply, StatusRequest,
};
use ipam::grpc::IpamService;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::cni_api::confirm::Confirmations;
use crate::dataplane::veth::VethName;
use crate::endpoints::{ControllerHandle, Endpoint};
use crate::k8s::cluster::Cluster;
use crate::status::metrics::Metrics;

pub use crate::k8s::pod::{ANN_IP_ADDRS, requested_by_annotation};

/// The `Ipam` service served on the CNI socket.
pub struct AgentIpam {
    inner: IpamService,
    cluster: Cluster,
    metrics: Arc<Metrics>,
    controller: Option<ControllerHandle>,
    confirmations: Confirmations,
    mtu: watch::Receiver<u32>,
    reserve: Option<ipam::reserve::Reserve>,
}

impl AgentIpam {
    /// A tonic server over `alloc`.
    pub fn server(
        alloc: ipam::Allocator,
        cluster: Cluster,
        metrics: Arc<Metrics>,
        controller: Option<ControllerHandle>,
        confirmations: Confirmations,
        mtu: watch::Receiver<u32>,
        reserve: Option<ipam::reserve::Reserve>,
    ) -> IpamServer<Self> {
        IpamServer::new(AgentIpam {
            inner: IpamService::new(alloc),
            cluster,
            metrics,
            controller,
            confirmations,
            mtu,
            reserve,
        })
    }

    /// The answer from a reserve unit, if the request is one a unit can
    /// answer (no specific addresses, this node, families and pool hints
    /// the unit fits): no write on its path. The pod's policy is prepared
    /// as on the write path.
    fn take_reserved(&self, req: &AllocateRequest) -> Option<AllocateReply> {
        let r = self.reserve.as_ref()?;
        if !req.requested_ips.is_empty() {
            return None;
        }
        // A request the allocator would refuse takes the write path, which
        // answers with the error.
        let a = ipam::grpc::parse_request(r.allocator().node(), req.clone()).ok()?;
        let got = r.take(&a.handle, &a.attrs, &a.families, &a.pool_hints)?;
        if let (Some(c), Some(who)) = (&self.controller, prepared_identity(req))
            && let Some(ep) = with_ips(&who, got.iter().map(|a| a.ip).collect())
        {
            c.prepare(ep);
        }
        tracing::debug!(handle = %req.handle, ips = ?got.iter().map(|a| a.ip).collect::<Vec<_>>(), "Allocate answered from the reserve");
        Some(AllocateReply {
            addresses: got.iter().map(ipam::grpc::to_proto).collect(),
            ..Default::default()
        })
    }

    fn observe<T>(&self, op: &str, started: Instant, res: &Result<T, tonic::Status>) {
        self.metrics
            .observe_cni(op, started, res.as_ref().err().map(tonic::Status::code));
    }
}

/// Copies the reserve's figures into the metrics every `period` (for the
/// agent's life).
pub async fn reserve_metrics(
    reserve: ipam::reserve::Reserve,
    metrics: Arc<Metrics>,
    period: Duration,
) {
    use crate::status::metrics::ReserveLabels;
    let mut last = ipam::reserve::ReserveMetrics::default();
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let m = reserve.metrics();
        let l = |w: &str| ReserveLabels { what: w.into() };
        let units = &metrics.ipam_reserve_units;
        units.get_or_create(&l("ready")).set(m.ready as i64);
        units.get_or_create(&l("taken")).set(m.moves_pending as i64);
        for (what, now, before) in [
            ("take", m.takes, last.takes),
            ("fallback", m.fallbacks, last.fallbacks),
            ("refill", m.refilled, last.refilled),
            ("refill_failure", m.refill_failures, last.refill_failures),
            ("move", m.moves, last.moves),
            ("move_failure", m.move_failures, last.move_failures),
            ("dropped", m.dropped, last.dropped),
        ] {
            metrics
                .ipam_reserve_events
                .get_or_create(&l(what))
                .inc_by(now.saturating_sub(before));
        }
        last = m;
    }
}

/// One allocation, run to its end. The pod's policy is programmed as soon
/// as the addresses are chosen, in parallel with the block write and with
/// the CNI plugin's wiring, so EndpointUp finds it in place (see
/// `Cmd::Prepare`); with `early`, those addresses are also the Allocate
/// answer and the write's outcome is recorded for EndpointUp to confirm
/// (see [`super`]). The final answer decides: other addresses are prepared
/// again, a failure drops what was prepared.
async fn allocate_prepared(
    inner: IpamService,
    req: AllocateRequest,
    c: ControllerHandle,
    who: Endpoint,
    early: Option<(Confirmations, tokio::sync::oneshot::Sender<Vec<IpAddr>>)>,
) -> Result<Response<AllocateReply>, Status> {
    let handle = req.handle.clone();
    let (picked_tx, picked_rx) = tokio::sync::oneshot::channel();
    let prepare = async {
        let mut ips: Vec<IpAddr> = picked_rx.await.ok()?;
        ips.sort();
        c.prepare(with_ips(&who, ips.clone())?);
        // The allocator announces only complete fresh allocations (every
        // family): the answer the write confirms unless it loses a race.
        let record = early.map(|(confirmations, tx)| {
            let record = confirmations.pending(&handle);
            let _ = tx.send(ips.clone());
            record
        });
        Some((ips, record))
    };
    let (res, prepared) = tokio::join!(
        inner.allocate_notify(Request::new(req), Some(picked_tx)),
        prepare
    );
    let mut fin: Vec<IpAddr> = match &res {
        Ok(r) => r
            .get_ref()
            .addresses
            .iter()
            .filter_map(|a| a.ip.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    fin.sort();
    let (prepared, record) = prepared.unzip();
    if let Some(record) = record.flatten() {
        record.send_replace(Some(match &res {
            Ok(_) => Ok(fin.clone()),
            Err(s) => Err(s.message().to_string()),
        }));
    }
    match (&res, prepared) {
        (Err(_), Some(_)) => c.forget_prepared(),
        (Ok(_), Some(p)) if p == fin => {}
        (Ok(_), _) => {
            if let Some(ep) = with_ips(&who, fin) {
                c.prepare(ep);
            }
        }
        (Err(_), None) => {}
    }
    res
}

/// How long an Allocate waits for the overlay's first pass to tell the
/// pods' MTU (only right after the agent started).
const MTU_WAIT: Duration = Duration::from_secs(2);

/// The pods' MTU as the overlay works it out; right after start-up, until
/// its first pass, waits for it (bounded by [`MTU_WAIT`]). 0: not known
/// (the overlay task is not running): the plugin then detects one itself.
async fn pod_mtu(mtu: &watch::Receiver<u32>) -> u32 {
    let mut rx = mtu.clone();
    match tokio::time::timeout(MTU_WAIT, rx.wait_for(|m| *m > 0)).await {
        Ok(Ok(m)) => *m,
        Ok(Err(_)) | Err(_) => {
            tracing::debug!("the overlay has not told the pods' MTU: the plugin detects it");
            0
        }
    }
}

fn join_status(
    r: Result<Result<Response<AllocateReply>, Status>, tokio::task::JoinError>,
) -> Result<Response<AllocateReply>, Status> {
    r.unwrap_or_else(|e| Err(Status::internal(format!("allocation task failed: {e}"))))
}

/// What an Allocate request says about the endpoint-to-be: everything but
/// its addresses (left empty). None for a caller that is not the CNI plugin.
fn prepared_identity(req: &AllocateRequest) -> Option<Endpoint> {
    if req.container_id.is_empty() || req.ifname.is_empty() || req.handle.is_empty() {
        return None; // an older or non-CNI caller: nothing to prepare
    }
    Some(Endpoint {
        container_id: req.container_id.clone(),
        namespace: req.pod_namespace.clone(),
        pod: req.pod_name.clone(),
        host_if: VethName::for_attachment(
            &req.pod_namespace,
            &req.pod_name,
            &req.handle,
            &req.ifname,
        )
        .into(),
        ips: Vec::new(),
        handle: req.handle.clone(),
        netns: String::new(),
        ifname: req.ifname.clone(),
    })
}

/// `who` with these addresses; None without any.
fn with_ips(who: &Endpoint, ips: Vec<IpAddr>) -> Option<Endpoint> {
    (!ips.is_empty()).then(|| Endpoint { ips, ..who.clone() })
}

#[tonic::async_trait]
impl Ipam for AgentIpam {
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateReply>, Status> {
        let started = Instant::now();
        let mut req = request.into_inner();
        let res = async {
            if req.requested_ips.is_empty() && !req.pod_name.is_empty() {
                let key = ObjectRef::<Pod>::new(&req.pod_name).within(&req.pod_namespace);
                if let Some(pod) = self.cluster.pods.get(&key) {
                    req.requested_ips = requested_by_annotation(&pod)
                        .map_err(Status::invalid_argument)?
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                }
            }
            if let Some(reply) = self.take_reserved(&req) {
                return Ok(Response::new(reply));
            }
            let (Some(c), Some(who)) = (self.controller.clone(), prepared_identity(&req)) else {
                return self.inner.allocate(Request::new(req)).await;
            };
            // The allocation runs as its own task, so that an early answer
            // does not cut it short.
            let (early_tx, early_rx) = tokio::sync::oneshot::channel();
            let early = req
                .confirm_at_endpoint_up
                .then(|| (self.confirmations.clone(), early_tx));
            let mut task = tokio::spawn(allocate_prepared(self.inner.clone(), req, c, who, early));
            // The early answer if there is one, else the final one.
            tokio::select! {
                biased;
                ips = early_rx => match ips {
                    Ok(ips) => {
                        tracing::debug!(?ips, "Allocate answered before its record; EndpointUp confirms");
                        Ok(Response::new(AllocateReply {
                            addresses: ips
                                .iter()
                                .map(|ip| cni_proto::proto::AllocatedAddress {
                                    ip: ip.to_string(),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        }))
                    }
                    Err(_) => join_status(task.await),
                },
                res = &mut task => join_status(res),
            }
        }
        .await;
        let res = match res {
            Ok(mut r) => {
                r.get_mut().mtu = pod_mtu(&self.mtu).await;
                Ok(r)
            }
            Err(e) => Err(e),
        };
        self.observe("allocate", started, &res);
        res
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        let started = Instant::now();
        let res = match &self.reserve {
            // The pod may still hold a reserve unit (its move not done).
            Some(r) => r
                .release(&request.into_inner().handle)
                .await
                .map(|ips| {
                    Response::new(ReleaseReply {
                        released_ips: ips.iter().map(ToString::to_string).collect(),
                    })
                })
                .map_err(|e| ipam::grpc::status_of(&e)),
            None => self.inner.release(request).await,
        };
        self.observe("release", started, &res);
        res
    }

    async fn get_handle(
        &self,
        request: Request<GetHandleRequest>,
    ) -> Result<Response<GetHandleReply>, Status> {
        let started = Instant::now();
        let taken = self
            .reserve
            .as_ref()
            .and_then(|r| r.taken_by(&request.get_ref().handle));
        let res = match taken {
            // Answered from a unit whose move is not done.
            Some(addresses) => Ok(Response::new(GetHandleReply {
                found: true,
                addresses: addresses.iter().map(ipam::grpc::to_proto).collect(),
                ..Default::default()
            })),
            None => self.inner.get_handle(request).await,
        };
        self.observe("get_handle", started, &res);
        res
    }

    async fn garbage_collect(
        &self,
        request: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        let started = Instant::now();
        let res = self.inner.garbage_collect(request).await;
        self.observe("garbage_collect", started, &res);
        res
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let started = Instant::now();
        let res = self.inner.status(request).await;
        self.observe("status", started, &res);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn pod(ann: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: ann.map(|v| [(ANN_IP_ADDRS.to_string(), v.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_annotation_asks_for_addresses_and_bad_ones_are_refused() {
        assert_eq!(requested_by_annotation(&pod(None)), Ok(vec![]));
        assert_eq!(
            requested_by_annotation(&pod(Some(r#"["198.19.0.10", "2001:db8::a"]"#))),
            Ok(vec![
                "198.19.0.10".parse().expect("ip"),
                "2001:db8::a".parse().expect("ip")
            ])
        );
        let e = requested_by_annotation(&pod(Some("198.19.0.10"))).expect_err("not JSON");
        assert!(e.contains("JSON list"), "{e}");
        let e = requested_by_annotation(&pod(Some(r#"["198.19.0.300"]"#))).expect_err("bad ip");
        assert!(e.contains("198.19.0.300"), "{e}");
    }
}
