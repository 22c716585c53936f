//! IPAM benchmark: allocations per second through the gRPC unix socket at
//! 1, 16 and 64 concurrent callers against the in-memory store with an
//! injected round trip per store call, and store writes per allocation, for
//! group commit next to the one-write-per-allocation baseline (Calico's
//! approach) from the same run.
//!
//! ```text
//! cargo run --release -p ipam --example bench_ipam -- [--latency-ms 2] [--total 2000]
//!     [--callers 1,16,64] [--reuse-connections]
//! ```
//! By default every allocation opens its own connection, as the exec'd CNI
//! plugin does. The driver (`ipam::bench`) takes any `Store`, so the agent
//! runs the same measurement against the Kubernetes API.

use std::sync::Arc;
use std::time::Duration;

use ipam::Store;
use ipam::bench::{self, BenchResult, Mode};
use ipam::memstore::MemStore;
use ipam::model::PoolParams;

struct Args {
    latency: Duration,
    total: usize,
    callers: Vec<usize>,
    per_request: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        latency: Duration::from_millis(2),
        total: 2000,
        callers: vec![1, 16, 64],
        per_request: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--latency-ms" => {
                let ms: f64 = val()?.parse().map_err(|e| format!("--latency-ms: {e}"))?;
                a.latency = Duration::from_secs_f64(ms / 1000.0);
            }
            "--total" => a.total = val()?.parse().map_err(|e| format!("--total: {e}"))?,
            "--callers" => {
                a.callers = val()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--callers: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--reuse-connections" => a.per_request = false,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(a)
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    println!(
        "IPAM benchmark: {} allocations per run, store round trip {:?}, {} connection per allocation",
        args.total,
        args.latency,
        if args.per_request {
            "one"
        } else {
            "one shared"
        }
    );
    println!("pool 198.19.0.0/16, /26 blocks, in-memory store (writes counted by the allocator)\n");
    rt.block_on(async {
        for &c in &args.callers {
            let mut results = Vec::new();
            for mode in [Mode::GroupCommit, Mode::OneWritePerAlloc] {
                let store = Arc::new(MemStore::new(1));
                store.put_pool("bench", PoolParams::new("198.19.0.0/16".parse()?));
                store.set_latency(args.latency);
                let sock = dir.path().join(format!("bench-{c}-{mode:?}.sock"));
                let r = bench::run_once(
                    store.clone() as Arc<dyn Store>,
                    mode,
                    c,
                    args.total,
                    &sock,
                    args.per_request,
                )
                .await?;
                let st = store.stats();
                results.push((r, st));
            }
            let (g, gs) = &results[0];
            let (b, bs) = &results[1];
            println!(
                "{c:>3} callers: {:.1}x the allocations/s, {:.1}x fewer writes/alloc (group commit vs one write per allocation)",
                g.per_sec() / b.per_sec().max(1e-9),
                b.writes_per_alloc() / g.writes_per_alloc().max(1e-9),
            );
            println!("    group commit        {}", line(g));
            println!("    one write per alloc {}", line(b));
            println!(
                "    store calls seen: group {} writes / {} reads, baseline {} writes / {} reads\n",
                gs.writes(),
                gs.gets + gs.lists,
                bs.writes(),
                bs.gets + bs.lists
            );
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
