//! The BFD session state machine (RFC 5880 §6), sans IO: single steps that
//! read like the RFC, and two sessions on a simulated link with a virtual
//! clock (bring-up, poll sequences, failure detection, jitter).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bgp::bfd::driver::is_failure;
use bgp::bfd::session::SLOW_TX;
use bgp::bfd::{BfdConfig, Change, Diag, Input, Output, Packet, Session, State, Timer};

const MS: Duration = Duration::from_millis(1);

fn cfg(tx_ms: u64, rx_ms: u64, mult: u8) -> BfdConfig {
    BfdConfig {
        desired_min_tx: Duration::from_millis(tx_ms),
        required_min_rx: Duration::from_millis(rx_ms),
        detect_mult: mult,
    }
}

fn sent(out: &[Output]) -> Vec<Packet> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn changes(out: &[Output]) -> Vec<Change> {
    out.iter()
        .filter_map(|o| match o {
            Output::Changed(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn armed(out: &[Output], t: Timer) -> Option<Duration> {
    out.iter().rev().find_map(|o| match o {
        Output::Arm(x, d) if *x == t => Some(*d),
        _ => None,
    })
}

/// What a peer with discriminator 7 sends.
fn peer(state: State, your: u32) -> Packet {
    Packet {
        diag: Diag::None,
        state,
        poll: false,
        fin: false,
        cpi: false,
        demand: false,
        detect_mult: 3,
        my_disc: 7,
        your_disc: your,
        desired_min_tx: 100_000,
        required_min_rx: 100_000,
        required_min_echo_rx: 0,
    }
}

/// A session brought to Up by a peer (disc 7) with 100 ms both ways; the
/// Poll it started on going Up is answered.
fn up(c: BfdConfig, t0: Instant) -> Session {
    let mut s = Session::new(c, 42, 1, t0);
    s.handle(Input::Start, t0);
    s.handle(Input::Packet(peer(State::Init, 0)), t0);
    assert_eq!(s.state(), State::Up);
    let mut fin = peer(State::Up, 42);
    fin.fin = true;
    s.handle(Input::Packet(fin), t0);
    s
}

#[test]
fn start_sends_down_with_no_your_discriminator_at_the_slow_rate() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(100, 50, 3), 42, 1, t0);
    let out = s.handle(Input::Start, t0);
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].state, p[0].your_disc, p[0].my_disc, p[0].detect_mult),
        (State::Down, 0, 42, 3)
    );
    // §6.8.3: at least one second while not Up; Required Min RX as set.
    assert_eq!(
        (p[0].desired_min_tx, p[0].required_min_rx),
        (1_000_000, 50_000)
    );
    let tx = armed(&out, Timer::Tx).expect("tx armed");
    assert!(tx >= SLOW_TX * 3 / 4 && tx <= SLOW_TX, "{tx:?}");
}

#[test]
fn three_way_handshake_down_init_up_and_the_poll_on_up() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(100, 100, 3), 42, 1, t0);
    s.handle(Input::Start, t0);
    // Down + Down → Init, announced at once with the peer's discriminator.
    let out = s.handle(Input::Packet(peer(State::Down, 0)), t0);
    assert_eq!(s.state(), State::Init);
    let p = sent(&out);
    assert_eq!((p[0].state, p[0].your_disc), (State::Init, 7));
    assert_eq!(changes(&out)[0].to, State::Init);
    // Detection time from the peer's packet: 3 × max(100 ms, 100 ms).
    assert_eq!(armed(&out, Timer::Detect), Some(300 * MS));
    // Init + Up → Up; the faster rate goes out with a Poll.
    let out = s.handle(Input::Packet(peer(State::Up, 42)), t0);
    assert_eq!(s.state(), State::Up);
    let c = changes(&out);
    assert_eq!(
        (c[0].from, c[0].to, c[0].diag),
        (State::Init, State::Up, Diag::None)
    );
    let p = sent(&out);
    assert!(p[0].poll && !p[0].fin);
    assert_eq!(
        (p[0].state, p[0].desired_min_tx, p[0].required_min_rx),
        (State::Up, 100_000, 100_000)
    );
    // A decrease of our TX is used at once: the next packet is ≤ 100 ms away.
    assert!(armed(&out, Timer::Tx).is_some_and(|d| d <= 100 * MS));
    // Periodic packets keep the Poll bit until the Final arrives.
    let out = s.handle(Input::Timer(Timer::Tx), t0 + 100 * MS);
    assert!(sent(&out)[0].poll);
    let mut fin = peer(State::Up, 42);
    fin.fin = true;
    s.handle(Input::Packet(fin), t0 + 101 * MS);
    let out = s.handle(Input::Timer(Timer::Tx), t0 + 200 * MS);
    assert!(!sent(&out)[0].poll);
}

#[test]
fn down_and_init_received_while_down_go_init_and_up() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(100, 100, 3), 42, 1, t0);
    s.handle(Input::Start, t0);
    // Down + Init → Up directly (the peer already heard us).
    s.handle(Input::Packet(peer(State::Init, 42)), t0);
    assert_eq!(s.state(), State::Up);
    // Up + Init or Up: stays Up, no change reported.
    let out = s.handle(Input::Packet(peer(State::Init, 42)), t0);
    assert!(changes(&out).is_empty());
}

#[test]
fn a_poll_is_answered_at_once_with_a_final() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    let mut p = peer(State::Up, 42);
    p.poll = true;
    p.desired_min_tx = 50_000;
    let out = s.handle(Input::Packet(p), t0 + 10 * MS);
    let f = sent(&out);
    assert_eq!(f.len(), 1);
    assert!(f[0].fin && !f[0].poll, "{f:?}");
    // New detection time: 3 × max(100 ms ours, 50 ms theirs).
    assert_eq!(armed(&out, Timer::Detect), Some(300 * MS));
}

#[test]
fn detection_time_is_their_mult_times_the_larger_of_our_rx_and_their_tx() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 250, 3), t0);
    let mut p = peer(State::Up, 42);
    p.detect_mult = 5;
    p.desired_min_tx = 200_000;
    let out = s.handle(Input::Packet(p), t0);
    assert_eq!(armed(&out, Timer::Detect), Some(5 * 250 * MS));
    p.desired_min_tx = 400_000;
    let out = s.handle(Input::Packet(p), t0);
    assert_eq!(armed(&out, Timer::Detect), Some(5 * 400 * MS));
}

#[test]
fn transmit_interval_is_the_larger_of_our_tx_and_their_rx() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    let mut p = peer(State::Up, 42);
    p.required_min_rx = 300_000;
    s.handle(Input::Packet(p), t0);
    assert_eq!(s.status().tx_interval, Some(300 * MS));
    let out = s.handle(Input::Timer(Timer::Tx), t0);
    let d = armed(&out, Timer::Tx).expect("tx armed");
    assert!(d >= 225 * MS && d <= 300 * MS, "{d:?}");
}

#[test]
fn detection_time_expiry_takes_up_down_with_diag_1_and_forgets_the_peer() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    let out = s.handle(Input::Timer(Timer::Detect), t0 + 300 * MS);
    assert_eq!(s.state(), State::Down);
    let c = changes(&out);
    assert_eq!(
        (c[0].from, c[0].to, c[0].diag),
        (State::Up, State::Down, Diag::DetectTimeExpired)
    );
    assert!(is_failure(&c[0]));
    let p = sent(&out);
    assert_eq!(
        (p[0].state, p[0].diag, p[0].your_disc),
        (State::Down, Diag::DetectTimeExpired, 0)
    );
    // Back to the slow rate, without a Poll (not Up).
    assert_eq!((p[0].desired_min_tx, p[0].poll), (1_000_000, false));
}

#[test]
fn peer_down_while_up_is_a_failure_peer_admin_down_is_not() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    let out = s.handle(Input::Packet(peer(State::Down, 42)), t0);
    let c = changes(&out)[0];
    assert_eq!(
        (c.to, c.diag, c.remote),
        (State::Down, Diag::NeighborDown, State::Down)
    );
    assert!(is_failure(&c));

    let mut s = up(cfg(100, 100, 3), t0);
    let out = s.handle(Input::Packet(peer(State::AdminDown, 42)), t0);
    let c = changes(&out)[0];
    assert_eq!(
        (c.to, c.diag, c.remote),
        (State::Down, Diag::NeighborDown, State::AdminDown)
    );
    assert!(
        !is_failure(&c),
        "RFC 5882 §3.2: AdminDown must not take BGP down"
    );
    // While the peer stays AdminDown we stay Down (no Init).
    let out = s.handle(Input::Packet(peer(State::AdminDown, 42)), t0);
    assert!(changes(&out).is_empty());
    assert_eq!(s.state(), State::Down);
}

#[test]
fn local_admin_down_sends_diag_7_and_ignores_the_peer_until_admin_up() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    let out = s.handle(Input::AdminDown, t0);
    let p = sent(&out);
    assert_eq!((p[0].state, p[0].diag), (State::AdminDown, Diag::AdminDown));
    assert!(out.contains(&Output::Cancel(Timer::Detect)));
    assert!(!is_failure(&changes(&out)[0]));
    let out = s.handle(Input::Packet(peer(State::Down, 42)), t0);
    assert!(changes(&out).is_empty());
    assert_eq!(s.state(), State::AdminDown);
    let out = s.handle(Input::AdminUp, t0);
    assert_eq!(changes(&out)[0].to, State::Down);
    s.handle(Input::Packet(peer(State::Down, 42)), t0);
    assert_eq!(s.state(), State::Init);
}

#[test]
fn a_slower_tx_waits_for_the_final_a_faster_one_does_not() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    let out = s.handle(Input::Configure(cfg(400, 100, 3)), t0);
    let p = sent(&out);
    assert!(p[0].poll && p[0].desired_min_tx == 400_000, "{p:?}");
    // §6.8.3: the actual interval must not grow before the Final.
    assert_eq!(s.status().tx_interval, Some(100 * MS));
    let mut fin = peer(State::Up, 42);
    fin.fin = true;
    s.handle(Input::Packet(fin), t0 + 5 * MS);
    assert_eq!(s.status().tx_interval, Some(400 * MS));
    let out = s.handle(Input::Timer(Timer::Tx), t0 + 5 * MS);
    assert!(armed(&out, Timer::Tx).is_some_and(|d| d >= 300 * MS));
    // Faster again: at once (the armed timer moves earlier), with a Poll.
    let out = s.handle(Input::Configure(cfg(50, 100, 3)), t0 + 10 * MS);
    assert!(sent(&out)[0].poll);
    assert_eq!(s.status().tx_interval, Some(100 * MS), "their RX is 100 ms");
    assert!(armed(&out, Timer::Tx).is_some_and(|d| d <= 100 * MS));
}

#[test]
fn a_smaller_rx_counts_for_detection_only_after_the_final() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 300, 3), t0);
    let mut slow_peer = peer(State::Up, 42);
    slow_peer.desired_min_tx = 50_000;
    s.handle(Input::Packet(slow_peer), t0);
    assert_eq!(s.status().detect_time, Some(900 * MS));
    s.handle(Input::Configure(cfg(100, 100, 3)), t0);
    // Until the peer confirms, it may still send every 300 ms.
    let out = s.handle(Input::Packet(slow_peer), t0 + MS);
    assert_eq!(armed(&out, Timer::Detect), Some(900 * MS));
    let mut fin = slow_peer;
    fin.fin = true;
    let out = s.handle(Input::Packet(fin), t0 + 2 * MS);
    assert_eq!(armed(&out, Timer::Detect), Some(300 * MS));
}

#[test]
fn a_change_during_a_poll_is_polled_again_after_the_final() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    s.handle(Input::Configure(cfg(200, 100, 3)), t0);
    s.handle(Input::Configure(cfg(400, 100, 3)), t0);
    let mut fin = peer(State::Up, 42);
    fin.fin = true;
    s.handle(Input::Packet(fin), t0 + MS);
    // The first Poll announced 200 ms; 400 ms needs its own Final.
    assert_eq!(s.status().tx_interval, Some(200 * MS));
    let out = s.handle(Input::Timer(Timer::Tx), t0 + 150 * MS);
    assert!(sent(&out)[0].poll);
    s.handle(Input::Packet(fin), t0 + 151 * MS);
    assert_eq!(s.status().tx_interval, Some(400 * MS));
}

#[test]
fn no_periodic_packets_when_the_peer_wants_none() {
    let t0 = Instant::now();
    let mut s = up(cfg(100, 100, 3), t0);
    let mut p = peer(State::Up, 42);
    p.required_min_rx = 0;
    let out = s.handle(Input::Packet(p), t0);
    assert!(out.contains(&Output::Cancel(Timer::Tx)));
    assert_eq!(s.status().tx_interval, None);
    // Demand mode on the peer, both Up: none either (§6.8.7).
    let mut s = up(cfg(100, 100, 3), t0);
    let mut p = peer(State::Up, 42);
    p.demand = true;
    s.handle(Input::Packet(p), t0);
    assert_eq!(s.status().tx_interval, None);
    let out = s.handle(Input::Timer(Timer::Tx), t0 + 100 * MS);
    assert!(sent(&out).is_empty());
}

#[test]
fn jitter_is_0_to_25_percent_and_at_most_90_percent_with_mult_1() {
    for (mult, lo, hi) in [(3u8, 75u32, 100u32), (1, 75, 90)] {
        let t0 = Instant::now();
        let mut s = up(cfg(100, 100, mult), t0);
        let mut seen = Vec::new();
        for i in 0..2000u32 {
            let out = s.handle(Input::Timer(Timer::Tx), t0 + i * 100 * MS);
            let d = armed(&out, Timer::Tx).expect("armed");
            seen.push(d.as_micros() as u32 / 1000);
        }
        let (min, max) = (
            *seen.iter().min().expect("min"),
            *seen.iter().max().expect("max"),
        );
        assert!(min >= lo && max <= hi, "mult {mult}: {min}..{max} ms");
        // Spread over the whole band, not a constant.
        assert!(
            min <= lo + 2 && max >= hi - 2,
            "mult {mult}: {min}..{max} ms"
        );
    }
}

/// Two sessions on a link with 1 ms of delay, a virtual clock, and a switch
/// that cuts the link.
struct Link {
    t0: Instant,
    now: Instant,
    s: [Session; 2],
    timers: [BTreeMap<u8, Instant>; 2],
    wire: Vec<(Instant, usize, Packet)>,
    cut: bool,
    log: Vec<(Duration, usize, Change)>,
    sent: [u32; 2],
}

impl Link {
    fn new(a: BfdConfig, b: BfdConfig) -> Link {
        let t0 = Instant::now();
        let mut l = Link {
            t0,
            now: t0,
            s: [Session::new(a, 1, 11, t0), Session::new(b, 2, 22, t0)],
            timers: [BTreeMap::new(), BTreeMap::new()],
            wire: Vec::new(),
            cut: false,
            log: Vec::new(),
            sent: [0, 0],
        };
        l.feed(0, Input::Start);
        l.feed(1, Input::Start);
        l
    }

    fn feed(&mut self, i: usize, input: Input) {
        for o in self.s[i].handle(input, self.now) {
            match o {
                Output::Send(p) => {
                    self.sent[i] += 1;
                    if !self.cut {
                        self.wire.push((self.now + MS, 1 - i, p));
                    }
                }
                Output::Arm(t, d) => {
                    self.timers[i].insert(t as u8, self.now + d);
                }
                Output::Cancel(t) => {
                    self.timers[i].remove(&(t as u8));
                }
                Output::Changed(c) => self.log.push((self.now - self.t0, i, c)),
            }
        }
    }

    fn run_until(&mut self, end: Duration) {
        let end = self.t0 + end;
        loop {
            let timer = (0..2)
                .flat_map(|i| self.timers[i].iter().map(move |(t, at)| (*at, i, *t)))
                .min();
            let pkt = self
                .wire
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.0)
                .map(|(k, w)| (w.0, k));
            match (timer, pkt) {
                (Some((at, i, t)), p) if p.is_none_or(|(pa, _)| at < pa) => {
                    if at > end {
                        break;
                    }
                    self.now = at;
                    self.timers[i].remove(&t);
                    let t = if t == Timer::Tx as u8 {
                        Timer::Tx
                    } else {
                        Timer::Detect
                    };
                    self.feed(i, Input::Timer(t));
                }
                (_, Some((at, k))) => {
                    if at > end {
                        break;
                    }
                    self.now = at;
                    let (_, to, p) = self.wire.remove(k);
                    self.feed(to, Input::Packet(p));
                }
                _ => break,
            }
        }
        self.now = end;
    }
}

#[test]
fn two_sessions_come_up_at_once_and_detect_a_cut_within_the_detection_time() {
    let mut l = Link::new(cfg(100, 100, 3), cfg(150, 200, 4));
    l.run_until(Duration::from_millis(50));
    assert_eq!([l.s[0].state(), l.s[1].state()], [State::Up, State::Up]);
    // Poll sequences done: each sends at max(own TX, other's RX).
    l.run_until(Duration::from_secs(2));
    assert_eq!(l.s[0].status().tx_interval, Some(200 * MS));
    assert_eq!(l.s[1].status().tx_interval, Some(150 * MS));
    // A detects B with B's mult × max(A's RX, B's TX) = 4 × 150 ms; B
    // detects A with 3 × max(200, 100) = 600 ms.
    assert_eq!(l.s[0].status().detect_time, Some(600 * MS));
    assert_eq!(l.s[1].status().detect_time, Some(600 * MS));
    // ~10 s of Up: rates as negotiated (within jitter), no flap.
    let before = l.sent;
    l.run_until(Duration::from_secs(12));
    let per_sec = |i: usize| f64::from(l.sent[i] - before[i]) / 10.0;
    assert!((5.0..=6.7).contains(&per_sec(0)), "A sent {}/s", per_sec(0));
    assert!((6.6..=8.9).contains(&per_sec(1)), "B sent {}/s", per_sec(1));
    assert_eq!(
        l.log.iter().filter(|(_, _, c)| c.to == State::Down).count(),
        0
    );

    let cut_at = Duration::from_secs(12);
    l.cut = true;
    l.wire.clear();
    l.run_until(Duration::from_secs(14));
    for i in 0..2 {
        let (at, _, c) = l
            .log
            .iter()
            .find(|(_, who, c)| *who == i && c.to == State::Down)
            .copied()
            .expect("went down");
        assert_eq!(c.diag, Diag::DetectTimeExpired);
        assert!(is_failure(&c));
        let took = at - cut_at;
        assert!(took <= 600 * MS, "session {i} took {took:?}");
        assert!(took >= 600 * MS - 200 * MS, "session {i} took {took:?}");
    }
    // Restored: back Up on their own, at the slow rate handshake.
    l.cut = false;
    l.run_until(Duration::from_secs(17));
    assert_eq!([l.s[0].state(), l.s[1].state()], [State::Up, State::Up]);
}
