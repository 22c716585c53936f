//! Hostile peers against margay-bgp: a raw TCP client in another lab node
//! sends hand-made bytes — a malformed UPDATE, a too-long message, bad
//! OPENs, more prefixes than max-prefix — and must get the RFC-correct
//! reaction (NOTIFICATION code/subcode/data, or RFC 7606 treat-as-withdraw
//! with the session kept), while the speaker and its session with BIRD stay
//! up and keep forwarding.

mod bgp_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bgp_support::{
    MargayBgp, bird_config, kernel_route, margay_yaml, peer_yaml, wait_bird_established,
    wait_kernel,
};
use integration_tests::lab::{Bird, Lab, Netns};

const T: Duration = Duration::from_secs(20);
const HOSTILE_AS: u32 = 65066;
const MARGAY: &str = "198.18.0.11:179";

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

fn open(version: u8, asn: u32) -> Vec<u8> {
    let mut caps = Vec::new();
    caps.extend_from_slice(&[1, 4, 0, 1, 0, 1]); // MP IPv4 unicast
    caps.extend_from_slice(&[65, 4]); // 4-octet AS
    caps.extend_from_slice(&asn.to_be_bytes());
    let mut b = vec![version];
    b.extend_from_slice(&(asn.min(23456) as u16).to_be_bytes());
    b.extend_from_slice(&9u16.to_be_bytes());
    b.extend_from_slice(&Ipv4Addr::new(198, 18, 0, 12).octets());
    b.push(caps.len() as u8 + 2);
    b.push(2);
    b.push(caps.len() as u8);
    b.extend_from_slice(&caps);
    msg(1, &b)
}

fn keepalive() -> Vec<u8> {
    msg(4, &[])
}

/// An UPDATE announcing `nlri` (/24s under 198.19.0.0/16) with ORIGIN
/// `origin` (0-2 valid), AS_PATH [HOSTILE_AS], NEXT_HOP 198.18.0.12.
fn update(origin: u8, nlri: &[u8]) -> Vec<u8> {
    let mut attrs = vec![0x40, 1, 1, origin];
    attrs.extend_from_slice(&[0x40, 2, 6, 2, 1]);
    attrs.extend_from_slice(&HOSTILE_AS.to_be_bytes());
    attrs.extend_from_slice(&[0x40, 3, 4, 198, 18, 0, 12]);
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    for third in nlri {
        b.extend_from_slice(&[24, 198, 19, *third]);
    }
    msg(2, &b)
}

/// A received NOTIFICATION: (code, subcode, data).
type Notif = (u8, u8, Vec<u8>);

struct Client {
    s: TcpStream,
}

impl Client {
    fn connect() -> Client {
        let addr: SocketAddr = MARGAY.parse().expect("addr");
        let s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect to margay");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Client { s }
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send");
    }

    /// Next message (type, body), `None` on EOF; waits up to `wait`.
    fn read(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        let mut hdr = [0u8; 19];
        let mut got = 0;
        while got < 19 {
            match self.s.read(&mut hdr[got..]) {
                Ok(0) => return None,
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "no message from margay in {wait:?}"
                    );
                }
                Err(_) => return None,
            }
        }
        let len = usize::from(u16::from_be_bytes([hdr[16], hdr[17]]));
        let mut body = vec![0u8; len.saturating_sub(19)];
        let mut got = 0;
        while got < body.len() {
            match self.s.read(&mut body[got..]) {
                Ok(0) => return None,
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(Instant::now() < deadline, "truncated message from margay");
                }
                Err(_) => return None,
            }
        }
        Some((hdr[18], body))
    }

    /// Reads until a NOTIFICATION (returned) or EOF/timeout (`None`),
    /// skipping KEEPALIVEs and UPDATEs.
    fn notification(&mut self, wait: Duration) -> Option<Notif> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.read(left) {
                Some((3, b)) if b.len() >= 2 => return Some((b[0], b[1], b[2..].to_vec())),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// No NOTIFICATION and no close for `wait` (KEEPALIVEs answered).
    fn stays_up(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self.read_some(Duration::from_millis(300)) {
                Ok(Some((3, b))) => panic!("unexpected NOTIFICATION {b:?}"),
                Ok(Some((4, _))) => self.send(&keepalive()),
                Ok(Some(_)) | Ok(None) => {}
                Err(()) => return false,
            }
        }
        true
    }

    /// Like `read` but a quiet period is `Ok(None)` and EOF is `Err`.
    fn read_some(&mut self, wait: Duration) -> Result<Option<(u8, Vec<u8>)>, ()> {
        let mut peek = [0u8; 1];
        self.s.set_read_timeout(Some(wait)).expect("timeout");
        let r = match self.s.peek(&mut peek) {
            Ok(0) => Err(()),
            Ok(_) => self.read(Duration::from_secs(2)).map(Some).ok_or(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(_) => Err(()),
        };
        self.s
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        r
    }

    /// OPEN/KEEPALIVE exchange up to Established (retrying the connection
    /// while margay finishes tearing the previous one down).
    fn establish() -> Client {
        let start = Instant::now();
        loop {
            let mut c = Client::connect();
            c.send(&open(4, HOSTILE_AS));
            let mut ok = false;
            while let Some((ty, _)) = c.read(Duration::from_secs(3)) {
                match ty {
                    1 => c.send(&keepalive()),
                    4 => {
                        ok = true;
                        break;
                    }
                    _ => break,
                }
            }
            if ok {
                return c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "hostile client cannot establish"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn in_ns<R: Send + 'static>(ns: &Netns, f: impl FnOnce() -> R + Send + 'static) -> R {
    ns.enter(f).expect("run in namespace")
}

/// The speaker and its BIRD session are unharmed.
fn assert_speaker_healthy(m: &mut MargayBgp, lab: &Lab) {
    assert!(m.daemon.is_running(), "margay-bgp died: {}", m.log());
    assert_eq!(m.peer_state("tor"), "Established", "{}", m.status());
    let n1 = lab.node("n1").expect("n1");
    assert!(!kernel_route(&n1.ns, "198.19.200.0/24").trim().is_empty());
}

#[test]
fn hostile_peer_gets_rfc_reactions_and_the_speaker_stays_up() {
    require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let n2ns = Netns::existing(lab.node("n2").expect("n2").ns.name());
    let bird = Bird::start(
        lab.tor(),
        lab.run_dir(),
        "tor-bird",
        &bird_config(
            "198.18.0.1",
            "198.18.0.1",
            "2001:db8:ffff::1",
            64512,
            &["198.19.200.0/24"],
            &[("n1", "198.18.0.11", 65001, "")],
        ),
    )
    .expect("bird");
    let peers = [
        peer_yaml(
            "tor",
            "198.18.0.1",
            "64512",
            "next_hop_v6: 2001:db8:ffff::b",
        ),
        peer_yaml(
            "hostile",
            "198.18.0.12",
            &HOSTILE_AS.to_string(),
            "passive: true\nmax_prefix: 5\nfamilies: [ipv4]",
        ),
    ];
    let yaml = margay_yaml(65001, "198.18.0.11", &["198.19.1.0/26"], &peers, "");
    let mut m = MargayBgp::start(&n1.ns, lab.run_dir(), "margay-n1", &yaml);
    m.wait_established("tor", T);
    wait_bird_established(&bird, "n1", T);
    wait_kernel(&n1.ns, "198.19.200.0/24", "via 198.18.0.1", true, T);

    // 1. RFC 7606 §7.1: a malformed ORIGIN is treat-as-withdraw — the
    // session stays, the route it carried (announced before) goes away, and
    // a later good UPDATE is still accepted.
    let held = in_ns(&n2ns, || {
        let mut c = Client::establish();
        c.send(&update(0, &[100]));
        c
    });
    wait_kernel(&n1.ns, "198.19.100.0/24", "via 198.18.0.12", true, T);
    let mut c = in_ns(&n2ns, move || {
        let mut c = held;
        c.send(&update(7, &[100]));
        c.send(&update(0, &[101]));
        assert!(
            c.stays_up(Duration::from_secs(1)),
            "session kept after treat-as-withdraw"
        );
        c
    });
    wait_kernel(&n1.ns, "198.19.100.0/24", "", false, T);
    wait_kernel(&n1.ns, "198.19.101.0/24", "via 198.18.0.12", true, T);
    assert_eq!(m.peer_state("hostile"), "Established");
    assert_speaker_healthy(&mut m, &lab);

    // 2. Withdrawn Routes Length past the end of the message: the NLRI
    // cannot be found, so the session is reset — 3/1 Malformed Attribute
    // List (RFC 4271 §6.3, RFC 7606 §5.3). Its routes go with it.
    let n = in_ns(&n2ns, move || {
        c.send(&msg(2, &[0, 200, 0, 0]));
        c.notification(Duration::from_secs(5))
    });
    assert_eq!(n.as_ref().map(|n| (n.0, n.1)), Some((3, 1)), "{n:?}");
    wait_kernel(&n1.ns, "198.19.101.0/24", "", false, T);
    assert_speaker_healthy(&mut m, &lab);

    // 3. A message longer than 4096 octets: 1/2 Bad Message Length, data =
    // the erroneous length field.
    let n = in_ns(&n2ns, || {
        let mut c = Client::establish();
        let mut big = vec![0xff; 16];
        big.extend_from_slice(&5000u16.to_be_bytes());
        big.push(2);
        big.resize(5000, 0);
        c.send(&big);
        c.notification(Duration::from_secs(5))
    });
    assert_eq!(n, Some((1, 2, 5000u16.to_be_bytes().to_vec())));
    assert_speaker_healthy(&mut m, &lab);

    // 4. Bad OPENs: version 3 → 2/1 Unsupported Version Number with our
    // highest version (2 octets); the wrong AS → 2/2 Bad Peer AS.
    let (v, asn) = in_ns(&n2ns, || {
        let mut c = Client::connect();
        c.send(&open(3, HOSTILE_AS));
        let v = c.notification(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
        let mut c = Client::connect();
        c.send(&open(4, 65099));
        (v, c.notification(Duration::from_secs(5)))
    });
    assert_eq!(v, Some((2, 1, vec![0, 4])));
    assert_eq!(asn.as_ref().map(|n| (n.0, n.1)), Some((2, 2)), "{asn:?}");
    assert_speaker_healthy(&mut m, &lab);

    // 5. More prefixes than max-prefix (5): Cease/1 with AFI, SAFI and the
    // limit (RFC 4486), and none of the peer's routes stay installed.
    let n = in_ns(&n2ns, || {
        let mut c = Client::establish();
        c.send(&update(0, &[110, 111, 112, 113, 114, 115]));
        c.notification(Duration::from_secs(5))
    });
    let n = n.expect("NOTIFICATION for max-prefix");
    assert_eq!((n.0, n.1), (6, 1), "{n:?}");
    assert_eq!(n.2, vec![0, 1, 1, 0, 0, 0, 5], "AFI 1, SAFI 1, limit 5");
    std::thread::sleep(Duration::from_millis(300));
    for third in 110..=115 {
        assert!(
            kernel_route(&n1.ns, &format!("198.19.{third}.0/24"))
                .trim()
                .is_empty()
        );
    }
    assert_speaker_healthy(&mut m, &lab);
    let st = m.peer("hostile").expect("hostile status");
    assert!(
        st["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{st}"
    );
    // And BIRD still has our route: the other session never flapped.
    let p = bird.birdc("show protocols all n1").expect("birdc");
    assert!(p.contains("Established"), "{p}");
    assert!(!kernel_route(lab.tor(), "198.19.1.0/26").trim().is_empty());
}
