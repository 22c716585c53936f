//! The CRD types: defaults, validation, and the generated YAML.

use super::*;

#[test]
fn crds_in_deploy_are_generated_from_these_types() {
    let want = to_yaml().expect("CRDs serialize");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
    if std::env::var_os("MARGAY_UPDATE_CRDS").is_some() {
        std::fs::write(&path, &want).expect("write deploy/crds.yaml");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "deploy/crds.yaml is stale: run `MARGAY_UPDATE_CRDS=1 cargo test -p node-agent crds`"
    );
}

#[test]
fn crds_are_in_our_group_and_cluster_scoped_but_pod_endpoints() {
    let kinds: Vec<String> = all().iter().map(|c| c.spec.names.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            "IPPool",
            "IPAMBlock",
            "BGPConfiguration",
            "BGPPeer",
            "BGPFilter",
            "IPAMConfiguration",
            "HostEndpoint",
            "HostNetworkPolicy",
            "PodEndpoint"
        ]
    );
    for crd in all() {
        assert_eq!(crd.spec.group, GROUP);
        // A PodEndpoint lives in its Pod's namespace (owner reference).
        let scope = if crd.spec.names.kind == "PodEndpoint" {
            "Namespaced"
        } else {
            "Cluster"
        };
        assert_eq!(crd.spec.scope, scope, "{}", crd.spec.names.kind);
        let v = &crd.spec.versions[0];
        assert!(v.served && v.storage);
        assert!(v.schema.is_some(), "{} has a schema", crd.spec.names.kind);
    }
}

/// Every key of `value` (recursively, through arrays) is declared in
/// `schema`; returns the undeclared paths.
fn undeclared(value: &serde_json::Value, schema: &serde_json::Value, path: &str) -> Vec<String> {
    match value {
        serde_json::Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| {
                let p = format!("{path}.{k}");
                match schema.pointer(&format!("/properties/{k}")) {
                    Some(s) => undeclared(v, s, &p),
                    None => vec![p],
                }
            })
            .collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .flat_map(|v| {
                undeclared(
                    v,
                    schema.get("items").unwrap_or(&serde_json::Value::Null),
                    path,
                )
            })
            .collect(),
        _ => vec![],
    }
}

#[test]
fn ipamblock_schema_declares_every_field_the_ipam_model_writes() {
    let spec: ipam::IpamBlockSpec = serde_json::from_value(serde_json::json!({
        "cidr": "198.19.0.0/30",
        "affinity": "host:n1",
        "allocations": [{"ordinal": 0, "handle": "k8s-pod-network.abc", "pod": "p",
                         "namespace": "ns", "node": "n1", "sequence": 3}],
        "free": [{"ordinal": 1, "releasedAt": 1700000000000u64}, {"ordinal": 2}, {"ordinal": 3}],
        "sequence": 3,
        "createdAt": 1700000000000u64
    }))
    .expect("a full block parses");
    let written = serde_json::to_value(IPAMBlockSpec(spec)).expect("serialize");
    // Whatever the model writes today, with every optional field filled.
    for key in [
        "cidr",
        "affinity",
        "allocations",
        "free",
        "sequence",
        "createdAt",
    ] {
        assert!(
            written.get(key).is_some(),
            "model no longer writes {key}: {written}"
        );
    }
    let crd = serde_json::to_value(IPAMBlock::crd()).expect("crd json");
    let schema = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .expect("spec schema");
    let missing = undeclared(&written, schema, "spec");
    assert!(
        missing.is_empty(),
        "pruned by a real API server: {missing:?}"
    );
}

#[test]
fn ippool_block_size_defaults_per_family_and_is_checked() {
    let pool = |cidr: &str, bs: Option<u8>| IPPoolSpec {
        cidr: Cidr(cidr.into()),
        block_size: bs,
        node_selector: None,
        disabled: false,
        allowed_uses: vec![],
        disable_bgp_export: false,
        nat_outgoing: None,
        vxlan_mode: None,
    };
    assert_eq!(pool("198.19.0.0/16", None).effective_block_size(), Ok(26));
    assert_eq!(pool("2001:db8::/48", None).effective_block_size(), Ok(122));
    assert_eq!(
        pool("198.19.0.0/16", Some(24)).effective_block_size(),
        Ok(24)
    );
    assert!(
        pool("198.19.0.0/16", Some(8))
            .effective_block_size()
            .is_err()
    );
    assert!(
        pool("198.19.0.0/16", Some(33))
            .effective_block_size()
            .is_err()
    );
    assert!(pool("not-a-cidr", None).effective_block_size().is_err());
}

#[test]
fn bgp_peer_validation_names_the_problem() {
    let ok = BGPPeerSpec {
        peer_ip: Some("198.18.0.1".into()),
        as_number: Some(65000),
        ..Default::default()
    };
    assert_eq!(ok.validate(), Ok(()));
    let both = BGPPeerSpec {
        peer_selector: Some(LabelSelector::default()),
        ..ok.clone()
    };
    assert_eq!(
        both.validate().map_err(|e| e.field),
        Err("peerIP/peerSelector")
    );
    let no_as = BGPPeerSpec {
        as_number: None,
        ..ok.clone()
    };
    assert_eq!(no_as.validate().map_err(|e| e.field), Err("asNumber"));
    let bad_ip = BGPPeerSpec {
        peer_ip: Some("198.18.0.300".into()),
        ..ok.clone()
    };
    assert_eq!(bad_ip.validate().map_err(|e| e.field), Err("peerIP"));
    let bad_timers = BGPPeerSpec {
        hold_time: Some(9),
        keepalive_time: Some(9),
        ..ok.clone()
    };
    assert_eq!(bad_timers.validate().map_err(|e| e.field), Err("holdTime"));
    let bfd = |b: BGPPeerBFD| BGPPeerSpec {
        bfd: Some(b),
        ..ok.clone()
    };
    assert_eq!(bfd(BGPPeerBFD::default()).validate(), Ok(()));
    assert_eq!(
        bfd(BGPPeerBFD {
            min_rx: Some(0),
            ..Default::default()
        })
        .validate()
        .map_err(|e| e.field),
        Err("bfd.minRx")
    );
    assert_eq!(
        bfd(BGPPeerBFD {
            multiplier: Some(0),
            ..Default::default()
        })
        .validate()
        .map_err(|e| e.field),
        Err("bfd.multiplier")
    );
}

#[test]
fn peer_addresses_take_an_optional_port() {
    assert_eq!(
        parse_peer_address("198.18.0.1").map(|a| a.to_string()),
        Ok("198.18.0.1:179".into())
    );
    assert_eq!(
        parse_peer_address("[2001:db8::1]:1179").map(|a| a.to_string()),
        Ok("[2001:db8::1]:1179".into())
    );
    assert!(parse_peer_address("2001:db8::1:1179:x").is_err());
}

#[test]
fn per_node_configuration_overrides_only_what_it_sets() {
    let global = BGPConfigurationSpec {
        as_number: Some(64512),
        node_to_node_mesh_enabled: Some(false),
        listen_port: Some(179),
        node_to_node_mesh_max_nodes: Some(50),
        ..Default::default()
    };
    let node = BGPConfigurationSpec {
        as_number: Some(65001),
        // Cluster-wide only: a node cannot pick its own topology size.
        node_to_node_mesh_max_nodes: Some(3),
        ..Default::default()
    };
    let eff = global.overlay(&node);
    assert_eq!(eff.as_number(), 65001);
    assert_eq!(eff.node_to_node_mesh_enabled, Some(false));
    assert_eq!(eff.mesh_max_nodes(), 50);
    assert_eq!(eff.listen_port(), 179);
    assert_eq!(BGPConfigurationSpec::default().mesh_max_nodes(), 100);
    assert_eq!(BGPConfigurationSpec::default().as_number(), DEFAULT_AS);
}

/// `allowedUses` has one default, Calico's (Workload and Tunnel), whether
/// the field is absent or empty, and it is the same as the IPAM model's
/// own default (a pool made by the allocator's API, not from a CRD).
#[test]
fn ippool_allowed_uses_default_to_workload_and_tunnel_like_the_ipam_model() {
    let spec = |json: serde_json::Value| -> IPPoolSpec {
        serde_json::from_value(json).expect("IPPool spec")
    };
    let absent = spec(serde_json::json!({"cidr": "198.19.0.0/16"}));
    let empty = spec(serde_json::json!({"cidr": "198.19.0.0/16", "allowedUses": []}));
    let tunnel = spec(serde_json::json!({"cidr": "198.19.0.0/16", "allowedUses": ["Tunnel"]}));
    let both = [AllowedUse::Workload, AllowedUse::Tunnel];
    assert_eq!(absent.effective_allowed_uses(), both);
    assert_eq!(empty.effective_allowed_uses(), both);
    assert_eq!(tunnel.effective_allowed_uses(), [AllowedUse::Tunnel]);
    let model = ipam::PoolParams::new("198.19.0.0/16".parse().expect("cidr"));
    assert_eq!(model.allowed_uses, absent.effective_allowed_uses());
}
