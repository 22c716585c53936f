//! `margayctl`: look at and operate Margay.
//!
//! - `node status` and `bgp routes` ask the local agent (`--agent`, its
//!   `/status`; `bgp routes` is rendered by [`crate::status::bgp_routes`]);
//! - `ipam …` and `policy trace` read the cluster from the API server
//!   (`--api-server`, or in-cluster config / KUBECONFIG) and use the same
//!   code as the agent (the `ipam` report and the policy spec evaluator).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;

mod addresses;
mod check;
pub mod output;
mod trace;

pub use addresses::{
    Released, ipam_lookup, ipam_release, ipam_show, render_ip_info, render_ipam_show,
};
use addresses::{ipam_objects, live_pods};
pub use check::{IpamCheck, ipam_check, render_ipam_check};
pub use trace::*;

use crate::k8s::ipam::store::{KubeStore, pool_to_model};
use crate::status::metrics::Metrics;
use crate::status::model::PeerRow;

/// What a margayctl command can fail on.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The agent's status endpoint could not be read.
    #[error("cannot reach the agent at {url}: {reason} (is margay-node running? see --agent)")]
    Agent {
        /// URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// An API call failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The IPAM store failed.
    #[error("IPAM: {0}")]
    Store(#[from] ipam::StoreError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Refused for safety.
    #[error("refused: {0}")]
    Refused(String),
}

/// GETs `url` (plain HTTP) and returns the body.
pub async fn http_get(url: &str) -> Result<String, CtlError> {
    use http_body_util::{BodyExt as _, Empty};
    use hyper::body::Bytes;
    let err = |reason: String| CtlError::Agent {
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| err(e.to_string()))?;
    let host = uri.host().ok_or_else(|| err("no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| err("timed out".into()))?
    .map_err(|e| err(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| err(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::get(uri.path())
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| err(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| err(e.to_string()))?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(s, "{c:<width$}  ", width = w[i]);
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn since(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) => format!("{}h", s / 3600),
    }
}

/// `margayctl node status`, rendered from the agent's `/status` JSON.
pub fn render_node_status(status: &serde_json::Value) -> String {
    let mut out = String::new();
    let node = &status["node"];
    let _ = writeln!(
        out,
        "Margay agent on node {} (name from {}); ready: {}",
        node["name"].as_str().unwrap_or("?"),
        node["name_source"].as_str().unwrap_or("?"),
        status["ready"]
    );
    for fam in ["ipv4", "ipv6"] {
        if let Some(a) = node[fam].as_object() {
            let _ = writeln!(
                out,
                "  {fam} {} on {}: {}",
                a.get("address").and_then(|v| v.as_str()).unwrap_or("?"),
                a.get("interface").and_then(|v| v.as_str()).unwrap_or("-"),
                a.get("reason").and_then(|v| v.as_str()).unwrap_or("")
            );
        }
    }
    for c in status["readiness"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}", c.as_str().unwrap_or(""));
    }
    let peers: Vec<PeerRow> =
        serde_json::from_value(status["bgp_peers"].clone()).unwrap_or_default();
    match status["bgp_topology"].as_str() {
        Some(t) => _ = writeln!(out, "\nBGP peers: {t}"),
        None => _ = writeln!(out, "\nBGP peers"),
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.address.clone(),
                p.kind.clone(),
                p.state.clone(),
                p.bfd.clone().unwrap_or_else(|| "-".into()),
                since(p.since_secs),
                format!("{}/{}", p.accepted, p.sent),
                p.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out += &table(
        &[
            "PEER",
            "ADDRESS",
            "TYPE",
            "STATE",
            "BFD",
            "SINCE",
            "PREFIXES IN/OUT",
            "LAST ERROR",
        ],
        &rows,
    );
    for section in ["bgp_problems", "policy_problems"] {
        for p in status[section].as_array().into_iter().flatten() {
            let _ = writeln!(out, "problem: {}", p.as_str().unwrap_or(""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_renders_peers_and_reasons() {
        let status = serde_json::json!({
            "node": {"name": "n1", "name_source": "--node-name / NODE_NAME",
                     "ipv4": {"address": "198.18.0.11/24", "interface": "eth0", "reason": "interface=eth0: first match eth0"}},
            "ready": true,
            "readiness": ["ok: datastore synced"],
            "bgp_peers": [{"name": "mesh-n2", "address": "198.18.0.12", "kind": "node-mesh",
                           "state": "Established", "since_secs": 75, "accepted": 2, "sent": 2, "last_error": null}],
            "bgp_problems": ["BGPPeer x: no"],
            "bgp_topology": "full mesh"
        });
        let out = render_node_status(&status);
        assert!(
            out.contains("198.18.0.11/24 on eth0: interface=eth0"),
            "{out}"
        );
        assert!(
            out.lines().any(|l| l.starts_with("mesh-n2")
                && l.contains("Established")
                && l.contains("75s")
                && l.contains("2/2")),
            "{out}"
        );
        assert!(out.contains("problem: BGPPeer x: no"), "{out}");
        assert!(out.contains("BGP peers: full mesh"), "{out}");
    }

    #[test]
    fn ports_and_pods_parse_with_clear_errors() {
        use policy::Protocol;
        use policy::spec_eval::L4;
        assert_eq!(parse_port("80/TCP").ok(), Some(L4::Port(Protocol::Tcp, 80)));
        assert_eq!(parse_port("53/udp").ok(), Some(L4::Port(Protocol::Udp, 53)));
        assert_eq!(parse_port("8080").ok(), Some(L4::Port(Protocol::Tcp, 8080)));
        assert_eq!(parse_port("icmp").ok(), Some(L4::Other(1)));
        assert!(parse_port("http/TCP").is_err());
        assert!(parse_port("80/GRE").is_err());
        assert_eq!(parse_pod("x/a").ok(), Some(("x".into(), "a".into())));
        assert!(parse_pod("a").is_err() && parse_pod("/a").is_err());
    }

    #[test]
    fn ipam_show_prints_ipv6_pool_sizes_exactly() {
        let pool = |name: &str, cidr: &str| ipam::PoolObject {
            name: name.into(),
            resource_version: "1".into(),
            spec: ipam::PoolParams::new(cidr.parse().expect("cidr")),
        };
        let s = ipam::report::show(
            &[pool("v4", "198.19.0.0/16"), pool("v6", "2001:db8::/48")],
            &[],
            false,
            0,
            0,
        );
        let out = render_ipam_show(&s, false, false);
        let v6 = out.lines().find(|l| l.starts_with("v6")).expect("v6 row");
        assert!(
            v6.contains(" 1208925819614629174706176 ")
                && v6.contains(" 0/18889465931478580854784 "),
            "{out}"
        );
        assert!(!out.contains("18446744073709551615") && !out.contains("9223372036854775808"));
        let v4 = out.lines().find(|l| l.starts_with("v4")).expect("v4 row");
        assert!(v4.contains(" 65536 ") && v4.contains(" 0/1024 "), "{out}");
    }
}
