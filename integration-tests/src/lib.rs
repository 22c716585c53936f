//! Margay's lab: network namespaces joined through a top-of-rack namespace,
//! daemons (BIRD, FRR, GoBGP) started inside them, Calico-style pods, probes,
//! and the Kubernetes API test server.

pub mod apiserver;
pub mod bgpload;
pub mod cni;
pub mod cri;
pub mod k8s;
pub mod kubectl;
pub mod kubelet;
pub mod lab;
pub mod pingstream;

/// In a test: returns early, printing `SKIPPED: <why>`, when the lab cannot
/// run here (not root, no iproute2).
#[macro_export]
macro_rules! require_root {
    () => {
        if let Err(why) = $crate::lab::can_run() {
            $crate::lab::skip(&why);
            return;
        }
    };
}
