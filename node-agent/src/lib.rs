//! The Margay node agent: Kubernetes and kernel adapters around the cores.

pub mod dataplane;
pub mod fib;
