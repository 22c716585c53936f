//! One network namespace owned by the lab: create, run commands in it, enter
//! it from a thread, and remove it (killing whatever still runs inside) on drop.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::{LabError, Result};

/// An interface's MTU and counters ([`Netns::link_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    /// MTU.
    pub mtu: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

/// A named network namespace (`/run/netns/<name>`).
///
/// Dropping it kills every process still inside and deletes it, unless it was
/// [`Netns::persist`]ed (the lab's `up` leaves its namespaces for `down`).
#[derive(Debug)]
pub struct Netns {
    name: String,
    persist: bool,
}

impl Netns {
    /// Creates the namespace and brings its loopback up. Fails if it exists.
    pub fn create(name: &str) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_string(),
            persist: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Adopts an existing namespace (e.g. for `down` or a second process);
    /// it is removed on drop like one we created.
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            persist: false,
        }
    }

    /// A handle on an existing namespace that never removes it (for running
    /// things in a namespace someone else owns).
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            persist: true,
        }
    }

    /// The namespace name as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` and CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Keep the namespace (and what runs in it) when this handle drops.
    pub fn persist(&mut self) {
        self.persist = true;
    }

    /// A command that runs `program` inside the namespace (via `ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `argv` inside the namespace and returns its stdout; a non-zero
    /// exit is an error carrying stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Invalid("exec: empty command".into()))?;
        let out = run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip -n <ns> <args>` (no `ip netns exec` round trip).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs many `ip` commands in one process (`ip -n <ns> -batch -`): one
    /// fork instead of one per line.
    pub fn ip_batch<S: AsRef<str>>(&self, lines: &[S]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        for l in lines {
            script.push_str(l.as_ref());
            script.push('\n');
        }
        run_with_stdin(
            Command::new("ip").args(["-n", &self.name, "-batch", "-"]),
            script.as_bytes(),
        )?;
        Ok(())
    }

    /// Counters and MTU of interface `dev` (`ip -s -j link show`); None
    /// when it does not exist.
    pub fn link_stats(&self, dev: &str) -> Option<LinkStats> {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", dev]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let l = v.get(0)?;
        let n = |dir: &str, what: &str| l["stats64"][dir][what].as_u64().unwrap_or(0);
        Some(LinkStats {
            mtu: l["mtu"].as_u64().unwrap_or(0),
            tx_packets: n("tx", "packets"),
            tx_bytes: n("tx", "bytes"),
            rx_packets: n("rx", "packets"),
            rx_bytes: n("rx", "bytes"),
        })
    }

    /// The interface this namespace routes `dst` out of (`ip route get`);
    /// None when it has no route.
    pub fn route_dev(&self, dst: std::net::IpAddr) -> Option<String> {
        let out = self.ip(&["-j", "route", "get", &dst.to_string()]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v.get(0)?["dev"].as_str().map(str::to_string)
    }

    /// Sets sysctls inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    ///
    /// Writes `/proc/sys` from a thread that entered the namespace: `net.*`
    /// sysctls belong to the netns of the task that opens them.
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        let owned: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.enter(move || -> Result<()> {
            for (k, v) in &owned {
                let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
                let mut f = File::options()
                    .write(true)
                    .open(&path)
                    .map_err(|e| LabError::io(&path, e))?;
                f.write_all(v.as_bytes())
                    .map_err(|e| LabError::io(&path, e))?;
            }
            Ok(())
        })?
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and
    /// returns its result. Sockets created inside `f` belong to the namespace.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = File::open(self.path()).map_err(|e| LabError::io(self.path(), e))?;
        let name = self.name.clone();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || -> Result<R> {
                // The thread is private to this call; it never leaves the
                // namespace, so no other work runs in the wrong one.
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| LabError::Setns { ns: name, source })?;
                Ok(f())
            })
            .map_err(|e| LabError::Spawn {
                cmd: "thread".into(),
                source: e,
            })?;
        handle
            .join()
            .map_err(|_| LabError::Invalid(format!("thread in {} panicked", self.name)))?
    }

    /// PIDs of the processes running in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// Kills everything running in the namespace: SIGTERM, then SIGKILL after
    /// `grace`.
    pub fn kill_all(&self, grace: Duration) {
        kill_all_in(&self.name, grace);
    }

    /// Kills what runs inside and deletes the namespace now.
    pub fn delete(mut self) -> Result<()> {
        self.persist = true; // the explicit path below replaces Drop's
        remove(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.persist {
            return;
        }
        if let Err(e) = remove(&self.name) {
            eprintln!("lab: cleanup of netns {}: {e}", self.name);
        }
    }
}

/// Kills the processes in namespace `name` and deletes it; a namespace that
/// is already gone is not an error.
pub fn remove(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    kill_all_in(name, Duration::from_millis(500));
    run(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}

/// Whether `/run/netns/<name>` exists.
pub fn exists(name: &str) -> bool {
    PathBuf::from("/run/netns").join(name).exists()
}

/// Names of all namespaces `ip netns list` knows.
pub fn list() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn pids_in(name: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill_all_in(name: &str, grace: Duration) {
    let pids = pids_in(name);
    if pids.is_empty() {
        return;
    }
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        // Zombies (our init does not reap orphans) still show in `ip netns
        // pids` until reaped; only live ones matter.
        if pids_in(name).iter().all(|&p| is_zombie(p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids_in(name) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true, // gone
    }
}

/// Runs a command to completion; non-zero exit is an error with stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
    check(desc, out)
}

pub(crate) fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let desc = describe(cmd);
    check(desc, run_raw(cmd, input)?)
}

/// Runs a command with `input` on stdin and returns its output whatever its
/// exit status (only failing to start it is an error).
pub fn run_raw(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A child that exits without reading its input is not our error.
        let _ = stdin.write_all(input);
    }
    child
        .wait_with_output()
        .map_err(|source| LabError::Spawn { cmd: desc, source })
}

fn check(desc: String, out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            cmd: desc,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
