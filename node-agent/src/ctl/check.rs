//! `margayctl ipam check`: leaks, orphans and inconsistencies, as a report
//! with what each problem means and what to do.

use std::collections::HashSet;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;

use super::{CtlError, ipam_objects, live_pods};

/// `margayctl ipam check`'s answer.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamCheck {
    /// IPAMBlocks read.
    pub blocks: usize,
    /// Pods read.
    pub pods: usize,
    /// Nodes read.
    pub nodes: usize,
    /// Nothing wrong.
    pub clean: bool,
    /// What is wrong.
    pub problems: ipam::report::CheckReport,
}

/// `margayctl ipam check`: leaks, orphans and inconsistencies.
pub async fn ipam_check(client: &kube::Client) -> Result<IpamCheck, CtlError> {
    let (_, blocks) = ipam_objects(client).await?;
    let pods = live_pods(client).await?;
    let nodes: HashSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let r = ipam::report::check(&blocks, &pods, &nodes);
    Ok(IpamCheck {
        blocks: blocks.len(),
        pods: pods.len(),
        nodes: nodes.len(),
        clean: r.is_clean(),
        problems: r,
    })
}

fn render_allocation(a: &ipam::report::AllocationRef) -> String {
    format!(
        "{} in block {}: handle {}, pod {}, node {}",
        a.ip,
        a.block,
        a.handle,
        a.pod.as_deref().unwrap_or("-"),
        a.node.as_deref().unwrap_or("-")
    )
}

/// The human report of `margayctl ipam check`: each kind of problem, what it
/// means and what to do, then a verdict.
pub fn render_ipam_check(c: &IpamCheck) -> String {
    let r = &c.problems;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Checked {} blocks against {} pods and {} nodes.",
        c.blocks, c.pods, c.nodes
    );
    let mut section = |title: &str, advice: &str, items: Vec<String>| {
        if items.is_empty() {
            let _ = writeln!(out, "  ok  {title}: none");
            return;
        }
        let _ = writeln!(out, "\n  !!  {title}: {}", items.len());
        let _ = writeln!(out, "      {advice}");
        for i in items {
            let _ = writeln!(out, "      - {i}");
        }
        out.push('\n');
    };
    section(
        "addresses held for pods that no longer exist (leaks)",
        "The agent's IPAM GC releases them after its grace period; `margayctl ipam release --ip X` frees one now.",
        r.allocations_without_pod
            .iter()
            .map(render_allocation)
            .collect(),
    );
    section(
        "addresses held for pods that report other addresses",
        "Never released automatically: check the pod, then release the stale address by hand.",
        r.allocations_with_other_pod_ips
            .iter()
            .map(render_allocation)
            .collect(),
    );
    section(
        "pods without an allocation",
        "Their addresses are not recorded; they may be handed out again. Recreate the pods.",
        r.pods_without_allocation.clone(),
    );
    section(
        "blocks affine to a node that does not exist",
        "The node's agent cannot release them; the IPAM GC frees them once they are empty.",
        r.blocks_with_missing_node
            .iter()
            .map(|b| b.to_string())
            .collect(),
    );
    section(
        "invalid blocks",
        "An IPAMBlock object that does not parse; it is skipped by allocation. Inspect it with kubectl.",
        r.invalid_blocks
            .iter()
            .map(|(b, why)| format!("{b}: {why}"))
            .collect(),
    );
    section(
        "addresses allocated twice",
        "Two blocks overlap: two pods may share an address. Find the pods with `margayctl ipam show --ip X`.",
        r.duplicate_addresses
            .iter()
            .map(|i| i.to_string())
            .collect(),
    );
    let _ = writeln!(
        out,
        "{}",
        if c.clean {
            "OK: no problems found."
        } else {
            "PROBLEMS FOUND (see above); exit status 1."
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_check_reads_as_a_report_with_advice() {
        let leak = ipam::report::AllocationRef {
            ip: "198.19.0.7".parse().expect("ip"),
            block: "198.19.0.0/26".parse().expect("cidr"),
            handle: "k8s-pod-network.abc".into(),
            pod: Some("demo/gone".into()),
            node: Some("n1".into()),
        };
        let c = IpamCheck {
            blocks: 2,
            pods: 5,
            nodes: 3,
            clean: false,
            problems: ipam::report::CheckReport {
                allocations_without_pod: vec![leak],
                ..Default::default()
            },
        };
        let out = render_ipam_check(&c);
        assert!(
            out.starts_with("Checked 2 blocks against 5 pods and 3 nodes."),
            "{out}"
        );
        assert!(
            out.contains("- 198.19.0.7 in block 198.19.0.0/26: handle k8s-pod-network.abc, pod demo/gone, node n1"),
            "{out}"
        );
        assert!(out.contains("margayctl ipam release --ip X"), "{out}");
        assert!(out.contains("ok  addresses allocated twice: none"), "{out}");
        assert!(out.trim_end().ends_with("exit status 1."), "{out}");
        assert!(
            !out.contains('{') && !out.contains("AllocationRef"),
            "{out}"
        );
    }
}
