//! The test suite's fake `margay-node` as a standalone process, for manual
//! runs with containerd/podman and for the benchmark when no real agent is
//! available. It is NOT the agent: the real `ipam` service over the
//! in-memory store (no Kubernetes) and a host-route installer for
//! EndpointUp, nothing else (no policy, no BGP).
//!
//! ```text
//! ip netns exec NODE fake_agent SOCKET [V4_CIDR|-] [V6_CIDR|-]
//! ```
//! Serves until killed. Host routes go into the namespace it runs in.

#[path = "../tests/common/fake_agent.rs"]
mod fake_agent;

use fake_agent::{FakeAgent, FakeAgentOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let socket = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: fake_agent SOCKET [V4_CIDR|-] [V6_CIDR|-]"))?;
    let mut opts = FakeAgentOptions::default();
    if let Some(v4) = args.next() {
        opts.v4 = if v4 == "-" { None } else { Some(v4.parse()?) };
    }
    if let Some(v6) = args.next() {
        opts.v6 = if v6 == "-" { None } else { Some(v6.parse()?) };
    }
    let _agent = FakeAgent::start(std::path::Path::new(&socket), opts)?;
    println!("fake agent serving on {socket}");
    loop {
        std::thread::park();
    }
}
