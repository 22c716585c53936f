//! One BFD session in Asynchronous mode (RFC 5880 §6), sans IO.
//!
//! `Session::handle(input, now) -> Vec<Output>`: the driver feeds received
//! Control packets (already decoded, checked and demultiplexed to this
//! session) and timer expiries; the session answers with packets to send,
//! timers to (re)arm or cancel, and state changes for its client (BGP).
//!
//! What follows the RFC, section by section:
//! - §6.2 / §6.8.6: the Down → Init → Up three-way handshake; a received
//!   AdminDown or Down takes an Up session Down (Diag 3).
//! - §6.8.3: while not Up, Desired Min TX is at least one second; on Up the
//!   configured value is advertised with a Poll Sequence (§6.5). A faster
//!   rate is used at once, a slower one (or, for the detection time, a
//!   smaller Required Min RX) only once the Final arrives.
//! - §6.8.2 / §6.8.7: the transmit interval is the larger of our Desired Min
//!   TX and the peer's Required Min RX, less 0–25 % of random jitter (at most
//!   90 % of it when Detect Mult is 1); nothing periodic when the peer's
//!   Required Min RX is 0 or it runs Demand mode and both sides are Up.
//! - §6.8.4: the detection time is the peer's Detect Mult times the larger of
//!   our Required Min RX and its Desired Min TX; when it passes, an Init/Up
//!   session goes Down (Diag 1) and Your Discriminator is forgotten.
//! - A Poll is answered at once with a Final, outside the periodic schedule.
//!   A state change is also announced at once (BIRD and FRR do the same, see
//!   the captures in `packet.rs`), which shortens the handshake from seconds
//!   to a round trip.
//!
//! Not implemented: authentication (§6.7), Demand mode on our side, the Echo
//! function, the passive role (we always transmit).

use std::time::{Duration, Instant};

use super::packet::{Diag, Packet, State, micros};

/// §6.8.3: the least Desired Min TX while the session is not Up.
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// A session's timer parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BfdConfig {
    /// Desired Min TX Interval: how often we would like to send.
    pub desired_min_tx: Duration,
    /// Required Min RX Interval: how often we can take the peer's packets.
    pub required_min_rx: Duration,
    /// Detect Mult: packets the peer may miss before we declare it down.
    pub detect_mult: u8,
}

impl Default for BfdConfig {
    /// FRR's defaults: 300 ms both ways, multiplier 3.
    fn default() -> Self {
        BfdConfig {
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
        }
    }
}

/// Timers the session asks the driver to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The next periodic transmission.
    Tx,
    /// The detection time: no packet from the peer for this long.
    Detect,
}

/// Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Begin transmitting.
    Start,
    /// A valid Control packet for this session.
    Packet(Packet),
    /// A timer fired.
    Timer(Timer),
    /// Take the session administratively down (§6.8.16).
    AdminDown,
    /// Leave AdminDown.
    AdminUp,
    /// New timer parameters (a Poll Sequence if Up).
    Configure(BfdConfig),
}

/// A state change, for the session's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Our diagnostic for it.
    pub diag: Diag,
    /// The peer's state as last heard. A session that went Down because the
    /// peer said AdminDown must not take its client down (RFC 5882 §3.2).
    pub remote: State,
}

/// Actions for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this packet now.
    Send(Packet),
    /// (Re)arm a timer to fire after this long.
    Arm(Timer, Duration),
    /// Cancel a timer.
    Cancel(Timer),
    /// The session state changed.
    Changed(Change),
}

/// A session's state for status displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Our state.
    pub state: State,
    /// The peer's state as last heard.
    pub remote_state: State,
    /// Our discriminator.
    pub local_disc: u32,
    /// The peer's (0 while unknown).
    pub remote_disc: u32,
    /// Our current diagnostic.
    pub diag: Diag,
    /// Transmit interval before jitter (`None`: no periodic packets).
    pub tx_interval: Option<Duration>,
    /// Detection time (`None` until a packet arrived).
    pub detect_time: Option<Duration>,
    /// When the state was entered.
    pub since: Instant,
}

/// One BFD session.
#[derive(Debug)]
pub struct Session {
    cfg: BfdConfig,
    state: State,
    remote_state: State,
    local_disc: u32,
    remote_disc: u32,
    diag: Diag,
    /// bfd.DesiredMinTxInterval: what we advertise.
    desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval: what we advertise.
    required_min_rx: Duration,
    /// Our TX interval in effect (an increase waits for the Final).
    tx_in_use: Duration,
    /// Our RX interval for the detection time (a decrease waits for the Final).
    detect_rx: Duration,
    remote_min_rx: Duration,
    remote_min_tx: Duration,
    remote_mult: u8,
    remote_demand: bool,
    /// The (TX, RX) a running Poll Sequence announces.
    poll: Option<(Duration, Duration)>,
    tx_deadline: Option<Instant>,
    detect_deadline: Option<Instant>,
    since: Instant,
    rng: u64,
}

impl Session {
    /// A session in Down with our discriminator (non-zero, unique among the
    /// driver's sessions) and a seed for the transmit jitter.
    pub fn new(cfg: BfdConfig, local_disc: u32, seed: u64, now: Instant) -> Self {
        let cfg = sanitize(cfg);
        let slow = cfg.desired_min_tx.max(SLOW_TX);
        Session {
            cfg,
            state: State::Down,
            remote_state: State::Down,
            local_disc: local_disc.max(1),
            remote_disc: 0,
            diag: Diag::None,
            desired_min_tx: slow,
            required_min_rx: cfg.required_min_rx,
            tx_in_use: slow,
            detect_rx: cfg.required_min_rx,
            // §6.8.1: initialised to 1 µs.
            remote_min_rx: Duration::from_micros(1),
            remote_min_tx: Duration::ZERO,
            remote_mult: 0,
            remote_demand: false,
            poll: None,
            tx_deadline: None,
            detect_deadline: None,
            since: now,
            rng: seed | 1,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our discriminator.
    pub fn local_disc(&self) -> u32 {
        self.local_disc
    }

    /// The configuration.
    pub fn config(&self) -> BfdConfig {
        self.cfg
    }

    /// Status for displays.
    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            remote_state: self.remote_state,
            local_disc: self.local_disc,
            remote_disc: self.remote_disc,
            diag: self.diag,
            tx_interval: self.tx_interval(),
            detect_time: self.detect_time(),
            since: self.since,
        }
    }

    /// Feed one input; returns the outputs.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                self.send(false, &mut out);
                self.arm_tx(now, &mut out, true);
            }
            Input::Packet(p) => self.packet(p, now, &mut out),
            Input::Timer(Timer::Tx) => {
                self.tx_deadline = None;
                if self.tx_interval().is_some() {
                    self.send(false, &mut out);
                }
                self.arm_tx(now, &mut out, true);
            }
            Input::Timer(Timer::Detect) => self.detect_expired(now, &mut out),
            Input::AdminDown => {
                if self.state != State::AdminDown {
                    self.diag = Diag::AdminDown;
                    self.detect_deadline = None;
                    out.push(Output::Cancel(Timer::Detect));
                    self.goto(State::AdminDown, now, &mut out);
                }
            }
            Input::AdminUp => {
                if self.state == State::AdminDown {
                    self.diag = Diag::None;
                    self.goto(State::Down, now, &mut out);
                }
            }
            Input::Configure(cfg) => self.configure(sanitize(cfg), now, &mut out),
        }
        out
    }

    /// The packet we would send now.
    fn outgoing(&self, fin: bool) -> Packet {
        Packet {
            diag: self.diag,
            state: self.state,
            poll: self.poll.is_some() && !fin,
            fin,
            cpi: false,
            demand: false,
            detect_mult: self.cfg.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: micros(self.desired_min_tx),
            required_min_rx: micros(self.required_min_rx),
            required_min_echo_rx: 0,
        }
    }

    fn send(&self, fin: bool, out: &mut Vec<Output>) {
        out.push(Output::Send(self.outgoing(fin)));
    }

    /// §6.8.7: `None` when no periodic packet may be sent.
    fn tx_interval(&self) -> Option<Duration> {
        if self.remote_min_rx.is_zero() {
            return None;
        }
        if self.remote_demand && self.state == State::Up && self.remote_state == State::Up {
            return None;
        }
        Some(self.tx_in_use.max(self.remote_min_rx))
    }

    /// §6.8.4.
    fn detect_time(&self) -> Option<Duration> {
        (self.remote_mult > 0)
            .then(|| self.detect_rx.max(self.remote_min_tx) * u32::from(self.remote_mult))
    }

    /// The interval less 0–25 % (0–10 % more, i.e. at most 90 %, with
    /// Detect Mult 1).
    fn jittered(&mut self, iv: Duration) -> Duration {
        // xorshift64: plenty for jitter, and reproducible from the seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let (lo, hi) = if self.cfg.detect_mult == 1 {
            (75, 90)
        } else {
            (75, 100)
        };
        let pct = lo + (self.rng % (hi - lo + 1));
        iv * pct as u32 / 100
    }

    /// Arm the transmit timer. `reset`: after a transmission (or at start)
    /// the next one is a whole interval away; otherwise (parameters changed)
    /// only move an armed timer earlier, never later.
    fn arm_tx(&mut self, now: Instant, out: &mut Vec<Output>, reset: bool) {
        let Some(iv) = self.tx_interval() else {
            if self.tx_deadline.take().is_some() || reset {
                out.push(Output::Cancel(Timer::Tx));
            }
            return;
        };
        let d = self.jittered(iv);
        let at = now + d;
        if !reset && self.tx_deadline.is_some_and(|t| t <= at) {
            return;
        }
        self.tx_deadline = Some(at);
        out.push(Output::Arm(Timer::Tx, d));
    }

    fn arm_detect(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let Some(d) = self.detect_time() {
            self.detect_deadline = Some(now + d);
            out.push(Output::Arm(Timer::Detect, d));
        }
    }

    fn packet(&mut self, p: Packet, now: Instant, out: &mut Vec<Output>) {
        self.remote_disc = p.my_disc;
        self.remote_state = p.state;
        self.remote_demand = p.demand;
        self.remote_min_rx = p.required_min_rx();
        self.remote_min_tx = p.desired_min_tx();
        self.remote_mult = p.detect_mult;
        if p.fin {
            self.poll_done(now, out);
        }
        if self.state == State::AdminDown {
            return;
        }
        match (self.state, p.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.diag = Diag::NeighborDown;
                self.goto(State::Down, now, out);
            }
            (State::Down, State::Down) => self.goto(State::Init, now, out),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.goto(State::Up, now, out)
            }
            (State::Up, State::Down) => {
                self.diag = Diag::NeighborDown;
                self.goto(State::Down, now, out);
            }
            _ => {}
        }
        if p.poll {
            self.send(true, out);
        }
        self.arm_detect(now, out);
        self.arm_tx(now, out, false);
    }

    fn detect_expired(&mut self, now: Instant, out: &mut Vec<Output>) {
        // Cancelled meanwhile (AdminDown): nothing to do.
        if self.detect_deadline.take().is_none() {
            return;
        }
        // §6.8.1: Your Discriminator is forgotten after a detection time.
        self.remote_disc = 0;
        self.remote_mult = 0;
        self.remote_state = State::Down;
        if matches!(self.state, State::Init | State::Up) {
            self.diag = Diag::DetectTimeExpired;
            self.goto(State::Down, now, out);
        }
    }

    /// A Final arrived: what the Poll announced is now in force.
    fn poll_done(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some((tx, rx)) = self.poll.take() else {
            return;
        };
        self.tx_in_use = self.desired_min_tx.min(tx);
        self.detect_rx = self.required_min_rx.max(rx);
        if (self.desired_min_tx, self.required_min_rx) != (tx, rx) {
            // Changed again during the poll: announce the newer values.
            self.start_poll();
        }
        self.arm_tx(now, out, false);
    }

    fn start_poll(&mut self) {
        if self.poll.is_none() {
            self.poll = Some((self.desired_min_tx, self.required_min_rx));
        }
    }

    /// Advertise new intervals: faster TX and slower RX take effect at once;
    /// the rest waits for the Poll Sequence when Up (§6.8.3).
    fn set_intervals(&mut self, tx: Duration, rx: Duration) {
        if (tx, rx) == (self.desired_min_tx, self.required_min_rx) {
            return;
        }
        self.desired_min_tx = tx;
        self.required_min_rx = rx;
        if self.state == State::Up {
            self.tx_in_use = self.tx_in_use.min(tx);
            self.detect_rx = self.detect_rx.max(rx);
            self.start_poll();
        } else {
            self.tx_in_use = tx;
            self.detect_rx = rx;
        }
    }

    fn configure(&mut self, cfg: BfdConfig, now: Instant, out: &mut Vec<Output>) {
        self.cfg = cfg;
        let tx = if self.state == State::Up {
            cfg.desired_min_tx
        } else {
            cfg.desired_min_tx.max(SLOW_TX)
        };
        let polling = self.poll.is_some();
        self.set_intervals(tx, cfg.required_min_rx);
        if !polling && self.poll.is_some() {
            self.send(false, out);
        }
        self.arm_tx(now, out, false);
    }

    fn goto(&mut self, to: State, now: Instant, out: &mut Vec<Output>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        self.since = now;
        if to == State::Up {
            self.diag = Diag::None;
            self.set_intervals(self.cfg.desired_min_tx, self.cfg.required_min_rx);
        } else {
            // Not Up: no Poll Sequence, the slow rate applies at once.
            self.poll = None;
            let slow = self.cfg.desired_min_tx.max(SLOW_TX);
            self.set_intervals(slow, self.cfg.required_min_rx);
        }
        out.push(Output::Changed(Change {
            from,
            to,
            diag: self.diag,
            remote: self.remote_state,
        }));
        self.send(false, out);
        self.arm_tx(now, out, false);
    }
}

/// Intervals the wire can carry (1 µs .. u32::MAX µs) and Detect Mult >= 1.
fn sanitize(mut c: BfdConfig) -> BfdConfig {
    let max = Duration::from_micros(u64::from(u32::MAX));
    let min = Duration::from_micros(1);
    c.desired_min_tx = c.desired_min_tx.clamp(min, max);
    c.required_min_rx = c.required_min_rx.min(max);
    c.detect_mult = c.detect_mult.max(1);
    c
}
