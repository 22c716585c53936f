//! Shared pieces of the BGP interop suites: `margay-bgp` in a lab namespace
//! with its status file, BIRD configs for peers, kernel route polling.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::lab::{self, Daemon, LabError, Netns, wait_for};
use nix::sys::signal::Signal;

#[macro_export]
macro_rules! require_root {
    () => {
        if let Err(why) = integration_tests::lab::can_run() {
            integration_tests::lab::skip(&why);
            return;
        }
        if let Err(why) = bgp_support::margay_bgp_bin() {
            integration_tests::lab::skip(&why);
            return;
        }
    };
}

/// The `margay-bgp` binary (`cargo test --workspace` builds it).
pub fn margay_bgp_bin() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("MARGAY_BGP_BIN") {
        return Ok(PathBuf::from(p));
    }
    lab::workspace_bin("margay-bgp").map_err(|e| e.to_string())
}

/// `margay-bgp` running in a namespace.
pub struct MargayBgp {
    /// The process.
    pub daemon: Daemon,
    ns: Netns,
    config: PathBuf,
    status: PathBuf,
    name: String,
}

impl MargayBgp {
    /// Writes `yaml` to `<dir>/<name>.yaml` and starts the speaker in `ns`;
    /// returns once it has written its first status.
    pub fn start(ns: &Netns, dir: &Path, name: &str, yaml: &str) -> MargayBgp {
        let config = dir.join(format!("{name}.yaml"));
        let status = dir.join(format!("{name}.status.json"));
        std::fs::write(&config, yaml).expect("write margay-bgp config");
        let _ = std::fs::remove_file(&status);
        let log = dir.join(format!("{name}.log"));
        let bin = margay_bgp_bin().expect("margay-bgp binary");
        let argv = [
            bin.to_str().expect("utf-8 path"),
            "--config",
            config.to_str().expect("utf-8 path"),
            "--status-file",
            status.to_str().expect("utf-8 path"),
            "--log",
            "info,bgp=debug",
        ];
        let mut daemon = Daemon::spawn(ns, name, &argv, &log).expect("spawn margay-bgp");
        wait_for("margay-bgp status file", Duration::from_secs(10), || {
            if !daemon.is_running() {
                return Err(LabError::Invalid(format!(
                    "margay-bgp exited: {}",
                    daemon.log()
                )));
            }
            Ok(status.exists().then_some(()))
        })
        .expect("margay-bgp starts");
        MargayBgp {
            daemon,
            ns: Netns::existing(ns.name()),
            config,
            status,
            name: name.to_string(),
        }
    }

    /// The latest status JSON.
    pub fn status(&self) -> serde_json::Value {
        for _ in 0..20 {
            if let Ok(t) = std::fs::read_to_string(&self.status)
                && let Ok(v) = serde_json::from_str(&t)
            {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{}: no readable status file", self.name);
    }

    /// The status entry of peer `name`.
    pub fn peer(&self, name: &str) -> Option<serde_json::Value> {
        self.status()["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// State of peer `name` ("Established", ...).
    pub fn peer_state(&self, name: &str) -> String {
        self.peer(name)
            .and_then(|p| p["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Waits until peer `name` is Established (panics with the log if not).
    pub fn wait_established(&mut self, name: &str, timeout: Duration) {
        let r = wait_for(
            &format!("{} peer {name} established", self.name),
            timeout,
            || {
                if !self.daemon.is_running() {
                    return Err(LabError::Invalid("margay-bgp exited".into()));
                }
                Ok((self.peer_state(name) == "Established").then_some(()))
            },
        );
        if let Err(e) = r {
            panic!(
                "{e}\nstatus: {}\nlog:\n{}",
                self.status(),
                self.daemon.log()
            );
        }
    }

    /// Replaces the config file and sends SIGHUP (re-reads `originate`).
    pub fn reload(&self, yaml: &str) {
        std::fs::write(&self.config, yaml).expect("write config");
        self.daemon.signal(Signal::SIGHUP).expect("SIGHUP");
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// A peer entry of a margay-bgp YAML config.
pub fn peer_yaml(name: &str, neighbor: &str, remote_as: &str, extra: &str) -> String {
    let mut s = format!(
        "  - name: {name}\n    neighbor: {neighbor}\n    remote_as: {remote_as}\n    hold_time: 9\n    connect_retry: 1\n"
    );
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("    ");
        s.push_str(l.trim());
        s.push('\n');
    }
    s
}

/// A margay-bgp YAML config.
pub fn margay_yaml(
    asn: u32,
    router_id: &str,
    originate: &[&str],
    peers: &[String],
    extra: &str,
) -> String {
    let mut s = format!("local_as: {asn}\nrouter_id: {router_id}\nmultipath: 4\n{extra}");
    if originate.is_empty() {
        s.push_str("originate: []\n");
    } else {
        s.push_str("originate:\n");
        for o in originate {
            s.push_str(&format!("  - prefix: {o}\n"));
        }
    }
    s.push_str("peers:\n");
    for p in peers {
        s.push_str(p);
    }
    s
}

fn family_flag(prefix: &str) -> &'static str {
    if prefix.contains(':') { "-6" } else { "-4" }
}

/// `ip route show exact PREFIX` in `ns` (empty when there is none).
pub fn kernel_route(ns: &Netns, prefix: &str) -> String {
    ns.ip(&[family_flag(prefix), "route", "show", "exact", prefix])
        .unwrap_or_default()
}

/// Waits until the kernel of `ns` has (or, `want = false`, has not) a route
/// for `prefix` whose text contains `needle`; returns the route text.
pub fn wait_kernel(
    ns: &Netns,
    prefix: &str,
    needle: &str,
    want: bool,
    timeout: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let r = kernel_route(ns, prefix);
        let has = !r.trim().is_empty() && r.contains(needle);
        if has == want {
            return r;
        }
        if start.elapsed() > timeout {
            panic!(
                "{}: route {prefix} ({needle}) {} after {:?}; now: {r:?}\nall routes:\n{}{}",
                ns.name(),
                if want { "missing" } else { "still there" },
                timeout,
                ns.ip(&["-4", "route"]).unwrap_or_default(),
                ns.ip(&["-6", "route"]).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// BIRD 2 config for a router peering with margay-bgp speakers: `statics`
/// are originated (blackholes), learned routes go to the kernel.
/// `neighbors`: (name, address, remote AS, extra lines for the protocol).
pub fn bird_config(
    router_id: &str,
    local_ip: &str,
    local_v6: &str,
    asn: u32,
    statics: &[&str],
    neighbors: &[(&str, &str, u32, &str)],
) -> String {
    let mut s = format!(
        "log stderr all;\nrouter id {router_id};\nprotocol device {{ scan time 10; }}\n\
         protocol kernel kernel4 {{ ipv4 {{ import none; export where source ~ [RTS_BGP]; }}; merge paths on; }}\n\
         protocol kernel kernel6 {{ ipv6 {{ import none; export where source ~ [RTS_BGP]; }}; merge paths on; }}\n"
    );
    let v4: Vec<&&str> = statics.iter().filter(|p| !p.contains(':')).collect();
    let v6: Vec<&&str> = statics.iter().filter(|p| p.contains(':')).collect();
    s.push_str("protocol static static4 { ipv4;");
    for p in v4 {
        s.push_str(&format!(" route {p} blackhole;"));
    }
    s.push_str(" }\nprotocol static static6 { ipv6;");
    for p in v6 {
        s.push_str(&format!(" route {p} blackhole;"));
    }
    s.push_str(" }\n");
    for (name, addr, ras, extra) in neighbors {
        s.push_str(&format!(
            "protocol bgp {name} {{\n  local {local_ip} as {asn};\n  neighbor {addr} as {ras};\n  direct;\n  \
             hold time 9; keepalive time 3; connect delay time 1; connect retry time 1; error wait time 1, 2;\n  \
             {extra}\n  ipv4 {{ import all; export all; gateway direct; }};\n  \
             ipv6 {{ import all; export all; gateway direct; next hop address {local_v6}; }};\n}}\n"
        ));
    }
    s
}

/// Waits until `birdc show protocols NAME` says Established.
pub fn wait_bird_established(bird: &lab::Bird, proto: &str, timeout: Duration) {
    let r = wait_for(
        &format!("BIRD protocol {proto} established"),
        timeout,
        || {
            let out = bird.birdc(&format!("show protocols {proto}"))?;
            Ok(out.contains("Established").then_some(()))
        },
    );
    if let Err(e) = r {
        panic!(
            "{e}\n{}\nBIRD log:\n{}",
            bird.birdc(&format!("show protocols all {proto}"))
                .unwrap_or_default(),
            bird.daemon.log()
        );
    }
}
