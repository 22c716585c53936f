//! Aggregated discovery (`apidiscovery.k8s.io/v2`, and `v2beta1`): every
//! group, version and resource in one answer to `/api` or `/apis`, as
//! kubectl ≥ 1.26 and kube's `Discovery::run_aggregated` ask for it.

use serde_json::{Value, json};

use super::resources::{Registry, ResourceDef};

/// The aggregated-discovery version an Accept header asks for first, if any.
pub fn wanted(accept: &str) -> Option<&'static str> {
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        if parts.next() != Some("application/json") {
            continue;
        }
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |k: &str| params.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
        match (param("as"), param("g"), param("v")) {
            (None, _, _) => return None,
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2")) => {
                return Some("v2");
            }
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2beta1")) => {
                return Some("v2beta1");
            }
            _ => continue,
        }
    }
    None
}

/// Content-Type of an aggregated answer.
pub fn content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

fn resource(d: &ResourceDef) -> Value {
    let kind = json!({"group": d.group, "version": d.version, "kind": d.kind});
    let mut r = json!({
        "resource": d.plural,
        "responseKind": kind,
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": ResourceDef::verbs(),
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    if d.status_subresource {
        r["subresources"] = json!([{"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}]);
    }
    r
}

impl Registry {
    /// `/api` (`core`) or `/apis` as an APIGroupDiscoveryList.
    pub fn aggregated(&self, core: bool, version: &str) -> Value {
        let items: Vec<Value> = self
            .group_versions()
            .iter()
            .filter(|(g, _)| g.is_empty() == core)
            .map(|(g, versions)| {
                let vs: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        let resources: Vec<Value> = self
                            .by_path
                            .iter()
                            .filter(|((rg, rv, _), _)| rg == g && rv == v)
                            .map(|(_, d)| resource(d))
                            .collect();
                        json!({"version": v, "resources": resources, "freshness": "Current"})
                    })
                    .collect();
                let meta = if core {
                    json!({"creationTimestamp": null})
                } else {
                    json!({"name": g, "creationTimestamp": null})
                };
                json!({"metadata": meta, "versions": vs})
            })
            .collect();
        json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": format!("apidiscovery.k8s.io/{version}"),
            "metadata": {},
            "items": items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_and_shape() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wanted(kubectl), Some("v2"));
        assert_eq!(wanted("application/json"), None);
        assert_eq!(
            wanted(
                "application/json, application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            ),
            None
        );
        let r = Registry::new();
        let core = r.aggregated(true, "v2");
        assert_eq!(core["items"].as_array().map(Vec::len), Some(1));
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .and_then(|rs| rs.iter().find(|x| x["resource"] == "pods").cloned())
            .unwrap_or_default();
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["subresources"][0]["subresource"], "status");
        let apis = r.aggregated(false, "v2");
        assert!(apis["items"].as_array().is_some_and(|i| {
            i.iter()
                .any(|g| g["metadata"]["name"] == "networking.k8s.io")
        }));
        assert!(
            apis["items"]
                .as_array()
                .is_some_and(|i| i.iter().all(|g| g["metadata"]["name"] != ""))
        );
    }
}
