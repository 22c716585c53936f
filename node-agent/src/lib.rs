//! The Margay node agent (`margay-node`) and `margayctl`: the adapters
//! around the cores (`bgp`, `ipam`, `policy`) that run on one node.
//!
//! # Map
//!
//! One folder per concern; a folder uses only the folders below it
//! (`tests/layers.rs` checks this):
//!
//! ```text
//!  agent/      wires everything: CLI, the task supervisor, start and stop,
//!              install-cni (the init container), host protection (the
//!              HostEndpoint / HostNetworkPolicy task), the denied-flow log
//!  ctl/        margayctl: renders the agent's /status, reads IPAM and
//!              policy from the API server, asks the agent for a
//!              dataplane trace
//!  ─────────────────────────────────────────────────────────────────────────
//!  cni_api/    the gRPC service the CNI plugin calls: Allocate (with the
//!              early answer), EndpointUp / EndpointDown, the DEL journal
//!  ─────────────────────────────────────────────────────────────────────────
//!  endpoints/  this node's pods: the one owner of their routes, their
//!              nftables policy and their records (the dataplane controller)
//!  routing/    the BGP speaker's glue: peers from the CRDs, what to
//!              originate, best paths into the FIB, session status
//!  overlay/    VXLAN: the plan from pools, Nodes and IPAM blocks, and the
//!              task that brings the kernel, IPAM and the Node to it
//!  ─────────────────────────────────────────────────────────────────────────
//!  k8s/        everything that talks to the API server: CRD types, the
//!              watchers (one reflector per kind), IPAM on CRDs (the CAS
//!              store, the distilled view, pools into the allocator, leak
//!              GC), the Node's identity and annotations, this node's pods
//!              published as compact PodEndpoints
//!  dataplane/  kernel adapters, no Kubernetes: local routes (proto 81),
//!              the BGP FIB (proto 80), nftables (session + nfnetlink fast
//!              path), host veths (one name type), VXLAN devices (proto 82)
//!  ─────────────────────────────────────────────────────────────────────────
//!  status/     liveness, readiness, metrics and the typed /status that the
//!              HTTP endpoint, margayctl and the tests share
//!  logging     log setup and error chains
//! ```
//!
//! # Data flows
//!
//! Watch → model → dataplane:
//!
//! ```text
//!  API server ─watch─► k8s::cluster (Store per kind + generations)
//!                        │
//!  IPAMBlocks ─watch─► k8s::ipam::view (IpamView: affine blocks, local and
//!                        │                 remote allocations, pod IPs)
//!                        ├─► endpoints (desired local routes + policy engine)
//!                        │       └─► dataplane::local_routes, dataplane::nft
//!                        ├─► routing (desired peers and prefixes)
//!                        │       └─► bgp::Speaker ─best paths─► dataplane::fib
//!                        └─► overlay (plan) ─► dataplane::vxlan
//! ```
//!
//! CNI → allocation → endpoint:
//!
//! ```text
//!  margay (CNI ADD) ─Allocate─► cni_api::ipam ─► ipam::Allocator ─CAS─► k8s::ipam::store
//!                                  │ addresses chosen: endpoints Prepare (policy early)
//!                                  └─ early answer; the write confirmed at EndpointUp
//!  margay ─EndpointUp─► cni_api::endpoints ─► endpoints controller
//!                                  └─► /32 route + policy in the kernel, then the answer
//! ```

pub mod agent;
pub mod cni_api;
pub mod ctl;
pub mod dataplane;
pub mod endpoints;
pub mod k8s;
pub mod logging;
pub mod overlay;
pub mod routing;
pub mod status;
