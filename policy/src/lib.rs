//! Kubernetes NetworkPolicy, AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy for Margay, compiled to one nftables table.
//!
//! Pure: no Kubernetes client, no `nft` process. The pipeline is
//!
//! ```text
//! ClusterState + NodeContext ──plan::build──► Plan (per endpoint, per direction)
//!        │                                      │
//!        └────────────── Ruleset::build ◄───────┘   sets + chains + verdict maps
//!                            │                         (layout: see [`ruleset`])
//!            nft::full / nft::diff ──► Batch (nftables crate JSON) ──► NftSink
//! ```
//!
//! [`engine::Engine`] keeps that pipeline's state between updates and turns
//! watch events into the minimal batch per commit (the agent's entry point):
//!
//! ```text
//! let mut e = Engine::new(node_context);            // node name, addresses, cali prefix
//! e.load(cluster_state);                            // or upsert_* one object at a time
//! e.upsert_endpoint(LocalEndpoint { pod, iface, ips, standalone }); // CNI EndpointUp
//! e.commit(&mut sink)?;                             // first commit: atomic full rebuild
//! e.upsert_pod(pod); e.commit(&mut sink)?;          // later: minimal incremental batch
//! ```
//!
//! [`spec_eval`] is an independent evaluator written from the Kubernetes
//! and network-policy-api specs, used as the test oracle; [`testkit`] holds the conformance cluster,
//! a ruleset simulator and a model of nft transactions.
//!
//! # Semantic choices (where Kubernetes leaves room)
//! * Isolation covers every IP protocol: a rule without `ports` allows all
//!   protocols (ICMP included) from its peers; a rule with ports allows only
//!   those TCP/UDP/SCTP ports.
//! * `ipBlock` matches any address, pod IPs included.
//! * Named ports resolve on the destination pod; a destination that is not a
//!   (known, pod-network, not finished) pod never matches a named port.
//! * Traffic between a pod and its own node is always allowed; everything
//!   between a pod and other nodes is subject to policy like any address.
//! * Replies of allowed connections (conntrack established/related) are
//!   always allowed. A connection that is already established keeps flowing
//!   when a policy change would now deny it (conntrack entries are not
//!   flushed); new connections are denied at once.
//! * Invalid policies: see [`compile`] (fail closed where possible).
//!
//! # AdminNetworkPolicy and BaselineAdminNetworkPolicy
//! [`admin`] holds the typed `policy.networking.k8s.io/v1alpha1` objects,
//! [`compile::admin`] validates them, the plan marks a direction
//! [`plan::DirectionPlan::Tiered`] when ANP/BANP rules select the pod, and
//! the tier chains render it (layout: `ruleset/tiers.rs`). For each
//! direction of a connection:
//! * ANPs by `priority` (0 first); equal priorities, which the API leaves
//!   undefined, by name, so every node decides alike. Each ANP's rules in
//!   written order; the first match decides: `Allow`/`Deny` are final,
//!   `Pass` skips the remaining ANP rules.
//! * Then NetworkPolicy as above: if one isolates the direction its verdict
//!   is final and the baseline is never consulted.
//! * Otherwise the BANP named `default` (first matching rule), otherwise
//!   allowed.
//! * A pod and its own node always talk, even against an ANP `Deny` of
//!   `nodes`/`networks` peers (kubelet probes; node → local pod traffic
//!   does not cross `forward`). `nodes` peers are a node's `InternalIP` and
//!   `ExternalIP` addresses ([`model::NodeInfo`]).
//! * `domainNames` peers (FQDN) are not implemented: they match nothing.
//! * Invalid objects are reported; see [`compile::admin`] for what is
//!   ignored and what fails closed.

//!
//! # Observability and host protection
//! * Every rule of a policy chain has an nft `counter` and its
//!   [`origin::RuleOrigin`] (tier, policy, rule index, direction, action) as
//!   comment; [`counters`] reads `nft -j list table` back into per-rule
//!   totals (the `margay_policy_rule_packets_total` series and `margayctl
//!   policy show`). Equal NetworkPolicy rules of several policies selecting
//!   a pod are rendered once, attributed to the first policy by name.
//! * [`flowlog`]: optional rate-limited `log group N` rules before every
//!   drop, the NFLOG wire codec and the JSON record of a denied packet.
//! * [`trace`]: the rules a packet matches in the model, compared with the
//!   kernel counters that moved while a probe crossed the dataplane.
//! * [`host`]: `HostEndpoint` / `HostNetworkPolicy` → `table inet
//!   margay_host` on `input`/`output`, with failsafe ports no policy closes.

pub mod addr;
pub mod admin;
pub mod batch;
pub mod build;
pub mod compile;
pub mod counters;
pub mod engine;
pub mod flowlog;
pub mod host;
pub mod labels;
pub mod model;
pub mod nft;
pub mod origin;
pub mod plan;
pub mod ruleset;
/// Label selectors: the workspace's one implementation, in `margay-types`.
pub use margay_types::selector;
pub mod sink;
pub mod spec_eval;
pub mod testkit;
pub mod trace;

pub use batch::Batch;
pub use compile::{Direction, PolicyError, PreparedPolicy};
pub use engine::{CommitStats, Engine, EngineError};
pub use labels::{LabelInterner, PodLabels};
pub use model::{
    ClusterState, ContainerPort, Labels, LocalEndpoint, NamespaceInfo, NatOutgoing, NodeContext,
    NodeInfo, PodInfo, PodKey, PodPhase, PolicyKey, Protocol,
};
pub use nftables;
pub use plan::{Plan, PlanIssue};
pub use ruleset::Ruleset;
pub use sink::{CapturingSink, NftSink};
