//! The conflist that `deploy/margay.yaml` has install-cni write must be a
//! configuration this plugin accepts, as a runtime would derive it.

use cni_plugin::config::parse_request;
use serde_json::Value;

/// The `cni_network_config: |-` block of the ConfigMap, unindented.
fn conflist_from_manifest(text: &str) -> Option<String> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("cni_network_config:"));
    let head = lines.next()?;
    let key_indent = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    Some(
        body.iter()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn deployed_conflist_is_accepted() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/margay.yaml");
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("SKIP deployed_conflist_is_accepted: {path} not present");
        return;
    };
    let raw = conflist_from_manifest(&text).expect("cni_network_config block in margay.yaml");
    let list: Value = serde_json::from_str(&raw).expect("conflist is JSON");
    let plugin = list["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "margay"))
        .expect("a margay plugin in the conflist")
        .clone();
    // What libcni hands the plugin: the plugin object plus name and version.
    let mut conf = plugin;
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let req = parse_request(conf.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("deployed config rejected: {}", e.error.details()));
    assert_eq!(req.conf.name, list["name"].as_str().unwrap_or_default());
}
