//! A lab cluster for NetworkPolicy tests: the lab's nodes with the
//! conformance pods (x/y/z × a/b/c) wired Calico-style and serving TCP/UDP 80
//! and 81, plain static routes on the ToR between nodes (until the agent
//! routes), and on every node the policy engine applying its batches with
//! the real executor (`nft` in the node's namespace).
//!
//! Expected reachability always comes from `policy::spec_eval` over the same
//! cluster state; never from the rules under test.

#![allow(dead_code)] // each test binary uses a part

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::lab::{self, Lab, Netns, Outcome, Pod, PodSpec, Proto};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use node_agent::dataplane::NftCli;
use node_agent::dataplane::policy::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use node_agent::dataplane::policy::spec_eval::{Cluster as Spec, L4};
use node_agent::dataplane::policy::testkit::{NAMESPACES, PODS, Xyz};
use node_agent::dataplane::policy::{Engine, NamespaceInfo, PodKey, PolicyKey, Protocol};

/// A lab with the conformance cluster and one engine per node.
pub struct PolicyLab {
    pub xyz: Xyz,
    pub engines: Vec<(Engine, NftCli)>,
    pub pods: BTreeMap<PodKey, Pod>,
    /// Node name → namespace name.
    pub node_ns: BTreeMap<String, String>,
    /// Last so that it drops after the pods (it removes everything anyway).
    pub lab: Lab,
}

/// One probe result that disagrees with the spec.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub from: String,
    pub to: SocketAddr,
    pub proto: Proto,
    pub expected: bool,
    pub got: Outcome,
    pub why: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {}: expected {}, got {:?} (spec: {})",
            self.from,
            self.to,
            self.proto,
            if self.expected { "allowed" } else { "denied" },
            self.got,
            self.why
        )
    }
}

/// Skips the calling test (with the reason) when labs cannot run here.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Err(why) = integration_tests::lab::can_run() {
            integration_tests::lab::skip(&why);
            return;
        }
    };
}

impl PolicyLab {
    /// `nodes` lab nodes; pod number k (x/a = 0 … z/c = 8) on node k % nodes.
    pub fn new(nodes: usize) -> Result<PolicyLab, String> {
        let nodes = nodes.max(1);
        let lab = Lab::builder()
            .nodes(nodes)
            .build()
            .map_err(|e| format!("lab: {e}"))?;
        let node_list: Vec<(String, Vec<IpAddr>)> = lab
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), vec![IpAddr::V4(n.ipv4), IpAddr::V6(n.ipv6)]))
            .collect();
        let xyz = Xyz::on_nodes(&node_list, |k| k % nodes, true);
        let mut pods = BTreeMap::new();
        let mut tor_routes = Vec::new();
        for p in xyz.state.pods.values() {
            let node = p.node_name.clone().ok_or("pod without node")?;
            let v4 = p.ips.iter().find_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            });
            let v6 = p.ips.iter().find_map(|ip| match ip {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            });
            let pod = lab
                .add_pod(
                    &node,
                    &PodSpec {
                        namespace: p.key.namespace.to_string(),
                        name: p.key.name.to_string(),
                        ipv4: v4,
                        ipv6: v6,
                    },
                )
                .map_err(|e| format!("pod {}: {e}", p.key))?;
            let n = lab.node(&node).map_err(|e| e.to_string())?;
            if let Some(a) = v4 {
                tor_routes.push(format!("route replace {a}/32 via {}", n.ipv4));
            }
            if let Some(a) = v6 {
                tor_routes.push(format!("route replace {a}/128 via {}", n.ipv6));
            }
            pods.insert(p.key.clone(), pod);
        }
        lab.tor()
            .ip_batch(&tor_routes)
            .map_err(|e| format!("tor routes: {e}"))?;
        let mut lab = lab;
        for (key, pod) in &pods {
            let d = lab
                .serve(
                    &pod.ns,
                    &format!("{}/{}", key.namespace, key.name),
                    &[80, 81],
                    &[80, 81],
                )
                .map_err(|e| format!("server {key}: {e}"))?;
            lab.keep(d);
        }
        let node_ns: BTreeMap<String, String> = lab
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), n.ns.name().to_string()))
            .collect();
        let mut engines = Vec::new();
        for ctx in &xyz.nodes {
            let ns = node_ns.get(&ctx.node_name).ok_or("node namespace")?;
            let cli = NftCli::with_program("ip", ["netns", "exec", ns.as_str(), "nft"]);
            let mut e = Engine::new(ctx.clone());
            e.load(xyz.state.clone());
            engines.push((e, cli));
        }
        let mut pl = PolicyLab {
            xyz,
            engines,
            pods,
            node_ns,
            lab,
        };
        pl.commit()?;
        // Fresh wiring can refuse for a moment: wait until every pod answers
        // from its first neighbour (everything is allowed at this point).
        for p in pl.pods.values() {
            for ip in [p.ipv4.map(IpAddr::V4), p.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                let from = pl
                    .pods
                    .values()
                    .find(|q| q.name != p.name || q.namespace != p.namespace)
                    .ok_or("no peer")?;
                let o = lab::wait_reachable(
                    &from.ns,
                    SocketAddr::new(ip, 80),
                    Proto::Tcp,
                    Duration::from_secs(10),
                );
                if !o.reached() {
                    return Err(format!(
                        "{}/{} at {ip} never became reachable: {o:?}",
                        p.namespace, p.name
                    ));
                }
            }
        }
        Ok(pl)
    }

    /// Commits every node's engine (one nft transaction each).
    pub fn commit(&mut self) -> Result<(), String> {
        for (e, cli) in &mut self.engines {
            e.commit(cli)
                .map_err(|err| format!("commit on {}: {err:?}", e.node().node_name))?;
        }
        Ok(())
    }

    pub fn set_policy(&mut self, np: NetworkPolicy) -> Result<(), String> {
        let key = PolicyKey::of(&np).ok_or("policy without name")?;
        self.xyz
            .state
            .policies
            .insert(key.clone(), np.clone().into());
        for (e, _) in &mut self.engines {
            e.upsert_policy(key.clone(), np.clone());
        }
        self.commit()
    }

    pub fn delete_policy(&mut self, ns: &str, name: &str) -> Result<(), String> {
        let key = PolicyKey::new(ns, name);
        self.xyz.state.policies.remove(&key);
        for (e, _) in &mut self.engines {
            e.remove_policy(&key);
        }
        self.commit()
    }

    pub fn delete_all_policies(&mut self) -> Result<(), String> {
        let keys: Vec<PolicyKey> = self.xyz.state.policies.keys().cloned().collect();
        for k in keys {
            self.xyz.state.policies.remove(&k);
            for (e, _) in &mut self.engines {
                e.remove_policy(&k);
            }
        }
        let names: Vec<String> = self.xyz.state.admin_policies.keys().cloned().collect();
        for n in names {
            self.xyz.state.admin_policies.remove(&n);
            for (e, _) in &mut self.engines {
                e.remove_admin_policy(&n);
            }
        }
        let names: Vec<String> = self.xyz.state.baseline_policies.keys().cloned().collect();
        for n in names {
            self.xyz.state.baseline_policies.remove(&n);
            for (e, _) in &mut self.engines {
                e.remove_baseline_policy(&n);
            }
        }
        self.commit()
    }

    /// Adds or replaces an AdminNetworkPolicy on every node.
    pub fn set_admin_policy(&mut self, anp: AdminNetworkPolicy) -> Result<(), String> {
        let name = anp.name().ok_or("ANP without name")?.to_string();
        self.xyz
            .state
            .admin_policies
            .insert(name.clone(), anp.clone());
        for (e, _) in &mut self.engines {
            e.upsert_admin_policy(name.clone(), anp.clone());
        }
        self.commit()
    }

    pub fn delete_admin_policy(&mut self, name: &str) -> Result<(), String> {
        self.xyz.state.admin_policies.remove(name);
        for (e, _) in &mut self.engines {
            e.remove_admin_policy(name);
        }
        self.commit()
    }

    /// Adds or replaces the BaselineAdminNetworkPolicy on every node.
    pub fn set_baseline_policy(&mut self, banp: BaselineAdminNetworkPolicy) -> Result<(), String> {
        let name = banp.name().ok_or("BANP without name")?.to_string();
        self.xyz
            .state
            .baseline_policies
            .insert(name.clone(), banp.clone());
        for (e, _) in &mut self.engines {
            e.upsert_baseline_policy(name.clone(), banp.clone());
        }
        self.commit()
    }

    /// Probes `from` → `to` on both families (TCP or UDP `port`) and
    /// returns a line per family whose outcome is not `allowed` (a
    /// disagreement is re-probed twice with a longer timeout first).
    pub fn expect(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        proto: Proto,
        port: u16,
        allowed: bool,
    ) -> Vec<String> {
        let (Some(f), Some(t)) = (
            self.pods.get(&PodKey::new(from.0, from.1)),
            self.pods.get(&PodKey::new(to.0, to.1)),
        ) else {
            return vec![format!("no pod {from:?} or {to:?}")];
        };
        let mut out = Vec::new();
        for dst in [t.ipv4.map(IpAddr::V4), t.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
        {
            let to_addr = SocketAddr::new(dst, port);
            let mut o = lab::probe(&f.ns, to_addr, proto, Duration::from_millis(300));
            for _ in 0..2 {
                if o.reached() == allowed {
                    break;
                }
                o = lab::probe(&f.ns, to_addr, proto, Duration::from_millis(1500));
            }
            if o.reached() != allowed {
                out.push(format!(
                    "{}/{} -> {to_addr} {proto}: expected {}, got {o:?}",
                    from.0,
                    from.1,
                    if allowed { "allowed" } else { "denied" }
                ));
            }
        }
        out
    }

    pub fn set_pod_label(
        &mut self,
        ns: &str,
        pod: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), String> {
        let p = self.xyz.pod_mut(ns, pod).ok_or("no such pod")?;
        let mut labels = p.labels.to_map();
        match value {
            Some(v) => labels.insert(key.into(), v.into()),
            None => labels.remove(key),
        };
        p.labels = node_agent::dataplane::policy::PodLabels::from_map(&labels);
        let p = p.clone();
        for (e, _) in &mut self.engines {
            e.upsert_pod(p.clone());
        }
        self.commit()
    }

    pub fn set_namespace_label(
        &mut self,
        ns: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), String> {
        let mut n = self
            .xyz
            .state
            .namespaces
            .get(ns)
            .cloned()
            .unwrap_or_else(|| NamespaceInfo::new(ns));
        match value {
            Some(v) => n.labels.insert(key.into(), v.into()),
            None => n.labels.remove(key),
        };
        self.xyz.state.add_namespace(n.clone());
        for (e, _) in &mut self.engines {
            e.upsert_namespace(n.clone());
        }
        self.commit()
    }

    /// Back to the initial labels and no policies.
    pub fn reset(&mut self) -> Result<(), String> {
        self.delete_all_policies()?;
        for ns in NAMESPACES {
            for pod in PODS {
                let p = self.xyz.pod_mut(ns, pod).ok_or("no such pod")?;
                p.labels = [("pod", pod)].into_iter().collect();
                let p = p.clone();
                for (e, _) in &mut self.engines {
                    e.upsert_pod(p.clone());
                }
            }
            let n = NamespaceInfo::new(ns).label("ns", ns);
            self.xyz.state.add_namespace(n.clone());
            for (e, _) in &mut self.engines {
                e.upsert_namespace(n.clone());
            }
        }
        self.commit()
    }

    /// Probes every ordered pod pair (both families, TCP and UDP 80/81) and
    /// every node → pod (TCP 80), compares with the spec, re-probes
    /// disagreements twice with a longer timeout (a loaded machine can be
    /// slow to answer), and returns those that remain.
    pub fn check(&self) -> Vec<Mismatch> {
        let spec = Spec {
            state: &self.xyz.state,
            node_addrs: &self.xyz.node_addrs,
        };
        let mut probes: Vec<(String, String, SocketAddr, Proto, bool, String)> = Vec::new();
        for (sk, s) in &self.pods {
            for (dk, d) in &self.pods {
                if sk == dk {
                    continue; // a pod to itself never leaves its namespace
                }
                for (src, dst) in [
                    (s.ipv4.map(IpAddr::V4), d.ipv4.map(IpAddr::V4)),
                    (s.ipv6.map(IpAddr::V6), d.ipv6.map(IpAddr::V6)),
                ] {
                    let (Some(src), Some(dst)) = (src, dst) else {
                        continue;
                    };
                    for (proto, p) in [(Proto::Tcp, Protocol::Tcp), (Proto::Udp, Protocol::Udp)] {
                        for port in [80u16, 81] {
                            let a = spec.allowed(src, dst, L4::Port(p, port));
                            probes.push((
                                sk.to_string(),
                                s.ns.name().to_string(),
                                SocketAddr::new(dst, port),
                                proto,
                                a.allowed,
                                a.why,
                            ));
                        }
                    }
                }
            }
        }
        for n in self.lab.nodes() {
            for d in self.pods.values() {
                for (src, dst) in [
                    (IpAddr::V4(n.ipv4), d.ipv4.map(IpAddr::V4)),
                    (IpAddr::V6(n.ipv6), d.ipv6.map(IpAddr::V6)),
                ] {
                    let Some(dst) = dst else { continue };
                    let a = spec.allowed(src, dst, L4::Port(Protocol::Tcp, 80));
                    probes.push((
                        format!("node {}", n.name),
                        n.ns.name().to_string(),
                        SocketAddr::new(dst, 80),
                        Proto::Tcp,
                        a.allowed,
                        a.why,
                    ));
                }
            }
        }
        let outcomes = run_probes(
            probes
                .iter()
                .map(|(_, ns, to, proto, _, _)| (ns.clone(), *to, *proto))
                .collect(),
            Duration::from_millis(300),
        );
        let mut bad: Vec<usize> = (0..probes.len())
            .filter(|i| outcomes[*i].reached() != probes[*i].4)
            .collect();
        let mut last: BTreeMap<usize, Outcome> =
            bad.iter().map(|i| (*i, outcomes[*i].clone())).collect();
        for _ in 0..2 {
            if bad.is_empty() {
                break;
            }
            let again = run_probes(
                bad.iter()
                    .map(|i| (probes[*i].1.clone(), probes[*i].2, probes[*i].3))
                    .collect(),
                Duration::from_millis(1500),
            );
            let mut still = Vec::new();
            for (i, o) in bad.iter().zip(again) {
                if o.reached() != probes[*i].4 {
                    last.insert(*i, o);
                    still.push(*i);
                }
            }
            bad = still;
        }
        bad.into_iter()
            .map(|i| {
                let (from, _, to, proto, expected, why) = probes[i].clone();
                Mismatch {
                    from,
                    to,
                    proto,
                    expected,
                    got: last.get(&i).cloned().unwrap_or(Outcome::Timeout),
                    why,
                }
            })
            .collect()
    }

    /// The pod's namespace handle.
    pub fn pod_ns(&self, ns: &str, pod: &str) -> Option<&Netns> {
        self.pods.get(&PodKey::new(ns, pod)).map(|p| &p.ns)
    }

    /// Number of probes [`PolicyLab::check`] runs.
    pub fn probe_count(&self) -> usize {
        let n = self.pods.len();
        n * (n - 1) * 2 * 4 + self.lab.nodes().len() * n * 2
    }
}

/// Runs probes on a pool of worker threads; results in input order.
pub fn run_probes(probes: Vec<(String, SocketAddr, Proto)>, timeout: Duration) -> Vec<Outcome> {
    let n = probes.len();
    let work = Arc::new(Mutex::new(
        probes.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let results = Arc::new(Mutex::new(vec![Outcome::Timeout; n]));
    let workers: Vec<_> = (0..48.min(n.max(1)))
        .map(|_| {
            let work = Arc::clone(&work);
            let results = Arc::clone(&results);
            std::thread::spawn(move || {
                loop {
                    let next = work.lock().ok().and_then(|mut w| w.pop());
                    let Some((i, (ns, to, proto))) = next else {
                        break;
                    };
                    let o = lab::probe(&Netns::existing(&ns), to, proto, timeout);
                    if let Ok(mut r) = results.lock() {
                        r[i] = o;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Arc::try_unwrap(results)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}
