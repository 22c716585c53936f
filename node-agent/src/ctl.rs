//! `margayctl`: look at and operate Margay.
//!
//! - `node status` and `bgp routes` ask the local agent (`--agent`, its
//!   `/status`; `bgp routes` is rendered by [`crate::bgp_routes`]);
//! - `ipam …` and `policy trace` read the cluster from the API server
//!   (`--api-server`, or in-cluster config / KUBECONFIG) and use the same
//!   code as the agent (the `ipam` report and the policy spec evaluator).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;

mod check;
pub mod output;

pub use check::{IpamCheck, ipam_check, render_ipam_check};

use crate::ipam_store::{KubeStore, pool_to_model};
use crate::metrics::Metrics;
use crate::routing_task::PeerRow;

/// What a margayctl command can fail on.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The agent's status endpoint could not be read.
    #[error("cannot reach the agent at {url}: {reason} (is margay-node running? see --agent)")]
    Agent {
        /// URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// An API call failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The IPAM store failed.
    #[error("IPAM: {0}")]
    Store(#[from] ipam::StoreError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Refused for safety.
    #[error("refused: {0}")]
    Refused(String),
}

/// GETs `url` (plain HTTP) and returns the body.
pub async fn http_get(url: &str) -> Result<String, CtlError> {
    use http_body_util::{BodyExt as _, Empty};
    use hyper::body::Bytes;
    let err = |reason: String| CtlError::Agent {
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| err(e.to_string()))?;
    let host = uri.host().ok_or_else(|| err("no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| err("timed out".into()))?
    .map_err(|e| err(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| err(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::get(uri.path())
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| err(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| err(e.to_string()))?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(s, "{c:<width$}  ", width = w[i]);
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn since(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) => format!("{}h", s / 3600),
    }
}

/// `margayctl node status`, rendered from the agent's `/status` JSON.
pub fn render_node_status(status: &serde_json::Value) -> String {
    let mut out = String::new();
    let node = &status["node"];
    let _ = writeln!(
        out,
        "Margay agent on node {} (name from {}); ready: {}",
        node["name"].as_str().unwrap_or("?"),
        node["name_source"].as_str().unwrap_or("?"),
        status["ready"]
    );
    for fam in ["ipv4", "ipv6"] {
        if let Some(a) = node[fam].as_object() {
            let _ = writeln!(
                out,
                "  {fam} {} on {}: {}",
                a.get("address").and_then(|v| v.as_str()).unwrap_or("?"),
                a.get("interface").and_then(|v| v.as_str()).unwrap_or("-"),
                a.get("reason").and_then(|v| v.as_str()).unwrap_or("")
            );
        }
    }
    for c in status["readiness"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}", c.as_str().unwrap_or(""));
    }
    let peers: Vec<PeerRow> =
        serde_json::from_value(status["bgp_peers"].clone()).unwrap_or_default();
    let _ = writeln!(out, "\nBGP peers");
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.address.clone(),
                p.kind.clone(),
                p.state.clone(),
                p.bfd.clone().unwrap_or_else(|| "-".into()),
                since(p.since_secs),
                format!("{}/{}", p.accepted, p.sent),
                p.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out += &table(
        &[
            "PEER",
            "ADDRESS",
            "TYPE",
            "STATE",
            "BFD",
            "SINCE",
            "PREFIXES IN/OUT",
            "LAST ERROR",
        ],
        &rows,
    );
    for section in ["bgp_problems", "policy_problems"] {
        for p in status[section].as_array().into_iter().flatten() {
            let _ = writeln!(out, "problem: {}", p.as_str().unwrap_or(""));
        }
    }
    out
}

async fn ipam_objects(
    client: &kube::Client,
) -> Result<(Vec<ipam::PoolObject>, Vec<ipam::BlockObject>), CtlError> {
    use ipam::Store as _;
    let store = KubeStore::new(client.clone(), std::sync::Arc::new(Metrics::new()));
    let pools = Api::<crate::crd::IPPool>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|p| pool_to_model(p).ok())
        .collect();
    Ok((pools, store.list_blocks().await?))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `margayctl ipam show [--show-blocks]`: pool usage (and blocks).
pub async fn ipam_show(
    client: &kube::Client,
    show_blocks: bool,
) -> Result<ipam::report::IpamShow, CtlError> {
    let (pools, blocks) = ipam_objects(client).await?;
    Ok(ipam::report::show(
        &pools,
        &blocks,
        show_blocks,
        now_ms(),
        0,
    ))
}

/// `margayctl ipam show --ip X`: which pool, block and pod an address has.
pub async fn ipam_lookup(
    client: &kube::Client,
    ip: IpAddr,
) -> Result<ipam::report::IpInfo, CtlError> {
    let (pools, blocks) = ipam_objects(client).await?;
    Ok(ipam::report::lookup_ip(&pools, &blocks, ip))
}

/// One line about one address.
pub fn render_ip_info(i: &ipam::report::IpInfo) -> String {
    let owner = i
        .attrs
        .as_ref()
        .map(|a| {
            format!(
                "{}/{} on {}",
                a.namespace.as_deref().unwrap_or("?"),
                a.pod.as_deref().unwrap_or("?"),
                a.node.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "-".into());
    format!(
        "{}: pool {}, block {}, affinity {}, {}\n",
        i.ip,
        i.pool.as_deref().unwrap_or("none"),
        i.block
            .map(|b| b.to_string())
            .unwrap_or_else(|| "none".into()),
        i.affinity.as_deref().unwrap_or("none"),
        match &i.handle {
            Some(h) => format!("allocated to handle {h} ({owner})"),
            None => "free".into(),
        }
    )
}

/// The tables of `margayctl ipam show` (counts exact, however large); wide
/// adds the blocks' cooling (recently freed) addresses and age.
pub fn render_ipam_show(s: &ipam::report::IpamShow, show_blocks: bool, wide: bool) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = s
        .pools
        .iter()
        .map(|p| {
            let pct = p.capacity.percent(u128::from(p.allocated));
            vec![
                p.name.clone(),
                p.cidr.to_string(),
                p.capacity.to_string(),
                format!("{} ({pct:.1}%)", p.allocated),
                format!("{}/{}", p.blocks, p.block_capacity),
                if p.disabled {
                    "yes".into()
                } else {
                    "no".into()
                },
                p.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out += &table(
        &[
            "POOL", "CIDR", "SIZE", "IN USE", "BLOCKS", "DISABLED", "PROBLEM",
        ],
        &rows,
    );
    if show_blocks {
        let now = now_ms();
        let rows: Vec<Vec<String>> = s
            .blocks
            .iter()
            .map(|b| {
                let mut row = vec![
                    b.cidr.to_string(),
                    b.affinity.clone().unwrap_or_else(|| "-".into()),
                    b.pool.clone().unwrap_or_else(|| "-".into()),
                    b.allocated.to_string(),
                    b.free.to_string(),
                    b.borrowed.to_string(),
                ];
                if wide {
                    row.push(b.cooling.to_string());
                    row.push(since(Some(now.saturating_sub(b.created_at) / 1000)));
                    row.push(b.name.clone());
                }
                row.push(b.error.clone().unwrap_or_default());
                row
            })
            .collect();
        out.push('\n');
        let mut header = vec!["BLOCK", "AFFINITY", "POOL", "IN USE", "FREE", "BORROWED"];
        if wide {
            header.extend(["COOLING", "AGE", "OBJECT"]);
        }
        header.push("PROBLEM");
        out += &table(&header, &rows);
    }
    out
}

async fn live_pods(client: &kube::Client) -> Result<Vec<ipam::gc::LivePod>, CtlError> {
    Ok(Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|p| {
            let mut live = crate::ipam_ops::live_pod(p)?;
            live.ips = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ips.as_ref())
                .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
                .unwrap_or_default();
            Some(live)
        })
        .collect())
}

/// What `margayctl ipam release` freed.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    /// The address.
    pub ip: IpAddr,
    /// The handle it was allocated to.
    pub handle: String,
    /// Its block.
    pub block: String,
}

impl std::fmt::Display for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "released {} (handle {}) from block {}",
            self.ip, self.handle, self.block
        )
    }
}

/// `margayctl ipam release --ip X`: frees one address, refusing when the pod
/// it belongs to still exists.
pub async fn ipam_release(client: &kube::Client, ip: IpAddr) -> Result<Released, CtlError> {
    use ipam::Store as _;
    let store = KubeStore::new(client.clone(), std::sync::Arc::new(Metrics::new()));
    for _attempt in 0..5 {
        let (pools, blocks) = ipam_objects(client).await?;
        let info = ipam::report::lookup_ip(&pools, &blocks, ip);
        let (Some(block), Some(handle)) = (info.block, info.handle.clone()) else {
            return Err(CtlError::Refused(format!("{ip} is not allocated")));
        };
        if let Some(a) = &info.attrs
            && let (Some(ns), Some(pod)) = (&a.namespace, &a.pod)
            && Api::<Pod>::namespaced(client.clone(), ns)
                .get_opt(pod)
                .await?
                .is_some()
        {
            return Err(CtlError::Refused(format!(
                "{ip} belongs to pod {ns}/{pod}, which exists; delete the pod instead"
            )));
        }
        let name = ipam::model::block_name(&block);
        let Some(mut obj) = store.get_block(&name).await? else {
            continue;
        };
        let Some(ordinal) = obj.spec.ordinal_of(ip) else {
            return Err(CtlError::Refused(format!("{ip} is not in block {block}")));
        };
        // Only the allocation we inspected (a re-allocation since is not ours).
        match obj.spec.allocation(ordinal) {
            Some(a) if a.handle == handle && Some(a.sequence) == info.sequence => {}
            _ => continue,
        }
        obj.spec.release(ordinal, now_ms());
        obj.spec.sequence += 1;
        match store.update_block(&obj).await {
            Ok(_) => {
                return Ok(Released {
                    ip,
                    handle,
                    block: block.to_string(),
                });
            }
            Err(ipam::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CtlError::Refused(format!(
        "{ip}: the block kept changing; try again"
    )))
}

/// A connection to trace.
#[derive(Debug, Clone)]
pub struct TraceQuery {
    /// Source `namespace/pod`.
    pub from: (String, String),
    /// Destination `namespace/pod`.
    pub to: (String, String),
    /// Protocol and port.
    pub l4: policy::spec_eval::L4,
}

/// Parses `80/TCP`, `53/udp`, `icmp`.
pub fn parse_port(s: &str) -> Result<policy::spec_eval::L4, CtlError> {
    use policy::Protocol;
    if s.eq_ignore_ascii_case("icmp") {
        return Ok(policy::spec_eval::L4::Other(1));
    }
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().map_err(|_| {
        CtlError::Usage(format!("--port {s:?}: expected PORT/PROTOCOL, e.g. 80/TCP"))
    })?;
    let proto = Protocol::parse(Some(&proto.to_ascii_uppercase()))
        .map_err(|e| CtlError::Usage(format!("--port {s:?}: {e}")))?;
    Ok(policy::spec_eval::L4::Port(proto, port))
}

/// Parses `namespace/pod`.
pub fn parse_pod(s: &str) -> Result<(String, String), CtlError> {
    s.split_once('/')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| CtlError::Usage(format!("{s:?}: expected namespace/pod")))
}

/// `margayctl policy trace`: the verdict by the Kubernetes rules on the
/// cluster as the API server has it (the agents' dataplanes are tested
/// against the same evaluator).
pub async fn policy_trace(client: &kube::Client, q: &TraceQuery) -> Result<Trace, CtlError> {
    use policy::{ClusterState, NamespaceInfo, PodInfo};
    let mut state = ClusterState::default();
    let (_, blocks) = ipam_objects(client).await?;
    let view = crate::ipamview::IpamView::from_blocks(&blocks, "");
    for p in Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let Ok(mut info) = PodInfo::from_k8s(&p) else {
            continue;
        };
        let key = (info.key.namespace.clone(), info.key.name.clone());
        for ip in view.pod_ips.get(&key).into_iter().flatten() {
            if !info.ips.contains(ip) {
                info.ips.push(*ip);
            }
        }
        state.add_pod(info);
    }
    for ns in Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        if let Ok(info) = NamespaceInfo::from_k8s(&ns) {
            state.add_namespace(info);
        }
    }
    let mut policies = Vec::new();
    for np in Api::<NetworkPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        policies.push(np.clone());
        let _ = state.add_policy(np);
    }
    let mut node_addrs: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for n in Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let addrs = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a.iter().filter_map(|a| a.address.parse().ok()).collect())
            .unwrap_or_default();
        if let Ok(info) = policy::model::NodeInfo::from_k8s(&n) {
            state.add_node(info);
        }
        node_addrs.insert(n.metadata.name.unwrap_or_default(), addrs);
    }
    add_admin_policies(client, &mut state).await?;
    let find = |(ns, name): &(String, String)| {
        state
            .pods
            .values()
            .find(|p| p.key.namespace == *ns && p.key.name == *name)
            .cloned()
    };
    let src = find(&q.from)
        .ok_or_else(|| CtlError::Usage(format!("no pod {}/{}", q.from.0, q.from.1)))?;
    let dst =
        find(&q.to).ok_or_else(|| CtlError::Usage(format!("no pod {}/{}", q.to.0, q.to.1)))?;
    let (Some(sip), Some(dip)) = (
        src.ips.first().copied(),
        dst.ips
            .iter()
            .find(|i| i.is_ipv4() == src.ips[0].is_ipv4())
            .copied(),
    ) else {
        return Err(CtlError::Usage(
            "the pods have no addresses of a common family yet".into(),
        ));
    };
    let cluster = policy::spec_eval::Cluster {
        state: &state,
        node_addrs: &node_addrs,
    };
    let ans = cluster.allowed(sip, dip, q.l4);
    let selecting = |pod: &PodInfo| -> Vec<String> {
        policies
            .iter()
            .filter(|np| np.metadata.namespace.as_deref() == Some(pod.key.namespace.as_str()))
            .filter(|np| {
                np.spec
                    .as_ref()
                    .is_some_and(|s| crate::routing::selects(s.pod_selector.as_ref(), &pod.labels))
            })
            .filter_map(|np| np.metadata.name.clone())
            .collect()
    };
    Ok(Trace {
        from: src.key.to_string(),
        from_ip: sip,
        to: dst.key.to_string(),
        to_ip: dip,
        traffic: format!("{:?}", q.l4),
        source_policies: selecting(&src),
        destination_policies: selecting(&dst),
        allowed: ans.allowed,
        why: ans.why.to_string(),
    })
}

/// AdminNetworkPolicies and the baseline, where the cluster serves them
/// (a 404 means the API is not installed: nothing to add).
async fn add_admin_policies(
    client: &kube::Client,
    state: &mut policy::ClusterState,
) -> Result<(), CtlError> {
    use crate::crd::{RawAdminNetworkPolicy, RawBaselineAdminNetworkPolicy};
    let absent = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
    match Api::<RawAdminNetworkPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for o in list.items {
                if let Ok(anp) = policy::admin::AdminNetworkPolicy::from_value(o.to_value()) {
                    let _ = state.add_admin_policy(anp);
                }
            }
        }
        Err(e) if absent(&e) => {}
        Err(e) => return Err(e.into()),
    }
    match Api::<RawBaselineAdminNetworkPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for o in list.items {
                if let Ok(b) = policy::admin::BaselineAdminNetworkPolicy::from_value(o.to_value()) {
                    let _ = state.add_baseline_policy(b);
                }
            }
        }
        Err(e) if absent(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `margayctl policy trace`'s answer.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// Source pod, namespace/name.
    pub from: String,
    /// Its address used.
    pub from_ip: IpAddr,
    /// Destination pod.
    pub to: String,
    /// Its address used.
    pub to_ip: IpAddr,
    /// Protocol and port.
    pub traffic: String,
    /// NetworkPolicies that select the source (egress applies).
    pub source_policies: Vec<String>,
    /// NetworkPolicies that select the destination (ingress applies).
    pub destination_policies: Vec<String>,
    /// The verdict for a new connection.
    pub allowed: bool,
    /// Why.
    pub why: String,
}

/// The human form of a trace.
pub fn render_trace(t: &Trace) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "from {} ({}) to {} ({}) {}\n  policies selecting the source: {}\n  policies selecting the destination: {}\nverdict: {} ({})\n",
        t.from,
        t.from_ip,
        t.to,
        t.to_ip,
        t.traffic,
        list(&t.source_policies),
        list(&t.destination_policies),
        if t.allowed { "ALLOW" } else { "DENY" },
        t.why
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_renders_peers_and_reasons() {
        let status = serde_json::json!({
            "node": {"name": "n1", "name_source": "--node-name / NODE_NAME",
                     "ipv4": {"address": "198.18.0.11/24", "interface": "eth0", "reason": "interface=eth0: first match eth0"}},
            "ready": true,
            "readiness": ["ok: datastore synced"],
            "bgp_peers": [{"name": "mesh-n2", "address": "198.18.0.12", "kind": "node-mesh",
                           "state": "Established", "since_secs": 75, "accepted": 2, "sent": 2, "last_error": null}],
            "bgp_problems": ["BGPPeer x: no"]
        });
        let out = render_node_status(&status);
        assert!(
            out.contains("198.18.0.11/24 on eth0: interface=eth0"),
            "{out}"
        );
        assert!(
            out.lines().any(|l| l.starts_with("mesh-n2")
                && l.contains("Established")
                && l.contains("75s")
                && l.contains("2/2")),
            "{out}"
        );
        assert!(out.contains("problem: BGPPeer x: no"), "{out}");
    }

    #[test]
    fn ports_and_pods_parse_with_clear_errors() {
        use policy::Protocol;
        use policy::spec_eval::L4;
        assert_eq!(parse_port("80/TCP").ok(), Some(L4::Port(Protocol::Tcp, 80)));
        assert_eq!(parse_port("53/udp").ok(), Some(L4::Port(Protocol::Udp, 53)));
        assert_eq!(parse_port("8080").ok(), Some(L4::Port(Protocol::Tcp, 8080)));
        assert_eq!(parse_port("icmp").ok(), Some(L4::Other(1)));
        assert!(parse_port("http/TCP").is_err());
        assert!(parse_port("80/GRE").is_err());
        assert_eq!(parse_pod("x/a").ok(), Some(("x".into(), "a".into())));
        assert!(parse_pod("a").is_err() && parse_pod("/a").is_err());
    }

    #[test]
    fn ipam_show_prints_ipv6_pool_sizes_exactly() {
        let pool = |name: &str, cidr: &str| ipam::PoolObject {
            name: name.into(),
            resource_version: "1".into(),
            spec: ipam::IpPoolSpec::new(cidr.parse().expect("cidr")),
        };
        let s = ipam::report::show(
            &[pool("v4", "198.19.0.0/16"), pool("v6", "2001:db8::/48")],
            &[],
            false,
            0,
            0,
        );
        let out = render_ipam_show(&s, false, false);
        let v6 = out.lines().find(|l| l.starts_with("v6")).expect("v6 row");
        assert!(
            v6.contains(" 1208925819614629174706176 ")
                && v6.contains(" 0/18889465931478580854784 "),
            "{out}"
        );
        assert!(!out.contains("18446744073709551615") && !out.contains("9223372036854775808"));
        let v4 = out.lines().find(|l| l.starts_with("v4")).expect("v4 row");
        assert!(v4.contains(" 65536 ") && v4.contains(" 0/1024 "), "{out}");
    }
}
