//! Liveness and readiness (served by [`super::http`] as `/livez` and
//! `/readyz`), and the sections of `/status`.
//!
//! Ready means: the datastore is synced, the dataplane is programmed, and BGP
//! is up — during the start-up grace time every configured peer must be
//! Established (so a rolling restart waits for full peering), after it at
//! least one (so one dead peer does not take the node out). A node with no
//! peers configured needs no sessions.
//!
//! Live means: every supervised task is still running and its loop turns.
//! Each long-lived loop holds a [`Pulse`] and awaits [`Pulse::tick`] in its
//! `select!`, so an idle loop still turns every period; the pulse records
//! each turn. Liveness fails when a loop has not turned for
//! [`MISSED_PERIODS`] periods (it is stuck in an await that never ends) or
//! its task is gone (the pulse was dropped: the task returned or panicked).
//! It does not mean "something happened recently": an agent on a quiet node
//! with no BGP updates for hours is alive. The agent's task supervisor
//! reports each task's state here too ([`Health::set_task`]): a task being
//! restarted after it ended passes, one that took the agent down fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// The tokio clock (the std one outside a paused test runtime), so that
// liveness can be tested with a paused clock.
use tokio::time::Instant;

#[derive(Debug, Default)]
struct State {
    datastore_synced: bool,
    dataplane_programmed: bool,
    bgp_configured: usize,
    bgp_established: usize,
    /// Supervised loops by name.
    loops: BTreeMap<String, LoopState>,
    /// Registrations so far (tells a replaced pulse from the current one).
    registrations: u64,
    /// Supervised tasks by name, as the supervisor reports them.
    tasks: BTreeMap<String, TaskState>,
}

/// A supervised task's state, as the agent's supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Running (after this many restarts).
    Running {
        /// Restarts so far.
        restarts: u32,
    },
    /// It ended and is started again at `at`.
    Restarting {
        /// Restarts so far, this one included.
        restarts: u32,
        /// When it starts again.
        at: Instant,
        /// How it ended.
        why: String,
    },
    /// It ended for good: the agent is going down.
    Failed {
        /// How it ended.
        why: String,
    },
}

#[derive(Debug, Clone)]
struct LoopState {
    /// The registration this entry belongs to.
    id: u64,
    /// Last turn of the loop.
    last: Instant,
    /// The loop's period: it turns at least this often.
    period: Duration,
    /// Its task is gone (pulse dropped without [`Pulse::retire`]).
    ended: bool,
}

/// A loop fails liveness after this many periods without a turn.
pub const MISSED_PERIODS: u32 = 4;

/// The default period of the agent's supervised loops: one stuck for
/// `MISSED_PERIODS` x this fails `/livez` (the kubelet then restarts the
/// agent after its own failureThreshold).
pub const LOOP_PERIOD: Duration = Duration::from_secs(10);

/// Shared health state: components set their part, the server reads.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// Sections of `/status` (identity, BGP peers, ...), set by their owners.
    status: Mutex<serde_json::Map<String, serde_json::Value>>,
    started: Instant,
    grace: Duration,
    /// Period of every pulse.
    loop_period: Duration,
    /// Answers `/policy/trace` once the dataplane controller runs.
    tracer: std::sync::OnceLock<super::tracer::Tracer>,
}

/// The answer to a readiness or liveness question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Healthy?
    pub ok: bool,
    /// One line per check, "ok: ..." or "fail: ...".
    pub checks: Vec<String>,
}

impl Health {
    /// `grace`: start-up time during which readiness wants every BGP peer.
    pub fn new(grace: Duration) -> Self {
        Self::new_at(Instant::now(), grace)
    }

    fn new_at(started: Instant, grace: Duration) -> Self {
        Health {
            state: Mutex::new(State::default()),
            status: Mutex::new(serde_json::Map::new()),
            started,
            grace,
            loop_period: LOOP_PERIOD,
            tracer: std::sync::OnceLock::new(),
        }
    }

    /// Installs the `/policy/trace` hook (the first one stays).
    pub fn set_tracer(&self, t: super::tracer::Tracer) {
        let _ = self.tracer.set(t);
    }

    /// The `/policy/trace` hook, once installed.
    pub fn tracer(&self) -> Option<&super::tracer::Tracer> {
        self.tracer.get()
    }

    /// Pulses registered from now on turn every `period` (default
    /// [`LOOP_PERIOD`]).
    pub fn with_loop_period(mut self, period: Duration) -> Self {
        self.loop_period = period;
        self
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of plain
        // flags; the data is still meaningful.
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// All watched resources have been listed and are being watched.
    pub fn set_datastore_synced(&self, v: bool) {
        self.with(|s| s.datastore_synced = v);
    }

    /// Routes and policy reflect the current state.
    pub fn set_dataplane_programmed(&self, v: bool) {
        self.with(|s| s.dataplane_programmed = v);
    }

    /// BGP peers configured and Established.
    pub fn set_bgp(&self, configured: usize, established: usize) {
        self.with(|s| {
            s.bgp_configured = configured;
            s.bgp_established = established;
        });
    }

    /// Registers loop `name`, which turns at least every loop period (it
    /// awaits [`Pulse::tick`]). A new pulse of the same name replaces the
    /// old one (a task restarted by its owner).
    pub fn pulse(self: &Arc<Self>, name: impl Into<String>) -> Pulse {
        let name = name.into();
        let period = self.loop_period;
        let id = self.with(|s| {
            s.registrations += 1;
            let id = s.registrations;
            s.loops.insert(
                name.clone(),
                LoopState {
                    id,
                    last: Instant::now(),
                    period,
                    ended: false,
                },
            );
            id
        });
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pulse {
            health: self.clone(),
            name,
            id,
            interval,
            retired: false,
        }
    }

    fn beat(&self, name: &str, id: u64) {
        self.with(|s| {
            if let Some(l) = s.loops.get_mut(name).filter(|l| l.id == id) {
                l.last = Instant::now();
            }
        });
    }

    fn end(&self, name: &str, id: u64, retired: bool) {
        self.with(|s| {
            if s.loops.get(name).is_some_and(|l| l.id == id) {
                if retired {
                    s.loops.remove(name);
                } else if let Some(l) = s.loops.get_mut(name) {
                    l.ended = true;
                }
            }
        });
    }

    /// Records the state of supervised task `name`. A task being restarted
    /// is no longer judged by the pulse of its ended run (its next run
    /// registers a new one).
    pub fn set_task(&self, name: &str, state: TaskState) {
        self.with(|s| {
            if matches!(state, TaskState::Restarting { .. })
                && s.loops.get(name).is_some_and(|l| l.ended)
            {
                s.loops.remove(name);
            }
            s.tasks.insert(name.to_string(), state);
        });
    }

    /// Sets one section of `/status`.
    pub fn set_status(&self, section: &str, value: serde_json::Value) {
        let mut g = self.status.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(section.to_string(), value);
    }

    /// `/status`: every section plus the readiness checks.
    pub fn status_json(&self, now: Instant) -> serde_json::Value {
        let mut m = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let r = self.readiness_at(now);
        m.insert("ready".into(), serde_json::json!(r.ok));
        m.insert("readiness".into(), serde_json::json!(r.checks));
        serde_json::Value::Object(m)
    }

    /// Readiness at `now`.
    pub fn readiness_at(&self, now: Instant) -> Verdict {
        let in_grace = now.saturating_duration_since(self.started) < self.grace;
        self.with(|s| {
            let mut checks = Vec::new();
            let mut ok = true;
            let mut check = |pass: bool, what: String| {
                ok &= pass;
                checks.push(format!("{}: {what}", if pass { "ok" } else { "fail" }));
            };
            check(s.datastore_synced, "datastore synced".into());
            check(s.dataplane_programmed, "dataplane programmed".into());
            let (pass, rule) = if s.bgp_configured == 0 {
                (true, "no peers configured".to_string())
            } else if in_grace {
                (
                    s.bgp_established == s.bgp_configured,
                    "all peers during the start-up grace time".to_string(),
                )
            } else {
                (s.bgp_established >= 1, "at least one peer".to_string())
            };
            check(
                pass,
                format!(
                    "BGP {}/{} established ({rule})",
                    s.bgp_established, s.bgp_configured
                ),
            );
            Verdict { ok, checks }
        })
    }

    /// Liveness at `now`.
    pub fn liveness_at(&self, now: Instant) -> Verdict {
        self.with(|s| {
            let mut ok = true;
            let mut checks: Vec<String> = s
                .loops
                .iter()
                .map(|(name, l)| {
                    let age = now.saturating_duration_since(l.last);
                    let deadline = l.period * MISSED_PERIODS;
                    let pass = !l.ended && age <= deadline;
                    ok &= pass;
                    if l.ended {
                        format!(
                            "fail: {name} task ended (last turn {:.1}s ago)",
                            age.as_secs_f64()
                        )
                    } else {
                        format!(
                            "{}: {name} loop turned {:.1}s ago (turns every {:.1}s, deadline {:.1}s)",
                            if pass { "ok" } else { "fail" },
                            age.as_secs_f64(),
                            l.period.as_secs_f64(),
                            deadline.as_secs_f64()
                        )
                    }
                })
                .collect();
            for (name, t) in &s.tasks {
                checks.push(match t {
                    TaskState::Running { restarts: 0 } => format!("ok: task {name} running"),
                    TaskState::Running { restarts } => {
                        format!("ok: task {name} running (restarted {restarts} times)")
                    }
                    TaskState::Restarting { restarts, at, why } => format!(
                        "ok: task {name} {why}; restart {restarts} in {:.1}s",
                        at.saturating_duration_since(now).as_secs_f64()
                    ),
                    TaskState::Failed { why } => {
                        ok = false;
                        format!("fail: task {name} {why}: the agent stops")
                    }
                });
            }
            Verdict { ok, checks }
        })
    }
}

/// A supervised loop's proof of life (see the module doc).
#[derive(Debug)]
pub struct Pulse {
    health: Arc<Health>,
    name: String,
    id: u64,
    interval: tokio::time::Interval,
    retired: bool,
}

impl Pulse {
    /// Completes once per period and records a turn: put it in the loop's
    /// `select!` so an idle loop still turns. Cancel-safe.
    pub async fn tick(&mut self) {
        self.interval.tick().await;
        self.beat();
    }

    /// Records a turn now (for loops that also turn on their own inputs).
    pub fn beat(&self) {
        self.health.beat(&self.name, self.id);
    }

    /// The loop ends on purpose (its owner stopped it): it is no longer
    /// supervised, and its end does not fail liveness.
    pub fn retire(mut self) {
        self.retired = true;
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.health.end(&self.name, self.id, self.retired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_datastore_dataplane_and_the_bgp_rule() {
        let t0 = Instant::now();
        let h = Health::new_at(t0, Duration::from_secs(60));
        assert!(!h.readiness_at(t0).ok);
        h.set_datastore_synced(true);
        h.set_dataplane_programmed(true);
        assert!(h.readiness_at(t0).ok, "no peers configured: ready");
        h.set_bgp(3, 1);
        let v = h.readiness_at(t0 + Duration::from_secs(10));
        assert!(!v.ok, "in grace, all peers wanted: {v:?}");
        assert!(v.checks.iter().any(|c| c.contains("1/3")));
        assert!(
            h.readiness_at(t0 + Duration::from_secs(61)).ok,
            "after grace, one is enough"
        );
        h.set_bgp(3, 0);
        assert!(!h.readiness_at(t0 + Duration::from_secs(61)).ok);
        h.set_bgp(3, 3);
        assert!(h.readiness_at(t0).ok);
        h.set_dataplane_programmed(false);
        assert!(!h.readiness_at(t0).ok);
    }

    /// The shape of every supervised loop: inputs that may stay quiet for
    /// hours, and the pulse.
    async fn quiet_loop(mut rx: tokio::sync::mpsc::Receiver<()>, mut pulse: Pulse) {
        loop {
            tokio::select! {
                m = rx.recv() => if m.is_none() { return pulse.retire() },
                () = pulse.tick() => {}
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_loop_stays_live_for_hours() {
        let h = Arc::new(Health::new(Duration::ZERO));
        assert!(h.liveness_at(Instant::now()).ok, "nothing registered");
        let (_tx, rx) = tokio::sync::mpsc::channel::<()>(1);
        let task = tokio::spawn(quiet_loop(rx, h.pulse("fib")));
        // Six hours without a single input, checked every 7 s (as a kubelet
        // polls); the paused clock jumps ahead whenever every task sleeps.
        for _ in 0..(6 * 3600 / 7) {
            tokio::time::sleep(Duration::from_secs(7)).await;
            let v = h.liveness_at(Instant::now());
            assert!(v.ok, "{v:?}");
        }
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_loop_or_a_dead_task_fails_liveness() {
        let h = Arc::new(Health::new(Duration::ZERO));
        // Stuck: the loop awaits something that never ends.
        let mut stuck = h.pulse("controller");
        let stuck_task = tokio::spawn(async move {
            stuck.tick().await;
            std::future::pending::<()>().await;
            stuck.beat();
        });
        tokio::time::sleep(Duration::from_secs(39)).await;
        assert!(h.liveness_at(Instant::now()).ok, "within 4 periods");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let v = h.liveness_at(Instant::now());
        assert!(!v.ok && v.checks[0].contains("controller"), "{v:?}");
        stuck_task.abort();

        // A panic drops the pulse: the task is gone, liveness fails at once.
        let h = Arc::new(Health::new(Duration::ZERO));
        let pulse = h.pulse("routing");
        let dead = tokio::spawn(async move {
            let _pulse = pulse;
            panic!("a decoder bug");
        });
        assert!(dead.await.is_err());
        let v = h.liveness_at(Instant::now());
        assert!(!v.ok && v.checks[0].contains("routing task ended"), "{v:?}");

        // A replacement pulse of that name (the owner restarted the task)
        // heals it, and the old pulse's drop does not undo that; a retired
        // loop is no longer supervised.
        let old = h.pulse("fib");
        let new = h.pulse("fib");
        drop(old);
        let again = h.pulse("routing");
        assert!(h.liveness_at(Instant::now()).ok);
        new.retire();
        again.retire();
        assert!(h.liveness_at(Instant::now()).checks.is_empty());
    }
}
