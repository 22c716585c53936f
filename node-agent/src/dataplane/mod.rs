//! Kernel adapters, one per kind of state Margay writes, each tagged so
//! that a restarted agent reconciles only what is its own. No Kubernetes
//! here: callers hand in what they want, the adapters make the kernel so.
//!
//! | module | writes | tag |
//! |---|---|---|
//! | [`local_routes`] | a /32 (/128) per local pod to its veth, a blackhole per local block | route protocol 81 |
//! | [`fib`] | BGP best paths (ECMP) | route protocol 80, metric 1280 |
//! | [`vxlan`] | tunnel devices, FDB and neighbour entries, overlay routes | `*.margay` devices, protocol 82 |
//! | [`nft`] | NetworkPolicy and NAT: `table inet margay` | the table |
//! | [`nflog`] | nothing: reads denied packets (NFLOG) for the flow log | the log group |
//! | [`veth`] | host veth names; re-wiring a pod's missing veth | `cali` prefix, owner alias |

pub mod fib;
pub mod local_routes;
pub mod nflog;
pub mod nft;
pub mod veth;
pub mod vxlan;

pub use nft::{FastSink, NftCli, NftError, NftSession, policy};
