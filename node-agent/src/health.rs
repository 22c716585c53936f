//! Liveness, readiness and the HTTP endpoint that serves them with the
//! metrics: `/livez`, `/readyz`, `/metrics`.
//!
//! Ready means: the datastore is synced, the dataplane is programmed, and BGP
//! is up — during the start-up grace time every configured peer must be
//! Established (so a rolling restart waits for full peering), after it at
//! least one (so one dead peer does not take the node out). A node with no
//! peers configured needs no sessions.
//!
//! Live means: every registered loop has reported within its deadline.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

#[derive(Debug, Default)]
struct State {
    datastore_synced: bool,
    dataplane_programmed: bool,
    bgp_configured: usize,
    bgp_established: usize,
    /// Loop name -> (last heartbeat, deadline).
    loops: BTreeMap<&'static str, (Instant, Duration)>,
}

/// Shared health state: components set their part, the server reads.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// Sections of `/status` (identity, BGP peers, ...), set by their owners.
    status: Mutex<serde_json::Map<String, serde_json::Value>>,
    started: Instant,
    grace: Duration,
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
        }
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

    /// A loop reports it is alive; it must report again within `deadline`.
    pub fn heartbeat(&self, name: &'static str, deadline: Duration) {
        self.with(|s| {
            s.loops.insert(name, (Instant::now(), deadline));
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
                .map(|(name, (last, deadline))| {
                    let age = now.saturating_duration_since(*last);
                    let pass = age <= *deadline;
                    ok &= pass;
                    format!(
                        "{}: {name} reported {:.1}s ago (deadline {:.0}s)",
                        if pass { "ok" } else { "fail" },
                        age.as_secs_f64(),
                        deadline.as_secs_f64()
                    )
                })
                .collect();
            Verdict { ok, checks }
        })
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

async fn route(
    req: Request<Incoming>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
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

/// Serves `/livez`, `/readyz` and `/metrics` on `listener` until the task is
/// dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Arc<Metrics>) {
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
            let svc = service_fn(move |req| route(req, h.clone(), m.clone()));
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
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    Ok((bound, tokio::spawn(serve(l, health, metrics))))
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

    #[test]
    fn liveness_fails_when_a_loop_misses_its_deadline() {
        let h = Health::new(Duration::ZERO);
        assert!(h.liveness_at(Instant::now()).ok, "nothing registered");
        h.heartbeat("policy", Duration::from_secs(30));
        assert!(h.liveness_at(Instant::now()).ok);
        let later = Instant::now() + Duration::from_secs(31);
        let v = h.liveness_at(later);
        assert!(!v.ok);
        assert!(v.checks[0].contains("policy"), "{v:?}");
    }

    #[tokio::test]
    async fn http_endpoint_answers_with_status_codes() {
        let health = Arc::new(Health::new(Duration::ZERO));
        let metrics = Arc::new(Metrics::new());
        let (addr, task) = bind_and_serve(
            "127.0.0.1:0".parse().expect("addr"),
            health.clone(),
            metrics,
        )
        .await
        .expect("bind");
        let get = |path: &'static str| async move {
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
        task.abort();
    }
}
