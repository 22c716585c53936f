//! What the agent says about itself: liveness and readiness ([`health`]),
//! Prometheus metrics ([`metrics`]) and the typed sections of `/status`
//! that margayctl renders ([`bgp_routes`]); the `/policy/trace` hook
//! ([`tracer`], filled in by the dataplane controller's side). The bottom layer: it uses no
//! other folder of the agent.

pub mod bgp_routes;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
pub mod tracer;
