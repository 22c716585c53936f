//! Margay's BGP-4 speaker: wire codec ([`wire`]), sans-IO session state
//! machine ([`fsm`]), RIB ([`rib`]) and a tokio driver ([`driver`]); BFD
//! for its peers ([`bfd`], RFC 5880/5881/5883). Pure
//! logic: no netlink, kube or nft here — the agent (or the standalone
//! `margay-bgp` binary in `node-agent`) turns the driver's stream of
//! [`rib::FibChange`] batches into kernel routes (`node_agent::dataplane::fib`).
//!
//! Tests: unit/property/vector tests here; interop with BIRD 2, FRR 8.4 and
//! GoBGP 3.10, hostile peers and the kernel FIB in
//! `integration-tests/tests/bgp_*.rs` and `bfd_interop.rs` (lab namespaces,
//! root). Every decoder
//! has a cargo-fuzz target in `bgp/fuzz` (`bgp/fuzz/run.sh SECONDS`). Load
//! benchmark against BIRD: `integration-tests/examples/bench_bgp.rs`.

pub mod bfd;
pub mod config;
pub mod driver;
pub mod fsm;
pub mod rib;
pub mod wire;
