//! The task supervisor: every long-lived task of the agent runs in one
//! [`JoinSet`] here, and none is ever silently dropped. When a task ends —
//! it returned or it panicked — the supervisor logs it and, by the task's
//! [`Policy`]:
//!
//! - [`Policy::Critical`]: takes the agent down ([`Supervisor::wait`]
//!   returns the [`TaskEnded`], `margay-node` exits non-zero and the
//!   kubelet restarts it). For tasks that own something they cannot give
//!   back (a channel's receiving end, a bound socket, a reflector's store).
//! - [`Policy::Restart`]: starts it again after a backoff (1 s, doubling to
//!   60 s; back to 1 s after a run of 60 s or more). A task that needs more
//!   than [`MAX_RESTARTS`] restarts within [`RESTART_WINDOW`] takes the
//!   agent down like a critical one.
//!
//! Each run of a task gets a fresh [`Pulse`] named after the task, and the
//! supervisor reports every task's state to [`Health`], so `/livez` shows
//! it: a task waiting for its restart passes, one that took the agent down
//! fails.
//!
//! ```text
//!  agent::run ──spawn(name, policy, make)──► Supervisor ─┬─ JoinSet: one entry per run
//!       ▲                                                ├─ Health::set_task (liveness)
//!       └──────── wait(): TaskEnded (critical) ◄─────────┘  restart: a delayed run of make()
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use crate::status::health::{Health, Pulse, TaskState};

/// A task's future.
pub type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Builds a run of a task from the run's pulse (shared with the run that
/// calls it after its backoff).
type Make = Arc<std::sync::Mutex<dyn FnMut(Pulse) -> TaskFuture + Send>>;

/// First restart delay.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
pub const STABLE_RUN: Duration = Duration::from_secs(60);
/// Restarts allowed within [`RESTART_WINDOW`] before the agent gives up.
pub const MAX_RESTARTS: usize = 5;
/// See [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// What happens when a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The agent goes down.
    Critical,
    /// The task is started again after a backoff.
    Restart,
}

/// A task ended and took the agent down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {name} {why}")]
pub struct TaskEnded {
    /// The task.
    pub name: String,
    /// How it ended ("returned", "panicked: ...", "kept failing: ...").
    pub why: String,
}

struct Task {
    name: String,
    policy: Policy,
    make: Make,
    /// When the current run started (after its backoff).
    started: Instant,
    /// Current restart delay.
    backoff: Duration,
    /// Restarts within the window.
    recent: Vec<Instant>,
    restarts: u32,
}

/// See the module doc.
pub struct Supervisor {
    set: JoinSet<()>,
    /// The task of each run in the set.
    runs: HashMap<Id, usize>,
    tasks: Vec<Task>,
    health: Arc<Health>,
}

impl Supervisor {
    /// A supervisor reporting to `health`.
    pub fn new(health: Arc<Health>) -> Self {
        Supervisor {
            set: JoinSet::new(),
            runs: HashMap::new(),
            tasks: Vec::new(),
            health,
        }
    }

    /// Starts task `name`; `make` builds a run of it from the run's pulse
    /// (called again for every restart of a [`Policy::Restart`] task).
    pub fn spawn<F>(&mut self, name: impl Into<String>, policy: Policy, make: F)
    where
        F: FnMut(Pulse) -> TaskFuture + Send + 'static,
    {
        let name = name.into();
        self.tasks.push(Task {
            name,
            policy,
            make: Arc::new(std::sync::Mutex::new(make)),
            started: Instant::now(),
            backoff: BACKOFF_MIN,
            recent: Vec::new(),
            restarts: 0,
        });
        self.start(self.tasks.len() - 1, Duration::ZERO);
    }

    /// Starts a task that runs once: its end takes the agent down
    /// ([`Policy::Critical`]).
    pub fn critical<Fut>(
        &mut self,
        name: impl Into<String>,
        run: impl FnOnce(Pulse) -> Fut + Send + 'static,
    ) where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut run = Some(run);
        self.spawn(name, Policy::Critical, move |pulse| match run.take() {
            Some(run) => Box::pin(run(pulse)),
            // A critical task is never started twice.
            None => Box::pin(async {}),
        });
    }

    /// Starts a [`Policy::Restart`] task built by `make` for every run.
    pub fn restarting<Fut>(
        &mut self,
        name: impl Into<String>,
        mut make: impl FnMut(Pulse) -> Fut + Send + 'static,
    ) where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, Policy::Restart, move |pulse| Box::pin(make(pulse)));
    }

    /// Runs `fut` while supervising (at start-up, before [`Supervisor::wait`]
    /// runs): a task that takes the agent down meanwhile wins.
    pub async fn during<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, TaskEnded> {
        tokio::select! {
            v = fut => Ok(v),
            ended = self.wait() => Err(ended),
        }
    }

    /// Supervised tasks (each counted once, whether running or waiting for
    /// a restart).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task was started.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts a run of task `i` after `delay`: the run's pulse is made
    /// and the task built when the delay is over.
    fn start(&mut self, i: usize, delay: Duration) {
        let t = &mut self.tasks[i];
        t.started = Instant::now() + delay;
        let (name, make, restarts) = (t.name.clone(), t.make.clone(), t.restarts);
        let health = self.health.clone();
        let handle = self.set.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let pulse = health.pulse(name.as_str());
            health.set_task(&name, TaskState::Running { restarts });
            let run = {
                // One run at a time: never contended. A poisoned lock is
                // a panic in an earlier build; the closure is still usable.
                let mut make = make.lock().unwrap_or_else(|p| p.into_inner());
                (*make)(pulse)
            };
            run.await;
        });
        self.runs.insert(handle.id(), i);
    }

    /// Supervises until a task takes the agent down, and returns why.
    /// Restarts happen in here. Cancel-safe: put it in a `select!` beside
    /// the agent's own work.
    pub async fn wait(&mut self) -> TaskEnded {
        loop {
            let Some(joined) = self.set.join_next_with_id().await else {
                // Nothing supervised: nothing can end.
                return std::future::pending().await;
            };
            let (id, why) = match joined {
                Ok((id, ())) => (id, "returned".to_string()),
                Err(e) if e.is_panic() => {
                    (e.id(), format!("panicked: {}", panic_text(e.into_panic())))
                }
                Err(e) => (e.id(), "was cancelled".to_string()),
            };
            let Some(i) = self.runs.remove(&id) else {
                continue;
            };
            if let Some(ended) = self.ended(i, why) {
                return ended;
            }
        }
    }

    /// Task `i`'s run ended: restart it, or the agent's end.
    fn ended(&mut self, i: usize, why: String) -> Option<TaskEnded> {
        let now = Instant::now();
        let t = &mut self.tasks[i];
        let name = t.name.clone();
        if t.policy == Policy::Critical {
            tracing::error!(task = %name, how = %why, "a critical task ended: the agent stops");
            self.health
                .set_task(&name, TaskState::Failed { why: why.clone() });
            return Some(TaskEnded { name, why });
        }
        if now.saturating_duration_since(t.started) >= STABLE_RUN {
            t.backoff = BACKOFF_MIN;
        }
        t.recent
            .retain(|at| now.saturating_duration_since(*at) < RESTART_WINDOW);
        if t.recent.len() >= MAX_RESTARTS {
            let why = format!(
                "kept failing ({} restarts within {}s, last {why})",
                t.recent.len(),
                RESTART_WINDOW.as_secs()
            );
            tracing::error!(task = %name, how = %why, "a task kept failing: the agent stops");
            self.health
                .set_task(&name, TaskState::Failed { why: why.clone() });
            return Some(TaskEnded { name, why });
        }
        t.recent.push(now);
        t.restarts += 1;
        let delay = t.backoff;
        t.backoff = (t.backoff * 2).min(BACKOFF_MAX);
        tracing::warn!(task = %name, how = %why, restart_in = ?delay, restarts = t.restarts, "a task ended; restarting it");
        self.health.set_task(
            &name,
            TaskState::Restarting {
                restarts: t.restarts,
                at: now + delay,
                why,
            },
        );
        self.start(i, delay);
        None
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn health() -> Arc<Health> {
        Arc::new(Health::new(Duration::ZERO).with_loop_period(Duration::from_secs(1)))
    }

    /// Lets spawned tasks run (the clock is paused, so sleeps are instant
    /// only when every task is idle).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_with_backoff_and_liveness_shows_it() {
        let health = health();
        let mut sup = Supervisor::new(health.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        sup.restarting("flaky", move |mut pulse| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run fails");
                }
                // Later runs keep turning.
                loop {
                    pulse.tick().await;
                }
            }
        });
        // The panic is seen and the restart scheduled; the agent stays up.
        let start = Instant::now();
        let waited = tokio::time::timeout(Duration::from_millis(500), sup.wait()).await;
        assert!(waited.is_err(), "a restarting task must not end the agent");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "no restart before the backoff"
        );
        let live = health.liveness_at(Instant::now());
        assert!(live.ok, "a task waiting for its restart is alive: {live:?}");
        assert!(
            live.checks
                .iter()
                .any(|c| c.contains("flaky") && c.contains("panicked: first run fails")),
            "liveness names the panic: {:?}",
            live.checks
        );
        // After the backoff (1 s) it runs again.
        let waited = tokio::time::timeout(Duration::from_secs(5), sup.wait()).await;
        assert!(waited.is_err());
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(Instant::now() - start >= BACKOFF_MIN);
        let live = health.liveness_at(Instant::now());
        assert!(live.ok, "{live:?}");
        assert!(
            live.checks
                .iter()
                .any(|c| c == "ok: task flaky running (restarted 1 times)"),
            "{:?}",
            live.checks
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_task_that_ends_takes_the_agent_down() {
        let health = health();
        let mut sup = Supervisor::new(health.clone());
        sup.restarting("steady", |mut pulse| async move {
            loop {
                pulse.tick().await;
            }
        });
        sup.critical("owner", |pulse| async move {
            pulse.retire();
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        assert_eq!(sup.len(), 2);
        let ended = sup.wait().await;
        assert_eq!(
            ended,
            TaskEnded {
                name: "owner".into(),
                why: "returned".into()
            }
        );
        let live = health.liveness_at(Instant::now());
        assert!(!live.ok, "liveness fails once the agent is going down");
        assert!(
            live.checks
                .iter()
                .any(|c| c == "fail: task owner returned: the agent stops"),
            "{:?}",
            live.checks
        );
    }

    #[tokio::test(start_paused = true)]
    async fn during_start_up_a_task_that_ends_wins() {
        let mut sup = Supervisor::new(health());
        sup.critical("watch", |_pulse| async { panic!("reflector gone") });
        let got = sup.during(std::future::pending::<()>()).await;
        assert_eq!(
            got,
            Err(TaskEnded {
                name: "watch".into(),
                why: "panicked: reflector gone".into()
            })
        );
        // A start-up step that finishes first is returned as is.
        let mut sup = Supervisor::new(health());
        sup.restarting("idle", |_pulse| std::future::pending::<()>());
        assert_eq!(sup.during(async { 7 }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_keeps_failing_takes_the_agent_down_after_growing_delays() {
        let health = health();
        let mut sup = Supervisor::new(health.clone());
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = starts.clone();
        sup.restarting("broken", move |_pulse| {
            s.lock().unwrap().push(Instant::now());
            async {}
        });
        let ended = sup.wait().await;
        assert_eq!(ended.name, "broken");
        assert!(
            ended
                .why
                .starts_with("kept failing (5 restarts within 600s"),
            "{}",
            ended.why
        );
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), MAX_RESTARTS + 1);
        let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, vec![1, 2, 4, 8, 16], "backoff doubles from 1 s");
        assert!(!health.liveness_at(Instant::now()).ok);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_lasted_resets_the_backoff() {
        let mut sup = Supervisor::new(health());
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = starts.clone();
        sup.restarting("long", move |_pulse| {
            let mut g = s.lock().unwrap();
            g.push(Instant::now());
            // Runs 2 and 3 fail at once; the others last a stable run.
            let quick = matches!(g.len(), 2 | 3);
            async move {
                if !quick {
                    tokio::time::sleep(STABLE_RUN).await;
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(200), sup.wait()).await;
        let starts = starts.lock().unwrap();
        let gaps: Vec<u64> = starts
            .windows(2)
            .take(4)
            .map(|w| (w[1] - w[0]).as_secs())
            .collect();
        // run 1 lasts 60 s then waits 1 s; run 2 fails: 2 s; run 3 fails:
        // 4 s; run 4 lasts 60 s, so the next wait is back to 1 s.
        assert_eq!(gaps, vec![61, 2, 4, 61]);
    }
}
