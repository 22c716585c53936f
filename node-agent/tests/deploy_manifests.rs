//! Every manifest in `deploy/` parses into its Kubernetes type without losing
//! a field (a misspelled field would be dropped silently by serde, so the
//! test checks the original is contained in the re-serialized object), and
//! the example ToR configurations parse in BIRD and FRR. The kustomize base
//! and overlays are rendered with `kubectl kustomize` and checked the same
//! way; the Prometheus Operator objects against typed structs of the fields
//! their CRDs define, and the alerts' metric names against the agent's own
//! registry.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use node_agent::k8s::crd::{BGPConfiguration, BGPPeer, IPAMConfiguration, IPPool};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [deploy_dir(), deploy_dir().join("examples")] {
        for e in std::fs::read_dir(&dir).expect("read deploy dir") {
            let p = e.expect("dir entry").path();
            // kustomization.yaml is kustomize's input, checked through
            // its rendered output below.
            if p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// `small` is contained in `big`: every key/value of `small` is in `big`.
fn contained(small: &Value, big: &Value, path: &str) -> Result<(), String> {
    match (small, big) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                let Some(w) = b.get(k) else {
                    return Err(format!("{p} was dropped (unknown or misspelled field)"));
                };
                contained(v, w, &p)?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (v, w))| contained(v, w, &format!("{path}[{i}]"))),
        // Numbers may come back as floats or ints; compare by value.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        _ if small == big => Ok(()),
        _ => Err(format!("{path}: {small} became {big}")),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    contained(doc, &back, "")
}

fn check(doc: &Value) -> Result<&'static str, String> {
    let kind = doc["kind"].as_str().ok_or("document without kind")?;
    let r = match kind {
        "Namespace" => round_trip::<Namespace>(doc),
        "ServiceAccount" => round_trip::<ServiceAccount>(doc),
        "ClusterRole" => round_trip::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
        "Role" => round_trip::<Role>(doc),
        "RoleBinding" => round_trip::<RoleBinding>(doc),
        "ConfigMap" => round_trip::<ConfigMap>(doc),
        "Service" => round_trip::<Service>(doc),
        "ServiceMonitor" => round_trip::<monitoring::ServiceMonitor>(doc),
        "PrometheusRule" => round_trip::<monitoring::PrometheusRule>(doc),
        "Secret" => round_trip::<Secret>(doc),
        "DaemonSet" => round_trip::<DaemonSet>(doc),
        "NetworkPolicy" => round_trip::<NetworkPolicy>(doc),
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(doc),
        "IPPool" => round_trip::<IPPool>(doc),
        "BGPConfiguration" => round_trip::<BGPConfiguration>(doc),
        "BGPPeer" => round_trip::<BGPPeer>(doc),
        "IPAMConfiguration" => round_trip::<IPAMConfiguration>(doc),
        "HostEndpoint" => round_trip::<node_agent::k8s::crd::HostEndpoint>(doc),
        "HostNetworkPolicy" => round_trip::<node_agent::k8s::crd::HostNetworkPolicy>(doc),
        other => return Err(format!("no type known for kind {other}")),
    };
    r.map(|()| "ok").map_err(|e| format!("{kind}: {e}"))
}

#[test]
fn every_manifest_parses_into_its_type_without_losing_fields() {
    let mut seen = 0;
    for f in yaml_files() {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        let docs = documents(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (i, doc) in docs.iter().enumerate() {
            if let Err(e) = check(doc) {
                panic!("{} document {i}: {e}", f.display());
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 15,
        "expected the whole deploy/ tree, saw {seen} documents"
    );
}

#[test]
fn a_misspelled_field_is_caught() {
    let doc: Value = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"hostNetwrok": true, "containers": []}}}
    });
    let err = check(&doc).expect_err("typo must be caught");
    assert!(err.contains("hostNetwrok"), "{err}");
}

#[test]
fn the_cni_config_in_the_configmap_is_json_with_margay_first() {
    let text = std::fs::read_to_string(deploy_dir().join("margay.yaml")).expect("read");
    let cm = documents(&text)
        .expect("margay.yaml parses")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("configmap");
    let conf: Value = serde_json::from_str(
        cm["data"]["cni_network_config"]
            .as_str()
            .expect("cni_network_config"),
    )
    .expect("conflist is JSON");
    assert_eq!(conf["plugins"][0]["type"], "margay");
    assert_eq!(conf["plugins"][1]["type"], "portmap");
}

#[test]
fn example_tor_configs_parse_in_bird_and_frr() {
    let ex = deploy_dir().join("examples");
    let run = |cmd: &mut std::process::Command| match cmd.output() {
        Ok(o) => Some((
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )),
        Err(_) => None,
    };
    match run(std::process::Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(ex.join("tor-bird.conf")))
    {
        Some((ok, err)) => assert!(ok, "BIRD rejects tor-bird.conf: {err}"),
        None => ipam::testsupport::skip(
            "BIRD check: bird not installed (scripts/install-deps installs it)",
        ),
    }
    match run(std::process::Command::new("vtysh")
        .arg("-C")
        .arg("-f")
        .arg(ex.join("tor-frr.conf")))
    {
        Some((ok, err)) => assert!(ok, "FRR rejects tor-frr.conf: {err}"),
        None => ipam::testsupport::skip(
            "FRR check: vtysh not installed (scripts/install-deps installs it)",
        ),
    }
}

/// The non-empty documents of a YAML stream; a document that does not parse
/// is an error, not skipped.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de).map_err(|e| format!("document {i}: {e}"))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

#[test]
fn broken_yaml_is_an_error_not_a_skipped_document() {
    assert!(documents("a: 1\n---\nb: [unclosed\n").is_err());
    assert_eq!(documents("---\na: 1\n---\n").map(|d| d.len()), Ok(1));
}

/// The Prometheus Operator's `monitoring.coreos.com/v1` objects, typed for
/// the fields Margay's examples use (names as in the operator's API
/// reference). Unknown fields are errors, so a misspelling is caught.
mod monitoring {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ServiceMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceMonitorSpec,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ServiceMonitorSpec {
        pub selector: LabelSelector,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace_selector: Option<NamespaceSelector>,
        pub endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub job_label: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct NamespaceSelector {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub any: Option<bool>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub match_names: Vec<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Endpoint {
        pub port: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scheme: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interval: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scrape_timeout: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub honor_labels: Option<bool>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub relabelings: Vec<Relabeling>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub metric_relabelings: Vec<Relabeling>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Relabeling {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub source_labels: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub separator: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target_label: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub regex: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub replacement: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub action: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: PrometheusRuleSpec,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PrometheusRuleSpec {
        pub groups: Vec<RuleGroup>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct RuleGroup {
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interval: Option<String>,
        pub rules: Vec<Rule>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Rule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub alert: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub record: Option<String>,
        pub expr: String,
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        pub for_: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub labels: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub annotations: BTreeMap<String, String>,
    }
}

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize <dir>`'s documents, or None (with a skip line) when
/// kubectl is not installed.
fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            ipam::testsupport::skip(
                "kustomize check: kubectl not installed (scripts/install-deps installs it)",
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(documents(&String::from_utf8_lossy(&out.stdout)).expect("kustomize output parses"))
}

#[test]
fn kustomize_base_and_overlays_render_into_valid_objects() {
    let mut rendered = Vec::new();
    for dir in ["deploy", "kustomize/cluster", "kustomize/monitoring"] {
        let Some(docs) = kustomize(&repo_dir().join(dir)) else {
            return;
        };
        for (i, doc) in docs.iter().enumerate() {
            if let Err(e) = check(doc) {
                panic!("kubectl kustomize {dir}, document {i}: {e}");
            }
        }
        rendered.push((dir, docs));
    }
    let find = |dir: &str, kind: &str, name: &str| -> Value {
        rendered
            .iter()
            .find(|(d, _)| *d == dir)
            .and_then(|(_, docs)| {
                docs.iter()
                    .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            })
            .cloned()
            .unwrap_or_else(|| panic!("{dir}: no {kind}/{name}"))
    };
    // The base is what `kubectl apply -f deploy/` installs: same objects.
    let base = &rendered[0].1;
    let direct: Vec<Value> = ["crds.yaml", "margay.yaml"]
        .iter()
        .flat_map(|f| {
            documents(&std::fs::read_to_string(deploy_dir().join(f)).expect("read")).expect("yaml")
        })
        .collect();
    assert_eq!(
        base.len(),
        direct.len(),
        "base renders a different set of objects"
    );
    // The overlay's knobs land where the agent reads them.
    let ds = find("kustomize/cluster", "DaemonSet", "margay-node");
    for c in ["initContainers", "containers"] {
        let image = ds["spec"]["template"]["spec"][c][0]["image"]
            .as_str()
            .unwrap_or("");
        assert!(
            image.starts_with("ghcr.io/margay/margay:") && !image.ends_with(":dev"),
            "{c}: {image}"
        );
    }
    let cm = find("kustomize/cluster", "ConfigMap", "margay-config");
    assert!(cm["data"]["log_level"].is_string(), "{cm}");
    assert!(
        cm["data"]["cni_network_config"].is_string(),
        "the merge must keep the base's conflist: {cm}"
    );
    // The Secret keeps the name the agent's Role grants `get` on.
    find("kustomize/cluster", "Secret", "bgp-secrets");
    let role = find("kustomize/cluster", "Role", "margay-node-secrets");
    assert!(role.to_string().contains("bgp-secrets"), "{role}");
    find("kustomize/cluster", "BGPConfiguration", "default");
    // The metrics Service selects the DaemonSet's pods on its metrics port.
    let svc = find("kustomize/monitoring", "Service", "margay-node-metrics");
    assert_eq!(
        svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"],
        "the Service must select the agent's pods"
    );
    let ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"].to_string();
    assert!(ports.contains("\"name\":\"metrics\""), "{ports}");
    let sm = find("kustomize/monitoring", "ServiceMonitor", "margay-node");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("ServiceMonitor matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor must select the metrics Service ({k})"
        );
    }

    // Every metric an alert reads is one the agent exports.
    // (A family without series prints nothing, so give each one a series.)
    let exported = {
        use node_agent::status::metrics::{ApiLabels, CniLabels, Metrics, PeerLabels, PoolLabels};
        let m = Metrics::new();
        let peer = PeerLabels {
            peer: "198.18.0.1".into(),
            kind: "global".into(),
        };
        for f in [
            &m.bgp_session_established,
            &m.bgp_prefixes_received,
            &m.bgp_prefixes_accepted,
            &m.bgp_prefixes_advertised,
        ] {
            f.get_or_create(&peer).set(1);
        }
        let pool = PoolLabels { pool: "p".into() };
        for f in [&m.ipam_blocks, &m.ipam_allocations, &m.ipam_pool_used] {
            f.get_or_create(&pool).set(1);
        }
        m.ipam_pool_size.get_or_create(&pool).set(1.0);

        let cni = CniLabels {
            op: "allocate".into(),
            result: "ok".into(),
        };
        m.cni_requests.get_or_create(&cni).inc();
        m.cni_request_seconds.get_or_create(&cni).observe(0.1);
        m.api_errors
            .get_or_create(&ApiLabels {
                resource: "pods".into(),
                verb: "list".into(),
            })
            .inc();
        m.encode()
    };
    let names: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let rule = find("kustomize/monitoring", "PrometheusRule", "margay-node");
    let mut checked = 0;
    for r in rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
    {
        let expr = r["expr"].as_str().expect("expr");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("margay_") {
                continue;
            }
            let base = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .filter(|b| names.contains(b))
                .unwrap_or(word);
            assert!(
                names.contains(&base),
                "alert {} reads {word}, which margay-node does not export (it exports {names:?})",
                r["alert"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} metric references checked");
}
