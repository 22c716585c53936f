//! Outgoing NAT (`IPPool.spec.natOutgoing`) end to end: a host that stands
//! for the internet, reachable only through the nodes' underlay addresses
//! (it has no route to any pod network), sees a pod's traffic arrive from
//! the pod's node with NAT on — and answers it, through conntrack — and
//! from the pod's own address with NAT off (then its answers have nowhere
//! to go). Pod-to-pod traffic across nodes keeps its pod addresses.
//! IPv4 pools NAT by default, IPv6 pools do not; both switch at run time
//! through the CRD.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::cni;
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, INTERNET_IPV4, INTERNET_IPV6, Lab, Netns};
use kube::Api;
use kube::api::{Patch, PatchParams};
use node_agent::k8s::crd::IPPool;

const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 9001;

/// A TCP server in `ns` that writes each client's address (as it sees it)
/// back to the client.
fn echo_peer(ns: &Netns) {
    let ns = Netns::existing(ns.name());
    std::thread::spawn(move || {
        let _ = ns.enter(|| {
            let l = TcpListener::bind(("::", TCP_PORT)).expect("bind");
            for s in l.incoming().flatten() {
                let mut s = s;
                if let Ok(peer) = s.peer_addr() {
                    let _ = s.write_all(peer.ip().to_canonical().to_string().as_bytes());
                }
            }
        });
    });
}

/// A UDP listener in `ns` that records the source address of every token
/// datagram it receives.
fn udp_observer(ns: &Netns) -> Arc<Mutex<HashMap<String, IpAddr>>> {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let ns = Netns::existing(ns.name());
    let out = seen.clone();
    std::thread::spawn(move || {
        let _ = ns.enter(move || {
            let s = UdpSocket::bind(("::", UDP_PORT)).expect("bind");
            let mut buf = [0u8; 128];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let token = String::from_utf8_lossy(&buf[..n]).into_owned();
                out.lock()
                    .expect("lock")
                    .insert(token, from.ip().to_canonical());
            }
        });
    });
    seen
}

/// From `pod`: the address `dst`'s echo server saw this connection come
/// from (None: no answer, e.g. the reply had no route back).
fn seen_by(pod: &Netns, dst: IpAddr) -> Option<IpAddr> {
    pod.enter(move || -> Option<IpAddr> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(dst, TCP_PORT), Duration::from_millis(700))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.parse().ok()
    })
    .ok()
    .flatten()
}

/// From `pod`: the source address a UDP datagram to `dst` arrived with.
fn udp_source(
    pod: &Netns,
    dst: IpAddr,
    observed: &Arc<Mutex<HashMap<String, IpAddr>>>,
) -> Option<IpAddr> {
    let token = format!("t{}", rand_token());
    let t = token.clone();
    pod.enter(move || {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(bind).expect("bind");
        let _ = s.send_to(t.as_bytes(), SocketAddr::new(dst, UDP_PORT));
    })
    .ok()?;
    for _ in 0..20 {
        if let Some(ip) = observed.lock().expect("lock").get(&token) {
            return Some(*ip);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn rand_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn set_nat(lab: &Lab, pool: &str, on: bool) {
    let pool = pool.to_string();
    k8s::with_client(lab.tor(), move |c| async move {
        Api::<IPPool>::all(c)
            .patch(
                &pool,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"natOutgoing": on}})),
            )
            .await
            .expect("patch pool")
    })
    .expect("client");
}

fn until<T: PartialEq + std::fmt::Debug>(what: &str, want: T, mut f: impl FnMut() -> T) {
    let mut last = None;
    let ok = lab::wait_for(what, Duration::from_secs(15), || {
        let got = f();
        let done = got == want;
        last = Some(got);
        Ok(done.then_some(()))
    });
    assert!(ok.is_ok(), "{what}: want {want:?}, last saw {last:?}");
}

#[test]
fn pods_reach_the_internet_through_outgoing_nat_and_each_other_without() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(
        &lab,
        &[("v4", "198.19.0.0/16"), ("v6", "2001:db8:100::/48")],
    )
    .expect("bootstrap");
    let agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &[]).expect("agent"))
        .collect();
    let inet = lab.add_internet().expect("internet");
    let observed = udp_observer(&inet);
    echo_peer(&inet);
    let a = cni::add_pod(&lab, &agents[0], "demo", "a", &[], &[]).expect("pod a");
    let b = cni::add_pod(&lab, &agents[1], "demo", "b", &[], &[]).expect("pod b");
    assert!(a.result.ok && b.result.ok, "{:?} {:?}", a.result, b.result);
    echo_peer(&b.ns);
    let (a4, a6) = (a.ipv4().expect("a v4"), a.ipv6().expect("a v6"));
    let n1 = lab.node("n1").expect("n1");
    let (n1v4, n1v6) = (IpAddr::V4(n1.ipv4), IpAddr::V6(n1.ipv6));
    let (inet4, inet6) = (IpAddr::V4(INTERNET_IPV4), IpAddr::V6(INTERNET_IPV6));

    // IPv4 NATs by default: the internet sees node n1, and answers.
    until("pod a -> internet (v4) NATed to n1", Some(n1v4), || {
        seen_by(&a.ns, inet4)
    });
    assert_eq!(udp_source(&a.ns, inet4, &observed), Some(n1v4));
    // Pod to pod across nodes: never NATed.
    until("pod a -> pod b keeps a's address", Some(a4), || {
        seen_by(&a.ns, b.ipv4().expect("b v4"))
    });
    until("pod a -> pod b keeps a's v6 address", Some(a6), || {
        seen_by(&a.ns, b.ipv6().expect("b v6"))
    });
    // IPv6 does not NAT by default: the datagram arrives from the pod's
    // address, and a connection gets no answer (no route back).
    until(
        "pod a -> internet (v6) from a's own address",
        Some(a6),
        || udp_source(&a.ns, inet6, &observed),
    );
    assert_eq!(seen_by(&a.ns, inet6), None);

    // Switched at run time through the CRD, both ways.
    set_nat(&lab, "v6", true);
    until(
        "pod a -> internet (v6) NATed to n1 once on",
        Some(n1v6),
        || seen_by(&a.ns, inet6),
    );
    set_nat(&lab, "v4", false);
    until(
        "pod a -> internet (v4) from a's own address once off",
        Some(a4),
        || udp_source(&a.ns, inet4, &observed),
    );
    assert_eq!(seen_by(&a.ns, inet4), None, "no NAT: no way back");
    // And pod-to-pod is still untouched.
    assert_eq!(seen_by(&a.ns, b.ipv4().expect("b v4")), Some(a4));
    drop(agents);
}
