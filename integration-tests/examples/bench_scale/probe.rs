//! What the benchmark reads: a process's memory and CPU time from /proc,
//! the agent's /readyz and /metrics from inside its node, the node's
//! nftables ruleset, and the kernel's nftables notifications (when each pod
//! address showed up in a change of the ruleset).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use integration_tests::lab::Netns;
use serde_json::Value;

/// Memory and CPU of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
    /// User + system CPU, seconds.
    pub cpu: f64,
}

pub fn proc_stats(pid: i32) -> Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name (which may hold spaces): state is 3,
    // utime 14 and stime 15 in proc(5)'s numbering.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let hz = clk_tck();
    Ok(ProcStats {
        rss: kb("VmRSS:"),
        hwm: kb("VmHWM:"),
        cpu: (ticks(11) + ticks(12)) / hz,
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 if unknown.
fn clk_tck() -> f64 {
    let v = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    v as f64
}

/// One HTTP/1.0 GET of `path` on `addr` from inside the current thread's
/// namespace: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from {addr}{path}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_string()))
}

const AGENT: &str = "127.0.0.1:9647";

/// Polls the agent's /readyz from inside `node` every 50 ms until it
/// answers 200 (Ok(elapsed since `since`)), `alive` says the agent is gone,
/// or `timeout` passes (both errors, with the last answer).
pub fn wait_ready(
    node: &Netns,
    since: Instant,
    timeout: Duration,
    mut alive: impl FnMut() -> bool + Send + 'static,
) -> Result<Duration> {
    let addr: SocketAddr = AGENT.parse()?;
    node.enter(move || -> Result<Duration> {
        loop {
            let last = match http_get(addr, "/readyz") {
                Ok((200, _)) => return Ok(since.elapsed()),
                Ok((code, body)) => format!("{code}: {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if !alive() {
                return Err(anyhow!(
                    "the agent exited before it was ready; last /readyz: {last}"
                ));
            }
            if since.elapsed() > timeout {
                return Err(anyhow!(
                    "the agent was not ready within {timeout:?}; last /readyz: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .map_err(|e| anyhow!("entering {}: {e}", node.name()))?
}

/// The agent's /metrics text.
pub fn agent_metrics(node: &Netns) -> Result<String> {
    let addr: SocketAddr = AGENT.parse()?;
    let (code, body) = node
        .enter(move || http_get(addr, "/metrics"))
        .map_err(|e| anyhow!("entering {}: {e}", node.name()))??;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(body)
}

/// The value of the first series of `metrics` whose line starts with `name`.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Series of `metrics` whose name (and labels) start with `prefix`.
pub fn series_count(metrics: &str, prefix: &str) -> usize {
    metrics.lines().filter(|l| l.starts_with(prefix)).count()
}

/// Counts in the node's ruleset.
#[derive(Debug, Clone, Copy, Default)]
pub struct NftCounts {
    pub sets: usize,
    pub maps: usize,
    pub elements: usize,
    pub chains: usize,
    pub rules: usize,
}

pub fn nft_counts(node: &Netns) -> Result<NftCounts> {
    let out = node
        .exec(&["nft", "-j", "list", "ruleset"])
        .map_err(|e| anyhow!("nft list ruleset: {e}"))?;
    let v: Value = serde_json::from_str(&out).context("nft -j output")?;
    let mut c = NftCounts::default();
    for o in v["nftables"].as_array().into_iter().flatten() {
        let elems = |x: &Value| x["elem"].as_array().map_or(0, Vec::len);
        if let Some(s) = o.get("set") {
            c.sets += 1;
            c.elements += elems(s);
        } else if let Some(m) = o.get("map") {
            c.maps += 1;
            c.elements += elems(m);
        } else if o.get("chain").is_some() {
            c.chains += 1;
        } else if o.get("rule").is_some() {
            c.rules += 1;
        }
    }
    Ok(c)
}

/// The kernel's nftables notifications in a node (the multicast group
/// `nft monitor` listens to, read directly: `nft monitor` prints nothing
/// for minutes once the table holds ~200k set elements): when each watched
/// address appeared in a change (the arrival time of the first netlink
/// message carrying its bytes), how many transactions and element messages
/// there were, and how many the socket dropped.
pub struct Monitor {
    seen: Arc<Mutex<HashMap<IpAddr, Vec<Instant>>>>,
    counts: Arc<Mutex<MonitorCounts>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What [`Monitor`] counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonitorCounts {
    /// NFT_MSG_NEWGEN: committed transactions.
    pub transactions: u64,
    /// NEWSETELEM / DELSETELEM messages.
    pub element_msgs: u64,
    /// Times the socket overflowed (ENOBUFS: notifications lost).
    pub overflows: u64,
}

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;

impl Monitor {
    /// Listens in `node` for changes naming any of `ips`.
    pub fn start(node: &Netns, ips: &[IpAddr]) -> Result<Monitor> {
        use nix::sys::socket::{
            AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, setsockopt, socket,
            sockopt,
        };
        // A netlink socket belongs to the namespace it was made in.
        let fd = node
            .enter(|| -> Result<std::os::fd::OwnedFd> {
                let fd = socket(
                    AddressFamily::Netlink,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::NetlinkNetFilter,
                )?;
                bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
                )?;
                setsockopt(&fd, sockopt::RcvBufForce, &(256 << 20))?;
                setsockopt(
                    &fd,
                    sockopt::ReceiveTimeout,
                    &nix::sys::time::TimeVal::new(0, 200_000),
                )?;
                Ok(fd)
            })
            .map_err(|e| anyhow!("entering {}: {e}", node.name()))?
            .context("nftables netlink listener")?;
        let wanted: HashMap<Vec<u8>, IpAddr> = ips
            .iter()
            .map(|ip| {
                let b = match ip {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                (b, *ip)
            })
            .collect();
        let width = ips
            .first()
            .map_or(4, |ip| if ip.is_ipv4() { 4 } else { 16 });
        anyhow::ensure!(
            ips.iter().all(|ip| ip.is_ipv4() == (width == 4)),
            "watched addresses of one family only"
        );
        let seen: Arc<Mutex<HashMap<IpAddr, Vec<Instant>>>> = Arc::default();
        let counts: Arc<Mutex<MonitorCounts>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, c2, stop2) = (seen.clone(), counts.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let n = match nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                ) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::ENOBUFS) => {
                        if let Ok(mut c) = c2.lock() {
                            c.overflows += 1;
                        }
                        continue;
                    }
                    Err(_) => continue, // timeout: look at `stop`
                };
                let at = Instant::now();
                let mut off = 0;
                // Each datagram holds one or more netlink messages.
                while off + 16 <= n {
                    let len =
                        u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                            as usize;
                    if len < 16 || off + len > n {
                        break;
                    }
                    let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                    let msg = &buf[off..off + len];
                    off += len.div_ceil(4) * 4;
                    if ty >> 8 != NFNL_SUBSYS_NFTABLES {
                        continue;
                    }
                    if let Ok(mut c) = c2.lock() {
                        match ty & 0xff {
                            NFT_MSG_NEWGEN => c.transactions += 1,
                            NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => c.element_msgs += 1,
                            _ => {}
                        }
                    }
                    // Attribute payloads are 4-byte aligned: so is every key.
                    let hits: Vec<IpAddr> = (0..msg.len().saturating_sub(width - 1))
                        .step_by(4)
                        .filter_map(|i| wanted.get(&msg[i..i + width]).copied())
                        .collect();
                    if !hits.is_empty()
                        && let Ok(mut m) = s2.lock()
                    {
                        for ip in hits {
                            m.entry(ip).or_default().push(at);
                        }
                    }
                }
            }
        });
        Ok(Monitor {
            seen,
            counts,
            stop,
            reader: Some(reader),
        })
    }

    /// The first time `ip` was seen in `[from, until)`.
    pub fn first_seen(&self, ip: IpAddr, from: Instant, until: Option<Instant>) -> Option<Instant> {
        let m = self.seen.lock().ok()?;
        m.get(&ip)?
            .iter()
            .copied()
            .find(|t| *t >= from && until.is_none_or(|u| *t < u))
    }

    /// What was counted so far.
    pub fn counts(&self) -> MonitorCounts {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `p`-th percentile (0..=100) of `v` (sorted in place).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[idx.min(v.len() - 1)]
}
