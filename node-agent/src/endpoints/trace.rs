//! `policy trace --dataplane`, the agent's side (the channel map is in
//! `crate::ctl::dataplane` (margayctl's side)): the controller resolves the pods and walks its
//! ruleset ([`plan`], cheap, on the controller task); the HTTP task then
//! reads the counters, sends one probe from the source pod's network
//! namespace, reads them again and compares ([`run`]). Traces run one at a
//! time, so two of them never count each other's packets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use policy::spec_eval::L4;
use policy::testkit::{Packet, SimVerdict};
use policy::{PodKey, Protocol};

use super::{ControllerHandle, Endpoint};
use crate::endpoints::policy::PolicySync;
use crate::status::tracer::{DataplaneTrace, KernelSide, ModelSide, TracedRule, kernel_verdict};

/// How long a TCP probe waits for an answer (below the first SYN
/// retransmission, 1 s, so a dropped probe is one packet).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Why a trace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A bad query.
    #[error("{0}")]
    Usage(String),
    /// No such pod or address.
    #[error(
        "{what} {name:?}: no such pod (or address of one) in the cluster as this agent sees it"
    )]
    NoPod {
        /// `source` or `destination`.
        what: &'static str,
        /// As given.
        name: String,
    },
    /// The source runs elsewhere: the probe must start on its node.
    #[error(
        "source {pod} is not on this node ({node}){}: run the trace on the source's node",
        on.as_ref().map(|n| format!(", it runs on {n}")).unwrap_or_default()
    )]
    NotLocal {
        /// The pod.
        pod: String,
        /// This node.
        node: String,
        /// Where it runs, if known.
        on: Option<String>,
    },
    /// No pair of addresses of one family.
    #[error("{from} and {to} have no addresses of a common family")]
    NoCommonFamily {
        /// Source.
        from: String,
        /// Destination.
        to: String,
    },
    /// The endpoint record lacks its namespace path.
    #[error(
        "the endpoint record of {0} has no network namespace path (added by an older CNI plugin?)"
    )]
    NoNetns(String),
    /// The probe could not be sent.
    #[error("probe from {pod} ({netns}): {source}")]
    Probe {
        /// Source pod.
        pod: String,
        /// Its namespace path.
        netns: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The counters could not be read.
    #[error("reading the rule counters: {0}")]
    Counters(String),
    /// The controller is gone.
    #[error("dataplane controller stopped")]
    Stopped,
}

impl TraceError {
    /// The HTTP status that carries it.
    pub fn http_status(&self) -> u16 {
        match self {
            TraceError::Usage(_) | TraceError::NoCommonFamily { .. } => 400,
            TraceError::NoPod { .. } => 404,
            TraceError::NotLocal { .. } => 409,
            _ => 500,
        }
    }
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// `namespace/pod` or an address of a pod on this node.
    pub from: String,
    /// `namespace/pod` or an address.
    pub to: String,
    /// Protocol and port (TCP or UDP).
    pub l4: L4,
}

impl TraceRequest {
    /// From the query of `/policy/trace?from=&to=&port=`.
    pub fn from_query(q: &[(String, String)]) -> Result<TraceRequest, TraceError> {
        let get = |k: &str| {
            q.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let from = get("from").ok_or_else(|| TraceError::Usage("from= is missing".into()))?;
        let to = get("to").ok_or_else(|| TraceError::Usage("to= is missing".into()))?;
        let port = get("port").unwrap_or_else(|| "80/TCP".into());
        let l4 = crate::status::tracer::parse_port(&port)
            .map_err(|e| TraceError::Usage(e.to_string()))?;
        if !matches!(l4, L4::Port(Protocol::Tcp | Protocol::Udp, _)) {
            return Err(TraceError::Usage(format!(
                "port {port:?}: the dataplane probe sends TCP or UDP (e.g. 80/TCP, 53/UDP)"
            )));
        }
        Ok(TraceRequest { from, to, l4 })
    }
}

/// The controller's part: who is who, and the model's walk.
#[derive(Debug, Clone)]
pub struct TracePlan {
    node: String,
    from: String,
    from_ip: IpAddr,
    iif: String,
    netns: String,
    to: String,
    to_ip: IpAddr,
    oif: Option<String>,
    l4: L4,
    model: policy::trace::ModelTrace,
}

/// Resolves the request against what the controller knows: the source
/// must be one of this node's endpoints, the destination any pod or
/// address.
pub fn plan(
    policy: &PolicySync,
    endpoints: &BTreeMap<String, Endpoint>,
    req: &TraceRequest,
) -> Result<TracePlan, TraceError> {
    let engine = policy.engine();
    let node = engine.node().node_name.clone();
    let pods = &engine.state().pods;
    let as_ip = |s: &str| s.parse::<IpAddr>().ok();
    let as_pod = |s: &str| {
        s.split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .map(|(a, b)| PodKey::new(a, b))
    };
    let name_of = |ep: &Endpoint| format!("{}/{}", ep.namespace, ep.pod);
    // The source: a local endpoint.
    let src_ep = endpoints.values().find(|ep| match as_ip(&req.from) {
        Some(ip) => ep.ips.contains(&ip),
        None => {
            as_pod(&req.from).is_some_and(|k| *k.namespace == *ep.namespace && *k.name == *ep.pod)
        }
    });
    let Some(src_ep) = src_ep else {
        let known = match as_ip(&req.from) {
            Some(ip) => pods.values().find(|p| p.ips.contains(&ip)),
            None => as_pod(&req.from).and_then(|k| pods.get(&k)),
        };
        return Err(match known {
            Some(p) => TraceError::NotLocal {
                pod: p.key.to_string(),
                node,
                on: p.node_name.as_deref().map(str::to_string),
            },
            None if as_ip(&req.from).is_none() && as_pod(&req.from).is_none() => TraceError::Usage(
                format!("from {:?}: expected namespace/pod or an address", req.from),
            ),
            None => TraceError::NoPod {
                what: "source",
                name: req.from.clone(),
            },
        });
    };
    // The destination: a pod anywhere, or an address.
    let (to, to_ips): (String, Vec<IpAddr>) = match (as_ip(&req.to), as_pod(&req.to)) {
        (Some(ip), _) => {
            let pod = pods.values().find(|p| p.ips.contains(&ip));
            (pod.map_or("-".into(), |p| p.key.to_string()), vec![ip])
        }
        (None, Some(k)) => {
            let local: Vec<IpAddr> = endpoints
                .values()
                .filter(|ep| *ep.namespace == *k.namespace && *ep.pod == *k.name)
                .flat_map(|ep| ep.ips.iter().copied())
                .collect();
            let mut ips = pods.get(&k).map(|p| p.ips.clone()).unwrap_or_default();
            ips.extend(
                local
                    .into_iter()
                    .filter(|i| !ips.contains(i))
                    .collect::<Vec<_>>(),
            );
            if ips.is_empty() {
                return Err(TraceError::NoPod {
                    what: "destination",
                    name: req.to.clone(),
                });
            }
            (k.to_string(), ips)
        }
        (None, None) => {
            return Err(TraceError::Usage(format!(
                "to {:?}: expected namespace/pod or an address",
                req.to
            )));
        }
    };
    // One family: IPv4 first when both have it.
    let mut pairs: Vec<(IpAddr, IpAddr)> = src_ep
        .ips
        .iter()
        .flat_map(|s| {
            to_ips
                .iter()
                .filter(move |d| d.is_ipv4() == s.is_ipv4())
                .map(move |d| (*s, *d))
        })
        .collect();
    pairs.sort_by_key(|(s, _)| !s.is_ipv4());
    if let Some(ip) = as_ip(&req.from) {
        pairs.retain(|(s, _)| *s == ip);
    }
    let Some((from_ip, to_ip)) = pairs.first().copied() else {
        return Err(TraceError::NoCommonFamily {
            from: name_of(src_ep),
            to: req.to.clone(),
        });
    };
    if src_ep.netns.is_empty() {
        return Err(TraceError::NoNetns(name_of(src_ep)));
    }
    let oif = endpoints
        .values()
        .find(|ep| ep.ips.contains(&to_ip))
        .map(|ep| ep.host_if.clone());
    let model = policy::trace::model(
        engine.ruleset(),
        &Packet {
            iif: &src_ep.host_if,
            // Off-node: the uplink, which has no chain of ours.
            oif: oif.as_deref().unwrap_or(""),
            src: from_ip,
            dst: to_ip,
            l4: req.l4,
        },
    );
    Ok(TracePlan {
        node,
        from: name_of(src_ep),
        from_ip,
        iif: src_ep.host_if.clone(),
        netns: src_ep.netns.clone(),
        to,
        to_ip,
        oif,
        l4: req.l4,
        model,
    })
}

impl ControllerHandle {
    /// The controller's [`plan`] for `req`.
    pub async fn trace_plan(&self, req: TraceRequest) -> Result<TracePlan, TraceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(super::Cmd::Trace(req, tx))
            .await
            .map_err(|_| TraceError::Stopped)?;
        rx.await.map_err(|_| TraceError::Stopped)?
    }
}

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probed {
    Connected,
    Refused,
    NoAnswer,
    Sent,
}

impl Probed {
    fn text(self) -> &'static str {
        match self {
            Probed::Connected => "connected",
            Probed::Refused => "refused (a reset: the SYN got through)",
            Probed::NoAnswer => "no answer",
            Probed::Sent => "sent (UDP: nothing comes back)",
        }
    }

    /// Whether the probe certainly crossed the dataplane (None: unknown).
    fn passed(self) -> Option<bool> {
        match self {
            Probed::Connected | Probed::Refused => Some(true),
            Probed::NoAnswer => Some(false),
            Probed::Sent => None,
        }
    }
}

/// One connection attempt (TCP) or datagram (UDP) from inside `netns`, on
/// a thread of its own (setns changes only the calling thread).
fn probe(netns: &str, to: SocketAddr, proto: Protocol) -> std::io::Result<Probed> {
    use std::io::ErrorKind;
    let ns = std::fs::File::open(netns)?;
    let t = std::thread::Builder::new()
        .name("trace-probe".into())
        .spawn(move || -> std::io::Result<Probed> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            match proto {
                Protocol::Udp => {
                    let any: SocketAddr = match to {
                        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                    };
                    let s = std::net::UdpSocket::bind(any)?;
                    s.send_to(b"margay policy trace", to)?;
                    Ok(Probed::Sent)
                }
                _ => match std::net::TcpStream::connect_timeout(&to, PROBE_TIMEOUT) {
                    Ok(_) => Ok(Probed::Connected),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Probed::Refused),
                    Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                        Ok(Probed::NoAnswer)
                    }
                    Err(e) => Err(e),
                },
            }
        })?;
    t.join()
        .map_err(|_| std::io::Error::other("probe thread panicked"))?
}

/// Counted rules now.
async fn counters() -> Result<Vec<policy::counters::RuleCounter>, TraceError> {
    tokio::task::spawn_blocking(|| crate::dataplane::NftCli::new().rule_counters())
        .await
        .map_err(|e| TraceError::Counters(e.to_string()))?
        .map_err(|e| TraceError::Counters(crate::logging::chain(&e)))
}

/// The whole trace: plan, counters, probe, counters, compare.
pub async fn run(ctl: &ControllerHandle, req: TraceRequest) -> Result<DataplaneTrace, TraceError> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE_AT_A_TIME.lock().await;
    let plan = ctl.trace_plan(req).await?;
    let L4::Port(proto, port) = plan.l4 else {
        return Err(TraceError::Usage("the probe sends TCP or UDP".into()));
    };
    let before = counters().await?;
    let (netns, to) = (plan.netns.clone(), SocketAddr::new(plan.to_ip, port));
    let probed = tokio::task::spawn_blocking(move || probe(&netns, to, proto))
        .await
        .map_err(|e| TraceError::Probe {
            pod: plan.from.clone(),
            netns: plan.netns.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| TraceError::Probe {
            pod: plan.from.clone(),
            netns: plan.netns.clone(),
            source,
        })?;
    // A dropped UDP datagram or refused SYN has crossed the rules by now;
    // give a counter a moment anyway (the probe returns on the reply).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let moved = policy::counters::delta(&before, &counters().await?);
    Ok(answer(&plan, probed, &moved))
}

fn answer(
    plan: &TracePlan,
    probed: Probed,
    moved: &[(policy::counters::RuleCounter, u64)],
) -> DataplaneTrace {
    use policy::ruleset::TABLE;
    let agreement = policy::trace::compare(&plan.model, moved, TABLE);
    let model_verdict = match plan.model.verdict {
        SimVerdict::Accept => "allow",
        SimVerdict::Drop => "deny",
    };
    let model_rules: Vec<TracedRule> = plan
        .model
        .hits
        .iter()
        .map(|h| TracedRule::of(TABLE, &h.chain, h.index as u64, &h.origin))
        .collect();
    let kernel_rules: Vec<TracedRule> = moved
        .iter()
        .map(|(c, n)| TracedRule::moved(c, *n))
        .collect();
    let kverdict = kernel_verdict(&kernel_rules, probed.passed());
    let mut differences = Vec::new();
    if kverdict != model_verdict {
        differences.push(format!(
            "verdict: model {model_verdict}, kernel {kverdict} (probe: {})",
            probed.text()
        ));
    }
    for (c, o) in &agreement.model_only {
        differences.push(format!(
            "only the model matched {c}: {o} (its kernel counter did not move)"
        ));
    }
    for (c, o) in &agreement.kernel_only {
        differences.push(format!(
            "only the kernel counted {c}: {o} (other traffic at the same moment, or a stale rule)"
        ));
    }
    for (c, _) in moved.iter().filter(|(c, _)| c.table != TABLE) {
        differences.push(format!(
            "the probe moved {} {}: {} (host protection, not traced by the model)",
            c.table, c.chain, c.origin
        ));
    }
    let mut notes = Vec::new();
    if plan.oif.is_none() {
        notes.push(format!(
            "{} is not on this node: its ingress policy is enforced on its own node; this trace covers {}'s egress",
            plan.to_ip, plan.from
        ));
    }
    if probed == Probed::Sent {
        notes.push("UDP: no reply is expected; the kernel verdict is from the counters".into());
    }
    let proto = match plan.l4 {
        L4::Port(p, n) => format!("{}/{n}", p.nft_name().to_ascii_uppercase()),
        L4::Other(n) => format!("protocol {n}"),
    };
    DataplaneTrace {
        node: plan.node.clone(),
        from: plan.from.clone(),
        from_ip: plan.from_ip,
        from_interface: plan.iif.clone(),
        to: plan.to.clone(),
        to_ip: plan.to_ip,
        to_interface: plan.oif.clone(),
        traffic: proto,
        model: ModelSide {
            verdict: model_verdict.into(),
            rules: model_rules,
        },
        kernel: KernelSide {
            probe: probed.text().into(),
            verdict: kverdict,
            rules: kernel_rules,
        },
        agree: differences.is_empty(),
        differences,
        notes,
    }
}

/// `/policy/trace`'s answer: (HTTP status, the trace or `{"error": ...}`).
pub async fn http_answer(
    ctl: &ControllerHandle,
    q: Vec<(String, String)>,
) -> (u16, serde_json::Value) {
    let res = match TraceRequest::from_query(&q) {
        Ok(req) => run(ctl, req).await,
        Err(e) => Err(e),
    };
    match res.and_then(|t| {
        serde_json::to_value(&t).map_err(|e| TraceError::Usage(format!("encoding the answer: {e}")))
    }) {
        Ok(v) => (200, v),
        Err(e) => {
            tracing::info!(error = %crate::logging::chain(&e), "policy trace refused");
            (
                e.http_status(),
                serde_json::json!({"error": crate::logging::chain(&e)}),
            )
        }
    }
}
