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
//!    │                        ├─ no addresses asked for: a reserve unit (see
//!    │                        │  below), answered at once with no write
//!    │                        ├─ else ipam::Allocator: choose addresses, then the
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
//!
//! # The reserve
//!
//! With `--ipam-reserve N` (env `MARGAY_IPAM_RESERVE`, default 4, 0 = off)
//! the agent keeps N units (one address per family each) allocated in its
//! blocks under handles `margay-reserve.<node>.<id>` ([`ipam::reserve`]).
//! An Allocate that asks for no specific address, on this node, with
//! families and pool hints a unit fits, takes a unit: the addresses are
//! already durably allocated, so the answer needs no write and EndpointUp
//! waits for none. The unit's handle is moved to the pod's in the
//! background (one CAS per block for every move pending); below half of
//! N, the reserve is refilled in one write per block. Release (DEL, the
//! journal replay, superseded sandboxes) goes through the reserve, which
//! frees the unit a pod took if its move has not happened. EndpointUp,
//! with the reserve on, also checks that the pod's addresses are its own
//! (its unit, or its handle in the allocator's cache): an agent restarted
//! between an Allocate from a unit and its EndpointUp has no record of
//! the take and fails the EndpointUp, so the plugin rolls back. At start,
//! units whose addresses an endpoint record holds are moved to that
//! endpoint's handle; the others serve again.

pub mod confirm;
pub mod endpoints;
pub mod ipam;
pub mod journal_replay;
