//! The gRPC service the CNI plugin (`margay`) calls on the agent's Unix
//! socket: `Ipam` ([`ipam`]) and `Endpoints` ([`endpoints`]), and the
//! replay of the DELs that ran while the agent was away
//! ([`journal_replay`]).
//!
//! # A pod's ADD, top to bottom
//!
//! ```text
//!  margay ADD ──Allocate──► ipam::AgentIpam::allocate
//!    │                        ├─ addresses the Pod asks for (margay.dev/ip-addrs)
//!    │                        ├─ ipam::Allocator: choose addresses, then the
//!    │                        │  block write (a CAS on the IPAMBlock, ~1 ms)
//!    │                        ├─ as soon as they are chosen: the endpoint's policy is
//!    │                        │  prepared (endpoints::Cmd::Prepare), beside the write
//!    │                        └─ answer: addresses + the pods' MTU
//!    ├─ wires the pod (veth, addresses, routes in the pod)
//!    └──EndpointUp──► endpoints::EndpointsService::endpoint_up
//!                             ├─ confirm::Confirmations: the write recorded exactly
//!                             │  these addresses (only after an early answer)
//!                             └─ the endpoints controller: /32 route + policy in the
//!                                kernel (policy usually already there), then the answer
//! ```
//!
//! # The early answer
//!
//! A plugin that sets `confirm_at_endpoint_up` gets its Allocate answer as
//! soon as the allocator has chosen the addresses, while the block write
//! that records them is still in flight: the plugin wires the pod
//! meanwhile, so the write's latency is off the ADD's critical path. The
//! allocation keeps running as its own task (an early answer must not cut
//! it short) and hands its outcome to [`confirm::Confirmations`]. The
//! EndpointUp for that handle waits there for the outcome and fails
//! (ABORTED: the plugin rolls back, the runtime retries) if the write
//! failed or recorded other addresses. So ADD never returns an address
//! that is not durably recorded — only the plugin's own wiring runs ahead
//! of the write. Without the flag, Allocate answers after the write and
//! EndpointUp confirms nothing.

pub mod confirm;
pub mod endpoints;
pub mod ipam;
pub mod journal_replay;
