//! The `Endpoints` gRPC service the CNI plugin calls after wiring a pod
//! (EndpointUp) and when tearing it down (EndpointDown). It validates the
//! request and hands it to the dataplane controller, answering only when the
//! kernel is programmed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_proto::proto::endpoints_server::{Endpoints, EndpointsServer};
use cni_proto::proto::{
    EndpointDownReply, EndpointDownRequest, EndpointUpReply, EndpointUpRequest,
};
use tonic::{Request, Response, Status};

use crate::cni_api::confirm::Confirmations;
use crate::dataplane::veth::VethName;
use crate::endpoints::{ControllerHandle, Endpoint, EndpointError};
use crate::status::metrics::Metrics;

/// How long EndpointUp may wait for the dataplane before failing with
/// UNAVAILABLE (the CNI then reports "try again later").
pub const PROGRAMMING_TIMEOUT: Duration = Duration::from_secs(20);

/// The service.
pub struct EndpointsService {
    controller: ControllerHandle,
    metrics: Arc<Metrics>,
    confirmations: Confirmations,
    reserve: Option<ipam::reserve::Reserve>,
}

impl EndpointsService {
    /// A tonic server for it. With a reserve, EndpointUp checks that the
    /// pod's addresses are recorded as its own (see [`Self::recorded`]).
    pub fn server(
        controller: ControllerHandle,
        metrics: Arc<Metrics>,
        confirmations: Confirmations,
        reserve: Option<ipam::reserve::Reserve>,
    ) -> EndpointsServer<Self> {
        EndpointsServer::new(EndpointsService {
            controller,
            metrics,
            confirmations,
            reserve,
        })
    }

    /// Whether the allocation of `ep` is durably recorded before its
    /// endpoint goes up: a reserve unit it took (recorded under the unit's
    /// handle, moved to the pod's in the background), or the outcome of an
    /// early answer's write, or — with a reserve — the pod's handle holding
    /// its addresses. The last one catches a pod answered from a unit by an
    /// agent that restarted before the pod's EndpointUp: the restarted
    /// agent may have handed that unit out again.
    async fn recorded(&self, ep: &Endpoint) -> Result<(), Status> {
        if let Some(r) = &self.reserve {
            match r.holds(&ep.handle, &ep.ips) {
                Some(true) => return Ok(()),
                Some(false) => {
                    return Err(Status::aborted(format!(
                        "the reserve unit taken for {} is not {:?} or could not be moved to it",
                        ep.handle, ep.ips
                    )));
                }
                None => {}
            }
        }
        self.confirmations
            .confirm(&ep.handle, &ep.ips, PROGRAMMING_TIMEOUT)
            .await
            .map_err(|e| Status::aborted(e.to_string()))?;
        let Some(r) = &self.reserve else {
            return Ok(());
        };
        let held: Vec<IpAddr> = r
            .allocator()
            .get_handle(&ep.handle)
            .await
            .map_err(|e| ipam::grpc::status_of(&e))?
            .map(|h| h.addresses.iter().map(|a| a.ip).collect())
            .unwrap_or_default();
        match ep.ips.iter().find(|ip| !held.contains(ip)) {
            None => Ok(()),
            Some(ip) => Err(Status::aborted(format!(
                "{ip} is not allocated to {} (held: {held:?}); the agent may have restarted during this ADD",
                ep.handle
            ))),
        }
    }

    fn observe(&self, op: &str, started: Instant, res: &Result<(), Status>) {
        self.metrics
            .observe_cni(op, started, res.as_ref().err().map(Status::code));
    }
}

fn valid_host_if(name: &str) -> Result<(), Status> {
    VethName::parse(name)
        .map(drop)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn to_status(e: EndpointError) -> Status {
    match e {
        EndpointError::NoInterface(_) => Status::failed_precondition(e.to_string()),
        EndpointError::Route(_) => Status::internal(e.to_string()),
        EndpointError::Policy(_) | EndpointError::PodUnknown(..) => {
            Status::unavailable(e.to_string())
        }
        EndpointError::Stopped => Status::unavailable(e.to_string()),
    }
}

/// Parses and checks an EndpointUp request.
pub fn endpoint_from(req: &EndpointUpRequest) -> Result<Endpoint, Status> {
    valid_host_if(&req.host_ifname)?;
    if req.container_id.is_empty() || req.handle.is_empty() {
        return Err(Status::invalid_argument(
            "container_id and handle are required",
        ));
    }
    // Both empty: a standalone workload (the runtime gave no pod identity).
    if req.pod_namespace.is_empty() != req.pod_name.is_empty() {
        return Err(Status::invalid_argument(
            "pod_namespace and pod_name must both be given (a pod) or both be empty (a standalone workload)",
        ));
    }
    if req.ips.is_empty() {
        return Err(Status::invalid_argument("no pod addresses"));
    }
    let ips = req
        .ips
        .iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| Status::invalid_argument(format!("{s:?} is not an IP address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoint {
        container_id: req.container_id.clone(),
        namespace: req.pod_namespace.clone(),
        pod: req.pod_name.clone(),
        host_if: req.host_ifname.clone(),
        ips,
        handle: req.handle.clone(),
        netns: req.netns.clone(),
        ifname: req.ifname.clone(),
    })
}

#[tonic::async_trait]
impl Endpoints for EndpointsService {
    async fn endpoint_up(
        &self,
        request: Request<EndpointUpRequest>,
    ) -> Result<Response<EndpointUpReply>, Status> {
        let started = Instant::now();
        let res = async {
            let ep = endpoint_from(request.get_ref())?;
            // The addresses must be recorded first (an early answer's
            // write, or a reserve unit).
            self.recorded(&ep).await?;
            let confirmed = started.elapsed();
            let res = match tokio::time::timeout(PROGRAMMING_TIMEOUT, self.controller.up(ep)).await
            {
                Ok(r) => r.map_err(to_status),
                Err(_) => Err(Status::unavailable(
                    "dataplane did not program the endpoint in time",
                )),
            };
            tracing::debug!(
                confirm_us = confirmed.as_micros() as u64,
                program_us = (started.elapsed() - confirmed).as_micros() as u64,
                "EndpointUp: allocation record confirmed, then route and policy"
            );
            res
        }
        .await;
        self.observe("endpoint_up", started, &res);
        res.map(|()| Response::new(EndpointUpReply {}))
    }

    async fn endpoint_down(
        &self,
        request: Request<EndpointDownRequest>,
    ) -> Result<Response<EndpointDownReply>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let res = async {
            if !req.host_ifname.is_empty() {
                valid_host_if(&req.host_ifname)?;
            }
            if req.container_id.is_empty() && req.handle.is_empty() {
                return Err(Status::invalid_argument(
                    "container_id or handle is required",
                ));
            }
            match tokio::time::timeout(
                PROGRAMMING_TIMEOUT,
                self.controller
                    .down(req.container_id.clone(), req.handle.clone()),
            )
            .await
            {
                Ok(r) => r.map_err(to_status),
                Err(_) => Err(Status::unavailable(
                    "dataplane did not remove the endpoint in time",
                )),
            }
        }
        .await;
        self.observe("endpoint_down", started, &res);
        res.map(|()| Response::new(EndpointDownReply {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> EndpointUpRequest {
        EndpointUpRequest {
            container_id: "c1".into(),
            pod_namespace: "x".into(),
            pod_name: "a".into(),
            host_ifname: "cali0123456789a".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/p".into(),
            ips: vec!["198.19.0.2".into(), "2001:db8::2".into()],
            handle: "net.c1".into(),
        }
    }

    #[test]
    fn requests_are_validated_with_clear_errors() {
        let ep = endpoint_from(&req()).expect("valid");
        assert_eq!(ep.ips.len(), 2);
        assert!(!ep.standalone());
        let mut r = req();
        r.pod_namespace.clear();
        r.pod_name.clear();
        assert!(endpoint_from(&r).expect("standalone is valid").standalone());
        for (mutate, needle) in [
            (
                Box::new(|r: &mut EndpointUpRequest| r.host_ifname = "eth0".into())
                    as Box<dyn Fn(&mut EndpointUpRequest)>,
                "not a Margay pod interface",
            ),
            (
                Box::new(|r: &mut EndpointUpRequest| r.host_ifname = "cali0123456789abc".into()),
                "not a Margay pod interface",
            ),
            (
                Box::new(|r: &mut EndpointUpRequest| r.ips = vec!["198.19.0.300".into()]),
                "not an IP address",
            ),
            (
                Box::new(|r: &mut EndpointUpRequest| r.ips.clear()),
                "no pod addresses",
            ),
            (
                Box::new(|r: &mut EndpointUpRequest| r.pod_name.clear()),
                "both be given",
            ),
            (
                Box::new(|r: &mut EndpointUpRequest| r.handle.clear()),
                "required",
            ),
        ] {
            let mut r = req();
            mutate(&mut r);
            let e = endpoint_from(&r).expect_err("invalid");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(needle), "{}", e.message());
        }
    }

    /// CNI GC knows only the IPAM handle of what it released: the service
    /// must pass that handle on (it used to pass the host interface name
    /// in its place, so a release by handle found nothing).
    #[tokio::test]
    async fn endpoint_down_hands_the_controller_the_ipam_handle() {
        let (controller, mut rx) = ControllerHandle::channel(4);
        let svc = EndpointsService {
            controller,
            metrics: Arc::new(Metrics::new()),
            confirmations: Confirmations::default(),
            reserve: None,
        };
        let answer = tokio::spawn(async move {
            let Some(crate::endpoints::Cmd::Down {
                container_id,
                handle,
                reply,
            }) = rx.recv().await
            else {
                panic!("no Down command");
            };
            let _ = reply.send(Ok(()));
            (container_id, handle)
        });
        svc.endpoint_down(Request::new(EndpointDownRequest {
            handle: "k8s-pod-network.c9".into(),
            host_ifname: "cali0123456789a".into(),
            ..Default::default()
        }))
        .await
        .expect("down");
        assert_eq!(
            answer.await.expect("controller side"),
            (String::new(), "k8s-pod-network.c9".to_string())
        );
    }

    /// EndpointUp passes for the addresses a pod took from the reserve (no
    /// write awaited), and fails for a unit this agent did not give it —
    /// what a restarted agent sees of an ADD it answered before the
    /// restart, whose unit it may hand out again.
    #[tokio::test]
    async fn endpoint_up_wants_the_addresses_recorded_for_the_pod() {
        use ipam::reserve::{Reserve, ReserveOptions};
        let store = Arc::new(ipam::memstore::MemStore::new(1));
        let mut p = ipam::PoolParams::new("198.19.0.0/16".parse().expect("cidr"));
        p.block_size = Some(26);
        store.put_pool("p4", p);
        let alloc = ipam::Allocator::start(
            store.clone() as Arc<dyn ipam::Store>,
            ipam::NodeInfo {
                name: "n1".into(),
                labels: Default::default(),
            },
            ipam::IpamConfig::default(),
            ipam::AllocatorOptions::default(),
            Arc::new(ipam::SystemClock),
        )
        .await
        .expect("allocator");
        let svc = |r: &Reserve| EndpointsService {
            controller: ControllerHandle::channel(1).0,
            metrics: Arc::new(Metrics::new()),
            confirmations: Confirmations::default(),
            reserve: Some(r.clone()),
        };
        let ep = |handle: &str, ips: Vec<IpAddr>| Endpoint {
            container_id: "c1".into(),
            namespace: "default".into(),
            pod: "p".into(),
            host_if: "cali0123456789a".into(),
            ips,
            handle: handle.into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
        };
        let r = Reserve::new(alloc.clone(), ReserveOptions::with_size(2));
        r.recover(&[]).await.expect("recover");
        r.refill().await;
        let attrs = ipam::model::AllocationAttrs::default();
        let got: Vec<IpAddr> = r
            .take("net.a", &attrs, &[], &[])
            .expect("unit")
            .iter()
            .map(|a| a.ip)
            .collect();
        let s = svc(&r);
        s.recorded(&ep("net.a", got.clone())).await.expect("taken");
        let wrong = vec!["198.19.99.1".parse().expect("ip")];
        let e = s
            .recorded(&ep("net.a", wrong))
            .await
            .expect_err("not its unit");
        assert_eq!(e.code(), tonic::Code::Aborted);

        // A restarted agent: the unit is the reserve's, not net.a's.
        let r2 = Reserve::new(alloc.clone(), ReserveOptions::with_size(2));
        r2.recover(&[]).await.expect("recover");
        let e = svc(&r2)
            .recorded(&ep("net.a", got.clone()))
            .await
            .expect_err("not recorded for net.a");
        assert_eq!(e.code(), tonic::Code::Aborted);
        assert!(
            e.message().contains("not allocated to net.a"),
            "{}",
            e.message()
        );

        // Once moved, the allocator's record answers.
        assert!(!r.move_pending().await);
        s.recorded(&ep("net.a", got)).await.expect("moved");
    }
}
