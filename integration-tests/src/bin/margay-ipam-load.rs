//! `margay-ipam-load`: one simulated agent's IPAM client — an allocator for
//! one node on the CRD store of an API server — making `--count`
//! allocations from `--callers` concurrent callers, then printing one JSON
//! line of results. The multi-process IPAM test runs many of these at once.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use ipam::{AllocRequest, Allocator, AllocatorOptions, IpamConfig, NodeInfo, Store, SystemClock};
use node_agent::k8s::ipam::store::KubeStore;
use node_agent::status::metrics::Metrics;

#[derive(Parser)]
#[command(about = "Allocate addresses as one node's agent would")]
struct Cli {
    /// API server URL (overrides the kubeconfig's).
    #[arg(long)]
    api_server: Option<String>,
    /// A kubeconfig with the identity to use (the agent's ServiceAccount).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Node name.
    #[arg(long)]
    node: String,
    /// Allocations to make.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    callers: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs on stderr when asked (MARGAY_LOG=ipam=debug), for diagnosis.
    if let Ok(filter) = std::env::var("MARGAY_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let client = node_agent::k8s::client::client(&node_agent::k8s::client::ApiAccess {
        kubeconfig: cli.kubeconfig.clone(),
        api_server: cli.api_server.clone(),
    })
    .await
    .context("client")?;
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(client, metrics.clone()));
    let alloc = Allocator::start(
        store.clone(),
        NodeInfo {
            name: cli.node.clone(),
            labels: Default::default(),
        },
        IpamConfig::default(),
        AllocatorOptions::default(),
        Arc::new(SystemClock),
    )
    .await
    .context("allocator")?;
    let _watch = alloc.follow_block_watch(store);
    let start = Instant::now();
    let per = cli.count.div_ceil(cli.callers.max(1));
    let mut tasks = Vec::new();
    for c in 0..cli.callers.max(1) {
        let (alloc, node) = (alloc.clone(), cli.node.clone());
        let n = per.min(cli.count.saturating_sub(c * per));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0usize, Vec::new());
            for i in 0..n {
                let req = AllocRequest {
                    handle: format!("load.{node}-{c}-{i}"),
                    attrs: ipam::model::AllocationAttrs {
                        pod: Some(format!("pod-{c}-{i}")),
                        namespace: Some(node.clone()),
                        node: None,
                    },
                    families: vec![ipam::Family::V4],
                    ..AllocRequest::default()
                };
                match alloc.allocate(req).await {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, Vec::new());
    for t in tasks {
        let (o, e) = t.await.context("caller task")?;
        ok += o;
        errors.extend(e);
    }
    let m = alloc.metrics();
    println!(
        "{}",
        serde_json::json!({
            "node": cli.node,
            "ok": ok,
            "errors": errors.len(),
            "first_error": errors.first(),
            "secs": start.elapsed().as_secs_f64(),
            "writes": m.writes,
            "conflicts": m.conflicts,
        })
    );
    Ok(())
}
