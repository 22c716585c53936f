//! A ping stream (one echo request every 10 ms) between namespaces, and
//! what it lost: the tests that change routing under traffic (a reflector
//! restart, the mesh giving way to reflectors) assert on its gaps.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Child, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lab::Netns;

/// A running `ping -i 0.01`.
pub struct PingStream(Child);

/// What a ping stream saw.
#[derive(Debug)]
pub struct StreamResult {
    /// Echo requests sent.
    pub sent: usize,
    /// Replies.
    pub replies: usize,
    /// Sequence numbers never answered before the last answered one.
    pub gaps: Vec<u64>,
    /// ping's summary lines.
    pub summary: String,
}

impl StreamResult {
    /// Every request answered but at most the one in flight at the stop,
    /// and at least `min` replies: the stream covered its time without a
    /// loss.
    pub fn lossless(&self, min: usize) -> bool {
        self.gaps.is_empty() && self.replies + 1 >= self.sent && self.replies >= min
    }
}

impl PingStream {
    /// Starts pinging `to` from `from`.
    pub fn start(from: &Netns, to: IpAddr) -> std::io::Result<PingStream> {
        from.command("ping")
            .args(["-n", "-i", "0.01"])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(PingStream)
    }

    /// Stops the stream (SIGINT: ping prints its summary). Only a request
    /// still in flight at the SIGINT may go unanswered after the last
    /// reply, so the gaps are the packets lost.
    pub fn stop(self) -> std::io::Result<StreamResult> {
        let pid = i32::try_from(self.0.id()).map_err(std::io::Error::other)?;
        kill(Pid::from_raw(pid), Signal::SIGINT).map_err(std::io::Error::other)?;
        let out = self.0.wait_with_output()?;
        Ok(parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

fn parse(text: &str) -> StreamResult {
    let seqs: BTreeSet<u64> = text
        .lines()
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let last = seqs.last().copied().unwrap_or(0);
    let sent = text
        .lines()
        .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
        .unwrap_or(0);
    StreamResult {
        sent,
        replies: seqs.len(),
        gaps: (1..=last).filter(|s| !seqs.contains(s)).collect(),
        summary: text
            .lines()
            .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_the_unanswered_requests_before_the_last_reply() {
        let r = parse(
            "64 bytes from 198.19.0.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
             64 bytes from 198.19.0.2: icmp_seq=3 ttl=62 time=0.1 ms\n\
             64 bytes from 198.19.0.2: icmp_seq=4 ttl=62 time=0.1 ms\n\n\
             --- 198.19.0.2 ping statistics ---\n\
             5 packets transmitted, 3 received, 40% packet loss, time 40ms\n",
        );
        assert_eq!((r.sent, r.replies, r.gaps.clone()), (5, 3, vec![2]));
        assert!(!r.lossless(1));
        let ok = parse(
            "64 bytes from x: icmp_seq=1 ttl=62\n64 bytes from x: icmp_seq=2 ttl=62\n\
             3 packets transmitted, 2 received, 33% packet loss\n",
        );
        assert!(ok.lossless(2) && !ok.lossless(3));
    }
}
