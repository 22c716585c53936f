//! Benchmark (not a test): the `margay` CNI plugin through the **real**
//! agent — IPAM on the API test server, host route and NetworkPolicy
//! programmed before EndpointUp answers — against the reference `ptp` +
//! `host-local`, on identical fresh pod namespaces in one lab node,
//! interleaved so machine noise hits both. Both plugins are exec'd directly
//! from a thread inside the node namespace, as a runtime on the node would.
//!
//! ```text
//! cargo build --release -p node-agent -p cni-plugin -p integration-tests --bins
//! rustup target add x86_64-unknown-linux-musl
//! cargo build --profile release-cni -p cni-plugin \
//!     --target x86_64-unknown-linux-musl   # the margay we ship (scripts/image)
//! cargo run --release -p integration-tests --example bench_cni_agent -- \
//!     [--runs 200] [--concurrent 50] [--resident 1] [--margay PATH] [--keep-logs DIR]
//!     [--steps-runs 50]
//!     [--api-latency-ms 3] [--watch-delay-ms 2] [--reserve 4] [--compare PATH]
//! ```
//! `--compare PATH` runs a second margay binary (say, the build before a
//! change) in the same loop, interleaved with the first and with ptp, and
//! prints its figures and step medians too: an A/B comparison under the
//! same machine noise.
//! The API server answers as a real one does, not instantly: every request
//! waits `--api-latency-ms` (an etcd commit and the network) and every
//! watch event arrives `--watch-delay-ms` after its commit (the watch
//! cache); 0 and 0 give the old, lenient figures.
//!
//! Each round also measures the floor the issue's 0.35x goal must clear:
//! the same kernel work done in-process with margay's own wiring (no exec,
//! no agent, no IPAM) and the exec of the plugin alone (VERSION), so the
//! output says how much of an ADD is above what any plugin must pay.
//!
//! The timed margay ADDs run with the plugin's log level from the shipped
//! conflist (`deploy/margay.yaml`'s ConfigMap: one line per ADD at info),
//! as on a node; where an ADD's time goes (the step table) comes from a
//! separate pass of `--steps-runs` pairs per binary logging at debug.
//!
//! After every margay ADD (outside the timed part) it checks the contract:
//! the /32 host route and the endpoint's entry in the policy dispatch map
//! are in the kernel. A run in which any is missing fails without printing
//! a ratio: a fast ADD that did not do the work is not a result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use integration_tests::cni::{self, Attachment};
use integration_tests::k8s;
use integration_tests::lab::{self, Lab, Netns};
use serde_json::{Value, json};

const PTP: &str = "/usr/lib/cni/ptp";

/// The value after flag `name`, if given.
fn arg_str(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn arg(name: &str, default: usize) -> usize {
    arg_str(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds since UTC midnight (the plugin log's clock).
fn wall() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    now % 86_400.0
}

/// Runs a CNI plugin from a thread inside `node` (the child inherits the
/// namespace), returns (elapsed, success, stdout, wall clock at spawn and
/// at exit).
fn exec(
    node: &Netns,
    bin: &Path,
    command: &str,
    conf: &str,
    a: &Attachment,
) -> (Duration, bool, Value, (f64, f64)) {
    let (bin, conf, a, command) = (
        bin.to_path_buf(),
        conf.to_string(),
        a.clone(),
        command.to_string(),
    );
    node.enter(move || {
        use std::io::Write as _;
        let started = Instant::now();
        let t0 = wall();
        let mut child = Command::new(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_PATH", "/usr/lib/cni")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    a.pod_namespace, a.pod_name
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(conf.as_bytes());
        }
        let out = child.wait_with_output().expect("plugin output");
        let took = started.elapsed();
        (
            took,
            out.status.success(),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            (t0, wall()),
        )
    })
    .expect("enter node")
}

/// One margay binary's side of the sequential loop: its ADD/DEL times,
/// exec/exit clocks per container and contract misses.
struct MargaySide {
    bin: PathBuf,
    /// Container id prefix.
    tag: &'static str,
    /// Pod name prefix (the pods exist in the API).
    pod: &'static str,
    add: Vec<Duration>,
    del: Vec<Duration>,
    spans: std::collections::BTreeMap<String, (f64, f64)>,
    contract_misses: usize,
}

impl MargaySide {
    fn new(bin: PathBuf, tag: &'static str, pod: &'static str) -> Self {
        MargaySide {
            bin,
            tag,
            pod,
            add: Vec::new(),
            del: Vec::new(),
            spans: Default::default(),
            contract_misses: 0,
        }
    }

    /// ADD (timed), the contract check (untimed), DEL (timed) of pod `i`.
    fn pair(&mut self, lab: &Lab, node: &Netns, conf: &str, i: usize) -> anyhow::Result<()> {
        let pod = format!("{}{i}", self.pod);
        let ns = Netns::create(&lab.pod_ns_name("bench", &pod))?;
        let a = bench_attachment(format!("{}{i}", self.tag), &ns, &pod);
        let (t, ok, res, span) = exec(node, &self.bin, "ADD", conf, &a);
        anyhow::ensure!(ok, "{} ADD {i} failed: {res}", self.bin.display());
        self.add.push(t);
        self.spans.insert(a.container_id.clone(), span);
        let host_if = res["interfaces"][0]["name"]
            .as_str()
            .unwrap_or("-")
            .to_string();
        let ip = res["ips"][0]["address"]
            .as_str()
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let routes = node.ip(&["-4", "route", "show", "proto", "81"])?;
        let map = node.exec(&["nft", "list", "map", "inet", "margay", "ep_ingress"])?;
        if !(routes
            .lines()
            .any(|l| l.starts_with(&format!("{ip} ")) && l.contains(&host_if))
            && map.contains(&host_if))
        {
            self.contract_misses += 1;
        }
        let (t, ok, res, _) = exec(
            node,
            &self.bin,
            "DEL",
            &cni::with_prev_result(conf, &res),
            &a,
        );
        anyhow::ensure!(ok, "{} DEL {i} failed: {res}", self.bin.display());
        self.del.push(t);
        Ok(())
    }

    /// Fails the run if any ADD returned before its route or policy was in
    /// the kernel: no figures for a run that skipped the work.
    fn ensure_contract(&self, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.contract_misses == 0,
            "{} of {} ADDs of {}{what} returned before their route or policy was in the kernel: no figures for a run that skipped the work",
            self.contract_misses,
            self.add.len(),
            self.bin.display()
        );
        Ok(())
    }
}

/// Pair `i` of margay and, when comparing, of the other binary, the two
/// alternating which goes first.
fn interleaved(
    a: &mut MargaySide,
    b: Option<&mut MargaySide>,
    lab: &Lab,
    node: &Netns,
    conf: &str,
    i: usize,
) -> anyhow::Result<()> {
    match b {
        Some(b) if i % 2 == 1 => {
            b.pair(lab, node, conf, i)?;
            a.pair(lab, node, conf, i)
        }
        Some(b) => {
            a.pair(lab, node, conf, i)?;
            b.pair(lab, node, conf, i)
        }
        None => a.pair(lab, node, conf, i),
    }
}

/// Pod `bench/<pod>` in `ns`, container `id`, interface eth0.
fn bench_attachment(id: String, ns: &Netns, pod: &str) -> Attachment {
    Attachment {
        container_id: id,
        netns: ns.path().display().to_string(),
        ifname: "eth0".into(),
        pod_namespace: "bench".into(),
        pod_name: pod.into(),
    }
}

fn stats(v: &[Duration]) -> (f64, f64) {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (0.0, 0.0);
    }
    let p = |q: f64| s[((s.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.95))
}

fn main() -> anyhow::Result<()> {
    lab::can_run().map_err(anyhow::Error::msg)?;
    let runs = arg("--runs", 200);
    // --margay PATH, else the binary we ship (scripts/image): the
    // release-cni profile (LTO, one codegen unit, panic=abort, stripped),
    // static against musl if built so (else against glibc, if built so),
    // else the release build next to this example.
    let margay = match arg_str("--margay") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = lab::workspace_bin("margay")?
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf);
            let shipped = target.and_then(|t| {
                [
                    "x86_64-unknown-linux-musl/release-cni/margay",
                    "x86_64-unknown-linux-gnu/release-cni/margay",
                    "release-cni/margay",
                ]
                .iter()
                .map(|p| t.join(p))
                .find(|p| p.is_file())
            });
            match shipped {
                Some(p) => p,
                None => lab::workspace_bin("margay")?,
            }
        }
    };
    println!("margay: {}", margay.display());
    let compare = arg_str("--compare").map(PathBuf::from);
    if let Some(b) = &compare {
        println!(
            "compared with: {} (interleaved in the same loop)",
            b.display()
        );
    }
    if !Path::new(PTP).exists() {
        anyhow::bail!("{PTP} not found (Debian's containernetworking-plugins)");
    }
    let lab = Lab::builder().nodes(1).build()?;
    let api_latency = arg("--api-latency-ms", 3).to_string();
    let watch_delay = arg("--watch-delay-ms", 2).to_string();
    println!(
        "API server: {api_latency} ms per request, watch events {watch_delay} ms after commit"
    );
    let _api = k8s::start_apiserver_with(
        &lab,
        &[
            "--latency-ms",
            &api_latency,
            "--watch-delay-ms",
            &watch_delay,
        ],
    )?;
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/18")])?;
    // --keep-logs DIR: the agent logs at debug, and its log and the
    // plugin's are copied to DIR at the end (for a timeline of one ADD).
    let keep_logs = arg_str("--keep-logs").map(PathBuf::from);
    let level = if keep_logs.is_some() {
        "info,margay=debug,node_agent=debug"
    } else {
        "warn"
    };
    // --reserve N: the agent's IPAM reserve (units; 0 = off, every ADD
    // waits for its block write at EndpointUp).
    let reserve = arg("--reserve", 4).to_string();
    let agent = k8s::start_agent(
        &lab,
        "n1",
        &["--log-level", level, "--ipam-reserve", &reserve],
    )?;
    // Pods exist before their sandboxes (kubelet), and a policy selects
    // them all, so every EndpointUp must program policy.
    let n = runs;
    let conc = arg("--concurrent", 50);
    let resident = arg("--resident", 1);
    let with_b = compare.is_some();
    k8s::with_client(lab.tor(), move |c| async move {
        let names = (0..n)
            .map(|i| format!("p{i}"))
            .chain((0..if with_b { n } else { 0 }).map(|i| format!("b{i}")))
            .chain((0..conc).map(|i| format!("c{i}")))
            .chain((0..resident).map(|i| format!("r{i}")));
        for name in names {
            k8s::create_pod(&c, "bench", &name, "n1", &[("app", "bench")], &[]).await?;
        }
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "same-app", "namespace": "bench"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench"}}}]}]}
        }))
        .map_err(kube::Error::SerdeError)?;
        kube::Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(c, "bench")
            .create(&Default::default(), &np)
            .await?;
        Ok::<_, kube::Error>(())
    })??;
    std::thread::sleep(Duration::from_secs(1)); // the agent's watch catches up
    let node = Netns::existing(lab.node("n1")?.ns.name());
    // The timed ADDs log as the shipped conflist has the plugin log (one
    // line per ADD at "info"); the step table comes from a separate pass
    // at debug, after them.
    let shipped = k8s::shipped_plugin_conf()?;
    let shipped_level = shipped["log_level"]
        .as_str()
        .context("the shipped conflist's margay plugin has no log_level")?
        .to_string();
    let margay_conf = cni::margay_conf_at(&agent, &lab.run_dir().join("cni.log"), &shipped_level);
    // Pods already running on the node (default 1), as on any node with a
    // workload: the policy chain and selector sets the benchmark's pods
    // share exist already, so each ADD adds elements only. --resident 0 is
    // an empty node, where every ADD also creates them and every DEL
    // deletes them.
    let mut residents = Vec::new();
    for i in 0..resident {
        let ns = Netns::create(&lab.pod_ns_name("bench", &format!("r{i}")))?;
        let a = bench_attachment(format!("r{i}"), &ns, &format!("r{i}"));
        let (_, ok, res, _) = exec(&node, &margay, "ADD", &margay_conf, &a);
        anyhow::ensure!(ok, "margay ADD of resident pod r{i} failed: {res}");
        residents.push(ns);
    }
    let ptp_conf = json!({
        "cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp", "mtu": 1500,
        "ipam": {"type": "host-local", "subnet": "198.19.128.0/20",
                 "dataDir": lab.run_dir().join("host-local"), "routes": [{"dst": "0.0.0.0/0"}]},
    })
    .to_string();
    let ptp_bin = PathBuf::from(PTP);

    println!(
        "{runs} sequential ADD/DEL pairs each ({resident} resident pods on the node), interleaved; margay through the real agent (IPAM on the API test server,"
    );
    println!(
        "route + NetworkPolicy programmed before EndpointUp answers; IPAM reserve {reserve} units); ptp + host-local (route by ptp, no policy)\n"
    );
    let (mut p_add, mut p_del) = (vec![], vec![]);
    let (mut floor, mut version) = (vec![], vec![]);
    let mut a_side = MargaySide::new(margay.clone(), "m", "p");
    let mut b_side = compare.map(|b| MargaySide::new(b, "b", "b"));
    for i in 0..runs {
        interleaved(&mut a_side, b_side.as_mut(), &lab, &node, &margay_conf, i)?;
        // ptp + host-local
        let ns = Netns::create(&format!("{}-ptp{i}", lab.prefix()))?;
        let a = bench_attachment(format!("p{i}"), &ns, &format!("q{i}"));
        let (t, ok, res, _) = exec(&node, &ptp_bin, "ADD", &ptp_conf, &a);
        anyhow::ensure!(ok, "ptp ADD {i} failed: {res}");
        p_add.push(t);
        let (t, ok, res, _) = exec(
            &node,
            &ptp_bin,
            "DEL",
            &cni::with_prev_result(&ptp_conf, &res),
            &a,
        );
        anyhow::ensure!(ok, "ptp DEL {i} failed: {res}");
        p_del.push(t);
        drop(ns);
        // the floor: the same kernel work done in-process
        let ns = Netns::create(&format!("{}-flr{i}", lab.prefix()))?;
        floor.push(floor_once(&node, &ns, i)?);
        drop(ns);
        let (t, ok, res, _) = exec(&node, &margay, "VERSION", &margay_conf, &a);
        anyhow::ensure!(ok, "margay VERSION failed: {res}");
        version.push(t);
    }
    for side in std::iter::once(&a_side).chain(b_side.as_ref()) {
        side.ensure_contract("")?;
    }
    let (ma, ma95) = stats(&a_side.add);
    let (md, md95) = stats(&a_side.del);
    let (pa, pa95) = stats(&p_add);
    let (pd, pd95) = stats(&p_del);
    println!(
        "ADD  margay/ptp median ratio {:.2}   margay median {ma:.2} ms p95 {ma95:.2} ms   ptp median {pa:.2} ms p95 {pa95:.2} ms",
        ma / pa
    );
    println!(
        "DEL  margay/ptp median ratio {:.2}   margay median {md:.2} ms p95 {md95:.2} ms   ptp median {pd:.2} ms p95 {pd95:.2} ms",
        md / pd
    );
    println!(
        "route and policy in place when ADD returned: {}/{runs}",
        runs - a_side.contract_misses
    );
    if let Some(b) = &b_side {
        let (ba, ba95) = stats(&b.add);
        let (bd, _) = stats(&b.del);
        println!(
            "compared binary: ADD {:.2}x ptp (median {ba:.2} ms p95 {ba95:.2} ms), DEL {:.2}x; margay/compared ADD median {:.2}; route and policy in place: {}/{runs}",
            ba / pa,
            bd / pd,
            ma / ba,
            runs - b.contract_misses
        );
    }
    let (fl, fl95) = stats(&floor);
    let (ve, _) = stats(&version);
    println!(
        "floor: the kernel work alone (veth pair into the pod, both sides configured, host /32 route; margay's wiring in-process, no exec, agent or IPAM) median {fl:.2} ms p95 {fl95:.2} ms = {:.2}x ptp's ADD; exec of the plugin (VERSION, exec to exit) median {ve:.2} ms",
        fl / pa
    );
    println!(
        "goal ADD <= 0.35x ptp = {:.2} ms; floor + exec = {:.2} ms ({:.2}x ptp); margay ADD above that floor: {:.2} ms",
        0.35 * pa,
        fl + ve,
        (fl + ve) / pa,
        ma - fl - ve
    );
    // Where the time goes: another --steps-runs pairs per binary, the
    // plugin logging each step (debug), interleaved as above; not part of
    // the figures above.
    let steps_runs = arg("--steps-runs", 50).min(runs);
    let steps_log = lab.run_dir().join("cni-steps.log");
    let steps_conf = cni::margay_conf(&agent, &steps_log);
    let mut a_steps = MargaySide::new(margay.clone(), "ma", "p");
    let mut b_steps = b_side
        .as_ref()
        .map(|b| MargaySide::new(b.bin.clone(), "mb", "b"));
    for i in 0..steps_runs {
        interleaved(&mut a_steps, b_steps.as_mut(), &lab, &node, &steps_conf, i)?;
    }
    for side in std::iter::once(&a_steps).chain(b_steps.as_ref()) {
        side.ensure_contract(" at debug")?;
    }
    println!(
        "\nthe ADDs above ran with the shipped conflist's log level ({shipped_level:?}); the steps below are from {steps_runs} more pairs per binary at debug (median ADD {:.2} ms there)",
        stats(&a_steps.add).0
    );
    phases(&steps_log, &a_steps.spans, "margay");
    if let Some(b) = &b_steps {
        phases(&steps_log, &b.spans, "compared binary");
    }
    agent_means(&node, &format!("{}/metrics", k8s::AGENT_HEALTH));
    println!();
    if let Some(dir) = &keep_logs {
        std::fs::create_dir_all(dir)?;
        for f in ["cni.log", "cni-steps.log", "n1-agent.log"] {
            std::fs::copy(lab.run_dir().join(f), dir.join(f))?;
        }
        println!("logs copied to {}", dir.display());
    }
    for (label, bin, conf) in [
        ("margay", &margay, &margay_conf),
        ("ptp+host-local", &ptp_bin, &ptp_conf),
    ] {
        concurrent(&lab, &node, label, bin, conf, conc)?;
    }
    Ok(())
}

/// The floor of one ADD: the kernel work every routed-veth plugin does
/// (margay's own wiring, run in-process from the node namespace): open the
/// pod namespace, a veth pair with its peer created in it, the host side
/// (sysctls, link-local, up), the pod side (address, up, gateway and
/// default routes) and the host's /32 route. Timed from opening the
/// sockets to the route; the pair is removed afterwards, untimed.
fn floor_once(node: &Netns, pod: &Netns, i: usize) -> anyhow::Result<Duration> {
    use cni_plugin::netlink::{Nl, RouteSpec};
    use cni_plugin::wiring::{self, Plan};
    let path = pod.path().display().to_string();
    let host_if = format!("flr{i}");
    // 198.19.160.0/20: outside margay's pool and ptp's subnet.
    let ip = std::net::Ipv4Addr::from(
        u32::from(std::net::Ipv4Addr::new(198, 19, 160, 0)) + (i as u32 % 4096),
    );
    node.enter(move || -> anyhow::Result<Duration> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let started = Instant::now();
            let ns = wiring::open_netns(&path)?;
            let host = Nl::here()?;
            let pod = Nl::in_netns(&ns).await?;
            let plan = Plan {
                host_if: &host_if,
                ifname: "eth0",
                netns_path: &path,
                mtu: 1500,
                owner: "bench-floor",
            };
            wiring::create_veth(&host, &pod, &ns, &plan).await?;
            let index = wiring::configure_host(&host, &plan, true, false).await?;
            wiring::configure_pod(&pod, &plan, &[std::net::IpAddr::V4(ip)]).await?;
            host.replace_route(&RouteSpec {
                dst: ipnetwork::IpNetwork::new(std::net::IpAddr::V4(ip), 32)?,
                gw: None,
                oif: index,
                link_scope: true,
            })
            .await?;
            let took = started.elapsed();
            host.delete_link(index).await?;
            Ok(took)
        })
    })?
}

/// `n` ADDs at once on the node (one thread each), then `n` DELs at once.
fn concurrent(
    lab: &Lab,
    node: &Netns,
    label: &str,
    bin: &Path,
    conf: &str,
    n: usize,
) -> anyhow::Result<()> {
    let tag = if label == "margay" { "c" } else { "x" };
    let mut nss = Vec::new();
    for i in 0..n {
        nss.push(Netns::create(&format!("{}-{tag}{i}", lab.prefix()))?);
    }
    let atts: Vec<Attachment> = nss
        .iter()
        .enumerate()
        .map(|(i, ns)| bench_attachment(format!("{tag}{i}"), ns, &format!("{tag}{i}")))
        .collect();
    let run_all = |cmd: &str, confs: &[String]| {
        let started = Instant::now();
        let outs: Vec<(Duration, bool, Value, (f64, f64))> = std::thread::scope(|s| {
            let hs: Vec<_> = atts
                .iter()
                .zip(confs)
                .map(|(a, c)| s.spawn(move || exec(node, bin, cmd, c, a)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("ADD thread"))
                .collect()
        });
        (started.elapsed(), outs)
    };
    let (wall, adds) = run_all("ADD", &vec![conf.to_string(); n]);
    let ok = adds.iter().filter(|o| o.1).count();
    let ips: std::collections::BTreeSet<String> = adds
        .iter()
        .filter_map(|o| o.2["ips"][0]["address"].as_str().map(str::to_string))
        .collect();
    let routes = node.ip(&["-4", "route", "show"])?;
    let routed = ips
        .iter()
        .filter(|ip| {
            let a = ip.split('/').next().unwrap_or("");
            routes.lines().any(|l| l.starts_with(&format!("{a} ")))
        })
        .count();
    let confs: Vec<String> = adds
        .iter()
        .map(|o| cni::with_prev_result(conf, &o.2))
        .collect();
    let (del_wall, dels) = run_all("DEL", &confs);
    let del_ok = dels.iter().filter(|o| o.1).count();
    anyhow::ensure!(
        ok == n && ips.len() == n && routed == n && del_ok == n,
        "{label}: of {n} concurrent ADDs {ok} succeeded with {} distinct addresses and {routed} host routes, {del_ok} DELs succeeded: no wall time for work not done",
        ips.len()
    );
    println!(
        "{label:<14} {n} concurrent ADDs: {ok} ok, {} distinct addresses, host routes {routed}, wall {:.1} ms; DELs: {del_ok} ok, wall {:.1} ms",
        ips.len(),
        wall.as_secs_f64() * 1e3,
        del_wall.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Mean durations the agent itself measured, from its /metrics.
fn agent_means(node: &Netns, url: &str) {
    let Ok(m) = node.exec(&["curl", "-sf", url]) else {
        return;
    };
    let value = |name: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    println!("\nthe agent's own view (means):");
    for (label, metric) in [
        (
            "Allocate",
            "margay_cni_request_seconds_{}{op=\"allocate\",result=\"ok\"}",
        ),
        (
            "EndpointUp",
            "margay_cni_request_seconds_{}{op=\"endpoint_up\",result=\"ok\"}",
        ),
        ("policy commit", "margay_policy_sync_seconds_{}"),
    ] {
        let sum = value(&metric.replace("{}", "sum"));
        let count = value(&metric.replace("{}", "count"));
        if let (Some(s), Some(c)) = (sum, count)
            && c > 0.0
        {
            println!("  {label:>14}: {:.2} ms over {c} calls", s / c * 1e3);
        }
    }
    if let Some(n) = value("margay_policy_native_batches_total") {
        println!(
            "  {:>14}: {n} of them sent natively (nfnetlink, no nft)",
            ""
        );
    }
}

/// Median time of each step of margay's ADD, from its debug log. Once the
/// host veth is up, EndpointUp runs while the rest of the host side and
/// the pod side are configured. A step a binary does not log (an older
/// build) is left out of its table.
fn phases(log: &Path, spans: &std::collections::BTreeMap<String, (f64, f64)>, label: &str) {
    let Ok(text) = std::fs::read_to_string(log) else {
        println!("(no plugin log at {})", log.display());
        return;
    };
    const EXEC: &str = "exec";
    const EXIT: &str = "exit";
    let steps = [
        ("exec", "agent connected"),
        ("exec", "namespaces open"),
        ("namespaces open", "allocated"),
        ("allocated", "veth created"),
        ("veth created", "host side up"),
        ("host side up", "host side configured"),
        ("host side up", "route and policy programmed by the agent"),
        ("veth created", "pod side configured"),
        ("route and policy programmed by the agent", "pod attached"),
        ("pod side configured", "pod attached"),
        ("pod attached", "exit"),
    ];
    // container -> step -> wall clock (seconds since midnight)
    let mut at: std::collections::BTreeMap<String, std::collections::BTreeMap<&str, f64>> =
        Default::default();
    for (c, (t0, t1)) in spans {
        let e = at.entry(c.clone()).or_default();
        e.insert(EXEC, *t0);
        e.insert(EXIT, *t1);
    }
    for l in text.lines().filter(|l| l.contains("cmd=\"ADD\"")) {
        let Some(container) = l
            .split("container=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let Some((_, step)) = steps.iter().find(|(_, s)| l.contains(&format!("add: {s}"))) else {
            continue;
        };
        // 2026-11-22T08:10:38.123456Z -> seconds since midnight
        let Some(t) = l.get(11..26).and_then(|s| {
            let mut it = s.split(':');
            let h: f64 = it.next()?.parse().ok()?;
            let m: f64 = it.next()?.parse().ok()?;
            let sec: f64 = it.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + sec)
        }) else {
            continue;
        };
        if let Some(e) = at.get_mut(container) {
            e.insert(step, t);
        }
    }
    println!("\n{label} ADD by step (median ms; from its log and the exec/exit clock):");
    for (from, to) in steps {
        let mut g: Vec<f64> = at
            .values()
            .filter_map(|e| Some((e.get(to)? - e.get(from)?) * 1e3))
            .filter(|d| *d >= 0.0)
            .collect();
        g.sort_by(f64::total_cmp);
        if let Some(m) = g.get(g.len() / 2) {
            println!("  {from:>40} -> {to:<40} {m:.2}");
        }
    }
}
