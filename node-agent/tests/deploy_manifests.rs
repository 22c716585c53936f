//! Every manifest in `deploy/` parses into its Kubernetes type without losing
//! a field (a misspelled field would be dropped silently by serde, so the
//! test checks the original is contained in the re-serialized object), and
//! the example ToR configurations parse in BIRD and FRR.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use node_agent::crd::{BGPConfiguration, BGPPeer, IPPool};
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
            if p.extension().is_some_and(|x| x == "yaml") {
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
        "Secret" => round_trip::<Secret>(doc),
        "DaemonSet" => round_trip::<DaemonSet>(doc),
        "NetworkPolicy" => round_trip::<NetworkPolicy>(doc),
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(doc),
        "IPPool" => round_trip::<IPPool>(doc),
        "BGPConfiguration" => round_trip::<BGPConfiguration>(doc),
        "BGPPeer" => round_trip::<BGPPeer>(doc),
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
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
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
