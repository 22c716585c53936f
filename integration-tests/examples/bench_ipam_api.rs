//! IPAM benchmark against the Kubernetes API test server: allocations per
//! second through the agent's gRPC socket at 1, 16 and 64 concurrent
//! callers, with the IPAM state in IPAMBlock custom resources over HTTP and
//! an added round trip per API request, and API writes per allocation —
//! group commit next to one write per allocation (Calico's approach), from
//! the same run.
//!
//! ```text
//! cargo run --release -p integration-tests --example bench_ipam_api -- [--latency-ms 2] [--total 2000] [--callers 1,16,64]
//! ```

use std::sync::Arc;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Config};
use integration_tests::k8s;
use ipam::Store;
use ipam::bench::{self, BenchResult, Mode};
use node_agent::k8s::crd::IPPool;
use node_agent::k8s::ipam::store::KubeStore;
use node_agent::status::metrics::Metrics;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn line(r: &BenchResult) -> String {
    format!(
        "{:>8.0} alloc/s  {:>6.3} writes/alloc  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ok, {} errors, {:.2} s)",
        r.per_sec(),
        r.writes_per_alloc(),
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.allocations,
        r.errors,
        r.elapsed.as_secs_f64()
    )
}

async fn one(
    mode: Mode,
    callers: usize,
    total: usize,
    latency: Duration,
) -> anyhow::Result<BenchResult> {
    // A fresh API server per run: every run starts from an empty pool.
    let server = ApiServer::start(Config {
        latency,
        ..Config::default()
    })
    .await?;
    let client = kube::Client::try_from(server.admin_config())?;
    k8s::install_crds(&client).await?;
    k8s::apply_json::<IPPool>(
        &client,
        serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPPool",
            "metadata": {"name": "bench"}, "spec": {"cidr": "198.19.0.0/16", "blockSize": 26}}),
    )
    .await?;
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(client, Arc::new(Metrics::new())));
    let dir = tempfile::tempdir()?;
    let r = bench::run_once(
        store,
        mode,
        callers,
        total,
        &dir.path().join("bench.sock"),
        true,
    )
    .await?;
    server.shutdown().await?;
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    let latency = Duration::from_secs_f64(arg("--latency-ms", 2.0) / 1000.0);
    let total: usize = arg("--total", 2000);
    let callers: Vec<usize> = arg("--callers", "1,16,64".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "IPAM through the agent's socket, state in IPAMBlock objects on the API test server (+{:?} per request);",
        latency
    );
    println!(
        "{total} allocations per run from one /16 pool with /26 blocks; one connection per allocation, as the CNI plugin makes\n"
    );
    rt.block_on(async {
        for &c in &callers {
            let g = one(Mode::GroupCommit, c, total, latency).await?;
            let b = one(Mode::OneWritePerAlloc, c, total, latency).await?;
            println!(
                "{c:>3} callers: {:.1}x the allocations/s, {:.1}x fewer API writes per allocation (group commit vs one write per allocation)",
                g.per_sec() / b.per_sec().max(1e-9),
                b.writes_per_alloc() / g.writes_per_alloc().max(1e-9),
            );
            println!("    group commit        {}", line(&g));
            println!("    one write per alloc {}\n", line(&b));
        }
        Ok::<_, anyhow::Error>(())
    })
}
