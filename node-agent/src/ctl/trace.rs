//! `margayctl policy trace`: which policies decide a connection between
//! two pods, evaluated with the policy crate's spec evaluator on the
//! cluster's objects.

use super::*;

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
    crate::status::tracer::parse_port(s).map_err(|e| CtlError::Usage(format!("--{e}")))
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
    let view = crate::k8s::ipam::view::IpamView::from_blocks(&blocks, "");
    for p in Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let Ok(mut info) = PodInfo::from_k8s(&p) else {
            continue;
        };
        let ips = view.pod_ips.get(&info.key.namespace, &info.key.name);
        for ip in ips.into_iter().flatten() {
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
            .find(|p| *p.key.namespace == **ns && *p.key.name == **name)
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
            .filter(|np| np.metadata.namespace.as_deref() == Some(&*pod.key.namespace))
            .filter(|np| {
                np.spec.as_ref().is_some_and(|s| {
                    margay_types::Selector::compile_opt(s.pod_selector.as_ref())
                        .is_ok_and(|s| s.matches(&pod.labels))
                })
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
    use crate::k8s::crd::{RawAdminNetworkPolicy, RawBaselineAdminNetworkPolicy};
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
