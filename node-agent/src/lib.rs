//! The Margay node agent: Kubernetes and kernel adapters around the cores.

pub mod agent;
pub mod attachments;
pub mod bgp_routes;
pub mod cluster;
pub mod config;
pub mod confirm;
pub mod controller;
pub mod crd;
pub mod ctl;
pub mod dataplane;
pub mod endpoints;
pub mod fib;
pub mod health;
pub mod identity;
pub mod install_cni;
pub mod ipam_ops;
pub mod ipam_store;
pub mod ipamview;
pub mod journal_replay;
pub mod localroutes;
pub mod logging;
pub mod metrics;
pub mod overlay;
pub mod policyctl;
pub mod routing;
pub mod routing_task;
