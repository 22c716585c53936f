//! Per-rule counters and `policy trace` on real packets: the x/y/z × a/b/c
//! pods on one lab node, the policy engine applying its batches with the
//! real `nft`. For each probe (one new TCP connection attempt):
//! * the kernel counters that moved (`nft -j list table inet margay` before
//!   and after, `policy::counters::delta`) are exactly the one rule that
//!   decided — the NetworkPolicy default deny, a NetworkPolicy allow rule,
//!   an ANP deny rule;
//! * the model's trace of the same packet (`policy::trace::model`) names
//!   the same chain and rule, so model and kernel agree;
//! * with logging on, the denied packet arrives over NFLOG as a JSON record
//!   with the rule and both pods.

mod netpol_support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use integration_tests::lab::{self, Netns, Proto, host_ifname};
use netpol_support::PolicyLab;
use node_agent::dataplane::NftCli;
use node_agent::dataplane::nflog::NflogSocket;
use node_agent::dataplane::policy::build::admin::{a_namespaces, anp, deny};
use node_agent::dataplane::policy::build::{NetPol, from, pods, sel};
use node_agent::dataplane::policy::counters::{self, RuleCounter};
use node_agent::dataplane::policy::flowlog::{DeniedFlow, DenyLog};
use node_agent::dataplane::policy::origin::{RuleAction, RuleOrigin, Tier, fixed};
use node_agent::dataplane::policy::ruleset::TABLE;
use node_agent::dataplane::policy::spec_eval::L4;
use node_agent::dataplane::policy::testkit::{Packet, SimVerdict};
use node_agent::dataplane::policy::{Direction, Engine, PodKey, Protocol, trace};
use node_agent::status::metrics::Metrics;

fn listing(lab: &PolicyLab) -> Vec<RuleCounter> {
    let ns = lab.node_ns.values().next().expect("one node");
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "table", "inet", TABLE,
        ])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    counters::parse_listing(&v).expect("parse listing")
}

/// Probes `from` → `to` TCP 80 over IPv4 once; returns (reached, moved
/// counters, model/kernel agreement).
fn traced_probe(
    lab: &PolicyLab,
    from: (&str, &str),
    to: (&str, &str),
) -> (
    bool,
    Vec<(RuleCounter, u64)>,
    trace::Agreement,
    trace::ModelTrace,
) {
    let f = &lab.pods[&PodKey::new(from.0, from.1)];
    let t = &lab.pods[&PodKey::new(to.0, to.1)];
    let (src, dst) = (
        IpAddr::V4(f.ipv4.expect("v4")),
        IpAddr::V4(t.ipv4.expect("v4")),
    );
    let before = listing(lab);
    let o = lab::probe(
        &f.ns,
        SocketAddr::new(dst, 80),
        Proto::Tcp,
        Duration::from_millis(600),
    );
    let moved = counters::delta(&before, &listing(lab));
    let (iif, oif) = (host_ifname(from.0, from.1), host_ifname(to.0, to.1));
    let model = trace::model(
        lab.engines[0].0.ruleset(),
        &Packet {
            iif: &iif,
            oif: &oif,
            src,
            dst,
            l4: L4::Port(Protocol::Tcp, 80),
        },
    );
    let agreement = trace::compare(&model, &moved, TABLE);
    (o.reached(), moved, agreement, model)
}

fn only(moved: &[(RuleCounter, u64)]) -> Option<&RuleOrigin> {
    match moved {
        [(c, _)] => Some(&c.origin),
        _ => None,
    }
}

#[test]
fn each_probe_moves_exactly_the_deciding_rule_and_model_agrees() {
    require_root!();
    let mut lab = PolicyLab::new(1).expect("policy lab");
    lab.set_policy(
        NetPol::new("x", "from-b")
            .ingress(from(vec![pods(sel(&[("pod", "b")]))]))
            .build(),
    )
    .expect("policy");
    let mut failures = Vec::new();
    let mut check = |name: &str,
                     from: (&str, &str),
                     to: (&str, &str),
                     want_reached: bool,
                     want: RuleOrigin,
                     lab: &PolicyLab| {
        let (reached, moved, agreement, model) = traced_probe(lab, from, to);
        let shown: Vec<String> = moved
            .iter()
            .map(|(c, n)| format!("{} {}: +{n}", c.chain, c.origin))
            .collect();
        println!("{name}: reached={reached} kernel={shown:?} {agreement}");
        if reached != want_reached {
            failures.push(format!(
                "[{name}] reached={reached}, expected {want_reached}"
            ));
        }
        if only(&moved) != Some(&want) {
            failures.push(format!("[{name}] moved {shown:?}, expected only {want}"));
        }
        if !agreement.agree() {
            failures.push(format!("[{name}] {agreement}"));
        }
        let model_ok = (model.verdict == SimVerdict::Accept) == want_reached;
        if !model_ok {
            failures.push(format!("[{name}] model verdict {:?}", model.verdict));
        }
    };
    let deny_default = RuleOrigin::fixed(fixed::DEFAULT, Direction::Ingress, RuleAction::Deny);
    check(
        "z/c -> x/a: default deny",
        ("z", "c"),
        ("x", "a"),
        false,
        deny_default.clone(),
        &lab,
    );
    let allow_b = RuleOrigin::new(
        Tier::NetworkPolicy,
        "x/from-b",
        Direction::Ingress,
        Some(0),
        RuleAction::Allow,
    );
    check(
        "x/b -> x/a: allowed by rule 0",
        ("x", "b"),
        ("x", "a"),
        true,
        allow_b,
        &lab,
    );
    lab.set_admin_policy(
        anp("deny-y", 5)
            .subject_namespaces(sel(&[("ns", "x")]))
            .ingress(deny(vec![a_namespaces(sel(&[("ns", "z")]))]))
            .ingress(deny(vec![a_namespaces(sel(&[("ns", "y")]))]))
            .build(),
    )
    .expect("anp");
    let anp_deny = RuleOrigin::new(
        Tier::Admin,
        "deny-y",
        Direction::Ingress,
        Some(1),
        RuleAction::Deny,
    );
    check(
        "y/b -> x/a: ANP rule 1 denies",
        ("y", "b"),
        ("x", "a"),
        false,
        anp_deny,
        &lab,
    );
    // Counters sum per origin for the metrics: the default deny counted.
    let t = counters::totals(&listing(&lab));
    if t.get(&deny_default).is_none_or(|x| x.packets == 0) {
        failures.push(format!("default deny total is zero: {t:?}"));
    }
    // The agent's /metrics hook (NftCli in the node's namespace) and
    // `margayctl policy show` run there.
    let ns = lab.node_ns.values().next().expect("node").clone();
    let cli = NftCli::with_program("ip", ["netns", "exec", ns.as_str(), "nft"]);
    let m = Metrics::new();
    m.set_extra(Box::new(move || {
        let c = cli.rule_counters().expect("rule counters");
        counters::openmetrics(&counters::totals(&c))
    }));
    let text = m.encode();
    let want = r#"margay_policy_rule_packets_total{policy="anp:deny-y",rule="1",direction="ingress",action="deny"} 1"#;
    if !text.contains(want) {
        failures.push(format!("/metrics lacks {want}:\n{text}"));
    }
    match lab::workspace_bin("margayctl") {
        Ok(bin) => {
            let out = Command::new("ip")
                .args(["netns", "exec", ns.as_str()])
                .arg(&bin)
                .args(["policy", "show"])
                .output()
                .expect("run margayctl");
            let show = String::from_utf8_lossy(&out.stdout);
            println!("{show}");
            let line = show.lines().find(|l| l.starts_with("np:x/from-b "));
            if !out.status.success() || line.is_none_or(|l| !l.contains(" allow ")) {
                failures.push(format!(
                    "margayctl policy show: {show} {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Err(e) => println!("SKIPPED: margayctl policy show ({e})"),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// With denied-flow logging on, a denied connection attempt arrives over
/// NFLOG as a JSON record naming the rule, the direction and both pods;
/// an allowed one logs nothing; the drop's counter moved as before.
#[test]
fn denied_flows_are_logged_over_nflog_with_rule_and_pods() {
    require_root!();
    let mut lab = PolicyLab::new(1).expect("policy lab");
    lab.set_policy(
        NetPol::new("x", "from-b")
            .ingress(from(vec![pods(sel(&[("pod", "b")]))]))
            .build(),
    )
    .expect("policy");
    let log = DenyLog {
        group: 7,
        rate_per_second: 100,
        burst: 100,
    };
    let mut ctx = lab.engines[0].0.node().clone();
    ctx.deny_log = Some(log);
    let mut e = Engine::new(ctx);
    e.load(lab.xyz.state.clone());
    e.commit(&mut lab.engines[0].1)
        .expect("commit with logging");
    lab.engines[0].0 = e;
    let ns = lab.node_ns.values().next().expect("node").clone();
    let mut sock = Netns::existing(&ns)
        .enter(move || NflogSocket::bind(log.group))
        .expect("enter node")
        .expect("NFLOG bind (nfnetlink_log)");
    sock.set_timeout(Duration::from_millis(200))
        .expect("timeout");
    let read = |sock: &mut NflogSocket| -> Vec<DeniedFlow> {
        let mut out = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            for p in sock.recv().expect("recv") {
                out.push(DeniedFlow::of(&p, &lab.xyz.state).expect("decode"));
            }
            if !out.is_empty() {
                break;
            }
        }
        out
    };
    let (reached, moved, agreement, _) = traced_probe(&lab, ("z", "c"), ("x", "a"));
    assert!(!reached, "z/c -> x/a must be denied");
    assert!(agreement.agree(), "{agreement}");
    let recs = read(&mut sock);
    for r in &recs {
        println!("{}", r.json_line());
    }
    let deny_default = RuleOrigin::fixed(fixed::DEFAULT, Direction::Ingress, RuleAction::Deny);
    assert_eq!(only(&moved), Some(&deny_default), "{moved:?}");
    let r = recs.first().expect("a log record for the denied SYN");
    assert_eq!(
        (r.policy.as_str(), r.direction.as_str(), r.action.as_str()),
        ("fixed:default", "ingress", "deny")
    );
    assert_eq!(r.src_pod.as_deref(), Some("z/c"));
    assert_eq!(r.dst_pod.as_deref(), Some("x/a"));
    assert_eq!((r.proto.as_str(), r.dport), ("tcp", Some(80)));
    // An allowed connection logs nothing.
    let (reached, _, _, _) = traced_probe(&lab, ("x", "b"), ("x", "a"));
    assert!(reached, "x/b -> x/a is allowed");
    let recs = read(&mut sock);
    assert!(recs.is_empty(), "allowed flow logged: {recs:?}");
}
