//! `scripts/lab status`: each node's view (margayctl, BGP routes), the
//! ToR's, and the pod reachability matrices.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use integration_tests::lab::{self, Netns, Probe, Proto, probe_many};

use super::{PodState, State, path_str};

pub(super) fn status(state: &State) -> anyhow::Result<()> {
    let margayctl = lab::workspace_bin("margayctl")?;
    for n in &state.nodes {
        println!("== {}: margayctl node status", n.name);
        let out = Netns::existing(&n.ns)
            .command(path_str(&margayctl)?)
            .args(["--agent", &n.agent_url, "node", "status"])
            .output()?;
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns::existing(&n.ns);
        println!("-- {} kernel routes learned over BGP (proto 80)", n.name);
        print!("{}", ns.ip(&["-4", "route", "show", "proto", "80"])?);
        print!("{}", ns.ip(&["-6", "route", "show", "proto", "80"])?);
        println!();
    }
    println!("== ToR routes (BIRD)");
    let out = std::process::Command::new("birdc")
        .arg("-s")
        .arg(&state.bird_ctl)
        .args(["show", "route"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\n== reachability, TCP/80 (rows: from, columns: to)");
    print_matrix(state, false);
    print_matrix(state, true);
    Ok(())
}

pub(super) fn print_matrix(state: &State, v6: bool) {
    let mut probes = Vec::new();
    for from in &state.pods {
        for to in &state.pods {
            let ip = if v6 { &to.ipv6 } else { &to.ipv4 };
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            probes.push(Probe {
                from_ns: from.ns.clone(),
                to: SocketAddr::new(ip, 80),
                proto: Proto::Tcp,
            });
        }
    }
    let results = probe_many(&probes, Duration::from_millis(800), 32);
    let label = |p: &PodState| format!("{}({})", p.name, &p.role[..1]);
    let w = state
        .pods
        .iter()
        .map(|p| label(p).len())
        .max()
        .unwrap_or(4)
        .max(4);
    let header: Vec<String> = state
        .pods
        .iter()
        .map(|p| format!("{:>w$}", label(p)))
        .collect();
    println!(
        "{:w$}  {}",
        if v6 { "IPv6" } else { "IPv4" },
        header.join(" ")
    );
    let mut it = results.iter();
    for from in &state.pods {
        let cells: Vec<String> = state
            .pods
            .iter()
            .map(|_| {
                let c = match it.next() {
                    Some(o) if o.reached() => "ok",
                    Some(_) => "--",
                    None => "?",
                };
                format!("{c:>w$}")
            })
            .collect();
        println!("{:w$}  {}", label(from), cells.join(" "));
    }
}
