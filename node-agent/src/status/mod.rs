//! What the agent says about itself: liveness and readiness ([`health`]),
//! Prometheus metrics ([`metrics`]) and the typed sections of `/status`
//! that margayctl renders ([`bgp_routes`]). The bottom layer: it uses no
//! other folder of the agent.

pub mod bgp_routes;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
