//! The gRPC service over a real unix socket in a temporary directory.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;

use cni_proto::proto::endpoints_server::{Endpoints, EndpointsServer};
use cni_proto::proto::{self, Family as PF};
use cni_proto::uds::{self, ServeError, UdsListener};
use ipam::grpc;
use ipam::memstore::MemStore;
use ipam::model::{IpamConfig, PoolParams};
use ipam::{Allocator, AllocatorOptions, NodeInfo, Store, SystemClock};
use tonic::{Code, Request, Response, Status};

struct FakeEndpoints;

#[tonic::async_trait]
impl Endpoints for FakeEndpoints {
    async fn endpoint_up(
        &self,
        r: Request<proto::EndpointUpRequest>,
    ) -> Result<Response<proto::EndpointUpReply>, Status> {
        if r.into_inner().ips.is_empty() {
            return Err(Status::invalid_argument("no ips"));
        }
        Ok(Response::new(proto::EndpointUpReply {}))
    }
    async fn endpoint_down(
        &self,
        _r: Request<proto::EndpointDownRequest>,
    ) -> Result<Response<proto::EndpointDownReply>, Status> {
        Ok(Response::new(proto::EndpointDownReply {}))
    }
}

fn alloc_req(handle: &str, fams: &[PF]) -> proto::AllocateRequest {
    proto::AllocateRequest {
        handle: handle.into(),
        pod_namespace: "default".into(),
        pod_name: format!("pod-{handle}"),
        families: fams.iter().map(|f| *f as i32).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn ipam_and_endpoints_over_one_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/margay/margay.sock");
    let store = Arc::new(MemStore::new(1));
    let mut p = PoolParams::new("198.19.0.0/29".parse().unwrap());
    p.block_size = Some(30);
    store.put_pool("p4", p);
    let alloc = Allocator::start(
        store.clone() as Arc<dyn Store>,
        NodeInfo {
            name: "n1".into(),
            labels: Default::default(),
        },
        IpamConfig::default(),
        AllocatorOptions::default(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();

    let listener = UdsListener::bind(&path).await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A second server on the same path is refused while the first listens.
    assert!(matches!(
        UdsListener::bind(&path).await,
        Err(ServeError::InUse(_))
    ));
    let routes = grpc::ipam_routes(alloc.clone()).add_service(EndpointsServer::new(FakeEndpoints));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(routes, async {
        let _ = stop_rx.await;
    }));

    let mut c = uds::connect_uds(&path).await.unwrap();
    let r = c
        .allocate(alloc_req("net.c1", &[PF::Ipv4]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.addresses.len(), 1);
    let ip = r.addresses[0].ip.clone();
    assert!(ip.starts_with("198.19.0."), "{ip}");
    assert_eq!(r.addresses[0].pool, "p4");
    assert!(!r.addresses[0].borrowed);

    let h = c
        .get_handle(proto::GetHandleRequest {
            handle: "net.c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(h.found);
    assert_eq!(h.pod_name, "pod-net.c1");
    assert_eq!(h.addresses[0].ip, ip);

    // Error codes.
    let code = |r: Result<Response<proto::AllocateReply>, Status>| r.unwrap_err().code();
    assert_eq!(
        code(c.allocate(alloc_req("net.v6", &[PF::Ipv6])).await),
        Code::FailedPrecondition
    );
    let mut bad = alloc_req("net.x", &[PF::Ipv4]);
    bad.families = vec![42];
    assert_eq!(code(c.allocate(bad).await), Code::InvalidArgument);
    let mut other = alloc_req("net.x", &[PF::Ipv4]);
    other.node = "n2".into();
    assert_eq!(code(c.allocate(other).await), Code::InvalidArgument);
    let mut taken = alloc_req("net.y", &[]);
    taken.requested_ips = vec![ip.clone()];
    assert_eq!(code(c.allocate(taken).await), Code::AlreadyExists);
    store.set_unavailable(true);
    assert_eq!(
        code(c.allocate(alloc_req("net.down", &[PF::Ipv4])).await),
        Code::Unavailable
    );
    store.set_unavailable(false);
    for i in 0..7 {
        c.allocate(alloc_req(&format!("net.f{i}"), &[PF::Ipv4]))
            .await
            .unwrap();
    }
    assert_eq!(
        code(c.allocate(alloc_req("net.full", &[PF::Ipv4])).await),
        Code::ResourceExhausted
    );

    let st = c
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.node, "n1");
    assert_eq!(st.pools[0].capacity, 8);
    assert_eq!(st.pools[0].allocated, 8);

    let rel = c
        .release(proto::ReleaseRequest {
            handle: "net.c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rel.released_ips, vec![ip]);
    let gc = c
        .garbage_collect(proto::GarbageCollectRequest {
            network: "net".into(),
            valid_handles: (0..6).map(|i| format!("net.f{i}")).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gc.released_handles, vec!["net.f6".to_string()]);

    // The Endpoints service shares the socket.
    let mut e = uds::connect_endpoints_uds(&path).await.unwrap();
    e.endpoint_up(proto::EndpointUpRequest {
        ips: vec!["198.19.0.1".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    stop_tx.send(()).unwrap();
    drop((c, e));
    server.await.unwrap().unwrap();
    assert!(!path.exists(), "socket removed on shutdown");
    assert!(uds::connect_uds(&path).await.is_err());
}

#[tokio::test]
async fn stale_socket_is_replaced_and_other_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("margay.sock");
    // A socket left behind by a dead process.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let l = UdsListener::bind(&path).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(l);
    assert!(!path.exists(), "dropping the listener removes the socket");
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(
        UdsListener::bind(&path).await,
        Err(ServeError::NotASocket(_))
    ));
}

#[tokio::test]
async fn bench_driver_runs_and_counts_writes() {
    use ipam::bench::{Mode, run_once};
    let dir = tempfile::tempdir().unwrap();
    for (mode, max_writes) in [(Mode::GroupCommit, 40), (Mode::OneWritePerAlloc, 40)] {
        let store = Arc::new(MemStore::new(1));
        store.put_pool("p4", PoolParams::new("198.19.0.0/16".parse().unwrap()));
        let sock = dir.path().join(format!("{mode:?}.sock"));
        let r = run_once(store.clone() as Arc<dyn Store>, mode, 4, 40, &sock, false)
            .await
            .unwrap();
        assert_eq!((r.allocations, r.errors), (40, 0), "{mode:?}");
        assert!(
            r.writes >= 1 && r.writes <= max_writes,
            "{mode:?}: {} writes",
            r.writes
        );
        // The allocator's count matches what the store saw.
        assert_eq!(r.writes, store.stats().writes(), "{mode:?}");
        if mode == Mode::OneWritePerAlloc {
            assert_eq!(r.writes, 40);
        }
        assert!(!sock.exists());
    }
}
