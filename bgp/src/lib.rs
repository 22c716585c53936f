//! Margay's BGP-4 speaker: wire codec ([`wire`]), sans-IO session state
//! machine, RIB and a tokio driver. Pure logic: no netlink, kube or nft here.

pub mod config;
pub mod driver;
pub mod fsm;
pub mod rib;
pub mod wire;
