//! Route reflector at scale (not a test): one reflector with N simulated
//! clients (issue #17: 1,000 and 5,000), Margay's speaker and BIRD 2 in the
//! same run, with the same clients.
//!
//! ```text
//! cargo build --release -p margay-tools -p integration-tests --bins
//! cargo run --release -p integration-tests --example bench_rr -- --clients 1000,5000
//! ```
//!
//! The lab: one node namespace runs the reflector (`margay-bgp` with a
//! dynamic-neighbour range of route-reflector clients, or BIRD with
//! `neighbor range` + `rr client`; neither programs the kernel, both hold
//! 240 s, graceful restart on); the ToR namespace owns the clients' source
//! addresses (198.18.32.0/19, on-link from the node) and runs the load
//! generator (`integration_tests::bgpload`, one thread): every client
//! announces its /30 blocks and End-of-RIB and counts what it is sent.
//!
//! Figures, per reflector:
//! - ready: from the generator's start until every client holds every other
//!   client's blocks and the reflector's End-of-RIB; the reflector's CPU
//!   seconds and peak RSS (VmHWM) at that point.
//! - restart: the reflector is SIGKILLed; once every client has seen its
//!   session go (clients keep their routes: GR helpers), it is started
//!   again; the time from that start until every client has converged again
//!   (all sessions back, every block re-sent, End-of-RIB), and the new
//!   process's CPU and peak RSS.
//! - change: once converged, `--flaps` single changes (client 0 withdraws
//!   its blocks, then announces them, alternately), each timed until every
//!   other client has it: median and worst, ms.
//! - gen: the generator's CPU seconds over the run (a figure close to the
//!   wall time means the run was generator-bound).
//!
//! A reflector that does not converge within `--timeout-secs` fails the run
//! (no figure is printed for it).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use integration_tests::bgpload::{self, Plan, Progress};
use integration_tests::lab::{self, Bird, Daemon, Lab};
use nix::sys::signal::Signal;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(about = "A route reflector with many clients: Margay vs BIRD, same run")]
struct Args {
    /// Client counts to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    clients: Vec<usize>,
    /// /30 blocks each client announces.
    #[arg(long, default_value_t = 1)]
    blocks: usize,
    /// Reflectors to run (comma-separated: margay, bird).
    #[arg(long, value_delimiter = ',', default_value = "margay,bird")]
    only: Vec<String>,
    /// Fail a reflector that has not converged by then.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Hold time the clients offer, s (240 is BIRD's default and Calico's;
    /// keepalives go every third of it).
    #[arg(long, default_value_t = 240)]
    hold: u16,
    /// Configure the clients as one dynamic-neighbour range instead of one
    /// peer each (BIRD accepts a range's sessions markedly slower).
    #[arg(long)]
    range: bool,
    /// Print the clients' progress every second while waiting.
    #[arg(long)]
    verbose: bool,
    /// Margay only: run it with a status file and print, once converged,
    /// where its memory is (RSS, heap, the RIB's structures by kind).
    #[arg(long)]
    breakdown: bool,
    /// Once converged, time this many single route changes (client 0
    /// withdraws its blocks, then announces them again, alternately) until
    /// every other client has the change.
    #[arg(long, default_value_t = 20)]
    flaps: usize,
}

const LOCAL_AS: u32 = 65000;
/// The clients' addresses: 198.18.32.0/19, on the ToR's bridge.
const CLIENT_NET: u32 = u32::from_be_bytes([198, 18, 32, 0]);
const CLIENT_NET_LEN: u8 = 19;

#[derive(Debug)]
struct Row {
    clients: usize,
    reflector: String,
    ready_s: f64,
    ready_cpu: f64,
    ready_rss: f64,
    restart_s: f64,
    restart_cpu: f64,
    restart_rss: f64,
    gen_cpu: f64,
    received: u64,
    /// One change to every client, ms: median and worst of `--flaps`.
    flap_ms: Option<(f64, f64)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Err(why) = lab::can_run() {
        bail!("bench_rr needs the lab: {why}");
    }
    let mut rows = Vec::new();
    for &n in &args.clients {
        for which in &args.only {
            let load_start = loadavg();
            let row = run(&args, n, which).with_context(|| format!("{which} with {n} clients"))?;
            println!(
                "{n} clients, {which}: load average (1, 5 min) {load_start} at the start, {} at the end",
                loadavg()
            );
            println!(
                "{n} clients, {which}: ready {:.2} s ({:.2} CPU s, {:.1} MB), restart {:.2} s{}",
                row.ready_s,
                row.ready_cpu,
                row.ready_rss,
                row.restart_s,
                row.flap_ms
                    .map(|(p50, max)| format!(
                        ", one change to every client {p50:.1} ms median, {max:.1} ms worst"
                    ))
                    .unwrap_or_default()
            );
            rows.push(row);
        }
    }
    print_table(&rows);
    Ok(())
}

/// The 1- and 5-minute load averages, as `/proc/loadavg` has them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "?".into())
}

/// Every core's busy CPU seconds since boot and the number of cores, from
/// the `cpu` lines of `/proc/stat` (USER_HZ = 100; idle and iowait are
/// not busy); None if unreadable. Over a phase, busy time minus the
/// reflector's and the generator's is what other processes took.
fn machine_busy() -> Option<(f64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = stat.lines();
    let total: Vec<f64> = lines
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let cores = lines.filter(|l| l.starts_with("cpu")).count();
    let idle = total.get(3)? + total.get(4)?;
    Some(((total.iter().sum::<f64>() - idle) / 100.0, cores))
}

fn client_addrs(n: usize) -> Result<Vec<Ipv4Addr>> {
    let room = (1usize << (32 - CLIENT_NET_LEN)) - 2;
    if n > room {
        bail!("at most {room} clients (198.18.32.0/19)");
    }
    Ok((1..=n as u32)
        .map(|i| Ipv4Addr::from(CLIENT_NET + i))
        .collect())
}

/// Peers as a list (one per client, as Calico configures BIRD on a
/// reflector) or as one dynamic-neighbour range.
fn margay_config(rr: Ipv4Addr, clients: &[Ipv4Addr], range: bool, hold: u16) -> String {
    let mut c = format!(
        "local_as: {LOCAL_AS}\nrouter_id: {rr}\nlisten: [\"{rr}:179\"]\ncluster_id: {rr}\n\
         install: false\npeers:\n"
    );
    let peer = |name: &str, neighbor: &str| {
        format!(
            "  - name: {name}\n    neighbor: {neighbor}\n    remote_as: internal\n    \
             hold_time: {hold}\n    passive: true\n    rr_client: true\n    \
             graceful_restart: {{ restart_time: 120, stale_time: 360 }}\n"
        )
    };
    if range {
        c += &peer(
            "clients",
            &format!("{}/{CLIENT_NET_LEN}", Ipv4Addr::from(CLIENT_NET)),
        );
    } else {
        for (i, a) in clients.iter().enumerate() {
            c += &peer(&format!("c{i}"), &a.to_string());
        }
    }
    c
}

fn bird_config(rr: Ipv4Addr, clients: &[Ipv4Addr], range: bool, hold: u16) -> String {
    let net = Ipv4Addr::from(CLIENT_NET);
    let mut c = format!(
        "router id {rr};\nprotocol device {{}}\nprotocol direct {{ ipv4; }}\n\
         protocol static {{ ipv4; route {net}/{CLIENT_NET_LEN} via {}; }}\n\
         template bgp rrclient {{\n  local {rr} as {LOCAL_AS};\n  rr client;\n  \
         rr cluster id {rr};\n  hold time {hold};\n  passive on;\n  graceful restart on;\n  \
         ipv4 {{ import all; export where source = RTS_BGP; }};\n}}\n",
        lab::TOR_IPV4
    );
    if range {
        c += &format!(
            "protocol bgp clients from rrclient {{\n  neighbor range {net}/{CLIENT_NET_LEN} internal;\n  \
             dynamic name \"c\";\n}}\n"
        );
    } else {
        for (i, a) in clients.iter().enumerate() {
            c += &format!("protocol bgp c{i} from rrclient {{ neighbor {a} internal; }}\n");
        }
    }
    c
}

enum Reflector {
    Margay(Daemon),
    Bird(Bird),
}

impl Reflector {
    fn start(
        which: &str,
        lab: &Lab,
        dir: &Path,
        rr: Ipv4Addr,
        plan: &Plan,
        range: bool,
        breakdown: bool,
    ) -> Result<Reflector> {
        let ns = &lab.nodes()[0].ns;
        Ok(match which {
            "margay" => {
                let conf = dir.join("margay-rr.yaml");
                std::fs::write(
                    &conf,
                    margay_config(rr, &plan.clients, range, plan.hold_time),
                )?;
                let bin = lab::workspace_bin("margay-bgp")?;
                let status = dir.join("margay-rr.status.json");
                let mut argv = vec![
                    bin.to_str().context("binary path")?,
                    "--config",
                    conf.to_str().context("config path")?,
                    "--log",
                    "info",
                ];
                if breakdown {
                    argv.extend(["--status-file", status.to_str().context("status path")?]);
                }
                Reflector::Margay(Daemon::spawn(
                    ns,
                    "margay-rr",
                    &argv,
                    &dir.join("margay-rr.log"),
                )?)
            }
            "bird" => Reflector::Bird(Bird::start(
                ns,
                dir,
                "bird-rr",
                &bird_config(rr, &plan.clients, range, plan.hold_time),
            )?),
            other => bail!("unknown reflector {other:?} (margay, bird)"),
        })
    }

    fn daemon(&mut self) -> &mut Daemon {
        match self {
            Reflector::Margay(d) => d,
            Reflector::Bird(b) => &mut b.daemon,
        }
    }
}

/// The calling thread's CPU seconds (utime + stime of
/// `/proc/thread-self/stat`, in USER_HZ = 100); 0 if unreadable.
fn thread_cpu() -> f64 {
    thread_cpu_of("/proc/thread-self/stat")
}

/// The calling thread's `/proc` stat path, for reading its CPU from
/// another thread ([`thread_cpu_of`]).
fn thread_stat_path() -> Option<std::path::PathBuf> {
    let task = std::fs::read_link("/proc/thread-self").ok()?;
    Some(std::path::Path::new("/proc").join(task).join("stat"))
}

/// A thread's CPU seconds from its stat file; 0 if unreadable.
fn thread_cpu_of(path: impl AsRef<std::path::Path>) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Where a convergence's time went, from the clients' side: until every
/// session was Established (connection accept, OPEN exchange, per-session
/// setup), then until every client had been sent every other client's
/// blocks (the table's export), then until every End-of-RIB was in.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    /// Until every session was Established, and the reflector's CPU
    /// seconds at that moment (read within ~5 ms of it).
    all_up: Option<(Duration, f64)>,
    /// Until the clients had received, over the phase, every other
    /// client's blocks (`prefixes_received` grew by n × (n - 1) × blocks).
    all_routes: Option<Duration>,
    /// Until every client held everything and End-of-RIB.
    converged: Duration,
}

impl Phases {
    fn describe(&self) -> String {
        let s = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        format!(
            "all sessions up {} ({} CPU s), all routes sent {}, converged {:.2} s",
            s(self.all_up.map(|u| u.0)),
            self.all_up.map_or("-".into(), |u| format!("{:.2}", u.1)),
            s(self.all_routes),
            self.converged.as_secs_f64()
        )
    }
}

fn wait_converged(
    progress: &Progress,
    n: usize,
    blocks: usize,
    timeout: Duration,
    reflector: &mut Reflector,
    verbose: bool,
) -> Result<Phases> {
    let t0 = Instant::now();
    let mut next_print = Duration::from_secs(1);
    let base = progress.prefixes_received.load(Ordering::Relaxed);
    let want_routes = (n as u64) * (n.saturating_sub(1) as u64) * blocks as u64;
    let mut phases = Phases::default();
    loop {
        if phases.all_up.is_none() && progress.established.load(Ordering::Relaxed) == n {
            let at = t0.elapsed();
            let cpu = reflector.daemon().usage().map_or(0.0, |u| u.1);
            phases.all_up = Some((at, cpu));
        }
        if phases.all_routes.is_none()
            && progress.prefixes_received.load(Ordering::Relaxed) - base >= want_routes
        {
            phases.all_routes = Some(t0.elapsed());
        }
        if verbose && t0.elapsed() >= next_print {
            next_print += Duration::from_secs(1);
            eprintln!(
                "  {:>4.1} s: {} established, {} converged, {} prefixes received",
                t0.elapsed().as_secs_f64(),
                progress.established.load(Ordering::Relaxed),
                progress.converged.load(Ordering::Relaxed),
                progress.prefixes_received.load(Ordering::Relaxed)
            );
            if let Ok(w) = progress.waiting.lock() {
                let some: Vec<String> = w
                    .iter()
                    .take(5)
                    .map(|(a, (held, eor))| format!("{a}: {held} held, EoR {eor}"))
                    .collect();
                if !some.is_empty() {
                    eprintln!("    waiting: {}", some.join("; "));
                }
            }
        }
        if progress.converged.load(Ordering::Relaxed) == n {
            phases.converged = t0.elapsed();
            return Ok(phases);
        }
        if !reflector.daemon().is_running() {
            bail!("the reflector exited: {}", reflector.daemon().log().trim());
        }
        if t0.elapsed() > timeout {
            let err = progress.last_error.lock().ok().and_then(|g| g.clone());
            bail!(
                "not converged after {timeout:?}: {} of {n} clients established, {} converged; last client error: {}",
                progress.established.load(Ordering::Relaxed),
                progress.converged.load(Ordering::Relaxed),
                err.as_deref().unwrap_or("none")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Times `flaps` single changes (client 0's blocks withdrawn, announced,
/// …) from the notice to client 0 until every other client has it: the
/// reflector's per-update latency under its full set of sessions (the
/// generator's reaction to the notice included, the same for both).
fn time_flaps(
    progress: &Progress,
    n: usize,
    flaps: usize,
    timeout: Duration,
) -> Result<Option<(f64, f64)>> {
    if flaps == 0 || n < 2 {
        return Ok(None);
    }
    let mut ms = Vec::with_capacity(flaps);
    for i in 0..flaps {
        // Withdrawn: only client 0 is still converged; announced: all are.
        let want = if i % 2 == 0 { 1 } else { n };
        let t0 = Instant::now();
        progress.flap.notify_one();
        while progress.converged.load(Ordering::Relaxed) != want {
            if t0.elapsed() > timeout {
                bail!("change {i} did not reach every client within {timeout:?}");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }
    // End announced, as the restart phase expects.
    if flaps % 2 == 1 {
        progress.flap.notify_one();
        lab::wait_for("client 0's blocks back everywhere", timeout, || {
            Ok((progress.converged.load(Ordering::Relaxed) == n).then_some(()))
        })?;
    }
    ms.sort_by(f64::total_cmp);
    Ok(Some((ms[ms.len() / 2], ms[ms.len() - 1])))
}

fn run(args: &Args, n: usize, which: &str) -> Result<Row> {
    let lab = Lab::builder().nodes(1).build()?;
    let node = &lab.nodes()[0];
    let rr = node.ipv4;
    let clients = client_addrs(n)?;
    // The clients' addresses on the ToR's bridge; the node reaches them through
    // the ToR's own address (one neighbour entry, not one per client).
    let mut lines: Vec<String> = clients
        .iter()
        .map(|a| format!("addr add {a}/32 dev br0"))
        .collect();
    lines.push("link set br0 up".into());
    lab.tor().ip_batch(&lines)?;
    node.ns.ip(&[
        "route",
        "add",
        &format!("{}/{CLIENT_NET_LEN}", Ipv4Addr::from(CLIENT_NET)),
        "via",
        &lab::TOR_IPV4.to_string(),
    ])?;
    let plan = Arc::new(Plan {
        reflector: rr,
        local_as: LOCAL_AS,
        clients,
        blocks_per_client: args.blocks,
        hold_time: args.hold,
    });
    plan.validate().map_err(anyhow::Error::msg)?;
    let dir = lab.run_dir().to_path_buf();
    let timeout = Duration::from_secs(args.timeout_secs);

    let mut reflector = Reflector::start(which, &lab, &dir, rr, &plan, args.range, args.breakdown)?;
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
    let (stat_tx, stat_rx) = std::sync::mpsc::channel();
    let generator = {
        let (plan, progress, tor) = (plan.clone(), progress.clone(), lab.tor().name().to_string());
        std::thread::spawn(move || -> Result<()> {
            lab::Netns::existing(&tor).enter(move || -> Result<()> {
                let _ = stat_tx.send(thread_stat_path());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(bgpload::run(plan, progress, stop_rx));
                let _ = cpu_tx.send(thread_cpu());
                Ok(())
            })?
        })
    };
    let gen_stat = stat_rx.recv().ok().flatten();
    let gen_cpu = || gen_stat.as_ref().map_or(0.0, thread_cpu_of);
    let result = (|| -> Result<Row> {
        let ready = wait_converged(
            &progress,
            n,
            args.blocks,
            timeout,
            &mut reflector,
            args.verbose,
        )?;
        println!("{n} clients, {which}, ready: {}", ready.describe());
        let (ready_rss, ready_cpu) = reflector.daemon().usage()?;
        if args.breakdown && which == "margay" {
            print_breakdown(n, &dir.join("margay-rr.status.json"));
        }
        let flap_ms = time_flaps(&progress, n, args.flaps, timeout)?;

        // Crash it; the clients keep their routes and retry every 100 ms.
        reflector.daemon().signal(Signal::SIGKILL)?;
        reflector.daemon().stop(Duration::from_secs(1));
        lab::wait_for("every client to lose its session", timeout, || {
            Ok((progress.established.load(Ordering::Relaxed) == 0
                && progress.converged.load(Ordering::Relaxed) == 0)
                .then_some(()))
        })?;
        let (busy_before, window) = (machine_busy(), Instant::now());
        let gen_before = gen_cpu();
        let mut reflector2 =
            Reflector::start(which, &lab, &dir, rr, &plan, args.range, args.breakdown)?;
        let restart = wait_converged(
            &progress,
            n,
            args.blocks,
            timeout,
            &mut reflector2,
            args.verbose,
        )?;
        println!("{n} clients, {which}, restart: {}", restart.describe());
        let (restart_rss, restart_cpu) = reflector2.daemon().usage()?;
        if let (Some((b0, cores)), Some((b1, _))) = (busy_before, machine_busy()) {
            let generator = gen_cpu() - gen_before;
            let busy = b1 - b0;
            // From before the reflector's start to now (a little longer
            // than the restart's own time, which starts at its first
            // connection attempt).
            println!(
                "{n} clients, {which}, restart: machine busy {busy:.2} of {:.2} CPU s \
                 ({cores} cores); reflector {restart_cpu:.2}, generator {generator:.2}, \
                 other processes {:.2}",
                window.elapsed().as_secs_f64() * cores as f64,
                (busy - restart_cpu - generator).max(0.0),
            );
        }
        reflector2.daemon().stop(Duration::from_secs(2));
        Ok(Row {
            clients: n,
            reflector: which.to_string(),
            ready_s: ready.converged.as_secs_f64(),
            ready_cpu,
            ready_rss,
            restart_s: restart.converged.as_secs_f64(),
            restart_cpu,
            restart_rss,
            gen_cpu: 0.0,
            received: progress.prefixes_received.load(Ordering::Relaxed),
            flap_ms,
        })
    })();
    let _ = stop_tx.send(true);
    let joined = generator.join();
    reflector.daemon().stop(Duration::from_secs(2));
    let mut row = match result {
        Ok(r) => r,
        Err(e) => {
            // The lab's directory goes with the lab: keep the reflector's log.
            let kept = std::env::temp_dir().join(format!("bench_rr-{which}-{n}.log"));
            let _ = std::fs::copy(reflector.daemon().log_path(), &kept);
            return Err(e.context(format!("reflector log: {}", kept.display())));
        }
    };
    match joined {
        Ok(r) => r?,
        Err(_) => bail!("the load generator panicked"),
    }
    row.gen_cpu = cpu_rx.recv().unwrap_or(0.0);
    Ok(row)
}

/// Margay's memory by kind from its status file, once the RIB has been
/// quiet long enough for the speaker to measure it (a few seconds at most).
fn print_breakdown(n: usize, status: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mb = |v: &serde_json::Value| v.as_f64().map_or(0.0, |b| b / 1e6);
    loop {
        let mem = std::fs::read_to_string(status)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| v["profile"]["memory"].clone())
            .filter(|m| !m["rib"].is_null());
        if let Some(m) = mem {
            let rib = &m["rib"];
            println!(
                "{n} clients, margay memory: RSS {:.1} MB (peak {:.1}), heap in use {:.1} MB, RIB {:.1} MB \
                 (v4 table {:.1}, attribute sets {} = {:.1}, Adj-RIB-Out {} entries = {:.1}); \
                 heap outside the RIB (sessions, queues, buffers) {:.1} MB",
                mb(&m["rss"]),
                mb(&m["rss_peak"]),
                mb(&m["heap_in_use"]),
                mb(&rib["total"]),
                mb(&rib["v4"]["bytes"]),
                rib["attrs"]["count"],
                mb(&rib["attrs"]["bytes"]) + mb(&rib["intern_table"]["bytes"]),
                rib["adj_out"]["count"],
                mb(&rib["adj_out"]["bytes"]),
                mb(&m["heap_in_use"]) - mb(&rib["total"]),
            );
            return;
        }
        if Instant::now() > deadline {
            println!(
                "{n} clients, margay memory: no breakdown in {}",
                status.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8} {:>12} {:>14}",
        "clients",
        "reflector",
        "ready s",
        "CPU s",
        "RSS MB",
        "restart s",
        "CPU s",
        "RSS MB",
        "gen CPU",
        "received",
        "change ms"
    );
    for r in rows {
        println!(
            "{:>7} {:>9} {:>9.2} {:>9.2} {:>9.1} {:>10.2} {:>9.2} {:>9.1} {:>8.2} {:>12} {:>14}",
            r.clients,
            r.reflector,
            r.ready_s,
            r.ready_cpu,
            r.ready_rss,
            r.restart_s,
            r.restart_cpu,
            r.restart_rss,
            r.gen_cpu,
            r.received,
            r.flap_ms
                .map(|(p50, max)| format!("{p50:.1}/{max:.1}"))
                .unwrap_or_default()
        );
    }
    // Ratios where both ran at a size.
    for m in rows.iter().filter(|r| r.reflector == "margay") {
        if let Some(b) = rows
            .iter()
            .find(|r| r.reflector == "bird" && r.clients == m.clients)
        {
            println!(
                "{} clients, margay/BIRD: ready {:.2}, CPU {:.2}, RSS {:.2}, restart {:.2}",
                m.clients,
                m.ready_s / b.ready_s,
                m.ready_cpu / b.ready_cpu.max(0.01),
                m.ready_rss / b.ready_rss,
                m.restart_s / b.restart_s
            );
        }
    }
    println!(
        "(goal, issue #17: with 5,000 clients converged <= 10 s after a restart, memory <= BIRD's)"
    );
}
