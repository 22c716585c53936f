//! AdminNetworkPolicy / BaselineAdminNetworkPolicy on real packets: the
//! x/y/z × a/b/c cluster on two lab nodes, each node's rules put into its
//! kernel by the policy engine and the real `nft` executor (no agent: the
//! engine is fed the objects directly, as the agent's watchers will).
//!
//! Each step changes the objects, then
//! * probes hand-picked connections whose verdict is stated here from the
//!   API's ordering (ANP by priority → NetworkPolicy → BANP, `Pass` skips to
//!   NetworkPolicy), so the ordering is proven independently of the oracle;
//! * probes every pod pair (both families, TCP/UDP 80/81) and node → pod
//!   and compares with `policy::spec_eval`.

mod netpol_support;

use integration_tests::lab::Proto;
use netpol_support::PolicyLab;
use node_agent::dataplane::policy::build::admin::*;
use node_agent::dataplane::policy::build::{NetPol, from, pods, sel};

fn ns(v: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    sel(&[("ns", v)])
}

fn pod(v: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    sel(&[("pod", v)])
}

/// (from, to, proto, port, allowed)
type Expect = (
    (&'static str, &'static str),
    (&'static str, &'static str),
    Proto,
    u16,
    bool,
);

struct Run {
    lab: PolicyLab,
    failures: Vec<String>,
}

impl Run {
    fn step(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut PolicyLab) -> Result<(), String>,
        expect: &[Expect],
    ) {
        if let Err(e) = f(&mut self.lab) {
            self.failures.push(format!("[{name}] setup failed: {e}"));
            return;
        }
        let t = std::time::Instant::now();
        let mut bad = 0;
        for (from, to, proto, port, allowed) in expect {
            for m in self.lab.expect(*from, *to, *proto, *port, *allowed) {
                bad += 1;
                self.failures.push(format!("[{name}] stated: {m}"));
            }
        }
        let oracle = self.lab.check();
        println!(
            "{name}: {} stated probes ({bad} wrong), {} oracle probes ({} disagree), {:.1}s",
            expect.len() * 2,
            self.lab.probe_count(),
            oracle.len(),
            t.elapsed().as_secs_f64()
        );
        for m in oracle {
            self.failures.push(format!("[{name}] oracle: {m}"));
        }
    }
}

const T: Proto = Proto::Tcp;
const U: Proto = Proto::Udp;

#[test]
fn anp_allow_deny_pass_ordering_on_real_packets() {
    require_root!();
    let lab = match PolicyLab::new(2) {
        Ok(l) => l,
        Err(e) => panic!("building the policy lab: {e}"),
    };
    let mut r = Run {
        lab,
        failures: Vec::new(),
    };
    r.step(
        "allow pod=b at priority 10 before deny ns=y at 20",
        |l| {
            l.set_admin_policy(
                anp("allow-b", 10)
                    .subject_namespaces(ns("x"))
                    .ingress(allow(vec![a_pods(sel(&[]), pod("b"))]))
                    .build(),
            )?;
            l.set_admin_policy(
                anp("deny-y", 20)
                    .subject_namespaces(ns("x"))
                    .ingress(deny(vec![a_namespaces(ns("y"))]))
                    .build(),
            )
        },
        &[
            (("y", "b"), ("x", "a"), T, 80, true),
            (("y", "c"), ("x", "a"), T, 80, false),
            (("y", "c"), ("x", "a"), U, 81, false),
            (("z", "c"), ("x", "a"), T, 80, true),
        ],
    );
    r.step(
        "deny ns=y moved to priority 5: it now comes first",
        |l| {
            l.set_admin_policy(
                anp("deny-y", 5)
                    .subject_namespaces(ns("x"))
                    .ingress(deny(vec![a_namespaces(ns("y"))]))
                    .build(),
            )
        },
        &[
            (("y", "b"), ("x", "a"), T, 80, false),
            (("z", "b"), ("x", "a"), T, 80, true),
        ],
    );
    r.step(
        "ANP Allow wins over a NetworkPolicy deny-all",
        |l| {
            l.delete_admin_policy("deny-y")?;
            l.set_policy(NetPol::new("x", "deny-all").build())
        },
        &[
            (("z", "b"), ("x", "a"), T, 80, true),
            (("z", "c"), ("x", "a"), T, 80, false),
        ],
    );
    r.step(
        "Pass at priority 1 skips the Allow: the NetworkPolicy decides",
        |l| {
            l.set_admin_policy(
                anp("pass-z", 1)
                    .subject_namespaces(ns("x"))
                    .ingress(pass(vec![a_namespaces(ns("z"))]))
                    .build(),
            )
        },
        &[
            (("z", "b"), ("x", "a"), T, 80, false),
            (("y", "b"), ("x", "a"), T, 80, true),
        ],
    );
    r.step(
        "no NetworkPolicy: Pass falls through to the baseline deny",
        |l| {
            l.delete_policy("x", "deny-all")?;
            l.set_baseline_policy(
                banp()
                    .subject_namespaces(ns("x"))
                    .ingress(deny(vec![a_namespaces(sel(&[]))]))
                    .build(),
            )
        },
        &[
            (("z", "b"), ("x", "a"), T, 80, false),
            (("y", "b"), ("x", "a"), T, 80, true),
            (("x", "b"), ("x", "a"), U, 80, true),
            (("x", "c"), ("x", "a"), T, 81, false),
        ],
    );
    r.step(
        "a NetworkPolicy selecting the pod makes the baseline unreachable",
        |l| {
            l.set_policy(
                NetPol::new("x", "from-c")
                    .ingress(from(vec![pods(pod("c"))]))
                    .build(),
            )
        },
        &[
            (("x", "c"), ("x", "a"), T, 81, true),
            (("z", "b"), ("x", "a"), T, 80, false),
            (("z", "c"), ("x", "a"), T, 80, false),
        ],
    );
    r.step(
        "egress: Deny to y's CIDRs on TCP 80, then Pass; baseline denies egress to z",
        |l| {
            l.set_admin_policy(
                anp("egress", 3)
                    .subject_pods(sel(&[]), pod("a"))
                    .egress(
                        deny(vec![a_networks(&["198.19.2.0/24", "2001:db8::2:0/112"])])
                            .ports(vec![a_port("TCP", 80)]),
                    )
                    .egress(pass(vec![a_namespaces(sel(&[]))]))
                    .build(),
            )?;
            l.set_baseline_policy(
                banp()
                    .subject_namespaces(ns("x"))
                    .ingress(deny(vec![a_namespaces(sel(&[]))]))
                    .egress(deny(vec![a_namespaces(ns("z"))]))
                    .build(),
            )
        },
        &[
            (("x", "a"), ("y", "b"), T, 80, false),
            (("x", "a"), ("y", "b"), T, 81, true),
            (("x", "a"), ("z", "b"), T, 81, false),
            (("y", "a"), ("z", "b"), T, 81, true),
        ],
    );
    r.step(
        "everything deleted: all reachable",
        |l| l.reset(),
        &[
            (("z", "b"), ("x", "a"), T, 80, true),
            (("x", "a"), ("z", "b"), U, 81, true),
        ],
    );
    assert!(
        r.failures.is_empty(),
        "{} probes wrong:\n{}",
        r.failures.len(),
        r.failures
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
