//! Benchmark (not a test): `margay` against the reference `ptp` +
//! `host-local` from /usr/lib/cni, exec to exit, on identical fresh pod
//! namespaces in one node namespace, interleaved so machine noise hits both.
//! Then N concurrent margay ADDs on one node (and the same for ptp).
//!
//! ```text
//! cargo build --profile release-cni -p cni-plugin
//! cargo run --release -p cni-plugin --example bench_cni -- \
//!     --margay $CARGO_TARGET_DIR/release-cni/margay [--runs 200] [--concurrent 50]
//! ```
//! Needs root. The agent is the test suite's stand-in run in-process: the
//! real `ipam` gRPC service (allocator with group commit over the in-memory
//! store) and a fake Endpoints service whose EndpointUp installs the /32
//! host route over a netlink socket in the node namespace before answering
//! (the least the real agent must do); that route is checked after every ADD.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Call, FakeAgentOptions, Netns, Node, with_prev};
use serde_json::{Value, json};

const PTP: &str = "/usr/lib/cni/ptp";

struct Args {
    margay: String,
    runs: usize,
    concurrent: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        margay: std::env::var("MARGAY_BIN").unwrap_or_default(),
        runs: 200,
        concurrent: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--margay" => a.margay = v()?,
            "--runs" => a.runs = v()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--concurrent" => {
                a.concurrent = v()?.parse().map_err(|e| format!("--concurrent: {e}"))?
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.margay.is_empty() {
        return Err("give the plugin: --margay PATH (or MARGAY_BIN)".into());
    }
    Ok(a)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (median, p95) in ms, nearest rank.
fn stats(v: &[Duration]) -> (f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().map(ms).collect();
    s.sort_by(f64::total_cmp);
    let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (rank(0.5), rank(0.95))
}

fn line(what: &str, m: &[Duration], p: &[Duration]) {
    let (mm, m95) = stats(m);
    let (pm, p95) = stats(p);
    println!(
        "{what:<4} margay/ptp median {:.2}x  p95 {:.2}x   margay median {mm:.2} ms p95 {m95:.2} ms | ptp+host-local median {pm:.2} ms p95 {p95:.2} ms  (n={})",
        mm / pm,
        m95 / p95,
        m.len()
    );
}

fn ptp_conf(dir: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "ptpnet",
        "type": "ptp",
        "mtu": 1500,
        "ipam": {
            "type": "host-local",
            "subnet": "198.19.128.0/20",
            "dataDir": dir.join("host-local"),
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

fn host_route_present(node: &Node, res: &Value) -> bool {
    let ip = res["ips"][0]["address"]
        .as_str()
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    let host_if = res["interfaces"][0]["name"].as_str().unwrap_or("-");
    node.routes(false)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(ip) && l.contains(host_if))
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_cni: {e}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench_cni: needs root (network namespaces)");
        std::process::exit(2);
    }
    let node = Node::with(
        1500,
        Some(FakeAgentOptions {
            v6: None,
            ..Default::default()
        }),
    );
    let mut mconf = node.conf("1.0.0");
    mconf["mtu"] = json!(1500);
    mconf["log_level"] = json!("warn");
    let pconf = ptp_conf(node.dir.path());
    println!(
        "margay {} ({} bytes) vs {PTP}; {} sequential ADD+DEL each, IPv4, interleaved",
        a.margay,
        std::fs::metadata(&a.margay).map(|m| m.len()).unwrap_or(0),
        a.runs
    );

    let (mut m_add, mut m_del, mut p_add, mut p_del) = (vec![], vec![], vec![], vec![]);
    let mut route_missing = 0usize;
    let mut failures = 0usize;
    for i in 0..a.runs {
        for ptp in [false, true] {
            let pod = Netns::new("b");
            let cid = format!("b{i}{}", if ptp { "p" } else { "m" });
            let (bin, conf) = if ptp {
                (PTP, &pconf)
            } else {
                (a.margay.as_str(), &mconf)
            };
            let add = node.plugin(bin, &Call::attach("ADD", &cid, Some(&pod), conf));
            if !add.success {
                failures += 1;
                eprintln!("{bin} ADD failed: {}", add.stdout);
                continue;
            }
            let res = add.json.clone().unwrap_or(Value::Null);
            if !ptp && !host_route_present(&node, &res) {
                route_missing += 1;
            }
            let del = node.plugin(
                bin,
                &Call::attach("DEL", &cid, Some(&pod), &with_prev(conf, &res)),
            );
            if !del.success {
                failures += 1;
                eprintln!("{bin} DEL failed: {}", del.stdout);
            }
            if ptp {
                p_add.push(add.elapsed);
                p_del.push(del.elapsed);
            } else {
                m_add.push(add.elapsed);
                m_del.push(del.elapsed);
            }
        }
    }
    line("ADD", &m_add, &p_add);
    line("DEL", &m_del, &p_del);
    println!(
        "agent host route present when margay ADD returned: {}/{}; failures: {failures}",
        m_add.len() - route_missing,
        m_add.len()
    );

    for ptp in [false, true] {
        let (bin, conf) = if ptp {
            (PTP, &pconf)
        } else {
            (a.margay.as_str(), &mconf)
        };
        let pods: Vec<Netns> = (0..a.concurrent).map(|_| Netns::new("c")).collect();
        let run_all = |cmd: &str, results: Option<&[Value]>| -> (Duration, Vec<common::Reply>) {
            let barrier = Arc::new(Barrier::new(pods.len() + 1));
            let calls: Vec<Call> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let c = match results {
                        Some(r) => with_prev(conf, &r[i]),
                        None => conf.clone(),
                    };
                    Call::attach(cmd, &format!("c{i}"), Some(p), &c)
                })
                .collect();
            std::thread::scope(|s| {
                let hs: Vec<_> = calls
                    .iter()
                    .map(|c| {
                        let b = barrier.clone();
                        let ns = &node.ns;
                        s.spawn(move || {
                            ns.run(move || {
                                b.wait();
                                c.exec(bin)
                            })
                        })
                    })
                    .collect();
                barrier.wait();
                let t0 = Instant::now();
                let out: Vec<common::Reply> =
                    hs.into_iter().map(|h| h.join().expect("thread")).collect();
                (t0.elapsed(), out)
            })
        };
        let (wall, adds) = run_all("ADD", None);
        let ok = adds.iter().filter(|r| r.success).count();
        let results: Vec<Value> = adds
            .iter()
            .map(|r| r.json.clone().unwrap_or(Value::Null))
            .collect();
        let ips: BTreeSet<&str> = results
            .iter()
            .filter_map(|r| r["ips"][0]["address"].as_str())
            .collect();
        let routes = if ptp {
            String::from("-")
        } else {
            results
                .iter()
                .filter(|r| host_route_present(&node, r))
                .count()
                .to_string()
        };
        let (dwall, dels) = run_all("DEL", Some(&results));
        println!(
            "{:<14} {} concurrent ADDs: {ok} ok, {} distinct addresses, host routes {routes}, wall {:.1} ms; DELs: {} ok, wall {:.1} ms",
            if ptp { "ptp+host-local" } else { "margay" },
            a.concurrent,
            ips.len(),
            ms(wall),
            dels.iter().filter(|r| r.success).count(),
            ms(dwall)
        );
        for r in adds.iter().chain(&dels).filter(|r| !r.success).take(3) {
            eprintln!("  failure: {}", r.stdout.trim());
        }
    }
}
