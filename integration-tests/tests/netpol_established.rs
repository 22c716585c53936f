//! What happens to an open connection when a policy starts denying it.
//!
//! Margay's choice (documented in the `policy` crate): conntrack's
//! `established,related` packets are accepted before any policy chain, and
//! a policy change does not flush conntrack. So a connection that was
//! allowed when it opened keeps working after a policy would deny it; every
//! *new* connection is judged by the new policy at once. (Calico and
//! kube-router behave the same; Kubernetes leaves it to the implementation.)
//! A full table rebuild (agent start-up reconcile) also keeps open
//! connections, since it is one atomic transaction and conntrack entries live
//! outside the table.

mod netpol_support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use netpol_support::PolicyLab;
use node_agent::dataplane::policy::build::*;

const PORT: u16 = 7000;

/// An echo server in a pod: one line in, the same line out, per connection.
fn echo_server(lab: &PolicyLab, ns: &str, pod: &str) -> Result<(), String> {
    let pns = lab.pod_ns(ns, pod).ok_or("no pod")?;
    let listener = pns
        .enter(|| TcpListener::bind(("::", PORT)))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = match conn.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(w, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Connects from a pod (the socket belongs to the pod's namespace).
fn connect(lab: &PolicyLab, ns: &str, pod: &str, to: SocketAddr) -> Result<TcpStream, String> {
    let pns = lab.pod_ns(ns, pod).ok_or("no pod")?;
    let s = pns
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Sends a line and waits for its echo.
fn ping(s: &TcpStream, msg: &str) -> Result<(), String> {
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    writeln!(w, "{msg}").map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(s.try_clone().map_err(|e| e.to_string())?)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.trim() == msg {
        Ok(())
    } else {
        Err(format!("echo {line:?} for {msg:?}"))
    }
}

#[test]
fn established_connections_survive_a_denying_policy_and_a_rebuild() {
    require_root!();
    let mut lab = PolicyLab::new(2).expect("policy lab");
    echo_server(&lab, "x", "a").expect("server");
    let xa = &lab.pods[&node_agent::dataplane::policy::PodKey::new("x", "a")];
    let to4 = SocketAddr::new(IpAddr::V4(xa.ipv4.expect("v4")), PORT);
    let to6 = SocketAddr::new(IpAddr::V6(xa.ipv6.expect("v6")), PORT);
    // x/b is on the other node, x/c on the same node as x/a.
    let remote = connect(&lab, "x", "b", to4).expect("x/b connects before the policy");
    let local = connect(&lab, "x", "c", to6).expect("x/c connects before the policy");
    ping(&remote, "one").expect("echo before policy (remote)");
    ping(&local, "one").expect("echo before policy (local)");

    lab.set_policy(NetPol::new("x", "deny-ingress").build())
        .expect("deny ingress");
    ping(&remote, "two").expect("open connection keeps working after deny (remote)");
    ping(&local, "two").expect("open connection keeps working after deny (local)");
    let fresh = connect(&lab, "x", "b", to4);
    assert!(fresh.is_err(), "a new connection must be denied: {fresh:?}");
    let fresh6 = connect(&lab, "x", "c", to6);
    assert!(
        fresh6.is_err(),
        "a new connection must be denied: {fresh6:?}"
    );

    // Egress deny on the clients' side too: still established.
    lab.set_policy(NetPol::new("x", "deny-egress").types(&["Egress"]).build())
        .expect("deny egress");
    ping(&remote, "three").expect("open connection survives egress deny");

    // Start-up reconcile: a full rebuild while connections are open.
    for (e, _) in &mut lab.engines {
        e.force_full();
    }
    lab.commit().expect("full rebuild");
    ping(&remote, "four").expect("open connection survives a full rebuild (remote)");
    ping(&local, "four").expect("open connection survives a full rebuild (local)");

    lab.reset().expect("policies deleted");
    let again = connect(&lab, "x", "b", to4).expect("new connections allowed again");
    ping(&again, "five").expect("echo after delete");
}
