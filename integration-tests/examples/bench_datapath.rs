//! Datapath benchmark (not a test): pod-to-pod TCP throughput (iperf3) and
//! new-connection rate across a node pair, through Margay's real policy
//! ruleset (`plan::build` → `Ruleset::build` → `nft::full`, the table the
//! agent loads) with R policy rules in front of the receiving pod and E
//! elements in the set that lets the sender in, next to the same pods with
//! no table at all (plain veth + routing: the baseline) and with Margay's
//! table but no policy (0 rules), all in the same run. Needs root and iperf3.
//!
//! ```text
//! cargo run --release -p integration-tests --example bench_datapath -- \
//!     [--rules 1000,10000] [--elems 10000,100000] [--rounds 3] [--secs 2] \
//!     [--conns 2000] [--v4] [--quick]
//! ```
//!
//! Two lab nodes on the ToR's bridge; the client pod on n1, the server pod
//! on n2, each node routing the other's pod through the other's underlay
//! address (what BGP would install). The cluster: R-1 policies select the
//! server, each allowing one other pod selector (each with a non-empty pod
//! set) on the server's ports, and a last one allowing the client's
//! selector (`app=zz-client`, which E pods share, the client among them).
//! The ruleset merges the pod-selector peers of rules with equal ports into
//! one set per family, so that chain stays a handful of lines however many
//! policies there are. `--distinct-ports`: each of the R-1 other policies
//! allows a TCP port range of its own instead, sorted before the server's:
//! lines that cannot share a set, all walked before the client's. The
//! server's ingress chain is printed with the position of the line that
//! admits the client: the SYN of every new connection walks the chain up
//! to it; later packets are accepted by conntrack before any policy rule.
//! Both nodes load their own table, as each node's agent would.
//!
//! Traffic is IPv6 by default (2001:db8::/32 holds 100k distinct pod
//! addresses; 198.19.0.0/16 does not): `--v4` measures IPv4 with E ≤ 60,000.
//! The connection rate is measured by a small connect/read-one-byte/close
//! loop in Rust: netperf (TCP_CRR) is in Debian's non-free archive, not
//! installable here, and sockperf/nuttcp measure persistent connections.
//!
//! Every policy mode is checked before it is measured: the client's
//! connection to a port no policy allows (5203) must time out (dropped by
//! the rules), where without policy it is refused by the server's kernel.
//! Modes are interleaved per round (order rotated), 1 s settle after each
//! table load; figures are medians over rounds.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use integration_tests::lab::{self, Daemon, Lab, Netns, PodSpec};
use node_agent::dataplane::NftCli;
use node_agent::dataplane::policy::build::*;
use node_agent::dataplane::policy::model::Protocol;
use node_agent::dataplane::policy::ruleset::{AddrField, Elem, Match};
use node_agent::dataplane::policy::{
    ClusterState, LocalEndpoint, NamespaceInfo, NftSink, NodeContext, PodInfo, PodKey, Ruleset,
    nft, plan,
};

const NS: &str = "bench";
const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 5202;
const DENIED_PORT: u16 = 5203;
/// The client's `app` label: it sorts after every `peer-N`, so the line
/// that admits the client comes after all the others in the chain (rules
/// are ordered by their peers): every new connection walks all of them.
const CLIENT_APP: &str = "zz-client";

struct Args {
    rules: Vec<usize>,
    elems: Vec<usize>,
    rounds: usize,
    secs: u32,
    conns: usize,
    v4: bool,
    /// Each of the R-1 other policies on a port of its own (lines that
    /// cannot share a set), instead of the server's ports.
    distinct_ports: bool,
}

fn list(v: &str) -> Option<Vec<usize>> {
    v.split(',').map(|s| s.trim().parse().ok()).collect()
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            rules: vec![1_000, 10_000],
            elems: vec![10_000, 100_000],
            rounds: 3,
            secs: 2,
            conns: 2_000,
            v4: false,
            distinct_ports: false,
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < argv.len() {
            let val = argv.get(i + 1).map(String::as_str).unwrap_or("");
            let bad = || anyhow!("bad value {val:?} for {}", argv[i]);
            let mut step = 2;
            match argv[i].as_str() {
                "--quick" => {
                    a.rules = vec![100];
                    a.elems = vec![1_000];
                    a.rounds = 1;
                    a.secs = 1;
                    a.conns = 300;
                    step = 1;
                }
                "--v4" => {
                    a.v4 = true;
                    step = 1;
                }
                "--distinct-ports" => {
                    a.distinct_ports = true;
                    step = 1;
                }
                "--rules" => a.rules = list(val).ok_or_else(bad)?,
                "--elems" => a.elems = list(val).ok_or_else(bad)?,
                "--rounds" => a.rounds = val.parse::<usize>().map_err(|_| bad())?.max(1),
                "--secs" => a.secs = val.parse::<u32>().map_err(|_| bad())?.max(1),
                "--conns" => a.conns = val.parse::<usize>().map_err(|_| bad())?.max(10),
                other => bail!("unknown argument {other}"),
            }
            i += step;
        }
        if a.v4 && a.elems.iter().any(|&e| e > 60_000) {
            bail!("--v4: at most 60,000 set elements fit in 198.19.0.0/16 next to the peers");
        }
        if a.rules.contains(&0) || a.elems.contains(&0) {
            bail!("--rules and --elems start at 1 (0 rules is always measured)");
        }
        Ok(a)
    }
}

/// Address number `i` of the synthetic pods (never the two real ones).
fn synth_ip(v4: bool, i: usize) -> IpAddr {
    if v4 {
        let i = i + 2 * 256; // 198.19.0.x and 198.19.1.x hold the real pods
        IpAddr::V4(Ipv4Addr::new(198, 19, (i >> 8) as u8, (i & 0xff) as u8))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x100,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    }
}

struct Real {
    node: String,
    iface: String,
    ips: Vec<IpAddr>,
}

/// The cluster for R rules / E elements and each node's table.
struct Mode {
    name: String,
    rules: usize,
    elems: usize,
    /// (node name, batch), one per node.
    batches: Vec<(String, nft::Batch)>,
    /// Lines of the server's ingress chain, position of the admitting line.
    chain: Option<(usize, usize)>,
    /// Elements of the set the admitting line looks up.
    set_elems: usize,
    build_ms: f64,
}

fn cluster(a: &Args, rules: usize, elems: usize, client: &Real, server: &Real) -> ClusterState {
    let mut st = ClusterState::default();
    st.add_namespace(NamespaceInfo::new(NS).label("team", "bench"));
    let mut n = 0;
    let mut add = |st: &mut ClusterState, name: String, app: &str| {
        st.add_pod(
            PodInfo::new(NS, name.as_str())
                .label("app", app)
                .ip(synth_ip(a.v4, n))
                .on_node("elsewhere"),
        );
        n += 1;
    };
    for k in 0..elems.saturating_sub(1) {
        add(&mut st, format!("c{k}"), CLIENT_APP);
    }
    for k in 0..rules.saturating_sub(1) {
        add(&mut st, format!("peer{k}"), &format!("peer-{k}"));
    }
    for (name, app, r) in [("client", CLIENT_APP, client), ("server", "server", server)] {
        let mut p = PodInfo::new(NS, name).label("app", app).on_node(&r.node);
        for ip in &r.ips {
            p = p.ip(*ip);
        }
        st.add_pod(p);
    }
    st
}

fn policies(st: &mut ClusterState, rules: usize, distinct_ports: bool) -> Result<()> {
    let ports = || vec![range("TCP", IPERF_PORT as i32, CONN_PORT as i32)];
    for k in 0..rules.saturating_sub(1) {
        let p = if distinct_ports {
            // Distinct TCP ranges that sort before the server's (lines are
            // grouped by port match in order): the SYN walks them all.
            let lo = 1 + (k % 5000) as i32;
            vec![range("TCP", lo, lo + (k / 5000) as i32)]
        } else {
            ports()
        };
        st.add_policy(
            NetPol::new(NS, &format!("p{k:05}"))
                .select(sel(&[("app", "server")]))
                .ingress(from(vec![pods(sel(&[("app", &format!("peer-{k}"))]))]).ports(p))
                .build(),
        )?;
    }
    st.add_policy(
        NetPol::new(NS, "zz-allow-client")
            .select(sel(&[("app", "server")]))
            .ingress(from(vec![pods(sel(&[("app", CLIENT_APP)]))]).ports(ports()))
            .build(),
    )?;
    Ok(())
}

fn node_ctx(name: &str, addrs: Vec<IpAddr>, ep: &Real, key: PodKey) -> NodeContext {
    let mut c = NodeContext::new(name);
    c.node_addrs = addrs;
    c.add_endpoint(LocalEndpoint {
        standalone: false,
        pod: key,
        iface: ep.iface.clone(),
        ips: ep.ips.clone(),
    });
    c
}

fn mode(
    a: &Args,
    rules: usize,
    elems: usize,
    nodes: &[(String, Vec<IpAddr>)],
    client: &Real,
    server: &Real,
    peer_ip: IpAddr,
) -> Result<Mode> {
    let t = Instant::now();
    let mut st = cluster(a, rules, elems, client, server);
    if rules > 0 {
        policies(&mut st, rules, a.distinct_ports)?;
    }
    let mut batches = Vec::new();
    let (mut chain, mut set_elems) = (None, 0);
    for ((name, addrs), (ep, pod)) in nodes.iter().zip([(client, "client"), (server, "server")]) {
        let ctx = node_ctx(name, addrs.clone(), ep, PodKey::new(NS, pod));
        let rs = Ruleset::build(&plan::build(&st, &ctx), &st);
        if pod == "server" {
            (chain, set_elems) = admitting_line(&rs, &server.iface, peer_ip);
        }
        batches.push((name.clone(), nft::full(&rs)));
    }
    let name = if rules == 0 {
        "0 rules".to_string()
    } else {
        format!("{rules} rules / {elems} elems")
    };
    if rules > 0 && chain.is_none() {
        bail!("{name}: the server's ingress chain has no line admitting {peer_ip}");
    }
    Ok(Mode {
        name,
        rules,
        elems,
        batches,
        chain,
        set_elems,
        build_ms: t.elapsed().as_secs_f64() * 1e3,
    })
}

/// (lines, 1-based position of the first line whose source set holds `ip`,
/// or `ip` on the connection port for a merged `addr . proto . port` set),
/// and that set's size.
fn admitting_line(rs: &Ruleset, iface: &str, ip: IpAddr) -> (Option<(usize, usize)>, usize) {
    let Some(rules) = rs
        .dispatch
        .get(iface)
        .and_then(|d| d.ingress.as_ref())
        .and_then(|c| rs.chains.get(c))
    else {
        return (None, 0);
    };
    for (i, r) in rules.iter().enumerate() {
        for m in &r.matches {
            let admits = match m {
                Match::Addr(AddrField::Saddr, _, set) => rs
                    .sets
                    .get(set)
                    .filter(|s| s.elems.contains(&Elem::Addr(ip))),
                // Rules merged into one `addr . proto . port` set.
                Match::AddrProtoPort(AddrField::Saddr, _, set) => rs.sets.get(set).filter(|s| {
                    s.elems
                        .contains(&Elem::AddrProtoPort(ip, Protocol::Tcp, CONN_PORT))
                }),
                _ => None,
            };
            if let Some(s) = admits {
                return (Some((rules.len(), i + 1)), s.elems.len());
            }
        }
    }
    (None, 0)
}

fn inside<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    ns.enter(f)
        .map_err(|e| anyhow!("entering {}: {e}", ns.name()))
}

fn iperf(client: &Netns, server: IpAddr, secs: u32) -> Result<f64> {
    let out = client
        .exec(&[
            "iperf3",
            "-c",
            &server.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
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

/// New TCP connections per second (connect, read 1 byte, close), sequential.
fn conn_rate(client: &Netns, to: SocketAddr, n: usize) -> Result<f64> {
    inside(client, move || -> Result<f64> {
        let t = Instant::now();
        for i in 0..n {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connection {i} to {to}"))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    })?
}

/// Whether a connection to `to` is dropped (times out) rather than refused.
fn dropped(client: &Netns, to: SocketAddr) -> Result<bool> {
    inside(client, move || {
        match TcpStream::connect_timeout(&to, Duration::from_millis(300)) {
            Err(e) => e.kind() == std::io::ErrorKind::TimedOut,
            Ok(_) => false,
        }
    })
}

fn load(nodes: &BTreeMap<String, Netns>, m: Option<&Mode>) -> Result<f64> {
    let t = Instant::now();
    for (name, ns) in nodes {
        let batch = m.and_then(|m| {
            m.batches
                .iter()
                .find(|(n, _)| n == name)
                .map(|b| b.1.clone())
        });
        inside(ns, move || -> Result<()> {
            let mut cli = NftCli::new();
            match batch {
                Some(b) => cli.apply(&b)?,
                None => cli.remove_table()?,
            }
            Ok(())
        })??;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.1}-{hi:.1}")
}

fn main() -> Result<()> {
    let a = Args::parse()?;
    lab::can_run().map_err(|why| anyhow!("cannot run: {why}"))?;
    let mut lab = Lab::builder()
        .nodes(2)
        .build()
        .map_err(|e| anyhow!("lab: {e}"))?;
    let (n1, n2) = (&lab.nodes()[0], &lab.nodes()[1]);
    let nodes_info = vec![
        (
            n1.name.clone(),
            vec![IpAddr::V4(n1.ipv4), IpAddr::V6(n1.ipv6)],
        ),
        (
            n2.name.clone(),
            vec![IpAddr::V4(n2.ipv4), IpAddr::V6(n2.ipv6)],
        ),
    ];
    let (n1_name, n2_name) = (n1.name.clone(), n2.name.clone());
    let (n1_v4, n1_v6, n2_v4, n2_v6) = (n1.ipv4, n1.ipv6, n2.ipv4, n2.ipv6);
    let spec = |name: &str, third: u8| PodSpec {
        namespace: NS.into(),
        name: name.into(),
        ipv4: Some(Ipv4Addr::new(198, 19, third, 2)),
        ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, third as u16, 0, 0, 0, 0, 2)),
    };
    let client = lab
        .add_pod(&n1_name, &spec("client", 0))
        .map_err(|e| anyhow!("client pod: {e}"))?;
    let server = lab
        .add_pod(&n2_name, &spec("server", 1))
        .map_err(|e| anyhow!("server pod: {e}"))?;
    let (c4, c6) = (client.ipv4.context("v4")?, client.ipv6.context("v6")?);
    let (s4, s6) = (server.ipv4.context("v4")?, server.ipv6.context("v6")?);
    // Each node routes the other's pod via the other's underlay address.
    let node_ns: BTreeMap<String, Netns> = lab
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), Netns::existing(n.ns.name())))
        .collect();
    node_ns[&n1_name]
        .ip_batch(&[
            format!("route replace {s4}/32 via {n2_v4}"),
            format!("route replace {s6}/128 via {n2_v6}"),
        ])
        .map_err(|e| anyhow!("n1 routes: {e}"))?;
    node_ns[&n2_name]
        .ip_batch(&[
            format!("route replace {c4}/32 via {n1_v4}"),
            format!("route replace {c6}/128 via {n1_v6}"),
        ])
        .map_err(|e| anyhow!("n2 routes: {e}"))?;
    let (client_ip, server_ip) = if a.v4 {
        (IpAddr::V4(c4), IpAddr::V4(s4))
    } else {
        (IpAddr::V6(c6), IpAddr::V6(s6))
    };
    let log = lab.run_dir().join("iperf3.log");
    let port = IPERF_PORT.to_string();
    let d = Daemon::spawn(&server.ns, "iperf3", &["iperf3", "-s", "-p", &port], &log)
        .map_err(|e| anyhow!("iperf3 -s: {e}"))?;
    lab.keep(d);
    let listener = inside(&server.ns, || TcpListener::bind(("::", CONN_PORT)))??;
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut c, b"x");
        }
    });
    let conn_to = SocketAddr::new(server_ip, CONN_PORT);
    let probe = lab::wait_reachable(
        &client.ns,
        conn_to,
        lab::Proto::Tcp,
        Duration::from_secs(10),
    );
    if !probe.reached() {
        bail!("server {conn_to} unreachable from the client pod across nodes: {probe:?}");
    }

    let real = |p: &lab::Pod| Real {
        node: p.node.clone(),
        iface: p.host_if.clone(),
        ips: [p.ipv4.map(IpAddr::V4), p.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect(),
    };
    let (rc, rs) = (real(&client), real(&server));
    let mut modes = vec![mode(&a, 0, 1, &nodes_info, &rc, &rs, client_ip)?];
    for &r in &a.rules {
        for &e in &a.elems {
            modes.push(mode(&a, r, e, &nodes_info, &rc, &rs, client_ip)?);
        }
    }
    println!(
        "node pair {n1_name} (client {client_ip}) -> {n2_name} (server {server_ip}), IPv{}{}; {} rounds x (iperf3 {} s + {} sequential connections); load: {}",
        if a.v4 { 4 } else { 6 },
        if a.distinct_ports {
            ", other policies on distinct ports"
        } else {
            ""
        },
        a.rounds,
        a.secs,
        a.conns,
        uptime()
    );
    for m in modes.iter().filter(|m| m.rules > 0) {
        let (lines, pos) = m.chain.unwrap_or((0, 0));
        println!(
            "   {}: server ingress chain {lines} lines, the client admitted by line {pos} (set of {} elements); plan+render {:.0} ms",
            m.name, m.set_elems, m.build_ms
        );
    }

    let denied = SocketAddr::new(server_ip, DENIED_PORT);
    let mut tput: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut rate: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut load_ms: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    // Index 0: no table (baseline); i + 1: modes[i].
    let count = modes.len() + 1;
    for round in 0..a.rounds {
        for k in 0..count {
            let idx = (round + k) % count;
            let m = idx.checked_sub(1).map(|i| &modes[i]);
            load_ms.entry(idx).or_default().push(load(&node_ns, m)?);
            std::thread::sleep(Duration::from_secs(1));
            let probe =
                lab::wait_reachable(&client.ns, conn_to, lab::Proto::Tcp, Duration::from_secs(5));
            if !probe.reached() {
                bail!("mode {idx}: server unreachable from client: {probe:?}");
            }
            let is_dropped = dropped(&client.ns, denied)?;
            let policy = m.is_some_and(|m| m.rules > 0);
            if is_dropped != policy {
                bail!(
                    "mode {}: a connection to port {DENIED_PORT} was {} (expected {})",
                    m.map_or("no table", |m| m.name.as_str()),
                    if is_dropped { "dropped" } else { "not dropped" },
                    if policy {
                        "dropped by policy"
                    } else {
                        "refused"
                    }
                );
            }
            tput.entry(idx)
                .or_default()
                .push(iperf(&client.ns, server_ip, a.secs)?);
            rate.entry(idx)
                .or_default()
                .push(conn_rate(&client.ns, conn_to, a.conns)?);
        }
    }
    load(&node_ns, None)?;

    let base_t = median(tput[&0].clone());
    let base_r = median(rate[&0].clone());
    let open_t = median(tput[&1].clone());
    let open_r = median(rate[&1].clone());
    println!(
        "\n== pod-to-pod across two nodes, medians of {} rounds (spread min-max) ==",
        a.rounds
    );
    println!(
        "baseline, no table (veth + routing, no conntrack): {:.2} Gbit/s ({}), {:.0} conn/s ({})",
        base_t,
        spread(&tput[&0]),
        base_r,
        spread(&rate[&0])
    );
    for (i, m) in modes.iter().enumerate() {
        let (t, r) = (&tput[&(i + 1)], &rate[&(i + 1)]);
        let (mt, mr) = (median(t.clone()), median(r.clone()));
        println!(
            "ratio tput {:.3} conn {:.3} (to 0 rules: {:.3} / {:.3}) | {:<26} {:.2} Gbit/s ({}), {:.0} conn/s ({}), table load {:.0} ms",
            mt / base_t,
            mr / base_r,
            mt / open_t,
            mr / open_r,
            m.name,
            mt,
            spread(t),
            mr,
            spread(r),
            median(load_ms[&(i + 1)].clone())
        );
    }
    breakdown(&modes, &rate, open_r);
    if let Some((i, m)) = modes.iter().enumerate().rfind(|(_, m)| m.rules > 0) {
        let mt = median(tput[&(i + 1)].clone());
        let mr = median(rate[&(i + 1)].clone());
        println!(
            "goals ({}): throughput {:.3} of baseline (goal >= 0.95: {}), connection rate {:.3} (goal >= 0.90: {})",
            m.name,
            mt / base_t,
            if mt / base_t >= 0.95 {
                "met"
            } else {
                "NOT met"
            },
            mr / base_r,
            if mr / base_r >= 0.90 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    drop((client, server));
    Ok(())
}

/// Where a new connection's time goes: the cost of one chain line (from
/// two rule counts at the same set size: the extra microseconds per
/// connection over the extra lines the SYN walks) and the effect of the
/// set's size (two set sizes at the same rule count).
fn breakdown(modes: &[Mode], rate: &BTreeMap<usize, Vec<f64>>, open_r: f64) {
    let us = |i: usize| 1e6 / median(rate[&(i + 1)].clone());
    let walked = |m: &Mode| m.chain.map_or(0, |(_, pos)| pos);
    println!(
        "breakdown of a new connection (0 rules: {:.1} us):",
        1e6 / open_r
    );
    for (i, a) in modes.iter().enumerate().filter(|(_, m)| m.rules > 0) {
        for (j, b) in modes.iter().enumerate().skip(i + 1) {
            if a.elems == b.elems && walked(b) > walked(a) {
                println!(
                    "   rule lines walked {} -> {} (sets of {}): {:.1} -> {:.1} us per connection, {:.0} ns per line",
                    walked(a),
                    walked(b),
                    a.elems,
                    us(i),
                    us(j),
                    (us(j) - us(i)) * 1e3 / (walked(b) - walked(a)) as f64
                );
            }
            if a.rules == b.rules && a.elems != b.elems {
                println!(
                    "   set of {} -> {} elements ({} rules): {:.1} -> {:.1} us per connection",
                    a.elems,
                    b.elems,
                    a.rules,
                    us(i),
                    us(j)
                );
            }
        }
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
