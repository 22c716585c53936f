//! `margayctl ipam show | lookup | release`: the IPAM objects read from the
//! API server, reported with the `ipam` crate's own report code.

use super::*;

pub(super) async fn ipam_objects(
    client: &kube::Client,
) -> Result<(Vec<ipam::PoolObject>, Vec<ipam::BlockObject>), CtlError> {
    use ipam::Store as _;
    let store = KubeStore::new(client.clone(), std::sync::Arc::new(Metrics::new()));
    let pools = Api::<crate::k8s::crd::IPPool>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|p| pool_to_model(p).ok())
        .collect();
    Ok((pools, store.list_blocks().await?))
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `margayctl ipam show [--show-blocks]`: pool usage (and blocks).
pub async fn ipam_show(
    client: &kube::Client,
    show_blocks: bool,
) -> Result<ipam::report::IpamShow, CtlError> {
    let (pools, blocks) = ipam_objects(client).await?;
    Ok(ipam::report::show(
        &pools,
        &blocks,
        show_blocks,
        now_ms(),
        0,
    ))
}

/// `margayctl ipam show --ip X`: which pool, block and pod an address has.
pub async fn ipam_lookup(
    client: &kube::Client,
    ip: IpAddr,
) -> Result<ipam::report::IpInfo, CtlError> {
    let (pools, blocks) = ipam_objects(client).await?;
    Ok(ipam::report::lookup_ip(&pools, &blocks, ip))
}

/// One line about one address.
pub fn render_ip_info(i: &ipam::report::IpInfo) -> String {
    let owner = i
        .attrs
        .as_ref()
        .map(|a| {
            format!(
                "{}/{} on {}",
                a.namespace.as_deref().unwrap_or("?"),
                a.pod.as_deref().unwrap_or("?"),
                a.node.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "-".into());
    format!(
        "{}: pool {}, block {}, affinity {}, {}\n",
        i.ip,
        i.pool.as_deref().unwrap_or("none"),
        i.block
            .map(|b| b.to_string())
            .unwrap_or_else(|| "none".into()),
        i.affinity.as_deref().unwrap_or("none"),
        match &i.handle {
            Some(h) => format!("allocated to handle {h} ({owner})"),
            None => "free".into(),
        }
    )
}

/// The tables of `margayctl ipam show` (counts exact, however large); wide
/// adds the blocks' cooling (recently freed) addresses and age.
pub fn render_ipam_show(s: &ipam::report::IpamShow, show_blocks: bool, wide: bool) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = s
        .pools
        .iter()
        .map(|p| {
            let pct = p.capacity.percent(u128::from(p.allocated));
            vec![
                p.name.clone(),
                p.cidr.to_string(),
                p.capacity.to_string(),
                format!("{} ({pct:.1}%)", p.allocated),
                format!("{}/{}", p.blocks, p.block_capacity),
                if p.disabled {
                    "yes".into()
                } else {
                    "no".into()
                },
                p.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out += &table(
        &[
            "POOL", "CIDR", "SIZE", "IN USE", "BLOCKS", "DISABLED", "PROBLEM",
        ],
        &rows,
    );
    if show_blocks {
        let now = now_ms();
        let rows: Vec<Vec<String>> = s
            .blocks
            .iter()
            .map(|b| {
                let mut row = vec![
                    b.cidr.to_string(),
                    b.affinity.clone().unwrap_or_else(|| "-".into()),
                    b.pool.clone().unwrap_or_else(|| "-".into()),
                    b.allocated.to_string(),
                    b.free.to_string(),
                    b.borrowed.to_string(),
                ];
                if wide {
                    row.push(b.cooling.to_string());
                    row.push(since(Some(now.saturating_sub(b.created_at) / 1000)));
                    row.push(b.name.clone());
                }
                row.push(b.error.clone().unwrap_or_default());
                row
            })
            .collect();
        out.push('\n');
        let mut header = vec!["BLOCK", "AFFINITY", "POOL", "IN USE", "FREE", "BORROWED"];
        if wide {
            header.extend(["COOLING", "AGE", "OBJECT"]);
        }
        header.push("PROBLEM");
        out += &table(&header, &rows);
    }
    out
}

pub(super) async fn live_pods(client: &kube::Client) -> Result<Vec<ipam::gc::LivePod>, CtlError> {
    Ok(Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|p| {
            let mut live = crate::k8s::ipam::gc::live_pod(p)?;
            live.ips = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ips.as_ref())
                .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
                .unwrap_or_default();
            Some(live)
        })
        .collect())
}

/// What `margayctl ipam release` freed.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    /// The address.
    pub ip: IpAddr,
    /// The handle it was allocated to.
    pub handle: String,
    /// Its block.
    pub block: String,
}

impl std::fmt::Display for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "released {} (handle {}) from block {}",
            self.ip, self.handle, self.block
        )
    }
}

/// `margayctl ipam release --ip X`: frees one address, refusing when the pod
/// it belongs to still exists.
pub async fn ipam_release(client: &kube::Client, ip: IpAddr) -> Result<Released, CtlError> {
    use ipam::Store as _;
    let store = KubeStore::new(client.clone(), std::sync::Arc::new(Metrics::new()));
    for _attempt in 0..5 {
        let (pools, blocks) = ipam_objects(client).await?;
        let info = ipam::report::lookup_ip(&pools, &blocks, ip);
        let (Some(block), Some(handle)) = (info.block, info.handle.clone()) else {
            return Err(CtlError::Refused(format!("{ip} is not allocated")));
        };
        if let Some(a) = &info.attrs
            && let (Some(ns), Some(pod)) = (&a.namespace, &a.pod)
            && Api::<Pod>::namespaced(client.clone(), ns)
                .get_opt(pod)
                .await?
                .is_some()
        {
            return Err(CtlError::Refused(format!(
                "{ip} belongs to pod {ns}/{pod}, which exists; delete the pod instead"
            )));
        }
        let name = ipam::model::block_name(&block);
        let Some(mut obj) = store.get_block(&name).await? else {
            continue;
        };
        let Some(ordinal) = obj.spec.ordinal_of(ip) else {
            return Err(CtlError::Refused(format!("{ip} is not in block {block}")));
        };
        // Only the allocation we inspected (a re-allocation since is not ours).
        match obj.spec.allocation(ordinal) {
            Some(a) if a.handle == handle && Some(a.sequence) == info.sequence => {}
            _ => continue,
        }
        obj.spec.release(ordinal, now_ms());
        obj.spec.sequence += 1;
        match store.update_block(&obj).await {
            Ok(_) => {
                return Ok(Released {
                    ip,
                    handle,
                    block: block.to_string(),
                });
            }
            Err(ipam::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CtlError::Refused(format!(
        "{ip}: the block kept changing; try again"
    )))
}
