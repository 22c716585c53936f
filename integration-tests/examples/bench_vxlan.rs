//! Benchmark (not a test): pod-to-pod TCP throughput across two nodes,
//! routed by BGP (`vxlanMode: Never`, the node-to-node mesh) vs through
//! VXLAN (`vxlanMode: Always`), next to the anchor of two pods on one node
//! (veth to veth, no policy), in the same run. Needs root and iperf3.
//!
//! ```text
//! cargo build --release -p node-agent -p cni-plugin -p integration-tests --bins
//! cargo run --release -p integration-tests --example bench_vxlan -- \
//!     [--rounds 3] [--secs 3] [--quick]
//! ```
//!
//! Two lab nodes on one underlay subnet (MTU 1500), the real agents, the
//! API test server, pods wired by the real CNI plugin. The pools switch
//! mode between measurements (interleaved rounds, so machine noise hits
//! every figure): the routed pair was created under `Never` (pod MTU 1500),
//! the VXLAN pair under `Always` (the agent gives them the tunnel MTU:
//! 1500 - 70 with both families in VXLAN), each as Margay would run them.
//! Every measurement checks that the traffic took the path it names (the
//! route's device; for VXLAN, the tunnel device's tx bytes at least what
//! iperf3 received; for routed, no tunnel device at all) and that bytes
//! flowed; otherwise the benchmark fails instead of printing.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use integration_tests::cni::{self, WiredPod};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Daemon, Lab, Netns};
use kube::Api;
use kube::api::{Patch, PatchParams};
use node_agent::k8s::crd::IPPool;

const IPERF_PORT: u16 = 5201;
const POOLS: [(&str, &str); 2] = [("v4", "198.19.0.0/16"), ("v6", "2001:db8:100::/48")];

fn arg(name: &str, default: usize) -> usize {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn set_mode(lab: &Lab, mode: &str) -> Result<()> {
    let mode = mode.to_string();
    k8s::with_client(lab.tor(), move |c| async move {
        for (p, _) in POOLS {
            Api::<IPPool>::all(c.clone())
                .patch(
                    p,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"vxlanMode": mode}})),
                )
                .await?;
        }
        Ok::<_, kube::Error>(())
    })??;
    Ok(())
}

/// Waits until `node` routes `dst` out of `dev`.
fn wait_route(node: &Netns, dst: IpAddr, dev: &str) -> Result<()> {
    lab::wait_for(
        &format!("{} routes {dst} via {dev}", node.name()),
        Duration::from_secs(20),
        || Ok((node.route_dev(dst).as_deref() == Some(dev)).then_some(())),
    )
    .map_err(|e| anyhow!("{e} (it routes via {:?})", node.route_dev(dst)))
}

fn pod(lab: &Lab, agent: &Agent, name: &str) -> Result<(WiredPod, Daemon)> {
    let p = cni::add_pod(lab, agent, "bench", name, &[], &[])?;
    if !p.result.ok {
        bail!("ADD {name}: {:?}", p.result);
    }
    let log = lab.run_dir().join(format!("iperf3-{name}.log"));
    let d = Daemon::spawn(
        &p.ns,
        &format!("iperf3-{name}"),
        &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        &log,
    )?;
    Ok((p, d))
}

fn addr(p: &WiredPod, v6: bool) -> Result<IpAddr> {
    if v6 { p.ipv6() } else { p.ipv4() }.with_context(|| format!("{v6} address of a pod"))
}

/// iperf3 from `client` to `server`: (Gbit/s, bytes received). A fresh
/// server may not listen yet: a refused start is retried for a while.
fn iperf(client: &Netns, server: IpAddr, secs: usize) -> Result<(f64, u64)> {
    let mut tries = 0;
    let out = loop {
        match client.exec(&[
            "iperf3",
            "-c",
            &server.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ]) {
            Ok(out) => break out,
            Err(_) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => bail!("iperf3 to {server}: {e}"),
        }
    };
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let r = &v["end"]["sum_received"];
    let (bps, bytes) = (r["bits_per_second"].as_f64(), r["bytes"].as_u64());
    match (bps, bytes) {
        (Some(b), Some(n)) if n > 0 => Ok((b / 1e9, n)),
        _ => bail!("iperf3 to {server}: no data received: {r}"),
    }
}

fn tunnel(v6: bool) -> &'static str {
    if v6 {
        "vxlan-v6.margay"
    } else {
        "vxlan.margay"
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = arg("--rounds", if quick { 1 } else { 3 }).max(1);
    let secs = arg("--secs", if quick { 1 } else { 3 }).max(1);
    lab::can_run().map_err(|why| anyhow!("cannot run: {why}"))?;
    if std::process::Command::new("iperf3")
        .arg("-v")
        .output()
        .is_err()
    {
        bail!("iperf3 is missing: run scripts/install-deps");
    }
    let lab = Lab::builder().nodes(2).build()?;
    let _api = k8s::start_apiserver(&lab)?;
    // Default BGP configuration: the node-to-node mesh routes under Never.
    k8s::bootstrap(&lab, &POOLS)?;
    set_mode(&lab, "Never")?;
    let agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &["--log-level", "warn"]))
        .collect::<std::result::Result<_, _>>()?;
    let (n1, n2) = (&lab.node("n1")?.ns, &lab.node("n2")?.ns);
    // Routed pods (MTU 1500), and the same-node anchor.
    let (r1, _d1) = pod(&lab, &agents[0], "routed-1")?;
    let (r2, _d2) = pod(&lab, &agents[1], "routed-2")?;
    let (local, _d3) = pod(&lab, &agents[0], "local")?;
    // VXLAN pods, created while the pools are in Always (tunnel MTU).
    set_mode(&lab, "Always")?;
    for n in [n1, n2] {
        for v6 in [false, true] {
            lab::wait_for(
                &format!("{} on {}", tunnel(v6), n.name()),
                Duration::from_secs(20),
                || Ok(n.link_stats(tunnel(v6)).map(|_| ())),
            )?;
        }
    }
    let (x1, _d4) = pod(&lab, &agents[0], "vxlan-1")?;
    let (x2, _d5) = pod(&lab, &agents[1], "vxlan-2")?;
    let mtu = |p: &WiredPod| p.ns.link_stats("eth0").map_or(0, |s| s.mtu);
    println!(
        "pod MTU: routed {} | VXLAN {} | tunnel devices {} (v4) {} (v6)",
        mtu(&r1),
        mtu(&x1),
        n1.link_stats(tunnel(false)).map_or(0, |s| s.mtu),
        n1.link_stats(tunnel(true)).map_or(0, |s| s.mtu),
    );

    // A mode counts as reached when both nodes route every remote pod of
    // both families the way it says (and, under Never, have no tunnel).
    let converge = |mode: &str| -> Result<()> {
        set_mode(&lab, mode)?;
        for v6 in [false, true] {
            for (node, dst) in [(n1, &r2), (n1, &x2), (n2, &r1), (n2, &x1)] {
                let dev = if mode == "Never" { "eth0" } else { tunnel(v6) };
                wait_route(node, addr(dst, v6)?, dev).map_err(|e| {
                    let log = lab.run_dir().join(format!(
                        "{}-agent.log",
                        &node.name()[node.name().len() - 2..]
                    ));
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains("overlay") || l.contains("VXLAN"))
                        .collect();
                    anyhow!(
                        "{e}\nroutes:\n{}{}\nagent log (overlay):\n{}",
                        node.ip(&["route"]).unwrap_or_default(),
                        node.ip(&["-6", "route"]).unwrap_or_default(),
                        tail[tail.len().saturating_sub(15)..].join("\n")
                    )
                })?;
            }
        }
        if mode == "Never" {
            for v6 in [false, true] {
                lab::wait_for(
                    &format!("{} removed", tunnel(v6)),
                    Duration::from_secs(20),
                    || Ok(n1.link_stats(tunnel(v6)).is_none().then_some(())),
                )?;
            }
        }
        Ok(())
    };
    let mut figures: [[Vec<f64>; 3]; 2] = Default::default(); // [family][local, routed, vxlan]
    for round in 0..rounds {
        // Routed: no tunnel device, the routes out of the underlay.
        converge("Never")?;
        for v6 in [false, true] {
            let f = &mut figures[usize::from(v6)];
            f[0].push(iperf(&r1.ns, addr(&local, v6)?, secs)?.0);
            f[1].push(iperf(&r1.ns, addr(&r2, v6)?, secs)?.0);
        }
        // VXLAN: the routes into the tunnel, which carries the bytes.
        converge("Always")?;
        for v6 in [false, true] {
            let before = n1.link_stats(tunnel(v6)).map_or(0, |s| s.tx_bytes);
            let (gbps, bytes) = iperf(&x1.ns, addr(&x2, v6)?, secs)?;
            let through = n1
                .link_stats(tunnel(v6))
                .map_or(0, |s| s.tx_bytes)
                .saturating_sub(before);
            if through < bytes {
                bail!(
                    "round {round}: iperf3 moved {bytes} bytes but {} sent only {through}: not through the tunnel",
                    tunnel(v6)
                );
            }
            figures[usize::from(v6)][2].push(gbps);
        }
    }
    println!("\n== pod-to-pod TCP, iperf3, {rounds} round(s) x {secs} s, medians (Gbit/s) ==");
    for (v6, f) in figures.iter().enumerate() {
        let [l, r, x] = [0, 1, 2].map(|i| median(f[i].clone()));
        println!(
            "{}: ratio VXLAN/routed {:.3} | routed across nodes (BGP) {r:.2} | VXLAN across nodes {x:.2} | same-node veth anchor {l:.2} (routed/veth {:.3}, VXLAN/veth {:.3})",
            if v6 == 1 { "IPv6" } else { "IPv4" },
            x / r,
            r / l,
            x / l,
        );
    }
    drop(agents);
    Ok(())
}
