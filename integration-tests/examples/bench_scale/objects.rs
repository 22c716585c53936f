//! The simulated cluster: where every pod runs, its labels and address,
//! and the JSON of every object (Nodes, Namespaces, Pods as kubelet
//! reports them, NetworkPolicies, the IPPool and the IPAM blocks as agents
//! would have written them).
//!
//! Layout: node 0 is the lab node (`n1`, the one real agent), nodes 1..N
//! are simulated (`sim-00001`…, underlay addresses from 198.18.100.0 on,
//! nowhere in the lab). Pod `i` runs on node `i % N` in namespace
//! `i / per_ns`; its labels come from a hash of `i` (so the lab node's
//! pods vary like any other node's): `app` app-0…app-9, `tier`
//! web/db/cache, `version` v1/v2, and `pod-template-hash`, which, as a
//! Deployment's ReplicaSet sets it, is one value for all the pods of one
//! (namespace, app, tier, version): ~60 ReplicaSets per namespace, ~2.5
//! pods each at 150 pods per namespace. With `unique_pod_labels` every
//! pod has its own value instead (a cluster of StatefulSets, whose
//! `statefulset.kubernetes.io/pod-name` is per pod: no two pods share a
//! label set). Namespaces carry `team` (t0…t9, fewer with fewer than ten
//! namespaces) and `env`.
//! Ten policies per namespace, the kinds seen in real clusters (see
//! [`namespace_policies`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};
use node_agent::dataplane::policy::build::*;
use serde_json::{Value, json};

pub const APPS: usize = 10;
pub const TIERS: [&str; 3] = ["web", "db", "cache"];
/// Policies per namespace.
pub const PER_NS_POLICIES: usize = 10;
/// The lab node's name (node 0).
pub const LAB_NODE: &str = "n1";
const TS: &str = "2026-01-01T00:00:00Z";

/// Address family of the pods.
pub use margay_types::Family;

/// The cluster's shape.
#[derive(Debug, Clone)]
pub struct Layout {
    pub nodes: usize,
    pub pods: usize,
    pub policies: usize,
    pub namespaces: usize,
    /// Teams (`team` label of namespaces): min(10, namespaces).
    pub teams: usize,
    pub per_ns: usize,
    pub family: Family,
    /// Addresses per IPAM block.
    pub block_size: usize,
    pub blocks_per_node: usize,
    lab_node_ip: Ipv4Addr,
    /// Every pod a label value of its own (`--unique-pod-labels`).
    pub unique_pod_labels: bool,
}

/// One pod of the layout.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub index: usize,
    pub namespace: String,
    pub name: String,
    pub node: usize,
    pub app: usize,
    pub tier: usize,
    pub version: usize,
    pub ip: IpAddr,
}

pub fn mix(i: u64) -> u64 {
    // splitmix64: a fixed, well-spread hash of the index.
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Layout {
    pub fn new(
        nodes: usize,
        pods: usize,
        policies: usize,
        family: Family,
        lab_node_ip: Ipv4Addr,
    ) -> Result<Layout> {
        if nodes == 0 || pods == 0 {
            bail!("--nodes and --pods must be at least 1");
        }
        if nodes > 30_000 {
            bail!("at most 30,000 nodes (their addresses come from 198.18.100.0/17)");
        }
        let namespaces = (policies / PER_NS_POLICIES).max(1);
        let per_ns = pods.div_ceil(namespaces);
        let per_node = pods.div_ceil(nodes);
        let block_size = 64;
        let blocks_per_node = per_node.div_ceil(block_size);
        let l = Layout {
            nodes,
            pods,
            policies: namespaces * PER_NS_POLICIES,
            namespaces,
            teams: namespaces.min(10),
            per_ns,
            family,
            block_size,
            blocks_per_node,
            lab_node_ip,
            unique_pod_labels: false,
        };
        if family == Family::V4 && nodes * blocks_per_node * block_size + 2 > 1 << 16 {
            bail!(
                "{nodes} nodes x {blocks_per_node} block(s) of {block_size} addresses do not fit the lab's IPv4 pod range 198.19.0.0/16: use --family v6"
            );
        }
        Ok(l)
    }

    pub fn node_name(&self, k: usize) -> String {
        if k == 0 {
            LAB_NODE.to_string()
        } else {
            format!("sim-{k:05}")
        }
    }

    pub fn node_ip(&self, k: usize) -> Ipv4Addr {
        if k == 0 {
            return self.lab_node_ip;
        }
        let base = u32::from(Ipv4Addr::new(198, 18, 100, 0));
        Ipv4Addr::from(base + k as u32)
    }

    pub fn namespace(&self, n: usize) -> String {
        format!("ns-{n:04}")
    }

    /// The pool's CIDR and the block prefix length.
    pub fn pool(&self) -> (&'static str, u8) {
        match self.family {
            Family::V4 => ("198.19.0.0/16", 26),
            Family::V6 => ("2001:db8:1::/64", 122),
        }
    }

    /// Address `offset` of the pool.
    fn pool_addr(&self, offset: usize) -> IpAddr {
        match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(198, 19, 0, 0)) + offset as u32,
            )),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0)) + offset as u128,
            )),
        }
    }

    /// Base address of block `b` of node `k`.
    fn block_base(&self, k: usize, b: usize) -> IpAddr {
        self.pool_addr((k * self.blocks_per_node + b) * self.block_size)
    }

    pub fn pod(&self, i: usize) -> PodFacts {
        let h = mix(i as u64) as usize;
        let (app, tier, version) = (h % APPS, (h / APPS) % 3, (h / (APPS * 3)) % 2);
        let node = i % self.nodes;
        let slot = i / self.nodes;
        let n = i / self.per_ns;
        let ip = self.pool_addr(
            (node * self.blocks_per_node + slot / self.block_size) * self.block_size
                + slot % self.block_size,
        );
        PodFacts {
            index: i,
            namespace: self.namespace(n),
            // `app-<app>-<pod-template-hash>-<i>`: a ReplicaSet's pods
            // share the hash (see the module doc).
            name: format!("app-{app}-{:08x}-{i}", {
                let rs = if self.unique_pod_labels {
                    h as u64
                } else {
                    mix((((n * APPS + app) * 3 + tier) * 2 + version) as u64 ^ 0x5eed)
                };
                rs >> 32
            }),
            node,
            app,
            tier,
            version,
            ip,
        }
    }

    /// Teams whose namespaces' web pods a policy of one of the lab node's
    /// pods takes traffic from (`allow-app-j` of [`namespace_policies`]
    /// selects app-j and names team `(n + j) % teams`): a remote pod of such a
    /// namespace switching between tier web and cache MUST change this
    /// node's nftables sets.
    pub fn covered_teams(&self) -> BTreeSet<usize> {
        (0..self.pods)
            .step_by(self.nodes)
            .map(|i| self.pod(i))
            .filter(|p| (1..=6).contains(&p.app))
            .map(|p| (p.index / self.per_ns + p.app) % self.teams)
            .collect()
    }

    pub fn team_of_namespace(&self, n: usize) -> usize {
        n % self.teams
    }
}

fn hex_id(seed: u64, len: usize) -> String {
    let mut s = String::new();
    let mut k = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "{:016x}",
            mix(seed.wrapping_mul(31).wrapping_add(k))
        ));
        k += 1;
    }
    s.truncate(len);
    s
}

fn uuid(seed: u64) -> String {
    let h = hex_id(seed, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn namespace(l: &Layout, n: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": l.namespace(n),
        "labels": {"team": format!("t{}", l.team_of_namespace(n)), "env": if n.is_multiple_of(2) { "prod" } else { "dev" }},
    }})
}

/// A Node as the kubelet reports it (images, conditions, capacity).
pub fn node(l: &Layout, k: usize) -> Value {
    let name = l.node_name(k);
    let ip = l.node_ip(k).to_string();
    let cond = |t: &str, s: &str, reason: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": format!("kubelet reports {t}={s}"),
               "lastHeartbeatTime": TS, "lastTransitionTime": TS})
    };
    let images: Vec<Value> = (0..12)
        .map(|j| {
            json!({"names": [format!("registry.example.com/team/app-{j}@sha256:{}", hex_id(j, 64)),
                             format!("registry.example.com/team/app-{j}:1.{j}.0")],
                   "sizeBytes": 20_000_000 + j * 1_000_003})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name,
        "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                   "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                   "topology.kubernetes.io/zone": format!("zone-{}", k % 3),
                   "topology.kubernetes.io/region": "region-1",
                   "node.kubernetes.io/instance-type": "m5.2xlarge"},
        "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                        "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
    "spec": {"providerID": format!("example://region-1/{name}")},
    "status": {
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "8", "memory": "32587484Ki", "pods": "110", "ephemeral-storage": "101430960Ki", "hugepages-2Mi": "0"},
        "allocatable": {"cpu": "7910m", "memory": "31436508Ki", "pods": "110", "ephemeral-storage": "93478772582", "hugepages-2Mi": "0"},
        "conditions": [cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                       cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                       cond("PIDPressure", "False", "KubeletHasSufficientPID"),
                       cond("Ready", "True", "KubeletReady")],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": hex_id(k as u64, 32), "systemUUID": uuid(k as u64), "bootID": uuid(k as u64 + 7),
                     "kernelVersion": "6.1.0-28-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                     "containerRuntimeVersion": "containerd://1.7.24", "kubeletVersion": "v1.32.0",
                     "kubeProxyVersion": "v1.32.0", "operatingSystem": "linux", "architecture": "amd64"},
        "images": images,
    }})
}

/// A Pod as created by a ReplicaSet (the spec) and its status as kubelet
/// reports it once Running: `(pod, status)`, since a create resets status.
pub fn pod(l: &Layout, p: &PodFacts) -> (Value, Value) {
    let rs = format!("app-{}-{}", p.app, &p.name.split('-').nth(2).unwrap_or("0"));
    let image = format!("registry.example.com/team/app-{}:1.{}.0", p.app, p.app);
    let cid = hex_id(p.index as u64 + 1_000_000_007, 64);
    let host_ip = l.node_ip(p.node).to_string();
    let vol = format!("kube-api-access-{}", &hex_id(p.index as u64, 5));
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": p.name, "namespace": p.namespace, "generateName": format!("{rs}-"),
            "labels": {"app": format!("app-{}", p.app), "tier": TIERS[p.tier],
                       "version": format!("v{}", p.version + 1), "pod-template-hash": rs.rsplit('-').next().unwrap_or("0")},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                            "kubectl.kubernetes.io/restartedAt": TS},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                 "uid": uuid((p.app * 7919 + p.index / l.per_ns) as u64), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {
            "nodeName": l.node_name(p.node), "serviceAccountName": "default", "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "enableServiceLinks": true, "priority": 0, "preemptionPolicy": "PreemptLowerPriority",
            "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "env": [{"name": "APP_ENV", "value": "prod"}, {"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                                   "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": vol, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": vol, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]}});
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": TS});
    let status = json!({"status": {
        "phase": "Running", "qosClass": "Burstable", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}], "startTime": TS,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                       cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0, "image": image,
            "imageID": format!("registry.example.com/team/app-{}@sha256:{}", p.app, hex_id(p.app as u64, 64)),
            "containerID": format!("containerd://{cid}"), "state": {"running": {"startedAt": TS}}}]}});
    (pod, status)
}

/// The PodEndpoint the agent of the pod's node publishes for it
/// (node_agent::k8s::podendpoints): the pod's labels, address and named
/// ports, an owner reference to the Pod (`uid`).
pub fn pod_endpoint(l: &Layout, p: &PodFacts, uid: &str) -> Value {
    let rs = format!("app-{}-{}", p.app, &p.name.split('-').nth(2).unwrap_or("0"));
    let node = l.node_name(p.node);
    json!({"apiVersion": "crd.margay.dev/v1", "kind": "PodEndpoint", "metadata": {
            "name": p.name, "namespace": p.namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": p.name, "uid": uid}]},
        "spec": {
            "node": node, "addresses": [p.ip.to_string()],
            "labels": {"app": format!("app-{}", p.app), "tier": TIERS[p.tier],
                       "version": format!("v{}", p.version + 1), "pod-template-hash": rs.rsplit('-').next().unwrap_or("0")},
            "namedPorts": [{"name": "http", "protocol": "TCP", "port": 8080},
                           {"name": "metrics", "protocol": "TCP", "port": 9090}]}})
}

/// Ten policies of namespace number `n`, the kinds seen in real clusters:
/// default deny; six app-to-app rules that also admit the web tier of one
/// team's namespaces (named port) and the monitoring range; egress of one
/// app to its namespace, DNS in kube-system and HTTP anywhere; the
/// database tier; and a cluster-wide rule for one app's v1 pods.
pub fn namespace_policies(l: &Layout, n: usize) -> Result<Vec<Value>> {
    let ns = l.namespace(n);
    let app = |k: usize| format!("app-{}", k % APPS);
    let mut v = vec![NetPol::new(&ns, "default-deny").build()];
    for j in 1..=6 {
        v.push(
            NetPol::new(&ns, &format!("allow-{}", app(j)))
                .select(sel(&[("app", &app(j))]))
                .ingress(from(vec![pods(sel(&[("app", &app(j + 1))]))]).ports(vec![tcp(8080)]))
                .ingress(
                    from(vec![pods_in(
                        sel(&[("tier", "web")]),
                        sel(&[("team", &format!("t{}", (n + j) % l.teams))]),
                    )])
                    .ports(vec![named("TCP", "http")]),
                )
                .ingress(
                    from(vec![block("198.18.0.0/16", &["198.18.99.0/24"])]).ports(vec![tcp(9090)]),
                )
                .build(),
        );
    }
    v.push(
        NetPol::new(&ns, "egress-app-7")
            .select(sel(&[("app", &app(7))]))
            .types(&["Egress"])
            .egress(to(vec![pods(sel(&[]))]))
            .egress(
                to(vec![pods_in(
                    sel(&[("k8s-app", "kube-dns")]),
                    sel(&[("kubernetes.io/metadata.name", "kube-system")]),
                )])
                .ports(vec![udp(53), tcp(53)]),
            )
            .egress(any().ports(vec![named("TCP", "http")]))
            .build(),
    );
    v.push(
        NetPol::new(&ns, "db")
            .select(sel(&[("tier", "db")]))
            .ingress(
                from(vec![pods(sel_expr(
                    &[],
                    vec![req("tier", "In", &["web", "cache"])],
                ))])
                .ports(vec![range("TCP", 5432, 5440)]),
            )
            .build(),
    );
    v.push(
        NetPol::new(&ns, "v1-from-app-9")
            .select(sel(&[("version", "v1")]))
            .ingress(
                from(vec![pods_in(
                    sel_expr(&[("app", &app(9))], vec![req("tier", "NotIn", &["db"])]),
                    sel(&[]),
                )])
                .ports(vec![tcp(8080)]),
            )
            .build(),
    );
    v.into_iter()
        .map(|p| {
            let mut j = serde_json::to_value(p)?;
            j["apiVersion"] = json!("networking.k8s.io/v1");
            j["kind"] = json!("NetworkPolicy");
            Ok(j)
        })
        .collect()
}

pub fn pool(l: &Layout) -> Value {
    let (cidr, prefix) = l.pool();
    json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPPool", "metadata": {"name": "scale"},
           "spec": {"cidr": cidr, "blockSize": prefix}})
}

/// Block `b` of node `k`, with the allocations of the pods placed in it.
pub fn ipam_block(l: &Layout, k: usize, b: usize) -> Value {
    let (_, prefix) = l.pool();
    let base = l.block_base(k, b);
    let cidr = format!("{base}/{prefix}");
    let name = cidr.replace(['.', ':'], "-").replace('/', "-");
    let node = l.node_name(k);
    let mut allocations = Vec::new();
    let mut used = BTreeSet::new();
    for ord in 0..l.block_size {
        let slot = b * l.block_size + ord;
        let i = slot * l.nodes + k;
        if i >= l.pods {
            break;
        }
        let p = l.pod(i);
        allocations.push(json!({"ordinal": ord, "handle": format!("k8s-pod-network.{}", hex_id(i as u64 + 1_000_000_007, 64)),
                                "pod": p.name, "namespace": p.namespace, "node": node, "sequence": 1}));
        used.insert(ord);
    }
    let free: Vec<Value> = (0..l.block_size)
        .filter(|o| !used.contains(o))
        .map(|o| json!({"ordinal": o}))
        .collect();
    json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPAMBlock", "metadata": {"name": name},
           "spec": {"cidr": cidr, "affinity": format!("host:{node}"), "allocations": allocations,
                    "free": free, "sequence": allocations.len(), "createdAt": 1_767_225_600_000u64}})
}

/// `BGPConfiguration` `default`: the node-to-node mesh on or off.
pub fn bgp_configuration(mesh: bool) -> Value {
    json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration", "metadata": {"name": "default"},
           "spec": {"nodeToNodeMeshEnabled": mesh}})
}

/// The cluster DNS pods the egress policies name (in kube-system, on
/// simulated nodes).
pub fn dns_pods(l: &Layout) -> Vec<(Value, Value, PodFacts)> {
    (0..2)
        .map(|j| {
            let mut f = l.pod(j);
            f.namespace = "kube-system".into();
            f.name = format!("coredns-{j}");
            f.node = (j + 1) % l.nodes;
            // In the pool, past every node's blocks (no IPAM allocation).
            f.ip = l.pool_addr(l.nodes * l.blocks_per_node * l.block_size + j);
            let (mut p, s) = pod(l, &f);
            p["metadata"]["labels"] = json!({"k8s-app": "kube-dns"});
            (p, s, f)
        })
        .collect()
}
