//! `margayctl bgp routes`: the speaker's RIB — every path of every
//! destination with its next hop, origin peer, AS path and communities —
//! as the routing task publishes it in the agent's `/status` (section
//! `bgp_routes`, refreshed when the RIB changes, at most [`LIMIT`]
//! destinations).

use std::fmt::Write as _;

use bgp::driver::{RoutePath, Routes};
use bgp::wire::{AsPath, CommunitySet, Origin, SegmentKind};
use serde::{Deserialize, Serialize};

/// Destinations listed at most (the RIB of a node is its peers' blocks;
/// a ToR sending a full table would otherwise make `/status` huge).
pub const LIMIT: usize = 2000;

/// The `bgp_routes` section of `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoutesSection {
    /// Destinations in the RIB.
    pub total: usize,
    /// The destinations listed (at most [`LIMIT`]), by prefix.
    pub routes: Vec<RouteRow>,
}

/// One destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteRow {
    /// The prefix.
    pub prefix: String,
    /// Its paths, the selected ones first.
    pub paths: Vec<PathRow>,
}

/// One path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathRow {
    /// The peer it came from, or `local` for what this node originates.
    pub from: String,
    /// Next hop (`-` for ours).
    pub next_hop: String,
    /// AS path, sets in braces.
    pub as_path: String,
    /// i, e or ?.
    pub origin: String,
    /// LOCAL_PREF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// MED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub med: Option<u32>,
    /// Standard, large and extended communities, as text.
    #[serde(default)]
    pub communities: Vec<String>,
    /// Selected by the decision process (the first one is the best).
    pub selected: bool,
    /// Kept by graceful restart while its peer is away.
    #[serde(default)]
    pub stale: bool,
    /// ORIGINATOR_ID of a reflected path (RFC 4456).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator_id: Option<String>,
    /// CLUSTER_LIST of a reflected path, the last reflector first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_list: Vec<String>,
}

fn as_path(p: Option<&AsPath>) -> String {
    let Some(p) = p else { return String::new() };
    p.segments
        .iter()
        .map(|s| {
            let asns: Vec<String> = s.asns.iter().map(u32::to_string).collect();
            match s.kind {
                SegmentKind::Sequence => asns.join(" "),
                SegmentKind::Set => format!("{{{}}}", asns.join(" ")),
                SegmentKind::ConfedSequence => format!("({})", asns.join(" ")),
                SegmentKind::ConfedSet => format!("[{}]", asns.join(" ")),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn path_row(p: &RoutePath) -> PathRow {
    let a = &p.attrs.attrs();
    let comms = CommunitySet::of(a);
    PathRow {
        from: p.from.clone().unwrap_or_else(|| "local".into()),
        next_hop: match &p.from {
            None => "-".into(),
            Some(_) => p.attrs.next_hop.addr().to_string(),
        },
        as_path: as_path(a.as_path.as_ref()),
        origin: match a.origin {
            Some(Origin::Igp) => "i",
            Some(Origin::Egp) => "e",
            Some(Origin::Incomplete) | None => "?",
        }
        .into(),
        local_pref: a.local_pref,
        med: a.med,
        communities: comms.iter().map(|c| c.to_string()).collect(),
        selected: p.selected,
        stale: p.stale,
        originator_id: a.originator_id.map(|i| i.to_string()),
        cluster_list: a.cluster_list.iter().map(ToString::to_string).collect(),
    }
}

/// The section for a RIB snapshot.
pub fn section(r: &Routes) -> RoutesSection {
    RoutesSection {
        total: r.total,
        routes: r
            .routes
            .iter()
            .map(|(prefix, paths)| RouteRow {
                prefix: prefix.to_string(),
                paths: paths.iter().map(path_row).collect(),
            })
            .collect(),
    }
}

/// The table `margayctl bgp routes` prints: `*` best, `=` also selected
/// (multipath), `s` stale; a REFLECTED column (originator, then the
/// clusters the path went through) when any path was reflected. `prefix`:
/// only destinations whose prefix text starts with it.
pub fn render(status: &serde_json::Value, prefix: Option<&str>) -> String {
    let s: RoutesSection = serde_json::from_value(status["bgp_routes"].clone()).unwrap_or_default();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in s
        .routes
        .iter()
        .filter(|r| prefix.is_none_or(|p| r.prefix.starts_with(p)))
    {
        for (i, p) in r.paths.iter().enumerate() {
            let mark = match (p.selected, i, p.stale) {
                (true, 0, false) => "*",
                (true, 0, true) => "*s",
                (true, _, false) => "=",
                (true, _, true) => "=s",
                (false, _, true) => "s",
                (false, _, false) => "",
            };
            let reflected = match &p.originator_id {
                Some(o) => format!("{o} via {}", p.cluster_list.join(" ")),
                None if p.cluster_list.is_empty() => String::new(),
                None => format!("via {}", p.cluster_list.join(" ")),
            };
            rows.push(vec![
                mark.into(),
                if i == 0 {
                    r.prefix.clone()
                } else {
                    String::new()
                },
                p.next_hop.clone(),
                p.from.clone(),
                format!("{} {}", p.as_path, p.origin).trim().to_string(),
                reflected,
                p.communities.join(" "),
            ]);
        }
    }
    let mut header: Vec<String> = ["", "PREFIX", "NEXT HOP", "FROM", "AS PATH", "REFLECTED"]
        .map(String::from)
        .into();
    header.push("COMMUNITIES".into());
    // The REFLECTED column only when something was reflected.
    if rows.iter().all(|r| r[5].is_empty()) {
        header.remove(5);
        for r in &mut rows {
            r.remove(5);
        }
    }
    let mut width: Vec<usize> = header.iter().map(String::len).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            let w = *w;
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for r in &rows {
        line(&mut out, r);
    }
    let listed = s.routes.len();
    if s.total > listed {
        let _ = writeln!(out, "({listed} of {} destinations listed)", s.total);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_best_multipath_and_communities() {
        let v = serde_json::json!({"bgp_routes": {"total": 3, "routes": [
            {"prefix": "198.19.1.0/26", "paths": [
                {"from": "local", "next_hop": "-", "as_path": "", "origin": "i",
                 "communities": ["64512:100", "no-export"], "selected": true}]},
            {"prefix": "198.19.2.0/26", "paths": [
                {"from": "peer-tor", "next_hop": "198.18.0.1", "as_path": "65000 {1 2}", "origin": "i",
                 "communities": ["65000:1:2", "rt:65000:7"], "selected": true},
                {"from": "peer-tor2", "next_hop": "198.18.0.2", "as_path": "65000", "origin": "?",
                 "communities": [], "selected": true, "stale": true}]}
        ]}});
        let t = render(&v, None);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("    PREFIX"), "{t}");
        assert!(
            lines[1].starts_with("*   198.19.1.0/26  -")
                && lines[1].contains(" local ")
                && lines[1].ends_with(" i              64512:100 no-export"),
            "{t}"
        );
        assert!(lines[2].contains("65000 {1 2} i") && lines[2].ends_with("65000:1:2 rt:65000:7"));
        assert!(
            lines[3].starts_with("=s") && lines[3].contains("peer-tor2"),
            "{t}"
        );
        assert_eq!(lines[4], "(2 of 3 destinations listed)");
        assert_eq!(render(&v, Some("198.19.2.")).lines().count(), 4);
        assert!(!t.contains("REFLECTED"), "{t}");
    }

    #[test]
    fn reflected_paths_show_originator_and_clusters() {
        let v = serde_json::json!({"bgp_routes": {"total": 1, "routes": [
            {"prefix": "198.19.3.0/26", "paths": [
                {"from": "peer-rrs-n1", "next_hop": "198.18.0.13", "as_path": "", "origin": "i",
                 "communities": ["64512:1"], "selected": true,
                 "originator_id": "198.18.0.13", "cluster_list": ["198.18.0.100", "198.18.0.200"]}]}
        ]}});
        let t = render(&v, None);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("REFLECTED"), "{t}");
        assert!(
            lines[1].contains("198.18.0.13 via 198.18.0.100 198.18.0.200")
                && lines[1].ends_with("64512:1"),
            "{t}"
        );
    }
}
