//! The Margay node agent: Kubernetes and kernel adapters around the cores.

pub mod crd;
pub mod dataplane;
pub mod fib;
pub mod health;
pub mod identity;
pub mod metrics;
