//! BGP load benchmark (not a test): a BIRD injector sends N prefixes to
//! a receiver — margay-bgp (the speaker alone), margay-node (the agent,
//! configured by BGPConfiguration/BGPPeer CRDs), BIRD 2 as the anchor, then
//! FRR and GoBGP where they finish — each alone in a lab node, and we
//! print, Margay/BIRD ratios first: seconds from Established to all N in
//! the RIB, to all N in the kernel FIB, peak RSS, CPU seconds; then a row
//! per other receiver with its figures and its ratios to BIRD (`-`: not
//! measured for it: the agent and FRR record no RIB time we can read
//! afterwards, GoBGP installs nothing in the kernel here).
//!
//! ```text
//! cargo build --release -p margay-tools --bin margay-bgp
//! cargo run --release -p integration-tests --example bench_bgp -- \
//!     [--sizes 100000,1000000] [--runs 1] [--packing packed|unpacked] \
//!     [--family 4|6|4,6] [--with frr,gobgp|none] [--others-deadline 300] \
//!     [--only margay|agent|bird|floor] [--floor]
//! ```
//!
//! IPv6 (`--family 6`, rows labelled `packed6`/`unpacked6`): the session
//! runs over the IPv6 underlay and carries IPv6 unicast only; N /64s.
//! FRR and GoBGP get `--others-deadline` seconds each; one that does not
//! finish gets a line saying so instead of a row. FRR's RSS and CPU are
//! bgpd's plus zebra's. GoBGP's RIB time is polled (every 250 ms, after the
//! injector finished), the only receiver that is polled while it works.
//!
//! Packed: the injector's routes share attributes, so BIRD packs ~800 NLRI
//! into each UPDATE. Unpacked: every route has its own MED, one per UPDATE.
//!
//! Prefixes: N IPv4 /28s in 240.0.0.0/8 or IPv6 /64s in 2001:db8:8000::/36
//! (see [`configs::prefix`]). A million distinct IPv4 prefixes do not fit
//! in the lab's 198.18.0.0/15; 240/4 is reserved (never routed anywhere),
//! and no packet is sent to these routes — they only sit in the routing
//! tables of the benchmark's own namespaces.
//!
//! Rows: one per run; with `--runs` > 1 also the medians (`~`) and the
//! minima (`<`) of each column.
//!
//! The injector's tail: BIRD 2.0.12 as injector could hold the end of its
//! export — a capture (N = 100k, one per UPDATE) shows exactly the last
//! partial 256-route feed batch (160 UPDATEs) and End-of-RIB — until its
//! main loop next woke up: the keepalive timer, ~1 s later. It happened to
//! both receivers, the more often the less the receiver made the
//! injector's socket wait (a receiver that reads fast gives BIRD no POLLOUT
//! to wake on): up to 19 runs in 20 with margay-bgp reading 64 KB at a
//! time, 5 in 6 for either receiver with 800-prefix UPDATEs. So the
//! injector runs a Babel instance with a 100 ms hello timer that does
//! nothing but wake its loop (tails at most ~0.1 s: 12 of 12 runs clean,
//! BIRD receiver 100k packed 0.25-0.29 s instead of 0.77-1.0 s), and with
//! `keepalive time 1`.
//!
//! Timing, the same for both receivers, and nothing polls a receiver while
//! it works:
//! - t0 is when the injector saw the session Established (its own
//!   `timeformat protocol iso long ms` timestamp, the same injector for
//!   both);
//! - FIB: when the receiver's routes in the kernel reached N, seen by a
//!   route monitor on rtnetlink multicast in the receiver's namespace
//!   ([`integration_tests::lab::RouteMonitor`]; it fails the run if it
//!   loses events);
//! - RIB: each receiver's own record, read after the run: Margay's last
//!   UPDATE applied (status file), BIRD's newest route import time
//!   (`timeformat route iso long ms`, `show route protocol inj`);
//! - inj: when the injector's export count for the session reached N
//!   (polling the injector, the same in both runs): a receiver figure close
//!   to it is injector-bound.
//!
//! Peak RSS is VmHWM, CPU is utime+stime of the receiver process, from its
//! start.
//!
//! Breakdown: before each margay-bgp row, its own profile (status file):
//! seconds decoding, in the RIB, writing the FIB (and in the kernel), and
//! waiting on the queues between them; the RIB's bytes by structure, the
//! heap in use and held. `--floor`: also the kernel's floor per size — N
//! routes written by `node_agent::dataplane::fib` alone, the same route monitor
//! watching.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use integration_tests::k8s;
use integration_tests::lab::{self, Bird, Daemon, Frr, Gobgp, Lab};

mod configs;
use configs::Fam;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Receiver {
    Margay,
    /// margay-node, the agent, configured through CRDs on the API test
    /// server: the code path a cluster runs (speaker + routing glue + FIB),
    /// with its watchers' memory and CPU included.
    Agent,
    Bird,
    /// FRR (bgpd + zebra): FIB, RSS and CPU of both daemons; no RIB time
    /// (it records none we can read afterwards, and we do not poll it).
    Frr,
    /// GoBGP: RIB only (see [`configs::gobgp_receiver_config`]); its RIB
    /// time is polled (`gobgp global rib summary` every 250 ms), so it is
    /// late by up to that much and the polling costs it some CPU.
    Gobgp,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    rib: f64,
    fib: f64,
    rss_mb: f64,
    cpu: f64,
    /// The injector's own finishing time (all N sent), from t0.
    inj: f64,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Unix time of a BIRD `iso long` timestamp (`2026-11-22 07:30:00.123`, UTC).
fn bird_time(date: &str, time: &str) -> Option<f64> {
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

fn routes_of(birdc_out: &str, what: &str) -> usize {
    // "Routes:         1000 imported, 0 exported, 1000 preferred"
    birdc_out
        .lines()
        .find(|l| l.trim_start().starts_with("Routes:"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.contains(what))
                .and_then(|p| p.split_whitespace().rev().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn kernel_count(lab: &Lab, proto: &str, fam: Fam) -> Result<usize> {
    let out = lab
        .node("n1")?
        .ns
        .ip(&[fam.ip_flag(), "route", "show", "proto", proto])?;
    Ok(out.lines().count())
}

fn run_one(
    bin: &std::path::Path,
    rx: Receiver,
    n: usize,
    packed: bool,
    fam: Fam,
    deadline: Duration,
) -> Result<Figures> {
    let lab = Lab::builder().nodes(1).build()?;
    let n1 = lab.node("n1")?;
    let dir = lab.run_dir().to_path_buf();
    // The injector, with its routes loaded before the session may start.
    if fam == Fam::V6 {
        // Older kernels cap IPv6 routes per namespace at this sysctl.
        n1.ns.sysctl(&[("net.ipv6.route.max_size", "2147483647")])?;
    }
    let inj = Bird::start(
        lab.tor(),
        &dir,
        "injector",
        &configs::injector_config(n, packed, fam),
    )?;
    lab::wait_for("injector routes loaded", Duration::from_secs(600), || {
        let out = inj.birdc("show protocols all statics")?;
        Ok((routes_of(&out, "imported") >= n).then_some(()))
    })?;
    // BENCH_PCAP=FILE: capture the BGP session on the ToR bridge.
    let _pcap = match std::env::var("BENCH_PCAP") {
        Ok(f) => Some(Daemon::spawn(
            lab.tor(),
            "tcpdump",
            &[
                "tcpdump", "-i", "br0", "-n", "-s", "128", "-U", "-w", &f, "tcp", "port", "179",
            ],
            &dir.join("tcpdump.log"),
        )?),
        Err(_) => None,
    };
    std::thread::sleep(Duration::from_millis(if _pcap.is_some() { 500 } else { 0 }));
    // The receiver, started but not yet peered.
    let (mut proc_, proto, status) = match rx {
        Receiver::Margay => {
            let log_level = std::env::var("BENCH_MARGAY_LOG").unwrap_or_else(|_| "warn".into());
            let cfg = dir.join("margay.yaml");
            let status = dir.join("margay.status.json");
            std::fs::write(&cfg, configs::margay_receiver_yaml(fam))?;
            let argv = [
                bin.to_str().context("path")?,
                "--config",
                cfg.to_str().context("path")?,
                "--status-file",
                status.to_str().context("path")?,
                "--log",
                &log_level,
            ];
            let d = Daemon::spawn(&n1.ns, "margay-bgp", &argv, &dir.join("margay.log"))?;
            lab::wait_for("margay status", Duration::from_secs(10), || {
                Ok(status.exists().then_some(()))
            })?;
            (Recv::Margay(d), 80u8, Some(status))
        }
        Receiver::Agent => {
            let api = k8s::start_apiserver(&lab)?;
            k8s::bootstrap(&lab, &[])?;
            let peer_ip = fam.tor().to_string();
            k8s::with_client(lab.tor(), |c| async move {
                k8s::apply_json::<node_agent::k8s::crd::BGPConfiguration>(
                    &c,
                    serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                        "metadata": {"name": "default"},
                        "spec": {"asNumber": 65001, "nodeToNodeMeshEnabled": false}}),
                )
                .await?;
                k8s::apply_json::<node_agent::k8s::crd::BGPPeer>(
                    &c,
                    serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                        "metadata": {"name": "inj"},
                        "spec": {"peerIP": peer_ip, "asNumber": 64512, "holdTime": 240,
                                 "maxPrefix": 4_000_000}}),
                )
                .await?;
                Ok::<_, kube::Error>(())
            })??;
            let agent = k8s::start_agent(&lab, "n1", &["--log-level", "warn"])?;
            (Recv::Agent(agent, api), 80u8, None)
        }
        Receiver::Bird => (
            Recv::Bird(Bird::start(
                &n1.ns,
                &dir,
                "receiver",
                &configs::bird_receiver_config(fam),
            )?),
            12u8,
            None,
        ),
        Receiver::Frr => (
            Recv::Frr(Frr::start(
                &n1.ns,
                &dir,
                "frr",
                &configs::frr_receiver_config(fam),
            )?),
            186u8,
            None,
        ),
        Receiver::Gobgp => (
            Recv::Gobgp(Gobgp::start(
                &n1.ns,
                &dir,
                "gobgp",
                &configs::gobgp_receiver_config(fam),
            )?),
            0u8,
            None,
        ),
    };
    let monitor = lab::RouteMonitor::start(&n1.ns, proto, n)?;
    inj.birdc("enable recv")?;
    // t0 and the injector's finish, from the injector alone.
    let start = Instant::now();
    let (mut t0, mut inj_done) = (None, None);
    while inj_done.is_none() {
        if start.elapsed() > deadline {
            bail!("the injector did not send all {n} routes");
        }
        let d = match &mut proc_ {
            Recv::Margay(d) => Some(d),
            Recv::Agent(a, _) => Some(&mut a.daemon),
            Recv::Frr(f) => Some(&mut f.bgpd),
            Recv::Gobgp(g) => Some(&mut g.daemon),
            Recv::Bird(_) => None,
        };
        if let Some(d) = d
            && !d.is_running()
        {
            bail!("{rx:?} receiver exited: {}", d.log());
        }
        let p = inj.birdc("show protocols all recv")?;
        if t0.is_none() && p.contains("Established") {
            let line = p.lines().find(|l| l.starts_with("recv")).unwrap_or("");
            let f: Vec<&str> = line.split_whitespace().collect();
            t0 = f.get(4).zip(f.get(5)).and_then(|(d, t)| bird_time(d, t));
        }
        if t0.is_some() && routes_of(&p, "exported") >= n {
            inj_done = Some(now_unix());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = t0.context("injector's Established time")?;
    let mut profile = None;
    let fib = match &proc_ {
        Recv::Gobgp(_) => f64::NAN,
        _ => unix(monitor.wait(deadline)?) - t0,
    };
    let (rss, cpu, rib) = match &mut proc_ {
        Recv::Margay(d) => {
            let status = status.context("status file")?;
            let read = || -> Option<serde_json::Value> {
                serde_json::from_str(&std::fs::read_to_string(&status).ok()?).ok()
            };
            let v = lab::wait_for(
                "margay: status shows all N",
                Duration::from_secs(30),
                || {
                    let Some(v) = read() else { return Ok(None) };
                    let key = format!("accepted_{}", &fam.name()[2..]);
                    let done = v["peers"][0][&key].as_u64() == Some(n as u64);
                    Ok(done.then_some(v))
                },
            )?;
            // The RIB's memory is walked once it is quiet: wait for it
            // (and read RSS and CPU after: they include that walk).
            let v = lab::wait_for("margay: profile", Duration::from_secs(5), || {
                Ok(read().filter(|v| {
                    v["profile"]["memory"]["rib"][&fam.name()[2..]]["count"].as_u64()
                        == Some(n as u64)
                }))
            })
            .unwrap_or(v);
            profile = Some(v["profile"].clone());
            let (rss, cpu) = lab::process_usage(d.pid())?;
            let errors = v["fib"]["errors"].as_u64().unwrap_or(0);
            if errors != 0 {
                bail!("margay: {errors} FIB errors");
            }
            let rib = v["peers"][0]["last_update"]
                .as_f64()
                .context("last_update")?
                - t0;
            (rss, cpu, rib)
        }
        Recv::Agent(a, _) => {
            let (rss, cpu) = lab::process_usage(a.daemon.pid())?;
            (rss, cpu, f64::NAN)
        }
        Recv::Bird(b) => {
            let (rss, cpu) = lab::process_usage(b.daemon.pid())?;
            // Read after the run: the newest import time among the routes.
            let routes = b.birdc("show route protocol inj")?;
            let newest = routes
                .lines()
                .filter_map(|l| {
                    let i = l.find("[inj ")?;
                    let f: Vec<&str> = l[i + 5..].split_whitespace().collect();
                    bird_time(f.first()?, f.get(1)?.trim_end_matches(']'))
                })
                .fold(f64::NAN, f64::max);
            (rss, cpu, newest - t0)
        }
        Recv::Frr(f) => {
            let (rss_b, cpu_b) = lab::process_usage(f.bgpd.pid())?;
            let (rss_z, cpu_z) = lab::process_usage(f.zebra.pid())?;
            (rss_b + rss_z, cpu_b + cpu_z, f64::NAN)
        }
        Recv::Gobgp(g) => {
            let at = lab::wait_for("gobgp: all N in its RIB", deadline, || {
                // "Table ipv4-unicast\nDestination: 1000, Path: 1000"
                let out = g.cli(&["global", "rib", "summary", "-a", fam.name()])?;
                let count = out
                    .split_once("Destination:")
                    .and_then(|(_, r)| r.split(',').next())
                    .and_then(|w| w.trim().parse::<usize>().ok());
                if count >= Some(n) {
                    return Ok(Some(now_unix()));
                }
                std::thread::sleep(Duration::from_millis(250));
                Ok(None)
            })?;
            let (rss, cpu) = lab::process_usage(g.daemon.pid())?;
            (rss, cpu, at - t0)
        }
    };
    let k = match proto {
        0 => n,
        80 => kernel_count(&lab, "80", fam)?,
        12 => kernel_count(&lab, "bird", fam)?,
        p => kernel_count(&lab, &p.to_string(), fam)?,
    };
    if proto != 0 && (k != n || monitor.count() != n) {
        bail!(
            "{rx:?}: kernel has {k} of {n} routes (monitor saw {})",
            monitor.count()
        );
    }
    if !rib.is_finite() && matches!(rx, Receiver::Margay | Receiver::Bird) {
        bail!("{rx:?}: no RIB time");
    }
    if let Recv::Margay(d) = &mut proc_ {
        d.stop(Duration::from_secs(5));
        if let Ok(keep) = std::env::var("BENCH_KEEP_LOG") {
            let _ = std::fs::copy(dir.join("margay.log"), keep);
        }
    }
    drop(monitor);
    drop(inj);
    if let Some(p) = &profile {
        print_profile(p);
    }
    Ok(Figures {
        rib,
        fib,
        rss_mb: rss,
        cpu,
        inj: inj_done.unwrap_or(f64::NAN) - t0,
    })
}

/// margay-bgp's own breakdown (its status file's `profile`): seconds per
/// phase of the pipeline and bytes per structure, printed before its row.
fn print_profile(p: &serde_json::Value) {
    let t = &p["time"];
    let m = &p["memory"];
    let s = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    // MiB, as the RSS column.
    let mb = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN) / 1048576.0;
    println!(
        "  margay time: decode {:.2} s ({} msgs), waiting for the RIB {:.2} | rib {:.2}, export {:.2}, waiting for the FIB {:.2} | fib {:.2} of which kernel {:.2} ({} writes, {} routes)",
        s(&t["decode_s"]),
        t["messages"],
        s(&t["wait_rib_queue_s"]),
        s(&t["rib_s"]),
        s(&t["export_s"]),
        s(&t["wait_fib_queue_s"]),
        s(&t["fib_s"]),
        s(&t["fib_kernel_s"]),
        t["fib_batches"],
        t["fib_routes"],
    );
    let r = &m["rib"];
    let part = |k: &str| {
        format!(
            "{k} {:.1} ({}/{})",
            mb(&r[k]["bytes"]),
            r[k]["count"],
            r[k]["slots"]
        )
    };
    println!(
        "  margay MB: rib {:.1} = {}, {}, {}, {}, {}, {} | heap in use {:.1}, held {:.1} | rss {:.1}, peak {:.1}",
        mb(&r["total"]),
        part("v4"),
        part("v6"),
        part("multi"),
        part("intern_table"),
        part("attrs"),
        part("adj_out"),
        mb(&m["heap_in_use"]),
        mb(&m["heap_held"]),
        mb(&m["rss"]),
        mb(&m["rss_peak"]),
    );
}

/// The kernel's floor: N routes written by `node_agent::dataplane::fib` from one
/// thread of this process in a fresh lab node (batches of 4096, the same
/// prefixes and next hop as the receivers', the same route monitor
/// running): (seconds until the monitor saw all N, seconds of CPU of the
/// writing thread). No receiver can install faster on this machine.
fn floor(n: usize, fam: Fam) -> Result<(f64, f64)> {
    use node_agent::dataplane::fib::{Fib, FibChange};
    in_fresh_node(n, fam, move |prefixes, rt| {
        let changes: Vec<FibChange> = prefixes
            .into_iter()
            .map(|prefix| FibChange {
                prefix,
                next_hops: vec![fam.tor()],
            })
            .collect();
        let fib = rt.block_on(async { Fib::new() })?;
        let t0 = thread_cpu();
        for batch in changes.chunks(4096) {
            rt.block_on(fib.apply(batch))?;
        }
        Ok(thread_cpu() - t0)
    })
}

/// The same N routes as [`floor`], written through the `rtnetlink` crate
/// the way it is meant to be used: one `RTM_NEWROUTE` request (`replace`)
/// per route, each awaiting its acknowledgement, 64 in flight, messages
/// built by `node_agent::dataplane::fib::message`. The hand-written batched
/// writer (`dataplane::fib::batch`) is justified by the difference.
fn floor_crate(n: usize, fam: Fam) -> Result<(f64, f64)> {
    use futures::{StreamExt as _, TryStreamExt as _};
    use node_agent::dataplane::fib::message;
    in_fresh_node(n, fam, move |prefixes, rt| {
        let msgs: Vec<_> = prefixes.iter().map(|p| message(p, &[fam.tor()])).collect();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            let conn = tokio::spawn(conn);
            let t0 = thread_cpu();
            futures::stream::iter(msgs)
                .map(|m| {
                    let h = handle.clone();
                    async move { h.route().add(m).replace().execute().await }
                })
                .buffer_unordered(64)
                .try_for_each(|()| async { Ok(()) })
                .await?;
            let cpu = thread_cpu() - t0;
            conn.abort();
            Ok(cpu)
        })
    })
}

/// Runs `write` (given the N receivers' prefixes and a current-thread
/// runtime, returning its CPU seconds) on a thread inside a fresh lab
/// node, with the route monitor running: (seconds from the start until the
/// monitor saw all N routes of protocol 80, `write`'s CPU seconds).
fn in_fresh_node(
    n: usize,
    fam: Fam,
    write: impl FnOnce(Vec<node_agent::dataplane::fib::Prefix>, &tokio::runtime::Runtime) -> Result<f64>
    + Send
    + 'static,
) -> Result<(f64, f64)> {
    use node_agent::dataplane::fib::Prefix;
    let lab = Lab::builder().nodes(1).build()?;
    let n1 = lab.node("n1")?;
    if fam == Fam::V6 {
        n1.ns.sysctl(&[("net.ipv6.route.max_size", "2147483647")])?;
    }
    let monitor = lab::RouteMonitor::start(&n1.ns, 80, n)?;
    let prefixes: Vec<Prefix> = (0..n)
        .map(|i| {
            let p = configs::prefix(i, fam);
            let (a, len) = p.split_once('/').context("prefix")?;
            Ok(Prefix::new(a.parse()?, len.parse()?)?)
        })
        .collect::<Result<_>>()?;
    let start = now_unix();
    let cpu = n1.ns.enter(move || -> Result<f64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        write(prefixes, &rt)
    })??;
    let done = unix(monitor.wait(Duration::from_secs(600))?);
    Ok((done - start, cpu))
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// A receiver process.
enum Recv {
    Margay(Daemon),
    /// The agent, and the API server it needs (kept running until the
    /// receiver is dropped).
    Agent(k8s::Agent, #[allow(dead_code)] Daemon),
    Bird(Bird),
    Frr(Frr),
    Gobgp(Gobgp),
}

/// Another receiver's row (the agent, FRR, GoBGP): its figures and their
/// ratios to BIRD's from the same run (`-`: not measured for it).
fn print_other_row(n: usize, label: &str, who: &str, a: &Figures, b: &Figures) {
    let f = |v: f64, w: usize, p: usize| {
        if v.is_nan() {
            format!("{:>w$}", "-")
        } else {
            format!("{v:>w$.p$}")
        }
    };
    println!(
        "{:>8} {:>9} | {} {} {} {} | {who:<6} {} {} {} {} {} |",
        n,
        label,
        f(a.rib / b.rib, 6, 2),
        f(a.fib / b.fib, 6, 2),
        f(a.rss_mb / b.rss_mb, 6, 2),
        f(a.cpu / b.cpu, 6, 2),
        f(a.rib, 6, 2),
        f(a.fib, 6, 2),
        f(a.rss_mb, 7, 1),
        f(a.cpu, 6, 2),
        f(a.inj, 6, 2)
    );
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One table row, Margay/BIRD ratios first (`~`: medians over the runs).
fn print_row(n: usize, label: &str, m: &Figures, b: &Figures) {
    println!(
        "{:>8} {:>9} | {:>6.2} {:>6.2} {:>6.2} {:>6.2} | margay {:>6.2} {:>6.2} {:>7.1} {:>6.2} {:>6.2} | bird {:>6.2} {:>6.2} {:>7.1} {:>6.2} {:>6.2}",
        n,
        label,
        m.rib / b.rib,
        m.fib / b.fib,
        m.rss_mb / b.rss_mb,
        m.cpu / b.cpu,
        m.rib,
        m.fib,
        m.rss_mb,
        m.cpu,
        m.inj,
        b.rib,
        b.fib,
        b.rss_mb,
        b.cpu,
        b.inj
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = opt("--sizes")
        .unwrap_or_else(|| "100000,1000000".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("--sizes")?;
    let runs: usize = opt("--runs").unwrap_or_else(|| "1".into()).parse()?;
    let packing: Vec<bool> = match opt("--packing").as_deref() {
        Some("packed") => vec![true],
        Some("unpacked") => vec![false],
        _ => vec![true, false],
    };
    let only = opt("--only");
    let fams: Vec<Fam> = opt("--family")
        .unwrap_or_else(|| "4".into())
        .split(',')
        .map(|f| match f {
            "4" => Ok(Fam::V4),
            "6" => Ok(Fam::V6),
            other => bail!("--family: 4, 6 or 4,6, not {other}"),
        })
        .collect::<Result<_>>()?;
    let others: Vec<Receiver> = opt("--with")
        .unwrap_or_else(|| "frr,gobgp".into())
        .split(',')
        .filter(|w| !w.is_empty() && *w != "none")
        .map(|w| match w {
            "frr" => Ok(Receiver::Frr),
            "gobgp" => Ok(Receiver::Gobgp),
            other => bail!("--with: frr, gobgp or none, not {other}"),
        })
        .collect::<Result<_>>()?;
    let others_deadline = Duration::from_secs(
        opt("--others-deadline")
            .unwrap_or_else(|| "300".into())
            .parse()
            .context("--others-deadline")?,
    );
    let deadline = Duration::from_secs(600);
    if let Err(why) = lab::can_run() {
        bail!("bench_bgp {why}");
    }
    let bin = match std::env::var("MARGAY_BGP_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => lab::workspace_bin("margay-bgp")
            .context("build it first: cargo build --release -p margay-tools --bin margay-bgp")?,
    };
    println!(
        "margay-bgp: {}; load average {}",
        bin.display(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    println!(
        "{:>8} {:>9} | {:>6} {:>6} {:>6} {:>6} | margay {:>6} {:>6} {:>7} {:>6} {:>6} | bird {:>6} {:>6} {:>7} {:>6} {:>6}",
        "N",
        "packing",
        "r.rib",
        "r.fib",
        "r.rss",
        "r.cpu",
        "rib s",
        "fib s",
        "rss MB",
        "cpu s",
        "inj s",
        "rib s",
        "fib s",
        "rss MB",
        "cpu s",
        "inj s"
    );
    for &fam in &fams {
        for &n in &sizes {
            if args.iter().any(|a| a == "--floor") || only.as_deref() == Some("floor") {
                let (wall, cpu) = floor(n, fam)?;
                println!(
                    "{n:>8} {:>9} | node_agent::dataplane::fib alone, one thread: {wall:.2} s to the FIB, {cpu:.2} s CPU ({:.2} us/route)",
                    if fam == Fam::V6 { "floor6" } else { "floor" },
                    cpu * 1e6 / n as f64
                );
                let (cwall, ccpu) = floor_crate(n, fam)?;
                // (CPU is counted in 10 ms ticks: no ratio of nothing.)
                let ratio = |a: f64, b: f64| {
                    if b > 0.0 {
                        format!("{:.2}x", a / b)
                    } else {
                        "-".to_string()
                    }
                };
                println!(
                    "{n:>8} {:>9} | the rtnetlink crate, one acked request per route, 64 in flight: {cwall:.2} s to the FIB, {ccpu:.2} s CPU ({:.2} us/route); batched writer {} its time, {} its CPU",
                    if fam == Fam::V6 { "crate6" } else { "crate" },
                    ccpu * 1e6 / n as f64,
                    ratio(wall, cwall),
                    ratio(cpu, ccpu)
                );
            }
            if only.as_deref() == Some("floor") {
                continue;
            }
            for &packed in &packing {
                let label = format!(
                    "{}{}",
                    if packed { "packed" } else { "unpacked" },
                    if fam == Fam::V6 { "6" } else { "" }
                );
                let label = label.as_str();
                let mut all = Vec::new();
                for _ in 0..runs {
                    let nan = Figures {
                        rib: f64::NAN,
                        fib: f64::NAN,
                        rss_mb: f64::NAN,
                        cpu: f64::NAN,
                        inj: f64::NAN,
                    };
                    let m = match only.as_deref() {
                        Some("bird") | Some("agent") => nan,
                        _ => run_one(&bin, Receiver::Margay, n, packed, fam, deadline)?,
                    };
                    let a = match only.as_deref() {
                        None | Some("agent") => {
                            run_one(&bin, Receiver::Agent, n, packed, fam, deadline)?
                        }
                        _ => nan,
                    };
                    let b = match only.as_deref() {
                        Some("margay") | Some("agent") => nan,
                        _ => run_one(&bin, Receiver::Bird, n, packed, fam, deadline)?,
                    };
                    print_row(n, label, &m, &b);
                    if !a.fib.is_nan() {
                        print_other_row(n, label, "agent", &a, &b);
                    }
                    if only.is_none() {
                        for &rx in &others {
                            let who = if rx == Receiver::Frr { "frr" } else { "gobgp" };
                            match run_one(&bin, rx, n, packed, fam, others_deadline) {
                                Ok(f) => print_other_row(n, label, who, &f, &b),
                                Err(e) => println!(
                                    "{n:>8} {label:>9} | {who} did not finish within {} s: {e:#}",
                                    others_deadline.as_secs()
                                ),
                            }
                        }
                    }
                    all.push((m, b));
                }
                if runs > 1 {
                    let med = |f: fn(&Figures) -> f64, which: usize| {
                        let mut v: Vec<f64> = all
                            .iter()
                            .map(|p| f(if which == 0 { &p.0 } else { &p.1 }))
                            .collect();
                        v.sort_by(|a, b| a.total_cmp(b));
                        v[v.len() / 2]
                    };
                    let pick = |which| Figures {
                        rib: med(|f| f.rib, which),
                        fib: med(|f| f.fib, which),
                        rss_mb: med(|f| f.rss_mb, which),
                        cpu: med(|f| f.cpu, which),
                        inj: med(|f| f.inj, which),
                    };
                    print_row(n, &format!("{label}~"), &pick(0), &pick(1));
                    let least = |which: usize| {
                        let get = |p: &(Figures, Figures)| if which == 0 { p.0 } else { p.1 };
                        let min = |f: fn(&Figures) -> f64| {
                            all.iter().map(|p| f(&get(p))).fold(f64::INFINITY, f64::min)
                        };
                        Figures {
                            rib: min(|f| f.rib),
                            fib: min(|f| f.fib),
                            rss_mb: min(|f| f.rss_mb),
                            cpu: min(|f| f.cpu),
                            inj: min(|f| f.inj),
                        }
                    };
                    print_row(n, &format!("{label}<"), &least(0), &least(1));
                }
            }
        }
    }
    Ok(())
}
