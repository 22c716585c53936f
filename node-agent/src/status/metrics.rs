//! The agent's Prometheus metrics (`/metrics`, text exposition format).
//!
//! Owners update their own series (the BGP task its peers, the IPAM service
//! its pools, ...); the HTTP server only encodes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-peer series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// Peer address.
    pub peer: String,
    /// "node-mesh", "global" or "node-specific" (as `margayctl node status`).
    pub kind: String,
}

/// Labels of per-pool series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels of the IPAM reserve's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReserveLabels {
    /// `ready`/`taken` (units), or the event counted.
    pub what: String,
}

/// Labels of CNI request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniLabels {
    /// allocate, release, endpoint_up, endpoint_down, ...
    pub op: String,
    /// ok, or the gRPC code name of the failure.
    pub result: String,
}

/// Labels of `margay_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version (`margay-node --version`).
    pub version: String,
    /// The git commit it was built from (`MARGAY_GIT_COMMIT` at build
    /// time, set by scripts/image), or "unknown".
    pub commit: String,
}

/// The commit this binary was built from, if the build said.
pub const GIT_COMMIT: &str = match option_env!("MARGAY_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Labels of API error series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// Resource (pods, ipamblocks, ...).
    pub resource: String,
    /// Verb (list, watch, create, update, ...).
    pub verb: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Text appended to the exposition at every scrape (series whose values
/// live elsewhere, e.g. the kernel's per-rule policy counters).
pub type Extra = Box<dyn Fn() -> String + Send + Sync>;

/// Every series the agent exports.
pub struct Metrics {
    registry: Registry,
    /// See [`Metrics::set_extra`].
    extra: std::sync::OnceLock<Extra>,
    /// Always 1, labelled with the version and commit.
    pub build_info: Family<BuildLabels, Gauge>,
    /// 1 when the session is Established.
    pub bgp_session_established: Family<PeerLabels, Gauge>,
    /// Prefixes the peer sent us.
    pub bgp_prefixes_received: Family<PeerLabels, Gauge>,
    /// Of those, accepted by import policy.
    pub bgp_prefixes_accepted: Family<PeerLabels, Gauge>,
    /// Prefixes we advertise to the peer.
    pub bgp_prefixes_advertised: Family<PeerLabels, Gauge>,
    /// Blocks affine to this node, per pool.
    pub ipam_blocks: Family<PoolLabels, Gauge>,
    /// Addresses allocated on this node, per pool (not the reserve's).
    pub ipam_allocations: Family<PoolLabels, Gauge>,
    /// Addresses this node borrowed from other nodes' blocks.
    pub ipam_borrowed: Gauge,
    /// Reserve units ready and taken-but-not-moved (`what`).
    pub ipam_reserve_units: Family<ReserveLabels, Gauge>,
    /// Reserve events (`what`: take, fallback, refill, refill_failure,
    /// move, move_failure).
    pub ipam_reserve_events: Family<ReserveLabels, Counter>,
    /// Addresses in the pool (a float: an IPv6 pool holds up to 2^128).
    pub ipam_pool_size: Family<PoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Addresses in use cluster-wide, per pool.
    pub ipam_pool_used: Family<PoolLabels, Gauge>,
    /// API writes made by IPAM (for writes-per-allocation).
    pub ipam_api_writes: Counter,
    /// Policy syncs: render + nft transaction, seconds.
    pub policy_sync_seconds: Histogram,
    /// Policy syncs that failed.
    pub policy_sync_failures: Counter,
    /// nftables transactions sent as nfnetlink element batches (not via nft).
    pub policy_native_batches: Counter,
    /// Local endpoints with policy programmed.
    pub policy_endpoints: Gauge,
    /// CNI-facing requests.
    pub cni_requests: Family<CniLabels, Counter>,
    /// CNI-facing request latency, seconds, by op and result.
    pub cni_request_seconds: HistogramFamily<CniLabels>,
    /// Kubernetes API errors.
    pub api_errors: Family<ApiLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts one request the CNI plugin made (`error`: its gRPC code, if
    /// it failed) and records how long it took since `started`.
    pub fn observe_cni(&self, op: &str, started: std::time::Instant, error: Option<tonic::Code>) {
        let labels = CniLabels {
            op: op.into(),
            result: match error {
                None => "ok".to_string(),
                Some(code) => format!("{code:?}"),
            },
        };
        self.cni_requests.get_or_create(&labels).inc();
        self.cni_request_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    /// Creates and registers every series.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("margay");
        let m = Metrics {
            extra: std::sync::OnceLock::new(),
            build_info: Family::default(),
            bgp_session_established: Family::default(),
            bgp_prefixes_received: Family::default(),
            bgp_prefixes_accepted: Family::default(),
            bgp_prefixes_advertised: Family::default(),
            ipam_blocks: Family::default(),
            ipam_allocations: Family::default(),
            ipam_borrowed: Gauge::default(),
            ipam_reserve_units: Family::default(),
            ipam_reserve_events: Family::default(),
            ipam_pool_size: Family::default(),
            ipam_pool_used: Family::default(),
            ipam_api_writes: Counter::default(),
            policy_sync_seconds: latency_histogram(),
            policy_sync_failures: Counter::default(),
            policy_native_batches: Counter::default(),
            policy_endpoints: Gauge::default(),
            cni_requests: Family::default(),
            cni_request_seconds: Family::new_with_constructor(latency_histogram),
            api_errors: Family::default(),
            registry: Registry::default(),
        };
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                commit: GIT_COMMIT.into(),
            })
            .set(1);
        let r = &mut registry;
        r.register(
            "build_info",
            "Always 1; the labels say which build runs",
            m.build_info.clone(),
        );
        r.register(
            "bgp_session_established",
            "1 when the BGP session is Established",
            m.bgp_session_established.clone(),
        );
        r.register(
            "bgp_prefixes_received",
            "Prefixes received from the peer",
            m.bgp_prefixes_received.clone(),
        );
        r.register(
            "bgp_prefixes_accepted",
            "Prefixes from the peer accepted by import policy",
            m.bgp_prefixes_accepted.clone(),
        );
        r.register(
            "bgp_prefixes_advertised",
            "Prefixes advertised to the peer",
            m.bgp_prefixes_advertised.clone(),
        );
        r.register(
            "ipam_blocks",
            "Blocks affine to this node",
            m.ipam_blocks.clone(),
        );
        r.register(
            "ipam_allocations",
            "Addresses allocated on this node",
            m.ipam_allocations.clone(),
        );
        r.register(
            "ipam_borrowed",
            "Addresses borrowed from other nodes' blocks",
            m.ipam_borrowed.clone(),
        );
        r.register(
            "ipam_reserve_units",
            "IPAM reserve units ready, and taken by pods but not yet moved to them",
            m.ipam_reserve_units.clone(),
        );
        r.register(
            "ipam_reserve_events",
            "IPAM reserve takes, fallbacks to the write path, refills, moves and their failures",
            m.ipam_reserve_events.clone(),
        );
        r.register(
            "ipam_pool_size",
            "Addresses in the pool",
            m.ipam_pool_size.clone(),
        );
        r.register(
            "ipam_pool_used",
            "Addresses of the pool in use in the cluster",
            m.ipam_pool_used.clone(),
        );
        r.register(
            "ipam_api_writes",
            "Kubernetes API writes made by IPAM",
            m.ipam_api_writes.clone(),
        );
        r.register(
            "policy_sync_seconds",
            "Policy sync time: render and nftables transaction",
            m.policy_sync_seconds.clone(),
        );
        r.register(
            "policy_sync_failures",
            "Policy syncs that failed",
            m.policy_sync_failures.clone(),
        );
        r.register(
            "policy_native_batches",
            "Policy transactions that only changed set elements, sent over nfnetlink without nft",
            m.policy_native_batches.clone(),
        );
        r.register(
            "policy_endpoints",
            "Local endpoints with policy programmed",
            m.policy_endpoints.clone(),
        );
        r.register(
            "cni_requests",
            "Requests from the CNI plugin",
            m.cni_requests.clone(),
        );
        r.register(
            "cni_request_seconds",
            "Latency of requests from the CNI plugin, by op and result",
            m.cni_request_seconds.clone(),
        );
        r.register("api_errors", "Kubernetes API errors", m.api_errors.clone());
        Metrics { registry, ..m }
    }

    /// The text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if let Some(extra) = self.extra.get() {
            // Before the closing `# EOF` of the OpenMetrics text.
            let eof = out.rfind("# EOF").unwrap_or(out.len());
            out.insert_str(eof, &extra());
        }
        out
    }

    /// Series computed at scrape time (set once, by the agent; later calls
    /// are ignored).
    pub fn set_extra(&self, f: Extra) {
        let _ = self.extra.set(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_exported_with_the_margay_prefix_and_labels() {
        let m = Metrics::new();
        m.bgp_session_established
            .get_or_create(&PeerLabels {
                peer: "198.18.0.1".into(),
                kind: "global".into(),
            })
            .set(1);
        m.cni_requests
            .get_or_create(&CniLabels {
                op: "allocate".into(),
                result: "ok".into(),
            })
            .inc();
        m.observe_cni(
            "allocate",
            std::time::Instant::now(),
            Some(tonic::Code::ResourceExhausted),
        );
        let text = m.encode();
        assert!(
            text.contains(r#"margay_bgp_session_established{peer="198.18.0.1",kind="global"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"margay_cni_requests_total{op="allocate",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"margay_cni_request_seconds_count{op="allocate",result="ResourceExhausted"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"margay_cni_requests_total{op="allocate",result="ResourceExhausted"} 1"#
            ),
            "{text}"
        );
        let build = format!(
            r#"margay_build_info{{version="{}",commit="{GIT_COMMIT}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        assert!(
            text.contains("margay_policy_sync_failures_total 0"),
            "{text}"
        );
    }

    #[test]
    fn extra_series_go_before_eof() {
        let m = Metrics::new();
        m.set_extra(Box::new(|| {
            "margay_policy_rule_packets_total{policy=\"np:x/a\"} 3\n".into()
        }));
        let text = m.encode();
        let rule = text
            .find("margay_policy_rule_packets_total")
            .expect("extra present");
        assert!(rule < text.rfind("# EOF").expect("EOF"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
