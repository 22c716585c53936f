//! Prints the nftables JSON for the conformance cluster (`x/y/z × a/b/c`, one
//! node) with a few policies, e.g. to load it into a scratch netns:
//! `cargo run -p policy --example render_xyz | ip netns exec T nft -j -f -`.
//! With `diff` as argument, prints the diff after a label change instead.

use policy::build::*;
use policy::{Ruleset, nft, plan, testkit::Xyz};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut xyz = Xyz::new(1, true);
    xyz.state.add_policy(
        NetPol::new("x", "p1")
            .select(sel(&[("pod", "a")]))
            .ingress(
                from(vec![
                    pods(sel(&[("pod", "b")])),
                    block("198.19.0.0/16", &["198.19.2.0/24"]),
                    block("2001:db8::/64", &["2001:db8::2:0/112"]),
                ])
                .ports(vec![
                    tcp(80),
                    range("UDP", 80, 81),
                    named("SCTP", "serve-80-sctp"),
                ]),
            )
            .build(),
    )?;
    xyz.state.add_policy(
        NetPol::new("y", "p2")
            .types(&["Egress"])
            .egress(
                to(vec![namespaces(sel(&[("ns", "x")]))]).ports(vec![named("TCP", "serve-80-tcp")]),
            )
            .build(),
    )?;
    let node = xyz.nodes[0].clone();
    let old = Ruleset::build(&plan::build(&xyz.state, &node), &xyz.state);
    if std::env::args().nth(1).as_deref() == Some("diff") {
        if let Some(p) = xyz.pod_mut("x", "c") {
            p.labels = p.labels.with("pod", "b");
        }
        let new = Ruleset::build(&plan::build(&xyz.state, &node), &xyz.state);
        let (batch, stats) = nft::diff(&old, &new).ok_or("needs a full rebuild")?;
        eprintln!("{stats:?}");
        println!("{}", nft::to_json(&batch)?);
    } else {
        println!("{}", nft::to_json(&nft::full(&old))?);
    }
    Ok(())
}
