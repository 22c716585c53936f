//! Make-before-break when the peer set changes: peers that are no longer
//! wanted while new peers are coming up (the mesh giving way to route
//! reflectors, a `BGPPeer` replacing mesh sessions) stay configured until
//! every new peer is Established and has sent End-of-RIB for each family it
//! negotiated — its routes are in the RIB, so dropping the old sessions
//! changes at most a best path, never leaves a prefix without one — or
//! until [`WAIT`] has passed (logged). A peer removed with no new peer
//! coming up (a plain configuration removal) goes at once.
//!
//! This is the bookkeeping only, without I/O: [`super::speaker`] tells it
//! what it adds and what is no longer wanted, and on every status turn
//! [`Handover::step`] says which of the retiring peers may go.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bgp::driver::PeerStatus;
use bgp::fsm::State;

/// Longest time a peer that is no longer wanted waits for the new peers,
/// and a new peer is waited for.
pub const WAIT: Duration = Duration::from_secs(5);

/// New peers not up yet and the peers waiting for them.
#[derive(Debug, Default)]
pub struct Handover {
    /// Peers added whose initial table is not in yet, with when.
    pending: BTreeMap<String, Instant>,
    /// Peers no longer wanted, kept while `pending` is not empty, with when
    /// they stopped being wanted.
    retiring: BTreeMap<String, Instant>,
}

/// What one status turn decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Retiring peers to remove now: the new peers are up.
    pub remove: Vec<String>,
    /// Retiring peers to remove now although new peers are not up: their
    /// [`WAIT`] ran out.
    pub overdue: Vec<String>,
    /// New peers no longer waited for: not up within [`WAIT`].
    pub expired: Vec<String>,
}

impl Handover {
    /// `name` was added to the speaker at `now`: peers no longer wanted
    /// wait for its routes.
    pub fn added(&mut self, name: &str, now: Instant) {
        self.pending.insert(name.to_string(), now);
    }

    /// `name` is no longer wanted at `now`. Returns true when it is to stay
    /// (new peers are coming up), false when it is to be removed now.
    pub fn retire(&mut self, name: &str, now: Instant) -> bool {
        self.pending.remove(name);
        if self.pending.is_empty() {
            self.retiring.remove(name);
            return false;
        }
        self.retiring.entry(name.to_string()).or_insert(now);
        true
    }

    /// `name` is gone from the speaker (removed, or wanted again and back
    /// in service): nothing waits for it, it waits for nothing.
    pub fn forget(&mut self, name: &str) {
        self.pending.remove(name);
        self.retiring.remove(name);
    }

    /// Peers kept only until the new ones are up.
    pub fn retiring(&self) -> impl Iterator<Item = &str> {
        self.retiring.keys().map(String::as_str)
    }

    /// New peers being waited for.
    pub fn pending(&self) -> impl Iterator<Item = &str> {
        self.pending.keys().map(String::as_str)
    }

    /// Nothing to wait for.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.retiring.is_empty()
    }

    /// One status turn: new peers that are up (or past [`WAIT`]) are no
    /// longer waited for; retiring peers go when nothing is waited for any
    /// more, or when their own [`WAIT`] has run out.
    pub fn step(&mut self, status: &[PeerStatus], now: Instant) -> Step {
        let mut step = Step::default();
        self.pending.retain(|name, since| {
            if initial_table_in(status, name) {
                return false;
            }
            if now.saturating_duration_since(*since) >= WAIT {
                step.expired.push(name.clone());
                return false;
            }
            true
        });
        let waiting = !self.pending.is_empty();
        self.retiring.retain(|name, since| {
            if !waiting {
                step.remove.push(name.clone());
                false
            } else if now.saturating_duration_since(*since) >= WAIT {
                step.overdue.push(name.clone());
                false
            } else {
                true
            }
        });
        step
    }
}

/// The peer `name` is Established and has sent End-of-RIB for every
/// family it negotiated: its routes are in the RIB.
pub fn initial_table_in(status: &[PeerStatus], name: &str) -> bool {
    status.iter().any(|s| {
        s.name == name
            && s.state == State::Established
            && !s.families.is_empty()
            && s.families.iter().all(|f| s.end_of_rib.contains(f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgp::wire::{Families, Family};

    fn status(name: &str, state: State, eor: &[Family]) -> PeerStatus {
        PeerStatus {
            name: name.to_string(),
            addr: None,
            state,
            since: None,
            counters: Default::default(),
            last_error: None,
            last_update: None,
            end_of_rib: eor.iter().copied().collect(),
            families: Families::BOTH,
            bfd: None,
        }
    }

    /// The mesh giving way: the reflector session is added, the mesh
    /// sessions stay until it is Established with both End-of-RIBs.
    #[test]
    fn old_peers_stay_until_the_new_one_has_sent_its_table() {
        let t0 = Instant::now();
        let mut h = Handover::default();
        h.added("peer-rrs-n1", t0);
        assert!(h.retire("mesh-n3", t0), "a new peer is coming up: kept");
        assert!(h.retire("mesh-n4", t0));
        let ms = |n| t0 + Duration::from_millis(n);
        // Connecting, then Established with only the IPv4 table in.
        for s in [
            status("peer-rrs-n1", State::Connect, &[]),
            status("peer-rrs-n1", State::Established, &[]),
            status("peer-rrs-n1", State::Established, &[Family::Ipv4Unicast]),
        ] {
            assert_eq!(h.step(&[s], ms(300)), Step::default());
        }
        let up = status(
            "peer-rrs-n1",
            State::Established,
            &[Family::Ipv4Unicast, Family::Ipv6Unicast],
        );
        let step = h.step(&[up], ms(600));
        assert_eq!(step.remove, ["mesh-n3", "mesh-n4"]);
        assert!(step.overdue.is_empty() && step.expired.is_empty());
        assert!(h.is_idle());
    }

    /// A plain removal (nothing new coming up) is not delayed.
    #[test]
    fn a_removal_without_new_peers_goes_at_once() {
        let t0 = Instant::now();
        let mut h = Handover::default();
        assert!(!h.retire("peer-bird", t0));
        assert!(h.is_idle());
        // A new peer that is up already holds nothing either.
        h.added("mesh-n5", t0);
        let up = status(
            "mesh-n5",
            State::Established,
            &[Family::Ipv4Unicast, Family::Ipv6Unicast],
        );
        assert_eq!(h.step(&[up], t0), Step::default());
        assert!(!h.retire("mesh-n3", t0));
    }

    /// A new peer that never comes up holds the old ones at most WAIT.
    #[test]
    fn the_wait_is_bounded() {
        let t0 = Instant::now();
        let mut h = Handover::default();
        h.added("peer-rrs-n1", t0);
        assert!(h.retire("mesh-n3", t0 + Duration::from_secs(1)));
        let down = [status("peer-rrs-n1", State::Active, &[])];
        assert_eq!(h.step(&down, t0 + Duration::from_secs(4)), Step::default());
        let step = h.step(&down, t0 + WAIT);
        assert_eq!(step.expired, ["peer-rrs-n1"]);
        assert_eq!(step.remove, ["mesh-n3"], "nothing left to wait for");
        // A retiring peer's own wait runs out too while new peers keep
        // coming (each one resets nothing).
        let mut h = Handover::default();
        h.added("a", t0);
        assert!(h.retire("old", t0));
        h.added("b", t0 + Duration::from_secs(4));
        let step = h.step(&[], t0 + WAIT);
        assert_eq!(
            (step.expired, step.overdue),
            (vec!["a".to_string()], vec!["old".to_string()])
        );
        assert_eq!(h.pending().collect::<Vec<_>>(), ["b"]);
    }

    /// A peer wanted again before it went, or a new peer removed before it
    /// came up, is forgotten.
    #[test]
    fn forgotten_peers_hold_nothing() {
        let t0 = Instant::now();
        let mut h = Handover::default();
        h.added("new", t0);
        assert!(h.retire("old", t0));
        h.forget("old");
        assert_eq!(h.retiring().count(), 0);
        // The new peer itself no longer wanted: nothing to wait for.
        assert!(!h.retire("new", t0));
        assert!(h.is_idle());
    }
}
