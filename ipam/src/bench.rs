//! Benchmark driver (used by `examples/bench_ipam.rs`; the agent reuses it
//! with its Kubernetes store): allocations per second through the gRPC unix
//! socket at a given number of concurrent callers, and store writes per
//! allocation, for group commit and for the one-write-per-request baseline.
//!
//! The store is whatever the caller passes (fresh, with the pool already
//! created), so the same figures can be taken against the in-memory store
//! with injected latency or against a real API server.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alloc::{Allocator, AllocatorOptions, NodeInfo, SystemClock};
use cni_proto::uds::{self, ServeError, UdsListener};

use crate::grpc;
use crate::model::IpamConfig;
use crate::store::Store;
use cni_proto::proto;

/// How the allocator commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Concurrent requests share one write per block.
    GroupCommit,
    /// One write per request, requests serialized (Calico's host-wide IPAM
    /// lock and per-allocation block update).
    OneWritePerAlloc,
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Commit mode.
    pub mode: Mode,
    /// Concurrent callers.
    pub callers: usize,
    /// Successful allocations.
    pub allocations: usize,
    /// Failed allocations.
    pub errors: usize,
    /// Wall time of the allocation phase.
    pub elapsed: Duration,
    /// Store writes issued by the allocator during the phase.
    pub writes: u64,
    /// Median request latency.
    pub p50: Duration,
    /// 99th percentile request latency.
    pub p99: Duration,
}

impl BenchResult {
    /// Allocations per second.
    pub fn per_sec(&self) -> f64 {
        self.allocations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Writes per allocation.
    pub fn writes_per_alloc(&self) -> f64 {
        self.writes as f64 / (self.allocations.max(1)) as f64
    }
}

/// Benchmark failures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The allocator did not start.
    #[error("allocator start")]
    Start(#[source] crate::error::IpamError),
    /// The socket could not be served.
    #[error("serving the socket")]
    Serve(#[source] ServeError),
    /// A caller could not connect.
    #[error("connecting to the socket")]
    Connect(#[source] tonic::transport::Error),
}

/// Runs `total` allocations from `callers` concurrent callers through a
/// fresh allocator serving `socket`, over `store`. With `connect_per_request`
/// each allocation opens its own connection, as the exec'd CNI plugin does.
pub async fn run_once(
    store: Arc<dyn Store>,
    mode: Mode,
    callers: usize,
    total: usize,
    socket: &Path,
    connect_per_request: bool,
) -> Result<BenchResult, BenchError> {
    let opts = AllocatorOptions {
        group_commit: mode == Mode::GroupCommit,
        ..Default::default()
    };
    let alloc = Allocator::start(
        store,
        NodeInfo {
            name: "bench-node".into(),
            labels: Default::default(),
        },
        IpamConfig::default(),
        opts,
        Arc::new(SystemClock),
    )
    .await
    .map_err(BenchError::Start)?;
    let listener = UdsListener::bind(socket).await.map_err(BenchError::Serve)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(grpc::ipam_routes(alloc.clone()), async {
        let _ = stop_rx.await;
    }));

    let callers = callers.max(1);
    let per = total.div_ceil(callers);
    let before = alloc.metrics().writes;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let socket = socket.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            let mut errors = 0usize;
            let mut shared = None;
            for i in 0..per {
                let t = Instant::now();
                let client = if connect_per_request {
                    uds::connect_uds(&socket).await
                } else if let Some(c) = &shared {
                    Ok(Clone::clone(c))
                } else {
                    let c = uds::connect_uds(&socket).await;
                    if let Ok(c) = &c {
                        shared = Some(c.clone());
                    }
                    c
                };
                let mut client = client.map_err(BenchError::Connect)?;
                let r = client
                    .allocate(proto::AllocateRequest {
                        handle: format!("bench.c{c}-{i}"),
                        pod_namespace: "bench".into(),
                        pod_name: format!("pod-{c}-{i}"),
                        families: vec![proto::Family::Ipv4 as i32],
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            Ok::<_, BenchError>((lat, errors))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok((l, e))) => {
                lat.extend(l);
                errors += e;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => errors += per,
        }
    }
    let elapsed = start.elapsed();
    let writes = alloc.metrics().writes - before;
    let _ = stop_tx.send(());
    let _ = server.await;
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(BenchResult {
        mode,
        callers,
        allocations: lat.len(),
        errors,
        elapsed,
        writes,
        p50: pct(0.5),
        p99: pct(0.99),
    })
}
