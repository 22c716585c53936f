//! Margay's lab: network namespaces joined through a top-of-rack namespace,
//! daemons (BIRD, FRR, GoBGP) started inside them, Calico-style pods, probes,
//! and the Kubernetes API test server.

pub mod apiserver;
pub mod cni;
pub mod k8s;
pub mod lab;
