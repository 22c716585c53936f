//! The policy sink's element fast path (not a test; needs root): how long
//! `FastSink::apply` takes for element-only batches of the shape the policy
//! engine emits (typed `nftables` schema items: one IPv4 set, one
//! `ifname . ipv4_addr` set), against the same batches through the
//! persistent `nft -j -i` session alone, in a fresh network namespace.
//!
//! `cargo run --release -p integration-tests --example bench_nfnl [-- ROUNDS ELEMS]`
//! (default 200 rounds of 500 elements per set; each round adds them, then
//! deletes them: two batches).

use std::borrow::Cow;
use std::time::Instant;

use anyhow::{Result, anyhow};
use integration_tests::lab::Netns;
use node_agent::dataplane::policy::nftables::expr::{Expression, NamedExpression};
use node_agent::dataplane::policy::nftables::schema::{
    Element, NfListObject, Set, SetType, SetTypeValue, Table,
};
use node_agent::dataplane::policy::nftables::types::NfFamily;
use node_agent::dataplane::policy::{Batch, NftSink};
use node_agent::dataplane::{FastSink, NftSession};

const TABLE: &str = "margaybench";

fn declarations() -> Batch {
    let mut b = Batch::new();
    b.add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }));
    for (name, ty) in [
        ("a4", SetTypeValue::Single(SetType::Ipv4Addr)),
        (
            "sp4",
            SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ifname, SetType::Ipv4Addr])),
        ),
    ] {
        b.add(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            set_type: ty,
            ..Set::default()
        })));
    }
    b
}

fn elements(n: usize, add: bool) -> Batch {
    let ip = |i: usize| format!("198.19.{}.{}", i / 250, 1 + i % 250);
    let mut b = Batch::new();
    let a4: Vec<Expression<'static>> = (0..n).map(|i| Expression::String(ip(i).into())).collect();
    let sp4: Vec<Expression<'static>> = (0..n)
        .map(|i| {
            Expression::Named(NamedExpression::Concat(vec![
                Expression::String(format!("cali{i:011x}").into()),
                Expression::String(ip(i).into()),
            ]))
        })
        .collect();
    for (name, elem) in [("a4", a4), ("sp4", sp4)] {
        let e = NfListObject::Element(Element {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            elem: Cow::Owned(elem),
        });
        if add { b.add(e) } else { b.delete(e) }
    }
    b
}

/// Median and 99th percentile, in ms.
fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn run<S: NftSink>(sink: &mut S, rounds: usize, n: usize) -> Result<Vec<f64>>
where
    S::Error: std::fmt::Display,
{
    sink.apply(&declarations())
        .map_err(|e| anyhow!("declare: {e}"))?;
    let (add, del) = (elements(n, true), elements(n, false));
    let mut times = Vec::with_capacity(2 * rounds);
    for _ in 0..rounds {
        for b in [&add, &del] {
            let t = Instant::now();
            sink.apply(b).map_err(|e| anyhow!("apply: {e}"))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let n: usize = args.next().map_or(Ok(500), |a| a.parse())?;
    let ns = Netns::create(&format!("mgbnfnl{}", std::process::id()))?;
    let (fast, native, via_nft) = ns.enter(move || -> Result<_> {
        let mut sink = FastSink::new(NftSession::new());
        let t = run(&mut sink, rounds, n)?;
        Ok((t, sink.native, sink.via_nft))
    })??;
    let session = ns.enter(move || -> Result<_> {
        let mut s = NftSession::new();
        s.apply(&{
            let mut b = Batch::new();
            b.delete(NfListObject::Table(Table {
                family: NfFamily::INet,
                name: TABLE.into(),
                handle: None,
            }));
            b
        })
        .map_err(|e| anyhow!("{e}"))?;
        run(&mut s, rounds, n)
    })??;
    let (f50, f99) = p50_p99(fast);
    let (s50, s99) = p50_p99(session);
    println!(
        "element batches of 2 x {n} elements, {rounds} rounds of add + delete ({native} native, {via_nft} via nft)"
    );
    println!(
        "  fast sink / nft session: p50 {:.2}x ({f50:.3} ms vs {s50:.3} ms), p99 {:.2}x ({f99:.3} ms vs {s99:.3} ms)",
        f50 / s50,
        f99 / s99
    );
    Ok(())
}
