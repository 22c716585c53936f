//! Writes the simulated cluster into the API server over its HTTP API, as
//! the cluster's controllers would (creates, and each Pod's status as the
//! kubelet reports it), many requests at a time; and the label churn.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

use crate::objects::{self, Layout, PodFacts, TIERS};

/// Requests in flight while loading.
const CONCURRENCY: usize = 48;

/// One request; the body on success, an error naming the request and the
/// server's answer otherwise.
pub async fn call(
    c: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(kube::client::Body::from(body))
        .map_err(|e| anyhow!("{method} {path}: {e}"))?;
    let resp = c
        .send(req)
        .await
        .map_err(|e| anyhow!("{method} {path}: {e}"))?;
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("{method} {path}: reading the answer: {e}"))?
        .to_bytes();
    if !(200..300).contains(&code) {
        bail!(
            "{method} {path}: {code} {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(bytes.to_vec())
}

async fn create(c: &kube::Client, path: &str, obj: &Value) -> Result<()> {
    call(
        c,
        "POST",
        path,
        "application/json",
        serde_json::to_vec(obj)?,
    )
    .await?;
    Ok(())
}

fn pods_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods")
}

fn endpoint_path(ns: &str) -> String {
    format!("/apis/crd.margay.dev/v1/namespaces/{ns}/podendpoints")
}

/// Creates every object of the layout; returns the number written. With
/// `endpoints`, every pod of a simulated node (not the lab node's: its
/// agent publishes those) gets its PodEndpoint, as its agent would write it.
pub async fn load(c: &kube::Client, l: &Layout, endpoints: bool) -> Result<usize> {
    let l = Arc::new(l.clone());
    let mut written = 0;
    for n in 0..l.namespaces {
        create(c, "/api/v1/namespaces", &objects::namespace(&l, n)).await?;
        written += 1;
    }
    create(c, "/apis/crd.margay.dev/v1/ippools", &objects::pool(&l)).await?;
    create(
        c,
        "/apis/crd.margay.dev/v1/bgpconfigurations",
        &objects::bgp_configuration(false),
    )
    .await?;
    written += 2;
    for (p, s, f) in objects::dns_pods(&l) {
        let name = f.name.clone();
        let made = call(
            c,
            "POST",
            &pods_path("kube-system"),
            "application/json",
            serde_json::to_vec(&p)?,
        )
        .await?;
        patch_status(c, "kube-system", &name, &s).await?;
        written += 1;
        if endpoints && f.node != 0 {
            let made: Value = serde_json::from_slice(&made)?;
            let uid = made["metadata"]["uid"].as_str().unwrap_or_default();
            let mut ep = objects::pod_endpoint(&l, &f, uid);
            ep["spec"]["labels"] = json!({"k8s-app": "kube-dns"});
            create(c, &endpoint_path("kube-system"), &ep).await?;
            written += 1;
        }
    }
    // Nodes (the lab node exists already), blocks, pods, policies.
    written += run_all(c, 1..l.nodes, {
        let l = l.clone();
        move |c, k| {
            let l = l.clone();
            async move { create(&c, "/api/v1/nodes", &objects::node(&l, k)).await }
        }
    })
    .await?;
    let blocks = l.nodes * l.blocks_per_node;
    written += run_all(c, 0..blocks, {
        let l = l.clone();
        move |c, b| {
            let l = l.clone();
            async move {
                let obj = objects::ipam_block(&l, b / l.blocks_per_node, b % l.blocks_per_node);
                create(&c, "/apis/crd.margay.dev/v1/ipamblocks", &obj).await
            }
        }
    })
    .await?;
    written += run_all(c, 0..l.pods, {
        let l = l.clone();
        move |c, i| {
            let l = l.clone();
            async move {
                let f = l.pod(i);
                let (pod, status) = objects::pod(&l, &f);
                let made = call(
                    &c,
                    "POST",
                    &pods_path(&f.namespace),
                    "application/json",
                    serde_json::to_vec(&pod)?,
                )
                .await?;
                patch_status(&c, &f.namespace, &f.name, &status).await?;
                if endpoints && f.node != 0 {
                    let made: Value = serde_json::from_slice(&made)?;
                    let uid = made["metadata"]["uid"].as_str().unwrap_or_default();
                    let ep = objects::pod_endpoint(&l, &f, uid);
                    create(&c, &endpoint_path(&f.namespace), &ep).await?;
                }
                Ok(())
            }
        }
    })
    .await?
        * if endpoints { 2 } else { 1 };
    written += run_all(c, 0..l.namespaces, {
        let l = l.clone();
        move |c, n| {
            let l = l.clone();
            async move {
                let ns = l.namespace(n);
                for p in objects::namespace_policies(&l, n)? {
                    create(
                        &c,
                        &format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
                        &p,
                    )
                    .await?;
                }
                Ok(())
            }
        }
    })
    .await?
        * objects::PER_NS_POLICIES;
    Ok(written)
}

async fn patch_status(c: &kube::Client, ns: &str, name: &str, status: &Value) -> Result<()> {
    call(
        c,
        "PATCH",
        &format!("{}/{name}/status", pods_path(ns)),
        "application/merge-patch+json",
        serde_json::to_vec(status)?,
    )
    .await?;
    Ok(())
}

/// Runs `f(client, i)` for every `i`, `CONCURRENCY` at a time; the count.
async fn run_all<F, Fut>(c: &kube::Client, range: std::ops::Range<usize>, f: F) -> Result<usize>
where
    F: Fn(kube::Client, usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let n = range.len();
    let mut s = futures::stream::iter(range.map(|i| f(c.clone(), i))).buffer_unordered(CONCURRENCY);
    while let Some(r) = s.next().await {
        r?;
    }
    Ok(n)
}

/// A pod whose label the churn flips, and whether this node must see it.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod: PodFacts,
    pub observable: bool,
}

/// One label change sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub ip: IpAddr,
    pub at: Instant,
    pub observable: bool,
}

/// The churn's pods: every remote pod of tier web or cache, shuffled by
/// a fixed hash (reproducible), with whether flipping its tier must reach
/// this node's ruleset (see [`Layout::covered_teams`]).
pub fn targets(l: &Layout) -> Vec<Target> {
    let covered = l.covered_teams();
    let mut v: Vec<Target> = (0..l.pods)
        .map(|i| l.pod(i))
        .filter(|p| p.node != 0 && TIERS[p.tier] != "db")
        .map(|p| {
            let team = l.team_of_namespace(p.index / l.per_ns);
            Target {
                observable: covered.contains(&team),
                pod: p,
            }
        })
        .collect();
    // Fisher-Yates with a fixed hash as the source.
    for i in (1..v.len()).rev() {
        let j = (objects::mix(i as u64 ^ 0x5eed) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// The IPAM side of pod churn: a pod starting or stopping on another node
/// writes that node's IPAM block (an allocation added, later removed),
/// which every agent's block watch delivers.
/// Node status writes during the churn (`--node-churn`): kubelets' status
/// reports, which every agent's Node watch delivers. A kubelet with node
/// leases writes its Node's status when it changes and at least every
/// 5 minutes (`nodeStatusReportFrequency`): ~17/s at 5,000 nodes.
pub struct NodeChurn {
    layout: Layout,
    /// Writes per pod event.
    per_event: f64,
    due: f64,
    next: usize,
}

impl NodeChurn {
    /// `rate` writes per second, beside `pod_rate` pod events per second.
    pub fn new(layout: &Layout, rate: f64, pod_rate: f64) -> NodeChurn {
        NodeChurn {
            layout: layout.clone(),
            per_event: rate / pod_rate,
            due: 0.0,
            next: 0,
        }
    }

    /// The writes due with one pod event: a remote node's status (never
    /// this node's), its conditions' heartbeat set to now, written to
    /// `/status` as the kubelet does.
    fn writes(&mut self) -> Vec<(String, Vec<u8>)> {
        self.due += self.per_event;
        let mut out = Vec::new();
        while self.due >= 1.0 {
            self.due -= 1.0;
            let l = &self.layout;
            let k = 1 + self.next % (l.nodes - 1).max(1);
            self.next += 1;
            let node = objects::node(l, k);
            let now = integration_tests::apiserver::meta::rfc3339(
                integration_tests::apiserver::meta::unix_now(),
            );
            let mut conditions = node["status"]["conditions"].clone();
            for c in conditions.as_array_mut().into_iter().flatten() {
                c["lastHeartbeatTime"] = json!(now);
            }
            let body = json!({"status": {"conditions": conditions}});
            out.push((
                format!(
                    "/api/v1/nodes/{}/status?fieldManager=kubelet",
                    l.node_name(k)
                ),
                serde_json::to_vec(&body).unwrap_or_default(),
            ));
        }
        out
    }
}

pub struct IpamChurn {
    layout: Layout,
    /// Per node: whether its block holds the churn's extra allocation, and
    /// the block's sequence (every write increments it).
    state: Vec<(bool, u64)>,
}

impl IpamChurn {
    pub fn new(layout: &Layout) -> IpamChurn {
        IpamChurn {
            state: vec![(false, 1_000); layout.nodes],
            layout: layout.clone(),
        }
    }

    /// The `n`th write: node `1 + n mod (nodes - 1)`'s first block (never
    /// this node's), with or without its extra allocation in turn. The
    /// path and a merge patch that replaces the block's spec; `None` when
    /// the block has no free address (a size with full blocks).
    fn write(&mut self, n: usize) -> Option<(String, Vec<u8>)> {
        let l = &self.layout;
        let k = 1 + n % (l.nodes - 1).max(1);
        let mut block = objects::ipam_block(l, k, 0);
        let (extra, seq) = &mut self.state[k];
        *extra = !*extra;
        *seq += 1;
        let spec = &mut block["spec"];
        if *extra {
            let free = spec["free"].as_array_mut()?;
            if free.is_empty() {
                return None;
            }
            let ord = free.remove(0)["ordinal"].clone();
            let node = l.node_name(k);
            let allocs = spec["allocations"].as_array_mut()?;
            allocs.push(json!({"ordinal": ord, "handle": format!("k8s-pod-network.churn{k}"),
                               "pod": format!("churn-{k}"), "namespace": "churn", "node": node, "sequence": *seq}));
        }
        spec["sequence"] = json!(*seq);
        let name = block["metadata"]["name"].as_str()?.to_string();
        let body = serde_json::to_vec(&json!({"spec": block["spec"]})).ok()?;
        Some((format!("/apis/crd.margay.dev/v1/ipamblocks/{name}"), body))
    }
}

/// Flips the tier (web <-> cache) of `targets` in turn, `rate` per second
/// for `secs`, each PATCH sent without waiting for the previous one; with
/// `endpoints`, the pod's PodEndpoint is patched right after its Pod (what
/// the agent of its node does one watch event later); with `ipam`, each
/// event also writes a remote node's IPAM block ([`IpamChurn`]). Returns
/// what was sent, when (the Pod's PATCH); fails if any PATCH failed.
pub async fn churn(
    c: &kube::Client,
    targets: &mut [Target],
    rate: f64,
    secs: f64,
    endpoints: bool,
    mut ipam: Option<IpamChurn>,
    mut nodes: Option<NodeChurn>,
) -> Result<Vec<Sent>> {
    anyhow::ensure!(!targets.is_empty(), "no pods to churn");
    let total = (rate * secs).round() as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = Vec::with_capacity(total);
    for n in 0..total {
        tick.tick().await;
        let t = &mut targets[n % targets.len()];
        t.pod.tier = if TIERS[t.pod.tier] == "web" { 2 } else { 0 };
        let path = format!("{}/{}", pods_path(&t.pod.namespace), t.pod.name);
        let ep_path = format!("{}/{}", endpoint_path(&t.pod.namespace), t.pod.name);
        let body =
            serde_json::to_vec(&json!({"metadata": {"labels": {"tier": TIERS[t.pod.tier]}}}))?;
        let ep_body =
            serde_json::to_vec(&json!({"spec": {"labels": {"tier": TIERS[t.pod.tier]}}}))?;
        let block = match ipam.as_mut() {
            Some(i) => Some(i.write(n).ok_or_else(|| {
                anyhow!("--ipam-churn: a remote node's block has no free address")
            })?),
            None => None,
        };
        let node_writes = nodes.as_mut().map(NodeChurn::writes).unwrap_or_default();
        let c = c.clone();
        sent.push(Sent {
            ip: t.pod.ip,
            at: Instant::now(),
            observable: t.observable,
        });
        tasks.spawn(async move {
            call(&c, "PATCH", &path, "application/merge-patch+json", body).await?;
            if endpoints {
                call(
                    &c,
                    "PATCH",
                    &ep_path,
                    "application/merge-patch+json",
                    ep_body,
                )
                .await?;
            }
            if let Some((path, body)) = block {
                call(&c, "PATCH", &path, "application/merge-patch+json", body).await?;
            }
            for (path, body) in node_writes {
                call(&c, "PATCH", &path, "application/merge-patch+json", body).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
        while let Some(r) = tasks.try_join_next() {
            r.context("churn task")??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.context("churn task")??;
    }
    Ok(sent)
}
