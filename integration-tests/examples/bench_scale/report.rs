//! The table: one column per size, each figure beside issue 17's goal
//! for 5k nodes / 150k pods / 10k policies (targets, not assertions), the
//! ratio to the goal first where there is one.

use crate::probe::pct;
use crate::{Args, MB, Row};

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A traffic key (`resource verb`) of Pods or PodEndpoints.
fn pod_kind(k: &str) -> bool {
    k.starts_with("pods ") || k.starts_with("podendpoints.")
}

/// `figure` with its ratio to `goal` (lower is better) in front.
fn vs(figure: f64, goal: f64, text: String) -> String {
    if figure.is_finite() && goal > 0.0 {
        format!("{:.2}x | {text}", figure / goal)
    } else {
        text
    }
}

pub fn print(a: &Args, rows: &[Row]) {
    for r in rows {
        println!(
            "\nAPI bytes to the agent by resource, {}/{}/{} (until ready | during churn):",
            r.layout.nodes, r.layout.pods, r.layout.policies
        );
        for (k, (b, f)) in &r.ready_by {
            let (cb, cf) = r.churn.by.get(k).copied().unwrap_or((0, 0));
            println!(
                "  {k:<40} {:>9.2} MB {f:>7} frames | {:>9.2} MB {cf:>7} frames",
                *b as f64 / MB,
                cb as f64 / MB
            );
        }
    }
    println!(
        "\n== one real margay-node in a simulated cluster ({} build, {} cores shared with other work, load average {}) ==",
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg()
    );
    println!(
        "churn: {:.0} label changes/s cluster-wide{}{} for {:.0} s; pods {:?}, {}; agent --pod-source={}; ratios are figure/goal (goal = issue 17, 5k/150k/10k)\n",
        a.rate,
        if a.ipam_churn {
            " (each with an IPAM block write)"
        } else {
            ""
        },
        if a.node_churn > 0.0 {
            format!(", {:.0} Node status writes/s", a.node_churn)
        } else {
            String::new()
        },
        a.churn_secs,
        a.family,
        if a.unique_pod_labels {
            "every pod its own label set (--unique-pod-labels)"
        } else {
            "a ReplicaSet's pods share their labels"
        },
        if a.endpoints { "endpoints" } else { "pods" }
    );
    let mut lines: Vec<(String, Vec<String>, String)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Row) -> String, goal: &str| {
        lines.push((
            name.to_string(),
            rows.iter().map(f).collect(),
            goal.to_string(),
        ));
    };
    row(
        "cluster (nodes/pods/policies)",
        &|r| format!("{}/{}/{}", r.layout.nodes, r.layout.pods, r.layout.policies),
        "5000/150000/10000",
    );
    row(
        "objects loaded, s (per s)",
        &|r| {
            format!(
                "{} in {:.0} s ({:.0}/s)",
                r.objects,
                r.load_secs,
                r.objects as f64 / r.load_secs
            )
        },
        "",
    );
    row("bytes of one Pod (JSON)", &|r| r.pod_bytes.to_string(), "");
    row(
        "API server RSS after load / peak, MB",
        &|r| {
            format!(
                "{:.0} / {:.0}",
                r.api_after_load.rss as f64 / MB,
                r.api_end.hwm as f64 / MB
            )
        },
        "",
    );
    row(
        "agent ready, s from start",
        &|r| vs(r.ready_secs, 60.0, format!("{:.1}", r.ready_secs)),
        "<= 60 s",
    );
    row(
        "agent CPU to ready, s",
        &|r| format!("{:.1}", r.ready.cpu),
        "",
    );
    row(
        "agent peak RSS at ready, MB",
        &|r| {
            vs(
                r.ready.hwm as f64 / MB,
                250.0,
                format!("{:.0}", r.ready.hwm as f64 / MB),
            )
        },
        "<= 250 MB",
    );
    row(
        "agent peak RSS after churn, MB",
        &|r| {
            vs(
                r.after_churn.hwm as f64 / MB,
                250.0,
                format!("{:.0}", r.after_churn.hwm as f64 / MB),
            )
        },
        "<= 250 MB",
    );
    row(
        "API bytes to the agent until ready, MB",
        &|r| format!("{:.1}", r.ready_bytes as f64 / MB),
        "",
    );
    row(
        "  of which pods + podendpoints list+watch, MB",
        &|r| {
            let p: u64 = r
                .ready_by
                .iter()
                .filter(|(k, _)| pod_kind(k) && (k.ends_with(" list") || k.ends_with(" watch")))
                .map(|(_, (b, _))| b)
                .sum();
            format!(
                "{:.1} ({:.0}%)",
                p as f64 / MB,
                100.0 * p as f64 / r.ready_bytes.max(1) as f64
            )
        },
        "",
    );
    row(
        "nft sets+maps / elements",
        &|r| format!("{} / {}", r.nft.sets + r.nft.maps, r.nft.elements),
        "",
    );
    row(
        "nft chains / rules",
        &|r| format!("{} / {}", r.nft.chains, r.nft.rules),
        "",
    );
    row(
        "churn: changes sent (achieved rate/s)",
        &|r| {
            format!(
                "{} ({:.0}/s)",
                r.churn.sent,
                r.churn.sent as f64 / r.churn.secs
            )
        },
        "100/s",
    );
    row(
        "churn: changes this node must see",
        &|r| format!("{} (all reached nft)", r.churn.observable),
        "",
    );
    row(
        "label change -> local nft p50, ms",
        &|r| format!("{:.0}", pct(&mut r.churn.lat_ms.clone(), 50.0)),
        "",
    );
    row(
        "label change -> local nft p99, ms",
        &|r| {
            let p = pct(&mut r.churn.lat_ms.clone(), 99.0);
            vs(p, 1000.0, format!("{p:.0}"))
        },
        "<= 1000 ms",
    );
    row(
        "agent CPU per pod event, ms (idle/s)",
        &|r| {
            let c = &r.churn;
            format!(
                "{:.2} ({:.0} ms/s idle)",
                c.cpu / c.sent as f64 * 1e3,
                c.idle_cpu_per_sec * 1e3
            )
        },
        "",
    );
    row(
        "  policy syncs / their time per event, ms",
        &|r| {
            let c = &r.churn;
            format!("{:.0} / {:.2}", c.syncs, c.sync_secs / c.sent as f64 * 1e3)
        },
        "",
    );
    row(
        "pod + podendpoint watch bytes per pod event",
        &|r| {
            let pods: u64 = r
                .churn
                .by
                .iter()
                .filter(|(k, _)| pod_kind(k) && k.ends_with(" watch"))
                .map(|(_, (b, _))| b)
                .sum();
            let b = pods as f64 / r.churn.sent as f64;
            vs(b, 1024.0, format!("{b:.0}"))
        },
        "<= 1024 B",
    );
    row(
        "all API bytes to the agent during churn, MB/min",
        &|r| {
            format!(
                "{:.1}",
                r.churn.bytes as f64 / MB / r.churn.window_secs * 60.0
            )
        },
        "",
    );
    row(
        "nft transactions / element messages",
        &|r| format!("{} / {}", r.churn.nft_txns, r.churn.nft_lines),
        "",
    );
    row(
        "mesh: peers configured in, s",
        &|r| match &r.mesh {
            Some(m) => format!("{} in {:.1}", m.peers, m.configure_secs),
            None => "-".into(),
        },
        "",
    );
    row(
        "mesh: agent RSS before -> with, MB; CPU",
        &|r| match &r.mesh {
            Some(m) => format!(
                "{:.0} -> {:.0}; {:.0}% of a core over {} s",
                m.rss_before as f64 / MB,
                m.rss_after as f64 / MB,
                m.cpu_cores * 100.0,
                m.secs
            ),
            None => "-".into(),
        },
        "",
    );
    let w0 = lines.iter().map(|l| l.0.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..rows.len())
        .map(|i| lines.iter().map(|l| l.1[i].len()).max().unwrap_or(0))
        .collect();
    for (name, cells, goal) in &lines {
        let mut s = format!("{name:<w0$}");
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(&format!(" | {c:>w$}"));
        }
        println!("{s} | {goal}");
    }
}
