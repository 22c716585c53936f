//! Liveness, readiness and the HTTP endpoint that serves them with the
//! metrics: `/livez`, `/readyz`, `/metrics`.
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
//! with no BGP updates for hours is alive.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
// The tokio clock (the std one outside a paused test runtime), so that
// liveness can be tested with a paused clock.
use tokio::time::Instant;

use crate::status::metrics::Metrics;

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
        }
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
            let checks = s
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

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn verdict_response(v: Verdict) -> Response<Full<Bytes>> {
    let mut body = v.checks.join("\n");
    body.push('\n');
    body.push_str(if v.ok { "ok\n" } else { "not ok\n" });
    text(
        if v.ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// `/livez`, `/readyz`, `/status` and `/metrics` (the loopback listener).
    All,
    /// `/metrics` only (the listener Prometheus scrapes from elsewhere).
    MetricsOnly,
}

async fn route(
    req: Request<Incoming>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    exposure: Exposure,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if exposure == Exposure::MetricsOnly && req.uri().path() != "/metrics" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "this listener serves /metrics only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/livez" => verdict_response(health.liveness_at(Instant::now())),
        "/readyz" => verdict_response(health.readiness_at(Instant::now())),
        "/status" => {
            let mut r = text(
                StatusCode::OK,
                health.status_json(Instant::now()).to_string(),
            );
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /livez, /readyz or /metrics\n".into(),
        ),
    })
}

/// Serves what `exposure` says on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    exposure: Exposure,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (h, m) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(req, h.clone(), m.clone(), exposure));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "health connection ended");
            }
        });
    }
}

/// Binds `addr` and serves there (see [`serve`]); returns the bound address.
pub async fn bind_and_serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    exposure: Exposure,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    Ok((bound, tokio::spawn(serve(l, health, metrics, exposure))))
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

    #[tokio::test]
    async fn http_endpoint_answers_with_status_codes() {
        let health = Arc::new(Health::new(Duration::ZERO));
        let metrics = Arc::new(Metrics::new());
        let (addr, task) = bind_and_serve(
            "127.0.0.1:0".parse().expect("addr"),
            health.clone(),
            metrics.clone(),
            Exposure::All,
        )
        .await
        .expect("bind");
        let (metrics_addr, metrics_task) = bind_and_serve(
            "127.0.0.1:0".parse().expect("addr"),
            health.clone(),
            metrics,
            Exposure::MetricsOnly,
        )
        .await
        .expect("bind");
        let get_from = |addr: SocketAddr, path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let get = |path: &'static str| get_from(addr, path);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_datastore_synced(true);
        health.set_dataplane_programmed(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/livez").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(m.contains("margay_policy_sync_failures_total"), "{m}");
        health.set_status("node", serde_json::json!({"name": "n1"}));
        let st = get("/status").await;
        assert!(
            st.contains(r#""node":{"name":"n1"}"#) && st.contains(r#""ready":true"#),
            "{st}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        // The metrics-only listener: metrics, nothing else.
        let m = get_from(metrics_addr, "/metrics").await;
        assert!(m.contains("margay_policy_sync_failures_total"), "{m}");
        assert!(
            get_from(metrics_addr, "/status")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get_from(metrics_addr, "/livez")
                .await
                .starts_with("HTTP/1.1 404")
        );
        task.abort();
        metrics_task.abort();
    }
}
