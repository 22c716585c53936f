//! `--breakdown`: what one remote pod costs in each copy the agent keeps of
//! it, measured in this process (RSS before and after building each copy
//! of M pods from the benchmark's own Pod JSON, divided by M): the JSON
//! text, the `k8s_openapi` Pod a kube reflector holds (whole, and trimmed
//! to what the agent reads, as its reflector now keeps it), the policy
//! model's `PodInfo` (kept twice: by the agent's mirror and by the engine),
//! and the time each conversion takes. No lab, no root.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use node_agent::dataplane::policy::PodInfo;

use crate::objects::{Family, Layout};
use crate::probe::proc_stats;

fn rss() -> Result<u64> {
    Ok(proc_stats(std::process::id() as i32)?.rss)
}

/// Prints per-pod bytes and µs of each representation for `pods` pods.
pub fn run(pods: usize) -> Result<()> {
    let l = Layout::new(
        (pods / 30).max(1),
        pods,
        (pods / 30).max(10),
        Family::V6,
        std::net::Ipv4Addr::new(198, 18, 0, 11),
    )?;
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / pods as f64;
    let r0 = rss()?;
    let texts: Vec<String> = (0..pods)
        .map(|i| {
            let f = l.pod(i);
            let (mut p, s) = crate::objects::pod(&l, &f);
            p["status"] = s["status"].clone();
            p["metadata"]["uid"] = serde_json::json!(format!("uid-{i}"));
            p["metadata"]["resourceVersion"] = serde_json::json!(i.to_string());
            p.to_string()
        })
        .collect();
    let r1 = rss()?;
    let t = Instant::now();
    let typed: Vec<Arc<Pod>> = texts
        .iter()
        .map(|s| serde_json::from_str(s).map(Arc::new))
        .collect::<Result<_, _>>()
        .context("Pod JSON")?;
    let decode_us = t.elapsed().as_secs_f64() * 1e6 / pods as f64;
    let r2 = rss()?;
    let t = Instant::now();
    let infos: Vec<PodInfo> = typed
        .iter()
        .map(|p| PodInfo::from_k8s(p))
        .collect::<Result<_, _>>()?;
    let convert_us = t.elapsed().as_secs_f64() * 1e6 / pods as f64;
    let r3 = rss()?;
    let trimmed: Vec<Arc<Pod>> = typed
        .iter()
        .map(|p| {
            let mut p = (**p).clone();
            node_agent::k8s::pod::trim_pod(&mut p);
            Arc::new(p)
        })
        .collect();
    let r4 = rss()?;
    let text_len = texts.iter().map(String::len).sum::<usize>() as f64 / pods as f64;
    println!("per pod, over {pods} pods (RSS deltas in this process):");
    println!(
        "  JSON text                          {:>8.0} B (text {text_len:.0} B)",
        per(r0, r1)
    );
    println!(
        "  k8s_openapi Pod (reflector cache)  {:>8.0} B  decode {decode_us:.1} us",
        per(r1, r2)
    );
    println!(
        "  policy PodInfo (one copy)          {:>8.0} B  convert {convert_us:.1} us",
        per(r2, r3)
    );
    println!(
        "  k8s_openapi Pod, trimmed           {:>8.0} B  (node_agent::k8s::pod::trim_pod)",
        per(r3, r4)
    );
    std::hint::black_box((&texts, &typed, &infos, &trimmed));
    Ok(())
}
