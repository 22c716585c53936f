//! NetworkPolicy dataplane benchmark (not a test). Needs root.
//!
//! `cargo run --release -p integration-tests --example bench_policy [-- --quick]`
//!
//! A synthetic cluster (default 10,000 pods in 100 namespaces, 1,000
//! policies + 2 for the measured pods), one lab node holding every 10th pod
//! as a local endpoint (two of them real, wired pods; the rest exist only as
//! interface names in the rules), the policy engine and the real `nft`
//! executor in the node's namespace. Prints, each beside its anchor from the
//! same run (ratio first):
//!
//! 1. full sync (plan + render + one nft transaction) vs loading the same
//!    rules as one linear rule list (kube-router style);
//! 2. label change → kernel latency, p50/p99 over N changes (a remote pod:
//!    set elements; a local pod: its chain swapped) vs re-applying the
//!    linear list (what a full-restore design does per change);
//! 3. iperf3 TCP throughput and new-connection rate between the two real
//!    pods, in interleaved rounds (order rotated, 1 s settle after each table
//!    load): Margay's table with no policy (the baseline of the goal), our
//!    rules, the linear list, and no table at all (no conntrack either).
//!
//! The label-change latency is shown with the agent's sink (element-only
//! batches over nfnetlink, the rest through a persistent `nft -j -i`
//! session), with that session alone, and with one `nft` process per change.
//! Flags: `--quick`, `--pods N`, `--policies N`, `--local-every N`,
//! `--changes N`, `--iperf-secs N`, `--rounds N`, `--v4-only`;
//! `BENCH_POLICY_DUMP=path` writes the full ruleset JSON.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use integration_tests::lab::{self, Daemon, Lab, Netns, PodSpec};
use node_agent::dataplane::policy::build::*;
use node_agent::dataplane::policy::ruleset::RuleIr;
use node_agent::dataplane::policy::testkit::host_ifname;
use node_agent::dataplane::policy::{
    ClusterState, ContainerPort, Engine, LocalEndpoint, NamespaceInfo, NftSink, NodeContext,
    PodInfo, PodKey, Protocol, Ruleset, nft, plan,
};
use node_agent::dataplane::{FastSink, NftCli, NftSession};

struct Args {
    pods: usize,
    policies: usize,
    local_every: usize,
    changes: usize,
    iperf_secs: u32,
    rounds: usize,
    dual_stack: bool,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            pods: 10_000,
            policies: 1_000,
            local_every: 10,
            changes: 200,
            iperf_secs: 3,
            rounds: 6,
            dual_stack: true,
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < argv.len() {
            let next = argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
            match (argv[i].as_str(), next) {
                ("--quick", _) => {
                    a.pods = 2_000;
                    a.policies = 200;
                    a.changes = 50;
                    a.iperf_secs = 1;
                    a.rounds = 1;
                }
                ("--v4-only", _) => a.dual_stack = false,
                ("--pods", Some(n)) => a.pods = n,
                ("--policies", Some(n)) => a.policies = n,
                ("--local-every", Some(n)) => a.local_every = n.max(1),
                ("--changes", Some(n)) => a.changes = n.max(1),
                ("--iperf-secs", Some(n)) => a.iperf_secs = n.max(1) as u32,
                ("--rounds", Some(n)) => a.rounds = n.max(1),
                _ => {}
            }
            i += if next.is_some() && argv[i] != "--quick" && argv[i] != "--v4-only" {
                2
            } else {
                1
            };
        }
        a
    }
}

const APPS: usize = 10;
const TIERS: [&str; 3] = ["web", "db", "cache"];

fn pod_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 2) as u8)
}

fn pod_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        0,
        0,
        0,
        (i / 250) as u16,
        (i % 250 + 2) as u16,
    )
}

/// The synthetic cluster and this node's view of it.
#[derive(Clone)]
struct Synth {
    state: ClusterState,
    node: NodeContext,
    server: PodKey,
    client: PodKey,
    /// A remote pod and a local pod whose labels the latency test toggles.
    remote: PodKey,
    local: PodKey,
}

fn synth(a: &Args, node_name: &str, node_addrs: Vec<IpAddr>) -> Result<Synth> {
    let namespaces = (a.policies / 10).max(1);
    let per_ns = (a.pods / namespaces).max(1);
    let mut state = ClusterState::default();
    let mut node = NodeContext::new(node_name);
    node.node_addrs = node_addrs;
    for n in 0..namespaces {
        state.add_namespace(
            NamespaceInfo::new(&format!("ns-{n}"))
                .label("team", &format!("t{}", n % 10))
                .label("env", if n % 2 == 0 { "prod" } else { "dev" }),
        );
    }
    let key = |i: usize| PodKey::new(format!("ns-{}", i / per_ns), format!("p{i}"));
    for i in 0..namespaces * per_ns {
        let j = i % per_ns;
        let k = key(i);
        // Mixed so that every 10th pod (the local ones) still varies.
        let mut p = PodInfo::new(k.namespace.clone(), k.name.clone())
            .label("app", &format!("app-{}", (j + j / 10) % APPS))
            .label("tier", TIERS[(j / 3 + j) % 3])
            .label("version", &format!("v{}", (j / 10) % 2))
            .ip(IpAddr::V4(pod_v4(i)))
            .port(ContainerPort::named("http", 8080, Protocol::Tcp))
            .port(ContainerPort::named("metrics", 9090, Protocol::Tcp))
            .port(ContainerPort::named("dns", 53, Protocol::Udp))
            .on_node(if i % a.local_every == 0 {
                node_name
            } else {
                "elsewhere"
            });
        if a.dual_stack {
            p = p.ip(IpAddr::V6(pod_v6(i)));
        }
        if i % a.local_every == 0 {
            node.add_endpoint(LocalEndpoint {
                standalone: false,
                pod: k.clone(),
                iface: host_ifname(&k.namespace, &k.name),
                ips: p.ips.clone(),
            });
        }
        state.add_pod(p);
    }
    // The two measured pods: local, in ns-0, with labels of their own.
    let (server, client) = (key(0), key(a.local_every));
    for (k, app) in [(&server, "iperf-server"), (&client, "iperf-client")] {
        let p = state
            .pods
            .get_mut(k)
            .map(std::sync::Arc::make_mut)
            .ok_or_else(|| anyhow!("no pod {k}"))?;
        p.labels = p.labels.with("app", app);
    }
    for n in 0..namespaces {
        let ns = format!("ns-{n}");
        for np in namespace_policies(&ns, n) {
            state.add_policy(np)?;
        }
    }
    state.add_policy(
        NetPol::new("ns-0", "bench-allow-server")
            .select(sel(&[("app", "iperf-server")]))
            .ingress(
                from(vec![pods(sel(&[("app", "iperf-client")]))])
                    .ports(vec![range("TCP", 5201, 5202)]),
            )
            .build(),
    )?;
    state.add_policy(
        NetPol::new("ns-0", "bench-allow-client")
            .select(sel(&[("app", "iperf-client")]))
            .types(&["Egress"])
            .egress(
                to(vec![pods(sel(&[("app", "iperf-server")]))])
                    .ports(vec![range("TCP", 5201, 5202)]),
            )
            .build(),
    )?;
    Ok(Synth {
        state,
        node,
        server,
        client,
        remote: key(5),
        local: key(2 * a.local_every),
    })
}

/// Ten policies of namespace number `n`, the kinds seen in real clusters.
fn namespace_policies(ns: &str, n: usize) -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
    let app = |k: usize| format!("app-{}", k % APPS);
    let mut v = vec![NetPol::new(ns, "default-deny").build()];
    for j in 1..=6 {
        v.push(
            NetPol::new(ns, &format!("allow-{}", app(j)))
                .select(sel(&[("app", &app(j))]))
                .ingress(from(vec![pods(sel(&[("app", &app(j + 1))]))]).ports(vec![tcp(8080)]))
                .ingress(
                    from(vec![pods_in(
                        sel(&[("tier", "web")]),
                        sel(&[("team", &format!("t{}", (n + j) % 10))]),
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
        NetPol::new(ns, "egress-app-7")
            .select(sel(&[("app", &app(7))]))
            .types(&["Egress"])
            .egress(to(vec![pods(sel(&[]))]))
            .egress(to(vec![namespaces(sel(&[("env", "prod")]))]).ports(vec![udp(53)]))
            .egress(any().ports(vec![named("TCP", "http")]))
            .build(),
    );
    v.push(
        NetPol::new(ns, "db")
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
        NetPol::new(ns, "v1-from-app-9")
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
    v
}

/// The same rules as one linear list per direction (kube-router style):
/// every endpoint's policy lines prefixed with its interface, the measured
/// endpoints last. `setup` empties the O(1) dispatch maps and jumps to the
/// lists once; `body` (re)fills the lists. Returns (setup, body, rules).
fn linear_batch(rs: &Ruleset, last: &[String]) -> (String, String, usize) {
    let mut order: Vec<&String> = rs.dispatch.keys().filter(|i| !last.contains(i)).collect();
    order.extend(last.iter());
    let setup = "flush map inet margay ep_egress\nflush map inet margay ep_ingress\n\
                 add chain inet margay lin_e\nadd chain inet margay lin_i\n\
                 add rule inet margay forward jump lin_e\nadd rule inet margay forward jump lin_i\n"
        .to_string();
    let mut body = String::from("flush chain inet margay lin_e\nflush chain inet margay lin_i\n");
    let mut count = 0;
    for iface in order {
        let Some(d) = rs.dispatch.get(iface) else {
            continue;
        };
        for (target, key, lin) in [
            (&d.egress, "iifname", "lin_e"),
            (&d.ingress, "oifname", "lin_i"),
        ] {
            let rules: Vec<RuleIr> = target
                .as_ref()
                .and_then(|c| rs.chains.get(c).cloned())
                .unwrap_or_default();
            for r in rules {
                body.push_str(&format!(
                    "add rule inet margay {lin} {key} \"{iface}\" {}\n",
                    r.text()
                ));
                count += 1;
            }
        }
    }
    (setup, body, count)
}

fn nft_text(payload: &str) -> Result<()> {
    use std::io::Write as _;
    let mut c = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("nft")?;
    c.stdin
        .take()
        .context("stdin")?
        .write_all(payload.as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 50.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `f` on a thread inside `ns` (children it spawns, like nft, too).
fn inside<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    ns.enter(f)
        .map_err(|e| anyhow!("entering {}: {e}", ns.name()))
}

struct Latencies {
    remote_f: (Vec<f64>, usize, usize),
    local_f: (Vec<f64>, usize, usize),
    remote_s: (Vec<f64>, usize, usize),
    local_s: (Vec<f64>, usize, usize),
    remote_c: (Vec<f64>, usize, usize),
    local_c: (Vec<f64>, usize, usize),
}

struct SyncTimes {
    total_ms: f64,
    plan_render_ms: f64,
    nft_ms: f64,
    sets: usize,
    elems: usize,
    chains: usize,
    rules: usize,
    json_bytes: usize,
}

fn full_sync(s: &Synth) -> Result<(SyncTimes, Engine)> {
    let t0 = Instant::now();
    let mut e = Engine::new(s.node.clone());
    e.load(s.state.clone());
    let mut cli = NftCli::new();
    e.commit(&mut cli)
        .map_err(|err| anyhow!("full sync: {err}"))?;
    let total = t0.elapsed();
    // Breakdown with the pure pipeline and one more full transaction.
    let t1 = Instant::now();
    let p = plan::build(&s.state, &s.node);
    let rs = Ruleset::build(&p, &s.state);
    let plan_render = t1.elapsed();
    let batch = nft::full(&rs);
    let json = nft::to_json(&batch)?.len();
    let t2 = Instant::now();
    cli.apply(&batch)?;
    let nft_t = t2.elapsed();
    let rules = rs.chains.values().map(Vec::len).sum::<usize>();
    Ok((
        SyncTimes {
            total_ms: ms(total),
            plan_render_ms: ms(plan_render),
            nft_ms: ms(nft_t),
            sets: rs.sets.len(),
            elems: rs.sets.values().map(|s| s.elems.len()).sum(),
            chains: rs.chains.len(),
            rules,
            json_bytes: json,
        },
        e,
    ))
}

/// Toggles a pod label `n` times, committing each; latencies in ms and
/// the elements / chains each change touched (summed).
fn label_latency<S: NftSink>(
    e: &mut Engine,
    sink: &mut S,
    pod: &PodKey,
    values: [&str; 2],
    n: usize,
) -> Result<(Vec<f64>, usize, usize)> {
    let mut out = Vec::with_capacity(n);
    let (mut elems, mut chains) = (0, 0);
    // Start with the value the pod does not have yet.
    let current = e
        .state()
        .pods
        .get(pod)
        .and_then(|p| p.labels.get("app").map(str::to_string));
    let values = if current.as_deref() == Some(values[0]) {
        [values[1], values[0]]
    } else {
        values
    };
    for i in 0..n {
        let mut p = e
            .state()
            .pods
            .get(pod)
            .map(|p| PodInfo::clone(p))
            .ok_or_else(|| anyhow!("no pod {pod}"))?;
        p.labels = p.labels.with("app", values[i % 2]);
        let t = Instant::now();
        e.upsert_pod(p);
        let st = e.commit(sink).map_err(|err| anyhow!("commit: {err}"))?;
        out.push(ms(t.elapsed()));
        if st.full {
            bail!("label change fell back to a full rebuild");
        }
        if st.noop {
            bail!("label change of {pod} changed nothing in the rules: pick another pod");
        }
        elems +=
            st.diff.elems_added + st.diff.elems_deleted + st.diff.map_added + st.diff.map_deleted;
        chains += st.diff.chains_added + st.diff.chains_replaced + st.diff.chains_deleted;
    }
    Ok((out, elems, chains))
}

fn iperf(client: &Netns, server: IpAddr, secs: u32) -> Result<f64> {
    let out = client
        .exec(&[
            "iperf3",
            "-c",
            &server.to_string(),
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .map_err(|e| anyhow!("iperf3: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("iperf3 JSON without sum_received"))
}

/// New TCP connections per second (connect, read 1 byte, close).
fn conn_rate(client: &Netns, to: SocketAddr, n: usize) -> Result<f64> {
    inside(client, move || -> Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    })?
}

fn main() -> Result<()> {
    let a = Args::parse();
    lab::can_run().map_err(|why| anyhow!("cannot run: {why}"))?;
    let mut lab = Lab::builder()
        .nodes(1)
        .build()
        .map_err(|e| anyhow!("lab: {e}"))?;
    let node = &lab.nodes()[0];
    let (node_name, node_ns_name) = (node.name.clone(), node.ns.name().to_string());
    let s = synth(
        &a,
        &node_name,
        vec![IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6)],
    )?;
    let mut pods = BTreeMap::new();
    for k in [&s.server, &s.client] {
        let p = &s.state.pods[k];
        let spec = PodSpec {
            namespace: k.namespace.to_string(),
            name: k.name.to_string(),
            ipv4: p.ips.iter().find_map(|i| {
                if let IpAddr::V4(v) = i {
                    Some(*v)
                } else {
                    None
                }
            }),
            ipv6: p.ips.iter().find_map(|i| {
                if let IpAddr::V6(v) = i {
                    Some(*v)
                } else {
                    None
                }
            }),
        };
        pods.insert(
            k.clone(),
            lab.add_pod(&node_name, &spec)
                .map_err(|e| anyhow!("pod: {e}"))?,
        );
    }
    let (server, client) = (&pods[&s.server], &pods[&s.client]);
    let server_ip = IpAddr::V4(server.ipv4.context("server v4")?);
    let log = lab.run_dir().join("iperf3.log");
    let d = Daemon::spawn(&server.ns, "iperf3", &["iperf3", "-s", "-p", "5201"], &log)
        .map_err(|e| anyhow!("iperf3 -s: {e}"))?;
    lab.keep(d);
    let listener = inside(&server.ns, || TcpListener::bind(("::", 5202)))??;
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let mut c = c;
            let _ = std::io::Write::write_all(&mut c, b"x");
        }
    });
    let node_ns = Netns::existing(&node_ns_name);
    lab::wait_reachable(
        &client.ns,
        SocketAddr::new(server_ip, 5202),
        lab::Proto::Tcp,
        Duration::from_secs(10),
    );
    println!(
        "cluster: {} pods, {} namespaces, {} policies; node {}: {} local endpoints ({} real), dual-stack {}",
        s.state.pods.len(),
        s.state.namespaces.len(),
        s.state.policies.len(),
        node_name,
        s.node.endpoints.len(),
        pods.len(),
        a.dual_stack
    );

    // 1. Full sync, three times on a fresh engine; keep the last engine.
    let mut syncs = Vec::new();
    let mut engine = None;
    for _ in 0..3 {
        let s2 = s.clone();
        let (t, e) = inside(&node_ns, move || full_sync(&s2))??;
        syncs.push(t);
        engine = Some(e);
    }
    let mut engine = engine.context("no engine")?;
    let rs = engine.ruleset().clone();
    if let Ok(path) = std::env::var("BENCH_POLICY_DUMP") {
        std::fs::write(&path, nft::to_json(&nft::full(&rs))?)?;
        println!("full ruleset JSON written to {path}");
    }
    let last_if: Vec<String> = [&s.client, &s.server]
        .iter()
        .filter_map(|k| s.node.endpoints.get(*k).map(|e| e.iface.clone()))
        .collect();
    let (lin_setup, lin_body, linear_rules) = linear_batch(&rs, &last_if);
    let linear = format!("{lin_setup}{lin_body}");
    // The anchor from scratch: the same sets, then the linear lists.
    let mut sets_only = rs.clone();
    sets_only.chains.clear();
    sets_only.dispatch.clear();
    let sets_batch = nft::full(&sets_only);
    let lin = linear.clone();
    let lin_load: Vec<f64> = inside(&node_ns, move || -> Result<Vec<f64>> {
        let mut v = Vec::new();
        let mut cli = NftCli::new();
        for _ in 0..3 {
            let t = Instant::now();
            cli.apply(&sets_batch)?;
            nft_text(&lin)?;
            v.push(ms(t.elapsed()));
        }
        Ok(v)
    })??;

    // 2. Label change latency (ours), then the linear re-apply per change.
    let (remote, local, n) = (s.remote.clone(), s.local.clone(), a.changes);
    let (lat, engine_back) = inside(&node_ns, move || -> Result<(Latencies, Engine)> {
        // The linear list was loaded above; start from our own table again.
        // The agent's sink first: element changes over nfnetlink, the rest
        // through an nft session.
        let mut fast = FastSink::new(NftSession::new());
        engine.force_full();
        engine.commit(&mut fast).map_err(|e| anyhow!("{e}"))?;
        let remote_f = label_latency(&mut engine, &mut fast, &remote, ["app-5", "app-6"], n)?;
        let local_f = label_latency(&mut engine, &mut fast, &local, ["app-1", "app-2"], n)?;
        drop(fast);
        let mut session = NftSession::new();
        engine.force_full();
        engine.commit(&mut session).map_err(|e| anyhow!("{e}"))?;
        let remote_s = label_latency(&mut engine, &mut session, &remote, ["app-5", "app-6"], n)?;
        let local_s = label_latency(&mut engine, &mut session, &local, ["app-1", "app-2"], n)?;
        // The same with one nft process per change.
        let mut cli = NftCli::new();
        let remote_c = label_latency(&mut engine, &mut cli, &remote, ["app-5", "app-6"], n)?;
        let local_c = label_latency(&mut engine, &mut cli, &local, ["app-1", "app-2"], n)?;
        Ok((
            Latencies {
                remote_f,
                local_f,
                remote_s,
                local_s,
                remote_c,
                local_c,
            },
            engine,
        ))
    })??;
    engine = engine_back;
    let (lin, body) = (linear.clone(), lin_body.clone());
    let lin_changes = (a.changes / 10).max(5);
    let lin_lat: Vec<f64> = inside(&node_ns, move || -> Result<Vec<f64>> {
        nft_text(&lin)?;
        (0..lin_changes)
            .map(|_| {
                let t = Instant::now();
                nft_text(&body)?;
                Ok(ms(t.elapsed()))
            })
            .collect()
    })??;

    // 3. Throughput and connection rate: none / ours / linear, interleaved.
    let full_ours = nft::full(engine.ruleset());
    // The same node with Margay's table but no NetworkPolicy at all.
    let mut no_policies = s.state.clone();
    no_policies.policies.clear();
    let full_open = nft::full(&Ruleset::build(
        &plan::build(&no_policies, &s.node),
        &no_policies,
    ));
    let mut tput: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rate: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let conn_to = SocketAddr::new(server_ip, 5202);
    let modes = ["none", "open", "ours", "linear"];
    for round in 0..a.rounds {
        // Rotate the order so no mode always follows the same one.
        for k in 0..modes.len() {
            let mode = modes[(round + k) % modes.len()];
            let (ours, lin, open) = (full_ours.clone(), linear.clone(), full_open.clone());
            inside(&node_ns, move || -> Result<()> {
                let mut cli = NftCli::new();
                match mode {
                    "none" => cli.remove_table()?,
                    "open" => cli.apply(&open)?,
                    "ours" => cli.apply(&ours)?,
                    _ => {
                        cli.apply(&ours)?;
                        nft_text(&lin)?;
                    }
                }
                Ok(())
            })??;
            // Let the kernel finish freeing the previous table first.
            std::thread::sleep(Duration::from_secs(1));
            let probe =
                lab::wait_reachable(&client.ns, conn_to, lab::Proto::Tcp, Duration::from_secs(5));
            if !probe.reached() {
                bail!("{mode}: server unreachable from client: {probe:?}");
            }
            tput.entry(mode)
                .or_default()
                .push(iperf(&client.ns, server_ip, a.iperf_secs)?);
            rate.entry(mode)
                .or_default()
                .push(conn_rate(&client.ns, conn_to, 2000)?);
        }
    }

    // Report.
    let sync_total = median(syncs.iter().map(|t| t.total_ms).collect());
    let t = &syncs[syncs.len() - 1];
    let lin_full = median(lin_load.clone());
    println!(
        "\n== full sync ({} policies over {} pods) ==",
        s.state.policies.len(),
        s.state.pods.len()
    );
    println!(
        "ratio linear/ours {:.2}x | ours {:.0} ms (plan+render {:.0} ms, one nft transaction {:.0} ms) | same sets + linear lists {:.0} ms (goal <= 1000 ms)",
        lin_full / sync_total,
        sync_total,
        t.plan_render_ms,
        t.nft_ms,
        lin_full
    );
    println!(
        "   ours: {} sets / {} elements, {} chains / {} rules, {} KiB JSON; linear list: {} rules",
        t.sets,
        t.elems,
        t.chains,
        t.rules,
        t.json_bytes / 1024,
        linear_rules
    );
    let mut ll = lin_lat;
    let lin_p99 = pct(&mut ll, 99.0);
    println!(
        "\n== label change -> kernel ({} changes each; from the event to the committed transaction) ==",
        a.changes
    );
    for (what, (v, elems, chains)) in [
        ("remote pod, agent's sink (nfnetlink)", lat.remote_f),
        ("local pod,  agent's sink (nft)      ", lat.local_f),
        ("remote pod, nft session", lat.remote_s),
        ("local pod,  nft session", lat.local_s),
        ("remote pod, nft per change", lat.remote_c),
        ("local pod,  nft per change", lat.local_c),
    ] {
        let mut v = v;
        println!(
            "ratio linear/this(p99) {:>6.1}x | {what}: p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({:.1} set/map elements, {:.1} chains per change)",
            lin_p99 / pct(&mut v, 99.0),
            pct(&mut v, 50.0),
            pct(&mut v, 99.0),
            pct(&mut v, 100.0),
            elems as f64 / a.changes as f64,
            chains as f64 / a.changes as f64
        );
    }
    println!(
        "anchor: linear list re-applied per change p50 {:.1} ms p99 {:.1} ms (goal p99 <= 10 ms)",
        pct(&mut ll, 50.0),
        lin_p99
    );
    let med = |m: &BTreeMap<&str, Vec<f64>>, k: &str| median(m.get(k).cloned().unwrap_or_default());
    let spread = |m: &BTreeMap<&str, Vec<f64>>, k: &str| {
        let v = m.get(k).cloned().unwrap_or_default();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.1}-{hi:.1}")
    };
    println!(
        "\n== iperf3 TCP between two pods through the rules ({} rounds x {} s, medians) ==",
        a.rounds, a.iperf_secs
    );
    println!(
        "ratio ours/no-policy {:.3} (goal >= 0.95) | no policy (Margay table, 0 policies) {:.2} Gbit/s | ours ({} policies) {:.2} Gbit/s | linear ({} rules) {:.2} Gbit/s (ratio {:.3})",
        med(&tput, "ours") / med(&tput, "open"),
        med(&tput, "open"),
        s.state.policies.len(),
        med(&tput, "ours"),
        linear_rules,
        med(&tput, "linear"),
        med(&tput, "linear") / med(&tput, "open")
    );
    println!(
        "   without any table (no conntrack in the node): {:.2} Gbit/s, ours/that {:.3}; spread (min-max): none {} | no policy {} | ours {} | linear {}",
        med(&tput, "none"),
        med(&tput, "ours") / med(&tput, "none"),
        spread(&tput, "none"),
        spread(&tput, "open"),
        spread(&tput, "ours"),
        spread(&tput, "linear")
    );
    println!(
        "new connections/s (2,000 sequential): ratio ours/no-policy {:.3} | no policy {:.0} | ours {:.0} | linear {:.0} (ratio {:.3}) | no table {:.0}",
        med(&rate, "ours") / med(&rate, "open"),
        med(&rate, "open"),
        med(&rate, "ours"),
        med(&rate, "linear"),
        med(&rate, "linear") / med(&rate, "open"),
        med(&rate, "none")
    );
    drop(pods);
    Ok(())
}
