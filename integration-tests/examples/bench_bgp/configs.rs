//! The injector's and the receivers' configurations, per address family.
//! The injector is the ToR (`TOR_IPV4` / `TOR_IPV6`, AS 64512), the
//! receiver is lab node n1 (AS 65001); an IPv6 run peers over the IPv6
//! underlay and carries only IPv6 unicast.

use std::net::IpAddr;

use integration_tests::lab::{self, TOR_IPV4, TOR_IPV6};

/// The address family of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn name(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4",
            Fam::V6 => "ipv6",
        }
    }

    /// The injector's session address.
    pub fn tor(self) -> IpAddr {
        match self {
            Fam::V4 => TOR_IPV4.into(),
            Fam::V6 => TOR_IPV6.into(),
        }
    }

    /// The receiver's (node n1's) session address.
    pub fn node(self) -> IpAddr {
        match self {
            Fam::V4 => lab::node_ipv4(1).into(),
            Fam::V6 => lab::node_ipv6(1).into(),
        }
    }

    /// `ip -4` / `ip -6`.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Fam::V4 => "-4",
            Fam::V6 => "-6",
        }
    }
}

/// Route number `i`: IPv4 /28s in 240.0.0.0/8 (reserved, never routed;
/// a million distinct IPv4 prefixes do not fit in the lab's ranges), IPv6
/// /64s in 2001:db8:8000::/36 (documentation space, away from the lab's
/// underlay 2001:db8:ffff::/64 and pods).
pub fn prefix(i: usize, fam: Fam) -> String {
    match fam {
        Fam::V4 => {
            let a = 0xF000_0000u32 + ((i as u32) << 4);
            format!("{}/28", std::net::Ipv4Addr::from(a))
        }
        Fam::V6 => {
            let a = std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0x8000 + (i >> 16) as u16,
                i as u16,
                0,
                0,
                0,
                0,
            );
            format!("{a}/64")
        }
    }
}

pub fn injector_config(n: usize, packed: bool, fam: Fam) -> String {
    let mut s = String::with_capacity(n * 56 + 1024);
    s.push_str(&format!(
        "router id {TOR_IPV4};\ntimeformat protocol iso long ms;\nprotocol device {{}}\nprotocol static statics {{ {}; \n",
        fam.name()
    ));
    for i in 0..n {
        if packed {
            s.push_str(&format!(" route {} blackhole;\n", prefix(i, fam)));
        } else {
            s.push_str(&format!(
                " route {} blackhole {{ bgp_med = {i}; }};\n",
                prefix(i, fam)
            ));
        }
    }
    // A timer that wakes BIRD's main loop every 100 ms (see the module
    // docs: without it the last feed batch can wait for the keepalive).
    s.push_str(
        "}\nprotocol babel wake {\n  ipv6 { import none; export none; };\n  \
         interface \"*\" { hello interval 100 ms; };\n}\n",
    );
    s.push_str(&format!(
        "protocol bgp recv {{\n  local {} as 64512; neighbor {} as 65001;\n  \
         disabled; hold time 240; keepalive time 1; connect delay time 1;\n  {} {{ import none; export all; }};\n}}\n",
        fam.tor(),
        fam.node(),
        fam.name()
    ));
    s
}

pub fn bird_receiver_config(fam: Fam) -> String {
    format!(
        "router id {};\ntimeformat protocol iso long ms;\ntimeformat route iso long ms;\nprotocol device {{}}\n\
         protocol kernel k {{ {f} {{ import none; export all; }}; }}\n\
         protocol bgp inj {{\n  local {} as 65001; neighbor {} as 64512;\n  \
         hold time 240; passive on;\n  {f} {{ import all; export none; }};\n}}\n",
        lab::node_ipv4(1),
        fam.node(),
        fam.tor(),
        f = fam.name()
    )
}

pub fn margay_receiver_yaml(fam: Fam) -> String {
    let listen = std::net::SocketAddr::new(fam.node(), 179);
    format!(
        "local_as: 65001\nrouter_id: {}\nlisten: [\"{listen}\"]\npeers:\n  \
         - name: inj\n    neighbor: {}\n    remote_as: 64512\n    hold_time: 240\n    passive: true\n    families: [{}]\n",
        lab::node_ipv4(1),
        fam.tor(),
        fam.name()
    )
}

/// FRR's bgpd: passive toward the injector, RFC 8212 policy off (eBGP),
/// installs through zebra (kernel protocol `bgp`, 186).
pub fn frr_receiver_config(fam: Fam) -> String {
    let tor = fam.tor();
    format!(
        "frr defaults traditional\nhostname rx\nrouter bgp 65001\n bgp router-id {}\n \
         no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n \
         neighbor {tor} remote-as 64512\n neighbor {tor} passive\n neighbor {tor} timers 80 240\n \
         address-family {} unicast\n  neighbor {tor} activate\n exit-address-family\n",
        lab::node_ipv4(1),
        fam.name()
    )
}

/// GoBGP: RIB only (no FIB here: its zebra integration panics against this
/// machine's FRR, see TESTBED.md).
pub fn gobgp_receiver_config(fam: Fam) -> String {
    format!(
        "[global.config]\n  as = 65001\n  router-id = \"{}\"\n  local-address-list = [\"{}\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = 64512\n\
         \x20 [neighbors.timers.config]\n    hold-time = 240\n\
         \x20 [neighbors.transport.config]\n    passive-mode = true\n\
         \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{}-unicast\"\n",
        lab::node_ipv4(1),
        fam.node(),
        fam.tor(),
        fam.name()
    )
}
