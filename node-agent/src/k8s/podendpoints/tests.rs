use super::*;
use crate::k8s::ipam::view::LocalAllocation;

fn pod(ns: &str, name: &str, node: &str, extra: serde_json::Value) -> Pod {
    let mut v = serde_json::json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"),
                     "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"containerPort": 9000}
        ]}]},
        "status": {"phase": "Running"}
    });
    json_merge(&mut v, extra);
    serde_json::from_value(v).expect("pod")
}

fn json_merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn alloc(ns: &str, pod: &str, ip: &str) -> LocalAllocation {
    LocalAllocation {
        ip: ip.parse().expect("ip"),
        namespace: ns.into(),
        pod: pod.into(),
        handle: format!("h-{pod}"),
        borrowed: false,
        host_if: "cali0".into(),
    }
}

#[test]
fn publishes_this_nodes_running_pod_network_pods_with_an_address() {
    let pods = [
        // Addresses from IPAM before the kubelet reports them.
        pod("a", "fresh", "n1", serde_json::json!({})),
        // Addresses from status (and IPAM), merged.
        pod(
            "a",
            "web",
            "n1",
            serde_json::json!({"status": {"podIPs": [{"ip": "198.19.0.7"}, {"ip": "2001:db8::7"}]}}),
        ),
        pod(
            "a",
            "remote",
            "n2",
            serde_json::json!({"status": {"podIPs": [{"ip": "198.19.1.1"}]}}),
        ),
        pod(
            "a",
            "host",
            "n1",
            serde_json::json!({"spec": {"hostNetwork": true}, "status": {"podIPs": [{"ip": "198.18.0.11"}]}}),
        ),
        pod(
            "a",
            "done",
            "n1",
            serde_json::json!({"status": {"phase": "Succeeded", "podIPs": [{"ip": "198.19.0.9"}]}}),
        ),
        pod(
            "a",
            "pending",
            "n1",
            serde_json::json!({"status": {"phase": "Pending"}}),
        ),
    ];
    let view = IpamView {
        local: vec![
            alloc("a", "fresh", "198.19.0.5"),
            alloc("a", "web", "198.19.0.7"),
            // A standalone container (no pod) is never published.
            alloc("", "", "198.19.0.8"),
        ],
        ..IpamView::default()
    };
    let d = desired("n1", pods.iter(), &view);
    assert_eq!(
        d.keys().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
        ["fresh", "web"]
    );
    let (uid, web) = &d[&("a".to_string(), "web".to_string())];
    assert_eq!(uid, "uid-web");
    assert_eq!(web.node, "n1");
    assert_eq!(
        web.addresses,
        [
            "198.19.0.7".parse::<IpAddr>().expect("ip"),
            "2001:db8::7".parse().expect("ip")
        ]
    );
    assert_eq!(web.labels, [("app".to_string(), "web".to_string())].into());
    // Named ports only, protocol defaulted to TCP, sorted.
    assert_eq!(
        web.named_ports,
        [
            NamedPort {
                name: "dns".into(),
                protocol: "UDP".into(),
                port: 53
            },
            NamedPort {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 8080
            },
        ]
    );
    assert_eq!(
        d[&("a".to_string(), "fresh".to_string())].1.addresses,
        ["198.19.0.5".parse::<IpAddr>().expect("ip")]
    );
}

#[test]
fn an_endpoint_reads_back_as_the_pod_policy_knows() {
    let p = pod(
        "a",
        "web",
        "n1",
        serde_json::json!({"status": {"podIPs": [{"ip": "2001:db8::7"}, {"ip": "198.19.0.7"}]}}),
    );
    let d = desired("n1", [&p], &IpamView::default());
    let (uid, spec) = &d[&("a".to_string(), "web".to_string())];
    let ep = object("a", "web", uid, spec);
    assert_eq!(ep.metadata.labels, None, "the node is spec.node only");
    assert!(same(&ep, uid, spec));
    let theirs = PodEndpointSpec {
        node: "n2".into(),
        ..spec.clone()
    };
    assert!(!same(&ep, uid, &theirs), "another node's");
    assert!(!same(&ep, "other-uid", spec), "an older pod's");
    // What policy gets from the endpoint is what it gets from the Pod
    // (apart from unnamed ports, which no rule can name).
    let from_ep = ep.to_pod_info().expect("info");
    let mut from_pod = policy::PodInfo::from_k8s(&p).expect("info");
    let mut named: Vec<_> = from_pod
        .ports
        .iter()
        .filter(|c| c.name.is_some())
        .cloned()
        .collect();
    named.sort_by(|a, b| a.name.cmp(&b.name));
    from_pod.ports = named.into();
    from_pod.ips.sort();
    assert_eq!(from_ep, from_pod);
    let bad = PodEndpoint {
        spec: PodEndpointSpec {
            named_ports: vec![NamedPort {
                name: "x".into(),
                protocol: "GRE".into(),
                port: 1,
            }],
            ..spec.clone()
        },
        ..ep
    };
    assert!(bad.to_pod_info().is_err_and(|e| e.contains("named port x")));
}
