//! `margay-bgp --config FILE`: Margay's BGP speaker on its own, installing
//! best paths into the kernel of the network namespace it runs in (route
//! protocol 80, see `node_agent::dataplane::fib`). For interop tests and benchmarks of
//! the speaker before (and beside) the full agent.
//!
//! ```yaml
//! local_as: 65001
//! router_id: 198.18.0.11
//! listen: ["[::]:179"]          # default; dual-stack
//! cluster_id: 198.18.0.11       # optional (route reflector)
//! multipath: 4                  # ECMP paths per prefix (0/1: none)
//! install: true                 # program the kernel FIB (default)
//! originate:
//!   - prefix: 198.19.1.0/26
//!     communities: ["65001:100"]
//! peers:
//!   - name: tor
//!     neighbor: 198.18.0.1      # an address, or a range (dynamic neighbours)
//!     remote_as: 64512          # or "external" / "internal"
//!     hold_time: 30
//!     graceful_restart: { restart_time: 120, stale_time: 360 }
//!     md5_password: secret
//!     max_prefix: 1000
//!     bfd: { min_rx: 100, min_tx: 100, multiplier: 3 }   # milliseconds; multihop: false
//! ```
//! Every `PeerConfig` option has a key of the same name (`connect_retry`
//! and `stale_time` in seconds, `families: [ipv4, ipv6]`).
//!
//! Lifecycle: at start our routes left in the kernel are kept; if graceful
//! restart is on for any peer and such routes exist, we announce the
//! restart (R and F bits) and remove the stale ones only once every peer
//! has sent End-of-RIB (or after the restart time); otherwise they are
//! reconciled at once. On SIGTERM/SIGINT: with graceful restart on, the
//! sessions close without NOTIFICATION and the kernel routes stay (the
//! peers keep forwarding to us while we restart); without it, each peer gets
//! Cease/2 (Administrative Shutdown) and our kernel routes are removed.
//! SIGHUP re-reads the file's `originate` list and originates or withdraws
//! the difference (other changes need a restart).
//! `--status-file` is rewritten as JSON every 50 ms (peers, BFD sessions,
//! counters, RIB and FIB sizes with the times they last changed, and the
//! RIB's first 2000 destinations with their paths and communities).

mod profile;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bgp::bfd::{BfdConfig, SessionStatus};
use bgp::config::{GracefulRestart, Neighbor, PeerBfd, PeerConfig, RemoteAs};
use bgp::driver::{PeerStatus, Speaker, SpeakerConfig};
use bgp::fsm::State;
use bgp::rib::decision::DecisionOptions;
use bgp::wire::{CommunitySet, Families, Family, Prefix};
use clap::Parser;
use node_agent::dataplane::fib::{Fib, FibChange, PendingReconcile};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(name = "margay-bgp", about = "Margay's BGP speaker on its own")]
struct Args {
    /// YAML configuration.
    #[arg(long)]
    config: PathBuf,
    /// Write status JSON here every 50 ms.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Log level or filter.
    #[arg(long, env = "MARGAY_LOG", default_value = "info")]
    log: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    local_as: u32,
    router_id: Ipv4Addr,
    #[serde(default = "default_listen")]
    listen: Vec<SocketAddr>,
    cluster_id: Option<Ipv4Addr>,
    #[serde(default)]
    multipath: usize,
    #[serde(default)]
    always_compare_med: bool,
    #[serde(default = "yes")]
    install: bool,
    #[serde(default)]
    originate: Vec<Originate>,
    #[serde(default)]
    peers: Vec<PeerFile>,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0u16; 8], 179))]
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Originate {
    prefix: String,
    #[serde(default)]
    communities: Vec<Community>,
}

/// Any community text `bgp::wire::Community` parses (`65000:100`,
/// `65000:1:2`, `rt:65000:7`, `no-export`), or a standard one's 32-bit value.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Community {
    Num(u32),
    Text(String),
}

impl Community {
    fn value(&self) -> Result<bgp::wire::Community> {
        match self {
            Community::Num(n) => Ok(bgp::wire::Community::Standard(*n)),
            Community::Text(t) => Ok(t.parse()?),
        }
    }
}

fn community_set(v: &[Community]) -> Result<CommunitySet> {
    v.iter().map(Community::value).collect()
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum RemoteAsFile {
    Asn(u32),
    Kind(String),
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct GrFile {
    #[serde(default = "gr_restart")]
    restart_time: u16,
    #[serde(default = "gr_stale")]
    stale_time: u64,
}

fn gr_restart() -> u16 {
    120
}

fn gr_stale() -> u64 {
    360
}

/// BFD for a peer; intervals in milliseconds.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct BfdFile {
    #[serde(default = "bfd_interval")]
    min_rx: u64,
    #[serde(default = "bfd_interval")]
    min_tx: u64,
    #[serde(default = "bfd_mult")]
    multiplier: u8,
    #[serde(default)]
    multihop: bool,
}

fn bfd_interval() -> u64 {
    300
}

fn bfd_mult() -> u8 {
    3
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    name: String,
    neighbor: String,
    remote_as: RemoteAsFile,
    hold_time: Option<u16>,
    keepalive: Option<u16>,
    connect_retry: Option<f64>,
    passive: Option<bool>,
    families: Option<Vec<String>>,
    graceful_restart: Option<GrFile>,
    max_prefix: Option<u32>,
    #[serde(default)]
    add_path_rx: bool,
    #[serde(default)]
    extended_next_hop: bool,
    #[serde(default)]
    rr_client: bool,
    #[serde(default)]
    next_hop_self: bool,
    #[serde(default)]
    communities: Vec<Community>,
    md5_password: Option<String>,
    ttl_security: Option<u8>,
    source_addr: Option<IpAddr>,
    bfd: Option<BfdFile>,
    port: Option<u16>,
    next_hop_v4: Option<std::net::Ipv4Addr>,
    next_hop_v6: Option<std::net::Ipv6Addr>,
}

fn peer_config(f: &FileConfig, p: &PeerFile, restarting: bool) -> Result<PeerConfig> {
    let neighbor = if p.neighbor.contains('/') {
        Neighbor::Range(
            p.neighbor
                .parse::<Prefix>()
                .with_context(|| format!("peer {}: neighbor range {}", p.name, p.neighbor))?,
        )
    } else {
        Neighbor::Addr(
            p.neighbor
                .parse()
                .with_context(|| format!("peer {}: neighbor {}", p.name, p.neighbor))?,
        )
    };
    let remote_as = match &p.remote_as {
        RemoteAsFile::Asn(a) => RemoteAs::Asn(*a),
        RemoteAsFile::Kind(k) if k == "external" => RemoteAs::External,
        RemoteAsFile::Kind(k) if k == "internal" => RemoteAs::Internal,
        RemoteAsFile::Kind(k) => bail!(
            "peer {}: remote_as {k:?} (a number, external or internal)",
            p.name
        ),
    };
    let mut c = PeerConfig::new(&p.name, f.local_as, f.router_id, neighbor, remote_as);
    if let Some(h) = p.hold_time {
        if h != 0 && h < 3 {
            bail!("peer {}: hold_time must be 0 or at least 3", p.name);
        }
        c.hold_time = h;
    }
    c.keepalive = p.keepalive;
    if let Some(s) = p.connect_retry {
        c.connect_retry = Duration::try_from_secs_f64(s)
            .with_context(|| format!("peer {}: connect_retry", p.name))?;
    }
    if let Some(v) = p.passive {
        c.passive = v;
    }
    if let Some(fams) = &p.families {
        let mut set = Families::NONE;
        for name in fams {
            set.insert(match name.as_str() {
                "ipv4" => Family::Ipv4Unicast,
                "ipv6" => Family::Ipv6Unicast,
                other => bail!("peer {}: family {other:?} (ipv4 or ipv6)", p.name),
            });
        }
        c.families = set;
    }
    if let Some(gr) = &p.graceful_restart {
        if gr.restart_time > 4095 {
            bail!("peer {}: restart_time is at most 4095", p.name);
        }
        c.graceful_restart = Some(GracefulRestart {
            restart_time: gr.restart_time,
            stale_time: Duration::from_secs(gr.stale_time),
            restarting,
        });
    }
    c.max_prefix = p.max_prefix;
    c.add_path_rx = p.add_path_rx;
    c.extended_next_hop = p.extended_next_hop;
    c.rr_client = p.rr_client;
    c.next_hop_self = p.next_hop_self;
    c.communities = community_set(&p.communities)?;
    c.md5_password = p.md5_password.clone();
    c.ttl_security = p.ttl_security;
    c.source_addr = p.source_addr;
    if let Some(b) = &p.bfd {
        if b.min_rx == 0 || b.min_tx == 0 || b.multiplier == 0 {
            bail!(
                "peer {}: bfd intervals and multiplier must be at least 1",
                p.name
            );
        }
        c.bfd = Some(PeerBfd {
            timers: BfdConfig {
                desired_min_tx: Duration::from_millis(b.min_tx),
                required_min_rx: Duration::from_millis(b.min_rx),
                detect_mult: b.multiplier,
            },
            multihop: b.multihop,
        });
    }
    c.next_hop_v4 = p.next_hop_v4;
    c.next_hop_v6 = p.next_hop_v6;
    if let Some(port) = p.port {
        c.port = port;
    }
    Ok(c)
}

/// Converts the speaker's monotonic instants to Unix seconds for the status
/// file, so a test or benchmark can compare them with its own clock.
struct Clock {
    base: Instant,
    unix: f64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }

    fn unix(&self, t: Instant) -> f64 {
        if t >= self.base {
            self.unix + (t - self.base).as_secs_f64()
        } else {
            self.unix - (self.base - t).as_secs_f64()
        }
    }
}

/// What the FIB writer reports. It keeps no copy of the prefixes it
/// installed: the RIB knows them ([`bgp::driver::FibView`]), and asking it
/// once for a reconcile costs less than a second table of every route.
#[derive(Default)]
struct FibState {
    last_change: Option<Instant>,
    errors: u64,
    reconciled: bool,
    stats: node_agent::dataplane::fib::FibStats,
}

fn state_name(s: State) -> String {
    format!("{s:?}")
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

fn bfd_json(clock: &Clock, sessions: &[SessionStatus]) -> Vec<serde_json::Value> {
    sessions
        .iter()
        .map(|s| {
            serde_json::json!({
                "peer": s.key.peer.to_string(),
                "local": s.key.local.map(|a| a.to_string()),
                "multihop": s.key.multihop,
                "state": s.status.state.to_string(),
                "remote_state": s.status.remote_state.to_string(),
                "diag": s.status.diag.to_string(),
                "local_disc": s.status.local_disc,
                "remote_disc": s.status.remote_disc,
                "since": clock.unix(s.status.since),
                "tx_interval_ms": ms(s.status.tx_interval),
                "detect_time_ms": ms(s.status.detect_time),
                "received": s.received,
                "sent": s.sent,
                "dropped": s.dropped,
            })
        })
        .collect()
}

fn status_json(
    clock: &Clock,
    peers: &[PeerStatus],
    bfd: &[SessionStatus],
    fib: &FibState,
    stats: &bgp::driver::SpeakerStats,
) -> serde_json::Value {
    let t = |i: Option<Instant>| i.map(|i| clock.unix(i));
    let peers: Vec<serde_json::Value> = peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "addr": p.addr.map(|a| a.to_string()),
                "state": state_name(p.state),
                "established_at": if p.state == State::Established { t(p.since) } else { None },
                "accepted_v4": p.counters.accepted[0],
                "accepted_v6": p.counters.accepted[1],
                "received": p.counters.received,
                "rejected": p.counters.rejected,
                "sent": p.counters.sent,
                "last_error": p.last_error,
                "last_update": t(p.last_update),
                "end_of_rib": p.end_of_rib.iter().map(|f| match f {
                    Family::Ipv4Unicast => "ipv4",
                    Family::Ipv6Unicast => "ipv6",
                }).collect::<Vec<_>>(),
                "bfd": p.bfd.map(|s| s.to_string()),
            })
        })
        .collect();
    let rib: u64 = peers
        .iter()
        .map(|p| p["accepted_v4"].as_u64().unwrap_or(0) + p["accepted_v6"].as_u64().unwrap_or(0))
        .sum();
    serde_json::json!({
        "pid": std::process::id(),
        "time": clock.unix(Instant::now()),
        "peers": peers,
        "bfd": bfd_json(clock, bfd),
        "rib_paths": rib,
        "fib": {
            "installed": stats.fib_routes,
            "written": fib.stats.routes,
            "last_change": t(fib.last_change),
            "errors": fib.errors,
            "reconciled": fib.reconciled,
        },
    })
}

/// The status file: the small parts as a JSON object, the routes section
/// streamed after them (no second tree of the listed routes).
#[derive(serde::Serialize)]
struct StatusFile<'a> {
    #[serde(flatten)]
    head: &'a serde_json::Value,
    routes: &'a node_agent::status::bgp_routes::RoutesSection,
    profile: &'a serde_json::Value,
}

fn write_status(path: &Path, v: &StatusFile<'_>) {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let ok = std::fs::File::create(&tmp)
        .and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            serde_json::to_writer(&mut w, v)?;
            w.flush()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = ok {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the status file");
    }
}

fn originate_list(cfg: &FileConfig) -> Result<HashMap<Prefix, CommunitySet>> {
    let mut out = HashMap::new();
    for o in &cfg.originate {
        let prefix: Prefix = o
            .prefix
            .parse()
            .with_context(|| format!("originate {}", o.prefix))?;
        out.insert(prefix, community_set(&o.communities)?);
    }
    Ok(out)
}

fn reload_originate(path: &Path) -> Result<HashMap<Prefix, CommunitySet>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: FileConfig =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    originate_list(&cfg)
}

fn lock(s: &Mutex<FibState>) -> std::sync::MutexGuard<'_, FibState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The kernel FIB writer: its own thread and single-threaded runtime, so
/// netlink work (a million routes at start-up) never starves the speaker's
/// session and RIB tasks, which keep reading and deciding meanwhile. It
/// merges queued batches into one before each write, and reconciles (drops
/// our routes nobody wants) when asked.
fn spawn_fib_writer(
    install: bool,
    mut fib_rx: mpsc::Receiver<Vec<FibChange>>,
    mut reconcile_rx: mpsc::UnboundedReceiver<()>,
    rib: bgp::driver::FibView,
    state: Arc<Mutex<FibState>>,
) -> Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("FIB writer runtime")?;
    std::thread::Builder::new()
        .name("fib-writer".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut reconciling: Option<PendingReconcile> = None;
                let fib = if install {
                    match Fib::new() {
                        Ok(f) => Some(f),
                        Err(e) => {
                            tracing::error!(error = %node_agent::logging::chain(&e), "cannot open the kernel FIB");
                            return;
                        }
                    }
                } else {
                    None
                };
                loop {
                    tokio::select! {
                        batch = fib_rx.recv() => {
                            let Some(mut batch) = batch else { return };
                            // Take some of what else is queued: fewer kernel
                            // batches, but never the whole table in one.
                            while batch.len() < 2048 {
                                let Ok(more) = fib_rx.try_recv() else { break };
                                batch.extend(more);
                            }
                            let failed = match &fib {
                                Some(f) => f.apply(&batch).await.err(),
                                None => None,
                            };
                            if let Some(r) = &mut reconciling {
                                r.note(&batch);
                            }
                            let mut st = lock(&state);
                            if let Some(f) = &fib {
                                st.stats = f.stats();
                            }
                            if let Some(e) = failed {
                                st.errors += 1;
                                tracing::warn!(error = %node_agent::logging::chain(&e), "kernel FIB write failed");
                            }
                            st.last_change = Some(Instant::now());
                        }
                        Some(()) = reconcile_rx.recv(), if reconciling.is_none() => {
                            reconciling = Some(PendingReconcile::start(&rib));
                        }
                        wanted = PendingReconcile::answer_of(&mut reconciling) => {
                            let Some(r) = reconciling.take() else { continue };
                            let Some(wanted) = wanted else { return };
                            if let Some(f) = &fib {
                                match r.finish(f, wanted).await {
                                    Ok(n) => tracing::info!(removed = n, "initial tables complete; stale kernel routes removed"),
                                    Err(e) => tracing::warn!(error = %node_agent::logging::chain(&e), "reconcile failed"),
                                }
                            }
                            lock(&state).reconciled = true;
                        }
                    }
                }
            })
        })
        .context("FIB writer thread")
}

/// Every peer with a fixed address is up and has sent End-of-RIB.
fn initial_tables_complete(peers: &[PeerStatus]) -> bool {
    peers
        .iter()
        .filter(|p| p.addr.is_some() && !p.name.contains('/'))
        .all(|p| p.state == State::Established && !p.end_of_rib.is_empty())
}

fn main() -> Result<()> {
    one_malloc_arena();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(run())
}

/// One glibc malloc arena for all threads: a table load allocates on the
/// session and RIB threads and frees on the FIB writer's, and per-thread
/// arenas keep that memory apart (1M routes: 125 MB peak RSS -> 111 MB, no
/// measurable CPU cost). Must run before any thread starts.
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run() -> Result<()> {
    let args = Args::parse();
    node_agent::logging::init(&args.log, node_agent::logging::LogFormat::Text);
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let cfg: FileConfig = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("parsing {}", args.config.display()))?;
    let clock = Clock::new();

    let fib = if cfg.install {
        Some(Fib::new().context("opening the kernel FIB")?)
    } else {
        None
    };
    let left: Vec<Prefix> = match &fib {
        Some(f) => f.ours().await.context("listing our kernel routes")?,
        None => Vec::new(),
    };
    let gr_time = cfg
        .peers
        .iter()
        .filter_map(|p| p.graceful_restart.as_ref().map(|g| g.restart_time))
        .max();
    let restarting = gr_time.is_some() && !left.is_empty();
    let mut state = FibState::default();
    // `fib` serves start-up and shutdown; the FIB writer thread opens its own.
    if let Some(f) = &fib {
        if restarting {
            tracing::info!(
                routes = left.len(),
                "restarting with forwarding state preserved; stale routes kept until End-of-RIB"
            );
        } else {
            let n = f
                .reconcile(&HashSet::new())
                .await
                .context("removing stale routes")?;
            tracing::info!(removed = n, "kernel FIB reconciled");
            state.reconciled = true;
        }
    }
    let reconcile_deadline = Instant::now() + Duration::from_secs(u64::from(gr_time.unwrap_or(0)));

    let (speaker, fib_rx) = Speaker::start(SpeakerConfig {
        local_as: cfg.local_as,
        router_id: cfg.router_id,
        listen: cfg.listen.clone(),
        cluster_id: cfg.cluster_id,
        decision: DecisionOptions {
            always_compare_med: cfg.always_compare_med,
            multipath: cfg.multipath,
        },
    })
    .await
    .context("starting the speaker")?;
    // The writer drains the RIB's changes before any peer is added: with
    // thousands of peers, the first sessions are up and their routes
    // decided while the last are still being added, and a RIB waiting for
    // an absent writer would never answer the next add_peer.
    let state = Arc::new(Mutex::new(state));
    let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel();
    let writer = spawn_fib_writer(
        cfg.install,
        fib_rx,
        reconcile_rx,
        speaker.fib_view(),
        state.clone(),
    )?;
    for p in &cfg.peers {
        let pc = peer_config(&cfg, p, restarting)?;
        speaker
            .add_peer(pc)
            .await
            .with_context(|| format!("adding peer {}", p.name))?;
    }
    let mut originated = originate_list(&cfg)?;
    for (prefix, comms) in &originated {
        speaker.originate(*prefix, comms.clone()).await?;
    }
    tracing::info!(asn = cfg.local_as, router_id = %cfg.router_id, peers = cfg.peers.len(), "margay-bgp running");

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_states: HashMap<String, State> = HashMap::new();
    let mut reconcile_asked = lock(&state).reconciled;
    // The routes section is refreshed when the RIB changed and is quiet
    // (unchanged since the last tick), or at most every second while it
    // is busy (a table load: no listing of 2000 routes every 50 ms); the
    // RIB's memory and the heap are walked only when it is quiet.
    let mut routes = node_agent::status::bgp_routes::RoutesSection::default();
    let mut routes_generation = None;
    let mut routes_at = Instant::now();
    let mut last_generation = None;
    let mut memory: Option<(u64, bgp::rib::memory::RibMemory, profile::Heap)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let peers = speaker.status().await?;
                for p in &peers {
                    let prev = last_states.insert(p.name.clone(), p.state);
                    if prev != Some(p.state) && p.state == State::Established {
                        tracing::info!(peer = %p.name, "peer established");
                    }
                }
                if !reconcile_asked && (initial_tables_complete(&peers) || Instant::now() >= reconcile_deadline) {
                    reconcile_asked = true;
                    let _ = reconcile_tx.send(());
                }
                if let Some(path) = &args.status_file {
                    let bfd = speaker.bfd_sessions().await?;
                    let stats = speaker.stats();
                    let quiet = last_generation.replace(stats.generation) == Some(stats.generation);
                    if routes_generation != Some(stats.generation) && (quiet || routes_at.elapsed() >= Duration::from_secs(1)) {
                        if let Some(r) = speaker.routes(node_agent::status::bgp_routes::LIMIT, routes_generation).await? {
                            routes_generation = Some(r.generation);
                            routes = node_agent::status::bgp_routes::section(&r);
                        }
                        routes_at = Instant::now();
                    }
                    if quiet && memory.as_ref().is_none_or(|m| m.0 != stats.generation) {
                        memory = Some((stats.generation, speaker.rib_memory().await?, profile::heap()));
                    }
                    let st = lock(&state);
                    let profile = profile::json(&stats, &st.stats, memory.as_ref().map(|m| (&m.1, m.2)));
                    let head = status_json(&clock, &peers, &bfd, &st, &stats);
                    drop(st);
                    write_status(path, &StatusFile { head: &head, routes: &routes, profile: &profile });
                }
                if writer.is_finished() {
                    bail!("the FIB writer stopped");
                }
            }
            _ = hup.recv() => {
                match reload_originate(&args.config) {
                    Ok(new) => {
                        for p in originated.keys().filter(|p| !new.contains_key(p)) {
                            tracing::info!(prefix = %p, "withdrawing");
                            speaker.withdraw(*p).await?;
                        }
                        for (p, c) in &new {
                            if originated.get(p) != Some(c) {
                                tracing::info!(prefix = %p, "originating");
                                speaker.originate(*p, c.clone()).await?;
                            }
                        }
                        originated = new;
                    }
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "reload failed; keeping the old list"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    if gr_time.is_some() {
        tracing::info!(
            "stopping as a graceful restart: sessions closed without NOTIFICATION, kernel routes kept"
        );
        drop(speaker);
        let _ = writer.join();
    } else {
        tracing::info!("stopping: Cease to every peer, removing our kernel routes");
        speaker.shutdown(Duration::from_secs(1)).await?;
        drop(speaker);
        let _ = writer.join();
        if let Some(f) = &fib {
            let n = f
                .reconcile(&HashSet::new())
                .await
                .context("removing our routes")?;
            tracing::info!(removed = n, "kernel routes removed");
        }
    }
    Ok(())
}
