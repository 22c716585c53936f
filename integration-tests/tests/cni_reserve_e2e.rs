//! The IPAM reserve through the real CNI binary and the real agent: the
//! agent keeps units allocated under `margay-reserve.<node>.*`; an ADD
//! takes one (no API write on its path) and the IPAMBlock ends with the
//! pod's handle on that address; a DEL that comes before the background
//! move is done (the API server answers slowly here) frees the address;
//! the reserve is refilled.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use integration_tests::cni;
use integration_tests::k8s;
use integration_tests::lab::{Lab, Netns};

const UNITS: usize = 3;

fn allocations(lab: &Lab) -> BTreeMap<IpAddr, String> {
    k8s::allocations(lab)
        .expect("IPAM allocations")
        .into_iter()
        .map(|(h, ip)| (ip, h))
        .collect()
}

fn reserved(lab: &Lab) -> Vec<IpAddr> {
    allocations(lab)
        .into_iter()
        .filter(|(_, h)| h.starts_with("margay-reserve.n1."))
        .map(|(ip, _)| ip)
        .collect()
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

#[test]
fn add_takes_a_reserved_address_and_del_before_the_move_frees_it() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    // Every request waits: the move to the pod's handle is slow, so the
    // DEL below comes while it is still pending or in flight.
    let _api = k8s::start_apiserver_with(&lab, &["--latency-ms", "300"]).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let units = UNITS.to_string();
    let agent = k8s::start_agent(&lab, "n1", &["--ipam-reserve", &units]).expect("agent");

    wait("the reserve", Duration::from_secs(30), || {
        reserved(&lab).len() == UNITS
    });
    let before = reserved(&lab);

    // ADD: the address is one of the reserve's, and ends under the pod's
    // handle.
    let pa = cni::add_pod(&lab, &agent, "x", "a", &[], &[]).expect("pod a");
    assert!(
        pa.result.ok,
        "ADD a: {:?} {}",
        pa.result.stdout, pa.result.stderr
    );
    let ip_a: IpAddr = pa.result.ips()[0].parse().expect("ip");
    assert!(
        before.contains(&ip_a),
        "{ip_a} not from the reserve {before:?}"
    );
    wait("a's handle on its address", Duration::from_secs(10), || {
        allocations(&lab)
            .get(&ip_a)
            .is_some_and(|h| h.ends_with("ctr-a"))
    });

    // ADD b and c back to back, then DEL c and b at once: their addresses
    // were the reserve's, and their moves take slow API writes — c's waits
    // behind b's (the mover is busy), so c's DEL finds it not yet sent.
    let node = &lab.node("n1").expect("n1").ns;
    let conf = cni::margay_conf(&agent, &lab.run_dir().join("cni.log"));
    let pods: Vec<(Netns, cni::Attachment)> = ["b", "c"]
        .into_iter()
        .map(|name: &'static str| {
            k8s::with_client(lab.tor(), move |c| async move {
                k8s::create_pod(&c, "x", name, "n1", &[], &[]).await
            })
            .expect("client")
            .expect("create Pod");
            let ns = Netns::create(&lab.pod_ns_name("x", name)).expect("netns");
            let a = cni::Attachment {
                container_id: format!("ctr-{name}"),
                netns: ns.path().display().to_string(),
                ifname: "eth0".into(),
                pod_namespace: "x".into(),
                pod_name: name.to_string(),
            };
            (ns, a)
        })
        .collect();
    // The agent has seen both Pods before their ADDs.
    std::thread::sleep(Duration::from_secs(1));
    let adds: Vec<_> = pods
        .iter()
        .map(|(_, a)| cni::invoke(node, "ADD", &conf, a).expect("run ADD"))
        .collect();
    let mut gone = Vec::new();
    for ((_, a), add) in pods.iter().zip(&adds).rev() {
        assert!(add.ok, "ADD: {:?} {}", add.stdout, add.stderr);
        let ip: IpAddr = add.ips()[0].parse().expect("ip");
        assert!(before.contains(&ip), "{ip} not from the reserve {before:?}");
        let with_prev = cni::with_prev_result(&conf, &add.stdout);
        let del = cni::invoke(node, "DEL", &with_prev, a).expect("run DEL");
        assert!(del.ok, "DEL: {:?} {}", del.stdout, del.stderr);
        gone.push(ip);
    }
    drop(pods);
    // Released, not left to the reserve handle or moved to the pod
    // afterwards; and so once the agent is idle (a late move must not bring
    // them back).
    for pause in [0, 1500] {
        std::thread::sleep(Duration::from_millis(pause));
        let now = allocations(&lab);
        for ip in &gone {
            assert!(!now.contains_key(ip), "{ip} still allocated: {now:?}");
        }
        assert!(
            !now.values()
                .any(|h| h.ends_with("ctr-b") || h.ends_with("ctr-c")),
            "a deleted pod's handle holds something: {now:?}"
        );
        assert!(now.get(&ip_a).is_some_and(|h| h.ends_with("ctr-a")));
    }

    // All three units were taken, so a refill ran (below the low-water
    // mark, 2 of 3; it tops up to 3 counting what was ready when it began).
    wait("the refill", Duration::from_secs(10), || {
        let now = reserved(&lab);
        now.len() >= 2 && !now.iter().any(|ip| before.contains(ip))
    });
    let log = agent.daemon.log();
    assert!(
        !log.contains("reserve move failed"),
        "a move failed:\n{log}"
    );
    drop(pa);
}
