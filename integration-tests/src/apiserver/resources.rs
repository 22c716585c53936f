//! What the server serves: the built-in resource table, resources made from
//! CustomResourceDefinitions, and the discovery documents built from both.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::crd::version_priority_cmp;
use super::meta::NameRule;

/// Resource-specific behaviour beyond generic JSON storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// Nothing special.
    None,
    /// Namespaces: default label, phase, cascading delete.
    Namespace,
    /// Pods: status reset to Pending on create.
    Pod,
    /// Services: cluster IP allocation.
    Service,
    /// CustomResourceDefinitions: serve what they define.
    Crd,
}

/// What happens to `status` when the main resource is created.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusOnCreate {
    /// Keep what the client sent.
    Keep,
    /// Drop it.
    Drop,
    /// Replace it with this value.
    Reset(Value),
}

/// One additional printer column of a CRD version.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// `string`, `integer`, `date`, ...
    pub type_: String,
    /// Simple JSONPath (`.spec.x`).
    pub json_path: String,
    /// 0 = default view, >0 = `-o wide`.
    pub priority: i64,
}

/// One served resource at one group/version.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group ("" = core).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Plural (`pods`).
    pub plural: String,
    /// Singular (`pod`).
    pub singular: String,
    /// Kind (`Pod`).
    pub kind: String,
    /// List kind (`PodList`).
    pub list_kind: String,
    /// Namespace-scoped?
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Serves `/status`.
    pub status_subresource: bool,
    /// Status treatment on create.
    pub status_on_create: StatusOnCreate,
    /// Name syntax.
    pub name_rule: NameRule,
    /// Fields usable in field selectors.
    pub field_labels: Vec<String>,
    /// PUT on a missing object creates it.
    pub create_on_update: bool,
    /// DELETE answers with the object (otherwise a Success Status).
    pub return_deleted: bool,
    /// Special behaviour.
    pub special: Special,
    /// Printer columns of a CRD version (empty for built-ins).
    pub printer_columns: Vec<PrinterColumn>,
    /// The CRD that defines this resource.
    pub crd: Option<String>,
    /// The CRD version's structural schema (custom resources only).
    pub schema: Option<super::schema::CrdSchema>,
}

impl ResourceDef {
    /// `group/version` or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key of the resource (versions share storage).
    pub fn gr(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// For error messages.
    pub fn res(&self) -> super::error::Res<'_> {
        super::error::Res {
            group: &self.group,
            plural: &self.plural,
        }
    }

    pub(super) fn verbs() -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        verbs.sort_unstable();
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// Storage identity of a resource: group + plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    /// Group.
    pub group: String,
    /// Plural.
    pub plural: String,
}

/// `metadata.name`, `metadata.namespace` and `extra`: field-selector labels.
pub fn field_labels(extra: &[&str]) -> Vec<String> {
    ["metadata.name", "metadata.namespace"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

struct B {
    g: &'static str,
    v: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
}

fn builtin(b: B) -> ResourceDef {
    ResourceDef {
        group: b.g.into(),
        version: b.v.into(),
        plural: b.plural.into(),
        singular: b.kind.to_lowercase(),
        kind: b.kind.into(),
        list_kind: format!("{}List", b.kind),
        namespaced: b.namespaced,
        short_names: b.short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: false,
        status_on_create: StatusOnCreate::Keep,
        name_rule: NameRule::Subdomain,
        field_labels: field_labels(&[]),
        create_on_update: false,
        return_deleted: false,
        special: Special::None,
        printer_columns: Vec::new(),
        crd: None,
        schema: None,
    }
}

/// The built-in resources.
pub fn builtins() -> Vec<ResourceDef> {
    let b = |g, v, plural, kind, namespaced, short| {
        builtin(B {
            g,
            v,
            plural,
            kind,
            namespaced,
            short,
        })
    };
    let mut out = Vec::new();

    let mut ns = b("", "v1", "namespaces", "Namespace", false, &["ns"]);
    ns.status_subresource = true;
    ns.name_rule = NameRule::Label;
    ns.field_labels = field_labels(&["status.phase"]);
    ns.return_deleted = true;
    ns.special = Special::Namespace;
    out.push(ns);

    let mut node = b("", "v1", "nodes", "Node", false, &["no"]);
    node.status_subresource = true;
    node.field_labels = field_labels(&["spec.unschedulable"]);
    out.push(node);

    let mut pod = b("", "v1", "pods", "Pod", true, &["po"]);
    pod.status_subresource = true;
    pod.categories = vec!["all".into()];
    pod.status_on_create = StatusOnCreate::Reset(json!({"phase": "Pending"}));
    pod.field_labels = field_labels(&[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ]);
    pod.return_deleted = true;
    pod.special = Special::Pod;
    out.push(pod);

    let mut svc = b("", "v1", "services", "Service", true, &["svc"]);
    svc.status_subresource = true;
    svc.categories = vec!["all".into()];
    svc.name_rule = NameRule::Label;
    svc.status_on_create = StatusOnCreate::Reset(json!({"loadBalancer": {}}));
    svc.create_on_update = true;
    svc.return_deleted = true;
    svc.special = Special::Service;
    out.push(svc);

    let mut ep = b("", "v1", "endpoints", "Endpoints", true, &["ep"]);
    ep.create_on_update = true;
    out.push(ep);

    let mut secret = b("", "v1", "secrets", "Secret", true, &[]);
    secret.field_labels = field_labels(&["type"]);
    out.push(secret);
    out.push(b("", "v1", "configmaps", "ConfigMap", true, &["cm"]));
    out.push(b(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
    ));

    let mut ev = b("", "v1", "events", "Event", true, &["ev"]);
    ev.create_on_update = true;
    ev.field_labels = field_labels(&[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ]);
    out.push(ev);
    let mut ev2 = b("events.k8s.io", "v1", "events", "Event", true, &["ev"]);
    ev2.create_on_update = true;
    ev2.field_labels = field_labels(&[
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "reason",
        "type",
    ]);
    out.push(ev2);

    out.push(b(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["netpol"],
    ));
    out.push(b(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        &[],
    ));

    let mut ds = b("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"]);
    ds.status_subresource = true;
    ds.categories = vec!["all".into()];
    ds.status_on_create = StatusOnCreate::Drop;
    out.push(ds);

    for (plural, kind, namespaced) in [
        ("clusterroles", "ClusterRole", false),
        ("clusterrolebindings", "ClusterRoleBinding", false),
        ("roles", "Role", true),
        ("rolebindings", "RoleBinding", true),
    ] {
        let mut r = b(
            "rbac.authorization.k8s.io",
            "v1",
            plural,
            kind,
            namespaced,
            &[],
        );
        r.name_rule = NameRule::PathSegment;
        out.push(r);
    }

    let mut lease = b("coordination.k8s.io", "v1", "leases", "Lease", true, &[]);
    lease.create_on_update = true;
    out.push(lease);

    let mut crd = b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
    );
    crd.status_subresource = true;
    crd.return_deleted = true;
    crd.special = Special::Crd;
    crd.singular = "customresourcedefinition".into();
    out.push(crd);
    out
}

/// Lookup table over built-ins and CRD resources.
#[derive(Debug, Default)]
pub struct Registry {
    builtin: Vec<Arc<ResourceDef>>,
    crds: BTreeMap<String, Vec<Arc<ResourceDef>>>,
    pub(super) by_path: BTreeMap<(String, String, String), Arc<ResourceDef>>,
}

impl Registry {
    /// The built-ins only.
    pub fn new() -> Self {
        let mut r = Registry {
            builtin: builtins().into_iter().map(Arc::new).collect(),
            ..Default::default()
        };
        r.rebuild();
        r
    }

    fn rebuild(&mut self) {
        self.by_path.clear();
        for d in self.builtin.iter().chain(self.crds.values().flatten()) {
            self.by_path.insert(
                (d.group.clone(), d.version.clone(), d.plural.clone()),
                d.clone(),
            );
        }
    }

    /// Serves (or re-serves) the resources of a CRD.
    pub fn set_crd(&mut self, crd_name: &str, defs: Vec<ResourceDef>) {
        self.crds.insert(
            crd_name.to_string(),
            defs.into_iter().map(Arc::new).collect(),
        );
        self.rebuild();
    }

    /// Stops serving a CRD's resources.
    pub fn remove_crd(&mut self, crd_name: &str) {
        self.crds.remove(crd_name);
        self.rebuild();
    }

    /// Is this group/plural defined by a CRD other than `except` or by a built-in?
    pub fn plural_taken(&self, group: &str, plural: &str, except: &str) -> bool {
        self.builtin
            .iter()
            .any(|d| d.group == group && d.plural == plural)
            || self.crds.iter().any(|(n, defs)| {
                n != except && defs.iter().any(|d| d.group == group && d.plural == plural)
            })
    }

    /// The definition at a path, if served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Every served resource (all versions).
    pub fn served(&self) -> Vec<Arc<ResourceDef>> {
        self.by_path.values().cloned().collect()
    }

    /// Any served version of a storage resource (for persistence/cascades).
    pub fn any_version(&self, gr: &GroupResource) -> Option<Arc<ResourceDef>> {
        self.by_path
            .values()
            .find(|d| d.group == gr.group && d.plural == gr.plural)
            .cloned()
    }

    pub(super) fn group_versions(&self) -> BTreeMap<String, Vec<String>> {
        let mut gv: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (g, v, _) in self.by_path.keys() {
            let e = gv.entry(g.clone()).or_default();
            if !e.contains(v) {
                e.push(v.clone());
            }
        }
        for vs in gv.values_mut() {
            vs.sort_by(|a, b| version_priority_cmp(a, b));
        }
        gv
    }

    /// `/api`.
    pub fn api_versions(&self, server_addr: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}],
        })
    }

    fn group_doc(name: &str, versions: &[String]) -> Value {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({
            "name": name,
            "versions": vs,
            "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
        })
    }

    /// `/apis`.
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .group_versions()
            .iter()
            .filter(|(g, _)| !g.is_empty())
            .map(|(g, vs)| Self::group_doc(g, vs))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/<group>`.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let gv = self.group_versions();
        let vs = gv.get(group).filter(|_| !group.is_empty())?;
        let mut doc = Self::group_doc(group, vs);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .by_path
            .iter()
            .filter(|((g, v, _), _)| g == group && v == version)
            .flat_map(|(_, d)| d.discovery_entries())
            .collect();
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_shape() {
        let r = Registry::new();
        let core = r.resource_list("", "v1").unwrap();
        let pods = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "pods")
            .unwrap();
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["shortNames"][0], "po");
        assert!(
            core["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "pods/status")
        );
        let groups = r.api_group_list();
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "networking.k8s.io")
        );
        assert!(r.resource_list("nope.io", "v1").is_none());
    }
}
